"""The thin edge of driver-upgrade orchestration: observe the cluster for the planner, carry out its actions.

Everything it decides is in `planner.plan`; this module only projects watched objects into planner inputs,
reads the pods on nodes whose state needs them, and turns actions into API calls.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, Protocol
from urllib.parse import quote

from .. import compat
from ..api import ClusterPolicySpec, DriverUpgradePolicySpec
from ..kube import ApiError, Kube
from ..nodes import DRIVER_KERNEL, POOL_LABEL, ByNode, NodeFacts, driver_kernel_patch, gets_driver, label_value_ok
from ..nvidiadriver_api import OWNER_LABEL
from ..observe import Key, PodIndex, Snapshot, owner_key
from ..states.base import STATE_LABEL as OPERAND_STATE
from .model import (
    NEEDS_PODS,
    STATE_LABEL,
    Action,
    Annotate,
    Cordon,
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
    claim_holds_gpu,
    claim_names,
    pod_revision,
)
from .planner import by_urgency, reads_pods

log = logging.getLogger("gpu_operator.upgrade")

DRIVER = "state-driver"
VALIDATOR = "state-operator-validation"


def _pick(pods: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The pod that matters on a node: a live one over a terminating one."""
    if len(pods) == 1:
        return pods[0]
    live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
    return live[0] if live else (pods[0] if pods else None)


def managed_nodes(
    spec: ClusterPolicySpec, snap: Snapshot, kept: UpgradeKept | None = None, owner: tuple[str, str] | None = None
) -> list[UpgradeNode]:
    """The nodes whose driver the operator upgrades: none while the ClusterPolicy's driver is off.

    The operator's pass and `gpu-operator upgrade plan` both call this, so they give one answer. `kept`: what the
    pass kept of the last call (the same answer, worked out for the nodes that changed). `snap.owned`: our objects
    (the pass gives them as it leaves them), whose driver DaemonSets adopt the orphaned pods of their pools.
    `owner`: (the uid, the owner label: "" for the default) of the NVIDIADriver that drives `snap.nodes`: only its
    DaemonSets run there, on a node once it carries that label (render holds the label of a node whose driver pod
    another NVIDIADriver's DaemonSet runs: the upgrade moves it, see UpgradeNode.owner_move)."""
    driver_on = spec.driver.enabled and not spec.driver.use_nvidia_driver_crd
    nodes = snap.nodes.values() if driver_on else ()
    refused = compat.refused(compat.verdicts(nodes, spec, kept.verdicts if kept else None)) if driver_on else {}
    pools = adopting_pools(snap.owned, owner[0] if owner else None) if driver_on else frozenset()
    label = owner[1] if owner else None
    pre = driver_precompiled(spec)
    if kept is not None:
        return kept.inputs.over(nodes, snap.pod_index, snap.revisions, refused, pools, label, pre)
    return upgrade_nodes(nodes, snap.pods, snap.revisions, refused, index=snap.pod_index, pools=pools, label=label,
                         precompiled=pre)  # fmt: skip


def driver_precompiled(spec: ClusterPolicySpec) -> bool:
    """Whether the driver of `spec` (an NVIDIADriver's, as upgrade_nodes takes it) is precompiled."""
    return spec.driver.enabled and spec.driver.use_precompiled


def adopting_pools(owned: Mapping[Key, dict[str, Any]], owner: str | None = None) -> frozenset[str]:
    """The pools of our driver DaemonSets (not being deleted; with `owner`, only those the object of that uid owns).
    A driver pod no DaemonSet owns any more (its DaemonSet was deleted with propagationPolicy Orphan) is adopted by
    the DaemonSet of its pool, whose selector is the pool (and name too): one of these pools' is left to it; any
    other is an orphan the upgrade replaces. Adoption does not look at the node, so the DaemonSet must also run on
    the pod's node: under NVIDIADrivers, one of the NVIDIADriver that drives it (another one's deletes the pod)."""
    return frozenset(
        labels[POOL_LABEL]
        for key, obj in owned.items()
        if key[0] == "DaemonSet"
        and (labels := obj["metadata"].get("labels") or {}).get(OPERAND_STATE) == DRIVER
        and POOL_LABEL in labels
        and not obj["metadata"].get("deletionTimestamp")
        and (owner is None or any(r.get("uid") == owner for r in obj["metadata"].get("ownerReferences") or []))
    )


