"""MIG layout changes per node (pure): check a requested layout before mig-manager acts on it, gate changes that
must wait, and never leave a node's operands paused.

How upstream's mig-manager behaves (mig-parted `cmd/nvidia-mig-manager/main.go`, `pkg/mig/reconfigure`): it
watches its node's `nvidia.com/mig.config` label and, on start and on every change, runs one reconfigure:
`mig-parted assert --valid-config` (state `failed` when the layout is not in the config), "already applied" ->
`success`, else `nvidia.com/mig.config.state=pending`, the deploy labels of device-plugin, gpu-feature-discovery,
dcgm, dcgm-exporter, nvsm (and client when set) go to `paused-for-mig-change` (a `false` stays `false`), it waits
for those pods to go, applies the mode (`rebooting` and a reboot when the mode needs one) and the layout, then
sets the labels back to `true` and the state to `success`. A change that fails sets the state `failed` and the
labels back only until the pod's first completed change: that sets NoRestartK8sDaemonsetsOnExit, process-wide and
never cleared, so a later failure of the same pod leaves them paused (setState); so does a wait for the pods that
fails (no state set, `pending` stays). It never looks at GPU workload pods, and a mig-manager killed mid-change
leaves the labels paused.

The gate: the operator holds a change by setting the node's own `nvidia.com/gpu.deploy.mig-manager` label to
`paused-for-mig-change`, so the mig-manager DaemonSet (node selector `...deploy.mig-manager=true`) has no pod on
that node and nothing acts on the label; releasing the label brings the pod back, and the real mig-manager image
reconfigures to the current label on start, so no handshake with it is needed. The layout the operator last let
through is kept in the node label `nvidia.com/gpu-operator.mig-config.approved`: a `mig.config` that differs from
it is a change to check, and a layout let through is checked again against the config mig-manager reads now (a
switched config replaces its pods, which apply the label on start; an edited one is read on its next start) and
the strategy. A real mig-manager that sees a relabel before the operator holds it still validates the layout
itself (state `failed`, nothing applied); the gate closes that window for every later change.

Per MIG-capable node (mig-manager enabled, its deploy label not opted out with `false`):
* a layout mig-manager would fail is refused: a name not in the config (the ConfigMap `migManager.config.name`
  names, or with none named the layouts mig-manager builds from the node's GPU: all-<profile> for each of its
  profiles, all-balanced, all-disabled, all-enabled; every name while mig-parted would refuse that file, or
  while one of its device filters is not a device ID mig-parted can read: it would select no GPU), or
  one whose entries that select the node's GPU by device filter do not all fit it (its profiles, their counts,
  its compute and memory slices; profiles matched by meaning, as mig-parted does) or that select one GPU with
  different mig-enabled (mig-parted sets the last one's mode, then fails the other), or, under the mixed strategy,
  one with compute-instance profiles, or, under the single strategy, one that leaves the node's GPUs other than
  all MIG-disabled or all with MIG devices of one profile (the device plugin would fail on them either way):
  mig-manager held, a Warning event, the `MIGConfig` condition names node, layout and why; the node's layout,
  operands and state label are left as they are, but a `pending` with no operand paused (a wait's) ends `failed`,
  as mig-manager ends a layout it refuses (a user's config that cannot be read is named by the condition also while
  no node asks for a layout);
* a valid change on a node where GPU workloads run (pods that request `nvidia.com/gpu*` or `nvidia.com/mig-*` or
  hold a DRA ResourceClaim allocated by `gpu.nvidia.com`, but the DaemonSet pods mig-manager stops itself: those
  selecting on a deploy label it pauses) waits, held, with
  `mig.config.state=pending` (the layout the label names is not applied) and the reason in an event and the
  condition; with `driver.upgradePolicy.drain.enable` (the policy's consent to evict workloads for a node-level
  GPU change; off by default) those pods are evicted through the Eviction API instead, so PodDisruptionBudgets
  hold, under drain's rules: none while one uses emptyDir storage without `drain.deleteEmptyDir` or has no
  controller without `drain.force`, and never a DaemonSet or static pod (the change waits for those); as kubectl
  drain, the node is cordoned first (their replacements would land on it again), marked as the gate's cordon
  (annotation MIG_CORDONED), and uncordoned once the change no longer waits and is not under way; a cordon already
  there is not the gate's, and a node the driver upgrade holds is left to it;
* deploy labels left at `paused-for-mig-change` are restored to `true` once the change is over (state `success`
  or `failed`) or its mig-manager is gone (no live pod and none coming: mig-manager disabled or held); a change
  cut short that way ends `failed`;
* a wait's `pending` (mig-manager held, no operand paused) on a node no longer checked is removed: nothing would end
  it (the hold stays while mig-manager is disabled; nodes.desired_labels drops it on a GPU without MIG).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import yaml

from . import mig_layouts
from .api import ClusterPolicySpec
from .gpu_identity import device_ids_from_labels
from .nodes import (
    GPU_PRODUCT,
    MIG_CONFIG,
    MIG_CONFIG_STATE,
    MIG_CORDONED,
    MIG_MANAGER,
    NodeFacts,
    apply_patch,
    deploy_label,
    per_spec,
    workload_of,
)
from .status import whole_entries
from .upgrade.model import DRAIN_SKIP_LABEL, WorkloadPod, eviction_refused
from .upgrade.model import IN_PROGRESS_STATES as UPGRADING
from .upgrade.model import STATE_LABEL as UPGRADE_STATE
from .upgrade.selector import SelectorError, parse_selector

PAUSED = "paused-for-mig-change"
APPROVED = "nvidia.com/gpu-operator.mig-config.approved"
# The operands upstream's mig-manager pauses around a change (reconfigure.go).
PAUSED_BY_MANAGER = ("device-plugin", "gpu-feature-discovery", "dcgm", "dcgm-exporter", "nvsm", "client")
MANAGER_LABEL = deploy_label(MIG_MANAGER)
_PAUSED_KEYS = tuple((op, deploy_label(op)) for op in PAUSED_BY_MANAGER)  # (operand, its deploy label)
CONDITION = "MIGConfig"
MESSAGE_LIMIT = 2000  # the MIGConfig message names nodes up to this length, then says how many more
IN_PROGRESS = ("pending", "rebooting")
EVENT_REFUSED = "MIGConfigRefused"
EVENT_WAITING = "MIGConfigWaiting"
EVENT_RESTORED = "MIGOperandsRestored"
# The layout names mig-manager (v0.14 on) builds from the hardware when no ConfigMap is named
# (mig-parted pkg/mig/builder: all-disabled, all-enabled, all-balanced, all-<GPU instance profile>, `+` as `.`).
_GENERATED = re.compile(r"^all-(disabled|enabled|balanced|\d+g\.\d+gb([.-][a-z][a-z.,]*)?)$")

# GFD's product name (after the -MIG-<profile> / -SHARED suffixes are cut) -> the GPU group of the table.
# Checked in order: the first rule whose every token is in the product wins.
_PRODUCT_RULES: tuple[tuple[tuple[str, ...], str], ...] = (
    (("GH200", "144G"), "GH200 144GB HBM3e"),
    (("GH200",), "H100 96GB, PG506 96GB, GH200 96GB, H20"),
    (("GB300",), "GB300"),
    (("B300",), "B300"),
    (("GB200",), "GB200"),
    (("B200",), "B200"),
    (("H200", "NVL"), "H200 NVL"),
    (("H200",), "H200 141GB"),
    (("NVL",), "H100 NVL, H800 NVL"),
    (("H100", "96GB"), "H100 96GB, PG506 96GB, GH200 96GB, H20"),
    (("H20",), "H100 96GB, PG506 96GB, GH200 96GB, H20"),
    (("H100",), "H100 80GB, H800 80GB, A100 80GB, A800 80GB"),
    (("H800",), "H100 80GB, H800 80GB, A100 80GB, A800 80GB"),
    (("A100", "80GB"), "H100 80GB, H800 80GB, A100 80GB, A800 80GB"),
    (("A800", "80GB"), "H100 80GB, H800 80GB, A100 80GB, A800 80GB"),
    (("A100",), "A100 40GB, A800 40GB"),
    (("A800",), "A100 40GB, A800 40GB"),
    (("A30",), "A30 24GB"),
    (("RTX-PRO-6000",), "RTX PRO 6000 96GB"),
)


@lru_cache(maxsize=64)  # a pass may ask for every node's
def gpu_of_product(product: str) -> mig_layouts.MigGPU | None:
    """The MIG GPU of a GFD product label (`NVIDIA-H100-80GB-HBM3`, `...-MIG-1g.10gb`, `...-SHARED`), or None."""
    base = product.upper().split("-MIG-")[0].removesuffix("-SHARED")
    for tokens, name in _PRODUCT_RULES:
        if all(t in base for t in tokens):
            return next((g for g in mig_layouts.gpus() if g.name == name), None)
    return None


def gpu_of_node(node: NodeFacts) -> mig_layouts.MigGPU | None:
    """The node's MIG GPU: by GFD's product label, else (before a driver ran) by the PCI device IDs of NFD's labels
    or NodeFeature object."""
    product = node.labels.get(GPU_PRODUCT, "")
    if product:
        return gpu_of_product(product)
    return mig_layouts.gpu_of_devices(device_ids_from_labels(node.labels) or node.pci_devices)


_DOTTED_ATTRIBUTES = re.compile(r"^((?:\d+c\.)?\d+g\.\d+gb)\.(.+)$")


Layouts = Mapping[str, tuple[mig_layouts.LayoutEntry, ...]]


def physical_gpus(labels: Mapping[str, str], held: Sequence[mig_layouts.LayoutEntry] | None = None) -> int | None:
    """How many physical GPUs GFD's labels describe. Under the single strategy with MIG on, GFD's gpu.count
    counts MIG devices and the product ends in `-MIG-<profile>` (then `-SHARED` when time-sliced): the GPUs are as
    many as give that count under the layout the node holds (`held`: its entries, held_entries), if that layout
    makes the product's profile; else not known (a layout may give a GPU fewer than the profile's most)."""
    count = labels.get("nvidia.com/gpu.count", "")
    if not count.isdigit():
        return None
    product = labels.get("nvidia.com/gpu.product", "")
    if "-MIG-" not in product:
        return int(count)
    # The device plugin writes a profile's attributes after a dot (1g.10gb+me as 1g.10gb.me)
    profile = _DOTTED_ATTRIBUTES.sub(r"\1+\2", product.removesuffix("-SHARED").split("-MIG-", 1)[1])
    if not held or {p for e in held for p in e.mig_devices} != {mig_layouts.canonical(profile)}:
        return None
    total = 0
    for i in range(int(count)):  # GPU i as the last entry selecting it leaves it (advertised)
        entry = next((e for e in reversed(held) if e.devices is None or i in e.devices), None)
        total += sum(entry.mig_devices.values()) if entry is not None and entry.mig_enabled else 0
        if total >= int(count):
            return i + 1 if total == int(count) else None
    return None


def held_entries(node: NodeFacts, gpu: mig_layouts.MigGPU, layouts: Layouts | None) -> tuple[
        mig_layouts.LayoutEntry, ...] | None:  # fmt: skip
    """The entries of the layout the node's GPUs hold once a change succeeded (state success): the one last let
    through, else its mig.config. None mid-change or after a failed one."""
    labels = node.labels
    layout = labels.get(APPROVED) or labels.get(MIG_CONFIG)
    if labels.get(MIG_CONFIG_STATE) != "success" or not layout:
        return None
    return layout_entries(gpu, layout, node_layouts(gpu, layouts))


class ConfigError(ValueError):
    pass


_ENTRY_FIELDS = ("device-filter", "devices", "mig-enabled", "mig-devices")


def parse_config(text: str) -> dict[str, tuple[mig_layouts.LayoutEntry, ...]]:
    """A mig-parted config file (`version: v1`, `mig-configs: {name: [entries]}`) -> layout name -> entries.

    ConfigError ("<key path>: <rule>") for what mig-parted refuses (api/spec/v1/spec.go, as its YAML reaches Go's
    JSON decoder): it refuses the whole file then, and mig-manager fails every layout. Also for a device filter it
    cannot read (_device_id)."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"not YAML: {exc}") from None
    try:
        return _configs(doc)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:  # a shape the checks missed: still the file's fault, not the pass's
        raise ConfigError(f"unreadable: {exc}") from None


