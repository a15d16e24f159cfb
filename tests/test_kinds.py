"""The registry of kinds: derived from the states alone, so adding a state (even with a new kind) touches
nothing else: it is rendered, watched, listed at start-up for pruning and granted in RBAC."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys
import textwrap
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import kopf
import pytest
import yaml

from gpu_operator import kinds, states
from gpu_operator.api import parse_spec
from gpu_operator.kinds import Kind, operand_kinds, operand_rbac, registry
from gpu_operator.kube import Kube, path_for
from gpu_operator.render import node_patches, plan
from gpu_operator.runtime import Operator, build_registry
from gpu_operator.states import RenderContext, all_states
from support import OWNER, REPO, deep_merge, fixed_nodes, load_scenario, render_all, sample_spec, scenario_names

STATE_MODULE = '''
"""A throw-away state shipped outside the package, with a kind no other state renders."""
from pathlib import Path

from gpu_operator.api import parse_spec
from gpu_operator.kinds import SERVICE_ACCOUNT, Kind
from gpu_operator.states.base import OperandState

RULE = Kind("PrometheusRule", "monitoring.coreos.com/v1", "prometheusrules", True, optional=True)

STATE = OperandState(
    name="state-throwaway",
    order=99,
    deploy_label="throwaway",
    kinds=(SERVICE_ACCOUNT, RULE),
    template_root=Path(__file__).parent / "templates",
)
'''

TEMPLATE = """\
{% import "_macros.j2" as m with context %}
{{ m.service_account("throwaway") }}
---
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: throwaway-alerts
spec:
  groups: []
