"""Chaos on the local cluster: faults injected mid-rollout, then invariants checked (prints figures).

    python -m e2e.chaos [--runs 20] [--seed 1] [--scenarios kill-install,kill-upgrade,...] [--window 15]

One local cluster with four GPU nodes in two OS pools (one of them MIG-capable and given layout changes), a GPU
workload guarded by a PodDisruptionBudget, the node simulator and the operator with `autoUpgrade` on. Each run goes
through every scenario once, in a seeded random order, with seeded fault points:

- kill-install: the ClusterPolicy is deleted and applied again; the operator is SIGKILLed after its n-th write
  (n drawn from what an install costs) and started again.
- kill-upgrade: `driver.version` changes; SIGKILL after the n-th write of the rollout, restart.
- kill-mig: the MIG node's `nvidia.com/mig.config` changes; SIGKILL after the n-th write, restart.
  A kill that lands once the cluster converged (fewer writes than drawn) recovers nothing: the fault says so,
  the summary counts it, and kill-install and kill-upgrade fail on it (kill-mig's change is a couple of writes).
- apiserver-restart, etcd-restart: kube-apiserver (or etcd) is SIGKILLed and started again while a driver
  rollout has nodes in progress; kwok is then restarted, standing in for the kubelets' periodic pod sync (kwok
  drops a pod action the API server failed, see Chaos.resync_kubelets).
- competing-writer: another field manager sets the device plugin DaemonSet's image and removes a GPU node's
  `nvidia.com/gpu.present` label; the operator must take both back with one write each, then stay quiet.
- watch-expiry: the operator is frozen (SIGSTOP), the API server restarted (its watches end), an operand
  DaemonSet deleted and etcd compacted, so once thawed its watches resume from a compacted resourceVersion
  (410 Gone): it must list again, recreate the DaemonSet, and still react to a later change (another DaemonSet
  deleted).

After each: the rollout completes (ClusterPolicy ready at its generation, every driver DaemonSet and pod on the
expected version, the MIG layout applied, every operand DaemonSet present at its image), no node is cordoned or
left `paused-for-mig-change`, every eviction was one the policy allows (GPU workload pods during a driver
upgrade only, never a plain delete), the PodDisruptionBudget was never below its minimum, and the operator's
writes stop (none over `--window` seconds); and the operator's writes are in the audit log (those checks read it:
an empty log would pass them all). Per scenario it prints the time to recover (fault to convergence) and the
operator's writes in that time.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from e2e.cluster.localcluster import OPERATOR_USER, WRITE_VERBS, LocalCluster, audit_time, ensure_binaries
from e2e.cluster.nodes import create_nodes, make_node
from e2e.kube import wait_for
from e2e.operator_process import (
    NAMESPACE,
    OperatorProcess,
    delete_policies,
    install_crds_and_rbac,
    policy_from_sample,
)
from e2e.simulator import NodeSimulator
from gpu_operator.kube import Kube, path_for
from gpu_operator.mig import PAUSED
from gpu_operator.nodes import MIG_CONFIG, MIG_CONFIG_STATE
from gpu_operator.upgrade import IN_PROGRESS_STATES, STATE_LABEL

GPU_NODES = {
    "cx-h100-0": ("h100x8", "ubuntu22.04"),
    "cx-h100-1": ("h100x8", "ubuntu22.04"),
    "cx-a100-0": ("a100x4", "ubuntu24.04"),
    "cx-a100-1": ("a100x4", "ubuntu24.04"),
}
CPU_NODE = "cx-cpu-0"
MIG_NODE = "cx-h100-1"
LAYOUTS = ("all-1g.10gb", "all-3g.40gb")  # under the sample's mig.strategy single: one profile each
VERSIONS = ("600.10.01", "600.20.02")
LIMITS = {"autoUpgrade": True, "maxParallelUpgrades": 2, "maxUnavailable": "50%",
          "podDeletion": {"force": False, "timeoutSeconds": 300, "deleteEmptyDir": False},
          "drain": {"enable": False}}  # fmt: skip
WORK = "chaos-work"
GPU_APP = "gpu-work"
GPU_REPLICAS = 4
PDB_MIN = 3
DEVICE_PLUGIN_DS = "nvidia-device-plugin-daemonset"
FOREIGN_IMAGE = "registry.example.com/not-ours/device-plugin:0.0.1"
COMPETITOR = "chaos-competitor"
SCENARIOS = (
    "kill-install", "kill-upgrade", "kill-mig", "apiserver-restart", "etcd-restart", "competing-writer",
    "watch-expiry",
)  # fmt: skip
CONVERGE_S = 300.0
# A kill after convergence fails these: their fault points are drawn well inside the change.
KILLED_MID_CHANGE = ("kill-install", "kill-upgrade")


def _say(msg: str) -> None:
    print(f"[chaos] {msg}", file=sys.stderr, flush=True)


class Audit:
    """The audit log's write events, read incrementally (the log only grows)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._partial = b""
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def refresh(self) -> list[dict[str, Any]]:
        with self._lock:
            try:
                with self.path.open("rb") as f:
                    f.seek(self._offset)
                    data = f.read()
            except FileNotFoundError:
                return self.events
            self._offset += len(data)
            data = self._partial + data
            lines = data.split(b"\n")
            self._partial = lines.pop()
            for line in lines:
                try:
                    e = json.loads(line)
                except ValueError:
                    continue
                if e.get("verb") in WRITE_VERBS or e.get("verb") == "list":
                    e["_t"] = audit_time(e)
                    self.events.append(e)
            return self.events

    def writes(self, user: str, since: float, until: float | None = None) -> list[dict[str, Any]]:
        return [
            e for e in self.refresh()
            if e["verb"] in WRITE_VERBS and e.get("user", {}).get("username") == user and e["_t"] >= since
            and (until is None or e["_t"] <= until)
        ]  # fmt: skip

    def lists(self, user: str, since: float) -> list[dict[str, Any]]:
        return [
            e
            for e in self.refresh()
            if e["verb"] == "list" and e.get("user", {}).get("username") == user and e["_t"] >= since
        ]


