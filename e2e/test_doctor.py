"""End-to-end: `gpu-operator doctor` and `capacity` on the local cluster, under doctor's own read-only identity.

The operator and the node simulator run the GPU stack on three fake nodes; each test reproduces one entry of the
failure catalogue (REFERENCE §12) the way a user would meet it and checks that doctor names the cause and the fix.
Tests share the stack and run in file order; the driver-upgrade scenario is last (it cordons a node).
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e.cluster.localcluster import LocalCluster
from e2e.cluster.nodes import create_nodes, delete_nodes, make_node
from e2e.kube import wait_for
from e2e.operator_process import (
    NAMESPACE,
    REPO,
    OperatorProcess,
    delete_policies,
    install_crds_and_rbac,
    policy_from_sample,
)
from e2e.simulator import NodeSimulator
from gpu_operator.kube import ApiError, Kube

H100_0, H100_1, L4 = "dr-h100-0", "dr-h100-1", "dr-l4-570"
H100 = "NVIDIA-H100-80GB-HBM3"
JOB_SELECTOR = "e2e-doctor=job"
DOCTOR_SA = "doctor"
WAIT = 120
EXERCISE3 = REPO / "manifests" / "samples" / "exercise3-training-job.yaml"


def helm() -> str:
    out = subprocess.run(["bash", str(REPO / "e2e/cluster/build.sh"), "--print-dir"], check=True, capture_output=True,
                         text=True)  # fmt: skip
    return str(Path(out.stdout.strip()) / "helm")


@pytest.fixture(scope="module")
def admin(cluster: LocalCluster) -> Kube:
    return Kube.connect(str(cluster.kubeconfig))


@pytest.fixture(scope="module")
def stack(
    cluster: LocalCluster, admin: Kube, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[OperatorProcess, NodeSimulator]]:
    install_crds_and_rbac(admin)
    delete_policies(admin, 30, leftover=True)
    # A driver 570 already on the L4 node's host, and the node opted out of the operator's driver: GFD reports 570.
    l4 = make_node(L4, "l4x1", host_driver="570.172.08")
    l4["metadata"]["labels"]["nvidia.com/gpu.deploy.driver"] = "false"
    create_nodes(admin.client, [make_node(H100_0, "h100x8"), make_node(H100_1, "h100x8"), l4])
    sim = NodeSimulator(cluster.simulator_kubeconfig, namespace=NAMESPACE, resync_seconds=5).start()
    op = OperatorProcess(cluster, tmp_path_factory.mktemp("operator") / "operator.log").start()
    admin.create(policy_from_sample(**{"driver.upgradePolicy.waitForCompletion.podSelector": JOB_SELECTOR}))
    try:
        yield op, sim
    finally:
        try:
            delete_policies(admin)
        finally:
            op.stop()
            sim.stop()
            delete_nodes(admin.client, [H100_0, H100_1, L4])  # later modules share the cluster


@pytest.fixture(scope="module")
def doctor_kubeconfig(cluster: LocalCluster, admin: Kube, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A kubeconfig for ServiceAccount doctor, bound by the chart to the read-only doctor roles only."""
    install_crds_and_rbac(admin)  # namespace gpu-operator and the chart's roles (doctor's among them)
    if admin.get("ServiceAccount", DOCTOR_SA, NAMESPACE) is None:
        sa = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": DOCTOR_SA, "namespace": NAMESPACE}}
        admin.create(sa)
    docs = render_chart("doctor.subjects[0].kind=ServiceAccount", f"doctor.subjects[0].name={DOCTOR_SA}",
                        f"doctor.subjects[0].namespace={NAMESPACE}", show="templates/doctor-rbac.yaml")  # fmt: skip
    assert sorted(d["kind"] for d in docs) == ["ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"]
    for doc in docs:
        for rule in doc.get("rules") or []:
            assert set(rule["verbs"]) <= {"get", "list", "watch"}, rule
        admin.apply(doc)
    token = admin.request("POST", f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts/{DOCTOR_SA}/token",
                          {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                           "spec": {"expirationSeconds": 7200}})["status"]["token"]  # fmt: skip
    config = json.loads(cluster.kubeconfig.read_text())  # the admin kubeconfig is JSON: same server and CA
    config["users"] = [{"name": DOCTOR_SA, "user": {"token": token}}]
    config["contexts"][0]["context"]["user"] = DOCTOR_SA
    path = tmp_path_factory.mktemp("doctor") / "doctor.kubeconfig"
    path.write_text(json.dumps(config))
    path.chmod(0o600)
    return path


