"""The level-based reconcile pass: cluster snapshot in, writes out, nothing written when nothing changed.

It runs in a worker thread on a snapshot of the watch cache; every decision comes from the pure core. The writing
is done by small parts, one job each: `apply.Applier` (objects and node patches), `lifecycle.Lifecycle`
(finalizer, namespace, clean-up), `status_writer.StatusWriter`, `events.EventRecorder`, and
`upgrade.orchestrate` (driver upgrades).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from typing import Any

from . import compat, coverage, metrics, mig, mig_pass, sharing
from .api import PolicyError, allows_unknown, parse_spec
from .apply import Applier, labels_of
from .events import EventRecorder, now
from .kube import ApiError, Kube
from .lifecycle import CLEANUP_FINALIZER, Lifecycle
from .nodes import DRIVER_REFUSED, NodeFacts, deploy_label
from .observe import Key, Snapshot, key_of
from .readiness import daemonset_ready
from .render import NodePatch, StatePlan, node_patches, plan, relabelled, render_key
from .states import RenderContext, all_states
from .states.base import STATE_LABEL, owning_state
from .status import StateResult, active_policy, ignored_status, policy_status
from .status_writer import StatusWriter
from .upgrade.orchestrate import orchestrate

log = logging.getLogger("gpu_operator")

__all__ = ["CLEANUP_FINALIZER", "Outcome", "Reconciler"]


@dataclass
class Outcome:
    ready: bool | None  # None: no active policy
    applied: list[dict[str, Any]] = field(default_factory=list)
    deleted: list[Key] = field(default_factory=list)
    writes: int = 0  # requests of the pass that changed something, events included (counted by the client)
    busy: bool = False  # work in progress that needs rechecking soon (a driver upgrade)


class Reconciler:
    def __init__(self, kube: Kube, namespace: str):
        self.kube = kube
        self.namespace = namespace
        self.events = EventRecorder(kube)
        self.applier = Applier(kube)
        self.lifecycle = Lifecycle(kube, namespace, self.applier)
        self.status = StatusWriter(kube, self.events)
        self._plan: tuple[str, list[StatePlan]] | None = None  # the last plan and its render key
        self._sharing_warned: str | None = None  # the refusal last posted as an event

    def _render(self, ctx: RenderContext) -> list[StatePlan]:
        """The plan for ctx, rendered again only when something it depends on changed."""
        key = render_key(ctx)
        if self._plan is None or self._plan[0] != key:
            self._plan = (key, plan(ctx))
        return self._plan[1]

    def reconcile(self, snap: Snapshot) -> Outcome:
        writes_before = self.kube.writes()
        out = Outcome(ready=None)
        try:
            self._reconcile(snap, out)
        finally:
            out.writes = self.kube.writes() - writes_before
        return out

    def _reconcile(self, snap: Snapshot, out: Outcome) -> None:
        metrics.reconciliation_total.inc()
        active = active_policy(list(snap.policies.values()))
        for name, policy in sorted(snap.policies.items()):
            if name != active and not policy["metadata"].get("deletionTimestamp"):
                generation = policy["metadata"].get("generation")
                previous = policy.get("status")
                status = ignored_status(
                    generation=generation, namespace=self.namespace, active=active or "?", previous=previous, now=now()
                )
                self.status.write(policy, status)
        gpu_nodes = [n for n in snap.nodes.values() if n.has_gpu]
        metrics.gpu_nodes_total.set(len(gpu_nodes))
        metrics.reconciliation_has_nfd_labels.set(int(any(n.has_nfd for n in snap.nodes.values())))
        self.lifecycle.cleanup_deleted(snap)
        if active is None:
            metrics.reconciliation_status.set(-1)
            return
        policy = snap.policies[active]
        try:
            self._reconcile_active(policy, snap, out)
            metrics.reconciliation_last_success_ts_seconds.set(time.time())
            metrics.reconciliation_status.set(1 if out.ready else 0)
        except ApiError as exc:
            log.warning("reconcile failed: %s", exc)
            metrics.reconciliation_failed_total.inc()
            metrics.reconciliation_status.set(-2)
            out.ready = False
            status = policy_status(
                generation=policy["metadata"].get("generation"),
                namespace=self.namespace,
                results=[StateResult(**s) for s in (policy.get("status") or {}).get("states") or []],
                gpu_nodes=len(gpu_nodes),
                has_nfd=True,
                previous=policy.get("status"),
                now=now(),
                error=str(exc),
            )
            self.status.write(policy, status, quiet=True)

    def _reconcile_active(self, policy: dict[str, Any], snap: Snapshot, out: Outcome) -> None:
        meta = policy["metadata"]
        self.lifecycle.ensure_finalizer(policy)
        generation = meta.get("generation")
        try:
            spec = parse_spec(policy.get("spec"), allow_unknown=allows_unknown(meta))
        except PolicyError as exc:
            out.ready = False
            status = policy_status(
                generation=generation,
                namespace=self.namespace,
                results=[],
                gpu_nodes=0,
                has_nfd=True,
                previous=policy.get("status"),
                now=now(),
                error="invalid spec: " + "; ".join(exc.problems),
                error_reason="InvalidSpec",
            )
            self.status.write(policy, status)
            return
        self.lifecycle.ensure_namespace(spec.psa.enabled)

        nodes = list(snap.nodes.values())
        verdicts = compat.verdicts(nodes, spec)
        refused = compat.refused(verdicts)
        # A refused node keeps a driver pod of ours it already runs; only one without gets the refused label.
        with_driver = {
            p["node"] for p in snap.pods.values() if p["metadata"]["labels"].get(STATE_LABEL) == "state-driver"
        }
        patches = node_patches(nodes, spec, {n for n in refused if n not in with_driver})
        # A node the driver may run on again gets gpu.deploy.driver=true back only once the driver DaemonSets
        # carry this version: before, the DaemonSet controller could start the refused version there.
        held = _hold_driver_restores(patches, nodes)
        self.applier.patch_nodes(patches)
        nodes = relabelled(nodes, patches)
        migs, nodes = mig_pass.run(self.kube, self.namespace, spec, snap, nodes, self.events)

        owner = {"apiVersion": policy["apiVersion"], "kind": policy["kind"], "name": meta["name"], "uid": meta["uid"]}
        ctx = RenderContext(
            spec=spec,
            namespace=self.namespace,
            nodes=tuple(nodes),
            owner=owner,
            api_groups=snap.api_groups,
            config_maps=snap.config_maps,
            config_data=snap.config_data,
        )
        sharing_problems = self._check_sharing(policy, ctx)
        results = []
        errors = []
        desired: set[Key] = set()
        live = dict(snap.owned)
        states = frozenset(s.name for s in all_states())
        for state_plan in self._render(ctx):
            state = state_plan.state
            if state_plan.problem:  # nothing rendered: keep what the state has, say why
                desired |= {k for k, o in live.items() if owning_state(labels_of(o), states) == state.name}
                results.append(StateResult(state.name, "notReady", state_plan.problem))
                continue
            desired |= {key_of(obj) for obj in state_plan.objects}
            applied = self.applier.apply_state(state_plan, live)
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
                result = self._daemonsets_ready(state.name, desired, live, snap, set(refused))
                note = state.readiness_notes(ctx) if state.readiness_notes else None
                if note:
                    message = f"{result.message}; {note}" if result.message else note
                    result = StateResult(state.name, "notReady", message)
                results.append(result)

        out.deleted = self.applier.prune(snap.owned, desired, states)
        if held:
            self.applier.patch_nodes(held)
            out.busy = True

        upgrade = orchestrate(
            self.kube, self.namespace, spec, replace(snap, nodes={n.name: n for n in nodes}), self.events
        )
        out.busy = out.busy or upgrade.busy or bool(migs.waiting)
        previous_conditions = (policy.get("status") or {}).get("conditions") or []
        # A Warning on each node the status does not name with this rule yet (once per change).
        for name, message in compat.newly_refused(verdicts, previous_conditions).items():
            ref = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}}
            self.events(ref, "Warning", compat.EVENT_REASON, f"driver not rolled out to this node: {message}")
        status = policy_status(
            generation=generation,
            namespace=self.namespace,
            results=results,
            gpu_nodes=sum(1 for n in nodes if n.has_gpu),
            has_nfd=any(n.has_nfd for n in nodes),
            previous=policy.get("status"),
            now=now(),
            error="; ".join(errors) or None,
            settling=bool(patches or held or out.applied or out.deleted),
            extra={"upgrade": upgrade.status} if upgrade.status else None,
            unsupported=coverage.report(spec),
            more_conditions=[
                c
                for c in [
                    compat.condition(verdicts, generation, previous_conditions, now()) if verdicts else None,
                    sharing.condition(spec.device_plugin.config.name, sharing_problems, generation,
                                      previous_conditions, now()),
                ]
                if c
            ],
        )
        mig_condition = mig.condition(migs, generation, previous_conditions, now())
        if mig_condition:
            status["conditions"].append(mig_condition)
        out.ready = status["state"] == "ready"
        self.status.write(policy, status)

    def _check_sharing(self, policy: dict[str, Any], ctx: RenderContext) -> list[sharing.Problem] | None:
        """The sharing config's problems (None: no config); a Warning event on the policy once per change."""
        name = ctx.spec.device_plugin.config.name
        if not name or name not in ctx.config_data:
            return None
        found = sharing.context_problems(ctx.spec, ctx.config_data, ctx.nodes)
        message = sharing.summary(found) if found else None
        if message and message != self._sharing_warned:
            self.events(policy, "Warning", sharing.REASON, message)
        self._sharing_warned = message
        return found

    def _daemonsets_ready(
        self, state: str, desired: set[Key], live: dict[Key, dict[str, Any]], snap: Snapshot, refused: set[str]
    ) -> StateResult:
        """The state's DaemonSets, each by upstream's readiness rule (RollingUpdate or OnDelete).

        A driver pod on a refused node is kept at its old revision on purpose and does not count."""
        messages = []
        for key in sorted(k for k in desired if k[0] == "DaemonSet"):
            ds = live.get(key)
            if ds is None or labels_of(ds).get(STATE_LABEL) != state:
                continue
            name = key[2]
            pods = [
                p for p in snap.pods.values()
                if p["owner"] == name and not (state == "state-driver" and p["node"] in refused)
            ]
            revisions = [r for r in snap.revisions.values() if r["owner"] == name]
            ok, why = daemonset_ready(ds, pods, revisions)
            if not ok:
                messages.append(why)
        if messages:
            return StateResult(state, "notReady", "; ".join(messages))
        return StateResult(state, "ready")


def _hold_driver_restores(patches: dict[str, NodePatch], nodes: list[NodeFacts]) -> dict[str, NodePatch]:
    """Take the refused -> true driver-label changes out of `patches` (in place) and return them."""
    held: dict[str, NodePatch] = {}
    key = deploy_label("driver")
    refused_now = {n.name for n in nodes if n.labels.get(key) == DRIVER_REFUSED}
    for name, patch in list(patches.items()):
        labels = patch.get("labels") or {}
        if labels.get(key) == "true" and name in refused_now:
            held[name] = {"labels": {key: "true"}}
            del labels[key]
            if not labels:
                patch.pop("labels")
            if not patch:
                del patches[name]
    return held
