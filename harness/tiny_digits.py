"""The trained tiny digits checkpoint's networks, data and classifier (pure torch, no comfy).

ComfyUI detects an SD1.5 UNet by its weights: 320 model channels, a 768-wide cross-attention
context.  Training a 320-channel UNet on 2 CPU cores takes too long, so the checkpoint's UNet
is a 320-channel SD1.5 UNet whose weights are zero outside a few "active" channels: ``C`` of
the 320 channels (whole GroupNorm groups), ``HEAD_DIMS`` of the 40 dimensions of
``ACTIVE_HEADS`` of the 8 attention heads (a zero head attends to zero values: it adds
nothing), ``FF`` of the 1280 feed-forward units and ``EMB`` of the 1280 time-embedding
units.  Zero weights keep the other channels exactly zero through every layer, so the full
network computes what ``TinyUNet`` - the same layers cut to the active channels - computes;
``TinyUNet.full_state_dict`` writes the zero-padded SD1.5 weights.  Two details make the cut
exact: a GroupNorm group is either all active or all zero (GroupNorm(32, 320) has groups of
10 channels, GroupNorm(32, 640) of the skip concatenation groups of 20), and the
transformer's LayerNorm(320) averages over the zero channels too (``_layer_norm``).

The VAE is ComfyUI's TAESD with the same kind of cut: ``VAE_WIDTH`` of its 64 channels, and
the Blocks not in ``VAE_BLOCKS`` left zero - a zero Block is ReLU(0 + x), a ReLU.

Layout of the UNet (ComfyUI's UNetModel for this config): conv_in; input_blocks.1 = ResBlock +
SpatialTransformer; middle_block = ResBlock, SpatialTransformer, ResBlock; two output ResBlocks
on the skip concatenations; GroupNorm, SiLU, conv_out.  Eps prediction, SD1.5's schedule.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# The SD1.5 shapes ComfyUI expects
CHANNELS, TIME_EMB, HEADS, HEAD_DIM, FF_HIDDEN, CONTEXT, LATENT = 320, 1280, 8, 40, 1280, 768, 4
# The active part
C, EMB, ACTIVE_HEADS, HEAD_DIMS, FF = 40, 160, 2, 16, 160
OUTPUT_ATTENTION = False  # cross-attention in the output blocks too
# The time embedding reads only the sinusoids of period > ~200 timesteps: the UNet is trained
# and queried at integer timesteps (ComfyUI rounds sigma to the nearest one), and faster
# sinusoids would let eps jump from one timestep to the next - a rough ODE that no sampler,
# reference included, converges on.
SLOW_SINUSOIDS = 100  # of the 160 frequencies, the slowest
VAE_FULL, VAE_WIDTH = 64, 16
VAE_BLOCKS = ("taesd_encoder.13", "taesd_decoder.3", "taesd_decoder.8")
UNET_CONFIG = {
    "use_checkpoint": False, "image_size": 32, "use_spatial_transformer": True,
    "legacy": False, "adm_in_channels": None, "in_channels": LATENT, "out_channels": LATENT,
    "model_channels": CHANNELS, "num_res_blocks": [1], "channel_mult": [1],
    "transformer_depth": [1], "transformer_depth_output": [int(OUTPUT_ATTENTION)] * 2,
    "transformer_depth_middle": 1, "use_linear_in_transformer": False, "context_dim": CONTEXT,
    "use_temporal_resblock": False, "use_temporal_attention": False,
}
SD15_SCALE = 0.18215  # ComfyUI's latent_formats.SD15 scale factor

DIGIT_PROMPT = "a handwritten digit {}"
TEMPLATES = (DIGIT_PROMPT,)
UNCOND_PROMPTS = ("", "blurry", "blurry, low quality, watermark, text")
IMAGE_SIZE = 64


def _index(kind):
    """Full-size indices of the active part of one tensor dimension (None: all of it)."""
    arange = torch.arange
    return {
        "c": arange(C),
        "cc": torch.cat([arange(C), CHANNELS + arange(C)]),  # the skip concatenation
        "e": arange(EMB),
        "t": torch.cat([arange(160 - SLOW_SINUSOIDS, 160), arange(320 - SLOW_SINUSOIDS, 320)]),
        "a": (arange(ACTIVE_HEADS)[:, None] * HEAD_DIM + arange(HEAD_DIMS)[None]).reshape(-1),
        "h": arange(FF),
        "g": torch.cat([arange(FF), FF_HIDDEN + arange(FF)]),  # GEGLU: value, gate halves
        "w": arange(VAE_WIDTH),
        None: None,
    }[kind]


def _resblock_spec(prefix, concat):
    cin = "cc" if concat else "c"
    spec = {
        "in_layers.0.weight": (cin,), "in_layers.0.bias": (cin,),
        "in_layers.2.weight": ("c", cin, None, None), "in_layers.2.bias": ("c",),
        "emb_layers.1.weight": ("c", "e"), "emb_layers.1.bias": ("c",),
        "out_layers.0.weight": ("c",), "out_layers.0.bias": ("c",),
        "out_layers.3.weight": ("c", "c", None, None), "out_layers.3.bias": ("c",),
    }
    if concat:
        spec |= {"skip_connection.weight": ("c", "cc", None, None), "skip_connection.bias": ("c",)}
    return {f"{prefix}.{k}": v for k, v in spec.items()}


def _transformer_spec(prefix):
    block = "transformer_blocks.0"
    spec = {"norm.weight": ("c",), "norm.bias": ("c",),
            "proj_in.weight": ("c", "c", None, None), "proj_in.bias": ("c",),
            "proj_out.weight": ("c", "c", None, None), "proj_out.bias": ("c",),
            f"{block}.attn1.to_q.weight": ("a", "c"), f"{block}.attn1.to_k.weight": ("a", "c"),
            f"{block}.attn1.to_v.weight": ("a", "c"),
            f"{block}.attn2.to_q.weight": ("a", "c"), f"{block}.attn2.to_k.weight": ("a", None),
            f"{block}.attn2.to_v.weight": ("a", None),
            f"{block}.ff.net.0.proj.weight": ("g", "c"), f"{block}.ff.net.0.proj.bias": ("g",),
            f"{block}.ff.net.2.weight": ("c", "h"), f"{block}.ff.net.2.bias": ("c",)}
    for name in ("attn1", "attn2"):
        spec |= {f"{block}.{name}.to_out.0.weight": ("c", "a"),
                 f"{block}.{name}.to_out.0.bias": ("c",)}
    for norm in ("norm1", "norm2", "norm3"):
        spec |= {f"{block}.{norm}.weight": ("c",), f"{block}.{norm}.bias": ("c",)}
    return {f"{prefix}.{k}": v for k, v in spec.items()}


UNET_SPEC = {
    "time_embed.0.weight": ("e", "t"), "time_embed.0.bias": ("e",),
    "time_embed.2.weight": ("e", "e"), "time_embed.2.bias": ("e",),
    "input_blocks.0.0.weight": ("c", None, None, None), "input_blocks.0.0.bias": ("c",),
    **_resblock_spec("input_blocks.1.0", concat=False),
    **_transformer_spec("input_blocks.1.1"),
    **_resblock_spec("middle_block.0", concat=False),
    **_transformer_spec("middle_block.1"),
    **_resblock_spec("middle_block.2", concat=False),
    **_resblock_spec("output_blocks.0.0", concat=True),
    **_resblock_spec("output_blocks.1.0", concat=True),
    **({**_transformer_spec("output_blocks.0.1"), **_transformer_spec("output_blocks.1.1")}
       if OUTPUT_ATTENTION else {}),
    "out.0.weight": ("c",), "out.0.bias": ("c",),
    "out.2.weight": (None, "c", None, None), "out.2.bias": (None,),
}


def _vae_spec():
    spec = {}

    def conv(name, cin, cout, bias=True):
        spec[f"{name}.weight"] = (cout, cin, None, None)
        if bias:
            spec[f"{name}.bias"] = (cout,)

    for idx, (cin, cout, bias) in {0: (None, "w", True), 2: ("w", "w", False),
                                   6: ("w", "w", False), 10: ("w", "w", False),
                                   14: ("w", None, True)}.items():
        conv(f"taesd_encoder.{idx}", cin, cout, bias)
    for idx, (cin, cout, bias) in {1: (None, "w", True), 7: ("w", "w", False),
                                   12: ("w", "w", False), 17: ("w", "w", False),
                                   19: ("w", None, True)}.items():
        conv(f"taesd_decoder.{idx}", cin, cout, bias)
    for block in VAE_BLOCKS:
        for idx in (0, 2, 4):
            conv(f"{block}.conv.{idx}", "w", "w")
    return spec


VAE_SPEC = _vae_spec()


def pad(reduced: torch.Tensor, kinds, full_shape) -> torch.Tensor:
    """The full-size tensor: ``reduced`` at the active indices, zero elsewhere."""
    full = torch.zeros(full_shape, dtype=reduced.dtype)
    index = []
    for dim, (kind, size) in enumerate(zip(kinds, full_shape)):
        idx = torch.arange(size) if _index(kind) is None else _index(kind)
        shape = [1] * len(full_shape)
        shape[dim] = -1
        index.append(idx.reshape(shape))  # broadcast: the product of the index sets
    full[tuple(index)] = reduced
    return full


def reduced_shape(kinds, full_shape):
    return tuple(n if _index(k) is None else len(_index(k)) for k, n in zip(kinds, full_shape))


# --------------------------------------------------------------------------------------------
# The networks, cut to their active part


def _conv(x, p, name, **kw):
    return F.conv2d(x, p[f"{name}.weight"], p.get(f"{name}.bias"), **kw)


def _linear(x, p, name):
    return F.linear(x, p[f"{name}.weight"], p.get(f"{name}.bias"))


def _group_norm(x, p, name, eps):
    # C // 10 groups: 10 channels each of a 320 GroupNorm, 20 each of the 640 concatenation
    return F.group_norm(x, C // 10, p[f"{name}.weight"], p[f"{name}.bias"], eps)


def _layer_norm(x, p, name, eps=1e-5):
    """LayerNorm(320) of a vector that is zero outside its C active entries."""
    mean = x.sum(-1, keepdim=True) / CHANNELS
    var = (((x - mean) ** 2).sum(-1, keepdim=True) + (CHANNELS - C) * mean**2) / CHANNELS
    return (x - mean) / torch.sqrt(var + eps) * p[f"{name}.weight"] + p[f"{name}.bias"]


def timestep_embedding(t, dim=CHANNELS, max_period=10000):
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def _attention(x, context, p, name, context_index=None):
    """Multi-head attention; with ``context_index``, ``context`` is a table of contexts and
    row i attends to context[context_index[i]] (keys and values computed once per table row)."""
    n, length, _ = x.shape
    q = _linear(x, p, f"{name}.to_q").view(n, length, ACTIVE_HEADS, HEAD_DIMS).transpose(1, 2)
    k, v = _linear(context, p, f"{name}.to_k"), _linear(context, p, f"{name}.to_v")
    if context_index is not None:
        k, v = k[context_index], v[context_index]
    k = k.view(n, -1, ACTIVE_HEADS, HEAD_DIMS).transpose(1, 2)
    v = v.view(n, -1, ACTIVE_HEADS, HEAD_DIMS).transpose(1, 2)
    weights = torch.softmax(q @ k.transpose(-1, -2) * HEAD_DIM**-0.5, dim=-1)
    out = (weights @ v).transpose(1, 2).reshape(n, length, ACTIVE_HEADS * HEAD_DIMS)
    return _linear(out, p, f"{name}.to_out.0")


def _resblock(x, emb, p, name):
    h = _conv(F.silu(_group_norm(x, p, f"{name}.in_layers.0", 1e-5)), p,
              f"{name}.in_layers.2", padding=1)
    h = h + _linear(F.silu(emb), p, f"{name}.emb_layers.1")[:, :, None, None]
    h = _conv(F.silu(_group_norm(h, p, f"{name}.out_layers.0", 1e-5)), p,
              f"{name}.out_layers.3", padding=1)
    skip = _conv(x, p, f"{name}.skip_connection") if x.shape[1] != C else x
    return skip + h


def _transformer(x, context, p, name, context_index=None):
    n, _, height, width = x.shape
    h = _conv(_group_norm(x, p, f"{name}.norm", 1e-6), p, f"{name}.proj_in")
    h = h.movedim(1, 3).flatten(1, 2)
    block = f"{name}.transformer_blocks.0"
    normed = _layer_norm(h, p, f"{block}.norm1")
    h = _attention(normed, normed, p, f"{block}.attn1") + h
    h = _attention(_layer_norm(h, p, f"{block}.norm2"), context, p, f"{block}.attn2",
                   context_index) + h
    value, gate = _linear(_layer_norm(h, p, f"{block}.norm3"), p,
                          f"{block}.ff.net.0.proj").chunk(2, dim=-1)
    h = _linear(value * F.gelu(gate), p, f"{block}.ff.net.2") + h
    h = h.reshape(n, height, width, C).movedim(3, 1)
    return _conv(h, p, f"{name}.proj_out") + x


class _Reduced(nn.Module):
    """Parameters named by their ComfyUI key (dots as "/"), shaped as the active part."""

    SPEC: dict = {}
    PREFIX = ""

    def __init__(self, full_shapes: dict, generator: torch.Generator):
        """``full_shapes``: ComfyUI's state dict (or shapes) under the checkpoint keys;
        the weights start at random, scaled by their fan-in."""
        super().__init__()
        self.params = nn.ParameterDict()
        full_shapes = {k[len(self.PREFIX):] if k.startswith(self.PREFIX) else k:
                       tuple(getattr(v, "shape", v)) for k, v in full_shapes.items()}
        for key, kinds in self.SPEC.items():
            shape = reduced_shape(kinds, full_shapes[key])
            if key.endswith("weight") and len(shape) == 1:  # normalisation scales
                value = torch.ones(shape)
            elif key.endswith("bias"):
                value = torch.zeros(shape)
            else:
                fan_in = math.prod(shape[1:])
                value = torch.randn(shape, generator=generator) / math.sqrt(fan_in)
            self.params[key.replace(".", "/")] = nn.Parameter(value)
        self.full_shapes = {k: full_shapes[k] for k in self.SPEC}

    @classmethod
    def from_reduced(cls, full_shapes: dict, state: dict):
        return cls(full_shapes, torch.Generator().manual_seed(0)).load_reduced(state)

    @property
    def p(self):
        return {k.replace("/", "."): v for k, v in self.params.items()}

    def full_state_dict(self, dtype=torch.float16) -> dict:
        """The zero-padded weights under ComfyUI's checkpoint keys."""
        p = self.p
        return {f"{self.PREFIX}{key}": pad(p[key].detach().to(dtype), kinds,
                                           self.full_shapes[key])
                for key, kinds in self.SPEC.items()}

    def reduced_state(self) -> dict:
        return {k: v.detach().clone() for k, v in self.p.items()}

    def load_reduced(self, state: dict):
        for key, value in state.items():
            self.params[key.replace(".", "/")].data.copy_(value.float())
        return self


