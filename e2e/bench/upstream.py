"""NVIDIA's own GPU operator, built from its source, run in place of ours by `operator_scale --upstream SRC`.

SRC is a checkout of NVIDIA/gpu-operator (v26.7.0 measured) where the operator was built with

    go build -mod=vendor -o bin/gpu-operator ./cmd/gpu-operator      # ~2 min here; its modules are vendored

It runs outside the cluster like ours, under the same identity (so the audit log counts its requests the same
way), with its own CRDs (SRC/deployments/gpu-operator/crds). It reads its operand manifests from the fixed path
/opt/gpu-operator: the process gets a private mount namespace (`unshare`) with a tmpfs on /opt laid out as its
image has it (assets, manifests, validator manifests), so nothing on this machine changes. Its ClusterRole is not
rendered from its chart: the identity is bound to cluster-admin instead (the request counts do not depend on it).
Component images: v26.7's defaults (gpu_operator.images) through the env variables upstream falls back to.

Its operand pods go through the node simulator as ours do: its ClusterPolicy's `daemonsets.labels` puts our
`app.kubernetes.io/managed-by=gpu-operator` on each pod template (upstream applies those labels to every operand
DaemonSet), so kwok leaves them to the simulator (e2e/cluster/stages/pod-ready.yaml).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml

from e2e import operator_process
from e2e.cluster.localcluster import OPERATOR_USER, LocalCluster
from e2e.operator_process import NAMESPACE, OperatorProcess
from e2e.simulator import MANAGED_SELECTOR
from gpu_operator import images
from gpu_operator.kube import Kube

BINARY = Path("bin") / "gpu-operator"
MANAGED_KEY, MANAGED_VALUE = MANAGED_SELECTOR.split("=")  # the label kwok leaves to the node simulator
CRDS = Path("deployments") / "gpu-operator" / "crds"
# /opt as its image lays it out (its Dockerfile's COPY lines): what of SRC goes where.
LAYOUT = {"assets": "/opt/gpu-operator", "manifests": "/opt/gpu-operator/manifests",
          "validator/manifests": "/opt/validator/manifests"}  # fmt: skip
# Each controller logs this once its caches are filled (controller-runtime), five of them in v26.7.
STARTED = '"Starting workers"'
# Its chart sets each component's image in the ClusterPolicy; the sample leaves them to our defaults. Upstream falls
# back to these env variables (ImagePath): the same images, v26.7's.
IMAGE_ENV = {
    "DRIVER_IMAGE": "driver", "DRIVER_MANAGER_IMAGE": "driver-manager", "CONTAINER_TOOLKIT_IMAGE": "toolkit",
    "DEVICE_PLUGIN_IMAGE": "device-plugin", "GFD_IMAGE": "gfd", "DCGM_IMAGE": "dcgm",
    "DCGM_EXPORTER_IMAGE": "dcgm-exporter", "MIG_MANAGER_IMAGE": "mig-manager", "VALIDATOR_IMAGE": "validator",
}


def through_simulator(policy: dict[str, Any]) -> dict[str, Any]:
    """The ClusterPolicy with the label that hands NVIDIA's operand pods to the node simulator (see above)."""
    policy["spec"].setdefault("daemonsets", {}).setdefault("labels", {})[MANAGED_KEY] = MANAGED_VALUE
    return policy


def check_source(src: Path) -> str | None:
    """Why SRC cannot be run (None: it can)."""
    for need in (BINARY, CRDS, *map(Path, LAYOUT)):
        if not (src / need).exists():
            hint = " (build it: go build -mod=vendor -o bin/gpu-operator ./cmd/gpu-operator)" if need == BINARY else ""
            return f"{src / need} is missing{hint}"
    return None


def install_crds_and_rbac(admin: Kube, src: Path) -> None:
    """Its CRDs; our install manifest's namespace and ServiceAccount, the identity bound to cluster-admin."""
    crds = [doc for path in sorted((src / CRDS).glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text()) if doc]
    operator_process.install_crds_and_rbac(admin, crds)
    admin.apply({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": "bench-upstream-operator"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"kind": "User", "name": OPERATOR_USER, "apiGroup": "rbac.authorization.k8s.io"}],
    })  # fmt: skip


class UpstreamProcess(OperatorProcess):
    """OperatorProcess's surface (proc, stop, log_tail, username) for NVIDIA's binary; started() waits for its
    controllers' caches."""

    def __init__(self, cluster: LocalCluster, log_path: Path, src: Path):
        super().__init__(cluster, log_path)
        self.src = src.resolve()

    def start(self) -> UpstreamProcess:
        run = [
            str(self.src / BINARY), "--kubeconfig", str(self.cluster.operator_kubeconfig),
            "--metrics-bind-address", f"127.0.0.1:{self.metrics_port}",
            "--health-probe-bind-address", f"127.0.0.1:{self.health_port}",
        ]  # fmt: skip
        # LAYOUT on a tmpfs only this process sees (each destination made, then filled, in order).
        copies = [f"mkdir -p {to} && cp -r {shlex.quote(str(self.src / part))}/. {to}/" for part, to in LAYOUT.items()]
        layout = " && ".join(["mount -t tmpfs none /opt", *copies, f"exec {shlex.join(run)}"])
        env = dict(os.environ, OPERATOR_NAMESPACE=NAMESPACE, WATCH_NAMESPACE="")
        env.update({name: images.join(*images.DEFAULTS[key]) for name, key in IMAGE_ENV.items()})
        log = self.log_path.open("ab")
        # unshare execs sh, which execs the operator: proc.pid is the operator's own pid.
        self.proc = subprocess.Popen(["unshare", "--map-root-user", "--mount", "sh", "-c", layout],
                                     stdout=log, stderr=subprocess.STDOUT, env=env)  # fmt: skip
        log.close()
        return self

    def started(self, controllers: int = 5, timeout: float = 300) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                return False
            if self.log_path.read_text(errors="replace").count(STARTED) >= controllers:
                return True
            time.sleep(0.5)
        return False
