"""The `gpu-operator` command line: `render` and `crds`, in-process and as a process for exit codes."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from gpu_operator import coverage
from gpu_operator.api import parse_spec
from gpu_operator.cli import main
from gpu_operator.states import all_states
from support import REPO, SAMPLE_NODES, SAMPLE_POLICY


def run_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gpu_operator.cli", *args],
        cwd=REPO,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )


def render_in_process(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    rc = main(["render", *args])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def docs_of(out: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(out) if d]


@pytest.fixture(scope="module")
def sample_output() -> str:
    proc = run_cli("render", "--policy", str(SAMPLE_POLICY), "--nodes", str(SAMPLE_NODES))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "", "the default sample must render without warnings"
    return proc.stdout


# The sample node file itself


def test_sample_nodes_file() -> None:
    doc = yaml.safe_load(SAMPLE_NODES.read_text())
    assert doc["kind"] == "List"
    nodes = doc["items"]
    assert [n["kind"] for n in nodes] == ["Node"] * 4
    gpu = [n for n in nodes if n["metadata"]["labels"].get("feature.node.kubernetes.io/pci-10de.present") == "true"]
    assert len(gpu) == 3
    os_versions = sorted(
        n["metadata"]["labels"]["feature.node.kubernetes.io/system-os_release.VERSION_ID"] for n in gpu
    )
    assert os_versions == ["22.04", "22.04", "24.04"]
    for n in nodes:
        labels = n["metadata"]["labels"]
        assert labels["feature.node.kubernetes.io/system-os_release.ID"] == "ubuntu"
        assert labels["feature.node.kubernetes.io/kernel-version.full"]
    # One NFD config writes one PCI label per device, of its deviceLabelFields: the GPU nodes carried both
    # pci-10de.present ([vendor]) and pci-0302_10de.present ([class, vendor]). Now the upstream chart's [vendor]
    # alone, as e2e/cluster/nodes.py's fake nodes of one cluster carry one label mode.
    pci = [sorted(k for k in n["metadata"]["labels"] if k.startswith("feature.node.kubernetes.io/pci-")) for n in gpu]
    assert pci == [["feature.node.kubernetes.io/pci-10de.present"]] * 3


# render


def test_render_prints_a_daemonset_for_every_enabled_state(sample_output: str) -> None:
    docs = docs_of(sample_output)
    components = {d["metadata"]["labels"]["nvidia.com/gpu-operator.state"] for d in docs if d["kind"] == "DaemonSet"}
    spec = parse_spec(yaml.safe_load(SAMPLE_POLICY.read_text())["spec"])
    expected = {s.name for s in all_states() if s.deploy_label and s.enabled(spec)}
    assert components == expected
    names = {d["metadata"]["name"] for d in docs if d["kind"] == "DaemonSet"}
    assert "nvidia-dcgm" not in names, "dcgm is disabled in the sample"
    assert "nvidia-node-status-exporter" not in names
    assert "# state-dcgm: disabled" in sample_output
    assert "# state-node-status-exporter: disabled" in sample_output


def test_render_two_driver_daemonsets(sample_output: str) -> None:
    drivers = [
        d
        for d in docs_of(sample_output)
        if d["kind"] == "DaemonSet" and d["metadata"]["name"].startswith("nvidia-driver")
    ]
    assert [d["metadata"]["name"] for d in drivers] == [
        "nvidia-driver-daemonset-ubuntu22.04",
        "nvidia-driver-daemonset-ubuntu24.04",
    ]
    for ds, version in zip(drivers, ("22.04", "24.04"), strict=True):
        pod = ds["spec"]["template"]["spec"]
        assert pod["nodeSelector"] == {
            "nvidia.com/gpu.deploy.driver": "true",
            "feature.node.kubernetes.io/system-os_release.ID": "ubuntu",
            "feature.node.kubernetes.io/system-os_release.VERSION_ID": version,
        }
        (ctr,) = [c for c in pod["containers"] if c["name"] == "nvidia-driver-ctr"]
        assert ctr["image"] == f"nvcr.io/nvidia/driver:595.91.07-ubuntu{version}"
        assert ds["spec"]["updateStrategy"] == {"type": "OnDelete"}


def test_render_label_patches_for_gpu_nodes_only(sample_output: str) -> None:
    patches = {d["metadata"]["name"]: d["metadata"]["labels"] for d in docs_of(sample_output) if d["kind"] == "Node"}
    assert set(patches) == {"gpu-h100-a", "gpu-h100-b", "gpu-a100-a"}
    for labels in patches.values():
        assert labels["nvidia.com/gpu.present"] == "true"
        assert labels["nvidia.com/gpu.deploy.driver"] == "true"
        assert all(isinstance(v, str) for v in labels.values())
    assert "cpu-a" not in sample_output
    # In the same patch: the annotation k8s-driver-manager reads (autoUpgrade is on in the sample).
    for doc in docs_of(sample_output):
        if doc["kind"] == "Node":
            assert doc["metadata"]["annotations"] == {"nvidia.com/gpu-driver-upgrade-enabled": "true"}


def test_render_objects_are_namespaced_and_owned(sample_output: str) -> None:
    for doc in docs_of(sample_output):
        if doc["kind"] == "Node":
            continue
        meta = doc["metadata"]
        owner = meta["ownerReferences"][0]
        assert (owner["kind"], owner["name"], owner["controller"]) == ("ClusterPolicy", "cluster-policy", True)
        if doc["kind"] not in {"ClusterRole", "ClusterRoleBinding", "RuntimeClass"}:
            assert meta["namespace"] == "gpu-operator", doc["kind"]


def test_render_is_stable(capsys: pytest.CaptureFixture[str], sample_output: str) -> None:
    first = render_in_process(capsys, "--policy", str(SAMPLE_POLICY), "--nodes", str(SAMPLE_NODES))
    second = render_in_process(capsys, "--policy", str(SAMPLE_POLICY), "--nodes", str(SAMPLE_NODES))
    assert first == second
    assert first == (0, sample_output, "")


def test_render_namespace_option(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = render_in_process(
        capsys, "--policy", str(SAMPLE_POLICY), "--nodes", str(SAMPLE_NODES), "--namespace", "gpu"
    )
    assert rc == 0
    namespaced = [d for d in docs_of(out) if "namespace" in d["metadata"]]
    assert namespaced and {d["metadata"]["namespace"] for d in namespaced} == {"gpu"}


def test_render_prints_service_monitors_when_assuming_the_monitoring_api(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = yaml.safe_load(SAMPLE_POLICY.read_text())
    policy["spec"]["operator"]["metrics"] = {"serviceMonitor": {"enabled": True}}
    policy["spec"]["dcgmExporter"]["serviceMonitor"] = {"enabled": True}
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(policy))

    def monitors(*extra: str) -> list[str]:
        rc, out, _ = render_in_process(capsys, "--policy", str(path), "--nodes", str(SAMPLE_NODES), *extra)
        assert rc == 0
        return sorted(d["metadata"]["name"] for d in docs_of(out) if d["kind"] == "ServiceMonitor")

    assert monitors() == []  # the cluster may not serve the Prometheus operator's API
    assert monitors("--api-group", "monitoring.coreos.com") == ["gpu-operator", "nvidia-dcgm-exporter"]


def test_render_without_nodes(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = render_in_process(capsys, "--policy", str(SAMPLE_POLICY))
    assert (rc, err) == (0, "")
    docs = docs_of(out)
    assert not any(d["kind"] == "Node" for d in docs)
    assert not any(d["metadata"]["name"].startswith("nvidia-driver-daemonset") for d in docs)


def test_render_refuses_a_kubeconfig_without_from_cluster(capsys: pytest.CaptureFixture[str]) -> None:
    """It rendered the files and never read the cluster the user named."""
    rc, out, err = render_in_process(capsys, "--policy", str(SAMPLE_POLICY), "--kubeconfig", "/nonexistent")
    assert (rc, out) == (2, "")
    assert err == "error: --kubeconfig is read only with --from-cluster\n"


def test_render_refuses_nodes_with_from_cluster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`render --from-cluster --nodes N.yaml` read the cluster's nodes and never opened N.yaml (a missing one too),
    without a word: an admin previewing nodes to add got the cluster's writes as if N.yaml counted. It is refused
    now, exit 2, before the cluster is read (as --kubeconfig without --from-cluster is)."""
    from gpu_operator.kube import Kube

    connected: list[bool] = []
    monkeypatch.setattr(Kube, "connect", classmethod(lambda cls, *a, **k: connected.append(True)))
    rc, out, err = render_in_process(capsys, "--from-cluster", "--nodes", str(tmp_path / "missing.yaml"))
    assert (rc, out, err) == (2, "", "error: --nodes is read only without --from-cluster\n") and not connected


