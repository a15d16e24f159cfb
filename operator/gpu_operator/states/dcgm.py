"""state-dcgm: the standalone DCGM host engine (off by default; the exporter embeds one)."""

from .base import OperandState

STATE = OperandState(
    name="state-dcgm",
    order=8,
    section="dcgm",
    component="dcgm",
    container="nvidia-dcgm-ctr",
    deploy_label="dcgm",
)