def _configs(doc: Any) -> dict[str, tuple[mig_layouts.LayoutEntry, ...]]:
    if not isinstance(doc, dict):
        raise ConfigError("the config is not a map")
    if doc.get("version") != "v1":  # mig-parted's only version, and required
        got = f"{doc['version']!r}" if "version" in doc else "missing"
        raise ConfigError(f"version: must be v1, not {got}")
    for key in doc:
        if key not in ("version", "mig-configs"):
            raise ConfigError(f"{key}: unexpected field (a config has version and mig-configs)")
    configs = doc.get("mig-configs")
    if not isinstance(configs, dict) or not configs:
        raise ConfigError("mig-configs: must be a map of at least one layout")
    out = {}
    for name, entries in configs.items():
        where = f"mig-configs.{name}"
        if not isinstance(entries, list) or not entries:
            raise ConfigError(f"{where}: must be a list of at least one entry")
        out[str(name)] = tuple(_entry(e, f"{where}[{i}]") for i, e in enumerate(entries))
    return out


def _entry(e: Any, where: str) -> mig_layouts.LayoutEntry:
    if not isinstance(e, dict):
        raise ConfigError(f"{where}: must be a map")
    for key in e:
        if key not in _ENTRY_FIELDS:
            raise ConfigError(f"{where}.{key}: unexpected field (one of {', '.join(_ENTRY_FIELDS)})")
    for key in ("devices", "mig-enabled"):
        if key not in e:
            raise ConfigError(f"{where}: missing required field {key}")
    filt = e.get("device-filter")
    if filt is None or isinstance(filt, str):  # null and "" select every GPU, as no filter
        filt = [filt] if filt else []
    elif not isinstance(filt, list) or not all(isinstance(d, str) for d in filt):
        raise ConfigError(f"{where}.device-filter: must be a device ID or a list of them, as strings, not {filt!r}")
    devices = e["devices"]
    if devices != "all" and not (isinstance(devices, list) and all(_whole(i) for i in devices)):
        raise ConfigError(f"{where}.devices: must be all or a list of GPU indices, not {devices!r}")
    enabled = e["mig-enabled"]
    if enabled is not None and not isinstance(enabled, bool):
        raise ConfigError(f"{where}.mig-enabled: must be true or false, not {enabled!r}")
    raw = e.get("mig-devices")
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(f"{where}.mig-devices: must be a map of MIG profile to count, not {raw!r}")
    counts: dict[str, int] = {}
    for profile, n in (raw or {}).items():
        at = f"{where}.mig-devices.{profile}"
        problem = _profile_problem(str(profile))
        if problem:
            raise ConfigError(f"{at}: not a MIG profile name ({problem})")
        n = 0 if n is None else n  # null decodes to 0
        if not _whole(n) or n < 0:
            raise ConfigError(f"{at}: the count must be a whole number >= 0, not {n!r}")
        if n:  # keyed as mig-parted matches it: `1c.1g.10gb` and `1g.10gb` are one profile, their counts add up
            name = mig_layouts.canonical(str(profile))
            counts[name] = counts.get(name, 0) + int(n)
    if raw and not counts:
        raise ConfigError(f"{where}.mig-devices: all counts are 0")
    if enabled and raw is None:
        raise ConfigError(f"{where}: mig-devices is required when mig-enabled is true")
    if not enabled and raw:
        raise ConfigError(f"{where}.mig-devices: must be empty when mig-enabled is false")
    return mig_layouts.LayoutEntry(
        bool(enabled),  # null decodes to false
        counts,
        tuple(_device_id(d, f"{where}.device-filter") for d in filt),
        devices=None if devices == "all" else tuple(int(i) for i in devices),
    )


