"""The real NVIDIA Container Toolkit installer, run with our rendered toolkit container, against a scratch host.

`e2e/cluster/build.sh` builds `nvidia-ctk-installer` (what the toolkit image runs as `nvidia-toolkit`) from the
Go module. Each test renders our toolkit DaemonSet for a node of one runtime, emulates the pod's mount table
(every hostPath mount maps to `<tmp>/host/<hostPath>`; any other path is the container's own filesystem,
`<tmp>/container/<path>`, thrown away with the pod), rewrites the container's path variables through it and
runs the installer once (`--no-daemon`), with the values `driver-ready` gives it. The assertions read the
HOST files: the runtime config the installer edited and the toolkit it installed.

What cannot run here, and what stands in for it:
- The toolkit's own binaries and libnvidia-container (`/artifacts/deb` in the image; libnvidia-container is C,
  not in the Go module): same-named stand-in files (`TOOLKIT_SOURCE_ROOT`), which the installer copies and
  wraps like the real ones. Whether those binaries then run a GPU container is not tested.
- Restarting cri-o (`chroot /host systemctl restart crio`: root and systemd) and docker (a signal through
  its socket): `RUNTIME_RESTART_MODE=none`. containerd is really signalled: a stand-in process listens on the
  host's containerd socket (the one the pod mounts) and must receive the installer's SIGHUP.
- The `command` config source (`chroot /host containerd config dump`, `crio status config`): no runtime
  binary in the scratch host, so the installer falls back to its `file` source, the host's config read
  through the mount, as it does on a node where the command fails.
- CDI's management spec and control device nodes: the spec needs NVML (the driver's libnvidia-ml, dlopened,
  for the driver version) and /dev/nvidia* character devices; the nodes need mknod and the driver's majors.
  With CDI on, `CDI_OUTPUT_DIR` is empty and `CREATE_DEVICE_NODES=none`, and `RUNTIME_ENABLE_CDI=true` keeps
  what CDI does to the runtime config (the installer derives it from `CDI_ENABLED` otherwise).
- The daemon part (waiting for SIGTERM, then undoing the config): `--no-daemon`.
- Mount propagation, SELinux labels, hostPID, privileged: not modelled; the mount table is.
"""

from __future__ import annotations

import json
import os
import posixpath
import signal
import subprocess
import sys
import textwrap
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from e2e.cluster.localcluster import BUILD_SH, bin_dir
from gpu_operator.api import parse_spec
from gpu_operator.nodes import NodeFacts
from gpu_operator.render import node_patches, plan, relabelled
from gpu_operator.states import RenderContext

