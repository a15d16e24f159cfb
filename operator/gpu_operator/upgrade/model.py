"""Inputs and outputs of the driver-upgrade planner: label/annotation names, states, node and pod
projections, and the actions a plan asks the adapter to carry out. All immutable, all pure.

Upstream names (label values, annotation keys) are verbatim; the annotations marked "ours" are
additions that keep every piece of progress in the cluster, so an operator restart loses nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from ..readiness import REVISION_HASH, containers_ready

# Node label holding the per-node state, and the opt-out labels.
STATE_LABEL = "nvidia.com/gpu-driver-upgrade-state"
SKIP_LABEL = "nvidia.com/gpu-driver-upgrade.skip"
DRAIN_SKIP_LABEL = "nvidia.com/gpu-driver-upgrade-drain.skip"

# Node annotations (upstream).
REQUESTED_ANNOTATION = "nvidia.com/gpu-driver-upgrade-requested"
INITIAL_UNSCHEDULABLE_ANNOTATION = "nvidia.com/gpu-driver-upgrade.node-initial-state.unschedulable"
WAIT_FOR_JOBS_START_ANNOTATION = "nvidia.com/gpu-driver-upgrade-wait-for-pod-completion-start-time"
VALIDATION_START_ANNOTATION = "nvidia.com/gpu-driver-upgrade-validation-start-time"
# "true" while the operator orchestrates upgrades: k8s-driver-manager then leaves eviction and drain to it.
AUTO_UPGRADE_ANNOTATION = "nvidia.com/gpu-driver-upgrade-enabled"
# Node annotations (ours).
POD_DELETION_START_ANNOTATION = "nvidia.com/gpu-driver-upgrade-pod-deletion-start-time"
DRAIN_START_ANNOTATION = "nvidia.com/gpu-driver-upgrade-drain-start-time"
DELETED_DRIVER_POD_ANNOTATION = "nvidia.com/gpu-driver-upgrade-deleted-driver-pod"
FAILURE_REASON_ANNOTATION = "nvidia.com/gpu-driver-upgrade-failure-reason"

# Bookkeeping of one upgrade, removed when it ends (and when a new one starts, in case a crash left some).
TRANSIENT_ANNOTATIONS = (
    WAIT_FOR_JOBS_START_ANNOTATION,
    POD_DELETION_START_ANNOTATION,
    DRAIN_START_ANNOTATION,
    VALIDATION_START_ANNOTATION,
    DELETED_DRIVER_POD_ANNOTATION,
    FAILURE_REASON_ANNOTATION,
)

EVENT_REASON = "GPUDriverUpgrade"

# States: the label values, verbatim. UNKNOWN is the label being absent.
UNKNOWN = ""
DONE = "upgrade-done"
REQUIRED = "upgrade-required"
CORDON_REQUIRED = "cordon-required"
WAIT_FOR_JOBS_REQUIRED = "wait-for-jobs-required"
POD_DELETION_REQUIRED = "pod-deletion-required"
DRAIN_REQUIRED = "drain-required"
POD_RESTART_REQUIRED = "pod-restart-required"
VALIDATION_REQUIRED = "validation-required"
UNCORDON_REQUIRED = "uncordon-required"
FAILED = "upgrade-failed"

STATES = (
    UNKNOWN,
    DONE,
    REQUIRED,
    CORDON_REQUIRED,
    WAIT_FOR_JOBS_REQUIRED,
    POD_DELETION_REQUIRED,
    DRAIN_REQUIRED,
    POD_RESTART_REQUIRED,
    VALIDATION_REQUIRED,
    UNCORDON_REQUIRED,
    FAILED,
)
_KNOWN_STATES = frozenset(STATES)
# States that hold an upgrade slot (upstream: everything but unknown, done and required).
IN_PROGRESS_STATES = frozenset(STATES) - {UNKNOWN, DONE, REQUIRED}
# States in which the planner looks at the workload pods of a node (the adapter reads them fresh).
NEEDS_PODS = frozenset({WAIT_FOR_JOBS_REQUIRED, POD_DELETION_REQUIRED, DRAIN_REQUIRED})

VALIDATION_TIMEOUT_S = 600
CRASH_LOOP_RESTARTS = 10  # a container not Ready with more restarts than this is crash-looping

FINISHED_PHASES = frozenset({"Succeeded", "Failed"})
GPU_RESOURCE_PREFIXES = ("nvidia.com/gpu", "nvidia.com/mig-")
DEPLOY_PREFIX = "nvidia.com/gpu.deploy."  # the node labels that place the operands (and GPU clients) on a node
DRA_GPU_DRIVER = "gpu.nvidia.com"  # the NVIDIA GPU DRA driver (upstream's NVIDIAGPUDRADriverName)

PodDict = Mapping[str, Any]


# Driver/validator pod projections are dicts shaped like readiness.py's: {"metadata": {"name", "labels",
# "deletionTimestamp"?}, "status": {"phase", "containerStatuses": [...], "initContainerStatuses"?: [not Ready ones]}}


def pod_name(pod: PodDict) -> str:
    return str((pod.get("metadata") or {}).get("name", ""))


def pod_revision(pod: PodDict) -> str | None:
    labels = (pod.get("metadata") or {}).get("labels") or {}
    value = labels.get(REVISION_HASH)
    return str(value) if value is not None else None


def pod_terminating(pod: PodDict) -> bool:
    return bool((pod.get("metadata") or {}).get("deletionTimestamp"))


def pod_is_ready(pod: PodDict) -> bool:
    """Upstream's rule: its containers, not the pod's Ready condition (a NotReady node is the planner's own check)."""
    return not pod_terminating(pod) and containers_ready(pod)


def crash_loop(pod: PodDict) -> tuple[str, int] | None:
    """(container, restarts) of a container that is not Ready and restarted more than 10 times."""
    status = pod.get("status") or {}
    for c in list(status.get("initContainerStatuses") or []) + list(status.get("containerStatuses") or []):
        restarts = int(c.get("restartCount") or 0)
        if not c.get("ready") and restarts > CRASH_LOOP_RESTARTS:
            return str(c.get("name", "?")), restarts
    return None


# A container waiting for one of these is only starting (a wait worth no mention).
_STARTING = frozenset({"PodInitializing", "ContainerCreating"})


def container_waiting(pod: PodDict) -> str | None:
    """"init container k8s-driver-manager: CrashLoopBackOff", "container nvidia-driver-ctr: ImagePullBackOff":
    the first container not Ready (init containers first) that waits for a reason other than starting, or None."""
    status = pod.get("status") or {}
    for key, what in (("initContainerStatuses", "init container"), ("containerStatuses", "container")):
        for c in status.get(key) or []:
            reason = ((c.get("state") or {}).get("waiting") or {}).get("reason")
            if not c.get("ready") and reason and reason not in _STARTING:
                return f"{what} {c.get('name', '?')}: {reason}"
    return None


def _relevant(key: str) -> bool:
    return key.startswith("nvidia.com/")


@dataclass(frozen=True)
class UpgradeNode:
    """One node the driver DaemonSets manage, as the planner needs to see it."""

    name: str
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    unschedulable: bool = False
    ready: bool = True  # the node's Ready condition
    driver_pod: PodDict | None = None
    driver_revision: str | None = None  # newest ControllerRevision hash of this node's driver DaemonSet
    validator_pod: PodDict | None = None
    refused: str = ""  # why the policy's driver cannot run here (compat.py): the node is skipped
    # The kernel a precompiled node now runs, when its driver pod is still in the pool of its old kernel.
    pool_move: str = ""
    # The driver pod has no DaemonSet and none of ours will adopt it: its DaemonSet was deleted with its pods left
    # running (the driver handed between the ClusterPolicy and NVIDIADrivers). Replaced as an out-of-date one.
    orphaned: bool = False
    # The owner label (nvidiadriver_api.OWNER_LABEL; "": none) the node moves to at pod restart: another NVIDIADriver
    # took it while its driver pod ran, and that pod's DaemonSet would drop it as soon as the label moved.
    owner_move: str | None = None
    # The driver-kernel label the node takes with owner_move (its new NVIDIADriver's: "" none; None: unchanged).
    owner_kernel: str | None = None
    # The out-of-date driver pod's revision has its DaemonSet's newest DRIVER_CONFIG_DIGEST: only fields outside the
    # driver's install changed (tolerations, labels, probes, resources). Upstream v26.7 (its restart-only predicate)
    # then restarts the driver pod after the cordon, without waiting for jobs, evicting or draining.
    restart_only: bool = False

    @classmethod
    def from_node(
        cls,
        node: Mapping[str, Any],
        driver_pod: PodDict | None = None,
        driver_revision: str | None = None,
        validator_pod: PodDict | None = None,
    ) -> UpgradeNode:
        """Project a Node object (keeps only nvidia.com/ labels and annotations)."""
        meta = node.get("metadata") or {}
        conditions = (node.get("status") or {}).get("conditions") or []
        return cls(
            name=str(meta.get("name", "")),
            labels={k: v for k, v in (meta.get("labels") or {}).items() if _relevant(k)},
            annotations={k: v for k, v in (meta.get("annotations") or {}).items() if _relevant(k)},
            unschedulable=bool((node.get("spec") or {}).get("unschedulable")),
            ready=any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions),
            driver_pod=driver_pod,
            driver_revision=driver_revision,
            validator_pod=validator_pod,
        )

    @cached_property
    def state(self) -> str:
        """The state label; a value we do not know reads as unknown (and gets overwritten). Read once per node
        object (the planner reads it several times a pass for each node; the labels are never changed in place)."""
        value = self.labels.get(STATE_LABEL, UNKNOWN)
        return value if value in _KNOWN_STATES else UNKNOWN

    @cached_property
    def skipped(self) -> bool:
        return self.labels.get(SKIP_LABEL) == "true" or bool(self.refused)

    @property
    def requested(self) -> bool:
        return self.annotations.get(REQUESTED_ANNOTATION) == "true"

    @property
    def initially_unschedulable(self) -> bool:
        return INITIAL_UNSCHEDULABLE_ANNOTATION in self.annotations

    @property
    def unavailable(self) -> bool:
        """Cordoned or NotReady right now."""
        return self.unschedulable or not self.ready

    @property
    def counted(self) -> bool:
        """In maxUnavailable's base: a driver pod runs here (upstream builds its upgrade state from the driver pods),
        or the node is mid-upgrade (its driver pod may be gone, deleted by the upgrade: the replacement is coming)."""
        return self.driver_pod is not None or self.state in IN_PROGRESS_STATES

    @property
    def counted_unavailable(self) -> bool:
        """Counted against maxUnavailable: mid-upgrade, or counted (see there) and cordoned or NotReady. Upstream's
        GetCurrentUnavailableNodes walks the same driver-pod state as its total, GetTotalManagedNodes."""
        return self.state in IN_PROGRESS_STATES or (self.driver_pod is not None and self.unavailable)

    @property
    def driver_out_of_date(self) -> bool:
        """The driver pod runs another revision than its DaemonSet's newest (unknown revision: not out of date), or
        is an orphan, or of the old kernel's pool, or of the NVIDIADriver the node moves away from."""
        if self.driver_pod is not None and (self.pool_move or self.orphaned or self.owner_move is not None):
            return True
        if self.driver_pod is None or self.driver_revision is None:
            return False
        return pod_revision(self.driver_pod) != self.driver_revision

    @property
    def restarts_only(self) -> bool:
        """The upgrade restarts the driver pod after the cordon and does nothing else (restart_only), as upstream:
        never for a requested upgrade, an orphan, or a move to another pool or NVIDIADriver (another DaemonSet)."""
        return (
            self.restart_only
            and not self.requested
            and not self.orphaned
            and not self.pool_move
            and self.owner_move is None
        )

    @property
    def driver_in_sync_and_ready(self) -> bool:
        return self.driver_pod is not None and not self.driver_out_of_date and pod_is_ready(self.driver_pod)