def test_render_policy_from_stdin(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(SAMPLE_POLICY.read_text()))
    rc, out, _ = render_in_process(capsys, "--policy", "-", "--nodes", str(SAMPLE_NODES))
    assert rc == 0
    assert out == render_in_process(capsys, "--policy", str(SAMPLE_POLICY), "--nodes", str(SAMPLE_NODES))[1]


def test_render_policy_and_nodes_from_one_stdin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`cat policy.yaml nodes.yaml | render --policy - --nodes -`: stdin was read to the end for the policy, so the
    nodes read "": no node, no per-pool driver, no label patch, exit 0 and nothing on stderr. The one stream now
    holds both, as one file given to both options does."""
    stream = SAMPLE_POLICY.read_text() + "\n---\n" + SAMPLE_NODES.read_text()
    monkeypatch.setattr(sys, "stdin", io.StringIO(stream))
    rc, out, err = render_in_process(capsys, "--policy", "-", "--nodes", "-")
    assert (rc, err) == (0, "") and "# label patch for node" in out
    both = tmp_path / "both.yaml"
    both.write_text(stream)
    assert out == render_in_process(capsys, "--policy", str(both), "--nodes", str(both))[1]


def test_render_takes_the_configmaps_of_the_policy_file_too(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A sharing ConfigMap that does not exist holds the device plugin (pods that cannot mount it never start); a
    policy file holding it, as the time-slicing sample does, stands for the cluster's, as the --nodes file's do."""
    sample = REPO / "manifests" / "samples" / "clusterpolicy-time-slicing.yaml"
    rc, out, err = render_in_process(capsys, "--policy", str(sample), "--nodes", str(SAMPLE_NODES))
    assert (rc, err) == (0, "")
    assert any(d["kind"] == "DaemonSet" and d["metadata"]["name"] == "nvidia-device-plugin-daemonset"
               for d in docs_of(out))
    policy = tmp_path / "policy.yaml"
    policy.write_text("".join(d for d in sample.read_text().split("---") if "kind: ClusterPolicy" in d))
    rc, out, err = render_in_process(capsys, "--policy", str(policy), "--nodes", str(SAMPLE_NODES))
    assert rc == 0 and "ConfigMap time-slicing-config: not found in the operator namespace" in err
    assert "# state-device-plugin: not rendered: devicePlugin.config refused" in out


class _DryRun:
    """Stands for DryRunKube over an empty cluster: reads find nothing, writes are recorded (`recorded`)."""

    def __init__(self, _client: Any) -> None:
        from support import RecordingKube

        self.kube = RecordingKube()

    @property
    def recorded(self) -> list[tuple[str, str, Any]]:
        return [(verb, "", what) for verb, what in self.kube.calls] + [("PATCH", "", s) for s in self.kube.written]

    def get(self, *_: Any, **__: Any) -> None:
        return None

    def list(self, *_: Any, **__: Any) -> list[Any]:
        return []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.kube, name)


