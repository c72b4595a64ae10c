"""The nodes' V3 schema in-process: one style (io.ComfyNode), the pre-port ids, input names
and order (saved workflows store widget values by position), the advanced flag on the settings
users rarely change, and categories next to the host's own sampler nodes."""

import importlib

import comfy.sample
import pytest
import torch
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
# Inputs added since, appended as optional inputs so that those positions stay valid (and an
# API prompt saved without them still validates).
APPENDED_INPUTS = ["fade"]
ADVANCED = {"kappa", "damping_mode", "omega", "start_percent", "end_percent", "eta", "s_noise",
            "fade"}
# Nodes added after the port, with their advanced inputs.
NEW_NODES = {"SamplerLMLWrap": {"kappa", "damping_mode", "omega", "start_percent", "end_percent",
                                "fade"},
             "LMLSamplerLab": set(),
             "LMLCalibrate": {"base", "history", "move_timesteps", "heldout", "iterations",
                              "regularization", "trajectory", "reference_steps", "field",
                              "batch_size", "jacobian_rows", "linear_fits"},
             "SamplerLMLCalibrated": set(),
             "LMLCalibrateSigmas": {"heldout", "iterations", "regularization",
                                    "reference_steps", "batch_size"},
             "SigmasLMLCalibrated": set()}
WRAP_INPUTS = ["sampler", "rank", "damping", "fade", "kappa", "damping_mode", "omega",
               "start_percent", "end_percent"]  # since the node was added: never reorder


def entrypoint_nodes(pack):
    """The classes ComfyUI's loader gets: comfy_entrypoint() -> ComfyExtension.get_node_list()."""
    import asyncio

    from comfy_api.latest import ComfyExtension

    extension = asyncio.run(pack.comfy_entrypoint())
    assert isinstance(extension, ComfyExtension)
    return asyncio.run(extension.get_node_list())


def test_the_pack_registers_through_comfy_entrypoint_only(pack):
    # The loader takes NODE_CLASS_MAPPINGS first when a package has it: none here.
    assert not hasattr(pack, "NODE_CLASS_MAPPINGS") and not hasattr(pack, "NODES_LIST")
    nodes = entrypoint_nodes(pack)
    assert nodes == list(pack.nodes.NODES)
    assert sorted(n.GET_SCHEMA().node_id for n in nodes) == sorted([*PRE_PORT_INPUTS,
                                                                    *NEW_NODES])


def test_every_node_is_a_v3_node_under_its_pre_port_id(pack):
    for node_class in entrypoint_nodes(pack):
        assert issubclass(node_class, io.ComfyNode)
        node_id = node_class.GET_SCHEMA().node_id
        info = node_class.GET_NODE_INFO_V1()  # what /object_info serves
        if node_id in PRE_PORT_INPUTS:
            assert info["input_order"] == {"required": PRE_PORT_INPUTS[node_id],
                                           "optional": APPENDED_INPUTS}, node_id
        if node_id == "SamplerLMLWrap":
            assert info["input_order"] == {"required": WRAP_INPUTS}


# The calibrating nodes' optional inputs, appended after their widgets (in this order: saved
# workflows store widget values by position, and one saved without them loads with defaults).
CALIBRATING_OPTIONAL = {"LMLCalibrate": ["field", "batch_size", "jacobian_rows", "linear_fits"],
                        "LMLCalibrateSigmas": ["batch_size"]}


def test_the_calibrating_nodes_optional_inputs_come_last(pack):
    for node_id, optional in CALIBRATING_OPTIONAL.items():
        info = pack.nodes.NODES_BY_ID[node_id].GET_NODE_INFO_V1()
        assert info["input_order"]["optional"] == optional, node_id
        assert not set(optional) & set(info["input_order"]["required"])
        assert info["input"]["optional"]["batch_size"][1]["default"] == 0  # auto
    jacobian_rows = pack.nodes.NODES_BY_ID["LMLCalibrate"].GET_NODE_INFO_V1()["input"][
        "optional"]["jacobian_rows"][1]
    assert jacobian_rows["default"] == pack.lml_core.CALIBRATE_DEFAULTS["jacobian_rows"] == 4
    assert (jacobian_rows["min"], jacobian_rows["max"]) == (0, 1024)
    linear_fits = pack.nodes.NODES_BY_ID["LMLCalibrate"].GET_NODE_INFO_V1()["input"][
        "optional"]["linear_fits"]
    assert linear_fits[0] == "BOOLEAN"
    assert linear_fits[1]["default"] is pack.lml_core.CALIBRATE_DEFAULTS["linear_fits"] is True


