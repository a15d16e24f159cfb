"""One pass of driver-upgrade orchestration for the reconciler: plan, carry out, report (gauges, events, status)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from .. import metrics
from ..api import ClusterPolicySpec, DriverUpgradePolicySpec
from ..kube import ApiError, Kube
from ..nodes import NodeFacts, upgrades_orchestrated
from ..nvidiadriver_api import OWNER_LABEL
from ..observe import Snapshot
from .adapter import WRITE_BUDGET_S, EventFn, Executor, UpgradeKept, managed_nodes, steady, workload_pods
from .model import (
    EVENT_REASON,
    FAILED,
    FAILURE_REASON_ANNOTATION,
    IN_PROGRESS_STATES,
    NEEDS_PODS,
    STATE_LABEL,
    Action,
    Counters,
    Event,
    MoveOwner,
    Plan,
    UpgradeNode,
)
from .planner import Limit, plan, reads_pods, switched_off

log = logging.getLogger("gpu_operator.upgrade")

GAUGES = (
    metrics.nodes_upgrades_in_progress,
    metrics.nodes_upgrades_done,
    metrics.nodes_upgrades_failed,
    metrics.nodes_upgrades_available,
    metrics.nodes_upgrades_pending,
)

# Why a node's upgrade is let go (the event's start): sandboxWorkloads.enabled; the ClusterPolicy's driver switched
# off; that driver no longer going to the node.
SANDBOX = "sandboxWorkloads was enabled"
OFF = "the ClusterPolicy's driver was switched off"
LEFT = "the ClusterPolicy's driver no longer goes to the node"


@dataclass
class Orchestrated:
    status: dict[str, Any] | None  # the ClusterPolicy's status.upgrade (None: nothing orchestrated)
    busy: bool  # work in progress: recheck soon
    counters: Counters = field(default_factory=Counters)
    started: int = 0  # upgrades started by this pass
    made_unavailable: int = 0  # of them, on nodes not counted as unavailable before
    deferred: int = 0  # nodes whose actions wait for the next pass (out of this pass's write budget)
    # The managed nodes where no upgrade runs (autoUpgrade off, sandboxWorkloads), by NVIDIADriver name ("": this
    # call's driver): nothing replaces their out-of-date driver pods (unreplaced_note).
    idle: dict[str, list[UpgradeNode]] = field(default_factory=dict)


def left_behind(
    kube: Kube, namespace: str, nodes: Iterable[NodeFacts], events: EventFn,
    why: str = OFF, unowned: Collection[str] = (),
) -> set[str]:  # fmt: skip
    """`nodes` no driver of ours upgrades any more (the ClusterPolicy's driver switched off or no longer going to
    them, or under useNvidiaDriverCRD no NVIDIADriver drives them): no upgrade can go on, so those one left mid-way
    are let go as with autoUpgrade off (planner.switched_off): state label and bookkeeping removed, the upgrade's own
    cordons undone (a failed node's left to the admin), each with an event saying `why`. Upstream leaves them
    cordoned for good. `unowned`: nodes whose NVIDIADriver owner label goes in the same patch (the pass keeps it
    until then: it decides by it that the node is let go). Returns the nodes whose patch did not go through (a node
    deleted since it was read, its patch answered 404, holds nothing to let go: not among them)."""
    actions = [a for n in nodes if STATE_LABEL in n.labels for a in _let_go(n, why, n.name in unowned)]
    if not actions:
        return set()
    executor = Executor(kube, namespace, events)
    ran = executor.run(Plan(actions))
    return {a.node for a in actions} - ran.patched - executor.gone


def _let_go(node: NodeFacts, why: str, unowned: bool) -> list[Action]:
    """left_behind's actions for one node (`unowned`: its owner label goes with its state label)."""
    actions = switched_off(
        UpgradeNode(node.name, labels=node.labels, annotations=node.annotations, unschedulable=node.unschedulable), why
    )
    if actions and unowned and OWNER_LABEL in node.labels:
        at = next((i for i, a in enumerate(actions) if isinstance(a, Event)), len(actions))
        actions.insert(at, MoveOwner(node.name, ""))
    return actions


def set_gauges(c: Counters) -> None:
    for gauge, value in zip(GAUGES, (c.in_progress, c.done, c.failed, c.available, c.pending), strict=True):
        gauge.set(value)


def orchestrate(
    kube: Kube,
    namespace: str,
    spec: ClusterPolicySpec,
    snap: Snapshot,
    events: EventFn,
    limit: Limit | None = None,
    gauges: bool = True,
    moved: Callable[[str], bool] | None = None,
    kept: UpgradeKept | None = None,
    managed: list[UpgradeNode] | None = None,
    said: Iterable[dict[str, Any]] = (),
    nvidia_driver: bool = False,
) -> Orchestrated:
    """`snap` carries the nodes as this pass has labelled them. `limit`: cluster-wide limits left (several
    NVIDIADrivers); `gauges` False: the caller sets the metrics from the counters of all of them. `moved(node)`:
    whether the node moved on since `snap` (see `advance`): its actions are dropped. `kept`: the planner inputs
    kept from the last pass (managed_nodes); `managed`: managed_nodes(spec, snap, kept) when the caller has it.
    `said`: the previous status.upgrade.waiting (a node it names in the same state, for the same reason, gets no
    event again: read from the status, so a restarted operator posts nothing new at steady state).
    `nvidia_driver`: `spec` is an NVIDIADriver's, upgraded by its upgradePolicy whatever sandboxWorkloads says (as
    upstream); the ClusterPolicy's own driver is not upgraded with sandboxWorkloads.enabled (upgrades_orchestrated)."""
    policy = spec.driver.upgrade_policy
    own = not nvidia_driver and not spec.driver.use_nvidia_driver_crd  # the ClusterPolicy's own driver
    if gauges:
        metrics.driver_auto_upgrade_enabled.set(int(upgrades_orchestrated(spec) if own else policy.auto_upgrade))
    if own and spec.sandbox_workloads.enabled:
        # As upstream's UpgradeReconciler: every node's upgrade state goes (here as with autoUpgrade off: the
        # upgrade's own cordons undone), the nodes that left the driver for a VM workload included.
        if gauges:
            set_gauges(Counters())
        left_behind(kube, namespace, snap.nodes.values(), events, SANDBOX)
        return Orchestrated(None, False, idle={"": managed_nodes(spec, snap, kept) if managed is None else managed})
    astray = None  # the nodes `kept` found with an upgrade state and no planner node, where it saw every node
    if managed is None:
        managed = managed_nodes(spec, snap, kept)
        astray = kept.inputs.astray if kept is not None and spec.driver.enabled else None
    if own and len(managed) < len(snap.nodes):
        # A node with an upgrade state that the driver no longer goes to (switched off, or on that node: its deploy
        # label false, its GPU gone) is in no plan, so no pass would move it on: let go, as under NVIDIADrivers.
        if astray is None:
            gone = snap.nodes.keys() - {n.name for n in managed}
            astray = {k for k in gone if STATE_LABEL in snap.nodes[k].labels}
        found = [snap.nodes[k] for k in sorted(astray)]
        if found:
            left_behind(kube, namespace, found, events, LEFT if spec.driver.enabled else OFF)
    if not managed:  # nothing to upgrade (driver off, no GPU node): the gauges say so too
        if gauges:
            set_gauges(Counters())
        return Orchestrated(None, False)
    needs = kept.inputs.needs_pods if kept is not None else None  # kept with `managed`
    result = plan(managed, workload_pods(kube, managed, policy, needs), policy, time.time(), limit=limit)
    # The annotation k8s-driver-manager reads went out with the node's labels (render.node_patches).
    c = result.counters
    # Each node's state orders the writes and names the waits: with neither (a settled cluster), no walk for it.
    states = {n.name: n.state for n in managed} if result.actions or result.waiting or c.failed else {}
    then = _after_cordon(kube, managed, policy) if result.actions else None
    ran = Executor(kube, namespace, events).run(result, states, WRITE_BUDGET_S, moved, then)
    left = ran.left
    for node, what in result.finished.items():  # the happy path's end: no event (the label says it), a log line
        if node not in left and node not in ran.dropped:
            log.info("upgrade of node %s done: %s", node, what)
    busy = bool(result.actions) or c.in_progress > 0 or c.pending > 0
    if left:
        log.info("upgrade: %d nodes' writes left for the next pass (write budget %.0f s)", len(left), WRITE_BUDGET_S)
    starts = result.started
    started = len(starts)
    by_name = {n.name: n for n in managed} if starts else {}
    made_unavailable = sum(1 for n in starts if not by_name[n].counted_unavailable)
    if not policy.auto_upgrade:
        # Nothing upgrades: no node counted, no slot free (upstream counts only drivers with autoUpgrade).
        if gauges:
            set_gauges(Counters())
        return Orchestrated(None, busy, Counters(), started, made_unavailable, len(left), {"": managed})
    if gauges:
        set_gauges(c)
    states.update(ran.wrote)  # a node waits in the state this pass moved it to, not the one it was seen in
    reasons = dict(result.waiting)
    quiet = set(result.quiet)
    for node, (state, again) in ran.later.items():  # planned again after its cordon: that plan says why it waits
        states[node] = state
        reasons.pop(node, None)
        quiet.discard(node)
        if node in again.waiting:
            reasons[node] = again.waiting[node]
        if node in again.quiet:
            quiet.add(node)
    for n in managed if c.failed else ():  # a failed node says why it failed
        if n.state == FAILED and n.name not in reasons:
            reasons[n.name] = "failed: " + n.annotations.get(FAILURE_REASON_ANNOTATION, "see its events")
    # A node whose writes were left for the next pass is named then (its event comes with them).
    stuck = sorted((n, r) for n, r in reasons.items() if states.get(n) in IN_PROGRESS_STATES and n not in left)
    before = {(w.get("node"), w.get("state"), w.get("reason")) for w in said}
    for node, reason in stuck:  # an event on each node that waits mid-upgrade, when its reason changes
        if node in quiet or (node, states[node], steady(reason)) in before:
            continue  # ordinary progress (a pod starting), or said already: status.upgrade.waiting says it
        ref = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": node}}
        events(ref, "Normal", EVENT_REASON, f"{states[node]}: {steady(reason)}")
    return Orchestrated(
        {
            "total": c.total,
            "inProgress": c.in_progress,
            "done": c.done,
            "failed": c.failed,
            "pending": c.pending,
            "available": c.available,
            "waiting": [{"node": n, "state": states[n], "reason": steady(r)} for n, r in stuck[:50]],
        },
        busy,
        c,
        started,
        made_unavailable,
        len(left),
    )


def unreplaced_note(nodes: Iterable[UpgradeNode], why: str) -> str | None:
    """Where no upgrade runs (`why`): the nodes whose driver pod is out of date (an old revision, or a pod left
    running by its DaemonSet's deletion), at most five named, and that only their deletion replaces them (the driver
    DaemonSets are OnDelete). None when there are none. A node the version matrix refuses keeps its pod on purpose."""
    stale = sorted(n.name for n in nodes if n.driver_out_of_date and not n.refused)
    if not stale:
        return None
    shown = ", ".join(stale[:5]) + (f" and {len(stale) - 5} more" if len(stale) > 5 else "")
    return f"{why}: nothing replaces the out-of-date driver pods on {shown}; delete them to update"


def _after_cordon(
    kube: Kube, managed: list[UpgradeNode], policy: DriverUpgradePolicySpec
) -> Callable[[dict[str, Any]], Plan | None] | None:
    """What a node does next in the same pass once its patch into a state that reads its workload pods (the
    cordon's: planner.goes_on stops there) is answered: its pods are read now, after the cordon, as kubectl drain
    lists them, and it is planned again from the node as patched, so it goes on (its driver pod deleted when no job
    pod waits and no GPU pod is to be evicted) without waiting for the next pass; that plan's wait (the pods it
    evicts, the jobs it waits for) is the pass's for the node (Ran.later). That saves the pass, not a patch: the
    pods are read between the cordon's patch and the next state's. No plan when the answer shows no cordon or the
    read fails (the next pass reads them, as before); None when the policy reads no pods."""
    if not (policy.auto_upgrade and reads_pods(policy)):
        return None
    seen = {n.name: n for n in managed}

    def then(answer: dict[str, Any]) -> Plan | None:
        meta = answer.get("metadata") or {}
        node = seen.get(meta.get("name", ""))
        labels = meta.get("labels") or {}
        if node is None or node.state in NEEDS_PODS or labels.get(STATE_LABEL) not in NEEDS_PODS:
            return None  # its pods were read for this pass, or it is in no state that reads them
        if not (answer.get("spec") or {}).get("unschedulable"):
            return None  # no cordon answered: nothing is read before it
        node = replace(node, labels=labels, annotations=meta.get("annotations") or {}, unschedulable=True)
        try:
            pods = workload_pods(kube, [node], policy)
        except (ApiError, OSError) as exc:  # OSError: kube.Unreachable
            log.warning("upgrade: reading the pods on node %s failed: %s; the next pass reads them", node.name, exc)
            return None
        return plan([node], pods, policy, time.time())

    return then


def advance(
    kube: Kube, namespace: str, node: UpgradeNode, step: Plan, events: EventFn, seen: float
) -> dict[str, Any] | None:
    """Between passes, write `step`: what moves one node whose new driver pod or validator turned Ready on toward
    upgrade-done (planner.plan_forward), so it need not wait for a pass over every node. `seen`: when that pod was
    seen Ready (time.monotonic). The node as patched, or None when a write failed (the next pass tries)."""
    began = time.monotonic()
    answer = Executor(kube, namespace, events).node(step.actions)
    if answer is not None:
        state = (answer["metadata"].get("labels") or {}).get(STATE_LABEL)
        why = step.finished.get(node.name) or "; ".join(step.waiting.values()) or "moved on"
        log.info("upgrade of node %s: %s -> %s between passes, %.2f s after its pod was seen Ready (%.2f s of it "
                 "writing) (%s)", node.name, node.state, state, time.monotonic() - seen, time.monotonic() - began, why)
    return answer
