"""state-mig-manager: applies the MIG layout named by each node's nvidia.com/mig.config label.

Contract (upstream v26.7 TransformMIGManager and assets/state-mig-manager): waits for toolkit-ready, sources
driver-ready before starting (WITH_SHUTDOWN_HOST_GPU_CLIENTS follows IS_HOST_DRIVER), runs with the NVIDIA
runtime class, host PID/IPC, the host root, /sys and the driver root. mig-manager v0.15 builds each node's
layouts from the hardware and keeps them in a per-node ConfigMap; the default layouts are its fallback
(DEFAULT_CONFIG_FILE), a ConfigMap named replaces both (CONFIG_FILE), default-mig-parted-config too.
"""

from __future__ import annotations

from typing import Any

from .. import contracts as c
from .. import mig_layouts
from ..api import ClusterPolicySpec
from .base import OperandState, RenderContext

CONTAINER = "nvidia-mig-manager"
DEFAULT_CONFIG_MAP = "default-mig-parted-config"
DEFAULT_CLIENTS_CONFIG_MAP = "default-gpu-clients"
CONFIG_DIR = "/mig-parted-config"


def custom_config(spec: ClusterPolicySpec) -> str | None:
    """The user's mig-parted ConfigMap, or None for the default (upstream's GetConfigMapName)."""
    name = spec.mig_manager.config.name
    return None if name in ("", DEFAULT_CONFIG_MAP) else name


def fixed_config(spec: ClusterPolicySpec) -> bool:
    """Whether mig-manager reads the named ConfigMap as its config (CONFIG_FILE) rather than building the layouts
    from the hardware: upstream's hasCustomConfig, any name set, default-mig-parted-config too (ours, created)."""
    return bool(spec.mig_manager.config.name)


def manager_env(spec: ClusterPolicySpec) -> list[c.Env]:
    out = [
        c.env("CONFIG_FILE", f"{CONFIG_DIR}/config.yaml")
        if fixed_config(spec)
        else c.env("DEFAULT_CONFIG_FILE", f"{CONFIG_DIR}/config-default.yaml")
    ]
    if spec.cdi.enabled:
        out.append(c.env("CDI_ENABLED", "true"))
        hook = c.cdi_hook_path(spec)
        if hook:
            out.append(c.env("NVIDIA_CDI_HOOK_PATH", hook))
    return out + c.host_root_env(spec)


def variables(ctx: RenderContext) -> dict[str, Any]:
    spec = ctx.spec
    custom = custom_config(spec)
    return {
        **c.pod_vars(spec, ctx.nodes, spec.mig_manager, CONTAINER),
        "manager_env": manager_env(spec),
        "custom_config": custom,
        "config_map": custom or DEFAULT_CONFIG_MAP,
        # With no name set, the default ConfigMap's key config.yaml is mounted as config-default.yaml, the file
        # name mig-manager expects for its fallback.
        "config_items": None if fixed_config(spec) else [{"key": "config.yaml", "path": "config-default.yaml"}],
        "config_dir": CONFIG_DIR,
        "default_layouts": None if custom else mig_layouts.default_config_yaml(),
        "gpu_clients_config_map": spec.mig_manager.gpu_clients_config.name or DEFAULT_CLIENTS_CONFIG_MAP,
        "driver_install_dir": spec.host_paths.driver_install_dir,
        "host_root": spec.host_paths.root_fs or "/",
    }


STATE = OperandState(
    name="state-mig-manager",
    order=11,
    section="mig_manager",
    component="mig-manager",
    container=CONTAINER,
    deploy_label="mig-manager",
    extra_vars=variables,
)
