"""The thin edge of MIG layout gating for the reconciler: read what `mig.decide` needs, carry out its decision."""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from functools import lru_cache
from types import MappingProxyType
from typing import Any

from . import mig, mig_layouts
from .api import ClusterPolicySpec
from .kube import ApiError, Kube
from .nodes import MIG_CORDONED, ByNode, NodeFacts, apply_patch
from .observe import Snapshot
from .states.base import owning_state
from .states.mig_manager import STATE, custom_config, fixed_config
from .upgrade.adapter import EventFn, Executor, GpuClaims
from .upgrade.model import Action, Annotate, Cordon, EvictPods, Plan, Uncordon

log = logging.getLogger("gpu_operator.mig")

_STATES = frozenset({STATE.name})


def _layouts(spec: ClusterPolicySpec, config_data: Mapping[str, Mapping[str, str]]) -> mig.Layouts | None:
    """The mig-parted config mig-manager reads, or None for the default table as its fallback (no name set).
    `config_data`: the ConfigMaps of our namespace, name -> data (the snapshot's, as the runtime caches them).
    ConfigError when it cannot be read: mig-manager then fails every layout."""
    name = custom_config(spec)
    if not name:  # the default ConfigMap named: mig-manager reads our default layouts and builds none
        return mig_layouts.default_layouts() if fixed_config(spec) else None
    if name not in config_data:
        raise mig.ConfigError(f"ConfigMap {name} not found (migManager.config.name)")
    text = config_data[name].get("config.yaml")
    if text is None:
        raise mig.ConfigError(f"ConfigMap {name} has no key config.yaml")
    layouts, error = _parsed(text)
    if error:
        raise mig.ConfigError(f"ConfigMap {name} key config.yaml: {error}")
    return layouts


@lru_cache(maxsize=4)
def _parsed(text: str) -> tuple[mig.Layouts, str]:
    """The layouts, or why mig-parted refuses the file (kept too: a broken config is read on every pass)."""
    try:
        return mig.parse_config(text), ""
    except mig.ConfigError as exc:
        return {}, str(exc)


def first_sight(
    node: NodeFacts,
    spec: ClusterPolicySpec,
    pods: Iterable[dict[str, Any]],
    config_data: Mapping[str, Mapping[str, str]],
) -> dict[str, str | None]:
    """The patch a pass would make on first sight of a node's layout, when that is all it would write there: the
    layout recorded as let through, or mig-manager held as the layout is refused; else {}. `node`: as its label
    patch leaves it; `pods`: operand pod projections; `config_data`: as for _layouts."""
    if not mig.mig_nodes([node], spec) or mig.changes_requested([node], spec):
        return {}
    try:
        layouts, unreadable = _layouts(spec, config_data), ""
    except mig.ConfigError as exc:
        layouts, unreadable = {}, str(exc)
    managers = frozenset(
        p["node"] for p in pods
        if p["node"] == node.name and owning_state(p["metadata"]["labels"], _STATES)
        and not p["metadata"].get("deletionTimestamp")
    )  # fmt: skip
    decision = mig.decide([node], spec, layouts=layouts, pods={}, managers=managers, unreadable=unreadable)
    patch = decision.patches.get(node.name, {})
    return patch if patch.keys() == {mig.APPROVED} or patch == {mig.MANAGER_LABEL: mig.PAUSED} else {}


# The layouts of a config that cannot be read: one object, so MigKept's key holds while it stays broken.
_UNREAD: mig.Layouts = MappingProxyType({})
_Key = tuple[ClusterPolicySpec, mig.Layouts | None, str]  # what mig.busy reads beside the node


def _busy(node: NodeFacts, key: _Key) -> NodeFacts | None:
    """The node, when `mig.decide` may have something to do on it (mig.busy)."""
    return node if mig.busy(node, *key) else None


def _managed(node: NodeFacts, spec: ClusterPolicySpec) -> bool | None:
    return True if mig.managed(node, spec) else None


@dataclass
class MigKept:
    """What a reconciler keeps between MIG passes, by node (nodes.ByNode): the nodes `decide` may have something to
    do on (most have none: their layout let through, nothing paused) and those whose layout is checked. A pass
    then decides over the few busy ones, not every node (at 5,000 nodes the walks were a seventh of a pass)."""

    busy: ByNode[NodeFacts] = field(default_factory=lambda: ByNode(_busy))
    managed: ByNode[bool] = field(default_factory=lambda: ByNode(_managed))
    config_error: str = ""  # the last pass's, logged once
    # busy's key: the spec and the config mig-manager reads, the same objects while neither changes (_parsed's)
    key: _Key | None = None

    def key_of(self, spec: ClusterPolicySpec, layouts: mig.Layouts | None, unreadable: str) -> _Key:
        key = self.key
        if key is None or key[0] is not spec or key[1] is not layouts or key[2] != unreadable:
            self.key = key = (spec, layouts, unreadable)
        return key


