"""What doctor reads, and no more: the lists run concurrently, and the operand pods (most of a GPU cluster's
pods) are read only where their DaemonSet's status says something is wrong.

Always read: nodes, the operator's snapshot (policies, owned objects with the DaemonSets' status, revisions,
ConfigMaps), every pod outside the operator's namespace, the pods of that namespace that are not operands, the
operand pods that are not Running, the Warning events about pods and the controllers' FailedCreate events (the API
server refused a pod they create). Read only when needed: the pods of each DaemonSet that is not settled (some pod
not ready, not updated or misplaced); every operand pod while a node is in a driver upgrade (the upgrade planner
needs them); the driver DaemonSets' pods when a GPU node lacks GFD's driver labels (doctor then reads the driver
version from the pod's image); a refused ReplicaSet and the others of its Deployment that created pods since (one
get each: only a newer revision's pods get past the refusal, not the old one's replacements); each other refused
controller with no pods created since (one get each: its FailedCreate event outlives it). A settled DaemonSet's
pods are not read: its pod template stands in for them on each node it runs on, for the nodes' resource arithmetic.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..kube import ApiError, Kube
from ..observe import OWNED_SELECTOR, observe, pod_projection
from ..states.base import COMPONENT, MANAGED_BY, OPERATOR_NAME
from .common import SETTLED_UPGRADE, UPGRADE_STATE, has_driver_labels
from .model import Cluster, DaemonPods
from .sched import DAEMON_TOLERATIONS, NodeView, selector_ok, untolerated_taints
from .workloads import deployment_of, owner_reads, replica_set_reads

WORKERS = 8
# More unsettled DaemonSets than this: one listing of every operand pod instead of one per DaemonSet.
MOST_DAEMONSET_READS = 3


def gather(kube: Kube, namespace: str) -> Cluster:
    """Everything doctor looks at, each list at most once."""
    with ThreadPoolExecutor(WORKERS) as pool:
        nodes_read = pool.submit(kube.list, "Node")
        elsewhere = pool.submit(kube.list, "Pod", field_selector=f"metadata.namespace!={namespace}")
        others_here = pool.submit(kube.list, "Pod", namespace, f"{MANAGED_BY}!={OPERATOR_NAME}")
        not_running = pool.submit(kube.list, "Pod", namespace, OWNED_SELECTOR, "status.phase!=Running")
        # Only Warning events say why something fails (FailedScheduling, FailedCreatePodSandBox, ...), and
        # doctor reads only those about pods, and the controllers' FailedCreate (the API server refused the pod).
        events = pool.submit(kube.list, "Event", field_selector="type=Warning,involvedObject.kind=Pod")
        refused = pool.submit(kube.list, "Event", field_selector="type=Warning,reason=FailedCreate")
        snap = observe(kube, namespace, nodes=nodes_read, pods=[], pool=pool)
        nodes = nodes_read.result()
        operand = {p["metadata"]["name"]: p for p in not_running.result()}
        selectors, stand_ins = _operand_reads(snap.owned, nodes, snap.nodes, list(operand.values()))
        for found in [pool.submit(kube.list, "Pod", namespace, s) for s in selectors]:
            operand.update((p["metadata"]["name"], p) for p in found.result())
        pods = elsewhere.result() + others_here.result() + list(operand.values())
        snap.pods = {name: pod_projection(p) for name, p in operand.items()}
        warnings = events.result() + refused.result()
        wanted = replica_set_reads(warnings, pods)
        replica_sets = _replica_sets(kube, pool, wanted) if wanted else {}
        gone = _gone(kube, pool, owner_reads(warnings, pods))
        return Cluster(snap, nodes, pods, warnings, namespace, daemon_pods=stand_ins, replica_sets=replica_sets,
                       gone=gone)  # fmt: skip


def _gone(kube: Kube, pool: ThreadPoolExecutor, keys: list[tuple[str, str, str]]) -> frozenset[tuple[str, str, str]]:
    """Of the refused controllers `keys`, those that no longer exist (one get each); not known where doctor may not
    read them (403): then kept."""
    reads = [(key, pool.submit(kube.get, key[0], key[2], key[1])) for key in keys]
    out = set()
    for key, found in reads:
        try:
            if found.result() is None:
                out.add(key)
        except ApiError as exc:
            if exc.status != 403:
                raise
    return frozenset(out)


def _replica_sets(
    kube: Kube, pool: ThreadPoolExecutor, wanted: dict[tuple[str, str], set[str]]
) -> dict[tuple[str, str], dict[str, Any]] | None:
    """The refused ReplicaSets in `wanted` and, of each one a Deployment controls, the others named there (one get
    each); None when doctor may not read ReplicaSets (403)."""

    def get(keys: list[tuple[str, str]]) -> dict[tuple[str, str], dict[str, Any]]:
        reads = [(key, pool.submit(kube.get, "ReplicaSet", key[1], key[0])) for key in keys]
        return {key: rs for key, f in reads if (rs := f.result()) is not None}

    try:
        read = get(sorted(wanted))
        read.update(get(sorted({(ns, other) for (ns, name), rs in read.items() if deployment_of(rs)
                                for other in wanted[(ns, name)]})))  # fmt: skip
    except ApiError as exc:
        if exc.status != 403:
            raise
        return None
    return read


def _operand_reads(
    owned: dict[tuple[str, str, str], dict[str, Any]],
    nodes: list[dict[str, Any]],
    facts: dict[str, Any],
    read: list[dict[str, Any]],
) -> tuple[list[str], list[DaemonPods]]:
    """(label selectors of the operand pods to list, the settled DaemonSets' pods known from their template)."""
    if any((n["metadata"].get("labels") or {}).get(UPGRADE_STATE, "") not in SETTLED_UPGRADE for n in nodes):
        return [OWNED_SELECTOR], []
    # A GPU node without GFD's driver labels: doctor reads its driver version from the driver pod's image.
    driver_pods = any(f.has_gpu and not has_driver_labels(f.labels) for f in facts.values())
    selectors, stand_ins = [], []
    views = [_bare_view(n) for n in nodes]
    for (kind, _, name), ds in sorted(owned.items()):
        if kind != "DaemonSet":
            continue
        selector = _selector_of(ds)
        on = _runs_on(ds, views) if _settled(ds) and selector else None
        if (
            on is None
            or len(on) != (ds.get("status") or {}).get("currentNumberScheduled", 0)
            or (driver_pods and _template_labels(ds).get(COMPONENT) == "nvidia-driver")
        ):
            selectors.append(selector or OWNED_SELECTOR)
            continue
        bound = {(p.get("spec") or {}).get("nodeName") for p in read if _owner(p) == name}
        stand_ins.append(DaemonPods(_template_pod(ds), tuple(n for n in on if n not in bound)))
    if len(selectors) > MOST_DAEMONSET_READS or OWNED_SELECTOR in selectors:
        return [OWNED_SELECTOR], []
    return selectors, stand_ins


def _settled(ds: dict[str, Any]) -> bool:
    """Every pod the DaemonSet should have is there, updated, ready and available, per its current status."""
    status, meta = ds.get("status") or {}, ds.get("metadata") or {}
    want = status.get("desiredNumberScheduled", 0)
    counts = ("currentNumberScheduled", "updatedNumberScheduled", "numberReady", "numberAvailable")
    return (
        status.get("observedGeneration", 0) >= meta.get("generation", 0)
        and all(status.get(k, 0) == want for k in counts)
        and not status.get("numberMisscheduled")
        and not status.get("numberUnavailable")
    )


def _selector_of(ds: dict[str, Any]) -> str:
    """The DaemonSet's pod selector as a label selector ("" when it has match expressions)."""
    selector = (ds.get("spec") or {}).get("selector") or {}
    labels = selector.get("matchLabels") or {}
    if selector.get("matchExpressions") or not labels:
        return ""
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def _bare_view(node: dict[str, Any]) -> NodeView:
    meta, spec = node.get("metadata") or {}, node.get("spec") or {}
    return NodeView(meta.get("name", ""), dict(meta.get("labels") or {}), list(spec.get("taints") or []),
                    bool(spec.get("unschedulable")), {}, {})  # fmt: skip


def _runs_on(ds: dict[str, Any], views: list[NodeView]) -> list[str]:
    """The nodes the DaemonSet controller places the DaemonSet's pods on: selector, affinity and taints."""
    template = ((ds.get("spec") or {}).get("template") or {}).get("spec") or {}
    probe = {"spec": {**template, "tolerations": list(template.get("tolerations") or []) + DAEMON_TOLERATIONS}}
    return [v.name for v in views if selector_ok(probe, v.labels, v.name) and not untolerated_taints(probe, v)]


def _template_labels(ds: dict[str, Any]) -> dict[str, str]:
    return dict((((ds.get("spec") or {}).get("template") or {}).get("metadata") or {}).get("labels") or {})


def _owner(pod: dict[str, Any]) -> str:
    owners = (pod.get("metadata") or {}).get("ownerReferences") or []
    return next((o.get("name", "") for o in owners if o.get("kind") == "DaemonSet"), "")


def _template_pod(ds: dict[str, Any]) -> dict[str, Any]:
    """What each of a settled DaemonSet's pods is, as far as doctor needs: labels, spec, Running."""
    meta = ds.get("metadata") or {}
    template = (ds.get("spec") or {}).get("template") or {}
    return {
        "metadata": {
            "name": f"{meta.get('name')}-*",
            "namespace": meta.get("namespace"),
            "labels": _template_labels(ds),
            "ownerReferences": [{"kind": "DaemonSet", "name": meta.get("name")}],
        },
        "spec": template.get("spec") or {},
        "status": {"phase": "Running"},
    }
