"""The level-based reconcile pass: cluster snapshot in, writes out, nothing written when nothing changed.

It runs in a worker thread on a snapshot of the watch cache; every decision comes from the pure core.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from . import coverage, metrics, upgrade
from .api import ClusterPolicySpec, PolicyError, parse_spec
from .kube import ApiError, Kube
from .nodes import DEPLOY_PREFIX, GPU_PRESENT, RUNTIME_LABEL, NodeFacts, unknown_runtime, unpooled, written_by_us
from .observe import Key, Snapshot, key_of
from .readiness import daemonset_ready
from .render import NodePatch, node_patches, plan, relabelled
from .states import RenderContext, all_states
from .states.base import HASH_ANNOTATION, MANAGED_BY, OPERATOR_NAME, STATE_LABEL, owning_state
from .status import StateResult, active_policy, ignored_status, policy_status, status_changed
from .upgrade.adapter import Executor, managed_nodes, steady, workload_pods

log = logging.getLogger("gpu_operator")

CLEANUP_FINALIZER = "nvidia.com/gpu-operator-cleanup"
EVENT_SOURCE = "gpu-operator"

@dataclass
class Outcome:
    ready: bool | None  # None: no active policy
    applied: list[dict[str, Any]] = field(default_factory=list)
    deleted: list[Key] = field(default_factory=list)
    writes: int = 0
    busy: bool = False  # work in progress that needs rechecking soon (a driver upgrade)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Reconciler:
    def __init__(self, kube: Kube, namespace: str):
        self.kube = kube
        self.namespace = namespace
        self._last_events: dict[tuple[str, str], str] = {}
        self._namespace_psa: bool | None = None  # the namespace was checked for this psa setting

    # Events (only on transitions, so a steady state writes nothing)

    def event(self, obj: dict[str, Any], etype: str, reason: str, message: str) -> None:
        meta = obj["metadata"]
        ref = (obj["kind"], meta["name"])
        if self._last_events.get(ref) == reason + message:
            return
        self._last_events[ref] = reason + message
        ns = meta.get("namespace") or "default"
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": ns},
            "involvedObject": {
                "apiVersion": obj.get("apiVersion", "v1"),
                "kind": obj["kind"],
                "name": meta["name"],
                "uid": meta.get("uid"),
                **({"namespace": meta["namespace"]} if meta.get("namespace") else {}),
            },
            "type": etype,
            "reason": reason,
            "message": message[:1000],
            "source": {"component": EVENT_SOURCE},
            "reportingComponent": EVENT_SOURCE,
            "firstTimestamp": _now(),
            "lastTimestamp": _now(),
            "count": 1,
        }
        try:
            self.kube.create(body)
        except ApiError as exc:
            log.warning("could not record event %s on %s: %s", reason, meta["name"], exc)

    # The pass

    def reconcile(self, snap: Snapshot) -> Outcome:
        metrics.reconciliation_total.inc()
        active = active_policy(list(snap.policies.values()))
        out = Outcome(ready=None)
        for name, policy in sorted(snap.policies.items()):
            if name != active and not policy["metadata"].get("deletionTimestamp"):
                self._write_status(
                    policy,
                    ignored_status(
                        generation=policy["metadata"].get("generation"),
                        namespace=self.namespace,
                        active=active or "?",
                        previous=policy.get("status"),
                        now=_now(),
                    ),
                    out,
                )
        gpu_nodes = [n for n in snap.nodes.values() if n.has_gpu]
        metrics.gpu_nodes_total.set(len(gpu_nodes))
        metrics.reconciliation_has_nfd_labels.set(int(any(n.has_nfd for n in snap.nodes.values())))
        self._cleanup_deleted_policies(snap, out)
        if active is None:
            metrics.reconciliation_status.set(-1)
            return out
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
            self._write_status(
                policy,
                policy_status(
                    generation=policy["metadata"].get("generation"),
                    namespace=self.namespace,
                    results=[StateResult(**s) for s in (policy.get("status") or {}).get("states") or []],
                    gpu_nodes=len(gpu_nodes),
                    has_nfd=True,
                    previous=policy.get("status"),
                    now=_now(),
                    error=str(exc),
                ),
                out,
                quiet=True,
            )
        return out

    def _reconcile_active(self, policy: dict[str, Any], snap: Snapshot, out: Outcome) -> None:
        meta = policy["metadata"]
        if CLEANUP_FINALIZER not in (meta.get("finalizers") or []):
            self.kube.merge_patch(
                "ClusterPolicy",
                meta["name"],
                {"metadata": {"finalizers": [*(meta.get("finalizers") or []), CLEANUP_FINALIZER]}},
            )
            out.writes += 1
        generation = meta.get("generation")
        try:
            spec = parse_spec(policy.get("spec"))
        except PolicyError as exc:
            out.ready = False
            status = policy_status(
                generation=generation,
                namespace=self.namespace,
                results=[],
                gpu_nodes=0,
                has_nfd=True,
                previous=policy.get("status"),
                now=_now(),
                error="invalid spec: " + "; ".join(exc.problems),
                error_reason="InvalidSpec",
            )
            self._write_status(policy, status, out)
            return
        self._ensure_namespace(spec.psa.enabled, out)

        nodes = list(snap.nodes.values())
        patches = node_patches(nodes, spec)
        self._patch_nodes(patches, out)
        nodes = relabelled(nodes, patches)

        owner = {"apiVersion": policy["apiVersion"], "kind": policy["kind"], "name": meta["name"], "uid": meta["uid"]}
        ctx = RenderContext(
            spec=spec,
            namespace=self.namespace,
            nodes=tuple(nodes),
            owner=owner,
            api_groups=snap.api_groups,
            config_maps=snap.config_maps,
        )
        results = []
        errors = []
        desired_keys: set[Key] = set()
        live = dict(snap.owned)
        states = frozenset(s.name for s in all_states())
        for state_plan in plan(ctx):
            name = state_plan.state.name
            if state_plan.problem:  # nothing rendered: keep what the state has, say why
                desired_keys |= {k for k, o in live.items() if owning_state(_labels(o), states) == name}
                results.append(StateResult(name, "notReady", state_plan.problem))
                continue
            failed = None
            for obj in state_plan.objects:
                key = key_of(obj)
                desired_keys.add(key)
                current = live.get(key)
                want = obj["metadata"]["annotations"][HASH_ANNOTATION]
                have = ((current or {}).get("metadata", {}).get("annotations") or {}).get(HASH_ANNOTATION)
                if have == want:
                    continue
                log.info("applying %s %s (%s)", obj["kind"], obj["metadata"]["name"], "update" if current else "create")
                try:
                    applied = self.kube.apply(obj)
                except ApiError as exc:  # one broken object must not hold back the other states
                    failed = f"{obj['kind']} {obj['metadata']['name']}: {exc.message}"
                    errors.append(f"{name}: {failed}")
                    continue
                out.applied.append(applied)
                out.writes += 1
                live[key] = applied
            if not state_plan.enabled:
                results.append(StateResult(name, "disabled"))
            elif failed:
                results.append(StateResult(name, "notReady", "apply failed: " + failed))
            else:
                result = self._state_readiness(name, desired_keys, live, snap)
                if name == "state-driver":
                    result = _with_unpooled(result, nodes, spec.driver.use_precompiled)
                elif name == "state-container-toolkit":
                    result = _with_unknown_runtime(result, nodes)
                results.append(result)

        for key, obj in sorted(snap.owned.items()):
            if key in desired_keys or key[0] == "ClusterPolicy":
                continue
            labels = _labels(obj)
            owner_state = owning_state(labels, states)
            if labels.get(MANAGED_BY) != OPERATOR_NAME or not owner_state:
                continue
            log.info("deleting %s %s (%s no longer wants it)", key[0], key[2], owner_state)
            self.kube.delete(key[0], key[2], key[1] or None)
            out.deleted.append(key)
            out.writes += 1

        upgrade = self._upgrade(spec, nodes, snap, out)
        gpu_nodes = sum(1 for n in nodes if n.has_gpu)
        status = policy_status(
            generation=generation,
            namespace=self.namespace,
            results=results,
            gpu_nodes=gpu_nodes,
            has_nfd=any(n.has_nfd for n in nodes),
            previous=policy.get("status"),
            now=_now(),
            error="; ".join(errors) or None,
            settling=bool(patches or out.applied or out.deleted),
            extra={"upgrade": upgrade} if upgrade else None,
            unsupported=coverage.report(spec),
        )
        out.ready = status["state"] == "ready"
        self._write_status(policy, status, out)

    def _upgrade(
        self, spec: ClusterPolicySpec, nodes: list[NodeFacts], snap: Snapshot, out: Outcome
    ) -> dict[str, Any] | None:
        """One pass of driver upgrade orchestration; the status block it reports (None when there is none)."""
        managed = managed_nodes(spec, replace(snap, nodes={n.name: n for n in nodes}))
        policy = spec.driver.upgrade_policy
        metrics.driver_auto_upgrade_enabled.set(int(policy.auto_upgrade))
        if not managed:  # nothing to upgrade (driver off, no GPU node): the gauges say so too
            for gauge in (
                metrics.nodes_upgrades_in_progress,
                metrics.nodes_upgrades_done,
                metrics.nodes_upgrades_failed,
                metrics.nodes_upgrades_available,
                metrics.nodes_upgrades_pending,
            ):
                gauge.set(0)
            return None
        result = upgrade.plan(
            managed, workload_pods(self.kube, managed), policy, time.time(), validation_enabled=spec.validator.enabled
        )
        executor = Executor(self.kube, self.namespace, self.event)
        # The annotation k8s-driver-manager reads went out with the node's labels (render.node_patches).
        executor.run(result)
        out.writes += executor.writes
        c = result.counters
        for gauge, value in (
            (metrics.nodes_upgrades_in_progress, c.in_progress),
            (metrics.nodes_upgrades_done, c.done),
            (metrics.nodes_upgrades_failed, c.failed),
            (metrics.nodes_upgrades_available, c.available),
            (metrics.nodes_upgrades_pending, c.pending),
        ):
            gauge.set(value)
        if not policy.auto_upgrade:
            return None
        states = {n.name: n.state for n in managed}
        reasons = dict(result.waiting)
        for n in managed:  # a failed node says why it failed
            if n.state == upgrade.FAILED and n.name not in reasons:
                reasons[n.name] = "failed: " + n.annotations.get(upgrade.FAILURE_REASON_ANNOTATION, "see its events")
        stuck = sorted((n, r) for n, r in reasons.items() if states.get(n) in upgrade.IN_PROGRESS_STATES)
        for node, reason in stuck:  # an event on each node that waits mid-upgrade, when its reason changes
            ref = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": node}}
            self.event(ref, "Normal", upgrade.EVENT_REASON, f"{states[node]}: {steady(reason)}")
        out.busy = bool(result.actions) or c.in_progress > 0 or c.pending > 0
        return {
            "total": c.total,
            "inProgress": c.in_progress,
            "done": c.done,
            "failed": c.failed,
            "pending": c.pending,
            "available": c.available,
            "waiting": [{"node": n, "state": states[n], "reason": steady(r)} for n, r in stuck[:50]],
        }

    def _state_readiness(
        self, state: str, desired: set[Key], live: dict[Key, dict[str, Any]], snap: Snapshot
    ) -> StateResult:
        messages = []
        for key in sorted(k for k in desired if k[0] == "DaemonSet"):
            ds = live.get(key)
            if ds is None or _labels(ds).get(STATE_LABEL) != state:
                continue
            name = key[2]
            pods = [p for p in snap.pods.values() if p["owner"] == name]
            revisions = [r for r in snap.revisions.values() if r["owner"] == name]
            ok, why = daemonset_ready(ds, pods, revisions)
            if not ok:
                messages.append(why)
        if messages:
            return StateResult(state, "notReady", "; ".join(messages))
        return StateResult(state, "ready")

    def _write_status(self, policy: dict[str, Any], status: dict[str, Any], out: Outcome, quiet: bool = False) -> None:
        old = policy.get("status")
        if not status_changed(old, status):
            return
        name = policy["metadata"]["name"]
        # A merge patch keeps keys it does not name: drop the ones the new status no longer has (status.upgrade).
        gone = {k: None for k in (old or {}) if k not in status}
        self.kube.merge_patch("ClusterPolicy", name, {"status": {**gone, **status}}, sub="status")
        out.writes += 1
        if (old or {}).get("state") != status["state"] and not quiet:
            ready: dict[str, Any] = next((c for c in status["conditions"] if c["type"] == "Ready"), {})
            etype = "Normal" if status["state"] in ("ready", "disabled") else "Warning"
            self.event(
                policy,
                etype,
                ready.get("reason", "StateChanged"),
                f"state {status['state']}: {ready.get('message', '')}",
            )

    def _patch_nodes(self, patches: dict[str, NodePatch], out: Outcome) -> None:
        if not patches:
            return

        def patch(item: tuple[str, NodePatch]) -> None:
            name, metadata = item
            try:
                self.kube.merge_patch("Node", name, {"metadata": metadata})
            except ApiError as exc:
                if exc.status != 404:  # a node that went away needs no labels
                    raise

        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(patch, sorted(patches.items())))
        out.writes += len(patches)
        log.info("labelled %d nodes", len(patches))

    def _ensure_namespace(self, psa: bool, out: Outcome) -> None:
        # Read from the API once per process and psa setting; the namespace is not watched.
        if self._namespace_psa == psa:
            return
        ns = self.kube.get("Namespace", self.namespace)
        if ns is None:
            self.kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": self.namespace}})
            out.writes += 1
            ns = {"metadata": {"labels": {}}}
        enforce = "pod-security.kubernetes.io/enforce"
        if psa and (ns["metadata"].get("labels") or {}).get(enforce) != "privileged":
            self.kube.merge_patch("Namespace", self.namespace, {"metadata": {"labels": {enforce: "privileged"}}})
            out.writes += 1
        self._namespace_psa = psa

    def _cleanup_deleted_policies(self, snap: Snapshot, out: Outcome) -> None:
        """A ClusterPolicy being deleted with no other to take over: remove our node labels, then let it go."""
        remaining = [p for p in snap.policies.values() if not p["metadata"].get("deletionTimestamp")]
        for policy in snap.policies.values():
            meta = policy["metadata"]
            if not meta.get("deletionTimestamp") or CLEANUP_FINALIZER not in (meta.get("finalizers") or []):
                continue
            if not remaining:
                patches: dict[str, NodePatch] = {}
                for node in snap.nodes.values():
                    drop: dict[str, str | None] = {
                        k: None
                        for k, v in node.labels.items()
                        if k in (GPU_PRESENT, RUNTIME_LABEL) or (k.startswith(DEPLOY_PREFIX) and written_by_us(v))
                    }
                    if drop:
                        patches[node.name] = {"labels": drop}
                self._patch_nodes(patches, out)
            finalizers = [f for f in meta.get("finalizers") or [] if f != CLEANUP_FINALIZER]
            self.kube.merge_patch("ClusterPolicy", meta["name"], {"metadata": {"finalizers": finalizers}})
            out.writes += 1
            log.info("ClusterPolicy %s deleted; node labels cleaned up", meta["name"])


def _labels(obj: dict[str, Any]) -> dict[str, str]:
    return (obj.get("metadata") or {}).get("labels") or {}


def _with_unpooled(result: StateResult, nodes: list[NodeFacts], precompiled: bool) -> StateResult:
    missing = unpooled(nodes, precompiled)
    if not missing:
        return result
    labels = "os-release ID/VERSION_ID" + (" and kernel-version.full" if precompiled else "")
    shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
    why = f"no driver for {shown}: NFD labels {labels} missing"
    return StateResult(result.name, "notReady", f"{result.message}; {why}" if result.message else why)


def _with_unknown_runtime(result: StateResult, nodes: list[NodeFacts]) -> StateResult:
    missing = unknown_runtime(nodes)
    if not missing:
        return result
    shown = ", ".join(f"{name} ({rt or 'none'})" for name, rt in list(missing.items())[:5])
    more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
    why = f"no container toolkit for {shown}{more}: container runtime not supported (containerd, cri-o, docker)"
    return StateResult(result.name, "notReady", f"{result.message}; {why}" if result.message else why)
