"""Train the tiny digits checkpoint's VAE and UNet and write harness/weights/tiny_digits.pt.

    python -m harness.train_tiny [--threads N] [--out FILE] [--no-eval]
    (with the host's python: .host/venv/bin/python, from the repository root)

Data: scikit-learn's 1797 8x8 handwritten digits, upscaled to 64 px, dark ink on white.
1. The VAE (TinyTAESD, harness/tiny_digits.py) learns to reconstruct them through an 8x8x4
   latent, with noise on the latent (a decoder that tolerates a sampler's small errors) and a
   penalty that keeps each latent channel near mean 0, std 1.  vae_scale / vae_shift are then
   set so that ComfyUI's SD1.5 latent scaling (x 0.18215) gives the UNet unit-variance latents.
2. The UNet (TinyUNet) learns ComfyUI's own objective for SD1.5: eps prediction on SD1.5's
   1000-step discrete schedule (comfy.model_sampling.ModelSamplingDiscrete), input scaled by
   1/sqrt(sigma^2 + 1), timestep = the schedule index.  Its text conditioning is the random
   CLIP-L of the checkpoint, run through ComfyUI's own CLIP (comfy.sd.CLIP) on prompts like
   "a handwritten digit 7", so training sees exactly what CLIPTextEncode gives at sampling; 12%
   of the samples get an unconditional prompt ("", or a typical negative prompt) instead, for
   classifier-free guidance.  The eps loss is weighted towards high noise, and the time
   embedding reads only slow sinusoids (harness/tiny_digits.py says why).  Two cosine cycles,
   the second a fine-tuning at half the learning rate from the first one's moving average; the
   weights saved are the second one's exponential moving average.
Deterministic for a given thread count (fixed seeds); the printed times are this machine's.
--vae-from / --unet-from resume from an earlier run's file (the committed weights were made so,
in stages: VAE, first cycle, second cycle).
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from pathlib import Path

from . import comfy_host

VAE_TRAIN = dict(steps=600, batch=32, lr=2e-3, latent_noise=0.1, moments=0.1, seed=1)
UNET_TRAIN = dict(steps=2500, batch=48, lr=1e-3, warmup=200, uncond=0.12, ema=0.998, seed=2,
                  max_weight=50.0)
# a second cosine cycle from the first one's average, at half the learning rate
UNET_FINETUNE = dict(UNET_TRAIN, steps=1200, lr=5e-4, warmup=50, seed=3)


def clip_embeddings(model_config, clip_state):
    """[prompts, 77, 768] CLIPTextEncode outputs for every (template, digit), then the
    unconditional prompts; and the label (digit, or -1) of each row."""
    import torch

    from .tiny_digits import TEMPLATES, UNCOND_PROMPTS

    clip = comfy_host.digits_clip(model_config, clip_state)
    prompts = [(t.format(d), d) for t in TEMPLATES for d in range(10)]
    prompts += [(p, -1) for p in UNCOND_PROMPTS]
    rows = []
    for text, _ in prompts:
        cond = clip.encode_from_tokens_scheduled(clip.tokenize(text))
        rows.append(cond[0][0][0].float())
    return torch.stack(rows), torch.tensor([d for _, d in prompts])


def train_vae(taesd_shapes, images, log):
    import torch
    import torch.nn.functional as F

    from .tiny_digits import TinyTAESD

    cfg = VAE_TRAIN
    gen = torch.Generator().manual_seed(cfg["seed"])
    vae = TinyTAESD(taesd_shapes, gen)
    opt = torch.optim.Adam(vae.parameters(), lr=cfg["lr"])
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg["lr"], total_steps=cfg["steps"])
    for step in range(cfg["steps"]):
        batch = images[torch.randint(0, len(images), (cfg["batch"],), generator=gen)]
        latent = vae.encode(batch)
        noisy = latent + cfg["latent_noise"] * torch.randn(latent.shape, generator=gen)
        recon = F.mse_loss(vae.decode(noisy), batch)
        mean, std = latent.mean((0, 2, 3)), latent.std((0, 2, 3))
        loss = recon + cfg["moments"] * (mean.square() + (std - 1).square()).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 200 == 0 or step == cfg["steps"] - 1:
            log(f"  vae step {step}: reconstruction mse {recon.item():.5f}")
    return vae


def train_unet(unet_shapes, latents, labels, embeddings, prompt_labels, sigmas, log,
               cfg=UNET_TRAIN, start=None):
    """One cosine cycle of ``cfg`` from ``start`` (default: a fresh network); returns the
    exponential moving average of the weights."""
    import torch

    from .tiny_digits import TinyUNet

    gen = torch.Generator().manual_seed(cfg["seed"])
    unet = TinyUNet(unet_shapes, gen)
    if start is not None:  # rounded to fp16, as saved: --unet-from resumes exactly
        unet.load_reduced({k: v.half() for k, v in start.reduced_state().items()})
    else:
        with torch.no_grad():  # cross-attention starts as a plain average over the prompt
            for key, param in unet.params.items():
                if "attn2/to_q" in key:
                    param.zero_()
    ema = copy.deepcopy(unet).requires_grad_(False)
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg["lr"], weight_decay=0.0)
    warm, total = cfg["warmup"], cfg["steps"]
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (
        1 + math.cos(math.pi * min(s, total) / total)))
    # rows of ``embeddings`` by digit, and the unconditional rows
    by_digit = [torch.nonzero(prompt_labels == d).flatten() for d in range(10)]
    uncond_rows = torch.nonzero(prompt_labels < 0).flatten()
    # The eps loss weighted by sigma^2 (the x0 error) between 1 and max_weight: plain eps MSE
    # hardly sees the picture at high noise, where the prompt decides which digit it becomes.
    weight = (sigmas**2).clamp(1.0, cfg["max_weight"])
    weight = weight / weight.mean()
    for step in range(total):
        idx = torch.randint(0, len(latents), (cfg["batch"],), generator=gen)
        x0, digit = latents[idx], labels[idx]
        pick = torch.randint(0, 1 << 30, (cfg["batch"],), generator=gen)
        rows = torch.stack([by_digit[d][p % len(by_digit[d])] for d, p in zip(digit, pick)])
        dropped = torch.rand(cfg["batch"], generator=gen) < cfg["uncond"]
        # the empty prompt twice as often as each negative-style prompt
        weights = torch.tensor([2.0] + [1.0] * (len(uncond_rows) - 1))
        uncond = uncond_rows[torch.multinomial(weights, cfg["batch"], True, generator=gen)]
        context_index = torch.where(dropped, uncond, rows)
        t = torch.randint(0, len(sigmas), (cfg["batch"],), generator=gen)
        sigma = sigmas[t][:, None, None, None]
        eps = torch.randn(x0.shape, generator=gen)
        x_in = (x0 + sigma * eps) / torch.sqrt(sigma**2 + 1)
        error = (unet(x_in, t.float(), embeddings, context_index) - eps).square()
        loss = (weight[t][:, None, None, None] * error).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            decay = min(cfg["ema"], (step + 1) / (step + 10))
            for p_ema, p in zip(ema.parameters(), unet.parameters()):
                p_ema.lerp_(p, 1 - decay)
        if step % 500 == 0 or step == total - 1:
            log(f"  unet step {step}: eps mse {loss.item():.4f}")
    return ema


def sample(unet, cond, uncond, sigmas_schedule, ms_sigmas, cfg, gen):
    """Euler sampling with CFG in ComfyUI's model space (a check, not ComfyUI's sampler)."""
    import torch

    log_sigmas = ms_sigmas.log()
    x = torch.randn((cond.shape[0], 4, 8, 8), generator=gen) * sigmas_schedule[0]
    for s, s_next in zip(sigmas_schedule[:-1], sigmas_schedule[1:]):
        t = (log_sigmas - s.log()).abs().argmin().float().expand(x.shape[0])
        x_in = x / torch.sqrt(s**2 + 1)
        eps = unet(torch.cat([x_in, x_in]), torch.cat([t, t]), torch.cat([cond, uncond]))
        eps_c, eps_u = eps.chunk(2)
        denoised = x - s * (eps_u + cfg * (eps_c - eps_u))
        x = denoised + (x - denoised) / s * s_next if s_next > 0 else denoised
    return x


def karras(n, sigma_min, sigma_max, rho=7.0):
    import torch

    ramp = torch.linspace(0, 1, n)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return torch.cat([(hi + ramp * (lo - hi)) ** rho, torch.zeros(1)])


def evaluate(unet, vae, latent_to_raw, embeddings, prompt_labels, ms_sigmas, log, per_class=8):
    """Sample ``per_class`` digits of each class (prompt "a handwritten digit N", cfg 5,
    20 Euler steps) and classify the decoded pictures; returns the accuracy."""
    import torch

    from .tiny_digits import DigitClassifier

    classifier = DigitClassifier()
    digits = torch.arange(10).repeat_interleave(per_class)
    cond = embeddings[digits]  # the first template is DIGIT_PROMPT, rows 0..9
    uncond = embeddings[torch.nonzero(prompt_labels < 0).flatten()[0]].expand_as(cond)
    gen = torch.Generator().manual_seed(123)
    with torch.no_grad():
        x = sample(unet, cond, uncond, karras(20, float(ms_sigmas[0]), float(ms_sigmas[-1])),
                   ms_sigmas, 5.0, gen)
        images = vae.decode(latent_to_raw(x)).clamp(0, 1)
    predicted = torch.from_numpy(classifier.predict(images))
    correct = predicted == digits
    log(f"  classifier (train accuracy {classifier.train_accuracy:.3f}): sampled digits "
        f"recognised {correct.float().mean():.3f}; per class "
        + " ".join(f"{d}:{correct[digits == d].float().mean():.2f}" for d in range(10)))
    return float(correct.float().mean()), images


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: on a busy 2-core machine the fastest)")
    parser.add_argument("--out", type=Path, default=comfy_host.DIGITS_WEIGHTS)
    parser.add_argument("--no-eval", action="store_true")
    parser.add_argument("--unet-steps", type=int, default=UNET_TRAIN["steps"])
    parser.add_argument("--vae-steps", type=int, default=VAE_TRAIN["steps"])
    parser.add_argument("--max-weight", type=float, default=UNET_TRAIN["max_weight"])
    parser.add_argument("--vae-from", type=Path,
                        help="take the VAE from this weights file instead of training it")
    parser.add_argument("--unet-from", type=Path,
                        help="take the UNet's first cycle from this weights file")
    args = parser.parse_args(argv)
    UNET_TRAIN["steps"], VAE_TRAIN["steps"] = args.unet_steps, args.vae_steps
    UNET_TRAIN["max_weight"] = args.max_weight

    comfy_host.import_comfy()
    import comfy.model_sampling
    import torch

    from .tiny_digits import SD15_SCALE, TinyTAESD, TinyUNet, digits_8x8, ink_to_image

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    started = time.monotonic()
    log = lambda text: print(f"[{time.monotonic() - started:6.1f}s] {text}", flush=True)

    model_config, unet_state, clip_state, taesd_state = comfy_host.digits_parts()
    embeddings, prompt_labels = clip_embeddings(model_config, clip_state)
    ms_sigmas = comfy.model_sampling.ModelSamplingDiscrete(model_config).sigmas.float()
    log(f"CLIP embeddings of {len(embeddings)} prompts")

    ink, labels = digits_8x8()
    images = ink_to_image(ink)
    if args.vae_from:  # retrain the UNet only, on an earlier run's VAE
        vae = TinyTAESD.from_reduced(taesd_state, torch.load(
            args.vae_from, map_location="cpu", weights_only=True)["vae"])
    else:
        vae = train_vae(taesd_state, images, log)
    with torch.no_grad():
        raw = torch.cat([vae.encode(chunk) for chunk in images.split(256)])
    mean, std = raw.mean(), raw.std()
    vae_scale = SD15_SCALE * std
    vae_shift = -mean / vae_scale
    latents = (raw - mean) / std  # = SD15_SCALE * (raw / vae_scale + vae_shift)
    log(f"VAE trained; latent mean {mean:.3f} std {std:.3f}; per channel std "
        + " ".join(f"{v:.2f}" for v in latents.std((0, 2, 3))))

    data = (latents, labels, embeddings, prompt_labels, ms_sigmas, log)
    if args.unet_from:  # the first cycle's result, from an earlier run
        unet = TinyUNet.from_reduced(unet_state, torch.load(
            args.unet_from, map_location="cpu", weights_only=True)["unet"])
    else:
        unet = train_unet(unet_state, *data)
    log("fine-tuning")
    unet = train_unet(unet_state, *data, cfg=UNET_FINETUNE, start=unet)
    seconds = time.monotonic() - started
    log(f"trained in {seconds:.0f} s on {args.threads} thread(s)")

    state = {"unet": {k: v.half() for k, v in unet.reduced_state().items()},
             "vae": {k: v.half() for k, v in vae.reduced_state().items()},
             "vae_scale": vae_scale.reshape(()).clone(), "vae_shift": vae_shift.reshape(()).clone()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, args.out)
    log(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB)")

    if not args.no_eval:
        evaluate(unet, vae, lambda x: x * std + mean, embeddings, prompt_labels, ms_sigmas, log)
    return 0


if __name__ == "__main__":
    sys.exit(main())
