"""What the device plugin advertises and GPU feature discovery labels on a fake node (test infrastructure, pure).

Inputs: the node's profile, the MIG layout applied to it (labels ``nvidia.com/mig.config`` with
``nvidia.com/mig.config.state=success``; the layouts of ``gpu_operator.mig_layouts``), the MIG strategy of the pod
(its ``MIG_STRATEGY`` env) and the sharing config its config-manager selected.  Facts from upstream
k8s-device-plugin v0.20:

* ``internal/rm/device_map.go``: strategy none advertises every GPU as ``nvidia.com/gpu`` (MIG ignored); single
  advertises every MIG device as ``nvidia.com/gpu`` and refuses non-uniform MIG devices or a mix of MIG-enabled
  and disabled GPUs; mixed advertises ``nvidia.com/mig-<profile>`` per profile and full GPUs as
  ``nvidia.com/gpu``.  Replicated resources (``updateDeviceMapWithReplicas``) become ``replicas`` devices each;
  ``api/config/v1/config.go`` DisableResourceNamingInConfig (plugin, GFD, MPS daemon) drops an explicit ``rename``
  and ``devices``: every device is shared, under ``<name>.shared`` only with renameByDefault (``sharing.parse``).
* ``internal/plugin/mps.go``: MPS on MIG devices is refused; with MPS the plugin starts only once the control
  daemon answers (here: an MPS control daemon pod on the node is ready), and for ``nvidia.com/gpu`` too when the
  config does not share it (the daemon starts none for it: the plugin never starts).  The control daemon exits
  on more replicas than an MPS server's clients (``cmd/mps-control-daemon/mps/device.go`` assertReplicas: 48, 16
  below compute capability 7.5), so the plugin never starts either.
* ``internal/lm/resource.go``, ``mig-strategy.go``, ``nvml.go``: labels ``<resource>.product/count/replicas/
  sharing-strategy``, product ``<model>[-MIG-<profile>][-SHARED]`` (``-SHARED`` when replicated and not renamed),
  MIG attributes ``memory``, ``slices.gi``, ``slices.ci`` (also multiprocessors and engines upstream; not
  modelled), ``-MIG-INVALID`` with count 0 for a non-uniform single layout, ``mps.capable=true`` only with an MPS
  config.  A MIG-enabled GPU's own ``nvidia.com/gpu.*`` labels are written without sharing whatever the strategy
  (``newGPULabelers``: replicas 0, sharing-strategy none, no ``-SHARED``), also under none, where the plugin
  shares it.  With an MPS config GFD exits on a MIG-enabled GPU whatever the MIG strategy (``nvml.go`` isMPSCapable),
  so it never labels the node ``mps.capable=true``, the MPS control daemon never runs there and the plugin waits.
* Names: a profile's ``+`` becomes ``.`` (``internal/rm/rm.go``, ``internal/resource/nvml-mig-device.go``
  GetName): ``1g.10gb+me`` is advertised as ``nvidia.com/mig-1g.10gb.me``, product ``<model>-MIG-1g.10gb.me``.
* MIG attribute values: memory is the profile's size in GiB as MiB, as go-nvml's mock GPUs report it
  (``pkg/nvml/mock/gpus/h100.go``: 1g.10gb -> 10240); slices are the profile's compute slices.
* Layouts: the user's mig-parted config when the node's MIG manager pod mounts one (a ConfigMap volume holding
  ``mig-configs``), else the default set; an entry applies to a GPU without ``device-filter`` or naming its ID.
* ``cmd/config-manager/main.go``: a ConfigMap with no keys (data's or binaryData's) is an error ("no
  configuration files available"); else the config is the ConfigMap key named by the node label (``NODE_LABEL``),
  else ``DEFAULT_CONFIG``, else the fallback (``empty``); a named key that does not exist is an error (at pod start;
  later the sidecar exits before it touches the file, and the plugin keeps the config it loaded).  It reloads
  when the label changes (the sidecar signals the plugin), not when the ConfigMap's content changes.  It writes the
  selection to ``CONFIG_FILE_DST``, which the plugin and GFD read only as their ``CONFIG_FILE``
  (``--config-file``; GFD also ``GFD_CONFIG_FILE``; no default) on the volume they share with the sidecar:
  otherwise they run with no sharing config.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from e2e.cluster.nodes import GFD_LABEL_KEYS, Profile
from gpu_operator import mig, mig_layouts, sharing

GPU = "nvidia.com/gpu"
MIG_CONFIG = "nvidia.com/mig.config"
MIG_STATE = "nvidia.com/mig.config.state"
# PCI device IDs of the profiles' GPUs (as mig-parted's device-filter spells them).
DEVICE_IDS = {
    "NVIDIA-H100-80GB-HBM3": "0x233010DE",
    "NVIDIA-A100-SXM4-80GB": "0x20B210DE",
    "NVIDIA-A100-SXM4-40GB": "0x20B010DE",
    "NVIDIA-H100-NVL": "0x232110DE",
    "NVIDIA-H200": "0x233510DE",
    "NVIDIA-B200": "0x290110DE",
}
_RESOURCE = re.compile(r"^nvidia\.com/(gpu(\.shared)?|mig-[^/]+)$")
_MIG_LABEL = re.compile(r"^nvidia\.com/mig-[0-9a-z.-]+\.(product|count|replicas|sharing-strategy|memory|slices\.gi|"
                        r"slices\.ci)$")
_GPU_EXTRA = ("nvidia.com/gpu.slices.gi", "nvidia.com/gpu.slices.ci")


def is_resource(name: str) -> bool:
    """An extended resource this simulator manages."""
    return bool(_RESOURCE.match(name))


def is_gfd_label(key: str) -> bool:
    return key in GFD_LABEL_KEYS or key in _GPU_EXTRA or bool(_MIG_LABEL.match(key))


def applied_layout(labels: Mapping[str, str]) -> str | None:
    """The MIG layout applied on the node: its mig.config label once mig.config.state is success."""
    if labels.get(MIG_STATE) != "success":
        return None
    return labels.get(MIG_CONFIG) or None


MigConfigs = Mapping[str, Any]  # mig-parted's `mig-configs`: layout name -> entries


def user_layout_devices(configs: MigConfigs, layout: str, device_id: str) -> dict[str, int] | None:
    """The MIG devices a layout of a user's mig-parted config makes on one GPU ({}: MIG off), None: not valid."""
    gpu = mig_layouts.gpu_for(device_id)
    entries = configs.get(layout)
    if gpu is None or not isinstance(entries, list):
        return None
    for entry in entries:
        filters = entry.get("device-filter") or []
        filters = [filters] if isinstance(filters, str) else filters
        if filters and mig_layouts.normalize_id(device_id) not in {mig_layouts.normalize_id(f) for f in filters}:
            continue
        if not entry.get("mig-enabled"):
            return {}
        devices = {str(k): int(v) for k, v in (entry.get("mig-devices") or {}).items()}
        return devices if all(gpu.profiles.get(p, 0) >= n for p, n in devices.items()) else None
    return None


