"""The Helm chart (charts/gpu-operator) and the plain install manifests generated from it, through `helm template`.

Needs no cluster, only the helm binary that e2e/cluster/build.sh builds (so it lives in the e2e tier; the chart's
files that need no helm are checked by tests/test_chart_files.py). Checks that
every values file gives a ClusterPolicy the operator accepts, that the operator's RBAC is exactly what it needs
(its own API calls plus every rule of the operand Roles/ClusterRoles it creates, since RBAC forbids granting what
one does not hold), that the pod is locked down, and that the generated files are up to date.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from gpu_operator import coverage, images
from gpu_operator.api import ClusterPolicySpec, parse_spec, unknown_fields
from gpu_operator.cli import main as cli_main
from gpu_operator.kinds import NAMED_VERBS, operand_names, operand_rbac
from gpu_operator.nodes import NodeFacts
from gpu_operator.render import StatePlan, node_patches, plan, relabelled
from gpu_operator.states import RenderContext
from gpu_operator.upgrade import DRAIN_SKIP_LABEL

REPO = Path(__file__).resolve().parents[1]
CHART = REPO / "charts" / "gpu-operator"
CI_VALUES = sorted((CHART / "ci").glob("*.yaml"))
RELEASE = "gpu-operator"
NAMESPACE = "gpu-operator"
KUBE_VERSION = "1.37.2"
MANIFEST = REPO / "manifests" / "gpu-operator.yaml"
GENERATOR = REPO / "hack" / "gen-manifests.py"
CHART_VERSION = yaml.safe_load((CHART / "Chart.yaml").read_text())["version"]
REGENERATE = "run .venv/bin/python hack/gen-manifests.py"
CLUSTER_POLICY_SECTIONS = (
    "operator", "daemonsets", "driver", "toolkit", "devicePlugin", "dcgm", "dcgmExporter", "gfd", "mig",
    "migManager", "nodeStatusExporter", "validator", "sandboxWorkloads", "vfioManager", "vgpuManager",
    "vgpuDeviceManager", "sandboxDevicePlugin", "kataSandboxDevicePlugin", "kataManager", "ccManager", "cdi", "gds",
    "gdrcopy", "psa", "hostPaths",
)  # fmt: skip
OWNER = {"apiVersion": "nvidia.com/v1", "kind": "ClusterPolicy", "name": "cluster-policy", "uid": "1111"}
CHART_ONLY_KEYS = {"gpuPodDeletion", "nvidiaDriverCRD", "create", "data", "upgradeCRD", "cleanupCRD"}


# --- helm ---


def fixed_nodes() -> list[NodeFacts]:
    """Two GPU nodes of two OS versions (one MIG-capable) and a CPU node, as NFD labels them."""
    def node(name: str, version: str, gpu: bool, mig: bool = False) -> NodeFacts:
        labels = {"feature.node.kubernetes.io/system-os_release.ID": "ubuntu",
                  "feature.node.kubernetes.io/system-os_release.VERSION_ID": version,
                  "feature.node.kubernetes.io/kernel-version.full": "5.15.0-122-generic"}  # fmt: skip
        if gpu:
            labels["feature.node.kubernetes.io/pci-10de.present"] = "true"
        if mig:
            labels["nvidia.com/mig.capable"] = "true"
        return NodeFacts.from_node({"kind": "Node", "metadata": {"name": name, "labels": labels}})

    return [node("gpu-a", "22.04", True, mig=True), node("gpu-b", "24.04", True), node("cpu-a", "22.04", False)]


def render_all(spec: Any, nodes: list[NodeFacts], api_groups: frozenset[str] = frozenset(),
               config_maps: dict[str, tuple[str, ...]] | None = None) -> list[StatePlan]:
    """The operator's pipeline: label the nodes, then plan on the relabelled nodes (`config_maps`: those of the
    operator namespace, name -> keys)."""
    patched = relabelled(nodes, node_patches(nodes, spec))
    return plan(RenderContext(spec=spec, namespace=NAMESPACE, nodes=tuple(patched), owner=OWNER,
                              api_groups=api_groups, config_maps=config_maps or {}))  # fmt: skip


@functools.cache
def helm_binary() -> str:
    out = subprocess.run(
        ["bash", str(REPO / "e2e" / "cluster" / "build.sh"), "--print-dir"], check=True, capture_output=True, text=True
    )
    path = Path(out.stdout.strip()) / "helm"
    assert os.access(path, os.X_OK), f"no helm binary at {path}: run `bash e2e/cluster/build.sh` (or `make binaries`)"
    return str(path)


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([helm_binary(), *args], capture_output=True, text=True, timeout=120, cwd=REPO)
    if check:
        assert proc.returncode == 0, f"helm {' '.join(args)} failed:\n{proc.stderr}"
    return proc


@functools.cache
def _render(values: tuple[str, ...], sets: tuple[str, ...], namespace: str) -> str:
    args = ["template", RELEASE, str(CHART), "--namespace", namespace, "--kube-version", KUBE_VERSION]
    for v in values:
        args += ["-f", v]
    for s in sets:
        args += ["--set", s]
    return helm(*args).stdout


def render(*values: Path, sets: Iterable[str] = (), namespace: str = NAMESPACE) -> list[dict[str, Any]]:
    out = _render(tuple(str(v) for v in values), tuple(sets), namespace)
    return [d for d in yaml.safe_load_all(out) if d]


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = find(docs, kind, name)
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def policy_spec(docs: list[dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = one(docs, "ClusterPolicy", "cluster-policy")["spec"]
    return spec


def hook(doc: dict[str, Any]) -> str | None:
    return (doc["metadata"].get("annotations") or {}).get("helm.sh/hook")


def hook_events(doc: dict[str, Any]) -> set[str]:
    return set((hook(doc) or "").split(",")) - {""}


def walk(node: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    yield path, node
    if isinstance(node, dict):
        for k, v in node.items():
            yield from walk(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from walk(v, f"{path}[{i}]")


def values_id(path: Path) -> str:
    return path.stem


# --- lint and structure ---


def test_ci_values_files_exist() -> None:
    assert {p.name for p in CI_VALUES} >= {
        "default-values.yaml", "upstream-values.yaml", "mig-mixed-values.yaml", "sandbox-off-values.yaml",
    }  # fmt: skip


@pytest.mark.parametrize("values", [None, *CI_VALUES], ids=["no-values", *map(values_id, CI_VALUES)])
def test_helm_lint_strict(values: Path | None) -> None:
    args = ["lint", "--strict", str(CHART)] + (["-f", str(values)] if values else [])
    proc = helm(*args, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout


TOO_OLD = "gpu-operator needs Kubernetes 1.29 or newer (the ClusterPolicy CRD uses CEL validation rules)"


def test_kube_version_constraint_is_enforced() -> None:
    args = ["template", RELEASE, str(CHART), "--kube-version", "1.28.9"]
    proc = helm(*args, check=False)
    assert proc.returncode != 0 and f"{TOO_OLD}; the cluster is v1.28.9" in proc.stderr


def test_plain_helm_template_needs_no_flags() -> None:
    """What GitOps tools run first: no --kube-version (Helm's offline default version is older than 1.29)."""
    proc = subprocess.run([helm_binary(), "template", str(CHART)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    docs = [d for d in yaml.safe_load_all(proc.stdout) if d]
    assert find(docs, "Deployment") and find(docs, "ClusterPolicy")


# --- the ClusterPolicy from values ---


@pytest.mark.parametrize("values", CI_VALUES, ids=map(values_id, CI_VALUES))
def test_values_file_renders_a_policy_the_operator_accepts(
    values: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    docs = render(values)
    assert all(d.get("apiVersion") and d.get("kind") and d["metadata"].get("name") for d in docs)
    cluster_scoped = {"ClusterRole", "ClusterRoleBinding", "ClusterPolicy", "Namespace", "CustomResourceDefinition"}
    for d in docs:
        if d["kind"] not in cluster_scoped:
            assert d["metadata"].get("namespace") == NAMESPACE, f"{d['kind']} {d['metadata']['name']}"
    spec = policy_spec(docs)
    parse_spec(spec)  # raises PolicyError with one line per problem
    empties = [p for p, v in walk(spec) if "[" not in p and (v is None or v == "" or v == {} or v == [])]
    empties = [p for p in empties if p != ".migManager.config.default"]  # "" seeds no label (unset: all-disabled)
    assert empties == [], "empty values must be left out so the operator's defaults apply (lists are kept)"
    leaked = [p for p, _ in walk(spec) if p.rsplit(".", 1)[-1] in CHART_ONLY_KEYS]
    assert leaked == [], "chart-only keys must not reach the ClusterPolicy"
    # The operator renders every object of it without error.
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(yaml.safe_dump(one(docs, "ClusterPolicy", "cluster-policy")))
    assert cli_main(["render", "--policy", str(policy_file)]) == 0
    assert "DaemonSet" in capsys.readouterr().out


def test_defaults_policy() -> None:
    spec = policy_spec(render())
    assert set(spec) == set(CLUSTER_POLICY_SECTIONS)
    assert spec["operator"] == {"runtimeClass": "nvidia", "defaultRuntime": "containerd",
                                "metrics": {"serviceMonitor": {"enabled": True, "interval": "15s",
                                                               "honorLabels": False}}}  # fmt: skip
    assert spec["mig"] == {"strategy": "single"}
    assert spec["dcgm"]["enabled"] is False and spec["dcgmExporter"]["enabled"] is True
    assert spec["driver"]["upgradePolicy"]["autoUpgrade"] is True
    assert spec["driver"]["useNvidiaDriverCRD"] is False
    assert spec["sandboxWorkloads"] == {"enabled": False, "defaultWorkload": "container", "mode": "kubevirt"}
    # Upstream v26.7's defaults (deployments/gpu-operator/values.yaml): CDI on, and the DCGM exporter's
    # ServiceMonitor on (rendered only where prometheus-operator's API is served).
    assert spec["cdi"] == {"enabled": True, "nriPluginEnabled": False}
    assert spec["dcgmExporter"]["serviceMonitor"] == {"enabled": True, "interval": "15s", "scrapeTimeout": "10s",
                                                      "honorLabels": False}  # fmt: skip
    parsed = parse_spec(spec)
    assert parsed.cdi.enabled == parse_spec({}).cdi.enabled, "the chart's default is the operator's"
    plans = {p.state.name: p for p in render_all(parsed, fixed_nodes())}
    classes = {o["metadata"]["name"] for o in plans["pre-requisites"].objects if o["kind"] == "RuntimeClass"}
    assert classes == {"nvidia", "nvidia-cdi", "nvidia-legacy"}
    assert not [o for o in plans["state-dcgm-exporter"].objects if o["kind"] == "ServiceMonitor"]
    served = render_all(parsed, fixed_nodes(), api_groups=frozenset({"monitoring.coreos.com"}))
    monitors = {o["metadata"]["name"]: o for p in served for o in p.objects if o["kind"] == "ServiceMonitor"}
    assert sorted(monitors) == ["gpu-operator", "nvidia-dcgm-exporter"]  # the operator's own too, as upstream
    monitor = monitors["nvidia-dcgm-exporter"]
    assert monitor["spec"]["endpoints"][0]["scrapeTimeout"] == "10s"
    # No version in the values: the operator's own default images.
    for section, component in (("driver", "driver"), ("toolkit", "toolkit"), ("device_plugin", "device-plugin"),
                               ("validator", "validator"), ("mig_manager", "mig-manager")):  # fmt: skip
        settings = getattr(parsed, section)
        assert settings.repository is None and settings.image is None and settings.version is None
        assert images.resolve(settings, component) == images.join(*images.DEFAULTS[component])


def test_gpu_pod_deletion_maps_to_pod_deletion() -> None:
    upstream = policy_spec(render(CHART / "ci" / "upstream-values.yaml"))["driver"]["upgradePolicy"]
    assert upstream["podDeletion"] == {"force": True, "timeoutSeconds": 600, "deleteEmptyDir": True}
    assert "gpuPodDeletion" not in upstream
    assert upstream["maxParallelUpgrades"] == 2
    parsed = parse_spec({"driver": {"upgradePolicy": upstream}}).driver.upgrade_policy.pod_deletion
    assert parsed is not None and parsed.force is True and parsed.timeout_seconds == 600
    sets = ["driver.upgradePolicy.gpuPodDeletion.timeoutSeconds=42"]
    assert policy_spec(render(sets=sets))["driver"]["upgradePolicy"]["podDeletion"]["timeoutSeconds"] == 42
    # Unset in the values: no podDeletion (the operator's own default).
    none = policy_spec(render(sets=["driver.upgradePolicy.gpuPodDeletion=null"]))["driver"]["upgradePolicy"]
    assert "podDeletion" not in none


def test_nvidia_driver_crd_switch_maps_to_use_nvidia_driver_crd() -> None:
    spec = policy_spec(render(sets=["driver.nvidiaDriverCRD.enabled=true"]))
    assert spec["driver"]["useNvidiaDriverCRD"] is True
    assert "nvidiaDriverCRD" not in spec["driver"]


def test_the_crds_names_for_pod_deletion_and_use_nvidia_driver_crd_are_not_overwritten(tmp_path: Path) -> None:
    """Values written with the CRD's names (REFERENCE §1: driver.upgradePolicy.podDeletion, driver.useNvidiaDriverCRD)
    were silently replaced by the chart's defaults of its own keys (gpuPodDeletion: force false, 300 s;
    nvidiaDriverCRD.enabled false), though the chart copies the rest of driver as given; now they are taken, the
    CRD's podDeletion keys winning, and useNvidiaDriverCRD brings the default NVIDIADriver as the chart's switch."""
    given = {"force": True, "timeoutSeconds": 0, "deleteEmptyDir": True}
    values = write_values(tmp_path, {"driver": {"useNvidiaDriverCRD": True, "upgradePolicy": {"podDeletion": given}}})
    docs = render(values)
    driver = policy_spec(docs)["driver"]
    assert driver["upgradePolicy"]["podDeletion"] == given and "gpuPodDeletion" not in driver["upgradePolicy"]
    assert driver["useNvidiaDriverCRD"] is True
    assert one(docs, "NVIDIADriver", "default")["spec"]["upgradePolicy"]["podDeletion"] == given
    # One key given: the rest from gpuPodDeletion.
    one_key = policy_spec(render(sets=["driver.upgradePolicy.podDeletion.force=true",
                                       "driver.upgradePolicy.gpuPodDeletion.timeoutSeconds=42"]))  # fmt: skip
    assert one_key["driver"]["upgradePolicy"]["podDeletion"] == {"force": True, "timeoutSeconds": 42,
                                                                 "deleteEmptyDir": False}  # fmt: skip
    assert policy_spec(render())["driver"]["useNvidiaDriverCRD"] is False


@pytest.mark.parametrize("sets", [
    ["driver.version=580.95.05", "driver.upgradePolicy.maxParallelUpgrades=3"],
    # The driver pod's sidecars: an NVIDIADriver's come from its own gds and gdrcopy (upstream's nvidiadriver.yaml);
    # an NVIDIADriver's GDS from 2.17.5 on needs the open kernel modules.
    ["gds.enabled=true", "gdrcopy.enabled=true", "gdrcopy.repository=registry.local/nvidia", "driver.hostNetwork=true",
     "driver.kernelModuleType=open"],
    # driver.args replace the driver container's `init`, an NVIDIADriver's follow it: the chart drops a leading `init`
    # (copied verbatim, the NVIDIADriver ran `nvidia-driver init init ...`, which the script refuses).
    ["driver.args[0]=init", "driver.args[1]=--accept-license"],
], ids=["pinned-driver", "sidecars-and-host-network", "driver-args"])  # fmt: skip
def test_nvidia_driver_crd_deploys_a_default_nvidiadriver_that_renders_the_same_driver(sets: list[str]) -> None:
    """The default NVIDIADriver is made from the same driver values as the ClusterPolicy: switching over keeps
    every driver DaemonSet's pod template (so no driver pod restarts)."""
    from gpu_operator.nvidiadriver import NVIDIADriver
    from gpu_operator.render import driver_node_patches, driver_routing

    assert not find(render(), "NVIDIADriver")
    assert not find(render(sets=["driver.nvidiaDriverCRD.enabled=true",
                                 "driver.nvidiaDriverCRD.deployDefaultCR=false"]), "NVIDIADriver")  # fmt: skip
    before = parse_spec(policy_spec(render(sets=sets)))
    docs = render(sets=[*sets, "driver.nvidiaDriverCRD.enabled=true"])
    nvd = one(docs, "NVIDIADriver", "default")
    assert nvd["spec"]["default"] is True and nvd["spec"]["driverType"] == "gpu"
    driver = NVIDIADriver.from_object(nvd)
    assert driver.spec is not None, driver.problem
    after = parse_spec(policy_spec(docs))
    nodes = fixed_nodes()

    def driver_templates(spec: Any, drivers: list[NVIDIADriver]) -> dict[str, Any]:
        patched = relabelled(nodes, node_patches(nodes, spec))
        routing = driver_routing(patched, spec, drivers)
        patched = relabelled(patched, driver_node_patches(patched, spec, routing))
        ctx = RenderContext(spec=spec, namespace=NAMESPACE, nodes=tuple(patched), owner=OWNER,
                            nvidia_drivers=routing.groups)  # fmt: skip
        driver_plan = next(p for p in plan(ctx) if p.state.name == "state-driver")
        return {o["metadata"]["name"]: o["spec"]["template"] for o in driver_plan.objects if o["kind"] == "DaemonSet"}

    templates = driver_templates(before, [])
    assert templates and driver_templates(after, [driver]) == templates
    pods = [t["spec"] for t in templates.values()]
    if "gds.enabled=true" in sets:
        assert all({"nvidia-fs-ctr", "nvidia-gdrcopy-ctr"} <= {c["name"] for c in p["containers"]} for p in pods)
        assert all(p.get("hostNetwork") is True for p in pods)
    if "driver.args[0]=init" in sets:
        assert nvd["spec"]["args"] == ["--accept-license"]
        assert all(next(c["args"] for c in p["containers"] if c["name"] == "nvidia-driver-ctr")
                   == ["init", "--accept-license"] for p in pods)  # fmt: skip


def test_default_nvidiadriver_carries_the_virtual_topology_config() -> None:
    """As upstream's nvidiadriver.yaml: `virtualTopologyConfig: {name: <driver.virtualTopology.config>}`."""
    docs = render(sets=["driver.nvidiaDriverCRD.enabled=true", "driver.virtualTopology.config=vgpu-topology"])
    assert one(docs, "NVIDIADriver", "default")["spec"]["virtualTopologyConfig"] == {"name": "vgpu-topology"}
    assert policy_spec(docs)["driver"]["virtualTopology"] == {"config": "vgpu-topology"}


def test_image_fields() -> None:
    spec = parse_spec(policy_spec(render(CHART / "ci" / "upstream-values.yaml")))
    assert images.resolve(spec.driver, "driver") == "nvcr.io/nvidia/driver:580.82.07"
    manager = images.resolve(spec.driver.manager, "driver-manager")
    assert manager == "nvcr.io/nvidia/cloud-native/k8s-driver-manager:v0.8.1"
    # version "" with v25's validator image name: that image, at the operator's default version.
    version = images.DEFAULTS["validator"][2]
    old_name = f"nvcr.io/nvidia/cloud-native/gpu-operator-validator:{version}"
    assert images.resolve(spec.validator, "validator") == old_name
    assert spec.vgpu_manager.image is None and spec.vgpu_manager.repository is None
    # A full reference without repository and version is used verbatim.
    verbatim = parse_spec(policy_spec(render(CHART / "ci" / "sandbox-off-values.yaml")))
    assert images.resolve(verbatim.driver, "driver") == "registry.example.com/nvidia/driver:595.91.07-ubuntu22.04"
    digest = policy_spec(render(sets=["driver.version=sha256:0123456789abcdef"]))["driver"]
    assert (digest["repository"], digest["image"]) == ("nvcr.io/nvidia", "driver")
    pinned = images.resolve(parse_spec({"driver": digest}).driver, "driver")
    assert pinned == "nvcr.io/nvidia/driver@sha256:0123456789abcdef"


def test_an_all_digit_version_reaches_the_policy_as_a_string() -> None:
    """`--set driver.version=580` (a driver branch) is a number to Helm; the CRDs want a string, as upstream's
    chart quotes every version. So does every nested image's version."""
    from gpu_operator.nvidiadriver import NVIDIADriver

    docs = render(sets=["driver.usePrecompiled=true", "driver.version=580", "driver.manager.version=12",
                        "gds.enabled=true", "gds.version=2", "vgpuManager.driverManager.version=1",
                        "vgpuManager.driverManager.repository=nvcr.io/nvidia/cloud-native",
                        "vgpuManager.driverManager.image=k8s-driver-manager",
                        "driver.nvidiaDriverCRD.enabled=true"])  # fmt: skip
    spec = policy_spec(docs)
    versions = [spec["driver"]["version"], spec["driver"]["manager"]["version"], spec["gds"]["version"],
                spec["vgpuManager"]["driverManager"]["version"]]  # fmt: skip
    assert versions == ["580", "12", "2", "1"]
    assert parse_spec(spec).driver.version == "580"
    nvd = one(docs, "NVIDIADriver", "default")["spec"]
    assert (nvd["version"], nvd["manager"]["version"], nvd["gds"]["version"]) == ("580", "12", "2")
    driver = NVIDIADriver.from_object(one(docs, "NVIDIADriver", "default"))
    assert driver.spec is not None, driver.problem


def test_mig_mixed_values() -> None:
    docs = render(CHART / "ci" / "mig-mixed-values.yaml")
    spec = policy_spec(docs)
    assert spec["mig"] == {"strategy": "mixed"}
    assert spec["migManager"]["config"] == {"name": "custom-mig-parted-config", "default": "all-balanced"}
    cm = one(docs, "ConfigMap", "custom-mig-parted-config")
    layouts = yaml.safe_load(cm["data"]["config.yaml"])
    assert layouts["version"] == "v1"
    assert {"all-disabled", "all-1g.10gb", "all-balanced"} <= set(layouts["mig-configs"])
    assert spec["migManager"]["config"]["default"] in layouts["mig-configs"]


def test_sandbox_off_values() -> None:
    docs = render(CHART / "ci" / "sandbox-off-values.yaml")
    spec = policy_spec(docs)
    assert spec["sandboxWorkloads"]["enabled"] is False
    for section in ("vfioManager", "vgpuManager", "vgpuDeviceManager", "sandboxDevicePlugin", "ccManager"):
        assert spec[section]["enabled"] is False
    assert spec["daemonsets"]["updateStrategy"] == "OnDelete"
    assert spec["operator"]["metrics"]["serviceMonitor"]["enabled"] is True
    assert spec["operator"]["metrics"]["serviceMonitor"]["additionalLabels"] == {"release": "prometheus"}
    # The time-slicing config made by the chart, named in the policy.
    assert spec["devicePlugin"]["config"] == {"name": "time-slicing-config", "default": "any"}
    config = yaml.safe_load(one(docs, "ConfigMap", "time-slicing-config")["data"]["any"])
    assert config["sharing"]["timeSlicing"]["resources"] == [{"name": "nvidia.com/gpu", "replicas": 4}]
    # upgradeCRD off: no pre-upgrade hook; cleanupCRD on: the pre-delete hook also deletes the CRD.
    assert not [d for d in docs if "pre-upgrade" in hook_events(d)]
    job = one(docs, "Job", "gpu-operator-cleanup")
    env = {e["name"]: e["value"] for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["DELETE_CRDS"] == "clusterpolicies.nvidia.com,nvidiadrivers.nvidia.com"
    assert env["CLUSTERPOLICIES"] == "*" and env["TIMEOUT_SECONDS"] == "30"


def test_cluster_policy_switch() -> None:
    """Without the chart's ClusterPolicy the pre-delete hook deletes none, but still takes the operator's finalizer
    off the ClusterPolicies managed elsewhere (once the operator is gone nothing else would)."""
    for switch in ("clusterPolicy.enabled=false", "clusterPolicy.deployCR=false"):
        docs = render(sets=[switch])
        assert not find(docs, "ClusterPolicy")
        env = {e["name"]: e["value"] for e in one(docs, "Job", "gpu-operator-cleanup")["spec"]["template"]["spec"][
            "containers"][0]["env"]}  # fmt: skip
        assert env["CLUSTERPOLICIES"] == "" and env["OPERATOR"] == f"{NAMESPACE}/gpu-operator", env
    docs = render(sets=["clusterPolicy.enabled=false", "operator.cleanupCRD=true"])
    assert one(docs, "Job", "gpu-operator-cleanup")
    docs = render(sets=["clusterPolicy.cleanupOnUninstall=false"])
    assert not [d for d in docs if hook(d) == "pre-delete"], "no clean-up asked for"


@pytest.mark.parametrize("value", ["0", "-5", "1.5"])
def test_alert_durations_must_be_whole_minutes_above_zero(value: str) -> None:
    """upgradeStuckFor 0 rendered `[0m]` and `offset 0m`, which Prometheus refuses (the whole rule file with it)."""
    for key in ("operandNotReadyFor", "upgradeStuckFor"):
        args = ["template", RELEASE, str(CHART), "--kube-version", KUBE_VERSION,
                "--set", "operator.metrics.prometheusRule.enabled=true",
                "--set", f"operator.metrics.prometheusRule.{key}={value}"]  # fmt: skip
        proc = helm(*args, check=False)
        assert proc.returncode != 0 and f"operator.metrics.prometheusRule.{key} must be a whole number" in proc.stderr
    docs = render(sets=["operator.metrics.prometheusRule.enabled=true",
                        "operator.metrics.prometheusRule.upgradeStuckFor=30"])  # fmt: skip
    rules = one(docs, "PrometheusRule", "gpu-operator")["spec"]["groups"][0]["rules"]
    assert any("[30m]" in r["expr"] for r in rules)


def test_config_create_needs_a_name() -> None:
    args = ["template", RELEASE, str(CHART), "--kube-version", KUBE_VERSION,
            "--set", "devicePlugin.config.create=true", "--set", "devicePlugin.config.data.a=b"]  # fmt: skip
    proc = helm(*args, check=False)
    assert proc.returncode != 0 and "devicePlugin.config.create needs devicePlugin.config.name" in proc.stderr


@pytest.mark.parametrize("section", [s for s in CLUSTER_POLICY_SECTIONS if s != "operator"])
def test_a_null_operand_section_is_left_to_the_operators_defaults(section: str) -> None:
    """`--set migManager=null` (also devicePlugin, dcgmExporter, driver) failed `helm template` on a nil pointer
    (configmaps.yaml, nvidiadriver.yaml read <section>.config / .nvidiaDriverCRD unguarded)."""
    spec = policy_spec(render(sets=[f"{section}=null"]))
    assert section not in spec
    parse_spec(spec)


VALUES_SECTIONS = list(yaml.safe_load((CHART / "values.yaml").read_text()))
CHART_SECTIONS = [s for s in VALUES_SECTIONS if s not in CLUSTER_POLICY_SECTIONS] + ["operator"]


@pytest.mark.parametrize("section", CHART_SECTIONS)
def test_a_null_chart_section_renders_as_its_defaults(section: str) -> None:
    """`--set nfd=null` (also doctor, clusterPolicy, namespace, operator; or the section's key with nothing under it
    in a values file) failed `helm template` on a nil pointer: Helm drops a null key, defaults and all, and
    NOTES.txt, doctor-rbac.yaml, the deployCR helper, namespace.yaml and the operator's templates read under it.
    A null chart-only section now renders exactly as its defaults."""
    assert section in VALUES_SECTIONS
    assert render(sets=[f"{section}=null"]) == render()


def test_a_null_psa_section_leaves_the_namespace_unlabelled() -> None:
    """psa is an operand section the chart also reads for itself (the Namespace's pod-security labels): with
    namespace.create, `--set psa=null` failed on a nil pointer in namespace.yaml."""
    namespace = one(render(sets=["namespace.create=true", "psa=null"]), "Namespace", NAMESPACE)
    assert not [k for k in namespace["metadata"]["labels"] if k.startswith("pod-security")]


def write_values(tmp_path: Path, values: dict[str, Any]) -> Path:
    """A values file of its own (renders are cached by file name)."""
    path = tmp_path / f"values-{len(list(tmp_path.iterdir()))}.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def test_mig_config_data_in_upstream_form_is_the_configmap_data(tmp_path: Path) -> None:
    layouts = "version: v1\nmig-configs:\n  all-disabled:\n  - devices: all\n    mig-enabled: false\n"
    config = {"create": True, "name": "custom-mig", "default": "all-disabled", "data": {"config.yaml": layouts}}
    docs = render(write_values(tmp_path, {"migManager": {"config": config}}))
    assert one(docs, "ConfigMap", "custom-mig")["data"] == {"config.yaml": layouts}, "not nested one level deeper"
    assert policy_spec(docs)["migManager"]["config"] == {"name": "custom-mig", "default": "all-disabled"}
    # Upstream: create with empty data makes no ConfigMap. A map without config.yaml is refused.
    empty = render(write_values(tmp_path, {"migManager": {"config": {**config, "data": {}}}}))
    assert not find(empty, "ConfigMap", "custom-mig")
    no_key = write_values(tmp_path, {"migManager": {"config": {**config, "data": {"other.yaml": "x"}}}})
    args = ["template", RELEASE, str(CHART), "--kube-version", KUBE_VERSION, "-f", str(no_key)]
    proc = helm(*args, check=False)
    assert proc.returncode != 0 and "migManager.config.data needs a key config.yaml" in proc.stderr


@pytest.mark.parametrize("sets", [["migManager.config.default="],
                                  ["migManager.config.default=", "migManager.config.name=custom-mig"]])
def test_an_empty_mig_manager_default_reaches_the_policy(sets: list[str]) -> None:
    """`migManager.config.default: ""` is upstream's "seed no nvidia.com/mig.config label" (its CRD enum
    `all-disabled;""`, its chart writes the value quoted). The chart's prune dropped it as it drops every "", so the
    operator seeded its default all-disabled on MIG-capable nodes, and mig-manager turned off MIG an admin had set
    up by other means. null is still left out (the operator's default: all-disabled while the ClusterPolicy has
    a migManager.config section, none without one, as upstream)."""
    spec = policy_spec(render(sets=sets))
    assert spec["migManager"]["config"]["default"] == ""
    assert parse_spec(spec).mig_manager.config.default == ""
    assert "default" not in policy_spec(render(sets=["migManager.config.default=null"]))["migManager"].get("config", {})
    assert policy_spec(render())["migManager"]["config"] == {"default": "all-disabled"}


def test_image_fields_without_a_version_reach_the_policy() -> None:
    # Upstream's chart leaves the validator's version empty (its own appVersion fills it in): another image
    # gets the operator's default version; upstream v26.7's own (our default) is left to the operator.
    old = ["validator.repository=nvcr.io/nvidia/cloud-native", "validator.image=gpu-operator-validator"]
    spec = policy_spec(render(sets=old))
    default_version = images.DEFAULTS["validator"][2]
    assert {k: spec["validator"][k] for k in ("repository", "image", "version")} == {
        "repository": "nvcr.io/nvidia/cloud-native", "image": "gpu-operator-validator",
        "version": default_version}  # fmt: skip
    own = policy_spec(render(sets=["validator.repository=nvcr.io/nvidia", "validator.image=gpu-operator"]))
    assert images.resolve(parse_spec(own).validator, "validator") == f"nvcr.io/nvidia/gpu-operator:{default_version}"
    # A mirror registry alone keeps the default image name and version.
    mirror = policy_spec(render(sets=["toolkit.repository=registry.local/nvidia/k8s"]))["toolkit"]
    repo, image, version = images.DEFAULTS["toolkit"]
    assert (mirror["repository"], mirror["image"], mirror["version"]) == ("registry.local/nvidia/k8s", image, version)
    manager = policy_spec(render(sets=["driver.manager.repository=registry.local/nvidia"]))["driver"]["manager"]
    assert manager["version"] == images.DEFAULTS["driver-manager"][2]
    # An explicit version is kept; the default repository and image with no version stay the operator's default.
    pinned = policy_spec(render(sets=["validator.repository=r.example.com", "validator.version=v1"]))["validator"]
    assert [pinned[k] for k in ("repository", "image", "version")] == ["r.example.com", "gpu-operator", "v1"]
    assert not {"repository", "image", "version"} & set(policy_spec(render())["validator"])


@pytest.mark.parametrize("sets", [
    [],
    ["validator.repository=registry.example.com/nvidia", "validator.image=gpu-operator-validator"],
    ["validator.repository=registry.example.com/nvidia", "validator.version=v26.7.1"],
    ["validator.repository=", "validator.image=registry.example.com/validator@sha256:" + "a" * 64],
    ["driver.manager.repository=registry.example.com/cloud-native"],
    # A full reference beside the default repository: the ClusterPolicy uses it verbatim, and so must the env (it
    # was nvcr.io/nvidia/registry.example.com/...:v26.7.0:v26.7.0, node-status-exporter's fallback).
    ["validator.image=registry.example.com/nvidia/gpu-operator:v26.7.0",
     "driver.manager.image=registry.example.com/nvidia/k8s-driver-manager:v0.12.0"],
], ids=["defaults", "mirror-and-image", "pinned-version", "verbatim-digest", "driver-manager-mirror",
        "full-reference-beside-the-default-repository"])  # fmt: skip
def test_validator_values_reach_the_operator_env_and_the_policy(sets: list[str]) -> None:
    """As upstream's chart: the operator gets VALIDATOR_IMAGE and DRIVER_MANAGER_IMAGE from the values, and they
    name the image the ClusterPolicy's validator (driver manager) resolves to, so both agree."""
    docs = render(sets=sets)
    env = {e["name"]: e.get("value") for e in operator_container(docs)["env"]}
    spec = parse_spec(policy_spec(docs))
    assert env["VALIDATOR_IMAGE"] == images.resolve(spec.validator, "validator")
    assert env["DRIVER_MANAGER_IMAGE"] == images.resolve(spec.driver.manager, "driver-manager")
    if sets and sets[0].startswith("validator.repository=registry"):
        assert env["VALIDATOR_IMAGE"].startswith("registry.example.com/nvidia/")
    if sets and sets[0].startswith("validator.image=registry"):
        assert env["VALIDATOR_IMAGE"] == "registry.example.com/nvidia/gpu-operator:v26.7.0"
        assert env["DRIVER_MANAGER_IMAGE"] == "registry.example.com/nvidia/k8s-driver-manager:v0.12.0"


def test_a_name_in_operator_env_replaces_the_charts_own_entry(tmp_path: Path) -> None:
    """The chart always wrote VALIDATOR_IMAGE and DRIVER_MANAGER_IMAGE (and POD_NAME, ...) before operator.env, so an
    admin setting VALIDATOR_IMAGE there, as the README says for a mirror, got that name twice in the container's env
    (the API server warns; a later strategic-merge patch of a list with a key twice can fail). Now operator.env's
    entry is the only one of its name."""
    mirror = "mirror.local/nvidia/gpu-operator:v1"
    given = [{"name": "VALIDATOR_IMAGE", "value": mirror}, {"name": "DEVICE_PLUGIN_IMAGE", "value": "m/dp:v1"},
             {"name": "PYTHONUNBUFFERED", "value": "0"}]  # fmt: skip
    env = operator_container(render(write_values(tmp_path, {"operator": {"env": given}})))["env"]
    names = [e["name"] for e in env]
    assert len(names) == len(set(names)), names
    values = {e["name"]: e.get("value") for e in env}
    assert values | {e["name"]: e["value"] for e in given} == values  # operator.env's values
    assert {"POD_NAME", "OPERATOR_NAMESPACE", "DRIVER_MANAGER_IMAGE", "PYTHONDONTWRITEBYTECODE"} <= set(names)


def test_deploy_cr_and_extra_objects(tmp_path: Path) -> None:
    assert not find(render(sets=["clusterPolicy.deployCR=false"]), "ClusterPolicy")
    extra = {"extraObjects": [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "extra-{{ .Release.Name }}"}},
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: extra-secret\n  namespace: {{ .Release.Namespace }}\n",
    ]}  # fmt: skip
    docs = render(write_values(tmp_path, extra))
    assert one(docs, "ConfigMap", f"extra-{RELEASE}") and one(docs, "Secret", "extra-secret")


def test_psa_namespace_label() -> None:
    docs = render(sets=["namespace.create=true", "psa.enabled=true"])
    ns = one(docs, "Namespace", NAMESPACE)
    for mode in ("enforce", "audit", "warn"):
        assert ns["metadata"]["labels"][f"pod-security.kubernetes.io/{mode}"] == "privileged"
    assert policy_spec(docs)["psa"] == {"enabled": True}
    assert not find(render(), "Namespace"), "with helm install the namespace comes from --create-namespace"


# --- the operator Deployment ---


def operator_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    pod = one(docs, "Deployment", "gpu-operator")["spec"]["template"]["spec"]
    assert len(pod["containers"]) == 1
    container: dict[str, Any] = pod["containers"][0]
    return container


def assert_locked_down(pod: dict[str, Any]) -> None:
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    for c in pod["containers"]:
        sc = c["securityContext"]
        assert sc["runAsNonRoot"] is True
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert not sc.get("privileged")


@pytest.mark.parametrize("namespace", [NAMESPACE, "gpu-system"])
def test_operator_deployment(namespace: str) -> None:
    docs = render(namespace=namespace)
    deploy = one(docs, "Deployment", "gpu-operator")
    assert deploy["spec"]["replicas"] == 1
    # Leader election is on: the new pod waits as a follower until the old one releases the Lease.
    rolling = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    assert deploy["spec"]["strategy"] == rolling
    pod = deploy["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "gpu-operator"
    assert_locked_down(pod)
    # A driver upgrade's drain passes over the operator's own pod (as upstream's chart has it).
    assert deploy["spec"]["template"]["metadata"]["labels"][DRAIN_SKIP_LABEL] == "true"
    assert deploy["metadata"]["labels"][DRAIN_SKIP_LABEL] == "true"
    # Linux nodes only, as upstream's default operator.nodeSelector (the image is Linux-only).
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    c = operator_container(docs)
    assert c["image"] == "gpu-operator:0.1.0"
    assert c["args"][:3] == ["run", "--namespace", namespace] and c["args"][-1] == "--leader-elect"
    args = dict(zip(c["args"][3:-1:2], c["args"][4:-1:2], strict=True))
    assert args == {"--metrics-port": "8080", "--health-port": "8081"}
    assert {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}} in c["env"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"metrics": 8080, "health": 8081}
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "health"}, probe
    assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
    # The read-only root filesystem gets a writable /tmp.
    assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]


def test_operator_replicas_with_a_pdb_and_anti_affinity() -> None:
    assert not find(render(), "PodDisruptionBudget")
    assert "podAntiAffinity" not in one(render(), "Deployment", "gpu-operator")["spec"]["template"]["spec"]["affinity"]
    docs = render(sets=["operator.replicas=2"])
    deploy = one(docs, "Deployment", "gpu-operator")
    assert deploy["spec"]["replicas"] == 2
    selector = deploy["spec"]["selector"]["matchLabels"]
    pdb = one(docs, "PodDisruptionBudget", "gpu-operator")
    assert pdb["metadata"]["namespace"] == NAMESPACE
    assert pdb["spec"] == {"minAvailable": 1, "selector": {"matchLabels": selector}}
    affinity = deploy["spec"]["template"]["spec"]["affinity"]
    assert affinity["podAntiAffinity"] == {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 100, "podAffinityTerm": {"topologyKey": "kubernetes.io/hostname",
                                            "labelSelector": {"matchLabels": selector}}}]}  # fmt: skip
    assert "nodeAffinity" in affinity, "the values' affinity stays"
    for job in ("gpu-operator-upgrade-crd",):
        pod = one(docs, "Job", job)["spec"]["template"]["spec"]
        assert "podAntiAffinity" not in pod.get("affinity", {}), "hook Jobs are not spread"
    # The user's own podAntiAffinity wins.
    own = render(sets=["operator.replicas=3", "operator.affinity.podAntiAffinity.x=1"])
    assert one(own, "Deployment", "gpu-operator")["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"] == {"x": 1}


