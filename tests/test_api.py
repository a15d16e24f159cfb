"""The ClusterPolicy model: upstream YAML validates unchanged, bad input is named by field path and rule."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml

from gpu_operator import api, images
from gpu_operator.api import ComponentSpec, PolicyError, parse_spec, unknown_fields
from gpu_operator.nvidiadriver_api import NVIDIADriverSpec
from support import load_policy

# A ClusterPolicy as upstream's Helm chart renders it, including fields this operator does not act on.
UPSTREAM = yaml.safe_load(
    """
apiVersion: nvidia.com/v1
kind: ClusterPolicy
metadata:
  name: cluster-policy
spec:
  hostPaths:
    rootFS: /host-root
    driverInstallDir: /run/nvidia/driver
  operator:
    defaultRuntime: containerd
    runtimeClass: nvidia
    initContainer:
      repository: nvcr.io/nvidia
      image: cuda
      version: 12.8.1-base-ubi9
      imagePullPolicy: IfNotPresent
    use_ocp_driver_toolkit: false
  daemonsets:
    labels: {team: gpu}
    annotations: {}
    tolerations:
    - {key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}
    priorityClassName: system-node-critical
    updateStrategy: RollingUpdate
    rollingUpdate:
      maxUnavailable: "1"
  validator:
    repository: nvcr.io/nvidia/cloud-native
    image: gpu-operator-validator
    version: v25.10.0
    imagePullPolicy: IfNotPresent
    plugin:
      env:
      - {name: WITH_WORKLOAD, value: "false"}
    vfioPCI:
      env: []
  mig:
    strategy: single
  psa:
    enabled: false
  psp:
    enabled: false
  cdi:
    enabled: true
    default: false
  driver:
    enabled: true
    useNvidiaDriverCRD: false
    useOpenKernelModules: false
    kernelModuleType: auto
    usePrecompiled: false
    repository: nvcr.io/nvidia
    image: driver
    version: "580.105.08"
    imagePullPolicy: IfNotPresent
    startupProbe: {initialDelaySeconds: 60, periodSeconds: 10, timeoutSeconds: 60, failureThreshold: 120}
    livenessProbe: {initialDelaySeconds: 60, periodSeconds: 10}
    readinessProbe: {initialDelaySeconds: 10, periodSeconds: 10}
    rdma:
      enabled: false
      useHostMofed: false
    manager:
      repository: nvcr.io/nvidia/cloud-native
      image: k8s-driver-manager
      version: v0.9.1
      imagePullPolicy: IfNotPresent
      env:
      - {name: ENABLE_GPU_POD_EVICTION, value: "true"}
      - {name: ENABLE_AUTO_DRAIN, value: "false"}
    repoConfig:
      configMapName: ""
    certConfig:
      name: ""
    licensingConfig:
      configMapName: ""
      nlsEnabled: true
    virtualTopology:
      config: ""
    kernelModuleConfig:
      name: ""
    upgradePolicy:
      autoUpgrade: true
      maxParallelUpgrades: 1
      maxUnavailable: 25%
      waitForCompletion:
        timeoutSeconds: 0
        podSelector: ""
      podDeletion:
        force: false
        timeoutSeconds: 300
        deleteEmptyDir: false
      drain:
        enable: false
        force: false
        timeoutSeconds: 300
        deleteEmptyDir: false
  vgpuManager:
    enabled: false
    image: vgpu-manager
    driverManager:
      repository: nvcr.io/nvidia/cloud-native
      image: k8s-driver-manager
      version: v0.9.1
  kataManager:
    enabled: false
    config:
      artifactsDir: /opt/nvidia-gpu-operator/artifacts/runtimeclasses
  vfioManager:
    enabled: true
    repository: nvcr.io/nvidia
    image: cuda
    version: 12.8.1-base-ubi9
    driverManager:
      repository: nvcr.io/nvidia/cloud-native
      image: k8s-driver-manager
      version: v0.9.1
  vgpuDeviceManager:
    enabled: true
    repository: nvcr.io/nvidia/cloud-native
    image: vgpu-device-manager
    version: v0.4.1
    config:
      name: ""
      default: default
  ccManager:
    enabled: false
    defaultMode: "off"
    repository: nvcr.io/nvidia/cloud-native
    image: k8s-cc-manager
    version: v0.1.1
  toolkit:
    enabled: true
    repository: nvcr.io/nvidia/k8s
    image: container-toolkit
    version: v1.18.1
    imagePullPolicy: IfNotPresent
    installDir: /usr/local/nvidia
    env:
    - {name: CONTAINERD_CONFIG, value: /etc/containerd/config.toml}
  devicePlugin:
    enabled: true
    repository: nvcr.io/nvidia
    image: k8s-device-plugin
    version: v0.18.1
    imagePullPolicy: IfNotPresent
    env:
    - {name: PASS_DEVICE_SPECS, value: "true"}
    config:
      name: ""
      default: ""
    mps:
      root: /run/nvidia/mps
  dcgm:
    enabled: false
    repository: nvcr.io/nvidia/cloud-native
    image: dcgm
    version: 4.4.2-1-ubuntu22.04
    hostPort: 5555
  dcgmExporter:
    enabled: true
    repository: nvcr.io/nvidia/k8s
    image: dcgm-exporter
    version: 4.4.2-4.7.0-ubuntu22.04
    imagePullPolicy: IfNotPresent
    env:
    - {name: DCGM_EXPORTER_LISTEN, value: ":9400"}
    - {name: DCGM_EXPORTER_KUBERNETES, value: "true"}
    - {name: DCGM_EXPORTER_COLLECTORS, value: /etc/dcgm-exporter/dcp-metrics-included.csv}
    serviceMonitor:
      enabled: false
      interval: 15s
      honorLabels: false
      additionalLabels: {}
      relabelings: []
    service:
      internalTrafficPolicy: Cluster
  gfd:
    enabled: true
    repository: nvcr.io/nvidia
    image: k8s-device-plugin
    version: v0.18.1
    imagePullPolicy: IfNotPresent
    env:
    - {name: GFD_SLEEP_INTERVAL, value: 60s}
    - {name: GFD_FAIL_ON_INIT_ERROR, value: "true"}
  migManager:
    enabled: true
    repository: nvcr.io/nvidia/cloud-native
    image: k8s-mig-manager
    version: v0.13.1
    imagePullPolicy: IfNotPresent
    env:
    - {name: WITH_REBOOT, value: "false"}
    config:
      name: ""
      default: all-disabled
    gpuClientsConfig:
      name: ""
  nodeStatusExporter:
    enabled: false
    repository: nvcr.io/nvidia/cloud-native
    image: gpu-operator-validator
    version: v25.10.0
  gds:
    enabled: false
    repository: nvcr.io/nvidia/cloud-native
    image: nvidia-fs
    version: "2.26.6"
  gdrcopy:
    enabled: false
    repository: nvcr.io/nvidia/cloud-native
    image: gdrdrv
    version: v2.5.1
  sandboxWorkloads:
    enabled: false
    defaultWorkload: container
  sandboxDevicePlugin:
    enabled: true
    repository: nvcr.io/nvidia
    image: kubevirt-gpu-device-plugin
    version: v1.4.0
