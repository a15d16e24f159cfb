"""pre-requisites: the RuntimeClasses that select the NVIDIA container runtime handlers.

As upstream (assets/pre-requisites, RuntimeClasses() in v26.7): `operator.runtimeClass`, plus `nvidia-cdi` and
`nvidia-legacy` with CDI on; none with CDI's NRI plugin, which needs no runtime handler.
"""

from ..kinds import RUNTIME_CLASS
from .base import OperandState

STATE = OperandState(
    name="pre-requisites",
    order=1,
    kinds=(RUNTIME_CLASS,),
    enabled_when=lambda spec: not spec.cdi.nri_plugin_enabled,
)