class TinyUNet(_Reduced):
    """eps(x_in, timestep, context) of the SD1.5-layout UNet, on its active channels."""

    SPEC = UNET_SPEC
    PREFIX = "model.diffusion_model."

    def forward(self, x, timesteps, context, context_index=None):
        """eps for model input ``x`` (x / sqrt(sigma^2 + 1)), ``timesteps`` [N] and ``context``
        [N, 77, 768] (or a table of contexts and ``context_index`` [N] into it)."""
        p = self.p
        sinusoids = timestep_embedding(timesteps)[:, _index("t")]
        emb = _linear(F.silu(_linear(sinusoids, p, "time_embed.0")), p, "time_embed.2")
        h0 = _conv(x, p, "input_blocks.0.0", padding=1)
        h1 = _transformer(_resblock(h0, emb, p, "input_blocks.1.0"), context, p,
                          "input_blocks.1.1", context_index)
        h = _resblock(h1, emb, p, "middle_block.0")
        h = _transformer(h, context, p, "middle_block.1", context_index)
        h = _resblock(h, emb, p, "middle_block.2")
        for block, skip in (("output_blocks.0", h1), ("output_blocks.1", h0)):
            h = _resblock(torch.cat([h, skip], 1), emb, p, f"{block}.0")
            if OUTPUT_ATTENTION:
                h = _transformer(h, context, p, f"{block}.1", context_index)
        return _conv(F.silu(_group_norm(h, p, "out.0", 1e-5)), p, "out.2", padding=1)


