"""The level-based reconcile pass: cluster snapshot in, writes out, nothing written when nothing changed.

It runs in a worker thread on a snapshot of the watch cache; every decision comes from the pure core. The writing
is done by small parts, one job each: `apply.Applier` (objects and node patches), `lifecycle.Lifecycle`
(finalizer, namespace, clean-up), `status_writer.StatusWriter`, `events.EventRecorder`, and
`upgrade.orchestrate` (driver upgrades).
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from . import compat, coverage, metrics, mig, mig_pass, nvidiadriver, sharing
from .api import ClusterPolicySpec, PolicyError, allows_unknown, parse_spec
from .apply import Applied, Applier, labels_of
from .events import EventRecorder, now
from .kube import ApiError, Kube, Unreachable
from .lifecycle import CLEANUP_FINALIZER, Lifecycle, pods_missing
from .nodes import (
    DEPLOY_OPERANDS,
    DRIVER_KERNEL,
    DRIVER_REFUSED,
    INVALID_WORKLOAD_REASON,
    ByNode,
    NodeFacts,
    deploy_label,
    invalid_workload_condition,
    invalid_workload_message,
    invalid_workloads,
    newly_invalid_workloads,
    unpooled,
)
from .nvidiadriver_api import KIND as NVIDIADRIVER
from .nvidiadriver_api import OWNER_LABEL
from .observe import Key, Newer, Snapshot, daemonset_key, key_of, newer, owner_key, require_nvidia_drivers
from .readiness import KeptReadiness, NodeCounter
from .render import (
    DriverRouting,
    NodePatch,
    StatePlan,
    driver_node_patches,
    driver_routing,
    kept_driver_patches,
    merged,
    node_independent,
    node_patches,
    plan,
    relabelled,
    render_key,
    unrendered_drivers,
    upgrade_first_sight,
)
from .states import RenderContext, all_states
from .states.base import owning_state
from .states.driver import kept_manager_images, named_secrets, unpooled_note
from .status import UNSUPPORTED_FIELDS, StateResult, active_policy, ignored_status, policy_status
from .status_writer import StatusWriter
from .upgrade import Counters, Limit
from .upgrade.adapter import UpgradeKept, managed_nodes
from .upgrade.model import DONE, SKIP_LABEL, UNKNOWN, UpgradeNode
from .upgrade.model import STATE_LABEL as UPGRADE_STATE
from .upgrade.orchestrate import Orchestrated, left_behind, orchestrate, set_gauges, unreplaced_note

log = logging.getLogger("gpu_operator")
# A driver Secret (secretEnv, licensingConfig.secretName) found is read again after this long (a missing one on
# every pass until it appears).
SECRET_RECHECK_S = 60.0

__all__ = ["CLEANUP_FINALIZER", "Outcome", "Reconciler"]


@dataclass
class Outcome:
    ready: bool | None  # None: no active policy
    applied: list[dict[str, Any]] = field(default_factory=list)
    deleted: list[Key] = field(default_factory=list)
    writes: int = 0  # requests of the pass that changed something, events included (counted by the client)
    busy: bool = False  # work in progress that needs rechecking soon (a driver upgrade)
    nodes: list[NodeFacts] = field(default_factory=list)  # the Nodes as this pass patched them
    recheck_s: float | None = None  # pass again this soon (a status change held back until then), if set
    more: bool = False  # writes left for the next pass (the upgrade's write budget): pass again at once
    failed: bool = False  # counted in reconciliation_failed_total (once a pass)
    error: bool = False  # the API server refused a write or the pass was cut short: tried again with backoff

    def count_failed(self) -> None:
        """Count the pass in reconciliation_failed_total, unless it is already."""
        if not self.failed:
            self.failed = True
            metrics.reconciliation_failed_total.inc()


@dataclass(frozen=True)
class Labelling:
    """What a node's labels are decided on between passes: the active policy's identity and its parsed spec; under
    NVIDIADrivers the pass's routing and the uid and generation of each NVIDIADriver it saw."""

    policy: str
    uid: str
    generation: int | None
    spec: ClusterPolicySpec
    routing: DriverRouting | None = None
    drivers: tuple[tuple[str, str, int | None], ...] = ()
    # The uids of the NVIDIADrivers that cannot render (no node moves there), worked out when first asked.
    unrendered: Callable[[], frozenset[str]] | None = None

    def upgrade_spec(self, node: str, drivers: Mapping[str, Mapping[str, Any]]) -> ClusterPolicySpec | None:
        """The spec a node's driver upgrade follows: the policy's (None with sandboxWorkloads.enabled: no upgrade
        then); with useNvidiaDriverCRD the spec of the NVIDIADriver that drives the node, while every NVIDIADriver
        (`drivers`, as cached now) is the one (uid) at the generation the pass saw (else None: the next pass
        decides)."""
        if not self.spec.driver.use_nvidia_driver_crd:
            return None if self.spec.sandbox_workloads.enabled else self.spec
        if self.routing is None or generations(drivers) != self.drivers:
            return None
        return self.routing.spec_of(node)

    def upgrade_owner(self, node: str) -> tuple[str, str] | None:
        """As managed_nodes takes it: the node's NVIDIADriver's (uid, owner label), None without NVIDIADrivers."""
        group = self.routing.group_of(node) if self.routing is not None else None
        return group.upgrade_owner() if group is not None else None


def generations(drivers: Mapping[str, Mapping[str, Any]]) -> tuple[tuple[str, str, int | None], ...]:
    """Each NVIDIADriver's uid and generation, by name (one created again under its name starts at generation 1)."""
    metas = ((name, obj.get("metadata") or {}) for name, obj in drivers.items())
    return tuple(sorted((name, meta.get("uid", ""), meta.get("generation")) for name, meta in metas))


