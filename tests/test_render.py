"""Rendering: golden files for every state, and invariants that hold for every rendered object.

Golden files are named by scenario (`tests/scenarios/<name>/scenario.yaml`, see the README there). Regenerate
them with `UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/test_render.py`, then review
the diff before committing it.
"""

from __future__ import annotations

import copy
import difflib
import os
import random
from pathlib import Path
from typing import Any

import pytest
import yaml

from gpu_operator import sharing
from gpu_operator.api import ClusterPolicySpec, parse_spec
from gpu_operator.gpu_identity import GFD_COMPUTE_MAJOR, GFD_COMPUTE_MINOR
from gpu_operator.nodes import NodeFacts
from gpu_operator.render import (
    RENDER_BLIND,
    RENDER_BLIND_PREFIXES,
    node_independent,
    object_key,
    plan,
    render_blind,
    render_key,
)
from gpu_operator.states import all_states
from gpu_operator.states.base import CLUSTER_SCOPED, HASH_ANNOTATION, object_hash, owning_state
from support import (
    MONITORING,
    NAMESPACE,
    OWNER,
    container,
    daemonset,
    daemonsets,
    facts,
    fixed_nodes,
    load_policy,
    load_scenario,
    objects,
    render_all,
    render_context,
    scenario_names,
)

GOLDEN = Path(__file__).resolve().parent / "golden"
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"
STATE_NAMES = [s.name for s in all_states()]


SCENARIO_NAMES = scenario_names()
_RENDERED: dict[str, list[Any]] = {}


def default_raw() -> dict[str, Any]:
    return dict(load_policy()["spec"])


def all_on_raw() -> dict[str, Any]:
    """The default sample with every optional state and option switched on (scenario all-on)."""
    return copy.deepcopy(load_scenario("all-on").spec)


def render_policy(name: str) -> list[Any]:
    """A scenario's plans (rendered once per test session)."""
    if name not in _RENDERED:
        _RENDERED[name] = load_scenario(name).render()
    return _RENDERED[name]


def golden_text(objs: list[dict[str, Any]], enabled: bool) -> str:
    if not enabled:
        return "# disabled: renders nothing\n"
    return yaml.safe_dump_all(objs, sort_keys=True, width=120)


# Golden files


@pytest.mark.parametrize("policy", SCENARIO_NAMES)
@pytest.mark.parametrize("state", STATE_NAMES)
def test_golden(policy: str, state: str) -> None:
    plans = {p.state.name: p for p in render_policy(policy)}
    text = golden_text(plans[state].objects, plans[state].enabled)
    path = GOLDEN / policy / f"{state}.yaml"
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return
    if not path.exists():
        pytest.fail(f"missing golden file {path}: run with UPDATE_GOLDEN=1 to create it")
    expected = path.read_text()
    if text != expected:
        diff = "".join(
            list(difflib.unified_diff(expected.splitlines(True), text.splitlines(True), str(path), "rendered"))[:80]
        )
        pytest.fail(
            f"rendered {state} for policy {policy} differs from {path.name}; if the change is intended, "
            f"rerun with UPDATE_GOLDEN=1 and review the diff.\n{diff}"
        )


def test_no_stale_golden_files() -> None:
    expected = {f"{policy}/{state}.yaml" for policy in SCENARIO_NAMES for state in STATE_NAMES}
    present = {str(p.relative_to(GOLDEN)) for p in GOLDEN.glob("*/*.yaml")}
    assert present - expected == set(), "golden files of states or scenarios that no longer exist"


def test_golden_covers_optional_objects() -> None:
    """The all-on policy must really switch everything on, or its golden files prove little."""
    plans = render_policy("all-on")
    assert all(p.enabled for p in plans if p.state.name in {"state-dcgm", "state-node-status-exporter"})
    kinds = {(o["kind"], o["metadata"]["name"]) for o in objects(plans)}
    assert ("ServiceMonitor", "gpu-operator") in kinds
    assert ("ServiceMonitor", "nvidia-dcgm-exporter") in kinds
    assert ("Service", "nvidia-dcgm") in kinds
    assert ("Service", "nvidia-node-status-exporter") in kinds
    assert ("ConfigMap", "default-gpu-clients") not in kinds
    plugin = daemonset(plans, "nvidia-device-plugin-daemonset")
    assert [c["name"] for c in plugin["spec"]["template"]["spec"]["containers"]] == [
        "nvidia-device-plugin",
        "config-manager",
    ]
    driver = daemonset(plans, "nvidia-driver-daemonset-ubuntu22.04")
    volumes = {v["name"] for v in driver["spec"]["template"]["spec"]["volumes"]}
    assert {"repo-config", "licensing-config"} <= volumes


# Invariants over every rendered object


def variants() -> dict[str, list[Any]]:
    overrides = copy.deepcopy(all_on_raw())
    overrides["daemonsets"] = {
        "labels": {"team": "gpu"},
        "annotations": {"example.com/owner": "platform"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoExecute"}],
        "priorityClassName": "gpu-critical",
        "updateStrategy": "OnDelete",
    }
    sandbox = copy.deepcopy(default_raw())
    sandbox["sandboxWorkloads"] = {"enabled": True}
    return {
        "default": render_policy("default"),
        "all-on": render_policy("all-on"),
        "overrides": render_all(parse_spec(overrides), api_groups=frozenset({MONITORING})),
        "sandbox": render_all(parse_spec(sandbox)),
        "odd-namespace": render_all(parse_spec(all_on_raw()), namespace="2024", api_groups=frozenset({MONITORING})),
    }


VARIANTS = variants()
CASES = [(name, p) for name, plans in VARIANTS.items() for p in plans if p.objects]


def case_id(case: tuple[str, Any]) -> str:
    return f"{case[0]}-{case[1].state.name}"


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_object_invariants(case: tuple[str, Any]) -> None:
    variant, state_plan = case
    namespace = "2024" if variant == "odd-namespace" else NAMESPACE
    for obj in state_plan.objects:
        meta = obj["metadata"]
        where = f"{obj['kind']}/{meta['name']}"
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "gpu-operator", where
        assert meta["labels"]["app.kubernetes.io/part-of"] == "gpu-operator", where
        assert meta["labels"]["nvidia.com/gpu-operator.state"] == state_plan.state.name, where
        assert meta["ownerReferences"] == [{**OWNER, "controller": True, "blockOwnerDeletion": True}], where
        if obj["kind"] in CLUSTER_SCOPED:
            assert "namespace" not in meta, where
        else:
            assert meta["namespace"] == namespace, where
        assert meta["annotations"][HASH_ANNOTATION] == object_hash(obj), where
        for subject in obj.get("subjects", []):
            assert subject["namespace"] == namespace, where
        if obj["kind"] == "ServiceMonitor":
            assert obj["spec"]["namespaceSelector"]["matchNames"] == [namespace], where


DS_CASES = [(name, p, ds) for name, plans in VARIANTS.items() for p in plans for ds in daemonsets([p])]


@pytest.mark.parametrize("case", DS_CASES, ids=[f"{c[0]}-{c[2]['metadata']['name']}" for c in DS_CASES])
def test_daemonset_invariants(case: tuple[str, Any, dict[str, Any]]) -> None:
    variant, state_plan, ds = case
    state = state_plan.state
    pod = ds["spec"]["template"]["spec"]
    expected_priority = "gpu-critical" if variant == "overrides" else "system-node-critical"
    assert pod["priorityClassName"] == expected_priority
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert len(pod["tolerations"]) == len({yaml.safe_dump(t) for t in pod["tolerations"]}), "duplicate tolerations"
    owner = ds["metadata"]["ownerReferences"]
    assert len(owner) == 1 and owner[0]["controller"] is True and owner[0]["kind"] == "ClusterPolicy"
    template_labels = ds["spec"]["template"]["metadata"]["labels"]
    for key in ("app.kubernetes.io/managed-by", "app.kubernetes.io/part-of", "nvidia.com/gpu-operator.state"):
        assert key in ds["metadata"]["labels"] and key in template_labels, key
    selector = ds["spec"]["selector"]["matchLabels"]
    assert selector.items() <= template_labels.items(), "selector must match the pod template"
    assert state.deploy_label, f"{state.name} renders a DaemonSet but has no deploy label"
    assert pod["nodeSelector"][f"nvidia.com/gpu.deploy.{state.deploy_label}"] == "true"

    volumes = [v["name"] for v in pod.get("volumes", [])]
    assert len(volumes) == len(set(volumes)), "duplicate volume names"
    all_containers = pod.get("initContainers", []) + pod["containers"]
    names = [c["name"] for c in all_containers]
    assert len(names) == len(set(names)), "duplicate container names"
    for c in all_containers:
        assert isinstance(c["image"], str) and c["image"], c["name"]
        for env in c.get("env", []):
            assert isinstance(env["name"], str) and env["name"], c["name"]
            assert ("value" in env) != ("valueFrom" in env), (c["name"], env)
            if "value" in env:
                assert isinstance(env["value"], str), f"{c['name']}: env {env['name']}={env['value']!r} is not a string"
        env_names = [e["name"] for e in c.get("env", [])]
        assert len(env_names) == len(set(env_names)), f"{c['name']}: duplicate env {env_names}"
        for mount in c.get("volumeMounts", []):
            assert mount["name"] in volumes, f"{c['name']} mounts undeclared volume {mount['name']}"
        for arg in c.get("args", []) + c.get("command", []):
            assert isinstance(arg, str), (c["name"], arg)

    strategy = ds["spec"]["updateStrategy"]
    if state.name == "state-driver" or variant == "overrides":
        assert strategy == {"type": "OnDelete"}
    else:
        assert strategy == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}}


