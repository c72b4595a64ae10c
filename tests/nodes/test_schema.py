"""The nodes' V3 schema in-process: one style (io.ComfyNode), the pre-port ids, input names
and order (saved workflows store widget values by position), the advanced flag on the settings
users rarely change, and categories next to the host's own sampler nodes."""

import importlib

import comfy.sample
import pytest
from comfy_api.latest import io

# The inputs of the V1 nodes before the port (git 6b6d89b), in order: saved workflows store
# widget values by position, so this order must never change.
PRE_PORT_INPUTS = {
    "SamplerLML": ["solver", "rank", "damping", "kappa", "damping_mode", "omega",
                   "start_percent", "end_percent", "eta", "s_noise"],
    "KSamplerLML": ["model", "seed", "steps", "cfg", "solver", "scheduler", "positive",
                    "negative", "latent_image", "denoise", "rank", "damping", "kappa",
                    "damping_mode", "omega", "start_percent", "end_percent", "eta", "s_noise"],
    "LMLCompare": ["model", "seed", "steps", "cfg", "scheduler", "positive", "negative",
                   "latent_image", "vae", "baseline_sampler", "solver", "rank", "damping",
                   "kappa", "damping_mode", "omega", "start_percent", "end_percent", "eta",
                   "s_noise"],
}
ADVANCED = {"kappa", "damping_mode", "omega", "start_percent", "end_percent", "eta", "s_noise"}
# Nodes added after the port, with their advanced inputs.
NEW_NODES = {"SamplerLMLWrap": {"kappa", "damping_mode", "omega", "start_percent", "end_percent"},
             "LMLSamplerLab": set()}


def test_every_node_is_a_v3_node_under_its_pre_port_id(pack):
    mappings = pack.nodes.NODE_CLASS_MAPPINGS
    assert sorted(mappings) == sorted([*PRE_PORT_INPUTS, *NEW_NODES])
    for node_id, node_class in mappings.items():
        assert issubclass(node_class, io.ComfyNode), node_id
        schema = node_class.GET_SCHEMA()
        assert schema.node_id == node_id
        assert pack.nodes.NODE_DISPLAY_NAME_MAPPINGS[node_id] == schema.display_name
        if node_id in PRE_PORT_INPUTS:
            info = node_class.GET_NODE_INFO_V1()  # what /object_info serves
            assert info["input_order"] == {"required": PRE_PORT_INPUTS[node_id]}, node_id


def test_advanced_flag_on_the_rarely_changed_inputs_only(pack):
    for node_id, node_class in pack.nodes.NODE_CLASS_MAPPINGS.items():
        required = node_class.GET_NODE_INFO_V1()["input"]["required"]
        flagged = {name for name, spec in required.items()
                   if len(spec) > 1 and spec[1].get("advanced")}
        assert flagged == NEW_NODES.get(node_id, ADVANCED), node_id
        assert {"solver", "rank", "damping"}.isdisjoint(flagged)
        assert all(required[name][1]["advanced"] is True for name in flagged)


def test_advanced_helper_uses_the_hosts_own_option_when_it_has_one(pack):
    """0.3.75's io.Input has no ``advanced`` option (the flag goes through extra_dict); 0.33's
    has one (the helper sets it and leaves extra_dict alone). The host's own input takes its
    path; the other kind is made from it, so both paths run on every host."""
    advanced = pack.nodes.sampler_nodes.advanced
    host_input = io.Float.Input("x", default=1.0)
    if hasattr(host_input, "advanced"):
        with_option = host_input
        without_option = io.Float.Input("x", default=1.0)
        del without_option.advanced  # an older host's input
    else:
        without_option = host_input

        class NewerFloatInput(io.Float.Input):  # a newer host's input (sets self.advanced)
            def __init__(self, *args, advanced=None, **kwargs):
                super().__init__(*args, **kwargs)
                self.advanced = advanced

        with_option = NewerFloatInput("x", default=1.0)

    assert advanced(with_option).advanced is True
    assert not with_option.extra_dict
    assert advanced(without_option).extra_dict == {"advanced": True}
    assert advanced(host_input).as_dict()["advanced"] is True  # what /object_info serves


