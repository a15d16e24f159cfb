"""state-driver: the kernel driver, one OnDelete DaemonSet per node pool (OS, and kernel when precompiled).

The pod follows upstream's contract (assets/state-driver and TransformDriver in v26.7): a k8s-driver-manager
init container, the privileged driver container whose startup probe writes
/run/nvidia/validations/.driver-ctr-ready, optional nvidia-peermem / nvidia-fs / nvidia-gdrcopy sidecars, and
the user's repo, certificate, kernel-module and licensing configuration mounted key by key.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from .. import images
from ..api import ClusterPolicySpec, ImageSpec
from ..nodes import NodeFacts, Pool, driver_pools, gets_driver, pool_kernel, unpooled
from ..nvidiadriver import excluding_owned
from .base import (
    HASH_ANNOTATION,
    OperandState,
    PartialRender,
    RenderContext,
    RenderProblem,
    object_hash,
)

# Upstream tags RHEL-family driver images by the major OS version only (getOSTag in internal/state/nodepool.go).
MAJOR_VERSION_TAG_OS = frozenset({"ol", "rocky", "rhel"})

# Where each OS's package manager and CA store look (RepoConfigPathMap, CertConfigPathMap upstream).
REPO_CONFIG_DIRS = {
    "centos": "/etc/yum.repos.d",
    "debian": "/etc/apt/sources.list.d",
    "ubuntu": "/etc/apt/sources.list.d",
    "rhcos": "/etc/yum.repos.d",
    "rhel": "/etc/yum.repos.d",
    "rocky": "/etc/yum.repos.d",
    "ol": "/etc/yum.repos.d",
    "sles": "/etc/zypp/repos.d",
    "sl-micro": "/etc/zypp/repos.d",
}
CERT_CONFIG_DIRS = {
    "centos": "/etc/pki/ca-trust/extracted/pem",
    "debian": "/usr/local/share/ca-certificates",
    "ubuntu": "/usr/local/share/ca-certificates",
    "rhcos": "/etc/pki/ca-trust/extracted/pem",
    "rhel": "/etc/pki/ca-trust/extracted/pem",
    "rocky": "/etc/pki/ca-trust/extracted/pem",
    "ol": "/etc/pki/ca-trust/extracted/pem",
    "sles": "/etc/pki/trust/anchors",
    "sl-micro": "/etc/pki/trust/anchors",
}
# Host subscription files the driver container needs to install packages (container path -> host path, type).
_RHEL_SUBSCRIPTIONS = {
    "/run/secrets/etc-pki-entitlement": ("/etc/pki/entitlement", "Directory"),
    "/run/secrets/redhat.repo": ("/etc/yum.repos.d/redhat.repo", "File"),
    "/run/secrets/rhsm": ("/etc/rhsm", "Directory"),
}
_SUSE_SUBSCRIPTIONS = {
    "/etc/zypp/credentials.d": ("/etc/zypp/credentials.d", "Directory"),
    "/etc/SUSEConnect": ("/etc/SUSEConnect", "FileOrCreate"),
}
SUBSCRIPTIONS = {"rhel": _RHEL_SUBSCRIPTIONS, "sles": _SUSE_SUBSCRIPTIONS, "sl-micro": _SUSE_SUBSCRIPTIONS}
DRIVERS_DIR = "/drivers"  # kernel module parameters and licensing files go here
GRIDD_CONF = "gridd.conf"
NLS_TOKEN = "client_configuration_token.tok"
CONFIG_DIGEST_ENV = "DRIVER_CONFIG_DIGEST"
# Ours, on the driver DaemonSets of an NVIDIADriver that names no k8s-driver-manager image: the image they run.
MANAGER_IMAGE_ANNOTATION = "nvidia.com/gpu-operator.driver-manager-image"
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
# From this GDS version on, nvidia-fs needs the open kernel modules (upstream's MinimumGDSVersionForOpenRM).
GDS_OPEN_FROM = (2, 17, 5)
_NUM = r"(0|[1-9][0-9]*)"
_IDENT = r"(0|[1-9][0-9]*|[0-9]*[A-Za-z-][0-9A-Za-z-]*)"
# A version as Go's golang.org/x/mod/semver reads it: vMAJOR[.MINOR[.PATCH[-PRERELEASE][+BUILD]]].
_BUILD = r"[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*"
_GO_SEMVER = re.compile(rf"^v{_NUM}(?:\.{_NUM}(?:\.{_NUM}(-{_IDENT}(?:\.{_IDENT})*)?(?:\+{_BUILD})?)?)?$")


def gds_needs_open_modules(version: str | None) -> bool:
    """Upstream's IsOpenKernelModulesRequired for an NVIDIADriver's gds.version: a digest, or a version from 2.17.5
    on as Go's semver compares it (not a version: lower; a pre-release: below its release)."""
    if not version:
        return False
    if version.startswith("sha256"):
        return True
    m = _GO_SEMVER.match(version if version.startswith("v") else "v" + version)
    if not m:
        return False
    release = (int(m.group(1)), int(m.group(2) or 0), int(m.group(3) or 0))
    return release > GDS_OPEN_FROM or (release == GDS_OPEN_FROM and not m.group(4))


