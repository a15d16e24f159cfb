"""state-driver: the kernel driver, one OnDelete DaemonSet per node pool (OS, and kernel when precompiled)."""

from __future__ import annotations

from typing import Any

from .. import images
from ..nodes import driver_pools
from .base import OperandState, RenderContext


def _vars(ctx: RenderContext) -> dict[str, Any]:
    driver = ctx.spec.driver
    version = images.version_of(driver, "driver")
    pools = []
    for pool in driver_pools(list(ctx.nodes), driver.use_precompiled):
        tag = f"{version}-{pool.kernel}-{pool.os_tag}" if pool.kernel else f"{version}-{pool.os_tag}"
        digest = (driver.version or "").startswith("sha256:") or (driver.image and not driver.repository)
        pools.append(
            {
                "name": pool.name,
                "os_tag": pool.os_tag,
                "image": images.resolve(driver, "driver") if digest else images.resolve(driver, "driver", tag),
                "node_selector": {"nvidia.com/gpu.deploy.driver": "true", **pool.node_selector()},
            }
        )
    return {"pools": pools, "manager_image": images.resolve(driver.manager, "driver-manager")}


STATE = OperandState(
    name="state-driver",
    order=3,
    section="driver",
    component="driver",
    container="nvidia-driver-ctr",
    sub_containers=(("k8s-driver-manager", "manager"),),
    deploy_label="driver",
    on_delete=True,
    enabled_when=lambda spec: spec.driver.enabled and not spec.driver.use_nvidia_driver_crd,
    extra_vars=_vars,
    depends_on_nodes=True,
)