class Reconciler:
    def __init__(self, kube: Kube, namespace: str, metrics_port: int = 8080):
        self.kube = kube
        self.namespace = namespace
        self.metrics_port = metrics_port  # --metrics-port, which the operator's metrics Service targets
        self.events = EventRecorder(kube)
        self.applier = Applier(kube)
        self.status = StatusWriter(kube, self.events)
        self.lifecycle = Lifecycle(kube, namespace, self.applier, self.status.seen, self.events)
        self._plan: tuple[str, list[StatePlan]] | None = None  # the last plan and its render key
        self._unreadable_secrets: set[str] = set()  # named Secrets whose GET failed, each logged once
        self._secrets_seen: dict[str, float] = {}  # named Secrets found, and when (read again after SECRET_RECHECK_S)
        self._spec: tuple[str, ClusterPolicySpec] | None = None  # the last parsed spec and its JSON text
        self._coverage: tuple[ClusterPolicySpec, list[tuple[str, str]]] | None = None  # coverage.report of a spec
        # Node -> (the facts and spec a patch was decided on, that patch): a node that did not change is not
        # decided again (the facts are the watch cache's own objects, replaced only when the node changes).
        self._patches: dict[str, tuple[NodeFacts, ClusterPolicySpec, bool, NodePatch]] = {}
        self._rows: dict[str, tuple[NodeFacts, bytes]] = {}  # render_key's per-node part, by the same rule
        self._early: tuple[str, frozenset[str]] | None = None  # the last _unrendered and its render key
        self._early_rows: dict[str, tuple[NodeFacts, bytes]] = {}  # its render_key's per-node part
        self._early_lock = threading.Lock()
        self._count = NodeCounter()  # on how many nodes each DaemonSet should run, by the same rule
        self._readiness = KeptReadiness()  # each DaemonSet's pod walk, kept while its inputs are the same objects
        self._kept = UpgradeKept()  # the version matrix's verdicts and the upgrade planner's inputs, by the same rule
        self._driver_patches = kept_driver_patches()  # the driver's own node labels, by the same rule
        self._mig = mig_pass.MigKept()  # the nodes the MIG pass may have something to do on, by the same rule
        self._group_kept: dict[str, UpgradeKept] = {}  # each NVIDIADriver's upgrade inputs, by its name
        self._routing = nvidiadriver.KeptRouting()  # which NVIDIADriver drives each node, by the same rule
        self._group_verdicts = compat.kept_group_verdicts()  # the version matrix's verdicts under NVIDIADrivers
        # The nodes whose owner label the assignment changes, by the same rule (under the same Assignment object).
        self._owner_moves: ByNode[str] = ByNode(nvidiadriver.owner_label_move)
        self._drivers_done: set[str] = set()  # the NVIDIADrivers whose status this pass decided
        # Set after each pass with an active, valid policy: single nodes are labelled by it between passes.
        self.labelling: Labelling | None = None
        # Set by the runtime: whether a node's upgrade moved on between passes since these facts of it (see
        # upgrade.orchestrate.advance); a pass drops its actions for such a node.
        self.moved: Callable[[NodeFacts], bool] | None = None
        # Set by the runtime: asked late in a pass whose status would be ready but for DaemonSets not ready yet,
        # what the watches brought since the pass's snapshot (None: nothing that may make them ready). A last
        # operand pod turning ready while a pass runs is then in that pass's status, not a pass later.
        self.newer: Callable[[], Newer | None] | None = None

    def _missing_secrets(self, names: frozenset[str]) -> frozenset[str]:
        """Of the Secrets the spec names, those not in our namespace: one GET each, only of these names (no
        list: that would read every Secret's data). One the GET fails for (no right to read it) is not checked."""
        missing = set()
        clock = time.monotonic()
        for name in sorted(names):
            if clock - self._secrets_seen.get(name, -SECRET_RECHECK_S) < SECRET_RECHECK_S:
                continue  # found lately: not read again on every pass of a rollout
            try:
                found = self.kube.get("Secret", name, self.namespace)
            except ApiError as exc:
                if name not in self._unreadable_secrets:
                    self._unreadable_secrets.add(name)
                    log.warning("Secret %s (driver) not checked: %s %s", name, exc.status, exc.reason)
                continue
            self._unreadable_secrets.discard(name)
            if found is None:
                missing.add(name)
                self._secrets_seen.pop(name, None)
            else:
                self._secrets_seen[name] = clock
        return frozenset(missing)

    def _parse(self, raw: Any, allow_unknown: bool) -> tuple[ClusterPolicySpec, bool]:
        """The parsed spec, parsed again only when its text changed (PolicyError as parse_spec), and whether it
        was (a new or changed spec)."""
        text = json.dumps([raw, allow_unknown], sort_keys=True, default=str)
        if self._spec is None or self._spec[0] != text:
            self._spec = (text, parse_spec(raw, allow_unknown=allow_unknown))
            return self._spec[1], True
        return self._spec[1], False

    def _unsupported(self, spec: ClusterPolicySpec) -> list[tuple[str, str]]:
        """coverage.report, worked out once per parsed spec."""
        if self._coverage is None or self._coverage[0] is not spec:
            self._coverage = (spec, coverage.report(spec))
        return self._coverage[1]

    def _node_patches(
        self, nodes: list[NodeFacts], spec: ClusterPolicySpec, refused: frozenset[str]
    ) -> dict[str, NodePatch]:
        """render.node_patches, decided again only for nodes (or a spec, or a refusal) that changed since the
        last pass. The patches returned are shared with that memo: callers must not change them in place."""
        memo = self._patches
        out: dict[str, NodePatch] = {}
        fresh: dict[str, tuple[NodeFacts, ClusterPolicySpec, bool, NodePatch]] = {}
        todo = []
        for node in nodes:
            hit = memo.get(node.name)
            if hit is not None and hit[0] is node and hit[1] is spec and hit[2] == (node.name in refused):
                fresh[node.name] = hit
                if hit[3]:
                    out[node.name] = hit[3]
            else:
                todo.append(node)
        decided = node_patches(todo, spec, refused)
        for node in todo:
            patch = decided.get(node.name, {})
            fresh[node.name] = (node, spec, node.name in refused, patch)
            if patch:
                out[node.name] = patch
        self._patches = fresh
        return out

    def _render(self, ctx: RenderContext) -> list[StatePlan]:
        """The plan for ctx, rendered again only when something it depends on changed."""
        key = render_key(ctx, self._rows)
        if self._plan is None or self._plan[0] != key:
            self._plan = (key, plan(ctx))
        return self._plan[1]

    def _unrendered(self, ctx: RenderContext) -> frozenset[str]:
        """render.unrendered_drivers for ctx, worked out again only when something rendering depends on changed."""
        with self._early_lock:  # called by a pass's thread and, between passes, by the event loop's labelling
            key = render_key(ctx, self._early_rows)
            if self._early is None or self._early[0] != key:
                self._early = (key, unrendered_drivers(ctx))
            return self._early[1]

    def reconcile(self, snap: Snapshot) -> Outcome:
        writes_before = self.kube.writes()
        out = Outcome(ready=None)
        self.events.pass_started()  # the Events owed from a pass that was cut are dropped (they may be over)
        try:
            self._reconcile(snap, out)
        except Unreachable as exc:  # nothing more reaches the API server: failed (once, if counted already), no status
            log.warning("reconcile failed: %s", exc)
            out.error = True
            out.ready = False
            out.count_failed()
            metrics.reconciliation_status.set(-2)
        finally:
            out.writes = self.kube.writes() - writes_before
        return out

    def _reconcile(self, snap: Snapshot, out: Outcome) -> None:
        metrics.reconciliation_total.inc()
        active = active_policy(list(snap.policies.values()))
        active_created = snap.policies[active]["metadata"].get("creationTimestamp") if active else None
        for name, policy in sorted(snap.policies.items()):
            if name != active and not policy["metadata"].get("deletionTimestamp"):
                generation = policy["metadata"].get("generation")
                previous = policy.get("status")
                tie = active_created is not None and policy["metadata"].get("creationTimestamp") == active_created
                status = ignored_status(
                    generation=generation, namespace=self.namespace, active=active or "?", previous=previous, now=now(),
                    same_second=tie,
                )  # fmt: skip
                try:
                    if not self.status.write(policy, status):
                        out.busy = True  # held back, or the policy changed since it was read: the next pass writes it
                except ApiError as exc:  # refused, or gone since it was read (404): the active policy's pass goes on
                    log.warning("ClusterPolicy %s: status not written: %s", name, exc)
                    out.busy = out.busy or exc.status != 404
        gpu_nodes = [n for n in snap.nodes.values() if n.has_gpu]
        metrics.gpu_nodes_total.set(len(gpu_nodes))
        metrics.reconciliation_has_nfd_labels.set(int(any(n.has_nfd for n in snap.nodes.values())))
        try:
            if not self.lifecycle.cleanup_deleted(snap):
                out.busy = True  # a policy changed since it was read: its finalizer is let go on the next pass
        except ApiError as exc:  # refused (a 403, a webhook): the pass goes on
            log.warning("deleted ClusterPolicy not let go: %s", exc)
            out.busy = out.busy or exc.status != 404
        if active is None or snap.policies[active]["metadata"].get("deletionTimestamp"):
            self.labelling = None
        if active is None:
            metrics.reconciliation_status.set(-1)
            # No upgrade runs without a policy (upstream sets auto-upgrade 0 then too); the node counts go with it.
            metrics.driver_auto_upgrade_enabled.set(0)
            set_gauges(Counters())
            out.recheck_s = self._drivers_unmanaged(snap, "no active ClusterPolicy")
            self.events.pass_done()
            return
        policy = snap.policies[active]
        self._drivers_done = set()
        try:
            self._reconcile_active(policy, snap, out)
        except ApiError as exc:
            log.warning("reconcile failed: %s", exc)
            out.error = True
            out.count_failed()  # once: a notReady pass whose status write failed is counted already
            metrics.reconciliation_status.set(-2)
            out.ready = False
            # What this pass did not get to work out stays as the last pass left it: the upgrade's progress and the
            # conditions of our own beyond Ready, Error and UnsupportedFields (which policy_status carries over).
            previous = policy.get("status") or {}
            status = policy_status(
                generation=policy["metadata"].get("generation"),
                namespace=self.namespace,
                results=[StateResult(**s) for s in previous.get("states") or []],
                gpu_nodes=len(gpu_nodes),
                has_nfd=True,
                previous=previous,
                now=now(),
                error=str(exc),
                **_as_left(previous),
            )
            try:
                self.status.write(policy, status, quiet=True)
            except ApiError as again:  # the pass is counted failed already: logged, the next pass tries again
                log.warning("ClusterPolicy %s: status not written: %s", policy["metadata"]["name"], again)
            finally:
                self._drivers_failed(policy, snap, f"reconcile failed: {exc}")
        else:
            self.events.pass_done()  # what this pass no longer reported is posted again should it come back

    def _reconcile_active(self, policy: dict[str, Any], snap: Snapshot, out: Outcome) -> None:
        meta = policy["metadata"]
        try:
            finalized = self.lifecycle.ensure_finalizer(policy)
        except ApiError as exc:
            if exc.status != 404:
                raise
            # Deleted before our finalizer was on it: nothing of ours to clean up; its DELETED event brings a pass.
            log.info("ClusterPolicy %s was deleted before it had our finalizer: nothing reconciled", meta["name"])
            self.labelling = None
            out.busy = True
            return
        if not finalized:
            out.busy = True  # the policy changed since it was read: its finalizer is added on the next pass
        generation = meta.get("generation")
        try:
            spec, new_spec = self._parse(policy.get("spec"), allows_unknown(meta))
        except PolicyError as exc:
            self.labelling = None
            out.ready = False
            metrics.reconciliation_status.set(0)
            out.count_failed()
            error = "invalid spec: " + "; ".join(exc.problems)
            status = policy_status(
                generation=generation,
                namespace=self.namespace,
                results=[],
                gpu_nodes=0,
                has_nfd=True,
                previous=policy.get("status"),
                now=now(),
                error=error,
                error_reason="InvalidSpec",
                **_as_left(policy.get("status") or {}),  # nothing is acted on: the nodes and upgrade stay as they are
            )
            if not self.status.write(policy, status):
                out.busy = True  # held back, or the policy changed since it was read: the next pass writes it
            out.recheck_s = self._drivers_unmanaged(snap, f"ClusterPolicy {meta['name']}: {error}", as_left=True)
            return
        # A refused NVIDIADriver listing fails the pass (its status names the permission) under useNvidiaDriverCRD.
        require_nvidia_drivers(snap, spec.driver.use_nvidia_driver_crd)
        self.lifecycle.ensure_namespace(spec.psa.enabled, pods_missing(snap.owned, self.namespace))

        # Objects are rendered for the nodes as they will be labelled, applied first (none of them needs the
        # labels to exist), then the nodes are labelled.
        nodes = list(snap.nodes.values())
        drivers = [nvidiadriver.NVIDIADriver.from_object(o) for o in snap.nvidia_drivers.values()]
        routing = driver_routing(nodes, spec, drivers, self._routing)
        assignment, groups = routing.assignment, routing.groups
        owner = {"apiVersion": policy["apiVersion"], "kind": policy["kind"], "name": meta["name"], "uid": meta["uid"]}
        ctx = RenderContext(
            spec=spec,
            namespace=self.namespace,
            nodes=(),
            owner=owner,
            api_groups=snap.api_groups,
            config_maps=snap.config_maps,
            config_data=snap.config_data,
            missing_secrets=self._missing_secrets(named_secrets(spec, groups)),
            nvidia_drivers=groups,
            metrics_port=self.metrics_port,
            kept_manager_images=kept_manager_images(snap.owned.values(), snap.revisions) if groups else {},
        )
        # A new or changed spec: what needs no node is sent now, while the nodes are decided (at 5,000 nodes that
        # takes a second).
        ahead = self.applier.start(node_independent(ctx), snap.owned) if new_spec else None
        verdicts = compat.verdicts_for(nodes, spec, groups, self._kept.verdicts, self._group_verdicts)
        refused = compat.refused(verdicts)
        # A refused node keeps a driver pod of ours it already runs; only one without gets the refused label.
        with_driver = snap.pod_index.nodes_with("state-driver")
        patches = self._node_patches(nodes, spec, frozenset(n for n in refused if n not in with_driver))
        # A node the driver may run on again gets gpu.deploy.driver=true back only once the driver DaemonSets
        # carry this version: before, the DaemonSet controller could start the refused version there.
        held = hold_driver_restores(patches, nodes)
        # No node moves to an NVIDIADriver whose DaemonSets cannot be rendered (decided before the owner labels).
        unmoved = replace(ctx, nodes=tuple(relabelled(nodes, patches)))
        unrendered = functools.partial(self._unrendered, unmoved) if groups else None
        patches = merged(patches, driver_node_patches(relabelled(nodes, patches), spec, routing, with_driver,
                                                      self._driver_patches, unrendered))  # fmt: skip
        patches = upgrade_first_sight(relabelled(nodes, patches), patches, spec, with_driver, routing)
        # A node joining a precompiled pool gets its driver-kernel label before the DaemonSets select it, so
        # a pod already running there (an install from before the label) is not deleted meanwhile.
        early: dict[str, NodePatch] = {}
        for n in nodes:
            added = (patches.get(n.name) or {}).get("labels", {}).get(DRIVER_KERNEL)
            if added and DRIVER_KERNEL not in n.labels:
                early[n.name] = {"labels": {DRIVER_KERNEL: added}}
                rest = {k: dict(v) for k, v in patches[n.name].items()}
                del rest["labels"][DRIVER_KERNEL]
                patches[n.name] = {k: v for k, v in rest.items() if v}
                if not patches[n.name]:
                    del patches[n.name]
        versions = {n.name: n.resource_version for n in nodes if n.name in patches}
        nodes = relabelled(relabelled(nodes, patches), early)
        migs, nodes, folded = mig_pass.run(self.kube, self.namespace, spec, snap, nodes, self.events, set(patches),
                                           self._mig, (policy.get("status") or {}).get("conditions"))  # fmt: skip
        # The MIG pass wrote its labels already (but those it left to the label patch); the label patch (sent after
        # the objects) must not undo them.
        for name, mig_labels in folded.items():
            patches[name] = {**patches[name], "labels": {**(patches[name].get("labels") or {}), **mig_labels}}
        for name, mig_labels in migs.patches.items():
            if name in folded:
                continue
            patch = patches.get(name)
            if patch and any(k in mig_labels for k in patch.get("labels") or {}):
                labels = {k: v for k, v in (patch.get("labels") or {}).items() if k not in mig_labels}
                rest = {k: v for k, v in patch.items() if k != "labels"}
                patches[name] = {**rest, "labels": labels} if labels else rest

        ctx = replace(ctx, nodes=tuple(nodes))
        sharing_problems = self._check_sharing(policy, ctx)
        results = []
        errors = []
        live = dict(snap.owned)
        states = frozenset(s.name for s in all_states())
        plans = self._render(ctx)
        node_refusals: dict[str, str] = {}  # node -> why the API server refused its patch (422)
        early_nodes = self.applier.patch_nodes(early, refused=node_refusals) if early else []
        applied_by_state = self.applier.apply_states([p for p in plans if not p.problem], live, ahead)
        for _, _, future in (ahead or {}).values():
            future.result()  # every one answered (an object the full plan dropped meanwhile comes by the watch)
        # What no state wants any more goes before the nodes are labelled: a driver DaemonSet handed over is
        # deleted with its pods left running (handed_over), before owner labels make it drop them.
        wanted = {p.state.name: _wanted(p, live, states) for p in plans}
        desired = set().union(*wanted.values())
        handed = handed_over(snap.owned, spec)
        if assignment is not None:
            desired |= _held_daemonsets(nodes, assignment, snap, self.namespace, self._owner_moves) - handed
            desired |= _invalid_drivers_objects(snap.owned, drivers)
        out.deleted = self.applier.prune(snap.owned, desired, states, handed)
        out.nodes = early_nodes + self.applier.patch_nodes(patches, versions, node_refusals)
        # Readiness counts the nodes as this pass left them (a node labelled just now must have its pods).
        patched = {**snap.nodes, **{n.name: n for n in out.nodes}} if out.nodes else snap.nodes
        count = self._count.over(patched)
        self.labelling = Labelling(meta["name"], meta.get("uid", ""), generation, spec, routing,
                                   generations(snap.nvidia_drivers), unrendered)  # fmt: skip
        pods_by_owner = snap.pod_index.by_owner
        waiting: dict[int, set[Key]] = {}  # results not ready only by their DaemonSets' readiness: their keys
        for state_plan in plans:
            state = state_plan.state
            if state_plan.problem:  # nothing rendered: its objects are kept (_wanted); say why
                results.append(StateResult(state.name, "notReady", state_plan.problem))
                continue
            mine = wanted[state.name]
            applied = applied_by_state[state.name]
            out.applied += applied.objects
            if state.name == "state-driver" and held and (applied.objects or applied.failed):
                out.busy = True  # the DaemonSets changed just now: restore the held labels on a later pass
                held = {}
            if applied.failed:
                errors.append(f"{state.name}: {applied.failed}")
            if not state_plan.enabled:
                results.append(StateResult(state.name, "disabled"))
            elif applied.failed:
                results.append(StateResult(state.name, "notReady", "apply failed: " + applied.failed))
            else:
                result = self._daemonsets_ready(state.name, mine, live, snap, pods_by_owner, set(refused), count)
                note = state.readiness_notes(ctx) if state.readiness_notes else None
                not_rendered = "; ".join(state_plan.held.values())
                if note or not_rendered:
                    message = "; ".join(m for m in (not_rendered, result.message, note) if m)
                    result = StateResult(state.name, "notReady", message)
                elif result.state == "notReady":
                    waiting[len(results)] = mine
                results.append(result)

        if held:
            self.applier.patch_nodes(held, refused=node_refusals)
            out.busy = True
        if node_refusals:  # the pass went on without them; named in the status (ReconcileFailed) until they pass
            shown = sorted(node_refusals.items())
            errors.append("node patch refused: " + "; ".join(f"{name}: {why}" for name, why in shown[:5])
                          + (f" and {len(shown) - 5} more" if len(shown) > 5 else ""))  # fmt: skip

        by_name = {n.name: n for n in nodes}
        was_moved = self.moved
        moved = None if was_moved is None else lambda name: was_moved(by_name[name])
        said = ((policy.get("status") or {}).get("upgrade") or {}).get("waiting") or []
        # The upgrade sees our objects as this pass leaves them: a driver DaemonSet it created adopts the orphaned
        # driver pods of its pool, and one it deleted adopts none.
        left = snap.with_nodes(by_name, {k: live[k] for k in desired if k in live})
        if assignment is not None:
            driver_plan = next((p for p in plans if p.state.name == "state-driver"), None)
            unrenderable = set(driver_plan.held) if driver_plan and not driver_plan.problem else {
                g.owner["uid"] for g in groups if driver_plan}  # fmt: skip
            upgrade = self._orchestrate_nvidia_drivers(spec, left, by_name, assignment, groups, moved, said,
                                                       snap, unrenderable)  # fmt: skip
        else:
            upgrade = orchestrate(self.kube, self.namespace, spec, left, self.events, moved=moved, kept=self._kept,
                                  said=said)  # fmt: skip
        settling = bool(patches or held or out.applied or out.deleted)
        # Not ready only by DaemonSets' readiness: what came since the snapshot may make them ready.
        only_waiting = bool(waiting) and len(waiting) == sum(r.state == "notReady" for r in results)
        out.error = out.error or bool(errors)  # refused writes: upstream's step() errors, requeued with backoff
        later = self.newer() if self.newer and only_waiting and not errors and not settling else None
        if later is not None:
            snap, live = _with_newer(snap, live, later)
            pods_by_owner = later.pod_index.by_owner
            for i, keys in waiting.items():
                name = results[i].name
                results[i] = self._daemonsets_ready(name, keys, live, snap, pods_by_owner, set(refused), count)
        if upgrade.idle:  # out-of-date driver pods that no upgrade replaces: said, so a stuck rollout reads as one
            at = next((i for i, r in enumerate(results) if r.name == "state-driver" and r.state == "notReady"), None)
            notes = [] if at is None else [
                f"NVIDIADriver {name}: {note}" if name else note for name, nodes in sorted(upgrade.idle.items())
                if (note := unreplaced_note(nodes, "autoUpgrade is off" if name or not spec.sandbox_workloads.enabled
                                            else "sandboxWorkloads is enabled (no driver upgrades)"))]  # fmt: skip
            if at is not None and notes:
                results[at] = StateResult("state-driver", "notReady", "; ".join([results[at].message, *notes]))
        out.busy = out.busy or upgrade.busy or bool(migs.waiting)
        out.more = upgrade.deferred > 0
        previous_conditions = (policy.get("status") or {}).get("conditions") or []
        # A Warning on each node the status does not name with this rule yet (once per change).
        for name, message in compat.newly_refused(verdicts, previous_conditions).items():
            ref = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}}
            self.events(ref, "Warning", compat.EVENT_REASON, f"driver not rolled out to this node: {message}")
        # And on each node whose workload config the status does not name with that value yet.
        invalid = invalid_workloads(nodes, spec)  # one walk for the Events and the condition
        for name, value in newly_invalid_workloads(invalid, spec, previous_conditions).items():
            ref = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}}
            self.events(ref, "Warning", INVALID_WORKLOAD_REASON, invalid_workload_message(value, spec))
        status = policy_status(
            generation=generation,
            namespace=self.namespace,
            results=results,
            gpu_nodes=sum(1 for n in nodes if n.has_gpu),
            operand_nodes=self._count.running_any(
                (o["spec"]["template"]["spec"] for p in plans if p.enabled and not p.problem for o in p.objects
                 if o["kind"] == "DaemonSet"), _operand_node),  # fmt: skip
            has_nfd=any(n.has_nfd for n in nodes),
            previous=policy.get("status"),
            now=now(),
            error="; ".join(errors) or None,
            settling=settling,
            extra={"upgrade": upgrade.status} if upgrade.status else None,
            unsupported=self._unsupported(spec),
            upgrading=nvidia_driver_upgrades(nodes, assignment, refused) if spec.driver.use_nvidia_driver_crd else (),
            more_conditions=[
                c
                for c in [
                    compat.condition(verdicts, generation, previous_conditions, now()) if verdicts else None,
                    sharing.condition(spec.device_plugin.config.name, sharing_problems, generation,
                                      previous_conditions, now()),
                    invalid_workload_condition(invalid, spec, generation, previous_conditions, now()),
                ]
                if c
            ],
        )
        mig_condition = mig.condition(migs, generation, previous_conditions, now())
        if mig_condition:
            status["conditions"].append(mig_condition)
        out.ready = status["state"] == "ready"
        # Set before the write (which also posts an Event): whoever sees the status has the same answer here. As
        # upstream's: a pass that leaves the policy not ready counts as failed, and success is a ready one (its time
        # set once the statuses are written: a write that fails makes the pass a failed one). A refused write makes
        # it an error pass (-2, as an exception; upstream's says 0), not a rollout: the chart's alert reads -2.
        metrics.reconciliation_status.set(-2 if errors else 1 if out.ready else 0)
        if not out.ready:
            out.count_failed()
        written = self.status.write(policy, status)
        # The NVIDIADrivers' statuses after the ClusterPolicy's (what admins wait on): at 5,000 nodes one NVIDIADriver
        # status patch took 0.3 s, by which the ClusterPolicy's ready came later while the NVIDIADrivers' went first.
        off = ("the ClusterPolicy's driver is disabled (driver.enabled: false)" if spec.driver.use_nvidia_driver_crd
               else "useNvidiaDriverCRD is not enabled in ClusterPolicy")  # fmt: skip
        driver_held = self._driver_statuses(snap, drivers, assignment, plans, live, pods_by_owner, set(refused),
                                            count, off, applied_by_state.get("state-driver"), ctx, upgrade.idle)
        out.busy = out.busy or driver_held is not None
        out.recheck_s = driver_held  # an NVIDIADriver's progress held back: the next pass writes it, once it may
        if out.ready:
            metrics.reconciliation_last_success_ts_seconds.set(time.time())
        if not written:
            out.busy = True  # progress held back: the next pass writes it, once it may
            retry = self.status.retry_in(meta["name"])
            out.recheck_s = retry if driver_held is None else min(retry, driver_held)

    def _orchestrate_nvidia_drivers(
        self,
        spec: ClusterPolicySpec,
        snap: Snapshot,
        by_name: dict[str, NodeFacts],
        assignment: nvidiadriver.Assignment,
        groups: tuple[nvidiadriver.DriverGroup, ...],
        moved: Callable[[str], bool] | None,
        said: Sequence[dict[str, Any]] = (),
        seen: Snapshot | None = None,
        unrendered: Collection[str] = (),
    ) -> Orchestrated:
        """Each NVIDIADriver's nodes by its own upgradePolicy, and all of them within the ClusterPolicy's
        maxParallelUpgrades and maxUnavailable (over every node the NVIDIADrivers drive, whatever the ClusterPolicy's
        autoUpgrade: beyond upstream). `moved`, `said`: as orchestrate's. `seen`: the pass's snapshot (the nodes'
        owner labels before this pass's patches; `snap` by default). `unrendered`: the uids of the NVIDIADrivers
        whose DaemonSets could not be rendered (their status says why): no node moves to one of them (its nodes
        whose owner label names another keep their driver), as the ClusterPolicy's driver keeps all when it cannot
        render."""

        def upgraded(g: nvidiadriver.DriverGroup, name: str) -> bool:
            return name in by_name and (g.owner["uid"] not in unrendered
                                        or by_name[name].labels.get(OWNER_LABEL, "") == g.upgrade_owner()[1])

        def upgrades(g: nvidiadriver.DriverGroup) -> dict[str, NodeFacts]:
            if g.owner["uid"] in unrendered:
                return {k: by_name[k] for k in assignment.nodes_of(g.name) if upgraded(g, k)}
            return {k: by_name[k] for k in assignment.nodes_of(g.name) if k in by_name}  # upgraded's answer

        parts = [(g, snap.with_nodes(upgrades(g))) for g in groups]
        self._group_kept = kept = {g.name: self._group_kept.get(g.name) or UpgradeKept() for g in groups}
        managed = {g.name: managed_nodes(g.spec, part, kept[g.name], g.upgrade_owner()) for g, part in parts}
        what = "all NVIDIADrivers (ClusterPolicy driver.upgradePolicy)"
        limit = Limit.over([n for ones in managed.values() for n in ones], spec.driver.upgrade_policy, what)
        out = Orchestrated(None, False)
        totals: dict[str, int] = {}
        cap = limit.available  # what the ClusterPolicy's limits leave, before this pass's starts
        for group, part in parts:
            one = orchestrate(self.kube, self.namespace, group.spec, part, self.events, limit=limit, gauges=False,
                              moved=moved, kept=kept[group.name], managed=managed[group.name], said=said,
                              nvidia_driver=True)
            limit = limit.after(one.started, one.made_unavailable)
            if "" in one.idle:
                out.idle[group.name] = one.idle[""]
            out.busy = out.busy or one.busy
            out.deferred += one.deferred
            out.status = _sum_upgrades(out.status, one.status)
            for key, value in vars(one.counters).items():
                totals[key] = totals.get(key, 0) + value
        # Slots free: each NVIDIADriver's own, within what the ClusterPolicy's limits leave over all of them.
        totals["available"] = min(totals.get("available", 0), cap)
        if out.status is not None:
            out.status["available"] = totals["available"]
        out.counters = Counters(**totals)
        set_gauges(out.counters)
        # A node its NVIDIADriver still takes (routed by its GPU) that its driver no longer goes to (deploy label
        # false, removed or refused) is in no plan (managed_nodes): let go as with the ClusterPolicy's driver. It
        # keeps its owner label.
        astray = sorted(k for g in groups for k in kept[g.name].inputs.astray if k in by_name)
        if astray:
            left_behind(self.kube, self.namespace, [by_name[k] for k in astray], self.events,
                        "its NVIDIADriver's driver no longer goes to the node")  # fmt: skip
        # A node with an upgrade state that its own NVIDIADriver no longer drives (deleted or refused, a conflict,
        # its selector moved off it) is let go as with the ClusterPolicy's driver switched off: no pass would move it
        # on. Only one that carried an owner label (upstream skips the others): a node the default drove keeps its
        # state, and none is let go while no NVIDIADriver is listed (the switch seen before the chart's default
        # NVIDIADriver: the driver is handed over, not let go).
        seen = seen or snap
        # Only the nodes the assignment does not route are looked at (a set difference, not a walk of every node),
        # then taken in the nodes' order. A node its NVIDIADriver holds (an invalid spec) is not let go: nothing
        # changes there until the spec is fixed (upstream's upgrade goes on by its owner label).
        found = {
            k for k in by_name.keys() - assignment.owner.keys() - assignment.held.keys()
            if UPGRADE_STATE in (n := by_name[k]).labels
            and (OWNER_LABEL in n.labels or OWNER_LABEL in seen.nodes.get(k, n).labels)
        } if seen.nvidia_drivers else set()  # fmt: skip
        driverless = [n for n in by_name.values() if n.name in found] if found else []
        if driverless:
            unowned = {n.name for n in driverless if assignment.owner_label(n.name) is None}  # not a conflict
            left_behind(self.kube, self.namespace, driverless, self.events, "its NVIDIADriver let go of the node",
                        unowned)  # fmt: skip
        # A node mid-upgrade that an unrendered NVIDIADriver takes is in no part (it keeps its owner label): let go
        # (uncordoned, with an event) rather than left cordoned until that NVIDIADriver can render.
        stuck = [by_name[k] for g in groups if g.owner["uid"] in unrendered for k in assignment.nodes_of(g.name)
                 if k in by_name and not upgraded(g, k) and by_name[k].labels.get(UPGRADE_STATE, DONE) != DONE]
        if stuck:
            left_behind(self.kube, self.namespace, stuck, self.events, "its new NVIDIADriver cannot render")
        metrics.driver_auto_upgrade_enabled.set(int(any(g.spec.driver.upgrade_policy.auto_upgrade for g in groups)))
        return out

    def _driver_statuses(
        self,
        snap: Snapshot,
        drivers: list[nvidiadriver.NVIDIADriver],
        assignment: nvidiadriver.Assignment | None,
        plans: list[StatePlan],
        live: dict[Key, dict[str, Any]],
        pods_by_owner: Mapping[str, Sequence[dict[str, Any]]],
        refused: set[str],
        count: Callable[[dict[str, Any]], int],
        off: str,
        applied: Applied | None,
        ctx: RenderContext,
        idle: Mapping[str, list[UpgradeNode]] | None = None,
    ) -> float | None:
        """Each NVIDIADriver's status (written when it changed; a change of progress alone at most every few
        seconds, see StatusWriter) and a Warning event when it newly conflicts or is refused. Seconds until a status
        held back may be written, or None. `count`: the pass's NodeCounter, as the driver state's readiness had it;
        `off`: why no NVIDIADriver drives anything, when none does; `applied`: what applying the driver state did;
        `ctx`: what it was rendered for (its nodes and NVIDIADrivers); `idle`: Orchestrated.idle, by NVIDIADriver."""
        driver_plan = next((p for p in plans if p.state.name == "state-driver"), None)
        held: float | None = None
        groups = {g.name: g for g in ctx.nvidia_drivers}
        unpooled_by: dict[bool, list[str]] = {}  # GPU nodes that fit no pool, by precompiled (worked out once each)
        # The driver state's objects the API server refused, by the uid of the NVIDIADriver they belong to (None:
        # shared ones, the service account, roles and the like, which every NVIDIADriver's pods need).
        failed: dict[str | None, list[str]] = {}
        if applied is not None and applied.refused and driver_plan is not None:
            uids = {d.uid for d in drivers}
            for o in driver_plan.objects:
                message = applied.refused.get(key_of(o))
                if message is not None:
                    owners: set[str | None] = {r.get("uid") for r in o["metadata"].get("ownerReferences") or []}
                    for uid in owners & uids or {None}:
                        failed.setdefault(uid, []).append(message)
        for driver in drivers:
            obj = snap.nvidia_drivers[driver.name]
            if driver.deleting:
                continue
            ready = None
            not_rendered = None  # why its objects (or the driver state's) could not be rendered: ReconcileFailed
            if assignment is not None and driver_plan is not None:
                keys = {
                    key_of(o) for o in driver_plan.objects
                    if o["kind"] == "DaemonSet"
                    and any(r.get("uid") == driver.uid for r in o["metadata"].get("ownerReferences") or [])
                }  # fmt: skip
                result = self._daemonsets_ready("state-driver", keys, live, snap, pods_by_owner, refused, count)
                ready = (result.state == "ready", result.message)
                if not ready[0] and (note := unreplaced_note((idle or {}).get(driver.name, ()), "autoUpgrade is off")):
                    ready = (False, f"{result.message}; {note}")
                group = groups.get(driver.name)
                if group is not None and group.nodes:  # its nodes that no DaemonSet runs a driver on, named
                    precompiled = group.spec.driver.use_precompiled
                    if precompiled not in unpooled_by:
                        unpooled_by[precompiled] = unpooled(list(ctx.nodes), precompiled)
                    note = unpooled_note([n for n in unpooled_by[precompiled] if n in group.nodes], precompiled)
                    if note:
                        ready = (False, "; ".join(m for m in (result.message, note) if m))
                not_rendered = driver_plan.problem or driver_plan.held.get(driver.uid)
            previous = obj.get("status") or {}
            refusals = failed.get(driver.uid, []) + failed.get(None, [])
            why = "; ".join(m for m in (not_rendered, "apply failed: " + "; ".join(refusals) if refusals else None)
                            if m)  # fmt: skip
            status = nvidiadriver.driver_status(driver, assignment, ready, self.namespace, previous, now(), off,
                                                why or None)
            error = next(c for c in status["conditions"] if c["type"] == "Error")
            before: dict[str, Any] = next(
                (c for c in previous.get("conditions") or [] if c.get("type") == "Error"), {}
            )
            if before.get("message") != error["message"]:
                if error["reason"] == nvidiadriver.CONFLICT_REASON:
                    self.events(obj, "Warning", nvidiadriver.EVENT_REASON, error["message"])
                elif assignment is not None and driver.name in assignment.problems:  # refused: it takes no node
                    self.events(obj, "Warning", error["reason"], error["message"])
            if not self._write_driver(obj, status):
                retry = self.status.retry_in(driver.name, "NVIDIADriver")
                held = retry if held is None else min(held, retry)
            self._drivers_done.add(driver.name)
        return held

    def _drivers_failed(self, policy: dict[str, Any], snap: Snapshot, why: str) -> None:
        """After a pass an ApiError cut short: each NVIDIADriver whose status it did not get to is notReady,
        ReconcileFailed, `why` (written when that changed), while the ClusterPolicy hands the driver to them. One
        whose status already says an Error (a conflict, a refusal, a spec not rendered) keeps it: the next pass,
        finding it the same, posts no Warning again. A status write that fails is logged: the next pass tries again."""
        try:
            spec = parse_spec(policy.get("spec"), allow_unknown=allows_unknown(policy["metadata"]))
        except PolicyError:
            return
        if not (spec.driver.enabled and spec.driver.use_nvidia_driver_crd):
            return
        for name, obj in sorted(snap.nvidia_drivers.items()):
            driver = nvidiadriver.NVIDIADriver.from_object(obj)
            if name in self._drivers_done or driver.deleting:
                continue
            if any(c.get("type") == "Error" and c.get("status") == "True"
                   for c in (obj.get("status") or {}).get("conditions") or []):  # fmt: skip
                continue
            status = nvidiadriver.failed_pass_status(driver, self.namespace, obj.get("status"), now(), why)
            try:
                self._write_driver(obj, status)
            except ApiError as exc:
                log.warning("NVIDIADriver %s: status not written: %s", name, exc)

    def _drivers_unmanaged(self, snap: Snapshot, why: str, as_left: bool = False) -> float | None:
        """Each NVIDIADriver's status while there is no valid ClusterPolicy to go by: notReady, ReconcileFailed,
        `why` (written once; upstream's when it cannot resolve the ClusterPolicy). `as_left`: nothing is acted on (an
        invalid spec), so its DaemonSets keep running on its nodes: its nodes and conflicts stay as they were. Seconds
        until a status held back may be written, or None."""
        held: float | None = None
        for obj in snap.nvidia_drivers.values():
            driver = nvidiadriver.NVIDIADriver.from_object(obj)
            if driver.deleting:
                continue
            if as_left:
                status = nvidiadriver.failed_pass_status(driver, self.namespace, obj.get("status"), now(), why)
            else:
                status = nvidiadriver.driver_status(driver, None, None, self.namespace, obj.get("status"), now(),
                                                    failed=why)  # fmt: skip
            if not self._write_driver(obj, status):
                retry = self.status.retry_in(driver.name, "NVIDIADriver")
                held = retry if held is None else min(held, retry)
        return held

    def _write_driver(self, obj: dict[str, Any], status: dict[str, Any]) -> bool:
        """StatusWriter.write for an NVIDIADriver. One deleted since the snapshot (404: no finalizer holds it) is
        passed over, as written: the watch brings its deletion and with it the next pass."""
        try:
            return self.status.write(obj, status, quiet=True, kind="NVIDIADriver")
        except ApiError as exc:
            if exc.status != 404:
                raise
            log.info("NVIDIADriver %s: gone since it was read, its status is not written", obj["metadata"]["name"])
            return True

    def _check_sharing(self, policy: dict[str, Any], ctx: RenderContext) -> list[sharing.Problem] | None:
        """The sharing config's problems (None: no config); a Warning event on the policy once per change (reason
        InvalidSharingConfig when something is refused, SharingConfigWarnings for warnings only)."""
        if not ctx.spec.device_plugin.config.name:
            return None
        found = sharing.context_problems(ctx.spec, ctx.config_data, ctx.nodes, ctx.config_maps)
        message = sharing.summary(found, sharing.MESSAGE_LIMIT) if found else None
        # Read from the status (the condition carries the same message), so a restarted operator or a new leader
        # posts nothing new at steady state.
        previous = (policy.get("status") or {}).get("conditions") or []
        before: dict[str, Any] = next((c for c in previous if c.get("type") == sharing.CONDITION), {})
        if message and message != before.get("message"):
            self.events(policy, "Warning", sharing.reason(found), message)
        return found

    def _daemonsets_ready(
        self,
        state: str,
        desired: set[Key],
        live: dict[Key, dict[str, Any]],
        snap: Snapshot,
        pods_by_owner: Mapping[str, Sequence[dict[str, Any]]],
        refused: set[str],
        count: Callable[[dict[str, Any]], int],
    ) -> StateResult:
        """The state's DaemonSets, each by upstream's readiness rule (RollingUpdate or OnDelete).

        `desired`: the state's objects; one of its DaemonSets that does not exist (yet) is not ready, and each is
        judged whatever labels another writer left on it. A driver pod on a refused node is kept at its old revision
        on purpose and does not count. `count`: on how many nodes a pod template should run, to hold against the
        controller's counts (NodeCounter.over)."""
        messages = []
        for key in sorted(k for k in desired if k[0] == "DaemonSet"):
            name = key[2]
            ds = live.get(key)
            if ds is None:  # upstream's getSyncState: an object not found is not ready
                messages.append(f"{name}: not created yet")
                continue
            # Its pods and revisions by its uid: those of a deleted DaemonSet of the same name are not its own.
            owner = daemonset_key(ds)
            pods = pods_by_owner.get(owner, ())
            unready = snap.pod_index.unready_by_owner.get(owner, ())
            counting: Callable[[dict[str, Any]], int] = count
            if state == "state-driver" and refused:
                kept = [p for p in pods if p["node"] not in refused]
                left_out = len(pods) - len(kept)
                if left_out:  # the controller and the node count take them in: so many fewer of the rest
                    ds = _fewer_desired(ds, left_out)
                    counting = functools.partial(_less, count, left_out)
                pods = kept
                unready = [p for p in unready if p["node"] not in refused]
            revisions = [r for r in snap.revisions.values() if owner_key(r) == owner]
            ok, why = self._readiness.daemonset_ready(ds, pods, revisions, unready, counting)
            if not ok:
                messages.append(why)
        if messages:
            return StateResult(state, "notReady", "; ".join(messages))
        return StateResult(state, "ready")