def test_every_lm_node_takes_every_user_settable_lm_option(pack):
    fields = set(pack.lml_core.DEFAULTS)  # LMOptions' fields
    for node_id in (*PRE_PORT_INPUTS, "SamplerLMLWrap"):
        info = pack.nodes.NODES_BY_ID[node_id].GET_NODE_INFO_V1()
        inputs = {*info["input"]["required"], *info["input"].get("optional", {})}
        assert fields <= inputs, (node_id, fields - inputs)


def test_advanced_flag_on_the_rarely_changed_inputs_only(pack):
    for node_id, node_class in pack.nodes.NODES_BY_ID.items():
        info = node_class.GET_NODE_INFO_V1()["input"]
        required = {**info["required"], **info.get("optional", {})}
        flagged = {name for name, spec in required.items()
                   if len(spec) > 1 and spec[1].get("advanced")}
        assert flagged == NEW_NODES.get(node_id, ADVANCED), node_id
        if "rank" in required:  # the LM nodes keep their main settings up front
            assert {"solver", "rank", "damping"}.isdisjoint(flagged)
        assert all(required[name][1]["advanced"] is True for name in flagged)


def test_advanced_helper_uses_the_hosts_own_option_when_it_has_one(pack):
    """0.3.75's io.Input has no ``advanced`` option (the flag goes through extra_dict); 0.33's
    has one (the helper sets it and leaves extra_dict alone). The host's own input takes its
    path; the other kind is made from it, so both paths run on every host."""
    advanced = pack.nodes.lm_settings.advanced
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
                  for node_id, cls in pack.nodes.NODES_BY_ID.items()}
    assert categories == {"KSamplerLML": ksampler, "LMLCompare": ksampler,
                          "SamplerLML": select, "SamplerLMLWrap": select,
                          "LMLSamplerLab": ksampler, "LMLCalibrate": ksampler,
                          "SamplerLMLCalibrated": select, "LMLCalibrateSigmas": ksampler,
                          "SigmasLMLCalibrated": select}


def test_categories_follow_the_host_not_a_fixed_name(load_pack, monkeypatch):
    """A host that moves its sampler nodes (0.3.75: "sampling", 0.33: "model/sampling") moves
    ours with them: a fresh load of the pack reads the categories again."""
    monkeypatch.setattr(importlib.import_module("nodes").KSampler, "CATEGORY", "moved/here")
    monkeypatch.setattr(importlib.import_module("comfy_extras.nodes_custom_sampler")
                        .KSamplerSelect, "CATEGORY", "moved/here/samplers")
    mappings = load_pack("comfyui_lml_moved").nodes.NODES_BY_ID
    assert mappings["KSamplerLML"].GET_SCHEMA().category == "moved/here"
    assert mappings["SamplerLML"].GET_SCHEMA().category == "moved/here/samplers"


def test_category_falls_back_when_the_host_has_no_such_node(pack):
    category = pack.nodes.sampler_nodes.builtin_category
    assert category("comfy_extras.nodes_custom_sampler", "NoSuchNode", "x/y") == "x/y"
    assert category("no_such_module_here", "KSampler", "sampling") == "sampling"


def test_validate_inputs_is_the_v3_hook(pack):
    node = pack.nodes.NODES_BY_ID["KSamplerLML"]
    from comfy_api.internal import first_real_override

    assert first_real_override(node, "validate_inputs") is not None  # what execution.py calls
    assert "end_percent" in node.validate_inputs(start_percent=0.0, end_percent=2.0)


@pytest.mark.parametrize("node_id, name, bad", [
    ("KSamplerLML", "solver", "heun"), ("SamplerLML", "damping_mode", "loose"),
    ("KSamplerLML", "scheduler", "nope"), ("LMLCompare", "baseline_sampler", "nope"),
    ("LMLCompare", "solver", "heun"), ("SamplerLMLWrap", "damping_mode", "loose"),
    ("LMLCalibrateSigmas", "sampler_name", "nope"), ("LMLCalibrateSigmas", "scheduler", "nope"),
])
def test_validate_inputs_checks_the_dropdowns(pack, node_id, name, bad):
    # ComfyUI 0.3.75 only checks V1 (list-typed) combos; V3 combos are checked here.
    node = pack.nodes.NODES_BY_ID[node_id]
    message = node.validate_inputs(**{name: bad})
    assert isinstance(message, str) and name in message and repr(bad) in message
    good = node.GET_NODE_INFO_V1()["input"]["required"][name][1]["options"][-1]
    assert node.validate_inputs(**{name: good}) is True
    assert node.validate_inputs(**{name: None}) is True  # a linked input: run time


