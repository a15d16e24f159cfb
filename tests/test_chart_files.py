"""The Helm chart's files that need no helm binary: metadata, values keys, the CRD copy, the default-image table,
and the sample ClusterPolicies (helm-rendered checks are in e2e/test_chart.py)."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml

from gpu_operator import coverage, images
from gpu_operator.api import ClusterPolicySpec, parse_spec
from gpu_operator.crd import crds_yaml
from support import NAMESPACE, REPO

CHART = REPO / "charts" / "gpu-operator"
REGENERATE = "run .venv/bin/python hack/gen-manifests.py"
SAMPLES = [
    REPO / "manifests" / "samples" / name
    for name in (
        "clusterpolicy-mig-mixed.yaml",
        "clusterpolicy-time-slicing.yaml",
        "clusterpolicy-upgrades-drain.yaml",
    )
]
NOT_IN_UPSTREAM_VALUES = {"psp"}  # ClusterPolicy sections upstream's chart has no values for


def one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def test_chart_metadata() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["name"] == "gpu-operator"
    assert chart["version"] == "0.3.0" and chart["appVersion"] == "0.1.0"
    # No kubeVersion: it would fail an offline `helm template`; templates/kube-version-check.yaml checks instead.
    assert "kubeVersion" not in chart
    check = (CHART / "templates" / "kube-version-check.yaml").read_text()
    assert '$minimum := "1.29.0-0"' in check and "lookup" in check
    assert "dependencies" not in chart, "NFD is not vendored: the chart has no dependencies"


def test_values_mirror_the_upstream_keys() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    sections = {f.alias or name for name, f in ClusterPolicySpec.model_fields.items()} - NOT_IN_UPSTREAM_VALUES
    assert sorted(sections - set(values)) == [], "every ClusterPolicy section has its values, as upstream's chart"
    assert values["nfd"]["enabled"] is True
    assert values["clusterPolicy"]["enabled"] is True and values["clusterPolicy"]["deployCR"] is True
    assert values["extraObjects"] == []
    assert values["dcgm"]["enabled"] is False
    assert values["mig"]["strategy"] == "single"
    assert values["driver"]["upgradePolicy"]["gpuPodDeletion"] == {
        "force": False, "timeoutSeconds": 300, "deleteEmptyDir": False,
    }  # fmt: skip
    assert "podDeletion" not in values["driver"]["upgradePolicy"], "the Helm key is gpuPodDeletion, as upstream"
    assert values["operator"]["cleanupCRD"] is False and values["operator"]["upgradeCRD"] is True
    assert values["operator"]["metrics"]["serviceMonitor"]["enabled"] is True  # upstream always creates it
    # Defaults as upstream v26.7's chart (CDI on; the DCGM exporter's ServiceMonitor, made only where the
    # prometheus-operator API is served; the operator and its hook Jobs on Linux nodes).
    upstream = yaml.safe_load((REPO / "tests" / "fixtures" / "upstream" / "values.yaml").read_text())
    assert values["cdi"] == upstream["cdi"] == {"enabled": True, "nriPluginEnabled": False}
    ours, theirs = values["dcgmExporter"]["serviceMonitor"], upstream["dcgmExporter"]["serviceMonitor"]
    assert {k: ours[k] for k in ("enabled", "interval", "scrapeTimeout")} == {
        k: theirs[k] for k in ("enabled", "interval", "scrapeTimeout")} == {
        "enabled": True, "interval": "15s", "scrapeTimeout": "10s"}  # fmt: skip
    assert values["operator"]["nodeSelector"] == upstream["operator"]["nodeSelector"] == {"kubernetes.io/os": "linux"}


def test_the_defaults_of_a_null_chart_section_are_values_yamls() -> None:
    """files/chart-defaults.yaml is what a chart-only section set to null renders as (gpu-operator.nullSections):
    a copy of values.yaml's, of every section but the ClusterPolicy's operand sections and the extraObjects list."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    copy = yaml.safe_load((CHART / "files" / "chart-defaults.yaml").read_text())
    operands = {f.alias or name for name, f in ClusterPolicySpec.model_fields.items()} - {"operator"}
    chart_only = [k for k, v in values.items() if k not in operands and isinstance(v, dict)]
    assert list(copy) == chart_only
    assert copy == {k: values[k] for k in chart_only}, "copy values.yaml's sections into files/chart-defaults.yaml"


def test_chart_crds_match_the_operator() -> None:
    shipped = {f.name: f.read_text() for f in sorted((REPO / "crds").glob("*.yaml"))}
    chart = {f.name: f.read_text() for f in sorted((CHART / "crds").glob("*.yaml"))}
    assert chart == shipped, f"charts/gpu-operator/crds/ is stale: {REGENERATE}"
    # And the hook's `gpu-operator crds --apply` applies the same CRDs that `helm install` installs.
    hook_crds = [d for d in yaml.safe_load_all(crds_yaml()) if d]
    assert [d for f in chart.values() for d in yaml.safe_load_all(f) if d] == hook_crds, "run `make crds` first"


def gpu_operator_cli() -> list[str]:
    script = Path(sys.executable).parent / "gpu-operator"
    return [str(script)] if script.exists() else [sys.executable, "-m", "gpu_operator.cli"]


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: p.stem)
def test_sample_validates(sample: Path) -> None:
    proc = subprocess.run([*gpu_operator_cli(), "render", "--policy", str(sample)],
                          capture_output=True, text=True, timeout=120, cwd=REPO)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "", "samples use no field the operator ignores"
    assert "kind: DaemonSet" in proc.stdout


def sample_docs(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((REPO / "manifests" / "samples" / name).read_text()) if d]


def test_sample_mig_mixed() -> None:
    spec = parse_spec(one(sample_docs("clusterpolicy-mig-mixed.yaml"), "ClusterPolicy", "cluster-policy")["spec"])
    assert spec.mig.strategy == "mixed" and spec.mig_manager.enabled


def test_sample_time_slicing() -> None:
    docs = sample_docs("clusterpolicy-time-slicing.yaml")
    spec = parse_spec(one(docs, "ClusterPolicy", "cluster-policy")["spec"])
    cm = one(docs, "ConfigMap", spec.device_plugin.config.name)
    assert cm["metadata"]["namespace"] == NAMESPACE
    default = yaml.safe_load(cm["data"][spec.device_plugin.config.default])
    assert default["sharing"]["timeSlicing"]["resources"] == [{"name": "nvidia.com/gpu", "replicas": 4}]


def test_sample_upgrades_drain() -> None:
    spec = parse_spec(one(sample_docs("clusterpolicy-upgrades-drain.yaml"), "ClusterPolicy", "cluster-policy")["spec"])
    up = spec.driver.upgrade_policy
    assert up.auto_upgrade is True and up.max_parallel_upgrades == 3 and up.max_unavailable == "25%"
    assert up.drain.enable is True and up.drain.pod_selector


def test_every_sample_policy_sets_the_mig_config_section() -> None:
    """README (MIG layouts): a node without nvidia.com/mig.config gets migManager.config.default, none without a
    `migManager.config` section, "the chart and the samples set one". The time-slicing and upgrades-drain samples set
    no migManager, so on MIG-capable nodes they seeded no layout, unlike the chart; now every sample sets the chart's
    default, all-disabled."""
    for path in sorted((REPO / "manifests" / "samples").glob("clusterpolicy-*.yaml")):
        spec = parse_spec(one(sample_docs(path.name), "ClusterPolicy", "cluster-policy")["spec"])
        assert spec.mig_manager.default_layout == "all-disabled", path.name


def test_default_images_match_the_operator() -> None:
    """files/default-images.yaml: the versions the chart fills in are the operator's own defaults."""
    table = yaml.safe_load((CHART / "files" / "default-images.yaml").read_text())
    for section, entry in table.items():
        model: Any = ClusterPolicySpec()
        for key in section.split("."):
            model = coverage.child(model, key)
        assert model is not None, f"{section} is not a ClusterPolicy section"
        assert (entry["repository"], entry["image"], entry["version"]) == images.DEFAULTS[entry["component"]], section
    assert {e["component"] for e in table.values()} == set(images.DEFAULTS), "every default image has a section"