def image_os_tag(os_id: str, os_version: str) -> str:
    """The OS part of a driver image tag: ubuntu22.04, rhel9 (major version only for the RHEL family)."""
    if os_id in MAJOR_VERSION_TAG_OS:
        os_version = os_version.split(".")[0]
    return f"{os_id}{os_version}"


def _tagged(base: str, *suffixes: str) -> str:
    """An image with `-<suffix>`es appended to its tag, as upstream's resolveDriverTag; digests are verbatim."""
    if "sha256:" in base:
        return base
    return "-".join([base, *suffixes])


def _has_tag(image: str | None) -> bool:
    return bool(image) and ":" in str(image).rsplit("/", 1)[-1]


def _volume_name(config_map: str) -> str:
    """Upstream names the volume after the ConfigMap; fall back to a hash where that is no DNS label."""
    if _DNS_LABEL.match(config_map):
        return config_map
    return "cm-" + hashlib.sha256(config_map.encode()).hexdigest()[:12]


def _config_map_files(ctx: RenderContext, name: str, field: str, dest: str) -> dict[str, Any]:
    """One read-only subPath mount per key of the ConfigMap under `dest`, so the image's own files stay."""
    keys = ctx.config_maps.get(name)
    if keys is None:
        raise RenderProblem(f"ConfigMap {name} ({field}) not found in namespace {ctx.namespace}")
    volume = _volume_name(name)
    return {
        "mounts": [{"name": volume, "mountPath": f"{dest}/{k}", "subPath": k, "readOnly": True} for k in keys],
        "volume": {"name": volume, "configMap": {"name": name, "items": [{"key": k, "path": k} for k in keys]}}
        if keys
        else None,
    }


def named_secrets(spec: ClusterPolicySpec, groups: Iterable[Any] = ()) -> frozenset[str]:
    """The Secrets driver pods need (driver.secretEnv, driver.licensingConfig.secretName), or with NVIDIADrivers
    (`groups`) each one's."""
    if not spec.driver.enabled:
        return frozenset()
    specs = [g.spec for g in groups] if spec.driver.use_nvidia_driver_crd else [spec]
    names = (n for s in specs for n in (s.driver.secret_env, s.driver.licensing_config.secret_name))
    return frozenset(n for n in names if n)


def _pool_nodes(nodes: tuple[NodeFacts, ...], pool: Pool) -> list[NodeFacts]:
    return [
        n
        for n in nodes
        if gets_driver(n)
        and (n.os_id, n.os_version) == (pool.os_id, pool.os_version)
        and (not pool.kernel or pool_kernel(n) == pool.kernel)
    ]


_NVIDIADRIVER_FIELDS = {
    "repoConfig.configMapName": "repoConfig.name",
    "licensingConfig.configMapName": "licensingConfig.name",
}


