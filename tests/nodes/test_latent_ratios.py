"""Latent downscale ratios (``downscale_ratio_spacial`` / ``downscale_ratio_temporal``, set by
newer empty-latent nodes): the pack's nodes pass them to ``comfy.sample.fix_empty_latent_channels``
where the host's function takes them, as core's common_ksampler and SamplerCustom do, and drop
them from the output latent.

Each host's own function runs for real, beside core's KSampler: 0.3.75's takes (model,
latent_image) only, so a ratio changes nothing; 0.33's takes both ratios (upstream's newest
semantics: an all-zero latent is resized by ratio / the model's own ratio). The other signatures
are exercised by putting, for one test, a function with those semantics in the host's place:
the newest one only where the host lacks it (a stand-in of comfy/sample.py as of 0.33/0.38),
the intermediate spatial-only one on every host."""

import functools
import inspect

import comfy.sample
import comfy.utils
import torch

RATIO_KEYS = ("downscale_ratio_spacial", "downscale_ratio_temporal")


def host_takes(*keys):
    parameters = inspect.signature(comfy.sample.fix_empty_latent_channels).parameters
    return all(key in parameters for key in keys)


def recorded(function, calls):
    """``function`` (same signature) with the ratios of each call appended to ``calls``."""
    names = [key for key in RATIO_KEYS if key in inspect.signature(function).parameters]

    @functools.wraps(function)
    def fix_empty_latent_channels(model, latent_image, *args, **kwargs):
        given = {**dict(zip(names, args)), **kwargs}
        calls.append(tuple(given.get(name) for name in names))
        return function(model, latent_image, *args, **kwargs)

    return fix_empty_latent_channels


def newest_fix_empty_latent_channels(calls):
    """The newest semantics: the host's own function where it has them (0.33), else a stand-in
    of upstream's (spatial part) on top of the host's one. 0.3.75's LatentFormat has no
    spacial_downscale_ratio: SD1.5's is 8."""
    original = comfy.sample.fix_empty_latent_channels
    if host_takes(*RATIO_KEYS):
        return recorded(original, calls)

    def fix_empty_latent_channels(model, latent_image, downscale_ratio_spacial=None,
                                  downscale_ratio_temporal=None):
        calls.append((downscale_ratio_spacial, downscale_ratio_temporal))
        is_empty = torch.count_nonzero(latent_image) == 0
        model_ratio = getattr(model.get_model_object("latent_format"),
                              "spacial_downscale_ratio", 8)
        if is_empty and downscale_ratio_spacial is not None and (
                downscale_ratio_spacial != model_ratio):
            ratio = downscale_ratio_spacial / model_ratio
            latent_image = comfy.utils.common_upscale(
                latent_image, round(latent_image.shape[-1] * ratio),
                round(latent_image.shape[-2] * ratio), "nearest-exact", crop="disabled")
        return original(model, latent_image)

    return fix_empty_latent_channels


def spatial_only_fix_empty_latent_channels(original, calls):
    """The intermediate upstream signature (spatial ratio only)."""

    def fix_empty_latent_channels(model, latent_image, downscale_ratio_spacial=None):
        calls.append((downscale_ratio_spacial,))
        return original(model, latent_image)

    return fix_empty_latent_channels


def widget_defaults(node_class):
    required = node_class.INPUT_TYPES()["required"]
    return {name: spec[1]["default"] for name, spec in required.items()
            if len(spec) > 1 and "default" in spec[1]}


def run_ksampler_lml(pack, sd15, conds, latent, steps=2, **changes):
    node = pack.nodes.NODES_BY_ID["KSamplerLML"]
    options = {**widget_defaults(node), "steps": steps, "cfg": 4.0, "scheduler": "karras",
               "seed": 11, **changes}
    result = node.execute(model=sd15[0], positive=conds[0], negative=conds[1],
                          latent_image=latent, **options)
    return result.result[0]


def core_ksampler(sd15, conds, latent, denoise=1.0):
    import nodes as host_nodes

    return host_nodes.common_ksampler(sd15[0], 11, 2, 4.0, "euler", "karras", conds[0],
                                      conds[1], latent, denoise=denoise)[0]


