"""Facts several finding families need: the active policy, scheduler messages, upgrade reasons, drivers."""

from __future__ import annotations

import re
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any

from ..api import ClusterPolicySpec, PolicyError, parse_policy
from ..status import active_policy
from .model import Cluster, Evidence, pod_ref
from .sched import GPU, GPU_SHARED, MIG_PREFIX, container_requests

UPGRADE_STATE = "nvidia.com/gpu-driver-upgrade-state"
SETTLED_UPGRADE = ("", "upgrade-done")  # upgrade states in which a node waits for nothing
MIG_STRATEGY_LABEL = "nvidia.com/mig.strategy"
MIG_STATE_LABEL = "nvidia.com/mig.config.state"
MIG_CONFIG_LABEL = "nvidia.com/mig.config"
REPLICAS_LABEL = "nvidia.com/gpu.replicas"
MEMORY_LABEL = "nvidia.com/gpu.memory"  # GFD: MiB per GPU
SHARING_LABEL = "nvidia.com/gpu.sharing-strategy"
PRODUCT_LABEL = "nvidia.com/gpu.product"
DEVICE_PLUGIN_DEPLOY = "nvidia.com/gpu.deploy.device-plugin"
_DRIVER_LABELS = (
    ("nvidia.com/cuda.driver-version.major", "nvidia.com/cuda.driver-version.minor",
     "nvidia.com/cuda.driver-version.revision"),
    ("nvidia.com/cuda.driver.major", "nvidia.com/cuda.driver.minor", "nvidia.com/cuda.driver.rev"),
)  # fmt: skip
_DRIVER_TAG = re.compile(r"^(\d{3})\.(\d+)(?:\.(\d+))?")
# What the DefaultTolerationSeconds admission plugin adds to every pod: not the user's own.
_ADMISSION_TOLERATIONS = ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable")


def policy(cluster: Cluster) -> tuple[str | None, ClusterPolicySpec | None]:
    """The active ClusterPolicy's name and parsed spec (spec None when absent or invalid)."""
    name = active_policy(list(cluster.snapshot.policies.values()))
    if name is None:
        return None, None
    try:
        return name, parse_policy(cluster.snapshot.policies[name])
    except PolicyError:
        return name, None


def scheduler_message(cluster: Cluster, pod: dict[str, Any]) -> tuple[str, str]:
    """(field, message) of why the scheduler left the pod Pending: its PodScheduled condition or the last event."""
    for c in (pod.get("status") or {}).get("conditions") or []:
        if c.get("type") == "PodScheduled" and c.get("status") == "False" and c.get("message"):
            return "status.conditions[PodScheduled].message", str(c["message"])
    meta = pod.get("metadata") or {}
    events = cluster.events_for("Pod", meta.get("namespace") or "", meta.get("name", ""))
    failed = [e for e in events if e.get("reason") == "FailedScheduling"]
    if failed:
        return "event FailedScheduling", str(failed[-1].get("message") or "")
    return "", ""


def admission_toleration(toleration: dict[str, Any]) -> bool:
    """Whether a toleration is one the API server added (not-ready/unreachable, NoExecute for 300 s)."""
    return (
        toleration.get("key") in _ADMISSION_TOLERATIONS
        and toleration.get("operator") == "Exists"
        and toleration.get("effect") == "NoExecute"
        and toleration.get("tolerationSeconds") == 300
    )


def parse_time(value: Any) -> datetime | None:
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")) if value else None
    except ValueError:
        return None


def event_time(event: dict[str, Any]) -> datetime | None:
    series = event.get("series") or {}
    return parse_time(series.get("lastObservedTime") or event.get("lastTimestamp") or event.get("eventTime"))


# Conditions the kubelet sets True once the pod's sandbox is up (PodHasNetwork before Kubernetes 1.29).
_SANDBOX_READY = ("PodReadyToStartContainers", "PodHasNetwork")
# Events of the steps that follow the sandbox: the kubelet pulls and creates containers only in a sandbox.
_AFTER_SANDBOX = ("Pulling", "Pulled", "Created", "Started")
# Waiting reasons the kubelet gives a container before it tried to start it (also while the sandbox fails).
_BEFORE_START = ("ContainerCreating", "PodInitializing")