def _as_left(previous: dict[str, Any]) -> dict[str, Any]:
    """policy_status's `extra` and `more_conditions` for a pass that works out nothing but Ready, Error and
    UnsupportedFields (cut by an ApiError, or an invalid spec): the upgrade's progress and our other conditions as the
    last pass left them (one dropped would come back with a new lastTransitionTime, and its node Events again)."""
    return {
        "extra": {"upgrade": previous["upgrade"]} if previous.get("upgrade") else None,
        "more_conditions": [c for c in previous.get("conditions") or []
                            if c.get("type") not in ("Ready", "Error", UNSUPPORTED_FIELDS)],
    }  # fmt: skip


def nvidia_driver_upgrades(
    nodes: Iterable[NodeFacts], assignment: nvidiadriver.Assignment | None, refused: Collection[str]
) -> list[str]:
    """The nodes, sorted, whose NVIDIADriver upgrade is unfinished, as upstream's nvidiaDriverUpgradeIncomplete: an
    upgrade state other than upgrade-done or none on a node an NVIDIADriver owns (its owner label; the default's nodes
    carry none here), not labelled to skip upgrades. Nor (beyond upstream) one the driver is refused on: the upgrade
    skips it too. Read as this pass found the nodes: a state the pass moves on is seen by the next one."""
    owned = assignment.owner if assignment is not None else {}
    return sorted(
        n.name for n in nodes
        if n.labels.get(UPGRADE_STATE, UNKNOWN) not in (UNKNOWN, DONE) and (n.name in owned or OWNER_LABEL in n.labels)
        and n.labels.get(SKIP_LABEL) != "true" and n.name not in refused
    )  # fmt: skip


