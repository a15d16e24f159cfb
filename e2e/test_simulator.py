"""The node model without a cluster: upstream-shaped pod specs (e2e/upstream_specs.py) stepped through
``NodeModel``, one rule per test, and the simulator's work queue."""

from __future__ import annotations

import copy
import time
from typing import Any

import pytest

from e2e import upstream_specs as U
from e2e.cluster.nodes import make_node, parse_spec
from e2e.nodemodel import (
    NodeModel,
    World,
    host_path,
    new_host,
    offline_dry_run,
    parse_script,
    pod_status,
    ready,
    runtime_of,
    same_status,
)
from e2e.simulator import _NodeQueue, slim

NODE = "n1"
V = "/run/nvidia/validations"
FOUR = {f"{V}/driver-ready", f"{V}/toolkit-ready", f"{V}/cuda-ready", f"{V}/plugin-ready"}
CONTAINERD_MESSAGE = ('Failed to create pod sandbox: rpc error: code = Unknown desc = failed to get sandbox runtime: '
                      'no runtime for "nvidia" is configured')


class Node:
    """One node's model, its pods and the world they read; ``step`` writes the statuses back as the API would."""

    def __init__(self, runtime: str = "containerd", *, host_driver: str | None = None, delay: float = 0.0,
                 driver_managed: bool = True) -> None:
        self.model = NodeModel(new_host(NODE, runtime, 8, host_driver), driver_ready_delay=delay)
        self.pods: dict[str, dict[str, Any]] = {}
        owner = U.CLUSTER_POLICY_OWNER if driver_managed else None
        self.world = World(
            runtime_classes=dict(U.RUNTIME_CLASSES),
            config_maps={(U.NAMESPACE, name): dict(data) for name, data in U.CONFIG_MAPS.items()},
            daemonsets=[U.daemonset("nvidia-driver-daemonset", U.driver(), owner=owner),
                        U.daemonset("nvidia-operator-validator", U.validator(), owner=U.CLUSTER_POLICY_OWNER)],
            dry_run=offline_dry_run)
        self.events: list[tuple[str, str, str]] = []
        self.t = 1000.0
        self.result: Any = None
        self.labels: dict[str, str] | None = None  # the node's labels, once a test gives them (k8s-driver-manager)

    def add(self, name: str, template: dict[str, Any]) -> dict[str, Any]:
        self.pods[name] = U.pod(template, name, NODE, created=_iso(time.time()))
        return self.pods[name]

    def delete(self, name: str) -> None:
        self.pods.pop(name)

    def step(self, dt: float = 0.0) -> dict[str, dict[str, Any]]:
        self.t += dt
        self.result = self.model.step(list(self.pods.values()), self.world, self.t, labels=self.labels)
        if self.labels is not None:
            self.labels.update(self.result.labels)
        for e in self.result.events:
            self.events.append((e.pod["metadata"]["name"], e.reason, e.message))
        for pod in self.pods.values():
            run = self.result.statuses[pod["metadata"]["uid"]]
            pod["status"] = pod_status(pod, run, "10.64.0.9", "2030-01-01T00:00:00Z")
        return {n: p["status"] for n, p in self.pods.items()}

    def files(self) -> set[str]:
        return set(self.model.host.files)

    def container(self, pod: str, name: str) -> dict[str, Any]:
        st = self.pods[pod]["status"]
        return next(c for c in st["initContainerStatuses"] + st["containerStatuses"] if c["name"] == name)


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _state(cs: dict[str, Any]) -> tuple[str, str]:
    kind, detail = next(iter(cs["state"].items()))
    return kind, str(detail.get("reason") or "")


def _stack(node: Node, runtime: str = "containerd", *, cdi: bool = True, fixed: bool = True) -> None:
    for name, template in U.stack(runtime, cdi=cdi, fixed_toolkit=fixed).items():
        node.add(name, template)


def _without_mount(template: dict[str, Any], volume: str) -> dict[str, Any]:
    """The template without that volume and its mounts."""
    t = copy.deepcopy(template)
    for c in t["spec"].get("initContainers", []) + t["spec"]["containers"]:
        c["volumeMounts"] = [m for m in c.get("volumeMounts", []) if m["name"] != volume]
    t["spec"]["volumes"] = [v for v in t["spec"]["volumes"] if v["name"] != volume]
    return t


# --- scripts and paths ---

def test_script_reading_waits_writes_removes_and_sources() -> None:
    probe = parse_script(U.STARTUP_PROBE)
    assert probe.writes == [f"{V}/.driver-ctr-ready"]  # the .tmp file is moved away
    entry = parse_script(U.TOOLKIT_ENTRYPOINT)
    assert entry.waits == [f"{V}/driver-ready"]
    assert entry.sources == [(f"{V}/driver-ready", True)]
    assert ("nvidia-toolkit", []) in entry.programs()
    plain = parse_script(f"until [ -f {V}/driver-ready ]; do sleep 5; done\n. {V}/driver-ready\nexec nvidia-toolkit")
    assert plain.sources == [(f"{V}/driver-ready", False)]  # without allexport nothing reaches the installer
    assert parse_script("while [ ! -e /a ]; do sleep 1; done; test -f /b").waits == ["/a"]
    assert parse_script(f"rm -f {V}/*-ready").removes == [f"{V}/*-ready"]
    assert parse_script("echo x >/dev/null 2>&1; touch /x/y").writes == ["/x/y"]


def test_script_reading_keeps_what_echo_printf_and_here_documents_write() -> None:
    """The model wrote "ready" for every file a script wrote, so it could not check .driver-ctr-ready's content."""
    probe = parse_script(U.STARTUP_PROBE, {"GDS_ENABLED": "true"})  # a { ...; } group, then mv
    assert probe.contents == {f"{V}/.driver-ctr-ready": "GDRCOPY_ENABLED: false\nGDS_ENABLED: true\n"
                                                        "GPU_DIRECT_RDMA_ENABLED: false\n"}
    heredoc = parse_script("d=/x\ncat > \"$d/a.tmp\" <<READY\nK: ${K:-false}\nREADY\nmv \"$d/a.tmp\" \"$d/a\"\n"
                           "cat > /x/b <<'RAW'\n$K\nRAW\ntouch /x/c", {"K": "true"})
    assert heredoc.contents == {"/x/a": "K: true\n", "/x/b": "$K\n"}  # a quoted delimiter: not expanded
    assert heredoc.writes == ["/x/a", "/x/b", "/x/c"]  # (the here-document's lines are no commands)
    assert parse_script("echo ready > /r; printf '%s: %s\\n' A true >> /r; cat /etc/x > /u").contents == {
        "/r": "ready\nA: true\n"}  # what cat of a file writes is not known