def _sandbox_up(events: list[dict[str, Any]], status: dict[str, Any], when: datetime | None) -> bool:
    """Whether the pod's sandbox came up after a failure at `when` (None: unknown, any sign counts): the
    sandbox-ready condition turned True, a pull or container event, or a container waiting on a later step."""

    def after(t: datetime | None) -> bool:
        return t is not None and (when is None or t > when)

    if any(c.get("type") in _SANDBOX_READY and c.get("status") == "True"
           and after(parse_time(c.get("lastTransitionTime"))) for c in status.get("conditions") or []):  # fmt: skip
        return True
    if any(e.get("reason") in _AFTER_SANDBOX and after(event_time(e)) for e in events):
        return True
    return any(
        ((cs.get("state") or {}).get("waiting") or {}).get("reason") not in (None, *_BEFORE_START)
        for cs in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or [])
    )


def sandbox_failure(cluster: Cluster, pod: dict[str, Any]) -> dict[str, Any] | None:
    """The pod's last FailedCreatePodSandBox event if it still holds: no container of the pod has started and the
    sandbox has not come up since (a pod may wait pulling its image), or the event is newer than the last container
    start or stop. A pod created before the toolkit configured the runtime keeps such an event after its sandbox
    came up."""
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    events = cluster.events_for("Pod", meta.get("namespace") or "", meta.get("name", ""))
    failed = [e for e in events if e.get("reason") == "FailedCreatePodSandBox"]
    if not failed:
        return None
    started, last = False, None
    for cs in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
        ran = [(cs.get("state") or {}).get("running"), (cs.get("state") or {}).get("terminated"),
               (cs.get("lastState") or {}).get("terminated")]  # fmt: skip
        started = started or cs.get("restartCount", 0) > 0 or any(r is not None for r in ran)
        for when in (parse_time(r.get(k)) for r in ran if r for k in ("startedAt", "finishedAt")):
            if when is not None and (last is None or when > last):
                last = when
    when = event_time(failed[-1])
    if not started:
        return None if _sandbox_up(events, status, when) else failed[-1]
    return failed[-1] if when is not None and last is not None and when > last else None


# The RuntimeClass named in a not-found message: the admission plugin's 'RuntimeClass "x" not found', the kubelet's
# (its lister's NotFound) 'runtimeclass.node.k8s.io "x" not found'.
_RUNTIME_CLASS_NAME = re.compile(r'runtimeclass\S* "([^"]*)"', re.IGNORECASE)


def missing_runtime_class(message: str) -> str | None:
    """The RuntimeClass a refusal or sandbox failure says does not exist ("" where it names none the usual way),
    None if the message says no such thing."""
    low = message.lower()
    if "runtimeclass" not in low or "not found" not in low:
        return None
    m = _RUNTIME_CLASS_NAME.search(message)
    return m.group(1) if m else ""


def runtime_class_fix(cluster: Cluster, name: str) -> str:
    """What to do about pods naming RuntimeClass `name`, which does not exist (REFERENCE §12 entry 9). The
    pre-requisites state creates operator.runtimeClass, and nvidia-cdi and nvidia-legacy with CDI; none with CDI's
    NRI plugin (templates/pre-requisites)."""
    named = name or "the one the pod names"
    _, spec = policy(cluster)
    if spec is None:
        return ("the RuntimeClass is missing: the NVIDIA ones are created by a ClusterPolicy's pre-requisites state "
                f'(operator.runtimeClass, "nvidia" by default) and there is no valid ClusterPolicy; or name an '
                f"existing RuntimeClass instead of {named}")  # fmt: skip
    if spec.cdi.nri_plugin_enabled:
        return ("the RuntimeClass is missing: with CDI's NRI plugin (cdi.nriPluginEnabled) the operator creates "
                "none and GPU pods need none: remove runtimeClassName")  # fmt: skip
    created = [spec.operator.runtime_class] + [c for c in ("nvidia-cdi", "nvidia-legacy")
                                               if spec.cdi.enabled and c != spec.operator.runtime_class]  # fmt: skip
    if name in created:
        return (f"the RuntimeClass is missing, though the ClusterPolicy's pre-requisites state creates {name}: read "
                "the ClusterPolicy's status (state pre-requisites) and the operator's log")  # fmt: skip
    return (f"the RuntimeClass is missing: the ClusterPolicy's pre-requisites state creates {', '.join(created)}, "
            f"not {named}: name one of those in runtimeClassName, or set operator.runtimeClass to it")