def doctor(kubeconfig: Path, *args: str) -> tuple[int, dict[str, Any]]:
    proc = subprocess.run([sys.executable, "-m", "gpu_operator.cli", "doctor", "--kubeconfig", str(kubeconfig),
                           "-o", "json", *args], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode in (0, 1, 2), proc.stderr
    report = json.loads(proc.stdout)
    assert report["status"] == proc.returncode
    return proc.returncode, report


def finding(kubeconfig: Path, kind: str, *args: str, timeout: float = WAIT) -> dict[str, Any]:
    """Wait until doctor reports a finding of that kind (the cluster may take a moment to show the problem)."""

    def find() -> dict[str, Any] | None:
        _, report = doctor(kubeconfig, *args)
        found = [f for f in report["findings"] if f["kind"] == kind]
        assert len(found) <= 1, found
        return found[0] if found else None

    try:
        return wait_for(find, timeout, interval=1, message=f"doctor to report {kind}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nlast report: {json.dumps(doctor(kubeconfig, *args)[1], indent=1)}") from None


def wait_healthy(kubeconfig: Path, timeout: float = WAIT) -> dict[str, Any]:
    def healthy() -> dict[str, Any] | None:
        code, report = doctor(kubeconfig)
        return report if code == 0 else None

    try:
        return wait_for(healthy, timeout, interval=1, message="doctor to find nothing")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nlast report: {json.dumps(doctor(kubeconfig)[1], indent=1)}") from None


@pytest.fixture
def ns(admin: Kube) -> Iterator[str]:
    name = f"e2e-doc-{uuid.uuid4().hex[:6]}"
    admin.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    wait_for(lambda: admin.get("ServiceAccount", "default", name), 30, message="default ServiceAccount")
    yield name
    for pod in admin.list("Pod", name):
        admin.delete("Pod", pod["metadata"]["name"], name, {"gracePeriodSeconds": 0})
    wait_for(lambda: not admin.list("Pod", name), 60, message=f"pods of {name} gone")
    admin.delete("Namespace", name)


def gpu_pod(name: str, ns: str, gpus: int = 1, image: str = "nvcr.io/nvidia/cuda:12.8.0-base-ubuntu22.04",
            resource: str = "nvidia.com/gpu", **spec: Any) -> dict[str, Any]:  # fmt: skip
    limits = {resource: str(gpus)} if gpus else {}
    labels = spec.pop("labels", {})
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"containers": [{"name": "main", "image": image, "command": ["sleep", "infinity"],
                                 "resources": {"limits": limits}}], **spec},
    }  # fmt: skip


def unschedulable(admin: Kube, ns: str, name: str) -> str:
    """The scheduler's message once it has given up on the pod (for now)."""

    def message() -> str | None:
        pod = admin.get("Pod", name, ns) or {}
        for c in (pod.get("status") or {}).get("conditions") or []:
            if c.get("type") == "PodScheduled" and c.get("reason") == "Unschedulable":
                return str(c.get("message"))
        return None

    return wait_for(message, 60, message=f"the scheduler to give up on {ns}/{name}")


def running(admin: Kube, ns: str, name: str) -> dict[str, Any]:
    def pod() -> dict[str, Any] | None:
        found = admin.get("Pod", name, ns)
        return found if found and (found.get("status") or {}).get("phase") == "Running" else None

    return wait_for(pod, 60, message=f"{ns}/{name} Running")


def wait_policy_ready(admin: Kube, op: OperatorProcess) -> None:
    def ready() -> bool:
        obj = admin.get("ClusterPolicy", "cluster-policy") or {}
        status = obj.get("status") or {}
        return status.get("state") == "ready" and status.get("observedGeneration") == obj["metadata"]["generation"]

    try:
        wait_for(ready, WAIT, interval=0.5, message="ClusterPolicy ready")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\noperator log:\n{op.log_tail()}") from None


def render_chart(*sets: str, show: str) -> list[dict[str, Any]]:
    args = [helm(), "template", "gpu-operator", str(REPO / "charts/gpu-operator"), "-n", NAMESPACE,
            "--kube-version", "1.37.2", "--show-only", show]  # fmt: skip
    for s in sets:
        args += ["--set", s]
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def test_chart_alerts_and_dashboard_use_the_operators_metrics() -> None:
    import re

    from gpu_operator.metrics import REGISTRY

    exposed = {s.name for family in REGISTRY.collect() for s in family.samples}
    docs = {d["kind"]: d for d in render_chart(
        "operator.metrics.prometheusRule.enabled=true", "operator.metrics.grafanaDashboard.enabled=true",
        "operator.metrics.prometheusRule.labels.release=prom", show="templates/monitoring.yaml")}  # fmt: skip
    rule = docs["PrometheusRule"]
    assert rule["metadata"]["labels"]["release"] == "prom"
    alerts = {r["alert"]: r for r in rule["spec"]["groups"][0]["rules"]}
    assert {"GPUOperatorOperandNotReady", "GPUOperatorDriverUpgradeFailed", "GPUOperatorNodeStuckInUpgrade",
            "GPUOperatorReconciliationFailing", "GPUsUnhealthy"} <= set(alerts)  # fmt: skip
    used = {m for r in alerts.values() for m in re.findall(r"gpu_operator_\w+", r["expr"])}
    assert used <= exposed, used - exposed
    assert "{{ $value }}" in alerts["GPUOperatorDriverUpgradeFailed"]["annotations"]["description"]
    dashboard = json.loads(docs["ConfigMap"]["data"]["gpu-operator.json"])
    assert docs["ConfigMap"]["metadata"]["labels"]["grafana_dashboard"] == "1" and dashboard["panels"]
    with pytest.raises(subprocess.CalledProcessError):  # off by default: nothing rendered
        render_chart(show="templates/monitoring.yaml")


