"""Unit tests of the driver-upgrade planner: every transition of REFERENCE §5 and its edges."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from gpu_operator.api import DrainSpec, DriverUpgradePolicySpec, PodDeletionSpec, WaitForCompletionSpec
from gpu_operator.kube import ApiError
from gpu_operator.nodes import NodeFacts
from gpu_operator.observe import PodIndex, pod_projection
from gpu_operator.states.base import STATE_LABEL as OPERAND_STATE_LABEL
from gpu_operator.upgrade import (
    DELETED_DRIVER_POD_ANNOTATION,
    DRAIN_SKIP_LABEL,
    DRAIN_START_ANNOTATION,
    EVENT_REASON,
    FAILURE_REASON_ANNOTATION,
    INITIAL_UNSCHEDULABLE_ANNOTATION,
    NEEDS_PODS,
    POD_DELETION_START_ANNOTATION,
    REQUESTED_ANNOTATION,
    SKIP_LABEL,
    STATE_LABEL,
    VALIDATION_START_ANNOTATION,
    WAIT_FOR_JOBS_START_ANNOTATION,
    Annotate,
    Cordon,
    DeleteDriverPod,
    Event,
    EvictPods,
    Limit,
    Plan,
    SelectorError,
    SetState,
    Uncordon,
    UpgradeNode,
    WorkloadPod,
    max_unavailable_count,
    parse_selector,
    plan,
    planner,
    preview_joint_waves,
    preview_waves,
)
from gpu_operator.upgrade.adapter import UpgradeInputs, upgrade_node, upgrade_nodes

OLD, NEW = "rev-old", "rev-new"
DEPLOY_DRIVER = "nvidia.com/gpu.deploy.driver"
NOW = 10_000.0


def driver_pod(
    name: str = "nvidia-driver-x",
    rev: str = OLD,
    ready: bool = True,
    phase: str = "Running",
    restarts: int = 0,
    terminating: bool = False,
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": {"controller-revision-hash": rev}}
    if terminating:
        meta["deletionTimestamp"] = "2025-01-01T00:00:00Z"
    return {
        "metadata": meta,
        "status": {
            "phase": phase,
            "containerStatuses": [{"name": "nvidia-driver-ctr", "ready": ready, "restartCount": restarts}],
        },
    }


def validator_pod(ready: bool = True) -> dict[str, Any]:
    return driver_pod("nvidia-operator-validator-x", rev="v", ready=ready)


def make_node(
    name: str = "n1",
    state: str | None = None,
    *,
    rev: str | None = OLD,
    pod: dict[str, Any] | None = None,
    revision: str | None = NEW,
    unschedulable: bool = False,
    ready: bool = True,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    validator: dict[str, Any] | None = None,
) -> UpgradeNode:
    all_labels = dict(labels or {})
    if state is not None:
        all_labels[STATE_LABEL] = state
    if pod is None and rev is not None:
        pod = driver_pod(f"nvidia-driver-{name}", rev=rev)
    return UpgradeNode(
        name=name,
        labels=all_labels,
        annotations=dict(annotations or {}),
        unschedulable=unschedulable,
        ready=ready,
        driver_pod=pod,
        driver_revision=revision,
        validator_pod=validator if validator is not None else validator_pod(),
    )


def policy(**kw: Any) -> DriverUpgradePolicySpec:
    kw.setdefault("auto_upgrade", True)
    return DriverUpgradePolicySpec(**kw)


def gpu_pod(name: str, node: str = "n1", **kw: Any) -> WorkloadPod:
    kw.setdefault("uses_gpu", True)
    return WorkloadPod(namespace="default", name=name, node=node, **kw)


def states(p: Plan) -> dict[str, str]:
    return {a.node: a.state for a in p.actions if isinstance(a, SetState)}


def of(p: Plan, kind: type) -> list[Any]:
    return [a for a in p.actions if isinstance(a, kind)]


def reading_pods(**kw: Any) -> DriverUpgradePolicySpec:
    """A policy whose upgrade reads the node's workload pods after the cordon (the chart's default: podDeletion)."""
    kw.setdefault("pod_deletion", PodDeletionSpec())
    return policy(**kw)


def run(nodes: list[UpgradeNode], pods: list[WorkloadPod] | None = None, **kw: Any) -> Plan:
    pol = kw.pop("pol", None) or policy()
    return plan(nodes, pods or [], pol, kw.pop("now", NOW), **kw)


# unknown / done


def test_unknown_in_sync_becomes_done() -> None:
    p = run([make_node(rev=NEW)])
    assert states(p) == {"n1": "upgrade-done"}
    assert p.waiting == {}


def test_done_in_sync_does_nothing() -> None:
    p = run([make_node(state="upgrade-done", rev=NEW)])
    assert p.actions == [] and p.waiting == {}


def test_out_of_date_becomes_required_and_its_start_says_why() -> None:
    # No slot (maxUnavailable 0): the node stays upgrade-required, without an event yet.
    p = run([make_node(state="upgrade-done", rev=OLD)], pol=policy(max_unavailable=0))
    assert states(p) == {"n1": "upgrade-required"} and of(p, Event) == []
    assert "waiting for an upgrade slot" in p.waiting["n1"]
    # A later pass grants the slot: the event names the revisions.
    p = run([make_node(state="upgrade-required", rev=OLD)], pol=reading_pods())
    (event,) = of(p, Event)
    assert event.reason == EVENT_REASON and event.type == "Normal"
    assert event.message == (
        "upgrade-required -> cordon-required -> wait-for-jobs-required: driver pod nvidia-driver-n1 runs revision "
        "rev-old, its DaemonSet is at rev-new; upgrade slot granted; node cordoned"
    )


def test_out_of_date_with_a_slot_starts_and_is_cordoned_in_one_patch_and_one_event() -> None:
    p = run([make_node(state="upgrade-done", rev=OLD)], pol=reading_pods())
    assert p.started == ("n1",)
    assert [a.state for a in of(p, SetState)] == ["upgrade-required", "cordon-required", "wait-for-jobs-required"]
    assert of(p, Cordon) == [Cordon("n1")]
    (event,) = of(p, Event)
    assert p.actions[-1] == event  # node-patch actions first: the adapter folds them into one patch
    assert event.message.startswith("upgrade-done -> upgrade-required -> cordon-required -> wait-for-jobs-required: ")
    assert "rev-old" in event.message and "upgrade slot granted" in event.message and "cordoned" in event.message
    # The plan stops at the cordon: pod deletion reads the node's pods, read fresh once the cordon is answered.
    assert of(p, DeleteDriverPod) == [] and "n1" not in p.waiting


@pytest.mark.parametrize("reads", ["waitForCompletion", "podDeletion", "drain", None])
def test_the_cordon_stops_the_chain_only_when_the_policy_reads_workload_pods(reads: str | None) -> None:
    pol = {
        "waitForCompletion": policy(wait_for_completion=WaitForCompletionSpec(pod_selector="app=train")),
        "podDeletion": reading_pods(),
        "drain": policy(drain=DrainSpec(enable=True)),
        None: policy(),
    }[reads]
    p = run([make_node(state="upgrade-done", rev=OLD)], pol=pol)
    assert p.started == ("n1",) and of(p, Cordon) == [Cordon("n1")] and len(of(p, Event)) == 1
    if reads is not None:
        assert states(p)["n1"] == "wait-for-jobs-required" and of(p, DeleteDriverPod) == []
        return
    # Nothing reads pods after the cordon: the driver pod's deletion follows in the same pass, after the cordon
    # and the new state (the adapter folds those into one patch, sent before the deletion).
    assert states(p)["n1"] == "pod-restart-required"
    kinds = [type(a) for a in p.actions]
    assert kinds.index(Cordon) < kinds.index(DeleteDriverPod)
    assert max(i for i, k in enumerate(kinds) if k is SetState) < kinds.index(DeleteDriverPod)
    assert of(p, Annotate)[-1] == Annotate("n1", DELETED_DRIVER_POD_ANNOTATION, "nvidia-driver-n1")
    assert of(p, DeleteDriverPod) == [DeleteDriverPod("n1", "nvidia-driver-n1")]
    assert p.waiting["n1"] == "deleted driver pod nvidia-driver-n1; waiting for its replacement"


def test_requested_annotation_starts_upgrade_of_in_sync_node() -> None:
    p = run([make_node(rev=NEW, annotations={REQUESTED_ANNOTATION: "true"})])
    assert states(p) == {"n1": "pod-restart-required"} and p.started == ("n1",)


def test_done_node_sheds_leftover_bookkeeping() -> None:
    ann = {INITIAL_UNSCHEDULABLE_ANNOTATION: "true", VALIDATION_START_ANNOTATION: "5"}
    p = run([make_node(state="upgrade-done", rev=NEW, unschedulable=True, annotations=ann)])
    assert sorted(a.key for a in of(p, Annotate) if a.value is None) == sorted(ann)
    assert states(p) == {} and of(p, Uncordon) == []


def test_unknown_without_driver_pod_waits() -> None:
    p = run([make_node(rev=None)])
    assert p.actions == []
    assert "no driver pod" in p.waiting["n1"]


def test_unknown_label_value_is_overwritten() -> None:
    p = run([make_node(state="bogus", rev=NEW)])
    assert states(p) == {"n1": "upgrade-done"}


def test_unknown_revision_is_not_out_of_date() -> None:
    p = run([make_node(rev=OLD, revision=None)])
    assert states(p) == {"n1": "upgrade-done"}


def test_pre_cordoned_node_is_remembered() -> None:
    p = run([make_node(state="upgrade-done", unschedulable=True)])
    ann = of(p, Annotate)
    assert Annotate("n1", INITIAL_UNSCHEDULABLE_ANNOTATION, "true") in ann
    # The annotation is written before the state label.
    assert p.actions.index(ann[0]) < p.actions.index(SetState("n1", "upgrade-required"))


def test_stale_initial_annotation_is_dropped_when_node_was_uncordoned() -> None:
    p = run([make_node(annotations={INITIAL_UNSCHEDULABLE_ANNOTATION: "true"})])
    assert Annotate("n1", INITIAL_UNSCHEDULABLE_ANNOTATION, None) in p.actions


def test_stale_bookkeeping_is_cleared_when_an_upgrade_begins() -> None:
    p = run([make_node(annotations={POD_DELETION_START_ANNOTATION: "5"})])
    assert Annotate("n1", POD_DELETION_START_ANNOTATION, None) in p.actions


# upgrade-required and slots


def test_required_starts_within_max_parallel() -> None:
    nodes = [make_node(f"n{i}", "upgrade-required") for i in range(3)]
    p = run(nodes, pol=policy(max_parallel_upgrades=2, max_unavailable="100%"))
    assert states(p) == {"n0": "pod-restart-required", "n1": "pod-restart-required"}
    assert p.waiting["n2"] == "waiting for an upgrade slot: 2 of 2 in progress (maxParallelUpgrades)"
    assert p.counters.available == 2 and p.counters.pending == 3


def test_in_progress_nodes_take_slots() -> None:
    nodes = [make_node("a", "drain-required", unschedulable=True), make_node("b", "upgrade-required")]
    p = run(nodes, pol=policy(max_parallel_upgrades=1, max_unavailable="100%"))
    assert "b" not in states(p)
    assert "1 of 1 in progress" in p.waiting["b"]


def test_failed_nodes_hold_their_slot_and_say_so() -> None:
    nodes = [make_node("a", "upgrade-failed", unschedulable=True), make_node("b", "upgrade-required")]
    p = run(nodes, pol=policy(max_parallel_upgrades=1, max_unavailable="100%"))
    assert "b" not in states(p)
    assert "1 of them upgrade-failed" in p.waiting["b"]
    assert p.counters.failed == 1 and p.counters.in_progress == 1


def test_max_parallel_zero_is_unlimited() -> None:
    nodes = [make_node(f"n{i}", "upgrade-required") for i in range(5)]
    p = run(nodes, pol=policy(max_parallel_upgrades=0, max_unavailable="100%"))
    assert len(states(p)) == 5


def test_max_unavailable_caps_parallel() -> None:
    nodes = [make_node(f"n{i}", "upgrade-required") for i in range(8)]
    p = run(nodes, pol=policy(max_parallel_upgrades=0, max_unavailable="25%"))
    assert sorted(states(p)) == ["n0", "n1"]
    assert p.waiting["n2"] == (
        "waiting for an upgrade slot: 2 of at most 2 nodes unavailable (maxUnavailable); "
        "cordoned, NotReady or upgrading: n0, n1"
    )


def test_with_unlimited_parallel_upgrades_the_upgrades_available_are_the_nodes_that_need_one() -> None:
    """k8s-operator-libs GetUpgradesAvailable: maxParallelUpgrades 0 gives len(upgrade-required), then capped by
    maxUnavailable. Ours gave maxUnavailable less the unavailable nodes: 2 of 8 done nodes at 25%, a gauge (and
    status.upgrade.available) saying upgrades could start where none was due."""
    done = [make_node(f"n{i}", "upgrade-done", rev=NEW) for i in range(8)]
    pol = policy(max_parallel_upgrades=0, max_unavailable="25%")
    assert run(done, pol=pol).counters.available == 0
    assert run([make_node("n0", "upgrade-required"), *done[1:]], pol=pol).counters.available == 1


def test_max_unavailable_int() -> None:
    nodes = [make_node(f"n{i}", "upgrade-required") for i in range(8)]
    p = run(nodes, pol=policy(max_parallel_upgrades=5, max_unavailable=3))
    assert len(states(p)) == 3


def test_max_unavailable_percent_rounds_up() -> None:
    assert max_unavailable_count("25%", 5) == 2
    assert max_unavailable_count("10%", 1) == 1
    assert max_unavailable_count("0%", 10) == 0
    assert max_unavailable_count("100%", 7) == 7
    assert max_unavailable_count(3, 10) == 3
    assert max_unavailable_count("3", 10) == 3
    assert max_unavailable_count(None, 9) == 9


def test_max_unavailable_percent_is_of_the_nodes_with_a_driver_pod() -> None:
    """maxUnavailable's percentage is of the nodes that run a driver pod (upstream's GetTotalManagedNodes over the
    state it builds from the driver pods; its values.yaml: "nodes with the driver installed"), and of those mid-upgrade
    whose driver pod is being replaced. A GPU node no driver pod runs on (no NFD OS labels, a taint the DaemonSet does
    not tolerate, a new pool not rolled out) used to count too: 25% of 4 driver nodes and one such node was
    ceil(1.25) = 2 nodes down at once, not 1."""
    nodes = [make_node(f"n{i}", "upgrade-required") for i in range(4)] + [make_node("n9", rev=None)]
    pol = policy(max_parallel_upgrades=0, max_unavailable="25%")
    p = run(nodes, pol=pol)
    assert (p.counters.total, p.counters.max_unavailable) == (4, 1)
    assert p.started == ("n0",)
    assert p.waiting["n9"] == "no driver pod on the node yet"
    assert preview_waves(nodes, pol) == [["n0"], ["n1"], ["n2"], ["n3"]]
    # Nodes whose driver pod the upgrade deleted still count: the base stays while their replacements come.
    replacing = [make_node(f"n{i}", "pod-restart-required", rev=None, unschedulable=True,
                           annotations={DELETED_DRIVER_POD_ANNOTATION: f"nvidia-driver-n{i}"}) for i in range(2)]
    nodes = replacing + [make_node(f"n{i}", "upgrade-required") for i in range(2, 6)]
    p = run(nodes, pol=policy(max_parallel_upgrades=0, max_unavailable="50%"))
    assert (p.counters.total, p.counters.max_unavailable) == (6, 3)
    assert p.started == ("n2",)


def test_cordoned_and_not_ready_nodes_count_as_unavailable() -> None:
    nodes = [
        make_node("a", "upgrade-done", rev=NEW, unschedulable=True),  # cordoned by someone, not upgrading
        make_node("b", "upgrade-done", rev=NEW, ready=False),
        make_node("c", "upgrade-required"),
        make_node("d", "upgrade-required"),
    ]
    p = run(nodes, pol=policy(max_parallel_upgrades=0, max_unavailable=3))
    assert states(p) == {"c": "pod-restart-required"}
    assert "3 of at most 3 nodes unavailable" in p.waiting["d"]
    assert p.waiting["d"].endswith("cordoned, NotReady or upgrading: a, b, c")
    assert p.counters.unavailable == 2 and p.counters.available == 1


def test_a_node_without_a_driver_pod_does_not_count_as_unavailable() -> None:
    """Upstream's GetCurrentUnavailableNodes walks the state BuildState makes from the driver pods, as its total does;
    a GPU node no driver pod runs on (a taint the DaemonSet does not tolerate, no NFD OS labels, a pool not rolled out)
    was left out of the total but still counted as unavailable when NotReady or cordoned: with 4 driver nodes at 25%
    (1 node) it used up the whole budget, and their rollout never started. A node mid-upgrade whose driver pod the
    upgrade deleted still counts in both, as upstream counts it (cordoned) once its new pod is there."""
    pol = policy(max_parallel_upgrades=0, max_unavailable="25%")
    for outsider in (make_node("n9", rev=None, ready=False), make_node("n9", rev=None, unschedulable=True)):
        nodes = [make_node(f"n{i}", "upgrade-required") for i in range(4)] + [outsider]
        p = run(nodes, pol=pol)
        assert (p.counters.total, p.counters.max_unavailable, p.counters.unavailable) == (4, 1, 0)
        assert p.started == ("n0",)
        assert p.waiting["n1"] == (
            "waiting for an upgrade slot: 1 of at most 1 nodes unavailable (maxUnavailable); "
            "cordoned, NotReady or upgrading: n0"
        )
        assert preview_waves(nodes, pol) == [["n0"], ["n1"], ["n2"], ["n3"]]
        limit = Limit.over(nodes, pol, "all NVIDIADrivers")  # the ClusterPolicy's limit over every NVIDIADriver
        assert (limit.unavailable, limit.available) == (0, 1)
        assert preview_joint_waves([(nodes[:2], pol), (nodes[2:], pol)], pol) == [["n0"], ["n1"], ["n2"], ["n3"]]
    # Its driver pod deleted by the upgrade (pod-restart-required), a node counts in the total and as unavailable.
    restarting = make_node("r", "pod-restart-required", rev=None, unschedulable=True,
                           annotations={DELETED_DRIVER_POD_ANNOTATION: "nvidia-driver-r"})  # fmt: skip
    nodes = [make_node(f"n{i}", "upgrade-required") for i in range(4)] + [restarting, make_node("n9", rev=None,
                                                                                                 ready=False)]
    p = run(nodes, pol=pol)
    assert (p.counters.total, p.counters.max_unavailable, p.counters.unavailable) == (5, 2, 1)
    assert p.started == ("n0",)
    assert p.waiting["n1"].endswith("2 of at most 2 nodes unavailable (maxUnavailable); cordoned, NotReady or "
                                    "upgrading: n0, r")  # fmt: skip
    # Not counted while it waits, a cordoned upgrade-required node whose driver pod is gone (deleted by someone) is
    # once it starts: the start costs budget (were it free, as for a counted cordoned node, b would start too).
    nodes = [make_node("a", "upgrade-required", rev=None, unschedulable=True), make_node("b", "upgrade-required")]
    p = run(nodes, pol=policy(max_parallel_upgrades=0, max_unavailable=1))
    assert p.started == ("a",)
    assert "1 of at most 1 nodes unavailable" in p.waiting["b"]


def test_already_unavailable_node_needs_no_unavailable_budget() -> None:
    nodes = [make_node("a", "upgrade-required", unschedulable=True), make_node("b", "upgrade-required")]
    p = run(nodes, pol=policy(max_parallel_upgrades=0, max_unavailable=1))
    # a is already unavailable: upgrading it costs nothing; b would make a second node unavailable.
    assert states(p) == {"a": "pod-restart-required"}


def test_skip_label() -> None:
    nodes = [make_node("a", "upgrade-required", labels={SKIP_LABEL: "true"}), make_node("b", "upgrade-required")]
    p = run(nodes, pol=policy(max_parallel_upgrades=1, max_unavailable="100%"))
    assert states(p) == {"b": "pod-restart-required"}
    assert "skipped" in p.waiting["a"]
    assert p.counters.skipped == 1 and p.counters.pending == 1


def test_required_node_rolled_back_is_done() -> None:
    p = run([make_node("a", "upgrade-required", rev=NEW)])
    assert states(p) == {"a": "upgrade-done"}


def test_required_node_cordoned_by_a_failed_attempt_goes_through_the_upgrade() -> None:
    # In sync, but cordoned by us: a failed attempt relabelled to retry (its failure reason still there). It must go
    # round to be uncordoned.
    failed = {FAILURE_REASON_ANNOTATION: "driver pod crash-looping"}
    node = make_node("a", "upgrade-required", rev=NEW, unschedulable=True, annotations=failed)
    p = run([node], pol=reading_pods())
    assert states(p) == {"a": "wait-for-jobs-required"}
    # Reading no pods, it goes round in one pass: nothing to restart, its driver and validator Ready.
    p = run([node])
    assert states(p) == {"a": "upgrade-done"} and of(p, Uncordon) == [Uncordon("a")] and of(p, DeleteDriverPod) == []


def test_a_cordon_made_while_waiting_for_a_slot_is_left_in_place() -> None:
    # Schedulable when it became upgrade-required; an admin cordons it (maintenance) before it gets a slot.
    remember = Annotate("a", INITIAL_UNSCHEDULABLE_ANNOTATION, "true")
    p = run([make_node("a", "upgrade-required", unschedulable=True)], pol=reading_pods())
    assert p.actions[0] == remember and states(p) == {"a": "wait-for-jobs-required"} and of(p, Cordon) == []
    assert "cordoned while it waited for an upgrade slot" in of(p, Event)[0].message
    # Waiting for a slot, it is recorded at once all the same.
    busy = make_node("b", "pod-restart-required", rev=NEW)
    p = run([make_node("a", "upgrade-required", unschedulable=True), busy], pol=policy(max_parallel_upgrades=1))
    assert p.actions[0] == remember and "a" not in states(p) and "a" in p.waiting
    # At its end the cordon stays.
    marked = {INITIAL_UNSCHEDULABLE_ANNOTATION: "true"}
    p = run([make_node("a", "validation-required", rev=NEW, unschedulable=True, annotations=marked)])
    assert states(p) == {"a": "upgrade-done"} and of(p, Uncordon) == []
    # Rolled back while it waited: done at once, the cordon untouched, nothing evicted.
    p = run([make_node("a", "upgrade-required", rev=NEW, unschedulable=True)], [gpu_pod("x", node="a")],
            pol=reading_pods())  # fmt: skip
    assert states(p) == {"a": "upgrade-done"} and p.started == ()
    assert of(p, Uncordon) == [] and of(p, Cordon) == [] and of(p, EvictPods) == []
    # The wave preview, which writes nothing, reads that cordon the same way: no wave for it (the property test
    # test_preview_first_wave_matches_the_planner found the two disagreeing on a NotReady such node).
    rolled_back = make_node("a", "upgrade-required", rev=NEW, unschedulable=True, ready=False)
    assert run([rolled_back]).started == () and preview_waves([rolled_back], policy(max_unavailable=0)) == []
    # Uncordoned again while it waits: the record goes, and the upgrade's own cordon is undone at its end.
    p = run([make_node("a", "upgrade-required", annotations=marked), busy], pol=policy(max_parallel_upgrades=1))
    assert p.actions[0] == Annotate("a", INITIAL_UNSCHEDULABLE_ANNOTATION, None) and not of(p, Event)


def test_start_clears_bookkeeping_of_a_failed_attempt() -> None:
    node = make_node("a", "upgrade-required", annotations={DRAIN_START_ANNOTATION: "1", FAILURE_REASON_ANNOTATION: "x"})
    p = run([node])
    assert Annotate("a", DRAIN_START_ANNOTATION, None) in p.actions
    assert Annotate("a", FAILURE_REASON_ANNOTATION, None) in p.actions


# cordon


def test_cordon_required_cordons_and_moves_on() -> None:
    p = run([make_node(state="cordon-required")])
    assert p.actions[0] == Cordon("n1")
    assert states(p) == {"n1": "pod-restart-required"}


def test_cordon_required_already_cordoned() -> None:
    p = run([make_node(state="cordon-required", unschedulable=True)])
    assert of(p, Cordon) == []
    assert states(p) == {"n1": "pod-restart-required"}


# wait for jobs


def test_wait_for_jobs_without_selector_moves_on() -> None:
    # Its pods were read for this pass (and after the cordon): it goes on to the driver pod's deletion.
    p = run([make_node(state="wait-for-jobs-required", unschedulable=True)])
    assert [a.state for a in of(p, SetState)] == ["drain-required", "pod-restart-required"]
    assert of(p, DeleteDriverPod) == [DeleteDriverPod("n1", "nvidia-driver-n1")]
    # Routine: no event of its own (the upgrade's start and end have one each).
    assert of(p, Event) == []
    pol = policy(pod_deletion=PodDeletionSpec())
    p = run([make_node(state="wait-for-jobs-required")], pol=pol)
    assert [a.state for a in of(p, SetState)] == ["pod-deletion-required", "pod-restart-required"]


def test_a_noteworthy_step_says_the_routine_ones_of_its_pass() -> None:
    # Giving up on job pods is worth an event; it names the rest of the pass, the driver pod's deletion too.
    pol = policy(wait_for_completion=WaitForCompletionSpec(pod_selector="app=train", timeout_seconds=60))
    start = {WAIT_FOR_JOBS_START_ANNOTATION: str(int(NOW - 60))}
    node = make_node(state="wait-for-jobs-required", unschedulable=True, annotations=start)
    p = run([node], [gpu_pod("t", labels={"app": "train"})], pol=pol)
    (event,) = of(p, Event)
    assert event.message == (
        "wait-for-jobs-required -> drain-required -> pod-restart-required: gave up waiting for default/t after 60s "
        "(waitForCompletion.timeoutSeconds); drain is not enabled; deleting driver pod nvidia-driver-n1 to restart "
        "the driver"
    )


def test_a_happy_upgrade_gets_one_event_its_start_and_its_end_goes_to_the_log() -> None:
    # Each pass from what the previous one left: the start (cordon), the driver pod's deletion, the new pod Ready.
    start = run([make_node("a", "upgrade-required")], pol=reading_pods())
    cordoned = planner._after(make_node("a", "upgrade-required"), start.actions)
    deletion = run([cordoned], pol=reading_pods())
    assert of(deletion, DeleteDriverPod) == [DeleteDriverPod("a", "nvidia-driver-a")]
    ann = planner._after(cordoned, deletion.actions).annotations
    end = run([make_node("a", "pod-restart-required", pod=driver_pod("new", rev=NEW), unschedulable=True,
                         annotations=ann)])  # fmt: skip
    events = [e.message for p in (start, deletion, end) for e in of(p, Event)]
    assert len(events) == 1
    assert events[0].startswith("upgrade-required -> cordon-required -> wait-for-jobs-required:")
    assert start.finished == {} and deletion.finished == {}
    assert end.finished["a"].startswith(
        "pod-restart-required -> validation-required -> uncordon-required -> upgrade-done:"
    )
    assert "driver pod new is Running and Ready (replaced nvidia-driver-a)" in end.finished["a"]
    assert of(end, Uncordon) == [Uncordon("a")] and states(end) == {"a": "upgrade-done"}


def test_wait_for_jobs_waits_forever_without_timeout() -> None:
    pol = policy(wait_for_completion=WaitForCompletionSpec(pod_selector="app=train"))
    pods = [
        gpu_pod("train-1", labels={"app": "train"}),
        gpu_pod("train-0", labels={"app": "train"}, phase="Succeeded"),
        gpu_pod("other", labels={"app": "serve"}),
        gpu_pod("elsewhere", node="n2", labels={"app": "train"}),
    ]
    node = make_node(state="wait-for-jobs-required")
    p = run([node], pods, pol=pol)
    assert p.actions == [Annotate("n1", WAIT_FOR_JOBS_START_ANNOTATION, str(int(NOW)))]
    assert p.waiting["n1"] == "waiting for job pods default/train-1 to complete (waitForCompletion; 0s, no timeout)"
    later = make_node(state="wait-for-jobs-required", annotations={WAIT_FOR_JOBS_START_ANNOTATION: "0"})
    p = run([later], pods, pol=pol)
    assert p.actions == [] and "10000s, no timeout" in p.waiting["n1"]


def test_wait_for_jobs_done_when_jobs_finish() -> None:
    pol = policy(wait_for_completion=WaitForCompletionSpec(pod_selector="app in (train)"))
    node = make_node(state="wait-for-jobs-required", annotations={WAIT_FOR_JOBS_START_ANNOTATION: "1"})
    p = run([node], [gpu_pod("t", labels={"app": "train"}, phase="Failed")], pol=pol)
    assert of(p, SetState)[0] == SetState("n1", "drain-required")
    assert Annotate("n1", WAIT_FOR_JOBS_START_ANNOTATION, None) in p.actions


def test_wait_for_jobs_timeout() -> None:
    pol = policy(wait_for_completion=WaitForCompletionSpec(pod_selector="app=train", timeout_seconds=600))
    pods = [gpu_pod("t", labels={"app": "train"})]
    start = {WAIT_FOR_JOBS_START_ANNOTATION: str(int(NOW - 599))}
    p = run([make_node(state="wait-for-jobs-required", annotations=start)], pods, pol=pol)
    assert states(p) == {} and "599s of 600s" in p.waiting["n1"]
    start = {WAIT_FOR_JOBS_START_ANNOTATION: str(int(NOW - 600))}
    p = run([make_node(state="wait-for-jobs-required", annotations=start)], pods, pol=pol)
    assert of(p, SetState)[0] == SetState("n1", "drain-required")


def test_wait_for_jobs_invalid_selector_waits_with_reason() -> None:
    pol = policy(wait_for_completion=WaitForCompletionSpec(pod_selector="app in (a"))
    p = run([make_node(state="wait-for-jobs-required")], pol=pol)
    assert p.actions == [] and "invalid" in p.waiting["n1"]


# pod deletion

PD = PodDeletionSpec(timeout_seconds=300)


def test_pod_deletion_evicts_only_gpu_pods() -> None:
    pods = [
        gpu_pod("gpu"),
        gpu_pod("cpu", uses_gpu=False),
        gpu_pod("ds-cpu", uses_gpu=False, is_daemonset_pod=True),
        gpu_pod("ds-done", is_daemonset_pod=True, phase="Succeeded"),
        gpu_pod("done", phase="Succeeded"),
        gpu_pod("other-node", node="n2"),
    ]
    p = run([make_node(state="pod-deletion-required")], pods, pol=policy(pod_deletion=PD))
    assert of(p, EvictPods) == [EvictPods("n1", (("default", "gpu"),), False)]
    assert Annotate("n1", POD_DELETION_START_ANNOTATION, str(int(NOW))) in p.actions
    assert states(p) == {}
    assert "evicting default/gpu" in p.waiting["n1"]


def test_pod_deletion_done_when_no_gpu_pods() -> None:
    node = make_node(state="pod-deletion-required", annotations={POD_DELETION_START_ANNOTATION: "5"})
    p = run([node], [gpu_pod("cpu", uses_gpu=False)], pol=policy(pod_deletion=PD))
    assert states(p) == {"n1": "pod-restart-required"}
    assert Annotate("n1", POD_DELETION_START_ANNOTATION, None) in p.actions


def test_pod_deletion_fails_on_a_gpu_daemonset_pod_instead_of_restarting_the_driver() -> None:
    """A DaemonSet's pod using a GPU was left out of pod deletion, so the node read as having no GPU pods left: it
    went on to pod-restart-required and its driver pod was deleted in the same pass under the GPU pod still running
    (the new pod's k8s-driver-manager, told by the upgrade-enabled annotation to leave eviction to the operator,
    then cannot unload the modules). Upstream (k8s-operator-libs pkg/upgrade/pod_manager.go) counts every GPU pod,
    a DaemonSet's too, against what its drain helper may delete (IgnoreAllDaemonSets): a mismatch is a failure,
    upgrade-failed with drain off, nothing evicted and the driver left alone."""
    pods = [gpu_pod("inference-ds-abcde", is_daemonset_pod=True), gpu_pod("trainer")]
    p = run([make_node(state="pod-deletion-required")], pods, pol=policy(pod_deletion=PD))
    assert of(p, DeleteDriverPod) == [] and of(p, EvictPods) == []
    assert states(p) == {"n1": "upgrade-failed"}
    (reason,) = [a for a in of(p, Annotate) if a.key == FAILURE_REASON_ANNOTATION]
    assert reason.value == "pod deletion cannot remove GPU pods of a DaemonSet or static: default/inference-ds-abcde"


def test_pod_deletion_with_a_gpu_static_pod_tries_drain_when_drain_is_enabled() -> None:
    """As above with drain on: upstream's updateNodeToDrainOrFailed moves the node to drain-required. A static
    (mirror) pod using a GPU, which the drain helper skips the same way, is projected as a DaemonSet pod."""
    pods = [gpu_pod("static-gpu-n1", is_daemonset_pod=True)]
    p = run([make_node(state="pod-deletion-required")], pods, pol=policy(pod_deletion=PD, drain=DrainSpec(
        enable=True)))  # fmt: skip
    assert states(p) == {"n1": "pod-restart-required"}  # drain, as upstream's, skips it: nothing else to evict
    assert [a.state for a in of(p, SetState)] == ["drain-required", "pod-restart-required"]
    assert "trying drain" in of(p, Event)[0].message


def test_pod_deletion_not_configured_goes_to_drain() -> None:
    p = run([make_node(state="pod-deletion-required")])
    assert of(p, SetState)[0] == SetState("n1", "drain-required")


def test_pod_deletion_blocked_eviction_is_retried_and_explained() -> None:
    node = make_node(state="pod-deletion-required", annotations={POD_DELETION_START_ANNOTATION: str(int(NOW - 120))})
    p = run([node], [gpu_pod("x")], pol=policy(pod_deletion=PD))
    assert of(p, EvictPods) == [EvictPods("n1", (("default", "x"),), False)]
    assert p.waiting["n1"] == "eviction of default/x blocked (PodDisruptionBudget?) for 120s of 300s"


def test_pod_deletion_timeout_fails_without_force() -> None:
    node = make_node(state="pod-deletion-required", annotations={POD_DELETION_START_ANNOTATION: str(int(NOW - 300))})
    p = run([node], [gpu_pod("x")], pol=policy(pod_deletion=PD))
    assert states(p) == {"n1": "upgrade-failed"}
    assert of(p, EvictPods) == []
    (reason,) = [a for a in of(p, Annotate) if a.key == FAILURE_REASON_ANNOTATION]
    assert reason.value is not None and "default/x" in reason.value and "300s" in reason.value
    assert of(p, Event)[0].type == "Warning"


def test_pod_deletion_timeout_falls_back_to_drain_when_enabled() -> None:
    node = make_node(state="pod-deletion-required", annotations={POD_DELETION_START_ANNOTATION: str(int(NOW - 300))})
    p = run([node], [gpu_pod("x")], pol=policy(pod_deletion=PD, drain=DrainSpec(enable=True)))
    assert states(p) == {"n1": "drain-required"}


def test_pod_deletion_timeout_fails_with_force_too_never_deleting_past_a_budget() -> None:
    # Upstream's drain helper: force lets pods no controller owns go; a timeout is a failure whatever it says.
    node = make_node(state="pod-deletion-required", annotations={POD_DELETION_START_ANNOTATION: str(int(NOW - 300))})
    pol = policy(pod_deletion=PodDeletionSpec(force=True, timeout_seconds=300))
    p = run([node], [gpu_pod("x")], pol=pol)
    assert of(p, EvictPods) == [] and states(p) == {"n1": "upgrade-failed"}
    (reason,) = [a for a in of(p, Annotate) if a.key == FAILURE_REASON_ANNOTATION]
    assert reason.value == "eviction of default/x did not finish within 300s (podDeletion.timeoutSeconds)"


def test_a_pod_no_controller_owns_is_evicted_only_with_force() -> None:
    # Nothing recreates such a pod (a notebook, a hand-run job): without force the node fails before any eviction.
    pods = [gpu_pod("owned"), gpu_pod("notebook", controlled=False)]
    both = {("default", "owned"), ("default", "notebook")}

    def evicted(p: Plan) -> set[tuple[str, str]]:
        return {pod for e in of(p, EvictPods) for pod in e.pods}

    p = run([make_node(state="pod-deletion-required")], pods, pol=policy(pod_deletion=PD))
    assert of(p, EvictPods) == [] and states(p) == {"n1": "upgrade-failed"}
    assert "pod default/notebook has no controller (nothing would recreate it) and podDeletion.force is false" in (
        of(p, Event)[0].message
    )
    # With drain on, upstream's fallback: drain-required, whose own force decides.
    p = run([make_node(state="pod-deletion-required")], pods, pol=policy(pod_deletion=PD, drain=DrainSpec(
        enable=True, force=True)))  # fmt: skip
    assert states(p) == {"n1": "drain-required"} and evicted(p) == both
    p = run([make_node(state="drain-required")], pods, pol=policy(drain=DrainSpec(enable=True)))
    assert of(p, EvictPods) == [] and states(p) == {"n1": "upgrade-failed"}
    assert "drain.force is false" in of(p, Event)[0].message
    # A terminating one is on its way out already: not held against the others.
    going = [gpu_pod("owned"), gpu_pod("notebook", controlled=False, terminating=True)]
    p = run([make_node(state="pod-deletion-required")], going, pol=policy(pod_deletion=PD))
    assert of(p, EvictPods) == [EvictPods("n1", (("default", "owned"),), False)]
    for pol in (policy(pod_deletion=PodDeletionSpec(force=True)), policy(drain=DrainSpec(enable=True, force=True))):
        state = "pod-deletion-required" if pol.pod_deletion else "drain-required"
        p = run([make_node(state=state)], pods, pol=pol)
        assert evicted(p) == both


def test_pod_deletion_zero_timeout_waits_forever() -> None:
    node = make_node(state="pod-deletion-required", annotations={POD_DELETION_START_ANNOTATION: "0"})
    p = run([node], [gpu_pod("x")], pol=policy(pod_deletion=PodDeletionSpec(timeout_seconds=0)))
    assert states(p) == {} and "no timeout" in p.waiting["n1"]


def test_pod_deletion_does_not_evict_terminating_pods_again() -> None:
    node = make_node(state="pod-deletion-required", annotations={POD_DELETION_START_ANNOTATION: str(int(NOW - 10))})
    p = run([node], [gpu_pod("x", terminating=True)], pol=policy(pod_deletion=PD))
    assert of(p, EvictPods) == []
    assert p.waiting["n1"] == "waiting for default/x to terminate (10s of 300s)"


def test_pod_deletion_protects_emptydir() -> None:
    pods = [gpu_pod("scratch", has_emptydir=True), gpu_pod("plain")]
    p = run([make_node(state="pod-deletion-required")], pods, pol=policy(pod_deletion=PD))
    assert of(p, EvictPods) == []
    assert states(p) == {"n1": "upgrade-failed"}
    assert "emptyDir" in of(p, Event)[0].message


def test_pod_deletion_emptydir_allowed() -> None:
    pods = [gpu_pod("scratch", has_emptydir=True)]
    pol = policy(pod_deletion=PodDeletionSpec(delete_empty_dir=True))
    p = run([make_node(state="pod-deletion-required")], pods, pol=pol)
    assert of(p, EvictPods) == [EvictPods("n1", (("default", "scratch"),), True)]


# drain


def test_drain_disabled_moves_on() -> None:
    p = run([make_node(state="drain-required")], [gpu_pod("x")])
    assert states(p) == {"n1": "pod-restart-required"}


def test_drain_skips_daemonsets_skip_label_and_unselected_pods() -> None:
    pods = [
        gpu_pod("web", uses_gpu=False, labels={"tier": "web"}),
        gpu_pod("db", uses_gpu=False, labels={"tier": "db"}),
        gpu_pod("keep", labels={"tier": "web", DRAIN_SKIP_LABEL: "true"}),
        gpu_pod("ds", labels={"tier": "web"}, is_daemonset_pod=True),
    ]
    pol = policy(drain=DrainSpec(enable=True, pod_selector="tier!=db"))
    p = run([make_node(state="drain-required")], pods, pol=pol)
    assert of(p, EvictPods) == [EvictPods("n1", (("default", "web"),), False)]
    assert Annotate("n1", DRAIN_START_ANNOTATION, str(int(NOW))) in p.actions


def test_drain_without_selector_takes_every_pod() -> None:
    pods = [gpu_pod("a", uses_gpu=False), gpu_pod("b")]
    p = run([make_node(state="drain-required")], pods, pol=policy(drain=DrainSpec(enable=True)))
    assert of(p, EvictPods)[0].pods == (("default", "a"), ("default", "b"))


def test_drain_done() -> None:
    node = make_node(state="drain-required", annotations={DRAIN_START_ANNOTATION: "1"})
    p = run([node], [gpu_pod("ds", is_daemonset_pod=True)], pol=policy(drain=DrainSpec(enable=True)))
    assert states(p) == {"n1": "pod-restart-required"}
    assert Annotate("n1", DRAIN_START_ANNOTATION, None) in p.actions


def test_drain_timeout_fails_with_or_without_force() -> None:
    node = make_node(state="drain-required", annotations={DRAIN_START_ANNOTATION: str(int(NOW - 301))})
    for force in (False, True):
        p = run([node], [gpu_pod("x")], pol=policy(drain=DrainSpec(enable=True, force=force)))
        assert states(p) == {"n1": "upgrade-failed"} and of(p, EvictPods) == []
        assert "did not finish within 300s (drain.timeoutSeconds)" in of(p, Event)[0].message


def test_drain_protects_emptydir() -> None:
    pods = [gpu_pod("scratch", uses_gpu=False, has_emptydir=True)]
    p = run([make_node(state="drain-required")], pods, pol=policy(drain=DrainSpec(enable=True)))
    assert states(p) == {"n1": "upgrade-failed"}
    pol = policy(drain=DrainSpec(enable=True, delete_empty_dir=True))
    p = run([make_node(state="drain-required")], pods, pol=pol)
    assert of(p, EvictPods) == [EvictPods("n1", (("default", "scratch"),), True)]


# pod restart


def test_pod_restart_deletes_out_of_date_driver_pod() -> None:
    p = run([make_node(state="pod-restart-required")])
    assert p.actions[:2] == [
        Annotate("n1", DELETED_DRIVER_POD_ANNOTATION, "nvidia-driver-n1"),
        DeleteDriverPod("n1", "nvidia-driver-n1"),
    ]
    assert states(p) == {}
    assert "deleted driver pod nvidia-driver-n1" in p.waiting["n1"]


def test_pod_restart_retries_a_delete_that_did_not_happen() -> None:
    node = make_node(
        state="pod-restart-required", rev=NEW, annotations={DELETED_DRIVER_POD_ANNOTATION: "nvidia-driver-n1"}
    )
    p = run([node])
    assert of(p, DeleteDriverPod) == [DeleteDriverPod("n1", "nvidia-driver-n1")]
    assert of(p, Annotate) == []


def test_pod_restart_waits_for_terminating_and_missing_pod() -> None:
    ann = {DELETED_DRIVER_POD_ANNOTATION: "old"}
    p = run([make_node(state="pod-restart-required", pod=driver_pod("old", terminating=True), annotations=ann)])
    assert p.actions == [] and "terminate" in p.waiting["n1"]
    p = run([make_node(state="pod-restart-required", rev=None, annotations=ann)])
    assert p.actions == [] and "create the new driver pod" in p.waiting["n1"]


def test_pod_restart_waits_for_new_pod_ready_then_validates() -> None:
    ann = {DELETED_DRIVER_POD_ANNOTATION: "old"}
    starting = driver_pod("new", rev=NEW, ready=False, phase="Pending")
    p = run([make_node(state="pod-restart-required", pod=starting, annotations=ann)])
    assert p.actions == [] and "Running and Ready (phase Pending)" in p.waiting["n1"]
    new = driver_pod("new", NEW)
    p = run([make_node(state="pod-restart-required", pod=new, annotations=ann, validator=validator_pod(False))])
    assert states(p) == {"n1": "validation-required"}
    assert Annotate("n1", DELETED_DRIVER_POD_ANNOTATION, None) in p.actions
    # The validation clock starts in the same patch; the move is bookkeeping, worth no event.
    assert Annotate("n1", VALIDATION_START_ANNOTATION, str(int(NOW))) in p.actions
    assert of(p, Event) == []


def test_a_driver_pod_is_ready_by_its_containers_as_upstream_whatever_its_ready_condition() -> None:
    """k8s-operator-libs judges the driver and validator pods by phase and containerStatuses, not the pod's Ready
    condition (the DaemonSet readiness reads that one): the planner follows upstream."""
    ann = {DELETED_DRIVER_POD_ANNOTATION: "old"}
    new = driver_pod("new", NEW)
    new["status"]["conditions"] = [{"type": "Ready", "status": "False"}]
    assert not pod_projection(new)["ready"]
    p = run([make_node(state="pod-restart-required", pod=pod_projection(new), annotations=ann,
                       validator=validator_pod(False))])  # fmt: skip
    assert states(p) == {"n1": "validation-required"}


def test_pod_restart_goes_on_to_done_when_the_validator_is_ready() -> None:
    ann = {DELETED_DRIVER_POD_ANNOTATION: "old"}
    node = make_node(state="pod-restart-required", pod=driver_pod("new", rev=NEW), unschedulable=True, annotations=ann)
    p = run([node])
    assert [a.state for a in of(p, SetState)] == ["validation-required", "uncordon-required", "upgrade-done"]
    assert of(p, Uncordon) == [Uncordon("n1")]
    assert of(p, Event) == []  # the happy path's end: the label and the uncordon say it, and the log
    assert p.finished["n1"].startswith("pod-restart-required -> validation-required -> uncordon-required -> ")
    # Whatever the chain wrote on the way is gone at the end.
    after = {}
    for a in of(p, Annotate):
        after[a.key] = a.value
    assert after.get(VALIDATION_START_ANNOTATION) is None and after.get(DELETED_DRIVER_POD_ANNOTATION) is None


def test_waits_of_ordinary_progress_are_quiet_and_blocks_are_not() -> None:
    ann = {DELETED_DRIVER_POD_ANNOTATION: "old"}
    starting = driver_pod("new", rev=NEW, ready=False, phase="Pending")
    nodes = [
        make_node("a", "pod-restart-required", pod=starting, annotations=ann),
        make_node("b", "validation-required", validator=validator_pod(ready=False)),
        make_node("c", "pod-deletion-required", annotations={POD_DELETION_START_ANNOTATION: str(int(NOW - 60))}),
        make_node("d", "upgrade-failed", annotations={FAILURE_REASON_ANNOTATION: "x"}),
    ]
    p = run(nodes, [gpu_pod("x", node="c")], pol=policy(pod_deletion=PD))
    assert sorted(p.waiting) == ["a", "b", "c", "d"]
    assert p.quiet == {"a", "b"}


def test_pod_restart_crash_loop_fails() -> None:
    ann = {DELETED_DRIVER_POD_ANNOTATION: "old"}
    looping = driver_pod("new", rev=NEW, ready=False, restarts=12)
    p = run([make_node(state="pod-restart-required", pod=looping, annotations=ann)])
    assert states(p) == {"n1": "upgrade-failed"}
    assert (
        Annotate("n1", FAILURE_REASON_ANNOTATION, "driver pod crash-looping: nvidia-driver-ctr restarted 12 times")
        in p.actions
    )
    # Ten restarts is not yet a crash loop.
    p = run([make_node(state="pod-restart-required", pod=driver_pod("new", NEW, False, restarts=10), annotations=ann)])
    assert states(p) == {}


def _init_looping(restarts: int) -> dict[str, Any]:
    """The new driver pod as the pod watch projects it (observe.pod_projection) while its k8s-driver-manager init
    container crash-loops (the driver is held by a host process, so uninstalling it fails): Init:CrashLoopBackOff."""
    return pod_projection({
        "metadata": {"name": "nvidia-driver-new", "labels": {"controller-revision-hash": NEW},
                     "ownerReferences": [{"kind": "DaemonSet", "name": "nvidia-driver-daemonset"}]},
        "spec": {"nodeName": "n1"},
        "status": {
            "phase": "Pending",
            "initContainerStatuses": [
                {"name": "k8s-driver-manager", "ready": False, "restartCount": restarts,
                 "state": {"waiting": {"reason": "CrashLoopBackOff"}}},
            ],
            "containerStatuses": [{"name": "nvidia-driver-ctr", "ready": False, "restartCount": 0,
                                   "state": {"waiting": {"reason": "PodInitializing"}}}],
        },
    })  # fmt: skip


def test_pod_restart_init_container_crash_loop_fails_as_the_pod_watch_sees_it() -> None:
    """A crash-looping init container fails the upgrade (upstream's isDriverPodFailing checks the init containers
    first). The pod watch's projection used to drop initContainerStatuses, so the planner never saw them: the node
    stayed cordoned in pod-restart-required for good, its wait quiet."""
    ann = {DELETED_DRIVER_POD_ANNOTATION: "old"}
    p = run([make_node(state="pod-restart-required", pod=_init_looping(14), annotations=ann, unschedulable=True)])
    assert states(p) == {"n1": "upgrade-failed"}
    reason = "driver pod crash-looping: k8s-driver-manager restarted 14 times"
    assert Annotate("n1", FAILURE_REASON_ANNOTATION, reason) in p.actions
    # Before that, the wait says why the pod does not start.
    p = run([make_node(state="pod-restart-required", pod=_init_looping(3), annotations=ann, unschedulable=True)])
    assert p.waiting["n1"] == (
        "waiting for driver pod nvidia-driver-new to be Running and Ready "
        "(phase Pending; init container k8s-driver-manager: CrashLoopBackOff)"
    )


def test_a_driver_pod_that_cannot_pull_its_image_is_explained_by_its_waiting_reason() -> None:
    """driver.version names an image that does not exist: the new driver pod sits in ImagePullBackOff for good
    (restartCount 0, so no crash loop fails it). The pod watch's projection kept no waiting reason of the main
    containers, so the node's reason said only "(phase Pending)". Now it names the container's reason, as it does
    an init container's; the wait stays quiet (the reason flips between ErrImagePull and ImagePullBackOff). Found
    by review planner #2."""
    pulling = pod_projection({
        "metadata": {"name": "nvidia-driver-new", "labels": {"controller-revision-hash": NEW},
                     "ownerReferences": [{"kind": "DaemonSet", "name": "nvidia-driver-daemonset"}]},
        "spec": {"nodeName": "n1"},
        "status": {
            "phase": "Pending",
            "initContainerStatuses": [{"name": "k8s-driver-manager", "ready": True, "restartCount": 0,
                                       "state": {"terminated": {"exitCode": 0}}}],
            "containerStatuses": [{"name": "nvidia-driver-ctr", "ready": False, "restartCount": 0,
                                   "state": {"waiting": {"reason": "ImagePullBackOff",
                                                         "message": "Back-off pulling image"}}}],
        },
    })  # fmt: skip
    ann = {DELETED_DRIVER_POD_ANNOTATION: "nvidia-driver-old"}
    p = run([make_node(state="pod-restart-required", pod=pulling, annotations=ann, unschedulable=True)])
    assert p.waiting["n1"] == (
        "waiting for driver pod nvidia-driver-new to be Running and Ready "
        "(phase Pending; container nvidia-driver-ctr: ImagePullBackOff)"
    )
    assert p.actions == [] and "n1" in p.quiet
    # A container only starting is worth no mention.
    pulling["status"]["containerStatuses"][0]["state"] = {"waiting": {"reason": "ContainerCreating"}}
    p = run([make_node(state="pod-restart-required", pod=pulling, annotations=ann, unschedulable=True)])
    assert p.waiting["n1"].endswith("(phase Pending)")


