"""The device plugin's sharing configs (pure): parsed and checked as upstream's device plugin would, so a config
it would reject is refused before it rolls out.

Facts from upstream k8s-device-plugin v0.20 (`api/config/v1`: config.go, replicas.go, resources.go, sharing.go;
`cmd/nvidia-device-plugin/main.go` validateFlags; `internal/plugin/mps.go`):

* `version` empty means v1; any other value: "unknown version".
* `sharing.timeSlicing` / `sharing.mps` need `resources` (non-empty); each resource needs `name` (prefixed with
  `nvidia.com/` when it has no prefix; at most 63 characters; a DNS subdomain after the prefix) and `replicas`
  (an integer >= 2; upstream refuses 1); `devices` is `all`, a count > 0 or a list of GPU/MIG indexes or UUIDs.
* `renameByDefault` renames every resource to `<name>.shared`; MPS defaults `failRequestsGreaterThanOne` to true.
* The strategy is MPS when an MPS resource has replicas > 1, else time-slicing when a time-slicing one has.
* MPS with `--mig-strategy=mixed` is refused at start; MPS on MIG devices is refused too ("sharing using MPS
  is not supported for MIG devices").
* `flags.migStrategy` must be none/single/mixed; the MIG_STRATEGY env the operator sets overrides it.

Beyond upstream: a resource name the plugin can never advertise (neither `nvidia.com/gpu` nor
`nvidia.com/mig-<profile>` of a known MIG profile) is refused; upstream silently replicates nothing for it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import yaml

from . import mig, mig_layouts
from .nodes import NodeFacts
from .states.mig_manager import custom_config

VERSION = "v1"
PREFIX = "nvidia.com"
SHARED_SUFFIX = ".shared"
MAX_NAME = 63
GPU = "nvidia.com/gpu"
NODE_LABEL = "nvidia.com/device-plugin.config"
MIG_CONFIG_LABEL = "nvidia.com/mig.config"
MIG_STRATEGIES = ("none", "single", "mixed")
NONE, TIME_SLICING, MPS = "none", "time-slicing", "mps"
# The states whose pods load the config (config-manager): held while the config is refused.
HELD_STATES = ("state-device-plugin", "state-mps-control-daemon", "gpu-feature-discovery")
CONDITION = "SharingConfigValid"
REASON = "InvalidSharingConfig"

_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS_SUBDOMAIN = re.compile(rf"^{_DNS_LABEL}(\.{_DNS_LABEL})*$")
_UUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
_DEVICE_REF = re.compile(rf"^(\d+|\d+:\d+|GPU-{_UUID}|MIG-{_UUID}|MIG-GPU-{_UUID}/\d+/\d+)$")


class ConfigError(ValueError):
    """A config the device plugin would refuse: the field (a dotted path) and upstream's reason."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message


@dataclass(frozen=True)
class Replicated:
    name: str  # fully qualified, e.g. nvidia.com/gpu
    replicas: int
    rename: str = ""  # the advertised name when renamed (nvidia.com/gpu.shared)
    devices: str | int | tuple[str, ...] = "all"

    @property
    def advertised(self) -> str:
        return self.rename or self.name


@dataclass(frozen=True)
class ReplicatedResources:
    resources: tuple[Replicated, ...] = ()
    rename_by_default: bool = False
    fail_requests_greater_than_one: bool | None = None

    @property
    def replicated(self) -> bool:
        return any(r.replicas > 1 for r in self.resources)


@dataclass(frozen=True)
class SharingConfig:
    time_slicing: ReplicatedResources = field(default_factory=ReplicatedResources)
    mps: ReplicatedResources | None = None
    mig_strategy: str | None = None  # flags.migStrategy (the env overrides it)

    @property
    def strategy(self) -> str:
        if self.mps is not None and self.mps.replicated:
            return MPS
        return TIME_SLICING if self.time_slicing.replicated else NONE

    @property
    def replicated(self) -> ReplicatedResources:
        """The resources that are shared (upstream's ReplicatedResources(): MPS when set, else time-slicing)."""
        return self.mps if self.mps is not None else self.time_slicing

    def sharing_of(self, resource: str) -> Replicated | None:
        return next((r for r in self.replicated.resources if r.name == resource), None)


EMPTY = SharingConfig()


def resource_name(raw: Any, where: str) -> str:
    """upstream's NewResourceName: `gpu` -> `nvidia.com/gpu`, checked for length and DNS-subdomain form."""
    if not isinstance(raw, str):
        raise ConfigError(where, f"a resource name must be a string, not {raw!r}")
    name = raw if raw.startswith(PREFIX + "/") else f"{PREFIX}/{raw}"
    if len(name) > MAX_NAME:
        raise ConfigError(where, f"fully-qualified resource name must be {MAX_NAME} characters or less: {name}")
    if not _DNS_SUBDOMAIN.match(name.split("/", 1)[1]):
        raise ConfigError(where, f"incorrect format for resource name '{name}': not a DNS subdomain")
    return name


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(where, f"must be true or false, not {value!r}")
    return value


