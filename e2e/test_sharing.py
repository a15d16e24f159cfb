"""End-to-end: GPU sharing (time-slicing, MPS) and MIG advertising with the operator, the simulator and the real
scheduler.  The tests share one operator and build on each other's state in file order.

A sharing config comes from the ConfigMap named by devicePlugin.config.name, the key from the node label
nvidia.com/device-plugin.config; a MIG layout counts as applied when the node says nvidia.com/mig.config=<layout>
and nvidia.com/mig.config.state=success (the MIG manager's report).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from e2e.cluster.localcluster import LocalCluster
from e2e.cluster.nodes import create_nodes, delete_nodes, make_node
from e2e.kube import Kube as E2EKube
from e2e.kube import create_namespace, wait_for
from e2e.operator_process import NAMESPACE, OperatorProcess, delete_policies, install_crds_and_rbac, policy_from_sample
from e2e.simulator import NodeSimulator
from gpu_operator.kube import Kube

H100, L4 = "sh-h100-0", "sh-l4-0"
CONFIG_MAP = "sharing-config"
WORKLOADS = "sharing-workloads"
WAIT = 150
TS4 = """\
version: v1
sharing:
  timeSlicing:
    resources:
    - name: nvidia.com/gpu
      replicas: 4
"""
TS4_RENAMED = """\
version: v1
sharing:
  timeSlicing:
    renameByDefault: true
    failRequestsGreaterThanOne: false
    resources:
    - name: nvidia.com/gpu
      replicas: 4
"""
MPS2 = """\
version: v1
sharing:
  mps:
    resources:
    - name: nvidia.com/gpu
      replicas: 2
"""
BAD = """\
version: v1
sharing:
  timeSlicing:
    resources:
    - name: nvidia.com/gpu
      replicas: 1
