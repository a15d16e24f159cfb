"""Template variables several operand states share: the parts of upstream's operand contracts that are
decisions (runtime class, the toolkit wait, the sharing-config manager, MIG and CDI env), computed here so the
templates stay declarative. Facts are from upstream v26.7's `controllers/object_controls.go` and assets.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from . import images
from .api import ClusterPolicySpec, ComponentSpec, EnvVar, ValidatorSpec
from .nodes import NodeFacts

Env = dict[str, Any]

CDI_ANNOTATION_PREFIX = "cdi.k8s.io/"
CDI_DEVICE_LIST_STRATEGY = "cdi-annotations,cdi-cri"
NRI_ANNOTATION_DOMAIN = "nvidia.cdi.k8s.io"
NRI_MANAGEMENT_DEVICE = "management.nvidia.com/gpu=all"
CRIO = "cri-o"


def env(name: str, value: str) -> Env:
    return {"name": name, "value": value}


def field_ref(name: str, path: str) -> Env:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}


def resources_of(section: ComponentSpec | ValidatorSpec | None) -> dict[str, Any] | None:
    if section is None or section.resources is None:
        return None
    return section.resources.model_dump(exclude_defaults=True)


def runtime_class_name(spec: ClusterPolicySpec, runtimes: set[str]) -> str | None:
    """`operator.runtimeClass` for the pods that need the NVIDIA runtime, or None (no runtimeClassName).

    Upstream (setRuntimeClassName) leaves it out with the NRI plugin, and without CDI when its one cluster runtime
    (getRuntime) is cri-o: no GPU node runs containerd (nor docker here, where upstream's pick is list order).
    Here that needs the cri-o toolkit to reach every container too (_crio_gpu_by_default). Otherwise the class is
    kept: a host-installed toolkit gives containerd an `nvidia` handler that is not the default, and our cri-o
    toolkit (`config` mode, NVIDIA_RUNTIME_NAME) gives cri-o nodes the handler too.
    """
    if spec.cdi.nri_plugin_enabled:
        return None
    crio_only = CRIO in runtimes and not runtimes & {"containerd", "docker"}
    if not spec.cdi.enabled and crio_only and _crio_gpu_by_default(spec):
        return None
    return spec.operator.runtime_class or "nvidia"


# The installer's names for --set-as-default, for every runtime; the first one set counts (nvidia-ctk-installer
# v1.20, container/runtime/runtime.go).
SET_AS_DEFAULT_VARS = ("NVIDIA_RUNTIME_SET_AS_DEFAULT", "CONTAINERD_SET_AS_DEFAULT", "DOCKER_SET_AS_DEFAULT")


def _crio_gpu_by_default(spec: ClusterPolicySpec) -> bool:
    """Whether, with CDI off, a cri-o container without a runtime class runs with the NVIDIA runtime: through the OCI
    hook (`toolkit.env` CRIO_CONFIG_MODE=hook) or as cri-o's default runtime, which the installer makes `nvidia`
    unless `toolkit.env` turns --set-as-default off (read as Go's ParseBool; an empty value is false). A toolkit
    installed on the host is assumed to, as upstream does."""
    if not spec.toolkit.enabled:
        return True
    user = {e.name: e.value for e in spec.toolkit.env}
    if user.get("CRIO_CONFIG_MODE") == "hook":
        return True
    value = next((user[name] for name in SET_AS_DEFAULT_VARS if name in user), "true")
    return value.strip().lower() in ("1", "t", "true")


def nri_annotations(spec: ClusterPolicySpec, container: str) -> dict[str, str]:
    """With the CDI NRI plugin, the main container gets every GPU through an annotation instead."""
    if not (spec.cdi.enabled and spec.cdi.nri_plugin_enabled):
        return {}
    return {f"{NRI_ANNOTATION_DOMAIN}/container.{container}": NRI_MANAGEMENT_DEVICE}


def mig_env(spec: ClusterPolicySpec) -> list[Env]:
    """applyMIGConfiguration: the strategy, and MIG device monitoring unless the strategy is none."""
    if spec.mig.strategy is None:
        return [env("NVIDIA_MIG_MONITOR_DEVICES", "all")]
    out = [env("MIG_STRATEGY", spec.mig.strategy)]
    if spec.mig.strategy != "none":
        out.append(env("NVIDIA_MIG_MONITOR_DEVICES", "all"))
    return out


def cdi_hook_path(spec: ClusterPolicySpec) -> str | None:
    """Where the toolkit installs nvidia-cdi-hook; None when the operator does not install the toolkit."""
    if not spec.toolkit.enabled:
        return None
    return spec.toolkit.install_dir.rstrip("/") + "/toolkit/nvidia-cdi-hook"


def host_root_env(spec: ClusterPolicySpec) -> list[Env]:
    """transformForHostRoot: HOST_ROOT in pods that mount the host root, when it is not `/`."""
    root = spec.host_paths.root_fs
    return [] if root in ("", "/") else [env("HOST_ROOT", root)]


def kubelet_host_dir(spec: ClusterPolicySpec, sub: str) -> str:
    """The host's <hostPaths.kubeletRootDir>/<sub> ("" means /var/lib/kubelet). Upstream moves only the exporter's
    pod-resources; here every kubelet directory an operand mounts follows the field."""
    return (spec.host_paths.kubelet_root_dir or "/var/lib/kubelet").rstrip("/") + "/" + sub


def host_network(section: BaseModel) -> bool:
    """applyHostNetworkConfig: <section>.hostNetwork (with dnsPolicy ClusterFirstWithHostNet)."""
    return bool(getattr(section, "host_network", False))


@dataclass(frozen=True)
class ValidatorInit:
    """The validator image settings of an init container that waits for a validation marker."""

    image: str
    pull_policy: str
    resources: dict[str, Any] | None = None
    env: list[Env] = field(default_factory=list)


def validator_init(spec: ClusterPolicySpec, check: str = "toolkit") -> ValidatorInit:
    """transformValidationInitContainer: validator image, pull policy, resources, and validator.<check>.env."""
    checks: Mapping[str, list[EnvVar]] = {"toolkit": spec.validator.toolkit.env, "driver": spec.validator.driver.env}
    return ValidatorInit(
        image=images.resolve(spec.validator, "validator"),
        pull_policy=spec.validator.image_pull_policy or "IfNotPresent",
        resources=resources_of(spec.validator),
        env=[env(e.name, e.value) for e in checks.get(check, [])],
    )


@dataclass(frozen=True)
class ConfigManager:
    """The device plugin's config-manager (init container and sidecar) for a sharing config ConfigMap."""

    image: str
    pull_policy: str
    config_map: str
    default: str
    process: str  # PROCESS_TO_SIGNAL: the main process to send SIGHUP on a config change
    resources: dict[str, Any] | None  # sidecar and init container (upstream: the pod's component resources)
    node_label: str = "nvidia.com/device-plugin.config"
    src_dir: str = "/available-configs"
    dst_file: str = "/config/config.yaml"
    fallback_strategies: str = "empty"


def config_manager(spec: ClusterPolicySpec, process: str, resources: dict[str, Any] | None) -> ConfigManager | None:
    """handleDevicePluginConfig: present only when devicePlugin.config.name is set; image is the device plugin's."""
    cfg = spec.device_plugin.config
    if not cfg.name:
        return None
    return ConfigManager(
        image=images.resolve(spec.device_plugin, "device-plugin"),
        pull_policy=spec.device_plugin.image_pull_policy or "IfNotPresent",
        config_map=cfg.name,
        default=cfg.default,
        process=process,
        resources=resources,
    )


def gpu_runtimes(nodes: Iterable[NodeFacts]) -> set[str]:
    """Container runtimes of the GPU nodes (`containerd`, `cri-o`, ...)."""
    return {n.runtime for n in nodes if n.has_gpu and n.runtime}


def pod_vars(
    spec: ClusterPolicySpec, nodes: Iterable[NodeFacts], section: BaseModel, container: str,
    config_manager: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """What every pod that waits for the toolkit shares: runtime class, the wait, host network, NRI annotation,
    and the pull secrets of the images it runs besides its own (the validator's; with `config_manager`, a pod that
    runs config-manager when devicePlugin.config.name is set, the device plugin's). The component's own secrets are
    added when the DaemonSet is decorated."""
    secrets = list(spec.validator.image_pull_secrets)
    if config_manager and spec.device_plugin.config.name:
        secrets += spec.device_plugin.image_pull_secrets
    return {
        "runtime_class": runtime_class_name(spec, gpu_runtimes(nodes)),
        "validator": validator_init(spec),
        "host_network": host_network(section),
        "pod_annotations": nri_annotations(spec, container),
        "pull_secrets": [{"name": s} for s in dict.fromkeys(secrets)],
    }
