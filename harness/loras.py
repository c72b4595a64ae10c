"""Small random LoRAs for the test checkpoints: two seeds give two LoRAs of the same layers,
rank and strength that differ only in their values, which is what a cache must tell apart.

The keys are ComfyUI's generic LoRA format (``diffusion_model.<layer>.lora_up.weight``,
``.lora_down.weight``, ``.alpha``), which comfy.lora maps onto the UNet's own keys, so the
host's LoRA loaders (comfy.sd.load_lora_for_models, LoraLoaderModelOnly) apply them as they
apply any LoRA file.  Nothing here imports comfy.
"""

from __future__ import annotations

import math
from pathlib import Path

# Layers whose name ends so: the attention projections and the UNet's output convolution.
LAYERS = ("to_q", "to_k", "to_v", "to_out.0", "out.2")
RANK = 2


def lora_weights(shapes: dict, seed: int) -> dict:
    """A LoRA of rank RANK for ``shapes`` ({"diffusion_model.<layer>": weight shape}), its
    update about half the size of the weights it changes."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    weights = {}
    for layer, shape in sorted(shapes.items()):
        if not layer.endswith(LAYERS) or len(shape) < 2:
            continue
        down = torch.randn((RANK, *shape[1:]), generator=generator)
        up = torch.randn((shape[0], RANK, *[1] * (len(shape) - 2)), generator=generator)
        weights[f"{layer}.lora_down.weight"] = down / math.sqrt(math.prod(shape[1:]))
        weights[f"{layer}.lora_up.weight"] = up * 0.5 / math.sqrt(RANK)
        weights[f"{layer}.alpha"] = torch.tensor(float(RANK))
    return weights


def model_shapes(model_patcher) -> dict:
    """The UNet layer shapes of a loaded ModelPatcher, for ``lora_weights``."""
    return {key[:-len(".weight")]: tuple(value.shape)
            for key, value in model_patcher.model.state_dict().items()
            if key.startswith("diffusion_model.") and key.endswith(".weight")}


def checkpoint_shapes(checkpoint: Path) -> dict:
    """The UNet layer shapes of a checkpoint file (read from its header only)."""
    from safetensors import safe_open

    prefix = "model."
    shapes = {}
    with safe_open(str(checkpoint), "pt") as file:
        for key in file.keys():
            if key.startswith(prefix + "diffusion_model.") and key.endswith(".weight"):
                shapes[key[len(prefix):-len(".weight")]] = tuple(file.get_slice(key).get_shape())
    return shapes


def write_lora(path: Path, checkpoint: Path, seed: int) -> Path:
    """Write the LoRA of ``seed`` for ``checkpoint`` to ``path`` (safetensors)."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(lora_weights(checkpoint_shapes(checkpoint), seed), str(path))
    return path