def test_operator_without_leader_election_is_recreated() -> None:
    docs = render(sets=["operator.leaderElection.enabled=false"])
    deploy = one(docs, "Deployment", "gpu-operator")
    assert deploy["spec"]["strategy"] == {"type": "Recreate"}, "two unelected replicas must never run at once"
    assert "--leader-elect" not in operator_container(docs)["args"]


def test_several_replicas_without_leader_election_are_refused() -> None:
    """Without --leader-elect every replica leads (and exports gpu_operator_leader 1), so two replicas were two
    operators writing the same DaemonSets, node labels and upgrade states, and every alert fired once per replica;
    Recreate keeps only a rollout's old and new pods apart. `operator.replicas=2` with leader election off rendered."""
    args = ["template", RELEASE, str(CHART), "--kube-version", KUBE_VERSION,
            "--set", "operator.replicas=2", "--set", "operator.leaderElection.enabled=false"]  # fmt: skip
    proc = helm(*args, check=False)
    assert proc.returncode != 0 and "operator.replicas > 1 needs operator.leaderElection.enabled" in proc.stderr


def test_operator_may_hold_its_lease() -> None:
    rules = one(render(), "Role", "gpu-operator")["rules"]
    lease = {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "update"]}
    assert lease in rules


def test_operator_image_and_extra_args() -> None:
    docs = render(sets=["operator.repository=registry.example.com/gpu", "operator.version=1.2.3",
                        "operator.args={--verbose}", "operator.metrics.port=9090"])  # fmt: skip
    c = operator_container(docs)
    assert c["image"] == "registry.example.com/gpu/gpu-operator:1.2.3"
    assert c["args"][-1] == "--verbose"
    assert c["args"][c["args"].index("--metrics-port") + 1] == "9090"
    assert one(docs, "Service", "gpu-operator-metrics")["spec"]["ports"][0]["port"] == 9090


