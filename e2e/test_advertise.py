"""What the simulated device plugin advertises and GFD labels (pure; no cluster)."""

from __future__ import annotations

from typing import Any

from e2e import advertise as adv
from e2e.cluster.nodes import PROFILES
from gpu_operator import sharing

H100, L4, A100 = PROFILES["h100x8"], PROFILES["l4x1"], PROFILES["a100x4"]
TS4 = sharing.parse("sharing: {timeSlicing: {resources: [{name: nvidia.com/gpu, replicas: 4}]}}")
TS4_RENAMED = sharing.parse(
    "sharing: {timeSlicing: {renameByDefault: true, resources: [{name: nvidia.com/gpu, replicas: 4}]}}")
MPS2 = sharing.parse("sharing: {mps: {resources: [{name: nvidia.com/gpu, replicas: 2}]}}")
MIG_TS = sharing.parse("sharing: {timeSlicing: {resources: [{name: nvidia.com/mig-1g.10gb, replicas: 2}]}}")
DONE = {adv.MIG_CONFIG: "all-1g.10gb", adv.MIG_STATE: "success"}


def test_plain_and_time_sliced() -> None:
    assert adv.advertise(H100, None, "single", sharing.EMPTY).resources == {"nvidia.com/gpu": 8}
    assert adv.advertise(H100, None, "single", TS4).resources == {"nvidia.com/gpu": 32}
    assert adv.advertise(H100, None, "single", TS4_RENAMED).resources == {"nvidia.com/gpu.shared": 32}
    # upstream ignores an explicit `devices` and `rename` (DisableResourceNamingInConfig): every GPU, its own name
    partial = sharing.parse("sharing: {timeSlicing: {resources: [{name: gpu, replicas: 3, devices: 2}]}}")
    assert adv.advertise(H100, None, "none", partial).resources == {"nvidia.com/gpu": 24}
    renamed = sharing.parse("sharing: {timeSlicing: {resources: [{name: gpu, replicas: 2, rename: my-gpu}]}}")
    assert adv.advertise(H100, None, "none", renamed).resources == {"nvidia.com/gpu": 16}
    assert adv.gfd_overlay(H100, None, "none", renamed)["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3-SHARED"


def test_gfd_sharing_labels() -> None:
    labels = adv.gfd_overlay(H100, None, "single", TS4)
    assert labels["nvidia.com/gpu.replicas"] == "4"
    assert labels["nvidia.com/gpu.sharing-strategy"] == "time-slicing"
    assert labels["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3-SHARED"
    assert labels["nvidia.com/gpu.count"] == "8"
    assert adv.gfd_overlay(H100, None, "single", TS4_RENAMED)["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
    plain = adv.gfd_overlay(H100, None, "single", sharing.EMPTY)
    assert plain["nvidia.com/gpu.replicas"] == "1" and plain["nvidia.com/gpu.sharing-strategy"] == "none"


def test_mps_needs_the_daemon_and_no_mig() -> None:
    assert adv.advertise(L4, None, "single", MPS2, mps_daemon_ready=False).error
    assert adv.advertise(L4, None, "single", MPS2).resources == {"nvidia.com/gpu": 2}
    assert adv.gfd_overlay(L4, None, "single", MPS2)["nvidia.com/mps.capable"] == "true"
    assert adv.gfd_overlay(L4, None, "single", MPS2)["nvidia.com/gpu.sharing-strategy"] == "mps"
    assert "not supported for MIG" in adv.advertise(H100, "all-1g.10gb", "single", MPS2).error
    assert "mixed" in adv.advertise(H100, None, "mixed", MPS2).error
    assert adv.gfd_overlay(H100, "all-1g.10gb", "single", MPS2)["nvidia.com/mps.capable"] == "false"


def test_an_mps_config_not_sharing_nvidia_com_gpu_advertises_nothing() -> None:
    """MPS is config-wide: the plugin's nvidia.com/gpu waits for an MPS daemon the control daemon never starts
    for a resource not shared (k8s-device-plugin internal/plugin/mps.go, mps/manager.go Daemons), so the plugin
    never starts; the model advertised the 8 GPUs unshared."""
    mig_only = sharing.parse("sharing: {mps: {resources: [{name: nvidia.com/mig-1g.10gb, replicas: 2}]}}")
    for strategy in ("none", "single"):
        got = adv.advertise(H100, None, strategy, mig_only)
        assert "error waiting for MPS daemon" in got.error and not got.resources, strategy


def test_applied_layout_needs_success() -> None:
    assert adv.applied_layout(DONE) == "all-1g.10gb"
    assert adv.applied_layout({**DONE, adv.MIG_STATE: "pending"}) is None
    assert adv.applied_layout({adv.MIG_CONFIG: "all-1g.10gb"}) is None


def test_mig_mixed() -> None:
    assert adv.advertise(H100, "all-1g.10gb", "mixed", sharing.EMPTY).resources == {"nvidia.com/mig-1g.10gb": 56}
    assert adv.advertise(H100, "all-balanced", "mixed", sharing.EMPTY).resources == {
        "nvidia.com/mig-1g.10gb": 16, "nvidia.com/mig-2g.20gb": 8, "nvidia.com/mig-3g.40gb": 8}
    assert adv.advertise(A100, "all-balanced", "mixed", sharing.EMPTY).resources == {
        "nvidia.com/mig-1g.10gb": 8, "nvidia.com/mig-2g.20gb": 4, "nvidia.com/mig-3g.40gb": 4}
    assert adv.advertise(H100, "all-1g.10gb", "mixed", MIG_TS).resources == {"nvidia.com/mig-1g.10gb": 112}
    labels = adv.gfd_overlay(H100, "all-balanced", "mixed", sharing.EMPTY)
    assert labels["nvidia.com/mig-3g.40gb.count"] == "8"
    assert labels["nvidia.com/mig-3g.40gb.product"] == "NVIDIA-H100-80GB-HBM3-MIG-3g.40gb"
    assert labels["nvidia.com/mig-3g.40gb.memory"] == "40960"
    assert labels["nvidia.com/mig-3g.40gb.slices.gi"] == "3"
    assert labels["nvidia.com/gpu.replicas"] == "0"  # MIG-enabled GPUs are labelled without sharing
    assert all(adv.is_gfd_label(k) for k in labels)


def test_mig_single_and_none() -> None:
    assert adv.advertise(H100, "all-1g.10gb", "single", sharing.EMPTY).resources == {"nvidia.com/gpu": 56}
    labels = adv.gfd_overlay(H100, "all-1g.10gb", "single", sharing.EMPTY)
    assert labels["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3-MIG-1g.10gb"
    assert labels["nvidia.com/gpu.count"] == "56" and labels["nvidia.com/gpu.memory"] == "10240"
    assert adv.advertise(H100, "all-balanced", "single", sharing.EMPTY).error
    assert adv.gfd_overlay(H100, "all-balanced", "single", sharing.EMPTY)["nvidia.com/gpu.product"].endswith(
        "-MIG-INVALID")
    assert adv.advertise(H100, "all-1g.10gb", "none", sharing.EMPTY).resources == {"nvidia.com/gpu": 8}
    assert adv.advertise(H100, "all-disabled", "mixed", sharing.EMPTY).resources == {"nvidia.com/gpu": 8}
    assert adv.advertise(L4, "all-1g.10gb", "mixed", sharing.EMPTY).resources == {"nvidia.com/gpu": 1}


def test_config_selection_follows_config_manager() -> None:
    data = {"ts4": "sharing: {timeSlicing: {resources: [{name: gpu, replicas: 4}]}}", "bad": "version: v3"}
    label = sharing.NODE_LABEL
    assert adv.select_config(data, {label: "ts4"}, label, "").config == TS4
    assert adv.select_config(data, {}, label, "ts4").key == "ts4"
    assert adv.select_config(data, {}, label, "") == adv.Selected()  # fallback: the empty config
    assert "does not exist" in adv.select_config(data, {label: "nope"}, label, "ts4").error
    assert "unknown version" in adv.select_config(data, {label: "bad"}, label, "").error
    assert adv.select_config(None, {}, label, "ts4").error


def _pod(containers: list[dict[str, Any]], volumes: list[dict[str, Any]], ready: bool = True) -> dict[str, Any]:
    return {"spec": {"containers": containers, "volumes": volumes},
            "status": {"containerStatuses": [{"name": c["name"], "ready": ready} for c in containers]}}


def test_reading_the_pod_specs() -> None:
    sidecar = {"name": "config-manager", "command": ["config-manager"],
               "env": [{"name": "NODE_LABEL", "value": sharing.NODE_LABEL}, {"name": "DEFAULT_CONFIG", "value": "a"},
                       {"name": "CONFIG_FILE_SRCDIR", "value": "/available-configs"},
                       {"name": "CONFIG_FILE_DST", "value": "/config/config.yaml"}],
               "volumeMounts": [{"name": "available-configs", "mountPath": "/available-configs"},
                                {"name": "config", "mountPath": "/config"}]}
    plugin = {"name": "nvidia-device-plugin", "env": [{"name": "MIG_STRATEGY", "value": "mixed"},
                                                      {"name": "CONFIG_FILE", "value": "/config/config.yaml"}],
              "volumeMounts": [{"name": "config", "mountPath": "/config"}]}
    volumes = [{"name": "available-configs", "configMap": {"name": "cm"}}, {"name": "config", "emptyDir": {}}]
    pod = _pod([plugin, sidecar], volumes)
    assert adv.mig_strategy_of(pod) == "mixed"
    assert adv.config_source(pod) == adv.ConfigSource("cm", sharing.NODE_LABEL, "a", "empty")
    assert adv.config_source(_pod([plugin], [])) is None
    # the plugin reads the file config-manager writes only as its CONFIG_FILE, on the volume they share
    unread = {**plugin, "env": plugin["env"][:1]}
    assert adv.config_source(_pod([unread, sidecar], volumes)) is None
    daemon = {"name": "mps-control-daemon-ctr", "command": ["mps-control-daemon"]}
    assert adv.runs_mps_daemon(_pod([daemon], []))
    assert not adv.runs_mps_daemon(_pod([daemon], [], ready=False))
    assert not adv.runs_mps_daemon(pod)


USER_MIG_CONFIG = """\
version: v1
mig-configs:
  all-disabled:
  - devices: all
    mig-enabled: false
  custom:
  - device-filter: ["0x233010DE"]
    devices: all
    mig-enabled: true
    mig-devices: {"3g.40gb": 2}
  too-big:
  - devices: all
    mig-enabled: true
    mig-devices: {"3g.40gb": 3}
"""


def test_layouts_from_the_mig_managers_config_map() -> None:
    pods = [{"metadata": {"namespace": "ns"},
             "spec": {"volumes": [{"name": "mig-parted-config", "configMap": {"name": "custom-mig"}}]}}]
    configs = adv.mig_configs_of(pods, {("ns", "custom-mig"): {"config.yaml": USER_MIG_CONFIG}})
    assert configs is not None and set(configs) == {"all-disabled", "custom", "too-big"}
    assert adv.advertise(H100, "custom", "mixed", sharing.EMPTY, configs=configs).resources == {
        "nvidia.com/mig-3g.40gb": 16}
    assert adv.advertise(A100, "custom", "mixed", sharing.EMPTY, configs=configs).resources == {"nvidia.com/gpu": 4}
    assert adv.advertise(H100, "too-big", "mixed", sharing.EMPTY, configs=configs).resources == {"nvidia.com/gpu": 8}
    # a layout only the default set has is not in the user's config
    assert adv.advertise(H100, "all-1g.10gb", "mixed", sharing.EMPTY, configs=configs).resources == {
        "nvidia.com/gpu": 8}
    assert adv.mig_configs_of(pods, {}) is None


def test_mig_media_extension_profile_is_named_as_the_device_plugin_names_it() -> None:
    """The simulator advertised `nvidia.com/mig-1g.10gb+me` (and GFD labels with `+`), but the device plugin
    replaces `+` with `.` (internal/rm/rm.go, internal/resource/nvml-mig-device.go GetName): the resource is
    `nvidia.com/mig-1g.10gb.me`, its labels `nvidia.com/mig-1g.10gb.me.*`, its product `...-MIG-1g.10gb.me`."""
    me = sharing.parse("sharing: {timeSlicing: {resources: [{name: nvidia.com/mig-1g.10gb.me, replicas: 2}]}}")
    for config, count in ((sharing.EMPTY, 8), (me, 16)):
        assert adv.advertise(H100, "all-1g.10gb.me", "mixed", config).resources == {"nvidia.com/mig-1g.10gb.me": count}
    labels = adv.gfd_overlay(H100, "all-1g.10gb.me", "mixed", sharing.EMPTY)
    assert labels["nvidia.com/mig-1g.10gb.me.count"] == "8"
    assert labels["nvidia.com/mig-1g.10gb.me.product"] == "NVIDIA-H100-80GB-HBM3-MIG-1g.10gb.me"
    assert labels["nvidia.com/mig-1g.10gb.me.memory"] == "10240"
    assert not any("+" in k or "+" in v for k, v in labels.items())
    single = adv.gfd_overlay(H100, "all-1g.10gb.me", "single", sharing.EMPTY)
    assert single["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3-MIG-1g.10gb.me"
