"""state-dcgm: the standalone DCGM host engine (off by default; the exporter embeds one).

Upstream's contract (assets/state-dcgm, TransformDCGM in v26.7): the image's own entrypoint, port 5555 with TCP
probes, a toolkit-validation init container (here the shared wait on /run/nvidia/validations, DirectoryOrCreate;
upstream mounts /run/nvidia, Directory), the NVIDIA runtime class, and the Service `nvidia-dcgm` with
internalTrafficPolicy Local so every exporter reaches the engine on its own node. No hostPort (the
deprecated dcgm.hostPort is not used upstream either).
"""

from typing import Any

from .. import contracts as c
from .base import OperandState, RenderContext

CONTAINER = "nvidia-dcgm-ctr"


def _vars(ctx: RenderContext) -> dict[str, Any]:
    """Host networking; with CDI's NRI plugin the engine's GPUs by annotation; the toolkit wait's validator
    settings and pull secrets (its init container runs the validator image), as upstream's
    transformValidationInitContainer adds them."""
    spec = ctx.spec
    return {
        "validator": c.validator_init(spec),
        "host_network": spec.dcgm.host_network,
        "pod_annotations": c.nri_annotations(spec, CONTAINER),
        "pull_secrets": [{"name": s} for s in dict.fromkeys(spec.validator.image_pull_secrets)],
    }


STATE = OperandState(
    name="state-dcgm",
    order=8,
    section="dcgm",
    component="dcgm",
    container=CONTAINER,
    deploy_label="dcgm",
    extra_vars=_vars,
)
