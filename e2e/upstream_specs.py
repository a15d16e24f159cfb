"""Operand pod templates shaped like upstream v26.7's (test data for the node model; written from the contracts in
REFERENCE §11 and upstream's ``assets/`` and transform code, not copied).

Each function returns a pod template (``metadata`` + ``spec``); ``pod`` places one on a node and ``daemonset``
wraps one for a cluster.  ``CONFIG_MAPS`` holds the scripts the templates mount.
"""

from __future__ import annotations

import copy
import hashlib
from typing import Any

NAMESPACE = "gpu-operator"
# Upstream's DaemonSet names, also their pods' `app` label (ours keep them).
DRIVER_APP, TOOLKIT_APP, VALIDATOR_APP = ("nvidia-driver-daemonset", "nvidia-container-toolkit-daemonset",
                                          "nvidia-operator-validator")
MANAGED = {"app.kubernetes.io/managed-by": "gpu-operator"}
VALIDATOR_IMAGE = "nvcr.io/nvidia/gpu-operator:v26.7.0"
TOOLKIT_IMAGE = "nvcr.io/nvidia/k8s/container-toolkit:v1.20.0"
PLUGIN_IMAGE = "nvcr.io/nvidia/k8s-device-plugin:v0.20.0"
MANAGER_IMAGE = "nvcr.io/nvidia/cloud-native/k8s-driver-manager:v0.12.0"
ROOT = {"privileged": True, "runAsUser": 0}

STARTUP_PROBE = """#!/bin/sh
set -eu
DIR="/run/nvidia/validations"
READY="${DIR}/.driver-ctr-ready"
mkdir -p "${DIR}"
if [ ! -f /sys/module/nvidia/refcnt ]; then echo "nvidia module not loaded"; exit 1; fi
nvidia-smi || exit 1
{
  echo "GDRCOPY_ENABLED: ${GDRCOPY_ENABLED:-false}"
  echo "GDS_ENABLED: ${GDS_ENABLED:-false}"
  echo "GPU_DIRECT_RDMA_ENABLED: ${GPU_DIRECT_RDMA_ENABLED:-false}"
} > "${READY}.tmp"
mv "${READY}.tmp" "${READY}"
"""

TOOLKIT_ENTRYPOINT = """#!/bin/sh
until [ -f /run/nvidia/validations/driver-ready ]
do
  echo "waiting for the driver validation"
  sleep 5
done
set -o allexport
. /run/nvidia/validations/driver-ready
sleep 5
exec nvidia-toolkit
"""

PLUGIN_ENTRYPOINT = """#!/bin/sh
until [ -f /run/nvidia/validations/driver-ready ]; do echo "waiting for the driver validation"; sleep 5; done
set -o allexport
. /run/nvidia/validations/driver-ready
echo "Starting nvidia-device-plugin"
exec nvidia-device-plugin
"""

CONFIG_MAPS: dict[str, dict[str, str]] = {
    "nvidia-driver-startup-probe": {"startup-probe.sh": STARTUP_PROBE},
    "nvidia-container-toolkit-entrypoint": {"entrypoint.sh": TOOLKIT_ENTRYPOINT},
    "nvidia-device-plugin-entrypoint": {"entrypoint.sh": PLUGIN_ENTRYPOINT},
}


def _host(name: str, path: str, type_: str | None = None) -> dict[str, Any]:
    hp: dict[str, Any] = {"path": path}
    if type_:
        hp["type"] = type_
    return {"name": name, "hostPath": hp}


def _mount(name: str, path: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "mountPath": path, **extra}


def _ns_env() -> dict[str, Any]:
    return {"name": "OPERATOR_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}


def _node_env() -> dict[str, Any]:
    return {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}


def _template(app: str, spec: dict[str, Any], component: str | None = None) -> dict[str, Any]:
    labels = {"app": app, **MANAGED}
    if component:
        labels["app.kubernetes.io/component"] = component
    spec.setdefault("tolerations", [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}])
    return {"metadata": {"labels": labels}, "spec": spec}


