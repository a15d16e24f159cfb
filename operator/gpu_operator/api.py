"""The ClusterPolicy API (nvidia.com/v1): spec and status models with upstream field names and defaults.

Python attributes are snake_case; the wire names (aliases) are upstream's camelCase, so an existing
ClusterPolicy YAML validates unchanged. Every field of upstream v26.7's ClusterPolicy spec is modelled; the ones
this operator does not act on are named by `coverage.unsupported_fields`. A field upstream does not have either is
an error naming its path (as upstream's CRD rejects it), unless the caller allows unknown fields: then it is
dropped and named by `unknown_fields`.
"""

from __future__ import annotations

import copy
import difflib
import re
import types
from decimal import Decimal
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    Strict,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic_core import InitErrorDetails, PydanticCustomError

GROUP = "nvidia.com"
VERSION = "v1"
PLURAL = "clusterpolicies"
KIND = "ClusterPolicy"

_PERCENT_OR_INT = re.compile(r"^[0-9]+%?$")
_MESSAGE = 'must be a non-negative integer or a percentage like "25%"'


def _check_int_or_percent(v: int | str) -> int | str:
    if isinstance(v, bool) or (v < 0 if isinstance(v, int) else not _PERCENT_OR_INT.match(v)):
        raise ValueError(_MESSAGE)
    return v


def _int_or_string(message: str) -> BeforeValidator:
    """`message` for a value of neither type: one line naming the rule, not one per union branch."""

    def check(v: Any) -> Any:
        if isinstance(v, bool) or not isinstance(v, int | str):
            raise ValueError(message)
        return v

    return BeforeValidator(check)


def _int_or_string_schema(pattern: str, message: str) -> WithJsonSchema:
    """The CRD's int-or-string with a CEL rule: a non-negative integer or a string `pattern` matches."""
    return WithJsonSchema(
        {
            "x-kubernetes-int-or-string": True,
            "x-kubernetes-validations": [
                {"rule": f"type(self) == int ? self >= 0 : self.matches('{pattern}')", "message": message}
            ],
        }
    )


IntOrPercent = Annotated[
    # Strict int: a YAML bool (`true`) must not pass as 1, as the API server's int-or-string would reject it.
    Annotated[int, Strict()] | str,
    _int_or_string(_MESSAGE),
    AfterValidator(_check_int_or_percent),
    _int_or_string_schema(_PERCENT_OR_INT.pattern, _MESSAGE),
]
# The DaemonSets' maxUnavailable, a plain string upstream: "" there means unset (the default), as here.
RollingMaxUnavailable = Annotated[
    Annotated[int, Strict()] | str,
    _int_or_string(_MESSAGE),
    AfterValidator(_check_int_or_percent),
    _int_or_string_schema("^([0-9]+%?)?$", _MESSAGE + ' ("": the default)'),
]
NonNegInt = Annotated[int, Field(ge=0)]
# A Prometheus Duration (promv1.Duration): upstream's CRD pattern verbatim, as monitoring.coreos.com's own CRD has it.
PromDuration = Annotated[
    str, Field(pattern=r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$")
]
PositiveInt = Annotated[int, Field(ge=1)]
# Upstream's int32 fields (`format: int32` in its CRD), bounded as the Kubernetes fields they are rendered into.
INT32_MAX = 2**31 - 1
Int32 = Annotated[int, Field(ge=-INT32_MAX - 1, le=INT32_MAX, json_schema_extra={"format": "int32"})]
NonNegInt32 = Annotated[int, Field(ge=0, le=INT32_MAX, json_schema_extra={"format": "int32"})]
PositiveInt32 = Annotated[int, Field(ge=1, le=INT32_MAX, json_schema_extra={"format": "int32"})]
# A label value ("" included): Kubernetes' own rule for one.
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
LabelValue = Annotated[str, Field(max_length=63, pattern=LABEL_VALUE)]
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_QUALIFIED_NAME = ('must be a name such as "team" or "example.com/team": at most 63 letters, digits, "-", "_" or '
                   '".", a letter or digit at each end, after an optional lowercase DNS subdomain and "/"')


def is_label_value(value: str) -> bool:
    """Kubernetes' rule for a label value ("" included)."""
    return len(value) <= 63 and re.fullmatch(LABEL_VALUE, value) is not None


def _is_qualified_name(key: str) -> bool:
    """Kubernetes' IsQualifiedName, the rule for a label key (and a toleration's key)."""
    prefix, slash, name = key.rpartition("/")
    if slash and (not prefix or len(prefix) > 253 or not _DNS_SUBDOMAIN.fullmatch(prefix)):
        return False
    return bool(name) and is_label_value(name)


def _label_keys(labels: dict[str, str]) -> dict[str, str]:
    if bad := next((k for k in labels if not _is_qualified_name(k)), None):
        raise ValueError(f'label key "{bad}" {_QUALIFIED_NAME}')
    return labels


def _annotation_keys(annotations: dict[str, str]) -> dict[str, str]:
    if bad := next((k for k in annotations if not _is_qualified_name(k.lower())), None):
        raise ValueError(f'annotation key "{bad}" {_QUALIFIED_NAME.replace("lowercase ", "")}')
    return annotations


# Labels and annotations of the operand DaemonSets and pods, with Kubernetes' rules (ValidateLabels,
# ValidateAnnotations' keys): an object carrying others is refused.
Labels = Annotated[dict[str, LabelValue], AfterValidator(_label_keys)]
Annotations = Annotated[dict[str, str], AfterValidator(_annotation_keys)]
# A resource quantity (resource.Quantity): upstream's CRD pattern verbatim, so `512MB` or `1 Gi` is refused here as at
# `kubectl apply`, not when the operator applies a DaemonSet carrying it.
QUANTITY = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)


