"""LML sampler loops with the k-diffusion signature used by ComfyUI.

Every sampler is ``sample_x(model, x, sigmas, extra_args=None, callback=None, disable=None,
lm=None, **settings)`` where ``model(x, sigma * s_in, **extra_args)`` returns the denoised
estimate ``D(x, sigma)``.  The LM settings come as one validated ``LMOptions`` (``lm``, what
the nodes pass) or as plain keyword arguments (``rank=2, damping=0.5``; the rest from the
sampler's defaults).  All loops integrate the probability-flow ODE in sigma space,

    dx/dsigma = (x - D(x, sigma)) / sigma,

which holds for eps/v-prediction models (VE form, as ComfyUI feeds them) and for flow-matching
models (``x = (1 - sigma) x0 + sigma * noise``, sigmas in [0, 1]) alike.  The LM correction
``P`` (``lm_precondition``) is applied to one vector per step, with the uncorrected vectors of
the previous ``rank`` steps as history, kept in a local variable of the call.

The state is float32 (float64 if given float64) and cast back at the end.  Sigmas are read into
Python floats once, so the loop does no host synchronisation.
"""

from __future__ import annotations

import math

import torch

from .adaptive import half_log_snr, step_omega
from .options import ANCESTRAL_DEFAULTS, LMOptions
from .precondition import lm_precondition

try:  # ComfyUI ships tqdm; the benchmarks do not need it.
    from tqdm.auto import trange
except ImportError:  # pragma: no cover
    def trange(n, disable=None):
        return range(n)

# The Langevin noise stream is seeded apart from ComfyUI's initial-noise stream (which uses the
# seed itself), so the two never repeat each other.
LANGEVIN_SEED_OFFSET = 0x4C4D4C


# --------------------------------------------------------------------------------------------
# Named formulas


def to_d(x, sigma, denoised):
    """The probability-flow ODE direction dx/dsigma = (x - D) / sigma."""
    return (x - denoised) / sigma


def ancestral_step(sigma: float, sigma_next: float, eta: float) -> tuple[float, float]:
    """(sigma_down, sigma_up) of an ancestral VE step: sigma_up = min(sigma_next, eta *
    sqrt(sigma_next^2 (sigma^2 - sigma_next^2) / sigma^2)), sigma_down^2 + sigma_up^2 =
    sigma_next^2."""
    sigma_up = min(sigma_next, eta * (sigma_next**2 * (sigma**2 - sigma_next**2)
                                      / sigma**2) ** 0.5)
    return (sigma_next**2 - sigma_up**2) ** 0.5, sigma_up


def model_sampling_of(model):
    """ComfyUI's model_sampling object behind a sampler's ``model``, without importing comfy
    (KSamplerX0Inpaint -> CFGGuider wrapper -> BaseModel.model_sampling); None elsewhere."""
    return getattr(getattr(getattr(model, "inner_model", None), "inner_model", None),
                   "model_sampling", None)


def is_flow_model(model) -> bool:
    """True for ComfyUI flow-matching models (model_sampling of type CONST)."""
    sampling = model_sampling_of(model)
    return sampling is not None and any(c.__name__ == "CONST" for c in type(sampling).__mro__)


def noise_scale(model) -> float:
    """The model's noise scale (newer ComfyUI: a flow model's ``model_sampling.noise_scale``,
    which also scales the initial noise); 1 where there is none."""
    return float(getattr(model_sampling_of(model), "noise_scale", 1.0))


def faded_damping(lm: LMOptions, sigmas: list[float], step: int, flow: bool) -> float:
    """``damping * max(1, h^-fade)``, h the step's length in log-SNR: with fade > 0 the
    correction fades as the steps shorten (the turn, about angle / damping with the angle itself
    O(h), then shrinks like h^(fade + 1)); long steps (h >= 1) keep ``damping``."""
    if lm.fade <= 0:
        return lm.damping
    h = half_log_snr(sigmas[step + 1], flow) - half_log_snr(sigmas[step], flow)
    return lm.damping * max(1.0, h ** -lm.fade) if 0 < h < math.inf else lm.damping


def lm_correct(direction, history, lm: LMOptions, step: int, sigmas: list[float], flow: bool):
    """``P(direction; history)`` where the correction applies at ``step``, else ``direction``;
    with the per-sample cosine between the two (None where not applied)."""
    if not history or not lm.applies_at(step, len(sigmas) - 1):
        return direction, None
    corrected, info = lm_precondition(
        direction, history, damping=faded_damping(lm, sigmas, step, flow), kappa=lm.kappa,
        damping_mode=lm.damping_mode, omega=step_omega(lm.omega, sigmas, step, flow),
        return_info=True)
    return corrected, info["cos"]


