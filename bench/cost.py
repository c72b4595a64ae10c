"""Cost of the LM correction relative to one model call, side by side in one process.

Latent 4x128x128 (batch 1).  The model is a UNet-like stack of 3x3 convolutions at 320
channels: conv_in 4->320 at 128^2, a stride-2 conv 320->320 to 64^2, two convs 320->320 at
64^2, nearest upsampling and conv_out 320->4 at 128^2 (SiLU between).  Medians of repeated runs,
alternating model and correction so that machine noise hits both alike.
"""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn

from lml_core import lm_precondition


class ConvStack(nn.Module):
    def __init__(self, ch=320):
        super().__init__()
        self.conv_in = nn.Conv2d(4, ch, 3, padding=1)
        self.down = nn.Conv2d(ch, ch, 3, stride=2, padding=1)
        self.mid = nn.Sequential(nn.Conv2d(ch, ch, 3, padding=1), nn.SiLU(),
                                 nn.Conv2d(ch, ch, 3, padding=1), nn.SiLU())
        self.conv_out = nn.Conv2d(ch, 4, 3, padding=1)

    def forward(self, x):
        h = nn.functional.silu(self.conv_in(x))
        h = self.mid(nn.functional.silu(self.down(h)))
        h = nn.functional.interpolate(h, scale_factor=2, mode="nearest")
        return self.conv_out(h)


def conv_flops(ch=320, size=128):
    """Multiply-adds x 2 of ConvStack on a [1, 4, size, size] latent."""
    hw, hw2 = size * size, (size // 2) ** 2
    macs = 4 * ch * 9 * hw + ch * ch * 9 * hw2 * 3 + ch * 4 * 9 * hw
    return 2 * macs


@torch.no_grad()
def measure(repeats=7, log=print):
    torch.manual_seed(0)
    model = ConvStack().eval()
    x = torch.randn(1, 4, 128, 128)
    g = torch.randn_like(x)
    history = [torch.randn_like(x) for _ in range(4)]
    cases = {
        "rank 1, relative": dict(history=history[:1], kappa=1.0, damping_mode="relative"),
        "rank 1, adaptive": dict(history=history[:1], kappa=1.0, damping_mode="adaptive",
                                 omega=0.75),
        "rank 4, relative": dict(history=history, kappa=1.0, damping_mode="relative"),
    }
    model(x)  # warm-up
    for c in cases.values():
        lm_precondition(g, **c)
    times = {"model call": []}
    times.update({k: [] for k in cases})
    for _ in range(repeats):
        t0 = time.perf_counter()
        model(x)
        times["model call"].append(time.perf_counter() - t0)
        for name, c in cases.items():
            t0 = time.perf_counter()
            for _ in range(10):
                lm_precondition(g, **c)
            times[name].append((time.perf_counter() - t0) / 10)
    med = {k: statistics.median(v) for k, v in times.items()}
    numel = x.numel()
    result = {
        "latent": "1x4x128x128", "model_gflops": conv_flops() / 1e9,
        "threads": torch.get_num_threads(), "repeats": repeats,
        "median_seconds": med,
        "overhead_vs_model_call": {k: med[k] / med["model call"] for k in cases},
        "history_bytes_per_rank": numel * 4,
        "history_note": (f"each history vector is one float32 copy of the latent: "
                         f"{numel * 4 / 1024:.0f} KiB at 4x128x128 (x rank); inside the call "
                         f"the basis is stacked in "
                         f"float64: {(numel * 8) / 1024:.0f} KiB x (rank + 1), transient"),
    }
    log(f"  cost: model {med['model call'] * 1e3:.1f} ms ({result['model_gflops']:.1f} GFLOP); " +
        ", ".join(f"{k}: {med[k] * 1e3:.2f} ms = {100 * result['overhead_vs_model_call'][k]:.2f}%"
                  for k in cases))
    return result
