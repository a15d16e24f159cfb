"""pre-requisites: the RuntimeClass that selects the NVIDIA container runtime."""

from ..kinds import RUNTIME_CLASS
from .base import OperandState

STATE = OperandState(name="pre-requisites", order=1, kinds=(RUNTIME_CLASS,))
