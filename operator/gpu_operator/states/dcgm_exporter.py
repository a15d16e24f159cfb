"""state-dcgm-exporter: Prometheus GPU metrics on :9400.

Contract (upstream v26.7 TransformDCGMExporter and assets/state-dcgm-exporter): waits for toolkit-ready, runs
with the NVIDIA runtime class, reads GPU-to-pod mapping from the kubelet's pod-resources socket, talks to the
standalone host engine (`nvidia-dcgm:5555`, a node-local Service) when state-dcgm is on, else embeds one.
"""

from __future__ import annotations

from typing import Any

from .. import contracts as c
from ..api import ClusterPolicySpec
from ..kinds import DEFAULT_OPERAND_KINDS, SERVICE_MONITOR
from .base import OperandState, RenderContext

CONTAINER = "nvidia-dcgm-exporter"
PORT = 9400
DCGM_PORT = 5555  # upstream's DCGMDefaultPort: the nvidia-dcgm Service port
METRICS_FILE = "dcgm-metrics.csv"
METRICS_PATH = "/etc/dcgm-exporter/" + METRICS_FILE
DEFAULT_COLLECTORS = "/etc/dcgm-exporter/dcp-metrics-included.csv"
DEFAULT_JOB_MAPPING_DIR = "/var/lib/dcgm-exporter/job-mapping"
POD_LABELS = "DCGM_EXPORTER_KUBERNETES_ENABLE_POD_LABELS"
POD_UID = "DCGM_EXPORTER_KUBERNETES_ENABLE_POD_UID"
LABEL_ALLOWLIST = "DCGM_EXPORTER_KUBERNETES_POD_LABEL_ALLOWLIST_REGEX"
CONFIGMAP_DATA = "DCGM_EXPORTER_CONFIGMAP_DATA"


def remote_hostengine(spec: ClusterPolicySpec) -> str | None:
    """DCGM_REMOTE_HOSTENGINE_INFO: the standalone host engine's Service when state-dcgm is enabled."""
    return f"nvidia-dcgm:{DCGM_PORT}" if spec.dcgm.enabled else None


def job_mapping_dir(spec: ClusterPolicySpec) -> str | None:
    """dcgmExporter.hpcJobMapping: the host directory HPC schedulers write job files to, when enabled."""
    mapping = c.upstream_field(spec.dcgm_exporter, "hpcJobMapping") or {}
    if hasattr(mapping, "model_dump"):  # once api.py models the section
        mapping = mapping.model_dump(by_alias=True)
    if not isinstance(mapping, dict) or mapping.get("enabled") is not True:
        return None
    return str(mapping.get("directory") or DEFAULT_JOB_MAPPING_DIR)


def exporter_env(spec: ClusterPolicySpec) -> list[c.Env]:
    exporter = spec.dcgm_exporter
    out = [c.env("DCGM_EXPORTER_COLLECTORS", METRICS_PATH if exporter.config.name else DEFAULT_COLLECTORS)]
    engine = remote_hostengine(spec)
    if engine:
        out.append(c.env("DCGM_REMOTE_HOSTENGINE_INFO", engine))
    mapping = job_mapping_dir(spec)
    if mapping:
        out.append(c.env("DCGM_HPC_JOB_MAPPING_DIR", mapping))
    if c.flag(exporter, "enablePodLabels"):
        out.append(c.env(POD_LABELS, "true"))
    if c.flag(exporter, "enablePodUID"):
        out.append(c.env(POD_UID, "true"))
    allow = c.upstream_field(exporter, "podLabelAllowlistRegex") or []
    if allow:
        out.append(c.env(LABEL_ALLOWLIST, ",".join(str(r) for r in allow)))
    return out


def needs_api_token(spec: ClusterPolicySpec) -> bool:
    """The exporter reads the API (pod metadata, or a metrics ConfigMap named in env): mount the SA token."""
    exporter = spec.dcgm_exporter
    if c.flag(exporter, "enablePodLabels") or c.flag(exporter, "enablePodUID"):
        return True
    for e in exporter.env:
        if e.name in (POD_LABELS, POD_UID) and e.value.lower() == "true":
            return True
        if e.name == CONFIGMAP_DATA and e.value not in ("", "none"):
            return True
    return False


def variables(ctx: RenderContext) -> dict[str, Any]:
    spec = ctx.spec
    exporter = spec.dcgm_exporter
    kubelet_root = c.upstream_field(spec.host_paths, "kubeletRootDir") or "/var/lib/kubelet"
    annotations = {**(c.upstream_field(exporter, "annotations") or {}), **c.nri_annotations(spec, CONTAINER)}
    return {
        **c.pod_vars(spec, ctx.nodes, exporter, CONTAINER),
        "pod_annotations": annotations,
        "exporter_env": exporter_env(spec),
        "automount_token": needs_api_token(spec),
        "host_pid": c.flag(exporter, "hostPID"),
        "job_mapping_dir": job_mapping_dir(spec),
        "pod_resources_dir": kubelet_root.rstrip("/") + "/pod-resources",
        "metrics_file": METRICS_FILE,
        "metrics_path": METRICS_PATH,
        "port": PORT,
        "scrape_timeout": c.upstream_field(exporter.service_monitor, "scrapeTimeout"),
        "monitor_labels": {"app": CONTAINER, **exporter.service_monitor.additional_labels},
    }


STATE = OperandState(
    name="state-dcgm-exporter",
    order=9,
    section="dcgm_exporter",
    component="dcgm-exporter",
    container=CONTAINER,
    deploy_label="dcgm-exporter",
    kinds=(*DEFAULT_OPERAND_KINDS, SERVICE_MONITOR),
    extra_vars=variables,
)
