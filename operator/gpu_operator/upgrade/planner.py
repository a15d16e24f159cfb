"""The driver-upgrade state machine (REFERENCE §5) as a pure function of what the cluster shows.

`plan(nodes, pods, policy, now)` looks at every managed node once and returns the actions that move each
node on, plus a sentence for every node that cannot move yet. It reads no clock and calls no API: the
adapter observes, calls it, carries the actions out, and observes again. All the progress lives in node
labels and annotations, so any pass may be the first after a restart.

A node goes through as many states in one pass as need no new observation (beyond upstream, which moves
one state per pass): its actions fold into one node patch and one event. The chain stops after any write
whose effect must be observed (a cordon, an eviction, a driver pod deletion, an uncordon), before a state
that reads the node's workload pods when they were not read for this pass (they are read fresh, after
the cordon, only for nodes observed in such a state), at upgrade-failed and upgrade-done, and before
validation-required unless the node's validator pod is already Ready. A cordon stops it only when the policy
reads workload pods (waitForCompletion.podSelector, podDeletion or drain) and the upgrade is not restart-only
(UpgradeNode.restarts_only); else the cordon goes out in one patch with pod-restart-required, then the driver
pod's deletion. When it stops, the pass still goes on:
once the cordon's patch is answered, the adapter reads the node's pods and plans it again from there
(orchestrate._after_cordon, as kubectl drain lists pods after its cordon), so the driver pod is deleted in the
same pass, after a second patch.
On the happy path a node costs four steps: start (cordon) with the driver pod's deletion, new driver pod Ready,
validator Ready (the same step when it is Ready already). The last two need no pass over every node: when one of
those pods turns Ready, the operator plans that node alone (`plan_forward`) and writes what moves it on.
Routine steps (nothing to wait for, evict or drain, the driver pod's deletion, the new pod Ready, the uncordon)
get no event of their own, only a mention in one that is written anyway: on the happy path a node gets one, its
upgrade's start (the cordon and why; upstream: one per state). Its end is the `upgrade-done` label and the
uncordon themselves, and a line in the operator's log (`Plan.finished`).

Slots (computed from the observed states, before any of this pass's actions): `inProgress` = nodes in a
state other than unknown/done/required (upgrade-failed holds its slot); a new upgrade may start while
`inProgress < maxParallelUpgrades` (0 = unlimited) and, unless the node already counts as unavailable,
while the number of unavailable nodes (cordoned, NotReady or upgrading) stays below `maxUnavailable` (a
percentage of the nodes with a driver pod, as upstream, or mid-upgrade). A node no driver pod runs on yet counts
neither in that base nor as unavailable (UpgradeNode.counted, counted_unavailable).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from operator import attrgetter

from ..api import DriverUpgradePolicySpec
from .model import (
    CORDON_REQUIRED,
    DELETED_DRIVER_POD_ANNOTATION,
    DONE,
    DRAIN_REQUIRED,
    DRAIN_SKIP_LABEL,
    DRAIN_START_ANNOTATION,
    EVENT_REASON,
    FAILED,
    FAILURE_REASON_ANNOTATION,
    IN_PROGRESS_STATES,
    INITIAL_UNSCHEDULABLE_ANNOTATION,
    NEEDS_PODS,
    POD_DELETION_REQUIRED,
    POD_DELETION_START_ANNOTATION,
    POD_RESTART_REQUIRED,
    REQUESTED_ANNOTATION,
    REQUIRED,
    SKIP_LABEL,
    STATE_LABEL,
    TRANSIENT_ANNOTATIONS,
    UNCORDON_REQUIRED,
    UNKNOWN,
    VALIDATION_REQUIRED,
    VALIDATION_START_ANNOTATION,
    VALIDATION_TIMEOUT_S,
    WAIT_FOR_JOBS_REQUIRED,
    WAIT_FOR_JOBS_START_ANNOTATION,
    Action,
    Annotate,
    Cordon,
    Counters,
    DeleteDriverPod,
    Event,
    EvictPods,
    MoveOwner,
    MovePool,
    Plan,
    SetState,
    Uncordon,
    UpgradeNode,
    WorkloadPod,
    container_waiting,
    crash_loop,
    eviction_refused,
    names,
    pod_is_ready,
    pod_name,
    pod_revision,
    pod_terminating,
)
from .selector import Selector, SelectorError, parse_selector


def max_unavailable_count(value: int | str | None, total: int) -> int:
    """maxUnavailable as a node count: an int, or a percentage of `total` rounded up; unset = total."""
    if value is None or value == "":
        return total
    if isinstance(value, int):
        return value
    text = value.strip()
    if text.endswith("%"):
        return math.ceil(int(text[:-1]) * total / 100)
    return int(text)


def _parse_time(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None  # unreadable: treated as absent, so the wait starts again


_by_name = attrgetter("name")


def _stamp(now: float) -> str:
    return str(int(now))  # epoch seconds, as upstream writes its start-time annotations


@dataclass(frozen=True)
class Slots:
    """The slot arithmetic of one pass."""

    total: int
    max_parallel: int  # 0 = unlimited
    max_unavailable: int
    in_progress: int
    unavailable: int  # cordoned, NotReady, or in progress (about to be cordoned, or cordoned by us)
    failed: int
    pending: int  # upgrade-required, not skipped

    @classmethod
    def observe(cls, nodes: Sequence[UpgradeNode], policy: DriverUpgradePolicySpec) -> Slots:
        return cls.of(_Tally.of(nodes), policy)

    @classmethod
    def of(cls, tally: _Tally, policy: DriverUpgradePolicySpec) -> Slots:
        return cls(
            total=tally.total,
            max_parallel=policy.max_parallel_upgrades,
            max_unavailable=max_unavailable_count(policy.max_unavailable, tally.total),
            in_progress=tally.in_progress,
            unavailable=tally.unavailable,
            failed=tally.failed,
            pending=tally.pending,
        )

    @property
    def available(self) -> int:
        """Upgrades that may start now (for a node that is not already unavailable)."""
        by_unavailable = self.max_unavailable - self.unavailable
        if self.max_parallel == 0:  # unlimited: every node that needs one (upstream's GetUpgradesAvailable)
            return max(0, min(self.pending, by_unavailable))
        return max(0, min(self.max_parallel - self.in_progress, by_unavailable))


@dataclass(frozen=True)
class _Tally:
    """The nodes counted by state, in one walk (at 5,000 nodes each count's own walk was a tenth of a pass)."""

    total: int = 0  # maxUnavailable's base: the nodes UpgradeNode.counted
    in_progress: int = 0
    unavailable: int = 0  # UpgradeNode.counted_unavailable: of total, cordoned, NotReady, or in progress
    failed: int = 0
    done: int = 0
    pending: int = 0  # upgrade-required and not skipped
    skipped: int = 0

    @classmethod
    def of(cls, nodes: Sequence[UpgradeNode]) -> _Tally:
        total = in_progress = unavailable = failed = done = pending = skipped = 0
        for n in nodes:
            state = n.state
            total += n.counted
            in_progress += state in IN_PROGRESS_STATES
            unavailable += n.counted_unavailable
            skip = n.skipped
            skipped += skip
            if state == DONE:
                done += 1
            elif state == FAILED:
                failed += 1
            elif state == REQUIRED and not skip:
                pending += 1
        return cls(total, in_progress, unavailable, failed, done, pending, skipped)


def select_starts(
    candidates: Sequence[UpgradeNode],
    slots: Slots,
    unavailable_names: Sequence[str] = (),
    limit: Limit | None = None,
) -> tuple[list[str], dict[str, str]]:
    """Which of the (sorted, not skipped) candidates start now, and why each other one waits.

    A node already counted as unavailable (UpgradeNode.counted_unavailable) costs a parallel slot but no
    maxUnavailable budget: upgrading it does not make one more node unavailable. `limit`: limits beyond the policy's
    (the cluster-wide ones over several NVIDIADrivers' upgrades), counting the starts made before these.
    """
    parallel_left = slots.max_parallel - slots.in_progress if slots.max_parallel else None
    unavailable_left = slots.max_unavailable - slots.unavailable
    unavailable = list(unavailable_names)
    started: list[str] = []
    waiting: dict[str, str] = {}
    for node in candidates:
        free = node.counted_unavailable
        if limit is not None and limit.holds(free):
            waiting[node.name] = f"waiting for an upgrade slot: {limit.why}"
        elif parallel_left is not None and parallel_left <= 0:
            msg = (
                f"waiting for an upgrade slot: {slots.in_progress + len(started)} of {slots.max_parallel} "
                "in progress (maxParallelUpgrades)"
            )
            if slots.failed:
                msg += f", {slots.failed} of them upgrade-failed"
            waiting[node.name] = msg
        elif not free and unavailable_left <= 0:
            msg = (
                f"waiting for an upgrade slot: {slots.max_unavailable - unavailable_left} of at most "
                f"{slots.max_unavailable} nodes unavailable (maxUnavailable)"
            )
            if unavailable:
                msg += f"; cordoned, NotReady or upgrading: {names(sorted(unavailable))}"
            waiting[node.name] = msg
        else:
            started.append(node.name)
            if parallel_left is not None:
                parallel_left -= 1
            if not free:
                unavailable_left -= 1
                unavailable.append(node.name)
            if limit is not None:
                limit = limit.after(1, 0 if free else 1)
    return started, waiting


@dataclass(frozen=True)
class Limit:
    """Limits beyond one policy's (the ClusterPolicy's, over several NVIDIADrivers' nodes): their maxima and what
    they count, with the upgrades started so far in this pass."""

    max_parallel: int  # 0 = unlimited
    max_unavailable: int
    in_progress: int
    unavailable: int
    what: str  # the nodes they are counted over

    @classmethod
    def over(cls, nodes: Sequence[UpgradeNode], policy: DriverUpgradePolicySpec, what: str) -> Limit:
        """The policy's limits over all these nodes."""
        slots = Slots.observe(nodes, policy)
        return cls(slots.max_parallel, slots.max_unavailable, slots.in_progress, slots.unavailable, what)

    @property
    def parallel(self) -> int | None:
        """Upgrades that may still start by maxParallelUpgrades (None: no such limit)."""
        return self.max_parallel - self.in_progress if self.max_parallel else None

    @property
    def available(self) -> int:
        """Upgrades that may still start by these limits (for a node that is not already unavailable)."""
        by_unavailable = self.max_unavailable - self.unavailable
        parallel = self.parallel
        return max(0, by_unavailable if parallel is None else min(parallel, by_unavailable))

    def holds(self, unavailable: bool) -> bool:
        """Whether a start waits: no parallel slot left, or (a node that is available) no unavailable one."""
        parallel = self.parallel
        full = self.unavailable >= self.max_unavailable
        return (parallel is not None and parallel <= 0) or (not unavailable and full)

    @property
    def why(self) -> str:
        return (
            f"{self.in_progress} in progress and {self.unavailable} of at most {self.max_unavailable} nodes "
            f"unavailable across {self.what} (maxParallelUpgrades {self.max_parallel or 'unlimited'})"
        )

    def after(self, started: int, made_unavailable: int) -> Limit:
        """Once `started` upgrades began, `made_unavailable` of them on nodes that were available."""
        return replace(self, in_progress=self.in_progress + started, unavailable=self.unavailable + made_unavailable)


@dataclass(frozen=True)
class _Move:
    old: str
    new: str
    why: str
    warning: bool
    event: bool  # False: bookkeeping, worth no event of its own


@dataclass
class _Step:
    actions: list[Action] = field(default_factory=list)  # no Event: `_conclude` writes one per node
    waiting: str | None = None
    move: _Move | None = None
    note: str | None = None  # said in the node's event even without a move (a quiet step's: only in one)
    quiet: bool = False  # the wait is ordinary progress: no event of its own
    finished: str | None = None  # (concluded) an upgrade that ended in this pass without an event: what it did


# Bookkeeping `_Pass.move` removes only after the state label (see there).
_CLEARED_LAST = frozenset({INITIAL_UNSCHEDULABLE_ANNOTATION, FAILURE_REASON_ANNOTATION})

# Writes whose effect must be observed before the node goes on (a cordon only when workload pods are read: the
# adapter reads them once it is answered).
_CHAIN_STOPS = (Cordon, Uncordon, EvictPods, DeleteDriverPod, MovePool, MoveOwner)


def _after(node: UpgradeNode, actions: Iterable[Action]) -> UpgradeNode:
    """The node as it will be once `actions` are carried out (labels, annotations, cordon)."""
    labels, annotations, unschedulable = dict(node.labels), dict(node.annotations), node.unschedulable
    for a in actions:
        if isinstance(a, SetState):
            if a.state:
                labels[STATE_LABEL] = a.state
            else:
                labels.pop(STATE_LABEL, None)
        elif isinstance(a, Annotate):
            if a.value is None:
                annotations.pop(a.key, None)
            else:
                annotations[a.key] = a.value
        elif isinstance(a, Cordon):
            unschedulable = True
        elif isinstance(a, Uncordon):
            unschedulable = False
    return replace(node, labels=labels, annotations=annotations, unschedulable=unschedulable)


def _conclude(node: str, steps: Sequence[_Step]) -> _Step:
    """The steps one node took in this pass as one: their actions in order, then one event for all of them."""
    if len(steps) == 1 and steps[0].move is None and steps[0].note is None:
        return steps[0]
    actions = [a for s in steps for a in s.actions]
    moves = [s.move for s in steps if s.move is not None]
    notes = [s.note for s in steps if s.note is not None]
    path = " -> ".join([moves[0].old, *(m.new for m in moves)]) + ": " if moves else ""
    message = path + "; ".join([*(m.why for m in moves), *notes])
    last = steps[-1]
    if any(s.note is not None and not s.quiet for s in steps) or any(m.event for m in moves):
        kind = "Warning" if any(m.warning for m in moves) else "Normal"
        actions.append(Event(node, kind, EVENT_REASON, message))
    elif moves and moves[-1].new == DONE and moves[0].old in IN_PROGRESS_STATES:
        return _Step(actions, last.waiting, quiet=last.quiet, finished=message)
    return _Step(actions, last.waiting, quiet=last.quiet)


@dataclass(frozen=True)
class _Eviction:
    """Outcome of one pass of pod deletion or drain on one node."""

    done: bool = False
    failure: str | None = None
    actions: tuple[Action, ...] = ()
    waiting: str | None = None


def reads_pods(policy: DriverUpgradePolicySpec) -> bool:
    """Whether wait-for-jobs, pod deletion or drain read a node's workload pods under this policy. When none does,
    nothing after the cordon needs to observe it (the chain goes on to the driver pod's deletion after one patch),
    and no pod is read."""
    wait = policy.wait_for_completion
    return bool(wait.pod_selector.strip()) or policy.pod_deletion is not None or policy.drain.enable


class _Pass:
    def __init__(
        self,
        policy: DriverUpgradePolicySpec,
        pods: Sequence[WorkloadPod],
        now: float,
        validation_enabled: bool,
    ):
        self.policy = policy
        self.now = now
        self.validation_enabled = validation_enabled
        self.pods: dict[str, list[WorkloadPod]] = defaultdict(list)
        for p in sorted(pods, key=lambda p: (p.namespace, p.name)):
            self.pods[p.node].append(p)
        self.wait_selector, self.wait_selector_error = self._selector(policy.wait_for_completion.pod_selector)
        self.drain_selector, self.drain_selector_error = self._selector(policy.drain.pod_selector)
        self.reads_pods = reads_pods(policy)

    @staticmethod
    def _selector(text: str) -> tuple[Selector | None, str | None]:
        try:
            return parse_selector(text), None
        except SelectorError as exc:
            return None, str(exc)

    # Helpers

    def move(
        self,
        node: UpgradeNode,
        new: str,
        why: str,
        *,
        before: Iterable[Action] = (),
        clear: Iterable[str] = (),
        warning: bool = False,
        event: bool = True,
    ) -> _Step:
        """The actions of one transition, ordered so that a list cut short anywhere is still safe.

        Work (`before`) and removal of the bookkeeping in `clear` come first: if the pass stops there, the
        node stays in its state and at worst a wait restarts. The initial-unschedulable annotation and the
        failure reason go last, after the state label: losing the first while the node is still mid-upgrade would
        uncordon a node its owner had cordoned, and an upgrade-required node cordoned without the second reads as
        cordoned by someone else (`_cordon_changed_while_waiting`).
        """
        present = [k for k in dict.fromkeys(clear) if k in node.annotations]
        actions: list[Action] = list(before)
        actions += [Annotate(node.name, k, None) for k in present if k not in _CLEARED_LAST]
        actions.append(SetState(node.name, new))
        actions += [Annotate(node.name, k, None) for k in present if k in _CLEARED_LAST]
        old = node.labels.get(STATE_LABEL, UNKNOWN) or "unknown"
        return _Step(actions, move=_Move(old, new, why, warning, event))

    def step(self, node: UpgradeNode) -> _Step | None:
        """The node's next step from its state; None for an upgrade that waits for a slot."""
        state = node.state
        if state in (UNKNOWN, DONE):
            return self.unknown_or_done(node)
        if state == REQUIRED:
            if node.refused:
                return _Step(waiting=f"upgrade skipped: driver refused: {node.refused}")
            if node.skipped:
                return _Step(waiting=f"upgrade skipped: node is labelled {SKIP_LABEL}=true")
            if _nothing_left_to_do(node):
                clear = (*TRANSIENT_ANNOTATIONS, INITIAL_UNSCHEDULABLE_ANNOTATION)
                return self.move(node, DONE, "driver pod is up to date", clear=clear)
            return None
        handler = {
            CORDON_REQUIRED: self.cordon,
            WAIT_FOR_JOBS_REQUIRED: self.wait_for_jobs,
            POD_DELETION_REQUIRED: self.pod_deletion,
            DRAIN_REQUIRED: self.drain,
            POD_RESTART_REQUIRED: self.pod_restart,
            VALIDATION_REQUIRED: self.validation,
            UNCORDON_REQUIRED: self.uncordon,
            FAILED: self.failed,
        }[state]
        return handler(node)

    def goes_on(self, step: _Step, observed: UpgradeNode, now: UpgradeNode) -> bool:
        """Whether a node that took `step` (and is now `now`) takes its next step in the same pass."""
        if step.move is None or step.waiting is not None:
            return False
        state = now.state
        stops = [a for a in step.actions if isinstance(a, _CHAIN_STOPS)]
        if stops and ((self.reads_pods and state in NEEDS_PODS) or not all(isinstance(a, Cordon) for a in stops)):
            return False
        if state in (UNKNOWN, DONE, FAILED):
            return False
        if state in NEEDS_PODS and observed.state not in NEEDS_PODS and self.reads_pods:
            return False  # its pods were not read for this pass (the adapter reads them after the patch)
        if state == VALIDATION_REQUIRED and self.validation_enabled:
            return now.validator_pod is not None and pod_is_ready(now.validator_pod)
        return True

    def fail(self, node: UpgradeNode, why: str, clear: Iterable[str] = ()) -> _Step:
        return self.move(
            node, FAILED, why, before=[Annotate(node.name, FAILURE_REASON_ANNOTATION, why)], clear=clear, warning=True
        )

    def elapsed(self, node: UpgradeNode, key: str) -> tuple[float, list[Action]]:
        """Seconds since the wait recorded in annotation `key` began; starts it now when absent."""
        start = _parse_time(node.annotations.get(key))
        if start is None:
            return 0.0, [Annotate(node.name, key, _stamp(self.now))]
        return max(0.0, self.now - start), []

    # States

    def unknown_or_done(self, node: UpgradeNode) -> _Step:
        pod = node.driver_pod
        state = node.state
        if pod is None:
            return _Step(waiting="no driver pod on the node yet") if state == UNKNOWN else _Step()
        if pod_terminating(pod):
            return _Step(waiting=f"driver pod {pod_name(pod)} is terminating") if state == UNKNOWN else _Step()
        why = _reason(node)
        if why is not None:
            # Remember a cordon that is not ours, so the upgrade leaves the node cordoned.
            before: list[Action] = []
            if node.unschedulable and not node.initially_unschedulable:
                before.append(Annotate(node.name, INITIAL_UNSCHEDULABLE_ANNOTATION, "true"))
            elif not node.unschedulable and node.initially_unschedulable:
                before.append(Annotate(node.name, INITIAL_UNSCHEDULABLE_ANNOTATION, None))
            # No event of its own: the start of the upgrade says why (nodes waiting for a slot get none yet).
            return self.move(node, REQUIRED, why, before=before, clear=TRANSIENT_ANNOTATIONS, event=False)
        if node.labels.get(STATE_LABEL) != DONE:
            # Bookkeeping only (a node first seen, or back in sync): no event, or every node would get one.
            return self.move(node, DONE, "driver pod is up to date", clear=TRANSIENT_ANNOTATIONS, event=False)
        # Bookkeeping a pass cut short after the state label left behind; it means nothing on a done node.
        leftover = [k for k in (*TRANSIENT_ANNOTATIONS, INITIAL_UNSCHEDULABLE_ANNOTATION) if k in node.annotations]
        return _Step([Annotate(node.name, k, None) for k in leftover])

    def start(self, node: UpgradeNode, said: bool) -> _Step:
        """`said`: this pass's earlier step (to upgrade-required) gave the reason already."""
        reason = None if said else _reason(node)
        why = f"{reason}; upgrade slot granted" if reason else "upgrade slot granted"
        # Bookkeeping left by a failed attempt (relabelled upgrade-required to retry) must not shorten this one.
        return self.move(node, CORDON_REQUIRED, why, clear=TRANSIENT_ANNOTATIONS)

    def cordon(self, node: UpgradeNode) -> _Step:
        before: list[Action] = [] if node.unschedulable else [Cordon(node.name)]
        if node.restarts_only:
            why = ("node cordoned; the driver's install config (DRIVER_CONFIG_DIGEST) is unchanged: its pod is "
                   "restarted without waiting for jobs, evicting or draining")  # fmt: skip
            return self.move(node, POD_RESTART_REQUIRED, why, before=before)
        return self.move(node, WAIT_FOR_JOBS_REQUIRED, "node cordoned", before=before)

    def after_jobs(self) -> str:
        return POD_DELETION_REQUIRED if self.policy.pod_deletion is not None else DRAIN_REQUIRED

    def wait_for_jobs(self, node: UpgradeNode) -> _Step:
        spec = self.policy.wait_for_completion
        clear = [WAIT_FOR_JOBS_START_ANNOTATION]
        if not spec.pod_selector.strip():
            return self.move(node, self.after_jobs(), "no waitForCompletion.podSelector", clear=clear, event=False)
        if self.wait_selector is None:
            return _Step(waiting=f"waitForCompletion.podSelector is invalid: {self.wait_selector_error}")
        running = [p for p in self.pods[node.name] if not p.finished and self.wait_selector.matches(p.labels)]
        if not running:
            return self.move(node, self.after_jobs(), "no job pods left to wait for", clear=clear, event=False)
        elapsed, actions = self.elapsed(node, WAIT_FOR_JOBS_START_ANNOTATION)
        refs = names(p.ref for p in running)
        if spec.timeout_seconds and elapsed >= spec.timeout_seconds:
            return self.move(
                node,
                self.after_jobs(),
                f"gave up waiting for {refs} after {spec.timeout_seconds}s (waitForCompletion.timeoutSeconds)",
                clear=clear,
            )
        limit = (
            f"{int(elapsed)}s of {spec.timeout_seconds}s" if spec.timeout_seconds else f"{int(elapsed)}s, no timeout"
        )
        return _Step(actions, f"waiting for job pods {refs} to complete (waitForCompletion; {limit})")

    def evict(
        self,
        node: UpgradeNode,
        pods: list[WorkloadPod],
        *,
        start_key: str,
        force: bool,
        timeout: int,
        delete_emptydir: bool,
        field: str,
    ) -> _Eviction:
        """One pass of evicting `pods` as upstream's drain helper does: done when none is left; fail on a pod the
        policy does not let us evict (emptyDir storage without deleteEmptyDir, no controller without force), or
        once the timeout has passed with pods left (a PodDisruptionBudget holding them); else evict the rest,
        always through the Eviction API (force allows pods no controller owns; it never deletes past a budget)."""
        if not pods:
            return _Eviction(done=True)
        refused = eviction_refused(pods, force=force, delete_emptydir=delete_emptydir, field=field)
        if refused is not None:
            return _Eviction(failure=refused)
        elapsed, actions = self.elapsed(node, start_key)
        live = [p for p in pods if not p.terminating]
        refs = names(p.ref for p in (live or pods))
        if timeout > 0 and elapsed >= timeout:
            return _Eviction(failure=f"eviction of {refs} did not finish within {timeout}s ({field}.timeoutSeconds)")
        if live:
            actions.append(EvictPods(node.name, tuple((p.namespace, p.name) for p in live), delete_emptydir))
        limit = f"{int(elapsed)}s of {timeout}s" if timeout else f"{int(elapsed)}s, no timeout"
        if not live:
            msg = f"waiting for {refs} to terminate ({limit})"
        elif _parse_time(node.annotations.get(start_key)) is None:
            msg = f"evicting {refs} ({field})"
        else:
            msg = f"eviction of {refs} blocked (PodDisruptionBudget?) for {limit}"
        return _Eviction(actions=tuple(actions), waiting=msg)

    def pod_deletion(self, node: UpgradeNode) -> _Step:
        spec = self.policy.pod_deletion
        clear = [POD_DELETION_START_ANNOTATION]
        if spec is None:
            return self.move(node, DRAIN_REQUIRED, "podDeletion is not configured", clear=clear, event=False)
        gpu_pods = [p for p in self.pods[node.name] if p.uses_gpu and not p.finished]
        # As upstream, a DaemonSet's or static pod using a GPU, which eviction may not remove, fails pod deletion
        # before any pod goes (the driver is not restarted under it).
        kept = [p.ref for p in gpu_pods if p.is_daemonset_pod]
        if kept:
            result = _Eviction(failure=f"pod deletion cannot remove GPU pods of a DaemonSet or static: {names(kept)}")
        else:
            result = self.evict(
                node,
                gpu_pods,
                start_key=POD_DELETION_START_ANNOTATION,
                force=spec.force,
                timeout=spec.timeout_seconds,
                delete_emptydir=spec.delete_empty_dir,
                field="podDeletion",
            )
        if result.done:
            return self.move(node, POD_RESTART_REQUIRED, "no GPU pods left on the node", clear=clear, event=False)
        if result.failure is not None:
            if self.policy.drain.enable:
                return self.move(node, DRAIN_REQUIRED, f"{result.failure}; trying drain", clear=clear, warning=True)
            return self.fail(node, result.failure, clear=clear)
        return _Step(list(result.actions), result.waiting)

    def drain(self, node: UpgradeNode) -> _Step:
        spec = self.policy.drain
        clear = [DRAIN_START_ANNOTATION]
        if not spec.enable:
            return self.move(node, POD_RESTART_REQUIRED, "drain is not enabled", clear=clear, event=False)
        if self.drain_selector is None:
            return _Step(waiting=f"drain.podSelector is invalid: {self.drain_selector_error}")
        selector = self.drain_selector
        pods = [
            p
            for p in self.pods[node.name]
            if not p.is_daemonset_pod
            and not p.finished
            and p.labels.get(DRAIN_SKIP_LABEL) != "true"
            and selector.matches(p.labels)
        ]
        result = self.evict(
            node,
            pods,
            start_key=DRAIN_START_ANNOTATION,
            force=spec.force,
            timeout=spec.timeout_seconds,
            delete_emptydir=spec.delete_empty_dir,
            field="drain",
        )
        if result.done:
            return self.move(node, POD_RESTART_REQUIRED, "node drained", clear=clear, event=False)
        if result.failure is not None:
            return self.fail(node, result.failure, clear=clear)
        return _Step(list(result.actions), result.waiting)

    def pod_restart(self, node: UpgradeNode) -> _Step:
        pod = node.driver_pod
        if pod is None:
            return _Step(waiting="waiting for the DaemonSet to create the new driver pod", quiet=True)
        name = pod_name(pod)
        if pod_terminating(pod):
            return _Step(waiting=f"waiting for driver pod {name} to terminate", quiet=True)
        deleted = node.annotations.get(DELETED_DRIVER_POD_ANNOTATION)
        # Delete: the pod we meant to delete is still there (retry), or we have not restarted this node's
        # driver yet and it is out of date or an upgrade was requested, or the DaemonSet moved on again.
        if name == deleted or node.driver_out_of_date or (deleted is None and node.requested):
            actions: list[Action] = []
            if name != deleted:
                actions.append(Annotate(node.name, DELETED_DRIVER_POD_ANNOTATION, name))
            if node.requested:
                actions.append(Annotate(node.name, REQUESTED_ANNOTATION, None))
            if node.pool_move:  # the old pool's DaemonSet lets go of the node; its new pool's takes it
                actions.append(MovePool(node.name, node.pool_move))
            if node.owner_move is not None:  # likewise from the old NVIDIADriver's DaemonSet to the new one's
                actions.append(MoveOwner(node.name, node.owner_move, node.owner_kernel))
            actions.append(DeleteDriverPod(node.name, name))
            return _Step(
                actions,
                f"deleted driver pod {name}; waiting for its replacement",
                note=f"deleting driver pod {name} to restart the driver",
                quiet=True,
            )
        if pod_is_ready(pod):
            # The validation clock starts in the same patch; the move itself is bookkeeping (no event).
            stamp = [Annotate(node.name, VALIDATION_START_ANNOTATION, _stamp(self.now))]
            if not self.validation_enabled:
                stamp = []
            replaced = f" (replaced {deleted})" if deleted and deleted != name else ""
            return self.move(
                node,
                VALIDATION_REQUIRED,
                f"driver pod {name} is Running and Ready{replaced}",
                before=stamp,
                clear=[DELETED_DRIVER_POD_ANNOTATION],
                event=False,
            )
        looping = crash_loop(pod)
        if looping is not None:
            container, restarts = looping
            return self.fail(node, f"driver pod crash-looping: {container} restarted {restarts} times")
        phase = (pod.get("status") or {}).get("phase") or "Pending"
        held = container_waiting(pod)
        phase += f"; {held}" if held else ""
        return _Step(waiting=f"waiting for driver pod {name} to be Running and Ready (phase {phase})", quiet=True)

    def validation(self, node: UpgradeNode) -> _Step:
        if not self.validation_enabled:
            return self.validated(node, "validation is disabled")
        validator = node.validator_pod
        if validator is not None and pod_is_ready(validator):
            return self.validated(node, f"validator pod {pod_name(validator)} is Ready")
        elapsed, actions = self.elapsed(node, VALIDATION_START_ANNOTATION)
        if elapsed > VALIDATION_TIMEOUT_S:
            return self.fail(
                node,
                f"validator pod not Ready within {VALIDATION_TIMEOUT_S}s",
                clear=[VALIDATION_START_ANNOTATION],
            )
        what = "validator pod on node to be Ready" if validator else "a validator pod to appear on the node"
        return _Step(actions, f"waiting for {what} ({int(elapsed)}s of {VALIDATION_TIMEOUT_S}s)", quiet=True)

    def validated(self, node: UpgradeNode, why: str) -> _Step:
        if node.initially_unschedulable:
            # Cordoned before the upgrade began: it stays cordoned, nothing to undo.
            return self.finish(node, why + "; node stays cordoned as it was before the upgrade")
        return self.move(node, UNCORDON_REQUIRED, why, clear=[VALIDATION_START_ANNOTATION], event=False)

    def finish(self, node: UpgradeNode, why: str, event: bool = True) -> _Step:
        before: list[Action] = []
        if node.unschedulable and not node.initially_unschedulable:
            before.append(Uncordon(node.name))
        clear = (*TRANSIENT_ANNOTATIONS, INITIAL_UNSCHEDULABLE_ANNOTATION)
        return self.move(node, DONE, why, before=before, clear=clear, event=event)

    def uncordon(self, node: UpgradeNode) -> _Step:
        # The happy path's end: the label and the uncordon say it (a recovery from upgrade-failed has its event).
        return self.finish(node, "node uncordoned" if node.unschedulable else "upgrade complete", event=False)

    def failed(self, node: UpgradeNode) -> _Step:
        # A request still pending means the driver was not restarted yet: that upgrade has not happened.
        if node.driver_in_sync_and_ready and not node.requested:
            return self.move(
                node, UNCORDON_REQUIRED, "driver pod is in sync and Ready again", clear=TRANSIENT_ANNOTATIONS
            )
        reason = node.annotations.get(FAILURE_REASON_ANNOTATION, "reason unknown")
        retry = f"fix the cause and relabel {STATE_LABEL}={REQUIRED} to retry"
        if node.requested:
            return _Step(
                waiting=f"upgrade failed: {reason}; the requested driver restart has not happened (annotation "
                f"{REQUESTED_ANNOTATION}): {retry}, or remove the annotation"
            )
        return _Step(
            waiting=f"upgrade failed: {reason}; recovers by itself once the driver pod is in sync and Ready, or {retry}"
        )


def plan(
    nodes: Sequence[UpgradeNode],
    pods: Sequence[WorkloadPod],
    policy: DriverUpgradePolicySpec,
    now: float,
    *,
    validation_enabled: bool = True,
    limit: Limit | None = None,
) -> Plan:
    """One pass of the upgrade state machine over all managed nodes (see the module docstring).

    `nodes`: every node a driver DaemonSet manages (a node that is gone is simply absent).
    `pods`: the pods on those nodes (all of them: DaemonSet and static pods are never evicted, but may match
    waitForCompletion.podSelector). `now`: epoch seconds.
    `validation_enabled`: False when no validator runs (validation-required then passes at once), as k8s-operator-libs
    without WithValidationEnabled; the operator always validates, as upstream.
    `limit`: cluster-wide limits beyond the policy's (several NVIDIADrivers upgrading), counting earlier starts.
    """
    nodes = sorted(nodes, key=_by_name)
    tally = _Tally.of(nodes)
    slots = Slots.of(tally, policy)
    counters = Counters(
        total=slots.total,
        in_progress=slots.in_progress,
        done=tally.done,
        failed=slots.failed,
        available=slots.available,
        pending=tally.pending,
        skipped=tally.skipped,
        unavailable=slots.unavailable,
        max_unavailable=slots.max_unavailable,
    )

    if not policy.auto_upgrade:
        return Plan([a for n in nodes for a in switched_off(n)], {}, counters)

    p = _Pass(policy, pods, now, validation_enabled)
    taken: dict[str, list[_Step]] = defaultdict(list)  # node -> the steps it takes in this pass
    observed = {n.name: n for n in nodes}
    candidates: list[UpgradeNode] = []  # upgrade-required, waiting for a slot (observed, or moved there now)

    def advance(node: UpgradeNode) -> None:
        while True:
            if settled(node):
                return  # this very node object had nothing to do last time (its step depends on it alone)
            step = p.step(node)
            if step == _NOTHING and node.state in (UNKNOWN, DONE):
                node.__dict__[_SETTLED] = True
            if step is None:
                candidates.append(node)
                return
            if step.actions or step.waiting is not None or step.move is not None:
                taken[node.name].append(step)
            if step.move is None or step.waiting is not None:
                return
            after = _after(node, step.actions)
            if not p.goes_on(step, observed[node.name], after):
                return
            node = after

    for node in nodes:
        if _SETTLED not in node.__dict__:  # settled(node), without a call for each of thousands of settled nodes
            note = _cordon_changed_while_waiting(node)
            if note is not None:
                taken[node.name].append(note)
                node = _after(node, note.actions)
            advance(node)

    # Named in a candidate's wait only: no candidate, no walk.
    unavailable_names = [n.name for n in nodes if n.counted_unavailable] if candidates else []
    started, slot_waits = select_starts(sorted(candidates, key=_by_name), slots, unavailable_names, limit)
    starting = set(started)
    for node in candidates:
        if node.name in starting:
            step = p.start(node, said=any(s.move is not None for s in taken[node.name]))
            taken[node.name].append(step)
            after = _after(node, step.actions)
            if p.goes_on(step, observed[node.name], after):
                advance(after)
        else:
            taken[node.name].append(_Step(waiting=slot_waits[node.name]))

    out: list[Action] = []
    waiting: dict[str, str] = {}
    quiet: set[str] = set()
    finished: dict[str, str] = {}
    for name in sorted(taken):  # the nodes' order (sorted by name), only those that took steps
        step = _conclude(name, taken[name])
        out += step.actions
        if step.finished is not None:
            finished[name] = step.finished
        if step.waiting is not None:
            waiting[name] = step.waiting
            if step.quiet:
                quiet.add(name)
    return Plan(out, waiting, counters, tuple(started), frozenset(quiet), finished)


# States in which the upgrade has cordoned the node (the cordon goes out in one patch with the state after it).
CORDONED_STATES = frozenset({
    WAIT_FOR_JOBS_REQUIRED, POD_DELETION_REQUIRED, DRAIN_REQUIRED, POD_RESTART_REQUIRED, VALIDATION_REQUIRED,
    UNCORDON_REQUIRED, FAILED,
})  # fmt: skip


def switched_off(node: UpgradeNode, why: str = "autoUpgrade switched off") -> list[Action]:
    """autoUpgrade off (or, `why` says, the ClusterPolicy's driver): the node's state label and the upgrade's
    bookkeeping go. Beyond upstream (which drops the label alone, leaving the nodes it cordoned cordoned for good):
    a node the upgrade cordoned is uncordoned, unless its upgrade failed. A failed node stays cordoned, its failure
    reason kept, and an event hands the cordon to the admin. A cordon that was there before the upgrade is never
    touched."""
    if STATE_LABEL not in node.labels:
        return []
    ours = _cordoned_by_upgrade(node)
    failed = kept_cordoned(node)
    keep = {FAILURE_REASON_ANNOTATION} if failed else set()
    clear = [k for k in (*TRANSIENT_ANNOTATIONS, INITIAL_UNSCHEDULABLE_ANNOTATION)
             if k in node.annotations and k not in keep]  # fmt: skip
    actions: list[Action] = [Uncordon(node.name)] if ours and not failed else []
    actions += [Annotate(node.name, k, None) for k in clear]
    actions.append(SetState(node.name, ""))
    state = node.labels[STATE_LABEL]
    if failed:
        reason = node.annotations.get(FAILURE_REASON_ANNOTATION, "reason unknown")
        message = (f"{why} in {state} ({reason}): node left cordoned for the admin; "
                   f"uncordon it once its driver works")  # fmt: skip
        actions.append(Event(node.name, "Warning", EVENT_REASON, message))
    elif ours:
        message = f"{why} in {state}: node uncordoned (the upgrade had cordoned it)"
        actions.append(Event(node.name, "Normal", EVENT_REASON, message))
    return actions


def _cordoned_by_upgrade(node: UpgradeNode) -> bool:
    return node.state in CORDONED_STATES and node.unschedulable and not node.initially_unschedulable


def kept_cordoned(node: UpgradeNode) -> bool:
    """switched_off leaves the node cordoned, for the admin: its upgrade failed after cordoning it (also one relabelled
    upgrade-required to retry that still waits for a slot: the failed attempt's cordon, see _cordon_not_ours)."""
    if node.state == REQUIRED:
        return node.unschedulable and not _cordon_not_ours(node)
    return node.state == FAILED and _cordoned_by_upgrade(node)


# The states a node leaves once a pod of its turns Ready: its new driver pod, then its validator.
FORWARD_STATES = frozenset({POD_RESTART_REQUIRED, VALIDATION_REQUIRED, UNCORDON_REQUIRED})
_FORWARD_ACTIONS = (SetState, Annotate, Uncordon)


def plan_forward(
    node: UpgradeNode, policy: DriverUpgradePolicySpec, now: float, *, validation_enabled: bool = True
) -> Plan | None:
    """The steps one node past its driver pod's deletion takes on its own, between passes (its new driver pod or
    its validator turned Ready): a plan of state, annotation and uncordon writes that moves it to a new state, or
    None. Anything else (a pod to delete, a failure, a wait) is left to the next pass, which sees every node."""
    if not policy.auto_upgrade or node.state not in FORWARD_STATES:
        return None
    result = plan([node], [], policy, now, validation_enabled=validation_enabled)
    moved = any(isinstance(a, SetState) for a in result.actions)
    if not moved or not all(isinstance(a, _FORWARD_ACTIONS) for a in result.actions):
        return None
    return result


# Set on an UpgradeNode (upgrade-done or unknown) whose step was to do nothing and say nothing: a step from those
# states depends on the node alone (not the time, the pods or the policy), so the same object is skipped. Kept on
# the object (the adapter gives the same one while its inputs stay the same), so a plan for other nodes (another
# NVIDIADriver's) leaves it.
_SETTLED = "_planner_settled"
_NOTHING = _Step()


def settled(node: UpgradeNode) -> bool:
    """Whether this node object had nothing to do in an earlier pass (and is skipped)."""
    return bool(node.__dict__.get(_SETTLED))


def _reason(node: UpgradeNode) -> str | None:
    """Why the node's driver needs an upgrade, or None."""
    pod = node.driver_pod
    if pod is None:
        return None
    if node.pool_move:
        return f"kernel is now {node.pool_move}: driver pod {pod_name(pod)} is of the old kernel's pool"
    if node.orphaned:  # also when the node moves to another NVIDIADriver: its pod is of no DaemonSet now
        return f"driver pod {pod_name(pod)} belongs to no DaemonSet any more (its DaemonSet was deleted, the pod kept)"
    if node.owner_move is not None:
        return f"driver pod {pod_name(pod)} is of the DaemonSet of the NVIDIADriver the node moves away from"
    if node.driver_out_of_date:
        revisions = f"runs revision {pod_revision(pod)}, its DaemonSet is at {node.driver_revision}"
        return f"driver pod {pod_name(pod)} {revisions}"
    if node.requested:
        return f"upgrade requested by annotation {REQUESTED_ANNOTATION}"
    return None


def _cordon_not_ours(node: UpgradeNode) -> bool:
    """Whether the node's cordon is someone else's: recorded so, or on an upgrade-required node, which the upgrade
    cordons only when it starts (unless a failed attempt, relabelled to retry, left it: that node still carries its
    failure reason). The planner records the second kind (`_cordon_changed_while_waiting`); the wave preview, which
    writes nothing, reads it the same way."""
    if node.initially_unschedulable:
        return True
    return node.state == REQUIRED and node.unschedulable and FAILURE_REASON_ANNOTATION not in node.annotations


def _cordon_changed_while_waiting(node: UpgradeNode) -> _Step | None:
    """An upgrade-required node whose cordon someone else changed while it waited for a slot, recorded as the
    upgrade's start would have, so the upgrade leaves that cordon in place; an uncordon there drops the record.
    None when nothing changed."""
    if node.state != REQUIRED or node.unschedulable == node.initially_unschedulable:
        return None
    if node.unschedulable:
        if not _cordon_not_ours(node):
            return None
        note = "node cordoned while it waited for an upgrade slot, not by the upgrade: it stays cordoned afterwards"
        return _Step([Annotate(node.name, INITIAL_UNSCHEDULABLE_ANNOTATION, "true")], note=note)
    return _Step([Annotate(node.name, INITIAL_UNSCHEDULABLE_ANNOTATION, None)])


def _nothing_left_to_do(node: UpgradeNode) -> bool:
    """An upgrade-required node whose driver is up to date again (the DaemonSet was rolled back) and that
    carries no cordon of ours to undo: it can go straight back to upgrade-done."""
    return (
        node.driver_in_sync_and_ready
        and not node.requested
        and (not node.unschedulable or _cordon_not_ours(node))
    )


def _needs_upgrade(node: UpgradeNode) -> bool:
    if node.state == REQUIRED:
        return not _nothing_left_to_do(node)
    if node.state in (UNKNOWN, DONE):
        pod = node.driver_pod
        return pod is not None and not pod_terminating(pod) and (node.driver_out_of_date or node.requested)
    return False


def _stays_unavailable(node: UpgradeNode) -> bool:
    """Unavailable even after its upgrade: NotReady, or cordoned by someone other than the upgrade."""
    if not node.ready:
        return True
    if not node.unschedulable:
        return False
    return node.state in (UNKNOWN, DONE) or _cordon_not_ours(node)


def preview_waves(nodes: Sequence[UpgradeNode], policy: DriverUpgradePolicySpec) -> list[list[str]]:
    """Predict the waves of the rollout under the policy's limits (beyond upstream).

    The first wave holds the upgrades in progress (upgrade-failed ones excepted: they keep their slot)
    and those that may start now; every later wave assumes the previous one finished (its nodes
    uncordoned unless cordoned before the upgrade). Skipped nodes, and nodes that can never get a slot
    (for instance while failed upgrades use every slot), appear in no wave. Ignores autoUpgrade.
    """
    return preview_joint_waves([(nodes, policy)])


@dataclass
class _Rollout:
    """One policy's part of a wave preview: its nodes and what is left of its rollout."""

    nodes: list[UpgradeNode]
    policy: DriverUpgradePolicySpec
    total: int
    failed: list[str]
    running: list[str]
    remaining: list[UpgradeNode]


def preview_joint_waves(
    parts: Sequence[tuple[Sequence[UpgradeNode], DriverUpgradePolicySpec]],
    outer: DriverUpgradePolicySpec | None = None,
) -> list[list[str]]:
    """preview_waves of several rollouts at once: each part's nodes under its own policy (each NVIDIADriver's, in
    the order the operator plans them), and every wave also within `outer`'s limits over all the parts' nodes (the
    ClusterPolicy's, the operator's Limit). While one part's autoUpgrade is on, a part whose autoUpgrade is off
    upgrades nothing (as in the operator); its nodes still count against `outer` as they are."""
    any_on = any(policy.auto_upgrade for _, policy in parts)
    rollouts: list[_Rollout] = []
    for unsorted, policy in parts:
        nodes = sorted(unsorted, key=_by_name)
        on = policy.auto_upgrade or not any_on
        rollouts.append(_Rollout(
            nodes, policy, _Tally.of(nodes).total,
            failed=[n.name for n in nodes if n.state == FAILED] if on else [],
            running=[n.name for n in nodes if n.state in IN_PROGRESS_STATES and n.state != FAILED] if on else [],
            remaining=[n for n in nodes if _needs_upgrade(n) and not n.skipped] if on else [],
        ))  # fmt: skip
    outer_max_unavailable = 0
    if outer is not None:
        outer_max_unavailable = max_unavailable_count(outer.max_unavailable, sum(r.total for r in rollouts))

    waves: list[list[str]] = []
    upgraded: set[str] = set()
    first = True
    while any(r.remaining or (first and r.running) for r in rollouts):
        slots: list[Slots] = []
        for r in rollouts:
            holders = r.failed + r.running if first else r.failed
            unavailable = {
                n.name
                for n in r.nodes
                if n.name in holders
                or (n.name in upgraded and _stays_unavailable(n))
                or (n.name not in upgraded and n.counted_unavailable)
            }
            slots.append(Slots(
                total=r.total,
                max_parallel=r.policy.max_parallel_upgrades,
                max_unavailable=max_unavailable_count(r.policy.max_unavailable, r.total),
                in_progress=len(holders),
                unavailable=len(unavailable),
                failed=len(r.failed),
                pending=len(r.remaining),
            ))  # fmt: skip
        limit = None
        if outer is not None:
            in_progress, unavailable_count = sum(s.in_progress for s in slots), sum(s.unavailable for s in slots)
            limit = Limit(outer.max_parallel_upgrades, outer_max_unavailable, in_progress, unavailable_count, "")
        wave: list[str] = []
        for r, part_slots in zip(rollouts, slots, strict=True):
            started, _ = select_starts(r.remaining, part_slots, limit=limit)
            starting = set(started)
            if limit is not None:
                made_unavailable = sum(1 for n in r.remaining if n.name in starting and not n.counted_unavailable)
                limit = limit.after(len(started), made_unavailable)
            wave += (r.running if first else []) + started
            r.remaining = [n for n in r.remaining if n.name not in starting]
        if not wave:
            break
        waves.append(wave)
        upgraded.update(wave)
        first = False
    return waves


# When a pass cannot carry out every node's actions in time, the nodes nearest the end of their upgrade go first
# (they give their slot back soonest), then the ones that start, then those that are only labelled.
_URGENCY = {
    state: rank
    for rank, state in enumerate((UNCORDON_REQUIRED, VALIDATION_REQUIRED, POD_RESTART_REQUIRED, DRAIN_REQUIRED,
                                  POD_DELETION_REQUIRED, WAIT_FOR_JOBS_REQUIRED, CORDON_REQUIRED, FAILED, REQUIRED))
}  # fmt: skip


def by_urgency(actions: Sequence[Action], states: Mapping[str, str]) -> list[list[Action]]:
    """`actions` grouped by node, each node's in their order, the nodes ordered by the state `states` observed them
    in (see _URGENCY; the plan's order among equals)."""
    by_node: dict[str, list[Action]] = {}
    for action in actions:
        by_node.setdefault(action.node, []).append(action)
    last = len(_URGENCY)
    return sorted(by_node.values(), key=lambda group: _URGENCY.get(states.get(group[0].node, UNKNOWN), last))
