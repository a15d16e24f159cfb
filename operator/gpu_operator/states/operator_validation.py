"""state-operator-validation: per-node validator whose checks write the ready markers other operands wait for.

Upstream's contract (assets/state-operator-validation, TransformValidator and TransformValidatorComponent in
v26.7): init containers driver-, toolkit-, cuda- and plugin-validation run `nvidia-validator` with
COMPONENT=<check>, every container as root, in the NVIDIA runtime class.
"""

from __future__ import annotations

from typing import Any

from .. import contracts, images
from ..api import ClusterPolicySpec, EnvVar
from .base import OperandState, RenderContext, nvidia_runtime_class

DEFAULT_DRIVER_INSTALL_DIR = "/run/nvidia/driver"
_NODE_NAME = {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}
_NAMESPACE = {"name": "OPERATOR_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}


def with_env(env: list[dict[str, Any]], overrides: list[EnvVar]) -> list[dict[str, Any]]:
    """Env with the policy's entries set by name: replaced in place, or appended (upstream's setContainerEnv)."""
    out = [dict(e) for e in env]
    for o in overrides:
        entry = {"name": o.name, "value": o.value}
        at = next((i for i, e in enumerate(out) if e["name"] == o.name), None)
        if at is None:
            out.append(entry)
        else:
            out[at] = entry
    return out


def _host_root(spec: ClusterPolicySpec) -> list[dict[str, Any]]:
    return [{"name": "HOST_ROOT", "value": spec.host_paths.root_fs}] if spec.host_paths.root_fs != "/" else []


def driver_check_env(spec: ClusterPolicySpec) -> list[dict[str, Any]]:
    """driver-validation's env, here and in the toolkit's copy of it: `validator.driver.env` set by name."""
    install_dir = spec.host_paths.driver_install_dir
    driver_dir = []
    if install_dir != DEFAULT_DRIVER_INSTALL_DIR:  # where the driver check finds the containerized driver
        driver_dir = [
            {"name": "DRIVER_INSTALL_DIR", "value": install_dir},
            {"name": "DRIVER_INSTALL_DIR_CTR_PATH", "value": install_dir},
        ]
    base: list[dict[str, Any]] = [
        {"name": "WITH_WAIT", "value": "true"},
        {"name": "COMPONENT", "value": "driver"},
        _NAMESPACE,
        *driver_dir,
        *_host_root(spec),
    ]
    return with_env(base, spec.validator.driver.env)


def _vars(ctx: RenderContext) -> dict[str, Any]:
    spec = ctx.spec
    v = spec.validator
    host_root = _host_root(spec)
    image = images.resolve(v, "validator")
    runtime_class = nvidia_runtime_class(ctx)
    workload = [
        {"name": "VALIDATOR_IMAGE", "value": image},
        {"name": "VALIDATOR_IMAGE_PULL_POLICY", "value": v.image_pull_policy or "IfNotPresent"},
        *(
            [{"name": "VALIDATOR_IMAGE_PULL_SECRETS", "value": ",".join(v.image_pull_secrets)}]
            if v.image_pull_secrets
            else []
        ),  # fmt: skip
        *([{"name": "VALIDATOR_RUNTIME_CLASS", "value": runtime_class}] if runtime_class else []),
    ]
    checks: dict[str, list[dict[str, Any]]] = {
        "toolkit": [
            {"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"},
            {"name": "WITH_WAIT", "value": "false"},
            {"name": "COMPONENT", "value": "toolkit"},
            *host_root,
        ],
        "cuda": [
            {"name": "WITH_WAIT", "value": "false"},
            {"name": "COMPONENT", "value": "cuda"},
            _NODE_NAME,
            _NAMESPACE,
            *workload,
            *host_root,
        ],
        "plugin": [
            {"name": "COMPONENT", "value": "plugin"},
            {"name": "WITH_WAIT", "value": "false"},
            {"name": "WITH_WORKLOAD", "value": "false"},
            {"name": "MIG_STRATEGY", "value": spec.mig.strategy or ""},
            _NODE_NAME,
            _NAMESPACE,
            *workload,
            *host_root,
        ],
    }
    return {
        "check_env": {
            "driver": driver_check_env(spec),
            **{name: with_env(env, getattr(v, name).env) for name, env in checks.items()},
        },
        "host_network": v.host_network,
        # With the NRI plugin (no runtime class), toolkit-validation's nvidia-smi gets the GPUs this way.
        "pod_annotations": contracts.nri_annotations(spec, "toolkit-validation"),
    }


STATE = OperandState(
    name="state-operator-validation",
    order=5,
    section="validator",
    component="validator",
    container="nvidia-operator-validator",
    deploy_label="operator-validator",
    extra_vars=_vars,
    resources_everywhere=True,
)