_HEX_ID = re.compile(r"0[xX][0-9A-Fa-f]+")


def _device_id(value: str, where: str) -> str:
    """A device-filter value's device ID in the table's spelling (`:<subsystem ID>` narrows within a model: dropped).

    mig-parted reads it with Go's strconv.ParseUint(s, 0, 32) (pkg/types/device.go NewDeviceIDFromString) and
    ignores a failure (api/spec/v1/helpers.go MatchesDeviceFilter): that value then selects no GPU, mig-manager
    walks none and reports success with MIG as it was. We refuse what is not 0x-prefixed hex of 32 bits instead."""
    parts = value.split(":")
    if len(parts) > 2 or not all(_HEX_ID.fullmatch(p) and int(p, 16) <= 0xFFFFFFFF for p in parts):
        raise ConfigError(
            f"{where}: {value!r} is not a device ID in hex with 0x (as 0x233010DE, optionally :0x<subsystem ID>); "
            "mig-parted reads it as Go's strconv.ParseUint(s, 0, 32) does (without 0x: decimal), and a value it "
            "cannot read selects no GPU"
        )
    return f"0x{int(parts[0], 16):08X}"


def _whole(n: Any) -> bool:
    """A JSON number Go decodes into an int (YAML's 2.0 reaches it as 2)."""
    return not isinstance(n, bool) and (isinstance(n, int) or isinstance(n, float) and n.is_integer())


