"""Upstream v26.7's operand contracts for the driver, validator, pre-requisites, node-status exporter and DCGM.

One test per fact, so a regression names the fact. The facts come from upstream's operand manifests
(assets/state-*), its transforms (controllers/object_controls.go) and the components' sources (nvidia-validator,
k8s-driver-manager); REFERENCE §11 lists them.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from gpu_operator.api import parse_spec
from gpu_operator.render import StatePlan
from gpu_operator.states.base import COMPONENT, STATE_LABEL, owning_state
from gpu_operator.states.driver import config_digest, image_os_tag, named_secrets
from gpu_operator.upgrade.adapter import upgrade_nodes
from support import CONFIG_MAPS, container, daemonset, daemonsets, deep_merge, facts, load_policy, render_all

NAMESPACE_ENV = {"name": "OPERATOR_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}}
NODE_NAME_ENV = {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}
UBUNTU = [facts("gpu-u", os=("ubuntu", "22.04"))]


def sample(**overlay: Any) -> dict[str, Any]:
    raw = dict(load_policy()["spec"])
    raw.update(overlay)
    return raw


def plans_of(raw: dict[str, Any], nodes: list[Any] | None = None, **kw: Any) -> dict[str, StatePlan]:
    return {p.state.name: p for p in render_all(parse_spec(raw), UBUNTU if nodes is None else nodes, **kw)}


def driver_ds(raw: dict[str, Any], nodes: list[Any] | None = None, pool: str = "ubuntu22.04", **kw: Any) -> Any:
    plans = plans_of(raw, nodes, **kw)
    assert plans["state-driver"].problem is None, plans["state-driver"].problem
    return daemonset([plans["state-driver"]], f"nvidia-driver-daemonset-{pool}")


def pod(ds: dict[str, Any]) -> dict[str, Any]:
    return ds["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def init(ds: dict[str, Any], name: str) -> dict[str, Any]:
    found = [c for c in pod(ds).get("initContainers", []) if c["name"] == name]
    assert found, f"{ds['metadata']['name']} has no init container {name}"
    return found[0]


def env(c: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}


def mounts(c: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["mountPath"]: m for m in c.get("volumeMounts", [])}


def volumes(ds: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in pod(ds)["volumes"]}


def host_paths(ds: dict[str, Any]) -> dict[str, str]:
    return {name: v["hostPath"]["path"] for name, v in volumes(ds).items() if "hostPath" in v}


def validator(raw: dict[str, Any] | None = None, nodes: list[Any] | None = None) -> dict[str, Any]:
    return daemonset(list(plans_of(raw or sample(), nodes).values()), "nvidia-operator-validator")


# Driver: the pod


def test_driver_manager_runs_first_and_uninstalls_the_old_driver() -> None:
    ds = driver_ds(sample())
    manager = pod(ds)["initContainers"][0]
    assert manager["name"] == "k8s-driver-manager"
    assert manager["image"] == "nvcr.io/nvidia/cloud-native/k8s-driver-manager:v0.12.0"
    assert manager["command"] == ["driver-manager"] and manager["args"] == ["uninstall_driver"]
    assert manager["securityContext"]["privileged"] is True
    assert mounts(manager)["/run/nvidia"]["mountPropagation"] == "Bidirectional"
    assert mounts(manager)["/host"] == {
        "name": "host-root",
        "mountPath": "/host",
        "readOnly": True,
        "mountPropagation": "HostToContainer",
    }
    assert {"/sys", "/run/mellanox/drivers"} <= set(mounts(manager))


@pytest.mark.parametrize("auto_upgrade", [True, False])
def test_driver_manager_env_is_upstreams_whatever_the_upgrade_policy(auto_upgrade: bool) -> None:
    """Upstream's env is fixed; the manager reads the node annotation nvidia.com/gpu-driver-upgrade-enabled to
    leave eviction and drain to the operator. upgradePolicy.drain does not reach it."""
    raw = sample()
    raw["driver"] = {
        **raw["driver"],
        "upgradePolicy": {"autoUpgrade": auto_upgrade, "drain": {"enable": True, "force": True, "timeoutSeconds": 9}},
    }
    manager = init(driver_ds(raw), "k8s-driver-manager")
    values = env(manager)
    assert {k: values[k] for k in list(values)[:9]} == {
        "NODE_NAME": NODE_NAME_ENV["valueFrom"],
        "NVIDIA_VISIBLE_DEVICES": "void",
        "ENABLE_GPU_POD_EVICTION": "true",
        "ENABLE_AUTO_DRAIN": "false",
        "DRAIN_USE_FORCE": "false",
        "DRAIN_POD_SELECTOR_LABEL": "",
        "DRAIN_TIMEOUT_SECONDS": "0s",
        "DRAIN_DELETE_EMPTYDIR_DATA": "false",
        "OPERATOR_NAMESPACE": NAMESPACE_ENV["valueFrom"],
    }


def test_toggling_auto_upgrade_changes_no_driver_pod() -> None:
    on, off = sample(), sample()
    on["driver"] = {**on["driver"], "upgradePolicy": {"autoUpgrade": True}}
    off["driver"] = {**off["driver"], "upgradePolicy": {"autoUpgrade": False}}
    assert driver_ds(on)["spec"] == driver_ds(off)["spec"]


def test_driver_manager_env_is_overridden_by_the_manager_section() -> None:
    raw = sample()
    raw["driver"] = {**raw["driver"], "manager": {"env": [{"name": "ENABLE_AUTO_DRAIN", "value": "true"}]}}
    values = env(init(driver_ds(raw), "k8s-driver-manager"))
    assert values["ENABLE_AUTO_DRAIN"] == "true"
    assert list(values).count("ENABLE_AUTO_DRAIN") == 1


def test_driver_container_is_privileged_with_host_pid_and_no_runtime_class() -> None:
    ds = driver_ds(sample())
    spec = pod(ds)
    assert spec["hostPID"] is True and "runtimeClassName" not in spec
    ctr = container(ds, "nvidia-driver-ctr")
    assert ctr["securityContext"] == {"privileged": True, "seLinuxOptions": {"level": "s0"}}
    assert ctr["command"] == ["nvidia-driver"] and ctr["args"] == ["init"]
    assert env(ctr)["NVIDIA_VISIBLE_DEVICES"] == "void"
    assert env(ctr)["NODE_IP"] == {"fieldRef": {"fieldPath": "status.hostIP"}}
    assert pod(ds)["serviceAccountName"] == "nvidia-driver"
    assert ds["spec"]["template"]["metadata"]["annotations"]["kubectl.kubernetes.io/default-container"] == (
        "nvidia-driver-ctr"
    )


def test_driver_mounts_are_upstreams() -> None:
    ds = driver_ds(sample())
    ctr = mounts(container(ds, "nvidia-driver-ctr"))
    expected = {
        "/run/nvidia": "run-nvidia",
        "/run/nvidia-fabricmanager": "run-nvidia-fabricmanager",
        "/run/nvidia-topologyd": "run-nvidia-topologyd",
        "/var/log": "var-log",
        "/dev/log": "dev-log",
        "/host-etc/os-release": "host-os-release",
        "/run/mellanox/drivers/usr/src": "mlnx-ofed-usr-src",
        "/run/mellanox/drivers": "run-mellanox-drivers",
        "/sys/devices/system": "host-sys-devices-system",
        "/sys/module/firmware_class/parameters/path": "firmware-search-path",
        "/lib/firmware": "nv-firmware",
        "/usr/local/bin/startup-probe.sh": "driver-startup-probe-script",
    }
    assert {path: m["name"] for path, m in ctr.items()} == expected
    assert ctr["/run/nvidia"]["mountPropagation"] == "Bidirectional"
    paths = host_paths(ds)
    assert paths["nv-firmware"] == "/run/nvidia/driver/lib/firmware"
    assert paths["host-os-release"] == "/etc/os-release"
    assert paths["mlnx-ofed-usr-src"] == "/run/mellanox/drivers/usr/src"


def test_driver_startup_probe_writes_ctr_ready(tmp_path: Path) -> None:
    """The probe script of the ConfigMap, run against a fake node: it writes .driver-ctr-ready only once the
    module is loaded and nvidia-smi answers, with the extra-module flags the validator reads as YAML."""
    raw = sample(gds={"enabled": True})
    raw["driver"] = {**raw["driver"], "rdma": {"enabled": True}}
    plans = plans_of(raw)
    (cm,) = [o for o in plans["state-driver"].objects if o["kind"] == "ConfigMap"]
    assert cm["metadata"]["name"] == "nvidia-driver-startup-probe"
    ds = daemonset([plans["state-driver"]], "nvidia-driver-daemonset-ubuntu22.04")
    ctr = container(ds, "nvidia-driver-ctr")
    assert ctr["startupProbe"]["exec"]["command"] == ["sh", "/usr/local/bin/startup-probe.sh"]
    assert volumes(ds)["driver-startup-probe-script"]["configMap"]["name"] == "nvidia-driver-startup-probe"
    assert ctr["lifecycle"]["preStop"]["exec"]["command"][-1] == (
        "rm -f /run/nvidia/validations/.driver-ctr-ready /run/nvidia/validations/.driver-daemons-status"
    )

    validations, refcnt, bin_dir = tmp_path / "validations", tmp_path / "refcnt", tmp_path / "bin"
    script = cm["data"]["startup-probe.sh"]
    assert "/run/nvidia/validations" in script and "/sys/module/nvidia/refcnt" in script
    script = script.replace("/run/nvidia/validations", str(validations)).replace(
        "/sys/module/nvidia/refcnt", str(refcnt)
    )
    probe = tmp_path / "probe.sh"
    probe.write_text(script)
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text("#!/bin/sh\nexit 0\n")
    smi.chmod(smi.stat().st_mode | stat.S_IEXEC)
    ready = validations / ".driver-ctr-ready"
    probe_env = {**env(ctr), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    probe_env = {k: v for k, v in probe_env.items() if isinstance(v, str)}

    def run() -> int:
        return subprocess.run([shutil.which("sh") or "sh", str(probe)], env=probe_env, capture_output=True).returncode

    assert run() != 0 and not ready.exists(), "no module loaded: not ready"
    refcnt.write_text("1\n")
    (validations / ".driver-daemons-status").write_text("NotReady")
    assert run() != 0 and not ready.exists(), "driver daemons not ready: not ready"
    (validations / ".driver-daemons-status").write_text("Ready")
    assert run() == 0
    assert yaml.safe_load(ready.read_text()) == {
        "GDRCOPY_ENABLED": False,
        "GDS_ENABLED": True,
        "GPU_DIRECT_RDMA_ENABLED": True,
    }


def test_driver_daemonset_and_pods_carry_component_nvidia_driver() -> None:
    """nvidia-validator lists DaemonSets with app.kubernetes.io/component=nvidia-driver owned by a ClusterPolicy
    to tell an operator-managed driver (and waits for .driver-ctr-ready) from a host driver."""
    plans = plans_of(sample())
    for ds in daemonsets([plans["state-driver"]]):
        assert ds["metadata"]["labels"][COMPONENT] == "nvidia-driver"
        assert ds["spec"]["template"]["metadata"]["labels"][COMPONENT] == "nvidia-driver"
        assert ds["metadata"]["ownerReferences"][0]["kind"] == "ClusterPolicy"
        assert ds["metadata"]["ownerReferences"][0]["apiVersion"].startswith("nvidia.com/")
    (cm,) = [o for o in plans["state-driver"].objects if o["kind"] == "ConfigMap"]
    assert cm["metadata"]["labels"][COMPONENT] == "nvidia-driver"


def test_two_driver_pods_never_share_a_node() -> None:
    affinity = pod(driver_ds(sample()))["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert affinity == [
        {
            "labelSelector": {"matchExpressions": [{"key": COMPONENT, "operator": "In", "values": ["nvidia-driver"]}]},
            "topologyKey": "kubernetes.io/hostname",
        }
    ]


def test_kernel_module_type_reaches_the_driver() -> None:
    raw = sample()
    assert env(container(driver_ds(raw), "nvidia-driver-ctr"))["KERNEL_MODULE_TYPE"] == "auto"
    raw["driver"] = {**raw["driver"], "kernelModuleType": "open"}
    values = env(container(driver_ds(raw), "nvidia-driver-ctr"))
    assert values["KERNEL_MODULE_TYPE"] == "open" and values["OPEN_KERNEL_MODULES_ENABLED"] == "true"


# Driver: images and pools


@pytest.mark.parametrize(
    ("os_id", "version", "tag"),
    [
        ("rhel", "9.4", "rhel9"),
        ("rocky", "8.10", "rocky8"),
        ("ol", "9.2", "ol9"),
        ("ubuntu", "22.04", "ubuntu22.04"),
        ("debian", "12", "debian12"),
    ],
)
def test_rhel_family_images_are_tagged_by_major_version(os_id: str, version: str, tag: str) -> None:
    assert image_os_tag(os_id, version) == tag
    name = f"{os_id}{version}"
    ds = driver_ds(sample(), [facts("n", os=(os_id, version))], pool=name)
    assert container(ds, "nvidia-driver-ctr")["image"] == f"nvcr.io/nvidia/driver:595.91.07-{tag}"
    # The pool (and its DaemonSet name and node selector) stays per VERSION_ID.
    assert pod(ds)["nodeSelector"]["feature.node.kubernetes.io/system-os_release.VERSION_ID"] == version


def test_precompiled_images_carry_kernel_and_os() -> None:
    raw = sample()
    raw["driver"] = {**raw["driver"], "usePrecompiled": True}
    nodes = [facts("n", os=("rhel", "9.4"), kernel="5.14.0-427.el9.x86_64")]
    ds = driver_ds(raw, nodes, pool="rhel9.4-5.14.0-427.el9.x86-64")
    assert container(ds, "nvidia-driver-ctr")["image"] == "nvcr.io/nvidia/driver:595.91.07-5.14.0-427.el9.x86_64-rhel9"
    assert ds["metadata"]["labels"]["nvidia.com/precompiled"] == "true"


# Driver: user configuration


def test_repo_config_is_mounted_key_by_key_in_the_os_directory() -> None:
    raw = sample()
    raw["driver"] = {**raw["driver"], "repoConfig": {"configMapName": "repo-config"}}
    nodes = [facts("u", os=("ubuntu", "22.04")), facts("r", os=("rhel", "9.4")), facts("s", os=("sles", "15.5"))]
    for pool, directory in (
        ("ubuntu22.04", "/etc/apt/sources.list.d"),
        ("rhel9.4", "/etc/yum.repos.d"),
        ("sles15.5", "/etc/zypp/repos.d"),
    ):
        ds = driver_ds(raw, nodes, pool=pool)
        mount = mounts(container(ds, "nvidia-driver-ctr"))[f"{directory}/custom.list"]
        assert mount == {
            "name": "repo-config",
            "mountPath": f"{directory}/custom.list",
            "subPath": "custom.list",
            "readOnly": True,
        }
        assert volumes(ds)["repo-config"]["configMap"] == {
            "name": "repo-config",
            "items": [{"key": "custom.list", "path": "custom.list"}],
        }


def test_cert_config_is_mounted_key_by_key_in_the_os_ca_directory() -> None:
    raw = sample()
    raw["driver"] = {**raw["driver"], "certConfig": {"name": "cert-config"}}
    nodes = [facts("u", os=("ubuntu", "22.04")), facts("r", os=("rhel", "9.4"))]
    ubuntu = mounts(container(driver_ds(raw, nodes), "nvidia-driver-ctr"))
    assert ubuntu["/usr/local/share/ca-certificates/corp-ca.crt"]["subPath"] == "corp-ca.crt"
    rhel = mounts(container(driver_ds(raw, nodes, pool="rhel9.4"), "nvidia-driver-ctr"))
    assert rhel["/etc/pki/ca-trust/extracted/pem/corp-ca.crt"]["name"] == "cert-config"


def test_repo_and_cert_config_are_not_used_with_precompiled_drivers() -> None:
    raw = sample()
    raw["driver"] = {
        **raw["driver"],
        "usePrecompiled": True,
        "repoConfig": {"configMapName": "repo-config"},
        "certConfig": {"name": "cert-config"},
    }
    ds = driver_ds(raw, pool="ubuntu22.04-5.15.0-122-generic")
    assert not {"repo-config", "cert-config"} & set(volumes(ds))


def test_kernel_module_config_is_mounted_in_drivers_dir() -> None:
    raw = sample()
    raw["driver"] = {**raw["driver"], "kernelModuleConfig": {"name": "kernel-module-params"}, "rdma": {"enabled": True}}
    ds = driver_ds(raw)
    for name in ("nvidia-driver-ctr", "nvidia-peermem-ctr"):
        assert mounts(container(ds, name))["/drivers/nvidia.conf"]["subPath"] == "nvidia.conf", name


def test_licensing_secret_with_nls_token() -> None:
    raw = sample()
    raw["driver"] = {**raw["driver"], "licensingConfig": {"secretName": "licensing", "nlsEnabled": True}}
    ds = driver_ds(raw)
    ctr = mounts(container(ds, "nvidia-driver-ctr"))
    assert ctr["/drivers/gridd.conf"]["subPath"] == "gridd.conf"
    token = "/drivers/ClientConfigToken/client_configuration_token.tok"
    assert ctr[token]["subPath"] == "client_configuration_token.tok"
    assert volumes(ds)["licensing-config"] == {
        "name": "licensing-config",
        "secret": {
            "secretName": "licensing",
            "items": [
                {"key": "gridd.conf", "path": "gridd.conf"},
                {"key": "client_configuration_token.tok", "path": "client_configuration_token.tok"},
            ],
        },
    }


def test_licensing_config_map_without_nls_mounts_only_gridd_conf() -> None:
    raw = sample()
    raw["driver"] = {**raw["driver"], "licensingConfig": {"configMapName": "licensing-config", "nlsEnabled": False}}
    ds = driver_ds(raw)
    assert volumes(ds)["licensing-config"]["configMap"] == {
        "name": "licensing-config",
        "items": [{"key": "gridd.conf", "path": "gridd.conf"}],
    }
    assert "/drivers/ClientConfigToken/client_configuration_token.tok" not in mounts(container(ds, "nvidia-driver-ctr"))


def test_a_missing_licensing_config_map_leaves_the_driver_state_unrendered_and_says_why() -> None:
    """As a missing repo/cert/kernel-module ConfigMap (beyond upstream, which mounts it unchecked): rendered, every
    driver pod (re)created - by an upgrade, on a new node - stays in ContainerCreating ("configmap not found")."""
    assert "no-such-licensing" not in CONFIG_MAPS
    raw = sample()
    raw["driver"] = {**raw["driver"], "licensingConfig": {"configMapName": "no-such-licensing", "nlsEnabled": False}}
    plan = plans_of(raw)["state-driver"]
    assert plan.objects == []
    assert plan.problem == (
        "ConfigMap no-such-licensing (driver.licensingConfig.configMapName) not found in namespace gpu-operator"
    )


def test_a_licensing_config_map_without_the_keys_its_volume_lists_leaves_the_driver_state_unrendered() -> None:
    """The volume lists gridd.conf (and the NLS token with nlsEnabled): a key the ConfigMap lacks makes the kubelet
    refuse the volume ("couldn't find key gridd.conf"), so no driver pod would start."""
    raw = sample()
    raw["driver"] = {**raw["driver"], "licensingConfig": {"configMapName": "licensing-config", "nlsEnabled": False}}
    plan = plans_of(raw, config_maps={**CONFIG_MAPS, "licensing-config": ("other.conf",)})["state-driver"]
    assert plan.objects == []
    assert plan.problem == "ConfigMap licensing-config (driver.licensingConfig.configMapName) has no key gridd.conf"
    raw["driver"]["licensingConfig"] = {"configMapName": "licensing-config", "nlsEnabled": True}
    plan = plans_of(raw, config_maps={**CONFIG_MAPS, "licensing-config": ("gridd.conf",)})["state-driver"]
    assert plan.problem == (
        "ConfigMap licensing-config (driver.licensingConfig.configMapName) has no key client_configuration_token.tok,"
        " needed with driver.licensingConfig.nlsEnabled"
    )
    # A Secret takes priority: the ConfigMap is not mounted, so not checked.
    raw["driver"]["licensingConfig"] = {"configMapName": "no-such-licensing", "secretName": "licensing"}
    assert plans_of(raw)["state-driver"].problem is None


def test_a_missing_config_map_leaves_the_driver_state_unrendered_and_says_why() -> None:
    raw = sample()
    raw["driver"] = {**raw["driver"], "certConfig": {"name": "nowhere"}}
    plan = plans_of(raw)["state-driver"]
    assert plan.objects == []
    assert plan.problem == "ConfigMap nowhere (driver.certConfig.name) not found in namespace gpu-operator"


def test_repo_config_on_an_os_without_a_known_directory_is_a_problem() -> None:
    raw = sample()
    raw["driver"] = {**raw["driver"], "repoConfig": {"configMapName": "repo-config"}}
    plan = plans_of(raw, [facts("n", os=("flatcar", "3975"))])["state-driver"]
    assert plan.problem and "flatcar" in plan.problem and "repoConfig" in plan.problem


def test_rhel_pools_mount_the_host_subscriptions_unless_repo_config_or_crio() -> None:
    rhel = [facts("r", os=("rhel", "9.4"))]
    ds = driver_ds(sample(), rhel, pool="rhel9.4")
    subs = {
        path: m["name"] for path, m in mounts(container(ds, "nvidia-driver-ctr")).items() if "subscription" in m["name"]
    }
    assert subs == {
        "/run/secrets/etc-pki-entitlement": "subscription-config-0",
        "/run/secrets/redhat.repo": "subscription-config-1",
        "/run/secrets/rhsm": "subscription-config-2",
    }
    assert volumes(ds)["subscription-config-1"]["hostPath"] == {"path": "/etc/yum.repos.d/redhat.repo", "type": "File"}
    raw = sample()
    raw["driver"] = {**raw["driver"], "repoConfig": {"configMapName": "repo-config"}}
    assert not any("subscription" in v for v in volumes(driver_ds(raw, rhel, pool="rhel9.4")))
    crio = [facts("r", os=("rhel", "9.4"), runtime="cri-o://1.30.0")]
    assert not any("subscription" in v for v in volumes(driver_ds(sample(), crio, pool="rhel9.4")))


def test_secret_env_becomes_env_from_on_the_driver() -> None:
    raw = sample()
    raw["driver"] = {**raw["driver"], "secretEnv": "driver-secrets"}
    ctr = container(driver_ds(raw), "nvidia-driver-ctr")
    assert ctr["envFrom"] == [{"secretRef": {"name": "driver-secrets"}}]


def test_secret_env_naming_a_missing_secret_leaves_the_driver_state_unrendered_and_says_why() -> None:
    """Upstream's createSecretEnvReference (controllers/object_controls.go) fails the reconcile on a missing
    Secret: rendered, k8s-driver-manager would unload the driver and nvidia-driver-ctr never start."""
    raw = sample()
    raw["driver"] = {**raw["driver"], "secretEnv": "no-such-secret"}
    plan = plans_of(raw, missing_secrets=frozenset({"no-such-secret"}))["state-driver"]
    assert plan.objects == []
    assert plan.problem == "Secret no-such-secret (driver.secretEnv) not found in namespace gpu-operator"
    assert plans_of(raw, missing_secrets=frozenset({"other"}))["state-driver"].problem is None


def test_a_missing_licensing_secret_leaves_the_driver_state_unrendered_and_says_why() -> None:
    """driver.licensingConfig.secretName is a Secret volume of the driver pod: missing, every new driver pod stays
    in ContainerCreating. It is among the Secrets read by name (its keys are not: that needs its data)."""
    raw = sample()
    raw["driver"] = {**raw["driver"], "licensingConfig": {"secretName": "licensing-secret"}, "secretEnv": "env"}
    assert named_secrets(parse_spec(raw)) == {"licensing-secret", "env"}
    plan = plans_of(raw, missing_secrets=frozenset({"licensing-secret"}))["state-driver"]
    assert plan.objects == []
    assert plan.problem == (
        "Secret licensing-secret (driver.licensingConfig.secretName) not found in namespace gpu-operator"
    )
    assert plans_of(raw, missing_secrets=frozenset({"other"}))["state-driver"].problem is None


# Driver: RDMA, GDS, GDRCopy


def test_rdma_adds_the_peermem_sidecar_and_tells_manager_and_driver() -> None:
    raw = sample()
    raw["driver"] = {**raw["driver"], "rdma": {"enabled": True}}
    ds = driver_ds(raw)
    assert env(init(ds, "k8s-driver-manager"))["GPU_DIRECT_RDMA_ENABLED"] == "true"
    assert env(container(ds, "nvidia-driver-ctr"))["GPU_DIRECT_RDMA_ENABLED"] == "true"
    peermem = container(ds, "nvidia-peermem-ctr")
    assert peermem["image"] == container(ds, "nvidia-driver-ctr")["image"]
    assert peermem["args"] == ["reload_nvidia_peermem"]
    assert peermem["livenessProbe"]["exec"]["command"] == ["sh", "-c", "nvidia-driver probe_nvidia_peermem"]
    assert "USE_HOST_MOFED" not in env(peermem)
    assert host_paths(ds)["mlnx-ofed-usr-src"] == "/run/mellanox/drivers/usr/src"


def test_rdma_with_the_hosts_mofed_builds_against_host_usr_src() -> None:
    raw = sample()
    raw["driver"] = {**raw["driver"], "rdma": {"enabled": True, "useHostMofed": True}}
    ds = driver_ds(raw)
    for c in (init(ds, "k8s-driver-manager"), container(ds, "nvidia-driver-ctr"), container(ds, "nvidia-peermem-ctr")):
        assert env(c)["USE_HOST_MOFED"] == "true", c["name"]
    assert host_paths(ds)["mlnx-ofed-usr-src"] == "/usr/src"


def test_no_sidecars_by_default() -> None:
    names = [c["name"] for c in pod(driver_ds(sample()))["containers"]]
    assert names == ["nvidia-driver-ctr"]


@pytest.mark.parametrize(
    ("section", "name", "image", "module", "flag"),
    [
        (
            "gds",
            "nvidia-fs-ctr",
            "nvcr.io/nvidia/cloud-native/nvidia-fs:2.29.4-ubuntu22.04",
            "nvidia_fs",
            "GDS_ENABLED",
        ),
        (
            "gdrcopy",
            "nvidia-gdrcopy-ctr",
            "nvcr.io/nvidia/cloud-native/gdrdrv:v2.6-ubuntu22.04",
            "gdrdrv",
            "GDRCOPY_ENABLED",
        ),
    ],
)
def test_gds_and_gdrcopy_sidecars(section: str, name: str, image: str, module: str, flag: str) -> None:
    raw = sample(**{section: {"enabled": True, "env": [{"name": "EXTRA", "value": "1"}], "imagePullSecrets": ["r"]}})
    raw["driver"] = {**raw["driver"], "repoConfig": {"configMapName": "repo-config"}}
    ds = driver_ds(raw)
    sidecar = container(ds, name)
    assert sidecar["image"] == image
    assert sidecar["command"] == ["bash", "-xc"]
    assert "until [ -d /run/nvidia/driver/usr/src ]" in sidecar["args"][0]
    assert sidecar["startupProbe"]["exec"]["command"] == ["sh", "-c", f"lsmod | grep {module}"]
    assert env(sidecar)["EXTRA"] == "1"
    assert "/etc/apt/sources.list.d/custom.list" in mounts(sidecar)
    assert mounts(sidecar)["/run/nvidia"]["mountPropagation"] == "HostToContainer"
    assert env(container(ds, "nvidia-driver-ctr"))[flag] == "true"
    assert {"name": "r"} in pod(ds)["imagePullSecrets"]


def test_gds_with_precompiled_drivers_is_a_problem() -> None:
    raw = sample(gds={"enabled": True})
    raw["driver"] = {**raw["driver"], "usePrecompiled": True}
    problem = plans_of(raw)["state-driver"].problem or ""
    assert problem.endswith("not supported with precompiled drivers (driver.usePrecompiled)"), problem


@pytest.mark.parametrize(
    "raw",
    [
        {"hostPaths": {"rootFS": ""}},
        {"hostPaths": {"driverInstallDir": ""}},
        {"toolkit": {"installDir": ""}},
        {"devicePlugin": {"mps": {"root": ""}}},
    ],
    ids=["rootFS", "driverInstallDir", "installDir", "mps.root"],
)
def test_empty_host_paths_render_the_default_paths(raw: dict[str, Any]) -> None:
    """Upstream keeps the default path for "" (transformForHostRoot, transformForDriverInstallDir, TransformToolkit,
    TransformDevicePlugin); passed through, it gave hostPath `path: null`, `dev/char` or `mountPath: ""`, which the
    API server rejects, so the DaemonSet was never applied."""
    policy = deep_merge(sample(), raw)
    assert objects_of(policy) == objects_of(sample())
    for ds in daemonsets(render_all(parse_spec(policy), UBUNTU)):
        spec = pod(ds)
        for v in spec.get("volumes", []):
            assert str((v.get("hostPath") or {"path": "/"})["path"]).startswith("/"), (ds["metadata"]["name"], v)
        for c in spec.get("initContainers", []) + spec["containers"]:
            for m in c.get("volumeMounts", []):
                assert str(m["mountPath"]).startswith("/"), (ds["metadata"]["name"], c["name"], m)


def objects_of(raw: dict[str, Any]) -> list[dict[str, Any]]:
    return [o for p in plans_of(raw).values() for o in p.objects]


# Driver: probes, digest, host paths


def test_precompiled_drivers_with_an_image_digest_are_a_problem() -> None:
    """A precompiled image holds one kernel's modules: a digest would run it in every kernel's pool (upstream's
    resolveDriverTag appends the kernel to the digest, an image reference that cannot be pulled)."""
    nodes = [facts("c1", kernel="5.15.0-122-generic"), facts("c2", kernel="5.15.0-130-generic")]
    for driver in ({"version": "sha256:" + "a" * 64},
                   {"repository": None, "version": None, "image": "nvcr.io/nvidia/driver@sha256:" + "a" * 64}):
        raw = sample()
        raw["driver"] = {**raw["driver"], "usePrecompiled": True, **driver}
        plan = plans_of(raw, nodes)["state-driver"]
        assert plan.objects == [] and plan.problem and plan.problem.startswith(
            "driver.usePrecompiled: an image digest (nvcr.io/nvidia/driver@sha256:aaaa"), plan.problem
    raw = sample()
    raw["driver"] = {**raw["driver"], "version": "sha256:" + "a" * 64}  # not precompiled: one image for all
    assert plans_of(raw, nodes)["state-driver"].problem is None


def test_precompiled_drivers_without_a_version_are_a_problem() -> None:
    """Precompiled images are published per driver branch (`535-5.4.0-150-generic-ubuntu22.04`); without
    driver.repository/image/version the image was our default full version with the kernel appended
    (`595.91.07-5.15.0-122-generic-ubuntu22.04`), a tag that does not exist: ImagePullBackOff with no message.
    Upstream's resolveDriverTag refuses it ("driver.repository, driver.image and driver.version have to be
    specified")."""
    nodes = [facts("c1", kernel="5.15.0-122-generic")]
    raw = sample()
    raw["driver"] = {k: v for k, v in raw["driver"].items() if k not in ("repository", "image", "version")}
    raw["driver"]["usePrecompiled"] = True
    plan = plans_of(raw, nodes)["state-driver"]
    assert plan.objects == [] and plan.problem == (
        "driver.version: usePrecompiled needs a driver branch such as 580; precompiled images are tagged "
        "<branch>-<kernel>-<os>"
    )
    raw["driver"]["image"] = "nvcr.io/nvidia/driver:580"  # an image with a tag names the branch itself
    ds = driver_ds(raw, nodes, pool="ubuntu22.04-5.15.0-122-generic")
    assert container(ds, "nvidia-driver-ctr")["image"] == "nvcr.io/nvidia/driver:580-5.15.0-122-generic-ubuntu22.04"
    raw["driver"]["usePrecompiled"] = False  # not precompiled: our default version, as ever
    assert plans_of({**raw, "driver": {**raw["driver"], "image": None}}, nodes)["state-driver"].problem is None


