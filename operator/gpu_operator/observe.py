"""One view of the cluster: the snapshot the reconciler decides on, built the same way for every caller.

`observe()` lists everything once (the operator's start-up, `upgrade plan`, and later `render --from-cluster`
and `doctor`); the operator then keeps the same snapshot current from watch events with the projections here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field, replace
from functools import cached_property
from sys import intern
from typing import Any, TypeVar

from . import wire
from .gpu_identity import device_ids_from_node_feature, node_of_feature
from .kinds import NODE_FEATURE, Kind, operand_kinds, served
from .kube import ApiError, Kube
from .nodes import POOL_LABEL, NodeFacts, keep_labels
from .nvidiadriver import selector_keys
from .readiness import is_unready
from .render import config_map_keys
from .states.base import COMPONENT, MANAGED_BY, OPERATOR_NAME, STATE_LABEL
from .states.driver import CONFIG_DIGEST_ENV

OWNED_SELECTOR = f"{MANAGED_BY}={OPERATOR_NAME}"

Key = tuple[str, str, str]  # kind, namespace, name
_T = TypeVar("_T")


def key_of(obj: dict[str, Any]) -> Key:
    meta = obj.get("metadata") or {}
    return (obj.get("kind", ""), meta.get("namespace") or "", meta.get("name", ""))


def _rv(obj: dict[str, Any]) -> int:
    try:
        return int((obj.get("metadata") or {}).get("resourceVersion") or 0)
    except ValueError:
        return 0


@dataclass
class Snapshot:
    """What the reconciler sees of the cluster (copied from the watch cache)."""

    nodes: dict[str, NodeFacts]
    policies: dict[str, dict[str, Any]]
    owned: dict[Key, dict[str, Any]]  # objects labelled managed-by=gpu-operator
    pods: dict[str, dict[str, Any]]  # operand pods in our namespace (small projections)
    revisions: dict[str, dict[str, Any]]  # ControllerRevisions in our namespace (small projections)
    api_groups: frozenset[str] = frozenset()
    config_maps: dict[str, tuple[str, ...]] = field(default_factory=dict)  # in our namespace: name -> keys
    config_data: dict[str, dict[str, str]] = field(default_factory=dict)  # in our namespace: name -> data
    nvidia_drivers: dict[str, dict[str, Any]] = field(default_factory=dict)  # NVIDIADriver objects by name
    # The refusal (403) of their listing: not known, not none (see require_nvidia_drivers).
    nvidia_drivers_refused: ApiError | None = None

    @cached_property
    def pod_index(self) -> PodIndex:
        """The operand pods by node and state, and by owning DaemonSet (built once per snapshot)."""
        return PodIndex.of(self.pods)

    def with_nodes(self, nodes: dict[str, NodeFacts], owned: dict[Key, dict[str, Any]] | None = None) -> Snapshot:
        """This snapshot with other nodes, and `owned` objects if given (the same pods: their index is kept)."""
        out = replace(self, nodes=nodes) if owned is None else replace(self, nodes=nodes, owned=owned)
        if "pod_index" in self.__dict__:
            out.__dict__["pod_index"] = self.__dict__["pod_index"]
        return out


@dataclass(frozen=True)
class Newer:
    """What the watch cache holds, later than a pass's snapshot, of what the pass's readiness reads."""

    owned: Mapping[Key, dict[str, Any]]
    revisions: Mapping[str, dict[str, Any]]
    pod_index: PodIndex


def node_state(pod: dict[str, Any]) -> tuple[str, str]:
    """A pod projection's (node, operand state) key in the PodIndex."""
    labels = pod["metadata"]["labels"]
    # owning_state without its check that a legacy component label names a state: lookups are by name.
    return (pod["node"], labels.get(STATE_LABEL) or labels.get(COMPONENT) or "")


@dataclass(frozen=True)
class PodIndex:
    # Operand state -> node -> the pods of that state there (node_state's key, state first: a pass asks for one
    # state's nodes, and a walk of every state's keys for them was a tenth of a 5,000-node pass).
    by_state: Mapping[str, Mapping[str, Sequence[dict[str, Any]]]]
    by_owner: Mapping[str, Sequence[dict[str, Any]]]  # by owner_key
    # Each DaemonSet's pods that are not ready and not being deleted (readiness.is_unready); a DaemonSet with
    # none is absent. Kept as they change by the runtime, so a pass does not scan every pod of a rollout for them.
    unready_by_owner: Mapping[str, Sequence[dict[str, Any]]]

    @classmethod
    def of(cls, pods: Mapping[str, dict[str, Any]]) -> PodIndex:
        by_state: dict[str, dict[str, list[dict[str, Any]]]] = {}
        by_owner: dict[str, list[dict[str, Any]]] = {}
        unready: dict[str, list[dict[str, Any]]] = {}
        for pod in pods.values():
            owner = owner_key(pod)
            if is_unready(pod):
                unready.setdefault(owner, []).append(pod)
            node, state = node_state(pod)
            found = by_state.setdefault(state, {}).get(node)
            if found is None:
                by_state[state][node] = [pod]
            else:
                found.append(pod)
            found = by_owner.get(owner)
            if found is None:
                by_owner[owner] = [pod]
            else:
                found.append(pod)
        return cls(by_state, by_owner, unready)

    def nodes_with(self, state: str, live: bool = False) -> set[str]:
        """Nodes with a pod of that state (`live`: one not being deleted)."""
        on = self.by_state.get(state) or {}
        if not live:
            return {node for node in on if node}
        return {node for node, pods in on.items() if node and not all(_deleting(p) for p in pods)}