# --- the tests on the cluster, in order ---


def test_healthy_cluster_gives_exit_0_and_no_findings(
    cluster: LocalCluster, admin: Kube, stack: tuple[OperatorProcess, NodeSimulator], doctor_kubeconfig: Path
) -> None:
    wait_policy_ready(admin, stack[0])
    report = wait_healthy(doctor_kubeconfig)
    assert report == {"status": 0, "findings": []}
    text = subprocess.run([sys.executable, "-m", "gpu_operator.cli", "doctor", "--kubeconfig", str(doctor_kubeconfig)],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert text.returncode == 0 and text.stdout.startswith("no findings"), text.stdout + text.stderr
    # The identity doctor runs under can read but never write.
    reader = Kube.connect(str(doctor_kubeconfig))
    assert reader.list("Node") and reader.list("ClusterPolicy")
    with pytest.raises(ApiError) as denied:
        reader.merge_patch("Node", H100_0, {"metadata": {"labels": {"e2e-doctor": "write"}}})
    assert denied.value.status == 403


def test_capacity_answers_exercise_3_as_the_scheduler_then_does(
    cluster: LocalCluster, admin: Kube, ns: str, doctor_kubeconfig: Path
) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "gpu_operator.cli", "capacity", "--kubeconfig", str(doctor_kubeconfig),
         "--pod", str(EXERCISE3), "--count", "10", "-n", ns],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    # Two H100 nodes of 8 GPUs: 4 jobs each; the L4 node is excluded by the selector; one more H100 node for 2.
    assert "fit now: 8 of 10" in proc, proc
    assert f"{H100_0}: 4 (limited by nvidia.com/gpu: 8 free, 2 each)" in proc, proc
    assert f"{L4}: 0 (excluded: node selector or affinity does not match)" in proc, proc
    assert f"extra nodes needed: 1 × like {H100_0}" in proc or f"extra nodes needed: 1 × like {H100_1}" in proc, proc
    template = yaml.safe_load(EXERCISE3.read_text())
    for i in range(10):
        pod = json.loads(json.dumps(template))
        pod["metadata"].update(name=f"training-job-{i}", namespace=ns)
        admin.create(pod)

    def decided() -> list[dict[str, Any]] | None:
        pods = admin.list("Pod", ns)
        waiting = [p for p in pods if not p["spec"].get("nodeName") and not any(
            c.get("reason") == "Unschedulable" for c in (p.get("status") or {}).get("conditions") or [])]  # fmt: skip
        return pods if len(pods) == 10 and not waiting else None

    pods = wait_for(decided, 60, message="the scheduler to place or refuse every job")
    placed = Counter(p["spec"]["nodeName"] for p in pods if p["spec"].get("nodeName"))
    assert placed == {H100_0: 4, H100_1: 4}
    # And doctor explains the two left over, with the table and what fits now.
    left = [p["metadata"]["name"] for p in pods if not p["spec"].get("nodeName")]
    f = finding(doctor_kubeconfig, "InsufficientGPU", "-n", ns, "--pod", left[0])
    assert "0 free in all, 2 requested" in f["summary"]
    assert any(row.startswith(H100_0) for row in f["details"])


