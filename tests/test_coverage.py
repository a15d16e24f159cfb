"""Every upstream ClusterPolicy field either takes effect or is reported as set but not supported.

For each field path of upstream v26.7's schema (tests/fixtures/upstream-clusterpolicy-fields.txt), a policy that
sets it to a non-default value is rendered next to one that does not (both with the field's component, and any
switch above it, turned on). Then exactly one holds:
- the rendered objects or node-label decisions differ, and the field is not in coverage.UNSUPPORTED;
- nothing differs, and coverage.UNSUPPORTED names the field (so `render` and the status report it);
- the field is acted on outside rendering, and ACTED_ELSEWHERE names the test that proves it.
A rule whose condition (`when=`) does not hold in that policy counts as no rule: there the field must take effect.
"""

from __future__ import annotations

import copy
import functools
import json
import re
from typing import Any

import pytest

from gpu_operator import coverage
from gpu_operator.api import ClusterPolicySpec, parse_spec, unknown_fields
from gpu_operator.cli import main as cli_main
from gpu_operator.nodes import NodeFacts, desired_labels
from gpu_operator.render import node_patches
from support import REPO, fixed_nodes, load_policy, render_all

FIXTURE = REPO / "tests" / "fixtures" / "upstream-clusterpolicy-fields.txt"
MONITORING = frozenset({"monitoring.coreos.com"})
PLANNER = "tests/test_upgrade_planner.py"
ONE_ONLY = "tests/test_crd.py::test_startup_and_liveness_probes_take_a_success_threshold_of_one_only"

# Fields acted on outside rendering: path -> the test that proves the effect.
ACTED_ELSEWHERE = {
    # The fallback runtime of a node that reports none (the fixed nodes all report containerd).
    "operator.defaultRuntime": (
        "tests/test_toolkit.py::test_runtime_comes_from_the_node_and_the_default_only_when_it_reports_none"
    ),
    "driver.upgradePolicy.autoUpgrade": (
        f"{PLANNER}::test_auto_upgrade_false_removes_the_state_labels_and_undoes_only_the_upgrades_own_cordons"
    ),
    "driver.upgradePolicy.maxParallelUpgrades": f"{PLANNER}::test_required_starts_within_max_parallel",
    "driver.upgradePolicy.maxUnavailable": f"{PLANNER}::test_max_unavailable_caps_parallel",
    "driver.upgradePolicy.podDeletion.force": f"{PLANNER}::test_a_pod_no_controller_owns_is_evicted_only_with_force",
    "driver.upgradePolicy.podDeletion.timeoutSeconds": f"{PLANNER}::test_pod_deletion_timeout_fails_without_force",
    "driver.upgradePolicy.podDeletion.deleteEmptyDir": f"{PLANNER}::test_pod_deletion_emptydir_allowed",
    "driver.upgradePolicy.waitForCompletion.podSelector": f"{PLANNER}::test_wait_for_jobs_done_when_jobs_finish",
    "driver.upgradePolicy.waitForCompletion.timeoutSeconds": f"{PLANNER}::test_wait_for_jobs_timeout",
    "driver.upgradePolicy.drain.enable": f"{PLANNER}::test_drain_disabled_moves_on",
    "driver.upgradePolicy.drain.force": f"{PLANNER}::test_a_pod_no_controller_owns_is_evicted_only_with_force",
    "driver.upgradePolicy.drain.podSelector": f"{PLANNER}::test_drain_skips_daemonsets_skip_label_and_unselected_pods",
    "driver.upgradePolicy.drain.timeoutSeconds": f"{PLANNER}::test_drain_timeout_fails_with_or_without_force",
    "driver.upgradePolicy.drain.deleteEmptyDir": f"{PLANNER}::test_drain_protects_emptydir",
    "psa.enabled": "e2e/test_operator.py::test_psa_labels_the_operand_namespace",
    # Only 1, the rendered value, is valid (as in a pod): the model refuses any other.
    "driver.startupProbe.successThreshold": ONE_ONLY,
    "driver.livenessProbe.successThreshold": ONE_ONLY,
}