"""


def _watched(reg: kopf.OperatorRegistry) -> set[tuple[str | None, str | None]]:
    return {(h.selector.group, h.selector.any_name) for h in reg._watching.get_all_handlers() if h.selector}


def _clear() -> None:
    sys.modules.pop("gpu_operator.states.throwaway_state", None)
    all_states.cache_clear()
    operand_kinds.cache_clear()
    states.base.templates.cache_clear()


@pytest.fixture
def throwaway(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    (tmp_path / "throwaway_state.py").write_text(textwrap.dedent(STATE_MODULE))
    folder = tmp_path / "templates" / "state-throwaway"
    folder.mkdir(parents=True)
    (folder / "0100_objects.yaml").write_text(TEMPLATE)
    monkeypatch.setattr(states, "__path__", [*states.__path__, str(tmp_path)])
    _clear()
    yield tmp_path
    monkeypatch.undo()
    _clear()


def _ctx(api_groups: frozenset[str]) -> RenderContext:
    return RenderContext(
        spec=parse_spec(load_scenario("default").spec),
        namespace="gpu-operator",
        nodes=tuple(fixed_nodes()),
        owner=OWNER,
        api_groups=api_groups,
    )


def test_a_state_from_another_directory_is_rendered_watched_listed_and_granted(throwaway: Path) -> None:
    assert "state-throwaway" in [s.name for s in all_states()]
    rule = registry()["PrometheusRule"]
    assert rule == Kind("PrometheusRule", "monitoring.coreos.com/v1", "prometheusrules", True, optional=True)

    # rendered, when the cluster serves its API group, with our labels and owner
    served = {p.state.name: p for p in plan(_ctx(frozenset({"monitoring.coreos.com"})))}["state-throwaway"]
    assert [(o["kind"], o["metadata"]["name"]) for o in served.objects] == [
        ("ServiceAccount", "throwaway"),
        ("PrometheusRule", "throwaway-alerts"),
    ]
    assert served.objects[1]["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "gpu-operator"
    # not rendered while the group is not served
    unserved = {p.state.name: p for p in plan(_ctx(frozenset()))}["state-throwaway"]
    assert [o["kind"] for o in unserved.objects] == ["ServiceAccount"]

    # watched: the kopf registry has a handler for it
    reg = build_registry(Operator(kube=None, namespace="gpu-operator"))  # type: ignore[arg-type]
    watched = _watched(reg)
    assert ("monitoring.coreos.com", "prometheusrules") in watched

    # listed at start-up (to find what is no longer wanted): the client knows its path
    assert path_for("PrometheusRule", namespace="gpu-operator") == (
        "/apis/monitoring.coreos.com/v1/namespaces/gpu-operator/prometheusrules"
    )
    # its deploy label goes on GPU nodes (and only on them)
    patches = node_patches(list(fixed_nodes()), parse_spec(load_scenario("default").spec))
    assert patches["gpu-h100-a"]["labels"]["nvidia.com/gpu.deploy.throwaway"] == "true"
    assert "cpu-a" not in patches

    # granted: the rights the chart must hold include it, and the chart's generated rules grant them
    assert operand_rbac()[("monitoring.coreos.com", "prometheusrules")][0] is True
    spec = importlib.util.spec_from_file_location("gen_manifests", REPO / "hack" / "gen-manifests.py")
    assert spec is not None and spec.loader is not None
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    rules = yaml.safe_load(gen.operand_rbac())
    verbs = ["get", "list", "watch", "create", "patch", "update", "delete"]
    granted = {"apiGroups": ["monitoring.coreos.com"], "resources": ["prometheusrules", "servicemonitors"]}
    assert {**granted, "verbs": verbs} in rules["namespaced"]


def test_rendering_a_kind_the_state_did_not_declare_is_an_error(throwaway: Path) -> None:
    folder = throwaway / "templates" / "state-throwaway"
    (folder / "0200_undeclared.yaml").write_text("apiVersion: v1\nkind: Secret\nmetadata:\n  name: nope\n")
    with pytest.raises(ValueError, match="state-throwaway renders v1 Secret, which is not in its declared kinds"):
        plan(_ctx(frozenset({"monitoring.coreos.com"})))


READ_PODS = "all-on, exporter pod labels"  # the exporter's read-pods ClusterRole, which no scenario renders


@pytest.mark.parametrize("name", [*scenario_names(), READ_PODS])
def test_the_operator_may_write_every_clusterrole_and_binding_it_renders(name: str) -> None:
    """The operator's patch/update/delete on ClusterRoles and ClusterRoleBindings are limited to the operand ones
    (kinds.OPERAND_CLUSTER_ROLES, the chart's and the manifests' resourceNames): one a state renders under another
    name would be refused (403) at every apply. Every scenario's are in them, so a new operand cannot miss it."""
    scenario = load_scenario("all-on" if name == READ_PODS else name)
    if name == READ_PODS:
        spec = deep_merge(scenario.spec, {"dcgmExporter": {"enablePodLabels": True}})
        scenario = dataclasses.replace(scenario, spec=spec)
    rendered = {(o["kind"], o["metadata"]["name"]) for p in scenario.render() for o in p.objects
                if o["kind"] in ("ClusterRole", "ClusterRoleBinding")}  # fmt: skip
    assert rendered
    if name == READ_PODS:
        assert ("ClusterRole", "nvidia-dcgm-exporter-read-pods") in rendered
    generated = yaml.safe_load((REPO / "charts" / "gpu-operator" / "files" / "operand-rbac.yaml").read_text())
    manifest = [d for d in yaml.safe_load_all((REPO / "manifests" / "gpu-operator.yaml").read_text()) if d]
    (role,) = [d for d in manifest if d["kind"] == "ClusterRole" and d["metadata"]["name"] == "gpu-operator"]
    for where, rules in (("operand-rbac.yaml", generated["cluster"]), ("manifests", role["rules"])):
        for kind, obj in sorted(rendered):
            resource = registry()[kind].plural
            granted = [r for r in rules if resource in r["resources"] and set(kinds.NAMED_VERBS) <= set(r["verbs"])
                       and obj in r.get("resourceNames", [])]  # fmt: skip
            assert granted, f"{where}: {kind} {obj} is not among the names the operator may write"
            assert obj in kinds.operand_names()[("rbac.authorization.k8s.io", resource)]