_SUFFIXES: dict[str, int | Decimal] = {
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
    "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"),
    "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
}  # fmt: skip


def _amount(v: int | str) -> Decimal:
    """A quantity the pattern admits, as a number ("1E" is exa, "1E3" an exponent)."""
    text = str(v)
    for suffix in (text[-2:], text[-1:]):
        if suffix in _SUFFIXES:
            return Decimal(text[: -len(suffix)]) * _SUFFIXES[suffix]
    return Decimal(text)


_QUANTITY_MESSAGE = "must be a quantity such as 2, 500m or 1Gi"


def _check_quantity(v: int | str) -> int | str:
    if isinstance(v, str) and not re.fullmatch(QUANTITY, v):  # fullmatch: `$` would pass a trailing newline
        raise ValueError(_QUANTITY_MESSAGE)
    if _amount(v) < 0:  # the pattern admits a sign; a pod's resources refuse it
        raise ValueError("must not be negative")
    return v


Quantity = Annotated[
    int | str,
    _int_or_string(_QUANTITY_MESSAGE),
    AfterValidator(_check_quantity),
    WithJsonSchema(
        {"anyOf": [{"type": "integer"}, {"type": "string"}], "pattern": QUANTITY, "x-kubernetes-int-or-string": True}
    ),
]


def _empty_is_default(cls: type[BaseModel], value: Any, info: ValidationInfo) -> Any:
    """An explicit "" means the field's default, as upstream reads these strings (the CRD admits "")."""
    if value == "" and info.field_name:
        return cls.model_fields[info.field_name].default
    return value


