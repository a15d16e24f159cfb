"""End-to-end tests of the test infrastructure itself: local cluster, fake nodes, kwok stages, node simulator."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes import client

from e2e import upstream_specs as U
from e2e.cluster.localcluster import (
    ADMIN_USER,
    COMPONENTS,
    OPERATOR_USER,
    SIMULATOR_USER,
    LocalCluster,
    free_ports,
    pid_alive,
    temporary_cluster,
)
from e2e.cluster.nodes import (
    GFD_DRIVER_KEYS,
    GFD_LABEL_KEYS,
    PCI_LABEL,
    PROFILE_LABEL,
    PROFILES,
    create_nodes,
    delete_nodes,
    gfd_labels,
    make_node,
)
from e2e.kube import (
    STRATEGIC_PATCH,
    Kube,
    condition,
    create_namespace,
    node_ready,
    pod_running_ready,
    wait_for,
    wait_pod_running_ready,
)
from e2e.operator_process import delete_policies, free_port, install_crds_and_rbac, policy_from_sample
from e2e.simulator import NodeSimulator, image_id
from e2e.upstream_specs import DRIVER_APP, TOOLKIT_APP, VALIDATOR_APP
from gpu_operator.kube import Kube as OperatorKube
from gpu_operator.lifecycle import CLEANUP_FINALIZER

POOL_LABEL = "e2e.test/pool"
POOL = "infra"
OPERATOR_NS = "gpu-operator"
GPU = "nvidia.com/gpu"

# name -> (profile, os, container runtime)
NODES = {
    "infra-h100-0": ("h100x8", "ubuntu22.04", "containerd"),
    "infra-h100-1": ("h100x8", "ubuntu24.04", "containerd"),
    "infra-a100-0": ("a100x4", "rhel9.4", "containerd"),
    "infra-l4-0": ("l4x1", "ubuntu22.04", "containerd"),
    "infra-l4-crio": ("l4x1", "ubuntu24.04", "crio"),
    "infra-cpu-0": ("cpu", "ubuntu22.04", "containerd"),
}
GPU_NODES = {n for n, (profile, _, _) in NODES.items() if profile != "cpu"}


@pytest.fixture(scope="module")
def fake_nodes(kube: Kube) -> Iterator[dict[str, dict[str, Any]]]:
    """The module's fake nodes (mixed profiles and OSes), Ready and untainted."""
    nodes = []
    for name, (profile, os, runtime) in NODES.items():
        node = make_node(name, profile, os=os, runtime=runtime)
        node["metadata"]["labels"][POOL_LABEL] = POOL
        node["metadata"]["labels"]["e2e.test/runtime"] = runtime
        nodes.append(node)
    create_nodes(kube, nodes)

    def all_ready_untainted() -> dict[str, dict[str, Any]]:
        got = {n["metadata"]["name"]: n for n in kube.items("/api/v1/nodes", labelSelector=f"{POOL_LABEL}={POOL}")}
        ok = set(got) == set(NODES) and all(node_ready(n) and not n["spec"].get("taints") for n in got.values())
        return got if ok else {}

    yield wait_for(all_ready_untainted, 60, message="fake nodes Ready without taints")
    delete_nodes(kube, NODES)


def _daemonset(name: str, namespace: str, node_selector: dict[str, str], image: str) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"nodeSelector": node_selector, "containers": [{"name": "main", "image": image}]},
            },
        },
    }


def _pod(name: str, namespace: str, gpus: int | None = None, node_name: str | None = None) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "main", "image": "registry.k8s.io/pause:3.10"}
    if gpus is not None:
        container["resources"] = {"limits": {GPU: str(gpus)}}
    spec: dict[str, Any] = {"containers": [container], "nodeSelector": {POOL_LABEL: POOL}}
    if node_name:
        spec["nodeName"] = node_name
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def _pods(kube: Kube, namespace: str, selector: str) -> list[dict[str, Any]]:
    return kube.items(f"/api/v1/namespaces/{namespace}/pods", labelSelector=selector)


def _node(kube: Kube, name: str) -> dict[str, Any]:
    return dict(kube.get(f"/api/v1/nodes/{name}"))


def _gfd_part(node: dict[str, Any]) -> dict[str, str]:
    return {k: v for k, v in (node["metadata"].get("labels") or {}).items() if k in GFD_LABEL_KEYS}


def _gpu_resource(node: dict[str, Any]) -> tuple[str | None, str | None]:
    status = node.get("status") or {}
    return (status.get("capacity") or {}).get(GPU), (status.get("allocatable") or {}).get(GPU)