def test_container_paths_resolve_through_host_path_volumes_only() -> None:
    pod = U.pod(U.toolkit(), "tk", NODE)
    ctr = pod["spec"]["containers"][0]
    assert host_path(pod, ctr, "/runtime/config-dir/config.toml") == ("/etc/containerd/config.toml", "")
    assert host_path(pod, ctr, "/runtime/config-dir.d/99-nvidia.toml")[0] == "/etc/containerd/conf.d/99-nvidia.toml"
    assert host_path(pod, ctr, "/var/run/cdi/nvidia.yaml")[0] == "/run/cdi/nvidia.yaml"  # /var/run is /run
    assert host_path(pod, ctr, "/etc/containerd/config.toml") == (None, "")  # not mounted: the container's own
    assert host_path(pod, ctr, "/bin/entrypoint.sh") == (None, "")  # a ConfigMap volume, not the host
    assert host_path(pod, ctr, "/host/etc/x", write=True)[1].endswith("read-only file system")


# --- the whole start-up ---

@pytest.mark.parametrize("runtime,cdi", [("containerd", True), ("containerd", False), ("cri-o", True),
                                         ("cri-o", False)])
def test_upstream_stack_reaches_every_validation_file(runtime: str, cdi: bool) -> None:
    node = Node(runtime)
    _stack(node, "crio" if runtime == "cri-o" else "containerd", cdi=cdi)
    statuses = node.step()
    assert all(ready(s) for s in statuses.values()), {n: s["phase"] for n, s in statuses.items()}
    assert FOUR <= node.files()
    assert f"{V}/.driver-ctr-ready" in node.files() and "/dev/char/nvidia-symlinks" in node.files()
    handlers = node.model.host.handlers
    if runtime == "cri-o" and not cdi:  # hook mode: no handler, no runtime class, the OCI hook injects GPUs
        assert set(handlers) == {"runc"}
        assert "/usr/share/containers/oci/hooks.d/oci-nvidia-hook.json" in node.files()
    else:
        assert {"nvidia", "nvidia-cdi", "nvidia-legacy"} <= set(handlers)
        assert handlers["nvidia"].driver_root == "/run/nvidia/driver"  # from driver-ready, under allexport
        assert handlers["nvidia"].default is (not cdi)
        drop_in = "/etc/crio/crio.conf.d/99-nvidia.conf" if runtime == "cri-o" else \
            "/etc/containerd/conf.d/99-nvidia.toml"
        assert drop_in in node.files()
    assert node.result.gpus == 8 and node.result.gfd and node.result.driver_version == "595.91.07"
    assert node.events == [] and node.model.diagnose() == []
    # driver-ready holds what the installer needs
    content = node.model.host.files[f"{V}/driver-ready"]
    assert "IS_HOST_DRIVER=false\n" in content and "NVIDIA_DRIVER_ROOT=/run/nvidia/driver\n" in content
    assert "NVIDIA_DEV_ROOT=/run/nvidia/driver\nDEV_ROOT_CTR_PATH=/driver-root\n" in content  # its root holds /dev
    # a second step changes nothing
    before = copy.deepcopy(node.pods)
    node.step()
    assert all(same_status(node.pods[n]["status"], before[n]["status"]) for n in node.pods)


def test_old_toolkit_deadlocks_and_the_model_names_the_cycle() -> None:
    node = Node()
    node.add("driver", U.driver())
    node.add("toolkit", U.toolkit(fixed=False))
    node.add("validator", U.validator())
    statuses = node.step(dt=100)
    assert ready(statuses["driver"]) and not ready(statuses["toolkit"]) and not ready(statuses["validator"])
    assert not FOUR & node.files() and set(node.model.host.handlers) == {"runc"}
    assert _state(node.container("toolkit", "driver-validation")) == ("running", "")
    findings = node.model.diagnose()
    assert [f.kind for f in findings] == ["deadlock"]
    text = findings[0].text
    assert f"pod toolkit (init container driver-validation) waits for {V}/driver-ready" in text
    assert "which only pod validator (init container driver-validation) writes" in text
    assert 'pod validator cannot start: runtime handler "nvidia" is not configured on the node' in text
    assert "which only pod toolkit (container nvidia-container-toolkit-ctr) adds" in text
    assert set(findings[0].pods) == {"toolkit", "validator"}

    # the fixed toolkit validates the driver itself and breaks the cycle
    fixed = Node()
    fixed.add("driver", U.driver())
    fixed.add("toolkit", U.toolkit(fixed=True))
    fixed.add("validator", U.validator())
    fixed.add("device-plugin", U.device_plugin())
    statuses = fixed.step(dt=100)
    assert all(ready(s) for s in statuses.values())
    assert FOUR <= fixed.files() and fixed.model.diagnose() == []


# --- the kubelet ---

def test_missing_runtime_handler_keeps_the_pod_pending_with_the_kubelets_event_once() -> None:
    node = Node()
    node.add("validator", U.validator())
    no_init = copy.deepcopy(U.device_plugin())
    no_init["spec"]["initContainers"] = []
    node.add("plugin", no_init)
    for _ in range(3):
        statuses = node.step(dt=5)
    st = statuses["validator"]
    assert st["phase"] == "Pending" and not st.get("podIP") and st["hostIP"] == "10.64.0.9"
    conditions = {c["type"]: c["status"] for c in st["conditions"]}
    assert conditions["PodReadyToStartContainers"] == "False" and conditions["Initialized"] == "False"
    # as the kubelet reports it: PodInitializing with init containers, ContainerCreating without
    assert {_state(c) for c in st["initContainerStatuses"] + st["containerStatuses"]} == {("waiting",
                                                                                          "PodInitializing")}
    assert _state(node.container("plugin", "nvidia-device-plugin")) == ("waiting", "ContainerCreating")
    assert sorted(node.events) == [("plugin", "FailedCreatePodSandBox", CONTAINERD_MESSAGE),
                                   ("validator", "FailedCreatePodSandBox", CONTAINERD_MESSAGE)]
    # a RuntimeClass whose handler is runc starts at once
    node.world.runtime_classes["nvidia"] = "runc"
    assert node.step()["plugin"]["phase"] == "Running"


