"""Leader election on a coordination.k8s.io/v1 Lease, so two or more replicas can run and one acts.

client-go's semantics. The holder renews the Lease every RENEW_PERIOD_S; a replica that is not the holder takes
the Lease once its record (holder, renewTime, ...) has not changed for leaseDurationSeconds by its own clock,
or at once when the holder released it (empty holderIdentity). Fencing: the holder's writes pass only until
RENEW_DEADLINE_S after the last renew it *sent* that succeeded (`Fence`, checked before every write), and it
exits when a renew has not succeeded by then. A follower counts expiry from when it *received* the record, which
is later than the holder sent it, so the holder has stopped writing LEASE_DURATION_S - RENEW_DEADLINE_S before
anyone else may start (with clocks that run at the same rate; none need agree on the time). A Lease deleted keeps
its last record until that runs out, for the holder (which creates it again) and the followers alike.

Decisions are pure functions over a clock value (`observe`, `decide`, `next_wait`), unit-tested with a fake
clock; `Elector` is the thin adapter that talks to the API server.
"""

from __future__ import annotations

import enum
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from .kube import ApiError, Fence, Kube

log = logging.getLogger("gpu_operator")

LEASE_NAME = "53822513.nvidia.com"  # upstream's LeaderElectionID (cmd/gpu-operator/main.go)
LEASE_DURATION_S = 15
RENEW_DEADLINE_S = 10.0
RENEW_PERIOD_S = 5.0
RETRY_S = 1.0  # a failed renew is retried this often until the deadline; followers look at the Lease this often
REQUEST_TIMEOUT_S = 5.0  # a Lease request that hangs longer counts as failed


def identity() -> str:
    """This replica's holder identity: the pod name (POD_NAME, from the downward API), else hostname_pid."""
    return os.environ.get("POD_NAME") or f"{socket.gethostname()}_{os.getpid()}"


@dataclass(frozen=True)
class Record:
    """The Lease's spec, as the election reads it."""

    holder: str = ""
    duration_s: int = LEASE_DURATION_S
    acquire_time: str = ""
    renew_time: str = ""
    transitions: int = 0

    @classmethod
    def from_lease(cls, lease: dict[str, Any]) -> Record:
        spec = lease.get("spec") or {}
        return cls(
            holder=spec.get("holderIdentity") or "",
            duration_s=int(spec.get("leaseDurationSeconds") or LEASE_DURATION_S),
            acquire_time=spec.get("acquireTime") or "",
            renew_time=spec.get("renewTime") or "",
            transitions=int(spec.get("leaseTransitions") or 0),
        )


@dataclass(frozen=True)
class Observation:
    """The record last read (None: there is no Lease) and when, by the local clock, it last changed."""

    record: Record | None
    since: float


def observe(prev: Observation | None, record: Record | None, now: float) -> Observation:
    """The observation after reading `record` at `now`: the time moves only when the record changed. A Lease gone
    (deleted) while the record last read still runs keeps that record: its holder may still write until it runs out."""
    if prev is not None and prev.record == record:
        return prev
    if record is None and prev is not None and prev.record and prev.record.holder and not expired(prev, now):
        return prev
    return Observation(record, now)


class Action(enum.Enum):
    CREATE = "create"  # no Lease yet: create it, holding it
    TAKE = "take"  # released or expired: take it over
    RENEW = "renew"  # ours: renew it
    WAIT = "wait"  # another replica holds it and it has not expired


def expired(obs: Observation, now: float) -> bool:
    return obs.record is not None and now >= obs.since + obs.record.duration_s


def decide(obs: Observation, me: str, now: float) -> Action:
    rec = obs.record
    if rec is None:
        return Action.CREATE
    if rec.holder == me:
        return Action.RENEW
    if not rec.holder or expired(obs, now):
        return Action.TAKE
    return Action.WAIT


def still_leading(last_renew: float, now: float, deadline: float = RENEW_DEADLINE_S) -> bool:
    """Whether the holder may still act: its last successful renew was *sent* less than `deadline` ago."""
    return now - last_renew < deadline