# What else a field needs before it can matter (beyond its component and switches being on).
CONTEXT: dict[str, dict[str, Any]] = {
    "devicePlugin.config.default": {"devicePlugin": {"config": {"name": "sharing-config"}}},
    "driver.licensingConfig.nlsEnabled": {"driver": {"licensingConfig": {"secretName": "licensing-config"}}},
    "migManager.config.default": {"migManager": {"config": {}}},  # no section: no layout seeded, whatever the default
}
VM_SECTIONS = ("vfioManager", "vgpuManager", "vgpuDeviceManager", "sandboxDevicePlugin", "kataSandboxDevicePlugin",
               "kataManager", "ccManager", "validator.vfioPCI", "validator.vgpuManager", "validator.vgpuDevices",
               "sandboxWorkloads.mode", "sandboxWorkloads.defaultWorkload")  # fmt: skip

# Non-default values, by path and then by the field's last name; otherwise by type.
BY_PATH: dict[str, Any] = {
    "dcgmExporter.service.type": "NodePort",
    "dcgmExporter.service.internalTrafficPolicy": "Local",
    "operator.defaultRuntime": "crio",
    "driver.startupProbe.successThreshold": 1,
    "driver.livenessProbe.successThreshold": 1,
}
BY_NAME: dict[str, Any] = {
    "env": [{"name": "FIELD_TEST", "value": "1"}],
    "tolerations": [{"key": "field-test", "operator": "Exists", "effect": "NoSchedule"}],
    "relabelings": [{"action": "keep", "sourceLabels": ["field_test"]}],
    "runtimeClasses": [{"name": "kata-field-test"}],
    "podSecurityContext": {"runAsUser": 1234},
    "limits": {"cpu": "3"},
    "requests": {"cpu": "2"},
    "imagePullPolicy": "Never",
    "maxUnavailable": "3",
    "interval": "42s",
    "scrapeTimeout": "7s",
    "hostPort": 4242,
}
IMAGE_FIELDS = ("repository", "image", "version")


def upstream_fields() -> list[tuple[str, str, list[str]]]:
    rows = []
    for line in FIXTURE.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        path, kind, *enum = line.split("\t")
        rows.append((path, kind, enum[0].split(",") if enum else []))
    return rows


FIELDS = upstream_fields()
PATHS = [path for path, _, _ in FIELDS]