def _deleting(pod: dict[str, Any]) -> bool:
    return bool(pod["metadata"].get("deletionTimestamp"))


# The component label too: pods started before the state label existed are found by it. A driver pod's pool: the
# DaemonSet of that pool adopts it once it has no owner (upgrade.adapter, orphans).
_POD_LABELS = ("controller-revision-hash", STATE_LABEL, COMPONENT, POOL_LABEL)


def pod_projection(pod: dict[str, Any]) -> dict[str, Any]:
    """The projection of a parsed pod (a listing's): the same as the pod watch's (`project_pod`)."""
    return project_pod(wire.convert(pod, wire.Pod))


def project_pod(pod: wire.Pod) -> dict[str, Any]:
    """What the operator keeps of an operand pod."""
    meta = pod.metadata
    status = pod.status if isinstance(pod.status, wire.PodStatus) else wire.PodStatus()
    owner = next((o for o in meta.ownerReferences or () if o.kind == "DaemonSet"), None)
    phase = status.phase
    containers = status.containerStatuses or ()
    # Of the init containers only those not Ready (done ones are): a crash-looping one fails a driver upgrade.
    inits = [c for c in status.initContainerStatuses or () if not c.ready]
    # The Ready condition where the pod has one: on a node gone NotReady only it turns False (MarkPodsNotReady).
    condition_ready = all(c.status == "True" for c in status.conditions or () if c.type == "Ready")
    # Strings shared by many pods (label values, node, owner name and uid, container names) are interned. The
    # owner's uid is in `metadata`: a sixth key at the top would grow each pod's dict by 88 bytes.
    return {
        "metadata": {
            "name": meta.name,
            "labels": {intern(k): intern(v) for k, v in (meta.labels or {}).items() if k in _POD_LABELS},
            "ownerUid": intern(owner.uid) if owner else "",
            **({"deletionTimestamp": meta.deletionTimestamp} if meta.deletionTimestamp else {}),
        },
        "node": intern((pod.spec.nodeName if pod.spec else None) or ""),
        "owner": intern(owner.name) if owner else "",
        "status": {
            "phase": intern(phase) if isinstance(phase, str) else phase,
            "containerStatuses": [_container_status(c) for c in containers],
            **({"initContainerStatuses": [_container_status(c) for c in inits]} if inits else {}),
        },
        # readiness.pod_ready's answer, worked out once here: each pass asks it of every pod of a DaemonSet
        # that is not ready.
        "ready": phase == "Running" and bool(containers) and all(c.ready for c in containers) and condition_ready,
    }


def _container_status(c: wire.ContainerStatus) -> dict[str, Any]:
    """A container: its restarts, and why it waits (CrashLoopBackOff, ImagePullBackOff, ...) in the API's shape; one
    that has restarted, how its last run ended as `lastTerminated` (reason, exit code): a crash, or a node reboot."""
    out: dict[str, Any] = {"name": intern(c.name or ""), "ready": bool(c.ready), "restartCount": c.restartCount}
    reason = c.state.waiting.reason if c.state and c.state.waiting else None
    if reason:
        out["state"] = {"waiting": {"reason": intern(reason)}}
    last = c.lastState.terminated if c.lastState else None
    if c.restartCount > 0 and last is not None:
        out["lastTerminated"] = (intern(last.reason or ""), last.exitCode)
    return out


def revision_projection(rev: dict[str, Any]) -> dict[str, Any]:
    meta = rev.get("metadata") or {}
    owner: dict[str, Any] = next((o for o in meta.get("ownerReferences") or [] if o.get("kind") == "DaemonSet"), {})
    return {
        "metadata": {
            "labels": {"controller-revision-hash": (meta.get("labels") or {}).get("controller-revision-hash")},
            "ownerUid": owner.get("uid", ""),
        },
        "revision": rev.get("revision", 0),
        "owner": owner.get("name", ""),
        **({"digest": digest} if (digest := _template_digest(rev)) else {}),
        **({"manager": manager} if (manager := _template_manager(rev)) else {}),
    }


