"""state-node-status-exporter: per-node operand health metrics (off by default)."""

from .base import OperandState

STATE = OperandState(
    name="state-node-status-exporter",
    order=12,
    section="node_status_exporter",
    component="node-status-exporter",
    container="nvidia-node-status-exporter",
    deploy_label="node-status-exporter",
)