def test_pod_restart_of_requested_upgrade_restarts_in_sync_pod_once() -> None:
    node = make_node(state="pod-restart-required", rev=NEW, annotations={REQUESTED_ANNOTATION: "true"})
    p = run([node])
    assert of(p, DeleteDriverPod) == [DeleteDriverPod("n1", "nvidia-driver-n1")]
    assert Annotate("n1", REQUESTED_ANNOTATION, None) in p.actions
    # Next pass: a new pod runs, the request is gone, nothing is deleted again.
    ann = {DELETED_DRIVER_POD_ANNOTATION: "nvidia-driver-n1"}
    p = run([make_node(state="pod-restart-required", pod=driver_pod("nvidia-driver-n1-b", NEW), annotations=ann)])
    assert of(p, DeleteDriverPod) == [] and of(p, SetState)[0] == SetState("n1", "validation-required")


def test_pod_restart_of_already_updated_pod_does_not_delete_it() -> None:
    p = run([make_node(state="pod-restart-required", rev=NEW)])
    assert of(p, DeleteDriverPod) == [] and of(p, SetState)[0] == SetState("n1", "validation-required")


# validation


def test_validation_passes_when_validator_ready() -> None:
    node = make_node(state="validation-required", annotations={VALIDATION_START_ANNOTATION: "1"})
    p = run([node])
    assert of(p, SetState) == [SetState("n1", "uncordon-required"), SetState("n1", "upgrade-done")]
    assert Annotate("n1", VALIDATION_START_ANNOTATION, None) in p.actions


