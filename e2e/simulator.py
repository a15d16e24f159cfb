"""Node simulator: the kubelet and NVIDIA components of every fake node of the local cluster (test infrastructure).

It watches the operand pods of one namespace (label ``app.kubernetes.io/managed-by=gpu-operator``; kwok leaves
those to it, see ``e2e/cluster/stages/pod-ready.yaml``) and runs each node through ``e2e.nodemodel.NodeModel``,
which decides from the pod specs alone what the kubelet and the components would do: which pods start, which
init containers wait, which files appear under the host's ``/run/nvidia/validations``, which runtime handlers the
toolkit configures.  This adapter writes the outcome to the API server:

* pod statuses (only the status; labels such as ``controller-revision-hash`` are never touched), and the kubelet's
  Warning events (``FailedCreatePodSandBox`` while a pod's runtime handler is missing; once per pod);
* ``nvidia.com/gpu`` in the node's capacity and allocatable while a device plugin runs on it;
* the GFD labels of ``gfd_labels`` while GPU feature discovery runs (CUDA driver labels from the driver the node
  has: the running driver container's image tag, or the pre-installed one).

A node's container runtime comes from ``status.nodeInfo.containerRuntimeVersion`` (containerd or cri-o), its GPUs
from its profile, a pre-installed driver from the annotation ``e2e.gpu-operator/host-driver``.  The host state
lives in this process: a new simulator starts from fresh hosts.  Driver containers (those whose startup probe writes
a file) are started ``driver_ready_delay`` seconds after their pod was created, or crash-loop on the nodes given to
``crash_loop_driver`` (restartCount one higher every ``crash_restart_seconds``).  k8s-driver-manager waits
``manager_grace_seconds`` for each app's operand pods to go (upstream: 5 minutes, longer than the tests wait), then
sets the labels back, fails and tries again ``crash_restart_seconds`` later.  ``diagnose(node)`` says what the
node's pods wait for, naming deadlocks.

Nodes and pods are patched only when something changes.  Pods are watched (with a relist after any error and a
periodic resync), and nodes are reconciled by a few worker threads, one node at a time; timed changes requeue the
node for that moment.
"""

from __future__ import annotations

import base64
import binascii
import heapq
import itertools
import json
import logging
import threading
import time
from collections import deque
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes import client

from e2e import advertise as adv
from e2e.cluster.nodes import HOST_DRIVER_ANNOTATION, PROFILE_LABEL, gfd_labels, profile_of
from e2e.kube import Kube
from e2e.nodemodel import (
    Finding,
    NodeModel,
    World,
    driver_version_from_image,
    image_id,
    new_host,
    os_of,
    pod_status,
    runtime_of,
    same_status,
)
from e2e.sim_mig import MigSim

log = logging.getLogger("e2e.simulator")

MANAGED_SELECTOR = "app.kubernetes.io/managed-by=gpu-operator"
GPU_RESOURCE = "nvidia.com/gpu"
TIMESTAMP_LABEL = "nvidia.com/gfd.timestamp"
WORLD_TTL = 1.0  # seconds a listing of RuntimeClasses, ConfigMaps and DaemonSets is reused
# Parts of a pod's spec alike on every pod of one DaemonSet revision: the simulator holds one copy of each (at 1,000
# nodes its ~6,700 pods held 186 MiB of specs, and 230 MiB of managedFields, which nothing here reads).
SHARED_SPEC = ("containers", "initContainers", "volumes", "tolerations")

__all__ = ["NodeSimulator", "MANAGED_SELECTOR", "driver_version_from_image", "image_id"]


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _files(cm: dict[str, Any]) -> dict[str, str]:
    """The files a ConfigMap volume holds: data's keys and binaryData's (decoded)."""
    out = {}
    for k, v in (cm.get("binaryData") or {}).items():
        try:
            out[k] = base64.b64decode(v).decode(errors="replace")
        except (binascii.Error, TypeError):
            out[k] = ""
    return {**out, **dict(cm.get("data") or {})}