def test_precompiled_driver_takes_a_branch_tag_from_driver_image_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """README (operator env): where the ClusterPolicy names no driver repository/image/version, the operator's
    DRIVER_IMAGE names the image (upstream's ImagePath, e.g. an air-gapped mirror). With usePrecompiled its branch
    tag (`...driver:580`) names the branch, as `image: ...driver:580` does. It was refused ("driver.version:
    usePrecompiled needs a driver branch"): the check read the spec only, not the env the image came from. An
    env image without a tag is refused naming DRIVER_IMAGE."""
    nodes = [facts("n1", kernel="5.15.0-1045-nvidia")]
    monkeypatch.setenv("DRIVER_IMAGE", "mirror.local:5000/nvidia/driver:580")
    raw = sample()
    raw["driver"] = {k: v for k, v in raw["driver"].items() if k not in ("repository", "image", "version")}
    raw["driver"]["usePrecompiled"] = True
    ds = driver_ds(raw, nodes, pool="ubuntu22.04-5.15.0-1045-nvidia")
    image = container(ds, "nvidia-driver-ctr")["image"]
    assert image == "mirror.local:5000/nvidia/driver:580-5.15.0-1045-nvidia-ubuntu22.04"
    monkeypatch.setenv("DRIVER_IMAGE", "mirror.local:5000/nvidia/driver")
    plan = plans_of(raw, nodes)["state-driver"]
    assert plan.objects == [] and plan.problem == (
        "DRIVER_IMAGE (mirror.local:5000/nvidia/driver, the operator's env): usePrecompiled needs a driver branch "
        "such as 580; precompiled images are tagged <branch>-<kernel>-<os>"
    )
    monkeypatch.setenv("DRIVER_IMAGE", "mirror.local:5000/nvidia/driver:580")  # the spec's image wins over the env
    raw["driver"]["image"] = "nvcr.io/nvidia/driver"
    assert plans_of(raw, nodes)["state-driver"].problem == (
        "driver.version: usePrecompiled needs a driver branch such as 580; precompiled images are tagged "
        "<branch>-<kernel>-<os>"
    )