def test_broken_pytorch_is_shown_with_its_corrected_pod(admin: Kube, ns: str, doctor_kubeconfig: Path) -> None:
    seed = {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "broken-pytorch", "namespace": ns},
        "spec": {"restartPolicy": "Never", "containers": [{
            "name": "pytorch", "image": "pytorch/pytorch:2.1.0-cuda12.1-cudnn8-devel",
            "command": ["python", "-c", "import torch; print(torch.cuda.is_available())"],
            "resources": {"limits": {"memory": "4Gi", "cpu": 2}}}]},
    }  # fmt: skip
    admin.create(seed)
    running(admin, ns, "broken-pytorch")
    code, report = doctor(doctor_kubeconfig, "-n", ns, "--pod", "broken-pytorch")
    assert code == 1 and [f["kind"] for f in report["findings"]] == ["CUDAImageWithoutGPU"]
    f = report["findings"][0]
    assert "requests no GPU" in f["summary"] and "nvidia.com/gpu: 1" in f["fix"]
    fixed = yaml.safe_load(f["fix_yaml"])
    assert fixed["spec"]["containers"][0]["resources"]["limits"] == {"memory": "4Gi", "cpu": "2", "nvidia.com/gpu": 1}
    # The corrected pod runs on a GPU node and doctor has nothing to say about it.
    fixed["metadata"] = {"name": "fixed-pytorch", "namespace": ns}
    admin.create(fixed)
    pod = running(admin, ns, "fixed-pytorch")
    assert pod["spec"]["nodeName"] in (H100_0, H100_1, L4)
    assert doctor(doctor_kubeconfig, "-n", ns, "--pod", "fixed-pytorch") == (0, {"status": 0, "findings": []})


def test_a_64_gpu_pod(admin: Kube, ns: str, doctor_kubeconfig: Path) -> None:
    admin.create(gpu_pod("big", ns, 64))
    assert "Insufficient nvidia.com/gpu" in unschedulable(admin, ns, "big")
    code, report = doctor(doctor_kubeconfig, "-n", ns, "--pod", "big")
    f = report["findings"][0]
    assert code == 2 and f["kind"] == "GPURequestExceedsEveryNode"
    assert "largest eligible node has 8" in f["summary"] and "nvidia.com/gpu: 8" in f["fix"]
    assert f["evidence"][0]["field"] == "status.conditions[PodScheduled].message"
    assert {row.split()[0] for row in f["details"][1:]} == {H100_0, H100_1, L4}


def test_affinity_to_a_gpu_model_no_node_has(admin: Kube, ns: str, doctor_kubeconfig: Path) -> None:
    b200 = {"key": "nvidia.com/gpu.product", "operator": "In", "values": ["NVIDIA-B200"]}
    affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [b200]}]}}}  # fmt: skip
    admin.create(gpu_pod("b200", ns, 8, affinity=affinity))
    assert "node affinity" in unschedulable(admin, ns, "b200")
    f = finding(doctor_kubeconfig, "NoNodeMatchesAffinity", "-n", ns, "--pod", "b200")
    assert f["severity"] == "error" and "NVIDIA-B200" in f["summary"] and H100 in f["summary"]
    assert "fix_yaml" not in f  # no node has a B200: other models' values would widen the pod, none is given


def test_an_untolerated_taint(admin: Kube, ns: str, doctor_kubeconfig: Path) -> None:
    taint = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
    admin.merge_patch("Node", H100_1, {"spec": {"taints": [taint]}})
    try:
        admin.create(gpu_pod("tainted", ns, 1, nodeSelector={"kubernetes.io/hostname": H100_1}))
        assert "untolerated taint" in unschedulable(admin, ns, "tainted")
        f = finding(doctor_kubeconfig, "UntoleratedTaint", "-n", ns, "--pod", "tainted")
        assert "nvidia.com/gpu=present:NoSchedule" in f["summary"]
        toleration = {"key": "nvidia.com/gpu", "operator": "Equal", "value": "present", "effect": "NoSchedule"}
        assert yaml.safe_load(f["fix_yaml"]) == {"spec": {"tolerations": [toleration]}}
    finally:
        admin.merge_patch("Node", H100_1, {"spec": {"taints": None}})


def test_a_mig_resource_under_the_single_strategy(admin: Kube, ns: str, doctor_kubeconfig: Path) -> None:
    admin.create(gpu_pod("mig", ns, 1, resource="nvidia.com/mig-1g.10gb"))
    assert "nvidia.com/mig-1g.10gb" in unschedulable(admin, ns, "mig")
    f = finding(doctor_kubeconfig, "MIGResourceNotAdvertised", "-n", ns, "--pod", "mig")
    assert "strategy is single" in f["summary"] and "mixed" in f["fix"] and "-MIG-1g.10gb" in f["fix"]
    # The H100 nodes' GPUs have the profile: the layout is named with them (the L4 node is not MIG-capable).
    assert "nvidia.com/mig.config=all-1g.10gb on " in f["fix"] and H100_0 in f["fix"] and L4 not in f["fix"]