class UpgradeInputs:
    """upgrade_nodes, kept between passes: a pass makes planner nodes again only for the nodes whose object, driver
    or validator pods (the PodIndex's sequences, replaced on change) or refusal changed since the last (every
    node's when a driver DaemonSet's newest revision or the driver pools changed); the others keep their planner
    node, which the planner recognizes as settled. At 5,000 nodes the walk that checked each node's inputs was a
    sixth of a pass; identity scans of the nodes and of the two pod maps are ~1 ms. One reconciler's: not for
    concurrent use."""

    def __init__(self) -> None:
        self._forget()

    def _forget(self) -> None:
        self.nodes: dict[str, NodeFacts] = {}
        self.drivers: Mapping[str, Sequence[dict[str, Any]]] = {}
        self.validators: Mapping[str, Sequence[dict[str, Any]]] = {}
        self.refused: dict[str, str] = {}
        self.newest: dict[str, tuple[int, str | None]] = {}
        self.digests: dict[tuple[str, str], str] = {}
        self.pools: frozenset[str] = frozenset()
        self.label: str | None = None
        self.precompiled = False
        self.made: dict[str, UpgradeNode] = {}
        self.needs_pods: set[str] = set()  # nodes in a state whose step reads the node's pods (workload_pods)
        self.astray: set[str] = set()  # nodes with an upgrade state label but no planner node (orchestrate lets go)

    def over(
        self, nodes: Iterable[NodeFacts], index: PodIndex, revisions: Mapping[str, dict[str, Any]],
        refused: Mapping[str, str], pools: frozenset[str] = frozenset(), label: str | None = None,
        precompiled: bool = False,
    ) -> list[UpgradeNode]:  # fmt: skip
        """`pools`, `label`, `precompiled`: as upgrade_nodes takes them."""
        try:
            return self._over(nodes, index, revisions, refused, pools, label, precompiled)
        except BaseException:
            self._forget()  # half updated: the next call makes every node again
            raise

    def _over(
        self, nodes: Iterable[NodeFacts], index: PodIndex, revisions: Mapping[str, dict[str, Any]],
        refused: Mapping[str, str], pools: frozenset[str], label: str | None, precompiled: bool,
    ) -> list[UpgradeNode]:  # fmt: skip
        nodes = nodes if isinstance(nodes, list | tuple) else list(nodes)
        newest, digests = newest_revisions(revisions), revision_digests(revisions)
        drivers, validators = index.by_state.get(DRIVER) or {}, index.by_state.get(VALIDATOR) or {}
        seen, made = self.nodes, self.made
        if (newest, digests) != (self.newest, self.digests) or pools != self.pools or (label, precompiled) != (
            self.label, self.precompiled
        ):
            seen.clear()
            made.clear()
            self.needs_pods.clear()
            self.astray.clear()
        todo = set()
        for node in [n for n in nodes if seen.get(n.name) is not n]:
            seen[node.name] = node
            todo.add(node.name)
        if len(seen) != len(nodes):  # nodes went (each one here is in `seen` now)
            here = {n.name for n in nodes}
            for name in [k for k in seen if k not in here]:
                del seen[name]
                made.pop(name, None)
                self.needs_pods.discard(name)
                self.astray.discard(name)
        for now, before in ((drivers, self.drivers), (validators, self.validators)):
            todo.update([name for name, pods in now.items() if before.get(name) is not pods])
            todo.update(before.keys() - now.keys())
        if refused != self.refused:
            todo.update(n for n in refused.keys() | self.refused.keys() if refused.get(n) != self.refused.get(n))
        self.drivers, self.validators, self.refused, self.newest = drivers, validators, dict(refused), newest
        self.digests = digests
        self.pools, self.label, self.precompiled = pools, label, precompiled
        for name in todo:
            node = seen.get(name)
            if node is None or not gets_driver(node):
                made.pop(name, None)
                self.needs_pods.discard(name)
                if node is not None and STATE_LABEL in node.labels:
                    self.astray.add(name)
                else:
                    self.astray.discard(name)
                continue
            self.astray.discard(name)
            driver, validator, revision = _operand_pods(name, drivers, validators, newest)
            made[name] = one = _upgrade_node(node, driver, validator, revision, refused.get(name, ""), pools, label,
                                             precompiled, digests)  # fmt: skip
            if one.state in NEEDS_PODS:
                self.needs_pods.add(name)
            else:
                self.needs_pods.discard(name)
        return list(made.values())