@pytest.mark.local_cluster_only("starts a control plane of its own")
def test_temporary_cluster_goes_down_however_its_block_ends() -> None:
    with pytest.raises(RuntimeError, match="the bench failed"):
        with temporary_cluster("gpu-operator-test-") as (cluster, tmp):
            assert Kube.from_kubeconfig(cluster.kubeconfig).get("/version")["major"] == "1"
            pids = cluster.pids
            assert set(COMPONENTS) <= set(pids) and all(cluster.running().values())
            raise RuntimeError("the bench failed")
    assert not [name for name, pid in pids.items() if pid_alive(pid)]
    assert not tmp.exists()


@pytest.mark.local_cluster_only("checks the version of the suite's own control plane")
def test_version(kube: Kube) -> None:
    assert kube.get("/version")["gitVersion"] == "v1.37.2"


def test_fake_nodes_become_ready(fake_nodes: dict[str, dict[str, Any]]) -> None:
    for name, (profile, os, runtime) in NODES.items():
        node = fake_nodes[name]
        labels, status = node["metadata"]["labels"], node["status"]
        assert labels[PROFILE_LABEL] == profile
        assert labels["kubernetes.io/hostname"] == name
        assert (labels.get(PCI_LABEL) == "true") == (profile != "cpu")
        assert "nvidia.com/mig.capable" not in labels  # GFD publishes it, not node creation
        info = status["nodeInfo"]
        assert info["containerRuntimeVersion"] == {"containerd": "containerd://1.7.27",
                                                    "crio": "cri-o://1.31.3"}[runtime]
        assert info["kubeletVersion"] == "v1.37.2"
        assert info["kernelVersion"] == labels["feature.node.kubernetes.io/kernel-version.full"]
        assert labels["feature.node.kubernetes.io/system-os_release.VERSION_ID"] == os.removeprefix(
            "ubuntu").removeprefix("rhel")
        # capacity given at creation survives, and kwok added no GPUs
        assert status["capacity"]["cpu"] == ("16" if profile == "cpu" else "96")
        assert status["allocatable"]["pods"] == "110"
        assert GPU not in status["capacity"]
        assert condition(node, "Ready") == "True"


def test_daemonset_runs_one_ready_pod_per_matching_node(
    kube: Kube, namespace: str, fake_nodes: dict[str, dict[str, Any]]
) -> None:
    ds = _daemonset("probe", namespace, {PCI_LABEL: "true", POOL_LABEL: POOL}, "registry.k8s.io/pause:3.10")
    kube.create(f"/apis/apps/v1/namespaces/{namespace}/daemonsets", ds)

    def ready_pods() -> list[dict[str, Any]]:
        pods = _pods(kube, namespace, "app=probe")
        return pods if len(pods) == len(GPU_NODES) and all(pod_running_ready(p) for p in pods) else []

    pods = wait_for(ready_pods, 60, message="one Running+Ready probe pod per GPU node")
    assert {p["spec"]["nodeName"] for p in pods} == GPU_NODES
    def ds_status() -> dict[str, Any] | None:
        status: dict[str, Any] = kube.get(f"/apis/apps/v1/namespaces/{namespace}/daemonsets/probe")["status"]
        return status if status.get("numberReady") == len(GPU_NODES) else None

    status = wait_for(ds_status, 30, message="DaemonSet status numberReady")
    assert status["desiredNumberScheduled"] == len(GPU_NODES)


def test_deleted_pod_disappears(kube: Kube, namespace: str, fake_nodes: dict[str, dict[str, Any]]) -> None:
    path = f"/api/v1/namespaces/{namespace}/pods"
    kube.create(path, _pod("doomed", namespace, node_name="infra-cpu-0"))
    pod = wait_pod_running_ready(kube, namespace, "doomed")
    assert pod["status"].get("podIP")
    kube.delete(f"{path}/doomed")  # default grace period: kwok's pod-delete stage finishes it off
    wait_for(lambda: kube.get_or_none(f"{path}/doomed") is None, 30, message="pod gone after delete")


