"""The e2e node model (e2e/nodemodel.py, e2e/advertise.py) fed our own rendered DaemonSets (`gpu-operator render`
of the samples): the whole stack starts for every sample policy and for NVIDIADriver-owned drivers, and a spec
broken in one fact that upstream's components depend on does not start, as it would not on a real node. The e2e
suite plays every operand through this model, so it must be neither laxer nor stricter than a node."""

from __future__ import annotations

import contextlib
import copy
import io
from pathlib import Path
from typing import Any

import pytest
import yaml
from e2e import advertise as adv
from e2e.cluster.nodes import PROFILES, gfd_labels, make_node
from e2e.nodemodel import (
    Handler,
    NodeModel,
    World,
    _uid,
    check_rendered,
    new_host,
    offline_dry_run,
    pod_status,
    read_container,
    ready,
    runtime_of,
    toolkit_plan,
    uses_gpu,
)
from e2e.sim_mig import MigSim

from gpu_operator import sharing
from gpu_operator.cli import main as cli_main
from gpu_operator.mig import PAUSED
from gpu_operator.render import plan
from support import SAMPLE_NODES, SAMPLES, load_scenario, objects

V = "/run/nvidia/validations"
NODE = "gpu-h100-a"
DEPLOY = "nvidia.com/gpu.deploy."
PAUSED_DRIVER = "paused-for-driver-upgrade"
DRIVER_DS = "nvidia-driver-daemonset-ubuntu22.04"
FOUR = {f"{V}/driver-ready", f"{V}/toolkit-ready", f"{V}/cuda-ready", f"{V}/plugin-ready"}
PCI = "feature.node.kubernetes.io/pci-10de.present"


def _render(policy: Path) -> list[dict[str, Any]]:
    """`gpu-operator render` of a sample, with the ConfigMaps the sample file holds (render prints only ours)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = cli_main(["render", "--policy", str(policy), "--nodes", str(SAMPLE_NODES)])
    assert rc == 0
    given = [d for d in yaml.safe_load_all(policy.read_text()) if d and d.get("kind") == "ConfigMap"]
    return [d for d in yaml.safe_load_all(out.getvalue()) if d] + given


def _nodes() -> list[dict[str, Any]]:
    return [n for n in yaml.safe_load(SAMPLE_NODES.read_text())["items"] if n["metadata"]["labels"].get(PCI) == "true"]


def _node() -> dict[str, Any]:
    return next(n for n in _nodes() if n["metadata"]["name"] == NODE)


def _ds(docs: list[dict[str, Any]], prefix: str) -> dict[str, Any]:
    found = [d for d in docs if d.get("kind") == "DaemonSet" and d["metadata"]["name"].startswith(prefix)]
    assert found, prefix
    return found[0]


def _ctr(ds: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in ds["spec"]["template"]["spec"]["containers"] if c["name"] == name)


def _run(docs: list[dict[str, Any]], node: dict[str, Any] | None = None) -> tuple[Any, dict[str, bool]]:
    model, result, pods = check_rendered(copy.deepcopy(docs), node or _node())
    readiness = {p["metadata"]["name"]: ready(pod_status(p, result.statuses[_uid(p)], None, "")) for p in pods}
    return model, readiness


def _default() -> list[dict[str, Any]]:
    return _render(SAMPLES / "clusterpolicy-default.yaml")


# --- the rendered stacks start ---

@pytest.mark.parametrize("policy", sorted(p.name for p in SAMPLES.glob("clusterpolicy-*.yaml")))
def test_every_sample_policy_starts_the_whole_stack_on_every_gpu_node(policy: str) -> None:
    docs = _render(SAMPLES / policy)
    for node in _nodes():
        model, readiness = _run(docs, node)
        assert all(readiness.values()), (node["metadata"]["name"], readiness, [str(f) for f in model.diagnose()])
        assert FOUR <= set(model.host.files) and model.diagnose() == []


@pytest.mark.parametrize("overlay", [
    {"gds": {"enabled": True}, "driver": {"kernelModuleType": "open"}},
    {"gdrcopy": {"enabled": True}},
    {"driver": {"rdma": {"enabled": True}}},
])
def test_driver_features_reach_ctr_ready_and_the_stack_still_starts(overlay: dict[str, Any], tmp_path: Path) -> None:
    """The startup probe lists GDS/GDRCopy/RDMA in .driver-ctr-ready from the driver container's env; the
    validator's driver check then waits for each module (validateAdditionalDriverComponents), which the driver
    pod's sidecars load: the whole stack still starts on every GPU node of the sample."""
    docs = [d for d in yaml.safe_load_all((SAMPLES / "clusterpolicy-default.yaml").read_text()) if d]
    for d in docs:
        if d.get("kind") == "ClusterPolicy":
            for k, v in overlay.items():
                d["spec"][k] = {**(d["spec"].get(k) or {}), **v}
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump_all(docs))
    rendered = _render(policy)
    for node in _nodes():
        model, readiness = _run(rendered, node)
        assert readiness and all(readiness.values()), (readiness, [str(f) for f in model.diagnose()])
        assert FOUR <= set(model.host.files)


def test_nvidiadriver_owned_drivers_start_the_whole_stack() -> None:
    """The NVIDIADriver scenario (useNvidiaDriverCRD: a default driver, one per pool, a precompiled one)."""
    context = load_scenario("nvidiadrivers").context()
    docs = objects(plan(context))
    for facts in context.nodes:
        if facts.labels.get(PCI) != "true":
            continue
        node = {"metadata": {"name": facts.name, "labels": dict(facts.labels)},
                "status": {"nodeInfo": {"containerRuntimeVersion": facts.runtime}}}
        model, readiness = _run(docs, node)
        assert all(readiness.values()), (facts.name, readiness, [str(f) for f in model.diagnose()])
        assert FOUR <= set(model.host.files)


