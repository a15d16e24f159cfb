"""state-device-plugin: advertises nvidia.com/gpu (or MIG resources) to the kubelet."""

from .base import OperandState

STATE = OperandState(
    name="state-device-plugin",
    order=6,
    section="device_plugin",
    component="device-plugin",
    container="nvidia-device-plugin",
    deploy_label="device-plugin",
)