def test_audit_log_records_writes_with_their_identity(
    cluster: LocalCluster, kube: Kube, operator_kube: Kube, namespace: str
) -> None:
    cms = f"/api/v1/namespaces/{namespace}/configmaps"
    kube.create(cms, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "audited"},
                      "data": {"a": "1"}})
    kube.patch(f"{cms}/audited", {"data": {"b": "2"}})
    current = kube.get(f"{cms}/audited")
    current["data"]["c"] = "3"
    kube.request("PUT", f"{cms}/audited", current)
    kube.delete(f"{cms}/audited")

    # the operator identity writes after a Role lets it
    rbac = f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}"
    kube.create(f"{rbac}/roles", {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "cm-writer"},
        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create"]}]})
    kube.create(f"{rbac}/rolebindings", {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": {"name": "cm-writer"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "cm-writer"},
        "subjects": [{"kind": "ServiceAccount", "name": "gpu-operator", "namespace": "gpu-operator"}]})
    wait_for(lambda: operator_kube.create(cms, {"apiVersion": "v1", "kind": "ConfigMap",
                                                "metadata": {"name": "by-operator"}}),
             30, message="operator may create configmaps")

    def writes() -> set[tuple[str, str]]:
        return {
            (e["verb"], e["user"]["username"])
            for e in cluster.audit_events()
            if (e.get("objectRef") or {}).get("namespace") == namespace
            and (e.get("objectRef") or {}).get("resource") == "configmaps"
            and (e.get("objectRef") or {}).get("name") != "kube-root-ca.crt"
            and e["verb"] in ("create", "patch", "update", "delete")
            and 200 <= (e.get("responseStatus") or {}).get("code", 0) < 300
        }

    want = {("create", ADMIN_USER), ("patch", ADMIN_USER), ("update", ADMIN_USER), ("delete", ADMIN_USER),
            ("create", OPERATOR_USER)}
    wait_for(lambda: want <= writes(), 15, message=f"audit events {sorted(want)}")
    assert writes() == want


def test_operator_identity_has_no_permissions_until_rbac_grants_them(kube: Kube, operator_kube: Kube) -> None:
    with pytest.raises(client.ApiException) as denied:
        operator_kube.get("/api/v1/nodes")
    assert denied.value.status == 403

    rbac = "/apis/rbac.authorization.k8s.io/v1"
    kube.create(f"{rbac}/clusterroles", {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "e2e-node-reader"},
        "rules": [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]}]})
    kube.create(f"{rbac}/clusterrolebindings", {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": "e2e-node-reader"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "e2e-node-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "gpu-operator", "namespace": "gpu-operator"}]})
    try:
        wait_for(lambda: operator_kube.get("/api/v1/nodes")["kind"] == "NodeList", 30,
                 message="operator may list nodes")
        with pytest.raises(client.ApiException) as still_denied:
            operator_kube.get("/api/v1/namespaces/kube-system/secrets")
        assert still_denied.value.status == 403
    finally:
        kube.delete(f"{rbac}/clusterrolebindings/e2e-node-reader")
        kube.delete(f"{rbac}/clusterroles/e2e-node-reader")

    def denied_again() -> bool:
        try:
            operator_kube.get("/api/v1/nodes")
        except client.ApiException as e:
            return e.status == 403
        return False

    wait_for(denied_again, 30, message="permission gone with the binding")


# --- the node simulator: upstream-shaped operand pods through the modelled start-up ---

DS_PATH = f"/apis/apps/v1/namespaces/{OPERATOR_NS}/daemonsets"
PODS_PATH = f"/api/v1/namespaces/{OPERATOR_NS}/pods"
REVISION_LABEL = "controller-revision-hash"
RUNTIME_LABEL = "e2e.test/runtime"
V = "/run/nvidia/validations"
FOUR = {f"{V}/driver-ready", f"{V}/toolkit-ready", f"{V}/cuda-ready", f"{V}/plugin-ready"}
GFD_APP = "gpu-feature-discovery"
DRIVER_CONTAINER = "nvidia-driver-ctr"
CONTAINERD_MESSAGE = ('Failed to create pod sandbox: rpc error: code = Unknown desc = failed to get sandbox runtime: '
                      'no runtime for "nvidia" is configured')


@pytest.fixture(scope="module")
def operand_support(kube: Kube, fake_nodes: dict[str, dict[str, Any]]) -> Iterator[None]:
    """What the upstream-shaped operand pods need besides their DaemonSets: the ConfigMaps they mount, their
    ServiceAccounts (the validator's workload pods use its one too) and the RuntimeClasses."""
    create_namespace(kube, OPERATOR_NS)
    cms = f"/api/v1/namespaces/{OPERATOR_NS}/configmaps"
    for name in U.CONFIG_MAPS:
        kube.delete(f"{cms}/{name}")
        kube.create(cms, U.config_map(name))
    sas = f"/api/v1/namespaces/{OPERATOR_NS}/serviceaccounts"
    made_sas = [name for name in U.SERVICE_ACCOUNTS if kube.get_or_none(f"{sas}/{name}") is None]
    for name in made_sas:
        kube.create(sas, {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}})
    rcs = "/apis/node.k8s.io/v1/runtimeclasses"
    made = [name for name in U.RUNTIME_CLASSES if kube.get_or_none(f"{rcs}/{name}") is None]
    for name in made:
        kube.create(rcs, {"apiVersion": "node.k8s.io/v1", "kind": "RuntimeClass", "metadata": {"name": name},
                          "handler": U.RUNTIME_CLASSES[name]})
    yield
    for name in U.CONFIG_MAPS:
        kube.delete(f"{cms}/{name}")
    for name in made_sas:
        kube.delete(f"{sas}/{name}")
    for name in made:
        kube.delete(f"{rcs}/{name}")


