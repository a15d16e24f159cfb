"""state-mps-control-daemon: the MPS control daemon on MPS-capable nodes, deployed with the device plugin."""

from .base import OperandState

STATE = OperandState(
    name="state-mps-control-daemon",
    order=7,
    section="device_plugin",
    component="device-plugin",
    # devicePlugin's env/args/resources are the device plugin's own: none land on this daemon.
    deploy_label="device-plugin",
)
