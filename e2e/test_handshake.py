"""End-to-end: our operator's operands come up on containerd and cri-o nodes only through the node start-up
handshake the simulator models (REFERENCE §11), with CDI on (upstream's default) and off, and with a
time-slicing sharing config.

The node model reads the rendered pod specs: a pod with the `nvidia` runtime class stays in ContainerCreating
until a toolkit pod configured the node's real runtime config, init containers block on marker files that
appear only when their writer ran, validator components check what they validate. So "ready" here means the
contracts hold, not merely that kwok marked pods ready. The module runs its own small cluster.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from e2e.cluster.localcluster import LocalCluster, ensure_binaries
from e2e.cluster.nodes import PROFILES, create_nodes, make_node
from e2e.kube import wait_for
from e2e.operator_process import NAMESPACE, OperatorProcess, install_crds_and_rbac, policy_from_sample
from e2e.simulator import NodeSimulator
from gpu_operator.apply import labels_of
from gpu_operator.kube import Kube

pytestmark = pytest.mark.local_cluster_only("the module starts its own control plane")

V = "/run/nvidia/validations"
FILES = {f"{V}/driver-ready", f"{V}/toolkit-ready", f"{V}/cuda-ready", f"{V}/plugin-ready"}
NODES = {  # name: (profile, runtime)
    "hs-containerd": ("h100x8", "containerd"),
    "hs-crio": ("h100x8", "crio"),
    "hs-a100": ("a100x4", "containerd"),
}
TIME_SLICING = """\
version: v1
sharing:
  timeSlicing:
    resources:
    - name: nvidia.com/gpu
      replicas: 4