def driver_validation(*, root: bool = True) -> dict[str, Any]:
    """The ``driver-validation`` init container (validator and toolkit pods)."""
    return {
        "name": "driver-validation", "image": VALIDATOR_IMAGE, "command": ["sh", "-c"], "args": ["nvidia-validator"],
        "env": [{"name": "WITH_WAIT", "value": "true"}, {"name": "COMPONENT", "value": "driver"}, _ns_env()],
        "securityContext": dict(ROOT) if root else {"privileged": True},
        "volumeMounts": [_mount("host-root", "/host", readOnly=True, mountPropagation="HostToContainer"),
                         _mount("driver-install-dir", "/run/nvidia/driver", mountPropagation="HostToContainer"),
                         _mount("run-nvidia-validations", "/run/nvidia/validations", mountPropagation="Bidirectional"),
                         _mount("host-dev-char", "/host-dev-char")],
    }


def wait_for(file: str, mount: str = "run-nvidia-validations", path: str = "/run/nvidia/validations",
             image: str = VALIDATOR_IMAGE, name: str | None = None) -> dict[str, Any]:
    """An init container that loops until ``file`` (under /run/nvidia/validations) exists."""
    return {"name": name or f"{file.split('-')[0]}-validation", "image": image, "command": ["sh", "-c"],
            "args": [f"until [ -f /run/nvidia/validations/{file} ]; do echo waiting for {file}; sleep 5; done"],
            "securityContext": {"privileged": True},
            "volumeMounts": [_mount(mount, path, mountPropagation="HostToContainer")]}


def driver(version: str = "595.91.07", os: str = "ubuntu22.04") -> dict[str, Any]:
    spec = {
        "serviceAccountName": "nvidia-driver", "hostPID": True, "priorityClassName": "system-node-critical",
        "initContainers": [{
            "name": "k8s-driver-manager", "image": MANAGER_IMAGE, "command": ["driver-manager"],
            "args": ["uninstall_driver"], "securityContext": {"privileged": True},
            "env": [_node_env(), {"name": "NVIDIA_VISIBLE_DEVICES", "value": "void"}, _ns_env()],
            "volumeMounts": [_mount("run-nvidia", "/run/nvidia", mountPropagation="Bidirectional"),
                             _mount("host-root", "/host", readOnly=True, mountPropagation="HostToContainer")],
        }],
        "containers": [{
            "name": "nvidia-driver-ctr", "image": f"nvcr.io/nvidia/driver:{version}-{os}",
            "command": ["nvidia-driver"], "args": ["init"],
            "securityContext": {"privileged": True, "seLinuxOptions": {"level": "s0"}},
            "env": [_node_env()],
            "startupProbe": {"exec": {"command": ["sh", "/usr/local/bin/startup-probe.sh"]},
                             "initialDelaySeconds": 60, "periodSeconds": 10, "failureThreshold": 120,
                             "timeoutSeconds": 60},
            "lifecycle": {"preStop": {"exec": {"command": [
                "/bin/sh", "-c", "rm -f /run/nvidia/validations/.driver-ctr-ready "
                                 "/run/nvidia/validations/.driver-daemons-status"]}}},
            "volumeMounts": [_mount("run-nvidia", "/run/nvidia", mountPropagation="Bidirectional"),
                             _mount("host-os-release", "/host-etc/os-release", readOnly=True),
                             _mount("driver-startup-probe-script", "/usr/local/bin/startup-probe.sh",
                                    subPath="startup-probe.sh")],
        }],
        "volumes": [_host("run-nvidia", "/run/nvidia", "DirectoryOrCreate"), _host("host-root", "/"),
                    _host("host-os-release", "/etc/os-release"),
                    {"name": "driver-startup-probe-script",
                     "configMap": {"name": "nvidia-driver-startup-probe", "defaultMode": 0o755}}],
    }
    return _template("nvidia-driver-daemonset", spec, "nvidia-driver")


