"""Node simulator: plays the parts of the GPU stack that kwok cannot fake (test infrastructure only).

It watches the operand pods in one namespace (label ``app.kubernetes.io/component`` = the operand state) and,
per node, makes the node look as it would on real hardware:

* ``state-driver`` pods: kwok leaves them Pending (see ``e2e/cluster/stages/pod-ready.yaml``); the simulator
  makes them Running.  A new driver pod becomes Ready ``driver_ready_delay`` seconds after it was created (0: at
  once; until then its containers run but are not ready, as while the driver compiles and loads).  On a node
  given to ``crash_loop_driver`` the driver pod stays Running and not Ready, its ``nvidia-driver-ctr``
  container waiting in CrashLoopBackOff with a restartCount that grows by one every ``crash_restart_seconds``;
  once the crash loop is turned off, the pod becomes Ready.  Labels (``controller-revision-hash``) are never
  touched: only the status is written.
* ``state-operator-validation`` pods: kwok leaves them Pending too.  The validator pod on a node is Running and
  Ready while the node's driver pod is Running and Ready, and Running but not Ready (its driver-validation init
  container waiting) otherwise: while the driver pod starts, crash-loops, or is gone because it was deleted and
  its DaemonSet has not recreated it yet.  A node that no driver DaemonSet targets (driver disabled, or the
  node opted out) counts as having a host driver: its validator is Ready.
* ``state-device-plugin`` pod Running and Ready on a node: the node's capacity and allocatable get
  ``nvidia.com/gpu`` = the GPU count of its profile; when no such pod is left, the resource is removed.
* ``gpu-feature-discovery`` pod Running and Ready: the node gets the labels of ``gfd_labels`` (CUDA driver labels
  from the image tag of the node's Ready driver pod, none without one); when the pod goes, they are removed.

Nodes and pods are patched only when something changes.  Pods are watched (with a relist after any error and a
periodic resync), and nodes are reconciled by a few worker threads, one node at a time; timed changes (a delay
ending, the next restart of a crash loop) requeue the node for that moment.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import logging
import math
import re
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from e2e.cluster.nodes import GFD_LABEL_KEYS, PROFILE_LABEL, Profile, gfd_labels, profile_of
from e2e.kube import Kube, pod_running_ready

log = logging.getLogger("e2e.simulator")

COMPONENT_LABEL = "app.kubernetes.io/component"
DRIVER = "state-driver"
DEVICE_PLUGIN = "state-device-plugin"
GFD = "gpu-feature-discovery"
VALIDATOR = "state-operator-validation"
GPU_RESOURCE = "nvidia.com/gpu"
TIMESTAMP_LABEL = "nvidia.com/gfd.timestamp"
DRIVER_CONTAINER = "nvidia-driver-ctr"
DRIVER_DAEMONSET_TTL = 1.0  # seconds a listing of the driver DaemonSets is reused (validator of a driverless node)
NO_DRIVER_POD_RECHECK = 2.0  # seconds: how often a node waiting for its driver pod to be recreated is looked at

_VERSION_RE = re.compile(r"^(\d+\.\d+(?:\.\d+)?)")


def driver_version_from_image(image: str) -> str | None:
    """``nvcr.io/nvidia/driver:595.91.07-ubuntu22.04`` -> ``595.91.07``; None when the tag has no version."""
    image = image.split("@", 1)[0]
    name, sep, tag = image.rpartition(":")
    if not sep or "/" in tag:
        return None
    m = _VERSION_RE.match(tag)
    return m.group(1) if m else None


def image_id(image: str) -> str:
    """A stable fake ``imageID`` as containerd reports it: ``repo@sha256:<digest>``."""
    if "@sha256:" in image:
        return image
    name, sep, tag = image.rpartition(":")
    repo = name if sep and "/" not in tag else image
    return f"{repo}@sha256:{hashlib.sha256(image.encode()).hexdigest()}"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(ts: str | None) -> float | None:
    if not ts:
        return None
    try:
        return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class _NodeQueue:
    """A work queue of node names: a name is queued at most once and handled by one worker at a time.

    ``add(name, delay)`` queues the name once ``delay`` seconds have passed; of several delayed adds of one name
    only the earliest is kept (a reconcile asks again for whatever later moment it still needs).
    """

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._ready: deque[str] = deque()
        self._queued: set[str] = set()
        self._active: set[str] = set()
        self._again: set[str] = set()
        self._delayed: list[tuple[float, int, str]] = []
        self._due: dict[str, float] = {}  # name -> the deadline of its live entry in _delayed
        self._seq = itertools.count()
        self._closed = False

    def add(self, name: str, delay: float = 0.0) -> None:
        with self._cv:
            if delay > 0:
                when = time.monotonic() + delay
                due = self._due.get(name)
                if due is not None and due <= when:
                    return
                self._due[name] = when
                heapq.heappush(self._delayed, (when, next(self._seq), name))
            elif name in self._active:
                self._again.add(name)
            elif name not in self._queued:
                self._queued.add(name)
                self._ready.append(name)
            self._cv.notify()

    def get(self) -> str | None:
        with self._cv:
            while True:
                if self._closed:
                    return None
                now = time.monotonic()
                while self._delayed and self._delayed[0][0] <= now:
                    when, _, name = heapq.heappop(self._delayed)
                    if self._due.get(name) != when:
                        continue  # superseded by an earlier deadline
                    del self._due[name]
                    if name in self._active:
                        self._again.add(name)
                    elif name not in self._queued:
                        self._queued.add(name)
                        self._ready.append(name)
                if self._ready:
                    name = self._ready.popleft()
                    self._queued.discard(name)
                    self._active.add(name)
                    return name
                wait = self._delayed[0][0] - now if self._delayed else None
                self._cv.wait(wait)

    def done(self, name: str) -> None:
        with self._cv:
            self._active.discard(name)
            if name in self._again:
                self._again.discard(name)
                self._queued.add(name)
                self._ready.append(name)
                self._cv.notify()

    def idle(self) -> bool:
        """Nothing is queued to run now or running (delayed adds do not count)."""
        with self._cv:
            return not (self._ready or self._active)

    def pending(self) -> dict[str, float]:
        """Delayed names and the seconds until they are queued."""
        with self._cv:
            now = time.monotonic()
            return {name: max(0.0, when - now) for name, when in self._due.items()}

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()


@dataclass(frozen=True)
class _Seen:
    """When the simulator first saw a driver pod (monotonic seconds) and how it was then."""

    first_seen: float
    created: float  # monotonic estimate of creationTimestamp (which has whole seconds: up to 1 s too early)
    ready: bool  # already Running+Ready then (made so by an earlier simulator): no delay applies


class NodeSimulator:
    def __init__(
        self,
        kubeconfig: Path | str,
        namespace: str = "gpu-operator",
        *,
        mig_strategy: str = "single",
        resync_seconds: float = 10.0,
        workers: int = 4,
        driver_ready_delay: float = 0.0,
        crash_restart_seconds: float = 2.0,
    ) -> None:
        if driver_ready_delay < 0 or crash_restart_seconds <= 0:
            raise ValueError("driver_ready_delay must be >= 0 and crash_restart_seconds > 0")
        self.namespace = namespace
        self.mig_strategy = mig_strategy
        self.resync_seconds = resync_seconds
        self.crash_restart_seconds = crash_restart_seconds
        self._driver_ready_delay = float(driver_ready_delay)
        self._kube = Kube.from_kubeconfig(kubeconfig, pool_size=workers + 2)
        self._n_workers = workers
        self._lock = threading.Lock()
        self._pods: dict[str, dict[str, Any]] = {}  # by pod name
        self._touched: set[str] = set()  # nodes this simulator has changed
        self._seen: dict[str, _Seen] = {}  # driver pods by uid
        self._crash_nodes: set[str] = set()
        self._crashes: dict[str, tuple[float, int]] = {}  # driver pod uid -> (crash loop start, restarts before)
        self._restarts: dict[str, int] = {}  # driver pod uid -> the restartCount last written
        self._driver_ds: tuple[float, list[dict[str, str]]] | None = None  # (when listed, node selectors)
        self._queue = _NodeQueue()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._watch_response: list[Any] = []
        self._pod_ips = itertools.count(1)
        self.errors: list[str] = []  # recent reconcile/watch errors, for test diagnostics

    # --- lifecycle ---
    def start(self) -> NodeSimulator:
        if self._threads:
            raise RuntimeError("simulator already started")
        self._stop.clear()
        self._threads = [threading.Thread(target=self._watch_loop, name="sim-watch", daemon=True)]
        self._threads += [
            threading.Thread(target=self._worker, name=f"sim-worker-{i}", daemon=True)
            for i in range(self._n_workers)
        ]
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._queue.close()
        for resp in list(self._watch_response):
            try:
                resp.shutdown()
            except Exception:  # noqa: BLE001 - best effort to end a blocking read
                pass
        for t in self._threads:
            t.join(timeout=10)
        self._threads = []
        self._kube.close()

    def __enter__(self) -> NodeSimulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def idle(self) -> bool:
        """No node waits to be reconciled (useful in tests before checking that nothing changed).

        Timed work (a driver pod's delay, a crash loop's next restart) does not count.
        """
        return self._queue.idle()

    # --- driver behaviour ---
    @property
    def driver_ready_delay(self) -> float:
        return self._driver_ready_delay

    def set_driver_ready_delay(self, seconds: float) -> None:
        """Driver pods become Ready ``seconds`` after their creation (or first sight); applies to pods not yet Ready.

        Pods already Ready stay Ready.  A pod now waiting is judged by the new delay at once.
        """
        if seconds < 0:
            raise ValueError("delay must be >= 0")
        self._driver_ready_delay = float(seconds)
        self._requeue_driver_nodes()

    def crash_loop_driver(self, node_name: str, on: bool = True) -> None:
        """Make the driver pod on ``node_name`` crash-loop (``on``), or stop that (the pod then becomes Ready).

        Applies to the node's current driver pod and to the pods that replace it while it is on.
        """
        with self._lock:
            if on:
                self._crash_nodes.add(node_name)
            else:
                self._crash_nodes.discard(node_name)
        self._queue.add(node_name)

    def crash_looping(self) -> set[str]:
        """The nodes whose driver is crash-looping (as set by ``crash_loop_driver``)."""
        with self._lock:
            return set(self._crash_nodes)

    def _requeue_driver_nodes(self) -> None:
        with self._lock:
            nodes = {_node_of(p) for p in self._pods.values() if _component(p) in (DRIVER, VALIDATOR)}
        for node in nodes:
            if node:
                self._queue.add(node)

    # --- watching pods ---
    def _watch_loop(self) -> None:
        rv = ""
        next_resync = 0.0
        path = f"/api/v1/namespaces/{self.namespace}/pods"
        while not self._stop.is_set():
            try:
                if not rv:
                    rv = self._relist(path)
                    next_resync = time.monotonic() + self.resync_seconds
                for event in self._kube.watch(path, rv, timeout_seconds=max(int(self.resync_seconds), 1),
                                              handle=self._watch_response):
                    kind, obj = event.get("type"), event.get("object") or {}
                    if kind == "ERROR":
                        rv = ""  # expired (410) or broken: relist
                        break
                    rv = obj.get("metadata", {}).get("resourceVersion") or rv
                    if kind in ("ADDED", "MODIFIED", "DELETED"):
                        self._on_pod(kind, obj)
                    if self._stop.is_set():
                        return
                if time.monotonic() >= next_resync:
                    self._resync()
                    next_resync = time.monotonic() + self.resync_seconds
            except Exception as e:  # noqa: BLE001 - reconnect on anything
                if self._stop.is_set():
                    return
                self._note_error(f"watch: {e!r}")
                rv = ""
                self._stop.wait(1.0)

    def _relist(self, path: str) -> str:
        listing = self._kube.get(path)
        pods = {p["metadata"]["name"]: p for p in listing.get("items") or []}
        # Nodes left with simulated state (by an earlier simulator, say) are reconciled too, so that state goes
        # when there are no pods for it any more.
        stale = {
            n["metadata"]["name"]
            for n in self._kube.items("/api/v1/nodes", labelSelector=PROFILE_LABEL)
            if GPU_RESOURCE in ((n.get("status") or {}).get("capacity") or {})
            or any(k in GFD_LABEL_KEYS for k in n["metadata"].get("labels") or {})
        }
        with self._lock:
            old = self._pods
            self._pods = pods
            self._touched |= stale
            uids = {_uid(p) for p in pods.values()}
            for memo in (self._seen, self._crashes, self._restarts):
                for uid in [u for u in memo if u not in uids]:
                    del memo[uid]
            for pod in pods.values():
                self._note_seen(pod)
            nodes = {_node_of(p) for p in list(old.values()) + list(pods.values())} | self._touched
        for node in nodes:
            if node:
                self._queue.add(node)
        return str(listing["metadata"]["resourceVersion"])

    def _resync(self) -> None:
        with self._lock:
            nodes = {_node_of(p) for p in self._pods.values()} | self._touched
        for node in nodes:
            if node:
                self._queue.add(node)

    def _on_pod(self, kind: str, pod: dict[str, Any]) -> None:
        name = pod["metadata"]["name"]
        with self._lock:
            old = self._pods.get(name)
            if kind == "DELETED":
                self._pods.pop(name, None)
                uid = _uid(pod)
                self._seen.pop(uid, None)
                self._crashes.pop(uid, None)
                self._restarts.pop(uid, None)
            elif old is None or _uid(old) != _uid(pod) or not _older(pod, old):
                # (an event older than what a status patch of ours returned is skipped)
                self._pods[name] = pod
                self._note_seen(pod)
        for node in {_node_of(pod), _node_of(old) if old else None}:
            if node:
                self._queue.add(node)

    def _note_seen(self, pod: dict[str, Any]) -> None:
        """Remember when a driver pod was first seen (with the lock held)."""
        uid = _uid(pod)
        if _component(pod) != DRIVER or not uid or uid in self._seen:
            return
        mono, wall = time.monotonic(), time.time()
        created = _parse_time(pod["metadata"].get("creationTimestamp"))
        age = max(0.0, wall - created) if created is not None else 0.0
        self._seen[uid] = _Seen(first_seen=mono, created=mono - age, ready=pod_running_ready(pod))

    # --- reconciling nodes ---
    def _worker(self) -> None:
        while True:
            node = self._queue.get()
            if node is None:
                return
            try:
                self._reconcile(node)
            except Exception as e:  # noqa: BLE001 - keep going; retry the node later
                if self._stop.is_set():
                    return
                self._note_error(f"node {node}: {e!r}")
                self._queue.add(node, delay=1.0)
            finally:
                self._queue.done(node)

    def _note_error(self, msg: str) -> None:
        log.warning("simulator: %s", msg)
        self.errors = (self.errors + [msg])[-50:]

    def _pods_on(self, node: str) -> dict[str, list[dict[str, Any]]]:
        by_component: dict[str, list[dict[str, Any]]] = {}
        with self._lock:
            for pod in self._pods.values():
                if _node_of(pod) == node:
                    by_component.setdefault(_component(pod), []).append(pod)
        return by_component

    def _reconcile(self, node_name: str) -> None:
        pods = self._pods_on(node_name)
        node = self._kube.get_or_none(f"/api/v1/nodes/{node_name}")
        if node is None:
            return
        wake: list[float] = []
        drivers = []
        for pod in pods.get(DRIVER, []):
            pod, again = self._sync_driver_pod(node, pod)
            drivers.append(pod)
            if again is not None:
                wake.append(again)
        for pod in pods.get(VALIDATOR, []):
            again = self._sync_validator_pod(node, pod, drivers)
            if again is not None:
                wake.append(again)
        if wake:
            self._queue.add(node_name, delay=max(min(wake), 0.01))
        profile = profile_of(node)
        if profile is None or not profile.has_gpu:
            return
        self._sync_device_plugin(node, profile, pods.get(DEVICE_PLUGIN, []))
        self._sync_gfd(node, profile, pods.get(GFD, []), drivers)

    def _patch_pod_status(self, pod: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
        """Write a pod's status (merge patch: lists are replaced whole; labels are not touched)."""
        name = pod["metadata"]["name"]
        new: dict[str, Any] = self._kube.patch(f"/api/v1/namespaces/{self.namespace}/pods/{name}/status",
                                               {"status": status})
        with self._lock:
            cur = self._pods.get(name)
            if cur is not None and _uid(cur) == _uid(new) and not _older(new, cur):
                self._pods[name] = new
        return new

    # driver
    def _sync_driver_pod(self, node: dict[str, Any], pod: dict[str, Any]) -> tuple[dict[str, Any], float | None]:
        """Bring a driver pod's status to what it should be now: (the pod as it is then, seconds until next)."""
        if pod["metadata"].get("deletionTimestamp"):
            return pod, None
        status, again = self._driver_pod_status(node, pod)
        if status is not None:
            pod = self._patch_pod_status(pod, status)
        return pod, again

    def _driver_pod_status(
        self, node: dict[str, Any], pod: dict[str, Any], now: float | None = None
    ) -> tuple[dict[str, Any] | None, float | None]:
        """The status to give a node's driver pod now (None: it has it already) and the seconds until it changes.

        Crash-looping node: Running, the driver container waiting in CrashLoopBackOff, restartCount one higher
        every ``crash_restart_seconds``.  Otherwise: Running, containers started but not ready until the pod's
        delay has passed, then Running and Ready.
        """
        now = time.monotonic() if now is None else now
        uid = _uid(pod)
        node_name = node["metadata"]["name"]
        spec = pod.get("spec") or {}
        containers = spec.get("containers") or []
        crash_name = next((c["name"] for c in containers if c["name"] == DRIVER_CONTAINER),
                          containers[0]["name"] if containers else None)
        old_restarts = _restart_counts(pod)
        with self._lock:
            crashing = node_name in self._crash_nodes
            if crash_name is not None:
                old_restarts[crash_name] = max(old_restarts.get(crash_name, 0), self._restarts.get(uid, 0))
            start, base = now, 0
            if crashing:
                start, base = self._crashes.setdefault(uid, (now, old_restarts.get(crash_name or "", 0)))
            else:
                self._crashes.pop(uid, None)
            seen = self._seen.get(uid)
            if seen is None:
                seen = self._seen[uid] = _Seen(first_seen=now, created=now, ready=pod_running_ready(pod))
            delay = self._driver_ready_delay
        again: float | None
        init = [_completed(c) for c in spec.get("initContainers") or []]
        if crashing:
            elapsed = max(0.0, now - start)
            period = self.crash_restart_seconds
            again = period - (elapsed % period)
            with self._lock:
                restarts = max(base + 1 + int(elapsed // period), self._restarts.get(uid, 0))
                self._restarts[uid] = restarts
            statuses = [
                _crash_looping(c, pod, restarts) if c["name"] == crash_name
                else _running(c, ready=True, restarts=old_restarts.get(c["name"], 0))
                for c in containers
            ]
        else:
            ready_at = -math.inf if seen.ready else min(seen.first_seen, seen.created + 1.0) + delay
            ready = now >= ready_at
            again = None if ready else ready_at - now
            statuses = [_running(c, ready=ready, restarts=old_restarts.get(c["name"], 0)) for c in containers]
        status = self._pod_status(node, pod, statuses, init)
        return (None if _same_status(status, pod.get("status") or {}) else status), again

    # validator
    def _sync_validator_pod(
        self, node: dict[str, Any], pod: dict[str, Any], drivers: list[dict[str, Any]]
    ) -> float | None:
        if pod["metadata"].get("deletionTimestamp"):
            return None
        status, again = self._validator_pod_status(node, pod, drivers)
        if status is not None:
            self._patch_pod_status(pod, status)
        return again

    def _validator_pod_status(
        self, node: dict[str, Any], pod: dict[str, Any], drivers: list[dict[str, Any]]
    ) -> tuple[dict[str, Any] | None, float | None]:
        """Ready while the node's driver pod is Running+Ready (or the node has no driver DaemonSet at all)."""
        again: float | None = None
        if any(pod_running_ready(d) for d in drivers):
            ready = True
        elif any(not d["metadata"].get("deletionTimestamp") for d in drivers):
            ready = False  # the driver pod is starting or crash-looping: its events requeue the node
        else:
            expected = self._driver_expected(node)
            ready = not expected
            if expected:
                again = NO_DRIVER_POD_RECHECK  # its DaemonSet may go away without a pod event on this node
        spec = pod.get("spec") or {}
        if ready:
            init = [_completed(c) for c in spec.get("initContainers") or []]
            statuses = [_running(c, ready=True, restarts=0) for c in spec.get("containers") or []]
        else:
            # The first init container (driver-validation) waits for the driver; the others have not started.
            init = [_running(c, ready=False, restarts=0, started=True) if i == 0 else _waiting(c, "PodInitializing")
                    for i, c in enumerate(spec.get("initContainers") or [])]
            statuses = [_waiting(c, "PodInitializing") if init else _running(c, ready=False, restarts=0)
                        for c in spec.get("containers") or []]
        status = self._pod_status(node, pod, statuses, init)
        return (None if _same_status(status, pod.get("status") or {}) else status), again

    def _driver_expected(self, node: dict[str, Any]) -> bool:
        """Whether a driver DaemonSet in the namespace targets this node (by its pod template's nodeSelector)."""
        now = time.monotonic()
        with self._lock:
            cached = self._driver_ds
        if cached is None or now - cached[0] > DRIVER_DAEMONSET_TTL:
            selectors = [
                dict((ds["spec"]["template"].get("spec") or {}).get("nodeSelector") or {})
                for ds in self._kube.items(f"/apis/apps/v1/namespaces/{self.namespace}/daemonsets")
                if not ds["metadata"].get("deletionTimestamp")
                and ((ds["spec"]["template"].get("metadata") or {}).get("labels") or {}).get(COMPONENT_LABEL)
                == DRIVER
            ]
            cached = (now, selectors)
            with self._lock:
                self._driver_ds = cached
        labels = node["metadata"].get("labels") or {}
        return any(all(labels.get(k) == v for k, v in sel.items()) for sel in cached[1])

    def _pod_status(
        self, node: dict[str, Any], pod: dict[str, Any], containers: list[dict[str, Any]],
        init_containers: list[dict[str, Any]],
    ) -> dict[str, Any]:
        """A Running pod status with these container statuses; what did not change keeps its timestamps and IPs."""
        now = _now()
        old = pod.get("status") or {}
        spec = pod.get("spec") or {}
        initialized = all(cs["ready"] or "terminated" in cs["state"] for cs in init_containers)
        containers_ready = initialized and all(cs["ready"] for cs in containers)
        want = {"PodScheduled": True, "Initialized": initialized, "ContainersReady": containers_ready,
                "Ready": containers_ready}
        for gate in spec.get("readinessGates") or []:
            want[gate["conditionType"]] = containers_ready
        conditions = {c["type"]: c for c in old.get("conditions") or []}
        for t, ok in want.items():
            value = "True" if ok else "False"
            c = conditions.get(t)
            if c is None or c.get("status") != value:
                c = {"type": t, "status": value, "lastTransitionTime": now}
                if not ok and t in ("ContainersReady", "Ready"):
                    c["reason"] = "ContainersNotReady" if initialized else "ContainersNotInitialized"
                elif not ok and t == "Initialized":
                    c["reason"] = "ContainersNotInitialized"
                conditions[t] = c
        olds = {cs.get("name"): cs for cs in old.get("containerStatuses") or []}
        old_inits = {cs.get("name"): cs for cs in old.get("initContainerStatuses") or []}
        status: dict[str, Any] = {
            "phase": "Running",
            "startTime": old.get("startTime") or now,
            "conditions": list(conditions.values()),
            "containerStatuses": [_keep_times(cs, olds.get(cs["name"]), now, _uid(pod)) for cs in containers],
            "initContainerStatuses": [
                _keep_times(cs, old_inits.get(cs["name"]), now, _uid(pod)) for cs in init_containers],
        }
        host_ip = old.get("hostIP") or next(
            (a["address"] for a in (node.get("status") or {}).get("addresses") or [] if a.get("type") == "InternalIP"),
            None)
        if host_ip:
            status["hostIP"] = host_ip
            status["hostIPs"] = [{"ip": host_ip}]
        if old.get("podIP"):
            status["podIP"], status["podIPs"] = old["podIP"], old.get("podIPs") or [{"ip": old["podIP"]}]
        elif host_ip and spec.get("hostNetwork"):
            status["podIP"], status["podIPs"] = host_ip, [{"ip": host_ip}]
        else:
            n = next(self._pod_ips)
            ip = f"10.192.{(n // 250) % 256}.{n % 250 + 1}"
            status["podIP"], status["podIPs"] = ip, [{"ip": ip}]
        return status

    # device plugin
    def _sync_device_plugin(self, node: dict[str, Any], profile: Profile, pods: list[dict[str, Any]]) -> None:
        want = str(profile.gpu_count) if any(pod_running_ready(p) for p in pods) else None
        status = node.get("status") or {}
        have_cap = (status.get("capacity") or {}).get(GPU_RESOURCE)
        have_alloc = (status.get("allocatable") or {}).get(GPU_RESOURCE)
        if have_cap == want and have_alloc == want:
            return
        name = node["metadata"]["name"]
        log.info("simulator: node %s %s=%s", name, GPU_RESOURCE, want)
        self._kube.patch(f"/api/v1/nodes/{name}/status",
                         {"status": {"capacity": {GPU_RESOURCE: want}, "allocatable": {GPU_RESOURCE: want}}})
        with self._lock:
            self._touched.add(name)

    # gpu feature discovery
    def _sync_gfd(
        self, node: dict[str, Any], profile: Profile, gfd_pods: list[dict[str, Any]],
        driver_pods: list[dict[str, Any]],
    ) -> None:
        want: dict[str, str] = {}
        if any(pod_running_ready(p) for p in gfd_pods):
            version = None
            # the newest Ready driver pod (during an upgrade the old one may still be there, being deleted)
            for p in sorted(driver_pods, key=lambda p: p["metadata"].get("creationTimestamp") or "", reverse=True):
                if pod_running_ready(p):
                    containers = (p.get("spec") or {}).get("containers") or []
                    version = next(
                        (v for c in containers if (v := driver_version_from_image(c.get("image", "")))), None)
                    if version:
                        break
            want = gfd_labels(profile, version, self.mig_strategy)
        labels = node["metadata"].get("labels") or {}
        have = {k: v for k, v in labels.items() if k in GFD_LABEL_KEYS}
        same = {k: v for k, v in have.items() if k != TIMESTAMP_LABEL} == {
            k: v for k, v in want.items() if k != TIMESTAMP_LABEL}
        if same and (TIMESTAMP_LABEL in have) == (TIMESTAMP_LABEL in want):
            return
        patch: dict[str, str | None] = {k: None for k in have if k not in want}
        patch.update(want)
        name = node["metadata"]["name"]
        log.info("simulator: node %s GFD labels %s", name, "set" if want else "removed")
        self._kube.patch(f"/api/v1/nodes/{name}", {"metadata": {"labels": patch}})
        with self._lock:
            self._touched.add(name)


# --- container statuses ---

def _base(c: dict[str, Any], restarts: int) -> dict[str, Any]:
    image = c.get("image", "")
    return {"name": c["name"], "image": image, "imageID": image_id(image), "restartCount": restarts}


def _running(c: dict[str, Any], *, ready: bool, restarts: int, started: bool | None = None) -> dict[str, Any]:
    cs = _base(c, restarts)
    cs.update({"ready": ready, "started": ready if started is None else started, "state": {"running": {}}})
    return cs


def _waiting(c: dict[str, Any], reason: str, message: str = "", restarts: int = 0) -> dict[str, Any]:
    cs = _base(c, restarts)
    waiting = {"reason": reason, "message": message} if message else {"reason": reason}
    cs.update({"ready": False, "started": False, "state": {"waiting": waiting}})
    return cs


def _completed(c: dict[str, Any]) -> dict[str, Any]:
    cs = _base(c, 0)
    cs.update({"ready": True, "started": False,
               "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}})
    return cs


def _crash_looping(c: dict[str, Any], pod: dict[str, Any], restarts: int) -> dict[str, Any]:
    meta = pod["metadata"]
    backoff = min(10 * 2 ** max(restarts - 1, 0), 300)
    message = (f"back-off {backoff // 60}m{backoff % 60}s restarting failed container={c['name']} "
               f"pod={meta['name']}_{meta.get('namespace', '')}({meta.get('uid', '')})")
    cs = _waiting(c, "CrashLoopBackOff", message, restarts)
    cs["lastState"] = {"terminated": {"exitCode": 1, "reason": "Error"}}
    return cs


def _keep_times(cs: dict[str, Any], old: dict[str, Any] | None, now: str, uid: str) -> dict[str, Any]:
    """Fill in a container status's times and containerID, keeping the old ones when its state did not change."""
    same_restarts = old is not None and int(old.get("restartCount") or 0) == cs["restartCount"]
    if old is not None and old.get("lastState") and (same_restarts or "lastState" not in cs):
        cs["lastState"] = old["lastState"]
    if old is not None and same_restarts and _state_key(old.get("state")) == _state_key(cs["state"]):
        cs["state"] = old["state"]
    else:
        for kind, detail in cs["state"].items():
            if kind == "running":
                detail.setdefault("startedAt", now)
            elif kind == "terminated":
                detail.setdefault("startedAt", now)
                detail.setdefault("finishedAt", now)
                detail.setdefault("containerID", _container_id(uid, cs["name"], cs["restartCount"]))
        for detail in (cs.get("lastState") or {}).values():
            detail.setdefault("startedAt", now)
            detail.setdefault("finishedAt", now)
            detail.setdefault("containerID", _container_id(uid, cs["name"], max(cs["restartCount"] - 1, 0)))
    if "running" in cs["state"]:
        cs["containerID"] = _container_id(uid, cs["name"], cs["restartCount"])
    return cs


def _container_id(uid: str, name: str, restarts: int) -> str:
    return "containerd://" + hashlib.sha256(f"{uid}/{name}/{restarts}".encode()).hexdigest()


def _state_key(state: dict[str, Any] | None) -> tuple[str, str]:
    for kind, detail in (state or {}).items():
        return kind, str((detail or {}).get("reason") or "")
    return "", ""


def _status_key(status: dict[str, Any]) -> tuple[Any, ...]:
    """What the simulator decides about a pod status (not its timestamps)."""
    def containers(key: str) -> tuple[Any, ...]:
        return tuple(sorted(
            (str(cs.get("name")), bool(cs.get("ready")), int(cs.get("restartCount") or 0), _state_key(cs.get("state")),
             cs.get("image"), cs.get("imageID"))
            for cs in status.get(key) or []))

    conditions = tuple(sorted((str(c.get("type")), str(c.get("status"))) for c in status.get("conditions") or []))
    return (status.get("phase"), conditions, containers("containerStatuses"), containers("initContainerStatuses"),
            bool(status.get("podIP")))


def _same_status(want: dict[str, Any], have: dict[str, Any]) -> bool:
    return _status_key(want) == _status_key(have)


def _restart_counts(pod: dict[str, Any]) -> dict[str, int]:
    return {str(cs.get("name")): int(cs.get("restartCount") or 0)
            for cs in (pod.get("status") or {}).get("containerStatuses") or []}


# --- pods ---

def _node_of(pod: dict[str, Any] | None) -> str | None:
    if not pod:
        return None
    return (pod.get("spec") or {}).get("nodeName") or None


def _uid(pod: dict[str, Any]) -> str:
    return str(pod["metadata"].get("uid") or "")


def _component(pod: dict[str, Any]) -> str:
    return str((pod["metadata"].get("labels") or {}).get(COMPONENT_LABEL, ""))


def _older(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether object ``a`` is an older version than ``b`` (by resourceVersion, when both are numbers)."""
    ra, rb = a["metadata"].get("resourceVersion") or "", b["metadata"].get("resourceVersion") or ""
    return ra.isdigit() and rb.isdigit() and int(ra) < int(rb)
