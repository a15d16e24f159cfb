"""Pending GPU pods: why the scheduler cannot place them, following its filters in order (REFERENCE §12,
entries 1, 2, 14, 15, 16, 19, 21)."""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import yaml

from .. import mig
from ..api import ClusterPolicySpec
from ..mig_layouts import MigGPU, default_layouts
from ..nodes import DEPLOY_OPERANDS, MIG_CORDONED, WORKLOAD_CONFIG, workload_of
from ..states.mig_manager import custom_config, fixed_config
from . import stack
from .common import (
    DEVICE_PLUGIN_DEPLOY,
    MIG_CONFIG_LABEL,
    MIG_STATE_LABEL,
    MIG_STRATEGY_LABEL,
    PRODUCT_LABEL,
    UPGRADE_STATE,
    admission_toleration,
    policy,
    scheduler_message,
    upgrade_waiting,
)
from .model import ERROR, INFO, WARNING, Cluster, Evidence, Finding, pod_ref
from .sched import (
    GPU,
    GPU_SHARED,
    MIG_PREFIX,
    NodeView,
    cordoned,
    fmt,
    gpu_requests,
    is_gpu_resource,
    pod_requests,
    required_terms,
    selector_ok,
    short_of,
    untolerated_taints,
)

VOLCANO_GPU_MEMORY = "volcano.sh/gpu-memory"