def describe(e: dict[str, Any]) -> str:
    ref = e.get("objectRef") or {}
    sub = "/" + ref["subresource"] if ref.get("subresource") else ""
    return f"{e['verb']} {ref.get('resource', '?')}{sub} {ref.get('name', '')}".rstrip()


class Sampler(threading.Thread):
    """Samples the PodDisruptionBudget while faults run: every time it was below its minimum."""

    def __init__(self, admin: Kube) -> None:
        super().__init__(daemon=True, name="chaos-sampler")
        self.admin = admin
        self.stop_flag = threading.Event()
        self.violations: list[tuple[float, str]] = []

    def run(self) -> None:
        while not self.stop_flag.wait(0.5):
            try:
                pdb = self.admin.get("PodDisruptionBudget", GPU_APP, WORK) or {}
                st = pdb.get("status") or {}
                if "currentHealthy" in st and st["currentHealthy"] < st.get("desiredHealthy", 0):
                    self.violations.append((time.time(), f"healthy {st['currentHealthy']} < {st['desiredHealthy']}"))
            except Exception:  # noqa: BLE001 - a failed sample (API server restarting) is skipped
                pass


@dataclass
class Result:
    scenario: str
    fault: str
    recover_s: float
    writes: int
    violations: list[str] = field(default_factory=list)
    killed_mid_change: bool | None = None  # a kill-* scenario's SIGKILL: whether the cluster had not converged