def _field(ctx: RenderContext, name: str) -> str:
    """A driver field as the user wrote it: under `driver.` in a ClusterPolicy, at the top of an NVIDIADriver
    (whose repoConfig and licensingConfig name their ConfigMap `name`)."""
    if ctx.driver_group is not None:
        return _NVIDIADRIVER_FIELDS.get(name, name)
    return f"driver.{name}"


def _check_licensing(ctx: RenderContext) -> None:
    """The licensing Secret (its keys are not known here) or ConfigMap exists, the ConfigMap with the keys the
    volume lists: else the kubelet cannot mount it and no driver pod starts."""
    licensing = ctx.spec.driver.licensing_config
    if licensing.secret_name:
        if licensing.secret_name in ctx.missing_secrets:
            field = _field(ctx, "licensingConfig.secretName")
            raise RenderProblem(f"Secret {licensing.secret_name} ({field}) not found in namespace {ctx.namespace}")
        return
    name, field = licensing.config_map_name, _field(ctx, "licensingConfig.configMapName")
    keys = ctx.config_maps.get(name)
    if keys is None:
        raise RenderProblem(f"ConfigMap {name} ({field}) not found in namespace {ctx.namespace}")
    if GRIDD_CONF not in keys:
        raise RenderProblem(f"ConfigMap {name} ({field}) has no key {GRIDD_CONF}")
    if licensing.nls_enabled and NLS_TOKEN not in keys:
        nls = _field(ctx, "licensingConfig.nlsEnabled")
        raise RenderProblem(f"ConfigMap {name} ({field}) has no key {NLS_TOKEN}, needed with {nls}")