def test_a_cuda_13_image_on_a_node_with_driver_570(admin: Kube, ns: str, doctor_kubeconfig: Path) -> None:
    admin.create(gpu_pod("cuda13", ns, 1, image="nvidia/cuda:13.0.1-base-ubuntu24.04",
                         nodeSelector={"kubernetes.io/hostname": L4}))  # fmt: skip
    running(admin, ns, "cuda13")  # the scheduler does not know; the container would fail at start
    f = finding(doctor_kubeconfig, "CUDADriverTooOld", "-n", ns, "--pod", "cuda13")
    assert f["severity"] == "error" and f["nodes"] == [L4]
    assert "driver 570.172.08" in " ".join(e["message"] for e in f["evidence"]) and "580" in f["fix"]


# Seed §9 Exercise 1's pod word for word but for its image: the seed's nvidia/cuda:12.1-devel-ubuntu22.04 is no tag of
# nvidia/cuda (its tags name the patch release: 12.1.0-devel-ubuntu22.04, 12.1.1-...), so on a real cluster the seed's
# pod would stop in ImagePullBackOff (doctor's ImagePullFailed, from the kubelet's waiting reason and message: see
# tests/test_doctor.py). kwok pulls no image: here even the seed's tag would run, which proves nothing.
EXERCISE1_IMAGE = "nvidia/cuda:12.1.0-devel-ubuntu22.04"
# What containerd reports for a container whose command is not in its image: nvidia-smi is not in a CUDA image, the
# NVIDIA container runtime mounts it from the host's driver together with the GPU's device nodes.
NO_NVIDIA_SMI = ('failed to create containerd task: failed to create shim task: OCI runtime create failed: runc create '
                 'failed: unable to start container process: error during container init: exec: "nvidia-smi": '
                 'executable file not found in $PATH: unknown')  # fmt: skip


def exercise1(ns: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "gpu-test", "namespace": ns},
        "spec": {"containers": [{"name": "cuda-test", "image": EXERCISE1_IMAGE, "command": ["nvidia-smi"],
                                 "resources": {"limits": {"nvidia.com/gpu": 1}}}],
                 "restartPolicy": "Never"},
    }  # fmt: skip


def kubelet_reports(admin: Kube, ns: str, name: str, phase: str, **container: Any) -> None:
    """Write the status the kubelet would write once the pod's one container has ended (`container`: its state and
    lastState, restartCount...). kwok plays the kubelet of the workload pods and leaves a bare pod Running for
    good: it never runs the command, so the test writes what the command's end would have shown."""
    pod = admin.get("Pod", name, ns)
    assert pod is not None and (pod.get("status") or {}).get("phase") == "Running", pod
    status = pod["status"]
    statuses = [{**cs, "ready": False, "started": False, **container} for cs in status["containerStatuses"]]
    reason = {"Succeeded": "PodCompleted", "Failed": "PodFailed"}.get(phase)
    unready = {"status": "False", **({"reason": reason} if reason else {})}
    conditions = [{**c, **unready} if c["type"] in ("Ready", "ContainersReady") else c
                  for c in status.get("conditions") or []]  # fmt: skip
    patch = {"status": {"phase": phase, "containerStatuses": statuses, "conditions": conditions}}
    admin.merge_patch("Pod", name, patch, ns, sub="status")


def test_exercise_1_runs_on_a_gpu_node_that_answers_its_questions(
    admin: Kube, ns: str, doctor_kubeconfig: Path
) -> None:
    """Seed §9 Exercise 1 ("Deploy a simple GPU workload and verify GPU access"): the scheduler puts gpu-test on a
    node whose device plugin advertises nvidia.com/gpu, and the pod runs. Its three questions (the GPU, its memory,
    the CUDA version nvidia-smi shows) are answered on the node by GPU feature discovery's labels; the CUDA version is
    the driver's, at least the image's 12.1. doctor has nothing to say about the pod, running or completed.

    What the seed gets wrong, and what is checked instead: its image tag does not exist (see EXERCISE1_IMAGE: the
    corrected tag is used); and kwok never runs nvidia-smi, so the pod stays Running until the test writes the status
    the kubelet would write when nvidia-smi exits 0 (Succeeded, terminated Completed)."""
    admin.create(exercise1(ns))
    pod = running(admin, ns, "gpu-test")
    node_name = pod["spec"]["nodeName"]
    assert node_name in (H100_0, H100_1, L4), node_name
    node = admin.get("Node", node_name)
    assert node is not None and int(node["status"]["allocatable"]["nvidia.com/gpu"]) >= 1
    labels = node["metadata"]["labels"]
    product, memory = {L4: ("NVIDIA-L4", "23034")}.get(node_name, (H100, "81559"))
    assert labels["nvidia.com/gpu.present"] == "true"
    assert (labels["nvidia.com/gpu.product"], labels["nvidia.com/gpu.memory"]) == (product, memory)
    cuda = (int(labels["nvidia.com/cuda.runtime.major"]), int(labels["nvidia.com/cuda.runtime.minor"]))
    assert cuda >= (12, 1), cuda
    assert doctor(doctor_kubeconfig, "-n", ns, "--pod", "gpu-test") == (0, {"status": 0, "findings": []})
    kubelet_reports(admin, ns, "gpu-test", "Succeeded",
                    state={"terminated": {"exitCode": 0, "reason": "Completed"}})  # fmt: skip
    assert (admin.get("Pod", "gpu-test", ns) or {})["status"]["phase"] == "Succeeded"
    assert doctor(doctor_kubeconfig, "-n", ns, "--pod", "gpu-test") == (0, {"status": 0, "findings": []})


