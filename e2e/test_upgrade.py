"""End-to-end: driver upgrades rolled across 12 GPU nodes in two OS pools, within the policy's limits.

The module runs its own cluster (a few seconds to start), so node counts and limits are exactly its own.
Tests build on each other in file order; each changes the driver version and waits for the rollout.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from e2e.cluster.nodes import make_node
from e2e.kube import wait_for
from e2e.nodemodel import PAUSED_FOR_DRIVER
from e2e.operator_process import NAMESPACE, policy_from_sample
from e2e.stack import Env, driver_pods, own_stack, pod_ready
from gpu_operator.kube import Kube
from gpu_operator.upgrade import IN_PROGRESS_STATES, SKIP_LABEL, STATE_LABEL, WAIT_FOR_JOBS_START_ANNOTATION

pytestmark = pytest.mark.local_cluster_only("the module starts its own control plane")

NODES = [f"up-{i:02d}" for i in range(12)]
POOL_OS = {name: ("ubuntu22.04" if i < 6 else "ubuntu24.04") for i, name in enumerate(NODES)}
LIMITS = {"autoUpgrade": True, "maxParallelUpgrades": 3, "maxUnavailable": "25%",
          "podDeletion": {"force": False, "timeoutSeconds": 20, "deleteEmptyDir": False},
          "drain": {"enable": False}}  # fmt: skip
MAX_UNAVAILABLE = 3  # 25% of 12
ROLLOUT_TIMEOUT = 420
DRIVER_READY_DELAY = 2.0
VALIDATOR_DEPLOY = "nvidia.com/gpu.deploy.operator-validator"
WORK = "workloads"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    nodes = [make_node(n, "h100x8" if POOL_OS[n] == "ubuntu22.04" else "a100x4", os=POOL_OS[n]) for n in NODES]
    policy = policy_from_sample()
    policy["spec"]["driver"]["upgradePolicy"] = LIMITS

    def prepare(admin: Kube) -> None:
        admin.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": WORK}})

    with own_stack(tmp_path_factory, "upgrade", nodes + [make_node("up-cpu", "cpu")], prepare, policy,
                   driver_ready_delay=DRIVER_READY_DELAY) as e:  # fmt: skip
        wait_done(e, "595.91.07", timeout=180)
        yield e


def node(env: Env, name: str) -> dict[str, Any]:
    obj = env.admin.get("Node", name)
    assert obj is not None, name
    return obj


def rollout_state(env: Env, version: str, nodes: list[str]) -> str | None:
    """None when every node is upgrade-done, uncordoned, on a Ready driver of `version`; else what is left."""
    pods = driver_pods(env.admin)
    left = []
    for name in nodes:
        n = node(env, name)
        state = n["metadata"].get("labels", {}).get(STATE_LABEL)
        pod = pods.get(name)
        image = pod["spec"]["containers"][0]["image"] if pod else ""
        if (
            state != "upgrade-done"
            or n["spec"].get("unschedulable")
            or f":{version}-" not in image
            or not (pod and pod_ready(pod))
        ):
            left.append(f"{name}={state}{' cordoned' if n['spec'].get('unschedulable') else ''}")
    return ", ".join(left) or None


def wait_done(env: Env, version: str, nodes: list[str] = NODES, timeout: float = ROLLOUT_TIMEOUT) -> float:
    began = time.monotonic()
    last: list[str | None] = [None]

    def done() -> bool:
        last[0] = rollout_state(env, version, nodes)
        return last[0] is None

    try:
        wait_for(done, timeout, interval=1.0, message=f"rollout of {version}")
    except AssertionError as exc:
        policy = env.admin.get("ClusterPolicy", "cluster-policy") or {}
        raise AssertionError(
            f"{exc}\nleft: {last[0]}\nupgrade status: {policy.get('status', {}).get('upgrade')}\n"
            f"operator log:\n{env.op.log_tail(40)}"
        ) from None
    return time.monotonic() - began


def set_version(env: Env, version: str) -> None:
    env.admin.merge_patch("ClusterPolicy", "cluster-policy", {"spec": {"driver": {"version": version}}})


class Watcher(threading.Thread):
    """Samples the nodes while a rollout runs: the most in progress, the most unavailable, driver pods seen, and
    the sample each node was first seen in progress in (the order the rollout started them)."""

    def __init__(self, env: Env, nodes: list[str] = NODES):
        super().__init__(daemon=True)
        self.env, self.nodes = env, set(nodes)
        self.max_in_progress = self.max_unavailable = 0
        self.driver_pods: dict[str, set[str]] = {n: set() for n in nodes}
        self.paused: set[str] = set()  # nodes seen with their operands paused by k8s-driver-manager
        self.samples = 0
        self.started: dict[str, int] = {}  # node -> the (successful) sample it was first seen in progress in
        self.stop_flag = threading.Event()

    def run(self) -> None:
        while not self.stop_flag.is_set():
            try:
                nodes = [n for n in self.env.admin.list("Node") if n["metadata"]["name"] in self.nodes]
                states = [n["metadata"].get("labels", {}).get(STATE_LABEL, "") for n in nodes]
                unavailable = [n for n in nodes if n["spec"].get("unschedulable") or not _ready(n)]
                self.max_in_progress = max(self.max_in_progress, sum(s in IN_PROGRESS_STATES for s in states))
                for n, state in zip(nodes, states, strict=True):
                    if state in IN_PROGRESS_STATES:
                        self.started.setdefault(n["metadata"]["name"], self.samples)
                self.samples += 1
                self.max_unavailable = max(self.max_unavailable, len(unavailable))
                self.paused |= {n["metadata"]["name"] for n in nodes
                                if n["metadata"].get("labels", {}).get(VALIDATOR_DEPLOY) == PAUSED_FOR_DRIVER}
                for name, pod in driver_pods(self.env.admin).items():
                    if name in self.driver_pods:
                        self.driver_pods[name].add(pod["metadata"]["name"])
            except Exception:  # noqa: BLE001 - a failed sample is skipped; the next one counts
                pass
            time.sleep(0.25)

    def stop(self) -> None:
        self.stop_flag.set()
        self.join(timeout=5)


def _ready(n: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in n.get("status", {}).get("conditions") or [])


def deployment(name: str, replicas: int, gpu: bool, on_node: str | None = None) -> dict[str, Any]:
    resources = {"limits": {"nvidia.com/gpu": 1}} if gpu else {"requests": {"cpu": "100m"}}
    pod_spec: dict[str, Any] = {
        "containers": [{"name": "main", "image": "registry.k8s.io/pause:3.10", "resources": resources}]
    }
    if on_node:
        pod_spec["nodeSelector"] = {"kubernetes.io/hostname": on_node}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": WORK},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": pod_spec,
            },
        },
    }


def workload_pods(env: Env, app: str) -> dict[str, dict[str, Any]]:
    return {
        p["metadata"]["uid"]: p
        for p in env.admin.list("Pod", WORK, label_selector=f"app={app}")
        if not p["metadata"].get("deletionTimestamp")
    }


def running(pods: dict[str, dict[str, Any]]) -> int:
    return sum(1 for p in pods.values() if p.get("status", {}).get("phase") == "Running")


def test_rollout_across_two_pools_stays_within_limits(env: Env) -> None:
    env.admin.apply(deployment("gpu-work", 12, gpu=True))
    env.admin.apply(deployment("cpu-work", 6, gpu=False))
    wait_for(lambda: running(workload_pods(env, "gpu-work")) == 12, 120, message="12 GPU pods running")
    wait_for(lambda: running(workload_pods(env, "cpu-work")) == 6, 120, message="6 CPU pods running")
    gpu_before = set(workload_pods(env, "gpu-work"))
    cpu_before = set(workload_pods(env, "cpu-work"))

    watcher = Watcher(env)
    watcher.start()
    set_version(env, "600.10.01")
    seconds = wait_done(env, "600.10.01")
    watcher.stop()
    print(f"\nrollout of 12 nodes (driver ready after {DRIVER_READY_DELAY:.0f}s): {seconds:.1f}s")

    assert watcher.max_in_progress <= 3, f"{watcher.max_in_progress} nodes in progress at once"
    assert watcher.max_unavailable <= MAX_UNAVAILABLE, f"{watcher.max_unavailable} nodes unavailable at once"
    assert watcher.max_in_progress >= 2, "the rollout never ran nodes in parallel"
    twice = {n: p for n, p in watcher.driver_pods.items() if len(p) > 2}
    assert not twice, f"driver restarted more than once: {twice}"
    # Each new driver pod's k8s-driver-manager paused the node's operands; the operator left them paused (the
    # manager waits for their pods to go) and every node has them back.
    assert watcher.paused, "no node was seen with its operands paused for the driver upgrade"
    left = {n: node(env, n)["metadata"]["labels"].get(VALIDATOR_DEPLOY) for n in NODES}
    assert set(left.values()) == {"true"}, left
    # Both pools moved to their own new image.
    pods = driver_pods(env.admin)
    assert pods["up-00"]["spec"]["containers"][0]["image"].endswith(":600.10.01-ubuntu22.04")
    assert pods["up-11"]["spec"]["containers"][0]["image"].endswith(":600.10.01-ubuntu24.04")
    # GPU pods were evicted and came back elsewhere; CPU-only pods were never touched.
    gpu_after = workload_pods(env, "gpu-work")
    assert not gpu_before & set(gpu_after), "GPU pods were not evicted"
    wait_for(lambda: running(workload_pods(env, "gpu-work")) == 12, 120, message="GPU pods rescheduled")
    assert set(workload_pods(env, "cpu-work")) == cpu_before, "CPU-only pods were touched"
    # Nodes whose new driver pod turned Ready were moved on by themselves, not by a pass over every node.
    log = env.op.log_path.read_text()
    moved = {n for n in NODES if f"upgrade of node {n}: pod-restart-required -> " in log}
    assert moved, f"no node moved on between passes; operator log:\n{env.op.log_tail(40)}"

    def counted() -> bool:
        upgrade = (env.admin.get("ClusterPolicy", "cluster-policy") or {})["status"]["upgrade"]
        return bool(upgrade["done"] == 12 and upgrade["inProgress"] == 0 and not upgrade["waiting"])

    wait_for(counted, 30, message="status.upgrade to count 12 nodes done")


def test_pdb_blocked_eviction_fails_the_node_with_the_reason_and_never_forces(env: Env) -> None:
    target = "up-01"
    env.admin.apply(deployment("gpu-work", 0, gpu=True))
    env.admin.apply(deployment("guarded", 1, gpu=True, on_node=target))
    env.admin.apply({
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "guarded", "namespace": WORK},
        "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "guarded"}}},
    })  # fmt: skip
    pod_uid = wait_for(lambda: next(iter(workload_pods(env, "guarded")), None), 60, message="guarded pod")
    wait_for(lambda: running(workload_pods(env, "guarded")) == 1, 60, message="guarded pod running")
    env.admin.merge_patch(
        "Node", target, {"metadata": {"annotations": {"nvidia.com/gpu-driver-upgrade-requested": "true"}}}
    )

    def failed() -> dict[str, Any] | None:
        n = node(env, target)
        return n if n["metadata"]["labels"].get(STATE_LABEL) == "upgrade-failed" else None

    wait_for(failed, 120, interval=1, message=f"{target} upgrade-failed")
    assert pod_uid in workload_pods(env, "guarded"), "the PDB-protected pod was deleted"

    def texts() -> str:
        events = env.admin.list("Event", "default", field_selector=f"involvedObject.name={target}")
        return " ".join(e.get("message", "") for e in events if e.get("reason") == "GPUDriverUpgrade")

    # The failure's event follows the node's patch (posted after it): wait for it rather than read once.
    try:
        wait_for(lambda: "eviction" in (t := texts()) and "timeoutSeconds" in t, 15, message="the failure's event")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {texts()}") from None

    def reported() -> dict[str, Any] | None:
        status = (env.admin.get("ClusterPolicy", "cluster-policy") or {})["status"]["upgrade"]
        wait = {w["node"]: w for w in status["waiting"]}.get(target)
        return wait if wait and wait["state"] == "upgrade-failed" else None

    failure = wait_for(reported, 30, message=f"status.upgrade names {target} as failed")
    assert "eviction" in failure["reason"], failure
    # Lift the PDB and retry by relabelling: the node finishes.
    env.admin.delete("PodDisruptionBudget", "guarded", WORK)
    env.admin.merge_patch("Node", target, {"metadata": {"labels": {STATE_LABEL: "upgrade-required"}}})
    wait_done(env, "600.10.01", [target], timeout=120)
    assert pod_uid not in workload_pods(env, "guarded")


def test_operator_killed_twice_mid_rollout_finishes_without_stranding_a_node(env: Env) -> None:
    watcher = Watcher(env)
    watcher.start()
    set_version(env, "600.20.02")
    for _ in range(2):
        wait_for(lambda: watcher.max_in_progress > 0 and _in_progress(env) > 0, 120, message="rollout under way")
        time.sleep(1.5)
        env.op.stop(signal.SIGKILL)
        env.op.start()
    wait_done(env, "600.20.02")
    watcher.stop()
    twice = {n: p for n, p in watcher.driver_pods.items() if len(p) > 2}
    assert not twice, f"a node was upgraded twice: {twice}"
    assert watcher.max_in_progress <= 3 and watcher.max_unavailable <= MAX_UNAVAILABLE
    assert not [n for n in NODES if node(env, n)["spec"].get("unschedulable")]


def _in_progress(env: Env) -> int:
    states = [node(env, n)["metadata"]["labels"].get(STATE_LABEL, "") for n in NODES]
    return sum(s in IN_PROGRESS_STATES for s in states)


def test_skip_label_pre_cordoned_node_and_crash_looping_driver(env: Env) -> None:
    skipped, cordoned, crashing = "up-02", "up-03", "up-08"
    env.admin.merge_patch("Node", skipped, {"metadata": {"labels": {SKIP_LABEL: "true"}}})
    env.admin.merge_patch("Node", cordoned, {"spec": {"unschedulable": True}})
    env.sim.crash_loop_driver(crashing, True)
    set_version(env, "600.30.03")
    others = [n for n in NODES if n not in (skipped, crashing)]
    wait_done_cordoned = [n for n in others if n != cordoned]
    wait_done(env, "600.30.03", wait_done_cordoned)

    def failed() -> bool:
        return node(env, crashing)["metadata"]["labels"].get(STATE_LABEL) == "upgrade-failed"

    wait_for(failed, 180, interval=1, message=f"{crashing} upgrade-failed (crash-looping driver)")
    # The pre-cordoned node is upgraded and stays cordoned.
    c = node(env, cordoned)
    assert c["metadata"]["labels"][STATE_LABEL] == "upgrade-done" and c["spec"].get("unschedulable")
    assert ":600.30.03-" in driver_pods(env.admin)[cordoned]["spec"]["containers"][0]["image"]
    # The skipped node keeps its old driver.
    assert ":600.20.02-" in driver_pods(env.admin)[skipped]["spec"]["containers"][0]["image"]

    def crash_reported() -> str | None:
        # The status is written at the end of the pass that labelled the node, so right after the label it may
        # still give the reason of the pass before (waiting for the pod): wait for the failure's.
        status = (env.admin.get("ClusterPolicy", "cluster-policy") or {})["status"]["upgrade"]
        reason = {w["node"]: w["reason"] for w in status["waiting"]}.get(crashing)
        return reason if reason and reason.startswith("upgrade failed") else None

    reason: str = wait_for(crash_reported, 30, message=f"status.upgrade names {crashing} as failed")
    assert "restart" in reason or "crash" in reason.lower(), reason
    # Once the driver runs, the failed node recovers by itself.
    env.sim.crash_loop_driver(crashing, False)
    env.admin.delete("Pod", driver_pods(env.admin)[crashing]["metadata"]["name"], NAMESPACE)
    wait_done(env, "600.30.03", [crashing], timeout=180)
    env.admin.merge_patch("Node", cordoned, {"spec": {"unschedulable": None}})


def run_cli(env: Env, *args: str) -> str:
    cmd = [sys.executable, "-m", "gpu_operator.cli", *args, "--kubeconfig", str(env.cluster.kubeconfig)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_auto_upgrade_switched_off_mid_upgrade_uncordons_the_node_it_had_cordoned(env: Env) -> None:
    held = "up-02"  # skipped so far, so still on its old driver: let go, it starts its upgrade
    env.admin.apply(deployment("long-job", 1, gpu=False, on_node=held))
    wait_for(lambda: running(workload_pods(env, "long-job")) == 1, 60, message="long-job running")
    wait = {"waitForCompletion": {"podSelector": "app=long-job", "timeoutSeconds": 0}}
    env.admin.merge_patch("ClusterPolicy", "cluster-policy", {"spec": {"driver": {"upgradePolicy": wait}}})
    try:
        env.admin.merge_patch("Node", held, {"metadata": {"labels": {SKIP_LABEL: None}}})

        def waiting_cordoned() -> bool:
            n = node(env, held)
            waiting = n["metadata"]["labels"].get(STATE_LABEL) == "wait-for-jobs-required"
            stamped = WAIT_FOR_JOBS_START_ANNOTATION in n["metadata"].get("annotations", {})
            return waiting and stamped and bool(n["spec"].get("unschedulable"))

        wait_for(waiting_cordoned, 60, message=f"{held} cordoned, waiting for long-job")
        off = {"autoUpgrade": False, "waitForCompletion": None}
        env.admin.merge_patch("ClusterPolicy", "cluster-policy", {"spec": {"driver": {"upgradePolicy": off}}})

        def handed_back() -> bool:
            n = node(env, held)
            return STATE_LABEL not in n["metadata"]["labels"] and not n["spec"].get("unschedulable")

        wait_for(handed_back, 60, message=f"{held} uncordoned and unlabelled with autoUpgrade off")

        def upgrade_texts() -> list[str]:
            events = env.admin.list("Event", "default", field_selector=f"involvedObject.name={held}")
            return [e.get("message", "") for e in events if e.get("reason") == "GPUDriverUpgrade"]

        # The event follows the node's patch (posted after it): wait for it rather than read once.
        said = "autoUpgrade switched off in wait-for-jobs-required: node uncordoned"
        try:
            wait_for(lambda: any(said in t for t in upgrade_texts()), 15, message="the switched-off event")
        except Exception:  # noqa: BLE001 - the assertion below shows what was posted
            pass
        texts = upgrade_texts()
        assert any(said in t for t in texts), texts
        assert WAIT_FOR_JOBS_START_ANNOTATION not in node(env, held)["metadata"].get("annotations", {})
    finally:
        env.admin.delete("Deployment", "long-job", WORK)


def test_upgrade_plan_previews_the_waves_then_the_rollout_follows_them(env: Env) -> None:
    # The test before left autoUpgrade off and every node unlabelled and uncordoned.
    policy_patch = {"spec": {"driver": {"upgradePolicy": {"autoUpgrade": False}}}}
    env.admin.merge_patch("ClusterPolicy", "cluster-policy", policy_patch)
    wait_for(lambda: not [n for n in NODES if STATE_LABEL in node(env, n)["metadata"]["labels"]], 60,
             message="state labels removed with autoUpgrade off")  # fmt: skip
    set_version(env, "600.40.04")

    def previewed() -> list[list[str]]:
        out = run_cli(env, "upgrade", "plan")
        return [line.split(": ", 1)[1].split(", ") for line in out.splitlines() if line.startswith("wave ")]

    def all_twelve_available() -> list[list[str]] | None:
        # Nodes the last test upgraded may still be starting their operands again (k8s-driver-manager evicted
        # them): unavailable, they shrink the first waves until they are up.
        w = previewed()
        return w if [len(x) for x in w] == [3, 3, 3, 3] else None

    try:
        waves: list[list[str]] = wait_for(all_twelve_available, 120, message="12 nodes in 4 waves of 3")
    except AssertionError as exc:  # say which nodes keep a slot
        held = {n: (o["spec"].get("unschedulable"), _ready(o), o["metadata"]["labels"].get(STATE_LABEL))
                for n in NODES for o in [node(env, n)]}  # fmt: skip
        raise AssertionError(f"{exc}\n{run_cli(env, 'upgrade', 'plan')}\n(cordoned, Ready, state): {held}") from exc
    assert "autoUpgrade is off" in run_cli(env, "upgrade", "plan")
    time.sleep(3)
    assert all(node(env, n)["metadata"]["labels"].get(STATE_LABEL) is None for n in NODES), "orchestrated while off"

    first_wave = set(waves[0])
    watcher = Watcher(env)
    watcher.start()
    policy_patch["spec"]["driver"]["upgradePolicy"]["autoUpgrade"] = True
    env.admin.merge_patch("ClusterPolicy", "cluster-policy", policy_patch)
    started = wait_for(
        lambda: {n for n in NODES if node(env, n)["metadata"]["labels"].get(STATE_LABEL) in IN_PROGRESS_STATES},
        60, interval=0.2, message="first wave started",
    )  # fmt: skip
    assert started <= first_wave, f"started {started}, preview said {first_wave}"
    wait_done(env, "600.40.04")
    watcher.stop()
    # The rollout followed the preview: each previewed node was seen in progress, none before a node of an earlier
    # wave had been (by the watcher's sample order, not by time), and never past a wave's limits.
    seen = watcher.started
    assert set(seen) == {n for wave in waves for n in wave}, f"seen in progress (sample): {seen}, preview: {waves}"
    for i in range(1, len(waves)):
        last, first = max(seen[n] for n in waves[i - 1]), min(seen[n] for n in waves[i])
        assert last <= first, f"wave {i + 1} started before wave {i} had; seen (sample): {seen}, preview: {waves}"
    assert 1 <= watcher.max_in_progress <= 3, f"{watcher.max_in_progress} nodes in progress at once"
    assert watcher.max_unavailable <= MAX_UNAVAILABLE, f"{watcher.max_unavailable} nodes unavailable at once"
    assert "no node needs an upgrade" in run_cli(env, "upgrade", "plan")

    def metrics() -> dict[str, float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{env.op.metrics_port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        return {
            line.split()[0]: float(line.split()[1])
            for line in text.splitlines()
            if line.startswith("gpu_operator_") and " " in line
        }

    def counted() -> dict[str, float] | None:
        m = metrics()
        return m if m.get("gpu_operator_nodes_upgrades_done") == 12 else None

    m: dict[str, float] = wait_for(counted, 30, message="upgrade metrics")
    assert m["gpu_operator_driver_auto_upgrade_enabled"] == 1
    assert m["gpu_operator_nodes_upgrades_in_progress"] == 0 and m["gpu_operator_nodes_upgrades_failed"] == 0
    assert m["gpu_operator_gpu_nodes_total"] == 12
    # Ready once the validators re-validated after the last wave (waited for: read once, it flaked).
    assert wait_for(lambda: metrics()["gpu_operator_reconciliation_status"] == 1, 60, message="status 1") is True


def test_a_node_that_disappears_mid_upgrade_does_not_block_the_rest(env: Env) -> None:
    set_version(env, "600.50.05")

    def in_progress() -> str | None:
        states = {n: node(env, n)["metadata"]["labels"].get(STATE_LABEL, "") for n in NODES}
        return next((n for n, s in sorted(states.items()) if s in IN_PROGRESS_STATES), None)

    victim: str = wait_for(in_progress, 60, interval=0.2, message="a node in progress")
    env.admin.delete("Node", victim)
    rest = [n for n in NODES if n != victim]
    wait_done(env, "600.50.05", rest)
    status = (env.admin.get("ClusterPolicy", "cluster-policy") or {})["status"]
    assert victim not in {w["node"] for w in status["upgrade"]["waiting"]}


def test_the_driver_disabled_mid_upgrade_lets_the_nodes_go_and_the_plan_agrees(env: Env) -> None:
    """No upgrade can go on once the ClusterPolicy's driver is off: the nodes are let go as with autoUpgrade off
    (upstream leaves them cordoned for good). And one snapshot function serves `upgrade plan` and the operator:
    with the driver off neither manages a node (the plan used to list 12)."""
    nodes = {n["metadata"]["name"]: n for n in env.admin.list("Node")}
    held = next(n for n in NODES if n in nodes and not nodes[n]["spec"].get("unschedulable")
                and SKIP_LABEL not in nodes[n]["metadata"].get("labels", {}))  # fmt: skip
    env.admin.apply(deployment("long-job", 1, gpu=False, on_node=held))
    try:
        wait_for(lambda: running(workload_pods(env, "long-job")) == 1, 60, message="long-job running")
        wait = {"waitForCompletion": {"podSelector": "app=long-job", "timeoutSeconds": 0}}
        env.admin.merge_patch("ClusterPolicy", "cluster-policy", {"spec": {"driver": {"upgradePolicy": wait}}})
        set_version(env, "600.60.06")

        def waiting_cordoned() -> bool:
            n = node(env, held)
            return n["metadata"]["labels"].get(STATE_LABEL) == "wait-for-jobs-required" and bool(
                n["spec"].get("unschedulable"))  # fmt: skip

        wait_for(waiting_cordoned, 120, message=f"{held} cordoned, waiting for long-job")
        env.admin.merge_patch("ClusterPolicy", "cluster-policy", {"spec": {"driver": {"enabled": False}}})

        def let_go() -> bool:
            labelled = [n["metadata"]["name"] for n in env.admin.list("Node") if STATE_LABEL in n["metadata"]["labels"]]
            return not labelled and not node(env, held)["spec"].get("unschedulable")

        wait_for(let_go, 60, message=f"no node left in an upgrade state, {held} uncordoned")

        def upgrade_texts() -> list[str]:
            events = env.admin.list("Event", "default", field_selector=f"involvedObject.name={held}")
            return [e.get("message", "") for e in events if e.get("reason") == "GPUDriverUpgrade"]

        said = "the ClusterPolicy's driver was switched off in wait-for-jobs-required: node uncordoned"
        try:  # the event follows the node's patch
            wait_for(lambda: any(said in t for t in upgrade_texts()), 15, message="the let-go event")
        except Exception:  # noqa: BLE001 - the assertion below shows what was posted
            pass
        assert any(said in t for t in upgrade_texts()), upgrade_texts()
    finally:
        env.admin.delete("Deployment", "long-job", WORK)

    def settled() -> dict[str, Any] | None:
        policy = env.admin.get("ClusterPolicy", "cluster-policy") or {}
        status = policy.get("status") or {}
        states = {s["name"]: s["state"] for s in status.get("states") or []}
        current = status.get("observedGeneration") == policy["metadata"]["generation"]
        return status if current and states.get("state-driver") == "disabled" else None

    status: dict[str, Any] = wait_for(settled, 60, message="driver disabled in the status")
    assert "upgrade" not in status
    out = run_cli(env, "upgrade", "plan")
    assert "nodes: 0 managed" in out and "the ClusterPolicy's driver is disabled" in out, out

    def gauges() -> str | None:
        with urllib.request.urlopen(f"http://127.0.0.1:{env.op.metrics_port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        return text if "gpu_operator_nodes_upgrades_done 0.0" in text else None

    wait_for(gauges, 30, message="the operator's upgrade gauges at 0 with the driver off")

