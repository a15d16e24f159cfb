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
from .base import OperandState, RenderContext, RenderProblem

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
# The exporter's own flags for the same switches (its urfave/cli names), which dcgmExporter.args can carry.
POD_LABELS_FLAG = "kubernetes-enable-pod-labels"
POD_UID_FLAG = "kubernetes-enable-pod-uid"
CONFIGMAP_FLAGS = ("configmap-data", "m")  # a string flag and its alias
REMOTE_ENGINE_FLAGS = ("remote-hostengine-info", "r")  # DCGM_REMOTE_HOSTENGINE_INFO's flag and its alias
# An engine address on the node itself: localhost, or a loopback address (the exporter's IPv6 form "[::1]:5555").
LOOPBACK_PREFIXES = ("localhost", "127.", "[::1]", "::1")


def remote_hostengine(spec: ClusterPolicySpec) -> str | None:
    """DCGM_REMOTE_HOSTENGINE_INFO: the standalone host engine's Service when state-dcgm is enabled."""
    return f"nvidia-dcgm:{DCGM_PORT}" if spec.dcgm.enabled else None


def host_resident_engine(spec: ClusterPolicySpec) -> bool:
    """dcgm off and the exporter's engine address (its -r/--remote-hostengine-info flag in dcgmExporter.args, else
    dcgmExporter.env's DCGM_REMOTE_HOSTENGINE_INFO) on the node's loopback: nv-hostengine runs on the node (DGX
    BaseOS), which the exporter reaches only on the host network (upstream's TransformDCGMExporter intent)."""
    if remote_hostengine(spec):
        return False
    exporter = spec.dcgm_exporter
    flags = _flag_values(exporter.args).get(REMOTE_ENGINE_FLAGS[0])
    env = {e.name: e.value for e in exporter.env}
    address = flags[-1] if flags else env.get("DCGM_REMOTE_HOSTENGINE_INFO", "")
    return address.startswith(LOOPBACK_PREFIXES)


def job_mapping_dir(spec: ClusterPolicySpec) -> str | None:
    """dcgmExporter.hpcJobMapping: the host directory HPC schedulers write job files to, when enabled."""
    mapping = spec.dcgm_exporter.hpc_job_mapping
    if not mapping.enabled:
        return None
    return mapping.directory or DEFAULT_JOB_MAPPING_DIR


def exporter_env(spec: ClusterPolicySpec) -> list[c.Env]:
    exporter = spec.dcgm_exporter
    out = [c.env("DCGM_EXPORTER_COLLECTORS", METRICS_PATH if exporter.config.name else DEFAULT_COLLECTORS)]
    engine = remote_hostengine(spec)
    if engine:
        out.append(c.env("DCGM_REMOTE_HOSTENGINE_INFO", engine))
    mapping = job_mapping_dir(spec)
    if mapping:
        out.append(c.env("DCGM_HPC_JOB_MAPPING_DIR", mapping))
    if exporter.enable_pod_labels:
        out.append(c.env(POD_LABELS, "true"))
    if exporter.enable_pod_uid:
        out.append(c.env(POD_UID, "true"))
    allow = exporter.pod_label_allowlist_regex
    if allow:
        out.append(c.env(LABEL_ALLOWLIST, ",".join(str(r) for r in allow)))
    return out


def _go_true(value: str) -> bool:
    """A bool the exporter reads as on (strconv.ParseBool: 1, t, T, true, True, TRUE), or upstream's any-case "true"."""
    return value.lower() in ("1", "t", "true")


def _flag_values(args: list[str]) -> dict[str, list[str]]:
    """The exporter flags this state reads, from dcgmExporter.args as Go's flag package takes them: `-name` or
    `--name`, the value after `=` or, for a string flag (-m/--configmap-data, -r/--remote-hostengine-info), in the
    next item; a bare bool flag reads true. Items after `--` are not flags."""
    out: dict[str, list[str]] = {}
    items = iter(args)
    for arg in items:
        if arg == "--":
            break
        body = arg[2:] if arg.startswith("--") else arg[1:] if arg.startswith("-") else ""
        name, eq, value = body.partition("=")
        if name in (POD_LABELS_FLAG, POD_UID_FLAG):
            out.setdefault(name, []).append(value if eq else "true")
        elif name in CONFIGMAP_FLAGS or name in REMOTE_ENGINE_FLAGS:
            flag = CONFIGMAP_FLAGS[0] if name in CONFIGMAP_FLAGS else REMOTE_ENGINE_FLAGS[0]
            out.setdefault(flag, []).append(value if eq else next(items, ""))
    return out


def reads_pod_metadata(spec: ClusterPolicySpec) -> bool:
    """Pod labels or UIDs on the metrics (fields, env or args): the exporter reads pods cluster-wide. Upstream's
    rbacGates grant the nvidia-dcgm-exporter-read-pods ClusterRole only then (env only, any-case "true")."""
    exporter = spec.dcgm_exporter
    if exporter.enable_pod_labels or exporter.enable_pod_uid:
        return True
    flags = _flag_values(exporter.args)
    values = [e.value for e in exporter.env if e.name in (POD_LABELS, POD_UID)]
    values += flags.get(POD_LABELS_FLAG, []) + flags.get(POD_UID_FLAG, [])
    return any(_go_true(v) for v in values)


def needs_api_token(spec: ClusterPolicySpec) -> bool:
    """The exporter reads the API (pod metadata, or a metrics ConfigMap named in env or args): mount the SA token."""
    if reads_pod_metadata(spec):
        return True
    exporter = spec.dcgm_exporter
    values = [e.value for e in exporter.env if e.name == CONFIGMAP_DATA]
    values += _flag_values(exporter.args).get(CONFIGMAP_FLAGS[0], [])
    return any(v not in ("", "none") for v in values)


def _check_metrics_config(ctx: RenderContext) -> None:
    """dcgmExporter.config.name exists with the key its volume lists: else the kubelet cannot mount it and no exporter
    pod starts (as the driver's ConfigMaps are checked)."""
    name, field = ctx.spec.dcgm_exporter.config.name, "dcgmExporter.config.name"
    if not name:
        return
    keys = ctx.config_maps.get(name)
    if keys is None:
        raise RenderProblem(f"ConfigMap {name} ({field}) not found in namespace {ctx.namespace}")
    if METRICS_FILE not in keys:
        raise RenderProblem(f"ConfigMap {name} ({field}) has no key {METRICS_FILE}")


def variables(ctx: RenderContext) -> dict[str, Any]:
    _check_metrics_config(ctx)
    spec = ctx.spec
    exporter = spec.dcgm_exporter
    # daemonsets.annotations win over the exporter's own on a shared key, as upstream writes them last.
    annotations = {**exporter.annotations, **spec.daemonsets.annotations, **c.nri_annotations(spec, CONTAINER)}
    pod = c.pod_vars(spec, ctx.nodes, exporter, CONTAINER)
    return {
        **pod,
        "host_network": pod["host_network"] or host_resident_engine(spec),
        "pod_annotations": annotations,
        "exporter_env": exporter_env(spec),
        "automount_token": needs_api_token(spec),
        "read_pods": reads_pod_metadata(spec),
        "host_pid": exporter.host_pid,
        "job_mapping_dir": job_mapping_dir(spec),
        "pod_resources_dir": c.kubelet_host_dir(spec, "pod-resources"),
        "metrics_file": METRICS_FILE,
        "metrics_path": METRICS_PATH,
        "port": PORT,
        "scrape_timeout": exporter.service_monitor.scrape_timeout,
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
