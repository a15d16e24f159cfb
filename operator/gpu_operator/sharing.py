"""The device plugin's sharing configs (pure): parsed and checked as upstream's device plugin would, so a config
it would reject is refused before it rolls out.

Facts from upstream k8s-device-plugin v0.20 (`api/config/v1`: config.go, imex.go, replicas.go, resources.go, sharing.go;
`cmd/nvidia-device-plugin/main.go` validateFlags; `internal/plugin/mps.go`):

* `version` empty means v1; any other value: "unknown version".
* Keys of the config, `sharing`, `flags`, `resources` and `imex` match case-insensitively (Go's encoding/json);
  those inside `timeSlicing` / `mps` and a `resources` entry do not (upstream's own unmarshallers).
* `resources` (gpus/mig lists of `pattern` and `name`, both required, the name as below) is decoded, then ignored
  (DisableResourceNamingInConfig: "Customizing the 'resources' field is not yet supported in the config").
* `imex.channelIDs` (integers) must be [] or [0] (the plugin's validateFlags; the operator sets no
  IMEX_CHANNEL_IDS env); `imex.required` is true/false.
* `sharing.timeSlicing` (even `{}` or null) / `sharing.mps` (unless null) need `resources` (non-empty); each
  resource needs `name` (prefixed with `nvidia.com/` when it has no prefix; at most 63 characters; a DNS
  subdomain after the prefix) and `replicas` (an integer >= 2; upstream refuses 1); `devices` is `all`, a count
  > 0 or a list of GPU/MIG indexes or UUIDs (Go's uuid.Parse: with or without dashes).
* `renameByDefault` renames every resource to `<name>.shared`; MPS defaults `failRequestsGreaterThanOne` to true.
* An explicit `rename` and `devices` other than `all` are checked, then ignored (DisableResourceNamingInConfig,
  called by the plugin, GFD and the MPS daemon: "... is not yet supported in the config. Ignoring..."): every GPU
  is shared, under `<name>` (`<name>.shared` with renameByDefault).
* The strategy is MPS when an MPS resource has replicas > 1, else time-slicing when a time-slicing one has.
* The MPS control daemon refuses more than 48 replicas of a GPU (`cmd/mps-control-daemon/mps/device.go`), 16 below
  compute capability 7.5 (checked on nodes whose GFD labels nvidia.com/gpu.compute.major/minor say so).
* With MPS every resource of full GPUs waits for its MPS daemon (`internal/plugin/mps.go` getMPSOptions,
  waitForDaemon), which the MPS control daemon starts only for a shared resource (`mps/manager.go` Daemons): an
  MPS config not sharing `nvidia.com/gpu`, the only such resource without mixed, leaves the plugin failing its
  start ("error waiting for MPS daemon").
* MPS with `--mig-strategy=mixed` is refused at start. GFD refuses MPS on a node with any MIG-enabled GPU,
  whatever the strategy, and exits there (`internal/lm/nvml.go` isMPSCapable: "MPS sharing is not supported for
  mig devices").
* Only GFD labels a node `nvidia.com/mps.capable=true`, which the MPS control daemon's nodeSelector needs: without
  GFD no MPS daemon runs and the plugin loading an MPS config fails its start ("error waiting for MPS daemon").
* config-manager exits when the ConfigMap has no keys ("no configuration files available"), before it reads
  the default or the fallback (`cmd/config-manager/main.go` updateConfigName).
* `flags`: each field must decode into its Go type (a string, true/false, a duration);
  `plugin.sharedDevicesAllocationPolicy` must be distributed/packed and `deviceDiscoveryStrategy` auto/nvml/tegra
  (validateFlags; the operator sets no env for them); `migStrategy` must be none/single/mixed, but only when the
  policy sets no MIG_STRATEGY env (which overrides it).

Beyond upstream: a resource name the plugin can never advertise (neither `nvidia.com/gpu` nor
`nvidia.com/mig-<profile>` of a known MIG profile) is refused; upstream silently replicates nothing for it (under
MPS, the rule above refuses a config naming only such resources).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any

import yaml

from . import mig, mig_layouts
from .gpu_identity import GFD_COMPUTE_MAJOR, GFD_COMPUTE_MINOR
from .nodes import GPU_PRODUCT, MIG_CAPABLE, VGPU_HOST_DRIVER, NodeFacts
from .states.mig_manager import custom_config
from .status import whole_entries

VERSION = "v1"
PREFIX = "nvidia.com"
SHARED_SUFFIX = ".shared"
MAX_NAME = 63
GPU = "nvidia.com/gpu"
NODE_LABEL = "nvidia.com/device-plugin.config"
MIG_CONFIG_LABEL = "nvidia.com/mig.config"
MIG_STRATEGIES = ("none", "single", "mixed")
NONE, TIME_SLICING, MPS = "none", "time-slicing", "mps"
MPS_MAX_CLIENTS = 48  # an MPS server's client limit from compute capability 7.5 on
MPS_MAX_CLIENTS_BEFORE_7_5 = 16
# The states whose pods load the config (config-manager): held while the config is refused.
HELD_STATES = ("state-device-plugin", "state-mps-control-daemon", "gpu-feature-discovery")
CONDITION = "SharingConfigValid"
MESSAGE_LIMIT = 1000  # the condition's message (and the Event's) names whole problems up to this length
REASON = "InvalidSharingConfig"
WARNING_REASON = "SharingConfigWarnings"  # nothing refused, something to say (the condition stays True)
_NODES_NAMED = 5

_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS_SUBDOMAIN = re.compile(rf"^{_DNS_LABEL}(\.{_DNS_LABEL})*$")
_DASHED = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
_UUID = rf"(?:{_DASHED}|[0-9a-fA-F]{{32}}|\{{{_DASHED}\}}|(?i:urn:uuid:){_DASHED})"  # google/uuid Parse's forms
_DEVICE_REF = re.compile(rf"^([0-9]+|[0-9]+:[0-9]+|GPU-{_UUID}|MIG-{_UUID}|MIG-GPU-{_UUID}/[0-9]+/[0-9]+)$")
ALLOCATION_POLICIES = ("distributed", "packed")
DISCOVERY_STRATEGIES = ("auto", "nvml", "tegra")  # the plugin's; GFD also takes vfio
# flags' fields by Go type (api/config/v1/flags.go): "str" (*string), "bool" (*bool), "strs" (a string or a list
# of strings), "duration"; a nested dict is a struct.
_FLAGS: dict[str, Any] = {
    "migStrategy": "str", "failOnInitError": "bool", "mpsRoot": "str", "nvidiaDriverRoot": "str",
    "nvidiaDevRoot": "str", "gdrcopyEnabled": "bool", "gdsEnabled": "bool", "mofedEnabled": "bool",
    "useNodeFeatureAPI": "bool", "deviceDiscoveryStrategy": "str",
    "plugin": {"passDeviceSpecs": "bool", "deviceListStrategy": "strs", "deviceIDStrategy": "str",
               "cdiAnnotationPrefix": "str", "nvidiaCTKPath": "str", "containerDriverRoot": "str",
               "sharedDevicesAllocationPolicy": "str"},
    "gfd": {"oneshot": "bool", "noTimestamp": "bool", "sleepInterval": "duration", "outputFile": "str",
            "machineTypeFile": "str"},
}
_GO_DURATION = re.compile(r"^[-+]?(0|(([0-9]+(\.[0-9]*)?|\.[0-9]+)(ns|us|µs|μs|ms|s|m|h))+)$")


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
    rename: str = ""  # the advertised name when renamed: only renameByDefault's nvidia.com/gpu.shared

    @property
    def advertised(self) -> str:
        return self.rename or self.name


@dataclass(frozen=True)
class ReplicatedResources:
    resources: tuple[Replicated, ...] = ()
    rename_by_default: bool = False
    fail_requests_greater_than_one: bool | None = None
    ignored: tuple[str, ...] = ()  # the fields set that upstream ignores (dotted paths: ...resources[0].rename)

    @property
    def replicated(self) -> bool:
        return any(r.replicas > 1 for r in self.resources)


@dataclass(frozen=True)
class SharingConfig:
    time_slicing: ReplicatedResources = field(default_factory=ReplicatedResources)
    mps: ReplicatedResources | None = None
    mig_strategy: str | None = None  # flags.migStrategy (the env overrides it)
    ignored: tuple[str, ...] = ()  # the `resources` lists set, which upstream ignores (resources.gpus, resources.mig)

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


def _integer(value: Any) -> int | None:
    """A YAML number Go decodes into an int (sigs.k8s.io/yaml writes 2.0 as 2), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value if isinstance(value, int) else None