@contextlib.contextmanager
def deployed(kube: Kube, templates: dict[str, dict[str, Any]], node_selector: dict[str, str]) -> Iterator[None]:
    """The templates' DaemonSets on the selected nodes; afterwards they and their pods are gone."""
    try:
        for name, template in templates.items():
            kube.create(DS_PATH, U.daemonset(name, template, node_selector=node_selector))
        yield
    finally:
        for name in templates:
            kube.delete(f"{DS_PATH}/{name}")
        apps = ",".join(t["metadata"]["labels"]["app"] for t in templates.values())
        wait_for(lambda: not _pods(kube, OPERATOR_NS, f"app in ({apps})"), 60, message=f"pods of {apps} gone")


def _pod_on(kube: Kube, app: str, node: str) -> dict[str, Any] | None:
    """The live (not terminating) pod of DaemonSet ``app`` on ``node``."""
    pods = [p for p in _pods(kube, OPERATOR_NS, f"app={app}")
            if p["spec"].get("nodeName") == node and not p["metadata"].get("deletionTimestamp")]
    return pods[0] if pods else None


def _ctr(pod: dict[str, Any], name: str = DRIVER_CONTAINER) -> dict[str, Any]:
    """A container's (or init container's) status; {} before it has one."""
    status = pod.get("status") or {}
    return next((c for c in (status.get("containerStatuses") or []) + (status.get("initContainerStatuses") or [])
                 if c["name"] == name), {})


def _state(cs: dict[str, Any]) -> tuple[str, str]:
    for kind, detail in (cs.get("state") or {}).items():
        return kind, str((detail or {}).get("reason") or "")
    return "", ""


def _running_not_ready(pod: dict[str, Any] | None) -> bool:
    return pod is not None and pod["status"].get("phase") == "Running" and condition(pod, "Ready") == "False"


def _not_ready(pod: dict[str, Any] | None) -> bool:
    return pod is not None and condition(pod, "Ready") == "False"


def _wait_pod(kube: Kube, app: str, node: str, check: Callable[[dict[str, Any]], bool], message: str,
              timeout: float = 30) -> dict[str, Any]:
    def get() -> dict[str, Any] | None:
        pod = _pod_on(kube, app, node)
        return pod if pod and check(pod) else None

    return wait_for(get, timeout, message=f"{app} pod on {node}: {message}")


def _driver_labels(kube: Kube, node: str) -> tuple[str, str, str] | None:
    labels = _node(kube, node)["metadata"].get("labels") or {}
    if "nvidia.com/cuda.driver.major" not in labels:
        return None
    return (labels["nvidia.com/cuda.driver.major"], labels["nvidia.com/cuda.driver.minor"],
            labels["nvidia.com/cuda.driver.rev"])


@pytest.mark.parametrize("node,runtime,cdi", [("infra-a100-0", "containerd", True), ("infra-l4-crio", "crio", True),
                                              ("infra-l4-crio", "crio", False)])
def test_upstream_stack_comes_up_through_the_modelled_handshake(
    kube: Kube, simulator: NodeSimulator, operand_support: None, node: str, runtime: str, cdi: bool
) -> None:
    templates = U.stack(runtime, cdi=cdi)
    gpus = str(PROFILES[NODES[node][0]].gpu_count)
    with deployed(kube, templates, {"kubernetes.io/hostname": node}):
        for app in templates:
            _wait_pod(kube, app, node, pod_running_ready, "Running and Ready", timeout=60)
        wait_for(lambda: _gpu_resource(_node(kube, node)) == (gpus, gpus), 30,
                 message=f"nvidia.com/gpu={gpus} in capacity and allocatable")
        assert wait_for(lambda: _driver_labels(kube, node), 30, message="GFD labels") == ("595", "91", "07")
        want = {k: v for k, v in gfd_labels(NODES[node][0], "595.91.07").items() if k != "nvidia.com/gfd.timestamp"}
        got = _gfd_part(_node(kube, node))
        assert {k: v for k, v in got.items() if k != "nvidia.com/gfd.timestamp"} == want
        assert set(GFD_DRIVER_KEYS) <= set(got) and got["nvidia.com/gfd.timestamp"].isdigit()
        model = simulator.model(node)
        assert model is not None and FOUR <= set(model.host.files)
        handlers = set(model.host.handlers)
        assert handlers == {"runc"} if runtime == "crio" and not cdi else {"nvidia", "nvidia-cdi"} <= handlers
        assert simulator.diagnose(node) == []
        validator = _pod_on(kube, VALIDATOR_APP, node)
        assert validator and [_state(c) for c in validator["status"]["initContainerStatuses"]] == [
            ("terminated", "Completed")] * 4
    wait_for(lambda: _gpu_resource(_node(kube, node)) == (None, None) and not _gfd_part(_node(kube, node)), 30,
             message="nvidia.com/gpu and the GFD labels removed")
    model = simulator.model(node)
    assert model is not None and set(model.host.handlers) == {"runc"}  # the toolkit's cleanup