@pytest.mark.parametrize("namespace", ["gpu-operator", "elsewhere"])
def test_render_from_cluster_takes_the_configmaps_of_the_policy_file(
    namespace: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`render --from-cluster --policy FILE` previews what applying FILE would do, and offline render takes the
    policy file's ConfigMaps as the cluster's; with --from-cluster they were dropped, so the time-slicing sample,
    which holds its sharing ConfigMap, previewed "ConfigMap time-slicing-config: not found ... refused, not rolled
    out" and no device plugin (review cli2 #1). A ConfigMap of another namespace than the operator's is not it."""
    from gpu_operator import kube, observe
    from gpu_operator.observe import Snapshot
    from support import facts

    class _Connected:
        client = None

    sample = REPO / "manifests" / "samples" / "clusterpolicy-time-slicing.yaml"
    policy = tmp_path / "policy.yaml"
    policy.write_text(sample.read_text().replace("namespace: gpu-operator", f"namespace: {namespace}"))
    monkeypatch.setattr(kube.Kube, "connect", classmethod(lambda cls, *a, **k: _Connected()))
    monkeypatch.setattr(kube, "DryRunKube", _DryRun)
    monkeypatch.setattr(observe, "observe", lambda *_: Snapshot(
        nodes={"gpu-1": facts("gpu-1")}, policies={}, owned={}, pods={}, revisions={}))  # fmt: skip
    rc, out, err = render_in_process(capsys, "--from-cluster", "--policy", str(policy))
    assert rc == 0, err
    there = namespace == "gpu-operator"
    assert ("time-slicing-config: not found" in out) is not there
    assert ("nvidia-device-plugin-daemonset" in out) is there


def test_render_bare_spec_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bare = tmp_path / "spec.yaml"
    bare.write_text(yaml.safe_dump({"dcgm": {"enabled": True}}))
    rc, out, _ = render_in_process(capsys, "--policy", str(bare), "--nodes", str(SAMPLE_NODES))
    assert rc == 0
    assert any(d["kind"] == "DaemonSet" and d["metadata"]["name"] == "nvidia-dcgm" for d in docs_of(out))


def test_render_routes_nodes_by_an_nvidiadriver_selector_on_an_nfd_label_the_operator_does_not_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from gpu_operator import nodes
    from support import node

    monkeypatch.setattr(nodes, "_kept", frozenset())
    major = "feature.node.kubernetes.io/system-os_release.VERSION_ID.major"
    policy = tmp_path / "spec.yaml"
    policy.write_text(yaml.safe_dump({"driver": {"useNvidiaDriverCRD": True}}))
    given = tmp_path / "nodes.yaml"
    given.write_text(yaml.safe_dump_all([
        node("rhel-1", os=("rhel", "9.4"), labels={major: "9"}),
        {"apiVersion": "nvidia.com/v1alpha1", "kind": "NVIDIADriver", "metadata": {"name": "default"},
         "spec": {"default": True}},
        {"apiVersion": "nvidia.com/v1alpha1", "kind": "NVIDIADriver", "metadata": {"name": "rhel9"},
         "spec": {"nodeSelector": {major: "9"}}},
    ]))  # fmt: skip
    rc, out, err = render_in_process(capsys, "--policy", str(policy), "--nodes", str(given))
    assert rc == 0, err
    names = {d["metadata"]["name"] for d in docs_of(out) if d["kind"] == "DaemonSet"}
    assert "nvidia-driver-daemonset-rhel9-rhel9.4" in names, sorted(names)


def _policy_with_typos(tmp_path: Path, annotate: bool = False) -> Path:
    policy = yaml.safe_load(SAMPLE_POLICY.read_text())
    policy["spec"]["kataManagr"] = {"enabled": False}
    policy["spec"]["driver"]["virtualTopologyy"] = {"config": ""}
    if annotate:
        policy["metadata"]["annotations"] = {"nvidia.com/gpu-operator.allow-unknown-fields": "true"}
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(policy))
    return path


def test_render_rejects_unknown_fields(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = render_in_process(capsys, "--policy", str(_policy_with_typos(tmp_path)))
    assert (rc, out) == (2, "")
    assert err.splitlines() == [
        "error: spec.driver.virtualTopologyy: unknown field (did you mean virtualTopology?)",
        "error: spec.kataManagr: unknown field (did you mean kataManager?)",
    ]


@pytest.mark.parametrize("how", ["flag", "annotation"])
def test_render_allows_unknown_fields_when_asked(how: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _policy_with_typos(tmp_path, annotate=how == "annotation")
    flags = ["--allow-unknown-fields"] if how == "flag" else []
    rc, out, err = render_in_process(capsys, "--policy", str(path), *flags)
    assert rc == 0 and "kind: DaemonSet" in out
    assert err.splitlines() == [
        "warning: spec.driver.virtualTopologyy: unknown field, ignored (not in upstream v26.7's ClusterPolicy)",
        "warning: spec.kataManagr: unknown field, ignored (not in upstream v26.7's ClusterPolicy)",
    ]


def test_render_warns_about_each_field_set_but_not_supported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    policy = yaml.safe_load(SAMPLE_POLICY.read_text())
    policy["spec"]["driver"]["virtualTopology"] = {"config": "vgpu-topology"}
    policy["spec"]["driver"]["kernelModuleConfig"] = {"name": ""}  # the default: nothing to say
    policy["spec"]["gds"] = {"enabled": False, "image": "nvidia-fs:2.26.6"}  # off: nothing to say either
    policy["spec"]["psp"] = {"enabled": True}
    path = tmp_path / "policy.yaml"
    path.write_text(yaml.safe_dump(policy))
    rc, out, err = render_in_process(capsys, "--policy", str(path))
    assert rc == 0 and "kind: DaemonSet" in out
    assert err.splitlines() == [
        "warning: spec.driver.virtualTopology.config: set but not supported by this operator "
        f"({reason('driver.virtualTopology.config')})",
        f"warning: spec.psp.enabled: set but not supported by this operator ({reason('psp.enabled')})",
    ]


def reason(path: str) -> str:
    rule = coverage.rule_for(path)
    assert rule is not None, path
    return rule.reason


# Errors: exit 2, one line each, no traceback


def test_invalid_policy_exits_2_with_one_line_per_problem(tmp_path: Path) -> None:
    policy = yaml.safe_load(SAMPLE_POLICY.read_text())
    policy["spec"]["mig"]["strategy"] = "bogus"
    policy["spec"]["driver"]["kernelModuleType"] = "closed"
    policy["spec"]["driver"]["upgradePolicy"]["maxUnavailable"] = "abc"
    policy["spec"]["driver"]["upgradePolicy"]["maxParallelUpgrades"] = -1
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(policy))
    proc = run_cli("render", "--policy", str(path), "--nodes", str(SAMPLE_NODES))
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert [line.split(":")[1].strip() for line in lines] == [
        "spec.driver.kernelModuleType",
        "spec.driver.upgradePolicy.maxParallelUpgrades",
        "spec.driver.upgradePolicy.maxUnavailable",
        "spec.mig.strategy",
    ]
    assert all(line.startswith("error: spec.") for line in lines)
    assert (
        'error: spec.driver.upgradePolicy.maxUnavailable: must be a non-negative integer or a percentage like "25%"'
        in lines
    )


def test_invalid_policy_in_process(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"kind": "ClusterPolicy", "spec": {"driver": {"repository": "nvcr.io/nvidia"}}}))
    rc, out, err = render_in_process(capsys, "--policy", str(path))
    assert (rc, out) == (2, "")
    assert err == (
        "error: spec.driver: image: set repository, image and version together (or image alone); "
        "missing image, version\n"
    )