INSTALLER = "nvidia-ctk-installer"
MAIN = "nvidia-container-toolkit-ctr"
# Variables whose values are host paths by contract (written into configs, never opened in the container).
HOST_PATH_VARS = {
    "RUNTIME_DROP_IN_CONFIG_HOST_PATH",
    "NVIDIA_DRIVER_ROOT",
    "NVIDIA_DEV_ROOT",
    "DRIVER_ROOT",
    "DEV_ROOT",
}
# The installer's defaults that are container paths (cmd/nvidia-ctk-installer: main.go, container/runtime/...),
# as (the variables it reads them from, value): made explicit when the pod sets none of those variables, so that
# they go through the mount table too and the installer never opens a path of this machine.
INSTALLER_DEFAULTS: dict[str, list[tuple[tuple[str, ...], str]]] = {
    "any": [
        (("HOST_ROOT_MOUNT",), "/host"),
        (("CDI_OUTPUT_DIR",), "/var/run/cdi"),
        (("CRIO_HOOKS_DIR",), "/usr/share/containers/oci/hooks.d"),
        (("TOOLKIT_PID_FILE", "PID_FILE"), "/run/nvidia/toolkit/toolkit.pid"),
        (("TOOLKIT_INSTALL_DIR", "ROOT"), "/usr/local/nvidia"),
    ],
    "containerd": [
        (("RUNTIME_CONFIG", "CONTAINERD_CONFIG", "DOCKER_CONFIG"), "/etc/containerd/config.toml"),
        (("RUNTIME_DROP_IN_CONFIG",), "/etc/containerd/conf.d/99-nvidia.toml"),
        (("RUNTIME_SOCKET", "CONTAINERD_SOCKET", "DOCKER_SOCKET"), "/run/containerd/containerd.sock"),
    ],
    "crio": [
        (("RUNTIME_CONFIG", "CONTAINERD_CONFIG", "DOCKER_CONFIG"), "/etc/crio/crio.conf"),
        (("RUNTIME_DROP_IN_CONFIG",), "/etc/crio/crio.conf.d/99-nvidia.toml"),
        (("RUNTIME_SOCKET", "CONTAINERD_SOCKET", "DOCKER_SOCKET"), "/var/run/crio/crio.sock"),
    ],
    "docker": [
        (("RUNTIME_CONFIG", "CONTAINERD_CONFIG", "DOCKER_CONFIG"), "/etc/docker/daemon.json"),
        (("RUNTIME_SOCKET", "CONTAINERD_SOCKET", "DOCKER_SOCKET"), "/var/run/docker.sock"),
    ],
}
# What driver-validation writes for a driver container (cmd/nvidia-validator, createStatusFile).
DRIVER_READY = {
    "IS_HOST_DRIVER": "false",
    "NVIDIA_DRIVER_ROOT": "/run/nvidia/driver",
    "DRIVER_ROOT_CTR_PATH": "/driver-root",
    "NVIDIA_DEV_ROOT": "/run/nvidia/driver",
    "DEV_ROOT_CTR_PATH": "/driver-root",
}
RUNTIME_VERSIONS = {"containerd": "containerd://2.0.5", "crio": "cri-o://1.30.4", "docker": "docker://27.1.1"}
TOOLKIT_BINARIES = (
    "nvidia-ctk",
    "nvidia-cdi-hook",
    "nvidia-container-runtime",
    "nvidia-container-runtime.cdi",
    "nvidia-container-runtime.legacy",
    "nvidia-container-cli",
    "nvidia-container-runtime-hook",
)
TOOLKIT_LIBRARIES = ("libnvidia-container.so.1", "libnvidia-container-go.so.1")

CONTAINERD_V2 = """\
version = 2
[plugins."io.containerd.grpc.v1.cri".containerd]
  default_runtime_name = "runc"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
      BinaryName = "/usr/local/sbin/runc"
      SystemdCgroup = true
"""
CONTAINERD_V3 = """\
version = 3
[plugins."io.containerd.cri.v1.runtime".containerd]
  default_runtime_name = "runc"
  [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
      BinaryName = "/usr/local/sbin/runc"
      SystemdCgroup = true
"""
CRIO_CONF = """\
[crio.runtime]
default_runtime = "crun"

[crio.runtime.runtimes.crun]
runtime_path = "/usr/libexec/crio/crun"
runtime_type = "oci"
"""
DOCKER_DAEMON_JSON = '{"log-driver": "json-file"}\n'

# The toolkit container as we rendered it before the upstream contract (kept as data: the bug it proves).
OLD_CONTAINER = {
    "name": MAIN,
    "env": [
        {"name": "ROOT", "value": "/usr/local/nvidia"},
        {"name": "RUNTIME", "value": "containerd"},
        {
            "name": "NVIDIA_CONTAINER_RUNTIME_HOOK_PATH",
            "value": "/usr/local/nvidia/toolkit/nvidia-container-runtime-hook",
        },
        {"name": "CDI_ENABLED", "value": "false"},
        {"name": "RUNTIME_CONFIG_SOURCE", "value": "file"},
    ],
    "volumeMounts": [
        {"name": "run-nvidia", "mountPath": "/run/nvidia"},
        {"name": "run-nvidia-validations", "mountPath": "/run/nvidia/validations"},
        {"name": "toolkit-install-dir", "mountPath": "/usr/local/nvidia"},
        {"name": "containerd-config", "mountPath": "/runtime/config-dir/"},
        {"name": "containerd-socket", "mountPath": "/runtime/sock-dir/"},
    ],
}
OLD_VOLUMES = [
    {"name": "run-nvidia", "hostPath": {"path": "/run/nvidia"}},
    {"name": "run-nvidia-validations", "hostPath": {"path": "/run/nvidia/validations"}},
    {"name": "toolkit-install-dir", "hostPath": {"path": "/usr/local/nvidia"}},
    {"name": "containerd-config", "hostPath": {"path": "/etc/containerd"}},
    {"name": "containerd-socket", "hostPath": {"path": "/run/containerd"}},
]


