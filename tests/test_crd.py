"""The CRDs: generated from the model, committed in sync, valid structural schemas, every field described."""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from gpu_operator import api, coverage, nvidiadriver_api
from gpu_operator.cli import main
from gpu_operator.crd import (
    Descriptions,
    all_crds,
    clusterpolicy_crd,
    crd_files,
    crds_yaml,
    description_table,
    field_paths,
    nvidiadriver_crd,
)
from support import REPO

COMMITTED = REPO / "crds"


def test_committed_crd_is_up_to_date() -> None:
    committed = "".join(f.read_text() for f in sorted(COMMITTED.glob("*.yaml")))
    assert sorted(f.name for f in COMMITTED.glob("*.yaml")) == list(crd_files())
    generated = crds_yaml()
    if committed != generated:
        diff = "".join(
            list(
                difflib.unified_diff(committed.splitlines(True), generated.splitlines(True), "committed", "generated")
            )[:60]
        )
        pytest.fail(f"{COMMITTED.relative_to(REPO)}/ is stale: run `make crds` and commit the result.\n{diff}")


def test_cli_prints_the_same_crds(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["crds"]) == 0
    assert capsys.readouterr().out == crds_yaml()


@pytest.fixture(scope="module")
def crd() -> dict[str, Any]:
    return clusterpolicy_crd()


@pytest.fixture(scope="module")
def version(crd: dict[str, Any]) -> dict[str, Any]:
    assert len(crd["spec"]["versions"]) == 1
    return dict(crd["spec"]["versions"][0])


@pytest.fixture(scope="module")
def spec_schema(version: dict[str, Any]) -> dict[str, Any]:
    return dict(version["schema"]["openAPIV3Schema"]["properties"]["spec"])


