"""doctor's analysis (pure): each catalogue entry from objects as the API shows them."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from gpu_operator import capacity, mig
from gpu_operator.doctor import Cluster, Evidence, diagnose, exit_status, render_json, render_prometheus, render_text
from gpu_operator.doctor.model import DaemonPods
from gpu_operator.doctor.sched import gpu_requests, nodes_with_pods, pod_requests, quantity, selector_ok
from gpu_operator.nodes import NodeFacts
from gpu_operator.observe import Snapshot

NS = "gpu-operator"
H100 = "NVIDIA-H100-80GB-HBM3"
H200 = "NVIDIA-H200"
A100 = "NVIDIA-A100-SXM4-80GB"


def node(name: str, gpus: int = 8, product: str = H100, driver: str = "595.91.07", **extra: Any) -> dict[str, Any]:
    labels = {
        "kubernetes.io/hostname": name,
        "feature.node.kubernetes.io/pci-10de.present": "true",
        "nvidia.com/gpu.present": "true",
        "nvidia.com/gpu.product": product,
        "nvidia.com/gpu.count": str(gpus),
        "nvidia.com/gpu.replicas": "1",
        "nvidia.com/mig.capable": "true",
        "nvidia.com/mig.strategy": "single",
        "nvidia.com/cuda.driver.major": driver.split(".")[0],
        "nvidia.com/cuda.driver.minor": driver.split(".")[1],
        "nvidia.com/cuda.driver.rev": driver.split(".")[2],
        **extra.pop("labels", {}),
    }
    res = {"cpu": "96", "memory": "2048Gi", "pods": "110", "nvidia.com/gpu": str(gpus)}
    alloc = {**res, **extra.pop("allocatable", {})}
    return {
        "kind": "Node",
        "metadata": {"name": name, "labels": labels},
        "spec": extra.pop("spec", {}),
        "status": {"capacity": res, "allocatable": alloc, "conditions": [{"type": "Ready", "status": "True"}]},
    }


def pod(name: str, gpus: int = 0, ns: str = "default", node_name: str = "", image: str = "busybox", **spec: Any):
    limits = {"nvidia.com/gpu": str(gpus)} if gpus else {}
    resource = spec.pop("resource", None)
    if resource:
        limits = {resource: "1"}
    container = {"name": "main", "image": image, "resources": {"limits": {**limits, **spec.pop("limits", {})}}}
    if "env" in spec:
        container["env"] = spec.pop("env")
    status = spec.pop("status", None) or ({"phase": "Running"} if node_name else {"phase": "Pending"})
    body = {"containers": [container], **spec}
    if node_name:
        body["nodeName"] = node_name
    return {"kind": "Pod", "metadata": {"name": name, "namespace": ns, "labels": {"app": name}}, "spec": body,
            "status": status}  # fmt: skip


def cluster(nodes: list[dict[str, Any]], pods: list[dict[str, Any]], events: list[dict[str, Any]] | None = None,
            policy_status: dict[str, Any] | None = None, policy: bool = True) -> Cluster:  # fmt: skip
    policies = {}
    if policy:
        policies["cluster-policy"] = {
            "metadata": {"name": "cluster-policy", "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {},
            "status": policy_status or {"state": "ready", "states": []},
        }
    snap = Snapshot(
        nodes={n["metadata"]["name"]: NodeFacts.from_node(n) for n in nodes},
        policies=policies, owned={}, pods={}, revisions={},
    )  # fmt: skip
    return Cluster(snap, nodes, pods, events or [], NS)


def kinds(c: Cluster, **kw: Any) -> dict[str, Any]:
    return {f.kind: f for f in diagnose(c, **kw)}


class FakeKube:
    """Stands for the API server in the commands' tests: lists of Nodes and Pods, no other object."""

    def __init__(self, nodes: list[dict[str, Any]] | None = None, pods: list[dict[str, Any]] | None = None):
        self.objects = {"Node": nodes or [], "Pod": pods or []}

    def list(self, kind: str, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        return list(self.objects.get(kind, []))

    def get(self, *args: Any, **kwargs: Any) -> None:
        return None


def test_healthy_cluster_has_no_findings() -> None:
    train = pod("train", 2, node_name="h-0", image="nvcr.io/nvidia/pytorch:25.01-py3")
    c = cluster([node("h-0"), node("h-1")], [train])
    found = diagnose(c)
    assert found == [] and exit_status(found) == 0
    assert "no findings" in render_text(found)
    assert json.loads(render_json(found)) == {"status": 0, "findings": []}


def test_broken_pytorch_gets_a_gpu_limit_in_the_corrected_pod() -> None:
    broken = pod("broken-pytorch", image="pytorch/pytorch:2.1.0-cuda12.1-cudnn8-devel", node_name="h-0",
                 limits={"memory": "4Gi", "cpu": "2"})  # fmt: skip
    f = kinds(cluster([node("h-0")], [broken]))["CUDAImageWithoutGPU"]
    assert f.severity == "warning" and f.object == "Pod default/broken-pytorch"
    assert "nvidia.com/gpu: 1" in f.fix_yaml and "memory: 4Gi" in f.fix_yaml and "nodeName" not in f.fix_yaml
    assert exit_status([f]) == 1
    agent = pod("agent", image="nvcr.io/nvidia/cuda:12.8.0-base", node_name="h-0",
                env=[{"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"}])  # fmt: skip
    assert diagnose(cluster([node("h-0")], [agent])) == []


def with_spec(c: Cluster, spec: dict[str, Any]) -> Cluster:
    c.snapshot.policies["cluster-policy"]["spec"] = spec
    return c


def test_broken_pytorch_run_by_the_nvidia_runtime_is_told_it_sees_every_gpu_of_the_node() -> None:
    """Seed Exercise 2's broken-pytorch was always said to see no GPU ("CUDA finds no device, torch.cuda.is_available()
    is False"). That holds when runc runs it (CDI on, no runtime class: the default). When the nvidia runtime runs it,
    the runtime gives the container the GPUs its image's NVIDIA_VISIBLE_DEVICES names (pytorch/pytorch, nvidia/cuda and
    NGC set `all`; accept-nvidia-visible-devices-envvar-when-unprivileged defaults to true): every GPU of the node,
    outside the device plugin's count, GPUs the scheduler gives to other pods. The toolkit's installer makes nvidia the
    default runtime unless NVIDIA_RUNTIME_SET_AS_DEFAULT is false, which the operator sets with CDI only (as upstream's
    transformToolkitCtrForCDI); a pod may also name one of the nvidia RuntimeClasses."""
    image = "pytorch/pytorch:2.1.0-cuda12.1-cudnn8-devel"

    def broken(**spec: Any) -> dict[str, Any]:
        return pod("broken-pytorch", image=image, node_name="h-0", limits={"memory": "4Gi", "cpu": "2"}, **spec)

    train = pod("train", 8, node_name="h-0")
    set_as_default = {"toolkit": {"env": [{"name": "NVIDIA_RUNTIME_SET_AS_DEFAULT", "value": "true"}]}}
    for c in (with_spec(cluster([node("h-0")], [broken(), train]), {"cdi": {"enabled": False}}),
              with_spec(cluster([node("h-0")], [broken(), train]), set_as_default),
              cluster([node("h-0")], [broken(runtimeClassName="nvidia"), train])):  # fmt: skip
        f = kinds(c)["CUDAImageWithoutGPU"]
        assert f.severity == "warning" and "nvidia.com/gpu: 1" in f.fix_yaml, f
        assert "finds no device" not in f.summary and "is False" not in f.summary, f.summary
        assert "NVIDIA_VISIBLE_DEVICES" in f.summary and "every GPU of h-0" in f.summary, f.summary
        assert "default/train" in f.summary, f.summary
    # runc (CDI on, no runtime class), or a runtime that ignores an unprivileged container's variable: no GPU.
    ignored = [{"name": "ACCEPT_NVIDIA_VISIBLE_DEVICES_ENVVAR_WHEN_UNPRIVILEGED", "value": "false"}]
    accept = {"cdi": {"enabled": False}, "toolkit": {"env": ignored}}
    for c in (cluster([node("h-0")], [broken(), train]), with_spec(cluster([node("h-0")], [broken(), train]), accept)):
        f = kinds(c)["CUDAImageWithoutGPU"]
        assert "torch.cuda.is_available() is False" in f.summary and "nvidia.com/gpu: 1" in f.fix_yaml


def test_a_pod_of_another_runtime_class_is_not_said_to_be_run_by_the_nvidia_runtime() -> None:
    """The default runtime (containerd's default_runtime_name) runs only the pods that name no RuntimeClass; a pod
    naming another class (kata, gVisor, a class whose handler is runc) is run by that class's handler and gets no
    GPU from NVIDIA_VISIBLE_DEVICES. With nvidia the default (cdi.enabled false) doctor said so whatever the pod's
    runtimeClassName: CUDAImageWithoutGPU told such a pod it sees every GPU of its node, and
    CUDAOOMSharedOutsideDevicePlugin blamed it for another pod's OOM. Now only a pod that names no class, or an
    nvidia one, counts as run by the nvidia runtime."""
    image = "pytorch/pytorch:2.1.0-cuda12.1-cudnn8-devel"
    sandboxed = pod("sandboxed-notebook", image=image, node_name="h-0", runtimeClassName="kata-qemu")
    f = kinds(with_spec(cluster([node("h-0")], [sandboxed]), {"cdi": {"enabled": False}}))["CUDAImageWithoutGPU"]
    assert "nvidia runtime runs it" not in f.summary and "every GPU of h-0" not in f.summary, f.summary
    oom = "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.11 GiB total capacity)"
    training = pod("exclusive-training", 1, node_name="h-0", image=image, status={
        "phase": "Running", "containerStatuses": [{
            "name": "main", "restartCount": 1, "state": {"waiting": {"reason": "CrashLoopBackOff"}},
            "lastState": {"terminated": {"exitCode": 1, "message": oom}}}]})  # fmt: skip
    found = kinds(with_spec(cluster([node("h-0")], [training, sandboxed]), {"cdi": {"enabled": False}}))
    assert "CUDAOOMSharedOutsideDevicePlugin" not in found, found["CUDAOOMSharedOutsideDevicePlugin"].summary
    # Naming the nvidia class still counts.
    sandboxed["spec"]["runtimeClassName"] = "nvidia"
    found = kinds(with_spec(cluster([node("h-0")], [training, sandboxed]), {"cdi": {"enabled": False}}))
    assert "default/sandboxed-notebook" in found["CUDAOOMSharedOutsideDevicePlugin"].summary


def test_corrected_pod_keeps_the_users_volumes_mounts_and_tolerations() -> None:
    """The corrected pod used to drop tolerations, serviceAccountName and securityContext as if the API server had
    set them, and every volume (mounts were removed before checking whether any were left): it lost its data and
    /dev/shm, could never land on GPU nodes tainted nvidia.com/gpu, and with an init container mounting a volume
    the API server refused it. Only what the server fills in is left out (REFERENCE §12 entry 6)."""
    toleration = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    added = {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute",
             "tolerationSeconds": 300}  # by the API server
    token = {"name": "kube-api-access-x1", "projected": {"sources": [{"serviceAccountToken": {"path": "token"}}]}}
    broken = pod(
        "broken-pytorch", image="pytorch/pytorch:2.1.0-cuda12.1-cudnn8-devel", node_name="h-0",
        limits={"memory": "4Gi", "cpu": "2"}, tolerations=[toleration, added], serviceAccountName="trainer",
        volumes=[{"name": "data", "persistentVolumeClaim": {"claimName": "datasets"}},
                 {"name": "shm", "emptyDir": {"medium": "Memory"}}, token],
    )  # fmt: skip
    token_mount = {"name": "kube-api-access-x1", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}
    broken["spec"]["containers"][0]["volumeMounts"] = [{"name": "shm", "mountPath": "/dev/shm"}, token_mount]
    broken["spec"]["initContainers"] = [{"name": "fetch", "image": "busybox",
                                         "volumeMounts": [{"name": "data", "mountPath": "/data"}, token_mount]}]
    f = kinds(cluster([node("h-0", spec={"taints": [GPU_TAINT]})], [broken]))["CUDAImageWithoutGPU"]
    spec = yaml.safe_load(f.fix_yaml)["spec"]
    assert [v["name"] for v in spec["volumes"]] == ["data", "shm"], f.fix_yaml
    assert spec["containers"][0]["volumeMounts"] == [{"name": "shm", "mountPath": "/dev/shm"}], f.fix_yaml
    assert spec["initContainers"][0]["volumeMounts"] == [{"name": "data", "mountPath": "/data"}], f.fix_yaml
    assert spec["tolerations"] == [toleration] and spec["serviceAccountName"] == "trainer", f.fix_yaml


def test_corrected_pod_keeps_the_users_labels_and_annotations() -> None:
    """The corrected pod's metadata had the name and namespace only: the pod's labels (what Services and other
    selectors find it by) and annotations were lost. They are kept now, less what the system wrote: the
    ReplicaSet's pod-template-hash (a bare pod carrying it could be adopted by that ReplicaSet) and kubectl's
    last-applied-configuration (the old, GPU-less pod)."""
    broken = pod("broken-pytorch", image="pytorch/pytorch:2.1.0-cuda12.1-cudnn8-devel", node_name="h-0", ns="team-a")
    broken["metadata"]["labels"] = {"app": "trainer", "tier": "gpu", "pod-template-hash": "7d9f8c"}
    broken["metadata"]["annotations"] = {"prometheus.io/scrape": "true",
                                         "kubectl.kubernetes.io/last-applied-configuration": "{}"}  # fmt: skip
    meta = yaml.safe_load(kinds(cluster([node("h-0")], [broken]))["CUDAImageWithoutGPU"].fix_yaml)["metadata"]
    assert meta == {"name": "broken-pytorch", "namespace": "team-a", "labels": {"app": "trainer", "tier": "gpu"},
                    "annotations": {"prometheus.io/scrape": "true"}}  # fmt: skip
    bare = pod("bare", image="pytorch/pytorch:2.1.0-cuda12.1-cudnn8-devel", node_name="h-0")
    bare["metadata"].pop("labels")
    meta = yaml.safe_load(kinds(cluster([node("h-0")], [bare]))["CUDAImageWithoutGPU"].fix_yaml)["metadata"]
    assert meta == {"name": "bare"}


def test_corrected_pod_of_a_controller_leaves_out_its_labels() -> None:
    """The corrected pod of a pod a controller made kept the user's labels: a ReplicaSet without a Deployment or a
    DaemonSet, whose selector is made of them alone, would adopt the bare pod once applied (and may delete a
    surplus pod). Its labels are left out now, and the fix points at the template the pod was made from."""
    made = pod("agent-x7k2p", image="nvidia/cuda:12.4.1-base-ubuntu22.04", node_name="h-0")
    made["metadata"]["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "agent",
                                            "controller": True}]  # fmt: skip
    made["metadata"]["annotations"] = {"prometheus.io/scrape": "true"}
    found = kinds(cluster([node("h-0")], [made]))["CUDAImageWithoutGPU"]
    meta = yaml.safe_load(found.fix_yaml)["metadata"]
    assert meta == {"name": "agent-x7k2p", "annotations": {"prometheus.io/scrape": "true"}}, meta
    assert "DaemonSet agent made the pod: add the limit to the pod template" in found.fix


def test_findings_counted_by_kind_in_prometheus_format() -> None:
    from prometheus_client.parser import text_string_to_metric_families

    broken = pod("broken-pytorch", image="pytorch/pytorch:2.1.0-cuda12.1-cudnn8-devel", node_name="h-0")
    found = diagnose(cluster([node("h-0"), node("h-1")], [broken, pod("big", 64)]))
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(render_prometheus(found)) for s in fam.samples
    }  # fmt: skip
    findings = "gpu_operator_doctor_findings"
    assert samples[(findings, (("kind", "CUDAImageWithoutGPU"), ("severity", "warning")))] == 1
    assert samples[(findings, (("kind", "GPURequestExceedsEveryNode"), ("severity", "error")))] == 1
    assert samples[("gpu_operator_doctor_status", ())] == 2
    healthy = render_prometheus([])
    assert "gpu_operator_doctor_status 0.0" in healthy and "gpu_operator_doctor_findings{" not in healthy


def test_64_gpu_pod_names_the_largest_node_and_what_fits_now() -> None:
    c = cluster([node("h-0"), node("h-1")], [pod("big", 64), pod("run", 3, node_name="h-0")])
    f = kinds(c)["GPURequestExceedsEveryNode"]
    assert f.severity == "error" and "largest eligible node has 8" in f.summary
    assert "nvidia.com/gpu: 8" in f.fix  # h-1 is empty
    assert any(row.startswith("h-0") and row.split()[-1] == "5" for row in f.details)


def test_fragmentation_and_insufficient() -> None:
    nodes = [node("h-0"), node("h-1")]
    frag = cluster(nodes, [pod("a", 5, node_name="h-0"), pod("b", 5, node_name="h-1"), pod("want", 4)])
    f = kinds(frag)["GPUFragmentation"]
    assert "6" in f.summary and "nvidia.com/gpu: 3" in f.fix
    full = cluster(nodes, [pod("a", 8, node_name="h-0"), pod("b", 7, node_name="h-1"), pod("want", 2)])
    assert "InsufficientGPU" in kinds(full)


def test_affinity_to_a_product_with_the_shared_suffix() -> None:
    shared = node("h-0", product=H100 + "-SHARED")
    sel = {"nodeSelector": {"nvidia.com/gpu.product": H100}}
    f = kinds(cluster([shared], [pod("p", 1, **sel)]))["NoNodeMatchesAffinity"]
    assert H100 + "-SHARED" in f.fix_yaml and "-SHARED" in f.summary
    model = {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "nvidia.com/gpu.product", "operator": "In", "values": ["NVIDIA-B200"]}]}]}}}}
    f = kinds(cluster([node("h-0")], [pod("p", 1, **model)]))["NoNodeMatchesAffinity"]
    assert "NVIDIA-B200" in f.summary and H100 in f.summary



def applied(p: dict[str, Any], fix_yaml: str) -> dict[str, Any]:
    """The pod with the corrected YAML's spec fields in place of its own (as a user would edit them in)."""
    fixed = json.loads(json.dumps(p))
    fixed["spec"].update(yaml.safe_load(fix_yaml)["spec"])
    return fixed


@pytest.mark.parametrize(
    "nodes",
    [[node("h-0", product=H100 + "-SHARED")],  # one value nodes carry: the nodeSelector gets it
     [node("h-0", product=H100 + "-SHARED"), node("h-1", product=H100 + "-MIG-1g.10gb")]],  # two: the affinity
    ids=["one-value", "two-values"],
)  # fmt: skip
def test_corrected_yaml_for_a_node_selector_matching_no_node_schedules_the_pod(nodes: list[dict[str, Any]]) -> None:
    """The scheduler ANDs nodeSelector and affinity: an affinity beside the old nodeSelector matched no node."""
    zone = {"topology.kubernetes.io/zone": "a"}
    for n in nodes:
        n["metadata"]["labels"].update(zone)
    wanted = pod("p", 1, nodeSelector={"nvidia.com/gpu.product": H100, **zone})
    f = kinds(cluster(nodes, [wanted]))["NoNodeMatchesAffinity"]
    fixed = applied(wanted, f.fix_yaml)
    assert fixed["spec"]["nodeSelector"] == (
        {"nvidia.com/gpu.product": H100 + "-SHARED", **zone} if len(nodes) == 1 else zone
    ), f.fix_yaml
    assert "NoNodeMatchesAffinity" not in kinds(cluster(nodes, [fixed])), f.fix_yaml


def test_affinity_fix_keeps_the_terms_other_requirements_and_pod_anti_affinity() -> None:
    """The corrected affinity used to be one term with only the corrected keys: the term's zone requirement, other
    terms, preferences and the pod anti-affinity (seed Exercise 3's spread) were lost. Only the wrong values are
    replaced now (REFERENCE §12 entry 15)."""
    anti = {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": {"app": "p"}}}]}  # fmt: skip
    zone = {"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["a"]}
    product = {"key": "nvidia.com/gpu.product", "operator": "In", "values": [H100]}
    affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [product, zone]}]}}, "podAntiAffinity": anti}  # fmt: skip
    nodes = [node("h-a", product=H100 + "-SHARED", labels={"topology.kubernetes.io/zone": "a"}),
             node("h-b", product=H100 + "-SHARED", labels={"topology.kubernetes.io/zone": "b"})]  # fmt: skip
    p = pod("p", 1, affinity=affinity)
    f = kinds(cluster(nodes, [p]))["NoNodeMatchesAffinity"]
    fixed = applied(p, f.fix_yaml)
    assert fixed["spec"]["affinity"]["podAntiAffinity"] == anti, f.fix_yaml
    [term] = fixed["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"]  # fmt: skip
    assert term["matchExpressions"] == [{**product, "values": [H100 + "-SHARED"]}, zone], f.fix_yaml
    assert selector_ok(fixed, nodes[0]["metadata"]["labels"], "h-a")
    assert not selector_ok(fixed, nodes[1]["metadata"]["labels"], "h-b")


def test_affinity_fix_keeps_to_the_gpu_models_the_pod_asked_for() -> None:
    """Seed §7.2 asks for the short names H100 and H200. The corrected affinity replaced values that match no node
    with every product any node carries: on H100 and L4 nodes it sent the 8-GPU H100/H200 job to the L4 node too.
    A value is now replaced only by the products it names (H100 -> NVIDIA-H100-80GB-HBM3); a model no node has gets
    no corrected values (REFERENCE §12 entry 15)."""
    nodes = [node("h-0"), node("l4", product="NVIDIA-L4")]
    product = {"key": "nvidia.com/gpu.product", "operator": "In", "values": ["H100", "H200"]}
    affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [product]}]}}}  # fmt: skip
    p = pod("h100-training", 8, affinity=affinity)
    f = kinds(cluster(nodes, [p]))["NoNodeMatchesAffinity"]
    fixed = applied(p, f.fix_yaml)
    [term] = fixed["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"]  # fmt: skip
    assert term["matchExpressions"] == [{**product, "values": [H100]}], f.fix_yaml
    assert selector_ok(fixed, nodes[0]["metadata"]["labels"], "h-0")
    assert not selector_ok(fixed, nodes[1]["metadata"]["labels"], "l4")
    selected = pod("l4-inference", 1, nodeSelector={"nvidia.com/gpu.product": "l4"})
    f = kinds(cluster(nodes, [selected]))["NoNodeMatchesAffinity"]
    assert yaml.safe_load(f.fix_yaml) == {"spec": {"nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-L4"}}}
    # No node has the model: the values nodes carry are named, none is put in the pod.
    product["values"] = ["NVIDIA-B200"]
    f = kinds(cluster(nodes, [pod("b200", 8, affinity=affinity)]))["NoNodeMatchesAffinity"]
    assert f.fix_yaml == "" and f"nodes have {H100}, NVIDIA-L4" in f.summary


def test_scheduler_model_reads_node_selector_terms_as_kubernetes_does() -> None:
    def required(*terms: dict[str, Any]) -> dict[str, Any]:
        affinity = {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": list(terms)}}
        return {"spec": {"affinity": {"nodeAffinity": affinity}}}

    labels = {"nvidia.com/gpu.present": "true"}
    present = {"matchExpressions": [{"key": "nvidia.com/gpu.present", "operator": "In", "values": ["true"]}]}
    by_name = {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["h-0"]}]}
    assert selector_ok(required(present), labels, "h-0")
    assert not selector_ok(required({}), labels, "h-0")  # an empty term matches no node
    assert selector_ok(required({}, present), labels, "h-0")  # terms are ORed
    assert selector_ok(required(by_name), {}, "h-0") and not selector_ok(required(by_name), labels, "h-1")
    assert not selector_ok(required({**present, **by_name}), {}, "h-0")  # requirements in a term are ANDed
    # The scheduler's reading is what doctor's pending-pod analysis sees: a pod pinned by name to a node that
    # does not exist matches none.
    f = kinds(cluster([node("h-0")], [pod("p", 1, **required(by_name)["spec"])]))
    assert "NoNodeMatchesAffinity" not in f
    f = kinds(cluster([node("h-1")], [pod("p", 1, **required(by_name)["spec"])]))
    assert "NoNodeMatchesAffinity" in f
    assert "metadata.name wants h-0: no node has that name" in f["NoNodeMatchesAffinity"].summary
    f = kinds(cluster([node("h-0")], [pod("p", 1, **required({})["spec"])]))
    assert "term with no requirements matches no node" in f["NoNodeMatchesAffinity"].summary


