"""gpu-feature-discovery: publishes the nvidia.com/gpu.* node labels.

Contract (upstream v26.7 TransformGPUDiscoveryPlugin and assets/gpu-feature-discovery): waits for
toolkit-ready, runs with the NVIDIA runtime class, writes NodeFeature objects in its namespace (NAMESPACE,
NODE_NAME, POD_NAME) and features.d files, follows the device plugin's sharing config with config-manager.
"""

from __future__ import annotations

from typing import Any

from .. import contracts as c
from ..api import ClusterPolicySpec
from .base import OperandState, RenderContext

CONTAINER = "gpu-feature-discovery"


def final_env(spec: ClusterPolicySpec) -> list[c.Env]:
    """What upstream sets after gfd.env (handleDevicePluginConfig, applyMIGConfiguration), so gfd.env cannot
    change it: the config-manager's file and the policy's MIG strategy, which the device plugin also runs."""
    cm = c.config_manager(spec, CONTAINER, None)
    return ([c.env("CONFIG_FILE", cm.dst_file)] if cm else []) + c.mig_env(spec)


def variables(ctx: RenderContext) -> dict[str, Any]:
    spec = ctx.spec
    return {
        **c.pod_vars(spec, ctx.nodes, spec.gfd, CONTAINER, config_manager=True),
        "gfd_env": final_env(spec),  # in the asset's place; set again after gfd.env
        # config-manager runs the device plugin's image with GFD's resources, as upstream does.
        "config_manager": c.config_manager(spec, CONTAINER, c.resources_of(spec.gfd)),
    }


STATE = OperandState(
    name="gpu-feature-discovery",
    order=10,
    section="gfd",
    component="gfd",
    container=CONTAINER,
    deploy_label="gpu-feature-discovery",
    extra_vars=variables,
    final_env=final_env,
)
