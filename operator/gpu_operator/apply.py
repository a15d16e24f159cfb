"""Writing the desired objects: server-side apply of what changed, pruning of what we own and no longer want,
and node patches. Nothing is written when the rendered hash matches what is there."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from .kube import ApiError, Kube
from .observe import Key, key_of
from .render import NodePatch, StatePlan
from .states.base import HASH_ANNOTATION, MANAGED_BY, OPERATOR_NAME, owning_state

log = logging.getLogger("gpu_operator")


def labels_of(obj: dict[str, Any]) -> dict[str, str]:
    return (obj.get("metadata") or {}).get("labels") or {}


@dataclass
class Applied:
    """What applying one state's objects did."""

    objects: list[dict[str, Any]] = field(default_factory=list)
    failed: str | None = None  # the last object the API server refused, with its message


class Applier:
    def __init__(self, kube: Kube):
        self.kube = kube

    def apply_state(self, state_plan: StatePlan, live: dict[Key, dict[str, Any]]) -> Applied:
        """Apply the plan's objects whose hash differs from the live ones; `live` is updated in place."""
        out = Applied()
        for obj in state_plan.objects:
            key = key_of(obj)
            current = live.get(key)
            want = obj["metadata"]["annotations"][HASH_ANNOTATION]
            have = ((current or {}).get("metadata", {}).get("annotations") or {}).get(HASH_ANNOTATION)
            if have == want:
                continue
            log.info("applying %s %s (%s)", obj["kind"], obj["metadata"]["name"], "update" if current else "create")
            try:
                applied = self.kube.apply(obj)
            except ApiError as exc:  # one broken object must not hold back the other states
                out.failed = f"{obj['kind']} {obj['metadata']['name']}: {exc.message}"
                continue
            out.objects.append(applied)
            live[key] = applied
        return out

    def prune(self, owned: dict[Key, dict[str, Any]], desired: set[Key], states: frozenset[str]) -> list[Key]:
        """Delete the objects a state of ours owns that no state wants any more; the keys deleted."""
        deleted = []
        for key, obj in sorted(owned.items()):
            if key in desired or key[0] == "ClusterPolicy":
                continue
            labels = labels_of(obj)
            state = owning_state(labels, states)
            if labels.get(MANAGED_BY) != OPERATOR_NAME or not state:
                continue
            log.info("deleting %s %s (%s no longer wants it)", key[0], key[2], state)
            self.kube.delete(key[0], key[2], key[1] or None)
            deleted.append(key)
        return deleted

    def patch_nodes(self, patches: dict[str, NodePatch]) -> None:
        """One merge patch of labels and annotations per node, a few at a time."""
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
        log.info("labelled %d nodes", len(patches))