def test_validation_waits_and_explains() -> None:
    start = {VALIDATION_START_ANNOTATION: str(int(NOW - 45))}
    p = run([make_node(state="validation-required", validator=validator_pod(ready=False), annotations=start)])
    assert p.actions == []
    assert p.waiting["n1"] == "waiting for validator pod on node to be Ready (45s of 600s)"
    p = run([make_node(state="validation-required", validator=validator_pod(ready=False))])
    assert p.actions == [Annotate("n1", VALIDATION_START_ANNOTATION, str(int(NOW)))]


def test_validation_timeout_fails() -> None:
    start = {VALIDATION_START_ANNOTATION: str(int(NOW - 601))}
    p = run([make_node(state="validation-required", validator=validator_pod(ready=False), annotations=start)])
    assert states(p) == {"n1": "upgrade-failed"}
    start = {VALIDATION_START_ANNOTATION: str(int(NOW - 600))}
    p = run([make_node(state="validation-required", validator=validator_pod(ready=False), annotations=start)])
    assert states(p) == {}


def test_validation_disabled_passes() -> None:
    p = run([make_node(state="validation-required", validator=validator_pod(ready=False))], validation_enabled=False)
    assert of(p, SetState)[0] == SetState("n1", "uncordon-required")


def test_pre_cordoned_node_goes_straight_to_done_and_stays_cordoned() -> None:
    ann = {INITIAL_UNSCHEDULABLE_ANNOTATION: "true", VALIDATION_START_ANNOTATION: "1"}
    p = run([make_node(state="validation-required", rev=NEW, unschedulable=True, annotations=ann)])
    assert states(p) == {"n1": "upgrade-done"}
    assert of(p, Uncordon) == []
    # Left cordoned: worth an event, unlike an ordinary end.
    (event,) = of(p, Event)
    assert "stays cordoned as it was before the upgrade" in event.message and p.finished == {}
    # The initial-state annotation is removed only after the state label says done.
    done = p.actions.index(SetState("n1", "upgrade-done"))
    assert p.actions.index(Annotate("n1", INITIAL_UNSCHEDULABLE_ANNOTATION, None)) > done