_FIELD = re.compile(r"[+-]?\d+")
_ATTRIBUTE = re.compile(r"[A-Za-z](?:[A-Za-z0-9.]*[A-Za-z0-9])?")


def _profile_problem(profile: str) -> str:
    """Why mig-parted refuses a profile name (go-nvlib's parseMigProfile: `[<C>c.]<G>g.<M>gb`, then `+` or `-`
    and attributes), or ""."""
    if "+" in profile and "-" in profile:
        return "both + and - attributes"
    base, sep, attributes = profile.partition("+" if "+" in profile else "-")
    fields = base.split(".", 2)
    units = ("c", "g", "gb")[-len(fields) :] if len(fields) > 1 else ()
    pairs = zip(fields, units, strict=True)
    if not units or not all(f.endswith(u) and _FIELD.fullmatch(f[: -len(u)]) for f, u in pairs):
        return "expected <G>g.<M>gb or <C>c.<G>g.<M>gb"
    names = attributes.split(",")
    if sep and (len(set(names)) != len(names) or not all(_ATTRIBUTE.fullmatch(a) for a in names)):
        return "attributes must be distinct, alphanumeric or '.', starting with a letter"
    return ""


def layout_entries(
    gpu: mig_layouts.MigGPU, layout: str, layouts: Layouts | None = None
) -> tuple[mig_layouts.LayoutEntry, ...] | None:
    """The entries of `layout` that select a GPU of this model, or None: the layout is not valid on it (no entry
    selects it, or one asks for MIG devices it cannot hold: mig-parted applies every entry that selects a GPU)."""
    entries = (layouts if layouts is not None else mig_layouts.default_layouts()).get(layout, ())
    chosen = tuple(e for e in entries if mig_layouts.selects(e, gpu.device_ids))
    if not chosen or not all(mig_layouts.fits(gpu, e.mig_devices) for e in chosen):
        return None
    return chosen


def node_layouts(gpu: mig_layouts.MigGPU, layouts: Layouts | None) -> Layouts:
    """The layouts mig-manager has on a node of this GPU: the config it reads (`layouts`), or with no ConfigMap named
    (None) those it builds from the GPU (the default ones are only its fallback)."""
    return layouts if layouts is not None else mig_layouts.generated_layouts(gpu)


def layout_devices(gpu: mig_layouts.MigGPU, layout: str, layouts: Layouts | None = None) -> dict[str, int] | None:
    """The MIG devices `layout` makes on one GPU of this model ({} = none; the last entry's where several select
    it: mig-parted applies them in order), or None: not valid on it."""
    entries = layout_entries(gpu, layout, layouts)
    return None if entries is None else dict(entries[-1].mig_devices)


def valid_layouts(gpu: mig_layouts.MigGPU, layouts: Layouts | None = None) -> list[str]:
    names = layouts if layouts is not None else mig_layouts.default_layouts()
    return [n for n in names if layout_devices(gpu, n, layouts) is not None]


def compute_instances(entries: Sequence[mig_layouts.LayoutEntry]) -> list[str]:
    """The compute-instance profiles (`1c.2g.20gb`) these entries make. The device plugin's mixed strategy names a
    resource only for C == G profiles (k8s-device-plugin internal/rm/rm.go) and fails on a MIG device no resource
    matches (device_map.go buildMigDeviceMap)."""
    return sorted({p for e in entries for p in e.mig_devices if mig_layouts.compute_instance(p)})


def single_strategy_problem(entries: Sequence[mig_layouts.LayoutEntry], gpus: int | None = None) -> str:
    """Why the device plugin's single strategy fails on a node these entries (layout_entries) lay out, or "": it
    needs every GPU MIG-disabled, or every one MIG-enabled with MIG devices of one profile (k8s-device-plugin
    internal/rm/device_map.go; `advertised` gives {} then). Each GPU is as the last entry that selects its index
    leaves it (one none selects is not counted): GPUs 0..gpus-1 when the node's count is known, else the indices an
    entry names, and one it does not name where an entry selects all GPUs."""
    named = sorted({i for e in entries for i in e.devices or ()})
    slots: list[int | None] = [*named, None] if any(e.devices is None for e in entries) else [*named]
    if gpus:
        slots = list(range(gpus))
    selecting = (next((e for e in reversed(entries) if e.devices is None or i in e.devices), None) for i in slots)
    last = [e for e in selecting if e is not None]
    enabled = [e for e in last if e.mig_enabled]
    if not enabled:
        return ""
    if len(enabled) < len(last):
        return "enables MIG on some GPUs and not on others"
    if any(not e.mig_devices for e in enabled):
        return "enables MIG with no MIG devices"
    profiles = sorted({p for e in enabled for p in e.mig_devices})
    return f"has MIG devices of {len(profiles)} profiles ({', '.join(profiles)})" if len(profiles) > 1 else ""


