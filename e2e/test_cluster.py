"""End-to-end tests of the test infrastructure itself: local cluster, fake nodes, kwok stages, node simulator."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from e2e.cluster.localcluster import ADMIN_USER, OPERATOR_USER, SIMULATOR_USER, LocalCluster
from e2e.cluster.nodes import (
    GFD_DRIVER_KEYS,
    GFD_LABEL_KEYS,
    PCI_LABEL,
    PROFILE_LABEL,
    create_nodes,
    delete_nodes,
    gfd_labels,
    make_node,
)
from e2e.kube import Kube, condition, node_ready, pod_running_ready, wait_for, wait_pod_running_ready
from e2e.simulator import COMPONENT_LABEL, DEVICE_PLUGIN, DRIVER, GFD, NodeSimulator

POOL_LABEL = "e2e.test/pool"
POOL = "infra"
OPERATOR_NS = "gpu-operator"
GPU = "nvidia.com/gpu"

# name -> (profile, os)
NODES = {
    "infra-h100-0": ("h100x8", "ubuntu22.04"),
    "infra-h100-1": ("h100x8", "ubuntu24.04"),
    "infra-a100-0": ("a100x4", "rhel9.4"),
    "infra-l4-0": ("l4x1", "ubuntu22.04"),
    "infra-cpu-0": ("cpu", "ubuntu22.04"),
}
GPU_NODES = {n for n, (profile, _) in NODES.items() if profile != "cpu"}


@pytest.fixture(scope="module")
def fake_nodes(kube: Kube) -> Iterator[dict[str, dict[str, Any]]]:
    """The module's fake nodes (mixed profiles and OSes), Ready and untainted."""
    nodes = []
    for name, (profile, os) in NODES.items():
        node = make_node(name, profile, os=os)
        node["metadata"]["labels"][POOL_LABEL] = POOL
        nodes.append(node)
    create_nodes(kube, nodes)

    def all_ready_untainted() -> dict[str, dict[str, Any]]:
        got = {n["metadata"]["name"]: n for n in kube.items("/api/v1/nodes", labelSelector=f"{POOL_LABEL}={POOL}")}
        ok = set(got) == set(NODES) and all(node_ready(n) and not n["spec"].get("taints") for n in got.values())
        return got if ok else {}

    yield wait_for(all_ready_untainted, 60, message="fake nodes Ready without taints")
    delete_nodes(kube, NODES)


def _daemonset(name: str, namespace: str, node_selector: dict[str, str], image: str,
               component: str | None = None) -> dict[str, Any]:
    labels = {"app": name}
    if component:
        labels[COMPONENT_LABEL] = component
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


def test_version(kube: Kube) -> None:
    assert kube.get("/version")["gitVersion"] == "v1.37.2"


def test_fake_nodes_become_ready(fake_nodes: dict[str, dict[str, Any]]) -> None:
    for name, (profile, os) in NODES.items():
        node = fake_nodes[name]
        labels, status = node["metadata"]["labels"], node["status"]
        assert labels[PROFILE_LABEL] == profile
        assert labels["kubernetes.io/hostname"] == name
        assert (labels.get(PCI_LABEL) == "true") == (profile != "cpu")
        assert "nvidia.com/mig.capable" not in labels  # GFD publishes it, not node creation
        info = status["nodeInfo"]
        assert info["containerRuntimeVersion"] == "containerd://1.7.27"
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


