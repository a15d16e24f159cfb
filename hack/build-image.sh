#!/usr/bin/env bash
# Build the operator image without a container engine: an OCI image archive (also loadable by `docker load`,
# `kind load image-archive`, `ctr images import` and `podman load`).
#
#   layer 1: a Debian root filesystem (debootstrap minbase + python3), trimmed; cached outside the repository
#   layer 2: /opt/gpu-operator, a venv holding the project's wheel and its dependencies from PyPI, installed by
#            the image's own Python (pip run from its wheel, in a chroot)
#   config:  entrypoint, cmd, user, env and ports as in the Dockerfile, set with umoci
#
# Needs root (debootstrap, chroot, mount namespace). debootstrap and umoci come from Debian's packages and are
# installed with apt-get when missing. Usage: build-image.sh [--print-ref]
# Settings (environment): IMAGE_ARCHIVE (output, default dist/gpu-operator-image.tar), IMAGE_NAME (default
# gpu-operator), IMAGE_TAG (default: the project's version), DEBIAN_SUITE (bookworm), DEBIAN_MIRROR
# (debootstrap's default when empty), PYTHON (builds the wheel; default python3), GPU_OPERATOR_E2E_CACHE.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}
VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$REPO/pyproject.toml" | head -1)
IMAGE_NAME=${IMAGE_NAME:-gpu-operator}
IMAGE_TAG=${IMAGE_TAG:-$VERSION}
REF="$IMAGE_NAME:$IMAGE_TAG"
if [ "${1:-}" = "--print-ref" ]; then echo "$REF"; exit 0; fi

OUT=${IMAGE_ARCHIVE:-$REPO/dist/gpu-operator-image.tar}
SUITE=${DEBIAN_SUITE:-bookworm}
MIRROR=${DEBIAN_MIRROR:-}
PACKAGES=python3
CACHE=${GPU_OPERATOR_E2E_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gpu-operator-e2e}/image
APP=/opt/gpu-operator
# Timestamps in the layers and the config, for reproducible digests: the last commit's time.
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$REPO" log -1 --format=%ct 2>/dev/null || echo 0)}
export SOURCE_DATE_EPOCH
CREATED=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ)

