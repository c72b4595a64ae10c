"""The bridge between lml_core's sampler loops and ComfyUI's sampling path.

ComfyUI calls a sampler function as ``fn(model, x, sigmas, extra_args, callback, disable,
**extra_options)`` where ``model`` is a ``KSamplerX0Inpaint`` (it holds ``latent_image``) and
``extra_args["denoise_mask"]`` is the inpainting mask (1 = resample, 0 = keep), already shaped
like ``x``.  The model blends the kept region back in before and after every call, so the kept
region of the *denoised* estimate is always the input latent.  The LM correction, however, mixes
directions over the whole latent (it is a low-rank operator on the flattened tensor), so the last
step can move the kept region a little.  ``comfy_sampler`` therefore ends every masked run that
reaches sigma 0 by copying the kept region from the input latent: the unmasked region comes back
exactly as it went in, as users expect from the built-in samplers.

``run_ksampler`` is the one way the nodes prepare and run a KSampler-style sampling.
"""

from __future__ import annotations

import functools
import inspect
import math

import torch

from ..lml_core import (
    SAMPLERS,
    expected_nfe,
    is_stochastic,
    lml_wrap,
    sample_lml_calibrated,
    samplers_of_kind,
)
from ..lml_core.calibration import calibration_list


def _keep_unmasked(model, samples, sigmas, extra_args):
    """Copy the kept region (mask 0) of the input latent into a finished masked run."""
    mask = (extra_args or {}).get("denoise_mask")
    latent_image = getattr(model, "latent_image", None)
    if mask is None or latent_image is None or float(sigmas[-1]) != 0.0:
        return samples
    mask = mask.to(device=samples.device, dtype=samples.dtype)
    latent_image = latent_image.to(device=samples.device, dtype=samples.dtype)
    return samples * mask + latent_image * (1.0 - mask)


def comfy_sampler(name: str, record=None):
    """The ComfyUI sampler function for the lml_core sampler ``name`` (e.g. "lml_euler").

    ``record``, when given, is called with lml_core's callback dict at every step (it carries the
    ``lml_cos`` diagnostics that ComfyUI's own callback wrapper drops)."""
    core = SAMPLERS[name]

    @functools.wraps(core)
    @torch.no_grad()
    def sample(model, x, sigmas, extra_args=None, callback=None, disable=None, **options):
        def step_callback(info):
            if record is not None:
                record(info)
            if callback is not None:
                callback(info)

        samples = core(model, x, sigmas, extra_args=extra_args, callback=step_callback,
                       disable=disable, **options)
        return _keep_unmasked(model, samples, sigmas, extra_args)

    sample.__name__ = f"sample_{name}"
    sample.__qualname__ = sample.__name__
    sample.lml_sampler = name  # marks the functions this pack registers
    return sample


def wrapped_sampler(sampler_function, lm):
    """The ComfyUI sampler function ``sampler_function`` with LML around its model calls
    (``lml_core.lml_wrap``); a masked run gets its kept region back as with our own samplers."""
    wrapped = lml_wrap(sampler_function, lm)

    @functools.wraps(sampler_function)
    def sample(model, x, sigmas, extra_args=None, callback=None, disable=None, **options):
        schedule = sigmas.clone()  # the sampler may edit ``sigmas`` in place (uni_pc does)
        samples = wrapped(model, x, sigmas, extra_args=extra_args, callback=callback,
                          disable=disable, **options)
        return _keep_unmasked(model, samples, schedule, extra_args)

    sample.lml_wrapped = sampler_function
    return sample


def host_sampler_function(name: str):
    """The host's own k-diffusion function for sampler ``name`` (what KSampler runs)."""
    import comfy.samplers

    return comfy.samplers.sampler_object(name).sampler_function


def calibration_samplers(steps: int) -> dict:
    """{name: (host function, its steps)} of the host's deterministic samplers at ``steps``
    model calls: the field LML Calibrate measures and may run (lml_core stays comfy-free); a
    sampler of several calls per step gets the most steps within them."""
    import comfy.samplers

    out = {}
    for name in samplers_of_kind("deterministic", comfy.samplers.KSampler.SAMPLERS):
        own = max((n for n in range(1, steps + 1) if expected_nfe(name, n) <= steps),
                  default=None)
        if own is not None:
            out[name] = (host_sampler_function(name), own)
    return out