def test_untolerated_taint_gives_the_toleration() -> None:
    tainted = node("h-0", spec={"taints": [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]})
    f = kinds(cluster([tainted], [pod("p", 1)]))["UntoleratedTaint"]
    assert "key: nvidia.com/gpu" in f.fix_yaml and "value: present" in f.fix_yaml
    tolerated = pod("p", 1, tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists"}])
    assert diagnose(cluster([tainted], [tolerated])) == []


def test_taint_fix_keeps_the_tolerations_the_pod_already_has() -> None:
    """The corrected YAML's spec.tolerations used to hold only the missing toleration: edited in, it dropped the
    ones the pod had, and a pod tolerating dedicated=ml on nodes tainted dedicated=ml and nvidia.com/gpu stayed
    Pending. It is the whole corrected list, as the nodeSelector fix is (REFERENCE §12 entry 14)."""
    dedicated = {"key": "dedicated", "value": "ml", "effect": "NoSchedule"}
    n = node("h-0", spec={"taints": [GPU_TAINT, dedicated]})
    p = pod("p", 1, tolerations=[{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}])
    f = kinds(cluster([n], [p]))["UntoleratedTaint"]
    assert diagnose(cluster([n], [applied(p, f.fix_yaml)])) == [], f.fix_yaml


def test_mig_resource_under_single_strategy() -> None:
    f = kinds(cluster([node("h-0")], [pod("p", resource="nvidia.com/mig-1g.10gb")]))["MIGResourceNotAdvertised"]
    assert "mixed" in f.fix and "single" in f.summary and "-MIG-1g.10gb" in f.fix


def mixed_node(name: str, layout: str) -> dict[str, Any]:
    """An 8 x H100 node with the MIG strategy mixed and `layout` applied: what the device plugin advertises."""
    gpu = mig.gpu_of_product(H100)
    entries = mig.layout_entries(gpu, layout) if gpu else None
    assert entries is not None, layout
    advertised = {k: str(v) for k, v in mig.advertised(entries, 8, "mixed").items()}
    n = node(name, labels={"nvidia.com/mig.strategy": "mixed", "nvidia.com/mig.config": layout,
                           "nvidia.com/mig.config.state": "success"})  # fmt: skip
    for key in ("allocatable", "capacity"):
        n["status"][key].pop("nvidia.com/gpu")
        n["status"][key].update(advertised)
    return n


def test_a_pod_asking_for_two_mig_profiles_is_checked_for_each() -> None:
    """Seed §5.4 asks for nvidia.com/mig-1g.10gb and nvidia.com/mig-3g.40gb in one container. doctor looked only at
    the largest GPU resource (the first on a tie): on nodes with all-1g.10gb the pod, which needs a 3g.40gb no node
    advertises, was told to lower its CPU or memory request (InsufficientResources). The scheduler checks every
    resource; the first one no node has is the cause (REFERENCE §12 entry 16), whatever the order of the limits."""
    two = {"nvidia.com/mig-1g.10gb": "1", "nvidia.com/mig-3g.40gb": "1"}
    for limits in (two, dict(reversed(two.items()))):
        found = kinds(cluster([mixed_node("h-0", "all-1g.10gb")], [pod("mig", limits=limits)]))
        assert set(found) == {"MIGResourceNotAdvertised"}, {k: f.summary for k, f in found.items()}
        assert "nvidia.com/mig-3g.40gb" in found["MIGResourceNotAdvertised"].summary
    assert diagnose(cluster([mixed_node("h-0", "all-balanced")], [pod("mig", limits=two)])) == []
    # Each profile on a node of its own: no node takes the pod.
    split = [mixed_node("h-0", "all-1g.10gb"), mixed_node("h-1", "all-3g.40gb")]
    f = kinds(cluster(split, [pod("mig", limits=two)]))["GPUResourcesOnDifferentNodes"]
    assert "mig-1g.10gb on h-0; nvidia.com/mig-3g.40gb on h-1" in f.summary and "all-balanced" in f.fix
    # The 3g.40gb devices all taken: a shortage of that profile, not of CPU or memory.
    busy = pod("busy", node_name="h-0", limits={"nvidia.com/mig-3g.40gb": "8"})
    found = kinds(cluster([mixed_node("h-0", "all-balanced")], [busy, pod("mig", limits=two)]))
    assert set(found) == {"InsufficientGPU"} and "nvidia.com/mig-3g.40gb" in found["InsufficientGPU"].summary


def test_mig_profiles_on_different_nodes_name_no_layout_that_lacks_one() -> None:
    """A pod asking nvidia.com/mig-1g.10gb and mig-4g.40gb, each advertised on another node: the fix always said
    "e.g. all-balanced", which on an H100 has no 4g.40gb (1g.10gb x2, 2g.20gb, 3g.40gb: REFERENCE §4), and no layout
    of the MIG table has both. Now the example is worked out as for an unadvertised profile: a layout making every
    profile (all-balanced for 1g.10gb and 3g.40gb, tested above), else a custom one (review seed #3)."""
    p = pod("mig", limits={"nvidia.com/mig-1g.10gb": "1", "nvidia.com/mig-4g.40gb": "1"})
    split = [mixed_node("h-0", "all-1g.10gb"), mixed_node("h-1", "all-4g.40gb")]
    f = kinds(cluster(split, [p]))["GPUResourcesOnDifferentNodes"]
    assert "all-balanced" not in f.fix, f.fix
    assert "add a layout that has 1g.10gb and 4g.40gb on the GPUs of h-0, h-1 to a mig-parted ConfigMap named by " \
        "migManager.config.name (no layout of the default table makes them all there)" in f.fix, f.fix  # fmt: skip
    assert f.fix.endswith(", or split the pod"), f.fix


@pytest.mark.parametrize("strategy", ["mixed", "single"])
def test_mig_fix_names_no_layout_for_a_profile_the_clusters_gpus_lack(strategy: str) -> None:
    """Seed §5.4 asks for nvidia.com/mig-1g.10gb and mig-3g.40gb (H100 profiles); §7.2 puts H200s beside H100s. On
    H200 nodes (141 GB: 1g.18gb, 2g.35gb, 3g.71gb, ...) the fix said to label a node nvidia.com/mig.config=all-1g.10gb
    (and, under single, to select `<model>-MIG-1g.10gb`): no H200 has that profile and no layout of the MIG table
    makes it there, so the node went to mig.config.state=failed and the pod stayed Pending. Doctor now says no GPU
    in the cluster has the profile, lists the profiles its GPUs have, and names no layout."""
    gpu = mig.gpu_of_product(H200)
    assert gpu is not None and "all-1g.10gb" not in mig.valid_layouts(gpu)
    n = node("h200-0", product=H200, labels={"nvidia.com/mig.strategy": strategy})
    p = pod("mig-pair", limits={"nvidia.com/mig-1g.10gb": "1", "nvidia.com/mig-3g.40gb": "1"})
    f = kinds(cluster([n], [p]))["MIGResourceNotAdvertised"]
    assert "mig.config=" not in f.fix and "MIG-1g.10gb" not in f.fix, f.fix
    assert "no GPU in this cluster has a 1g.10gb profile (H200 141GB: 1g.18gb, " in f.summary, f.summary
    assert "request a profile these GPUs have" in f.fix


def test_mig_fix_names_only_the_nodes_whose_gpus_have_the_profile() -> None:
    """Of an H200 node and an H100 node only the H100 can make 1g.10gb devices, yet the fix and the finding's nodes
    named both, so all-1g.10gb could go onto the H200 (where it fails). Now only the H100 node is named."""
    for strategy in ("mixed", "single"):
        labels = {"nvidia.com/mig.strategy": strategy}
        nodes = [node("h200-0", product=H200, labels=labels), node("h100-0", labels=labels)]
        f = kinds(cluster(nodes, [pod("p", resource="nvidia.com/mig-1g.10gb")]))["MIGResourceNotAdvertised"]
        assert "nvidia.com/mig.config=all-1g.10gb on h100-0)" in f.fix and "h200" not in f.fix, f.fix
        assert f.nodes == ("h100-0",)


USER_MIG_CONFIG = """version: v1
mig-configs:
  fours:
    - devices: all
      mig-enabled: true
      mig-devices: {"1g.20gb": 4}
"""


def test_mig_fix_takes_its_layouts_from_the_users_mig_parted_config() -> None:
    """With migManager.config.name naming the user's mig-parted ConfigMap, mig-manager knows only its layouts, yet
    the fix named all-1g.10gb, which it does not have. Now the fix names the user's layout that makes the profile on
    the node's GPU, and says when none does or when mig-manager cannot read the ConfigMap. Without a user's
    ConfigMap named, mig-manager builds all-<profile> for every profile of the GPU, H200 NVL's 1g.35gb too; with the
    default ConfigMap named, a profile that no default layout makes on the GPU (all-1g.35gb leaves the H200 NVL out)
    gets no all-<profile>. The fix once judged both by the default ConfigMap."""

    def fix(config: str | None, resource: str = "nvidia.com/mig-1g.10gb", product: str = H100, name: str = "my-mig"
            ) -> str:  # fmt: skip
        """The fix for a pod asking `resource`; `config`: the user's config.yaml (None: none named; "": not found)."""
        c = cluster([node("h-0", product=product, labels={"nvidia.com/mig.strategy": "mixed"})],
                    [pod("p", resource=resource)])  # fmt: skip
        if config is not None:
            c.snapshot.policies["cluster-policy"]["spec"] = {"migManager": {"config": {"name": name}}}
            if config:
                c.snapshot.config_data["my-mig"] = {"config.yaml": config}
        return str(kinds(c)["MIGResourceNotAdvertised"].fix)

    sevens = USER_MIG_CONFIG + ('  sevens:\n    - devices: all\n      mig-enabled: true\n'
                                '      mig-devices: {"1g.10gb": 7}\n')  # fmt: skip
    assert "(nvidia.com/mig.config=sevens on h-0)" in fix(sevens)
    assert "no layout of ConfigMap my-mig makes it there" in fix(USER_MIG_CONFIG)
    assert "mig-manager cannot read ConfigMap my-mig (not found)" in fix("")
    assert "ConfigMap my-mig (key config.yaml: " in fix("version: v2\n")
    nvl = ("nvidia.com/mig-1g.35gb", "NVIDIA-H200-NVL")
    assert "nvidia.com/mig.config=all-1g.35gb on h-0" in fix(None, *nvl)
    assert "no layout of the default table makes it there" in fix("", *nvl, name="default-mig-parted-config")
    assert "all-1g.10gb" not in fix(sevens) + fix(USER_MIG_CONFIG) + fix("")
    assert "nvidia.com/mig.config=all-1g.10gb on h-0" in fix(None)  # the default table has it for the H100


def test_cordoned_node_mid_upgrade() -> None:
    state = {"nvidia.com/gpu-driver-upgrade-state": "wait-for-jobs-required"}
    n = node("h-0", spec={"unschedulable": True}, labels=state)
    f = kinds(cluster([n], [pod("p", 1)]))["NodesCordoned"]
    assert "driver upgrade" in f.summary and "wait-for-jobs-required" in f.details[0]
    assert "NodeInDriverUpgrade" in kinds(cluster([n], []))


def test_a_node_the_mig_gate_cordoned_says_so() -> None:
    """The MIG gate cordons a node before it evicts GPU pods for a layout change (and lifts it after): the finding
    says so, rather than leaving the admin to guess whose cordon it is."""
    n = node("h-0", spec={"unschedulable": True}, labels={"nvidia.com/mig.config": "all-1g.10gb"})
    n["metadata"]["annotations"] = {"nvidia.com/gpu-operator.mig-cordoned": "true"}
    f = kinds(cluster([n], [pod("p", 1)]))["NodesCordoned"]
    assert f.details == ["h-0: cordoned by the operator for the MIG layout change to all-1g.10gb (uncordoned once "
                         "it is over)"]  # fmt: skip


def test_a_mig_gate_cordon_is_not_told_to_be_lifted_by_hand() -> None:
    """NodesCordoned on nodes the MIG gate cordoned said in its details that the operator uncordons them, but its fix
    was the generic "uncordon a node when its maintenance is over (`kubectl uncordon NODE`)": lifting the gate's
    cordon by hand lets the evicted GPU pods' replacements land on the node again, which holds the layout change (the
    reason the gate cordons, mig.py). Now the fix says to wait for the change and not to uncordon by hand, as for a
    driver upgrade's cordon; a cordon of someone else's beside them is still the admin's to lift."""
    labels = {"nvidia.com/mig.config": "all-1g.10gb", "nvidia.com/mig.config.state": "pending"}
    gated = node("h-0", spec={"unschedulable": True}, labels=labels)
    gated["metadata"]["annotations"] = {"nvidia.com/gpu-operator.mig-cordoned": "true"}
    f = kinds(cluster([gated], [pod("p", 1)]))["NodesCordoned"]
    assert "kubectl uncordon" not in f.fix and "do not uncordon these nodes by hand" in f.fix, f.fix
    assert "MIG layout change (h-0)" in f.summary and "nvidia.com/mig.config.state=success" in f.fix, (f.summary, f.fix)
    f = kinds(cluster([gated, node("h-1", spec={"unschedulable": True})], [pod("p", 1)]))["NodesCordoned"]
    assert "do not uncordon these nodes by hand (the others: `kubectl uncordon NODE`" in f.fix, f.fix


def test_cuda_13_on_driver_570() -> None:
    pinned = pod("c13", 1, image="nvidia/cuda:13.0.1-base-ubuntu24.04", nodeSelector={"kubernetes.io/hostname": "old"})
    c = cluster([node("old", driver="570.172.08"), node("new")], [pinned])
    f = kinds(c)["CUDADriverTooOld"]
    assert f.severity == "error" and "580" in f.fix and f.nodes == ("old",)
    env = pod("env", 1, node_name="old", env=[{"name": "NVIDIA_REQUIRE_CUDA", "value": "cuda>=12.9 brand=tesla"}])
    assert "CUDADriverTooOld" in kinds(cluster([node("old", driver="570.172.08")], [env]))
    ok = pod("ok", 1, node_name="new", image="nvidia/cuda:13.0.1-base-ubuntu24.04")
    assert diagnose(cluster([node("new")], [ok])) == []


def test_require_cuda_11_x_on_a_driver_older_than_that_release_is_refused() -> None:
    """The runtime hook checks NVIDIA_REQUIRE_CUDA against the driver's own CUDA, with no minor-version
    compatibility: driver 470 (CUDA 11.4) or 515 (11.7) refuses seed §6.2's cuda>=11.8. The driver-to-CUDA table
    began at 11.8, so an older driver had no CUDA there and the strict check never fired (REFERENCE §12 entry 7)."""
    need = [{"name": "NVIDIA_REQUIRE_CUDA", "value": "cuda>=11.8"}]
    for driver in ("470.256.02", "515.105.01", "440.33.01"):
        env = pod("env", 1, node_name="old", image="registry.example.com/app:v1", env=need)
        found = kinds(cluster([node("old", driver=driver)], [env]))
        assert set(found) == {"CUDADriverTooOld"}, (driver, {k: f.summary for k, f in found.items()})
        assert "520.61.05" in found["CUDADriverTooOld"].fix
    env = pod("env", 1, node_name="old", env=[{"name": "NVIDIA_REQUIRE_CUDA", "value": "cuda>=11.4"}])
    assert diagnose(cluster([node("old", driver="470.256.02")], [env])) == []
    assert diagnose(cluster([node("new")], [pod("env", 1, node_name="new", env=need)])) == []
    # An image tag (no hook check): an 11.x release on an older 11.x driver runs by minor-version compatibility;
    # 11.0 on its own GA driver (450.51.05, below the 11.x compatibility minimum 450.80.02) needs nothing more.
    tagged = pod("t", 1, node_name="old", image="team/train:cuda11.6")
    assert set(kinds(cluster([node("old", driver="470.256.02")], [tagged]))) == {"CUDAMinorVersionCompatibility"}
    tagged = pod("t", 1, node_name="old", image="team/train:cuda11.0")
    assert diagnose(cluster([node("old", driver="450.51.05")], [tagged])) == []


def test_nvidia_require_cuda_alternatives_are_ored_as_the_runtime_hook_does() -> None:
    """REFERENCE §7: in NVIDIA_REQUIRE_CUDA "space means OR, comma means AND", and only the `cuda>=` part was read.
    The CUDA images' full value (nvidia/cuda:11.8.0's here) also accepts any R470 driver by its brand alternatives,
    and the hook lets such a pod run; with 11.0-11.7 in the driver table `cuda>=11.8` alone is refused by driver
    470, so the pod got CUDADriverTooOld, an ERROR, on a node where it runs."""
    require = ("cuda>=11.8 brand=tesla,driver>=470,driver<471 brand=unknown,driver>=470,driver<471 "
               "brand=nvidia,driver>=470,driver<471 brand=nvidiartx,driver>=470,driver<471 "
               "brand=geforce,driver>=470,driver<471 brand=quadro,driver>=470,driver<471")  # fmt: skip

    def found(driver: str, value: str = require) -> set[str]:
        w = pod("train", 1, node_name="h-0", image="registry.example/train:1",
                env=[{"name": "NVIDIA_REQUIRE_CUDA", "value": value}])  # fmt: skip
        return {f.kind for f in diagnose(cluster([node("h-0", product="NVIDIA-A100-SXM4-80GB", driver=driver)], [w]))}

    assert found("470.182.03") == {"CUDAMinorVersionCompatibility"}
    # No alternative holds on R515 (older than 11.8's own 520, not the R470 branch): refused.
    assert found("515.105.01") == {"CUDADriverTooOld"}
    assert found("525.60.13") == set()
    # An alternative of GPU conditions only (brand) cannot be judged here: the cuda condition decides.
    assert found("470.182.03", "cuda>=11.8 brand=tesla") == {"CUDADriverTooOld"}


def _failed_with(message: str, state: str = "terminated", image: str = "registry.example.com/team/train:v3") -> Any:
    body = {"exitCode": 1, "message": message} if state == "terminated" else {"reason": "RunContainerError",
                                                                              "message": message}
    return pod("train", 1, node_name="h-0", image=image,
               status={"phase": "Failed" if state == "terminated" else "Pending",
                       "containerStatuses": [{"name": "main", "ready": False, "state": {state: body}}]})  # fmt: skip


def test_the_runtime_refusing_a_cuda_too_new_for_the_driver_is_diagnosed() -> None:
    """§12 entry 7 was read only from the pod spec (NVIDIA_REQUIRE_CUDA in its env, a CUDA version in a well-known
    tag); nvidia/cuda-based images set NVIDIA_REQUIRE_CUDA in the image's config, so a custom-tagged image refused by
    the runtime hook with the catalogue's signature got no finding."""
    message = ("failed to create containerd task: ... error running hook #0: error running hook: exit status 1, "
               "stderr: nvidia-container-cli: requirement error: unsatisfied condition: cuda>=12.8, please update "
               "your driver to a newer version, or use an earlier cuda container: unknown")  # fmt: skip
    f = kinds(cluster([node("h-0", driver="550.54.15")], [_failed_with(message, "waiting")]))["CUDADriverTooOld"]
    assert "driver 550.54.15 is older than CUDA 12.8" in f.summary and "570.26" in f.fix and f.nodes == ("h-0",)
    assert "cuda>=12.8" in f.evidence[0].message and f.evidence[0].field.endswith("state.waiting.message")
    # CDI mode: CUDA's own error; the CUDA version from the tag, where minor-version compatibility was assumed.
    insufficient = "RuntimeError: CUDA error: CUDA driver version is insufficient for CUDA runtime version"
    found = kinds(cluster([node("h-0", driver="550.54.15")], [_failed_with(insufficient, image="team/train:cu128")]))
    assert set(found) == {"CUDADriverTooOld"} and "570.26" in found["CUDADriverTooOld"].fix


def test_no_kernel_image_for_the_gpu_is_diagnosed() -> None:
    """§12 entry 8 was implemented nowhere: the image's architectures against the GPU's compute capability."""
    message = "Traceback ...\nRuntimeError: CUDA error: no kernel image is available for execution on the device\n..."
    f = kinds(cluster([node("h-0")], [_failed_with(message)]))["NoKernelImageForGPU"]
    assert "compute capability" in f.summary and f.evidence[0].message.startswith("RuntimeError: CUDA error: no kernel")

    def compute(major: str, minor: str) -> dict[str, Any]:
        return node("h-0", labels={"nvidia.com/gpu.compute.major": major, "nvidia.com/gpu.compute.minor": minor})

    old = _failed_with(message, image="pytorch/pytorch:2.1.0-cuda12.1-cudnn8-devel")
    f = kinds(cluster([compute("10", "0")], [old]))["NoKernelImageForGPU"]  # Blackwell: first in CUDA 12.8
    assert "CUDA 12.1 predates" in f.summary and "12.8 or newer" in f.fix
    new = _failed_with(message, image="nvidia/cuda:13.0.1-base-ubuntu24.04")
    f = kinds(cluster([compute("7", "0")], [new]))["NoKernelImageForGPU"]  # Volta
    assert "CUDA 13 dropped sm_50-70" in f.summary and "CUDA 12.x" in f.fix


def test_a_gpu_pod_in_which_cuda_finds_no_device_is_diagnosed() -> None:
    """Seed §6.3 Issue 1 ("CUDA device not found": the NVIDIA container runtime missing) was diagnosed only for a
    pod requesting no GPU; one that requested a GPU and printed CUDA's "no CUDA-capable device is detected" got no
    finding."""
    message = "Traceback ...\nRuntimeError: CUDA error: no CUDA-capable device is detected\n..."
    found = kinds(cluster([node("h-0")], [_failed_with(message)]))
    assert set(found) == {"CUDADeviceNotFound"}, found
    f = found["CUDADeviceNotFound"]
    assert "requests 1 nvidia.com/gpu" in f.summary and "NVIDIA container runtime" in f.summary
    assert "kubectl get pods -n gpu-operator" in f.fix and "describe node" in f.fix and f.nodes == ("h-0",)
    assert f.evidence[0].message == "RuntimeError: CUDA error: no CUDA-capable device is detected"
    # Seed Exercise 1's nvidia-smi, not put into the container by the runtime.
    start = ('failed to create containerd task: failed to create shim task: OCI runtime create failed: exec: '
             '"nvidia-smi": executable file not found in $PATH: unknown')  # fmt: skip
    assert "CUDADeviceNotFound" in kinds(cluster([node("h-0")], [_failed_with(start, "waiting")]))
    # The container's own NVIDIA_VISIBLE_DEVICES replaces the device plugin's.
    own = _failed_with(message)
    own["spec"]["containers"][0]["env"] = [{"name": "NVIDIA_VISIBLE_DEVICES", "value": "void"}]
    f = kinds(cluster([node("h-0")], [own]))["CUDADeviceNotFound"]
    assert "sets NVIDIA_VISIBLE_DEVICES itself" in f.summary and f.evidence[1].message == "void"
    # No GPU requested: not this finding (a CUDA image gets CUDAImageWithoutGPU).
    none = _failed_with(message)
    none["spec"]["containers"][0]["resources"] = {}
    assert "CUDADeviceNotFound" not in kinds(cluster([node("h-0")], [none]))


def test_a_failure_of_a_previous_run_is_not_reported_on_a_pod_that_runs_now() -> None:
    """The container messages were read from lastState as well as state, and lastState keeps the previous run's
    message until the next restart: a pod refused by the runtime hook before its node's driver was upgraded, or whose
    first run found no GPU, and that now runs and is ready on driver 595.91.07 got an ERROR ("the node's driver
    595.91.07 is older than CUDA 12.8 needs", "CUDA finds no GPU in it"), exit status 2 on a healthy cluster."""

    def restarted(message: str, state: dict[str, Any], ready: bool) -> Any:
        return pod("train", 1, node_name="h-0", image="registry.example/train:1", status={
            "phase": "Running", "containerStatuses": [{
                "name": "main", "ready": ready, "restartCount": 1, "state": state,
                "lastState": {"terminated": {"exitCode": 128, "reason": "StartError", "message": message,
                                             "finishedAt": "2026-01-01T00:00:00Z"}}}]})  # fmt: skip

    running = {"running": {"startedAt": "2026-01-02T00:00:00Z"}}
    refused = ("failed to create containerd task: OCI runtime create failed: nvidia-container-cli: requirement error: "
               "unsatisfied condition: cuda>=12.8, please update your driver to a newer version")  # fmt: skip
    for message in (refused, "RuntimeError: No CUDA GPUs are available",
                    "RuntimeError: CUDA error: no kernel image is available for execution on the device"):
        assert diagnose(cluster([node("h-0")], [restarted(message, running, True)])) == [], message
    # Between the restarts of a crash loop the last run's message is the diagnosis.
    backoff = restarted("RuntimeError: No CUDA GPUs are available", {"waiting": {"reason": "CrashLoopBackOff"}}, False)
    f = kinds(cluster([node("h-0")], [backoff]))["CUDADeviceNotFound"]
    assert f.evidence[0].field == "status.containerStatuses[main].lastState.terminated.message"


def not_found(image: str) -> str:
    """containerd's answer for an image whose tag the registry does not have."""
    ref = image if "." in image.split("/", 1)[0] else f"docker.io/{image}"
    return (f'rpc error: code = NotFound desc = failed to pull and unpack image "{ref}": failed to resolve reference '
            f'"{ref}": {ref}: not found')


NOT_FOUND = not_found("nvidia/cuda:12.1-devel-ubuntu22.04")


def pulling(p: dict[str, Any], reason: str, message: str, container: str = "main", init: bool = False) -> Any:
    """The pod waiting for its image, as the kubelet reports it (Pending, the container waiting)."""
    p["status"] = {"phase": "Pending", "conditions": [{"type": "Ready", "status": "False"}],
                   "initContainerStatuses" if init else "containerStatuses": [
                       {"name": container, "ready": False, "restartCount": 0,
                        "state": {"waiting": {"reason": reason, "message": message}}}]}  # fmt: skip
    return p


def test_a_gpu_pod_whose_image_cannot_be_pulled_is_diagnosed() -> None:
    """An image that does not exist (the seed's Exercise 1 tag nvidia/cuda:12.1-devel-ubuntu22.04: nvidia/cuda's tags
    name the patch release) left the GPU pod in ErrImagePull / ImagePullBackOff, never started, and doctor had no
    finding at all (exit 0). The waiting reason and message, or the pull's event, say why."""
    gpu_test = seed_pod(seed_container("gpu-test", "nvidia/cuda:12.1-devel-ubuntu22.04",
                                       "      limits:\n        nvidia.com/gpu: 1\n", "  restartPolicy: Never\n"))
    gpu_test["spec"]["nodeName"] = "h-0"
    found = kinds(cluster([node("h-0")], [pulling(gpu_test, "ErrImagePull", NOT_FOUND)]))
    assert set(found) == {"ImagePullFailed"}, found
    f = found["ImagePullFailed"]
    assert f.severity == "error" and f.object == "Pod default/gpu-test" and f.nodes == ("h-0",)
    assert "cannot pull its image nvidia/cuda:12.1-devel-ubuntu22.04" in f.summary and "no such tag" in f.summary
    assert f.evidence == [Evidence("Pod default/gpu-test", "status.containerStatuses[main].state.waiting",
                                   f"ErrImagePull: {NOT_FOUND}")]  # fmt: skip
    assert "tag that exists in nvidia/cuda" in f.fix and "12.1.0-devel-ubuntu22.04" in f.fix
    # ImagePullBackOff's message names no cause: the kubelet's Failed event does.
    backoff = pulling(gpu_test, "ImagePullBackOff", 'Back-off pulling image "nvidia/cuda:12.1-devel-ubuntu22.04"')
    event = {"type": "Warning", "reason": "Failed", "lastTimestamp": "2026-01-01T00:00:00Z",
             "involvedObject": {"kind": "Pod", "namespace": "default", "name": "gpu-test"},
             "message": f'Failed to pull image "nvidia/cuda:12.1-devel-ubuntu22.04": {NOT_FOUND}'}  # fmt: skip
    f = kinds(cluster([node("h-0")], [backoff], events=[event]))["ImagePullFailed"]
    assert "no such tag" in f.summary and f.evidence[1] == Evidence("Pod default/gpu-test", "event Failed",
                                                                    event["message"])  # fmt: skip
    f = kinds(cluster([node("h-0")], [backoff]))["ImagePullFailed"]
    assert "does not say why" in f.summary and "kubectl describe pod -n default gpu-test" in f.fix
    # A private repository, a Deployment's pod: credentials, in the pod template.
    denied = ('failed to pull and unpack image "nvcr.io/acme/train:v3": failed to resolve reference '
              '"nvcr.io/acme/train:v3": pull access denied, repository does not exist or may require authorization')
    train = pulling(owned_pod("train-66b4f9-x", "ReplicaSet", "train-66b4f9", "2026-01-01T00:00:00Z"),
                    "ErrImagePull", denied)  # fmt: skip
    train["spec"]["containers"][0]["image"] = "nvcr.io/acme/train:v3"
    f = kinds(cluster([node("h-0")], [train]))["ImagePullFailed"]
    assert "needs credentials" in f.summary and "imagePullSecrets" in f.fix and "pod template" in f.fix
    # Not a GPU pod: not doctor's.
    web = pulling(pod("web", node_name="h-0", image="nginx:nope"), "ErrImagePull", NOT_FOUND)
    assert diagnose(cluster([node("h-0")], [web])) == []


def test_an_operand_image_that_cannot_be_pulled_names_the_field_that_sets_it() -> None:
    """An operand whose image tag does not exist (driver.version 999.1.1) was reported as OperandNotReady "container
    nvidia-driver-ctr not ready (ErrImagePull)" with `kubectl logs` as the fix (there is no log: it never started),
    and an init container's as waiting for the component it validates. doctor names the ClusterPolicy's (or the
    NVIDIADriver's) field that sets the image."""
    status = {"state": "notReady", "states": [{"name": "state-driver", "state": "notReady",
                                               "message": "1 of 1 pods unavailable"}]}  # fmt: skip

    def operand(name: str, state: str, container: str, image: str, init: bool = False) -> dict[str, Any]:
        p = {"kind": "Pod", "spec": {"nodeName": "h-0", "initContainers" if init else "containers": [
                 {"name": container, "image": image}]},
             "metadata": {"name": name, "namespace": NS, "labels": {"nvidia.com/gpu-operator.state": state},
                          "ownerReferences": [{"kind": "DaemonSet", "name": name.rsplit("-", 1)[0]}]}}  # fmt: skip
        return pulling(p, "ErrImagePull", not_found(image), container, init)

    def found(pods: list[dict[str, Any]], spec: dict[str, Any]) -> Any:
        c = cluster([node("h-0")], pods, policy_status=status)
        c.snapshot.policies["cluster-policy"]["spec"] = spec
        return c

    driver = operand("nvidia-driver-daemonset-x", "state-driver", "nvidia-driver-ctr",
                     "nvcr.io/nvidia/driver:999.1.1-ubuntu22.04")  # fmt: skip
    spec = {"driver": {"repository": "nvcr.io/nvidia", "image": "driver", "version": "999.1.1"}}
    fs = kinds(found([driver], spec))
    assert "OperandNotReady" not in fs, fs
    f = fs["ImagePullFailed"]
    assert f.object == "state-driver on h-0" and f.nodes == ("h-0",) and "no such tag" in f.summary
    assert "ClusterPolicy cluster-policy's driver.version (999.1.1)" in f.fix, f.fix
    assert "<driver.version>-<os>" in f.fix and "999.1.1-ubuntu22.04 must exist" in f.fix and "logs" not in f.fix
    assert f.evidence[0].field == "status.containerStatuses[nvidia-driver-ctr].state.waiting"
    # The device plugin's image, the same repository as GFD's: its own section is named.
    plugin = operand("nvidia-device-plugin-daemonset-x", "state-device-plugin", "nvidia-device-plugin",
                     "nvcr.io/nvidia/k8s-device-plugin:v0.99.0")  # fmt: skip
    f = kinds(found([plugin], {"devicePlugin": {"repository": "nvcr.io/nvidia", "image": "k8s-device-plugin",
                                                "version": "v0.99.0"}}))["ImagePullFailed"]  # fmt: skip
    assert "devicePlugin.version (v0.99.0)" in f.fix, f.fix
    # The validator's init container in the toolkit's pod, the operator's default image (no validator fields).
    toolkit = operand("nvidia-container-toolkit-daemonset-x", "state-container-toolkit", "driver-validation",
                      "nvcr.io/nvidia/gpu-operator:v26.7.0", init=True)  # fmt: skip
    f = kinds(found([toolkit], {}))["ImagePullFailed"]
    assert "the operator's default nvcr.io/nvidia/gpu-operator:v26.7.0" in f.fix, f.fix
    assert "validator.repository, validator.image and validator.version" in f.fix
    # A driver DaemonSet an NVIDIADriver owns: its own (top-level) fields.
    c = found([driver], {})
    ds = {"kind": "DaemonSet", "metadata": {"name": "nvidia-driver-daemonset", "namespace": NS,
                                            "ownerReferences": [{"kind": "NVIDIADriver", "name": "pool-a"}]}}
    c.snapshot.owned[("DaemonSet", NS, "nvidia-driver-daemonset")] = ds
    c.snapshot.nvidia_drivers["pool-a"] = {"metadata": {"name": "pool-a"}, "spec": {
        "driverType": "gpu", "repository": "nvcr.io/nvidia", "image": "driver", "version": "999.1.1"}}
    f = kinds(c)["ImagePullFailed"]
    assert "NVIDIADriver pool-a's version (999.1.1)" in f.fix and "repository / image" in f.fix, f.fix


def test_cuda_oom_on_time_sliced_gpu_and_more_than_one_replica() -> None:
    shared = node("h-0", labels={"nvidia.com/gpu.replicas": "4", "nvidia.com/gpu.sharing-strategy": "time-slicing"})
    oom = pod("oom", 1, node_name="h-0", status={"phase": "Failed", "containerStatuses": [{"name": "main", "state": {
        "terminated": {"exitCode": 1, "message": "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate"}}}]})
    two = pod("two", 2, node_name="h-0")
    found = kinds(cluster([shared], [oom, two]))
    assert "MIG" in found["CUDAOOMTimeSliced"].fix and "MPS" in found["CUDAOOMTimeSliced"].fix
    assert "request 1" in found["MultipleTimeSlicedGPUs"].fix


def test_cuda_oom_and_more_than_one_replica_on_an_mps_node_are_not_called_time_sliced() -> None:
    # GFD labels an MPS node gpu.replicas=N and gpu.sharing-strategy=mps; the MPS control daemon limits each client
    # to the GPU's memory / replicas, so an OOM there is that limit, and advising MPS would be advising itself.
    mps = node("m-0", labels={"nvidia.com/gpu.replicas": "2", "nvidia.com/gpu.sharing-strategy": "mps",
                              "nvidia.com/gpu.memory": "81559", "nvidia.com/mps.capable": "true"})
    oom = pod("oom", 1, node_name="m-0", status={"phase": "Failed", "containerStatuses": [{"name": "main", "state": {
        "terminated": {"exitCode": 1, "message": "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate"}}}]})
    two = pod("two", 2, node_name="m-0")
    found = kinds(cluster([mps], [oom, two]))
    assert "CUDAOOMTimeSliced" not in found and "MultipleTimeSlicedGPUs" not in found
    f = found["CUDAOOMMPS"]
    assert "MPS-shared" in f.summary and "about 40779 MiB (81559 MiB / 2 replicas)" in f.summary
    assert "fewer MPS replicas" in f.fix and "MIG" in f.fix and "whole GPU" in f.fix
    assert "time-sliced" not in f.summary + f.fix and "sharing.mps" not in f.fix
    assert "MPS clients" in found["MultipleMPSSharedGPUs"].summary and "request 1" in found["MultipleMPSSharedGPUs"].fix


def test_more_than_one_shared_gpu_is_judged_per_container() -> None:
    """MultipleMPSSharedGPUs said the device plugin rejects a pod of two containers asking 1 MPS replica each (and
    MultipleTimeSlicedGPUs that more than one replica adds nothing): the plugin checks each container's request on
    its own (k8s-device-plugin internal/plugin/server.go Allocate), and one replica per container is ordinary
    sharing. Now only a container asking more than one is reported, by name."""
    for strategy, kind in (("mps", "MultipleMPSSharedGPUs"), ("time-slicing", "MultipleTimeSlicedGPUs")):
        shared = node("h-0", labels={"nvidia.com/gpu.replicas": "4", "nvidia.com/gpu.sharing-strategy": strategy})
        two = pod("two", 1, node_name="h-0")
        two["spec"]["containers"].append(gpu_container("b", 1))
        sidecar = pod("sidecar", 1, node_name="h-0", initContainers=[gpu_container("s", 1, restartPolicy="Always")])
        assert kind not in kinds(cluster([shared], [two, sidecar]))
        f = kinds(cluster([shared], [pod("big", 2, node_name="h-0")]))[kind]
        assert f.summary.startswith("container main requests 2 GPUs"), f.summary


_OOM_STATUS = {"phase": "Failed", "containerStatuses": [{"name": "main", "state": {"terminated": {
    "exitCode": 1, "message": "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate"}}}]}
_MIG = "nvidia.com/mig-1g.10gb"


def _mixed_node(name: str, gpus: int, mig_devices: int, gpu_replicas: str, mig_replicas: str) -> dict[str, Any]:
    """An H100 node under MIG mixed, labelled as GFD labels it: each resource has its own <resource>.replicas and
    <resource>.sharing-strategy (one labeler per resource, the MIG ones prefixed nvidia.com/mig-<profile>)."""
    labels = {
        "nvidia.com/mig.strategy": "mixed",
        "nvidia.com/gpu.count": str(gpus),
        "nvidia.com/gpu.replicas": gpu_replicas,
        "nvidia.com/gpu.sharing-strategy": "time-slicing" if int(gpu_replicas) > 1 else "none",
        f"{_MIG}.count": str(mig_devices),
        f"{_MIG}.replicas": mig_replicas,
        f"{_MIG}.sharing-strategy": "time-slicing" if int(mig_replicas) > 1 else "none",
        f"{_MIG}.product": "NVIDIA-H100-80GB-HBM3-MIG-1g.10gb" + ("-SHARED" if int(mig_replicas) > 1 else ""),
    }
    n = node(name, gpus=gpus * max(int(gpu_replicas), 1), labels=labels)
    for key in ("capacity", "allocatable"):
        n["status"][key][_MIG] = str(mig_devices * int(mig_replicas))
    return n


def test_sharing_of_a_mig_resource_under_mixed_is_read_from_its_own_labels() -> None:
    """Review sharing2 #1 (REFERENCE §4, §12 entries 17-18): under mixed GFD labels each MIG resource's sharing as
    nvidia.com/mig-<profile>.replicas / .sharing-strategy. doctor read only the node-wide nvidia.com/gpu ones: an OOM
    on a time-sliced MIG device was "on a GPU it does not share", one on an unshared MIG device beside time-sliced
    full GPUs was "time-sliced (4 replicas)", and 2 time-sliced MIG devices in a container went unreported."""
    n = _mixed_node("h-0", gpus=0, mig_devices=56, gpu_replicas="0", mig_replicas="4")
    found = kinds(cluster([n], [pod("oom", node_name="h-0", limits={_MIG: "1"}, status=_OOM_STATUS)]))
    f = found["CUDAOOMTimeSliced"]
    assert f"MIG device ({_MIG}) (4 replicas)" in f.summary, f.summary
    assert any(e.field == f"labels[{_MIG}.replicas]" and e.message == "4" for e in f.evidence), f.evidence
    assert "not time-sliced" in f.fix, f.fix
    found = kinds(cluster([n], [pod("two", node_name="h-0", limits={_MIG: "2"})]))
    f = found["MultipleTimeSlicedGPUs"]
    assert f.summary.startswith("container main requests 2 MIG devices"), f.summary
    # The converse: full GPUs time-sliced, the pod's MIG device not shared.
    n = _mixed_node("h-1", gpus=2, mig_devices=28, gpu_replicas="4", mig_replicas="1")
    found = kinds(cluster([n], [pod("oom", node_name="h-1", limits={_MIG: "1"}, status=_OOM_STATUS),
                                pod("two", node_name="h-1", limits={_MIG: "2"})]))
    assert "CUDAOOMTimeSliced" not in found and "MultipleTimeSlicedGPUs" not in found, sorted(found)
    assert found["CUDAOOM"].summary.endswith("on a GPU it does not share")
    # Without per-resource labels a MIG resource falls back to the node-wide ones.
    n = node("h-2", labels={"nvidia.com/gpu.replicas": "4", "nvidia.com/gpu.sharing-strategy": "time-slicing"})
    assert "CUDAOOMTimeSliced" in kinds(cluster([n], [pod("oom", node_name="h-2", limits={_MIG: "1"},
                                                         status=_OOM_STATUS)]))


def test_operand_stuck_in_init_names_the_first_failing_validator_step() -> None:
    validator = {
        "kind": "Pod",
        "metadata": {"name": "nvidia-operator-validator-x", "namespace": NS,
                     "labels": {"nvidia.com/gpu-operator.state": "state-operator-validation"}},
        "spec": {"nodeName": "h-0"},
        "status": {"phase": "Pending", "initContainerStatuses": [
            {"name": "driver-validation", "state": {"terminated": {"exitCode": 0}}},
            {"name": "toolkit-validation", "state": {"running": {}}},
        ]},
    }  # fmt: skip
    status = {"state": "notReady", "states": [{"name": "state-operator-validation", "state": "notReady",
                                               "message": "1 of 1 pods unavailable"}]}  # fmt: skip
    f = kinds(cluster([node("h-0")], [validator], policy_status=status))["OperandNotReady"]
    assert "toolkit-validation" in f.summary and "container toolkit" in f.summary and f.nodes == ("h-0",)


def _driver_pod(init: list[dict[str, Any]], containers: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "kind": "Pod",
        "metadata": {"name": "nvidia-driver-daemonset-ubuntu22.04-x", "namespace": NS,
                     "labels": {"nvidia.com/gpu-operator.state": "state-driver",
                                "app.kubernetes.io/component": "nvidia-driver"}},
        "spec": {"nodeName": "h-0"},
        "status": {"phase": "Pending" if init else "Running", "initContainerStatuses": init,
                   "containerStatuses": containers},
    }  # fmt: skip


DRIVER_NOT_READY = {"state": "notReady", "states": [{"name": "state-driver", "state": "notReady",
                                                     "message": "1 of 1 pods unavailable"}]}  # fmt: skip


def test_a_crash_looping_init_container_is_told_the_cause_its_message_names() -> None:
    """k8s-driver-manager (the driver pod's init container) fails with "cannot proceed until all GPU pods are drained
    from the node" when it could not evict the GPU pods holding the driver and auto drain is off
    (k8s-driver-manager cmd/driver-manager/main.go): §12 entry 12's "driver is in use". Only the main containers'
    messages went through the crash causes; an init container's fix was "read its log", the reason the kubelet's
    back-off. Its message is quoted now, with the cause's fix; a validator's init container's too."""
    init = [{"name": "k8s-driver-manager", "restartCount": 6,
             "state": {"waiting": {"reason": "CrashLoopBackOff",
                                   "message": "back-off 5m0s restarting failed container"}},
             "lastState": {"terminated": {"exitCode": 1, "reason": "Error",
                                          "message": "Failed to drain node of GPU pods\nError: cannot proceed until "
                                                     "all GPU pods are drained from the node\n"}}}]  # fmt: skip
    drv = _driver_pod(init, [{"name": "nvidia-driver-ctr", "ready": False, "restartCount": 0,
                              "state": {"waiting": {"reason": "PodInitializing"}}}])  # fmt: skip
    f = kinds(cluster([node("h-0")], [drv], policy_status=DRIVER_NOT_READY))["OperandNotReady"]
    assert "k8s-driver-manager crash-looping (6 restarts): Failed to drain node of GPU pods Error: cannot proceed" in (
        f.summary), f.summary  # fmt: skip
    assert "driver.upgradePolicy pod eviction or drain" in f.fix, f.fix
    # A validator's crash loop: its message, and the validator's order where it names no known cause.
    validator = {"kind": "Pod", "spec": {"nodeName": "h-0"},
                 "metadata": {"name": "nvidia-operator-validator-x", "namespace": NS,
                              "labels": {"nvidia.com/gpu-operator.state": "state-operator-validation"}},
                 "status": {"phase": "Pending", "initContainerStatuses": [{
                     "name": "driver-validation", "restartCount": 4,
                     "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                     "lastState": {"terminated": {"exitCode": 1,
                                                  "message": "failed to create symlinks under /dev/char"}},
                 }]}}  # fmt: skip
    status = {"state": "notReady", "states": [{"name": "state-operator-validation", "state": "notReady",
                                               "message": "1 of 1 pods unavailable"}]}  # fmt: skip
    f = kinds(cluster([node("h-0")], [validator], policy_status=status))["OperandNotReady"]
    assert "driver-validation crash-looping (4 restarts): failed to create symlinks under /dev/char" in f.summary
    assert f.fix.startswith("look at the driver"), f.fix


def test_a_driver_refused_by_secure_boot_with_required_key_not_available_gets_the_secure_boot_fix() -> None:
    """§12 entry 12: Secure Boot refuses the unsigned nvidia module -> turn Secure Boot off (or signed precompiled
    drivers). The kernel says EKEYREJECTED ("Key was rejected by service") or, on kernels that return ENOKEY
    (RHEL/CentOS 8), "Required key not available"; doctor knew only the first and told the second to read its log."""
    for refusal in ("Required key not available", "Key was rejected by service"):
        last = (f"Loading NVIDIA driver kernel modules...\nmodprobe: ERROR: could not insert 'nvidia': {refusal}\n"
                "Stopping NVIDIA persistence daemon...")  # fmt: skip
        drv = _driver_pod([{"name": "k8s-driver-manager", "state": {"terminated": {"exitCode": 0}}}], [{
            "name": "nvidia-driver-ctr", "ready": False, "restartCount": 5,
            "state": {"waiting": {"reason": "CrashLoopBackOff"}},
            "lastState": {"terminated": {"exitCode": 1, "message": last}}}])  # fmt: skip
        f = kinds(cluster([node("h-0")], [drv], policy_status=DRIVER_NOT_READY))["OperandNotReady"]
        assert refusal in f.summary, f.summary
        assert "Secure Boot off" in f.fix, f.fix



def _not_ready_under(pod: dict[str, Any], status: dict[str, Any], spec: dict[str, Any]) -> Any:
    """doctor's OperandNotReady for `pod` on node h-0 under a ClusterPolicy with `spec`."""
    c = cluster([node("h-0")], [pod], policy_status=status)
    c.snapshot.policies["cluster-policy"]["spec"] = spec
    return kinds(c)["OperandNotReady"]

def test_a_validator_waiting_for_a_driver_the_operator_does_not_deploy_is_not_sent_to_state_driver() -> None:
    """With driver.enabled false (or a node's gpu.deploy.driver pre-installed or false) the operator deploys no
    driver there: it must be on the host, and the toolkit's driver-validation init container (nvidia-validator
    COMPONENT=driver WITH_WAIT=true, upstream assets/state-container-toolkit/0500_daemonset.yaml) loops until it
    finds it. doctor said it "waits for the driver (state-driver)" and to "look at the driver (state-driver) on this
    node first": a state that does not exist. It names the host's driver now; and where the operator's driver pod is
    ready, the validation itself."""
    toolkit = {"kind": "Pod", "spec": {"nodeName": "h-0"},
               "metadata": {"name": "nvidia-container-toolkit-daemonset-x", "namespace": NS,
                            "labels": {"nvidia.com/gpu-operator.state": "state-container-toolkit"}},
               "status": {"phase": "Pending",
                          "initContainerStatuses": [{"name": "driver-validation", "state": {"running": {}}}],
                          "containerStatuses": [{"name": "nvidia-container-toolkit-ctr", "ready": False,
                                                 "state": {"waiting": {"reason": "PodInitializing"}}}]}}  # fmt: skip
    status = {"state": "notReady", "states": [{"name": "state-container-toolkit", "state": "notReady",
                                               "message": "1 of 1 pods unavailable"}]}  # fmt: skip
    f = _not_ready_under(toolkit, status, {"driver": {"enabled": False}})
    assert "state-driver" not in f.summary + f.fix, (f.summary, f.fix)
    assert "the driver installed on the host (driver.enabled is false" in f.summary and "nvidia-smi" in f.fix
    host = node("h-0", labels={"nvidia.com/gpu.deploy.driver": "pre-installed"})
    f = kinds(cluster([host], [toolkit], policy_status=status))["OperandNotReady"]
    assert "on the host (nvidia.com/gpu.deploy.driver=pre-installed" in f.summary, f.summary
    refused = node("h-0", labels={"nvidia.com/gpu.deploy.driver": "refused-by-version-matrix"})
    f = kinds(cluster([refused], [toolkit], policy_status=status))["OperandNotReady"]
    assert "cannot run its GPU" in f.summary and "DriverRefused" in f.fix, (f.summary, f.fix)
    # The operator's driver pod on the node is ready (its DaemonSet settled: its template stands in for it).
    ready = _driver_pod([], [{"name": "nvidia-driver-ctr", "ready": True, "state": {"running": {}}}])
    f = kinds(cluster([node("h-0")], [toolkit, ready], policy_status=status))["OperandNotReady"]
    assert "whose pod is ready: the validation itself fails" in f.summary, f.summary
    assert f.fix == f"read its log: kubectl logs -n {NS} nvidia-container-toolkit-daemonset-x -c driver-validation"
    c = cluster([node("h-0")], [toolkit], policy_status=status)
    c.daemon_pods = [DaemonPods(ready, ("h-0",))]
    assert "the validation itself fails" in kinds(c)["OperandNotReady"].summary
    # Not yet ready, or not known: the driver first, as before.
    assert "look at the driver (state-driver)" in kinds(cluster([node("h-0")], [toolkit], policy_status=status))[
        "OperandNotReady"].fix  # fmt: skip


