"""LML Compare in-process: its baseline panel is what KSampler + VAEDecode give for the same
settings (KSampler's own sigmas, the discard-penultimate-sigma rule included), enlarged to at
least 256 px, and the labels sit in a band above the pictures, never on them."""

import importlib

import numpy as np
import pytest
import torch

LM = {"solver": "euler", "rank": 1, "damping": -1.0, "kappa": 0.5, "damping_mode": "relative",
      "omega": 0.75, "start_percent": 0.0, "end_percent": 1.0, "eta": 1.0, "s_noise": 1.0}


def test_panel_scale_enlarges_small_pictures_by_whole_factors(pack):
    scale = pack.nodes.compare_node.panel_scale
    assert scale(64, 64) == 4 and scale(128, 128) == 2 and scale(100, 300) == 3
    assert scale(256, 256) == 1 and scale(512, 768) == 1  # large enough already


@pytest.mark.parametrize("baseline, latent_size, factor", [
    ("uni_pc", 16, 2), ("dpm_2", 16, 2),
    ("euler", 8, 4),  # 64 px: the size at which a label on the picture hid most of it
])
def test_baseline_panel_is_ksampler_and_vae_decode_enlarged_under_the_label_band(
        pack, sd15, conds, baseline, latent_size, factor):
    model, _, vae = sd15
    compare = pack.nodes.compare_node
    node = pack.nodes.NODES_BY_ID["LMLCompare"]
    settings = {"seed": 11, "steps": 3, "cfg": 4.0, "scheduler": "karras"}
    latent = {"samples": torch.zeros([1, 4, latent_size, latent_size])}
    result = node.execute(model=model, positive=conds[0], negative=conds[1], vae=vae,
                          latent_image=latent, baseline_sampler=baseline, **LM, **settings)
    (grid,) = result.result

    host_nodes = importlib.import_module("nodes")  # ComfyUI's own KSampler and VAEDecode
    (sampled,) = host_nodes.common_ksampler(
        model, settings["seed"], settings["steps"], settings["cfg"], baseline,
        settings["scheduler"], conds[0], conds[1], latent)
    (image,) = host_nodes.VAEDecode().decode(vae, sampled)
    side = image.shape[1]  # 8 px per latent cell
    panel = side * factor
    assert panel >= 256

    # One picture per batch item: the label band on top, then the two panels side by side.
    left_lines = [baseline, "karras, 3 steps, cfg 4, seed 11"]
    right_lines = ["lml_euler", compare.lml_settings(
        pack.nodes.lm_settings.sampler_options(**LM))]
    band = compare.label_band(panel, [left_lines, right_lines])
    assert grid.shape == (1, band.shape[0] + panel, 2 * panel, 3)
    top = band.shape[0]
    assert torch.equal(grid[0, :top], torch.from_numpy(band.astype(np.float32) / 255))
    # The band holds the labels (white text in each half) ...
    text = (grid[0, :top] > 0.9).all(dim=-1)
    assert text[:, :panel].sum() > 50 and text[:, panel:].sum() > 50
    # ... and every pixel under it is a decoded image's, enlarged (each pixel a factor^2 block).
    left, right = grid[:, top:, :panel], grid[:, top:, panel:]
    assert torch.equal(left[0], compare.enlarge(image[0], factor))
    blocks = right[0].reshape(side, factor, side, factor, 3)
    assert torch.equal(blocks, blocks[:, :1, :, :1].expand_as(blocks))
    assert not torch.equal(left, right)