class Model(BaseModel):
    """Closed model: unknown fields are errors, as under upstream's CRD (whose schema preserves none)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", strict=True)


class Section(Model):
    """A section of the spec: coverage.py compares its fields one by one."""


class KubeObject(Model):
    """A Kubernetes API type embedded in the spec (a toleration, a security context): passed on whole, so
    coverage.py treats it as one field; `as_dict` is its wire form."""

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True)


class Toleration(KubeObject):
    """core/v1 Toleration, with the rules of Kubernetes' ValidateTolerations: a DaemonSet carrying one it refuses
    cannot be applied. Lt and Gt need the TaintTolerationComparisonOperators feature gate (alpha)."""

    key: str | None = None
    operator: Literal["", "Equal", "Exists", "Lt", "Gt"] | None = None
    value: str | None = None
    effect: Literal["", "NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = None

    @model_validator(mode="after")
    def _valid(self) -> Toleration:
        key, operator, value = self.key or "", self.operator or "Equal", self.value or ""
        problems: list[tuple[str, str]] = []
        if key and not _is_qualified_name(key):
            problems.append(("key", _QUALIFIED_NAME))
        if not key and operator != "Exists":
            problems.append(("operator", "must be Exists when key is empty (which matches every taint)"))
        if operator == "Equal" and not is_label_value(value):
            problems.append(("value", "must be a label value: at most 63 letters, digits, \"-\", \"_\" or \".\", "
                                      "a letter or digit at each end"))
        if operator == "Exists" and value:
            problems.append(("value", "must be empty when operator is Exists"))
        if operator in ("Lt", "Gt") and not re.fullmatch(r"0|-?[1-9][0-9]*", value):
            problems.append(("value", f"must be an integer such as 5 with operator {operator}"))
        if self.toleration_seconds is not None and self.effect != "NoExecute":
            problems.append(("effect", "must be NoExecute when tolerationSeconds is set"))
        if not problems:
            return self
        errors = [InitErrorDetails(type=PydanticCustomError("toleration", message), loc=(field,), input=self.as_dict())
                  for field, message in problems]  # fmt: skip
        raise ValidationError.from_exception_data(type(self).__name__, errors)  # each field's path


RelabelAction = Literal[
    "replace", "Replace", "keep", "Keep", "drop", "Drop", "hashmod", "HashMod", "labelmap", "LabelMap",
    "labeldrop", "LabelDrop", "labelkeep", "LabelKeep", "lowercase", "Lowercase", "uppercase", "Uppercase",
    "keepequal", "KeepEqual", "dropequal", "DropEqual",
]  # fmt: skip


class RelabelConfig(KubeObject):
    """A Prometheus-operator RelabelConfig (unset action means `replace`)."""

    source_labels: list[str] | None = None
    separator: str | None = None
    target_label: str | None = None
    regex: str | None = None
    modulus: NonNegInt | None = None
    replacement: str | None = None
    action: RelabelAction | None = None


class ProfileRef(Model):
    type: str
    localhost_profile: str | None = None


class SELinuxOptions(Model):
    user: str | None = None
    role: str | None = None
    type: str | None = None
    level: str | None = None


class Sysctl(Model):
    name: str
    value: str


class WindowsOptions(Model):
    gmsa_credential_spec_name: str | None = None
    gmsa_credential_spec: str | None = None
    run_as_user_name: str | None = None
    host_process: bool | None = None


class PodSecurityContext(KubeObject):
    """core/v1 PodSecurityContext."""

    se_linux_options: SELinuxOptions | None = Field(default=None, alias="seLinuxOptions")
    windows_options: WindowsOptions | None = None
    run_as_user: int | None = None
    run_as_group: int | None = None
    run_as_non_root: bool | None = None
    supplemental_groups: list[int] | None = None
    supplemental_groups_policy: str | None = None
    fs_group: int | None = None
    sysctls: list[Sysctl] | None = None
    fs_group_change_policy: str | None = None
    seccomp_profile: ProfileRef | None = None
    app_armor_profile: ProfileRef | None = None
    se_linux_change_policy: str | None = Field(default=None, alias="seLinuxChangePolicy")


class KataArtifacts(Model):
    url: str | None = None
    pull_secret: str | None = None


class KataRuntimeClass(KubeObject):
    name: str
    node_selector: dict[str, str] | None = None
    artifacts: KataArtifacts | None = None


class EnvVar(Model):
    name: str = Field(min_length=1)
    value: str = ""


def _last_wins(env: list[EnvVar]) -> list[EnvVar]:
    """One var per name: the last value, at the first one's place, as upstream's setContainerEnv applies a list
    (server-side apply refuses a container with two env entries of one name)."""
    return list({e.name: e for e in env}.values())


EnvList = Annotated[list[EnvVar], AfterValidator(_last_wins)]


class ResourceRequirements(Model):
    limits: dict[str, Quantity] = {}
    requests: dict[str, Quantity] = {}

    @model_validator(mode="after")
    def _requests_within_limits(self) -> ResourceRequirements:
        for name, request in self.requests.items():  # as pod validation, which refuses the DaemonSet otherwise
            if name in self.limits and _amount(request) > _amount(self.limits[name]):
                message = f"must be at most its limit ({self.limits[name]})"
                error = InitErrorDetails(type=PydanticCustomError("request_above_limit", message),
                                         loc=("requests", name), input=request)  # fmt: skip
                raise ValidationError.from_exception_data(type(self).__name__, [error])  # the field's path
        return self


class ImageSpec(Section):
    """An image and how to pull it."""

    repository: str | None = None
    image: str | None = None
    version: str | None = None
    # No enum upstream: "" is the default (IfNotPresent), as ImagePullPolicy("") reads it.
    image_pull_policy: Literal["Always", "IfNotPresent", "Never", ""] | None = None
    image_pull_secrets: list[str] = []

    _empty_pull_policy = field_validator("image_pull_policy", mode="before")(_empty_is_default)

    def _image_read(self) -> bool:
        return True

    @model_validator(mode="after")
    def _image_fields_together(self) -> ImageSpec:
        given = [f for f in ("repository", "image", "version") if getattr(self, f)]
        if given and self._image_read() and given != ["image"] and len(given) != 3:
            missing = [f for f in ("repository", "image", "version") if f not in given]
            raise ValueError(
                f"image: set repository, image and version together (or image alone); missing {', '.join(missing)}"
            )
        return self


class ComponentSpec(ImageSpec):
    """Fields shared by most component sections."""

    enabled: bool = True
    resources: ResourceRequirements | None = None
    args: list[str] = []
    env: EnvList = []
    host_network: bool = False


class DisabledComponentSpec(ComponentSpec):
    enabled: bool = False


class SidecarSpec(ImageSpec):
    """A driver sidecar (GDS, GDRCopy): upstream gives it no resources or host network."""

    enabled: bool = False
    args: list[str] = []
    env: EnvList = []

    def _image_read(self) -> bool:
        """Only an enabled sidecar's image is read (upstream's getGDSSpec/getGDRCopySpec)."""
        return self.enabled


class ServiceMonitorSpec(Section):
    enabled: bool = False
    interval: PromDuration | None = None  # unset: Prometheus' global scrape interval, as upstream
    scrape_timeout: PromDuration | None = None
    honor_labels: bool = False
    additional_labels: dict[str, str] = {}
    relabelings: list[RelabelConfig] = []


class OperatorServiceMonitorSpec(ServiceMonitorSpec):
    # Upstream always creates the operator's ServiceMonitor where the API is served; `enabled: false` is honoured.
    enabled: bool = True


class OperatorMetricsSpec(Section):
    service_monitor: OperatorServiceMonitorSpec = OperatorServiceMonitorSpec()


class InitContainerSpec(Section):
    """Deprecated upstream: the image of a CUDA base init container shared by all components."""

    repository: str | None = None
    image: str | None = None
    version: str | None = None
    image_pull_policy: Literal["Always", "IfNotPresent", "Never", ""] | None = None
    image_pull_secrets: list[str] = []

    _empty_pull_policy = field_validator("image_pull_policy", mode="before")(_empty_is_default)


class OperatorSpec(Section):
    runtime_class: str = "nvidia"
    default_runtime: Literal["containerd", "crio", "docker"] = "containerd"
    init_container: InitContainerSpec = InitContainerSpec()
    labels: dict[str, str] = {}
    annotations: dict[str, str] = {}
    metrics: OperatorMetricsSpec = OperatorMetricsSpec()
    use_ocp_driver_toolkit: bool = Field(default=False, alias="use_ocp_driver_toolkit")

    _empty = field_validator("runtime_class", mode="before")(_empty_is_default)


class RollingUpdateSpec(Section):
    max_unavailable: RollingMaxUnavailable = "1"

    _empty = field_validator("max_unavailable", mode="before")(_empty_is_default)


_ZERO = re.compile(r"^0+%?$")
_ZERO_MESSAGE = ("rollingUpdate.maxUnavailable may not be 0 or 0% with updateStrategy RollingUpdate: the operand "
                 "DaemonSets have maxSurge 0, and the API server refuses a DaemonSet whose maxUnavailable and "
                 "maxSurge are both 0")
# Refused at admission, as the API server would refuse the DaemonSets; OnDelete renders no rollingUpdate.
_ROLLING_NOT_ZERO: Any = {
    "rule": "!has(self.rollingUpdate) || !has(self.rollingUpdate.maxUnavailable) || "
    "(has(self.updateStrategy) && self.updateStrategy == 'OnDelete') || "
    "(type(self.rollingUpdate.maxUnavailable) == int ? self.rollingUpdate.maxUnavailable != 0 : "
    f"!self.rollingUpdate.maxUnavailable.matches('{_ZERO.pattern}'))",
    "message": _ZERO_MESSAGE,
    "fieldPath": ".rollingUpdate.maxUnavailable",
}
# A percentage above 100, which the API server refuses in a DaemonSet's rollingUpdate (an integer has no bound).
_OVER_100 = re.compile(r"^0*([1-9][0-9]{3,}|[2-9][0-9]{2}|1[1-9][0-9]|10[1-9])%$")
_OVER_100_MESSAGE = ("rollingUpdate.maxUnavailable may not be above 100% with updateStrategy RollingUpdate: the API "
                     "server refuses an operand DaemonSet with more than 100%")
_ROLLING_AT_MOST_100: Any = {
    "rule": "!has(self.rollingUpdate) || !has(self.rollingUpdate.maxUnavailable) || "
    "(has(self.updateStrategy) && self.updateStrategy == 'OnDelete') || "
    "type(self.rollingUpdate.maxUnavailable) == int || "
    f"!self.rollingUpdate.maxUnavailable.matches('{_OVER_100.pattern}')",
    "message": _OVER_100_MESSAGE,
    "fieldPath": ".rollingUpdate.maxUnavailable",
}


class DaemonsetsSpec(Section):
    model_config = ConfigDict(
        **Model.model_config,
        json_schema_extra={"x-kubernetes-validations": [_ROLLING_NOT_ZERO, _ROLLING_AT_MOST_100]},
    )

    labels: Labels = {}
    annotations: Annotations = {}
    tolerations: list[Toleration] = []
    priority_class_name: str = "system-node-critical"
    update_strategy: Literal["RollingUpdate", "OnDelete"] = "RollingUpdate"
    rolling_update: RollingUpdateSpec = RollingUpdateSpec()
    pod_security_context: PodSecurityContext | None = None

    _empty = field_validator("priority_class_name", mode="before")(_empty_is_default)

    @model_validator(mode="after")
    def _rolling_max_unavailable(self) -> DaemonsetsSpec:
        """_ROLLING_NOT_ZERO and _ROLLING_AT_MOST_100 again, for specs the API server did not check (render's files)."""
        value = self.rolling_update.max_unavailable
        if self.update_strategy != "RollingUpdate":
            return self
        if value == 0 or (isinstance(value, str) and _ZERO.match(value)):
            kind, message = "rolling_not_zero", _ZERO_MESSAGE
        elif isinstance(value, str) and _OVER_100.match(value):
            kind, message = "rolling_at_most_100", _OVER_100_MESSAGE
        else:
            return self
        error = InitErrorDetails(type=PydanticCustomError(kind, message), loc=("rollingUpdate", "maxUnavailable"),
                                 input=value)  # fmt: skip
        raise ValidationError.from_exception_data(type(self).__name__, [error])  # the field's path


class PodDeletionSpec(Section):
    force: bool = False
    timeout_seconds: NonNegInt = 300
    delete_empty_dir: bool = False


class WaitForCompletionSpec(Section):
    pod_selector: str = ""
    timeout_seconds: NonNegInt = 0


class DrainSpec(Section):
    enable: bool = False
    force: bool = False
    pod_selector: str = ""
    timeout_seconds: NonNegInt = 300
    delete_empty_dir: bool = False


class DriverUpgradePolicySpec(Section):
    auto_upgrade: bool = False
    max_parallel_upgrades: NonNegInt = 1
    max_unavailable: IntOrPercent = "25%"
    pod_deletion: PodDeletionSpec | None = None
    wait_for_completion: WaitForCompletionSpec = WaitForCompletionSpec()
    drain: DrainSpec = DrainSpec()


class RDMASpec(Section):
    enabled: bool = False
    use_host_mofed: bool = False


class ProbeSpec(Model):
    """Upstream's ContainerProbeSpec: int32 fields, all but initialDelaySeconds with a minimum of 1."""

    initial_delay_seconds: NonNegInt32 | None = None
    timeout_seconds: PositiveInt32 | None = None
    period_seconds: PositiveInt32 | None = None
    success_threshold: PositiveInt32 | None = None
    failure_threshold: PositiveInt32 | None = None


class LivenessProbeSpec(ProbeSpec):
    """A startup or liveness probe: pod validation refuses a successThreshold other than 1 (upstream's field doc:
    "Must be 1 for liveness and startup"), so every apply of the driver DaemonSet would fail."""

    @field_validator("success_threshold")
    @classmethod
    def _one(cls, v: int | None) -> int | None:
        if v not in (None, 1):
            raise ValueError("must be 1 for startup and liveness probes")
        return v


class ConfigMapRef(Section):
    name: str = ""


class RepoConfigSpec(Section):
    config_map_name: str = ""


class LicensingConfigSpec(Section):
    config_map_name: str = ""  # deprecated upstream in favour of secretName
    secret_name: str = ""
    nls_enabled: bool = False  # upstream's ClusterPolicy: unset is off (its NVIDIADriver: on)


class VirtualTopologySpec(Section):
    config: str = ""


class DriverManagerSpec(ImageSpec):
    env: EnvList = []


class DriverSpec(ComponentSpec):
    use_precompiled: bool = False
    use_open_kernel_modules: bool = False  # deprecated upstream, not honoured there: kernelModuleType replaces it
    kernel_module_type: Literal["auto", "open", "proprietary"] = "auto"
    rdma: RDMASpec = RDMASpec()
    manager: DriverManagerSpec = DriverManagerSpec()
    repo_config: RepoConfigSpec = RepoConfigSpec()
    cert_config: ConfigMapRef = ConfigMapRef()
    licensing_config: LicensingConfigSpec = LicensingConfigSpec()
    virtual_topology: VirtualTopologySpec = VirtualTopologySpec()
    kernel_module_config: ConfigMapRef = ConfigMapRef()
    secret_env: str = ""
    startup_probe: LivenessProbeSpec | None = None
    liveness_probe: LivenessProbeSpec | None = None
    readiness_probe: ProbeSpec | None = None
    use_nvidia_driver_crd: bool = Field(default=False, alias="useNvidiaDriverCRD")
    upgrade_policy: DriverUpgradePolicySpec = DriverUpgradePolicySpec()


class ToolkitSpec(ComponentSpec):
    install_dir: str = "/usr/local/nvidia"

    _empty = field_validator("install_dir", mode="before")(_empty_is_default)


class DevicePluginConfig(Section):
    name: str = ""
    default: str = ""


class MPSSpec(Section):
    root: str = "/run/nvidia/mps"

    _empty = field_validator("root", mode="before")(_empty_is_default)


class DevicePluginSpec(ComponentSpec):
    config: DevicePluginConfig = DevicePluginConfig()
    mps: MPSSpec = MPSSpec()


class DCGMSpec(ComponentSpec):
    enabled: bool = True  # upstream: unset is on (the chart writes false)
    # Deprecated upstream and bound by nothing (coverage.py): any int32, as upstream's CRD (0 was its "default").
    host_port: Int32 = 5555


class ServiceSpec(Section):
    # "" is the default, as TransformDCGMExporterService skips an empty type.
    type: Literal["ClusterIP", "NodePort", "LoadBalancer", ""] = "ClusterIP"
    internal_traffic_policy: Literal["Cluster", "Local"] | None = None

    _empty_type = field_validator("type", mode="before")(_empty_is_default)


class HPCJobMappingSpec(Section):
    enabled: bool = False
    directory: str = ""


class DCGMExporterSpec(ComponentSpec):
    annotations: dict[str, str] = {}
    config: ConfigMapRef = ConfigMapRef()
    service_monitor: ServiceMonitorSpec = ServiceMonitorSpec()
    service: ServiceSpec = ServiceSpec()
    host_pid: bool = Field(default=False, alias="hostPID")
    hpc_job_mapping: HPCJobMappingSpec = HPCJobMappingSpec()
    enable_pod_labels: bool = False
    enable_pod_uid: bool = Field(default=False, alias="enablePodUID")
    pod_label_allowlist_regex: list[str] = []


class GFDSpec(ComponentSpec):
    pass


class MIGSpec(Section):
    # Unset: no MIG_STRATEGY, the plugin and GFD decide (none, or their config's flags.migStrategy), as upstream.
    strategy: Literal["none", "single", "mixed"] | None = None


class MIGPartedConfig(Section):
    name: str = ""  # unset: the default ConfigMap, as mig-manager's fallback (set, even to it: its config)
    # Seeded as nodes' nvidia.com/mig.config label, so a label value (upstream's CRD: all-disabled or "" only).
    default: LabelValue = "all-disabled"


class MIGManagerSpec(ComponentSpec):
    config: MIGPartedConfig = MIGPartedConfig()
    gpu_clients_config: ConfigMapRef = ConfigMapRef()

    @property
    def default_layout(self) -> str:
        """The layout seeded on MIG-capable nodes without one: none without a `config` section, as upstream (its
        `config` is a pointer with no CRD default; only `config.default` has one)."""
        return self.config.default if "config" in self.model_fields_set else ""


class NodeStatusExporterSpec(ComponentSpec):
    enabled: bool = False


class ValidatorCheckSpec(Section):
    env: EnvList = []


class ValidatorSpec(ImageSpec):
    """ComponentSpec's fields but `enabled`, which upstream's ValidatorSpec lacks: the validator always runs (the
    other operands wait for the markers it writes)."""

    resources: ResourceRequirements | None = None
    args: list[str] = []
    env: EnvList = []
    host_network: bool = False
    driver: ValidatorCheckSpec = ValidatorCheckSpec()
    toolkit: ValidatorCheckSpec = ValidatorCheckSpec()
    cuda: ValidatorCheckSpec = ValidatorCheckSpec()
    plugin: ValidatorCheckSpec = ValidatorCheckSpec()
    vfio_pci: ValidatorCheckSpec = Field(default=ValidatorCheckSpec(), alias="vfioPCI")
    vgpu_manager: ValidatorCheckSpec = ValidatorCheckSpec()
    vgpu_devices: ValidatorCheckSpec = ValidatorCheckSpec()


class SandboxWorkloadsSpec(Section):
    enabled: bool = False
    default_workload: Literal["container", "vm-passthrough", "vm-vgpu"] = "container"
    mode: Literal["kubevirt", "kata"] = "kubevirt"


class VFIOManagerSpec(DisabledComponentSpec):
    driver_manager: DriverManagerSpec = DriverManagerSpec()


class VGPUManagerSpec(DisabledComponentSpec):
    driver_manager: DriverManagerSpec = DriverManagerSpec()
    kernel_module_config: ConfigMapRef = ConfigMapRef()


class VGPUDeviceManagerConfig(Section):
    name: str = ""
    default: str = "default"


class VGPUDeviceManagerSpec(DisabledComponentSpec):
    config: VGPUDeviceManagerConfig = VGPUDeviceManagerConfig()


class CCManagerSpec(DisabledComponentSpec):
    default_mode: Literal["on", "off", "devtools"] | None = None


class KataConfigSpec(Section):
    artifacts_dir: str = "/opt/nvidia-gpu-operator/artifacts/runtimeclasses"
    runtime_classes: list[KataRuntimeClass] = []


class KataManagerSpec(DisabledComponentSpec):
    """Deprecated upstream: not honoured there any more."""

    config: KataConfigSpec = KataConfigSpec()


class CDISpec(Section):
    enabled: bool = True  # upstream v26.7's default (CDISpec.IsEnabled: unset means on)
    default: bool = False
    nri_plugin_enabled: bool = False


class PSASpec(Section):
    enabled: bool = False


class PSPSpec(Section):
    """Deprecated upstream: Pod Security Policies no longer exist in Kubernetes."""

    enabled: bool = False


class HostPathsSpec(Section):
    root_fs: str = Field(default="/", alias="rootFS")
    driver_install_dir: str = "/run/nvidia/driver"
    kubelet_root_dir: str = "/var/lib/kubelet"

    _empty = field_validator("root_fs", "driver_install_dir", mode="before")(_empty_is_default)


class ClusterPolicySpec(Section):
    operator: OperatorSpec = OperatorSpec()
    daemonsets: DaemonsetsSpec = DaemonsetsSpec()
    driver: DriverSpec = DriverSpec()
    toolkit: ToolkitSpec = ToolkitSpec()
    device_plugin: DevicePluginSpec = DevicePluginSpec()
    dcgm: DCGMSpec = DCGMSpec()
    dcgm_exporter: DCGMExporterSpec = DCGMExporterSpec()
    gfd: GFDSpec = GFDSpec()
    mig: MIGSpec = MIGSpec()
    mig_manager: MIGManagerSpec = MIGManagerSpec()
    node_status_exporter: NodeStatusExporterSpec = NodeStatusExporterSpec()
    validator: ValidatorSpec = ValidatorSpec()
    sandbox_workloads: SandboxWorkloadsSpec = SandboxWorkloadsSpec()
    vfio_manager: VFIOManagerSpec = VFIOManagerSpec()
    vgpu_manager: VGPUManagerSpec = VGPUManagerSpec()
    vgpu_device_manager: VGPUDeviceManagerSpec = VGPUDeviceManagerSpec()
    sandbox_device_plugin: DisabledComponentSpec = DisabledComponentSpec()
    kata_sandbox_device_plugin: DisabledComponentSpec = DisabledComponentSpec()
    kata_manager: KataManagerSpec = KataManagerSpec()
    cc_manager: CCManagerSpec = CCManagerSpec()
    cdi: CDISpec = CDISpec()
    gds: SidecarSpec = SidecarSpec()
    gdrcopy: SidecarSpec = SidecarSpec()
    psa: PSASpec = PSASpec()
    psp: PSPSpec = PSPSpec()
    host_paths: HostPathsSpec = HostPathsSpec()

    # Paths of unknown fields dropped when the caller allowed them (parse_spec); never on the wire.
    _unknown: list[str] = PrivateAttr(default_factory=list)

    @model_validator(mode="after")
    def _nri_plugin_needs_cdi_and_the_toolkit(self) -> ClusterPolicySpec:
        """The NRI plugin runs in the toolkit's installer and injects CDI devices: upstream refuses it without."""
        if not self.cdi.nri_plugin_enabled:
            return self
        flags = {"cdi.enabled": self.cdi.enabled, "toolkit.enabled": self.toolkit.enabled}
        needs = [name for name, on in flags.items() if not on]
        if needs:
            message = f"the NRI plugin needs {' and '.join(needs)} (it runs in the toolkit and injects CDI devices)"
            error = InitErrorDetails(
                type=PydanticCustomError("nri_plugin", message), loc=("cdi", "nriPluginEnabled"), input=True
            )
            raise ValidationError.from_exception_data(type(self).__name__, [error])  # the field's path, not `spec`
        return self


# Status

State = Literal["ready", "notReady", "ignored", "disabled"]


class Condition(Model):
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str = ""
    last_transition_time: str | None = None
    observed_generation: int | None = None


class OperandStatus(Model):
    """Per-state readiness (beyond upstream): which operand is not ready, and why."""

    name: str
    state: Literal["ready", "notReady", "disabled"]
    message: str = ""


class NodeWait(Model):
    node: str
    state: str = ""
    reason: str


class UpgradeStatus(Model):
    """Driver upgrade progress (beyond upstream): counts, and why each node in progress waits."""

    total: int = 0
    in_progress: int = 0
    done: int = 0
    failed: int = 0
    pending: int = 0
    available: int = 0
    waiting: list[NodeWait] = []


class ClusterPolicyStatus(Model):
    state: State | None = None
    namespace: str | None = None
    observed_generation: int | None = None
    conditions: list[Condition] = []
    states: list[OperandStatus] = []
    upgrade: UpgradeStatus | None = None


class PolicyError(Exception):
    """A ClusterPolicy spec that does not validate: one line per problem, naming the field and rule."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


def _loc(loc: tuple[int | str, ...]) -> str:
    out = "spec"
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def _without_nulls(value: Any) -> Any:
    """Drop null map values, as the API server prunes them from a CRD's non-nullable fields (`plugin:` with
    nothing after it, as in upstream's sample, means the field is not set)."""
    if isinstance(value, dict):
        return {k: _without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nulls(v) for v in value]
    return value


ALLOW_UNKNOWN_ANNOTATION = "nvidia.com/gpu-operator.allow-unknown-fields"


def allows_unknown(metadata: dict[str, Any] | None) -> bool:
    """Whether a ClusterPolicy's metadata opts in to fields this operator does not know (a newer upstream's)."""
    value = ((metadata or {}).get("annotations") or {}).get(ALLOW_UNKNOWN_ANNOTATION, "")
    return str(value).lower() == "true"


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The model an annotation holds, through Optional, Annotated and list."""
    while True:
        origin = get_origin(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            return annotation
        if origin in (Union, types.UnionType, Annotated, list):
            models = [m for m in map(_model_of, get_args(annotation)) if m is not None]
            return models[0] if models else None
        return None


def _fields_at(root: type[BaseModel], loc: tuple[int | str, ...]) -> list[str]:
    """The wire names of the fields of the object at `loc` (list indexes skipped), [] when not a model."""
    model: type[BaseModel] | None = root
    for part in loc:
        if isinstance(part, int) or model is None:
            continue
        field = next((f for n, f in model.model_fields.items() if (f.alias or n) == part), None)
        model = _model_of(field.annotation) if field else None
    return [f.alias or n for n, f in model.model_fields.items()] if model else []


def _unknown_problem(root: type[BaseModel], loc: tuple[int | str, ...]) -> str:
    key = str(loc[-1])
    near = difflib.get_close_matches(key, _fields_at(root, loc[:-1]), n=1, cutoff=0.6)
    hint = f" (did you mean {near[0]}?)" if near else ""
    return f"{_loc(loc)}: unknown field{hint}"


def problems(root: type[BaseModel], exc: ValidationError) -> list[str]:
    """`spec.<path>: <rule>` lines for a spec model's validation errors (ClusterPolicy's or NVIDIADriver's)."""
    out = []
    for err in exc.errors():
        # Drop pydantic's union-branch markers ("int", "str", "function-after[...]") from the path.
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and (p in {"int", "str"} or "[" in p)))
        if err["type"] == "extra_forbidden":
            out.append(_unknown_problem(root, loc))
            continue
        out.append(f"{_loc(loc)}: {err['msg'].removeprefix('Value error, ')}")
    return sorted(set(out))