def _uses_gpu(spec: Mapping[str, Any]) -> bool:
    for c in list(spec.get("containers") or []) + list(spec.get("initContainers") or []):
        res = c.get("resources") or {}
        for section in ("requests", "limits"):
            if any(str(k).startswith(GPU_RESOURCE_PREFIXES) for k in (res.get(section) or {})):
                return True
    return False


def claim_names(pod: Mapping[str, Any]) -> list[str]:
    """The ResourceClaims a pod holds: each spec.resourceClaims entry's claim by name, or for one made from a
    template the name its status gives (none yet: nothing is allocated for it)."""
    made = {s.get("name"): s.get("resourceClaimName")
            for s in (pod.get("status") or {}).get("resourceClaimStatuses") or []}  # fmt: skip
    wanted = ((pod.get("spec") or {}).get("resourceClaims")) or []
    return [str(name) for c in wanted if (name := c.get("resourceClaimName") or made.get(c.get("name")))]


def claim_holds_gpu(claim: Mapping[str, Any]) -> bool:
    """Whether a ResourceClaim is allocated by the NVIDIA GPU DRA driver, other than for admin access (monitoring
    pods hold such claims without using the GPU)."""
    results = (((claim.get("status") or {}).get("allocation") or {}).get("devices") or {}).get("results") or []
    return any(r.get("driver") == DRA_GPU_DRIVER and not r.get("adminAccess") for r in results)


