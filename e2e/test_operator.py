"""End-to-end: the operator as its own process, under the chart's identity, reconciling the local cluster.

The tests in this module share one operator and build on each other's state in file order.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from e2e.cluster.localcluster import LocalCluster, audit_time
from e2e.cluster.nodes import PROFILES, create_nodes, make_node
from e2e.kube import Kube as E2EKube
from e2e.kube import create_namespace, wait_for
from e2e.operator_process import NAMESPACE, OperatorProcess, delete_policies, install_crds_and_rbac, policy_from_sample
from e2e.simulator import NodeSimulator
from e2e.test_doctor import finding
from gpu_operator.kube import ApiError, Kube

GPU_NODES = {"op-h100-0": ("h100x8", "ubuntu22.04"), "op-h100-1": ("h100x8", "ubuntu22.04"),
             "op-a100-0": ("a100x4", "ubuntu24.04")}  # fmt: skip
CPU_NODES = {"op-cpu-0": ("cpu", "ubuntu22.04")}
ENABLED_DAEMONSETS = {
    "nvidia-driver-daemonset-ubuntu22.04",
    "nvidia-driver-daemonset-ubuntu24.04",
    "nvidia-container-toolkit-daemonset",
    "nvidia-operator-validator",
    "nvidia-device-plugin-daemonset",
    "nvidia-device-plugin-mps-control-daemon",
    "nvidia-dcgm-exporter",
    "gpu-feature-discovery",
    "nvidia-mig-manager",
}
WAIT = 90


@pytest.fixture(scope="module")
def admin(cluster: LocalCluster) -> Kube:
    return Kube.connect(str(cluster.kubeconfig))


@pytest.fixture(scope="module")
def operator(cluster: LocalCluster, admin: Kube, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    install_crds_and_rbac(admin)
    delete_policies(admin, 30, leftover=True)
    nodes = [make_node(name, profile, os=os) for name, (profile, os) in {**GPU_NODES, **CPU_NODES}.items()]
    create_nodes(admin.client, nodes)
    sim = NodeSimulator(cluster.simulator_kubeconfig, namespace=NAMESPACE, resync_seconds=5).start()
    op = OperatorProcess(cluster, tmp_path_factory.mktemp("operator") / "operator.log").start()
    admin.create(policy_from_sample())
    try:
        yield op
    finally:
        # Delete the policy while the operator runs: it removes its finalizer and the node labels.
        try:
            delete_policies(admin)
        finally:
            op.stop()
            sim.stop()


def policy(admin: Kube, name: str = "cluster-policy") -> dict[str, Any]:
    obj = admin.get("ClusterPolicy", name)
    assert obj is not None, f"ClusterPolicy {name} is gone"
    return obj


def wait_ready(admin: Kube, op: OperatorProcess, name: str = "cluster-policy", timeout: float = WAIT) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        obj = policy(admin, name)
        status = obj.get("status") or {}
        gen_ok = status.get("observedGeneration") == obj["metadata"]["generation"]
        return obj if status.get("state") == "ready" and gen_ok else None

    try:
        return wait_for(ready, timeout, interval=0.5, message=f"ClusterPolicy {name} ready")
    except AssertionError as exc:
        status = policy(admin, name).get("status")
        raise AssertionError(f"{exc}\nstatus: {status}\noperator log:\n{op.log_tail()}") from None


def daemonsets(admin: Kube) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in admin.list("DaemonSet", NAMESPACE)}


def operand_pods(admin: Kube) -> list[dict[str, Any]]:
    return admin.list("Pod", NAMESPACE, label_selector="app.kubernetes.io/managed-by=gpu-operator")


def labels(admin: Kube, node: str) -> dict[str, str]:
    obj = admin.get("Node", node)
    assert obj is not None
    return dict(obj["metadata"].get("labels") or {})


def patch_spec(admin: Kube, patch: dict[str, Any], name: str = "cluster-policy") -> None:
    admin.merge_patch("ClusterPolicy", name, {"spec": patch})


def test_policy_becomes_ready_with_every_enabled_operand(admin: Kube, operator: OperatorProcess) -> None:
    obj = wait_ready(admin, operator)
    status = obj["status"]
    assert status["namespace"] == NAMESPACE
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Ready"]["status"] == "True" and conditions["Ready"]["reason"] == "Reconciled"
    assert conditions["Error"]["status"] == "False"
    assert all(c["observedGeneration"] == obj["metadata"]["generation"] for c in conditions.values())
    states = {s["name"]: s["state"] for s in status["states"]}
    assert states["state-dcgm"] == "disabled" and states["state-node-status-exporter"] == "disabled"
    assert states["state-driver"] == "ready" and states["state-device-plugin"] == "ready"
    assert ENABLED_DAEMONSETS <= set(daemonsets(admin))
    assert "nvidia-dcgm" not in daemonsets(admin)
    # Operand pods run on GPU nodes only (other tests' nodes may be GPU nodes too; CPU nodes never).
    pod_nodes = {p["spec"].get("nodeName") for p in operand_pods(admin)}
    assert set(GPU_NODES) <= pod_nodes
    assert not pod_nodes & set(CPU_NODES)
    for node in GPU_NODES:
        node_labels = labels(admin, node)
        assert node_labels["nvidia.com/gpu.present"] == "true"
        assert node_labels["nvidia.com/gpu.deploy.driver"] == "true"
    assert "nvidia.com/gpu.present" not in labels(admin, "op-cpu-0")


def test_nodes_of_two_os_versions_get_one_driver_daemonset_each(admin: Kube, operator: OperatorProcess) -> None:
    ds = daemonsets(admin)
    for name, (os_id, version) in {"nvidia-driver-daemonset-ubuntu22.04": ("ubuntu", "22.04"),
                                   "nvidia-driver-daemonset-ubuntu24.04": ("ubuntu", "24.04")}.items():  # fmt: skip
        spec = ds[name]["spec"]
        selector = spec["template"]["spec"]["nodeSelector"]
        assert selector["feature.node.kubernetes.io/system-os_release.ID"] == os_id
        assert selector["feature.node.kubernetes.io/system-os_release.VERSION_ID"] == version
        image = spec["template"]["spec"]["containers"][0]["image"]
        assert image.endswith(f":595.91.07-{os_id}{version}"), image
        assert spec["updateStrategy"]["type"] == "OnDelete"
    driver_nodes = {
        p["spec"]["nodeName"]: p["metadata"]["ownerReferences"][0]["name"]
        for p in operand_pods(admin)
        if p["metadata"]["labels"].get("nvidia.com/gpu-operator.state") == "state-driver"
    }
    assert driver_nodes["op-h100-0"] == driver_nodes["op-h100-1"] == "nvidia-driver-daemonset-ubuntu22.04"
    assert driver_nodes["op-a100-0"] == "nvidia-driver-daemonset-ubuntu24.04"


def test_disabled_component_is_deleted_and_comes_back(admin: Kube, operator: OperatorProcess) -> None:
    patch_spec(admin, {"dcgmExporter": {"enabled": False}})

    def gone() -> bool:
        return (
            "nvidia-dcgm-exporter" not in daemonsets(admin)
            and admin.get("Service", "nvidia-dcgm-exporter", NAMESPACE) is None
            and admin.get("ServiceAccount", "nvidia-dcgm-exporter", NAMESPACE) is None
        )

    wait_for(gone, WAIT, message="dcgm-exporter objects deleted")
    obj = wait_ready(admin, operator)
    assert {s["name"]: s["state"] for s in obj["status"]["states"]}["state-dcgm-exporter"] == "disabled"
    patch_spec(admin, {"dcgmExporter": {"enabled": True}})
    wait_for(lambda: "nvidia-dcgm-exporter" in daemonsets(admin), WAIT, message="dcgm-exporter back")
    obj = wait_ready(admin, operator)
    assert {s["name"]: s["state"] for s in obj["status"]["states"]}["state-dcgm-exporter"] == "ready"


def test_user_opt_out_label_is_respected(admin: Kube, operator: OperatorProcess) -> None:
    label = "nvidia.com/gpu.deploy.dcgm-exporter"
    admin.merge_patch("Node", "op-h100-1", {"metadata": {"labels": {label: "false"}}})

    def exporter_nodes() -> set[str]:
        return {
            p["spec"].get("nodeName")
            for p in operand_pods(admin)
            if p["metadata"]["labels"].get("nvidia.com/gpu-operator.state") == "state-dcgm-exporter"
        }

    wait_for(lambda: "op-h100-1" not in exporter_nodes(), WAIT, message="dcgm-exporter pod gone from op-h100-1")
    wait_ready(admin, operator)
    assert labels(admin, "op-h100-1")[label] == "false"
    assert "op-h100-0" in exporter_nodes()


def test_gpu_node_added_then_loses_its_gpu(admin: Kube, operator: OperatorProcess) -> None:
    create_nodes(admin.client, [make_node("op-l4-0", "l4x1", os="ubuntu22.04")])
    wait_for(lambda: labels(admin, "op-l4-0").get("nvidia.com/gpu.present") == "true", WAIT,
             message="op-l4-0 labelled")  # fmt: skip
    wait_for(lambda: any(p["spec"].get("nodeName") == "op-l4-0" for p in operand_pods(admin)), WAIT,
             message="operand pods on op-l4-0")  # fmt: skip
    wait_ready(admin, operator)
    wait_for(lambda: node_gpus(admin, "op-l4-0") == "1", WAIT, message="op-l4-0 advertises nvidia.com/gpu")

    admin.merge_patch(
        "Node", "op-l4-0", {"metadata": {"labels": {"feature.node.kubernetes.io/pci-10de.present": None}}}
    )

    def cleaned() -> bool:
        node_labels = labels(admin, "op-l4-0")
        deploy = [k for k in node_labels if k.startswith("nvidia.com/gpu.deploy.")]
        pods = [p for p in operand_pods(admin) if p["spec"].get("nodeName") == "op-l4-0"]
        return node_labels.get("nvidia.com/gpu.present") == "false" and not deploy and not pods

    wait_for(cleaned, WAIT, message="op-l4-0 without GPU labels and operand pods")
    wait_ready(admin, operator)


def node_gpus(admin: Kube, node: str) -> str | None:
    obj = admin.get("Node", node)
    assert obj is not None
    return (obj.get("status", {}).get("allocatable") or {}).get("nvidia.com/gpu")


def test_second_policy_is_ignored_and_first_keeps_working(admin: Kube, operator: OperatorProcess) -> None:
    admin.create(policy_from_sample("second-policy"))
    second = wait_for(
        lambda: (obj := policy(admin, "second-policy")).get("status", {}).get("state") == "ignored" and obj,
        WAIT,
        message="second-policy ignored",
    )
    ready = {c["type"]: c for c in second["status"]["conditions"]}["Ready"]
    assert ready["status"] == "False" and "cluster-policy" in ready["message"]
    # The first keeps working (waited for: a late DaemonSet status from the previous test can flip it briefly).
    assert wait_ready(admin, operator)["status"]["state"] == "ready"

    # Deleting the active one hands over to the other, and back: the DaemonSets stay (same uid; the garbage
    # collector would delete one whose only owner went before the next policy owned it), now owned by the next.
    def ours() -> dict[str, dict[str, Any]]:
        found = admin.list("DaemonSet", NAMESPACE, label_selector="app.kubernetes.io/managed-by=gpu-operator")
        return {d["metadata"]["name"]: d for d in found}

    def hand_over(gone: str, to: str) -> None:
        before = {name: d["metadata"]["uid"] for name, d in ours().items()}
        assert ENABLED_DAEMONSETS <= set(before)
        admin.delete("ClusterPolicy", gone)
        wait_for(lambda: admin.get("ClusterPolicy", gone) is None, WAIT, message=f"{gone} deleted")
        wait_ready(admin, operator, to)
        after = ours()
        assert {name: d["metadata"]["uid"] for name, d in after.items()} == before, f"DaemonSets replaced: {to}"
        assert all([r["name"] for r in d["metadata"].get("ownerReferences") or []] == [to] for d in after.values())

    hand_over("cluster-policy", "second-policy")
    admin.create(policy_from_sample())
    try:
        wait_for(lambda: policy(admin).get("status", {}).get("state") == "ignored", WAIT,
                 message="cluster-policy ignored")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\npolicy: {policy(admin)}\nsecond: {policy(admin, 'second-policy')}\n"
                             f"operator log:\n{operator.log_tail(60)}") from None
    hand_over("second-policy", "cluster-policy")


def test_invalid_spec_the_schema_admits_is_reported_in_the_status(admin: Kube, operator: OperatorProcess) -> None:
    before = daemonsets(admin)["nvidia-container-toolkit-daemonset"]["metadata"]["resourceVersion"]
    patch_spec(admin, {"toolkit": {"repository": "registry.local/nvidia"}})  # without image and version

    def reported() -> dict[str, Any] | None:
        obj = policy(admin)
        ready = {c["type"]: c for c in obj.get("status", {}).get("conditions") or []}.get("Ready", {})
        return ready if ready.get("reason") == "InvalidSpec" else None

    ready = wait_for(reported, WAIT, message="InvalidSpec condition")
    assert ready["status"] == "False" and "spec.toolkit" in ready["message"] and "version" in ready["message"]
    assert policy(admin)["status"]["state"] == "notReady"
    assert daemonsets(admin)["nvidia-container-toolkit-daemonset"]["metadata"]["resourceVersion"] == before
    patch_spec(admin, {"toolkit": {"repository": None}})
    wait_ready(admin, operator)


def test_fields_set_but_not_supported_are_reported_in_the_status(admin: Kube, operator: OperatorProcess) -> None:
    def fields_condition(status: str) -> dict[str, Any] | None:
        obj = policy(admin)
        conds = {c["type"]: c for c in (obj.get("status") or {}).get("conditions") or []}
        cond = conds.get("UnsupportedFields") or {}
        current = cond.get("observedGeneration") == obj["metadata"]["generation"]
        return cond if current and cond.get("status") == status else None

    wait_for(lambda: fields_condition("False"), WAIT, message="UnsupportedFields False for the sample policy")
    patch_spec(admin, {"psp": {"enabled": True}})  # deprecated upstream: never acted on
    cond = wait_for(lambda: fields_condition("True"), WAIT, message="UnsupportedFields True")
    assert cond["reason"] == "FieldsNotSupported" and "spec.psp.enabled (" in cond["message"]
    assert wait_ready(admin, operator)["status"]["state"] == "ready", "a reported field does not make it notReady"
    patch_spec(admin, {"psp": None})
    wait_for(lambda: fields_condition("False"), WAIT, message="UnsupportedFields False again")


def test_psa_labels_the_operand_namespace(admin: Kube, operator: OperatorProcess) -> None:
    keys = [f"pod-security.kubernetes.io/{mode}" for mode in ("enforce", "audit", "warn")]  # upstream's three

    def labels() -> list[str | None]:
        ns = admin.get("Namespace", NAMESPACE) or {}
        return [(ns.get("metadata", {}).get("labels") or {}).get(k) for k in keys]

    admin.merge_patch("Namespace", NAMESPACE, {"metadata": {"labels": dict.fromkeys(keys)}})  # an earlier module's
    patch_spec(admin, {"psa": {"enabled": True}})
    wait_for(lambda: labels() == ["privileged"] * 3, WAIT, message=f"namespace labels {keys} privileged")
    patch_spec(admin, {"psa": None})
    wait_ready(admin, operator)


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("mig.strategy", "bogus", "spec.mig.strategy"),
        ("driver.upgradePolicy.maxUnavailable", "abc", "spec.driver.upgradePolicy.maxUnavailable"),
        ("driver.upgradePolicy.maxParallelUpgrades", -1, "spec.driver.upgradePolicy.maxParallelUpgrades"),
        ("driver.kernelModuleType", "closed", "spec.driver.kernelModuleType"),
    ],
)
def test_invalid_policy_is_rejected_by_the_api_server(admin: Kube, field: str, value: Any, expected: str) -> None:
    install_crds_and_rbac(admin)
    with pytest.raises(ApiError) as err:
        admin.create(policy_from_sample("invalid-policy", **{field: value}))
    assert err.value.status == 422
    assert expected in err.value.message


SEED_GPU_POD: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "gpu-test"},
    "spec": {
        "containers": [
            {
                "name": "cuda-test",
                "image": "nvidia/cuda:12.1-devel-ubuntu22.04",
                "command": ["nvidia-smi"],
                "resources": {"limits": {"nvidia.com/gpu": 1}},
            }
        ],  # fmt: skip
        "restartPolicy": "Never",
    },
}
# Seed §7.2: the label it selects on is on no node; GFD's key for the model is nvidia.com/gpu.product.
MODEL_LABEL = "gpu.nvidia.com/model"
H100_PRODUCT = PROFILES["h100x8"].product
SEED_AFFINITY_POD: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "h100-training"},
    "spec": {
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {"matchExpressions": [{"key": MODEL_LABEL, "operator": "In", "values": ["H100", "H200"]}]}
                    ]
                }
            }
        },  # fmt: skip
        "containers": [
            {"name": "training", "image": "pytorch/pytorch:latest", "resources": {"limits": {"nvidia.com/gpu": 8}}}
        ],  # fmt: skip
    },
}


def test_seed_document_gpu_pods_schedule_on_fitting_nodes(
    cluster: LocalCluster, admin: Kube, operator: OperatorProcess
) -> None:
    """The seed's gpu-test runs on a GPU node, a pod asking more GPUs than any node has stays Pending. Seed §7.2's
    h100-training asks for the node label gpu.nvidia.com/model, which no component writes (GFD writes
    nvidia.com/gpu.product, NFD feature.node.kubernetes.io/*): it stays Pending, as on a real cluster, doctor names
    the label and GFD's key, and the same pod keyed on GFD's product name runs on an H100 node. The fake nodes used to
    carry gpu.nvidia.com/model, so the seed's pod ran here though it waits on a real cluster."""
    wait_ready(admin, operator)
    carried = {n: labels(admin, n)[MODEL_LABEL] for n in GPU_NODES if MODEL_LABEL in labels(admin, n)}
    assert not carried, f"GPU nodes carry {MODEL_LABEL}, which no component of a real cluster writes: {carried}"
    ns = "seed-workloads"
    create_namespace(E2EKube(admin.client), ns)
    # More GPUs than any node advertises, also nodes other modules left shared (time-sliced or MIG single: 56).
    container = {**SEED_GPU_POD["spec"]["containers"][0], "resources": {"limits": {"nvidia.com/gpu": 4096}}}
    too_big = {
        **SEED_GPU_POD,
        "metadata": {"name": "too-big"},
        "spec": {**SEED_GPU_POD["spec"], "containers": [container]},
    }
    gfd = copy.deepcopy(SEED_AFFINITY_POD)
    gfd["metadata"]["name"] = "h100-training-gfd"
    [term] = gfd["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"]  # fmt: skip
    term["matchExpressions"] = [{"key": "nvidia.com/gpu.product", "operator": "In", "values": [H100_PRODUCT]}]
    for pod in (SEED_GPU_POD, SEED_AFFINITY_POD, gfd, too_big):
        admin.create({**pod, "metadata": {**pod["metadata"], "namespace": ns}})

    def running(name: str) -> dict[str, Any] | None:
        pod = admin.get("Pod", name, ns)
        return pod if pod and pod["status"].get("phase") in ("Running", "Succeeded") else None

    gpu_pod = wait_for(lambda: running("gpu-test"), WAIT, message="gpu-test running")
    gfd_pod = wait_for(lambda: running("h100-training-gfd"), WAIT, message="h100-training-gfd running")
    gpu_node = admin.get("Node", gpu_pod["spec"]["nodeName"])
    h100_node = admin.get("Node", gfd_pod["spec"]["nodeName"])
    assert gpu_node and int(gpu_node["status"]["allocatable"]["nvidia.com/gpu"]) >= 1
    assert h100_node and h100_node["metadata"]["labels"]["nvidia.com/gpu.product"] == H100_PRODUCT

    def unschedulable(name: str, cause: str) -> bool:
        pod = admin.get("Pod", name, ns)
        cond = {c["type"]: c for c in (pod or {}).get("status", {}).get("conditions") or []}.get("PodScheduled", {})
        return cond.get("status") == "False" and cause in cond.get("message", "")

    wait_for(lambda: unschedulable("too-big", "nvidia.com/gpu"), WAIT,
             message="too-big pod reported unschedulable for nvidia.com/gpu")  # fmt: skip
    wait_for(lambda: unschedulable("h100-training", "didn't match Pod's node affinity/selector"), WAIT,
             message="h100-training reported unschedulable for its node affinity")  # fmt: skip
    time.sleep(2)
    for name in ("too-big", "h100-training"):
        still = admin.get("Pod", name, ns)
        assert still and still["status"]["phase"] == "Pending" and not still["spec"].get("nodeName"), still
    f = finding(cluster.kubeconfig, "NoNodeMatchesAffinity", "-n", ns, "--pod", "h100-training")
    assert f"no node has the label {MODEL_LABEL}" in f["summary"] and "nvidia.com/gpu.product" in f["fix"], f
    admin.delete("Namespace", ns)


PRIORITY_CLASSES = "/apis/scheduling.k8s.io/v1/priorityclasses"
# Seed §7.3, word for word.
SEED_PRIORITY_CLASSES: list[dict[str, Any]] = [
    {"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass", "metadata": {"name": "high-priority-training"},
     "value": 1000, "globalDefault": False, "description": "High priority for production ML training"},
    {"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass", "metadata": {"name": "low-priority-experiments"},
     "value": 100, "globalDefault": False, "description": "Low priority for research experiments"},
]  # fmt: skip
SEED_PRODUCTION_POD: dict[str, Any] = {
    "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "production-training"},
    "spec": {"priorityClassName": "high-priority-training",
             "containers": [{"name": "trainer", "image": "pytorch/pytorch:latest",
                             "resources": {"limits": {"nvidia.com/gpu": 4}}}]},
}  # fmt: skip


def test_seed_priority_classes_let_production_training_preempt_experiments(
    admin: Kube, operator: OperatorProcess, namespace: str
) -> None:
    """Seed §7.3 "Priority Classes for Workload Management": its two PriorityClasses and its production-training pod
    (high-priority-training, nvidia.com/gpu: 4), word for word. With an H100 node's eight GPUs all held by one-GPU
    experiments (low-priority-experiments), the real kube-scheduler preempts as few as make room: four experiments
    are deleted (each with the scheduler's Preempted event naming the node), the other four keep running, and
    production-training runs on the node. The seed's pod has no node selector; the test adds nodeSelector
    kubernetes.io/hostname (to the experiments as well), or the other nodes' free GPUs would spare the scheduler
    preempting anything. The operand pods on the node (system-node-critical) hold no nvidia.com/gpu: never victims."""
    wait_ready(admin, operator)
    node = "op-h100-0"
    selector = {"kubernetes.io/hostname": node}

    def gpu_limits_on_node() -> list[dict[str, Any]]:
        pods = admin.list("Pod", field_selector=f"spec.nodeName={node}")
        live = [p for p in pods if (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")]
        limits = [(c.get("resources") or {}).get("limits") or {} for p in live for c in p["spec"]["containers"]]
        return [lim for lim in limits if "nvidia.com/gpu" in lim]

    # The previous test's pods (its namespace deleted without waiting) may still hold the node's GPUs.
    wait_for(lambda: not gpu_limits_on_node(), WAIT, message=f"no GPU pods left on {node}")
    wait_for(lambda: node_gpus(admin, node) == "8", WAIT, message=f"{node} advertising 8 GPUs")
    created = []
    try:
        for pc in SEED_PRIORITY_CLASSES:
            try:
                admin.request("POST", PRIORITY_CLASSES, pc)
                created.append(pc["metadata"]["name"])
            except ApiError as exc:  # left by an interrupted run: the same class (its value cannot be changed)
                if exc.status != 409:
                    raise

        experiments = [f"experiment-{i}" for i in range(8)]
        for name in experiments:
            admin.create({
                "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace},
                "spec": {"priorityClassName": "low-priority-experiments", "nodeSelector": selector,
                         "containers": [{"name": "trainer", "image": "pytorch/pytorch:latest",
                                         "resources": {"limits": {"nvidia.com/gpu": 1}}}]},
            })  # fmt: skip

        def phases() -> dict[str, str]:
            return {p["metadata"]["name"]: (p.get("status") or {}).get("phase", "")
                    for p in admin.list("Pod", namespace) if not p["metadata"].get("deletionTimestamp")}  # fmt: skip

        wait_for(lambda: phases() == dict.fromkeys(experiments, "Running"), WAIT, message="8 experiments running")
        pods = admin.list("Pod", namespace)
        assert {p["spec"]["nodeName"] for p in pods} == {node} and {p["spec"]["priority"] for p in pods} == {100}

        production = json.loads(json.dumps(SEED_PRODUCTION_POD))
        production["metadata"]["namespace"] = namespace
        production["spec"]["nodeSelector"] = selector
        admin.create(production)

        def production_running() -> dict[str, Any] | None:
            p = admin.get("Pod", "production-training", namespace)
            return p if p and (p.get("status") or {}).get("phase") == "Running" else None

        got = wait_for(production_running, WAIT, message="production-training running")
        assert got["spec"]["nodeName"] == node and got["spec"]["priority"] == 1000

        left = phases()
        survivors = {n for n in experiments if left.get(n) == "Running"}
        preempted = set(experiments) - set(left)
        assert len(survivors) == 4 and len(preempted) == 4, left

        def preempted_events() -> set[str] | None:
            events = [e for e in admin.list("Event", namespace) if e.get("reason") == "Preempted"]
            assert all(node in e.get("message", "") for e in events), events
            names = {e["involvedObject"]["name"] for e in events}
            return names if names >= preempted else None

        assert wait_for(preempted_events, 30, message="the scheduler's Preempted events") == preempted
    finally:
        for p in admin.list("Pod", namespace):
            admin.delete("Pod", p["metadata"]["name"], namespace, {"gracePeriodSeconds": 0})
        wait_for(lambda: not admin.list("Pod", namespace), WAIT, message="the test's pods gone")
        for name in created:
            admin.request("DELETE", f"{PRIORITY_CLASSES}/{name}")


def test_steady_state_makes_no_writes(admin: Kube, operator: OperatorProcess, cluster: LocalCluster) -> None:
    wait_ready(admin, operator)

    def quiet() -> bool:  # the operator's last write is a few seconds old: its last pass has settled
        writes = cluster.writes(operator.username)
        return not writes or time.time() - max(audit_time(e) for e in writes) >= 3

    wait_for(quiet, 60, interval=0.5, message="the operator's writes to settle")
    wait_ready(admin, operator)
    start = time.time()
    time.sleep(60)
    seen = [f"{e['verb']} {e.get('requestURI')}" for e in cluster.writes(operator.username, since=start)]
    assert not seen, f"operator wrote in steady state: {seen}"
    # The operator did write before (so the identity filter is right).
    assert cluster.writes(operator.username)
