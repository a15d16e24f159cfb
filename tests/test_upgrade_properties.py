"""Property tests of the driver-upgrade planner.

1. One pass over any mix of states, cordons, readiness and policy limits never starts more upgrades
   than maxParallelUpgrades allows, never makes more nodes unavailable than maxUnavailable allows,
   moves a node past a cordon, an eviction, a driver pod deletion or an uncordon only in a later pass,
   deletes and evicts only on nodes whose pods were read after their cordon, posts at most one event per
   node, and gives a reason for every node it leaves behind.
2. A simulated rollout (plan -> apply to an in-memory cluster whose DaemonSet recreates deleted driver
   pods on the new revision -> advance time) ends with every node upgraded exactly once, uncordoned
   unless it was cordoned before, without exceeding a limit at any step, even when the adapter dies
   halfway through a pass's actions.
3. The wave preview agrees with the planner and never plans a wave past the limits.
"""

from __future__ import annotations

import copy
import math
import random
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from gpu_operator.api import DrainSpec, DriverUpgradePolicySpec, PodDeletionSpec, WaitForCompletionSpec
from gpu_operator.upgrade import (
    DELETED_DRIVER_POD_ANNOTATION,
    DRAIN_SKIP_LABEL,
    DRAIN_START_ANNOTATION,
    IN_PROGRESS_STATES,
    INITIAL_UNSCHEDULABLE_ANNOTATION,
    NEEDS_PODS,
    POD_DELETION_START_ANNOTATION,
    REQUESTED_ANNOTATION,
    SKIP_LABEL,
    STATE_LABEL,
    STATES,
    TRANSIENT_ANNOTATIONS,
    VALIDATION_START_ANNOTATION,
    WAIT_FOR_JOBS_START_ANNOTATION,
    Action,
    Annotate,
    Cordon,
    DeleteDriverPod,
    Event,
    EvictPods,
    Limit,
    Plan,
    SetState,
    Uncordon,
    UpgradeNode,
    WorkloadPod,
    plan,
    preview_joint_waves,
    preview_waves,
)

OLD, NEW = "rev-old", "rev-new"
T0 = 1_000_000.0


def pod_dict(name: str, rev: str, ready: bool, restarts: int = 0, terminating: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "labels": {"controller-revision-hash": rev}}
    if terminating:
        meta["deletionTimestamp"] = "2025-01-01T00:00:00Z"
    return {
        "metadata": meta,
        "status": {
            "phase": "Running" if ready or restarts else "Pending",
            "containerStatuses": [{"name": "nvidia-driver-ctr", "ready": ready, "restartCount": restarts}],
        },
    }


# Strategies

max_unavailable_values = st.one_of(
    st.integers(0, 8), st.integers(0, 100).map(lambda p: f"{p}%"), st.integers(0, 8).map(str)
)


@st.composite
def policies(draw: st.DrawFn) -> DriverUpgradePolicySpec:
    pod_deletion = draw(
        st.none()
        | st.builds(
            PodDeletionSpec,
            force=st.booleans(),
            timeout_seconds=st.sampled_from([0, 120, 300]),
            delete_empty_dir=st.booleans(),
        )
    )
    return DriverUpgradePolicySpec(
        auto_upgrade=True,
        max_parallel_upgrades=draw(st.integers(0, 4)),
        max_unavailable=draw(max_unavailable_values),
        pod_deletion=pod_deletion,
        wait_for_completion=WaitForCompletionSpec(
            pod_selector=draw(st.sampled_from(["", "app=train", "app in (train, batch)"])),
            timeout_seconds=draw(st.sampled_from([0, 300, 900])),
        ),
        drain=DrainSpec(
            enable=draw(st.booleans()),
            force=draw(st.booleans()),
            pod_selector=draw(st.sampled_from(["", "app!=train", "tier"])),
            timeout_seconds=draw(st.sampled_from([0, 120, 300])),
            delete_empty_dir=draw(st.booleans()),
        ),
    )