def _pool(ctx: RenderContext, pool: Pool) -> dict[str, Any]:
    spec = ctx.spec
    driver = spec.driver
    precompiled = driver.use_precompiled
    os_tag = image_os_tag(pool.os_id, pool.os_version)
    env = ctx.driver_group is None  # an NVIDIADriver's images fall back to no env var (upstream's GetImagePath)
    base = images.resolve(driver, "driver", env=env)
    if precompiled and "sha256:" in base:
        # One digest is one kernel's modules; every kernel pool would run it.
        raise RenderProblem(
            f"{_field(ctx, 'usePrecompiled')}: an image digest ({base}) is not supported with precompiled drivers, "
            "whose images are per kernel (<version>-<kernel>-<os>); name a version instead"
        )
    from_env = images.env_default("driver") if env and not driver.image else ""  # what `base` came from
    if precompiled and not (driver.version or _has_tag(driver.image or from_env)):
        # Our default is a full version; precompiled images are published per branch only (upstream refuses too).
        field = f"DRIVER_IMAGE ({from_env}, the operator's env)" if from_env else _field(ctx, "version")
        raise RenderProblem(
            f"{field}: usePrecompiled needs a driver branch such as 580; precompiled images are "
            "tagged <branch>-<kernel>-<os>"
        )
    if ctx.driver_group is not None and ctx.driver_group.problem:  # upstream's ImagePath error: ReconcileFailed
        raise RenderProblem(ctx.driver_group.problem)
    if driver.secret_env in ctx.missing_secrets:  # its envFrom would keep nvidia-driver-ctr from starting
        raise RenderProblem(
            f"Secret {driver.secret_env} ({_field(ctx, 'secretEnv')}) not found in namespace {ctx.namespace}"
        )
    image = _tagged(base, pool.kernel, os_tag) if pool.kernel else _tagged(base, os_tag)

    driver_mounts: list[dict[str, Any]] = []  # extra mounts of the driver container
    sidecar_mounts: list[dict[str, Any]] = []  # repo and certificate files, for the GDS and GDRCopy sidecars
    peermem_mounts: list[dict[str, Any]] = []
    volumes: list[dict[str, Any]] = []

    def add_volume(volume: dict[str, Any] | None) -> None:
        if volume and volume["name"] not in {v["name"] for v in volumes}:
            volumes.append(volume)

    if not precompiled:
        for ref, field, dirs in (
            (driver.repo_config.config_map_name, _field(ctx, "repoConfig.configMapName"), REPO_CONFIG_DIRS),
            (driver.cert_config.name, _field(ctx, "certConfig.name"), CERT_CONFIG_DIRS),
        ):
            if not ref:
                continue
            if pool.os_id not in dirs:
                raise RenderProblem(f"{field}: not supported for the OS {pool.os_id} of pool {pool.name}")
            files = _config_map_files(ctx, ref, field, dirs[pool.os_id])
            driver_mounts += files["mounts"]
            sidecar_mounts += files["mounts"]
            add_volume(files["volume"])
        runtimes = {n.runtime for n in _pool_nodes(ctx.nodes, pool)}
        subscriptions = SUBSCRIPTIONS.get(pool.os_id, {})
        if pool.os_id == "rhel" and (runtimes == {"cri-o"} or driver.repo_config.config_map_name):
            subscriptions = {}  # cri-o injects them itself; a repo ConfigMap replaces them
        for i, ctr_path in enumerate(sorted(subscriptions)):
            host_path, kind = subscriptions[ctr_path]
            name = f"subscription-config-{i}"
            driver_mounts.append({"name": name, "mountPath": ctr_path, "readOnly": True})
            add_volume({"name": name, "hostPath": {"path": host_path, "type": kind}})
    elif pool.os_id in ("sles", "sl-micro"):
        driver_mounts.append({"name": "lib-modules", "mountPath": "/run/host/lib/modules", "readOnly": True})
        add_volume({"name": "lib-modules", "hostPath": {"path": "/lib/modules", "type": "Directory"}})

    if driver.kernel_module_config.name:
        field = _field(ctx, "kernelModuleConfig.name")
        files = _config_map_files(ctx, driver.kernel_module_config.name, field, DRIVERS_DIR)
        driver_mounts += files["mounts"]
        peermem_mounts += files["mounts"]
        add_volume(files["volume"])

    licensing = driver.licensing_config
    secret = licensing.secret_name
    if secret or licensing.config_map_name:
        _check_licensing(ctx)
        items = [{"key": GRIDD_CONF, "path": GRIDD_CONF}]
        driver_mounts.append(
            {
                "name": "licensing-config",
                "mountPath": f"{DRIVERS_DIR}/{GRIDD_CONF}",
                "subPath": GRIDD_CONF,
                "readOnly": True,
            }
        )
        if licensing.nls_enabled:
            items.append({"key": NLS_TOKEN, "path": NLS_TOKEN})
            driver_mounts.append(
                {
                    "name": "licensing-config",
                    "mountPath": f"{DRIVERS_DIR}/ClientConfigToken/{NLS_TOKEN}",
                    "subPath": NLS_TOKEN,
                    "readOnly": True,
                }
            )
        source = (
            {"secret": {"secretName": secret, "items": items}}
            if secret
            else {"configMap": {"name": licensing.config_map_name, "items": items}}
        )
        add_volume({"name": "licensing-config", **source})

    group = ctx.driver_group  # an NVIDIADriver's pools: its names, and only its nodes
    return {
        "name": group.pool_name(pool) if group else pool.name,
        "image": image,
        "node_selector": {
            "nvidia.com/gpu.deploy.driver": "true",
            **pool.node_selector(),
            **(group.node_selector() if group else {}),
        },
        "node_affinity": group.node_affinity() if group else excluding_owned(None),
        "gds_image": _tagged(images.resolve(spec.gds, "gds", env=env), os_tag),
        "gdrcopy_image": _tagged(images.resolve(spec.gdrcopy, "gdrcopy", env=env), os_tag),
        "driver_mounts": driver_mounts,
        "sidecar_mounts": sidecar_mounts,
        "peermem_mounts": peermem_mounts,
        "volumes": volumes,
    }


def _pull_policy(section: ImageSpec) -> str:
    return section.image_pull_policy or "IfNotPresent"