def test_states_in_reference_order() -> None:
    assert STATE_NAMES == [
        "pre-requisites",
        "state-operator-metrics",
        "state-driver",
        "state-container-toolkit",
        "state-operator-validation",
        "state-device-plugin",
        "state-mps-control-daemon",
        "state-dcgm",
        "state-dcgm-exporter",
        "gpu-feature-discovery",
        "state-mig-manager",
        "state-node-status-exporter",
    ]


def test_every_state_has_templates_and_renders_unique_objects() -> None:
    seen: set[tuple[str, str, str, str]] = set()
    for state_plan in VARIANTS["all-on"]:
        assert state_plan.objects, f"{state_plan.state.name} renders nothing with everything on"
        for obj in state_plan.objects:
            key = object_key(obj)
            assert key not in seen, f"{key} rendered twice"
            seen.add(key)


def test_expected_daemonsets_and_selectors() -> None:
    plans = render_policy("all-on")
    expected = {
        "nvidia-driver-daemonset-ubuntu22.04": "nvidia.com/gpu.deploy.driver",
        "nvidia-driver-daemonset-ubuntu24.04": "nvidia.com/gpu.deploy.driver",
        "nvidia-container-toolkit-daemonset": "nvidia.com/gpu.deploy.container-toolkit",
        "nvidia-operator-validator": "nvidia.com/gpu.deploy.operator-validator",
        "nvidia-device-plugin-daemonset": "nvidia.com/gpu.deploy.device-plugin",
        "nvidia-device-plugin-mps-control-daemon": "nvidia.com/gpu.deploy.device-plugin",
        "nvidia-dcgm": "nvidia.com/gpu.deploy.dcgm",
        "nvidia-dcgm-exporter": "nvidia.com/gpu.deploy.dcgm-exporter",
        "gpu-feature-discovery": "nvidia.com/gpu.deploy.gpu-feature-discovery",
        "nvidia-mig-manager": "nvidia.com/gpu.deploy.mig-manager",
        "nvidia-node-status-exporter": "nvidia.com/gpu.deploy.node-status-exporter",
    }
    found = {ds["metadata"]["name"]: ds["spec"]["template"]["spec"]["nodeSelector"] for ds in daemonsets(plans)}
    assert set(found) == set(expected)
    for name, label in expected.items():
        assert found[name][label] == "true", name
    assert found["nvidia-device-plugin-mps-control-daemon"]["nvidia.com/mps.capable"] == "true"


def test_runtime_class_and_metrics_service() -> None:
    plans = {p.state.name: p for p in render_policy("default")}
    classes = {o["metadata"]["name"]: o["handler"] for o in plans["pre-requisites"].objects}
    assert {o["kind"] for o in plans["pre-requisites"].objects} == {"RuntimeClass"}
    # CDI is on by default, as upstream: the CDI and legacy classes beside operator.runtimeClass
    assert classes == {"nvidia": "nvidia", "nvidia-cdi": "nvidia-cdi", "nvidia-legacy": "nvidia-legacy"}
    service = next(o for o in plans["state-operator-metrics"].objects if o["kind"] == "Service")
    assert service["kind"] == "Service" and service["spec"]["ports"][0]["port"] == 8080
    assert service["metadata"]["annotations"]["prometheus.io/scrape"] == "true"  # as upstream's
    from gpu_operator.states import RenderContext

    def kinds(raw: dict[str, Any]) -> list[str]:
        ctx = RenderContext(spec=parse_spec(raw), namespace=NAMESPACE, api_groups=frozenset({MONITORING}))
        return sorted(o["kind"] for p in plan(ctx) if p.state.name == "state-operator-metrics" for o in p.objects)

    assert kinds({}) == ["Service", "ServiceMonitor"]  # upstream always creates it where the API is served
    assert kinds({"operator": {"metrics": {"serviceMonitor": {"enabled": False}}}}) == ["Service"]


