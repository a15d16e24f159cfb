"""The container toolkit's pod contract (upstream v26.7, REFERENCE §11) and its per-runtime node pools."""

from __future__ import annotations

import os
import posixpath
import subprocess
from pathlib import Path
from typing import Any

import pytest

from gpu_operator import coverage
from gpu_operator.api import parse_spec
from gpu_operator.nodes import RUNTIME_LABEL, NodeFacts, desired_labels, runtime_of, runtime_pools, unknown_runtime
from gpu_operator.render import node_patches, relabelled
from gpu_operator.states import RenderContext, by_name
from support import container, daemonsets, facts, objects, render_all

STATE = "state-container-toolkit"
MAIN = "nvidia-container-toolkit-ctr"
DS = "nvidia-container-toolkit-daemonset"
VALIDATOR = "nvidia-operator-validator"


def toolkit(raw: dict[str, Any] | None = None, nodes: list[NodeFacts] | None = None) -> list[dict[str, Any]]:
    plans = [p for p in render_all(parse_spec(raw or {}), nodes) if p.state.name == STATE]
    return plans[0].objects


def toolkit_ds(raw: dict[str, Any] | None = None, nodes: list[NodeFacts] | None = None) -> dict[str, Any]:
    found = [o for o in toolkit(raw, nodes) if o["kind"] == "DaemonSet"]
    assert len(found) == 1, [d["metadata"]["name"] for d in found]
    return found[0]


def env_of(ctr: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in ctr.get("env", [])}


def host_path(ds: dict[str, Any], ctr: dict[str, Any], path: str) -> str | None:
    """Where a path inside the container lies on the host, through the container's hostPath mounts."""
    volumes = {v["name"]: v for v in ds["spec"]["template"]["spec"]["volumes"]}
    best = None
    for m in ctr.get("volumeMounts", []):
        mount = m["mountPath"].rstrip("/") or "/"
        if (path == mount or path.startswith(mount.rstrip("/") + "/")) and "subPath" not in m:
            if best is None or len(mount) > len(best[0]):
                best = (mount, volumes[m["name"]])
    if best is None or "hostPath" not in best[1]:
        return None
    rest = path[len(best[0]) :].lstrip("/")
    return posixpath.join(best[1]["hostPath"]["path"], rest) if rest else best[1]["hostPath"]["path"]


def crio_node(name: str = "gpu-crio", **kw: Any) -> NodeFacts:
    return facts(name, runtime="cri-o://1.30.4", **kw)


# The driver-validation init container: the toolkit writes its own driver-ready


