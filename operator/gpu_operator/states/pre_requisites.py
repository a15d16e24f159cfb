"""pre-requisites: the RuntimeClass that selects the NVIDIA container runtime."""

from .base import OperandState

STATE = OperandState(name="pre-requisites", order=1)