@st.composite
def random_nodes(draw: st.DrawFn) -> list[UpgradeNode]:
    out = []
    for i in range(draw(st.integers(1, 10))):
        name = f"n{i}"
        labels = {}
        state = draw(st.sampled_from((*STATES, "garbage")))
        if state:
            labels[STATE_LABEL] = state
        if draw(st.integers(0, 5)) == 0:
            labels[SKIP_LABEL] = "true"
        annotations = {}
        for key in (INITIAL_UNSCHEDULABLE_ANNOTATION, REQUESTED_ANNOTATION):
            if draw(st.booleans()):
                annotations[key] = "true"
        for key in (
            WAIT_FOR_JOBS_START_ANNOTATION,
            POD_DELETION_START_ANNOTATION,
            DRAIN_START_ANNOTATION,
            VALIDATION_START_ANNOTATION,
        ):
            if draw(st.booleans()):
                annotations[key] = str(int(T0 - draw(st.integers(0, 1000))))
        if draw(st.booleans()):
            annotations[DELETED_DRIVER_POD_ANNOTATION] = draw(st.sampled_from([f"drv-{name}", "gone"]))
        kind = draw(st.sampled_from(["none", "old", "new", "new-starting", "new-crash", "terminating"]))
        pod = {
            "none": None,
            "old": pod_dict(f"drv-{name}", OLD, True),
            "new": pod_dict(f"drv-{name}", NEW, True),
            "new-starting": pod_dict(f"drv-{name}-2", NEW, False),
            "new-crash": pod_dict(f"drv-{name}-2", NEW, False, restarts=11),
            "terminating": pod_dict(f"drv-{name}", OLD, True, terminating=True),
        }[kind]
        out.append(
            UpgradeNode(
                name=name,
                labels=labels,
                annotations=annotations,
                unschedulable=draw(st.booleans()),
                ready=draw(st.integers(0, 3)) > 0,
                driver_pod=pod,
                driver_revision=NEW,
                validator_pod=pod_dict(f"val-{name}", "v", draw(st.booleans())),
            )
        )
    return out


@st.composite
def random_pods(draw: st.DrawFn, n_nodes: int) -> list[WorkloadPod]:
    out = []
    for i in range(draw(st.integers(0, 8))):
        labels = draw(
            st.sampled_from([{}, {"app": "train"}, {"app": "serve", "tier": "x"}, {DRAIN_SKIP_LABEL: "true"}])
        )
        out.append(
            WorkloadPod(
                namespace="default",
                name=f"p{i}",
                node=f"n{draw(st.integers(0, n_nodes - 1))}",
                uses_gpu=draw(st.booleans()),
                has_emptydir=draw(st.booleans()),
                is_daemonset_pod=draw(st.integers(0, 4)) == 0,
                labels=labels,
                phase=draw(st.sampled_from(["Running", "Running", "Pending", "Succeeded"])),
                terminating=draw(st.integers(0, 4)) == 0,
                controlled=draw(st.integers(0, 3)) > 0,
            )
        )
    return out


# Counting


def limit_of(value: int | str, total: int) -> int:
    """maxUnavailable as a node count, worked out here and not by the planner's max_unavailable_count: with that
    as the oracle, a planner that ignored maxUnavailable met every bound below."""
    if isinstance(value, int):
        return value
    if value.endswith("%"):
        return math.ceil(int(value[:-1]) * total / 100)
    return int(value)


def state_of(labels: dict[str, str]) -> str:
    value = labels.get(STATE_LABEL, "")
    return value if value in STATES else ""


def in_progress(nodes: list[UpgradeNode]) -> int:
    return sum(n.state in IN_PROGRESS_STATES for n in nodes)


def reserved(nodes: list[UpgradeNode]) -> int:
    """Nodes the slot arithmetic counts as unavailable: upgrading, or with a driver pod and cordoned or NotReady."""
    return sum(
        n.state in IN_PROGRESS_STATES or (n.driver_pod is not None and (n.unschedulable or not n.ready)) for n in nodes
    )