@dataclass
class UpgradeKept:
    """What a reconciler keeps of its upgrade inputs between passes: one for the ClusterPolicy's driver, one for
    each NVIDIADriver (its spec is kept while unchanged: nvidiadriver.KeptRouting)."""

    verdicts: ByNode[compat.Verdict] = field(default_factory=compat.kept_verdicts)
    inputs: UpgradeInputs = field(default_factory=UpgradeInputs)


def upgrade_nodes(
    nodes: Iterable[NodeFacts],
    pods: Mapping[str, dict[str, Any]],
    revisions: Mapping[str, dict[str, Any]],
    refused: Mapping[str, str] | None = None,
    index: PodIndex | None = None,
    pools: Collection[str] = frozenset(),
    label: str | None = None,
    precompiled: bool = False,
) -> list[UpgradeNode]:
    """Planner inputs for every node a driver DaemonSet manages, from the watch-cache projections, made afresh
    (a pass keeps them with UpgradeInputs). `refused`: node -> why the policy's driver cannot run there (the planner
    skips it); `index`: of `pods`; `pools`: adopting_pools (a driver pod without an owner, of none of them, is an
    orphan); `label`: the owner label of the NVIDIADriver that drives the nodes ("": none; None: no NVIDIADriver),
    which a node without it moves to at pod restart; `precompiled`: that NVIDIADriver's driver is (the driver-kernel
    label the node takes with it)."""
    newest, digests = newest_revisions(revisions), revision_digests(revisions)
    by_state = (index or PodIndex.of(pods)).by_state
    drivers, validators = by_state.get(DRIVER) or {}, by_state.get(VALIDATOR) or {}
    refused = refused or {}
    out = []
    for node in nodes:
        if gets_driver(node):
            driver, validator, revision = _operand_pods(node.name, drivers, validators, newest)
            out.append(_upgrade_node(node, driver, validator, revision, refused.get(node.name, ""), pools, label,
                                     precompiled, digests))  # fmt: skip
    return out


def upgrade_node(
    node: NodeFacts,
    by_state: Mapping[str, Mapping[str, Sequence[dict[str, Any]]]],
    revisions: Mapping[str, dict[str, Any]],
    refused: str = "",
    pools: Collection[str] = frozenset(),
    label: str | None = None,
    precompiled: bool = False,
) -> UpgradeNode | None:
    """One node's planner input (None: no driver of ours goes there) outside a pass (nothing is kept for one);
    `by_state`: the operand pods as PodIndex.by_state has them; `pools`, `label`, `precompiled`: as upgrade_nodes
    takes them."""
    if not gets_driver(node):
        return None
    drivers, validators = by_state.get(DRIVER) or {}, by_state.get(VALIDATOR) or {}
    driver, validator, revision = _operand_pods(node.name, drivers, validators, newest_revisions(revisions))
    return _upgrade_node(node, driver, validator, revision, refused, pools, label, precompiled,
                         revision_digests(revisions))


def _operand_pods(
    node: str,
    drivers: Mapping[str, Sequence[dict[str, Any]]],
    validators: Mapping[str, Sequence[dict[str, Any]]],
    newest: Mapping[str, tuple[int, str | None]],
) -> tuple[dict[str, Any] | None, dict[str, Any] | None, str | None]:
    """The node's driver pod, its validator pod (from those pods by node), and the newest revision of the driver
    pod's DaemonSet."""
    driver = _pick(drivers.get(node, ()))
    validator = _pick(validators.get(node, ()))
    return driver, validator, newest.get(owner_key(driver), (0, None))[1] if driver else None