def test_old_toolkit_deadlocks_and_the_kubelet_says_why_once(
    kube: Kube, simulator: NodeSimulator, operand_support: None
) -> None:
    node = "infra-h100-1"
    templates = {DRIVER_APP: U.driver(), TOOLKIT_APP: U.toolkit(fixed=False), VALIDATOR_APP: U.validator()}

    def sandbox_missing(p: dict[str, Any]) -> bool:
        return (p["status"].get("phase") == "Pending" and condition(p, "PodReadyToStartContainers") == "False"
                and {_state(c) for c in p["status"].get("initContainerStatuses") or []} == {
                    ("waiting", "PodInitializing")})

    with deployed(kube, templates, {"kubernetes.io/hostname": node}):
        validator = _wait_pod(kube, VALIDATOR_APP, node, sandbox_missing, "Pending without a sandbox")
        assert not validator["status"].get("podIP")
        name = validator["metadata"]["name"]

        def events() -> list[dict[str, Any]]:
            return [e for e in kube.items(f"/api/v1/namespaces/{OPERATOR_NS}/events")
                    if e["involvedObject"].get("name") == name and e.get("reason") == "FailedCreatePodSandBox"]

        [event] = wait_for(events, 30, message=f"FailedCreatePodSandBox event for {name}")
        assert (event["type"], event["message"], event["source"]) == ("Warning", CONTAINERD_MESSAGE,
                                                                     {"component": "kubelet", "host": node})
        toolkit = _wait_pod(kube, TOOLKIT_APP, node, lambda p: _state(_ctr(p, "driver-validation")) == ("running", ""),
                            "driver-validation waiting")
        assert toolkit["status"]["phase"] == "Pending"
        _wait_pod(kube, DRIVER_APP, node, pod_running_ready, "Running and Ready")
        [deadlock] = wait_for(lambda: [f for f in simulator.diagnose(node) if f.kind == "deadlock"], 10,
                              message="the deadlock diagnosed")
        assert f"pod {toolkit['metadata']['name']} (init container driver-validation) waits for {V}/driver-ready" \
            in deadlock.text
        assert f'which only pod {name} (init container driver-validation) writes' in deadlock.text
        assert 'runtime handler "nvidia" is not configured' in deadlock.text
        # the event was posted once, not on every resync
        wait_for(simulator.idle, 10, message="simulator idle")
        time.sleep(simulator.resync_seconds + 1)
        assert len(events()) == 1


def test_cuda_validation_reports_the_api_servers_rejection_of_an_empty_image(
    kube: Kube, simulator: NodeSimulator, operand_support: None
) -> None:
    node = "infra-h100-0"
    validator = U.validator()
    cuda = validator["spec"]["initContainers"][2]
    cuda["env"] = [{**e, "value": ""} if e["name"] == "VALIDATOR_IMAGE" else e for e in cuda["env"]]
    templates = {DRIVER_APP: U.driver(), TOOLKIT_APP: U.toolkit(), VALIDATOR_APP: validator}
    with deployed(kube, templates, {"kubernetes.io/hostname": node}):
        pod = _wait_pod(kube, VALIDATOR_APP, node,
                        lambda p: _state(_ctr(p, "cuda-validation")) == ("waiting", "CrashLoopBackOff"),
                        "cuda-validation failing")
        message = _ctr(pod, "cuda-validation")["lastState"]["terminated"]["message"]
        assert message.startswith("failed to create cuda validation pod , err Pod \"nvidia-cuda-validator-")
        assert "spec.containers[0].image: Required value" in message, message
        assert "spec.initContainers[0].image: Required value" in message, message
        assert _state(_ctr(pod, "toolkit-validation")) == ("terminated", "Completed")
        assert not _pods(kube, OPERATOR_NS, "app=nvidia-cuda-validator")  # a dry run creates nothing
        model = simulator.model(node)
        assert model is not None and f"{V}/toolkit-ready" in model.host.files
        assert f"{V}/cuda-ready" not in model.host.files


