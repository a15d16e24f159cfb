"""The GPU stack (REFERENCE §12 entries 3, 9-13, 16, 19, 20): operands not ready, mapped to the first failing
component on each node (an image that cannot be pulled: the ClusterPolicy or NVIDIADriver field that sets it);
operands that cannot run on a GPU node; nodes stuck in an upgrade or MIG change; GPUs advertised below capacity,
or none on a GPU node."""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from .. import images, mig
from ..api import ClusterPolicySpec, ImageSpec
from ..nodes import DEPLOY_OPERANDS, DRIVER_REFUSED, deploy_label, workload_of
from ..nvidiadriver import cluster_spec
from ..nvidiadriver_api import parse_spec
from ..readiness import containers_ready, pod_ready
from ..states import all_states
from ..states.base import COMPONENT, STATE_LABEL
from .common import (
    DEVICE_PLUGIN_DEPLOY,
    HOST_TOOLKIT_FIX,
    MIG_CONFIG_LABEL,
    MIG_STATE_LABEL,
    PRODUCT_LABEL,
    PULL_CAUSES,
    UPGRADE_STATE,
    PullFailure,
    image_pull_failure,
    image_repository,
    policy,
    sandbox_failure,
    sandbox_fix,
    scheduler_message,
    shared_replicas,
    upgrade_waiting,
)
from .model import ERROR, INFO, WARNING, Cluster, Evidence, Finding, pod_ref
from .sched import DAEMON_TOLERATIONS, GPU, GPU_SHARED, MIG_PREFIX, NodeView, is_gpu_resource, selector_ok

_IN_PROGRESS_DONE = ("", "upgrade-done", "upgrade-required")
COUNT_LABEL = "nvidia.com/gpu.count"  # GFD's
DEPLOY_DRIVER = "nvidia.com/gpu.deploy.driver"
DEPLOY_TOOLKIT = deploy_label("container-toolkit")
DEPLOY_VALIDATOR = deploy_label("operator-validator")
VALIDATOR_STATE = "state-operator-validation"
# NFD's chart as README and the chart's notes install it: its worker tolerates the GPU taint (upstream's values).
NFD_TOLERATION = 'worker.tolerations=[{"key":"nvidia.com/gpu","operator":"Exists","effect":"NoSchedule"}]'
NFD_INSTALL = ("helm install nfd oci://registry.k8s.io/nfd/charts/node-feature-discovery -n node-feature-discovery "
               f"--create-namespace --set-json '{NFD_TOLERATION}'")  # fmt: skip
# Taints cluster-autoscaler and Karpenter (v1; before it karpenter.sh/disruption) put on a node they remove: the
# DaemonSet controller keeps the daemon pods already there (NoSchedule only stops new ones), nothing to tolerate.
_SCALE_DOWN_TAINTS = ("ToBeDeletedByClusterAutoscaler", "karpenter.sh/disrupted", "karpenter.sh/disruption")
# Taints the node lifecycle controller, the kubelet or the cloud controller put on a node for its state (NotReady,
# no network, not initialized) and take off once it clears: the node's state, not a taint to tolerate.
_CONDITION_TAINTS = ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable",
                     "node.kubernetes.io/network-unavailable", "node.cloudprovider.kubernetes.io/uninitialized")
# What a validator init container waits for, by its name (the component it validates).
_VALIDATES = {
    "driver-validation": "the driver (state-driver) on this node",
    "toolkit-validation": "the container toolkit (state-container-toolkit) on this node",
    "cuda-validation": "a CUDA workload run through the nvidia runtime",
    "plugin-validation": "the device plugin to advertise nvidia.com/gpu on this node",
    "mofed-validation": "the MOFED driver",
    "vfio-pci-validation": "the vfio-pci driver",
}
# The pods the validator's cuda- and plugin-validation run on the node, by their label app (upstream's validator
# manifests; plugin-validation's only with WITH_WORKLOAD=true).
_WORKLOADS = {"cuda-validation": "nvidia-cuda-validator", "plugin-validation": "nvidia-device-plugin-validator"}


def findings(cluster: Cluster) -> list[Finding]:
    """The stack's findings (computed once per run: pending's shortages read GPUsNotAdvertisedOnNode's nodes)."""
    if "stack" not in cluster.memo:
        cluster.memo["stack"] = _findings(cluster)
    return list(cluster.memo["stack"])


def unadvertised(cluster: Cluster) -> list[str]:
    """The GPU nodes that advertise no GPU resource though nothing else on them explains it."""
    return [n for f in findings(cluster) if f.kind == "GPUsNotAdvertisedOnNode" for n in f.nodes]


def _findings(cluster: Cluster) -> list[Finding]:
    out: list[Finding] = _operator(cluster)
    name, spec = policy(cluster)
    gpu_nodes = [n for n in cluster.snapshot.nodes.values() if n.has_gpu]
    if name is None:
        if gpu_nodes:
            out.append(Finding(
                ERROR, "NoClusterPolicy", "ClusterPolicy",
                f"{len(gpu_nodes)} nodes have NVIDIA GPUs but there is no ClusterPolicy, so no operand is deployed",
                "create one (`kubectl apply -f manifests/samples/clusterpolicy-default.yaml`) or install the chart "
                "with deployCR/clusterPolicy enabled",
            ))  # fmt: skip
        return out + _capacity(cluster)
    nodes = cluster.snapshot.nodes.values()
    # GPU nodes are often tainted nvidia.com/gpu (GKE's are): NFD's chart gives its worker no toleration.
    tainted = sorted(n.name for n in nodes if not n.has_nfd and any(t[0] == GPU for t in n.taints))
    if not any(n.has_nfd for n in nodes):
        out.append(Finding(
            ERROR, "NFDLabelsMissing", f"ClusterPolicy {name}",
            "no node carries Node Feature Discovery labels, so the operator finds no GPU node",
            f"install Node Feature Discovery, its worker tolerating the {GPU} taint ({NFD_INSTALL})",
            nodes=tuple(tainted),
        ))  # fmt: skip
    elif tainted:
        shown = ", ".join(tainted[:10]) + (f" and {len(tainted) - 10} more" if len(tainted) > 10 else "")
        out.append(Finding(
            ERROR, "NFDLabelsMissing", f"ClusterPolicy {name}",
            f"nodes tainted {GPU} carry no Node Feature Discovery labels ({shown}): NFD's worker does not tolerate "
            "the taint, so the operator finds no GPU there",
            f"give NFD's worker the toleration (`helm upgrade nfd oci://registry.k8s.io/nfd/charts/node-feature-"
            f"discovery -n node-feature-discovery --reuse-values --set-json '{NFD_TOLERATION}'`)",
            nodes=tuple(tainted),
        ))  # fmt: skip
    out += _operands(cluster, name)
    out += _blocked_daemonsets(cluster)
    out += _upgrades(cluster)
    out += _mig(cluster)
    out += _capacity(cluster)
    out += _unadvertised(cluster, spec, {n for f in out for n in f.nodes})
    return out


