"""ComfyUI's deterministic samplers, written out with the same k-diffusion signature.

Our own code (nothing copied), following the conventions of ComfyUI 0.3.75's
``comfy/k_diffusion/sampling.py`` and ``comfy/extra_samplers/uni_pc.py``:

* ``euler``: ``x_{n+1} = x_n + (sigma_{n+1} - sigma_n) (x_n - D_n) / sigma_n``.  ComfyUI's
  ``ddim`` *is* this function (``sampler_object("ddim")`` returns ``ksampler("euler")``), and for
  eps models Euler in sigma space is exactly DDIM; the same holds for flow models
  (``x_{n+1} = (1 - s') D_n + s' eps_n`` expands to the Euler step).  So ``ddim`` is listed once,
  as ``euler``.
* ``heun``: Karras' Algorithm 2: Euler predictor, trapezoidal corrector with a second model
  call, except a final step to sigma = 0, which is a plain Euler step.  2 NFE per step,
  ``2 n - 1`` for n steps.
* ``dpmpp_2m``: DPM-Solver++(2M) with ``t = -log(sigma)`` exactly as ComfyUI (also for flow
  models, where ComfyUI uses the same formula).
* ``uni_pc`` (``bh1``) / ``uni_pc_bh2``: UniPC (Zhao et al. 2023), data prediction, multistep,
  order 3 (lower order in the warm-up and at the end), the UniC corrector on every step but the
  last, its model evaluation reused by the next predictor; NFE = steps.  ComfyUI runs it on the
  VP rescaling ``x / sqrt(1 + sigma^2)`` of the sigma-space ODE; the data-prediction update is
  invariant under that rescaling (``lambda = -log(sigma)`` either way), so we write it directly
  in sigma space: ``x_t = (s_t / s_s) x_s + (1 - e^-h) m_0 - B(h) (...)``.  The ODE
  ``dx/dsigma = (x - D) / sigma`` is also the flow-matching ODE (``x = (1 - s) x0 + s n`` gives
  ``dx/ds = E[n - x0 | x] = (x - D) / s``), which is why ComfyUI uses these formulas for flow
  models unchanged, and so do we.  One difference: ComfyUI replaces a final sigma = 0 by 0.001;
  we take the limit (the last step returns the data prediction, as every other sampler here
  does).
"""

from __future__ import annotations

import math

import torch


def _sigma_list(sigmas):
    return [float(s) for s in sigmas.tolist()]


def _report(callback, x, i, sigmas, denoised):
    """k-diffusion's per-step callback (previews, progress), when one is given."""
    if callback is not None:
        callback({"x": x, "i": i, "sigma": sigmas[i], "sigma_hat": sigmas[i],
                  "denoised": denoised})


