"""Writing the desired objects: server-side apply of what changed, pruning of what we own and no longer want,
and node patches. Nothing is written when the rendered hash matches what is there."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .kube import FIELD_MANAGER, ApiError, Kube
from .nodes import NodeFacts
from .observe import Key, key_of
from .render import NodePatch, StatePlan
from .states.base import HASH_ANNOTATION, MANAGED_BY, OPERATOR_NAME, STATE_LABEL, owning_state

log = logging.getLogger("gpu_operator")
T = TypeVar("T")
R = TypeVar("R")


_BINDINGS = frozenset({"RoleBinding", "ClusterRoleBinding"})
ORPHAN = {"propagationPolicy": "Orphan"}  # a delete's body that leaves what the object owns in place


def _role_of(binding: dict[str, Any]) -> Key:
    """The key of the Role or ClusterRole a binding names."""
    ref = binding.get("roleRef") or {}
    namespace = ((binding.get("metadata") or {}).get("namespace") or "") if ref.get("kind") == "Role" else ""
    return (ref.get("kind", ""), namespace, ref.get("name", ""))


def labels_of(obj: dict[str, Any]) -> dict[str, str]:
    return (obj.get("metadata") or {}).get("labels") or {}


@dataclass
class Applied:
    """What applying one state's objects did."""

    objects: list[dict[str, Any]] = field(default_factory=list)  # as written (an apply that changed nothing: not)
    failed: str | None = None  # the last object the API server refused, with its message
    refused: dict[Key, str] = field(default_factory=dict)  # each object the API server refused: its message


Result = dict[str, Any] | ApiError  # an apply's answer: the object as written, or the API server's refusal
Started = dict[Key, tuple[str, dict[str, Any], "Future[Result]"]]  # object -> (its state, the object, its apply)


def _settle(out: Future[Result], done: Future[Result]) -> None:
    """Pass a finished future's outcome on to `out`."""
    exc = done.exception()
    if exc is not None:
        out.set_exception(exc)
    else:
        out.set_result(done.result())


