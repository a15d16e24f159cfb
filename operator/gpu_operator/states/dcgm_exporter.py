"""state-dcgm-exporter: Prometheus GPU metrics on :9400."""

from ..kinds import DEFAULT_OPERAND_KINDS, SERVICE_MONITOR
from .base import OperandState

STATE = OperandState(
    name="state-dcgm-exporter",
    order=9,
    section="dcgm_exporter",
    component="dcgm-exporter",
    container="nvidia-dcgm-exporter",
    deploy_label="dcgm-exporter",
    kinds=(*DEFAULT_OPERAND_KINDS, SERVICE_MONITOR),
)