def run(
    kube: Kube,
    namespace: str,
    spec: ClusterPolicySpec,
    snap: Snapshot,
    nodes: list[NodeFacts],
    events: EventFn,
    fold: Collection[str] = (),
    kept: MigKept | None = None,
    previous: list[dict[str, Any]] | None = None,
) -> tuple[mig.Decision, list[NodeFacts], dict[str, dict[str, str | None]]]:
    """One pass: the decision, the nodes as it leaves them (labels, the gate's cordons), and the patches left to the
    caller.

    `fold`: nodes the caller patches later in this pass anyway; a patch that only records a layout as let through
    is left to go with that patch (one write per node instead of two) rather than written here. `kept`: what the
    last pass worked out per node, kept (see MigKept). `previous`: the policy's status conditions (a refusal or
    wait its MIGConfig condition names gets no event again)."""
    # The user's config is read on every pass (from the snapshot; parsed once per content): a broken one is reported
    # also while no node asks for a layout, as mig-manager fails the next change.
    layouts, unreadable = None, ""
    try:
        layouts = _layouts(spec, snap.config_data) if spec.mig_manager.enabled else None
    except mig.ConfigError as exc:
        layouts, unreadable = _UNREAD, str(exc)
        if kept is None or kept.config_error != unreadable:
            log.warning("MIG: %s", exc)
    managed = None
    busy: list[NodeFacts] = nodes
    if kept is not None:
        kept.config_error = unreadable
        busy = list(kept.busy.over(nodes, kept.key_of(spec, layouts, unreadable)).values())
        managed = len(kept.managed.over(nodes, spec))
    asked = mig.changes_requested(busy, spec)
    # Pods holding a GPU through a DRA claim count too; pods (and their claims) are read only while a change is asked.
    claims = GpuClaims(kube)
    pods = {n: [claims.project(p) for p in kube.list("Pod", field_selector=f"spec.nodeName={n}")] for n in asked}
    managers = frozenset(snap.pod_index.nodes_with(STATE.name, live=True)) if busy else frozenset()
    decision = mig.decide(busy, spec, layouts=layouts, pods=pods, managers=managers, unreadable=unreadable)
    decision.config_error = unreadable
    if managed is not None:
        decision.managed = managed  # of all the nodes (decide saw the busy ones)
    folded: dict[str, dict[str, str | None]] = {}
    for node, patch in sorted(decision.patches.items()):
        if node in fold and patch.keys() == {mig.APPROVED}:
            log.debug("MIG: node %s labels %s (with its label patch)", node, patch)
            folded[node] = patch
            continue
        log.info("MIG: node %s labels %s", node, patch)
        try:
            kube.merge_patch("Node", node, {"metadata": {"labels": patch}})
        except ApiError as exc:
            if exc.status != 404:
                raise
    if folded:
        log.info("MIG: %d nodes' layouts recorded as let through, with their label patches", len(folded))
    for e in mig.unsaid(decision.events, previous or []):
        events({"apiVersion": "v1", "kind": "Node", "metadata": {"name": e.node}}, e.type, e.reason, e.message)
    # As kubectl drain: cordoned first, in the cluster as the gate's (a restart finds it), so the evicted pods'
    # replacements go elsewhere; a node's evictions wait for its cordon to be written.
    drain = spec.driver.upgrade_policy.drain
    actions: list[Action] = [a for n in decision.cordon for a in (Cordon(n), Annotate(n, MIG_CORDONED, "true"))]
    actions += [EvictPods(n, refs, delete_emptydir=drain.delete_empty_dir) for n, refs in decision.evict.items()]
    actions += [a for n in decision.uncordon for a in (Uncordon(n), Annotate(n, MIG_CORDONED, None))]
    patched = Executor(kube, namespace, events, "MIG").run(Plan(actions=actions)).patched if actions else set()
    # The rest of the pass (the driver upgrade's planner) sees the gate's cordons as written: a cordon it read as
    # still there would be taken for one from before an upgrade starting now, and that upgrade would not cordon.
    cordoned = {n: True for n in decision.cordon if n in patched}
    cordoned |= {n: False for n in decision.uncordon if n in patched}
    if not decision.patches and not cordoned:
        return decision, nodes, folded
    out = [_after(n, decision.patches.get(n.name), cordoned.get(n.name)) for n in nodes]
    return decision, out, folded


def _after(node: NodeFacts, patch: dict[str, str | None] | None, cordoned: bool | None) -> NodeFacts:
    """The node as the pass leaves it: `patch` its labels', `cordoned` whether the gate's cordon went on or off."""
    if patch:
        node = replace(node, labels=apply_patch(node.labels, patch))
    if cordoned is None:
        return node
    annotations = {k: v for k, v in node.annotations.items() if k != MIG_CORDONED}
    if cordoned:
        annotations[MIG_CORDONED] = "true"
    return replace(node, unschedulable=cordoned, annotations=annotations)