# Where the operator deploys no container toolkit (toolkit.enabled false, or a node's deploy label false).
HOST_TOOLKIT_FIX = ("install the NVIDIA Container Toolkit on the host and configure its runtime there (`nvidia-ctk "
                    "runtime configure --runtime=containerd`, then restart containerd; cri-o likewise)")  # fmt: skip


def sandbox_fix(cluster: Cluster, message: str) -> str:
    """What to do about a FailedCreatePodSandBox message (REFERENCE §12 entries 9, 10)."""
    name = missing_runtime_class(message)
    if name is not None:
        return runtime_class_fix(cluster, name)
    _, spec = policy(cluster)
    if spec is not None and not spec.toolkit.enabled:
        return ("the nvidia runtime handler is not configured on this node and toolkit.enabled is false (the "
                f"operator deploys no toolkit): {HOST_TOOLKIT_FIX}")  # fmt: skip
    return ("the nvidia runtime handler is not configured on this node yet: the container toolkit configures it "
            "(check its pod on the node); on k3s, k0s or RKE2 set CONTAINERD_CONFIG/CONTAINERD_SOCKET in "
            "toolkit.env to that distribution's paths")  # fmt: skip


# The kubelet's waiting reasons of a container whose image it cannot pull (pkg/kubelet/images/types.go).
PULL_REASONS = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull")
_NOT_FOUND = re.compile(r"code = NotFound|: not found|manifest unknown", re.IGNORECASE)
_DENIED = re.compile(r"denied|unauthorized|authoriz|forbidden|\b40[13]\b", re.IGNORECASE)
_UNREACHABLE = re.compile(r"no such host|i/o timeout|connection refused|network is unreachable|handshake timeout"
                          r"|deadline exceeded", re.IGNORECASE)  # fmt: skip
PULL_CAUSES = {  # each follows "cannot pull image X: "
    "not-found": "it does not exist (the registry has no such tag or repository)",
    "denied": "the registry refused it (no such repository, or it needs credentials)",
    "unreachable": "the node cannot reach the registry",
    "invalid": "the image reference is not valid",
    "never": "its imagePullPolicy is Never and the image is not on the node",
    "": "its status does not say why",
}


@dataclass(frozen=True)
class PullFailure:
    """A container whose image the kubelet cannot pull, and why."""

    container: str
    image: str
    evidence: tuple[Evidence, ...]  # the waiting reason and message, and the pull's event where that says why
    cause: str  # a key of PULL_CAUSES


def _pull_cause(reason: str, message: str) -> str:
    if reason == "InvalidImageName":
        return "invalid"
    if reason == "ErrImageNeverPull":
        return "never"
    for cause, rx in (("not-found", _NOT_FOUND), ("denied", _DENIED), ("unreachable", _UNREACHABLE)):
        if rx.search(message):
            return cause
    return ""


def image_pull_failure(cluster: Cluster, pod: dict[str, Any]) -> PullFailure | None:
    """The first container (init containers first) waiting because its image cannot be pulled. ImagePullBackOff's
    message ("Back-off pulling image ...") may not say why: the kubelet's last "Failed to pull image" event does."""
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    spec = pod.get("spec") or {}
    for key, spec_key in (("initContainerStatuses", "initContainers"), ("containerStatuses", "containers")):
        for cs in status.get(key) or []:
            waiting = (cs.get("state") or {}).get("waiting") or {}
            reason = str(waiting.get("reason") or "")
            if reason not in PULL_REASONS:
                continue
            name = str(cs.get("name") or "?")
            image = next((str(c.get("image") or "") for c in spec.get(spec_key) or [] if c.get("name") == name),
                         str(cs.get("image") or ""))  # fmt: skip
            message = str(waiting.get("message") or "")
            ref = pod_ref(pod)
            evidence = [Evidence(ref, f"status.{key}[{name}].state.waiting", f"{reason}: {message}".rstrip(": "))]
            cause = _pull_cause(reason, message)
            if not cause:
                events = cluster.events_for("Pod", meta.get("namespace") or "", meta.get("name", ""))
                pulls = [e for e in events if e.get("reason") == "Failed"
                         and str(e.get("message") or "").startswith(f'Failed to pull image "{image}"')]  # fmt: skip
                if pulls:
                    said = str(pulls[-1].get("message") or "")
                    evidence.append(Evidence(ref, "event Failed", said))
                    cause = _pull_cause(reason, said)
            return PullFailure(name, image, tuple(evidence), cause)
    return None