def test_the_command_line_tool_checks_every_gpu_node_the_operator_sees(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`python -m e2e.nodemodel` checked only the nodes labelled pci-10de.present and passed over, without a word,
    a GPU node stock NFD labelled (deviceLabelFields [class, vendor]: pci-0302_10de.present) or one with only the
    device-ID label ([class, vendor, device]), which the render deploys to all the same. It now takes the GPU nodes
    the operator takes (NodeFacts.has_gpu)."""
    from e2e.nodemodel import main as nodemodel_main

    nodes = yaml.safe_load(SAMPLE_NODES.read_text())
    only = {"gpu-h100-a": "pci-0302_10de.present", "gpu-h100-b": "pci-0302_10de_2330.present"}
    for node in nodes["items"]:
        labels = node["metadata"]["labels"]
        if node["metadata"]["name"] in only:
            for k in [k for k in labels if "/pci-" in k]:
                del labels[k]
            labels["feature.node.kubernetes.io/" + only[node["metadata"]["name"]]] = "true"
    nodes_file, rendered = tmp_path / "nodes.yaml", tmp_path / "out.yaml"
    nodes_file.write_text(yaml.safe_dump(nodes))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli_main(["render", "--policy", str(SAMPLES / "clusterpolicy-default.yaml"),
                         "--nodes", str(nodes_file)]) == 0  # fmt: skip
    rendered.write_text(out.getvalue())
    capsys.readouterr()
    assert nodemodel_main([str(rendered), "--nodes", str(nodes_file)]) == 0
    checked = [line.split()[1] for line in capsys.readouterr().out.splitlines() if line.startswith("node ")]
    assert checked == ["gpu-h100-a", "gpu-h100-b", "gpu-a100-a"], checked


@pytest.mark.parametrize("where", ["nodes", "policy"])
def test_the_command_line_tool_reads_the_configmaps_of_the_files_render_reads(
    where: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """README's offline check, `render --policy P.yaml --nodes N.yaml > out.yaml && python -m e2e.nodemodel out.yaml
    --nodes N.yaml --policy P.yaml`: render takes the ConfigMaps of either file for the operand namespace's but
    prints only its own objects, and the model took ConfigMaps only from out.yaml. So the time-slicing sample,
    rendered fine (exit 0), had every GPU node reported stuck on 'ConfigMap "time-slicing-config" not found', exit
    1: a deadlock that does not exist. Now the model reads the ConfigMaps of --nodes and --policy too. (review
    newcomer #3)"""
    from e2e.nodemodel import main as nodemodel_main

    sample = [d for d in yaml.safe_load_all((SAMPLES / "clusterpolicy-time-slicing.yaml").read_text()) if d]
    policy = [d for d in sample if d["kind"] == "ClusterPolicy"]
    config_maps = [d for d in sample if d["kind"] == "ConfigMap"]
    assert config_maps and policy
    nodes = yaml.safe_load(SAMPLE_NODES.read_text())
    policy_file, nodes_file, rendered = tmp_path / "p.yaml", tmp_path / "n.yaml", tmp_path / "out.yaml"
    policy_file.write_text(yaml.safe_dump_all(policy + (config_maps if where == "policy" else [])))
    nodes_file.write_text(yaml.safe_dump_all([nodes, *(config_maps if where == "nodes" else [])]))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli_main(["render", "--policy", str(policy_file), "--nodes", str(nodes_file)]) == 0
    assert "config-manager" in out.getvalue()  # the device plugin is rendered with the sharing config
    rendered.write_text(out.getvalue())
    capsys.readouterr()
    rc = nodemodel_main([str(rendered), "--nodes", str(nodes_file), "--policy", str(policy_file)])
    report = capsys.readouterr().out
    stuck = [line.strip()[:160] for line in report.splitlines() if line.strip().startswith("stuck:")]
    assert rc == 0 and not stuck, (rc, stuck[:2])


# --- the driver ---

def test_driver_root_reaches_the_host_only_through_a_bidirectional_mount() -> None:
    """The driver container mounts its root file system at /run/nvidia/driver in its own mount namespace
    (nvidia-driver's _mount_rootfs: mount --rbind / /run/nvidia/driver); only `mountPropagation: Bidirectional` on
    its /run/nvidia mount (upstream assets/state-driver/0500_daemonset.yaml) carries that mount to the host, where
    the validator, the toolkit and the runtime look for the driver. The model wrote the driver's files to the host
    whatever the propagation: a driver DaemonSet without Bidirectional started the whole stack."""
    docs = _default()
    for m in _ctr(_ds(docs, "nvidia-driver-daemonset-ubuntu22.04"), "nvidia-driver-ctr")["volumeMounts"]:
        if m["mountPath"] == "/run/nvidia":
            m.pop("mountPropagation", None)  # None: the rbind stays in the container
    model, readiness = _run(docs)
    assert f"{V}/driver-ready" not in model.host.files and not model.host.has("/run/nvidia/driver")
    assert readiness["nvidia-driver-daemonset-ubuntu22.04-gpu-h100-a"]  # it runs; its root just never shows
    assert not readiness["nvidia-operator-validator-gpu-h100-a"]
    texts = [f.text for f in model.diagnose()]
    assert any("nvidia-driver-ctr" in t and "not Bidirectional" in t for t in texts), texts
    assert any("waits for /run/nvidia/driver/usr/bin/nvidia-smi; no pod on the node provides it" in t
               for t in texts), texts



def test_driver_ready_for_a_driver_container_names_its_root_as_the_dev_root() -> None:
    """The model wrote the host's root (`/`, seen at /host) as the dev root of a driver container. Upstream's
    getDriverInfo (cmd/nvidia-validator/driver.go) takes the dev root from the driver root when that holds a `dev`
    directory (internal/driver/root.go isDevRoot), and the driver container rbinds its whole root, /dev included, to
    /run/nvidia/driver: driver-ready reads NVIDIA_DEV_ROOT=/run/nvidia/driver, DEV_ROOT_CTR_PATH=/driver-root (as
    e2e/test_toolkit_real.py's DRIVER_READY does)."""
    model, _ = _run(_default())
    content = model.host.files[f"{V}/driver-ready"]
    ready = dict(line.split("=", 1) for line in content.splitlines())
    assert ready == {"IS_HOST_DRIVER": "false", "NVIDIA_DRIVER_ROOT": "/run/nvidia/driver",
                     "DRIVER_ROOT_CTR_PATH": "/driver-root", "NVIDIA_DEV_ROOT": "/run/nvidia/driver",
                     "DEV_ROOT_CTR_PATH": "/driver-root"}, ready  # fmt: skip


# --- the toolkit installer ---

def test_toolkit_without_host_pid_cannot_signal_containerd() -> None:
    """nvidia-ctk-installer's containerd restart mode `signal` (the default) reads containerd's pid from the
    socket's SCM_CREDENTIALS and kill(pid, SIGHUP)s it (nvidia-container-toolkit
    cmd/nvidia-ctk-installer/container/runtime/containerd/containerd_linux.go SignalContainerd). Outside the host's
    PID namespace the pid reads 0: the SIGHUP goes to the installer's own process group, it exits 0 ("Signal
    received, exiting early") and containerd never loads the `nvidia` handlers. Upstream's toolkit pod has
    `hostPID: true` (assets/state-container-toolkit/0500_daemonset.yaml). The model added the handlers without
    looking at hostPID."""
    docs = _default()
    _ds(docs, "nvidia-container-toolkit-daemonset")["spec"]["template"]["spec"].pop("hostPID", None)
    model, result, pods = check_rendered(copy.deepcopy(docs), _node())
    assert set(model.host.handlers) == {"runc"} and model.host.has("/etc/containerd/config.toml")
    toolkit = next(p for p in pods if p["metadata"]["name"].startswith("nvidia-container-toolkit-daemonset"))
    [cs] = pod_status(toolkit, result.statuses[_uid(toolkit)], None, "")["containerStatuses"]
    assert cs["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    assert cs["lastState"]["terminated"]["exitCode"] == 0
    assert not any(ready(pod_status(p, result.statuses[_uid(p)], None, "")) for p in pods
                   if p["spec"].get("runtimeClassName"))
    assert any("without hostPID" in t for t in model.toolkit_notes())


@pytest.mark.parametrize(("mode", "note", "error"), [
    ("none", "containerd is not restarted", ""),
    ("bogus", "", "unable to restart containerd: invalid restart mode specified: bogus"),
])
def test_toolkit_restart_mode_none_or_unknown_configures_no_handler(mode: str, note: str, error: str) -> None:
    """nvidia-ctk-installer's Options.Restart (cmd/nvidia-ctk-installer/container/container.go):
    RUNTIME_RESTART_MODE=none only logs "Skipping restart of containerd", and containerd reads its config only at
    start or on the signal, so the `nvidia` handler is never loaded; an unknown mode fails the installer ("invalid
    restart mode specified"). No pod with runtimeClassName nvidia gets a sandbox on a real node, while the model
    added the handlers for any mode but `signal` and started the whole stack (review nodemodel2 #1)."""
    docs = _default()
    toolkit = _ds(docs, "nvidia-container-toolkit-daemonset")
    _ctr(toolkit, "nvidia-container-toolkit-ctr").setdefault("env", []).append(
        {"name": "RUNTIME_RESTART_MODE", "value": mode})
    model, readiness = _run(docs)
    assert set(model.host.handlers) == {"runc"}, sorted(model.host.handlers)
    assert readiness[f"nvidia-device-plugin-daemonset-{NODE}"] is False, readiness
    assert any((note or error) in t for t in model.toolkit_notes()), model.toolkit_notes()
    if mode == "none":  # it wrote the config all the same, and keeps running
        assert model.host.files["/etc/containerd/config.toml"] == "nvidia runtimes"
        assert readiness[f"nvidia-container-toolkit-daemonset-{NODE}"] is True


def test_toolkit_cannot_restart_crio_by_signal() -> None:
    """cri-o's restart has no signal mode (crio.go RestartCrio: "supporting crio via signal is unsupported"): the
    installer fails and cri-o gets no handler; its default `systemd` works through the host root."""
    node = make_node("gpu-crio", "h100x8", runtime="crio")
    host = new_host("gpu-crio", runtime_of(node))
    pod = {"metadata": {"name": "t", "namespace": "gpu-operator"},
           "spec": {"volumes": [{"name": "host-root", "hostPath": {"path": "/"}},
                                {"name": "crio", "hostPath": {"path": "/etc/crio/crio.conf.d"}}]}}
    ctr = {"name": "c", "volumeMounts": [{"name": "host-root", "mountPath": "/host"},
                                         {"name": "crio", "mountPath": "/etc/crio/crio.conf.d"}]}
    env = {"RUNTIME": "crio", "CRIO_CONFIG_MODE": "config"}
    read = read_container(pod, ctr, False, 0, World(), "gpu-crio")
    assert [h.name for h in toolkit_plan(pod, read, host, env).handlers][:1] == ["nvidia"]
    plan = toolkit_plan(pod, read, host, {**env, "RUNTIME_RESTART_MODE": "signal"})
    assert plan.error == "unable to restart crio: supporting crio via signal is unsupported" and not plan.handlers


def test_toolkit_installed_outside_the_hosts_install_dir_leaves_the_handlers_without_their_binary(
        tmp_path: Path) -> None:
    """The installer copies nvidia-container-runtime and friends to <ROOT>/toolkit and names them by that path in
    containerd's config, so the host's installDir must be mounted at the same path (upstream's
    toolkit-install-dir; REFERENCE §11 item 2). Without it containerd's `nvidia` handlers exec a file the host does
    not have and no pod of their runtime classes starts. The model loaded working handlers whatever ROOT was."""
    docs = _default()
    toolkit = _ds(docs, "nvidia-container-toolkit-daemonset")
    spec = toolkit["spec"]["template"]["spec"]
    ctr = _ctr(toolkit, "nvidia-container-toolkit-ctr")
    ctr["volumeMounts"] = [m for m in ctr["volumeMounts"] if m["name"] != "toolkit-install-dir"]
    spec["volumes"] = [v for v in spec["volumes"] if v["name"] != "toolkit-install-dir"]
    model, result, pods = check_rendered(copy.deepcopy(docs), _node())
    assert model.host.handlers["nvidia"].missing == "/usr/local/nvidia/toolkit/nvidia-container-runtime"
    assert f"{V}/cuda-ready" not in model.host.files and result.gpus is None
    validator = next(p for p in pods if p["metadata"]["name"].startswith("nvidia-operator-validator"))
    assert pod_status(validator, result.statuses[_uid(validator)], None, "")["phase"] == "Pending"
    [event] = [e for e in result.events if e.pod is validator]
    assert event.reason == "FailedCreatePodSandBox" and event.message.endswith(
        "fork/exec /usr/local/nvidia/toolkit/nvidia-container-runtime: no such file or directory: unknown")
    assert any("in the container only" in t for t in model.toolkit_notes())
    # a non-default installDir, mounted at its own path, is the host's: the stack starts
    policy = yaml.safe_load((SAMPLES / "clusterpolicy-default.yaml").read_text())
    policy["spec"].setdefault("toolkit", {})["installDir"] = "/opt/nvidia"
    moved = tmp_path / "policy.yaml"
    moved.write_text(yaml.safe_dump(policy))
    model, readiness = _run(_render(moved))
    assert all(readiness.values()) and not model.host.handlers["nvidia"].missing


def test_a_custom_runtime_class_starts_the_whole_stack_on_a_crio_node(tmp_path: Path) -> None:
    """operator.runtimeClass nvidia-gpu on a cri-o GPU node (CDI on): the validator and the operands carry
    runtimeClassName nvidia-gpu, so the cri-o toolkit must add a handler of that name. It added `nvidia` (no
    NVIDIA_RUNTIME_NAME) and every runtime-class pod stayed in FailedCreatePodSandBox (review handshake #1)."""
    node = make_node("gpu-crio", "h100x8", runtime="crio")
    docs = [d for d in yaml.safe_load_all((SAMPLES / "clusterpolicy-default.yaml").read_text()) if d]
    for d in docs:
        if d.get("kind") == "ClusterPolicy":
            d["spec"].setdefault("operator", {})["runtimeClass"] = "nvidia-gpu"
    policy, nodes = tmp_path / "policy.yaml", tmp_path / "nodes.yaml"
    policy.write_text(yaml.safe_dump_all(docs))
    nodes.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": [node]}))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli_main(["render", "--policy", str(policy), "--nodes", str(nodes)]) == 0
    model, readiness = _run([d for d in yaml.safe_load_all(out.getvalue()) if d], node)
    assert readiness and all(readiness.values()), (readiness, [str(f) for f in model.diagnose()][:2])
    assert "nvidia-gpu" in model.host.handlers


# --- DCGM ---

@pytest.mark.parametrize("name", ["nvidia-dcgm-exporter", "nvidia-dcgm"])
def test_dcgm_and_its_exporter_do_not_start_without_the_nvidia_runtime(name: str) -> None:
    """dcgm-exporter (its embedded host engine) and nv-hostengine load NVML at start, which needs the driver's
    libraries the NVIDIA runtime injects (REFERENCE §11: both run with runtimeClassName nvidia). The model let them
    run without it, so the e2e suite would have passed a render that dropped their runtime class."""
    docs = _render(SAMPLES / "clusterpolicy-mig-mixed.yaml")  # standalone DCGM on
    (ds,) = [d for d in docs if d.get("kind") == "DaemonSet" and d["metadata"]["name"] == name]
    ds["spec"]["template"]["spec"].pop("runtimeClassName")
    model, readiness = _run(docs)
    assert readiness[f"{name}-{NODE}"] is False
    assert any("gets no GPUs" in f.text for f in model.diagnose()), model.diagnose()


# --- the kubelet ---

def test_a_hostpath_of_type_directory_the_host_lacks_keeps_the_pod_from_starting() -> None:
    """The kubelet checks a hostPath volume's `type` before it starts the pod: `Directory` (also File, Socket,
    CharDevice, BlockDevice) on a path the host does not have fails the mount (FailedMount "hostPath type check
    failed: /usr/local/nvidia is not a directory") and the pod stays in ContainerCreating; only
    DirectoryOrCreate/FileOrCreate (or no type) let it start. On a fresh node nothing but the toolkit creates
    /usr/local/nvidia (its install dir). The model ignored hostPath types: a toolkit render with
    `type: Directory` on its install dir started the whole stack, where a real node deadlocks."""
    docs = _render(SAMPLES / "clusterpolicy-default.yaml")
    ds = _ds(docs, "nvidia-container-toolkit-daemonset")
    for v in ds["spec"]["template"]["spec"]["volumes"]:
        if v["name"] == "toolkit-install-dir":
            v["hostPath"]["type"] = "Directory"
    model, result, pods = check_rendered(copy.deepcopy(docs), _node())
    toolkit = f"nvidia-container-toolkit-daemonset-{NODE}"
    readiness = {p["metadata"]["name"]: ready(pod_status(p, result.statuses[_uid(p)], None, "")) for p in pods}
    assert readiness[toolkit] is False, readiness
    assert model.host.path_type("/usr/local/nvidia") is None  # the host never had it
    assert [(e.reason, e.message) for e in result.events if e.pod["metadata"]["name"] == toolkit] == [
        ("FailedMount", 'MountVolume.SetUp failed for volume "toolkit-install-dir" : hostPath type check failed: '
                        "/usr/local/nvidia is not a directory")]
    assert any("hostPath type check failed" in f.text for f in model.diagnose()), model.diagnose()
    # as rendered (no type) the runtime creates it, and the stack starts
    model, readiness = _run(_render(SAMPLES / "clusterpolicy-default.yaml"))
    assert model.host.path_type("/usr/local/nvidia") == "Directory" and all(readiness.values()), readiness


def test_the_fake_host_has_what_the_rendered_typed_hostpaths_need() -> None:
    """Every node has /sys, /dev/char, /etc/os-release, ...; an entitled RHEL node the subscription files its
    driver pod mounts (type Directory/File); /run/nvidia (type Directory for DCGM) only once a pod created it."""
    rhel = new_host("n", os_id="rhel")
    assert rhel.path_type("/etc/yum.repos.d/redhat.repo") == "File" and rhel.path_type("/etc/rhsm") == "Directory"
    plain = new_host("n")
    assert plain.path_type("/etc/rhsm") is None and plain.path_type("/sys/devices/system") == "Directory"
    assert plain.path_type("/var/lib/kubelet/device-plugins") == "Directory"  # it holds kubelet.sock
    assert plain.path_type("/var/lib/kubelet/device-plugins/kubelet.sock") == "Socket"
    assert plain.path_type("/run/nvidia") is None


# --- the sharing config ---

def _template_pod(docs: list[dict[str, Any]], prefix: str) -> dict[str, Any]:
    tpl = _ds(docs, prefix)["spec"]["template"]
    return {"metadata": dict(tpl["metadata"], name=prefix, uid=prefix), "spec": copy.deepcopy(tpl["spec"])}


@pytest.mark.parametrize("prefix,main", [("nvidia-device-plugin-daemonset", "nvidia-device-plugin"),
                                         ("gpu-feature-discovery", "gpu-feature-discovery")])
def test_sharing_config_applies_only_when_the_main_container_reads_the_file_config_manager_writes(
        prefix: str, main: str) -> None:
    """config-manager writes the selected config to CONFIG_FILE_DST (/config/config.yaml, an emptyDir it shares
    with the main container); the device plugin and GFD read it only as their CONFIG_FILE (--config-file, no
    default; k8s-device-plugin cmd/nvidia-device-plugin/main.go, cmd/gpu-feature-discovery/main.go), which
    upstream sets with the /config mount (controllers/object_controls.go handleDevicePluginConfig). Without either
    they run with no sharing config, but advertise.config_source read only the sidecar: the simulator advertised
    and labelled the time-slicing replicas anyway."""
    docs = _render(SAMPLES / "clusterpolicy-time-slicing.yaml")
    assert adv.config_source(_template_pod(docs, prefix)) is not None  # as rendered: the config applies

    no_env = _template_pod(docs, prefix)
    ctr = next(c for c in no_env["spec"]["containers"] if c["name"] == main)
    ctr["env"] = [e for e in ctr["env"] if e["name"] != "CONFIG_FILE"]
    assert adv.config_source(no_env) is None

    no_mount = _template_pod(docs, prefix)
    ctr = next(c for c in no_mount["spec"]["containers"] if c["name"] == main)
    ctr["volumeMounts"] = [m for m in ctr["volumeMounts"] if m["mountPath"] != "/config"]
    assert adv.config_source(no_mount) is None  # its /config/config.yaml is its own, empty

    flag = _template_pod(docs, prefix)  # --config-file is the same setting
    ctr = next(c for c in flag["spec"]["containers"] if c["name"] == main)
    ctr["env"] = [e for e in ctr["env"] if e["name"] != "CONFIG_FILE"]
    ctr["args"] = [*(ctr.get("args") or []), "--config-file=/config/config.yaml"]
    assert adv.config_source(flag) is not None


def test_a_label_naming_a_missing_key_leaves_a_running_pod_its_config() -> None:
    """config-manager fails before it touches /config/config.yaml when the node label names a key the ConfigMap
    lacks (cmd/config-manager/main.go updateConfig: "specified config X does not exist"; the sidecar exits and
    restarts), so the running plugin keeps advertising the config it loaded. The simulator (_config_of) answered
    the error instead, and the node's GPUs dropped to 0 in the e2e cluster on a mistyped label."""
    import threading

    from e2e.nodemodel import World
    from e2e.simulator import NodeSimulator

    docs = _render(SAMPLES / "clusterpolicy-time-slicing.yaml")
    pod = _template_pod(docs, "nvidia-device-plugin-daemonset")
    data = next(d for d in docs if d.get("kind") == "ConfigMap" and d["metadata"]["name"] == "time-slicing-config")
    sim = NodeSimulator.__new__(NodeSimulator)
    sim.namespace, sim._lock, sim._configs = "gpu-operator", threading.Lock(), {}
    world = World(config_maps={("gpu-operator", "time-slicing-config"): {**data["data"], "bad": "version: v2"}})
    label = sharing.NODE_LABEL
    assert "does not exist" in sim._config_of(pod, {label: "typo"}, world).error  # at pod start: nothing loaded
    loaded = sim._config_of(pod, {label: "h100"}, world)
    assert loaded.key == "h100" and not loaded.error
    assert sim._config_of(pod, {label: "typo"}, world) == loaded
    assert sim._configs[pod["metadata"]["uid"]][0] == "h100"  # the failed selection is retried
    assert sim._config_of(pod, {label: "any"}, world).key == "any"  # a key that exists is loaded
    assert "unknown version" in sim._config_of(pod, {label: "bad"}, world).error  # loaded, and the plugin fails


# --- k8s-driver-manager (cmd/driver-manager/main.go uninstallDriver), stepped with the node's labels ---

class _Stack:
    """One node of the sample, its rendered operand pods and the node's labels, stepped like the simulator does
    (the manager's label patch is written back; ``reschedule`` plays the DaemonSet controller)."""

    def __init__(self, host_driver: str | None = None) -> None:
        self.docs = _render(SAMPLES / "clusterpolicy-default.yaml")
        node = _node()
        self.labels: dict[str, str] = dict(node["metadata"].get("labels") or {})
        for d in self.docs:
            if d.get("kind") == "Node" and d["metadata"].get("name") == NODE:
                self.labels.update({k: v for k, v in (d["metadata"].get("labels") or {}).items() if v is not None})
        self.daemonsets = [d for d in self.docs if d.get("kind") == "DaemonSet"]
        for d in self.daemonsets:
            d["metadata"].setdefault("namespace", "gpu-operator")
        self.world = World(
            runtime_classes={d["metadata"]["name"]: d.get("handler", "") for d in self.docs
                             if d.get("kind") == "RuntimeClass"},
            config_maps={(d["metadata"].get("namespace") or "gpu-operator", d["metadata"]["name"]): d.get("data") or {}
                         for d in self.docs if d.get("kind") == "ConfigMap"},
            daemonsets=self.daemonsets, dry_run=offline_dry_run)
        self.model = NodeModel(new_host(NODE, runtime_of(node), 8, host_driver))
        self.pods: dict[str, dict[str, Any]] = {}
        self.generation = 0
        self.t = 0.0
        self.result: Any = None
        self.annotations: dict[str, str] = {}
        self.reschedule()

    def _selected(self, ds: dict[str, Any]) -> bool:
        selector = ds["spec"]["template"]["spec"].get("nodeSelector") or {}
        return all(self.labels.get(k) == v for k, v in selector.items())

    def reschedule(self) -> None:
        """The DaemonSet controller: a pod for each DaemonSet selecting the node, none for the others."""
        for ds in self.daemonsets:
            name = f"{ds['metadata']['name']}-{NODE}"
            if self._selected(ds) and name not in self.pods:
                self.pods[name] = self.pod(ds, name)
            elif not self._selected(ds):
                self.pods.pop(name, None)

    def pod(self, ds: dict[str, Any], name: str) -> dict[str, Any]:
        self.generation += 1
        tpl = copy.deepcopy(ds["spec"]["template"])
        return {"apiVersion": "v1", "kind": "Pod",
                "metadata": {**tpl["metadata"], "name": name, "namespace": ds["metadata"]["namespace"],
                             "uid": f"{name}/{self.generation}", "creationTimestamp": "1970-01-01T00:00:00Z",
                             "ownerReferences": [{"kind": "DaemonSet", "name": ds["metadata"]["name"],
                                                  "controller": True}]},
                "spec": {**tpl["spec"], "nodeName": NODE}}

    def driver_ds(self) -> dict[str, Any]:
        return next(d for d in self.daemonsets if d["metadata"]["name"] == DRIVER_DS)

    def new_driver_pod(self, manager_env: dict[str, str] | None = None) -> str:
        """The upgrade: the old driver pod is deleted, the DaemonSet makes a new one (the manager's env as a user
        sets it through driver.manager.env)."""
        ds = copy.deepcopy(self.driver_ds())
        manager = ds["spec"]["template"]["spec"]["initContainers"][0]
        assert manager["name"] == "k8s-driver-manager"
        for k, v in (manager_env or {}).items():
            manager["env"] = [e for e in manager["env"] if e["name"] != k] + [{"name": k, "value": v}]
        old = f"{DRIVER_DS}-{NODE}"
        self.pods.pop(old)
        self.step()
        self.pods[old] = self.pod(ds, old)
        return old

    def step(self, dt: float = 1.0) -> dict[str, dict[str, Any]]:
        self.t += dt
        self.result = self.model.step(list(self.pods.values()), self.world, self.t, wall_now=self.t,
                                      labels=dict(self.labels), annotations=self.annotations)
        self.labels.update(self.result.labels)
        statuses = {}
        for name, pod in self.pods.items():
            run = self.result.statuses.get(_uid(pod))
            if run is not None:
                pod["status"] = statuses[name] = pod_status(pod, run, "10.0.0.1", "1970-01-01T00:00:00Z")
        return statuses

    def settle(self, rounds: int = 6) -> dict[str, dict[str, Any]]:
        for _ in range(rounds):
            self.step()
            self.reschedule()
        return self.step()

    def manager_state(self) -> tuple[str, dict[str, Any]]:
        st = self.pods[f"{DRIVER_DS}-{NODE}"]["status"]
        cs = next(c for c in st["initContainerStatuses"] if c["name"] == "k8s-driver-manager")
        kind, detail = next(iter(cs["state"].items()))
        return kind, detail


CONFIG_DIGEST = "DRIVER_CONFIG_DIGEST"
RS_OWNER = [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "training-5d8f", "controller": True}]
DS_OWNER = [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "gpu-agent", "controller": True}]


def _new_config(stack: _Stack) -> None:
    """The driver DaemonSet's install-relevant config changes (a new driver version): a new DRIVER_CONFIG_DIGEST on
    the manager and the driver container, as the operator renders it, so the manager takes the full uninstall path."""
    pod = stack.driver_ds()["spec"]["template"]["spec"]
    for c in pod["initContainers"] + pod["containers"]:
        if any(e["name"] == CONFIG_DIGEST for e in c.get("env") or []):
            c["env"] = [e for e in c["env"] if e["name"] != CONFIG_DIGEST] + [{"name": CONFIG_DIGEST,
                                                                              "value": "0123456789abcdef"}]


def _started_stack() -> _Stack:
    stack = _Stack()
    statuses = stack.settle()
    assert all(ready(s) for s in statuses.values()), {n: ready(s) for n, s in statuses.items()}
    assert stack.model.host.driver_loaded
    return stack


def _gpu_workload(name: str, namespace: str = "default", **extra: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "uid": f"{name}/1",
                         "creationTimestamp": "1970-01-01T00:00:00Z", "labels": {"app": name}, **extra},
            "spec": {"nodeName": NODE, "containers": [
                {"name": "cuda", "image": "nvcr.io/nvidia/cuda:12.8.0-base-ubuntu22.04",
                 "command": ["sleep", "infinity"], "resources": {"limits": {"nvidia.com/gpu": 1}}}]}}


def test_a_host_driver_makes_the_manager_label_the_node_pre_installed_and_the_driver_pod_not_start() -> None:
    """The model's manager had no isHostDriver check: on a host with a driver it completed, the driver container
    started and put its own driver at /run/nvidia/driver, and GFD reported that one. Upstream's (`chroot /host
    nvidia-smi` answers) labels the node nvidia.com/gpu.deploy.driver=pre-installed and exits "driver is
    pre-installed on host", so the driver DaemonSet no longer selects the node (REFERENCE.md §3)."""
    stack = _Stack(host_driver="570.172.08")
    statuses = stack.step()
    assert stack.labels.get(DEPLOY + "driver") == "pre-installed"
    assert not ready(statuses[f"{DRIVER_DS}-{NODE}"])
    kind, detail = stack.manager_state()
    assert kind == "waiting" and stack.model.blockers()[f"{DRIVER_DS}-{NODE}"].message == \
        "driver is pre-installed on host", (kind, detail)
    stack.settle()
    assert f"{DRIVER_DS}-{NODE}" not in stack.pods  # (the DaemonSet controller took it away)
    assert stack.result.driver_version == "570.172.08"  # the host's driver, not a driver container's
    # offline (no labels) the container fails all the same
    model, result, pods = check_rendered(_render(SAMPLES / "clusterpolicy-default.yaml"), _node(),
                                         host_driver="570.172.08")
    driver = next(p for p in pods if p["metadata"]["name"].startswith(DRIVER_DS))
    assert not ready(pod_status(driver, result.statuses[_uid(driver)], None, ""))


def test_the_manager_cannot_unload_a_driver_a_gpu_pod_still_uses_when_eviction_is_off() -> None:
    """The model ignored GPU pods, ENABLE_GPU_POD_EVICTION, ENABLE_AUTO_DRAIN and the upgrade-enabled annotation:
    its unload always succeeded. With eviction and auto-drain off, upstream's delete_module fails (EBUSY) while a
    GPU pod holds /dev/nvidia*: "failed to uninstall nvidia driver components", the labels set back
    (cleanupOnFailure), the init container crash-loops and the driver stays loaded (REFERENCE.md §10.6, §12.12)."""
    stack = _started_stack()
    stack.pods["training"] = _gpu_workload("training")
    stack.step()
    _new_config(stack)
    stack.new_driver_pod({"ENABLE_GPU_POD_EVICTION": "false", "ENABLE_AUTO_DRAIN": "false"})
    statuses = stack.settle()
    assert "training" in stack.pods and not stack.result.evict  # nothing deleted it
    kind, detail = stack.manager_state()
    assert not (kind == "terminated" and detail.get("exitCode") == 0), (kind, detail)
    assert not ready(statuses[f"{DRIVER_DS}-{NODE}"]) and stack.model.host.driver_loaded
    assert "driver is in use" in stack.model.blockers()[f"{DRIVER_DS}-{NODE}"].message
    assert stack.labels[DEPLOY + "device-plugin"] == "true"  # set back
    # once the GPU pod has gone, the next try unloads it
    del stack.pods["training"]
    assert all(ready(s) for s in stack.settle().values())


def test_with_gpu_pod_eviction_on_the_manager_deletes_the_gpu_pods_before_it_unloads() -> None:
    """The rendered default (ENABLE_GPU_POD_EVICTION=true, no upgrade-enabled annotation): upstream deletes the GPU
    pods (nvDrainNode) and unloads only once they are gone; the model unloaded under the running GPU pod. With the
    annotation "true" the operator's upgrade policy evicts instead, and the manager fails while one is left."""
    stack = _started_stack()
    # (a pod no controller owns is refused by the drain without DRAIN_USE_FORCE)
    stack.pods["training"] = _gpu_workload("training", ownerReferences=copy.deepcopy(RS_OWNER))
    stack.step()
    _new_config(stack)
    stack.new_driver_pod()
    stack.settle()
    assert [p["metadata"]["name"] for p in stack.result.evict] == ["training"]
    blocked = stack.model.blockers().get(f"{DRIVER_DS}-{NODE}")
    assert blocked is not None and blocked.kind == "evict" and "training" in blocked.target, blocked
    assert stack.model.host.driver_loaded
    del stack.pods["training"]  # (deleted, as the simulator does)
    assert all(ready(s) for s in stack.settle().values())
    # the upgrade policy's annotation: the manager evicts nothing
    stack = _started_stack()
    stack.annotations = {"nvidia.com/gpu-driver-upgrade-enabled": "true"}
    stack.pods["training"] = _gpu_workload("training")
    stack.step()
    _new_config(stack)
    stack.new_driver_pod()
    stack.settle()
    assert not stack.result.evict and "driver is in use" in stack.model.blockers()[f"{DRIVER_DS}-{NODE}"].message


def test_the_manager_waits_for_daemonset_pods_that_select_the_client_deploy_label() -> None:
    """The manager pauses nvidia.com/gpu.deploy.client (set by the operator for third-party GPU clients) and
    upstream then waits (WaitForPodsWithNodeSelector, any namespace) for every DaemonSet pod on the node whose
    nodeSelector has that key; the model paused it but never waited, so it unloaded under a running client."""
    stack = _started_stack()
    assert stack.labels.get(DEPLOY + "client") == "true"
    client = _gpu_workload("acme-gpu-agent-x1", namespace="acme",
                           ownerReferences=[{"kind": "DaemonSet", "name": "acme-gpu-agent", "controller": True}])
    client["spec"]["nodeSelector"] = {DEPLOY + "client": "true"}
    stack.pods["acme"] = client
    stack.step()
    stack.new_driver_pod()
    for _ in range(4):  # (the DaemonSet controller of `acme` has not deleted it yet)
        stack.step()
        stack.reschedule()
    blocked = stack.model.blockers().get(f"{DRIVER_DS}-{NODE}")
    assert blocked is not None and "acme-gpu-agent-x1" in blocked.target, (blocked, stack.labels[DEPLOY + "client"])


def test_the_manager_pauses_and_restores_the_custom_eviction_label() -> None:
    """NODE_LABEL_FOR_GPU_POD_EVICTION (driver.manager.env) names a node label upstream's manager pauses with the
    operands' and sets back after the unload; the model never read it."""
    custom = "example.com/gpu-clients"
    stack = _started_stack()
    stack.labels[custom] = "true"
    stack.new_driver_pod({"NODE_LABEL_FOR_GPU_POD_EVICTION": custom})
    stack.step()
    assert stack.labels[DEPLOY + "device-plugin"] == PAUSED_DRIVER  # the operands are paused ...
    assert stack.labels[custom] == PAUSED_DRIVER  # ... and so is the custom label
    stack.settle()
    assert stack.labels[custom] == "true" and stack.labels[DEPLOY + "device-plugin"] == "true"


def test_an_unprivileged_manager_cannot_unload_the_driver() -> None:
    """delete_module(2) needs CAP_SYS_MODULE: upstream's manager is privileged (0500_daemonset.yaml), and without
    it exits "failed to uninstall nvidia driver components". The model checked privileged for the driver container
    and the module sidecars, not for the manager: it unloaded the driver anyway."""
    stack = _started_stack()
    ds = stack.driver_ds()
    ds["spec"]["template"]["spec"]["initContainers"][0]["securityContext"] = {}
    _new_config(stack)  # (a securityContext is not in the digest)
    stack.new_driver_pod()
    stack.settle()
    kind, detail = stack.manager_state()
    assert not (kind == "terminated" and detail.get("exitCode") == 0), (kind, detail)
    assert stack.model.host.driver_loaded and "operation not permitted" in \
        stack.model.blockers()[f"{DRIVER_DS}-{NODE}"].message


def test_the_manager_gives_up_on_operand_pods_that_stay_past_its_grace_sets_the_labels_back_and_retries() -> None:
    """The model's manager waited for the paused operands' pods forever. When another writer set their labels back
    to true while it waited (mig-manager's setState: maybeSetTrue of paused-for-driver-upgrade is "true"), their
    DaemonSets made pods again and the node deadlocked: the driver pod Init:0/1, toolkit and validator paused, the
    GPU operands waiting for validations (an e2e flake). Upstream's WaitForPodTermination waits each app's pods for
    defaultGracePeriod (5 min), then cleanupOnFailure sets the labels back from the values it read and the init
    container exits non-zero; its restart reads the labels again and pauses them again, so the node recovers."""
    stack = _started_stack()
    assert stack.model.manager_grace_seconds == 300  # upstream's defaultGracePeriod
    stack.model.manager_grace_seconds = 20
    stack.new_driver_pod()
    stack.step()
    assert stack.labels[DEPLOY + "container-toolkit"] == PAUSED_DRIVER
    # The race: someone else sets five of the operands back to true while the manager waits.
    five = {DEPLOY + op: "true" for op in ("device-plugin", "gpu-feature-discovery", "dcgm", "dcgm-exporter", "nvsm")}
    stack.labels.update(five)
    stack.reschedule()
    plugin = f"nvidia-device-plugin-daemonset-{NODE}"
    assert plugin in stack.pods and f"nvidia-container-toolkit-daemonset-{NODE}" not in stack.pods
    stack.step()
    for _ in range(3):  # before the grace period it keeps waiting, and says when to look again
        stack.step(5.0)
        blocked = stack.model.blockers()[f"{DRIVER_DS}-{NODE}"]
        assert blocked.kind == "evict" and plugin in blocked.target, blocked
        assert stack.manager_state()[0] == "running"
        assert stack.result.again is not None and 0 < stack.result.again <= 20
    assert stack.labels[DEPLOY + "container-toolkit"] == PAUSED_DRIVER
    # past it: the labels set back from what it read (all true), the init container fails
    statuses = stack.step(stack.result.again)
    read_true = [k for k in (*five, DEPLOY + "container-toolkit", DEPLOY + "operator-validator") if "nvsm" not in k]
    assert all(stack.labels[k] == "true" for k in read_true) and stack.labels[DEPLOY + "nvsm"] == ""  # as it read
    kind, detail = stack.manager_state()
    cs = next(c for c in statuses[f"{DRIVER_DS}-{NODE}"]["initContainerStatuses"] if c["name"] == "k8s-driver-manager")
    assert kind == "waiting" and detail["reason"] == "CrashLoopBackOff", (kind, detail)
    assert cs["lastState"]["terminated"]["message"] == \
        "failed to evict GPU operator components: context deadline exceeded"
    assert stack.model.host.driver_loaded
    assert stack.result.again == pytest.approx(stack.model.crash_restart_seconds)
    stack.reschedule()  # the DaemonSets make the operand pods again
    stack.step(stack.model.crash_restart_seconds / 2)
    assert stack.labels[DEPLOY + "container-toolkit"] == "true"  # not restarted yet
    # its restart reads the labels, pauses them again, waits for the pods to go, unloads and sets them back
    stack.step(stack.model.crash_restart_seconds)
    assert all(stack.labels[k] == PAUSED_DRIVER for k in read_true)
    statuses = stack.settle()
    assert all(stack.labels[k] == "true" for k in read_true)
    assert stack.manager_state()[0] == "terminated" and stack.model.host.driver_loaded  # unloaded, loaded anew
    assert all(ready(s) for s in statuses.values()), {n: ready(s) for n, s in statuses.items()}


def _workload(name: str, owners: list[dict[str, Any]], resource: str = "nvidia.com/gpu",
              empty_dir: bool = False) -> dict[str, Any]:
    pod = _gpu_workload(name, ownerReferences=copy.deepcopy(owners))
    pod["spec"]["containers"][0]["resources"] = {"limits": {resource: 1}}
    if empty_dir:  # the usual /dev/shm of a PyTorch pod
        pod["spec"]["volumes"] = [{"name": "dshm", "emptyDir": {"medium": "Memory"}}]
        pod["spec"]["containers"][0]["volumeMounts"] = [{"name": "dshm", "mountPath": "/dev/shm"}]
    return pod


def _manager_message(stack: _Stack) -> str:
    blocked = stack.model.blockers().get(f"{DRIVER_DS}-{NODE}")
    return blocked.message if blocked is not None else ""


def test_a_driver_pod_restart_with_the_same_config_digest_keeps_the_gpu_workloads_and_the_loaded_driver() -> None:
    """The model had no DRIVER_CONFIG_DIGEST: a new driver pod's manager always evicted the GPU pods and unloaded
    the driver, even for a pod deleted by hand or a change outside the digest. Upstream's driver container stores
    the digest in /run/nvidia/nvidia-driver.state (_store_driver_digest); a new pod with the same digest while the
    driver is loaded has its manager pause and wait for the operands only, then skip the eviction and the unload
    (shouldSkipUninstall), and the driver container installs the userspace only."""
    stack = _started_stack()
    stack.pods["training"] = _workload("training", RS_OWNER)
    stack.step()
    stack.new_driver_pod()  # same template: same DRIVER_CONFIG_DIGEST
    statuses = stack.settle()
    assert not stack.result.evict and "training" in stack.pods
    assert stack.manager_state()[0] == "terminated" and stack.model.host.driver_loaded
    assert all(ready(s) for s in statuses.values()), {n: ready(s) for n, s in statuses.items()}
    assert stack.model.host.files.get("/run/nvidia/nvidia-driver.state"), "the driver container stores its digest"
    # FORCE_REINSTALL takes the full path all the same
    stack.new_driver_pod({"FORCE_REINSTALL": "true"})
    stack.settle()
    assert [p["metadata"]["name"] for p in stack.result.evict] == ["training"]


def test_the_same_digest_under_the_upgrade_policy_does_not_crash_loop_on_driver_in_use() -> None:
    """The same fast path with nvidia.com/gpu-driver-upgrade-enabled=true: upstream's manager skips the unload and
    the restart completes beside the GPU workload; the model crash-looped "driver is in use" for ever."""
    stack = _started_stack()
    stack.annotations = {"nvidia.com/gpu-driver-upgrade-enabled": "true"}
    stack.pods["training"] = _workload("training", RS_OWNER)
    stack.step()
    stack.new_driver_pod()
    stack.settle()
    assert "driver is in use" not in _manager_message(stack), _manager_message(stack)
    assert stack.manager_state()[0] == "terminated"


@pytest.mark.parametrize("owners,empty_dir", [(RS_OWNER, True), (DS_OWNER, False)], ids=["emptydir", "daemonset"])
def test_gpu_pods_the_drain_helper_refuses_block_the_manager_instead_of_being_deleted(
        owners: list[dict[str, Any]], empty_dir: bool) -> None:
    """The model deleted every GPU pod. Upstream's nvDrainNode (DeleteOrEvictPods) runs kubectl's drain filters
    first: with the rendered DRAIN_DELETE_EMPTYDIR_DATA=false a GPU pod with an emptyDir is refused, and a
    DaemonSet-managed one is skipped (IgnoreAllDaemonSets); fewer can go than use GPUs, so with
    ENABLE_AUTO_DRAIN=false the labels are set back and the manager exits "cannot proceed until all GPU pods are
    drained from the node", nothing deleted and the driver still loaded."""
    stack = _started_stack()
    stack.pods["training"] = _workload("training", owners, empty_dir=empty_dir)
    stack.step()
    _new_config(stack)
    stack.new_driver_pod()
    stack.settle()
    assert not stack.result.evict, [p["metadata"]["name"] for p in stack.result.evict]
    assert "cannot proceed until all GPU pods are drained from the node" in _manager_message(stack), \
        _manager_message(stack)
    assert stack.model.host.driver_loaded and stack.labels[DEPLOY + "device-plugin"] == "true"


def test_a_manager_refused_by_one_gpu_pod_goes_on_once_that_pod_is_gone_though_others_remain() -> None:
    """The model ran a manager that failed "cannot proceed until all GPU pods are drained" again only once no GPU
    pod at all was left. Upstream's container restarts and runs nvDrainNode each time: once the refused pod (no
    controller, no DRAIN_USE_FORCE) is gone, DeleteOrEvictPods deletes the remaining ReplicaSet pod and unloads."""
    stack = _started_stack()
    stack.pods["training"] = _workload("training", RS_OWNER)
    stack.pods["bare"] = _workload("bare", [])  # no controller: refused without --force
    stack.step()
    _new_config(stack)
    stack.new_driver_pod()
    stack.settle()
    assert "cannot proceed until all GPU pods are drained" in _manager_message(stack), _manager_message(stack)
    del stack.pods["bare"]  # the admin deletes the pod the drain refused
    stack.step()
    stack.settle()
    assert [p["metadata"]["name"] for p in stack.result.evict] == ["training"], _manager_message(stack)


def test_a_failed_auto_drain_runs_again_once_the_pod_it_refused_is_gone() -> None:
    """Likewise "failed to drain node" (ENABLE_AUTO_DRAIN) was run again only with no GPU pod left: once the pod
    DrainNode refused is gone, the next restart drains the pods the selector picks."""
    stack = _started_stack()
    stack.pods["training"] = _workload("training", RS_OWNER)
    stack.pods["bare"] = _workload("bare", [])
    for p in ("training", "bare"):
        stack.pods[p]["metadata"]["labels"]["drain"] = "yes"
    stack.step()
    _new_config(stack)
    stack.new_driver_pod({"ENABLE_GPU_POD_EVICTION": "false", "ENABLE_AUTO_DRAIN": "true",
                          "DRAIN_POD_SELECTOR_LABEL": "drain=yes"})
    stack.settle()
    assert "failed to drain node: cannot delete Pods that declare no controller" in _manager_message(stack), \
        _manager_message(stack)
    del stack.pods["bare"]
    stack.step()
    stack.settle()
    assert [p["metadata"]["name"] for p in stack.result.evict] == ["training"], _manager_message(stack)


def test_a_manager_bool_env_set_empty_is_false_as_urfave_cli_reads_it() -> None:
    """The model took ENABLE_GPU_POD_EVICTION="" for its default (true) and deleted the GPU pod. urfave/cli v2's
    BoolFlag.Apply (vendor/github.com/urfave/cli/v2/flag_bool.go) reads a variable set to "" as false, so with
    auto-drain off too the real manager leaves the pod and fails "driver is in use"."""
    stack = _started_stack()
    stack.pods["training"] = _workload("training", RS_OWNER)
    stack.step()
    _new_config(stack)
    stack.new_driver_pod({"ENABLE_GPU_POD_EVICTION": "", "ENABLE_AUTO_DRAIN": "false"})
    stack.settle()
    assert not stack.result.evict, [p["metadata"]["name"] for p in stack.result.evict]
    assert "driver is in use" in _manager_message(stack), _manager_message(stack)


def test_a_manager_bool_env_that_is_not_a_go_bool_stops_it_before_it_runs() -> None:
    """The model read FORCE_REINSTALL=yes as true and took the full uninstall path, deleting the GPU pod.
    strconv.ParseBool refuses "yes": urfave/cli fails the flag and the manager exits before it does anything."""
    stack = _started_stack()
    stack.pods["training"] = _workload("training", RS_OWNER)
    stack.step()
    stack.new_driver_pod({"FORCE_REINSTALL": "yes"})  # same digest: only FORCE_REINSTALL would force the uninstall
    stack.settle()
    assert not stack.result.evict, [p["metadata"]["name"] for p in stack.result.evict]
    assert stack.model.host.driver_loaded
    assert 'could not parse "yes" as bool value from environment variable "FORCE_REINSTALL"' in \
        _manager_message(stack), _manager_message(stack)

def test_only_nvidia_gpu_and_mig_resources_make_a_gpu_pod() -> None:
    """uses_gpu took any nvidia.com/ resource; upstream's podUsesGPU only nvidia.com/gpu* and nvidia.com/mig-*, so
    a pod of NVIDIA's network operator (nvidia.com/rdma_shared_device_a, nvidia.com/hostdev) is no GPU pod."""
    rdma = _workload("rdma", RS_OWNER, resource="nvidia.com/rdma_shared_device_a")
    hostdev = _workload("hostdev", RS_OWNER, resource="nvidia.com/hostdev")
    mig = _workload("mig", RS_OWNER, resource="nvidia.com/mig-1g.10gb")
    shared = _workload("shared", RS_OWNER, resource="nvidia.com/gpu.shared")
    assert uses_gpu(mig) and uses_gpu(shared)
    assert not uses_gpu(rdma) and not uses_gpu(hostdev)


def test_an_rdma_only_pod_is_neither_evicted_nor_holds_the_driver() -> None:
    """The same through the manager: upstream finds no GPU pod to delete and unloads; the model deleted the RDMA
    workload first."""
    stack = _started_stack()
    stack.pods["rdma"] = _workload("rdma", RS_OWNER, resource="nvidia.com/rdma_shared_device_a")
    stack.step()
    _new_config(stack)
    stack.new_driver_pod()
    stack.settle()
    assert not stack.result.evict, [p["metadata"]["name"] for p in stack.result.evict]
    assert "rdma" in stack.pods and stack.manager_state()[0] == "terminated"


def test_auto_drain_is_a_full_node_drain_that_refuses_daemonset_pods() -> None:
    """The model treated ENABLE_AUTO_DRAIN as the up-front GPU pod eviction. Upstream (eviction off, auto-drain
    on) evicts nothing up front; the unload fails under the GPU pod, then DrainNode runs kubectl's drain without
    IgnoreAllDaemonSets over the pods DRAIN_POD_SELECTOR_LABEL selects (all by default), so the node's DaemonSet
    pods (the driver pod among them) refuse it before any pod goes: "failed to drain node". A selector that lets
    it through deletes every pod it selects and then unloads."""
    def labelled_stack() -> Any:
        """A GPU pod and a CPU pod labelled drain=yes, then a new driver config."""
        stack = _started_stack()
        stack.pods["training"] = _workload("training", RS_OWNER)
        stack.pods["web"] = _workload("web", RS_OWNER, resource="cpu")
        for p in ("training", "web"):
            stack.pods[p]["metadata"]["labels"]["drain"] = "yes"
        stack.step()
        _new_config(stack)
        return stack

    stack = labelled_stack()
    stack.new_driver_pod({"ENABLE_GPU_POD_EVICTION": "false", "ENABLE_AUTO_DRAIN": "true"})
    stack.settle()
    assert not stack.result.evict, [p["metadata"]["name"] for p in stack.result.evict]
    assert "failed to drain node: cannot delete DaemonSet-managed Pods" in _manager_message(stack), \
        _manager_message(stack)
    assert stack.model.host.driver_loaded
    stack = labelled_stack()
    stack.new_driver_pod({"ENABLE_GPU_POD_EVICTION": "false", "ENABLE_AUTO_DRAIN": "true",
                          "DRAIN_POD_SELECTOR_LABEL": "drain=yes"})
    for _ in range(3):
        stack.step()
        stack.reschedule()
    assert sorted(p["metadata"]["name"] for p in stack.result.evict) == ["training", "web"]
    del stack.pods["training"], stack.pods["web"]  # (deleted, as the simulator does)
    assert all(ready(s) for s in stack.settle().values())


def test_a_crash_looping_driver_leaves_the_running_validator_and_toolkit_ready() -> None:
    """A running pod's completed init containers never run again while its sandbox lives (the kubelet re-runs them
    only for a new sandbox), and its phase never goes back from Running to Pending. Upstream's validator validates
    once, then its main container sleeps: a driver container that crash-loops later (no new driver pod, so no
    k8s-driver-manager evicting the operands) leaves it, and the toolkit pod, Running and Ready. The model sent both
    back to driver-validation, so the e2e suite saw them turn NotReady with the driver, which no node shows."""
    stack = _started_stack()
    stack.model.crash_loop = True
    stack.step(dt=0.5)
    statuses = stack.step(dt=4.5)
    driver = next(c for c in statuses[f"{DRIVER_DS}-{NODE}"]["containerStatuses"] if c["name"] == "nvidia-driver-ctr")
    assert driver["restartCount"] >= 1  # the driver does crash-loop
    validator = statuses[f"nvidia-operator-validator-{NODE}"]
    check = next(c for c in validator["initContainerStatuses"] if c["name"] == "driver-validation")
    assert validator["phase"] == "Running" and ready(validator), (validator["phase"], check["state"])
    assert "terminated" in check["state"]
    assert ready(statuses[f"nvidia-container-toolkit-daemonset-{NODE}"])


# --- the simulated mig-manager (e2e/sim_mig.py) ---

MIG_NS = "gpu-operator"
MIG_CONFIG, MIG_STATE = "nvidia.com/mig.config", "nvidia.com/mig.config.state"
DEPLOY = "nvidia.com/gpu.deploy."
PAUSED_FIVE = tuple(DEPLOY + op for op in ("device-plugin", "gpu-feature-discovery", "dcgm-exporter", "dcgm", "nvsm"))
H100_PRODUCT = "NVIDIA-H100-80GB-HBM3"
USER_MIG_CONFIG = """\
version: v1
mig-configs:
  all-disabled:
  - devices: all
    mig-enabled: false
  my-layout:
  - devices: all
    mig-enabled: true
    mig-devices: {"3g.40gb": 2}
  too-big:
  - devices: all
    mig-enabled: true
    mig-devices: {"3g.40gb": 3}
"""
USER_CMS = {(MIG_NS, "custom-mig"): {"config.yaml": USER_MIG_CONFIG}}


def _mig_node(**labels: str) -> dict[str, Any]:
    """An h100x8 node of the e2e cluster with the deploy labels the operator sets (nvsm is not one), and these."""
    node = make_node("h100-0", "h100x8")
    node["metadata"]["labels"].update({k: "true" for k in PAUSED_FIVE if k != DEPLOY + "nvsm"}, **labels)
    return node


def _mig_manager(uid: str = "mm-1", config_map: str = "default-mig-parted-config") -> dict[str, Any]:
    """A running mig-manager pod mounting `config_map`, as with migManager.config.name set (CONFIG_FILE)."""
    volume = {"name": "mig-parted-config", "configMap": {"name": config_map}}
    return {"metadata": {"name": f"nvidia-mig-manager-{uid}", "namespace": MIG_NS, "uid": uid,
                         "labels": {"app": "nvidia-mig-manager"}},
            "spec": {"nodeName": "h100-0", "volumes": [volume]}, "status": {"phase": "Running"}}  # fmt: skip


def _operand_pod(app: str) -> dict[str, Any]:
    return {"metadata": {"name": f"{app}-x", "namespace": MIG_NS, "uid": app, "labels": {"app": app}},
            "spec": {"nodeName": "h100-0"}, "status": {"phase": "Running"}}  # fmt: skip


def _mig_step(sim: MigSim, node: dict[str, Any], pods: list[dict[str, Any]], now: float,
              config_maps: dict[tuple[str, str], dict[str, str]] | None = None) -> dict[str, Any]:
    """MigSim.step, its patch applied to the node as the API server applies a merge patch."""
    patch, _ = sim.step(node, pods, now, config_maps=config_maps)
    labels = node["metadata"]["labels"]
    for k, v in patch.items():
        if v is None:
            labels.pop(k, None)
        else:
            labels[k] = v
    return dict(patch)


def test_a_layout_of_the_users_mig_config_is_applied_and_one_only_the_defaults_have_fails() -> None:
    """With migManager.config.name set, mig-manager reads that ConfigMap (CONFIG_FILE) and `mig-parted assert
    --valid-config` asks only whether the name is in it (mig-parted assert.go, reconfigure.go validateMigConfig).
    The simulator checked every name against the default table: a custom `my-layout` ended `failed` at once,
    while `all-1g.10gb`, which the user's config lacks, was applied (and advertise.py, reading the user's config,
    advertised whole GPUs for it)."""
    sim = MigSim(delay=1.0, settle=0.0)
    node = _mig_node(**{MIG_CONFIG: "my-layout", "nvidia.com/gpu.product": H100_PRODUCT})
    pods = [_mig_manager(config_map="custom-mig")]
    assert _mig_step(sim, node, pods, 0.0, USER_CMS).get(MIG_STATE) == "pending"
    _mig_step(sim, node, pods, 2.0, USER_CMS)
    assert node["metadata"]["labels"][MIG_STATE] == "success" and sim.applied("h100-0") == "my-layout"

    sim = MigSim(delay=1.0, settle=0.0)
    node = _mig_node(**{MIG_CONFIG: "all-1g.10gb", "nvidia.com/gpu.product": H100_PRODUCT})
    _mig_step(sim, node, pods, 0.0, USER_CMS)
    _mig_step(sim, node, pods, 2.0, USER_CMS)
    assert node["metadata"]["labels"][MIG_STATE] == "failed" and sim.applied("h100-0") == "all-disabled"


def test_an_unknown_layout_fails_also_before_gfd_labels_the_node() -> None:
    """mig-manager checks the name against its config whatever the node's labels say; with no ConfigMap named it
    builds that config from the GPUs (main.go setupMigConfig). The simulator skipped the check while
    `nvidia.com/gpu.product` was absent (GFD disabled, not run yet, or paused by a previous change) and applied any
    name: `all-9g.99gb`, which the operator's gate leaves to mig-manager while the GPU is unknown, ended
    `success` on an H100 node."""
    sim = MigSim(delay=1.0, settle=0.0)
    node = _mig_node(**{MIG_CONFIG: "all-9g.99gb"})
    _mig_step(sim, node, [_mig_manager()], 0.0)
    _mig_step(sim, node, [_mig_manager()], 2.0)
    assert node["metadata"]["labels"][MIG_STATE] == "failed" and sim.applied("h100-0") == "all-disabled"


def test_a_new_layout_is_acted_on_only_settle_seconds_after_it_was_first_seen() -> None:
    """The operator's gate has `settle` seconds to pause mig-manager before it acts (the MIG e2e module gives it
    3 s); a value changed in between starts the wait again."""
    sim = MigSim(delay=1.0, settle=3.0)
    node = _mig_node(**{MIG_CONFIG: "all-1g.10gb", "nvidia.com/gpu.product": H100_PRODUCT})
    pods = [_mig_manager()]
    patch, again = sim.step(node, pods, 0.0)
    assert patch == {} and again == 3.0
    assert sim.step(node, pods, 2.5)[0] == {}
    node["metadata"]["labels"][MIG_CONFIG] = "all-balanced"
    patch, again = sim.step(node, pods, 2.5)
    assert patch == {} and again == 3.0
    assert sim.step(node, pods, 5.0)[0] == {}
    assert _mig_step(sim, node, pods, 5.5).get(MIG_STATE) == "pending"


def test_the_rendered_mig_manager_with_no_config_named_takes_only_the_layouts_its_gpu_has() -> None:
    """As rendered with migManager.config.name unset, mig-manager has DEFAULT_CONFIG_FILE, not CONFIG_FILE: it
    builds its layouts from the GPUs, the mounted default ConfigMap only its fallback. So `all-1g.18gb`, in the
    default ConfigMap for H200s, fails at once on an H100 without pausing anything, also before GFD ran."""
    docs = _default()
    pod = dict(_template_pod(docs, "nvidia-mig-manager"), status={"phase": "Running"})
    pod["metadata"]["namespace"] = MIG_NS
    cms = {(MIG_NS, d["metadata"]["name"]): d["data"] for d in docs if d.get("kind") == "ConfigMap"}
    assert adv.mig_configs_of([pod], cms) is not None and "all-1g.18gb" in adv.mig_configs_of([pod], cms)
    sim = MigSim(delay=1.0, settle=0.0)
    node = _mig_node(**{MIG_CONFIG: "all-1g.18gb"})
    patch = _mig_step(sim, node, [pod], 0.0, cms)
    assert patch[MIG_STATE] == "failed" and DEPLOY + "device-plugin" not in patch


def test_a_layout_in_the_config_that_the_gpu_cannot_take_pauses_the_operands_before_it_fails() -> None:
    """`assert --valid-config` checks only that the name is in the config file, so `too-big` (three 3g.40gb; an
    H100 holds two) goes `pending` with the operands paused, and only `mig-parted apply` fails: `failed`, the
    labels set back. The simulator ended it `failed` at once with no operand touched."""
    sim = MigSim(delay=1.0, settle=0.0)
    node = _mig_node(**{MIG_CONFIG: "too-big", "nvidia.com/gpu.product": H100_PRODUCT})
    pods = [_mig_manager(config_map="custom-mig")]
    first = _mig_step(sim, node, pods, 0.0, USER_CMS)
    assert first.get(MIG_STATE) == "pending" and first.get(DEPLOY + "device-plugin") == PAUSED, first
    _mig_step(sim, node, pods, 2.0, USER_CMS)
    labels = node["metadata"]["labels"]
    assert labels[MIG_STATE] == "failed" and labels[DEPLOY + "device-plugin"] == "true"
    assert sim.applied("h100-0") == "all-disabled"


def test_a_restarted_mig_manager_restores_paused_labels_when_the_layout_is_already_applied_or_refused() -> None:
    """reconfigure.go setState, on "already applied" and on a name not in the config too, first sets
    device-plugin, GFD, dcgm-exporter, dcgm and nvsm back with maybeSetTrue (anything but `false` becomes `true`).
    So a mig-manager that starts after one was killed mid-change (the labels left paused) brings the operands back
    itself. The simulator wrote only the state: the operands stayed paused until the operator stepped in."""
    for layout, state in (("all-disabled", "success"), ("no-such-layout", "failed")):
        sim = MigSim(delay=1.0, settle=0.0)
        paused = {k: PAUSED for k in PAUSED_FIVE}
        node = _mig_node(**{MIG_CONFIG: layout, MIG_STATE: "pending"}, **paused)
        assert _mig_step(sim, node, [_mig_manager()], 0.0).get(MIG_STATE) == state
        assert {k: node["metadata"]["labels"][k] for k in PAUSED_FIVE} == dict.fromkeys(PAUSED_FIVE, "true")


def test_absent_operand_labels_are_paused_and_set_true_as_upstream_does() -> None:
    """shutdownKubernetesGPUClients writes device-plugin, GFD, dcgm-exporter, dcgm and nvsm whether set or not
    (maybeSetPaused("") = paused-for-mig-change; client only when set), and restarting them writes
    maybeSetTrue("") = `true`. The simulator paused and restored only the labels on the node, so the
    `nvidia.com/gpu.deploy.nvsm=true` a real node has after a MIG change never appeared."""
    sim = MigSim(delay=1.0, settle=0.0)
    node = _mig_node(**{MIG_CONFIG: "all-1g.10gb"})
    assert DEPLOY + "nvsm" not in node["metadata"]["labels"]
    assert _mig_step(sim, node, [_mig_manager()], 0.0).get(DEPLOY + "nvsm") == PAUSED
    _mig_step(sim, node, [_mig_manager()], 2.0)
    assert node["metadata"]["labels"][DEPLOY + "nvsm"] == "true"


def test_after_a_completed_change_a_failed_one_in_the_same_pod_leaves_the_operands_paused() -> None:
    """restartKubernetesGPUClients sets the package variable NoRestartK8sDaemonsetsOnExit for good, so in that
    mig-manager process setState no longer sets the labels back: a later change that fails ends `failed` with the
    operands paused (the operator's restore then acts). The simulator set them back on every end."""
    sim = MigSim(delay=1.0, settle=0.0)
    node = _mig_node(**{MIG_CONFIG: "all-1g.10gb"})
    _mig_step(sim, node, [_mig_manager()], 0.0)
    _mig_step(sim, node, [_mig_manager()], 2.0)
    assert node["metadata"]["labels"][MIG_STATE] == "success"
    sim.fail("h100-0")
    node["metadata"]["labels"][MIG_CONFIG] = "all-2g.20gb"
    _mig_step(sim, node, [_mig_manager()], 3.0)
    assert _mig_step(sim, node, [_mig_manager()], 5.0) == {MIG_STATE: "failed"}
    assert node["metadata"]["labels"][DEPLOY + "device-plugin"] == PAUSED
    _mig_step(sim, node, [_mig_manager("mm-2")], 6.0)  # a new pod tries again: its failure sets them back
    assert _mig_step(sim, node, [_mig_manager("mm-2")], 8.0).get(DEPLOY + "device-plugin") == "true"


def test_the_change_waits_until_the_paused_operand_pods_are_gone() -> None:
    """reconfigure.go waitForPodsToBeDeleted: after pausing the labels mig-manager polls until no pod with
    app=nvidia-device-plugin-daemonset / gpu-feature-discovery / nvidia-dcgm-exporter / nvidia-dcgm is left on the
    node; after 5 minutes it returns an error without a state (`pending`, labels paused). The simulator applied the
    layout `delay` seconds after the pause whether or not those pods went: a device-plugin pod that ignores its
    paused deploy label (a rendering bug) still got a `success`."""
    sim = MigSim(delay=1.0, settle=0.0)
    node = _mig_node(**{MIG_CONFIG: "all-1g.10gb"})
    plugin = _operand_pod("nvidia-device-plugin-daemonset")
    first = _mig_step(sim, node, [_mig_manager(), plugin], 0.0)
    assert first.get(MIG_STATE) == "pending" and first.get(DEPLOY + "device-plugin") == PAUSED
    _mig_step(sim, node, [_mig_manager(), plugin], 30.0)  # the plugin pod still runs
    assert node["metadata"]["labels"][MIG_STATE] == "pending" and sim.applied("h100-0") == "all-disabled"
    _mig_step(sim, node, [_mig_manager()], 30.5)  # gone: `delay` from the last look that saw it
    assert node["metadata"]["labels"][MIG_STATE] == "pending"
    _mig_step(sim, node, [_mig_manager()], 31.0)
    assert node["metadata"]["labels"][MIG_STATE] == "success" and sim.applied("h100-0") == "all-1g.10gb"

    sim = MigSim(delay=1.0, settle=0.0)
    node = _mig_node(**{MIG_CONFIG: "all-1g.10gb"})
    _mig_step(sim, node, [_mig_manager(), plugin], 0.0)
    assert _mig_step(sim, node, [_mig_manager(), plugin], 300.0) == {}  # gives up
    assert _mig_step(sim, node, [_mig_manager()], 310.0) == {}
    labels = node["metadata"]["labels"]
    assert labels[MIG_STATE] == "pending" and labels[DEPLOY + "device-plugin"] == PAUSED
    assert sim.applied("h100-0") == "all-disabled"


# --- GFD's labels ---

def test_the_simulated_mig_manager_does_not_act_while_its_entrypoint_waits_for_driver_ready() -> None:
    """mig-manager's entrypoint (upstream assets/state-mig-manager/0420_configmap.yaml) loops
    `until [ -f /run/nvidia/validations/driver-ready ]` before it execs nvidia-mig-manager, which only then reads
    nvidia.com/mig.config (mig-parted cmd/nvidia-mig-manager start). The kubelet reports the pod Running all the
    while, and the simulated mig-manager acted on any Running pod: it paused the operands and set
    mig.config.state=pending before the real one would have started (review nodemodel2 #2)."""
    docs = _render(SAMPLES / "clusterpolicy-mig-mixed.yaml")
    tpl = _ds(docs, "nvidia-mig-manager")["spec"]["template"]
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {**tpl["metadata"], "name": "nvidia-mig-manager-x", "namespace": MIG_NS, "uid": "mm-1"},
           "spec": {**copy.deepcopy(tpl["spec"]), "nodeName": "h100-0"}}
    cms = {(d["metadata"].get("namespace") or MIG_NS, d["metadata"]["name"]): d.get("data") or {}
           for d in docs if d.get("kind") == "ConfigMap"}
    world = World(runtime_classes={d["metadata"]["name"]: d.get("handler", "") for d in docs
                                   if d.get("kind") == "RuntimeClass"}, config_maps=cms, dry_run=offline_dry_run)
    host = new_host("h100-0", gpus=8)
    host.handlers["nvidia"] = Handler("nvidia", True, "/run/nvidia/driver")  # the toolkit ran: toolkit-ready is there
    host.files[f"{V}/toolkit-ready"] = ""
    model = NodeModel(host)
    result = model.step([pod], world, 0.0, 0.0)
    pod["status"] = pod_status(pod, result.statuses["mm-1"], None, "")
    assert ready(pod["status"]) and model.waiting() == {"mm-1"}  # Running, in its wait loop
    sim = MigSim(delay=1.0, settle=0.0)
    node = _mig_node(**{MIG_CONFIG: "all-1g.10gb", "nvidia.com/gpu.product": H100_PRODUCT})
    patch, _ = sim.step(node, [pod], 0.0, cms, waiting=model.waiting())
    assert patch == {} and sim.managed("h100-0") is None
    host.files[f"{V}/driver-ready"] = "IS_HOST_DRIVER=false\n"  # the driver validated: nvidia-mig-manager starts
    model.step([pod], world, 1.0, 1.0)
    assert model.waiting() == set()
    patch, _ = sim.step(node, [pod], 1.0, cms, waiting=model.waiting())
    assert patch[MIG_STATE] == "pending"


def test_gfd_writes_no_mig_strategy_label_under_strategy_none() -> None:
    """k8s-device-plugin internal/lm/mig-strategy.go NewResourceLabeler returns only the full-GPU labelers under
    strategy none; `nvidia.com/mig.strategy` comes only with the MIG labeler (single, mixed). The simulated GFD
    wrote `nvidia.com/mig.strategy=none`, so doctor's fallback to the ClusterPolicy's strategy was never met."""
    h100 = PROFILES["h100x8"]
    for strategy in ("none", "single"):
        labels = gfd_labels(h100, "595.91.07", strategy)
        labels.update(adv.gfd_overlay(h100, None, strategy, sharing.EMPTY))
        assert labels.get("nvidia.com/mig.strategy") == (None if strategy == "none" else strategy)


def test_gfd_exits_on_an_mps_config_with_a_mig_enabled_gpu_whatever_the_mig_strategy() -> None:
    """k8s-device-plugin internal/lm/nvml.go newSharingLabeler -> isMPSCapable loops over every GPU whatever the MIG
    strategy and fails on a MIG-enabled one ("MPS sharing is not supported for mig devices"): GFD exits, the node is
    never labelled mps.capable=true, the MPS control daemon (nodeSelector mps.capable=true) never runs there and the
    plugin waits for it. The model looked at MIG only under single and mixed: under none it labelled the node
    mps.capable=true and advertised 8 x 2 GPUs, where sharing.check refuses MPS on MIG whatever the strategy."""
    h100 = PROFILES["h100x8"]
    mps2 = sharing.parse("sharing: {mps: {resources: [{name: nvidia.com/gpu, replicas: 2}]}}")
    for strategy in ("none", "single"):
        assert "not supported for mig devices" in adv.gfd_error(h100, "all-1g.10gb", mps2)
        assert adv.gfd_overlay(h100, "all-1g.10gb", strategy, mps2)["nvidia.com/mps.capable"] == "false"
        got = adv.advertise(h100, "all-1g.10gb", strategy, mps2)
        assert got.error and not got.resources, (strategy, got)
    assert not adv.gfd_error(h100, None, mps2) and not adv.gfd_error(h100, "all-1g.10gb", sharing.EMPTY)
    assert adv.advertise(h100, "all-disabled", "none", mps2).resources == {"nvidia.com/gpu": 16}


def _gfd_run(change: Any) -> tuple[Any, Any, bool]:
    """The default sample with GFD's pod template changed: (model, step result, GFD pod ready)."""
    docs = _render(SAMPLES / "clusterpolicy-default.yaml")
    change(_ds(docs, "gpu-feature-discovery")["spec"]["template"]["spec"])
    model, result, pods = check_rendered(docs, _node())
    pod = next(p for p in pods if p["metadata"]["name"].startswith("gpu-feature-discovery"))
    return model, result, ready(pod_status(pod, result.statuses[_uid(pod)], None, ""))


def test_gfd_labels_need_its_output_file_on_the_hosts_nfd_features_dir() -> None:
    """GPU feature discovery writes its labels to --output-file (GFD_OUTPUT_FILE, default
    /etc/kubernetes/node-feature-discovery/features.d/gfd); nfd-worker reads that directory on the host and only
    then labels the node. Upstream's GFD DaemonSet mounts the host's features.d there (assets/
    state-gpu-feature-discovery; e2e/upstream_specs.py and our template do too). Without that hostPath the file
    stays in the container and the node never gets nvidia.com/gpu.product & co. The model set the GFD labels
    (StepResult.gfd) whatever GFD's output landed on, so a render that lost the mount passed the e2e suite."""
    def unmounted(spec: dict[str, Any]) -> None:
        for c in spec["containers"]:
            c["volumeMounts"] = [m for m in c.get("volumeMounts") or [] if m["name"] != "output-dir"]
        spec["volumes"] = [v for v in spec["volumes"] if v["name"] != "output-dir"]

    _, result, _ = _gfd_run(lambda spec: None)
    assert result.gfd
    model, result, running = _gfd_run(unmounted)
    assert not result.gfd, "GFD labels published though GFD's output file never reaches the host's features.d"
    assert running and any("nfd-worker reads them" in f.text for f in model.diagnose()), model.diagnose()

    def elsewhere(spec: dict[str, Any]) -> None:  # a file beside features.d, on the host
        spec["containers"][0]["env"].append({"name": "GFD_OUTPUT_FILE", "value": "/etc/kubernetes/gfd"})
        spec["containers"][0]["volumeMounts"].append({"name": "etc-kubernetes", "mountPath": "/etc/kubernetes"})
        spec["volumes"].append({"name": "etc-kubernetes", "hostPath": {"path": "/etc/kubernetes"}})

    assert not _gfd_run(elsewhere)[1].gfd

    def node_feature_api(spec: dict[str, Any]) -> None:  # a NodeFeature object instead of the file
        unmounted(spec)
        spec["containers"][0]["args"] = ["--use-node-feature-api"]

    assert _gfd_run(node_feature_api)[1].gfd

    def read_only(spec: dict[str, Any]) -> None:  # it cannot write the file: it exits
        next(m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "output-dir")["readOnly"] = True

    _, result, running = _gfd_run(read_only)
    assert not result.gfd and not running


# --- the device plugin and the MPS control daemon ---

def test_the_mps_control_daemon_exits_on_more_replicas_than_its_client_limit_and_nothing_is_advertised() -> None:
    """k8s-device-plugin cmd/mps-control-daemon/mps/manager.go Daemons -> device.go assertReplicas: more replicas
    than an MPS server's clients (48, 16 below compute capability 7.5) fail "invalid MPS configuration: ...
    maximum allowed replicas exceeded"; the daemon exits and the plugin's Start fails "error waiting for MPS
    daemon" (internal/plugin/server.go): nothing is advertised. The model advertised GPUs x replicas (256 on the
    V100 node, 512 on the H100 node), where sharing.check refuses the config for the same limits."""
    h100, v100 = PROFILES["h100x8"], PROFILES["v100x8"]
    mps = "sharing: {{mps: {{resources: [{{name: nvidia.com/gpu, replicas: {}}}]}}}}"
    for profile, ok, over in ((v100, 16, 17), (h100, 48, 49)):
        assert adv.advertise(profile, None, "none", sharing.parse(mps.format(ok))).resources == {
            "nvidia.com/gpu": 8 * ok}
        got = adv.advertise(profile, None, "none", sharing.parse(mps.format(over)))
        assert f"maximum allowed replicas exceeded: {over} > {ok}" in got.error and not got.resources


# --- config-manager ---

def test_config_manager_fails_on_a_config_map_with_no_keys() -> None:
    """k8s-device-plugin cmd/config-manager/main.go updateConfigName checks `len(files) == 0` ("no configuration
    files available") before the node label, DEFAULT_CONFIG or the fallbacks: config-manager exits and the plugin
    never starts. The model fell back to the empty config and advertised the plain GPUs (and with a label set it
    said "specified config X does not exist"), where sharing.problems refuses such a ConfigMap. A ConfigMap
    volume holds binaryData's keys too: such a ConfigMap is not empty."""
    import base64

    from e2e.simulator import _files

    label = sharing.NODE_LABEL
    for labels in ({}, {label: "ts4"}):
        for data in (None, {}):
            assert adv.select_config(data, labels, label, "").error == "no configuration files available"
    ts4 = "sharing: {timeSlicing: {resources: [{name: nvidia.com/gpu, replicas: 4}]}}"
    files = _files({"binaryData": {"ts4": base64.b64encode(ts4.encode()).decode()}})
    assert adv.select_config(files, {label: "ts4"}, label, "").config == sharing.parse(ts4)


def test_sharing_config_manager_failure_keeps_the_device_plugin_from_starting_and_validating() -> None:
    """With a sharing config (devicePlugin.config) the device plugin pod runs config-manager-init first
    (REFERENCE §11 item 4). A ConfigMap with no keys makes config-manager exit ("no configuration files
    available", k8s-device-plugin cmd/config-manager/main.go; as advertise.select_config says), and so does a node
    label naming a key the ConfigMap lacks: the init container crash-loops and the plugin never starts, so the node
    advertises no nvidia.com/gpu and the validator's plugin-validation (which waits for nvidia.com/gpu on the
    node) never writes plugin-ready. The model completed every init container other than the validator's and the
    driver manager's at once: the device plugin pod was Ready, plugin-ready was written and StepResult.gpus was 8,
    while the simulator (advertise) advertised nothing, so e2e saw state-device-plugin and the validator ready on
    a node with no GPUs."""
    plugin, gfd = f"nvidia-device-plugin-daemonset-{NODE}", f"gpu-feature-discovery-{NODE}"

    def run(data: dict[str, str] | None, label: str | None) -> tuple[Any, Any, dict[str, Any]]:
        docs = _render(SAMPLES / "clusterpolicy-time-slicing.yaml")
        cm = next(d for d in docs if d.get("kind") == "ConfigMap" and d["metadata"]["name"] == "time-slicing-config")
        if data is not None:
            cm["data"] = data
        node = copy.deepcopy(_node())
        if label is not None:
            node["metadata"]["labels"][sharing.NODE_LABEL] = label
        model, result, pods = check_rendered(docs, node)
        return model, result, {p["metadata"]["name"]: pod_status(p, result.statuses[_uid(p)], None, "") for p in pods}

    for data, label, error in (({}, None, "no configuration files available"),
                               (None, "typo", "specified config typo does not exist")):
        model, result, statuses = run(data, label)
        for pod in (plugin, gfd):
            init = next(cs for cs in statuses[pod]["initContainerStatuses"] if cs["name"] == "config-manager-init")
            assert init["state"]["waiting"]["reason"] == "CrashLoopBackOff", init
            assert init["lastState"]["terminated"]["message"] == error
        assert (ready(statuses[plugin]), f"{V}/plugin-ready" in model.host.files, result.gpus, result.gfd) == (
            False, False, None, False)
    model, result, statuses = run(None, "h100")  # a key the ConfigMap has
    assert ready(statuses[plugin]) and f"{V}/plugin-ready" in model.host.files and result.gpus == 8 and result.gfd


def test_simulated_gfd_labels_mig_enabled_gpus_without_sharing_also_under_strategy_none() -> None:
    """GFD labels MIG-enabled GPUs with sharing disabled whatever the MIG strategy (mig-strategy.go newGPULabelers:
    devicesByMigEnabled[true] -> NewGPUResourceLabelerWithoutSharing, which writes replicas 0, sharing-strategy none
    and no -SHARED suffix; resource.go getReplicas/getProductName). Under strategy none newGPULabelers is all there
    is, so an H100 node in all-1g.10gb with a time-slicing config carries gpu.replicas=0. The simulator
    (advertise.gfd_overlay) wrote replicas 4, sharing-strategy time-slicing and product ...-SHARED there, facts the
    doctor's time-slicing findings then read on fake nodes only. The plugin still advertises the GPUs x replicas."""
    ts4 = sharing.parse("sharing: {timeSlicing: {resources: [{name: nvidia.com/gpu, replicas: 4}]}}")
    out = adv.gfd_overlay(PROFILES["h100x8"], "all-1g.10gb", "none", ts4)
    got = {k: out.get(k) for k in ("nvidia.com/gpu.replicas", "nvidia.com/gpu.sharing-strategy",
                                   "nvidia.com/gpu.product")}  # fmt: skip
    assert got == {"nvidia.com/gpu.replicas": "0", "nvidia.com/gpu.sharing-strategy": "none",
                   "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}, got  # fmt: skip
    assert adv.advertise(PROFILES["h100x8"], "all-1g.10gb", "none", ts4).resources == {"nvidia.com/gpu": 32}
    # MIG off: the full GPUs are shared, as before
    plain = adv.gfd_overlay(PROFILES["h100x8"], None, "none", ts4)
    assert plain["nvidia.com/gpu.replicas"] == "4" and plain["nvidia.com/gpu.product"].endswith("-SHARED")