def test_cuda_device_not_found_in_a_gpu_pod_is_diagnosed(admin: Kube, ns: str, doctor_kubeconfig: Path) -> None:
    """Seed §6.3 Issue 1, "CUDA device not found" (and §12's CUDA runtime errors): the pod got its GPU from the
    device plugin but no NVIDIA container runtime put it into the container ("Cause: Missing NVIDIA container
    runtime"). doctor reports CUDADeviceNotFound, an error, on the pod's node, with the seed's own checks as the fix
    (`kubectl get pods -n gpu-operator`, `kubectl describe node`).

    Two ways a user meets it, their statuses written as the kubelet would (kwok runs no container): Exercise 1's pod,
    whose nvidia-smi is not in the CUDA image (the runtime mounts it from the host), fails at start (StartError, exit
    128, phase Failed); a PyTorch training pod (§7.1's resources) crash-loops on "No CUDA GPUs are available", which
    reaches the status through terminationMessagePolicy FallbackToLogsOnError (doctor reads statuses, not logs).
    """
    admin.create(exercise1(ns))
    node_name = running(admin, ns, "gpu-test")["spec"]["nodeName"]
    kubelet_reports(admin, ns, "gpu-test", "Failed", state={"terminated": {
        "exitCode": 128, "reason": "StartError", "message": NO_NVIDIA_SMI}})  # fmt: skip
    f = finding(doctor_kubeconfig, "CUDADeviceNotFound", "-n", ns, "--pod", "gpu-test")
    assert f["severity"] == "error" and f["nodes"] == [node_name]
    assert "requests 1 nvidia.com/gpu" in f["summary"] and "NVIDIA container runtime" in f["summary"]
    assert f"kubectl get pods -n {NAMESPACE}" in f["fix"] and "describe node" in f["fix"]
    assert f["evidence"][0]["field"] == "status.containerStatuses[cuda-test].state.terminated.message"
    assert '"nvidia-smi": executable file not found' in f["evidence"][0]["message"]
    code, report = doctor(doctor_kubeconfig, "-n", ns, "--pod", "gpu-test")
    assert code == 2 and [x["kind"] for x in report["findings"]] == ["CUDADeviceNotFound"], report

    resources = {"nvidia.com/gpu": 1, "memory": "32Gi", "cpu": 8}
    training = {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "exclusive-training", "namespace": ns},
        "spec": {"containers": [{"name": "pytorch-trainer", "image": "pytorch/pytorch:2.1.0-cuda12.1-cudnn8-devel",
                                 "terminationMessagePolicy": "FallbackToLogsOnError",
                                 "resources": {"limits": resources, "requests": resources}}]},
    }  # fmt: skip
    admin.create(training)
    node_name = running(admin, ns, "exclusive-training")["spec"]["nodeName"]
    log_tail = ('Traceback (most recent call last):\n  File "/workspace/train.py", line 12, in <module>\n'
                "    model = model.cuda()\nRuntimeError: No CUDA GPUs are available\n")  # fmt: skip
    kubelet_reports(admin, ns, "exclusive-training", "Running", restartCount=1,
                    state={"waiting": {"reason": "CrashLoopBackOff",
                                       "message": "back-off 10s restarting failed container=pytorch-trainer"}},
                    lastState={"terminated": {"exitCode": 1, "reason": "Error", "message": log_tail}})  # fmt: skip
    f = finding(doctor_kubeconfig, "CUDADeviceNotFound", "-n", ns, "--pod", "exclusive-training")
    assert f["severity"] == "error" and f["nodes"] == [node_name]
    assert f["evidence"][0] == {
        "object": f"Pod {ns}/exclusive-training",
        "field": "status.containerStatuses[pytorch-trainer].lastState.terminated.message",
        "message": "RuntimeError: No CUDA GPUs are available",
    }


def gpus_advertised(admin: Kube, name: str) -> str:
    node = admin.get("Node", name) or {}
    return str(((node.get("status") or {}).get("allocatable") or {}).get("nvidia.com/gpu", "0"))