def deterministic_counterpart(name: str):
    """Host sampler ``name`` without its fresh noise, for fitting timesteps: the function with
    ``eta`` and ``s_noise`` 0 where it takes them (an ancestral / SDE sampler then follows the
    probability-flow ODE its steps discretise), else euler; a deterministic one as it is."""
    import functools
    import inspect

    function = host_sampler_function(name)
    if not is_stochastic(name):
        return function
    accepts = inspect.signature(function).parameters
    quiet = {key: 0.0 for key in ("eta", "s_noise") if key in accepts}
    return functools.partial(function, **quiet) if quiet else host_sampler_function("euler")


def calibrated_sampler(calibration):
    """A KSAMPLER running ``lml_core.sample_lml_calibrated`` with ``calibration`` (the LML
    sampler, or the host sampler it names, on its own timesteps; a list: one per step count,
    the one of the schedule given runs); a masked run gets its kept region back as with the
    other LML samplers."""
    import comfy.samplers

    samplers = {}
    for each in calibration_list(calibration):
        if each.sampler in comfy.samplers.KSampler.SAMPLERS:
            samplers[each.sampler] = host_sampler_function(each.sampler)

    @torch.no_grad()
    def sample_lml_calibrated_run(model, x, sigmas, extra_args=None, callback=None,
                                  disable=None, calibration=None):
        samples = sample_lml_calibrated(model, x, sigmas, extra_args=extra_args,
                                        callback=callback, disable=disable,
                                        calibration=calibration, samplers=samplers)
        return _keep_unmasked(model, samples, sigmas, extra_args)

    return comfy.samplers.KSAMPLER(sample_lml_calibrated_run,
                                   extra_options={"calibration": calibration})


# ComfyUI's own margin: calc_cond_batch runs conds in one model call while their
# memory_required x 1.5 is below the free memory.
MEMORY_MARGIN = 1.5


def latents_per_noise(cfg: float, model_options=None) -> int:
    """The latents one noise puts in a model call: cond and uncond with guidance; the cond
    alone at cfg 1, where ComfyUI skips the uncond (unless disable_cfg1_optimization)."""
    if math.isclose(cfg, 1.0) and not (model_options or {}).get("disable_cfg1_optimization"):
        return 1
    return 2


def compute_dtype(base_model) -> torch.dtype:
    """The dtype the diffusion model computes in, as the host's apply_model picks it: its
    manual_cast_dtype where set, else its weights' (a float16 UNet hands the sampler float32
    latents: the calibration's finite-difference step must follow this, not the latent)."""
    return getattr(base_model, "manual_cast_dtype", None) or base_model.get_dtype()


def auto_batch_size(base_model, x, per_noise: int) -> tuple[int, str]:
    """(noises per model call, why) for the calibration noise ``x`` ([noises, ...] on the
    model's device): the most noises n whose ``base_model.memory_required([n * per_noise,
    ...])`` x MEMORY_MARGIN is below ComfyUI's free memory on that device (get_free_memory,
    read once the model is loaded), at least 1 and at most all of them.  ComfyUI's
    calc_cond_batch can split the conds of a call, not one cond's batch: this is what keeps
    the calibration's batch within the memory (it reads free RAM on the CPU, as ComfyUI does)."""
    import comfy.model_management

    free = comfy.model_management.get_free_memory(x.device)
    rows = int(x.shape[0])

    def fits(n):
        return base_model.memory_required([n * per_noise, *x.shape[1:]]) * MEMORY_MARGIN < free

    low, high = 1, rows  # the most that fit, by bisection (memory_required grows with rows)
    if not fits(1):
        need = base_model.memory_required([per_noise, *x.shape[1:]]) * MEMORY_MARGIN
        return 1, (f"auto: 1 noise per call ({need / 2**30:.3g} GiB estimated with the margin, "
                   f"{free / 2**30:.3g} GiB free)")
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if fits(middle) else (low, middle - 1)
    return low, f"auto: {low} of {rows} noises fit in {free / 2**30:.3g} GiB free"


