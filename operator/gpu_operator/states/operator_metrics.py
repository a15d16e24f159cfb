"""state-operator-metrics: the Service (and optional ServiceMonitor) for the operator's own metrics."""

from typing import Any

from ..kinds import SERVICE, SERVICE_MONITOR
from .base import OperandState, RenderContext

PORT = 8080  # the Service's port, upstream's; it targets the port the operator serves its metrics on


def variables(ctx: RenderContext) -> dict[str, Any]:
    return {"port": PORT, "target_port": ctx.metrics_port or PORT}  # 0: metrics off, nothing listens anyway


STATE = OperandState(name="state-operator-metrics", order=2, kinds=(SERVICE, SERVICE_MONITOR), extra_vars=variables)