def mig_configs_of(pods: Iterable[Mapping[str, Any]],
                   config_maps: Mapping[tuple[str, str], Mapping[str, str]]) -> MigConfigs | None:
    """The mig-parted config a pod on the node mounts from a ConfigMap (the MIG manager's), or None."""
    for pod in pods:
        ns = (pod.get("metadata") or {}).get("namespace") or ""
        for v in (pod.get("spec") or {}).get("volumes") or []:
            name = (v.get("configMap") or {}).get("name")
            for text in (config_maps.get((ns, name)) or {}).values() if name else ():
                if "mig-configs" not in text:
                    continue
                try:
                    doc = yaml.safe_load(text)
                except yaml.YAMLError:
                    continue
                if isinstance(doc, dict) and isinstance(doc.get("mig-configs"), dict):
                    return dict(doc["mig-configs"])
    return None


def mig_devices(profile: Profile, layout: str | None, configs: MigConfigs | None = None) -> dict[str, int] | None:
    """MIG devices per GPU of the applied layout, or None: MIG disabled (no layout, all-disabled, unknown)."""
    if not layout or not profile.mig_capable or layout == mig_layouts.DISABLED:
        return None
    device_id = DEVICE_IDS.get(profile.product)
    if not device_id:
        return None
    if configs is not None:
        devices = user_layout_devices(configs, layout, device_id)
    else:
        devices = mig_layouts.layout_devices(layout, device_id)
    if devices is None:
        return None  # not valid on this GPU: mig-manager would not have applied it
    if not devices and layout != mig_layouts.ENABLED:
        return None
    return devices