def _fields(raw: Mapping[Any, Any], names: Iterable[str]) -> dict[str, Any]:
    """A Go struct's fields as encoding/json finds them in a mapping: keys matched case-insensitively, in the
    sorted order json.Marshal writes them (a later match wins)."""
    canonical = {n.lower(): n for n in names}
    out = {}
    for key in sorted(raw, key=str):
        name = canonical.get(str(key).lower())
        if name is not None:
            out[name] = raw[key]
    return out


def _flags(raw: Any, where: str = "flags", kinds: Mapping[str, Any] = _FLAGS) -> dict[str, Any]:
    """The `flags` section, each field decoded as upstream's Go type would be; ConfigError for what fails to."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(where, f"unmarshal error: must be a mapping, not {raw!r}")
    out: dict[str, Any] = {}
    for name, value in _fields(raw, kinds).items():
        kind, at = kinds[name], f"{where}.{name}"
        if value is None:
            continue
        if isinstance(kind, dict):
            out[name] = _flags(value, at, kind)
        elif kind == "bool" and not isinstance(value, bool):
            raise ConfigError(at, f"unmarshal error: must be true or false, not {value!r}")
        elif kind == "str" and not isinstance(value, str):
            raise ConfigError(at, f"unmarshal error: must be a string, not {value!r}")
        elif kind == "strs" and not (isinstance(value, str) or
                                     isinstance(value, list) and all(isinstance(v, str) for v in value)):
            raise ConfigError(at, f"invalid deviceListStrategy: {value!r}")
        elif kind == "duration" and not (isinstance(value, (int, float)) and not isinstance(value, bool) or
                                         isinstance(value, str) and (value == "infinite" or _GO_DURATION.match(value))):
            raise ConfigError(at, f"unmarshal error: invalid duration: {value!r}")
        else:
            out[name] = value
    return out


def _devices(raw: Any, where: str) -> str | int | tuple[str, ...]:
    if isinstance(raw, str):
        if raw != "all":
            raise ConfigError(where, f"devices set as '{raw}' but the only valid string input is 'all'")
        return raw
    if isinstance(raw, bool) or raw is None:
        raise ConfigError(where, f"unrecognized type for devices spec: {raw!r}")
    count = _integer(raw)
    if count is not None:
        if count <= 0:
            raise ConfigError(where, f"devices set as '{count}' but a count of devices must be > 0")
        return count
    if isinstance(raw, list):
        out = []
        for i, item in enumerate(raw):
            index = _integer(item)
            ref = str(index) if index is not None and index >= 0 else item
            if not isinstance(ref, str) or not _DEVICE_REF.match(ref):
                raise ConfigError(f"{where}[{i}]", f"unsupported type for device in devices list: {item!r}")
            out.append(ref)
        return tuple(out)
    raise ConfigError(where, f"unrecognized type for devices spec: {raw!r}")


def _replicated(raw: Any, where: str) -> ReplicatedResources:
    if raw is None:
        raw = {}  # upstream's unmarshaller runs on null too
    if not isinstance(raw, dict):
        raise ConfigError(where, "must be a mapping")
    rename_by_default = raw.get("renameByDefault")
    rename_by_default = rename_by_default is not None and _bool(rename_by_default, f"{where}.renameByDefault")
    fail = raw.get("failRequestsGreaterThanOne")
    if fail is not None:
        fail = _bool(fail, f"{where}.failRequestsGreaterThanOne")
    items = raw.get("resources")
    if not items:
        raise ConfigError(f"{where}.resources", "no resources specified")
    if not isinstance(items, list):
        raise ConfigError(f"{where}.resources", "must be a list")
    resources, ignored = [], []
    for i, item in enumerate(items):
        at = f"{where}.resources[{i}]"
        if not isinstance(item, dict):
            raise ConfigError(at, "must be a mapping")
        if "name" not in item:
            raise ConfigError(f"{at}.name", "no resource name specified")
        name = resource_name(item["name"], f"{at}.name")
        if _devices(item.get("devices", "all"), f"{at}.devices") != "all":
            ignored.append(f"{at}.devices")
        if "replicas" not in item:
            raise ConfigError(f"{at}.replicas", "no replicas specified")
        replicas = _integer(raw_replicas := item["replicas"])
        if replicas is None:
            raise ConfigError(f"{at}.replicas", f"must be an integer, not {raw_replicas!r}")
        if replicas < 2:
            raise ConfigError(f"{at}.replicas", "number of replicas must be >= 2")
        rename = name + SHARED_SUFFIX if rename_by_default else ""
        # upstream decodes a rename that is there (null and "" are refused as "nvidia.com/"), then drops it
        if "rename" in item and resource_name(item["rename"] or "", f"{at}.rename") != rename:
            ignored.append(f"{at}.rename")
        resources.append(Replicated(name, replicas, rename))
    return ReplicatedResources(tuple(resources), rename_by_default, fail, tuple(ignored))


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
    raw = _fields(raw, ("version", "flags", "sharing", "resources", "imex"))
    version = raw.get("version")
    if version is not None and version != "" and version != VERSION:
        raise ConfigError("version", f"unknown version: {version}")
    flags = _flags(raw.get("flags"))
    for name, allowed, value in (
        ("plugin.sharedDevicesAllocationPolicy", ALLOCATION_POLICIES,
         (flags.get("plugin") or {}).get("sharedDevicesAllocationPolicy")),
        ("deviceDiscoveryStrategy", DISCOVERY_STRATEGIES, flags.get("deviceDiscoveryStrategy")),
    ):
        if value is not None and value not in allowed:
            raise ConfigError(f"flags.{name}", f"invalid option {value} (one of {', '.join(allowed)})")
    sharing = raw.get("sharing")
    sharing = {} if sharing is None else sharing
    if not isinstance(sharing, dict):
        raise ConfigError("sharing", "must be a mapping")
    sharing = _fields(sharing, ("timeSlicing", "mps"))
    time_slicing = (_replicated(sharing["timeSlicing"], "sharing.timeSlicing") if "timeSlicing" in sharing
                    else ReplicatedResources())
    mps = _replicated(sharing["mps"], "sharing.mps") if sharing.get("mps") is not None else None
    if mps is not None and mps.fail_requests_greater_than_one is None:
        mps = replace(mps, fail_requests_greater_than_one=True)
    _imex(raw.get("imex"))
    return SharingConfig(time_slicing, mps, flags.get("migStrategy"), _resources(raw.get("resources")))


def _resources(raw: Any) -> tuple[str, ...]:
    """The `resources` section decoded as upstream does (Resource.UnmarshalJSON, NewResourceName): the lists set,
    which upstream then ignores; ConfigError for what it refuses."""
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        raise ConfigError("resources", "unmarshal error: must be a mapping")
    ignored = []
    for name, items in _fields(raw, ("gpus", "mig")).items():
        if items is None:
            continue
        if not isinstance(items, list):
            raise ConfigError(f"resources.{name}", "unmarshal error: must be a list")
        for i, item in enumerate(items):
            at = f"resources.{name}[{i}]"
            if not isinstance(item, dict):
                raise ConfigError(at, "unmarshal error: must be a mapping")
            for key in ("pattern", "name"):
                if key not in item:
                    raise ConfigError(at, f"resources must have a '{key}' field set")
            if item["pattern"] is not None and not isinstance(item["pattern"], str):
                raise ConfigError(f"{at}.pattern", f"unmarshal error: must be a string, not {item['pattern']!r}")
            resource_name("" if item["name"] is None else item["name"], f"{at}.name")
        if items:
            ignored.append(f"resources.{name}")
    return tuple(ignored)


def _imex(raw: Any) -> None:
    """The `imex` section: decoded as Go's types, and channelIDs [] or [0] as the plugin's validateFlags wants."""
    if raw is None:
        return
    if not isinstance(raw, dict):
        raise ConfigError("imex", "unmarshal error: must be a mapping")
    fields = _fields(raw, ("channelIDs", "required"))
    if fields.get("required") is not None and not isinstance(fields["required"], bool):
        raise ConfigError("imex.required", f"unmarshal error: must be true or false, not {fields['required']!r}")
    ids = fields.get("channelIDs")
    if ids is None:
        return
    numbers = [_integer(i) for i in ids] if isinstance(ids, list) else [None]
    if None in numbers:
        raise ConfigError("imex.channelIDs", f"unmarshal error: must be a list of integers, not {ids!r}")
    if numbers not in ([], [0]):
        raise ConfigError("imex.channelIDs", f"invalid IMEX channel IDs: channelIDs must be [] or [0]; found {numbers}")


def known_resources() -> set[str]:
    """Every resource the device plugin can advertise: nvidia.com/gpu and nvidia.com/mig-<profile>."""
    profiles = {p for g in mig_layouts.gpus() for p in g.profiles} | set(mig_layouts.unattributed_profiles())
    return {GPU} | {mig.mig_resource(p) for p in profiles}


def check(config: SharingConfig, mig_strategy: str | None, mig_enabled: bool = False, before_7_5: str = "") -> None:
    """What the plugin (or GFD) refuses at start for a parsed config: an unknown flags.migStrategy it reads, MPS
    with mixed MIG, on a MIG-enabled node, with more replicas than the MPS daemon takes or not sharing nvidia.com/gpu,
    and (beyond) resources it can never advertise. `mig_enabled`: a node that loads the config has MIG enabled;
    `mig_strategy`: the MIG_STRATEGY env (None: unset, the config's flags.migStrategy else none); `before_7_5`: the
    nodes loading it whose GPUs are below compute capability 7.5 (their MPS daemon takes 16 clients, not 48)."""
    if not mig_strategy and config.mig_strategy is not None and config.mig_strategy not in MIG_STRATEGIES:
        raise ConfigError("flags.migStrategy", f"unknown MIG strategy: {config.mig_strategy}")
    mig_strategy = mig_strategy or config.mig_strategy or "none"
    known = known_resources()
    for where, group in (("sharing.timeSlicing", config.time_slicing), ("sharing.mps", config.mps)):
        for i, r in enumerate(group.resources if group else ()):
            if r.name not in known:
                raise ConfigError(f"{where}.resources[{i}].name",
                                  f"unknown resource {r.name}: the device plugin advertises only {GPU} and "
                                  f"{PREFIX}/mig-<profile>")
    if config.strategy == MPS:
        limit = MPS_MAX_CLIENTS_BEFORE_7_5 if before_7_5 else MPS_MAX_CLIENTS
        where = f" below compute capability 7.5, of node {before_7_5}" if before_7_5 else ""
        for i, r in enumerate(config.mps.resources if config.mps else ()):
            if r.name == GPU and r.replicas > limit:
                raise ConfigError(f"sharing.mps.resources[{i}].replicas",
                                  f"invalid MPS configuration: maximum allowed replicas exceeded: {r.replicas} > "
                                  f"{limit} (the MPS control daemon's client limit{where})")
        if mig_strategy == "mixed":
            raise ConfigError("sharing.mps", "using --mig-strategy=mixed is not supported with MPS")
        if mig_enabled:  # GFD's check: every GPU of the node, whatever the strategy
            raise ConfigError("sharing.mps", "sharing using MPS is not supported for MIG devices (GFD exits on a "
                                             "node with a MIG-enabled GPU, whatever the MIG strategy)")
        if config.sharing_of(GPU) is None:  # the only resource advertised without mixed
            raise ConfigError("sharing.mps.resources", f"MPS must share {GPU}: MPS is config-wide, so the device "
                                                       f"plugin's {GPU} waits for an MPS daemon, which the MPS control "
                                                       f"daemon starts only for a shared resource (error waiting for "
                                                       f"MPS daemon: nothing is advertised)")


@dataclass(frozen=True)
class Problem:
    config_map: str
    key: str
    field: str
    message: str
    holds: bool = True  # False: a warning, nothing is held for it

    def __str__(self) -> str:
        where = (f" key {self.key}" if self.key else "") + (f" field {self.field}" if self.field else "")
        return f"ConfigMap {self.config_map}{where}: {self.message}"


def _mig_enabled(node: NodeFacts, layouts: mig.Layouts | None) -> bool:
    """Whether the node's layout puts its GPUs in MIG mode, by its entries in the user's mig-parted config
    (`layouts`) or mig-manager's own: a layout whose entries keep MIG off does not, whatever its name. Where the
    node's GPU is known, only the entries whose device-filter selects it count (mig-parted applies only those);
    else every entry. A layout not valid there counts as MIG on: mig-manager refuses it, and which mode the GPUs
    are left in is not known here. A node known not MIG-capable never is, whatever its label."""
    layout = node.labels.get(MIG_CONFIG_LABEL)
    if not layout or layout == mig_layouts.DISABLED or _not_mig_capable(node):
        return False
    gpu = mig.gpu_of_node(node)
    if gpu is not None:
        own = {mig_layouts.normalize_id(d + "10de") for d in node.label_devices or node.pci_devices}
        if own and own <= set(gpu.device_ids):  # NFD's device IDs: one model of the group (H100 80GB, not A100 80GB)
            gpu = replace(gpu, device_ids=tuple(sorted(own)))
        chosen = mig.layout_entries(gpu, layout, mig.node_layouts(gpu, layouts))
        return chosen is None or any(e.mig_enabled for e in chosen)
    entries = (layouts if layouts is not None else mig_layouts.default_layouts()).get(layout)
    return entries is None or any(e.mig_enabled for e in entries)


def _not_mig_capable(node: NodeFacts) -> bool:
    """Whether the node is known not MIG-capable, as nodes.mig_capable reads it (GFD's mig.capable, its product,
    NFD's device IDs; a vGPU host never is): mig-manager is not deployed there, and such a GPU cannot be in MIG
    mode. With none of those: not known."""
    labels = node.labels
    known = (MIG_CAPABLE in labels or labels.get(GPU_PRODUCT) or labels.get(VGPU_HOST_DRIVER)
             or node.label_devices or node.pci_devices)
    return bool(known) and not node.is_mig_capable


def mig_facts(nodes: Iterable[NodeFacts]) -> list[tuple[str, str, bool]]:
    """What the MIG check reads of labels the render key leaves out (render.RENDER_BLIND), for each GPU node with a
    layout other than all-disabled: its GPU model and whether it is known not MIG-capable."""
    out = []
    for n in nodes:
        if n.has_gpu and n.labels.get(MIG_CONFIG_LABEL) not in (None, "", mig_layouts.DISABLED):
            gpu = mig.gpu_of_node(n)
            out.append((n.name, gpu.name if gpu is not None else "", _not_mig_capable(n)))
    return sorted(out)


def _below_7_5(node: NodeFacts) -> bool:
    """Whether GFD's labels give the node's GPUs a compute capability below 7.5 (no labels yet: not known)."""
    return labels_below_7_5(node.labels)


def labels_below_7_5(labels: Mapping[str, str]) -> bool:
    """Whether GFD's compute labels say below 7.5, where the MPS daemon takes 16 clients (none: not known)."""
    try:
        return (int(labels[GFD_COMPUTE_MAJOR]), int(labels[GFD_COMPUTE_MINOR])) < (7, 5)
    except (KeyError, ValueError):
        return False


def below_7_5_nodes(nodes: Iterable[NodeFacts]) -> list[str]:
    """The GPU nodes whose GFD labels give a compute capability below 7.5: all the MPS client check reads of the
    compute labels (render.RENDER_BLIND leaves them out of the render key)."""
    return sorted(n.name for n in nodes if GFD_COMPUTE_MAJOR in n.labels and _below_7_5(n) and n.has_gpu)


@lru_cache(maxsize=4)
def _parsed_layouts(text: str) -> mig.Layouts:
    try:
        return mig.parse_config(text)
    except mig.ConfigError:
        return {}


def _listed(names: Iterable[str]) -> str:
    names = sorted(names)
    more = len(names) - _NODES_NAMED
    return ", ".join(names[:_NODES_NAMED]) + (f" and {more} more" if more > 0 else "")


def problems(name: str, data: Mapping[str, str], mig_strategy: str | None, default: str = "",
             nodes: Iterable[NodeFacts] = (), layouts: mig.Layouts | None = None,
             keys: Iterable[str] | None = None) -> list[Problem]:
    """Every key of the sharing ConfigMap the plugin would refuse, a default naming no key that a GPU node loads
    (one without the label, or no GPU node known) and a ConfigMap with no keys; then the warnings (holds=False):
    fields upstream ignores, a default naming no key that no GPU node loads, and keys GPU nodes' labels name that
    the ConfigMap lacks (config-manager exits on those nodes only, so they hold nothing cluster-wide).

    Nodes (GPU nodes) tell which keys load on a node with MIG enabled (the node's label, else the default);
    `layouts`: the user's mig-parted config (None: the default table); `keys`: every key of the ConfigMap,
    binaryData's too (None: data's), the files config-manager sees (a binaryData value is not checked)."""
    present = set(data) if keys is None else set(keys) | set(data)
    if not present:
        return [Problem(name, "", "", "the ConfigMap has no keys: config-manager exits on every GPU node (no "
                                      "configuration files available) before it reads the default, so the device "
                                      "plugin, GFD and MPS daemon start nowhere; devicePlugin.config.name must name "
                                      "a ConfigMap with at least one config")]
    out, notes = [], []
    gpu_nodes = [n for n in nodes if n.has_gpu]
    mig_keys = {n.labels.get(NODE_LABEL) or default for n in gpu_nodes if _mig_enabled(n, layouts)}
    older: dict[str, list[str]] = {}  # key -> the nodes loading it below compute capability 7.5
    for n in gpu_nodes:
        if _below_7_5(n):
            older.setdefault(n.labels.get(NODE_LABEL) or default, []).append(n.name)
    for key in sorted(data):
        try:
            config = parse(data[key])
            check(config, mig_strategy, mig_enabled=key in mig_keys, before_7_5=_listed(older.get(key, ())))
        except ConfigError as exc:
            out.append(Problem(name, key, exc.field, exc.message))
            continue
        for path in (*config.time_slicing.ignored, *(config.mps.ignored if config.mps else ())):
            notes.append(Problem(name, key, path, "ignored by the device plugin, GFD and MPS daemon (not supported "
                                                  "upstream yet): every GPU is shared under the resource's own name "
                                                  "(<name>.shared with renameByDefault)", holds=False))
        for path in config.ignored:
            notes.append(Problem(name, key, path, "ignored by the device plugin, GFD and MPS daemon (customizing the "
                                                  "resources field is not supported upstream yet): GPUs keep the "
                                                  "plugin's own names (nvidia.com/gpu, nvidia.com/mig-<profile>)",
                                 holds=False))
    if default and default not in present:
        # config-manager reads the default only on a node whose label is unset or "": held while such a GPU node
        # (or none at all: a node that joins most likely has no label) would load it; else a warning.
        unlabelled = [n.name for n in gpu_nodes if not n.labels.get(NODE_LABEL)]
        missing = (f"devicePlugin.config.default names a key the ConfigMap does not have (config-manager: specified "
                   f"config {default} does not exist)")
        if unlabelled or not gpu_nodes:
            where = f" on node {_listed(unlabelled)}, which has no {NODE_LABEL} label" if unlabelled else ""
            out.append(Problem(name, default, "", missing + where))
        else:
            notes.append(Problem(name, default, "", f"{missing}: every GPU node names another key by its {NODE_LABEL} "
                                                    f"label, so none loads it now, but the device plugin, GFD and MPS "
                                                    f"daemon will not start on a GPU node without the label; fix the "
                                                    f"default or add the key", holds=False))
    labelled: dict[str, list[str]] = {}
    for n in gpu_nodes:
        wanted = n.labels.get(NODE_LABEL)
        if wanted and wanted not in present:
            labelled.setdefault(wanted, []).append(n.name)
    for key, names in sorted(labelled.items()):
        notes.append(Problem(name, key, "", f"the ConfigMap has no such key, named by the {NODE_LABEL} label of "
                                            f"node {_listed(names)}: config-manager exits there (specified config "
                                            f"{key} does not exist), so the device plugin, GFD and MPS daemon do not "
                                            f"start on those nodes; fix the label or add the key", holds=False))
    return out + notes


def held(found: list[Problem]) -> list[Problem]:
    """The problems that hold the states that load the config (not the warnings)."""
    return [p for p in found if p.holds]


def context_problems(spec: Any, config_data: Mapping[str, Mapping[str, str]], nodes: Iterable[NodeFacts] = (),
                     config_maps: Mapping[str, Iterable[str]] | None = None) -> list[Problem]:
    """The problems of the policy's sharing ConfigMap; none when there is none or its data is not known.
    `config_maps`: every ConfigMap's keys, binaryData's too (None: only data's are known); a name neither has is a
    ConfigMap that does not exist."""
    cfg = spec.device_plugin.config
    if not cfg.name:
        return []
    if cfg.name not in config_data:
        if config_maps is None or cfg.name in config_maps:
            return []
        return [Problem(cfg.name, "", "", "not found in the operator namespace (devicePlugin.config.name): the device "
                                          "plugin, GFD and MPS daemon pods cannot mount it (FailedMount), so they "
                                          "start nowhere; create it or fix the name")]
    layouts = None
    custom = custom_config(spec)
    if custom is not None:  # unreadable or absent: {} (no layout known, each counts as MIG on)
        layouts = _parsed_layouts((config_data.get(custom) or {}).get("config.yaml") or "")
    data, nodes = config_data[cfg.name], [n for n in nodes if n.has_gpu]
    keys = None if config_maps is None else config_maps.get(cfg.name)
    found = problems(cfg.name, data, spec.mig.strategy, cfg.default, nodes, layouts, keys)
    if not spec.gfd.enabled:
        found += _mps_without_gfd(cfg.name, data, cfg.default, nodes)
    return found


def _mps_without_gfd(name: str, data: Mapping[str, str], default: str, nodes: list[NodeFacts]) -> list[Problem]:
    """A warning per MPS key a GPU node loads (its label, else the default) while GFD is disabled."""
    loading: dict[str, list[str]] = {}
    for n in nodes:
        key = n.labels.get(NODE_LABEL) or default
        if key in data:
            loading.setdefault(key, []).append(n.name)
    out = []
    for key, names in sorted(loading.items()):
        try:
            mps = parse(data[key]).strategy == MPS
        except ConfigError:
            continue  # refused already
        if mps:
            out.append(Problem(name, key, "", f"MPS needs GPU feature discovery (gfd.enabled is false): only GFD "
                                              f"labels a node nvidia.com/mps.capable=true, where the MPS control "
                                              f"daemon runs, so no MPS daemon runs on node {_listed(names)} and the "
                                              f"device plugin there fails its start (error waiting for MPS daemon): "
                                              f"nothing is advertised; enable gfd", holds=False))
    return out


_REFUSED = "devicePlugin.config refused, not rolled out: "
_WARNINGS = "devicePlugin.config rolled out, with warnings: "


def summary(found: list[Problem], limit: int = sys.maxsize) -> str:
    """The refusals, then the warnings, within `limit` characters: whole problems and how many more (of the
    refusals, of the warnings), a third of it kept for the warnings."""
    refused = [str(p) for p in found if p.holds]
    warnings = [str(p) for p in found if not p.holds]
    if not warnings:
        return _REFUSED + whole_entries(refused, limit - len(_REFUSED))
    if not refused:
        return _WARNINGS + whole_entries(warnings, limit - len(_WARNINGS))
    room = limit - len(_REFUSED) - len(". Warnings: ")
    said = whole_entries(refused, room - min(len("; ".join(warnings)), room // 3))
    return f"{_REFUSED}{said}. Warnings: {whole_entries(warnings, room - len(said))}"


def reason(found: list[Problem]) -> str:
    """The reason of the condition and event for problems found: refused, else warnings."""
    return REASON if held(found) else WARNING_REASON


def condition(config_name: str, found: list[Problem] | None, generation: int | None,
              previous: list[dict[str, Any]], now: str) -> dict[str, Any] | None:
    """The SharingConfigValid condition (only with a devicePlugin.config; None: no such config): False while a
    problem holds the rollout, True with the reason SharingConfigWarnings while there are only warnings."""
    if not config_name or found is None:
        return None
    before = next((c for c in previous if c.get("type") == CONDITION), {})
    if found:
        value, why, message = "False" if held(found) else "True", reason(found), summary(found, MESSAGE_LIMIT)
    else:
        value, why, message = "True", "Valid", f"every config in ConfigMap {config_name} is valid"
    changed = before.get("status") != value or not before.get("lastTransitionTime")
    return {
        "type": CONDITION,
        "status": value,
        "reason": why,
        "message": message,
        "lastTransitionTime": now if changed else before["lastTransitionTime"],
        "observedGeneration": generation,
    }