def _template_spec(rev: dict[str, Any]) -> dict[str, Any]:
    """A DaemonSet revision's pod spec (its `data` holds the pod template)."""
    return ((((rev.get("data") or {}).get("spec") or {}).get("template") or {}).get("spec")) or {}


def _template_manager(rev: dict[str, Any]) -> str:
    """The image of a DaemonSet revision's k8s-driver-manager init container ("": none): what a driver DaemonSet made
    before MANAGER_IMAGE_ANNOTATION runs (states.driver.kept_manager_images)."""
    for c in _template_spec(rev).get("initContainers") or []:
        if c.get("name") == "k8s-driver-manager":
            return str(c.get("image") or "")
    return ""


def _template_digest(rev: dict[str, Any]) -> str:
    """The DRIVER_CONFIG_DIGEST of a DaemonSet revision's pod template ("": none), init containers first (upstream's
    DriverConfigDigestFromPodSpec): the upgrade only restarts a driver pod whose revision has its DaemonSet's newest
    one's (upgrade.adapter.revision_digests)."""
    spec = _template_spec(rev)
    for c in list(spec.get("initContainers") or []) + list(spec.get("containers") or []):
        for env in c.get("env") or []:
            if env.get("name") == CONFIG_DIGEST_ENV and env.get("value"):
                return str(env["value"])
    return ""


def owner_key(obj: dict[str, Any]) -> str:
    """Which DaemonSet a pod or revision projection is of: its owner's uid (a DaemonSet deleted and made again under
    its name is another one), or the name in a projection without one (one made by hand)."""
    return obj["metadata"].get("ownerUid") or obj["owner"]


def daemonset_key(ds: dict[str, Any]) -> str:
    """A DaemonSet's owner_key."""
    meta = ds.get("metadata") or {}
    return meta.get("uid") or meta.get("name", "")


def list_owned(kube: Kube, kind: Kind, namespace: str, api_groups: frozenset[str]) -> list[dict[str, Any]]:
    """Every object of the kind that we own (empty when the kind is not served)."""
    if not served(kind, api_groups):
        return []
    try:
        found = kube.list(kind.kind, namespace if kind.namespaced else None, label_selector=OWNED_SELECTOR)
    except ApiError as exc:
        if exc.status == 404:  # not served after all (an optional API removed a moment ago)
            return []
        raise
    for obj in found:
        obj.setdefault("kind", kind.kind)
        obj.setdefault("apiVersion", kind.api_version)
    return found


def feature_projection(obj: dict[str, Any]) -> tuple[str, tuple[str, ...]]:
    """What is kept of a NodeFeature object: the node it describes and its NVIDIA PCI device IDs."""
    return node_of_feature(obj), device_ids_from_node_feature(obj)


def node_features(kube: Kube, api_groups: frozenset[str]) -> dict[str, tuple[str, ...]]:
    """Node -> NVIDIA PCI device IDs, from NFD's NodeFeature objects in every namespace (none when not served)."""
    if not served(NODE_FEATURE, api_groups):
        return {}
    out: dict[str, tuple[str, ...]] = {}
    try:
        # A page at a time, keeping only the devices: NFD's NodeFeatures hold every feature of their node.
        for obj in kube.each(NODE_FEATURE.kind, limit=100):
            devices = device_ids_from_node_feature(obj)
            if devices:
                node = node_of_feature(obj)
                out[node] = tuple(sorted({*out.get(node, ()), *devices}))
    except ApiError as exc:
        if exc.status in (403, 404):  # not served after all, or not granted: GPUs are identified by labels
            return {}
        raise
    return out


def with_devices(nodes: Mapping[str, NodeFacts], features: Mapping[str, tuple[str, ...]]) -> dict[str, NodeFacts]:
    """The nodes with their NodeFeature PCI devices filled in."""
    out = dict(nodes)
    for name, facts in nodes.items():
        devices = features.get(name, ())
        if facts.pci_devices != devices:
            out[name] = replace(facts, pci_devices=devices)
    return out


def _operand_pods(pods: list[dict[str, Any]], namespace: str) -> list[dict[str, Any]]:
    """The pods OWNED_SELECTOR selects in `namespace`."""
    return [
        p for p in pods
        if p["metadata"].get("namespace") == namespace
        and (p["metadata"].get("labels") or {}).get(MANAGED_BY) == OPERATOR_NAME
    ]  # fmt: skip