def test_init_containers_run_in_order_and_a_file_wait_blocks_the_next() -> None:
    node = Node()
    node.model.host.handlers["nvidia"] = copy.copy(node.model.host.handlers["runc"])
    template = U.device_plugin()
    template["spec"]["initContainers"].append({  # it picks a config from the ConfigMap's files
        "name": "config-manager-init", "image": U.PLUGIN_IMAGE, "command": ["config-manager"],
        "env": [{"name": "CONFIG_FILE_SRCDIR", "value": "/available-configs"}],
        "volumeMounts": [{"name": "available-configs", "mountPath": "/available-configs"}]})
    template["spec"]["volumes"].append({"name": "available-configs", "configMap": {"name": "sharing"}})
    node.world.config_maps[(U.NAMESPACE, "sharing")] = {"ts2": "version: v1\n"}
    node.add("plugin", template)
    node.step()
    assert _state(node.container("plugin", "toolkit-validation")) == ("running", "")
    assert _state(node.container("plugin", "config-manager-init")) == ("waiting", "PodInitializing")
    assert node.pods["plugin"]["status"]["phase"] == "Pending"
    node.model.host.files[f"{V}/toolkit-ready"] = ""
    node.step()
    assert _state(node.container("plugin", "toolkit-validation")) == ("terminated", "Completed")
    assert _state(node.container("plugin", "config-manager-init")) == ("terminated", "Completed")
    assert node.pods["plugin"]["status"]["phase"] == "Running"


def test_a_wait_on_an_unmounted_path_never_ends() -> None:
    node = Node()
    node.model.host.files[f"{V}/toolkit-ready"] = ""
    node.model.host.handlers["nvidia"] = copy.copy(node.model.host.handlers["runc"])
    template = U.gpu_feature_discovery()
    template["spec"]["initContainers"][0]["volumeMounts"] = []
    node.add("gfd", template)
    node.step()
    assert _state(node.container("gfd", "toolkit-validation")) == ("running", "")
    assert "in the container only" in node.model.blockers()["gfd"].target


def test_missing_configmap_is_a_mount_failure() -> None:
    node = Node()
    del node.world.config_maps[(U.NAMESPACE, "nvidia-container-toolkit-entrypoint")]
    node.add("toolkit", U.toolkit())
    assert node.step()["toolkit"]["phase"] == "Pending"
    assert node.events == [("toolkit", "FailedMount", 'MountVolume.SetUp failed for volume '
                            '"nvidia-container-toolkit-entrypoint" : configmap "nvidia-container-toolkit-entrypoint" '
                            'not found')]


# --- nvidia-validator ---

def test_validator_needs_root_to_write_its_status_file() -> None:
    node = Node()
    node.add("driver", U.driver())
    node.add("toolkit", U.toolkit())
    node.add("validator", U.validator(root=False))
    statuses = node.step()
    assert ready(statuses["toolkit"]) and not ready(statuses["validator"])
    cs = node.container("validator", "driver-validation")
    assert _state(cs) == ("waiting", "CrashLoopBackOff")
    assert cs["lastState"]["terminated"]["message"] == (f"unable to create status file {V}/driver-ready: "
                                                        f"open {V}/driver-ready: permission denied")
    assert [f.kind for f in node.model.diagnose()] == ["failing"]


def test_toolkit_validation_needs_all_devices_visible() -> None:
    node = Node()
    _stack(node)
    node.pods["nvidia-operator-validator"] = U.pod(U.validator(visible_devices=False), "nvidia-operator-validator",
                                                   NODE)
    node.step()
    cs = node.container("nvidia-operator-validator", "toolkit-validation")
    assert _state(cs) == ("waiting", "CrashLoopBackOff")
    assert "toolkit is not ready" in cs["lastState"]["terminated"]["message"]
    assert f"{V}/toolkit-ready" not in node.files()


def test_cuda_validation_surfaces_the_api_servers_rejection_of_an_empty_image() -> None:
    node = Node()
    _stack(node)
    template = U.validator()
    cuda = template["spec"]["initContainers"][2]
    cuda["env"] = [e for e in cuda["env"] if e["name"] != "VALIDATOR_IMAGE"] + [{"name": "VALIDATOR_IMAGE",
                                                                                 "value": ""}]
    node.pods["nvidia-operator-validator"] = U.pod(template, "nvidia-operator-validator", NODE)
    node.step()
    message = node.container("nvidia-operator-validator", "cuda-validation")["lastState"]["terminated"]["message"]
    assert message.startswith("failed to create cuda validation pod , err Pod \"nvidia-cuda-validator-")
    assert "spec.initContainers[0].image: Required value" in message and "spec.containers[0].image" in message
    assert f"{V}/cuda-ready" not in node.files() and f"{V}/toolkit-ready" in node.files()


def test_cuda_workload_without_the_runtime_class_gets_no_gpus_when_nvidia_is_not_the_default() -> None:
    node = Node()
    _stack(node, cdi=True)  # CDI: nvidia is not the default runtime
    template = U.validator()
    cuda = template["spec"]["initContainers"][2]
    cuda["env"] = [e for e in cuda["env"] if e["name"] != "VALIDATOR_RUNTIME_CLASS"]
    node.pods["nvidia-operator-validator"] = U.pod(template, "nvidia-operator-validator", NODE)
    node.step()
    message = node.container("nvidia-operator-validator", "cuda-validation")["lastState"]["terminated"]["message"]
    assert "injects no GPUs" in message
    # with nvidia as the default runtime (CDI off) the same pod passes
    node = Node()
    _stack(node, cdi=False)
    node.pods["nvidia-operator-validator"] = U.pod(template, "nvidia-operator-validator", NODE)
    assert ready(node.step()["nvidia-operator-validator"])