def report_step(callback, x, i, sigma, denoised, lml_cos):
    """k-diffusion's per-step callback (previews, progress, Cancel), plus the LM cosine."""
    if callback is not None:
        callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma, "denoised": denoised,
                  "lml_cos": lml_cos})


# --------------------------------------------------------------------------------------------
# Input checks and the model-output guard


def checked_sigmas(name: str, x, sigmas) -> list[float]:
    """The schedule as Python floats; a ValueError for a bad schedule or latent."""
    if sigmas.ndim != 1:
        raise ValueError(f"{name}: sigmas must be a 1-D tensor, got shape {tuple(sigmas.shape)}")
    values = [float(s) for s in sigmas.tolist()]
    if not all(math.isfinite(s) and s >= 0 for s in values):
        raise ValueError(f"{name}: sigmas must be finite and >= 0, got {values}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name}: the input latent contains NaN or inf values")
    return values


def checked_noise_settings(eta, s_noise) -> tuple[float, float]:
    eta, s_noise = float(eta), float(s_noise)
    if not (math.isfinite(eta) and eta >= 0):
        raise ValueError(f"eta must be a finite number >= 0, got {eta}")
    if not (math.isfinite(s_noise) and s_noise >= 0):
        raise ValueError(f"s_noise must be a finite number >= 0, got {s_noise}")
    return eta, s_noise


class GuardedModel:
    """Calls the model in the working dtype and notes whether each output was finite, so that
    ``finish`` can refuse NaN/inf without a host synchronisation per step."""

    def __init__(self, name, model, x, sigmas: list[float], extra_args):
        self.name, self.model, self.sigmas = name, model, sigmas
        self.extra_args = {} if extra_args is None else extra_args
        self.out_dtype = x.dtype
        self.dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        self.finite = []

    def __call__(self, x, sigma):
        denoised = self.model(x, sigma, **self.extra_args).to(self.dtype)
        self.finite.append(torch.isfinite(denoised).all())
        return denoised

    def finish(self, x):
        """Raise on non-finite model output or result; else ``x`` in the caller's dtype."""
        if self.finite:
            flags = torch.stack(self.finite).cpu()
            if not bool(flags.all()):
                step = int((~flags).nonzero()[0, 0])
                raise FloatingPointError(
                    f"{self.name}: the model returned NaN or inf at step {step + 1} of "
                    f"{len(self.sigmas) - 1} (sigma={self.sigmas[step]:.4g}); try float32 "
                    "(--force-fp32) or another model")
        if not torch.isfinite(x).all():
            raise FloatingPointError(f"{self.name}: sampling produced NaN or inf values")
        return x.to(self.out_dtype)


def langevin_noise_sampler(x, extra_args):
    """Fresh Gaussian noise per step from a generator seeded with ``extra_args["seed"] +
    LANGEVIN_SEED_OFFSET`` (unseeded without a seed)."""
    generator = torch.Generator(device=x.device)
    seed = (extra_args or {}).get("seed")
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed((int(seed) + LANGEVIN_SEED_OFFSET) % (2**63))
    return lambda sigma, sigma_next: torch.randn(x.shape, generator=generator, dtype=x.dtype,
                                                 device=x.device)


class Run:
    """What every loop sets up first: the validated options, the schedule as floats, the
    guarded model, ``x`` in the working dtype, the batch's sigma multiplier and the history
    (the uncorrected vectors of the previous steps, most recent first)."""

    def __init__(self, name, model, x, sigmas, extra_args, lm, settings):
        self.lm = LMOptions.for_sampler(name, lm, **settings)
        self.sigma_tensor = sigmas  # what the model and the callback get, as ComfyUI passes it
        self.sigmas = checked_sigmas(name, x, sigmas)
        self.denoise = GuardedModel(name, model, x, self.sigmas, extra_args)
        self.x = x.to(self.denoise.dtype)
        self.s_in = self.x.new_ones([x.shape[0]])
        self.history = []

    def corrected(self, vector, i, flow):
        """``P(vector; history)`` at step ``i`` (with its cosine); ``vector`` joins the
        history."""
        corrected, cos = lm_correct(vector, self.history, self.lm, i, self.sigmas, flow)
        self.history = [vector, *self.history][: self.lm.rank]
        return corrected, cos

    def euler_direction(self, x, i, flow, callback):
        """Step ``i``'s model call and LM-corrected direction P(d_i; ..), reported to
        ``callback``."""
        denoised = self.denoise(x, self.sigma_tensor[i] * self.s_in)
        d_lm, cos = self.corrected(to_d(x, self.sigmas[i], denoised), i, flow)
        report_step(callback, x, i, self.sigma_tensor[i], denoised, cos)
        return d_lm