CFG_NODES = ["KSamplerLML", "LMLCompare", "LMLSamplerLab", "LMLCalibrate",
             "LMLCalibrateSigmas"]


def test_the_cfg_nodes_are_every_node_with_a_cfg(pack):
    with_cfg = [node_id for node_id, node in pack.nodes.NODES_BY_ID.items()
                if "cfg" in node.GET_NODE_INFO_V1()["input"]["required"]]
    assert sorted(with_cfg) == sorted(CFG_NODES)


@pytest.mark.parametrize("node_id", CFG_NODES)
def test_a_nan_or_out_of_bounds_cfg_is_refused_naming_cfg(pack, sd15, conds, host_call,
                                                          node_id):
    """ComfyUI's bounds check lets NaN through (NaN compares false) and skips an input that
    validate_inputs names: the node checks cfg against its widget's bounds; a linked cfg (not
    known at validation) is refused when the node runs, before any model call."""
    node = pack.nodes.NODES_BY_ID[node_id]
    validate = lambda cfg: host_call(node, "validate_inputs", cfg=cfg)
    assert validate(float("nan")) == "cfg must be a number, got nan"
    assert validate(float("inf")) == "cfg must be between 0 and 100, got inf"
    assert validate(-0.5) == "cfg must be between 0 and 100, got -0.5"
    assert validate(0.0) is True and validate(100.0) is True and validate(None) is True

    calls, model = [], sd15[0].clone()
    model.set_model_unet_function_wrapper(
        lambda apply, args: calls.append(1) or apply(args["input"], args["timestep"], **args["c"]))
    info = node.GET_NODE_INFO_V1()["input"]
    inputs = {name: spec[1]["default"] for section in ("required", "optional")
              for name, spec in info.get(section, {}).items()
              if len(spec) > 1 and "default" in spec[1]}
    inputs.update(model=model, positive=conds[0], negative=conds[1], vae=sd15[2], steps=2,
                  scheduler="karras", latent_image={"samples": torch.zeros([1, 4, 8, 8])},
                  cfg=float("nan"))
    inputs = {name: value for name, value in inputs.items()
              if name in {*info["required"], *info.get("optional", {})}}
    with pytest.raises(ValueError, match="^cfg must be a number, got nan$"):
        host_call(node, "execute", **inputs)
    assert calls == []


def test_each_node_validates_only_its_own_inputs(pack):
    # ComfyUI passes validate_inputs the inputs its signature names: each names its own.
    import inspect

    for node_id, node in pack.nodes.NODES_BY_ID.items():
        info = node.GET_NODE_INFO_V1()
        inputs = {*info["input"]["required"], *info["input"].get("optional", {})}
        named = set(inspect.signature(node.validate_inputs).parameters)
        assert named <= inputs, (node_id, named - inputs)


@pytest.mark.parametrize("node_id", ["KSamplerLML", "LMLCompare"])
def test_dropdowns_list_what_the_host_lists(pack, node_id):
    import comfy.samplers

    required = pack.nodes.NODES_BY_ID[node_id].GET_NODE_INFO_V1()["input"]["required"]
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


def test_one_class_per_name_in_the_loaded_pack(pack):
    # Every module of the pack is reached one way (relative imports inside the package), so
    # the LMOptions a node builds is the class the pack's samplers check for, and ComfyUI's
    # own top-level `nodes` module is not shadowed by the pack's nodes/ package.
    import sys

    lm_settings = pack.nodes.lm_settings
    assert lm_settings.LMOptions is pack.lml_core.LMOptions
    assert pack.nodes.bridge.SAMPLERS is pack.lml_core.SAMPLERS
    options = lm_settings.sampler_options("euler", **{
        "rank": 1, "damping": -1.0, "kappa": 0.5, "damping_mode": "relative", "omega": 0.75,
        "start_percent": 0.0, "end_percent": 1.0, "eta": 1.0, "s_noise": 1.0})
    assert pack.lml_core.LMOptions.for_sampler("lml_euler", options["lm"]) is options["lm"]
    assert hasattr(sys.modules["nodes"], "KSampler")  # ComfyUI's nodes.py
    assert sys.modules["nodes"] is not pack.nodes