def test_probe_overrides_land_on_the_driver_container() -> None:
    raw = sample()
    raw["driver"] = {
        **raw["driver"],
        "startupProbe": {"initialDelaySeconds": 30, "failureThreshold": 60},
        "livenessProbe": {"periodSeconds": 30},
        "readinessProbe": {"timeoutSeconds": 90},
    }
    ctr = container(driver_ds(raw), "nvidia-driver-ctr")
    assert ctr["startupProbe"] == {
        "exec": {"command": ["sh", "/usr/local/bin/startup-probe.sh"]},
        "initialDelaySeconds": 30,
        "periodSeconds": 10,
        "timeoutSeconds": 60,
        "failureThreshold": 60,
        "successThreshold": 1,
    }
    assert ctr["livenessProbe"]["periodSeconds"] == 30 and ctr["livenessProbe"]["timeoutSeconds"] == 60
    assert ctr["readinessProbe"]["timeoutSeconds"] == 90
    assert "livenessProbe" not in container(driver_ds(sample()), "nvidia-driver-ctr")


def test_driver_config_digest_follows_the_install_config_only() -> None:
    """k8s-driver-manager skips the uninstall when DRIVER_CONFIG_DIGEST matches what the node runs."""
    base = driver_ds(sample())
    digest = env(container(base, "nvidia-driver-ctr"))["DRIVER_CONFIG_DIGEST"]
    assert env(init(base, "k8s-driver-manager"))["DRIVER_CONFIG_DIGEST"] == digest == config_digest(pod(base))
    labelled = sample(daemonsets={**load_policy()["spec"]["daemonsets"], "labels": {"team": "gpu"}})
    assert env(container(driver_ds(labelled), "nvidia-driver-ctr"))["DRIVER_CONFIG_DIGEST"] == digest
    changed = sample()
    changed["driver"] = {**changed["driver"], "env": [{"name": "NVIDIA_X", "value": "1"}]}
    assert env(container(driver_ds(changed), "nvidia-driver-ctr"))["DRIVER_CONFIG_DIGEST"] != digest


