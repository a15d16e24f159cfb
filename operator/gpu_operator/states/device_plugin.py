"""state-device-plugin: advertises nvidia.com/gpu (or MIG resources) to the kubelet.

Contract (upstream v26.7 TransformDevicePlugin and assets/state-device-plugin): waits for toolkit-ready, runs
with the NVIDIA runtime class, sources driver-ready before starting (driver root, dev root), writes its CDI spec
under the host's /var/run/cdi, and with a sharing config runs upstream's config-manager beside it.
"""

from __future__ import annotations

from typing import Any

from .. import contracts as c
from .base import OperandState, RenderContext

CONTAINER = "nvidia-device-plugin"


def plugin_env(ctx: RenderContext) -> list[c.Env]:
    """The env upstream's transform adds after the asset's: MIG, CDI, GDS/GDRCopy, MPS root, host root."""
    spec = ctx.spec
    out = c.mig_env(spec)
    if spec.cdi.enabled:
        out += [c.env("CDI_ENABLED", "true"), c.env("CDI_ANNOTATION_PREFIX", c.CDI_ANNOTATION_PREFIX)]
        hook = c.cdi_hook_path(spec)
        if hook:
            out.append(c.env("NVIDIA_CDI_HOOK_PATH", hook))
    if spec.gds.enabled:
        out += [c.env("GDS_ENABLED", "true"), c.env("MOFED_ENABLED", "true")]
    if spec.gdrcopy.enabled:
        out.append(c.env("GDRCOPY_ENABLED", "true"))
    return out + c.host_root_env(spec)


def variables(ctx: RenderContext) -> dict[str, Any]:
    spec = ctx.spec
    dp = spec.device_plugin
    return {
        **c.pod_vars(spec, ctx.nodes, dp, CONTAINER, config_manager=True),
        "device_list_strategy": c.CDI_DEVICE_LIST_STRATEGY if spec.cdi.enabled else "envvar",
        "plugin_env": plugin_env(ctx),
        "config_manager": c.config_manager(spec, CONTAINER, c.resources_of(dp)),
        "driver_install_dir": spec.host_paths.driver_install_dir,
        "host_root": spec.host_paths.root_fs or "/",
        "device_plugins_dir": c.kubelet_host_dir(spec, "device-plugins"),
    }


STATE = OperandState(
    name="state-device-plugin",
    order=6,
    section="device_plugin",
    component="device-plugin",
    container=CONTAINER,
    deploy_label="device-plugin",
    extra_vars=variables,
)