def test_operator_metrics_service_targets_the_operators_metrics_port() -> None:
    """The chart's operator.metrics.port is the operator's --metrics-port: the Service its ServiceMonitor selects
    must reach it there (it had a fixed targetPort 8080, so Prometheus scraped a port nobody listened on)."""
    from gpu_operator.observe import Snapshot
    from gpu_operator.reconciler import Reconciler
    from gpu_operator.runtime import Operator
    from gpu_operator.states import RenderContext
    from support import EchoKube

    def service(metrics_port: int) -> dict[str, Any]:
        spec = parse_spec({"operator": {"metrics": {"serviceMonitor": {"enabled": True}}}})
        ctx = RenderContext(spec=spec, namespace=NAMESPACE, api_groups=frozenset({MONITORING}),
                            metrics_port=metrics_port)  # fmt: skip
        state = next(p for p in plan(ctx) if p.state.name == "state-operator-metrics")
        assert [o["spec"]["endpoints"][0]["port"] for o in state.objects if o["kind"] == "ServiceMonitor"] == [
            "gpu-operator-metrics"]  # fmt: skip
        return next(o for o in state.objects if o["kind"] == "Service")

    assert service(8080)["spec"]["ports"] == [
        {"name": "gpu-operator-metrics", "port": 8080, "targetPort": 8080, "protocol": "TCP"}]  # fmt: skip
    assert service(9090)["spec"]["ports"][0] | {"targetPort": 0} == service(8080)["spec"]["ports"][0] | {
        "targetPort": 0}  # fmt: skip
    assert service(9090)["spec"]["ports"][0]["targetPort"] == 9090
    # The operator passes its --metrics-port through to every pass's render context.
    op = Operator(kube=EchoKube(), namespace=NAMESPACE, metrics_port=9090)  # type: ignore[arg-type]
    assert op.reconciler.metrics_port == 9090
    pol = load_policy()
    pol["metadata"].update(uid="u1", generation=1, resourceVersion="1")
    r = Reconciler(EchoKube(), NAMESPACE, metrics_port=9090)  # type: ignore[arg-type]
    r.reconcile(Snapshot(nodes={}, policies={"cluster-policy": pol}, owned={}, pods={}, revisions={}))
    assert r._plan is not None
    metrics = next(p for p in r._plan[1] if p.state.name == "state-operator-metrics")
    assert [o["spec"]["ports"][0]["targetPort"] for o in metrics.objects if o["kind"] == "Service"] == [9090]


def test_no_service_monitor_when_the_operator_serves_no_metrics() -> None:
    """`gpu-operator run --metrics-port 0` means "metrics off" (metrics.serve listens on nothing), yet
    state-operator-metrics still rendered the ServiceMonitor, and the Service (targeting 8080, where nothing listens)
    said prometheus.io/scrape "true": Prometheus scraped a dead target, shown down (kube-prometheus' TargetDown
    fires). Now there is no ServiceMonitor and the Service says "false", which a dry run from another process reads
    as metrics off, so it renders what the operator does."""
    from gpu_operator.states import RenderContext
    from gpu_operator.states.operator_metrics import live_target_port

    def objects(metrics_port: int) -> dict[str, dict[str, Any]]:
        spec = parse_spec({"operator": {"metrics": {"serviceMonitor": {"enabled": True}}}})
        ctx = RenderContext(spec=spec, namespace=NAMESPACE, api_groups=frozenset({MONITORING}),
                            metrics_port=metrics_port)  # fmt: skip
        state = next(p for p in plan(ctx) if p.state.name == "state-operator-metrics")
        return {o["kind"]: o for o in state.objects}

    off = objects(0)
    assert sorted(off) == ["Service"], f"rendered {sorted(off)} with --metrics-port 0"
    assert off["Service"]["metadata"]["annotations"]["prometheus.io/scrape"] == "false"
    assert sorted(objects(9090)) == ["Service", "ServiceMonitor"]
    # render --from-cluster takes the live Service's word
    key = ("Service", NAMESPACE, "gpu-operator")
    assert live_target_port({key: off["Service"]}, NAMESPACE) == 0
    assert live_target_port({key: objects(9090)["Service"]}, NAMESPACE) == 9090


def test_custom_runtime_class() -> None:
    spec = parse_spec({"operator": {"runtimeClass": "nvidia-gpu"}})
    plans = render_all(spec)
    (runtime_class,) = [o for o in objects(plans) if o["kind"] == "RuntimeClass" and o["handler"] == "nvidia-gpu"]
    assert runtime_class["metadata"]["name"] == "nvidia-gpu"
    plugin = daemonset(plans, "nvidia-device-plugin-daemonset")
    assert plugin["spec"]["template"]["spec"]["runtimeClassName"] == "nvidia-gpu"


def test_service_monitors_need_the_api_group() -> None:
    spec = parse_spec(all_on_raw())
    without = {o["kind"] for o in objects(render_all(spec))}
    assert "ServiceMonitor" not in without
    with_group = [
        o for o in objects(render_all(spec, api_groups=frozenset({MONITORING}))) if o["kind"] == "ServiceMonitor"
    ]
    assert {o["metadata"]["name"] for o in with_group} == {
        "gpu-operator",
        "nvidia-dcgm-exporter",
        "nvidia-node-status-exporter",
    }
    dcgm = next(o for o in with_group if o["metadata"]["name"] == "nvidia-dcgm-exporter")
    assert dcgm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert dcgm["spec"]["endpoints"][0]["interval"] == "10s"
    assert dcgm["spec"]["endpoints"][0]["honorLabels"] is True


# Driver pools


def test_two_os_pools_give_two_driver_daemonsets() -> None:
    plans = render_policy("default")
    drivers = [ds for ds in daemonsets(plans) if ds["metadata"]["name"].startswith("nvidia-driver-daemonset")]
    assert [d["metadata"]["name"] for d in drivers] == [
        "nvidia-driver-daemonset-ubuntu22.04",
        "nvidia-driver-daemonset-ubuntu24.04",
    ]
    for ds, version in zip(drivers, ("22.04", "24.04"), strict=True):
        pod = ds["spec"]["template"]["spec"]
        assert pod["nodeSelector"] == {
            "nvidia.com/gpu.deploy.driver": "true",
            "feature.node.kubernetes.io/system-os_release.ID": "ubuntu",
            "feature.node.kubernetes.io/system-os_release.VERSION_ID": version,
        }
        assert container(ds, "nvidia-driver-ctr")["image"] == f"nvcr.io/nvidia/driver:595.91.07-ubuntu{version}"
        assert ds["spec"]["updateStrategy"] == {"type": "OnDelete"}
    # Each pool's DaemonSet selects only its own pods.
    selectors = [yaml.safe_dump(d["spec"]["selector"]) for d in drivers]
    assert len(set(selectors)) == 2


def test_precompiled_driver_pools_per_kernel() -> None:
    raw = default_raw()
    raw["driver"]["usePrecompiled"] = True
    plans = render_all(parse_spec(raw))
    images = {
        ds["metadata"]["name"]: container(ds, "nvidia-driver-ctr")["image"]
        for ds in daemonsets(plans)
        if ds["metadata"]["name"].startswith("nvidia-driver")
    }
    repo = "nvcr.io/nvidia/driver"
    assert images == {
        "nvidia-driver-daemonset-ubuntu22.04-5.15.0-122-generic": f"{repo}:595.91.07-5.15.0-122-generic-ubuntu22.04",
        "nvidia-driver-daemonset-ubuntu24.04-6.8.0-45-generic": f"{repo}:595.91.07-6.8.0-45-generic-ubuntu24.04",
    }
    ds = daemonset(plans, "nvidia-driver-daemonset-ubuntu24.04-6.8.0-45-generic")
    assert ds["spec"]["template"]["spec"]["nodeSelector"]["nvidia.com/gpu-operator.driver-kernel"] == (
        "6.8.0-45-generic"
    )
    assert ds["spec"]["template"]["metadata"]["labels"]["nvidia.com/precompiled"] == "true"