def test_gpu_requests_schedule_against_simulated_capacity(
    kube: Kube, namespace: str, simulator: NodeSimulator, operand_support: None
) -> None:
    selector = {PCI_LABEL: "true", POOL_LABEL: POOL, RUNTIME_LABEL: "containerd"}
    gpu_nodes = {n for n in GPU_NODES if NODES[n][2] == "containerd"}
    pods = f"/api/v1/namespaces/{namespace}/pods"
    with deployed(kube, U.stack("containerd"), selector):
        wait_for(lambda: all(_gpu_resource(_node(kube, n))[1] for n in gpu_nodes), 60,
                 message="nvidia.com/gpu on every containerd GPU node")
        kube.create(pods, _pod("one-gpu", namespace, gpus=1))
        kube.create(pods, _pod("eight-gpus", namespace, gpus=8))
        kube.create(pods, _pod("nine-gpus", namespace, gpus=9))
        one = wait_pod_running_ready(kube, namespace, "one-gpu")
        assert one["spec"]["nodeName"] in gpu_nodes
        eight = wait_pod_running_ready(kube, namespace, "eight-gpus")
        assert NODES[eight["spec"]["nodeName"]][0] == "h100x8"

        def unschedulable() -> dict[str, Any] | None:
            p = kube.get(f"{pods}/nine-gpus")
            cond = next((c for c in p["status"].get("conditions") or [] if c["type"] == "PodScheduled"), None)
            return cond if cond and cond["status"] == "False" else None

        cond = wait_for(unschedulable, 30, message="9-GPU pod marked unschedulable")
        assert cond["reason"] == "Unschedulable"
        assert "nvidia.com/gpu" in cond["message"]
        pending = kube.get(f"{pods}/nine-gpus")
        assert pending["status"]["phase"] == "Pending" and not pending["spec"].get("nodeName")
    wait_for(lambda: not any(_gpu_resource(_node(kube, n))[1] for n in GPU_NODES), 30,
             message="nvidia.com/gpu removed again")


# --- driver pods: delay, crash loop, validator (the simulator's parts of a driver upgrade) ---

DRIVER_NODES = ("infra-h100-0", "infra-h100-1")
ON_DRIVER_NODES = {PROFILE_LABEL: "h100x8", POOL_LABEL: POOL}


@pytest.fixture
def driver_stack(kube: Kube, simulator: NodeSimulator, operand_support: None) -> Iterator[str]:
    """Driver (OnDelete), toolkit, validator and device plugin DaemonSets on the two h100 nodes, all pods Ready.

    Yields the app label of the driver pods; the validator pods have ``app=nvidia-operator-validator``.
    """
    templates = {name: t for name, t in U.stack().items() if name != GFD_APP}
    with deployed(kube, templates, ON_DRIVER_NODES):
        for node in DRIVER_NODES:
            for app in templates:
                _wait_pod(kube, app, node, pod_running_ready, "Running and Ready", timeout=60)
        yield DRIVER_APP


def test_driver_pod_status_carries_container_details_and_keeps_its_labels(
    cluster: LocalCluster, kube: Kube, simulator: NodeSimulator, driver_stack: str
) -> None:
    revisions = {cr["metadata"]["labels"][REVISION_LABEL] for cr in kube.items(
        f"/apis/apps/v1/namespaces/{OPERATOR_NS}/controllerrevisions", labelSelector=f"app={driver_stack}")}
    for node in DRIVER_NODES:
        pod = _pod_on(kube, driver_stack, node)
        assert pod is not None and pod_running_ready(pod)
        assert pod["metadata"]["labels"][REVISION_LABEL] in revisions
        assert pod["metadata"]["labels"]["app.kubernetes.io/component"] == "nvidia-driver"
        ctr = _ctr(pod)
        image = pod["spec"]["containers"][0]["image"]
        assert (ctr["ready"], ctr["restartCount"], ctr["image"], ctr["imageID"]) == (True, 0, image, image_id(image))
        assert set(ctr["state"]) == {"running"}
        assert condition(pod, "ContainersReady") == "True"
        init = pod["status"]["initContainerStatuses"][0]
        assert init["name"] == "k8s-driver-manager" and init["state"]["terminated"]["reason"] == "Completed"
        assert pod["status"].get("podIP") and pod["status"].get("hostIP")

    # steady state (a resync included): the simulator writes nothing more
    wait_for(simulator.idle, 10, message="simulator idle")
    start = time.time()
    time.sleep(simulator.resync_seconds + 1)
    writes = [
        e["requestURI"] for e in cluster.writes(SIMULATOR_USER, since=start)
        if e.get("verb") in ("patch", "create") and (e.get("objectRef") or {}).get("namespace") == OPERATOR_NS
    ]
    assert not writes, f"simulator wrote in steady state: {writes}"


