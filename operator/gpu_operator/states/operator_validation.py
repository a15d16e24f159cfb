"""state-operator-validation: per-node validator that writes the ready markers other operands wait for."""

from .base import OperandState

STATE = OperandState(
    name="state-operator-validation",
    order=5,
    section="validator",
    component="validator",
    container="nvidia-operator-validator",
    deploy_label="operator-validator",
)
