"""The operator image that `make image` builds (hack/build-image.sh), started here without a container engine.

The archive is built once for this module (about a minute with the cache warm; the first build on a machine runs
debootstrap and takes minutes), unpacked layer by layer into a directory, and its entrypoint runs chrooted
there, in a private mount namespace, as the image's user and with the image's environment, against the local
cluster, until the operator is healthy: /healthz answers, metrics are served and a ClusterPolicy goes ready.
Needs root. Marked `image`: deselect with `-m "not image"`; GPU_OPERATOR_IMAGE_ARCHIVE=path uses an archive
already built instead of building one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from e2e.cluster.localcluster import LocalCluster
from e2e.cluster.nodes import create_nodes, delete_nodes, make_node
from e2e.kube import wait_for
from e2e.operator_process import NAMESPACE, delete_policies, free_port, install_crds_and_rbac, policy_from_sample
from e2e.test_chart import one, render
from gpu_operator.kube import Kube

pytestmark = pytest.mark.image

REPO = Path(__file__).resolve().parents[1]
BUILD = REPO / "hack" / "build-image.sh"
BUILD_TIMEOUT = 1200  # a cold build: debootstrap, then the dependencies from PyPI
WAIT = 90
NODE = "image-cpu-0"  # carries Node Feature Discovery's labels (the policy's prerequisite); no GPU


def _blob(descriptor: dict[str, Any]) -> str:
    algorithm, digest = descriptor["digest"].split(":", 1)
    return f"blobs/{algorithm}/{digest}"


class Image:
    """An OCI image archive: its index, manifest and config, and its layers unpacked into a root filesystem."""

    def __init__(self, archive: Path):
        self.archive = archive
        with tarfile.open(archive) as t:
            self.index = json.load(self._member(t, "index.json"))
            (self.descriptor,) = self.index["manifests"]
            self.manifest = json.load(self._verified(t, self.descriptor))
            self.config = json.load(self._verified(t, self.manifest["config"]))
            self.docker_manifest = json.load(self._member(t, "manifest.json"))

    @staticmethod
    def _member(t: tarfile.TarFile, name: str) -> IO[bytes]:
        f = t.extractfile(name)
        assert f is not None, f"{name} missing from the archive"
        return f

    def _verified(self, t: tarfile.TarFile, descriptor: dict[str, Any]) -> IO[bytes]:
        f = self._member(t, _blob(descriptor))
        data = f.read()
        assert len(data) == descriptor["size"], f"{_blob(descriptor)}: size differs from its descriptor"
        assert "sha256:" + hashlib.sha256(data).hexdigest() == descriptor["digest"], f"{_blob(descriptor)}: digest"
        f.seek(0)
        return f

    def unpack(self, root: Path) -> None:
        """Apply the layers in order, as a container runtime's snapshotter would: a layer's OCI whiteouts
        (`.wh.NAME` deletes NAME from the layers below, `.wh..wh..opq` empties its directory) first, then its
        files (GNU tar, as root: owners, modes and links as recorded)."""
        root.mkdir(parents=True)
        blob_path = root.parent / "layer.blob"
        with tarfile.open(self.archive) as t:
            for layer in self.manifest["layers"]:
                blob_path.write_bytes(self._verified(t, layer).read())
                listing = subprocess.run(["tar", "-tf", str(blob_path)], capture_output=True, text=True, check=True)
                for name in listing.stdout.splitlines():
                    path = root / name.rstrip("/")
                    if path.name == ".wh..wh..opq":
                        for child in path.parent.iterdir() if path.parent.is_dir() else ():
                            _remove(child)
                    elif path.name.startswith(".wh."):
                        _remove(path.with_name(path.name[4:]))
                subprocess.run(["tar", "-xf", str(blob_path), "-C", str(root), "--numeric-owner", "--same-owner",
                                "--same-permissions", "--exclude=.wh.*"], check=True)  # fmt: skip
        blob_path.unlink()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def chroot_command(root: Path, config: dict[str, Any], argv: list[str]) -> list[str]:
    """A command that runs argv in the unpacked image as a runtime would: chrooted into root, in a private mount
    namespace with /dev and /proc, as the image's user, in its working directory, with only its environment.
    It gets SIGKILL when the test session dies, even SIGKILLed, as the cluster's components: set by the image's
    setpriv (util-linux, essential in Debian), as chroot's switch to the image's user clears a parent-death signal
    set before it."""
    cfg = config["config"]
    script = (
        'root=$1 user=$2 dir=$3; shift 3; mount --rbind /dev "$root/dev"; mount -t proc proc "$root/proc"; '
        'exec chroot --userspec="$user" "$root" /usr/bin/setpriv --pdeathsig KILL /usr/bin/env -i -C "$dir" "$@"'
    )
    user = cfg.get("User") or "0:0"
    return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script, "_",
            str(root), user, cfg.get("WorkingDir") or "/", *cfg.get("Env", []), *argv]  # fmt: skip


def get(url: str) -> tuple[int, str]:
    """(status, body); (0, the error) while nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return int(r.status), r.read().decode(errors="replace")
    except OSError as exc:  # connection refused, HTTP errors
        return 0, repr(exc)


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    prebuilt = os.environ.get("GPU_OPERATOR_IMAGE_ARCHIVE")
    if prebuilt:
        return Path(prebuilt)
    if os.geteuid() != 0:
        pytest.skip("building the image needs root (debootstrap, chroot)")
    out = tmp_path_factory.mktemp("image") / "gpu-operator-image.tar"
    log = out.with_suffix(".log")
    env = {**os.environ, "IMAGE_ARCHIVE": str(out), "PYTHON": sys.executable}
    started = time.monotonic()
    with log.open("wb") as f:
        proc = subprocess.run(["bash", str(BUILD)], stdout=f, stderr=subprocess.STDOUT, env=env,
                              timeout=BUILD_TIMEOUT, cwd=REPO)  # fmt: skip
    text = log.read_text(errors="replace")
    assert proc.returncode == 0, f"hack/build-image.sh failed:\n{text[-4000:]}"
    print(f"image built in {time.monotonic() - started:.0f}s:\n{text}")
    return out


