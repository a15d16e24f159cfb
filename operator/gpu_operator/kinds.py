"""One registry of the Kubernetes kinds the operator touches.

The operator's own kinds are listed here; operand kinds come from the states (each declares the kinds it
renders). Everything that needs a list of kinds (the client's paths, the watches, the start-up listing that
finds objects to prune, the RBAC the chart must grant) derives it from `registry()`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache


@dataclass(frozen=True)
class Kind:
    kind: str
    api_version: str  # "v1" or "<group>/<version>"
    plural: str
    namespaced: bool
    # Served only when an optional API is installed (ServiceMonitor: the Prometheus operator). The operator
    # renders, watches and lists it only while the API server serves it (`served`).
    optional: bool = False

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0]

    @property
    def version(self) -> str:
        return self.api_version.rpartition("/")[2]

    @property
    def resource(self) -> str:
        """"<group>/<plural>", as Kube.api_groups names a served optional kind."""
        return f"{self.group}/{self.plural}"

    @property
    def prefix(self) -> str:
        return "api/v1" if self.api_version == "v1" else f"apis/{self.api_version}"


# Operand kinds shared by many states.
SERVICE_ACCOUNT = Kind("ServiceAccount", "v1", "serviceaccounts", True)
CONFIG_MAP = Kind("ConfigMap", "v1", "configmaps", True)
SERVICE = Kind("Service", "v1", "services", True)
ROLE = Kind("Role", "rbac.authorization.k8s.io/v1", "roles", True)
ROLE_BINDING = Kind("RoleBinding", "rbac.authorization.k8s.io/v1", "rolebindings", True)
CLUSTER_ROLE = Kind("ClusterRole", "rbac.authorization.k8s.io/v1", "clusterroles", False)
CLUSTER_ROLE_BINDING = Kind("ClusterRoleBinding", "rbac.authorization.k8s.io/v1", "clusterrolebindings", False)
DAEMON_SET = Kind("DaemonSet", "apps/v1", "daemonsets", True)
RUNTIME_CLASS = Kind("RuntimeClass", "node.k8s.io/v1", "runtimeclasses", False)
SERVICE_MONITOR = Kind("ServiceMonitor", "monitoring.coreos.com/v1", "servicemonitors", True, optional=True)
# Node Feature Discovery's per-node PCI devices (read only, all namespaces): the GPU's device ID before any
# driver runs (gpu_identity.py). Served only where NFD's CRDs are installed.
NODE_FEATURE = Kind("NodeFeature", "nfd.k8s-sigs.io/v1alpha1", "nodefeatures", True, optional=True)

# What a state renders unless it says otherwise.
DEFAULT_OPERAND_KINDS = (
    SERVICE_ACCOUNT,
    CONFIG_MAP,
    SERVICE,
    ROLE,
    ROLE_BINDING,
    CLUSTER_ROLE,
    CLUSTER_ROLE_BINDING,
    DAEMON_SET,
)

# The operator's own kinds (read, watched or written by the operator itself, not rendered by a state).
BUILTIN = (
    Kind("Namespace", "v1", "namespaces", False),
    Kind("Node", "v1", "nodes", False),
    Kind("Pod", "v1", "pods", True),
    Kind("Secret", "v1", "secrets", True),  # only the driver's secretEnv and licensing Secrets, by name (get)
    Kind("Event", "v1", "events", True),
    Kind("ControllerRevision", "apps/v1", "controllerrevisions", True),
    Kind("Deployment", "apps/v1", "deployments", True),
    Kind("ReplicaSet", "apps/v1", "replicasets", True),  # read by doctor only (a refused rollout's revisions)
    Kind("StatefulSet", "apps/v1", "statefulsets", True),  # read by doctor only (whether a refused one still exists)
    Kind("Job", "batch/v1", "jobs", True),  # read by doctor only (whether a refused one still exists)
    Kind("PodDisruptionBudget", "policy/v1", "poddisruptionbudgets", True),
    Kind("CustomResourceDefinition", "apiextensions.k8s.io/v1", "customresourcedefinitions", False),
    Kind("ClusterPolicy", "nvidia.com/v1", "clusterpolicies", False),
    Kind("NVIDIADriver", "nvidia.com/v1alpha1", "nvidiadrivers", False),
    NODE_FEATURE,
)


@cache
def operand_kinds() -> tuple[Kind, ...]:
    """Every kind some state renders, in a stable order (by the first state that declares it)."""
    from .states import all_states

    seen: dict[str, Kind] = {}
    for state in all_states():
        for kind in state.kinds:
            known = seen.setdefault(kind.kind, kind)
            if known != kind:
                raise ValueError(f"state {state.name} declares {kind.kind} unlike another state: {kind} != {known}")
    return tuple(seen.values())


def registry() -> dict[str, Kind]:
    """Kind name -> Kind, for the operator's own kinds and every operand kind."""
    out = {k.kind: k for k in BUILTIN}
    for kind in operand_kinds():
        out.setdefault(kind.kind, kind)
    return out


def lookup(kind: str) -> Kind:
    try:
        return registry()[kind]
    except KeyError:
        raise KeyError(f"kind {kind} is in no state's kinds nor the operator's own (gpu_operator.kinds)") from None


def served(kind: Kind, api_groups: frozenset[str]) -> bool:
    """Whether the API server serves the kind. An optional kind needs its resource ("<group>/<plural>", as discovery
    reports it: Kube.api_groups), or its whole group assumed (`render --api-group`): a group served without the kind
    (the Prometheus operator's CRDs installed in part) is not enough, as upstream's check of the CRD by name."""
    return not kind.optional or kind.resource in api_groups or kind.group in api_groups


# What the operator does with the objects it owns: server-side apply (patch, create), watch, prune.
OWNED_VERBS = ("get", "list", "watch", "create", "patch", "update", "delete")


def operand_rbac() -> dict[tuple[str, str], tuple[bool, tuple[str, ...]]]:
    """(API group, resource) -> (namespaced, verbs): the rights the operator needs on the objects it renders."""
    return {(k.group, k.plural): (k.namespaced, OWNED_VERBS) for k in operand_kinds()}


# The operand ClusterRoles and their ClusterRoleBindings (each binding is named as its role), every state and
# setting. The operator's writes to ClusterRoles and ClusterRoleBindings are limited to these names, so no other
# (cluster-admin's, say) is in its reach. tests/test_kinds.py renders every scenario against this list.
OPERAND_CLUSTER_ROLES = (
    "nvidia-dcgm-exporter-read-pods",
    "nvidia-device-plugin",
    "nvidia-device-plugin-mps-control-daemon",
    "nvidia-driver",
    "nvidia-gpu-feature-discovery",
    "nvidia-mig-manager",
    "nvidia-node-status-exporter",
    "nvidia-operator-validator",
)
# The verbs a rule can limit to names (a create by POST and a list or watch carry none): the apply (a PATCH, also
# when it creates), an update, the prune's delete.
NAMED_VERBS = ("patch", "update", "delete")


def operand_names() -> dict[tuple[str, str], tuple[str, ...]]:
    """(API group, resource) -> the names the operator's NAMED_VERBS are limited to. Not RuntimeClasses:
    operator.runtimeClass names one."""
    return {(k.group, k.plural): OPERAND_CLUSTER_ROLES for k in (CLUSTER_ROLE, CLUSTER_ROLE_BINDING)}