# uncordon and failure


def test_uncordon_required_uncordons() -> None:
    p = run([make_node(state="uncordon-required", rev=NEW, unschedulable=True)])
    assert p.actions[0] == Uncordon("n1")
    assert states(p) == {"n1": "upgrade-done"}


def test_uncordon_required_keeps_pre_cordoned_node_cordoned() -> None:
    ann = {INITIAL_UNSCHEDULABLE_ANNOTATION: "true"}
    p = run([make_node(state="uncordon-required", rev=NEW, unschedulable=True, annotations=ann)])
    assert of(p, Uncordon) == [] and states(p) == {"n1": "upgrade-done"}


def test_failed_waits_with_reason() -> None:
    ann = {FAILURE_REASON_ANNOTATION: "pod default/x uses emptyDir storage"}
    p = run([make_node(state="upgrade-failed", unschedulable=True, annotations=ann)])
    assert p.actions == []
    assert p.waiting["n1"].startswith("upgrade failed: pod default/x uses emptyDir storage")


def test_failed_recovers_when_driver_in_sync_and_ready() -> None:
    ann = {FAILURE_REASON_ANNOTATION: "x"}
    p = run([make_node(state="upgrade-failed", rev=NEW, unschedulable=True, annotations=ann)])
    assert of(p, SetState)[0] == SetState("n1", "uncordon-required")
    assert of(p, Uncordon) == [Uncordon("n1")] and states(p) == {"n1": "upgrade-done"}
    assert Annotate("n1", FAILURE_REASON_ANNOTATION, None) in p.actions
    (event,) = of(p, Event)  # a recovery is worth an event
    assert event.message.startswith("upgrade-failed -> uncordon-required -> upgrade-done:") and p.finished == {}
    p = run([make_node(state="upgrade-failed", pod=driver_pod(rev=NEW, ready=False, restarts=30))])
    assert states(p) == {}


def test_failed_requested_upgrade_does_not_recover_before_its_restart_and_says_so() -> None:
    """Pod deletion failed before the requested restart: the driver is in sync, but it was never restarted. Its
    reason said it "recovers by itself once the driver pod is in sync and Ready", which it already was: the admin
    waited for a recovery that never came. Now it names the pending request and the two ways out (review planner
    #3)."""
    ann = {FAILURE_REASON_ANNOTATION: "x", REQUESTED_ANNOTATION: "true"}
    p = run([make_node(state="upgrade-failed", rev=NEW, unschedulable=True, annotations=ann)])
    assert states(p) == {} and p.actions == []
    assert p.waiting["n1"] == (
        f"upgrade failed: x; the requested driver restart has not happened (annotation {REQUESTED_ANNOTATION}): "
        f"fix the cause and relabel {STATE_LABEL}=upgrade-required to retry, or remove the annotation"
    )
    # The annotation removed: it recovers, as the reason said.
    failed = {FAILURE_REASON_ANNOTATION: "x"}
    p = run([make_node(state="upgrade-failed", rev=NEW, unschedulable=True, annotations=failed)])
    assert states(p) == {"n1": "upgrade-done"}
    # Without a request the reason still promises the recovery.
    p = run([make_node(state="upgrade-failed", rev=OLD, unschedulable=True, annotations=failed)])
    assert "recovers by itself once the driver pod is in sync and Ready" in p.waiting["n1"]


# autoUpgrade off


def test_auto_upgrade_false_removes_the_state_labels_and_undoes_only_the_upgrades_own_cordons() -> None:
    admins = {INITIAL_UNSCHEDULABLE_ANNOTATION: "true", DRAIN_START_ANNOTATION: "2026-01-01T00:00:00Z"}
    nodes = [
        make_node("a", "drain-required", unschedulable=True, annotations={DRAIN_START_ANNOTATION: "x"}),
        make_node("b"),
        make_node("c", "upgrade-done", rev=NEW),
        make_node("d", "validation-required", unschedulable=True, annotations=admins),  # cordoned by the admin
        make_node("e", "cordon-required"),  # not cordoned yet
        make_node("f", "pod-restart-required", unschedulable=False),  # uncordoned by someone meanwhile
    ]
    p = run(nodes, pol=policy(auto_upgrade=False))
    assert p.actions == [
        Uncordon("a"),
        Annotate("a", DRAIN_START_ANNOTATION, None),
        SetState("a", ""),
        Event("a", "Normal", EVENT_REASON,
              "autoUpgrade switched off in drain-required: node uncordoned (the upgrade had cordoned it)"),
        SetState("c", ""),
        Annotate("d", DRAIN_START_ANNOTATION, None),
        Annotate("d", INITIAL_UNSCHEDULABLE_ANNOTATION, None),
        SetState("d", ""),
        SetState("e", ""),
        SetState("f", ""),
    ]  # fmt: skip
    assert p.waiting == {} and p.started == ()


def test_auto_upgrade_false_leaves_a_failed_node_cordoned_with_its_reason_and_says_so() -> None:
    ann = {FAILURE_REASON_ANNOTATION: "driver pod crash-looping", VALIDATION_START_ANNOTATION: "x"}
    p = run([make_node("a", "upgrade-failed", unschedulable=True, annotations=ann)], pol=policy(auto_upgrade=False))
    assert p.actions == [
        Annotate("a", VALIDATION_START_ANNOTATION, None),
        SetState("a", ""),
        Event("a", "Warning", EVENT_REASON, "autoUpgrade switched off in upgrade-failed (driver pod crash-looping): "
              "node left cordoned for the admin; uncordon it once its driver works"),
    ]  # fmt: skip


def test_auto_upgrade_false_leaves_a_failed_node_relabelled_to_retry_cordoned_with_its_reason_and_says_so() -> None:
    """A failed node the admin relabelled upgrade-required to retry still carries the failed attempt's cordon (the
    planner reads it as the upgrade's: _cordon_not_ours). autoUpgrade off before the retry got a slot hands it to the
    admin as a failed node's (README), instead of leaving it cordoned for good with its reason deleted, unsaid."""
    ann = {FAILURE_REASON_ANNOTATION: "validator pod not Ready within 600s"}
    p = run([make_node("a", "upgrade-required", unschedulable=True, annotations=ann)], pol=policy(auto_upgrade=False))
    assert p.actions == [
        SetState("a", ""),
        Event("a", "Warning", EVENT_REASON, "autoUpgrade switched off in upgrade-required (validator pod not Ready "
              "within 600s): node left cordoned for the admin; uncordon it once its driver works"),
    ]  # fmt: skip
    # An admin's cordon (recorded, or made with no failed attempt behind it) is left alone and unsaid, as before.
    for extra in ({INITIAL_UNSCHEDULABLE_ANNOTATION: "true"}, {}):
        node = make_node("b", "upgrade-required", unschedulable=True, annotations=extra)
        actions = run([node], pol=policy(auto_upgrade=False)).actions
        assert not any(isinstance(a, (Event, Uncordon)) for a in actions), actions


def test_auto_upgrade_false_twice_writes_nothing_the_second_time() -> None:
    nodes = [make_node("a", "drain-required", unschedulable=True), make_node("f", "upgrade-failed", unschedulable=True)]
    first = run(nodes, pol=policy(auto_upgrade=False))
    after = [planner._after(n, first.actions_for(n.name)) for n in nodes]
    assert [a.unschedulable for a in after] == [False, True]
    assert run(after, pol=policy(auto_upgrade=False)).actions == []


# counters and preview


def test_counters() -> None:
    nodes = [
        make_node("a", "upgrade-done", rev=NEW),
        make_node("b", "upgrade-required"),
        make_node("c", "drain-required", unschedulable=True),
        make_node("d", "upgrade-failed", unschedulable=True),
    ]
    c = run(nodes, pol=policy(max_parallel_upgrades=3, max_unavailable="100%")).counters
    assert (c.total, c.done, c.pending, c.in_progress, c.failed, c.available) == (4, 1, 1, 2, 1, 1)


def test_preview_waves_by_max_parallel() -> None:
    nodes = [make_node(f"n{i}") for i in range(5)]
    assert preview_waves(nodes, policy(max_parallel_upgrades=2, max_unavailable="100%")) == [
        ["n0", "n1"],
        ["n2", "n3"],
        ["n4"],
    ]


def test_preview_waves_by_max_unavailable_with_pre_cordoned_node() -> None:
    nodes = [make_node(f"n{i}") for i in range(4)] + [make_node("z", unschedulable=True)]
    # maxUnavailable 40% of 5 = 2; z stays cordoned, so one more node at a time, z itself costs nothing.
    waves = preview_waves(nodes, policy(max_parallel_upgrades=0, max_unavailable="40%"))
    assert waves == [["n0", "z"], ["n1"], ["n2"], ["n3"]]


def test_preview_waves_counts_running_upgrades_and_skips() -> None:
    nodes = [
        make_node("a", "drain-required", unschedulable=True),
        make_node("b", "upgrade-required"),
        make_node("c", labels={SKIP_LABEL: "true"}),
        make_node("d", "upgrade-done", rev=NEW),
        make_node("e"),
    ]
    assert preview_waves(nodes, policy(max_parallel_upgrades=1, max_unavailable="100%")) == [["a"], ["b"], ["e"]]


def test_preview_waves_blocked_by_failed_upgrades() -> None:
    nodes = [make_node("a", "upgrade-failed", unschedulable=True), make_node("b")]
    assert preview_waves(nodes, policy(max_parallel_upgrades=1)) == []


def test_preview_waves_nothing_to_do() -> None:
    assert preview_waves([make_node("a", rev=NEW)], policy()) == []


def test_joint_preview_waves_share_the_cluster_wide_limits() -> None:
    """Two NVIDIADrivers' rollouts previewed together, as the operator runs them: each within its own policy and all
    within the ClusterPolicy's (`outer`)."""
    a, b = [make_node(f"a{i}") for i in range(3)], [make_node(f"b{i}") for i in range(2)]
    own = policy(max_parallel_upgrades=2, max_unavailable="100%")
    by_parallel = policy(max_parallel_upgrades=3, max_unavailable="100%")
    assert preview_joint_waves([(a, own), (b, own)], by_parallel) == [["a0", "a1", "b0"], ["a2", "b1"]]
    by_unavailable = policy(max_parallel_upgrades=0, max_unavailable="25%")  # 2 of 5
    assert preview_joint_waves([(a, own), (b, own)], by_unavailable) == [["a0", "a1"], ["a2", "b0"], ["b1"]]
    assert preview_joint_waves([(a, own), (b, own)]) == [["a0", "a1", "b0", "b1"], ["a2"]]  # no outer limit
    # An NVIDIADriver with autoUpgrade off upgrades nothing while another's is on (and takes no slot of it) ...
    off = policy(auto_upgrade=False, max_parallel_upgrades=2, max_unavailable="100%")
    assert preview_joint_waves([(b, off), (a, own)], by_parallel) == [["a0", "a1"], ["a2"]]
    # ... and with every one off, the preview shows what switching them on would do, as preview_waves does.
    assert preview_joint_waves([(a, off), (b, off)], by_parallel) == [["a0", "a1", "b0"], ["a2", "b1"]]


# selectors and projections


@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    [
        ("", {}, True),
        ("app=train", {"app": "train"}, True),
        ("app==train", {"app": "serve"}, False),
        ("app!=train", {}, True),
        ("app!=train", {"app": "train"}, False),
        ("app in (a, b),tier", {"app": "b", "tier": "x"}, True),
        ("app in (a,b),tier", {"app": "b"}, False),
        ("app notin (a,b)", {"app": "c"}, True),
        ("app notin (a,b)", {}, True),
        ("!app", {"app": "x"}, False),
        ("!app", {}, True),
        ("example.com/role = gpu , !skip", {"example.com/role": "gpu"}, True),
        ("k=", {"k": ""}, True),
    ],
)
def test_selector(selector: str, labels: dict[str, str], expected: bool) -> None:
    assert parse_selector(selector).matches(labels) is expected


@pytest.mark.parametrize("selector", ["app in (a", "a b", "=x", "a=b=c", ",", "app in ()", "-bad=x", "a=(b)"])
def test_selector_errors(selector: str) -> None:
    with pytest.raises(SelectorError):
        parse_selector(selector)


def test_projections() -> None:
    node = UpgradeNode.from_node(
        {
            "metadata": {
                "name": "n1",
                "labels": {STATE_LABEL: "upgrade-done", "kubernetes.io/os": "linux"},
                "annotations": {REQUESTED_ANNOTATION: "true", "other": "x"},
            },
            "spec": {"unschedulable": True},
            "status": {"conditions": [{"type": "Ready", "status": "False"}]},
        },
        driver_pod=driver_pod(),
        driver_revision=NEW,
    )
    assert node.labels == {STATE_LABEL: "upgrade-done"} and node.annotations == {REQUESTED_ANNOTATION: "true"}
    assert node.unschedulable and not node.ready and node.requested and node.driver_out_of_date
    pod = WorkloadPod.from_pod(
        {
            "metadata": {
                "namespace": "ml",
                "name": "p",
                "labels": {"a": "b"},
                "ownerReferences": [{"kind": "DaemonSet", "name": "x"}],
                "deletionTimestamp": "2025-01-01T00:00:00Z",
            },
            "spec": {
                "nodeName": "n1",
                "containers": [{"resources": {"limits": {"nvidia.com/mig-1g.10gb": 1}}}],
                "volumes": [{"name": "s", "emptyDir": {}}],
            },
            "status": {"phase": "Running"},
        }
    )
    assert (pod.ref, pod.node, pod.uses_gpu, pod.has_emptydir, pod.is_daemonset_pod, pod.terminating) == (
        "ml/p",
        "n1",
        True,
        True,
        True,
        True,
    )
    assert not pod.controlled  # an owner, but not its controller
    plain = WorkloadPod.from_pod({"metadata": {"name": "q"}, "spec": {"containers": [{"resources": {}}]}})
    assert not plain.uses_gpu and not plain.has_emptydir and plain.phase == "Pending" and not plain.controlled
    owned = {"name": "r", "ownerReferences": [{"kind": "ReplicaSet", "name": "r", "controller": True}]}
    assert WorkloadPod.from_pod({"metadata": owned, "spec": {}}).controlled


class ClaimsKube:
    """Pods by node, and the resource.k8s.io ResourceClaims of the `served` versions (none: the group is not served);
    reading a claim named in `forbidden` is refused."""

    def __init__(self, pods: list[dict[str, Any]], claims: dict[str, dict[str, Any]], served: tuple[str, ...] = ("v1",),
                 forbidden: tuple[str, ...] = ()) -> None:  # fmt: skip
        self.pods, self.claims, self.served, self.forbidden = pods, claims, served, forbidden
        self.paths: list[str] = []

    def list(self, kind: str, namespace: str | None = None, label_selector: str | None = None,
             field_selector: str | None = None) -> list[dict[str, Any]]:  # fmt: skip
        return [p for p in self.pods if field_selector == f"spec.nodeName={p['spec']['nodeName']}"]

    def request(self, method: str, path: str, **_: Any) -> Any:
        self.paths.append(path)
        missing = ApiError(404, '{"message": "not found"}', f"GET {path}")
        if path == "/apis/resource.k8s.io":
            if not self.served:
                raise missing
            return {"versions": [{"version": v} for v in self.served]}
        version, name = path.split("/")[3], path.rsplit("/", 1)[1]
        if name in self.forbidden:
            raise ApiError(403, '{"message": "forbidden"}', f"GET {path}")
        if version not in self.served or name not in self.claims:
            raise missing
        return self.claims[name]


def _claim(driver: str, admin: bool = False) -> dict[str, Any]:
    result = {"request": "gpu", "driver": driver, "pool": "n1", "device": "gpu-0"}
    if admin:
        result["adminAccess"] = True
    return {"status": {"allocation": {"devices": {"results": [result]}}}}