def test_driver_digest_is_not_retagged_and_a_bare_image_gets_the_os_tag() -> None:
    """Upstream's resolveDriverTag: `-<os>` goes after any image path unless it holds a digest."""
    digest = "sha256:" + "b" * 64
    raw = default_raw()
    raw["driver"]["version"] = digest
    plans = render_all(parse_spec(raw))
    for ds in daemonsets(plans):
        if ds["metadata"]["name"].startswith("nvidia-driver"):
            assert container(ds, "nvidia-driver-ctr")["image"] == f"nvcr.io/nvidia/driver@{digest}"
    raw = default_raw()
    raw["driver"] = {"image": "registry.local/driver:custom"}
    plans = render_all(parse_spec(raw))
    assert {
        container(ds, "nvidia-driver-ctr")["image"]
        for ds in daemonsets(plans)
        if ds["metadata"]["name"].startswith("nvidia-driver")
    } == {"registry.local/driver:custom-ubuntu22.04", "registry.local/driver:custom-ubuntu24.04"}
    raw["driver"] = {"image": f"registry.local/driver@{digest}"}
    plans = render_all(parse_spec(raw))
    assert {
        container(ds, "nvidia-driver-ctr")["image"]
        for ds in daemonsets(plans)
        if ds["metadata"]["name"].startswith("nvidia-driver")
    } == {f"registry.local/driver@{digest}"}


def test_driver_default_image_is_retagged_per_pool() -> None:
    plans = render_all(parse_spec({}))
    ds = daemonset(plans, "nvidia-driver-daemonset-ubuntu24.04")
    assert container(ds, "nvidia-driver-ctr")["image"] == "nvcr.io/nvidia/driver:595.91.07-ubuntu24.04"


def test_no_gpu_nodes_no_driver_daemonset() -> None:
    plans = render_all(parse_spec(default_raw()), [facts("cpu", gpu=False)])
    driver = next(p for p in plans if p.state.name == "state-driver")
    assert driver.enabled
    assert [o["kind"] for o in driver.objects if o["kind"] == "DaemonSet"] == []
    assert {o["kind"] for o in driver.objects} >= {"ServiceAccount", "ConfigMap"}


def test_driver_opt_out_nodes_get_no_pool() -> None:
    nodes = [
        facts("a", os=("ubuntu", "22.04")),
        facts("b", os=("rhel", "9.4"), labels={"nvidia.com/gpu.deploy.driver": "pre-installed"}),
    ]
    names = [ds["metadata"]["name"] for ds in daemonsets(render_all(parse_spec({}), nodes))]
    assert "nvidia-driver-daemonset-ubuntu22.04" in names
    assert not any("rhel" in n for n in names)


# Disabled states


@pytest.mark.parametrize(
    ("raw", "state"),
    [
        ({"driver": {"enabled": False}}, "state-driver"),
        ({"toolkit": {"enabled": False}}, "state-container-toolkit"),
        ({"devicePlugin": {"enabled": False}}, "state-device-plugin"),
        ({"devicePlugin": {"enabled": False}}, "state-mps-control-daemon"),
        ({"dcgm": {"enabled": False}}, "state-dcgm"),
        ({"dcgmExporter": {"enabled": False}}, "state-dcgm-exporter"),
        ({"gfd": {"enabled": False}}, "gpu-feature-discovery"),
        ({"migManager": {"enabled": False}}, "state-mig-manager"),
        ({}, "state-node-status-exporter"),
    ],
)
def test_disabled_state_renders_nothing(raw: dict[str, Any], state: str) -> None:
    plans = {p.state.name: p for p in render_all(parse_spec(raw))}
    assert plans[state].enabled is False
    assert plans[state].objects == []
    others = [p for name, p in plans.items() if name != state and p.enabled]
    assert others and all(p.objects for p in others)


def test_driver_handed_to_nvidiadrivers_renders_no_daemonset_without_one() -> None:
    raw = default_raw()
    raw["driver"]["useNvidiaDriverCRD"] = True
    driver = next(p for p in render_all(parse_spec(raw)) if p.state.name == "state-driver")
    assert driver.enabled and driver.objects  # its service account, roles and probe script
    assert not [o for o in driver.objects if o["kind"] == "DaemonSet"]


def test_validator_skips_the_plugin_check_without_device_plugin_but_keeps_the_toolkit_check() -> None:
    """Upstream drops only plugin-validation; a host-installed toolkit still needs its toolkit-ready marker,
    which the device plugin, GFD, DCGM and the exporter wait for."""
    plans = render_all(parse_spec({"toolkit": {"enabled": False}, "devicePlugin": {"enabled": False}}))
    init = daemonset(plans, "nvidia-operator-validator")["spec"]["template"]["spec"]["initContainers"]
    assert [c["name"] for c in init] == ["driver-validation", "toolkit-validation", "cuda-validation"]


# daemonsets overrides and section settings