def test_recreated_driver_pod_is_ready_after_the_delay_and_the_running_validator_stays(
    kube: Kube, simulator: NodeSimulator, driver_stack: str
) -> None:
    node, other = DRIVER_NODES
    simulator.set_driver_ready_delay(3)
    old = _pod_on(kube, driver_stack, node)
    validator = _pod_on(kube, VALIDATOR_APP, node)
    assert validator and pod_running_ready(validator)
    kept = {app: _pod_on(kube, app, other) for app in (driver_stack, VALIDATOR_APP)}
    assert old and all(kept.values())
    t_delete = time.monotonic()
    kube.delete(f"{PODS_PATH}/{old['metadata']['name']}")
    new = _wait_pod(kube, driver_stack, node,
                    lambda p: p["metadata"]["uid"] != old["metadata"]["uid"] and _running_not_ready(p),
                    "recreated, Running and not Ready", timeout=10)
    assert new["metadata"]["labels"][REVISION_LABEL] == old["metadata"]["labels"][REVISION_LABEL]
    ctr = _ctr(new)
    assert ctr["ready"] is False and ctr["started"] is False and set(ctr["state"]) == {"running"}
    # the driver's preStop removed .driver-ctr-ready and its root went; the running validator's init containers
    # do not run again (a pod's run once per sandbox), and this simulator plays no manager that would evict it
    follower = _pod_on(kube, VALIDATOR_APP, node)
    assert follower and follower["metadata"]["uid"] == validator["metadata"]["uid"] and pod_running_ready(follower)

    # about 1 s after the pod appeared: still not ready. The pod turns Ready 3 s after its creation at the
    # earliest, so no sooner than 3 s after the deletion; on a loaded machine the waits above may end later than
    # that, so this is checked only when the reads end within 2 s of the deletion (the bound below proves the delay).
    time.sleep(max(0.0, t_delete + 1.0 - time.monotonic()))
    pod = _pod_on(kube, driver_stack, node)
    assert pod and pod["metadata"]["uid"] == new["metadata"]["uid"]
    if time.monotonic() - t_delete < 2.0:
        assert _running_not_ready(pod)

    _wait_pod(kube, driver_stack, node, pod_running_ready, "Ready after the delay", timeout=6)
    assert time.monotonic() - t_delete >= 2.8
    follower = _pod_on(kube, VALIDATOR_APP, node)
    assert follower and follower["metadata"]["uid"] == validator["metadata"]["uid"] and pod_running_ready(follower)
    # the other node was never touched
    for app, pod in kept.items():
        now = _pod_on(kube, app, other)
        assert now and pod and pod_running_ready(now) and now["metadata"]["uid"] == pod["metadata"]["uid"]


def test_crash_looping_driver_on_one_node(kube: Kube, simulator: NodeSimulator, driver_stack: str) -> None:
    node, other = DRIVER_NODES
    simulator.crash_loop_driver(node)

    def crashing(p: dict[str, Any]) -> bool:
        c = _ctr(p)
        return (_running_not_ready(p) and c.get("ready") is False and c.get("restartCount", 0) >= 1
                and ((c.get("state") or {}).get("waiting") or {}).get("reason") == "CrashLoopBackOff")

    first = _ctr(_wait_pod(kube, driver_stack, node, crashing, "in CrashLoopBackOff", timeout=10))["restartCount"]
    _wait_pod(kube, driver_stack, node, lambda p: crashing(p) and _ctr(p)["restartCount"] >= first + 2,
              "restartCount rising", timeout=15)
    # the running validator stays Ready (a pod's init containers run once); a new one waits for the driver
    running = _wait_pod(kube, VALIDATOR_APP, node, pod_running_ready, "still Ready", timeout=10)
    kube.delete(f"{PODS_PATH}/{running['metadata']['name']}")
    _wait_pod(kube, VALIDATOR_APP, node, lambda p: p["metadata"]["uid"] != running["metadata"]["uid"] and _not_ready(p),
              "recreated and not Ready while its driver crash-loops", timeout=15)
    for app in (driver_stack, VALIDATOR_APP):
        pod = _pod_on(kube, app, other)
        assert pod and pod_running_ready(pod), f"{app} on {other} should stay Ready"

    # a pod recreated on the node crash-loops too
    old = _pod_on(kube, driver_stack, node)
    assert old
    kube.delete(f"{PODS_PATH}/{old['metadata']['name']}")
    new = _wait_pod(kube, driver_stack, node, lambda p: p["metadata"]["uid"] != old["metadata"]["uid"] and crashing(p),
                    "recreated and crash-looping", timeout=15)

    simulator.crash_loop_driver(node, on=False)
    pod = _wait_pod(kube, driver_stack, node, pod_running_ready, "Ready once the crash loop ends", timeout=10)
    assert pod["metadata"]["uid"] == new["metadata"]["uid"]
    assert _ctr(pod)["restartCount"] >= 1 and set(_ctr(pod)["state"]) == {"running"}
    _wait_pod(kube, VALIDATOR_APP, node, pod_running_ready, "Ready again", timeout=10)


