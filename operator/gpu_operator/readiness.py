"""DaemonSet readiness (pure), following upstream's rules for RollingUpdate and OnDelete DaemonSets.

Beyond upstream: a DaemonSet whose own pods are all ready at its newest revision, one on each node it is
scheduled to, is ready without waiting for the controller to count them (`_pods_say_ready`). And a DaemonSet is
not ready while the controller counts fewer nodes than the operator's own view says should run its pod
(`daemon_node_count`): the operator creates its DaemonSets before it labels the nodes, and a controller that
has not yet seen the labels reports 0 of 0 pods, which by the counts alone is ready. And a pod not ready holds
its DaemonSet not ready whatever the counts say: the controller leaves a node gone NotReady out of them."""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from typing import Any

from .nodes import NodeFacts, Taint, kept_label
from .selectors import term_matches, tolerates

REVISION_HASH = "controller-revision-hash"

# The DaemonSet controller gives every daemon pod these tolerations (key, effect) and counts the nodes its pods
# should run on with them: a cordoned, NotReady or pressured node still counts.
_DAEMON_TOLERATED = frozenset({
    ("node.kubernetes.io/not-ready", "NoExecute"),
    ("node.kubernetes.io/unreachable", "NoExecute"),
    ("node.kubernetes.io/disk-pressure", "NoSchedule"),
    ("node.kubernetes.io/memory-pressure", "NoSchedule"),
    ("node.kubernetes.io/pid-pressure", "NoSchedule"),
    ("node.kubernetes.io/unschedulable", "NoSchedule"),
})  # fmt: skip
_HOST_NETWORK_TOLERATED = ("node.kubernetes.io/network-unavailable", "NoSchedule")


Placement = tuple[list[tuple[str, Any]], list[dict[str, Any]] | None, list[dict[str, Any]], frozenset[tuple[str, str]]]


