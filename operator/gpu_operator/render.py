"""Whole-policy rendering (pure): policy + cluster facts -> label patches and desired objects per state."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Collection
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any, cast

from . import matrix, mig_layouts, nvidiadriver, sharing
from .api import ClusterPolicySpec
from .nodes import (
    ALL_OPERANDS,
    DRA_OPERANDS,
    DRIVER_KERNEL,
    ByNode,
    NodeFacts,
    apply_patch,
    deploy_label,
    desired_annotations,
    desired_labels,
    driver_kernel_patch,
    gets_driver,
    gets_toolkit,
    upgrades_orchestrated,
)
from .nvidiadriver_api import OWNER_LABEL
from .states import OperandState, RenderContext, all_states
from .states.base import PartialRender, RenderProblem, templates
from .states.mig_manager import custom_config
from .upgrade.model import DONE
from .upgrade.model import STATE_LABEL as UPGRADE_STATE


@dataclass
class StatePlan:
    state: OperandState
    enabled: bool
    objects: list[dict[str, Any]] = field(default_factory=list)
    # Why an enabled state could not be rendered (its objects are then left as they are).
    problem: str | None = None
    # Owners (uid) whose objects could not be rendered, with why: theirs are left as they are, the rest applied.
    held: dict[str, str] = field(default_factory=dict)


NodePatch = dict[str, dict[str, str | None]]  # {"labels": {...}, "annotations": {...}}; None removes a key


def node_patches(
    nodes: list[NodeFacts], spec: ClusterPolicySpec, refused: Collection[str] = ()
) -> dict[str, NodePatch]:
    """Node name -> the metadata patch for it (labels and annotations), only for nodes that must change.

    One patch per node: the annotations are decided on the node as its labels will be. `refused`: nodes the
    driver is refused on that run no driver pod of ours (compat.py)."""
    out: dict[str, NodePatch] = {}
    for node in nodes:
        patch: NodePatch = {}
        labels = desired_labels(node, spec, node.name in refused)
        if labels:
            patch["labels"] = labels
            node = replace(node, labels=apply_patch(node.labels, labels))
        annotations = desired_annotations(node, spec)
        if annotations:
            patch["annotations"] = annotations
        if patch:
            out[node.name] = patch
    return out


@dataclass(frozen=True)
class DriverRouting:
    """Which NVIDIADriver drives which node (None and () unless the ClusterPolicy hands the driver to them)."""

    assignment: nvidiadriver.Assignment | None = None
    groups: tuple[nvidiadriver.DriverGroup, ...] = ()

    def spec_of(self, node: str) -> ClusterPolicySpec | None:
        """The spec of the NVIDIADriver that drives the node, if one does."""
        group = self.group_of(node)
        return group.spec if group is not None else None

    def group_of(self, node: str) -> nvidiadriver.DriverGroup | None:
        driver = self.assignment.owner.get(node) if self.assignment is not None else None
        return self._groups.get(driver) if driver is not None else None

    @cached_property
    def _groups(self) -> dict[str, nvidiadriver.DriverGroup]:
        return {g.name: g for g in self.groups}


def driver_routing(
    nodes: list[NodeFacts], spec: ClusterPolicySpec, drivers: list[nvidiadriver.NVIDIADriver],
    kept: nvidiadriver.KeptRouting | None = None,
) -> DriverRouting:  # fmt: skip
    """`kept`: what is kept between calls (nvidiadriver.KeptRouting); with it, an equal routing is the last one."""
    if not (spec.driver.enabled and spec.driver.use_nvidia_driver_crd):
        return DriverRouting()
    assignment = nvidiadriver.assign(nodes, drivers, kept)
    routing = DriverRouting(assignment, nvidiadriver.groups(spec, drivers, assignment, kept.specs if kept else None))
    if kept is None:
        return routing
    if routing != kept.last:  # the groups' specs compare as the same objects when kept, else field by field
        kept.last = routing
    return cast(DriverRouting, kept.last)


def driver_node_patches(
    nodes: list[NodeFacts], spec: ClusterPolicySpec, routing: DriverRouting, holding: Collection[str] = (),
    kept: KeptDriverPatches | None = None, unrendered: Callable[[], Collection[str]] | None = None,
) -> dict[str, NodePatch]:  # fmt: skip
    """The driver's own node metadata, decided on the nodes as node_patches leaves them: the NVIDIADriver
    owner label and upgrade-enabled annotation, and the driver-kernel label of precompiled pools.

    `holding`: nodes whose changed kernel, or (under NVIDIADrivers) changed owner label, is left to the upgrade
    planner (they run a driver pod under autoUpgrade). `kept` (KeptDriverPatches): the last call's, worked out
    again for the nodes that changed (for every node when the routing to NVIDIADrivers did). `unrendered`: gives
    the uids of the NVIDIADrivers whose DaemonSets cannot be rendered (called only when a node of `holding` would
    move): such a node keeps its owner and driver-kernel labels rather than move to one, whatever its autoUpgrade
    (no DaemonSet would replace its pod)."""
    found: dict[str, tuple[NodePatch, NodePatch]]
    if routing.assignment is None:
        hold_on = upgrades_orchestrated(spec)
        if kept is not None:
            found = kept.own.over(nodes, spec)
        else:
            found = {n.name: pair for n in nodes if (pair := _own_patches(n, spec)) is not None}
    else:
        hold_on = True  # a node's held patch holds only under its NVIDIADriver's autoUpgrade (_routed_patches)
        if kept is not None:
            found = kept.routed.over(nodes, routing)  # each node's anew whenever the routing is another object
        else:
            found = {n.name: pair for n in nodes if (pair := _routed_patches(n, routing)) is not None}
    chosen = {name: held if hold_on and name in holding else free for name, (free, held) in found.items()}
    movers = [n for n, patch in chosen.items() if OWNER_LABEL in (patch.get("labels") or {}) and n in holding]
    uids = unrendered() if movers and unrendered is not None else ()
    for name in movers if uids else ():
        labels = chosen[name]["labels"]
        group = routing.group_of(name)
        if group is not None and group.owner.get("uid") in uids:
            kept_labels = {k: v for k, v in labels.items() if k not in (OWNER_LABEL, DRIVER_KERNEL)}
            chosen[name] = {**{k: v for k, v in chosen[name].items() if k != "labels"},
                            **({"labels": kept_labels} if kept_labels else {})}  # fmt: skip
    return {name: patch for name, patch in chosen.items() if patch}


def _own_patches(node: NodeFacts, spec: ClusterPolicySpec) -> tuple[NodePatch, NodePatch] | None:
    """driver_node_patches for one node without NVIDIADrivers: (the patch, the patch when the node is held), or
    None when both are empty."""
    owner = nvidiadriver.owner_patch(node, None)
    precompiled = spec.driver.enabled and spec.driver.use_precompiled
    free, held = ({**owner, **driver_kernel_patch(node, precompiled, hold)} for hold in (False, True))
    if not free and not held:
        return None
    return ({"labels": free} if free else {}), ({"labels": held} if held else {})


def _routed_patches(node: NodeFacts, routing: DriverRouting) -> tuple[NodePatch, NodePatch] | None:
    """driver_node_patches for one node under NVIDIADrivers: (the patch, the patch when the node is held), or None
    when both are empty."""
    spec = routing.spec_of(node.name)
    routed = nvidiadriver.node_patch(node, routing.assignment, spec)
    if spec is None and UPGRADE_STATE in node.labels and OWNER_LABEL in (labels := routed.get("labels", {})) \
            and labels[OWNER_LABEL] is None:  # fmt: skip
        # No NVIDIADriver drives it any more: the pass lets it go mid-upgrade by its owner label, which goes with
        # the let-go's own patch (upgrade.left_behind), so a let-go that failed is tried again.
        del routed["labels"][OWNER_LABEL]
        if not routed["labels"]:
            del routed["labels"]
    precompiled = bool(spec and spec.driver.enabled and spec.driver.use_precompiled)
    hold = bool(spec and spec.driver.upgrade_policy.auto_upgrade)
    pair: list[NodePatch] = []
    for held in (False, hold):
        patch = {part: dict(values) for part, values in routed.items()}
        moving = held and OWNER_LABEL in patch.get("labels", {})
        if moving:
            # The DaemonSet of its driver pod would drop that pod at once: the upgrade moves the node at pod restart
            # (UpgradeNode.owner_move), cordoned and drained by then, with its driver-kernel label (owner_kernel),
            # which that DaemonSet may select on too.
            del patch["labels"][OWNER_LABEL]
            if not patch["labels"]:
                del patch["labels"]
        kernel = {} if moving else driver_kernel_patch(node, precompiled, held)
        if kernel:
            patch.setdefault("labels", {}).update(kernel)
        pair.append(patch)
    free, when_held = pair
    return None if not free and not when_held else (free, when_held)


class KeptDriverPatches:
    """What a pass keeps of driver_node_patches between passes: each node's pair of patches, by ByNode, under the
    ClusterPolicy's spec or under the routing to NVIDIADrivers (the same object while equal: driver_routing)."""

    def __init__(self) -> None:
        self.own: ByNode[tuple[NodePatch, NodePatch]] = ByNode(_own_patches)
        self.routed: ByNode[tuple[NodePatch, NodePatch]] = ByNode(_routed_patches)