def test_a_validator_waiting_for_a_toolkit_the_operator_does_not_deploy_is_not_sent_to_the_toolkit_state() -> None:
    """With toolkit.enabled false (or a node's gpu.deploy.container-toolkit false) the operator deploys no container
    toolkit there: the host's runtime must run the validator's toolkit-validation (nvidia-smi through the nvidia
    runtime). doctor said it "waits for the container toolkit (state-container-toolkit)" and to look at that state
    first, which has no pod; as for driver-validation with the driver disabled, it names the host's toolkit now."""
    done = {"terminated": {"exitCode": 0}}
    validator = _validator([{"name": "driver-validation", "state": done},
                            {"name": "toolkit-validation", "state": {"running": {}}}])  # fmt: skip
    status = {"state": "notReady", "states": [{"name": "state-operator-validation", "state": "notReady",
                                               "message": "1 of 1 pods unavailable"}]}  # fmt: skip
    f = _not_ready_under(validator, status, {"toolkit": {"enabled": False}})
    assert "state-container-toolkit" not in f.summary + f.fix, (f.summary, f.fix)
    assert "waits for the NVIDIA Container Toolkit installed on the host (toolkit.enabled is false" in f.summary
    assert "nvidia-ctk runtime configure" in f.fix, f.fix
    host = node("h-0", labels={"nvidia.com/gpu.deploy.container-toolkit": "false"})
    f = kinds(cluster([host], [validator], policy_status=status))["OperandNotReady"]
    assert "on the host (nvidia.com/gpu.deploy.container-toolkit=false" in f.summary, f.summary
    # Deployed by the operator: its state, as before.
    f = kinds(cluster([node("h-0")], [validator], policy_status=status))["OperandNotReady"]
    assert "look at the container toolkit (state-container-toolkit)" in f.fix, f.fix
    # The validator's sandbox without the nvidia handler: the host's runtime too, not the toolkit's pod.
    sandbox = {"reason": "FailedCreatePodSandBox", "type": "Warning", "message": 'failed to get sandbox runtime: no '
               'runtime for "nvidia" is configured', "involvedObject": {"kind": "Pod", "namespace": NS,
                                                                       "name": "nvidia-operator-validator-x"}}
    creating = _validator([{"name": "driver-validation", "state": {"waiting": {"reason": "PodInitializing"}}}])
    c = cluster([node("h-0")], [creating], events=[sandbox], policy_status=status)
    c.snapshot.policies["cluster-policy"]["spec"] = {"toolkit": {"enabled": False}}
    f = kinds(c)["OperandNotReady"]
    assert "toolkit.enabled is false" in f.fix and "check its pod" not in f.fix, f.fix


def test_an_operand_pod_on_a_node_gone_notready_points_at_the_node() -> None:
    """Its containers still read ready (the kubelet stopped reporting); only its Ready condition is False."""
    plugin = {"kind": "Pod", "spec": {"nodeName": "h-0"},
              "metadata": {"name": "nvidia-device-plugin-daemonset-x", "namespace": NS,
                           "labels": {"nvidia.com/gpu-operator.state": "state-device-plugin"}},
              "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "False"}],
                         "containerStatuses": [{"name": "nvidia-device-plugin", "ready": True, "restartCount": 0,
                                                "state": {"running": {}}}]}}  # fmt: skip
    status = {"state": "notReady", "states": [{"name": "state-device-plugin", "state": "notReady",
                                               "message": "1 of 1 pods unavailable"}]}  # fmt: skip
    f = kinds(cluster([node("h-0")], [plugin], policy_status=status))["OperandNotReady"]
    assert "is node h-0 NotReady?" in f.summary and f.fix == "kubectl describe node h-0" and f.nodes == ("h-0",)


def test_a_sandbox_event_from_before_the_runtime_was_configured_does_not_hide_a_later_failure() -> None:
    """On a fresh node the validator pod is created before the toolkit configures the nvidia handler (REFERENCE
    §11), so it keeps a FailedCreatePodSandBox event after its sandbox came up. That event used to make doctor blame
    the runtime handler (CONTAINERD_CONFIG) for a later cuda-validation crash loop; it counts now only while no
    container has started, or when it is newer than the last container start."""
    inits = [{"name": "driver-validation", "state": {"terminated": {"exitCode": 0}}},
             {"name": "toolkit-validation", "state": {"terminated": {"exitCode": 0}}},
             {"name": "cuda-validation", "state": {"waiting": {"reason": "CrashLoopBackOff"}},
              "lastState": {"terminated": {"exitCode": 1}}}]  # fmt: skip
    validator = {"kind": "Pod", "spec": {"nodeName": "h-0"},
                 "metadata": {"name": "nvidia-operator-validator-x", "namespace": NS,
                              "labels": {"nvidia.com/gpu-operator.state": "state-operator-validation"}},
                 "status": {"phase": "Pending", "initContainerStatuses": inits}}  # fmt: skip
    sandbox = {"reason": "FailedCreatePodSandBox", "type": "Warning", "lastTimestamp": "2026-01-01T00:00:00Z",
               "involvedObject": {"kind": "Pod", "namespace": NS, "name": "nvidia-operator-validator-x"},
               "message": 'failed to get sandbox runtime: no runtime for "nvidia" is configured'}  # fmt: skip
    status = {"state": "notReady", "states": [{"name": "state-operator-validation", "state": "notReady",
                                               "message": "1 of 1 pods unavailable"}]}  # fmt: skip
    f = kinds(cluster([node("h-0")], [validator], events=[sandbox], policy_status=status))["OperandNotReady"]
    assert "cuda-validation" in f.summary and "CONTAINERD_CONFIG" not in f.fix, (f.summary, f.fix)
    # The sandbox failed again after the last container ran (a node rebooted with its runtime broken): it holds.
    inits[2]["lastState"]["terminated"]["finishedAt"] = "2025-12-31T23:59:00Z"
    f = kinds(cluster([node("h-0")], [validator], events=[sandbox], policy_status=status))["OperandNotReady"]
    assert "FailedCreatePodSandBox" in f.summary and "CONTAINERD_CONFIG" in f.fix, (f.summary, f.fix)


def test_gpus_not_advertised_and_unhealthy() -> None:
    bare = node("h-0", allocatable={"nvidia.com/gpu": "0"})
    bare["status"]["capacity"].pop("nvidia.com/gpu")
    assert "GPUsNotAdvertised" in kinds(cluster([bare], [pod("p", 1)]))
    sick = node("h-0", allocatable={"nvidia.com/gpu": "6"})
    assert kinds(cluster([sick], []))["GPUsUnhealthy"].severity == "warning"


@pytest.mark.parametrize(
    "labels",
    [
        # mig-manager pauses the device plugin for a MIG change (REFERENCE §4)
        {"nvidia.com/mig.config": "all-1g.10gb", "nvidia.com/mig.config.state": "pending",
         "nvidia.com/gpu.deploy.device-plugin": "paused-for-mig-change"},
        # the driver upgrade restarts the node's operand pods, the device plugin with them (REFERENCE §5)
        {"nvidia.com/gpu-driver-upgrade-state": "pod-restart-required"},
        # k8s-driver-manager pauses it while a new driver pod replaces the old driver
        {"nvidia.com/gpu.deploy.device-plugin": "paused-for-driver-upgrade"},
    ],
    ids=["mig-change", "driver-upgrade", "driver-restart"],
)  # fmt: skip
def test_gpus_of_a_disconnected_device_plugin_are_not_called_unhealthy(labels: dict[str, str]) -> None:
    """When a device plugin deregisters, the kubelet moves every device of its resource to the unhealthy set and
    keeps the capacity for endpointStopGracePeriod (5 min): capacity 8, allocatable 0 (kubernetes
    pkg/kubelet/cm/devicemanager/manager.go PluginDisconnected -> markResourceUnhealthy, GetCapacity). On every MIG
    change and driver upgrade of the node doctor called that 8 GPUs fallen off the bus (Xid 79 / ECC) and said to
    drain the node and reset or replace them. A node whose device plugin is paused or restarting is left out now."""
    n = node("h-0", allocatable={"nvidia.com/gpu": "0"}, labels=labels)
    found = kinds(cluster([n], []))
    assert "GPUsUnhealthy" not in found, found["GPUsUnhealthy"].summary + " / " + found["GPUsUnhealthy"].fix


def test_gpus_are_not_called_unhealthy_while_the_device_plugin_pod_restarts() -> None:
    """A device plugin pod restarting (a rollout, a crash) deregisters the same way; with a ready one the GPUs it
    does not advertise are unhealthy (an Xid)."""
    plugin = {"kind": "Pod", "spec": {"nodeName": "h-0"},
              "metadata": {"name": "nvidia-device-plugin-daemonset-x", "namespace": NS,
                           "labels": {"nvidia.com/gpu-operator.state": "state-device-plugin"}},
              "status": {"phase": "Running",
                         "containerStatuses": [{"name": "nvidia-device-plugin", "ready": False, "restartCount": 1,
                                                "state": {"running": {}}}]}}  # fmt: skip
    n = node("h-0", allocatable={"nvidia.com/gpu": "0"}, labels={"nvidia.com/gpu.deploy.device-plugin": "true"})
    assert "GPUsUnhealthy" not in kinds(cluster([n], [plugin]))
    plugin["status"]["containerStatuses"][0]["ready"] = True
    n["status"]["allocatable"]["nvidia.com/gpu"] = "6"
    assert "Xid" in kinds(cluster([n], [plugin]))["GPUsUnhealthy"].summary


def test_gpus_unhealthy_is_reported_for_mig_and_shared_resources_too() -> None:
    """REFERENCE §12 entry 3 (allocatable below capacity: an Xid) was read for nvidia.com/gpu only. Under the MIG
    strategy mixed the device plugin advertises nvidia.com/mig-<profile>, and with sharing renameByDefault
    nvidia.com/gpu.shared; an Xid marks those devices unhealthy too (k8s-device-plugin internal/rm/health.go ->
    ListAndWatch), and doctor stayed silent. Each GPU resource counts now, in its own units."""

    def advertising(name: str, labels: dict[str, str], resource: str, cap: str, alloc: str) -> dict[str, Any]:
        n = node(name, labels=labels)
        for key in ("capacity", "allocatable"):
            n["status"][key].pop("nvidia.com/gpu")
        n["status"]["capacity"][resource], n["status"]["allocatable"][resource] = cap, alloc
        return n

    mixed = advertising("m-0", {"nvidia.com/mig.strategy": "mixed"}, "nvidia.com/mig-1g.10gb", "56", "49")
    f = kinds(cluster([mixed], []))["GPUsUnhealthy"]
    assert "49 of its 56 nvidia.com/mig-1g.10gb" in f.summary and "7 nvidia.com/mig-1g.10gb device(s)" in f.summary
    shared = advertising("s-0", {"nvidia.com/gpu.replicas": "4", "nvidia.com/gpu.sharing-strategy": "time-slicing"},
                         "nvidia.com/gpu.shared", "32", "28")  # fmt: skip
    f = kinds(cluster([shared], []))["GPUsUnhealthy"]
    assert "4 nvidia.com/gpu.shared replica(s) (4 per GPU)" in f.summary and "GPU(s)" not in f.summary, f.summary
    # A profile the plugin no longer advertises after a layout change reads the same for 5 minutes: said so.
    mixed["status"]["capacity"]["nvidia.com/mig-3g.40gb"], mixed["status"]["allocatable"]["nvidia.com/mig-3g.40gb"] = (
        "2", "0")  # fmt: skip
    f = kinds(cluster([mixed], []))["GPUsUnhealthy"]
    assert "after a MIG layout or sharing change, nvidia.com/mig-3g.40gb is no longer advertised" in f.summary
    assert f.fix.startswith("if it lasts past 5 minutes, drain the node"), f.fix


def test_a_pending_pod_on_nodes_whose_gpus_are_all_unhealthy_is_not_told_the_device_plugin_is_down() -> None:
    """§12 entry 3: allocatable < capacity with an Xid (79 off the bus, 48/94/95 ECC): the device plugin runs and
    marked the GPUs unhealthy. Where every GPU of the GPU nodes is (a 1-GPU cloud node after an Xid 79), allocatable
    is 0, and the Pending pod's finding, printed first, was GPUsNotAdvertised: "the device plugin is not running or
    not ready on them", sending the admin to a plugin that did its job. It names the unhealthy GPUs now (an error:
    the pod cannot run), and the nodes whose plugin advertises nothing besides; not while the plugin is paused."""
    message = "0/1 nodes are available: 1 Insufficient nvidia.com/gpu."
    sick = node("g-0", gpus=1, allocatable={"nvidia.com/gpu": "0"})  # capacity 1, allocatable 0
    found = diagnose(cluster([sick], [unschedulable(pod("train", 1), message)]))
    mine = [f for f in found if f.object == "Pod default/train"]
    assert mine and found[0] is mine[0] and mine[0].kind == "AllGPUsUnhealthy", render_text(found)
    assert "not running or not ready" not in mine[0].summary, mine[0].summary
    assert "on g-0 the device plugin registered 1 (the capacity) but marked it unhealthy" in mine[0].summary
    assert mine[0].fix.startswith("drain g-0 and reset or replace the GPUs"), mine[0].fix
    # Beside a GPU node that advertises nothing: both named.
    bare = node("g-1")
    for key in ("capacity", "allocatable"):
        bare["status"][key].pop("nvidia.com/gpu")
    f = kinds(cluster([sick, bare], [unschedulable(pod("train", 1), message)]))["AllGPUsUnhealthy"]
    assert "g-1 has NVIDIA GPUs but advertises none" in f.summary and "device plugin on g-1" in f.fix, f
    assert f.nodes == ("g-0", "g-1")
    # The only node the pod selects: the others advertise GPUs.
    picky = unschedulable(pod("train", 1, nodeSelector={"kubernetes.io/hostname": "g-0"}), message)
    f = kinds(cluster([sick, node("g-2")], [picky]))["AllGPUsUnhealthy"]
    assert f.summary.startswith("no node the pod may use advertises") and "selector or affinity" in f.fix, f
    # A paused device plugin deregistered (capacity kept 5 minutes): not an Xid.
    paused = node("g-0", gpus=1, allocatable={"nvidia.com/gpu": "0"},
                  labels={"nvidia.com/gpu.deploy.device-plugin": "paused-for-driver-upgrade"})  # fmt: skip
    assert "AllGPUsUnhealthy" not in kinds(cluster([paused], [unschedulable(pod("train", 1), message)]))


def test_a_gpu_node_that_advertises_no_gpu_is_named_when_the_others_are_full() -> None:
    """h-0 has 8 GPUs (NFD, gpu.present, GFD's labels) but advertises no nvidia.com/gpu (its device plugin found
    none: §12 entry 1's cause, on one node); h-1's 8 are in use. A pending 1-GPU pod was told only that every
    eligible node's GPUs are allocated ("wait ... add GPU nodes"), and nothing named h-0: GPUsNotAdvertised fires
    only when no node advertises any. The stack names it now, and so does the pod's shortage."""
    broken = node("h-0")
    broken["status"]["allocatable"].pop("nvidia.com/gpu")
    broken["status"]["capacity"].pop("nvidia.com/gpu")
    busy = pod("train", 8, node_name="h-1")
    found = kinds(cluster([broken, node("h-1")], [busy, pod("waiting", 1)]))
    f = found["GPUsNotAdvertisedOnNode"]
    assert f.severity == "warning" and f.nodes == ("h-0",) and "h-0 has NVIDIA GPUs (8)" in f.summary, f.summary
    assert "spec.nodeName=h-0" in f.fix, f.fix
    short = found["InsufficientGPU"]
    assert "h-0 has NVIDIA GPUs but advertises none" in short.summary and "h-0" in short.nodes, short.summary
    # A converged node advertising MIG devices or renamed shared GPUs advertises GPUs.
    mig = node("h-0", labels={"nvidia.com/mig.strategy": "mixed"}, allocatable={"nvidia.com/mig-1g.10gb": "56"})
    mig["status"]["allocatable"].pop("nvidia.com/gpu")
    assert "GPUsNotAdvertisedOnNode" not in kinds(cluster([mig], []))


@pytest.mark.parametrize(
    "labels, extra",
    [
        ({"nvidia.com/gpu.deploy.device-plugin": "false"}, {}),  # opted out (DevicePluginOptedOut's case)
        ({"nvidia.com/gpu.deploy.operands": "false"}, {}),
        ({"nvidia.com/gpu.workload.config": "vm-passthrough"}, {"sandboxWorkloads": {"enabled": True}}),
        ({"nvidia.com/gpu.deploy.device-plugin": "paused-for-mig-change", "nvidia.com/mig.config.state": "pending"},
         {}),
        ({"nvidia.com/gpu-driver-upgrade-state": "validation-required"}, {}),
        ({"nvidia.com/mig.config.state": "failed"}, {}),  # MIGChangeFailed names it
        ({}, {"devicePlugin": {"enabled": False}}),  # no device plugin of ours (another one, or DRA)
    ],
    ids=["opted-out", "no-operands", "vm", "mig-change", "upgrade", "mig-failed", "device-plugin-disabled"],
)  # fmt: skip
def test_a_gpu_node_that_advertises_nothing_for_a_reason_is_not_called_unadvertised(
    labels: dict[str, str], extra: dict[str, Any]
) -> None:
    """Where the operator runs no device plugin for containers on purpose, or it is paused or restarting, or another
    finding names the cause, advertising nothing is no finding of its own."""
    n = node("h-0")
    n["status"]["allocatable"].pop("nvidia.com/gpu")
    n["status"]["capacity"].pop("nvidia.com/gpu")
    assert "GPUsNotAdvertisedOnNode" in kinds(cluster([n, node("h-1")], []))
    n["metadata"]["labels"].update(labels)
    c = cluster([n, node("h-1")], [])
    c.snapshot.policies["cluster-policy"]["spec"] = extra
    assert "GPUsNotAdvertisedOnNode" not in kinds(c)


def test_a_gpu_node_that_advertises_nothing_is_left_to_the_finding_that_names_its_cause() -> None:
    """NotReady, being deleted, or its first operand not ready (that finding names the cause): no second finding."""

    def advertising_nothing(name: str) -> dict[str, Any]:
        n = node(name)
        for key in ("allocatable", "capacity"):
            n["status"][key].pop("nvidia.com/gpu")
        return n

    gone, deleted, starting, plain = (advertising_nothing(n) for n in ("h-0", "h-2", "h-3", "h-4"))
    gone["status"]["conditions"] = [{"type": "Ready", "status": "Unknown"}]
    deleted["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    toolkit = {"kind": "Pod", "spec": {"nodeName": "h-3"},
               "metadata": {"name": "nvidia-container-toolkit-daemonset-x", "namespace": NS,
                            "labels": {"nvidia.com/gpu-operator.state": "state-container-toolkit"}},
               "status": {"phase": "Pending",
                          "initContainerStatuses": [{"name": "driver-validation", "state": {"running": {}}}]}}
    found = diagnose(cluster([gone, node("h-1"), deleted, starting, plain], [toolkit]))
    assert [f.nodes for f in found if f.kind == "GPUsNotAdvertisedOnNode"] == [("h-4",)], [
        (f.kind, f.nodes) for f in found]  # fmt: skip
    assert [f.nodes for f in found if f.kind == "OperandNotReady"] == [("h-3",)]


# The MIG gate's wait (README "MIG layouts"): mig-manager held by the operator, which wrote `pending` itself; no
# operand paused, nothing applied, the MIGConfig condition naming the pods.
_GATE_WAIT = {
    "nvidia.com/mig.config": "all-1g.10gb",
    "nvidia.com/mig.config.state": "pending",
    mig.MANAGER_LABEL: mig.PAUSED,
    mig.APPROVED: "all-disabled",
    "nvidia.com/gpu.deploy.device-plugin": "true",
}
_WAIT_CONDITION = {
    "type": "MIGConfig", "status": "False", "reason": "WaitingForGPUWorkloads",
    "message": "node h-0: layout 'all-1g.10gb' waits: 1 GPU pod(s) running: default/train "
               "(driver.upgradePolicy.drain.enable allows eviction)",
}  # fmt: skip


def test_doctor_does_not_call_the_gates_wait_a_mig_change_in_progress_with_operands_paused() -> None:
    """While GPU pods run, the gate holds mig-manager and writes mig.config.state=pending itself: nothing is applied
    and no operand is paused. doctor said "the MIG manager is applying layout ...; operands are paused" with the fix
    "wait for nvidia.com/mig.config.state=success", which never comes until the GPU pods go. Now MIGChangeWaiting
    names the pods (from the MIGConfig condition) and the way out."""
    n = node("h-0", labels=_GATE_WAIT)
    c = cluster([n], [pod("train", 8, node_name="h-0")],
                policy_status={"state": "ready", "states": [], "conditions": [_WAIT_CONDITION]})  # fmt: skip
    found = [f for f in diagnose(c) if "h-0" in f.nodes and "MIG" in f.kind]
    assert [f.kind for f in found] == ["MIGChangeWaiting"], found
    text = f"{found[0].summary} {found[0].fix}"
    assert "operands are paused" not in text and "is applying layout" not in text, text
    assert "default/train" in found[0].summary and "drain.enable" in found[0].fix, text
    # A pending of mig-manager's own (its operands paused, mig-manager not held) is still a change in progress.
    n = node("h-0", labels={**_GATE_WAIT, mig.MANAGER_LABEL: "true", mig.APPROVED: "all-1g.10gb",
                            "nvidia.com/gpu.deploy.device-plugin": mig.PAUSED})  # fmt: skip
    assert "MIGChangeInProgress" in kinds(cluster([n], []))


def test_doctor_still_reports_unhealthy_gpus_on_a_node_whose_mig_change_waits() -> None:
    """Any mig.config.state=pending counted as the device plugin paused or restarting, so GPUsUnhealthy was
    suppressed; under the gate's wait the device plugin runs as before (REFERENCE §4: operands are paused only
    while mig-manager works), so GPUs it marks unhealthy are a finding, for as long as the GPU pods hold the change."""
    n = node("h-0", labels=_GATE_WAIT, allocatable={"nvidia.com/gpu": "6"})
    c = cluster([n], [pod("train", 6, node_name="h-0")],
                policy_status={"state": "ready", "states": [], "conditions": [_WAIT_CONDITION]})  # fmt: skip
    assert "GPUsUnhealthy" in kinds(c)


def test_doctor_reports_a_node_whose_requested_mig_layout_the_operator_refused() -> None:
    """A layout the GPU cannot take (an H200 profile on an H100) is refused by the gate: mig-manager held, MIGConfig
    False/LayoutRefused, mig.config.state left as it was (README "MIG layouts"). doctor read neither the condition
    nor the held label and reported nothing, though the node never gets the layout its label names."""
    labels = {
        "nvidia.com/mig.config": "all-1g.18gb",
        "nvidia.com/mig.config.state": "success",
        mig.MANAGER_LABEL: mig.PAUSED,
        mig.APPROVED: "all-disabled",
    }
    cond = {"type": "MIGConfig", "status": "False", "reason": "LayoutRefused",
            "message": "node h-0: layout 'all-1g.18gb' is not valid for H100 80GB, H800 80GB, A100 80GB, A800 80GB "
                       "(the default layouts)"}  # fmt: skip
    c = cluster([node("h-0", labels=labels)], [], policy_status={"state": "ready", "states": [], "conditions": [cond]})
    f = kinds(c)["MIGLayoutRefused"]
    assert f.severity == "error" and f.nodes == ("h-0",), f
    assert "'all-1g.18gb'" in f.summary and "is not valid for H100 80GB" in f.summary, f.summary
    assert "gpu-operator mig layouts --node h-0" in f.fix, f.fix
    # Past the nodes the condition names, or a wait's pending turned failed by the refusal: still this finding.
    c = cluster([node("h-0", labels={**labels, "nvidia.com/mig.config.state": "failed"})], [])
    assert [f.kind for f in diagnose(c) if "MIG" in f.kind] == ["MIGLayoutRefused"]


def test_a_gpu_resource_name_the_nodes_do_not_advertise_is_not_blamed_on_the_device_plugin() -> None:
    """With renameByDefault (REFERENCE §4) nodes advertise nvidia.com/gpu.shared, not nvidia.com/gpu; a pod asking
    for the name that is not there was told the device plugin was not running (§12 entry 1 is "no node advertises
    any"). The finding names the resource the nodes advertise, with the renamed limit."""
    renamed = node("h-0", labels={"nvidia.com/gpu.replicas": "4", "nvidia.com/gpu.sharing-strategy": "time-slicing"})
    for key in ("allocatable", "capacity"):
        renamed["status"][key]["nvidia.com/gpu.shared"] = renamed["status"][key].pop("nvidia.com/gpu")
    p = pod("p", 1, limits={"cpu": "1"})
    found = kinds(cluster([renamed], [p]))
    assert set(found) == {"ResourceNameMismatch"}, {k: f.summary for k, f in found.items()}
    f = found["ResourceNameMismatch"]
    assert "renameByDefault" in f.summary and "nvidia.com/gpu.shared" in f.fix and f.nodes == ("h-0",)
    assert yaml.safe_load(f.fix_yaml) == {"spec": {"containers": [
        {"name": "main", "resources": {"limits": {"nvidia.com/gpu.shared": "1", "cpu": "1"}}}]}}  # fmt: skip
    # And the other way round: gpu.shared asked where sharing does not rename.
    found = kinds(cluster([node("h-0")], [pod("p", resource="nvidia.com/gpu.shared")]))
    assert set(found) == {"ResourceNameMismatch"} and "request nvidia.com/gpu instead" in found[
        "ResourceNameMismatch"].fix  # fmt: skip


def test_a_resource_name_is_not_blamed_when_the_pods_own_gpu_nodes_advertise_nothing() -> None:
    """ResourceNameMismatch looked for another GPU resource on every node: one MIG-mixed A100 advertising
    nvidia.com/mig-1g.5gb made a pod that asks for nvidia.com/gpu on the T4 nodes (whose device plugin is down:
    nothing advertised) get "the resource name is wrong, the device plugin runs", with a corrected YAML requesting a
    MIG device those nodes never have. Only the nodes the pod may use count, and only when each of their GPU nodes
    advertises some GPU resource; else the device plugin is the cause (§12 entry 1)."""
    mig_node = node("a-0", product="NVIDIA-A100-SXM4-40GB", labels={"nvidia.com/mig.strategy": "mixed"},
                    allocatable={"nvidia.com/gpu": "0", "nvidia.com/mig-1g.5gb": "56"})  # fmt: skip
    mig_node["status"]["capacity"] = {**mig_node["status"]["capacity"], "nvidia.com/gpu": "0",
                                      "nvidia.com/mig-1g.5gb": "56"}  # fmt: skip
    t4 = [node(f"t-{i}", gpus=4, product="Tesla-T4", allocatable={"nvidia.com/gpu": "0"}) for i in range(3)]
    for n in t4:
        n["status"]["capacity"].pop("nvidia.com/gpu")
    on_t4 = pod("infer", 1, nodeSelector={"nvidia.com/gpu.product": "Tesla-T4"})
    down = {"GPUsNotAdvertised", "GPUsNotAdvertisedOnNode"}  # the pod's finding, and the stack's on each T4 node
    assert set(kinds(cluster([mig_node, *t4], [on_t4]))) == down
    # No selector: the T4 nodes are among its nodes and advertise nothing either.
    assert set(kinds(cluster([mig_node, *t4], [pod("infer", 1)]))) == down
    # Selecting the A100: its name is the one to fix.
    on_a100 = pod("infer", 1, nodeSelector={"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-40GB"})
    f = kinds(cluster([mig_node, *t4], [on_a100]))["ResourceNameMismatch"]
    assert f.nodes == ("a-0",) and "request nvidia.com/mig-1g.5gb instead" in f.fix
    # A node whose taint the pod does not tolerate offers it nothing: the renamed GPUs of the one it may use do.
    shared = node("s-0", labels={"nvidia.com/gpu.replicas": "4", "nvidia.com/gpu.sharing-strategy": "time-slicing"})
    for key in ("allocatable", "capacity"):
        shared["status"][key]["nvidia.com/gpu.shared"] = shared["status"][key].pop("nvidia.com/gpu")
    mig_node["spec"]["taints"] = [{"key": "dedicated", "value": "mig", "effect": "NoSchedule"}]
    f = kinds(cluster([mig_node, shared], [pod("infer", 1)]))["ResourceNameMismatch"]
    assert f.nodes == ("s-0",) and "request nvidia.com/gpu.shared instead" in f.fix
    # GPU nodes that all hold the pod by their taints, beside untainted CPU workers: still the name.
    cpu = {"kind": "Node", "metadata": {"name": "cpu-0", "labels": {}}, "status": {"allocatable": {"cpu": "8"}}}
    shared["spec"]["taints"] = [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]
    f = kinds(cluster([shared, cpu], [pod("infer", 1)]))["ResourceNameMismatch"]
    assert f.nodes == ("s-0",) and "request nvidia.com/gpu.shared instead" in f.fix


def test_filters_by_pod_and_node() -> None:
    c = cluster([node("h-0"), node("h-1")], [pod("big", 64), pod("x", ns="other", image="nvidia/cuda:12.8.0-base")])
    assert {f.kind for f in diagnose(c, pod="big", namespace="default")} == {"GPURequestExceedsEveryNode"}
    assert {f.kind for f in diagnose(c, namespace="other")} == {"CUDAImageWithoutGPU"}
    assert diagnose(c, node="h-1")  # the big pod's table names h-1


def test_no_cluster_policy_with_gpu_nodes() -> None:
    assert kinds(cluster([node("h-0")], [], policy=False))["NoClusterPolicy"].severity == "error"


def _operator_pod(name: str, state: dict[str, Any], phase: str = "Pending", **status: Any) -> dict[str, Any]:
    """The operator's own pod as the chart makes it (selector labels app / app.kubernetes.io/component gpu-operator,
    managed-by Helm), in the operator's namespace, its container in `state`."""
    return {
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NS,
                     "labels": {"app": "gpu-operator", "app.kubernetes.io/component": "gpu-operator",
                                "app.kubernetes.io/managed-by": "Helm", "pod-template-hash": "7d9f8c6b5"},
                     "ownerReferences": [{"kind": "ReplicaSet", "name": "gpu-operator-7d9f8c6b5",
                                          "controller": True}]},
        "spec": {"nodeName": "cpu-0", "containers": [{"name": "gpu-operator",
                                                       "image": "registry.example.com/gpu-operator:v26.7.0"}]},
        "status": {"phase": phase, "containerStatuses": [{
            "name": "gpu-operator", "ready": False, "restartCount": 0, "state": state, **status}]},
    }  # fmt: skip


def test_an_operator_pod_that_does_not_run_is_named_not_the_device_plugin() -> None:
    """The operator's own pod cannot start (its image cannot be pulled: an air-gapped registry, a mirror without the
    tag). It labels no node and creates no DaemonSet, so no GPU is advertised and every GPU pod waits on "Insufficient
    nvidia.com/gpu". doctor read the pod but no finding looked at it: it said the device plugin was not running
    (GPUsNotAdvertised, "see the operand findings", of which there were none) and sent the admin to `kubectl get pods
    -l app=nvidia-device-plugin-daemonset`, which lists nothing. The operator's pod is the first finding now, with
    why it does not run and the chart values to fix; the pod's finding and the node's point at it."""
    gpu = node("g-0")
    for key in ("capacity", "allocatable"):
        gpu["status"][key].pop("nvidia.com/gpu")
    name = "gpu-operator-7d9f8c6b5-x2k4q"
    operator = _operator_pod(name, {"waiting": {"reason": "ImagePullBackOff", "message":
                                                'Back-off pulling image "registry.example.com/gpu-operator:v26.7.0"'}})
    failed = {"kind": "Event", "type": "Warning", "reason": "Failed",
              "involvedObject": {"kind": "Pod", "namespace": NS, "name": name},
              "message": 'Failed to pull image "registry.example.com/gpu-operator:v26.7.0": rpc error: code = '
                         'NotFound desc = failed to pull and unpack image: not found'}  # fmt: skip
    train = unschedulable(pod("train", 1), "0/1 nodes are available: 1 Insufficient nvidia.com/gpu.")
    c = cluster([gpu], [train, operator], events=[failed])
    c.snapshot.policies["cluster-policy"].pop("status")  # the operator never ran: no status
    found = diagnose(c)
    first = found[0]
    assert first.kind == "OperatorNotRunning" and first.object == f"Pod {NS}/{name}", render_text(found)
    assert "cannot pull image registry.example.com/gpu-operator:v26.7.0: it does not exist" in first.summary
    assert "operator.repository, operator.image and operator.version" in first.fix, first.fix
    assert first.nodes == ("g-0",)  # it deploys nothing there: `--node g-0` shows it
    pending = next(f for f in found if f.kind == "GPUsNotAdvertised")
    assert "OperatorNotRunning" in pending.fix and "see the operand findings" not in pending.fix, pending.fix
    assert "GPUsNotAdvertisedOnNode" not in {f.kind for f in found}  # its device plugin is not the cause
    assert [f.kind for f in diagnose(c, node="g-0")][0] == "OperatorNotRunning"
    # A crash loop: its message quoted, its log the fix (not the driver's causes, whatever the words).
    crash = _operator_pod(name, {"waiting": {"reason": "CrashLoopBackOff"}}, "Running", restartCount=7,
                          lastState={"terminated": {"exitCode": 1, "message": "OSError: Address already in use"}})
    f = kinds(cluster([node("g-0")], [crash]))["OperatorNotRunning"]
    assert "crash-looping (7 restarts): OSError: Address already in use" in f.summary, f.summary
    assert f.fix == f"read its log and the previous run's: kubectl logs -n {NS} {name} -c gpu-operator --previous"
    # Another replica Ready (a follower, or the old pod of a rollout), or an evicted pod beside a Ready one: none.
    ready = _operator_pod("gpu-operator-7d9f8c6b5-a1b2c", {"running": {}}, "Running")
    ready["status"]["containerStatuses"][0]["ready"] = True
    evicted = _operator_pod("gpu-operator-7d9f8c6b5-e0e0e", {"terminated": {"exitCode": 137}}, "Failed")
    assert "OperatorNotRunning" not in kinds(cluster([node("g-0")], [crash, ready]))
    assert "OperatorNotRunning" not in kinds(cluster([node("g-0")], [evicted, ready]))
    # Not scheduled: the scheduler's word, and the chart values that place it.
    unplaced = unschedulable(_operator_pod(name, {}), "0/3 nodes are available: 3 node(s) didn't match Pod's node "
                             "affinity/selector.")  # fmt: skip
    del unplaced["spec"]["nodeName"]
    unplaced["status"]["containerStatuses"] = []
    f = kinds(cluster([node("g-0")], [unplaced]))["OperatorNotRunning"]
    assert "not scheduled: 0/3 nodes are available" in f.summary and "operator.nodeSelector" in f.fix, f


def test_gpu_nodes_tainted_nvidia_com_gpu_without_nfd_labels_name_the_nfd_workers_toleration() -> None:
    # NFD's chart gives its worker no toleration: on GPU nodes tainted nvidia.com/gpu (GKE's) it never runs, so
    # they carry no NFD label while the CPU nodes do, and the status only says "no GPU nodes found".
    toleration = 'worker.tolerations=[{"key":"nvidia.com/gpu","operator":"Exists","effect":"NoSchedule"}]'
    cpu = {"kind": "Node", "metadata": {"name": "cpu-0", "labels": {
        "feature.node.kubernetes.io/cpu-cpuid.AVX": "true"}}, "status": {}}  # fmt: skip
    gpus = [{"kind": "Node", "metadata": {"name": f"gpu-{i}", "labels": {}}, "status": {},
             "spec": {"taints": [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]}}
            for i in range(2)]  # fmt: skip
    found = kinds(cluster([cpu, *gpus], []))["NFDLabelsMissing"]
    assert found.nodes == ("gpu-0", "gpu-1") and "gpu-0, gpu-1" in found.summary
    assert toleration in found.fix and "helm upgrade nfd" in found.fix
    found = kinds(cluster(gpus, []))["NFDLabelsMissing"]  # no NFD label anywhere: install it, tolerating the taint
    assert toleration in found.fix and "helm install nfd" in found.fix and found.nodes == ("gpu-0", "gpu-1")
    assert "NFDLabelsMissing" not in kinds(cluster([cpu, {**gpus[0], "spec": {}}], []))  # an untainted CPU node


def test_quantities() -> None:
    assert quantity("500m") == quantity("0.5") and quantity("32Gi") == 32 * 2**30 and quantity("1k") == 1000