def placement(template_spec: dict[str, Any]) -> Placement | None:
    """What decides the nodes of a pod template (nodeSelector, required node affinity terms, tolerations, and the
    taints every daemon pod tolerates); None when the selector names a label the node projection does not keep."""
    selector = list((template_spec.get("nodeSelector") or {}).items())
    if any(not kept_label(k) for k, _ in selector):
        return None
    affinity = ((template_spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    )
    terms = None if affinity is None else affinity.get("nodeSelectorTerms") or []
    tolerations = template_spec.get("tolerations") or []
    tolerated = _DAEMON_TOLERATED | ({_HOST_NETWORK_TOLERATED} if template_spec.get("hostNetwork") else set())
    return selector, terms, tolerations, tolerated


def should_run(where: Placement, node: NodeFacts) -> bool:
    """Whether the DaemonSet controller should run a pod placed so on the node (NodeShouldRunDaemonPod)."""
    selector, terms, tolerations, tolerated = where
    labels = node.labels
    if any(labels.get(k) != v for k, v in selector):
        return False
    if terms is not None and not any(_term_matches(t, node) for t in terms):
        return False
    return not (node.taints and any(_untolerated(t, tolerated, tolerations) for t in node.taints))


def daemon_node_count(template_spec: dict[str, Any], nodes: Collection[NodeFacts]) -> int:
    """On how many of `nodes` the DaemonSet controller should run a pod of this template: its nodeSelector,
    required node affinity and the node's taints against its tolerations (the controller's
    NodeShouldRunDaemonPod). A selector on a label the node projection does not keep matches nothing, so the
    count errs low, never high."""
    where = placement(template_spec)
    return 0 if where is None else sum(1 for node in nodes if should_run(where, node))


class NodeCounter:
    """daemon_node_count for each pass's DaemonSets, kept up to date node by node: a pass asks it of every
    DaemonSet over every node (27 counts of 5,000 nodes were ~a third of a settled pass's CPU). Only the nodes
    whose facts changed since the last pass are looked at again (NodeFacts are the watch cache's own objects,
    replaced only when the node changes)."""

    KEEP = 32  # placements counted (a policy has about a dozen DaemonSets; the least recently asked go first)

    def __init__(self) -> None:
        self._nodes: dict[str, NodeFacts] = {}  # the nodes the counts are of
        self._counts: dict[str, tuple[Placement, int]] = {}  # placement's key -> (placement, count)
        # running_any's: (the placements' key, the placements, which nodes count, how many should run one)
        self._any: tuple[str, list[Placement], Callable[[NodeFacts], bool], int] | None = None

    def over(self, nodes: Mapping[str, NodeFacts]) -> Callable[[dict[str, Any]], int]:
        """A pass's counter: the counts brought up to `nodes` (name -> facts), then template spec -> count."""
        held = self._nodes
        gone = [n for name, n in held.items() if nodes.get(name) is not n]
        came = [n for name, n in nodes.items() if held.get(name) is not n]
        if gone or came:
            for key, (where, count) in self._counts.items():
                count += sum(should_run(where, n) for n in came) - sum(should_run(where, n) for n in gone)
                self._counts[key] = (where, count)
            if self._any is not None:
                key, wheres, admit, count = self._any
                count += sum(_runs_any(wheres, admit, n) for n in came) - sum(_runs_any(wheres, admit, n) for n in gone)
                self._any = (key, wheres, admit, count)
            self._nodes = dict(nodes)
        return self._count

    def running_any(self, template_specs: Iterable[dict[str, Any]], admit: Callable[[NodeFacts], bool]) -> int:
        """On how many of the last `over`'s nodes that `admit` takes the controller should run a pod of at least one
        of the templates (a selector on a label not kept matches none), kept as the counts are: worked out over
        every node again only when the templates or `admit` change."""
        wheres = [w for w in map(placement, template_specs) if w is not None]
        key = json.dumps([[w[:3], sorted(w[3])] for w in wheres], sort_keys=True, default=str)
        if self._any is None or self._any[0] != key or self._any[2] is not admit:
            self._any = (key, wheres, admit, sum(_runs_any(wheres, admit, n) for n in self._nodes.values()))
        return self._any[3]

    def _count(self, template_spec: dict[str, Any]) -> int:
        where = placement(template_spec)
        if where is None:
            return 0
        key = json.dumps(where[:3], sort_keys=True, default=str) + json.dumps(sorted(where[3]))
        hit = self._counts.pop(key, None)
        count = hit[1] if hit is not None else sum(should_run(where, n) for n in self._nodes.values())
        self._counts[key] = (where, count)  # the most recently asked last
        if len(self._counts) > self.KEEP:
            del self._counts[next(iter(self._counts))]
        return count


def _runs_any(wheres: list[Placement], admit: Callable[[NodeFacts], bool], node: NodeFacts) -> bool:
    return admit(node) and any(should_run(w, node) for w in wheres)


def _term_matches(term: dict[str, Any], node: NodeFacts) -> bool:
    """A node selector term, on the labels NodeFacts keeps (one on a dropped label matches no node)."""
    if not all(kept_label(e.get("key") or "") for e in term.get("matchExpressions") or []):
        return False
    return term_matches(term, node.labels, node.name)


def _untolerated(taint: Taint, tolerated: AbstractSet[tuple[str, str]], tolerations: list[dict[str, Any]]) -> bool:
    key, value, effect = taint
    if (key, effect) in tolerated:
        return False
    as_dict = {"key": key, "value": value, "effect": effect}
    return not any(tolerates(x, as_dict) for x in tolerations)


def newest_revision_hash(revisions: list[dict[str, Any]]) -> str | None:
    """The `controller-revision-hash` label of the highest-numbered ControllerRevision."""
    if not revisions:
        return None
    newest = max(revisions, key=lambda r: int(r.get("revision", 0)))
    return (newest.get("metadata", {}).get("labels") or {}).get(REVISION_HASH)


def containers_ready(pod: Mapping[str, Any]) -> bool:
    """Running, and every container ready (k8s-operator-libs' rule for a driver or validator pod)."""
    status = pod.get("status") or {}
    if status.get("phase") != "Running":
        return False
    containers = status.get("containerStatuses") or []
    return bool(containers) and all(c.get("ready") for c in containers)


def pod_ready(pod: dict[str, Any]) -> bool:
    """containers_ready, and the pod's Ready condition True where it has one: on a node gone NotReady the node
    lifecycle controller sets only that condition False, and the DaemonSet controller counts the pod unavailable."""
    ready = pod.get("ready")
    if ready is not None:  # a projection (observe.project_pod) carries the answer
        return bool(ready)
    conditions = (pod.get("status") or {}).get("conditions") or []
    return containers_ready(pod) and all(c.get("status") == "True" for c in conditions if c.get("type") == "Ready")


def is_unready(pod: dict[str, Any]) -> bool:
    """Whether a pod holds its DaemonSet's rollout open: not ready, and not being deleted."""
    return not pod_ready(pod) and not pod["metadata"].get("deletionTimestamp")


# The kubelet alternates these with the back-off on each retry of a pull or a start: named as one, so a message does
# not change with every retry.
_SAME_REASON = {
    "ErrImagePull": "ImagePullBackOff",
    "RunContainerError": "CrashLoopBackOff",
    "PostStartHookError": "CrashLoopBackOff",
}
_REASON_CHARS = 64  # a waiting reason is the kubelet's CamelCase word; any longer one is cut
# Last runs that ended in no crash: "Unknown" is the kubelet's reason for a container lost to a node reboot.
_NOT_A_CRASH = frozenset({"Unknown", "Completed"})


def _last_run_failed(c: Mapping[str, Any]) -> bool:
    """Whether a container's last run (observe._container_status's `lastTerminated`) ended in a crash."""
    reason, code = c.get("lastTerminated") or ("", 0)
    return isinstance(code, int) and code != 0 and reason not in _NOT_A_CRASH


def waiting_reason(pod: Mapping[str, Any]) -> str:
    """Why the pod's first waiting container waits (init containers first): CrashLoopBackOff, ImagePullBackOff, ...;
    "" when none waits. A container not ready that runs again after its last run crashed counts as CrashLoopBackOff:
    it runs between the back-offs of its crash loop (one restarted by a node reboot does not)."""
    status = pod.get("status") or {}
    for c in (*(status.get("initContainerStatuses") or ()), *(status.get("containerStatuses") or ())):
        reason = str(((c.get("state") or {}).get("waiting") or {}).get("reason") or "")
        restarts = c.get("restartCount")
        if not reason and not c.get("ready") and isinstance(restarts, int) and restarts > 0 and _last_run_failed(c):
            reason = "CrashLoopBackOff"
        if reason:
            reason = _SAME_REASON.get(reason, reason)
            return reason if len(reason) <= _REASON_CHARS else reason[: _REASON_CHARS - 3] + "..."
    return ""


def _where(
    unready: Sequence[dict[str, Any]] | None,
    status: dict[str, Any],
    pods: Sequence[dict[str, Any]] | None,
    most: int = 5,
) -> str:
    """ " (2 not created yet; 1 not scheduled yet; CrashLoopBackOff on a; not ready on b and 3 more)": how many of
    the desired pods do not exist (by the controller's count and by the pods given, whichever counts more: either
    can lag; no scan of the pods; the pods only while the controller counts none on a node it no longer wants, which
    are not of the desired ones), how many unready pods are on no node yet, and the nodes of the other unready pod
    projections, the first `most` by name grouped by why their pods wait (waiting_reason; sorted) and the rest
    counted; "" when none is known."""
    parts = []
    desired, created = status.get("desiredNumberScheduled", 0), status.get("currentNumberScheduled")
    if pods is not None and not status.get("numberMisscheduled"):
        created = max(created if isinstance(created, int) else 0, len(pods))
    if isinstance(desired, int) and isinstance(created, int) and desired > created:
        parts.append(f"{desired - created} not created yet")
    unbound = sum(1 for p in unready or () if not p.get("node"))
    if unbound:
        parts.append(f"{unbound} not scheduled yet")
    nodes = sorted({p["node"] for p in unready or () if p.get("node")})
    if nodes:
        reasons: dict[str, set[str]] = {node: set() for node in nodes[:most]}  # why the named nodes' pods wait
        for p in unready or ():
            if p.get("node") in reasons:
                reasons[p["node"]].add(waiting_reason(p))
        by_reason: dict[str, list[str]] = {}
        for node, said in reasons.items():  # a node's first reason by name; "" when none of its pods waits
            by_reason.setdefault(min(said - {""}, default=""), []).append(node)
        parts += [f"{reason} on {', '.join(named)}" for reason, named in sorted(by_reason.items()) if reason]
        more = len(nodes) - most
        if "" in by_reason:
            parts.append(f"not ready on {', '.join(by_reason[''])}" + (f" and {more} more" if more > 0 else ""))
        elif more > 0:
            parts.append(f"{more} more not ready")
    return f" ({'; '.join(parts)})" if parts else ""


def _pods_say_ready(
    ds: dict[str, Any],
    status: dict[str, Any],
    desired: int,
    pods: Sequence[dict[str, Any]] | None,
    revisions: list[dict[str, Any]] | None,
) -> bool:
    """Whether the DaemonSet's own pods already say what its counts will: one pod on each of the `desired`
    nodes, each bound, ready, not deleting, at the newest revision.

    The controller counts a pod's readiness after the pod's status, up to seconds later on a busy control plane
    (1,000 nodes rolling out). The counts must still say every pod is of the current spec (`updated`), and the
    newest revision must be known, so a revision the operator has not seen yet cannot pass old pods as current.
    With `minReadySeconds` a pod is available only some time after it is ready: the counts decide."""
    if not pods or len(pods) != desired or status.get("updatedNumberScheduled", 0) != desired:
        return False
    if (ds.get("spec") or {}).get("minReadySeconds"):
        return False
    newest = newest_revision_hash(revisions or [])
    if newest is None:
        return False
    nodes = set()
    for p in pods:
        meta = p["metadata"]
        if not pod_ready(p) or meta.get("deletionTimestamp") or (meta.get("labels") or {}).get(REVISION_HASH) != newest:
            return False
        nodes.add(p.get("node"))
    return len(nodes) == desired and "" not in nodes and None not in nodes


def daemonset_ready(
    ds: dict[str, Any],
    pods: Sequence[dict[str, Any]] | None = None,
    revisions: list[dict[str, Any]] | None = None,
    unready: Sequence[dict[str, Any]] | None = None,
    nodes: Collection[NodeFacts] | None = None,
    count: Callable[[dict[str, Any]], int] | None = None,
) -> tuple[bool, str]:
    """(ready, reason when not). `pods` and `revisions` are the DaemonSet's own, needed for OnDelete; `unready`
    those of its pods that are not ready and not being deleted (`is_unready`: any holds it not ready), worked out
    from `pods` when not given (the runtime keeps them as pods change: a pass need not scan every pod of a
    rollout); `nodes` the cluster's, to tell counts the controller has not brought up to date with the nodes'
    labels (or `count`, a NodeCounter's over them)."""
    return _counted_nodes(ds, *_ready(ds, pods, revisions, unready), nodes, count)


def _counted_nodes(
    ds: dict[str, Any], ok: bool, why: str, nodes: Collection[NodeFacts] | None,
    count: Callable[[dict[str, Any]], int] | None,
) -> tuple[bool, str]:  # fmt: skip
    """(ok, why) of the pods, held against how many nodes should run the pod (daemonset_ready)."""
    if not ok or (nodes is None and count is None):
        return ok, why
    desired = (ds.get("status") or {}).get("desiredNumberScheduled", 0)
    spec = ((ds.get("spec") or {}).get("template") or {}).get("spec") or {}
    expected = count(spec) if count is not None else daemon_node_count(spec, nodes or ())
    if expected > desired:
        name = ds.get("metadata", {}).get("name", "?")
        nodes_should = f"{expected} node should" if expected == 1 else f"{expected} nodes should"
        return False, f"{name}: {nodes_should} run its pod, the DaemonSet controller counts {desired} so far"
    return True, ""


class KeptReadiness:
    """daemonset_ready, each DaemonSet's pod walk kept between calls: worked out again only when the DaemonSet
    object, its pods or its unready pods (sequences the watch cache replaces when one of them changes) or its
    revisions are not the last call's. An OnDelete DaemonSet's rule walks every one of its pods: at 5,000 nodes
    the driver's is 5,000 pods a pass, twice under NVIDIADrivers (the ClusterPolicy's state and each
    NVIDIADriver's status ask). One reconciler's: not for concurrent use."""

    KEEP = 256  # DaemonSets remembered (a policy has about a dozen; NVIDIADrivers add theirs)

    def __init__(self) -> None:
        self._last: dict[str, tuple[Any, Any, Any, list[dict[str, Any]], tuple[bool, str]]] = {}

    def daemonset_ready(
        self,
        ds: dict[str, Any],
        pods: Sequence[dict[str, Any]],
        revisions: list[dict[str, Any]],
        unready: Sequence[dict[str, Any]],
        count: Callable[[dict[str, Any]], int],
    ) -> tuple[bool, str]:
        name = ds.get("metadata", {}).get("name", "?")
        hit = self._last.get(name)
        if (
            hit is not None and hit[0] is ds and hit[1] is pods and hit[2] is unready
            and len(hit[3]) == len(revisions) and all(a is b for a, b in zip(hit[3], revisions, strict=True))
        ):  # fmt: skip
            ok, why = hit[4]
        else:
            ok, why = _ready(ds, pods, revisions, unready)
            if name not in self._last and len(self._last) >= self.KEEP:
                self._last.clear()
            self._last[name] = (ds, pods, unready, revisions, (ok, why))
        return _counted_nodes(ds, ok, why, None, count)


def _ready(
    ds: dict[str, Any],
    pods: Sequence[dict[str, Any]] | None,
    revisions: list[dict[str, Any]] | None,
    unready: Sequence[dict[str, Any]] | None,
) -> tuple[bool, str]:
    name = ds.get("metadata", {}).get("name", "?")
    # The controller stops writing the status of a DaemonSet being deleted (syncDaemonSet): its counts are frozen.
    if ds.get("metadata", {}).get("deletionTimestamp"):
        return False, f"{name}: being deleted; recreated once it is gone"
    status = ds.get("status") or {}
    # A new or changed DaemonSet whose status the controller has not written yet says nothing: not ready.
    if status.get("observedGeneration", 0) < ds.get("metadata", {}).get("generation", 0):
        return False, f"{name}: waiting for the DaemonSet controller to observe the latest spec"
    desired = status.get("desiredNumberScheduled", 0)
    unavailable = status.get("numberUnavailable", 0) if desired else 0
    name_nodes = True  # whether `why` is of pods not ready or unavailable: the message names their nodes
    if desired == 0:
        why = ""
    elif unavailable:
        why = f"{unavailable} of {desired} pods unavailable"
    else:
        why, name_nodes = _counted(ds, status, desired, pods, revisions)
    if unready is None:
        unready = [p for p in pods or () if is_unready(p)]
    if not why and unready:
        # Counts that say ready, a pod that is not: the counts lag, or the pod's node left them (a node gone NotReady
        # is tainted NoSchedule, and the controller counts its pod misscheduled). Only the unready pods: no scan.
        why, name_nodes = f"{len(unready)} of {max(desired, len(pods or ()), len(unready))} pods not ready", True
    if not why:
        return True, ""
    if not unready and _pods_say_ready(ds, status, desired, pods, revisions):
        return True, ""
    where = _where(unready, status, pods) if name_nodes else ""
    return False, f"{name}: {why}{where}"


def _counted(
    ds: dict[str, Any],
    status: dict[str, Any],
    desired: int,
    pods: Sequence[dict[str, Any]] | None,
    revisions: list[dict[str, Any]] | None,
) -> tuple[str, bool]:
    """Upstream's rule by the controller's counts, once none is unavailable (for OnDelete, the pods' revisions,
    then the count of pods updated, as upstream's NVIDIADriver rule): (why the DaemonSet is not ready, or "" when
    it is; whether that is of pods not ready, whose nodes the message names)."""
    strategy = ((ds.get("spec") or {}).get("updateStrategy") or {}).get("type", "RollingUpdate")
    if strategy == "OnDelete":
        newest = newest_revision_hash(revisions or [])
        pods = pods or []
        if len(pods) < desired:
            return f"{len(pods)} of {desired} pods exist", False
        stale = [p for p in pods if (p["metadata"].get("labels") or {}).get(REVISION_HASH) != newest]
        if newest is None or stale:
            old = len(stale) if newest else len(pods)
            return (f"{old} pod runs an old revision" if old == 1 else f"{old} pods run an old revision"), False
        # A pod being deleted holds nothing (is_unready): on a dead node it stays Terminating for good.
        live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
        not_ready = sum(1 for p in live if not pod_ready(p))
        if not_ready:
            return f"{not_ready} of {len(live)} pods not ready", True
        # The controller's own count of pods at the current template: the revision watch may not have brought the
        # newest revision yet, and then old pods pass for current.
        updated = status.get("updatedNumberScheduled", 0)
        if updated < desired:
            return f"the DaemonSet controller counts {updated} of {desired} pods updated", False
        return "", False
    updated = status.get("updatedNumberScheduled", 0)
    available = status.get("numberAvailable", 0)
    if not updated == desired == available:
        return f"{updated} updated, {available} available of {desired}", False
    return "", False