"""


@pytest.fixture(scope="module")
def admin(cluster: LocalCluster) -> Kube:
    return Kube.connect(str(cluster.kubeconfig))


@pytest.fixture(scope="module")
def operator(cluster: LocalCluster, admin: Kube, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    install_crds_and_rbac(admin)
    delete_policies(admin, 30, leftover=True)
    create_nodes(admin.client, [make_node(H100, "h100x8"), make_node(L4, "l4x1")])
    create_namespace(E2EKube(admin.client), NAMESPACE)
    admin.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": CONFIG_MAP, "namespace": NAMESPACE},
                  "data": {"ts4": TS4, "ts4-renamed": TS4_RENAMED, "mps2": MPS2}})
    create_namespace(E2EKube(admin.client), WORKLOADS)
    sim = NodeSimulator(cluster.simulator_kubeconfig, namespace=NAMESPACE, resync_seconds=5).start()
    op = OperatorProcess(cluster, tmp_path_factory.mktemp("operator") / "operator.log").start()
    overrides: dict[str, Any] = {"devicePlugin.config": {"name": CONFIG_MAP, "default": ""},
                                 "dcgmExporter.enabled": False}
    admin.create(policy_from_sample(**overrides))
    try:
        yield op
    finally:
        try:
            delete_policies(admin)
        finally:
            op.stop()
            sim.stop()
            admin.delete("Namespace", WORKLOADS)
            admin.delete("ConfigMap", CONFIG_MAP, NAMESPACE)
            delete_nodes(admin.client, [H100, L4])


def node(admin: Kube, name: str) -> dict[str, Any]:
    obj = admin.get("Node", name)
    assert obj is not None
    return obj


def label(admin: Kube, name: str, labels: dict[str, str | None]) -> None:
    admin.merge_patch("Node", name, {"metadata": {"labels": labels}})


def advertised(admin: Kube, name: str) -> dict[str, int]:
    alloc = node(admin, name)["status"].get("allocatable") or {}
    return {k: int(v) for k, v in alloc.items() if k.startswith("nvidia.com/")}


def wait_advertised(admin: Kube, op: OperatorProcess, name: str, want: dict[str, int]) -> None:
    try:
        wait_for(lambda: advertised(admin, name) == want, WAIT, interval=0.5, message=f"{name} advertising {want}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nhas: {advertised(admin, name)}\noperator log:\n{op.log_tail(30)}") from None


def wait_labels(admin: Kube, name: str, want: dict[str, str]) -> dict[str, str]:
    def match() -> dict[str, str] | None:
        labels = node(admin, name)["metadata"].get("labels") or {}
        return labels if all(labels.get(k) == v for k, v in want.items()) else None

    try:
        return wait_for(match, WAIT, interval=0.5, message=f"{name} labels {want}")
    except AssertionError as exc:
        have = node(admin, name)["metadata"].get("labels") or {}
        raise AssertionError(f"{exc}\nhas: { {k: have.get(k) for k in want} }") from None


def pod(name: str, on: str, resource: str, count: int = 1) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": WORKLOADS},
        "spec": {"nodeSelector": {"kubernetes.io/hostname": on}, "restartPolicy": "Never",
                 "containers": [{"name": "cuda", "image": "nvidia/cuda:12.8.0-base-ubuntu22.04",
                                 "command": ["nvidia-smi"], "resources": {"limits": {resource: count}}}]},
    }


def running(admin: Kube, names: list[str]) -> bool:
    pods = {p["metadata"]["name"]: p for p in admin.list("Pod", WORKLOADS)}
    return all((pods.get(n) or {}).get("status", {}).get("phase") == "Running" for n in names)


def run_pods(admin: Kube, pods: list[dict[str, Any]]) -> None:
    for p in pods:
        admin.create(p)
    names = [p["metadata"]["name"] for p in pods]
    wait_for(lambda: running(admin, names), WAIT, interval=0.5, message=f"{len(names)} pods running")


def delete_pods(admin: Kube) -> None:
    for p in admin.list("Pod", WORKLOADS):
        admin.delete("Pod", p["metadata"]["name"], WORKLOADS, body={"gracePeriodSeconds": 0})
    wait_for(lambda: not admin.list("Pod", WORKLOADS), WAIT, message="workload pods gone")


def plugin_pod(admin: Kube, on: str) -> str:
    pods = admin.list("Pod", NAMESPACE, label_selector="app=nvidia-device-plugin-daemonset",
                      field_selector=f"spec.nodeName={on}")
    assert len(pods) == 1, [p["metadata"]["name"] for p in pods]
    return str(pods[0]["metadata"]["uid"])


def status_condition(admin: Kube, type_: str) -> dict[str, Any]:
    policy = admin.get("ClusterPolicy", "cluster-policy") or {}
    return next((c for c in (policy.get("status") or {}).get("conditions") or [] if c["type"] == type_), {})


def test_without_a_config_every_gpu_is_advertised_once(admin: Kube, operator: OperatorProcess) -> None:
    wait_advertised(admin, operator, H100, {"nvidia.com/gpu": 8})
    wait_labels(admin, H100, {"nvidia.com/gpu.replicas": "1", "nvidia.com/gpu.sharing-strategy": "none",
                              "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3", "nvidia.com/mps.capable": "false"})


def test_time_slicing_four_replicas_runs_32_one_gpu_pods(admin: Kube, operator: OperatorProcess) -> None:
    label(admin, H100, {"nvidia.com/device-plugin.config": "ts4"})
    wait_advertised(admin, operator, H100, {"nvidia.com/gpu": 32})
    wait_labels(admin, H100, {"nvidia.com/gpu.replicas": "4", "nvidia.com/gpu.sharing-strategy": "time-slicing",
                              "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3-SHARED", "nvidia.com/gpu.count": "8"})
    run_pods(admin, [pod(f"ts-{i}", H100, "nvidia.com/gpu") for i in range(32)])
    delete_pods(admin)


def test_rename_by_default_is_picked_up_without_restarting_the_plugin(admin: Kube, operator: OperatorProcess) -> None:
    before = plugin_pod(admin, H100)
    label(admin, H100, {"nvidia.com/device-plugin.config": "ts4-renamed"})
    wait_advertised(admin, operator, H100, {"nvidia.com/gpu.shared": 32})
    wait_labels(admin, H100, {"nvidia.com/gpu.replicas": "4", "nvidia.com/gpu.sharing-strategy": "time-slicing",
                              "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"})
    assert plugin_pod(admin, H100) == before
    run_pods(admin, [pod("shared-0", H100, "nvidia.com/gpu.shared")])
    delete_pods(admin)


def test_mps_runs_the_control_daemon_on_the_mps_capable_node(admin: Kube, operator: OperatorProcess) -> None:
    label(admin, L4, {"nvidia.com/device-plugin.config": "mps2"})
    wait_labels(admin, L4, {"nvidia.com/mps.capable": "true", "nvidia.com/gpu.sharing-strategy": "mps",
                            "nvidia.com/gpu.replicas": "2"})

    def daemon_running() -> bool:
        pods = admin.list("Pod", NAMESPACE, label_selector="app=nvidia-device-plugin-mps-control-daemon")
        return any(p["spec"].get("nodeName") == L4 and p["status"].get("phase") == "Running" for p in pods)

    wait_for(daemon_running, WAIT, interval=0.5, message="MPS control daemon running on the L4 node")
    wait_advertised(admin, operator, L4, {"nvidia.com/gpu": 2})
    assert not any(p["spec"].get("nodeName") == H100 for p in admin.list(
        "Pod", NAMESPACE, label_selector="app=nvidia-device-plugin-mps-control-daemon"))
    run_pods(admin, [pod(f"mps-{i}", L4, "nvidia.com/gpu") for i in range(2)])
    delete_pods(admin)


def test_a_config_the_plugin_would_reject_is_refused_with_the_field_named(
    admin: Kube, operator: OperatorProcess
) -> None:
    admin.merge_patch("ConfigMap", CONFIG_MAP, {"data": {"bad": BAD}}, NAMESPACE)

    def refused() -> dict[str, Any] | None:
        cond = status_condition(admin, "SharingConfigValid")
        return cond if cond.get("status") == "False" else None

    cond = wait_for(refused, WAIT, interval=0.5, message="SharingConfigValid False")
    assert cond["reason"] == "InvalidSharingConfig"
    for part in (f"ConfigMap {CONFIG_MAP}", "key bad", "sharing.timeSlicing.resources[0].replicas",
                 "number of replicas must be >= 2"):
        assert part in cond["message"]
    policy = admin.get("ClusterPolicy", "cluster-policy") or {}
    states = {s["name"]: s for s in policy["status"]["states"]}
    assert states["state-device-plugin"]["state"] == "notReady"
    assert "key bad" in states["state-device-plugin"]["message"]

    def warned() -> list[dict[str, Any]]:
        return [e for e in admin.list("Event", "default")
                if e["involvedObject"].get("kind") == "ClusterPolicy" and e["reason"] == "InvalidSharingConfig"]

    events = wait_for(warned, WAIT, message="InvalidSharingConfig event")
    assert [e.get("count") for e in events] == [1]  # once, not once per pass (nor a count bumped per pass)
    assert events[0]["type"] == "Warning" and "key bad" in events[0]["message"]
    # what runs keeps its config
    assert advertised(admin, H100) == {"nvidia.com/gpu.shared": 32}
    admin.merge_patch("ConfigMap", CONFIG_MAP, {"data": {"bad": None}}, NAMESPACE)
    wait_for(lambda: status_condition(admin, "SharingConfigValid").get("status") == "True", WAIT, interval=0.5,
             message="SharingConfigValid True again")


def test_mps_with_mixed_mig_strategy_is_refused(admin: Kube, operator: OperatorProcess) -> None:
    admin.merge_patch("ClusterPolicy", "cluster-policy", {"spec": {"mig": {"strategy": "mixed"}}})
    cond = wait_for(lambda: (c := status_condition(admin, "SharingConfigValid")).get("status") == "False" and c,
                    WAIT, interval=0.5, message="MPS with mixed refused")
    assert "key mps2" in cond["message"] and "field sharing.mps" in cond["message"]
    assert "mixed is not supported with MPS" in cond["message"]
    # MIG tests below: no MPS key, no sharing on the H100
    label(admin, L4, {"nvidia.com/device-plugin.config": None})
    label(admin, H100, {"nvidia.com/device-plugin.config": None})
    admin.merge_patch("ConfigMap", CONFIG_MAP, {"data": {"mps2": None}}, NAMESPACE)
    wait_for(lambda: status_condition(admin, "SharingConfigValid").get("status") == "True", WAIT, interval=0.5,
             message="SharingConfigValid True again")


def test_mixed_strategy_advertises_each_mig_profile(admin: Kube, operator: OperatorProcess) -> None:
    label(admin, H100, {"nvidia.com/mig.config": "all-1g.10gb", "nvidia.com/mig.config.state": "success"})
    wait_advertised(admin, operator, H100, {"nvidia.com/mig-1g.10gb": 56})
    wait_labels(admin, H100, {"nvidia.com/mig.strategy": "mixed", "nvidia.com/mig-1g.10gb.count": "56",
                              "nvidia.com/mig-1g.10gb.product": "NVIDIA-H100-80GB-HBM3-MIG-1g.10gb",
                              "nvidia.com/mig-1g.10gb.memory": "10240", "nvidia.com/mig-1g.10gb.slices.gi": "1"})
    run_pods(admin, [pod("mig-1g", H100, "nvidia.com/mig-1g.10gb")])
    delete_pods(admin)

    label(admin, H100, {"nvidia.com/mig.config": "all-balanced", "nvidia.com/mig.config.state": "success"})
    wait_advertised(admin, operator, H100,
                    {"nvidia.com/mig-1g.10gb": 16, "nvidia.com/mig-2g.20gb": 8, "nvidia.com/mig-3g.40gb": 8})
    labels = wait_labels(admin, H100, {"nvidia.com/mig-3g.40gb.count": "8", "nvidia.com/mig-2g.20gb.count": "8"})
    assert labels.get("nvidia.com/mig-1g.10gb.count") == "16"
    run_pods(admin, [pod("mig-3g", H100, "nvidia.com/mig-3g.40gb")])
    delete_pods(admin)


def scheduler_refused(admin: Kube, name: str) -> str:
    """The scheduler's message once it has found no node for the pod."""

    def message() -> str | None:
        got = admin.get("Pod", name, WORKLOADS) or {}
        for c in (got.get("status") or {}).get("conditions") or []:
            if c.get("type") == "PodScheduled" and c.get("reason") == "Unschedulable":
                return str(c.get("message"))
        return None

    return wait_for(message, WAIT, interval=0.5, message=f"the scheduler to refuse {name}")