def image_repository(image: str) -> str:
    """The image without its tag or digest."""
    if "@" in image:
        return image.split("@", 1)[0]
    head, _, last = image.rpartition("/")
    return f"{head}/{last.split(':', 1)[0]}" if head else last.split(":", 1)[0]


def shared_replicas(labels: dict[str, str]) -> int:
    """The replicas GFD says each GPU of a node is shared as (1: not shared, or a label that does not parse)."""
    try:
        return int(labels.get(REPLICAS_LABEL, "1"))
    except ValueError:
        return 1


def sharing_prefix(resource: str) -> str:
    """The prefix of GFD's sharing labels for a GPU resource: GFD labels each resource on its own, a MIG one under
    mixed as nvidia.com/mig-<profile>.replicas / .sharing-strategy (its `.shared` name too); others nvidia.com/gpu."""
    base = resource.removesuffix(".shared")
    return base if base.startswith(MIG_PREFIX) else GPU


def resource_sharing(labels: dict[str, str], resource: str) -> tuple[str, int, str]:
    """(label prefix, replicas, sharing strategy) GFD gives `resource` on a node with these labels; a MIG resource
    without its own labels falls back to the node-wide nvidia.com/gpu ones (replicas 1: not shared, or no parse)."""
    prefix = sharing_prefix(resource)
    if f"{prefix}.replicas" not in labels and f"{prefix}.sharing-strategy" not in labels:
        prefix = GPU
    try:
        replicas = int(labels.get(f"{prefix}.replicas", "1"))
    except ValueError:
        replicas = 1
    return prefix, replicas, labels.get(f"{prefix}.sharing-strategy", "none")


def shared_gpus(requests: Mapping[str, Any]) -> int:
    """How many GPUs requests ask of the resource GPU sharing advertises (nvidia.com/gpu, or nvidia.com/gpu.shared
    when the sharing config renames it)."""
    return int(max(requests.get(GPU, 0), requests.get(GPU_SHARED, 0)))


def most_shared_gpus(pod: dict[str, Any], resources: Collection[str] = (GPU, GPU_SHARED)) -> tuple[str, int]:
    """(container, how many) of the container asking most of one of the shared `resources` (default: those of
    shared_gpus): the device plugin checks each container's request on its own, not the pod's sum (the kubelet's
    Allocate carries one request per container; k8s-device-plugin internal/plugin/server.go Allocate,
    internal/rm/rm.go ValidateRequest)."""
    asked = ((name, int(max((r.get(k, 0) for k in resources), default=0))) for name, r in container_requests(pod))
    return max(asked, key=lambda c: c[1], default=("", 0))


def mps_refuses(labels: dict[str, str], gpus: int) -> bool:
    """Whether the device plugin of a node with these labels refuses a container asking `gpus` shared GPUs (the
    kubelet fails the pod with UnexpectedAdmissionError): MPS-shared replicas and more than one of them asked. The
    plugin sets failRequestsGreaterThanOne for MPS unless its config sets it false (k8s-device-plugin
    api/config/v1/config.go; internal/rm/rm.go ValidateRequest)."""
    return gpus > 1 and labels.get(SHARING_LABEL) == "mps" and shared_replicas(labels) > 1


def has_driver_labels(labels: dict[str, str]) -> bool:
    """Whether GFD's CUDA driver labels are on the node (the driver version is read from them)."""
    return any(labels.get(major) for major, _, _ in _DRIVER_LABELS)