def test_custom_host_root_reaches_every_driver_container() -> None:
    ds = driver_ds(sample(hostPaths={"rootFS": "/host-root"}))
    assert host_paths(ds)["host-root"] == "/host-root"
    for c in pod(ds)["initContainers"] + pod(ds)["containers"]:
        assert env(c)["HOST_ROOT"] == "/host-root", c["name"]


# Validator


def test_validator_containers_run_as_root() -> None:
    spec = pod(validator())
    for c in spec["initContainers"] + spec["containers"]:
        assert c["securityContext"]["runAsUser"] == 0, c["name"]
        assert c["securityContext"]["privileged"] is True, c["name"]


def test_validator_runs_one_nvidia_validator_component_per_init_container() -> None:
    spec = pod(validator())
    assert [(c["name"], env(c)["COMPONENT"]) for c in spec["initContainers"]] == [
        ("driver-validation", "driver"),
        ("toolkit-validation", "toolkit"),
        ("cuda-validation", "cuda"),
        ("plugin-validation", "plugin"),
    ]
    for c in spec["initContainers"]:
        assert c["command"] == ["sh", "-c"] and c["args"] == ["nvidia-validator"], c["name"]
        assert c["image"] == "nvcr.io/nvidia/gpu-operator:v26.7.0", c["name"]
    assert env(spec["initContainers"][0])["WITH_WAIT"] == "true"
    assert spec["containers"][0]["lifecycle"]["preStop"]["exec"]["command"] == [
        "sh",
        "-c",
        "rm -f /run/nvidia/validations/*-ready",
    ]