def _wanted(state_plan: StatePlan, live: Mapping[Key, dict[str, Any]], states: frozenset[str]) -> set[Key]:
    """The keys of a state's objects that stay: those it rendered and those of an owner whose objects could not be
    rendered; all it has when nothing could be."""
    name = state_plan.state.name
    if state_plan.problem:  # nothing rendered: keep what the state has
        return {k for k, o in live.items() if owning_state(labels_of(o), states) == name}
    mine = {key_of(obj) for obj in state_plan.objects}
    if state_plan.held:  # an owner whose objects could not be rendered keeps the ones it has
        mine |= {k for k, o in live.items() if owning_state(labels_of(o), states) == name
                 and any(r.get("uid") in state_plan.held for r in o["metadata"].get("ownerReferences") or [])}
    return mine


def _invalid_drivers_objects(
    owned: Mapping[Key, dict[str, Any]], drivers: Sequence[nvidiadriver.NVIDIADriver]
) -> set[Key]:
    """The objects of the NVIDIADrivers whose spec the operator refuses: kept as they are, neither applied nor
    pruned (their nodes keep their owner label: nvidiadriver.assign)."""
    uids = {d.uid for d in drivers if d.spec is None and not d.deleting}
    if not uids:
        return set()
    return {k for k, o in owned.items()
            if any(r.get("uid") in uids for r in o["metadata"].get("ownerReferences") or [])}  # fmt: skip


