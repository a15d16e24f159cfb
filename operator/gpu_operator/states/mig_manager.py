"""state-mig-manager: applies the MIG layout named by each node's nvidia.com/mig.config label."""

from .base import OperandState

STATE = OperandState(
    name="state-mig-manager",
    order=11,
    section="mig_manager",
    component="mig-manager",
    container="nvidia-mig-manager",
    deploy_label="mig-manager",
)