@dataclass(frozen=True)
class WorkloadPod:
    """A pod on a GPU node that pod deletion, drain or waitForCompletion may have to deal with."""

    namespace: str
    name: str
    node: str
    # Requests nvidia.com/gpu* or nvidia.com/mig-*, or holds a ResourceClaim of DRA_GPU_DRIVER (the adapter reads it).
    uses_gpu: bool = False
    has_emptydir: bool = False
    is_daemonset_pod: bool = False  # also static (mirror) pods: never evicted nor deleted
    labels: dict[str, str] = field(default_factory=dict)
    phase: str = "Running"
    terminating: bool = False  # deletionTimestamp set: an eviction or deletion is under way
    controlled: bool = True  # an owner reference with `controller: true`: something recreates the pod elsewhere
    deploy_selector: tuple[str, ...] = ()  # the nvidia.com/gpu.deploy.* keys of its nodeSelector

    @classmethod
    def from_pod(cls, pod: Mapping[str, Any]) -> WorkloadPod:
        """Project a Pod object."""
        meta = pod.get("metadata") or {}
        spec = pod.get("spec") or {}
        owners = meta.get("ownerReferences") or []
        return cls(
            namespace=str(meta.get("namespace", "")),
            name=str(meta.get("name", "")),
            node=str(spec.get("nodeName") or ""),
            uses_gpu=_uses_gpu(spec),
            has_emptydir=any("emptyDir" in v for v in spec.get("volumes") or []),
            is_daemonset_pod=belongs_to_node(pod),
            labels=dict(meta.get("labels") or {}),
            phase=str((pod.get("status") or {}).get("phase") or "Pending"),
            terminating=bool(meta.get("deletionTimestamp")),
            controlled=any(o.get("controller") for o in owners),
            deploy_selector=tuple(k for k in spec.get("nodeSelector") or () if k.startswith(DEPLOY_PREFIX)),
        )

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def finished(self) -> bool:
        return self.phase in FINISHED_PHASES


