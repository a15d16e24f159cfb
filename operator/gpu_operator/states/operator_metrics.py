"""state-operator-metrics: the Service (and optional ServiceMonitor) for the operator's own metrics."""

from ..kinds import SERVICE, SERVICE_MONITOR
from .base import OperandState

STATE = OperandState(name="state-operator-metrics", order=2, kinds=(SERVICE, SERVICE_MONITOR))