def test_gfd_driver_labels_follow_the_new_driver_version(
    kube: Kube, simulator: NodeSimulator, operand_support: None
) -> None:
    node = "infra-l4-0"
    templates = U.stack()  # GFD starts once the validator has written toolkit-ready
    with deployed(kube, templates, {"kubernetes.io/hostname": node}):
        wait_for(lambda: _driver_labels(kube, node) == ("595", "91", "07"), 60,
                 message="GFD labels of driver 595.91.07")

        kube.patch(f"{DS_PATH}/{DRIVER_APP}", {"spec": {"template": {"spec": {"containers": [
            {"name": DRIVER_CONTAINER, "image": "nvcr.io/nvidia/driver:600.10.01-ubuntu22.04"}]}}}},
            content_type=STRATEGIC_PATCH)
        old = _pod_on(kube, DRIVER_APP, node)
        assert old
        simulator.set_driver_ready_delay(3)
        kube.delete(f"{PODS_PATH}/{old['metadata']['name']}")
        new = _wait_pod(kube, DRIVER_APP, node, lambda p: p["metadata"]["uid"] != old["metadata"]["uid"],
                        "recreated", timeout=10)
        assert new["spec"]["containers"][0]["image"].startswith("nvcr.io/nvidia/driver:600.10.01")
        assert new["metadata"]["labels"][REVISION_LABEL] != old["metadata"]["labels"][REVISION_LABEL]
        labels_then = _driver_labels(kube, node)
        pod = _pod_on(kube, DRIVER_APP, node)
        if pod and not pod_running_ready(pod):  # labels read while the new pod was not Ready yet
            assert labels_then != ("600", "10", "01")
        wait_for(lambda: _driver_labels(kube, node) == ("600", "10", "01"), 30,
                 message="GFD labels of driver 600.10.01")
        labels = _node(kube, node)["metadata"]["labels"]
        assert (labels["nvidia.com/cuda.runtime.major"], labels["nvidia.com/cuda.runtime.minor"]) == ("13", "2")
    wait_for(lambda: not _gfd_part(_node(kube, node)), 30, message="GFD labels removed")


def test_free_ports_lie_below_the_ephemeral_range_and_are_never_handed_out_twice() -> None:
    # A port the kernel may give an outgoing connection could be taken while its listener restarts.
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        low = int(f.read().split()[0])
    ports = free_ports(40) + [free_port() for _ in range(10)]
    assert len(set(ports)) == len(ports) and all(1024 <= p < low for p in ports), ports


def test_a_leftover_policy_loses_its_finalizer_only_when_the_setup_asks(cluster: LocalCluster) -> None:
    """A policy an earlier module left with our finalizer and no operator: a teardown's wait fails (the failure
    is that module's), a setup's drops the finalizer with a warning, so later modules start clean."""
    admin = OperatorKube.connect(str(cluster.kubeconfig))
    install_crds_and_rbac(admin)
    delete_policies(admin, 30, leftover=True)
    stuck = policy_from_sample("leftover")
    stuck["metadata"]["finalizers"] = [CLEANUP_FINALIZER]
    admin.create(stuck)
    try:
        with pytest.raises(AssertionError, match="timed out after 2s waiting for ClusterPolicies deleted"):
            delete_policies(admin, 2)
        with pytest.warns(UserWarning, match=r"\['leftover'\] left by an earlier test .* finalizers dropped"):
            delete_policies(admin, 2, leftover=True)
        assert admin.list("ClusterPolicy") == []
    finally:
        if admin.get("ClusterPolicy", "leftover") is not None:
            admin.merge_patch("ClusterPolicy", "leftover", {"metadata": {"finalizers": None}})