def _state_order() -> dict[str, int]:
    return {s.name: i for i, s in enumerate(all_states())}


def _why_not_ready(cluster: Cluster, pod: dict[str, Any]) -> tuple[str, str, str]:
    """(component, reason, fix) for an operand pod that is not ready."""
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    sandbox = sandbox_failure(cluster, pod)
    for cs in status.get("initContainerStatuses") or []:
        term = (cs.get("state") or {}).get("terminated")
        if term and term.get("exitCode") == 0:
            continue
        waiting = (cs.get("state") or {}).get("waiting") or {}
        name = cs.get("name", "?")
        what, look = _waits_for(cluster, pod, name)
        detail = (
            waiting.get("message")
            or waiting.get("reason")
            or ("running" if "running" in (cs.get("state") or {}) else "not started")
        )
        if sandbox and not cs.get("state", {}).get("running"):
            break
        if waiting.get("reason") == "CrashLoopBackOff" or cs.get("restartCount", 0) > 3:
            last = ((cs.get("lastState") or {}).get("terminated") or {}).get("message") or ""
            reason = f"init container {name} crash-looping ({cs.get('restartCount', 0)} restarts)" + (
                f": {_quote(last)}" if last else f": waits for {what}" if what else ""
            )
            return name, reason, _crash_cause(last) or (look if what else _crash_fix("", meta, name))
        reason = f"init container {name} not done ({detail})" + (f": waits for {what}" if what else "")
        return name, reason, look
    if sandbox:
        message = str(sandbox.get("message") or "")
        return "sandbox", f"FailedCreatePodSandBox: {message}", sandbox_fix(cluster, message)
    for cs in status.get("containerStatuses") or []:
        if cs.get("ready"):
            continue
        state = cs.get("state") or {}
        waiting = state.get("waiting") or {}
        last = ((cs.get("lastState") or {}).get("terminated") or {}).get("message") or ""
        name = cs.get("name", "?")
        if waiting.get("reason") == "CrashLoopBackOff" or cs.get("restartCount", 0) > 3:
            reason = f"container {name} crash-looping ({cs.get('restartCount', 0)} restarts)" + (
                f": {_quote(last)}" if last else ""
            )
            fix = _crash_fix(last, meta, name)
            return name, reason, fix
        detail = waiting.get("reason") or (
            "running, not ready (probe failing)" if "running" in state else "not started"
        )
        return (
            name,
            f"container {name} not ready ({detail})",
            _logs(meta, name),
        )
    if containers_ready(pod):  # only its Ready condition is False, as on a node gone NotReady
        node = (pod.get("spec") or {}).get("nodeName")
        why = f"pod not Ready though its containers are: is node {node} NotReady?"
        return "pod", why, f"kubectl describe node {node}"
    if not status.get("containerStatuses") and status.get("phase") == "Pending":
        return "pod", "pod Pending (not started)", f"kubectl describe pod -n {meta.get('namespace')} {meta.get('name')}"
    return "pod", f"phase {status.get('phase')}", f"kubectl describe pod -n {meta.get('namespace')} {meta.get('name')}"


def _waits_for(cluster: Cluster, pod: dict[str, Any], name: str) -> tuple[str, str]:
    """(what an init container waits for, "" for one that is no validator; where to look first)."""
    meta = pod.get("metadata") or {}
    state = (meta.get("labels") or {}).get(STATE_LABEL)
    what = _VALIDATES.get(name, "") if state else ""  # no operand: the validator's workload pod
    look = (f"look at {what} first; the validator's init containers pass in order, driver then toolkit, CUDA and "
            "plugin") if what else f"read its log: {_logs(meta, name)}"  # fmt: skip
    if name == "toolkit-validation" and state and state != VALIDATOR_STATE:
        return _waits_for_validator(cluster, pod)
    if name in _WORKLOADS and state == VALIDATOR_STATE:
        found = (_waits_for_plugin(cluster, pod) if name == "plugin-validation" else None) or _waits_for_workload(
            cluster, pod, name)  # fmt: skip
        if found is not None:
            return found
    if name not in ("driver-validation", "toolkit-validation"):
        return what, look
    node = str((pod.get("spec") or {}).get("nodeName") or "")
    view = cluster.views.get(node)
    _, spec = policy(cluster)
    if name == "toolkit-validation":  # the validator's: nvidia-smi in a container the nvidia runtime runs
        deploy = view.labels.get(DEPLOY_TOOLKIT, "") if view else ""
        if (spec is not None and not spec.toolkit.enabled) or deploy == "false":
            why = f"{DEPLOY_TOOLKIT}=false" if deploy == "false" else "toolkit.enabled is false"
            return (f"the NVIDIA Container Toolkit installed on the host ({why}: the operator deploys none on this "
                    "node)", HOST_TOOLKIT_FIX)  # fmt: skip
        return what, look
    deploy = view.labels.get(DEPLOY_DRIVER, "") if view else ""
    if (spec is not None and not spec.driver.enabled) or deploy in ("pre-installed", "false"):
        why = "driver.enabled is false" if deploy not in ("pre-installed", "false") else f"{DEPLOY_DRIVER}={deploy}"
        return (f"the driver installed on the host ({why}: the operator deploys none on this node)",
                "install the NVIDIA driver on the host, or repair it: `nvidia-smi` must work on the node")  # fmt: skip
    if deploy == DRIVER_REFUSED:
        return (f"a driver, which the operator does not deploy on this node ({DEPLOY_DRIVER}={DRIVER_REFUSED}: "
                "the ClusterPolicy's driver version cannot run its GPU)",
                "set a driver version that supports this GPU (the ClusterPolicy's DriverRefused condition says "
                "which)")  # fmt: skip
    if _driver_ready(cluster, node):
        return (f"{what}, whose pod is ready: the validation itself fails",
                f"read its log: {_logs(meta, name)}")  # fmt: skip
    return what, look