def test_on_every_host_a_ratio_does_what_the_hosts_own_ksampler_does(pack, sd15, conds,
                                                                      monkeypatch):
    calls = []
    monkeypatch.setattr(comfy.sample, "fix_empty_latent_channels",
                        recorded(comfy.sample.fix_empty_latent_channels, calls))
    zeros = torch.zeros([1, 4, 8, 8])
    start = torch.randn([1, 4, 8, 8], generator=torch.Generator().manual_seed(2))
    cases = [({"samples": zeros, "downscale_ratio_spacial": 16}, 1.0),
             ({"samples": zeros, "downscale_ratio_spacial": 8, "downscale_ratio_temporal": 1},
              1.0),
             ({"samples": zeros, "batch_index": [0], "downscale_ratio_spacial": 16,
               "downscale_ratio_temporal": 4}, 1.0),
             ({"samples": start, "downscale_ratio_spacial": 16}, 0.5)]  # img2img
    for latent, denoise in cases:
        calls.clear()
        core = core_ksampler(sd15, conds, latent, denoise)
        core_calls = list(calls)
        calls.clear()
        ours = run_ksampler_lml(pack, sd15, conds, latent, denoise=denoise)
        assert calls == core_calls, latent  # the same ratios reach the host's function
        assert ours["samples"].shape == core["samples"].shape, latent
        assert set(ours) == set(latent) - set(RATIO_KEYS), latent  # ratios dropped, rest kept
        assert set(RATIO_KEYS) & set(latent)  # the input dict is not modified

    # The host's semantics: 0.33 sizes an empty latent made for a /16 grid for this /8 model;
    # 0.3.75 ignores the ratio.
    out = run_ksampler_lml(pack, sd15, conds, {"samples": zeros, "downscale_ratio_spacial": 16})
    assert out["samples"].shape[-2:] == ((16, 16) if host_takes(RATIO_KEYS[0]) else (8, 8))


def test_newest_host_gets_both_ratios_like_core_and_sizes_the_latent(pack, sd15, conds,
                                                                      monkeypatch):
    calls = []
    monkeypatch.setattr(comfy.sample, "fix_empty_latent_channels",
                        newest_fix_empty_latent_channels(calls))
    zeros = torch.zeros([1, 4, 8, 8])
    out = run_ksampler_lml(pack, sd15, conds, {"samples": zeros, "downscale_ratio_spacial": 16})
    # What core's common_ksampler passes: latent.get(...) of both keys, None when missing.
    assert calls == [(16, None)]
    assert out["samples"].shape == (1, 4, 16, 16)  # sized for a /16 grid on this /8 model
    assert not set(RATIO_KEYS) & set(out)

    calls.clear()
    out = run_ksampler_lml(pack, sd15, conds, {"samples": zeros, "downscale_ratio_spacial": 8,
                                               "downscale_ratio_temporal": 1})
    assert calls == [(8, 1)] and out["samples"].shape == (1, 4, 8, 8)

    # A latent that is not empty (img2img) is never resized.
    calls.clear()
    start = torch.randn([1, 4, 8, 8], generator=torch.Generator().manual_seed(2))
    out = run_ksampler_lml(pack, sd15, conds, {"samples": start, "downscale_ratio_spacial": 16},
                           denoise=0.5)
    assert calls == [(16, None)] and out["samples"].shape == (1, 4, 8, 8)


def test_intermediate_host_gets_the_spatial_ratio_only(pack, sd15, conds, monkeypatch):
    calls = []
    monkeypatch.setattr(comfy.sample, "fix_empty_latent_channels",
                        spatial_only_fix_empty_latent_channels(
                            comfy.sample.fix_empty_latent_channels, calls))
    out = run_ksampler_lml(pack, sd15, conds, {"samples": torch.zeros([1, 4, 8, 8]),
                                               "downscale_ratio_spacial": 16,
                                               "downscale_ratio_temporal": 4})
    assert calls == [(16,)]
    assert not set(RATIO_KEYS) & set(out)


def test_lml_compare_samples_the_latent_the_ratio_asks_for(pack, sd15, conds, monkeypatch):
    calls = []
    monkeypatch.setattr(comfy.sample, "fix_empty_latent_channels",
                        newest_fix_empty_latent_channels(calls))
    node = pack.nodes.NODES_BY_ID["LMLCompare"]
    options = {**widget_defaults(node), "steps": 2, "cfg": 4.0, "seed": 3}
    result = node.execute(model=sd15[0], positive=conds[0], negative=conds[1], vae=sd15[2],
                          latent_image={"samples": torch.zeros([1, 4, 8, 8]),
                                        "downscale_ratio_spacial": 16}, **options)
    (grid,) = result.result
    assert calls == [(16, None)] * 2  # each panel is prepared as KSampler prepares its run
    # a 16x16 latent decodes to 128 px, shown at 256 px; the comparison is two panels side by
    # side under their label band
    assert grid.shape[0] == 1 and grid.shape[2:] == (512, 3)
    assert 256 < grid.shape[1] < 256 + 128


def test_signature_check_reads_the_hosts_parameters(pack):
    # The parameter names core uses, in both the newest and the intermediate signature.
    newest = newest_fix_empty_latent_channels([])
    assert list(inspect.signature(newest).parameters)[2:] == list(RATIO_KEYS)
    assert pack.nodes.bridge.LATENT_RATIO_KEYS == RATIO_KEYS