def walk(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every schema node with its path (properties by name, additionalProperties as *, items as [])."""
    yield path, node
    for name, child in (node.get("properties") or {}).items():
        yield from walk(child, f"{path}.{name}")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}.*")
    if isinstance(node.get("items"), dict):
        yield from walk(node["items"], f"{path}[]")


def at(schema: dict[str, Any], path: str) -> dict[str, Any]:
    node = schema
    for part in path.split("."):
        assert part in node.get("properties", {}), f"no field {part} in {path}"
        node = node["properties"][part]
    return node


def test_identity(crd: dict[str, Any], version: dict[str, Any]) -> None:
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["kind"] == "CustomResourceDefinition"
    assert crd["metadata"]["name"] == "clusterpolicies.nvidia.com"
    assert crd["spec"]["group"] == "nvidia.com"
    names = crd["spec"]["names"]
    assert (names["kind"], names["plural"], names["singular"], names["listKind"]) == (
        "ClusterPolicy",
        "clusterpolicies",
        "clusterpolicy",
        "ClusterPolicyList",
    )
    assert (version["name"], version["served"], version["storage"]) == ("v1", True, True)


def test_cluster_scoped_with_status_subresource(crd: dict[str, Any], version: dict[str, Any]) -> None:
    assert crd["spec"]["scope"] == "Cluster"
    assert version["subresources"] == {"status": {}}


def test_printer_columns(version: dict[str, Any]) -> None:
    columns = {c["name"]: c for c in version["additionalPrinterColumns"]}
    assert columns["Status"]["jsonPath"] == ".status.state"
    assert columns["Status"]["type"] == "string"
    assert columns["Age"]["jsonPath"] == ".metadata.creationTimestamp"
    assert columns["Age"]["type"] == "date"


def test_schema_is_structural(version: dict[str, Any]) -> None:
    root = version["schema"]["openAPIV3Schema"]
    text = yaml.safe_dump(root)
    assert "$ref" not in text and "$defs" not in text
    problems = []
    for path, node in walk(root):
        where = path or "<root>"
        int_or_string = node.get("x-kubernetes-int-or-string") is True
        preserve = node.get("x-kubernetes-preserve-unknown-fields") is True
        if not node.get("type") and not (int_or_string or preserve):
            problems.append(f"{where}: no type")
        if int_or_string and "type" in node:
            problems.append(f"{where}: int-or-string with a type")
        if "properties" in node and "additionalProperties" in node:
            problems.append(f"{where}: both properties and additionalProperties")
        if node.get("type") == "array" and not isinstance(node.get("items"), dict):
            problems.append(f"{where}: array without items")
        for key in ("allOf", "anyOf", "oneOf", "not"):
            if key == "anyOf" and int_or_string and node.get(key) == [{"type": "integer"}, {"type": "string"}]:
                continue  # the one form with types that the API server allows (upstream's quantities)
            for branch in node.get(key, []) if key != "not" else [node.get("not") or {}]:
                for forbidden in ("type", "description", "default", "additionalProperties", "nullable"):
                    if forbidden in branch:
                        problems.append(f"{where}: {forbidden} inside {key}")
        for forbidden in ("title", "$defs", "discriminator", "const"):
            if forbidden in node:
                problems.append(f"{where}: {forbidden}")
    assert problems == []


def test_metadata_is_not_constrained(version: dict[str, Any]) -> None:
    assert version["schema"]["openAPIV3Schema"]["properties"]["metadata"] == {"type": "object"}


@pytest.mark.parametrize(
    ("path", "values"),
    [
        ("mig.strategy", ["none", "single", "mixed"]),
        ("driver.kernelModuleType", ["auto", "open", "proprietary"]),
        ("daemonsets.updateStrategy", ["RollingUpdate", "OnDelete"]),
        ("sandboxWorkloads.defaultWorkload", ["container", "vm-passthrough", "vm-vgpu"]),
        ("operator.defaultRuntime", ["containerd", "crio", "docker"]),
    ],
)
def test_enums(spec_schema: dict[str, Any], path: str, values: list[str]) -> None:
    node = at(spec_schema, path)
    assert node["type"] == "string"
    assert node["enum"] == values


@pytest.mark.parametrize(("path", "empty"), [("driver.upgradePolicy.maxUnavailable", False),
                                             ("daemonsets.rollingUpdate.maxUnavailable", True)])  # fmt: skip
def test_max_unavailable_is_int_or_string_with_cel_rule(spec_schema: dict[str, Any], path: str, empty: bool) -> None:
    node = at(spec_schema, path)
    assert node["x-kubernetes-int-or-string"] is True
    assert "type" not in node
    rules = node["x-kubernetes-validations"]
    assert len(rules) == 1
    rule = rules[0]
    assert "type(self) == int" in rule["rule"] and "self >= 0" in rule["rule"]
    # The CEL regex is the model's regex, so the API server and the operator accept the same strings.
    # The DaemonSets' one also admits "" (a plain string upstream, "" being its default).
    pattern = api._PERCENT_OR_INT.pattern
    pattern = f"^({pattern[1:-1]})?$" if empty else pattern
    assert f"self.matches('{pattern}')" in rule["rule"]
    assert rule["message"].startswith('must be a non-negative integer or a percentage like "25%"')


def test_rolling_max_unavailable_zero_is_refused_at_admission(spec_schema: dict[str, Any]) -> None:
    """The API server refuses a DaemonSet whose maxUnavailable and maxSurge (not rendered: 0) are both 0, so a
    ClusterPolicy asking for it is refused at admission, with the model's message and its zero pattern."""
    rule, _ = at(spec_schema, "daemonsets")["x-kubernetes-validations"]
    assert rule["message"] == api._ZERO_MESSAGE and "maxUnavailable" in rule["message"]
    assert "self.updateStrategy == 'OnDelete'" in rule["rule"]
    assert "self.rollingUpdate.maxUnavailable != 0" in rule["rule"]
    assert f"!self.rollingUpdate.maxUnavailable.matches('{api._ZERO.pattern}')" in rule["rule"]
    assert all(api._ZERO.match(z) for z in ("0", "0%", "00")) and not any(api._ZERO.match(v) for v in ("10", "", "1%"))


def test_rolling_max_unavailable_above_100_percent_is_refused_at_admission(spec_schema: dict[str, Any]) -> None:
    """The API server refuses a DaemonSet whose maxUnavailable is a percentage above 100 (an integer has no bound),
    so a ClusterPolicy asking for it with RollingUpdate is refused at admission, with the model's message and
    pattern; the pattern says "above 100" for every percentage, leading zeros included."""
    _, rule = at(spec_schema, "daemonsets")["x-kubernetes-validations"]
    assert rule["message"] == api._OVER_100_MESSAGE and rule["fieldPath"] == ".rollingUpdate.maxUnavailable"
    assert "self.updateStrategy == 'OnDelete'" in rule["rule"]
    assert "type(self.rollingUpdate.maxUnavailable) == int" in rule["rule"]
    assert f"!self.rollingUpdate.maxUnavailable.matches('{api._OVER_100.pattern}')" in rule["rule"]
    for n in range(2000):
        for text in (f"{n}%", f"00{n}%"):
            assert bool(api._OVER_100.match(text)) is (n > 100), text
    assert not any(api._OVER_100.match(v) for v in ("101", "1000", ""))


@pytest.mark.parametrize(
    "path",
    [
        "driver.upgradePolicy.maxParallelUpgrades",
        "driver.upgradePolicy.podDeletion.timeoutSeconds",
        "driver.upgradePolicy.drain.timeoutSeconds",
        "driver.upgradePolicy.waitForCompletion.timeoutSeconds",
    ],
)
def test_non_negative_integers(spec_schema: dict[str, Any], path: str) -> None:
    node = at(spec_schema, path)
    assert node["type"] == "integer"
    assert node["minimum"] == 0


@pytest.mark.parametrize(
    "path",
    [
        "operator.runtimeClass",
        "daemonsets.priorityClassName",
        "driver.useNvidiaDriverCRD",
        "driver.usePrecompiled",
        "driver.rdma.useHostMofed",
        "driver.repoConfig.configMapName",
        "driver.licensingConfig.nlsEnabled",
        "driver.upgradePolicy.autoUpgrade",
        "driver.upgradePolicy.podDeletion.deleteEmptyDir",
        "driver.manager.repository",
        "toolkit.installDir",
        "devicePlugin.config.name",
        "devicePlugin.mps.root",
        "dcgm.hostPort",
        "dcgmExporter.serviceMonitor.additionalLabels",
        "dcgmExporter.service.internalTrafficPolicy",
        "migManager.gpuClientsConfig.name",
        "validator.plugin.env",
        "validator.vfioPCI.env",
        "hostPaths.rootFS",
        "hostPaths.driverInstallDir",
        "sandboxWorkloads.enabled",
    ],
)
def test_upstream_field_names(spec_schema: dict[str, Any], path: str) -> None:
    at(spec_schema, path)


# Upstream's config/crd/bases/nvidia.com_clusterpolicies.yaml for a promv1.Duration, verbatim.
PROM_DURATION = r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"


# ... and for a resource.Quantity (every resources.limits/requests value, in nvidia.com_nvidiadrivers.yaml too).
QUANTITY = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
QUANTITY_SCHEMA = {"anyOf": [{"type": "integer"}, {"type": "string"}], "pattern": QUANTITY,
                   "x-kubernetes-int-or-string": True}  # fmt: skip


@pytest.mark.parametrize("monitor", ["dcgmExporter.serviceMonitor", "operator.metrics.serviceMonitor"])
@pytest.mark.parametrize("field", ["interval", "scrapeTimeout"])
def test_service_monitor_durations_have_upstreams_pattern(
    spec_schema: dict[str, Any], monitor: str, field: str
) -> None:
    """Ours had no pattern, so the API server took `1.5m` that the rendered ServiceMonitor was then refused for."""
    node = at(spec_schema, f"{monitor}.{field}")
    assert node["type"] == "string" and node["pattern"] == PROM_DURATION


# A label value, as Kubernetes checks one (with at most 63 characters).
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"


def test_mig_config_default_is_a_label_value(spec_schema: dict[str, Any]) -> None:
    """It is seeded as nodes' nvidia.com/mig.config label. Ours was any string, so the API server took a policy
    whose default no node label patch could carry (upstream's CRD takes only all-disabled or "")."""
    node = at(spec_schema, "migManager.config.default")
    assert (node["type"], node["maxLength"], node["pattern"]) == ("string", 63, LABEL_VALUE)


def test_label_values_are_label_values() -> None:
    """daemonsets.labels (and an NVIDIADriver's) go on DaemonSets, which the API server refuses with a value that is
    no label value; their keys' rule is the model's (a structural schema cannot constrain map keys)."""
    cp = clusterpolicy_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    nvd = nvidiadriver_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    for node in (at(cp, "daemonsets.labels"), nvd["properties"]["labels"]):
        value = node["additionalProperties"]
        assert (value["type"], value["maxLength"], value["pattern"]) == ("string", 63, LABEL_VALUE)


def test_no_unknown_fields_are_preserved(version: dict[str, Any]) -> None:
    """As in upstream's schema: the API server rejects (strict validation) or prunes every unknown field."""
    preserved = [path for path, node in walk(version["schema"]["openAPIV3Schema"])
                 if "x-kubernetes-preserve-unknown-fields" in node]  # fmt: skip
    assert preserved == []


def test_kubernetes_objects_in_the_spec_are_typed(spec_schema: dict[str, Any]) -> None:
    toleration = at(spec_schema, "daemonsets.tolerations")["items"]
    assert set(toleration["properties"]) == {"key", "operator", "value", "effect", "tolerationSeconds"}
    # Kubernetes refuses a DaemonSet with any other (Lt and Gt: with the TaintTolerationComparisonOperators gate).
    assert toleration["properties"]["operator"]["enum"] == ["", "Equal", "Exists", "Lt", "Gt"]
    assert toleration["properties"]["effect"]["enum"] == ["", "NoSchedule", "PreferNoSchedule", "NoExecute"]
    security = at(spec_schema, "daemonsets.podSecurityContext")
    assert security["properties"]["seccompProfile"]["required"] == ["type"]
    assert at(security, "seLinuxOptions")["properties"]["type"]["type"] == "string"  # a field named type
    relabel = at(spec_schema, "dcgmExporter.serviceMonitor.relabelings")["items"]
    assert "keepequal" in relabel["properties"]["action"]["enum"]
    assert relabel["properties"]["sourceLabels"]["items"] == {"type": "string"}


@pytest.mark.parametrize("probe", ["startupProbe", "livenessProbe", "readinessProbe"])
@pytest.mark.parametrize("field", ["timeoutSeconds", "periodSeconds", "successThreshold", "failureThreshold"])
def test_probe_timings_have_upstreams_minimum_of_one(probe: str, field: str) -> None:
    """Upstream's ContainerProbeSpec (ClusterPolicy and NVIDIADriver) has `Minimum=1` on these four; ours had 0, so
    a probe upstream refuses at admission was taken (and its 0 read as unset). initialDelaySeconds may be 0."""
    for crd, driver in ((clusterpolicy_crd(), ("driver",)), (nvidiadriver_crd(), ())):
        spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
        assert at(spec, ".".join((*driver, probe, field)))["minimum"] == 1
        assert at(spec, ".".join((*driver, probe, "initialDelaySeconds")))["minimum"] == 0
    with pytest.raises(api.PolicyError, match=f"spec.driver.{probe}.{field}"):
        api.parse_spec({"driver": {probe: {field: 0}}})
    with pytest.raises(ValueError, match=f"spec.{probe}.{field}"):
        nvidiadriver_api.parse_spec({probe: {field: 0}})


@pytest.mark.parametrize("probe", ["startupProbe", "livenessProbe", "readinessProbe"])
@pytest.mark.parametrize(
    "field", ["initialDelaySeconds", "timeoutSeconds", "periodSeconds", "successThreshold", "failureThreshold"]
)
def test_probe_fields_are_int32_as_upstream(probe: str, field: str) -> None:
    """Upstream's ContainerProbeSpec fields are int32 (its CRDs: `format: int32`), as the Probe of the driver
    DaemonSet they are rendered into. Ours took any integer: 2**31 passed the CRD and the model, and the DaemonSet
    carrying it was refused when applied, the state failing with a message about the DaemonSet, not the field."""
    for crd, driver in ((clusterpolicy_crd(), ("driver",)), (nvidiadriver_crd(), ())):
        spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
        node = at(spec, ".".join((*driver, probe, field)))
        assert (node["format"], node["maximum"]) == ("int32", 2**31 - 1)
    with pytest.raises(api.PolicyError, match=f"spec.driver.{probe}.{field}: Input should be less than or equal"):
        api.parse_spec({"driver": {probe: {field: 2**31}}})
    with pytest.raises(ValueError, match=f"spec.{probe}.{field}: Input should be less than or equal"):
        nvidiadriver_api.parse_spec({probe: {field: 2**31}})
    if field == "successThreshold" and probe != "readinessProbe":
        return  # 1 only (next test)
    top = api.parse_spec({"driver": {probe: {field: 2**31 - 1}}}).driver.model_dump(by_alias=True)[probe]
    assert top[field] == 2**31 - 1


@pytest.mark.parametrize("probe", ["startupProbe", "livenessProbe"])
def test_startup_and_liveness_probes_take_a_success_threshold_of_one_only(probe: str) -> None:
    """Pod validation refuses a startup or liveness probe's successThreshold other than 1 (upstream's field doc:
    "Must be 1 for liveness and startup"), and the driver container's probe copies the spec's. Ours took any, so
    `driver.startupProbe.successThreshold: 2` passed the model and render and every pass's driver DaemonSet was
    refused when applied (422, naming the DaemonSet). Now the model refuses it, naming the field; the CRDs are
    upstream's (no maximum), and a readiness probe may still ask for several successes."""
    message = f"{probe}.successThreshold: must be 1 for startup and liveness probes"
    with pytest.raises(api.PolicyError, match=f"spec.driver.{message}"):
        api.parse_spec({"driver": {probe: {"successThreshold": 2}}})
    with pytest.raises(ValueError, match=f"spec.{message}"):
        nvidiadriver_api.parse_spec({"driverType": "gpu", probe: {"successThreshold": 3}})
    one = api.parse_spec({"driver": {probe: {"successThreshold": 1}}}).driver.model_dump(by_alias=True)[probe]
    assert one["successThreshold"] == 1
    ready = api.parse_spec({"driver": {"readinessProbe": {"successThreshold": 2}}}).driver.readiness_probe
    assert ready is not None and ready.success_threshold == 2


def test_every_image_pull_policy_admits_an_empty_string_as_upstream() -> None:
    """Upstream's imagePullPolicy fields are plain strings, operator.initContainer's included (InitContainerSpec,
    no enum); ours gave that one an enum without "", so an upstream ClusterPolicy with
    `operator.initContainer.imagePullPolicy: ""` was refused at admission and by the operator."""
    enums = [(plural, path, node["enum"]) for plural, schema in _schemas() for path, node in walk(schema)
             if path.endswith(".imagePullPolicy") and "enum" in node]  # fmt: skip
    assert len(enums) > 20
    assert [(plural, path) for plural, path, enum in enums if "" not in enum] == []
    spec = api.parse_spec({"operator": {"initContainer": {"imagePullPolicy": ""}}})
    assert spec.operator.init_container.image_pull_policy is None


@pytest.mark.parametrize("path", ["cdi.default", "devicePlugin.config.default", "migManager.config.default",
                                  "vgpuDeviceManager.config.default"])  # fmt: skip
def test_fields_named_default_are_in_the_schema(spec_schema: dict[str, Any], path: str) -> None:
    at(spec_schema, path)


def test_resource_quantities_are_int_or_string(spec_schema: dict[str, Any]) -> None:
    for key in ("limits", "requests"):
        node = at(spec_schema, f"driver.resources.{key}")
        assert node["type"] == "object" and node["additionalProperties"] == QUANTITY_SCHEMA


@pytest.mark.parametrize(("make", "count"), [(clusterpolicy_crd, 32), (nvidiadriver_crd, 2)])
def test_every_resource_quantity_has_upstreams_pattern(make: Any, count: int) -> None:
    """Ours had no pattern, so the API server took `memory: 512MB` (a ClusterPolicy's or an NVIDIADriver's) that
    the operand DaemonSet was then refused for. Upstream's CRDs give it to every resources.limits/requests value."""
    root = make()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    quantities = [(path, node) for path, node in walk(root) if path.endswith((".limits.*", ".requests.*"))]
    assert len(quantities) == count
    assert [path for path, node in quantities if node != QUANTITY_SCHEMA] == []


def test_status_schema(version: dict[str, Any]) -> None:
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]
    assert "x-kubernetes-preserve-unknown-fields" not in status
    assert status["properties"]["state"]["enum"] == ["ready", "notReady", "ignored", "disabled"]
    condition = status["properties"]["conditions"]["items"]
    assert {"type", "status", "reason", "message", "lastTransitionTime", "observedGeneration"} <= set(
        condition["properties"]
    )
    assert status["properties"]["observedGeneration"]["type"] == "integer"