def test_operator_metrics_port_reaches_the_operators_own_service() -> None:
    """operator.metrics.port is the operator's --metrics-port, and the Service the operator makes for itself (the
    one its ServiceMonitor selects) targets that port."""
    docs = render(sets=["operator.metrics.port=9090", "operator.metrics.serviceMonitor.enabled=true"])
    c = operator_container(docs)
    port = int(c["args"][c["args"].index("--metrics-port") + 1])
    assert {p["name"]: p["containerPort"] for p in c["ports"]}["metrics"] == port == 9090
    ctx = RenderContext(spec=parse_spec(policy_spec(docs)), namespace=NAMESPACE, owner=OWNER,
                        api_groups=frozenset({"monitoring.coreos.com"}), metrics_port=port)  # fmt: skip
    state = next(p for p in plan(ctx) if p.state.name == "state-operator-metrics")
    service = one(state.objects, "Service", "gpu-operator")
    monitor = one(state.objects, "ServiceMonitor", "gpu-operator")
    assert [p["targetPort"] for p in service["spec"]["ports"]] == [port]
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == [p["name"] for p in service["spec"]["ports"]]



def test_metrics_port_zero_turns_the_metrics_off_with_objects_the_api_server_accepts() -> None:
    """operator.metrics.port is --metrics-port, and 0 turns the metrics off (README). It rendered the container port
    `metrics` as containerPort 0 and the Service gpu-operator-metrics with port 0, which the API server refuses (a
    port is 1-65535): `helm install` failed instead of running the operator without metrics. Now neither is there."""
    docs = render(sets=["operator.metrics.port=0"])
    c = operator_container(docs)
    assert c["args"][c["args"].index("--metrics-port") + 1] == "0"
    assert [p["name"] for p in c["ports"]] == ["health"]
    assert [s["metadata"]["name"] for s in find(docs, "Service")] == []

