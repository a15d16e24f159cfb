"""The tooling around the end-to-end suite and the newcomer's path: e2e/cluster/build.sh, the Makefile's venv,
`make demo` / `make cluster-down`, the processes the e2e session starts, the check before a run against a user's
cluster, and the fake nodes' NFD labels. Nothing here compiles Go or starts a cluster: build.sh runs with its
binaries faked as cached, a file:// module proxy (or none), and `go build` stubbed."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest

from support import REPO

BUILD_SH = REPO / "e2e" / "cluster" / "build.sh"
GO = shutil.which("go")


# --- build.sh -------------------------------------------------------------------------------------------------


def _fake_cache(tmp: Path, *names: str) -> Path:
    """A cache where these binaries are already built (etcd and kwok by default: build.sh goes straight to
    kubernetes)."""
    cache = tmp / "cache"
    (cache / "bin").mkdir(parents=True)
    for name in names or ("etcd-v3.6.16", "kwok-v0.8.0"):
        p = cache / "bin" / name
        p.write_text("#!/bin/sh\n")
        p.chmod(0o755)
    return cache


def _go_env(tmp: Path, cache: Path, proxy: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        GPU_OPERATOR_E2E_CACHE=str(cache), GOPROXY=proxy, GOSUMDB="off", GOTOOLCHAIN="local",
        GOPATH=str(tmp / "gopath"), GOMODCACHE=str(tmp / "gopath" / "mod"), GOCACHE=str(tmp / "gocache"),
    )  # fmt: skip
    return env


def _module(proxy: Path, path: str, version: str, files: dict[str, str], requires: str = "") -> None:
    """Module `path@version` in a file:// GOPROXY directory."""
    d = proxy / path / "@v"
    d.mkdir(parents=True, exist_ok=True)
    gomod = f"module {path}\n\ngo 1.22\n{requires}"
    (d / f"{version}.mod").write_text(gomod)
    (d / f"{version}.info").write_text(json.dumps({"Version": version, "Time": "2024-01-01T00:00:00Z"}))
    with zipfile.ZipFile(d / f"{version}.zip", "w") as z:
        z.writestr(f"{path}@{version}/go.mod", gomod)
        for name, text in files.items():
            z.writestr(f"{path}@{version}/{name}", text)
    with (d / "list").open("a") as f:
        f.write(version + "\n")


@pytest.mark.skipif(GO is None, reason="needs the go command (no compiling: it only resolves modules)")
def test_build_sh_says_why_kubernetes_cannot_be_resolved(tmp_path: Path) -> None:
    """`go mod download -json` reports a failure only in its JSON on stdout, which build.sh piped into sed: with
    the Go proxy unreachable (or K8S_VERSION mistyped) the script exited 1 after 'resolving staging modules' with
    no reason at all (`make test` then showed only `make: *** [Makefile:33: binaries] Error 1`)."""
    cache = _fake_cache(tmp_path)
    r = subprocess.run(["bash", str(BUILD_SH)], env=_go_env(tmp_path, cache, "off"), capture_output=True,
                       text=True, timeout=120)  # fmt: skip
    assert r.returncode != 0
    assert "k8s.io/kubernetes@v1.37.2" in r.stderr and "GOPROXY=off" in r.stderr, r.stderr
    assert '"Error"' in r.stderr, r.stderr  # go's own words