def apply_to_nodes(nodes: list[UpgradeNode], actions: list[Action]) -> list[UpgradeNode]:
    """The node-level effect of a plan (labels, annotations, cordons)."""
    by_name = {n.name: n for n in nodes}
    labels = {n.name: dict(n.labels) for n in nodes}
    annotations = {n.name: dict(n.annotations) for n in nodes}
    unschedulable = {n.name: n.unschedulable for n in nodes}
    for a in actions:
        if isinstance(a, SetState):
            if a.state:
                labels[a.node][STATE_LABEL] = a.state
            else:
                labels[a.node].pop(STATE_LABEL, None)
        elif isinstance(a, Annotate):
            if a.value is None:
                annotations[a.node].pop(a.key, None)
            else:
                annotations[a.node][a.key] = a.value
        elif isinstance(a, Cordon):
            unschedulable[a.node] = True
        elif isinstance(a, Uncordon):
            unschedulable[a.node] = False
    return [
        UpgradeNode(
            name=name,
            labels=labels[name],
            annotations=annotations[name],
            unschedulable=unschedulable[name],
            ready=n.ready,
            driver_pod=n.driver_pod,
            driver_revision=n.driver_revision,
            validator_pod=n.validator_pod,
        )
        for name, n in by_name.items()
    ]


# 1. One pass


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), policy=policies())
def test_one_pass_respects_limits_and_explains(data: st.DataObject, policy: DriverUpgradePolicySpec) -> None:
    nodes = data.draw(random_nodes())
    pods = data.draw(random_pods(len(nodes)))
    now = T0 + data.draw(st.integers(0, 2000))
    result = plan(nodes, pods, policy, now)
    after = apply_to_nodes(nodes, result.actions)

    # (a) maxParallelUpgrades: never exceeded by this pass (nor made worse if it already was).
    if policy.max_parallel_upgrades:
        assert in_progress(after) <= max(policy.max_parallel_upgrades, in_progress(nodes))
    # (b) maxUnavailable (of the nodes with a driver pod or mid-upgrade): those of them cordoned, NotReady or upgrading
    # never grow past the limit. A node no driver pod runs on counts in neither.
    managed = sum(n.driver_pod is not None or n.state in IN_PROGRESS_STATES for n in nodes)
    limit = limit_of(policy.max_unavailable, managed)
    assert reserved(after) <= max(limit, reserved(nodes))
    # A cordon lands only on a node whose slot is taken (in an earlier pass, or in this one). A driver pod is
    # deleted, and pods evicted, only on a node observed past its cordon: its pods were read after the cordon.
    # A policy that reads no pods (no waitForCompletion.podSelector, podDeletion or drain) deletes the driver pod
    # in the pass that cordons, on a node whose slot is taken.
    reads_pods = (
        bool(policy.wait_for_completion.pod_selector.strip()) or policy.pod_deletion is not None or policy.drain.enable
    )
    before = {n.name: n for n in nodes}
    for a in result.actions:
        if isinstance(a, Cordon):
            assert before[a.node].state == "cordon-required" or a.node in result.started
        if isinstance(a, DeleteDriverPod):
            assert before[a.node].state in ("pod-restart-required", *NEEDS_PODS) or (
                not reads_pods and (a.node in result.started or before[a.node].state in IN_PROGRESS_STATES)
            )
        if isinstance(a, EvictPods):
            assert before[a.node].state in NEEDS_PODS

    # A node goes through several states in one pass only while nothing needs observing: after a cordon (when
    # pods are read after it), an eviction, a deletion or an uncordon, at most that step's own state follows.
    # One event per node.
    observed = (Cordon, Uncordon, EvictPods, DeleteDriverPod) if reads_pods else (Uncordon, EvictPods, DeleteDriverPod)
    for n in nodes:
        mine = result.actions_for(n.name)
        stops = [i for i, a in enumerate(mine) if isinstance(a, observed)]
        if stops:
            assert sum(isinstance(a, SetState) for a in mine[stops[0] :]) <= 1, mine
        assert sum(isinstance(a, Event) for a in mine) <= 1, mine
    # A reason for every node left in a state that is not final.
    set_states = {a.node for a in result.actions if isinstance(a, SetState)}
    for n in nodes:
        if n.name not in set_states and n.state != "upgrade-done":
            assert n.name in result.waiting, (n, result)

    # Pods that must never be touched.
    evicted = {(ns, name) for a in result.actions if isinstance(a, EvictPods) for ns, name in a.pods}
    # The state each node was in when its eviction was planned (chains may pass through several).
    evicting: dict[str, str] = {}
    current = {n.name: n.state for n in nodes}
    for a in result.actions:
        if isinstance(a, SetState):
            current[a.node] = a.state
        elif isinstance(a, EvictPods):
            evicting[a.node] = current[a.node]
    for p in pods:
        if (p.namespace, p.name) in evicted:
            assert not p.is_daemonset_pod and not p.finished and not p.terminating
            if evicting[p.node] == "pod-deletion-required":
                assert p.uses_gpu
                assert policy.pod_deletion is not None
                assert not p.has_emptydir or policy.pod_deletion.delete_empty_dir
                assert p.controlled or policy.pod_deletion.force
            else:
                assert p.labels.get(DRAIN_SKIP_LABEL) != "true"
                assert not p.has_emptydir or policy.drain.delete_empty_dir
                assert p.controlled or policy.drain.force