def _name(mig_profile: str) -> str:
    """The device plugin's name of a MIG profile: `1g.10gb+me` -> `1g.10gb.me` (GetName)."""
    return mig_profile.replace("+", ".")


def profile_attributes(mig_profile: str) -> dict[str, str]:
    """GFD's MIG attribute labels derivable from the profile name: `3g.40gb` -> 3 slices, 40 GiB (in MiB)."""
    m = re.match(r"^(\d+)g\.(\d+)gb", mig_profile)
    if not m:
        return {}
    slices, gb = m.group(1), int(m.group(2))
    return {"memory": str(gb * 1024), "slices.gi": slices, "slices.ci": slices}


@dataclass(frozen=True)
class Selected:
    """The sharing config the config-manager selected (key "" = the empty config), or why it failed."""

    key: str = ""
    config: sharing.SharingConfig = sharing.EMPTY
    error: str = ""


def config_key(data: Mapping[str, str] | None, node_labels: Mapping[str, str], node_label: str,
               default: str, fallbacks: str = "empty") -> Selected:
    """config-manager's choice of a key (data None: no ConfigMap, no files), not parsed: its own errors only."""
    files = dict(data or {})
    if not files:  # checked before the label, the default and the fallbacks
        return Selected(error="no configuration files available")
    wanted = node_labels.get(node_label, "")
    if wanted:
        key = wanted
    elif default:
        key = default
    elif "named" in fallbacks.split(",") and "default" in files:
        key = "default"
    elif "single" in fallbacks.split(",") and len(files) == 1:
        key = next(iter(files))
    else:
        return Selected()
    if key not in files:
        return Selected(key, error=f"specified config {key} does not exist")
    return Selected(key)


def select_config(data: Mapping[str, str] | None, node_labels: Mapping[str, str], node_label: str,
                  default: str, fallbacks: str = "empty") -> Selected:
    """config-manager's choice, parsed as the plugin would parse it (data None: no ConfigMap, no files)."""
    chosen = config_key(data, node_labels, node_label, default, fallbacks)
    if chosen.error or not chosen.key:
        return chosen
    try:
        return Selected(chosen.key, sharing.parse(dict(data or {})[chosen.key]))
    except sharing.ConfigError as exc:
        return Selected(chosen.key, error=f"unable to parse config file: {exc}")


@dataclass(frozen=True)
class Advertised:
    resources: dict[str, int] = field(default_factory=dict)
    error: str = ""  # why the plugin advertises nothing


def _replicate(out: dict[str, int], resource: str, count: int, config: sharing.SharingConfig) -> None:
    r = config.sharing_of(resource)
    if r is None:
        out[resource] = out.get(resource, 0) + count
    else:
        out[r.advertised] = out.get(r.advertised, 0) + count * r.replicas


def advertise(profile: Profile, layout: str | None, mig_strategy: str, config: sharing.SharingConfig,
              mps_daemon_ready: bool = True, configs: MigConfigs | None = None) -> Advertised:
    """The extended resources the device plugin advertises on the node."""
    if not profile.has_gpu:
        return Advertised()
    if mig_strategy not in sharing.MIG_STRATEGIES:
        return Advertised(error=f"unknown MIG strategy: {mig_strategy}")
    mig_on = mig_devices(profile, layout, configs)
    devices = mig_on if mig_strategy != "none" else None
    if config.strategy == sharing.MPS:
        if mig_strategy == "mixed":
            return Advertised(error="using --mig-strategy=mixed is not supported with MPS")
        if devices is not None:
            return Advertised(error="sharing using MPS is not supported for MIG devices")
        if mig_on is not None:  # GFD exits: no mps.capable=true, no MPS control daemon
            return Advertised(error="error waiting for MPS daemon: GFD fails on a MIG-enabled GPU (MPS sharing is "
                                    "not supported for mig devices)")
        r = config.sharing_of(GPU)
        if r is None:  # the MPS control daemon starts none for nvidia.com/gpu
            return Advertised(error="error waiting for MPS daemon: MPS is config-wide and nvidia.com/gpu is not shared")
        limit = sharing.MPS_MAX_CLIENTS if profile.compute >= (7, 5) else sharing.MPS_MAX_CLIENTS_BEFORE_7_5
        if r.replicas > limit:  # the MPS control daemon exits
            return Advertised(error=f"error waiting for MPS daemon: invalid MPS configuration: maximum allowed "
                                    f"replicas exceeded: {r.replicas} > {limit}")
        if not mps_daemon_ready:
            return Advertised(error="error waiting for MPS daemon: the MPS control daemon is not running")
    out: dict[str, int] = {}
    n = profile.gpu_count
    if devices is None:
        _replicate(out, GPU, n, config)
    elif mig_strategy == "single":
        if len(devices) != 1:
            return Advertised(error="invalid MIG configuration: all MIG devices must be of the same type")
        ((_, per_gpu),) = devices.items()
        _replicate(out, GPU, per_gpu * n, config)
    else:
        for p, per_gpu in devices.items():
            _replicate(out, mig.mig_resource(p), per_gpu * n, config)
    return Advertised({k: v for k, v in out.items() if v > 0})