"""
)


def problems_of(spec: dict[str, Any] | None) -> list[str]:
    with pytest.raises(PolicyError) as info:
        parse_spec(spec)
    return info.value.problems


def nested(path: str, value: Any) -> dict[str, Any]:
    """{"a": {"b": value}} from "a.b"."""
    out: Any = value
    for key in reversed(path.split(".")):
        out = {key: out}
    return dict(out)


# Defaults


def test_empty_spec_gets_reference_defaults() -> None:
    for raw in (None, {}):
        spec = parse_spec(raw)
        assert spec.operator.runtime_class == "nvidia"
        assert spec.daemonsets.priority_class_name == "system-node-critical"
        assert spec.daemonsets.update_strategy == "RollingUpdate"
        assert spec.driver.enabled is True
        assert spec.driver.kernel_module_type == "auto"
        policy = spec.driver.upgrade_policy
        assert policy.auto_upgrade is False
        assert policy.max_parallel_upgrades == 1
        assert policy.max_unavailable == "25%"
        assert policy.wait_for_completion.timeout_seconds == 0
        assert (policy.drain.enable, policy.drain.force, policy.drain.timeout_seconds) == (False, False, 300)
        assert spec.toolkit.enabled and spec.toolkit.install_dir == "/usr/local/nvidia"
        assert spec.device_plugin.enabled and spec.device_plugin.mps.root == "/run/nvidia/mps"
        assert spec.dcgm.enabled is True and spec.dcgm.host_port == 5555  # upstream: unset is on
        assert spec.mig.strategy is None  # upstream: no MIG_STRATEGY, the plugin's default (none)
        assert spec.driver.licensing_config.nls_enabled is False  # upstream ClusterPolicy: unset is off
        assert spec.dcgm_exporter.service_monitor.interval is None  # Prometheus' global interval
        assert spec.dcgm_exporter.enabled and spec.gfd.enabled and spec.mig_manager.enabled
        assert spec.mig_manager.config.default == "all-disabled"
        assert spec.node_status_exporter.enabled is False
        assert spec.sandbox_workloads.enabled is False
        assert spec.sandbox_workloads.default_workload == "container"
        for section in ("vfio_manager", "vgpu_manager", "vgpu_device_manager", "sandbox_device_plugin", "cc_manager"):
            assert getattr(spec, section).enabled is False, section
        assert spec.gds.enabled is False and spec.gdrcopy.enabled is False
        assert (spec.host_paths.root_fs, spec.host_paths.driver_install_dir) == ("/", "/run/nvidia/driver")


EMPTY_MEANS_DEFAULT = [
    ("operator.runtimeClass", lambda s: s.operator.runtime_class, "nvidia"),
    ("hostPaths.rootFS", lambda s: s.host_paths.root_fs, "/"),
    ("hostPaths.driverInstallDir", lambda s: s.host_paths.driver_install_dir, "/run/nvidia/driver"),
    ("toolkit.installDir", lambda s: s.toolkit.install_dir, "/usr/local/nvidia"),
    ("devicePlugin.mps.root", lambda s: s.device_plugin.mps.root, "/run/nvidia/mps"),
]


@pytest.mark.parametrize(("path", "read", "default"), EMPTY_MEANS_DEFAULT, ids=[c[0] for c in EMPTY_MEANS_DEFAULT])
def test_an_empty_string_means_the_default(path: str, read: Any, default: str) -> None:
    """The CRD admits "" for these; upstream reads it as unset (getRuntimeClassName, transformForHostRoot,
    transformForDriverInstallDir, TransformToolkit, TransformDevicePlugin's MPS root)."""
    assert read(parse_spec(nested(path, ""))) == default
    assert read(parse_spec(nested(path, "/x" if default.startswith("/") else "x"))) != default


def test_pod_deletion_defaults_when_given_empty() -> None:
    pod_deletion = parse_spec(nested("driver.upgradePolicy.podDeletion", {})).driver.upgrade_policy.pod_deletion
    assert pod_deletion is not None
    assert (pod_deletion.force, pod_deletion.timeout_seconds, pod_deletion.delete_empty_dir) == (False, 300, False)


# Valid input


def test_default_sample_validates_without_unknown_fields() -> None:
    spec = parse_spec(load_policy()["spec"])
    assert spec.driver.upgrade_policy.auto_upgrade is True
    assert spec.validator.plugin.env[0].name == "WITH_WORKLOAD"
    assert unknown_fields(spec) == []


def test_upstream_yaml_validates_and_maps_upstream_names() -> None:
    spec = parse_spec(UPSTREAM["spec"])
    assert spec.host_paths.root_fs == "/host-root"
    assert spec.driver.use_nvidia_driver_crd is False
    assert spec.driver.rdma.use_host_mofed is False
    assert spec.driver.upgrade_policy.pod_deletion is not None
    assert spec.driver.upgrade_policy.max_unavailable == "25%"
    assert spec.driver.startup_probe is not None and spec.driver.startup_probe.failure_threshold == 120
    assert spec.validator.vfio_pci.env == []
    assert spec.dcgm_exporter.service.internal_traffic_policy == "Cluster"
    assert spec.vfio_manager.enabled is True
    assert spec.vgpu_manager.image == "vgpu-manager"


def test_every_upstream_field_is_modelled() -> None:
    spec = parse_spec(UPSTREAM["spec"])
    assert unknown_fields(spec) == []
    assert spec.kata_manager.config.artifacts_dir == "/opt/nvidia-gpu-operator/artifacts/runtimeclasses"
    assert spec.operator.init_container.image == "cuda" and spec.operator.use_ocp_driver_toolkit is False
    assert spec.driver.virtual_topology.config == "" and spec.driver.use_open_kernel_modules is False
    assert spec.vgpu_manager.driver_manager.version == "v0.9.1"
    assert spec.vgpu_device_manager.config.default == "default"
    assert spec.cc_manager.default_mode == "off"
    assert spec.psp.enabled is False
    dumped = spec.model_dump(by_alias=True, exclude_unset=True)
    assert dumped["kataManager"] == UPSTREAM["spec"]["kataManager"]
    assert dumped["operator"]["use_ocp_driver_toolkit"] is False


def test_upstream_spellings_of_the_newer_fields() -> None:
    spec = parse_spec(
        {
            "dcgmExporter": {"hostPID": True, "enablePodUID": True, "hpcJobMapping": {"enabled": True}},
            "operator": {"use_ocp_driver_toolkit": True},
            "hostPaths": {"kubeletRootDir": "/data/kubelet"},
            "daemonsets": {"podSecurityContext": {"runAsUser": 0, "seLinuxOptions": {"type": "spc_t"}}},
        }
    )
    assert unknown_fields(spec) == []
    assert spec.dcgm_exporter.host_pid and spec.dcgm_exporter.enable_pod_uid
    assert spec.dcgm_exporter.hpc_job_mapping.enabled and spec.operator.use_ocp_driver_toolkit
    assert spec.host_paths.kubelet_root_dir == "/data/kubelet"
    assert spec.daemonsets.pod_security_context is not None
    assert spec.daemonsets.pod_security_context.as_dict() == {"runAsUser": 0, "seLinuxOptions": {"type": "spc_t"}}


def test_null_values_are_not_set() -> None:
    """`plugin:` with nothing after it (as in upstream's sample) is null, which the API server prunes: the default."""
    spec = parse_spec({"validator": {"plugin": None, "env": [{"name": "A", "value": "b"}]}, "driver": None})
    assert spec.validator.plugin.env == [] and spec.validator.env[0].name == "A"
    assert spec.driver.enabled is True


UNKNOWN_RAW = {
    "devicePlugn": {"enabled": False},
    "driver": {"fooBar": 1, "manager": {"extra": "x"}},
    "daemonsets": {"tolerations": [{"key": "a", "tolerationSecond": 5}]},
}


def test_unknown_fields_are_errors_naming_the_path() -> None:
    with pytest.raises(PolicyError) as info:
        parse_spec(UNKNOWN_RAW)
    assert info.value.problems == [
        "spec.daemonsets.tolerations[0].tolerationSecond: unknown field (did you mean tolerationSeconds?)",
        "spec.devicePlugn: unknown field (did you mean devicePlugin?)",
        "spec.driver.fooBar: unknown field",
        "spec.driver.manager.extra: unknown field",
    ]


def test_validator_enabled_is_not_an_upstream_field_so_it_is_refused() -> None:
    """Upstream's ValidatorSpec has no `enabled`: the validator always runs (isStateEnabled), as its toolkit-ready
    marker is what the device plugin, GFD, DCGM and the exporter wait for. Ours inherited one from ComponentSpec,
    so `validator.enabled: false` was accepted, beyond upstream, and dropped the validator, leaving those operands
    waiting for good."""
    with pytest.raises(PolicyError) as info:
        parse_spec({"validator": {"enabled": False}})
    assert info.value.problems == ["spec.validator.enabled: unknown field"]


def test_a_name_repeated_in_an_env_list_is_one_variable_the_last_value_in_the_first_place() -> None:
    """As upstream's setContainerEnv applies a list: a repeated name replaces the value in place. Two entries of
    one name reached the containers, which server-side apply refuses; every env list of both CRDs collapses."""
    env = [{"name": "A", "value": "1"}, {"name": "B", "value": "x"}, {"name": "A", "value": "2"}]
    spec = parse_spec({"driver": {"manager": {"env": env}}, "gds": {"env": env}, "validator": {"cuda": {"env": env}}})
    for parsed in (spec.driver.manager.env, spec.gds.env, spec.validator.cuda.env):
        assert [(e.name, e.value) for e in parsed] == [("A", "2"), ("B", "x")]
    driver = NVIDIADriverSpec.model_validate({"env": env})
    assert [(e.name, e.value) for e in driver.env] == [("A", "2"), ("B", "x")]


def test_unknown_fields_when_allowed_are_dropped_and_named() -> None:
    spec = parse_spec(UNKNOWN_RAW, allow_unknown=True)
    assert unknown_fields(spec) == [
        "spec.daemonsets.tolerations[0].tolerationSecond",
        "spec.devicePlugn",
        "spec.driver.fooBar",
        "spec.driver.manager.extra",
    ]
    assert spec.device_plugin.enabled is True  # the misspelt section changed nothing
    assert [t.as_dict() for t in spec.daemonsets.tolerations] == [{"key": "a"}]
    assert "devicePlugn" not in spec.model_dump(by_alias=True)
    assert UNKNOWN_RAW["devicePlugn"] == {"enabled": False}  # the caller's dict is not changed


def test_allowed_unknown_fields_do_not_hide_other_errors() -> None:
    with pytest.raises(PolicyError) as info:
        parse_spec({"newSection": {"a": 1}, "mig": {"strategy": "x"}}, allow_unknown=True)
    assert [p.split(":")[0] for p in info.value.problems] == ["spec.mig.strategy"]


def test_python_names_are_not_wire_names() -> None:
    """The CRD knows only upstream's camelCase names, so parse_spec does too."""
    with pytest.raises(PolicyError) as info:
        parse_spec({"device_plugin": {"enabled": False}})
    assert info.value.problems == ["spec.device_plugin: unknown field (did you mean devicePlugin?)"]


@pytest.mark.parametrize(
    ("annotations", "allowed"),
    [(None, False), ({}, False), ({api.ALLOW_UNKNOWN_ANNOTATION: "true"}, True),
     ({api.ALLOW_UNKNOWN_ANNOTATION: "True"}, True), ({api.ALLOW_UNKNOWN_ANNOTATION: "false"}, False)],
)  # fmt: skip
def test_the_allow_unknown_annotation(annotations: dict[str, str] | None, allowed: bool) -> None:
    assert api.allows_unknown({"name": "p", "annotations": annotations}) is allowed


def test_upstream_field_names_are_not_unknown() -> None:
    """Upstream spells some fields with acronyms (rootFS, vfioPCI, useNvidiaDriverCRD); they must be understood."""
    spec = parse_spec(
        {
            "hostPaths": {"rootFS": "/host"},
            "validator": {"vfioPCI": {"env": [{"name": "A", "value": "b"}]}},
            "driver": {"useNvidiaDriverCRD": True},
        }
    )
    assert unknown_fields(spec) == []
    assert spec.host_paths.root_fs == "/host"
    assert spec.validator.vfio_pci.env[0].value == "b"
    assert spec.driver.use_nvidia_driver_crd is True


@pytest.mark.parametrize("value", [0, 3, "3", "0", "25%", "100%"])
def test_int_or_percent_accepts(value: int | str) -> None:
    spec = parse_spec(
        {
            "driver": {"upgradePolicy": {"maxUnavailable": value}},
            # 0 only with OnDelete: the API server refuses the rolling DaemonSets' 0 (test below)
            "daemonsets": {"rollingUpdate": {"maxUnavailable": value},
                           "updateStrategy": "OnDelete" if str(value) == "0" else "RollingUpdate"},
        }
    )
    assert spec.driver.upgrade_policy.max_unavailable == value
    assert spec.daemonsets.rolling_update.max_unavailable == value


def test_image_alone_is_allowed() -> None:
    spec = parse_spec({"driver": {"image": "registry.example.com/driver:1.2.3"}})
    assert spec.driver.image == "registry.example.com/driver:1.2.3"


# Invalid input: each problem names the field path and the rule

INT_OR_PERCENT = 'must be a non-negative integer or a percentage like "25%"'

INVALID = [
    ("mig.strategy", "bogus", "spec.mig.strategy", "'none', 'single' or 'mixed'"),
    ("driver.kernelModuleType", "closed", "spec.driver.kernelModuleType", "'auto', 'open' or 'proprietary'"),
    ("daemonsets.updateStrategy", "Recreate", "spec.daemonsets.updateStrategy", "'RollingUpdate' or 'OnDelete'"),
    ("sandboxWorkloads.defaultWorkload", "vm", "spec.sandboxWorkloads.defaultWorkload", "'vm-passthrough'"),
    ("driver.imagePullPolicy", "Sometimes", "spec.driver.imagePullPolicy", "'Always', 'IfNotPresent', 'Never' or ''"),
    ("driver.upgradePolicy.maxUnavailable", "abc", "spec.driver.upgradePolicy.maxUnavailable", INT_OR_PERCENT),
    ("driver.upgradePolicy.maxUnavailable", -1, "spec.driver.upgradePolicy.maxUnavailable", INT_OR_PERCENT),
    ("driver.upgradePolicy.maxUnavailable", "-1", "spec.driver.upgradePolicy.maxUnavailable", INT_OR_PERCENT),
    ("driver.upgradePolicy.maxUnavailable", "25 %", "spec.driver.upgradePolicy.maxUnavailable", INT_OR_PERCENT),
    ("daemonsets.rollingUpdate.maxUnavailable", "half", "spec.daemonsets.rollingUpdate.maxUnavailable", INT_OR_PERCENT),
    ("daemonsets.rollingUpdate.maxUnavailable", -2, "spec.daemonsets.rollingUpdate.maxUnavailable", INT_OR_PERCENT),
    ("daemonsets.rollingUpdate.maxUnavailable", 0, "spec.daemonsets.rollingUpdate.maxUnavailable", "may not be 0"),
    ("daemonsets.rollingUpdate.maxUnavailable", "0", "spec.daemonsets.rollingUpdate.maxUnavailable", "may not be 0"),
    ("daemonsets.rollingUpdate.maxUnavailable", "0%", "spec.daemonsets.rollingUpdate.maxUnavailable", "may not be 0"),
    ("driver.upgradePolicy.maxParallelUpgrades", -1, "spec.driver.upgradePolicy.maxParallelUpgrades", ">= 0"),
    (
        "driver.upgradePolicy.podDeletion.timeoutSeconds",
        -5,
        "spec.driver.upgradePolicy.podDeletion.timeoutSeconds",
        ">= 0",
    ),
    ("driver.upgradePolicy.drain.timeoutSeconds", -1, "spec.driver.upgradePolicy.drain.timeoutSeconds", ">= 0"),
    (
        "driver.upgradePolicy.waitForCompletion.timeoutSeconds",
        -1,
        "spec.driver.upgradePolicy.waitForCompletion.timeoutSeconds",
        ">= 0",
    ),
    ("dcgm.hostPort", 2**31, "spec.dcgm.hostPort", "<= 2147483647"),  # an int32, as upstream's CRD
]


@pytest.mark.parametrize(("path", "value", "where", "rule"), INVALID, ids=[f"{c[0]}={c[1]!r}" for c in INVALID])
def test_invalid_value_is_named_by_path_and_rule(path: str, value: Any, where: str, rule: str) -> None:
    problems = problems_of(nested(path, value))
    assert problems, "no problem reported"
    for line in problems:
        assert line.startswith(f"{where}: "), line
    text = " ".join(problems).replace("greater than or equal to ", ">= ").replace("less than or equal to ", "<= ")
    assert rule in text, problems


MONITORS = ["dcgmExporter.serviceMonitor", "operator.metrics.serviceMonitor"]


@pytest.mark.parametrize("monitor", MONITORS)
@pytest.mark.parametrize("field", ["interval", "scrapeTimeout"])
@pytest.mark.parametrize("value", ["1.5m", "30 s", "30sec", "abc", "30s\n"])
def test_service_monitor_durations_are_prometheus_durations(monitor: str, field: str, value: str) -> None:
    """Upstream's interval/scrapeTimeout are promv1.Duration, whose CRD pattern refuses these at admission. Ours were
    plain strings: the policy was taken and the ServiceMonitor rendered from it refused (422) on every pass."""
    problems = problems_of(nested(f"{monitor}.{field}", value))
    assert problems and all(p.startswith(f"spec.{monitor}.{field}: ") for p in problems), problems


@pytest.mark.parametrize("monitor", MONITORS)
@pytest.mark.parametrize("value", ["15s", "1m", "1h30m", "500ms", "0", ""])
def test_service_monitor_durations_accepted(monitor: str, value: str) -> None:
    spec = parse_spec(nested(monitor, {"enabled": True, "interval": value, "scrapeTimeout": value}))
    monitors = {"dcgmExporter.serviceMonitor": spec.dcgm_exporter.service_monitor,
                "operator.metrics.serviceMonitor": spec.operator.metrics.service_monitor}  # fmt: skip
    assert monitors[monitor].interval == monitors[monitor].scrape_timeout == value


@pytest.mark.parametrize("port", [0, 70000, -1])
def test_dcgm_host_port_takes_any_int32_as_upstream(port: int) -> None:
    """Upstream's CRD takes dcgm.hostPort as any int32: deprecated and bound by nothing (0 was its "default 5555"
    when it was used). We refused 0 and anything past 65535, so such an upstream ClusterPolicy was not admitted."""
    assert parse_spec({"dcgm": {"hostPort": port}}).dcgm.host_port == port


def test_dcgm_exporter_service_type_empty_is_the_default() -> None:
    """TransformDCGMExporterService skips an empty service.type (upstream's CRD: any string; its chart writes
    `type: ""` for `--set dcgmExporter.service.type=`). We refused "", so that ClusterPolicy was not admitted."""
    assert parse_spec({"dcgmExporter": {"service": {"type": ""}}}).dcgm_exporter.service.type == "ClusterIP"


@pytest.mark.parametrize("value", ["all 1g.10gb", "team/layout", "x" * 64, "-all-disabled", "all-disabled\n"])
def test_a_mig_default_that_is_no_label_value_is_invalid(value: str) -> None:
    """migManager.config.default is seeded as the nvidia.com/mig.config label of MIG-capable nodes without one
    (beyond upstream, whose CRD takes only all-disabled or ""). Any string was taken, so one that is no label value
    went into every MIG-capable node's label patch, which the API server refused whole (no gpu.present or deploy
    label, so no operand on those nodes), and the status named the node's label, not the field."""
    problems = problems_of({"migManager": {"config": {"default": value}}})
    assert len(problems) == 1 and problems[0].startswith("spec.migManager.config.default: "), problems


@pytest.mark.parametrize("value", ["", "all-disabled", "all-1g.10gb", "custom_layout.v2", "A" * 63])
def test_a_mig_default_may_be_any_label_value(value: str) -> None:
    assert parse_spec({"migManager": {"config": {"default": value}}}).mig_manager.config.default == value


@pytest.mark.parametrize("value", ["32GB", "512MB", "1 Gi", "lots", "1Gi\n", ""])
def test_resource_quantities_the_api_server_refuses_are_invalid(value: str) -> None:
    """Upstream's CRD gives every `resources.limits`/`requests` value the Kubernetes quantity pattern. Ours had
    none: `memory: 512MB` passed `render` (exit 0) and the API server, and the operand DaemonSet carrying it was
    then refused (422) on every pass."""
    problems = problems_of({"devicePlugin": {"resources": {"limits": {"memory": value}, "requests": {"cpu": value}}}})
    assert problems == [
        "spec.devicePlugin.resources.limits.memory: must be a quantity such as 2, 500m or 1Gi",
        "spec.devicePlugin.resources.requests.cpu: must be a quantity such as 2, 500m or 1Gi",
    ]


@pytest.mark.parametrize(
    ("resources", "problem"),
    [
        ({"limits": {"memory": "-1Gi"}}, "limits.memory: must not be negative"),
        ({"requests": {"cpu": -1}}, "requests.cpu: must not be negative"),
        ({"limits": {"memory": "1Gi"}, "requests": {"memory": "2Gi"}},
         "requests.memory: must be at most its limit (1Gi)"),
        ({"limits": {"cpu": 1}, "requests": {"cpu": "1001m"}}, "requests.cpu: must be at most its limit (1)"),
    ],
    ids=["negative-limit", "negative-request", "request-above-limit", "request-above-limit-units"],
)
def test_resource_quantities_a_pod_refuses_are_invalid(resources: dict[str, Any], problem: str) -> None:
    """The quantity pattern (upstream's, which admits a sign) let a negative quantity through, and nothing compared a
    request with its limit (the CRD's description says "at most its limit"): render accepted both, and every pass's
    operand DaemonSet was refused by pod validation (422, naming the DaemonSet, not the field)."""
    assert problems_of({"driver": {"resources": resources}}) == [f"spec.driver.resources.{problem}"]


def test_a_request_at_or_below_its_limit_in_other_units_is_accepted() -> None:
    resources = {"limits": {"memory": "1Gi", "cpu": "1E3", "nvidia.com/gpu": 1},
                 "requests": {"memory": "1024Mi", "cpu": "+.5", "ephemeral-storage": "1"}}  # fmt: skip
    spec = parse_spec({"driver": {"resources": resources}})
    assert spec.driver.resources is not None and spec.driver.resources.requests["cpu"] == "+.5"


@pytest.mark.parametrize("value", [0, 2, "2", "100m", "0.5", ".5", "1Gi", "256Mi", "1e3", "1.5k"])
def test_resource_quantities_accepted(value: int | str) -> None:
    spec = parse_spec({"driver": {"resources": {"limits": {"cpu": value}, "requests": {"memory": value}}}})
    assert spec.driver.resources is not None
    assert spec.driver.resources.limits == {"cpu": value} and spec.driver.resources.requests == {"memory": value}


def test_rolling_max_unavailable_zero_is_refused_only_where_it_is_rendered() -> None:
    """The operand DaemonSets get maxUnavailable and no maxSurge (0), and the API server refuses a DaemonSet with
    both 0 ("may not be 0 when `maxSurge` is 0"); 0 passed, and every operand DaemonSet failed to apply. With
    updateStrategy OnDelete no rollingUpdate is rendered, so 0 is harmless there."""
    for zero in (0, "0", "0%", "00"):
        (problem,) = problems_of({"daemonsets": {"rollingUpdate": {"maxUnavailable": zero}}})
        assert problem.startswith("spec.daemonsets.rollingUpdate.maxUnavailable: rollingUpdate.maxUnavailable may "
                                  "not be 0"), problem
        parse_spec({"daemonsets": {"updateStrategy": "OnDelete", "rollingUpdate": {"maxUnavailable": zero}}})
    for fine in (1, "10", "10%", ""):
        parse_spec({"daemonsets": {"rollingUpdate": {"maxUnavailable": fine}}})


@pytest.mark.parametrize("value", ["101%", "150%", "0200%"])
def test_rolling_max_unavailable_above_100_percent_is_refused_only_where_it_is_rendered(value: str) -> None:
    """Kubernetes refuses a DaemonSet's maxUnavailable above 100% ("must not be greater than 100%"); "150%" passed,
    and with RollingUpdate every operand DaemonSet but the driver's failed to apply, the status naming the
    DaemonSet's field. With OnDelete no rollingUpdate is rendered; an integer has no bound there."""
    (problem,) = problems_of({"daemonsets": {"rollingUpdate": {"maxUnavailable": value}}})
    assert problem == f"spec.daemonsets.rollingUpdate.maxUnavailable: {api._OVER_100_MESSAGE}"
    parse_spec({"daemonsets": {"updateStrategy": "OnDelete", "rollingUpdate": {"maxUnavailable": value}}})
    for fine in ("100%", "0100%", 1000, "1000"):
        parse_spec({"daemonsets": {"rollingUpdate": {"maxUnavailable": fine}}})
    # driver.upgradePolicy.maxUnavailable is the operator's own count, not a DaemonSet's: upstream takes "150%".
    assert parse_spec({"driver": {"upgradePolicy": {"maxUnavailable": value}}}).driver.upgrade_policy.max_unavailable


@pytest.mark.parametrize(
    ("toleration", "problem"),
    [
        ({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule", "tolerationSeconds": 300},
         "effect: must be NoExecute when tolerationSeconds is set"),
        ({"key": "nvidia.com/gpu", "operator": "exists"},
         "operator: Input should be '', 'Equal', 'Exists', 'Lt' or 'Gt'"),
        ({"key": "nvidia.com/gpu", "operator": "Exists", "value": "present"},
         "value: must be empty when operator is Exists"),
        ({"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedul"},
         "effect: Input should be '', 'NoSchedule', 'PreferNoSchedule' or 'NoExecute'"),
        ({"operator": "Equal", "value": "x"}, "operator: must be Exists when key is empty (which matches every taint)"),
        ({"key": "gpu type", "operator": "Exists"}, "key: must be a name such as \"team\" or \"example.com/team\""),
        ({"key": "Example.com/gpu", "operator": "Exists"}, "key: must be a name such as"),
        ({"key": "gpu", "value": "a100 80gb"}, "value: must be a label value"),
        ({"key": "gpu", "operator": "Gt", "value": "05"}, "value: must be an integer such as 5 with operator Gt"),
    ],
)  # fmt: skip
def test_a_toleration_the_api_server_refuses_is_named(toleration: dict[str, Any], problem: str) -> None:
    """daemonsets.tolerations go into every operand pod after the operator's own nvidia.com/gpu toleration, and
    Kubernetes' ValidateTolerations refuses these (checked against the API server). Any strings were taken, so every
    operand DaemonSet failed to apply, the status naming `spec.template.spec.tolerations[1]` (one off from the
    user's list); now the toleration's own field is named. The operator and effect enums are the CRD's too."""
    problems = problems_of({"daemonsets": {"tolerations": [toleration]}})
    assert len(problems) == 1 and problems[0].startswith(f"spec.daemonsets.tolerations[0].{problem}"), problems


def test_tolerations_the_api_server_takes_are_accepted() -> None:
    tolerations = [
        {"operator": "Exists"},
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
        {"key": "example.com/dedicated", "value": "gpu", "effect": "NoExecute", "tolerationSeconds": 300},
        {"key": "team", "operator": "Equal", "value": "", "effect": ""},
        {"key": "node.example.com/slots", "operator": "Gt", "value": "-5"},  # with the feature gate
        {"key": "x" * 63, "operator": "", "value": "A" * 63},
    ]
    spec = parse_spec({"daemonsets": {"tolerations": tolerations}})
    assert [t.as_dict() for t in spec.daemonsets.tolerations] == tolerations


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("labels", {"team": "gpu team"}, "labels.team: String should match pattern"),
        ("labels", {"app": "x" * 64}, "labels.app: String should have at most 63 characters"),
        ("labels", {"bad key": "x"}, 'labels: label key "bad key" must be a name such as "team" or "example.com/team"'),
        ("labels", {"Example.com/team": "x"}, 'labels: label key "Example.com/team" must be a name'),
        ("labels", {"example.com/" + "x" * 64: "x"}, "labels: label key"),
        ("annotations", {"a/b/c": "any value"}, 'annotations: annotation key "a/b/c" must be a name'),
    ],
)  # fmt: skip
def test_daemonsets_labels_that_are_not_labels_are_named(field: str, value: dict[str, str], problem: str) -> None:
    """daemonsets.labels go on every operand DaemonSet and its pod template, which Kubernetes' ValidateLabels
    refuses with a value with a space or over 63 characters or a key that is not a qualified name (annotations:
    the key, case aside). Any strings were taken, so every operand DaemonSet failed to apply; now the field is
    named, as migManager.config.default is against the same rule."""
    problems = problems_of({"daemonsets": {field: value}})
    assert len(problems) == 1 and problems[0].startswith(f"spec.daemonsets.{problem}"), problems