def put(raw: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for key in parents:
        raw = raw.setdefault(key, {})
    raw[last] = value


def model_at(spec: ClusterPolicySpec, path: str) -> Any:
    node: Any = spec
    for key in path.split("."):
        if node is None:  # an optional section left out
            return None
        node = coverage.child(node, key)
    return node


def baseline(path: str) -> dict[str, Any]:
    """A policy in which `path` can matter: its component and every switch above it on."""
    raw: dict[str, Any] = copy.deepcopy(CONTEXT.get(path, {}))
    parts = path.split(".")
    for i in range(1, len(parts)):
        above = ".".join(parts[:i])
        switch = f"{above}.enabled"
        if switch != path and isinstance(getattr(model_at(ClusterPolicySpec(), above), "enabled", None), bool):
            put(raw, switch, True)
    if path.startswith(VM_SECTIONS):
        put(raw, "sandboxWorkloads.enabled", True)
    if parts[-1] in IMAGE_FIELDS:  # the three go together: set all, then change one
        section = ".".join(parts[:-1])
        for key, value in zip(IMAGE_FIELDS, ("registry.example.com/base", "base-image", "v0.0.1"), strict=True):
            put(raw, f"{section}.{key}", value)
    return raw


def other_value(path: str, kind: str, enum: list[str], current: Any) -> Any:
    name = path.rsplit(".", 1)[-1]
    if path in BY_PATH:
        return BY_PATH[path]
    if name in BY_NAME:
        return BY_NAME[name]
    if enum:
        return next(v for v in enum if v != current)
    if kind == "boolean":
        return not current
    if kind == "integer":
        return (current or 0) + 7
    if kind == "string":
        return f"field-test-{name.lower()}"
    if kind == "array":
        return ["field-test"]
    if kind == "object":
        return {"field-test": "x"}
    raise AssertionError(f"{path}: no test value for type {kind}")


@functools.cache
def outcome_of(raw: str) -> str:
    return outcome(parse_spec(json.loads(raw)))


def outcome(spec: ClusterPolicySpec) -> str:
    """Everything the operator decides from a policy: objects per state, enabled states, node label patches."""
    nodes = fixed_nodes()
    plans = render_all(spec, nodes, api_groups=MONITORING)
    decided = {
        "states": {p.state.name: [p.enabled, p.objects] for p in plans},
        "labels": node_patches(nodes, spec),
    }
    return json.dumps(decided, sort_keys=True, default=str)


def variant(path: str, kind: str, enum: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(baseline, the baseline with `path` set to another value), as raw specs."""
    raw = baseline(path)
    changed = copy.deepcopy(raw)
    put(changed, path, other_value(path, kind, enum, model_at(parse_spec(raw), path)))
    return raw, changed


@pytest.mark.parametrize(("path", "kind", "enum"), FIELDS, ids=PATHS)
def test_every_upstream_field_takes_effect_or_is_reported(path: str, kind: str, enum: list[str]) -> None:
    base, changed = variant(path, kind, enum)
    spec = parse_spec(changed)
    assert unknown_fields(spec) == [], f"{path} is an upstream field: model it in api.py"
    assert path in coverage.set_fields(spec), f"{path}: the test value must differ from the default"
    takes_effect = outcome(spec) != outcome_of(json.dumps(base, sort_keys=True))
    rule = coverage.rule_for(path)
    if rule is not None and rule.when is not None and not rule.when(spec):
        rule = None
    reported = dict(coverage.unsupported_fields(spec))
    if path in ACTED_ELSEWHERE:
        assert rule is None, f"{path} is acted on ({ACTED_ELSEWHERE[path]}): remove it from coverage.UNSUPPORTED"
    elif rule is None:
        assert takes_effect, (
            f"spec.{path} changes nothing the operator renders or labels: make it take effect, or add it to "
            "coverage.UNSUPPORTED with the reason (or to ACTED_ELSEWHERE here, naming the test that proves it)"
        )
    else:
        assert reported.get(path) == rule.reason, f"spec.{path} is listed as unsupported but not reported"
        if not rule.partial:
            assert not takes_effect, (
                f"spec.{path} now takes effect: remove it from coverage.UNSUPPORTED ({rule.pattern!r}), "
                "so it is no longer reported as unsupported"
            )


def test_every_rule_names_an_upstream_field() -> None:
    dead = [r.pattern for r in coverage.UNSUPPORTED if not any(r.matches(p) for p in PATHS)]
    assert dead == []
    shadowed = [r.pattern for r in coverage.UNSUPPORTED if not any(coverage.rule_for(p) is r for p in PATHS)]
    assert shadowed == [], "an earlier rule already covers these"


def test_acted_elsewhere_names_upstream_fields_and_tests_that_exist() -> None:
    assert set(ACTED_ELSEWHERE) <= set(PATHS)
    for ref in set(ACTED_ELSEWHERE.values()):
        file, name = ref.split("::")
        assert re.search(rf"^def {name}\(", (REPO / file).read_text(), re.MULTILINE), f"{ref} does not exist"


def test_fixture_names_its_source() -> None:
    header = FIXTURE.read_text().splitlines()[:2]
    assert "NVIDIA/gpu-operator v26.7.0" in header[0] and "nvidia.com_clusterpolicies.yaml" in header[1]
    assert len(PATHS) == len(set(PATHS)) > 300


# unsupported_fields on whole policies


def test_defaults_and_the_samples_report_nothing() -> None:
    assert coverage.unsupported_fields(ClusterPolicySpec()) == []
    for sample in sorted((REPO / "manifests" / "samples").glob("clusterpolicy-*.yaml")):
        assert coverage.unsupported_fields(parse_spec(load_policy(sample)["spec"])) == [], sample.name


def test_fields_of_a_disabled_component_are_not_reported() -> None:
    off = parse_spec({"toolkit": {"enabled": False, "hostNetwork": True}})
    assert coverage.unsupported_fields(off) == []
    on = parse_spec({"toolkit": {"enabled": True, "hostNetwork": True}})
    assert [p for p, _ in coverage.unsupported_fields(on)] == ["toolkit.hostNetwork"]


def test_vm_operands_are_reported_only_with_sandbox_workloads() -> None:
    raw = {"vfioManager": {"enabled": True}, "sandboxDevicePlugin": {"enabled": True}}
    assert coverage.unsupported_fields(parse_spec(raw)) == []
    found = coverage.unsupported_fields(parse_spec({**raw, "sandboxWorkloads": {"enabled": True}}))
    assert [p for p, _ in found] == ["sandboxWorkloads.enabled", "vfioManager.enabled", "sandboxDevicePlugin.enabled"]
    assert all("VM-workload operands" in reason for _, reason in found)


def test_sandbox_mode_is_reported_as_partly_acted_on() -> None:
    """sandboxWorkloads.mode changes the node labels: under kata a vm-passthrough node gets
    kata-sandbox-device-plugin instead of sandbox-device-plugin (upstream's getEffectiveStateLabels). Its rule was
    not partial, so the CRD said "Not acted on by this operator" and the UnsupportedFields condition and `render`
    gave it as a field that does nothing: an admin could take a kubevirt/kata switch for a no-op."""
    kata = parse_spec({"sandboxWorkloads": {"enabled": True, "mode": "kata"}})
    kubevirt = parse_spec({"sandboxWorkloads": {"enabled": True, "mode": "kubevirt"}})
    vm = NodeFacts.from_node({"metadata": {"name": "v-0", "labels": {
        "feature.node.kubernetes.io/pci-10de.present": "true", "nvidia.com/gpu.workload.config": "vm-passthrough"}}})
    assert desired_labels(vm, kata) != desired_labels(vm, kubevirt)
    rule = coverage.rule_for("sandboxWorkloads.mode")
    assert rule is not None and rule.partial
    assert dict(coverage.unsupported_fields(kata))["sandboxWorkloads.mode"].startswith("vm-passthrough nodes are")


def test_runtime_class_is_reported_only_under_the_nri_plugin() -> None:
    """With cdi.nriPluginEnabled no RuntimeClass is created (pre-requisites is off, as upstream's isStateEnabled),
    no pod gets a runtimeClassName and the toolkit no CONTAINERD_RUNTIME_CLASS, so a custom operator.runtimeClass
    changes nothing; coverage did not name it. Without the plugin it takes effect (the table above checks that)."""
    nri = {"cdi": {"enabled": True, "nriPluginEnabled": True}}
    custom = {"operator": {"runtimeClass": "nvidia-custom"}}
    assert outcome(parse_spec({**nri, **custom})) == outcome(parse_spec(nri))
    assert [p for p, _ in coverage.unsupported_fields(parse_spec({**nri, **custom}))] == ["operator.runtimeClass"]
    assert coverage.unsupported_fields(parse_spec(custom)) == []


def test_a_field_set_to_its_default_is_not_reported() -> None:
    spec = parse_spec({"driver": {"hostNetwork": False, "certConfig": {"name": ""}}, "cdi": {"default": False}})
    assert coverage.unsupported_fields(spec) == []


def test_set_fields_uses_upstream_names() -> None:
    spec = parse_spec({"hostPaths": {"rootFS": "/host"}, "dcgmExporter": {"enablePodUID": True, "hostPID": True},
                       "operator": {"use_ocp_driver_toolkit": True},
                       "driver": {"resources": {"limits": {"cpu": 1}}}})  # fmt: skip
    assert set(coverage.set_fields(spec)) == {"hostPaths.rootFS", "dcgmExporter.enablePodUID", "dcgmExporter.hostPID",
                                              "operator.use_ocp_driver_toolkit", "driver.resources.limits"}  # fmt: skip


# Upstream's own sample ClusterPolicies (tests/fixtures/upstream/): through our `render`, every field set but not
# acted on is named by a warning, and nothing else is.
UPSTREAM_SAMPLES = {
    "v1_clusterpolicy.yaml": ["operator.use_ocp_driver_toolkit"],
    "olm_clusterpolicy.yaml": ["operator.use_ocp_driver_toolkit"],
}


@pytest.mark.parametrize("name", sorted(UPSTREAM_SAMPLES))
def test_upstream_samples_render_and_name_what_is_not_supported(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    path = REPO / "tests" / "fixtures" / "upstream" / name
    assert path.read_text().startswith("# NVIDIA/gpu-operator v26.7.0: ")
    assert cli_main(["render", "--policy", str(path)]) == 0
    out, err = capsys.readouterr()
    assert "kind: DaemonSet" in out
    spec = parse_spec(load_policy(path)["spec"])
    assert unknown_fields(spec) == []
    expected = [f"warning: spec.{p}: set but not supported by this operator ({r})" for p, r in
                coverage.unsupported_fields(spec)]  # fmt: skip
    assert err.splitlines() == expected
    assert [p for p, _ in coverage.unsupported_fields(spec)] == UPSTREAM_SAMPLES[name]


def test_allowed_unknown_fields_are_reported_with_the_unsupported_ones() -> None:
    spec = parse_spec({"futureSection": {"enabled": True}, "psp": {"enabled": True}}, allow_unknown=True)
    assert coverage.report(spec) == [
        ("spec.psp.enabled", coverage.rule_for("psp.enabled").reason),  # type: ignore[union-attr]
        ("spec.futureSection", coverage.UNKNOWN),
    ]