def test_toolkit_validation_sees_all_devices() -> None:
    toolkit = init(validator(), "toolkit-validation")
    assert env(toolkit)["NVIDIA_VISIBLE_DEVICES"] == "all"


@pytest.mark.parametrize("check", ["cuda-validation", "plugin-validation"])
def test_workload_checks_know_the_image_pull_policy_and_runtime_class(check: str) -> None:
    raw = sample(validator={"imagePullPolicy": "Always", "imagePullSecrets": ["reg-a", "reg-b"]})
    c = init(validator(raw), check)
    values = env(c)
    assert values["VALIDATOR_IMAGE"] == "nvcr.io/nvidia/gpu-operator:v26.7.0"
    assert values["VALIDATOR_IMAGE_PULL_POLICY"] == "Always"
    assert values["VALIDATOR_IMAGE_PULL_SECRETS"] == "reg-a,reg-b"
    assert values["VALIDATOR_RUNTIME_CLASS"] == "nvidia"
    assert (
        values["NODE_NAME"] == NODE_NAME_ENV["valueFrom"] and values["OPERATOR_NAMESPACE"] == NAMESPACE_ENV["valueFrom"]
    )
    assert c["imagePullPolicy"] == "Always"


def test_plugin_validation_gets_the_mig_strategy_and_the_policys_env_in_place() -> None:
    raw = sample(mig={"strategy": "mixed"}, validator={"plugin": {"env": [{"name": "WITH_WORKLOAD", "value": "true"}]}})
    plugin = init(validator(raw), "plugin-validation")
    assert env(plugin)["MIG_STRATEGY"] == "mixed"
    names = [e["name"] for e in plugin["env"]]
    assert names.count("WITH_WORKLOAD") == 1 and names.index("WITH_WORKLOAD") == 2
    assert env(plugin)["WITH_WORKLOAD"] == "true"


