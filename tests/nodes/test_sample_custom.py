"""SamplerLML's KSAMPLER and KSamplerLML in-process, through comfy.sample with a real
ModelPatcher (the random-weight SD1.5-layout test checkpoint)."""

import math

import comfy.k_diffusion.sampling as k_diffusion_sampling
import comfy.sample
import comfy.samplers
import pytest
import torch

STEPS = 4


def widget_defaults(node_class):
    types = node_class.INPUT_TYPES()
    inputs = {**types["required"], **types.get("optional", {})}
    return {name: spec[1]["default"] for name, spec in inputs.items()
            if len(spec) > 1 and "default" in spec[1]}


def lml_sampler(pack, **changes):
    node = pack.nodes.NODES_BY_ID["SamplerLML"]
    options = {**widget_defaults(node), **changes}
    return node.execute(**options).result[0]


def sample(sd15, conds, sampler, seed=0, latent=None, mask=None, callback=None, steps=STEPS,
           cfg=5.0):
    model = sd15[0]
    if latent is None:
        latent = torch.zeros([1, 4, 8, 8])
    noise = comfy.sample.prepare_noise(latent, seed)
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"),
                                             "karras", steps)
    positive, negative = conds
    return comfy.sample.sample_custom(model, noise, cfg, sampler, sigmas, positive, negative,
                                      latent, noise_mask=mask, callback=callback,
                                      disable_pbar=True, seed=seed)


def test_callback_fires_once_per_step(pack, sd15, conds):
    calls = []
    out = sample(sd15, conds, lml_sampler(pack, solver="dpmpp_2m"),
                 callback=lambda step, x0, x, total: calls.append((step, total, x0.shape)))
    assert [c[0] for c in calls] == list(range(STEPS))
    assert {c[1] for c in calls} == {STEPS}
    assert all(shape == out.shape for *_, shape in calls)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("solver", ["euler", "dpmpp_2m"])
def test_lml_differs_from_the_plain_solver_and_huge_damping_matches_it(solver, pack, sd15,
                                                                        conds):
    plain = sample(sd15, conds, comfy.samplers.ksampler(solver))
    lml = sample(sd15, conds, lml_sampler(pack, solver=solver, rank=2, damping=0.5,
                                          kappa=1.0, omega=0.75))
    damped = sample(sd15, conds, lml_sampler(pack, solver=solver, rank=2, damping=1e9,
                                             kappa=1.0, omega=0.75))
    scale = plain.abs().max().item()
    assert scale > 0.1
    assert (lml - plain).abs().max().item() > 1e-2 * scale
    assert torch.allclose(damped, plain, rtol=0, atol=1e-4 * scale)


def test_ancestral_is_seeded_by_the_prompt_seed(pack, sd15, conds):
    sampler = lml_sampler(pack, solver="euler_ancestral")
    first, again = (sample(sd15, conds, sampler, seed=7) for _ in range(2))
    other = sample(sd15, conds, sampler, seed=8)
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)


def test_dropdown_names_run_with_lml_core_defaults(pack, sd15, conds):
    for name in ("lml_euler", "lml_dpmpp_2m"):
        defaults = pack.lml_core.SOLVER_DEFAULTS[name]
        omega = -1.0 if defaults["omega"] == "auto" else defaults["omega"]
        via_dropdown = sample(sd15, conds, comfy.samplers.sampler_object(name))
        via_node = sample(sd15, conds, lml_sampler(
            pack, solver=name[len("lml_"):], rank=max(1, defaults["rank"]),
            damping=defaults["damping"], kappa=defaults["kappa"],
            damping_mode=defaults["damping_mode"], omega=omega,
            start_percent=defaults["start_percent"], end_percent=defaults["end_percent"]))
        assert torch.equal(via_dropdown, via_node), name
    assert k_diffusion_sampling.sample_lml_euler.lml_sampler == "lml_euler"


