"""End-to-end: the version matrix refuses a driver branch on GPUs it dropped, per node, before anything rolls out.

A cluster of two H100 nodes and two V100 nodes under the default policy (driver 595.91.07; R580 is Volta's last
branch). One V100 is known by NFD's device-ID label, the other only by its NFD NodeFeature object (the CRD is
installed here as NFD would). The V100 nodes get no driver pod and are named with the rule; the H100 nodes
converge. The module runs its own cluster.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

from e2e.cluster.nodes import PROFILES, install_node_feature_api, make_node, node_feature
from e2e.kube import wait_for
from e2e.stack import Env, driver_pods, own_stack, pod_ready
from gpu_operator.kube import Kube
from gpu_operator.nodes import DRIVER_REFUSED

pytestmark = pytest.mark.local_cluster_only("the module starts its own control plane")

H100 = ["mx-h100-0", "mx-h100-1"]
V100 = ["mx-v100-0", "mx-v100-1"]  # -0: NFD device-ID label; -1: NodeFeature object only
DRIVER_LABEL = "nvidia.com/gpu.deploy.driver"
WAIT = 180
RULE = "driver 595.91.07 (R595) does not support volta GPUs: R580 is the last branch for volta"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    def prepare(admin: Kube) -> None:
        install_node_feature_api(admin)
        admin.create(node_feature(V100[1], "1db1"))

    # stock NFD's deviceLabelFields [class, vendor]: pci-0302_10de.present, which names no device
    v100_plain = make_node(V100[1], replace(PROFILES["v100x8"], nfd="class-vendor"))
    nodes = [make_node(n, "h100x8") for n in H100] + [make_node(V100[0], "v100x8"), v100_plain]
    with own_stack(tmp_path_factory, "versions", nodes + [make_node("mx-cpu", "cpu")], prepare) as e:
        yield e


def labels(env: Env, node: str) -> dict[str, str]:
    obj = env.admin.get("Node", node) or {}
    return dict(obj.get("metadata", {}).get("labels") or {})


def gpus(env: Env, node: str) -> str | None:
    obj = env.admin.get("Node", node) or {}
    return (obj.get("status", {}).get("allocatable") or {}).get("nvidia.com/gpu")


def condition(env: Env) -> dict[str, Any]:
    policy = env.admin.get("ClusterPolicy", "cluster-policy") or {}
    conds = (policy.get("status") or {}).get("conditions") or []
    return next((c for c in conds if c.get("type") == "DriverRefused"), {})


def refusal_events(env: Env, node: str) -> list[dict[str, Any]]:
    return [
        e for e in env.admin.list("Event", "default")
        if e.get("involvedObject", {}).get("name") == node and e.get("reason") == "DriverRefused"
    ]  # fmt: skip


def wait(env: Env, fn: Any, message: str, timeout: float = WAIT) -> Any:
    try:
        return wait_for(fn, timeout, interval=0.5, message=message)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\ncondition: {condition(env)}\noperator log:\n{env.op.log_tail(30)}") from None


def test_v100_nodes_get_no_driver_and_are_named_with_the_rule(env: Env) -> None:
    for node in V100:
        wait(env, lambda node=node: labels(env, node).get(DRIVER_LABEL) == DRIVER_REFUSED, f"{node} refused")

    def named() -> bool:
        cond = condition(env)
        return cond.get("status") == "True" and all(f"{n}" in cond.get("message", "") for n in V100)

    wait(env, named, "DriverRefused names the V100 nodes")
    cond = condition(env)
    assert cond["reason"] == "IncompatibleNodes" and RULE in cond["message"], cond
    refused, _, unknown = cond["message"].partition("; GPU unknown, not checked: ")
    assert not any(h in refused for h in H100), cond  # before GFD runs the H100s are only "unknown, not checked"
    for node in V100:
        events = wait(env, lambda node=node: refusal_events(env, node), f"a DriverRefused event on {node}")
        assert [e["type"] for e in events] == ["Warning"] and RULE in events[0]["message"]


def test_h100_nodes_converge(env: Env) -> None:
    def converged() -> bool:
        pods = driver_pods(env.admin)
        return all(n in pods and pod_ready(pods[n]) and gpus(env, n) == "8" for n in H100)

    wait(env, converged, "H100 nodes run a ready driver and advertise their GPUs")
    # once GFD ran there, the H100 nodes are identified (hopper, fine) and no longer named at all
    wait(env, lambda: not any(h in condition(env).get("message", "") for h in H100), "H100 nodes identified")
    pods = driver_pods(env.admin)
    assert not set(V100) & set(pods), sorted(pods)
    assert all(":595.91.07-ubuntu22.04" in pods[n]["spec"]["containers"][0]["image"] for n in H100)
    for node in V100:
        assert labels(env, node).get(DRIVER_LABEL) == DRIVER_REFUSED
        assert gpus(env, node) in (None, "0")
        assert [e.get("count") for e in refusal_events(env, node)] == [1]  # once per change, not once per pass

    def steady() -> bool:  # refusals cost no writes once made: a dry-run pass would write nothing
        proc = subprocess.run(
            [sys.executable, "-m", "gpu_operator.cli", "render", "--from-cluster", "--kubeconfig",
             str(env.cluster.kubeconfig)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        return proc.returncode == 0 and "no changes" in proc.stderr

    wait(env, steady, "a dry-run pass writes nothing (no repeated refusal events)", timeout=60)


def test_versions_command_shows_where_each_node_falls(env: Env) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "gpu_operator.cli", "versions", "--kubeconfig", str(env.cluster.kubeconfig), "-o",
         "json"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    cluster = json.loads(proc.stdout)["cluster"]
    assert cluster["policy"] == "cluster-policy" and cluster["driver"] == "595.91.07"
    nodes = cluster["nodes"]
    assert sorted(nodes) == sorted(H100 + V100)
    assert nodes[V100[0]]["identifiedBy"] == "nfd-label" and nodes[V100[1]]["identifiedBy"] == "nodefeature"
    for node in V100:
        assert nodes[node]["refused"]["rule"] == "architecture-dropped"
        assert nodes[node]["architectures"] == ["volta"]
    for node in H100:
        assert nodes[node]["refused"] is None and nodes[node]["architectures"] == ["hopper"]
        assert nodes[node]["kernelModuleType"] == "open"


def test_a_branch_that_runs_volta_reaches_the_v100_nodes(env: Env) -> None:
    env.admin.merge_patch("ClusterPolicy", "cluster-policy", {"spec": {"driver": {"version": "580.95.05"}}})

    def rolled() -> bool:
        pods = driver_pods(env.admin)
        return all(labels(env, n).get(DRIVER_LABEL) == "true" and n in pods for n in V100)

    wait(env, rolled, "V100 nodes get the R580 driver")
    pods = driver_pods(env.admin)
    assert all(":580.95.05-ubuntu22.04" in pods[n]["spec"]["containers"][0]["image"] for n in V100)
    wait(env, lambda: condition(env).get("status") == "False", "DriverRefused turns False")
    assert condition(env)["reason"] == "NoneRefused"


def test_a_refused_node_keeps_its_running_driver_and_the_planner_skips_it(env: Env) -> None:
    """Back to R595: the V100s keep their R580 driver pods (never deleted, never evicted), the upgrade planner
    skips them with the rule, and the H100s upgrade."""
    before = {n: driver_pods(env.admin)[n]["metadata"]["uid"] for n in V100}
    env.admin.merge_patch("ClusterPolicy", "cluster-policy", {"spec": {"driver": {"version": "595.91.07"}}})

    def upgraded() -> bool:
        pods = driver_pods(env.admin)
        return all(
            n in pods
            and ":595.91.07-" in pods[n]["spec"]["containers"][0]["image"]
            and pod_ready(pods[n])
            and labels(env, n).get("nvidia.com/gpu-driver-upgrade-state") == "upgrade-done"
            for n in H100
        )

    wait(env, upgraded, "H100 nodes upgrade to R595", timeout=300)
    wait(env, lambda: condition(env).get("status") == "True", "DriverRefused names the V100 nodes again")
    assert RULE in condition(env)["message"]
    pods = driver_pods(env.admin)
    for node in V100:
        assert pods[node]["metadata"]["uid"] == before[node], node
        assert ":580.95.05-" in pods[node]["spec"]["containers"][0]["image"]
        assert labels(env, node).get(DRIVER_LABEL) == "true"  # it keeps its driver: no relabel, no deletion
        assert not (env.admin.get("Node", node) or {}).get("spec", {}).get("unschedulable")
    proc = subprocess.run(
        [sys.executable, "-m", "gpu_operator.cli", "upgrade", "plan", "--kubeconfig", str(env.cluster.kubeconfig)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    for node in V100:
        assert f"  {node} (upgrade-required): upgrade skipped: driver refused: {RULE}" in proc.stdout, proc.stdout