def kept_driver_patches() -> KeptDriverPatches:
    """What a pass keeps of driver_node_patches between passes."""
    return KeptDriverPatches()


def upgrade_first_sight(
    nodes: list[NodeFacts], patches: dict[str, NodePatch], spec: ClusterPolicySpec, with_driver: Collection[str],
    routing: DriverRouting | None = None,
) -> dict[str, NodePatch]:  # fmt: skip
    """patches with the driver-upgrade state `upgrade-done` added for the nodes they label that get the driver,
    run no driver pod of ours yet and have no state: the pod they get is of the DaemonSet's newest revision, so
    there is nothing to upgrade. Upstream writes that label in a patch of its own once the pod exists; here it
    goes with the node's labels (one write per node). `nodes`: as the patches leave them; only where the planner
    upgrades: the ClusterPolicy's driver under autoUpgrade (and no sandboxWorkloads), or with `routing`
    (useNvidiaDriverCRD) the nodes of an NVIDIADriver under autoUpgrade."""
    driver = spec.driver
    crd = driver.use_nvidia_driver_crd
    if not driver.enabled or (crd and (routing is None or routing.assignment is None)):
        return patches
    if not crd and not upgrades_orchestrated(spec):
        return patches
    extra: dict[str, NodePatch] = {}
    for n in nodes:
        if n.name not in patches or n.name in with_driver or UPGRADE_STATE in n.labels or not gets_driver(n):
            continue
        own = routing.spec_of(n.name) if crd and routing is not None else spec
        if own is not None and own.driver.upgrade_policy.auto_upgrade:
            extra[n.name] = {"labels": {UPGRADE_STATE: DONE}}
    return merged(patches, extra)