def test_validator_mounts_host_dev_char_driver_root_and_validations() -> None:
    ds = validator()
    driver = mounts(init(ds, "driver-validation"))
    assert driver["/host-dev-char"]["name"] == "host-dev-char"
    assert driver["/run/nvidia/driver"]["mountPropagation"] == "HostToContainer"
    assert driver["/host"]["readOnly"] is True
    for c in pod(ds)["initContainers"] + pod(ds)["containers"]:
        assert mounts(c)["/run/nvidia/validations"]["mountPropagation"] == "Bidirectional", c["name"]
    assert host_paths(ds) == {
        "run-nvidia-validations": "/run/nvidia/validations",
        "driver-install-dir": "/run/nvidia/driver",
        "host-root": "/",
        "host-dev-char": "/dev/char",
    }


def test_validator_follows_custom_host_paths() -> None:
    raw = sample(hostPaths={"rootFS": "/host-root", "driverInstallDir": "/opt/nvidia/driver"})
    ds = validator(raw)
    assert host_paths(ds)["host-dev-char"] == "/host-root/dev/char"
    driver = init(ds, "driver-validation")
    assert env(driver)["DRIVER_INSTALL_DIR"] == env(driver)["DRIVER_INSTALL_DIR_CTR_PATH"] == "/opt/nvidia/driver"
    assert mounts(driver)["/opt/nvidia/driver"]["name"] == "driver-install-dir"
    assert env(driver)["HOST_ROOT"] == "/host-root"


def test_validator_runs_in_the_operator_runtime_class() -> None:
    assert pod(validator())["runtimeClassName"] == "nvidia"
    raw = sample(operator={"runtimeClass": "nvidia-custom"})
    ds = validator(raw)
    assert pod(ds)["runtimeClassName"] == "nvidia-custom"
    assert env(init(ds, "cuda-validation"))["VALIDATOR_RUNTIME_CLASS"] == "nvidia-custom"