def test_mask_keeps_the_unmasked_latent(pack, sd15, conds):
    latent = torch.randn([1, 4, 8, 8], generator=torch.Generator().manual_seed(3))
    mask = torch.zeros([1, 1, 8, 8])
    mask[..., :4] = 1.0  # resample the left half
    lml = lml_sampler(pack, solver="euler", rank=2, damping=0.5)
    out = sample(sd15, conds, lml, latent=latent, mask=mask)
    scale = latent.abs().max().item()
    # only the float rounding of the latent scaling in and out may touch the kept half
    assert (out[..., 4:] - latent[..., 4:]).abs().max().item() <= 1e-6 * scale
    assert (out[..., :4] - latent[..., :4]).abs().max().item() > 1e-2 * scale

    # Why nodes/bridge.py copies the kept region back: the LM correction acts on the whole
    # latent, so lml_core alone moves the kept half at the last step.
    core_only = comfy.samplers.KSAMPLER(pack.lml_core.sample_lml_euler,
                                        extra_options={"rank": 2, "damping": 0.5})
    raw = sample(sd15, conds, core_only, latent=latent, mask=mask)
    assert (raw[..., 4:] - latent[..., 4:]).abs().max().item() > 1e-4 * scale


def test_ksampler_lml_node_batch_and_diagnostics(pack, sd15, conds):
    node = pack.nodes.NODES_BY_ID["KSamplerLML"]
    options = {**widget_defaults(node), "steps": 3, "cfg": 4.0, "solver": "dpmpp_2m",
               "scheduler": "karras"}
    positive, negative = conds
    latent = {"samples": torch.zeros([2, 4, 8, 8])}
    result = node.execute(model=sd15[0], positive=positive, negative=negative,
                          latent_image=latent, **{**options, "seed": 5})
    (out,) = result.result
    assert out["samples"].shape == (2, 4, 8, 8) and torch.isfinite(out["samples"]).all()
    assert not torch.allclose(out["samples"][0], out["samples"][1])  # per-sample noise
    (diagnostics,) = result.ui["lml_diagnostics"]
    assert diagnostics["solver"] == "dpmpp_2m"
    assert len(diagnostics["sigmas"]) == len(diagnostics["strength"]) == 3
    assert diagnostics["strength"][0] == 0.0
    assert all(0.0 <= s <= 2.0 and math.isfinite(s) for s in diagnostics["strength"])

    # denoise 0: nothing to do, the input latent comes back and there are no steps
    result = node.execute(model=sd15[0], positive=positive, negative=negative,
                          latent_image=latent, **{**options, "seed": 5, "denoise": 0.0})
    assert torch.equal(result.result[0]["samples"], latent["samples"])
    assert result.ui["lml_diagnostics"][0]["strength"] == []


def test_node_functions_reject_what_lml_core_rejects(pack):
    samplers = pack.nodes.sampler_nodes
    options = widget_defaults(samplers.SamplerLML)
    with pytest.raises(ValueError, match="damping"):
        samplers.SamplerLML.execute(**{**options, "damping": float("nan")})
    with pytest.raises(ValueError, match="solver"):
        samplers.SamplerLML.execute(**{**options, "solver": "heun"})
    sampler = samplers.SamplerLML.execute(**{**options, "omega": -1.0}).result[0]
    assert sampler.extra_options["lm"].omega == "auto"
    assert "eta" not in sampler.extra_options  # only the ancestral solver takes eta/s_noise
    sampler = samplers.SamplerLML.execute(**{**options, "solver": "euler_ancestral",
                                               "eta": 0.5}).result[0]
    assert sampler.extra_options["eta"] == 0.5


def test_validate_inputs_names_the_input(pack):
    validate = pack.nodes.sampler_nodes.KSamplerLML.validate_inputs
    assert validate(start_percent=0.0, end_percent=1.0) is True
    assert validate(start_percent=0.5, end_percent=None) is True  # a linked input: run time
    assert "start_percent" in validate(start_percent=0.8, end_percent=0.2)
    assert "end_percent" in validate(start_percent=0.0, end_percent=1.5)
    assert "start_percent" in validate(start_percent=float("nan"), end_percent=1.0)