@pytest.mark.skipif(GO is None, reason="needs the go command (no compiling: `go build` is stubbed)")
def test_build_sh_keeps_the_pinned_kubernetes_when_go_get_fails(tmp_path: Path) -> None:
    """When `go get k8s.io/kubernetes/cmd/...@v1.37.2` failed, build.sh retried `go get k8s.io/kubernetes/cmd/...`
    without a version, which is `@upgrade`: it moved k8s.io/kubernetes to the newest release and compiled that as
    `kube-apiserver-v1.37.2`, stamped v1.37.2, against staging modules replaced at v0.37.2. The retry now asks for
    the same version, so the build stops with go's error and go.mod keeps the pinned release."""
    proxy = tmp_path / "proxy"
    cmds = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
    # v1.37.2 resolves (go mod download works) but its `go get` fails; v1.38.0 has the packages.
    # As the real release: staging modules required at v0.0.0 (build.sh replaces them by v0.37.2).
    staging = "\nrequire (\n\tk8s.io/api v0.0.0\n)\n\nreplace k8s.io/api => ./staging/src/k8s.io/api\n"
    _module(proxy, "k8s.io/api", "v0.37.2", {"doc.go": "package api\n"})
    _module(proxy, "k8s.io/kubernetes", "v1.37.2", {"README": "x\n"}, staging)
    _module(proxy, "k8s.io/kubernetes", "v1.38.0",
            {f"cmd/{c}/main.go": "package main\n\nfunc main() {}\n" for c in cmds}, staging)  # fmt: skip
    stub = tmp_path / "stub"
    stub.mkdir()
    (stub / "go").write_text(f'#!/bin/sh\nif [ "$1" = build ]; then echo "stub: go $*" >&2; exit 3; fi\n'
                             f'exec {GO} "$@"\n')  # fmt: skip
    (stub / "go").chmod(0o755)
    cache = _fake_cache(tmp_path)
    env = _go_env(tmp_path, cache, f"file://{proxy}")
    env["PATH"] = f"{stub}:{env['PATH']}"
    r = subprocess.run(["bash", str(BUILD_SH)], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "does not contain package k8s.io/kubernetes/cmd/kube-apiserver" in r.stderr, r.stderr
    assert "stub: go build" not in r.stderr, r.stderr
    gomod = (cache / "work" / "kubernetes-v1.37.2" / "go.mod").read_text()
    assert "k8s.io/kubernetes v1.37.2" in gomod, f"the build moved off the pinned release:\n{gomod}"


def test_build_sh_waits_for_another_build(tmp_path: Path) -> None:
    """build.sh took no lock: two builds at once (`make demo` while `make test` builds, two CI jobs with one HOME)
    wrote the same go.mod and `.tmp` binaries. Now a second one waits for the first's lock on the cache, then finds
    what it built (here: everything, so it runs no go at all)."""
    cache = _fake_cache(tmp_path, *(f"{c}-v1.37.2" for c in (
        "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")),
        "etcd-v3.6.16", "kwok-v0.8.0", "helm-v3.22.0", "nvidia-ctk-installer-v1.20.0")  # fmt: skip
    (cache / "kwok-stages-v0.8.0").mkdir()
    env = dict(os.environ, GPU_OPERATOR_E2E_CACHE=str(cache))
    # --print-dir (what bin_dir() runs) never waits.
    with (cache / ".lock").open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        printed = subprocess.run(["bash", str(BUILD_SH), "--print-dir"], env=env, capture_output=True, text=True,
                                 timeout=30)  # fmt: skip
        assert printed.stdout.strip() == str(cache / "bin")
        proc = subprocess.Popen(["bash", str(BUILD_SH)], env=env, stderr=subprocess.PIPE, text=True)
        try:
            with pytest.raises(subprocess.TimeoutExpired):
                proc.wait(timeout=1.5)
        finally:
            fcntl.flock(held, fcntl.LOCK_UN)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "waiting for another build.sh" in err and "binaries ready" in err, err


def test_bin_dir_says_why_the_cache_cannot_be_made(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """bin_dir() ran `build.sh --print-dir` with its output captured and check=True: when the cache could not be
    created (HOME read-only or unset, GPU_OPERATOR_E2E_CACHE under a file) `python -m e2e.cluster up` and
    `make demo` ended in a CalledProcessError traceback, build.sh's reason (mkdir's message) thrown away. Now a
    ClusterError carries it (e2e.cluster's CLI prints it)."""
    from e2e.cluster import localcluster

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("GPU_OPERATOR_E2E_CACHE", str(blocker / "cache"))
    with pytest.raises(localcluster.ClusterError, match="Not a directory"):
        localcluster.ensure_binaries()


# --- the Makefile's venv ----------------------------------------------------------------------------------------


def _make_venv(tmp: Path, python: str) -> subprocess.CompletedProcess[str]:
    """`make venv PYTHON=python` in a copy of the repository's Makefile, without the pip installs."""
    makefile = tmp / "Makefile"
    if not makefile.exists():
        text = (REPO / "Makefile").read_text()
        makefile.write_text("\n".join(
            "\t@true" if line.startswith("\t$(PY) -m pip install") else line for line in text.splitlines()))
        (tmp / "pyproject.toml").write_text("")
    return subprocess.run(["make", "-s", "venv", f"PYTHON={python}"], cwd=tmp, capture_output=True, text=True,
                          timeout=120)  # fmt: skip


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_venv_needs_python_311_and_follows_python(tmp_path: Path) -> None:
    """The Makefile made the venv with whatever PYTHON was: with a python3 older than 3.11 pip's install failed
    later with "requires a different Python", and `make PYTHON=python3.11 ...` did not repair that venv (`venv`
    keeps an existing bin/python link). Now an older Python is refused with a message naming PYTHON=, and the venv
    is made again, from scratch, when PYTHON names another interpreter than the one it was made with."""
    old = tmp_path / "python3.10"
    old.write_text("#!/bin/sh\ncase \"$2\" in *version_info*) exit 1;; esac\necho /usr/bin/python3.10 3.10.13\n")
    old.chmod(0o755)
    r = _make_venv(tmp_path, str(old))
    assert r.returncode != 0 and "3.10.13" in r.stderr and "need 3.11+" in r.stderr and "PYTHON=" in r.stderr
    assert not (tmp_path / ".venv" / "bin").exists()
    r = _make_venv(tmp_path, str(tmp_path / "no-python3"))
    assert r.returncode != 0 and "no " in r.stderr and "PYTHON=" in r.stderr, r.stderr

    venv = tmp_path / ".venv"
    assert _make_venv(tmp_path, sys.executable).returncode == 0
    assert (venv / ".installed").exists()
    left = venv / "bin" / "left-by-the-old-venv"
    left.write_text("")
    assert _make_venv(tmp_path, sys.executable).returncode == 0
    assert left.exists(), "same interpreter: the venv is kept"
    (venv / ".python").write_text("/usr/bin/python3.12 3.12.1\n")  # as if made by another PYTHON
    r = _make_venv(tmp_path, sys.executable)
    assert r.returncode == 0, r.stderr
    assert not left.exists(), "another interpreter: the venv is made again"
    assert (venv / ".python").read_text().split() == [sys.executable, sys.version.split()[0]]


# --- processes: make cluster-down, the e2e session --------------------------------------------------------------


def _alive(pid: int) -> bool:
    from e2e.cluster.localcluster import pid_alive

    return pid_alive(pid)


def test_demo_stop_signals_only_its_own_processes(tmp_path: Path) -> None:
    """`make cluster-down` runs `python -m e2e.demo stop`, which SIGTERMed every pid in .e2e-state/demo.json
    without checking it was still the operator or simulator it started: after a reboot (the state dir survives,
    `make demo` leaves everything running) or once the demo operator had died, those pids are other processes'.
    Now it signals only a process whose command line names the state dir (as LocalCluster does), with its process
    group, and SIGKILLs it when SIGTERM has not stopped it after the grace period."""
    from e2e import demo

    state = tmp_path / "state"
    state.mkdir()
    other = subprocess.Popen(["sleep", "60"])
    # Ours: started as `start` does (own session), its command line naming the state dir; it ignores SIGTERM.
    ours = subprocess.Popen(["sh", "-c", 'trap "" TERM; while :; do sleep 0.1; done', "_",
                             str(state / "operator.kubeconfig")], start_new_session=True)  # fmt: skip
    try:
        (state / "demo.json").write_text(json.dumps({"gpu-operator": other.pid, "node-simulator": ours.pid}))
        time.sleep(0.2)
        demo.stop(state, grace=0.5)
        assert ours.wait(timeout=5) == -signal.SIGKILL
        time.sleep(0.2)
        assert other.poll() is None, "demo stop killed a process that is not the demo's"
        assert not (state / "demo.json").exists()
    finally:
        for p in (other, ours):
            if p.poll() is None:
                p.kill()
            p.wait()


def test_demo_says_why_the_build_failed_without_a_traceback(tmp_path: Path) -> None:
    """`python -m e2e.demo` ended in a ClusterError traceback when e2e/cluster/build.sh failed (its last line the
    reason): now it prints the error and exits 1. build.sh stubbed: an empty cache, then a failing build."""
    stub = tmp_path / "build.sh"
    stub.write_text(f'[ "$1" = --print-dir ] && {{ echo {tmp_path / "bin"}; exit 0; }}\n'
                    'echo "build.sh: go 1.22 or newer is needed" >&2; exit 3\n')  # fmt: skip
    code = ("import sys\nfrom e2e.cluster import localcluster\n"
            f"localcluster.BUILD_SH = {str(stub)!r}\n"
            "from e2e import demo\n"
            f"sys.exit(demo.main(['start', '--state-dir', {str(tmp_path / 'state')!r}]))\n")  # fmt: skip
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": f"{REPO / 'operator'}:{REPO}"})  # fmt: skip
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    assert "go 1.22 or newer is needed" in r.stderr and f"error: {stub} failed (exit 3)" in r.stderr, r.stderr


def test_demo_stops_waiting_when_the_operator_it_started_has_exited(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`make demo` started the operator on fixed ports (18080, 18081) and polled the ClusterPolicy for 180 s without
    looking at its children: with a port held by anything else (a second checkout's demo, processes an earlier demo
    left) the operator exited at once ('error: --metrics-port 18080: [Errno 98] Address already in use' in its log
    only) and the newcomer watched 'pending 0/0 operand states ready' for 3 minutes, then 'not ready after 180s'.
    Now the ports are free ones, and start() notices within a second that the operator (or the simulator) is gone
    and prints the last lines of its log, exit 1. (review newcomer #1)"""
    from e2e import demo

    class FakeCluster:
        pids: dict[str, int] = {}
        kubeconfig = simulator_kubeconfig = operator_kubeconfig = tmp_path / "admin.kubeconfig"

        def __init__(self, *_a: Any, **_k: Any) -> None:
            pass

        def running(self) -> dict[str, bool]:
            return {}

        def up(self) -> None:
            pass

    class FakeAdmin:
        client = None

        def get(self, *_a: Any) -> None:
            return None

        def create(self, *_a: Any) -> None:
            pass

    children: list[subprocess.Popen[bytes]] = []
    ports: list[str] = []

    def spawn(args: list[str], log: Path) -> int:
        dead = args[:3] == [sys.executable, "-m", "gpu_operator.cli"]  # the operator: exits 2 at once
        if dead:
            ports.extend(args[args.index(option) + 1] for option in ("--metrics-port", "--health-port"))
            log.write_text("error: --metrics-port 18080: [Errno 98] Address already in use\n")
        code = "raise SystemExit(2)" if dead else "import time; time.sleep(30)"
        children.append(subprocess.Popen([sys.executable, "-c", code]))
        return children[-1].pid

    monkeypatch.setattr(demo, "ensure_binaries", lambda: tmp_path)
    monkeypatch.setattr(demo, "LocalCluster", FakeCluster)
    monkeypatch.setattr(demo.Kube, "connect", staticmethod(lambda *_a, **_k: FakeAdmin()))
    monkeypatch.setattr(demo, "create_nodes", lambda *_a, **_k: None)
    monkeypatch.setattr(demo, "install_crds_and_rbac", lambda *_a, **_k: None)
    monkeypatch.setattr(demo, "_spawn", spawn)
    try:
        began = time.monotonic()
        rc = demo.start(tmp_path, timeout=15.0)
        took = time.monotonic() - began
    finally:
        for child in children:
            child.kill()
            child.wait()
    out, err = capsys.readouterr()
    assert rc == 1 and took < 8.0, f"start() waited {took:.0f}s for a policy no operator will reconcile"
    assert f"error: gpu-operator exited; the last lines of {tmp_path / 'operator.log'}:" in err, err
    assert "Address already in use" in err, err
    assert ports[0] != "18080" and len(set(ports)) == 2, ports  # free ports, not fixed ones
    assert f"metrics http://127.0.0.1:{ports[0]}/metrics" in out, out


def test_operator_process_dies_with_the_test_session(tmp_path: Path) -> None:
    """The cluster's components get PR_SET_PDEATHSIG, so they die with pytest even when it is killed (OOM killer,
    `kill -9`); the operator processes the e2e tests start (e2e/operator_process.py) did not: they outlived the
    session and retried the dead API server forever. Now they get it too."""
    fake = tmp_path / "fake-python"
    fake.write_text("#!/bin/sh\nexec sleep 60\n")
    fake.chmod(0o755)
    code = (
        "import os, signal, sys\n"
        f"sys.executable = {str(fake)!r}\n"
        "from pathlib import Path\n"
        "from e2e.operator_process import OperatorProcess\n"
        "class C:\n"
        "    operator_kubeconfig = Path('/nonexistent')\n"
        f"p = OperatorProcess(C(), Path({str(tmp_path / 'op.log')!r})).start()\n"
        "print(p.proc.pid, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    env = dict(os.environ, PYTHONPATH=f"{REPO / 'operator'}:{REPO}")
    r = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
    pid = int(r.stdout.split()[0])
    try:
        deadline = time.monotonic() + 3
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(pid), "the operator process outlived the killed test session"
    finally:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)



def test_operator_process_does_not_pass_the_shells_image_variables(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The operator takes a component's image from its env (DEVICE_PLUGIN_IMAGE, GFD_IMAGE, ...; images.ENV) where
    the ClusterPolicy names none: the e2e operator got the test session's whole env, so a runner exporting one of
    them changed the operands' images under test. Now those names are left out; the rest is passed on."""
    from e2e import operator_process

    from gpu_operator import images

    seen: dict[str, Any] = {}

    class Popen:
        def __init__(self, cmd: list[str], **kwargs: Any) -> None:
            seen.update(kwargs["env"])

    for name in set(images.ENV.values()):
        monkeypatch.setenv(name, "registry.example/x:1")
    monkeypatch.setenv("E2E_KEPT", "yes")
    monkeypatch.setattr(subprocess, "Popen", Popen)

    class C:
        operator_kubeconfig = Path("/nonexistent")

    operator_process.OperatorProcess(C(), tmp_path / "op.log").start()  # type: ignore[arg-type]
    assert seen.get("E2E_KEPT") == "yes"
    assert not set(images.ENV.values()) & set(seen), sorted(set(images.ENV.values()) & set(seen))

# --- against a cluster the user has, and the fake nodes -------------------------------------------------------

NFD = "feature.node.kubernetes.io/"


class _UsersCluster:
    """The API as the preflight reads it: no namespace or CRD of the suite's, and these nodes (a label selector
    key=value filtered as the API server would)."""

    def __init__(self, nodes: dict[str, dict[str, str]]) -> None:
        self.nodes = [{"metadata": {"name": name, "labels": labels}} for name, labels in nodes.items()]

    def get_or_none(self, path: str) -> Any:
        return None

    def items(self, path: str, labelSelector: str | None = None, **_: Any) -> list[dict[str, Any]]:  # noqa: N803
        assert path == "/api/v1/nodes", path
        key, _, value = (labelSelector or "").partition("=")
        return [n for n in self.nodes if not key or n["metadata"]["labels"].get(key) == value]


@pytest.mark.parametrize("label", ["pci-10de.present", "pci-0302_10de.present", "pci-0300_10de.present",
                                   "pci-0302_10de_2330.present"])  # fmt: skip
def test_existing_cluster_preflight_refuses_gpu_nodes_whatever_labelled_them(tmp_path: Path, label: str) -> None:
    """The preflight refuses a cluster whose nodes the operator under test would label, but looked only for
    pci-10de.present (upstream chart's NFD deviceLabelFields [vendor]). Stock NFD ([class, vendor]) labels a GPU
    node pci-0302_10de.present (pci-0300 for a VGA one), and with `device` in the fields only the device-ID label
    is written (source/pci/pci.go): the operator detects each, so the suite ran against such real GPU nodes, which
    got gpu.present, deploy labels and operand pods. Now the preflight sees GPU nodes as the operator does."""
    from e2e.cluster.existing import ExistingCluster
    from e2e.cluster.localcluster import ClusterError

    cluster = ExistingCluster(tmp_path / "kubeconfig", tmp_path / "state")
    cluster._kube = _UsersCluster({"users-gpu-node": {NFD + label: "true"},
                                   "users-nvswitch-node": {NFD + "pci-0680_10de_22a3.present": "true"}})  # fmt: skip
    with pytest.raises(ClusterError, match="nodes users-gpu-node carry NFD's NVIDIA GPU labels"):
        cluster.preflight()
    cluster._kube.nodes.pop(0)
    cluster.preflight()  # an NVSwitch is no GPU


def test_fake_nodes_carry_one_nfd_pci_label_per_device() -> None:
    """One NFD worker config (deviceLabelFields) writes one label per device: with [vendor] pci-10de.present, with
    [class, vendor, device] pci-0302_10de_1db1.present and no other. The v100x8 fake node carried both, so the e2e
    suite never saw a node detected and identified by the device-ID label alone, as a real one is."""
    from e2e.cluster.nodes import PROFILES, make_node

    from gpu_operator.nodes import NodeFacts

    for name, profile in PROFILES.items():
        labels = make_node("n", name)["metadata"]["labels"]
        pci = sorted(k for k in labels if k.startswith(NFD + "pci-"))
        assert pci == ([profile.pci_label] if profile.has_gpu else []), (name, pci)
        assert NodeFacts.from_node(make_node("n", name)).has_gpu == profile.has_gpu, name
    assert PROFILES["v100x8"].pci_label == NFD + "pci-0302_10de_1db1.present"


def test_fake_nodes_carry_the_version_parts_nfd_splits_out() -> None:
    """NFD writes system-os_release.VERSION_ID.major and .minor with VERSION_ID (source/system/system.go
    splitVersion) and kernel-version.major, .minor and .revision with .full (source/kernel/version.go). README tells
    users an NVIDIADriver may select on VERSION_ID.major, but the fake nodes lacked the parts, so no e2e could
    exercise such a selector."""
    from e2e.cluster.nodes import make_node

    labels = make_node("n", "l4x1", os="rhel9.4")["metadata"]["labels"]
    parts = {k.removeprefix(NFD): v for k, v in labels.items() if k.startswith(NFD) and "version" in k.lower()}
    assert parts == {
        "system-os_release.VERSION_ID": "9.4", "system-os_release.VERSION_ID.major": "9",
        "system-os_release.VERSION_ID.minor": "4", "kernel-version.full": "5.14.0-427.13.1.el9_4.x86_64",
        "kernel-version.major": "5", "kernel-version.minor": "14", "kernel-version.revision": "0",
    }  # fmt: skip
    ubuntu = make_node("n", "cpu", os="ubuntu22.04")["metadata"]["labels"]
    assert ubuntu[NFD + "system-os_release.VERSION_ID.major"] == "22"
    assert ubuntu[NFD + "system-os_release.VERSION_ID.minor"] == "04"  # as NFD writes it: the leading zero kept


def test_operator_scale_node_features_name_each_nodes_gpu_for_the_operator_to_read() -> None:
    """operator_scale could not measure a cluster whose NFD uses the NodeFeature API (NFD's default since 0.14):
    its nodes carried the device-ID label and no NodeFeature existed. `--node-features` gives each GPU node a
    NodeFeature as nfd-worker writes it (NFD's node-name label, pci.device elements with vendor, class and device),
    which the operator reads back to that node and device, and nodes without the device-ID label, so the GPUs are
    identified through the NodeFeatures alone."""
    from e2e.bench.operator_scale import DEVICE_IDS, PROFILES, bench_feature, bench_node
    from e2e.cluster.nodes import NFD_NAMESPACE

    from gpu_operator.gpu_identity import device_ids_from_node_feature, identify, node_of_feature
    from gpu_operator.nodes import NodeFacts

    for i in range(3):
        name = f"gpu-{i:04d}"
        feature = bench_feature(name, i)
        assert feature["metadata"]["namespace"] == NFD_NAMESPACE and feature["kind"] == "NodeFeature"
        assert node_of_feature(feature) == name
        devices = device_ids_from_node_feature(feature)
        assert devices == (DEVICE_IDS[PROFILES[i]],)  # the NIC beside it is no GPU
        facts = NodeFacts.from_node(bench_node(name, i, device_labels=False))
        assert facts.has_gpu and not facts.label_devices
        assert not identify(facts.labels, (), facts.label_devices).known  # unknown without the NodeFeature
        assert identify(facts.labels, devices, facts.label_devices).known


def test_node_features_are_created_in_parallel_each_at_its_namespaces_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """create_node_features posts each NodeFeature under its namespace, tries again on 5xx and leaves one that
    exists as it is (409), as create_nodes does nodes."""
    from e2e.cluster import nodes
    from kubernetes import client

    posted: list[tuple[str, str]] = []
    failed: set[str] = set()

    class Fake:
        def create(self, path: str, obj: dict[str, Any]) -> None:
            name = obj["metadata"]["name"]
            if name == "exists":
                raise client.ApiException(status=409)
            if name == "flaky" and name not in failed:
                failed.add(name)
                raise client.ApiException(status=503)
            posted.append((path, name))

        def close(self) -> None:
            pass

    monkeypatch.setattr(nodes, "_kube", lambda api, size: Fake())
    nodes.create_node_features(None, [nodes.node_feature(n, "2330") for n in ("a", "exists", "flaky")])
    path = "/apis/nfd.k8s-sigs.io/v1alpha1/namespaces/node-feature-discovery/nodefeatures"
    assert sorted(posted) == [(path, "a"), (path, "flaky")]


def test_operator_scale_percentile_is_the_nearest_rank() -> None:
    """percentile() (the joins' p99, the upgrade's p90s) is the nearest rank, the ceil(p/100 * n)-th smallest value.
    It was `round(p/100 * n + 0.5)`, and round() takes halves to even: whenever p/100 * n was an odd integer it
    picked the next rank, so the p99 of 100 join latencies (`--joins 100`) was their maximum."""
    from e2e.bench.operator_scale import percentile

    hundred = [float(i) for i in range(1, 101)]
    ten = [float(i) for i in range(1, 11)]
    fifty = [float(i) for i in range(1, 51)]
    assert (percentile(hundred, 99), percentile(ten, 90), percentile(fifty, 50)) == (99.0, 9.0, 25.0)
    assert percentile([float(i) for i in range(1, 51)], 99) == 50.0  # 49.5: the 50th
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0 and percentile([7.0], 99) == 7.0


def test_operator_scale_table_says_when_a_figure_is_from_fewer_runs(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 14: "every figure in one table with medians of 3 runs". A figure that only some runs measured (the
    others' switch-back-on or upgrade timed out, their joins labelled none) was printed as a median of 3 under that
    heading: the one good run as the median of three, two as their mean. Now such a row says how many runs it is
    from and which runs lack it."""
    from e2e.bench import operator_scale
    from e2e.bench.operator_scale import Figure

    runs: list[dict[str, Figure]] = [
        {"ClusterPolicy -> status ready": Figure(20.0, "s"),
         "dcgmExporter switched back on -> status ready": Figure(5.0, "s"),
         "writes in 60 s of steady state": Figure(0.0, "")},
        {"ClusterPolicy -> status ready": Figure(21.0, "s"), "writes in 60 s of steady state": Figure(2.0, "")},
        {"ClusterPolicy -> status ready": Figure(22.0, "s")},
    ]  # fmt: skip
    monkeypatch.setattr(operator_scale, "one_run", lambda args: runs.pop(0))
    interval = sys.getswitchinterval()
    try:
        assert operator_scale.main(["--runs", "3"]) == 0
    finally:
        sys.setswitchinterval(interval)
    out = capsys.readouterr().out
    assert "medians of 3 runs" in out
    cells = dict(line[2:-2].split(" | ") for line in out.splitlines() if line.startswith("| "))
    assert cells["ClusterPolicy -> status ready"] == "21.0 s (20.0 s, 21.0 s, 22.0 s)"
    assert cells["dcgmExporter switched back on -> status ready"] == "5.00 s (1 of 3 runs; not in runs 2, 3)"
    assert cells["writes in 60 s of steady state"] == "1 (0, 2) (2 of 3 runs; not in run 3)"


def test_operator_scale_table_leaves_timeouts_and_what_followed_them_out_of_the_medians() -> None:
    """A wait that timed out was recorded as a figure: "ClusterPolicy -> status ready | 5.09 s" at --timeout 5,
    "(state notReady)" only in the run's own line, and every figure after it (requests and CPU "until ready", the
    "steady state" writes, reads and CPU, mid-rollout) printed and taken into the medians like a measured one. Now a
    timed-out wait shows as "> 5.09 s (timed out)", a figure taken after it says so, and neither enters a median: the
    row says which run it came from."""
    from e2e.bench.operator_scale import TIMED_OUT, Figure, table

    def cells(runs: list[dict[str, Figure]]) -> dict[str, str]:
        return dict(row[2:-2].split(" | ") for row in table(runs)[2:])

    one = {"ClusterPolicy -> status ready": Figure(5.09, "s", TIMED_OUT),
           "API requests until ready": Figure(172.0, "", "taken before ready"),
           "operator CPU at steady state": Figure(2.5, "% of a core", "taken before ready")}  # fmt: skip
    assert cells([one]) == {
        "ClusterPolicy -> status ready": "> 5.09 s (timed out)",
        "API requests until ready": "172 (taken before ready)",
        "operator CPU at steady state": "2.50 % of a core (taken before ready)",
    }
    good = [{"ClusterPolicy -> status ready": Figure(v, "s"), "API requests until ready": Figure(n, "")}
            for v, n in ((200.0, 1200.0), (220.0, 1300.0))]  # fmt: skip
    got = cells([good[0], one, good[1]])
    assert got["ClusterPolicy -> status ready"] == (
        "210.0 s (200.0 s, 220.0 s) (2 of 3 runs; run 2: > 5.09 s (timed out))"
    )
    assert got["API requests until ready"] == "1250 (1200, 1300) (2 of 3 runs; run 2: 172 (taken before ready))"
    assert got["operator CPU at steady state"] == "run 2: 2.50 % of a core (taken before ready); not in runs 1, 3"


def test_operator_scale_join_percentiles_count_the_nodes_never_labelled() -> None:
    """join() waited 600 s for the labels, then took p50 and p99 over the nodes labelled only, silently dropping
    the ones never labelled (the slowest), and "N nodes join at once -> all labelled" over those too. Now a node
    never labelled counts as later than any: a percentile that reaches one is the wait, timed out."""
    from e2e.bench.operator_scale import TIMED_OUT, Figure, latency_figure

    lat = [0.1 * i for i in range(1, 48)]  # 47 of 50 labelled
    assert latency_figure(lat, 3, 600.0, 99) == Figure(600.0, "s", TIMED_OUT)
    assert latency_figure(lat, 3, 600.0, 50) == Figure((lat[24] + lat[25]) / 2, "s")  # the 25th and 26th of 50
    assert latency_figure(lat, 0, 600.0, 99) == Figure(lat[-1], "s")
    assert latency_figure([], 5, 601.0, 50) == Figure(601.0, "s", TIMED_OUT)
