"""state-container-toolkit: configures the container runtime for GPUs, after the driver is ready."""

from .base import OperandState

STATE = OperandState(
    name="state-container-toolkit",
    order=4,
    section="toolkit",
    component="toolkit",
    container="nvidia-container-toolkit-ctr",
    deploy_label="container-toolkit",
)