def merged(patches: dict[str, NodePatch], extra: dict[str, NodePatch]) -> dict[str, NodePatch]:
    """patches with extra merged in, as copies (the reconciler's memo shares its patches)."""
    if not extra:
        return patches
    out = dict(patches)
    for name, more in extra.items():
        both = {k: dict(v) for k, v in out.get(name, {}).items()}
        for part, values in more.items():
            both.setdefault(part, {}).update(values)
        out[name] = both
    return out


def relabelled(nodes: list[NodeFacts], patches: dict[str, NodePatch]) -> list[NodeFacts]:
    """The nodes as they will look once the patches are applied."""
    if not patches:
        return list(nodes)
    return [_patched(n, patch) if (patch := patches.get(n.name)) else n for n in nodes]


def _patched(node: NodeFacts, patch: NodePatch) -> NodeFacts:
    changed = patch.get("labels", {})
    annotations = apply_patch(node.annotations, patch.get("annotations", {}))
    return node.relabel(apply_patch(node.labels, changed), annotations, changed)


# Node labels the operands write about themselves and rendering never reads (GPU feature discovery's, the MIG
# manager's report, the upgrade state, and the deploy labels k8s-driver-manager sets around every driver start:
# back to the values it read, "" where there was none, paused during a reload; nvsm's too, an operand we do not
# render), left out of the render key: a rollout changes them on every node, and each change would render again
# (at 1,000 nodes the driver manager's "" labels alone re-rendered in 49 of 53 passes). The driver's and the
# toolkit's deploy labels choose pools: render_key keeps what gets_driver/gets_toolkit decide of them (_DECIDED).
# Of the compute labels the sharing check reads only which GPU nodes are below 7.5, with a sharing config named:
# render_key adds that. tests/test_render.py changes these (and a node's annotations, readiness and cordon, also
# left out) on every scenario's nodes and checks the plans stay equal.
RENDER_BLIND = frozenset({
    "nvidia.com/gpu.product", "nvidia.com/gpu.memory", "nvidia.com/gpu.count", "nvidia.com/gpu.family",
    "nvidia.com/gpu.machine", "nvidia.com/gpu.replicas", "nvidia.com/gpu.sharing-strategy",
    "nvidia.com/gpu.compute.major", "nvidia.com/gpu.compute.minor", "nvidia.com/mig.capable", "nvidia.com/mig.strategy",
    "nvidia.com/mps.capable", "nvidia.com/mig.config.state", UPGRADE_STATE,
    *(deploy_label(op) for op in (*ALL_OPERANDS, *DRA_OPERANDS, "nvsm") if op not in ("driver", "container-toolkit")),
})  # fmt: skip
_DECIDED = frozenset({deploy_label("driver"), deploy_label("container-toolkit")})  # render_key hashes gets_* of them
RENDER_BLIND_PREFIXES = ("nvidia.com/cuda.", "nvidia.com/gfd.", "nvidia.com/mig-", "nvidia.com/vgpu.")