def newest_revisions(revisions: Mapping[str, dict[str, Any]]) -> dict[str, tuple[int, str | None]]:
    """Each DaemonSet's newest ControllerRevision: observe.owner_key -> (its number, its hash). By uid: those of a
    deleted DaemonSet of the same name (until the garbage collector deletes them) are not the new one's."""
    newest: dict[str, tuple[int, str | None]] = {}
    for rev in revisions.values():
        owner, number = owner_key(rev), int(rev.get("revision", 0))
        if owner and number >= newest.get(owner, (-1, None))[0]:
            newest[owner] = (number, rev["metadata"]["labels"].get("controller-revision-hash"))
    return newest


def revision_digests(revisions: Mapping[str, dict[str, Any]]) -> dict[tuple[str, str], str]:
    """(observe.owner_key, hash) -> the DRIVER_CONFIG_DIGEST of that revision's pod template, where it has one."""
    return {
        (owner_key(rev), str(rev["metadata"]["labels"].get("controller-revision-hash"))): rev["digest"]
        for rev in revisions.values()
        if rev.get("digest")
    }


def _restart_only(driver: dict[str, Any] | None, revision: str | None, digests: Mapping[tuple[str, str], str]) -> bool:
    """Upstream v26.7's restart-only predicate (DriverPodRestartOnly): the driver pod's revision and its DaemonSet's
    newest, another one, carry the same DRIVER_CONFIG_DIGEST (a missing one: no)."""
    if driver is None or revision is None or pod_revision(driver) in (None, revision):
        return False
    owner = owner_key(driver)
    running = digests.get((owner, str(pod_revision(driver))))
    return bool(running) and running == digests.get((owner, revision))


def _upgrade_node(
    node: NodeFacts, driver: dict[str, Any] | None, validator: dict[str, Any] | None, revision: str | None, why: str,
    pools: Collection[str], label: str | None = None, precompiled: bool = False,
    digests: Mapping[tuple[str, str], str] | None = None,
) -> UpgradeNode:
    move = label if driver is not None and label is not None and node.labels.get(OWNER_LABEL, "") != label else None
    kernel = driver_kernel_patch(node, precompiled, False) if move is not None else {}
    return UpgradeNode(
        name=node.name,
        labels=node.labels,  # shared, not copied: neither side changes them
        annotations=node.annotations,
        unschedulable=node.unschedulable,
        ready=node.ready,
        driver_pod=driver,
        driver_revision=revision,
        validator_pod=validator,
        refused=why,
        pool_move=_pool_move(node),
        orphaned=driver is not None and _orphaned(driver, pools),
        owner_move=move,
        owner_kernel=(kernel[DRIVER_KERNEL] or "") if kernel else None,
        restart_only=_restart_only(driver, revision, digests or {}),
    )


def _orphaned(pod: dict[str, Any], pools: Collection[str]) -> bool:
    """A driver pod with no DaemonSet owner that no DaemonSet of ours will adopt (see adopting_pools). One whose owner
    is gone but still named is not: the garbage collector deletes it, or takes the reference off (orphans it)."""
    return not pod["owner"] and pod["metadata"]["labels"].get(POOL_LABEL) not in pools


def _pool_move(node: NodeFacts) -> str:
    """The new kernel of a precompiled node still in its old kernel's pool, else ""."""
    held = node.labels.get(DRIVER_KERNEL)
    if held and node.kernel and held != node.kernel and label_value_ok(node.kernel):
        return node.kernel
    return ""


