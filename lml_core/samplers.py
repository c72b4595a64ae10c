"""LML sampler loops with the k-diffusion signature used by ComfyUI.

Every sampler is ``sample_x(model, x, sigmas, extra_args=None, callback=None, disable=None,
**options)`` where ``model(x, sigma * s_in, **extra_args)`` returns the denoised estimate
``D(x, sigma)``.  All of them integrate the probability-flow ODE in sigma space,

    dx/dsigma = (x - D(x, sigma)) / sigma,

which holds for eps/v-prediction models (VE form, as ComfyUI feeds them) and for flow-matching
models (``x = (1 - sigma) x0 + sigma * noise``, sigmas in [0, 1]) alike.  The LM correction
``P`` (``precondition.lm_precondition``) is applied to one direction per step, using the
uncorrected directions of the previous ``rank`` steps as history.  That history lives in local
variables: nothing survives the call.

The state ``x`` is kept in float32 (float64 if given float64) and cast back to the input dtype
at the end.  Sigma values are read into Python floats once, before the loop, so the loop does
no host synchronisation.
"""

from __future__ import annotations

import math

import torch

from .adaptive import auto_omega
from .options import DEFAULTS, DPMPP_2M_DEFAULTS, LMOptions
from .precondition import lm_precondition

try:  # ComfyUI ships tqdm; the benchmarks do not need it.
    from tqdm.auto import trange
except ImportError:  # pragma: no cover
    def trange(n, disable=None):
        return range(n)

# The Langevin noise stream is seeded apart from ComfyUI's initial-noise stream (which uses the
# seed itself), so the two never repeat each other.
LANGEVIN_SEED_OFFSET = 0x4C4D4C


def _is_flow_model(model) -> bool:
    """True for ComfyUI flow-matching models (model_sampling of type CONST), without importing
    comfy: KSamplerX0Inpaint -> CFGGuider wrapper -> BaseModel.model_sampling."""
    sampling = getattr(getattr(getattr(model, "inner_model", None), "inner_model", None),
                       "model_sampling", None)
    return sampling is not None and any(c.__name__ == "CONST" for c in type(sampling).__mro__)


def _half_log_snr(sigma: float, flow: bool) -> float:
    """lambda = log(alpha / sigma): -log(sigma) for VE, log((1 - sigma) / sigma) for flow."""
    if sigma <= 0:
        return math.inf
    if flow:
        return math.log(max(1.0 - sigma, 1e-12) / sigma)
    return -math.log(sigma)


class _Run:
    """Validation, correction and bookkeeping shared by the loops of one sampling call."""

    def __init__(self, name, model, x, sigmas, extra_args, flow, options):
        self.name = name
        self.opts = LMOptions.from_kwargs(**options)
        if sigmas.ndim != 1:
            raise ValueError(
                f"{name}: sigmas must be a 1-D tensor, got shape {tuple(sigmas.shape)}")
        self.sigma_values = [float(s) for s in sigmas.tolist()]
        if not all(math.isfinite(s) and s >= 0 for s in self.sigma_values):
            raise ValueError(f"{name}: sigmas must be finite and >= 0, got {self.sigma_values}")
        if not torch.isfinite(x).all():
            raise ValueError(f"{name}: the input latent contains NaN or inf values")
        self.steps = len(self.sigma_values) - 1
        self.flow = _is_flow_model(model) if flow is None else bool(flow)
        self.extra_args = {} if extra_args is None else extra_args
        self.out_dtype = x.dtype
        self.work_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        self.history = []  # uncorrected directions, most recent first
        self.finite_flags = []

    def state(self, x):
        return x.to(self.work_dtype)

    def denoise(self, model, x, sigma_tensor, s_in):
        denoised = model(x, sigma_tensor * s_in, **self.extra_args).to(self.work_dtype)
        self.finite_flags.append(torch.isfinite(denoised).all())
        return denoised

    def omega_at(self, i):
        """omega for step i: the fixed setting, or AB2's h_n / (2 h_{n-1}) in log-SNR."""
        if self.opts.omega != "auto":
            return self.opts.omega
        if i == 0:
            return 0.0
        s_prev, s, s_next = self.sigma_values[i - 1], self.sigma_values[i], self.sigma_values[i + 1]
        lam = [_half_log_snr(v, self.flow) for v in (s_prev, s, s_next)]
        return auto_omega(lam[2] - lam[1], lam[1] - lam[0])

    def correct(self, direction, i):
        """Apply the LM correction to ``direction`` at step i; push the raw one to history.
        Returns (corrected direction, per-sample cosine between corrected and raw)."""
        o = self.opts
        cos = None
        corrected = direction
        if self.history and o.applies_at(i, self.steps):
            corrected, info = lm_precondition(
                direction, self.history, damping=o.damping, kappa=o.kappa,
                damping_mode=o.damping_mode, omega=self.omega_at(i), return_info=True)
            cos = info["cos"]
        if o.rank > 0:
            self.history = ([direction] + self.history)[: o.rank]
        return corrected, cos

    def report(self, callback, x, i, sigma, sigma_hat, denoised, cos):
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma_hat,
                      "denoised": denoised, "lml_cos": cos})

    def finish(self, x):
        """Refuse to return NaN/inf silently; cast back to the caller's dtype."""
        if self.finite_flags:
            flags = torch.stack(self.finite_flags).cpu()
            if not bool(flags.all()):
                step = int((~flags).nonzero()[0, 0])
                raise FloatingPointError(
                    f"{self.name}: the model returned NaN or inf at step {step + 1} of "
                    f"{self.steps} (sigma={self.sigma_values[step]:.4g}); try float32 "
                    "(--force-fp32) or another model")
        if not torch.isfinite(x).all():
            raise FloatingPointError(f"{self.name}: sampling produced NaN or inf values")
        return x.to(self.out_dtype)