def test_plugin_validation_waits_for_gpus_on_the_node_then_runs_its_workload() -> None:
    node = Node()
    node.add("driver", U.driver())
    node.add("toolkit", U.toolkit())
    node.add("validator", U.validator(plugin_workload=True))
    node.step()
    assert _state(node.container("validator", "plugin-validation")) == ("running", "")
    assert node.model.blockers()["validator"].kind == "gpu-resource"
    assert f"{V}/cuda-ready" in node.files() and f"{V}/plugin-ready" not in node.files()
    node.add("device-plugin", U.device_plugin())
    statuses = node.step()
    assert ready(statuses["validator"]) and node.result.gpus == 8
    assert f"{V}/plugin-ready" in node.files()


def test_metrics_component_and_bad_flags() -> None:
    node = Node()
    node.add("exporter", U.node_status_exporter())
    assert not ready(node.step()["exporter"])  # its /run/nvidia (type Directory) is not there yet
    assert node.events == [("exporter", "FailedMount", 'MountVolume.SetUp failed for volume "run-nvidia" : hostPath '
                                                       "type check failed: /run/nvidia is not a directory")]
    node.model.host.paths["/run/nvidia"] = "Directory"  # the driver or toolkit pod's DirectoryOrCreate makes it
    assert ready(node.step()["exporter"])
    bad = U.node_status_exporter()
    ctr = bad["spec"]["containers"][0]
    ctr["env"] = [e for e in ctr["env"] if e["name"] != "COMPONENT"]
    node.add("no-component", bad)
    flag = copy.deepcopy(bad)
    flag["spec"]["containers"][0]["args"] = ["--metrics-only"]
    node.add("flag", flag)
    node.step()
    assert node.container("no-component", "nvidia-node-status-exporter")["lastState"]["terminated"]["message"] == \
        "invalid -c <component-name> flag: must not be empty string"
    assert node.container("flag", "nvidia-node-status-exporter")["lastState"]["terminated"]["message"] == \
        "flag provided but not defined: -metrics-only"


def test_host_driver_passes_driver_validation_without_a_driver_pod() -> None:
    node = Node(host_driver="570.172.08", driver_managed=False)
    node.add("toolkit", U.toolkit())
    node.add("validator", U.validator())
    node.add("device-plugin", U.device_plugin())
    statuses = node.step()
    assert all(ready(s) for s in statuses.values())
    assert node.model.host.files[f"{V}/driver-ready"].startswith("IS_HOST_DRIVER=true\nNVIDIA_DRIVER_ROOT=/\n")
    assert node.model.host.handlers["nvidia"].driver_root == "/" and node.result.driver_version == "570.172.08"


def test_a_driver_managed_by_the_operator_is_awaited_through_driver_ctr_ready() -> None:
    node = Node(delay=10)
    node.add("driver", U.driver())
    node.add("toolkit", U.toolkit())
    node.step()
    need = node.model.blockers()["toolkit"]
    assert (need.kind, need.target) == ("file", f"{V}/.driver-ctr-ready")
    node.step(dt=11)
    assert ready(node.pods["toolkit"]["status"])


def test_driver_validation_needs_a_privileged_container() -> None:
    """The model read only runAsUser: an unprivileged driver-validation running as root wrote driver-ready. Upstream
    gives it `privileged: true`: nvidia-smi must open /dev/nvidia*, which an unprivileged container's device cgroup
    refuses (and it creates device nodes). With WITH_WAIT=true it retries."""
    node = Node()
    node.add("driver", U.driver())
    validator = U.validator()
    validator["spec"]["initContainers"][0]["securityContext"] = {"runAsUser": 0}
    node.add("validator", validator)
    node.add("toolkit", U.toolkit())
    node.step(dt=10)
    assert f"{V}/driver-ready" not in node.files()  # (it deleted the one the toolkit's wrote, as it starts)
    assert _state(node.container("validator", "driver-validation")) == ("running", "")
    assert not ready(node.pods["validator"]["status"])
    need = node.model.blockers()["validator"]
    assert need.kind == "privileged" and "Insufficient Permissions" in need.message
    assert "pod validator (init container driver-validation) is not privileged: " in \
        "; ".join(str(f) for f in node.model.diagnose() if f.kind == "failing")


def test_driver_ctr_ready_must_be_a_yaml_map_of_booleans() -> None:
    """The model never read .driver-ctr-ready. Upstream's validator (driver managed by the operator) unmarshals it
    into map[string]bool: a probe that writes `ready` fails driver validation, whatever WITH_WAIT says."""
    node = Node()
    node.world.config_maps[(U.NAMESPACE, "nvidia-driver-startup-probe")] = {
        "startup-probe.sh": f"#!/bin/sh\nnvidia-smi || exit 1\necho ready > {V}/.driver-ctr-ready\n"}
    node.add("driver", U.driver())
    node.add("toolkit", U.toolkit())
    node.step(dt=10)
    assert node.model.host.files[f"{V}/.driver-ctr-ready"] == "ready\n"
    assert f"{V}/driver-ready" not in node.files()
    cs = node.container("toolkit", "driver-validation")
    assert _state(cs) == ("waiting", "CrashLoopBackOff")  # (its WITH_WAIT is true)
    assert cs["lastState"]["terminated"]["message"] == (
        "error validating driver installation: yaml: unmarshal errors:\n"
        "  line 1: cannot unmarshal !!str `ready` into map[string]bool")