@pytest.mark.parametrize("name", scenario_names())
def test_every_rendered_kind_is_in_the_registry(name: str) -> None:
    reg = registry()
    for state_plan in load_scenario(name).render():
        for obj in state_plan.objects:
            kind = reg[obj["kind"]]
            assert kind.api_version == obj["apiVersion"]
            assert bool(obj["metadata"].get("namespace")) == kind.namespaced, obj["metadata"]


def test_builtin_and_operand_kinds_agree() -> None:
    builtin = {k.kind: k for k in kinds.BUILTIN}
    for kind in operand_kinds():
        assert builtin.get(kind.kind, kind) == kind


def test_watches_cover_every_operand_kind_and_crds() -> None:
    reg = build_registry(Operator(kube=None, namespace="gpu-operator"))  # type: ignore[arg-type]
    watched = _watched(reg)
    # Our DaemonSets have a watch of their own (started with the operator: runtime.build_registry's startup), so
    # kopf watches every other operand kind, and not those twice.
    assert {(k.group, k.plural) for k in operand_kinds()} - {("apps", "daemonsets")} <= watched
    assert ("apps", "daemonsets") not in watched
    assert ("apiextensions.k8s.io", "customresourcedefinitions") in watched
    assert ("monitoring.coreos.com", "servicemonitors") in watched  # the kind that was never watched before
    assert isinstance(reg, kopf.OperatorRegistry)


@pytest.fixture
def discovery(tmp_path: Path) -> Iterator[tuple[Kube, list[dict[str, Any]]]]:
    """A loopback API server whose discovery serves monitoring.coreos.com/v1 with the resources in the list it
    yields (the Prometheus operator's CRDs installed in part, or while they are installed one by one)."""
    resources: list[dict[str, Any]] = []
    v1 = {"groupVersion": "monitoring.coreos.com/v1", "version": "v1"}
    group = {"name": "monitoring.coreos.com", "versions": [v1], "preferredVersion": v1}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            answers = {"/apis": {"kind": "APIGroupList", "groups": [group]},
                       "/apis/monitoring.coreos.com/v1": {"kind": "APIResourceList", "resources": resources}}
            found = answers.get(self.path.split("?")[0])
            body = json.dumps(found or {"kind": "Status", "code": 404, "reason": "NotFound"}).encode()
            self.send_response(200 if found else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    config = tmp_path / "kubeconfig"
    config.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{httpd.server_port}"}}],
        "users": [{"name": "u", "user": {}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
    }))  # fmt: skip
    try:
        yield Kube.connect(str(config), resume_tls=False), resources
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_a_servicemonitor_is_rendered_only_where_its_kind_is_served(discovery: tuple[Kube, list[Any]]) -> None:
    """An optional kind was taken for served when its API group was: a cluster serving monitoring.coreos.com with
    PrometheusRules alone got a ServiceMonitor apply answered 404 on every pass, state-operator-metrics notReady and
    the ClusterPolicy never ready. Upstream creates the ServiceMonitors only when the CRD
    servicemonitors.monitoring.coreos.com exists (controllers/object_controls.go ServiceMonitor()); discovery now
    names the optional kinds served, read from their group-version."""
    kube, resources = discovery

    def monitors() -> list[str]:
        plans = render_all(sample_spec(), api_groups=kube.api_groups())
        return [o["metadata"]["name"] for p in plans for o in p.objects if o["kind"] == "ServiceMonitor"]

    resources.append({"name": "prometheusrules", "kind": "PrometheusRule", "namespaced": True, "verbs": ["get"]})
    assert kube.api_groups() == frozenset() and monitors() == []
    resources.append({"name": "servicemonitors", "kind": "ServiceMonitor", "namespaced": True, "verbs": ["get"]})
    assert kube.api_groups() == {"monitoring.coreos.com/servicemonitors"} and monitors() == ["gpu-operator"]