"""


class Env:
    def __init__(self, cluster: LocalCluster, admin: Kube, sim: NodeSimulator, op: OperatorProcess):
        self.cluster, self.admin, self.sim, self.op = cluster, admin, sim, op


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    cluster = LocalCluster(tmp_path_factory.mktemp("handshake-cluster"), binaries=ensure_binaries())
    cluster.up()
    try:
        admin = Kube.connect(str(cluster.kubeconfig))
        create_nodes(admin.client, [make_node(n, p, runtime=rt) for n, (p, rt) in NODES.items()])
        install_crds_and_rbac(admin)
        sim = NodeSimulator(cluster.simulator_kubeconfig, namespace=NAMESPACE, resync_seconds=5,
                            driver_ready_delay=1.0).start()  # fmt: skip
        op = OperatorProcess(cluster, tmp_path_factory.mktemp("handshake-operator") / "operator.log").start()
        policy = policy_from_sample()
        policy["spec"]["cdi"] = {"enabled": True}  # upstream's default
        admin.create(policy)
        try:
            yield Env(cluster, admin, sim, op)
        finally:
            op.stop()
            sim.stop()
    finally:
        cluster.down()


def wait_ready(env: Env, timeout: float = 150) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        obj = env.admin.get("ClusterPolicy", "cluster-policy") or {}
        status = obj.get("status") or {}
        current = status.get("observedGeneration") == obj["metadata"]["generation"]
        return obj if current and status.get("state") == "ready" else None

    try:
        return wait_for(ready, timeout, interval=0.5, message="ClusterPolicy ready")
    except AssertionError as exc:
        obj = env.admin.get("ClusterPolicy", "cluster-policy") or {}
        findings = {n: [str(f) for f in env.sim.diagnose(n)] for n in NODES}
        raise AssertionError(
            f"{exc}\nstatus: {obj.get('status')}\nnode model findings: {findings}\noperator log:\n{env.op.log_tail()}"
        ) from None


def assert_handshake_done(env: Env, replicas: int = 1) -> None:
    """Every GPU node went through the whole start-up: four files, the runtime handler, GPUs advertised (each
    `replicas` times with time-slicing)."""
    for name, (profile, _runtime) in NODES.items():
        model = env.sim.model(name)
        assert model is not None, name
        assert FILES <= set(model.host.files), (name, sorted(model.host.files))
        assert "nvidia" in model.host.handlers, (name, sorted(model.host.handlers))
        assert env.sim.diagnose(name) == [], name
        gpus = str(PROFILES[profile].gpu_count * replicas)

        def advertised(node: str = name, gpus: str = gpus) -> bool:
            return ((env.admin.get("Node", node) or {}).get("status") or {}).get("allocatable", {}).get(
                "nvidia.com/gpu"
            ) == gpus

        wait_for(advertised, 30, message=f"{name} advertising {gpus} nvidia.com/gpu")
    validators = env.admin.list("Pod", NAMESPACE, label_selector="app=nvidia-operator-validator")
    live = [p for p in validators if not p["metadata"].get("deletionTimestamp")]
    assert {p["spec"]["nodeName"] for p in live} == set(NODES)
    for pod in live:
        states = [next(iter(c.get("state") or {}), "") for c in pod["status"].get("initContainerStatuses") or []]
        assert states == ["terminated"] * 4, (pod["metadata"]["name"], states)


def toolkit_pools(env: Env) -> dict[str, str]:
    """Toolkit DaemonSet name -> the runtime it configures."""
    out = {}
    for ds in env.admin.list("DaemonSet", NAMESPACE):
        sel = ds["spec"]["template"]["spec"].get("nodeSelector") or {}
        if "nvidia.com/gpu.deploy.container-toolkit" in sel:
            out[ds["metadata"]["name"]] = sel.get("nvidia.com/gpu-operator.container-runtime", "")
    return out


def patch_spec(env: Env, patch: dict[str, Any]) -> None:
    env.admin.merge_patch("ClusterPolicy", "cluster-policy", {"spec": patch})


def test_containerd_and_crio_nodes_come_up_through_the_handshake_with_cdi_on(env: Env) -> None:
    wait_ready(env)
    assert toolkit_pools(env) == {
        "nvidia-container-toolkit-daemonset": "containerd",
        "nvidia-container-toolkit-daemonset-crio": "crio",
    }
    assert_handshake_done(env)
    for name in NODES:
        model = env.sim.model(name)
        assert model is not None and {"nvidia-cdi", "nvidia-legacy"} <= set(model.host.handlers), name


def test_cdi_off_comes_up_through_the_handshake(env: Env) -> None:
    patch_spec(env, {"cdi": {"enabled": False}})
    wait_ready(env)
    assert_handshake_done(env)
    plugin = env.admin.get("DaemonSet", "nvidia-device-plugin-daemonset", NAMESPACE) or {}
    env_vars = {e["name"]: e.get("value") for e in plugin["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env_vars.get("DEVICE_LIST_STRATEGY") == "envvar"
    # Containerd GPU nodes keep the class (upstream's cluster runtime); the cri-o toolkit gives cri-o `nvidia` too.
    assert plugin["spec"]["template"]["spec"].get("runtimeClassName") == "nvidia"


def test_time_slicing_config_comes_up_through_the_handshake(env: Env) -> None:
    env.admin.create({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "time-slicing-config", "namespace": NAMESPACE},
        "data": {"any": TIME_SLICING},
    })  # fmt: skip
    patch_spec(env, {"cdi": {"enabled": True}, "devicePlugin": {"config": {"name": "time-slicing-config",
                                                                           "default": "any"}}})  # fmt: skip
    wait_ready(env)
    assert_handshake_done(env, replicas=4)
    for name in ("nvidia-device-plugin-daemonset", "gpu-feature-discovery"):
        ds = env.admin.get("DaemonSet", name, NAMESPACE) or {}
        pod = ds["spec"]["template"]["spec"]
        assert pod.get("shareProcessNamespace") is True, name
        assert "config-manager" in [c["name"] for c in pod["containers"]], name
        assert "config-manager-init" in [c["name"] for c in pod["initContainers"]], name


def test_render_from_cluster_is_what_the_operator_would_do(env: Env, tmp_path: Any) -> None:
    """A dry-run pass over the cluster's snapshot: nothing at steady state, the new objects for a changed policy."""
    wait_ready(env)

    def render(*extra: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "gpu_operator.cli", "render", "--from-cluster",
               "--kubeconfig", str(env.cluster.kubeconfig), *extra]  # fmt: skip
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120)

    # Ready is written by the pass that sees the last count; a pass for changes that came with it (a label GFD
    # writes once its pod runs) may still follow. At steady state, within seconds, a dry run changes nothing.
    runs: list[subprocess.CompletedProcess[str]] = []

    def steady() -> bool:
        runs.append(render())
        assert runs[-1].returncode == 0, runs[-1].stderr
        return runs[-1].stdout == "" and "no changes" in runs[-1].stderr

    deadline = time.monotonic() + 30
    while not steady():
        assert time.monotonic() < deadline, f"{len(runs)} dry runs still change the cluster:\n{runs[-1].stdout}"
        time.sleep(1)

    live = env.admin.get("ClusterPolicy", "cluster-policy") or {}
    changed = {"apiVersion": live["apiVersion"], "kind": "ClusterPolicy", "metadata": {"name": "cluster-policy"},
               "spec": {**live["spec"], "dcgm": {"enabled": True}}}  # fmt: skip
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump(changed))
    preview = render("--policy", str(policy))
    assert preview.returncode == 0, preview.stderr
    headers = [line for line in preview.stdout.splitlines() if line.startswith("# ")]
    assert f"# PATCH /apis/apps/v1/namespaces/{NAMESPACE}/daemonsets/nvidia-dcgm" in headers, headers
    assert f"# PATCH /api/v1/namespaces/{NAMESPACE}/services/nvidia-dcgm" in headers, headers
    # Only a preview: the cluster did not change.
    assert env.admin.get("DaemonSet", "nvidia-dcgm", NAMESPACE) is None


