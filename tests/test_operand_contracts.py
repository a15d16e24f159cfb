"""Upstream v26.7's operand contracts for the device plugin, GFD, MPS control daemon, DCGM exporter and MIG
manager: one test per fact (named after it), so a regression names the fact it breaks. The facts come from
upstream's assets/<state>/*, controllers/object_controls.go and the components' own flags."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from gpu_operator import mig_layouts
from gpu_operator.api import parse_spec
from gpu_operator.states.dcgm_exporter import remote_hostengine
from support import MONITORING, container, daemonset, daemonsets, facts, fixed_nodes, objects, render_all

DP = "nvidia-device-plugin-daemonset"
GFD = "gpu-feature-discovery"
MPS = "nvidia-device-plugin-mps-control-daemon"
EXPORTER = "nvidia-dcgm-exporter"
MIG = "nvidia-mig-manager"
DCGM = "nvidia-dcgm"
ALL = [DP, GFD, MPS, EXPORTER, MIG]
MAIN = {
    DP: "nvidia-device-plugin",
    GFD: "gpu-feature-discovery",
    MPS: "mps-control-daemon-ctr",
    EXPORTER: "nvidia-dcgm-exporter",
    MIG: "nvidia-mig-manager",
}
SHARING = {"devicePlugin": {"config": {"name": "time-slicing-config", "default": "any"}}}


def render(raw: dict[str, Any] | None = None, nodes: Any = None) -> list[Any]:
    return render_all(parse_spec(raw or {}), nodes)


def ds_of(raw: dict[str, Any] | None, name: str, nodes: Any = None) -> dict[str, Any]:
    return daemonset(render(raw, nodes), name)


def pod(ds: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = ds["spec"]["template"]["spec"]
    return spec


def init(ds: dict[str, Any], name: str) -> dict[str, Any]:
    for c in pod(ds).get("initContainers", []):
        if c["name"] == name:
            return dict(c)
    raise AssertionError(f"{ds['metadata']['name']} has no init container {name}")


def env(c: dict[str, Any]) -> dict[str, Any]:
    """name -> value (or the valueFrom mapping)."""
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}


def mounts(c: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["mountPath"]: m for m in c.get("volumeMounts", [])}


def host_path(ds: dict[str, Any], volume: str) -> str:
    (vol,) = [v for v in pod(ds)["volumes"] if v["name"] == volume]
    return str(vol["hostPath"]["path"])


def mounted_host_path(ds: dict[str, Any], c: dict[str, Any], path: str) -> str:
    return host_path(ds, mounts(c)[path]["name"])


def find(plans: list[Any], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objects(plans) if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, (kind, name, len(found))
    return found[0]


def rules(obj: dict[str, Any]) -> set[tuple[str, str, str]]:
    out = set()
    for rule in obj["rules"]:
        out |= {(g, r, v) for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    return out


# --- every operand that needs the NVIDIA container stack ---


@pytest.mark.parametrize("name", [*ALL, DCGM])
def test_waits_for_toolkit_ready_with_upstreams_loop(name: str) -> None:
    ds = ds_of({}, name)
    first = pod(ds)["initContainers"][0]
    assert first["name"] == "toolkit-validation"
    assert first["command"] == ["sh", "-c"]
    (script,) = first["args"]
    assert "until [ -f /run/nvidia/validations/toolkit-ready ]" in script
    assert "waiting for nvidia container stack to be setup" in script
    assert mounted_host_path(ds, first, "/run/nvidia/validations") == "/run/nvidia/validations"
    assert mounts(first)["/run/nvidia/validations"]["mountPropagation"] == "HostToContainer"
    assert first["securityContext"] == {"privileged": True, "runAsUser": 0}
    assert first["image"] == "nvcr.io/nvidia/gpu-operator:v26.7.0"  # upstream v26.7 ships the validator there


@pytest.mark.parametrize("name", [*ALL, DCGM])
def test_toolkit_wait_takes_the_validators_settings(name: str) -> None:
    raw = {
        "validator": {
            "imagePullPolicy": "Always",
            "imagePullSecrets": ["validator-cred"],
            "resources": {"limits": {"cpu": "100m"}},
            "toolkit": {"env": [{"name": "DEBUG", "value": "1"}]},
        }
    }
    ds = ds_of(raw, name)
    wait = init(ds, "toolkit-validation")
    assert wait["imagePullPolicy"] == "Always"
    assert wait["resources"] == {"limits": {"cpu": "100m"}}
    assert env(wait) == {"DEBUG": "1"}
    assert {"name": "validator-cred"} in pod(ds)["imagePullSecrets"]


def test_every_toolkit_wait_mounts_run_nvidia_validations_directory_or_create() -> None:
    """README Differences: toolkit waits mount the host's /run/nvidia/validations (DirectoryOrCreate), never
    /run/nvidia (Directory, upstream's): with a host driver nothing makes /run/nvidia (a tmpfs after a reboot), and
    the kubelet's type check failed the standalone DCGM's mount ("hostPath type check failed") until another pod
    made the directory. Every init container that waits for toolkit-ready, DCGM's included."""
    waits, offenders = set(), []
    for ds in daemonsets(render({"driver": {"enabled": False}, "dcgm": {"enabled": True}})):
        spec = pod(ds)
        volumes = {v["name"]: v["hostPath"] for v in spec.get("volumes", []) if "hostPath" in v}
        for c in spec.get("initContainers", []):
            if "toolkit-ready" not in " ".join(c.get("args", []) + c.get("command", [])):
                continue
            waits.add(ds["metadata"]["name"])
            for m in c.get("volumeMounts", []):
                hp = volumes.get(m["name"])
                if hp and (hp["path"], hp.get("type")) != ("/run/nvidia/validations", "DirectoryOrCreate"):
                    offenders.append((ds["metadata"]["name"], c["name"], hp["path"], hp.get("type")))
    assert {*ALL, DCGM} <= waits
    assert offenders == []


@pytest.mark.parametrize("name", ALL)
def test_runs_with_the_operator_runtime_class(name: str) -> None:
    assert pod(ds_of({}, name))["runtimeClassName"] == "nvidia"
    assert pod(ds_of({"operator": {"runtimeClass": "nvidia-cdi"}}, name))["runtimeClassName"] == "nvidia-cdi"


CRIO = facts("gpu-crio", os=("rhel", "9.4"), runtime="cri-o://1.30.2")
OPTED_OUT = {"nvidia.com/gpu.deploy.container-toolkit": "false"}


@pytest.mark.parametrize("name", ALL)
def test_no_runtime_class_on_crio_without_cdi(name: str) -> None:
    """A cri-o cluster without CDI gets no runtime class (upstream setRuntimeClassName); containerd keeps it."""
    assert "runtimeClassName" not in pod(ds_of({"cdi": {"enabled": False}}, name, [CRIO]))
    assert pod(ds_of({"cdi": {"enabled": True}}, name, [CRIO]))["runtimeClassName"] == "nvidia"
    assert pod(ds_of({"cdi": {"enabled": False}}, name))["runtimeClassName"] == "nvidia"  # containerd only
    docker = facts("gpu-docker", runtime="docker://27.3.1")  # upstream's pick with docker is list order; kept here
    assert pod(ds_of({"cdi": {"enabled": False}}, name, [docker, CRIO]))["runtimeClassName"] == "nvidia"


@pytest.mark.parametrize("name", [*ALL, "nvidia-operator-validator"])
@pytest.mark.parametrize(
    ("raw", "labels"),
    [({"toolkit": {"enabled": False}}, {}), ({}, OPTED_OUT), ({}, {})],
    ids=["host-toolkit", "containerd-node-opted-out", "operator-toolkit"],
)
def test_a_crio_node_keeps_the_runtime_class_where_a_gpu_node_runs_containerd(
    name: str, raw: dict[str, Any], labels: dict[str, str]
) -> None:
    """CDI off, one containerd and one cri-o GPU node. The class was left out of every pod as soon as any GPU
    node ran cri-o, so a containerd node whose toolkit is on the host (toolkit.enabled false, or the node opted
    out), where `nvidia` is a handler but not the default runtime, ran the operands under runc with no GPU.
    Upstream's getRuntime picks containerd for this cluster and keeps the class; our cri-o toolkit (config mode)
    gives the cri-o node the `nvidia` handler too."""
    nodes = [facts("gpu-ctr", labels=labels), CRIO]
    assert pod(ds_of({**raw, "cdi": {"enabled": False}}, name, nodes))["runtimeClassName"] == "nvidia"


@pytest.mark.parametrize("name", ALL)
def test_nri_plugin_replaces_the_runtime_class_with_an_annotation(name: str) -> None:
    ds = ds_of({"cdi": {"enabled": True, "nriPluginEnabled": True}}, name)
    assert "runtimeClassName" not in pod(ds)
    annotations = ds["spec"]["template"]["metadata"]["annotations"]
    assert annotations[f"nvidia.cdi.k8s.io/container.{MAIN[name]}"] == "management.nvidia.com/gpu=all"


@pytest.mark.parametrize("name", ALL)
def test_host_network_from_the_section(name: str) -> None:
    section = {DP: "devicePlugin", GFD: "gfd", MPS: "devicePlugin", EXPORTER: "dcgmExporter", MIG: "migManager"}
    spec = pod(ds_of({section[name]: {"hostNetwork": True}}, name))
    assert spec["hostNetwork"] is True and spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert "hostNetwork" not in pod(ds_of({}, name))


# --- MIG strategy (device plugin, GFD, MPS daemon; not the MIG manager) ---


@pytest.mark.parametrize("name", [DP, GFD, MPS])
def test_mig_strategy_env(name: str) -> None:
    main = container(ds_of({"mig": {"strategy": "mixed"}}, name), MAIN[name])
    assert env(main)["MIG_STRATEGY"] == "mixed"
    assert env(main)["NVIDIA_MIG_MONITOR_DEVICES"] == "all"
    none = env(container(ds_of({"mig": {"strategy": "none"}}, name), MAIN[name]))
    assert none["MIG_STRATEGY"] == "none" and "NVIDIA_MIG_MONITOR_DEVICES" not in none


def test_mig_manager_gets_no_mig_strategy() -> None:
    assert "MIG_STRATEGY" not in env(container(ds_of({"mig": {"strategy": "mixed"}}, MIG), MAIN[MIG]))


# --- device plugin ---


def test_device_plugin_cdi_env() -> None:
    main = env(container(ds_of({"cdi": {"enabled": True}}, DP), "nvidia-device-plugin"))
    assert main["CDI_ENABLED"] == "true"
    assert main["DEVICE_LIST_STRATEGY"] == "cdi-annotations,cdi-cri"
    assert main["CDI_ANNOTATION_PREFIX"] == "cdi.k8s.io/"
    assert main["NVIDIA_CDI_HOOK_PATH"] == "/usr/local/nvidia/toolkit/nvidia-cdi-hook"
    assert "NVIDIA_CTK_PATH" not in main  # upstream sets only the hook path


def test_cdi_hook_path_follows_the_toolkit_install_dir() -> None:
    raw = {"cdi": {"enabled": True}, "toolkit": {"installDir": "/opt/nvidia"}}
    assert env(container(ds_of(raw, DP), "nvidia-device-plugin"))["NVIDIA_CDI_HOOK_PATH"] == (
        "/opt/nvidia/toolkit/nvidia-cdi-hook"
    )
    raw = {"cdi": {"enabled": True}, "toolkit": {"enabled": False}}
    assert "NVIDIA_CDI_HOOK_PATH" not in env(container(ds_of(raw, DP), "nvidia-device-plugin"))


def test_device_plugin_cdi_off_lists_devices_by_envvar() -> None:
    main = env(container(ds_of({"cdi": {"enabled": False}}, DP), "nvidia-device-plugin"))
    assert main["DEVICE_LIST_STRATEGY"] == "envvar"
    assert not {"CDI_ENABLED", "CDI_ANNOTATION_PREFIX", "NVIDIA_CDI_HOOK_PATH"} & set(main)


def test_device_plugin_writes_cdi_specs_on_the_host() -> None:
    ds = ds_of({"cdi": {"enabled": True}}, DP)
    assert mounted_host_path(ds, container(ds, "nvidia-device-plugin"), "/var/run/cdi") == "/var/run/cdi"


def test_device_plugin_pod_contract() -> None:
    ds = ds_of({}, DP)
    main = container(ds, "nvidia-device-plugin")
    values = env(main)
    for key, value in {
        "PASS_DEVICE_SPECS": "true",
        "FAIL_ON_INIT_ERROR": "true",
        "DEVICE_ID_STRATEGY": "uuid",
        "NVIDIA_VISIBLE_DEVICES": "all",
        "NVIDIA_DRIVER_CAPABILITIES": "all",
        "MPS_ROOT": "/run/nvidia/mps",
    }.items():
        assert values[key] == value, key
    assert main["securityContext"] == {"privileged": True}
    assert mounted_host_path(ds, main, "/var/lib/kubelet/device-plugins") == "/var/lib/kubelet/device-plugins"
    assert mounted_host_path(ds, main, "/driver-root") == "/run/nvidia/driver"
    assert mounted_host_path(ds, main, "/host") == "/"
    assert mounts(main)["/host"]["readOnly"] is True
    assert mounted_host_path(ds, main, "/dev/shm") == "/run/nvidia/mps/shm"
    assert mounted_host_path(ds, main, "/mps") == "/run/nvidia/mps"
    assert pod(ds)["serviceAccountName"] == "nvidia-device-plugin"


def test_kubelet_root_dir_moves_the_device_plugin_registration_directory() -> None:
    """The plugin registers through <kubelet root>/device-plugins/kubelet.sock and serves its socket there: with a
    kubelet root elsewhere (k0s: /var/lib/k0s/kubelet) the host side of its mount follows hostPaths.kubeletRootDir
    (upstream moves only the exporter's pod-resources), else no nvidia.com/gpu is advertised; the mount stays where
    the plugin looks."""
    for root, host in (("/var/lib/k0s/kubelet", "/var/lib/k0s/kubelet/device-plugins"),
                       ("/data/kubelet/", "/data/kubelet/device-plugins"),
                       ("", "/var/lib/kubelet/device-plugins")):  # fmt: skip
        ds = ds_of({"hostPaths": {"kubeletRootDir": root}}, DP)
        assert mounted_host_path(ds, container(ds, "nvidia-device-plugin"), "/var/lib/kubelet/device-plugins") == (
            host
        ), root


def test_device_plugin_sources_driver_ready_and_passes_args_on() -> None:
    main = container(ds_of({"devicePlugin": {"args": ["--fail-on-init-error=false"]}}, DP), "nvidia-device-plugin")
    shell, flag, script, name = main["command"]
    assert (shell, flag, name) == ("/bin/sh", "-c", "nvidia-device-plugin")
    assert "until [ -f /run/nvidia/validations/driver-ready ]" in script
    assert "set -o allexport" in script and ". /run/nvidia/validations/driver-ready" in script
    assert script.rstrip().endswith('exec nvidia-device-plugin "$@"')
    assert main["args"] == ["--fail-on-init-error=false"]  # reach the plugin as "$@"


def test_driver_install_dir_and_host_root_move_the_mounts() -> None:
    raw = {"hostPaths": {"driverInstallDir": "/opt/driver", "rootFS": "/host-root"}}
    for name in (DP, MIG):
        ds = ds_of(raw, name)
        main = container(ds, MAIN[name])
        assert mounted_host_path(ds, main, "/driver-root") == "/opt/driver"
        assert mounted_host_path(ds, main, "/host") == "/host-root"
        assert env(main)["HOST_ROOT"] == "/host-root"
    assert "HOST_ROOT" not in env(container(ds_of({}, DP), "nvidia-device-plugin"))


def test_mps_root_moves_the_mps_mounts() -> None:
    raw = {"devicePlugin": {"mps": {"root": "/var/mps"}}}
    ds = ds_of(raw, DP)
    main = container(ds, "nvidia-device-plugin")
    assert env(main)["MPS_ROOT"] == "/var/mps"
    assert mounted_host_path(ds, main, "/mps") == "/var/mps"
    assert mounted_host_path(ds, main, "/dev/shm") == "/var/mps/shm"
    mps = ds_of(raw, MPS)
    assert host_path(mps, "mps-root") == "/var/mps" and host_path(mps, "mps-shm") == "/var/mps/shm"


def test_gds_and_gdrcopy_devices_env() -> None:
    main = env(container(ds_of({"gds": {"enabled": True}, "gdrcopy": {"enabled": True}}, DP), "nvidia-device-plugin"))
    assert main["GDS_ENABLED"] == main["MOFED_ENABLED"] == main["GDRCOPY_ENABLED"] == "true"
    assert not {"GDS_ENABLED", "GDRCOPY_ENABLED"} & set(env(container(ds_of({}, DP), "nvidia-device-plugin")))


def test_device_plugin_rbac_reads_nodes_only() -> None:
    plans = render()
    assert rules(find(plans, "ClusterRole", "nvidia-device-plugin")) == {
        ("", "nodes", "get"),
        ("", "nodes", "list"),
        ("", "nodes", "watch"),
    }
    assert not [o for o in objects(plans) if o["kind"] == "Role" and o["metadata"]["name"] == "nvidia-device-plugin"]


# --- sharing configs (devicePlugin.config) ---

SIGNALLED = {DP: "nvidia-device-plugin", GFD: "gpu-feature-discovery", MPS: "/usr/bin/mps-control-daemon"}


@pytest.mark.parametrize("name", [DP, GFD, MPS])
def test_sharing_config_adds_upstreams_config_manager(name: str) -> None:
    ds = ds_of(SHARING, name)
    first = init(ds, "config-manager-init")
    sidecar = container(ds, "config-manager")
    common = {
        "KUBECONFIG": "",
        "NODE_NAME": {"fieldRef": {"fieldPath": "spec.nodeName"}},
        "NODE_LABEL": "nvidia.com/device-plugin.config",
        "CONFIG_FILE_SRCDIR": "/available-configs",
        "CONFIG_FILE_DST": "/config/config.yaml",
        "DEFAULT_CONFIG": "any",
        "FALLBACK_STRATEGIES": "empty",
    }
    assert env(first) == {**common, "ONESHOT": "true", "SEND_SIGNAL": "false", "SIGNAL": "", "PROCESS_TO_SIGNAL": ""}
    assert env(sidecar) == {
        **common,
        "ONESHOT": "false",
        "SEND_SIGNAL": "true",
        "SIGNAL": "1",
        "PROCESS_TO_SIGNAL": SIGNALLED[name],
    }
    for c in (first, sidecar):
        assert c["command"] == ["config-manager"]
        assert c["image"] == "nvcr.io/nvidia/k8s-device-plugin:v0.20.0"
        assert set(mounts(c)) == {"/config", "/available-configs"}
    main = container(ds, MAIN[name])
    assert env(main)["CONFIG_FILE"] == "/config/config.yaml"
    assert {"/config", "/available-configs"} <= set(mounts(main))
    volumes = {v["name"]: v for v in pod(ds)["volumes"]}
    assert volumes[mounts(main)["/available-configs"]["name"]]["configMap"] == {"name": "time-slicing-config"}
    assert volumes[mounts(main)["/config"]["name"]]["emptyDir"] == {}
    # config-manager-init runs after the toolkit wait, before the main container.
    assert [c["name"] for c in pod(ds)["initContainers"]][0] == "toolkit-validation"


@pytest.mark.parametrize("name", [DP, GFD])
def test_sharing_config_shares_the_process_namespace(name: str) -> None:
    assert pod(ds_of(SHARING, name))["shareProcessNamespace"] is True
    assert "shareProcessNamespace" not in pod(ds_of({}, name))


def test_mps_daemon_signals_through_the_host_pid_namespace() -> None:
    """Kubernetes refuses hostPID together with shareProcessNamespace; upstream keeps hostPID."""
    spec = pod(ds_of(SHARING, MPS))
    assert spec["hostPID"] is True and "shareProcessNamespace" not in spec


@pytest.mark.parametrize("name", [DP, GFD, MPS])
def test_no_config_manager_without_a_sharing_config(name: str) -> None:
    ds = ds_of({}, name)
    names = [c["name"] for c in pod(ds)["containers"] + pod(ds).get("initContainers", [])]
    assert "config-manager" not in names and "config-manager-init" not in names
    assert "CONFIG_FILE" not in env(container(ds, MAIN[name]))


@pytest.mark.parametrize("name", [DP, GFD, MPS])
def test_config_manager_may_read_node_labels(name: str) -> None:
    plans = render(SHARING)
    account = pod(daemonset(plans, name))["serviceAccountName"]
    subject = {"kind": "ServiceAccount", "name": account, "namespace": "gpu-operator"}
    bindings = [o for o in objects(plans) if o["kind"] == "ClusterRoleBinding" and subject in o["subjects"]]
    granted = set().union(*(rules(find(plans, "ClusterRole", b["roleRef"]["name"])) for b in bindings))
    assert {("", "nodes", "get"), ("", "nodes", "list"), ("", "nodes", "watch")} <= granted


def test_gfd_config_manager_pulls_with_the_device_plugin_secret() -> None:
    raw = {**SHARING, "devicePlugin": {**SHARING["devicePlugin"], "imagePullSecrets": ["dp-cred"]}}
    assert {"name": "dp-cred"} in pod(ds_of(raw, GFD))["imagePullSecrets"]


def test_device_plugin_pull_secrets_roll_only_the_pods_that_run_its_image() -> None:
    """With a sharing config, devicePlugin.imagePullSecrets went into every pod that shares contracts.pod_vars,
    dcgm-exporter's and mig-manager's too, which run no config-manager (the device plugin's image): a change of
    those secrets (or naming the config while they are set) restarted the exporter on every GPU node and
    mig-manager. Now only the device plugin, its MPS daemon and GFD get them (upstream: handleDevicePluginConfig
    adds them where it adds config-manager)."""

    def templates(raw: dict[str, Any]) -> dict[str, str]:
        return {d["metadata"]["name"]: json.dumps(d["spec"]["template"], sort_keys=True)
                for d in daemonsets(render(raw))}  # fmt: skip

    before = templates(SHARING)
    after = templates({"devicePlugin": {**SHARING["devicePlugin"], "imagePullSecrets": ["dp-cred"]}})
    rolled = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    assert rolled == {DP, MPS, GFD}, f"also rolled: {sorted(rolled - {DP, MPS, GFD})}"


# --- MPS control daemon ---


def test_mps_daemon_runs_on_mps_capable_nodes() -> None:
    selector = pod(ds_of({}, MPS))["nodeSelector"]
    assert selector == {"nvidia.com/gpu.deploy.device-plugin": "true", "nvidia.com/mps.capable": "true"}


def test_mps_daemon_pod_contract() -> None:
    ds = ds_of({"devicePlugin": {"resources": {"limits": {"memory": "1Gi"}}}}, MPS)
    mounts_init = init(ds, "mps-control-daemon-mounts")
    assert mounts_init["command"] == ["mps-control-daemon", "mount-shm"]
    assert mounts(mounts_init)["/mps"]["mountPropagation"] == "Bidirectional"
    assert mounts_init["resources"] == {"limits": {"memory": "1Gi"}}
    main = container(ds, "mps-control-daemon-ctr")
    assert main["command"] == ["mps-control-daemon"]
    assert main["resources"] == {"limits": {"memory": "1Gi"}}
    values = env(main)
    assert values["NVIDIA_VISIBLE_DEVICES"] == "all"
    assert values["NVIDIA_DRIVER_CAPABILITIES"] == "compute,utility"
    assert values["NODE_NAME"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert mounted_host_path(ds, main, "/mps") == "/run/nvidia/mps"
    assert mounted_host_path(ds, main, "/dev/shm") == "/run/nvidia/mps/shm"
    assert pod(ds)["hostPID"] is True


def test_device_plugin_env_and_args_stay_off_the_mps_daemon() -> None:
    raw = {"devicePlugin": {"env": [{"name": "X", "value": "1"}], "args": ["--x"]}}
    main = container(ds_of(raw, MPS), "mps-control-daemon-ctr")
    assert "X" not in env(main) and "args" not in main


# --- GPU feature discovery ---


def test_gfd_pod_contract() -> None:
    ds = ds_of({}, GFD)
    main = container(ds, "gpu-feature-discovery")
    values = env(main)
    assert values["GFD_SLEEP_INTERVAL"] == "60s" and values["GFD_FAIL_ON_INIT_ERROR"] == "true"
    assert values["NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert values["NODE_NAME"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert values["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    features = "/etc/kubernetes/node-feature-discovery/features.d"
    assert mounted_host_path(ds, main, features) == features
    assert mounts(main)["/sys"]["readOnly"] is True


def test_gfd_writes_node_features_in_its_namespace() -> None:
    plans = render()
    role = rules(find(plans, "Role", "nvidia-gpu-feature-discovery"))
    assert {("nfd.k8s-sigs.io", "nodefeatures", v) for v in ("get", "list", "watch", "create", "update")} <= role
    assert ("", "pods", "get") in role
    cluster = rules(find(plans, "ClusterRole", "nvidia-gpu-feature-discovery"))
    assert cluster == {("", "nodes", "get"), ("", "nodes", "list"), ("", "nodes", "watch")}


def test_gfd_env_cannot_change_the_policys_mig_strategy() -> None:
    """gfd.env replaced MIG_STRATEGY: upstream sets it after gfd.env (applyMIGConfiguration), so GFD labels the
    node under the strategy the device plugin advertises with."""
    raw = {"mig": {"strategy": "mixed"}, "gfd": {"env": [{"name": "MIG_STRATEGY", "value": "single"}]}}
    assert env(container(ds_of(raw, GFD), MAIN[GFD]))["MIG_STRATEGY"] == "mixed"


def test_gfd_env_cannot_turn_off_mig_device_monitoring() -> None:
    """gfd.env replaced NVIDIA_MIG_MONITOR_DEVICES, which upstream sets after it (mig.strategy unset here)."""
    raw = {"gfd": {"env": [{"name": "NVIDIA_MIG_MONITOR_DEVICES", "value": "none"}]}}
    assert env(container(ds_of(raw, GFD), MAIN[GFD]))["NVIDIA_MIG_MONITOR_DEVICES"] == "all"


def test_gfd_env_cannot_move_the_config_managers_file() -> None:
    """gfd.env replaced CONFIG_FILE, so GFD read a file config-manager never writes; upstream sets it after gfd.env
    (handleDevicePluginConfig)."""
    raw = {**SHARING, "gfd": {"env": [{"name": "CONFIG_FILE", "value": "/etc/gfd/config.yaml"}]}}
    assert env(container(ds_of(raw, GFD), MAIN[GFD]))["CONFIG_FILE"] == "/config/config.yaml"


def test_gfd_env_overrides_the_assets_env() -> None:
    raw = {"gfd": {"env": [{"name": "GFD_SLEEP_INTERVAL", "value": "30s"}]}}
    assert env(container(ds_of(raw, GFD), MAIN[GFD]))["GFD_SLEEP_INTERVAL"] == "30s"


def test_device_plugin_env_overrides_the_mig_strategy() -> None:
    """Unlike GFD's: upstream applies devicePlugin.env last, after applyMIGConfiguration."""
    raw = {"mig": {"strategy": "mixed"}, "devicePlugin": {"env": [{"name": "MIG_STRATEGY", "value": "single"}]}}
    assert env(container(ds_of(raw, DP), MAIN[DP]))["MIG_STRATEGY"] == "single"


# --- DCGM exporter ---


def test_dcgm_exporter_env() -> None:
    main = env(container(ds_of({}, EXPORTER), EXPORTER))
    assert main["DCGM_EXPORTER_LISTEN"] == ":9400"
    assert main["DCGM_EXPORTER_KUBERNETES"] == "true"
    assert main["DCGM_EXPORTER_COLLECTORS"] == "/etc/dcgm-exporter/dcp-metrics-included.csv"
    assert main["NODE_NAME"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}


def test_dcgm_exporter_custom_metrics_config() -> None:
    ds = ds_of({"dcgmExporter": {"config": {"name": "custom-metrics"}}}, EXPORTER)
    main = container(ds, EXPORTER)
    assert env(main)["DCGM_EXPORTER_COLLECTORS"] == "/etc/dcgm-exporter/dcgm-metrics.csv"
    mount = mounts(main)["/etc/dcgm-exporter/dcgm-metrics.csv"]
    assert mount["subPath"] == "dcgm-metrics.csv" and mount["readOnly"] is True
    (vol,) = [v for v in pod(ds)["volumes"] if v["name"] == mount["name"]]
    items = [{"key": "dcgm-metrics.csv", "path": "dcgm-metrics.csv"}]
    assert vol["configMap"] == {"name": "custom-metrics", "items": items}


@pytest.mark.parametrize(
    ("config_maps", "why"),
    [
        pytest.param({}, "ConfigMap custom-metrics (dcgmExporter.config.name) not found in namespace gpu-operator",
                     id="configmap-missing"),
        pytest.param({"custom-metrics": ("metrics.csv",)},
                     "ConfigMap custom-metrics (dcgmExporter.config.name) has no key dcgm-metrics.csv",
                     id="key-missing"),
    ],
)  # fmt: skip
def test_dcgm_exporter_names_a_missing_metrics_config_map(config_maps: dict[str, tuple[str, ...]], why: str) -> None:
    """dcgmExporter.config.name's key dcgm-metrics.csv is mounted (items: that key): without the ConfigMap or the key
    every exporter pod stays in ContainerCreating (FailedMount). The state says so, as the driver's ConfigMaps do."""
    raw = {"dcgmExporter": {"config": {"name": "custom-metrics"}}}
    (p,) = [p for p in render_all(parse_spec(raw), config_maps=config_maps) if p.state.name == "state-dcgm-exporter"]
    assert (p.problem, p.objects) == (why, [])


def test_dcgm_exporter_uses_the_standalone_hostengine_when_dcgm_is_enabled() -> None:
    assert remote_hostengine(parse_spec({"dcgm": {"enabled": True}})) == "nvidia-dcgm:5555"
    assert remote_hostengine(parse_spec({})) == "nvidia-dcgm:5555"  # upstream: dcgm.enabled unset is on
    assert remote_hostengine(parse_spec({"dcgm": {"enabled": False}})) is None
    assert env(container(ds_of({"dcgm": {"enabled": True}}, EXPORTER), EXPORTER))["DCGM_REMOTE_HOSTENGINE_INFO"] == (
        "nvidia-dcgm:5555"
    )
    off = {"dcgm": {"enabled": False}}
    assert "DCGM_REMOTE_HOSTENGINE_INFO" not in env(container(ds_of(off, EXPORTER), EXPORTER))


def host_engine_env(value: str) -> dict[str, Any]:
    return {"env": [{"name": "DCGM_REMOTE_HOSTENGINE_INFO", "value": value}]}


def test_dcgm_exporter_gets_the_host_network_for_a_localhost_host_engine() -> None:
    """DGX BaseOS runs nv-hostengine on the host: dcgm.enabled=false and dcgmExporter.env
    DCGM_REMOTE_HOSTENGINE_INFO=localhost:5555. Upstream's TransformDCGMExporter means hostNetwork then (its check
    reads the env before dcgmExporter.env is applied, so it never fires); without it the exporter dials its own
    pod's loopback, where no engine listens."""
    raw = {"dcgm": {"enabled": False}, "dcgmExporter": host_engine_env("localhost:5555")}
    assert pod(ds_of(raw, EXPORTER))["hostNetwork"] is True
    assert pod(ds_of(raw, EXPORTER))["dnsPolicy"] == "ClusterFirstWithHostNet"
    for raw in ({"dcgm": {"enabled": True}, "dcgmExporter": host_engine_env("localhost:5555")},  # nvidia-dcgm's
                {"dcgm": {"enabled": False}, "dcgmExporter": host_engine_env("dcgm.example.com:5555")},
                {"dcgm": {"enabled": False}}):  # fmt: skip
        assert "hostNetwork" not in pod(ds_of(raw, EXPORTER)), raw


@pytest.mark.parametrize(
    "exporter",
    [
        {"args": ["-r", "localhost:5555"]},
        {"args": ["--remote-hostengine-info=localhost:5555"]},
        {"env": [{"name": "DCGM_REMOTE_HOSTENGINE_INFO", "value": "127.0.0.1:5555"}]},
        {"env": [{"name": "DCGM_REMOTE_HOSTENGINE_INFO", "value": "[::1]:5555"}]},
    ],
    ids=["arg-r", "arg-long", "env-127.0.0.1", "env-ipv6-loopback"],
)
def test_dcgm_exporter_gets_the_host_network_for_a_host_engine_named_by_flag_or_loopback(
    exporter: dict[str, Any],
) -> None:
    """dcgm-exporter also takes the engine address from its flag --remote-hostengine-info, alias -r (which
    dcgmExporter.args reach unchanged), and its usage text names "[::1]:5555" as the IPv6 form: a loopback address
    is the node's own engine as much as `localhost` is. We used to look at the env's `localhost` only, so these
    exporters dialled their own pod's loopback and never became ready."""
    pod_spec = pod(ds_of({"dcgm": {"enabled": False}, "dcgmExporter": exporter}, EXPORTER))
    assert (pod_spec.get("hostNetwork"), pod_spec.get("dnsPolicy")) == (True, "ClusterFirstWithHostNet")


def test_dcgm_exporter_host_engine_flag_wins_over_the_env() -> None:
    """The exporter takes an explicitly set flag over its env (urfave/cli): an -r naming a remote engine needs no
    host network whatever the env says."""
    raw = {"dcgm": {"enabled": False}, "dcgmExporter": {"args": ["-r", "dcgm.example.com:5555"],
                                                         **host_engine_env("localhost:5555")}}  # fmt: skip
    assert "hostNetwork" not in pod(ds_of(raw, EXPORTER))


def test_dcgm_exporter_reads_the_kubelet_pod_resources() -> None:
    ds = ds_of({}, EXPORTER)
    main = container(ds, EXPORTER)
    assert mounted_host_path(ds, main, "/var/lib/kubelet/pod-resources") == "/var/lib/kubelet/pod-resources"
    assert mounts(main)["/var/lib/kubelet/pod-resources"]["readOnly"] is True
    moved = ds_of({"hostPaths": {"kubeletRootDir": "/data/kubelet"}}, EXPORTER)
    assert mounted_host_path(moved, container(moved, EXPORTER), "/var/lib/kubelet/pod-resources") == (
        "/data/kubelet/pod-resources"
    )


def test_dcgm_exporter_probes_and_port() -> None:
    main = container(ds_of({}, EXPORTER), EXPORTER)
    assert main["ports"] == [{"name": "metrics", "containerPort": 9400}]
    for probe in ("livenessProbe", "readinessProbe"):
        assert main[probe]["httpGet"] == {"port": 9400, "path": "/health"}
        assert main[probe]["initialDelaySeconds"] == 45


def test_dcgm_exporter_service_on_9400() -> None:
    service = find(render(), "Service", EXPORTER)
    assert service["spec"]["ports"] == [{"name": "gpu-metrics", "port": 9400, "targetPort": 9400, "protocol": "TCP"}]
    assert service["spec"]["selector"] == {"app": EXPORTER}
    assert service["metadata"]["annotations"]["prometheus.io/scrape"] == "true"


def test_dcgm_exporter_service_monitor() -> None:
    raw = {"dcgmExporter": {"serviceMonitor": {"enabled": True, "interval": "30s", "scrapeTimeout": "10s"}}}
    plans = render_all(parse_spec(raw), api_groups=frozenset({"monitoring.coreos.com"}))
    monitor = find(plans, "ServiceMonitor", EXPORTER)
    assert monitor["spec"]["jobLabel"] == "app"
    assert monitor["metadata"]["labels"]["app"] == EXPORTER
    assert monitor["spec"]["endpoints"][0] == {
        "port": "gpu-metrics",
        "path": "/metrics",
        "interval": "30s",
        "scrapeTimeout": "10s",
        "honorLabels": False,
        "relabelings": [],
    }


READ_PODS = "nvidia-dcgm-exporter-read-pods"


def test_dcgm_exporter_rbac() -> None:
    plans = render({"dcgmExporter": {"enablePodLabels": True}})
    assert rules(find(plans, "Role", EXPORTER)) == {("", "configmaps", "get"), ("", "configmaps", "list")}
    assert rules(find(plans, "ClusterRole", READ_PODS)) == {
        ("", "pods", "get"),
        ("", "pods", "list"),
        ("", "pods", "watch"),
    }
    binding = find(plans, "ClusterRoleBinding", READ_PODS)
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": EXPORTER, "namespace": "gpu-operator"}]


def kinds_named(plans: list[Any], name: str) -> set[str]:
    return {o["kind"] for o in objects(plans) if o["metadata"]["name"] == name}


@pytest.mark.parametrize(
    ("raw", "granted"),
    [
        ({}, False),
        ({"dcgmExporter": {"enablePodLabels": True}}, True),
        ({"dcgmExporter": {"enablePodUID": True}}, True),
        ({"dcgmExporter": {"env": [{"name": "DCGM_EXPORTER_KUBERNETES_ENABLE_POD_UID", "value": "TRUE"}]}}, True),
        ({"dcgmExporter": {"env": [{"name": "DCGM_EXPORTER_CONFIGMAP_DATA", "value": "gpu-operator:metrics"}]}}, False),
    ],
)
def test_dcgm_exporter_reads_pods_cluster_wide_only_for_pod_metadata(raw: dict[str, Any], granted: bool) -> None:
    """Upstream's rbacGates (controllers/object_controls.go) create the read-pods ClusterRole and binding only with
    pod labels/UID on (fields, or their env set to true) and delete them otherwise; DCGM_EXPORTER_CONFIGMAP_DATA
    needs only the namespaced Role. We used to grant every pod's read cluster-wide whatever the policy said."""
    plans = render(raw)
    assert kinds_named(plans, READ_PODS) == ({"ClusterRole", "ClusterRoleBinding"} if granted else set())
    assert "Role" in kinds_named(plans, EXPORTER)  # the ConfigMap read is not gated


@pytest.mark.parametrize(
    ("section", "on"),
    [
        # urfave/cli reads a bool flag's env with strconv.ParseBool: "1" and "t" switch it on too.
        ({"env": [{"name": "DCGM_EXPORTER_KUBERNETES_ENABLE_POD_LABELS", "value": "1"}]}, True),
        ({"env": [{"name": "DCGM_EXPORTER_KUBERNETES_ENABLE_POD_UID", "value": "t"}]}, True),
        ({"env": [{"name": "DCGM_EXPORTER_KUBERNETES_ENABLE_POD_UID", "value": "0"}]}, False),
        # The exporter's flags in dcgmExporter.args, which reach its container unchanged.
        ({"args": ["--kubernetes-enable-pod-labels"]}, True),
        ({"args": ["-f", "/etc/dcgm-exporter/dcp-metrics-included.csv", "--kubernetes-enable-pod-uid=true"]}, True),
        ({"args": ["-kubernetes-enable-pod-labels=false"]}, False),
    ],
    ids=["env-1", "env-t", "env-0", "arg-labels", "arg-uid", "arg-false"],
)
def test_dcgm_exporter_pod_metadata_switched_on_as_the_exporter_reads_it(section: dict[str, Any], on: bool) -> None:
    """Pod labels/UIDs switched on by an env value the exporter takes as true, or by its own flags in
    dcgmExporter.args: the exporter reads pods, so it needs its token and the read-pods ClusterRole and binding.
    We used to see only the literal "true" env (upstream's check), so the metrics silently lost their pod labels."""
    plans = render({"dcgmExporter": section})
    token = pod(daemonset(plans, EXPORTER))["automountServiceAccountToken"]
    assert (kinds_named(plans, READ_PODS), token) == ({"ClusterRole", "ClusterRoleBinding"} if on else set(), on)


def test_dcgm_exporter_mounts_its_token_only_to_read_pod_metadata() -> None:
    assert pod(ds_of({}, EXPORTER))["automountServiceAccountToken"] is False
    labels = ds_of({"dcgmExporter": {"enablePodLabels": True}}, EXPORTER)
    assert pod(labels)["automountServiceAccountToken"] is True
    assert env(container(labels, EXPORTER))["DCGM_EXPORTER_KUBERNETES_ENABLE_POD_LABELS"] == "true"
    by_env = {"dcgmExporter": {"env": [{"name": "DCGM_EXPORTER_CONFIGMAP_DATA", "value": "gpu-operator:metrics"}]}}
    assert pod(ds_of(by_env, EXPORTER))["automountServiceAccountToken"] is True


@pytest.mark.parametrize(
    ("args", "token"),
    [
        (["-m", "gpu-operator:custom-metrics"], True),
        (["--configmap-data=gpu-operator:custom-metrics"], True),
        (["-m", "none"], False),  # the exporter's "no ConfigMap" default
    ],
    ids=["m", "long", "none"],
)
def test_dcgm_exporter_mounts_its_token_for_a_configmap_named_in_args(args: list[str], token: bool) -> None:
    """The exporter reads its metrics ConfigMap through the API when -m/--configmap-data (its flag for
    DCGM_EXPORTER_CONFIGMAP_DATA) names one in dcgmExporter.args, as with the env. We used to look at the env only,
    so the Role it is granted (configmaps get/list) was of no use: no token. Pods are still not read cluster-wide."""
    plans = render({"dcgmExporter": {"args": args}})
    assert pod(daemonset(plans, EXPORTER))["automountServiceAccountToken"] is token
    assert kinds_named(plans, READ_PODS) == set()


def test_dcgm_exporter_hpc_job_mapping() -> None:
    ds = ds_of({"dcgmExporter": {"hpcJobMapping": {"enabled": True}}}, EXPORTER)
    main = container(ds, EXPORTER)
    assert env(main)["DCGM_HPC_JOB_MAPPING_DIR"] == "/var/lib/dcgm-exporter/job-mapping"
    assert mounted_host_path(ds, main, "/var/lib/dcgm-exporter/job-mapping") == "/var/lib/dcgm-exporter/job-mapping"


# --- MIG manager ---


def test_mig_manager_env_and_mounts() -> None:
    ds = ds_of({}, MIG)
    main = container(ds, MIG)
    values = env(main)
    assert values["GPU_CLIENTS_FILE"] == "/gpu-clients/clients.yaml"
    assert values["DEFAULT_GPU_CLIENTS_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert values["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert values["POD_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert values["NODE_NAME"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert "WITH_REBOOT" not in values  # upstream leaves mig-manager's default (false)
    assert mounted_host_path(ds, main, "/sys") == "/sys"
    assert mounted_host_path(ds, main, "/host") == "/"
    assert mounted_host_path(ds, main, "/driver-root") == "/run/nvidia/driver"
    assert mounted_host_path(ds, main, "/var/run/cdi") == "/var/run/cdi"
    assert pod(ds)["hostPID"] is True and pod(ds)["hostIPC"] is True
    assert main["securityContext"] == {"privileged": True}


def test_mig_manager_default_layouts_are_its_fallback() -> None:
    """mig-manager v0.15 builds layouts from the hardware; the default ConfigMap is DEFAULT_CONFIG_FILE."""
    ds = ds_of({}, MIG)
    main = container(ds, MIG)
    assert env(main)["DEFAULT_CONFIG_FILE"] == "/mig-parted-config/config-default.yaml"
    assert "CONFIG_FILE" not in env(main)
    (vol,) = [v for v in pod(ds)["volumes"] if v["name"] == mounts(main)["/mig-parted-config"]["name"]]
    assert vol["configMap"] == {
        "name": "default-mig-parted-config",
        "items": [{"key": "config.yaml", "path": "config-default.yaml"}],
    }


def test_mig_manager_custom_config_replaces_the_default() -> None:
    plans = render({"migManager": {"config": {"name": "custom-mig-parted-config", "default": "all-balanced"}}})
    main = container(daemonset(plans, MIG), MIG)
    assert env(main)["CONFIG_FILE"] == "/mig-parted-config/config.yaml"
    assert "DEFAULT_CONFIG_FILE" not in env(main)
    (vol,) = [v for v in pod(daemonset(plans, MIG))["volumes"] if v["name"] == "mig-parted-config"]
    assert vol["configMap"] == {"name": "custom-mig-parted-config"}
    assert not [o for o in objects(plans) if o["kind"] == "ConfigMap" and "mig-parted" in o["metadata"]["name"]]


@pytest.mark.parametrize("name", ["", "default-mig-parted-config"])
def test_empty_or_default_mig_config_name_means_the_default(name: str) -> None:
    """The operator creates default-mig-parted-config for both (GetConfigMapName: not custom), but upstream's
    TransformMIGManager takes any name set as mig-manager's config (CONFIG_FILE, config.yaml mounted as is); only
    an empty one leaves it the fallback of layouts built from the hardware. We took the default name as empty."""
    plans = render({"migManager": {"config": {"name": name}}})
    find(plans, "ConfigMap", "default-mig-parted-config")
    ds = daemonset(plans, MIG)
    (vol,) = [v for v in pod(ds)["volumes"] if v["name"] == "mig-parted-config"]
    assert vol["configMap"]["name"] == "default-mig-parted-config"
    if name:
        assert env(container(ds, MIG))["CONFIG_FILE"] == "/mig-parted-config/config.yaml"
        assert "DEFAULT_CONFIG_FILE" not in env(container(ds, MIG)) and "items" not in vol["configMap"]
    else:
        assert "DEFAULT_CONFIG_FILE" in env(container(ds, MIG)) and "CONFIG_FILE" not in env(container(ds, MIG))


def test_mig_manager_cdi_env() -> None:
    main = env(container(ds_of({"cdi": {"enabled": True}}, MIG), MIG))
    assert main["CDI_ENABLED"] == "true"
    assert main["NVIDIA_CDI_HOOK_PATH"] == "/usr/local/nvidia/toolkit/nvidia-cdi-hook"
    assert "CDI_ENABLED" not in env(container(ds_of({"cdi": {"enabled": False}}, MIG), MIG))


def test_mig_manager_sources_driver_ready_and_stops_host_gpu_clients() -> None:
    main = container(ds_of({}, MIG), MIG)
    shell, flag, script, name = main["command"]
    assert (shell, flag, name) == ("/bin/sh", "-c", "nvidia-mig-manager")
    assert ". /run/nvidia/validations/driver-ready" in script and "set -o allexport" in script
    assert "WITH_SHUTDOWN_HOST_GPU_CLIENTS=$IS_HOST_DRIVER" in script
    assert script.rstrip().endswith('exec nvidia-mig-manager "$@"')


def test_mig_manager_rbac() -> None:
    plans = render()
    role = rules(find(plans, "Role", MIG))
    assert {("", "pods", v) for v in ("get", "list", "watch", "delete")} <= role
    assert {("", "configmaps", v) for v in ("create", "get", "list", "update", "patch")} <= role
    cluster = rules(find(plans, "ClusterRole", MIG))
    assert {("", "nodes", v) for v in ("get", "list", "watch", "update", "patch")} <= cluster
    assert ("", "pods", "list") in cluster


def test_default_mig_configmap_comes_from_the_data_file() -> None:
    config = find(render(), "ConfigMap", "default-mig-parted-config")["data"]["config.yaml"]
    assert config == mig_layouts.default_config_yaml()
    layouts = yaml.safe_load(config)["mig-configs"]
    assert {"all-disabled", "all-enabled", "all-balanced", "all-1g.18gb", "all-1g.23gb"} <= set(layouts)


@pytest.mark.parametrize(("name", "rendered"), [("", True), ("default-gpu-clients", True), ("my-clients", False)])
def test_default_gpu_clients_configmap(name: str, rendered: bool) -> None:
    plans = render({"migManager": {"gpuClientsConfig": {"name": name}}})
    present = [o for o in objects(plans) if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "default-gpu-clients"]
    assert bool(present) == rendered
    (vol,) = [v for v in pod(daemonset(plans, MIG))["volumes"] if v["name"] == "gpu-clients"]
    assert vol["configMap"]["name"] == (name or "default-gpu-clients")
    if rendered:
        clients = yaml.safe_load(present[0]["data"]["clients.yaml"])
        assert "nvidia-dcgm.service" in clients["systemd-services"]


def test_fixed_nodes_are_containerd() -> None:
    """The golden node set runs containerd, so its operands keep the runtime class."""
    assert {n.runtime for n in fixed_nodes()} == {"containerd"}


def test_upstream_defaults_of_fields_a_policy_leaves_out() -> None:
    """Unset mig.strategy: no MIG_STRATEGY (the plugin's own default); unset serviceMonitor.interval: Prometheus'
    global one; unset licensingConfig.nlsEnabled: only gridd.conf is mounted (upstream's ClusterPolicy)."""
    for name in (DP, GFD):
        e = env(container(ds_of({}, name), MAIN[name]))
        assert "MIG_STRATEGY" not in e and e["NVIDIA_MIG_MONITOR_DEVICES"] == "all", name
    e = env(container(ds_of({"mig": {"strategy": "none"}}, DP), MAIN[DP]))
    assert e["MIG_STRATEGY"] == "none" and "NVIDIA_MIG_MONITOR_DEVICES" not in e
    spec = parse_spec({"dcgmExporter": {"serviceMonitor": {"enabled": True, "scrapeTimeout": "30s"}}})
    monitor = next(o for o in objects(render_all(spec, api_groups=frozenset({MONITORING})))
                   if o["kind"] == "ServiceMonitor" and o["metadata"]["name"] == "nvidia-dcgm-exporter")
    assert "interval" not in monitor["spec"]["endpoints"][0]
    driver = next(d for d in daemonsets(render_all(parse_spec({"driver": {"licensingConfig": {"secretName": "l"}}})))
                  if d["metadata"]["name"].startswith("nvidia-driver-daemonset"))
    volume = next(v for v in driver["spec"]["template"]["spec"]["volumes"] if v["name"] == "licensing-config")
    assert [i["key"] for i in volume["secret"]["items"]] == ["gridd.conf"]


def test_the_dcgm_host_engine_gets_the_nri_annotation_and_the_validators_pull_secrets() -> None:
    """Its toolkit-validation init container runs the validator image; with CDI's NRI plugin (no runtime class)
    nv-hostengine gets the GPUs by annotation, as upstream's TransformDCGM sets both."""
    raw = {"dcgm": {"enabled": True}, "cdi": {"enabled": True, "nriPluginEnabled": True},
           "validator": {"imagePullSecrets": ["validator-secret"]}}  # fmt: skip
    ds = ds_of(raw, "nvidia-dcgm")
    template = ds["spec"]["template"]
    assert template["metadata"]["annotations"] == {
        "nvidia.cdi.k8s.io/container.nvidia-dcgm-ctr": "management.nvidia.com/gpu=all"
    }
    assert "runtimeClassName" not in template["spec"]
    assert {"name": "validator-secret"} in template["spec"]["imagePullSecrets"]
    plain = ds_of({"dcgm": {"enabled": True}}, "nvidia-dcgm")["spec"]["template"]
    assert "annotations" not in plain["metadata"] and "imagePullSecrets" not in plain["spec"]


def test_daemonsets_annotations_win_over_the_exporters_own() -> None:
    """Upstream writes daemonsets.annotations after the exporter's (applyCommonDaemonsetMetadata last)."""
    raw = {"daemonsets": {"annotations": {"example.com/owner": "platform"}},
           "dcgmExporter": {"annotations": {"example.com/owner": "exporter-team", "example.com/x": "1"}}}  # fmt: skip
    annotations = ds_of(raw, EXPORTER)["spec"]["template"]["metadata"]["annotations"]
    assert annotations["example.com/owner"] == "platform" and annotations["example.com/x"] == "1"
