"""Prints, as JSON, the calibration cache keys of the test checkpoint alone, behind the test
LoRA of seed 1 and behind RescaleCFG 0.7, computed in this fresh process (its own object ids
and hash seed): test_calibration_cache compares them with its own.

    python tests/nodes/cache_key_probe.py     (from the repository root, PYTHONPATH=.)
"""

import json

import torch
from conftest import _load_checkpoint, load_pack  # tests/nodes/conftest: imports ComfyUI

from harness import comfy_host, loras

LATENT = torch.zeros([1, 4, 4, 4])
SETTINGS = {"seed": 1, "steps": 2}


def rescale_cfg(node, model):
    """RescaleCFG 0.7 (a V1 node's ``patch``; a V3 one's ``execute``)."""
    if hasattr(node, "patch"):
        return node().patch(model, 0.7)[0]
    return node.execute(model, 0.7).result[0]


def main():
    import comfy.sd
    import comfy_extras.nodes_model_advanced as advanced

    cache = load_pack("comfyui_lml_probe").nodes.calibration_cache
    model, clip, _ = _load_checkpoint(comfy_host.ensure_checkpoint())
    conds = [clip.encode_from_tokens_scheduled(clip.tokenize(text))
             for text in ("a red house by a lake", "blurry")]
    lora = loras.lora_weights(loras.model_shapes(model), 1)
    models = {"base": model,
              "lora": comfy.sd.load_lora_for_models(model, None, lora, 1.0, 0)[0],
              "rescale": rescale_cfg(advanced.RescaleCFG, model)}
    print(json.dumps({name: cache.key(m, *conds, LATENT, SETTINGS)[0]
                      for name, m in models.items()}))


if __name__ == "__main__":
    main()
