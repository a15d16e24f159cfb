"""The tooling around the end-to-end suite and the newcomer's path: e2e/cluster/build.sh, the Makefile's venv,
`make demo` / `make cluster-down`, and the processes the e2e session starts. Nothing here compiles Go or starts a
cluster: build.sh runs with its binaries faked as cached, a file:// module proxy (or none), and `go build`
stubbed."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from support import REPO

BUILD_SH = REPO / "e2e" / "cluster" / "build.sh"
GO = shutil.which("go")


# --- build.sh -------------------------------------------------------------------------------------------------


def _fake_cache(tmp: Path, *names: str) -> Path:
    """A cache where these binaries are already built (etcd and kwok by default: build.sh goes straight to
    kubernetes)."""
    cache = tmp / "cache"
    (cache / "bin").mkdir(parents=True)
    for name in names or ("etcd-v3.6.16", "kwok-v0.8.0"):
        p = cache / "bin" / name
        p.write_text("#!/bin/sh\n")
        p.chmod(0o755)
    return cache


def _go_env(tmp: Path, cache: Path, proxy: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        GPU_OPERATOR_E2E_CACHE=str(cache), GOPROXY=proxy, GOSUMDB="off", GOTOOLCHAIN="local",
        GOPATH=str(tmp / "gopath"), GOMODCACHE=str(tmp / "gopath" / "mod"), GOCACHE=str(tmp / "gocache"),
    )  # fmt: skip
    return env


@pytest.mark.skipif(GO is None, reason="needs the go command (no compiling: it only resolves modules)")
def test_build_sh_says_why_kubernetes_cannot_be_resolved(tmp_path: Path) -> None:
    """`go mod download -json` reports a failure only in its JSON on stdout, which build.sh piped into sed: with
    the Go proxy unreachable (or K8S_VERSION mistyped) the script exited 1 after 'resolving staging modules' with
    no reason at all (`make test` then showed only `make: *** [Makefile:33: binaries] Error 1`)."""
    cache = _fake_cache(tmp_path)
    r = subprocess.run(["bash", str(BUILD_SH)], env=_go_env(tmp_path, cache, "off"), capture_output=True,
                       text=True, timeout=120)  # fmt: skip
    assert r.returncode != 0
    assert "k8s.io/kubernetes@v1.37.2" in r.stderr and "GOPROXY=off" in r.stderr, r.stderr
    assert '"Error"' in r.stderr, r.stderr  # go's own words