class StepDiagnostics:
    """Collects sigma and LM-correction strength per step of one sampling call.

    strength = 1 - mean over the batch of cos(corrected, raw direction); 0.0 at steps where the
    correction was not applied (first step, outside [start_percent, end_percent))."""

    def __init__(self):
        self._sigmas = []
        self._strength = []

    def __call__(self, info):
        # Keep tensors during sampling (no host synchronisation per step); convert at the end.
        self._sigmas.append(info["sigma"].detach() if torch.is_tensor(info["sigma"])
                            else info["sigma"])
        cos = info.get("lml_cos")
        self._strength.append(None if cos is None else (1.0 - cos.detach().float().mean()))

    @property
    def sigmas(self) -> list[float]:
        return [float(s) for s in self._sigmas]

    @property
    def strength(self) -> list[float]:
        return [0.0 if s is None else float(s) for s in self._strength]

    def as_ui(self, solver: str) -> dict:
        return {"solver": solver, "sigmas": self.sigmas, "strength": self.strength}


# The keys newer empty-latent nodes (EmptyLatentImage, video and audio latents) put beside
# "samples": the pixels (or frames, samples) per latent cell the empty latent was sized for.
LATENT_RATIO_KEYS = ("downscale_ratio_spacial", "downscale_ratio_temporal")


def empty_latent_fixed(model, latent: dict):
    """``latent["samples"]`` as core's KSampler prepares it: ``fix_empty_latent_channels``
    gives an all-zero latent the model's channel count (and, on hosts that take them, its
    spatial/temporal size from the latent's downscale ratios).

    The ratios are passed by name only where the host's function has those parameters (newest
    ComfyUI: both; an intermediate one: the spatial one; 0.3.75: none, so the call is today's
    two-argument one), exactly as core's common_ksampler / SamplerCustom pass them."""
    import comfy.sample

    fix = comfy.sample.fix_empty_latent_channels
    try:
        parameters = inspect.signature(fix).parameters
    except (TypeError, ValueError):  # not introspectable: the call every host accepts
        parameters = {}
    ratios = {key: latent.get(key) for key in LATENT_RATIO_KEYS if key in parameters}
    return fix(model, latent["samples"], **ratios)


def output_latent(latent: dict, samples) -> dict:
    """The output latent dict: the input's keys (batch_index, noise_mask, ...) with the new
    samples, minus the downscale ratios, which describe an empty latent and not the sampled
    one (core's samplers drop them the same way)."""
    out = latent.copy()
    for key in LATENT_RATIO_KEYS:
        out.pop(key, None)
    out["samples"] = samples
    return out


def ksampler_sigmas(model, steps: int, sampler_name: str, scheduler: str, denoise=1.0):
    """The sigmas KSampler uses for ``sampler_name``: its own ``KSampler(...).sigmas``, so the
    discard-penultimate-sigma rule (uni_pc, dpm_2, ...) and denoise < 1 are core's."""
    import comfy.samplers

    return comfy.samplers.KSampler(
        model, steps=steps, device=model.load_device, sampler=sampler_name,
        scheduler=scheduler, denoise=denoise, model_options=model.model_options).sigmas


def run_ksampler(model, latent: dict, seed: int, steps: int, cfg: float, sampler,
                 sampler_name: str, scheduler: str, positive, negative, denoise=1.0,
                 callback=None):
    """Sample ``latent`` as core's KSampler (nodes.common_ksampler) does, with the SAMPLER
    object ``sampler``: the empty latent fixed up (``empty_latent_fixed``), the seed's noise
    (per batch_index), KSampler's sigmas for ``sampler_name``, the latent's noise_mask, latent
    previews and the progress bar (or ``callback(step, x0, x, total)``), and Cancel checked
    when the run ends.  Returns the sampled latent tensor."""
    import comfy.model_management
    import comfy.sample
    import comfy.utils
    import latent_preview

    samples = empty_latent_fixed(model, latent)
    noise = comfy.sample.prepare_noise(samples, seed, latent.get("batch_index"))
    sigmas = ksampler_sigmas(model, steps, sampler_name, scheduler, denoise)
    if callback is None:
        callback = latent_preview.prepare_callback(model, steps)
    samples = comfy.sample.sample_custom(
        model, noise, cfg, sampler, sigmas, positive, negative, samples,
        noise_mask=latent.get("noise_mask"), callback=callback,
        disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=seed)
    comfy.model_management.throw_exception_if_processing_interrupted()
    return samples


def decode(vae, samples):
    """VAEDecode's images for ``samples``; video VAEs' frames folded into the batch as
    VAEDecode does."""
    images = vae.decode(samples)
    if images.ndim == 5:
        images = images.reshape(-1, images.shape[-3], images.shape[-2], images.shape[-1])
    return images