@pytest.fixture(scope="module")
def installer() -> Path:
    path = bin_dir() / INSTALLER
    if not os.access(path, os.X_OK):
        print(f"[toolkit] {path} missing: running {BUILD_SH}", file=sys.stderr, flush=True)
        subprocess.run(["bash", str(BUILD_SH)], check=True, stdout=sys.stderr, stderr=sys.stderr)
    assert os.access(path, os.X_OK), f"build.sh did not build {path} (it needs a C compiler, see its output)"
    return path


def render_toolkit(runtime: str, raw: dict[str, Any] | None = None) -> dict[str, Any]:
    """Our toolkit DaemonSet for a cluster of one GPU node running `runtime`."""
    spec = parse_spec(raw or {})
    node = NodeFacts.from_node(
        {
            "metadata": {"name": "gpu-node", "labels": {"feature.node.kubernetes.io/pci-10de.present": "true"}},
            "status": {"nodeInfo": {"containerRuntimeVersion": RUNTIME_VERSIONS[runtime]}},
        }
    )
    nodes = relabelled([node], node_patches([node], spec))
    ctx = RenderContext(spec=spec, namespace="gpu-operator", nodes=tuple(nodes))
    (toolkit,) = [p for p in plan(ctx) if p.state.name == "state-container-toolkit"]
    (ds,) = [o for o in toolkit.objects if o["kind"] == "DaemonSet"]
    return ds


@dataclass
class Pod:
    """One toolkit container's view of a scratch node: its mount table and its env."""

    tmp: Path
    mounts: list[tuple[str, str]] = field(default_factory=list)  # (mountPath, hostPath), longest first
    env: dict[str, str] = field(default_factory=dict)

    @property
    def host(self) -> Path:
        return self.tmp / "host"

    @property
    def container(self) -> Path:
        return self.tmp / "container"

    @classmethod
    def of(cls, tmp: Path, ctr: dict[str, Any], volumes: list[dict[str, Any]]) -> Pod:
        by_name = {v["name"]: v for v in volumes}
        mounts = []
        for m in ctr["volumeMounts"]:
            source = by_name[m["name"]].get("hostPath")
            if source and "subPath" not in m:
                mounts.append((m["mountPath"].rstrip("/") or "/", source["path"]))
        mounts.sort(key=lambda m: len(m[0]), reverse=True)
        env = {e["name"]: e["value"] for e in ctr["env"] if "value" in e}
        return cls(tmp, mounts, env)

    def to_host(self, path: str) -> str | None:
        """The host path a container path lies at, or None when it is the container's own."""
        for mount, source in self.mounts:
            if path == mount or path.startswith(mount + "/"):
                return posixpath.join(source, path[len(mount) :].lstrip("/")).rstrip("/") or "/"
        return None

    def scratch(self, path: str) -> str:
        """Where a container path lies in the scratch tree (the path the installer opens here)."""
        on_host = self.to_host(path)
        base, rel = (self.host, on_host) if on_host is not None else (self.container, path)
        return str(base / rel.lstrip("/"))

    def back(self, scratch_path: str) -> str:
        """The container path of a scratch path the installer wrote into a file."""
        for mount, source in self.mounts:
            prefix = str(self.host / source.lstrip("/")).rstrip("/")
            if scratch_path == prefix or scratch_path.startswith(prefix + "/"):
                return posixpath.join(mount, scratch_path[len(prefix) :].lstrip("/")).rstrip("/")
        raise AssertionError(f"{scratch_path} is not under any mount")

    def host_file(self, host_path: str) -> Path:
        return self.host / host_path.lstrip("/")

    def run(
        self, installer: Path, extra: dict[str, str], driver_ready: dict[str, str] = DRIVER_READY
    ) -> subprocess.CompletedProcess[str]:
        """Run the installer as the container would; `extra` (test-only settings) is passed as it is."""
        env = {**self.env, **driver_ready}
        for names, value in INSTALLER_DEFAULTS["any"] + INSTALLER_DEFAULTS[env.get("RUNTIME", "docker")]:
            if not any(n in env or n in extra for n in names):
                env[names[0]] = value
        for name, value in env.items():
            if value.startswith("/") and name not in HOST_PATH_VARS:
                env[name] = self.scratch(value)
        env.update(extra)
        for _, source in self.mounts:
            self.host_file(source).mkdir(parents=True, exist_ok=True)  # hostPath directories exist
        self.container.mkdir(parents=True, exist_ok=True)
        env["PATH"] = os.environ["PATH"]
        return subprocess.run(
            [str(installer), "--no-daemon"], env=env, capture_output=True, text=True, timeout=120, check=False
        )


