"""Scheduling arithmetic (pure): quantities, pod requests, node free resources, selectors, affinity, taints.

A small model of what kube-scheduler's filters check, enough for `doctor` to say why a pod does not fit and
for `capacity` to count how many would.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from decimal import Decimal
from functools import lru_cache
from typing import Any

from ..selectors import expression_ok, term_matches, tolerates

GPU = "nvidia.com/gpu"
GPU_SHARED = "nvidia.com/gpu.shared"
MIG_PREFIX = "nvidia.com/mig-"
UNSCHEDULABLE_TAINT = "node.kubernetes.io/unschedulable"

_SUFFIX = {  # Kubernetes' (no "K": "1K" is refused)
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
    "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"),
    "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
}  # fmt: skip
_QUANTITY = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)([A-Za-z]*)$")


def quantity(value: Any) -> Decimal:
    """A Kubernetes quantity ("500m", "32Gi", 2) as a number; 0 for what does not parse."""
    return _quantity(str(value).strip())


def valid_quantity(value: str) -> bool:
    """Whether a text is a Kubernetes quantity (what `quantity` reads as itself, not as 0)."""
    m = _QUANTITY.match(value.strip())
    if not m or m.group(2) not in ("", *_SUFFIX):
        return False
    try:
        return Decimal(m.group(1)).is_finite()
    except ArithmeticError:
        return False


@lru_cache(maxsize=4096)  # a cluster's nodes and pods repeat a few values
def _quantity(text: str) -> Decimal:
    m = _QUANTITY.match(text)
    if not m or m.group(2) not in ("", *_SUFFIX):
        return Decimal(0)
    try:
        return Decimal(m.group(1)) * Decimal(str(_SUFFIX.get(m.group(2), 1)))
    except ArithmeticError:
        return Decimal(0)


def is_gpu_resource(name: str) -> bool:
    """Resources the NVIDIA device plugin advertises: whole or shared GPUs and MIG devices."""
    return name.startswith(GPU) or name.startswith(MIG_PREFIX)


def _container_requests(container: dict[str, Any]) -> dict[str, Decimal]:
    res = container.get("resources") or {}
    limits = {k: quantity(v) for k, v in (res.get("limits") or {}).items()}
    requests = {k: quantity(v) for k, v in (res.get("requests") or {}).items()}
    return {**limits, **requests}  # a limit alone is also the request


def _add(into: dict[str, Decimal], more: dict[str, Decimal]) -> dict[str, Decimal]:
    out = dict(into)
    for k, v in more.items():
        out[k] = out.get(k, Decimal(0)) + v
    return out


def pod_level_resource(name: str) -> bool:
    """A resource a pod may set for itself in spec.resources (component-helpers' IsSupportedPodLevelResource)."""
    return name in ("cpu", "memory") or name.startswith("hugepages-")


def pod_requests(pod: dict[str, Any]) -> dict[str, Decimal]:
    """What the scheduler reserves for a pod (component-helpers' PodRequests): the containers summed with the
    sidecars (init containers with restartPolicy Always, which keep running), at least what each init container
    needs beside the sidecars started before it; a pod-level request (spec.resources, PodLevelResources) in place
    of that for cpu, memory and hugepages; plus the pod overhead."""
    spec = pod.get("spec") or {}
    total: dict[str, Decimal] = {}
    for c in spec.get("containers") or []:
        total = _add(total, _container_requests(c))
    sidecars: dict[str, Decimal] = {}
    init_peak: dict[str, Decimal] = {}
    for c in spec.get("initContainers") or []:
        own = _container_requests(c)
        if c.get("restartPolicy") == "Always":
            total = _add(total, own)
            sidecars = _add(sidecars, own)
            need = sidecars
        else:
            need = _add(own, sidecars)
        for k, v in need.items():
            init_peak[k] = max(init_peak.get(k, Decimal(0)), v)
    for k, v in init_peak.items():
        total[k] = max(total.get(k, Decimal(0)), v)
    # Pod-level resources. A limit alone is the request (API defaulting: defaultPodRequests), but for cpu or memory
    # that the containers request: their sum is the pod's request then, as it is already in `total`.
    pod_level = spec.get("resources") or {}
    asked = dict(pod_level.get("requests") or {})
    for k, v in (pod_level.get("limits") or {}).items():
        if k not in asked and (k not in total or k.startswith("hugepages-")):
            asked[k] = v
    for k, v in asked.items():
        if pod_level_resource(k):
            total[k] = quantity(v)
    for k, v in (spec.get("overhead") or {}).items():
        total[k] = total.get(k, Decimal(0)) + quantity(v)
    return total


def container_requests(pod: dict[str, Any]) -> list[tuple[str, dict[str, Decimal]]]:
    """(name, requests) of each init container and container, on its own."""
    spec = pod.get("spec") or {}
    return [(str(c.get("name") or ""), _container_requests(c))
            for key in ("initContainers", "containers") for c in spec.get(key) or []]  # fmt: skip


def gpu_requests(pod: dict[str, Any]) -> dict[str, int]:
    return {k: int(v) for k, v in pod_requests(pod).items() if is_gpu_resource(k) and v > 0}


def terminal(pod: dict[str, Any]) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


# What the DefaultTolerationSeconds admission plugin gives every pod (that has none of its own for these).
ADMISSION_TOLERATIONS = [
    {"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}
    for key in ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable")
]
# Taints a node has for its state, not its role, which a new machine does not have: the node lifecycle controller's
# and the kubelet's (NotReady, unreachable, pressure, no network, cordon), the one an admin sets on a node that is
# shut down, the cloud controller's (not initialized) and cluster-autoscaler's and Karpenter's (being removed).
NODE_STATE_TAINTS = (
    "node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable", "node.kubernetes.io/memory-pressure",
    "node.kubernetes.io/disk-pressure", "node.kubernetes.io/pid-pressure", "node.kubernetes.io/network-unavailable",
    UNSCHEDULABLE_TAINT, "node.kubernetes.io/out-of-service", "node.cloudprovider.kubernetes.io/uninitialized",
    "ToBeDeletedByClusterAutoscaler", "karpenter.sh/disrupted", "karpenter.sh/disruption",
)  # fmt: skip


# The tolerations the DaemonSet controller adds to every daemon pod (pkg/controller/daemon/util).
DAEMON_TOLERATIONS = [
    {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute"},
    {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute"},
    {"key": "node.kubernetes.io/disk-pressure", "operator": "Exists", "effect": "NoSchedule"},
    {"key": "node.kubernetes.io/memory-pressure", "operator": "Exists", "effect": "NoSchedule"},
    {"key": "node.kubernetes.io/pid-pressure", "operator": "Exists", "effect": "NoSchedule"},
    {"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoSchedule"},
]


@dataclass
class NodeView:
    """A node as the scheduler filters see it."""

    name: str
    labels: dict[str, str]
    taints: list[dict[str, Any]]
    unschedulable: bool
    allocatable: dict[str, Decimal]
    capacity: dict[str, Decimal]
    used: dict[str, Decimal] = field(default_factory=dict)
    pods: list[dict[str, Any]] = field(default_factory=list)  # non-terminal pods bound to it

    @classmethod
    def from_node(cls, node: dict[str, Any]) -> NodeView:
        meta, spec, status = node.get("metadata") or {}, node.get("spec") or {}, node.get("status") or {}
        return cls(
            name=meta.get("name", ""),
            labels=dict(meta.get("labels") or {}),
            taints=list(spec.get("taints") or []),
            unschedulable=bool(spec.get("unschedulable")),
            allocatable={k: quantity(v) for k, v in (status.get("allocatable") or {}).items()},
            capacity={k: quantity(v) for k, v in (status.get("capacity") or {}).items()},
        )

    def add_pod(self, pod: dict[str, Any], requests: dict[str, Decimal] | None = None) -> None:
        self.pods.append(pod)
        for k, v in (pod_requests(pod) if requests is None else requests).items():
            self.used[k] = self.used.get(k, Decimal(0)) + v
        self.used["pods"] = self.used.get("pods", Decimal(0)) + 1

    def free(self, resource: str) -> Decimal:
        return self.allocatable.get(resource, Decimal(0)) - self.used.get(resource, Decimal(0))


def nodes_with_pods(nodes: list[dict[str, Any]], pods: list[dict[str, Any]]) -> dict[str, NodeView]:
    views = {n["metadata"]["name"]: NodeView.from_node(n) for n in nodes}
    for pod in pods:
        node = (pod.get("spec") or {}).get("nodeName")
        if node in views and not terminal(pod):
            views[node].add_pod(pod)
    return views


def required_terms(pod: dict[str, Any]) -> list[dict[str, Any]]:
    affinity = ((pod.get("spec") or {}).get("affinity") or {}).get("nodeAffinity") or {}
    required = affinity.get("requiredDuringSchedulingIgnoredDuringExecution") or {}
    return list(required.get("nodeSelectorTerms") or [])


def selector_ok(pod: dict[str, Any], labels: dict[str, str], name: str) -> bool:
    """nodeSelector and required node affinity (terms ORed, requirements ANDed) on node `name` with `labels`."""
    selector = (pod.get("spec") or {}).get("nodeSelector") or {}
    if any(labels.get(k) != v for k, v in selector.items()):
        return False
    terms = required_terms(pod)
    if not terms:
        return True
    return any(term_matches(t, labels, name) for t in terms)


def untolerated_taints(pod: dict[str, Any], node: NodeView) -> list[dict[str, Any]]:
    """The node's NoSchedule/NoExecute taints that the pod does not tolerate (a cordon counts as a taint)."""
    tolerations = (pod.get("spec") or {}).get("tolerations") or []
    taints = [t for t in node.taints if t.get("effect") in ("NoSchedule", "NoExecute")]
    return [t for t in taints if t.get("key") != UNSCHEDULABLE_TAINT and not any(tolerates(x, t) for x in tolerations)]


def cordoned(pod: dict[str, Any], node: NodeView) -> bool:
    if not node.unschedulable:
        return False
    tolerations = (pod.get("spec") or {}).get("tolerations") or []
    taint = {"key": UNSCHEDULABLE_TAINT, "effect": "NoSchedule"}
    return not any(tolerates(x, taint) for x in tolerations)


def short_of(requests: dict[str, Decimal], node: NodeView, count: int = 1) -> list[str]:
    """Resources of which the node has less free than `count` pods request (pods included)."""
    need = dict(requests)
    need["pods"] = Decimal(1)
    return sorted(k for k, v in need.items() if v > 0 and node.free(k) < v * count)


def _everything(selector: Any) -> bool:
    """A label selector without requirements ({}): it matches everything."""
    return isinstance(selector, dict) and not selector.get("matchLabels") and not selector.get("matchExpressions")


def _match_labels(selector: Any, labels: dict[str, str]) -> bool:
    """A label selector as kube-scheduler reads it (LabelSelectorAsSelector): none matches nothing, {} everything."""
    if not isinstance(selector, dict):
        return False
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    return all(expression_ok(e, labels) for e in selector.get("matchExpressions") or [])


def anti_affinity_terms(pod: dict[str, Any]) -> list[dict[str, Any]]:
    anti = ((pod.get("spec") or {}).get("affinity") or {}).get("podAntiAffinity") or {}
    return list(anti.get("requiredDuringSchedulingIgnoredDuringExecution") or [])


def _namespace(pod: dict[str, Any]) -> str:
    return (pod.get("metadata") or {}).get("namespace") or "default"


def _term_matches(term: dict[str, Any], owner: dict[str, Any], pod: dict[str, Any], labels_only: bool = False) -> bool:
    """Whether a pod affinity term of `owner` matches `pod` (kube-scheduler framework AffinityTerm.Matches): its
    labelSelector, and the pod in its `namespaces` or those its namespaceSelector selects ({}: every one; another is
    read as none, see namespaces_unread), the owner's when both are unset. `labels_only`: the labelSelector alone."""
    if not _match_labels(term.get("labelSelector"), (pod.get("metadata") or {}).get("labels") or {}):
        return False
    names, selector = term.get("namespaces") or [], term.get("namespaceSelector")
    if not names and selector is None:
        names = [_namespace(owner)]
    return labels_only or _namespace(pod) in names or _everything(selector)


def namespaces_unread(pod: dict[str, Any], others: list[dict[str, Any]]) -> bool:
    """Whether a required anti-affinity term of the pod, or of `others` matching its labels, selects namespaces by
    their labels (a namespaceSelector other than {}), which are not read here: it is read as selecting none."""
    theirs = [t for other in others for t in anti_affinity_terms(other) if _term_matches(t, other, pod, True)]
    return any(t.get("namespaceSelector") is not None and not _everything(t["namespaceSelector"])
               for t in anti_affinity_terms(pod) + theirs)  # fmt: skip


def _hostname_terms(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [t for t in anti_affinity_terms(pod) if t.get("topologyKey") == "kubernetes.io/hostname"]


def anti_affinity_blocks(pod: dict[str, Any], node: NodeView) -> bool:
    """A required pod anti-affinity term on the hostname topology that a pod on the node matches."""
    return any(_term_matches(t, pod, other) for t in _hostname_terms(pod) for other in node.pods)


def repelling_terms(pod: dict[str, Any], others: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(other pod, term) of each required anti-affinity term of `others` that matches the pod, on any topology."""
    return [(other, t) for other in others for t in anti_affinity_terms(other) if _term_matches(t, other, pod)]


def repelled_by(pod: dict[str, Any], node: NodeView) -> dict[str, Any] | None:
    """A pod on the node whose required anti-affinity term on the hostname topology matches the pod: kube-scheduler's
    InterPodAffinity filter checks both ways (interpodaffinity/filtering.go satisfyExistingPodsAntiAffinity)."""
    terms = repelling_terms(pod, node.pods)
    return next((other for other, t in terms if t.get("topologyKey") == "kubernetes.io/hostname"), None)


def self_anti_affinity(pod: dict[str, Any]) -> bool:
    """Whether copies of the pod repel each other per node (required anti-affinity matching its own labels)."""
    return any(_term_matches(t, pod, pod) for t in _hostname_terms(pod))


def fmt(value: Decimal, resource: str = "") -> str:
    """A quantity for people: GiB for memory, plain numbers otherwise."""
    if resource in ("memory", "ephemeral-storage") or resource.startswith("hugepages-"):
        gib = value / Decimal(2**30)
        return f"{gib.normalize():f}Gi" if gib == gib.to_integral_value() else f"{gib:.1f}Gi"
    return f"{value.normalize():f}"