@settings(deadline=None)
@given(nodes=random_nodes())
def test_auto_upgrade_off_removes_state_labels_and_undoes_only_its_own_cordons(nodes: list[UpgradeNode]) -> None:
    off = DriverUpgradePolicySpec(auto_upgrade=False)
    result = plan(nodes, [], off, T0)
    labelled = {n.name for n in nodes if STATE_LABEL in n.labels}
    assert [a for a in result.actions if isinstance(a, SetState)] == [SetState(n.name, "") for n in nodes
                                                                      if n.name in labelled]  # fmt: skip
    assert {a.node for a in result.actions} <= labelled
    ours = {n.name for n in nodes if n.unschedulable and not n.initially_unschedulable and n.state in (
        "wait-for-jobs-required", "pod-deletion-required", "drain-required", "pod-restart-required",
        "validation-required", "uncordon-required")}  # fmt: skip
    assert {a.node for a in result.actions if isinstance(a, Uncordon)} == ours
    for a in result.actions:  # nothing else is written: no cordon, eviction, deletion, new annotation
        assert isinstance(a, (SetState, Uncordon, Annotate, Event)), a
        assert not isinstance(a, Annotate) or a.value is None, a
    after = apply_to_nodes(nodes, result.actions)
    assert plan(after, [], off, T0).actions == []


# 2. Simulated rollouts


@dataclass
class SimPod:
    name: str
    node: str
    uses_gpu: bool
    has_emptydir: bool
    is_ds: bool
    labels: dict[str, str]
    finish_at: float | None  # job pods complete at this time
    pdb_until: float  # evictions are refused before this time
    phase: str = "Running"
    terminating: bool = False
    controlled: bool = True  # False: nothing recreates it (a bare pod)

    def projection(self) -> WorkloadPod:
        return WorkloadPod(
            namespace="default",
            name=self.name,
            node=self.node,
            uses_gpu=self.uses_gpu,
            has_emptydir=self.has_emptydir,
            is_daemonset_pod=self.is_ds,
            labels=dict(self.labels),
            phase=self.phase,
            terminating=self.terminating,
            controlled=self.controlled,
        )