def _waits_for_plugin(cluster: Cluster, pod: dict[str, Any]) -> tuple[str, str] | None:
    """(what, where to look) for the validator's plugin-validation while the node's device plugin, which advertises
    nvidia.com/gpu, is not ready or not there (its own failure: it ranks after the validator); None once it is
    ready."""
    node = str((pod.get("spec") or {}).get("nodeName") or "")
    what = _VALIDATES["plugin-validation"]
    plugins = [p for p in _operand_pods_on(cluster, node) if not p["metadata"].get("deletionTimestamp")
               and (p["metadata"].get("labels") or {}).get(STATE_LABEL) == "state-device-plugin"]  # fmt: skip
    if any(pod_ready(p) for p in plugins) or not plugins and any(
            node in d.nodes and ((d.pod.get("metadata") or {}).get("labels") or {}).get(STATE_LABEL)
            == "state-device-plugin" for d in cluster.daemon_pods):  # fmt: skip
        return None
    if plugins:
        why, fix = _pod_failure(cluster, plugins[0])
        return f"{what}, but its pod {plugins[0]['metadata'].get('name')} there is not ready: {why}", fix
    view = cluster.views.get(node)
    deploy = view.labels.get(DEVICE_PLUGIN_DEPLOY, "") if view else ""
    return (f"{what}, and there is no device plugin pod on this node ({DEVICE_PLUGIN_DEPLOY}="
            f"{deploy or '(unset)'})",
            f"look at DaemonSet {cluster.namespace}/nvidia-device-plugin-daemonset: it runs on the nodes labelled "
            f"{DEVICE_PLUGIN_DEPLOY}=true; why has it no pod on node {node}?")  # fmt: skip


def _waits_for_workload(cluster: Cluster, pod: dict[str, Any], name: str) -> tuple[str, str] | None:
    """(what, where to look) for the validator's cuda- or plugin-validation while the workload pod it runs on the
    node has not succeeded (its newest); None without one."""
    node = str((pod.get("spec") or {}).get("nodeName") or "")
    work = [p for p in _operand_pods_on(cluster, node) if (p["metadata"].get("labels") or {}).get("app")
            == _WORKLOADS[name] and not p["metadata"].get("deletionTimestamp") and not pod_ready(p)
            and (p.get("status") or {}).get("phase") != "Succeeded"]  # fmt: skip
    if not work:
        return None
    newest = max(work, key=lambda p: str(p["metadata"].get("creationTimestamp") or ""))
    why, fix = _pod_failure(cluster, newest)
    return f"{_VALIDATES[name]}, its pod {newest['metadata'].get('name')}, which has not succeeded: {why}", fix


def _pod_failure(cluster: Cluster, pod: dict[str, Any]) -> tuple[str, str]:
    """(why, fix) of a pod another waits for: the image it cannot pull, or why it is not ready."""
    pulled = image_pull_failure(cluster, pod)
    if pulled is not None:
        why = f"container {pulled.container} cannot pull image {pulled.image}: {PULL_CAUSES[pulled.cause]}"
        return why, _pull_fix(cluster, pod, pulled)
    _, why, fix = _why_not_ready(cluster, pod)
    return why, fix


def _waits_for_validator(cluster: Cluster, pod: dict[str, Any]) -> tuple[str, str]:
    """(what, where to look) for an operand's toolkit-validation: it waits for toolkit-ready, which only the
    validator pod's toolkit-validation writes (upstream's Toolkit.validate), not the container toolkit."""
    node = str((pod.get("spec") or {}).get("nodeName") or "")
    what = "toolkit-ready, which the validator's toolkit-validation writes"
    validator = next((p for p in _operand_pods_on(cluster, node) if not p["metadata"].get("deletionTimestamp")
                      and (p["metadata"].get("labels") or {}).get(STATE_LABEL) == VALIDATOR_STATE), None)  # fmt: skip
    if validator is not None and not pod_ready(validator) and not _passed(validator, "toolkit-validation"):
        return what, f"look at {pod_ref(validator)} first: its first init container not done"
    if validator is not None or any(node in d.nodes and ((d.pod.get("metadata") or {}).get("labels") or {}).get(
            STATE_LABEL) == VALIDATOR_STATE for d in cluster.daemon_pods):  # fmt: skip
        done = "whose toolkit-validation on this node passed" if validator is not None and not pod_ready(
            validator) else "whose pod on this node is ready"  # fmt: skip
        return (f"{what}, {done}: its next check (every 5 s) should find the file",
                f"if it still waits, toolkit-ready was removed from /run/nvidia/validations: delete the validator "
                f"pod on node {node}, whose replacement validates again and writes it")  # fmt: skip
    view = cluster.views.get(node)
    deploy = view.labels.get(DEPLOY_VALIDATOR, "") if view else ""
    if deploy != "true":
        return (f"{what}, and no validator runs on this node ({DEPLOY_VALIDATOR}={deploy or '(unset)'})",
                f"set {DEPLOY_VALIDATOR}=true on the node (`kubectl label node {node} {DEPLOY_VALIDATOR}=true "
                "--overwrite`): nothing else writes toolkit-ready")  # fmt: skip
    return (f"{what}, and there is no validator pod on this node yet",
            f"look at DaemonSet {cluster.namespace}/nvidia-operator-validator: why has it no pod on node {node}?")


def _passed(pod: dict[str, Any], init: str) -> bool:
    """Whether the pod's init container of that name has exited 0."""
    return any(cs.get("name") == init and ((cs.get("state") or {}).get("terminated") or {}).get("exitCode") == 0
               for cs in (pod.get("status") or {}).get("initContainerStatuses") or [])  # fmt: skip


def _operand_pods_on(cluster: Cluster, node: str) -> list[dict[str, Any]]:
    """The pods in the operator's namespace on the node (indexed once per run: a walk of every pod per node was
    quadratic on a cluster starting up)."""
    by_node = cluster.memo.get("operand_pods_on")
    if by_node is None:
        by_node = cluster.memo["operand_pods_on"] = {}
        for pod in cluster.pods:
            meta = pod.get("metadata") or {}
            if meta.get("namespace") == cluster.namespace:
                by_node.setdefault(str((pod.get("spec") or {}).get("nodeName") or ""), []).append(pod)
    return list(by_node.get(node, ()))