def operator_metrics_service() -> dict[str, Any]:
    """The Service the operator itself creates for its metrics (state-operator-metrics)."""
    ctx = RenderContext(spec=parse_spec({}), namespace=NAMESPACE, owner=OWNER)
    state = next(p for p in plan(ctx) if p.state.name == "state-operator-metrics")
    service: dict[str, Any] = next(o for o in state.objects if o["kind"] == "Service")
    return service


def test_metrics_services_select_the_operator_pod() -> None:
    docs = render()
    pod_labels = one(docs, "Deployment", "gpu-operator")["spec"]["template"]["metadata"]["labels"]
    ours = operator_metrics_service()
    assert ours["spec"]["selector"].items() <= pod_labels.items(), "the operator's own Service must find its pod"
    chart = one(docs, "Service", "gpu-operator-metrics")
    assert chart["spec"]["selector"].items() <= pod_labels.items()
    assert chart["metadata"]["name"] != ours["metadata"]["name"], "must not collide with the operator's Service"
    # The operator's ServiceMonitor selects Services by `app: gpu-operator`: the chart's must not match it,
    # or Prometheus would scrape the operator twice.
    assert "app" not in chart["metadata"]["labels"]
    assert chart["spec"]["ports"] == [{"name": "metrics", "port": 8080, "targetPort": "metrics", "protocol": "TCP"}]
    assert not find(render(sets=["operator.metrics.service.enabled=false"]), "Service")


