"""End-to-end: NVIDIADriver resources drive the driver once the ClusterPolicy sets driver.useNvidiaDriverCRD.

Five H100 nodes: a0, a1 (pool=a), b0, b1 (pool=b) and c0 (pool=c). The cluster starts under the sample policy
(one driver for all); a default NVIDIADriver with the same settings is created and useNvidiaDriverCRD switched
on: no driver pod restarts. An NVIDIADriver for pool=b with another version converges there (two versions in the
cluster); a third selecting b1 again is a conflict named on both. A precompiled NVIDIADriver for pool=c gets
per-kernel images; when c0's kernel label changes the upgrade state machine cordons it and moves it to the new
kernel's pool. The module runs its
own cluster.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from e2e.cluster.nodes import make_node
from e2e.kube import wait_for
from e2e.operator_process import NAMESPACE, policy_from_sample
from e2e.stack import Env, driver_pods, own_stack, pod_ready
from gpu_operator.nodes import DRIVER_KERNEL
from gpu_operator.nvidiadriver_api import OWNER_LABEL

POOLS = {"nd-a0": "a", "nd-a1": "a", "nd-b0": "b", "nd-b1": "b", "nd-c0": "c"}
KERNEL = "feature.node.kubernetes.io/kernel-version.full"
UPGRADE_STATE = "nvidia.com/gpu-driver-upgrade-state"
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


def wait(env: Env, fn: Any, message: str, timeout: float = WAIT) -> Any:
    try:
        return wait_for(fn, timeout, interval=0.5, message=message)
    except AssertionError as exc:
        pods = {n: (image(p), pod_ready(p)) for n, p in driver_pods(env.admin).items()}
        raise AssertionError(f"{exc}\ndriver pods: {pods}\noperator log:\n{env.op.log_tail(30)}") from None


def nvidiadriver(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "nvidia.com/v1alpha1", "kind": "NVIDIADriver", "metadata": {"name": name}, "spec": spec}


def all_ready(env: Env, nodes: list[str]) -> bool:
    pods = driver_pods(env.admin)
    return all(pod_ready(pods.get(n)) for n in nodes)


def test_switching_to_a_default_nvidiadriver_restarts_no_driver_pod(env: Env) -> None:
    wait(env, lambda: all_ready(env, list(POOLS)), "every node runs a ready driver under the ClusterPolicy")
    before = {n: p["metadata"]["uid"] for n, p in driver_pods(env.admin).items()}
    driver = policy_from_sample()["spec"]["driver"]
    same = {k: driver[k] for k in ("repository", "image", "version", "imagePullPolicy", "startupProbe", "rdma",
                                   "manager", "kernelModuleType", "upgradePolicy") if k in driver}  # fmt: skip
    env.admin.create(nvidiadriver("default", default=True, **same))
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
        if e["involvedObject"]["name"] == "nd-c0" and e.get("reason") == "GPUDriverUpgrade"
    ]  # fmt: skip
    assert any(f"kernel is now {new_kernel}" in m for m in messages), messages