def stack_ready(admin: Kube, stack: tuple[OperatorProcess, NodeSimulator]) -> None:
    """The policy ready and both H100 nodes advertising their 8 GPUs (a test run alone does not follow the others)."""
    wait_policy_ready(admin, stack[0])
    wait_for(lambda: all(gpus_advertised(admin, n) == "8" for n in (H100_0, H100_1)), WAIT,
             message=f"{H100_0} and {H100_1} advertising 8 GPUs")  # fmt: skip


def test_seed_question_3_request_unequal_to_limit_is_refused_at_admission(
    admin: Kube, stack: tuple[OperatorProcess, NodeSimulator], ns: str
) -> None:
    """Seed §11 Question 3 ("What happens if you set GPU requests != GPU limits?") offers "Pod scheduling may fail".
    What happens: the API server refuses it at creation (422, "must be equal to nvidia.com/gpu limit"), so it never
    reaches the scheduler; a Job (any controller) whose pod template asks so is refused the same way, at once, as
    its template is validated as a pod's. (doctor's PodCreationRefused is for pods a controller's template passed
    but admission changed, e.g. by a webhook: the FailedCreate event then names the controller.)"""
    stack_ready(admin, stack)
    container = {"name": "trainer", "image": "pytorch/pytorch:latest", "command": ["sleep", "infinity"],
                 "resources": {"requests": {"nvidia.com/gpu": "1"}, "limits": {"nvidia.com/gpu": "2"}}}  # fmt: skip
    bare = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "q3", "namespace": ns},
            "spec": {"restartPolicy": "Never", "containers": [container]}}  # fmt: skip
    job: dict[str, Any] = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "q3", "namespace": ns},
        "spec": {"backoffLimit": 0, "template": {"spec": {"restartPolicy": "Never", "containers": [container]}}},
    }
    for kind, obj in (("Pod", bare), ("Job", job)):
        with pytest.raises(ApiError) as refused:
            admin.create(obj)
        assert refused.value.status == 422 and "must be equal to nvidia.com/gpu limit" in refused.value.message
        assert admin.get(kind, "q3", ns) is None
    assert not admin.list("Pod", ns)  # no pod ever existed: nothing was Pending for the scheduler


def test_seed_7_1_shared_inference_waits_for_a_resource_this_stack_does_not_advertise(
    admin: Kube, stack: tuple[OperatorProcess, NodeSimulator], ns: str, doctor_kubeconfig: Path
) -> None:
    """Seed §7.1 "GPU Sharing (For Inference or Small Models)": shared-inference, word for word (but for its
    namespace), asks volcano.sh/gpu-memory: 4096. The GPU Operator advertises no such resource (it is Volcano's
    vGPU device plugin's), so the pod stays Pending and doctor says where the resource comes from."""
    stack_ready(admin, stack)
    seed: dict[str, Any] = {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "shared-inference", "namespace": ns},
        "spec": {"containers": [{"name": "inference-server", "image": "tensorflow/serving:latest-gpu",
                                 "resources": {"limits": {"volcano.sh/gpu-memory": 4096, "memory": "8Gi",
                                                          "cpu": 4}}}]},
    }  # fmt: skip
    admin.create(seed)
    assert "volcano.sh/gpu-memory" in unschedulable(admin, ns, "shared-inference")
    f = finding(doctor_kubeconfig, "VolcanoResourceNotAdvertised", "-n", ns, "--pod", "shared-inference")
    assert f["severity"] == "error" and "Volcano" in f["summary"] and "nvidia.com/gpu" in f["fix"]
    code, _ = doctor(doctor_kubeconfig, "-n", ns, "--pod", "shared-inference")
    assert code == 2


def test_seed_question_5_four_gpu_jobs_fill_the_h100_nodes_two_each(
    admin: Kube, stack: tuple[OperatorProcess, NodeSimulator], ns: str, doctor_kubeconfig: Path
) -> None:
    """Seed §11 Question 5 at this cluster's size: 8-GPU H100 nodes take two 4-GPU jobs each (the seed's 4 nodes:
    8 jobs). Here two H100 nodes (and an L4 node with one GPU, which takes none): 4 run, the fifth stays Pending
    with "Insufficient nvidia.com/gpu", and doctor says no node has 4 free."""
    stack_ready(admin, stack)
    for i in range(5):
        admin.create({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"q5-{i}", "namespace": ns},
            "spec": {"containers": [{"name": "trainer", "image": "pytorch/pytorch:latest",
                                     "command": ["sleep", "infinity"],
                                     "resources": {"limits": {"nvidia.com/gpu": 4}}}]},
        })  # fmt: skip

    def decided() -> list[dict[str, Any]] | None:
        pods = admin.list("Pod", ns)
        waiting = [p for p in pods if not p["spec"].get("nodeName") and not any(
            c.get("reason") == "Unschedulable" for c in (p.get("status") or {}).get("conditions") or [])]  # fmt: skip
        return pods if len(pods) == 5 and not waiting else None

    pods = wait_for(decided, 60, message="the scheduler to place or refuse every job")
    placed = Counter(p["spec"]["nodeName"] for p in pods if p["spec"].get("nodeName"))
    assert placed == {H100_0: 2, H100_1: 2}, placed
    left = [p["metadata"]["name"] for p in pods if not p["spec"].get("nodeName")]
    assert len(left) == 1 and "Insufficient nvidia.com/gpu" in unschedulable(admin, ns, left[0])
    f = finding(doctor_kubeconfig, "InsufficientGPU", "-n", ns, "--pod", left[0])
    assert "4 requested" in f["summary"], f["summary"]