def test_widget_defaults_are_lml_core_defaults_within_bounds(pack):
    defaults = pack.lml_core.DEFAULTS
    for node_name in ("SamplerLML", "KSamplerLML", "LMLCompare"):
        types = pack.nodes.NODES_BY_ID[node_name].INPUT_TYPES()
        inputs = {**types["required"], **types.get("optional", {})}
        for name, (kind, options) in ((n, (s[0], s[1])) for n, s in inputs.items()
                                      if len(s) > 1):
            if "default" not in options:
                continue
            if kind == "COMBO":
                assert options["default"] in options["options"], (node_name, name)
            elif "min" in options:
                assert options["min"] <= options["default"] <= options["max"], (node_name, name)
        for name in ("kappa", "damping_mode", "start_percent", "end_percent"):
            assert inputs[name][1]["default"] == defaults[name], (node_name, name)
        # damping and fade default to auto: the solver's measured setting
        assert inputs["damping"][1]["default"] < 0 and inputs["fade"][1]["default"] < 0
        omega = inputs["omega"][1]["default"]
        assert omega == defaults["omega"] or (defaults["omega"] == "auto" and omega < 0)


@pytest.mark.parametrize("solver", ["euler", "dpmpp_2m", "euler_ancestral"])
def test_auto_damping_and_fade_are_the_solvers_measured_setting(pack, solver):
    # KSampler (LML)'s euler_ancestral runs with the Langevin defaults (damping 10, fade 5),
    # euler with damping 1, fade 0, from the same widget defaults.
    core = pack.lml_core
    measured = core.SOLVER_DEFAULTS[f"lml_{solver}"]
    for node_name in ("SamplerLML", "KSamplerLML", "LMLCompare"):
        node = pack.nodes.NODES_BY_ID[node_name]
        values = {**widget_defaults(node), "solver": solver}
        lm_values = {k: v for k, v in values.items() if k in pack.nodes.lm_settings.SETTINGS}
        lm = pack.nodes.lm_settings.sampler_options(solver, **lm_values)["lm"]
        assert (lm.damping, lm.fade) == (measured["damping"], measured["fade"]), node_name
    assert core.SOLVER_DEFAULTS["lml_euler_ancestral"]["fade"] > 0
    # an explicit value wins; an API prompt saved before fade existed means auto
    sampler_node = pack.nodes.NODES_BY_ID["SamplerLML"]
    values = {**widget_defaults(sampler_node), "solver": solver, "damping": 2.0, "fade": 1.0}
    lm = sampler_node.execute(**values).result[0].extra_options["lm"]
    assert (lm.damping, lm.fade) == (2.0, 1.0)
    del values["fade"]
    lm = sampler_node.execute(**values).result[0].extra_options["lm"]
    assert lm.fade == measured["fade"]


@pytest.mark.parametrize("node_name", ["SamplerLML", "KSamplerLML", "LMLCompare",
                                       "SamplerLMLWrap"])
def test_validate_inputs_checks_damping_and_fade_with_auto(pack, node_name):
    # Naming them in validate_inputs makes ComfyUI skip its own bounds check: done here.
    validate = pack.nodes.NODES_BY_ID[node_name].validate_inputs
    assert validate(damping=-1.0, fade=-1.0) is True  # auto
    assert validate(damping=0.5, fade=0.0) is True
    for bad in ({"damping": 0.0}, {"damping": -0.5}, {"damping": -2.0}, {"fade": -0.5},
                {"fade": 11.0}, {"damping": float("nan")}):
        (name,) = bad
        message = validate(**bad)
        assert isinstance(message, str) and message.startswith(name), (bad, message)