def artifacts(tmp: Path) -> Path:
    """Stand-ins for the image's /artifacts/deb: the toolkit's binaries and libnvidia-container."""
    root = tmp / "artifacts"
    bindir = root / "usr" / "bin"
    libdir = root / "usr" / "lib" / "x86_64-linux-gnu"
    bindir.mkdir(parents=True)
    libdir.mkdir(parents=True)
    for name in TOOLKIT_BINARIES:
        (bindir / name).write_text(f"#!/bin/sh\necho stand-in for {name}\n")
        (bindir / name).chmod(0o755)
    for name in TOOLKIT_LIBRARIES:
        (libdir / f"{name}.20.0").write_text("stand-in\n")
        (libdir / name).symlink_to(f"{name}.20.0")
    return root


def toolkit_pod(tmp: Path, runtime: str, raw: dict[str, Any] | None = None) -> Pod:
    ds = render_toolkit(runtime, raw)
    pod_spec = ds["spec"]["template"]["spec"]
    (ctr,) = [c for c in pod_spec["containers"] if c["name"] == MAIN]
    return Pod.of(tmp, ctr, pod_spec["volumes"])


def base_env(tmp: Path, cdi: bool) -> dict[str, str]:
    env = {"TOOLKIT_SOURCE_ROOT": str(artifacts(tmp))}
    if cdi:
        env.update({"CDI_OUTPUT_DIR": "", "CREATE_DEVICE_NODES": "none", "RUNTIME_ENABLE_CDI": "true"})
    return env