# --------------------------------------------------------------------------------------------
# Samplers


@torch.no_grad()
def sample_lml_euler(model, x, sigmas, extra_args=None, callback=None, disable=None, lm=None,
                     flow=None, **settings):
    """LML-Euler: Euler steps of the probability-flow ODE along the LM-corrected direction.

        d_n  = (x_n - D(x_n, sigma_n)) / sigma_n                  (DDIM for eps models)
        d~_n = P(d_n; d_{n-1}, .., d_{n-rank})                     (LM correction)
        x_{n+1} = x_n + (sigma_{n+1} - sigma_n) * d~_n

    With the correction off (rank 0, start_percent 1, huge damping) this is ComfyUI's euler.
    ``flow`` forces the flow (True) or VE (False) log-SNR for omega "auto"; default: detected.
    """
    run = Run("lml_euler", model, x, sigmas, extra_args, lm, settings)
    flow = is_flow_model(model) if flow is None else bool(flow)
    x = run.x
    for i in trange(len(run.sigmas) - 1, disable=disable):
        d_lm = run.euler_direction(x, i, flow, callback)
        x = x + d_lm * (run.sigmas[i + 1] - run.sigmas[i])
    return run.denoise.finish(x)


@torch.no_grad()
def sample_lml_dpmpp_2m(model, x, sigmas, extra_args=None, callback=None, disable=None, lm=None,
                        correct_on="update", flow=None, **settings):
    """LML-DPM-Solver++(2M): the multistep data-prediction solver with an LM-corrected step.

    With t = -log(sigma), h = t_{n+1} - t_n and r = h_{n-1} / h:

        D'_n = (1 + 1/(2r)) D_n - 1/(2r) D_{n-1}        (D_n alone at the first step and at a
                                                         final step to sigma 0)
        correct_on="update" (the reference's):
            u_n = (1 - sigma_{n+1} / sigma_n) D'_n,   x_{n+1} = (sigma_{n+1} / sigma_n) x_n
                                                                + P(u_n; u_{n-1}, ..)
        correct_on="direction":
            d_n = (x_n - D'_n) / sigma_n,             x_{n+1} = x_n + (sigma_{n+1} - sigma_n)
                                                                * P(d_n; d_{n-1}, ..)

    Uncorrected, both are ComfyUI's dpmpp_2m.
    """
    if correct_on not in ("update", "direction"):
        raise ValueError(f"correct_on must be 'update' or 'direction', got {correct_on!r}")
    on_update = correct_on == "update"
    run = Run("lml_dpmpp_2m", model, x, sigmas, extra_args, lm, settings)
    sigma_values, x = run.sigmas, run.x
    flow = is_flow_model(model) if flow is None else bool(flow)
    old_denoised = None
    for i in trange(len(sigma_values) - 1, disable=disable):
        sigma, sigma_next = sigma_values[i], sigma_values[i + 1]
        denoised = run.denoise(x, sigmas[i] * run.s_in)
        if old_denoised is None or sigma_next == 0:
            denoised_d = denoised
        else:
            r = math.log(sigma_values[i - 1] / sigma) / math.log(sigma / sigma_next)
            denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
        ratio = sigma_next / sigma
        raw = (1 - ratio) * denoised_d if on_update else to_d(x, sigma, denoised_d)
        corrected, cos = run.corrected(raw, i, flow)  # the history: update terms or directions
        report_step(callback, x, i, sigmas[i], denoised, cos)
        x = ratio * x + corrected if on_update else x + corrected * (sigma_next - sigma)
        old_denoised = denoised
    return run.denoise.finish(x)


def ve_ancestral_step(x, d, sigma, sigma_next, eta, s_noise, noise):
    """One ancestral VE step along ``d``: to sigma_down, then ``noise()`` scaled to sigma_up
    (``ancestral_step``)."""
    sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
    x = x + d * (sigma_down - sigma)
    if sigma_up > 0:
        x = x + noise().to(x.dtype) * (s_noise * sigma_up)
    return x


def rf_ancestral_step(x, d, sigma, sigma_next, eta, s_noise, noise):
    """One ancestral rectified-flow step along ``d`` (ComfyUI's sample_euler_ancestral_RF):
    to sigma_down = sigma_next (1 + (sigma_next / sigma - 1) eta), then rescaled to alpha_next
    and renoised to sigma_next."""
    sigma_down = sigma_next * (1 + (sigma_next / sigma - 1) * eta)
    alpha_next, alpha_down = 1 - sigma_next, 1 - sigma_down
    x = x + d * (sigma_down - sigma)
    if eta > 0:
        renoise = max(sigma_next**2 - sigma_down**2 * alpha_next**2 / alpha_down**2, 0.0)
        x = (alpha_next / alpha_down) * x + noise().to(x.dtype) * (s_noise * renoise**0.5)
    return x