def _devices(raw: Any, where: str) -> str | int | tuple[str, ...]:
    if isinstance(raw, str):
        if raw != "all":
            raise ConfigError(where, f"devices set as '{raw}' but the only valid string input is 'all'")
        return raw
    if isinstance(raw, bool) or raw is None:
        raise ConfigError(where, f"unrecognized type for devices spec: {raw!r}")
    if isinstance(raw, int):
        if raw <= 0:
            raise ConfigError(where, f"devices set as '{raw}' but a count of devices must be > 0")
        return raw
    if isinstance(raw, list):
        out = []
        for i, item in enumerate(raw):
            ref = str(item) if isinstance(item, int) and not isinstance(item, bool) and item >= 0 else item
            if not isinstance(ref, str) or not _DEVICE_REF.match(ref):
                raise ConfigError(f"{where}[{i}]", f"unsupported type for device in devices list: {item!r}")
            out.append(ref)
        return tuple(out)
    raise ConfigError(where, f"unrecognized type for devices spec: {raw!r}")


def _replicated(raw: Any, where: str) -> ReplicatedResources:
    if not isinstance(raw, dict):
        raise ConfigError(where, "must be a mapping")
    rename_by_default = _bool(raw.get("renameByDefault", False), f"{where}.renameByDefault")
    fail = raw.get("failRequestsGreaterThanOne")
    if fail is not None:
        fail = _bool(fail, f"{where}.failRequestsGreaterThanOne")
    items = raw.get("resources")
    if not items:
        raise ConfigError(f"{where}.resources", "no resources specified")
    if not isinstance(items, list):
        raise ConfigError(f"{where}.resources", "must be a list")
    resources = []
    for i, item in enumerate(items):
        at = f"{where}.resources[{i}]"
        if not isinstance(item, dict):
            raise ConfigError(at, "must be a mapping")
        if "name" not in item:
            raise ConfigError(f"{at}.name", "no resource name specified")
        name = resource_name(item["name"], f"{at}.name")
        devices = _devices(item.get("devices", "all"), f"{at}.devices")
        if "replicas" not in item:
            raise ConfigError(f"{at}.replicas", "no replicas specified")
        replicas = item["replicas"]
        if isinstance(replicas, bool) or not isinstance(replicas, int):
            raise ConfigError(f"{at}.replicas", f"must be an integer, not {replicas!r}")
        if replicas < 2:
            raise ConfigError(f"{at}.replicas", "number of replicas must be >= 2")
        rename = resource_name(item["rename"], f"{at}.rename") if item.get("rename") else ""
        if rename_by_default and not rename:
            rename = name + SHARED_SUFFIX
        resources.append(Replicated(name, replicas, rename, devices))
    return ReplicatedResources(tuple(resources), rename_by_default, fail)


