"""A real Kubernetes control plane on loopback, with kwok faking the nodes: no containers, no Docker.

``LocalCluster(state_dir).up()`` starts etcd, kube-apiserver, kube-controller-manager, kube-scheduler and
kwok from the binaries ``build.sh`` leaves in its cache, each with its log in ``state_dir/logs``; ``down()``
stops them and removes ``state_dir``. Process ids are recorded in ``state_dir/cluster.json`` so another process
(the CLI) can stop a cluster it did not start.

Unless ``detach=True``, every child gets PR_SET_PDEATHSIG=SIGKILL, so it dies with the Python process (or, to
be exact, with the thread that called ``up()``), even when that process is SIGKILLed.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import ctypes
import json
import os
import random
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SH = Path(__file__).resolve().parent / "build.sh"
STAGES_DIR = Path(__file__).resolve().parent / "stages"
HEARTBEAT_STAGE = "node-heartbeat.yaml"
K8S_VERSION = "v1.37.2"
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok", "kubectl", "helm")

ADMIN_USER = "e2e-admin"
OPERATOR_NAMESPACE = "gpu-operator"
OPERATOR_SERVICE_ACCOUNT = "gpu-operator"
OPERATOR_USER = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{OPERATOR_SERVICE_ACCOUNT}"
OPERATOR_GROUPS = (
    "system:serviceaccounts", f"system:serviceaccounts:{OPERATOR_NAMESPACE}", "system:authenticated")
SIMULATOR_USER = "e2e-node-simulator"

# Order of start; stopped in reverse.
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")

AUDIT_POLICY = """\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
- level: Metadata
"""

PR_SET_PDEATHSIG = 1
MARKER = ".e2e-cluster"  # up() and down() only ever clear a state_dir that holds this file


class ClusterError(RuntimeError):
    pass


def _say(msg: str) -> None:
    print(f"[cluster] {msg}", file=sys.stderr, flush=True)


# --- binaries ---

def bin_dir() -> Path:
    out = subprocess.run(["bash", str(BUILD_SH), "--print-dir"], capture_output=True, text=True)
    if out.returncode != 0:  # e.g. the cache cannot be created: build.sh's stderr says why
        raise ClusterError(f"{BUILD_SH} --print-dir failed (exit {out.returncode}): {out.stderr.strip()}")
    return Path(out.stdout.strip())


def missing_binaries(directory: Path | None = None) -> list[str]:
    d = directory or bin_dir()
    return [b for b in BINARIES if not os.access(d / b, os.X_OK)]


def ensure_binaries() -> Path:
    """The directory with the cluster binaries; runs build.sh first (progress on stderr) if any is missing."""
    d = bin_dir()
    missing = missing_binaries(d)
    if missing:
        _say(f"binaries missing in {d} ({', '.join(missing)}): running {BUILD_SH} (slow the first time)")
        r = subprocess.run(["bash", str(BUILD_SH)], stdout=sys.stderr, stderr=sys.stderr)
        if r.returncode != 0:
            raise ClusterError(f"{BUILD_SH} failed (exit {r.returncode}); its output above says why")
        missing = missing_binaries(d)
        if missing:
            raise ClusterError(f"build.sh finished but {', '.join(missing)} still missing in {d}")
    return d


# --- process helpers ---

def _pdeathsig_preexec() -> Callable[[], None]:
    """A preexec_fn making the child get SIGKILL when its parent (thread) dies.

    libc is loaded here in the parent: the child, between fork and exec, only calls prctl.  If the parent is
    already gone by then, the child exits at once.
    """
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    parent = os.getpid()

    def preexec() -> None:
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return preexec


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("State:"):
                    return "Z" not in line.split()[1]
    except OSError:
        return False
    return True


def _pid_cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def owned_alive(pid: int, marker: str) -> bool:
    """`pid` runs and is still ours: its command line holds `marker` (a state dir), so a reused pid is not."""
    return pid_alive(pid) and marker in _pid_cmdline(pid)


def signal_group(pid: int, sig: int) -> None:
    """Signal the process group `pid` leads (started with start_new_session), else the process alone."""
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        os.kill(pid, sig)


def rss_kib(pid: int) -> int | None:
    """Resident set size of a process in KiB (VmRSS), None if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