@pytest.mark.parametrize("job", ["gpu-operator-upgrade-crd", "gpu-operator-cleanup"])
def test_hook_jobs_are_locked_down(job: str) -> None:
    doc = one(render(), "Job", job)
    pod = doc["spec"]["template"]["spec"]
    assert_locked_down(pod)
    assert pod["serviceAccountName"] == job, "each hook has its own identity"
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}, "as the operator pod: a hook stuck elsewhere blocks"
    assert doc["metadata"]["annotations"]["helm.sh/hook-delete-policy"] == "before-hook-creation,hook-succeeded"
    assert pod["containers"][0]["image"] == "gpu-operator:0.1.0"


def test_upgrade_hook_applies_the_crds() -> None:
    """The hook ran on pre-upgrade only, as upstream's, so `helm install` after `helm uninstall` (which keeps the
    CRDs, and Helm installs crds/ only where they are missing) ran the new chart against the old CRD schemas; it
    runs on pre-install too now, but not with namespace.create (the chart's Namespace comes after the hooks)."""
    docs = render()
    hooks = [d for d in docs if hook(d)]
    assert {hook(d) for d in hooks} == {"pre-install,pre-upgrade", "pre-delete"}
    job = one(docs, "Job", "gpu-operator-upgrade-crd")
    assert hook(job) == "pre-install,pre-upgrade"
    c = job["spec"]["template"]["spec"]["containers"][0]
    assert c["command"] + c["args"] == ["gpu-operator", "crds", "--apply"]
    # Its RBAC is created before the Job (lower weight) and deleted with it.
    for kind in ("ServiceAccount", "ClusterRole", "ClusterRoleBinding"):
        obj = one(docs, kind, "gpu-operator-upgrade-crd")
        assert hook(obj) == hook(job)
        assert int(obj["metadata"]["annotations"]["helm.sh/hook-weight"]) < int(
            job["metadata"]["annotations"]["helm.sh/hook-weight"]
        )
    off = render(sets=["operator.upgradeCRD=false"])
    assert not [d for d in off if hook_events(d) & {"pre-install", "pre-upgrade"}]
    with_namespace = render(sets=["namespace.create=true"])
    assert {hook(d) for d in with_namespace if hook(d)} == {"pre-upgrade", "pre-delete"}


def test_cleanup_hook_runs_the_shipped_script() -> None:
    docs = render()
    job = one(docs, "Job", "gpu-operator-cleanup")
    assert hook(job) == "pre-delete"
    c = job["spec"]["template"]["spec"]["containers"][0]
    assert c["command"] == ["python", "/hook/cleanup.py"]
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["CLUSTERPOLICIES"] == "cluster-policy" and env["DELETE_CRDS"] == ""
    assert env["OPERATOR"] == f"{NAMESPACE}/{one(docs, 'Deployment', 'gpu-operator')['metadata']['name']}"
    cm = one(docs, "ConfigMap", "gpu-operator-cleanup")
    assert cm["data"]["cleanup.py"] == (CHART / "files" / "cleanup.py").read_text()


# --- RBAC ---

Atom = tuple[str, str, str, str]  # (apiGroup, resource, verb, resourceName: "" for any)

# The operator's own API calls (operator/gpu_operator/{runtime,reconciler,kube}.py, kopf), by scope.
REQUIRED_CLUSTER: dict[tuple[str, str], set[str]] = {
    ("", "nodes"): {"get", "list", "watch", "patch"},
    ("", "pods"): {"get", "list", "watch"},  # GPU pods on any node: read, evicted (never deleted) in upgrades
    ("", "pods/eviction"): {"create"},
    ("", "namespaces"): {"get", "list", "watch", "create", "patch"},
    ("apiextensions.k8s.io", "customresourcedefinitions"): {"get", "list", "watch"},
    ("", "events"): {"create", "patch"},  # patch: a recurring Event's count (events.py)
    ("nvidia.com", "clusterpolicies"): {"get", "list", "watch", "patch", "update"},
    ("nvidia.com", "clusterpolicies/status"): {"get", "patch", "update"},
    ("nvidia.com", "nvidiadrivers"): {"get", "list", "watch"},
    ("nvidia.com", "nvidiadrivers/status"): {"get", "patch", "update"},
    ("nvidia.com", "nvidiadrivers/finalizers"): {"update"},  # driver DaemonSets owned with blockOwnerDeletion
    ("nfd.k8s-sigs.io", "nodefeatures"): {"list", "watch"},  # PCI device IDs of GPUs no label identifies yet
}
# The operator's writes (NAMED_VERBS) that name their object: its own namespace, the operand ClusterRoles/Bindings.
NAMED: dict[tuple[str, str], tuple[str, ...]] = {("", "namespaces"): (NAMESPACE,), **operand_names()}
# The objects the states render, from the registry of kinds: namespaced ones in the operand namespace.
REQUIRED_CLUSTER.update({res: set(verbs) for res, (namespaced, verbs) in operand_rbac().items() if not namespaced})
REQUIRED_NAMESPACED: dict[tuple[str, str], set[str]] = {
    ("apps", "controllerrevisions"): {"get", "list", "watch"},
    ("coordination.k8s.io", "leases"): {"get", "create", "update"},  # the leader Lease
    ("", "secrets"): {"get"},  # a driver.secretEnv Secret, by name
    ("", "pods"): {"delete"},  # a driver pod, in the OnDelete rollout of a driver upgrade
    **{res: set(verbs) for res, (namespaced, verbs) in operand_rbac().items() if namespaced},
}


def atoms(rules: Iterable[dict[str, Any]]) -> set[Atom]:
    out = set()
    for rule in rules:
        assert not rule.get("nonResourceURLs"), rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    out |= {(group, resource, verb, name) for name in rule.get("resourceNames") or [""]}
    return out


def required(table: dict[tuple[str, str], set[str]]) -> set[Atom]:
    """The atoms of the operator's calls: a write of NAMED once per name it makes."""
    return {(g, r, v, n) for (g, r), verbs in table.items() for v in verbs
            for n in (NAMED.get((g, r), ("",)) if v in NAMED_VERBS else ("",))}  # fmt: skip


def missing(wanted: set[Atom], held: set[Atom]) -> list[Atom]:
    """The atoms of `wanted` no atom of `held` grants (one for any name grants each name)."""
    return sorted(a for a in wanted if a not in held and (*a[:3], "") not in held)


@functools.cache
def operand_rules() -> tuple[tuple[str, str, set[Atom]], ...]:
    """(kind, name, atoms) of every Role/ClusterRole the operator creates, with every state enabled (and the
    exporter's pod labels, for its read-pods ClusterRole)."""
    everything = parse_spec({
        "dcgm": {"enabled": True},
        "nodeStatusExporter": {"enabled": True},
        "cdi": {"enabled": True},
        "devicePlugin": {"config": {"name": "cfg", "default": "any"}},
        "operator": {"metrics": {"serviceMonitor": {"enabled": True}}},
        "dcgmExporter": {"serviceMonitor": {"enabled": True}, "enablePodLabels": True},
    })  # fmt: skip
    out = []
    seen_states = set()
    config_maps: dict[str, tuple[str, ...]] = {"cfg": ("any",)}  # it exists: the states mounting it are rendered
    for spec in (everything, parse_spec({})):
        for state_plan in render_all(spec, fixed_nodes(), frozenset({"monitoring.coreos.com"}), config_maps):
            if state_plan.enabled:
                seen_states.add(state_plan.state.name)
            for obj in state_plan.objects:
                if obj["kind"] in ("Role", "ClusterRole"):
                    out.append((obj["kind"], obj["metadata"]["name"], atoms(obj["rules"])))
    disabled = {p.state.name for p in render_all(everything, fixed_nodes(), config_maps=config_maps)} - seen_states
    assert disabled == set(), f"states never enabled here, their rules would go unchecked: {disabled}"
    return tuple(out)