def toolkit(runtime: str = "containerd", *, cdi: bool = True, fixed: bool = True) -> dict[str, Any]:
    """The toolkit pod; ``fixed=False`` is the old one: its init container only waits for ``driver-ready``."""
    env: list[dict[str, Any]] = [
        {"name": "ROOT", "value": "/usr/local/nvidia"},
        {"name": "NVIDIA_CONTAINER_RUNTIME_MODES_CDI_DEFAULT_KIND", "value": "management.nvidia.com/gpu"},
        {"name": "NVIDIA_VISIBLE_DEVICES", "value": "void"},
        {"name": "TOOLKIT_PID_FILE", "value": "/run/nvidia/toolkit/toolkit.pid"},
    ]
    if cdi:
        env += [{"name": "CDI_ENABLED", "value": "true"}, {"name": "NVIDIA_RUNTIME_SET_AS_DEFAULT", "value": "false"},
                {"name": "NVIDIA_CONTAINER_RUNTIME_MODE", "value": "cdi"},
                {"name": "CRIO_CONFIG_MODE", "value": "config"}]
    elif runtime == "crio":
        env.append({"name": "CRIO_CONFIG_MODE", "value": "hook"})
    env.append({"name": "RUNTIME", "value": runtime})
    mounts = [_mount("nvidia-container-toolkit-entrypoint", "/bin/entrypoint.sh", subPath="entrypoint.sh",
                     readOnly=True),
              _mount("toolkit-root", "/run/nvidia/toolkit"),
              _mount("run-nvidia-validations", "/run/nvidia/validations"),
              _mount("toolkit-install-dir", "/usr/local/nvidia"),
              _mount("crio-hooks", "/usr/share/containers/oci/hooks.d"),
              _mount("driver-install-dir", "/driver-root", mountPropagation="HostToContainer"),
              _mount("host-root", "/host", readOnly=True, mountPropagation="HostToContainer"),
              _mount("cdi-root", "/var/run/cdi")]
    volumes = [{"name": "nvidia-container-toolkit-entrypoint",
                "configMap": {"name": "nvidia-container-toolkit-entrypoint", "defaultMode": 0o700}},
               _host("toolkit-root", "/run/nvidia/toolkit", "DirectoryOrCreate"),
               _host("run-nvidia-validations", "/run/nvidia/validations", "DirectoryOrCreate"),
               _host("driver-install-dir", "/run/nvidia/driver", "DirectoryOrCreate"),
               _host("host-root", "/"), _host("toolkit-install-dir", "/usr/local/nvidia"),
               _host("crio-hooks", "/usr/share/containers/oci/hooks.d" if runtime == "crio"
                     else "/run/containers/oci/hooks.d"),
               _host("host-dev-char", "/dev/char"), _host("cdi-root", "/var/run/cdi", "DirectoryOrCreate")]
    if runtime == "containerd":
        env += [{"name": "CONTAINERD_RUNTIME_CLASS", "value": "nvidia"},
                {"name": "RUNTIME_CONFIG", "value": "/runtime/config-dir/config.toml"},
                {"name": "CONTAINERD_CONFIG", "value": "/runtime/config-dir/config.toml"},
                {"name": "RUNTIME_DROP_IN_CONFIG", "value": "/runtime/config-dir.d/99-nvidia.toml"},
                {"name": "RUNTIME_DROP_IN_CONFIG_HOST_PATH", "value": "/etc/containerd/conf.d/99-nvidia.toml"},
                {"name": "RUNTIME_SOCKET", "value": "/runtime/sock-dir/containerd.sock"},
                {"name": "CONTAINERD_SOCKET", "value": "/runtime/sock-dir/containerd.sock"}]
        mounts += [_mount("containerd-config", "/runtime/config-dir/"),
                   _mount("containerd-drop-in-config", "/runtime/config-dir.d/"),
                   _mount("containerd-socket", "/runtime/sock-dir/")]
        volumes += [_host("containerd-config", "/etc/containerd", "DirectoryOrCreate"),
                    _host("containerd-drop-in-config", "/etc/containerd/conf.d", "DirectoryOrCreate"),
                    _host("containerd-socket", "/run/containerd")]
    else:
        env += [{"name": "RUNTIME_CONFIG", "value": "/runtime/config-dir/config.toml"},
                {"name": "CRIO_CONFIG", "value": "/runtime/config-dir/config.toml"},
                {"name": "RUNTIME_DROP_IN_CONFIG", "value": "/runtime/config-dir.d/99-nvidia.conf"},
                {"name": "RUNTIME_DROP_IN_CONFIG_HOST_PATH", "value": "/etc/crio/crio.conf.d/99-nvidia.conf"}]
        mounts += [_mount("crio-config", "/runtime/config-dir/"),
                   _mount("crio-drop-in-config", "/runtime/config-dir.d/")]
        volumes += [_host("crio-config", "/etc/crio", "DirectoryOrCreate"),
                    _host("crio-drop-in-config", "/etc/crio/crio.conf.d", "DirectoryOrCreate")]
    init = driver_validation() if fixed else wait_for("driver-ready", name="driver-validation")
    spec = {
        "serviceAccountName": "nvidia-container-toolkit", "hostPID": True,
        "initContainers": [init],
        "containers": [{"name": "nvidia-container-toolkit-ctr", "image": TOOLKIT_IMAGE,
                        "command": ["/bin/sh", "-c"], "args": ["/bin/entrypoint.sh"], "env": env,
                        "securityContext": {"privileged": True}, "volumeMounts": mounts}],
        "volumes": volumes,
    }
    return _template("nvidia-container-toolkit-daemonset", spec, "nvidia-container-toolkit")


