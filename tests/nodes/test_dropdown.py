"""The LML names in ComfyUI's built-in sampler lists: appended once, never reordered, also when
the pack is loaded twice or another pack edits the same lists."""

import comfy.k_diffusion.sampling as k_diffusion_sampling
import comfy.samplers
import pytest

LML_NAMES = ["lml_euler", "lml_dpmpp_2m", "lml_euler_ancestral"]


def sampler_lists():
    return {"KSAMPLER_NAMES": comfy.samplers.KSAMPLER_NAMES,
            "SAMPLER_NAMES": comfy.samplers.SAMPLER_NAMES,
            "KSampler.SAMPLERS": comfy.samplers.KSampler.SAMPLERS}


@pytest.fixture
def pristine():
    """ComfyUI's lists and sampler functions without any LML entry; restored afterwards."""
    saved_lists = {name: list(names) for name, names in sampler_lists().items()}
    saved_samplers_object = comfy.samplers.KSampler.SAMPLERS
    saved_attrs = {name: getattr(k_diffusion_sampling, f"sample_{name}", None)
                   for name in LML_NAMES}
    for names in sampler_lists().values():
        names[:] = [n for n in names if n not in LML_NAMES]
    for name in LML_NAMES:
        if hasattr(k_diffusion_sampling, f"sample_{name}"):
            delattr(k_diffusion_sampling, f"sample_{name}")
    builtin = {name: list(names) for name, names in sampler_lists().items()}
    yield builtin
    comfy.samplers.KSampler.SAMPLERS = saved_samplers_object
    comfy.samplers.KSAMPLER_NAMES[:] = saved_lists["KSAMPLER_NAMES"]
    comfy.samplers.SAMPLER_NAMES[:] = saved_lists["SAMPLER_NAMES"]
    saved_samplers_object[:] = saved_lists["KSampler.SAMPLERS"]
    for name, fn in saved_attrs.items():
        if fn is None:
            if hasattr(k_diffusion_sampling, f"sample_{name}"):
                delattr(k_diffusion_sampling, f"sample_{name}")
        else:
            setattr(k_diffusion_sampling, f"sample_{name}", fn)


def test_loading_appends_each_name_once_at_the_end(pristine, load_pack):
    load_pack("lml_pack_first")
    for list_name, names in sampler_lists().items():
        assert names == pristine[list_name] + LML_NAMES, list_name
    for name in LML_NAMES:
        fn = getattr(k_diffusion_sampling, f"sample_{name}")
        assert fn.lml_sampler == name
        assert comfy.samplers.ksampler(name).sampler_function is fn
        assert comfy.samplers.sampler_object(name).sampler_function is fn


def test_loading_twice_adds_nothing(pristine, load_pack):
    load_pack("lml_pack_first")
    after_first = {name: list(names) for name, names in sampler_lists().items()}
    functions = {name: getattr(k_diffusion_sampling, f"sample_{name}") for name in LML_NAMES}
    second = load_pack("lml_pack_second")
    assert second.nodes.register_dropdown_samplers() == []
    assert {name: list(names) for name, names in sampler_lists().items()} == after_first
    for name in LML_NAMES:  # the first registration stays in place
        assert getattr(k_diffusion_sampling, f"sample_{name}") is functions[name]


def test_another_pack_editing_the_same_lists(pristine, load_pack):
    load_pack("lml_pack_first")
    # Another pack appends to both lists and rebinds KSampler.SAMPLERS to a list of its own.
    comfy.samplers.KSAMPLER_NAMES.append("other_pack_sampler")
    comfy.samplers.SAMPLER_NAMES.append("other_pack_sampler")
    comfy.samplers.KSampler.SAMPLERS = comfy.samplers.SAMPLER_NAMES + ["third_pack_sampler"]
    # ... and one list loses our names (a pack that rebuilds it from ComfyUI's defaults).
    comfy.samplers.KSAMPLER_NAMES[:] = [n for n in comfy.samplers.KSAMPLER_NAMES
                                        if n not in LML_NAMES]
    expected = {
        "KSAMPLER_NAMES": pristine["KSAMPLER_NAMES"] + ["other_pack_sampler"] + LML_NAMES,
        "SAMPLER_NAMES": pristine["SAMPLER_NAMES"] + LML_NAMES + ["other_pack_sampler"],
        "KSampler.SAMPLERS": (pristine["SAMPLER_NAMES"] + LML_NAMES
                              + ["other_pack_sampler", "third_pack_sampler"]),
    }
    load_pack("lml_pack_second")
    load_pack("lml_pack_third")
    assert {name: list(names) for name, names in sampler_lists().items()} == expected
    for names in sampler_lists().values():
        for name in LML_NAMES:
            assert names.count(name) == 1


def test_a_foreign_sample_attribute_is_left_alone(pristine, load_pack):
    def foreign(model, x, sigmas, extra_args=None, callback=None, disable=None):
        return x

    k_diffusion_sampling.sample_lml_euler = foreign
    load_pack("lml_pack_first")
    assert k_diffusion_sampling.sample_lml_euler is foreign
    assert k_diffusion_sampling.sample_lml_dpmpp_2m.lml_sampler == "lml_dpmpp_2m"