def parse(text: str) -> SharingConfig:
    """One named config (a ConfigMap value) as the device plugin reads it; ConfigError when it would refuse it."""
    try:
        raw = yaml.safe_load(text) if text.strip() else {}
    except yaml.YAMLError as exc:
        raise ConfigError("", f"unmarshal error: {exc}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError("", "unmarshal error: the config is not a mapping")
    version = raw.get("version") or VERSION
    if version != VERSION:
        raise ConfigError("version", f"unknown version: {version}")
    flags = raw.get("flags") or {}
    strategy = flags.get("migStrategy") if isinstance(flags, dict) else None
    if strategy is not None and strategy not in MIG_STRATEGIES:
        raise ConfigError("flags.migStrategy", f"unknown MIG strategy: {strategy}")
    sharing = raw.get("sharing") or {}
    if not isinstance(sharing, dict):
        raise ConfigError("sharing", "must be a mapping")
    time_slicing = (_replicated(sharing["timeSlicing"], "sharing.timeSlicing") if sharing.get("timeSlicing")
                    else ReplicatedResources())
    mps = _replicated(sharing["mps"], "sharing.mps") if sharing.get("mps") is not None else None
    if mps is not None and mps.fail_requests_greater_than_one is None:
        mps = ReplicatedResources(mps.resources, mps.rename_by_default, True)
    return SharingConfig(time_slicing, mps, strategy)


def known_resources() -> set[str]:
    """Every resource the device plugin can advertise: nvidia.com/gpu and nvidia.com/mig-<profile>."""
    profiles = {p for g in mig_layouts.gpus() for p in g.profiles} | set(mig_layouts.unattributed_profiles())
    return {GPU} | {f"{PREFIX}/mig-{p}" for p in profiles}


def check(config: SharingConfig, mig_strategy: str | None, mig_enabled: bool = False) -> None:
    """What the plugin refuses at start for a parsed config: MPS with mixed MIG or on MIG devices, and (beyond)
    resources it can never advertise. `mig_enabled`: a node that loads the config has MIG enabled; `mig_strategy`:
    the MIG_STRATEGY env (None: unset, the config's flags.migStrategy else none)."""
    mig_strategy = mig_strategy or config.mig_strategy or "none"
    known = known_resources()
    for where, group in (("sharing.timeSlicing", config.time_slicing), ("sharing.mps", config.mps)):
        for i, r in enumerate(group.resources if group else ()):
            if r.name not in known:
                raise ConfigError(f"{where}.resources[{i}].name",
                                  f"unknown resource {r.name}: the device plugin advertises only {GPU} and "
                                  f"{PREFIX}/mig-<profile>")
    if config.strategy == MPS:
        if mig_strategy == "mixed":
            raise ConfigError("sharing.mps", "using --mig-strategy=mixed is not supported with MPS")
        if mig_enabled and mig_strategy != "none":
            raise ConfigError("sharing.mps", "sharing using MPS is not supported for MIG devices")


@dataclass(frozen=True)
class Problem:
    config_map: str
    key: str
    field: str
    message: str

    def __str__(self) -> str:
        where = f" field {self.field}" if self.field else ""
        return f"ConfigMap {self.config_map} key {self.key}{where}: {self.message}"


def _mig_enabled(node: NodeFacts, layouts: mig.Layouts | None) -> bool:
    """Whether the node's layout puts its GPUs in MIG mode, by its entries in the user's mig-parted config
    (`layouts`) or the default table: a layout whose entries all keep MIG off does not, whatever its name. A name
    neither has counts as MIG on: mig-manager refuses it, and which mode the GPUs are left in is not known here."""
    layout = node.labels.get(MIG_CONFIG_LABEL)
    if not layout or layout == mig_layouts.DISABLED:
        return False
    entries = (layouts if layouts is not None else mig_layouts.default_layouts()).get(layout)
    return entries is None or any(e.mig_enabled for e in entries)


@lru_cache(maxsize=4)
def _parsed_layouts(text: str) -> mig.Layouts:
    try:
        return mig.parse_config(text)
    except mig.ConfigError:
        return {}


def problems(name: str, data: Mapping[str, str], mig_strategy: str | None, default: str = "",
             nodes: Iterable[NodeFacts] = (), layouts: mig.Layouts | None = None) -> list[Problem]:
    """Every key of the sharing ConfigMap the plugin would refuse, and a default naming no key.

    Nodes (GPU nodes) tell which keys load on a node with MIG enabled (the node's label, else the default);
    `layouts`: the user's mig-parted config (None: the default table)."""
    out = []
    mig_keys = {n.labels.get(NODE_LABEL) or default for n in nodes if n.has_gpu and _mig_enabled(n, layouts)}
    for key in sorted(data):
        try:
            check(parse(data[key]), mig_strategy, mig_enabled=key in mig_keys)
        except ConfigError as exc:
            out.append(Problem(name, key, exc.field, exc.message))
    if default and default not in data:
        out.append(Problem(name, default, "", f"devicePlugin.config.default names a key the ConfigMap does not "
                                               f"have (config-manager: specified config {default} does not exist)"))
    return out


def context_problems(spec: Any, config_data: Mapping[str, Mapping[str, str]],
                     nodes: Iterable[NodeFacts] = ()) -> list[Problem]:
    """The problems of the policy's sharing ConfigMap; none when there is none or its data is not known."""
    cfg = spec.device_plugin.config
    if not cfg.name or cfg.name not in config_data:
        return []
    layouts = None
    custom = custom_config(spec)
    if custom is not None:  # unreadable or absent: {} (no layout known, each counts as MIG on)
        layouts = _parsed_layouts((config_data.get(custom) or {}).get("config.yaml") or "")
    return problems(cfg.name, config_data[cfg.name], spec.mig.strategy, cfg.default, nodes, layouts)


def summary(found: list[Problem]) -> str:
    return "devicePlugin.config refused, not rolled out: " + "; ".join(str(p) for p in found)


def condition(config_name: str, found: list[Problem] | None, generation: int | None,
              previous: list[dict[str, Any]], now: str) -> dict[str, Any] | None:
    """The SharingConfigValid condition (only with a devicePlugin.config; None: no such config)."""
    if not config_name or found is None:
        return None
    before = next((c for c in previous if c.get("type") == CONDITION), {})
    if found:
        value, reason, message = "False", REASON, summary(found)
    else:
        value, reason, message = "True", "Valid", f"every config in ConfigMap {config_name} is valid"
    changed = before.get("status") != value or not before.get("lastTransitionTime")
    return {
        "type": CONDITION,
        "status": value,
        "reason": reason,
        "message": message[:1000],
        "lastTransitionTime": now if changed else before["lastTransitionTime"],
        "observedGeneration": generation,
    }