def next_wait(leading: bool, renewed: bool, obs: Observation | None, now: float, last_renew: float) -> float:
    """Seconds until the next look at the Lease: the holder renews every RENEW_PERIOD_S counted from when it sent the
    last renew (`last_renew`), so slow answers do not push the next renew past the fence's deadline (retrying every
    RETRY_S after a failure); a follower looks every RETRY_S, and exactly when the holder's lease runs out. Once it
    has run out, this look tried to take it and failed (or could not read it): the next try is RETRY_S later, as
    client-go's."""
    if leading:
        return max(0.0, last_renew + RENEW_PERIOD_S - now) if renewed else RETRY_S
    if obs is not None and obs.record is not None and obs.record.holder:
        remaining = obs.since + obs.record.duration_s - now
        return min(RETRY_S, remaining) if remaining > 0 else RETRY_S
    return RETRY_S


def micro_time(at: float | None = None) -> str:
    """A Lease MicroTime (RFC 3339, microseconds)."""
    return datetime.fromtimestamp(time.time() if at is None else at, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def lease_body(prev: dict[str, Any] | None, record: Record, me: str, action: Action, namespace: str,
               name: str, at: float | None = None) -> dict[str, Any]:  # fmt: skip
    """The Lease to write for `action` (with the read's resourceVersion, so a concurrent writer gets 409)."""
    stamp = micro_time(at)
    spec: dict[str, Any] = {
        "holderIdentity": me,
        "leaseDurationSeconds": LEASE_DURATION_S,
        "acquireTime": record.acquire_time or stamp,
        "renewTime": stamp,
        "leaseTransitions": record.transitions,
    }
    if action in (Action.CREATE, Action.TAKE):
        spec["acquireTime"] = stamp
        if action is Action.TAKE:
            spec["leaseTransitions"] = record.transitions + 1
    meta: dict[str, Any] = {"name": name, "namespace": namespace}
    if prev is not None:
        meta["resourceVersion"] = prev["metadata"]["resourceVersion"]
    return {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta, "spec": spec}


class Elector:
    """Runs the election in its own thread with its own connection pool (a busy reconcile does not delay a renew).

    `on_started` runs once, when this replica becomes the holder; `on_lost` when it stops being one without
    having released the Lease (after the fence is closed: the caller exits the process).
    """

    def __init__(
        self,
        kube: Kube,
        namespace: str,
        me: str,
        fence: Fence,
        on_started: Callable[[], object],
        on_lost: Callable[[str], object],
        name: str = LEASE_NAME,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.kube, self.namespace, self.me, self.fence, self.name = kube, namespace, me, fence, name
        self.on_started, self.on_lost, self.clock = on_started, on_lost, clock
        self.path = f"/apis/coordination.k8s.io/v1/namespaces/{quote(namespace)}/leases/{quote(name)}"
        self.stop = threading.Event()
        self.leading = False
        self.last_renew = 0.0
        self.obs: Observation | None = None
        self.lease: dict[str, Any] | None = None
        self._lock = threading.Lock()  # one Lease write at a time (the loop's, or release())
        self.thread: threading.Thread | None = None
        self.event_thread: threading.Thread | None = None  # the "became leader" Event's POST

    def start(self) -> threading.Thread:
        self.thread = threading.Thread(target=self.run, name="leader-election", daemon=True)
        self.thread.start()
        return self.thread

    def run(self) -> None:
        while not self.stop.is_set():
            renewed = self.step()
            self.stop.wait(next_wait(self.leading, renewed, self.obs, self.clock(), self.last_renew))

    def step(self) -> bool:
        """One look at the Lease and what follows from it; whether this replica holds it after a write now."""
        with self._lock:
            if self.stop.is_set():
                return False
            sent = self.clock()
            try:
                lease = self._get()
                self.lease = lease
                self.obs = observe(self.obs, Record.from_lease(lease) if lease else None, self.clock())
                action = decide(self.obs, self.me, self.clock())
                if self.leading and action is not Action.RENEW:
                    holder = self.obs.record.holder if self.obs.record else "nobody"
                    self._lose(f"the Lease is held by {holder or 'nobody'}")
                    return False
                if action is Action.WAIT:
                    return False
                self._write(action, lease)
            except Exception as exc:  # noqa: BLE001 - a failed look is retried; the deadline decides
                if self.leading and not still_leading(self.last_renew, self.clock()):
                    self._lose(f"no renew succeeded for {RENEW_DEADLINE_S:.0f}s: {exc}")
                elif self.leading or not isinstance(exc, ApiError) or exc.status != 409:
                    log.warning("leader election: %s", exc)
                return False
            self.last_renew = sent
            self.fence.extend(sent + RENEW_DEADLINE_S)
            if not self.leading:
                self.leading = True
                log.info("leader election: %s became leader (%s)", self.me, action.value)
                self.on_started()
                # On its own thread: a slow Event POST must not delay the next renew.
                self.event_thread = threading.Thread(target=self._event, args=("became leader",),
                                                     name="leader-event", daemon=True)  # fmt: skip
                self.event_thread.start()
            return True

    def _get(self) -> dict[str, Any] | None:
        try:
            lease: dict[str, Any] = self.kube.request("GET", self.path, timeout=REQUEST_TIMEOUT_S)
            return lease
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    def _write(self, action: Action, lease: dict[str, Any] | None) -> None:
        record = self.obs.record if self.obs and self.obs.record else Record()
        body = lease_body(lease, record, self.me, action, self.namespace, self.name)
        if action is Action.CREATE or lease is None:  # none to replace: a renew or take-over of one deleted creates it
            collection = self.path.rsplit("/", 1)[0]
            try:
                self.lease = self.kube.request("POST", collection, body, timeout=REQUEST_TIMEOUT_S)
            except ApiError as exc:
                if exc.status != 404:
                    raise
                # The namespace itself is missing (the reconciler creates it, but only a leader reconciles).
                ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": self.namespace}}
                self.kube.request("POST", "/api/v1/namespaces", ns)
                self.lease = self.kube.request("POST", collection, body, timeout=REQUEST_TIMEOUT_S)
        else:
            self.lease = self.kube.request("PUT", self.path, body, timeout=REQUEST_TIMEOUT_S)
        if self.lease is not None:
            self.obs = Observation(Record.from_lease(self.lease), self.clock())

    def _lose(self, why: str) -> None:
        self.fence.close()
        self.leading = False
        self.stop.set()
        self.on_lost(why)

    def _event(self, message: str) -> None:
        """An Event on the Lease, as client-go records one on each transition (best effort)."""
        meta = (self.lease or {}).get("metadata") or {}
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{self.name}.", "namespace": self.namespace},
            "involvedObject": {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "name": self.name,
                "namespace": self.namespace,
                "uid": meta.get("uid"),
            },  # fmt: skip
            "type": "Normal",
            "reason": "LeaderElection",
            "message": f"{self.me} {message}",
            "source": {"component": "gpu-operator"},
            "reportingComponent": "gpu-operator",
            "firstTimestamp": micro_time()[:19] + "Z",
            "lastTimestamp": micro_time()[:19] + "Z",
            "count": 1,
        }
        try:
            self.kube.request("POST", f"/api/v1/namespaces/{quote(self.namespace)}/events", body, timeout=5)
        except Exception as exc:  # noqa: BLE001 - the log line stays
            log.warning("leader election: could not record an event: %s", exc)

    def release(self) -> bool:
        """Give the Lease up (empty holder) so another replica takes over at once. Call after the fence is closed
        and the writes in flight are done. Whether it was released."""
        self.stop.set()
        with self._lock:
            if not self.leading or self.lease is None:
                return False
            self.leading = False
            record = Record.from_lease(self.lease)
            body = lease_body(self.lease, record, "", Action.RENEW, self.namespace, self.name)
            body["spec"]["leaseDurationSeconds"] = 1
            self._event("stopped leading, releasing the Lease")
            try:
                self.kube.request("PUT", self.path, body, timeout=5)
            except Exception as exc:  # noqa: BLE001 - the Lease then expires as usual
                log.warning("leader election: releasing the Lease failed (it expires in %ss): %s",
                            record.duration_s, exc)  # fmt: skip
                return False
            return True