def workload_pods(
    kube: Kube, nodes: Iterable[UpgradeNode], policy: DriverUpgradePolicySpec, needs: Iterable[str] | None = None
) -> list[WorkloadPod]:
    """All pods on the nodes whose state needs them (reads only; nothing is cached), a few nodes at a time (a
    node the pass cordons is read once its cordon is answered: orchestrate._after_cordon); none when no step reads
    them (autoUpgrade off, or a policy without waitForCompletion.podSelector, podDeletion and drain). `needs`: those
    nodes' names, when the caller kept them."""
    if not (policy.auto_upgrade and reads_pods(policy)):
        return []
    names = sorted(needs) if needs is not None else [n.name for n in nodes if n.state in NEEDS_PODS]
    claims = GpuClaims(kube) if policy.pod_deletion is not None else None  # only pod deletion asks uses_gpu

    def on(name: str) -> list[WorkloadPod]:
        pods = kube.list("Pod", field_selector=f"spec.nodeName={name}")
        return [claims.project(p) if claims else WorkloadPod.from_pod(p) for p in pods]

    if len(names) <= 1:
        return [p for name in names for p in on(name)]
    with ThreadPoolExecutor(max_workers=WRITERS) as pool:
        return [p for pods in pool.map(on, names) for p in pods]


# resource.k8s.io versions whose ResourceClaims name the driver (and adminAccess) in status.allocation.devices.results,
# newest first: upstream reads v1; DRA was beta in Kubernetes 1.32 and 1.33.
CLAIM_VERSIONS = ("v1", "v1beta2", "v1beta1")


class GpuClaims:
    """Marks as GPU pods the pods that ask for no GPU resource but hold a ResourceClaim the NVIDIA GPU DRA driver
    allocated (upstream's gpuPodSpecFilter: PodHasNVIDIAGPUClaim); the MIG gate uses it too. Claims are read (one
    GET each) only for the Running and Pending pods on the nodes whose pods are read; a claim that cannot be read
    counts as a GPU claim, as upstream. A claim that is gone holds nothing; where no version of CLAIM_VERSIONS is
    served there are none."""

    def __init__(self, kube: Kube):
        self.kube = kube
        self._lock = threading.Lock()
        self._version: str | None = None
        self._found = False

    def project(self, raw: Mapping[str, Any]) -> WorkloadPod:
        pod = WorkloadPod.from_pod(raw)
        if pod.uses_gpu or pod.phase not in ("Running", "Pending"):
            return pod
        names = claim_names(raw)  # a DaemonSet's or static pod's too: one holding a GPU fails pod deletion
        return replace(pod, uses_gpu=True) if names and self._holds_gpu(pod, names) else pod

    def _holds_gpu(self, pod: WorkloadPod, names: Sequence[str]) -> bool:
        try:
            version = self._served()
            if version is None:
                return False
            for name in names:
                path = f"/apis/resource.k8s.io/{version}/namespaces/{quote(pod.namespace)}/resourceclaims/{quote(name)}"
                try:
                    claim = self.kube.request("GET", path)
                except ApiError as exc:
                    if exc.status == 404:
                        continue  # gone: nothing allocated
                    raise
                if claim_holds_gpu(claim or {}):
                    return True
            return False
        except ApiError as exc:
            log.warning("cannot read the ResourceClaims of pod %s (%s): counted as a GPU pod", pod.ref, exc)
            return True

    def _served(self) -> str | None:
        """The newest of CLAIM_VERSIONS the API server serves (asked once), or None."""
        with self._lock:
            if not self._found:
                try:
                    group = self.kube.request("GET", "/apis/resource.k8s.io") or {}
                except ApiError as exc:
                    if exc.status != 404:
                        raise
                    group = {}  # DRA is not served
                served = {v.get("version") for v in group.get("versions") or []}
                self._version = next((v for v in CLAIM_VERSIONS if v in served), None)
                self._found = True
            return self._version


def steady(message: str) -> str:
    """A waiting reason without its running clock, so status and events change only when the reason does."""
    message = re.sub(r"\b\d+s of (\d+s)", r"up to \1", message)
    return re.sub(r"\b\d+s, no timeout", "no timeout", message)


class EventFn(Protocol):
    """events.EventRecorder's call. `durable`: the Event says what a write that went through did (see there)."""

    def __call__(self, obj: dict[str, Any], etype: str, reason: str, message: str, *,
                 durable: bool = False) -> None: ...  # fmt: skip