def langevin_loop(model, x, sigmas, extra_args, callback, disable, eta, s_noise, noise_sampler,
                  lm, settings, flow):
    """The LML-Langevin loop; ``flow`` picks the renoising rule (RF or VE)."""
    eta, s_noise = checked_noise_settings(eta, s_noise)
    run = Run("lml_euler_ancestral", model, x, sigmas, extra_args, lm, settings)
    x = run.x
    noise_sampler = noise_sampler or langevin_noise_sampler(x, extra_args)
    step = rf_ancestral_step if flow else ve_ancestral_step
    if flow:  # as ComfyUI's RF samplers: a flow model's noise scale scales the fresh noise too
        s_noise *= noise_scale(model)
    for i in trange(len(run.sigmas) - 1, disable=disable):
        sigma, sigma_next = run.sigmas[i], run.sigmas[i + 1]
        d_lm = run.euler_direction(x, i, flow, callback)
        if sigma_next == 0:
            x = x + d_lm * (sigma_next - sigma)
            continue
        x = step(x, d_lm, sigma, sigma_next, eta, s_noise,
                 lambda i=i: noise_sampler(sigmas[i], sigmas[i + 1]))
    return run.denoise.finish(x)


@torch.no_grad()
def sample_lml_euler_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None,
                               eta=ANCESTRAL_DEFAULTS["eta"],
                               s_noise=ANCESTRAL_DEFAULTS["s_noise"], noise_sampler=None,
                               lm=None, flow=None, **settings):
    """LML-Langevin: ancestral Euler along the LM-corrected direction, with fresh noise.

    With (sigma_down, sigma_up) = ancestral_step(sigma_n, sigma_{n+1}, eta):

        x_{n+1} = x_n + (sigma_down - sigma_n) P(d_n; ..) + s_noise * sigma_up * z_n

    z_n comes from a generator seeded with ``extra_args["seed"] + 0x4C4D4C`` (apart from the
    initial-noise stream), unless ``noise_sampler(sigma, sigma_next)`` is given.  eta = 0 is
    lml_euler with the same LM settings (the defaults differ: SOLVER_DEFAULTS).  Flow (CONST)
    models go to ``sample_lml_euler_ancestral_RF``.
    """
    if is_flow_model(model) if flow is None else flow:
        return sample_lml_euler_ancestral_RF(
            model, x, sigmas, extra_args=extra_args, callback=callback, disable=disable,
            eta=eta, s_noise=s_noise, noise_sampler=noise_sampler, lm=lm, **settings)
    return langevin_loop(model, x, sigmas, extra_args, callback, disable, eta, s_noise,
                         noise_sampler, lm, settings, flow=False)


@torch.no_grad()
def sample_lml_euler_ancestral_RF(model, x, sigmas, extra_args=None, callback=None, disable=None,
                                  eta=ANCESTRAL_DEFAULTS["eta"],
                                  s_noise=ANCESTRAL_DEFAULTS["s_noise"], noise_sampler=None,
                                  lm=None, **settings):
    """LML-Langevin for flow (CONST) models, with rectified-flow renoising.

    With sigma_down = sigma_{n+1} (1 + (sigma_{n+1} / sigma_n - 1) eta) and alpha = 1 - sigma:

        x' = x_n + (sigma_down - sigma_n) P(d_n; ..)
        x_{n+1} = (alpha_{n+1} / alpha_down) x'
                  + s_noise * sqrt(sigma_{n+1}^2 - sigma_down^2 alpha_{n+1}^2 / alpha_down^2) z_n

    As in ComfyUI's sample_euler_ancestral_RF (newer hosts), s_noise is multiplied by the
    model's noise scale (``model_sampling.noise_scale``; 1 where the host has none).
    """
    return langevin_loop(model, x, sigmas, extra_args, callback, disable, eta, s_noise,
                         noise_sampler, lm, settings, flow=True)


SAMPLERS = {
    "lml_euler": sample_lml_euler,
    "lml_dpmpp_2m": sample_lml_dpmpp_2m,
    "lml_euler_ancestral": sample_lml_euler_ancestral,
}
STOCHASTIC_SAMPLERS = ("lml_euler_ancestral",)  # the SAMPLERS that add fresh noise