def _driver_ready(cluster: Cluster, node: str) -> bool:
    """Whether the operator's driver pod on the node is ready (read, or its settled DaemonSet's)."""
    for pod in _operand_pods_on(cluster, node):
        meta = pod["metadata"]
        if (meta.get("labels") or {}).get(COMPONENT) == "nvidia-driver" and pod_ready(pod) \
                and not meta.get("deletionTimestamp"):  # fmt: skip
            return True
    return any(node in d.nodes and ((d.pod.get("metadata") or {}).get("labels") or {}).get(COMPONENT)
               == "nvidia-driver" for d in cluster.daemon_pods)  # fmt: skip


def _logs(meta: dict[str, Any], container: str) -> str:
    return f"kubectl logs -n {meta.get('namespace')} {meta.get('name')} -c {container}"


def _quote(message: str) -> str:
    """A termination message on one line, its first 200 characters."""
    return " ".join(message.split())[:200]


def _crash_cause(message: str) -> str:
    """The fix for a driver crash cause the message names (REFERENCE §12 entry 12); "" for another."""
    low = message.lower()
    # k8s-driver-manager: "cannot proceed until all GPU pods are drained from the node" (eviction failed, no drain)
    if "in use" in low or "drained from the node" in low:
        return ("the old driver is still in use: enable driver.upgradePolicy pod eviction or drain "
                "(gpuPodDeletion/drain) so GPU pods leave the node before the driver reloads, or move them off "
                "the node (a PodDisruptionBudget or a pod no controller owns stops the eviction)")  # fmt: skip
    if "kernel" in low and ("resolve" in low or "headers" in low):
        return (
            "the driver cannot build for this kernel: provide kernel headers or use precompiled drivers "
            "(driver.usePrecompiled)"
        )
    # The kernel refuses an unsigned module with EKEYREJECTED or, on some kernels (RHEL 8), ENOKEY.
    if "secure boot" in low or "key was rejected" in low or "required key not available" in low:
        return "Secure Boot rejects the unsigned module: turn Secure Boot off or use signed precompiled drivers"
    return ""


def _crash_fix(message: str, meta: dict[str, Any], container: str) -> str:
    return _crash_cause(message) or f"read its log and the previous run's: {_logs(meta, container)} --previous"


def _operands(cluster: Cluster, name: str) -> list[Finding]:
    status = cluster.snapshot.policies[name].get("status") or {}
    not_ready = [s for s in status.get("states") or [] if s.get("state") == "notReady"]
    order = _state_order()
    first: dict[str, tuple[int, dict[str, Any]]] = {}  # node -> first failing operand pod
    for pod in cluster.pods:
        meta = pod.get("metadata") or {}
        if meta.get("namespace") != cluster.namespace or pod_ready(pod) or meta.get("deletionTimestamp"):
            continue
        state = (meta.get("labels") or {}).get(STATE_LABEL)
        node = (pod.get("spec") or {}).get("nodeName")
        if not state or not node or (pod.get("status") or {}).get("phase") == "Succeeded":
            continue
        rank = order.get(state, 99)
        if node not in first or rank < first[node][0]:
            first[node] = (rank, pod)
    groups: dict[tuple[str, str, str, str], list[tuple[str, dict[str, Any]]]] = {}
    pull_evidence: dict[str, tuple[Evidence, ...]] = {}  # node -> what its pod's image pull failure showed
    for node, (_, pod) in sorted(first.items()):
        state = (pod["metadata"].get("labels") or {}).get(STATE_LABEL, "?")
        pulled = image_pull_failure(cluster, pod)
        if pulled is not None:
            kind = "ImagePullFailed"
            reason = f"container {pulled.container} cannot pull image {pulled.image}: {PULL_CAUSES[pulled.cause]}"
            fix = _pull_fix(cluster, pod, pulled)
            pull_evidence[node] = pulled.evidence
        else:
            kind = "OperandNotReady"
            _, reason, fix = _why_not_ready(cluster, pod)
        groups.setdefault((kind, state, reason, fix), []).append((node, pod))
    out = []
    policy_ev = [
        Evidence(f"ClusterPolicy {name}", "status.states", f"{s.get('name')}: {s.get('message', '')}")
        for s in not_ready
    ]
    for (kind, state, reason, fix), members in groups.items():
        nodes = [n for n, _ in members]
        more = f" and {len(nodes) - 5} more" if len(nodes) > 5 else ""
        seen = [e for n, _ in members[:3] for e in pull_evidence.get(n, ())]
        ev = (seen or [Evidence(pod_ref(p), "status", reason) for _, p in members[:3]]) + policy_ev[:3]
        out.append(Finding(
            ERROR, kind, f"{state} on {', '.join(nodes[:5])}{more}",
            f"{state} is the first operand not ready on {len(nodes)} node(s): {reason}",
            fix, ev, nodes=tuple(nodes),
        ))  # fmt: skip
    if not_ready and not groups:
        out.append(Finding(
            ERROR, "OperandNotReady", f"ClusterPolicy {name}",
            "operands are not ready: " + "; ".join(f"{s.get('name')}: {s.get('message', '')}" for s in not_ready),
            f"kubectl get pods -n {cluster.namespace} -o wide; and see the states' messages", policy_ev,
        ))  # fmt: skip
    return out


