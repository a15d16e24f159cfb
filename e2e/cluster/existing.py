"""The e2e suite against a cluster the user already has (``E2E_KUBECONFIG=/path make e2e``).

``ExistingCluster(kubeconfig, state_dir).up()`` starts no control plane: it checks that the cluster holds nothing
the suite would take over (see ``preflight``), notes what is there, and starts kwok against it for the suite's
fake GPU nodes. Everything the suite creates is marked with one run id (label ``e2e.gpu-operator/run`` on nodes
and namespaces; kwok manages only nodes with that label). ``down()`` deletes what the run created and nothing
else: its nodes and namespaces, the ClusterPolicies, and the cluster-scoped objects of the operator's kinds that
appeared during the run. The operator runs under the ServiceAccount gpu-operator/gpu-operator (a token from the
TokenRequest API, renewed whenever the kubeconfig is asked for, as tests delete and recreate that account).

There is no audit log to read and no control-plane process to restart: those accessors raise ``NotLocalCluster``,
which the suite's conftest turns into a skip naming the reason.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from e2e.cluster.localcluster import (
    MARKER,
    OPERATOR_NAMESPACE,
    OPERATOR_SERVICE_ACCOUNT,
    ClusterError,
    LocalCluster,
    _say,
    free_ports,
)
from gpu_operator.nodes import NodeFacts

RUN_ENV = "E2E_RUN_ID"  # set while a run against an existing cluster is on: nodes.py and kube.py label with it
RUN_LABEL = "e2e.gpu-operator/run"
CRD = "clusterpolicies.nvidia.com"
# Namespaces the suite uses by fixed name (and deletes when done): they must not exist before a run.
FIXED_NAMESPACES = (OPERATOR_NAMESPACE, "node-feature-discovery", "workloads", "sharing-workloads", "seed-workloads")
# Cluster-scoped kinds the operator and the tests create, and the names that are theirs.
CLUSTER_KINDS: dict[str, tuple[str, Callable[[str], bool]]] = {
    "customresourcedefinitions": ("/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
                                  lambda n: n.endswith((".nvidia.com", ".monitoring.coreos.com", ".nfd.k8s-sigs.io"))),
    "clusterroles": ("/apis/rbac.authorization.k8s.io/v1/clusterroles",
                     lambda n: n.startswith(("gpu-operator", "nvidia"))),
    "clusterrolebindings": ("/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
                            lambda n: n.startswith(("gpu-operator", "nvidia"))),
    "runtimeclasses": ("/apis/node.k8s.io/v1/runtimeclasses", lambda n: n.startswith("nvidia")),
}  # fmt: skip


class NotLocalCluster(RuntimeError):
    """What a test asked for exists only on the suite's own local cluster (the audit log, its processes)."""


def run_id() -> str:
    """The current run's id when the suite runs against an existing cluster, else ""."""
    return os.environ.get(RUN_ENV, "")


def run_labels() -> dict[str, str]:
    rid = run_id()
    return {RUN_LABEL: rid} if rid else {}