def _resource_labels(prefix: str, product: str, count: int, config: sharing.SharingConfig, resource: str,
                     sharing_enabled: bool = True) -> dict[str, str]:
    r = config.sharing_of(resource) if sharing_enabled else None
    replicas = (r.replicas if r is not None else 1) if sharing_enabled else 0
    shared = r is not None and r.replicas > 1
    strategy = config.strategy if shared else sharing.NONE
    if shared and not r.rename:  # type: ignore[union-attr]
        product += "-SHARED"
    return {f"{prefix}.product": product, f"{prefix}.count": str(count), f"{prefix}.replicas": str(replicas),
            f"{prefix}.sharing-strategy": strategy}


def gfd_error(profile: Profile, layout: str | None, config: sharing.SharingConfig,
              configs: MigConfigs | None = None) -> str:
    """Why GFD exits with this config (it then removes its output file, and NFD its labels), or ""."""
    if config.strategy == sharing.MPS and mig_devices(profile, layout, configs) is not None:
        return "failed to check MPS-capable: MPS sharing is not supported for mig devices"
    return ""


def gfd_overlay(profile: Profile, layout: str | None, mig_strategy: str, config: sharing.SharingConfig,
                configs: MigConfigs | None = None) -> dict[str, str]:
    """What GFD's labels are beyond the plain profile's (``gfd_labels``): sharing, MIG strategy and MIG devices."""
    mig_on = mig_devices(profile, layout, configs)
    devices = mig_on if mig_strategy != "none" else None
    mps = config.strategy == sharing.MPS and not gfd_error(profile, layout, config, configs)
    out = {"nvidia.com/mps.capable": str(mps).lower()}
    if mig_strategy != "none":  # GFD's MIG labeler writes it; under none there is none (mig-strategy.go)
        out["nvidia.com/mig.strategy"] = mig_strategy
    n = profile.gpu_count
    if devices is None:  # MIG-enabled GPUs are labelled without sharing, whatever the strategy (newGPULabelers)
        out.update(_resource_labels("nvidia.com/gpu", profile.product, n, config, GPU, sharing_enabled=mig_on is None))
        return out
    if mig_strategy == "single":
        if len(devices) != 1:
            out.update({"nvidia.com/gpu.product": f"{profile.product}-MIG-INVALID", "nvidia.com/gpu.count": "0",
                        "nvidia.com/gpu.replicas": "0", "nvidia.com/gpu.sharing-strategy": "",
                        "nvidia.com/gpu.memory": "0"})
            return out
        ((p, per_gpu),) = devices.items()
        out.update(_resource_labels("nvidia.com/gpu", f"{profile.product}-MIG-{_name(p)}", per_gpu * n, config, GPU))
        out.update({f"nvidia.com/gpu.{k}": v for k, v in profile_attributes(p).items()})
        return out
    # mixed: the MIG-enabled GPUs as GPUs without sharing, and every profile as its own resource
    out.update(_resource_labels("nvidia.com/gpu", profile.product, n, config, GPU, sharing_enabled=False))
    for p, per_gpu in devices.items():
        prefix = mig.mig_resource(p)
        out.update(_resource_labels(prefix, f"{profile.product}-MIG-{_name(p)}", per_gpu * n, config, prefix))
        out.update({f"{prefix}.{k}": v for k, v in profile_attributes(p).items()})
    return out