def observe(
    kube: Kube,
    namespace: str,
    nodes: list[dict[str, Any]] | Future[list[dict[str, Any]]] | None = None,
    pods: list[dict[str, Any]] | None = None,
    pool: Executor | None = None,
    nodefeatures: bool = True,
) -> Snapshot:
    """The cluster as the reconciler needs it, read from the API (lists only).

    `nodes`, `pods`: the Node objects (or a Future of them) and every Pod when the caller lists them anyway
    (doctor keeps them whole); the operand pods are then taken from `pods` instead of a second listing.
    `pool`: run the lists concurrently on it. `nodefeatures`: False where the caller watches NodeFeatures itself:
    none is listed, and the nodes get no devices from them.
    """

    def later(fn: Callable[..., _T], *args: Any, **kwargs: Any) -> Callable[[], _T]:
        if pool is None:
            done = fn(*args, **kwargs)
            return lambda: done
        return pool.submit(fn, *args, **kwargs).result

    api_groups = kube.api_groups()
    listed_policies = later(kube.list, "ClusterPolicy")
    listed_config_maps = later(kube.list, "ConfigMap", namespace)
    listed_owned = [later(list_owned, kube, kind, namespace, api_groups) for kind in operand_kinds()]
    # Before the nodes are projected: the labels their nodeSelectors name are kept (on a pool, asked for first).
    listed_drivers = later(_nvidia_drivers_or_refusal, kube)

    def projected(objs: Iterable[dict[str, Any]]) -> list[NodeFacts]:
        keep_labels(selector_keys(listed_drivers()[0].values()))
        return list(map(NodeFacts.from_node, objs))

    if nodes is None:
        # Projected a page at a time: no more than one page of whole Node objects is held.
        listed_nodes = later(lambda: projected(kube.each("Node", limit=100)))
    elif isinstance(nodes, Future):
        given_later = nodes
        listed_nodes = lambda: projected(given_later.result())  # noqa: E731
    else:
        given = nodes
        listed_nodes = lambda: projected(given)  # noqa: E731
    features = later(node_features, kube, api_groups) if nodefeatures else dict
    listed_pods = (
        later(lambda: [pod_projection(p) for p in kube.each("Pod", namespace, OWNED_SELECTOR, limit=100)])
        if pods is None
        else None
    )
    listed_revisions = later(kube.list, "ControllerRevision", namespace)
    policies = {}
    for policy in listed_policies():
        policy.setdefault("apiVersion", "nvidia.com/v1")
        policy.setdefault("kind", "ClusterPolicy")
        policies[policy["metadata"]["name"]] = policy
    config_maps = listed_config_maps()
    drivers, drivers_refused = listed_drivers()
    owned = {}
    for found in listed_owned:
        for obj in found():
            owned[key_of(obj)] = obj
    return Snapshot(
        nodes=with_devices({f.name: f for f in listed_nodes()}, features()),
        policies=policies,
        owned=owned,
        pods={
            p["metadata"]["name"]: p
            for p in (
                listed_pods() if listed_pods is not None else map(pod_projection, _operand_pods(pods or [], namespace))
            )
        },
        revisions={r["metadata"]["name"]: revision_projection(r) for r in listed_revisions()},
        api_groups=api_groups,
        config_maps={cm["metadata"]["name"]: config_map_keys(cm) for cm in config_maps},
        config_data={cm["metadata"]["name"]: dict(cm.get("data") or {}) for cm in config_maps},
        nvidia_drivers=drivers,
        nvidia_drivers_refused=drivers_refused,
    )


def list_nvidia_drivers(kube: Kube) -> dict[str, dict[str, Any]]:
    """Every NVIDIADriver by name (none where the CRD is not installed). A refused listing (403: a ClusterRole
    without `list` on nvidiadrivers, an older chart's) raises."""
    try:
        found = kube.list("NVIDIADriver")
    except ApiError as exc:
        if exc.status == 404:
            return {}
        raise
    for obj in found:
        obj.setdefault("apiVersion", "nvidia.com/v1alpha1")
        obj.setdefault("kind", "NVIDIADriver")
    return {obj["metadata"]["name"]: obj for obj in found}


def _nvidia_drivers_or_refusal(kube: Kube) -> tuple[dict[str, dict[str, Any]], ApiError | None]:
    try:
        return list_nvidia_drivers(kube), None
    except ApiError as exc:
        if exc.status != 403:
            raise
        return {}, exc


def require_nvidia_drivers(snap: Snapshot, use_crd: bool) -> None:
    """Raise the refusal of the NVIDIADriver listing where the ClusterPolicy hands its driver to NVIDIADrivers
    (`use_crd`): read as none, a pass would prune their driver DaemonSets. Without it they drive nothing."""
    if use_crd and snap.nvidia_drivers_refused is not None:
        raise snap.nvidia_drivers_refused


def newer(a: dict[str, Any] | None, b: dict[str, Any]) -> bool:
    """Whether b is at least as new as a (by resourceVersion)."""
    return a is None or _rv(b) >= _rv(a)