def _lm_options(rank, damping, kappa, damping_mode, omega, start_percent, end_percent):
    return dict(rank=rank, damping=damping, kappa=kappa, damping_mode=damping_mode,
                omega=omega, start_percent=start_percent, end_percent=end_percent)


@torch.no_grad()
def sample_lml_euler(model, x, sigmas, extra_args=None, callback=None, disable=None,
                     rank=DEFAULTS["rank"], damping=DEFAULTS["damping"], kappa=DEFAULTS["kappa"],
                     damping_mode=DEFAULTS["damping_mode"], omega=DEFAULTS["omega"],
                     start_percent=DEFAULTS["start_percent"], end_percent=DEFAULTS["end_percent"],
                     flow=None):
    """LML-Euler: Euler steps of the probability-flow ODE along the LM-corrected direction.

        d_n  = (x_n - D(x_n, sigma_n)) / sigma_n                  (eps; DDIM for eps models)
        d~_n = P(d_n; d_{n-1}, .., d_{n-rank})                     (LM correction)
        x_{n+1} = x_n + (sigma_{n+1} - sigma_n) * d~_n

    With the correction off (rank 0, start_percent 1, huge damping) this is ComfyUI's euler.
    """
    run = _Run("lml_euler", model, x, sigmas, extra_args, flow,
               _lm_options(rank, damping, kappa, damping_mode, omega, start_percent, end_percent))
    x = run.state(x)
    s_in = x.new_ones([x.shape[0]])
    for i in trange(run.steps, disable=disable):
        sigma, sigma_next = run.sigma_values[i], run.sigma_values[i + 1]
        denoised = run.denoise(model, x, sigmas[i], s_in)
        d = (x - denoised) / sigma
        d, cos = run.correct(d, i)
        run.report(callback, x, i, sigmas[i], sigmas[i], denoised, cos)
        x = x + d * (sigma_next - sigma)
    return run.finish(x)


@torch.no_grad()
def sample_lml_dpmpp_2m(model, x, sigmas, extra_args=None, callback=None, disable=None,
                        rank=DPMPP_2M_DEFAULTS["rank"], damping=DPMPP_2M_DEFAULTS["damping"],
                        kappa=DPMPP_2M_DEFAULTS["kappa"],
                        damping_mode=DPMPP_2M_DEFAULTS["damping_mode"],
                        omega=DPMPP_2M_DEFAULTS["omega"],
                        start_percent=DPMPP_2M_DEFAULTS["start_percent"],
                        end_percent=DPMPP_2M_DEFAULTS["end_percent"], correct_on="update",
                        flow=None):
    """LML-DPM-Solver++(2M): the multistep data-prediction solver with an LM-corrected update.

    With t = -log(sigma), h = t_{n+1} - t_n and r = h_{n-1} / h:

        D'_n = (1 + 1/(2r)) D_n - 1/(2r) D_{n-1}                  (D_n alone at the first and
                                                                    at a final step to sigma 0)
        u_n  = (1 - sigma_{n+1} / sigma_n) D'_n                    (the update term)
        x_{n+1} = (sigma_{n+1} / sigma_n) x_n + P(u_n; u_{n-1}, ..)   correct_on="update"

    as in the reference implementation, or with the LM correction on the effective direction
    ``d'_n = (x_n - D'_n) / sigma_n``:  x_{n+1} = x_n + (sigma_{n+1} - sigma_n) P(d'_n; ..)
    (correct_on="direction").  Uncorrected, both are ComfyUI's dpmpp_2m.

    Defaults (options.DPMPP_2M_DEFAULTS) are mild on purpose: on the benchmark no LM setting
    improved DPM++ 2M, which is already second order.
    """
    if correct_on not in ("update", "direction"):
        raise ValueError(f"correct_on must be 'update' or 'direction', got {correct_on!r}")
    run = _Run("lml_dpmpp_2m", model, x, sigmas, extra_args, flow,
               _lm_options(rank, damping, kappa, damping_mode, omega, start_percent, end_percent))
    x = run.state(x)
    s_in = x.new_ones([x.shape[0]])
    old_denoised = None
    for i in trange(run.steps, disable=disable):
        sigma, sigma_next = run.sigma_values[i], run.sigma_values[i + 1]
        denoised = run.denoise(model, x, sigmas[i], s_in)
        if old_denoised is None or sigma_next == 0:
            denoised_d = denoised
        else:
            h = math.log(sigma / sigma_next)
            h_last = math.log(run.sigma_values[i - 1] / sigma)
            r = h_last / h
            denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
        ratio = sigma_next / sigma
        if correct_on == "update":
            update, cos = run.correct((1 - ratio) * denoised_d, i)
            run.report(callback, x, i, sigmas[i], sigmas[i], denoised, cos)
            x = ratio * x + update
        else:
            d, cos = run.correct((x - denoised_d) / sigma, i)
            run.report(callback, x, i, sigmas[i], sigmas[i], denoised, cos)
            x = x + d * (sigma_next - sigma)
        old_denoised = denoised
    return run.finish(x)