log() { printf '[image %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "needs root (debootstrap, chroot and a mount namespace)"

need_tools() {
  local missing=() t
  for t in debootstrap umoci unshare; do command -v "$t" >/dev/null || missing+=("$t"); done
  [ ${#missing[@]} -eq 0 ] && return
  command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get to install them"
  log "installing ${missing[*]} from Debian's packages"
  apt-get install -y -q "${missing[@]}" >/dev/null 2>&1 \
    || { apt-get update -q >/dev/null && apt-get install -y -q "${missing[@]}" >/dev/null; }
}

# Deterministic layer tarball of a directory's contents (names sorted, owners numeric, times clamped).
layer_tar() {  # layer_tar DIR OUT.tar [tar args...]
  local dir=$1 out=$2; shift 2
  tar -C "$dir" --sort=name --numeric-owner --mtime="@$SOURCE_DATE_EPOCH" --clamp-mtime \
    --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime "$@" -cf "$out" .
}

# Runs a command chrooted into ROOTFS in a private mount namespace with /dev, /proc and the host's resolv.conf,
# plus extra bind mounts given as SRC:DEST pairs before `--`. Nothing stays mounted afterwards.
in_chroot() {  # in_chroot ROOTFS [SRC:DEST ...] -- CMD...
  local root=$1; shift
  local binds=()
  while [ "$1" != "--" ]; do binds+=("$1"); shift; done
  shift
  unshare --mount --propagation private -- bash -euc '
    root=$1; shift; n=$1; shift
    mount --rbind /dev "$root/dev"; mount -t proc proc "$root/proc"
    mount --bind /etc/resolv.conf "$root/etc/resolv.conf"
    for ((i = 0; i < n; i++)); do
      src=${1%%:*} dst=$root/${1#*:}; shift
      if [ -d "$src" ]; then mkdir -p "$dst"; else mkdir -p "$(dirname "$dst")"; touch "$dst"; fi
      mount --bind "$src" "$dst"
    done
    exec chroot "$root" "$@"' _ "$root" "${#binds[@]}" "${binds[@]}" env -i PATH=/usr/bin:/bin HOME=/root \
      PYTHONDONTWRITEBYTECODE=1 SOURCE_DATE_EPOCH="$SOURCE_DATE_EPOCH" "$@"
}

build_base() {
  # The key names everything that shapes the base layer; bump recipe when the steps below change.
  local recipe=1 key
  key=$(printf '%s|%s|%s|%s' "$recipe" "$SUITE" "$PACKAGES" "$MIRROR" | sha256sum | cut -c1-12)
  BASE="$CACHE/base-$SUITE-$key"
  if [ -d "$BASE/rootfs" ]; then log "base: cached ($BASE)"; return; fi
  local tmp="$CACHE/tmp-base-$key"
  rm -rf "$tmp"; mkdir -p "$tmp"
  log "base: debootstrap --variant=minbase --include=$PACKAGES $SUITE (a few minutes, once)"
  # shellcheck disable=SC2086
  debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$tmp/rootfs" $MIRROR >"$tmp/debootstrap.log" 2>&1 \
    || { tail -20 "$tmp/debootstrap.log" >&2; die "debootstrap failed (log: $tmp/debootstrap.log)"; }
  local r="$tmp/rootfs"
  # Trim what a container never uses: package caches and lists, docs, man pages, locales, logs, device nodes
  # (the runtime provides /dev). apt and dpkg stay, so the image can still be extended.
  rm -rf "$r"/var/cache/apt/* "$r"/var/lib/apt/lists/* "$r"/usr/share/doc/* "$r"/usr/share/man/* \
    "$r"/usr/share/info/* "$r"/usr/share/locale/* "$r"/var/log/* "$r"/var/cache/debconf/*-old \
    "$r"/var/lib/dpkg/*-old "$r"/dev/*
  : >"$r/etc/resolv.conf"
  printf 'gpu-operator\n' >"$r/etc/hostname"
  rm -rf "$BASE"; mv "$tmp" "$BASE"
  log "base: $(du -sh "$BASE/rootfs" | cut -f1) ($BASE)"
}

# The base layer, compressed once into an OCI layout (tag "base") that each build starts from.
base_layout() {
  if [ -f "$BASE/oci/index.json" ]; then return; fi
  log "base: compressing the base layer (once)"
  rm -rf "$BASE/oci.tmp"
  layer_tar "$BASE/rootfs" "$BASE/layer.tar" --exclude=./build
  umoci init --layout "$BASE/oci.tmp"
  umoci new --image "$BASE/oci.tmp:base"
  umoci raw add-layer --image "$BASE/oci.tmp:base" --history.created "$(date -u -r "$BASE/rootfs/etc/hostname" +%Y-%m-%dT%H:%M:%SZ)" \
    --history.created_by "debootstrap --variant=minbase --include=$PACKAGES $SUITE" "$BASE/layer.tar"
  rm -f "$BASE/layer.tar"
  mv "$BASE/oci.tmp" "$BASE/oci"
}

build_app() {
  WORK=$(mktemp -d "$CACHE/work.XXXXXX")
  trap 'rm -rf "$WORK"' EXIT
  mkdir -p "$WORK/wheel" "$WORK/app$APP" "$CACHE/pip-cache" "$CACHE/pip"
  log "app: building the wheel"
  "$PYTHON" -m pip wheel -q --no-deps --wheel-dir "$WORK/wheel" "$REPO" >&2
  local wheel pip_whl pip
  wheel=/build/wheel/$(basename "$(ls "$WORK"/wheel/gpu_operator-*.whl)")
  # pip itself is run from its wheel (a zip pip can run from), so it is not installed into the image.
  pip_whl=$(ls "$CACHE"/pip/pip-*.whl 2>/dev/null | tail -1 || true)
  if [ -z "$pip_whl" ]; then
    "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --dest "$CACHE/pip" pip >&2
    pip_whl=$(ls "$CACHE"/pip/pip-*.whl | tail -1)
  fi
  pip="$APP/bin/python /build/pip/$(basename "$pip_whl")/pip"
  local binds=("$WORK/wheel:/build/wheel" "$CACHE/pip:/build/pip" "$CACHE/pip-cache:/build/pip-cache")

  # The dependencies are installed once per base and dependency list (pyproject.toml) into a cached venv; delete
  # $CACHE/venv-* to take newer releases. pip inside the chroot reaches PyPI as the host's pip does: same index
  # settings, proxies and CA bundle.
  local key venv
  key=$( { echo "$BASE"; sed -n '/^dependencies = \[/,/^\]/p' "$REPO/pyproject.toml"; } | sha256sum | cut -c1-12)
  venv="$CACHE/venv-$key"
  if [ ! -x "$venv/bin/gpu-operator" ]; then
    local ca=${PIP_CERT:-${REQUESTS_CA_BUNDLE:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}}
    local pass=() v
    if [ -f "$ca" ]; then binds+=("$ca:/build/ca.crt"); pass+=(PIP_CERT=/build/ca.crt); fi
    for v in PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_TRUSTED_HOST PIP_DEFAULT_TIMEOUT HTTP_PROXY HTTPS_PROXY NO_PROXY \
        http_proxy https_proxy no_proxy; do
      [ -n "${!v:-}" ] && pass+=("$v=${!v}")
    done
    log "app: installing the dependencies into $APP with the image's python3, from PyPI (once per dependency list)"
    rm -rf "$venv.tmp"; mkdir -p "$venv.tmp"
    in_chroot "$BASE/rootfs" "${binds[@]}" "$venv.tmp:$APP" -- env "${pass[@]}" bash -euc "
        python3 -m venv --without-pip $APP
        $pip install -q --no-warn-script-location --root-user-action=ignore --cache-dir /build/pip-cache $wheel"
    mv "$venv.tmp" "$venv"
  fi
  log "app: installing $(basename "$wheel") into $APP"
  cp -a "$venv/." "$WORK/app$APP/"
  # The kubernetes client's asyncio copy (about 70 of the venv's 170 MB): nothing here imports it.
  rm -rf "$WORK/app$APP"/lib/python3*/site-packages/kubernetes/aio
  in_chroot "$BASE/rootfs" "${binds[@]}" "$WORK/app$APP:$APP" -- bash -euc "
      $pip install -q --no-index --no-deps --force-reinstall --no-warn-script-location --root-user-action=ignore $wheel
      $APP/bin/gpu-operator --version >/dev/null"
  # The image's user has a name (kopf's peering identity calls getpass.getuser(), which fails for a uid without
  # one) and a home, as distroless's nonroot user.
  mkdir -p "$WORK/app/etc" "$WORK/app/home/nonroot"
  cp -p "$BASE/rootfs/etc/passwd" "$BASE/rootfs/etc/group" "$WORK/app/etc/"
  echo "nonroot:x:65532:65532:nonroot:/home/nonroot:/usr/sbin/nologin" >>"$WORK/app/etc/passwd"
  echo "nonroot:x:65532:" >>"$WORK/app/etc/group"
  chown 65532:65532 "$WORK/app/home/nonroot"
  # The venv's python links to the base layer's /usr/bin/python3.
  layer_tar "$WORK/app" "$WORK/app.tar"
}

assemble() {
  local layout="$WORK/oci" img="$WORK/oci:$IMAGE_TAG"
  log "assemble: umoci ($REF)"
  # A copy of the cached base layout; blobs are content-addressed and never rewritten, so they are hard links.
  mkdir -p "$layout/blobs"
  cp "$BASE/oci/oci-layout" "$BASE/oci/index.json" "$layout/"
  cp -al "$BASE/oci/blobs/sha256" "$layout/blobs/"
  umoci raw add-layer --image "$layout:base" --tag "$IMAGE_TAG" --history.created "$CREATED" \
    --history.created_by "pip install $APP (gpu-operator $VERSION and its dependencies)" "$WORK/app.tar"
  umoci rm --image "$layout:base"
  # Numeric user, so Kubernetes can check runAsNonRoot; the venv first on PATH, so the chart's hook Jobs'
  # `python /hook/cleanup.py` gets the operator's packages.
  umoci config --image "$img" --created "$CREATED" --no-history --os linux --architecture amd64 \
    --config.entrypoint "$APP/bin/gpu-operator" --config.cmd run --config.user 65532:65532 \
    --config.workingdir / --config.env HOME=/home/nonroot \
    --config.env "PATH=$APP/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    --config.env PYTHONUNBUFFERED=1 --config.env PYTHONDONTWRITEBYTECODE=1 \
    --config.exposedports 8080/tcp --config.exposedports 8081/tcp \
    --config.label "org.opencontainers.image.title=gpu-operator" \
    --config.label "org.opencontainers.image.version=$VERSION"
  umoci gc --layout "$layout"
  # Name the image for the tools that load an archive: containerd (kind, ctr) and Docker >= 25 read
  # io.containerd.image.name from index.json, podman and skopeo read org.opencontainers.image.ref.name, older
  # Docker reads manifest.json.
  "$PYTHON" - "$layout" "$REF" <<'EOF'
import json, sys
from pathlib import Path

layout, ref = Path(sys.argv[1]), sys.argv[2]
full = ref if "/" in ref.split(":")[0] else f"docker.io/library/{ref}"
index = json.loads((layout / "index.json").read_text())
(desc,) = index["manifests"]
desc["annotations"] = {"io.containerd.image.name": full, "org.opencontainers.image.ref.name": full}
(layout / "index.json").write_text(json.dumps(index, separators=(",", ":")))
blob = lambda d: "blobs/" + d["digest"].replace(":", "/")  # noqa: E731
manifest = json.loads((layout / blob(desc)).read_text())
docker = [{"Config": blob(manifest["config"]), "RepoTags": [ref], "Layers": [blob(x) for x in manifest["layers"]]}]
(layout / "manifest.json").write_text(json.dumps(docker, separators=(",", ":")))
EOF
  mkdir -p "$(dirname "$OUT")"
  tar -C "$layout" --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$SOURCE_DATE_EPOCH" --mode=a+rX \
    -cf "$OUT.tmp" oci-layout index.json manifest.json blobs
  mv "$OUT.tmp" "$OUT"
}

mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9 || die "cannot lock $CACHE"  # one build at a time uses the cache (make image and the e2e test)
need_tools
build_base
base_layout
build_app
assemble
log "done: $OUT ($(du -h "$OUT" | cut -f1)), $REF"