def _taesd_block(x, p, name):
    if f"{name}.conv.0.weight" not in p:  # a zero Block is a ReLU
        return F.relu(x)
    h = F.relu(_conv(x, p, f"{name}.conv.0", padding=1))
    h = F.relu(_conv(h, p, f"{name}.conv.2", padding=1))
    return F.relu(_conv(h, p, f"{name}.conv.4", padding=1) + x)


class TinyTAESD(_Reduced):
    """ComfyUI's TAESD (comfy/taesd/taesd.py) on its active channels: ``encode`` maps [0, 1]
    pictures to raw latents, ``decode`` raw latents to [0, 1] pictures (TAESD.encode/decode
    without vae_scale/vae_shift and the [-1, 1] conversions)."""

    SPEC = VAE_SPEC
    PREFIX = "first_stage_model."

    def encode(self, image):
        p, e = self.p, "taesd_encoder"
        h = _taesd_block(_conv(image, p, f"{e}.0", padding=1), p, f"{e}.1")
        for down, blocks in ((2, (3, 4, 5)), (6, (7, 8, 9)), (10, (11, 12, 13))):
            h = _conv(h, p, f"{e}.{down}", padding=1, stride=2)
            for block in blocks:
                h = _taesd_block(h, p, f"{e}.{block}")
        return _conv(h, p, f"{e}.14", padding=1)

    def decode(self, latent):
        p, d = self.p, "taesd_decoder"
        h = F.relu(_conv(torch.tanh(latent / 3) * 3, p, f"{d}.1", padding=1))
        for blocks, conv in (((3, 4, 5), 7), ((8, 9, 10), 12), ((13, 14, 15), 17)):
            for block in blocks:
                h = _taesd_block(h, p, f"{d}.{block}")
            h = _conv(F.interpolate(h, scale_factor=2, mode="nearest"), p, f"{d}.{conv}",
                      padding=1)
        h = _taesd_block(h, p, f"{d}.18")
        return _conv(h, p, f"{d}.19", padding=1)