# Field descriptions (data/crd-descriptions.yaml)


def _schemas() -> list[tuple[str, dict[str, Any]]]:
    return [(c["spec"]["names"]["plural"], c["spec"]["versions"][0]["schema"]["openAPIV3Schema"]) for c in all_crds()]


def test_every_field_of_both_crds_has_a_description() -> None:
    """What `kubectl explain` shows: every field of spec and status (the items of a list, and metadata, which the
    API server describes itself, aside)."""
    missing = [
        f"{plural}: {path}"
        for plural, root in _schemas()
        for path, node in field_paths(root)
        if not path.endswith("[]") and path != "metadata" and not node.get("description", "").strip()
    ]
    assert missing == []


def test_every_description_key_is_used() -> None:
    """No stale key: each names a field of its CRD (of either, for `common`), and is the one that describes it
    for at least one field (a pattern after a wider one that matches the same fields would never be)."""
    used = set()
    for plural, root in _schemas():
        table = Descriptions(plural)
        for path, _ in field_paths(root):
            hit = table.lookup(path)
            if hit:
                used.add((table.sections[hit[0]], hit[0]))
    unused = [f"{section}: {key}" for section, keys in description_table().items() for key in keys
              if (section, key) not in used]  # fmt: skip
    assert unused == []
    assert set(description_table()) == {"clusterpolicies", "nvidiadrivers", "common"}