class Applier:
    def __init__(self, kube: Kube, workers: int = 16):
        self.kube = kube
        self.workers = workers  # requests in flight at once
        # Node -> (the resourceVersion our last patch of it returned, or IN_FLIGHT; that patch). A decision made on
        # an older view of the node that comes to the same patch was already carried out: not sent twice.
        self._sent: dict[str, tuple[int, NodePatch]] = {}
        # Object -> its uid and the version our last apply of it left (or, for one not applied since we started,
        # the version first seen): its metadata.generation, or for kinds without one (ConfigMap, ClusterRole,
        # Service...) its resourceVersion. A live object past it had its spec changed by another writer, which left
        # our hash annotation as it was: applied again (once: that apply's version is recorded in turn, so a change
        # that only touched fields we do not set costs one write). One of another uid (deleted and created again by
        # another writer, at a generation that starts over) counts as not applied since we started. Dropped when
        # prune deletes the object.
        self._versions: dict[Key, tuple[str | None, int]] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="apply")

    def apply_state(self, state_plan: StatePlan, live: dict[Key, dict[str, Any]]) -> Applied:
        """Apply the plan's objects whose hash differs from the live ones; `live` is updated in place."""
        return self.apply_states([state_plan], live)[state_plan.state.name]

    def apply_states(
        self, plans: list[StatePlan], live: dict[Key, dict[str, Any]], ahead: Started | None = None
    ) -> dict[str, Applied]:
        """Apply the changed objects of every plan (see `start`) and wait for them. State name -> what applying
        did; `live` is updated in place.

        `ahead`: objects another `start` sent earlier (this pass's node-independent ones); one of them this plan
        wants unchanged is not sent again, its answer counts as this apply's."""
        out = {p.state.name: Applied() for p in plans}
        sent = self.start(plans, live, ahead)
        for key, (state, obj, future) in sent.items():
            result = future.result()
            if isinstance(result, ApiError):  # one broken object must not hold back the others
                message = f"{obj['kind']} {obj['metadata']['name']}: {result.message}"
                out[state].failed = out[state].refused[key] = message
            else:
                if not _same_version(live.get(key), result):  # else a no-op: the object is as it was
                    out[state].objects.append(result)
                live[key] = result
        return out

    def start(
        self, plans: list[StatePlan], live: Mapping[Key, dict[str, Any]], ahead: Started | None = None
    ) -> Started:
        """Send the plans' objects whose hash differs from the live ones, at most `workers` requests at a time,
        each as soon as what it needs is there, and return at once: a binding after the role it names (the API
        server refuses a binding to a role it does not know yet: it checks that we hold what the role grants), a
        DaemonSet after its own state's other objects and every RuntimeClass (so its pods find what they use)."""
        changed = [
            (p.state.name, obj)
            for p in plans
            for obj in p.objects
            if _hash(live.get(key_of(obj))) != _hash(obj) or self.changed_by_others(live.get(key_of(obj)))
            or _state_label_changed(live.get(key_of(obj)), obj)
        ]
        sent: Started = {}
        by_state: dict[str, list[Future[Result]]] = {}
        runtime_classes: list[Future[Result]] = []
        rank = {"DaemonSet": 2, "RoleBinding": 1, "ClusterRoleBinding": 1}  # what waits is sent after what it needs
        for state, obj in sorted(changed, key=lambda item: rank.get(item[1]["kind"], 0)):
            key, kind = key_of(obj), obj["kind"]
            early = (ahead or {}).get(key)
            if early is not None and early[1] == obj:
                future = early[2]
            elif kind == "DaemonSet":
                future = self._after(by_state.get(state, []) + runtime_classes, obj, live)
            elif kind in _BINDINGS:
                role = sent.get(_role_of(obj)) or (ahead or {}).get(_role_of(obj))
                future = self._after([role[2]] if role else [], obj, live)
            else:
                future = self._after([], obj, live)
            sent[key] = (state, obj, future)
            if kind != "DaemonSet":
                by_state.setdefault(state, []).append(future)
            if kind == "RuntimeClass":
                runtime_classes.append(future)
        return sent

    def _after(
        self, needs: list[Future[Result]], obj: dict[str, Any], live: Mapping[Key, dict[str, Any]]
    ) -> Future[Result]:
        """The apply of obj, sent once every future in `needs` is done (whatever its answer)."""
        out: Future[Result] = Future()
        left = [len(needs) + 1]  # one more, held until every callback is registered (a done future calls back at once)
        lock = threading.Lock()

        def send(_: object = None) -> None:
            with lock:
                left[0] -= 1
                if left[0] > 0:
                    return
            self._pool.submit(self._apply_one, obj, live).add_done_callback(lambda f: _settle(out, f))

        for need in needs:
            need.add_done_callback(send)
        send()
        return out

    def changed_by_others(self, live: dict[str, Any] | None) -> bool:
        """Whether another writer changed an object (its spec, or its data, rules... where it has no generation)
        since our last apply of it."""
        if live is None:
            return False
        meta = live.get("metadata") or {}
        version, what = _version(live)
        uid = meta.get("uid")
        held = self._versions.get(key_of(live))
        ours = held[1] if held is not None and (held[0] == uid or not held[0] or not uid) else None  # same object
        # Not applied since we started (or created again since): did another writer come after our last apply? One
        # whose write left our fields as they were stays later for good (a no-op apply does not stamp our entry): each
        # restart sends that object one apply, which the API server skips and apply_states does not count as a change.
        if ours is None:
            if not foreign_write_after_ours(meta.get("managedFields") or []):
                self._versions[key_of(live)] = (uid, version)
                return False
            ours = 0
        elif version <= ours:
            return False
        elif what == "resourceVersion" and not foreign_write_after_ours(meta.get("managedFields") or []):
            return False  # a resourceVersion moves on status writes too: only another manager's write counts
        log.info("%s %s was changed by another writer (%s %d, ours %d): applying it again",
                 live.get("kind"), meta.get("name"), what, version, ours)  # fmt: skip
        return True

    def _apply_one(self, obj: dict[str, Any], live: Mapping[Key, dict[str, Any]]) -> Result:
        verb = "update" if key_of(obj) in live else "create"
        log.info("applying %s %s (%s)", obj["kind"], obj["metadata"]["name"], verb)
        try:
            result = self.kube.apply(obj)
        except ApiError as exc:
            return exc
        self._versions[key_of(obj)] = ((result.get("metadata") or {}).get("uid"), _version(result)[0])
        return result

    def _map(self, fn: Callable[[T], R], items: list[T]) -> list[R]:
        if len(items) <= 1:
            return [fn(i) for i in items]
        with ThreadPoolExecutor(max_workers=min(self.workers, len(items))) as pool:
            return list(pool.map(fn, items))

    def prune(
        self, owned: dict[Key, dict[str, Any]], desired: set[Key], states: frozenset[str],
        orphan: Collection[Key] = (),
    ) -> list[Key]:  # fmt: skip
        """Delete the objects a state of ours owns that no state wants any more; the keys deleted. One already being
        deleted (held by a finalizer, a LoadBalancer Service's say) is left to finish. Those in `orphan` are deleted
        with propagationPolicy Orphan: what they own (a DaemonSet's pods) is left as it is; the others with what
        they own."""
        doomed = []
        for key, obj in sorted(owned.items()):
            if key in desired or key[0] == "ClusterPolicy" or obj["metadata"].get("deletionTimestamp"):
                continue
            labels = labels_of(obj)
            state = owning_state(labels, states)
            if labels.get(MANAGED_BY) != OPERATOR_NAME or not state:
                continue
            kept = "; its pods are left running" if key in orphan else ""
            log.info("deleting %s %s (%s no longer wants it%s)", key[0], key[2], state, kept)
            doomed.append(key)

        def delete(key: Key) -> bool:
            if key in orphan:
                gone = self.kube.delete(key[0], key[2], key[1] or None, ORPHAN)
            else:
                gone = self.kube.delete(key[0], key[2], key[1] or None)
            self._versions.pop(key, None)  # gone: so is its entry (not kept for as long as we run)
            return gone

        self._map(delete, doomed)
        return doomed

    def patch_nodes(
        self,
        patches: dict[str, NodePatch],
        versions: Mapping[str, int] | None = None,
        refused: dict[str, str] | None = None,
    ) -> list[NodeFacts]:
        """One merge patch of labels and annotations per node, a few at a time; the nodes as patched (projected
        at once: a whole Node is ~40 KB once parsed, and a first pass patches every node).

        `versions`: the resourceVersion of the node each patch was decided on. A patch equal to one already sent
        (or in flight) that returned a newer version is skipped: it was decided on a view older than our own
        write (a pass and a single-node labelling that overlapped). A patch the API server refuses as invalid
        (422) is logged and put in `refused` (node -> message); the other nodes are patched as ever."""
        todo = []
        with self._lock:
            for name, patch in sorted(patches.items()):
                sent = self._sent.get(name)
                if sent is not None and versions is not None and name in versions:
                    if sent[1] == patch and sent[0] > versions[name]:
                        continue
                self._sent[name] = (IN_FLIGHT, patch)
                todo.append((name, patch))
        if not todo:
            return []

        def send(item: tuple[str, NodePatch]) -> NodeFacts | None:
            name, metadata = item
            try:
                node = self.kube.merge_patch("Node", name, {"metadata": metadata})
            except ApiError as exc:
                self._settle(name, metadata, None)
                if exc.status == 422:  # one node's invalid label must not hold back the others
                    log.warning("node %s: patch refused: %s", name, exc.message)
                    if refused is not None:
                        refused[name] = exc.message
                elif exc.status != 404:  # a node that went away needs no labels
                    raise
                return None
            except BaseException:
                self._settle(name, metadata, None)
                raise
            self._settle(name, metadata, node)
            return NodeFacts.from_node(node)

        patched = [n for n in self._map(send, todo) if n is not None]
        if len(patched) > 1:
            log.info("labelled %d nodes", len(patched))
        return patched

    def forget(self, node: str) -> None:
        """Drop what was kept about a node that is gone (node names churn in autoscaled pools)."""
        with self._lock:
            self._sent.pop(node, None)

    def _settle(self, name: str, patch: NodePatch, node: dict[str, Any] | None) -> None:
        with self._lock:
            if self._sent.get(name) != (IN_FLIGHT, patch):
                return
            if node is None:
                del self._sent[name]
            else:
                self._sent[name] = (resource_version(node), patch)