def test_labels_and_annotations_the_api_server_takes_are_accepted() -> None:
    labels = {"team": "", "example.com/team": "gpu_a-1.x", "x" * 63: "A" * 63}
    annotations = {"Example.com/Note": "any text, spaces included", "a_b": ""}
    spec = parse_spec({"daemonsets": {"labels": labels, "annotations": annotations}})
    assert (spec.daemonsets.labels, spec.daemonsets.annotations) == (labels, annotations)


@pytest.mark.parametrize(
    ("section", "fields", "missing"),
    [
        ("driver", {"repository": "nvcr.io/nvidia"}, "missing image, version"),
        ("driver", {"repository": "nvcr.io/nvidia", "image": "driver"}, "missing version"),
        ("toolkit", {"image": "container-toolkit", "version": "v1.18.1"}, "missing repository"),
        ("devicePlugin", {"version": "v0.18.1"}, "missing repository, image"),
        ("dcgmExporter", {"repository": "nvcr.io/nvidia/k8s", "version": "4.4.2"}, "missing image"),
    ],
)
def test_partial_image_fields_are_rejected(section: str, fields: dict[str, str], missing: str) -> None:
    assert problems_of({section: fields}) == [
        f"spec.{section}: image: set repository, image and version together (or image alone); {missing}"
    ]