def test_operator_env_image_is_the_default_when_the_policy_names_none(monkeypatch: pytest.MonkeyPatch) -> None:
    """Upstream's imagePath: the ClusterPolicy's image first, then the operator's env (VALIDATOR_IMAGE,
    DRIVER_MANAGER_IMAGE, set by the chart), then the built-in default."""
    empty = parse_spec({})
    assert images.resolve(empty.validator, "validator") == images.join(*images.DEFAULTS["validator"])
    monkeypatch.setenv("VALIDATOR_IMAGE", "mirror.example.com/nvidia/gpu-operator:v26.7.0")
    monkeypatch.setenv("DRIVER_MANAGER_IMAGE", "mirror.example.com/k8s-driver-manager:v0.12.0")
    for component in ("validator", "node-status-exporter"):
        assert images.resolve(empty.validator, component) == "mirror.example.com/nvidia/gpu-operator:v26.7.0"
    assert images.resolve(empty.driver.manager, "driver-manager") == "mirror.example.com/k8s-driver-manager:v0.12.0"
    assert images.version_of(empty.validator, "validator") == "v26.7.0"
    # The policy's own image wins; components without an env entry keep their default.
    own = parse_spec({"validator": {"repository": "r.example.com", "image": "validator", "version": "v1"}})
    assert images.resolve(own.validator, "validator") == "r.example.com/validator:v1"
    assert images.resolve(empty.toolkit, "toolkit") == images.join(*images.DEFAULTS["toolkit"])


# Upstream v26.7 api/nvidia/v1/clusterpolicy_types.go ImagePath: the operator's env var each component's image falls
# back to when the ClusterPolicy names no repository, image or version.
UPSTREAM_IMAGE_ENV = {
    "driver": "DRIVER_IMAGE", "driver-manager": "DRIVER_MANAGER_IMAGE", "toolkit": "CONTAINER_TOOLKIT_IMAGE",
    "device-plugin": "DEVICE_PLUGIN_IMAGE", "gfd": "GFD_IMAGE", "dcgm": "DCGM_IMAGE",
    "dcgm-exporter": "DCGM_EXPORTER_IMAGE", "mig-manager": "MIG_MANAGER_IMAGE", "validator": "VALIDATOR_IMAGE",
    "node-status-exporter": "VALIDATOR_IMAGE", "gds": "GDS_IMAGE", "gdrcopy": "GDRCOPY_IMAGE",
    "vfio-manager": "VFIO_MANAGER_IMAGE", "vgpu-device-manager": "VGPU_DEVICE_MANAGER_IMAGE",
    "sandbox-device-plugin": "SANDBOX_DEVICE_PLUGIN_IMAGE", "cc-manager": "CC_MANAGER_IMAGE",
    "vgpu-manager": "VGPU_MANAGER_IMAGE",
}  # fmt: skip