def _vars(ctx: RenderContext) -> dict[str, Any]:
    spec = ctx.spec
    driver = spec.driver
    # Under NVIDIADrivers the ClusterPolicy renders only the shared objects: each NVIDIADriver checks its own spec.
    own = ctx.driver_group is not None or not driver.use_nvidia_driver_crd
    if own and driver.use_precompiled and (spec.gds.enabled or spec.gdrcopy.enabled):
        sidecar = "gds" if spec.gds.enabled else "gdrcopy"
        raise RenderProblem(f"{sidecar}.enabled: not supported with precompiled drivers "
                            f"({_field(ctx, 'usePrecompiled')})")
    # Upstream refuses it for an NVIDIADriver only (its ClusterPolicy path does not check).
    needs_open = spec.gds.enabled and gds_needs_open_modules(spec.gds.version)
    if ctx.driver_group is not None and needs_open and driver.kernel_module_type != "open":
        raise RenderProblem(f"gds.version {spec.gds.version}: GPUDirect Storage from "
                            f"{'.'.join(map(str, GDS_OPEN_FROM))} is only supported with the open kernel modules "
                            f"(NVIDIA OpenRM); set kernelModuleType: open (kernelModuleType "
                            f"{driver.kernel_module_type})")  # fmt: skip
    pools = [_pool(ctx, pool) for pool in driver_pools(list(ctx.nodes), driver.use_precompiled)]
    extra_secrets = [*driver.manager.image_pull_secrets]
    for section in (spec.gds, spec.gdrcopy):
        if section.enabled:
            extra_secrets += section.image_pull_secrets
    return {
        "pools": pools,
        "manager_image": (ctx.driver_group is not None and ctx.driver_group.manager_image)
        or images.resolve(driver.manager, "driver-manager"),
        "manager_pull_policy": _pull_policy(driver.manager),
        "gds_pull_policy": _pull_policy(spec.gds),
        "gdrcopy_pull_policy": _pull_policy(spec.gdrcopy),
        "extra_pull_secrets": list(dict.fromkeys(extra_secrets)),
        "secret_env_name": driver.secret_env,
        "host_network": driver.host_network,
        "sidecar_probe": _probe(None, initial_delay=10, period=10, timeout=10, failures=120),
        "peermem_liveness": _probe(None, initial_delay=30, period=30, timeout=10, failures=1),
        "probes": {
            "startupProbe": _probe(driver.startup_probe, initial_delay=60, period=10, timeout=60, failures=120),
            # Not in upstream's pod (it fails on these fields): the startup probe's check, run on and on.
            "livenessProbe": _probe(driver.liveness_probe, 60, 10, 60, 3) if driver.liveness_probe else None,
            "readinessProbe": _probe(driver.readiness_probe, 60, 10, 60, 3) if driver.readiness_probe else None,
        },
    }


def _probe(given: Any, initial_delay: int = 0, period: int = 10, timeout: int = 1, failures: int = 3) -> dict[str, int]:
    """Probe timings: the spec's non-zero values over the template's (upstream's setContainerProbe)."""
    out = {
        "initialDelaySeconds": initial_delay,
        "periodSeconds": period,
        "timeoutSeconds": timeout,
        "failureThreshold": failures,
        "successThreshold": 1,
    }
    if given is not None:
        for key, attr in (
            ("initialDelaySeconds", "initial_delay_seconds"),
            ("periodSeconds", "period_seconds"),
            ("timeoutSeconds", "timeout_seconds"),
            ("failureThreshold", "failure_threshold"),
            ("successThreshold", "success_threshold"),
        ):
            if getattr(given, attr):
                out[key] = getattr(given, attr)
    return out


# What a driver (re)install depends on; the driver manager skips the uninstall when the digest is unchanged.
_INSTALL_CONTAINERS = ("k8s-driver-manager", "nvidia-driver-ctr", "nvidia-peermem-ctr", "nvidia-fs-ctr",
                       "nvidia-gdrcopy-ctr")  # fmt: skip