def test_daemonsets_overrides_are_applied() -> None:
    raw = default_raw()
    raw["daemonsets"] = {
        "labels": {"team": "gpu", "app": "must-not-win"},
        "annotations": {"example.com/owner": "platform"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoExecute"}],
        "priorityClassName": "gpu-critical",
        "updateStrategy": "OnDelete",
    }
    for ds in daemonsets(render_all(parse_spec(raw))):
        name = ds["metadata"]["name"]
        template = ds["spec"]["template"]
        assert ds["metadata"]["labels"]["team"] == template["metadata"]["labels"]["team"] == "gpu", name
        assert ds["metadata"]["labels"]["app"] != "must-not-win", "the selector label must not be overridden"
        assert template["metadata"]["labels"]["app"] != "must-not-win", name
        assert ds["metadata"]["annotations"]["example.com/owner"] == "platform", name
        assert template["metadata"]["annotations"]["example.com/owner"] == "platform", name
        pod = template["spec"]
        assert pod["priorityClassName"] == "gpu-critical", name
        assert {"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoExecute"} in pod["tolerations"]
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
        assert ds["spec"]["updateStrategy"] == {"type": "OnDelete"}, name


@pytest.mark.parametrize(("value", "expected"), [("20%", "20%"), ("3", 3), (2, 2)])
def test_rolling_update_max_unavailable(value: int | str, expected: int | str) -> None:
    raw = default_raw()
    raw["daemonsets"]["rollingUpdate"] = {"maxUnavailable": value}
    for ds in daemonsets(render_all(parse_spec(raw))):
        if ds["metadata"]["name"].startswith("nvidia-driver"):
            assert ds["spec"]["updateStrategy"] == {"type": "OnDelete"}, "the driver is always OnDelete"
        else:
            assert ds["spec"]["updateStrategy"] == {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": expected},
            }


MAIN_CONTAINERS = [
    (s.name, s.section, s.container, s.resources_everywhere)
    for s in all_states()
    if s.section and s.container and s.name not in {"pre-requisites", "state-operator-metrics"}
]


def section_key(attr: str) -> str:
    return ClusterPolicySpec.model_fields[attr].alias or attr


@pytest.mark.parametrize(
    ("state", "section", "main", "resources_everywhere"), MAIN_CONTAINERS, ids=[m[0] for m in MAIN_CONTAINERS]
)
def test_section_settings_land_on_the_main_container(
    state: str, section: str, main: str, resources_everywhere: bool
) -> None:
    key = section_key(section)
    raw: dict[str, Any] = {
        key: {
            "enabled": True,
            "env": [{"name": "EXTRA_SETTING", "value": "on"}],
            "args": ["--verbose"],
            "resources": {"limits": {"cpu": "500m", "memory": "1Gi"}, "requests": {"cpu": "100m"}},
            "imagePullSecrets": ["regcred"],
            "imagePullPolicy": "Always",
        }
    }
    if key == "devicePlugin":
        raw[key]["config"] = {"name": "sharing-config", "default": "any"}
    if key == "validator":
        del raw[key]["enabled"]  # upstream's validator has no switch: it always runs
    plans = {p.state.name: p for p in render_all(parse_spec(raw))}
    rendered = daemonsets([plans[state]])
    assert rendered, f"{state} rendered no DaemonSet"
    for ds in rendered:
        pod = ds["spec"]["template"]["spec"]
        assert pod["imagePullSecrets"] == [{"name": "regcred"}]
        main_ctr = container(ds, main)
        assert {"name": "EXTRA_SETTING", "value": "on"} in main_ctr["env"]
        if state == "state-container-toolkit":  # as upstream's: the entrypoint takes none (coverage names them)
            assert "args" not in main_ctr
        else:
            assert main_ctr["args"] == ["--verbose"]
        assert main_ctr["resources"] == {"limits": {"cpu": "500m", "memory": "1Gi"}, "requests": {"cpu": "100m"}}
        assert main_ctr["imagePullPolicy"] == "Always"
        for other in pod["containers"] + pod.get("initContainers", []):
            if other["name"] != main:
                assert "EXTRA_SETTING" not in {e["name"] for e in other.get("env", [])}, other["name"]
                assert other.get("args") != ["--verbose"], other["name"]
                if resources_everywhere or other["name"] in ("config-manager", "config-manager-init"):
                    # Upstream gives the driver's and validator's resources to every container, and the
                    # sharing-config manager the pod's component resources.
                    assert other["resources"] == main_ctr["resources"], other["name"]
                else:
                    assert "resources" not in other, other["name"]


def test_section_env_replaces_a_template_variable() -> None:
    plans = render_all(parse_spec({"gfd": {"env": [{"name": "GFD_SLEEP_INTERVAL", "value": "30s"}]}}))
    env = container(daemonset(plans, "gpu-feature-discovery"), "gpu-feature-discovery")["env"]
    assert [e for e in env if e["name"] == "GFD_SLEEP_INTERVAL"] == [{"name": "GFD_SLEEP_INTERVAL", "value": "30s"}]


def test_a_name_repeated_in_a_section_env_renders_one_variable_the_last_value() -> None:
    """`env: [{FOO: 1}, {FOO: 2}]` (easily made by layered Helm values files) rendered both entries, and server-side
    apply refuses a container with two env entries of one name ("duplicate entries for key [name=FOO]"), so the
    whole state failed to apply. Upstream applies each entry with setContainerEnv, which replaces one of the same
    name: one FOO=2."""
    raw = {"driver": {"env": [{"name": "FOO", "value": "1"}, {"name": "FOO", "value": "2"}]},
           "devicePlugin": {"env": [{"name": "BAR", "value": "1"}, {"name": "BAR", "value": "2"}]}}  # fmt: skip
    plans = render_all(parse_spec(raw))
    driver = container(daemonset(plans, "nvidia-driver-daemonset-ubuntu22.04"), "nvidia-driver-ctr")
    plugin = container(daemonset(plans, "nvidia-device-plugin-daemonset"), "nvidia-device-plugin")
    assert [e for e in driver["env"] if e["name"] == "FOO"] == [{"name": "FOO", "value": "2"}]
    assert [e for e in plugin["env"] if e["name"] == "BAR"] == [{"name": "BAR", "value": "2"}]


def test_section_image_is_used() -> None:
    raw = {"toolkit": {"repository": "registry.local/nvidia", "image": "container-toolkit", "version": "v1.18.1"}}
    ds = daemonset(render_all(parse_spec(raw)), "nvidia-container-toolkit-daemonset")
    assert container(ds, "nvidia-container-toolkit-ctr")["image"] == "registry.local/nvidia/container-toolkit:v1.18.1"


def test_validator_env_blocks_land_on_their_checks() -> None:
    raw = {"validator": {"cuda": {"env": [{"name": "WITH_WORKLOAD", "value": "true"}]}}}
    init = daemonset(render_all(parse_spec(raw)), "nvidia-operator-validator")["spec"]["template"]["spec"]
    by_name = {c["name"]: c for c in init["initContainers"]}
    assert {"name": "WITH_WORKLOAD", "value": "true"} in by_name["cuda-validation"]["env"]
    assert "WITH_WORKLOAD" not in {e["name"] for e in by_name["driver-validation"]["env"]}


def test_a_name_repeated_in_validator_toolkit_env_renders_one_variable_in_every_waiting_init_container() -> None:
    """transformValidationInitContainer applies validator.toolkit.env with setContainerEnv too: one A=2, where the
    toolkit-validation init containers got both entries (refused by server-side apply)."""
    env = [{"name": "A", "value": "1"}, {"name": "A", "value": "2"}]
    plans = render_all(parse_spec({"validator": {"toolkit": {"env": env}}}))
    for name in ("nvidia-device-plugin-daemonset", "gpu-feature-discovery", "nvidia-dcgm-exporter",
                 "nvidia-mig-manager"):  # fmt: skip
        init = daemonset(plans, name)["spec"]["template"]["spec"]["initContainers"]
        ctr = next(c for c in init if c["name"] == "toolkit-validation")
        assert [e for e in ctr["env"] if e["name"] == "A"] == [{"name": "A", "value": "2"}], name


def test_host_paths_are_used() -> None:
    raw = {"hostPaths": {"rootFS": "/host-root", "driverInstallDir": "/opt/nvidia/driver"}}
    plans = render_all(parse_spec(raw))
    pod = daemonset(plans, "nvidia-operator-validator")["spec"]["template"]["spec"]
    paths = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    assert paths["host-root"] == "/host-root"
    assert paths["driver-install-dir"] == "/opt/nvidia/driver"


def test_mig_manager_with_empty_config_name_uses_the_default_config_map() -> None:
    """Upstream's Helm chart renders `config: {name: ""}`; that means the default ConfigMap, as upstream."""
    plans = {p.state.name: p for p in render_all(parse_spec({"migManager": {"config": {"name": ""}}}))}
    mig = plans["state-mig-manager"]
    assert ("ConfigMap", "default-mig-parted-config") in {(o["kind"], o["metadata"]["name"]) for o in mig.objects}
    pod = daemonset([mig], "nvidia-mig-manager")["spec"]["template"]["spec"]
    config = next(v for v in pod["volumes"] if v["name"] == "mig-parted-config")
    assert config["configMap"]["name"] == "default-mig-parted-config"


def test_mig_manager_with_a_custom_config_map() -> None:
    plans = {p.state.name: p for p in render_all(parse_spec({"migManager": {"config": {"name": "my-mig"}}}))}
    mig = plans["state-mig-manager"]
    assert "default-mig-parted-config" not in {o["metadata"]["name"] for o in mig.objects}
    pod = daemonset([mig], "nvidia-mig-manager")["spec"]["template"]["spec"]
    assert next(v for v in pod["volumes"] if v["name"] == "mig-parted-config")["configMap"]["name"] == "my-mig"


# Determinism and hashes


def test_rendering_is_deterministic() -> None:
    spec = parse_spec(all_on_raw())
    first = render_all(spec, api_groups=frozenset({MONITORING}))
    nodes = fixed_nodes()
    random.Random(7).shuffle(nodes)
    second = render_all(parse_spec(all_on_raw()), nodes, api_groups=frozenset({MONITORING}))
    assert objects(first) == objects(second)
    assert yaml.safe_dump_all(objects(first), sort_keys=True) == yaml.safe_dump_all(objects(second), sort_keys=True)
    assert [o["metadata"]["annotations"][HASH_ANNOTATION] for o in objects(first)] == [
        o["metadata"]["annotations"][HASH_ANNOTATION] for o in objects(second)
    ]


def hashes(plans: list[Any]) -> dict[tuple[str, str], str]:
    return {(o["kind"], o["metadata"]["name"]): o["metadata"]["annotations"][HASH_ANNOTATION] for o in objects(plans)}


def test_hash_changes_only_for_the_objects_the_spec_change_touches() -> None:
    before = hashes(render_all(parse_spec(default_raw())))
    raw = default_raw()
    raw["toolkit"].update(repository="nvcr.io/nvidia/k8s", image="container-toolkit", version="v1.18.1")
    after = hashes(render_all(parse_spec(raw)))
    assert set(before) == set(after)
    changed = {key for key in before if before[key] != after[key]}
    assert changed == {("DaemonSet", "nvidia-container-toolkit-daemonset")}


def test_hash_changes_with_daemonsets_settings() -> None:
    before = hashes(render_all(parse_spec(default_raw())))
    raw = default_raw()
    raw["daemonsets"]["priorityClassName"] = "gpu-critical"
    after = hashes(render_all(parse_spec(raw)))
    changed = {key for key in before if before[key] != after[key]}
    assert changed == {key for key in before if key[0] == "DaemonSet"}


def test_object_hash_ignores_its_own_annotation() -> None:
    obj = objects(render_all(parse_spec({})))[0]
    stripped = copy.deepcopy(obj)
    del stripped["metadata"]["annotations"][HASH_ANNOTATION]
    assert object_hash(stripped) == object_hash(obj)
    stripped["metadata"]["labels"]["x"] = "y"
    assert object_hash(stripped) != object_hash(obj)


def test_new_node_pool_changes_only_driver_objects() -> None:
    spec = parse_spec(default_raw())
    nodes: list[NodeFacts] = fixed_nodes()
    before = hashes(render_all(spec, nodes))
    after = hashes(render_all(spec, [*nodes, facts("rhel-gpu", os=("rhel", "9.4"))]))
    assert set(after) - set(before) == {("DaemonSet", "nvidia-driver-daemonset-rhel9.4")}
    assert all(before[k] == after[k] for k in before)


def init_container(ds: dict[str, Any], name: str) -> dict[str, Any]:
    found = [c for c in ds["spec"]["template"]["spec"].get("initContainers", []) if c["name"] == name]
    assert found, f"{ds['metadata']['name']} has no init container {name}"
    return found[0]


def test_driver_manager_gets_its_own_section_and_not_the_drivers() -> None:
    raw = {
        "driver": {
            "env": [{"name": "DRIVER_ONLY", "value": "1"}],
            "manager": {"env": [{"name": "MANAGER_ONLY", "value": "1"}], "imagePullPolicy": "Always"},
        }
    }  # fmt: skip
    ds = daemonset(render_all(parse_spec(raw)), "nvidia-driver-daemonset-ubuntu22.04")
    manager = init_container(ds, "k8s-driver-manager")
    names = {e["name"] for e in manager["env"]}
    assert "MANAGER_ONLY" in names and "DRIVER_ONLY" not in names
    assert manager["imagePullPolicy"] == "Always"
    assert "MANAGER_ONLY" not in {e["name"] for e in container(ds, "nvidia-driver-ctr")["env"]}


def test_device_plugin_settings_stay_off_the_mps_daemon() -> None:
    raw = {"devicePlugin": {"env": [{"name": "PLUGIN_ONLY", "value": "1"}], "args": ["--plugin"]}}
    ds = daemonset(render_all(parse_spec(raw)), "nvidia-device-plugin-mps-control-daemon")
    mps = container(ds, "mps-control-daemon-ctr")
    assert "PLUGIN_ONLY" not in {e["name"] for e in mps["env"]} and mps.get("args") != ["--plugin"]


def test_render_key_changes_exactly_when_the_inputs_do() -> None:
    """The reconciler re-renders only on a new key, so every input of rendering must be in it."""
    from dataclasses import replace

    from gpu_operator.render import render_key
    from gpu_operator.states import RenderContext

    spec = parse_spec(default_raw())
    nodes = tuple(fixed_nodes())
    ctx = RenderContext(spec=spec, namespace=NAMESPACE, nodes=nodes, owner=OWNER)
    same = RenderContext(spec=parse_spec(default_raw()), namespace=NAMESPACE, nodes=tuple(reversed(nodes)), owner=OWNER)
    assert render_key(ctx) == render_key(same)
    # unlabelled, the node gets no driver ("false" would change nothing rendering reads): "true" puts it in a pool
    relabelled_node = replace(nodes[0], labels={**nodes[0].labels, "nvidia.com/gpu.deploy.driver": "true"})
    variants = [
        replace(ctx, spec=parse_spec({**default_raw(), "dcgm": {"enabled": True}})),
        replace(ctx, namespace="other"),
        replace(ctx, nodes=(relabelled_node, *nodes[1:])),
        replace(ctx, nodes=nodes[1:]),
        replace(ctx, api_groups=frozenset({MONITORING})),
        replace(ctx, config_maps={"repo-config": ("a.repo",)}),
        replace(ctx, owner={**OWNER, "uid": "another"}),
    ]
    keys = {render_key(v) for v in variants}
    assert render_key(ctx) not in keys and len(keys) == len(variants)


def test_a_rendered_text_parsed_before_gives_fresh_equal_objects() -> None:
    from gpu_operator.states.base import _PARSED, _parse

    text = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\ndata: {k: v}\n---\n---\nkind: X\nn: 1\n"
    first = _parse(text)
    assert text in _PARSED
    again = _parse(text)
    assert again == first == [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a"}, "data": {"k": "v"}},
                              {"kind": "X", "n": 1}]  # fmt: skip
    again[0]["metadata"]["name"] = "changed"
    assert _parse(text)[0]["metadata"]["name"] == "a", "a caller's change does not reach the next pass"
    odd = "kind: Y\nports: {80: http}\nwhen: 2026-01-01\n"
    assert _parse(odd) == [{"kind": "Y", "ports": {80: "http"}, "when": __import__("datetime").date(2026, 1, 1)}]
    assert odd not in _PARSED, "what JSON cannot hold as it is is parsed each time"


# What a pass applies before its node decisions


@pytest.mark.parametrize("policy", SCENARIO_NAMES)
def test_node_independent_objects_are_the_final_ones(policy: str) -> None:
    """Objects applied before any node is labelled are exactly as the full render wants them: the pass's own
    apply then finds nothing to change, and nothing it will not keep is ever created."""
    ctx = load_scenario(policy).context()
    final = {object_key(o): o for p in plan(ctx) for o in p.objects}
    early = [o for p in node_independent(ctx) for o in p.objects]
    assert early, "every scenario has accounts and roles to apply early"
    assert not [o for o in early if o["kind"] == "DaemonSet"]
    for obj in early:
        assert final.get(object_key(obj)) == obj, f"{policy}: {obj['kind']} {obj['metadata']['name']} differs"
    wanted = {object_key(o) for o in final.values() if o["kind"] != "DaemonSet"}
    missed = wanted - {object_key(o) for o in early}
    held = set(sharing.HELD_STATES) if ctx.spec.device_plugin.config.name else set()
    assert all(
        owning_state(o["metadata"].get("labels"), frozenset(STATE_NAMES)) in held
        for o in final.values()
        if object_key(o) in missed
    ), f"{policy}: left for later {sorted(missed)}"


def test_node_independent_leaves_out_states_a_sharing_config_may_hold() -> None:
    ctx = load_scenario("sharing-config").context()
    early = {p.state.name for p in node_independent(ctx)}
    assert early and not early & set(sharing.HELD_STATES)


# The render key leaves out what rendering never reads


def _blind_changes(node: NodeFacts, rng: random.Random, keep: frozenset[str] = frozenset()) -> NodeFacts:
    """The node with every label rendering is blind to changed (set, changed or removed) but those in `keep`, and
    its annotations, readiness and cordon changed: what a rollout changes on every node."""
    from gpu_operator.upgrade.model import STATE_LABEL as UPGRADE_STATE

    labels = {k: v for k, v in node.labels.items() if k in keep or not (render_blind(k) and rng.random() < 0.3)}
    for key in sorted(RENDER_BLIND - keep):
        if rng.random() < 0.7:
            labels[key] = rng.choice(["true", "false", "2", "NVIDIA-A100-SXM4-80GB", "NVIDIA-H100-80GB-HBM3",
                                      "Tesla-T4", "mixed", "single", "success", "pending", "upgrade-done", "",
                                      "paused-for-driver-upgrade"])
    labels[UPGRADE_STATE] = rng.choice(["upgrade-required", "pod-restart-required", "upgrade-done"])
    for prefix in RENDER_BLIND_PREFIXES:
        labels[prefix + "x"] = str(rng.randint(0, 9))
    annotations = {"nvidia.com/gpu-driver-upgrade-state.validation-start-time": str(rng.randint(0, 10**9))}
    return NodeFacts(
        name=node.name, labels=labels, annotations=annotations, unschedulable=not node.unschedulable,
        ready=not node.ready, runtime=node.runtime, has_nfd=node.has_nfd, pci_devices=node.pci_devices,
    )  # fmt: skip


def _comparable(plans: list[Any]) -> list[Any]:
    return [(p.state.name, p.enabled, p.problem, p.objects) for p in plans]


@pytest.mark.parametrize("policy", SCENARIO_NAMES)
def test_what_the_render_key_leaves_out_changes_no_plan(policy: str) -> None:
    from dataclasses import replace

    ctx = load_scenario(policy).context()
    want = _comparable(plan(ctx))
    # with a sharing config named, the MPS client check reads the compute labels (render_key keeps that part)
    keep = frozenset({GFD_COMPUTE_MAJOR, GFD_COMPUTE_MINOR} if ctx.spec.device_plugin.config.name else ())
    for seed in range(4):
        rng = random.Random(f"{policy}-{seed}")
        changed = replace(ctx, nodes=tuple(_blind_changes(n, rng, keep) for n in ctx.nodes))
        assert render_key(changed) == render_key(ctx)
        assert _comparable(plan(changed)) == want, f"{policy}: rendering read a label RENDER_BLIND names"


def test_the_render_key_changes_with_a_label_rendering_reads() -> None:
    from dataclasses import replace

    from gpu_operator.nodes import deploy_label

    ctx = load_scenario("default").context()
    node = next(n for n in ctx.nodes if n.has_gpu)
    off = replace(node, labels={**node.labels, deploy_label("container-toolkit"): "false"})
    changed = replace(ctx, nodes=tuple(off if n is node else n for n in ctx.nodes))
    assert render_key(changed) != render_key(ctx)


@pytest.mark.parametrize("operand", ["container-toolkit", "driver"])
def test_the_driver_managers_paused_deploy_labels_do_not_move_the_render_key(operand: str) -> None:
    """k8s-driver-manager sets the toolkit's deploy label to paused-for-driver-upgrade on every driver pod start
    with a driver loaded, then back (e2e/nodemodel.py MANAGER_PAUSES). Rendering reads the driver's and the
    toolkit's deploy labels only through gets_driver/gets_toolkit, which take "true" and the paused values alike:
    the key hashed the raw value, so each pause and restore during a driver rollout rendered every state again
    (review renderkey). A value rendering tells apart ("false", a user's own) still moves the key."""
    from dataclasses import replace

    from gpu_operator.nodes import PAUSED_VALUES, deploy_label

    ctx = load_scenario("default").context()
    key = deploy_label(operand)
    node = next(n for n in ctx.nodes if n.has_gpu and n.labels.get(key) == "true")

    def labelled(value: str) -> Any:
        return replace(ctx, nodes=tuple(replace(n, labels={**n.labels, key: value}) if n is node else n
                                        for n in ctx.nodes))  # fmt: skip

    for value in PAUSED_VALUES:
        paused = labelled(value)
        assert _comparable(plan(paused)) == _comparable(plan(ctx)), "precondition: the pause changes no plan"
        assert render_key(paused) == render_key(ctx), f"{operand}={value} re-renders every state"
    for value in ("false", "mine", "_paused-for-driver-upgrade"):
        assert render_key(labelled(value)) != render_key(ctx), f"{operand}={value}"


@pytest.mark.parametrize("seed", range(8))
def test_the_driver_patches_a_pass_keeps_are_the_ones_decided_from_scratch(seed: int) -> None:
    """driver_node_patches with what the last pass kept (kept_driver_patches) equals the walk of every node, over
    passes of nodes relabelled, new kernels, driver pods coming (holding) and the spec switching precompiled and
    autoUpgrade."""
    from gpu_operator.nodes import DRIVER_KERNEL, GPU_PCI_LABELS, KERNEL, OS_ID, OS_VERSION, deploy_label
    from gpu_operator.nvidiadriver import OWNER_LABEL
    from gpu_operator.render import DriverRouting, driver_node_patches, kept_driver_patches

    rng = random.Random(seed)
    specs = [parse_spec({"driver": {"usePrecompiled": p, "upgradePolicy": {"autoUpgrade": a}}})
             for p in (False, True) for a in (False, True)]  # fmt: skip
    kept = kept_driver_patches()
    nodes: dict[str, NodeFacts] = {}
    spec = specs[0]
    patched = 0
    for step in range(40):
        for _ in range(rng.randint(0, 6)):
            name = f"n{rng.randint(0, 12)}"
            labels = {GPU_PCI_LABELS[0]: "true", OS_ID: "ubuntu", OS_VERSION: "22.04",
                      deploy_label("driver"): rng.choice(["true", "false", "paused-for-driver-upgrade"]),
                      KERNEL: rng.choice(["5.15.0-1", "6.8.0-2", "bad kernel!"])}  # fmt: skip
            if rng.random() < 0.5:
                labels[DRIVER_KERNEL] = rng.choice(["5.15.0-1", "6.8.0-2"])
            if rng.random() < 0.2:
                labels[OWNER_LABEL] = "some-driver"
            nodes[name] = NodeFacts(name, labels=labels)
            if rng.random() < 0.1:
                del nodes[name]
        if rng.random() < 0.15:
            spec = rng.choice(specs)
        holding = {n for n in nodes if rng.random() < 0.5}
        order = list(nodes.values())
        got = driver_node_patches(order, spec, DriverRouting(), holding, kept)
        assert got == driver_node_patches(order, spec, DriverRouting(), holding), f"step {step}"
        patched += bool(got)
    assert patched > 10  # most passes had patches to compare


def test_a_dry_run_from_another_process_renders_the_metrics_port_the_operator_serves() -> None:
    """render --from-cluster runs in a process with no --metrics-port: it takes the port from the operator's live
    Service, or a dry run would rewrite the Service of an operator serving metrics elsewhere (e2e's does)."""
    from gpu_operator.states.operator_metrics import PORT, live_target_port

    key = ("Service", NAMESPACE, "gpu-operator")
    live = {"spec": {"ports": [{"name": "gpu-operator-metrics", "port": 8080, "targetPort": 18080}]}}
    assert live_target_port({key: live}, NAMESPACE) == 18080
    assert live_target_port({}, NAMESPACE) == PORT
    assert live_target_port({key: {"spec": {}}}, NAMESPACE) == PORT


def test_the_render_key_follows_the_mig_layouts_the_sharing_check_reads() -> None:
    """The plan holds the device plugin by the user's mig-parted layouts (MPS is refused where a layout enables
    MIG): an edit of that ConfigMap's config.yaml must change the key, or the last plan is reused."""
    from dataclasses import replace

    from gpu_operator.states import RenderContext
    from support import OWNER

    mps = "sharing: {mps: {resources: [{name: nvidia.com/gpu, replicas: 4}]}}"
    layout = "version: v1\nmig-configs:\n  my-layout: [{devices: all, mig-enabled: %s%s}]\n"
    spec = parse_spec({"devicePlugin": {"config": {"name": "sharing", "default": "mps"}}, "mig": {"strategy": "single"},
                       "migManager": {"config": {"name": "my-layouts"}}})  # fmt: skip
    node = NodeFacts("n1", {"feature.node.kubernetes.io/pci-10de.present": "true", "nvidia.com/gpu.present": "true",
                            "nvidia.com/mig.config": "my-layout"})  # fmt: skip
    base = RenderContext(spec=spec, namespace=NAMESPACE, nodes=(node,), owner=OWNER,
                         config_maps={"sharing": ("mps",), "my-layouts": ("config.yaml",)},
                         config_data={"sharing": {"mps": mps}, "my-layouts": {"config.yaml": layout % ("false", "")}})
    edited = replace(base, config_data={"sharing": {"mps": mps}, "my-layouts": {
        "config.yaml": layout % ("true", ", mig-devices: {3g.40gb: 2}")}})

    def problem(ctx: RenderContext) -> str | None:
        return next(p.problem for p in plan(ctx) if p.state.name == "state-device-plugin")

    assert problem(base) is None and "MIG devices" in (problem(edited) or "")
    assert render_key(base) != render_key(edited)


def test_the_render_key_follows_the_compute_labels_the_mps_client_check_reads() -> None:
    """The sharing check refuses MPS replicas above 16 on GPU nodes whose GFD compute labels say below 7.5, so the
    plan depends on those labels; RENDER_BLIND left them out of the key, so once GFD labelled a V100 the reconciler
    kept the plan of before (the DaemonSets rolled out) while SharingConfigValid, worked out each pass, said
    "refused, not rolled out". Now the key holds which GPU nodes are below 7.5, and only with a config named."""
    from dataclasses import replace

    mps20 = "version: v1\nsharing:\n  mps:\n    resources:\n    - name: nvidia.com/gpu\n      replicas: 20\n"
    data = {"sharing": {"mps": mps20}}

    def ctx(raw: dict[str, Any], major: str | None, minor: str = "0") -> Any:
        labels = {} if major is None else {GFD_COMPUTE_MAJOR: major, GFD_COMPUTE_MINOR: minor}
        return replace(render_context(parse_spec(raw), [facts("v100", labels=labels)]), config_data=data)

    named = {"devicePlugin": {"config": {"name": "sharing", "default": "mps"}}}
    unlabelled, v100 = ctx(named, None), ctx(named, "7")
    held = {p.state.name for p in plan(v100) if p.problem}
    assert not [p for p in plan(unlabelled) if p.problem] and "state-device-plugin" in held
    assert render_key(unlabelled) != render_key(v100)
    assert render_key(ctx(named, "8")) == render_key(ctx(named, "9")) == render_key(unlabelled)  # all 7.5 or more
    # without a sharing config nothing reads them: GFD labelling the node re-renders nothing
    assert render_key(ctx({}, None)) == render_key(ctx({}, "7")) == render_key(ctx({}, "9"))



def test_an_empty_priority_class_keeps_system_node_critical() -> None:
    plans = render_all(parse_spec({"daemonsets": {"priorityClassName": ""}}))
    classes = {ds["metadata"]["name"]: ds["spec"]["template"]["spec"].get("priorityClassName")
               for ds in daemonsets(plans)}  # fmt: skip
    assert classes and set(classes.values()) == {"system-node-critical"}


def test_the_render_key_follows_the_gpu_facts_the_sharing_checks_mig_mode_reads() -> None:
    """The MIG check counts only the layout entries that select the node's GPU, known by GFD's product label, and
    none on a GPU GFD labels not MIG-capable: labels the key otherwise leaves out (RENDER_BLIND). GFD's first labels
    must change the key, or the last plan is reused."""
    from dataclasses import replace

    from gpu_operator.states import RenderContext
    from support import OWNER

    mps = "sharing: {mps: {resources: [{name: nvidia.com/gpu, replicas: 4}]}}"
    fleet = ("version: v1\nmig-configs:\n  fleet:\n"
             "    - {device-filter: ['0x20B710DE'], devices: all, mig-enabled: true, mig-devices: {1g.6gb: 4}}\n"
             "    - {device-filter: ['0x233010DE'], devices: all, mig-enabled: false}\n")
    spec = parse_spec({"devicePlugin": {"config": {"name": "sharing", "default": "mps"}}, "mig": {"strategy": "single"},
                       "migManager": {"config": {"name": "my-layouts"}}})  # fmt: skip
    labels = {"feature.node.kubernetes.io/pci-10de.present": "true", "nvidia.com/gpu.present": "true",
              "nvidia.com/mig.config": "fleet", "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    h100 = RenderContext(spec=spec, namespace=NAMESPACE, nodes=(NodeFacts("n1", labels),), owner=OWNER,
                         config_maps={"sharing": ("mps",), "my-layouts": ("config.yaml",)},
                         config_data={"sharing": {"mps": mps}, "my-layouts": {"config.yaml": fleet}})
    a30 = replace(h100, nodes=(NodeFacts("n1", {**labels, "nvidia.com/gpu.product": "NVIDIA-A30"}),))

    def problem(ctx: RenderContext) -> str | None:
        return next(p.problem for p in plan(ctx) if p.state.name == "state-device-plugin")

    assert problem(h100) is None and "MIG devices" in (problem(a30) or "")
    assert render_key(h100) != render_key(a30)
    # and GFD's mig.capable: a GPU that is not MIG-capable is never in MIG mode, whatever its layout
    off = replace(a30, nodes=(NodeFacts("n1", {**a30.nodes[0].labels, "nvidia.com/mig.capable": "false"}),))
    assert problem(off) is None and render_key(off) != render_key(a30)