class Chaos:
    """The cluster, the simulator, the operator and what the converged state must be."""

    def __init__(self, state_dir: Path, rng: random.Random, window: float = 15.0, timeout: float = CONVERGE_S) -> None:
        self.state_dir = state_dir
        self.rng = rng
        self.window = window
        self.timeout = timeout
        # Nodes are patched for minutes on end here: see LocalCluster's node_monitor_grace.
        self.cluster = LocalCluster(
            state_dir / "cluster", binaries=ensure_binaries(), log=lambda _m: None, node_monitor_grace="1h"
        )
        self.version = "595.91.07"
        self.layout = "all-disabled"
        self.expected_ds: dict[str, str] = {}  # operand DaemonSet -> its containers' images
        # kill-mig: a layout change costs about 2 writes (the README's chaos figures), so its first kill comes after
        # the first write: drawn from more, it often came after the last one.
        self.typical_writes: dict[str, int] = {"kill-install": 60, "kill-upgrade": 40, "kill-mig": 2}
        self.killed_mid_change: bool | None = None  # set by kill_after_writes
        self.admin: Kube
        self.sim: NodeSimulator
        self.op: OperatorProcess
        self.audit: Audit
        self.sampler: Sampler
        self.started_at = 0.0  # when the operator process last started (wall clock)
        self._after: Callable[[], list[str]] | None = None  # a scenario's own checks, run after the invariants

    # --- lifecycle ---
    def up(self) -> float:
        t = time.monotonic()
        self.cluster.up()
        self.audit = Audit(self.cluster.audit_log)
        self.admin = Kube.connect(str(self.cluster.kubeconfig))
        nodes = [make_node(n, p, os=os) for n, (p, os) in GPU_NODES.items()] + [make_node(CPU_NODE, "cpu")]
        create_nodes(self.admin.client, nodes)
        install_crds_and_rbac(self.admin)
        for ns in (NAMESPACE, WORK):
            self.admin.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
        self.sim = NodeSimulator(self.cluster.simulator_kubeconfig, namespace=NAMESPACE, resync_seconds=5,
                                 driver_ready_delay=1.0, mig_delay=1.0).start()  # fmt: skip
        self.op = OperatorProcess(self.cluster, self.state_dir / "operator.log").start()
        self.started_at = time.time()
        since = time.time()
        self.admin.create(self.policy())
        self.wait_converged("install")
        self.expected_ds = self.daemonset_images()
        installed = len(self.audit.writes(OPERATOR_USER, since))
        if not installed:  # most checks read the audit log: without the operator's writes in it they would all pass
            raise AssertionError(f"no operator write in the audit log {self.audit.path} after the install")
        self.typical_writes["kill-install"] = max(10, installed)
        self.admin.apply(gpu_deployment())
        self.admin.apply({
            "apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": GPU_APP, "namespace": WORK},
            "spec": {"minAvailable": PDB_MIN, "selector": {"matchLabels": {"app": GPU_APP}}},
        })  # fmt: skip
        wait_for(lambda: self.running_gpu_pods() == GPU_REPLICAS, 120, message="GPU workload running")
        self.sampler = Sampler(self.admin)
        self.sampler.start()
        self.quiet()
        return time.monotonic() - t

    def down(self, keep: bool = False) -> None:
        """Stop everything; with `keep`, leave the cluster's files (audit log, logs) where they are."""
        try:
            if hasattr(self, "sampler"):
                self.sampler.stop_flag.set()
            if hasattr(self, "op"):
                self.op.stop()
            if hasattr(self, "sim"):
                self.sim.stop()
        finally:
            if keep:
                self.cluster.stop()
            else:
                self.cluster.down()

    def policy(self) -> dict[str, Any]:
        policy = policy_from_sample()
        policy["spec"]["driver"]["upgradePolicy"] = LIMITS
        policy["spec"]["driver"]["version"] = self.version
        return policy

    # --- observations ---
    def daemonset_images(self) -> dict[str, str]:
        """DaemonSet -> the images of its containers."""
        return {
            d["metadata"]["name"]: " ".join(c["image"] for c in d["spec"]["template"]["spec"]["containers"])
            for d in self.admin.list("DaemonSet", NAMESPACE)
        }

    def running_gpu_pods(self) -> int:
        pods = self.admin.list("Pod", WORK, label_selector=f"app={GPU_APP}")
        return sum(1 for p in pods if (p.get("status") or {}).get("phase") == "Running"
                   and not p["metadata"].get("deletionTimestamp"))  # fmt: skip

    def left(self) -> str | None:
        """What keeps the cluster from the converged state; None once there."""
        policy = self.admin.get("ClusterPolicy", "cluster-policy") or {}
        status = policy.get("status") or {}
        if status.get("state") != "ready" or status.get("observedGeneration") != policy["metadata"]["generation"]:
            return f"ClusterPolicy {status.get('state')} (observed {status.get('observedGeneration')})"
        images = self.daemonset_images()
        for name, image in self.expected_ds.items():
            if name.startswith("nvidia-driver-daemonset"):
                if f":{self.version}-" not in images.get(name, ""):
                    return f"DaemonSet {name} at {images.get(name)}"
            elif images.get(name) != image:
                return f"DaemonSet {name} at {images.get(name)}, expected {image}"
        pods = {p["spec"].get("nodeName"): p for p in self.admin.list(
            "Pod", NAMESPACE, label_selector="nvidia.com/gpu-operator.state=state-driver")
            if not p["metadata"].get("deletionTimestamp")}  # fmt: skip
        for node in self.admin.list("Node"):
            name, labels = node["metadata"]["name"], node["metadata"].get("labels") or {}
            if name not in GPU_NODES:
                continue
            pod = pods.get(name)
            if not pod or f":{self.version}-" not in pod["spec"]["containers"][0]["image"] or not _ready(pod):
                return f"node {name}: driver pod not ready on {self.version}"
            if labels.get(STATE_LABEL) not in (None, "upgrade-done"):
                return f"node {name}: {STATE_LABEL}={labels.get(STATE_LABEL)}"
            if labels.get("nvidia.com/gpu.present") != "true":
                return f"node {name}: nvidia.com/gpu.present={labels.get('nvidia.com/gpu.present')}"
            if name == MIG_NODE and (
                labels.get(MIG_CONFIG) != self.layout
                or labels.get(MIG_CONFIG_STATE) != "success"
                or self.sim.mig.applied(name) != self.layout
            ):
                return f"node {name}: MIG {labels.get(MIG_CONFIG)} {labels.get(MIG_CONFIG_STATE)}"
            if node["spec"].get("unschedulable"):
                return f"node {name}: cordoned"
            paused = sorted(k for k, v in labels.items() if v == PAUSED)
            if paused:
                return f"node {name}: paused {paused}"
        return None

    def workload_state(self) -> str:
        """The GPU workload's pods (node, phase, Ready, terminating) and its budget: what holds an eviction."""
        try:
            return self._workload_state()
        except Exception as exc:  # noqa: BLE001 - a report on a timeout: the timeout's message must survive
            return f"not read ({exc})"

    def _workload_state(self) -> str:
        pods = [f"{p['metadata']['name']}@{p['spec'].get('nodeName') or '-'} {(p.get('status') or {}).get('phase')}"
                f"{' ready' if _ready(p) else ''}{' terminating' if p['metadata'].get('deletionTimestamp') else ''}"
                for p in self.admin.list("Pod", WORK, label_selector=f"app={GPU_APP}")]  # fmt: skip
        st = (self.admin.get("PodDisruptionBudget", GPU_APP, WORK) or {}).get("status") or {}
        return (f"{'; '.join(pods)}; budget: {st.get('currentHealthy')} healthy, {st.get('disruptionsAllowed')} "
                f"allowed, disrupted {sorted(st.get('disruptedPods') or {})}")

    def wait_converged(self, what: str, timeout: float | None = None) -> float:
        timeout = timeout or self.timeout
        t = time.monotonic()
        last: list[str | None] = [None]

        def done() -> bool:
            last[0] = self.left()
            return last[0] is None

        try:
            wait_for(done, timeout, interval=0.5, message=f"convergence after {what}")
        except AssertionError as exc:
            raise AssertionError(
                f"{exc}\nleft: {last[0]}\nworkload: {self.workload_state()}\noperator log:\n{self.op.log_tail(40)}"
            ) from None
        return time.monotonic() - t

    def quiet(self, settle: float = 6.0, timeout: float = 90.0) -> list[str]:
        """Wait until the operator's last write and its last start are `settle` seconds old (longer than its 5s
        re-check of what is not ready), then its writes over the window (want none)."""

        def settled() -> bool:  # a restarted operator's first pass may write what changed while it was away
            writes = self.audit.writes(OPERATOR_USER, time.time() - 3600)
            return time.time() - max([self.started_at] + [e["_t"] for e in writes]) >= settle

        wait_for(settled, timeout, interval=0.5, message="the operator's writes to settle")
        start = time.time()
        time.sleep(self.window)  # the measurement window itself
        return [describe(e) for e in self.audit.writes(OPERATOR_USER, start)]

    def invariants(self, since: float, evictions_allowed: bool) -> list[str]:
        """What is wrong once the cluster converged (the rollout itself is checked by wait_converged)."""
        out = []
        for node in self.admin.list("Node"):
            name, labels = node["metadata"]["name"], node["metadata"].get("labels") or {}
            if node["spec"].get("unschedulable"):
                out.append(f"node {name} left cordoned")
            paused = sorted(k for k, v in labels.items() if v == PAUSED)
            if paused:
                out.append(f"node {name} left paused: {paused}")
        for e in self.audit.writes(OPERATOR_USER, since):
            ref = e.get("objectRef") or {}
            ok = (e.get("responseStatus") or {}).get("code", 0) < 300
            if ref.get("resource") != "pods" or ref.get("namespace") != WORK or not ok:
                continue
            if ref.get("subresource") == "eviction":
                if not evictions_allowed or not str(ref.get("name", "")).startswith(GPU_APP + "-"):
                    out.append(f"eviction outside the policy: {ref.get('name')}")
            elif e["verb"] == "delete":
                out.append(f"workload pod deleted, not evicted: {ref.get('name')}")
        out += [f"PDB violated: {v}" for t, v in self.sampler.violations if t >= since]
        writes = self.quiet()
        if writes:
            out.append(f"writes in steady state ({self.window:.0f}s): {writes}\n{self.op.log_tail(15)}")
        return out

    # --- faults ---
    def draw(self, scenario: str) -> int:
        """A fault point: the n-th operator write of what such a change typically costs (the first 80%)."""
        return self.rng.randint(1, max(1, int(self.typical_writes[scenario] * 0.8)))

    def kill_after_writes(self, n: int, since: float, timeout: float = 120) -> str:
        """SIGKILL the operator once it made `n` writes since `since` (or converged first), start it again.
        Notes in killed_mid_change whether the cluster had not converged yet."""

        def reached() -> bool:
            return len(self.audit.writes(OPERATOR_USER, since)) >= n or self.left() is None

        wait_for(reached, timeout, interval=0.05, message=f"{n} operator writes")
        made = len(self.audit.writes(OPERATOR_USER, since))
        self.op.stop(signal.SIGKILL)
        # Read while it is down: what is left now was left for the restarted operator.
        self.killed_mid_change = self.left() is not None
        self.op.start()
        self.started_at = time.time()
        return f"SIGKILL after {made} writes (drew {n}), {'mid-change' if self.killed_mid_change else 'converged'}"

    def next_version(self) -> str:
        return VERSIONS[1] if self.version == VERSIONS[0] else VERSIONS[0]

    def set_version(self, version: str) -> None:
        self.version = version
        self.admin.merge_patch("ClusterPolicy", "cluster-policy", {"spec": {"driver": {"version": version}}})

    def wait_rollout_in_progress(self) -> None:
        def in_progress() -> bool:
            return any(
                (n["metadata"].get("labels") or {}).get(STATE_LABEL) in IN_PROGRESS_STATES
                for n in self.admin.list("Node")
            )

        wait_for(in_progress, 60, interval=0.1, message="a node in progress")

    def run(self, scenario: str) -> Result:
        fn: Callable[[], tuple[str, float, bool]] = getattr(self, "s_" + scenario.replace("-", "_"))
        self._after = None
        self.killed_mid_change = None
        t = time.monotonic()
        try:
            fault, t0, evictions_allowed = fn()
        except AssertionError as exc:  # the scenario's own wait (a DaemonSet recreated, say) timed out
            return Result(scenario, "fault injected", time.monotonic() - t, 0, [f"{exc}\n{self.op.log_tail(20)}"])
        since = time.time() - (time.monotonic() - t0)
        try:
            self.wait_converged(scenario)
        except AssertionError as exc:
            recover = time.monotonic() - t0
            writes = len(self.audit.writes(OPERATOR_USER, since))
            return Result(scenario, fault, recover, writes, [f"did not converge: {exc}"], self.killed_mid_change)
        recover = time.monotonic() - t0
        writes = len(self.audit.writes(OPERATOR_USER, since))
        if scenario in self.typical_writes:  # the next fault point is drawn from what this change cost
            self.typical_writes[scenario] = max(2, writes)
        violations = self.invariants(since - 1, evictions_allowed)
        if self._after is not None:
            violations += self._after()
        if not writes:  # every scenario makes the operator write
            violations.append(f"no operator write in the audit log {self.audit.path}: the checks read from it saw none")
        if self.killed_mid_change is False and scenario in KILLED_MID_CHANGE:
            violations.append("the SIGKILL landed after convergence: it left nothing to recover")
        return Result(scenario, fault, recover, writes, violations, self.killed_mid_change)

    # Each scenario injects its fault and returns (what it did, monotonic time of the fault or 0 if it returns
    # right at the fault, whether evictions are allowed).

    def s_kill_install(self) -> tuple[str, float, bool]:
        delete_policies(self.admin, 120)
        wait_for(lambda: not self.admin.list("DaemonSet", NAMESPACE), 120, message="operands removed")
        n = self.draw("kill-install")
        since = time.time()
        self.admin.create(self.policy())
        t0 = time.monotonic()
        fault = self.kill_after_writes(n, since)
        return fault, t0, False

    def s_kill_upgrade(self) -> tuple[str, float, bool]:
        n = self.draw("kill-upgrade")
        since = time.time()
        self.set_version(self.next_version())
        t0 = time.monotonic()
        fault = self.kill_after_writes(n, since)
        return fault, t0, True

    def s_kill_mig(self) -> tuple[str, float, bool]:
        n = self.draw("kill-mig")
        since = time.time()
        self.layout = LAYOUTS[1] if self.layout == LAYOUTS[0] else LAYOUTS[0]
        self.admin.merge_patch("Node", MIG_NODE, {"metadata": {"labels": {MIG_CONFIG: self.layout}}})
        t0 = time.monotonic()
        fault = self.kill_after_writes(n, since)
        return fault, t0, False

    def _restart_mid_rollout(self, component: str) -> tuple[str, float, bool]:
        self.set_version(self.next_version())
        self.wait_rollout_in_progress()
        t0 = time.monotonic()
        away = self.cluster.restart(component)
        self.resync_kubelets()
        return f"{component} killed and back in {away:.1f}s", t0, True

    def resync_kubelets(self) -> None:
        """Restart kwok once the API server answers again. kwok plays the kubelets but retries a pod's action only
        after a refused connection or a timeout: one answered 500 (etcd away) or cut off (the API server killed) is
        dropped, a terminating pod's final delete or a new pod's start say, and the pod waits for good for an event
        that never comes, where a kubelet's periodic sync would carry it out (a GPU workload pod left terminating
        held a PodDisruptionBudget and the driver upgrade's evictions for good). Its restart lists every pod again:
        the kubelets' resync."""
        wait_for(self.cluster.api_ready, 60, interval=0.2, message="the API server ready")
        self.cluster.restart("kwok")

    def s_apiserver_restart(self) -> tuple[str, float, bool]:
        return self._restart_mid_rollout("kube-apiserver")

    def s_etcd_restart(self) -> tuple[str, float, bool]:
        return self._restart_mid_rollout("etcd")

    def s_competing_writer(self) -> tuple[str, float, bool]:
        node = self.rng.choice(sorted(GPU_NODES))
        t0 = time.monotonic()
        since = time.time()
        patch = {
            "spec": {"template": {"spec": {"containers": [{"name": "nvidia-device-plugin", "image": FOREIGN_IMAGE}]}}}
        }
        self.foreign_patch("DaemonSet", DEVICE_PLUGIN_DS, NAMESPACE, patch)
        self.foreign_patch("Node", node, None, {"metadata": {"labels": {"nvidia.com/gpu.present": None}}})

        def fights() -> list[str]:
            """Operator writes to the two objects: one each (taken back), none after."""
            per: dict[str, int] = {}
            for e in self.audit.writes(OPERATOR_USER, since):
                ref = e.get("objectRef") or {}
                if (ref.get("resource"), ref.get("name")) in (("daemonsets", DEVICE_PLUGIN_DS), ("nodes", node)):
                    if not ref.get("subresource"):
                        per[f"{ref['resource']}/{ref['name']}"] = per.get(f"{ref['resource']}/{ref['name']}", 0) + 1
            return [f"{k}: {v} operator writes (want 1)" for k, v in per.items() if v != 1] + [
                f"{k}: not taken back" for k in (f"daemonsets/{DEVICE_PLUGIN_DS}", f"nodes/{node}") if k not in per
            ]

        self._after = fights
        return f"{COMPETITOR} set the device plugin image and removed gpu.present on {node}", t0, False

    def foreign_patch(self, kind: str, name: str, namespace: str | None, patch: dict[str, Any]) -> None:
        self.admin.request("PATCH", path_for(kind, name, namespace), patch, {"fieldManager": COMPETITOR},
                           "application/strategic-merge-patch+json")  # fmt: skip

    def s_watch_expiry(self) -> tuple[str, float, bool]:
        first, second = "gpu-feature-discovery", "nvidia-dcgm-exporter"
        assert self.op.proc is not None
        self.op.proc.send_signal(signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            # The restart first: its watches end before the deletion, so no event of it waits in a socket buffer.
            self.cluster.restart("kube-apiserver")
            self.resync_kubelets()
            wait_for(lambda: self.admin.delete("DaemonSet", first, NAMESPACE), 30, message=f"{first} deleted")
            wait_for(lambda: self.admin.get("DaemonSet", first, NAMESPACE) is None, 30, message=f"{first} gone")
            rev = self.cluster.etcd_compact()
        finally:
            self.op.proc.send_signal(signal.SIGCONT)
        thawed = time.time()
        wait_for(lambda: self.admin.get("DaemonSet", first, NAMESPACE), 120, message=f"{first} recreated")
        # and the watches that came back still deliver: a later deletion is noticed (the operator may recreate
        # it before a poll sees it gone, so it is told by its uid)
        uid = ((self.admin.get("DaemonSet", second, NAMESPACE) or {}).get("metadata") or {}).get("uid")
        self.admin.delete("DaemonSet", second, NAMESPACE)

        def replaced() -> bool:
            obj = self.admin.get("DaemonSet", second, NAMESPACE)
            return obj is not None and obj["metadata"].get("uid") != uid

        wait_for(replaced, 60, message=f"{second} recreated")

        def relisted() -> list[str]:
            listed = {str((e.get("objectRef") or {}).get("resource")) for e in self.audit.lists(OPERATOR_USER, thawed)}
            return [] if "daemonsets" in listed else [f"no relist of daemonsets after 410 (listed: {sorted(listed)})"]

        self._after = relisted
        return f"SIGSTOP, API server restarted, {first} deleted, etcd compacted at {rev}, SIGCONT", t0, False


def _ready(pod: dict[str, Any]) -> bool:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    return (pod.get("status") or {}).get("phase") == "Running" and bool(statuses) and all(c["ready"] for c in statuses)


def gpu_deployment() -> dict[str, Any]:
    """The GPU workload, kept off the MIG node: there a layout change waits for GPU pods (drain is off), which
    is tested in e2e/test_mig.py, not here."""
    off_mig = {"nodeSelectorTerms": [{"matchExpressions": [
        {"key": "kubernetes.io/hostname", "operator": "NotIn", "values": [MIG_NODE]}]}]}  # fmt: skip
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": GPU_APP, "namespace": WORK},
        "spec": {
            "replicas": GPU_REPLICAS, "selector": {"matchLabels": {"app": GPU_APP}},
            "template": {"metadata": {"labels": {"app": GPU_APP}}, "spec": {
                "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": off_mig}},
                "containers": [{
                    "name": "main", "image": "registry.k8s.io/pause:3.10",
                    "resources": {"limits": {"nvidia.com/gpu": 1}}}]}},
        },
    }  # fmt: skip