def _image_source(cluster: Cluster, pod: dict[str, Any], image: str) -> tuple[str, str, ImageSpec, str, str] | None:
    """(the object, the path of its section, the section, the image it resolves to without the operator's env, the
    operator's env variable that names it where the section sets none, "" if none applies) that sets an operand
    container's image: the ClusterPolicy's, or for a driver DaemonSet an NVIDIADriver owns, that NVIDIADriver's."""
    name, spec = policy(cluster)
    if name is None or spec is None:
        return None
    obj, driver = f"ClusterPolicy {name}", "driver"
    daemonset = next((o.get("name") for o in (pod.get("metadata") or {}).get("ownerReferences") or []
                      if o.get("kind") == "DaemonSet"), "")  # fmt: skip
    owners = ((cluster.snapshot.owned.get(("DaemonSet", cluster.namespace, str(daemonset))) or {}).get("metadata")
              or {}).get("ownerReferences") or []  # fmt: skip
    nvidia_driver = next((str(o.get("name")) for o in owners if o.get("kind") == "NVIDIADriver"), "")
    if nvidia_driver:
        try:
            raw = cluster.snapshot.nvidia_drivers.get(nvidia_driver) or {}
            spec = cluster_spec(spec, parse_spec(raw.get("spec")))
        except ValueError:
            return None
        obj, driver = f"NVIDIADriver {nvidia_driver}", ""  # its driver fields are at the top of its spec
    state = (pod.get("metadata", {}).get("labels") or {}).get(STATE_LABEL)
    own = next((s.section for s in all_states() if s.name == state), None)
    sections: list[tuple[str | None, str, ImageSpec, str]] = [
        (s.section, ClusterPolicySpec.model_fields[s.section].alias or s.section, settings, s.component)
        for s in all_states()
        if s.section and s.component and s.section != "driver" and isinstance(settings := s.settings(spec), ImageSpec)
    ]  # fmt: skip
    sections += [("driver", driver, spec.driver, "driver"),
                 (None, f"{driver}.manager" if driver else "manager", spec.driver.manager, "driver-manager"),
                 (None, "gds", spec.gds, "gds"), (None, "gdrcopy", spec.gdrcopy, "gdrcopy")]  # fmt: skip
    # The operator's env is not doctor's: resolve without it, and name its variable (none for an NVIDIADriver's
    # driver, GDS and GDRCopy images, as states/driver.py).
    no_env = ("driver", "gds", "gdrcopy") if nvidia_driver else ()
    # A section whose repository is the image's; else one whose image name is, where the operator's env applies (the
    # section sets no image; the env may name a mirror's registry) and the pod runs its image: its own section's, the
    # validator's, the driver's others (section None). The pod's own section first, then the validator's (every
    # state's init containers run its image).
    repository = image_repository(image)
    found = []
    for section, path, image_spec, component in sections:
        resolved = images.resolve(image_spec, component, env=False)
        env = "" if component in no_env else images.ENV.get(component, "")
        repo = image_repository(resolved)
        if repo == repository or (env and not image_spec.image and section in (own, "validator", None)
                                  and repo.rsplit("/", 1)[-1] == repository.rsplit("/", 1)[-1]):
            found.append((repo != repository, section != own, section != "validator", resolved != image, path,
                          image_spec, resolved, env))  # fmt: skip
    found.sort(key=lambda f: f[:5])
    return (obj, *found[0][4:]) if found else None


def _pull_fix(cluster: Cluster, pod: dict[str, Any], pulled: PullFailure) -> str:
    """What to change, and where, for an operand image that cannot be pulled."""
    meta = pod.get("metadata") or {}
    describe = f"kubectl describe pod -n {meta.get('namespace')} {meta.get('name')}"
    source = _image_source(cluster, pod, pulled.image)
    if source is None:
        return f"{describe} (its events say why the pull fails)"
    obj, path, section, resolved, env = source

    def field(name: str) -> str:
        return f"{path}.{name}" if path else name

    repo = image_repository(pulled.image)
    tagged = path in ("driver", "", "gds", "gdrcopy")  # images tagged <version>-<os> per node pool
    if section.repository and section.image and section.version:
        fields = f"{field('repository')}, {field('image')} and {field('version')}"
    elif section.image:
        fields = field("image")
    else:
        fields = ""
    where = f"{obj}'s {fields or field('repository') + ', ' + field('image') + ' and ' + field('version')}"
    if pulled.cause == "not-found":
        if fields == field("image"):
            fix = f"correct {obj}'s {field('image')} ({section.image}) to an image that exists"
        elif fields:
            fix = (f"set {obj}'s {field('version')} ({section.version}) to a version that {repo} has, or correct "
                   f"{field('repository')} / {field('image')}")  # fmt: skip
        elif pulled.image == resolved or (tagged and pulled.image.startswith(resolved + "-")):
            fix = (f"{obj} sets no image here, so the operator's default {resolved} is used: set {where} to an image "
                   "your registry has")  # fmt: skip
        elif env:
            fix = (f"{obj} sets no image here, so the operator's env {env} (its Deployment's; operator.env in the "
                   f"chart) names it, not its default {resolved}: correct {env}, or set {where} to an image your "
                   "registry has")  # fmt: skip
        else:
            fix = (f"{obj} sets no image here (the operator's default is {resolved}): set {where} to an image your "
                   "registry has")  # fmt: skip
        if pulled.image != resolved and path == ("driver" if obj.startswith("ClusterPolicy") else ""):
            tag = pulled.image.rsplit(":", 1)[-1]
            fix += (f" (the driver's tag is <{field('version')}>-<os>, <{field('version')}>-<kernel>-<os> with "
                    f"{field('usePrecompiled')}: {tag} must exist)")  # fmt: skip
        return fix
    return {
        "denied": f"name a Secret with credentials for {repo} in {obj}'s {field('imagePullSecrets')} (a "
        f"docker-registry Secret in namespace {meta.get('namespace')}), or correct {where}",
        "unreachable": f"make {repo}'s registry reachable from the node (DNS, proxy, firewall), or mirror the image "
        f"and set {where} to the mirror's",
        "invalid": f"correct {where}",
        "never": f"set {obj}'s {field('imagePullPolicy')} to IfNotPresent",
    }.get(pulled.cause, f"{describe} (its events say why the pull fails); the image comes from {where}")


def _deleting(cluster: Cluster) -> set[str]:
    return {str((n.get("metadata") or {}).get("name")) for n in cluster.nodes
            if (n.get("metadata") or {}).get("deletionTimestamp")}  # fmt: skip


def _tolerated(tolerations: list[dict[str, Any]], view: NodeView) -> list[dict[str, Any]]:
    from .sched import untolerated_taints

    return untolerated_taints({"spec": {"tolerations": tolerations}}, view)