def validator(runtime: str = "containerd", *, cdi: bool = True, root: bool = True, workload_env: bool = True,
              visible_devices: bool = True, plugin_workload: bool = False) -> dict[str, Any]:
    """The operator validator; the flags take away one contract each."""
    runtime_class = None if runtime == "crio" and not cdi else "nvidia"
    sc = dict(ROOT) if root else {"privileged": True}
    validations = [_mount("run-nvidia-validations", "/run/nvidia/validations", mountPropagation="Bidirectional")]

    def component(name: str, *extra: dict[str, Any]) -> dict[str, Any]:
        return {"name": f"{name}-validation", "image": VALIDATOR_IMAGE, "command": ["sh", "-c"],
                "args": ["nvidia-validator"], "securityContext": dict(sc), "volumeMounts": list(validations),
                "env": [{"name": "WITH_WAIT", "value": "false"}, {"name": "COMPONENT", "value": name}, *extra]}

    workload = []
    if workload_env:
        workload = [{"name": "VALIDATOR_IMAGE", "value": VALIDATOR_IMAGE},
                    {"name": "VALIDATOR_IMAGE_PULL_POLICY", "value": "IfNotPresent"}]
        if runtime_class:
            workload.append({"name": "VALIDATOR_RUNTIME_CLASS", "value": runtime_class})
    toolkit_env = [{"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"}] if visible_devices else []
    driver_ctr = driver_validation(root=root)
    spec: dict[str, Any] = {
        "serviceAccountName": "nvidia-operator-validator",
        "initContainers": [
            driver_ctr,
            component("toolkit", *toolkit_env),
            component("cuda", _node_env(), _ns_env(), *workload),
            component("plugin", {"name": "WITH_WORKLOAD", "value": "true" if plugin_workload else "false"},
                      {"name": "MIG_STRATEGY", "value": "single"}, _node_env(), _ns_env(), *workload),
        ],
        "containers": [{
            "name": "nvidia-operator-validator", "image": VALIDATOR_IMAGE, "command": ["sh", "-c"],
            "args": ["echo all validations are successful; while true; do sleep 86400; done"],
            "securityContext": dict(sc),
            "lifecycle": {"preStop": {"exec": {"command": ["sh", "-c", "rm -f /run/nvidia/validations/*-ready"]}}},
            "volumeMounts": list(validations),
        }],
        "volumes": [_host("run-nvidia-validations", "/run/nvidia/validations", "DirectoryOrCreate"),
                    _host("driver-install-dir", "/run/nvidia/driver"), _host("host-root", "/"),
                    _host("host-dev-char", "/dev/char")],
    }
    if runtime_class:
        spec["runtimeClassName"] = runtime_class
    return _template("nvidia-operator-validator", spec, "nvidia-operator-validator")