@pytest.mark.parametrize(
    ("spec", "needs"),
    [
        ({"cdi": {"enabled": False, "nriPluginEnabled": True}}, "cdi.enabled"),
        ({"cdi": {"nriPluginEnabled": True}, "toolkit": {"enabled": False}}, "toolkit.enabled"),
    ],
)
def test_nri_plugin_without_cdi_or_the_toolkit_is_refused(spec: dict[str, Any], needs: str) -> None:
    """Upstream validateClusterPolicySpec refuses both: the plugin runs in the toolkit and injects CDI devices."""
    (problem,) = problems_of(spec)
    assert problem.startswith("spec.cdi.nriPluginEnabled: the NRI plugin needs ") and needs in problem
    assert parse_spec({"cdi": {"nriPluginEnabled": True}}).cdi.nri_plugin_enabled


def test_partial_image_fields_in_a_nested_component() -> None:
    problems = problems_of({"driver": {"manager": {"repository": "nvcr.io/nvidia/cloud-native"}}})
    assert len(problems) == 1
    assert problems[0].startswith("spec.driver.manager: image: ")


@pytest.mark.parametrize(
    ("spec", "where", "rule"),
    [
        ({"driver": {"enabled": "maybe"}}, "spec.driver.enabled", "valid boolean"),
        ({"driver": "yes"}, "spec.driver", "valid dictionary"),
        ({"toolkit": {"args": "--verbose"}}, "spec.toolkit.args", "valid list"),
        ({"toolkit": {"env": {"A": "b"}}}, "spec.toolkit.env", "valid list"),
        ({"driver": {"env": [{"name": "A", "value": 1}]}}, "spec.driver.env[0].value", "valid string"),
        ({"driver": {"env": [{"name": "A", "value": True}]}}, "spec.driver.env[0].value", "valid string"),
        ({"driver": {"env": [{"value": "x"}]}}, "spec.driver.env[0].name", "Field required"),
        ({"daemonsets": {"labels": ["a"]}}, "spec.daemonsets.labels", "valid dictionary"),
        ({"daemonsets": {"tolerations": {"key": "x"}}}, "spec.daemonsets.tolerations", "valid list"),
        (
            {"driver": {"upgradePolicy": {"maxParallelUpgrades": "two"}}},
            "spec.driver.upgradePolicy.maxParallelUpgrades",
            "valid integer",
        ),
        ({"dcgm": {"hostPort": "abc"}}, "spec.dcgm.hostPort", "valid integer"),
        ({"driver": {"upgradePolicy": {"maxUnavailable": True}}}, "spec.driver.upgradePolicy.maxUnavailable",
         INT_OR_PERCENT),
        ({"driver": {"startupProbe": {"initialDelay": 5}}}, "spec.driver.startupProbe.initialDelay", "unknown field"),
        (
            {"driver": {"env": [{"name": "A", "value": "b", "valueFrom": {}}]}},
            "spec.driver.env[0].valueFrom",
            "unknown field",
        ),
        ({"driver": {"resources": {"limits": {"cpu": [1]}}}}, "spec.driver.resources.limits.cpu", "a quantity"),
    ],
)
def test_wrong_types_are_named_by_path(spec: dict[str, Any], where: str, rule: str) -> None:
    problems = problems_of(spec)
    assert problems
    for line in problems:
        assert line.startswith(f"{where}: "), line
    assert rule in " ".join(problems), problems


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ({"driver": {"upgradePolicy": {"maxUnavailable": 1.5}}},
         f"spec.driver.upgradePolicy.maxUnavailable: {INT_OR_PERCENT}"),
        ({"daemonsets": {"rollingUpdate": {"maxUnavailable": True}}},
         f"spec.daemonsets.rollingUpdate.maxUnavailable: {INT_OR_PERCENT}"),
        ({"driver": {"resources": {"limits": {"cpu": 0.5}}}},
         "spec.driver.resources.limits.cpu: must be a quantity such as 2, 500m or 1Gi"),
        ({"driver": {"resources": {"requests": {"memory": {"Gi": 1}}}}},
         "spec.driver.resources.requests.memory: must be a quantity such as 2, 500m or 1Gi"),
    ],
)  # fmt: skip
def test_an_int_or_string_of_the_wrong_type_is_one_problem_naming_the_rule(spec: dict[str, Any], problem: str) -> None:
    """`maxUnavailable: 1.5`, `maxUnavailable: true` or `cpu: 0.5` in a file given to `render` printed two
    contradicting lines for the field, pydantic's union branches ("Input should be a valid integer", "... a valid
    string"), neither naming the rule; PolicyError promises one line per problem naming the field and the rule."""
    assert problems_of(spec) == [problem]