@pytest.fixture(scope="module")
def image(archive: Path) -> Image:
    return Image(archive)


@pytest.fixture(scope="module")
def rootfs(image: Image, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    if os.geteuid() != 0 or not (shutil.which("unshare") and shutil.which("chroot")):
        pytest.skip("running the image needs root, unshare and chroot")
    root = tmp_path_factory.mktemp("image-root") / "rootfs"
    image.unpack(root)
    yield root
    # The mounts lived in the runs' own mount namespaces, gone with them; never follow one into /dev.
    assert not os.path.ismount(root / "dev") and not os.path.ismount(root / "proc")
    shutil.rmtree(root)


def test_archive_is_named_as_the_charts_default_image(image: Image) -> None:
    pod = one(render(), "Deployment", "gpu-operator")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    ref = container["image"]
    full = ref if "/" in ref.split(":")[0] else f"docker.io/library/{ref}"
    # containerd (kind load image-archive, ctr import) and Docker >= 25 name it from index.json, older Docker from
    # manifest.json.
    assert image.descriptor["annotations"]["io.containerd.image.name"] == full
    assert image.descriptor["annotations"]["org.opencontainers.image.ref.name"] == full
    assert image.docker_manifest[0]["RepoTags"] == [ref]
    assert image.docker_manifest[0]["Layers"] == [_blob(d) for d in image.manifest["layers"]]
    cfg = image.config["config"]
    assert image.config["os"] == "linux"
    # As the Dockerfile: `gpu-operator run`, as the numeric non-root user the chart's pod runs as.
    assert Path(cfg["Entrypoint"][-1]).name == "gpu-operator" and cfg["Cmd"] == ["run"]
    security = pod["securityContext"]
    assert cfg["User"] == f"{security['runAsUser']}:{security['runAsGroup']}"
    assert {"8080/tcp", "8081/tcp"} <= set(cfg["ExposedPorts"])


def test_hook_python_has_the_operators_packages(image: Image, rootfs: Path) -> None:
    """The chart's hook Jobs run `python /hook/cleanup.py` with this image: `python` on the image's PATH must
    import the operator's client. The image's user has a name (kopf asks for it)."""
    code = "import getpass, gpu_operator.kube, kubernetes, kopf; print(gpu_operator.__version__, getpass.getuser())"
    proc = subprocess.run(chroot_command(rootfs, image.config, ["python", "-c", code]), capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    version = image.config["config"]["Labels"]["org.opencontainers.image.version"]
    assert proc.stdout.split() == [version, "nonroot"]


def test_entrypoint_runs_the_operator_to_healthy(
    image: Image, rootfs: Path, cluster: LocalCluster, tmp_path: Path
) -> None:
    admin = Kube.connect(str(cluster.kubeconfig))
    install_crds_and_rbac(admin)
    delete_policies(admin, 30, leftover=True)
    create_nodes(admin.client, [make_node(NODE, "cpu")])
    # The operator's ServiceAccount identity (the chart's RBAC), readable by the image's user.
    kubeconfig = rootfs / "tmp" / "operator.kubeconfig"
    shutil.copyfile(cluster.operator_kubeconfig, kubeconfig)
    kubeconfig.chmod(0o644)
    metrics_port, health_port = free_port(), free_port()
    argv = [*image.config["config"]["Entrypoint"], "run", "--kubeconfig", "/tmp/operator.kubeconfig",
            "--namespace", NAMESPACE, "--metrics-port", str(metrics_port),
            "--health-port", str(health_port)]  # fmt: skip
    log_path = tmp_path / "operator.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(chroot_command(rootfs, image.config, argv), stdout=log, stderr=subprocess.STDOUT)

    def tail() -> str:
        return "\n".join(log_path.read_text(errors="replace").splitlines()[-40:])

    def up(url: str) -> str | None:
        if proc.poll() is not None:  # pytest.fail: wait_for retries on AssertionError
            pytest.fail(f"the operator exited ({proc.returncode}):\n{tail()}")
        status, body = get(url)
        return body if status == 200 else None

    try:
        wait_for(lambda: up(f"http://127.0.0.1:{health_port}/healthz"), WAIT, interval=0.5, message="/healthz")
        metrics = wait_for(lambda: up(f"http://127.0.0.1:{metrics_port}/metrics"), 30, message="/metrics")
        assert "gpu_operator_" in metrics
        admin.create(policy_from_sample())

        def ready() -> dict[str, Any] | None:
            if proc.poll() is not None:
                pytest.fail(f"the operator exited ({proc.returncode}):\n{tail()}")
            obj = admin.get("ClusterPolicy", "cluster-policy")
            status = (obj or {}).get("status") or {}
            generation = (obj or {}).get("metadata", {}).get("generation")
            return obj if status.get("state") == "ready" and status.get("observedGeneration") == generation else None

        try:
            wait_for(ready, WAIT, interval=0.5, message="ClusterPolicy ready")
        except AssertionError as exc:
            obj = admin.get("ClusterPolicy", "cluster-policy") or {}
            raise AssertionError(f"{exc}\nstatus: {obj.get('status')}\noperator log:\n{tail()}") from None
        # It acted under the chart's identity from inside the image: the operands' DaemonSets exist (no pods: no
        # GPU node).
        assert admin.list("DaemonSet", namespace=NAMESPACE), tail()
        # Delete the policy while the operator runs: it removes its finalizer.
        delete_policies(admin)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        delete_nodes(admin.client, [NODE])  # later modules share the cluster
        admin.client.close()
    assert proc.returncode == 0, f"the operator did not stop cleanly on SIGTERM ({proc.returncode}):\n{tail()}"