def device_plugin(runtime: str = "containerd", *, cdi: bool = True) -> dict[str, Any]:
    env = [{"name": "PASS_DEVICE_SPECS", "value": "true"}, {"name": "FAIL_ON_INIT_ERROR", "value": "true"},
           {"name": "DEVICE_ID_STRATEGY", "value": "uuid"}, {"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"},
           {"name": "NVIDIA_DRIVER_CAPABILITIES", "value": "all"}]
    env += ([{"name": "CDI_ENABLED", "value": "true"},
             {"name": "DEVICE_LIST_STRATEGY", "value": "cdi-annotations,cdi-cri"},
             {"name": "CDI_ANNOTATION_PREFIX", "value": "cdi.k8s.io/"},
             {"name": "NVIDIA_CDI_HOOK_PATH", "value": "/usr/local/nvidia/toolkit/nvidia-cdi-hook"}] if cdi
            else [{"name": "DEVICE_LIST_STRATEGY", "value": "envvar"}])
    spec: dict[str, Any] = {
        "serviceAccountName": "nvidia-device-plugin",
        "initContainers": [wait_for("toolkit-ready")],
        "containers": [{
            "name": "nvidia-device-plugin", "image": PLUGIN_IMAGE, "command": ["/bin/sh", "-c"],
            "args": ["/bin/entrypoint.sh"], "env": env, "securityContext": {"privileged": True},
            "volumeMounts": [_mount("nvidia-device-plugin-entrypoint", "/bin/entrypoint.sh", subPath="entrypoint.sh",
                                    readOnly=True),
                             _mount("device-plugin", "/var/lib/kubelet/device-plugins"),
                             _mount("run-nvidia-validations", "/run/nvidia/validations"),
                             _mount("driver-install-dir", "/driver-root", mountPropagation="HostToContainer"),
                             _mount("host-root", "/host", readOnly=True, mountPropagation="HostToContainer"),
                             _mount("cdi-root", "/var/run/cdi")],
        }],
        "volumes": [{"name": "nvidia-device-plugin-entrypoint",
                     "configMap": {"name": "nvidia-device-plugin-entrypoint", "defaultMode": 0o700}},
                    _host("device-plugin", "/var/lib/kubelet/device-plugins"),
                    _host("run-nvidia-validations", "/run/nvidia/validations", "DirectoryOrCreate"),
                    _host("driver-install-dir", "/run/nvidia/driver", "DirectoryOrCreate"), _host("host-root", "/"),
                    _host("cdi-root", "/var/run/cdi", "DirectoryOrCreate")],
    }
    if not (runtime == "crio" and not cdi):
        spec["runtimeClassName"] = "nvidia"
    return _template("nvidia-device-plugin-daemonset", spec, "nvidia-device-plugin")


def gpu_feature_discovery(runtime: str = "containerd", *, cdi: bool = True) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "serviceAccountName": "nvidia-gpu-feature-discovery",
        "initContainers": [wait_for("toolkit-ready", mount="run-nvidia", path="/run/nvidia")],
        "containers": [{
            "name": "gpu-feature-discovery", "image": PLUGIN_IMAGE, "command": ["gpu-feature-discovery"],
            "env": [{"name": "GFD_SLEEP_INTERVAL", "value": "60s"}, {"name": "GFD_FAIL_ON_INIT_ERROR", "value": "true"},
                    _node_env(), {"name": "MIG_STRATEGY", "value": "single"}],
            "securityContext": {"privileged": True},
            "volumeMounts": [_mount("output-dir", "/etc/kubernetes/node-feature-discovery/features.d"),
                             _mount("host-sys", "/sys"),
                             _mount("driver-install-dir", "/driver-root", mountPropagation="HostToContainer")],
        }],
        "volumes": [_host("run-nvidia", "/run/nvidia"),
                    _host("output-dir", "/etc/kubernetes/node-feature-discovery/features.d"),
                    _host("host-sys", "/sys"), _host("driver-install-dir", "/run/nvidia/driver", "DirectoryOrCreate")],
    }
    if not (runtime == "crio" and not cdi):
        spec["runtimeClassName"] = "nvidia"
    return _template("gpu-feature-discovery", spec, "gpu-feature-discovery")