_HANDED_OUT: set[int] = set()


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_ports(n: int) -> list[int]:
    """`n` ports free now, below the kernel's ephemeral range and not handed out before by this process. A
    component restarted on its port (the chaos tests, an operator killed) finds it free: a port in the ephemeral
    range could be taken by an outgoing connection while its listener is down."""
    high = _ephemeral_low()
    low = max(1024, high - 12000)
    ports: list[int] = []
    for _ in range(200 * n):
        if len(ports) == n:
            return ports
        port = random.randrange(low, high)
        if port in _HANDED_OUT:
            continue
        with socket.socket() as s:
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        ports.append(port)
    if len(ports) == n:
        return ports
    raise ClusterError(f"no {n} free ports in {low}-{high - 1}")


_ERROR_LINE = re.compile(r'^(Error|error|panic|[EF]\d{4} )|"level":"(error|fatal|panic)"')


def _tail(path: Path, lines: int = 30) -> str:
    """The last lines of a log, after its last few error lines (a usage text can hide the flag error)."""
    try:
        data = path.read_bytes()[-256 * 1024:].decode(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    errors = [line for line in data[:-lines] if _ERROR_LINE.search(line)][-5:]
    head = ["(error lines:)", *errors, "(last lines:)"] if errors else []
    return "\n".join(head + data[-lines:])


def _openssl(*args: str, cwd: Path) -> None:
    r = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if r.returncode != 0:
        raise ClusterError(f"openssl {' '.join(args)} failed:\n{r.stderr}")


def _kubeconfig(server: str, ca_pem: bytes, user: str, token: str) -> str:
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "e2e", "cluster": {
            "server": server, "certificate-authority-data": base64.b64encode(ca_pem).decode()}}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": user}}],
        "current-context": "e2e",
    }
    return json.dumps(doc, indent=2) + "\n"  # JSON is YAML


@dataclass
class _Proc:
    name: str
    pid: int
    popen: subprocess.Popen[bytes] | None = None