@dataclass
class SimNode:
    name: str
    labels: dict[str, str]
    annotations: dict[str, str]
    unschedulable: bool
    ready: bool
    pod: dict[str, Any] | None
    # Behaviour of the driver pod the DaemonSet creates after a delete (seconds).
    create_delay: float
    ready_delay: float
    crash_for: float  # the new pod crash-loops this long first
    validator_delay: float
    validator_ready: bool = True
    generation: int = 0
    next_event: float | None = None  # when the pod lifecycle moves on
    pod_ready_at: float | None = None
    crash_until: float | None = None
    validator_at: float | None = None
    deleted: list[str] = field(default_factory=list)


class Cluster:
    """An in-memory cluster: one OnDelete driver DaemonSet at revision NEW, workload pods, a clock."""

    def __init__(self, nodes: list[SimNode], pods: list[SimPod], now: float):
        self.nodes = {n.name: n for n in nodes}
        self.pods = {p.name: p for p in pods}
        self.now = now
        self.interventions = 0
        self.steps = 0
        self.failures = 0
        self.seen: dict[str, tuple[tuple[Any, ...], UpgradeNode]] = {}

    def observe(self) -> tuple[list[UpgradeNode], list[WorkloadPod]]:
        nodes = []
        for n in self.nodes.values():
            # A node that did not change is the same object again, as the operator's adapter gives it (the
            # planner then skips a settled one without stepping it: this rollout goes through that too).
            seen = copy.deepcopy((n.labels, n.annotations, n.unschedulable, n.ready, n.pod, n.validator_ready))
            kept = self.seen.get(n.name)
            if kept is not None and kept[0] == seen:
                nodes.append(kept[1])
                continue
            made = UpgradeNode(
                name=n.name,
                labels=dict(n.labels),
                annotations=dict(n.annotations),
                unschedulable=n.unschedulable,
                ready=n.ready,
                driver_pod=n.pod,
                driver_revision=NEW,
                validator_pod=pod_dict(f"val-{n.name}", "v", n.validator_ready),
            )
            self.seen[n.name] = (seen, made)
            nodes.append(made)
        return nodes, [p.projection() for p in self.pods.values()]

    def apply(self, actions: list[Action]) -> None:
        for a in actions:
            node = self.nodes[a.node]
            if isinstance(a, SetState):
                self.failures += a.state == "upgrade-failed"
                if a.state:
                    node.labels[STATE_LABEL] = a.state
                else:
                    node.labels.pop(STATE_LABEL, None)
            elif isinstance(a, Annotate):
                if a.value is None:
                    node.annotations.pop(a.key, None)
                else:
                    node.annotations[a.key] = a.value
            elif isinstance(a, Cordon):
                node.unschedulable = True
            elif isinstance(a, Uncordon):
                node.unschedulable = False
            elif isinstance(a, DeleteDriverPod):
                pod = node.pod
                if (
                    pod is not None
                    and pod["metadata"]["name"] == a.pod_name
                    and not pod["metadata"].get("deletionTimestamp")
                ):
                    pod["metadata"]["deletionTimestamp"] = "now"
                    node.deleted.append(a.pod_name)
                    node.validator_ready = False
                    node.next_event = self.now + 1
            elif isinstance(a, EvictPods):
                for _, name in a.pods:
                    p = self.pods.get(name)
                    if p is not None and self.now >= p.pdb_until:
                        p.terminating = True

    def tick(self, dt: float) -> None:
        self.steps += 1
        self.now += dt
        for name in [n for n, p in self.pods.items() if p.terminating]:
            del self.pods[name]
        for p in self.pods.values():
            if p.finish_at is not None and self.now >= p.finish_at:
                p.phase = "Succeeded"
        for n in self.nodes.values():
            self._driver(n)
            old = n.pod is not None and n.pod["metadata"]["labels"]["controller-revision-hash"] == OLD
            if n.labels.get(STATE_LABEL) == "upgrade-failed" and (old or REQUESTED_ANNOTATION in n.annotations):
                # Failed before its driver restarted (pods that would not go): the admin moves the
                # workloads away (a GPU DaemonSet's too) and relabels the node to retry.
                self.interventions += 1
                for pname in [pn for pn, p in self.pods.items() if p.node == n.name and (p.uses_gpu or not p.is_ds)]:
                    del self.pods[pname]
                n.labels[STATE_LABEL] = "upgrade-required"

    def _driver(self, n: SimNode) -> None:
        """The DaemonSet controller and kubelet: terminate, recreate on NEW, crash-loop, become ready."""
        now = self.now
        if n.pod is not None and n.pod["metadata"].get("deletionTimestamp"):
            if n.next_event is not None and now >= n.next_event:
                n.pod = None
                n.next_event = now + n.create_delay
            return
        if n.pod is None:
            if n.next_event is not None and now >= n.next_event:
                n.generation += 1
                n.crash_until = now + n.crash_for if n.crash_for else None
                n.pod = pod_dict(f"drv-{n.name}-{n.generation}", NEW, False, restarts=11 if n.crash_for else 0)
                n.pod_ready_at = now + n.ready_delay
                n.next_event = None
            return
        if n.pod_ready_at is not None and now >= n.pod_ready_at and (n.crash_until is None or now >= n.crash_until):
            n.pod = pod_dict(n.pod["metadata"]["name"], NEW, True)
            n.pod_ready_at = None
            n.validator_at = now + n.validator_delay
        if n.validator_at is not None and now >= n.validator_at:
            n.validator_ready = True
            n.validator_at = None


