"""Workload findings (REFERENCE §12 entries 4-10, 17, 18): controllers whose pods the API server refuses (PodSecurity
admission too), CUDA images without a GPU, GPU pods whose image cannot be pulled (the seed's Exercise 1 tag), pods
whose sandbox the nvidia runtime cannot create, more than one replica of a shared (time-sliced or MPS) GPU, the CUDA
an image needs against the node's driver (from the pod spec, or the runtime's refusal), images without code for the
GPU, a GPU pod in which CUDA finds no device (seed §6.3 Issue 1), CUDA out of memory on a shared GPU."""

from __future__ import annotations

import copy
import operator
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import yaml

from ..gpu_identity import GFD_COMPUTE_MAJOR, GFD_COMPUTE_MINOR
from ..nodes import DEPLOY_OPERANDS, deploy_label, workload_of
from .common import (
    BRANCH_MINIMUM,
    MEMORY_LABEL,
    PULL_CAUSES,
    admission_toleration,
    cuda_driver_table,
    driver_of_node,
    event_time,
    full_support_driver,
    full_support_version,
    image_pull_failure,
    image_repository,
    missing_runtime_class,
    most_shared_gpus,
    parse_time,
    policy,
    resource_sharing,
    runtime_class_fix,
    sandbox_failure,
    sandbox_fix,
    sharing_prefix,
    version_tuple,
)
from .model import ERROR, INFO, WARNING, Cluster, Evidence, Finding, pod_ref
from .sched import (
    GPU,
    GPU_SHARED,
    MIG_PREFIX,
    container_requests,
    gpu_requests,
    is_gpu_resource,
    pod_requests,
    required_terms,
    selector_ok,
)

_CUDA_IMAGES = re.compile(
    r"(cuda|^pytorch/pytorch|(^|/)nvidia/(pytorch|tensorflow|tritonserver|nemo|jax|rapids)|tensorflow/tensorflow:.*gpu"
    r"|vllm/vllm-openai|-gpu(:|$)|^nvcr\.io/nvidia/(pytorch|tensorflow|tritonserver|nemo))",
    re.IGNORECASE,
)
_TAG_CUDA = (
    re.compile(r"cuda[-_]?(\d{2})\.(\d)", re.IGNORECASE),  # pytorch:2.1.0-cuda12.1-cudnn8, cuda13.0
    re.compile(r"\bcu(\d{2})(\d)\b"),  # cu121, cu128
)
_REQUIRE = re.compile(r"cuda>=(\d+)\.(\d+)")
_CONDITION = re.compile(r"^(\w+)(<=|>=|!=|=|<|>)(.+)$")  # one of NVIDIA_REQUIRE_CUDA's comma-separated conditions
_COMPARE = {"=": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le, ">": operator.gt,
            ">=": operator.ge}  # fmt: skip
_UNSATISFIED = re.compile(r"unsatisfied condition: cuda\s*>=\s*(\d+)\.(\d+)")
_INSUFFICIENT = re.compile(r"CUDA driver version is insufficient", re.IGNORECASE)
_NO_KERNEL = re.compile(r"no kernel image is available for execution on the device", re.IGNORECASE)
# The first CUDA with code for a compute capability (the version matrix's architectures); CUDA 13 dropped sm_50-70.
_FIRST_CUDA = {(8, 0): (11, 0), (8, 6): (11, 1), (8, 9): (11, 8), (9, 0): (11, 8), (10, 0): (12, 8), (12, 0): (12, 8)}
# CUDA, PyTorch and nvidia-smi finding no GPU (or no driver) in the container (seed §6.3 Issue 1).
_NO_DEVICE = re.compile(
    r"no CUDA-capable device is detected|No CUDA GPUs are available|CUDA_ERROR_NO_DEVICE|cudaErrorNoDevice"
    r"|NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver"
    r"|\"nvidia-smi\": executable file not found",
    re.IGNORECASE,
)
_OOM = re.compile(r"CUDA out of memory|CUDA error: out of memory|OutOfMemoryError", re.IGNORECASE)
# The API server's refusals of §12 entries 4 and 5 (ValidateResourceRequirements, ValidateResourceQuantityValue).
_NOT_EQUAL = re.compile(r"must be equal to (\S+) limit of ([^\s,\]]+)")  # not the aggregate's ", " or "]"
_NOT_INTEGER = re.compile(r"(?:limits|requests)\[([^\]]+)\]: Invalid value: \"([^\"]*)\": must be an integer")
_NO_LIMIT = "Limit must be set for non overcommitable resources"
# PodSecurity admission's refusal: the namespace enforces a level ("baseline:latest") the pod template breaks.
_POD_SECURITY = re.compile(r'violates PodSecurity "([^":]+)(?::[^"]*)?"')
_NO_TIME = datetime.min.replace(tzinfo=UTC)
REVISION = "deployment.kubernetes.io/revision"  # a Deployment's ReplicaSet's revision (the newest the highest)
_TEMPLATE_OF = {
    "ReplicaSet": "in the pod template of the Deployment that owns it (a ReplicaSet's comes from there), or of the "
    "ReplicaSet if none does",
    "Job": "in the Job's pod template (it cannot be changed: delete the Job and create it again)",
}


def _workload(cluster: Cluster, pod: dict[str, Any]) -> bool:
    meta = pod.get("metadata") or {}
    if meta.get("namespace") == cluster.namespace:
        return False
    return (meta.get("labels") or {}).get("app.kubernetes.io/managed-by") != "gpu-operator"


def findings(cluster: Cluster, pods: list[dict[str, Any]]) -> list[Finding]:
    out: list[Finding] = []
    for pod in pods:
        if not _workload(cluster, pod) or (pod.get("metadata") or {}).get("deletionTimestamp"):
            continue
        out += _sandbox(cluster, pod)
        out += _image_pull(cluster, pod)
        gpus = gpu_requests(pod)
        if not gpus:
            f = None if _other_gpu_resource(pod) else _cuda_without_gpu(cluster, pod)
            if f:
                out.append(f)
            continue
        out += _time_sliced(cluster, pod)
        out += _refused_by_driver(cluster, pod, _cuda_vs_driver(cluster, pod))
        out += _no_kernel_image(cluster, pod)
        out += _no_device(cluster, pod, gpus)
        out += _oom(cluster, pod)
    return out