def chart_rbac(docs: list[dict[str, Any]]) -> tuple[set[Atom], set[Atom]]:
    """(cluster-wide, release-namespace) atoms granted to ServiceAccount gpu-operator by the chart."""
    cluster: set[Atom] = set()
    namespaced: set[Atom] = set()
    for binding in find(docs, "ClusterRoleBinding") + find(docs, "RoleBinding"):
        subjects = binding["subjects"]
        if not any(s["kind"] == "ServiceAccount" and s["name"] == "gpu-operator" for s in subjects):
            continue
        assert subjects == [{"kind": "ServiceAccount", "name": "gpu-operator", "namespace": NAMESPACE}]
        role = one(docs, binding["roleRef"]["kind"], binding["roleRef"]["name"])
        if binding["kind"] == "ClusterRoleBinding":
            cluster |= atoms(role["rules"])
        else:
            assert binding["metadata"]["namespace"] == role["metadata"]["namespace"] == NAMESPACE
            namespaced |= atoms(role["rules"])
    return cluster, namespaced


def test_operand_roles_were_found() -> None:
    names = {(kind, name) for kind, name, _ in operand_rules()}
    assert len(names) >= 8, names
    assert ("ClusterRole", "nvidia-driver") in names and ("Role", "nvidia-operator-validator") in names


def test_operator_rbac_covers_every_operand_rule() -> None:
    """RBAC escalation check: the operator may only create Roles/ClusterRoles granting what it holds itself."""
    cluster, namespaced = chart_rbac(render())
    lacking = []
    for kind, name, rules in operand_rules():
        held = cluster if kind == "ClusterRole" else cluster | namespaced  # operand Roles live in the namespace
        lacking += [f"{kind} {name}: {a}" for a in missing(rules, held)]
    assert lacking == [], "the chart's operator RBAC must hold every operand rule:\n" + "\n".join(lacking)


def test_operator_rbac_covers_its_own_calls() -> None:
    cluster, namespaced = chart_rbac(render())
    assert missing(required(REQUIRED_CLUSTER), cluster) == []
    assert missing(required(REQUIRED_NAMESPACED), cluster | namespaced) == []


def test_operator_may_patch_only_its_own_namespace_and_operand_clusterroles() -> None:
    """psa.enabled's labels go on the release namespace, and the operator writes only the operand ClusterRoles and
    bindings: no other namespace may be labelled privileged, no other ClusterRole (cluster-admin) changed."""
    for namespace in (NAMESPACE, "gpu-system"):
        rules = one(render(namespace=namespace), "ClusterRole", "gpu-operator")["rules"]
        named = [r for r in rules if "namespaces" in r["resources"] and "patch" in r["verbs"]]
        assert [r.get("resourceNames") for r in named] == [[namespace]], named
        writes = [r for r in rules if {"clusterroles", "clusterrolebindings"} & set(r["resources"])
                  and set(NAMED_VERBS) & set(r["verbs"])]  # fmt: skip
        assert [(sorted(r["verbs"]), r.get("resourceNames")) for r in writes] == [
            (sorted(NAMED_VERBS), list(operand_names()[("rbac.authorization.k8s.io", "clusterroles")]))]


def test_operator_rbac_is_least_privilege() -> None:
    """Nothing beyond the operator's own calls and the operand rules; namespaced rights only where needed."""
    cluster, namespaced = chart_rbac(render())
    operand_cluster = set().union(*(r for kind, _, r in operand_rules() if kind == "ClusterRole"))
    operand_namespaced = set().union(*(r for kind, _, r in operand_rules() if kind == "Role"))
    want_cluster = required(REQUIRED_CLUSTER) | operand_cluster
    # The operator's own namespaced calls stay in its Role even where an operand ClusterRole needs one cluster-wide
    # (the driver manager's `get` on DaemonSets).
    want_namespaced = required(REQUIRED_NAMESPACED) | (operand_namespaced - want_cluster)
    assert sorted(cluster - want_cluster) == [], "cluster-wide rights nobody needs"
    assert sorted(namespaced - want_namespaced) == [], "namespaced rights nobody needs (or already cluster-wide)"
    namespaced_only = {r for _, r, _, _ in required(REQUIRED_NAMESPACED)}
    assert not {a for a in cluster - operand_cluster if a[1] in namespaced_only}, (
        "operand objects: only in the operand namespace"
    )


@pytest.mark.parametrize("values", CI_VALUES, ids=map(values_id, CI_VALUES))
def test_no_wildcards_and_no_escalation_verbs(values: Path) -> None:
    docs = render(values, sets=["operator.cleanupCRD=true"])
    roles = find(docs, "ClusterRole") + find(docs, "Role")
    assert roles
    for role in roles:
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs", "resourceNames"):
                assert not any("*" in item for item in rule.get(field, [])), f"{role['metadata']['name']}: {rule}"
            assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"])


def test_doctor_rbac_reads_what_doctor_reads() -> None:
    """doctor's snapshot is the operator's (observe.observe), NFD's NodeFeatures included: with a 403 there doctor
    would quietly see GPUs other than the operator sees. Read-only, and nothing is granted by default."""
    docs = render()
    role = one(docs, "ClusterRole", "gpu-operator-doctor")
    granted = {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]
               for v in rule["verbs"]}  # fmt: skip
    assert ("nfd.k8s-sigs.io", "nodefeatures", "list") in granted
    assert {("nvidia.com", "clusterpolicies", "list"), ("", "nodes", "list"), ("", "pods", "list")} <= granted
    assert ("apps", "replicasets", "get") in granted  # a refused rollout's revisions (doctor.workloads)
    # whether a refused controller still exists (its FailedCreate event outlives it)
    assert {("apps", "statefulsets", "get"), ("apps", "daemonsets", "get"), ("batch", "jobs", "get")} <= granted
    rules = role["rules"] + one(docs, "Role", "gpu-operator-doctor")["rules"]
    assert {v for rule in rules for v in rule["verbs"]} <= {"get", "list", "watch"}
    assert not find(docs, "ClusterRoleBinding", "gpu-operator-doctor"), "doctor.subjects is empty by default"


def crd_names() -> list[str]:
    files = sorted((CHART / "crds").glob("*.yaml"))
    return [d["metadata"]["name"] for f in files for d in yaml.safe_load_all(f.read_text()) if d]


def test_hook_rbac_is_limited_to_the_crds() -> None:
    docs = render(sets=["operator.cleanupCRD=true"])
    upgrade = one(docs, "ClusterRole", "gpu-operator-upgrade-crd")["rules"]
    assert upgrade == [{
        "apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"],
        "verbs": ["get", "create", "patch"], "resourceNames": crd_names(),
    }]  # fmt: skip
    cleanup = one(docs, "ClusterRole", "gpu-operator-cleanup")["rules"]
    assert cleanup == [
        {"apiGroups": ["nvidia.com"], "resources": ["clusterpolicies"], "verbs": ["get", "list", "delete", "patch"]},
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["list", "patch"]},  # the MIG gate's cordon lifted
        {"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"], "verbs": ["delete"],
         "resourceNames": crd_names()},
    ]  # fmt: skip
    for name in ("gpu-operator-upgrade-crd", "gpu-operator-cleanup"):
        binding = one(docs, "ClusterRoleBinding", name)
        assert binding["roleRef"]["name"] == name
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": name, "namespace": NAMESPACE}]
    no_crd_delete = one(render(), "ClusterRole", "gpu-operator-cleanup")["rules"]
    assert [r["resources"] for r in no_crd_delete] == [["clusterpolicies"], ["nodes"]]
    # In the release namespace: scale the operator to 0 and see its pods go (before it takes off its finalizer).
    assert one(docs, "Role", "gpu-operator-cleanup")["rules"] == [
        {"apiGroups": ["apps"], "resources": ["deployments/scale"], "verbs": ["patch"],
         "resourceNames": ["gpu-operator"]},
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]},
    ]  # fmt: skip
    binding = one(docs, "RoleBinding", "gpu-operator-cleanup")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": "gpu-operator-cleanup"}  # fmt: skip
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "gpu-operator-cleanup", "namespace": NAMESPACE}]


# --- generated files ---


def test_generated_files_are_up_to_date() -> None:
    proc = subprocess.run(
        [sys.executable, str(GENERATOR), "--check"], capture_output=True, text=True, timeout=120, cwd=REPO,
        env={**os.environ, "HELM": helm_binary()},
    )  # fmt: skip
    assert proc.returncode == 0, f"{proc.stderr.strip()}\n{REGENERATE}"


def test_plain_manifest() -> None:
    docs = [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]
    kinds = [d["kind"] for d in docs]
    assert kinds[0] == "Namespace" and docs[0]["metadata"]["name"] == NAMESPACE
    assert kinds[1] == "CustomResourceDefinition"
    assert set(kinds) == {"Namespace", "CustomResourceDefinition", "ServiceAccount", "ClusterRole",
                          "ClusterRoleBinding", "Role", "RoleBinding", "Service", "Deployment"}  # fmt: skip
    assert not [d for d in docs if hook(d)], "no hook objects in a plain install"
    helm_docs = [d for d in render() if not hook(d) and d["kind"] != "ClusterPolicy"]
    for _, node in walk(helm_docs):  # the same objects as `helm install`, less Helm's bookkeeping labels
        if isinstance(node, dict) and isinstance(node.get("labels"), dict):
            assert node["labels"].pop("app.kubernetes.io/managed-by") == "Helm"
            assert node["labels"].pop("helm.sh/chart") == f"gpu-operator-{CHART_VERSION}"
    plain_docs = [d for d in docs[1:] if d["kind"] != "CustomResourceDefinition"]
    assert sorted(helm_docs, key=str) == sorted(plain_docs, key=str)
    crd = one(docs, "CustomResourceDefinition", "clusterpolicies.nvidia.com")
    assert crd == yaml.safe_load((REPO / "crds" / "nvidia.com_clusterpolicies.yaml").read_text())


# --- the image ---