def render_blind(key: str) -> bool:
    """Whether rendering never reads a node label (RENDER_BLIND)."""
    return key in RENDER_BLIND or key.startswith(RENDER_BLIND_PREFIXES)


def render_key(ctx: RenderContext, rows: dict[str, tuple[NodeFacts, bytes]] | None = None) -> str:
    """A digest of everything rendering depends on: equal keys, equal plans (rendering is deterministic).

    `rows` keeps each node's part, the digest of its encoding, between calls (by the node's identity), so an
    unchanged node is neither encoded nor hashed again (at 5,000 nodes hashing every node's encoding again was a
    tenth of a pass)."""
    memo = rows if rows is not None else {}
    fresh: dict[str, tuple[NodeFacts, bytes]] = {}
    for n in ctx.nodes:
        hit = memo.get(n.name)
        if hit is None or hit[0] is not n:
            labels = {k: v for k, v in n.labels.items() if not render_blind(k) and k not in _DECIDED}
            # rendering reads these two only through gets_*, which takes "true" and paused alike: the driver
            # manager's pause and restore of the toolkit's label during a driver rollout render nothing again
            row = [n.name, labels, n.runtime, n.has_nfd, n.pci_devices, gets_driver(n), gets_toolkit(n)]
            hit = (n, hashlib.sha256(json.dumps(row, sort_keys=True, default=str).encode()).digest())
        fresh[n.name] = hit
    if rows is not None:
        rows.clear()
        rows.update(fresh)
    blob = json.dumps(
        [ctx.spec.model_dump(mode="json"), ctx.namespace, ctx.owner, sorted(ctx.api_groups), ctx.config_maps,
         ctx.config_data.get(ctx.spec.device_plugin.config.name), sorted(ctx.missing_secrets),
         ctx.config_data.get(custom_config(ctx.spec) or ""),  # the MIG layouts the sharing check reads
         sharing.below_7_5_nodes(ctx.nodes) if ctx.spec.device_plugin.config.name else None,  # its MPS client limit
         sharing.mig_facts(ctx.nodes) if ctx.spec.device_plugin.config.name else None,  # and its MIG check
         [g.key() for g in ctx.nvidia_drivers], ctx.metrics_port, sorted(ctx.kept_manager_images.items())],
        sort_keys=True,
        default=str,
    )
    digest = hashlib.sha256(blob.encode())
    digest.update(b"".join(fresh[name][1] for name in sorted(fresh)))
    return digest.hexdigest()