def refused_creations(cluster: Cluster, namespace: str | None = None) -> list[Finding]:
    """§12 entries 4, 5 and 9, and PodSecurity admission, for the pods a controller creates: the API server refuses
    each, so none exists, and the controller (ReplicaSet, Job, StatefulSet, DaemonSet) posts a Warning event
    FailedCreate on itself quoting the refusal. The latest such event per controller, unless pods were created
    since (the template was fixed) or the controller is gone (the event outlives it by up to an hour)."""
    out = []
    for (kind, ns, name), e in sorted(_refusals(cluster.events, namespace).items()):
        if (kind, ns, name) in cluster.gone or _created_since(cluster, kind, ns, name, event_time(e)):
            continue
        message = str(e.get("message") or "")
        runtime_class = missing_runtime_class(message)
        pod_security = _POD_SECURITY.search(message)
        if runtime_class is not None:  # the RuntimeClass admission plugin's
            what = f"their RuntimeClass {runtime_class or '(named in the event)'} does not exist"
            fix = runtime_class_fix(cluster, runtime_class)
        elif pod_security:  # PodSecurity admission's
            level = pod_security.group(1)
            what = f'namespace {ns} enforces PodSecurity "{level}", which they break (the event lists how)'
            fix = _pod_security_fix(cluster, kind, ns, level)
        else:
            what, fix = _refusal(message) or ("", "")
            where = _TEMPLATE_OF.get(kind, f"in the {kind}'s pod template")
            fix = f"{where}: {fix}"
        ref = f"{kind} {ns}/{name}"
        out.append(Finding(
            ERROR, "PodCreationRefused", ref,
            f"the API server refuses the pods {ref} creates, so they do not exist: {what}",
            fix, [Evidence(ref, "event FailedCreate", message)],
        ))  # fmt: skip
    return out


def _refusals(events: list[dict[str, Any]], namespace: str | None = None) -> dict[tuple[str, str, str], dict[str, Any]]:
    """(kind, namespace, name) -> the latest FailedCreate event quoting a refusal of §12 entries 4, 5 and 9, or
    PodSecurity admission's."""
    latest: dict[tuple[str, str, str], dict[str, Any]] = {}
    for e in events:
        obj = e.get("involvedObject") or {}
        key = (str(obj.get("kind") or ""), str(obj.get("namespace") or ""), str(obj.get("name") or ""))
        if e.get("reason") != "FailedCreate" or key[0] == "Pod" or namespace and key[1] != namespace:
            continue
        message = str(e.get("message") or "")
        refused = _refusal(message) or missing_runtime_class(message) is not None or _POD_SECURITY.search(message)
        if refused and (key not in latest or (event_time(e) or _NO_TIME) >= (event_time(latest[key]) or _NO_TIME)):
            latest[key] = e
    return latest


def replica_set_reads(events: list[dict[str, Any]], pods: list[dict[str, Any]]) -> dict[tuple[str, str], set[str]]:
    """(namespace, name) of each refused ReplicaSet that only pods of other ReplicaSets of its Deployment would get
    past the refusal -> those ReplicaSets' names: gather reads them, for only a newer revision's pods count."""
    out = {}
    for (kind, ns, name), e in _refusals(events).items():
        own, siblings = _created(pods, kind, ns, name, event_time(e))
        if kind == "ReplicaSet" and not own and siblings:
            out[(ns, name)] = siblings
    return out


# The controllers whose refusals doctor checks are still there (its ClusterRole may get them; the client knows them).
OWNER_KINDS = frozenset({"ReplicaSet", "StatefulSet", "DaemonSet", "Job"})


