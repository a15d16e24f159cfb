"""The NVIDIADriver API (nvidia.com/v1alpha1): one driver configuration for the GPU nodes it selects.

Field names and defaults are upstream v26.7's (api/nvidia/v1alpha1/nvidiadriver_types.go). A ClusterPolicy with
`driver.useNvidiaDriverCRD: true` hands the driver to these resources (nvidiadriver.py decides which nodes each
one gets; states/driver.py renders its per-pool DaemonSets).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel
from pydantic_core import InitErrorDetails, PydanticCustomError

from .api import (
    Annotations,
    Condition,
    DriverManagerSpec,
    DriverUpgradePolicySpec,
    EnvList,
    KubeObject,
    Labels,
    LivenessProbeSpec,
    Model,
    PodDeletionSpec,
    PodSecurityContext,
    ProbeSpec,
    RDMASpec,
    ResourceRequirements,
    SidecarSpec,
    State,
    Toleration,
    problems,
)

GROUP = "nvidia.com"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "NVIDIADriver"
PLURAL = "nvidiadrivers"
DEFAULT_IMAGE = "nvcr.io/nvidia/driver"
# Upstream's operator-managed node label that routes each GPU node to one NVIDIADriver (internal/consts).
OWNER_LABEL = "nvidia.com/gpu-operator.driver.owner"

DriverType = Literal["gpu", "vgpu", "vgpu-host-manager"]


class NameRef(Model):
    name: str = ""


class NodeSelectorRequirement(KubeObject):
    key: str
    operator: str
    values: list[str] | None = None


class NodeSelectorTerm(KubeObject):
    match_expressions: list[NodeSelectorRequirement] | None = None
    match_fields: list[NodeSelectorRequirement] | None = None


class NodeSelector(KubeObject):
    node_selector_terms: list[NodeSelectorTerm]


class PreferredSchedulingTerm(KubeObject):
    weight: int = Field(ge=1, le=100)
    preference: NodeSelectorTerm


class NodeAffinity(KubeObject):
    """corev1.NodeAffinity, typed as upstream's CRD types it (a malformed one is refused at admission)."""

    required_during_scheduling_ignored_during_execution: NodeSelector | None = None
    preferred_during_scheduling_ignored_during_execution: list[PreferredSchedulingTerm] | None = None


class NVDLicensingConfig(Model):
    secret_name: str = ""
    name: str = ""  # deprecated upstream in favour of secretName
    nls_enabled: bool | None = None


class NVDUpgradePolicy(DriverUpgradePolicySpec):
    """As the ClusterPolicy's, with upstream's NVIDIADriver defaults (GetUpgradePolicyWithDefaults): autoUpgrade
    true, and podDeletion unset (or null) is its defaults, not off."""

    auto_upgrade: bool = True
    pod_deletion: PodDeletionSpec = PodDeletionSpec()

    @field_validator("pod_deletion", mode="before")
    @classmethod
    def _null_is_default(cls, value: Any) -> Any:
        return PodDeletionSpec() if value is None else value


_SPEC_RULES: Any = [
    {
        "rule": "has(self.default) && self.default ? !has(self.nodeSelector) || size(self.nodeSelector) == 0 : true",
        "message": "default NVIDIADriver must not use nodeSelector",
    },
    {
        "rule": f"!has(self.nodeSelector) || !('{OWNER_LABEL}' in self.nodeSelector)",
        "message": f"nodeSelector must not use the operator's label {OWNER_LABEL}",
    },
]
_IMMUTABLE = (
    "is an immutable field. Please create a new NvidiaDriver resource instead when you want to change this setting."
)


# The fields whose defaults the API server applies, as upstream's CRD does (crd.py leaves the others' out):
# driverType is then in every stored object, so its `self == oldSelf` rule (which runs only when both the old and
# the new object have the field) also refuses an update that adds or removes it; `default` fills the Default column.
SERVER_DEFAULTS = ("default", "driver_type")


def _immutable(field: str) -> dict[str, Any]:
    return {"x-kubernetes-validations": [{"rule": "self == oldSelf", "message": f"{field} {_IMMUTABLE}"}]}



class NVIDIADriverSpec(Model):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        strict=True,
        json_schema_extra={"x-kubernetes-validations": _SPEC_RULES},
    )

    default: bool = False
    driver_type: DriverType = Field(
        default="gpu",
        json_schema_extra=_immutable("driverType"),
    )
    use_precompiled: bool | None = Field(
        default=None,
        json_schema_extra=_immutable("usePrecompiled"),
    )
    use_open_kernel_modules: bool | None = None  # deprecated upstream, not honoured
    kernel_module_type: Literal["auto", "open", "proprietary"] = "auto"
    startup_probe: LivenessProbeSpec | None = None
    liveness_probe: LivenessProbeSpec | None = None
    readiness_probe: ProbeSpec | None = None
    rdma: RDMASpec | None = None
    gds: SidecarSpec | None = None
    gdrcopy: SidecarSpec | None = None
    repository: str = ""
    image: str = DEFAULT_IMAGE
    version: str = ""
    # No enum upstream: "" is the default (IfNotPresent), as in ImageSpec.
    image_pull_policy: Literal["Always", "IfNotPresent", "Never", ""] | None = None
    image_pull_secrets: list[str] = []
    manager: DriverManagerSpec = DriverManagerSpec()
    resources: ResourceRequirements | None = None
    args: list[str] = []
    env: EnvList = []
    repo_config: NameRef | None = None
    cert_config: NameRef | None = None
    licensing_config: NVDLicensingConfig | None = None
    virtual_topology_config: NameRef | None = None
    kernel_module_config: NameRef | None = None
    secret_env: str = ""
    upgrade_policy: NVDUpgradePolicy | None = None
    node_selector: dict[str, str] = {}
    node_affinity: NodeAffinity | None = None
    labels: Labels = {}
    annotations: Annotations = {}
    tolerations: list[Toleration] = []
    priority_class_name: str = ""
    pod_security_context: PodSecurityContext | None = None
    host_network: bool | None = None

    @model_validator(mode="after")
    def _spec_rules(self) -> NVIDIADriverSpec:
        """_SPEC_RULES, which the API server enforces, for what does not pass it (render's documents; upstream's
        ValidateNodeSelector refuses both in the controller too)."""
        if self.default and self.node_selector:
            message = _SPEC_RULES[0]["message"]
        elif OWNER_LABEL in self.node_selector:
            message = _SPEC_RULES[1]["message"]
        else:
            return self
        error = InitErrorDetails(type=PydanticCustomError("spec_rule", message), loc=("nodeSelector",),
                                 input=self.node_selector)  # fmt: skip
        raise ValidationError.from_exception_data(type(self).__name__, [error])

    @property
    def precompiled(self) -> bool:
        return bool(self.use_precompiled)


# The ClusterPolicy's states (one Literal: typing treats Literals of the same values as one, in either order).
NVDState = State


class NVIDIADriverStatus(Model):
    state: NVDState | None = None
    namespace: str | None = None
    observed_generation: int | None = None
    conditions: list[Condition] = []
    # Beyond upstream: the GPU nodes this resource drives, and the ones it conflicts on.
    nodes: int = 0
    conflicting_nodes: list[str] = []


def parse_spec(raw: dict[str, Any] | None) -> NVIDIADriverSpec:
    """Validate an NVIDIADriver spec; ValueError with `spec.<path>: <rule>` lines."""
    try:
        return NVIDIADriverSpec.model_validate({} if raw is None else raw, by_alias=True, by_name=False)
    except ValidationError as exc:
        raise ValueError("; ".join(problems(NVIDIADriverSpec, exc))) from None