def _blocked_daemonsets(cluster: Cluster) -> list[Finding]:
    """DaemonSets whose node selector takes a GPU node that a taint keeps them off (DESIRED lower than it should).
    Nodes NotReady or being deleted, taints of a node's state, and those of an autoscaler removing it are left out."""
    blocked: dict[str, list[str]] = {}
    taints: dict[str, set[str]] = {}
    deleting = _deleting(cluster)
    gpu_nodes = [
        cluster.views[n.name] for n in cluster.snapshot.nodes.values()
        if n.has_gpu and n.ready and n.name in cluster.views and n.name not in deleting
    ]  # fmt: skip
    for (kind, _, ds_name), ds in cluster.snapshot.owned.items():
        if kind != "DaemonSet":
            continue
        template = ((ds.get("spec") or {}).get("template") or {}).get("spec") or {}
        probe = {
            "spec": {"nodeSelector": template.get("nodeSelector") or {}, "affinity": template.get("affinity") or {}}
        }
        for view in gpu_nodes:
            if not selector_ok(probe, view.labels, view.name):
                continue
            bad = [t for t in _tolerated(list(template.get("tolerations") or []) + DAEMON_TOLERATIONS, view)
                   if t.get("key") not in (*_SCALE_DOWN_TAINTS, *_CONDITION_TAINTS)]  # fmt: skip
            if bad:
                blocked.setdefault(ds_name, []).append(view.name)
                taints.setdefault(ds_name, set()).update(f"{t.get('key')}:{t.get('effect')}" for t in bad)
    out = []
    for ds_name, nodes in sorted(blocked.items()):
        out.append(Finding(
            ERROR, "OperandBlockedByTaint", f"DaemonSet {cluster.namespace}/{ds_name}",
            f"{ds_name} cannot run on {len(nodes)} GPU node(s) ({', '.join(nodes[:5])}): untolerated taint "
            f"{', '.join(sorted(taints[ds_name]))}",
            "add the taint's toleration to daemonsets.tolerations in the ClusterPolicy (or the chart values)",
            [Evidence(f"Node {n}", "spec.taints", ", ".join(sorted(taints[ds_name]))) for n in nodes[:3]],
            nodes=tuple(nodes),
        ))  # fmt: skip
    return out


def _upgrades(cluster: Cluster) -> list[Finding]:
    waiting = upgrade_waiting(cluster)
    out = []
    for view in cluster.views.values():
        state = view.labels.get(UPGRADE_STATE, "")
        if state in _IN_PROGRESS_DONE:
            continue
        reason = waiting.get(view.name, "")
        ev = [Evidence(f"Node {view.name}", f"labels[{UPGRADE_STATE}]", state)]
        if reason:
            ev.append(Evidence("ClusterPolicy", "status.upgrade.waiting", reason))
        if state == "upgrade-failed":
            out.append(Finding(
                ERROR, "DriverUpgradeFailed", f"Node {view.name}",
                f"the driver upgrade failed on {view.name}" + (f": {reason}" if reason else ""),
                "fix the cause (driver pod log, eviction refused by a PodDisruptionBudget); the node returns to "
                "service by itself once its driver pod is in sync and ready, or relabel it "
                f"{UPGRADE_STATE}=upgrade-required to retry",
                ev, nodes=(view.name,),
            ))  # fmt: skip
        else:
            out.append(Finding(
                INFO, "NodeInDriverUpgrade", f"Node {view.name}",
                f"{view.name} is in driver upgrade state {state}" + (f", waiting for: {reason}" if reason else "")
                + ("; it is cordoned" if view.unschedulable else ""),
                "nothing while it makes progress; `gpu-operator upgrade plan` shows every node's wait",
                ev, nodes=(view.name,),
            ))  # fmt: skip
    return out


def _mig_said(cluster: Cluster, name: str | None, node: str) -> str:
    """What the policy's MIGConfig condition says of the node ("node N: layout 'L' <why>"), or "" (nothing, or the
    node is past those it names)."""
    status = (cluster.snapshot.policies[name].get("status") or {}) if name else {}
    cond: dict[str, Any] = next((c for c in status.get("conditions") or [] if c.get("type") == mig.CONDITION), {})
    found = re.search(rf"(?:^|; )(node {re.escape(node)}: layout .*?)(?=; node \S+: layout |; and \d+ more$|$)",
                      str(cond.get("message") or ""))  # fmt: skip
    return found.group(1) if found else ""


def _gate_wait(labels: Mapping[str, str]) -> bool:
    """The MIG gate's wait: mig-manager held by the operator with its `pending`, no operand paused (nothing is
    applied; mig-manager pauses them when it works)."""
    return (
        labels.get(MIG_STATE_LABEL) == "pending"
        and labels.get(mig.MANAGER_LABEL) == mig.PAUSED
        and not any(labels.get(deploy_label(op)) == mig.PAUSED for op in mig.PAUSED_BY_MANAGER)
    )


def _mig(cluster: Cluster) -> list[Finding]:
    out = []
    name, spec = policy(cluster)
    enabled = spec is None or spec.mig_manager.enabled
    for view in cluster.views.values():
        state = view.labels.get(MIG_STATE_LABEL, "")
        layout = view.labels.get(MIG_CONFIG_LABEL, "")
        ev = [Evidence(f"Node {view.name}", f"labels[{MIG_STATE_LABEL}]", state),
              Evidence(f"Node {view.name}", f"labels[{MIG_CONFIG_LABEL}]", layout)]  # fmt: skip
        said = _mig_said(cluster, name, view.name)
        if said:
            ev.append(Evidence(f"ClusterPolicy {name}", f"status.conditions[{mig.CONDITION}].message", said))
        why = re.sub(r"^node \S+: layout \S+ ", "", said)
        if enabled and _gate_wait(view.labels):
            drain = spec is not None and spec.driver.upgrade_policy.drain.enable
            out.append(Finding(
                INFO, "MIGChangeWaiting", f"Node {view.name}",
                f"the MIG layout change to {layout!r} on {view.name} waits for the GPU pods running there; nothing "
                "is applied and no operand is paused" + (f"; {why.removeprefix('waits: ')}" if why else ""),
                "let the GPU pods finish or move them" + (
                    "; the reason says why driver.upgradePolicy.drain does not evict them" if drain else
                    ", or set driver.upgradePolicy.drain.enable to have them evicted (PodDisruptionBudgets hold)"),
                ev, nodes=(view.name,),
            ))  # fmt: skip
        elif enabled and view.labels.get(mig.MANAGER_LABEL) == mig.PAUSED and state not in mig.IN_PROGRESS:
            # Held, not waiting: the gate refused the layout; nothing on the node changes (a wait's pending: failed).
            config = spec.mig_manager.config.name if spec is not None else ""
            out.append(Finding(
                ERROR, "MIGLayoutRefused", f"Node {view.name}",
                f"the operator refused MIG layout {layout!r} on {view.name}"
                + (f": it {why}" if why and not why.startswith("waits: ") else
                   f" (the ClusterPolicy's {mig.CONDITION} condition says why)")
                + "; mig-manager is held there and the node keeps the layout it has",
                f"label the node with a layout valid for {view.labels.get(PRODUCT_LABEL) or 'its GPU'} "
                f"(`gpu-operator mig layouts --node {view.name}`)"
                + (f" or fix the ConfigMap {config}" if config else ""),
                ev, nodes=(view.name,),
            ))  # fmt: skip
        elif state == "failed":
            out.append(Finding(
                ERROR, "MIGChangeFailed", f"Node {view.name}",
                f"the MIG manager failed to apply layout {layout!r} on {view.name}",
                "check that the layout exists in the mig-parted ConfigMap for this GPU and that no process holds "
                "the GPU (MIG mode changes need an idle GPU, sometimes a reboot); read the nvidia-mig-manager log",
                ev, nodes=(view.name,),
            ))  # fmt: skip
        elif state in mig.IN_PROGRESS:
            out.append(Finding(
                INFO, "MIGChangeInProgress", f"Node {view.name}",
                f"the MIG manager is applying layout {layout!r} on {view.name} ({state}); operands are paused "
                "(paused-for-mig-change) until it succeeds",
                "wait for nvidia.com/mig.config.state=success", ev, nodes=(view.name,),
            ))  # fmt: skip
    return out