WRITERS = 8  # threads for one pass's upgrade writes (and its reads of workload pods)
# A pass starts no further node's writes this long after its first: the rest wait for the next pass, which comes at
# once. At 2,000 nodes a pass that labelled every node and started a wave of 500 wrote for 56 s, and a node whose new
# driver turned Ready meanwhile waited for all of it (31 s after Ready before it was done).
WRITE_BUDGET_S = 2.0


@dataclass(frozen=True)
class Ran:
    """What a run did and did not write: nodes left for the next pass (out of its write budget), nodes dropped
    because they moved on since the plan, nodes patched (a patch of each went through, though a later action
    may have failed), and nodes planned again once their patch was answered (`then`): the state that plan's own
    patch wrote (that answer's when it wrote none), and that plan (its waits are the node's). `wrote`: the state
    label the last patch of each node that went through and set one wrote ("": removed)."""

    left: set[str] = field(default_factory=set)
    dropped: set[str] = field(default_factory=set)
    patched: set[str] = field(default_factory=set)
    later: dict[str, tuple[str, Plan]] = field(default_factory=dict)
    wrote: dict[str, str] = field(default_factory=dict)


class Executor:
    """Carries out a plan's actions, each node's in order, the nodes side by side; a node's remaining actions stop
    at its first failed write. `who` heads its log lines: the driver upgrade's, or the MIG gate's ("MIG"). `gone`:
    the nodes whose patch answered 404 (deleted since they were read)."""

    def __init__(self, kube: Kube, namespace: str, event: EventFn, who: str = "upgrade"):
        self.kube = kube
        self.namespace = namespace
        self.event = event
        self.who = who
        self.gone: set[str] = set()

    def run(
        self,
        plan: Plan,
        states: Mapping[str, str] | None = None,
        budget_s: float | None = None,
        moved: Callable[[str], bool] | None = None,
        then: Callable[[dict[str, Any]], Plan | None] | None = None,
    ) -> Ran:
        """With `budget_s`, the nodes not begun that long after the start (the first WRITERS always are) are left
        for the next pass, the nodes taken by urgency (`states`: each one's observed state, see
        planner.by_urgency). `moved(node)`: whether the node moved on since the plan saw it (its new pods moved it
        between passes); its actions are dropped, the next pass plans it again. `then(answer)`: a node's plan once
        all of its own actions went, from the node as its last patch answered (None: none), whose actions it
        carries out (within `budget_s` only: past it, the next pass plans the node)."""
        groups = by_urgency(plan.actions, states or {})
        deadline = None if budget_s is None else time.monotonic() + budget_s
        left: set[str] = set()
        dropped: set[str] = set()
        patched: set[str] = set()
        later: dict[str, tuple[str, Plan]] = {}
        wrote: dict[str, str] = {}

        def one(numbered: tuple[int, list[Action]]) -> None:
            i, actions = numbered
            if deadline is not None and i >= WRITERS and time.monotonic() > deadline:
                left.add(actions[0].node)
                return
            if moved is not None and moved(actions[0].node):
                log.info("%s: node %s moved on since this pass saw it; its next step waits for the next pass",
                         self.who, actions[0].node)
                dropped.add(actions[0].node)
                return
            answer = self.node(actions, patched, wrote=wrote)
            if then is not None and answer is not None and (deadline is None or time.monotonic() <= deadline):
                again = then(answer)
                if again is not None:
                    answered: list[dict[str, Any]] = []
                    if again.actions:
                        self.node(again.actions, patched, answered, wrote)
                    last = (answered or [answer])[0]  # the state that plan's own patch wrote, if one went through
                    later[actions[0].node] = ((last["metadata"].get("labels") or {}).get(STATE_LABEL, ""), again)

        # Each node's actions in order, the nodes side by side: a wave of 105 nodes cordoned, or their driver pods
        # deleted, one node after another took seconds, and a node whose new driver was Ready waited for them.
        with ThreadPoolExecutor(max_workers=WRITERS) as pool:
            list(pool.map(one, enumerate(groups)))
        return Ran(left, dropped, patched, later, wrote)

    def node(
        self,
        actions: list[Action],
        patched: set[str] | None = None,
        answer: list[dict[str, Any]] | None = None,
        wrote: dict[str, str] | None = None,
    ) -> dict[str, Any] | None:
        """One node's actions: consecutive label, annotation and cordon changes as one merge patch; the rest stop
        at the node's first failed write. The node as its last patch answered, if all went. `patched`: gets the
        node's name once a patch of it went through; `answer`: holds the node as its last patch answered, even when
        a later write failed; `wrote`: the state label each patch that went through wrote ("": removed)."""
        patch: dict[str, Any] = {}
        answer = [] if answer is None else answer

        def flush() -> bool:
            if not patch:
                return True
            body = dict(patch)
            patch.clear()
            try:
                answer[:] = [self.kube.merge_patch("Node", actions[0].node, body)]
                if patched is not None:
                    patched.add(actions[0].node)
                labels = body.get("metadata", {}).get("labels", {})
                if wrote is not None and STATE_LABEL in labels:
                    wrote[actions[0].node] = labels[STATE_LABEL] or ""
                return True
            except ApiError as exc:
                if exc.status == 404:
                    log.info("%s: node %s is gone", self.who, actions[0].node)
                    self.gone.add(actions[0].node)
                else:
                    log.warning("%s: patching node %s failed: %s", self.who, actions[0].node, exc)
                return False

        for action in actions:
            if _merge(patch, action):
                continue
            if not flush():
                return None
            try:
                self._act(action, bool(answer))
            except ApiError as exc:
                log.warning("%s: %s on %s failed: %s", self.who, type(action).__name__, action.node, exc)
                return None
        return answer[0] if flush() and answer else None

    def _act(self, action: Action, wrote: bool = False) -> None:
        """`wrote`: the node's patch before it went through (an Event then says what it did: durable)."""
        if isinstance(action, EvictPods):
            # Each pod on its own, as kubectl drain's helper: one refused eviction (a webhook's 403, a 500 for a
            # pod under two budgets) does not keep the others; the first such error is raised after them all.
            failed: ApiError | None = None
            for ns, name in action.pods:
                try:
                    self.kube.evict(name, ns)
                except ApiError as exc:
                    if exc.status == 429:  # a PodDisruptionBudget blocks it now; the planner sees it stay
                        log.info("%s: eviction of %s/%s blocked: %s", self.who, ns, name, exc.message)
                    elif exc.status != 404:
                        log.warning("%s: eviction of %s/%s failed: %s", self.who, ns, name, exc)
                        failed = failed or exc
            if failed is not None:
                raise failed
        elif isinstance(action, DeleteDriverPod):
            self.kube.delete("Pod", action.pod_name, self.namespace)
        elif isinstance(action, Event):
            node_ref = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": action.node, "uid": None}}
            self.event(node_ref, action.type, action.reason, action.message, durable=wrote)


def _merge(patch: dict[str, Any], action: Action) -> bool:
    """Fold a node-object action into a pending merge patch; False for actions that are not node patches."""
    meta = patch.setdefault("metadata", {})
    if isinstance(action, SetState):
        meta.setdefault("labels", {})[STATE_LABEL] = action.state or None
    elif isinstance(action, Annotate):
        meta.setdefault("annotations", {})[action.key] = action.value
    elif isinstance(action, Cordon):
        patch.setdefault("spec", {})["unschedulable"] = True
    elif isinstance(action, Uncordon):
        patch.setdefault("spec", {})["unschedulable"] = None
    elif isinstance(action, MovePool):
        meta.setdefault("labels", {})[DRIVER_KERNEL] = action.kernel
    elif isinstance(action, MoveOwner):
        meta.setdefault("labels", {})[OWNER_LABEL] = action.owner or None
        if action.kernel is not None:
            meta["labels"][DRIVER_KERNEL] = action.kernel or None
    else:
        if not meta:
            del patch["metadata"]
        return False
    return True