EXERCISE3 = {
    "metadata": {"name": "train", "namespace": "default", "labels": {"app": "train"}},
    "spec": {"nodeSelector": {"nvidia.com/gpu.product": H100}, "containers": [{"name": "t", "image": "x",
             "resources": {"limits": {"nvidia.com/gpu": "2", "memory": "32Gi", "cpu": "8"}}}]},
}  # fmt: skip


def test_capacity_exercise_3() -> None:
    views = nodes_with_pods([node("h-0"), node("h-1"), node("l4", gpus=1, product="NVIDIA-L4")], [])
    result = capacity.plan(EXERCISE3, 10, views)
    assert result.fits_now == 8 and result.placements() == [("h-0", 4), ("h-1", 4)]
    assert result.per_new_node == 4 and result.extra_nodes == 1
    assert "excluded: node selector" in {f.node: f.why for f in result.fits}["l4"]
    text = capacity.render(result, "train")
    assert "fit now: 8 of 10" in text and "extra nodes needed: 1" in text


def test_capacity_anti_affinity_taints_and_profiles() -> None:
    spread = json.loads(json.dumps(EXERCISE3))
    spread["spec"]["affinity"] = {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": {"app": "train"}}}]}}  # fmt: skip
    tainted = node("h-1", spec={"taints": [{"key": "dedicated", "value": "x", "effect": "NoSchedule"}]})
    views = nodes_with_pods([node("h-0"), tainted], [])
    result = capacity.plan(spread, 10, views)
    assert result.fits_now == 1 and result.per_new_node == 1 and result.extra_nodes == 9
    profile = capacity.parse_profile(f"gpus=8,cpu=96,memory=1Ti,label.nvidia.com/gpu.product={H100}", views)
    assert capacity.plan(EXERCISE3, 10, views, profile).extra_nodes == 2  # h-0 takes 4 (h-1 tainted): 6 left
    small = capacity.parse_profile("gpus=8,cpu=8,memory=1Ti", views)
    assert capacity.plan(EXERCISE3, 10, views, small).extra_nodes is None  # no gpu.product label: never matches
    assert "extra nodes needed: impossible with a new node profile gpus=8," in capacity.render(
        capacity.plan(EXERCISE3, 10, views, small), "train"
    )
    extended = capacity.parse_profile("nvidia.com/mig-1g.10gb=7,hugepages-2Mi=1Gi,pods=50,taint.a=b:NoExecute", views)
    assert extended.allocatable == {"nvidia.com/mig-1g.10gb": 7, "hugepages-2Mi": 2**30, "pods": 50}


def required(term: dict[str, Any]) -> dict[str, Any]:
    return {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term]}}


def anti_affinity(app: str, topology: str = "kubernetes.io/hostname", **term: Any) -> dict[str, Any]:
    return required({"topologyKey": topology, "labelSelector": {"matchLabels": {"app": app}}, **term})


def test_capacity_keeps_copies_off_a_node_whose_pod_repels_them() -> None:
    """kube-scheduler's InterPodAffinity filter checks both ways: a node is refused too when a pod already there has
    a required anti-affinity term matching the incoming pod (satisfyExistingPodsAntiAffinity). capacity read only
    the incoming pod's terms, so with an exclusive pod on h-0 repelling app=train it counted 4 train copies there
    and "extra nodes needed: 0", where the scheduler places none on h-0 and 1 more node is needed."""
    exclusive = pod("exclusive", node_name="h-0", affinity=anti_affinity("train"))
    views = nodes_with_pods([node("h-0"), node("h-1")], [exclusive])
    result = capacity.plan(EXERCISE3, 8, views)
    fits = {f.node: f for f in result.fits}
    assert fits["h-0"].fits == 0 and result.fits_now == 4 and result.extra_nodes == 1, capacity.render(result, "t")
    assert fits["h-0"].why == "excluded: pod default/exclusive there repels it (its required anti-affinity matches " \
        "the pod)"
    assert capacity.plan(EXERCISE3, 8, views, capacity.parse_profile("h-0", views)).per_new_node == 4  # empty
    # another namespace's pod repels only its own namespace's pods (unless its term names more); another topology
    # is not modelled, but noted
    elsewhere = pod("exclusive", ns="team-b", node_name="h-0", affinity=anti_affinity("train"))
    assert capacity.plan(EXERCISE3, 8, nodes_with_pods([node("h-0"), node("h-1")], [elsewhere])).fits_now == 8
    zone = pod("exclusive", node_name="h-0", affinity=anti_affinity("train", "topology.kubernetes.io/zone"))
    result = capacity.plan(EXERCISE3, 8, nodes_with_pods([node("h-0"), node("h-1")], [zone]))
    assert result.fits_now == 8 and any("other than kubernetes.io/hostname" in n for n in result.notes)


def test_capacity_reads_the_namespace_selector_and_empty_selectors_of_anti_affinity() -> None:
    """A PodAffinityTerm applies to its namespaces and those its namespaceSelector selects, to the pod's own only
    when both are unset, and `namespaceSelector: {}` selects every namespace (k8s.io/api core/v1 PodAffinityTerm;
    kube-scheduler framework newAffinityTerm). capacity ignored namespaceSelector, so a train pod that must not share
    a node with an app=train pod of any namespace was counted on h-0, where team-b's runs. A `labelSelector: {}`
    matched no pod, where it matches every one (LabelSelectorAsSelector); a missing one matches none."""
    views = nodes_with_pods([node("h-0"), node("h-1")], [pod("train", 2, ns="team-b", node_name="h-0")])

    def fits(affinity: dict[str, Any]) -> dict[str, int]:
        train = {**EXERCISE3, "spec": {**EXERCISE3["spec"], "affinity": affinity}}
        return {f.node: f.fits for f in capacity.plan(train, 8, views).fits}

    assert fits(anti_affinity("train", namespaceSelector={})) == {"h-0": 0, "h-1": 1}
    assert fits(anti_affinity("train")) == {"h-0": 1, "h-1": 1}  # its own namespace only
    assert fits(anti_affinity("train", namespaces=["team-b"])) == {"h-0": 0, "h-1": 4}  # copies are in default
    every = {"topologyKey": "kubernetes.io/hostname", "labelSelector": {}}
    assert fits(required({**every, "namespaces": ["team-b"]})) == {"h-0": 0, "h-1": 4}
    assert fits(required(every)) == {"h-0": 1, "h-1": 1}  # every pod of its namespace: its copies too
    no_selector = {"topologyKey": "kubernetes.io/hostname", "namespaces": ["team-b"]}
    assert fits(required(no_selector)) == {"h-0": 3, "h-1": 4}  # h-0: 6 GPUs free
    # a namespaceSelector with requirements needs the namespaces' labels, not read: noted
    labelled = {**EXERCISE3, "spec": {**EXERCISE3["spec"], "affinity": anti_affinity(
        "train", namespaceSelector={"matchLabels": {"team": "b"}})}}  # fmt: skip
    assert any("namespaceSelector other than {}" in n for n in capacity.plan(labelled, 8, views).notes)
    assert not any("namespaceSelector" in n for n in capacity.plan(EXERCISE3, 8, views).notes)