def _plugin_away(cluster: Cluster, view: NodeView) -> bool:
    """Whether the node's device plugin is paused or restarting: its deploy label paused (MIG change, driver restart)
    or false, a MIG change (not the gate's wait: it pauses nothing) or driver upgrade under way, or its pod not
    ready."""
    deploy = view.labels.get(DEVICE_PLUGIN_DEPLOY)
    if deploy is not None and deploy != "true":
        return True
    if view.labels.get(MIG_STATE_LABEL) in mig.IN_PROGRESS and not _gate_wait(view.labels):
        return True
    if view.labels.get(UPGRADE_STATE, "") not in _IN_PROGRESS_DONE:
        return True
    pods = [p for p in _operand_pods_on(cluster, view.name)
            if (p["metadata"].get("labels") or {}).get(STATE_LABEL) == "state-device-plugin"]
    return bool(pods) and not any(pod_ready(p) and not p["metadata"].get("deletionTimestamp") for p in pods)


def _unhealthy(resource: str, count: Decimal, replicas: int) -> str:
    """`count` devices of a GPU resource, in its units: GPUs, MIG devices, or the replicas of shared GPUs."""
    if resource.startswith(MIG_PREFIX):
        return f"{count} {resource} device(s)"
    if replicas > 1 or resource == GPU_SHARED:
        return f"{count} {resource} replica(s) ({replicas} per GPU)"
    return f"{count} GPU(s)"


def _capacity(cluster: Cluster) -> list[Finding]:
    """Nodes that advertise fewer of a GPU resource (whole GPUs, MIG devices, shared GPUs) than their capacity."""
    out = []
    for view in cluster.views.values():
        short = [(r, cap, alloc) for r, cap in sorted(view.capacity.items())
                 if is_gpu_resource(r) and cap > (alloc := view.allocatable.get(r, Decimal(0)))]  # fmt: skip
        # A device plugin that deregisters leaves every GPU unhealthy, its capacity kept for 5 minutes (the kubelet's
        # endpointStopGracePeriod): not a GPU fault.
        if not short or _plugin_away(cluster, view):
            continue
        replicas = shared_replicas(view.labels)
        # A resource the plugin advertises no more (a MIG layout or sharing change renamed it) reads the same, for
        # those 5 minutes: all of it unhealthy while the plugin advertises another.
        renamed = [r for r, _, alloc in short if not alloc and any(
            is_gpu_resource(o) and n > 0 for o, n in view.allocatable.items())]  # fmt: skip
        out.append(Finding(
            WARNING, "GPUsUnhealthy", f"Node {view.name}",
            f"{view.name} advertises " + "; ".join(f"{alloc} of its {cap} {r}" for r, cap, alloc in short)
            + ": the device plugin marked " + ", ".join(_unhealthy(r, cap - alloc, replicas) for r, cap, alloc in short)
            + " unhealthy (an Xid: 79 fallen off the bus, 48/94/95 ECC errors)" + (
                f"; or, for up to 5 minutes after a MIG layout or sharing change, {', '.join(renamed)} is no longer "
                "advertised and the kubelet keeps its capacity" if renamed else ""),
            ("if it lasts past 5 minutes, " if renamed else "") + "drain the node and reset or replace the GPU "
            "(nvidia-smi -r, or the node's provider); the device plugin's log names the Xid",
            [Evidence(f"Node {view.name}", f"status.capacity / status.allocatable [{r}]", f"{cap} / {alloc}")
             for r, cap, alloc in short],
            nodes=(view.name,),
        ))  # fmt: skip
    return out


def _unadvertised(cluster: Cluster, spec: ClusterPolicySpec | None, named: set[str]) -> list[Finding]:
    """GPU nodes that advertise no GPU resource of any kind (REFERENCE §12 entry 1 on one node), where nothing else
    explains it: not a node for VMs, opted out of the device plugin or of every operand, with its device plugin
    paused or restarting, NotReady or being deleted, nor one another stack finding names (its cause)."""
    if spec is None or not spec.device_plugin.enabled:
        return []
    skip = named | _deleting(cluster)
    out = []
    for facts in cluster.snapshot.nodes.values():
        view = cluster.views.get(facts.name)
        if view is None or not facts.has_gpu or not facts.ready or facts.name in skip:
            continue
        if any(is_gpu_resource(r) and amount > 0 for r, amount in view.allocatable.items()):
            continue
        if workload_of(facts, spec) != "container" or view.labels.get(DEPLOY_OPERANDS) == "false":
            continue
        if _plugin_away(cluster, view):
            continue
        count, product = view.labels.get(COUNT_LABEL, ""), view.labels.get(PRODUCT_LABEL, "")
        ev = [Evidence(f"Node {view.name}", "status.allocatable", "no nvidia.com/gpu, nvidia.com/gpu.shared or "
                       "nvidia.com/mig-*")]  # fmt: skip
        ns = cluster.namespace
        pod_log = (f"`kubectl get pods -n {ns} -l app=nvidia-device-plugin-daemonset --field-selector "
                   f"spec.nodeName={view.name}` finds its device plugin pod; its log (`kubectl logs -n {ns} POD`) "
                   "says why it registered no GPU")  # fmt: skip
        # GFD under mig.strategy single: gpu.count counts MIG devices, and is 0 with -MIG-INVALID (mig-strategy.go)
        if product.endswith("-MIG-INVALID"):
            ev.append(Evidence(f"Node {view.name}", f"labels[{PRODUCT_LABEL}]", product))
            cause = (f": GFD labels it {product}, its GPUs are not all MIG-enabled with MIG devices of one profile, "
                     "which the device plugin's single strategy refuses (invalid MIG configuration)")  # fmt: skip
            fix = ("give the node a layout with MIG devices of one profile on every GPU (nvidia.com/mig.config, e.g. "
                   "all-1g.10gb), or set the ClusterPolicy's mig.strategy to mixed; " + pod_log)  # fmt: skip
            count = ""
        else:
            cause = ": its device plugin is not running there, or registered no GPU"
            fix = pod_log
        if count:
            ev.append(Evidence(f"Node {view.name}", f"labels[{COUNT_LABEL}]", count))
        unit = " MIG devices" if "-MIG-" in product else ""
        out.append(Finding(
            WARNING, "GPUsNotAdvertisedOnNode", f"Node {view.name}",
            f"{view.name} has NVIDIA GPUs" + (f" ({count}{unit})" if count else "") + " but advertises none to pods "
            "(no nvidia.com/gpu, gpu.shared or mig-*)" + cause,
            fix, ev, nodes=(view.name,),
        ))  # fmt: skip
    return out


