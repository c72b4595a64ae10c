"""Sampler LML Wrap in-process: around ComfyUI's own samplers (KSamplerSelect's SAMPLER objects)
through comfy.sample with a real ModelPatcher."""

import comfy.samplers
import pytest
import torch

BASES = ("euler", "ipndm_v", "dpmpp_2m_sde", "euler_ancestral")


def wrap(pack, sampler, **changes):
    node = pack.nodes.NODES_BY_ID["SamplerLMLWrap"]
    options = {"rank": 1, "damping": 1.0, "fade": 0.0, "kappa": 0.5,
               "damping_mode": "relative", "omega": 0.75, "start_percent": 0.0,
               "end_percent": 1.0, **changes}
    return node.execute(sampler=sampler, **options).result[0]


@pytest.mark.parametrize("base", BASES)
def test_wrapping_a_builtin_sampler(pack, sample_custom, base):
    builtin = comfy.samplers.sampler_object(base)
    plain = sample_custom(builtin)
    # off (empty step window): bitwise ComfyUI's own sampler, through ComfyUI's own path
    off = sample_custom(wrap(pack, builtin, start_percent=1.0, end_percent=1.0))
    assert torch.equal(off, plain)
    corrected = sample_custom(wrap(pack, builtin))
    assert torch.isfinite(corrected).all() and not torch.equal(corrected, plain)
    # no state across runs: the same prompt again gives the same latent
    assert torch.equal(sample_custom(wrap(pack, builtin)), corrected)


def test_wrap_node_defaults_are_the_wrap_defaults(pack):
    WRAP_DEFAULTS = pack.lml_core.WRAP_DEFAULTS
    schema = pack.nodes.NODES_BY_ID["SamplerLMLWrap"].define_schema()
    defaults = {inp.id: inp.default for inp in schema.inputs if hasattr(inp, "default")}
    for name in ("rank", "damping", "fade", "kappa", "damping_mode", "start_percent",
                 "end_percent"):
        assert defaults[name] == WRAP_DEFAULTS[name], name


def test_wrap_node_rejects_what_it_cannot_wrap(pack):
    class NotAKSampler(comfy.samplers.Sampler):
        def sample(self, *args, **kwargs):
            raise AssertionError("not called")

    with pytest.raises(ValueError, match="cannot wrap a NotAKSampler"):
        wrap(pack, NotAKSampler())
    with pytest.raises(ValueError, match="damping"):
        wrap(pack, comfy.samplers.sampler_object("euler"), damping=float("nan"))
