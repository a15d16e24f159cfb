"""NVIDIADriver resources (pure): which GPU nodes each one drives, conflicts, and the driver spec it renders.

With `driver.useNvidiaDriverCRD: true` the ClusterPolicy's driver state renders one set of per-pool driver
DaemonSets per NVIDIADriver, from the ClusterPolicy spec with its driver section replaced by the resource's
(`cluster_spec`). Nodes are routed as upstream v26.7 does:

- a non-default NVIDIADriver takes the GPU nodes its nodeSelector matches (an empty one: every GPU node);
- the default one (`spec.default: true`) takes the GPU nodes no other one matches;
- `driverType` gpu and vgpu (the guest driver, another image) render the driver; vgpu-host-manager is refused
  (named in its status) and takes no node, as does a non-default one whose name is no label value (over 63
  characters): the owner label below carries its name;
- a node two non-default ones match is a conflict, reported on both; neither takes it. A conflict never removes a
  running driver: a node whose owner label names a live non-default one keeps that driver, whether or not that one
  still matches it (upstream's AssignOwners changes no owner label on a conflict), and one the default drives (no
  owner label) stays with the default;
- a node whose owner label names one with a spec the operator refuses (the API server admitted it) keeps that
  label, and that one's DaemonSets stay as they are: nothing changes until its spec is fixed, as upstream;
- of several defaults, the oldest (then the first by name) stays the default and the others are refused, so a
  second default (the chart's and an admin's own) takes no driver away (upstream refuses to reconcile then).

Nodes of a non-default NVIDIADriver carry `nvidia.com/gpu-operator.driver.owner=<name>`, which its DaemonSets
select. The default one's DaemonSets keep the ClusterPolicy's names and pod template, so switching
useNvidiaDriverCRD on with a default NVIDIADriver of the same settings changes no driver pod: both exclude nodes
with an owner label (`OWNED_EXCLUDED`) always, so NVIDIADrivers added or deleted later change neither template
(when the exclusion came and went with them, every default node's driver was restarted each time).
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from .api import (
    ClusterPolicySpec,
    ConfigMapRef,
    DriverUpgradePolicySpec,
    LicensingConfigSpec,
    ProbeSpec,
    RepoConfigSpec,
    SidecarSpec,
    VirtualTopologySpec,
)
from .nodes import GPU_PRESENT, MAX_POOL_NAME, UPGRADE_ENABLED_ANNOTATION, ByNode, NodeFacts, Pool, label_value_ok
from .nvidiadriver_api import API_VERSION, KIND, OWNER_LABEL, NVDUpgradePolicy, NVIDIADriverSpec, parse_spec

CONFLICT_REASON = "ConflictingNodeSelector"
EVENT_REASON = "ConflictingNodeSelector"
# The owner label's value on a node two NVIDIADrivers select (not a valid object name: it names none).
CONFLICT_VALUE = "Conflict"
# The term every driver DaemonSet but a non-default NVIDIADriver's carries: not on a node another one owns.
OWNED_EXCLUDED = {"key": OWNER_LABEL, "operator": "DoesNotExist"}


def excluding_owned(affinity: Mapping[str, Any] | None) -> dict[str, Any]:
    """A nodeAffinity (None: none) that also avoids owned nodes, in every required term (terms are ORed)."""
    out = copy.deepcopy(dict(affinity)) if affinity else {}
    required = out.setdefault("requiredDuringSchedulingIgnoredDuringExecution", {})
    terms = required.get("nodeSelectorTerms") or [{}]
    for term in terms:
        term.setdefault("matchExpressions", []).append(dict(OWNED_EXCLUDED))
    required["nodeSelectorTerms"] = terms
    return out


@dataclass(frozen=True)
class NVIDIADriver:
    """One NVIDIADriver object, parsed (spec None: invalid, `problem` says why)."""

    name: str
    uid: str = ""
    generation: int | None = None
    spec: NVIDIADriverSpec | None = None
    problem: str | None = None
    deleting: bool = False
    created: str = ""  # metadata.creationTimestamp (RFC 3339: sorts as text)

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> NVIDIADriver:
        meta = obj.get("metadata") or {}
        try:
            spec: NVIDIADriverSpec | None = parse_spec(obj.get("spec"))
            problem = None
        except ValueError as exc:
            spec, problem = None, str(exc)
        return cls(
            name=meta.get("name", ""),
            uid=meta.get("uid", ""),
            generation=meta.get("generation"),
            spec=spec,
            problem=problem,
            deleting=bool(meta.get("deletionTimestamp")),
            created=str(meta.get("creationTimestamp") or ""),
        )

    @property
    def default(self) -> bool:
        return bool(self.spec and self.spec.default)

    def ref(self) -> dict[str, Any]:
        return {"apiVersion": API_VERSION, "kind": KIND, "name": self.name, "uid": self.uid}


# NVIDIADriver name -> (the ClusterPolicy spec, the NVIDIADriver's spec, their cluster_spec): see `groups`.
KeptSpecs = dict[str, tuple[ClusterPolicySpec, NVIDIADriverSpec, ClusterPolicySpec]]


# A non-default NVIDIADriver's name and its nodeSelector (an empty one: every GPU node), by name.
Selectors = tuple[tuple[str, Mapping[str, str]], ...]
# A GPU node's route: the non-default NVIDIADrivers whose nodeSelector matches it, and its owner label now.
Route = tuple[tuple[str, ...], str | None]


def selector_keys(objects: Iterable[Mapping[str, Any]]) -> frozenset[str]:
    """The node label keys NVIDIADriver objects (as the API gives them, valid or not) route or place on: their
    nodeSelector's and their required nodeAffinity's. NodeFacts must keep them (nodes.keep_labels) to be routed."""
    keys: set[str] = set()
    for obj in objects:
        selector = _at(obj, "spec", "nodeSelector")
        if isinstance(selector, Mapping):
            keys.update(k for k in selector if isinstance(k, str))
        terms = _at(obj, "spec", "nodeAffinity", "requiredDuringSchedulingIgnoredDuringExecution", "nodeSelectorTerms")
        for term in terms if isinstance(terms, list) else ():
            expressions = _at(term, "matchExpressions")
            for expression in expressions if isinstance(expressions, list) else ():
                key = _at(expression, "key")
                if isinstance(key, str):
                    keys.add(key)
    return frozenset(keys)


def _at(obj: Any, *path: str) -> Any:
    for key in path:
        obj = obj.get(key) if isinstance(obj, Mapping) else None
    return obj


def _selected(selector: Mapping[str, str], node: NodeFacts) -> bool:
    """Whether a nodeSelector matches a node; a GPU node counts as labelled gpu.present=true (before it is)."""
    labels, gpu = node.labels, node.has_gpu
    for key, value in selector.items():
        if ("true" if gpu and key == GPU_PRESENT else labels.get(key)) != value:
            return False
    return True


def _route(node: NodeFacts, selectors: Selectors) -> Route | None:
    """A GPU node's route (None for another node)."""
    if not node.has_gpu:
        return None
    return tuple(name for name, selector in selectors if _selected(selector, node)), node.labels.get(OWNER_LABEL)