class ExistingCluster(LocalCluster):
    def __init__(self, kubeconfig: Path | str, state_dir: Path | str, *, binaries: Path | None = None,
                 rid: str | None = None, log: Callable[[str], None] = _say) -> None:  # fmt: skip
        super().__init__(state_dir, binaries=binaries, log=log)
        self.source_kubeconfig = Path(kubeconfig).expanduser().resolve()
        self.run_id = rid or uuid.uuid4().hex[:8]
        self._before: dict[str, set[str]] = {}
        self._started = ""  # RFC 3339, UTC: compares as a string with creationTimestamp
        self._kube: Any = None

    # --- what only the local cluster has ---
    @property
    def audit_log(self) -> Path:
        raise NotLocalCluster("needs the API server's audit log, which an existing cluster does not expose here")

    def audit_events(self) -> Iterator[dict[str, Any]]:
        raise NotLocalCluster("needs the API server's audit log, which an existing cluster does not expose here")

    def writes(self, user: str, since: float = 0.0) -> list[dict[str, Any]]:
        raise NotLocalCluster("needs the API server's audit log, which an existing cluster does not expose here")

    @property
    def admin_token(self) -> str:
        raise NotLocalCluster("the local cluster's static admin token does not exist on an existing cluster")

    # --- identities ---
    @property
    def simulator_kubeconfig(self) -> Path:
        return self.kubeconfig

    @property
    def operator_kubeconfig(self) -> Path:
        """A kubeconfig as ServiceAccount gpu-operator/gpu-operator (made, with its namespace, when missing)."""
        kube = self._admin()
        ns_path = f"/api/v1/namespaces/{OPERATOR_NAMESPACE}"
        if kube.get_or_none(ns_path) is None:
            kube.create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                               "metadata": {"name": OPERATOR_NAMESPACE, "labels": run_labels()}})
        sa_path = f"{ns_path}/serviceaccounts/{OPERATOR_SERVICE_ACCOUNT}"
        if kube.get_or_none(sa_path) is None:
            kube.create(f"{ns_path}/serviceaccounts", {"apiVersion": "v1", "kind": "ServiceAccount",
                                                        "metadata": {"name": OPERATOR_SERVICE_ACCOUNT}})
        request = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                   "spec": {"expirationSeconds": 6 * 3600}}  # fmt: skip
        token = kube.create(f"{sa_path}/token", request)["status"]["token"]
        config = json.loads(self.kubeconfig.read_text())
        user = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{OPERATOR_SERVICE_ACCOUNT}"
        config["users"] = [{"name": user, "user": {"token": token}}]
        for ctx in config["contexts"]:
            ctx["context"]["user"] = user
        path = self.state_dir / "operator.kubeconfig"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(config, indent=2))
        tmp.chmod(0o600)
        tmp.replace(path)
        return path

    @property
    def server(self) -> str:
        return str(json.loads(self.kubeconfig.read_text())["clusters"][0]["cluster"]["server"])

    def _admin(self) -> Any:
        if self._kube is None:
            from e2e.kube import Kube

            self._kube = Kube.from_kubeconfig(self.kubeconfig)
        return self._kube

    # --- lifecycle ---
    def up(self, timeout: float = 60.0) -> None:
        if self.state_dir.exists() and any(self.state_dir.iterdir()):
            if not (self.state_dir / MARKER).exists():
                raise ClusterError(f"{self.state_dir} is not empty and holds no run state; refusing to clear it")
            shutil.rmtree(self.state_dir)
        (self.state_dir / "logs").mkdir(parents=True)
        (self.state_dir / MARKER).write_text("state of an e2e run against an existing cluster; removed by down()\n")
        binaries = self._bin
        assert binaries is not None, "ExistingCluster needs the directory of the kwok and kubectl binaries"
        # One self-contained kubeconfig (current context, files inlined) for every client of the run.
        flat = subprocess.run([str(binaries / "kubectl"), "config", "view", "--raw", "--flatten", "--minify",
                               "-o", "json", f"--kubeconfig={self.source_kubeconfig}"],
                              capture_output=True, text=True, timeout=30)  # fmt: skip
        if flat.returncode != 0:
            raise ClusterError(f"cannot read {self.source_kubeconfig}: {flat.stderr.strip()}")
        self.kubeconfig.write_text(flat.stdout)
        self.kubeconfig.chmod(0o600)
        self.preflight()
        kube = self._admin()
        for kind, (path, _) in CLUSTER_KINDS.items():
            self._before[kind] = {o["metadata"]["name"] for o in kube.items(path)}
        self._before["namespaces"] = {o["metadata"]["name"] for o in kube.items("/api/v1/namespaces")}
        self._before["nodes"] = {o["metadata"]["name"] for o in kube.items("/api/v1/nodes")}
        self._started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 1))
        self._state = {"server": self.server, "ports": {"kwok": free_ports(1)[0]}, "pids": {},
                       "run_id": self.run_id, "existing": str(self.source_kubeconfig)}  # fmt: skip
        self._save_state()
        t0 = time.monotonic()
        self._spawn("kwok", self._kwok_args())
        self._wait("kwok", lambda: self._http_ok(self._state["ports"]["kwok"]), time.monotonic() + timeout)
        self.startup_seconds = time.monotonic() - t0
        self._log(f"run {self.run_id} against {self.server}: kwok manages nodes labelled {RUN_LABEL}={self.run_id}")

    def preflight(self) -> None:
        """Refuse a cluster where the suite would act on what it did not create."""
        kube = self._admin()
        problems = []
        taken = [ns for ns in FIXED_NAMESPACES if kube.get_or_none(f"/api/v1/namespaces/{ns}") is not None]
        if taken:
            problems.append(f"namespaces {', '.join(taken)} exist (the suite creates and deletes them)")
        if kube.get_or_none(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{CRD}") is not None:
            problems.append(f"CRD {CRD} exists (a GPU operator is installed; the suite installs and deletes its own)")
        # GPU nodes as the operator under test sees them: any of NFD's NVIDIA PCI labels, whatever its config.
        gpu_nodes = [n["metadata"]["name"] for n in kube.items("/api/v1/nodes") if NodeFacts.from_node(n).has_gpu]
        if gpu_nodes:
            problems.append(f"nodes {', '.join(gpu_nodes[:5])} carry NFD's NVIDIA GPU labels (the operator under "
                            "test would label them)")  # fmt: skip
        if problems:
            raise ClusterError("E2E_KUBECONFIG: this cluster is not one the suite may use: " + "; ".join(problems))

    def _kwok_args(self) -> list[str]:
        stages = sorted(str(f) for f in self.stages_dir.glob("*.yaml"))
        return [
            self._binary("kwok"),
            f"--kubeconfig={self.kubeconfig}",
            "--manage-all-nodes=false",
            f"--manage-nodes-with-label-selector={RUN_LABEL}={self.run_id}",
            f"--server-address=127.0.0.1:{self._state['ports']['kwok']}",
            "--cidr=10.128.0.0/10",
            "--node-ip=10.64.0.1",
            *(f"-c={s}" for s in stages),
        ]

    def cleanup(self) -> list[str]:
        """Delete what this run created; returns what it deleted (kind/name)."""
        from e2e.kube import wait_for

        kube = self._admin()
        gone: list[str] = []
        uids: set[str] = set()  # of the run's cluster-scoped objects, whose Events land in `default`
        policies = "/apis/nvidia.com/v1/clusterpolicies"
        if kube.get_or_none(f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{CRD}") is not None:
            for p in kube.items(policies):  # no ClusterPolicy could exist before the run (preflight)
                uids.add(p["metadata"]["uid"])
                path = f"{policies}/{p['metadata']['name']}"
                kube.patch(path, {"metadata": {"finalizers": None}})
                kube.delete(path)
                gone.append(f"clusterpolicy/{p['metadata']['name']}")
        for ns in kube.items("/api/v1/namespaces"):
            name, labels = ns["metadata"]["name"], ns["metadata"].get("labels") or {}
            ours = labels.get(RUN_LABEL) == self.run_id or (
                name not in self._before.get("namespaces", set()) and (name in FIXED_NAMESPACES
                                                                       or name.startswith("e2e-")))  # fmt: skip
            if ours and not ns["metadata"].get("deletionTimestamp"):
                kube.delete(f"/api/v1/namespaces/{name}")
                gone.append(f"namespace/{name}")
        namespaces = {g.split("/", 1)[1] for g in gone if g.startswith("namespace/")}
        # Their pods go first, while kwok still plays the nodes they run on.
        wait_for(lambda: not namespaces & {n["metadata"]["name"] for n in kube.items("/api/v1/namespaces")}, 120,
                 message=f"namespaces {sorted(namespaces)} deleted")  # fmt: skip
        for n in kube.items("/api/v1/nodes", labelSelector=f"{RUN_LABEL}={self.run_id}"):
            uids.add(n["metadata"]["uid"])
            kube.delete(f"/api/v1/nodes/{n['metadata']['name']}")
            gone.append(f"node/{n['metadata']['name']}")
        for e in kube.items("/api/v1/events"):
            about = e.get("involvedObject") or {}
            meta = e["metadata"]
            if about.get("uid") in uids or (
                meta.get("creationTimestamp", "") >= self._started
                and (about.get("kind") == "ClusterPolicy"
                     or (about.get("kind") == "Node" and about.get("name") not in self._before["nodes"]))
            ):  # fmt: skip
                kube.delete(f"/api/v1/namespaces/{meta['namespace']}/events/{meta['name']}")
                gone.append(f"event/{meta['namespace']}/{meta['name']}")
        for kind, (path, is_ours) in CLUSTER_KINDS.items():
            for obj in kube.items(path):
                name = obj["metadata"]["name"]
                if name not in self._before.get(kind, set()) and is_ours(name):
                    kube.delete(f"{path}/{name}")
                    gone.append(f"{kind}/{name}")
        return gone

    def down(self) -> None:
        try:
            if self._before:
                gone = self.cleanup()
                self._log(f"run {self.run_id}: deleted {len(gone)} objects it created")
        finally:
            self._stop_processes()
            if self._kube is not None:
                self._kube.close()
                self._kube = None
            if (self.state_dir / MARKER).exists():
                shutil.rmtree(self.state_dir, ignore_errors=True)
            self._state = {}
