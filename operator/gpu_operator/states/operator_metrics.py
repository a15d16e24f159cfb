"""state-operator-metrics: the Service (and, where the API is served, the ServiceMonitor) for the operator's own
metrics."""

from collections.abc import Mapping
from typing import Any

from ..kinds import SERVICE, SERVICE_MONITOR
from .base import OperandState, RenderContext

PORT = 8080  # the Service's port, upstream's; it targets the port the operator serves its metrics on


def live_target_port(owned: Mapping[Any, dict[str, Any]], namespace: str) -> int:
    """The port the running operator's metrics Service targets (its --metrics-port), PORT when there is none, 0 when
    it says it serves none: what a dry-run pass from another process (render --from-cluster) renders for it."""
    service = owned.get((SERVICE.kind, namespace, "gpu-operator")) or {}
    if ((service.get("metadata") or {}).get("annotations") or {}).get("prometheus.io/scrape") == "false":
        return 0
    try:
        return int(service["spec"]["ports"][0]["targetPort"])
    except (KeyError, IndexError, TypeError, ValueError):
        return PORT


def variables(ctx: RenderContext) -> dict[str, Any]:
    # 0: metrics off. The Service stays (targeting PORT, where nothing listens) but says so: not scraped, and no
    # ServiceMonitor, which would show a target that is down.
    return {"port": PORT, "target_port": ctx.metrics_port or PORT, "metrics_off": not ctx.metrics_port}


STATE = OperandState(name="state-operator-metrics", order=2, kinds=(SERVICE, SERVICE_MONITOR), extra_vars=variables)
