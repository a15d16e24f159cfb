#!/usr/bin/env bash
# Build the local cluster's binaries from the Go module proxy into a cache outside the repository.
# Each binary is keyed by version and rebuilt only when missing. Usage: build.sh [--print-dir]
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-v1.37.2}
ETCD_VERSION=${ETCD_VERSION:-v3.6.16}
KWOK_VERSION=${KWOK_VERSION:-v0.8.0}
HELM_VERSION=${HELM_VERSION:-v3.22.0}
TOOLKIT_VERSION=${TOOLKIT_VERSION:-v1.20.0}  # the NVIDIA Container Toolkit, as our default toolkit image
CACHE=${GPU_OPERATOR_E2E_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gpu-operator-e2e}
BIN="$CACHE/bin"
WORK="$CACHE/work"
mkdir -p "$BIN" "$WORK"

if [ "${1:-}" = "--print-dir" ]; then echo "$BIN"; exit 0; fi

export CGO_ENABLED=0 GOFLAGS="-mod=mod -buildvcs=false"
log() { printf '[build %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# One build at a time uses the cache (make binaries, make demo, the e2e session): a second waits, then finds
# what the first built.
exec 9>"$CACHE/.lock"
flock -n 9 || { log "waiting for another build.sh using $CACHE"; flock 9; }

need() {  # need NAME VERSION -> true when $BIN/NAME-VERSION is missing
  [ ! -x "$BIN/$1-$2" ]
}

link() {  # stable names (kube-apiserver, ...) point at the versioned binaries
  ln -sfn "$1-$2" "$BIN/$1"
}

build_kubernetes() {
  local cmds=(kube-apiserver kube-controller-manager kube-scheduler kubectl) missing=()
  for c in "${cmds[@]}"; do need "$c" "$K8S_VERSION" && missing+=("$c"); done
  if [ ${#missing[@]} -eq 0 ]; then for c in "${cmds[@]}"; do link "$c" "$K8S_VERSION"; done; return; fi
  local dir="$WORK/kubernetes-$K8S_VERSION" minor staging_ver
  minor=$(echo "$K8S_VERSION" | cut -d. -f2)
  staging_ver="v0.${K8S_VERSION#v1.}"
  mkdir -p "$dir"
  log "kubernetes $K8S_VERSION: resolving staging modules (${missing[*]})"
  local json modfile
  # With -json a failure is reported only in the JSON's "Error" field (stdout), so show it.
  json=$(cd "$dir" && go mod download -json "k8s.io/kubernetes@$K8S_VERSION") || {
    printf '%s\n' "$json" >&2
    log "error: cannot download k8s.io/kubernetes@$K8S_VERSION (GOPROXY=$(go env GOPROXY))"
    exit 1
  }
  modfile=$(printf '%s\n' "$json" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  {
    echo "module local/kubernetes-build"
    echo
    grep -E '^go ' "$modfile"
    echo
    echo "require k8s.io/kubernetes $K8S_VERSION"
    echo
    # Every staging module the release requires at v0.0.0 is replaced by its matching release.
    grep -E '^\s+k8s\.io/[^ ]+ v0\.0\.0$' "$modfile" | awk -v v="$staging_ver" '{print "replace " $1 " => " $1 " " v}'
  } > "$dir/go.mod"
  local pkgs=()
  for c in "${missing[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$c"); done
  (cd "$dir" && go get "${pkgs[@]/%/@$K8S_VERSION}" >/dev/null 2>&1 || go get "${pkgs[@]/%/@$K8S_VERSION}")
  local vpkg ldflags=""
  for vpkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $vpkg.gitVersion=$K8S_VERSION -X $vpkg.gitMajor=1 -X $vpkg.gitMinor=$minor"
    ldflags+=" -X $vpkg.gitTreeState=clean -X $vpkg.buildDate=1970-01-01T00:00:00Z"
  done
  local hint=" (the first one compiles the shared packages and takes longest)"
  for c in "${missing[@]}"; do
    log "kubernetes $K8S_VERSION: compiling $c$hint"
    hint=""
    (cd "$dir" && go build -trimpath -ldflags "-s -w $ldflags" -o "$BIN/$c-$K8S_VERSION.tmp" "k8s.io/kubernetes/cmd/$c")
    mv "$BIN/$c-$K8S_VERSION.tmp" "$BIN/$c-$K8S_VERSION"
    link "$c" "$K8S_VERSION"
  done
}

build_etcd() {
  if ! need etcd "$ETCD_VERSION"; then link etcd "$ETCD_VERSION"; return; fi
  local dir="$WORK/etcd-$ETCD_VERSION"
  mkdir -p "$dir"
  log "etcd $ETCD_VERSION: compiling"
  # server/v3 uses relative replaces, so it is built from a wrapper module.
  printf 'module local/etcd-build\n\ngo 1.24\n' > "$dir/go.mod"
  (cd "$dir" && go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" >/dev/null 2>&1 || go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION")
  (cd "$dir" && go build -trimpath -ldflags "-s -w" -o "$BIN/etcd-$ETCD_VERSION.tmp" go.etcd.io/etcd/server/v3)
  mv "$BIN/etcd-$ETCD_VERSION.tmp" "$BIN/etcd-$ETCD_VERSION"
  link etcd "$ETCD_VERSION"
}

build_simple() {  # build_simple NAME MODULE_PKG VERSION
  if ! need "$1" "$3"; then link "$1" "$3"; return; fi
  log "$1 $3: compiling"
  local gobin="$WORK/gobin-$1-$3"
  mkdir -p "$gobin"
  GOFLAGS=-buildvcs=false GOBIN="$gobin" go install -trimpath -ldflags "-s -w" "$2@$3"
  mv "$gobin/$1" "$BIN/$1-$3"
  link "$1" "$3"
}

# The installer the toolkit image runs (its `nvidia-toolkit` is a link to it), for e2e/test_toolkit_real.py.
# It needs cgo: it imports go-nvml (through the CDI spec generator), whose bindings are cgo and dlopen the
# driver's libnvidia-ml at run time, so nothing of the driver is needed to build or to run it here.
build_toolkit_installer() {
  local name=nvidia-ctk-installer
  if ! need "$name" "$TOOLKIT_VERSION"; then link "$name" "$TOOLKIT_VERSION"; return; fi
  if ! command -v "${CC:-gcc}" >/dev/null; then
    log "$name: skipped, it needs a C compiler (cgo); install gcc for e2e/test_toolkit_real.py"
    return 0
  fi
  log "$name $TOOLKIT_VERSION: compiling (github.com/NVIDIA/nvidia-container-toolkit, with cgo)"
  local gobin="$WORK/gobin-$name-$TOOLKIT_VERSION"
  mkdir -p "$gobin"
  # go-nvml's header marks old NVML calls deprecated: thousands of warnings that say nothing here.
  CGO_ENABLED=1 CGO_CFLAGS="${CGO_CFLAGS:--O2 -g} -Wno-deprecated-declarations" GOFLAGS=-buildvcs=false GOBIN="$gobin" \
    go install -trimpath -ldflags "-s -w" "github.com/NVIDIA/nvidia-container-toolkit/cmd/$name@$TOOLKIT_VERSION"
  mv "$gobin/$name" "$BIN/$name-$TOOLKIT_VERSION"
  link "$name" "$TOOLKIT_VERSION"
}

start=$(date +%s)
build_etcd
build_simple kwok sigs.k8s.io/kwok/cmd/kwok "$KWOK_VERSION"
build_kubernetes
build_simple helm helm.sh/helm/v3/cmd/helm "$HELM_VERSION"
build_toolkit_installer
# kwok's Stages ship inside its module; keep a copy next to the binaries.
stages="$CACHE/kwok-stages-$KWOK_VERSION"
if [ ! -d "$stages" ]; then
  src=$(go env GOMODCACHE)/sigs.k8s.io/kwok@$KWOK_VERSION/kustomize/stage
  [ -d "$src" ] || (cd "$WORK" && GOFLAGS=-mod=mod go mod download "sigs.k8s.io/kwok@$KWOK_VERSION")
  cp -r "$src" "$stages.tmp" && chmod -R u+w "$stages.tmp" && mv "$stages.tmp" "$stages"
fi
log "binaries ready in $BIN ($(( $(date +%s) - start ))s)"