def test_a_labelled_node_the_daemonset_controller_has_not_counted_keeps_the_policy_from_ready(env: Env) -> None:
    """The counts of a DaemonSet whose controller has not seen a node's new deploy labels still say every pod is
    ready (as 0 of 0 do before the controller's first sync): the operator's own view of the nodes says one is
    missing, and ready waits. Frozen here by stopping kube-controller-manager while a node's GPU shows up."""
    wait_ready(env)
    late = "hs-late"
    node = make_node(late, "h100x8", runtime="containerd")
    gpu = {k: v for k, v in node["metadata"]["labels"].items() if "10de" in k or k.startswith("nvidia.com/")}
    node["metadata"]["labels"] = {k: v for k, v in node["metadata"]["labels"].items() if k not in gpu}
    create_nodes(env.admin.client, [node])
    # Ready, and without the not-ready taint a new Node starts with (no daemon pod tolerates it).
    wait_for(lambda: not ((env.admin.get("Node", late) or {}).get("spec") or {}).get("taints"), 90,
             message=f"{late} without taints")  # fmt: skip
    kcm = env.cluster.pids["kube-controller-manager"]
    os.kill(kcm, signal.SIGSTOP)
    try:
        env.admin.merge_patch("Node", late, {"metadata": {"labels": gpu}})
        validator = "nvidia.com/gpu.deploy.operator-validator"
        wait_for(lambda: labels_of(env.admin.get("Node", late) or {}).get(validator) == "true", 60,
                 message=f"{late} labelled by the operator")  # fmt: skip

        def held() -> dict[str, Any] | None:
            status = (env.admin.get("ClusterPolicy", "cluster-policy") or {}).get("status") or {}
            return status if status.get("state") == "notReady" else None

        status = wait_for(held, 30, interval=0.5, message="ClusterPolicy notReady while the controller is stopped")
        assert "4 nodes should run its pod, the DaemonSet controller counts 3 so far" in str(status), status
    finally:
        os.kill(kcm, signal.SIGCONT)
    try:
        wait_ready(env)
        pods = env.admin.list("Pod", NAMESPACE, label_selector="app=nvidia-operator-validator")
        assert late in {p["spec"].get("nodeName") for p in pods}
        model = env.sim.model(late)
        assert model is not None and FILES <= set(model.host.files), sorted(model.host.files if model else ())
    finally:
        env.admin.delete("Node", late)
