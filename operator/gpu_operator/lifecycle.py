"""The ClusterPolicy's lifecycle around the operands: our finalizer, the operand namespace, and the clean-up of
our node labels when the last ClusterPolicy is deleted."""

from __future__ import annotations

import logging
from typing import Any

from .apply import Applier
from .kube import Kube
from .nodes import DEPLOY_PREFIX, DRIVER_KERNEL, GPU_PRESENT, RUNTIME_LABEL, written_by_us
from .nvidiadriver_api import OWNER_LABEL
from .observe import Snapshot
from .render import NodePatch

log = logging.getLogger("gpu_operator")

CLEANUP_FINALIZER = "nvidia.com/gpu-operator-cleanup"
PSA_ENFORCE = "pod-security.kubernetes.io/enforce"


class Lifecycle:
    def __init__(self, kube: Kube, namespace: str, applier: Applier):
        self.kube = kube
        self.namespace = namespace
        self.applier = applier
        self._namespace_psa: bool | None = None  # the namespace was checked for this psa setting

    def ensure_finalizer(self, policy: dict[str, Any]) -> None:
        meta = policy["metadata"]
        finalizers = meta.get("finalizers") or []
        if CLEANUP_FINALIZER not in finalizers:
            patch = {"metadata": {"finalizers": [*finalizers, CLEANUP_FINALIZER]}}
            self.kube.merge_patch("ClusterPolicy", meta["name"], patch)

    def ensure_namespace(self, psa: bool) -> None:
        """The operand namespace exists (labelled privileged with psa.enabled): read once per process and setting."""
        if self._namespace_psa == psa:
            return
        ns = self.kube.get("Namespace", self.namespace)
        if ns is None:
            self.kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": self.namespace}})
            ns = {"metadata": {"labels": {}}}
        if psa and (ns["metadata"].get("labels") or {}).get(PSA_ENFORCE) != "privileged":
            self.kube.merge_patch("Namespace", self.namespace, {"metadata": {"labels": {PSA_ENFORCE: "privileged"}}})
        self._namespace_psa = psa

    def cleanup_deleted(self, snap: Snapshot) -> None:
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
                        if k in (GPU_PRESENT, RUNTIME_LABEL, DRIVER_KERNEL, OWNER_LABEL)
                        or (k.startswith(DEPLOY_PREFIX) and written_by_us(v))
                    }
                    if drop:
                        patches[node.name] = {"labels": drop}
                self.applier.patch_nodes(patches)
            finalizers = [f for f in meta.get("finalizers") or [] if f != CLEANUP_FINALIZER]
            self.kube.merge_patch("ClusterPolicy", meta["name"], {"metadata": {"finalizers": finalizers}})
            log.info("ClusterPolicy %s deleted; node labels cleaned up", meta["name"])