def mode_conflict(entries: Sequence[mig_layouts.LayoutEntry], gpus: int | None = None) -> str:
    """Why mig-parted fails these entries (layout_entries) on a node, or "": a GPU two of them select with different
    mig-enabled. Its apply sets each GPU's mode as the last selecting entry says (apply/mode.go), then walks every
    selecting entry again and fails one whose mig-enabled is not the GPU's mode (apply/config.go). GPUs as in
    single_strategy_problem: 0..gpus-1 when known, else the indices an entry names and one for `devices: all`."""
    named = sorted({i for e in entries for i in e.devices or ()})
    slots: list[int | None] = list(range(gpus)) if gpus else [*named, None]
    for i in slots:
        modes = {e.mig_enabled for e in entries if e.devices is None or (i is not None and i in e.devices)}
        if len(modes) > 1:
            return f"turns MIG both on and off on {f'GPU {i}' if i is not None else 'its GPUs'}"
    return ""


def mig_resource(profile: str) -> str:
    """The device plugin's resource for a MIG profile under the mixed strategy (`+` is not allowed in a name)."""
    return "nvidia.com/mig-" + profile.replace("+", ".")


def advertised(entries: Sequence[mig_layouts.LayoutEntry], gpus: int, strategy: str) -> dict[str, int]:
    """Extended resources a node with `gpus` GPUs of one model advertises under a MIG strategy once a layout's
    `entries` for that model (layout_entries) are applied: each GPU as the last entry that selects its index leaves
    it; a GPU none selects keeps what it has and is not counted."""
    whole, enabled, empty = 0, 0, 0
    devices: dict[str, int] = {}
    for i in range(gpus):
        entry = next((e for e in reversed(entries) if e.devices is None or i in e.devices), None)
        if entry is None:
            continue
        if not entry.mig_enabled:
            whole += 1
            continue
        enabled += 1
        empty += not entry.mig_devices  # MIG mode on, no instance: nothing to hand out
        for p, n in entry.mig_devices.items():
            devices[p] = devices.get(p, 0) + n
    if strategy == "mixed" and any(mig_layouts.compute_instance(p) for p in devices):
        return {}  # the plugin fails (compute_instances)
    if strategy == "single":  # the plugin refuses MIG and whole GPUs together, an empty one, or two profiles
        if not enabled:
            return {"nvidia.com/gpu": whole} if whole else {}
        return {"nvidia.com/gpu": sum(devices.values())} if not whole and not empty and len(devices) == 1 else {}
    return ({"nvidia.com/gpu": whole} if whole else {}) | {mig_resource(p): n for p, n in devices.items()}


@dataclass(frozen=True)
class NodeEvent:
    node: str
    type: str
    reason: str
    message: str
    said: str = field(default="", compare=False)  # how the MIGConfig condition names the same (_said), if it does


@dataclass
class Decision:
    patches: dict[str, dict[str, str | None]] = field(default_factory=dict)  # node -> label patch
    events: list[NodeEvent] = field(default_factory=list)
    evict: dict[str, tuple[tuple[str, str], ...]] = field(default_factory=dict)  # node -> (namespace, name)
    refused: list[tuple[str, str, str]] = field(default_factory=list)  # node, layout, why
    waiting: list[tuple[str, str, str]] = field(default_factory=list)  # node, layout, why
    cordon: list[str] = field(default_factory=list)  # nodes to cordon, as the gate's, before their evictions
    uncordon: list[str] = field(default_factory=list)  # nodes whose cordon, the gate's, is to go
    managed: int = 0  # MIG nodes looked at
    config_error: str = ""  # why the user's config cannot be read, whether or not a node asks for a layout

    def _set(self, node: str, key: str, value: str | None) -> None:
        self.patches.setdefault(node, {})[key] = value


def mig_nodes(nodes: Iterable[NodeFacts], spec: ClusterPolicySpec) -> list[NodeFacts]:
    """GPU nodes whose layout the operator checks: MIG-capable container nodes whose mig-manager is not opted out."""
    if not spec.mig_manager.enabled:
        return []
    return [n for n in nodes if _managed(n, spec)]


# What the MIG pass works out per node is kept on the node object with the spec (nodes.per_spec): a pass looks at
# every node, and most did not change since the last.
def _managed(node: NodeFacts, spec: ClusterPolicySpec) -> bool:
    return per_spec(node, "_mig_managed", spec, _is_managed)


def _is_managed(node: NodeFacts, spec: ClusterPolicySpec) -> bool:
    return (
        node.has_gpu
        and node.is_mig_capable
        and workload_of(node, spec) == "container"
        and node.labels.get(MANAGER_LABEL) in ("true", PAUSED)
    )


def managed(node: NodeFacts, spec: ClusterPolicySpec) -> bool:
    """Whether `decide` checks the node's layout (one of mig_nodes)."""
    return spec.mig_manager.enabled and _managed(node, spec)


def busy(node: NodeFacts, spec: ClusterPolicySpec, layouts: Layouts | None, unreadable: str = "") -> bool:
    """Whether `decide` (with these `layouts` and `unreadable`) may have something to do on the node; `decide` over
    the busy nodes alone decides as over all (its node count aside), and `changes_requested` are busy ones. A node
    the gate cordoned is one until the cordon goes, also once it has no GPU."""
    if not node.has_gpu and MIG_CORDONED not in node.annotations:
        return False
    return not _quiet(node, spec) or (node.has_gpu and not unreadable and _stale(node, spec, layouts))