def _claiming(name: str, claim: str, made: bool = True, **meta: Any) -> dict[str, Any]:
    """A pod holding a ResourceClaim: one made from a template (named in its status), or one named in its spec."""
    entry = {"name": "gpu", **({"resourceClaimTemplateName": "one-gpu"} if made else {"resourceClaimName": claim})}
    owner = [{"kind": "StatefulSet", "name": name, "controller": True}]
    return {
        "metadata": {"namespace": "ml", "name": name, "ownerReferences": owner, **meta},
        "spec": {"nodeName": "n1", "containers": [{"name": "main", "resources": {"claims": [{"name": "gpu"}]}}],
                 "resourceClaims": [entry]},
        "status": {"phase": "Running", **({"resourceClaimStatuses": [{"name": "gpu", "resourceClaimName": claim}]}
                                           if made else {})},
    }  # fmt: skip


def test_pod_deletion_evicts_pods_holding_a_dra_gpu_claim() -> None:
    """A pod that gets its GPU through a DRA ResourceClaim allocated by gpu.nvidia.com is a GPU pod, as upstream's
    gpuPodSpecFilter (PodHasNVIDIAGPUClaim) has it; admin-access allocations (monitoring) and other drivers' are not.
    Only container resources were looked at: pod deletion skipped such a pod and deleted the driver pod under it
    (k8s-driver-manager leaves eviction to the operator under autoUpgrade)."""
    from gpu_operator.upgrade.adapter import workload_pods

    pods = [
        _claiming("trainer-0", "trainer-0-gpu-x"),
        _claiming("named", "shared-gpu", made=False),
        _claiming("monitor", "monitor-gpu"),
        _claiming("nic-user", "nic"),
        _claiming("gone", "gone-claim"),
        _claiming("unreadable", "secret-claim"),
        _claiming("agent", "agent-gpu", ownerReferences=[{"kind": "DaemonSet", "name": "agent", "controller": True}]),
    ]
    claims = {"trainer-0-gpu-x": _claim("gpu.nvidia.com"), "shared-gpu": _claim("gpu.nvidia.com"),
              "monitor-gpu": _claim("gpu.nvidia.com", admin=True), "nic": _claim("net.example.com"),
              "agent-gpu": _claim("gpu.nvidia.com")}  # fmt: skip
    node = make_node(state="pod-deletion-required", unschedulable=True)
    pol = policy(pod_deletion=PD)
    kube = ClaimsKube(pods, claims, forbidden=("secret-claim",))
    found = workload_pods(kube, [node], pol)  # type: ignore[arg-type]
    assert {p.name for p in found if p.uses_gpu} == {"trainer-0", "named", "unreadable", "agent"}
    assert kube.paths[0] == "/apis/resource.k8s.io" and kube.paths.count("/apis/resource.k8s.io") == 1
    assert "/apis/resource.k8s.io/v1/namespaces/ml/resourceclaims/trainer-0-gpu-x" in kube.paths
    # A DaemonSet's pod holding a GPU claim fails pod deletion, as one asking for nvidia.com/gpu does (above).
    p = run([node], found, pol=pol)
    assert of(p, EvictPods) == [] and states(p) == {"n1": "upgrade-failed"}
    assert "ml/agent" in of(p, Event)[0].message
    p = run([node], [f for f in found if f.name != "agent"], pol=pol)
    assert of(p, EvictPods)[0].pods == (("ml", "named"), ("ml", "trainer-0"), ("ml", "unreadable"))

    # DRA in beta (Kubernetes 1.32, 1.33): read there; not served at all: no claims, nothing read.
    kube = ClaimsKube(pods[:1], claims, served=("v1beta1",))
    assert [p.uses_gpu for p in workload_pods(kube, [node], pol)] == [True]  # type: ignore[arg-type]
    assert kube.paths[-1] == "/apis/resource.k8s.io/v1beta1/namespaces/ml/resourceclaims/trainer-0-gpu-x"
    kube = ClaimsKube(pods[:1], claims, served=())
    assert [p.uses_gpu for p in workload_pods(kube, [node], pol)] == [False]  # type: ignore[arg-type]
    assert kube.paths == ["/apis/resource.k8s.io"]
    # Only pod deletion asks which pods use a GPU: a drain reads no claims.
    kube = ClaimsKube(pods, claims)
    workload_pods(kube, [node], policy(drain=DrainSpec(enable=True)))  # type: ignore[arg-type]
    assert kube.paths == []


def test_a_node_first_seen_in_sync_is_marked_done_without_an_event() -> None:
    from gpu_operator.upgrade import Event, SetState, UpgradeNode, plan

    ready = {"phase": "Running", "containerStatuses": [{"name": "c", "ready": True, "restartCount": 0}]}
    pod = {"metadata": {"name": "drv", "labels": {"controller-revision-hash": "r1"}}, "status": ready}
    node = UpgradeNode("n1", driver_pod=pod, driver_revision="r1")
    result = plan([node], [], DriverUpgradePolicySpec(auto_upgrade=True), 0.0)
    assert SetState("n1", "upgrade-done") in result.actions
    assert not [a for a in result.actions if isinstance(a, Event)]


# The settled-node shortcut (planner.settled, adapter._built)


def test_a_settled_node_object_is_skipped_and_a_changed_one_stepped_again() -> None:
    done = make_node("s1", "upgrade-done", rev=NEW)
    assert plan([done], [], policy(), 0.0).actions == []
    assert planner.settled(done)
    assert plan([done], [], policy(), 0.0).actions == []  # the same object: skipped, still nothing
    plan([make_node("other", "upgrade-done", rev=NEW)], [], policy(), 0.0)  # another NVIDIADriver's nodes
    assert planner.settled(done)
    # Its DaemonSet moved on: a new object (the adapter makes one when an input changes) is stepped again.
    behind = make_node("s1", "upgrade-done", rev=NEW, revision="rev-newer")
    assert plan([behind], [], policy(), 0.0).started == ("s1",)
    assert not planner.settled(behind)
    # A node with something to say is never taken as settled.
    waiting = make_node("s2", None, rev=None)
    assert plan([waiting], [], policy(), 0.0).waiting == {"s2": "no driver pod on the node yet"}
    assert not planner.settled(waiting)


def test_the_adapter_gives_the_same_object_for_the_same_inputs() -> None:
    facts = NodeFacts(name="a1", labels={DEPLOY_DRIVER: "true", "feature.node.kubernetes.io/pci-10de.present": "true"})
    pod = {**driver_pod("drv-a1", rev=NEW), "node": "a1", "owner": "nvidia-driver-daemonset"}
    pod["metadata"]["labels"][OPERAND_STATE_LABEL] = "state-driver"
    pods = {"drv-a1": pod}
    revisions = {"r": {"metadata": {"labels": {"controller-revision-hash": NEW}}, "revision": 3,
                       "owner": "nvidia-driver-daemonset"}}  # fmt: skip
    kept, index = UpgradeInputs(), PodIndex.of(pods)
    (first,) = kept.over([facts], index, revisions, {})
    (again,) = kept.over([facts], index, revisions, {})
    assert again is first and first.driver_pod is pod and first.driver_revision == NEW
    assert upgrade_nodes([facts], pods, revisions, index=index) == [first]  # made afresh, the same
    (refused,) = kept.over([facts], index, revisions, {"a1": "why"})
    assert refused is not first and refused.refused == "why"
    newer = {**pod, "metadata": {**pod["metadata"], "deletionTimestamp": "2026-01-01T00:00:00Z"}}
    (moved,) = kept.over([facts], PodIndex.of({"drv-a1": newer}), revisions, {"a1": "why"})
    assert moved.driver_pod is newer
    relabelled = NodeFacts(name="a1", labels={**facts.labels, DEPLOY_DRIVER: "paused-for-driver-upgrade"})
    (paused,) = kept.over([relabelled], index, revisions, {"a1": "why"})
    assert paused.labels is relabelled.labels and paused.driver_pod is pod


def test_a_driver_pod_no_daemonset_owns_or_adopts_is_an_orphan_the_upgrade_replaces() -> None:
    """A driver DaemonSet deleted with propagationPolicy Orphan (the driver handed between the ClusterPolicy and
    NVIDIADrivers) leaves its pods running without an owner. Such a pod was not out of date for the planner (no
    DaemonSet, no revision to compare), so nothing ever replaced it. Now, as upstream (k8s-operator-libs
    IsOrphanedPod; labelNodesWithOrphanedDriverPods), it is out of date: upgrade-required, and deleted at pod
    restart. One of a pool a driver DaemonSet of ours serves is not: that DaemonSet (same name and selector) adopts
    it; nor is one whose owner is still named (the garbage collector takes care of it)."""
    from gpu_operator.nodes import POOL_LABEL
    from gpu_operator.upgrade.adapter import adopting_pools

    facts = NodeFacts(name="a1", labels={DEPLOY_DRIVER: "true", "feature.node.kubernetes.io/pci-10de.present": "true",
                                         STATE_LABEL: "upgrade-done"})  # fmt: skip
    pod = {**driver_pod("drv-a1", rev=NEW), "node": "a1", "owner": ""}
    pod["metadata"]["labels"].update({OPERAND_STATE_LABEL: "state-driver", POOL_LABEL: "ubuntu22.04"})
    ds = {"metadata": {"labels": {OPERAND_STATE_LABEL: "state-driver", POOL_LABEL: "ubuntu22.04"}}}
    pools = adopting_pools({("DaemonSet", "gpu-operator", "nvidia-driver-daemonset-ubuntu22.04"): ds,
                            ("DaemonSet", "gpu-operator", "going"): {"metadata": {
                                "labels": {OPERAND_STATE_LABEL: "state-driver", POOL_LABEL: "rhel9"},
                                "deletionTimestamp": "2026-01-01T00:00:00Z"}}})  # fmt: skip
    assert pools == {"ubuntu22.04"}
    (orphan,) = upgrade_nodes([facts], {"drv-a1": pod}, {})
    assert orphan.orphaned and orphan.driver_out_of_date
    (adopted,) = upgrade_nodes([facts], {"drv-a1": pod}, {}, pools=pools)
    assert not adopted.orphaned and not adopted.driver_out_of_date
    owned_pod = {**pod, "owner": "nvidia-driver-daemonset-rhel9"}
    (owned,) = upgrade_nodes([facts], {"drv-a1": owned_pod}, {})
    assert not owned.orphaned
    kept = UpgradeInputs()
    index = PodIndex.of({"drv-a1": pod})
    (first,) = kept.over([facts], index, {}, {}, frozenset())
    (again,) = kept.over([facts], index, {}, {}, frozenset(pools))
    assert first.orphaned and not again.orphaned  # made again when the pools change
    done = plan([orphan], [], policy(), NOW)
    assert done.actions[0] == SetState("a1", "upgrade-required")
    assert any("drv-a1 belongs to no DaemonSet" in getattr(a, "message", "") for a in done.actions)
    restart = UpgradeNode("a1", labels={STATE_LABEL: "pod-restart-required"}, unschedulable=True, driver_pod=pod,
                          orphaned=True)  # fmt: skip
    assert DeleteDriverPod("a1", "drv-a1") in plan([restart], [], policy(), NOW).actions


def test_by_urgency_puts_the_nodes_nearest_done_first_and_keeps_each_nodes_actions_in_order() -> None:
    actions = [
        SetState("idle", "upgrade-required"),
        SetState("new", "cordon-required"),
        Cordon("new"),
        SetState("failed", "upgrade-required"),
        DeleteDriverPod("restart", "driver-x"),
        Uncordon("finish"),
        SetState("finish", "upgrade-done"),
        SetState("validate", "uncordon-required"),
    ]
    states = {"new": "upgrade-required", "failed": "upgrade-failed", "restart": "pod-restart-required",
              "finish": "uncordon-required", "validate": "validation-required"}  # fmt: skip
    groups = planner.by_urgency(actions, states)
    assert [g[0].node for g in groups] == ["finish", "validate", "restart", "failed", "new", "idle"]
    assert groups[0] == [Uncordon("finish"), SetState("finish", "upgrade-done")]
    assert groups[4] == [SetState("new", "cordon-required"), Cordon("new")]
    # Among equals, the plan's order.
    same = [SetState(n, "upgrade-required") for n in ("c", "a", "b")]
    assert [g[0].node for g in planner.by_urgency(same, {})] == ["c", "a", "b"]


# plan_forward: one node moved on between passes


def test_plan_forward_takes_a_node_whose_new_pods_are_ready_to_done_in_one_patch() -> None:
    node = make_node(state="pod-restart-required", pod=driver_pod("new", rev=NEW), unschedulable=True,
                     annotations={DELETED_DRIVER_POD_ANNOTATION: "old"})  # fmt: skip
    step = planner.plan_forward(node, policy(), NOW)
    assert step is not None
    assert [a.state for a in of(step, SetState)] == ["validation-required", "uncordon-required", "upgrade-done"]
    assert of(step, Uncordon) == [Uncordon("n1")]
    assert Annotate("n1", DELETED_DRIVER_POD_ANNOTATION, None) in step.actions
    assert "n1" in step.finished and step.waiting == {}


def test_plan_forward_stops_at_validation_while_the_validator_is_not_ready_and_stamps_its_clock() -> None:
    node = make_node(state="pod-restart-required", pod=driver_pod("new", rev=NEW), unschedulable=True,
                     validator=validator_pod(ready=False))  # fmt: skip
    step = planner.plan_forward(node, policy(), NOW)
    assert step is not None and states(step) == {"n1": "validation-required"}
    assert of(step, Uncordon) == []
    (stamp,) = [a for a in of(step, Annotate) if a.key == VALIDATION_START_ANNOTATION]
    assert stamp.value is not None
    # Then the validator turns Ready: validated, uncordoned, done.
    later = make_node(state="validation-required", rev=NEW, unschedulable=True,
                      annotations={VALIDATION_START_ANNOTATION: str(stamp.value)})  # fmt: skip
    step = planner.plan_forward(later, policy(), NOW + 5)
    assert step is not None and states(step) == {"n1": "upgrade-done"} and of(step, Uncordon) == [Uncordon("n1")]


@pytest.mark.parametrize(
    ("why", "node", "pol"),
    [
        ("its driver pod is not ready yet (a wait)", make_node(state="pod-restart-required",
                                                               pod=driver_pod("new", rev=NEW, ready=False)), None),
        ("its driver pod is out of date (a deletion: the pass's)", make_node(state="pod-restart-required", rev=OLD),
         None),
        ("the validator is still not ready (the stamp alone is no move)",
         make_node(state="validation-required", rev=NEW, validator=validator_pod(ready=False)), None),
        ("a state before the restart (its pods are read by the pass)", make_node(state="drain-required"), None),
        ("done already", make_node(state="upgrade-done", rev=NEW), None),
        ("failed (a recovery has its event: the pass's)", make_node(state="upgrade-failed", rev=NEW), None),
        ("orchestration is off", make_node(state="pod-restart-required", pod=driver_pod("new", rev=NEW)),
         policy(auto_upgrade=False)),
    ],
)
def test_plan_forward_leaves_to_the_pass_whatever_is_not_a_move_forward(
    why: str, node: UpgradeNode, pol: DriverUpgradePolicySpec | None
) -> None:
    assert planner.plan_forward(node, pol or policy(), NOW) is None, why


def test_upgrade_node_builds_one_nodes_input_as_a_pass_would() -> None:
    facts = NodeFacts(name="n1", labels={DEPLOY_DRIVER: "true", "feature.node.kubernetes.io/pci-10de.present": "true",
                                         STATE_LABEL: "pod-restart-required"})  # fmt: skip

    def projected(name: str, state: str, rev: str, ready: bool = True) -> dict[str, Any]:
        pod = driver_pod(name, rev=rev, ready=ready)
        pod["metadata"]["labels"][OPERAND_STATE_LABEL] = state
        return {**pod, "node": "n1", "owner": f"ds-{state}"}

    pods = [projected("drv", "state-driver", NEW), projected("val", "state-operator-validation", "v", ready=False)]
    revisions = {name: {"owner": "ds-state-driver", "revision": number,
                        "metadata": {"name": name, "labels": {"controller-revision-hash": rev}}}
                 for name, number, rev in (("r1", 1, OLD), ("r2", 2, NEW))}  # fmt: skip
    by_name = {p["metadata"]["name"]: p for p in pods}
    one = upgrade_node(facts, PodIndex.of(by_name).by_state, revisions, "why")
    (by_pass,) = upgrade_nodes([facts], by_name, revisions, {"n1": "why"})
    assert one == by_pass
    assert one is not None and one.driver_revision == NEW and not one.driver_out_of_date and one.refused == "why"
    assert one.validator_pod is not None and one.validator_pod["metadata"]["name"] == "val"
    assert upgrade_node(NodeFacts(name="cpu"), {}, revisions) is None  # no driver of ours there