@st.composite
def clusters(draw: st.DrawFn) -> tuple[Cluster, set[str], set[str]]:
    """A cluster, the nodes cordoned before the rollout, and the nodes that need an upgrade."""
    nodes, pods = [], []
    cordoned, needs = set(), set()
    for i in range(draw(st.integers(1, 8))):
        name = f"n{i}"
        labels = {STATE_LABEL: "upgrade-done"} if draw(st.booleans()) else {}
        if draw(st.integers(0, 5)) == 0:
            labels[SKIP_LABEL] = "true"
        old = draw(st.integers(0, 4)) > 0
        requested = not old and draw(st.integers(0, 3)) == 0
        unschedulable = draw(st.integers(0, 6)) == 0
        if unschedulable:
            cordoned.add(name)
        if old or requested:
            needs.add(name)
        nodes.append(
            SimNode(
                name=name,
                labels=labels,
                annotations={REQUESTED_ANNOTATION: "true"} if requested else {},
                unschedulable=unschedulable,
                ready=draw(st.integers(0, 9)) > 0,
                pod=pod_dict(f"drv-{name}-0", OLD if old else NEW, True),
                create_delay=draw(st.sampled_from([0, 30, 90])),
                ready_delay=draw(st.sampled_from([0, 60, 240])),
                crash_for=draw(st.sampled_from([0, 0, 0, 400])),
                validator_delay=draw(st.sampled_from([0, 60, 700])),  # 700 > 600: validation fails, then recovers
            )
        )
        for j in range(draw(st.integers(0, 3))):
            kind = draw(st.sampled_from(["job", "serve", "cpu", "ds", "scratch", "pinned", "bare"]))
            pods.append(
                SimPod(
                    name=f"{name}-{kind}-{j}",
                    node=name,
                    uses_gpu=kind in ("job", "serve", "ds", "scratch", "bare"),
                    has_emptydir=kind == "scratch",
                    is_ds=kind == "ds",
                    labels={
                        "job": {"app": "train"},
                        "serve": {"app": "serve", "tier": "web"},
                        "pinned": {"tier": "db", DRAIN_SKIP_LABEL: "true"},
                    }.get(kind, {}),
                    finish_at=T0 + draw(st.sampled_from([60, 600, 1200])) if kind == "job" else None,
                    pdb_until=T0 + (draw(st.sampled_from([0, 200, 1000])) if kind == "serve" else 0),
                    controlled=kind != "bare",
                )
            )
    return Cluster(nodes, pods, T0), cordoned, needs


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(
    world=clusters(),
    policy=policies(),
    max_unavailable=st.sampled_from(["100%", "100%", "50%", "50%", "25%", 1, 2, 3, "0%"]),
    crash_seed=st.integers(0, 2**32 - 1),
    crash_rate=st.sampled_from([0, 0.2]),
)
def test_simulated_rollout(
    world: tuple[Cluster, set[str], set[str]],
    policy: DriverUpgradePolicySpec,
    max_unavailable: int | str,
    crash_seed: int,
    crash_rate: float,
) -> None:
    cluster, cordoned, needs = world
    policy = policy.model_copy(update={"max_unavailable": max_unavailable})
    rng = random.Random(crash_seed)
    skipped = {n.name for n in cluster.nodes.values() if n.labels.get(SKIP_LABEL) == "true"}
    not_ready = {n.name for n in cluster.nodes.values() if not n.ready}
    always_unavailable = cordoned | not_ready
    total = len(cluster.nodes)
    limit = limit_of(policy.max_unavailable, total)
    # A node that is not cordoned nor NotReady can start only while fewer than maxUnavailable nodes are.
    feasible = limit > len(always_unavailable)

    result = Plan()
    for _ in range(3000):
        nodes, pods = cluster.observe()
        result = plan(nodes, pods, policy, cluster.now)
        actions = result.actions
        if crash_rate and rng.random() < crash_rate:
            actions = actions[: rng.randrange(len(actions) + 1)]  # the adapter died halfway
        cluster.apply(actions)

        after, _ = cluster.observe()
        if policy.max_parallel_upgrades:
            assert in_progress(after) <= policy.max_parallel_upgrades
        assert reserved(after) <= max(limit, len(always_unavailable))
        for n in cluster.nodes.values():
            assert len(n.deleted) <= 1, f"{n.name}: driver restarted twice: {n.deleted}"

        settled = all(
            state_of(n.labels) in ("upgrade-done", "upgrade-required") and n.pod is not None
            for n in cluster.nodes.values()
        )
        if not result.actions and settled:
            break
        cluster.tick(30)
    else:
        raise AssertionError(f"rollout did not settle: {result.waiting}")

    event(f"feasible={feasible}")
    event(f"needs upgrade: {len(needs - skipped)} of {total}")
    event(f"admin retries: {min(cluster.interventions, 3)}")
    event(f"upgrade-failed transitions: {min(cluster.failures, 3)}")
    event(f"passes: {cluster.steps // 100 * 100}+")
    for n in cluster.nodes.values():
        assert n.pod is not None
        revision = n.pod["metadata"]["labels"]["controller-revision-hash"]
        assert n.unschedulable == (n.name in cordoned), n
        if n.name in skipped:
            assert n.deleted == []
            assert state_of(n.labels) == ("upgrade-required" if n.name in needs else "upgrade-done")
            continue
        if n.name in needs and not feasible and n.name not in always_unavailable:
            # Blocked by cordoned/NotReady nodes using all of maxUnavailable: it waits, and says why.
            assert state_of(n.labels) == "upgrade-required"
            assert "maxUnavailable" in result.waiting[n.name]
            assert n.deleted == []
            continue
        assert state_of(n.labels) == "upgrade-done", (n, result.waiting)
        assert revision == NEW
        assert len(n.deleted) == (1 if n.name in needs else 0), n
        assert not any(k in n.annotations for k in TRANSIENT_ANNOTATIONS), n.annotations
        assert INITIAL_UNSCHEDULABLE_ANNOTATION not in n.annotations
        assert REQUESTED_ANNOTATION not in n.annotations