def test_a_feature_in_driver_ctr_ready_waits_for_its_kernel_module() -> None:
    """A feature .driver-ctr-ready enables (GDS_ENABLED: true) is validated too: its module must be loaded, which the
    driver pod's sidecar does once the driver's sources are under /run/nvidia/driver."""
    gds = U.driver()
    gds["spec"]["containers"][0]["env"].append({"name": "GDS_ENABLED", "value": "true"})
    node = Node()
    node.add("driver", gds)
    node.add("validator", U.validator())
    node.add("toolkit", U.toolkit())
    node.step(dt=10)
    assert "GDS_ENABLED: true\n" in node.model.host.files[f"{V}/.driver-ctr-ready"]
    assert f"{V}/driver-ready" not in node.files()
    need = node.model.blockers()["toolkit"]
    assert (need.kind, need.target) == ("module", "nvidia_fs")
    assert "pod toolkit (init container driver-validation) waits for the kernel module nvidia_fs; no pod on the " \
           "node provides it" in [f.text for f in node.model.diagnose()]
    # with upstream's nvidia-fs-ctr sidecar
    gds["spec"]["containers"].append({
        "name": "nvidia-fs-ctr", "image": "nvcr.io/nvidia/cloud-native/nvidia-fs:2.26.6", "command": ["bash", "-xc"],
        "args": ["until [ -d /run/nvidia/driver/usr/src ] && lsmod | grep nvidia; do sleep 10; done; "
                 "exec nvidia-gds-driver install"],
        "securityContext": {"privileged": True},
        "volumeMounts": [{"name": "run-nvidia", "mountPath": "/run/nvidia", "mountPropagation": "HostToContainer"}]})
    node = Node()
    _stack(node)
    node.pods["nvidia-driver-daemonset"] = U.pod(gds, "nvidia-driver-daemonset", NODE)
    statuses = node.step(dt=10)
    assert all(ready(s) for s in statuses.values()) and node.model.host.modules == {"nvidia_fs"}
    assert FOUR | {f"{V}/nvidia-fs-ready"} <= node.files()


# --- the toolkit installer ---

def _toolkit_env(template: dict[str, Any], **env: str | None) -> dict[str, Any]:
    ctr = template["spec"]["containers"][0]
    ctr["env"] = [e for e in ctr["env"] if e["name"] not in env]
    ctr["env"] += [{"name": k, "value": v} for k, v in env.items() if v is not None]
    return template


@pytest.mark.parametrize("change,why", [
    ({"RUNTIME_CONFIG": None, "CONTAINERD_CONFIG": None}, "/etc/containerd/config.toml is in the container only"),
    ({"RUNTIME": "docker"}, "RUNTIME=docker, but the node runs containerd"),
    ({"RUNTIME_DROP_IN_CONFIG_HOST_PATH": "/etc/containerd/99-nvidia.toml"},
     "config.toml imports /etc/containerd/99-nvidia.toml, but the drop-in lands at "
     "/etc/containerd/conf.d/99-nvidia.toml"),
])
def test_toolkit_adds_no_handler_unless_its_config_is_the_hosts(change: dict[str, str | None], why: str) -> None:
    node = Node()
    node.add("driver", U.driver())
    node.add("toolkit", _toolkit_env(U.toolkit(), **change))
    node.add("validator", U.validator())
    statuses = node.step()
    assert ready(statuses["toolkit"])  # the installer ran; the host did not change
    assert set(node.model.host.handlers) == {"runc"} and not ready(statuses["validator"])
    [finding] = node.model.diagnose()
    assert finding.kind == "stuck" and why in finding.text


def test_toolkit_on_the_wrong_runtime_or_without_the_socket() -> None:
    node = Node("cri-o", host_driver="570.172.08")
    node.add("toolkit", U.toolkit("containerd"))  # containerd's paths on a cri-o node
    assert ready(node.step()["toolkit"])
    assert set(node.model.host.handlers) == {"runc"}
    assert "RUNTIME=containerd, but the node runs cri-o" in node.model.toolkit_notes()[0]
    node = Node(host_driver="570.172.08")
    template = U.toolkit()
    mounts = template["spec"]["containers"][0]["volumeMounts"]
    template["spec"]["containers"][0]["volumeMounts"] = [m for m in mounts if m["name"] != "containerd-socket"]
    node.add("toolkit", template)
    node.step()
    cs = node.container("toolkit", "nvidia-container-toolkit-ctr")
    assert _state(cs) == ("waiting", "CrashLoopBackOff")
    assert "unable to restart containerd" in cs["lastState"]["terminated"]["message"]


def test_driver_root_reaches_the_installer_only_under_allexport() -> None:
    node = Node()
    _stack(node)
    node.world.config_maps[(U.NAMESPACE, "nvidia-container-toolkit-entrypoint")] = {
        "entrypoint.sh": U.TOOLKIT_ENTRYPOINT.replace("set -o allexport\n", "")}
    statuses = node.step()
    assert node.model.host.handlers["nvidia"].driver_root == "/"
    assert not ready(statuses["nvidia-operator-validator"])
    message = node.container("nvidia-operator-validator", "toolkit-validation")["lastState"]["terminated"]["message"]
    assert "finds no driver under /" in message


def test_deleting_the_toolkit_pod_removes_its_handlers() -> None:
    node = Node()
    _stack(node)
    node.step()
    assert "nvidia" in node.model.host.handlers
    node.delete("nvidia-container-toolkit-daemonset")
    node.step()
    assert set(node.model.host.handlers) == {"runc"}
    # running pods keep running; a new one with the runtime class cannot start
    assert ready(node.pods["nvidia-device-plugin-daemonset"]["status"])
    node.add("gfd-2", U.gpu_feature_discovery())
    assert node.step()["gfd-2"]["phase"] == "Pending"


def test_toolkit_cdi_spec_must_reach_the_hosts_cdi_dir() -> None:
    """In cdi mode nvidia-container-runtime turns NVIDIA_VISIBLE_DEVICES=all into management.nvidia.com/gpu=all
    (NVIDIA_CONTAINER_RUNTIME_MODES_CDI_DEFAULT_KIND), which only the installer's spec resolves: it writes it to
    CDI_OUTPUT_DIR (/var/run/cdi), and without the host's /var/run/cdi mounted there no GPU container is created.
    The model never looked at the spec."""
    node = Node()
    _stack(node)
    node.pods["nvidia-container-toolkit-daemonset"] = U.pod(_without_mount(U.toolkit(), "cdi-root"),
                                                            "nvidia-container-toolkit-daemonset", NODE)
    node.step()
    assert node.model.host.handlers["nvidia-cdi"].cdi_kind == "management.nvidia.com/gpu"
    cs = node.container("nvidia-operator-validator", "toolkit-validation")
    assert _state(cs) == ("waiting", "CrashLoopBackOff") and f"{V}/toolkit-ready" not in node.files()
    assert cs["lastState"]["terminated"]["message"].endswith(
        "failed to inject CDI devices: unresolvable CDI devices management.nvidia.com/gpu=all")
    assert node.result.gpus is None
    # with the mount the spec is on the host; a runtime that looks for another kind still finds none
    node = Node()
    _stack(node)
    template = _toolkit_env(U.toolkit(), NVIDIA_CONTAINER_RUNTIME_MODES_CDI_DEFAULT_KIND=None)
    node.pods["nvidia-container-toolkit-daemonset"] = U.pod(template, "nvidia-container-toolkit-daemonset", NODE)
    node.step()
    assert node.model.host.files["/run/cdi/management.nvidia.com-gpu.yaml"] == "management.nvidia.com/gpu"
    message = node.container("nvidia-operator-validator", "toolkit-validation")["lastState"]["terminated"]["message"]
    assert message.endswith("unresolvable CDI devices nvidia.com/gpu=all")