def plan(ctx: RenderContext) -> list[StatePlan]:
    """Every state in order with its desired objects (none when disabled: its objects are to be deleted)."""
    plans = []
    refused = sharing.held(sharing.context_problems(ctx.spec, ctx.config_data, ctx.nodes, ctx.config_maps))
    for state in all_states():
        enabled = state.enabled(ctx.spec)
        if enabled and refused and state.name in sharing.HELD_STATES:
            plans.append(StatePlan(state, enabled, [], problem=sharing.summary(refused)))
            continue
        try:
            plans.append(StatePlan(state, enabled, state.render(ctx) if enabled else []))
        except PartialRender as exc:
            plans.append(StatePlan(state, enabled, exc.objects, held=exc.held))
        except RenderProblem as exc:
            plans.append(StatePlan(state, enabled, [], problem=str(exc)))
    return plans


def unrendered_drivers(ctx: RenderContext) -> frozenset[str]:
    """The uids of the NVIDIADrivers (ctx.nvidia_drivers) whose DaemonSets cannot be rendered for ctx."""
    driver = next(s for s in all_states() if s.name == "state-driver")
    try:
        driver.render(ctx)
    except PartialRender as exc:
        return frozenset(exc.held)
    except RenderProblem:
        return frozenset(str(g.owner.get("uid", "")) for g in ctx.nvidia_drivers)
    return frozenset()


def node_independent(ctx: RenderContext) -> list[StatePlan]:
    """What a pass can apply before it has decided any node's labels: every state's objects but its DaemonSets,
    rendered without nodes (accounts, roles, ConfigMaps, RuntimeClasses; none of them reads the nodes, which
    tests check for every scenario). States a sharing config may hold back are left out when one is named."""
    held: Collection[str] = sharing.HELD_STATES if ctx.spec.device_plugin.config.name else ()
    out = []
    for p in plan(replace(ctx, nodes=())):
        if p.enabled and not p.problem and p.state.name not in held:
            out.append(StatePlan(p.state, True, [o for o in p.objects if o.get("kind") != "DaemonSet"]))
    return out


def warm_up() -> None:
    """Load what a first pass would otherwise load while a new ClusterPolicy waits (~0.3 s): every state's
    templates compiled, the version matrix and the MIG tables parsed."""
    for state in all_states():
        templates(state.name, state.template_root)
    matrix.data()
    mig_layouts.gpus()


def object_key(obj: dict[str, Any]) -> tuple[str, str, str, str]:
    meta = obj.get("metadata", {})
    return (obj.get("apiVersion", ""), obj.get("kind", ""), meta.get("namespace", ""), meta.get("name", ""))


def config_map_keys(cm: dict[str, Any]) -> tuple[str, ...]:
    """The file names a ConfigMap holds (what a volume of it would contain)."""
    return tuple(sorted({*(cm.get("data") or {}), *(cm.get("binaryData") or {})}))