def test_simulator_device_plugin_and_gfd(
    cluster: LocalCluster, kube: Kube, simulator: NodeSimulator, fake_nodes: dict[str, dict[str, Any]]
) -> None:
    node = "infra-a100-0"
    on_node = {"kubernetes.io/hostname": node}
    ds_path = f"/apis/apps/v1/namespaces/{OPERATOR_NS}/daemonsets"
    dp = _daemonset("sim-dp", OPERATOR_NS, on_node, "nvcr.io/nvidia/k8s-device-plugin:v0.18.0", DEVICE_PLUGIN)
    gfd = _daemonset("sim-gfd", OPERATOR_NS, on_node, "nvcr.io/nvidia/k8s-device-plugin:v0.18.0", GFD)
    driver = _daemonset("sim-driver", OPERATOR_NS, on_node, "nvcr.io/nvidia/driver:580.95.05-rhel9.4", DRIVER)
    try:
        assert _gpu_resource(_node(kube, node)) == (None, None)
        kube.create(ds_path, dp)
        wait_for(lambda: _gpu_resource(_node(kube, node)) == ("4", "4"), 30,
                 message="nvidia.com/gpu=4 in capacity and allocatable")

        # GFD without a driver: no CUDA driver labels
        kube.create(ds_path, gfd)
        want = gfd_labels("a100x4", None)
        got = wait_for(lambda: _gfd_part(_node(kube, node)), 30, message="GFD labels")
        assert {k: v for k, v in got.items() if k != "nvidia.com/gfd.timestamp"} == {
            k: v for k, v in want.items() if k != "nvidia.com/gfd.timestamp"}
        assert got["nvidia.com/gfd.timestamp"].isdigit()
        assert not set(GFD_DRIVER_KEYS) & set(got)

        # a driver pod: kwok leaves it Pending, the simulator makes it Ready, GFD labels follow its version
        kube.create(ds_path, driver)
        wait_for(lambda: [p for p in _pods(kube, OPERATOR_NS, "app=sim-driver") if pod_running_ready(p)], 30,
                 message="driver pod made Running+Ready by the simulator")
        def with_driver_labels() -> dict[str, str] | None:
            got = _gfd_part(_node(kube, node))
            return got if "nvidia.com/cuda.driver.major" in got else None

        labels = wait_for(with_driver_labels, 30, message="CUDA driver labels")
        assert (labels["nvidia.com/cuda.driver.major"], labels["nvidia.com/cuda.driver.minor"],
                labels["nvidia.com/cuda.driver.rev"]) == ("580", "95", "05")
        assert (labels["nvidia.com/cuda.runtime.major"], labels["nvidia.com/cuda.runtime.minor"]) == ("13", "0")
        assert labels["nvidia.com/mig.capable"] == "true"
        assert labels["nvidia.com/gpu.product"] == "NVIDIA-A100-SXM4-80GB"

        # pods go -> the simulated state goes
        kube.delete(f"{ds_path}/sim-dp")
        wait_for(lambda: _gpu_resource(_node(kube, node)) == (None, None), 30, message="nvidia.com/gpu removed")
        kube.delete(f"{ds_path}/sim-gfd")
        wait_for(lambda: not _gfd_part(_node(kube, node)), 30, message="GFD labels removed")
        assert _node(kube, node)["metadata"]["labels"]["gpu.nvidia.com/model"] == "A100"
    finally:
        for name in ("sim-dp", "sim-gfd", "sim-driver"):
            kube.delete(f"{ds_path}/{name}")
    # the simulator wrote as its own identity
    writes = [e for e in cluster.audit_events()
              if e.get("verb") == "patch" and (e.get("objectRef") or {}).get("name") == node]
    assert {e["user"]["username"] for e in writes} >= {SIMULATOR_USER}


def test_gpu_requests_schedule_against_simulated_capacity(
    kube: Kube, namespace: str, simulator: NodeSimulator, fake_nodes: dict[str, dict[str, Any]]
) -> None:
    ds_path = f"/apis/apps/v1/namespaces/{OPERATOR_NS}/daemonsets"
    dp = _daemonset("sched-dp", OPERATOR_NS, {PCI_LABEL: "true", POOL_LABEL: POOL},
                    "nvcr.io/nvidia/k8s-device-plugin:v0.18.0", DEVICE_PLUGIN)
    pods = f"/api/v1/namespaces/{namespace}/pods"
    kube.create(ds_path, dp)
    try:
        wait_for(lambda: all(_gpu_resource(_node(kube, n))[1] for n in GPU_NODES), 30,
                 message="nvidia.com/gpu on every GPU node")
        kube.create(pods, _pod("one-gpu", namespace, gpus=1))
        kube.create(pods, _pod("eight-gpus", namespace, gpus=8))
        kube.create(pods, _pod("nine-gpus", namespace, gpus=9))
        one = wait_pod_running_ready(kube, namespace, "one-gpu")
        assert one["spec"]["nodeName"] in GPU_NODES
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
    finally:
        kube.delete(f"{ds_path}/sched-dp")
    wait_for(lambda: not any(_gpu_resource(_node(kube, n))[1] for n in GPU_NODES), 30,
             message="nvidia.com/gpu removed again")


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