def _stale(node: NodeFacts, spec: ClusterPolicySpec, layouts: Layouts | None) -> bool:
    """Whether the layout let through on a quiet node is refused now (mig-manager's config or the strategy changed
    since)."""
    want = requested(node, spec)
    return managed(node, spec) and bool(want) and bool(_refusal(node, spec, want, layouts))


def _quiet(node: NodeFacts, spec: ClusterPolicySpec) -> bool:
    """Nothing for `decide` to do on this node, whatever its pods and mig-managers: no operand paused for a MIG
    change, and (a node whose layout is checked) the layout its label asks for let through, or none asked for and no
    wait's `pending` left, mig-manager not held."""
    return per_spec(node, "_mig_quiet", spec, _is_quiet)


def _is_quiet(node: NodeFacts, spec: ClusterPolicySpec) -> bool:
    labels = node.labels
    if MIG_CORDONED in node.annotations:
        return False
    if any(labels.get(key) == PAUSED for _, key in _PAUSED_KEYS):
        return False
    if spec.mig_manager.enabled and _managed(node, spec):
        want = requested(node, spec)
        let_through = labels.get(APPROVED) == want or (not want and labels.get(MIG_CONFIG_STATE) != "pending")
        return let_through and labels.get(MANAGER_LABEL) != PAUSED
    return not _waits_left(node)


def _waits_left(node: NodeFacts) -> bool:
    """Whether a node the gate no longer checks keeps a wait's `pending` (ours: mig-manager held, no operand paused):
    nothing would end it."""
    labels = node.labels
    return (
        labels.get(MIG_CONFIG_STATE) == "pending"
        and labels.get(MANAGER_LABEL) == PAUSED
        and not any(labels.get(key) == PAUSED for _, key in _PAUSED_KEYS)
    )


def requested(node: NodeFacts, spec: ClusterPolicySpec) -> str:
    """The layout the node asks for: its label, else the policy's default; "" for none (an empty `config.default`
    or no `config` section, as upstream: no label is seeded, and mig-manager has nothing to apply)."""
    return node.labels.get(MIG_CONFIG) or spec.mig_manager.default_layout


def changes_requested(nodes: Iterable[NodeFacts], spec: ClusterPolicySpec) -> list[str]:
    """Nodes whose label asks for a layout not yet let through (their pods are needed for the decision)."""
    if not spec.mig_manager.enabled:
        return []
    return [
        n.name
        for n in nodes
        if _managed(n, spec) and n.labels.get(APPROVED) not in (None, requested(n, spec)) and requested(n, spec)
    ]


# mig-manager pauses these deploy labels and waits for the DaemonSet pods that select on them to go (mig-parted
# pkg/mig/reconfigure: the operands, and third-party GPU clients selecting on nvidia.com/gpu.deploy.client).
_STOPPED_BY_MANAGER = frozenset(key for _, key in _PAUSED_KEYS)


def _gpu_pods(pods: Iterable[WorkloadPod]) -> list[WorkloadPod]:
    """The pods that would hold a GPU through the change: every running pod asking for one but the DaemonSet pods
    mig-manager stops itself (a user's DaemonSet or static pod asking for one is stopped by nothing)."""
    return [
        p for p in pods
        if p.uses_gpu and not p.finished
        and not (p.is_daemonset_pod and _STOPPED_BY_MANAGER.intersection(p.deploy_selector))
    ]  # fmt: skip


def _refs(pods: Sequence[WorkloadPod]) -> str:
    return ", ".join(p.ref for p in pods[:5]) + (f" and {len(pods) - 5} more" if len(pods) > 5 else "")


def decide(
    nodes: Iterable[NodeFacts],
    spec: ClusterPolicySpec,
    *,
    layouts: Layouts | None,
    pods: Mapping[str, list[WorkloadPod]],
    managers: frozenset[str],
    unreadable: str = "",
) -> Decision:
    """`layouts`: the config mig-manager reads (None: none named, it builds each node's from its GPU); `pods`: the
    pods of each node in `changes_requested`; `managers`: nodes with a live mig-manager pod; `unreadable`: why the
    user's config could not be read (every layout to check is refused)."""
    out = Decision()
    doing: list[tuple[NodeFacts, bool]] = []  # GPU or gate-cordoned nodes with something to do, whether managed
    for node in nodes:  # one walk: at 5,000 nodes each walk is ~1 ms, and most nodes are quiet
        checks = managed(node, spec)
        out.managed += checks
        if busy(node, spec, layouts, unreadable):
            doing.append((node, checks))
    for node, checks in doing:  # restore labels on every GPU node, also those no longer managed
        if node.has_gpu:
            _restore(node, spec, checks and node.name in managers, out)
    for node, checks in doing:
        if checks:
            _gate(node, spec, layouts, unreadable, pods.get(node.name, []), node.name in managers, out)
        elif _waits_left(node):  # no longer the gate's to check: its wait's `pending` goes (the hold stays)
            out._set(node.name, MIG_CONFIG_STATE, None)
        if MIG_CORDONED in node.annotations:
            _uncordon(node, spec, checks, out)
    return out


def upgrading(node: NodeFacts) -> bool:
    """Whether the driver upgrade holds the node (its state machine cordons and uncordons it): the gate keeps off."""
    return node.labels.get(UPGRADE_STATE) in UPGRADING


