"""Node simulator: plays the parts of the GPU stack that kwok cannot fake (test infrastructure only).

It watches the operand pods in one namespace (label ``app.kubernetes.io/component`` = the operand state) and,
per node, makes the node look as it would on real hardware:

* ``state-driver`` pods: kwok leaves them Pending (see ``e2e/cluster/stages/pod-ready.yaml``); the simulator
  marks them Running and Ready.  ``_driver_pod_status`` is the one place that decides how a node's driver pod
  behaves, so a later change can make it become Ready after a delay (requeue the node with ``delay=``) or
  crash-loop (return a waiting/CrashLoopBackOff status with a growing restartCount).
* ``state-device-plugin`` pod Running and Ready on a node: the node's capacity and allocatable get
  ``nvidia.com/gpu`` = the GPU count of its profile; when no such pod is left, the resource is removed.
* ``gpu-feature-discovery`` pod Running and Ready: the node gets the labels of ``gfd_labels`` (CUDA driver labels
  from the image tag of the node's Ready driver pod, none without one); when the pod goes, they are removed.

Nodes are patched only when something changes.  Pods are watched (with a relist after any error and a periodic
resync), and nodes are reconciled by a few worker threads, one node at a time.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import re
import threading
import time
from collections import deque
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

_VERSION_RE = re.compile(r"^(\d+\.\d+(?:\.\d+)?)")


def driver_version_from_image(image: str) -> str | None:
    """``nvcr.io/nvidia/driver:595.91.07-ubuntu22.04`` -> ``595.91.07``; None when the tag has no version."""
    image = image.split("@", 1)[0]
    name, sep, tag = image.rpartition(":")
    if not sep or "/" in tag:
        return None
    m = _VERSION_RE.match(tag)
    return m.group(1) if m else None


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class _NodeQueue:
    """A work queue of node names: a name is queued at most once and handled by one worker at a time."""

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._ready: deque[str] = deque()
        self._queued: set[str] = set()
        self._active: set[str] = set()
        self._again: set[str] = set()
        self._delayed: list[tuple[float, int, str]] = []
        self._seq = itertools.count()
        self._closed = False

    def add(self, name: str, delay: float = 0.0) -> None:
        with self._cv:
            if delay > 0:
                heapq.heappush(self._delayed, (time.monotonic() + delay, next(self._seq), name))
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
                    _, _, name = heapq.heappop(self._delayed)
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
        with self._cv:
            return not (self._ready or self._active)

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()


class NodeSimulator:
    def __init__(
        self,
        kubeconfig: Path | str,
        namespace: str = "gpu-operator",
        *,
        mig_strategy: str = "single",
        resync_seconds: float = 10.0,
        workers: int = 4,
    ) -> None:
        self.namespace = namespace
        self.mig_strategy = mig_strategy
        self.resync_seconds = resync_seconds
        self._kube = Kube.from_kubeconfig(kubeconfig, pool_size=workers + 2)
        self._n_workers = workers
        self._lock = threading.Lock()
        self._pods: dict[str, dict[str, Any]] = {}  # by pod name
        self._touched: set[str] = set()  # nodes this simulator has changed
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
        """No node waits to be reconciled (useful in tests before checking that nothing changed)."""
        return self._queue.idle()

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
            else:
                self._pods[name] = pod
        for node in {_node_of(pod), _node_of(old) if old else None}:
            if node:
                self._queue.add(node)

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
                    comp = (pod["metadata"].get("labels") or {}).get(COMPONENT_LABEL, "")
                    by_component.setdefault(comp, []).append(pod)
        return by_component

    def _reconcile(self, node_name: str) -> None:
        pods = self._pods_on(node_name)
        node = self._kube.get_or_none(f"/api/v1/nodes/{node_name}")
        if node is None:
            return
        for pod in pods.get(DRIVER, []):
            self._sync_driver_pod(node, pod)
        profile = profile_of(node)
        if profile is None or not profile.has_gpu:
            return
        self._sync_device_plugin(node, profile, pods.get(DEVICE_PLUGIN, []))
        self._sync_gfd(node, profile, pods.get(GFD, []), pods.get(DRIVER, []))

    # driver
    def _sync_driver_pod(self, node: dict[str, Any], pod: dict[str, Any]) -> None:
        if pod["metadata"].get("deletionTimestamp"):
            return
        status = self._driver_pod_status(node, pod)
        if status is None:
            return
        self._kube.patch(f"/api/v1/namespaces/{self.namespace}/pods/{pod['metadata']['name']}/status",
                         {"status": status})

    def _driver_pod_status(self, node: dict[str, Any], pod: dict[str, Any]) -> dict[str, Any] | None:
        """The status to give a node's driver pod now, or None to leave it as it is.

        Today a driver pod becomes Running and Ready as soon as it is seen.  Per-node behaviour (a delay before
        Ready: return None and ``self._queue.add(node_name, delay=remaining)``; a crash loop: return a status
        with a waiting CrashLoopBackOff container and Ready=False) belongs here.
        """
        if pod_running_ready(pod):
            return None
        return self._running_ready_status(node, pod)

    def _running_ready_status(self, node: dict[str, Any], pod: dict[str, Any]) -> dict[str, Any]:
        now = _now()
        spec = pod.get("spec") or {}
        conditions = {c["type"]: c for c in (pod.get("status") or {}).get("conditions") or []}
        for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready"):
            conditions[t] = {"type": t, "status": "True", "lastTransitionTime": now}
        host_ip = next((a["address"] for a in (node.get("status") or {}).get("addresses") or []
                        if a.get("type") == "InternalIP"), None)
        status: dict[str, Any] = {
            "phase": "Running",
            "startTime": now,
            "conditions": list(conditions.values()),
            "containerStatuses": [
                {"name": c["name"], "image": c.get("image", ""), "imageID": "", "ready": True, "started": True,
                 "restartCount": 0, "state": {"running": {"startedAt": now}}}
                for c in spec.get("containers") or []
            ],
            "initContainerStatuses": [
                {"name": c["name"], "image": c.get("image", ""), "imageID": "", "ready": True, "restartCount": 0,
                 "state": {"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": now,
                                          "finishedAt": now}}}
                for c in spec.get("initContainers") or []
            ],
        }
        if host_ip:
            status["hostIP"] = host_ip
            status["hostIPs"] = [{"ip": host_ip}]
            if spec.get("hostNetwork"):
                status["podIP"], status["podIPs"] = host_ip, [{"ip": host_ip}]
        if "podIP" not in status:
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
            for p in driver_pods:
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


def _node_of(pod: dict[str, Any] | None) -> str | None:
    if not pod:
        return None
    return (pod.get("spec") or {}).get("nodeName") or None