@pytest.mark.parametrize("component", sorted(images.DEFAULTS))
def test_every_components_image_env_var_on_the_operator_is_honoured_as_upstream(
    component: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only VALIDATOR_IMAGE and DRIVER_MANAGER_IMAGE were read: with DEVICE_PLUGIN_IMAGE, GFD_IMAGE, ... on the
    operator (OLM sets them; `operator.env` in values, or the plain manifests' Deployment, for an air-gapped mirror)
    and a ClusterPolicy naming no image, the nvcr.io default ran, without a word. Upstream's ImagePath uses them."""
    mirror = f"mirror.local/nvidia/{component}:v1"
    monkeypatch.setenv(UPSTREAM_IMAGE_ENV[component], mirror)
    assert images.resolve(parse_spec({}).driver.manager, component) == mirror  # an ImageSpec naming none
    assert images.resolve(parse_spec({}).driver.manager, component, env=False) == images.join(
        *images.DEFAULTS[component])  # fmt: skip


def test_the_uninstall_notes_say_the_node_labels_the_clean_up_removes_go() -> None:
    """The clean-up of a deleted last ClusterPolicy removes the MIG record since 785555d; the notes said it stays
    (and promised a check after a reinstall that no longer happens). It removes the upgrade state label too now
    (as upstream), which the notes said stayed on purpose."""
    from gpu_operator.apply import Applier
    from gpu_operator.lifecycle import CLEANUP_FINALIZER, Lifecycle
    from gpu_operator.mig import APPROVED
    from gpu_operator.nodes import GPU_PRESENT, deploy_label
    from gpu_operator.observe import Snapshot
    from gpu_operator.upgrade.model import STATE_LABEL as UPGRADE_STATE
    from support import RecordingKube, facts, policy_object

    ours = {GPU_PRESENT: "true", deploy_label("driver"): "true", APPROVED: "all-disabled",
            UPGRADE_STATE: "upgrade-done"}  # fmt: skip
    pol = policy_object()
    pol["metadata"].update(finalizers=[CLEANUP_FINALIZER], deletionTimestamp="2026-02-01T00:00:00Z")
    kube = RecordingKube()
    snap = Snapshot(nodes={"gpu-1": facts("gpu-1", labels=ours)}, policies={"cluster-policy": pol}, owned={}, pods={},
                    revisions={})  # fmt: skip
    Lifecycle(kube, NAMESPACE, Applier(kube)).cleanup_deleted(snap)  # type: ignore[arg-type]
    removed = {k for verb, what in kube.calls if verb == "merge_patch" and what[0] == "Node"
               for k in what[2]["metadata"].get("labels", {})}  # fmt: skip
    assert removed == set(ours)

    readme = " ".join((CHART / "README.md").read_text().split())
    uninstall = readme.split("**Uninstall.**", 1)[1].split(" * ", 1)[0]
    named = [(k, s) for k in ours for s in uninstall.split(". ") if f"`{k}`" in s]
    assert {k for k, _ in named} == {APPROVED, UPGRADE_STATE}
    for label, sentence in named:
        assert f"`{label}` goes" in sentence and "on purpose" not in sentence, sentence


def _nfd_install_commands() -> dict[str, str]:
    """The `helm install nfd ...` command (its continuation lines joined) each install text gives, and doctor's."""
    import re

    from gpu_operator.doctor.stack import NFD_INSTALL

    out = {"doctor": NFD_INSTALL}
    for path in (REPO / "README.md", CHART / "README.md", CHART / "templates" / "NOTES.txt"):
        found = re.findall(r"helm install nfd[^`\n]*", path.read_text().replace("\\\n", " "))  # one line
        assert len(found) == 1, path
        out[str(path.relative_to(REPO))] = found[0]
    return out


def test_the_nfd_install_commands_let_its_worker_onto_gpu_nodes_tainted_nvidia_com_gpu() -> None:
    """NFD's chart gives its worker no toleration (deployment/helm/node-feature-discovery/values.yaml
    worker.tolerations: []); GPU node pools are often tainted nvidia.com/gpu:NoSchedule (GKE's are, and this chart's
    daemonsets.tolerations tolerate it), so NFD's worker never ran there and no GPU node was found. Upstream's chart
    gives NFD's worker that toleration (deployments/gpu-operator/values.yaml node-feature-discovery.worker)."""
    import json
    import re

    for where, command in _nfd_install_commands().items():
        found = re.search(r"--set-json '(worker\.tolerations)=([^']*)'", command)
        assert found, where
        assert json.loads(found.group(2)) == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


def test_the_install_texts_name_the_gpu_labels_stock_nfd_writes() -> None:
    """Stock NFD (deviceLabelFields [class, vendor]) writes pci-0302_10de.present / pci-0300_10de.present, never
    pci-10de.present (NFD source/pci/pci.go); a text that named only pci-10de sent admins to a label no node had."""
    for path in (REPO / "README.md", CHART / "README.md", CHART / "templates" / "NOTES.txt"):
        text = path.read_text()
        before = text[: text.index("helm install nfd")]
        for label in ("pci-0302_10de.present", "pci-0300_10de.present"):
            assert label in before[-1000:], (path, label)
    values = (CHART / "values.yaml").read_text()  # its nfd comment, which `helm show values` prints
    comment = values[: values.index("\nnfd:")].rsplit("\n\n", 1)[-1]
    for label in ("pci-0302_10de.present", "pci-0300_10de.present"):
        assert label in comment, ("values.yaml", label)


def test_every_operator_value_the_deployment_reads_is_in_the_chart_readme() -> None:
    """templates/deployment.yaml read operator.imagePullPolicy, .livenessProbe and .readinessProbe, which the chart
    README's table of chart-only values never named, so an admin could not learn the probes are tunable."""
    deployment = (CHART / "templates" / "deployment.yaml").read_text()
    readme = (CHART / "README.md").read_text()
    read = set(re.findall(r"\.Values\.operator\.(\w+)", deployment))
    assert {"imagePullPolicy", "livenessProbe", "readinessProbe"} <= read
    for key in sorted(read):
        assert f"operator.{key}" in readme or f"`{key}`" in readme, key


def test_the_deployment_leaves_out_its_own_env_entry_of_a_name_operator_env_gives() -> None:
    """The operator container's env named VALIDATOR_IMAGE and DRIVER_MANAGER_IMAGE (and POD_NAME, ...) before
    operator.env's entries, so one set there too, as the README says for a mirror, was in the env twice. Each of the
    chart's own entries is now left out where operator.env names it (rendered: e2e/test_chart.py)."""
    deployment = (CHART / "templates" / "deployment.yaml").read_text()
    own = deployment[deployment.index("        env:\n") : deployment.index("{{- with .Values.operator.env }}")]
    names = re.findall(r"^        - name: (\w+)$", own, re.MULTILINE)
    assert {"VALIDATOR_IMAGE", "DRIVER_MANAGER_IMAGE", "POD_NAME"} <= set(names), names
    for name in names:
        guard = rf'{{{{- if not \(has "{name}" \$given\) }}}}\n'
        assert re.search(guard + rf"(        #.*\n)*        - name: {name}\n", own), name
    for readme in (REPO / "README.md", CHART / "README.md"):
        assert "replaces the chart's own" in readme.read_text(), readme


def test_the_alerts_and_dashboard_on_what_the_passes_set_read_the_leader_alone() -> None:
    """A follower replica (operator.replicas > 1) runs no pass, so it exports reconciliation_status 0 ("not
    ready") and reconciliation_has_nfd_labels 0 for good: GPUOperatorOperandNotReady and GPUOperatorNFDLabelsMissing
    fired once per follower on a healthy cluster, and the dashboard drew a series per follower."""
    fresh = "import prometheus_client as p, gpu_operator.metrics as m; print(p.generate_latest(m.REGISTRY).decode())"
    out = subprocess.run([sys.executable, "-c", fresh], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(REPO / "operator")}).stdout  # fmt: skip
    values = dict(re.findall(r"^gpu_operator_(\w+) (\S+)$", out, re.M))
    follower = ("leader", "reconciliation_status", "reconciliation_has_nfd_labels")
    assert [float(values[name]) for name in follower] == [0, 0, 0]
    rules = dict(re.findall(r"- alert: (\S+)\n\s+expr: (.+)", (CHART / "templates" / "monitoring.yaml").read_text()))
    dashboard = json.loads((CHART / "files" / "grafana-dashboard.json").read_text())
    exprs = [*rules.values(), *(t["expr"] for p in dashboard["panels"] for t in p["targets"])]
    ours = [e for e in exprs if "gpu_operator_" in e]
    assert len(ours) == len(exprs) - 1  # GPUsUnhealthy reads kube-state-metrics
    assert [e for e in ours if not e.endswith(" and gpu_operator_leader == 1")] == []


def test_the_monitoring_values_are_where_their_templates_read_them() -> None:
    """Inserting prometheusRule and grafanaDashboard in the middle of operator.metrics.serviceMonitor left its
    `additionalLabels` and `relabelings` (upstream's keys there, commented out in its values.yaml) under
    grafanaDashboard, where no template reads them: grafanaDashboard.additionalLabels did nothing, silently."""
    metrics = yaml.safe_load((CHART / "values.yaml").read_text())["operator"]["metrics"]
    read = set(re.findall(r"\$m\.grafanaDashboard\.(\w+)", (CHART / "templates" / "monitoring.yaml").read_text()))
    assert sorted(set(metrics["grafanaDashboard"]) - read) == []
    assert {"interval", "honorLabels", "additionalLabels", "relabelings"} <= set(metrics["serviceMonitor"])


def test_the_alerts_fire_after_the_minutes_their_descriptions_name() -> None:
    """GPUOperatorNodeStuckInUpgrade looked back upgradeStuckFor minutes (`done == done offset 60m`) and then held
    that for `for: 60m`: every evaluation in the `for` compared with 60 minutes before it, so after the last node
    finished it fired after 120 minutes, not the 60 its description names. GPUOperatorReconciliationFailing stacked
    `time() - last_success > 900` on `for: 10m` likewise: 25 minutes, not 15. Look-back plus `for` is the time."""
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())["operator"]["metrics"]["prometheusRule"]
    text = (CHART / "templates" / "monitoring.yaml").read_text()
    text = re.sub(r"\{\{ \$m\.prometheusRule\.(\w+) \}\}", lambda m: str(defaults[m.group(1)]), text)
    rules = {name: (expr, int(for_)) for name, expr, for_ in
             re.findall(r"- alert: (\S+)\n\s+expr: (.+)\n\s+for: (\d+)m\n", text)}  # fmt: skip

    def described(name: str) -> int:
        found = re.search(rf"- alert: {name}\n(?:.*\n)*?.*description: .* for (\d+) minutes", text)
        assert found, name
        return int(found.group(1))

    stuck, for_ = rules["GPUOperatorNodeStuckInUpgrade"]
    looks = {int(a or b) for a, b in re.findall(r"\[(\d+)m\]|offset (\d+)m", stuck)}
    assert "offset" in stuck, "no alert on a series (a new replica's) younger than its look-back"
    assert looks == {defaults["upgradeStuckFor"]} and max(looks) + for_ == described("GPUOperatorNodeStuckInUpgrade")
    failing, for_ = rules["GPUOperatorReconciliationFailing"]
    found = re.search(r"last_success_ts_seconds > (\d+)", failing)
    assert found, failing
    stale = int(found.group(1))
    assert stale % 60 == 0 and stale // 60 + for_ == described("GPUOperatorReconciliationFailing") == 15


# Grafana's built-in interval variables, as a dashboard's queries may name them, and what Grafana puts there.
GRAFANA_INTERVALS = {"__rate_interval": "5m", "__interval": "1m", "__range": "1h", "__range_s": "3600"}
COUNTER_FUNCTIONS = {"rate", "irate", "increase", "resets"}  # meaningless (and wrong after a restart) on a gauge


def alert_exprs() -> dict[str, str]:
    """The PrometheusRule's alerts, name to expr, as helm renders them with values.yaml's defaults: the rules part
    of the template with its `{{ $m.prometheusRule.X }}` replaced by X's default and its `{{ "{{" }}` escapes by
    what they print, loaded as YAML (an `expr: |` over several lines included)."""
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())["operator"]["metrics"]["prometheusRule"]
    text = (CHART / "templates" / "monitoring.yaml").read_text()
    start = text.index("\nspec:\n")
    spec = text[start : text.index("\n{{- end }}", start)]
    spec = re.sub(r"\{\{ \$m\.prometheusRule\.(\w+) \}\}", lambda m: str(defaults[m.group(1)]), spec)
    spec = spec.replace('{{ "{{" }}', "{{").replace('{{ "}}" }}', "}}")
    rules = [rule for group in yaml.safe_load(spec)["spec"]["groups"] for rule in group["rules"]]
    assert len(rules) == text.count("- alert: ") == len({r["alert"] for r in rules})
    return {rule["alert"]: rule["expr"] for rule in rules}