# --- the device plugin ---

def test_device_plugin_registers_only_through_the_hosts_kubelet_socket_dir() -> None:
    """The model advertised nvidia.com/gpu for any device plugin whose NVML loaded. The real one watches the
    kubelet socket's directory first (it exits when the directory is missing), registers by dialing the kubelet's
    socket, and serves its own in /var/lib/kubelet/device-plugins, where the kubelet looks for it."""
    node = Node()
    stack = U.stack()
    stack["nvidia-device-plugin-daemonset"] = _without_mount(stack["nvidia-device-plugin-daemonset"], "device-plugin")
    for name, template in stack.items():
        node.add(name, template)
    node.step()
    assert node.result.gpus is None
    cs = node.container("nvidia-device-plugin-daemonset", "nvidia-device-plugin")
    assert _state(cs) == ("waiting", "CrashLoopBackOff")
    assert cs["lastState"]["terminated"]["message"] == ("failed to create FS watcher for "
                                                        "/var/lib/kubelet/device-plugins/: no such file or directory")
    assert node.model.blockers()["nvidia-operator-validator"].kind == "gpu-resource"
    # another host directory there: it runs, and retries the registration
    node = Node()
    _stack(node)
    template = copy.deepcopy(U.device_plugin())
    next(v for v in template["spec"]["volumes"] if v["name"] == "device-plugin")["hostPath"]["path"] = "/var/lib/dp"
    node.pods["nvidia-device-plugin-daemonset"] = U.pod(template, "nvidia-device-plugin-daemonset", NODE)
    statuses = node.step()
    assert ready(statuses["nvidia-device-plugin-daemonset"]) and node.result.gpus is None
    assert node.model.blockers()["nvidia-device-plugin-daemonset"].message.startswith(
        "Could not register device plugin: context deadline exceeded")


def test_cdi_device_plugin_spec_must_reach_the_hosts_cdi_dir() -> None:
    """With a cdi-* DEVICE_LIST_STRATEGY the plugin writes its spec to /var/run/cdi in its container and answers
    Allocate with CDI names only (REFERENCE §11.7: mount the host's /var/run/cdi). The model checked only the
    workload's runtime class and driver, so the plugin validator's workload passed without the spec on the host."""
    node = Node()
    stack = U.stack(cdi=True)
    stack["nvidia-operator-validator"] = U.validator(plugin_workload=True)
    stack["nvidia-device-plugin-daemonset"] = _without_mount(stack["nvidia-device-plugin-daemonset"], "cdi-root")
    for name, template in stack.items():
        node.add(name, template)
    statuses = node.step(dt=10)
    assert ready(statuses["nvidia-device-plugin-daemonset"]) and node.result.gpus == 8
    assert f"{V}/plugin-ready" not in node.files() and not ready(statuses["nvidia-operator-validator"])
    message = node.container("nvidia-operator-validator", "plugin-validation")["lastState"]["terminated"]["message"]
    assert "unresolvable CDI devices k8s.device-plugin.nvidia.com/gpu=" in message
    assert any("waits for /run/cdi/k8s.device-plugin.nvidia.com-gpu.json; no pod on the node provides it" in f.text
               for f in node.model.diagnose())
    # mounted, the spec reaches the host and the workload gets its devices
    node = Node()
    for name, template in {**U.stack(cdi=True), "nvidia-operator-validator": U.validator(plugin_workload=True)}.items():
        node.add(name, template)
    assert all(ready(s) for s in node.step().values())
    assert node.model.host.files["/run/cdi/k8s.device-plugin.nvidia.com-gpu.json"] == "k8s.device-plugin.nvidia.com/gpu"


# --- the driver: delay, crash loop, removal ---

def test_driver_delay_and_crash_loop_follow_the_probe_not_the_name() -> None:
    node = Node(delay=3)
    template = U.driver()
    template["spec"]["containers"][0]["name"] = "anything"
    node.add("driver", template)
    node.add("toolkit", U.toolkit())
    node.step()
    cs = node.container("driver", "anything")
    assert _state(cs) == ("running", "") and cs["ready"] is False and cs["started"] is False
    assert node.result.again == pytest.approx(3, abs=1.1)
    assert f"{V}/.driver-ctr-ready" not in node.files() and not ready(node.pods["toolkit"]["status"])
    node.step(dt=4)
    assert ready(node.pods["driver"]["status"]) and ready(node.pods["toolkit"]["status"])
    assert node.model.host.files["/run/nvidia/driver/usr/bin/nvidia-smi"] == "595.91.07"

    node.model.crash_loop = True
    node.step(dt=0.5)
    cs = node.container("driver", "anything")
    assert _state(cs) == ("waiting", "CrashLoopBackOff") and cs["restartCount"] == 1
    assert node.result.again == pytest.approx(2.0, abs=0.01)
    node.step(dt=4.5)
    assert node.container("driver", "anything")["restartCount"] == 3
    # the driver root went with the container; the running toolkit pod's init containers do not run again
    assert "/run/nvidia/driver/usr/bin/nvidia-smi" not in node.files()
    assert ready(node.pods["toolkit"]["status"])
    node.model.crash_loop = False
    node.step(dt=0.1)
    cs = node.container("driver", "anything")
    assert cs["ready"] is True and cs["restartCount"] == 3 and ready(node.pods["toolkit"]["status"])


