"""Kubernetes Events, posted only when what they say changes, so a steady cluster writes none."""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from .kube import ApiError, Kube, Unreachable

log = logging.getLogger("gpu_operator")

EVENT_SOURCE = "gpu-operator"
REFUSED_RETRY_S = 300.0  # an Event the API server refused is posted again no sooner (a quota refuses it every time)
UNREACHABLE_RETRY_S = 30.0  # no Event is tried for this long after one found the API server unreachable
OWED_MAX = 256  # Events not posted while the API server was unreachable, kept to post later (the oldest dropped)
SERIES_WINDOW_S = 600.0  # the same Event again within this of the last: its count bumped (client-go's correlator)
SERIES_MAX = 4096  # Events kept to bump (the least recently posted dropped), as client-go's LRU cache


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class EventRecorder:
    """Posts Events best-effort (a failed post never cuts a pass). Its rules, per (object, reason):

    | rule | state kept | effect |
    |---|---|---|
    | dedup | `_last`: uid, reason -> message posted | the same message is not posted again while asked for in every pass (`changed` posts it anyway); a new uid (object recreated) starts afresh |
    | forget | `_asked`, pass_done | a reason a completed pass did not ask for is forgotten, so a cause that clears and comes back is posted again |
    | refused | `_refused`: uid, message, when | one the API server refused (an ApiError) is tried again only REFUSED_RETRY_S later |
    | unreachable | `_unreachable_at` | no post is tried for UNREACHABLE_RETRY_S after one found the API server unreachable |
    | owed | `_owed` | one not posted for that is posted by a later pass_done, unless its pass was cut (pass_started) and it is not `durable` |
    | series | `_series`: object, type, reason, message -> Event posted, count, when; `_no_patch` | the same Event again within SERIES_WINDOW_S of the last: that Event's count and lastTimestamp patched, not a new one (gone: a new one; patch forbidden: a new one, and no patch tried again) |
    """  # noqa: E501

    def __init__(self, kube: Kube, clock: Callable[[], float] = time.monotonic):
        self.kube = kube
        self.clock = clock
        # (kind, name) -> the uid of the object posted on, and reason -> its last message posted there
        self._last: dict[tuple[str, str], tuple[str | None, dict[str, str]]] = {}
        self._asked: set[tuple[tuple[str, str], str]] = set()  # (kind, name), reason asked for since the last pass
        # (kind, name) -> reason -> (the object's uid, the message, when) refused last
        self._refused: dict[tuple[str, str], dict[str, tuple[str | None, str, float]]] = {}
        self._unreachable_at: float | None = None  # when a post last found the API server unreachable
        # (kind, name), reason -> (the involved object, type, message, changed, confirmed) of an Event not posted
        # because the API server was unreachable: posted by pass_done once it may be (many callers ask only once per
        # change). Confirmed: asked for in a pass that then ran to its end (pass_done), or between passes after one.
        self._owed: OrderedDict[tuple[tuple[str, str], str], tuple[dict[str, Any], str, str, bool, bool]] = (
            OrderedDict()
        )
        # (involved object, type, reason, message) -> (the Event's namespace and name, its count, when posted last)
        self._series: OrderedDict[tuple[Any, ...], tuple[str, str, int, float]] = OrderedDict()
        self._in_pass = False  # between pass_started and pass_done
        self._no_patch = False  # a count patch was forbidden (no `patch` on events): recurrences are created
        self._lock = threading.Lock()

    def __call__(self, obj: dict[str, Any], etype: str, reason: str, message: str, changed: bool = False,
                 durable: bool = False) -> None:
        """An Event on `obj`, unless the last one posted for it with this reason said the same and the caller has
        asked for it in every pass since (pass_done). `changed`: the caller saw what the event says change (a state
        that came back after another): posted even so. One the API server refused (this object, reason and message)
        is tried again when asked for no sooner than REFUSED_RETRY_S later; none is tried for UNREACHABLE_RETRY_S
        after one found the API server unreachable (Events are best-effort: the pass goes on), and one not posted so
        is kept: dropped if the pass that asked for it is cut (pass_started), else posted by the first pass_done after
        that pass's end and UNREACHABLE_RETRY_S unless asked for again meanwhile. `durable`: the Event says what a
        write that went through did (asked for once, after it), so it stays owed even if its pass is cut."""
        meta = obj["metadata"]
        ref, uid = (obj["kind"], meta["name"]), meta.get("uid")
        involved = {
            "apiVersion": obj.get("apiVersion", "v1"),
            "kind": obj["kind"],
            "name": meta["name"],
            # `kubectl describe node` finds a Node's Events by its uid or by its name (the kubelet's convention)
            "uid": uid or (meta["name"] if obj["kind"] == "Node" else None),
            **({"namespace": meta["namespace"]} if meta.get("namespace") else {}),
        }
        with self._lock:
            self._asked.add((ref, reason))
            self._owed.pop((ref, reason), None)  # asked for again: this ask says what is owed now
            if changed:  # a new state: an earlier one's Event still owed is stale
                for key in [k for k, v in self._owed.items() if k[0] == ref and v[3]]:
                    del self._owed[key]
            if not changed and self._posted(ref, uid).get(reason) == message:
                return
            refused = self._refused.get(ref, {}).get(reason)
            if (refused is not None and not _other(uid, refused[0]) and refused[1] == message
                    and self.clock() - refused[2] < REFUSED_RETRY_S):  # fmt: skip
                return
            confirmed = durable or not self._in_pass
            if self._unreachable():
                self._owe(involved, etype, reason, message, changed, confirmed)
                return
        self._post(involved, etype, reason, message, changed, confirmed)

    def _post(self, involved: dict[str, Any], etype: str, reason: str, message: str, changed: bool,
              confirmed: bool) -> None:  # fmt: skip
        """Post the Event (owed when the API server was unreachable, see pass_done): the one posted last with the
        same object, type, reason and message, within SERIES_WINDOW_S, gets its count bumped instead."""
        ref, name = (involved["kind"], involved["name"]), involved["name"]
        uid = involved["uid"]
        if involved["kind"] == "Node" and uid == name:  # a Node by name (the kubelet's uid): no uid to compare
            uid = None
        key = (tuple(sorted(involved.items())), etype, reason, message[:1000])
        with self._lock:
            series = self._series.get(key)
            if series is not None and self.clock() - series[3] >= SERIES_WINDOW_S:
                series = None
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{name}.", "namespace": involved.get("namespace") or "default"},
            "involvedObject": dict(involved),
            "type": etype,
            "reason": reason,
            "message": message[:1000],
            "source": {"component": EVENT_SOURCE},
            "reportingComponent": EVENT_SOURCE,
            "firstTimestamp": now(),
            "lastTimestamp": now(),
            "count": 1,
        }
        try:
            at, count = self._send(body, series)
        except ApiError as exc:  # not posted: posted again after a while
            log.warning("could not record event %s on %s: %s", reason, name, exc)
            with self._lock:
                self._refused.setdefault(ref, {})[reason] = (uid, message, self.clock())
            return
        except Unreachable as exc:  # the pass's next write finds it so too; no Event is tried meanwhile
            log.warning("could not record event %s on %s: %s", reason, name, exc)
            with self._lock:
                self._unreachable_at = self.clock()
                self._owe(involved, etype, reason, message, changed, confirmed)
            return
        with self._lock:
            self._series.pop(key, None)
            if at is not None:
                self._series[key] = (*at, count, self.clock())
                while len(self._series) > SERIES_MAX:
                    self._series.popitem(last=False)
            posted = self._posted(ref, uid)
            posted[reason] = message
            self._last[ref] = (uid or self._last.get(ref, (None, {}))[0], posted)
            if self._refused.get(ref, {}).pop(reason, None) is not None and not self._refused[ref]:
                del self._refused[ref]

    def _send(
        self, body: dict[str, Any], series: tuple[str, str, int, float] | None
    ) -> tuple[tuple[str, str] | None, int]:
        """Bump the count of the Event `series` names, or create `body` (that one gone too); the Event's namespace
        and name (None when the answer has none) and its count. A pass does not wait on a throttled API server for
        its Events (retry=False). A patch forbidden (403: a ClusterRole without `patch` on events) creates a new
        Event, as before counts were bumped, and no patch is tried again."""
        if series is not None and not self._no_patch:
            namespace, name, count, _ = series
            try:
                self.kube.merge_patch("Event", name, {"count": count + 1, "lastTimestamp": now()}, namespace,
                                      retry=False)  # fmt: skip
                return (namespace, name), count + 1
            except ApiError as exc:
                if exc.status == 403:
                    with self._lock:
                        first, self._no_patch = not self._no_patch, True
                    if first:
                        log.warning("events: %s; a recurring Event is created anew from now on, not its count "
                                    "bumped (grant patch on events)", exc)  # fmt: skip
                elif exc.status != 404:
                    raise
        meta = (self.kube.create(body, retry=False) or {}).get("metadata") or {}
        if not meta.get("name"):  # no name in the answer (a dry run's): nothing to bump later
            return None, 1
        return (meta.get("namespace") or body["metadata"]["namespace"], meta["name"]), 1

    def _unreachable(self) -> bool:
        """Whether a post found the API server unreachable less than UNREACHABLE_RETRY_S ago (under the lock)."""
        return self._unreachable_at is not None and self.clock() - self._unreachable_at < UNREACHABLE_RETRY_S

    def _owe(self, involved: dict[str, Any], etype: str, reason: str, message: str, changed: bool,
             confirmed: bool) -> None:  # fmt: skip
        """Keep an Event not posted for the API server being unreachable (under the lock), the newest last."""
        key = ((involved["kind"], involved["name"]), reason)
        self._owed.pop(key, None)
        self._owed[key] = (involved, etype, message, changed, confirmed)
        while len(self._owed) > OWED_MAX:
            self._owed.popitem(last=False)

    def _posted(self, ref: tuple[str, str], uid: str | None) -> dict[str, str]:
        """What was posted on the object of this kind and name (under the lock); nothing when the name is now
        another object's (deleted and created again: a new uid)."""
        known, posted = self._last.get(ref, (None, {}))
        return {} if _other(uid, known) else posted

    def pass_started(self) -> None:
        """A pass begins. The Events owed from the last one, if it was cut (no pass_done: its status not written), are
        dropped: what they said may be over (the admin fixed it meanwhile), and a caller that asks once per change
        asks again in this pass, its status not saying it, if it still holds. A durable one (what a write that went
        through did: nothing asks for it again) stays owed."""
        with self._lock:
            for key in [k for k, v in self._owed.items() if not v[4]]:
                del self._owed[key]
            self._in_pass = True

    def pass_done(self) -> None:
        """A pass ran to its end: what was posted and not asked for since the last pass is over (the caller no longer
        reports it), so an Event that says it again is posted when it comes back. The Events owed in this pass are
        confirmed, and those confirmed earlier posted, once UNREACHABLE_RETRY_S has passed."""
        with self._lock:
            for ref, (_, posted) in list(self._last.items()):
                for reason in [r for r in posted if (ref, r) not in self._asked]:
                    del posted[reason]
                if not posted:
                    del self._last[ref]
            self._asked.clear()
            self._in_pass = False
            earlier = [k for k, v in self._owed.items() if v[4]]
            for key, (involved, etype, message, changed, _) in list(self._owed.items()):
                self._owed[key] = (involved, etype, message, changed, True)
            if self._unreachable():
                return
            owed = [(key, self._owed.pop(key)) for key in earlier]
        for key, (involved, etype, message, changed, _) in owed:
            with self._lock:
                if key in self._asked:  # asked for again meanwhile (between passes): that ask says it
                    continue
                if self._unreachable():  # unreachable again: the rest stay owed
                    self._owe(involved, etype, key[1], message, changed, True)
                    continue
            self._post(involved, etype, key[1], message, changed, True)

    def forget(self, kind: str, name: str) -> None:
        """Drop what was posted on an object that is gone (node names churn in autoscaled pools)."""
        with self._lock:
            self._last.pop((kind, name), None)
            self._refused.pop((kind, name), None)
            for key in [k for k in self._owed if k[0] == (kind, name)]:
                del self._owed[key]
            for series in [k for k in self._series if ("kind", kind) in k[0] and ("name", name) in k[0]]:
                del self._series[series]


def _other(uid: str | None, known: str | None) -> bool:
    """Whether a reference with `uid` is another object than the one with `known` of the same kind and name (deleted
    and created again). A reference without a uid (a Node's, by name) is the same object."""
    return bool(uid and known and uid != known)