def summary(results: list[Result]) -> str:
    lines = [f"{'scenario':<18} {'runs':>4} {'recover median':>15} {'max':>7} {'writes median':>14} {'max':>5} failed"
             " killed-converged"]
    for name in dict.fromkeys(r.scenario for r in results):
        rs = [r for r in results if r.scenario == name]
        rec, wr = [r.recover_s for r in rs], [r.writes for r in rs]
        lines.append(
            f"{name:<18} {len(rs):>4} {statistics.median(rec):>14.1f}s {max(rec):>6.1f}s "
            f"{statistics.median(wr):>14.0f} {max(wr):>5} {sum(1 for r in rs if r.violations):>6} "
            f"{sum(1 for r in rs if r.killed_mid_change is False):>16}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--window", type=float, default=15.0, help="seconds of steady state checked for writes")
    parser.add_argument("--timeout", type=float, default=CONVERGE_S, help="seconds allowed to converge")
    parser.add_argument("--keep", type=Path, help="keep the cluster's files and the operator's log in this directory")
    args = parser.parse_args(argv)
    scenarios = [s for s in args.scenarios.split(",") if s]
    unknown = set(scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios: {sorted(unknown)}")
    rng = random.Random(args.seed)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the cluster is stopped and its files removed
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="gpu-operator-chaos-") as tmp:
        state = Path(tmp)
        if args.keep:
            state = args.keep.resolve()
            state.mkdir(parents=True, exist_ok=True)
        env = Chaos(state, rng, args.window, args.timeout)
        try:
            _say(f"cluster up and converged in {env.up():.1f}s (seed {args.seed})")
            for run in range(1, args.runs + 1):
                order = list(scenarios)
                rng.shuffle(order)
                for name in order:
                    r = env.run(name)
                    results.append(r)
                    verdict = "ok" if not r.violations else "FAILED: " + "; ".join(r.violations)
                    print(f"run {run:2d} {name:<18} recovered in {r.recover_s:6.1f}s, {r.writes:4d} writes "
                          f"[{r.fault}] {verdict}", flush=True)  # fmt: skip
        finally:
            env.down(keep=bool(args.keep))
            if results:  # also when stopped early (SIGTERM, Ctrl-C): the runs so far
                print(f"\n{len(results)} scenario runs, seed {args.seed}")
                print(summary(results), flush=True)
    return 1 if any(r.violations for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
