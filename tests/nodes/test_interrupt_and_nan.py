"""KSamplerLML in-process: an interrupted run leaves no state behind (the next run equals a
fresh run bit for bit), and a model that returns NaN is reported, never returned."""

import comfy.model_management
import pytest
import torch


def ksampler_lml(pack, model, conds, seed=3, steps=5, **changes):
    node_class = pack.nodes.NODES_BY_ID["KSamplerLML"]
    required = node_class.INPUT_TYPES()["required"]
    inputs = {name: spec[1]["default"] for name, spec in required.items()
              if len(spec) > 1 and "default" in spec[1]}
    inputs.update(model=model, seed=seed, steps=steps, cfg=5.0, solver="euler",
                  scheduler="karras", positive=conds[0], negative=conds[1],
                  latent_image={"samples": torch.zeros([2, 4, 8, 8])}, denoise=1.0)
    inputs.update(changes)
    return node_class.execute(**inputs).result[0]["samples"]


def wrapped(model, on_call):
    """A clone of the ModelPatcher whose UNet calls go through ``on_call(n, apply, args)``."""
    calls = {"n": 0}

    def wrapper(apply_model, args):
        calls["n"] += 1
        return on_call(calls["n"], apply_model, args)

    clone = model.clone()
    clone.set_model_unet_function_wrapper(wrapper)
    return clone


def module_state(pack):
    modules = [pack.nodes, pack.nodes.sampler_nodes, pack.nodes.bridge]
    return [{k: v for k, v in vars(m).items() if not k.startswith("__")} for m in modules]


@pytest.mark.parametrize("solver", ["euler", "dpmpp_2m", "euler_ancestral"])
def test_interrupted_run_leaves_no_state(pack, sd15, conds, solver):
    model = sd15[0]
    fresh = ksampler_lml(pack, model, conds, solver=solver)
    state_before = module_state(pack)

    def interrupt_at_third_call(n, apply_model, args):
        if n == 3:  # what POST /interrupt does, seen from inside sampling
            comfy.model_management.interrupt_current_processing(True)
            comfy.model_management.throw_exception_if_processing_interrupted()
        return apply_model(args["input"], args["timestep"], **args["c"])

    with pytest.raises(comfy.model_management.InterruptProcessingException):
        ksampler_lml(pack, wrapped(model, interrupt_at_third_call), conds, solver=solver)
    assert not comfy.model_management.processing_interrupted()  # the exception cleared it

    again = ksampler_lml(pack, model, conds, solver=solver)
    assert torch.equal(again, fresh)
    assert module_state(pack).__repr__() == state_before.__repr__()


def test_nan_from_the_model_is_reported_with_its_step(pack, sd15, conds):
    def nan_at_fourth_call(n, apply_model, args):
        out = apply_model(args["input"], args["timestep"], **args["c"])
        return out * float("nan") if n == 4 else out

    with pytest.raises(FloatingPointError, match=r"step 4 of 5"):
        ksampler_lml(pack, wrapped(sd15[0], nan_at_fourth_call), conds)