# --------------------------------------------------------------------------------------------
# Data and the class check


def digit_prompt(digit: int) -> str:
    return DIGIT_PROMPT.format(digit)


def digits_8x8():
    """scikit-learn's 1797 handwritten digits: ink in [0, 1] on an 8x8 grid, and labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return (torch.from_numpy(digits.images.astype(np.float32) / 16.0),
            torch.from_numpy(digits.target.astype(np.int64)))


def ink_to_image(ink: torch.Tensor, size=IMAGE_SIZE) -> torch.Tensor:
    """[N, 8, 8] ink -> [N, 3, size, size] pictures in [0, 1]: dark ink on white paper, the 8x8
    grid upscaled bicubically."""
    up = F.interpolate(ink[:, None], size=(size, size), mode="bicubic", align_corners=False)
    return (1.0 - up.clamp(0, 1)).expand(-1, 3, -1, -1).contiguous()


def image_to_ink(image: torch.Tensor) -> torch.Tensor:
    """[N, H, W, 3] or [N, 3, H, W] pictures in [0, 1] -> [N, 64] ink on the 8x8 grid."""
    if image.shape[-1] == 3:
        image = image.movedim(-1, 1)
    ink = 1.0 - image.float().mean(1, keepdim=True)
    return F.adaptive_avg_pool2d(ink, 8).reshape(image.shape[0], 64)


class DigitClassifier:
    """Logistic regression on the 8x8 ink of scikit-learn's digits, seen through the same
    upscale-then-average-down round trip that ``image_to_ink`` applies to generated pictures."""

    def __init__(self):
        from sklearn.linear_model import LogisticRegression

        ink, labels = digits_8x8()
        features = image_to_ink(ink_to_image(ink)).numpy()
        self.model = LogisticRegression(max_iter=2000, C=1.0).fit(features, labels.numpy())
        self.train_accuracy = float(self.model.score(features, labels.numpy()))

    def predict(self, image: torch.Tensor) -> np.ndarray:
        return self.model.predict(image_to_ink(image).detach().numpy())
