"""End-to-end: NVIDIADriver resources drive the driver once the ClusterPolicy sets driver.useNvidiaDriverCRD.

Five H100 nodes: a0, a1 (pool=a), b0, b1 (pool=b) and c0 (pool=c). The cluster starts under the sample policy
(one driver for all); a default NVIDIADriver with the same settings is created and useNvidiaDriverCRD switched
on: no driver pod restarts. An NVIDIADriver for pool=b with another version converges there (two versions in the
cluster); a third selecting b1 again is a conflict named on both. A precompiled NVIDIADriver for pool=c gets
per-kernel images; when c0's kernel label changes the upgrade state machine cordons it and moves it to the new
kernel's pool. The module runs its
own cluster.

The handover tests (test_switching_on_*, test_switching_to_a_non_default_*) each run a cluster of their own, three
H100 nodes (sw-0..2, pool=sw) whose driver the ClusterPolicy rolled out, and sample it every 0.2 s while
useNvidiaDriverCRD is switched on: the driver DaemonSets of the mode left are deleted with propagationPolicy Orphan,
a DaemonSet of the same pool (the default NVIDIADriver's) adopts the running pods, and pods none adopts are
replaced by the upgrade state machine, one node at a time.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from e2e.cluster.nodes import make_node
from e2e.kube import wait_for
from e2e.operator_process import NAMESPACE, policy_from_sample
from e2e.stack import DRIVER_PODS, Env, driver_pods, own_stack, pod_ready
from gpu_operator.nodes import DRIVER_KERNEL
from gpu_operator.nvidiadriver_api import OWNER_LABEL
from gpu_operator.upgrade import IN_PROGRESS_STATES

POOLS = {"nd-a0": "a", "nd-a1": "a", "nd-b0": "b", "nd-b1": "b", "nd-c0": "c"}
KERNEL = "feature.node.kubernetes.io/kernel-version.full"
UPGRADE_STATE = "nvidia.com/gpu-driver-upgrade-state"
DEPLOY = "nvidia.com/gpu.deploy."
WAIT = 240


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    nodes = []
    for name, pool in POOLS.items():
        node = make_node(name, "h100x8")
        node["metadata"]["labels"]["pool"] = pool
        nodes.append(node)
    with own_stack(tmp_path_factory, "nvd", nodes) as e:
        yield e


def image(pod: dict[str, Any]) -> str:
    return str(next(c["image"] for c in pod["spec"]["containers"] if c["name"] == "nvidia-driver-ctr"))


def labels(env: Env, node: str) -> dict[str, str]:
    return dict(((env.admin.get("Node", node) or {}).get("metadata") or {}).get("labels") or {})


def nvd_status(env: Env, name: str) -> dict[str, Any]:
    return dict((env.admin.get("NVIDIADriver", name) or {}).get("status") or {})


def nodes_report(env: Env) -> str:
    """Each GPU node's deploy labels (by value) and upgrade state, and its driver pod's unfinished init containers."""
    pods = driver_pods(env.admin)
    lines = []
    for node in env.admin.list("Node"):
        name, node_labels = node["metadata"]["name"], node["metadata"].get("labels") or {}
        deploy: dict[str, list[str]] = {}
        for k, v in sorted(node_labels.items()):
            if k.startswith(DEPLOY):
                deploy.setdefault(v or '""', []).append(k.removeprefix(DEPLOY))
        if not deploy:
            continue
        inits = []
        for cs in ((pods.get(name) or {}).get("status") or {}).get("initContainerStatuses") or []:
            kind, detail = next(iter((cs.get("state") or {"unknown": {}}).items()))
            if kind == "terminated" and detail.get("exitCode") == 0:
                continue
            last = ((cs.get("lastState") or {}).get("terminated") or {}).get("message", "")
            inits.append(f"{cs['name']} {kind} {detail.get('reason', '')} {detail.get('message', '')[:80]}"
                         f"{' last: ' + last[:120] if last else ''}".strip())
        grouped = "; ".join(f"{v}: {','.join(ks)}" for v, ks in deploy.items())
        lines.append(f"  {name} {UPGRADE_STATE}={node_labels.get(UPGRADE_STATE, '')}; deploy {grouped}"
                     + (f"; driver init: {' | '.join(inits)}" if inits else ""))
    return "\n".join(lines)


def wait(env: Env, fn: Any, message: str, timeout: float = WAIT) -> Any:
    try:
        return wait_for(fn, timeout, interval=0.5, message=message)
    except AssertionError as exc:
        pods = {n: (image(p), pod_ready(p)) for n, p in driver_pods(env.admin).items()}
        try:
            nodes = nodes_report(env)
        except Exception as e:  # noqa: BLE001 - the report must not hide the failure
            nodes = f"  (no report: {e!r})"
        raise AssertionError(f"{exc}\ndriver pods: {pods}\nnodes:\n{nodes}\noperator log:\n{env.op.log_tail(30)}") \
            from None


def nvidiadriver(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "nvidia.com/v1alpha1", "kind": "NVIDIADriver", "metadata": {"name": name}, "spec": spec}


def policy_driver_settings() -> dict[str, Any]:
    """The sample ClusterPolicy's driver settings, as an NVIDIADriver spec (the chart's default NVIDIADriver)."""
    driver = policy_from_sample()["spec"]["driver"]
    return {k: driver[k] for k in ("repository", "image", "version", "imagePullPolicy", "startupProbe", "rdma",
                                   "manager", "kernelModuleType", "upgradePolicy") if k in driver}  # fmt: skip


def all_ready(env: Env, nodes: list[str]) -> bool:
    pods = driver_pods(env.admin)
    return all(pod_ready(pods.get(n)) for n in nodes)


def test_switching_to_a_default_nvidiadriver_restarts_no_driver_pod(env: Env) -> None:
    wait(env, lambda: all_ready(env, list(POOLS)), "every node runs a ready driver under the ClusterPolicy")
    before = {n: p["metadata"]["uid"] for n, p in driver_pods(env.admin).items()}
    env.admin.create(nvidiadriver("default", default=True, **policy_driver_settings()))
    env.admin.merge_patch("ClusterPolicy", "cluster-policy", {"spec": {"driver": {"useNvidiaDriverCRD": True}}})
    wait(env, lambda: nvd_status(env, "default").get("state") == "ready", "the default NVIDIADriver is ready")
    wait(env, lambda: nvd_status(env, "default").get("nodes") == len(POOLS), "it drives every node")
    ds = env.admin.list("DaemonSet", NAMESPACE, label_selector="nvidia.com/gpu-operator.state=state-driver")
    assert ds and all(d["metadata"]["ownerReferences"][0]["kind"] == "NVIDIADriver" for d in ds)
    after = {n: p["metadata"]["uid"] for n, p in driver_pods(env.admin).items()}
    assert after == before, "a driver pod restarted although its driver did not change"


def test_two_nvidiadrivers_converge_with_two_versions(env: Env) -> None:
    env.admin.create(nvidiadriver("pool-b", repository="nvcr.io/nvidia", image="driver", version="580.95.05",
                                  nodeSelector={"pool": "b"}))  # fmt: skip

    def converged() -> bool:
        pods = driver_pods(env.admin)
        return all(
            pod_ready(pods.get(n)) and ("580.95.05" in image(pods[n])) == (pool == "b") for n, pool in POOLS.items()
        )

    wait(env, converged, "pool b runs 580.95.05, the other nodes keep the default version")
    wait(env, lambda: nvd_status(env, "pool-b").get("state") == "ready", "NVIDIADriver pool-b is ready")
    node = env.admin.get("Node", "nd-b0") or {}
    assert node["metadata"]["labels"].get(OWNER_LABEL) == "pool-b"
    assert nvd_status(env, "pool-b")["nodes"] == 2
    # `upgrade plan` shows one section per NVIDIADriver, each with its own policy and nodes.
    cmd = [sys.executable, "-m", "gpu_operator.cli", "upgrade", "plan", "--kubeconfig", str(env.cluster.kubeconfig)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "NVIDIADriver default: autoUpgrade=true" in done.stdout and "of 3 nodes)" in done.stdout
    assert "NVIDIADriver pool-b: autoUpgrade=true" in done.stdout, done.stdout


def test_an_overlapping_nvidiadriver_is_a_conflict_on_both(env: Env) -> None:
    env.admin.merge_patch("Node", "nd-b1", {"metadata": {"labels": {"rack": "r7"}}})
    env.admin.create(nvidiadriver("rack-r7", version="580.95.05", nodeSelector={"rack": "r7"}))
    for name in ("pool-b", "rack-r7"):

        def conflict(name: str = name) -> bool:
            conds = nvd_status(env, name).get("conditions") or []
            err: dict[str, Any] = next((c for c in conds if c["type"] == "Error"), {})
            return err.get("reason") == "ConflictingNodeSelector" and "nd-b1" in err.get("message", "")

        wait(env, conflict, f"{name} names the conflict on nd-b1")

    def events() -> set[str]:
        return {
            e["involvedObject"]["name"] for e in env.admin.list("Event", "default")
            if e.get("reason") == "ConflictingNodeSelector" and e.get("type") == "Warning"
        }  # fmt: skip

    wait(env, lambda: events() >= {"pool-b", "rack-r7"}, "a Warning event on both NVIDIADrivers")
    assert nvd_status(env, "rack-r7")["nodes"] == 0
    env.admin.delete("NVIDIADriver", "rack-r7")


def test_precompiled_node_moves_to_its_new_kernels_pool(env: Env) -> None:
    env.admin.create(nvidiadriver("pool-c", repository="nvcr.io/nvidia", image="driver", version="580",
                                  usePrecompiled=True, nodeSelector={"pool": "c"}))  # fmt: skip
    kernel = (env.admin.get("Node", "nd-c0") or {})["metadata"]["labels"][KERNEL]

    def runs(tag: str) -> bool:
        pod = driver_pods(env.admin).get("nd-c0")
        return pod_ready(pod) and pod is not None and image(pod).endswith(f":580-{tag}-ubuntu22.04")

    wait(env, lambda: runs(kernel), "nd-c0 runs the precompiled driver for its kernel")
    wait(env, lambda: labels(env, "nd-c0").get(UPGRADE_STATE) == "upgrade-done", "nd-c0 is upgrade-done")
    new_kernel = "6.8.0-60-generic"
    env.admin.merge_patch("Node", "nd-c0", {"metadata": {"labels": {KERNEL: new_kernel}}})
    # The upgrade state machine moves it: cordoned, its GPU pods evicted (pool-c sets no upgradePolicy: upstream's
    # default podDeletion; it has none here), then its driver pod changes pools.
    wait(env, lambda: (env.admin.get("Node", "nd-c0") or {}).get("spec", {}).get("unschedulable") is True,
         "nd-c0 is cordoned for the move")  # fmt: skip
    wait(env, lambda: runs(new_kernel), "nd-c0 runs the precompiled driver for its new kernel")
    wait(env, lambda: labels(env, "nd-c0").get(UPGRADE_STATE) == "upgrade-done", "nd-c0 is upgrade-done again")
    wait(env, lambda: not (env.admin.get("Node", "nd-c0") or {}).get("spec", {}).get("unschedulable"),
         "nd-c0 is uncordoned")  # fmt: skip
    assert labels(env, "nd-c0")[DRIVER_KERNEL] == new_kernel
    messages = [
        e.get("message", "") for e in env.admin.list("Event", "default")
        if e["involvedObject"].get("name") == "nd-c0" and e.get("reason") == "GPUDriverUpgrade"
    ]  # fmt: skip
    assert any(f"kernel is now {new_kernel}" in m for m in messages), messages


# --- the handover: useNvidiaDriverCRD switched on under running drivers (a cluster of its own per test) ---

SWITCH_NODES = ["sw-0", "sw-1", "sw-2"]
POLICY = "cluster-policy"
ROLLOUT = 300  # three nodes upgraded one after another


@pytest.fixture
def switching(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    """Three GPU nodes (pool=sw) whose driver the ClusterPolicy (the sample's, useNvidiaDriverCRD off) rolled out:
    each runs a Ready driver pod of a ClusterPolicy DaemonSet and is upgrade-done, the ClusterPolicy ready."""
    nodes = []
    for name in SWITCH_NODES:
        node = make_node(name, "h100x8")
        node["metadata"]["labels"]["pool"] = "sw"
        nodes.append(node)
    with own_stack(tmp_path_factory, "switch", nodes) as e:

        def settled() -> bool:
            pods = driver_pods(e.admin)
            ours = {uid for uid, ds in driver_daemonsets(e).items() if owner_of(ds) == ("ClusterPolicy", POLICY)}
            return (
                policy_state(e) == "ready"
                and all(pod_ready(pods.get(n)) and controller_uid(pods[n]) in ours for n in SWITCH_NODES)
                and all(labels(e, n).get(UPGRADE_STATE) == "upgrade-done" for n in SWITCH_NODES)
            )

        wait(e, settled, "every node runs a Ready driver of the ClusterPolicy's DaemonSet, upgrade-done")
        yield e


def policy_state(env: Env) -> str | None:
    return ((env.admin.get("ClusterPolicy", POLICY) or {}).get("status") or {}).get("state")


def driver_daemonsets(env: Env) -> dict[str, dict[str, Any]]:
    """The driver DaemonSets by uid (those being deleted too)."""
    return {d["metadata"]["uid"]: d for d in env.admin.list("DaemonSet", NAMESPACE, label_selector=DRIVER_PODS)}


def owner_of(obj: dict[str, Any]) -> tuple[str, str] | None:
    """(kind, name) of the object's first owner, None without one."""
    refs = obj["metadata"].get("ownerReferences") or []
    return (refs[0]["kind"], refs[0]["name"]) if refs else None


def controller_uid(pod: dict[str, Any]) -> str | None:
    """The uid of the pod's controller (its DaemonSet), None for a pod nothing owns (orphaned)."""
    return next((r["uid"] for r in pod["metadata"].get("ownerReferences") or [] if r.get("controller")), None)


def switch_on(env: Env) -> None:
    env.admin.merge_patch("ClusterPolicy", POLICY, {"spec": {"driver": {"useNvidiaDriverCRD": True}}})


def unschedulable(node: dict[str, Any] | None) -> bool:
    return bool(((node or {}).get("spec") or {}).get("unschedulable"))


class HandoverWatch(threading.Thread):
    """Samples the nodes and all their driver pods (terminating ones too) every 0.2 s while a handover runs, and
    watches the nodes for their cordons.

    A sample lists the nodes, then the driver pods, then the nodes again: a node counts as down in it when it has no
    Ready live driver pod, or is cordoned in both node lists (so cordoned when the pods were listed: a node
    uncordoned just before the next one's driver pod went is not counted with it). Kept: the driver pod uids seen on
    each node, the pods seen terminating, the nodes seen cordoned (by the Node watch, which sees a cordon shorter
    than a sample's cycle: with no driver delay a node's can last 1-2 s), the upgrade states seen, the most nodes
    down at once (and the first sample with that many, for the message), the most nodes in an in-progress upgrade
    state at once, the nodes seen with two live Running driver pods. A sample cycle may miss a moment, so its counts
    are lower bounds: enough for the tests' upper limits."""

    def __init__(self, env: Env, nodes: list[str]):
        super().__init__(daemon=True)
        self.env, self.nodes = env, list(nodes)
        self.uids: dict[str, set[str]] = {n: set() for n in nodes}
        self.terminating: set[str] = set()  # "node/pod"
        self.cordoned: set[str] = set()
        self.states: dict[str, set[str]] = {n: set() for n in nodes}
        self.most_down = self.most_in_progress = 0
        self.worst: dict[str, str] = {}  # node -> why it was down, in the first sample with most_down
        self.shared: set[str] = set()
        self.samples = 0
        self.stop_flag = threading.Event()
        self.watching = threading.Event()  # the Node watch has listed the nodes
        self._responses: list[Any] = []  # the Node watch's open response, for `stop` to end
        self._cordons = threading.Thread(target=self.watch_cordons, daemon=True)

    def _nodes(self) -> dict[str, dict[str, Any]]:
        return {n["metadata"]["name"]: n for n in self.env.admin.list("Node") if n["metadata"]["name"] in self.uids}

    def sample(self) -> None:
        first = self._nodes()
        pods = self.env.admin.list("Pod", NAMESPACE, label_selector=DRIVER_PODS)
        last = self._nodes()
        live: dict[str, list[dict[str, Any]]] = {}
        for pod in pods:
            node = pod["spec"].get("nodeName") or ""  # a Pending pod of the new DaemonSet has none yet
            if node not in self.uids:
                continue
            self.uids[node].add(pod["metadata"]["uid"])
            if pod["metadata"].get("deletionTimestamp"):
                self.terminating.add(f"{node}/{pod['metadata']['name']}")
            else:
                live.setdefault(node, []).append(pod)
        down: dict[str, str] = {}
        for n in self.nodes:
            state = ((last.get(n) or {}).get("metadata", {}).get("labels") or {}).get(UPGRADE_STATE, "")
            self.states[n].add(state)
            if sum((p.get("status") or {}).get("phase") == "Running" for p in live.get(n, [])) > 1:
                self.shared.add(n)
            if unschedulable(first.get(n)) and unschedulable(last.get(n)):
                down[n] = f"cordoned ({state})"
            elif not any(pod_ready(p) for p in live.get(n, [])):
                down[n] = f"no Ready driver pod ({state})"
        if len(down) > self.most_down:
            self.most_down, self.worst = len(down), down
        in_progress = sum(
            ((last.get(n) or {}).get("metadata", {}).get("labels") or {}).get(UPGRADE_STATE) in IN_PROGRESS_STATES
            for n in self.nodes
        )
        self.most_in_progress = max(self.most_in_progress, in_progress)
        self.samples += 1

    def watch_cordons(self) -> None:
        """Adds each node seen cordoned to `cordoned`: from a listing, then from a Node watch from it (listed again
        when the watch expires or fails)."""
        path, rv = "/api/v1/nodes", ""
        while not self.stop_flag.is_set():
            try:
                if not rv:
                    listing = self.env.admin.request("GET", path)
                    for node in listing.get("items") or []:
                        self._cordon(node)
                    rv = listing["metadata"]["resourceVersion"]
                    self.watching.set()
                for event in self.env.admin.watch(path, rv, timeout_seconds=5, handle=self._responses):
                    obj = event.get("object") or {}
                    if event.get("type") == "ERROR":
                        rv = ""  # expired (410): list again
                        break
                    rv = (obj.get("metadata") or {}).get("resourceVersion") or rv
                    self._cordon(obj)
                    if self.stop_flag.is_set():
                        return
            except Exception:  # noqa: BLE001 - listed again (the listing shows a cordon still there)
                rv = ""
                self.stop_flag.wait(0.5)

    def _cordon(self, node: dict[str, Any]) -> None:
        name = (node.get("metadata") or {}).get("name")
        if name in self.uids and unschedulable(node):
            self.cordoned.add(name)

    def start(self) -> None:
        """Starts the samples and the Node watch, once the watch has listed the nodes."""
        self._cordons.start()
        if not self.watching.wait(30):
            self.stop_flag.set()
            raise AssertionError("the Node watch could not list the nodes in 30 s")
        super().start()

    def run(self) -> None:
        while not self.stop_flag.is_set():
            try:
                self.sample()
            except Exception:  # noqa: BLE001 - a failed sample is skipped; the next one counts
                pass
            time.sleep(0.2)

    def stop(self) -> None:
        self.stop_flag.set()
        for resp in list(self._responses):  # ends the Node watch's blocked read
            try:
                resp.shutdown()
            except Exception:  # noqa: BLE001 - best effort: the watch ends within its 5 s timeout anyway
                pass
        self._cordons.join(timeout=10)
        self.join(timeout=10)


@pytest.mark.parametrize("first", ["nvidiadriver", "clusterpolicy"])
def test_switching_on_hands_every_driver_pod_to_the_default_nvidiadriver_without_a_restart(
    switching: Env, first: str
) -> None:
    """useNvidiaDriverCRD switched on with a default NVIDIADriver of the ClusterPolicy's own driver settings, as
    the chart does it: the NVIDIADriver created first and the ClusterPolicy changed right after (`nvidiadriver`),
    or the ClusterPolicy change landing in a pass that has no NVIDIADriver yet (`clusterpolicy`). The ClusterPolicy's
    driver DaemonSets were deleted with their pods (Background), every node's driver at once, no cordon and no
    limit; now they are deleted with propagationPolicy Orphan (here, in the `clusterpolicy` order, waited for: no
    driver DaemonSet left and the garbage collector took the pods' owner reference off) and the default's
    DaemonSet, of the same name and selector, is adopted by the real DaemonSet controller. Checked, sampled all
    through: every node keeps its one driver pod (the same uid, never terminating, Ready throughout), no node is
    cordoned or enters an upgrade; at the end each pod's controller is a driver DaemonSet of the default NVIDIADriver
    (with the ClusterPolicy's DaemonSet names), the nodes are upgrade-done, and the NVIDIADriver (3 nodes) and the
    ClusterPolicy are ready."""
    env = switching
    before = {n: p["metadata"]["uid"] for n, p in driver_pods(env.admin).items()}
    old = driver_daemonsets(env)
    watch = HandoverWatch(env, SWITCH_NODES)
    watch.start()
    try:
        if first == "nvidiadriver":
            env.admin.create(nvidiadriver("default", default=True, **policy_driver_settings()))
            switch_on(env)
        else:
            switch_on(env)

            def orphaned() -> bool:
                pods = driver_pods(env.admin)
                return not driver_daemonsets(env) and all(
                    n in pods and controller_uid(pods[n]) is None for n in SWITCH_NODES
                )

            wait(env, orphaned, "the ClusterPolicy's driver DaemonSets deleted, their pods left without an owner")
            kept = {n: p["metadata"]["uid"] for n, p in driver_pods(env.admin).items()}
            assert kept == before, "a driver pod went with the ClusterPolicy's DaemonSet before any NVIDIADriver"
            env.admin.create(nvidiadriver("default", default=True, **policy_driver_settings()))

        def adopted() -> bool:
            theirs = {uid for uid, ds in driver_daemonsets(env).items() if owner_of(ds) == ("NVIDIADriver", "default")}
            pods = driver_pods(env.admin)
            return all(n in pods and controller_uid(pods[n]) in theirs for n in SWITCH_NODES)

        wait(env, adopted, "every driver pod owned by a DaemonSet of the default NVIDIADriver")
        wait(env, lambda: nvd_status(env, "default").get("state") == "ready", "the default NVIDIADriver is ready")
        wait(env, lambda: nvd_status(env, "default").get("nodes") == len(SWITCH_NODES), "it drives every node")
        wait(env, lambda: policy_state(env) == "ready", "the ClusterPolicy is ready")
        wait(
            env,
            lambda: all(labels(env, n).get(UPGRADE_STATE) == "upgrade-done" for n in SWITCH_NODES),
            "every node upgrade-done under the default NVIDIADriver (its planner found every pod up to date)",
        )
    finally:
        watch.stop()
    assert watch.samples, "the handover was never sampled"
    after = {n: p["metadata"]["uid"] for n, p in driver_pods(env.admin).items()}
    assert after == before, "a driver pod was replaced although its driver did not change"
    assert watch.uids == {n: {before[n]} for n in SWITCH_NODES}, f"other driver pods came and went: {watch.uids}"
    assert not watch.terminating, f"driver pods deleted in the handover: {watch.terminating}"
    assert watch.most_down == 0, f"a node was without a Ready driver pod: {watch.worst}"
    assert not watch.cordoned, f"nodes cordoned in the handover: {watch.cordoned}"
    moved = {n: s - {"", "upgrade-done"} for n, s in watch.states.items() if s - {"", "upgrade-done"}}
    assert not moved, f"nodes went into the upgrade: {moved}"
    now = driver_daemonsets(env)
    assert all(owner_of(ds) == ("NVIDIADriver", "default") for ds in now.values()), [owner_of(d) for d in now.values()]
    names = sorted(ds["metadata"]["name"] for ds in now.values())
    assert names == sorted(ds["metadata"]["name"] for ds in old.values()), names
    if first == "clusterpolicy":  # deleted, then created again by the default: the DaemonSet controller adopted
        assert not set(now) & set(old), "the ClusterPolicy's DaemonSet was not deleted in the gap"


def test_switching_to_a_non_default_nvidiadriver_replaces_the_orphaned_driver_pods_one_node_at_a_time(
    switching: Env,
) -> None:
    """useNvidiaDriverCRD switched on with a non-default NVIDIADriver selecting the three nodes (pool=sw; the
    ClusterPolicy's driver settings, upgradePolicy autoUpgrade true, maxParallelUpgrades 1, maxUnavailable 100% so
    the parallel limit is the one that binds). Its DaemonSet is of another pool (name and selector) than the
    ClusterPolicy's, so nothing adopts the running pods: they were all deleted with the ClusterPolicy's DaemonSet,
    every node without a driver at once. Now the DaemonSet goes with propagationPolicy Orphan and each orphan is
    out of date for the upgrade (upstream's labelNodesWithOrphanedDriverPods): the node goes upgrade-required and is
    upgraded in turn, cordoned, its orphan deleted at pod restart, the new DaemonSet's pod (Pending by the driver's
    podAntiAffinity until then) starts. Checked, sampled all through: at most one node at a time without a Ready
    driver pod or cordoned, at most one in an in-progress upgrade state, never two Running driver pods on a node;
    each node cordoned in its turn, its driver replaced exactly once (the orphan, then the new DaemonSet's pod), a
    GPUDriverUpgrade event naming the orphan as the reason; at the end every node runs a Ready pod of the
    NVIDIADriver's DaemonSet, upgrade-done and uncordoned, no ClusterPolicy DaemonSet left, the NVIDIADriver (3
    nodes) and the ClusterPolicy ready."""
    env = switching
    before = {n: p["metadata"]["uid"] for n, p in driver_pods(env.admin).items()}
    upgrade = {**policy_driver_settings().get("upgradePolicy", {}), "autoUpgrade": True, "maxParallelUpgrades": 1,
               "maxUnavailable": "100%"}  # fmt: skip
    settings = {**policy_driver_settings(), "upgradePolicy": upgrade}
    watch = HandoverWatch(env, SWITCH_NODES)
    watch.start()
    try:
        env.admin.create(nvidiadriver("sw", nodeSelector={"pool": "sw"}, **settings))
        switch_on(env)
        last: list[str] = [""]

        def done() -> bool:
            theirs = {uid for uid, ds in driver_daemonsets(env).items() if owner_of(ds) == ("NVIDIADriver", "sw")}
            pods = driver_pods(env.admin)
            left = []
            for n in SWITCH_NODES:
                pod, node = pods.get(n), env.admin.get("Node", n) or {}
                state = (node.get("metadata", {}).get("labels") or {}).get(UPGRADE_STATE)
                if not (pod_ready(pod) and pod is not None and controller_uid(pod) in theirs) or (
                    state != "upgrade-done" or unschedulable(node)
                ):
                    left.append(f"{n}={state}{' cordoned' if unschedulable(node) else ''}")
            last[0] = ", ".join(left)
            return not left

        try:
            wait(env, done, "every node on a Ready pod of NVIDIADriver sw's DaemonSet, upgrade-done, uncordoned",
                 timeout=ROLLOUT)  # fmt: skip
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nleft: {last[0]}\nmost down at once: {watch.worst}") from None
        wait(env, lambda: nvd_status(env, "sw").get("state") == "ready", "NVIDIADriver sw is ready")
        wait(env, lambda: nvd_status(env, "sw").get("nodes") == len(SWITCH_NODES), "it drives every node")
        wait(env, lambda: policy_state(env) == "ready", "the ClusterPolicy is ready")
    finally:
        watch.stop()
    assert watch.samples, "the handover was never sampled"
    assert watch.most_down <= 1, f"{watch.most_down} nodes down at once: {watch.worst}"
    assert watch.most_in_progress <= 1, f"{watch.most_in_progress} nodes in an upgrade at once"
    assert not watch.shared, f"two Running driver pods on one node: {watch.shared}"
    assert watch.cordoned == set(SWITCH_NODES), f"cordoned for the upgrade: {watch.cordoned}, not every node"
    after = {n: p["metadata"]["uid"] for n, p in driver_pods(env.admin).items()}
    assert not set(after.values()) & set(before.values()), "an orphaned driver pod is still running"
    replaced = {n: watch.uids[n] for n in SWITCH_NODES if watch.uids[n] != {before[n], after[n]}}
    assert not replaced, f"driver pods other than the orphan and its replacement: {replaced}"
    ds = driver_daemonsets(env)
    assert ds and all(owner_of(d) == ("NVIDIADriver", "sw") for d in ds.values()), [owner_of(d) for d in ds.values()]
    # Why each node was upgraded: its pod is an orphan, or (a node the pass that deleted the old DaemonSet started
    # at once, its pod still owned then) of the DaemonSet of the driver it moves away from.
    why = ("belongs to no DaemonSet", "of the NVIDIADriver the node moves away from")
    events = {
        e["involvedObject"]["name"] for e in env.admin.list("Event", "default")
        if e.get("reason") == "GPUDriverUpgrade" and any(w in e.get("message", "") for w in why)
    }  # fmt: skip
    assert events >= set(SWITCH_NODES), f"GPUDriverUpgrade events saying why, on {sorted(events)} only"