def pending_gpu_pods(pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for pod in pods:
        if (pod.get("metadata") or {}).get("deletionTimestamp") or (pod.get("spec") or {}).get("nodeName"):
            continue
        if (pod.get("status") or {}).get("phase", "Pending") != "Pending":
            continue
        requests = pod_requests(pod)
        if gpu_requests(pod) or requests.get(VOLCANO_GPU_MEMORY):
            out.append(pod)
    return out


def _shape(pod: dict[str, Any]) -> str:
    """What the scheduler filters on: pods of one shape (replicas of one workload) get one analysis."""
    spec = pod.get("spec") or {}
    keys = ("nodeSelector", "affinity", "tolerations", "containers", "initContainers", "overhead")
    return json.dumps([spec.get(k) for k in keys], sort_keys=True)


def findings(cluster: Cluster, pods: list[dict[str, Any]]) -> list[Finding]:
    out: list[Finding] = []
    done: dict[str, Finding | None] = {}
    for pod in pending_gpu_pods(pods):
        preempting = _preempting(cluster, pod)  # the pod's own state, not its shape's
        if preempting is not None:
            out.append(preempting)
            continue
        shape = _shape(pod)
        if shape not in done:
            done[shape] = _diagnose(cluster, pod)
            finding = done[shape]
        else:  # the same cause and fix; this pod's own name and scheduler message
            same = done[shape]
            finding = None if same is None else dataclasses.replace(
                same, object=pod_ref(pod), evidence=_scheduler_evidence(cluster, pod) + same.evidence[1:]
            )  # fmt: skip
        if finding is not None:
            out.append(finding)
    return out


def _preempting(cluster: Cluster, pod: dict[str, Any]) -> Finding | None:
    """Seed §7.3: the scheduler preempts lower-priority pods for this one. It deletes them, writes the node in
    status.nominatedNodeName and leaves the pod Pending ("Insufficient nvidia.com/gpu") while they hold their GPUs
    through their grace period; then it binds the pod there. Not a shortage, while the node fits the pod once its
    terminating pods are gone. The scheduler keeps the nomination after a later attempt fails, so a node cordoned or
    tainted since (a driver upgrade's drain evicts the same way) no longer counts: what holds the pod is that."""
    node = str((pod.get("status") or {}).get("nominatedNodeName") or "")
    view = cluster.views.get(node)
    if view is None or not selector_ok(pod, view.labels, view.name) or untolerated_taints(pod, view) \
            or cordoned(pod, view):  # fmt: skip
        return None
    priority = int((pod.get("spec") or {}).get("priority") or 0)
    ending = [p for p in view.pods if (p.get("metadata") or {}).get("deletionTimestamp")]
    victims = [p for p in ending if int((p.get("spec") or {}).get("priority") or 0) < priority]
    if not victims:
        return None
    freed: dict[str, Decimal] = {"pods": Decimal(len(ending))}
    for p in ending:
        for k, v in pod_requests(p).items():
            freed[k] = freed.get(k, Decimal(0)) + v
    need = {**pod_requests(pod), "pods": Decimal(1)}
    if any(view.free(k) + freed.get(k, Decimal(0)) < v for k, v in need.items() if v > 0):
        return None  # it would not fit even then: what holds it is what the other findings say
    ref = pod_ref(pod)
    grace = max(int((p.get("metadata") or {}).get("deletionGracePeriodSeconds") or 0) for p in victims)
    more = f" and {len(victims) - 5} more" if len(victims) > 5 else ""
    names = ", ".join(pod_ref(p).removeprefix("Pod ") for p in victims[:5]) + more
    evidence = _scheduler_evidence(cluster, pod) + [Evidence(ref, "status.nominatedNodeName", node)] + [
        Evidence(pod_ref(p), "metadata.deletionTimestamp", str((p.get("metadata") or {}).get("deletionTimestamp")))
        for p in victims[:5]]  # fmt: skip
    return Finding(
        INFO, "PreemptionInProgress", ref,
        f"the scheduler is preempting {len(victims)} lower-priority pod{'s' if len(victims) > 1 else ''} on {node} "
        f"for this pod ({names}): they hold their GPUs until they end"
        + (f" (grace period up to {grace} s)" if grace else "") + f", then the pod is bound to {node}",
        f"nothing to do but wait; `kubectl get pods -A --field-selector spec.nodeName={node}` shows them Terminating",
        evidence, nodes=(node,),
    )  # fmt: skip


def _scheduler_evidence(cluster: Cluster, pod: dict[str, Any]) -> list[Evidence]:
    where, message = scheduler_message(cluster, pod)
    return [Evidence(pod_ref(pod), where, message)] if message else []


def _diagnose(cluster: Cluster, pod: dict[str, Any]) -> Finding | None:
    ref = pod_ref(pod)
    evidence = _scheduler_evidence(cluster, pod)
    if not evidence:  # keep the first slot for the scheduler's word, so replicas can swap in their own
        evidence = [Evidence(ref, "status.phase", "Pending, not yet considered by the scheduler")]
    gates = [g.get("name", "?") for g in (pod.get("spec") or {}).get("schedulingGates") or []]
    if gates:  # the scheduler does not look at the pod until they are gone: nothing of the GPU stack holds it
        return Finding(
            INFO, "SchedulingGated", ref,
            f"the pod has scheduling gates ({', '.join(gates)}): the scheduler does not consider it until they are "
            "removed; its GPUs and nodes are not the reason it waits",
            "wait for whatever set the gates to admit it (a queue such as Kueue removes them when the workload's "
            "quota allows); `kubectl get pod -o yaml` shows spec.schedulingGates",
            evidence,
        )  # fmt: skip
    requests = pod_requests(pod)
    gpus = gpu_requests(pod)
    if not gpus:  # Volcano's GPU memory only (seed §7.1)
        if any(v.allocatable.get(VOLCANO_GPU_MEMORY, Decimal(0)) > 0 for v in cluster.views.values()):
            return None  # Volcano's own device plugin serves it: its scheduler decides, not this stack
        return Finding(
            ERROR, "VolcanoResourceNotAdvertised", ref,
            f"the pod requests {VOLCANO_GPU_MEMORY}, which no node advertises: that resource comes from Volcano's "
            "own device plugin, not from the NVIDIA GPU Operator",
            "request whole GPUs (nvidia.com/gpu) or a MIG device, or install Volcano's vGPU device plugin and "
            "scheduler for memory-based sharing",
            evidence,
        )  # fmt: skip
    views = list(cluster.views.values())
    # The scheduler checks every resource the pod requests: a GPU resource no node advertises holds it, whatever its
    # other GPU resources (seed §5.4 asks for two MIG profiles in one container).
    for resource, count in gpus.items():
        if not any(v.allocatable.get(resource, Decimal(0)) > 0 for v in views):
            return _not_advertised(cluster, pod, ref, resource, count, evidence)
    candidates = [v for v in views if selector_ok(pod, v.labels, v.name)]
    if not candidates:
        return _no_matching_node(cluster, pod, ref, evidence)
    for resource, count in gpus.items():
        if any(v.allocatable.get(resource, Decimal(0)) > 0 for v in candidates):
            continue
        if resource.startswith(MIG_PREFIX):
            return _not_advertised(cluster, pod, ref, resource, count, evidence, candidates)
        sick = _all_unhealthy(cluster, ref, resource, candidates, evidence, True)
        if sick is not None:
            return sick
        names = ", ".join(v.name for v in candidates[:8])
        return Finding(
            ERROR, "NoGPUOnMatchingNodes", ref,
            f"the nodes this pod may use ({names}) advertise no {resource}; the nodes that do are excluded by its "
            "node selector or affinity",
            f"select nodes that have GPUs (e.g. nodeSelector {PRODUCT_LABEL}: <model>), or check the GPU stack on "
            f"{names}",
            evidence, nodes=tuple(v.name for v in candidates),
        )  # fmt: skip
    # Only nodes that advertise every GPU resource the pod requests can take it: their taints and cordons are what
    # hold it (another node's say nothing: an untainted CPU worker beside tainted GPU nodes is the usual layout).
    offering = [v for v in candidates if all(v.allocatable.get(r, Decimal(0)) > 0 for r in gpus)]
    if not offering:
        return _split_resources(cluster, ref, gpus, candidates, evidence)
    resource, count = max(gpus.items(), key=lambda kv: kv[1])
    tolerated = [v for v in offering if not untolerated_taints(pod, v)]
    if not tolerated:
        return _taints(pod, ref, offering, evidence)
    open_nodes = [v for v in tolerated if not cordoned(pod, v)]
    if not open_nodes:
        return _cordoned(cluster, ref, tolerated, evidence)
    found = _resources(ref, gpus, requests, open_nodes, evidence)
    found = _with_spare(found, pod, resource, count, [v for v in offering if v not in open_nodes])
    return _with_unadvertised(cluster, found, candidates)


def _with_unadvertised(cluster: Cluster, found: Finding | None, candidates: list[NodeView]) -> Finding | None:
    """A GPU shortage finding that also names the GPU nodes the pod may use that advertise no GPU (the stack's
    GPUsNotAdvertisedOnNode): their GPUs are not counted."""
    if found is None or found.kind not in ("InsufficientGPU", "GPUFragmentation"):
        return found
    eligible = {v.name for v in candidates}
    idle = [n for n in stack.unadvertised(cluster) if n in eligible]
    if not idle:
        return found
    shown = ", ".join(idle[:5]) + (f" and {len(idle) - 5} more" if len(idle) > 5 else "")
    has = "has NVIDIA GPUs but advertises" if len(idle) == 1 else "have NVIDIA GPUs but advertise"
    return dataclasses.replace(
        found, summary=f"{found.summary}; {shown} {has} none (GPUsNotAdvertisedOnNode)",
        fix=f"fix the device plugin on {shown} (GPUsNotAdvertisedOnNode); or {found.fix}",
        nodes=found.nodes + tuple(idle),
    )  # fmt: skip


def _split_resources(
    cluster: Cluster, ref: str, gpus: dict[str, int], nodes: list[NodeView], evidence: list[Evidence]
) -> Finding:  # fmt: skip
    """Each GPU resource the pod requests is advertised by some node it may use, but none advertises them all."""
    where = [f"{r} on {', '.join([v.name for v in nodes if v.allocatable.get(r, Decimal(0)) > 0][:5])}" for r in gpus]
    summary = (f"no node the pod may use advertises every GPU resource it requests ({'; '.join(where)}): a pod runs "
               "on one node")  # fmt: skip
    fix = "request the GPU resources one node advertises, or split the pod"
    if all(r.startswith(MIG_PREFIX) for r in gpus):  # a layout with them all, checked as for one missing profile
        capable = [v for v in nodes if v.labels.get("nvidia.com/mig.capable") == "true"]
        more, fix, _ = _mig_fix(cluster, list(gpus), capable, True, policy(cluster)[1])
        summary, fix = summary + more, fix + ", or split the pod"
    return Finding(ERROR, "GPUResourcesOnDifferentNodes", ref, summary, fix, evidence,
                   nodes=tuple(v.name for v in nodes))  # fmt: skip


def _with_spare(
    found: Finding | None, pod: dict[str, Any], resource: str, count: int, closed: list[NodeView]
) -> Finding | None:
    """A shortage finding that also names the nodes with enough free that a taint or a cordon keeps the pod off: the
    shortage is then only the open nodes' (the scheduler says "untolerated taint" or "unschedulable" for those)."""
    spare = [v for v in closed if v.free(resource) >= count]
    if found is None or not spare:
        return found
    why = []
    for v in spare[:5]:
        taints = untolerated_taints(pod, v)
        what = ("taint " + ", ".join(f"{t.get('key')}:{t.get('effect')}" for t in taints)) if taints else "a cordon"
        why.append(f"{v.name} ({what})")
    more = f" and {len(spare) - 5} more" if len(spare) > 5 else ""
    has, keeps = ("has", "keeps") if len(spare) == 1 else ("have", "keep")
    note = f"{', '.join(why)}{more} {has} {count} {resource} free but {keeps} the pod off"
    fix = "tolerate the taint (or wait for the cordon to end) to use them; or " + found.fix
    return dataclasses.replace(found, summary=f"{found.summary}; {note}", fix=fix,
                               nodes=found.nodes + tuple(v.name for v in spare))  # fmt: skip


def _table(resource: str, nodes: list[NodeView]) -> list[str]:
    rows = [f"{'node':<32} {'allocatable':>11} {'free':>6}"]
    for v in sorted(nodes, key=lambda v: (-v.free(resource), v.name))[:20]:
        rows.append(
            f"{v.name:<32} {fmt(v.allocatable.get(resource, Decimal(0))):>11} "
            f"{fmt(max(v.free(resource), Decimal(0))):>6}"
        )
    if len(nodes) > 20:
        rows.append(f"... and {len(nodes) - 20} more nodes")
    return rows


def _resources(
    ref: str, gpus: dict[str, int], requests: dict[str, Decimal], nodes: list[NodeView], evidence: list[Evidence]
) -> Finding | None:
    # Each GPU resource in turn, on the nodes with enough of those before it (the largest request first): the first
    # no such node has enough of is the shortage.
    for resource, count in sorted(gpus.items(), key=lambda kv: -kv[1]):
        if all(v.free(resource) < count for v in nodes):
            return _gpu_shortage(ref, resource, count, nodes, evidence)
        nodes = [v for v in nodes if v.free(resource) >= count]
    shortfalls = [short_of(requests, v) for v in nodes]
    if not all(shortfalls):
        return None  # a node fits it now: the scheduler has not retried yet
    others = sorted({r for short in shortfalls for r in short})
    rows = [f"{'node':<32} " + " ".join(f"{r + ' free':>16}" for r in others)]
    rows += [f"{v.name:<32} " + " ".join(f"{fmt(v.free(r), r):>16}" for r in others) for v in nodes[:20]]
    want = ", ".join(f"{r} {fmt(requests.get(r, Decimal(1)), r)}" for r in others)
    has = ", ".join(f"{count} free {resource}" for resource, count in gpus.items())
    return Finding(
        WARNING, "InsufficientResources", ref,
        f"the nodes with {has} lack {', '.join(others)} for this pod (it requests {want})",
        "lower the pod's CPU or memory request, or free those resources on the GPU nodes",
        evidence, details=rows, nodes=tuple(v.name for v in nodes),
    )  # fmt: skip


def _gpu_shortage(ref: str, resource: str, count: int, nodes: list[NodeView], evidence: list[Evidence]) -> Finding:
    """No node has `count` of the GPU resource free: more than any node has, fragmented, or all allocated."""
    table = _table(resource, nodes)
    names = tuple(v.name for v in nodes)
    free = [max(v.free(resource), Decimal(0)) for v in nodes]
    most_free, total_free = int(max(free)), int(sum(free))
    largest = int(max(v.allocatable.get(resource, Decimal(0)) for v in nodes))
    fits_now = f"the largest request that fits now is {resource}: {most_free}" if most_free else "none fits now"
    if count > largest:
        return Finding(
            ERROR, "GPURequestExceedsEveryNode", ref,
            f"the pod requests {count} {resource} but the largest eligible node has {largest}; "
            "a pod never spans nodes",
            f"request at most {largest} per pod ({fits_now}); run a larger job as several pods of at most "
            f"{largest} GPUs each (multi-node training, e.g. a PyTorchJob or MPIJob), or add nodes with more GPUs",
            evidence, details=table, nodes=names,
        )  # fmt: skip
    if total_free >= count:
        return Finding(
            WARNING, "GPUFragmentation", ref,
            f"{total_free} {resource} are free in total, but no single node has {count} free (at most "
            f"{most_free}): the free GPUs are fragmented across nodes",
            f"{fits_now}; or free a node (move or pack smaller GPU pods together, e.g. with a bin-packing "
            "scheduler profile, MostAllocated) or split the job into smaller pods",
            evidence, details=table, nodes=names,
        )  # fmt: skip
    return Finding(
        WARNING, "InsufficientGPU", ref,
        f"every eligible node's {resource} is allocated: {total_free} free in all, {count} requested",
        f"wait for running GPU pods to finish, add GPU nodes, or lower the request ({fits_now}); "
        "a Job queue (Kueue, Volcano) keeps such pods from piling up",
        evidence, details=table, nodes=names,
    )  # fmt: skip


def _unmatched_terms(cluster: Cluster, pod: dict[str, Any]) -> list[str]:
    """What no label names: required terms with no requirements, and node names pinned by matchFields."""
    names = {v.name for v in cluster.views.values()}
    lines = []
    for term in required_terms(pod):
        fields = term.get("matchFields") or []
        if not fields and not term.get("matchExpressions"):
            lines.append("a required node affinity term with no requirements matches no node")
        for f in fields:
            if f.get("key") == "metadata.name" and f.get("operator", "In") == "In":
                gone = [n for n in f.get("values") or [] if n not in names]
                if gone:
                    lines.append(f"matchFields metadata.name wants {', '.join(gone)}: no node has that name")
    return lines


def _suggest(key: str, wanted: str, present: list[str]) -> list[str]:
    """Values on the nodes that a wanted value means: with sharing or MIG single, gpu.product gets a suffix; a
    model's short name (H100) is a dash-separated part of the product (NVIDIA-H100-80GB-HBM3)."""
    base = wanted.split("-SHARED", 1)[0].split("-MIG-", 1)[0]
    found = [p for p in present if p != wanted and (p == base or p.startswith((base + "-SHARED", base + "-MIG-")))]
    if found or not base or key != PRODUCT_LABEL:
        return found
    parts = base.lower().split("-")
    return [p for p in present if _has_run(p.lower().split("-"), parts)]


def _has_run(parts: list[str], run: list[str]) -> bool:
    return any(parts[i : i + len(run)] == run for i in range(len(parts) - len(run) + 1))


def _no_matching_node(cluster: Cluster, pod: dict[str, Any], ref: str, evidence: list[Evidence]) -> Finding:
    lines: list[str] = []

    def corrected(key: str, wanted: list[str]) -> tuple[str, list[str]] | None:
        """The key and the wanted values with those no node carries replaced by the node values they mean (None:
        nothing to correct, or nothing they mean: other values would widen the pod to models it did not ask for). A
        key on no node whose values name GPU models (seed §7.2's gpu.nvidia.com/model: H100) becomes GFD's
        gpu.product."""
        present = sorted({v.labels[key] for v in cluster.views.values() if key in v.labels})
        if not present:
            products = sorted({v.labels[PRODUCT_LABEL] for v in cluster.views.values() if PRODUCT_LABEL in v.labels})
            models = [w for w in wanted if any(c.isdigit() for c in w)]  # H100, L40S; not a vendor or "true"
            hints = sorted({s for w in models for s in _suggest(PRODUCT_LABEL, w, products)})
            if key == PRODUCT_LABEL or not hints:
                lines.append(f"no node has the label {key}")
                return None
            lines.append(f"no node has the label {key}; GPU feature discovery writes the GPU model as {PRODUCT_LABEL} "
                         f"(nodes have {', '.join(products[:10])})")  # fmt: skip
            return PRODUCT_LABEL, hints
        missing = [w for w in wanted if w not in present]
        if not missing:
            return None
        hints = sorted({s for w in missing for s in _suggest(key, w, present)})
        why = ""
        if any("-SHARED" in h or "-MIG-" in h for h in hints + missing):
            why = (" (GPU feature discovery appends -SHARED to gpu.product when a GPU is shared by time-slicing or "
                   "MPS, and -MIG-<profile> with the MIG strategy single)")  # fmt: skip
        lines.append(f"{key}: wanted {', '.join(missing)}; nodes have {', '.join(present[:10])}{why}")
        return (key, list(dict.fromkeys([w for w in wanted if w in present] + hints))) if hints else None

    spec = pod.get("spec") or {}
    selector = dict(spec.get("nodeSelector") or {})
    moved: dict[str, list[str]] = {}  # nodeSelector keys with several values: to the affinity
    for key, value in list(selector.items()):
        found = corrected(key, [value])
        if found is None:
            continue
        new_key, values = found
        if new_key != key or len(values) > 1:
            del selector[key]
        if len(values) == 1:
            selector[new_key] = values[0]
        else:  # the key leaves the nodeSelector (ANDed with the affinity) for the affinity
            moved[new_key] = values
    # The pod's own affinity with only the wrong values replaced: its other requirements, terms, preferences and
    # pod (anti-)affinity stay.
    affinity = copy.deepcopy(spec.get("affinity") or {})
    terms = required_terms({"spec": {"affinity": affinity}})
    for term in terms:
        for e in term.get("matchExpressions") or []:
            if e.get("operator", "In") in ("In", "Exists"):
                found = corrected(e.get("key", ""), list(e.get("values") or []))
                if found is not None:
                    e["key"], e["values"] = found
    if moved:
        exprs = [{"key": k, "operator": "In", "values": v} for k, v in moved.items()]
        for term in terms:
            term.setdefault("matchExpressions", []).extend(copy.deepcopy(exprs))
        if not terms:
            required = {"nodeSelectorTerms": [{"matchExpressions": exprs}]}
            affinity.setdefault("nodeAffinity", {})["requiredDuringSchedulingIgnoredDuringExecution"] = required
    lines = list(dict.fromkeys(lines)) + _unmatched_terms(cluster, pod)
    summary = "no node matches the pod's node selector or required node affinity: " + "; ".join(
        lines or ["the combination of labels it requires is on no node"]
    )
    fix: dict[str, Any] = {}
    if selector != (spec.get("nodeSelector") or {}):
        fix["nodeSelector"] = selector  # the whole corrected nodeSelector, the keys that matched included
    if affinity != (spec.get("affinity") or {}):
        fix["affinity"] = affinity  # the whole corrected affinity
    fix_yaml = yaml.safe_dump({"spec": fix}, sort_keys=False) if fix else ""
    return Finding(
        ERROR, "NoNodeMatchesAffinity", ref, summary,
        "use labels and values that nodes carry (`kubectl get nodes -L nvidia.com/gpu.product`); for a GPU model no "
        "node has, add such nodes",
        evidence, fix_yaml=fix_yaml,
    )  # fmt: skip


def _taints(pod: dict[str, Any], ref: str, nodes: list[NodeView], evidence: list[Evidence]) -> Finding:
    seen: dict[tuple[str, str, str], list[str]] = {}
    for v in nodes:
        for t in untolerated_taints(pod, v):
            seen.setdefault((t.get("key", ""), t.get("value") or "", t.get("effect", "")), []).append(v.name)
    taints = ", ".join(f"{k}{'=' + val if val else ''}:{eff} ({len(n)} nodes)" for (k, val, eff), n in seen.items())
    # The pod's own tolerations and the missing ones: the whole corrected list (the API server's own left out).
    tolerations = [t for t in (pod.get("spec") or {}).get("tolerations") or [] if not admission_toleration(t)] + [
        {"key": k, "operator": "Equal", "value": val, "effect": eff} if val else
        {"key": k, "operator": "Exists", "effect": eff}
        for (k, val, eff) in seen
    ]  # fmt: skip
    return Finding(
        ERROR, "UntoleratedTaint", ref,
        f"every node the pod may use has a taint it does not tolerate: {taints}",
        "add a toleration for the taint to the pod (GPU nodes are often tainted so only GPU pods land there)",
        evidence, fix_yaml=yaml.safe_dump({"spec": {"tolerations": tolerations}}, sort_keys=False),
        nodes=tuple(v.name for v in nodes),
    )  # fmt: skip


def _mig_gpus(cluster: Cluster, capable: list[NodeView]) -> dict[str, tuple[MigGPU, list[str]]] | None:
    """The MIG-capable nodes by GPU model (the package's MIG table), or None when one's model is not known."""
    out: dict[str, tuple[MigGPU, list[str]]] = {}
    for v in capable:
        facts = cluster.snapshot.nodes.get(v.name)
        gpu = mig.gpu_of_node(facts) if facts is not None else mig.gpu_of_product(v.labels.get(PRODUCT_LABEL, ""))
        if gpu is None:
            return None
        out.setdefault(gpu.name, (gpu, []))[1].append(v.name)
    return out


def _layouts_with(
    resources: list[str], gpus: dict[str, tuple[MigGPU, list[str]]], layouts: mig.Layouts | None
) -> dict[str, list[str]]:
    """A layout of `layouts` that makes every one of `resources` on each GPU model (all-<profile> for one resource
    where there is one) -> the nodes of the models it is valid on."""
    out: dict[str, list[str]] = {}
    alone = f"all-{resources[0][len(MIG_PREFIX) :]}" if len(resources) == 1 else ""
    for gpu, nodes in gpus.values():
        table = mig.node_layouts(gpu, layouts)
        found = [name for name in mig.valid_layouts(gpu, table)
                 if all(_makes(mig.layout_devices(gpu, name, table) or {}, r) for r in resources)]  # fmt: skip
        if found:
            out.setdefault(alone if alone in found else found[0], []).extend(nodes)
    return out


def _makes(profiles: Mapping[str, int], resource: str) -> bool:
    """Whether MIG devices of one of these profiles are advertised as `resource` (strategy mixed)."""
    return any(mig.mig_resource(p) == resource and n > 0 for p, n in profiles.items())


def _mig_layouts(cluster: Cluster, spec: ClusterPolicySpec | None) -> tuple[mig.Layouts | None, str, str]:
    """The layouts mig-manager applies (None: those it builds from each node's GPU), where they come from, and why it
    cannot read the user's ConfigMap (migManager.config.name; "" when it can)."""
    name = custom_config(spec) if spec is not None else None
    if not name:  # none named, or our default ConfigMap: then mig-manager reads that as it is and builds none
        fixed = spec is not None and fixed_config(spec)
        return (default_layouts() if fixed else None), "the default table", ""
    source = f"ConfigMap {name}"
    text = (cluster.snapshot.config_data.get(name) or {}).get("config.yaml")
    if name not in cluster.snapshot.config_data:
        return {}, source, "not found"
    if text is None:
        return {}, source, "no key config.yaml"
    try:
        return mig.parse_config(text), source, ""
    except mig.ConfigError as exc:
        return {}, source, f"key config.yaml: {exc}"


def _listed(names: list[str]) -> str:
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def _cordoned(cluster: Cluster, ref: str, nodes: list[NodeView], evidence: list[Evidence]) -> Finding:
    waiting = upgrade_waiting(cluster)
    rows, upgrading, gated = [], [], []
    for v in nodes:
        state = v.labels.get(UPGRADE_STATE)
        if state and state != "upgrade-done":
            upgrading.append(v.name)
            rows.append(
                f"{v.name}: driver upgrade state {state}"
                + (f", waits for: {waiting[v.name]}" if v.name in waiting else "")
            )
        elif MIG_CORDONED in getattr(cluster.snapshot.nodes.get(v.name), "annotations", {}):
            gated.append(v.name)
            rows.append(f"{v.name}: cordoned by the operator for the MIG layout change to "
                        f"{v.labels.get(MIG_CONFIG_LABEL, '-')} (uncordoned once it is over)")  # fmt: skip
        else:
            rows.append(f"{v.name}: cordoned (spec.unschedulable)")
    if upgrading or gated:
        by = [f"{len(names)} by {what} ({', '.join(names[:5])})" for names, what in
              ((upgrading, "the GPU driver upgrade"), (gated, "the operator for a MIG layout change")) if names]
        summary = f"every node the pod may use is cordoned: {' and '.join(by)}"
        fix = "; ".join(([
            "the nodes come back when their upgrade finishes (see what each waits for below, or `gpu-operator "
            "upgrade plan`); a node stuck in upgrade-failed is retried by relabelling it upgrade-required"
        ] if upgrading else []) + ([
            "the operator uncordons a node once its MIG layout change is over: wait for nvidia.com/mig.config.state="
            "success (or failed: MIGChangeFailed says why)"
        ] if gated else []))  # fmt: skip
        # Lifting the cordon lets the evicted pods' replacements land there again, which holds the upgrade or change.
        fix += "; do not uncordon " + ("a node mid-upgrade" if not gated else "these nodes") + " by hand"
        if len(upgrading) + len(gated) < len(nodes):
            fix += " (the others: `kubectl uncordon NODE` when their maintenance is over)"
    else:
        summary = "every node the pod may use is cordoned (node(s) were unschedulable)"
        fix = "uncordon a node when its maintenance is over (`kubectl uncordon NODE`) or add nodes"
    return Finding(WARNING, "NodesCordoned", ref, summary, fix, evidence, details=rows,
                   nodes=tuple(v.name for v in nodes))  # fmt: skip


def _mig_fix(
    cluster: Cluster, resources: list[str], capable: list[NodeView], mixed: bool, spec: ClusterPolicySpec | None
) -> tuple[str, str, list[NodeView]]:  # fmt: skip
    """For a pod requesting the MIG `resources` (all in one pod): what the summary adds, the fix (a layout that makes
    every one of them on the GPUs of `capable`, from the layouts mig-manager has) and the nodes the fix is about."""
    profiles = [r[len(MIG_PREFIX) :] for r in resources]
    has = _and(profiles)
    # Only layouts the nodes' GPU models take (a layout mig-manager has no entry for fails the node).
    gpus = _mig_gpus(cluster, capable)
    having = [n for g, nodes in (gpus or {}).values() if all(_makes(g.profiles, r) for r in resources) for n in nodes]
    layouts, source, unreadable = _mig_layouts(cluster, spec)
    where = _layouts_with(resources, gpus or {}, layouts) if having else {}
    to_mixed = "" if mixed else "set the ClusterPolicy's mig.strategy to mixed and "
    # No MIG-capable node, or a GPU the MIG table does not know: the example layout is not checked.
    near = [n for nodes in where.values() for n in nodes] or having  # the nodes the fix is about
    named = [v for v in capable if v.name in near] or capable
    more, fix = "", ""
    example = f"e.g. nvidia.com/mig.config=all-{profiles[0]}" if len(profiles) == 1 else "nvidia.com/mig.config"
    if gpus and not having:
        listed = "; ".join(f"{g.name}: {', '.join(g.profiles)}" for g, _ in gpus.values())
        missing = [r[len(MIG_PREFIX) :] for r in resources if not any(_makes(g.profiles, r) for g, _ in gpus.values())]
        if missing:
            more = f"; no GPU in this cluster has a {missing[0]} profile ({listed})"
            fix = (f"{to_mixed}request a profile these GPUs have (nvidia.com/mig-<profile>), or add nodes with a GPU "
                   f"that has {has}")  # fmt: skip
        else:  # each on some GPU model, none on one: a pod runs on one node
            more = f"; no GPU model in this cluster has all of {has} ({listed})"
            fix = f"{to_mixed}request profiles one GPU model has, or add nodes with a GPU that has {has}"
    elif where:
        example = "; ".join(f"nvidia.com/mig.config={layout} on {_listed(nodes)}"
                            for layout, nodes in where.items())  # fmt: skip
    elif having and unreadable:
        fix = (f"mig-manager cannot read {source} ({unreadable}), so it applies no layout: fix it, with a layout "
               f"that has {has} on the GPUs of {_listed(having)}")  # fmt: skip
        fix += "" if mixed else ", and set the ClusterPolicy's mig.strategy to mixed"
    elif having:
        fix = (f"{to_mixed}add a layout that has {has} on the GPUs of {_listed(having)} to a mig-parted "
               f"ConfigMap named by migManager.config.name (no layout of {source} makes "
               f"{'it' if len(profiles) == 1 else 'them all'} there) and label such a node with it")  # fmt: skip
    if not fix and mixed:
        fix = (f"label a MIG-capable node with a layout that has {has} ({example}) and wait for "
               f"nvidia.com/mig.config.state=success")  # fmt: skip
    elif not fix and len(profiles) > 1:  # single advertises one profile, as nvidia.com/gpu, on every GPU of a node
        fix = (f"set the ClusterPolicy's mig.strategy to mixed and give the node a layout with {has} ({example}); "
               "under strategy single all GPUs of a node have one profile, so no pod gets several")  # fmt: skip
    elif not fix:
        fix = (f"either set the ClusterPolicy's mig.strategy to mixed and give the node a layout with {has} "
               f"({example}), or, with strategy single, request nvidia.com/gpu and select the MIG product "
               f"(nodeSelector {PRODUCT_LABEL}: <model>-MIG-{profiles[0]})")  # fmt: skip
    return more, fix, named


def _and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def _not_advertised(
    cluster: Cluster, pod: dict[str, Any], ref: str, resource: str, count: int, evidence: list[Evidence],
    nodes: list[NodeView] | None = None,
) -> Finding:  # fmt: skip
    disabled = _plugin_disabled(cluster, ref, resource, evidence)
    if disabled is not None:
        return disabled
    views = nodes if nodes is not None else list(cluster.views.values())
    sick = _all_unhealthy(cluster, ref, resource, views, evidence, nodes is not None)
    if sick is not None:
        return sick
    if resource.startswith(MIG_PREFIX):
        profile = resource[len(MIG_PREFIX) :]
        _, spec = policy(cluster)
        strategies = sorted({v.labels[MIG_STRATEGY_LABEL] for v in views if MIG_STRATEGY_LABEL in v.labels})
        strategy = ", ".join(strategies) or ((spec.mig.strategy or "none") if spec else "unknown")
        capable = [v for v in views if v.labels.get("nvidia.com/mig.capable") == "true"]
        rows = [
            f"{v.name}: mig.strategy={v.labels.get(MIG_STRATEGY_LABEL, '-')}, mig.config="
            f"{v.labels.get(MIG_CONFIG_LABEL, '-')}, mig.config.state={v.labels.get(MIG_STATE_LABEL, '-')}"
            for v in capable[:20]
        ]
        mixed = "mixed" in strategies
        if mixed:
            summary = (f"no node advertises {resource}: the MIG strategy is mixed but no node's layout has "
                       f"{profile} devices (or its MIG change failed or is pending)")  # fmt: skip
        else:
            summary = (f"the pod requests {resource}, a resource only the MIG strategy mixed advertises; the "
                       f"strategy is {strategy}")  # fmt: skip
        # Every MIG profile the pod requests, not only this one: a layout without one of them leaves it Pending.
        wanted = [r for r in gpu_requests(pod) if r.startswith(MIG_PREFIX)] or [resource]
        more, fix, named = _mig_fix(cluster, wanted, capable, mixed, spec)
        summary += more
        return Finding(ERROR, "MIGResourceNotAdvertised", ref, summary, fix, evidence, details=rows,
                       nodes=tuple(v.name for v in named))  # fmt: skip
    mismatch = _other_resource_name(cluster, pod, ref, resource, evidence)
    if mismatch is not None:
        return mismatch
    _, spec = policy(cluster)
    # A node configured for VM workloads (sandboxWorkloads) gets no device plugin for containers, by design; one
    # opted out of every operand (gpu.deploy.operands=false, whatever its workload) counts as opted out below.
    vms = {n.name: workload for n in cluster.snapshot.nodes.values()
           if spec is not None and n.has_gpu and n.labels.get(DEPLOY_OPERANDS) != "false"
           and (workload := workload_of(n, spec)) != "container"}  # fmt: skip
    gpu_nodes = [n.name for n in cluster.snapshot.nodes.values() if n.has_gpu and n.name not in vms]
    opted_out = [n.name for n in cluster.snapshot.nodes.values() if n.has_gpu and n.name not in vms
                 and "false" in (n.labels.get(DEVICE_PLUGIN_DEPLOY), n.labels.get(DEPLOY_OPERANDS))]  # fmt: skip
    if spec is not None and vms and not gpu_nodes:
        return _reserved_for_vms(ref, resource, vms, spec, evidence)
    if gpu_nodes and len(opted_out) == len(gpu_nodes):
        return _opted_out(cluster, ref, resource, opted_out, spec, evidence, len(vms))
    if gpu_nodes:
        besides = f" ({len(vms)} more are configured for VM workloads, {WORKLOAD_CONFIG})" if vms else ""
        down = next((f for f in stack.findings(cluster) if f.kind == "OperatorNotRunning"), None)
        first = (f"the operator's own pod does not run ({down.object}, OperatorNotRunning): fix it first, it deploys "
                 "the device plugin" if down else f"fix the GPU stack first (see the operand findings; `kubectl get "
                 f"pods -n {cluster.namespace}`)")  # fmt: skip
        return Finding(
            ERROR, "GPUsNotAdvertised", ref,
            f"no node advertises {resource} although {len(gpu_nodes)} nodes have NVIDIA GPUs{besides}: the device "
            "plugin is not running or not ready on them",
            f"{first}; the device plugin advertises {resource} once the driver and toolkit are validated",
            evidence, nodes=tuple(gpu_nodes),
        )  # fmt: skip
    return Finding(
        ERROR, "NoGPUNodes", ref,
        f"no node advertises {resource} and no node has an NVIDIA GPU (no Node Feature Discovery label "
        "feature.node.kubernetes.io/pci-0302_10de.present, pci-0300_10de.present or pci-10de.present =true)",
        "add GPU nodes, or install Node Feature Discovery so the operator can find them (its worker must tolerate "
        "the GPU nodes' taints, such as nvidia.com/gpu)",
        evidence,
    )  # fmt: skip


def _all_unhealthy(
    cluster: Cluster, ref: str, resource: str, views: list[NodeView], evidence: list[Evidence], selected: bool
) -> Finding | None:  # fmt: skip
    """No node of `views` advertises `resource`, and on some the device plugin registered it (capacity) but marked
    every device unhealthy (REFERENCE §12 entry 3, the stack's GPUsUnhealthy): the GPUs failed, not the plugin. Not a
    node that advertises another GPU resource (a layout or sharing change renamed it). None without such a node."""
    marked = {n for f in stack.findings(cluster) if f.kind == "GPUsUnhealthy" for n in f.nodes}
    sick = [v for v in views if v.name in marked and v.capacity.get(resource, Decimal(0)) > 0
            and not any(is_gpu_resource(r) and n > 0 for r, n in v.allocatable.items())]  # fmt: skip
    if not sick:
        return None
    names = [v.name for v in sick]
    total = sum((v.capacity[resource] for v in sick), Decimal(0))
    where = "no node the pod may use" if selected else "no node"
    summary = (f"{where} advertises {resource}: on {_listed(names)} the device plugin registered {fmt(total)} (the "
               f"capacity) but marked {'it' if total == 1 else 'all of them'} unhealthy (allocatable 0: an Xid, 79 "
               "fallen off the bus, 48/94/95 ECC errors)")  # fmt: skip
    fix = (f"drain {_listed(names)} and reset or replace the GPUs (nvidia-smi -r, or the node's provider); the device "
           "plugin's log names the Xid")  # fmt: skip
    if selected:  # other nodes advertise it
        fix += f"; or let the pod use the nodes that advertise {resource} (its node selector or affinity excludes them)"
    seen = {v.name for v in views}
    idle = [n for n in stack.unadvertised(cluster) if n in seen]
    if idle:
        has = "has NVIDIA GPUs but advertises" if len(idle) == 1 else "have NVIDIA GPUs but advertise"
        summary += f"; {_listed(idle)} {has} none (GPUsNotAdvertisedOnNode)"
        fix += f"; fix the device plugin on {_listed(idle)} (GPUsNotAdvertisedOnNode)"
    ev = evidence + [Evidence(f"Node {v.name}", f"status.capacity / status.allocatable [{resource}]",
                              f"{fmt(v.capacity[resource])} / 0") for v in sick[:3]]  # fmt: skip
    return Finding(ERROR, "AllGPUsUnhealthy", ref, summary, fix, ev, nodes=tuple(names + idle))


def _plugin_disabled(cluster: Cluster, ref: str, resource: str, evidence: list[Evidence]) -> Finding | None:
    """No node advertises `resource` because the ClusterPolicy turns the device plugin off (devicePlugin.enabled
    false, as the NVIDIA DRA driver for GPUs needs) while GPU nodes would run it (not nodes for VMs). None where a
    node advertises a GPU resource: a device plugin of the user's own runs."""
    name, spec = policy(cluster)
    advertised = any(is_gpu_resource(r) and n > 0 for v in cluster.views.values() for r, n in v.allocatable.items())
    if spec is None or spec.device_plugin.enabled or advertised:
        return None
    nodes = [n.name for n in cluster.snapshot.nodes.values() if n.has_gpu and (
        n.labels.get(DEPLOY_OPERANDS) == "false" or workload_of(n, spec) == "container")]  # fmt: skip
    if not nodes:
        return None
    return Finding(
        ERROR, "DevicePluginDisabled", ref,
        f"no node advertises {resource} although {len(nodes)} nodes have NVIDIA GPUs: the ClusterPolicy sets "
        "devicePlugin.enabled false, so the operator deploys no device plugin",
        "enable devicePlugin in the ClusterPolicy (devicePlugin.enabled: true); or, where the NVIDIA DRA driver "
        "hands out the GPUs (it needs the device plugin off), request them through a ResourceClaim instead of "
        f"{resource}; a device plugin you run yourself instead registered none (its pods' logs say why)",
        evidence + [Evidence(f"ClusterPolicy {name}", "spec.devicePlugin.enabled", "false")], nodes=tuple(nodes),
    )  # fmt: skip


def _opted_out(
    cluster: Cluster, ref: str, resource: str, names: list[str], spec: ClusterPolicySpec | None,
    evidence: list[Evidence], vms: int = 0,
) -> Finding:  # fmt: skip
    """No node advertises `resource` because every GPU node that runs no VM operands is opted out of the device
    plugin: by its deploy label, or by gpu.deploy.operands=false, which removes every deploy label (REFERENCE §3).
    `vms`: how many GPU nodes are configured for VM workloads besides (counted apart)."""
    nodes = cluster.snapshot.nodes
    off = [name for name in names if nodes[name].labels.get(DEPLOY_OPERANDS) == "false"]
    plugin = [name for name in names if name not in off]
    shown = [f"{DEVICE_PLUGIN_DEPLOY}=false on {_listed(plugin)}"] if plugin else []
    if off:
        shown.append(f"{DEPLOY_OPERANDS}=false, which removes every operand, on {_listed(off)}")
    unlabel = " or ".join(f"`kubectl label node NODE {label}-`" for label, on in
                          ((DEVICE_PLUGIN_DEPLOY, plugin), (DEPLOY_OPERANDS, off)) if on)  # fmt: skip
    fix = (f"remove the label from the nodes that should run GPU pods ({unlabel}); the operator then deploys the "
           f"device plugin there and it advertises {resource}")  # fmt: skip
    # The operands label wins over the workload: without it such a node gets the VM operands.
    vm = [name for name in off if spec is not None and workload_of(nodes[name], spec) != "container"]
    if vm:
        fix += (f"; {_listed(vm)} {'is' if len(vm) == 1 else 'are'} also configured for VM workloads: label "
                f"{'it' if len(vm) == 1 else 'them'} {WORKLOAD_CONFIG}=container --overwrite too")  # fmt: skip
    which = " not configured for VM workloads" if vms else ""
    besides = (f"; {vms} more {'is' if vms == 1 else 'are'} configured for VM workloads ({WORKLOAD_CONFIG}), which "
               "run no device plugin for containers") if vms else ""  # fmt: skip
    return Finding(
        ERROR, "DevicePluginOptedOut", ref,
        f"no node advertises {resource}: every GPU node{which} is opted out of the device plugin "
        f"({'; '.join(shown)}){besides}",
        fix, evidence, nodes=tuple(names),
    )  # fmt: skip


def _reserved_for_vms(
    ref: str, resource: str, vms: dict[str, str], spec: ClusterPolicySpec, evidence: list[Evidence]
) -> Finding:  # fmt: skip
    """No node advertises `resource` because every GPU node is configured for VM workloads (`vms`: node -> its
    workload): REFERENCE §3 gives such a node only the sandbox operands, no device plugin for containers."""
    by_workload: dict[str, list[str]] = {}
    for name, workload in sorted(vms.items()):
        by_workload.setdefault(workload, []).append(name)
    shown = "; ".join(f"{workload} on {', '.join(names[:5])}" + (f" and {len(names) - 5} more" if len(names) > 5
                      else "") for workload, names in sorted(by_workload.items()))  # fmt: skip
    default = spec.sandbox_workloads.default_workload
    source = f"their {WORKLOAD_CONFIG} label"
    if default != "container":
        source += f" or sandboxWorkloads.defaultWorkload={default}"
    unlabel = " (or remove that label: the default workload is container)" if default == "container" else ""
    return Finding(
        ERROR, "GPUsReservedForVMs", ref,
        f"no node advertises {resource}: every GPU node is configured for VM workloads by {source} ({shown}), "
        "and a VM node runs no device plugin for containers",
        f"to run GPU pods, label the nodes they should use `kubectl label node NODE {WORKLOAD_CONFIG}=container "
        f"--overwrite`{unlabel}; the operator then deploys the container stack there and the device plugin "
        f"advertises {resource} (those GPUs are then no longer given to VMs)",
        evidence, nodes=tuple(sorted(vms)),
    )  # fmt: skip


def _other_resource_name(
    cluster: Cluster, pod: dict[str, Any], ref: str, resource: str, evidence: list[Evidence]
) -> Finding | None:
    """The pod asks for a GPU resource no node advertises while the GPU nodes it may use advertise another: the name
    is wrong, the device plugin works (sharing with renameByDefault advertises nvidia.com/gpu.shared, MIG mixed
    nvidia.com/mig-*). None when one of those nodes advertises nothing: its device plugin is what fails."""
    facts = cluster.snapshot.nodes

    def advertised(v: NodeView) -> list[str]:
        return [n for n, amount in v.allocatable.items() if is_gpu_resource(n) and amount > 0]

    gpu_nodes = [
        v for v in cluster.views.values()
        if selector_ok(pod, v.labels, v.name) and (advertised(v) or (v.name in facts and facts[v.name].has_gpu))
    ]  # fmt: skip
    # GPU nodes whose taints hold the pod are left out, unless they hold it off every one (then the taints are the
    # finding once the name is right).
    gpu_nodes = [v for v in gpu_nodes if not untolerated_taints(pod, v)] or gpu_nodes
    if not gpu_nodes or not all(advertised(v) for v in gpu_nodes):
        return None
    offered: dict[str, list[NodeView]] = {}
    for v in gpu_nodes:
        for name in advertised(v):
            if name != resource:
                offered.setdefault(name, []).append(v)
    if not offered:
        return None
    names = sorted(offered)
    nodes = sorted({v.name for found in offered.values() for v in found})
    why = ""
    if resource == GPU and GPU_SHARED in offered:
        why = f" (GPU sharing with renameByDefault advertises shared GPUs as {GPU_SHARED})"
    elif resource == GPU_SHARED and GPU in offered:
        why = f" ({GPU_SHARED} exists only with sharing and renameByDefault; here GPUs are advertised as {GPU})"
    elif any(n.startswith(MIG_PREFIX) for n in names):
        why = " (with the MIG strategy mixed each MIG profile is its own resource, nvidia.com/mig-<profile>)"
    shown = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
    ev = evidence + [
        Evidence(f"Node {v.name}", "status.allocatable", f"{name}: {fmt(v.allocatable[name])}")
        for name in names[:3] for v in offered[name][:1]
    ]  # fmt: skip
    fix_yaml = ""
    if len(names) == 1:  # the pod's containers with the resource renamed in their requests and limits
        fixed: dict[str, list[dict[str, Any]]] = {}
        for key in ("initContainers", "containers"):
            for c in (pod.get("spec") or {}).get(key) or []:
                res = c.get("resources") or {}
                if any(resource in (res.get(k) or {}) for k in ("limits", "requests")):
                    renamed = {k: {names[0] if r == resource else r: q for r, q in (res.get(k) or {}).items()}
                               for k in ("limits", "requests") if res.get(k)}  # fmt: skip
                    fixed.setdefault(key, []).append({"name": c.get("name"), "resources": renamed})
        fix_yaml = yaml.safe_dump({"spec": fixed}, sort_keys=False) if fixed else ""
    return Finding(
        ERROR, "ResourceNameMismatch", ref,
        f"the pod requests {resource}, which no node advertises, but the GPU nodes advertise {shown}{why}: the "
        "resource name is wrong, the device plugin runs",
        f"request {names[0]} instead of {resource}" if len(names) == 1 else
        f"request one of {shown} instead of {resource}",
        ev, fix_yaml=fix_yaml, nodes=tuple(nodes),
    )  # fmt: skip