class _NodeQueue:
    """A work queue of node names: a name is queued at most once and handled by one worker at a time.

    ``add(name, delay)`` queues the name once ``delay`` seconds have passed; of several delayed adds of one name
    only the earliest is kept (a reconcile asks again for whatever later moment it still needs). ``background``
    adds (the periodic resync) wait behind the others, so a node's next step is not queued behind a look at every
    node: at 5,000 nodes one resync's looks took longer than the resync period, and each step of a joining node's
    start-up waited a whole round of them (its mig-manager's report came after 10 minutes).
    """

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._ready: deque[str] = deque()
        self._background: deque[str] = deque()  # names in it and not in `_behind` were moved to `_ready`
        self._behind: set[str] = set()  # the names queued in the background
        self._queued: set[str] = set()  # queued in either
        self._active: set[str] = set()
        self._again: set[str] = set()  # looked at now, queued again once done (ahead)
        self._again_behind: set[str] = set()  # and in the background (a resync's add)
        self._delayed: list[tuple[float, int, str]] = []
        self._due: dict[str, float] = {}  # name -> the deadline of its live entry in _delayed
        self._seq = itertools.count()
        self._closed = False

    def add(self, name: str, delay: float = 0.0, background: bool = False) -> None:
        with self._cv:
            if delay > 0:
                when = time.monotonic() + delay
                due = self._due.get(name)
                if due is not None and due <= when:
                    return
                self._due[name] = when
                heapq.heappush(self._delayed, (when, next(self._seq), name))
            elif name in self._active:
                (self._again_behind if background else self._again).add(name)
            elif background:
                self._later(name)
            else:
                self._now(name)
            self._cv.notify()

    def _later(self, name: str) -> None:
        """(Under the lock) `name` queued in the background, unless it is queued already."""
        if name not in self._queued:
            self._queued.add(name)
            self._behind.add(name)
            self._background.append(name)

    def _now(self, name: str) -> None:
        """(Under the lock) `name` queued, ahead of the background."""
        if name not in self._queued:
            self._queued.add(name)
            self._ready.append(name)
        elif name in self._behind:
            self._behind.discard(name)  # its place in `_background` is skipped
            self._ready.append(name)

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
                    else:
                        self._now(name)
                picked = self._ready.popleft() if self._ready else self._next_behind()
                if picked is not None:
                    self._queued.discard(picked)
                    self._active.add(picked)
                    return picked
                wait = self._delayed[0][0] - now if self._delayed else None
                self._cv.wait(wait)

    def _next_behind(self) -> str | None:
        while self._background:
            name = self._background.popleft()
            if name in self._behind:
                self._behind.discard(name)
                return name
        return None

    def done(self, name: str) -> None:
        with self._cv:
            self._active.discard(name)
            behind = name in self._again_behind
            self._again_behind.discard(name)
            if name in self._again:
                self._again.discard(name)
                self._now(name)
            elif behind:
                self._later(name)
            self._cv.notify()

    def idle(self) -> bool:
        """Nothing is queued to run now or running (delayed adds do not count)."""
        with self._cv:
            return not (self._ready or self._behind or self._active)

    def pending(self) -> dict[str, float]:
        """Delayed names and the seconds until they are queued."""
        with self._cv:
            now = time.monotonic()
            return {name: max(0.0, when - now) for name, when in self._due.items()}

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
        mig_strategy: str = "none",
        resync_seconds: float = 10.0,
        workers: int = 4,
        driver_ready_delay: float = 0.0,
        crash_restart_seconds: float = 2.0,
        manager_grace_seconds: float = 20.0,
        mig_delay: float = 2.0,
        mig_settle: float = 1.5,
        driver_manager: bool = True,
    ) -> None:
        if driver_ready_delay < 0 or crash_restart_seconds <= 0 or manager_grace_seconds <= 0:
            raise ValueError("driver_ready_delay must be >= 0, crash_restart_seconds and manager_grace_seconds > 0")
        self.namespace = namespace
        self.mig_strategy = mig_strategy
        self.resync_seconds = resync_seconds
        self.crash_restart_seconds = crash_restart_seconds
        self.manager_grace_seconds = manager_grace_seconds
        self._driver_ready_delay = float(driver_ready_delay)
        # k8s-driver-manager pauses the node's deploy labels (nodemodel): off for DaemonSets that select nodes
        # otherwise, whose pods the pause would never remove (the manager would fail after each grace period).
        self.driver_manager = driver_manager
        self._kube = Kube.from_kubeconfig(kubeconfig, pool_size=workers + 2)
        self._n_workers = workers
        self._lock = threading.Lock()
        self._pods: dict[str, dict[str, Any]] = {}  # by pod name
        # The same pods by node, and the uids of all (kept with `_pods` under the lock, by `_put` and `_drop`): a
        # node's reconcile reads its own pods, not every pod (at 1,000 nodes a scan was most of the simulator's CPU).
        self._on: dict[str, dict[str, dict[str, Any]]] = {}
        self._uids: set[str] = set()
        self._parts: dict[tuple[str, str, str], Any] = {}  # (owner uid, revision, SHARED_SPEC field) -> one copy
        self._touched: set[str] = set()  # nodes this simulator has changed
        self._models: dict[str, NodeModel] = {}
        self._crash_nodes: set[str] = set()
        self._world: tuple[float, World] | None = None
        self._configs: dict[str, tuple[str, adv.Selected]] = {}  # pod uid -> (node label value, its config)
        self._queue = _NodeQueue()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._watch_response: list[Any] = []
        self.errors: list[str] = []  # recent reconcile/watch errors, for test diagnostics
        self.mig = MigSim(delay=mig_delay, settle=mig_settle)  # mig-manager's layout changes (e2e/sim_mig.py)

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

    # --- what tests set and read ---
    @property
    def driver_ready_delay(self) -> float:
        return self._driver_ready_delay

    def set_driver_ready_delay(self, seconds: float) -> None:
        """Driver containers start ``seconds`` after their pod's creation (or first sight); applies to those not
        started yet (a pod now waiting is judged by the new delay at once)."""
        if seconds < 0:
            raise ValueError("delay must be >= 0")
        with self._lock:
            self._driver_ready_delay = float(seconds)
            models = list(self._models.items())
        for name, model in models:
            model.driver_ready_delay = float(seconds)
            self._queue.add(name)

    def crash_loop_driver(self, node_name: str, on: bool = True) -> None:
        """Make the driver container on ``node_name`` crash-loop (``on``), or stop that (it then starts).

        Applies to the node's current driver pod and to the pods that replace it while it is on.
        """
        with self._lock:
            if on:
                self._crash_nodes.add(node_name)
            else:
                self._crash_nodes.discard(node_name)
            model = self._models.get(node_name)
        if model is not None:
            model.crash_loop = on
        self._queue.add(node_name)

    def crash_looping(self) -> set[str]:
        """The nodes whose driver is crash-looping (as set by ``crash_loop_driver``)."""
        with self._lock:
            return set(self._crash_nodes)

    def model(self, node_name: str) -> NodeModel | None:
        """The node's model (its host files, handlers), once the simulator has looked at the node."""
        with self._lock:
            return self._models.get(node_name)

    def describe(self, node_name: str) -> str:
        """What the simulator holds of a node, for a test's or a bench's report: its pods' phases, its simulated
        mig-manager, when it is next looked at."""
        pods = sorted(f"{(p['metadata'].get('labels') or {}).get('app', p['metadata']['name'])} "
                      f"{(p.get('status') or {}).get('phase', 'no status')}" for p in self._pods_on(node_name))
        due = self._queue.pending().get(node_name)
        return (f"pods: {', '.join(pods) or 'none'}; mig-manager: {self.mig.describe(node_name, time.monotonic())}; "
                f"next look: {f'in {due:.1f} s' if due is not None else 'on an event or the resync'}")

    def diagnose(self, node_name: str) -> list[Finding]:
        model = self.model(node_name)
        return model.diagnose() if model is not None else []

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
                                              handle=self._watch_response, labelSelector=MANAGED_SELECTOR):
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
        listing = self._kube.get(path, labelSelector=MANAGED_SELECTOR)
        pods = {p["metadata"]["name"]: p for p in listing.get("items") or []}
        # Nodes left with simulated state (by an earlier simulator, say) are reconciled too, so that state goes
        # when there are no pods for it any more.
        stale = {
            n["metadata"]["name"]
            for n in self._kube.items("/api/v1/nodes", labelSelector=PROFILE_LABEL)
            if any(adv.is_resource(r) for r in (n.get("status") or {}).get("capacity") or {})
            or any(adv.is_gfd_label(k) for k in n["metadata"].get("labels") or {})
        }
        with self._lock:
            old = self._pods
            self._pods, self._on, self._uids = {}, {}, set()
            for name, pod in pods.items():
                self._put(name, pod)
            self._touched |= stale
            nodes = {_node_of(p) for p in list(old.values()) + list(pods.values())} | self._touched
        for node in nodes:
            if node:
                self._queue.add(node)
        return str(listing["metadata"]["resourceVersion"])

    def _resync(self) -> None:
        with self._lock:
            nodes = {_node_of(p) for p in self._pods.values()} | self._touched
            held = {_revision(p) for p in self._pods.values()}
            self._parts = {k: v for k, v in self._parts.items() if k[:2] in held}
        for node in nodes:
            if node:
                self._queue.add(node, background=True)

    def _on_pod(self, kind: str, pod: dict[str, Any]) -> None:
        name = pod["metadata"]["name"]
        with self._lock:
            old = self._pods.get(name)
            if kind == "DELETED":
                self._drop(name)
            elif old is None or _uid(old) != _uid(pod) or not _older(pod, old):
                # (an event older than what a status patch of ours returned is skipped)
                self._put(name, pod)
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
                if isinstance(e, client.ApiException) and e.status == 404:
                    # Deleted since this reconcile read it (a pod an upgrade replaced): its watch event follows.
                    log.info("simulator: node %s: %s (deleted meanwhile; retrying)", node, e)
                else:
                    self._note_error(f"node {node}: {e!r}")
                self._queue.add(node, delay=1.0)
            finally:
                self._queue.done(node)

    def _note_error(self, msg: str) -> None:
        log.warning("simulator: %s", msg)
        self.errors = (self.errors + [msg])[-50:]

    def _put(self, name: str, pod: dict[str, Any]) -> None:
        """(Under the lock) a pod into `_pods` and its indexes (a replaced pod keeps its place on its node)."""
        slim(pod, self._parts)
        old = self._pods.get(name)
        if old is not None and _node_of(old) != _node_of(pod):
            self._drop(name)
        elif old is not None:
            self._uids.discard(_uid(old))
        self._pods[name] = pod
        self._on.setdefault(_node_of(pod) or "", {})[name] = pod
        self._uids.add(_uid(pod))

    def _drop(self, name: str) -> None:
        old = self._pods.pop(name, None)
        if old is not None:
            here = self._on.get(_node_of(old) or "", {})
            here.pop(name, None)
            if not here:
                self._on.pop(_node_of(old) or "", None)
            self._uids.discard(_uid(old))

    def _pods_on(self, node: str) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._on.get(node, {}).values())

    def _model_for(self, node: dict[str, Any]) -> NodeModel:
        name = node["metadata"]["name"]
        with self._lock:
            model = self._models.get(name)
            if model is None:
                profile = profile_of(node)
                annotations = node["metadata"].get("annotations") or {}
                host = new_host(name, runtime_of(node), profile.gpu_count if profile else 0,
                                annotations.get(HOST_DRIVER_ANNOTATION) or None, os_of(node))
                model = self._models[name] = NodeModel(host, driver_ready_delay=self._driver_ready_delay,
                                                       crash_restart_seconds=self.crash_restart_seconds,
                                                       manager_grace_seconds=self.manager_grace_seconds)
                model.crash_loop = name in self._crash_nodes
            return model

    def _reconcile(self, node_name: str) -> None:
        pods = self._pods_on(node_name)
        node = self._kube.get_or_none(f"/api/v1/nodes/{node_name}")
        if node is None:
            with self._lock:
                self._models.pop(node_name, None)
            return
        model = self._model_for(node)
        world = self._world_now()
        labels = node["metadata"].get("labels") or {}
        result = model.step(pods, world, time.monotonic(), time.time(),
                            labels=labels if self.driver_manager else None,
                            annotations=node["metadata"].get("annotations") or {}, node_labels=labels)
        for pod in result.evict:  # k8s-driver-manager deleting GPU pods (only the operand pods are given here)
            meta = pod["metadata"]
            self._kube.delete(f"/api/v1/namespaces/{meta.get('namespace')}/pods/{meta['name']}")
        manager_patch = {k: v for k, v in result.labels.items() if labels.get(k) != v}
        if manager_patch:  # k8s-driver-manager pausing the operands or setting them back
            log.info("simulator: node %s k8s-driver-manager %s", node_name, manager_patch)
            node = self._kube.patch(f"/api/v1/nodes/{node_name}", {"metadata": {"labels": manager_patch}})
            self._queue.add(node_name, delay=0.01)
        host_ip = next((a["address"] for a in (node.get("status") or {}).get("addresses") or []
                        if a.get("type") == "InternalIP"), None)
        now = _now()
        for pod in pods:
            run = result.statuses.get(_uid(pod))
            if run is None or pod["metadata"].get("deletionTimestamp"):
                continue
            status = pod_status(pod, run, host_ip, now)
            if not same_status(status, pod.get("status") or {}):
                self._patch_pod_status(pod, status)
        for event in result.events:
            self._post_event(event.pod, node_name, event.type, event.reason, event.message)
        if result.again is not None:
            self._queue.add(node_name, delay=max(result.again, 0.01))
        profile = profile_of(node)
        if profile is None or not profile.has_gpu:
            return
        mig_patch, mig_again = self.mig.step(node, pods, time.monotonic(), world.config_maps,
                                            waiting=model.waiting())
        if mig_patch:
            log.info("simulator: node %s mig-manager %s", node_name, mig_patch)
            node = self._kube.patch(f"/api/v1/nodes/{node_name}", {"metadata": {"labels": mig_patch}})
        if mig_again is not None:
            self._queue.add(node_name, delay=max(mig_again, 0.01))
        labels = node["metadata"].get("labels") or {}
        # What the GPUs hold: the simulated mig-manager's layout once one ran here (a refused or held label
        # changes nothing), else the labels' word for it.
        managed = self.mig.managed(node_name)
        layout = adv.applied_layout(labels) if managed is None else managed
        mig_configs = adv.mig_configs_of(pods, world.config_maps) if layout else None
        plugin = next((p for p in pods if _uid(p) in result.plugin_pods), None)
        resources: dict[str, int] = {}
        if result.gpus and plugin is not None:
            selected = self._config_of(plugin, labels, world)
            mps_ready = any(adv.runs_mps_daemon(p) for p in pods)
            strategy = adv.mig_strategy_of(plugin, selected.config.mig_strategy or self.mig_strategy)
            advertised = adv.advertise(profile, layout, strategy,
                                       selected.config, mps_ready, mig_configs) if not selected.error else None
            resources = advertised.resources if advertised else {}
        self._sync_gpus(node, resources)
        gfd = next((p for p in pods if _uid(p) in result.gfd_pods), None)
        want: dict[str, str] = {}
        if result.gfd and gfd is not None:
            selected = self._config_of(gfd, labels, world)
            strategy = adv.mig_strategy_of(gfd, selected.config.mig_strategy or self.mig_strategy)
            want = gfd_labels(profile, result.driver_version, strategy)
            if not selected.error and adv.gfd_error(profile, layout, selected.config, mig_configs):
                want = {}  # GFD exits and removes its output file: NFD drops its labels
            elif not selected.error:
                want.update(adv.gfd_overlay(profile, layout, strategy, selected.config, mig_configs))
        self._sync_gfd(node, want)
        with self._lock:
            for uid in [u for u in self._configs if u not in self._uids]:
                self._configs.pop(uid, None)

    def _config_of(self, pod: dict[str, Any], labels: dict[str, str], world: World) -> adv.Selected:
        """The sharing config the pod's config-manager selected: reselected when the node label changes (the
        sidecar's behaviour), not when the ConfigMap's content changes; a failed selection is retried. A key the
        ConfigMap lacks fails config-manager before it touches the file: a pod that loaded a config keeps it."""
        source = adv.config_source(pod)
        if source is None:
            return adv.Selected()
        value = labels.get(source.node_label, "")
        with self._lock:
            cached = self._configs.get(_uid(pod))
        if cached is not None and cached[0] == value:
            return cached[1]
        data = world.config_maps.get((self.namespace, source.config_map))
        selected = adv.select_config(data, labels, source.node_label, source.default, source.fallbacks)
        if selected.error and cached is not None and selected.key not in (data or {}):
            return cached[1]
        if not selected.error:
            with self._lock:
                self._configs[_uid(pod)] = (value, selected)
        return selected

    def _world_now(self) -> World:
        """RuntimeClasses, ConfigMaps and DaemonSets as the node's components read them (listed at most once a
        second), and the API server's dry run for the validator's workload pods."""
        now = time.monotonic()
        with self._lock:
            cached = self._world
        if cached is not None and now - cached[0] <= WORLD_TTL:
            return cached[1]
        ns = self.namespace
        rcs = self._kube.get("/apis/node.k8s.io/v1/runtimeclasses")
        cms = self._kube.get(f"/api/v1/namespaces/{ns}/configmaps")
        dss = self._kube.get(f"/apis/apps/v1/namespaces/{ns}/daemonsets")
        world = World(
            runtime_classes={r["metadata"]["name"]: r.get("handler", "") for r in rcs.get("items") or []},
            config_maps={(ns, c["metadata"]["name"]): _files(c) for c in cms.get("items") or []},
            daemonsets=list(dss.get("items") or []),
            dry_run=self._dry_run,
            version=",".join(f"{x['metadata']['name']}@{x['metadata'].get('resourceVersion')}"
                             for x in [*(rcs.get("items") or []), *(cms.get("items") or []),
                                       *(dss.get("items") or [])]),
        )
        with self._lock:
            self._world = (now, world)
        return world

    def _dry_run(self, pod: dict[str, Any]) -> str | None:
        """A server-side dry-run create: None when the API server accepts the pod, else its message."""
        ns = pod["metadata"].get("namespace") or self.namespace
        try:
            self._kube.request("POST", f"/api/v1/namespaces/{ns}/pods", pod, query={"dryRun": "All"})
        except client.ApiException as e:
            try:
                return str(json.loads(e.body or "{}").get("message") or e.reason)
            except ValueError:
                return str(e.body or e.reason)
        return None

    def _patch_pod_status(self, pod: dict[str, Any], status: dict[str, Any]) -> dict[str, Any]:
        """Write a pod's status (merge patch: lists are replaced whole; labels are not touched)."""
        name = pod["metadata"]["name"]
        new: dict[str, Any] = self._kube.patch(f"/api/v1/namespaces/{self.namespace}/pods/{name}/status",
                                               {"status": status})
        with self._lock:
            cur = self._pods.get(name)
            if cur is not None and _uid(cur) == _uid(new) and not _older(new, cur):
                self._put(name, new)
        return new

    def _post_event(self, pod: dict[str, Any], node: str, type_: str, reason: str, message: str) -> None:
        meta = pod["metadata"]
        now = _now()
        self._kube.create(f"/api/v1/namespaces/{self.namespace}/events", {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": f"{meta['name']}.{time.time_ns():x}", "namespace": self.namespace},
            "involvedObject": {"apiVersion": "v1", "kind": "Pod", "namespace": self.namespace, "name": meta["name"],
                               "uid": meta.get("uid", "")},
            "reason": reason, "message": message, "type": type_, "count": 1,
            "firstTimestamp": now, "lastTimestamp": now,
            "source": {"component": "kubelet", "host": node},
            "reportingComponent": "kubelet", "reportingInstance": node,
        })

    # device plugin
    def _sync_gpus(self, node: dict[str, Any], resources: dict[str, int]) -> None:
        want = {k: str(v) for k, v in resources.items()}
        status = node.get("status") or {}
        have = {k: v for part in ("capacity", "allocatable") for k, v in (status.get(part) or {}).items()
                if adv.is_resource(k)}
        cap = {k: v for k, v in (status.get("capacity") or {}).items() if adv.is_resource(k)}
        alloc = {k: v for k, v in (status.get("allocatable") or {}).items() if adv.is_resource(k)}
        if cap == want and alloc == want:
            return
        patch: dict[str, str | None] = {k: None for k in have if k not in want}
        patch.update(want)
        name = node["metadata"]["name"]
        log.info("simulator: node %s advertises %s", name, want or "nothing")
        self._kube.patch(f"/api/v1/nodes/{name}/status", {"status": {"capacity": patch, "allocatable": patch}})
        with self._lock:
            self._touched.add(name)

    # gpu feature discovery
    def _sync_gfd(self, node: dict[str, Any], want: dict[str, str]) -> None:
        labels = node["metadata"].get("labels") or {}
        have = {k: v for k, v in labels.items() if adv.is_gfd_label(k)}
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