def belongs_to_node(pod: Mapping[str, Any]) -> bool:
    """A DaemonSet's pod or a static pod's mirror: it belongs to its node (never evicted; a new node like this one
    runs it too)."""
    meta = pod.get("metadata") or {}
    if "kubernetes.io/config.mirror" in (meta.get("annotations") or {}):
        return True
    return any(o.get("kind") in ("DaemonSet", "Node") for o in meta.get("ownerReferences") or [])


def eviction_refused(pods: Iterable[WorkloadPod], *, force: bool, delete_emptydir: bool, field: str) -> str | None:
    """Why `pods` may not be evicted, as kubectl drain's rules (upstream's drain helper) say, or None: a pod with
    emptyDir storage needs `{field}.deleteEmptyDir`, a pod no controller owns (nothing recreates it) `{field}.force`.
    Pods already terminating are on their way out and not held against it."""
    live = [p for p in pods if not p.terminating]
    if not delete_emptydir:
        protected = [p.ref for p in live if p.has_emptydir]
        if protected:
            which = f"pod {protected[0]} uses" if len(protected) == 1 else f"pods {names(protected)} use"
            return f"{which} emptyDir storage and {field}.deleteEmptyDir is false"
    if not force:
        bare = [p.ref for p in live if not p.controlled]
        if bare:
            which = f"pod {bare[0]} has" if len(bare) == 1 else f"pods {names(bare)} have"
            return f"{which} no controller (nothing would recreate it) and {field}.force is false"
    return None


