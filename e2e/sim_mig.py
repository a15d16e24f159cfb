"""The simulated mig-manager of each fake node (test infrastructure), as upstream's k8s mig-manager behaves.

While a mig-manager operand pod runs on a node (past its entrypoint's wait for driver-ready: ``waiting``), the
node's ``nvidia.com/mig.config`` is compared with the layout that simulated host has applied (a fresh host has
``all-disabled``).  As in mig-parted's ``pkg/mig/reconfigure``:
a name not in the pod's config ends ``failed`` at once (``assert --valid-config``); one already applied ends
``success``; otherwise ``nvidia.com/mig.config.state=pending``, the deploy labels of device-plugin, GFD, dcgm,
dcgm-exporter and nvsm (set or not; client only when set) go to ``paused-for-mig-change`` (a ``false`` stays
``false``), it waits until no pod of device-plugin, GFD, dcgm-exporter or dcgm (by ``app``) is left on the node
(after 5 minutes it gives up: ``pending``, labels paused), and ``delay`` seconds later the layout is applied
(``success``) or, when the GPU cannot take it or on a node given to ``fail``, not (``failed``).  Each ``success``
or ``failed`` first sets those labels to ``true`` (a ``false`` stays), but once a pod has completed a change only
its later completed changes do (``NoRestartK8sDaemonsetsOnExit`` stays set in its process): a later ``failed``
leaves them paused.

The config: with ``CONFIG_FILE`` (a ConfigMap named) the one the pod mounts, where only the name is checked;
without it mig-manager builds the layouts from the GPUs (mig_layouts.generated_layouts of the node's GPU, from its
profile, which stands for the hardware; GFD's product label only for a node without one).

A pod acts on each label value once (a new pod acts again, as upstream's does on start), and only ``settle``
seconds after it started and after the value was first seen.  The real one reacts at once; the operator's gate
(gpu_operator/mig.py), whose pass a new value wakes at once, must pause and remove this pod first, which the tests
check.  That is still a race, which ``settle`` decides: the MIG module (e2e/test_mig.py) gives it 3 s, twice the
default, as a pass, the DaemonSet controller's pod deletion and this simulator's watch may share 2 loaded cores.
A pod that goes away mid-change leaves the labels paused, like a killed mig-manager.  The node's labels are the
whole interface: ``mig.config`` with ``mig.config.state=success`` names the applied layout.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from e2e import advertise as adv
from e2e.cluster.nodes import profile_of
from gpu_operator import mig, mig_layouts
from gpu_operator.nodes import MIG_CONFIG, MIG_CONFIG_STATE, deploy_label

MANAGER_APP = "nvidia-mig-manager"
INITIAL_LAYOUT = "all-disabled"
CLIENT = deploy_label("client")
ALWAYS_PAUSED = tuple(deploy_label(op) for op in mig.PAUSED_BY_MANAGER if op != "client")
# waitForPodsToBeDeleted: the pods (by `app`, in mig-manager's namespace) a change waits for, polled each second
CLIENT_APPS = ("nvidia-device-plugin-daemonset", "gpu-feature-discovery", "nvidia-dcgm-exporter", "nvidia-dcgm")
POLL = 1.0
WAIT_PODS = 300.0


@dataclass
class _Host:
    applied: str = INITIAL_LAYOUT
    pod: str = ""  # uid of the mig-manager pod seen last
    since: float = 0.0  # when that pod was first seen running
    acted_on: str | None = None  # the label value that pod last acted on
    seen: str | None = None  # the label value seen last, and since when
    seen_at: float = 0.0
    restarted: bool = False  # that pod completed a change (NoRestartK8sDaemonsetsOnExit)
    target: str | None = None  # a change under way
    fits: bool = False  # whether the GPU can take it
    started: float = 0.0
    clients_seen: float = 0.0  # when the operand pods it waits for were last seen
    saved: dict[str, str] = field(default_factory=dict)  # deploy label -> its value before the pause


def _manager(pods: list[dict[str, Any]], waiting: Collection[str]) -> dict[str, Any] | None:
    for pod in pods:
        meta = pod["metadata"]
        if (meta.get("labels") or {}).get("app") != MANAGER_APP or meta.get("deletionTimestamp") or \
                str(meta.get("uid")) in waiting:  # still in its entrypoint's loop: nvidia-mig-manager not started
            continue
        if (pod.get("status") or {}).get("phase") == "Running":
            return pod
    return None


def _config(pod: dict[str, Any], config_maps: Mapping[tuple[str, str], Mapping[str, str]]) -> adv.MigConfigs | None:
    """The mig-parted config the pod reads (CONFIG_FILE: the ConfigMap it mounts), or None: it builds the layouts
    from the GPUs (DEFAULT_CONFIG_FILE is only its fallback)."""
    env = {e.get("name") for c in (pod.get("spec") or {}).get("containers") or [] for e in c.get("env") or []}
    if "DEFAULT_CONFIG_FILE" in env and "CONFIG_FILE" not in env:
        return None
    return adv.mig_configs_of([pod], config_maps)


def _device_id(node: dict[str, Any], labels: Mapping[str, str]) -> str | None:
    """The PCI device ID of the node's GPUs: its profile's, else (no profile) by GFD's product label."""
    profile = profile_of(node)
    if profile is not None:
        return adv.DEVICE_IDS.get(profile.product)
    gpu = mig.gpu_of_product(labels.get("nvidia.com/gpu.product", ""))
    return gpu.device_ids[0] if gpu else None