@pytest.mark.parametrize(
    ("profile", "message"),
    [("gpus=8,cpu=96,memory=2048GB", "'memory=2048GB': '2048GB' is not a quantity"),
     ("gpus=8,cpus=96,memory=2048Gi", "'cpus' is not a resource"),
     ("gpus=eight,cpu=96,memory=2048Gi", "'gpus=eight': 'eight' is not a quantity"),
     ("gpus=-8", "'gpus=-8': '-8' is not a quantity"),
     ("gpus=8,taint.a=b:NoSchedul", "'taint.a=b:NoSchedul': the taint's effect must be one of"),
     ("gpus=1.5", "'gpus=1.5': '1.5' is not a whole number (gpus come whole)"),
     ("gpus=8,nvidia.com/mig-1g.10gb=500m", "'nvidia.com/mig-1g.10gb=500m': '500m' is not a whole number"),
     ("gpus=8,pods=10.5", "'pods=10.5': '10.5' is not a whole number")],
)  # fmt: skip
def test_capacity_refuses_a_node_profile_it_would_misread(
    profile: str, message: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A typo in --node-profile was read as 0 (or as a made-up resource): "impossible", exit 0. `gpus=1.5` (physical
    GPUs, which come whole) was planned as a node with 1.5 GPUs; so were fractions of pods and extended resources,
    which the API server refuses on a node (IsIntegerResourceName). CPU, memory and hugepages may be fractions."""
    from gpu_operator.cli import main
    from gpu_operator.kube import Kube
    from support import REPO

    monkeypatch.chdir(REPO)
    full = FakeKube([node("h-0")], [pod("a", 8, node_name="h-0")])
    monkeypatch.setattr(Kube, "connect", classmethod(lambda cls, *a, **k: full))
    command = ["capacity", "--pod", "manifests/samples/exercise3-training-job.yaml", "--count", "2", "--node-profile"]
    label = f",label.nvidia.com/gpu.product={H100}"
    assert main([*command, "gpus=8,cpu=95500m,memory=2047.5Gi,hugepages-2Mi=0.5Gi" + label]) == 0
    assert "extra nodes needed: 1 × profile gpus=8," in capsys.readouterr().out
    assert main([*command, profile + label]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(f"error: --node-profile: {message}") and len(err.splitlines()) == 1, err


@pytest.mark.parametrize(
    ("count", "message"),
    [("-3", "must be at least 1, not -3"), ("0", "must be at least 1, not 0"), ("two", "invalid int value: 'two'")],
)
def test_capacity_refuses_a_count_below_one(
    count: str, message: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--count -3` printed `fit now: -3 of -3` and `extra nodes needed: 0`, exit 0 (and `--count 0` answered a
    question that means nothing); every other bad input of capacity exits 2 naming it."""
    from gpu_operator.cli import main
    from gpu_operator.kube import Kube
    from support import REPO

    monkeypatch.chdir(REPO)
    monkeypatch.setattr(Kube, "connect", classmethod(lambda cls, *a, **k: FakeKube([node("h-0")], [])))
    with pytest.raises(SystemExit) as info:
        main(["capacity", "--pod", "manifests/samples/exercise3-training-job.yaml", "--count", count])
    out, err = capsys.readouterr()
    assert info.value.code == 2 and out == "" and err.endswith(f"error: argument --count: {message}\n"), err


@pytest.mark.parametrize(
    ("resources", "message"),
    [({"limits": {"nvidia.com/gpu": 2}, "requests": {"nvidia.com/gpu": 1}},
      'container main: spec.containers[0].resources.requests: Invalid value: "1": must be equal to nvidia.com/gpu '
      "limit of 2"),
     ({"requests": {"nvidia.com/gpu": 1, "cpu": 1}},
      "container main: spec.containers[0].resources.limits: Required value: Limit must be set for non overcommitable "
      "resources (nvidia.com/gpu is requested without a limit)"),
     ({"limits": {"nvidia.com/mig-1g.10gb": "500m"}},
      'container main: spec.containers[0].resources.limits[nvidia.com/mig-1g.10gb]: Invalid value: "500m": must be '
      "an integer")],
    ids=["request-not-limit", "no-limit", "fraction"],
)  # fmt: skip
def test_capacity_refuses_a_pod_the_api_server_refuses(
    resources: dict[str, Any], message: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """Seed §11 Question 3 (a GPU request of 1 under a limit of 2): the API server refuses such a pod at creation
    (REFERENCE §12 entries 4 and 5), but `capacity --pod` planned it from the request alone, "fit now: 4 of 4",
    exit 0. It now refuses it with the API server's words, naming the container, exit 2."""
    from gpu_operator.cli import main
    from gpu_operator.kube import Kube

    p = pod("exclusive", limits={"cpu": 1})
    p["spec"]["containers"][0]["resources"] = resources
    path = tmp_path / "pod.yaml"
    path.write_text(yaml.safe_dump(p))
    monkeypatch.setattr(Kube, "connect", classmethod(lambda cls, *a, **k: FakeKube([node("h-0")], [])))
    assert main(["capacity", "--pod", str(path), "--count", "4"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(f"error: {path}: the API server refuses this pod: {message}"), err
    # Equal, or a limit alone (the request defaults to it): planned.
    p["spec"]["containers"][0]["resources"] = {"limits": {"nvidia.com/gpu": 2}, "requests": {"nvidia.com/gpu": "2"}}
    path.write_text(yaml.safe_dump(p))
    assert main(["capacity", "--pod", str(path), "--count", "4"]) == 0
    assert "fit now: 4 of 4" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("resources", "message"),
    [("{limits: {nvidia.com/gpu: 1}, requests: {1: 2}}",
      'spec.containers[0].resources.requests[1]: Invalid value: "1": must be a standard resource type or fully '
      "qualified"),
     ("{limits: {gpu: 1}}",
      'spec.containers[0].resources.limits[gpu]: Invalid value: "gpu": must be a standard resource type or fully '
      "qualified"),
     ("{limits: {pods: 1}}",
      'spec.containers[0].resources.limits[pods]: Invalid value: "pods": must be a standard resource for containers')],
    ids=["a-number", "gpu-unqualified", "pods"],
)  # fmt: skip
def test_capacity_refuses_a_resource_name_the_api_server_refuses(
    resources: str, message: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`requests: {1: 2}` (an unquoted number as a resource name) was a traceback (TypeError in api_errors), exit 1;
    `limits: {gpu: 1}` (for nvidia.com/gpu) was planned as a resource no node has: "fits nowhere". The API server
    refuses both names (validateContainerResourceName; kubectl sends the number as "1"): now so does capacity, exit
    2 with its rule, the container and the field, before the cluster is read."""
    from gpu_operator.cli import main
    from gpu_operator.kube import Kube

    path = tmp_path / "pod.yaml"
    path.write_text(f"kind: Pod\nmetadata: {{name: a}}\nspec:\n  containers:\n  - name: a\n"
                    f"    resources: {resources}\n")  # fmt: skip
    connected: list[bool] = []
    monkeypatch.setattr(Kube, "connect", classmethod(lambda cls, *a, **k: connected.append(True)))
    assert main(["capacity", "--pod", str(path), "--count", "1"]) == 2
    out, err = capsys.readouterr()
    assert (out, err) == ("", f"error: {path}: the API server refuses this pod: container a: {message}\n")
    assert not connected


@pytest.mark.parametrize(
    ("value", "message"),
    [("32GB", "quantities must match the regular expression"), ("2 Gi", "quantities must match the regular expression"),
     ("lots", "quantities must match the regular expression"), ("1K", "quantities must match the regular expression"),
     ("-1Gi", "must be greater than or equal to 0")],
)  # fmt: skip
def test_capacity_refuses_a_quantity_the_api_server_refuses(
    value: str, message: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A memory limit of 32GB (not a Kubernetes quantity: the API server refuses the pod) was read as 0 and
    planned as a pod that needs no memory, exit 0 with too high a count; it is refused now, naming the container
    and the field, exit 2 (as --node-profile refuses the same typo)."""
    from gpu_operator.cli import main
    from gpu_operator.kube import Kube

    p = pod("train", 2, limits={"memory": value})
    path = tmp_path / "pod.yaml"
    path.write_text(yaml.safe_dump(p))
    monkeypatch.setattr(Kube, "connect", classmethod(lambda cls, *a, **k: FakeKube([node("h-0")], [])))
    assert main(["capacity", "--pod", str(path), "--count", "2"]) == 2
    out, err = capsys.readouterr()
    want = f'container main: spec.containers[0].resources.limits[memory]: Invalid value: "{value}": {message}'
    assert out == "" and want in err and len(err.splitlines()) == 1, err


@pytest.mark.parametrize(
    ("text", "message"),
    [("kind: Pod\nmetadata:\nspec:\n  containers:\n  - name: t\n    image: x\n    resources:\n      limits:\n"
      "        nvidia.com/gpu: 1\n", None),
     ("kind: Pod\nmetadata:\n  name: p\nspec:\n  containers:\n  - name: t\n    image: x\n    resources:\n"
      "      limits:\n      - nvidia.com/gpu\n",
      "Pod p: spec.containers[0].resources.limits: must be a mapping, not list ['nvidia.com/gpu']"),
     ("kind: Pod\nmetadata:\n  name: p\nspec:\n  affinity:\n    podAntiAffinity:\n    - topologyKey: t\n"
      "  containers:\n  - name: t\n    image: x\n",
      "Pod p: spec.affinity.podAntiAffinity: must be a mapping, not list [{'topologyKey': 't'}]"),
     ("kind: Pod\nmetadata:\n  name: p\nspec:\n  affinity:\n    podAntiAffinity:\n"
      "      requiredDuringSchedulingIgnoredDuringExecution:\n      - topologyKey: t\n        namespaceSelector: [a]\n"
      "  containers:\n  - name: t\n    image: x\n",
      "Pod p: spec.affinity.podAntiAffinity.requiredDuringSchedulingIgnoredDuringExecution[0].namespaceSelector: "
      "must be a mapping, not list ['a']"),
     ("kind: Pod\nmetadata:\n  name: p\nspec:\n  containers:\n  - name: t\n    image: x\n    ports:\n"
      "    - {containerPort: 80, hostPort: '80'}\n",
      "Pod p: spec.containers[0].ports[0].hostPort: must be an integer, not str '80'"),
     ("kind: Pod\nmetadata:\n  name: p\nspec: {}\n",
      "the API server refuses this pod: spec.containers: Required value"),
     ("kind: Pod\nmetadata: {name: p}\nspec:\n  containers: [{name: t}]\n  affinity:\n    nodeAffinity:\n"
      "      requiredDuringSchedulingIgnoredDuringExecution:\n        nodeSelectorTerms:\n"
      "        - matchExpressions: [{key: nvidia.com/gpu.count, operator: In, values: [8]}]\n",
      "Pod p: spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms[0]."
      "matchExpressions[0].values[0]: must be a string, not int 8 (quote it in YAML)"),
     ("kind: Pod\nmetadata: {name: p}\nspec:\n  containers: [{name: t}]\n  affinity:\n    podAntiAffinity:\n"
      "      requiredDuringSchedulingIgnoredDuringExecution:\n      - topologyKey: kubernetes.io/hostname\n"
      "        labelSelector: {matchExpressions: [{key: [app], operator: In, values: [a]}]}\n",
      "Pod p: spec.affinity.podAntiAffinity.requiredDuringSchedulingIgnoredDuringExecution[0].labelSelector."
      "matchExpressions[0].key: must be a string, not list ['app']"),
     ("kind: Pod\nmetadata: {name: p}\nspec:\n  containers: [{name: t}]\n"
      "  tolerations: [{key: gpu, value: 1, effect: NoSchedule}]\n",
      "Pod p: spec.tolerations[0].value: must be a string, not int 1 (quote it in YAML)"),
     ("kind: Pod\nmetadata: {name: p}\nspec:\n  containers: [{name: t}]\n  resources: {limits: [cpu]}\n",
      "Pod p: spec.resources.limits: must be a mapping, not list ['cpu']")],
    ids=["metadata-null", "limits-a-list", "anti-affinity-a-list", "namespace-selector-a-list", "host-port-a-string",
         "no-container", "match-expression-value-a-number", "label-selector-key-a-list", "toleration-value-a-number",
         "pod-limits-a-list"],
)  # fmt: skip
def test_capacity_answers_odd_pod_yaml_with_an_error_not_a_traceback(
    text: str, message: str | None, tmp_path: Any, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """`metadata:` left empty (YAML null) crashed capacity with AttributeError, and limits written as a list
    crashed it in api_errors, each with a traceback: a null metadata is planned now, and a field of the wrong type
    exits 2 with one `error:` line naming it, as every other bad input of the command does. A selector's `values:
    [8]` (the API server's []string) was planned and matched no node ("8" is not 8): the copies "fit nowhere" where
    a quote was missing; a toleration's `value: 1` likewise tolerated nothing, and a selector's `key: [app]` was a
    traceback."""
    from gpu_operator.cli import main
    from gpu_operator.kube import Kube

    path = tmp_path / "pod.yaml"
    path.write_text(text)
    monkeypatch.setattr(Kube, "connect", classmethod(lambda cls, *a, **k: FakeKube([node("h-0")], [])))
    code = main(["capacity", "--pod", str(path), "--count", "2"])
    out, err = capsys.readouterr()
    if message is None:
        assert code == 0 and "fit now: 2 of 2" in out, err
    else:
        assert code == 2 and out == "" and err == f"error: {path}: {message}\n", err


@pytest.mark.parametrize(
    ("key", "resources", "message"),
    [("containers", {"limits": {"cpu": "1", "memory": "1Gi"}, "requests": {"cpu": "2"}},
      'container main: spec.containers[0].resources.requests: Invalid value: "2": must be less than or equal to cpu '
      "limit of 1"),
     ("initContainers", {"limits": {"memory": "1Gi"}, "requests": {"memory": "2Gi"}},
      'container init: spec.initContainers[0].resources.requests: Invalid value: "2Gi": must be less than or equal '
      "to memory limit of 1Gi")],
    ids=["cpu", "init-memory"],
)  # fmt: skip
def test_capacity_refuses_a_native_request_above_its_limit(
    key: str, resources: dict[str, Any], message: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """The API server refuses a container whose cpu or memory request is above its limit ("must be less than or
    equal to cpu limit of 1"), but capacity planned it from the request, exit 0. Now it is refused as the GPU
    request unequal to its limit is, naming the container and the resource, exit 2; below its limit it is planned."""
    from gpu_operator.cli import main
    from gpu_operator.kube import Kube

    p = pod("train", 1)
    if key == "initContainers":
        p["spec"]["initContainers"] = [{"name": "init", "image": "x", "resources": resources}]
    else:
        p["spec"]["containers"][0]["resources"] = {**resources, "limits": {**resources["limits"], "nvidia.com/gpu": 1}}
    path = tmp_path / "pod.yaml"
    path.write_text(yaml.safe_dump(p))
    monkeypatch.setattr(Kube, "connect", classmethod(lambda cls, *a, **k: FakeKube([node("h-0")], [])))
    assert main(["capacity", "--pod", str(path), "--count", "2"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == f"error: {path}: the API server refuses this pod: {message}\n", err
    below = {"limits": {"cpu": "2", "memory": "2Gi", "nvidia.com/gpu": 1}, "requests": {"cpu": "1", "memory": "1Gi"}}
    p["spec"]["containers"][0]["resources"] = below
    p["spec"].pop("initContainers", None)
    path.write_text(yaml.safe_dump(p))
    assert main(["capacity", "--pod", str(path), "--count", "2"]) == 0
    assert "fit now: 2 of 2" in capsys.readouterr().out


def test_capacity_names_a_pod_without_a_name(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A pod YAML with empty metadata (or only a generateName) was planned as "pod ? × 2"; now its generateName
    names it, else the file it came from."""
    from gpu_operator.cli import main
    from gpu_operator.kube import Kube

    monkeypatch.setattr(Kube, "connect", classmethod(lambda cls, *a, **k: FakeKube([node("h-0")], [])))
    path = tmp_path / "pod.yaml"
    body = "spec:\n  containers:\n  - name: t\n    image: x\n    resources: {limits: {nvidia.com/gpu: 1}}\n"
    for metadata, name in (("metadata:\n", f"(unnamed, from {path})"), ("", f"(unnamed, from {path})"),
                           ("metadata: {generateName: train-}\n", "(generateName train-)"),
                           ("metadata: {name: train, generateName: x-}\n", "train")):
        path.write_text("kind: Pod\n" + metadata + body)
        assert main(["capacity", "--pod", str(path), "--count", "2"]) == 0
        out = capsys.readouterr().out
        assert out.startswith(f"pod {name} × 2: each requests"), out


def test_capacity_does_not_count_an_mps_shared_node_for_a_pod_asking_two_replicas() -> None:
    """An MPS-shared node (GFD: gpu.sharing-strategy=mps) advertises replicas as nvidia.com/gpu, and the device
    plugin refuses a request of more than one of them at Allocate (failRequestsGreaterThanOne, its MPS default:
    k8s-device-plugin api/config/v1/config.go, internal/rm/rm.go ValidateRequest), so the kubelet fails such pods
    with UnexpectedAdmissionError. doctor knew it (MultipleMPSSharedGPUs), capacity counted 16 copies of a 2-GPU
    pod on the node, "extra nodes needed: 0". The node, and a new node like it, now takes none; one replica fits."""
    mps = node("m-0", gpus=32, labels={"nvidia.com/gpu.sharing-strategy": "mps", "nvidia.com/gpu.replicas": "4"})
    views = nodes_with_pods([mps], [])
    two, one = pod("job", 2), pod("job", 1)
    result = capacity.plan(two, 4, views)
    assert result.fits_now == 0 and result.extra_nodes is None, capacity.render(result, "job")
    assert "excluded: MPS-shared GPUs (replicas 4): the device plugin refuses" in result.fits[0].why
    like = capacity.plan(two, 4, views, capacity.parse_profile("m-0", views))
    assert like.per_new_node == 0 and like.extra_nodes is None
    assert capacity.plan(one, 4, views).fits_now == 4


def gpu_container(name: str, gpus: int, **extra: Any) -> dict[str, Any]:
    return {"name": name, "image": "busybox", "resources": {"limits": {"nvidia.com/gpu": str(gpus)}}, **extra}


def test_capacity_checks_mps_replicas_per_container() -> None:
    """The device plugin checks failRequestsGreaterThanOne per container: the kubelet's Allocate carries one request
    per container and the plugin counts each one's devices (k8s-device-plugin internal/plugin/server.go Allocate,
    internal/rm/rm.go ValidateRequest). capacity summed the pod's containers, so a pod of two containers asking 1
    MPS replica each (or one beside a sidecar asking 1) was refused on every MPS node: "fit now: 0", "impossible".
    Now only a container asking more than one is refused, and it is named."""
    mps = node("m-0", gpus=32, labels={"nvidia.com/gpu.sharing-strategy": "mps", "nvidia.com/gpu.replicas": "4"})
    views = nodes_with_pods([mps], [])
    two = pod("job", 1)
    two["spec"]["containers"].append(gpu_container("b", 1))
    sidecar = pod("job", 1, initContainers=[gpu_container("s", 1, restartPolicy="Always")])
    for p in (two, sidecar):
        result = capacity.plan(p, 4, views)
        assert result.fits_now == 4 and "MPS-shared" not in result.fits[0].why, capacity.render(result, "job")
    result = capacity.plan(pod("job", 2), 4, views)
    assert result.fits_now == 0 and "refuses container main's request of 2, more than 1" in result.fits[0].why


SHARING = {
    "ts-strict": "version: v1\nsharing:\n  timeSlicing:\n    failRequestsGreaterThanOne: true\n    resources:\n"
                 "    - name: nvidia.com/gpu\n      replicas: 4\n",
    "mps-relaxed": "version: v1\nsharing:\n  mps:\n    failRequestsGreaterThanOne: false\n    resources:\n"
                   "    - name: nvidia.com/gpu\n      replicas: 4\n",
    "mps": "version: v1\nsharing:\n  mps:\n    resources:\n    - name: nvidia.com/gpu\n      replicas: 4\n",
    "refused": "version: v1\nsharing:\n  timeSlicing:\n    resources:\n    - name: nvidia.com/gpu\n      replicas: 1\n",
}  # fmt: skip


class SharingKube(FakeKube):
    """Also serves the ClusterPolicy naming the device plugin's sharing ConfigMap, and that ConfigMap."""

    def __init__(self, nodes: list[dict[str, Any]], default: str = "", forbidden: bool = False):
        super().__init__(nodes, [])
        self.objects["ClusterPolicy"] = [{"metadata": {"name": "cluster-policy"}, "spec": {
            "devicePlugin": {"config": {"name": "sharing-config", "default": default}}}}]  # fmt: skip
        self.forbidden = forbidden

    def list(self, kind: str, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        from gpu_operator.kube import ApiError

        if kind == "ClusterPolicy" and self.forbidden:
            raise ApiError(403, '{"message": "forbidden"}', "GET /apis/nvidia.com/v1/clusterpolicies")
        return super().list(kind, *args, **kwargs)

    def get(self, kind: str, name: str, namespace: str | None = None, *args: Any, **kwargs: Any) -> Any:
        if (kind, name, namespace) == ("ConfigMap", "sharing-config", NS):
            return {"metadata": {"name": name, "namespace": namespace}, "data": SHARING}
        return None


def test_capacity_reads_fail_requests_greater_than_one_from_the_nodes_sharing_config(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """failRequestsGreaterThanOne is a setting of the node's sharing config, for time-slicing as for MPS (k8s-device-
    plugin internal/rm/rm.go ValidateRequest; api/config/v1/config.go defaults it to true for MPS only). capacity
    read only Nodes and Pods and assumed it false for time-slicing and true for MPS: with a time-slicing config that
    sets it true it counted copies of a 2-GPU pod that the kubelet fails (UnexpectedAdmissionError), and with an
    MPS one that sets it false it excluded the node. Now it reads the active ClusterPolicy's devicePlugin.config and
    the key each node loads (its nvidia.com/device-plugin.config label, else the default); where that is not known,
    it judges by GFD's labels, as before, and says so."""
    from gpu_operator.cli import main
    from gpu_operator.kube import Kube

    def shared(name: str, strategy: str, key: str | None) -> dict[str, Any]:
        labels = {"nvidia.com/gpu.sharing-strategy": strategy, "nvidia.com/gpu.replicas": "4"}
        return node(name, gpus=32, labels={**labels, **({"nvidia.com/device-plugin.config": key} if key else {})})

    nodes = [shared("t-0", "time-slicing", "ts-strict"), shared("m-0", "mps", "mps-relaxed"),
             shared("m-1", "mps", None), shared("m-2", "mps", "refused"), shared("m-3", "mps", "missing")]  # fmt: skip
    path = tmp_path / "pod.yaml"
    path.write_text(yaml.safe_dump(pod("job", 2)))

    def run(kube: FakeKube) -> dict[str, str]:
        monkeypatch.setattr(Kube, "connect", classmethod(lambda cls, *a, **k: kube))
        assert main(["capacity", "--pod", str(path), "--count", "4"]) == 0
        out = capsys.readouterr().out
        return {line.split(":")[0].strip(): line for line in out.splitlines()}

    lines = run(SharingKube(nodes, default="mps"))
    assert "excluded: time-slicing with failRequestsGreaterThanOne (config ts-strict of ConfigMap sharing-config): " \
        "the device plugin refuses container main's request of 2, more than 1" in lines["t-0"], lines
    assert "limited by nvidia.com/gpu" in lines["m-0"], lines  # MPS relaxed
    assert "excluded: mps with failRequestsGreaterThanOne (config mps " in lines["m-1"], lines  # the default
    # a key the plugin refuses or the ConfigMap lacks: not known, GFD's labels decide (MPS: refused), with a note
    assert "excluded: MPS-shared GPUs (replicas 4)" in lines["m-2"] and "excluded: MPS-shared" in lines["m-3"]
    assert "the device plugin's sharing config on nodes m-2, m-3 is not known (a key ConfigMap sharing-config " \
        "lacks, or one the device plugin refuses)" in lines["note"], lines
    assert "fit now: 4 of 4 (4 on m-0)" in lines["fit now"]
    # the ClusterPolicy cannot be read: GFD's labels decide everywhere (time-slicing: taken not to refuse)
    lines = run(SharingKube(nodes, forbidden=True))
    assert "limited by nvidia.com/gpu" in lines["t-0"] and "excluded: MPS-shared" in lines["m-0"], lines
    assert "on nodes m-0, m-1, m-2, m-3, t-0 is not known (cannot read it: GET /apis/nvidia.com/v1/clusterpolicies: " \
        "403 forbidden)" in lines["note"], lines
    # no sharing config set: nothing is shared, nothing to note
    plain = FakeKube([node("h-0")], [])
    plain.objects["ClusterPolicy"] = [{"metadata": {"name": "cluster-policy"}, "spec": {}}]
    assert "note" not in run(plain)


def test_capacity_lets_a_one_gpu_container_onto_a_node_that_refuses_more_than_one() -> None:
    """failRequestsGreaterThanOne refuses a container asking more than one shared GPU: one asking one is counted."""
    labels = {"nvidia.com/gpu.sharing-strategy": "time-slicing", "nvidia.com/gpu.replicas": "4",
              "nvidia.com/device-plugin.config": "ts-strict"}  # fmt: skip
    views = nodes_with_pods([node("t-0", gpus=32, labels=labels)], [])
    configs = capacity.PluginConfigs.of_data("sharing-config", "", {"ts-strict": SHARING["ts-strict"]})
    [one] = capacity.plan(pod("job", 1), 4, views, configs=configs).fits
    assert one.fits > 0 and one.why.startswith("limited by"), one.why
    [two] = capacity.plan(pod("job", 2), 4, views, configs=configs).fits
    assert two.fits == 0 and "failRequestsGreaterThanOne" in two.why


CORDON = {"unschedulable": True, "taints": [{"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}]}


def test_capacity_counts_no_copy_on_a_cordoned_node_and_a_new_node_like_it_is_not_cordoned() -> None:
    """A cordoned node (the driver upgrade cordons them) takes no copy but a pod tolerating the cordon; a new node
    like it is not cordoned."""
    views = nodes_with_pods([node("h-0", spec=dict(CORDON)), node("h-1")], [])
    result = capacity.plan(EXERCISE3, 8, views)
    fits = {f.node: f for f in result.fits}
    assert (fits["h-0"].fits, fits["h-0"].why) == (0, "excluded: cordoned (unschedulable)")
    assert result.fits_now == 4 and result.extra_nodes == 1
    tolerant = json.loads(json.dumps(EXERCISE3))
    tolerant["spec"]["tolerations"] = [{"key": "node.kubernetes.io/unschedulable", "operator": "Exists",
                                        "effect": "NoSchedule"}]  # fmt: skip
    assert capacity.plan(tolerant, 8, views).fits_now == 8
    assert capacity.plan(EXERCISE3, 8, views, capacity.parse_profile("h-0", views)).per_new_node == 4


def test_capacity_new_node_like_a_not_ready_node_is_ready() -> None:
    """A new node "like h-0" is another machine (empty_copy: "not cordoned", its own hostname), so it does not
    carry h-0's state: the node lifecycle controller's node.kubernetes.io/not-ready (or unreachable) taints, which
    a NotReady h-0 has, are not on a new, Ready node. capacity kept every taint but the cordon, so with the only GPU
    node NotReady it answered "no existing node could take a copy even empty; give --node-profile", and with
    `--node-profile h-0` "extra nodes needed: impossible". (Its reason also named not-ready:NoExecute as untolerated,
    though the API server's DefaultTolerationSeconds admission gives every pod a toleration for it.)"""
    taints = [{"key": "node.kubernetes.io/not-ready", "effect": effect} for effect in ("NoSchedule", "NoExecute")]
    taints.append({"key": "nvidia.com/gpu", "effect": "NoSchedule"})  # a role taint: kept
    views = nodes_with_pods([node("h-0", spec={"taints": taints})], [])
    tolerant = pod("job", 1, tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists"}])
    result = capacity.plan(tolerant, 4, views)
    assert result.fits_now == 0 and result.per_new_node == 8 and result.extra_nodes == 1, \
        capacity.render(result, "job")
    assert result.fits[0].why == "excluded: untolerated taint node.kubernetes.io/not-ready:NoSchedule"
    result = capacity.plan(tolerant, 4, views, capacity.parse_profile("h-0", views))
    assert result.per_new_node == 8 and result.extra_nodes == 1, capacity.render(result, "job")
    assert capacity.plan(pod("job", 1), 4, views).per_new_node == 0  # the GPU taint stays on a new node


def test_capacity_counts_the_pods_a_node_may_still_run() -> None:
    """Each copy takes one of the node's pods: a node near its kubelet's maxPods takes no more than it has left."""
    views = nodes_with_pods([node("h-0", allocatable={"pods": "3"})], [pod("a", node_name="h-0"),
                                                                      pod("b", node_name="h-0")])  # fmt: skip
    [fit] = capacity.plan(EXERCISE3, 4, views).fits
    assert fit.fits == 1 and fit.why.startswith("limited by pods: 1 free"), fit.why


def test_capacity_counts_pod_level_resource_requests() -> None:
    """Pod-level resources (`spec.resources`, KEP-2837: beta and on by default from Kubernetes 1.34; the e2e cluster
    runs 1.37.2) are what the scheduler reserves for cpu and memory when set: component-helpers' PodRequests
    replaces the containers' sum with `spec.resources.requests` (a pod-level limit alone defaults the request).
    capacity read the containers only, so a 1-GPU pod asking 64 CPUs at pod level was counted 8 times on a 96-CPU
    node (the scheduler places 1), and a running pod holding 90 CPUs at pod level was taken to hold none."""
    wide = pod("job", 1)
    wide["spec"]["resources"] = {"limits": {"cpu": "64", "memory": "256Gi"}}
    [fit] = capacity.plan(wide, 8, nodes_with_pods([node("h-0")], [])).fits
    assert fit.fits == 1 and fit.why.startswith("limited by cpu"), fit.why
    busy = pod("busy", 1, node_name="h-0")
    busy["spec"]["resources"] = {"requests": {"cpu": "90"}}
    [fit] = capacity.plan(pod("job", 1, limits={"cpu": "8"}), 8, nodes_with_pods([node("h-0")], [busy])).fits
    assert fit.fits == 0 and fit.why.startswith("limited by cpu"), fit.why
    # A pod-level limit with containers asking for cpu: their sum is the request (API defaulting); GPUs stay theirs.
    narrow = pod("job", 1, limits={"cpu": "2"})
    narrow["spec"]["resources"] = {"limits": {"cpu": "64", "nvidia.com/gpu": "4"}}
    assert pod_requests(narrow) == {"cpu": 2, "nvidia.com/gpu": 1}
    # A pod-level request above its limit is refused as the API server refuses it.
    narrow["spec"]["resources"] = {"limits": {"cpu": "4"}, "requests": {"cpu": "8"}}
    assert capacity.api_errors(narrow) == [
        'spec.resources.requests: Invalid value: "8": must be less than or equal to cpu limit of 4']


def test_capacity_refuses_pod_level_resources_the_api_server_refuses() -> None:
    """Review diffU: pod-level resources (spec.resources) take cpu, memory and hugepages only, a pod-level request
    at least the containers' aggregate request and a pod-level limit at least each container's limit; the API
    server refuses other pods. capacity planned a pod asking `nvidia.com/gpu: 1` at pod level as one asking no GPU
    (96 copies on one 8-GPU node), and one asking 1 CPU at pod level and 4 in its container at 1 CPU a copy."""
    gpu = pod("job", 0)
    gpu["spec"]["resources"] = {"limits": {"nvidia.com/gpu": "1", "cpu": "1"}}
    assert any(e.startswith("spec.resources.limits[nvidia.com/gpu]: Unsupported value")
               for e in capacity.api_errors(gpu)), capacity.api_errors(gpu)  # fmt: skip
    below = pod("job", 0)
    below["spec"]["containers"][0]["resources"] = {"requests": {"cpu": "4"}}
    below["spec"]["resources"] = {"requests": {"cpu": "1"}}
    assert any("aggregate container requests of 4" in e for e in capacity.api_errors(below)), capacity.api_errors(below)
    limit_below = pod("job", 0, limits={"cpu": "8"})
    limit_below["spec"]["resources"] = {"limits": {"cpu": "2"}}
    errors = capacity.api_errors(limit_below)
    assert any("container limits of 8" in e for e in errors), errors
    fine = pod("job", 1, limits={"cpu": "2"})
    fine["spec"]["resources"] = {"limits": {"cpu": "4", "memory": "8Gi"}, "requests": {"cpu": "2"}}
    assert capacity.api_errors(fine) == []


def test_capacity_counts_a_pod_with_spec_node_name_only_on_that_node() -> None:
    """A pod (or pod template) with `spec.nodeName` bypasses the scheduler: the kubelet of that node alone runs it
    (or rejects it, OutOfnvidia.com/gpu); no other node, and no node added, can ever take a copy. capacity ignored
    nodeName: for 16 one-GPU copies pinned to h-0 it said "fit now: 16 of 16 (8 on h-0, 8 on h-1)". The kubelet
    does not check the cordon or NoSchedule taints: a cordoned h-0 still takes its 8."""
    pinned = pod("job", 1)
    pinned["spec"]["nodeName"] = "h-0"
    views = nodes_with_pods([node("h-0", spec=dict(CORDON)), node("h-1")], [])
    result = capacity.plan(pinned, 16, views)
    fits = {f.node: f for f in result.fits}
    assert fits["h-1"].fits == 0 and result.fits_now == 8, capacity.render(result, "job")
    assert fits["h-1"].why == "excluded: the pod names node h-0 (spec.nodeName)"
    assert result.extra_nodes is None, capacity.render(result, "job")  # a new node has another name
    assert any("spec.nodeName" in n for n in result.notes), result.notes
    assert capacity.plan(pinned, 16, views, capacity.parse_profile("h-1", views)).extra_nodes is None


def test_capacity_new_node_like_an_existing_one_does_not_keep_its_hostname() -> None:
    """A new node "like h-0" is another machine: the kubelet gives it its own kubernetes.io/hostname. The copy kept
    every label, so a pod pinned to h-0 by its hostname (h-0 full) was answered "extra nodes needed: 1 × like h-0",
    when no node added can ever take it: "impossible" now, with --node-profile h-0 too."""
    pinned = pod("job", 8, nodeSelector={"kubernetes.io/hostname": "h-0"})
    views = nodes_with_pods([node("h-0"), node("h-1")], [pod("busy", 8, node_name="h-0")])
    result = capacity.plan(pinned, 1, views)
    assert result.fits_now == 0 and result.extra_nodes is None, capacity.render(result, "job")
    profile = capacity.parse_profile("h-0", views)
    assert profile.labels["kubernetes.io/hostname"] != "h-0"
    assert capacity.plan(pinned, 1, views, profile).extra_nodes is None
    assert capacity.plan(pod("job", 8), 1, views, profile).extra_nodes == 0  # h-1 takes it


def test_capacity_profile_node_has_the_labels_every_kubelet_sets() -> None:
    """Every node's kubelet sets kubernetes.io/os, kubernetes.io/arch and kubernetes.io/hostname (well-known labels),
    and pods commonly select `kubernetes.io/os: linux` (many charts' default nodeSelector). A
    `--node-profile gpus=8,cpu=96,memory=2048Gi` node had no label at all, so such a pod, which fits an existing node
    of that shape, was answered "extra nodes needed: impossible with a new node profile gpus=8,...". Expected: the
    profile carries kubernetes.io/os=linux (and an arch, and a hostname of its own) unless its label.KEY parts say
    otherwise."""
    linux = pod("job", 1, nodeSelector={"kubernetes.io/os": "linux"})
    views: dict[str, Any] = nodes_with_pods([node("h-0", labels={"kubernetes.io/os": "linux"})], [])
    profile = capacity.parse_profile("gpus=8,cpu=96,memory=2048Gi", views)
    result = capacity.plan(linux, 16, views, profile)
    assert result.fits_now == 8 and result.extra_nodes == 1, capacity.render(result, "job")
    assert profile.labels["kubernetes.io/arch"] == "amd64" and profile.labels["kubernetes.io/hostname"] != "h-0"
    arm = pod("job", 1, nodeSelector={"kubernetes.io/arch": "arm64"})
    assert capacity.plan(arm, 16, views, profile).extra_nodes is None
    arm_profile = capacity.parse_profile("gpus=8,label.kubernetes.io/arch=arm64", views)
    assert capacity.plan(arm, 16, views, arm_profile).extra_nodes == 2


def test_capacity_says_what_it_does_not_model() -> None:
    """README said "the count per node is exactly what the scheduler reaches", but a required podAffinity
    (co-locate with app=db per hostname), which keeps the scheduler off h-0 (no db pod there), was ignored with no
    note: 4 copies counted on h-0. So were DoNotSchedule topology spread constraints. Both are named in a note."""
    affinity = {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": {"app": "db"}}}]}}  # fmt: skip
    db = pod("db", 0, node_name="h-1")
    views = nodes_with_pods([node("h-0"), node("h-1")], [db])
    text = capacity.render(capacity.plan(pod("job", 2, affinity=affinity), 8, views), "job")
    assert "note: required pod affinity is not modelled" in text, text
    spread = [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule",
               "labelSelector": {"matchLabels": {"app": "job"}}}]  # fmt: skip
    text = capacity.render(capacity.plan(pod("job", 2, topologySpreadConstraints=spread), 8, views), "job")
    assert "note: topology spread constraints (whenUnsatisfiable: DoNotSchedule) are not modelled" in text, text
    soft = [{**spread[0], "whenUnsatisfiable": "ScheduleAnyway"}]
    assert capacity.plan(pod("job", 2, topologySpreadConstraints=soft), 8, views).notes == []


def test_capacity_keeps_copies_with_a_host_port_one_per_node() -> None:
    """kube-scheduler's NodePorts filter refuses a node where a pod already holds the same host port (protocol, an
    IP in common: 0.0.0.0 is every IP), so copies of a pod with a hostPort go one per node; a `hostNetwork: true` pod
    holds its containerPort (API defaulting, pkg/apis/core/v1/defaults.go defaultHostNetworkPorts), as distributed
    training pods often do. capacity read no ports: 4 copies per 8-GPU node, "extra nodes needed: 1" for 10 on 2
    nodes, where the scheduler places 1 on h-0, none on h-1 (its running pod holds the port), 9 on new nodes."""
    host_net = json.loads(json.dumps(EXERCISE3))
    host_net["spec"]["hostNetwork"] = True
    host_net["spec"]["containers"][0]["ports"] = [{"containerPort": 29500}]
    host_port = json.loads(json.dumps(EXERCISE3))
    host_port["spec"]["containers"][0]["ports"] = [{"containerPort": 29500, "hostPort": 29500}]
    holder = pod("holder", node_name="h-1")
    holder["spec"]["containers"][0]["ports"] = [{"containerPort": 29500, "hostPort": 29500, "hostIP": "10.0.0.1"}]
    views = nodes_with_pods([node("h-0"), node("h-1")], [holder])
    for p in (host_net, host_port):
        result = capacity.plan(p, 10, views)
        fits = {f.node: f for f in result.fits}
        assert (fits["h-0"].fits, fits["h-1"].fits, result.per_new_node, result.extra_nodes) == (1, 0, 1, 9)
        assert fits["h-0"].why.startswith("1 per node (host port 29500/TCP)"), fits["h-0"].why
        assert fits["h-1"].why == "excluded: pod default/holder there holds host port 29500/TCP"
    # another protocol, or another IP where neither is 0.0.0.0, does not conflict
    holder["spec"]["containers"][0]["ports"] = [{"containerPort": 29500, "hostPort": 29500, "protocol": "UDP"}]
    assert capacity.plan(host_port, 10, nodes_with_pods([node("h-1")], [holder])).fits[0].fits == 1
    host_port["spec"]["containers"][0]["ports"][0]["hostIP"] = "10.0.0.2"
    holder["spec"]["containers"][0]["ports"] = [{"containerPort": 29500, "hostPort": 29500, "hostIP": "10.0.0.1"}]
    assert capacity.plan(host_port, 10, nodes_with_pods([node("h-1")], [holder])).fits[0].fits == 1


def test_capacity_notes_that_it_does_not_model_a_dra_claim() -> None:
    """A pod that gets its GPU through Dynamic Resource Allocation (spec.resourceClaims, a container's
    resources.claims: the NVIDIA DRA driver, for which doctor tells users to set devicePlugin.enabled: false)
    requests no nvidia.com/gpu, so capacity counted it by CPU alone on every node, a CPU-only one included ("fit now:
    10 of 10 (10 on cpu-0)") with no note, while the scheduler's DynamicResources filter puts a copy only where a
    ResourceSlice has a free device of the claim's DeviceClass. Claims are not read: the plan says so."""
    claim = {
        "metadata": {"name": "train", "namespace": "default", "labels": {"app": "train"}},
        "spec": {
            "resourceClaims": [{"name": "gpu", "resourceClaimTemplateName": "single-gpu"}],
            "containers": [{"name": "t", "image": "x", "resources": {
                "claims": [{"name": "gpu"}], "limits": {"memory": "32Gi", "cpu": "8"}}}],
        },
    }  # fmt: skip
    views = nodes_with_pods([node("h-0"), node("cpu-0", gpus=0)], [])
    text = capacity.render(capacity.plan(claim, 10, views), "train")
    assert "note: resourceClaims (Dynamic Resource Allocation) are not modelled" in text, text
    assert not any("resourceClaims" in n for n in capacity.plan(EXERCISE3, 10, views).notes)


def test_capacity_new_node_like_an_existing_one_runs_its_daemonsets() -> None:
    """A new node like h-0 runs the DaemonSets h-0 runs (the GPU operator's operands, NFD's worker, kube-proxy, the
    CNI) and its static pods, and they take their requests there too (cluster-autoscaler puts them on its template
    node). The new node was taken empty: with a DaemonSet pod of 4 CPUs on h-0, a 24-CPU, 2-GPU job was counted 4
    to a new 96-CPU node where 3 fit (92 CPUs left), and the extra nodes undercounted."""
    job = json.loads(json.dumps(EXERCISE3))
    job["spec"]["containers"][0]["resources"]["limits"]["cpu"] = "24"
    daemon = pod("exporter-abcde", node_name="h-0", limits={"cpu": "4"})
    daemon["metadata"]["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "exporter",
                                              "uid": "u1", "controller": True}]  # fmt: skip
    other = pod("batch", node_name="h-0", limits={"cpu": "4"})  # not a DaemonSet's: not on the new node
    views = nodes_with_pods([node("h-0")], [daemon, other])
    result = capacity.plan(job, 10, views)
    assert result.fits[0].fits == 3  # 88 CPUs free on h-0 itself
    assert result.per_new_node == 3 and "cpu: 92 free" in result.profile_why, capacity.render(result, "train")
    assert result.extra_nodes == 3
    assert capacity.plan(job, 10, views, capacity.parse_profile("h-0", views)).per_new_node == 3


TIME_SLICED = ("version: v1\nsharing:\n  timeSlicing:\n{rename}    resources:\n    - name: nvidia.com/gpu\n"
               "      replicas: 4\n")  # fmt: skip


def test_capacity_gpus_profile_advertises_what_the_device_plugin_would_under_its_sharing_config() -> None:
    """capacity judged a --node-profile gpus=N by its sharing config (the ClusterPolicy's devicePlugin.config default
    for a node without the nvidia.com/device-plugin.config label) for failRequestsGreaterThanOne, but counted its GPUs
    as N unshared nvidia.com/gpu, where the device plugin (upstream internal/rm/device_map.go
    updateDeviceMapWithReplicas, and e2e/advertise.advertise) advertises 4 × 8 nvidia.com/gpu under a time-slicing
    config with 4 replicas, and 32 nvidia.com/gpu.shared and no nvidia.com/gpu with renameByDefault: 8 extra nodes
    for 64 copies of a 1-replica pod (not 2), and "impossible" for a pod asking nvidia.com/gpu.shared."""
    from e2e.advertise import advertise
    from e2e.cluster.nodes import Profile

    views = nodes_with_pods([node("h-0", gpus=32)], [pod("busy", 32, node_name="h-0")])
    for rename, resource in (("", "nvidia.com/gpu"), ("    renameByDefault: true\n", "nvidia.com/gpu.shared")):
        configs = capacity.PluginConfigs.of_data("sharing-config", "ts", {"ts": TIME_SLICED.format(rename=rename)})
        profile = capacity.parse_profile(f"gpus=8,label.nvidia.com/gpu.product={H100}", views)
        config = configs.of(profile.labels)[1]
        assert config is not None
        assert advertise(Profile("p", 8, H100), None, "none", config).resources == {resource: 32}
        job = pod("job", nodeSelector={"nvidia.com/gpu.product": H100}, limits={resource: "1"})
        result = capacity.plan(job, 64, views, profile, configs)
        assert (result.per_new_node, result.extra_nodes, result.notes) == (32, 2, []), capacity.render(result, "job")
    plain = pod("job", 1, nodeSelector={"nvidia.com/gpu.product": H100})
    assert capacity.plan(plain, 64, views, profile, configs).extra_nodes is None  # renamed: no nvidia.com/gpu
    # nvidia.com/gpu=N is the advertised count; a config not known is said, and the GPUs counted unshared
    given = capacity.parse_profile(f"nvidia.com/gpu=8,label.nvidia.com/gpu.product={H100}", views)
    assert capacity.plan(plain, 64, views, given, configs).per_new_node == 8
    result = capacity.plan(plain, 64, views, profile)
    assert result.per_new_node == 8 and "its 8 GPUs are counted as 8 nvidia.com/gpu, unshared" in result.notes[0]


def test_capacity_gpus_profile_under_a_config_the_device_plugin_refuses_at_start_advertises_no_gpus() -> None:
    """The MPS control daemon refuses more than 48 replicas of a GPU (k8s-device-plugin
    cmd/mps-control-daemon/mps/device.go assertReplicas; sharing.check, e2e/advertise.advertise): it exits, and the
    plugin waits for it and advertises nothing. capacity read the config with sharing.parse only, so it counted a
    `gpus=2` profile under 64 MPS replicas as 128 nvidia.com/gpu and planned 1 extra node for 100 copies that would
    never run. Now a config sharing.check refuses advertises no GPUs on a new node, and a note says why."""
    views = nodes_with_pods([node("h-0", gpus=8)], [pod("busy", 8, node_name="h-0")])
    mps = "version: v1\nsharing:\n  mps:\n    resources:\n    - name: nvidia.com/gpu\n      replicas: {}\n"
    configs = capacity.PluginConfigs.of_data("sharing-config", "mps", {"mps": mps.format(64)})
    profile = capacity.parse_profile(f"gpus=2,label.nvidia.com/gpu.product={H100}", views)
    job = pod("job", 1, nodeSelector={"nvidia.com/gpu.product": H100})
    result = capacity.plan(job, 100, views, profile, configs)
    assert (result.per_new_node, result.extra_nodes) == (0, None), capacity.render(result, "job")
    assert result.notes == ["the device plugin refuses config mps of ConfigMap sharing-config "
                            "(sharing.mps.resources[0].replicas: invalid MPS configuration: maximum allowed replicas "
                            "exceeded: 64 > 48 (the MPS control daemon's client limit)): a new node "
                            f"{profile.name} advertises no GPUs"], result.notes  # fmt: skip
    configs = capacity.PluginConfigs.of_data("sharing-config", "mps", {"mps": mps.format(48)})  # the limit: taken
    assert capacity.plan(job, 100, views, profile, configs).per_new_node == 96


def test_capacity_gpus_profile_below_compute_7_5_takes_the_mps_daemons_limit_of_16() -> None:
    """Below compute capability 7.5 the MPS control daemon takes 16 clients, not 48 (k8s-device-plugin
    cmd/mps-control-daemon/mps/device.go maxClients), and exits on more: the plugin waits for it and advertises
    nothing. The operator refuses such a config by GFD's compute labels (sharing.check before_7_5), but capacity
    checked a profile with the 48 limit whatever its labels, so `gpus=2` with GFD's compute 7.0 (a V100) under 20
    MPS replicas counted 40 nvidia.com/gpu. Now the profile's compute labels give the limit."""
    views = nodes_with_pods([node("h-0", gpus=8)], [pod("busy", 8, node_name="h-0")])
    mps = "version: v1\nsharing:\n  mps:\n    resources:\n    - name: nvidia.com/gpu\n      replicas: {}\n"
    configs = capacity.PluginConfigs.of_data("sharing-config", "mps", {"mps": mps.format(20)})
    v100 = "gpus=2,label.nvidia.com/gpu.compute.major=7,label.nvidia.com/gpu.compute.minor=0"
    profile = capacity.parse_profile(v100, views)
    job = pod("job", 1)
    result = capacity.plan(job, 100, views, profile, configs)
    assert (result.per_new_node, result.extra_nodes) == (0, None), capacity.render(result, "job")
    assert "exceeded: 20 > 16 (the MPS control daemon's client limit below compute capability 7.5" in result.notes[0]
    configs = capacity.PluginConfigs.of_data("sharing-config", "mps", {"mps": mps.format(16)})  # the limit: taken
    assert capacity.plan(job, 100, views, profile, configs).per_new_node == 32
    turing = capacity.parse_profile(v100.replace("minor=0", "minor=5"), views)  # 7.5: 48
    assert capacity.plan(job, 100, views, turing, capacity.PluginConfigs.of_data(
        "sharing-config", "mps", {"mps": mps.format(20)})).per_new_node == 40


class PolicyKube:
    """Stands for the API server in cli._plugin_configs: one ClusterPolicy and the ConfigMaps it may name."""

    def __init__(self, spec: dict[str, Any], config_maps: dict[str, dict[str, str]]) -> None:
        self.policy = {"apiVersion": "nvidia.com/v1", "kind": "ClusterPolicy",
                       "metadata": {"name": "cluster-policy", "creationTimestamp": "2026-01-01T00:00:00Z"},
                       "spec": spec}  # fmt: skip
        self.config_maps = config_maps

    def list(self, kind: str, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        return [self.policy] if kind == "ClusterPolicy" else []

    def get(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        data = self.config_maps.get(name) if kind == "ConfigMap" else None
        return None if data is None else {"metadata": {"name": name, "namespace": namespace}, "data": data}


def test_capacity_gpus_profile_reads_the_sharing_config_under_the_policys_mig_strategy() -> None:
    """The operator sets the device plugin's MIG_STRATEGY from the ClusterPolicy's mig.strategy, and that env wins
    over the config's flags.migStrategy (k8s-device-plugin api/config/v1/config.go NewConfig: UpdateFromCLIFlags).
    capacity checked the config with no MIG_STRATEGY (sharing.check(config, None)), unlike the operator's own check:
    under mig.strategy mixed it counted a `gpus=2` profile with 4 MPS replicas as 8 nvidia.com/gpu, though the plugin
    refuses MPS with mixed at start (cmd/nvidia-device-plugin/main.go validateFlags), and it took a config whose
    unknown flags.migStrategy the env overrides as refused. Now the policy's strategy is read with the configs."""
    from gpu_operator.cli import _plugin_configs

    views = nodes_with_pods([node("h-0", gpus=8)], [pod("busy", 8, node_name="h-0")])
    profile = capacity.parse_profile(f"gpus=2,label.nvidia.com/gpu.product={H100}", views)
    job = pod("job", 1, nodeSelector={"nvidia.com/gpu.product": H100})
    mps = "version: v1\nsharing:\n  mps:\n    resources:\n    - name: nvidia.com/gpu\n      replicas: 4\n"
    spec = {"mig": {"strategy": "mixed"}, "devicePlugin": {"config": {"name": "sharing-config", "default": "mps"}}}
    configs = _plugin_configs(PolicyKube(spec, {"sharing-config": {"mps": mps}}), NS)  # type: ignore[arg-type]
    result = capacity.plan(job, 100, views, profile, configs)
    assert (result.per_new_node, result.extra_nodes) == (0, None), capacity.render(result, "job")
    assert result.notes == ["the device plugin refuses config mps of ConfigMap sharing-config (sharing.mps: using "
                            "--mig-strategy=mixed is not supported with MPS): a new node "
                            f"{profile.name} advertises no GPUs"], result.notes  # fmt: skip
    # the env overrides an unknown flags.migStrategy of the config, so the plugin starts and shares
    odd = "version: v1\nflags:\n  migStrategy: odd\nsharing:\n  timeSlicing:\n    resources:\n" \
          "    - name: nvidia.com/gpu\n      replicas: 4\n"  # fmt: skip
    spec = {"mig": {"strategy": "single"}, "devicePlugin": {"config": {"name": "sharing-config", "default": "ts"}}}
    configs = _plugin_configs(PolicyKube(spec, {"sharing-config": {"ts": odd}}), NS)  # type: ignore[arg-type]
    assert capacity.plan(job, 100, views, profile, configs).per_new_node == 8
    assert _plugin_configs(PolicyKube({"mig": {"strategy": "mixed"}}, {}), NS).mig_strategy == "mixed"  # type: ignore[arg-type]


def test_capacity_plans_a_workloads_pod_template_and_says_when_the_file_holds_more(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A Job or Deployment file got "no Pod found", and a file of several Pods had its first planned without a word.
    Now a workload's pod template is planned (named by the generateName its pods get), and a note says when the file
    holds more than the one planned."""
    from gpu_operator.cli import main
    from gpu_operator.kube import Kube

    monkeypatch.setattr(Kube, "connect", classmethod(lambda cls, *a, **k: FakeKube([node("h-0")], [])))
    template = {"metadata": {"labels": {"app": "train"}}, "spec": EXERCISE3["spec"]}
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "train"}, "spec": {"template": template}}
    cron = {"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "nightly"},
            "spec": {"jobTemplate": {"spec": {"template": template}}}}  # fmt: skip
    path = tmp_path / "train.yaml"
    for doc, name in ((job, "train"), (cron, "nightly")):
        path.write_text(yaml.safe_dump(doc))
        assert main(["capacity", "--pod", str(path), "--count", "6"]) == 0
        out = capsys.readouterr().out
        assert out.startswith(f"pod (generateName {name}-) × 6: each requests cpu 8"), out
        assert "fit now: 4 of 6" in out and "note" not in out, out
    path.write_text(yaml.safe_dump_all([EXERCISE3, job]))
    assert main(["capacity", "--pod", str(path), "--count", "6"]) == 0
    assert f"note: {path} holds 2 pods and pod templates: only the first is planned" in capsys.readouterr().out
    path.write_text(yaml.safe_dump({**job, "spec": {"template": []}}))
    assert main(["capacity", "--pod", str(path), "--count", "6"]) == 2
    assert capsys.readouterr().err == f"error: {path}: Job train: spec.template: must be a mapping\n"


def test_capacity_gives_a_jobs_pod_the_job_name_labels_and_notes_labels_not_known_in_advance(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A Job's pod template was planned as written, but the API server gives it `job-name` and
    `batch.kubernetes.io/job-name` (kubernetes pkg/registry/batch/job/strategy.go generateSelector, unless
    manualSelector). So the usual one-pod-per-node spread of a Job, anti-affinity on `job-name: <job>`, never matched:
    6 copies were counted on two 8-GPU nodes where the scheduler places 2. Now the pod gets those labels, and a term
    selecting a label not known in advance (a CronJob's Job name, the controller-uid, a pod-template-hash) gets a
    note."""
    from gpu_operator.cli import main
    from gpu_operator.kube import Kube

    monkeypatch.setattr(Kube, "connect", classmethod(lambda cls, *a, **k: FakeKube([node("h-0"), node("h-1")], [])))

    def spread(labels: dict[str, str]) -> dict[str, Any]:
        term = {"topologyKey": "kubernetes.io/hostname", "labelSelector": {"matchLabels": labels}}
        affinity = {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [term]}}
        spec = {**EXERCISE3["spec"], "restartPolicy": "Never", "affinity": affinity}
        return {"metadata": {"labels": {"app": "train"}}, "spec": spec}

    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "train"},
           "spec": {"parallelism": 6, "template": spread({"job-name": "train"})}}  # fmt: skip
    manual = {**job, "spec": {**job["spec"], "manualSelector": True, "selector": {"matchLabels": {"app": "train"}}}}
    cron = {"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "nightly"},
            "spec": {"jobTemplate": {"spec": {"template": spread({"job-name": "nightly"})}}}}  # fmt: skip
    uid = {**job, "spec": {"template": spread({"controller-uid": "0b1c"})}}
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "serve"},
                  "spec": {"template": spread({"app": "train", "pod-template-hash": "5d4f"})}}  # fmt: skip
    path = tmp_path / "train.yaml"
    for doc, fits, unknown in ((job, 2, ""), (manual, 6, ""), (cron, 6, "job-name"), (uid, 6, "controller-uid"),
                               (deployment, 6, "pod-template-hash")):  # fmt: skip
        path.write_text(yaml.safe_dump(doc))
        assert main(["capacity", "--pod", str(path), "--count", "6"]) == 0
        out = capsys.readouterr().out
        assert f"fit now: {fits} of 6" in out, out
        if unknown:
            assert f"affinity or anti-affinity selects {unknown}: the {doc['kind']}'s pods get these labels" in out, out
        else:
            assert "note" not in out, out


def exposed_metrics() -> set[str]:
    from gpu_operator.metrics import REGISTRY

    return {s.name for family in REGISTRY.collect() for s in family.samples if not s.name.endswith("_created")}


def test_grafana_dashboard_uses_only_the_operators_metrics() -> None:
    import re

    from support import REPO

    dashboard = json.loads((REPO / "charts/gpu-operator/files/grafana-dashboard.json").read_text())
    used = {m for p in dashboard["panels"] for t in p["targets"] for m in re.findall(r"gpu_operator_\w+", t["expr"])}
    assert used and used <= exposed_metrics(), used - exposed_metrics()
    assert {"gpu_operator_reconciliation_status", "gpu_operator_nodes_upgrades_failed"} <= used


def test_cli_parsers() -> None:
    from gpu_operator.cli import build_parser, kubectl_main

    args = build_parser().parse_args(["doctor", "--pod", "p", "-o", "json"])
    assert (args.pod, args.namespace, args.output, args.operator_namespace) == ("p", None, "json", "gpu-operator")
    args = build_parser().parse_args(["capacity", "--pod", "f.yaml", "--count", "10", "--node-profile", "gpus=8"])
    assert (args.count, args.node_profile) == (10, "gpus=8")
    with pytest.raises(SystemExit) as done:  # `kubectl gpu doctor --help`
        kubectl_main(["doctor", "--help"])
    assert done.value.code == 0


def test_doctor_node_that_does_not_exist_is_an_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """As `--pod` of a pod that does not exist: a typo in the name must not read as a healthy node."""
    import gpu_operator.doctor
    from gpu_operator.cli import main
    from gpu_operator.kube import Kube

    tainted = node("gpu-node-1", spec={"taints": [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]})
    broken = cluster([tainted], [pod("train", 1)])
    monkeypatch.setattr(Kube, "connect", classmethod(lambda cls, *a, **k: FakeKube()))
    monkeypatch.setattr(gpu_operator.doctor, "gather", lambda kube, ns: broken)
    assert main(["doctor", "--node", "gpu-node-1"]) == 2  # the node's untolerated taint
    capsys.readouterr()
    assert main(["doctor", "--node", "gpu-node1"]) == 3
    assert capsys.readouterr() == ("", "error: node gpu-node1 not found\n")
    assert main(["doctor", "--pod", "nope"]) == 3
    assert capsys.readouterr() == ("", "error: pod default/nope not found\n")


@pytest.mark.parametrize(
    ("argv", "namespace"),
    [([], None), (["-n", "team-a"], "team-a"), (["-nteam-a"], "team-a"), (["--names", "team-a"], "team-a"),
     (["--namespac=team-a"], "team-a"), (["--pod", "p"], "default")],
)  # fmt: skip
def test_doctor_looks_in_the_namespace_asked_for(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], argv: list[str], namespace: str | None
) -> None:
    """-n unset is every namespace. Whether it was set was read off argv, where only `-n…` and `--namespace` were
    seen: argparse's abbreviation `--names team-a` set the namespace, yet doctor diagnosed every namespace."""
    import gpu_operator.doctor
    from gpu_operator.cli import kubectl_main, main
    from gpu_operator.kube import Kube

    asked: list[str | None] = []
    monkeypatch.setattr(Kube, "connect", classmethod(lambda cls, *a, **k: FakeKube()))
    monkeypatch.setattr(gpu_operator.doctor, "gather", lambda kube, ns: cluster([node("h-0")], [pod("p", 1)]))
    monkeypatch.setattr(gpu_operator.doctor, "diagnose", lambda c, namespace, **kw: asked.append(namespace) or [])
    for run in (main, kubectl_main):
        assert run(["doctor", *argv]) == 0, capsys.readouterr()
    assert asked == [namespace, namespace]


def _validator_waiting_in(node_name: str, step: str) -> dict[str, Any]:
    return {"kind": "Pod", "spec": {"nodeName": node_name},
            "metadata": {"name": f"nvidia-operator-validator-{node_name}", "namespace": NS,
                         "labels": {"nvidia.com/gpu-operator.state": "state-operator-validation"}},
            "status": {"phase": "Pending", "initContainerStatuses": [
                {"name": step, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]}}  # fmt: skip


def test_doctor_pod_gives_the_stack_findings_of_the_pods_node(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--pod` used to leave out the stack's findings: on a validator stuck in driver-validation (the CLI even reads
    that operand pod for it) doctor said "every operand is ready" and exited 0. The stack's findings about the pod's
    node are given now, and only those."""
    import gpu_operator.doctor
    from gpu_operator.cli import main
    from gpu_operator.kube import Kube

    status = {"state": "notReady", "states": [{"name": "state-operator-validation", "state": "notReady",
                                               "message": "2 of 2 pods unavailable"}]}  # fmt: skip
    stuck = [_validator_waiting_in("h-0", "driver-validation"), _validator_waiting_in("h-1", "toolkit-validation")]
    c = cluster([node("h-0"), node("h-1")], stuck, policy_status=status)
    found = diagnose(c, pod="nvidia-operator-validator-h-0", namespace=NS)
    assert [(f.kind, f.nodes) for f in found] == [("OperandNotReady", ("h-0",))], render_text(found)
    assert "driver-validation" in found[0].summary
    train = pod("train", 1, node_name="h-1")  # a workload on a node whose stack is broken is told so
    c = cluster([node("h-0"), node("h-1")], [*stuck, train], policy_status=status)
    assert [f.nodes for f in diagnose(c, pod="train", namespace="default")] == [("h-1",)]
    monkeypatch.setattr(Kube, "connect", classmethod(lambda cls, *a, **k: FakeKube()))
    monkeypatch.setattr(gpu_operator.doctor, "gather", lambda kube, ns: c)
    assert main(["doctor", "--pod", "nvidia-operator-validator-h-0", "-n", NS]) == 2
    assert "every operand is ready" not in capsys.readouterr().out


def test_a_workload_pod_that_cannot_get_an_nvidia_sandbox_is_diagnosed() -> None:
    """A workload bound to a node whose nvidia runtime handler is missing stays in ContainerCreating with §12 entry
    10's signature; only the operand pods' sandbox events were read, so it got no finding at all."""
    w = pod("train", 1, node_name="h-0", image="nvcr.io/nvidia/pytorch:25.01-py3", runtimeClassName="nvidia",
            status={"phase": "Pending", "containerStatuses": [
                {"name": "main", "ready": False, "state": {"waiting": {"reason": "ContainerCreating"}}}]})  # fmt: skip
    message = ('Failed to create pod sandbox: rpc error: code = Unknown desc = failed to get sandbox runtime: '
               'no runtime for "nvidia" is configured')  # fmt: skip
    ev = {"reason": "FailedCreatePodSandBox", "type": "Warning", "message": message,
          "involvedObject": {"kind": "Pod", "namespace": "default", "name": "train"}}  # fmt: skip
    found = diagnose(cluster([node("h-0")], [w], events=[ev]), pod="train", namespace="default")
    assert [(f.kind, f.nodes) for f in found] == [("PodSandboxFailed", ("h-0",))], render_text(found)
    assert message in found[0].summary and "container toolkit" in found[0].fix
    cni = {**ev, "message": "Failed to create pod sandbox: plugin type=calico failed (add): connection refused"}
    assert diagnose(cluster([node("h-0")], [w], events=[cni])) == []  # not the GPU stack's


def test_the_kubelets_runtimeclass_not_found_sandbox_failure_gets_the_runtimeclass_fix() -> None:
    """A pod admitted while its RuntimeClass existed and bound after the class was deleted fails in the kubelet:
    createPodSandbox's LookupRuntimeHandler returns the lister's NotFound, 'runtimeclass.node.k8s.io "nvidia" not
    found' (lower case). The case-sensitive test for "RuntimeClass" missed it, and it got entry 10's toolkit fix
    (CONTAINERD_CONFIG), which cannot help: §12 entry 9, the class is missing."""
    w = pod("train", 1, node_name="h-0", image="nvcr.io/nvidia/pytorch:25.01-py3", runtimeClassName="nvidia",
            status={"phase": "Pending", "containerStatuses": [
                {"name": "main", "ready": False, "state": {"waiting": {"reason": "ContainerCreating"}}}]})  # fmt: skip
    message = 'Failed to create pod sandbox: runtimeclass.node.k8s.io "nvidia" not found'
    ev = {"reason": "FailedCreatePodSandBox", "type": "Warning", "message": message,
          "involvedObject": {"kind": "Pod", "namespace": "default", "name": "train"}}  # fmt: skip
    f = kinds(cluster([node("h-0")], [w], events=[ev]))["PodSandboxFailed"]
    assert "RuntimeClass is missing, though the ClusterPolicy's pre-requisites state creates nvidia" in f.fix, f.fix
    assert "container toolkit" not in f.fix, f.fix
    # A class the operator does not create: the ones it does, and operator.runtimeClass.
    w["spec"]["runtimeClassName"] = "nvidia-gpu"
    ev["message"] = 'Failed to create pod sandbox: runtimeclass.node.k8s.io "nvidia-gpu" not found'
    f = kinds(cluster([node("h-0")], [w], events=[ev]))["PodSandboxFailed"]
    assert "creates nvidia, nvidia-cdi, nvidia-legacy, not nvidia-gpu" in f.fix, f.fix
    assert "operator.runtimeClass" in f.fix, f.fix


def test_a_sandbox_event_does_not_outlive_the_sandbox_of_a_pod_still_pulling_its_image() -> None:
    """A pod created before the toolkit configured the nvidia handler keeps its FailedCreatePodSandBox event (events
    live an hour). While its big CUDA image is pulled, or cannot be pulled, it is Pending with no container started,
    and the old event alone made doctor report PodSandboxFailed (ERROR, "the nvidia runtime handler is not
    configured") on a node whose runtime works. The kubelet pulls only in a sandbox: a sandbox-ready condition or a
    pull event newer than the failure, or a container waiting on a later step, proves the sandbox came up."""
    old = {"reason": "FailedCreatePodSandBox", "type": "Warning", "lastTimestamp": "2026-01-01T00:00:00Z",
           "involvedObject": {"kind": "Pod", "namespace": "default", "name": "train"},
           "message": 'Failed to create pod sandbox: rpc error: code = Unknown desc = failed to get sandbox runtime: '
                      'no runtime for "nvidia" is configured'}  # fmt: skip
    pulling = {"reason": "Pulling", "type": "Normal", "lastTimestamp": "2026-01-01T00:06:00Z",
               "involvedObject": {"kind": "Pod", "namespace": "default", "name": "train"},
               "message": 'Pulling image "nvcr.io/nvidia/pytorch:25.01-py3"'}  # fmt: skip
    ready = {"type": "PodReadyToStartContainers", "status": "True", "lastTransitionTime": "2026-01-01T00:05:00Z"}

    def found(waiting: str, conditions: list[Any], events: list[Any]) -> set[str]:
        status = {"phase": "Pending", "conditions": conditions, "containerStatuses": [
            {"name": "main", "ready": False, "restartCount": 0, "state": {"waiting": {"reason": waiting}}}]}
        w = pod("train", 0, node_name="h-0", image="nvcr.io/nvidia/pytorch:25.01-py3", runtimeClassName="nvidia",
                env=[{"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"}], status=status)  # fmt: skip
        return {f.kind for f in diagnose(cluster([node("h-0")], [w], events=[old, *events]))}

    assert "PodSandboxFailed" not in found("ImagePullBackOff", [], [])
    assert "PodSandboxFailed" not in found("ContainerCreating", [ready], [])
    assert "PodSandboxFailed" not in found("ContainerCreating", [], [pulling])
    # Still creating, or the sandbox failed again after it had come up: the failure holds.
    assert "PodSandboxFailed" in found("ContainerCreating", [], [])
    again = {**old, "lastTimestamp": "2026-01-01T00:07:00Z"}
    assert "PodSandboxFailed" in found("ContainerCreating", [{**ready, "status": "False"}], [pulling, again])
    assert "PodSandboxFailed" in found("ContainerCreating", [ready], [pulling, again])


def refused(kind: str, name: str, message: str, ns: str = "default", at: str = "2026-01-01T00:10:00Z"):
    """The Warning event a controller posts on itself when the API server refuses the pod it creates."""
    return {"type": "Warning", "reason": "FailedCreate", "message": message, "lastTimestamp": at,
            "metadata": {"namespace": ns}, "involvedObject": {"kind": kind, "namespace": ns, "name": name}}  # fmt: skip


NOT_EQUAL = ('Error creating: Pod "train-7d9f8c-x2k4q" is invalid: spec.containers[0].resources.requests: Invalid '
             'value: "1": must be equal to nvidia.com/gpu limit of 2')  # fmt: skip
NO_LIMIT = ('Error creating: Pod "finetune-abcde" is invalid: spec.containers[0].resources.limits: Required value: '
            "Limit must be set for non overcommitable resources")  # fmt: skip
FRACTION = ('create Pod infer-0 in StatefulSet infer failed error: Pod "infer-0" is invalid: '
            'spec.containers[0].resources.limits[nvidia.com/gpu]: Invalid value: "500m": must be an integer')


def owned_pod(name: str, kind: str, owner: str, created: str, **labels: str) -> dict[str, Any]:
    p = pod(name, 1, node_name="h-0")
    p["metadata"].update(ownerReferences=[{"kind": kind, "name": owner, "controller": True}],
                         creationTimestamp=created)  # fmt: skip
    p["metadata"]["labels"].update(labels)
    return p


def replica_set(name: str, revision: int, deployment: str = "train") -> tuple[tuple[str, str], dict[str, Any]]:
    """A Deployment's ReplicaSet as doctor reads it, keyed as Cluster.replica_sets."""
    meta = {"name": name, "namespace": "default", "annotations": {"deployment.kubernetes.io/revision": str(revision)},
            "ownerReferences": [{"kind": "Deployment", "name": deployment, "uid": f"uid-{deployment}",
                                 "controller": True}]}  # fmt: skip
    return ("default", name), {"kind": "ReplicaSet", "metadata": meta}


def test_a_controller_whose_gpu_pods_the_api_server_refuses_is_named_with_the_fix() -> None:
    """REFERENCE §12 entries 4 and 5 for pods a controller creates (a Deployment's ReplicaSet, a Job, a StatefulSet,
    a DaemonSet): the API server refuses the pod, so no pod exists, and the controller posts a Warning event
    FailedCreate on itself with the refusal. doctor read only the events about pods and said nothing (exit 0)."""
    quota = refused("ReplicaSet", "web-5c8d", 'Error creating: pods "web-5c8d-1" is forbidden: exceeded quota: q')
    events = [refused("ReplicaSet", "train-7d9f8c", NOT_EQUAL), refused("Job", "finetune", NO_LIMIT, ns="team-a"),
              refused("StatefulSet", "infer", FRACTION), quota]  # fmt: skip
    found = {f.object: f for f in diagnose(cluster([node("h-0")], [], events=events))}
    assert set(found) == {"ReplicaSet default/train-7d9f8c", "Job team-a/finetune", "StatefulSet default/infer"}
    rs, job = found["ReplicaSet default/train-7d9f8c"], found["Job team-a/finetune"]
    sts = found["StatefulSet default/infer"]
    assert {f.kind for f in found.values()} == {"PodCreationRefused"} and rs.severity == "error"
    assert rs.evidence == [Evidence("ReplicaSet default/train-7d9f8c", "event FailedCreate", NOT_EQUAL)]
    assert "nvidia.com/gpu" in rs.summary and "limits only" in rs.fix and "Deployment" in rs.fix
    assert "add the limit" in job.fix and "whole number" in job.fix
    assert "whole number" in sts.fix
    assert exit_status(list(found.values())) == 2
    # Only the namespace asked for; none for --pod (a pod's own findings) or --node.
    assert [f.object for f in diagnose(cluster([node("h-0")], [], events=events), namespace="team-a")] == [
        "Job team-a/finetune"]
    assert diagnose(cluster([node("h-0")], [pod("x", node_name="h-0")], events=events), pod="x") == []
    assert diagnose(cluster([node("h-0")], [], events=events), node="h-0") == []


NO_RUNTIME_CLASS = ('Error creating: pods "train-5d8f9c7b6-" is forbidden: pod rejected: RuntimeClass "nvidia" not '
                    "found")  # fmt: skip


def test_a_controller_whose_pods_name_a_runtimeclass_that_does_not_exist_is_named() -> None:
    """REFERENCE §12 entry 9: 'RuntimeClass "nvidia" not found' is the RuntimeClass admission plugin's refusal (on by
    default): a Deployment's ReplicaSet gets only a FailedCreate event and no pod. Only entries 4 and 5 were known,
    so the event was dropped and doctor said "no findings" (exit 0) while the Deployment had no pod."""
    found = diagnose(cluster([node("h-0")], [], events=[refused("ReplicaSet", "train-5d8f9c7b6", NO_RUNTIME_CLASS)]))
    assert exit_status(found) == 2, render_text(found)
    (f,) = found
    assert (f.kind, f.object) == ("PodCreationRefused", "ReplicaSet default/train-5d8f9c7b6")
    assert "their RuntimeClass nvidia does not exist" in f.summary, f.summary
    assert "the ClusterPolicy's pre-requisites state creates nvidia: read the ClusterPolicy's status" in f.fix, f.fix
    # A class the operator does not create, and no ClusterPolicy at all.
    other = NO_RUNTIME_CLASS.replace('"nvidia"', '"gpu"')
    (f,) = diagnose(cluster([node("h-0")], [], events=[refused("ReplicaSet", "train-5d8f9c7b6", other)]))
    assert "creates nvidia, nvidia-cdi, nvidia-legacy, not gpu" in f.fix, f.fix
    (f,) = [f for f in diagnose(cluster([node("h-0")], [], events=[refused("Job", "j", other)], policy=False))
            if f.kind == "PodCreationRefused"]  # fmt: skip
    assert "there is no valid ClusterPolicy" in f.fix, f.fix


# What the API server's PodSecurity admission answers the DaemonSet controller when the operand namespace enforces
# `baseline` (a cluster-wide AdmissionConfiguration default, or a namespace an admin created and labelled) and the
# ClusterPolicy leaves psa.enabled at its default, false.
PSA_REFUSAL = (
    'Error creating: pods "nvidia-driver-daemonset-ubuntu22.04-x7k2p" is forbidden: violates PodSecurity '
    '"baseline:latest": host namespaces (hostPID=true), privileged (containers "k8s-driver-manager", '
    '"nvidia-driver-ctr" must not set securityContext.privileged=true), hostPath volumes (volumes "run-nvidia", '
    '"var-log", "dev-log", "host-os-release", "run-nvidia-fabricmanager")'
)
DRIVER_DS = "nvidia-driver-daemonset-ubuntu22.04"


def test_doctor_names_psa_enabled_when_pod_security_admission_refuses_the_operand_pods() -> None:
    """The operands are privileged, hostPID, hostPath (REFERENCE §11), so a namespace enforcing `baseline` or
    `restricted` makes the API server refuse every operand pod: the DaemonSet controller posts only a Warning event
    FailedCreate "violates PodSecurity" on the DaemonSet, and no pod exists. doctor kept only the GPU-request and
    RuntimeClass refusals: this one was dropped, and the admin was told only "operands are not ready ... kubectl get
    pods", which lists no pod. Now the refused DaemonSet is named, with psa.enabled (REFERENCE §1) or the namespace's
    enforce label as the fix; in another namespace, the pod template or that namespace's label."""
    status = {"state": "notReady", "states": [{
        "name": "state-driver", "state": "notReady",
        "message": f"{DRIVER_DS}: 1 of 1 pods unavailable (1 not created yet)",
    }]}  # fmt: skip
    events = [refused("DaemonSet", DRIVER_DS, PSA_REFUSAL, ns=NS)]
    found = diagnose(cluster([node("h-0")], [], events=events, policy_status=status))
    text = render_text(found)
    (f,) = [f for f in found if any(e.message == PSA_REFUSAL for e in f.evidence)]
    assert (f.kind, f.object, f.severity) == ("PodCreationRefused", f"DaemonSet {NS}/{DRIVER_DS}", "error"), text
    assert f'namespace {NS} enforces PodSecurity "baseline"' in f.summary, f.summary
    assert "set psa.enabled: true in ClusterPolicy cluster-policy" in f.fix, f.fix
    assert f"kubectl label namespace {NS} pod-security.kubernetes.io/enforce=privileged --overwrite" in f.fix
    assert "pod template" not in f.fix, f.fix
    # psa.enabled already on: the operator's label did not hold (its patch refused, or something sets it back).
    c = with_spec(cluster([node("h-0")], [], events=events, policy_status=status), {"psa": {"enabled": True}})
    (f,) = [f for f in diagnose(c) if f.kind == "PodCreationRefused"]
    assert "psa.enabled is true" in f.fix and "read its log" in f.fix, f.fix
    # Another namespace's controller: its pod template, or that namespace's label.
    restricted = PSA_REFUSAL.replace('"baseline:latest"', '"restricted:v1.30"')
    (f,) = diagnose(cluster([node("h-0")], [], events=[refused("ReplicaSet", "agent-5d8f", restricted, ns="ops")]))
    assert 'namespace ops enforces PodSecurity "restricted"' in f.summary, f.summary
    assert "in the pod template of the Deployment" in f.fix and 'meet PodSecurity "restricted"' in f.fix, f.fix
    assert "kubectl label namespace ops pod-security.kubernetes.io/enforce=privileged" in f.fix, f.fix
    assert "psa.enabled" not in f.fix, f.fix


def test_a_refusal_of_two_containers_is_quoted_without_the_aggregates_punctuation() -> None:
    """The API server joins several field errors as "[a, b]" (field.ErrorList.ToAggregate): the limit was taken
    up to the next space, so a pod whose two containers both ask a request unequal to the limit read "its limit of
    2, (for a GPU ...)" (the last error's "2]")."""
    message = ('Error creating: Pod "train-7d9f8c-x2k4q" is invalid: [spec.containers[0].resources.requests: Invalid '
               'value: "1": must be equal to nvidia.com/gpu limit of 2, spec.containers[1].resources.requests: '
               'Invalid value: "1": must be equal to nvidia.com/gpu limit of 2]')  # fmt: skip
    last = ('Error creating: Pod "train-7d9f8c-x2k4q" is invalid: [spec.containers[0].image: Required value, '
            'spec.containers[1].resources.requests: Invalid value: "1": must be equal to nvidia.com/gpu limit of 2]')
    for quoted in (message, last):
        (found,) = diagnose(cluster([node("h-0")], [], events=[refused("ReplicaSet", "train-7d9f8c", quoted)]))
        assert "its nvidia.com/gpu request is not equal to its limit of 2 (" in found.summary, found.summary

def test_a_refusal_the_controller_got_past_is_not_reported() -> None:
    """A FailedCreate event lives an hour after the template was fixed: once the owner has pods created after the
    event's last time (or, for a ReplicaSet, a newer ReplicaSet of its Deployment has), it is stale. Pods created
    before the refusal (the old revision's) do not make it stale: the rollout is stuck."""
    events = [refused("ReplicaSet", "train-7d9f8c", NOT_EQUAL), refused("Job", "finetune", NO_LIMIT),
              refused("DaemonSet", "agent", NO_LIMIT)]  # fmt: skip

    def objects(pods: list[dict[str, Any]], replica_sets: Any = ()) -> list[str]:
        c = cluster([node("h-0")], pods, events=events)
        c.replica_sets = dict(replica_sets) if replica_sets is not None else None
        return [f.object for f in diagnose(c)]

    after, before = "2026-01-01T00:10:05Z", "2026-01-01T00:01:00Z"
    assert objects([owned_pod("finetune-x", "Job", "finetune", after)]) == [
        "DaemonSet default/agent", "ReplicaSet default/train-7d9f8c"]
    assert objects([owned_pod("agent-x", "DaemonSet", "agent", before)]) == [
        "DaemonSet default/agent", "Job default/finetune", "ReplicaSet default/train-7d9f8c"]
    fixed = [owned_pod("train-66b4f9-x", "ReplicaSet", "train-66b4f9", after, **{"pod-template-hash": "66b4f9"})]
    newer = [replica_set("train-7d9f8c", 2), replica_set("train-66b4f9", 3)]
    assert "ReplicaSet default/train-7d9f8c" not in objects(fixed, newer)
    assert "ReplicaSet default/train-7d9f8c" not in objects(fixed, None)  # ReplicaSets not readable: any counts
    assert "ReplicaSet default/train-7d9f8c" in objects(
        [owned_pod("other-66b4f9-x", "ReplicaSet", "other-66b4f9", after, **{"pod-template-hash": "66b4f9"})])
    # A DaemonSet whose status says all its pods are ready (its pods not read, its template stands in for them).
    settled = cluster([node("h-0")], [], events=events)
    template = {"metadata": {"namespace": "default", "ownerReferences": [{"kind": "DaemonSet", "name": "agent"}]}}
    settled.daemon_pods = [DaemonPods(template, ("h-0",))]
    assert "DaemonSet default/agent" not in [f.object for f in diagnose(settled)]


def test_a_replacement_pod_of_the_old_replicaset_does_not_hide_a_stuck_rollout() -> None:
    """A ReplicaSet's FailedCreate was dropped once any ReplicaSet named <deployment>-<hash> had a pod created after
    the event, newer or not. In a rollout stuck on a refused template the old ReplicaSet keeps running and replaces
    each pod it loses (an eviction, a node going away): that replacement, created after the event's last retry, hid
    the refusal although the new ReplicaSet still has no pod. Now only a ReplicaSet of a higher revision counts."""
    # Deployment train: the old revision train-66b4f9 runs, the new train-7d9f8c is refused.
    event = refused("ReplicaSet", "train-7d9f8c", NOT_EQUAL, at="2026-01-01T00:10:00Z")
    replacement = owned_pod("train-66b4f9-q", "ReplicaSet", "train-66b4f9", "2026-01-01T00:12:00Z",
                            **{"pod-template-hash": "66b4f9"})  # fmt: skip
    c = cluster([node("h-0")], [replacement], events=[event])
    c.replica_sets = dict([replica_set("train-66b4f9", 1), replica_set("train-7d9f8c", 2)])
    assert "ReplicaSet default/train-7d9f8c" in [f.object for f in diagnose(c)]
    c.replica_sets = dict([replica_set("train-66b4f9", 3, deployment="other"), replica_set("train-7d9f8c", 2)])
    assert "ReplicaSet default/train-7d9f8c" in [f.object for f in diagnose(c)], "another Deployment's"


def test_a_refusal_of_a_replicaset_that_is_gone_is_not_reported_once_its_deployment_moved_on() -> None:
    """Only a newer revision's pods settle a refused ReplicaSet, and the revisions are read. When the refused
    ReplicaSet is gone (the template was fixed and the Deployment, with revisionHistoryLimit 0 or beyond its limit,
    deleted it), the refused one read as None, no sibling was "newer", and the stale FailedCreate (Events live an
    hour) was reported as a stuck rollout of an object that does not exist. Now a ReplicaSet that is gone is past
    its refusal once another ReplicaSet of its Deployment has pods created since (no further read)."""
    event = refused("ReplicaSet", "train-7d9f8c", NOT_EQUAL, at="2026-01-01T00:10:00Z")
    fixed = owned_pod("train-66b4f9-x", "ReplicaSet", "train-66b4f9", "2026-01-01T00:12:00Z",
                      **{"pod-template-hash": "66b4f9"})  # fmt: skip
    c = cluster([node("h-0")], [fixed], events=[event])
    c.replica_sets = dict([replica_set("train-66b4f9", 3)])  # train-7d9f8c: not found
    assert "ReplicaSet default/train-7d9f8c" not in [f.object for f in diagnose(c)]


def test_doctor_reads_the_failed_create_events_in_one_more_list() -> None:
    """The controllers' FailedCreate events were never read (only the Warning events about pods): one list more,
    by field selector, run beside the others."""
    from gpu_operator.doctor import gather

    event = refused("Job", "finetune", NO_LIMIT)

    class Reads(FakeKube):
        calls: list[tuple[str, str]] = []

        def list(self, kind: str, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
            self.calls.append((kind, kwargs.get("field_selector") or ""))
            return [event] if (kind, kwargs.get("field_selector")) == ("Event", "type=Warning,reason=FailedCreate") \
                else super().list(kind, *args, **kwargs)  # fmt: skip

        def get(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
            return {"kind": kind, "metadata": {"name": name, "namespace": namespace}}  # the Job exists

        def api_groups(self) -> frozenset[str]:
            return frozenset()

    kube = Reads([node("h-0")], [])
    c = gather(kube, NS)  # type: ignore[arg-type]
    assert sorted(s for k, s in kube.calls if k == "Event") == ["type=Warning,involvedObject.kind=Pod",
                                                                "type=Warning,reason=FailedCreate"]  # fmt: skip
    assert c.events == [event] and "PodCreationRefused" in {f.kind for f in diagnose(c)}


def test_doctor_reads_replicasets_only_for_a_refusal_another_revision_may_have_got_past() -> None:
    """Which ReplicaSet is the newer revision needs the ReplicaSets: doctor gets the refused one, and the others of
    its Deployment with pods created since, only then (no read without such a refusal); with a 403 any counts."""
    from gpu_operator.doctor import gather
    from gpu_operator.kube import ApiError, path_for

    event = refused("ReplicaSet", "train-7d9f8c", NOT_EQUAL)
    replacement = owned_pod("train-66b4f9-q", "ReplicaSet", "train-66b4f9", "2026-01-01T00:12:00Z",
                            **{"pod-template-hash": "66b4f9"})  # fmt: skip
    stored = dict([replica_set("train-66b4f9", 1), replica_set("train-7d9f8c", 2)])
    stored_names = [name for _, name in stored]

    class Reads(FakeKube):
        def __init__(self, events: list[dict[str, Any]], forbidden: bool = False) -> None:
            super().__init__([node("h-0")], [replacement])
            self.events, self.forbidden = events, forbidden
            self.gets: list[str] = []

        def list(self, kind: str, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
            if kind == "Event":
                return self.events if kwargs.get("field_selector") == "type=Warning,reason=FailedCreate" else []
            return super().list(kind, *args, **kwargs)

        def get(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
            if kind != "ReplicaSet":
                return {"kind": kind}  # a refused Job exists
            self.gets.append(path_for(kind, name, namespace))  # a kind the client knows
            if self.forbidden:
                raise ApiError(403, '{"message": "forbidden"}', f"GET replicasets {name}", "Forbidden")
            return stored.get((namespace or "", name))

        def api_groups(self) -> frozenset[str]:
            return frozenset()

    def found(kube: Reads) -> list[str]:
        return [f.object for f in diagnose(gather(kube, NS))]  # type: ignore[arg-type]

    kube = Reads([event])
    assert "ReplicaSet default/train-7d9f8c" in found(kube)
    assert sorted(kube.gets) == [f"/apis/apps/v1/namespaces/default/replicasets/{n}" for n in sorted(stored_names)]
    quiet = Reads([refused("Job", "finetune", NO_LIMIT)])
    assert "Job default/finetune" in found(quiet) and quiet.gets == []
    forbidden = Reads([event], forbidden=True)
    assert "ReplicaSet default/train-7d9f8c" not in found(forbidden)  # as before ReplicaSets were read


def test_a_refusal_of_a_controller_that_is_gone_is_not_reported() -> None:
    """A FailedCreate event lives an hour after the Job, StatefulSet (or DaemonSet, or a ReplicaSet whose Deployment
    was deleted) it is about: once that controller was deleted, doctor still reported PodCreationRefused (ERROR,
    exit 2) for an object that does not exist. doctor gets each refused controller that has no pods created since
    (only then: no read without such a refusal) and drops the refusal of one that is gone; a 403 keeps it."""
    from gpu_operator.doctor import gather
    from gpu_operator.kube import ApiError, path_for

    events = [refused("Job", "finetune", NO_LIMIT), refused("StatefulSet", "infer", FRACTION),
              refused("ReplicaSet", "train-7d9f8c", NOT_EQUAL)]  # fmt: skip
    alive = {("Job", "finetune")}

    class Reads(FakeKube):
        def __init__(self, events: list[dict[str, Any]], forbidden: bool = False) -> None:
            super().__init__([node("h-0")], [])
            self.events, self.forbidden = events, forbidden
            self.gets: list[str] = []

        def list(self, kind: str, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
            if kind == "Event":
                return self.events if kwargs.get("field_selector") == "type=Warning,reason=FailedCreate" else []
            return super().list(kind, *args, **kwargs)

        def get(self, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
            self.gets.append(path_for(kind, name, namespace))  # a kind the client knows
            if self.forbidden:
                raise ApiError(403, '{"message": "forbidden"}', f"GET {kind} {name}", "Forbidden")
            return {"kind": kind, "metadata": {"name": name}} if (kind, name) in alive else None

        def api_groups(self) -> frozenset[str]:
            return frozenset()

    def found(kube: Reads) -> list[str]:
        c = gather(kube, NS)  # type: ignore[arg-type]
        return [f.object for f in diagnose(c) if f.kind == "PodCreationRefused"]

    kube = Reads(events)
    assert found(kube) == ["Job default/finetune"]
    assert sorted(kube.gets) == ["/apis/apps/v1/namespaces/default/replicasets/train-7d9f8c",
                                 "/apis/apps/v1/namespaces/default/statefulsets/infer",
                                 "/apis/batch/v1/namespaces/default/jobs/finetune"]  # fmt: skip
    forbidden = Reads(events, forbidden=True)
    assert len(found(forbidden)) == 3  # not known to be gone: as before
    quiet = Reads([])
    assert found(quiet) == [] and quiet.gets == []
    # A StatefulSet with pods created since its refusal is past it without a read.
    ran = Reads([refused("StatefulSet", "infer", FRACTION)])
    ran.objects["Pod"] = [owned_pod("infer-0", "StatefulSet", "infer", "2026-01-01T00:10:05Z")]
    assert found(ran) == [] and ran.gets == []


def test_operand_pods_are_taken_from_the_one_listing_of_every_pod() -> None:
    from gpu_operator.observe import _operand_pods
    from gpu_operator.states.base import MANAGED_BY, OPERATOR_NAME

    def p(name: str, namespace: str, labels: dict[str, str]) -> dict[str, Any]:
        return {"metadata": {"name": name, "namespace": namespace, "labels": labels}}

    ours = p("plugin", NS, {MANAGED_BY: OPERATOR_NAME})
    pods = [ours, p("elsewhere", "default", {MANAGED_BY: OPERATOR_NAME}), p("user", NS, {}), p("bare", NS, {})]
    pods[3]["metadata"].pop("labels")
    assert _operand_pods(pods, NS) == [ours]


def daemonset(name: str, selector: dict[str, str] | None = None, ready: int | None = 2, want: int = 2,
              component: str = "", **template: Any) -> dict[str, Any]:  # fmt: skip
    labels = {"app": name, **({"app.kubernetes.io/component": component} if component else {})}
    status = {"desiredNumberScheduled": want, "currentNumberScheduled": want, "updatedNumberScheduled": want,
              "numberReady": want if ready is None else ready, "numberAvailable": want if ready is None else ready,
              "observedGeneration": 1}  # fmt: skip
    return {
        "kind": "DaemonSet",
        "metadata": {"name": name, "namespace": NS, "generation": 1},
        "spec": {"selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": labels},
                              "spec": {"nodeSelector": selector or {}, "containers": [{"name": "c"}], **template}}},
        "status": status,
    }  # fmt: skip


def reads_for(daemonsets: list[dict[str, Any]], nodes: list[dict[str, Any]], read: list[dict[str, Any]] | None = None
              ) -> tuple[list[str], list[Any]]:  # fmt: skip
    from gpu_operator.doctor.reads import _operand_reads

    owned = {("DaemonSet", NS, d["metadata"]["name"]): d for d in daemonsets}
    facts = {n["metadata"]["name"]: NodeFacts.from_node(n) for n in nodes}
    return _operand_reads(owned, nodes, facts, read or [])


def test_settled_daemonsets_pods_are_not_read_their_template_stands_in() -> None:
    from gpu_operator.observe import OWNED_SELECTOR

    nodes = [node("h-0"), node("h-1"), node("c-0", gpus=0, labels={"nvidia.com/gpu.present": "false"})]
    on_gpus = {"nvidia.com/gpu.present": "true"}
    plugin = daemonset("plugin", on_gpus, ready=None)
    plugin["spec"]["template"]["spec"]["containers"][0]["resources"] = {"requests": {"cpu": "1"}}
    selectors, stand_ins = reads_for([plugin], nodes)
    assert selectors == [] and [(d.pod["metadata"]["labels"]["app"], d.nodes) for d in stand_ins] == [
        ("plugin", ("h-0", "h-1"))
    ]
    c = cluster(nodes, [])
    c.daemon_pods = stand_ins
    assert c.views["h-0"].used["cpu"] == 1 and c.views["h-0"].used["pods"] == 1 and not c.views["c-0"].used
    # One DaemonSet not ready: only its pods are read; the others still stand in.
    failing = daemonset("validator", on_gpus, ready=1)
    selectors, stand_ins = reads_for([plugin, failing], nodes)
    assert selectors == ["app=validator"] and [d.nodes for d in stand_ins] == [("h-0", "h-1")]
    # A taint the DaemonSet does not tolerate: the controller placed fewer pods than the selector allows, and
    # the status (2 pods) disagrees with the nodes found (1): its pods are read.
    tainted = node("h-1", spec={"taints": [{"key": "dedicated", "effect": "NoSchedule"}]})
    assert reads_for([plugin], [nodes[0], tainted])[0] == ["app=plugin"]
    # Many DaemonSets not ready, or a node in a driver upgrade (the planner needs every operand pod): one listing.
    many = [daemonset(f"ds-{i}", on_gpus, ready=0) for i in range(4)]
    assert reads_for(many, nodes) == ([OWNED_SELECTOR], [])
    upgrading = node("h-0", labels={"nvidia.com/gpu-driver-upgrade-state": "wait-for-jobs-required"})
    assert reads_for([plugin], [upgrading, nodes[1]]) == ([OWNED_SELECTOR], [])
    done = node("h-0", labels={"nvidia.com/gpu-driver-upgrade-state": "upgrade-done"})
    assert reads_for([plugin], [done, nodes[1]])[0] == []


def test_driver_pods_are_read_when_a_gpu_node_has_no_driver_labels() -> None:
    bare = node("h-0")
    for key in ("nvidia.com/cuda.driver.major", "nvidia.com/cuda.driver.minor", "nvidia.com/cuda.driver.rev"):
        bare["metadata"]["labels"].pop(key)
    driver = daemonset("driver", component="nvidia-driver", ready=None, want=1)
    plugin = daemonset("plugin", ready=None, want=1)
    assert reads_for([driver, plugin], [bare]) == (["app=driver"], reads_for([plugin], [bare])[1])
    assert reads_for([driver, plugin], [node("h-0")])[0] == []


# Filters of the scheduler that doctor models: only nodes that advertise the resource can take a GPU pod, so theirs
# are the taints and cordons that hold it; one node that fits is enough; sidecars; daemon pods' tolerations.


def cpu_node(name: str, **spec: Any) -> dict[str, Any]:
    res = {"cpu": "32", "memory": "128Gi", "pods": "110"}
    return {"kind": "Node", "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "spec": spec, "status": {"capacity": res, "allocatable": dict(res)}}


GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}


def test_taint_on_gpu_nodes_is_the_cause_when_cpu_nodes_are_untainted() -> None:
    # Common layout: GPU nodes tainted nvidia.com/gpu, CPU workers untainted; the pod forgot the toleration.
    # kube-scheduler: "1 node(s) had untolerated taint {nvidia.com/gpu: present}, 1 Insufficient nvidia.com/gpu".
    # §12 entry 14 -> add the toleration.
    c = cluster([node("h-0", spec={"taints": [GPU_TAINT]}), cpu_node("c-0")], [pod("p", 1)])
    found = kinds(c)
    assert "UntoleratedTaint" in found, {k: f.summary for k, f in found.items()}


def test_cordoned_gpu_nodes_mid_upgrade_are_the_cause_when_cpu_nodes_are_open() -> None:
    # §12 entry 19: GPU node cordoned by the driver upgrade -> "node(s) were unschedulable"; a CPU node is open.
    state = {"nvidia.com/gpu-driver-upgrade-state": "wait-for-jobs-required"}
    c = cluster([node("h-0", spec={"unschedulable": True}, labels=state), cpu_node("c-0")], [pod("p", 1)])
    found = kinds(c)
    assert "NodesCordoned" in found, {k: f.summary for k, f in found.items()}


def test_mig_pod_blocked_by_taint_is_not_blamed_on_the_strategy() -> None:
    # The only node advertising mig-1g.10gb runs strategy mixed but is tainted: the taint holds it, not the strategy.
    mixed = node("h-0", spec={"taints": [GPU_TAINT]}, labels={"nvidia.com/mig.strategy": "mixed"},
                 allocatable={"nvidia.com/mig-1g.10gb": "7"})
    c = cluster([mixed, cpu_node("c-0")], [pod("p", resource="nvidia.com/mig-1g.10gb")])
    found = kinds(c)
    assert "UntoleratedTaint" in found, {k: f.summary for k, f in found.items()}


def test_pod_that_fits_one_node_is_not_reported_short_of_cpu() -> None:
    # h-0 takes the pod whole (8 GPUs, 96 CPUs free); h-1 has GPUs free but its CPUs are taken. NodeResourcesFit
    # passes on h-0, so nothing is short.
    busy = pod("cpu-hog", node_name="h-1", limits={"cpu": "95"})
    want = pod("p", 1, limits={"cpu": "4"})
    found = kinds(cluster([node("h-0"), node("h-1")], [busy, want]))
    assert "InsufficientResources" not in found, found["InsufficientResources"].summary


def test_volcano_gpu_memory_advertised_is_not_reported_as_unadvertised() -> None:
    # §12 entry 21 is "requested and no node advertises it"; here every node advertises it (Volcano installed).
    n = node("h-0", allocatable={"volcano.sh/gpu-memory": "81920"})
    p = pod("v", resource="volcano.sh/gpu-memory")
    found = kinds(cluster([n], [p]))
    assert "VolcanoResourceNotAdvertised" not in found, found["VolcanoResourceNotAdvertised"].summary


def test_a_volcano_gpu_memory_pod_is_not_told_to_add_a_whole_gpu() -> None:
    """Seed §7.1: a pod served by Volcano's GPU memory runs a CUDA image (tensorflow/serving:latest-gpu) and
    requests no nvidia.com/* resource. It used to be called a CUDA image without a GPU, with a whole nvidia.com/gpu
    added beside its volcano.sh/gpu-memory in the corrected pod."""
    n = node("h-0", allocatable={"volcano.sh/gpu-memory": "81920"})
    served = pod("shared-inference", image="tensorflow/serving:latest-gpu", node_name="h-0",
                 limits={"volcano.sh/gpu-memory": "4096", "memory": "8Gi", "cpu": "4"})  # fmt: skip
    assert diagnose(cluster([n], [served])) == []


def test_sidecar_init_container_requests_add_to_the_containers() -> None:
    # KEP-753 (beta, on by default since 1.29): an init container with restartPolicy Always runs beside the app
    # containers, so kube-scheduler sums its requests with theirs (2 + 2 = 4 CPUs), not max(2, 2).
    p = pod("s", 1, limits={"cpu": "2"})
    p["spec"]["initContainers"] = [{"name": "proxy", "image": "envoy", "restartPolicy": "Always",
                                    "resources": {"requests": {"cpu": "2"}}}]
    assert pod_requests(p)["cpu"] == 4


def test_daemonset_is_not_blocked_by_taints_the_daemonset_controller_tolerates() -> None:
    # The DaemonSet controller adds tolerations for not-ready/unreachable (NoExecute) and memory/disk/pid-pressure
    # (NoSchedule) to every daemon pod (sched.DAEMON_TOLERATIONS); a GPU node just rebooting after a driver install
    # carries node.kubernetes.io/not-ready: no toleration for the policy to add.
    rebooting = node("h-0", spec={"taints": [{"key": "node.kubernetes.io/not-ready", "effect": "NoExecute"}]})
    c = cluster([rebooting], [])
    ds = daemonset("nvidia-device-plugin-daemonset", {"nvidia.com/gpu.present": "true"}, ready=None, want=1)
    c.snapshot.owned[("DaemonSet", NS, "nvidia-device-plugin-daemonset")] = ds
    found = kinds(c)
    assert "OperandBlockedByTaint" not in found, found["OperandBlockedByTaint"].summary


def test_a_notready_gpu_node_does_not_make_operands_blocked_by_taint() -> None:
    """A GPU node that goes NotReady (a reboot after a driver install, a kubelet restart) gets
    node.kubernetes.io/not-ready:NoSchedule from the node lifecycle controller (and NoExecute); the DaemonSet
    controller tolerates not-ready only with NoExecute. doctor reported OperandBlockedByTaint, an ERROR per operand
    DaemonSet, telling the admin to tolerate not-ready in daemonsets.tolerations: the wrong cause (the node is
    NotReady) and a harmful fix (operands on a node that is not ready). NotReady nodes, and the taints of a node's
    state (not-ready, unreachable, network-unavailable, the cloud provider's uninitialized) on any node, are left
    out now."""
    rebooting = node("h-0", spec={"taints": [{"key": "node.kubernetes.io/not-ready", "effect": "NoSchedule"},
                                             {"key": "node.kubernetes.io/not-ready", "effect": "NoExecute"}]})
    rebooting["status"]["conditions"] = [{"type": "Ready", "status": "False", "reason": "KubeletNotReady"}]
    starting = node("h-1", spec={"taints": [{"key": "node.cloudprovider.kubernetes.io/uninitialized", "value": "true",
                                             "effect": "NoSchedule"}]})  # fmt: skip
    c = cluster([rebooting, starting], [])
    c.snapshot.owned[("DaemonSet", NS, "nvidia-device-plugin-daemonset")] = daemonset(
        "nvidia-device-plugin-daemonset", {"nvidia.com/gpu.present": "true"}, ready=0, want=2
    )
    found = kinds(c)
    assert "OperandBlockedByTaint" not in found, found["OperandBlockedByTaint"].summary


def test_a_node_the_autoscaler_is_removing_does_not_make_operands_blocked_by_taint() -> None:
    """cluster-autoscaler taints a node it scales down ToBeDeletedByClusterAutoscaler:NoSchedule before draining and
    deleting it (Karpenter: karpenter.sh/disrupted). The DaemonSet controller keeps the daemon pods already there (a
    NoSchedule taint only stops new ones), so nothing is broken; doctor reported an ERROR (exit 2) that the device
    plugin "cannot run" there and told the admin to tolerate the autoscaler's deletion taint. Such taints, and nodes
    being deleted, are left out now; another untolerated taint on that node still counts."""
    leaving = node("h-0", spec={"taints": [{"key": "ToBeDeletedByClusterAutoscaler", "value": "1765090000",
                                            "effect": "NoSchedule"}]})  # fmt: skip
    deleted = node("h-2", spec={"taints": [{"key": "dedicated", "value": "x", "effect": "NoSchedule"}]})
    deleted["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    c = cluster([leaving, node("h-1"), deleted], [])
    c.snapshot.owned[("DaemonSet", NS, "nvidia-device-plugin-daemonset")] = daemonset(
        "nvidia-device-plugin-daemonset", {"nvidia.com/gpu.present": "true"}, ready=2, want=2
    )
    found = kinds(c)
    assert "OperandBlockedByTaint" not in found, found["OperandBlockedByTaint"].fix
    leaving["spec"]["taints"].append({"key": "dedicated", "value": "x", "effect": "NoSchedule"})
    c = cluster([leaving, node("h-1")], [])
    c.snapshot.owned[("DaemonSet", NS, "nvidia-device-plugin-daemonset")] = daemonset(
        "nvidia-device-plugin-daemonset", {"nvidia.com/gpu.present": "true"}, ready=2, want=2
    )
    f = kinds(c)["OperandBlockedByTaint"]
    assert f.nodes == ("h-0",) and "dedicated:NoSchedule" in f.summary and "ToBeDeleted" not in f.summary, f.summary


def test_taint_fix_names_only_taints_of_nodes_with_gpus() -> None:
    # Every node tainted: GPU nodes with nvidia.com/gpu, the control plane with its own. Tolerating the
    # control-plane taint cannot help a GPU pod (that node has no GPU): the corrected YAML leaves it out.
    cp = cpu_node("cp-0", taints=[{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}])
    f = kinds(cluster([node("h-0", spec={"taints": [GPU_TAINT]}), cp], [pod("p", 1)]))["UntoleratedTaint"]
    assert "control-plane" not in f.fix_yaml, f.fix_yaml


def test_a_device_plugin_opted_out_on_every_gpu_node_is_named() -> None:
    # §12 entry 13: an operand's DESIRED 0 on a GPU node because its deploy label is opted out. Here the node is
    # labelled nvidia.com/gpu.deploy.device-plugin=false, so no device plugin runs and nothing is advertised: the
    # opt-out is the cause, not a device plugin that is not ready.
    n = node("h-0", labels={"nvidia.com/gpu.deploy.device-plugin": "false"})
    n["status"]["allocatable"].pop("nvidia.com/gpu")
    n["status"]["capacity"].pop("nvidia.com/gpu")
    found = diagnose(cluster([n], [pod("p", 1)]))
    opted = [f for f in found if f.kind == "DevicePluginOptedOut"]
    assert opted and "gpu.deploy.device-plugin=false on h-0" in opted[0].summary, [(f.kind, f.summary) for f in found]
    assert not [f for f in found if f.kind == "GPUsNotAdvertised"]


def test_gpu_nodes_opted_out_of_every_operand_are_named_not_the_device_plugin() -> None:
    """REFERENCE §3: nvidia.com/gpu.deploy.operands=false removes every deploy label, so by design no device plugin
    runs there (the operator removes gpu.deploy.device-plugin too). The stack check already left such a node out,
    but the pending-pod analysis only read gpu.deploy.device-plugin=false: with every GPU node opted out this way a
    pending GPU pod got GPUsNotAdvertised ("fix the GPU stack first"), sending the admin after a healthy stack. A
    node also labelled vm-passthrough got GPUsReservedForVMs, whose relabel to container changes nothing while
    operands=false wins. Now both are DevicePluginOptedOut, naming the label and, for a VM node, both relabels."""

    def unadvertising(name: str, labels: dict[str, str]) -> dict[str, Any]:
        n = node(name, labels=labels)
        for part in ("capacity", "allocatable"):
            n["status"][part].pop("nvidia.com/gpu")
        return n

    off = {"nvidia.com/gpu.deploy.operands": "false"}
    found = kinds(cluster([unadvertising("h-0", off)], [pod("p", 1)]))
    assert "GPUsNotAdvertised" not in found, {k: f.summary for k, f in found.items()}
    f = found["DevicePluginOptedOut"]
    assert "(nvidia.com/gpu.deploy.operands=false, which removes every operand, on h-0)" in f.summary, f.summary
    assert "`kubectl label node NODE nvidia.com/gpu.deploy.operands-`" in f.fix and "workload" not in f.fix, f.fix
    assert f.nodes == ("h-0",)
    # Configured for VMs as well: removing operands=false alone would give it the VM operands, so both are named.
    vm = {**off, "nvidia.com/gpu.workload.config": "vm-passthrough"}

    def sandboxed(nodes: list[dict[str, Any]]) -> dict[str, Any]:
        c = cluster(nodes, [pod("p", 1)])
        c.snapshot.policies["cluster-policy"]["spec"] = {"sandboxWorkloads": {"enabled": True}}
        return kinds(c)

    found = sandboxed([unadvertising("v-0", vm)])
    assert "GPUsReservedForVMs" not in found, found["GPUsReservedForVMs"].summary
    f = found["DevicePluginOptedOut"]
    assert "v-0 is also configured for VM workloads: label it nvidia.com/gpu.workload.config=container" in f.fix
    # Next to a node opted out of the device plugin alone, each is named with its label.
    f = sandboxed([unadvertising("v-0", vm), unadvertising("h-1", {"nvidia.com/gpu.deploy.device-plugin": "false"})])[
        "DevicePluginOptedOut"
    ]
    assert "(nvidia.com/gpu.deploy.device-plugin=false on h-1; nvidia.com/gpu.deploy.operands=false" in f.summary
    assert set(f.nodes) == {"v-0", "h-1"}


def test_gpu_nodes_configured_for_vm_workloads_are_named_not_the_device_plugin() -> None:
    """With sandboxWorkloads.enabled a node configured for VM workloads (nvidia.com/gpu.workload.config=vm-passthrough
    or vm-vgpu, or every unlabelled node under defaultWorkload vm-*) gets no device plugin for containers, by design
    (REFERENCE §3), so it never advertises nvidia.com/gpu. When every GPU node was one, a pod asking for
    nvidia.com/gpu got GPUsNotAdvertised ("the device plugin is not running or not ready", "fix the GPU stack
    first"), sending the admin after a healthy stack. Now the workload config is named, with the relabelling."""

    def vm_node(name: str, workload: str | None) -> dict[str, Any]:
        n = node(name, labels={"nvidia.com/gpu.workload.config": workload} if workload else {})
        for key in [k for k in n["metadata"]["labels"] if k.startswith(("nvidia.com/gpu.", "nvidia.com/mig.",
                                                                        "nvidia.com/cuda."))]:  # fmt: skip
            if key not in ("nvidia.com/gpu.present", "nvidia.com/gpu.workload.config"):
                del n["metadata"]["labels"][key]  # no GFD on a VM node
        for part in ("capacity", "allocatable"):
            n["status"][part].pop("nvidia.com/gpu")
        return n

    def found(nodes: list[dict[str, Any]], sandbox: dict[str, Any]) -> dict[str, Any]:
        c = cluster(nodes, [pod("train", 1)])
        c.snapshot.policies["cluster-policy"]["spec"] = {"sandboxWorkloads": sandbox}
        return kinds(c)

    f = found([vm_node("v-0", "vm-passthrough"), vm_node("v-1", "vm-vgpu")], {"enabled": True})
    assert "GPUsNotAdvertised" not in f, f
    assert f["GPUsReservedForVMs"].summary == (
        "no node advertises nvidia.com/gpu: every GPU node is configured for VM workloads by their "
        "nvidia.com/gpu.workload.config label (vm-passthrough on v-0; vm-vgpu on v-1), and a VM node runs no device "
        "plugin for containers")  # fmt: skip
    assert "nvidia.com/gpu.workload.config=container" in f["GPUsReservedForVMs"].fix
    assert "remove that label" in f["GPUsReservedForVMs"].fix
    assert f["GPUsReservedForVMs"].nodes == ("v-0", "v-1")
    # Unlabelled nodes under a VM default: the default is named, and relabelling is the way back.
    f = found([vm_node("v-0", None)], {"enabled": True, "defaultWorkload": "vm-passthrough"})
    reserved = f["GPUsReservedForVMs"]
    assert "or sandboxWorkloads.defaultWorkload=vm-passthrough (vm-passthrough on v-0)" in reserved.summary
    assert "remove that label" not in reserved.fix
    # A container node whose device plugin is missing is still the stack's problem; the VM nodes are counted apart.
    f = found([vm_node("v-0", "vm-passthrough"), vm_node("h-0", None)], {"enabled": True})
    assert "although 1 nodes have NVIDIA GPUs (1 more are configured for VM workloads" in f["GPUsNotAdvertised"].summary
    # Without sandboxWorkloads the label means nothing.
    f = found([vm_node("v-0", "vm-passthrough")], {"enabled": False})
    assert "GPUsReservedForVMs" not in f and "GPUsNotAdvertised" in f


def test_gpu_nodes_opted_out_next_to_nodes_for_vms_are_named_apart_from_them() -> None:
    """With some GPU nodes configured for VM workloads (no device plugin for containers there, by design) and every
    other one opted out of the device plugin, DevicePluginOptedOut said "every GPU node is opted out of the device
    plugin", naming only the opted-out ones: the VM nodes went unsaid (GPUsNotAdvertised counts them apart). Now its
    summary is about the nodes not for VMs, and counts those apart."""
    vm = node("v-0", labels={"nvidia.com/gpu.workload.config": "vm-passthrough"})
    off = node("h-1", labels={"nvidia.com/gpu.deploy.device-plugin": "false"})
    for n in (vm, off):
        for part in ("capacity", "allocatable"):
            n["status"][part].pop("nvidia.com/gpu")
    c = cluster([vm, off], [pod("p", 1)])
    c.snapshot.policies["cluster-policy"]["spec"] = {"sandboxWorkloads": {"enabled": True}}
    f = kinds(c)["DevicePluginOptedOut"]
    assert f.summary == (
        "no node advertises nvidia.com/gpu: every GPU node not configured for VM workloads is opted out of the device "
        "plugin (nvidia.com/gpu.deploy.device-plugin=false on h-1); 1 more is configured for VM workloads "
        "(nvidia.com/gpu.workload.config), which run no device plugin for containers")  # fmt: skip
    assert f.nodes == ("h-1",)


def test_a_disabled_device_plugin_is_named_when_no_node_advertises_gpus() -> None:
    """devicePlugin.enabled false (as the NVIDIA DRA driver for GPUs needs: GPUs are then claimed through
    ResourceClaims): no node advertises nvidia.com/gpu and a pod asking for it pends. doctor said GPUsNotAdvertised,
    "the device plugin is not running or not ready on them ... fix the GPU stack first (see the operand findings)",
    though no operand finding exists (the stack leaves such a cluster alone) and the ClusterPolicy turned the device
    plugin off. Now DevicePluginDisabled names the field, and the ResourceClaim; a MIG request too."""
    bare = node("h-0")
    for key in ("capacity", "allocatable"):
        bare["status"][key].pop("nvidia.com/gpu")
    p = unschedulable(pod("p", 1), "0/1 nodes are available: 1 Insufficient nvidia.com/gpu.")
    found = kinds(with_spec(cluster([bare], [p]), {"devicePlugin": {"enabled": False}}))
    assert list(found) == ["DevicePluginDisabled"], {k: f.summary for k, f in found.items()}
    f = found["DevicePluginDisabled"]
    assert "devicePlugin.enabled false" in f.summary and "ResourceClaim instead of nvidia.com/gpu" in f.fix, f
    mig_pod = pod("m", resource="nvidia.com/mig-1g.10gb")
    found = kinds(with_spec(cluster([bare], [mig_pod]), {"devicePlugin": {"enabled": False}}))
    assert "DevicePluginDisabled" in found and "MIGResourceNotAdvertised" not in found, found


def test_a_shortage_names_the_nodes_with_free_gpus_that_a_taint_or_cordon_keeps_the_pod_off() -> None:
    # h-0 and h-1 are full; h-2 has its 8 GPUs free but a taint the pod does not tolerate, h-3 is cordoned.
    full = [pod(f"w{i}", 8, node_name=f"h-{i}") for i in (0, 1)]
    nodes = [node("h-0"), node("h-1"), node("h-2", spec={"taints": [GPU_TAINT]}),
             node("h-3", spec={"unschedulable": True})]
    found = kinds(cluster(nodes, [*full, pod("p", 2)]))["InsufficientGPU"]
    assert "h-2 (taint nvidia.com/gpu:NoSchedule), h-3 (a cordon) have 2 nvidia.com/gpu free" in found.summary
    assert found.fix.startswith("tolerate the taint") and {"h-2", "h-3"} <= set(found.nodes)
    # Without such a node, the finding is as before.
    plain = kinds(cluster(nodes[:2], [*full, pod("p", 2)]))["InsufficientGPU"]
    assert "keep" not in plain.summary and not plain.fix.startswith("tolerate")


def test_a_gated_pod_is_said_to_wait_for_its_gates_not_for_gpus() -> None:
    # A queue (Kueue) holds pods with spec.schedulingGates: the scheduler does not look at them, so a full cluster
    # or a missing toleration is not why they wait.
    gated = pod("p", 16)  # more GPUs than any node has: without the gate, GPURequestExceedsEveryNode
    gated["spec"]["schedulingGates"] = [{"name": "kueue.x-k8s.io/admission"}]
    found = kinds(cluster([node("h-0")], [gated]))
    assert set(found) == {"SchedulingGated"} and "kueue.x-k8s.io/admission" in found["SchedulingGated"].summary
    assert found["SchedulingGated"].severity == "info"
    del gated["spec"]["schedulingGates"]
    assert "GPURequestExceedsEveryNode" in kinds(cluster([node("h-0")], [gated]))


# --- The seed's own pods, word for word (seed §3.1, §5.4, §6.3, §7.1-7.3, Exercise 1, Question 5, §12) ---


def seed_pod(doc: str) -> dict[str, Any]:
    """A pod of the seed as the API server returns it: namespace default, Pending until a test binds it."""
    p = yaml.safe_load(doc)
    p["metadata"].setdefault("namespace", "default")
    p.setdefault("status", {"phase": "Pending"})
    return p


def bound(p: dict[str, Any], node_name: str, phase: str = "Running", **status: Any) -> dict[str, Any]:
    out = json.loads(json.dumps(p))
    out["spec"]["nodeName"] = node_name
    out["status"] = {"phase": phase, **status}
    return out


def seed_container(name: str, image: str, resources: str, extra: str = "") -> str:
    return (f"apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n{extra}  containers:\n  - name: main\n"
            f"    image: {image}\n    resources:\n{resources}")  # fmt: skip


def test_seed_pods_that_fit_get_no_finding_and_are_read_as_the_scheduler_does() -> None:
    """§3.1 (limits only: the requests default to them), §6.3 Issue 2 and §7.1 (request = limit: one GPU counted),
    §7.3 (a priority class), Exercise 1 (nvidia-smi, completed)."""
    four = seed_pod(seed_container("pytorch-training", "pytorch/pytorch:2.1.0-cuda12.1-cudnn8-devel",
                                   "      limits:\n        nvidia.com/gpu: 4\n        memory: 32Gi\n        cpu: 16\n"))
    assert gpu_requests(four) == {"nvidia.com/gpu": 4} and pod_requests(four)["cpu"] == 16
    assert "InsufficientGPU" in kinds(cluster([node("h-0")], [four, pod("busy", 6, node_name="h-0")]))
    exclusive = seed_pod(seed_container(
        "exclusive-training", "pytorch/pytorch:2.1.0-cuda12.1-cudnn8-devel",
        "      limits:\n        nvidia.com/gpu: 1\n        memory: 32Gi\n        cpu: 8\n"
        "      requests:\n        nvidia.com/gpu: 1\n        memory: 32Gi\n        cpu: 8\n"))  # fmt: skip
    assert gpu_requests(exclusive) == {"nvidia.com/gpu": 1}
    priority = seed_pod(seed_container("production-training", "pytorch/pytorch:latest",
                                       "      limits:\n        nvidia.com/gpu: 4\n",
                                       "  priorityClassName: high-priority-training\n"))  # fmt: skip
    gpu_test = seed_pod(seed_container("gpu-test", "nvidia/cuda:12.1-devel-ubuntu22.04",
                                       "      limits:\n        nvidia.com/gpu: 1\n", "  restartPolicy: Never\n"))
    for p in (four, exclusive, priority, gpu_test):
        assert diagnose(cluster([node("h-0")], [p])) == [], p["metadata"]["name"]
        assert diagnose(cluster([node("h-0")], [bound(p, "h-0")])) == [], p["metadata"]["name"]
    done = bound(gpu_test, "h-0", "Succeeded", containerStatuses=[
        {"name": "main", "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}])  # fmt: skip
    assert diagnose(cluster([node("h-0")], [done])) == []
    # CUDA 12.1 read from the tags nvidia/cuda:12.1-... and lambdalabs/...cuda12.1 (§6.3 Issue 3): not on driver 470.
    lambda_stack = pod("lambda", 1, node_name="old", image="lambdalabs/pytorch:2.1.0-cuda12.1-cudnn8-devel")
    for p in (bound(gpu_test, "old"), lambda_stack):
        assert "CUDADriverTooOld" in kinds(cluster([node("old", driver="470.256.02")], [p]))


def test_seed_pods_that_cannot_run_are_named_with_the_cause() -> None:
    """§5.4's volcano.sh/gpu-memory without Volcano; §7.2's label gpu.nvidia.com/model, which nothing writes (the
    seed is wrong here: GFD writes nvidia.com/gpu.product)."""
    volcano = seed_pod(seed_container("volcano-pod", "tensorflow/serving:latest-gpu",
                                      "      limits:\n        volcano.sh/gpu-memory: 8192\n"))
    assert set(kinds(cluster([node("h-0")], [volcano]))) == {"VolcanoResourceNotAdvertised"}
    affinity = ("  affinity:\n    nodeAffinity:\n      requiredDuringSchedulingIgnoredDuringExecution:\n"
                "        nodeSelectorTerms:\n        - matchExpressions:\n          - key: gpu.nvidia.com/model\n"
                "            operator: In\n            values:\n            - H100\n            - H200\n")  # fmt: skip
    model = seed_pod(seed_container("h100-training", "pytorch/pytorch:latest",
                                    "      limits:\n        nvidia.com/gpu: 8\n", affinity))
    f = kinds(cluster([node("h-0"), node("l4", gpus=1, product="NVIDIA-L4")], [model]))["NoNodeMatchesAffinity"]
    assert "no node has the label gpu.nvidia.com/model" in f.summary and "nvidia.com/gpu.product" in f.fix


def test_seed_7_2_pod_as_written_gets_a_corrected_affinity_on_gfds_product_label() -> None:
    """Seed §7.2's h100-training selects `gpu.nvidia.com/model In [H100, H200]`. No component writes that label;
    GFD writes nvidia.com/gpu.product (NVIDIA-H100-80GB-HBM3, NVIDIA-H200). README (doctor): the corrected YAML
    replaces only the wrong values, "`H100` to `NVIDIA-H100-80GB-HBM3`, never to other models". For the seed's pod
    as written doctor gives no corrected YAML and the fix says "use label values that nodes carry", though the
    values are not the problem alone: the key is; an admin keeping the key and fixing the values stays Pending.
    Expected: a corrected affinity on nvidia.com/gpu.product with the H100 and H200 products, which selects the
    H100 and H200 nodes and not the L4 one (review seed2 #3)."""
    affinity = ("  affinity:\n    nodeAffinity:\n      requiredDuringSchedulingIgnoredDuringExecution:\n"
                "        nodeSelectorTerms:\n        - matchExpressions:\n          - key: gpu.nvidia.com/model\n"
                "            operator: In\n            values:\n            - H100\n            - H200\n")  # fmt: skip
    p = seed_pod(seed_container("h100-training", "pytorch/pytorch:latest",
                                "      limits:\n        nvidia.com/gpu: 8\n", affinity))  # fmt: skip
    nodes = [node("h-0"), node("h2", product=H200), node("l4", gpus=1, product="NVIDIA-L4")]
    f = kinds(cluster(nodes, [p]))["NoNodeMatchesAffinity"]
    assert f.fix_yaml, f"{f.summary} | {f.fix}"
    fixed = {**p, "spec": {**p["spec"], **yaml.safe_load(f.fix_yaml)["spec"]}}
    assert [n["metadata"]["name"] for n in nodes if selector_ok(fixed, n["metadata"]["labels"], "")] == [
        "h-0", "h2"], f.fix_yaml  # fmt: skip
    [term] = fixed["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"]  # fmt: skip
    assert term["matchExpressions"] == [{"key": "nvidia.com/gpu.product", "operator": "In",
                                         "values": [H100, H200]}], f.fix_yaml  # fmt: skip
    assert diagnose(cluster(nodes, [fixed])) == []
    # A nodeSelector on the key is corrected the same way; a value that names no GPU model is not.
    selected = pod("h100-inference", 1, nodeSelector={"gpu.nvidia.com/model": "H100", "zone": "a"})
    for n in nodes:
        n["metadata"]["labels"]["zone"] = "a"
    f = kinds(cluster(nodes, [selected]))["NoNodeMatchesAffinity"]
    assert yaml.safe_load(f.fix_yaml) == {"spec": {"nodeSelector": {"zone": "a", "nvidia.com/gpu.product": H100}}}
    for value in ("true", "nvidia"):
        f = kinds(cluster(nodes, [pod("p", 1, nodeSelector={"gpu.nvidia.com/model": value})]))["NoNodeMatchesAffinity"]
        assert f.fix_yaml == "" and "no node has the label gpu.nvidia.com/model" in f.summary, f.fix_yaml


def test_seed_question_5_four_nodes_of_eight_h100_run_eight_four_gpu_jobs() -> None:
    job = {"metadata": {"name": "q5", "namespace": "default"},
           "spec": {"containers": [{"name": "t", "image": "x", "resources": {"limits": {"nvidia.com/gpu": 4}}}]}}
    result = capacity.plan(job, 100, nodes_with_pods([node(f"h-{i}") for i in range(4)], []))
    assert result.fits_now == 8 and all(n == 2 for _, n in result.placements())


def test_seed_7_3_capacity_of_production_training_on_nodes_full_of_experiments_notes_preemption() -> None:
    """§7.3: production-training (priorityClassName high-priority-training, 1000) x 2 on an 8 x H100 node whose GPUs
    eight one-GPU experiments (low-priority-experiments, 100) hold. kube-scheduler preempts them and runs both copies
    (e2e test_operator.py::test_seed_priority_classes_let_production_training_preempt_experiments). capacity said
    "fit now: 0 of 2 ... extra nodes needed: 1" with no word of preemption, which it does not model; now a note says
    more may fit (review seed2 #2)."""
    production = seed_pod(seed_container("production-training", "pytorch/pytorch:latest",
                                         "      limits:\n        nvidia.com/gpu: 4\n",
                                         "  priorityClassName: high-priority-training\n"))  # fmt: skip
    experiments = [pod(f"experiment-{i}", 1, node_name="h-0", priorityClassName="low-priority-experiments",
                       priority=100) for i in range(8)]  # fmt: skip
    views = nodes_with_pods([node("h-0")], experiments)
    plan = capacity.plan(production, 2, views)
    assert plan.fits_now == 0 and plan.notes == [
        "the pod has priorityClassName high-priority-training: the scheduler may preempt pods of lower priority for "
        "it (8 pods run on the nodes it may use), which is not modelled (PriorityClasses are not read), so more may "
        "fit than counted"], capacity.render(plan, "production-training")  # fmt: skip
    # No note where the copies fit, where the pod may not preempt, has no priority, or is not above the pods there.
    assert capacity.plan(production, 1, nodes_with_pods([node("h-0")], [])).notes == []
    for spec in ({"preemptionPolicy": "Never"}, {"priorityClassName": None}, {"priority": 100}):
        other = {**production, "spec": {**production["spec"], **spec}}
        if spec.get("priority"):
            del other["spec"]["priorityClassName"]
        assert capacity.plan(other, 2, views).notes == [], spec
    assert "priority 101" in capacity.plan({**production, "spec": {**production["spec"], "priority": 101}}, 2,
                                           views).notes[0]  # fmt: skip


def test_capacity_notes_preemption_only_where_evicting_lower_priority_pods_frees_what_the_pod_lacks() -> None:
    """kube-scheduler preempts only on a node where the pod fits once its lower-priority pods are gone (upstream
    defaultpreemption, SelectVictimsOnNode). An 8-GPU node, all 8 free, runs one CPU-only pod: of 2 copies of an
    8-GPU pod with a priorityClassName 1 fits, and evicting the CPU pod frees no GPU. capacity said more may fit, as
    for any pod with a priorityClassName on a node running any workload (review diffV #2)."""
    train = pod("train", 8, priorityClassName="high-priority-training")
    web = pod("web", 0, node_name="h-0", limits={"cpu": "1"})
    web["spec"]["priority"] = 0
    plan = capacity.plan(train, 2, nodes_with_pods([node("h-0")], [web]))
    assert plan.fits_now == 1 and plan.notes == [], plan.notes
    # A GPU pod there of lower priority: evicting it lets the second copy fit, so the note stands (the one pod).
    gpu_web = pod("web", 1, node_name="h-0", priority=0)
    plan = capacity.plan(train, 1, nodes_with_pods([node("h-0")], [gpu_web]))
    assert plan.fits_now == 0 and len(plan.notes) == 1 and "(1 pod runs on the nodes it may use)" in plan.notes[0]


def test_seed_12_cuda_out_of_memory_on_a_whole_gpu_gives_the_seeds_remedies() -> None:
    message = "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.11 GiB total capacity)"
    p = pod("train", 1, node_name="h-0", status={"phase": "Failed", "containerStatuses": [
        {"name": "main", "state": {"terminated": {"exitCode": 1, "message": message}}}]})  # fmt: skip
    f = kinds(cluster([node("h-0")], [p]))["CUDAOOM"]
    assert f.severity == "info" and "batch size" in f.fix and "gradient accumulation" in f.fix


def test_seed_12_cuda_driver_insufficient_on_a_driver_that_runs_the_images_cuda_is_no_driver_in_the_container() -> None:
    """Seed §12 "CUDA Runtime Errors": 'CUDA driver version is insufficient' -> verify the GPU Operator installation,
    check the image's CUDA. CUDA returns that error (cudaErrorInsufficientDriver) both when the driver is older than
    the runtime and when no driver library (libcuda) is in the container: the NVIDIA runtime or CDI did not put it
    there. The image's CUDA 12.1 needs driver 530.30.02 (REFERENCE §7); the node runs 595.91.07. doctor said
    CUDADriverTooOld, "the node's driver 595.91.07 is older than CUDA 12.1 needs ... driver 530.30.02 or newer": its
    own numbers refuted it. Now it is CUDADeviceNotFound's cause and fix, naming the driver (review seed2 #1)."""
    message = "cudaGetDeviceCount returned 35\n-> CUDA driver version is insufficient for CUDA runtime version"
    p = pod("device-query", 1, node_name="h-0", image="nvidia/cuda:12.1.0-devel-ubuntu22.04", status={
        "phase": "Failed", "containerStatuses": [
            {"name": "main", "state": {"terminated": {"exitCode": 1, "message": message}}}]})  # fmt: skip
    found = kinds(cluster([node("h-0", driver="595.91.07")], [p]))
    assert "CUDADriverTooOld" not in found, found["CUDADriverTooOld"].summary
    f = found["CUDADeviceNotFound"]
    assert f.severity == "error" and "no driver in it" in f.summary, f.summary
    assert "driver 595.91.07 runs CUDA 12.1" in f.summary and "NVIDIA container runtime" in f.summary, f.summary
    # On a driver too old for CUDA 12.1 (R470) the message is the driver's age, as before.
    found = kinds(cluster([node("h-0", driver="470.256.02")], [p]))
    assert "CUDADriverTooOld" in found and "CUDADeviceNotFound" not in found, found


def test_cuda_insufficient_below_the_ga_driver_with_a_branch_alternative_in_nvidia_require_cuda_is_driver_too_old(
) -> None:  # fmt: skip
    """'CUDA driver version is insufficient' is CUDADeviceNotFound's (no driver library in the container) only on a
    driver that runs the image's CUDA: its GA driver or newer (CUDA 12.4: 550.54.14, REFERENCE §7's table). The CUDA
    images' NVIDIA_REQUIRE_CUDA also lets the runtime hook accept R470 and R535 data-center drivers
    (`brand=tesla,driver>=535,driver<536`, forward compatibility), which are older than CUDA 12.4 needs: there the
    message is the driver's age (the CDI signature CUDADriverTooOld names). doctor said "no driver in it ... though
    its node's driver 535.247.01 runs CUDA 12.4" (review diffV #1)."""
    message = "cudaGetDeviceCount returned 35\n-> CUDA driver version is insufficient for CUDA runtime version"
    require = "cuda>=12.4 brand=tesla,driver>=470,driver<471 brand=tesla,driver>=535,driver<536"
    p = pod("q", 1, node_name="h-0", image="registry.example.com/app:1",
            env=[{"name": "NVIDIA_REQUIRE_CUDA", "value": require}],
            status={"phase": "Failed", "containerStatuses": [
                {"name": "main", "state": {"terminated": {"exitCode": 1, "message": message}}}]})  # fmt: skip
    for driver in ("535.247.01", "470.256.02"):
        found = kinds(cluster([node("h-0", driver=driver)], [p]))
        assert "CUDADriverTooOld" in found and "CUDADeviceNotFound" not in found, (driver, list(found))
        assert "CUDAMinorVersionCompatibility" not in found, driver
    found = kinds(cluster([node("h-0", driver="550.163.01")], [p]))
    assert "CUDADeviceNotFound" in found and "CUDADriverTooOld" not in found, list(found)
    assert "driver 550.163.01 runs CUDA 12.4" in found["CUDADeviceNotFound"].summary


def unschedulable(p: dict[str, Any], message: str) -> dict[str, Any]:
    """The pod as the scheduler leaves it when no node fits: PodScheduled False, Unschedulable, `message`."""
    p["status"] = {"phase": "Pending", "conditions": [
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message}]}  # fmt: skip
    return p


def test_seed_6_3_issue_2_oom_beside_a_pod_given_every_gpu_by_the_runtime_names_that_pod() -> None:
    """§6.3 Issue 2: "Training crashes with CUDA OOM. Cause: Multiple containers sharing same GPU". With cdi.enabled
    false (nvidia the default runtime) a CUDA-image pod that requests no GPU (a notebook from pytorch/pytorch) gets
    every GPU of its node from its image's NVIDIA_VISIBLE_DEVICES=all, so §7.1's exclusive-training, which got one
    GPU from the device plugin, shares it. doctor used to say the OOM happened "on a GPU it does not share" and gave
    only the batch-size remedies; now it names the pod it shares the GPU with."""
    message = "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.11 GiB total capacity)"
    image = "pytorch/pytorch:2.1.0-cuda12.1-cudnn8-devel"
    training = pod("exclusive-training", 1, node_name="h-0", image=image, limits={"memory": "32Gi", "cpu": "8"},
                   status={"phase": "Running", "containerStatuses": [{
                       "name": "main", "restartCount": 1, "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                       "lastState": {"terminated": {"exitCode": 1, "message": message}}}]})  # fmt: skip
    notebook = pod("notebook", image=image, node_name="h-0")
    c = with_spec(cluster([node("h-0")], [training, notebook]), {"cdi": {"enabled": False}})
    f = kinds(c)["CUDAOOMSharedOutsideDevicePlugin"]
    assert f.severity == "warning" and f.object == "Pod default/exclusive-training", f
    assert "does not share" not in f.summary and "default/notebook" in f.summary and "default/notebook" in f.fix
    # CDI on (runc for the notebook): the GPU is the pod's alone, and the seed's remedies stand.
    f = kinds(cluster([node("h-0")], [training, notebook]))["CUDAOOM"]
    assert "does not share" in f.summary and "batch size" in f.fix


def _preempting(why: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Eight one-GPU experiments (priority 100) on h-0, four of them terminating as preemption's victims, and the
    4-GPU production-training pod (priority 1000) nominated to h-0, Pending with the scheduler's `why`."""
    experiments = [pod(f"experiment-{i}", 1, node_name="h-0", priorityClassName="low-priority-experiments",
                       priority=100) for i in range(8)]  # fmt: skip
    for victim in experiments[:4]:
        victim["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
        victim["metadata"]["deletionGracePeriodSeconds"] = 30
    production = unschedulable(pod("production-training", 4, priorityClassName="high-priority-training",
                                   priority=1000), why)  # fmt: skip
    production["status"]["nominatedNodeName"] = "h-0"
    return experiments, production


def test_seed_7_3_production_training_preempting_experiments_is_not_a_gpu_shortage() -> None:
    """§7.3: production-training (high-priority-training, 1000, 4 GPUs) arrives on an H100 node whose 8 GPUs are held
    by one-GPU experiments (low-priority-experiments, 100). kube-scheduler preempts: it deletes four experiments
    (deletionTimestamp set, their GPUs held until they end), writes status.nominatedNodeName h-0 on the pod, and leaves
    it Pending ("Insufficient nvidia.com/gpu") until the victims are gone; then the pod runs (e2e
    test_operator.py::test_seed_priority_classes_let_production_training_preempt_experiments). doctor used to report
    InsufficientGPU, a warning telling the admin to add GPU nodes; now an info finding names the preemption."""
    experiments, production = _preempting("0/1 nodes are available: 1 Insufficient nvidia.com/gpu.")
    found = diagnose(cluster([node("h-0")], [*experiments, production]))
    assert [(f.severity, f.kind) for f in found] == [("info", "PreemptionInProgress")], found
    assert "4 lower-priority pods on h-0" in found[0].summary and "30 s" in found[0].summary
    assert exit_status(found) == 0
    # Once the nominated node would not fit the pod even without its terminating pods, the shortage is real.
    production["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] = "6"
    assert "InsufficientGPU" in kinds(cluster([node("h-0")], [*experiments, production]))


def test_preemption_is_not_reported_on_a_nominated_node_that_no_longer_takes_the_pod() -> None:
    """kube-scheduler keeps status.nominatedNodeName when a later attempt fails without a new nomination. Here h-0
    was cordoned since (a driver upgrade, whose drain evicts the lower-priority GPU pods: deletionTimestamp set, as
    preemption's victims), or tainted. doctor checked only resources on the nominated node and reported
    PreemptionInProgress, "nothing to do but wait ... then the pod is bound to h-0", which the scheduler's
    NodeUnschedulable and TaintToleration filters will not do. Now the nominated node must pass those filters too,
    and the cordon (NodesCordoned) or the taint (UntoleratedTaint) is named."""

    def preempting(node_spec: dict[str, Any], labels: dict[str, str] | None = None) -> dict[str, Any]:
        experiments, production = _preempting("0/1 nodes are available: 1 node(s) were unschedulable.")
        return kinds(cluster([node("h-0", spec=node_spec, labels=labels or {})], [*experiments, production]))

    found = preempting({"unschedulable": True}, {"nvidia.com/gpu-driver-upgrade-state": "drain-required"})
    assert "PreemptionInProgress" not in found and "NodesCordoned" in found, found
    found = preempting({"taints": [{"key": "dedicated", "value": "inference", "effect": "NoSchedule"}]})
    assert "PreemptionInProgress" not in found and "UntoleratedTaint" in found, found


def test_seed_3_3_scheduling_example_filters_the_half_used_node_and_ties_the_free_ones() -> None:
    """§3.3: an 8-GPU job; Node-1 8 x H100 free, Node-2 8 x H100 with 4 used, Node-3 8 x A100 free; "Scheduler picks
    Node-1". The filter removes Node-2 (4 free); Node-1 and Node-3 both fit (the job names no GPU model, so the
    seed is wrong that Node-1 is chosen: the default scorers weigh CPU and memory, not nvidia.com/gpu). Doctor has
    nothing to say."""
    nodes = [node("node-1"), node("node-2"), node("node-3", product=A100)]
    busy = pod("busy", 4, node_name="node-2")
    job = pod("job", 8)
    plan = capacity.plan(job, 3, nodes_with_pods(nodes, [busy]))
    assert plan.fits_now == 2 and dict(plan.placements()) == {"node-1": 1, "node-3": 1}
    assert diagnose(cluster(nodes, [busy, job])) == []


def test_seed_3_1_pod_pending_for_cpu_on_a_node_with_free_gpus_names_the_cpu() -> None:
    """§3.1's pytorch-training (4 GPUs, cpu 16, memory 32Gi) and §12 "Pod stuck in Pending" on a GPU node with 8
    free GPUs but 8 CPUs: the cause is the CPU request, not the GPUs, and doctor says so."""
    small = node("h-0")
    for key in ("capacity", "allocatable"):
        small["status"][key]["cpu"] = "8"
    p = unschedulable(seed_pod(seed_container(
        "pytorch-training", "pytorch/pytorch:2.1.0-cuda12.1-cudnn8-devel",
        "      limits:\n        nvidia.com/gpu: 4\n        memory: 32Gi\n        cpu: 16\n")),
        "0/1 nodes are available: 1 Insufficient cpu.")  # fmt: skip
    f = kinds(cluster([small], [p]))["InsufficientResources"]
    assert "cpu" in f.summary and "GPU" not in f.kind


def test_seed_exercise_1_on_mig_mixed_nodes_is_told_the_resource_name() -> None:
    """§9 Exercise 1 (nvidia.com/gpu: 1) on a cluster whose GPUs are all MIG-partitioned under the mixed strategy
    (§5.4): no node advertises nvidia.com/gpu, and doctor names the MIG resource to ask for instead."""
    n = node("m-0", labels={"nvidia.com/mig.strategy": "mixed"})
    gpu = mig.gpu_of_product(H100)
    entries = mig.layout_entries(gpu, "all-1g.10gb") if gpu else None
    assert entries is not None
    for key in ("capacity", "allocatable"):
        n["status"][key].pop("nvidia.com/gpu")
        n["status"][key].update({k: str(v) for k, v in mig.advertised(entries, 8, "mixed").items()})
    gpu_test = unschedulable(seed_pod(seed_container(
        "gpu-test", "nvidia/cuda:12.1.0-devel-ubuntu22.04", "      limits:\n        nvidia.com/gpu: 1\n",
        "  restartPolicy: Never\n")), "0/1 nodes are available: 1 Insufficient nvidia.com/gpu.")  # fmt: skip
    f = kinds(cluster([n], [gpu_test]))["ResourceNameMismatch"]
    assert "nvidia.com/mig-1g.10gb" in f.fix


# §5.4 word for word: one container, two MIG profiles.
SEED_5_4 = seed_container(
    "mig-pair", "pytorch/pytorch:2.1.0-cuda12.1-cudnn8-devel",
    "      limits:\n        nvidia.com/mig-1g.10gb: 1\n        nvidia.com/mig-3g.40gb: 1\n",
)  # fmt: skip


def test_seed_5_4_mig_fix_names_a_layout_with_both_profiles() -> None:
    """§5.4's pod asks nvidia.com/mig-1g.10gb and nvidia.com/mig-3g.40gb in one container: the layout the fix names
    must make both (REFERENCE §4's all-balanced on an H100). Doctor checked only the profile no node advertised: on a
    mixed node with all-1g.10gb it said relabel h-0 all-3g.40gb, which takes the 1g.10gb devices away, and then
    all-1g.10gb again; the admin following it never got the pod scheduled (review seed #1)."""
    p = unschedulable(seed_pod(SEED_5_4), "0/1 nodes are available: 1 Insufficient nvidia.com/mig-3g.40gb.")
    f = kinds(cluster([mixed_node("h-0", "all-1g.10gb")], [p]))["MIGResourceNotAdvertised"]
    assert "all-3g.40gb" not in f.fix, f.fix
    assert "a layout that has 1g.10gb and 3g.40gb (nvidia.com/mig.config=all-balanced on h-0)" in f.fix, f.fix
    # The same on a mixed node without MIG (all-disabled): all-1g.10gb alone would leave the 3g.40gb missing.
    bare = node("h-0", labels={"nvidia.com/mig.strategy": "mixed", "nvidia.com/mig.config": "all-disabled",
                               "nvidia.com/mig.config.state": "success"})  # fmt: skip
    p = unschedulable(seed_pod(SEED_5_4), "0/1 nodes are available: 1 Insufficient nvidia.com/mig-1g.10gb.")
    f = kinds(cluster([bare], [p]))["MIGResourceNotAdvertised"]
    assert "all-1g.10gb" not in f.fix and "all-balanced" in f.fix, f.fix
    # The layout applied: the pod fits.
    assert diagnose(cluster([mixed_node("h-0", "all-balanced")], [seed_pod(SEED_5_4)])) == []


def test_seed_5_4_mig_fix_under_single_offers_no_single_strategy_alternative() -> None:
    """Under strategy single every GPU of a node is split the same way and advertised as nvidia.com/gpu (REFERENCE
    §4): one container cannot get a 1g.10gb and a 3g.40gb device. For §5.4's pod the fix offered "or, with strategy
    single, request nvidia.com/gpu and select <model>-MIG-1g.10gb", which cannot serve it. Now it says strategy mixed
    with a layout that has both profiles, and why single cannot do (review seed #2)."""
    f = kinds(cluster([node("h-0", product=H100)], [seed_pod(SEED_5_4)]))["MIGResourceNotAdvertised"]
    assert "with strategy single" not in f.fix and "request nvidia.com/gpu" not in f.fix and "-MIG-" not in f.fix, f.fix
    assert "mig.strategy to mixed and give the node a layout with 1g.10gb and 3g.40gb (nvidia.com/mig.config=" \
        "all-balanced on h-0)" in f.fix, f.fix  # fmt: skip
    # One profile: single still serves it, and is still offered.
    f = kinds(cluster([node("h-0")], [pod("p", resource="nvidia.com/mig-1g.10gb")]))["MIGResourceNotAdvertised"]
    assert "with strategy single, request nvidia.com/gpu" in f.fix, f.fix


def test_seed_6_2_environment_block_copied_into_a_gpu_pod_is_no_finding() -> None:
    """§6.2 lists NVIDIA_VISIBLE_DEVICES=0,1, CUDA_VISIBLE_DEVICES=0,1, NVIDIA_DRIVER_CAPABILITIES, LD_LIBRARY_PATH
    and NVIDIA_REQUIRE_CUDA=cuda>=11.8 (the seed is wrong that the stack sets them). A 2-GPU pod that sets them on a
    node with driver 595 runs (cuda>=11.8 is met) and doctor reports nothing; on driver 515, older than CUDA 11.8's
    (520), it is refused, as the runtime hook would."""
    env = [{"name": k, "value": v} for k, v in (
        ("NVIDIA_VISIBLE_DEVICES", "0,1"), ("CUDA_VISIBLE_DEVICES", "0,1"),
        ("NVIDIA_DRIVER_CAPABILITIES", "compute,utility"), ("LD_LIBRARY_PATH", "/usr/local/nvidia/lib64"),
        ("NVIDIA_REQUIRE_CUDA", "cuda>=11.8"))]  # fmt: skip
    p = pod("env", 2, node_name="h-0", image="nvcr.io/nvidia/pytorch:25.01-py3", env=env)
    assert diagnose(cluster([node("h-0")], [p])) == []
    assert "CUDADriverTooOld" in kinds(cluster([node("old", driver="515.105.01")], [bound(p, "old")]))


def test_doctor_keeps_a_refused_replication_controllers_finding() -> None:
    """A ReplicationController's refusal (FailedCreate on kind ReplicationController): the deleted-controller check
    got every refused controller's kind, and the client's kind lookup raised KeyError for one it does not know, so
    doctor ended in a traceback. Only the kinds doctor may get are checked; the others keep their finding."""
    from gpu_operator.doctor import gather
    from gpu_operator.kube import ApiError, Kube

    class Reads(FakeKube):
        get = Kube.get  # the real client's get: path_for, then the request

        def __init__(self) -> None:
            super().__init__([node("h-0")], [])

        def request(self, method: str, path: str, **kw: Any) -> dict[str, Any]:
            if "replicationcontrollers/legacy" in path:
                return {"kind": "ReplicationController", "metadata": {"name": "legacy", "namespace": "default"}}
            raise ApiError(404, '{"message": "not found"}', f"{method} {path}", "NotFound")

        def list(self, kind: str, *args: Any, **kwargs: Any) -> list[dict[str, Any]]:
            if kind == "Event":
                if kwargs.get("field_selector") == "type=Warning,reason=FailedCreate":
                    return [refused("ReplicationController", "legacy", NOT_EQUAL)]
                return []
            return super().list(kind, *args, **kwargs)

        def api_groups(self) -> frozenset[str]:
            return frozenset()

    c = gather(Reads(), NS)  # type: ignore[arg-type]
    found = [f.object for f in diagnose(c) if f.kind == "PodCreationRefused"]
    assert found == ["ReplicationController default/legacy"]


# Stronger checks of the operand-pod diagnosis (each fails under the mutation its docstring names).

VALIDATION_NOT_READY = {"state": "notReady", "states": [{"name": "state-operator-validation", "state": "notReady",
                                                         "message": "1 of 1 pods unavailable"}]}  # fmt: skip
TOOLKIT_NOT_READY = {"state": "notReady", "states": [{"name": "state-container-toolkit", "state": "notReady",
                                                      "message": "1 of 1 pods unavailable"}]}  # fmt: skip

def _validator(inits: list[dict[str, Any]]) -> dict[str, Any]:
    return {"kind": "Pod", "spec": {"nodeName": "h-0"},
            "metadata": {"name": "nvidia-operator-validator-x", "namespace": NS,
                         "labels": {"nvidia.com/gpu-operator.state": "state-operator-validation"}},
            "status": {"phase": "Pending", "initContainerStatuses": inits}}  # fmt: skip


def test_an_init_container_still_running_is_not_said_to_crash_loop() -> None:
    """test_doctor::test_operand_stuck_in_init_names_the_first_failing_validator_step asserts only that the summary
    names toolkit-validation and the container toolkit, so doctor/stack.py _why_not_ready's crash-loop test
    (`if waiting.get("reason") == "CrashLoopBackOff" or cs.get("restartCount", 0) > 3`) replaced by `if True`
    survives: every validator still waiting on the driver during a normal start-up would be reported
    "crash-looping (0 restarts)"."""
    validator = _validator([{"name": "driver-validation", "state": {"terminated": {"exitCode": 0}}},
                            {"name": "toolkit-validation", "restartCount": 0, "state": {"running": {}}}])
    f = kinds(cluster([node("h-0")], [validator], policy_status=VALIDATION_NOT_READY))["OperandNotReady"]
    assert "init container toolkit-validation not done (running): waits for the container toolkit" in f.summary, (
        f.summary)  # fmt: skip
    assert "crash-looping" not in f.summary, f.summary
    # Three restarts, not in back-off right now: still not a crash loop by doctor's rule (> 3); four is.
    waiting = {"name": "toolkit-validation", "restartCount": 3, "state": {"waiting": {"reason": "PodInitializing"}}}
    validator = _validator([{"name": "driver-validation", "state": {"terminated": {"exitCode": 0}}}, waiting])
    f = kinds(cluster([node("h-0")], [validator], policy_status=VALIDATION_NOT_READY))["OperandNotReady"]
    assert "crash-looping" not in f.summary, f.summary
    waiting["restartCount"] = 4
    f = kinds(cluster([node("h-0")], [validator], policy_status=VALIDATION_NOT_READY))["OperandNotReady"]
    assert "toolkit-validation crash-looping (4 restarts)" in f.summary, f.summary


def test_only_driver_validation_is_sent_to_the_hosts_driver() -> None:
    """test_doctor::test_a_validator_waiting_for_a_driver_the_operator_does_not_deploy_is_not_sent_to_state_driver
    runs only a driver-validation init container, so _waits_for's `if name != "driver-validation": return` replaced by
    `if False:` survives: with driver.enabled false (or gpu.deploy.driver=pre-installed) a stuck toolkit-validation,
    cuda-validation or plugin-validation would be reported as waiting for "the driver installed on the host" and the
    admin told to repair nvidia-smi on a node whose driver works."""
    validator = _validator([{"name": "driver-validation", "state": {"terminated": {"exitCode": 0}}},
                            {"name": "toolkit-validation", "state": {"running": {}}}])
    c = cluster([node("h-0")], [validator], policy_status=VALIDATION_NOT_READY)
    c.snapshot.policies["cluster-policy"]["spec"] = {"driver": {"enabled": False}}
    f = kinds(c)["OperandNotReady"]
    assert "waits for the container toolkit (state-container-toolkit)" in f.summary, f.summary
    assert "installed on the host" not in f.summary and "nvidia-smi" not in f.fix, (f.summary, f.fix)
    host = node("h-0", labels={"nvidia.com/gpu.deploy.driver": "pre-installed"})
    f = kinds(cluster([host], [validator], policy_status=VALIDATION_NOT_READY))["OperandNotReady"]
    assert "installed on the host" not in f.summary and "container toolkit" in f.summary, f.summary



def _plugin_waiting_for_toolkit_ready() -> dict[str, Any]:
    """The device plugin in its toolkit-validation: `until [ -f .../toolkit-ready ]`."""
    return {"kind": "Pod", "spec": {"nodeName": "h-0"},
            "metadata": {"name": "nvidia-device-plugin-daemonset-x", "namespace": NS,
                         "labels": {"nvidia.com/gpu-operator.state": "state-device-plugin"}},
            "status": {"phase": "Pending", "initContainerStatuses": [
                {"name": "toolkit-validation", "restartCount": 0, "state": {"running": {}}}]}}  # fmt: skip


PLUGIN_NOT_READY = {"state": "notReady", "states": [{"name": "state-device-plugin", "state": "notReady",
                                                     "message": "1 of 1 pods unavailable"}]}  # fmt: skip


def test_an_operand_waiting_for_toolkit_ready_without_a_validator_is_sent_to_the_validators_deploy_label() -> None:
    """toolkit-ready is written only by the validator pod's toolkit-validation (upstream's Toolkit.validate); the
    container toolkit writes nothing under /run/nvidia/validations. On a node opted out of the validator
    (`nvidia.com/gpu.deploy.operator-validator=false`, which the operator keeps) the device plugin, GFD, DCGM and its
    exporter, the MIG manager and the MPS daemon wait for it for ever. doctor said the plugin "waits for the
    container toolkit (state-container-toolkit)" and sent the admin to a toolkit that was fine."""
    labels = {"nvidia.com/gpu.deploy.operator-validator": "false", "nvidia.com/gpu.deploy.device-plugin": "true"}
    c = cluster([node("h-0", labels=labels)], [_plugin_waiting_for_toolkit_ready()], policy_status=PLUGIN_NOT_READY)
    f = kinds(c)["OperandNotReady"]
    assert "waits for toolkit-ready, which the validator's toolkit-validation writes, and no validator runs on this " \
        "node (nvidia.com/gpu.deploy.operator-validator=false)" in f.summary, f.summary
    assert f.fix.startswith("set nvidia.com/gpu.deploy.operator-validator=true on the node"), f.fix
    assert "the container toolkit" not in f"{f.summary}\n{f.fix}", (f.summary, f.fix)
    # Labelled for it, but no validator pod yet: its DaemonSet is where to look.
    labels["nvidia.com/gpu.deploy.operator-validator"] = "true"
    c = cluster([node("h-0", labels=labels)], [_plugin_waiting_for_toolkit_ready()], policy_status=PLUGIN_NOT_READY)
    f = kinds(c)["OperandNotReady"]
    assert "no validator pod on this node yet" in f.summary and "nvidia-operator-validator" in f.fix, (f.summary, f.fix)


def test_an_operand_waiting_for_toolkit_ready_beside_a_ready_validator_is_not_sent_to_the_toolkit() -> None:
    """With the node's validator pod ready toolkit-ready is there (or was removed): the plugin's next check passes,
    or the validator has to write it again; the container toolkit has nothing to do with it."""
    validator = _validator([{"name": "toolkit-validation", "state": {"terminated": {"exitCode": 0}}}])
    validator["status"] = {"phase": "Running", "containerStatuses": [{"name": "nvidia-operator-validator",
                                                                      "ready": True}]}  # fmt: skip
    c = cluster([node("h-0")], [_plugin_waiting_for_toolkit_ready(), validator], policy_status=PLUGIN_NOT_READY)
    f = kinds(c)["OperandNotReady"]
    assert "waits for toolkit-ready, which the validator's toolkit-validation writes, whose pod on this node is " \
        "ready" in f.summary, f.summary
    assert "delete the validator pod on node h-0" in f.fix and "the container toolkit" not in f.fix, f.fix


def test_a_validator_waiting_in_plugin_validation_names_the_device_plugins_failure() -> None:
    """REFERENCE §11 step 3: plugin-validation waits for nvidia.com/gpu on the node, which only the device plugin
    (state 6) advertises. With the plugin crash-looping (here on a sharing config it refuses) doctor ranked by state
    order only: the validator (state 5) was "the first operand not ready", told to "look at the device plugin ...
    first", and the plugin's CrashLoopBackOff and termination message appeared nowhere. The validator's finding
    carries the plugin pod's failure now; with no plugin pod on the node, its DaemonSet and deploy label."""
    done = {"terminated": {"exitCode": 0}}
    validator = _validator([{"name": n, "state": done} for n in ("driver-validation", "toolkit-validation",
                                                                 "cuda-validation")]
                           + [{"name": "plugin-validation", "state": {"running": {}}}])  # fmt: skip
    crash = "error starting plugins: unable to load config: time-slicing replicas must be >= 2"
    plugin = {"kind": "Pod", "spec": {"nodeName": "h-0"},
              "metadata": {"name": "nvidia-device-plugin-daemonset-x", "namespace": NS,
                           "labels": {"nvidia.com/gpu-operator.state": "state-device-plugin"}},
              "status": {"phase": "Running",
                         "initContainerStatuses": [{"name": "toolkit-validation", "state": done}],
                         "containerStatuses": [{"name": "nvidia-device-plugin", "ready": False, "restartCount": 7,
                                                "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                                                "lastState": {"terminated": {"exitCode": 1, "message": crash}}}]}}
    labels = {"nvidia.com/gpu.deploy.device-plugin": "true"}
    bare = node("h-0", allocatable={"nvidia.com/gpu": "0"}, labels=labels)
    bare["status"]["capacity"].pop("nvidia.com/gpu")
    status = {"state": "notReady", "states": [
        {"name": s, "state": "notReady", "message": "1 of 1 pods unavailable"}
        for s in ("state-operator-validation", "state-device-plugin")]}  # fmt: skip
    f = kinds(cluster([bare], [validator, plugin], policy_status=status))["OperandNotReady"]
    assert "waits for the device plugin to advertise nvidia.com/gpu on this node, but its pod nvidia-device-plugin-" \
        f"daemonset-x there is not ready: container nvidia-device-plugin crash-looping (7 restarts): {crash}" in (
            f.summary), f.summary  # fmt: skip
    assert "look at the device plugin" not in f.fix, f.fix
    # No plugin pod on the node: its DaemonSet, and the label it selects nodes by.
    f = kinds(cluster([bare], [validator], policy_status=status))["OperandNotReady"]
    assert "no device plugin pod on this node (nvidia.com/gpu.deploy.device-plugin=true)" in f.summary, f.summary
    assert f.fix.startswith(f"look at DaemonSet {NS}/nvidia-device-plugin-daemonset"), f.fix
    # The plugin waits in its own toolkit-validation for toolkit-ready, which the validator has written: not a loop
    # back to the validator.
    waiting = {**plugin, "status": {"phase": "Pending", "initContainerStatuses": [
        {"name": "toolkit-validation", "state": {"running": {}}}]}}  # fmt: skip
    f = kinds(cluster([bare], [validator, waiting], policy_status=status))["OperandNotReady"]
    assert "whose toolkit-validation on this node passed" in f.summary and "delete the validator pod" in f.fix, (
        f.summary, f.fix)  # fmt: skip
    # The plugin ready: what plugin-validation waits for, as before.
    ready = {**plugin, "status": {"phase": "Running", "containerStatuses": [
        {"name": "nvidia-device-plugin", "ready": True, "state": {"running": {}}}]}}  # fmt: skip
    f = kinds(cluster([bare], [validator, ready], policy_status=status))["OperandNotReady"]
    assert f.fix.startswith("look at the device plugin to advertise nvidia.com/gpu on this node first"), f.fix


def _validator_workload(app: str, init: str, init_status: dict[str, Any]) -> dict[str, Any]:
    """The pod the validator's cuda- (or plugin-) validation runs on its node (e2e/nodemodel.workload_pod)."""
    image = "nvcr.io/nvidia/gpu-operator:v26.7.0"
    return {"kind": "Pod",
            "spec": {"nodeName": "h-0", "restartPolicy": "OnFailure",
                     "initContainers": [{"name": init, "image": image}], "containers": [{"name": app, "image": image}]},
            "metadata": {"name": f"{app}-abcde", "namespace": NS, "labels": {"app": app},
                         "creationTimestamp": "2026-01-01T00:05:00Z",
                         "ownerReferences": [{"kind": "ClusterPolicy", "name": "cluster-policy", "controller": True}]},
            "status": {"phase": "Pending", "initContainerStatuses": [{"name": init, **init_status}],
                       "containerStatuses": [{"name": app, "ready": False,
                                              "state": {"waiting": {"reason": "PodInitializing"}}}]}}  # fmt: skip


def test_a_validator_waiting_in_cuda_validation_names_its_failing_workload_pod() -> None:
    """REFERENCE §11 step 3: cuda-validation creates a vectorAdd pod (nvidia-cuda-validator-*, label
    app=nvidia-cuda-validator) on the node and writes cuda-ready once it succeeds. doctor read that pod but looked
    at it nowhere (no state label; workloads skip the operator's namespace): the finding said only "look at a CUDA
    workload run through the nvidia runtime first" while the pod crash-looped with the cause (here §12 entry 7, the
    node's driver too old for the validator's CUDA). The pod, its failure and its log are named now; likewise
    plugin-validation's workload pod (WITH_WORKLOAD=true)."""
    done = {"terminated": {"exitCode": 0}}
    validator = _validator([{"name": "driver-validation", "state": done}, {"name": "toolkit-validation", "state": done},
                            {"name": "cuda-validation", "state": {"running": {}}}])  # fmt: skip
    msg = ("Failed to allocate device vector A (error code CUDA driver version is insufficient for CUDA runtime "
           "version)!")  # fmt: skip
    work = _validator_workload("nvidia-cuda-validator", "cuda-validation", {
        "restartCount": 5, "state": {"waiting": {"reason": "CrashLoopBackOff"}},
        "lastState": {"terminated": {"exitCode": 1, "message": msg}}})  # fmt: skip
    status = {"state": "notReady", "states": [{"name": "state-operator-validation", "state": "notReady",
                                               "message": "1 of 1 pods unavailable"}]}  # fmt: skip
    f = kinds(cluster([node("h-0")], [validator, work], policy_status=status))["OperandNotReady"]
    assert "waits for a CUDA workload run through the nvidia runtime, its pod nvidia-cuda-validator-abcde, which has " \
        f"not succeeded: init container cuda-validation crash-looping (5 restarts): {msg}" in f.summary, f.summary
    assert f.fix == f"read its log and the previous run's: kubectl logs -n {NS} nvidia-cuda-validator-abcde -c " \
        "cuda-validation --previous", f.fix  # fmt: skip
    # Its image cannot be pulled: the ClusterPolicy's validator fields set it.
    pull = _validator_workload("nvidia-cuda-validator", "cuda-validation", {"state": {"waiting": {
        "reason": "ErrImagePull", "message": "failed to resolve reference nvcr.io/nvidia/gpu-operator:v26.7.0: not "
                                             "found"}}})  # fmt: skip
    f = kinds(cluster([node("h-0")], [validator, pull], policy_status=status))["OperandNotReady"]
    assert "cannot pull image nvcr.io/nvidia/gpu-operator:v26.7.0" in f.summary and "validator.version" in f.fix, (
        f.summary, f.fix)  # fmt: skip
    # No workload pod (not created yet, or succeeded): what cuda-validation waits for, as before.
    succeeded = {**work, "status": {"phase": "Succeeded"}}
    for pods in ([validator], [validator, succeeded]):
        f = kinds(cluster([node("h-0")], pods, policy_status=status))["OperandNotReady"]
        assert f.fix.startswith("look at a CUDA workload run through the nvidia runtime first"), f.fix
    # plugin-validation's workload pod, the device plugin ready.
    validator = _validator([{"name": n, "state": done} for n in ("driver-validation", "toolkit-validation",
                                                                 "cuda-validation")]
                           + [{"name": "plugin-validation", "state": {"running": {}}}])  # fmt: skip
    plugin = {"kind": "Pod", "spec": {"nodeName": "h-0"},
              "metadata": {"name": "nvidia-device-plugin-daemonset-x", "namespace": NS,
                           "labels": {"nvidia.com/gpu-operator.state": "state-device-plugin"}},
              "status": {"phase": "Running", "containerStatuses": [
                  {"name": "nvidia-device-plugin", "ready": True, "state": {"running": {}}}]}}  # fmt: skip
    work = _validator_workload("nvidia-device-plugin-validator", "plugin-validation", {"state": {"running": {}}})
    f = kinds(cluster([node("h-0")], [validator, plugin, work], policy_status=status))["OperandNotReady"]
    assert "its pod nvidia-device-plugin-validator-abcde, which has not succeeded: init container plugin-validation " \
        "not done (running)" in f.summary, f.summary

def _operand(name: str, state: str, container: str, image: str, reason: str, message: str) -> dict[str, Any]:
    p = {"kind": "Pod", "spec": {"nodeName": "h-0", "containers": [{"name": container, "image": image}]},
         "metadata": {"name": name, "namespace": NS, "labels": {"nvidia.com/gpu-operator.state": state},
                      "ownerReferences": [{"kind": "DaemonSet", "name": name.rsplit("-", 1)[0]}]}}  # fmt: skip
    return pulling(p, reason, message, container)


def _found(pods: list[dict[str, Any]], spec: dict[str, Any], status: dict[str, Any]) -> Any:
    c = cluster([node("h-0")], pods, policy_status=status)
    c.snapshot.policies["cluster-policy"]["spec"] = spec
    return kinds(c)


def test_an_operand_image_refused_by_its_registry_is_told_credentials_not_a_version() -> None:
    """test_doctor::test_an_operand_image_that_cannot_be_pulled_names_the_field_that_sets_it feeds only "not found"
    pulls, so _pull_fix's `if pulled.cause == "not-found":` replaced by `if True:` survives: a driver image the
    registry refuses (a private NGC repository without an imagePullSecret, the common case for licensed or
    precompiled drivers) would be told to set driver.version to another version instead of naming
    driver.imagePullSecrets; an unreachable registry likewise."""
    image = "nvcr.io/acme/driver:570.148.08-ubuntu22.04"
    denied = (f'failed to pull and unpack image "{image}": failed to resolve reference "{image}": pull access denied, '
              "repository does not exist or may require authorization")  # fmt: skip
    driver = _operand("nvidia-driver-daemonset-x", "state-driver", "nvidia-driver-ctr", image, "ErrImagePull", denied)
    spec = {"driver": {"repository": "nvcr.io/acme", "image": "driver", "version": "570.148.08"}}
    f = _found([driver], spec, DRIVER_NOT_READY)["ImagePullFailed"]
    assert "driver.imagePullSecrets" in f.fix and "docker-registry Secret in namespace gpu-operator" in f.fix, f.fix
    assert "to a version that" not in f.fix, f.fix
    unreachable = (f'failed to pull and unpack image "{image}": failed to resolve reference "{image}": failed to do '
                   "request: Head \"https://nvcr.io/v2/acme/driver/manifests/570.148.08-ubuntu22.04\": dial tcp: "
                   "lookup nvcr.io: no such host")  # fmt: skip
    driver = _operand("nvidia-driver-daemonset-x", "state-driver", "nvidia-driver-ctr", image, "ErrImagePull",
                      unreachable)  # fmt: skip
    f = _found([driver], spec, DRIVER_NOT_READY)["ImagePullFailed"]
    assert "reachable from the node" in f.fix and "to a version that" not in f.fix, f.fix


def test_an_operand_image_set_whole_in_image_is_named_as_that_field() -> None:
    """ImageSpec's `image` may name the whole reference (images.resolve takes it verbatim). No test sets only
    `image`, so _pull_fix's `elif section.image:` replaced by `elif False:` survives: doctor would say the
    ClusterPolicy "sets no image here, so the operator's default ... is used" about an image the admin wrote. The
    driver-tag hint (<driver.version>-<os>) belongs to the ClusterPolicy's driver alone (no test looked for its
    absence elsewhere: `if pulled.image != resolved and path == ...` replaced by `if True` survives)."""
    image = "registry.local/nvidia/k8s-device-plugin:v0.99.0"
    plugin = _operand("nvidia-device-plugin-daemonset-x", "state-device-plugin", "nvidia-device-plugin", image,
                      "ErrImagePull", f'failed to pull and unpack image "{image}": failed to resolve reference '
                      f'"{image}": {image}: not found')  # fmt: skip
    status = {"state": "notReady", "states": [{"name": "state-device-plugin", "state": "notReady",
                                               "message": "1 of 1 pods unavailable"}]}  # fmt: skip
    f = _found([plugin], {"devicePlugin": {"image": image}}, status)["ImagePullFailed"]
    assert f"correct ClusterPolicy cluster-policy's devicePlugin.image ({image}) to an image that exists" == f.fix, (
        f.fix)  # fmt: skip
    assert "sets no image here" not in f.fix and "the driver's tag" not in f.fix, f.fix


def test_an_operand_image_the_operators_env_names_is_not_called_its_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """A component's image falls back to the operator's env (DEVICE_PLUGIN_IMAGE, ...; images.ENV, upstream's
    ImagePath) where the ClusterPolicy names none. doctor resolved with its own shell's env, not the operator's, and
    for a device plugin image DEVICE_PLUGIN_IMAGE set to a tag the registry lacks said "the operator's default
    nvcr.io/nvidia/k8s-device-plugin:v0.20.0 is used", not the image that failed, without naming the variable. Now
    a pulled image other than the default is said to come from that variable; the shell's env changes nothing."""
    status = {"state": "notReady", "states": [{"name": "state-device-plugin", "state": "notReady",
                                               "message": "1 of 1 pods unavailable"}]}  # fmt: skip

    def fix(image: str) -> str:
        plugin = _operand("nvidia-device-plugin-daemonset-x", "state-device-plugin", "nvidia-device-plugin", image,
                          "ErrImagePull", not_found(image))  # fmt: skip
        return str(_found([plugin], {}, status)["ImagePullFailed"].fix)

    monkeypatch.setenv("DEVICE_PLUGIN_IMAGE", "nvcr.io/nvidia/k8s-device-plugin:v0.98.0")  # doctor's shell: ignored
    said = fix("nvcr.io/nvidia/k8s-device-plugin:v0.99.0")  # the operator's DEVICE_PLUGIN_IMAGE
    assert said.startswith("ClusterPolicy cluster-policy sets no image here, so the operator's env DEVICE_PLUGIN_IMAGE "
                           "(its Deployment's; operator.env in the chart) names it, not its default "
                           "nvcr.io/nvidia/k8s-device-plugin:v0.20.0: correct DEVICE_PLUGIN_IMAGE, or set "
                           "ClusterPolicy cluster-policy's devicePlugin.repository"), said  # fmt: skip
    assert "is used" not in said, said
    said = fix("nvcr.io/nvidia/k8s-device-plugin:v0.20.0")
    assert "the operator's default nvcr.io/nvidia/k8s-device-plugin:v0.20.0 is used" in said, said


def test_an_operand_image_the_operators_env_points_at_a_mirror_is_named_by_its_env_variable() -> None:
    """The operator's env (DEVICE_PLUGIN_IMAGE, ...) is there "e.g. for an air-gapped mirror" (README), but doctor
    found an image's section only by the image's repository, registry included: an image in a mirror's registry
    matched no section, and the fix only said `kubectl describe pod`. Now, where the section sets no image (so the
    env applies) and the pod runs that section's image (its own, the validator's), the image's name matches too, and
    the variable is named."""
    status = {"state": "notReady", "states": [{"name": "state-device-plugin", "state": "notReady",
                                               "message": "1 of 1 pods unavailable"}]}  # fmt: skip

    def fix(image: str, spec: dict[str, Any]) -> str:
        plugin = _operand("nvidia-device-plugin-daemonset-x", "state-device-plugin", "nvidia-device-plugin", image,
                          "ErrImagePull", not_found(image))  # fmt: skip
        return str(_found([plugin], spec, status)["ImagePullFailed"].fix)

    said = fix("registry.local:5000/nvidia/k8s-device-plugin:v0.99.0", {})
    assert said.startswith("ClusterPolicy cluster-policy sets no image here, so the operator's env DEVICE_PLUGIN_IMAGE "
                           "(its Deployment's; operator.env in the chart) names it"), said  # fmt: skip
    said = fix("registry.local:5000/nvidia/gpu-operator:v26.99.0", {})
    assert "the operator's env VALIDATOR_IMAGE" in said and "validator.repository" in said, said
    # the pod's section sets its image, so no env names it (nor GFD's, which runs the same image name in its own pods)
    said = fix("registry.local:5000/nvidia/k8s-device-plugin:v0.99.0",
               {"devicePlugin": {"repository": "nvcr.io/nvidia", "image": "k8s-device-plugin", "version": "v0.20.0"}})
    assert "_IMAGE" not in said and said.startswith("kubectl describe pod"), said


def test_an_operand_pod_not_started_is_not_blamed_on_its_node() -> None:
    """test_doctor::test_an_operand_pod_on_a_node_gone_notready_points_at_the_node has only the positive case, and no
    test reaches the "pod Pending (not started)" line, so _why_not_ready's `if containers_ready(pod):` replaced by
    `if True:` survives: an operand pod the kubelet has not started yet (no container status) would be reported as
    "pod not Ready though its containers are: is node ... NotReady?" and the admin sent to a healthy node."""
    plugin = {"kind": "Pod", "spec": {"nodeName": "h-0"},
              "metadata": {"name": "nvidia-device-plugin-daemonset-x", "namespace": NS,
                           "labels": {"nvidia.com/gpu-operator.state": "state-device-plugin"}},
              "status": {"phase": "Pending", "conditions": [{"type": "Ready", "status": "False"}]}}  # fmt: skip
    status = {"state": "notReady", "states": [{"name": "state-device-plugin", "state": "notReady",
                                               "message": "1 of 1 pods unavailable"}]}  # fmt: skip
    f = kinds(cluster([node("h-0")], [plugin], policy_status=status))["OperandNotReady"]
    assert "pod Pending (not started)" in f.summary and "NotReady?" not in f.summary, f.summary
    assert f.fix == f"kubectl describe pod -n {NS} nvidia-device-plugin-daemonset-x", f.fix


def test_a_new_node_like_another_runs_the_pods_that_belong_to_its_node() -> None:
    """capacity's `like NODE` profile starts from the node's own pods, as cluster-autoscaler's template node: those
    of a DaemonSet (with or without `controller: true` on the owner reference) and static pods (their mirror, owned
    by the Node and annotated kubernetes.io/config.mirror), not a Deployment's (upgrade.model.belongs_to_node)."""
    def pod(name: str, owner: str | None, controller: bool = True, mirror: bool = False) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": name, "namespace": "ns"}
        if owner:
            meta["ownerReferences"] = [{"kind": owner, "name": "o", "controller": controller}]
        if mirror:
            meta["annotations"] = {"kubernetes.io/config.mirror": "x"}
        return {"metadata": meta, "spec": {"nodeName": "g-0", "containers": [{"name": "c"}]}}

    view = nodes_with_pods([node("g-0")], [
        pod("ds", "DaemonSet"), pod("ds-loose", "DaemonSet", controller=False), pod("static", "Node", mirror=True),
        pod("mirror-unowned", None, mirror=True), pod("web", "ReplicaSet"), pod("bare", None),
    ])["g-0"]  # fmt: skip
    new = capacity.empty_copy(view)
    assert sorted(p["metadata"]["name"] for p in new.pods) == ["ds", "ds-loose", "mirror-unowned", "static"]
    assert new.name == "new-g-0" and new.labels["kubernetes.io/hostname"] == "new-g-0"


def test_unadvertised_node_reads_gfd_mig_invalid_and_single_mig_counts() -> None:
    """Under mig.strategy single with MIG devices of several profiles (or MIG on some GPUs only) GFD writes
    nvidia.com/gpu.product=<model>-MIG-INVALID and gpu.count=0 (k8s-device-plugin mig-strategy.go
    newInvalidMigStrategyLabeler), and the device plugin advertises nothing ("invalid MIG configuration",
    internal/rm/device_map.go). GPUsNotAdvertisedOnNode said "h-0 has NVIDIA GPUs (0) but advertises none": a node
    with no GPUs, and nothing of the MIG layout GFD's label names as the cause. With MIG on, gpu.count counts MIG
    devices (56 on 8 H100s in all-1g.10gb), which it called GPUs."""
    n = node("h-0", labels={"nvidia.com/gpu.product": f"{H100}-MIG-INVALID", "nvidia.com/gpu.count": "0"})
    n["status"]["allocatable"].pop("nvidia.com/gpu")
    n["status"]["capacity"].pop("nvidia.com/gpu")
    f = kinds(cluster([n, node("h-1")], []))["GPUsNotAdvertisedOnNode"]
    assert "(0)" not in f.summary and f"GFD labels it {H100}-MIG-INVALID" in f.summary, f.summary
    assert "mig.strategy to mixed" in f.fix and "spec.nodeName=h-0" in f.fix, f.fix
    n["metadata"]["labels"].update({"nvidia.com/gpu.product": f"{H100}-MIG-1g.10gb", "nvidia.com/gpu.count": "56"})
    f = kinds(cluster([n, node("h-1")], []))["GPUsNotAdvertisedOnNode"]
    assert "h-0 has NVIDIA GPUs (56 MIG devices) but advertises none" in f.summary, f.summary