def test_revisions_of_a_deleted_same_named_daemonset_do_not_make_the_new_driver_pod_out_of_date() -> None:
    """The driver DaemonSet deleted (driver switched off and on, ClusterPolicy re-created) and created again under
    the same name with another template: until the garbage collector deletes the old DaemonSet's ControllerRevisions
    (owned by the old uid; revision 4 here) they sit in the namespace beside the new DaemonSet's revision 1. They
    were matched by the owner's name, so the old revision counted as "the DaemonSet's newest" and the new
    DaemonSet's fresh driver pod read as out of date: the upgrade would cordon the node, delete GPU pods and restart
    a driver pod already current. REFERENCE.md §5: out of date = the pod's controller-revision-hash differs from *the
    DaemonSet's* newest ControllerRevision; the DaemonSet controller counts only the revisions it controls (by
    uid), as revisions and pods are matched now."""
    from gpu_operator.observe import revision_projection
    from gpu_operator.states.base import MANAGED_BY, OPERATOR_NAME
    from support import facts

    ds = "nvidia-driver-daemonset"

    def owner(uid: str) -> list[dict[str, Any]]:
        return [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": ds, "uid": uid, "controller": True}]

    def revision(name: str, number: int, uid: str, digest: str) -> dict[str, Any]:
        return {"apiVersion": "apps/v1", "kind": "ControllerRevision", "revision": number,
                "metadata": {"name": name, "namespace": "gpu-operator", "ownerReferences": owner(uid),
                             "labels": {"controller-revision-hash": digest}}}  # fmt: skip

    node = facts("n1", labels={DEPLOY_DRIVER: "true"})
    listed = (revision(f"{ds}-old4", 4, "uid-old", "oldhash"), revision(f"{ds}-new1", 1, "uid-new", "newhash"))
    revisions = {r["metadata"]["name"]: revision_projection(r) for r in listed}
    pod = pod_projection({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": f"{ds}-x7k2p", "namespace": "gpu-operator", "ownerReferences": owner("uid-new"),
                     "labels": {MANAGED_BY: OPERATOR_NAME, OPERAND_STATE_LABEL: "state-driver",
                                "controller-revision-hash": "newhash"}},
        "spec": {"nodeName": "n1"},
        "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}],
                   "containerStatuses": [{"name": "nvidia-driver-ctr", "ready": True, "restartCount": 0}]},
    })  # fmt: skip
    by_state = PodIndex.of({pod["metadata"]["name"]: pod}).by_state
    upgrade = upgrade_node(node, by_state, revisions)
    assert upgrade is not None
    assert upgrade.driver_revision == "newhash", f"newest revision read as {upgrade.driver_revision!r}"
    assert not upgrade.driver_out_of_date


@pytest.mark.parametrize("seed", range(10))
def test_one_walk_counts_the_nodes_as_a_walk_per_count_does(seed: int) -> None:
    import random

    rng = random.Random(seed)
    states = [None, "upgrade-done", "upgrade-required", "upgrade-failed", "cordon-required", "drain-required",
              "validation-required", "uncordon-required", "no-such-state"]  # fmt: skip
    nodes = []
    for i in range(rng.randint(0, 60)):
        labels = {SKIP_LABEL: "true"} if rng.random() < 0.2 else {}
        node = make_node(f"n{i}", rng.choice(states), unschedulable=rng.random() < 0.3, ready=rng.random() < 0.8,
                         labels=labels, rev=OLD if rng.random() < 0.8 else None)  # fmt: skip
        nodes.append(UpgradeNode(**{**node.__dict__, "refused": "why" if rng.random() < 0.1 else ""}))
    busy = planner.IN_PROGRESS_STATES
    tally = planner._Tally.of(nodes)
    assert tally == planner._Tally(
        total=sum(n.driver_pod is not None or n.state in busy for n in nodes),
        in_progress=sum(n.state in busy for n in nodes),
        unavailable=sum(n.state in busy or (n.driver_pod is not None and n.unavailable) for n in nodes),
        failed=sum(n.state == "upgrade-failed" for n in nodes),
        done=sum(n.state == "upgrade-done" for n in nodes),
        pending=sum(n.state == "upgrade-required" and not n.skipped for n in nodes),
        skipped=sum(n.skipped for n in nodes),
    )
    counters = plan(nodes, [], policy(max_unavailable="30%"), NOW).counters
    assert (counters.total, counters.done, counters.pending, counters.skipped, counters.failed) == (
        tally.total, tally.done, tally.pending, tally.skipped, tally.failed)  # fmt: skip


def test_the_adapter_makes_a_new_object_when_the_driver_daemonset_has_a_newer_revision() -> None:
    facts = NodeFacts(name="a1", labels={DEPLOY_DRIVER: "true", "feature.node.kubernetes.io/pci-10de.present": "true"})
    pod = {**driver_pod("drv-a1", rev=NEW), "node": "a1", "owner": "nvidia-driver-daemonset"}
    pod["metadata"]["labels"][OPERAND_STATE_LABEL] = "state-driver"
    pods = {"drv-a1": pod}
    index = PodIndex.of(pods)
    revisions = {"r": {"metadata": {"labels": {"controller-revision-hash": NEW}}, "revision": 3,
                       "owner": "nvidia-driver-daemonset"}}  # fmt: skip
    kept = UpgradeInputs()
    (first,) = kept.over([facts], index, revisions, {})
    assert not first.driver_out_of_date
    newer = {**revisions, "r2": {"metadata": {"labels": {"controller-revision-hash": "rev-newer"}}, "revision": 4,
                                 "owner": "nvidia-driver-daemonset"}}  # fmt: skip
    (second,) = kept.over([facts], index, newer, {})  # the same pods, the very sequences
    assert second is not first and second.driver_revision == "rev-newer" and second.driver_out_of_date
    (third,) = kept.over([facts], index, newer, {})
    assert third is second


@pytest.mark.parametrize("seed", range(12))
def test_the_inputs_a_pass_keeps_are_the_ones_made_from_scratch(seed: int) -> None:
    """Over passes of nodes coming, going and relabelled, driver and validator pods replaced, refusals and the
    DaemonSet's newest revision changing, UpgradeInputs gives what upgrade_nodes makes from scratch, and keeps
    the very object of a node none of whose inputs changed; so do two kept over two NVIDIADrivers' nodes (the
    pods of all of them in the index) while nodes move from one to the other."""
    import random

    rng = random.Random(seed)
    gpu = "feature.node.kubernetes.io/pci-10de.present"
    nodes: dict[str, NodeFacts] = {}
    pods: dict[str, dict[str, Any]] = {}
    revisions = {"r1": {"metadata": {"labels": {"controller-revision-hash": OLD}}, "revision": 1,
                        "owner": "nvidia-driver-daemonset"}}  # fmt: skip
    refused: dict[str, str] = {}
    kept = UpgradeInputs()
    groups = {"a": UpgradeInputs(), "b": UpgradeInputs()}
    owner: dict[str, str] = {}  # node -> its NVIDIADriver
    index = PodIndex.of(pods)
    by_state: dict[str, dict[str, tuple[dict[str, Any], ...]]] = {}
    last: dict[str, UpgradeNode] = {}
    last_inputs: dict[str, tuple[Any, ...]] = {}

    def put_pod(node: str, state: str) -> None:
        name = f"{state}-{node}"
        made = {**driver_pod(name, rev=rng.choice([OLD, NEW]), ready=rng.random() < 0.7), "node": node,
                "owner": "nvidia-driver-daemonset" if state == "state-driver" else "nvidia-operator-validator"}
        made["metadata"]["labels"][OPERAND_STATE_LABEL] = state
        pods[name] = made
        by_state.setdefault(state, {})[node] = (made,)  # replaced on change, as the runtime's index does

    for step in range(40):
        for _ in range(rng.randint(0, 6)):
            name = f"n{rng.randint(0, 14)}"
            roll = rng.random()
            if roll < 0.15 and name in nodes:
                del nodes[name]
            elif roll < 0.6:
                value = rng.choice(["true", "true", "false", "paused-for-driver-upgrade"])
                state = rng.choice([None, "upgrade-done", "upgrade-required", "drain-required", "pod-restart-required"])
                labels = {DEPLOY_DRIVER: value, gpu: "true", **({STATE_LABEL: state} if state else {})}
                nodes[name] = NodeFacts(name=name, labels=labels, unschedulable=rng.random() < 0.2)
            elif roll < 0.85:
                put_pod(name, rng.choice(["state-driver", "state-operator-validation"]))
            elif roll < 0.92:
                for state in ("state-driver", "state-operator-validation"):
                    if by_state.get(state, {}).pop(name, None) is not None:
                        del pods[f"{state}-{name}"]
            elif name in refused:
                del refused[name]
            else:
                refused[name] = "not in the matrix"
        if rng.random() < 0.1:
            number = len(revisions) + 1
            revisions[f"r{number}"] = {"metadata": {"labels": {"controller-revision-hash": f"rev-{number}"}},
                                       "revision": number, "owner": "nvidia-driver-daemonset"}  # fmt: skip
        index = PodIndex({s: dict(on) for s, on in by_state.items()}, {}, {})
        order = list(nodes.values())
        rng.shuffle(order)
        got = {n.name: n for n in kept.over(order, index, revisions, refused)}
        want = {n.name: n for n in upgrade_nodes(order, pods, revisions, refused)}
        assert got == want, f"step {step}"
        assert kept.needs_pods == {n for n, u in want.items() if u.state in NEEDS_PODS}, f"step {step}"
        for name in rng.sample(sorted(nodes), min(len(nodes), 3)):
            owner[name] = rng.choice("ab")
        for group, its in groups.items():
            part = [n for n in order if owner.get(n.name, "a") == group]
            mine = {n.name: n for n in its.over(part, index, revisions, refused)}
            assert mine == {n.name: n for n in upgrade_nodes(part, pods, revisions, refused)}, f"step {step}"
        inputs = {name: (nodes[name], by_state.get("state-driver", {}).get(name),
                         by_state.get("state-operator-validation", {}).get(name), refused.get(name), len(revisions))
                  for name in got}  # fmt: skip
        for name, node in got.items():
            before = last_inputs.get(name)
            now = inputs[name]
            same = before is not None and all(x is y for x, y in zip(before[:3], now[:3], strict=True))
            if same and before is not None and before[3:] == now[3:]:
                assert node is last[name], f"step {step}: {name} made again with the same inputs"
        last, last_inputs = got, inputs


def test_the_inputs_a_pass_keeps_start_over_after_a_call_that_failed() -> None:
    labels = {DEPLOY_DRIVER: "true", "feature.node.kubernetes.io/pci-10de.present": "true"}
    nodes = [NodeFacts(name=f"a{i}", labels=labels) for i in range(3)]
    revisions = {"r": {"metadata": {"labels": {"controller-revision-hash": NEW}}, "revision": 1,
                       "owner": "nvidia-driver-daemonset"}}  # fmt: skip

    def pod(node: str, owner: bool = True) -> dict[str, Any]:
        made = {**driver_pod(f"drv-{node}", rev=NEW), "node": node}
        if owner:
            made["owner"] = "nvidia-driver-daemonset"
        made["metadata"]["labels"][OPERAND_STATE_LABEL] = "state-driver"
        return made

    kept = UpgradeInputs()
    good = {f"drv-{n.name}": pod(n.name) for n in nodes}
    kept.over(nodes[:1], PodIndex.of(good), revisions, {})
    index = PodIndex.of(good)
    broken = {n: ((pod(n, owner=False),) if n == "a1" else p) for n, p in index.by_state["state-driver"].items()}
    with pytest.raises(KeyError):  # a projection without its owner: the pass fails
        kept.over(nodes, PodIndex({"state-driver": broken}, {}, {}), revisions, {})
    assert not kept.nodes and not kept.made  # nothing half kept (which nodes were made first is the set's order)
    got = kept.over(nodes, PodIndex.of(good), revisions, {})
    assert sorted(got, key=lambda n: n.name) == upgrade_nodes(nodes, good, revisions, {})
    assert all(n.driver_pod is not None for n in got)


def test_a_restarted_operator_posts_no_stuck_node_event_the_status_names() -> None:
    """The event on a node stuck mid-upgrade (here upgrade-failed) was deduplicated only in memory: every restart
    and leader hand-over posted it again, though status.upgrade.waiting names the node, its state and the same
    reason. Now a node the previous status names so gets no event; a new reason does."""
    from gpu_operator.api import parse_spec
    from gpu_operator.nodes import deploy_label
    from gpu_operator.observe import Snapshot
    from gpu_operator.upgrade.orchestrate import orchestrate
    from support import EchoKube, load_policy, node

    spec = parse_spec(load_policy()["spec"])
    assert spec.driver.upgrade_policy.auto_upgrade

    def orchestrated(reason: str, said: list[dict[str, Any]]) -> tuple[list[str], dict[str, Any]]:
        obj = node("n1", labels={STATE_LABEL: "upgrade-failed", deploy_label("driver"): "true"})
        obj["metadata"]["annotations"] = {FAILURE_REASON_ANNOTATION: reason}
        snap = Snapshot(nodes={"n1": NodeFacts.from_node(obj)}, policies={}, owned={}, pods={}, revisions={})
        posted: list[str] = []
        out = orchestrate(EchoKube(), "gpu-operator", spec, snap,  # type: ignore[arg-type]
                          lambda ref, etype, reason, message: posted.append(message), said=said)  # fmt: skip
        assert out.status is not None
        return posted, out.status

    posted, status = orchestrated("driver pod crash-looping", [])
    assert [m.split(";")[0] for m in posted] == ["upgrade-failed: upgrade failed: driver pod crash-looping"]
    assert status["waiting"][0]["node"] == "n1"
    again, _ = orchestrated("driver pod crash-looping", status["waiting"])  # restarted: the status says it
    assert again == []
    other, _ = orchestrated("validation timed out", status["waiting"])
    assert [m.split(";")[0] for m in other] == ["upgrade-failed: upgrade failed: validation timed out"]


def test_no_driver_upgrade_is_orchestrated_with_sandbox_workloads_enabled() -> None:
    """With sandboxWorkloads.enabled, upstream's UpgradeReconciler orchestrates no upgrade of the ClusterPolicy's
    driver (controllers/upgrade_controller.go: "Advanced driver upgrade policy is not supported when
    'sandboxWorkloads.enabled=true'"): it sets driver_auto_upgrade_enabled to 0 and removes every node's state label.
    Our node labelling already removed nvidia.com/gpu-driver-upgrade-enabled then (k8s-driver-manager evicts and
    drains by itself), but orchestrate() still ran the state machine under the chart's autoUpgrade: true: a node
    with an out-of-date driver pod was cordoned (two drivers of the same step), status.upgrade was reported, and a
    node switched to vm-passthrough mid-upgrade (no driver label any more) stayed cordoned for good. Now every node
    is let go as with autoUpgrade off. An NVIDIADriver's nodes are still upgraded (upstream does too)."""
    import copy

    from gpu_operator import metrics
    from gpu_operator.api import parse_spec
    from gpu_operator.nodes import UPGRADE_ENABLED_ANNOTATION, deploy_label, desired_annotations
    from gpu_operator.observe import Snapshot
    from gpu_operator.upgrade.orchestrate import orchestrate
    from support import RecordingKube, load_policy, node

    raw = copy.deepcopy(load_policy()["spec"])
    raw["sandboxWorkloads"] = {"enabled": True, "defaultWorkload": "container"}
    spec = parse_spec(raw)
    assert spec.driver.upgrade_policy.auto_upgrade  # the chart's default
    container = node("n1", labels={STATE_LABEL: "upgrade-done", deploy_label("driver"): "true",
                                   "nvidia.com/gpu.present": "true"})  # fmt: skip
    container["metadata"]["annotations"] = {UPGRADE_ENABLED_ANNOTATION: "true"}
    vm = node("v1", labels={STATE_LABEL: "wait-for-jobs-required", "nvidia.com/gpu.present": "true",
                            "nvidia.com/gpu.workload.config": "vm-passthrough"})  # fmt: skip
    vm["spec"] = {"unschedulable": True}  # cordoned by the upgrade, before the admin moved it to VMs
    nodes = {n["metadata"]["name"]: NodeFacts.from_node(n) for n in (container, vm)}
    assert desired_annotations(nodes["n1"], spec) == {UPGRADE_ENABLED_ANNOTATION: None}  # as upstream
    pod = {
        "metadata": {"name": "drv-n1",
                     "labels": {"controller-revision-hash": OLD, OPERAND_STATE_LABEL: "state-driver"}},
        "status": {"phase": "Running",
                   "containerStatuses": [{"name": "nvidia-driver-ctr", "ready": True, "restartCount": 0}]},
        "node": "n1", "owner": "nvidia-driver-daemonset",
    }  # fmt: skip
    revisions = {"r": {"metadata": {"labels": {"controller-revision-hash": NEW}}, "revision": 2,
                       "owner": "nvidia-driver-daemonset"}}  # fmt: skip
    snap = Snapshot(nodes=nodes, policies={}, owned={}, pods={"drv-n1": pod}, revisions=revisions)

    posted: list[str] = []

    def patches(nvidia_driver: bool) -> tuple[Any, dict[str, dict[str, Any]]]:
        kube = RecordingKube()
        out = orchestrate(kube, "gpu-operator", spec, snap,  # type: ignore[arg-type]
                          lambda ref, etype, reason, message, **_: posted.append(message), nvidia_driver=nvidia_driver)
        return out, {c[1][1]: c[1][2] for c in kube.calls if c[0] == "merge_patch" and c[1][0] == "Node"}

    metrics.driver_auto_upgrade_enabled.set(1)
    out, sent = patches(nvidia_driver=False)
    assert out.status is None and not out.busy
    assert metrics.driver_auto_upgrade_enabled._value.get() == 0
    assert sent["n1"] == {"metadata": {"labels": {STATE_LABEL: None}}}  # no cordon: the state label goes
    assert sent["v1"]["spec"] == {"unschedulable": None}  # the upgrade's cordon undone
    assert sent["v1"]["metadata"]["labels"] == {STATE_LABEL: None}
    assert posted == ["sandboxWorkloads was enabled in wait-for-jobs-required: node uncordoned (the upgrade had "
                      "cordoned it)"]  # fmt: skip
    # An NVIDIADriver's nodes (its group's spec carries the ClusterPolicy's sandboxWorkloads) are upgraded.
    out, sent = patches(nvidia_driver=True)
    assert out.status is not None and sent["n1"]["spec"] == {"unschedulable": True}