def check(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 0, f"installer failed ({proc.returncode}):\n{proc.stderr[-4000:]}"


def files_under(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if not p.is_dir())


@pytest.fixture
def fake_containerd(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A process listening on the host's containerd socket that records the SIGHUP the installer sends it."""
    sock = tmp_path / "host" / "run" / "containerd" / "containerd.sock"
    sock.parent.mkdir(parents=True)
    marker = tmp_path / "sighup"
    ready = tmp_path / "listening"
    code = textwrap.dedent(
        f"""
        import os, signal, socket
        def hup(*_):  # the marker appears whole: written aside, then renamed
            with open({str(marker)!r} + ".tmp", "w") as f:
                f.write("SIGHUP\\n")
            os.replace({str(marker)!r} + ".tmp", {str(marker)!r})
        signal.signal(signal.SIGHUP, hup)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind({str(sock)!r})
        s.listen(8)
        open({str(ready)!r}, "w").close()
        while True:
            conn, _ = s.accept()
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)  # the installer reads our pid from it
            conn.sendall(b"x")
            while conn.recv(64):  # like containerd, keep the connection until the client closes it
                pass
            conn.close()
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 10
        while not ready.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "stand-in containerd did not start"
            time.sleep(0.05)
        yield sock, marker
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)


def toolkit_config(pod: Pod, install_dir: str = "/usr/local/nvidia") -> dict[str, Any]:
    """The installed toolkit's own config, read on the host."""
    return tomllib.loads(
        pod.host_file(f"{install_dir}/toolkit/.config/nvidia-container-runtime/config.toml").read_text()
    )


def sighup_received(marker: Path, timeout: float = 10) -> bool:
    """Whether the stand-in containerd got its SIGHUP (its handler runs asynchronously) within the timeout."""
    deadline = time.monotonic() + timeout
    while not marker.exists():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return marker.read_text() == "SIGHUP\n"


def cri_runtimes(config: dict[str, Any], plugin: str) -> dict[str, Any]:
    return dict(config["plugins"][plugin]["containerd"]["runtimes"])


# containerd: config v2 and v3, CDI off and on


@pytest.mark.parametrize(
    ("version", "top_level", "plugin", "cdi"),
    [
        (2, CONTAINERD_V2, "io.containerd.grpc.v1.cri", False),
        (3, CONTAINERD_V3, "io.containerd.cri.v1.runtime", False),
        (2, CONTAINERD_V2, "io.containerd.grpc.v1.cri", True),
        (3, CONTAINERD_V3, "io.containerd.cri.v1.runtime", True),
    ],
    ids=["v2", "v3", "v2-cdi", "v3-cdi"],
)
def test_containerd_gets_the_nvidia_runtimes_on_the_host(
    tmp_path: Path,
    installer: Path,
    fake_containerd: tuple[Path, Path],
    version: int,
    top_level: str,
    plugin: str,
    cdi: bool,
) -> None:
    pod = toolkit_pod(tmp_path, "containerd", {"cdi": {"enabled": cdi}})
    config = pod.host_file("/etc/containerd/config.toml")
    config.parent.mkdir(parents=True)
    config.write_text(top_level)

    proc = pod.run(installer, base_env(tmp_path, cdi))
    check(proc)

    # The NVIDIA drop-in is on the host, with the three runtimes pointing at binaries installed on the host.
    drop_in = tomllib.loads(pod.host_file("/etc/containerd/conf.d/99-nvidia.toml").read_text())
    assert drop_in["version"] == version
    runtimes = cri_runtimes(drop_in, plugin)
    for name, binary in (
        ("nvidia", "nvidia-container-runtime"),
        ("nvidia-cdi", "nvidia-container-runtime.cdi"),
        ("nvidia-legacy", "nvidia-container-runtime.legacy"),
    ):
        rt = runtimes[name]
        assert rt["runtime_type"] == "io.containerd.runc.v2"
        in_ctr = pod.back(rt["options"]["BinaryName"])
        assert in_ctr == f"/usr/local/nvidia/toolkit/{binary}"
        assert pod.to_host(in_ctr) == in_ctr, "containerd on the host execs the path the container wrote"
        assert pod.host_file(in_ctr).is_file()
        assert rt["options"]["SystemdCgroup"] is True, "runc's options are carried over"
    cri = drop_in["plugins"][plugin]
    if cdi:
        assert cri.get("enable_cdi") is True
        assert cri["containerd"]["default_runtime_name"] == "runc", "with CDI, nvidia is a handler, not the default"
    else:
        assert cri["containerd"]["default_runtime_name"] == "nvidia"

    # The host's top-level config imports the drop-in by its HOST path and keeps everything else.
    top = tomllib.loads(config.read_text())
    assert top["imports"] == ["/etc/containerd/conf.d/*.toml"]
    assert top["version"] == version
    assert cri_runtimes(top, plugin).keys() == {"runc"}

    # The installed toolkit's config names the host's driver root (from driver-ready) and runc from the host config.
    tk = toolkit_config(pod)
    assert tk["nvidia-container-cli"]["root"] == "/run/nvidia/driver"
    assert tk["nvidia-container-runtime"]["runtimes"][0] == "/usr/local/sbin/runc"
    if cdi:
        assert tk["nvidia-container-runtime"]["mode"] == "cdi"

    # containerd was told to reload through the host's socket; nothing was written inside the container.
    assert sighup_received(fake_containerd[1]), proc.stderr[-3000:]
    assert files_under(pod.container) == []
    assert pod.host_file("/run/nvidia/toolkit").is_dir()


def test_install_dir_lands_on_the_host(tmp_path: Path, installer: Path, fake_containerd: tuple[Path, Path]) -> None:
    pod = toolkit_pod(tmp_path, "containerd", {"toolkit": {"installDir": "/opt/nvidia"}, "cdi": {"enabled": False}})
    pod.host_file("/etc/containerd").mkdir(parents=True)
    pod.host_file("/etc/containerd/config.toml").write_text(CONTAINERD_V2)
    check(pod.run(installer, base_env(tmp_path, cdi=False)))
    drop_in = tomllib.loads(pod.host_file("/etc/containerd/conf.d/99-nvidia.toml").read_text())
    binary = cri_runtimes(drop_in, "io.containerd.grpc.v1.cri")["nvidia"]["options"]["BinaryName"]
    assert pod.back(binary) == "/opt/nvidia/toolkit/nvidia-container-runtime"
    assert pod.host_file("/opt/nvidia/toolkit/nvidia-container-runtime").is_file()
    assert not pod.host_file("/usr/local/nvidia/toolkit").exists()
    assert files_under(pod.container) == []


def test_a_host_driver_root_from_driver_ready_reaches_the_toolkit_config(
    tmp_path: Path, installer: Path, fake_containerd: tuple[Path, Path]
) -> None:
    """driver-ready for a driver installed on the host (root `/`, seen at /host in the container)."""
    host_driver = {
        "IS_HOST_DRIVER": "true",
        "NVIDIA_DRIVER_ROOT": "/",
        "DRIVER_ROOT_CTR_PATH": "/host",
        "NVIDIA_DEV_ROOT": "/",
        "DEV_ROOT_CTR_PATH": "/host",
    }
    pod = toolkit_pod(tmp_path, "containerd", {"cdi": {"enabled": False}})
    pod.host_file("/etc/containerd").mkdir(parents=True)
    pod.host_file("/etc/containerd/config.toml").write_text(CONTAINERD_V2)
    check(pod.run(installer, base_env(tmp_path, cdi=False), driver_ready=host_driver))
    tk = toolkit_config(pod)
    assert tk["nvidia-container-cli"]["root"] == "/", "the default would be /run/nvidia/driver"
    assert tk["nvidia-container-cli"]["ldconfig"].startswith("@/sbin/ldconfig")


# cri-o: the drop-in in cri-o's config directory; cri-o's own config is read, never written


@pytest.mark.parametrize("cdi", [False, True], ids=["cdi-off", "cdi-on"])
def test_crio_gets_its_drop_in_on_the_host(tmp_path: Path, installer: Path, cdi: bool) -> None:
    pod = toolkit_pod(tmp_path, "crio", {"cdi": {"enabled": cdi}})
    crio_conf = pod.host_file("/etc/crio/crio.conf")
    crio_conf.parent.mkdir(parents=True)
    crio_conf.write_text(CRIO_CONF)

    check(pod.run(installer, {**base_env(tmp_path, cdi), "RUNTIME_RESTART_MODE": "none"}))

    drop_in = tomllib.loads(pod.host_file("/etc/crio/crio.conf.d/99-nvidia.conf").read_text())
    runtimes = drop_in["crio"]["runtime"]["runtimes"]
    assert {"nvidia", "nvidia-cdi", "nvidia-legacy"} <= runtimes.keys()
    path = pod.back(runtimes["nvidia"]["runtime_path"])
    assert path == "/usr/local/nvidia/toolkit/nvidia-container-runtime" == pod.to_host(path)
    assert pod.host_file(path).is_file()
    if cdi:
        assert drop_in["crio"]["runtime"].get("default_runtime") != "nvidia"
    else:
        assert drop_in["crio"]["runtime"]["default_runtime"] == "nvidia"
    assert crio_conf.read_text() == CRIO_CONF, "cri-o's own config is only read"
    tk = toolkit_config(pod)
    assert tk["nvidia-container-runtime"]["runtimes"][0] == "/usr/libexec/crio/crun", "read from the host's crio.conf"
    assert not pod.host_file("/usr/share/containers/oci/hooks.d/oci-nvidia-hook.json").exists(), "config mode, no hook"
    assert files_under(pod.container) == []


def test_docker_gets_the_runtimes_in_daemon_json(tmp_path: Path, installer: Path) -> None:
    pod = toolkit_pod(tmp_path, "docker", {"cdi": {"enabled": False}})
    daemon = pod.host_file("/etc/docker/daemon.json")
    daemon.parent.mkdir(parents=True)
    daemon.write_text(DOCKER_DAEMON_JSON)
    check(pod.run(installer, {**base_env(tmp_path, cdi=False), "RUNTIME_RESTART_MODE": "none"}))
    config = json.loads(daemon.read_text())
    assert config["log-driver"] == "json-file"
    assert pod.back(config["runtimes"]["nvidia"]["path"]) == "/usr/local/nvidia/toolkit/nvidia-container-runtime"
    assert config["default-runtime"] == "nvidia"
    assert files_under(pod.container) == []


# The bug this contract fixes


def test_the_old_container_edits_nothing_on_the_host(tmp_path: Path, installer: Path) -> None:
    """Our toolkit container before the upstream contract: the installer edits its own filesystem, not the host's."""
    pod = Pod.of(tmp_path, OLD_CONTAINER, OLD_VOLUMES)
    config = pod.host_file("/etc/containerd/config.toml")
    config.parent.mkdir(parents=True)
    config.write_text(CONTAINERD_V2)

    check(pod.run(installer, {**base_env(tmp_path, cdi=False), "RUNTIME_RESTART_MODE": "none"}))

    assert config.read_text() == CONTAINERD_V2
    assert not pod.host_file("/etc/containerd/conf.d").exists()
    written = files_under(pod.container)
    assert "etc/containerd/conf.d/99-nvidia.toml" in written, written
