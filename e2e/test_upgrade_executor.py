"""The upgrade executor against the API server: each node's actions in order, the nodes side by side, and a node's
first failed write stopping only that node's remaining actions; and the adapter's reads of workload pods."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from e2e.cluster.localcluster import LocalCluster
from e2e.cluster.nodes import create_nodes, make_node
from e2e.operator_process import delete_policies, install_crds_and_rbac, policy_from_sample
from gpu_operator.api import DriverUpgradePolicySpec
from gpu_operator.events import EventRecorder
from gpu_operator.kube import Kube
from gpu_operator.upgrade import STATE_LABEL
from gpu_operator.upgrade.adapter import Executor, workload_pods
from gpu_operator.upgrade.model import Action, Annotate, Cordon, Event, Plan, SetState, UpgradeNode


@pytest.fixture
def admin(cluster: LocalCluster) -> Kube:
    return Kube.connect(str(cluster.kubeconfig))


@pytest.fixture
def names(admin: Kube) -> Iterator[list[str]]:
    run = uuid.uuid4().hex[:6]
    made = [f"exec-{run}-{i}" for i in range(12)]
    create_nodes(admin.client, [make_node(n, "cpu") for n in made])
    yield made
    for n in made:
        admin.delete("Node", n)


def events_on(admin: Kube, node: str) -> list[str]:
    found = admin.list("Event", "default", field_selector=f"involvedObject.name={node}")
    return [e["message"] for e in found if e.get("reason") == "GPUDriverUpgrade"]


def test_each_node_in_order_and_a_failed_write_stops_only_its_node(admin: Kube, names: list[str]) -> None:
    bad, *good = names
    actions: list[Action] = [
        # The bad node: its first patch is refused (an invalid annotation key), so nothing after it happens.
        Annotate(bad, "not a valid key!", "x"),
        Event(bad, "Normal", "GPUDriverUpgrade", "must not be written"),
        SetState(bad, "cordon-required"),
    ]
    for n in good:  # the rest: a patch, an event between two patches, then the last patch
        actions += [
            SetState(n, "cordon-required"),
            Cordon(n),
            Event(n, "Normal", "GPUDriverUpgrade", f"{n} cordoned"),
            SetState(n, "wait-for-jobs-required"),
        ]
    Executor(admin, "default", EventRecorder(admin)).run(Plan(actions=actions))
    for n in good:
        node = admin.get("Node", n) or {}
        assert node["metadata"]["labels"][STATE_LABEL] == "wait-for-jobs-required", n
        assert node["spec"].get("unschedulable") is True, n
        assert events_on(admin, n) == [f"{n} cordoned"]
    node = admin.get("Node", bad) or {}
    assert STATE_LABEL not in node["metadata"].get("labels", {})
    assert events_on(admin, bad) == []


def test_out_of_budget_the_nodes_nearest_done_are_written_and_the_rest_left_for_the_next_pass(
    admin: Kube, names: list[str]
) -> None:
    # Twelve nodes, one patch each, in name order; no time to spare: only the first WRITERS (8) nodes begin, and
    # they are the ones nearest the end of their upgrade, wherever the plan put them.
    labelled, starting, finishing = names[:4], names[4:8], names[8:]
    states = {**dict.fromkeys(starting, "upgrade-required"), **dict.fromkeys(finishing, "uncordon-required")}
    plan = Plan(actions=[SetState(n, "cordon-required") for n in names])
    ran = Executor(admin, "default", EventRecorder(admin)).run(plan, states, budget_s=0.0)
    assert ran.left == set(labelled) and ran.dropped == set()
    for n in names:
        labels = (admin.get("Node", n) or {})["metadata"].get("labels", {})
        assert labels.get(STATE_LABEL) == (None if n in labelled else "cordon-required"), n


def test_a_node_that_moved_on_since_the_plan_is_not_written_and_one_node_returns_its_answer(
    admin: Kube, names: list[str]
) -> None:
    # Between passes a node's new pods moved it on (upgrade.orchestrate.advance): the pass's older plan for it
    # must not write it back; the other nodes' actions go as planned.
    moved, *rest = names[:4]
    executor = Executor(admin, "default", EventRecorder(admin))
    answer = executor.node([SetState(moved, "upgrade-done"), Annotate(moved, "nvidia.com/gpu-driver-upgrade-x", "1")])
    assert answer is not None and answer["metadata"]["labels"][STATE_LABEL] == "upgrade-done"
    assert answer["metadata"]["annotations"]["nvidia.com/gpu-driver-upgrade-x"] == "1"
    plan = Plan(actions=[SetState(n, "validation-required") for n in [moved, *rest]])
    ran = executor.run(plan, moved=lambda n: n == moved)
    assert ran.left == set() and ran.dropped == {moved}
    assert (admin.get("Node", moved) or {})["metadata"]["labels"][STATE_LABEL] == "upgrade-done"
    for n in rest:
        assert (admin.get("Node", n) or {})["metadata"]["labels"][STATE_LABEL] == "validation-required", n
    # A refused write: no answer.
    assert executor.node([Annotate(moved, "not a valid key!", "x")]) is None


@pytest.mark.parametrize("nvidia_drivers", [False, True], ids=["clusterpolicy-driver", "nvidiadrivers"])
def test_a_pass_leaves_unwritten_a_node_that_moved_on_since_its_snapshot(admin: Kube, nvidia_drivers: bool) -> None:
    # The runtime moves a node's upgrade on between passes (Operator._advance) and tells the reconciler so through
    # `moved`: the pass, with its older snapshot, must not write that node back, under either driver setting.
    from gpu_operator.observe import observe
    from gpu_operator.reconciler import Reconciler

    install_crds_and_rbac(admin)
    delete_policies(admin, 30, leftover=True)
    run = uuid.uuid4().hex[:6]
    namespace, moved, other = f"moves-{run}", f"moves-{run}-0", f"moves-{run}-1"
    nodes = [make_node(n, "h100x8") for n in (moved, other)]
    for node in nodes:
        node["metadata"]["labels"][STATE_LABEL] = "uncordon-required"
        node["spec"] = {**node.get("spec", {}), "unschedulable": True}
    create_nodes(admin.client, nodes)
    overrides: dict[str, Any] = {"driver.useNvidiaDriverCRD": True} if nvidia_drivers else {}
    policy = admin.create(policy_from_sample(**overrides))
    driver = {key: policy["spec"]["driver"][key] for key in ("repository", "image", "version")}
    if nvidia_drivers:
        admin.create({"apiVersion": "nvidia.com/v1alpha1", "kind": "NVIDIADriver", "metadata": {"name": "default"},
                      "spec": {**driver, "default": True, "upgradePolicy": {"autoUpgrade": True}}})  # fmt: skip
    try:
        reconciler = Reconciler(admin, namespace)
        reconciler.moved = lambda facts: facts.name == moved
        snap = observe(admin, namespace)
        reconciler.reconcile(snap.with_nodes({n: snap.nodes[n] for n in (moved, other)}))
        got = {n: (admin.get("Node", n) or {}) for n in (moved, other)}
        assert got[other]["metadata"]["labels"][STATE_LABEL] == "upgrade-done", "the pass wrote the other node"
        assert not got[other]["spec"].get("unschedulable")
        assert got[moved]["metadata"]["labels"][STATE_LABEL] == "uncordon-required", "the moved node left alone"
        assert got[moved]["spec"].get("unschedulable") is True
    finally:
        admin.merge_patch("ClusterPolicy", "cluster-policy", {"metadata": {"finalizers": None}})
        admin.delete("ClusterPolicy", "cluster-policy")
        if nvidia_drivers:
            admin.delete("NVIDIADriver", "default")
        admin.delete("Namespace", namespace)
        for n in (moved, other):
            admin.delete("Node", n)


def test_workload_pods_are_read_only_under_a_policy_whose_steps_read_them(admin: Kube, names: list[str]) -> None:
    # A node seen where wait-for-jobs, pod deletion or drain would read its pods (a pass cut short, the policy changed
    # mid-upgrade): its pods are listed only with autoUpgrade on and one of those steps reading them.
    node = names[0]
    meta = {"generateName": "work-", "namespace": "default"}
    pod = admin.create({"apiVersion": "v1", "kind": "Pod", "metadata": meta,
                        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "cuda"}]}})  # fmt: skip
    seen = [UpgradeNode(node, labels={STATE_LABEL: "pod-deletion-required"}), UpgradeNode(names[1])]

    def listed(**fields: Any) -> tuple[int, list[str]]:
        policy = DriverUpgradePolicySpec.model_validate({"autoUpgrade": True, **fields})
        before = admin.requests[("GET", "pods")]
        got = [p.name for p in workload_pods(admin, seen, policy)]
        return admin.requests[("GET", "pods")] - before, got

    try:
        mine = (1, [pod["metadata"]["name"]])
        assert listed(podDeletion={}) == mine
        assert listed(waitForCompletion={"podSelector": "app=train"}) == mine
        assert listed(drain={"enable": True}) == mine
        assert listed() == (0, []), "no step reads them"
        assert listed(waitForCompletion={"podSelector": " "}, drain={"enable": False}) == (0, [])
        assert listed(podDeletion={}, autoUpgrade=False) == (0, []), "autoUpgrade off: nothing reads them"
    finally:
        admin.delete("Pod", pod["metadata"]["name"], "default")
