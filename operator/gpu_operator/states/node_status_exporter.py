"""state-node-status-exporter: per-node operand health metrics (off by default).

Upstream's contract (assets/state-node-status-exporter, TransformNodeStatusExporter in v26.7): the validator
image with COMPONENT=metrics on port 8000, run as root, a Service and (where the API exists) a ServiceMonitor.
"""

from typing import Any

from ..kinds import DEFAULT_OPERAND_KINDS, SERVICE_MONITOR
from .base import OperandState, RenderContext


def _vars(ctx: RenderContext) -> dict[str, Any]:
    section = ctx.spec.node_status_exporter
    return {"host_network": section.host_network}


STATE = OperandState(
    name="state-node-status-exporter",
    order=12,
    section="node_status_exporter",
    component="node-status-exporter",
    container="nvidia-node-status-exporter",
    deploy_label="node-status-exporter",
    kinds=(*DEFAULT_OPERAND_KINDS, SERVICE_MONITOR),
    extra_vars=_vars,
    resources_everywhere=True,
)