def test_seed_pod_with_two_mig_profiles_runs_where_both_are_advertised(admin: Kube, operator: OperatorProcess) -> None:
    """Seed §5.4 "MIG (Multi-Instance GPU) Resources": one container with limits nvidia.com/mig-1g.10gb: 1 and
    nvidia.com/mig-3g.40gb: 1. Under the mixed strategy each profile is a resource of its own: with the H100 node in
    all-balanced (per GPU 2 × 1g.10gb, 1 × 2g.20gb, 1 × 3g.40gb: 16, 8 and 8 advertised) the scheduler places such
    pods on it (the L4 node advertises neither) and counts the two profiles apart: eight fit (3g.40gb: 8), a ninth
    is refused for nvidia.com/mig-3g.40gb alone, and a pod asking only for mig-1g.10gb (8 of 16 left) still runs.
    The seed's pod has no node selector, and none is added: the scheduler finds the node by its MIG resources."""
    label(admin, H100, {"nvidia.com/mig.config": "all-balanced", "nvidia.com/mig.config.state": "success"})
    wait_advertised(admin, operator, H100,
                    {"nvidia.com/mig-1g.10gb": 16, "nvidia.com/mig-2g.20gb": 8, "nvidia.com/mig-3g.40gb": 8})
    wait_labels(admin, H100, {"nvidia.com/mig.strategy": "mixed"})

    def seed_pod(name: str, limits: dict[str, int]) -> dict[str, Any]:
        return {
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": WORKLOADS},
            "spec": {"containers": [{"name": "cuda", "image": "nvidia/cuda:12.8.0-base-ubuntu22.04",
                                     "command": ["sleep", "infinity"], "resources": {"limits": limits}}]},
        }  # fmt: skip

    both = {"nvidia.com/mig-1g.10gb": 1, "nvidia.com/mig-3g.40gb": 1}
    try:
        run_pods(admin, [seed_pod(f"mig-pair-{i}", both) for i in range(8)])
        placed = {p["metadata"]["name"]: p["spec"].get("nodeName") for p in admin.list("Pod", WORKLOADS)}
        assert set(placed.values()) == {H100}, placed
        admin.create(seed_pod("mig-pair-8", both))
        message = scheduler_refused(admin, "mig-pair-8")
        # Per reason, the number of nodes it held back: 3g.40gb held back the H100 too, 1g.10gb only the others.
        short = {r: int(n) for n, r in re.findall(r"(\d+) Insufficient (nvidia\.com/mig-\d+g\.\d+gb)", message)}
        assert short.get("nvidia.com/mig-3g.40gb", 0) == short.get("nvidia.com/mig-1g.10gb", 0) + 1, message
        run_pods(admin, [seed_pod("mig-1g-only", {"nvidia.com/mig-1g.10gb": 1})])
        assert (admin.get("Pod", "mig-1g-only", WORKLOADS) or {})["spec"].get("nodeName") == H100
        pending = admin.get("Pod", "mig-pair-8", WORKLOADS) or {}
        assert pending["status"]["phase"] == "Pending" and not pending["spec"].get("nodeName")
    finally:
        delete_pods(admin)