@pytest.mark.parametrize(
    ("path", "key"),
    [
        ("spec.driver.upgradePolicy.podDeletion", "**.upgradePolicy.podDeletion"),
        ("spec.driver.upgradePolicy.maxParallelUpgrades", "spec.driver.upgradePolicy.maxParallelUpgrades"),
        ("spec.upgradePolicy.maxParallelUpgrades", "**.upgradePolicy.maxParallelUpgrades"),
        ("spec.driver.version", "spec.driver.version"),  # the exact path before any pattern
        ("spec.toolkit.version", "**.version"),
        ("spec.driver.manager.env", "**.manager.env"),  # a pattern before a wider one
        ("spec.vgpuManager.env", "**.env"),  # `*` and `**` match whole names only where the key says so
        ("spec.daemonsets.tolerations[].key", "**.tolerations[].key"),
        ("spec.validator.cuda.env", "spec.validator.*.env"),
        ("spec.validator.env", "**.env"),
    ],
)
def test_description_lookup(path: str, key: str) -> None:
    table = Descriptions("nvidiadrivers" if path.startswith("spec.upgradePolicy") else "clusterpolicies")
    hit = table.lookup(path)
    assert hit is not None and hit[0] == key


def test_fields_this_operator_does_not_act_on_say_so() -> None:
    """Each coverage.UNSUPPORTED reason reaches the ClusterPolicy CRD from that table alone (written by hand too,
    it would outlive the table's entry)."""
    texts = [n.get("description", "") for _, n in field_paths(clusterpolicy_crd()["spec"]["versions"][0]["schema"]
                                                             ["openAPIV3Schema"])]  # fmt: skip
    for rule in coverage.UNSUPPORTED:
        assert any(rule.reason in t for t in texts), rule.pattern
    by_hand = [key for section in ("clusterpolicies", "common") for key, text in description_table()[section].items()
               if "acted on" in text]  # fmt: skip
    assert by_hand == []