@torch.no_grad()
def sample_lml_euler_ancestral(model, x, sigmas, extra_args=None, callback=None, disable=None,
                               eta=1.0, s_noise=1.0, noise_sampler=None,
                               rank=DEFAULTS["rank"], damping=DEFAULTS["damping"],
                               kappa=DEFAULTS["kappa"], damping_mode=DEFAULTS["damping_mode"],
                               omega=DEFAULTS["omega"], start_percent=DEFAULTS["start_percent"],
                               end_percent=DEFAULTS["end_percent"], flow=None):
    """LML-Langevin: ancestral Euler with the LM-corrected direction and fresh noise.

    VE (eps/v models), with sigma_up = min(sigma_{n+1}, eta * sqrt(sigma_{n+1}^2
    (sigma_n^2 - sigma_{n+1}^2) / sigma_n^2)) and sigma_down = sqrt(sigma_{n+1}^2 - sigma_up^2):

        x_{n+1} = x_n + (sigma_down - sigma_n) P(d_n; ..) + s_noise * sigma_up * z_n

    Flow (CONST) models, with sigma_down = sigma_{n+1} (1 + (sigma_{n+1}/sigma_n - 1) eta),
    alpha = 1 - sigma:

        x' = x_n + (sigma_down - sigma_n) P(d_n; ..)
        x_{n+1} = (alpha_{n+1} / alpha_down) x' + s_noise * sqrt(sigma_{n+1}^2 -
                  sigma_down^2 alpha_{n+1}^2 / alpha_down^2) * z_n

    z_n comes from a generator seeded with ``extra_args["seed"] + 0x4C4D4C`` (apart from the
    initial-noise stream), unless ``noise_sampler(sigma, sigma_next)`` is given.  eta = 0 is
    lml_euler.
    """
    eta = float(eta)
    s_noise = float(s_noise)
    if not (math.isfinite(eta) and eta >= 0):
        raise ValueError(f"eta must be a finite number >= 0, got {eta}")
    if not (math.isfinite(s_noise) and s_noise >= 0):
        raise ValueError(f"s_noise must be a finite number >= 0, got {s_noise}")
    run = _Run("lml_euler_ancestral", model, x, sigmas, extra_args, flow,
               _lm_options(rank, damping, kappa, damping_mode, omega, start_percent, end_percent))
    x = run.state(x)
    if noise_sampler is None:
        generator = torch.Generator(device=x.device)
        seed = run.extra_args.get("seed")
        if seed is None:
            generator.seed()
        else:
            generator.manual_seed((int(seed) + LANGEVIN_SEED_OFFSET) % (2**63))

        def noise_sampler(sigma, sigma_next):
            return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)

    s_in = x.new_ones([x.shape[0]])
    for i in trange(run.steps, disable=disable):
        sigma, sigma_next = run.sigma_values[i], run.sigma_values[i + 1]
        denoised = run.denoise(model, x, sigmas[i], s_in)
        d, cos = run.correct((x - denoised) / sigma, i)
        run.report(callback, x, i, sigmas[i], sigmas[i], denoised, cos)
        if sigma_next == 0:
            x = x + d * (sigma_next - sigma)
            continue
        if run.flow:
            sigma_down = sigma_next * (1 + (sigma_next / sigma - 1) * eta)
            alpha_next, alpha_down = 1 - sigma_next, 1 - sigma_down
            x = x + d * (sigma_down - sigma)
            if eta > 0:
                renoise = max(sigma_next**2 - sigma_down**2 * alpha_next**2 / alpha_down**2, 0.0)
                x = (alpha_next / alpha_down) * x + noise_sampler(sigmas[i], sigmas[i + 1]).to(
                    x.dtype) * (s_noise * renoise**0.5)
        else:
            sigma_up = min(sigma_next, eta * (sigma_next**2 * (sigma**2 - sigma_next**2)
                                              / sigma**2) ** 0.5)
            sigma_down = (sigma_next**2 - sigma_up**2) ** 0.5
            x = x + d * (sigma_down - sigma)
            if sigma_up > 0:
                x = x + noise_sampler(sigmas[i], sigmas[i + 1]).to(x.dtype) * (s_noise * sigma_up)
    return run.finish(x)


SAMPLERS = {
    "lml_euler": sample_lml_euler,
    "lml_dpmpp_2m": sample_lml_dpmpp_2m,
    "lml_euler_ancestral": sample_lml_euler_ancestral,
}