# --- pods ---

def _node_of(pod: dict[str, Any] | None) -> str | None:
    if not pod:
        return None
    return (pod.get("spec") or {}).get("nodeName") or None


def _uid(pod: dict[str, Any]) -> str:
    return str(pod["metadata"].get("uid") or "")


def slim(pod: dict[str, Any], parts: dict[tuple[str, str, str], Any]) -> None:
    """Drop the pod's managedFields, and share its SHARED_SPEC parts through ``parts`` with the pods of its DaemonSet
    revision where they are equal (a pod's image can be changed in place)."""
    pod["metadata"].pop("managedFields", None)
    revision = _revision(pod)
    spec = pod.get("spec")
    if revision is None or not spec:
        return
    for field in SHARED_SPEC:
        value = spec.get(field)
        if value is not None:
            kept = parts.setdefault((*revision, field), value)
            if kept is not value and kept == value:
                spec[field] = kept


def _revision(pod: dict[str, Any]) -> tuple[str, str] | None:
    """A DaemonSet pod's controller's uid and its revision hash (None for other pods)."""
    meta = pod["metadata"]
    revision = (meta.get("labels") or {}).get("controller-revision-hash")
    owner = next((r.get("uid") for r in meta.get("ownerReferences") or [] if r.get("controller")), None)
    return (str(owner), str(revision)) if owner and revision else None


def _older(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether object ``a`` is an older version than ``b`` (by resourceVersion, when both are numbers)."""
    ra, rb = a["metadata"].get("resourceVersion") or "", b["metadata"].get("resourceVersion") or ""
    return ra.isdigit() and rb.isdigit() and int(ra) < int(rb)