def test_no_upgrade_slot_is_said_free_while_the_clusterpolicys_auto_upgrade_is_off() -> None:
    """With the ClusterPolicy's autoUpgrade off no upgrade can start (driver_auto_upgrade_enabled 0, no
    status.upgrade), yet gpu_operator_nodes_upgrades_available ("Upgrade slots free now") said 1 on every pass: the
    plan's counters were reported with autoUpgrade off too. Upstream's reconcileClusterPolicyDriverUpgrades
    (controllers/upgrade_controller.go) returns before it sets any node count then; ours now reports none."""
    import copy

    from gpu_operator import metrics
    from gpu_operator.api import parse_spec
    from gpu_operator.observe import Snapshot
    from gpu_operator.upgrade.orchestrate import orchestrate
    from support import RecordingKube, facts, load_policy, policy_object

    raw = copy.deepcopy(load_policy()["spec"])
    raw["driver"]["upgradePolicy"]["autoUpgrade"] = False
    nodes = {n: facts(n, labels={"nvidia.com/gpu.deploy.driver": "true"}) for n in ("a1", "a2")}
    ds = "nvidia-driver-daemonset-ubuntu22.04"
    ready = {"phase": "Running", "containerStatuses": [{"name": "c", "ready": True, "restartCount": 0}]}
    pods: dict[str, Any] = {
        f"drv-{n}": {"metadata": {"name": f"drv-{n}", "labels": {"controller-revision-hash": NEW,
                                                                 OPERAND_STATE_LABEL: "state-driver"}},
                     "node": n, "owner": ds, "status": ready, "ready": True}
        for n in nodes
    }  # fmt: skip
    revisions = {"r": {"metadata": {"labels": {"controller-revision-hash": NEW}}, "revision": 2, "owner": ds}}
    snap = Snapshot(nodes=nodes, policies={"cluster-policy": policy_object(raw)}, owned={}, pods=pods,
                    revisions=revisions)  # fmt: skip
    out = orchestrate(RecordingKube(), "gpu-operator", parse_spec(raw), snap, lambda *a: None)  # type: ignore[arg-type]
    assert out.status is None  # nothing orchestrated
    assert metrics.driver_auto_upgrade_enabled._value.get() == 0
    assert metrics.nodes_upgrades_available._value.get() == 0, "an upgrade slot said free while autoUpgrade is off"
    assert metrics.nodes_upgrades_done._value.get() == 0