def test_no_runtime_class_with_cdi_off_on_crio_nodes() -> None:
    """Upstream's setRuntimeClassName: with CDI off, cri-o gets the OCI hook and no `nvidia` handler."""
    crio = [facts("c", runtime="cri-o://1.30.0")]
    ds = validator(sample(cdi={"enabled": False}), crio)
    assert "runtimeClassName" not in pod(ds)
    assert "VALIDATOR_RUNTIME_CLASS" not in env(init(ds, "cuda-validation"))
    assert pod(validator(sample(cdi={"enabled": True}), crio))["runtimeClassName"] == "nvidia"


@pytest.mark.parametrize("var", ["NVIDIA_RUNTIME_SET_AS_DEFAULT", "CONTAINERD_SET_AS_DEFAULT"])
def test_crio_only_cdi_off_with_set_as_default_false_keeps_the_runtime_class(var: str) -> None:
    """Our cri-o toolkit runs in `config` mode (README Differences): operand pods get the GPU only through the
    `nvidia` handler, as cri-o's default runtime or by runtimeClassName. The installer makes it the default unless
    --set-as-default is false, read from NVIDIA_RUNTIME_SET_AS_DEFAULT, then CONTAINERD_SET_AS_DEFAULT, then
    DOCKER_SET_AS_DEFAULT for every runtime (nvidia-ctk-installer v1.20 container/runtime/runtime.go). With one of
    them false in `toolkit.env`, the class was still left out: toolkit-validation and the device plugin ran under
    crun, found no GPU, and no node got toolkit-ready (review toolkit2 #1). Hook mode reaches every container: no
    class, as upstream."""
    crio = [facts("c", runtime="cri-o://1.30.0"), facts("d", runtime="cri-o://1.30.0")]

    def with_env(*entries: tuple[str, str]) -> dict[str, Any]:
        toolkit = {**sample()["toolkit"], "env": [{"name": n, "value": v} for n, v in entries]}
        return sample(cdi={"enabled": False}, toolkit=toolkit)

    ds = validator(with_env((var, "false")), crio)
    assert pod(ds)["runtimeClassName"] == "nvidia"
    assert env(init(ds, "cuda-validation"))["VALIDATOR_RUNTIME_CLASS"] == "nvidia"
    plans = plans_of(with_env((var, "false")), crio)
    plugin = daemonset([plans["state-device-plugin"]], "nvidia-device-plugin-daemonset")
    assert pod(plugin)["runtimeClassName"] == "nvidia"
    assert {o["handler"] for o in plans["pre-requisites"].objects} == {"nvidia"}
    # nvidia stays cri-o's default (or the hook reaches every container): no class, as upstream.
    for entries in [(), ((var, "true"),), ((var, "false"), ("CRIO_CONFIG_MODE", "hook"))]:
        assert "runtimeClassName" not in pod(validator(with_env(*entries), crio)), entries


def test_nri_plugin_gives_toolkit_validation_the_management_annotation() -> None:
    """Upstream TransformValidator: setNRIPluginAnnotation for toolkit-validation. With no runtime class, its
    nvidia-smi gets the GPUs only through the NRI plugin; without them toolkit-ready is never written."""
    ds = validator(sample(cdi={"enabled": True, "nriPluginEnabled": True}))
    assert "runtimeClassName" not in pod(ds)
    annotations = ds["spec"]["template"]["metadata"]["annotations"]
    assert annotations["nvidia.cdi.k8s.io/container.toolkit-validation"] == "management.nvidia.com/gpu=all"
    assert "annotations" not in validator()["spec"]["template"]["metadata"]


def test_validator_rbac_lets_checks_create_pods_and_find_the_driver() -> None:
    objs = plans_of(sample())["state-operator-validation"].objects
    role = next(o for o in objs if o["kind"] == "Role")
    rules = {tuple(r["resources"]): set(r["verbs"]) for r in role["rules"]}
    assert {"create", "get", "list", "watch", "delete"} <= rules[("pods",)]
    assert {"get", "list"} <= rules[("daemonsets",)]
    cluster_role = next(o for o in objs if o["kind"] == "ClusterRole")
    cluster_rules = {tuple(r["resources"]): set(r["verbs"]) for r in cluster_role["rules"]}
    assert {"get", "list", "watch"} <= cluster_rules[("nodes",)]
    assert "update" in cluster_rules[("clusterpolicies/finalizers",)]
    binding = next(o for o in objs if o["kind"] == "RoleBinding")
    assert binding["subjects"][0]["name"] == pod(validator())["serviceAccountName"] == "nvidia-operator-validator"


# Pre-requisites


def runtime_classes(raw: dict[str, Any]) -> dict[str, str]:
    return {o["metadata"]["name"]: o["handler"] for o in plans_of(raw)["pre-requisites"].objects}


def test_runtime_classes_with_cdi() -> None:
    assert runtime_classes(sample(cdi={"enabled": True})) == {
        "nvidia": "nvidia",
        "nvidia-legacy": "nvidia-legacy",
        "nvidia-cdi": "nvidia-cdi",
    }


def test_only_the_operator_runtime_class_without_cdi() -> None:
    assert runtime_classes(sample(cdi={"enabled": False})) == {"nvidia": "nvidia"}


def test_a_runtime_class_named_like_a_cdi_one_is_rendered_once() -> None:
    raw = sample(cdi={"enabled": True}, operator={"runtimeClass": "nvidia-cdi"})
    assert runtime_classes(raw) == {"nvidia-cdi": "nvidia-cdi", "nvidia-legacy": "nvidia-legacy"}


def test_an_empty_runtime_class_is_the_default_one() -> None:
    """Upstream getRuntimeClassName: "" is `nvidia`, for the RuntimeClass and the pods alike."""
    raw = sample(cdi={"enabled": True}, operator={"runtimeClass": ""})
    assert runtime_classes(raw) == runtime_classes(sample(cdi={"enabled": True}))
    assert pod(validator(raw))["runtimeClassName"] == "nvidia"


def test_no_runtime_classes_with_the_nri_plugin() -> None:
    plan = plans_of(sample(cdi={"enabled": True, "nriPluginEnabled": True}))["pre-requisites"]
    assert plan.enabled is False and plan.objects == []


# Node-status exporter


def test_node_status_exporter_runs_the_metrics_component() -> None:
    plans = plans_of(sample(nodeStatusExporter={"enabled": True}))
    ds = daemonset([plans["state-node-status-exporter"]], "nvidia-node-status-exporter")
    ctr = container(ds, "nvidia-node-status-exporter")
    assert ctr["command"] == ["nvidia-validator"] and "args" not in ctr
    values = env(ctr)
    assert values["COMPONENT"] == "metrics" and values["METRICS_PORT"] == "8000"
    assert values["NVIDIA_VISIBLE_DEVICES"] == "void" and values["NODE_NAME"] == NODE_NAME_ENV["valueFrom"]
    assert ctr["image"] == "nvcr.io/nvidia/gpu-operator:v26.7.0"
    assert ctr["securityContext"]["runAsUser"] == 0
    assert ctr["ports"] == [{"name": "node-status", "containerPort": 8000}]
    assert "runtimeClassName" not in pod(ds)
    assert mounts(ctr)["/run/nvidia"]["mountPropagation"] == "HostToContainer"