def test_categories_sit_beside_the_hosts_sampler_nodes(pack):
    ksampler = importlib.import_module("nodes").KSampler.CATEGORY
    select = importlib.import_module("comfy_extras.nodes_custom_sampler").KSamplerSelect.CATEGORY
    categories = {node_id: cls.GET_SCHEMA().category
                  for node_id, cls in pack.nodes.NODE_CLASS_MAPPINGS.items()}
    assert categories == {"KSamplerLML": ksampler, "LMLCompare": ksampler,
                          "SamplerLML": select, "SamplerLMLWrap": select,
                          "LMLSamplerLab": ksampler}


def test_categories_follow_the_host_not_a_fixed_name(load_pack, monkeypatch):
    """A host that moves its sampler nodes (0.3.75: "sampling", 0.33: "model/sampling") moves
    ours with them: a fresh load of the pack reads the categories again."""
    monkeypatch.setattr(importlib.import_module("nodes").KSampler, "CATEGORY", "moved/here")
    monkeypatch.setattr(importlib.import_module("comfy_extras.nodes_custom_sampler")
                        .KSamplerSelect, "CATEGORY", "moved/here/samplers")
    mappings = load_pack("comfyui_lml_moved").nodes.NODE_CLASS_MAPPINGS
    assert mappings["KSamplerLML"].GET_SCHEMA().category == "moved/here"
    assert mappings["SamplerLML"].GET_SCHEMA().category == "moved/here/samplers"


def test_category_falls_back_when_the_host_has_no_such_node(pack):
    category = pack.nodes.sampler_nodes.builtin_category
    assert category("comfy_extras.nodes_custom_sampler", "NoSuchNode", "x/y") == "x/y"
    assert category("no_such_module_here", "KSampler", "sampling") == "sampling"


def test_validate_inputs_is_the_v3_hook(pack):
    node = pack.nodes.NODE_CLASS_MAPPINGS["KSamplerLML"]
    from comfy_api.internal import first_real_override

    assert first_real_override(node, "validate_inputs") is not None  # what execution.py calls
    assert "end_percent" in node.validate_inputs(start_percent=0.0, end_percent=2.0)


@pytest.mark.parametrize("node_id, name, bad", [
    ("KSamplerLML", "solver", "heun"), ("SamplerLML", "damping_mode", "loose"),
    ("KSamplerLML", "scheduler", "nope"), ("LMLCompare", "baseline_sampler", "nope"),
])
def test_validate_inputs_checks_the_dropdowns(pack, node_id, name, bad):
    # ComfyUI 0.3.75 only checks V1 (list-typed) combos; V3 combos are checked here.
    node = pack.nodes.NODE_CLASS_MAPPINGS[node_id]
    message = node.validate_inputs(**{name: bad})
    assert isinstance(message, str) and name in message and repr(bad) in message
    good = node.GET_NODE_INFO_V1()["input"]["required"][name][1]["options"][-1]
    assert node.validate_inputs(**{name: good}) is True
    assert node.validate_inputs(**{name: None}) is True  # a linked input: run time


@pytest.mark.parametrize("node_id", ["KSamplerLML", "LMLCompare"])
def test_dropdowns_list_what_the_host_lists(pack, node_id):
    import comfy.samplers

    required = pack.nodes.NODE_CLASS_MAPPINGS[node_id].GET_NODE_INFO_V1()["input"]["required"]
    assert required["scheduler"][1]["options"] == comfy.samplers.KSampler.SCHEDULERS
    if node_id == "LMLCompare":
        assert required["baseline_sampler"][1]["options"] == comfy.samplers.KSampler.SAMPLERS
        assert "lml_euler" in required["baseline_sampler"][1]["options"]


def test_the_hosts_fix_empty_latent_channels_takes_nothing_the_pack_does_not_know(pack):
    # 0.3.75: (model, latent_image); 0.33: both downscale ratios after them. A parameter the
    # pack does not pass would change what core's KSampler does and ours does not.
    import inspect

    parameters = list(inspect.signature(comfy.sample.fix_empty_latent_channels).parameters)
    assert parameters[:2] == ["model", "latent_image"]
    assert set(parameters[2:]) <= set(pack.nodes.bridge.LATENT_RATIO_KEYS), parameters