def test_every_problem_is_reported_once_in_stable_order() -> None:
    spec = {
        "mig": {"strategy": "bogus"},
        "driver": {"kernelModuleType": "x", "upgradePolicy": {"maxParallelUpgrades": -1}},
        "daemonsets": {"updateStrategy": "Foo"},
    }
    problems = problems_of(spec)
    assert [p.split(":")[0] for p in problems] == [
        "spec.daemonsets.updateStrategy",
        "spec.driver.kernelModuleType",
        "spec.driver.upgradePolicy.maxParallelUpgrades",
        "spec.mig.strategy",
    ]
    assert problems == problems_of(copy.deepcopy(spec))


def test_policy_error_message_is_one_line_per_problem() -> None:
    with pytest.raises(PolicyError) as info:
        parse_spec({"mig": {"strategy": "x"}, "dcgm": {"hostPort": "abc"}})
    assert str(info.value).splitlines() == info.value.problems
    assert len(info.value.problems) == 2


@pytest.mark.parametrize("spec", [[1, 2], [], 0, False, "x"])
def test_a_spec_that_is_not_a_mapping(spec: Any) -> None:
    """Only a missing or null spec is the empty one. `spec: []`, `0` or `false` (falsy) were read as `{}` and
    rendered the default stack; the API server refuses them (the CRD's spec is an object)."""
    problems = problems_of(spec)
    assert len(problems) == 1 and problems[0].startswith("spec: ")