def test_an_operand_stuck_in_init_is_traced_to_the_first_failing_component(
    admin: Kube, stack: tuple[OperatorProcess, NodeSimulator], doctor_kubeconfig: Path
) -> None:
    sim = stack[1]
    sim.crash_loop_driver(H100_1)
    try:
        for pod in admin.list("Pod", NAMESPACE, field_selector=f"spec.nodeName={H100_1}"):
            if pod["metadata"]["name"].startswith("nvidia-operator-validator"):
                admin.delete("Pod", pod["metadata"]["name"], NAMESPACE)  # it restarts and waits for the driver
        f = finding(doctor_kubeconfig, "OperandNotReady", "--node", H100_1)
        assert f["nodes"] == [H100_1] and "state-driver" in f["summary"] and "crash-looping" in f["summary"]

        def validator_in_init() -> bool:
            pods = admin.list("Pod", NAMESPACE, field_selector=f"spec.nodeName={H100_1}")
            return any(p["metadata"]["name"].startswith("nvidia-operator-validator") and any(
                "running" in (c.get("state") or {}) or "waiting" in (c.get("state") or {})
                for c in (p.get("status") or {}).get("initContainerStatuses") or []) for p in pods)  # fmt: skip

        wait_for(validator_in_init, 60, message="the validator waiting in its init containers")
    finally:
        sim.crash_loop_driver(H100_1, on=False)
    wait_healthy(doctor_kubeconfig)


def test_a_cordoned_node_mid_upgrade(admin: Kube, ns: str, doctor_kubeconfig: Path) -> None:
    # A running job the upgrade waits for (waitForCompletion.podSelector), then an upgrade asked for on that node.
    admin.create(gpu_pod("job", ns, 1, labels={"e2e-doctor": "job"}, nodeSelector={"kubernetes.io/hostname": H100_0}))
    running(admin, ns, "job")
    requested = {"nvidia.com/gpu-driver-upgrade-requested": "true"}
    admin.merge_patch("Node", H100_0, {"metadata": {"annotations": requested}})

    def waiting_for_jobs() -> bool:
        node = admin.get("Node", H100_0) or {}
        state = (node["metadata"].get("labels") or {}).get("nvidia.com/gpu-driver-upgrade-state")
        return state == "wait-for-jobs-required" and bool(node["spec"].get("unschedulable"))

    wait_for(waiting_for_jobs, WAIT, message=f"{H100_0} cordoned, waiting for the job")
    admin.create(gpu_pod("late", ns, 1, nodeSelector={"kubernetes.io/hostname": H100_0}))
    assert "unschedulable" in unschedulable(admin, ns, "late")
    f = finding(doctor_kubeconfig, "NodesCordoned", "-n", ns, "--pod", "late")
    assert "driver upgrade" in f["summary"] and "wait-for-jobs-required" in f["details"][0]
    assert "waits for" in f["details"][0] and "do not uncordon" in f["fix"]
    node_view = finding(doctor_kubeconfig, "NodeInDriverUpgrade", "--node", H100_0)
    assert node_view["severity"] == "info" and "wait-for-jobs-required" in node_view["summary"]
    # The job ends: the upgrade goes on and the node comes back.
    admin.delete("Pod", "job", ns, {"gracePeriodSeconds": 0})
    wait_for(lambda: not (admin.get("Node", H100_0) or {})["spec"].get("unschedulable"), WAIT,
             message=f"{H100_0} uncordoned after its upgrade")  # fmt: skip
    running(admin, ns, "late")


def test_doctor_never_wrote(cluster: LocalCluster, doctor_kubeconfig: Path) -> None:
    """Every write doctor's identity attempted is the test's own refused patch: doctor itself wrote nothing."""
    attempts = cluster.writes(f"system:serviceaccount:{NAMESPACE}:{DOCTOR_SA}")
    assert [(e["verb"], e["objectRef"]["resource"], e["responseStatus"]["code"]) for e in attempts] == [
        ("patch", "nodes", 403)
    ]