def test_node_status_exporter_service_and_monitor() -> None:
    objs = plans_of(sample(nodeStatusExporter={"enabled": True}), api_groups=frozenset({"monitoring.coreos.com"}))[
        "state-node-status-exporter"
    ].objects
    service = next(o for o in objs if o["kind"] == "Service")
    assert service["spec"]["ports"] == [{"name": "node-status", "port": 8000, "targetPort": 8000, "protocol": "TCP"}]
    assert service["spec"]["selector"] == {"app": "nvidia-node-status-exporter"}
    monitor = next(o for o in objs if o["kind"] == "ServiceMonitor")
    assert monitor["spec"]["endpoints"] == [{"port": "node-status", "path": "/metrics"}]
    assert {"Role", "ClusterRole"} <= {o["kind"] for o in objs}


# DCGM


def dcgm_objects() -> list[dict[str, Any]]:
    return plans_of(sample(dcgm={"enabled": True}))["state-dcgm"].objects


def dcgm_ds() -> dict[str, Any]:
    (ds,) = [o for o in dcgm_objects() if o["kind"] == "DaemonSet"]
    return ds


def test_dcgm_service_is_node_local() -> None:
    service = next(o for o in dcgm_objects() if o["kind"] == "Service")
    assert service["metadata"]["name"] == "nvidia-dcgm"
    assert service["spec"]["internalTrafficPolicy"] == "Local"
    assert service["spec"]["ports"] == [{"name": "dcgm", "port": 5555, "targetPort": 5555, "protocol": "TCP"}]


def test_dcgm_engine_listens_on_5555_without_a_host_port() -> None:
    """Upstream binds no hostPort (dcgm.hostPort is deprecated and unused): exporters use the Local Service."""
    ds = dcgm_ds()
    ctr = container(ds, "nvidia-dcgm-ctr")
    assert ctr["ports"] == [{"name": "dcgm", "containerPort": 5555}]
    assert "command" not in ctr, "the image's entrypoint starts nv-hostengine"
    for probe in ("livenessProbe", "readinessProbe"):
        assert ctr[probe] == {"tcpSocket": {"port": 5555}, "initialDelaySeconds": 15}
    assert pod(ds)["serviceAccountName"] == "nvidia-dcgm"


def test_dcgm_waits_for_toolkit_ready_as_root_in_the_nvidia_runtime() -> None:
    ds = dcgm_ds()
    assert pod(ds)["runtimeClassName"] == "nvidia"
    (wait,) = pod(ds)["initContainers"]
    assert wait["name"] == "toolkit-validation"
    assert "/run/nvidia/validations/toolkit-ready" in wait["args"][0]
    assert wait["securityContext"]["runAsUser"] == 0
    assert mounts(wait)["/run/nvidia/validations"]["mountPropagation"] == "HostToContainer"


# Labels: our state marker, upstream's component values


def test_every_object_carries_our_state_label_and_upstreams_component_only() -> None:
    raw = sample(cdi={"enabled": True}, dcgm={"enabled": True}, nodeStatusExporter={"enabled": True})
    for state_plan in plans_of(raw).values():
        for obj in state_plan.objects:
            labels = obj["metadata"]["labels"]
            assert labels[STATE_LABEL] == state_plan.state.name
            assert labels["app.kubernetes.io/managed-by"] == labels["app.kubernetes.io/part-of"] == "gpu-operator"
            assert labels.get(COMPONENT) in (None, "nvidia-driver", "gpu-operator"), obj["metadata"]["name"]
            if obj["kind"] == "RuntimeClass":
                assert labels[COMPONENT] == "gpu-operator"


def test_owning_state_reads_the_state_label_and_the_old_component_label() -> None:
    states = frozenset({"state-driver", "state-dcgm"})
    assert owning_state({STATE_LABEL: "state-dcgm", COMPONENT: "nvidia-driver"}, states) == "state-dcgm"
    assert owning_state({COMPONENT: "state-driver"}, states) == "state-driver"  # written before the state label
    assert owning_state({COMPONENT: "nvidia-driver"}, states) is None
    assert owning_state(None, states) is None


def projection(name: str, node: str, labels: dict[str, str]) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": labels}, "node": node, "owner": "ds", "status": {}}


def test_upgrade_finds_driver_and_validator_pods_by_state_label_and_old_label() -> None:
    nodes = [facts("a", labels={"nvidia.com/gpu.deploy.driver": "true"})]
    pods = {
        "drv": projection("drv", "a", {COMPONENT: "state-driver"}),  # a driver pod from before the state label
        "val": projection("val", "a", {STATE_LABEL: "state-operator-validation"}),
        "other": projection("other", "a", {COMPONENT: "nvidia-driver"}),
    }
    (node,) = upgrade_nodes(nodes, pods, {})
    assert node.driver_pod is not None and node.driver_pod["metadata"]["name"] == "drv"
    assert node.validator_pod is not None and node.validator_pod["metadata"]["name"] == "val"




def _env_of(c: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}


def test_custom_host_root_reaches_every_validator_container_and_dev_char() -> None:
    """transformForHostRoot: HOST_ROOT on every (init) container of a DaemonSet with a host-root volume, and
    host-dev-char moved under the root (filepath.Join(hostRoot, "/dev/char"))."""
    ds = daemonset(render_all(parse_spec({"hostPaths": {"rootFS": "/sysroot"}})), "nvidia-operator-validator")
    spec = ds["spec"]["template"]["spec"]
    for c in spec["initContainers"] + spec["containers"]:
        assert _env_of(c).get("HOST_ROOT") == "/sysroot", c["name"]
    vols = {v["name"]: v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v}
    assert vols["host-root"] == "/sysroot" and vols["host-dev-char"] == "/sysroot/dev/char"


def test_custom_driver_install_dir_moves_only_the_driver_check() -> None:
    """transformForDriverInstallDir: driver-validation gets DRIVER_INSTALL_DIR and _CTR_PATH and mounts the
    directory at the same path; no other init container changes."""
    for ds in daemonsets(render_all(parse_spec({"hostPaths": {"driverInstallDir": "/opt/nv"}}))):
        for c in ds["spec"]["template"]["spec"].get("initContainers", []):
            env = _env_of(c)
            if c["name"] == "driver-validation":
                assert env["DRIVER_INSTALL_DIR"] == env["DRIVER_INSTALL_DIR_CTR_PATH"] == "/opt/nv"
                assert any(m["mountPath"] == "/opt/nv" for m in c["volumeMounts"])
            else:
                assert "DRIVER_INSTALL_DIR" not in env, (ds["metadata"]["name"], c["name"])