def _description(crd: dict[str, Any], *path: str) -> str:
    node = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for part in path:
        node = node["properties"][part]
    return str(node["description"])


def test_psa_description_names_every_label_the_operator_writes() -> None:
    """psa.enabled was described as labelling the namespace pod-security.kubernetes.io/enforce=privileged; the
    operator writes enforce, audit and warn (lifecycle.PSA_LABELS), as upstream."""
    from gpu_operator.lifecycle import PSA_LABELS

    text = _description(clusterpolicy_crd(), "spec", "psa", "enabled")
    assert all(key in text for key in PSA_LABELS), (sorted(PSA_LABELS), text)


def test_version_descriptions_do_not_promise_a_default_to_precompiled_drivers() -> None:
    """driver.version (ClusterPolicy) and spec.version (NVIDIADriver) said "Unset: the operator's default version"
    with no exception, which `kubectl explain` shows to a user about to set usePrecompiled; usePrecompiled without a
    version is refused (precompiled images are tagged per branch: there is no default)."""
    for text in (_description(clusterpolicy_crd(), "spec", "driver", "version"),
                 _description(nvidiadriver_crd(), "spec", "version")):  # fmt: skip
        unset = text.split("Unset:", 1)[-1]
        assert "usePrecompiled: refused" in unset, text


def test_descriptions_are_short() -> None:
    long = [f"{plural}: {path}" for plural, root in _schemas() for path, node in field_paths(root)
            if len(node.get("description", "")) > 400]  # fmt: skip
    assert long == []