def node_status_exporter() -> dict[str, Any]:
    spec = {
        "serviceAccountName": "nvidia-node-status-exporter",
        "containers": [{
            "name": "nvidia-node-status-exporter", "image": VALIDATOR_IMAGE, "command": ["nvidia-validator"],
            "env": [{"name": "NVIDIA_VISIBLE_DEVICES", "value": "void"}, {"name": "COMPONENT", "value": "metrics"},
                    {"name": "METRICS_PORT", "value": "8000"}, _node_env(), _ns_env()],
            "securityContext": {"privileged": True},
            "volumeMounts": [_mount("run-nvidia", "/run/nvidia", mountPropagation="HostToContainer"),
                             _mount("host-root", "/host", readOnly=True, mountPropagation="HostToContainer")],
        }],
        "volumes": [_host("run-nvidia", "/run/nvidia", "Directory"), _host("host-root", "/")],
    }
    return _template("nvidia-node-status-exporter", spec, "nvidia-node-status-exporter")


def stack(runtime: str = "containerd", *, cdi: bool = True, fixed_toolkit: bool = True) -> dict[str, dict[str, Any]]:
    """The DaemonSet name -> pod template of one node's start-up stack."""
    return {
        "nvidia-driver-daemonset": driver(),
        "nvidia-container-toolkit-daemonset": toolkit(runtime, cdi=cdi, fixed=fixed_toolkit),
        "nvidia-operator-validator": validator(runtime, cdi=cdi),
        "nvidia-device-plugin-daemonset": device_plugin(runtime, cdi=cdi),
        "gpu-feature-discovery": gpu_feature_discovery(runtime, cdi=cdi),
    }


def pod(template: dict[str, Any], name: str, node: str, *, namespace: str = NAMESPACE,
        created: str = "2030-01-01T00:00:00Z") -> dict[str, Any]:
    """A pod of that template on ``node`` (uid derived from the name)."""
    obj = copy.deepcopy(template)
    obj["apiVersion"], obj["kind"] = "v1", "Pod"
    obj["metadata"].update({"name": name, "namespace": namespace, "creationTimestamp": created,
                            "uid": hashlib.sha256(name.encode()).hexdigest()[:16], "resourceVersion": "1"})
    obj["spec"]["nodeName"] = node
    obj["status"] = {"phase": "Pending"}
    return obj


def daemonset(name: str, template: dict[str, Any], *, namespace: str = NAMESPACE,
              node_selector: dict[str, str] | None = None, owner: dict[str, Any] | None = None) -> dict[str, Any]:
    tpl = copy.deepcopy(template)
    if node_selector:
        tpl["spec"]["nodeSelector"] = dict(node_selector)
    selector = {"app": tpl["metadata"]["labels"]["app"]}
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "labels": dict(tpl["metadata"]["labels"])}
    if owner:
        meta["ownerReferences"] = [owner]
    spec: dict[str, Any] = {"selector": {"matchLabels": selector}, "template": tpl}
    if tpl["metadata"]["labels"].get("app.kubernetes.io/component") == "nvidia-driver":
        spec["updateStrategy"] = {"type": "OnDelete"}  # a driver pod is replaced only when deleted
    return {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": meta, "spec": spec}


CLUSTER_POLICY_OWNER = {"apiVersion": "nvidia.com/v1", "kind": "ClusterPolicy", "name": "cluster-policy",
                        "uid": "0000-policy", "controller": True, "blockOwnerDeletion": True}


def config_map(name: str, namespace: str = NAMESPACE) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": namespace,
                                                                  "labels": dict(MANAGED)},
            "data": dict(CONFIG_MAPS[name])}


RUNTIME_CLASSES = {"nvidia": "nvidia", "nvidia-cdi": "nvidia-cdi", "nvidia-legacy": "nvidia-legacy"}
# the templates' ServiceAccounts (the API server admits no pod whose ServiceAccount is missing)
SERVICE_ACCOUNTS = ("nvidia-driver", "nvidia-container-toolkit", "nvidia-operator-validator", "nvidia-device-plugin",
                    "nvidia-gpu-feature-discovery", "nvidia-node-status-exporter")
