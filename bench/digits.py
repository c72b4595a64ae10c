"""A small trained class-conditional diffusion model: scikit-learn's 8x8 digits (1797 images, 64
pixels in [-1, 1], 10 classes), sampled with classifier-free guidance as ComfyUI does it.

The denoiser is an MLP with EDM's preconditioning (Karras et al. 2022), written for a general
``x = a x0 + s n`` so that one network serves VE (a = 1) and flow-matching (a = 1 - s)
sampling: with the VE-equivalent ``sigma~ = s / a`` and ``q = s^2 + a^2 sd^2``

    D(x, s) = (sd^2 a / q) x + (s sd / sqrt(q)) F(x / sqrt(q), c_noise(sigma~)),

which is EDM's ``c_skip x~ + c_out F(c_in x~, c_noise)`` for ``x~ = x / a`` and stays finite at
a = 0 (flow, s = 1).  Trained with EDM's loss on sigma~ drawn half from EDM's log-normal, half
log-uniformly in [0.002, 1000].  The class label enters as a one-hot input with an 11th "no
label" class; 15% of the training labels are dropped to it, so one network gives the
conditional and the unconditional prediction (classifier-free guidance, Ho & Salimans 2022).
Deterministic (fixed seeds, 2 threads); the weights (< 1 MB) live in weights/digits_cond.pt and
are retrained (seconds) if absent.

``CFGDigitsModel`` combines them as ComfyUI's ``cfg_function``:
``D = D_uncond + cfg (D_cond - D_uncond)`` (one model call: ComfyUI batches both), skipping the
unconditional pass at cfg 1 unless ``model_options["disable_cfg1_optimization"]``, and then
applies every ``model_options["sampler_post_cfg_function"]`` (the CFG++ samplers' hook).

The feature distance is a Frechet distance (as FID) between Gaussian fits of the penultimate
activations of a small MLP classifier trained on the same digits.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

WEIGHTS = Path(__file__).parent / "weights" / "digits_cond.pt"
ARCH = dict(width=256, depth=3, freqs=16)
TRAIN = dict(steps=3000, batch=256, lr=2e-3, seed=0, label_dropout=0.15)
CLASSES = 10
NO_LABEL = CLASSES  # the "unconditional" class index
SIGMA_TILDE_RANGE = (0.002, 1000.0)


def load_digits_tensor():
    from sklearn.datasets import load_digits

    data = load_digits().data.astype(np.float64)  # 0..16
    return torch.from_numpy(data / 8.0 - 1.0), torch.from_numpy(load_digits().target)


class DigitsDenoiser(nn.Module):
    def __init__(self, sigma_data, width=ARCH["width"], depth=ARCH["depth"], freqs=ARCH["freqs"]):
        super().__init__()
        self.register_buffer("sigma_data", torch.tensor(float(sigma_data)))
        self.register_buffer("freq", torch.exp(torch.linspace(0, math.log(64), freqs)))
        layers, dim_in = [], 64 + 2 * freqs + CLASSES + 1
        for _ in range(depth):
            layers += [nn.Linear(dim_in, width), nn.SiLU()]
            dim_in = width
        layers.append(nn.Linear(width, 64))
        self.net = nn.Sequential(*layers)

    def raw(self, x_in, c_noise, labels):
        angle = c_noise[:, None] * self.freq[None]
        onehot = nn.functional.one_hot(labels, CLASSES + 1).to(x_in.dtype)
        return self.net(torch.cat([x_in, angle.sin(), angle.cos(), onehot], dim=1))

    def forward(self, x, s, a, labels):
        """D(x, s | label) for x = a x0 + s n; s, a: [N] tensors, labels [N] (NO_LABEL: none)."""
        sd = self.sigma_data
        q = s**2 + (a * sd) ** 2
        sigma_t = (s / a.clamp(min=1e-12)).clamp(*SIGMA_TILDE_RANGE)
        c_noise = sigma_t.log() / 4
        f = self.raw(x / q.sqrt()[:, None], c_noise, labels)
        return (sd**2 * a / q)[:, None] * x + (s * sd / q.sqrt())[:, None] * f


def train(log=print):
    """Train the denoiser deterministically; returns (model, seconds)."""
    torch.manual_seed(TRAIN["seed"])
    data, targets = load_digits_tensor()
    data = data.float()
    sd = float(data.std())
    model = DigitsDenoiser(sd)
    opt = torch.optim.Adam(model.parameters(), lr=TRAIN["lr"])
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, TRAIN["lr"], total_steps=TRAIN["steps"])
    gen = torch.Generator().manual_seed(TRAIN["seed"])
    t0 = time.time()
    lo, hi = math.log(SIGMA_TILDE_RANGE[0]), math.log(SIGMA_TILDE_RANGE[1])
    for step in range(TRAIN["steps"]):
        idx = torch.randint(0, data.shape[0], (TRAIN["batch"],), generator=gen)
        x0 = data[idx]
        dropped = torch.rand(TRAIN["batch"], generator=gen) < TRAIN["label_dropout"]
        labels = torch.where(dropped, NO_LABEL, targets[idx])
        half = TRAIN["batch"] // 2
        log_sigma = torch.cat([-1.2 + 1.2 * torch.randn(half, generator=gen),
                               lo + (hi - lo) * torch.rand(TRAIN["batch"] - half, generator=gen)])
        sigma = log_sigma.exp()
        noisy = x0 + sigma[:, None] * torch.randn(x0.shape, generator=gen)
        # EDM's loss: lambda(sigma) |D - x0|^2 = |F - F_target|^2
        c_skip = sd**2 / (sigma**2 + sd**2)
        c_out = sigma * sd / (sigma**2 + sd**2).sqrt()
        target = (x0 - c_skip[:, None] * noisy) / c_out[:, None]
        pred = model.raw(noisy / (sigma**2 + sd**2).sqrt()[:, None],
                         sigma.clamp(*SIGMA_TILDE_RANGE).log() / 4, labels)
        loss = ((pred - target) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 1000 == 0 or step == TRAIN["steps"] - 1:
            log(f"    digits training step {step}: loss {loss.item():.4f}")
    return model.eval(), time.time() - t0


def load_or_train(log=print, retrain=False):
    if WEIGHTS.exists() and not retrain:
        state = torch.load(WEIGHTS, map_location="cpu", weights_only=True)
        model = DigitsDenoiser(float(state["sigma_data"]))
        model.load_state_dict(state)
        return model.eval(), 0.0
    model, seconds = train(log)
    WEIGHTS.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), WEIGHTS)
    size_mb = WEIGHTS.stat().st_size / 1e6
    log(f"    digits: trained in {seconds:.0f}s, saved {WEIGHTS} ({size_mb:.2f} MB)")
    return model, seconds


class CFGDigitsModel:
    """k-diffusion-style denoiser ``model(x, sigma, model_options=...)`` of the digits network
    with classifier-free guidance at scale ``cfg``, VE or flow.  Row i of a batch is guided
    towards digit i mod 10: balanced classes, and the same label for a row in every run (the
    benchmark splits batches the same way for the reference and for every sampler)."""

    def __init__(self, net, flow, cfg):
        self.net, self.flow, self.cfg = net, flow, float(cfg)

    @torch.no_grad()
    def __call__(self, x, sigma, model_options=None, **extra_args):
        labels = torch.arange(x.shape[0], device=x.device) % CLASSES
        return self.guided(x, sigma, labels, model_options)

    def parts(self, x, sigma, labels, uncond=True):
        """(conditional, unconditional or None) outputs for rows of the class ``labels``, float32
        (differentiable in x and sigma: bench.gradient_fit)."""
        s = sigma.to(torch.float32).reshape(-1).expand(x.shape[0])
        a = 1 - s if self.flow else torch.ones_like(s)
        x32 = x.to(torch.float32)
        cond = self.net(x32, s, a, labels)
        return cond, (self.net(x32, s, a, torch.full_like(labels, NO_LABEL)) if uncond else None)

    def guided(self, x, sigma, labels, model_options=None):
        """The guided denoiser for rows of the given class ``labels``."""
        model_options = model_options or {}
        x32 = x.to(torch.float32)
        cond, uncond = self.parts(x32, sigma, labels, self.cfg != 1.0 or model_options.get(
            "disable_cfg1_optimization", False))
        out = cond if uncond is None else uncond + (cond - uncond) * self.cfg
        for fn in model_options.get("sampler_post_cfg_function", []):
            out = fn({"denoised": out, "cond": None, "uncond": None, "cond_scale": self.cfg,
                      "model": self, "uncond_denoised": uncond, "cond_denoised": cond,
                      "sigma": sigma, "model_options": model_options, "input": x32})
        return out.to(x.dtype)


class RowLabelledDigitsModel:
    """The guided digits model for a calibration, which runs any subset of its noise rows
    (the field on a few rows, Jacobians on others, row chunks): each row carries its class in
    two extra, last coordinates, so the class follows the row and not its place in a batch (as
    in ComfyUI, where one prompt conditions every row).  The model returns them unchanged, so
    every deterministic sampler's direction there is 0 and they stay put (to rounding).  They
    hold class / 1000 and 1 / 1000, and the class is read as their ratio: a calibrated sampler
    whose steps need not keep a constant (lml_core.linear_fit: its rows need not sum to 1)
    scales both alike.  Small beside the data, so the reference's scale and the error norms
    barely see them."""

    LABEL_SCALE = 1e-3

    def __init__(self, model: CFGDigitsModel):
        self.model, self.flow = model, model.flow

    def __call__(self, x, sigma, model_options=None, **extra_args):
        labels = (x[:, -2] / x[:, -1]).round().long()
        out = self.model.guided(x[:, :-2], sigma, labels, model_options)
        return torch.cat([out, x[:, -2:]], 1)


def label_columns(labels, like):
    """[B, 2] columns that carry ``labels`` (a [B] class tensor) for RowLabelledDigitsModel."""
    scale = RowLabelledDigitsModel.LABEL_SCALE
    labels = labels.to(device=like.device, dtype=like.dtype)
    return torch.stack([labels * scale, torch.full_like(labels, scale)], 1)


def with_labels(noise):
    """``noise`` [B, 64] with the benchmark's class of each row (row i: digit i mod 10) in two
    last coordinates, for RowLabelledDigitsModel."""
    labels = torch.arange(noise.shape[0], device=noise.device) % CLASSES
    return torch.cat([noise, label_columns(labels, noise)], 1)


class FeatureDistance:
    """Frechet distance between classifier features of generated and real digits."""

    def __init__(self, seed=0, steps=300):
        torch.manual_seed(seed)
        data, labels = load_digits_tensor()
        data = data.float()
        # features: the 32 pre-activations of the last hidden layer (no dead ReLU units, so
        # their covariance is full rank)
        self.features = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 32))
        head = nn.Sequential(nn.ReLU(), nn.Linear(32, 10))
        opt = torch.optim.Adam(list(self.features.parameters()) + list(head.parameters()), 1e-3)
        for _ in range(steps):
            # light noise augmentation, so the features are meaningful near (not only on) data
            x = data + 0.05 * torch.randn_like(data)
            loss = nn.functional.cross_entropy(head(self.features(x)), labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            self.accuracy = float((head(self.features(data)).argmax(1) == labels).float().mean())
            self.real_stats = self._stats(data)
            half = data.shape[0] // 2
            perm = torch.randperm(data.shape[0], generator=torch.Generator().manual_seed(seed))
            self.split_floor = self._frechet(self._stats(data[perm[:half]]),
                                             self._stats(data[perm[half:]]))

    @torch.no_grad()
    def _stats(self, x):
        f = self.features(x.to(torch.float32)).double().numpy()
        return f.mean(0), np.cov(f, rowvar=False)

    @staticmethod
    def _frechet(s1, s2):
        from scipy import linalg

        (m1, c1), (m2, c2) = s1, s2
        covmean = linalg.sqrtm(c1 @ c2)
        covmean = covmean.real if np.iscomplexobj(covmean) else covmean
        return float(((m1 - m2) ** 2).sum() + np.trace(c1 + c2 - 2 * covmean))

    def __call__(self, x):
        return self._frechet(self._stats(x.reshape(x.shape[0], -1)), self.real_stats)


class _FittedSize(logging.Filter):
    def filter(self, record):
        return "was fitted on latents of shape" not in record.getMessage()


@contextlib.contextmanager
def fitted_size_warning_off():
    """The calibrations are fitted on 66 coordinates (the 64 pixels and two for the class) and
    sample 64: lml_calibrated's warning about the size, once per scoring, says nothing here."""
    flt = _FittedSize()
    logging.getLogger().addFilter(flt)
    try:
        yield
    finally:
        logging.getLogger().removeFilter(flt)