def foreign_write_after_ours(managed_fields: list[dict[str, Any]]) -> bool:
    """Whether another field manager wrote an object (not its status) later than our last apply changed it
    (managedFields times are whole seconds in RFC 3339, UTC: they compare as strings)."""
    spec = [e for e in managed_fields if not e.get("subresource") and e.get("operation") in ("Update", "Apply")]
    ours = [e.get("time") or "" for e in spec if e.get("manager") == FIELD_MANAGER]
    theirs = [e.get("time") or "" for e in spec if e.get("manager") != FIELD_MANAGER]
    return bool(ours and theirs) and max(theirs) > max(ours)


IN_FLIGHT = 1 << 62  # newer than any resourceVersion: an in-flight patch is not sent again


def resource_version(obj: dict[str, Any]) -> int:
    try:
        return int((obj.get("metadata") or {}).get("resourceVersion") or 0)
    except ValueError:
        return 0


def _version(obj: dict[str, Any]) -> tuple[int, str]:
    """The object's metadata.generation, or its resourceVersion for a kind without one; and which it is."""
    generation = (obj.get("metadata") or {}).get("generation")
    if isinstance(generation, int):
        return generation, "generation"
    return resource_version(obj), "resourceVersion"


def _same_version(before: dict[str, Any] | None, after: dict[str, Any]) -> bool:
    """Whether an apply's answer is the object as it was (the API server skips an apply that changes nothing:
    the resourceVersion stays)."""
    version = ((before or {}).get("metadata") or {}).get("resourceVersion")
    return bool(version) and (after.get("metadata") or {}).get("resourceVersion") == version


def _hash(obj: dict[str, Any] | None) -> str | None:
    return ((obj or {}).get("metadata", {}).get("annotations") or {}).get(HASH_ANNOTATION)


def _state_label_changed(live: dict[str, Any] | None, obj: dict[str, Any]) -> bool:
    """Whether another writer removed or changed our state label on the live object (`kubectl label`): a metadata
    edit moves no generation, and prune finds our objects by that label."""
    if live is None or labels_of(live).get(STATE_LABEL) == labels_of(obj).get(STATE_LABEL):
        return False
    log.info("%s %s lost its label %s=%s to another writer: applying it again", obj["kind"], obj["metadata"]["name"],
             STATE_LABEL, labels_of(obj).get(STATE_LABEL))  # fmt: skip
    return True
