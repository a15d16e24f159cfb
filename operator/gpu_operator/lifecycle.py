"""The ClusterPolicy's lifecycle around the operands: our finalizer, the operand namespace, and the clean-up of
our node labels (and the driver upgrade's and the MIG gate's cordons) when the last ClusterPolicy is deleted (after
mig-manager, which writes deploy labels of its own accord, is gone)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from time import monotonic
from typing import Any

from .apply import Applier
from .kube import ApiError, Kube
from .mig import APPROVED as MIG_APPROVED
from .nodes import (
    DRIVER_KERNEL,
    GPU_PRESENT,
    MIG_CORDONED,
    RUNTIME_LABEL,
    UPGRADE_ENABLED_ANNOTATION,
    NodeFacts,
    our_deploy_labels,
)
from .nvidiadriver_api import OWNER_LABEL
from .observe import Key, Snapshot
from .render import NodePatch
from .states.mig_manager import STATE as MIG_MANAGER
from .upgrade.adapter import EventFn
from .upgrade.model import UpgradeNode
from .upgrade.orchestrate import left_behind
from .upgrade.planner import kept_cordoned

log = logging.getLogger("gpu_operator")

CLEANUP_FINALIZER = "nvidia.com/gpu-operator-cleanup"
# Upstream's podSecurityModes, each set to privileged: the operands are, and audit and warn would flag each apply.
PSA_LABELS = {f"pod-security.kubernetes.io/{mode}": "privileged" for mode in ("enforce", "audit", "warn")}
NAMESPACE_RECHECK_S = 60.0  # how often the namespace is read again while pods of ours are missing (psa.enabled)


class Lifecycle:
    def __init__(self, kube: Kube, namespace: str, applier: Applier,
                 seen: Callable[[str, dict[str, Any]], None] | None = None,
                 events: EventFn | None = None):  # fmt: skip
        self.kube = kube
        self.namespace = namespace
        self.applier = applier
        self.seen = seen  # told a finalizer patch's answer (StatusWriter.seen: the status write's resourceVersion)
        self.events = events or _log_event  # the driver upgrade's events on the nodes it lets go
        self._namespace_psa: bool | None = None  # the namespace was checked for this psa setting
        self._namespace_read = 0.0  # when (monotonic)

    def ensure_finalizer(self, policy: dict[str, Any]) -> bool:
        """Our finalizer is on the ClusterPolicy; False when the policy changed since it was read (see
        `_set_finalizers`): the caller passes again soon."""
        meta = policy["metadata"]
        finalizers = meta.get("finalizers") or []
        if CLEANUP_FINALIZER in finalizers:
            return True
        return self._set_finalizers(meta, [*finalizers, CLEANUP_FINALIZER])

    def _set_finalizers(self, meta: dict[str, Any], finalizers: list[str]) -> bool:
        """A merge patch replaces the whole list: it carries the resourceVersion it was decided on, so that a
        finalizer another controller added or removed since is not undone (the API server refuses it with 409).
        False when refused so: the next pass reads it again. Letting go of one already gone (404) is done."""
        patch: dict[str, Any] = {"metadata": {"finalizers": finalizers}}
        if meta.get("resourceVersion"):
            patch["metadata"]["resourceVersion"] = meta["resourceVersion"]
        try:
            answer = self.kube.merge_patch("ClusterPolicy", meta["name"], patch)
        except ApiError as exc:
            if exc.status == 404 and CLEANUP_FINALIZER not in finalizers:
                log.info("ClusterPolicy %s is gone already (its finalizer removed by hand or by the uninstall hook)",
                         meta["name"])  # fmt: skip
                return True
            if exc.status != 409:
                raise
            log.info("ClusterPolicy %s changed since it was read: its finalizers are written on the next pass",
                     meta["name"])  # fmt: skip
            return False
        if self.seen is not None:
            self.seen("ClusterPolicy", answer)
        return True

    def ensure_namespace(self, psa: bool, pods_missing: bool = False) -> None:
        """The operand namespace exists (labelled privileged for enforce, audit and warn with psa.enabled): read once
        per process and setting. With psa.enabled it is read again, at most every NAMESPACE_RECHECK_S, while a
        DaemonSet of ours lacks pods (`pods_missing`): labels removed since (a GitOps prune, an admin) make the API
        server refuse every operand pod created, and are put back. Not read at steady state (no pod missing)."""
        if self._namespace_psa == psa and not (
            psa and pods_missing and monotonic() - self._namespace_read >= NAMESPACE_RECHECK_S
        ):
            return
        checked = self._namespace_psa == psa
        ns = self.kube.get("Namespace", self.namespace)
        if ns is None:
            self.kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": self.namespace}})
            ns = {"metadata": {"labels": {}}}
        if psa and any((ns["metadata"].get("labels") or {}).get(k) != v for k, v in PSA_LABELS.items()):
            if checked:
                log.warning("namespace %s lost its pod-security labels while pods of ours are missing: labelled "
                            "privileged again (psa.enabled)", self.namespace)  # fmt: skip
            self.kube.merge_patch("Namespace", self.namespace, {"metadata": {"labels": PSA_LABELS}})
        self._namespace_psa = psa
        self._namespace_read = monotonic()

    def cleanup_deleted(self, snap: Snapshot) -> bool:
        """A ClusterPolicy being deleted with no other to take over: let go of the driver upgrades, remove our node
        labels, then let it go. With another to take over: let it go once none of our objects has it as its only
        owner (the garbage collector would delete those); the other's pass re-owns them, and their watch events bring
        the pass that lets it go. False when one changed since it was read, or a node's upgrade was not let go, and
        it is not let go yet (the caller passes again soon)."""
        done = True
        cleaned: bool | None = None  # the nodes were cleaned up in this call (once for several deleted policies)
        remaining = [p for p in snap.policies.values() if not p["metadata"].get("deletionTimestamp")]
        for policy in snap.policies.values():
            meta = policy["metadata"]
            if not meta.get("deletionTimestamp") or CLEANUP_FINALIZER not in (meta.get("finalizers") or []):
                continue
            if remaining:
                held = _held_by(meta.get("uid"), snap)
                if held:
                    log.info("ClusterPolicy %s deleted: kept until the next one owns %d objects (%s %s, ...)",
                             meta["name"], len(held), held[0][0], held[0][2])  # fmt: skip
                    continue
            else:
                if self._stop_label_writers(snap):
                    continue  # the finalizer stays until its pods are gone (their going wakes a pass)
                if cleaned is None:
                    cleaned = self._cleanup_nodes(snap, f"ClusterPolicy {meta['name']} deleted")
                if not cleaned:
                    done = False
                    continue
            finalizers = [f for f in meta.get("finalizers") or [] if f != CLEANUP_FINALIZER]
            if self._set_finalizers(meta, finalizers):
                log.info("ClusterPolicy %s deleted; node labels cleaned up", meta["name"])
            else:
                done = False
        return done

    def _cleanup_nodes(self, snap: Snapshot, why: str) -> bool:
        """With no ClusterPolicy left, the driver upgrade stops for good: each node's is let go as with autoUpgrade
        off (planner.switched_off: state label and annotations removed, the upgrade's own cordon lifted, a failed
        node's left to the admin; upstream removes the state label alone), our labels, the upgrade-enabled
        annotation and the MIG gate's cordons go.
        False when a node's upgrade was not let go (a write failed): tried again on the next pass."""
        failed = left_behind(self.kube, self.namespace, snap.nodes.values(), self.events, why)
        if failed:
            log.warning("%s: the driver upgrade of %s not let go; tried again", why, ", ".join(sorted(failed)))
        patches: dict[str, NodePatch] = {}
        for node in snap.nodes.values():
            drop: dict[str, str | None] = {
                k: None
                for k in (GPU_PRESENT, RUNTIME_LABEL, DRIVER_KERNEL, OWNER_LABEL, MIG_APPROVED)
                if k in node.labels
            }
            # The deploy labels a node losing its GPU loses: someone else's (nvsm=true, say) stay.
            drop.update(dict.fromkeys(our_deploy_labels(node.labels)))
            if drop:
                patches[node.name] = {"labels": drop}
            # Ours too: k8s-driver-manager reads it to leave eviction and drain to an upgrade no one runs now.
            if node.annotations.get(UPGRADE_ENABLED_ANNOTATION) == "true":
                patches.setdefault(node.name, {})["annotations"] = {UPGRADE_ENABLED_ANNOTATION: None}
            if MIG_CORDONED in node.annotations and node.name not in failed:  # the MIG gate's cordon goes too
                uncordon: dict[str, Any] = {"metadata": {"annotations": {MIG_CORDONED: None}}}
                if not kept_cordoned(_upgrade_node(node)):  # a failed upgrade's cordon is the admin's now
                    uncordon["spec"] = {"unschedulable": None}
                try:
                    self.kube.merge_patch("Node", node.name, uncordon)
                except ApiError as exc:
                    if exc.status != 404:  # a node deleted since the snapshot has no cordon to lift
                        raise
        self.applier.patch_nodes(patches)
        return not failed

    def _stop_label_writers(self, snap: Snapshot) -> bool:
        """Delete our mig-manager DaemonSet; True while its pods may still write labels. A mig-manager mid-change
        sets deploy labels of its own accord (paused, then back to true), so one still running when the labels are
        removed can put them back after. Only DaemonSet pods are waited for, and of those being deleted only the ones
        on a Ready node (elsewhere nothing ends them)."""
        running = [
            p
            for pods in (snap.pod_index.by_state.get(MIG_MANAGER.name) or {}).values()
            for p in pods
            if p["owner"] and (not p["metadata"].get("deletionTimestamp") or _on_ready_node(p, snap))
        ]
        for owner in sorted({p["owner"] for p in running}):
            ds = snap.owned.get(("DaemonSet", self.namespace, owner))
            if ds is not None and not ds["metadata"].get("deletionTimestamp"):
                self.kube.delete("DaemonSet", owner, self.namespace)
                log.info("ClusterPolicy deleted: deleting DaemonSet %s before removing node labels", owner)
        return bool(running)


def pods_missing(owned: Mapping[Key, dict[str, Any]], namespace: str) -> bool:
    """A DaemonSet of ours runs on fewer nodes than it should: its pods not created yet, or refused (a pod the
    API server's admission refuses leaves its node without one)."""
    for (kind, ns, _), obj in owned.items():
        status = obj.get("status") if kind == "DaemonSet" and ns == namespace else None
        if isinstance(status, dict) and (status.get("currentNumberScheduled") or 0) < (
            status.get("desiredNumberScheduled") or 0
        ):
            return True
    return False


def _held_by(uid: str | None, snap: Snapshot) -> list[Key]:
    """Our live objects whose only owner is this uid (they would go with it)."""
    if not uid:
        return []
    return sorted(
        key
        for key, obj in snap.owned.items()
        if not obj["metadata"].get("deletionTimestamp")
        and (refs := obj["metadata"].get("ownerReferences") or [])
        and all(r.get("uid") == uid for r in refs)
    )


def _upgrade_node(node: NodeFacts) -> UpgradeNode:
    return UpgradeNode(node.name, labels=node.labels, annotations=node.annotations, unschedulable=node.unschedulable)


def _log_event(obj: dict[str, Any], etype: str, reason: str, message: str, *, durable: bool = False) -> None:
    log.info("%s %s: %s", obj["kind"], obj["metadata"]["name"], message)


def _on_ready_node(pod: dict[str, Any], snap: Snapshot) -> bool:
    node = snap.nodes.get(pod["node"])
    return node is not None and node.ready