@pytest.mark.parametrize("which", ["policy", "nodes"])
def test_missing_file_exits_2_with_one_line(tmp_path: Path, which: str) -> None:
    missing = str(tmp_path / "missing.yaml")
    args = ["--policy", missing] if which == "policy" else ["--policy", str(SAMPLE_POLICY), "--nodes", missing]
    proc = run_cli("render", *args)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: ") and "missing.yaml" in lines[0]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("spec:\n  driver: [\n", "invalid YAML"),
        ("- a\n- b\n", "expected a YAML mapping"),
        ("apiVersion: v1\nkind: ConfigMap\n", "no ClusterPolicy found"),
        ("kind: 5\n", "no ClusterPolicy found"),
    ],
)
def test_unusable_policy_file_exits_2_with_one_line(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(content)
    proc = run_cli("render", "--policy", str(path))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"error: {path}: ") and message in lines[0]


def test_a_file_that_is_not_utf8_is_named_in_the_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A file that is not UTF-8 (`kubectl get nodes -o yaml > nodes.yaml` in Windows PowerShell writes UTF-16)
    gave `error: 'utf-8' codec can't decode byte 0xff in position 0: ...`, naming neither the file nor the
    option (render reads two files), where every other unreadable file is named; now the one line names it, exit 2
    (review cli2 #3)."""
    policy = tmp_path / "policy.yaml"
    policy.write_text("kind: ClusterPolicy\napiVersion: nvidia.com/v1\nmetadata: {name: p}\nspec: {}\n")
    nodes = tmp_path / "nodes.yaml"
    nodes.write_bytes("kind: Node\nmetadata: {name: n}\n".encode("utf-16"))
    rc = main(["render", "--policy", str(policy), "--nodes", str(nodes)])
    err = capsys.readouterr().err
    assert rc == 2 and err == f"error: {nodes}: not UTF-8 text (byte 0: invalid start byte); save it as UTF-8\n"


def test_unusable_nodes_file_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "nodes.yaml"
    path.write_text("kind: List\nitems: [1, 2]\n")
    proc = run_cli("render", "--policy", str(SAMPLE_POLICY), "--nodes", str(path))
    assert proc.returncode == 2
    assert len(proc.stderr.splitlines()) == 1 and "Traceback" not in proc.stderr




@pytest.mark.parametrize(
    ("doc", "message"),
    [
        # A hand-written nodes file with an unquoted boolean label (YAML reads `true` as a bool).
        ({"kind": "Node", "metadata": {"name": "n1", "labels": {"feature.node.kubernetes.io/pci-10de.present": True}}},
         "Node n1: metadata.labels.feature.node.kubernetes.io/pci-10de.present: must be a string, not bool True"),
        ({"kind": "Node", "metadata": {"name": "n1", "labels": ["a=b"]}},
         "Node n1: metadata.labels: must be a mapping of strings, not list"),
        ({"kind": "Node", "metadata": {"name": "n1"}, "status": {"nodeInfo": "x"}},
         "Node n1: status.nodeInfo: must be a mapping, not str"),
        ({"kind": "Node", "metadata": {"name": "n1"}, "spec": {"taints": 5}},
         "Node n1: spec.taints: must be a list, not int 5"),
        ({"kind": "Node", "metadata": {"name": "n1"}, "spec": {"taints": [{"key": 1, "effect": "NoSchedule"}]}},
         "Node n1: spec.taints[0].key: must be a string, not int 1"),
        ({"kind": "Node", "metadata": {"labels": {"a": "b"}}}, "Node: metadata.name: must be set"),
        ({"kind": "ConfigMap", "metadata": {"name": "c"}, "data": 5},
         "ConfigMap c: data: must be a mapping of strings, not int 5"),
        ({"kind": "NodeFeature", "metadata": {"name": "n1"},
          "spec": {"features": {"instances": {"pci.device": {"elements": [5]}}}}},
         "NodeFeature n1: spec.features.instances.pci.device.elements[0]: must be a mapping, not int 5"),
    ],
    ids=["bool-label", "labels-list", "nodeInfo-str", "taints-int", "taint-key-int", "no-name", "configmap-data-int",
         "nodefeature-element"],
)  # fmt: skip
def test_malformed_node_file_exits_2_naming_the_document_and_field(
    doc: dict[str, Any], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "nodes.yaml"
    path.write_text(yaml.safe_dump(doc))
    rc, out, err = render_in_process(capsys, "--policy", str(SAMPLE_POLICY), "--nodes", str(path))
    assert (rc, out) == (2, "")
    assert err.startswith(f"error: {path}: {message}") and len(err.splitlines()) == 1, err


def test_policy_with_malformed_metadata_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("apiVersion: nvidia.com/v1\nkind: ClusterPolicy\nmetadata:\n  name: p\n  annotations: [a]\n"
                    "spec: {}\n")  # fmt: skip
    rc, out, err = render_in_process(capsys, "--policy", str(path))
    assert (rc, out) == (2, "")
    assert err == (f"error: {path}: ClusterPolicy p: metadata.annotations: must be a mapping of strings, not list "
                   "['a']\n")



@pytest.mark.parametrize("spec", ["[]", "0", "false"])
def test_a_policy_whose_spec_is_not_a_mapping_exits_2(
    spec: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A falsy spec (`spec: []`) was read as `{}`: render printed the default stack and exited 0, for a policy the
    API server refuses. A null or missing spec is still the empty one."""
    path = tmp_path / "policy.yaml"
    path.write_text(f"apiVersion: nvidia.com/v1\nkind: ClusterPolicy\nmetadata:\n  name: p\nspec: {spec}\n")
    rc, out, err = render_in_process(capsys, "--policy", str(path))
    assert (rc, out) == (2, "")
    assert err.startswith("error: spec: Input should be a valid dictionary") and len(err.splitlines()) == 1, err
    path.write_text("apiVersion: nvidia.com/v1\nkind: ClusterPolicy\nmetadata:\n  name: p\nspec:\n")
    rc, out, err = render_in_process(capsys, "--policy", str(path))
    assert (rc, err) == (0, "") and "kind: DaemonSet" in out


@pytest.mark.parametrize("version", ["nvidia.com/v1alpha1", "nvidia.com/v2", "v1"])
def test_a_clusterpolicy_of_an_api_version_no_server_serves_exits_2(
    version: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(SAMPLE_POLICY.read_text().replace("apiVersion: nvidia.com/v1\n", f"apiVersion: {version}\n", 1))
    assert f"apiVersion: {version}\n" in path.read_text()
    rc, out, err = render_in_process(capsys, "--policy", str(path))
    assert (rc, out) == (2, "")
    assert err.startswith(f"error: {path}: ClusterPolicy ") and err.endswith(
        f": apiVersion {version}: ClusterPolicy is served only as nvidia.com/v1\n"
    ), err


def test_an_nvidiadriver_of_an_api_version_no_server_serves_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "nodes.yaml"
    path.write_text("apiVersion: nvidia.com/v1\nkind: NVIDIADriver\nmetadata: {name: d}\nspec: {}\n")
    rc, out, err = render_in_process(capsys, "--policy", str(SAMPLE_POLICY), "--nodes", str(path))
    assert (rc, out) == (2, "")
    served = "NVIDIADriver is served only as nvidia.com/v1alpha1"
    assert err == f"error: {path}: NVIDIADriver d: apiVersion nvidia.com/v1: {served}\n"


# Commands that read the cluster: an unusable kubeconfig or an API server that does not answer is one line

KUBECONFIG = """\
apiVersion: v1
kind: Config
clusters:
- name: c
  cluster: {server: "https://127.0.0.1:1", insecure-skip-tls-verify: true}
users:
- name: u
  user: {token: abc}
contexts:
- name: ctx
  context: {cluster: c, user: u}
current-context: ctx
"""


def kubeconfig(tmp_path: Path, which: str) -> str:
    """A kubeconfig path: missing, with no current-context, a YAML list, not YAML (a bracket left open, as after a
    hand edit or a bad merge), one kubectl refuses too (its CA or client certificate is not PEM, its tokenFile is
    gone), or one whose server refuses connections (port 1 on the loopback)."""
    path = tmp_path / which
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    content = {"missing": None, "no-context": KUBECONFIG.replace("current-context: ctx\n", ""), "list": "- a\n- b\n",
               "not-yaml": "apiVersion: v1\nkind: Config\nclusters: [\n",
               "ca-not-pem": KUBECONFIG.replace("insecure-skip-tls-verify: true", f"certificate-authority: {garbage}"),
               "client-cert-not-pem": KUBECONFIG.replace(
                   "token: abc", f"client-certificate: {garbage}, client-key: {garbage}"),
               "token-file-missing": KUBECONFIG.replace("token: abc", f"tokenFile: {tmp_path / 'gone'}"),
               "unreachable": KUBECONFIG}[which]  # fmt: skip
    if content is not None:
        path.write_text(content)
    return str(path)


UNUSABLE = ["missing", "no-context", "list", "not-yaml", "ca-not-pem", "client-cert-not-pem", "token-file-missing",
            "unreachable"]  # fmt: skip


@pytest.mark.parametrize("which", UNUSABLE)
def test_doctor_exits_3_when_the_cluster_cannot_be_read(
    which: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """doctor's documented status for "the cluster could not be read" (it was 1, "warnings", with a traceback; a
    kubeconfig that is not YAML still was: the exec plugin check read it before Kube.connect's try). A CA or client
    certificate that is not PEM was OpenSSL's words alone (`[SSL] PEM lib (_ssl.c:3905)`), naming no kubeconfig."""
    path = kubeconfig(tmp_path, which)
    assert main(["doctor", "--kubeconfig", path, "-o", "json"]) == 3
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1 and err.startswith("error: cannot read the cluster: "), err
    assert which == "unreachable" or err.startswith(f"error: cannot read the cluster: kubeconfig {path}: "), err


CLUSTER_COMMANDS = [
    ["versions"], ["upgrade", "plan"], ["mig", "layouts"], ["render", "--from-cluster"], ["crds", "--apply"],
    ["capacity", "--pod", "manifests/samples/exercise3-training-job.yaml", "--count", "10"],
]  # fmt: skip
NAMED = {"ca-not-pem": ": CA certificate: ", "client-cert-not-pem": ": client certificate or key: ",
         "token-file-missing": "gone"}  # what the line names besides the kubeconfig
CLUSTER_COMMAND_IDS = ["versions", "upgrade-plan", "mig-layouts", "render-from-cluster", "crds-apply", "capacity"]


@pytest.mark.parametrize("which", UNUSABLE)
@pytest.mark.parametrize("command", CLUSTER_COMMANDS, ids=CLUSTER_COMMAND_IDS)
def test_cluster_commands_give_one_error_line_when_the_cluster_cannot_be_read(
    command: list[str], which: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: Any
) -> None:
    """A kubeconfig with a YAML syntax error ended every command but render in a yaml.parser.ParserError
    traceback (exit 1), and render's line was the parser's three lines naming no kubeconfig. One whose CA or client
    certificate is not PEM, or whose tokenFile is gone, was OpenSSL's or the OSError's words alone, naming neither
    the kubeconfig nor (OpenSSL) what it could not load."""
    monkeypatch.chdir(REPO)
    path = kubeconfig(tmp_path, which)
    assert main([*command, "--kubeconfig", path]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err
    assert "127.0.0.1:1" in err if which == "unreachable" else err.startswith(f"error: kubeconfig {path}: "), err
    assert NAMED.get(which, "") in err, err


def test_unreachable_server_as_a_process(tmp_path: Path) -> None:
    proc = run_cli("doctor", "--kubeconfig", kubeconfig(tmp_path, "unreachable"))
    assert proc.returncode == 3 and "Traceback" not in proc.stderr, proc.stderr


# A server at the kubeconfig's address that is not a Kubernetes API server: a web UI (Rancher's URL without its
# /k8s/clusters/<id> path, an ingress, an SSO page) answering 200 with HTML, or a proxy's 502 page.

HTML = b"<html>\n<head><title>Welcome</title></head>\n<body>\n<h1>Sign in</h1>\n</body>\n</html>\n"


@pytest.fixture(params=[200, 502])
def html_server(request: pytest.FixtureRequest) -> Iterator[tuple[int, str]]:
    """(status, URL) of a server answering every request with HTML and that status."""
    status: int = request.param

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(HTML)))
            self.end_headers()
            self.wfile.write(HTML)

        do_GET = do_PATCH = do_POST = do_PUT = do_DELETE = _answer

        def log_message(self, *_: Any) -> None:
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield status, f"http://127.0.0.1:{srv.server_port}"
    finally:
        srv.shutdown()
        srv.server_close()


@pytest.mark.parametrize("command", [["doctor"], *CLUSTER_COMMANDS], ids=["doctor", *CLUSTER_COMMAND_IDS])
def test_cluster_commands_give_one_error_line_when_the_server_answers_html(
    command: list[str], html_server: tuple[int, str], tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """A 200 with a web page raised json.JSONDecodeError out of Kube.request: a traceback (doctor: exit 1,
    "warnings", not 3), or for render --from-cluster and capacity `error: Expecting value: line 1 column 1 (char
    0)`, naming no server. A 502 page was ApiError's message whole: the `error:` line was followed by the rest of
    the page. Now one line, naming the server that is not an API server (a 200) or the page's title (an error)."""
    monkeypatch.chdir(REPO)
    status, url = html_server
    path = tmp_path / "kubeconfig"
    path.write_text(KUBECONFIG.replace("https://127.0.0.1:1", url))
    rc = main([*command, "--kubeconfig", str(path)])
    err = capsys.readouterr().err
    assert rc == (3 if command == ["doctor"] else 2) and err.startswith("error: ") and len(err.splitlines()) == 1, err
    if status == 200:
        assert f"{url}/" in err and "answered 200 text/html, not JSON: is this a Kubernetes API server?" in err, err
    else:
        assert err.endswith(": 502 Welcome\n"), err


def test_a_missing_exec_credential_plugin_is_named_in_the_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A cloud kubeconfig's exec plugin (gke-gcloud-auth-plugin, aws, kubelogin) not installed: the kubernetes
    client only logged `ERROR:root:[Errno 2] No such file or directory: ...` (and set up the root logger, so
    urllib3's retry warnings followed) and Kube.connect went on without credentials; the `error:` line then blamed
    the connection, or an API server's 401 for system:anonymous. kubectl stops at the plugin and names it."""
    user = "user: {exec: {apiVersion: client.authentication.k8s.io/v1beta1, command: gke-gcloud-auth-plugin-x}}"
    path = tmp_path / "kubeconfig"
    path.write_text(KUBECONFIG.replace("user: {token: abc}", user))
    assert main(["versions", "--kubeconfig", str(path)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: kubeconfig {path}: exec credential plugin 'gke-gcloud-auth-plugin-x' not found " \
        "(kubectl would need it too)\n", err  # fmt: skip


@pytest.mark.parametrize(
    ("script", "why"),
    [
        ("echo 'error: token expired, run az login' >&2\necho 'more detail' >&2\nexit 3",
         "process returned 3. error: token expired, run az login"),
        ("echo '<html>not a credential</html>'", "failed to decode process output: Expecting value: line 1 column 1"),
    ],
    ids=["exits-non-zero", "prints-no-json"],
)  # fmt: skip
def test_a_failing_exec_credential_plugin_is_named_in_the_one_error_line(
    script: str, why: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An installed exec plugin that failed (exited non-zero: an expired login; or printed no ExecCredential):
    the kubernetes client only logged `ERROR:root:exec: ...` with the plugin's whole stderr and Kube.connect went
    on without credentials, so the `error:` line came later and blamed the server (a 401 for system:anonymous).
    Now connect stops at the plugin: one line naming its command and the first line of what it said."""
    plugin = tmp_path / "cloud-auth"
    plugin.write_text(f"#!/bin/sh\n{script}\n")
    plugin.chmod(0o755)
    user = f"user: {{exec: {{apiVersion: client.authentication.k8s.io/v1beta1, command: {plugin}}}}}"
    path = tmp_path / "kubeconfig"
    path.write_text(KUBECONFIG.replace("user: {token: abc}", user))
    assert main(["versions", "--kubeconfig", str(path)]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"error: kubeconfig {path}: exec credential plugin '{plugin}' failed: {why}"), err


def test_a_working_exec_credential_plugin_gives_its_token(tmp_path: Path) -> None:
    """The plugin's errors are read from the client's log: a plugin that answers leaves nothing to read."""
    from gpu_operator.kube import Kube

    plugin = tmp_path / "cloud-auth"
    credential = '{"apiVersion": "client.authentication.k8s.io/v1beta1", "kind": "ExecCredential", ' \
        '"status": {"token": "from-plugin"}}'  # fmt: skip
    plugin.write_text(f"#!/bin/sh\necho '{credential}'\n")
    plugin.chmod(0o755)
    user = f"user: {{exec: {{apiVersion: client.authentication.k8s.io/v1beta1, command: {plugin}}}}}"
    path = tmp_path / "kubeconfig"
    path.write_text(KUBECONFIG.replace("user: {token: abc}", user))
    kube = Kube.connect(str(path), resume_tls=False)
    assert kube._headers(None)["authorization"] == "Bearer from-plugin"


def test_run_with_a_missing_kubeconfig_is_one_error_line(tmp_path: Path) -> None:
    """Every other command prints `error: kubeconfig PATH: ...` and exits 2; `run` ended in a traceback of
    gpu_operator.kube.Unreachable (exit 1)."""
    missing = str(tmp_path / "missing")
    proc = run_cli("run", "--kubeconfig", missing, "--metrics-port", "0", "--health-port", "0")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.splitlines()[-1].startswith(f"error: kubeconfig {missing}: "), proc.stderr


def run_up_to_kopf(monkeypatch: pytest.MonkeyPatch, connect: bool = True) -> dict[str, Any]:
    """`run` in-process up to kopf.run, with no cluster (as test_runtime_cache's healthz test): what kopf.run is
    given. `connect`: Kube.connect left as it is (it sends no request); else it returns an EchoKube."""
    import kopf

    from gpu_operator import debug, runtime
    from support import EchoKube

    seen: dict[str, Any] = {}
    if not connect:
        monkeypatch.setattr(runtime.Kube, "connect", staticmethod(lambda *_a, **_k: EchoKube()))
    monkeypatch.setenv("KUBECONFIG", "")  # run sets it from --kubeconfig
    monkeypatch.setattr(runtime, "Operator", lambda *a, **k: object())
    monkeypatch.setattr(runtime, "build_registry", lambda op: kopf.OperatorRegistry())
    monkeypatch.setattr(runtime, "identity", lambda: "me")
    monkeypatch.setattr(runtime.gc, "freeze", lambda: None)
    monkeypatch.setattr(runtime.logging, "basicConfig", lambda **_k: None)
    for name in ("install", "tune_malloc", "tune_threads"):
        monkeypatch.setattr(debug, name, lambda: None)
    monkeypatch.setattr(kopf, "run", lambda **kw: seen.update(kw))
    return seen


@pytest.mark.parametrize("which", [w for w in UNUSABLE if w != "unreachable"])
def test_run_with_a_kubeconfig_it_cannot_use_is_one_error_line(
    which: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """README: "`run` too exits 2 with one `error:` line on a kubeconfig it cannot use". One that is not YAML
    ended in a yaml.parser.ParserError traceback (exit 1); so did one with a CA or client certificate that is not
    PEM (ssl.SSLError, from tls.context_for after the client's loader) or a tokenFile that is gone
    (FileNotFoundError): Kube.connect made Unreachable of neither, the only error cmd_run catches."""
    seen = run_up_to_kopf(monkeypatch)
    path = kubeconfig(tmp_path, which)
    assert main(["run", "--kubeconfig", path, "--metrics-port", "0", "--health-port", "0"]) == 2
    err = capsys.readouterr().err
    assert not seen and len(err.splitlines()) == 1 and err.startswith(f"error: kubeconfig {path}: "), err


def exit_status(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse's refusal
        return int(exc.code or 0)


@pytest.mark.parametrize("option", ["--metrics-port", "--health-port"])
@pytest.mark.parametrize("port", ["70000", "-1"])
def test_run_refuses_a_port_out_of_range(
    option: str, port: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """argparse took any int: `--metrics-port 70000` (or -1: not 0, so not "off") ended in `OverflowError: bind():
    port must be 0-65535`, a traceback with exit 1. Now a usage error naming the option."""
    seen = run_up_to_kopf(monkeypatch, connect=False)
    ports = {"--metrics-port": "0", "--health-port": "0", option: port}
    rc = exit_status(["run", *(word for item in ports.items() for word in item)])
    err = capsys.readouterr().err
    assert rc == 2 and not seen, err
    assert f"argument {option}: not a port (0 to 65535): {port}" in err and "Traceback" not in err, err


def test_run_with_the_metrics_port_in_use_is_one_error_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`gpu-operator run` where something already listens on 8080 (the default --metrics-port: a local dev server,
    another exporter) ended in an `OSError: [Errno 98] Address already in use` traceback, exit 1: metrics.serve's
    IPv4 fallback raised it and cmd_run caught only Unreachable. Upstream's manager logs one line and exits; here
    one `error:` line naming the option, exit 2, as for a kubeconfig it cannot use."""
    seen = run_up_to_kopf(monkeypatch, connect=False)
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        port = busy.getsockname()[1]
        rc = exit_status(["run", "--metrics-port", str(port), "--health-port", "0"])
    err = capsys.readouterr().err
    assert rc == 2 and not seen, err
    assert err.startswith(f"error: --metrics-port {port}: ") and len(err.splitlines()) == 1, err


def test_run_with_the_health_port_in_use_is_one_error_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The health port was bound by a kopf startup handler: in use, kopf.run ended in an ActivityError traceback
    (exit 1) after the handler's own. Now `run` prints one `error:` line, exit 2. kopf.run is left real here: the
    port is bound before it, so it is never reached."""
    import kopf

    kopf_run = kopf.run
    run_up_to_kopf(monkeypatch, connect=False)
    monkeypatch.setattr(kopf, "run", kopf_run)
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        port = busy.getsockname()[1]
        rc = exit_status(["run", "--metrics-port", "0", "--health-port", str(port)])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err, err
    assert err.splitlines()[-1].startswith(f"error: --health-port {port}: "), err


def test_run_with_the_health_port_in_use_does_not_start_reconciling(monkeypatch: pytest.MonkeyPatch) -> None:
    """README: "`run` too exits 2 with one `error:` line on ... a `--health-port` it cannot listen on", and
    runtime.Unbindable: "it does not start". It exited 2, but only after acting: the port was bound by a kopf
    startup handler registered after build_registry's `startup`, which had already started the reconcile loop and
    called `op.lead()`, so against a live cluster it logged the bind error, then 'applying Service gpu-operator
    (update)' and 'reconciled: ready=False, 3 writes' (the ClusterPolicy flapped notReady). Now the port is bound
    before kopf.run, as the metrics port is: nothing leads or reconciles. (review newcomer #4)"""
    import kopf

    from gpu_operator import debug, runtime
    from support import EchoKube

    calls: list[str] = []

    class FakeOperator:
        elector = None
        event_loop: Any = None
        task: Any = None
        watches: list[Any] = []
        kube = EchoKube()

        def __init__(self, *_a: Any, **_k: Any) -> None:
            pass

        def own_watches(self, *_a: Any) -> list[Any]:
            return []

        async def loop(self) -> None:
            calls.append("loop")

        def lead(self) -> None:
            calls.append("lead")

        async def step_down(self) -> None:
            pass

        def _stop_feature_watch(self) -> None:
            pass

        def __getattr__(self, name: str) -> Any:  # the kopf event callbacks build_registry registers
            return lambda *_a, **_k: None

    monkeypatch.setattr(runtime.Kube, "connect", staticmethod(lambda *_a, **_k: EchoKube()))
    monkeypatch.setenv("KUBECONFIG", "")
    monkeypatch.setattr(runtime, "Operator", FakeOperator)
    monkeypatch.setattr(runtime, "identity", lambda: "me")
    monkeypatch.setattr(runtime.gc, "freeze", lambda: None)
    monkeypatch.setattr(runtime.logging, "basicConfig", lambda **_k: None)
    for name in ("install", "tune_malloc", "tune_threads"):
        monkeypatch.setattr(debug, name, lambda: None)
    real_run = kopf.run

    def kopf_run(**kw: Any) -> None:  # real: the startup activities run until kopf stops
        calls.append("kopf.run")
        return real_run(**kw)

    monkeypatch.setattr(kopf, "run", kopf_run)
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(runtime.Unbindable, match=f"^--health-port {port}: "):
            runtime.run(None, "gpu-operator", metrics_port=0, health_port=port)
    assert "lead" not in calls and "loop" not in calls, calls


@pytest.mark.parametrize("command", [["crds"], ["versions"], ["mig", "layouts", "--offline"]])
def test_output_into_a_closed_pipe_is_no_traceback(command: list[str]) -> None:
    """`gpu-operator mig layouts --offline | head -1` printed a BrokenPipeError traceback (exit 1), as every
    command writing more than the pipe holds after its reader left did. Here the reader is gone before the first
    write; the command ends quietly with a shell's status for SIGPIPE."""
    read, write = os.pipe()
    proc = subprocess.Popen([sys.executable, "-m", "gpu_operator.cli", *command], cwd=REPO, stdout=write,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    os.close(write)
    os.close(read)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 141 and err == "", err


def test_interrupt_ends_a_command_without_a_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C while a command waits (on stdin, on a slow API server) ended it with a KeyboardInterrupt traceback;
    now exit 130 (128 + SIGINT, what a shell reports), as a closed pipe ends it with 141 (review cli2 #2)."""

    class _Interrupted:
        def read(self) -> str:
            raise KeyboardInterrupt

    monkeypatch.setattr("sys.stdin", _Interrupted())
    try:
        rc = main(["render", "--policy", "-"])
    except KeyboardInterrupt:
        pytest.fail("KeyboardInterrupt escaped main(): a traceback on Ctrl-C")
    assert rc == 130


@pytest.mark.parametrize("command", [["versions", "--kubeconfig", "k"], ["upgrade", "plan"], ["mig", "layouts"]])
def test_cluster_commands_print_each_problem_of_an_invalid_policy_as_an_error_line(
    command: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """As render does: "error: " before every problem, not only the first."""
    import types

    import gpu_operator.observe
    from gpu_operator.kube import Kube
    from support import policy_object

    policy = policy_object()
    policy["spec"]["mig"]["strategy"] = "bogus"
    policy["spec"]["driver"]["kernelModuleType"] = "closed"
    cluster = types.SimpleNamespace(list=lambda kind, *a, **k: [policy] if kind == "ClusterPolicy" else [])
    snap = types.SimpleNamespace(policies={policy["metadata"]["name"]: policy}, nodes={})
    monkeypatch.setattr(Kube, "connect", classmethod(lambda cls, *a, **k: cluster))
    monkeypatch.setattr(gpu_operator.observe, "observe", lambda kube, ns: snap)
    assert main(command) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and all(line.startswith("error: spec.") for line in lines), lines


# crds, help, version


def test_crds_subprocess_matches_committed_file() -> None:
    proc = run_cli("crds")
    assert proc.returncode == 0
    assert proc.stdout == "".join(f.read_text() for f in sorted((REPO / "crds").glob("*.yaml")))


def test_crds_dir_is_created_and_a_file_in_its_place_is_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "new" / "crds"
    assert main(["crds", "--dir", str(out)]) == 0
    committed = {f.name: f.read_text() for f in (REPO / "crds").glob("*.yaml")}
    assert {f.name: f.read_text() for f in out.iterdir()} == committed
    (tmp_path / "file").write_text("")
    assert main(["crds", "--dir", str(tmp_path / "file")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.splitlines()) == 1, err


@pytest.mark.parametrize(
    ("options", "message"),
    [(["--apply", "--dir", "out"], "--dir and --apply exclude each other"),
     (["--kubeconfig", "kc"], "--kubeconfig is read only with --apply"),
     (["--dir", "out", "--kubeconfig", "kc"], "--kubeconfig is read only with --apply")],
    ids=["apply-dir", "kubeconfig-print", "kubeconfig-dir"],
)  # fmt: skip
def test_crds_refuses_options_it_would_ignore(
    options: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    """`crds --apply --dir D` wrote the files and exited 0 without connecting, so a script running it was told the
    CRDs were applied; `--kubeconfig` without `--apply` printed them and never read that cluster (render refuses
    the like mix). Both are refused now, exit 2, before any file is written or any cluster read."""
    from gpu_operator.kube import Kube

    connected: list[bool] = []
    monkeypatch.setattr(Kube, "connect", classmethod(lambda cls, *a, **k: connected.append(True)))
    monkeypatch.chdir(tmp_path)
    assert main(["crds", *options]) == 2
    out, err = capsys.readouterr()
    assert (out, err) == ("", f"error: {message}\n") and not connected and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ([], ["render", "crds", "run"]),
        (["render"], ["--policy", "--nodes", "--namespace"]),
        (["crds"], ["--apply"]),
        (["run"], ["--kubeconfig", "--metrics-port"]),
    ],
)
def test_help(command: list[str], expected: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([*command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for word in expected:
        assert word in out


def test_every_kubeconfig_option_names_its_default() -> None:
    """`capacity --help` (and doctor's, upgrade plan's, mig layouts', crds') said only "kubeconfig file", while
    Kube.connect falls back to the in-cluster config, then $KUBECONFIG or ~/.kube/config; only `run --help` said
    so. Every command's --kubeconfig now shares that help; versions, which reads no cluster without it, says so."""
    import argparse

    from gpu_operator.cli import build_parser

    def commands(parser: argparse.ArgumentParser, name: str = "") -> Iterator[tuple[str, argparse.ArgumentParser]]:
        yield name, parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub, child in action.choices.items():
                    yield from commands(child, f"{name} {sub}".strip())

    helps = {name: a.help or "" for name, p in commands(build_parser()) for a in p._actions if a.dest == "kubeconfig"}
    assert set(helps) == {"run", "render", "upgrade plan", "mig layouts", "versions", "crds", "doctor", "capacity"}
    for name, text in helps.items():
        default = "none, the matrix alone" if name == "versions" else \
            "the in-cluster config in a pod, else $KUBECONFIG, else ~/.kube/config"
        assert f"(default: {default})" in text, (name, text)


def test_help_as_a_process() -> None:
    for command in (["render"], ["crds"], ["run"]):
        proc = run_cli(*command, "--help")
        assert proc.returncode == 0 and "usage: gpu-operator" in proc.stdout


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith("gpu-operator ")


def test_usage_errors_exit_2() -> None:
    assert run_cli().returncode == 2
    assert run_cli("render").returncode == 2  # --policy is required
    assert run_cli("frobnicate").returncode == 2


def test_versions_and_doctor_honour_the_allow_unknown_annotation() -> None:
    """The operator accepts a policy annotated allow-unknown-fields; `versions` and doctor read it the same way."""
    import types

    from gpu_operator.api import ALLOW_UNKNOWN_ANNOTATION
    from gpu_operator.cli import versions_report
    from gpu_operator.doctor.common import policy
    from gpu_operator.doctor.model import Cluster
    from support import policy_object

    obj = policy_object()
    obj["metadata"].setdefault("annotations", {})[ALLOW_UNKNOWN_ANNOTATION] = "true"
    obj["spec"]["driver"]["someNewerUpstreamField"] = True
    snap = types.SimpleNamespace(policies={obj["metadata"]["name"]: obj}, nodes={})
    assert versions_report(snap)["cluster"]["policy"] == obj["metadata"]["name"]
    cluster = Cluster(snapshot=snap, nodes=[], pods=[], events=[], namespace="gpu-operator")  # type: ignore[arg-type]
    name, spec = policy(cluster)
    assert name == obj["metadata"]["name"] and spec is not None