def owner_reads(events: list[dict[str, Any]], pods: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(kind, namespace, name) of each refused controller that has no pods created since, nor (a ReplicaSet) other
    ReplicaSets of its Deployment that have (replica_set_reads gets those): gather gets each, to drop the refusal of
    one that is gone. Only the kinds doctor's role may get (another, a ReplicationController or a custom
    controller's, is kept: as one doctor may not read)."""
    out = []
    for (kind, ns, name), e in _refusals(events).items():
        if kind not in OWNER_KINDS:
            continue
        own, siblings = _created(pods, kind, ns, name, event_time(e))
        if not own and not siblings:
            out.append((kind, ns, name))
    return sorted(out)


def _refusal(message: str) -> tuple[str, str] | None:
    """(what the API server refuses, the fix) for a FailedCreate message of §12 entries 4 and 5."""
    m = _NOT_EQUAL.search(message)
    if m:
        return (f"its {m.group(1)} request is not equal to its limit of {m.group(2)} (for a GPU, as for every "
                "extended resource, the two must be equal)",
                f"set limits only ({m.group(1)} under resources.limits, no request: it defaults to the limit), or "
                "make the request equal to the limit")  # fmt: skip
    m = _NOT_INTEGER.search(message)
    if m:
        return (f"it asks {m.group(2)} {m.group(1)}, not a whole number",
                f"ask a whole number of {m.group(1)} (a share of a GPU comes from time-slicing, MPS or MIG)")
    if _NO_LIMIT in message:
        return ("a GPU (or another extended resource) is requested without a limit",
                "add the limit, a whole number (nvidia.com/gpu: 1 under resources.limits); the request defaults to "
                "it, so the limit alone is enough")  # fmt: skip
    return None


def _pod_security_fix(cluster: Cluster, kind: str, namespace: str, level: str) -> str:
    """The fix for pods PodSecurity admission refuses: in the operand namespace, the label psa.enabled puts there
    (the operands are privileged, use host namespaces and hostPath: REFERENCE §11); elsewhere, the pod template."""
    label = f"kubectl label namespace {namespace} pod-security.kubernetes.io/enforce=privileged --overwrite"
    if namespace != cluster.namespace:
        where = _TEMPLATE_OF.get(kind, f"in the {kind}'s pod template")
        return (f'{where}: meet PodSecurity "{level}" (drop what the event lists), or, where the pods need it, '
                f"label the namespace for a level that allows it: {label}")  # fmt: skip
    name, spec = policy(cluster)
    if spec is not None and spec.psa.enabled:
        return (f"psa.enabled is true, so the operator labels namespace {namespace} privileged, again within a "
                "minute while operand pods are missing: read its log for a refused namespace patch, and look for "
                f"what sets the label back (a GitOps tool, a policy); by hand: {label}")  # fmt: skip
    where = f"ClusterPolicy {name}" if name else "the ClusterPolicy"
    return (f"the operands need a privileged namespace: set psa.enabled: true in {where} (Helm: --set "
            f"psa.enabled=true), and the operator labels namespace {namespace} pod-security.kubernetes.io/"
            f"enforce=privileged (audit and warn too); or label it yourself: {label}")  # fmt: skip


def _created_since(cluster: Cluster, kind: str, namespace: str, name: str, when: datetime | None) -> bool:
    """Whether the controller has pods created at or after `when` (any, with no time): it gets past the refusal
    now. A ReplicaSet is also past it when a newer ReplicaSet of its Deployment (named <deployment>-<pod-template-
    hash>, of a higher revision) has, or any other has once the refused one is gone; a DaemonSet whose status says all
    its pods are ready (not read, its template stands in) is."""
    if kind == "DaemonSet" and any(
        (d.pod.get("metadata") or {}).get("namespace") == namespace
        and any(o.get("name") == name for o in (d.pod.get("metadata") or {}).get("ownerReferences") or [])
        for d in cluster.daemon_pods
    ):
        return True
    own, siblings = _created(cluster.pods, kind, namespace, name, when)
    if own or not siblings:
        return own
    read = cluster.replica_sets
    if read is None:  # not readable (403): any of them counts
        return True
    refused = read.get((namespace, name))
    if refused is None:  # gone (404): its Deployment deleted it, moved on to the siblings whose pods came since
        return True
    return any(_newer(read.get((namespace, other)), refused) for other in siblings)


def _created(
    pods: list[dict[str, Any]], kind: str, namespace: str, name: str, when: datetime | None
) -> tuple[bool, set[str]]:
    """(whether the controller has pods created at or after `when`, or with no time, the names of the other
    ReplicaSets of a ReplicaSet's Deployment that have)."""
    siblings = set()
    for pod in pods:
        meta = pod.get("metadata") or {}
        created = parse_time(meta.get("creationTimestamp"))
        if meta.get("namespace") != namespace or when is not None and (created is None or created < when):
            continue
        template_hash = str((meta.get("labels") or {}).get("pod-template-hash") or "")
        for owner in meta.get("ownerReferences") or []:
            other = str(owner.get("name") or "")
            if owner.get("kind") != kind:
                continue
            if other == name:
                return True, set()
            if (kind == "ReplicaSet" and template_hash and other.endswith("-" + template_hash)
                    and other[: -len(template_hash) - 1] == name.rsplit("-", 1)[0]):  # fmt: skip
                siblings.add(other)
    return False, siblings


def _newer(rs: dict[str, Any] | None, than: dict[str, Any] | None) -> bool:
    """Whether ReplicaSet `rs` is of the same Deployment as `than` and of a higher revision (both read)."""
    if rs is None or than is None or deployment_of(rs) is None or deployment_of(rs) != deployment_of(than):
        return False
    revisions = [str(((r.get("metadata") or {}).get("annotations") or {}).get(REVISION, "")) for r in (rs, than)]
    return all(r.isdigit() for r in revisions) and int(revisions[0]) > int(revisions[1])


def deployment_of(rs: dict[str, Any]) -> str | None:
    """The uid (or name) of the Deployment that controls the ReplicaSet, None without one."""
    owners = (rs.get("metadata") or {}).get("ownerReferences") or []
    return next((str(o.get("uid") or o.get("name")) for o in owners
                 if o.get("kind") == "Deployment" and o.get("controller")), None)  # fmt: skip


def _sandbox(cluster: Cluster, pod: dict[str, Any]) -> list[Finding]:
    """A pod bound to a node whose nvidia runtime handler or RuntimeClass is missing: stuck in ContainerCreating
    with FailedCreatePodSandBox (REFERENCE §12 entries 9, 10)."""
    spec = pod.get("spec") or {}
    node = spec.get("nodeName")
    if not node or (pod.get("status") or {}).get("phase", "Pending") != "Pending":
        return []
    event = sandbox_failure(cluster, pod)
    message = str((event or {}).get("message") or "")
    runtime_class = str(spec.get("runtimeClassName") or "")
    if not event or "nvidia" not in message.lower() and not (runtime_class and runtime_class in message):
        return []  # a sandbox failure of another kind (the network's): not the GPU stack's
    ref = pod_ref(pod)
    return [Finding(
        ERROR, "PodSandboxFailed", ref,
        f"the pod is bound to {node} but its sandbox cannot be created there, so no container starts: {message}",
        sandbox_fix(cluster, message), [Evidence(ref, "event FailedCreatePodSandBox", message)], nodes=(node,),
    )]  # fmt: skip


# nvidia/cuda's tags name the patch release (12.1.0-devel-ubuntu22.04): the seed's Exercise 1 tag 12.1-devel-... is
# none.
_CUDA_MINOR_TAG = re.compile(r"^(\d+\.\d+)-(.+)$")


def _image_pull(cluster: Cluster, pod: dict[str, Any]) -> list[Finding]:
    """A GPU pod (or a CUDA image) whose image the kubelet cannot pull: it waits in ErrImagePull / ImagePullBackOff
    and never starts. The waiting reason and message (or the pull's event) say why."""
    failed = image_pull_failure(cluster, pod)
    if failed is None or not (gpu_requests(pod) or _other_gpu_resource(pod) or _CUDA_IMAGES.search(failed.image)):
        return []
    ref, meta = pod_ref(pod), pod.get("metadata") or {}
    node = str((pod.get("spec") or {}).get("nodeName") or "")
    repo = image_repository(failed.image)
    tag = failed.image.rsplit(":", 1)[1] if ":" in failed.image.rsplit("/", 1)[-1] and "@" not in failed.image else ""
    fixes = {
        "not-found": f"use a tag that exists in {repo} (the registry lists its tags)",
        "denied": f"check the image's name; if {repo} is private, give the pod imagePullSecrets naming a "
        f"docker-registry Secret in namespace {meta.get('namespace')} with credentials for it",
        "unreachable": f"make the registry reachable from {node or 'the node'} (DNS, proxy, firewall), or pull from a "
        "mirror it can reach",
        "invalid": "write the image as [registry/]repository:tag or repository@sha256:digest",
        "never": "set imagePullPolicy IfNotPresent, or put the image on the node first",
        "": f"read the pod's events: kubectl describe pod -n {meta.get('namespace')} {meta.get('name')}",
    }
    fix = fixes[failed.cause]
    m = _CUDA_MINOR_TAG.match(tag)
    if failed.cause == "not-found" and repo.endswith("nvidia/cuda") and m:
        fix += f"; nvidia/cuda's tags name the patch release: {m.group(1)}.0-{m.group(2)} (or a later {m.group(1)}.x)"
    owner = _controller(pod)
    if owner:
        fix += f"; {owner.get('kind')} {owner.get('name')} made the pod: change the image in its pod template"
    return [Finding(
        ERROR, "ImagePullFailed", ref,
        f"container {failed.container} does not start: the kubelet cannot pull its image {failed.image}: "
        f"{PULL_CAUSES[failed.cause]}",
        fix, list(failed.evidence), nodes=(node,) if node else (),
    )]  # fmt: skip


def _other_gpu_resource(pod: dict[str, Any]) -> bool:
    """Whether the pod gets its GPU another way: an extended resource of another device plugin (Volcano's
    volcano.sh/gpu-memory, seed §7.1; amd.com/gpu)."""
    return any("/" in k and "gpu" in k.split("/", 1)[1].lower() and v > 0 for k, v in pod_requests(pod).items())


def _containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return list((pod.get("spec") or {}).get("containers") or [])


# The installer's names for set-as-default, the first one set counts (nvidia-ctk-installer's --set-as-default).
_SET_AS_DEFAULT = ("NVIDIA_RUNTIME_SET_AS_DEFAULT", "CONTAINERD_SET_AS_DEFAULT", "DOCKER_SET_AS_DEFAULT")
_ACCEPT_ENVVAR = "ACCEPT_NVIDIA_VISIBLE_DEVICES_ENVVAR_WHEN_UNPRIVILEGED"


def _true(value: str) -> bool:
    return value.strip().lower() in ("1", "t", "true")  # Go's strconv.ParseBool


def _nvidia_runtime(cluster: Cluster, pod: dict[str, Any]) -> tuple[str, Evidence] | None:
    """(why, evidence) when the nvidia runtime, not runc, runs the pod on its GPU node; None when runc does, the pod is
    not bound to one, or doctor cannot tell. That runtime gives a container the GPUs its NVIDIA_VISIBLE_DEVICES names,
    outside the device plugin's count: the toolkit's installer makes it the default runtime unless told not to (the
    operator tells it so with CDI on, as upstream), which runs the pods that name no RuntimeClass, and a pod may name
    one of its RuntimeClasses. Another RuntimeClass's handler (kata, gVisor, runc) is not known here: None."""
    facts = cluster.snapshot.nodes.get(str((pod.get("spec") or {}).get("nodeName") or ""))
    if facts is None or not facts.has_gpu:
        return None
    name, spec = policy(cluster)
    if spec is None or spec.cdi.nri_plugin_enabled or workload_of(facts, spec) != "container":
        return None  # with CDI's NRI plugin the installer leaves the runtime config alone and makes no classes
    env = {e.name: e.value for e in spec.toolkit.env} if spec.toolkit.enabled else {}
    if not _true(env.get(_ACCEPT_ENVVAR, "true")) and not any(
        (c.get("securityContext") or {}).get("privileged") for c in _containers(pod)
    ):
        return None  # the runtime ignores an unprivileged container's NVIDIA_VISIBLE_DEVICES
    optout = (facts.labels.get(deploy_label("container-toolkit")), facts.labels.get(DEPLOY_OPERANDS))
    runtime_class = str((pod.get("spec") or {}).get("runtimeClassName") or "")
    if not runtime_class and spec.toolkit.enabled and "false" not in optout:
        chain = [(k, env[k]) for k in _SET_AS_DEFAULT if k in env]
        if spec.cdi.enabled and _SET_AS_DEFAULT[0] not in env:
            chain.insert(0, (_SET_AS_DEFAULT[0], "false"))
        if not chain:
            return ("nvidia is the node's default runtime: with cdi.enabled false the toolkit makes it so",
                    Evidence(f"ClusterPolicy {name}", "spec.cdi.enabled", "false"))  # fmt: skip
        if _true(chain[0][1]):
            return (f"nvidia is the node's default runtime: toolkit.env sets {chain[0][0]}={chain[0][1]}",
                    Evidence(f"ClusterPolicy {name}", f"spec.toolkit.env[{chain[0][0]}]", chain[0][1]))  # fmt: skip
    if runtime_class in {spec.operator.runtime_class, *(("nvidia-cdi", "nvidia-legacy") if spec.cdi.enabled else ())}:
        return f"runtimeClassName {runtime_class}", Evidence(pod_ref(pod), "spec.runtimeClassName", runtime_class)
    return None


def _gpu_holders(cluster: Cluster, pod: dict[str, Any]) -> list[str]:
    """The other pods on the pod's node that the device plugin gave GPUs to."""
    view = cluster.views.get(str((pod.get("spec") or {}).get("nodeName") or ""))
    ref = pod_ref(pod)
    return [pod_ref(p).removeprefix("Pod ") for p in view.pods if pod_ref(p) != ref and gpu_requests(p)] if view else []


def _cuda_without_gpu(cluster: Cluster, pod: dict[str, Any]) -> Finding | None:
    # A container that sets NVIDIA_VISIBLE_DEVICES itself chose its devices (monitoring agents do): not this case.
    cuda = [
        c for c in _containers(pod)
        if _CUDA_IMAGES.search(str(c.get("image", "")))
        and not any(e.get("name") == "NVIDIA_VISIBLE_DEVICES" for e in c.get("env") or [])
    ]  # fmt: skip
    if not cuda:
        return None
    ref = pod_ref(pod)
    fixed = _corrected_pod(pod, {c.get("name") for c in cuda})
    owner = _controller(pod)
    names = ", ".join(f"{c.get('name')} ({c.get('image')})" for c in cuda)
    evidence = [Evidence(ref, f"spec.containers[{c.get('name')}].resources.limits", str(_limits(c))) for c in cuda]
    runtime = _nvidia_runtime(cluster, pod)
    if runtime is None:
        what = ("the device plugin gives it none, so CUDA finds no device (torch.cuda.is_available() is False, "
                "'CUDA device not found')")  # fmt: skip
    else:  # the runtime, not the device plugin, decides its GPUs
        node = (pod.get("spec") or {}).get("nodeName")
        holders = _gpu_holders(cluster, pod)
        what = (f"the nvidia runtime runs it ({runtime[0]}) and gives it the GPUs its image's NVIDIA_VISIBLE_DEVICES "
                f"names (`all` in the pytorch/pytorch, nvidia/cuda and NGC images): every GPU of {node}, outside the "
                "device plugin's count, GPUs the scheduler gives to other pods"
                + (f" (now to {', '.join(holders[:5])})" if holders else ""))  # fmt: skip
        evidence.append(runtime[1])
    return Finding(
        WARNING, "CUDAImageWithoutGPU", ref,
        f"the pod runs a CUDA image ({names}) but requests no GPU: {what}",
        "add `nvidia.com/gpu: 1` (or more) under resources.limits of the CUDA container; a GPU is requested by "
        "its limit, and the request defaults to it" + (
            "; a container that needs no GPU can set NVIDIA_VISIBLE_DEVICES=void instead" if runtime else "") + (
            f"; {owner.get('kind')} {owner.get('name')} made the pod: add the limit to the pod template it was made "
            "from (its Deployment's, for a Deployment's ReplicaSet); the pod below leaves out the labels, by which "
            "the controller would adopt it" if owner else ""),
        evidence, fix_yaml=yaml.safe_dump(fixed, sort_keys=False),
    )  # fmt: skip


def _limits(container: dict[str, Any]) -> dict[str, Any]:
    return dict((container.get("resources") or {}).get("limits") or {})


# Fields the API server fills in with these values when the user leaves them out.
_SPEC_DEFAULTS = {"dnsPolicy": "ClusterFirst", "schedulerName": "default-scheduler", "enableServiceLinks": True,
                  "terminationGracePeriodSeconds": 30, "serviceAccountName": "default", "securityContext": {}}
_CONTAINER_DEFAULTS = {"terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File"}
# Labels and annotations the system writes on a pod: its controller's (a bare pod with a ReplicaSet's or Job's
# would be adopted by it) and kubectl's record of the old pod.
_SYSTEM_METADATA = ("pod-template-hash", "controller-revision-hash", "pod-template-generation", "controller-uid",
                    "job-name", "batch.kubernetes.io/controller-uid", "batch.kubernetes.io/job-name",
                    "batch.kubernetes.io/job-completion-index", "statefulset.kubernetes.io/pod-name",
                    "apps.kubernetes.io/pod-index", "kubectl.kubernetes.io/last-applied-configuration")  # fmt: skip


def _pull_default(image: str) -> str:
    """The imagePullPolicy the API server gives a container that sets none."""
    name = image.rsplit("/", 1)[-1]
    tag = name.split(":", 1)[1] if ":" in name else ""
    return "Always" if "@" not in image and tag in ("", "latest") else "IfNotPresent"


def _controller(pod: dict[str, Any]) -> dict[str, Any] | None:
    """The pod's controller's owner reference, if a controller made it."""
    return next((o for o in (pod.get("metadata") or {}).get("ownerReferences") or [] if o.get("controller")), None)


def _corrected_pod(pod: dict[str, Any], containers: set[Any]) -> dict[str, Any]:
    """The pod with the GPU limit added and what the API server filled in left out (the node, priority, defaults,
    the service account token's volume and the default tolerations, the controller's labels); the user's own fields
    are kept, labels and annotations included, but the labels of a pod a controller made: its selector, made of
    them, would adopt the bare pod (and may delete a surplus one). Its fix goes in the controller's template."""
    meta = pod.get("metadata") or {}
    spec = copy.deepcopy(pod.get("spec") or {})
    # priority and preemptionPolicy come from the priority class (admission refuses others); no ephemeral
    # containers at creation.
    for key in ("nodeName", "serviceAccount", "priority", "preemptionPolicy", "ephemeralContainers"):
        spec.pop(key, None)
    for key, default in _SPEC_DEFAULTS.items():
        if key in spec and spec[key] == default:
            del spec[key]
    tolerations = [t for t in spec.pop("tolerations", None) or [] if not admission_toleration(t)]
    if tolerations:
        spec["tolerations"] = tolerations
    token = {
        v.get("name") for v in spec.get("volumes") or []
        if str(v.get("name", "")).startswith("kube-api-access-") and "projected" in v
    }  # fmt: skip
    volumes = [v for v in spec.pop("volumes", None) or [] if v.get("name") not in token]
    if volumes:
        spec["volumes"] = volumes
    for c in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
        for key, default in _CONTAINER_DEFAULTS.items():
            if c.get(key) == default:
                del c[key]
        if c.get("imagePullPolicy") == _pull_default(str(c.get("image", ""))):
            del c["imagePullPolicy"]
        mounts = [m for m in c.pop("volumeMounts", None) or [] if m.get("name") not in token]
        if mounts:
            c["volumeMounts"] = mounts
    for c in spec.get("containers") or []:
        if c.get("name") in containers:
            limits = c.setdefault("resources", {}).setdefault("limits", {})
            limits[GPU] = 1
    out: dict[str, Any] = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": meta.get("name")}}
    if meta.get("namespace") and meta["namespace"] != "default":
        out["metadata"]["namespace"] = meta["namespace"]
    for key in ("annotations",) if _controller(pod) else ("labels", "annotations"):
        kept = {k: v for k, v in (meta.get(key) or {}).items() if k not in _SYSTEM_METADATA}
        if kept:
            out["metadata"][key] = kept
    out["spec"] = spec
    return out


def _labels(cluster: Cluster, node: str) -> dict[str, str]:
    view = cluster.views.get(node)
    return view.labels if view else {}


def _resource_groups(pod: dict[str, Any]) -> list[tuple[str, ...]]:
    """The pod's GPU resources by the GFD labels that say how each is shared: nvidia.com/gpu (and .shared), then
    each MIG resource of mixed (and its .shared)."""
    groups: dict[str, set[str]] = {GPU: {GPU, GPU_SHARED}}
    for _, requests in container_requests(pod):
        for r in requests:
            if r.startswith(MIG_PREFIX):
                groups.setdefault(sharing_prefix(r), set()).add(r)
    return [tuple(sorted(groups[k])) for k in sorted(groups)]


def _device(resource: str) -> str:
    prefix = sharing_prefix(resource)
    return "GPU" if prefix == GPU else f"MIG device ({prefix})"


def _mps_limit(labels: dict[str, str], replicas: int) -> str:
    """The MPS control daemon's per-client pinned memory limit: the GPU's memory / replicas (GFD's MiB)."""
    memory = labels.get(MEMORY_LABEL, "")
    if memory.isdigit() and replicas > 1:
        return f"about {int(memory) // replicas} MiB ({memory} MiB / {replicas} replicas)"
    return f"the GPU's memory / {replicas} replicas"


def _time_sliced(cluster: Cluster, pod: dict[str, Any]) -> list[Finding]:
    node = (pod.get("spec") or {}).get("nodeName")
    nodes = [node] if node else [v.name for v in cluster.views.values() if selector_ok(pod, v.labels, v.name)]
    for resources in _resource_groups(pod):
        container, count = most_shared_gpus(pod, resources)  # one replica in each of several containers: ordinary
        if count <= 1:
            continue
        sharing = {n: resource_sharing(_labels(cluster, n), resources[0]) for n in nodes}
        shared = [n for n in nodes if sharing[n][1] > 1]
        if shared and (node or len(shared) == len(nodes)):
            return _multiple_shared(pod, container, count, resources[0], {n: sharing[n] for n in shared})
    return []


def _multiple_shared(pod: dict[str, Any], container: str, count: int, resource: str,
                     shared: dict[str, tuple[str, int, str]]) -> list[Finding]:
    """MultipleTimeSlicedGPUs / MultipleMPSSharedGPUs for a container asking `count` of `resource`, which each of the
    `shared` nodes shares: (label prefix, replicas, strategy) per node."""
    ref = pod_ref(pod)
    status = pod.get("status") or {}
    first = list(shared.items())[:5]
    evidence = [Evidence(f"Node {n}", f"labels[{p}.replicas]", str(r)) for n, (p, r, _) in first]
    if status.get("reason") == "UnexpectedAdmissionError":
        evidence.insert(0, Evidence(ref, "status.message", str(status.get("message", ""))))
    what = "GPUs" if sharing_prefix(resource) == GPU else "MIG devices"
    if all(s == "mps" for _, _, s in shared.values()):
        evidence += [Evidence(f"Node {n}", f"labels[{p}.sharing-strategy]", "mps") for n, (p, _, _) in first]
        return [Finding(
            WARNING, "MultipleMPSSharedGPUs", ref,
            f"container {container} requests {count} GPUs of an MPS-shared resource: replicas are MPS clients of the "
            "same physical GPUs, each limited to its share of one GPU's memory, so more than one may be the same GPU "
            "and adds nothing (failRequestsGreaterThanOne, the MPS default, makes the device plugin reject the pod)",
            "request 1 shared GPU, or run on nodes without sharing (whole GPUs) or MIG when the job needs more",
            evidence, nodes=tuple(shared),
        )]  # fmt: skip
    return [Finding(
        WARNING, "MultipleTimeSlicedGPUs", ref,
        f"container {container} requests {count} {what} of a time-sliced resource: replicas are slices of time on the "
        f"same physical {what}, so more than one may be the same device and adds no compute or memory (with "
        "failRequestsGreaterThanOne the device plugin rejects the pod)",
        "request 1 shared GPU, or run on nodes without time-slicing (whole GPUs) when the job needs several",
        evidence, nodes=tuple(shared),
    )]  # fmt: skip


def cuda_need(pod: dict[str, Any]) -> tuple[tuple[int, int], str, str, str] | None:
    """(CUDA major.minor, container, where, require) the pod's images need: NVIDIA_REQUIRE_CUDA (require, its value:
    checked by the runtime hook) or the CUDA version in a well-known image tag (require "")."""
    for c in _containers(pod):
        env = {e.get("name"): str(e.get("value", "")) for e in c.get("env") or []}
        if env.get("NVIDIA_DISABLE_REQUIRE", "").lower() in ("1", "true"):
            continue
        m = _REQUIRE.search(env.get("NVIDIA_REQUIRE_CUDA", ""))
        if m:
            require = env["NVIDIA_REQUIRE_CUDA"]
            return (int(m.group(1)), int(m.group(2))), str(c.get("name")), "env NVIDIA_REQUIRE_CUDA", require
        tag = str(c.get("image", "")).rsplit("/", 1)[-1]
        for rx in _TAG_CUDA:
            m = rx.search(tag)
            if m:
                return (int(m.group(1)), int(m.group(2))), str(c.get("name")), f"image {c.get('image')}", ""
        if re.search(r"(^|/)cuda:(\d+)\.(\d+)", str(c.get("image", ""))):
            m2 = re.search(r"cuda:(\d+)\.(\d+)", str(c.get("image", "")))
            assert m2
            return (int(m2.group(1)), int(m2.group(2))), str(c.get("name")), f"image {c.get('image')}", ""
    return None


def driver_cuda(driver: tuple[int, ...]) -> tuple[int, int] | None:
    """The newest CUDA a driver supports fully (its branch's own release)."""
    best = None
    for cuda, minimum in cuda_driver_table():
        if driver >= minimum:
            best = cuda
    return best


def _trimmed(version: tuple[int, ...]) -> tuple[int, ...]:
    while version and version[-1] == 0:
        version = version[:-1]
    return version


def _hook_accepts(require: str, driver: tuple[int, ...]) -> bool:
    """Whether the runtime hook accepts NVIDIA_REQUIRE_CUDA on a driver: space-separated alternatives, each of
    comma-separated conditions that must all hold (libnvidia-container's dsl_evaluate). The conditions on the GPU
    (brand, arch) are unknown here: an alternative counts only by its cuda and driver conditions, and only if it has
    one (the CUDA images' `brand=tesla,driver>=470,driver<471` accepts any R470 driver)."""
    has = driver_cuda(driver)
    for alternative in require.split():
        known = []
        for condition in filter(None, alternative.split(",")):
            m = _CONDITION.match(condition)
            key = m.group(1).lower() if m else ""
            if not m or key not in ("cuda", "driver"):
                continue
            want = _trimmed(version_tuple(m.group(3)))
            if key == "driver":
                known.append(_COMPARE[m.group(2)](_trimmed(driver), want))
            elif has is not None:
                known.append(_COMPARE[m.group(2)](_trimmed(has), want))
            else:  # a driver older than the table's first row supports none of its releases
                known.append(want < cuda_driver_table()[0][0])
        if known and all(known):
            return True
    return False


def _cuda_vs_driver(cluster: Cluster, pod: dict[str, Any]) -> list[Finding]:
    need = cuda_need(pod)
    if need is None:
        return []
    cuda, container, where, require = need
    bound = (pod.get("spec") or {}).get("nodeName")
    pinned = bool(bound) or bool((pod.get("spec") or {}).get("nodeSelector")) or bool(required_terms(pod))
    if bound:
        nodes = [bound]
    else:
        nodes = [
            v.name
            for v in cluster.views.values()
            if selector_ok(pod, v.labels, v.name) and driver_of_node(cluster, v.name)
        ]
    ref, cuda_s = pod_ref(pod), f"{cuda[0]}.{cuda[1]}"
    too_old, limited = [], []
    for n in nodes:
        found = driver_of_node(cluster, n)
        if not found:
            continue
        version, source = found
        d = version_tuple(version)
        branch_min = BRANCH_MINIMUM.get(cuda[0])
        full = full_support_driver(cuda)
        # The runtime hook compares NVIDIA_REQUIRE_CUDA with the driver's own CUDA (no minor-version compatibility),
        # or with the driver branches the image names beside it.
        accepted = bool(require) and _hook_accepts(require, d)
        refused = bool(require) and not accepted
        # Below the branch minimum only the release's own GA driver (or newer) runs it (11.0 on 450.51.05).
        if refused or not accepted and branch_min is not None and d < branch_min and (full is None or d < full):
            too_old.append((n, version, source))
        elif full is not None and d < full:
            limited.append((n, version, source))
    out: list[Finding] = []
    need_ev = Evidence(ref, f"spec.containers[{container}] {where}", f"needs CUDA {cuda_s}")
    if too_old and (pinned or len(too_old) == len(nodes)):
        rows = [f"{n}: driver {v} (from {s})" for n, v, s in too_old]
        minimum = full_support_version(cuda) or ".".join(map(str, BRANCH_MINIMUM.get(cuda[0]) or (0,)))
        out.append(Finding(
            ERROR, "CUDADriverTooOld", ref,
            f"the pod needs CUDA {cuda_s} but its node's driver is older than CUDA {cuda_s} supports: it fails with "
            f"'requirement error: unsatisfied condition: cuda>={cuda_s}' (legacy mode) or 'CUDA driver version is "
            "insufficient for CUDA runtime version' (CDI)",
            f"run it on nodes with driver {minimum} or newer (set the ClusterPolicy's driver.version, or select "
            f"such nodes), or use an image built for an older CUDA (a newer driver always runs older CUDA)",
            [need_ev] + [Evidence(f"Node {n}", s, f"driver {v}") for n, v, s in too_old[:5]],
            details=rows, nodes=tuple(n for n, _, _ in too_old),
        ))  # fmt: skip
    elif too_old:
        out.append(Finding(
            WARNING, "CUDADriverTooOldOnSomeNodes", ref,
            f"the pod needs CUDA {cuda_s}; {len(too_old)} of the nodes it may land on have an older driver",
            "select nodes with a new enough driver (node affinity on nvidia.com/cuda.driver.major)",
            [need_ev] + [Evidence(f"Node {n}", s, f"driver {v}") for n, v, s in too_old[:5]],
            nodes=tuple(n for n, _, _ in too_old),
        ))  # fmt: skip
    if limited and not too_old:
        out.append(Finding(
            INFO, "CUDAMinorVersionCompatibility", ref,
            f"the pod's CUDA {cuda_s} runs on driver {limited[0][1]} only through minor-version compatibility "
            "(no JIT of newer PTX, some new APIs missing)",
            "upgrade the driver if the application needs features of that CUDA release",
            [need_ev], nodes=tuple(n for n, _, _ in limited),
        ))  # fmt: skip
    return out


def _oom(cluster: Cluster, pod: dict[str, Any]) -> list[Finding]:
    node = (pod.get("spec") or {}).get("nodeName")
    ref = pod_ref(pod)
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        for state_key in ("state", "lastState"):
            term = (cs.get(state_key) or {}).get("terminated") or {}
            message = str(term.get("message") or "")
            if not _OOM.search(message):
                continue
            labels = _labels(cluster, node or "")
            resource, (prefix, replicas, strategy) = _oom_sharing(
                labels, dict(container_requests(pod)).get(cs.get("name"), {}))
            ev = [Evidence(ref, f"status.containerStatuses[{cs.get('name')}].{state_key}.terminated.message",
                           message.strip().splitlines()[-1][:300])]  # fmt: skip
            if strategy == "mps":
                ev += [Evidence(f"Node {node}", f"labels[{prefix}.sharing-strategy]", strategy),
                       Evidence(f"Node {node}", f"labels[{prefix}.replicas]", str(replicas))]
                return [Finding(
                    WARNING, "CUDAOOMMPS", ref,
                    f"the container ran out of GPU memory on an MPS-shared GPU ({replicas} replicas): the MPS "
                    "control daemon limits each client's device memory to the GPU's memory / replicas, here "
                    f"{_mps_limit(labels, replicas)}",
                    "use fewer MPS replicas in the node's device plugin config so each share is larger, or give the "
                    "pod a whole GPU (a node without sharing) or a MIG partition with enough memory",
                    ev, nodes=(node,) if node else (),
                )]  # fmt: skip
            if replicas > 1 or strategy == "time-slicing":
                ev.append(Evidence(f"Node {node}", f"labels[{prefix}.replicas]", str(replicas)))
                return [Finding(
                    WARNING, "CUDAOOMTimeSliced", ref,
                    f"the container ran out of GPU memory on a time-sliced {_device(resource)} ({replicas} replicas): "
                    "time-slicing shares the device's memory with no isolation, so other pods' allocations count "
                    "against this one",
                    "give the pod a whole GPU (a node without time-slicing), or isolate memory: MIG (a partition "
                    "with its own memory) or MPS (per-client memory limits, devicePlugin sharing.mps)"
                    if sharing_prefix(resource) == GPU else
                    f"give the pod a {sharing_prefix(resource)} device that is not time-sliced (a node or config "
                    "without time-slicing for that resource), or a MIG profile with more memory",
                    ev, nodes=(node,) if node else (),
                )]  # fmt: skip
            sharers = _sharing_outside(cluster, pod)
            if sharers:
                names = ", ".join(pod_ref(p).removeprefix("Pod ") for p, _ in sharers[:5])
                return [Finding(
                    WARNING, "CUDAOOMSharedOutsideDevicePlugin", ref,
                    f"the container ran out of GPU memory on a GPU it shares with {names}, which request no GPU: "
                    f"the nvidia runtime runs them ({sharers[0][1][0]}) and gives them the GPUs their "
                    f"NVIDIA_VISIBLE_DEVICES names (`all` in the CUDA images): every GPU of {node}, outside the "
                    "device plugin's count",
                    f"give {names} a GPU limit (nvidia.com/gpu: 1 under resources.limits) so the device plugin "
                    "counts them, or set NVIDIA_VISIBLE_DEVICES=void in those that need no GPU",
                    ev + [why[1] for _, why in sharers[:5]], nodes=(node,) if node else (),
                )]  # fmt: skip
            return [Finding(
                INFO, "CUDAOOM", ref,
                "the container ran out of GPU memory on a GPU it does not share",
                "reduce the batch size, use gradient accumulation or checkpointing, or request a GPU with more memory",
                ev, nodes=(node,) if node else (),
            )]  # fmt: skip
    return []


def _oom_sharing(labels: dict[str, str], requests: Mapping[str, Any]) -> tuple[str, tuple[str, int, str]]:
    """The GPU resource a container that ran out of memory asks, with resource_sharing's (label prefix, replicas,
    strategy): its shared one if any, else its first (nvidia.com/gpu when it asks none)."""
    asked = [r for r in sorted(requests) if is_gpu_resource(r) and requests[r] > 0] or [GPU]
    found = [(r, resource_sharing(labels, r)) for r in asked]
    return next((f for f in found if f[1][1] > 1 or f[1][2] in ("mps", "time-slicing")), found[0])


def _sharing_outside(cluster: Cluster, pod: dict[str, Any]) -> list[tuple[dict[str, Any], tuple[str, Evidence]]]:
    """The Running pods on the pod's node that request no GPU yet get its GPUs from the nvidia runtime: a CUDA image
    (or NVIDIA_VISIBLE_DEVICES set, not to void or none), with why the runtime runs them."""
    view = cluster.views.get(str((pod.get("spec") or {}).get("nodeName") or ""))
    out = []
    for other in view.pods if view else []:
        running = (other.get("status") or {}).get("phase") == "Running"
        if not running or pod_ref(other) == pod_ref(pod) or not _workload(cluster, other):
            continue
        if gpu_requests(other) or _other_gpu_resource(other):
            continue
        if not any(_sees_gpus(c) for c in _containers(other)):
            continue
        why = _nvidia_runtime(cluster, other)
        if why is not None:
            out.append((other, why))
    return out


def _sees_gpus(container: dict[str, Any]) -> bool:
    """Whether the nvidia runtime gives the container GPUs by NVIDIA_VISIBLE_DEVICES (its own, or a CUDA image's)."""
    own = [str(e.get("value", "")) for e in container.get("env") or [] if e.get("name") == "NVIDIA_VISIBLE_DEVICES"]
    if own:
        return own[-1].strip().lower() not in ("", "void", "none")
    return bool(_CUDA_IMAGES.search(str(container.get("image", ""))))


def _status_message(pod: dict[str, Any], rx: re.Pattern[str]) -> tuple[str, str] | None:
    """(field, line) of the first container state message (init containers too, current or last) matching rx. The
    last state of a container running or ready now is a previous run's: what failed it is gone."""
    status = pod.get("status") or {}
    for key in ("initContainerStatuses", "containerStatuses"):
        for cs in status.get(key) or []:
            now = cs.get("ready") or (cs.get("state") or {}).get("running") is not None
            for state_key in ("state",) if now else ("state", "lastState"):
                for kind in ("waiting", "terminated"):
                    message = str(((cs.get(state_key) or {}).get(kind) or {}).get("message") or "")
                    line = next((line for line in message.splitlines() if rx.search(line)), "")
                    if line:
                        return f"status.{key}[{cs.get('name')}].{state_key}.{kind}.message", line.strip()[:300]
    return None


def _node_driver_evidence(cluster: Cluster, node: str) -> tuple[str, list[Evidence]]:
    found = driver_of_node(cluster, node) if node else None
    if not found:
        return "", []
    return found[0], [Evidence(f"Node {node}", found[1], f"driver {found[0]}")]


def _refused_by_driver(cluster: Cluster, pod: dict[str, Any], found: list[Finding]) -> list[Finding]:
    """§12 entry 7 by its signature: the runtime hook's "unsatisfied condition: cuda>=X.Y" (NVIDIA_REQUIRE_CUDA set in
    the image's own config, unseen in the pod spec) or CUDA's "driver version is insufficient"."""
    seen = _status_message(pod, _UNSATISFIED)
    if seen is None and not _driver_runs_image(cluster, pod):  # else _no_device's: no driver in the container
        seen = _status_message(pod, _INSUFFICIENT)
    if seen is None:
        return found
    ref = pod_ref(pod)
    ev = Evidence(ref, seen[0], seen[1])
    known = [f for f in found if f.kind == "CUDADriverTooOld"]
    if known:  # the pod spec said so already: the message is its proof
        known[0].evidence.insert(0, ev)
        return found
    m = _UNSATISFIED.search(seen[1])
    need = cuda_need(pod)
    cuda = (int(m.group(1)), int(m.group(2))) if m else need[0] if need else None
    node = str((pod.get("spec") or {}).get("nodeName") or "")
    version, node_ev = _node_driver_evidence(cluster, node)
    driver = f"the node's driver {version}" if version else "the node's driver"
    minimum = full_support_version(cuda) if cuda else ""
    what = f"CUDA {cuda[0]}.{cuda[1]}" if cuda else "the CUDA its image was built with"
    # The signature proves the driver too old: a note that minor-version compatibility covers it would contradict.
    rest = [f for f in found if f.kind != "CUDAMinorVersionCompatibility"]
    return [Finding(
        ERROR, "CUDADriverTooOld", ref,
        f"the container fails because {driver} is older than {what} needs"
        + (" (the image's NVIDIA_REQUIRE_CUDA, checked by the runtime hook)" if m else ""),
        (f"run it on nodes with driver {minimum} or newer" if minimum else "run it on nodes with a newer driver")
        + " (set the ClusterPolicy's driver.version, or select such nodes), or use an image built for an older "
        "CUDA (a newer driver always runs older CUDA)",
        [ev] + node_ev, nodes=(node,) if node else (),
    )] + rest  # fmt: skip


def _driver_runs_image(cluster: Cluster, pod: dict[str, Any]) -> str:
    """"driver D runs CUDA X.Y" where the pod's node's driver fully supports the CUDA its image needs (that release's
    GA driver or newer, and accepted by the runtime hook where NVIDIA_REQUIRE_CUDA is set), else "". CUDA says "driver
    version is insufficient" also when no driver library (libcuda) is in the container: on such a driver that is the
    cause (below it, in minor-version compatibility or an image's driver-branch alternative such as
    `brand=tesla,driver>=535,driver<536`, the message is taken as the driver's age)."""
    need = cuda_need(pod)
    version, _ = _node_driver_evidence(cluster, str((pod.get("spec") or {}).get("nodeName") or ""))
    if need is None or not version:
        return ""
    (cuda, _, _, require), d = need, version_tuple(version)
    full = full_support_driver(cuda)
    runs = full is not None and d >= full and (not require or _hook_accepts(require, d))
    return f"driver {version} runs CUDA {cuda[0]}.{cuda[1]}" if runs else ""


def _no_kernel_image(cluster: Cluster, pod: dict[str, Any]) -> list[Finding]:
    """§12 entry 8: the image has no code for the GPU's compute capability (nor PTX the driver can compile)."""
    seen = _status_message(pod, _NO_KERNEL)
    if seen is None:
        return []
    ref = pod_ref(pod)
    node = str((pod.get("spec") or {}).get("nodeName") or "")
    view = cluster.views.get(node)
    labels = view.labels if view else {}
    major, minor = labels.get(GFD_COMPUTE_MAJOR, ""), labels.get(GFD_COMPUTE_MINOR, "")
    ev = [Evidence(ref, seen[0], seen[1])]
    cc = (int(major), int(minor)) if major.isdigit() and minor.isdigit() else None
    if cc:
        ev.append(Evidence(f"Node {node}", f"labels[{GFD_COMPUTE_MAJOR}/minor]", f"{cc[0]}.{cc[1]}"))
    need = cuda_need(pod)
    cuda = need[0] if need else None
    cc_s = f"{cc[0]}.{cc[1]} (sm_{cc[0]}{cc[1]})" if cc else "unknown (no nvidia.com/gpu.compute labels)"
    first = _FIRST_CUDA.get(cc) if cc else None
    if cc and cuda and cuda >= (13, 0) and cc < (7, 5):
        summary = (f"the image's CUDA {cuda[0]}.{cuda[1]} has no code for the GPU's compute capability {cc_s}: "
                   "CUDA 13 dropped sm_50-70 (Maxwell, Pascal, Volta)")  # fmt: skip
        fix = "use an image built with CUDA 12.x for this GPU, or run the pod on Turing or newer GPUs"
    elif cc and cuda and first and cuda < first:
        summary = (f"the image's CUDA {cuda[0]}.{cuda[1]} predates the GPU's compute capability {cc_s} (first in "
                   f"CUDA {first[0]}.{first[1]}): it has no code for this architecture")  # fmt: skip
        fix = (f"use an image built with CUDA {first[0]}.{first[1]} or newer for this GPU, or run the pod on the "
               "GPUs it was built for (nodeSelector nvidia.com/gpu.product)")  # fmt: skip
    else:
        summary = (f"the image's GPU code was not built for the GPU's compute capability {cc_s} and carries no PTX "
                   "the driver can compile for it")  # fmt: skip
        fix = ("use an image built for this architecture (CMAKE_CUDA_ARCHITECTURES / TORCH_CUDA_ARCH_LIST including "
               "it, or PTX), or run the pod on the GPUs it was built for (nodeSelector nvidia.com/gpu.product)")
    return [Finding(ERROR, "NoKernelImageForGPU", ref, summary, fix, ev, nodes=(node,) if node else ())]


def _no_device(cluster: Cluster, pod: dict[str, Any], gpus: dict[str, int]) -> list[Finding]:
    """Seed §6.3 Issue 1 ("CUDA device not found") in a pod that requests a GPU: the device plugin allocated one but
    it never reached the container, which the NVIDIA container runtime (or CDI) puts there."""
    seen, found = _status_message(pod, _NO_DEVICE), "no GPU in it ('CUDA device not found')"
    runs = "" if seen else _driver_runs_image(cluster, pod)
    if runs:  # CUDA's "driver version is insufficient" on a driver new enough: its library is not in the container
        seen, found = _status_message(pod, _INSUFFICIENT), (
            f"no driver in it ('CUDA driver version is insufficient', though its node's {runs})")
    if seen is None:
        return []
    ref = pod_ref(pod)
    node = str((pod.get("spec") or {}).get("nodeName") or "")
    asked = ", ".join(f"{n} {r}" for r, n in gpus.items())
    ev = [Evidence(ref, seen[0], seen[1])]
    own = {
        str(c.get("name")): str(e.get("value", ""))
        for c in _containers(pod) for e in c.get("env") or [] if e.get("name") == "NVIDIA_VISIBLE_DEVICES"
    }  # fmt: skip
    if own:  # the container's own value replaces the devices the device plugin chose
        ev += [Evidence(ref, f"spec.containers[{name}].env[NVIDIA_VISIBLE_DEVICES]", v) for name, v in own.items()]
        summary = (f"the pod requests {asked} but CUDA finds {found}: its container sets NVIDIA_VISIBLE_DEVICES "
                   "itself, which replaces the devices the device plugin allocated")  # fmt: skip
        fix = "remove NVIDIA_VISIBLE_DEVICES from the container's env (the device plugin sets it) and recreate the pod"
    else:
        where = f" on {node}" if node else ""
        summary = (f"the pod requests {asked} but CUDA finds {found}: the GPU was "
                   f"allocated{where} but not put into the container, which the NVIDIA container runtime does: it is "
                   "missing or not configured there (the container toolkit not ready, or configuring another "
                   "containerd), or the pod started before the toolkit had configured it")  # fmt: skip
        fix = (f"make sure the GPU Operator runs on the node: `kubectl get pods -n {cluster.namespace} -o wide` (its "
               "container toolkit and validator pods must be Running or Completed; the stack's findings for the node "
               "name the first that is not) and `kubectl describe node` (nvidia.com/gpu allocatable); on k3s, k0s "
               "or RKE2 set CONTAINERD_CONFIG/CONTAINERD_SOCKET in toolkit.env; then recreate the pod")  # fmt: skip
    return [Finding(ERROR, "CUDADeviceNotFound", ref, summary, fix, ev, nodes=(node,) if node else ())]
