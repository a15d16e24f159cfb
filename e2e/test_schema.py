"""End-to-end: the strict ClusterPolicy schema in the API server.

A typo is rejected by `kubectl apply` (strict field validation, its default) naming the field, and pruned under
`--validate=warn` (with a warning) or `--validate=false` (silently). The held-out invalid policies
(tests/fixtures/invalid-policies.yaml) are rejected naming their path. Specs drawn from the schema
(e2e/schemafuzz.py) never get a 5xx: the valid ones are admitted, the mutants rejected naming the mutated field,
and whatever the operator itself refuses among the admitted ones names `spec.<path>` (the message the operator
puts in the InvalidSpec condition: e2e/test_operator.py::
test_invalid_spec_the_schema_admits_is_reported_in_the_status).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings

from e2e.cluster.localcluster import LocalCluster, bin_dir
from e2e.kube import Kube, wait_for
from e2e.schemafuzz import Mutant, mutants, specs
from gpu_operator.api import PolicyError, parse_spec
from gpu_operator.kube import ApiError

REPO = Path(__file__).resolve().parents[1]
POLICIES = "/apis/nvidia.com/v1/clusterpolicies"
INVALID = yaml.safe_load((REPO / "tests" / "fixtures" / "invalid-policies.yaml").read_text())
FUZZ = settings(max_examples=15, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])  # fmt: skip


def policy(spec: Any, name: str = "schema-test") -> dict[str, Any]:
    return {"apiVersion": "nvidia.com/v1", "kind": "ClusterPolicy", "metadata": {"name": name}, "spec": spec}


@pytest.fixture(scope="module")
def kubectl(cluster: LocalCluster, kube: Kube) -> Any:
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}

    def run(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(bin_dir() / "kubectl"), *args], input=stdin, capture_output=True, text=True,
                              env=env, timeout=60)  # fmt: skip

    assert run("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds")).returncode == 0
    crd = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/clusterpolicies.nvidia.com"

    def established() -> bool:
        conditions = (kube.get(crd).get("status") or {}).get("conditions") or []
        return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)

    wait_for(established, 30, message="ClusterPolicy CRD established")
    # Established comes a moment before API discovery lists the kind (which kubectl needs to map it).
    wait_for(lambda: "clusterpolicies.nvidia.com" in run("api-resources", "--api-group=nvidia.com", "-o", "name")
             .stdout.split(), 30, message="clusterpolicies in API discovery")  # fmt: skip
    return run


def dry_run_create(kube: Kube, body: dict[str, Any]) -> ApiError | None:
    """A server-side dry-run create under strict field validation; the error, None when admitted."""
    try:
        kube.request("POST", POLICIES, body, query={"dryRun": "All", "fieldValidation": "Strict"})
    except ApiError as exc:
        return exc
    return None


def test_kubectl_apply_rejects_a_typo_naming_the_field(kubectl: Any) -> None:
    doc = yaml.safe_dump(policy({"devicePlugn": {"enabled": False}}))
    for mode in (["--dry-run=server"], ["--dry-run=server", "--server-side"]):
        out = kubectl("apply", *mode, "-f", "-", stdin=doc)
        assert out.returncode != 0, out.stdout
        # client-side apply: `unknown field "spec.devicePlugn"`; server-side: `.spec.devicePlugn: field not declared`
        assert "spec.devicePlugn" in out.stderr and ("unknown field" in out.stderr or "not declared" in out.stderr)


@pytest.mark.parametrize("validate", ["warn", "false"])
def test_with_validation_relaxed_the_typo_is_pruned(kubectl: Any, validate: str) -> None:
    doc = yaml.safe_dump(policy({"devicePlugn": {"enabled": False}, "mig": {"strategy": "mixed"}}))
    out = kubectl("create", "--dry-run=server", f"--validate={validate}", "-o", "json", "-f", "-", stdin=doc)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["spec"] == {"mig": {"strategy": "mixed"}}
    assert ("spec.devicePlugn" in out.stderr) is (validate == "warn")  # the API server's warning, when asked


@pytest.mark.parametrize("case", INVALID, ids=[c["path"] for c in INVALID])
def test_held_out_invalid_policies_are_rejected_naming_the_field(kube: Kube, kubectl: Any,
                                                                 case: dict[str, Any]) -> None:  # fmt: skip
    error = dry_run_create(kube, policy(case["spec"]))
    assert error is not None and 400 <= error.status < 500, case
    assert case["path"] in error.message, error.message


@FUZZ
@given(spec=specs())
def test_specs_the_schema_admits_are_admitted(kube: Kube, kubectl: Any, spec: dict[str, Any]) -> None:
    error = dry_run_create(kube, policy(spec))
    assert error is None, f"{error.status}: {error.message}" if error else ""
    try:
        parse_spec(spec)
    except PolicyError as exc:  # a rule the schema cannot express: named by path in the status
        assert all(p.startswith("spec") and ": " in p for p in exc.problems), exc.problems


@FUZZ
@given(mutant=mutants())
def test_specs_the_schema_rejects_are_rejected_naming_the_field(kube: Kube, kubectl: Any, mutant: Mutant) -> None:
    error = dry_run_create(kube, policy(mutant.spec))
    assert error is not None, f"{mutant.how} at {mutant.path} was admitted"
    assert 400 <= error.status < 500, f"{error.status}: {error.message}"
    assert mutant.path in error.message, f"{mutant.how} at {mutant.path}: {error.message}"
