"""End-to-end: MIG layout changes on H100 nodes, checked and gated by the operator, carried out by the simulated
mig-manager (e2e/sim_mig.py).

The tests share one operator and two nodes and run in file order.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest

from e2e.cluster.localcluster import LocalCluster
from e2e.cluster.nodes import KWOK_ANNOTATION, create_nodes, delete_nodes, make_node
from e2e.kube import wait_for
from e2e.operator_process import NAMESPACE, OperatorProcess, delete_policies, install_crds_and_rbac, policy_from_sample
from e2e.simulator import NodeSimulator
from gpu_operator.cli import main
from gpu_operator.kube import Kube

NODE = "mig-h100-0"
OTHER = "mig-h100-1"
CONFIG = "nvidia.com/mig.config"
STATE = "nvidia.com/mig.config.state"
APPROVED = "nvidia.com/gpu-operator.mig-config.approved"
MANAGER = "nvidia.com/gpu.deploy.mig-manager"
PAUSED = "paused-for-mig-change"
WAIT = 90


class Running:
    """The operator process, restartable by a test."""

    def __init__(self, cluster: LocalCluster, log: Any) -> None:
        self.cluster, self.log = cluster, log
        self.op = OperatorProcess(cluster, log).start()

    def restart(self, sig: int = signal.SIGKILL) -> None:
        self.op.stop(sig)
        self.op = OperatorProcess(self.cluster, self.log).start()


@pytest.fixture(scope="module")
def admin(cluster: LocalCluster) -> Kube:
    return Kube.connect(str(cluster.kubeconfig))


@pytest.fixture(scope="module")
def sim(cluster: LocalCluster) -> Iterator[NodeSimulator]:
    # mig-manager acts on a new layout 3 s after it sees it: the operator's gate must pause it before (sim_mig.py)
    s = NodeSimulator(
        cluster.simulator_kubeconfig, namespace=NAMESPACE, resync_seconds=2, mig_delay=2.0, mig_settle=3.0
    ).start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def operator(
    cluster: LocalCluster, admin: Kube, sim: NodeSimulator, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Running]:
    install_crds_and_rbac(admin)
    delete_policies(admin, 30, leftover=True)
    create_nodes(admin.client, [make_node(NODE, "h100x8"), make_node(OTHER, "h100x8")])
    running = Running(cluster, tmp_path_factory.mktemp("operator") / "operator.log")
    admin.create(policy_from_sample())
    try:
        yield running
    finally:
        try:
            delete_policies(admin)
        finally:
            running.op.stop()
            delete_nodes(admin.client, [NODE, OTHER])  # later modules share the cluster


def labels(admin: Kube, node: str = NODE) -> dict[str, str]:
    obj = admin.get("Node", node)
    assert obj is not None
    return dict(obj["metadata"].get("labels") or {})


def relabel(admin: Kube, layout: str, node: str = NODE) -> None:
    admin.merge_patch("Node", node, {"metadata": {"labels": {CONFIG: layout}}})


def mig_condition(admin: Kube) -> dict[str, Any]:
    obj = admin.get("ClusterPolicy", "cluster-policy") or {}
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == "MIGConfig"), {})


def node_events(admin: Kube, node: str, reason: str) -> list[dict[str, Any]]:
    return [
        e
        for e in admin.list("Event", "default")
        if e["involvedObject"].get("name") == node and e.get("reason") == reason
    ]


def paused_labels(admin: Kube, node: str = NODE) -> dict[str, str]:
    return {k: v for k, v in labels(admin, node).items() if v == PAUSED}


def settled(
    admin: Kube, layout: str, state: str = "success", node: str = NODE, sim: NodeSimulator | None = None
) -> dict[str, str] | None:
    """The node's labels once it asks for `layout` and its change ended in `state` with nothing paused (and, given
    the simulator, once its host has that layout: a relabel leaves the old state label until mig-manager acts)."""
    got = labels(admin, node)
    done = got.get(CONFIG) == layout and got.get(STATE) == state and got.get(MANAGER) == "true"
    if sim is not None and sim.mig.applied(node) != layout:
        return None
    return got if done and not paused_labels(admin, node) else None


def gpu_pod(namespace: str, name: str) -> dict[str, Any]:
    """A workload pod on NODE holding a MIG slice (placed directly: the scheduler is not what is tested)."""
    limits = {"nvidia.com/mig-1g.10gb": "1"}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "nodeName": NODE,
            "tolerations": [{"operator": "Exists"}],
            "containers": [{"name": "c", "image": "cuda", "resources": {"limits": limits}}],
        },
    }


def explain(admin: Kube, run: Running, sim: NodeSimulator) -> str:
    ready = {n["metadata"]["name"]: [c["status"] for c in n["status"].get("conditions") or [] if c["type"] == "Ready"]
             for n in admin.list("Node") if n["metadata"]["name"] in (NODE, OTHER)}  # fmt: skip
    return (f"labels: {labels(admin)}\nReady: {ready}\ncondition: {mig_condition(admin)}\nsim: {sim.errors[-3:]}\n"
            f"{run.op.log_tail(30)}")  # fmt: skip


def test_a_fresh_node_reports_its_layout_and_a_change_ends_success(
    admin: Kube, operator: Running, sim: NodeSimulator
) -> None:
    try:
        wait_for(lambda: settled(admin, "all-disabled"), WAIT, interval=0.5, message="all-disabled success")
        relabel(admin, "all-1g.10gb")
        got = wait_for(lambda: settled(admin, "all-1g.10gb", sim=sim), WAIT, interval=0.5, message="1g.10gb applied")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{explain(admin, operator, sim)}") from None
    assert sim.mig.applied(NODE) == "all-1g.10gb"
    assert got["nvidia.com/gpu-operator.mig-config.approved"] == "all-1g.10gb"
    assert got["nvidia.com/gpu.deploy.device-plugin"] == "true"
    assert wait_for(lambda: mig_condition(admin).get("status") == "True", 30, message="MIGConfig True")


def test_mig_layouts_cli_reads_the_nodes_gpu(
    cluster: LocalCluster, admin: Kube, operator: Running, capsys: pytest.CaptureFixture[str]
) -> None:
    # GFD's labels are back (under the single strategy gpu.count then counts MIG devices: 56)
    wait_for(lambda: labels(admin).get("nvidia.com/gpu.count") in ("8", "56"), WAIT, message="GFD labels back")
    assert main(["mig", "layouts", "--node", NODE, "--kubeconfig", str(cluster.kubeconfig)]) == 0
    out = capsys.readouterr().out
    assert f"H100 80GB, H800 80GB, A100 80GB, A800 80GB [{NODE} (8 GPUs)]" in out
    assert "  all-1g.10gb\n    mixed:  nvidia.com/mig-1g.10gb=56\n    single: nvidia.com/gpu=56" in out
    assert "all-1g.18gb" not in out


def test_an_unknown_layout_is_refused_and_the_node_left_as_it_was(
    admin: Kube, operator: Running, sim: NodeSimulator
) -> None:
    relabel(admin, "all-1g.18gb")  # an H200 profile: no such layout for an H100
    cond = wait_for(
        lambda: (c := mig_condition(admin)).get("reason") == "LayoutRefused" and c, 30, message="refused condition"
    )
    assert NODE in cond["message"] and "all-1g.18gb" in cond["message"] and "H100 80GB" in cond["message"]
    events = wait_for(lambda: node_events(admin, NODE, "MIGConfigRefused"), 30, message="refused event")
    assert events[0]["type"] == "Warning" and "all-1g.18gb" in events[0]["message"]
    got = labels(admin)
    assert got[STATE] == "success" and got[MANAGER] == PAUSED  # held: mig-manager does not act on it
    assert {k: v for k, v in paused_labels(admin).items() if k != MANAGER} == {}
    assert sim.mig.applied(NODE) == "all-1g.10gb"
    # Steady: no second event for the same refusal (nor a recurrence's count bumped on the first).
    count = sum(e.get("count") or 1 for e in node_events(admin, NODE, "MIGConfigRefused"))
    relabel(admin, "all-1g.10gb")  # back to what is applied: released, nothing to do
    wait_for(lambda: settled(admin, "all-1g.10gb"), WAIT, interval=0.5, message="released")
    assert sum(e.get("count") or 1 for e in node_events(admin, NODE, "MIGConfigRefused")) == count
    assert sim.mig.applied(NODE) == "all-1g.10gb"


def test_a_change_waits_for_gpu_pods_and_survives_an_operator_kill(
    admin: Kube, operator: Running, sim: NodeSimulator, namespace: str
) -> None:
    admin.create(gpu_pod(namespace, "cuda-job"))
    relabel(admin, "all-3g.40gb")
    try:
        cond = wait_for(
            lambda: (c := mig_condition(admin)).get("reason") == "WaitingForGPUWorkloads" and c,
            30,
            message="waiting condition",
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{explain(admin, operator, sim)}") from None
    assert f"{namespace}/cuda-job" in cond["message"] and NODE in cond["message"]
    events = wait_for(lambda: node_events(admin, NODE, "MIGConfigWaiting"), 30, message="waiting event")
    assert f"{namespace}/cuda-job" in events[0]["message"]
    got = labels(admin)
    assert got[STATE] == "pending" and got[MANAGER] == PAUSED
    assert sim.mig.applied(NODE) == "all-1g.10gb"

    operator.op.stop(signal.SIGKILL)  # mid-change, the hold in place
    admin.delete("Pod", "cuda-job", namespace)
    wait_for(lambda: admin.get("Pod", "cuda-job", namespace) is None, 60, message="GPU pod gone")
    operator.op = OperatorProcess(operator.cluster, operator.log).start()
    try:
        wait_for(lambda: settled(admin, "all-3g.40gb", sim=sim), WAIT, interval=0.5, message="all-3g.40gb success")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{explain(admin, operator, sim)}") from None
    assert sim.mig.applied(NODE) == "all-3g.40gb"
    assert not paused_labels(admin, NODE) and not paused_labels(admin, OTHER)


def test_an_injected_failure_ends_failed_with_the_operands_restored(
    admin: Kube, operator: Running, sim: NodeSimulator
) -> None:
    sim.mig.fail(OTHER)
    try:
        wait_for(lambda: settled(admin, "all-disabled", node=OTHER), WAIT, interval=0.5, message="other ready")
        relabel(admin, "all-3g.40gb", node=OTHER)
        wait_for(lambda: labels(admin, OTHER).get(STATE) == "pending", WAIT, interval=0.2, message="pending")
        got = wait_for(lambda: settled(admin, "all-3g.40gb", "failed", node=OTHER), WAIT, interval=0.5,
                       message="failed, operands restored")  # fmt: skip
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{explain(admin, operator, sim)}") from None
    finally:
        sim.mig.fail(OTHER, on=False)
    for op in ("device-plugin", "gpu-feature-discovery", "dcgm-exporter"):
        assert got[f"nvidia.com/gpu.deploy.{op}"] == "true"
    assert sim.mig.applied(OTHER) == "all-disabled"


def test_operands_paused_by_a_mig_manager_that_is_gone_are_restored(
    admin: Kube, operator: Running, sim: NodeSimulator
) -> None:
    sim.mig.delay = 60.0
    try:
        relabel(admin, "all-7g.80gb")
        wait_for(lambda: labels(admin).get("nvidia.com/gpu.deploy.device-plugin") == PAUSED, WAIT, interval=0.2,
                 message="mig-manager mid-change")  # fmt: skip
        admin.merge_patch("ClusterPolicy", "cluster-policy", {"spec": {"migManager": {"enabled": False}}})
        wait_for(lambda: not paused_labels(admin) and labels(admin).get(STATE) == "failed", WAIT, interval=0.5,
                 message="paused labels restored")  # fmt: skip
        # The event goes out just after the labels, in the same pass: the labels may be seen first.
        events = wait_for(lambda: node_events(admin, NODE, "MIGOperandsRestored"), 10, message="restored event")
        assert "mig-manager is gone" in events[-1]["message"]
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{explain(admin, operator, sim)}") from None
    finally:
        sim.mig.delay = 2.0
        admin.merge_patch("ClusterPolicy", "cluster-policy", {"spec": {"migManager": {"enabled": True}}})
    wait_for(
        lambda: settled(admin, "all-7g.80gb", sim=sim), WAIT, interval=0.5, message="applied once mig-manager is back"
    )


def test_with_eviction_allowed_gpu_pods_are_evicted_and_the_change_goes_ahead(
    admin: Kube, operator: Running, sim: NodeSimulator, namespace: str
) -> None:
    # The pod is bare (no controller recreates it): as kubectl drain, only drain.force lets it go.
    admin.merge_patch(
        "ClusterPolicy", "cluster-policy",
        {"spec": {"driver": {"upgradePolicy": {"drain": {"enable": True, "force": True}}}}},
    )  # fmt: skip
    try:
        admin.create(gpu_pod(namespace, "infer"))
        relabel(admin, "all-2g.20gb")
        wait_for(lambda: admin.get("Pod", "infer", namespace) is None, WAIT, interval=0.5, message="GPU pod evicted")
        wait_for(lambda: settled(admin, "all-2g.20gb", sim=sim), WAIT, interval=0.5, message="2g.20gb applied")
        # Cordoned before the eviction (as kubectl drain), as the operator's: uncordoned once the change is over.
        wait_for(lambda: uncordoned(admin), WAIT, interval=0.5, message="node uncordoned, the cordon's mark gone")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{explain(admin, operator, sim)}") from None
    finally:
        admin.merge_patch(
            "ClusterPolicy", "cluster-policy",
            {"spec": {"driver": {"upgradePolicy": {"drain": {"enable": False, "force": False}}}}},
        )  # fmt: skip


def uncordoned(admin: Kube, node: str = NODE) -> bool:
    obj = admin.get("Node", node) or {}
    mark = (obj.get("metadata") or {}).get("annotations") or {}
    return not (obj.get("spec") or {}).get("unschedulable") and "nvidia.com/gpu-operator.mig-cordoned" not in mark


def being_deleted(admin: Kube, pod: str) -> bool:
    return bool(((admin.get("Pod", pod, NAMESPACE) or {}).get("metadata") or {}).get("deletionTimestamp"))


def not_ready(admin: Kube, node: str) -> None:
    """The node goes NotReady for good, as one whose kubelet stopped: kwok no longer manages it, Ready is False."""
    admin.merge_patch("Node", node, {"metadata": {"annotations": {KWOK_ANNOTATION: None}}})

    def ready() -> bool:
        obj = admin.get("Node", node)
        assert obj is not None
        return any(c["type"] == "Ready" and c["status"] == "True" for c in obj["status"]["conditions"])

    # A kwok heartbeat already under way when its annotation went can write Ready back once (seen in CI): the
    # condition is set again until it stays False for 2 s.
    steady_since = None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if ready():
            steady_since = None
            obj = admin.get("Node", node)
            assert obj is not None
            conditions = [
                dict(c, status="False", reason="KubeletNotReady") if c["type"] == "Ready" else c
                for c in obj["status"]["conditions"]
            ]
            admin.merge_patch("Node", node, {"status": {"conditions": conditions}}, sub="status")
        elif steady_since is None:
            steady_since = time.monotonic()
        elif time.monotonic() - steady_since >= 2:
            return
        time.sleep(0.2)
    raise AssertionError(f"{node} did not stay NotReady")


def test_deleting_the_policy_mid_change_lets_it_go_only_once_mig_manager_is_gone(
    admin: Kube, operator: Running, sim: NodeSimulator
) -> None:
    """Last in the module: the policy goes. mig-manager sets deploy labels of its own accord, so the operator
    removes its node labels only once no mig-manager process is left to set them back (the chart's clean-up hook
    once found paused labels written after the clean-up). A finalizer of the test's holds each pod while it is
    deleted, as a kubelet ending its container does. The operator waits for the pod on a Ready node, not for the
    one on a node gone NotReady: nothing would end that one."""
    deploy, hold = "nvidia.com/gpu.deploy.", "e2e.gpu-operator/hold"
    sim.mig.delay = 30.0
    held: dict[str, str] = {}
    try:
        for node in (NODE, OTHER):
            relabel(admin, "all-1g.10gb", node)
        wait_for(lambda: all(labels(admin, n).get(deploy + "device-plugin") == PAUSED for n in (NODE, OTHER)), WAIT,
                 interval=0.2, message="mig-manager mid-change on both nodes")  # fmt: skip
        pods = {p["spec"].get("nodeName"): p["metadata"]["name"]
                for p in admin.list("Pod", NAMESPACE, label_selector="app=nvidia-mig-manager")}  # fmt: skip
        for node in (NODE, OTHER):
            admin.merge_patch("Pod", pods[node], {"metadata": {"finalizers": [hold]}}, NAMESPACE)
            held[node] = pods[node]
        assert all(APPROVED in labels(admin, n) for n in (NODE, OTHER)), "no layout recorded as let through"
        admin.delete("ClusterPolicy", "cluster-policy")
        wait_for(lambda: admin.get("DaemonSet", "nvidia-mig-manager", NAMESPACE) is None, 30, interval=0.2,
                 message="the operator deletes mig-manager's DaemonSet first")  # fmt: skip
        wait_for(lambda: all(being_deleted(admin, p) for p in held.values()), 30, interval=0.2,
                 message="mig-manager's pods being deleted")  # fmt: skip
        not_ready(admin, NODE)
        time.sleep(3)  # passes go by (pod, DaemonSet and node events woke them): the policy waits for OTHER's pod
        assert admin.get("ClusterPolicy", "cluster-policy") is not None, "let go while mig-manager still ran"
        assert labels(admin, OTHER)[deploy + "device-plugin"] == PAUSED, "labels removed while mig-manager still ran"
        admin.merge_patch("Pod", held.pop(OTHER), {"metadata": {"finalizers": None}}, NAMESPACE)
        wait_for(lambda: admin.get("ClusterPolicy", "cluster-policy") is None, 60, interval=0.2, message="policy gone")
        assert admin.get("Pod", held[NODE], NAMESPACE) is not None, "its pod gone: nothing shown"
        for node in (NODE, OTHER):
            left = {k: v for k, v in labels(admin, node).items() if k.startswith(deploy)}
            assert left == {}, f"the operator's node labels on {node}, paused ones too, are removed"
            assert APPROVED not in labels(admin, node), f"the operator's record of {node}'s layout is removed"
            assert labels(admin, node).get(STATE) == "pending", "the change cut short is left as mig-manager left it"
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{explain(admin, operator, sim)}") from None
    finally:
        sim.mig.delay = 2.0
        for pod in held.values():
            admin.merge_patch("Pod", pod, {"metadata": {"finalizers": None}}, NAMESPACE)