def _drop(raw: Any, loc: tuple[int | str, ...]) -> bool:
    """Remove the key at `loc`; False when the path does not lead to a mapping holding it."""
    for part in loc[:-1]:
        try:
            raw = raw[part]
        except (KeyError, IndexError, TypeError):
            return False
    return isinstance(raw, dict) and raw.pop(loc[-1], _drop) is not _drop


def parse_spec(spec: dict[str, Any] | None, allow_unknown: bool = False) -> ClusterPolicySpec:
    """Validate a spec dict; raise PolicyError with `spec.<path>: <rule>` lines.

    Only upstream's (camelCase) field names are accepted, as by the CRD. An unknown field is an error unless
    `allow_unknown`: then it is dropped and its path kept for `unknown_fields`.
    """
    # Only a missing or null spec is the empty one: `spec: []` is a type error, as the API server's.
    raw = {} if spec is None else _without_nulls(copy.deepcopy(spec))
    unknown: list[tuple[int | str, ...]] = []
    while True:
        try:
            parsed = ClusterPolicySpec.model_validate(raw, by_alias=True, by_name=False)
            break
        except ValidationError as exc:
            errors = exc.errors()
            extra = [tuple(e["loc"]) for e in errors if e["type"] == "extra_forbidden"]
            if allow_unknown and extra and all([_drop(raw, loc) for loc in extra]):
                unknown += extra
                continue
            raise PolicyError(problems(ClusterPolicySpec, exc)) from None
    parsed._unknown = sorted({_loc(loc) for loc in unknown})
    return parsed


def parse_policy(obj: dict[str, Any]) -> ClusterPolicySpec:
    """A ClusterPolicy object's spec, honouring its allow-unknown-fields annotation as the operator does."""
    return parse_spec(obj.get("spec"), allow_unknown=allows_unknown(obj.get("metadata")))


def unknown_fields(spec: ClusterPolicySpec) -> list[str]:
    """Paths (`spec.<path>`) of the unknown fields parse_spec dropped because the caller allowed them."""
    return list(spec._unknown)