# The operator's own pod, by the chart's selector labels (manifests/gpu-operator.yaml's too).
OPERATOR_SELECTOR = {"app": "gpu-operator", COMPONENT: "gpu-operator"}
_OPERATOR_VALUES = "the chart's operator.repository, operator.image and operator.version"


def _operator(cluster: Cluster) -> list[Finding]:
    """The operator's pods in its namespace, none of them Ready: it labels no node and deploys no operand, so nothing
    else is the cause (its finding names every GPU node). None where no such pod is read (run outside the cluster)."""
    pods = sorted((p for p in cluster.pods if (p.get("metadata") or {}).get("namespace") == cluster.namespace
                   and not p["metadata"].get("deletionTimestamp")
                   and (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")  # evicted: replaced
                   and OPERATOR_SELECTOR.items() <= ((p["metadata"].get("labels") or {}).items())),
                  key=lambda p: str(p["metadata"].get("name")))  # fmt: skip
    if not pods or any(pod_ready(p) for p in pods):
        return []
    pod, meta = pods[0], pods[0]["metadata"]
    node = (pod.get("spec") or {}).get("nodeName")
    ref, describe = pod_ref(pod), f"kubectl describe pod -n {meta.get('namespace')} {meta.get('name')}"
    evidence: list[Evidence] = []
    pulled = image_pull_failure(cluster, pod)
    status = pod.get("status") or {}
    container = next((c for c in status.get("containerStatuses") or [] if not c.get("ready")), None)
    if pulled is not None:
        evidence += pulled.evidence
        why = f"container {pulled.container} cannot pull image {pulled.image}: {PULL_CAUSES[pulled.cause]}"
        repo = image_repository(pulled.image)
        fix = {
            "not-found": f"set {_OPERATOR_VALUES} to an image your registry has (operator.repository: a mirror's)",
            "denied": f"name a docker-registry Secret with credentials for {repo} (in namespace {cluster.namespace}) "
            f"in the chart's operator.imagePullSecrets, or correct {_OPERATOR_VALUES}",
            "unreachable": f"make {repo}'s registry reachable from node {node} (DNS, proxy, firewall), or mirror the "
            "image and set operator.repository to the mirror's",
            "never": "set the chart's operator.imagePullPolicy to IfNotPresent",
        }.get(pulled.cause, f"{describe} (its events say why the pull fails); the image comes from {_OPERATOR_VALUES}, "
              "its credentials from operator.imagePullSecrets")
    elif status.get("phase") == "Pending" and not node:
        field, message = scheduler_message(cluster, pod)
        evidence.append(Evidence(ref, field or "status.phase", message or "Pending, not scheduled"))
        why = "it is not scheduled" + (f": {message}" if message else "")
        fix = (f"{describe}; the chart's operator.nodeSelector, affinity, tolerations and resources decide where it "
               "may run")  # fmt: skip
    elif container is not None:
        name, state = container.get("name", "?"), container.get("state") or {}
        waiting = state.get("waiting") or {}
        last = ((container.get("lastState") or {}).get("terminated") or {}).get("message") or ""
        if waiting.get("reason") == "CrashLoopBackOff" or container.get("restartCount", 0) > 3:
            why = f"container {name} crash-looping ({container.get('restartCount', 0)} restarts)" + (
                f": {_quote(last)}" if last else "")  # fmt: skip
            fix = f"read its log and the previous run's: {_logs(meta, name)} --previous"
        elif waiting:
            why = f"container {name} waiting ({waiting.get('reason')}" + (
                f": {_quote(str(waiting['message']))})" if waiting.get("message") else ")")  # fmt: skip
            fix = f"{describe} (its events say why)"
        else:
            why = f"container {name} " + ("running, not ready (its /healthz probe fails)" if "running" in state
                                          else "not started")  # fmt: skip
            fix = f"read its log: {_logs(meta, name)}"
        seen = f"{waiting.get('reason')}: {waiting.get('message') or ''}".rstrip(": ") if waiting else (
            "running, not ready" if "running" in state else "not started")  # fmt: skip
        evidence.append(Evidence(ref, f"status.containerStatuses[{name}].state", seen))
        if last:
            evidence.append(Evidence(ref, f"status.containerStatuses[{name}].lastState.terminated", _quote(last)))
    else:
        why = f"phase {status.get('phase')}, not Ready" + (
            f" (is node {node} NotReady?)" if containers_ready(pod) else "")  # fmt: skip
        fix = describe
        evidence.append(Evidence(ref, "status.phase", str(status.get("phase"))))
    more = f" (and {len(pods) - 1} more of its pods, none Ready)" if len(pods) > 1 else ""
    return [Finding(
        ERROR, "OperatorNotRunning", ref,
        f"the operator's pod {meta.get('name')}{more} does not run: {why}; until it does, it labels no node and "
        "deploys or repairs no operand (driver, toolkit, device plugin)",
        fix, evidence, nodes=tuple(n.name for n in cluster.snapshot.nodes.values() if n.has_gpu),
    )]  # fmt: skip
