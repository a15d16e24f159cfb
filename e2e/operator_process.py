"""Run `gpu-operator run` as its own process against the local cluster, under the chart's identity.

The operator's RBAC (ServiceAccount, ClusterRole, bindings) comes from the generated plain install manifest
`manifests/gpu-operator.yaml`, so any API call the chart's role does not allow fails the tests.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from e2e.cluster.localcluster import LocalCluster, _pdeathsig_preexec, free_ports
from gpu_operator import images
from gpu_operator.crd import all_crds
from gpu_operator.kube import Kube

REPO = Path(__file__).resolve().parents[1]
INSTALL_MANIFEST = Path(os.environ.get("GPU_OPERATOR_INSTALL_MANIFEST", REPO / "manifests" / "gpu-operator.yaml"))
RBAC_KINDS = {"Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}
NAMESPACE = "gpu-operator"


def free_port() -> int:
    """A port free now, below the kernel's ephemeral range, never handed out twice (e2e.cluster.localcluster)."""
    return free_ports(1)[0]


def install_crds_and_rbac(admin: Kube, crds: Iterable[dict[str, Any]] | None = None) -> None:
    """What `kubectl apply -f manifests/gpu-operator.yaml` installs, minus the Deployment (no image here); `crds`:
    other CRDs than ours (NVIDIA's, for its operator)."""
    for crd in all_crds() if crds is None else crds:
        admin.apply(crd)
        admin.wait_established(crd["metadata"]["name"])
    for doc in yaml.safe_load_all(INSTALL_MANIFEST.read_text()):
        if doc and doc.get("kind") in RBAC_KINDS:
            admin.apply(doc)


class OperatorProcess:
    """`identity` (POD_NAME) names the replica in the leader Lease and in its requests' User-Agent
    (`gpu-operator/<version> (<identity>)`, in the audit log); `leader_elect` passes --leader-elect."""

    def __init__(self, cluster: LocalCluster, log_path: Path, *, identity: str = "",
                 leader_elect: bool = False):  # fmt: skip
        self.cluster = cluster
        self.log_path = log_path
        self.identity = identity
        self.leader_elect = leader_elect
        self.proc: subprocess.Popen[bytes] | None = None
        self.metrics_port = free_port()
        self.health_port = free_port()

    def start(self) -> OperatorProcess:
        log = self.log_path.open("ab")
        cmd = [
            sys.executable, "-m", "gpu_operator.cli", "run",
            "--kubeconfig", str(self.cluster.operator_kubeconfig),
            "--namespace", NAMESPACE,
            "--metrics-port", str(self.metrics_port),
            "--health-port", str(self.health_port),
        ]  # fmt: skip
        if self.leader_elect:
            cmd.append("--leader-elect")
        # Not the shell's image variables: the operator reads them (gpu_operator.images.ENV) as its operands' images.
        env = {k: v for k, v in os.environ.items() if k not in set(images.ENV.values())}
        if self.identity:
            env["POD_NAME"] = self.identity
        # Dies with the test session even when that is SIGKILLed, as the cluster's components (PR_SET_PDEATHSIG:
        # with the thread that starts it, so start it from one that outlives it).
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                     preexec_fn=_pdeathsig_preexec())  # fmt: skip
        log.close()
        return self

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    @property
    def username(self) -> str:
        return f"system:serviceaccount:{NAMESPACE}:gpu-operator"


def delete_policies(admin: Kube, timeout: float = 60, *, leftover: bool = False) -> None:
    """Delete every ClusterPolicy and wait until they are gone (an operator running meanwhile removes its
    finalizer and its node labels). `leftover`: a module's setup clearing what an earlier module left behind,
    whose operator is gone: policies still there after `timeout` have their finalizers dropped (nothing else
    would), with a warning, so one module's failure does not fail every module after it."""
    from e2e.kube import wait_for

    for policy in admin.list("ClusterPolicy"):
        admin.delete("ClusterPolicy", policy["metadata"]["name"])
    try:
        wait_for(lambda: not admin.list("ClusterPolicy"), timeout, message="ClusterPolicies deleted")
    except AssertionError:
        if not leftover:
            raise
        stuck = [p["metadata"]["name"] for p in admin.list("ClusterPolicy")]
        warnings.warn(f"ClusterPolicies {stuck} left by an earlier test and not deleted in {timeout:.0f}s: "
                      f"their finalizers dropped", stacklevel=2)  # fmt: skip
        for name in stuck:
            admin.merge_patch("ClusterPolicy", name, {"metadata": {"finalizers": None}})
        wait_for(lambda: not admin.list("ClusterPolicy"), 30, message="ClusterPolicies deleted, finalizers dropped")


def policy_from_sample(name: str = "cluster-policy", **overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((REPO / "manifests/samples/clusterpolicy-default.yaml").read_text())
    doc["metadata"] = {"name": name}
    for path, value in overrides.items():
        cursor = doc["spec"]
        keys = path.split(".")
        for k in keys[:-1]:
            cursor = cursor.setdefault(k, {})
        cursor[keys[-1]] = value
    return doc