# --- reading the pod specs ---

def _env_values(c: Mapping[str, Any]) -> dict[str, str]:
    return {e["name"]: str(e.get("value", "")) for e in c.get("env") or [] if "value" in e}


def mig_strategy_of(pod: Mapping[str, Any], default: str = "none") -> str:
    """MIG_STRATEGY of the pod's main containers (the plugin's and GFD's flag; upstream's default none)."""
    for c in (pod.get("spec") or {}).get("containers") or []:
        value = _env_values(c).get("MIG_STRATEGY")
        if value:
            return value
    return default


@dataclass(frozen=True)
class ConfigSource:
    """Where a pod's config-manager sidecar reads: the ConfigMap, the node label, the default, the fallbacks."""

    config_map: str
    node_label: str
    default: str
    fallbacks: str


def _config_manager(c: Mapping[str, Any]) -> bool:
    return (c.get("command") or [None])[0] == "config-manager"


def _config_file(c: Mapping[str, Any]) -> str:
    """The config file a plugin, GFD or MPS daemon container reads: --config-file, else its env, else none."""
    words = [w for a in [*(c.get("command") or []), *(c.get("args") or [])] for w in str(a).split()]
    for i, w in enumerate(words):
        if w in ("--config-file", "-config-file") and i + 1 < len(words):
            return words[i + 1]
        if w.startswith(("--config-file=", "-config-file=")):
            return w.partition("=")[2]
    env = _env_values(c)
    names = ("GFD_CONFIG_FILE", "CONFIG_FILE") if any("gpu-feature-discovery" in w for w in words) else ("CONFIG_FILE",)
    return next((env[n] for n in names if env.get(n)), "")


def _volume_at(c: Mapping[str, Any], path: str) -> tuple[str, str] | None:
    """(volume, path in it) of a container path under a volume mount, or None: the container's own file."""
    path = posixpath.normpath(path)
    best: tuple[str, Mapping[str, Any]] | None = None
    for m in c.get("volumeMounts") or []:
        mp = posixpath.normpath(m.get("mountPath") or "/")
        if (path == mp or path.startswith(mp.rstrip("/") + "/")) and (best is None or len(mp) > len(best[0])):
            best = (mp, m)
    if best is None:
        return None
    mp, m = best
    return str(m.get("name")), posixpath.normpath(posixpath.join(m.get("subPath") or "", posixpath.relpath(path, mp)))


def config_source(pod: Mapping[str, Any]) -> ConfigSource | None:
    """The config-manager sidecar of the pod (a container running `config-manager`) whose file another main
    container reads, or None: no config."""
    spec = pod.get("spec") or {}
    containers = spec.get("containers") or []
    for c in containers:
        if not _config_manager(c):
            continue
        env = _env_values(c)
        srcdir = env.get("CONFIG_FILE_SRCDIR", "")
        mount = next((m["name"] for m in c.get("volumeMounts") or [] if m.get("mountPath") == srcdir), None)
        volume: dict[str, Any] = next((v for v in spec.get("volumes") or [] if v.get("name") == mount), {})
        name = (volume.get("configMap") or {}).get("name")
        written = _volume_at(c, env["CONFIG_FILE_DST"]) if env.get("CONFIG_FILE_DST") else None
        read = [_volume_at(o, f) for o in containers if not _config_manager(o) for f in [_config_file(o)] if f]
        if name and written is not None and written in read:
            return ConfigSource(name, env.get("NODE_LABEL", sharing.NODE_LABEL), env.get("DEFAULT_CONFIG", ""),
                                env.get("FALLBACK_STRATEGIES", "empty"))
    return None


def runs_mps_daemon(pod: Mapping[str, Any]) -> bool:
    """A pod whose main container runs the MPS control daemon, and is ready."""
    spec = pod.get("spec") or {}
    names = {c.get("name") for c in spec.get("containers") or []
             if (c.get("command") or [None])[0] == "mps-control-daemon"}
    if not names:
        return False
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    return any(s.get("name") in names and s.get("ready") for s in statuses)