def config_digest(pod: dict[str, Any]) -> str:
    """A digest of the install-relevant part of a driver pod: images, commands, env values, env sources,
    mounts and volumes (labels, probes and resources do not count)."""
    relevant: dict[str, Any] = {"volumes": pod.get("volumes", [])}
    for c in pod.get("initContainers", []) + pod.get("containers", []):
        if c["name"] in _INSTALL_CONTAINERS:
            relevant[c["name"]] = {
                "image": c.get("image"),
                "command": c.get("command"),
                "args": c.get("args"),
                "env": [e for e in c.get("env", []) if "value" in e and e["name"] != CONFIG_DIGEST_ENV],
                "envFrom": c.get("envFrom"),
                "volumeMounts": c.get("volumeMounts"),
            }
    blob = json.dumps(relevant, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _default_manager(ctx: RenderContext) -> bool:
    """An NVIDIADriver's pods whose k8s-driver-manager image is the operator's default (its `manager` names none)."""
    manager = ctx.spec.driver.manager
    return ctx.driver_group is not None and not (manager.repository or manager.image or manager.version)


def _finalize(objects: list[dict[str, Any]], ctx: RenderContext) -> None:
    """Set DRIVER_CONFIG_DIGEST on the driver manager and the driver container of every pool (and, on an
    NVIDIADriver's DaemonSets with the default manager image, MANAGER_IMAGE_ANNOTATION)."""
    for obj in objects:
        if obj["kind"] != "DaemonSet":
            continue
        pod = obj["spec"]["template"]["spec"]
        containers = {c["name"]: c for c in pod["initContainers"] + pod["containers"]}
        digest = config_digest(pod)
        for name in ("k8s-driver-manager", "nvidia-driver-ctr"):
            env = containers[name].setdefault("env", [])
            env[:] = [e for e in env if e["name"] != CONFIG_DIGEST_ENV] + [{"name": CONFIG_DIGEST_ENV, "value": digest}]
        if _default_manager(ctx):
            annotations = obj["metadata"].setdefault("annotations", {})
            annotations[MANAGER_IMAGE_ANNOTATION] = containers["k8s-driver-manager"]["image"]


def kept_manager_images(
    owned: Iterable[dict[str, Any]], revisions: Mapping[str, dict[str, Any]] | None = None
) -> dict[str, tuple[str, str]]:
    """RenderContext.kept_manager_images from the cluster's objects: each DaemonSet with MANAGER_IMAGE_ANNOTATION,
    by name: (that image, its last-applied hash). A driver DaemonSet made before that annotation (by an older operator)
    has the image its newest ControllerRevision's k8s-driver-manager runs (observe.revision_projection's `manager`):
    the owned-object cache keeps no containers."""
    newest: dict[str, tuple[int, str]] = {}  # DaemonSet uid -> (revision number, manager image)
    for rev in (revisions or {}).values():
        uid, number = (rev.get("metadata") or {}).get("ownerUid"), int(rev.get("revision") or 0)
        if uid and number >= newest.get(uid, (-1, ""))[0]:
            newest[uid] = (number, str(rev.get("manager") or ""))
    out = {}
    for obj in owned:
        meta = obj.get("metadata") or {}
        annotations = meta.get("annotations") or {}
        if obj.get("kind") != "DaemonSet":
            continue
        image = annotations.get(MANAGER_IMAGE_ANNOTATION) or newest.get(meta.get("uid") or "", (0, ""))[1]
        if image:
            out[meta["name"]] = (image, annotations.get(HASH_ANNOTATION, ""))
    return out


def _bare_hash(ds: dict[str, Any]) -> str:
    """The hash of a rendered DaemonSet without MANAGER_IMAGE_ANNOTATION: an older operator's for the same object."""
    bare = {**ds, "metadata": {**ds["metadata"], "annotations": dict(ds["metadata"]["annotations"])}}
    del bare["metadata"]["annotations"][MANAGER_IMAGE_ANNOTATION]
    return object_hash(bare)


def _unpooled_note(ctx: RenderContext) -> str | None:
    if not ctx.spec.driver.use_nvidia_driver_crd:
        precompiled = ctx.spec.driver.use_precompiled
        return unpooled_note(unpooled(list(ctx.nodes), precompiled), precompiled)
    notes = []  # each NVIDIADriver's nodes are pooled by its own usePrecompiled, not the ClusterPolicy's
    for precompiled in (False, True):
        mine = {n for g in ctx.nvidia_drivers if g.spec.driver.use_precompiled == precompiled for n in g.nodes}
        if mine and (note := unpooled_note([n for n in unpooled(list(ctx.nodes), precompiled) if n in mine],
                                           precompiled)):  # fmt: skip
            notes.append(note)
    return "; ".join(notes) or None


def unpooled_note(missing: list[str], precompiled: bool) -> str | None:
    """GPU nodes that fit no driver pool because NFD did not label their OS (or kernel) (nodes.unpooled), named."""
    if not missing:
        return None
    labels = "os-release ID/VERSION_ID" + (" and kernel-version.full" if precompiled else "")
    shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
    return f"no driver for {shown}: NFD labels {labels} missing"


@dataclass(frozen=True)
class DriverState(OperandState):
    """With driver.useNvidiaDriverCRD, the shared objects once and each NVIDIADriver's pool DaemonSets."""

    def render(self, ctx: RenderContext) -> list[dict[str, Any]]:
        if not ctx.spec.driver.use_nvidia_driver_crd:
            return super().render(ctx)
        objects = super().render(replace(ctx, nodes=()))  # service account, roles, config map: no pools
        held: dict[str, str] = {}  # one NVIDIADriver's spec that cannot render holds its DaemonSets, not the others'
        for group in ctx.nvidia_drivers:
            nodes = tuple(n for n in ctx.nodes if n.name in group.nodes)
            sub = replace(ctx, spec=group.spec, nodes=nodes, owner=group.owner, driver_group=group)
            try:
                objects += self._keep_manager_image(sub, [o for o in super().render(sub) if o["kind"] == "DaemonSet"])
            except RenderProblem as exc:
                held[str(group.owner.get("uid", ""))] = f"NVIDIADriver {group.name}: {exc}"
        if held:
            raise PartialRender(objects, held)
        return objects

    def _keep_manager_image(self, sub: RenderContext, rendered: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """An NVIDIADriver's DaemonSets with the default manager image keep the one they run while nothing else
        changes (upstream's handleDefaultImagesInObjects): a new default, from an operator upgrade, would put every
        driver pod out of date (and under autoUpgrade reinstall every node's driver)."""
        if not sub.kept_manager_images or not _default_manager(sub):
            return rendered
        out = []
        again: dict[str, dict[str, dict[str, Any]]] = {}  # image -> the DaemonSets rendered with it, by name
        for ds in rendered:
            name = ds["metadata"]["name"]
            image, live_hash = sub.kept_manager_images.get(name, ("", ""))
            if image and image != ds["metadata"]["annotations"].get(MANAGER_IMAGE_ANNOTATION):
                if image not in again:
                    with_image = replace(sub, driver_group=replace(sub.driver_group, manager_image=image))
                    again[image] = {o["metadata"]["name"]: o for o in super().render(with_image)}
                kept = again[image].get(name)
                # The same DaemonSet as the cluster's (the NVIDIADriver's spec did not change), with the annotation or
                # as made before it.
                if kept is not None and live_hash in (kept["metadata"]["annotations"][HASH_ANNOTATION],
                                                      _bare_hash(kept)):  # fmt: skip
                    ds = kept
            out.append(ds)
        return out


STATE = DriverState(
    name="state-driver",
    order=3,
    section="driver",
    component="driver",
    container="nvidia-driver-ctr",
    sub_containers=(("k8s-driver-manager", "manager"),),
    deploy_label="driver",
    on_delete=True,
    enabled_when=lambda spec: spec.driver.enabled,
    extra_vars=_vars,
    depends_on_nodes=True,
    finalize=_finalize,
    resources_everywhere=True,
    readiness_notes=_unpooled_note,
)