def _uncordon(node: NodeFacts, spec: ClusterPolicySpec, checks: bool, out: Decision) -> None:
    """The gate's cordon goes once the node's change neither waits nor is under way (let through, mig-manager not
    done: state pending or rebooting); never while the driver upgrade holds the node."""
    labels = apply_patch(node.labels, out.patches.get(node.name, {}))
    waits = any(n == node.name for n, _, _ in out.waiting)
    under_way = labels.get(APPROVED) == requested(node, spec) and labels.get(MIG_CONFIG_STATE) in IN_PROGRESS
    if not (checks and (waits or under_way)) and not upgrading(node):
        out.uncordon.append(node.name)


def _restore(node: NodeFacts, spec: ClusterPolicySpec, manager_alive: bool, out: Decision) -> None:
    labels = node.labels
    paused = [op for op, key in _PAUSED_KEYS if labels.get(key) == PAUSED]
    if not paused:
        return
    state = labels.get(MIG_CONFIG_STATE, "")
    coming = spec.mig_manager.enabled and labels.get(MANAGER_LABEL) == "true"
    over = state not in IN_PROGRESS
    gone = not manager_alive and not coming
    if not (over or gone):
        return
    for op in paused:
        out._set(node.name, deploy_label(op), "true")
    why = f"the MIG change is over ({state})" if over else "its mig-manager is gone"
    if not over:
        out._set(node.name, MIG_CONFIG_STATE, "failed")
    names = ", ".join(paused)
    out.events.append(NodeEvent(node.name, "Warning", EVENT_RESTORED, f"restored {names}: {why}"))


def _refusal(node: NodeFacts, spec: ClusterPolicySpec, want: str, layouts: Layouts | None) -> str | None:
    """Why `decide` refuses layout `want` on the node ("" when it does not), or None when it cannot judge it yet
    (the node's GPU not known)."""
    source = f"ConfigMap {spec.mig_manager.config.name}" if layouts is not None else "the default layouts"
    gpu = gpu_of_node(node)
    if want not in (layouts if layouts is not None else mig_layouts.default_layouts()):
        # Without a ConfigMap of the user's, mig-manager builds the node's layouts from its GPUs (the default ones
        # are its fallback): on a GPU the table does not know, a name it may build is left to it.
        if layouts is None and gpu is None and _GENERATED.match(want):
            return None
        return f"is not in {source}"
    if gpu is None:
        return None  # GPU not known yet (no GFD product or NFD device-ID label): nothing to check against
    entries = layout_entries(gpu, want, node_layouts(gpu, layouts))
    if entries is None:
        return f"is not valid for {gpu.name} ({source})"
    if problem := mode_conflict(entries, physical_gpus(node.labels)):
        return (f"{problem}: mig-parted sets the mode its last entry for a GPU asks for, then fails the entries that "
                "ask for the other (mig-enabled)")
    if spec.mig.strategy == "mixed" and (shared := compute_instances(entries)):
        return (f"has compute-instance profiles ({', '.join(shared)}): the device plugin's mixed strategy advertises "
                "none and fails on a node with one (mig.strategy single advertises them as nvidia.com/gpu)")
    # No device plugin (devicePlugin.enabled false, e.g. GPUs handed out by a DRA driver): nothing fails on it
    single = spec.device_plugin.enabled and spec.mig.strategy == "single"
    gpus = physical_gpus(node.labels, held_entries(node, gpu, layouts)) if single else None
    if single and (problem := single_strategy_problem(entries, gpus)):
        return (f"{problem}: the device plugin's single strategy needs one profile on every GPU of a node and fails "
                "otherwise (mig.strategy mixed advertises each profile as its own resource)")
    return ""