def test_an_unprivileged_driver_container_loads_no_driver() -> None:
    """The model loaded the driver from any nvidia-driver container; upstream's is privileged, as loading kernel
    modules needs."""
    node = Node()
    driver = U.driver()
    driver["spec"]["containers"][0]["securityContext"] = {}
    node.add("driver", driver)
    node.step(dt=100)
    cs = node.container("driver", "nvidia-driver-ctr")
    assert _state(cs) == ("waiting", "CrashLoopBackOff")
    assert cs["lastState"]["terminated"]["message"] == ("modprobe: ERROR: could not insert 'nvidia': Operation not "
                                                        "permitted")
    assert node.model.host.driver_at("/run/nvidia/driver") is None and not node.model.host.driver_loaded
    assert f"{V}/.driver-ctr-ready" not in node.files()


def test_removing_the_driver_pod_leaves_the_running_validator_as_it_is() -> None:
    """A running pod's init containers run once (the kubelet re-runs them only for a new sandbox): with its
    driver pod gone, the validator stays Running and Ready, and driver-ready stays; the model sent it back to
    driver-validation, Pending, which no node does (a new driver pod's manager replaces it instead)."""
    node = Node(delay=3)
    _stack(node)
    node.step()
    node.step(dt=4)
    assert ready(node.pods["nvidia-operator-validator"]["status"])
    node.delete("nvidia-driver-daemonset")  # its preStop removes .driver-ctr-ready, the driver root goes
    node.step()
    assert f"{V}/.driver-ctr-ready" not in node.files() and f"{V}/driver-ready" in node.files()
    st = node.pods["nvidia-operator-validator"]["status"]
    assert st["phase"] == "Running" and ready(st)
    assert _state(node.container("nvidia-operator-validator", "driver-validation")) == ("terminated", "Completed")
    assert ready(node.pods["nvidia-device-plugin-daemonset"]["status"])  # running pods are not touched
    node.add("driver-2", U.driver("600.10.01"))
    node.step(dt=1)
    node.step(dt=3)
    assert ready(node.pods["nvidia-operator-validator"]["status"]) and FOUR <= node.files()
    assert node.result.driver_version == "600.10.01"


def test_a_new_driver_pods_manager_pauses_the_operands_waits_for_them_to_go_and_sets_them_back() -> None:
    deploy = "nvidia.com/gpu.deploy."
    node = Node()
    node.labels = {deploy + op: "true" for op in ("driver", "operator-validator", "container-toolkit", "device-plugin",
                                                  "gpu-feature-discovery", "dcgm")}  # fmt: skip
    node.labels[deploy + "dcgm-exporter"] = "false"  # a user's opt-out
    node.labels[deploy + "nvsm"] = "custom"
    _stack(node)
    node.step()  # a fresh node: no driver loaded, nothing to evict; the manager writes every label it knows back
    assert all(ready(p["status"]) for p in node.pods.values())
    assert node.labels[deploy + "operator-validator"] == "true" and node.labels[deploy + "dcgm-exporter"] == "false"
    assert node.labels[deploy + "sandbox-validator"] == "" and node.labels[deploy + "dra-driver"] == ""
    assert deploy + "mig-manager" not in node.labels  # only when set
    assert node.model.host.driver_loaded
    # A driver upgrade: the old driver pod goes, the new one's init container finds the driver loaded.
    node.delete("nvidia-driver-daemonset")
    node.add("driver-2", U.driver("600.10.01"))
    node.step()
    paused = {op: node.labels[deploy + op] for op in ("operator-validator", "container-toolkit", "device-plugin",
                                                      "gpu-feature-discovery", "dcgm", "dcgm-exporter", "nvsm")}
    assert paused == {**dict.fromkeys(("operator-validator", "container-toolkit", "device-plugin",
                                       "gpu-feature-discovery", "dcgm"), "paused-for-driver-upgrade"),
                      "dcgm-exporter": "false", "nvsm": "custom_paused-for-driver-upgrade"}  # fmt: skip
    assert _state(node.container("driver-2", "k8s-driver-manager")) == ("running", "")
    assert not ready(node.pods["driver-2"]["status"]) and node.model.host.driver_loaded
    operands = ["nvidia-container-toolkit-daemonset", "nvidia-operator-validator", "nvidia-device-plugin-daemonset",
                "gpu-feature-discovery"]
    blocked = node.model.blockers()["driver-2"]
    assert blocked.kind == "evict" and blocked.target == ", ".join(sorted(operands)), blocked
    # The DaemonSet controller deletes the pods whose node no longer matches; one left keeps the manager waiting.
    for name in operands[:-1]:
        node.delete(name)
    node.step()
    assert node.model.blockers()["driver-2"].target == "gpu-feature-discovery"
    node.delete(operands[-1])
    node.step()
    assert node.labels[deploy + "operator-validator"] == "true" and node.labels[deploy + "nvsm"] == "custom"
    assert node.labels[deploy + "dcgm-exporter"] == "false"
    assert _state(node.container("driver-2", "k8s-driver-manager"))[0] == "terminated"
    assert ready(node.pods["driver-2"]["status"]) and node.model.host.driver_loaded  # the new driver loaded
    for name, template in U.stack().items():  # the DaemonSet controller makes new pods for them
        if name in operands:
            node.add(name + "-2", template)
    node.step()
    assert all(ready(p["status"]) for p in node.pods.values()) and node.result.driver_version == "600.10.01"
    assert node.model.diagnose() == []


def test_validator_pod_removal_runs_its_prestop() -> None:
    node = Node()
    _stack(node)
    node.step()
    node.delete("nvidia-operator-validator")
    node.step()
    assert not FOUR & node.files() and f"{V}/.driver-ctr-ready" in node.files()


# --- statuses ---