# 3. The wave preview


@settings(max_examples=200, deadline=None)
@given(data=st.data(), policy=policies())
def test_preview_first_wave_matches_the_planner(data: st.DataObject, policy: DriverUpgradePolicySpec) -> None:
    nodes = data.draw(random_nodes())
    # Unknown and done nodes that need an upgrade start in the same pass as they become upgrade-required.
    started = list(plan(nodes, [], policy, T0).started)
    running = [n.name for n in nodes if n.state in IN_PROGRESS_STATES and n.state != "upgrade-failed"]
    waves = preview_waves(nodes, policy)
    first = waves[0] if waves else []
    assert sorted(set(first) - set(running)) == sorted(started)


@settings(max_examples=200, deadline=None)
@given(data=st.data(), policy_a=policies(), policy_b=policies(), outer=policies())
def test_joint_preview_first_wave_matches_the_planner_under_a_cluster_wide_limit(
    data: st.DataObject,
    policy_a: DriverUpgradePolicySpec,
    policy_b: DriverUpgradePolicySpec,
    outer: DriverUpgradePolicySpec,
) -> None:
    """Two NVIDIADrivers' nodes, planned one after the other within the ClusterPolicy's limit over all of them (as
    the operator's pass): the joint preview's first wave starts what the plans start."""
    nodes = data.draw(random_nodes())
    cut = data.draw(st.integers(0, len(nodes)))
    parts = [(nodes[:cut], policy_a), (nodes[cut:], policy_b)]
    limit = Limit.over(nodes, outer, "all NVIDIADrivers")
    started: list[str] = []
    for part, policy in parts:
        result = plan(part, [], policy, T0, limit=limit)
        by_name = {n.name: n for n in part}
        limit = limit.after(len(result.started), sum(1 for n in result.started if not by_name[n].counted_unavailable))
        started += result.started
    running = [n.name for n in nodes if n.state in IN_PROGRESS_STATES and n.state != "upgrade-failed"]
    waves = preview_joint_waves(parts, outer)
    first = waves[0] if waves else []
    assert sorted(set(first) - set(running)) == sorted(started)