def test_single_strategy_advertises_a_gpu_per_slice(admin: Kube, operator: OperatorProcess) -> None:
    label(admin, H100, {"nvidia.com/mig.config": "all-1g.10gb", "nvidia.com/mig.config.state": "success"})
    admin.merge_patch("ClusterPolicy", "cluster-policy", {"spec": {"mig": {"strategy": "single"}}})
    wait_advertised(admin, operator, H100, {"nvidia.com/gpu": 56})
    labels = wait_labels(admin, H100, {"nvidia.com/mig.strategy": "single", "nvidia.com/gpu.count": "56",
                                       "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3-MIG-1g.10gb"})
    assert not any(k.startswith("nvidia.com/mig-1g.10gb.") for k in labels)
    run_pods(admin, [pod("single-0", H100, "nvidia.com/gpu")])
    delete_pods(admin)
    label(admin, H100, {"nvidia.com/mig.config": None, "nvidia.com/mig.config.state": None})
    wait_advertised(admin, operator, H100, {"nvidia.com/gpu": 8})


def test_refused_policy_update_leaves_daemonsets_unchanged(admin: Kube, operator: OperatorProcess) -> None:
    ds = admin.get("DaemonSet", "nvidia-device-plugin-daemonset", NAMESPACE)
    assert ds is not None
    admin.merge_patch("ConfigMap", CONFIG_MAP, {"data": {"bad": "version: v2\n"}}, NAMESPACE)
    wait_for(lambda: "field version" in status_condition(admin, "SharingConfigValid").get("message", ""), WAIT,
             interval=0.5, message="bad version refused")
    admin.merge_patch("ClusterPolicy", "cluster-policy",
                      {"spec": {"devicePlugin": {"env": [{"name": "EXTRA", "value": "1"}]}}})
    wait_for(lambda: (admin.get("ClusterPolicy", "cluster-policy") or {}).get("status", {}).get(
        "observedGeneration") == (admin.get("ClusterPolicy", "cluster-policy") or {})["metadata"]["generation"],
        WAIT, interval=0.5, message="policy update observed")
    after = admin.get("DaemonSet", "nvidia-device-plugin-daemonset", NAMESPACE)
    assert after is not None and after["metadata"]["generation"] == ds["metadata"]["generation"]
    admin.merge_patch("ConfigMap", CONFIG_MAP, {"data": {"bad": None}}, NAMESPACE)

    def rolled() -> bool:
        now = admin.get("DaemonSet", "nvidia-device-plugin-daemonset", NAMESPACE) or {}
        env = now["spec"]["template"]["spec"]["containers"][0].get("env") or []
        return any(e["name"] == "EXTRA" for e in env)

    wait_for(rolled, WAIT, interval=0.5, message="the held update rolls out once the config is valid")