def test_status_keeps_times_ips_and_container_details() -> None:
    node = Node()
    pod = node.add("driver", U.driver())
    node.step()
    st = pod["status"]
    cs = node.container("driver", "nvidia-driver-ctr")
    assert cs["image"] == "nvcr.io/nvidia/driver:595.91.07-ubuntu22.04"
    assert cs["imageID"].startswith("nvcr.io/nvidia/driver@sha256:") and cs["containerID"].startswith("containerd://")
    assert st["podIP"] and st["startTime"] and "metadata" not in st
    again = pod_status(pod, node.result.statuses[pod["metadata"]["uid"]], "10.64.0.9", "2031-01-01T00:00:00Z")
    assert again["podIP"] == st["podIP"] and again["conditions"] == st["conditions"]
    assert again["containerStatuses"] == st["containerStatuses"]


def test_node_runtime_and_spec_flags() -> None:
    assert runtime_of(make_node("a", "h100x8", runtime="crio")) == "cri-o"
    assert runtime_of(make_node("a", "h100x8")) == "containerd"
    specs = parse_spec("h100x8:2:ubuntu22.04:crio,l4x1:1:ubuntu24.04:containerd:hostdriver=570.1.2,cpu")
    assert [(s.runtime, s.host_driver) for s in specs] == [("crio", None), ("containerd", "570.1.2"),
                                                           ("containerd", None)]
    assert parse_spec("l4x1:1::hostdriver")[0].host_driver == "580.95.05"
    with pytest.raises(ValueError, match="neither a runtime"):
        parse_spec("l4x1:1:ubuntu22.04:docker")


def test_queue_keeps_the_earliest_delayed_add() -> None:
    q = _NodeQueue()
    q.add("a", delay=30)
    q.add("a", delay=0.05)
    q.add("a", delay=60)
    assert set(q.pending()) == {"a"} and q.pending()["a"] < 1
    t = time.monotonic()
    assert q.get() == "a"
    assert 0.03 < time.monotonic() - t < 5
    q.done("a")
    assert q.pending() == {} and q.idle()
    q.close()
    assert q.get() is None


def test_queue_serves_background_adds_after_the_others() -> None:
    q = _NodeQueue()
    for name in ("a", "b", "c"):
        q.add(name, background=True)  # the resync's looks
    assert not q.idle()
    q.add("d")
    q.add("b")  # an event for a node queued in the background: it goes ahead, once
    q.add("c", delay=0.01)  # a timed step comes due: ahead too
    time.sleep(0.05)
    got = []
    while not q.idle():
        one = q.get()
        assert one is not None
        got.append(one)
        q.done(one)
    assert got == ["d", "b", "c", "a"]
    q.add("a")
    q.add("a", background=True)  # already queued: stays ahead, and once
    assert q.get() == "a"
    q.done("a")
    assert q.idle()
    # A resync's add for a node being looked at waits behind the others once that look is done.
    q.add("a")
    assert q.get() == "a"
    q.add("e", background=True)
    q.add("a", background=True)
    q.done("a")
    assert [q.get(), q.get()] == ["e", "a"]
    q.done("e")
    q.add("g", background=True)
    q.add("a", background=True)  # an event's add during the same look still goes ahead, once
    q.add("a")
    q.done("a")
    assert [q.get(), q.get()] == ["a", "g"]
    q.done("a")
    q.done("g")
    assert q.idle()
    q.close()


def test_pods_of_one_revision_share_their_spec_parts_and_lose_their_managed_fields() -> None:
    def pod(owner: str | None, revision: str, image: str = "driver:1") -> dict[str, Any]:
        meta: dict[str, Any] = {"name": f"p-{owner}-{revision}-{image}", "managedFields": [{"manager": "kube"}],
                                "labels": {"controller-revision-hash": revision}}
        if owner:
            meta["ownerReferences"] = [{"kind": "DaemonSet", "uid": owner, "controller": True}]
        return {"metadata": meta, "spec": {"nodeName": "n", "containers": [{"name": "c", "image": image}],
                                           "volumes": [{"name": "v", "hostPath": {"path": "/run"}}]}}

    parts: dict[tuple[str, str, str], Any] = {}
    a, b = pod("ds", "r1"), pod("ds", "r1")
    changed, other, loose = pod("ds", "r1", "driver:2"), pod("ds", "r2"), pod(None, "r1")
    for p in (a, b, changed, other, loose):
        slim(p, parts)
        assert "managedFields" not in p["metadata"]
    assert b["spec"]["containers"] is a["spec"]["containers"] and b["spec"]["volumes"] is a["spec"]["volumes"]
    # An image changed in place, another revision, a pod of no DaemonSet: their own parts, as they came.
    assert changed["spec"]["containers"] == [{"name": "c", "image": "driver:2"}]
    assert changed["spec"]["volumes"] is a["spec"]["volumes"]
    assert other["spec"]["containers"] is not a["spec"]["containers"]
    assert loose["spec"]["containers"] is not a["spec"]["containers"]
    assert a["spec"]["containers"] == [{"name": "c", "image": "driver:1"}] and b["spec"]["nodeName"] == "n"


def test_offline_check_of_rendered_manifests(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    from e2e.nodemodel import main

    def write(fixed: bool) -> str:
        docs: list[dict[str, Any]] = [U.config_map(name) for name in U.CONFIG_MAPS]
        docs += [{"apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass", "metadata": {"name": n}, "handler": h}
                 for n, h in U.RUNTIME_CLASSES.items()]
        docs += [U.daemonset(n, t, node_selector={"nvidia.com/gpu.present": "true"})
                 for n, t in U.stack(fixed_toolkit=fixed).items()]
        docs.append({"kind": "Node", "metadata": {"name": NODE, "labels": {"nvidia.com/gpu.present": "true"}}})
        path = tmp_path / f"rendered-{fixed}.yaml"
        path.write_text(yaml.safe_dump_all(docs))
        return str(path)

    nodes = tmp_path / "nodes.yaml"
    node = make_node(NODE, "h100x8")
    nodes.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": [node]}))
    assert main([write(True), "--nodes", str(nodes)]) == 0
    out = capsys.readouterr().out
    assert "NOT READY" not in out and f"{V}/plugin-ready" in out
    assert main([write(False), "--nodes", str(nodes)]) == 1
    out = capsys.readouterr().out
    assert "deadlock: pod nvidia-container-toolkit-daemonset-n1 (init container driver-validation) waits for" in out
