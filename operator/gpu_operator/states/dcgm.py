"""state-dcgm: the standalone DCGM host engine (off by default; the exporter embeds one).

Upstream's contract (assets/state-dcgm, TransformDCGM in v26.7): the image's own entrypoint, port 5555 with TCP
probes, a toolkit-validation init container, the NVIDIA runtime class, and the Service `nvidia-dcgm` with
internalTrafficPolicy Local so every exporter reaches the engine on its own node. No hostPort (the
deprecated dcgm.hostPort is not used upstream either).
"""

from typing import Any

from .base import OperandState, RenderContext


def _vars(ctx: RenderContext) -> dict[str, Any]:
    return {"host_network": ctx.spec.dcgm.host_network}


STATE = OperandState(
    name="state-dcgm",
    order=8,
    section="dcgm",
    component="dcgm",
    container="nvidia-dcgm-ctr",
    deploy_label="dcgm",
    extra_vars=_vars,
)