def test_upgrade_plan_says_no_upgrade_is_orchestrated_with_sandbox_workloads_enabled(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`gpu-operator upgrade plan` follows the operator (above): with sandboxWorkloads.enabled it previewed the
    ClusterPolicy's autoUpgrade as if the operator would act on it, a wave for each out-of-date node."""
    from gpu_operator.nodes import deploy_label
    from gpu_operator.observe import Snapshot
    from support import facts, load_policy
    from test_nvidiadriver import _upgrade_plan

    policy = load_policy()
    policy["spec"]["sandboxWorkloads"] = {"enabled": True}
    n1 = facts("n1", labels={deploy_label("driver"): "true", STATE_LABEL: "upgrade-done"})
    pod = {"metadata": {"name": "drv-n1", "labels": {"controller-revision-hash": OLD,
                                                     OPERAND_STATE_LABEL: "state-driver"}},
           "node": "n1", "owner": "nvidia-driver-daemonset", "status": {"phase": "Running"}}  # fmt: skip
    revisions = {"r": {"metadata": {"labels": {"controller-revision-hash": NEW}}, "revision": 2,
                       "owner": "nvidia-driver-daemonset"}}  # fmt: skip
    snap = Snapshot(nodes={"n1": n1}, policies={policy["metadata"]["name"]: policy}, owned={},
                    pods={"drv-n1": pod}, revisions=revisions)  # fmt: skip
    out = _upgrade_plan(monkeypatch, capsys, snap)
    assert "sandboxWorkloads is enabled: nothing is orchestrated" in out, out
    assert "wave " not in out, out


def _cp_nodes_snapshot(nodes: list[dict[str, Any]], rev: str = OLD) -> Any:
    """A Snapshot of `nodes` (Node objects) where each one labelled to get the driver runs a driver pod of `rev`
    under a DaemonSet at NEW."""
    from gpu_operator.nodes import gets_driver
    from gpu_operator.observe import Snapshot

    facts = {n["metadata"]["name"]: NodeFacts.from_node(n) for n in nodes}
    pods = {}
    for name in [k for k, f in facts.items() if gets_driver(f)]:
        pod = {**driver_pod(f"nvidia-driver-{name}", rev), "node": name, "owner": "nvidia-driver-daemonset"}
        pod["metadata"]["labels"][OPERAND_STATE_LABEL] = "state-driver"
        pods[pod["metadata"]["name"]] = pod
    revisions = {"r": {"metadata": {"labels": {"controller-revision-hash": NEW}}, "revision": 2,
                       "owner": "nvidia-driver-daemonset"}}  # fmt: skip
    return Snapshot(nodes=facts, policies={}, owned={}, pods=pods, revisions=revisions)


def test_orchestrate_under_sandbox_workloads_writes_no_upgrade_of_its_own() -> None:
    """With sandboxWorkloads.enabled and the chart's autoUpgrade, orchestrate() cordoned a container-workload node
    whose driver was out of date and deleted its driver pod, while the node had lost the upgrade-enabled annotation
    (so its k8s-driver-manager evicted and uncordoned on its own). Found by a review; fixed by e57b957 (see
    test_no_driver_upgrade_is_orchestrated_with_sandbox_workloads_enabled): no cordon, no driver pod deletion."""
    import copy

    from gpu_operator.api import parse_spec
    from gpu_operator.nodes import GPU_PRESENT, WORKLOAD_CONFIG, deploy_label
    from gpu_operator.upgrade.orchestrate import orchestrate
    from support import RecordingKube, load_policy, node

    raw = copy.deepcopy(load_policy()["spec"])
    raw["sandboxWorkloads"] = {"enabled": True, "defaultWorkload": "container"}
    raw["driver"].setdefault("upgradePolicy", {})["autoUpgrade"] = True
    n1 = node("n1", labels={GPU_PRESENT: "true", deploy_label("driver"): "true", WORKLOAD_CONFIG: "container",
                            STATE_LABEL: "upgrade-done"})  # fmt: skip
    kube, snap = RecordingKube(), _cp_nodes_snapshot([n1])
    orchestrate(kube, "gpu-operator", parse_spec(raw), snap, lambda *a, **k: None)  # type: ignore[arg-type]
    patches = [c[1][2] for c in kube.calls if c[0] == "merge_patch" and c[1][0] == "Node"]
    assert not [c for c in kube.calls if c[0] == "delete"], kube.calls
    assert not [p for p in patches if (p.get("spec") or {}).get("unschedulable")], kube.calls


def test_a_node_mid_upgrade_that_no_longer_gets_the_clusterpolicys_driver_is_let_go() -> None:
    """A node mid-upgrade that drops out of the ClusterPolicy's driver (the admin labels it
    nvidia.com/gpu.deploy.driver=false, or its GPU goes) was in no plan any more, and orchestrate() let nodes go
    only when the whole driver was switched off: the node kept its in-progress state label and the upgrade's cordon
    for good, status.upgrade no longer named it and it no longer counted as unavailable. Now it is let go as under
    NVIDIADrivers (reconciler._orchestrate_nvidia_drivers): state label removed, the upgrade's own cordon undone
    with an event. A cordon the admin made before the upgrade stays, and a failed node stays cordoned for the
    admin; the nodes that still get the driver go on as before."""
    from gpu_operator.api import parse_spec
    from gpu_operator.nodes import GPU_PRESENT, deploy_label
    from gpu_operator.upgrade.orchestrate import orchestrate
    from support import RecordingKube, load_policy, node

    spec = parse_spec(load_policy()["spec"])
    assert spec.driver.enabled and spec.driver.upgrade_policy.auto_upgrade

    def gpu_node(name: str, state: str | None, driver: str = "false", cordoned: bool = False,
                 annotations: dict[str, str] | None = None) -> dict[str, Any]:  # fmt: skip
        labels = {GPU_PRESENT: "true", deploy_label("driver"): driver, **({STATE_LABEL: state} if state else {})}
        obj = node(name, labels=labels)
        obj["spec"] = {"unschedulable": cordoned}
        obj["metadata"]["annotations"] = dict(annotations or {})
        return obj

    nodes = [
        gpu_node("keep", "upgrade-done", driver="true"),  # up to date: nothing to do
        gpu_node("ours", "wait-for-jobs-required", cordoned=True),  # cordoned by the upgrade
        gpu_node("admins", "wait-for-jobs-required", cordoned=True,
                 annotations={INITIAL_UNSCHEDULABLE_ANNOTATION: "true"}),  # cordoned before the upgrade
        gpu_node("failed", "upgrade-failed", cordoned=True, annotations={FAILURE_REASON_ANNOTATION: "boom"}),
        gpu_node("done", "upgrade-done"),
        gpu_node("never", None),
    ]
    events: list[tuple[str, str]] = []

    def event(ref: dict[str, Any], etype: str, reason: str, message: str, **_: Any) -> None:
        events.append((ref["metadata"]["name"], message))

    kube = RecordingKube()
    out = orchestrate(kube, "gpu-operator", spec, _cp_nodes_snapshot(nodes, rev=NEW), event)  # type: ignore[arg-type]
    sent: dict[str, list[dict[str, Any]]] = {}
    for verb, what in kube.calls:
        if verb == "merge_patch" and what[0] == "Node":
            sent.setdefault(what[1], []).append(what[2])
    assert set(sent) == {"ours", "admins", "failed", "done"}, sent
    assert sent["ours"] == [{"metadata": {"labels": {STATE_LABEL: None}}, "spec": {"unschedulable": None}}]
    # Neither the admin's cordon nor a failed node's is undone.
    assert sent["admins"] == [{"metadata": {"labels": {STATE_LABEL: None},
                                            "annotations": {INITIAL_UNSCHEDULABLE_ANNOTATION: None}}}]  # fmt: skip
    assert sent["failed"] == [{"metadata": {"labels": {STATE_LABEL: None}}}]
    assert sent["done"] == [{"metadata": {"labels": {STATE_LABEL: None}}}]
    why = "the ClusterPolicy's driver no longer goes to the node"
    assert sorted(events) == [
        ("failed", f"{why} in upgrade-failed (boom): node left cordoned for the admin; uncordon it once its driver "
                   "works"),
        ("ours", f"{why} in wait-for-jobs-required: node uncordoned (the upgrade had cordoned it)"),
    ]  # fmt: skip
    assert out.status is not None and out.status["total"] == 1


def test_the_let_go_of_nodes_the_clusterpolicys_driver_left_takes_them_from_the_kept_inputs() -> None:
    """The let-go of nodes mid-upgrade the ClusterPolicy's driver no longer goes to took every node's name not in
    the plan (a set over every node and every planner node) each pass some node was unmanaged: with CPU nodes in
    the cluster, every pass (~0.8 ms of a settled one at 6,000 nodes). With the pass's kept inputs (which see each
    node change) it takes the nodes they found with an upgrade state and no planner node: the same nodes let go, no
    set over the nodes' names."""
    from dataclasses import replace

    from gpu_operator.api import parse_spec
    from gpu_operator.nodes import GPU_PRESENT, deploy_label
    from gpu_operator.upgrade.adapter import UpgradeKept
    from gpu_operator.upgrade.orchestrate import orchestrate
    from support import RecordingKube, load_policy, node

    class Named(dict[str, NodeFacts]):
        """Nodes by name, counting the sets of their names taken."""

        sets = 0

        def keys(self) -> Any:
            self.sets += 1
            return super().keys()

    spec = parse_spec(load_policy()["spec"])

    def gpu_node(name: str, state: str | None, driver: str) -> dict[str, Any]:
        labels = {GPU_PRESENT: "true", deploy_label("driver"): driver, **({STATE_LABEL: state} if state else {})}
        return node(name, labels=labels)

    objs = [gpu_node("keep", "upgrade-done", "true"), gpu_node("left", "upgrade-done", "false"),
            gpu_node("gone", "wait-for-jobs-required", "false"), node("cpu")]  # fmt: skip
    snap = _cp_nodes_snapshot(objs, rev=NEW)

    def let_go(snap: Any, kept: UpgradeKept | None) -> list[str]:
        kube = RecordingKube()
        orchestrate(kube, "gpu-operator", spec, snap, lambda *_, **__: None, kept=kept)  # type: ignore[arg-type]
        return sorted(what[1] for verb, what in kube.calls if verb == "merge_patch" and what[0] == "Node")

    kept = UpgradeKept()
    for _ in range(2):  # the snapshot still has them (the writes not seen yet): let go again, as a fresh walk does
        named = replace(snap, nodes=Named(snap.nodes))
        assert let_go(named, kept) == let_go(snap, None) == ["gone", "left"]
        assert named.nodes.sets == 0
    # "left" seen without its state label, "keep" leaving the driver: each node that changed is looked at again.
    moved = {**snap.nodes, "left": NodeFacts.from_node(gpu_node("left", None, "false")),
             "keep": NodeFacts.from_node(gpu_node("keep", "upgrade-done", "false"))}  # fmt: skip
    assert let_go(replace(snap, nodes=Named(moved)), kept) == let_go(replace(snap, nodes=moved), None)
    assert let_go(replace(snap, nodes=Named(moved)), kept) == ["gone", "keep"]
    # The driver switched off: the kept inputs see no node, every node with a state is let go.
    off = parse_spec({**load_policy()["spec"], "driver": {**load_policy()["spec"]["driver"], "enabled": False}})
    kube = RecordingKube()
    orchestrate(kube, "gpu-operator", off, replace(snap, nodes=moved), lambda *_, **__: None,  # type: ignore[arg-type]
                kept=kept)  # fmt: skip
    assert sorted(w[1] for v, w in kube.calls if v == "merge_patch") == ["gone", "keep"]


def _gpu_job(name: str, node: str = "n1") -> dict[str, Any]:
    """A Running pod on `node` that asks for a GPU, owned by a Job."""
    return {
        "metadata": {"namespace": "ml", "name": name, "ownerReferences": [{"kind": "Job", "name": name,
                                                                           "controller": True}]},
        "spec": {"nodeName": node, "containers": [{"name": "main",
                                                   "resources": {"limits": {"nvidia.com/gpu": "1"}}}]},
        "status": {"phase": "Running"},
    }  # fmt: skip


def _cordoned_pass(
    pods: list[dict[str, Any]], fail: bool = False, spec: Any = None, held: dict[str, Any] | None = None,
    events: list[str] | None = None,
) -> tuple[Any, Any, Any]:
    """One orchestrate() pass over one node (n1, upgrade-done on an out-of-date driver pod unless `held`, the
    sample's podDeletion unless `spec`) against an API server that holds the node; the kube (its calls in order,
    the pod lists too), the node as it is after the pass, and what orchestrate() returned. `pods`: the pods on n1
    as the list answers them; `fail`: the list fails; `events`: gets the messages of the Events posted."""
    from gpu_operator.api import parse_spec
    from gpu_operator.nodes import GPU_PRESENT, deploy_label
    from gpu_operator.upgrade.orchestrate import orchestrate
    from support import ServerKube, load_policy, node

    class PodsKube(ServerKube):
        def list(self, kind: str, namespace: str | None = None, label_selector: str | None = None,
                 field_selector: str | None = None) -> list[dict[str, Any]]:  # fmt: skip
            self._note("list", (kind, field_selector))
            if fail:
                raise ApiError(500, '{"message": "etcdserver: request timed out"}', "GET pods", "Internal")
            return [p for p in pods if field_selector == f"spec.nodeName={p['spec']['nodeName']}"]

        def evict(self, name: str, namespace: str) -> None:
            self._note("evict", (namespace, name))

    obj = held or node("n1", labels={GPU_PRESENT: "true", deploy_label("driver"): "true", STATE_LABEL: "upgrade-done"})
    obj["metadata"].setdefault("annotations", {})
    kube = PodsKube({("Node", "n1"): obj})
    spec = spec if spec is not None else parse_spec(load_policy()["spec"])
    said = events if events is not None else []
    out = orchestrate(kube, "gpu-operator", spec, _cp_nodes_snapshot([obj]),
                      lambda _ref, _type, _reason, message, **__: said.append(message))  # fmt: skip
    return kube, kube.objects[("Node", "n1")], out


def test_the_pass_that_cordons_a_node_reads_its_pods_and_deletes_its_driver_pod() -> None:
    """Under a policy that reads workload pods (the sample's podDeletion, the chart's default) the cordon stopped a
    node's chain: the pass wrote the cordon with wait-for-jobs-required and the node's pods were read only in the
    next pass, which moved it on and deleted its driver pod. Now, as kubectl drain does, the pass reads the node's
    pods once its cordon is answered and plans it again from the node as patched: the driver pod is deleted in the
    same pass. It saves that pass's latency, not a write: still two node patches (the cordon with its state, then
    pod-restart-required with the deleted pod's name), as the pods are read between them; a policy that reads no
    pods folds them into one."""
    from gpu_operator.api import parse_spec
    from support import load_policy

    kube, after, _ = _cordoned_pass([])
    calls = [(verb, what) for verb, what in kube.calls]
    assert [verb for verb, _ in calls] == ["merge_patch", "list", "merge_patch", "delete"], calls
    first, second = calls[0][1][2], calls[2][1][2]
    assert first["spec"] == {"unschedulable": True}
    assert first["metadata"]["labels"][STATE_LABEL] == "wait-for-jobs-required"
    assert calls[1][1] == ("Pod", "spec.nodeName=n1")  # read after the cordon was answered
    assert second == {"metadata": {"labels": {STATE_LABEL: "pod-restart-required"},
                                   "annotations": {DELETED_DRIVER_POD_ANNOTATION: "nvidia-driver-n1"}}}  # fmt: skip
    assert calls[3][1] == ("Pod", "gpu-operator", "nvidia-driver-n1")
    assert after["metadata"]["labels"][STATE_LABEL] == "pod-restart-required" and after["spec"]["unschedulable"]

    # No policy step reads pods: one patch and the deletion, no read (unchanged).
    raw = load_policy()["spec"]
    none = parse_spec({**raw, "driver": {**raw["driver"], "upgradePolicy": {
        **raw["driver"]["upgradePolicy"], "podDeletion": None}}})  # fmt: skip
    kube, after, _ = _cordoned_pass([], spec=none)
    assert [verb for verb, _ in kube.calls] == ["merge_patch", "delete"], kube.calls
    assert after["metadata"]["labels"][STATE_LABEL] == "pod-restart-required"


def test_a_gpu_pod_scheduled_before_the_cordon_is_evicted_in_the_pass_that_cordons() -> None:
    """A GPU pod that was on the node when the cordon went out is seen by the read after the cordon: it is evicted
    (not the driver pod deleted under it), in the same pass, and the node waits in pod-deletion-required."""
    kube, after, _ = _cordoned_pass([_gpu_job("trainer"), _gpu_job("elsewhere", node="n2")])
    verbs = [verb for verb, _ in kube.calls]
    assert verbs == ["merge_patch", "list", "merge_patch", "evict"], kube.calls
    assert kube.calls[0][1][2]["spec"] == {"unschedulable": True}
    assert kube.calls[3][1] == ("ml", "trainer")
    assert after["metadata"]["labels"][STATE_LABEL] == "pod-deletion-required"
    assert POD_DELETION_START_ANNOTATION in after["metadata"]["annotations"]


def test_the_pass_that_evicts_a_gpu_pod_after_the_cordon_names_it() -> None:
    """The plan made again after the cordon was cut down to its actions: its wait ("evicting ml/trainer
    (podDeletion)") was dropped, so neither an Event nor status.upgrade.waiting named the pods the upgrade evicted
    (a pod gone by the next pass was never named; upstream's pod manager posts an Event when it deletes workload
    pods). Now that plan's wait is the pass's for the node: one Event, as when the next pass evicted them, and the
    node in status.upgrade.waiting. Both named the state the cordon's answer showed (wait-for-jobs-required) for a
    node that plan had moved to pod-deletion-required; a restarted operator reads that entry to tell what was said
    already. Now they name the state the plan's own patch wrote."""
    events: list[str] = []
    kube, after, out = _cordoned_pass([_gpu_job("trainer")], events=events)
    assert ("evict", ("ml", "trainer")) in kube.calls  # evicted in this pass (a PodDisruptionBudget may keep it)
    assert after["metadata"]["labels"][STATE_LABEL] == "pod-deletion-required"
    assert [m for m in events if "ml/trainer" in m] == ["pod-deletion-required: evicting ml/trainer (podDeletion)"]
    assert out.status["waiting"] == [
        {"node": "n1", "state": "pod-deletion-required", "reason": "evicting ml/trainer (podDeletion)"}]


def test_waiting_and_event_name_the_state_the_pass_moved_the_node_to_not_the_one_it_was_seen_in() -> None:
    """A node seen in wait-for-jobs-required (its pods' read after the cordon failed last pass, or the operator
    restarted between the cordon and that read) whose pass moves it on to pod-deletion-required and evicts its GPU
    pod: the Event and status.upgrade.waiting named wait-for-jobs-required, the state the snapshot showed, as only
    the nodes planned again after their cordon (Ran.later) took the state the pass wrote; a restarted operator's
    dedup of status.upgrade.waiting compared against it. Now each patched node's wait is named under the state its
    pass's last state write set (Ran.wrote)."""
    from gpu_operator.nodes import GPU_PRESENT, deploy_label
    from support import node

    held = node("n1", labels={GPU_PRESENT: "true", deploy_label("driver"): "true",
                              STATE_LABEL: "wait-for-jobs-required"})  # fmt: skip
    held["spec"] = {"unschedulable": True}  # cordoned by the upgrade
    events: list[str] = []
    kube, after, out = _cordoned_pass([_gpu_job("trainer")], held=held, events=events)
    assert ("evict", ("ml", "trainer")) in kube.calls
    assert after["metadata"]["labels"][STATE_LABEL] == "pod-deletion-required"
    assert out.status["waiting"] == [
        {"node": "n1", "state": "pod-deletion-required", "reason": "evicting ml/trainer (podDeletion)"}]
    assert [m for m in events if "ml/trainer" in m] == ["pod-deletion-required: evicting ml/trainer (podDeletion)"]


def test_the_pass_that_deletes_the_driver_pod_after_the_cordon_reports_the_wait_in_pod_restart_required() -> None:
    """The sample's (and the chart's) upgradePolicy, no GPU pod on the node: the pass that cordons it goes on after
    the cordon's answer to pod-restart-required and deletes its driver pod. status.upgrade.waiting said
    {"state": "wait-for-jobs-required", "reason": "deleted driver pod ...; waiting for its replacement"}, a state
    the node had already left, on every node's upgrade. Its new pod's wait is ordinary progress (no Event but the
    start's), said in status.upgrade.waiting only, now under pod-restart-required."""
    events: list[str] = []
    _, after, out = _cordoned_pass([], events=events)
    assert after["metadata"]["labels"][STATE_LABEL] == "pod-restart-required"
    assert len(events) == 1 and "node cordoned" in events[0], events
    assert [(w["state"], w["reason"]) for w in out.status["waiting"]] == [
        ("pod-restart-required", "deleted driver pod nvidia-driver-n1; waiting for its replacement")]


def test_a_failed_read_of_the_pods_after_the_cordon_leaves_the_node_for_the_next_pass() -> None:
    """The read after the cordon fails: nothing more is written to the node in that pass (no eviction, no driver
    pod deletion); it stays cordoned in wait-for-jobs-required, and the next pass reads its pods as before."""
    kube, after, _ = _cordoned_pass([], fail=True)
    assert [verb for verb, _ in kube.calls] == ["merge_patch", "list"], kube.calls
    assert after["metadata"]["labels"][STATE_LABEL] == "wait-for-jobs-required" and after["spec"]["unschedulable"]
    kube, after, _ = _cordoned_pass([], held=after)  # the next pass: reads them with the rest, then writes
    assert [verb for verb, _ in kube.calls] == ["list", "merge_patch", "delete"], kube.calls
    assert after["metadata"]["labels"][STATE_LABEL] == "pod-restart-required"


def test_a_node_planned_again_after_its_cordon_is_recorded_in_the_state_that_plans_patch_wrote() -> None:
    """Ran.later kept the state the cordon's answer showed, not the one the plan made after it wrote. Now it keeps
    the state of that plan's last patch answered, even when a write after it failed (here the eviction: a 500)."""
    from gpu_operator.upgrade.adapter import Executor
    from support import ServerKube, node

    class FailingEviction(ServerKube):
        def evict(self, name: str, namespace: str) -> None:
            raise ApiError(500, '{"message": "etcdserver: request timed out"}', "POST eviction", "Internal")

    def then(answer: dict[str, Any]) -> Plan:
        return Plan([SetState("n1", "pod-deletion-required"), EvictPods("n1", (("ml", "trainer"),), False)])

    kube = FailingEviction({("Node", "n1"): node("n1")})
    ran = Executor(kube, "gpu-operator", lambda *_, **__: None).run(  # type: ignore[arg-type]
        Plan([Cordon("n1"), SetState("n1", "wait-for-jobs-required")]), then=then)
    assert kube.objects[("Node", "n1")]["metadata"]["labels"][STATE_LABEL] == "pod-deletion-required"
    assert ran.later["n1"][0] == "pod-deletion-required"
    # The plan wrote nothing (its first write failed, or it had no actions): the cordon's answer's state.
    ran = Executor(kube, "gpu-operator", lambda *_, **__: None).run(  # type: ignore[arg-type]
        Plan([SetState("n1", "wait-for-jobs-required")]), then=lambda _: Plan([EvictPods("n1", (("ml", "t"),), False)]))
    assert ran.later["n1"][0] == "wait-for-jobs-required"


def test_an_eviction_error_on_one_pod_does_not_stop_the_eviction_of_the_nodes_other_pods() -> None:
    """kubectl drain's helper, which upstream's pod manager and drain manager use, evicts each pod on its own: an
    error other than 429 (a 500 for a pod under two PodDisruptionBudgets, a webhook's 403) fails that pod only.
    The first such error left the loop in Executor._act, so the pods after it were never evicted, pass after pass,
    until the timeout failed the node (or forever with timeoutSeconds 0). Now every pod is tried; the error still
    stops the node's later actions. Found by review planner #1."""
    from gpu_operator.upgrade.adapter import Executor
    from support import ServerKube, node

    class OnePodRefused(ServerKube):
        def evict(self, name: str, namespace: str) -> None:
            self._note("evict", (namespace, name))
            if name == "a":
                raise ApiError(500, '{"message": "This pod has more than one PodDisruptionBudget, which the '
                                    'eviction subresource does not support."}', "POST eviction", "InternalError")

    kube = OnePodRefused({("Node", "n1"): node("n1")})
    Executor(kube, "gpu-operator", lambda *_, **__: None).run(  # type: ignore[arg-type]
        Plan([EvictPods("n1", (("ml", "a"), ("ml", "b")), False), DeleteDriverPod("n1", "nvidia-driver-n1")]))
    assert [what for verb, what in kube.calls if verb in ("evict", "delete")] == [("ml", "a"), ("ml", "b")]


def test_the_read_after_the_cordon_waits_for_the_next_pass_once_the_write_budget_is_spent() -> None:
    """A node's patch answered after the pass's write budget: its pods are not read in that pass (the budget bounds
    the pass; the next pass reads them)."""
    from gpu_operator.upgrade.adapter import Executor

    asked: list[str] = []

    def then(answer: dict[str, Any]) -> Plan:
        asked.append(answer["metadata"]["name"])
        return Plan([SetState(answer["metadata"]["name"], "pod-restart-required")])

    from support import RecordingKube

    kube = RecordingKube()
    Executor(kube, "gpu-operator", lambda *_, **__: None).run(  # type: ignore[arg-type]
        Plan([Cordon("n1"), SetState("n1", "wait-for-jobs-required")]), budget_s=10.0, then=then)
    assert asked == ["n1"] and len(kube.calls) == 2
    kube = RecordingKube()
    Executor(kube, "gpu-operator", lambda *_, **__: None).run(  # type: ignore[arg-type]
        Plan([Cordon("n1"), SetState("n1", "wait-for-jobs-required")]), budget_s=-1.0, then=then)
    assert asked == ["n1"] and len(kube.calls) == 1


def test_a_restart_only_upgrade_is_cordoned_and_restarted_without_the_steps_that_read_pods() -> None:
    """A node whose out-of-date driver pod has its DaemonSet's DRIVER_CONFIG_DIGEST (UpgradeNode.restart_only) goes
    from cordon-required straight to pod-restart-required with the cordon, as upstream v26.7, and on to its driver
    pod's deletion in the same pass; not for a requested upgrade or an orphan (upstream's shouldRestartOnly), nor for
    a move to another pool, which need the full flow."""
    pol = reading_pods(drain=DrainSpec(enable=True))
    node = replace(make_node("n1", "upgrade-done"), restart_only=True)
    p = run([node], [gpu_pod("job")], pol=pol)
    assert of(p, Cordon) == [Cordon("n1")] and of(p, DeleteDriverPod) == [DeleteDriverPod("n1", "nvidia-driver-n1")]
    assert states(p) == {"n1": "pod-restart-required"} and of(p, EvictPods) == []
    assert [s.state for s in of(p, SetState)] == ["upgrade-required", "cordon-required", "pod-restart-required"]
    (event,) = of(p, Event)
    assert "DRIVER_CONFIG_DIGEST" in event.message and "without waiting for jobs, evicting or draining" in event.message
    for full in (
        replace(node, annotations={REQUESTED_ANNOTATION: "true"}),
        replace(node, orphaned=True),
        replace(node, pool_move="6.8.0-1-generic"),
    ):
        assert states(run([full], [gpu_pod("job")], pol=pol)) == {"n1": "wait-for-jobs-required"}, full


_DS_UID = "ds-uid-1"
_DS_NAME = "nvidia-driver-daemonset"


def _restart_driver_pod(digest: str) -> dict[str, Any]:
    """A full driver pod on n1 of revision OLD whose driver manager and driver container carry `digest`."""
    env = [{"name": "DRIVER_CONFIG_DIGEST", "value": digest}]
    return {
        "metadata": {
            "name": "nvidia-driver-n1",
            "namespace": "gpu-operator",
            "labels": {"controller-revision-hash": OLD, "nvidia.com/gpu-operator.state": "state-driver",
                       "app": _DS_NAME},
            "ownerReferences": [{"kind": "DaemonSet", "name": _DS_NAME, "uid": _DS_UID, "controller": True}],
        },
        "spec": {
            "nodeName": "n1",
            "initContainers": [{"name": "k8s-driver-manager", "image": "dm:1", "env": env}],
            "containers": [{"name": "nvidia-driver-ctr", "image": "drv:1", "env": env}],
        },
        "status": {"phase": "Running",
                   "containerStatuses": [{"name": "nvidia-driver-ctr", "ready": True, "restartCount": 0}]},
    }  # fmt: skip


def _digest_revision(rev: str, number: int, digest: str) -> dict[str, Any]:
    """A ControllerRevision of the driver DaemonSet (as its controller writes one: the whole pod template in `data`)
    whose template carries `digest`; revision NEW also has a toleration the old one lacks."""
    env = [{"name": "DRIVER_CONFIG_DIGEST", "value": digest}]
    template: dict[str, Any] = {
        "initContainers": [{"name": "k8s-driver-manager", "image": "dm:1", "env": env}],
        "containers": [{"name": "nvidia-driver-ctr", "image": "drv:1", "env": env}],
    }
    if rev == NEW:
        template["tolerations"] = [{"key": "new-taint", "operator": "Exists"}]
    return {
        "metadata": {"name": f"{_DS_NAME}-{rev}", "labels": {"controller-revision-hash": rev},
                     "ownerReferences": [{"kind": "DaemonSet", "name": _DS_NAME, "uid": _DS_UID}]},
        "data": {"spec": {"template": {"spec": template, "$patch": "replace"}}},
        "revision": number,
    }  # fmt: skip


def _restart_only_pass(pod_digest: str, ds_digest: str) -> tuple[Any, dict[str, Any]]:
    """One orchestrate() pass (the sample ClusterPolicy: autoUpgrade, podDeletion; drain enabled) over n1, upgrade-done
    on an out-of-date driver pod with a GPU job running on it. The kube (its calls) and the node after the pass."""
    from gpu_operator.api import parse_spec
    from gpu_operator.nodes import GPU_PRESENT, NodeFacts, deploy_label
    from gpu_operator.observe import Snapshot, pod_projection, revision_projection
    from gpu_operator.upgrade.orchestrate import orchestrate
    from support import ServerKube, load_policy, node

    jobs = [_gpu_job("trainer")]

    class PodsKube(ServerKube):
        def list(self, kind: str, namespace: str | None = None, label_selector: str | None = None,
                 field_selector: str | None = None) -> list[dict[str, Any]]:  # fmt: skip
            self._note("list", (kind, field_selector))
            return [p for p in jobs if field_selector == f"spec.nodeName={p['spec']['nodeName']}"]

        def evict(self, name: str, namespace: str) -> None:
            self._note("evict", (namespace, name))

    obj = node("n1", labels={GPU_PRESENT: "true", deploy_label("driver"): "true", STATE_LABEL: "upgrade-done"})
    obj["metadata"].setdefault("annotations", {})
    kube = PodsKube({("Node", "n1"): obj})
    raw = load_policy()["spec"]
    up = raw["driver"]["upgradePolicy"]
    spec = parse_spec({**raw, "driver": {**raw["driver"], "upgradePolicy": {
        **up, "maxParallelUpgrades": 1, "drain": {**(up.get("drain") or {}), "enable": True}}}})  # fmt: skip
    snap = Snapshot(
        nodes={"n1": NodeFacts.from_node(obj)},
        policies={},
        owned={},
        pods={"nvidia-driver-n1": pod_projection(_restart_driver_pod(pod_digest))},
        revisions={f"r-{rev}": revision_projection(_digest_revision(rev, number, digest))
                   for rev, number, digest in ((OLD, 1, pod_digest), (NEW, 2, ds_digest))},
    )
    orchestrate(kube, "gpu-operator", spec, snap, lambda *_a, **_k: None)  # type: ignore[arg-type]
    return kube, kube.objects[("Node", "n1")]


def test_a_pod_template_change_that_keeps_the_driver_config_digest_restarts_the_driver_without_evicting() -> None:
    """Any change to the driver's pod template evicted the node's GPU pods (and drained it when drain was on)
    before its driver pod was restarted. gpu-operator v26.7 registers a restart-only predicate on the upgrade library
    (cmd/gpu-operator/main.go: WithRestartOnlyPredicate(predicates.DriverPodRestartOnly); vendored
    k8s-operator-libs upgrade_inplace.go nextStateForUpgradeRequiredNode): when the out-of-date driver pod's
    DRIVER_CONFIG_DIGEST equals the DaemonSet template's (only fields outside the install changed: tolerations,
    labels, probes, resources...), the node, once it has a slot, is cordoned and goes straight to
    pod-restart-required, skipping wait-for-jobs, pod deletion and drain: the driver pod is restarted, no workload
    is evicted (the new pod's driver manager skips the reinstall too). Now the same: the digests are read from the
    pod's ControllerRevision and the DaemonSet's newest; the cordon, the state and the deleted pod go in one patch,
    then the deletion, no pod read. With another digest the full flow stays (the GPU pod is evicted)."""
    kube, after = _restart_only_pass("digest-a", "digest-a")
    verbs = [verb for verb, _ in kube.calls]
    assert "evict" not in verbs, kube.calls
    assert ("delete", ("Pod", "gpu-operator", "nvidia-driver-n1")) in [(v, w[:3]) for v, w in kube.calls], kube.calls
    assert after["spec"].get("unschedulable") is True
    assert after["metadata"]["labels"][STATE_LABEL] == "pod-restart-required"

    # The install changed (another digest): the full flow, the GPU job evicted before the driver goes.
    kube, after = _restart_only_pass("digest-a", "digest-b")
    assert ("evict", ("ml", "trainer")) in kube.calls, kube.calls
    assert after["metadata"]["labels"][STATE_LABEL] == "pod-deletion-required"
