"""What doctor reports (findings) and what it reads (one view of the cluster, read once)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ..observe import Snapshot
from .sched import NodeView, nodes_with_pods, pod_requests

ERROR, WARNING, INFO = "error", "warning", "info"
SEVERITY_ORDER = {ERROR: 0, WARNING: 1, INFO: 2}


@dataclass(frozen=True)
class Evidence:
    object: str  # "Pod ns/name", "Node n", "DaemonSet ns/name"
    field: str  # where it was seen: "status.conditions[PodScheduled].message"
    message: str


@dataclass
class Finding:
    severity: str  # error | warning | info
    kind: str  # a stable name: InsufficientGPU, Fragmentation, ...
    object: str  # the object the finding is about
    summary: str  # the cause, one sentence
    fix: str  # what to do, in plain words
    evidence: list[Evidence] = field(default_factory=list)
    fix_yaml: str = ""  # corrected YAML where it helps
    details: list[str] = field(default_factory=list)  # extra lines (a per-node table)
    nodes: tuple[str, ...] = ()  # the nodes concerned (for --node)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["nodes"] = list(self.nodes)
        return {k: v for k, v in out.items() if v not in ("", [], ())}


@dataclass(frozen=True)
class DaemonPods:
    """The pods of a DaemonSet whose status says all are ready, not read one by one: its pod template, and the
    nodes it runs on."""

    pod: dict[str, Any]
    nodes: tuple[str, ...]


@dataclass
class Cluster:
    """Everything doctor looks at, read once: the operator's snapshot plus full nodes, pods and events.

    `pods` holds every pod but the operand pods of settled DaemonSets, which `daemon_pods` stands in for (they
    count in the nodes' resources); the snapshot's `pods` holds the operand pods that were read."""

    snapshot: Snapshot
    nodes: list[dict[str, Any]]
    pods: list[dict[str, Any]]  # every namespace
    events: list[dict[str, Any]]  # every namespace (the Warning events about pods, and FailedCreate)
    namespace: str  # the operator's (operands) namespace
    daemon_pods: list[DaemonPods] = field(default_factory=list)
    # (namespace, name) -> the ReplicaSets read for workloads.refused_creations (a refused one and those of its
    # Deployment with pods created since, see workloads.replica_set_reads); None: not readable (403)
    replica_sets: dict[tuple[str, str], dict[str, Any]] | None = field(default_factory=dict)
    # (kind, namespace, name) of the controllers with a refusal that no longer exist (workloads.owner_reads)
    gone: frozenset[tuple[str, str, str]] = frozenset()
    _views: dict[str, NodeView] | None = None
    _events: dict[tuple[str, str, str], list[dict[str, Any]]] | None = None
    memo: dict[str, Any] = field(default_factory=dict)  # computed once per run (upgrade reasons, stack findings)

    @property
    def views(self) -> dict[str, NodeView]:
        """Nodes with the resources their bound pods use (computed once)."""
        if self._views is None:
            views = nodes_with_pods(self.nodes, self.pods)
            for daemon in self.daemon_pods:
                requests = pod_requests(daemon.pod)
                for node in daemon.nodes:
                    if node in views:
                        views[node].add_pod(daemon.pod, requests)
            self._views = views
        return self._views

    def events_for(self, kind: str, namespace: str, name: str) -> list[dict[str, Any]]:
        """The object's events, oldest first (indexed once)."""
        if self._events is None:
            index: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
            for e in self.events:
                obj = e.get("involvedObject") or {}
                key = (obj.get("kind") or "", obj.get("namespace") or "", obj.get("name") or "")
                index.setdefault(key, []).append(e)
            for found in index.values():
                found.sort(key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")
            self._events = index
        return self._events.get((kind, namespace, name), [])


def pod_ref(pod: dict[str, Any]) -> str:
    meta = pod.get("metadata") or {}
    return f"Pod {meta.get('namespace', 'default')}/{meta.get('name', '?')}"


def exit_status(findings: list[Finding]) -> int:
    """0 healthy, 1 warnings, 2 errors (info findings do not count)."""
    severities = {f.severity for f in findings}
    return 2 if ERROR in severities else 1 if WARNING in severities else 0
