"""Fuzzing `render` with ClusterPolicies drawn from the CRD's schema (e2e/schemafuzz.py), valid and mutated.

Never a traceback: a spec the schema admits renders (exit 0) or is refused with exit 2 and one `spec.<path>: ...`
line per problem (a rule the schema cannot express, such as the image fields going together); a mutant the
schema rejects is refused with exit 2 naming the mutated field. Derandomized, so a failure reproduces.
"""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from e2e.schemafuzz import Mutant, mutants, specs
from hypothesis import HealthCheck, given, settings

from gpu_operator.api import parse_spec
from gpu_operator.cli import main
from support import REPO, render_all

NODES = REPO / "manifests" / "samples" / "nodes-mixed-os.yaml"
PROBLEM = re.compile(r"^error: spec(\.[A-Za-z0-9_]+|\[[0-9]+\])*: \S")
FUZZ = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])  # fmt: skip


def render(spec: object, tmp: Path) -> tuple[int, str, str]:
    path = tmp / "policy.yaml"
    policy = {"apiVersion": "nvidia.com/v1", "kind": "ClusterPolicy", "metadata": {"name": "p"}, "spec": spec}
    path.write_text(yaml.safe_dump(policy))
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["render", "--policy", str(path), "--nodes", str(NODES)])
    return rc, out.getvalue(), err.getvalue()


@FUZZ
@given(spec=specs())
def test_specs_the_schema_admits_render_or_name_the_field(spec: dict[str, object], tmp_path_factory: object) -> None:
    tmp = tmp_path_factory.mktemp("fuzz")  # type: ignore[attr-defined]
    rc, out, err = render(spec, tmp)
    assert rc in (0, 2), err
    if rc == 2:
        assert out == ""
        assert err and all(PROBLEM.match(line) for line in err.splitlines()), err
    else:
        assert "kind: DaemonSet" in out or "disabled" in out


@FUZZ
@given(mutant=mutants())
def test_specs_the_schema_rejects_fail_naming_the_field(mutant: Mutant, tmp_path_factory: object) -> None:
    tmp = tmp_path_factory.mktemp("fuzz")  # type: ignore[attr-defined]
    rc, out, err = render(mutant.spec, tmp)
    assert (rc, out) == (2, ""), f"{mutant.how} at {mutant.path} was accepted"
    lines = err.splitlines()
    assert all(PROBLEM.match(line) for line in lines), err
    assert any(line.startswith(f"error: {mutant.path}:") for line in lines), f"{mutant.how} at {mutant.path}:\n{err}"


def test_a_string_yaml_reads_as_syntax_is_named_not_a_traceback(tmp_path: Path) -> None:
    """Found by the fuzzing above: such a string broke the manifest's YAML inside `render`."""
    rc, _, err = render({"hostPaths": {"driverInstallDir": "/run/x: y"}}, tmp_path)
    assert rc == 0
    assert "spec.hostPaths.driverInstallDir: not a plain string (YAML syntax in it), so not rendered" in err



def exporter_problem(spec: dict[str, Any]) -> str | None:
    return next(p for p in render_all(parse_spec(spec)) if p.state.name == "state-dcgm-exporter").problem


BAD_DIRECTORY = {"hpcJobMapping": {"enabled": True, "directory": "/var/lib/x: y"}}


def test_a_string_yaml_reads_as_syntax_is_named_without_the_default_max_unavailable() -> None:
    """The message named every spec string YAML does not read back as itself, so also the default
    daemonsets.rollingUpdate.maxUnavailable "1" (read as a number, which breaks nothing)."""
    problem = exporter_problem({"dcgmExporter": BAD_DIRECTORY})
    assert problem is not None and "spec.dcgmExporter.hpcJobMapping.directory" in problem
    assert "maxUnavailable" not in problem, problem


@pytest.mark.parametrize("version", ["4", "4.6"])
def test_a_string_yaml_reads_as_syntax_is_named_without_a_numeric_looking_version(version: str) -> None:
    """Also another component's version, read as a number (and rendered quoted)."""
    dcgm = {"repository": "nvcr.io/nvidia/cloud-native", "image": "dcgm", "version": version}
    problem = exporter_problem({"dcgm": dcgm, "dcgmExporter": BAD_DIRECTORY})
    assert problem is not None and "spec.dcgm.version" not in problem, problem


def test_a_string_yaml_reads_as_syntax_is_named_only_in_the_state_it_breaks() -> None:
    """Another component's such string, which the exporter does not render, was named too."""
    problem = exporter_problem({"dcgmExporter": BAD_DIRECTORY, "toolkit": {"installDir": "/usr/x: z"}})
    assert problem and problem.split(":")[0] == "spec.dcgmExporter.hpcJobMapping.directory", problem


def test_the_default_hpc_job_mapping_directory_renders() -> None:
    assert exporter_problem({"dcgmExporter": {"hpcJobMapping": {"enabled": True}}}) is None


INVALID = yaml.safe_load((REPO / "tests" / "fixtures" / "invalid-policies.yaml").read_text())


@pytest.mark.parametrize("case", INVALID, ids=[c["path"] for c in INVALID])
def test_held_out_invalid_policies_fail_naming_the_field(case: dict[str, Any], tmp_path: Path) -> None:
    rc, out, err = render(case["spec"], tmp_path)
    assert (rc, out) == (2, "")
    assert any(line.startswith(f"error: {case['path']}:") for line in err.splitlines()), err
