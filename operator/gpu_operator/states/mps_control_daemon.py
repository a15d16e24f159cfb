"""state-mps-control-daemon: the MPS control daemon on MPS-capable nodes, deployed with the device plugin.

Contract (upstream v26.7 TransformMPSControlDaemon and assets/state-mps-control-daemon): nodes labelled
nvidia.com/mps.capable=true, host PID namespace (so the config-manager sidecar can signal the daemon; a pod
cannot also share its own process namespace), the shm under mps.root mounted by an init container.
devicePlugin's image, pull policy and resources apply here; its env and args do not (upstream's choice).
"""

from __future__ import annotations

from typing import Any

from .. import contracts as c
from .base import OperandState, RenderContext

CONTAINER = "mps-control-daemon-ctr"


def variables(ctx: RenderContext) -> dict[str, Any]:
    spec = ctx.spec
    resources = c.resources_of(spec.device_plugin)
    return {
        **c.pod_vars(spec, ctx.nodes, spec.device_plugin, CONTAINER, config_manager=True),
        "daemon_env": c.mig_env(spec),
        "resources": resources,
        "config_manager": c.config_manager(spec, "/usr/bin/mps-control-daemon", resources),
    }


STATE = OperandState(
    name="state-mps-control-daemon",
    order=7,
    section="device_plugin",
    component="device-plugin",
    deploy_label="device-plugin",
    extra_vars=variables,
)