def test_a_null_spec_is_the_empty_one() -> None:
    assert parse_spec(None) == parse_spec({})


# Image resolution


def component(**fields: str) -> ComponentSpec:
    return ComponentSpec.model_validate(fields)


def test_image_from_repository_image_version() -> None:
    spec = component(repository="nvcr.io/nvidia", image="driver", version="580.105.08")
    assert images.resolve(spec, "driver") == "nvcr.io/nvidia/driver:580.105.08"


def test_image_with_sha256_digest() -> None:
    digest = "sha256:" + "a" * 64
    spec = component(repository="registry.local/nvidia", image="k8s-device-plugin", version=digest)
    assert images.resolve(spec, "device-plugin") == f"registry.local/nvidia/k8s-device-plugin@{digest}"


def test_image_alone_is_verbatim() -> None:
    spec = component(image="registry.local/mirror/toolkit:custom")
    assert images.resolve(spec, "toolkit") == "registry.local/mirror/toolkit:custom"
    assert images.resolve(spec, "toolkit", "ignored-tag") == "registry.local/mirror/toolkit:custom"


@pytest.mark.parametrize("key", sorted(images.DEFAULTS))
def test_default_image_when_nothing_is_set(key: str) -> None:
    repo, image, version = images.DEFAULTS[key]
    assert images.resolve(component(), key) == f"{repo}/{image}:{version}"