class LocalCluster:
    def __init__(
        self,
        state_dir: Path | str,
        *,
        detach: bool = False,
        binaries: Path | None = None,
        stages_dir: Path = STAGES_DIR,
        log: Callable[[str], None] = _say,
        node_monitor_grace: str = "2m",
        node_leases: bool = False,
    ) -> None:
        self.state_dir = Path(state_dir).resolve()
        # As a kubelet does: kwok renews each node's Lease every 10 s and posts the node's status every 5 min
        # (nodeStatusReportFrequency) instead of every 20-25 s. Off by default (tests keep the fast heartbeat).
        self.node_leases = node_leases
        # kube-controller-manager's --node-monitor-grace-period. kwok re-arms a node's heartbeat stage whenever the
        # node changes, so a node patched every few seconds (a driver rollout) can miss heartbeats past 2m: it
        # goes Unknown and its pods NotReady for good (kwok does not make them Ready again). Longer for tests that
        # keep patching nodes for minutes.
        self.node_monitor_grace = node_monitor_grace
        self.detach = detach
        self._bin = binaries
        self.stages_dir = stages_dir
        self._log = log
        self._procs: dict[str, _Proc] = {}
        self._state: dict[str, Any] = {}
        self._atexit_registered = False
        self.startup_seconds: float | None = None
        if (self.state_dir / "cluster.json").exists():
            self._load_state()

    # --- public properties ---
    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "admin.kubeconfig"

    @property
    def operator_kubeconfig(self) -> Path:
        return self.state_dir / "operator.kubeconfig"

    @property
    def simulator_kubeconfig(self) -> Path:
        """Cluster-admin like ``kubeconfig``, as user ``e2e-node-simulator`` (to tell its writes apart)."""
        return self.state_dir / "simulator.kubeconfig"

    @property
    def audit_log(self) -> Path:
        return self.state_dir / "audit.log"

    @property
    def server(self) -> str:
        return str(self._state["server"])

    @property
    def ca_file(self) -> Path:
        return self.state_dir / "pki" / "ca.crt"

    @property
    def admin_token(self) -> str:
        return str(self._state["tokens"][ADMIN_USER])

    @property
    def pids(self) -> dict[str, int]:
        return {name: int(pid) for name, pid in self._state.get("pids", {}).items()}

    def log_path(self, component: str) -> Path:
        return self.state_dir / "logs" / f"{component}.log"

    def running(self) -> dict[str, bool]:
        """Which recorded component processes are alive (and really ours)."""
        return {name: self._owned_alive(pid) for name, pid in self.pids.items()}

    def audit_events(self) -> Iterator[dict[str, Any]]:
        """The audit log's events so far (one JSON object a line; a partly written last line is skipped)."""
        try:
            f = self.audit_log.open()
        except FileNotFoundError:
            return
        with f:
            for line in f:
                if line.endswith("\n"):
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError:
                        continue

    def writes(self, user: str, since: float = 0.0) -> list[dict[str, Any]]:
        """Audit events of write requests made by `user` and received at or after `since` (epoch seconds)."""
        return [e for e in self.audit_events()
                if e.get("user", {}).get("username") == user and e.get("verb") in WRITE_VERBS
                and audit_time(e) >= since]

    # --- lifecycle ---
    def up(self, timeout: float = 180.0) -> None:
        if self._state.get("pids") and any(self.running().values()):
            raise ClusterError(f"a cluster is already running from {self.state_dir}; call down() first")
        if self.state_dir.exists() and any(self.state_dir.iterdir()):
            if not (self.state_dir / MARKER).exists():
                raise ClusterError(f"{self.state_dir} is not empty and holds no cluster; refusing to clear it")
            shutil.rmtree(self.state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / MARKER).write_text("state of an e2e LocalCluster; removed by down()\n")
        t0 = time.monotonic()
        binaries = self._bin or bin_dir()
        missing = [b for b in COMPONENTS if not os.access(binaries / b, os.X_OK)]
        if missing:
            raise ClusterError(f"missing binaries in {binaries}: {', '.join(missing)} (run {BUILD_SH})")
        self._bin = binaries
        (self.state_dir / "logs").mkdir()
        if not self.detach and not self._atexit_registered:
            atexit.register(self._stop_processes)
            self._atexit_registered = True
        try:
            self._prepare()
            deadline = time.monotonic() + timeout
            self._start_and_wait("etcd", self._etcd_args(), self._etcd_ready, deadline)
            self._start_and_wait("kube-apiserver", self._apiserver_args(), self._apiserver_ready, deadline)
            t = time.monotonic()
            for name, args in (
                ("kube-controller-manager", self._controller_manager_args()),
                ("kube-scheduler", self._scheduler_args()),
                ("kwok", self._kwok_args()),
            ):
                self._spawn(name, args)
            ports = self._state["ports"]
            for name, check in (
                ("kube-controller-manager", lambda: self._https_ok(ports["kube-controller-manager"])),
                ("kube-scheduler", lambda: self._https_ok(ports["kube-scheduler"])),
                ("kwok", lambda: self._http_ok(ports["kwok"])),
            ):
                self._wait(name, check, deadline)
                self._log(f"{name} healthy ({time.monotonic() - t:.1f}s)")
            t = time.monotonic()
            self._wait("kube-controller-manager", self._default_service_account_exists, deadline,
                       what="the default ServiceAccount")
            self._log(f"default ServiceAccount created ({time.monotonic() - t:.1f}s)")
        except BaseException:
            self._stop_processes()
            raise
        self.startup_seconds = time.monotonic() - t0
        self._log(f"cluster up in {self.startup_seconds:.1f}s: {self.server}  (kubeconfig {self.kubeconfig})")

    def stop_component(self, name: str, grace: float = 5.0) -> None:
        """Stop one component (e.g. kwok, to stand for a cluster that has none); down() still cleans up."""
        pid = self.pids.get(name)
        if pid is None or not self._owned_alive(pid):
            return
        self._signal(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while pid_alive(pid) and time.monotonic() < deadline:
            self._reap()
            time.sleep(0.05)
        if pid_alive(pid):
            self._signal(pid, signal.SIGKILL)
        self._reap()

    def stop(self) -> None:
        """Stop the processes and keep the state directory (logs, audit log) for a look afterwards."""
        self._stop_processes()

    def down(self) -> None:
        self._stop_processes()
        if (self.state_dir / MARKER).exists():
            shutil.rmtree(self.state_dir, ignore_errors=True)
        self._state = {}

    # --- faults (the chaos tests) ---
    def restart(self, component: str, timeout: float = 60.0) -> float:
        """SIGKILL one control-plane component (etcd or kube-apiserver, say) and start it again with the same
        flags and data; returns once it answers again, with the seconds it was away."""
        starts: dict[str, tuple[Callable[[], list[str]], Callable[[], bool]]] = {
            "etcd": (self._etcd_args, self._etcd_ready),
            "kube-apiserver": (self._apiserver_args, self._apiserver_ready),
            "kube-controller-manager": (
                self._controller_manager_args, lambda: self._https_ok(self._state["ports"]["kube-controller-manager"])),
            "kube-scheduler": (self._scheduler_args, lambda: self._https_ok(self._state["ports"]["kube-scheduler"])),
            "kwok": (self._kwok_args, lambda: self._http_ok(self._state["ports"]["kwok"])),
        }  # fmt: skip
        args, ready = starts[component]
        t = time.monotonic()
        pid = self.pids.get(component)
        if pid is not None and self._owned_alive(pid):
            self._signal(pid, signal.SIGKILL)
            proc = self._procs.get(component)
            if proc is not None and proc.popen is not None:
                proc.popen.wait(timeout=15)
            deadline = time.monotonic() + 15
            while pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.02)
        self._start_and_wait(component, args(), ready, time.monotonic() + timeout)
        return time.monotonic() - t

    def api_ready(self) -> bool:
        """Whether the API server answers /readyz (etcd included) and serves a read."""
        try:
            return self._apiserver_ready()
        except OSError:
            return False

    def etcd_revision(self) -> int:
        """etcd's current revision (the newest resourceVersion the API server can have handed out)."""
        return int(self._etcd_post("/v3/kv/range", {"key": base64.b64encode(b"/").decode()})["header"]["revision"])

    def etcd_compact(self, revision: int | None = None) -> int:
        """Compact etcd's history up to `revision` (default: now); a watch from an older resourceVersion that the
        API server's watch cache cannot serve then ends in 410 Gone. Returns the revision."""
        rev = revision if revision is not None else self.etcd_revision()
        self._etcd_post("/v3/kv/compaction", {"revision": str(rev), "physical": True})
        return rev

    def _etcd_post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        url = f"http://127.0.0.1:{self._state['ports']['etcd']}{path}"
        req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            out: dict[str, Any] = json.loads(r.read())
            return out

    # --- internals ---
    def _load_state(self) -> None:
        self._state = json.loads((self.state_dir / "cluster.json").read_text())

    def _save_state(self) -> None:
        tmp = self.state_dir / "cluster.json.tmp"
        tmp.write_text(json.dumps(self._state, indent=2))
        tmp.replace(self.state_dir / "cluster.json")

    def _owned_alive(self, pid: int) -> bool:
        return owned_alive(pid, str(self.state_dir))

    def _prepare(self) -> None:
        sd = self.state_dir
        pki = sd / "pki"
        pki.mkdir()
        names = ["etcd", "etcd-peer", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok"]
        ports = dict(zip(names, free_ports(len(names)), strict=True))
        server = f"https://127.0.0.1:{ports['kube-apiserver']}"
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30", "-keyout", "ca.key",
                 "-out", "ca.crt", "-subj", "/CN=gpu-operator-e2e-ca", cwd=pki)
        (pki / "serving.ext").write_text(
            "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,"
            "DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:10.96.0.1\n"
            "extendedKeyUsage=serverAuth\nkeyUsage=digitalSignature,keyEncipherment\n")
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "apiserver.key", "-out", "apiserver.csr",
                 "-subj", "/CN=kube-apiserver", cwd=pki)
        _openssl("x509", "-req", "-in", "apiserver.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-CAcreateserial", "-days", "30", "-extfile", "serving.ext", "-out", "apiserver.crt", cwd=pki)
        _openssl("genrsa", "-out", "sa.key", "2048", cwd=pki)
        _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)

        # Static tokens: user, groups.  Components get system:masters under their usual names, so the audit
        # log tells who wrote what.
        identities: dict[str, tuple[str, ...]] = {
            ADMIN_USER: ("system:masters", "system:authenticated"),
            OPERATOR_USER: OPERATOR_GROUPS,
            SIMULATOR_USER: ("system:masters", "system:authenticated"),
            "system:kube-controller-manager": ("system:masters", "system:authenticated"),
            "system:kube-scheduler": ("system:masters", "system:authenticated"),
            "kwok": ("system:masters", "system:authenticated"),
        }
        tokens = {user: secrets.token_hex(16) for user in identities}
        with (sd / "tokens.csv").open("w") as f:
            for user, groups in identities.items():
                f.write(f'{tokens[user]},{user},{user},"{",".join(groups)}"\n')
        (sd / "tokens.csv").chmod(0o600)
        (sd / "audit-policy.yaml").write_text(AUDIT_POLICY)

        ca_pem = (pki / "ca.crt").read_bytes()
        for filename, user in (
            ("admin.kubeconfig", ADMIN_USER),
            ("operator.kubeconfig", OPERATOR_USER),
            ("simulator.kubeconfig", SIMULATOR_USER),
            ("controller-manager.kubeconfig", "system:kube-controller-manager"),
            ("scheduler.kubeconfig", "system:kube-scheduler"),
            ("kwok.kubeconfig", "kwok"),
        ):
            (sd / filename).write_text(_kubeconfig(server, ca_pem, user, tokens[user]))
            (sd / filename).chmod(0o600)

        (sd / "scheduler-config.yaml").write_text(json.dumps({
            "apiVersion": "kubescheduler.config.k8s.io/v1",
            "kind": "KubeSchedulerConfiguration",
            "clientConnection": {"kubeconfig": str(sd / "scheduler.kubeconfig"), "qps": 500, "burst": 1000},
            "leaderElection": {"leaderElect": False},
        }, indent=2))
        self._state = {"server": server, "ports": ports, "tokens": tokens, "pids": {}, "detach": self.detach}
        self._save_state()

    def _binary(self, name: str) -> str:
        assert self._bin is not None
        return str(self._bin / name)

    def _etcd_args(self) -> list[str]:
        p = self._state["ports"]
        client_url, peer_url = f"http://127.0.0.1:{p['etcd']}", f"http://127.0.0.1:{p['etcd-peer']}"
        return [
            self._binary("etcd"),
            "--name=e2e",
            f"--data-dir={self.state_dir / 'etcd'}",
            f"--listen-client-urls={client_url}",
            f"--advertise-client-urls={client_url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=e2e={peer_url}",
            "--initial-cluster-state=new",
            "--unsafe-no-fsync",
            "--quota-backend-bytes=4294967296",
            "--log-level=warn",
        ]

    def _apiserver_args(self) -> list[str]:
        p, sd, pki = self._state["ports"], self.state_dir, self.state_dir / "pki"
        return [
            self._binary("kube-apiserver"),
            f"--etcd-servers=http://127.0.0.1:{p['etcd']}",
            "--advertise-address=127.0.0.1",
            "--bind-address=127.0.0.1",
            f"--secure-port={p['kube-apiserver']}",
            "--endpoint-reconciler-type=none",
            f"--cert-dir={pki}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            "--service-cluster-ip-range=10.96.0.0/16",
            "--authorization-mode=Node,RBAC",
            "--anonymous-auth=false",
            f"--token-auth-file={sd / 'tokens.csv'}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            "--allow-privileged=true",
            f"--audit-policy-file={sd / 'audit-policy.yaml'}",
            f"--audit-log-path={self.audit_log}",
            "--audit-log-format=json",
            "--audit-log-maxsize=0",
            "--profiling=false",
        ]

    def _controller_manager_args(self) -> list[str]:
        p, sd, pki = self._state["ports"], self.state_dir, self.state_dir / "pki"
        kc = sd / "controller-manager.kubeconfig"
        return [
            self._binary("kube-controller-manager"),
            f"--kubeconfig={kc}",
            f"--authentication-kubeconfig={kc}",
            f"--authorization-kubeconfig={kc}",
            "--authentication-skip-lookup=true",
            "--bind-address=127.0.0.1",
            f"--secure-port={p['kube-controller-manager']}",
            f"--cert-dir={sd / 'controller-manager-certs'}",
            "--leader-elect=false",
            "--controllers=*",
            "--use-service-account-credentials=false",
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--root-ca-file={pki / 'ca.crt'}",
            f"--cluster-signing-cert-file={pki / 'ca.crt'}",
            f"--cluster-signing-key-file={pki / 'ca.key'}",
            "--kube-api-qps=500",
            "--kube-api-burst=1000",
            # kwok heartbeats every 20-25s; leave slack for a loaded 2-core machine before nodes go NotReady.
            f"--node-monitor-grace-period={self.node_monitor_grace}",
            "--profiling=false",
        ]

    def _scheduler_args(self) -> list[str]:
        p, sd = self._state["ports"], self.state_dir
        kc = sd / "scheduler.kubeconfig"
        return [
            self._binary("kube-scheduler"),
            f"--config={sd / 'scheduler-config.yaml'}",
            f"--authentication-kubeconfig={kc}",
            f"--authorization-kubeconfig={kc}",
            "--authentication-skip-lookup=true",
            "--bind-address=127.0.0.1",
            f"--secure-port={p['kube-scheduler']}",
            f"--cert-dir={sd / 'scheduler-certs'}",
            "--profiling=false",
        ]

    def _kwok_args(self) -> list[str]:
        p, sd = self._state["ports"], self.state_dir
        stages = sorted(str(f) for f in self.stages_dir.glob("*.yaml"))
        if not stages:
            raise ClusterError(f"no kwok stage files in {self.stages_dir}")
        leases: list[str] = []
        if self.node_leases:
            leases = ["--node-lease-duration-seconds=40"]
            stages = [self._kubelet_heartbeat(Path(s)) if Path(s).name == HEARTBEAT_STAGE else s for s in stages]
        return [
            self._binary("kwok"),
            f"--kubeconfig={sd / 'kwok.kubeconfig'}",
            "--manage-all-nodes=false",
            "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
            f"--server-address=127.0.0.1:{p['kwok']}",
            "--cidr=10.128.0.0/10",
            "--node-ip=10.64.0.1",
            *(f"-c={s}" for s in stages),
            *leases,
        ]

    def _kubelet_heartbeat(self, stage: Path) -> str:
        """The heartbeat stage with a kubelet's status cadence (every 5 min, up to 1 min later), in state_dir."""
        text = stage.read_text()
        for old, new in (("durationMilliseconds: 20000", "durationMilliseconds: 300000"),
                         ("jitterDurationMilliseconds: 25000", "jitterDurationMilliseconds: 360000")):
            if old not in text:
                raise ClusterError(f"{stage}: no {old!r} to change for node leases")
            text = text.replace(old, new)
        out = self.state_dir / HEARTBEAT_STAGE
        out.write_text(text)
        return str(out)

    def _spawn(self, name: str, args: list[str]) -> None:
        log = self.log_path(name).open("ab")
        try:
            popen = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.state_dir,
                start_new_session=True,
                preexec_fn=None if self.detach else _pdeathsig_preexec(),
            )
        finally:
            log.close()
        self._procs[name] = _Proc(name, popen.pid, popen)
        self._state["pids"][name] = popen.pid
        self._save_state()

    def _start_and_wait(
        self, name: str, args: list[str], check: Callable[[], bool], deadline: float
    ) -> None:
        t = time.monotonic()
        self._spawn(name, args)
        self._wait(name, check, deadline)
        self._log(f"{name} ready ({time.monotonic() - t:.1f}s)")

    def _wait(self, name: str, check: Callable[[], bool], deadline: float, what: str = "") -> None:
        while True:
            proc = self._procs.get(name)
            if proc is not None and proc.popen is not None and proc.popen.poll() is not None:
                raise ClusterError(
                    f"{name} exited with status {proc.popen.returncode} while starting; "
                    f"last lines of {self.log_path(name)}:\n{_tail(self.log_path(name))}")
            try:
                if check():
                    return
            except (OSError, urllib.error.URLError, ValueError, KeyError):
                pass
            if time.monotonic() > deadline:
                raise ClusterError(
                    f"timed out waiting for {what or name}; last lines of {self.log_path(name)}:\n"
                    f"{_tail(self.log_path(name))}")
            time.sleep(0.2)

    def _etcd_ready(self) -> bool:
        url = f"http://127.0.0.1:{self._state['ports']['etcd']}/health"
        with urllib.request.urlopen(url, timeout=2) as r:
            return bool(json.loads(r.read()).get("health") == "true")

    def _api_get(self, path: str) -> tuple[int, bytes]:
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        headers = {"Authorization": f"Bearer {self.admin_token}"}
        req = urllib.request.Request(self.server + path, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=5, context=ctx) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def _apiserver_ready(self) -> bool:
        status, _ = self._api_get("/readyz")
        if status != 200:
            return False
        status, _ = self._api_get("/api/v1/namespaces/default")
        return status == 200

    def _default_service_account_exists(self) -> bool:
        status, _ = self._api_get("/api/v1/namespaces/default/serviceaccounts/default")
        return status == 200

    @staticmethod
    def _https_ok(port: int) -> bool:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        with urllib.request.urlopen(f"https://127.0.0.1:{port}/healthz", timeout=2, context=ctx) as r:
            return bool(r.status == 200)

    @staticmethod
    def _http_ok(port: int) -> bool:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
            return bool(r.status == 200)

    def _stop_processes(self, grace: float = 5.0) -> None:
        """SIGTERM the clients of the API server, then the API server, then etcd; SIGKILL after ``grace``.

        (The API server waits up to a minute for open watches to drain, so its clients go first.)
        """
        pids = self.pids
        for phase in (("kwok", "kube-scheduler", "kube-controller-manager"), ("kube-apiserver",), ("etcd",)):
            live = [pids[n] for n in phase if n in pids and self._owned_alive(pids[n])]
            for pid in live:
                self._signal(pid, signal.SIGTERM)
            deadline = time.monotonic() + grace
            while live and time.monotonic() < deadline:
                self._reap()
                live = [p for p in live if pid_alive(p)]
                if live:
                    time.sleep(0.02)
            for pid in live:
                self._signal(pid, signal.SIGKILL)
        for proc in self._procs.values():
            if proc.popen is not None:
                try:
                    proc.popen.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
        self._procs.clear()
        if self._state.get("pids"):
            self._state["pids"] = {}
            if self.state_dir.exists():
                self._save_state()

    @staticmethod
    def _signal(pid: int, sig: int) -> None:
        signal_group(pid, sig)  # each component leads its own session and process group

    def _reap(self) -> None:
        for proc in self._procs.values():
            if proc.popen is not None:
                proc.popen.poll()


@contextlib.contextmanager
def temporary_cluster(
    prefix: str, cluster_class: type[LocalCluster] = LocalCluster, **kwargs: Any
) -> Iterator[tuple[LocalCluster, Path]]:
    """A cluster up in a new temporary directory (its binaries built first if missing), and that directory; the
    cluster goes down and the directory away however the block ends (benchmarks and scripts: tests use the
    fixtures)."""
    binaries = ensure_binaries()
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        cluster = cluster_class(Path(tmp) / "cluster", binaries=binaries, **kwargs)
        try:
            cluster.up()
            yield cluster, Path(tmp)
        finally:
            cluster.down()


WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})


def audit_time(event: dict[str, Any]) -> float:
    """When the API server received an audit event's request, in epoch seconds (0 when absent)."""
    ts = event.get("requestReceivedTimestamp", "")
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp() if ts else 0.0