class KeptRouting:
    """What the routing of nodes to NVIDIADrivers keeps between passes: each GPU node's route, worked out again
    only for the nodes whose object changed, or for all when a nodeSelector did (ByNode); each NVIDIADriver's
    spec as a ClusterPolicy spec (`groups`); and the routing itself, the same object while it stays equal (what is
    kept per node under it is then kept too). One reconciler's."""

    def __init__(self) -> None:
        self.specs: KeptSpecs = {}
        self.routes: ByNode[Route] = ByNode(_route)
        self.selectors: Selectors = ()
        # The last assignment and what it was made of (the NVIDIADrivers' problems, the default, the selectors;
        # the routes): given again while both are equal, and with it what it worked out once (nodes_of).
        self.assigned: tuple[Any, dict[str, Route], Assignment] | None = None
        self.last: Any = None  # render.DriverRouting: the last call's, given again while equal


@dataclass
class Assignment:
    owner: dict[str, str] = field(default_factory=dict)  # GPU node -> the NVIDIADriver that drives it
    conflicts: dict[str, list[str]] = field(default_factory=dict)  # NVIDIADriver -> nodes it conflicts on
    with_whom: dict[str, list[str]] = field(default_factory=dict)  # NVIDIADriver -> the ones it conflicts with
    problems: dict[str, str] = field(default_factory=dict)  # NVIDIADriver -> why it drives no node at all
    default: str | None = None
    # GPU node -> the NVIDIADriver with an invalid spec its owner label names: it keeps that label (and its pod).
    held: dict[str, str] = field(default_factory=dict)

    def nodes_of(self, driver: str) -> list[str]:
        """The NVIDIADriver's nodes, sorted (one walk of every node for all NVIDIADrivers: read once the
        assignment is made, it is not changed after)."""
        return list(self._by_driver.get(driver, ()))

    def node_set(self, driver: str) -> frozenset[str]:
        return self._node_sets.get(driver) or frozenset()

    @cached_property
    def _by_driver(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for node, driver in sorted(self.owner.items()):
            out.setdefault(driver, []).append(node)
        return out

    @cached_property
    def _node_sets(self) -> dict[str, frozenset[str]]:
        return {driver: frozenset(nodes) for driver, nodes in self._by_driver.items()}

    def owner_label(self, node: str) -> str | None:
        """The owner label a node should carry: a non-default owner's name, the conflict marker, or none."""
        driver = self.owner.get(node)
        if driver is not None:
            return None if driver == self.default else driver
        if node in self.held:
            return self.held[node]
        return CONFLICT_VALUE if any(node in nodes for nodes in self.conflicts.values()) else None


def assign(nodes: Iterable[NodeFacts], drivers: Iterable[NVIDIADriver], kept: KeptRouting | None = None) -> Assignment:
    """Route every GPU node to at most one NVIDIADriver (see the module doc). `kept`: the last call's routes."""
    out = Assignment()
    live = []
    invalid = set()  # their nodes stay as they are, as upstream changes nothing on a failed reconcile
    for d in sorted(drivers, key=lambda d: d.name):
        if d.deleting:
            continue
        if d.spec is None:
            out.problems[d.name] = f"invalid spec: {d.problem}"
            invalid.add(d.name)
            continue
        if d.spec.driver_type == "vgpu-host-manager":
            out.problems[d.name] = (
                "driverType vgpu-host-manager: not supported by this operator (the vGPU host manager is not "
                "rendered); it takes no node"
            )
            continue
        if not d.default and not label_value_ok(d.name):  # its nodes' owner label and DaemonSets' nodeSelector
            out.problems[d.name] = (
                f"name: {len(d.name)} characters, more than the 63 of a label value, so it cannot be the node "
                f"label {OWNER_LABEL}; it takes no node (use a shorter name)"
                if len(d.name) > 63
                else f"name: not a valid label value, so it cannot be the node label {OWNER_LABEL}; it takes no node"
            )
            continue
        live.append(d)
    defaults = sorted((d for d in live if d.default), key=lambda d: (d.created, d.name))
    if defaults:
        out.default = defaults[0].name
    for d in defaults[1:]:
        out.problems[d.name] = (
            f"more than one default NVIDIADriver: {out.default}, the oldest, stays the default; this one drives no "
            "node (set default: false, or delete one)"
        )
    selectors = tuple((d.name, d.spec.node_selector or {GPU_PRESENT: "true"}) for d in live
                      if d.spec is not None and not d.default)  # fmt: skip
    if kept is None:
        routes = {n.name: r for n in sorted(nodes, key=lambda n: n.name) if (r := _route(n, selectors)) is not None}
    else:
        if selectors != kept.selectors:
            kept.selectors = selectors  # another key: every node's route anew
        routes = kept.routes.over(nodes, kept.selectors)
        made_of = (out.problems, out.default, kept.selectors)
        last = kept.assigned
        if last is not None and last[0] == made_of and last[1] == routes:
            return last[2]
        kept.assigned = (made_of, routes, out)
    default, owner = out.default, out.owner
    routable = {name for name, _ in selectors}  # the live non-default ones: a node's owner label may name one
    for node, (matches, current) in routes.items():  # by node name
        if current in invalid:
            out.held[node] = current
        elif len(matches) == 1:
            owner[node] = matches[0]
        elif matches:
            for name in matches:
                out.conflicts.setdefault(name, []).append(node)
                others = out.with_whom.setdefault(name, [])
                others += [m for m in matches if m != name and m not in others]
            if current in routable:  # already driven by a live one (a match or not): keep that driver running
                owner[node] = current
            elif current is None and default is not None:  # the default drives it (or will): it stays
                owner[node] = default
        elif default is not None:
            owner[node] = default
    return out


def owner_label_move(node: NodeFacts, assignment: Assignment) -> str | None:
    """The owner label ("" for none) the assignment gives a node it routes to an NVIDIADriver, when the node carries
    another (a move, which render holds while the node runs a driver pod); else None (ByNode's function)."""
    if node.name not in assignment.owner:
        return None
    want = assignment.owner_label(node.name) or ""
    return None if node.labels.get(OWNER_LABEL, "") == want else want


def owner_patch(node: NodeFacts, assignment: Assignment | None) -> dict[str, str | None]:
    """The owner-label change for one node (removed when the NVIDIADrivers do not drive the cluster)."""
    want = assignment.owner_label(node.name) if assignment is not None else None
    have = node.labels.get(OWNER_LABEL)
    if want == have:
        return {}
    return {OWNER_LABEL: want}


def conflict_message(driver: str, assignment: Assignment) -> str | None:
    nodes = assignment.conflicts.get(driver)
    if not nodes:
        return None
    others = ", ".join(sorted(assignment.with_whom.get(driver, [])))
    kept: dict[str | None, list[str]] = {}  # what drives each contested node now (assign keeps it)
    for node in nodes:
        kept.setdefault(assignment.owner.get(node), []).append(node)
    parts = []
    for owner, on in kept.items():
        where = "there" if len(kept) == 1 else f"on {_shown(on)}"
        if owner is None:
            parts.append(f"no driver is deployed {where}")
        else:
            parts.append(f"{'the default ' if owner == assignment.default else ''}{owner}'s driver stays {where}")
    said = "; ".join(parts)
    return f"nodeSelector conflicts with NVIDIADriver {others} on {_shown(nodes)}, which neither takes over: {said}"


def _shown(nodes: list[str]) -> str:
    return ", ".join(nodes[:10]) + (f" and {len(nodes) - 10} more" if len(nodes) > 10 else "")


def _tagged(image: str) -> bool:
    return "@" in image or ":" in image.rsplit("/", 1)[-1]


def _has_registry(image: str) -> bool:
    """Whether the image's first path component is a registry host (nvcr.io/nvidia/driver), as Docker reads it."""
    first, slash, _ = image.partition("/")
    return bool(slash) and ("." in first or ":" in first or first == "localhost")


def image_problem(spec: NVIDIADriverSpec) -> str | None:
    """Why repository/image/version name no driver image, or None. Upstream's ImagePath takes `image` alone or all
    three; beyond it, `image` with a registry path (nvcr.io/nvidia/driver) may take `version` without `repository`,
    and may not take a `repository` on the same registry (upstream renders nvcr.io/nvidia/nvcr.io/nvidia/driver).
    A registry with a port under a repository is no path component (upstream's ref.New refuses it)."""
    given = [f for f in ("repository", "image", "version") if getattr(spec, f)]
    if not given:
        return "image: empty; name the driver image (or set repository, image and version together)"
    if spec.version and _tagged(spec.image):
        return f"image: {spec.image} has a tag or digest, and version {spec.version} is set too; set one of them"
    host = spec.image.partition("/")[0]
    if spec.repository and _has_registry(spec.image) and (host == spec.repository.partition("/")[0] or ":" in host):
        return (f"image: {spec.image} has a registry path, and repository {spec.repository} is set too; set image "
                "to the image name (driver) or drop repository")  # fmt: skip
    if given == ["image"] or len(given) == 3 or (given == ["image", "version"] and "/" in spec.image):
        return None
    missing = ", ".join(f for f in ("repository", "image", "version") if f not in given)
    return f"image: set repository, image and version together (or image alone); missing {missing}"


def _image_fields(spec: NVIDIADriverSpec) -> dict[str, Any]:
    """repository/image/version as the ClusterPolicy's driver section takes them (upstream's ImagePath); the
    driver state refuses the fields image_problem names."""
    image = spec.image
    if _tagged(image):
        return {"repository": None, "image": image, "version": None}
    repository = spec.repository
    if not repository and "/" in image:
        repository, image = image.rsplit("/", 1)
    if not spec.version and spec.precompiled:
        # No default: precompiled images are tagged per branch, ours is a full version (the driver state refuses it).
        return {"repository": None, "image": f"{repository}/{image}" if repository else image, "version": None}
    if not spec.version:
        from . import images

        version = images.DEFAULTS["driver"][2]
    else:
        version = spec.version
    if not repository:
        return {"repository": None, "image": f"{image}:{version}", "version": None}
    return {"repository": repository, "image": image, "version": version}


def default_startup_probe(spec: NVIDIADriverSpec) -> ProbeSpec:
    """An NVIDIADriver's startup probe when it sets none (not the ClusterPolicy's): a precompiled driver has
    nothing to build, so it is probed after 5 s."""
    return ProbeSpec(initial_delay_seconds=5 if spec.precompiled else 60, timeout_seconds=60, period_seconds=10,
                     success_threshold=1, failure_threshold=120)  # fmt: skip


def cluster_spec(policy: ClusterPolicySpec, spec: NVIDIADriverSpec) -> ClusterPolicySpec:
    """The ClusterPolicy spec with its driver (and GDS, GDRCopy) sections taken from an NVIDIADriver."""
    base = policy.driver
    licensing = spec.licensing_config
    upgrade = spec.upgrade_policy
    driver = base.model_copy(
        update={
            **_image_fields(spec),
            "enabled": True,
            "use_nvidia_driver_crd": False,
            "use_precompiled": spec.precompiled,
            "kernel_module_type": spec.kernel_module_type,
            "startup_probe": spec.startup_probe or default_startup_probe(spec),
            "liveness_probe": spec.liveness_probe,
            "readiness_probe": spec.readiness_probe,
            "rdma": spec.rdma or type(base.rdma)(),
            "image_pull_policy": spec.image_pull_policy,
            "image_pull_secrets": list(spec.image_pull_secrets),
            "manager": spec.manager,
            "resources": spec.resources,
            "args": ["init", *spec.args] if spec.args else [],  # after the driver's command, not in its place
            "env": list(spec.env),
            "repo_config": RepoConfigSpec(config_map_name=spec.repo_config.name if spec.repo_config else ""),
            "cert_config": ConfigMapRef(name=spec.cert_config.name if spec.cert_config else ""),
            "licensing_config": LicensingConfigSpec(
                config_map_name=licensing.name if licensing else "",
                secret_name=licensing.secret_name if licensing else "",
                nls_enabled=licensing.nls_enabled is not False if licensing else True,
            ),
            "virtual_topology": VirtualTopologySpec(
                config=spec.virtual_topology_config.name if spec.virtual_topology_config else ""
            ),
            "kernel_module_config": ConfigMapRef(
                name=spec.kernel_module_config.name if spec.kernel_module_config else ""
            ),
            "secret_env": spec.secret_env,
            "host_network": bool(spec.host_network),
            "upgrade_policy": DriverUpgradePolicySpec.model_validate((upgrade or NVDUpgradePolicy()).model_dump()),
        }
    )
    common = policy.daemonsets
    tolerations = list(common.tolerations) + [t for t in spec.tolerations if t not in common.tolerations]
    daemonsets = common.model_copy(
        update={
            "labels": {**common.labels, **spec.labels},
            "annotations": {**common.annotations, **spec.annotations},
            "tolerations": tolerations,
            "priority_class_name": spec.priority_class_name or common.priority_class_name,
            "pod_security_context": spec.pod_security_context or common.pod_security_context,
        }
    )
    return policy.model_copy(
        update={
            "driver": driver,
            "gds": spec.gds or SidecarSpec(),
            "gdrcopy": spec.gdrcopy or SidecarSpec(),
            "daemonsets": daemonsets,
        }
    )


@dataclass(frozen=True)
class DriverGroup:
    """What the driver state renders for one NVIDIADriver: its spec as a ClusterPolicy spec, and its nodes."""

    name: str
    owner: dict[str, Any]  # ownerReference of its DaemonSets
    spec: ClusterPolicySpec
    nodes: frozenset[str]
    default: bool
    affinity: dict[str, Any] | None = None  # the NVIDIADriver's nodeAffinity
    problem: str | None = None  # why its image fields name no image (image_problem): its pools are not rendered
    manager_image: str | None = None  # the k8s-driver-manager image to render in place of the default (driver state)

    def pool_name(self, pool: Pool) -> str:
        """The default keeps the ClusterPolicy's pool names (and so its DaemonSets); others are prefixed."""
        if self.default:
            return pool.name
        name = f"{self.name}-{pool.name}"
        if len(name) <= MAX_POOL_NAME:
            return name
        digest = hashlib.sha256(name.encode()).hexdigest()[:8]
        return f"{name[: MAX_POOL_NAME - 9].rstrip('-.')}-{digest}"

    def node_selector(self) -> dict[str, str]:
        return {} if self.default else {OWNER_LABEL: self.name}

    def upgrade_owner(self) -> tuple[str, str]:
        """(its uid, the owner label its nodes carry: "" for the default's), as upgrade.managed_nodes takes them.
        The label is Assignment.owner_label's for each of its nodes (only the oldest default has a group)."""
        return str(self.owner["uid"]), "" if self.default else self.name

    def node_affinity(self) -> dict[str, Any] | None:
        """The NVIDIADriver's nodeAffinity; the default's also avoids owned nodes, as the ClusterPolicy's driver."""
        if self.default:
            return excluding_owned(self.affinity)
        return copy.deepcopy(self.affinity) if self.affinity else None

    def key(self) -> list[Any]:
        return [self.name, self.owner, self.spec.model_dump(mode="json"), sorted(self.nodes), self.default,
                self.affinity, self.problem]  # fmt: skip


def groups(
    policy: ClusterPolicySpec,
    drivers: Iterable[NVIDIADriver],
    assignment: Assignment,
    kept: KeptSpecs | None = None,
) -> tuple[DriverGroup, ...]:
    """One group per NVIDIADriver that drives nodes (or may: a valid one), by name. `kept`: the last call's specs,
    each given again (the same object) while the ClusterPolicy's spec is the same object and the NVIDIADriver's
    spec is equal: what is worked out once per node and spec (version-matrix verdicts, upgrade inputs) then
    carries over from pass to pass."""
    out = []
    for d in sorted(drivers, key=lambda d: d.name):
        if d.spec is None or d.deleting or d.name in assignment.problems:
            continue
        hit = kept.get(d.name) if kept is not None else None
        if hit is not None and hit[0] is policy and hit[1] == d.spec:
            spec = hit[2]
        else:
            spec = cluster_spec(policy, d.spec)
            if kept is not None:
                kept[d.name] = (policy, d.spec, spec)
        out.append(
            DriverGroup(
                name=d.name,
                owner=d.ref(),
                spec=spec,
                nodes=assignment.node_set(d.name),
                default=d.default,
                affinity=d.spec.node_affinity.as_dict() if d.spec.node_affinity else None,
                problem=image_problem(d.spec),
            )
        )
    if kept is not None and len(kept) > len(out):
        for name in kept.keys() - {g.name for g in out}:
            del kept[name]  # a deleted NVIDIADriver's (or one that drives no node now)
    return tuple(out)


def _condition(ctype: str, value: bool, reason: str, message: str, generation: int | None,
               previous: list[dict[str, Any]], now: str) -> dict[str, Any]:  # fmt: skip
    status = "True" if value else "False"
    before = next((c for c in previous if c.get("type") == ctype), {})
    same = before.get("status") == status and before.get("lastTransitionTime")
    return {
        "type": ctype,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": before["lastTransitionTime"] if same else now,
        "observedGeneration": generation,
    }


def unsupported_fields(spec: NVIDIADriverSpec) -> list[str]:
    """Fields set on an NVIDIADriver that this operator does not act on, each with the reason."""
    out = []
    if spec.use_open_kernel_modules is not None:
        out.append("useOpenKernelModules: deprecated upstream and not honoured there; use kernelModuleType")
    if spec.virtual_topology_config and spec.virtual_topology_config.name:
        out.append("virtualTopologyConfig: the vGPU topology ConfigMap is not mounted into the driver yet")
    if spec.pod_security_context is not None:
        out.append("podSecurityContext: not applied to the driver pod yet")
    for name, sidecar, container in (("gds", spec.gds, "nvidia-fs"), ("gdrcopy", spec.gdrcopy, "gdrcopy")):
        if sidecar is not None and sidecar.enabled and sidecar.args:  # as the ClusterPolicy's (coverage.py)
            out.append(f"{name}.args: not passed to the {container} sidecar, which runs its image's entrypoint")
    return out


def driver_status(
    driver: NVIDIADriver,
    assignment: Assignment | None,
    ready: tuple[bool, str] | None,
    namespace: str,
    previous: Mapping[str, Any] | None,
    now: str,
    off: str = "useNvidiaDriverCRD is not enabled in ClusterPolicy",
    failed: str | None = None,
) -> dict[str, Any]:
    """An NVIDIADriver's status, with upstream's Ready and Error conditions.

    `assignment` None: the ClusterPolicy does not hand the driver to NVIDIADrivers, `off` says why. `ready`:
    whether its DaemonSets are ready, and why not. `failed`: why reconciling it failed (reason ReconcileFailed):
    its objects could not be rendered or the API server refused them, or (`assignment` None) no valid
    ClusterPolicy to go by."""
    conditions = list((previous or {}).get("conditions") or [])
    gen = driver.generation
    nodes: list[str] = []
    conflicting: list[str] = []
    if assignment is None and failed:
        state, reason, message = "notReady", "ReconcileFailed", failed
        error = message
    elif assignment is None:
        state, reason, message = "disabled", "Reconciled", off
        error = message
    elif driver.name in assignment.problems:
        state, reason, message = "notReady", "ReconcileFailed", assignment.problems[driver.name]
        error = message
        nodes = sorted(n for n, d in assignment.held.items() if d == driver.name)
    else:
        nodes = assignment.nodes_of(driver.name)
        conflicting = assignment.conflicts.get(driver.name, [])
        conflict = conflict_message(driver.name, assignment)
        ok, why = ready if ready is not None else (True, "")
        if conflict:
            state, reason, message, error = "notReady", CONFLICT_REASON, conflict, conflict
        elif failed:  # upstream's "Error syncing state ..."
            state, reason, message, error = "notReady", "ReconcileFailed", failed, failed
        elif not ok:  # Ready and Error move together (REFERENCE §1; upstream's SetConditionsError(DriverNotReady))
            message = why or "waiting for driver pods"
            state, reason, error = "notReady", "DriverNotReady", message
        else:
            state, reason, message, error = "ready", "Reconciled", "All resources have been successfully reconciled", ""
    out_conditions = [
        _condition("Ready", state == "ready", reason, message, gen, conditions, now),
        _condition("Error", bool(error), reason if error else "Ready", error, gen, conditions, now),
    ]
    unsupported = unsupported_fields(driver.spec) if driver.spec is not None else []
    if unsupported:
        text = "set but not supported by this operator: " + "; ".join(unsupported)
        out_conditions.append(_condition("UnsupportedFields", True, "UnsupportedFields", text, gen, conditions, now))
    return {
        "state": state,
        "namespace": namespace,
        "observedGeneration": gen,
        "conditions": out_conditions,
        "nodes": len(nodes),
        "conflictingNodes": conflicting[:50],
    }


def failed_pass_status(driver: NVIDIADriver, namespace: str, previous: Mapping[str, Any] | None, now: str,
                       why: str) -> dict[str, Any]:  # fmt: skip
    """An NVIDIADriver's status after a pass that failed before it got to it: notReady, ReconcileFailed, `why`
    (upstream's on an error in reconcile). Its nodes and conflicts, not worked out again, stay as they were."""
    status = driver_status(driver, None, None, namespace, previous, now, failed=why)
    before = previous or {}
    return {**status, "nodes": before.get("nodes", 0), "conflictingNodes": before.get("conflictingNodes") or []}


def node_patch(
    node: NodeFacts, assignment: Assignment | None, spec: ClusterPolicySpec | None
) -> dict[str, dict[str, str | None]]:
    """One node's owner label, and (for a node an NVIDIADriver drives: `spec`, its group's) the upgrade-enabled
    annotation that k8s-driver-manager reads, from that NVIDIADriver's upgradePolicy."""
    patch: dict[str, dict[str, str | None]] = {}
    labels = owner_patch(node, assignment)
    if labels:
        patch["labels"] = labels
    if spec is not None and node.labels.get(GPU_PRESENT) == "true":
        auto = spec.driver.upgrade_policy.auto_upgrade
        value = node.annotations.get(UPGRADE_ENABLED_ANNOTATION)
        if auto and value != "true":
            patch["annotations"] = {UPGRADE_ENABLED_ANNOTATION: "true"}
        elif not auto and value is not None:
            patch["annotations"] = {UPGRADE_ENABLED_ANNOTATION: None}
    return patch