def _held_daemonsets(
    nodes: Sequence[NodeFacts], assignment: nvidiadriver.Assignment, snap: Snapshot, namespace: str,
    kept: ByNode[str] | None = None,
) -> set[Key]:
    """Our driver DaemonSets that run the driver pod of a node whose owner label is held for a move (render holds
    it until the upgrade moves the node at pod restart, cordoned and drained): kept as they are, neither applied nor
    pruned, even once their NVIDIADriver renders none for that pool, so that the pod stays until then. `kept`: a
    ByNode of nvidiadriver.owner_label_move, which works out again only the nodes that changed (or all, under
    another Assignment object)."""
    pods = snap.pod_index.by_state.get("state-driver") or {}
    if not pods:
        return set()
    if kept is not None:
        moves = kept.over(nodes, assignment)
    else:
        moves = {n.name: m for n in nodes if (m := nvidiadriver.owner_label_move(n, assignment)) is not None}
    keep: set[Key] = set()
    for name in moves.keys() & pods.keys():  # a node that moves and runs a driver pod
        keep.update(key for p in pods[name] if p["owner"] and (key := ("DaemonSet", namespace, p["owner"]))
                    in snap.owned)  # fmt: skip
    return keep


def handed_over(owned: Mapping[Key, dict[str, Any]], spec: ClusterPolicySpec) -> frozenset[Key]:
    """The driver DaemonSets of the mode the driver was handed over from: the ClusterPolicy's under
    useNvidiaDriverCRD, the NVIDIADrivers' without. Pruned with propagationPolicy Orphan (upstream's
    cleanupAllDriverDaemonSets on the switch), so every node keeps its running driver pod: a DaemonSet of the same
    pool adopts it (the default NVIDIADriver's, the ClusterPolicy's), and the upgrade replaces any other in order,
    as out of date (upgrade.adapter, orphans). The ClusterPolicy's driver switched off deletes them with their pods."""
    if not spec.driver.enabled:
        return frozenset()
    left = "ClusterPolicy" if spec.driver.use_nvidia_driver_crd else NVIDIADRIVER
    return frozenset(
        key
        for key, obj in owned.items()
        if key[0] == "DaemonSet"
        and owning_state(labels_of(obj), _DRIVER_STATE) is not None
        and any(r.get("kind") == left for r in obj["metadata"].get("ownerReferences") or [])
    )