def test_driver_validation_runs_the_validator_without_a_runtime_class() -> None:
    ds = toolkit_ds()
    pod = ds["spec"]["template"]["spec"]
    assert "runtimeClassName" not in pod, "the toolkit creates the nvidia handler; it cannot need it"
    (init,) = pod["initContainers"]
    assert init["name"] == "driver-validation"
    assert init["image"] == "nvcr.io/nvidia/gpu-operator:v26.7.0"  # the validator ships in the operator image
    assert (init["command"], init["args"]) == (["sh", "-c"], ["nvidia-validator"])
    env = env_of(init)
    assert (env["WITH_WAIT"], env["COMPONENT"]) == ("true", "driver")
    assert {"name": "OPERATOR_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}} in init["env"]
    assert init["securityContext"]["privileged"] is True and init["securityContext"]["runAsUser"] == 0
    mounts = {m["mountPath"]: m for m in init["volumeMounts"]}
    assert mounts["/run/nvidia/validations"]["mountPropagation"] == "Bidirectional"
    assert mounts["/host"]["readOnly"] is True
    for path, host in (
        ("/run/nvidia/validations", "/run/nvidia/validations"),
        ("/run/nvidia/driver", "/run/nvidia/driver"),
        ("/host", "/"),
        ("/host-dev-char", "/dev/char"),
    ):
        assert host_path(ds, init, path) == host, path
    assert pod["hostPID"] is True


def test_driver_validation_takes_the_validator_settings() -> None:
    raw = {
        "validator": {
            "imagePullPolicy": "Always",
            "imagePullSecrets": ["validator-secret"],
            "resources": {"limits": {"cpu": "200m"}},
            "driver": {"env": [{"name": "DISABLE_DEV_CHAR_SYMLINK_CREATION", "value": "true"}]},
        },
        "toolkit": {"imagePullSecrets": ["toolkit-secret"]},
    }
    ds = toolkit_ds(raw)
    pod = ds["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    assert init["imagePullPolicy"] == "Always"
    assert env_of(init)["DISABLE_DEV_CHAR_SYMLINK_CREATION"] == "true"
    assert init["resources"] == {"limits": {"cpu": "200m"}}
    assert pod["imagePullSecrets"] == [{"name": "toolkit-secret"}, {"name": "validator-secret"}]


def test_validator_driver_env_replaces_driver_validations_own_variables() -> None:
    """Upstream transformValidationInitContainer: setContainerEnv per validator.driver.env entry (replaced by
    name), as in the validator's own driver-validation. Appended, a name came twice, which server-side apply
    refuses (duplicate entries for key [name="WITH_WAIT"])."""
    raw = {
        "hostPaths": {"rootFS": "/sysroot"},
        "validator": {"driver": {"env": [{"name": "WITH_WAIT", "value": "false"}, {"name": "HOST_ROOT", "value": ""}]}},
    }
    (init,) = toolkit_ds(raw)["spec"]["template"]["spec"]["initContainers"]
    names = [e["name"] for e in init["env"]]
    assert len(names) == len(set(names)), names
    assert (env_of(init)["WITH_WAIT"], env_of(init)["HOST_ROOT"]) == ("false", "")
    validator = next(d for d in daemonsets(render_all(parse_spec(raw))) if d["metadata"]["name"] == VALIDATOR)
    (same,) = [c for c in validator["spec"]["template"]["spec"]["initContainers"] if c["name"] == "driver-validation"]
    assert init["env"] == same["env"]


def test_driver_validation_follows_host_paths() -> None:
    ds = toolkit_ds({"hostPaths": {"rootFS": "/sysroot", "driverInstallDir": "/opt/nvidia-driver"}})
    pod = ds["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    env = env_of(init)
    assert env["DRIVER_INSTALL_DIR"] == env["DRIVER_INSTALL_DIR_CTR_PATH"] == "/opt/nvidia-driver"
    assert env["HOST_ROOT"] == "/sysroot"
    assert host_path(ds, init, "/opt/nvidia-driver") == "/opt/nvidia-driver"
    assert host_path(ds, init, "/host-dev-char") == "/sysroot/dev/char"
    main = container(ds, MAIN)
    assert host_path(ds, main, "/driver-root") == "/opt/nvidia-driver"
    assert host_path(ds, main, "/host/etc") == "/sysroot/etc"


def test_role_lets_driver_validation_find_the_driver_daemonset() -> None:
    role = next(o for o in toolkit() if o["kind"] == "Role")
    assert {"apiGroups": ["apps"], "resources": ["daemonsets"], "verbs": ["list"]} in role["rules"]


# The entrypoint: driver-ready's values reach the installer


def entrypoint_script() -> str:
    cm = next(o for o in toolkit() if o["kind"] == "ConfigMap")
    return str(cm["data"]["entrypoint.sh"])


def run_entrypoint(tmp_path: Path, script: str, driver_ready: str) -> dict[str, str]:
    """Run the entrypoint with its paths under tmp_path; `nvidia-toolkit` is a stub that dumps its env."""
    validations = tmp_path / "validations"
    validations.mkdir()
    (validations / "driver-ready").write_text(driver_ready)
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "sleep").write_text("#!/bin/sh\n")
    (bindir / "nvidia-toolkit").write_text(f"#!/bin/sh\nenv > {tmp_path / 'env.out'}\n")
    for f in bindir.iterdir():
        f.chmod(0o755)
    path = tmp_path / "entrypoint.sh"
    path.write_text(script.replace("/run/nvidia/validations", str(validations)))
    env = {"PATH": f"{bindir}:{os.environ['PATH']}"}
    subprocess.run(["sh", str(path)], env=env, check=True, capture_output=True, timeout=30)
    lines = (tmp_path / "env.out").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line)


HOST_DRIVER_READY = (
    "\n".join(
        [
            "IS_HOST_DRIVER=true",
            "NVIDIA_DRIVER_ROOT=/",
            "DRIVER_ROOT_CTR_PATH=/host",
            "NVIDIA_DEV_ROOT=/",
            "DEV_ROOT_CTR_PATH=/host",
        ]
    )
    + "\n"
)


def test_entrypoint_exports_driver_ready_to_the_installer(tmp_path: Path) -> None:
    env = run_entrypoint(tmp_path, entrypoint_script(), HOST_DRIVER_READY)
    assert env["NVIDIA_DRIVER_ROOT"] == "/" and env["DRIVER_ROOT_CTR_PATH"] == "/host"
    assert env["NVIDIA_DEV_ROOT"] == "/" and env["DEV_ROOT_CTR_PATH"] == "/host"


def test_without_allexport_the_driver_root_never_reaches_the_installer(tmp_path: Path) -> None:
    """The check above is not vacuous: sourcing without allexport (our old script) exports nothing."""
    script = entrypoint_script().replace("set -o allexport", ":")
    env = run_entrypoint(tmp_path, script, HOST_DRIVER_READY)
    assert "NVIDIA_DRIVER_ROOT" not in env and "DRIVER_ROOT_CTR_PATH" not in env


def test_entrypoint_waits_for_driver_ready_then_execs_the_installer() -> None:
    lines = [line.strip() for line in entrypoint_script().splitlines()]
    wait = next(i for i, line in enumerate(lines) if "until [ -f /run/nvidia/validations/driver-ready ]" in line)
    source = lines.index(". /run/nvidia/validations/driver-ready")
    assert wait < lines.index("set -o allexport") < source < lines.index("exec nvidia-toolkit")


# The main container: install dir and the host's runtime files


def test_install_dir_moves_the_mount_with_it() -> None:
    ds = toolkit_ds({"toolkit": {"installDir": "/opt/nvidia"}})
    main = container(ds, MAIN)
    assert env_of(main)["ROOT"] == "/opt/nvidia"
    mount = next(m for m in main["volumeMounts"] if m["name"] == "toolkit-install-dir")
    assert mount["mountPath"] == "/opt/nvidia"
    assert host_path(ds, main, "/opt/nvidia/toolkit/nvidia-container-runtime") == (
        "/opt/nvidia/toolkit/nvidia-container-runtime"
    ), "the runtime config names the binary by its container path, which must be the host path"


def test_toolkit_args_are_left_out_as_upstream_and_reported() -> None:
    """Upstream's TransformToolkit never reads toolkit.args, and the entrypoint execs nvidia-toolkit without
    arguments. We rendered them into the main container, where they reached nothing, and coverage did not name
    the field: the user saw them in the pod and got neither an effect nor a word."""
    raw = {"toolkit": {"args": ["--restart-mode=none"]}}
    main = container(toolkit_ds(raw), MAIN)
    assert "args" not in main and main == container(toolkit_ds(), MAIN)
    assert [p for p, _ in coverage.unsupported_fields(parse_spec(raw))] == ["toolkit.args"]


CONTAINERD_HOST = {
    "RUNTIME_CONFIG": "/etc/containerd/config.toml",
    "CONTAINERD_CONFIG": "/etc/containerd/config.toml",
    "RUNTIME_DROP_IN_CONFIG": "/etc/containerd/conf.d/99-nvidia.toml",
    "RUNTIME_SOCKET": "/run/containerd/containerd.sock",
    "CONTAINERD_SOCKET": "/run/containerd/containerd.sock",
}


def test_containerd_pool_points_the_installer_at_the_host_files() -> None:
    ds = toolkit_ds()
    main = container(ds, MAIN)
    env = env_of(main)
    assert env["RUNTIME"] == "containerd"
    assert env["CONTAINERD_RUNTIME_CLASS"] == "nvidia"
    for name, host in CONTAINERD_HOST.items():
        assert env[name].startswith("/runtime/"), name
        assert host_path(ds, main, env[name]) == host, name
    assert env["RUNTIME_DROP_IN_CONFIG_HOST_PATH"] == "/etc/containerd/conf.d/99-nvidia.toml"
    assert "RUNTIME_CONFIG_SOURCE" not in env, "the installer's default reads `containerd config dump` first"
    assert "CRIO_CONFIG_MODE" not in env_of(container(toolkit_ds({"cdi": {"enabled": False}}), MAIN))


def test_custom_runtime_class_names_the_containerd_handler() -> None:
    env = env_of(container(toolkit_ds({"operator": {"runtimeClass": "nvidia-gpu"}}), MAIN))
    assert env["CONTAINERD_RUNTIME_CLASS"] == "nvidia-gpu"


@pytest.mark.parametrize("runtime", ["cri-o://1.30.4", "docker://27.1.1"])
def test_custom_runtime_class_names_the_handler_on_other_runtimes_too(runtime: str) -> None:
    """Operand pods keep runtimeClassName on cri-o and docker nodes (contracts.runtime_class_name), so the installer
    must add a handler of that name there too: it reads the name from NVIDIA_RUNTIME_NAME for every runtime
    (aliases CONTAINERD_RUNTIME_CLASS, DOCKER_RUNTIME_NAME). Upstream sets only CONTAINERD_RUNTIME_CLASS, so a
    cri-o node got the handler `nvidia` and every runtime-class pod failed sandbox creation (review handshake #1)."""
    nodes = [facts("gpu-other", runtime=runtime)]
    env = env_of(container(toolkit_ds({"operator": {"runtimeClass": "nvidia-gpu"}}, nodes), MAIN))
    assert env["NVIDIA_RUNTIME_NAME"] == "nvidia-gpu"
    assert "CONTAINERD_RUNTIME_CLASS" not in env
    assert env_of(container(toolkit_ds(nodes=nodes), MAIN))["NVIDIA_RUNTIME_NAME"] == "nvidia"


def test_toolkit_env_nvidia_runtime_name_cannot_rename_the_containerd_handler() -> None:
    """The installer reads --runtime-name from NVIDIA_RUNTIME_NAME, then CONTAINERD_RUNTIME_CLASS, then
    DOCKER_RUNTIME_NAME (nvidia-ctk-installer v1.20.0 runtime.go). A `toolkit.env` NVIDIA_RUNTIME_NAME was forced
    back on the cri-o pool but won on the containerd pool, whose node then had no handler for the RuntimeClass every
    operand pod asks for (FailedCreatePodSandBox). Without that user variable the containerd env is unchanged
    (review cdi #1)."""
    raw = {"toolkit": {"env": [{"name": "NVIDIA_RUNTIME_NAME", "value": "my-nvidia"}]}}
    nodes = [facts("gpu-ctd"), facts("gpu-crio", runtime="cri-o://1.30.4")]
    plans = render_all(parse_spec(raw), nodes)
    classes = {o["metadata"]["name"]: o["handler"] for o in objects(plans) if o["kind"] == "RuntimeClass"}
    pods_ask = {ds["spec"]["template"]["spec"].get("runtimeClassName") for ds in daemonsets(plans)} - {None}
    assert pods_ask == {"nvidia"} and classes["nvidia"] == "nvidia"
    chain = ("NVIDIA_RUNTIME_NAME", "CONTAINERD_RUNTIME_CLASS", "DOCKER_RUNTIME_NAME")
    handlers = {}
    for ds in daemonsets(plans):
        if ds["metadata"]["name"].startswith(DS):
            env = env_of(container(ds, MAIN))
            handlers[ds["metadata"]["name"]] = next((env[n] for n in chain if env.get(n)), "nvidia")
    assert handlers == {DS: "nvidia", f"{DS}-crio": "nvidia"}
    custom = {"operator": {"runtimeClass": "nvidia-gpu"}, **raw}
    assert env_of(container(toolkit_ds(custom), MAIN))["NVIDIA_RUNTIME_NAME"] == "nvidia-gpu"
    assert "NVIDIA_RUNTIME_NAME" not in env_of(container(toolkit_ds(), MAIN))

def test_crio_pool_uses_crio_files_and_config_mode() -> None:
    ds = toolkit_ds(nodes=[crio_node()])
    assert ds["metadata"]["name"] == f"{DS}-crio"
    main = container(ds, MAIN)
    env = env_of(main)
    assert env["RUNTIME"] == "crio"
    assert host_path(ds, main, env["RUNTIME_CONFIG"]) == "/etc/crio/crio.conf"
    assert env["CRIO_CONFIG"] == env["RUNTIME_CONFIG"]
    assert host_path(ds, main, env["RUNTIME_DROP_IN_CONFIG"]) == "/etc/crio/crio.conf.d/99-nvidia.conf"
    assert env["RUNTIME_DROP_IN_CONFIG_HOST_PATH"] == "/etc/crio/crio.conf.d/99-nvidia.conf"
    assert env["CRIO_CONFIG_MODE"] == "config", "the nvidia handler must exist on cri-o nodes too"
    assert not {"RUNTIME_SOCKET", "CONTAINERD_SOCKET", "CONTAINERD_RUNTIME_CLASS"} & env.keys()
    assert host_path(ds, main, "/usr/share/containers/oci/hooks.d") == "/usr/share/containers/oci/hooks.d"


def test_docker_pool_uses_daemon_json_and_the_docker_socket() -> None:
    ds = toolkit_ds(nodes=[facts("gpu-docker", runtime="docker://27.1.1")])
    assert ds["metadata"]["name"] == f"{DS}-docker"
    main = container(ds, MAIN)
    env = env_of(main)
    assert env["RUNTIME"] == "docker"
    assert (
        host_path(ds, main, env["RUNTIME_CONFIG"])
        == "/etc/docker/daemon.json"
        == host_path(ds, main, env["DOCKER_CONFIG"])
    )
    assert host_path(ds, main, env["DOCKER_SOCKET"]) == "/var/run/docker.sock"
    assert "RUNTIME_DROP_IN_CONFIG" not in env


def test_user_host_paths_are_mounted_and_rewritten() -> None:
    """k3s/RKE2: toolkit.env names the host's files; the pod mounts their directories (as upstream does)."""
    k3s = "/var/lib/rancher/k3s/agent/etc/containerd/config.toml"
    raw = {
        "toolkit": {
            "env": [
                {"name": "CONTAINERD_CONFIG", "value": k3s},
                {"name": "CONTAINERD_SOCKET", "value": "/run/k3s/containerd/containerd.sock"},
                {"name": "RUNTIME_DROP_IN_CONFIG", "value": "/etc/k3s-nvidia/99-nvidia.toml"},
                {"name": "RUNTIME_CONFIG_SOURCE", "value": f"command,file={k3s}"},
                {"name": "RUNTIME", "value": "docker"},
                {"name": "EXTRA", "value": "kept"},
            ]
        }
    }
    ds = toolkit_ds(raw)
    main = container(ds, MAIN)
    env = env_of(main)
    assert host_path(ds, main, env["CONTAINERD_CONFIG"]) == k3s == host_path(ds, main, env["RUNTIME_CONFIG"])
    assert host_path(ds, main, env["CONTAINERD_SOCKET"]) == "/run/k3s/containerd/containerd.sock"
    assert host_path(ds, main, env["RUNTIME_DROP_IN_CONFIG"]) == "/etc/k3s-nvidia/99-nvidia.toml"
    assert env["RUNTIME_DROP_IN_CONFIG_HOST_PATH"] == "/etc/k3s-nvidia/99-nvidia.toml"
    assert env["RUNTIME_CONFIG_SOURCE"] == f"command,file=/host{k3s}"
    assert host_path(ds, main, f"/host{k3s}") == k3s
    assert env["RUNTIME"] == "containerd", "the pool's runtime is the node's, not a variable"
    assert env["EXTRA"] == "kept"
    assert len(main["env"]) == len(env), "no variable twice"


def test_cdi_on_makes_nvidia_a_handler_not_the_default() -> None:
    on = env_of(container(toolkit_ds({"cdi": {"enabled": True}}), MAIN))
    assert on["CDI_ENABLED"] == "true"
    assert on["NVIDIA_RUNTIME_SET_AS_DEFAULT"] == "false"
    assert on["NVIDIA_CONTAINER_RUNTIME_MODE"] == "cdi"
    assert on["NVIDIA_CONTAINER_RUNTIME_MODES_CDI_DEFAULT_KIND"] == "management.nvidia.com/gpu"
    off = env_of(container(toolkit_ds({"cdi": {"enabled": False}}), MAIN))
    assert not {"CDI_ENABLED", "NVIDIA_RUNTIME_SET_AS_DEFAULT", "NVIDIA_CONTAINER_RUNTIME_MODE"} & off.keys()
    assert off["NVIDIA_VISIBLE_DEVICES"] == "void"
    assert off["TOOLKIT_PID_FILE"] == "/run/nvidia/toolkit/toolkit.pid"


def test_user_env_may_override_cdi_defaults() -> None:
    raw = {"cdi": {"enabled": True}, "toolkit": {"env": [{"name": "NVIDIA_RUNTIME_SET_AS_DEFAULT", "value": "true"}]}}
    assert env_of(container(toolkit_ds(raw), MAIN))["NVIDIA_RUNTIME_SET_AS_DEFAULT"] == "true"


NRI = {"cdi": {"enabled": True, "nriPluginEnabled": True}}


@pytest.mark.parametrize("nodes", [None, [crio_node()]], ids=["containerd", "crio"])
def test_nri_plugin_runs_in_the_toolkit_with_only_the_nri_socket_mounted(nodes: list[NodeFacts] | None) -> None:
    """Upstream transformToolkitCtrForCDI and transformForRuntime: ENABLE_NRI_PLUGIN, NRI_SOCKET through a
    mount of /var/run/nri, and none of the runtime config, drop-in or socket mounts (read-only hosts)."""
    ds = toolkit_ds(NRI, nodes)
    main = container(ds, MAIN)
    env = env_of(main)
    assert env["ENABLE_NRI_PLUGIN"] == "true" and env["CDI_ENABLED"] == "true"
    assert env["NRI_SOCKET"] == "/runtime/nri-sock-dir/nri.sock"
    assert host_path(ds, main, env["NRI_SOCKET"]) == "/var/run/nri/nri.sock"
    volume = next(v for v in ds["spec"]["template"]["spec"]["volumes"] if v["name"] == "nri-socket")
    assert volume["hostPath"]["type"] == "DirectoryOrCreate"
    assert not {"CONTAINERD_RUNTIME_CLASS", "RUNTIME_CONFIG", "RUNTIME_DROP_IN_CONFIG", "RUNTIME_SOCKET"} & env.keys()
    assert not [m for m in main["volumeMounts"] if m["mountPath"].startswith(("/runtime/config-dir", "/runtime/sock"))]
    assert "ENABLE_NRI_PLUGIN" not in env_of(container(toolkit_ds({"cdi": {"enabled": True}}), MAIN))


def test_nri_socket_from_toolkit_env_is_a_host_path() -> None:
    raw = {**NRI, "toolkit": {"env": [{"name": "NRI_SOCKET", "value": "/run/k3s/nri/nri.sock"}]}}
    ds = toolkit_ds(raw)
    main = container(ds, MAIN)
    env = env_of(main)
    assert host_path(ds, main, env["NRI_SOCKET"]) == "/run/k3s/nri/nri.sock"
    assert len(main["env"]) == len(env), "no variable twice"


def test_cdi_root_and_toolkit_state_are_host_directories() -> None:
    ds = toolkit_ds()
    main = container(ds, MAIN)
    assert host_path(ds, main, "/var/run/cdi") == "/var/run/cdi"
    assert host_path(ds, main, "/run/nvidia/toolkit/toolkit.pid") == "/run/nvidia/toolkit/toolkit.pid"
    assert host_path(ds, main, "/run/nvidia/validations/driver-ready") == "/run/nvidia/validations/driver-ready"


# Runtime per node: detection, label, pools


@pytest.mark.parametrize(
    ("reported", "default", "expected"),
    [
        ("containerd://1.7.22", "containerd", "containerd"),
        ("cri-o://1.30.4", "containerd", "crio"),
        ("docker://27.1.1", "containerd", "docker"),
        ("containerd://2.0.5", "crio", "containerd"),
        ("", "crio", "crio"),
        ("frakti://0.1", "containerd", None),
    ],
)
def test_runtime_comes_from_the_node_and_the_default_only_when_it_reports_none(
    reported: str, default: str, expected: str | None
) -> None:
    node = facts("n", runtime=reported)
    assert runtime_of(node, default) == expected
    patch = desired_labels(node, parse_spec({"operator": {"defaultRuntime": default}}))
    assert patch.get(RUNTIME_LABEL) == expected


def test_runtime_label_follows_the_node_and_leaves_with_the_toolkit() -> None:
    spec = parse_spec({})
    moved = facts("n", runtime="cri-o://1.30.4", labels={RUNTIME_LABEL: "containerd"})
    assert desired_labels(moved, spec)[RUNTIME_LABEL] == "crio"
    unknown = facts("n", runtime="frakti://0.1", labels={RUNTIME_LABEL: "containerd"})
    assert desired_labels(unknown, spec)[RUNTIME_LABEL] is None
    no_gpu = facts("n", gpu=False, labels={RUNTIME_LABEL: "containerd"})
    assert desired_labels(no_gpu, spec)[RUNTIME_LABEL] is None
    opted_out = facts("n", labels={RUNTIME_LABEL: "containerd", "nvidia.com/gpu.deploy.operands": "false"})
    assert desired_labels(opted_out, spec)[RUNTIME_LABEL] is None
    settled = facts("n", labels={RUNTIME_LABEL: "containerd"})
    assert RUNTIME_LABEL not in desired_labels(settled, spec)


def test_mixed_cluster_gets_one_daemonset_per_runtime() -> None:
    nodes = [
        facts("gpu-ctr-a"),
        facts("gpu-ctr-b", runtime="containerd://2.0.5"),
        crio_node("gpu-crio-a"),
        facts("cpu-crio", gpu=False, runtime="cri-o://1.30.4"),
    ]
    found = {d["metadata"]["name"]: d for d in daemonsets([p for p in render_all(parse_spec({}), nodes)])}
    pools = {name: d for name, d in found.items() if name.startswith(DS)}
    assert set(pools) == {DS, f"{DS}-crio"}
    selectors = set()
    for name, ds in pools.items():
        runtime = "crio" if name.endswith("-crio") else "containerd"
        pod = ds["spec"]["template"]["spec"]
        assert pod["nodeSelector"] == {"nvidia.com/gpu.deploy.container-toolkit": "true", RUNTIME_LABEL: runtime}
        assert env_of(container(ds, MAIN))["RUNTIME"] == runtime
        selectors.add(tuple(sorted(ds["spec"]["selector"]["matchLabels"].items())))
    assert len(selectors) == 2, "pools must not select each other's pods"
    assert pools[DS]["spec"]["selector"]["matchLabels"] == {"app": DS}, "the containerd pool keeps upstream's selector"


def test_only_nodes_that_get_the_toolkit_make_pools() -> None:
    spec = parse_spec({})
    opted_out = crio_node("gpu-crio", labels={"nvidia.com/gpu.deploy.container-toolkit": "false"})
    paused = crio_node("gpu-crio-p", labels={"nvidia.com/gpu.deploy.container-toolkit": "paused-for-driver-upgrade"})
    render = [p for p in render_all(spec, [facts("gpu-ctr"), opted_out]) if p.state.name == STATE]
    assert [d["metadata"]["name"] for d in daemonsets(render)] == [DS]
    render = [p for p in render_all(spec, [facts("gpu-ctr"), paused]) if p.state.name == STATE]
    assert [d["metadata"]["name"] for d in daemonsets(render)] == [DS, f"{DS}-crio"]


def test_without_toolkit_nodes_the_default_runtime_pool_is_rendered() -> None:
    cpu_only = [facts("cpu", gpu=False)]
    assert toolkit_ds(nodes=cpu_only)["metadata"]["name"] == DS
    ds = toolkit_ds({"operator": {"defaultRuntime": "crio"}}, nodes=cpu_only)
    assert ds["metadata"]["name"] == f"{DS}-crio"


def test_unknown_runtime_is_named_in_the_status() -> None:
    spec = parse_spec({})
    raw_nodes = [facts("gpu-ok"), facts("gpu-odd", runtime="frakti://0.1"), facts("cpu", gpu=False, runtime="x://1")]
    nodes = relabelled(raw_nodes, node_patches(raw_nodes, spec))
    assert runtime_pools(nodes) == ["containerd"]
    assert unknown_runtime(nodes) == {"gpu-odd": "frakti"}
    notes = by_name(STATE).readiness_notes
    assert notes is not None
    message = notes(RenderContext(spec=spec, namespace="gpu-operator", nodes=tuple(nodes)))
    assert message is not None and "gpu-odd (frakti)" in message and "not supported" in message
    assert notes(RenderContext(spec=spec, namespace="gpu-operator", nodes=tuple(nodes[:1]))) is None


def test_every_toolkit_object_renders_once() -> None:
    nodes = [facts("gpu-ctr"), crio_node("gpu-crio")]
    objs = objects([p for p in render_all(parse_spec({}), nodes) if p.state.name == STATE])
    keys = [(o["kind"], o["metadata"]["name"]) for o in objs]
    assert len(keys) == len(set(keys))
    assert ("ConfigMap", "nvidia-container-toolkit-entrypoint") in keys