def test_dockerfile_matches_the_chart() -> None:
    """The image cannot be built here (no Docker engine); check what the chart relies on."""
    lines = [line.split("#")[0].strip() for line in (REPO / "Dockerfile").read_text().splitlines()]
    instructions = [line for line in lines if line]
    assert [i for i in instructions if i.startswith("FROM")][-1] == "FROM python:3.11-slim"
    user = [i for i in instructions if i.startswith("USER ")][-1].split()[1]
    uid, _, gid = user.partition(":")
    pod = one(render(), "Deployment", "gpu-operator")["spec"]["template"]["spec"]
    assert (int(uid), int(gid)) == (pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"])
    assert 'ENTRYPOINT ["gpu-operator"]' in instructions
    installs = [i for i in instructions if "pip " in i]
    assert installs and not any("[dev]" in i or "-e " in i for i in installs), "the package only, no dev extras"
    ignored = [line for line in (REPO / ".dockerignore").read_text().splitlines() if not line.startswith("#")]
    assert ignored[0] == "*" and {"!pyproject.toml", "!README.md", "!operator/"} <= set(ignored)


# --- upstream's values through this chart: nothing silently ignored ---

UPSTREAM_VALUES = REPO / "tests" / "fixtures" / "upstream" / "values.yaml"
# ClusterPolicy sections of upstream's values (operator: only these keys reach the ClusterPolicy).
OPERATOR_POLICY_KEYS = ("runtimeClass", "defaultRuntime", "use_ocp_driver_toolkit", "metrics.serviceMonitor")
# Upstream values the chart turns into another ClusterPolicy field, or into a ConfigMap of its own.
TRANSLATED = {
    "driver.upgradePolicy.gpuPodDeletion.": "driver.upgradePolicy.podDeletion.",
    "driver.nvidiaDriverCRD.enabled": "driver.useNvidiaDriverCRD",
}
MADE_INTO_CONFIGMAPS = ("devicePlugin.config.create", "devicePlugin.config.data", "migManager.config.create",
                        "migManager.config.data", "dcgmExporter.config.create", "dcgmExporter.config.data")  # fmt: skip
# Left to the operator's default on purpose: an image name with neither repository nor version (upstream would use
# `vgpu-manager` verbatim, which names no registry; the operand is off by default).
LEFT_TO_THE_OPERATOR = {"vgpuManager.image"}
# Upstream values that do nothing at upstream's default settings: path prefix -> (the switch, its inert value).
INERT = {
    "platform.openshift": ("platform.openshift", False),
    "nfd.nodefeaturerules": ("nfd.nodefeaturerules", False),
    "gpuCluster.": ("gpuCluster.deployCR", False),
    "draDriver.": ("gpuCluster.deployCR", False),  # the GPUCluster (DRA) stack's driver
    "driver.nvidiaDriverCRD.": ("driver.nvidiaDriverCRD.enabled", False),  # settings of the NVIDIADriver CR
}


def leaves(node: Any, keys: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """(keys, value) of every non-empty leaf; lists are leaves."""
    if isinstance(node, dict) and node:
        for key, value in node.items():
            yield from leaves(value, (*keys, key))
    elif node not in (None, "", [], {}):
        yield keys, node


def dig(node: Any, keys: tuple[str, ...]) -> Any:
    for key in keys:
        if not isinstance(node, dict) or key not in node:
            return KeyError(".".join(keys))
        node = node[key]
    return node


def ignored_chart_values(values: Path) -> list[str]:
    """What the install notes name as ignored (the chart's gpu-operator.ignoredValues), rendered through a copy of
    the chart with one extra template, since `helm template` does not render NOTES.txt."""
    with tempfile.TemporaryDirectory() as tmp:
        chart = Path(tmp) / "gpu-operator"
        shutil.copytree(CHART, chart)
        (chart / "templates" / "zz-ignored.yaml").write_text(
            'apiVersion: v1\nkind: ConfigMap\nmetadata: {name: ignored}\n'
            'data: {ignored: {{ include "gpu-operator.ignoredValues" . | quote }}}\n'
        )
        out = helm("template", RELEASE, str(chart), "--kube-version", KUBE_VERSION, "-f", str(values),
                   "--show-only", "templates/zz-ignored.yaml").stdout  # fmt: skip
    found: list[str] = yaml.safe_load(yaml.safe_load(out)["data"]["ignored"])
    return found


def test_a_nodeselector_for_the_default_nvidiadriver_is_named_as_ignored(tmp_path: Path) -> None:
    """driver.nvidiaDriverCRD.nodeSelector (in upstream's values too) is read by no template: it rendered exactly as
    without it, without a word in the install notes."""
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({"driver": {"nvidiaDriverCRD": {"enabled": True, "nodeSelector": {"pool": "a"}}}}))
    assert [line.split(":", 1)[0] for line in ignored_chart_values(values)] == ["driver.nvidiaDriverCRD.nodeSelector"]
    values.write_text(yaml.safe_dump({"driver": {"nvidiaDriverCRD": {"enabled": True, "nodeSelector": {}}}}))
    assert ignored_chart_values(values) == []


DEFAULT_IMAGES: dict[str, dict[str, str]] = yaml.safe_load((CHART / "files" / "default-images.yaml").read_text())


def test_upstream_values_reach_the_policy_or_are_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    upstream = yaml.safe_load(UPSTREAM_VALUES.read_text())
    ours = yaml.safe_load((CHART / "values.yaml").read_text())
    docs = render(UPSTREAM_VALUES)
    spec = policy_spec(docs)
    sections = {f.alias or n for n, f in ClusterPolicySpec.model_fields.items()}
    ignored = ignored_chart_values(UPSTREAM_VALUES)
    named = {line.split(":", 1)[0] for line in ignored}
    dropped = []
    for keys, value in leaves(upstream):
        path = ".".join(keys)
        inert = next((switch for prefix, switch in INERT.items() if path.startswith(prefix)), None)
        if inert and dig(upstream, tuple(inert[0].split("."))) == inert[1]:
            continue
        policy_key = keys[0] in sections and (keys[0] != "operator" or path.startswith(
            tuple(f"operator.{k}" for k in OPERATOR_POLICY_KEYS)))  # fmt: skip
        if not policy_key:  # a chart value: ours has it (or the map holding it), or the notes name it
            honoured = any(not isinstance(dig(ours, keys[:i]), KeyError) for i in range(1, len(keys) + 1))
            if not honoured and not any(path.startswith(n) for n in named):
                dropped.append(f"{path} (chart value)")
            continue
        if path.startswith(MADE_INTO_CONFIGMAPS) or path in LEFT_TO_THE_OPERATOR:
            continue
        default = DEFAULT_IMAGES.get(".".join(keys[:-1]), {})
        if keys[-1] in ("repository", "image") and default.get(keys[-1]) == value:
            continue  # the operator's own default image: left to the operator, same reference
        target = next((path.replace(a, b, 1) for a, b in TRANSLATED.items() if path.startswith(a)), path)
        if dig(spec, tuple(target.split("."))) != value:
            dropped.append(f"{path} -> spec.{target}: {dig(spec, tuple(target.split('.')))!r} != {value!r}")
    assert dropped == [], "upstream values dropped without a word:\n" + "\n".join(dropped)
    assert ignored == [
        "node-feature-discovery: NFD is not vendored; configure it in NFD's own chart",
        "operator.repository/image: upstream's operator image (nvcr.io/nvidia/gpu-operator) is not this operator; "
        "the chart's own image is used",
        "operator.logging: the operator logs at INFO level in its own format",
    ]
    # Our model parses the policy; `render` names exactly the fields the coverage table names, nothing else.
    parsed = parse_spec(spec)
    assert unknown_fields(parsed) == []
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(yaml.safe_dump(one(docs, "ClusterPolicy", "cluster-policy")))
    assert cli_main(["render", "--policy", str(policy_file)]) == 0
    warned = [line.split(": ", 2)[1] for line in capsys.readouterr().err.splitlines()]
    reported = coverage.unsupported_fields(parsed)
    assert warned == [f"spec.{path}" for path, _ in reported]
    # Every field upstream's own values set takes effect here: nothing to report.
    assert reported == []
    for path in set(coverage.set_fields(parsed)) - {p for p, _ in reported}:
        rule = coverage.rule_for(path)  # a listed field set here is one whose component is off
        switch = (*path.split(".")[:-1], "enabled")
        assert rule is None or rule.when is not None or dig(spec, switch) is False, path


def pod_images(docs: list[dict[str, Any]], kind: str, name: str) -> list[str]:
    spec = one(docs, kind, name)["spec"]["template"]["spec"]
    return [c["image"] for c in spec.get("initContainers", []) + spec["containers"]]


@pytest.mark.parametrize("sets", [[], ["operator.version=v26.7.0"]], ids=["verbatim", "version-pinned"])
def test_an_upstream_values_file_runs_the_charts_own_operator_image(sets: list[str]) -> None:
    """Upstream's values.yaml names its own Go operator (operator.repository nvcr.io/nvidia, operator.image
    gpu-operator), which our chart took as its image: an upstream values file ran the operator Deployment and both
    hook Jobs on nvcr.io/nvidia/gpu-operator:0.1.0, a tag that does not exist (`helm install` waited on its
    pre-install hook until --timeout), or, with upstream's version pinned, on NVIDIA's operator with our arguments.
    That pair now means the chart's own image, and the install notes say so; any other repository is a mirror."""
    docs = render(UPSTREAM_VALUES, sets=sets)
    ours = f"gpu-operator:{yaml.safe_load((CHART / 'Chart.yaml').read_text())['appVersion']}"
    for kind, name in (("Deployment", "gpu-operator"), ("Job", "gpu-operator-upgrade-crd"),
                       ("Job", "gpu-operator-cleanup")):  # fmt: skip
        assert pod_images(docs, kind, name) == [ours], (kind, name)
    mirror = render(UPSTREAM_VALUES, sets=[*sets, "operator.repository=mirror.example.com/nvidia"])
    assert operator_container(mirror)["image"].startswith("mirror.example.com/nvidia/gpu-operator:")


def test_dcgm_exporter_config_create_without_data_makes_no_configmap() -> None:
    """dcgmExporter.config.create with no data made an empty dcgm-metrics.csv ConfigMap (an exporter handed no
    metric; `helm install` refused when the admin had made that ConfigMap); upstream's dcgm_exporter_config.yaml
    makes it only with data, as ours does for migManager. The ClusterPolicy still names it."""
    docs = render(sets=["dcgmExporter.config.create=true", "dcgmExporter.config.name=custom-dcgm-metrics"])
    assert policy_spec(docs)["dcgmExporter"]["config"] == {"name": "custom-dcgm-metrics"}
    assert not [d for d in find(docs, "ConfigMap") if d["metadata"]["name"] == "custom-dcgm-metrics"]
    made = render(sets=["dcgmExporter.config.create=true", "dcgmExporter.config.name=custom-dcgm-metrics",
                        "dcgmExporter.config.data=DCGM_FI_DEV_GPU_UTIL\\, gauge\\, util"])  # fmt: skip
    assert one(made, "ConfigMap", "custom-dcgm-metrics")["data"]["dcgm-metrics.csv"].startswith("DCGM_FI_DEV_GPU_UTIL")


def test_operator_labels_are_on_every_chart_object() -> None:
    """operator.labels went on the operator pod only; upstream's gpu-operator.labels helper puts them on every object
    of the chart (a label-requiring admission policy, a `kubectl get -l` selector rely on that)."""
    docs = render(sets=["operator.labels.team=gpu-infra"])
    wanted = [("Deployment", "gpu-operator"), ("ServiceAccount", "gpu-operator"), ("ClusterRole", "gpu-operator"),
              ("ClusterRoleBinding", "gpu-operator"), ("Role", "gpu-operator"), ("RoleBinding", "gpu-operator"),
              ("ClusterPolicy", "cluster-policy")]  # fmt: skip
    for kind, name in wanted:
        assert one(docs, kind, name)["metadata"]["labels"]["team"] == "gpu-infra", (kind, name)
    pod = one(docs, "Deployment", "gpu-operator")["spec"]["template"]["metadata"]["labels"]
    assert pod["team"] == "gpu-infra" and pod["app"] == "gpu-operator"


def test_empty_label_and_annotation_values_reach_the_policy() -> None:
    """A label or annotation with an empty value is valid (marker labels), and daemonsets.labels/annotations go on
    every operand DaemonSet (REFERENCE §1; upstream's chart copies the maps with toYaml). The chart's prune of empty
    values (meant for image fields left to the operator) dropped such entries, and a `repository` or `image` key,
    from these maps (and from the default NVIDIADriver's), so the operand pods lacked a label a policy relied on."""
    sets = ["daemonsets.labels.example\\.com/gpu-operand=", "daemonsets.labels.team=a",
            "daemonsets.labels.repository=infra", "daemonsets.annotations.example\\.com/marker=",
            "dcgmExporter.serviceMonitor.additionalLabels.release="]  # fmt: skip
    labels = {"example.com/gpu-operand": "", "team": "a", "repository": "infra"}
    spec = policy_spec(render(sets=sets))
    assert spec["daemonsets"]["labels"] == labels
    assert spec["daemonsets"]["annotations"] == {"example.com/marker": ""}
    assert spec["dcgmExporter"]["serviceMonitor"]["additionalLabels"] == {"release": ""}
    assert parse_spec(spec).daemonsets.labels == labels
    nvd = one(render(sets=[*sets, "driver.nvidiaDriverCRD.enabled=true"]), "NVIDIADriver", "default")
    assert nvd["spec"]["labels"] == labels
    assert "labels" not in policy_spec(render())["daemonsets"]  # an empty map is still left out


def test_precompiled_driver_with_a_mirror_repository_gets_no_full_version_filled_in() -> None:
    """Precompiled images are published per branch, so there is no default version: without one the driver is not
    rendered and the status says so (README). With a mirror repository the chart filled in the default full version
    (595.91.07), so every GPU node pulled mirror/driver:595.91.07-<kernel>-<os>, a tag never published, instead."""
    from gpu_operator.nvidiadriver import NVIDIADriver

    mirror = ["driver.usePrecompiled=true", "driver.repository=mirror.local/nvidia"]
    for sets in (mirror[:1], mirror):
        spec = parse_spec(policy_spec(render(sets=sets)))
        assert not spec.driver.version, (sets, spec.driver.version)
        driver_plan = next(p for p in render_all(spec, fixed_nodes()) if p.state.name == "state-driver")
        assert driver_plan.problem and "usePrecompiled needs a driver branch" in driver_plan.problem
    nvd = NVIDIADriver.from_object(one(render(sets=[*mirror, "driver.nvidiaDriverCRD.enabled=true"]),
                                       "NVIDIADriver", "default"))  # fmt: skip
    assert nvd.spec is not None and not nvd.spec.version
    # A branch given: the mirror is kept.
    pinned = policy_spec(render(sets=[*mirror, "driver.version=580"]))["driver"]
    assert (pinned["repository"], pinned["image"], pinned["version"]) == ("mirror.local/nvidia", "driver", "580")


def crd_type_errors(value: Any, schema: dict[str, Any], path: str = "spec") -> list[str]:
    """What the API server's structural validation refuses for type: a value whose JSON type is not the schema's."""
    if schema.get("x-kubernetes-int-or-string") or schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    want = str(schema.get("type", ""))
    ok = {
        "boolean": isinstance(value, bool),
        "integer": isinstance(value, int) and not isinstance(value, bool),
        "string": isinstance(value, str),
        "object": isinstance(value, dict),
        "array": isinstance(value, list),
    }.get(want, True)
    if not ok:
        return [f"{path}: {value!r} is not of type {want}"]
    errors: list[str] = []
    if isinstance(value, dict):
        for key, child in value.items():
            sub = (schema.get("properties") or {}).get(key) or schema.get("additionalProperties")
            if isinstance(sub, dict):
                errors += crd_type_errors(child, sub, f"{path}.{key}")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, child in enumerate(value):
            errors += crd_type_errors(child, schema["items"], f"{path}[{i}]")
    return errors


def crd_spec_schema(name: str) -> dict[str, Any]:
    crd = yaml.safe_load((CHART / "crds" / name).read_text())
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    return schema


def test_quoted_booleans_and_numbers_reach_the_policy_typed_as_upstreams_chart_renders_them(tmp_path: Path) -> None:
    """Upstream v26.7's clusterpolicy.yaml and nvidiadriver.yaml print these values bare (`enabled: {{ ... }}`,
    `autoUpgrade: {{ ... | default false }}`, `maxParallelUpgrades: {{ ... }}`, `timeoutSeconds: {{ ... }}`), so a
    values file that quotes them (`enabled: "false"`, or `--set-string`) still renders a boolean or an integer. The
    chart copied the string, and the API server refused the ClusterPolicy (`must be of type boolean`): `helm
    install` with such a values file failed. (cdi.enabled is left out: upstream's validations.yaml fails on a quoted
    one too.)"""
    values = tmp_path / "values.yaml"
    values.write_text('driver: {enabled: "false", usePrecompiled: "False", version: "580",'
                      ' upgradePolicy: {autoUpgrade: "false", maxParallelUpgrades: "3",'
                      ' drain: {enable: "true", timeoutSeconds: "600"}}}\n'
                      'toolkit: {enabled: "true"}\npsa: {enabled: "true"}\ndcgm: {enabled: "true", hostPort: "5555"}\n'
                      'daemonsets: {labels: {gpu: "true"}}\n')  # fmt: skip
    spec = policy_spec(render(values))
    assert crd_type_errors(spec, crd_spec_schema("nvidia.com_clusterpolicies.yaml")) == []
    driver, upgrade = spec["driver"], spec["driver"]["upgradePolicy"]
    assert (driver["enabled"], driver["usePrecompiled"], upgrade["autoUpgrade"]) == (False, False, False)
    assert upgrade["maxParallelUpgrades"] == 3
    assert (upgrade["drain"]["enable"], upgrade["drain"]["timeoutSeconds"]) == (True, 600)
    assert (spec["toolkit"]["enabled"], spec["psa"]["enabled"], spec["dcgm"]["enabled"]) == (True, True, True)
    assert spec["dcgm"]["hostPort"] == 5555
    assert spec["daemonsets"]["labels"] == {"gpu": "true"}  # a label value stays a string
    parse_spec(spec)
    switched = tmp_path / "nvidiadriver.yaml"  # (render caches by file name)
    crd_on = 'enabled: "true", nvidiaDriverCRD: {enabled: true}'
    switched.write_text(values.read_text().replace('enabled: "false"', crd_on))
    nvd = one(render(switched), "NVIDIADriver", "default")["spec"]
    assert crd_type_errors(nvd, crd_spec_schema("nvidia.com_nvidiadrivers.yaml")) == []
    assert (nvd["usePrecompiled"], nvd["upgradePolicy"]["maxParallelUpgrades"]) == (False, 3)


@pytest.mark.parametrize(
    ("values", "crds_deleted"),
    [
        # upstream's values.yaml has this block commented out (`# metrics:` / `#   serviceMonitor: ...`)
        ("operator:\n  metrics:\n  #  serviceMonitor:\n  #    interval: 15s\n", False),
        ("operator:\n  cleanupCRD:\n", False),
        ('operator:\n  cleanupCRD: ""\n', False),
        ('operator:\n  cleanupCRD: "false"\n', False),
        ('operator:\n  cleanupCRD: "true"\n', True),
        ('operator:\n  env: ""\n  args: ""\n', False),
    ],
    ids=["metrics-null", "cleanupCRD-null", "cleanupCRD-empty", "cleanupCRD-quoted-false", "cleanupCRD-quoted-true",
         "env-args-empty"],
)  # fmt: skip
def test_operator_values_left_empty_render_as_upstreams_chart_renders_them(
    tmp_path: Path, values: str, crds_deleted: bool
) -> None:
    """Upstream's operator.yaml, clusterpolicy.yaml and cleanup_crd.yaml read these keys under `if`
    (`if .Values.operator.metrics`, `if .Values.operator.cleanupCRD`, `if .Values.operator.env`), so an empty or null
    value renders (as off, or nothing). Ours failed `helm install` with a template error (nil pointer evaluating
    operator.metrics.service, `expected bool` in cleanup-hook.yaml, `range can't iterate over`). Now a null group of
    settings means its defaults (as a null section does), and only true or "true" deletes the CRDs."""
    file = tmp_path / f"{abs(hash(values))}.yaml"  # (render caches by file name)
    file.write_text(values)
    docs = render(file)
    args = one(docs, "Deployment", "gpu-operator")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--metrics-port") + 1] == "8080" and args[-1] == "--leader-elect"
    assert one(docs, "Service", "gpu-operator-metrics")["spec"]["ports"][0]["port"] == 8080
    cleanup = one(docs, "Job", "gpu-operator-cleanup")["spec"]["template"]["spec"]["containers"][0]
    delete_crds = next(e["value"] for e in cleanup["env"] if e["name"] == "DELETE_CRDS")
    assert bool(delete_crds) == crds_deleted, delete_crds
    rules = one(docs, "ClusterRole", "gpu-operator-cleanup")["rules"]
    assert any("customresourcedefinitions" in r["resources"] for r in rules) == crds_deleted
