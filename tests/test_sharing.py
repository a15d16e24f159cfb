"""Sharing configs parsed and checked as upstream's device plugin would, and the refusal that holds the rollout."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from gpu_operator import sharing
from gpu_operator.api import parse_spec
from gpu_operator.nodes import NodeFacts
from gpu_operator.render import plan, render_key
from gpu_operator.states import RenderContext

FIXTURES = Path(__file__).parent / "fixtures" / "sharing"


def fixture(name: str) -> str:
    return (FIXTURES / name).read_text()


def test_time_slicing_example() -> None:
    cfg = sharing.parse(fixture("time-slicing.yaml"))
    assert cfg.strategy == sharing.TIME_SLICING
    assert cfg.mig_strategy == "none"
    r = cfg.sharing_of("nvidia.com/gpu")
    assert r is not None and r.replicas == 4 and r.advertised == "nvidia.com/gpu" and not cfg.time_slicing.ignored
    assert cfg.time_slicing.fail_requests_greater_than_one is False
    sharing.check(cfg, "single")


def test_rename_by_default_and_device_lists() -> None:
    cfg = sharing.parse(fixture("renamed.yaml"))
    r = cfg.sharing_of("nvidia.com/gpu")
    assert r is not None and r.advertised == "nvidia.com/gpu.shared"
    # the device list is checked, then ignored as upstream's DisableResourceNamingInConfig does: every GPU is shared
    assert cfg.time_slicing.ignored == ("sharing.timeSlicing.resources[0].devices",)


def test_an_explicit_rename_is_checked_then_ignored_like_upstream() -> None:
    cfg = sharing.parse("sharing: {timeSlicing: {resources: [{name: nvidia.com/gpu, replicas: 2, rename: my-gpu}]}}")
    r = cfg.sharing_of("nvidia.com/gpu")
    assert r is not None and r.advertised == "nvidia.com/gpu" and r.rename == ""
    assert cfg.time_slicing.ignored == ("sharing.timeSlicing.resources[0].rename",)
    # renameByDefault's own name is kept; any other rename gives way to it
    for rename, ignored in (("gpu.shared", ()), ("my-gpu", ("sharing.mps.resources[0].rename",))):
        cfg = sharing.parse("sharing: {mps: {renameByDefault: true, resources: [{name: gpu, replicas: 2, "
                            f"rename: {rename}}}]}}}}")
        assert cfg.sharing_of("nvidia.com/gpu").advertised == "nvidia.com/gpu.shared"  # type: ignore[union-attr]
        assert cfg.mps is not None and cfg.mps.ignored == ignored
    with pytest.raises(sharing.ConfigError, match="incorrect format"):  # upstream decodes it before dropping it
        sharing.parse("sharing: {timeSlicing: {resources: [{name: gpu, replicas: 2, rename: ''}]}}")


def test_mig_time_slicing_example_is_valid_with_mixed() -> None:
    cfg = sharing.parse(fixture("time-slicing-mig.yaml"))
    assert cfg.sharing_of("nvidia.com/mig-3g.20gb").replicas == 3  # type: ignore[union-attr]
    sharing.check(cfg, "mixed")


def test_mps_defaults_fail_requests_greater_than_one() -> None:
    cfg = sharing.parse(fixture("mps.yaml"))
    assert cfg.strategy == sharing.MPS
    assert cfg.mps is not None and cfg.mps.fail_requests_greater_than_one is True
    assert cfg.replicated is cfg.mps
    sharing.check(cfg, "single")


def test_empty_and_unnamed_resource_names() -> None:
    assert sharing.parse("") == sharing.EMPTY
    assert sharing.parse("version: v1\n").strategy == sharing.NONE
    cfg = sharing.parse("sharing: {timeSlicing: {resources: [{name: gpu, replicas: 2}]}}")
    assert cfg.sharing_of("nvidia.com/gpu") is not None


@pytest.mark.parametrize(
    ("text", "field", "message"),
    [
        ("version: v2", "version", "unknown version: v2"),
        ("sharing: {timeSlicing: {resources: []}}", "sharing.timeSlicing.resources", "no resources specified"),
        ("sharing: {timeSlicing: {renameByDefault: true}}", "sharing.timeSlicing.resources", "no resources"),
        # upstream's unmarshaller runs on an empty or null timeSlicing too (the plugin and GFD exit at start)
        ("sharing: {timeSlicing: {}}", "sharing.timeSlicing.resources", "no resources specified"),
        ("sharing:\n  timeSlicing:\n", "sharing.timeSlicing.resources", "no resources specified"),
        ("Sharing: {timeslicing: {}}", "sharing.timeSlicing.resources", "no resources specified"),
        ("sharing: {timeSlicing: {resources: [{replicas: 2}]}}", "sharing.timeSlicing.resources[0].name",
         "no resource name specified"),
        ("sharing: {timeSlicing: {resources: [{name: nvidia.com/gpu}]}}",
         "sharing.timeSlicing.resources[0].replicas", "no replicas specified"),
        ("sharing: {timeSlicing: {resources: [{name: nvidia.com/gpu, replicas: 1}]}}",
         "sharing.timeSlicing.resources[0].replicas", "number of replicas must be >= 2"),
        ("sharing: {mps: {resources: [{name: nvidia.com/gpu, replicas: 0}]}}",
         "sharing.mps.resources[0].replicas", "number of replicas must be >= 2"),
        ("sharing: {timeSlicing: {resources: [{name: nvidia.com/gpu, replicas: 2, devices: some}]}}",
         "sharing.timeSlicing.resources[0].devices", "the only valid string input is 'all'"),
        ("sharing: {timeSlicing: {resources: [{name: nvidia.com/gpu, replicas: 2, devices: 0}]}}",
         "sharing.timeSlicing.resources[0].devices", "must be > 0"),
        ("sharing: {timeSlicing: {resources: [{name: nvidia.com/gpu, replicas: 2, devices: [GPU-x]}]}}",
         "sharing.timeSlicing.resources[0].devices[0]", "unsupported type for device"),
        ("sharing: {timeSlicing: {resources: [{name: NVIDIA_GPU, replicas: 2}]}}",
         "sharing.timeSlicing.resources[0].name", "incorrect format for resource name"),
        ("sharing: {timeSlicing: {renameByDefault: yes-please, resources: [{name: gpu, replicas: 2}]}}",
         "sharing.timeSlicing.renameByDefault", "must be true or false"),
        # flags: a value that does not decode into its Go type, and what validateFlags refuses with no env set
        ("flags: {failOnInitError: \"true\"}", "flags.failOnInitError", "must be true or false"),
        ("flags: {plugin: {passDeviceSpecs: 1}}", "flags.plugin.passDeviceSpecs", "must be true or false"),
        ("flags: {mpsRoot: [a]}", "flags.mpsRoot", "must be a string"),
        ("flags: {migStrategy: 1}", "flags.migStrategy", "must be a string"),
        ("flags: {plugin: {deviceListStrategy: [1]}}", "flags.plugin.deviceListStrategy", "invalid"),
        ("flags: {gfd: {sleepInterval: soon}}", "flags.gfd.sleepInterval", "invalid duration"),
        ("flags: {plugin: {sharedDevicesAllocationPolicy: packd}}", "flags.plugin.sharedDevicesAllocationPolicy",
         "invalid option packd"),
        ("flags: {deviceDiscoveryStrategy: nvm}", "flags.deviceDiscoveryStrategy", "invalid option nvm"),
        ("flags: {DeviceDiscoveryStrategy: vfio}", "flags.deviceDiscoveryStrategy", "invalid option vfio"),
        ("flags: 3", "flags", "must be a mapping"),
        ("version: 0", "version", "unknown version: 0"),
        ("sharing: [", "", "unmarshal error"),
    ],
)
def test_what_the_plugin_refuses_names_the_field(text: str, field: str, message: str) -> None:
    with pytest.raises(sharing.ConfigError) as err:
        sharing.parse(text)
    assert err.value.field == field
    assert message in err.value.message


@pytest.mark.parametrize(
    "text",
    [
        "sharing: {timeSlicing: {renameByDefault: null, resources: [{name: gpu, replicas: 2}]}}",
        "sharing: {timeSlicing: {resources: [{name: gpu, replicas: 2.0}]}}",
        "sharing: {timeSlicing: {resources: [{name: gpu, replicas: 2, devices: [GPU-b1028956cfa20990bf4a5da9abb51763,"
        " MIG-GPU-b1028956-cfa2-0990-bf4a-5da9abb51763/3/0, 'GPU-{b1028956-cfa2-0990-bf4a-5da9abb51763}', 1.0]}]}}",
        "sharing: {timeSlicing: {resources: [{name: gpu, replicas: 2, devices: 2.0}]}}",
        # values of flags the operator sets by env (the env wins), and valid ones of those it does not set
        "flags: {plugin: {deviceIDStrategy: serial, deviceListStrategy: [envvar, cdi-cri], passDeviceSpecs: true}}",
        "flags: {deviceDiscoveryStrategy: nvml, plugin: {sharedDevicesAllocationPolicy: packed},"
        " gfd: {sleepInterval: 1.5h, oneshot: false}, failOnInitError: null, unknownField: [1]}",
    ],
)
def test_what_the_plugin_accepts_is_accepted(text: str) -> None:
    sharing.check(sharing.parse(text), "single")


@pytest.mark.parametrize(
    "text",
    [
        "version: v1\nimex:\n  channelIDs: [1]\n",
        "version: v1\nimex:\n  channelIDs: [0, 0]\n",
        "version: v1\nimex:\n  channelIDs: '0'\n",  # not a list of integers: an unmarshal error
        "version: v1\nIMEX:\n  required: 'yes'\n",  # not a bool: an unmarshal error
    ],
)
def test_imex_channel_ids_the_plugin_refuses_are_refused(text: str) -> None:
    """k8s-device-plugin v0.20 reads `imex` from the config (api/config/v1 config.go Config.Imex, imex.go:
    ChannelIDs []int, Required bool) and cmd/nvidia-device-plugin/main.go validateFlags refuses channelIDs other
    than [] or [0] ("invalid IMEX channel IDs"; its README: "the only valid imex.channelIDs configurations are []
    and [0]"); the operator sets no IMEX_CHANNEL_IDS env that would override it. A value of the wrong type fails
    the unmarshal in the plugin, GFD and the MPS daemon. Either way the plugin exits on every node loading the key,
    so the check refuses it before it rolls out."""
    found = sharing.problems("sharing", {"imex": text}, "single")
    assert sharing.held(found) and found[0].field.startswith("imex"), found
    assert "channelIDs must be [] or [0]" in found[0].message or "unmarshal error" in found[0].message


def test_imex_channel_ids_the_plugin_accepts_are_accepted() -> None:
    """The counterpart: [] and [0] (with required true or false), or nothing, are what upstream accepts."""
    for text in ("imex: {channelIDs: [], required: true}", "imex: {channelIDs: [0.0], required: false}",
                 "imex: {channelIDs: null}", "imex: null"):
        assert sharing.problems("sharing", {"k": text}, "single") == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("version: v1\nresources:\n  gpus:\n  - name: gpu\n", "must have a 'pattern' field set"),
        ("version: v1\nresources:\n  GPUs:\n  - pattern: '*'\n", "must have a 'name' field set"),
        ("version: v1\nresources:\n  mig:\n  - pattern: '1g.10gb'\n    name: Bad_Name\n", "incorrect format"),
        ("version: v1\nresources:\n  gpus: {pattern: '*', name: gpu}\n", "must be a list"),
        ("version: v1\nresources: [gpus]\n", "must be a mapping"),
    ],
)
def test_a_malformed_resources_section_is_refused(text: str, message: str) -> None:
    """Config.Resources (k8s-device-plugin v0.20 api/config/v1/resources.go) is decoded by parseConfigFrom before
    DisableResourceNamingInConfig drops it: Resource.UnmarshalJSON requires `pattern` and `name`, and the name goes
    through NewResourceName. A malformed `resources` section fails "unable to parse config file" in the device
    plugin, GFD and the MPS daemon on every node that loads the key, so the check refuses it."""
    found = sharing.problems("sharing", {"custom": text}, "single")
    assert sharing.held(found) and found[0].field.startswith("resources"), found
    assert message in found[0].message


def test_top_level_and_sharing_keys_match_case_insensitively_like_go() -> None:
    cfg = sharing.parse("Version: v1\nsharing:\n  timeslicing:\n    resources: [{name: gpu, replicas: 4}]\n")
    assert cfg.strategy == sharing.TIME_SLICING and cfg.sharing_of("nvidia.com/gpu").replicas == 4  # type: ignore[union-attr]
    with pytest.raises(sharing.ConfigError, match="unknown version: v2"):
        sharing.parse("VERSION: v2")


def test_mps_with_mig() -> None:
    cfg = sharing.parse(fixture("mps.yaml"))
    with pytest.raises(sharing.ConfigError, match="mixed is not supported with MPS"):
        sharing.check(cfg, "mixed")
    for strategy in ("single", "none", None):
        with pytest.raises(sharing.ConfigError, match="not supported for MIG devices"):
            sharing.check(cfg, strategy, mig_enabled=True)
    sharing.check(cfg, "none")


def test_an_mps_config_not_sharing_nvidia_com_gpu_is_refused() -> None:
    """MPS is config-wide (any MPS resource replicated: Sharing.SharingStrategy), so the plugin's nvidia.com/gpu
    waits for an MPS daemon (internal/plugin/mps.go getMPSOptions, server.go Start: "error waiting for MPS daemon"),
    which the MPS control daemon starts only for a shared resource (mps/manager.go Daemons: "Resource is not
    shared"). An MPS config naming only nvidia.com/mig-<profile> was accepted (a known resource name), and under
    the none or single strategy the plugin then failed its start on every node, advertising nothing."""
    mig_only = sharing.parse("sharing: {mps: {resources: [{name: nvidia.com/mig-1g.10gb, replicas: 2}]}}")
    assert mig_only.strategy == sharing.MPS
    for strategy in ("none", "single", None):
        with pytest.raises(sharing.ConfigError, match="MPS must share nvidia.com/gpu") as err:
            sharing.check(mig_only, strategy)
        assert err.value.field == "sharing.mps.resources"
    both = sharing.parse("sharing: {mps: {resources: [{name: mig-1g.10gb, replicas: 2}, {name: gpu, replicas: 2}]}}")
    sharing.check(both, "none")
    renamed = sharing.parse("sharing: {mps: {renameByDefault: true, resources: [{name: gpu, replicas: 2}]}}")
    sharing.check(renamed, "none")  # shared as nvidia.com/gpu.shared: its daemon starts
    # time-slicing shares per resource: nvidia.com/gpu is advertised unshared
    sharing.check(sharing.parse("sharing: {timeSlicing: {resources: [{name: mig-1g.10gb, replicas: 2}]}}"), "none")


def test_mps_on_a_mig_enabled_node_is_refused_whatever_the_mig_strategy() -> None:
    """GFD refuses MPS on a node with any MIG-enabled GPU, whatever MIG_STRATEGY says (k8s-device-plugin
    internal/lm/nvml.go isMPSCapable loops over every GPU: "MPS sharing is not supported for mig devices"), and
    exits there. The check refused it only for a strategy other than none, so with mig.strategy unset (the
    config's flags, else none) or none the config rolled out and GFD crash-looped on that node."""
    node = _node("gpu-1", **{"nvidia.com/mig.config": "all-1g.10gb", sharing.NODE_LABEL: "mps"})
    for strategy in (None, "none"):
        found = sharing.problems("sharing", {"mps": fixture("mps.yaml")}, strategy, nodes=[node])
        assert [(p.key, p.field, p.holds) for p in found] == [("mps", "sharing.mps", True)], strategy
        assert "GFD" in found[0].message
    off = _node("gpu-2", **{"nvidia.com/mig.config": "all-disabled", sharing.NODE_LABEL: "mps"})
    assert sharing.problems("sharing", {"mps": fixture("mps.yaml")}, None, nodes=[off]) == []


def test_mps_replicas_above_the_mps_daemons_client_limit_are_refused() -> None:
    at_limit = sharing.parse("sharing: {mps: {resources: [{name: nvidia.com/gpu, replicas: 48}]}}")
    sharing.check(at_limit, "single")
    over = sharing.parse("sharing: {mps: {resources: [{name: nvidia.com/gpu, replicas: 64}]}}")
    with pytest.raises(sharing.ConfigError, match="64 > 48") as err:
        sharing.check(over, "single")
    assert err.value.field == "sharing.mps.resources[0].replicas"
    # time-slicing has no such limit
    sharing.check(sharing.parse("sharing: {timeSlicing: {resources: [{name: nvidia.com/gpu, replicas: 64}]}}"), None)


def test_mps_replicas_above_16_are_refused_on_nodes_below_compute_capability_7_5() -> None:
    """The MPS control daemon takes 16 clients below compute capability 7.5 (such as a V100, 7.0), 48 from 7.5 on,
    and refuses more replicas at start (k8s-device-plugin cmd/mps-control-daemon/mps/device.go maxClients). Only
    48 was checked, so 32 replicas rolled out to a V100 node whose MPS daemon then failed; now the node's GFD
    compute labels give its limit."""
    mps = {"mps": "sharing: {mps: {resources: [{name: nvidia.com/gpu, replicas: 32}]}}"}

    def node(name: str, major: str, minor: str, key: str = "mps") -> NodeFacts:
        return _node(name, **{sharing.NODE_LABEL: key, "nvidia.com/gpu.compute.major": major,
                              "nvidia.com/gpu.compute.minor": minor})

    found = sharing.problems("sharing", mps, None, nodes=[node("v100-1", "7", "0"), node("a100-1", "8", "0")])
    assert [(p.key, p.field, p.holds) for p in found] == [("mps", "sharing.mps.resources[0].replicas", True)]
    assert "32 > 16" in found[0].message and "v100-1" in found[0].message and "a100-1" not in found[0].message
    # 7.5 and above (and nodes without GFD's labels yet, or loading another key) keep the limit of 48
    for ok in (node("t4-1", "7", "5"), _node("new-1", **{sharing.NODE_LABEL: "mps"}), node("v100-2", "7", "0", "x")):
        assert sharing.held(sharing.problems("sharing", mps, None, nodes=[ok])) == [], ok.name
    at_limit = {"mps": "sharing: {mps: {resources: [{name: nvidia.com/gpu, replicas: 16}]}}"}
    assert sharing.problems("sharing", at_limit, None, nodes=[node("v100-1", "7", "0")]) == []
    # the default key is what an unlabelled node loads
    assert sharing.problems("sharing", mps, None, default="mps", nodes=[node("v100-1", "7", "0", "")])


def test_mps_is_refused_on_nodes_whose_layout_enables_mig_by_its_entries_not_its_name() -> None:
    mps = {"mps": "sharing: {mps: {resources: [{name: nvidia.com/gpu, replicas: 4}]}}"}
    gpu = {"feature.node.kubernetes.io/pci-10de.present": "true", "nvidia.com/device-plugin.config": "mps"}

    def refused(layout: str, layouts: dict[str, str] | None = None) -> bool:
        spec = parse_spec({"devicePlugin": {"config": {"name": "sharing"}}, "mig": {"strategy": "single"},
                           "migManager": {"config": {"name": "my-layouts" if layouts is not None else ""}}})
        data = {"sharing": mps, **({"my-layouts": layouts} if layouts is not None else {})}
        n = NodeFacts("n1", {**gpu, "nvidia.com/mig.config": layout})
        return bool(sharing.context_problems(spec, data, [n]))

    assert refused("all-1g.10gb") and refused("all-enabled") and not refused("all-disabled")
    config = ("version: v1\nmig-configs:\n  no-mig: [{devices: all, mig-enabled: false}]\n"
              "  halves: [{devices: all, mig-enabled: true, mig-devices: {3g.40gb: 2}}]\n")
    assert not refused("no-mig", {"config.yaml": config})
    assert refused("halves", {"config.yaml": config})
    # A name neither the user's config nor the default table has: taken as MIG on (mig-manager refuses it).
    assert refused("unknown", {"config.yaml": config}) and refused("no-mig", {})


def test_mps_is_refused_only_where_the_entries_selecting_the_nodes_gpu_enable_mig() -> None:
    """mig-parted applies only the entries of a layout whose `device-filter` selects the GPU (REFERENCE.md §4
    `all-balanced`). A fleet-wide layout that enables MIG on A100s and keeps it off on H100s leaves an H100 node's
    GPUs out of MIG mode, so GFD's isMPSCapable passes there. Every entry counted, whatever GPU it selects: the MPS
    key was refused and the device plugin, GFD and MPS DaemonSets held on every node."""
    mps4 = "version: v1\nsharing:\n  mps:\n    resources: [{name: nvidia.com/gpu, replicas: 4}]\n"
    fleet = ("version: v1\nmig-configs:\n  fleet:\n"
             "    - {device-filter: ['0x20B210DE'], devices: all, mig-enabled: true, mig-devices: {1g.10gb: 7}}\n"
             "    - {device-filter: ['0x233010DE'], devices: all, mig-enabled: false}\n"
             "    - {device-filter: ['0x20B710DE'], devices: all, mig-enabled: true, mig-devices: {1g.6gb: 4}}\n")
    spec = parse_spec({"devicePlugin": {"config": {"name": "sharing", "default": ""}}, "mig": {"strategy": "single"},
                       "migManager": {"config": {"name": "my-layouts"}}})
    data = {"sharing": {"mps": mps4}, "my-layouts": {"config.yaml": fleet}}
    labels = {"feature.node.kubernetes.io/pci-10de.present": "true", "nvidia.com/mig.config": "fleet",
              sharing.NODE_LABEL: "mps"}

    def held(node: NodeFacts) -> list[str]:
        return [str(p) for p in sharing.held(sharing.context_problems(spec, data, [node]))]

    # NFD's device ID tells the H100 80GB from the A100 80GB its MIG group shares profiles with
    h100 = {**labels, "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3", "nvidia.com/mig.capable": "true"}
    assert held(NodeFacts("h100-1", h100, pci_devices=("2330",))) == []
    assert held(NodeFacts("h100-2", {**labels, "feature.node.kubernetes.io/pci-0302_10de_2330.present": "true"})) == []
    assert held(NodeFacts("a100-1", {**h100, "nvidia.com/gpu.product": "NVIDIA-A100-SXM4-80GB"}, pci_devices=("20b2",)))
    # by GFD's product alone: the entries of its MIG group (an A30's entry does not select an H100)
    assert held(NodeFacts("a30-1", {**h100, "nvidia.com/gpu.product": "NVIDIA-A30"}))
    without_a100 = fleet.replace("0x20B210DE", "0x20B010DE")  # the A100 40GB instead
    data["my-layouts"] = {"config.yaml": without_a100}
    assert held(NodeFacts("h100-3", h100)) == []
    # no entry selects the GPU: mig-manager refuses the layout, the GPUs' mode is not known (MIG on)
    data["my-layouts"] = {"config.yaml": without_a100.replace("0x233010DE", "0x233110DE")}
    assert held(NodeFacts("h100-4", h100, pci_devices=("2330",)))


def test_mps_is_not_refused_for_a_mig_layout_label_on_a_gpu_that_is_not_mig_capable() -> None:
    """Only a MIG-capable GPU can be in MIG mode, and mig-manager's deploy label is set only on MIG-capable nodes
    (nodes.py). An L4 node (mig.capable=false) labelled `nvidia.com/mig.config=all-1g.10gb` (a fleet-wide `kubectl
    label`) counted as MIG-enabled: its MPS key was refused and the device plugin, GFD and MPS DaemonSets held on
    every node. A node whose capability is not known yet keeps the layout's rule."""
    mps4 = {"mps": "version: v1\nsharing:\n  mps:\n    resources: [{name: nvidia.com/gpu, replicas: 4}]\n"}
    layout = {"nvidia.com/mig.config": "all-1g.10gb", sharing.NODE_LABEL: "mps"}

    def held(node: NodeFacts) -> bool:
        return bool(sharing.held(sharing.problems("sharing", mps4, "single", nodes=[node])))

    l4 = {"nvidia.com/gpu.product": "NVIDIA-L4", "nvidia.com/gpu.count": "1", "nvidia.com/mig.capable": "false"}
    assert not held(_node("l4-1", **layout, **l4))
    assert not held(_node("l4-2", **layout, **{"nvidia.com/gpu.product": "NVIDIA-L4"}))  # by the product
    assert not held(NodeFacts("l4-3", {**layout, "feature.node.kubernetes.io/pci-0302_10de_27b8.present": "true"}))
    h100 = {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3", "nvidia.com/mig.capable": "true"}
    assert held(_node("h100-1", **layout, **h100))
    assert held(_node("new-1", **layout))  # nothing known of its GPU yet


def test_a_malformed_users_mig_config_does_not_end_the_check() -> None:
    """A bad count in the user's mig-parted config raised a ValueError past the ConfigError catch, and every pass
    with a devicePlugin.config failed. Now it is a config not read: every layout counts as MIG on."""
    spec = parse_spec({"migManager": {"config": {"name": "my-layouts"}},
                       "devicePlugin": {"config": {"name": "sharing", "default": "any"}}})
    bad = "version: v1\nmig-configs:\n  a: [{devices: all, mig-enabled: true, mig-devices: {3g.40gb: two}}]\n"
    data = {"sharing": {"any": "version: v1\n"}, "my-layouts": {"config.yaml": bad}}
    assert sharing.context_problems(spec, data, [_node("n1", **{"nvidia.com/mig.config": "a"})]) == []


def test_mixed_mig_resources_are_named_as_the_plugin_names_them() -> None:
    """The plugin turns a profile's "+" into "." (internal/rm/rm.go): nvidia.com/mig-1g.10gb.me is real and may be
    shared, nvidia.com/mig-1g.10gb+me is no valid name. The known resources had it the other way round."""
    known = sharing.known_resources()
    assert {"nvidia.com/mig-1g.10gb.me", "nvidia.com/mig-1g.24gb.me.all", "nvidia.com/mig-1g.24gb-me"} <= known
    assert not [r for r in known if "+" in r]


def test_unknown_resource_is_refused() -> None:
    cfg = sharing.parse("sharing: {timeSlicing: {resources: [{name: nvidia.com/tpu, replicas: 2}]}}")
    with pytest.raises(sharing.ConfigError) as err:
        sharing.check(cfg, "single")
    assert err.value.field == "sharing.timeSlicing.resources[0].name" and "unknown resource" in err.value.message


def _node(name: str, **labels: str) -> NodeFacts:
    return NodeFacts.from_node({"metadata": {"name": name, "labels": {
        "feature.node.kubernetes.io/pci-10de.present": "true", **labels}}, "status": {}})


def test_config_map_problems_name_configmap_key_and_field() -> None:
    data = {"ts": fixture("time-slicing.yaml"), "mps": fixture("mps.yaml"), "bad": "version: v0"}
    found = sharing.problems("sharing", data, "single", default="missing")
    assert [(p.key, p.field) for p in found] == [("bad", "version"), ("missing", "")]
    assert str(found[0]) == "ConfigMap sharing key bad field version: unknown version: v0"
    # MPS is refused only for a key a MIG-enabled node loads
    mig = _node("n1", **{"nvidia.com/mig.config": "all-1g.10gb", "nvidia.com/device-plugin.config": "mps"})
    plain = _node("n2", **{"nvidia.com/device-plugin.config": "mps"})
    assert sharing.problems("sharing", {"mps": data["mps"]}, "single", nodes=[plain]) == []
    found = sharing.problems("sharing", {"mps": data["mps"]}, "single", nodes=[plain, mig])
    assert [(p.key, p.field) for p in found] == [("mps", "sharing.mps")]


def _ctx(data: dict[str, str], strategy: str = "single", nodes: tuple[NodeFacts, ...] = ()) -> RenderContext:
    spec = parse_spec({"devicePlugin": {"config": {"name": "sharing", "default": ""}}, "mig": {"strategy": strategy}})
    return RenderContext(spec=spec, namespace="gpu-operator", nodes=nodes or (_node("n1"),),
                         config_maps={"sharing": tuple(sorted(data))}, config_data={"sharing": data})


def test_a_refused_config_holds_the_states_that_load_it() -> None:
    good = {p.state.name: p for p in plan(_ctx({"ts": fixture("time-slicing.yaml")}))}
    assert all(good[s].objects and good[s].problem is None for s in sharing.HELD_STATES)
    held = {p.state.name: p for p in plan(_ctx({"ts": fixture("time-slicing.yaml"), "bad": "version: v9"}))}
    for name in sharing.HELD_STATES:
        assert held[name].objects == [] and "key bad field version" in (held[name].problem or "")
    assert held["state-driver"].objects and held["state-driver"].problem is None


def test_a_config_map_with_no_keys_is_refused_and_holds_the_states_that_load_it() -> None:
    """config-manager exits when the ConfigMap has no keys ("no configuration files available"), before it reads
    the default or FALLBACK_STRATEGIES=empty (k8s-device-plugin cmd/config-manager/main.go updateConfigName):
    config-manager-init fails on every GPU node. An empty ConfigMap was reported valid and rolled out."""
    found = sharing.problems("sharing", {}, "single", default="any", nodes=[_node("gpu-1")])
    assert [(p.key, p.holds) for p in found] == [("", True)]
    assert str(found[0]).startswith("ConfigMap sharing: the ConfigMap has no keys")
    assert "no configuration files available" in str(found[0])
    cond = sharing.condition("sharing", found, 1, [], "t")
    assert cond is not None and cond["status"] == "False" and cond["reason"] == sharing.REASON
    plans = {p.state.name: p for p in plan(_ctx({}))}
    for name in sharing.HELD_STATES:
        assert plans[name].objects == [] and "has no keys" in (plans[name].problem or "")
    # binaryData keys are files config-manager sees too (not checked: their content is not known here)
    ctx = replace(_ctx({}), config_maps={"sharing": ("bin",)})
    assert all(p.problem is None for p in plan(ctx) if p.state.name in sharing.HELD_STATES)
    spec = parse_spec({"devicePlugin": {"config": {"name": "sharing", "default": "bin"}}})
    assert sharing.context_problems(spec, {"sharing": {}}, [_node("gpu-1")], {"sharing": ("bin",)}) == []


def test_a_devicePlugin_config_naming_a_configmap_that_does_not_exist_is_refused() -> None:
    """The device plugin, GFD and MPS daemon pods mount devicePlugin.config.name as a (non-optional) ConfigMap
    volume, so with no such ConfigMap they never start (FailedMount), worse than a ConfigMap with no keys. The
    operator lists every ConfigMap of its namespace, so absence is known, yet nothing was said (no
    SharingConfigValid condition, no problem on the states) and the DaemonSets rolled out pods that cannot start:
    a typo in the name, or the ConfigMap deleted, replaced every running plugin with a stuck pod."""
    from gpu_operator.reconciler import Reconciler
    from support import EchoKube

    spec = parse_spec({"devicePlugin": {"config": {"name": "sharing", "default": ""}}, "mig": {"strategy": "single"}})
    found = sharing.context_problems(spec, {}, [_node("gpu-1")], {})
    assert [(p.config_map, p.key, p.holds) for p in found] == [("sharing", "", True)]
    assert str(found[0]).startswith("ConfigMap sharing: not found in the operator namespace")
    ctx = RenderContext(spec=spec, namespace="gpu-operator", nodes=(_node("gpu-1"),), config_maps={}, config_data={})
    plans = {p.state.name: p for p in plan(ctx)}
    for name in sharing.HELD_STATES:
        assert plans[name].objects == [] and "not found" in (plans[name].problem or "")
    # the condition and the Event name it
    posted: list[str] = []
    r = Reconciler(EchoKube(), "gpu-operator")  # type: ignore[arg-type]
    r.events = lambda obj, etype, reason, message: posted.append(reason)  # type: ignore[assignment]
    said = r._check_sharing({}, ctx)
    cond = sharing.condition("sharing", said, 1, [], "t")
    assert cond is not None and cond["status"] == "False" and "not found" in cond["message"]
    assert posted == [sharing.REASON]
    # only a ConfigMap's keys known (an offline render's file): it exists, its content is not checked
    assert sharing.context_problems(spec, {}, [_node("gpu-1")], {"sharing": ("ts",)}) == []
    assert sharing.context_problems(spec, {}, [_node("gpu-1")]) == []  # nothing known of the namespace


def test_an_mps_config_with_gfd_disabled_is_a_warning() -> None:
    """Only GFD labels a node nvidia.com/mps.capable=true (k8s-device-plugin internal/lm/nvml.go), which the MPS
    control daemon's nodeSelector needs: with gfd.enabled false no MPS daemon runs, and the device plugin loading an
    MPS config fails its start ("error waiting for MPS daemon"). Nothing was said."""
    data = {"sharing": {"mps": fixture("mps.yaml"), "ts": fixture("time-slicing.yaml")}}
    nodes = [_node("gpu-1"), _node("gpu-2", **{sharing.NODE_LABEL: "ts"}), NodeFacts("cpu-1", {})]

    def found(default: str, gfd: bool = False) -> list[sharing.Problem]:
        spec = parse_spec({"devicePlugin": {"config": {"name": "sharing", "default": default}},
                           "gfd": {"enabled": gfd}, "mig": {"strategy": "single"}})
        return sharing.context_problems(spec, data, nodes)

    warned = found("mps")
    assert [(p.key, p.holds) for p in warned] == [("mps", False)]
    assert "MPS needs GPU feature discovery" in str(warned[0]) and "node gpu-1 " in str(warned[0])
    cond = sharing.condition("sharing", warned, 1, [], "t")
    assert cond is not None and cond["status"] == "True" and cond["reason"] == sharing.WARNING_REASON
    assert found("mps", gfd=True) == [] and found("ts") == []  # GFD on, or no node loads the MPS key


def test_the_config_content_moves_the_render_key() -> None:
    assert render_key(_ctx({"ts": "version: v1"})) != render_key(_ctx({"ts": "version: v2"}))


def test_condition() -> None:
    bad = sharing.problems("sharing", {"bad": "version: v9"}, "single")
    cond = sharing.condition("sharing", bad, 3, [], "t1")
    assert cond is not None and cond["status"] == "False" and cond["reason"] == sharing.REASON
    assert "key bad field version" in cond["message"]
    again = sharing.condition("sharing", bad, 4, [cond], "t2")
    assert again is not None and again["lastTransitionTime"] == "t1"
    ok = sharing.condition("sharing", [], 5, [cond], "t3")
    assert ok is not None and ok["status"] == "True" and ok["lastTransitionTime"] == "t3"
    assert sharing.condition("", None, 1, [], "t") is None


def test_an_unset_mig_strategy_leaves_it_to_the_configs_flag_else_none() -> None:
    mps = "sharing: {mps: {resources: [{name: nvidia.com/gpu, replicas: 4}]}}"
    flagged = "flags: {migStrategy: mixed}\n" + mps
    sharing.check(sharing.parse(mps), None)  # none: MPS on full GPUs
    with pytest.raises(sharing.ConfigError, match="mixed is not supported with MPS"):
        sharing.check(sharing.parse(flagged), None)
    sharing.check(sharing.parse(flagged), "single")  # the env overrides the file's flag
    # an unknown flags.migStrategy: refused only when no env overrides it (validateFlags then reads it)
    bad = sharing.parse("flags: {migStrategy: Single}")
    with pytest.raises(sharing.ConfigError, match="unknown MIG strategy: Single") as err:
        sharing.check(bad, None)
    assert err.value.field == "flags.migStrategy"
    sharing.check(bad, "single")


def test_a_node_label_naming_a_missing_key_is_a_warning_that_holds_nothing() -> None:
    # config-manager exits on that node only ("specified config ts8 does not exist"): said, not held cluster-wide
    data = {"ts4": fixture("time-slicing.yaml")}
    label = {"nvidia.com/device-plugin.config": "ts8"}
    nodes = (_node("gpu-1", **label), _node("gpu-2", **label), _node("gpu-3"),
             NodeFacts("cpu-1", dict(label)))  # not a GPU node: no device plugin there
    found = sharing.problems("sharing", data, "single", nodes=nodes)
    assert [(p.key, p.holds) for p in found] == [("ts8", False)]
    assert "node gpu-1, gpu-2" in str(found[0]) and "specified config ts8 does not exist" in str(found[0])
    assert "cpu-1" not in str(found[0])
    plans = {p.state.name: p for p in plan(_ctx(data, nodes=nodes))}
    assert all(plans[s].objects and plans[s].problem is None for s in sharing.HELD_STATES)
    cond = sharing.condition("sharing", found, 2, [], "t1")
    assert cond is not None and cond["status"] == "True" and cond["reason"] == sharing.WARNING_REASON
    assert "is valid" not in cond["message"] and "key ts8" in cond["message"]
    many = [_node(f"gpu-{i}", **label) for i in range(8)]
    assert "and 3 more" in str(sharing.problems("sharing", data, "single", nodes=many)[0])


def test_a_default_naming_a_missing_key_holds_only_while_a_gpu_node_would_load_it() -> None:
    """Review sharing2 #2: config-manager reads devicePlugin.config.default only on a node whose
    nvidia.com/device-plugin.config label is unset or "" (cmd/config-manager/main.go updateConfigName). With every
    GPU node labelled with an existing key the operator still held the device plugin, GFD and MPS daemon on every
    node (a fresh install advertised no GPU anywhere). Now that is a warning; a GPU node without the label (or
    none known) makes it a refusal again, naming the node."""
    label = {sharing.NODE_LABEL: "ts4"}
    nodes = (_node("gpu-1", **label), _node("gpu-2", **label), NodeFacts("cpu-1", {}))  # cpu-1: no device plugin
    data = {"ts4": fixture("time-slicing.yaml")}
    found = sharing.problems("sharing", data, "single", default="missing", nodes=nodes)
    assert [(p.key, p.holds) for p in found] == [("missing", False)]
    assert "without the label" in str(found[0]) and "specified config missing does not exist" in str(found[0])
    ctx = _ctx(data, nodes=nodes)
    ctx.spec.device_plugin.config.default = "missing"
    plans = {p.state.name: p for p in plan(ctx)}
    assert all(plans[s].objects and plans[s].problem is None for s in sharing.HELD_STATES)
    # level-based: a GPU node with no label, or "", loads the default: held again, that node named
    for bare in (_node("gpu-3"), _node("gpu-3", **{sharing.NODE_LABEL: ""})):
        found = sharing.problems("sharing", data, "single", default="missing", nodes=(*nodes, bare))
        assert [(p.key, p.holds) for p in found] == [("missing", True)]
        assert "on node gpu-3, which has no nvidia.com/device-plugin.config label" in str(found[0]), str(found[0])
        ctx = _ctx(data, nodes=(*nodes, bare))
        ctx.spec.device_plugin.config.default = "missing"
        plans = {p.state.name: p for p in plan(ctx)}
        assert all(plans[s].problem is not None for s in sharing.HELD_STATES)
    # no GPU node known: held (a node that joins most likely has no label)
    assert sharing.held(sharing.problems("sharing", data, "single", default="missing", nodes=nodes[2:]))


def test_fields_upstream_ignores_are_a_warning() -> None:
    found = sharing.problems("sharing", {"renamed": fixture("renamed.yaml")}, "single")
    assert [(p.key, p.field, p.holds) for p in found] == [
        ("renamed", "sharing.timeSlicing.resources[0].devices", False)]
    assert "ignored by the device plugin" in found[0].message
    assert not sharing.held(found)


def test_a_resources_section_upstream_ignores_is_a_warning() -> None:
    """A well-formed `resources` section (renaming nvidia.com/gpu) is dropped by k8s-device-plugin v0.20's
    DisableResourceNamingInConfig ("Customizing the 'resources' field is not yet supported in the config.
    Ignoring..."), as sharing's `rename` and `devices` are: the renamed resource never appears, every GPU stays
    nvidia.com/gpu, so it is a warning (holds nothing), one per list set."""
    text = "version: v1\nresources:\n  gpus:\n  - pattern: '*'\n    name: my-gpu\n  mig: []\n"
    found = sharing.problems("sharing", {"custom": text}, "single")
    assert [(p.key, p.field, p.holds) for p in found] == [("custom", "resources.gpus", False)], found
    assert "ignored by the device plugin" in found[0].message and "nvidia.com/gpu" in found[0].message
    assert sharing.parse(text).strategy == sharing.NONE


def test_refusals_and_warnings_together() -> None:
    data = {"bad": "version: v9", "renamed": fixture("renamed.yaml")}
    found = sharing.problems("sharing", data, "single", nodes=[_node("gpu-1", **{sharing.NODE_LABEL: "nope"})])
    assert [(p.key, p.holds) for p in found] == [("bad", True), ("renamed", False), ("nope", False)]
    assert sharing.summary(sharing.held(found)) == "devicePlugin.config refused, not rolled out: " + str(found[0])
    cond = sharing.condition("sharing", found, 1, [], "t")
    assert cond is not None and cond["status"] == "False" and cond["reason"] == sharing.REASON
    assert cond["message"].index("key bad") < cond["message"].index("Warnings: ") < cond["message"].index("key nope")


def test_a_long_message_names_whole_problems_and_keeps_room_for_the_warnings() -> None:
    """The condition's message was cut at 1,000 characters wherever that fell: mid-problem, with nothing saying how
    many were left out, and with enough refusals the warnings after them were gone without a trace. Now it names
    whole problems, then how many more, of the refusals and of the warnings, a third of it kept for the warnings;
    the Event says the same, and is not posted again while the status says it."""
    from gpu_operator.reconciler import Reconciler
    from support import EchoKube

    data = {f"bad{i:02d}": "version: v9" for i in range(40)}
    data["renamed"] = fixture("renamed.yaml")
    ctx = _ctx(data, nodes=(_node("gpu-1", **{sharing.NODE_LABEL: "nope"}),))
    found = sharing.context_problems(ctx.spec, ctx.config_data, ctx.nodes, ctx.config_maps)
    assert (sum(p.holds for p in found), sum(not p.holds for p in found)) == (40, 2)
    cond = sharing.condition("sharing", found, 1, [], "t")
    assert cond is not None
    message = cond["message"]
    assert len(message) <= sharing.MESSAGE_LIMIT
    refused, warnings = message.removeprefix("devicePlugin.config refused, not rolled out: ").split(". Warnings: ")
    said = refused.split("; ")
    assert said[:-1] == [str(p) for p in found[:len(said) - 1]] and said[-1] == f"and {41 - len(said)} more"
    assert warnings == f"{found[40]}; and 1 more"

    posted: list[str] = []
    r = Reconciler(EchoKube(), "gpu-operator")  # type: ignore[arg-type]
    r.events = lambda obj, etype, reason, message: posted.append(message)  # type: ignore[assignment]
    r._check_sharing({}, ctx)
    r._check_sharing({"status": {"conditions": [cond]}}, ctx)
    assert posted == [message]


def test_the_event_names_a_refusal_or_warnings() -> None:
    from gpu_operator.reconciler import Reconciler
    from support import EchoKube

    posted: list[tuple[str, str, str]] = []
    r = Reconciler(EchoKube(), "gpu-operator")  # type: ignore[arg-type]
    r.events = lambda obj, etype, reason, message: posted.append((etype, reason, message))  # type: ignore[assignment]
    warned = _ctx({"ts": fixture("time-slicing.yaml")}, nodes=(_node("gpu-1", **{sharing.NODE_LABEL: "ts8"}),))
    found = r._check_sharing({}, warned)
    assert [(e, reason) for e, reason, _ in posted] == [("Warning", sharing.WARNING_REASON)]
    said = sharing.condition("sharing", found, 1, [], "t")
    assert r._check_sharing({"status": {"conditions": [said]}}, warned)
    assert len(posted) == 1  # once per change: the status says it already
    r._check_sharing({"status": {"conditions": [said]}}, _ctx({"bad": "version: v9"}))
    assert posted[-1][1] == sharing.REASON


def test_a_restarted_operator_does_not_post_the_sharing_config_warning_again() -> None:
    """Whether the Warning was posted was kept only in memory, so every restart and leader hand-over posted it
    again on the same cluster, though the SharingConfigValid condition carries its very message. Now it is read
    from the status, as compat.newly_refused does."""
    from gpu_operator.nodes import NodeFacts
    from gpu_operator.observe import Snapshot
    from gpu_operator.reconciler import Reconciler
    from support import PostingKube, node, policy_object

    pol = policy_object()
    pol["spec"]["devicePlugin"]["config"] = {"name": "sharing", "default": ""}
    data = {"bad": "version: v9"}
    nodes = {"n1": NodeFacts.from_node(node("n1"))}

    def snapshot() -> Snapshot:
        return Snapshot(nodes=nodes, policies={"cluster-policy": pol}, owned={}, pods={}, revisions={},
                        config_maps={"sharing": ("bad",)}, config_data={"sharing": data})

    kube = PostingKube()
    running = Reconciler(kube, "gpu-operator")  # type: ignore[arg-type]
    running.reconcile(snapshot())
    pol["status"] = kube.statuses[("ClusterPolicy", "cluster-policy")]  # as the watch brings it back
    [said] = [c for c in pol["status"]["conditions"] if c["type"] == sharing.CONDITION]
    assert said["reason"] == sharing.REASON
    running.reconcile(snapshot())
    assert kube.posted.count(sharing.REASON) == 1  # once per change

    again = PostingKube()
    Reconciler(again, "gpu-operator").reconcile(snapshot())  # type: ignore[arg-type]  # restarted, same cluster
    assert sharing.REASON not in again.posted
