"""Default component images (the upstream v26.7 version matrix) and the image resolution rule."""

from __future__ import annotations

import os

from .api import ImageSpec

# component key -> (repository, image, version)
DEFAULTS: dict[str, tuple[str, str, str]] = {
    "driver": ("nvcr.io/nvidia", "driver", "595.91.07"),
    "driver-manager": ("nvcr.io/nvidia/cloud-native", "k8s-driver-manager", "v0.12.0"),
    "toolkit": ("nvcr.io/nvidia/k8s", "container-toolkit", "v1.20.0"),
    "device-plugin": ("nvcr.io/nvidia", "k8s-device-plugin", "v0.20.0"),
    "gfd": ("nvcr.io/nvidia", "k8s-device-plugin", "v0.20.0"),
    "dcgm": ("nvcr.io/nvidia/cloud-native", "dcgm", "4.6.0-1-ubuntu24.04"),
    "dcgm-exporter": ("nvcr.io/nvidia/k8s", "dcgm-exporter", "4.6.0-4.8.3-distroless"),
    "mig-manager": ("nvcr.io/nvidia/cloud-native", "k8s-mig-manager", "v0.15.0"),
    # Since v26.x the validator (and the node-status exporter it runs) ships in the operator's own image.
    "validator": ("nvcr.io/nvidia", "gpu-operator", "v26.7.0"),
    "node-status-exporter": ("nvcr.io/nvidia", "gpu-operator", "v26.7.0"),
    "gds": ("nvcr.io/nvidia/cloud-native", "nvidia-fs", "2.29.4"),
    "gdrcopy": ("nvcr.io/nvidia/cloud-native", "gdrdrv", "v2.6"),
    "vfio-manager": ("nvcr.io/nvidia", "cuda", "12.8.1-base-ubi9"),
    "vgpu-device-manager": ("nvcr.io/nvidia/cloud-native", "vgpu-device-manager", "v0.4.1"),
    "sandbox-device-plugin": ("nvcr.io/nvidia", "kubevirt-gpu-device-plugin", "v1.4.0"),
    "cc-manager": ("nvcr.io/nvidia/cloud-native", "k8s-cc-manager", "v0.2.0"),
    "vgpu-manager": ("nvcr.io/nvidia", "vgpu-manager", "595.91.07"),
}


# The operator's own env that names a component's image when the ClusterPolicy names none (upstream's ImagePath,
# api/nvidia/v1/clusterpolicy_types.go; OLM sets these, upstream's chart VALIDATOR_IMAGE and DRIVER_MANAGER_IMAGE).
# An NVIDIADriver's driver, GDS and GDRCopy images take none (upstream passes no env name there).
ENV: dict[str, str] = {
    "driver": "DRIVER_IMAGE",
    "driver-manager": "DRIVER_MANAGER_IMAGE",
    "toolkit": "CONTAINER_TOOLKIT_IMAGE",
    "device-plugin": "DEVICE_PLUGIN_IMAGE",
    "gfd": "GFD_IMAGE",
    "dcgm": "DCGM_IMAGE",
    "dcgm-exporter": "DCGM_EXPORTER_IMAGE",
    "mig-manager": "MIG_MANAGER_IMAGE",
    "validator": "VALIDATOR_IMAGE",
    "node-status-exporter": "VALIDATOR_IMAGE",
    "gds": "GDS_IMAGE",
    "gdrcopy": "GDRCOPY_IMAGE",
    "vfio-manager": "VFIO_MANAGER_IMAGE",
    "vgpu-device-manager": "VGPU_DEVICE_MANAGER_IMAGE",
    "sandbox-device-plugin": "SANDBOX_DEVICE_PLUGIN_IMAGE",
    "cc-manager": "CC_MANAGER_IMAGE",
    "vgpu-manager": "VGPU_MANAGER_IMAGE",
}


def env_default(component: str) -> str:
    """The image the operator's env names for a component (ENV), or ""."""
    name = ENV.get(component)
    return os.environ.get(name, "").strip() if name else ""


def join(repository: str, image: str, version: str) -> str:
    sep = "@" if version.startswith("sha256:") else ":"
    return f"{repository}/{image}{sep}{version}"


def resolve(spec: ImageSpec, component: str, version: str | None = None, env: bool = True) -> str:
    """`repository/image:version`, `...@sha256:`, `image` verbatim, the operator's env (ENV; not with `env=False`),
    or the component's default.

    `version` overrides the version part (the driver's per-pool tag); partial fields are rejected by the model.
    """
    if spec.repository and spec.image and spec.version:
        return join(spec.repository, spec.image, version or spec.version)
    if spec.image:
        return spec.image
    if env and (from_env := env_default(component)) and not version:
        return from_env
    repo, image, default_version = DEFAULTS[component]
    return join(repo, image, version or default_version)


def _version_in(ref: str) -> str | None:
    """The tag of an image reference (`repo:tag` and `repo:tag@sha256:...` alike), else its digest, else None."""
    name, _, digest = ref.partition("@")
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        return last.rsplit(":", 1)[1]
    return digest or None


def version_of(spec: ImageSpec, component: str) -> str:
    """The version a component will run: the spec's, the tag (else digest) of a verbatim image or of the operator's
    env image, or the default."""
    if spec.version:
        return spec.version
    if spec.image and (found := _version_in(spec.image)):
        return found
    if (from_env := env_default(component)) and (found := _version_in(from_env)):
        return found
    return DEFAULTS[component][2]