def _read(labels: Mapping[str, str]) -> dict[str, str]:
    """The deploy labels mig-manager pauses and sets back, as read at the start of a run ("" when unset)."""
    out = {k: labels.get(k, "") for k in ALWAYS_PAUSED}
    if labels.get(CLIENT):
        out[CLIENT] = labels[CLIENT]
    return out


def _set_true(read: Mapping[str, str]) -> dict[str, str]:
    return {k: "false" if v == "false" else "true" for k, v in read.items()}


def _clients(pods: list[dict[str, Any]], namespace: str) -> bool:
    return any(
        p["metadata"].get("namespace") == namespace and (p["metadata"].get("labels") or {}).get("app") in CLIENT_APPS
        for p in pods
    )


class MigSim:
    def __init__(self, delay: float = 2.0, settle: float = 1.5) -> None:
        self.delay = delay
        self.settle = settle
        self._lock = threading.Lock()
        self._hosts: dict[str, _Host] = {}
        self._fail: set[str] = set()

    def fail(self, node: str, on: bool = True) -> None:
        """Changes on ``node`` fail (``on``), or apply again."""
        with self._lock:
            (self._fail.add if on else self._fail.discard)(node)

    def applied(self, node: str) -> str | None:
        with self._lock:
            host = self._hosts.get(node)
            return host.applied if host else None

    def managed(self, node: str) -> str | None:
        """The layout applied on ``node`` once a mig-manager pod has run there (None before: nothing known)."""
        with self._lock:
            host = self._hosts.get(node)
            return host.applied if host and host.pod else None

    def describe(self, node: str, now: float) -> str:
        """The simulated host's MIG state, for a test's or a bench's report."""
        with self._lock:
            host = self._hosts.get(node)
        if host is None:
            return "never looked at"
        pod = f"pod {host.pod[:8]} seen {now - host.since:.0f} s ago" if host.pod else "no mig-manager pod seen"
        doing = f", applying {host.target} since {now - host.started:.0f} s" if host.target else ""
        return (f"applied {host.applied}, {pod}, label {host.seen!r} seen {now - host.seen_at:.0f} s ago, "
                f"acted on {host.acted_on!r}{doing}")

    def step(
        self,
        node: dict[str, Any],
        pods: list[dict[str, Any]],
        now: float,
        config_maps: Mapping[tuple[str, str], Mapping[str, str]] | None = None,
        waiting: Collection[str] = (),
    ) -> tuple[dict[str, Any], float | None]:
        """(label patch, seconds until the node needs another look); called with the node's operand pods, the
        ConfigMaps by (namespace, name) and the uids of the pods whose scripts still wait (NodeModel.waiting)."""
        name = node["metadata"]["name"]
        labels = node["metadata"].get("labels") or {}
        with self._lock:
            host = self._hosts.setdefault(name, _Host())
            failing = name in self._fail
        pod = _manager(pods, waiting)
        uid = str(pod["metadata"].get("uid")) if pod else ""
        if host.target is not None:
            if pod is None or uid != host.pod:  # killed mid-change: everything stays as it is
                host.target, host.acted_on = None, None
                return {}, None
            if _clients(pods, pod["metadata"].get("namespace") or ""):
                host.clients_seen = now
                if now - host.started >= WAIT_PODS:  # gives up without a state: pending, the labels paused
                    host.target = None
                    return {}, None
                return {}, POLL
            left = host.clients_seen + self.delay - now
            if left > 0:
                return {}, left
            ok = host.fits and not failing
            patch: dict[str, Any] = {}
            if ok:  # restartKubernetesGPUClients, then setState
                host.applied, host.restarted = host.target, True
                patch = _set_true(host.saved)
            elif not host.restarted:
                patch = _set_true(host.saved)
            host.target = None
            patch[MIG_CONFIG_STATE] = "success" if ok else "failed"
            return patch, None
        if pod is None:
            return {}, None
        if uid != host.pod:
            host.pod, host.since, host.acted_on, host.restarted = uid, now, None, False
        want = labels.get(MIG_CONFIG)
        if want != host.seen:
            host.seen, host.seen_at = want, now
        if not want or want == host.acted_on:
            return {}, None
        ready_at = max(host.since, host.seen_at) + self.settle
        if now < ready_at:
            return {}, ready_at - now
        host.acted_on = want
        configs = _config(pod, config_maps or {})
        device_id = _device_id(node, labels)
        if configs is not None:  # assert --valid-config: only whether the name is in the file
            known = want in configs
            fits = known and device_id is not None and adv.user_layout_devices(configs, want, device_id) is not None
        else:
            gpu = mig_layouts.gpu_for(device_id) if device_id is not None else None
            known = fits = gpu is not None and mig.layout_entries(gpu, want, mig.node_layouts(gpu, None)) is not None
        if not known or want == host.applied:
            patch = {} if host.restarted else _set_true(_read(labels))  # setState
            patch[MIG_CONFIG_STATE] = "success" if known else "failed"
            return {k: v for k, v in patch.items() if labels.get(k) != v}, None
        host.target, host.fits, host.started, host.clients_seen = want, fits, now, now
        host.saved = _read(labels)
        patch = {k: "false" if v == "false" else mig.PAUSED for k, v in host.saved.items()}
        patch[MIG_CONFIG_STATE] = "pending"
        return patch, POLL