@torch.no_grad()
def sample_euler(model, x, sigmas, extra_args=None, callback=None, disable=None, **_):
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    sig = _sigma_list(sigmas)
    for i in range(len(sig) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        _report(callback, x, i, sigmas, denoised)
        x = x + (x - denoised) / sig[i] * (sig[i + 1] - sig[i])
    return x


@torch.no_grad()
def sample_heun(model, x, sigmas, extra_args=None, callback=None, disable=None, **_):
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    sig = _sigma_list(sigmas)
    for i in range(len(sig) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        d = (x - denoised) / sig[i]
        _report(callback, x, i, sigmas, denoised)
        dt = sig[i + 1] - sig[i]
        if sig[i + 1] == 0:
            x = x + d * dt  # Euler into sigma = 0 (the model is not called at sigma = 0)
        else:
            x_2 = x + d * dt
            d_2 = (x_2 - model(x_2, sigmas[i + 1] * s_in, **extra_args)) / sig[i + 1]
            x = x + (d + d_2) / 2 * dt
    return x


@torch.no_grad()
def sample_dpmpp_2m(model, x, sigmas, extra_args=None, callback=None, disable=None, **_):
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    sig = _sigma_list(sigmas)
    old_denoised = None
    for i in range(len(sig) - 1):
        denoised = model(x, sigmas[i] * s_in, **extra_args)
        _report(callback, x, i, sigmas, denoised)
        ratio = sig[i + 1] / sig[i]  # sigma_fn(t_next) / sigma_fn(t) = exp(-h)
        if old_denoised is None or sig[i + 1] == 0:
            x = ratio * x + (1 - ratio) * denoised
        else:
            h = math.log(sig[i] / sig[i + 1])
            r = math.log(sig[i - 1] / sig[i]) / h
            denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
            x = ratio * x + (1 - ratio) * denoised_d
        old_denoised = denoised
    return x


def _unipc_coefficients(rks, h, order, variant):
    """UniPC's B(h) and the predictor / corrector weights rho_p (order - 1), rho_c (order).

    With hh = -h (data prediction), phi_1 = expm1(hh) and the recursion
    phi_{k+1} = phi_k / hh - 1/(k+1)!, the order conditions are R rho = b with
    R[i, j] = r_j^i (r = the step ratios of the stored points, last one 1) and
    b_i = phi_{i+1} (i+1)! / B(h); B(h) = hh (bh1) or expm1(hh) (bh2).
    """
    hh = -h
    b_h = hh if variant == "bh1" else math.expm1(hh)
    h_phi_k = math.expm1(hh) / hh - 1
    factorial = 1
    rows, b = [], []
    for i in range(1, order + 1):
        rows.append([rk ** (i - 1) for rk in rks])
        b.append(h_phi_k * factorial / b_h)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    R = torch.tensor(rows, dtype=torch.float64)
    b = torch.tensor(b, dtype=torch.float64)
    if order == 1:
        rho_p, rho_c = [], [0.5]
    elif order == 2:
        rho_p, rho_c = [0.5], torch.linalg.solve(R, b).tolist()
    else:
        rho_p = torch.linalg.solve(R[:-1, :-1], b[:-1]).tolist()
        rho_c = torch.linalg.solve(R, b).tolist()
    return b_h, rho_p, rho_c


@torch.no_grad()
def sample_uni_pc(model, x, sigmas, extra_args=None, callback=None, disable=None, variant="bh1",
                  max_order=3, **_):
    """UniPC-p (multistep, data prediction) with the UniC corrector; see the module docstring.

    Step from s (= the latest stored point, model output m_0) to t, h = lambda_t - lambda_s:
        x_t^- = (s_t / s_s) x_s - expm1(-h) m_0,       h = log(s_s / s_t)
        predictor:  x_t = x_t^- - B(h) sum_k rho_p,k D1_k,  D1_k = (m_k - m_0) / r_k
        model:      m_t = D(x_t, t)                (reused as m_0 of the next step)
        corrector:  x_t = x_t^- - B(h) (sum_k rho_c,k D1_k + rho_c,last (m_t - m_0))
    r_k = (lambda_k - lambda_s) / h with lambda = -log(sigma).
    """
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    sig = _sigma_list(sigmas)
    steps = len(sig) - 1
    order = max(1, min(max_order, steps - 1))

    def lam(s):
        return -math.log(s)

    prev_models = [model(x, sigmas[0] * s_in, **extra_args)]  # newest last
    prev_sigmas = [sig[0]]
    for i in range(steps):
        s, t = prev_sigmas[-1], sig[i + 1]
        m0 = prev_models[-1]
        _report(callback, x, i, sigmas, m0)
        if t == 0:
            x = m0  # the limit h -> inf of every order: the data prediction
            break
        step_order = min(order, i + 1, steps - i)  # warm-up and lower order at the end
        h = lam(t) - lam(s)
        rks, d1s = [], []
        for k in range(1, step_order):
            rk = (lam(prev_sigmas[-(k + 1)]) - lam(s)) / h
            rks.append(rk)
            d1s.append((prev_models[-(k + 1)] - m0) / rk)
        b_h, rho_p, rho_c = _unipc_coefficients(rks + [1.0], h, step_order, variant)
        x_lin = (t / s) * x - math.expm1(-h) * m0
        pred = sum((r * d for r, d in zip(rho_p, d1s)), torch.zeros_like(x))
        x_t = x_lin - b_h * pred
        if i == steps - 1:
            x = x_t  # no corrector (and no model call) after the last step
            break
        m_t = model(x_t, sigmas[i + 1] * s_in, **extra_args)
        corr = sum((r * d for r, d in zip(rho_c[:-1], d1s)), torch.zeros_like(x))
        x = x_lin - b_h * (corr + rho_c[-1] * (m_t - m0))
        prev_models = (prev_models + [m_t])[-order:]
        prev_sigmas = (prev_sigmas + [t])[-order:]
    return x


def sample_uni_pc_bh2(model, x, sigmas, extra_args=None, callback=None, disable=None, **options):
    return sample_uni_pc(model, x, sigmas, extra_args, callback, disable, variant="bh2", **options)


def nfe_of(name: str, steps: int) -> int:
    """Model calls of a baseline for ``steps`` steps of a schedule ending at sigma = 0."""
    return 2 * steps - 1 if name == "heun" else steps


def steps_for_nfe(name: str, nfe: int) -> int:
    """The most steps whose cost does not exceed ``nfe`` model calls."""
    return (nfe + 1) // 2 if name == "heun" else nfe


BASELINES = {
    "euler": sample_euler,  # = ComfyUI's ddim
    "heun": sample_heun,
    "dpmpp_2m": sample_dpmpp_2m,
    "uni_pc": sample_uni_pc,
    "uni_pc_bh2": sample_uni_pc_bh2,
}