def dashboard_exprs() -> dict[str, str]:
    """The dashboard's queries, "panel title/refId" to expr, with the Grafana variables in them ($__rate_interval,
    a templating variable as $node, ${node} or [[node]]) replaced by what Grafana could put there."""
    dashboard = json.loads((CHART / "files" / "grafana-dashboard.json").read_text())
    variables = {v["name"] for v in dashboard.get("templating", {}).get("list", [])}

    def panels(ps: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for p in ps:  # and the panels in a collapsed row
            yield p
            yield from panels(p.get("panels", []))

    def value(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        if name in GRAFANA_INTERVALS:
            return GRAFANA_INTERVALS[name]
        assert name in variables, f"${name} is no variable of the dashboard's"
        return "x"  # in a label matcher's string: "$node" -> "x"

    variable = r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)"
    return {f"{p['title']}/{t['refId']}": re.sub(variable, value, t["expr"])
            for p in panels(dashboard["panels"]) for t in p.get("targets", []) if "expr" in t}  # fmt: skip


def exported_series() -> tuple[set[str], set[str]]:
    """The series names the operator's registry exports (with the suffixes prometheus_client adds to a family's
    name: _total to a counter's, _bucket, _count and _sum to a histogram's), and its counters' among them. From
    the families, not their samples: a labelled family exports no sample until its first child."""
    from gpu_operator.metrics import REGISTRY

    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"], "summary": ["", "_count", "_sum"],
                "gaugehistogram": ["_bucket", "_gcount", "_gsum"], "info": ["_info"]}  # fmt: skip
    families = list(REGISTRY.collect())
    names = {f.name + s for f in families for s in suffixes.get(f.type, [""])}
    return names, {f.name + "_total" for f in families if f.type == "counter"}


def test_the_alerts_and_dashboard_queries_are_promql_on_series_the_operator_exports() -> None:
    """Nothing parsed the chart's PromQL before a Prometheus did (no promtool here): a query it refuses makes
    prometheus-operator's admission webhook reject the whole PrometheusRule (every alert lost, at `helm install`
    with monitoring on), and a dashboard query it refuses or one on a series nobody exports draws "No data" that
    reads as all quiet. Each expr is parsed and type-checked by promql_parser (a port of Prometheus's parser);
    every gpu_operator_* series it selects must be one operator/gpu_operator/metrics.py exports, and rate(),
    irate(), increase() and resets() may read counters only."""
    exported, counters = exported_series()
    exprs = {**{f"alert {n}": e for n, e in alert_exprs().items()},
             **{f"panel {n}": e for n, e in dashboard_exprs().items()}}  # fmt: skip
    assert len([k for k in exprs if k.startswith("panel ")]) >= 10
    wrong: list[str] = []
    used: set[str] = set()
    for where, expr in exprs.items():
        assert not re.search(r"\{\{|\$\w|\$\{|\[\[", expr), f"{where}: a template expression left in {expr!r}"
        try:
            tree = promql_parser.parse(expr)
        except ValueError as e:
            wrong.append(f"{where}: {e}: {expr}")
            continue

        def visit(node: promql_parser.Expr, where: str = where) -> None:
            if isinstance(node, promql_parser.VectorSelector):
                if not node.name:
                    wrong.append(f"{where}: a selector with no metric name: {node}")
                elif node.name.startswith("gpu_operator_"):
                    used.add(node.name)
                    if node.name not in exported:
                        wrong.append(f"{where}: {node.name} is not exported (metrics.py)")
            elif isinstance(node, promql_parser.Call) and node.func.name in COUNTER_FUNCTIONS:
                for arg in node.args:
                    name = arg.vector_selector.name if isinstance(arg, promql_parser.MatrixSelector) else None
                    if name and name.startswith("gpu_operator_") and name in exported and name not in counters:
                        wrong.append(f"{where}: {node.func.name}() of {name}, not a counter")

        promql_parser.walk(tree, visit)
    assert not wrong, "\n".join(wrong)
    assert {"gpu_operator_leader", "gpu_operator_reconciliation_failed_total"} <= used


# A tiny PromQL evaluator for one scrape target's unlabelled series (a sample every 15 s): enough for the chart's
# alerts on what the passes set.
Series = dict[str, Callable[[float], float | None]]


def _eval(n: Any, t: float, series: Series) -> float | None:
    if isinstance(n, promql_parser.ParenExpr):
        return _eval(n.expr, t, series)
    if isinstance(n, promql_parser.NumberLiteral):
        return float(n.val)
    if isinstance(n, promql_parser.VectorSelector):
        off = n.offset.total_seconds() if n.offset else 0.0
        return series[n.name](t - off) if n.name in series else None
    if isinstance(n, promql_parser.Call):
        name = n.func.name
        if name == "time":
            return t
        if name in ("increase", "changes", "min_over_time", "max_over_time"):
            m = n.args[0]
            start, end = t - m.range.total_seconds(), t
            f = series[m.vector_selector.name]
            samples = [v for s in range(int(start) + 1, int(end) + 1, 15) if (v := f(s)) is not None]
            if name == "increase":
                return samples[-1] - samples[0] if len(samples) > 1 else None
            if name == "changes":
                return float(sum(a != b for a, b in zip(samples, samples[1:], strict=False))) if samples else None
            return (min if name == "min_over_time" else max)(samples) if samples else None
        raise NotImplementedError(name)
    if isinstance(n, promql_parser.BinaryExpr):
        op = str(n.op)
        a, b = _eval(n.lhs, t, series), _eval(n.rhs, t, series)
        if op == "and":
            return a if a is not None and b is not None else None
        if op == "or":
            return a if a is not None else b
        if a is None or b is None:
            return None
        if op == "-":
            return a - b
        cmp = {"==": a == b, "!=": a != b, ">": a > b, "<": a < b, ">=": a >= b, "<=": a <= b}[op]
        return a if cmp else None
    raise NotImplementedError(type(n).__name__)


def _fires(name: str, series: Series, at: float) -> bool:
    """Whether the alert (as helm renders it with values.yaml's defaults) is firing at `at`: its expr has a result at
    every 30 s evaluation of its `for`."""
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())["operator"]["metrics"]["prometheusRule"]
    text = (CHART / "templates" / "monitoring.yaml").read_text()
    text = re.sub(r"\{\{ \$m\.prometheusRule\.(\w+) \}\}", lambda m: str(defaults[m.group(1)]), text)
    found = re.search(rf"- alert: {name}\n\s+expr: .+\n\s+for: (\d+)m\n", text)
    assert found, name
    tree = promql_parser.parse(alert_exprs()[name])
    return all(_eval(tree, at - d, series) is not None for d in range(0, int(found.group(1)) * 60 + 1, 30))


