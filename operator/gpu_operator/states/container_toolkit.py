"""state-container-toolkit: installs the NVIDIA Container Toolkit and adds the `nvidia` runtime to each node's
container runtime.

One DaemonSet per container-runtime pool (node label `nodes.RUNTIME_LABEL`, set from the node's
`status.nodeInfo.containerRuntimeVersion`): the containerd pool keeps upstream's name, the others get the
runtime as a suffix, so a pool's name never changes when another runtime joins the cluster.

The pod writes its own `driver-ready` (init container `driver-validation`, no runtime class), so it never
waits for the validator pod, which needs the runtime handler this pod creates. The installer edits the host's
runtime config through host directories mounted at fixed container paths; the variables that name those
paths are the operator's (a user's value for one of them is read as a host path and mounted, as upstream does
for k3s and RKE2).
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from typing import Any

from ..api import ClusterPolicySpec
from ..nodes import RUNTIME_LABEL, runtime_pools, unknown_runtime
from .base import OperandState, RenderContext, set_env
from .operator_validation import driver_check_env

BASE_NAME = "nvidia-container-toolkit-daemonset"
MAIN_CONTAINER = "nvidia-container-toolkit-ctr"
CONFIG_DIR = "/runtime/config-dir/"  # the top-level config's host directory
DROP_IN_DIR = "/runtime/config-dir.d/"  # the NVIDIA drop-in's host directory
SOCKET_DIR = "/runtime/sock-dir/"  # the runtime socket's host directory
NRI_SOCKET_DIR = "/runtime/nri-sock-dir/"  # the runtime's NRI socket directory (CDI's NRI plugin)
NRI_SOCKET = "/var/run/nri/nri.sock"
HOST_ROOT_MOUNT = "/host"  # the host's root, read-only
CRIO_HOOKS_DIR = "/usr/share/containers/oci/hooks.d"  # where cri-o (outside OpenShift) reads OCI hooks
OTHER_HOOKS_DIR = "/run/containers/oci/hooks.d"  # upstream's default for the crio-hooks volume


@dataclass(frozen=True)
class RuntimeFiles:
    """Where a runtime keeps its files on the host, and the installer variable that names each."""

    config_var: str
    config: str  # the top-level config (containerd: edited to import the drop-in; cri-o: read only)
    drop_in: str = ""  # the NVIDIA drop-in the installer writes ("" = the runtime has none)
    socket_var: str = ""
    socket: str = ""  # the socket the installer signals to reload the config ("" = restarted via systemd)


RUNTIME_FILES = {
    "containerd": RuntimeFiles(
        "CONTAINERD_CONFIG",
        "/etc/containerd/config.toml",
        "/etc/containerd/conf.d/99-nvidia.toml",
        "CONTAINERD_SOCKET",
        "/run/containerd/containerd.sock",
    ),
    # cri-o's own top-level config (upstream names /etc/crio/config.toml, which cri-o does not read).
    "crio": RuntimeFiles("CRIO_CONFIG", "/etc/crio/crio.conf", "/etc/crio/crio.conf.d/99-nvidia.conf"),
    "docker": RuntimeFiles(
        "DOCKER_CONFIG", "/etc/docker/daemon.json", socket_var="DOCKER_SOCKET", socket="/var/run/docker.sock"
    ),
}


def daemonset_name(runtime: str) -> str:
    return BASE_NAME if runtime == "containerd" else f"{BASE_NAME}-{runtime}"


def runtime_contract(runtime: str, spec: ClusterPolicySpec) -> tuple[list[tuple[str, str]], list[dict[str, str]]]:
    """The installer variables that point at the host's runtime files, and the host directories they need.

    Returns (env as (name, value) pairs, mounts as {name, hostPath, mountPath, type}). A path the user set in
    `toolkit.env` is a host path: its directory is mounted and the variable rewritten to the container path.
    With CDI's NRI plugin the installer leaves the runtime config alone: only the NRI socket is mounted.
    """
    user = {e.name: e.value for e in spec.toolkit.env}
    files = RUNTIME_FILES[runtime]
    env = [("RUNTIME", runtime)]
    if spec.cdi.nri_plugin_enabled:
        socket = user.get("NRI_SOCKET") or NRI_SOCKET
        env.append(("NRI_SOCKET", NRI_SOCKET_DIR + posixpath.basename(socket)))
        return env, [_mount("nri-socket", posixpath.dirname(socket), NRI_SOCKET_DIR, "DirectoryOrCreate")]
    # The handler the RuntimeClass names: upstream's variable for containerd, the installer's own for the others.
    # The installer reads NVIDIA_RUNTIME_NAME first, so a user's one is overridden on containerd too.
    handler = spec.operator.runtime_class or "nvidia"
    env.append(("CONTAINERD_RUNTIME_CLASS" if runtime == "containerd" else "NVIDIA_RUNTIME_NAME", handler))
    if runtime == "containerd" and "NVIDIA_RUNTIME_NAME" in user:
        env.append(("NVIDIA_RUNTIME_NAME", handler))
    mounts = []

    config = user.get(files.config_var) or user.get("RUNTIME_CONFIG") or files.config
    in_ctr = CONFIG_DIR + posixpath.basename(config)
    env += [("RUNTIME_CONFIG", in_ctr), (files.config_var, in_ctr)]
    mounts.append(_mount(f"{runtime}-config", posixpath.dirname(config), CONFIG_DIR, "DirectoryOrCreate"))

    if files.drop_in:
        drop_in = user.get("RUNTIME_DROP_IN_CONFIG") or files.drop_in
        env += [
            ("RUNTIME_DROP_IN_CONFIG", DROP_IN_DIR + posixpath.basename(drop_in)),
            ("RUNTIME_DROP_IN_CONFIG_HOST_PATH", drop_in),
        ]
        mounts.append(_mount(f"{runtime}-drop-in-config", posixpath.dirname(drop_in), DROP_IN_DIR, "DirectoryOrCreate"))

    if user.get("RUNTIME_CONFIG_SOURCE"):
        env.append(("RUNTIME_CONFIG_SOURCE", _config_sources(user["RUNTIME_CONFIG_SOURCE"])))

    if files.socket_var:
        socket = user.get(files.socket_var) or files.socket
        sock = SOCKET_DIR + posixpath.basename(socket)
        env += [("RUNTIME_SOCKET", sock), (files.socket_var, sock)]
        mounts.append(_mount(f"{runtime}-socket", posixpath.dirname(socket), SOCKET_DIR, ""))
    return env, mounts


def _mount(name: str, host_path: str, mount_path: str, type_: str) -> dict[str, str]:
    return {"name": name, "hostPath": host_path, "mountPath": mount_path, "type": type_}


def _config_sources(value: str) -> str:
    """`file=<host path>` sources read through the host root mount; other sources unchanged."""
    out = []
    for source in value.split(","):
        kind, sep, path = source.partition("=")
        if sep and kind == "file":
            source = "file=" + posixpath.join(HOST_ROOT_MOUNT, path.lstrip("/"))
        out.append(source)
    return ",".join(out)


def _vars(ctx: RenderContext) -> dict[str, Any]:
    spec = ctx.spec
    runtimes = runtime_pools(list(ctx.nodes)) or [spec.operator.default_runtime]
    pools = []
    for runtime in runtimes:
        env, mounts = runtime_contract(runtime, spec)
        pools.append(
            {
                "name": daemonset_name(runtime),
                "runtime": runtime,
                "env": env,
                "mounts": mounts,
                "hooks_dir": CRIO_HOOKS_DIR if runtime == "crio" else OTHER_HOOKS_DIR,
            }
        )
    root_fs = spec.host_paths.root_fs
    return {
        "pools": pools,
        "host_root": root_fs,
        "host_dev_char": posixpath.join(root_fs, "dev/char"),
        "driver_install_dir": spec.host_paths.driver_install_dir,
        "driver_check_env": driver_check_env(spec),
        "validator": spec.validator,
        "validator_resources": (
            spec.validator.resources.model_dump(exclude_defaults=True) if spec.validator.resources else None
        ),
    }


class ToolkitState(OperandState):
    """The toolkit state: after `toolkit.env` is applied, the runtime path variables are the operator's again,
    and `toolkit.args` is left out, as upstream leaves it out (the entrypoint takes none; coverage names the field)."""

    def _decorate_daemonset(self, ds: dict[str, Any], spec: ClusterPolicySpec) -> None:
        super()._decorate_daemonset(ds, spec)
        pod = ds["spec"]["template"]["spec"]
        runtime = ds["metadata"]["labels"][RUNTIME_LABEL]
        forced, _ = runtime_contract(runtime, spec)
        main = next(c for c in pod["containers"] if c["name"] == MAIN_CONTAINER)
        main.pop("args", None)
        for name, value in forced:
            set_env(main, {"name": name, "value": value})
        # The driver-validation init container pulls the validator image.
        secrets = pod.get("imagePullSecrets", [])
        for secret in spec.validator.image_pull_secrets:
            if {"name": secret} not in secrets:
                secrets.append({"name": secret})
        if secrets:
            pod["imagePullSecrets"] = secrets


def _unknown_runtime_note(ctx: RenderContext) -> str | None:
    """GPU nodes whose container runtime gets no toolkit, named with the runtime they report."""
    missing = unknown_runtime(list(ctx.nodes))
    if not missing:
        return None
    shown = ", ".join(f"{name} ({rt or 'none'})" for name, rt in list(missing.items())[:5])
    more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
    return f"no container toolkit for {shown}{more}: container runtime not supported (containerd, cri-o, docker)"


STATE = ToolkitState(
    name="state-container-toolkit",
    order=4,
    section="toolkit",
    component="toolkit",
    container=MAIN_CONTAINER,
    deploy_label="container-toolkit",
    extra_vars=_vars,
    depends_on_nodes=True,
    readiness_notes=_unknown_runtime_note,
)
