"""LML Compare in-process: its baseline panel is what KSampler + VAEDecode give for the same
settings (KSampler's own sigmas, the discard-penultimate-sigma rule included)."""

import importlib

import pytest
import torch


@pytest.mark.parametrize("baseline", ["uni_pc", "dpm_2", "euler"])
def test_baseline_panel_is_ksampler_and_vae_decode_pixel_for_pixel(pack, sd15, conds,
                                                                   baseline):
    model, _, vae = sd15
    node = pack.nodes.NODES_BY_ID["LMLCompare"]
    settings = {"seed": 11, "steps": 3, "cfg": 4.0, "scheduler": "karras"}
    latent = {"samples": torch.zeros([1, 4, 16, 16])}
    result = node.execute(model=model, positive=conds[0], negative=conds[1], vae=vae,
                          latent_image=latent, baseline_sampler=baseline, solver="euler",
                          rank=1, damping=-1.0, kappa=0.5, damping_mode="relative",
                          omega=0.75, start_percent=0.0, end_percent=1.0, eta=1.0,
                          s_noise=1.0, **settings)
    (grid,) = result.result

    host_nodes = importlib.import_module("nodes")  # ComfyUI's own KSampler and VAEDecode
    (sampled,) = host_nodes.common_ksampler(
        model, settings["seed"], settings["steps"], settings["cfg"], baseline,
        settings["scheduler"], conds[0], conds[1], latent)
    (image,) = host_nodes.VAEDecode().decode(vae, sampled)

    left = grid[:, :, :image.shape[2]]
    # Only the label band at the top is redrawn: below it every pixel is the decoded image.
    pixels = (image[0].clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    label = [baseline, "karras, 3 steps, cfg 4, seed 11"]
    _, band = pack.nodes.compare_node.label_panel(pixels, label)
    assert band < image.shape[1] // 2
    assert torch.equal(left[:, band:], image[:, band:])
