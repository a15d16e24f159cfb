"""gpu-feature-discovery: publishes the nvidia.com/gpu.* node labels."""

from .base import OperandState

STATE = OperandState(
    name="gpu-feature-discovery",
    order=10,
    section="gfd",
    component="gfd",
    container="gpu-feature-discovery",
    deploy_label="gpu-feature-discovery",
)