def test_the_reconciliation_failing_alert_does_not_page_for_operands_merely_not_ready() -> None:
    """Every pass that leaves the ClusterPolicy notReady (a driver rollout: OnDelete driver pods at an old revision;
    a first install while drivers compile) counts in reconciliation_failed_total (upstream's semantics) with
    reconciliation_status 0 and no new last-success time. The critical GPUOperatorReconciliationFailing's
    `increase(gpu_operator_reconciliation_failed_total[15m]) > 0` was then true for the whole rollout, so it paged
    15 minutes into every ordinary rolling driver upgrade, beside the warning GPUOperatorOperandNotReady that exists
    for that case. Now it fires on failed passes (-2) with no success, passes failing on and off included."""
    from gpu_operator import metrics
    from gpu_operator.nodes import NodeFacts
    from gpu_operator.observe import Snapshot
    from gpu_operator.reconciler import Reconciler
    from support import EchoKube, node, policy_object

    # What a notReady pass leaves in the metrics (operands not ready yet: DaemonSets just created).
    snap = Snapshot(nodes={"n1": NodeFacts.from_node(node("n1"))}, policies={"cluster-policy": policy_object()},
                    owned={}, pods={}, revisions={})  # fmt: skip
    metrics.reconciliation_last_success_ts_seconds.set(1000.0)
    failed = metrics.reconciliation_failed_total._value.get()
    out = Reconciler(EchoKube(), NAMESPACE).reconcile(snap)  # type: ignore[arg-type]
    assert out.ready is False
    assert metrics.reconciliation_status._value.get() == 0
    assert metrics.reconciliation_failed_total._value.get() == failed + 1
    assert metrics.reconciliation_last_success_ts_seconds._value.get() == 1000.0

    start = 1_000_000.0  # the last ready pass; a pass every 10 s after it, each notReady or failed

    def cluster(status: Callable[[float], float]) -> Series:
        return {
            "gpu_operator_reconciliation_status": lambda t: status(t) if t > start else 1.0,
            "gpu_operator_reconciliation_failed_total": lambda t: max(0.0, (t - start) // 10),
            "gpu_operator_reconciliation_last_success_ts_seconds": lambda t: start,
            "gpu_operator_leader": lambda t: 1.0,
        }

    at = start + 1800
    # An operator whose passes fail (-2) for 30 minutes: critical, as meant; also when they fail two minutes in four.
    assert _fires("GPUOperatorReconciliationFailing", cluster(lambda t: -2.0), at)
    assert _fires("GPUOperatorReconciliationFailing", cluster(lambda t: -2.0 if (t - start) // 120 % 2 else 0.0), at)
    # The operands of a driver rollout not ready for 30 minutes: OperandNotReady (warning) says it...
    assert _fires("GPUOperatorOperandNotReady", cluster(lambda t: 0.0), at)
    # ...and no critical "reconciliation is failing" page, nor for one API error at the rollout's start.
    assert not _fires("GPUOperatorReconciliationFailing", cluster(lambda t: 0.0), at), (
        "GPUOperatorReconciliationFailing fires while reconciliation_status is 0 (operands not ready, no error)"
    )
    assert not _fires("GPUOperatorReconciliationFailing", cluster(lambda t: -2.0 if t < start + 60 else 0.0), at)


def test_the_reconciliation_failing_alert_pages_for_passes_whose_writes_the_api_server_refuses() -> None:
    """Once GPUOperatorReconciliationFailing read reconciliation_status -2 only, a pass whose writes the API server
    refuses (a webhook's 403 or a quota on our DaemonSet, a 422 on a node patch; an error pass the runtime backs off
    from and logs as "pass failed") still set 0, as a rollout does: such a refusal lasting hours (nothing of the
    state deployed) raised only the warning OperandNotReady, never the critical alert that says passes are failing
    "(API errors or exceptions)". Now such a pass sets -2, and a rollout's pass (no error) still 0."""
    from gpu_operator import metrics
    from gpu_operator.kube import ApiError
    from gpu_operator.observe import Snapshot
    from gpu_operator.reconciler import Reconciler
    from support import EchoKube, facts, policy_object

    class Refusing(EchoKube):
        def apply(self, obj: dict[str, Any], *_: Any, **__: Any) -> dict[str, Any]:
            if obj["kind"] == "DaemonSet":
                raise ApiError(403, '{"message": "admission webhook denied the request"}', "apply")
            return obj

    def status_after(kube: EchoKube) -> tuple[bool, float]:
        out = Reconciler(kube, NAMESPACE).reconcile(  # type: ignore[arg-type]
            Snapshot(nodes={"gpu-1": facts("gpu-1")}, policies={"cluster-policy": policy_object()}, owned={}, pods={},
                     revisions={}))  # fmt: skip
        assert out.ready is False
        return out.error, metrics.reconciliation_status._value.get()

    assert status_after(Refusing()) == (True, -2.0), "a pass with refused writes reads as a rollout"
    assert status_after(EchoKube()) == (False, 0.0), "a rollout's pass (no error) reads as failing"
    start = 1_000_000.0  # the last ready pass; refused every pass since

    def refused(t: float) -> float:
        return -2.0 if t > start else 1.0

    series: Series = {
        "gpu_operator_reconciliation_status": refused,
        "gpu_operator_reconciliation_last_success_ts_seconds": lambda t: start,
        "gpu_operator_leader": lambda t: 1.0,
    }
    assert _fires("GPUOperatorReconciliationFailing", series, start + 1800)



def test_the_node_stuck_in_upgrade_alert_leaves_a_failed_node_to_driver_upgrade_failed() -> None:
    """nodes_upgrades_in_progress counts upgrade-failed nodes (as upstream's GetUpgradesInProgress, k8s-operator-libs
    common_manager.go: total less unknown, done and upgrade-required). One node whose upgrade failed, the rest done,
    left in_progress 1 and done unchanged for good, so GPUOperatorNodeStuckInUpgrade ("Nodes have been mid-upgrade
    ... with no node finishing") fired an hour after every failed upgrade, beside the critical
    GPUOperatorDriverUpgradeFailed that names it: no node is mid-upgrade and none waits. Now it counts the nodes in
    progress that have not failed; a real stall still fires."""
    from gpu_operator.api import DriverUpgradePolicySpec
    from gpu_operator.upgrade import STATE_LABEL, UpgradeNode, plan

    failed = UpgradeNode("gpu-1", labels={STATE_LABEL: "upgrade-failed"}, annotations={}, unschedulable=True,
                         driver_pod={"metadata": {"name": "d", "labels": {"controller-revision-hash": "old"}},
                                     "status": {"phase": "Running"}}, driver_revision="new")  # fmt: skip
    c = plan([failed], [], DriverUpgradePolicySpec(auto_upgrade=True), 10_000.0).counters
    assert (c.in_progress, c.failed) == (1, 1), "premise: a failed node counts as in progress"
    start, at = 1_000_000.0, 1_000_000.0 + 3 * 3600

    def cluster(in_progress: float, failed: float, finishing: bool = False) -> Series:
        return {
            "gpu_operator_nodes_upgrades_in_progress": lambda t: in_progress,
            "gpu_operator_nodes_upgrades_failed": lambda t: failed,
            "gpu_operator_nodes_upgrades_done": lambda t: (t // 600 if finishing else 4.0) if t > start else None,
            "gpu_operator_leader": lambda t: 1.0,
        }

    # Two nodes mid-upgrade (none failed, or one failed beside them), nothing finishing for hours: stuck.
    assert _fires("GPUOperatorNodeStuckInUpgrade", cluster(2.0, 0.0), at)
    assert _fires("GPUOperatorNodeStuckInUpgrade", cluster(2.0, 1.0), at)
    assert not _fires("GPUOperatorNodeStuckInUpgrade", cluster(2.0, 0.0, finishing=True), at)
    # One failed node, the others done: DriverUpgradeFailed says so, and no "makes no progress" warning.
    assert _fires("GPUOperatorDriverUpgradeFailed", cluster(1.0, 1.0), at)
    assert not _fires("GPUOperatorNodeStuckInUpgrade", cluster(1.0, 1.0), at), (
        "GPUOperatorNodeStuckInUpgrade fires for an upgrade-failed node (in_progress counts it)"
    )

def test_the_operator_may_delete_pods_only_in_its_own_namespace() -> None:
    """GPU pods elsewhere are only ever evicted (pods/eviction, which honours PodDisruptionBudgets); the one pod the
    operator deletes is a driver pod, in the operand namespace. The ClusterRole granted `delete` on every pod of the
    cluster (kube-system's included), which nothing used; upstream grants it only in its Role, as now."""
    import ast

    deletes = []
    for path in (REPO / "operator" / "gpu_operator").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "delete"
                    and node.args and isinstance(node.args[0], ast.Constant) and node.args[0].value == "Pod"):
                deletes.append(ast.unparse(node))  # fmt: skip
    assert deletes == ["self.kube.delete('Pod', action.pod_name, self.namespace)"]
    docs = [d for d in yaml.safe_load_all((REPO / "manifests" / "gpu-operator.yaml").read_text()) if d]

    def atoms(kind: str) -> set[tuple[str, str, str]]:
        role = next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == "gpu-operator")
        return {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]
                for v in rule["verbs"]}  # fmt: skip

    assert ("", "pods/eviction", "create") in atoms("ClusterRole")
    assert ("", "pods", "delete") not in atoms("ClusterRole")
    assert ("", "pods", "delete") in atoms("Role")


@pytest.mark.parametrize("resource", ["namespaces", "clusterroles", "clusterrolebindings"])
def test_operator_clusterrole_may_change_only_its_own_namespace_and_operand_roles(resource: str) -> None:
    """The operator writes one Namespace, its own (lifecycle.py: the PSA labels), and only the operand ClusterRoles
    and ClusterRoleBindings its states render, all of fixed names (nvidia-driver, nvidia-device-plugin, ...). The
    ClusterRole granted `patch` on every Namespace and `patch`/`update`/`delete` on every ClusterRole and binding:
    the operator's token could label any namespace pod-security.kubernetes.io/enforce=privileged, and delete or
    rewrite cluster-admin, admin, edit or any other ClusterRole. A write naming its object (a PATCH, an apply that
    creates, an update, a delete) can be limited by resourceNames, as now: for namespaces the release namespace
    only. `create` (by POST, which names nothing), `get`, `list` and `watch` stay unnamed."""
    docs = [d for d in yaml.safe_load_all((REPO / "manifests" / "gpu-operator.yaml").read_text()) if d]
    rules = one(docs, "ClusterRole", "gpu-operator")["rules"]
    broad = [
        rule for rule in rules
        if resource in rule.get("resources", []) and {"patch", "update", "delete"} & set(rule["verbs"])
        and not rule.get("resourceNames")
    ]  # fmt: skip
    assert broad == [], f"{resource}: writable cluster-wide with no resourceNames: {broad}"
    named = [r for r in rules if resource in r["resources"] and r.get("resourceNames")]
    assert named and all(set(r["verbs"]) <= {"patch", "update", "delete"} for r in named), named
    if resource == "namespaces":
        assert [r["resourceNames"] for r in named] == [[NAMESPACE]], named
    unnamed = {v for r in rules if resource in r["resources"] and not r.get("resourceNames") for v in r["verbs"]}
    assert {"get", "list", "watch", "create"} <= unnamed, unnamed


def test_the_operator_may_watch_nodefeatures_in_every_namespace() -> None:
    """The operator watches NFD's NodeFeatures across namespaces (runtime.Operator.feature_watch) so that a node
    joining is identified when first seen; the ClusterRole granted only `list`, and the watch would be refused (the
    operator then lists them again while a GPU node is unidentified, the slower way)."""
    from gpu_operator.kinds import NODE_FEATURE
    from gpu_operator.kube import path_for

    assert path_for(NODE_FEATURE.kind) == "/apis/nfd.k8s-sigs.io/v1alpha1/nodefeatures"  # no namespace: all of them
    docs = [d for d in yaml.safe_load_all((REPO / "manifests" / "gpu-operator.yaml").read_text()) if d]
    role = next(d for d in docs if d["kind"] == "ClusterRole" and d["metadata"]["name"] == "gpu-operator")
    verbs = {v for rule in role["rules"] if "nfd.k8s-sigs.io" in rule["apiGroups"] and "nodefeatures" in
             rule["resources"] for v in rule["verbs"]}  # fmt: skip
    assert verbs == {"list", "watch"}


def test_the_operators_role_holds_no_nodefeatures_watch_the_clusterrole_grants() -> None:
    """The operator's Role holds nodefeatures rights only to grant them to GPU feature discovery's Role, and the
    escalation check for that grant is met by the ClusterRole's cluster-wide `list` and `watch`. The Role still
    granted `watch` in the namespace too after the ClusterRole gained it: a right nobody needed there."""
    docs = [d for d in yaml.safe_load_all((REPO / "manifests" / "gpu-operator.yaml").read_text()) if d]

    def verbs(kind: str) -> set[str]:
        role = one(docs, kind, "gpu-operator")
        return {v for rule in role["rules"] if "nodefeatures" in rule["resources"] for v in rule["verbs"]}

    assert verbs("ClusterRole") == {"list", "watch"}
    assert verbs("Role") == {"get", "create", "update"}


def test_the_cleanup_timeout_names_the_uninstall_timeout_it_must_fit_in() -> None:
    """Helm waits for a pre-delete hook at most `helm uninstall --timeout` (default 5m), and the cleanup hook may run
    clusterPolicy.cleanupTimeoutSeconds and its pod's start (its Job's deadline: that plus 120 s). A value above
    180 s failed `helm uninstall` where the operator did not remove its finalizer (and a retry deleted the running
    hook, before-hook-creation, and started it over), and neither values.yaml nor the README said so."""
    hook = (CHART / "templates" / "cleanup-hook.yaml").read_text()
    found = re.search(r"activeDeadlineSeconds: \{\{ add \(int \.Values\.clusterPolicy\.cleanupTimeoutSeconds\) (\d+)",
                      hook)  # fmt: skip
    assert found, "the cleanup Job's deadline is cleanupTimeoutSeconds plus a margin"
    fits = 300 - int(found.group(1))  # what Helm's default 5m leaves
    values = (CHART / "values.yaml").read_text()
    comment = values[: values.index("  cleanupTimeoutSeconds:")].rsplit("\n\n", 1)[-1]
    readme = " ".join((CHART / "README.md").read_text().split())
    row = next(line for line in readme.split(" | ") if "how long that hook waits" in line)
    for where, text in (("values.yaml", comment), ("README.md", row)):
        assert "--timeout" in text and f"{fits}" in text and f"+ {found.group(1)}" in text, where


def test_the_cleanup_hook_is_there_also_for_a_clusterpolicy_the_chart_did_not_create() -> None:
    """The operator puts its finalizer on every ClusterPolicy it acts on (upstream puts none), and once it is gone
    only the chart's pre-delete hook takes it off. The hook was rendered only when the chart created the
    ClusterPolicy (clusterPolicy.enabled and deployCR) or with cleanupCRD: with `clusterPolicy.enabled=false`, as
    values.yaml and NOTES.txt suggest for a ClusterPolicy managed elsewhere (kubectl, GitOps), `helm uninstall` left
    it with our finalizer and no operator, so a later `kubectl delete clusterpolicy` (or of its CRD) hung in
    Terminating for good. Now cleanupOnUninstall alone renders it (the guard does not read deployCR)."""
    text = (CHART / "templates" / "cleanup-hook.yaml").read_text()
    variables = dict(re.findall(r"\{\{-? \$(\w+) := (.+?) -?\}\}", text))
    guard = re.search(r"\{\{-? if (.+?) -?\}\}", text)
    assert guard, "the hook has a guard"
    expression = re.sub(r"\$(\w+)", lambda m: f"({variables.get(m.group(1), m.group(0))})", guard.group(1))
    assert "deployCR" not in expression and ".Values.clusterPolicy.cleanupOnUninstall" in expression, expression


class HookKube:
    """The API server as the cleanup hook sees it, with an operator that runs until its Deployment is scaled to 0:
    on each change to a ClusterPolicy its pass lets a deleted one go and puts our finalizer back on the others."""

    def __init__(self, policies: dict[str, list[str]], nodes: list[dict[str, Any]] | None = None) -> None:
        self.policies = {name: {"metadata": {"name": name, "finalizers": list(f)}} for name, f in policies.items()}
        self.nodes = {n["metadata"]["name"]: n for n in nodes or []}
        self.replicas = 1
        self.calls: list[tuple[str, str, str]] = []

    def _operator_pass(self) -> None:
        from gpu_operator.lifecycle import CLEANUP_FINALIZER

        if not self.replicas:
            return
        for name, policy in list(self.policies.items()):
            meta = policy["metadata"]
            if meta.get("deletionTimestamp"):
                meta["finalizers"] = [f for f in meta["finalizers"] if f != CLEANUP_FINALIZER]
            elif CLEANUP_FINALIZER not in meta["finalizers"]:
                meta["finalizers"].append(CLEANUP_FINALIZER)
            if meta.get("deletionTimestamp") and not meta["finalizers"]:
                del self.policies[name]

    def list(self, kind: str, namespace: str | None = None, label_selector: str | None = None) -> list[Any]:
        if kind == "Pod":
            assert (namespace, label_selector) == (NAMESPACE, "app=gpu-operator")
            return [{"metadata": {"name": "gpu-operator-1"}}] * self.replicas
        if kind == "Node":
            return [json.loads(json.dumps(n)) for n in self.nodes.values()]
        return [json.loads(json.dumps(p)) for p in self.policies.values()]

    def delete(self, kind: str, name: str) -> bool:
        self.calls.append(("delete", kind, name))
        self.policies[name]["metadata"]["deletionTimestamp"] = "2026-02-01T00:00:00Z"
        self._operator_pass()
        return True

    def merge_patch(self, kind: str, name: str, patch: dict[str, Any], namespace: str | None = None,
                    sub: str | None = None) -> dict[str, Any]:  # fmt: skip
        self.calls.append(("merge_patch", kind, name))
        if kind == "Deployment":
            assert (namespace, name, sub, patch) == (NAMESPACE, "gpu-operator", "scale", {"spec": {"replicas": 0}})
            self.replicas = 0
            return {"status": {"replicas": 1, "selector": "app=gpu-operator"}}
        if kind == "Node":
            from support import merge

            self.nodes[name] = merge(self.nodes[name], patch)
            return self.nodes[name]
        meta = self.policies[name]["metadata"]
        meta["finalizers"] = patch["metadata"]["finalizers"] or []
        if meta.get("deletionTimestamp") and not meta["finalizers"]:
            del self.policies[name]
        self._operator_pass()
        return {}


def run_cleanup_hook(monkeypatch: pytest.MonkeyPatch, kube: HookKube, **env: str) -> str:
    import importlib.util

    from gpu_operator.kube import Kube

    spec = importlib.util.spec_from_file_location("cleanup_hook", CHART / "files" / "cleanup.py")
    assert spec and spec.loader
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    monkeypatch.setattr(Kube, "connect", classmethod(lambda cls, kubeconfig: kube))
    monkeypatch.setattr(hook.time, "sleep", lambda s: None)
    for key, value in {"TIMEOUT_SECONDS": "1", **env}.items():
        monkeypatch.setenv(key, value)
    out = io.StringIO()
    with redirect_stdout(out):
        assert hook.main() == 0
    return out.getvalue()


def test_the_cleanup_hook_takes_our_finalizer_off_a_clusterpolicy_it_leaves_after_stopping_the_operator(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A ClusterPolicy the hook does not delete (the chart did not create it, or it took over from the chart's) is
    left, with what it deployed, but without our finalizer, which no operator would remove once the chart is gone.
    A running operator puts it back on its next pass, so the operator is scaled to 0 (and its pods waited for)
    first; another controller's finalizer stays."""
    from gpu_operator.lifecycle import CLEANUP_FINALIZER

    operator = f"{NAMESPACE}/gpu-operator"
    # The chart did not create it: nothing is deleted.
    kube = HookKube({"mine": [CLEANUP_FINALIZER, "backup.example.com/protect"]})
    run_cleanup_hook(monkeypatch, kube, CLUSTERPOLICIES="", OPERATOR=operator)
    assert kube.policies["mine"]["metadata"] == {"name": "mine", "finalizers": ["backup.example.com/protect"]}
    assert kube.replicas == 0 and not [c for c in kube.calls if c[0] == "delete"]

    # The chart's is deleted while the operator runs (it lets it go), then the one that took over is released.
    kube = HookKube({"cluster-policy": [CLEANUP_FINALIZER], "second": [CLEANUP_FINALIZER]})
    run_cleanup_hook(monkeypatch, kube, CLUSTERPOLICIES="cluster-policy", OPERATOR=operator)
    assert list(kube.policies) == ["second"] and kube.policies["second"]["metadata"]["finalizers"] == []
    assert kube.calls[0] == ("delete", "ClusterPolicy", "cluster-policy")

    # No ClusterPolicy left: the operator is left to Helm.
    kube = HookKube({"cluster-policy": [CLEANUP_FINALIZER]})
    run_cleanup_hook(monkeypatch, kube, CLUSTERPOLICIES="cluster-policy", OPERATOR=operator)
    assert kube.policies == {} and kube.replicas == 1


def test_the_cleanup_hook_uncordons_the_nodes_the_mig_gate_left_cordoned(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the operator lifts the MIG gate's cordon (mig.decide, or Lifecycle.cleanup_deleted for a deleted last
    ClusterPolicy). For a ClusterPolicy the hook leaves, the hook stopped the operator and took our finalizer off,
    but left a node the gate had cordoned (a layout change waiting for its GPU pods) unschedulable for good, and said
    nothing: its RBAC had no nodes. Now it uncordons it, unless the driver upgrade holds the node."""
    from gpu_operator.lifecycle import CLEANUP_FINALIZER
    from gpu_operator.nodes import MIG_CORDONED

    def node(name: str, **labels: str) -> dict[str, Any]:
        return {"metadata": {"name": name, "annotations": {MIG_CORDONED: "true"}, "labels": labels},
                "spec": {"unschedulable": True}}  # fmt: skip

    upgrading = node("gpu-2", **{"nvidia.com/gpu-driver-upgrade-state": "drain-required"})
    kube = HookKube({"mine": [CLEANUP_FINALIZER]}, [node("gpu-1"), upgrading, {"metadata": {"name": "cpu-1"}}])
    out = run_cleanup_hook(monkeypatch, kube, CLUSTERPOLICIES="", OPERATOR=f"{NAMESPACE}/gpu-operator")
    assert kube.replicas == 0 and kube.policies["mine"]["metadata"]["finalizers"] == []
    assert kube.nodes["gpu-1"]["metadata"]["annotations"] == {} and kube.nodes["gpu-1"]["spec"] == {}
    assert "node gpu-1: uncordoned" in out
    assert kube.nodes["gpu-2"]["spec"] == {"unschedulable": True}, "the driver upgrade uncordons it"
    assert MIG_CORDONED in kube.nodes["gpu-2"]["metadata"]["annotations"]
    assert "node gpu-2: left cordoned for its driver upgrade, which an operator installed again goes on with" in out


def test_the_cleanup_hook_lets_go_of_a_driver_upgrade_when_no_clusterpolicy_is_left(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the operator not running (or out of time), the hook took the last ClusterPolicy's finalizer off, and a
    node the driver upgrade had cordoned stayed cordoned, its upgrade state label kept, for good; a MIG gate cordon
    on it too, the hook saying "left cordoned, its driver upgrade holds it" while nothing was left to. It now lets
    the upgrade go as the operator does (planner.switched_off): its own cordon lifted, a failed one's and one there
    before it kept, then the gate's cordons lifted."""
    from gpu_operator.lifecycle import CLEANUP_FINALIZER
    from gpu_operator.nodes import MIG_CORDONED
    from gpu_operator.upgrade.model import (
        DRAIN_START_ANNOTATION,
        FAILURE_REASON_ANNOTATION,
        INITIAL_UNSCHEDULABLE_ANNOTATION,
        STATE_LABEL,
    )

    def node(name: str, state: str, **annotations: str) -> dict[str, Any]:
        return {"metadata": {"name": name, "labels": {STATE_LABEL: state}, "annotations": annotations},
                "spec": {"unschedulable": True}}  # fmt: skip

    nodes = [
        node("ours", "drain-required", **{DRAIN_START_ANNOTATION: "1767225600"}),
        node("gated", "wait-for-jobs-required", **{INITIAL_UNSCHEDULABLE_ANNOTATION: "true", MIG_CORDONED: "true"}),
        node("failed", "upgrade-failed", **{FAILURE_REASON_ANNOTATION: "boom"}),
    ]
    kube = HookKube({"cluster-policy": [CLEANUP_FINALIZER]}, nodes)
    kube.replicas = 0  # no operator runs: the finalizer is removed here
    out = run_cleanup_hook(monkeypatch, kube)
    assert kube.policies == {}
    assert kube.nodes["ours"]["metadata"]["labels"] == {} and kube.nodes["ours"]["metadata"]["annotations"] == {}
    assert kube.nodes["ours"]["spec"] == {}
    assert "node ours: the last ClusterPolicy deleted in drain-required: node uncordoned" in out
    assert kube.nodes["gated"]["metadata"] == {"name": "gated", "labels": {}, "annotations": {}}
    assert kube.nodes["gated"]["spec"] == {}, "the MIG gate's cordon, lifted once the upgrade is let go"
    assert kube.nodes["failed"]["metadata"]["annotations"] == {FAILURE_REASON_ANNOTATION: "boom"}
    assert kube.nodes["failed"]["spec"] == {"unschedulable": True}
    assert "node failed: the last ClusterPolicy deleted in upgrade-failed (boom): node left cordoned" in out


def test_the_cleanup_hook_removes_the_upgrade_enabled_annotation_when_no_clusterpolicy_is_left(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`nvidia.com/gpu-driver-upgrade-enabled=true` tells k8s-driver-manager to leave eviction and drain to the
    operator's upgrade. With the operator not running (or out of time), the hook let the upgrade go but left the
    annotation on every GPU node, so a driver-manager started there later skipped its eviction. With no ClusterPolicy
    left it now goes, as the operator removes it; a value the operator never writes stays, and with a ClusterPolicy
    left (an operator installed again goes on with it) it stays."""
    from gpu_operator.lifecycle import CLEANUP_FINALIZER
    from gpu_operator.nodes import UPGRADE_ENABLED_ANNOTATION as ENABLED

    def nodes() -> list[dict[str, Any]]:
        return [{"metadata": {"name": name, "labels": {}, "annotations": {ENABLED: value}}}
                for name, value in (("gpu-1", "true"), ("gpu-2", "false"))]  # fmt: skip

    kube = HookKube({"cluster-policy": [CLEANUP_FINALIZER]}, nodes())
    kube.replicas = 0  # no operator runs: the finalizer is removed here
    run_cleanup_hook(monkeypatch, kube)
    assert kube.policies == {}
    assert kube.nodes["gpu-1"]["metadata"]["annotations"] == {}
    assert kube.nodes["gpu-2"]["metadata"]["annotations"] == {ENABLED: "false"}

    kube = HookKube({"mine": [CLEANUP_FINALIZER]}, nodes())
    run_cleanup_hook(monkeypatch, kube, CLUSTERPOLICIES="", OPERATOR=f"{NAMESPACE}/gpu-operator")
    assert list(kube.policies) == ["mine"]
    assert kube.nodes["gpu-1"]["metadata"]["annotations"] == {ENABLED: "true"}


def test_the_cleanup_hook_takes_a_mid_upgrade_node_deleted_since_it_listed_it_as_let_go(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The hook's let-go took a node deleted after it listed the nodes (its patch answered 404) for a failed let-go:
    for one the MIG gate had cordoned too it printed "left cordoned, its driver upgrade could not be let go; uncordon
    it with kubectl", about a node that no longer exists. A node that is gone holds no upgrade to let go."""
    from gpu_operator.kube import ApiError
    from gpu_operator.lifecycle import CLEANUP_FINALIZER
    from gpu_operator.nodes import MIG_CORDONED
    from gpu_operator.upgrade.model import STATE_LABEL

    class GoneKube(HookKube):
        def merge_patch(self, kind: str, name: str, patch: dict[str, Any], namespace: str | None = None,
                        sub: str | None = None) -> dict[str, Any]:  # fmt: skip
            if (kind, name) == ("Node", "gone"):
                raise ApiError(404, '{"message": "nodes \\"gone\\" not found"}', "PATCH Node gone", "NotFound")
            return super().merge_patch(kind, name, patch, namespace, sub)

    gone = {"metadata": {"name": "gone", "labels": {STATE_LABEL: "drain-required"},
                         "annotations": {MIG_CORDONED: "true"}}, "spec": {"unschedulable": True}}  # fmt: skip
    kube = GoneKube({"cluster-policy": [CLEANUP_FINALIZER]}, [gone])
    kube.replicas = 0  # no operator runs: the hook lets the upgrade go
    out = run_cleanup_hook(monkeypatch, kube)
    assert kube.policies == {}
    assert "node gone:" not in out, out


def test_the_chart_says_a_clusterpolicy_the_tightened_crd_refuses_is_fixed_before_upgrading_on_1_29() -> None:
    """The pre-upgrade hook applies the CRDs, which may refuse a value an older one took (`memory: 512MB`,
    `config.default: team/layout`, a probe above int32). Only from 1.30 does the API server ratchet CRD validation;
    the chart admits 1.29, where every update of such a stored ClusterPolicy is refused (422: no status, no finalizer
    removed), and neither README said so."""
    template = (CHART / "templates" / "kube-version-check.yaml").read_text()
    minimum = re.search(r'\$minimum := "(\d+)\.(\d+)', template)
    assert minimum and (int(minimum.group(1)), int(minimum.group(2))) == (1, 29), template
    for readme in (CHART / "README.md", REPO / "README.md"):
        text = " ".join(readme.read_text().split())
        assert "1.29" in text and "ratchet" in text and "before `helm upgrade`" in text, readme


def test_the_cleanup_hook_says_in_one_line_that_an_invalid_clusterpolicy_keeps_our_finalizer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On Kubernetes 1.29 (no CRD validation ratcheting) a ClusterPolicy stored before the CRD was tightened refuses
    every update, our finalizer's removal included (422). The hook failed with an ApiError traceback, and
    `helm uninstall` with it; now it names the ClusterPolicy and what to do, and the uninstall goes on."""
    from gpu_operator.kube import ApiError
    from gpu_operator.lifecycle import CLEANUP_FINALIZER

    class Refusing(HookKube):
        def merge_patch(self, kind: str, name: str, patch: dict[str, Any], namespace: str | None = None,
                        sub: str | None = None) -> dict[str, Any]:  # fmt: skip
            if kind == "ClusterPolicy":
                body = json.dumps({"message": 'ClusterPolicy.nvidia.com "mine" is invalid: spec.driver.resources'})
                raise ApiError(422, body, f"PATCH clusterpolicies/{name}")
            return super().merge_patch(kind, name, patch, namespace, sub)

    kube = Refusing({"mine": [CLEANUP_FINALIZER]})
    out = run_cleanup_hook(monkeypatch, kube, CLUSTERPOLICIES="", OPERATOR=f"{NAMESPACE}/gpu-operator")
    assert kube.policies["mine"]["metadata"]["finalizers"] == [CLEANUP_FINALIZER]
    lines = [line for line in out.splitlines() if "mine" in line]
    assert len(lines) == 1 and "could not be removed" in lines[0] and "spec.driver.resources" in lines[0], out


def test_the_prunes_typed_keys_are_the_crds_boolean_and_integer_fields() -> None:
    """gpu-operator.prune turns a quoted "true"/"false" or whole number into a boolean or integer under these keys
    (as upstream's templates print them bare); a key the CRDs type so but missing here would reach the API server
    as a string and be refused. `default` is a string in most sections (a boolean only in one), so it stays out."""
    helpers = (CHART / "templates" / "_helpers.tpl").read_text()

    def listed(name: str) -> set[str]:
        found = re.search(rf'\${name} := list ((?:"[^"]+" ?)+)', helpers)
        assert found, f"no ${name} list in gpu-operator.prune"
        return set(re.findall(r'"([^"]+)"', found.group(1)))

    typed: dict[str, set[str]] = {"boolean": set(), "integer": set()}

    def walk(node: dict[str, Any], name: str = "") -> None:
        if node.get("type") in typed and not node.get("x-kubernetes-int-or-string") and name:
            typed[node["type"]].add(name)
        for key, child in (node.get("properties") or {}).items():
            walk(child, key)
        if isinstance(node.get("additionalProperties"), dict):
            walk(node["additionalProperties"])
        if isinstance(node.get("items"), dict):
            walk(node["items"])

    for path in (CHART / "crds").glob("*.yaml"):
        walk(yaml.safe_load(path.read_text())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"])
    assert listed("booleans") == typed["boolean"] - {"default"}
    assert listed("integers") == typed["integer"]