_DRIVER_STATE = frozenset({"state-driver"})


def _operand_node(node: NodeFacts) -> bool:
    """A GPU node not opted out of every operand (nvidia.com/gpu.deploy.operands=false): the ready message counts
    those an enabled operand DaemonSet should run on (not one whose taints keep every operand off)."""
    return node.has_gpu and node.labels.get(DEPLOY_OPERANDS) != "false"


def _less(count: Callable[[dict[str, Any]], int], n: int, spec: dict[str, Any]) -> int:
    return count(spec) - n


def _fewer_desired(ds: dict[str, Any], n: int) -> dict[str, Any]:
    """The DaemonSet with `n` pods left out of the controller's counts of desired and scheduled pods (pods on nodes
    whose old driver is kept on purpose: the version matrix refuses the new one there)."""
    status = dict(ds.get("status") or {})
    for key in ("desiredNumberScheduled", "currentNumberScheduled"):
        if isinstance(status.get(key), int):
            status[key] = max(0, status[key] - n)
    return {**ds, "status": status}


def _with_newer(
    snap: Snapshot, live: dict[Key, dict[str, Any]], later: Newer
) -> tuple[Snapshot, dict[Key, dict[str, Any]]]:
    """The snapshot and the live objects with what the watches brought since (an object this pass applied is kept
    until the watch brings it or a newer one)."""
    live = dict(live)
    for key, obj in later.owned.items():
        if newer(live.get(key), obj):
            live[key] = obj
    out = replace(snap, revisions=dict(later.revisions))
    out.__dict__["pod_index"] = later.pod_index
    return out, live