MAX_LISTED = 3  # pods or nodes named in one sentence


def names(items: Iterable[str]) -> str:
    """ "a, b, c and 2 more"."""
    items = list(items)
    shown = ", ".join(items[:MAX_LISTED])
    return shown + (f" and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else "")


# Actions. The adapter carries them out in the order given, stopping a node's actions at the first error;
# a list cut short at any point is safe (the next pass observes where it stopped and goes on from there).


@dataclass(frozen=True)
class SetState:
    node: str
    state: str  # "" removes the label


@dataclass(frozen=True)
class Cordon:
    node: str


@dataclass(frozen=True)
class Uncordon:
    node: str


@dataclass(frozen=True)
class Annotate:
    node: str
    key: str
    value: str | None  # None removes the annotation


@dataclass(frozen=True)
class EvictPods:
    node: str
    pods: tuple[tuple[str, str], ...]  # (namespace, name); always through the Eviction API: PodDisruptionBudgets hold
    delete_emptydir: bool  # informational: pods with emptyDir volumes may be among them


@dataclass(frozen=True)
class DeleteDriverPod:
    node: str
    pod_name: str


@dataclass(frozen=True)
class MovePool:
    """Move a precompiled node to the driver pool of its new kernel (its driver-kernel label)."""

    node: str
    kernel: str


@dataclass(frozen=True)
class MoveOwner:
    """Move a node to the DaemonSets of the NVIDIADriver that now drives it (its owner label; "": removed), with the
    driver-kernel label that NVIDIADriver's DaemonSets select on (`kernel`; "": removed, None: unchanged)."""

    node: str
    owner: str
    kernel: str | None = None


@dataclass(frozen=True)
class Event:
    node: str
    type: str  # "Normal" or "Warning"
    reason: str
    message: str


Action = SetState | Cordon | Uncordon | Annotate | EvictPods | DeleteDriverPod | MovePool | MoveOwner | Event


@dataclass(frozen=True)
class Counters:
    """Numbers for the gpu_operator_nodes_upgrades_* metrics, taken before the pass's actions."""

    total: int = 0  # managed nodes with a driver pod, or mid-upgrade
    in_progress: int = 0  # nodes holding a slot (upgrade-failed included, as upstream)
    done: int = 0
    failed: int = 0
    available: int = 0  # upgrades that may start now
    pending: int = 0  # upgrade-required, not skipped
    skipped: int = 0  # nodes labelled nvidia.com/gpu-driver-upgrade.skip=true
    unavailable: int = 0  # of total: cordoned, NotReady or upgrading
    max_unavailable: int = 0  # maxUnavailable resolved against total


@dataclass(frozen=True)
class Plan:
    actions: list[Action] = field(default_factory=list)
    waiting: dict[str, str] = field(default_factory=dict)  # node -> why it is not moving on
    counters: Counters = Counters()
    started: tuple[str, ...] = ()  # nodes whose upgrade this pass started (took a slot)
    # Nodes whose wait is ordinary progress (a pod starting, a validator coming up): no event for it.
    quiet: frozenset[str] = frozenset()
    # Nodes whose upgrade ended in this pass without an event (the happy path): what it did, for the log.
    finished: dict[str, str] = field(default_factory=dict)

    def actions_for(self, node: str) -> list[Action]:
        return [a for a in self.actions if a.node == node]