def driver_of_node(cluster: Cluster, node: str) -> tuple[str, str] | None:
    """(driver version, where it was read) for a node: GFD's labels, else its driver pod's image tag."""
    view = cluster.views.get(node)
    if view is None:
        return None
    for major, minor, rev in _DRIVER_LABELS:
        if view.labels.get(major):
            version = ".".join(
                p for p in (view.labels[major], view.labels.get(minor, ""), view.labels.get(rev, "")) if p
            )
            return version, f"label {major}"
    for pod in cluster.pods:
        meta = pod.get("metadata") or {}
        if meta.get("namespace") != cluster.namespace or (pod.get("spec") or {}).get("nodeName") != node:
            continue
        if (meta.get("labels") or {}).get("app.kubernetes.io/component") != "nvidia-driver":
            continue
        for c in (pod.get("spec") or {}).get("containers") or []:
            tag = str(c.get("image", "")).rsplit(":", 1)[-1]
            m = _DRIVER_TAG.match(tag)
            if m:
                return m.group(0), f"driver pod {meta.get('name')} image {c.get('image')}"
    return None


def upgrade_waiting(cluster: Cluster) -> dict[str, str]:
    """Per node mid-upgrade, what it waits for: the policy's status.upgrade, else the planner run here (once)."""
    if "upgrade_waiting" not in cluster.memo:
        cluster.memo["upgrade_waiting"] = _upgrade_waiting(cluster)
    return dict(cluster.memo["upgrade_waiting"])


def _upgrade_waiting(cluster: Cluster) -> dict[str, str]:
    name, spec = policy(cluster)
    if name is None:
        return {}
    status = cluster.snapshot.policies[name].get("status") or {}
    out = {w["node"]: w.get("reason", "") for w in (status.get("upgrade") or {}).get("waiting") or [] if "node" in w}
    if spec is None or all(v.labels.get(UPGRADE_STATE, "") in SETTLED_UPGRADE for v in cluster.views.values()):
        return out  # no node waits for anything
    from ..upgrade import plan
    from ..upgrade.adapter import managed_nodes, steady
    from ..upgrade.model import WorkloadPod

    managed = managed_nodes(spec, cluster.snapshot)
    names = {n.name for n in managed}
    pods = [WorkloadPod.from_pod(p) for p in cluster.pods if (p.get("spec") or {}).get("nodeName") in names]
    result = plan(managed, pods, spec.driver.upgrade_policy, time.time())
    for node, reason in result.waiting.items():
        out.setdefault(node, steady(reason))
    return out


# Each CUDA release's minimum Linux x86_64 driver at GA: NVIDIA's CUDA Toolkit release notes, table "CUDA Toolkit
# and Corresponding Driver Versions" (REFERENCE.md lists 11.8 on; 11.0-11.7 from the same table).
_CUDA_DRIVERS = {
    (11, 0): "450.51.05", (11, 1): "455.23", (11, 2): "460.27.03", (11, 3): "465.19.01",
    (11, 4): "470.42.01", (11, 5): "495.29.05", (11, 6): "510.39.01", (11, 7): "515.43.04",
    (11, 8): "520.61.05", (12, 0): "525.60.13", (12, 1): "530.30.02", (12, 2): "535.54.03",
    (12, 3): "545.23.06", (12, 4): "550.54.14", (12, 5): "555.42.02", (12, 6): "560.28.03",
    (12, 8): "570.26", (12, 9): "575.51.03", (13, 0): "580.65.06", (13, 1): "590.44.01",
    (13, 2): "595.45.04", (13, 3): "610.43.02",
}  # fmt: skip


@cache
def cuda_driver_table() -> tuple[tuple[tuple[int, int], tuple[int, ...]], ...]:
    return tuple((k, version_tuple(v)) for k, v in sorted(_CUDA_DRIVERS.items()))


# CUDA minor-version compatibility: any driver of at least this branch runs every CUDA of that major.
BRANCH_MINIMUM = {11: (450, 80, 2), 12: (525, 60, 13), 13: (580, 65, 6)}


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", version)[:3])


def full_support_driver(cuda: tuple[int, int]) -> tuple[int, ...] | None:
    """The minimum driver of the CUDA release's own toolkit (GA), the nearest earlier row when unlisted."""
    best = None
    for key, driver in cuda_driver_table():
        if key <= cuda:
            best = driver
    return best


def full_support_version(cuda: tuple[int, int]) -> str:
    """full_support_driver as NVIDIA writes it (520.61.05, not 520.61.5); "" below the table."""
    return next((v for k, v in sorted(_CUDA_DRIVERS.items(), reverse=True) if k <= cuda), "")