def _sum_upgrades(a: dict[str, Any] | None, b: dict[str, Any] | None) -> dict[str, Any] | None:
    """Two upgrade statuses as one: counts added, waiting nodes joined (the first 50 by name, as one's)."""
    if a is None or b is None:
        return a or b
    out = {k: a.get(k, 0) + b.get(k, 0) for k in ("total", "inProgress", "done", "failed", "pending", "available")}
    out["waiting"] = sorted((a.get("waiting") or []) + (b.get("waiting") or []), key=lambda w: w.get("node", ""))[:50]
    return out


def hold_driver_restores(patches: dict[str, NodePatch], nodes: list[NodeFacts]) -> dict[str, NodePatch]:
    """Take the refused -> true driver-label changes out of `patches` and return them (the patch objects
    themselves are not changed: they are shared with the reconciler's memo)."""
    held: dict[str, NodePatch] = {}
    key = deploy_label("driver")
    if not any((patch.get("labels") or {}).get(key) == "true" for patch in patches.values()):
        return held  # no driver label restored: no walk of the nodes for refused ones
    refused_now = {n.name for n in nodes if n.labels.get(key) == DRIVER_REFUSED}
    for name, patch in list(patches.items()):
        labels = patch.get("labels") or {}
        if labels.get(key) == "true" and name in refused_now:
            held[name] = {"labels": {key: "true"}}
            rest = {k: v for k, v in patch.items() if k != "labels"}
            if len(labels) > 1:
                rest["labels"] = {k: v for k, v in labels.items() if k != key}
            if rest:
                patches[name] = rest
            else:
                del patches[name]
    return held