@settings(deadline=None)
@given(
    shape=st.lists(st.tuples(st.booleans(), st.booleans(), st.booleans()), min_size=1, max_size=12),
    max_parallel=st.integers(0, 4),
    max_unavailable=max_unavailable_values,
)
@example(shape=[(True, False, False)] * 4, max_parallel=0, max_unavailable=1)  # waves of one node
@example(shape=[(True, False, False)] * 4, max_parallel=0, max_unavailable="50%")  # waves of two
@example(shape=[(True, False, False), (False, True, False)], max_parallel=0, max_unavailable="1")  # none can start
def test_preview_of_a_fresh_rollout(
    shape: list[tuple[bool, bool, bool]], max_parallel: int, max_unavailable: int | str
) -> None:
    """Every node that needs an upgrade appears exactly once, unless the limits can never let it start;
    no wave is larger than the limits allow."""
    nodes = [
        UpgradeNode(
            name=f"n{i:02}",
            unschedulable=cordoned,
            labels={SKIP_LABEL: "true"} if skipped else {},
            driver_pod=pod_dict(f"drv-{i}", OLD if old else NEW, True),
            driver_revision=NEW,
        )
        for i, (old, cordoned, skipped) in enumerate(shape)
    ]
    policy = DriverUpgradePolicySpec(max_parallel_upgrades=max_parallel, max_unavailable=max_unavailable)
    waves = preview_waves(nodes, policy)
    limit = limit_of(max_unavailable, len(nodes))
    cordoned = {n.name for n in nodes if n.unschedulable}
    listed = [name for wave in waves for name in wave]
    assert len(listed) == len(set(listed))
    for n in nodes:
        needs = n.driver_out_of_date and not n.skipped
        can_start = n.name in cordoned or limit > len(cordoned)
        assert (n.name in listed) == (needs and can_start), (n.name, waves)
    for wave in waves:
        assert wave
        if max_parallel:
            assert len(wave) <= max_parallel
        assert len(set(wave) - cordoned) <= max(0, limit - len(cordoned))