def test_default_versions_follow_the_v26_7_matrix() -> None:
    assert images.DEFAULTS["driver"][2] == "595.91.07"
    assert images.DEFAULTS["toolkit"][2] == "v1.20.0"
    assert images.DEFAULTS["device-plugin"][2] == images.DEFAULTS["gfd"][2] == "v0.20.0"
    assert images.DEFAULTS["dcgm-exporter"][2].startswith("4.6.0-4.8.3")
    assert images.DEFAULTS["mig-manager"][2] == "v0.15.0"
    assert images.DEFAULTS["driver-manager"][2] == "v0.12.0"


def test_version_override_replaces_only_the_tag() -> None:
    spec = component(repository="nvcr.io/nvidia", image="driver", version="580.105.08")
    assert images.resolve(spec, "driver", "580.105.08-ubuntu22.04") == "nvcr.io/nvidia/driver:580.105.08-ubuntu22.04"
    assert images.resolve(component(), "driver", "595.91.07-rhel9.4") == "nvcr.io/nvidia/driver:595.91.07-rhel9.4"


def test_version_of() -> None:
    assert images.version_of(component(repository="r", image="i", version="1.0"), "driver") == "1.0"
    assert images.version_of(component(image="registry:5000/x/driver:2.0"), "driver") == "2.0"
    assert images.version_of(component(image="registry:5000/x/driver"), "driver") == "595.91.07"
    assert images.version_of(component(), "driver") == "595.91.07"


def test_empty_strings_upstream_reads_as_unset_are_accepted() -> None:
    """daemonsets.priorityClassName, daemonsets.rollingUpdate.maxUnavailable and a component's imagePullPolicy are
    plain strings upstream, "" meaning the default; an existing upstream policy with them must not be refused."""
    spec = parse_spec({"daemonsets": {"priorityClassName": "", "rollingUpdate": {"maxUnavailable": ""}},
                       "toolkit": {"imagePullPolicy": ""}})  # fmt: skip
    assert spec.daemonsets.priority_class_name == "system-node-critical"
    assert spec.daemonsets.rolling_update.max_unavailable == "1"
    assert spec.toolkit.image_pull_policy is None
    with pytest.raises(PolicyError, match="imagePullPolicy"):
        parse_spec({"toolkit": {"imagePullPolicy": "Sometimes"}})
    with pytest.raises(PolicyError, match="maxUnavailable"):
        parse_spec({"daemonsets": {"rollingUpdate": {"maxUnavailable": "x"}}})