def _gate(
    node: NodeFacts,
    spec: ClusterPolicySpec,
    layouts: Layouts | None,
    unreadable: str,
    pods: list[WorkloadPod],
    manager_alive: bool,
    out: Decision,
) -> None:
    labels = node.labels
    name = node.name
    want = requested(node, spec)
    approved = labels.get(APPROVED)
    held = labels.get(MANAGER_LABEL) == PAUSED
    state = labels.get(MIG_CONFIG_STATE, "")
    operands_paused = any(labels.get(key) == PAUSED for _, key in _PAUSED_KEYS)
    if state in IN_PROGRESS and operands_paused and not held:
        return  # mig-manager is mid-change: let it finish
    # A layout let through is checked again against the config mig-manager reads now (its new pod applies the label
    # on start; a config that cannot be read is ConfigInvalid, not each node's refusal).
    why = ""
    if approved == want and want and not unreadable:
        why = _refusal(node, spec, want, layouts) or ""
    if (approved == want or not want) and not why:  # let through already, or nothing asked for
        if held:
            out._set(name, MANAGER_LABEL, "true")
        # A wait's (ours: it holds mig-manager), withdrawn: nothing to end it; nor once let through with no live
        # mig-manager pod (one started with no label never runs). Not held with a live pod: its own run, which writes
        # pending before it pauses the operands.
        if not want and state == "pending" and not operands_paused and (held or not manager_alive):
            out._set(name, MIG_CONFIG_STATE, None)
        return
    if not why:
        refusal = f"cannot be applied: {unreadable}" if unreadable else _refusal(node, spec, want, layouts)
        if refusal is None:
            return  # not judged yet
        why = refusal
    if why:
        out.refused.append((name, want, why))
        if not held:
            out._set(name, MANAGER_LABEL, PAUSED)
        if state == "pending" and not operands_paused:  # a wait's (ours): held now, no mig-manager would end it
            out._set(name, MIG_CONFIG_STATE, "failed")
        out.events.append(NodeEvent(name, "Warning", EVENT_REFUSED, f"MIG layout {want!r} {why}",
                                    said=_said(name, want, why)))
        return
    if approved is None and state not in IN_PROGRESS:  # first sight: what the node has is taken as let through
        out._set(name, APPROVED, want)
        if held:
            out._set(name, MANAGER_LABEL, "true")
        return
    busy = _gpu_pods(pods)
    if busy:
        refs = _refs(busy)
        drain = spec.driver.upgrade_policy.drain
        # As kubectl drain: a DaemonSet's pod would come back at once and a static pod is the kubelet's, never evicted.
        movable = [p for p in busy if not p.is_daemonset_pod]
        staying = [p for p in busy if p.is_daemonset_pod]
        left_out: list[WorkloadPod] = []  # pods the driver upgrade's drain leaves alone: never evicted either
        refused = None
        if drain.enable and movable:
            try:
                selector = parse_selector(drain.pod_selector)
            except SelectorError as exc:
                refused = f"driver.upgradePolicy.drain.podSelector is invalid: {exc}"
            else:  # as upgrade/planner.py drain (upstream's drain helper with its drain.skip!=true)
                taken = [p.labels.get(DRAIN_SKIP_LABEL) != "true" and selector.matches(p.labels) for p in movable]
                left_out = [p for p, t in zip(movable, taken, strict=True) if not t]
                movable = [p for p, t in zip(movable, taken, strict=True) if t]
        if drain.enable and movable and refused is None:
            refused = eviction_refused(movable, force=drain.force, delete_emptydir=drain.delete_empty_dir,
                                       field="driver.upgradePolicy.drain")  # fmt: skip
        rule = f"labelled {DRAIN_SKIP_LABEL}=true"
        if drain.pod_selector.strip():
            rule = f"not selected by driver.upgradePolicy.drain.podSelector {drain.pod_selector!r} or {rule}"
        if drain.enable and movable and refused is None:
            why = f"evicting {len(movable)} GPU pod(s): {_refs(movable)}"
            if staying:
                why += f"; {len(staying)} DaemonSet or static GPU pod(s), never evicted: {_refs(staying)}"
            if left_out:
                why += f"; {len(left_out)} GPU pod(s) {rule}, never evicted: {_refs(left_out)}"
            evict = tuple((p.namespace, p.name) for p in movable if not p.terminating)
            if evict:
                out.evict[name] = evict
            if not node.unschedulable and not upgrading(node):
                out.cordon.append(name)
        elif refused is not None:
            why = f"{len(busy)} GPU pod(s) running: {refs}; not evicted: {refused}"
        elif left_out:
            why = f"{len(busy)} GPU pod(s) running: {refs} (never evicted: {_refs(left_out)} {rule})"
        elif movable:
            why = f"{len(busy)} GPU pod(s) running: {refs} (driver.upgradePolicy.drain.enable allows eviction)"
        else:
            why = f"{len(busy)} GPU pod(s) running: {refs} (DaemonSet or static pods, never evicted)"
        out.waiting.append((name, want, why))
        if not held:
            out._set(name, MANAGER_LABEL, PAUSED)
        if state != "pending":
            out._set(name, MIG_CONFIG_STATE, "pending")
        out.events.append(NodeEvent(name, "Normal", EVENT_WAITING, f"MIG layout {want!r} waits: {why}",
                                    said=_said(name, want, f"waits: {why}")))
        return
    out._set(name, APPROVED, want)
    if held:
        out._set(name, MANAGER_LABEL, "true")


def condition(
    decision: Decision, generation: int | None, previous: list[dict[str, Any]], now: str
) -> dict[str, Any] | None:
    """The MIGConfig condition: True when every requested layout is accepted and the user's config can be read;
    None when no node is MIG-managed and the config is fine."""
    if not decision.managed and not decision.refused and not decision.config_error:
        return None
    parts = [_said(n, lay, why) for n, lay, why in decision.refused]
    parts += [_said(n, lay, f"waits: {why}") for n, lay, why in decision.waiting]
    if decision.config_error and not decision.refused:  # refused layouts name it already
        parts.insert(0, f"{decision.config_error}: mig-manager would fail every layout change")
    if decision.refused:
        value, reason = "False", "LayoutRefused"
    elif decision.config_error:
        value, reason = "False", "ConfigInvalid"
    elif decision.waiting:
        value, reason = "False", "WaitingForGPUWorkloads"
    else:
        value, reason = "True", "LayoutsAccepted"
    accepted = f"every requested MIG layout is valid on {decision.managed} node(s)"
    message = whole_entries(parts, MESSAGE_LIMIT) or accepted
    before = next((c for c in previous if c.get("type") == CONDITION), {})
    kept = before.get("status") == value and before.get("lastTransitionTime")
    since = before["lastTransitionTime"] if kept else now
    return {
        "type": CONDITION,
        "status": value,
        "reason": reason,
        "message": message,
        "lastTransitionTime": since,
        "observedGeneration": generation,
    }


def _said(node: str, layout: str, why: str) -> str:
    """How the MIGConfig condition names a node's refused or waiting layout."""
    return f"node {node}: layout {layout!r} {why}"


def unsaid(events: Iterable[NodeEvent], previous: list[dict[str, Any]]) -> list[NodeEvent]:
    """The events but those whose refusal or wait the previous MIGConfig condition names already: read from the
    status, so a restarted operator or a new leader posts nothing new at steady state (but for the nodes past what
    the message names: "and N more")."""
    before: dict[str, Any] = next((c for c in previous if c.get("type") == CONDITION), {})
    text = f"; {before.get('message') or ''}; "
    return [e for e in events if not e.said or f"; {e.said}; " not in text]
