"""LMLCompare: one queue, two samplers, one labelled side-by-side image.

The node samples the same model, noise (seed), sigmas (steps + scheduler) and conditioning
twice - once with a built-in baseline sampler, once with an LML solver - decodes both with the
VAE and returns one image per batch item: the baseline panel on the left, LML on the right,
each labelled with its sampler name and settings.  Both runs go through ComfyUI's own
``comfy.sample.sample_custom`` path, so model patches, masks (``noise_mask``), previews,
progress and Cancel behave as in the built-in samplers.
"""

from __future__ import annotations

import comfy.samplers
import latent_preview
import numpy as np
import torch
from comfy_api.latest import io
from PIL import Image, ImageDraw

from ..lml_core import DAMPING_MODES
from .bridge import StepDiagnostics, comfy_sampler, decode, run_ksampler
from .lab_report import font as pil_font
from .lm_settings import SOLVERS, check_number, sampler_options, solver_node_inputs, validate
from .sampler_nodes import ksampler_category


def _wrap(draw, text: str, font, width: int) -> list[str]:
    """Greedy word wrap of ``text`` to ``width`` pixels (a single long word stays whole)."""
    lines, current = [], ""
    for word in text.split(" "):
        candidate = f"{current} {word}".strip()
        if current and draw.textlength(candidate, font=font) > width:
            lines.append(current)
            current = word
        else:
            current = candidate
    return lines + [current] if current else lines


def label_panel(image: np.ndarray, lines: list[str]) -> tuple[np.ndarray, int]:
    """Draw ``lines`` (wrapped to the width) in white on a dark band at the top of an HxWx3
    uint8 image; the size is unchanged.  Under the band the image is darkened to at most a
    third of its brightness, so the text stays readable on any picture.  Returns the labelled
    image and the height of the band."""
    panel = Image.fromarray(image).convert("RGBA")
    width = panel.width
    font = pil_font(max(8, min(16, width // 28)))
    draw = ImageDraw.Draw(panel)
    wrapped = [part for line in lines for part in _wrap(draw, line, font, width - 8)]
    line_height = draw.textbbox((0, 0), "Ag", font=font)[3] + 2
    band_height = min(panel.height, 4 + line_height * len(wrapped))
    band = Image.new("RGBA", panel.size, (0, 0, 0, 0))
    ImageDraw.Draw(band).rectangle([0, 0, width, band_height - 1], fill=(0, 0, 0, 170))
    panel = Image.alpha_composite(panel, band)
    draw = ImageDraw.Draw(panel)
    for row, text in enumerate(wrapped):
        draw.text((4, 2 + row * line_height), text, fill=(255, 255, 255, 255), font=font)
    return np.asarray(panel.convert("RGB")), band_height


def side_by_side(left: torch.Tensor, right: torch.Tensor, left_lines, right_lines):
    """[B,H,W,C] float images -> [B,H,2W,3] with each half labelled.  Only the label band is
    redrawn: below it every pixel is the decoded image, unchanged."""
    grids = []
    for a, b in zip(left, right):
        panels = []
        for image, lines in ((a, left_lines), (b, right_lines)):
            image = image[..., :3].float().cpu()
            pixels = (image.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
            labelled, band_height = label_panel(pixels, lines)
            panel = image.clone()
            panel[:band_height] = torch.from_numpy(labelled[:band_height].astype(np.float32) / 255)
            panels.append(panel)
        grids.append(torch.cat(panels, dim=1))
    return torch.stack(grids)


def lml_settings(options: dict) -> str:
    """A one-line summary of the sampler options (``sampler_options``) for the panel label."""
    lm = options["lm"]
    text = f"rank {lm.rank}, damping {lm.damping:g} ({lm.damping_mode}), kappa {lm.kappa:g}"
    if lm.damping_mode == "adaptive":
        text += f", omega {lm.omega if lm.omega == 'auto' else format(lm.omega, 'g')}"
    if (lm.start_percent, lm.end_percent) != (0.0, 1.0):
        text += f", steps {lm.start_percent:g}-{lm.end_percent:g}"
    if lm.fade:
        text += f", fade {lm.fade:g}"
    if "eta" in options:
        text += f", eta {options['eta']:g}"
    return text


class LMLCompare(io.ComfyNode):
    """Baseline sampler vs LML, same model/seed/steps/conditioning, one labelled image."""

    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="LMLCompare",
            display_name="LML Compare (baseline vs LML)",
            category=ksampler_category(),
            description=(
                "Runs the same model, seed, steps, scheduler and conditioning twice - with a "
                "built-in sampler and with an LML solver - and returns one side-by-side image "
                "(baseline left, LML right) labelled with each sampler's settings."),
            inputs=[
                io.Model.Input("model", tooltip="The model used for both runs."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF,
                             control_after_generate=True,
                             tooltip="The noise seed, shared by both runs."),
                io.Int.Input("steps", default=20, min=1, max=10000),
                io.Float.Input("cfg", default=7.0, min=0.0, max=100.0, step=0.1, round=0.01),
                io.Combo.Input("scheduler", options=comfy.samplers.KSampler.SCHEDULERS,
                               default="karras"),
                io.Conditioning.Input("positive"),
                io.Conditioning.Input("negative"),
                io.Latent.Input("latent_image"),
                io.Vae.Input("vae", tooltip="Decodes both results."),
                io.Combo.Input("baseline_sampler", options=comfy.samplers.KSampler.SAMPLERS,
                               default="dpmpp_2m",
                               tooltip="The built-in sampler for the left-hand panel."),
                *solver_node_inputs().values(),
            ],
            outputs=[io.Image.Output(
                display_name="comparison",
                tooltip="Baseline (left) and LML (right) side by side, labelled; twice the "
                        "width.")],
        )

    @classmethod
    def validate_inputs(cls, scheduler=None, baseline_sampler=None, solver=None,
                        damping_mode=None, damping=None, fade=None, start_percent=None,
                        end_percent=None, cfg=None):
        # cfg: ComfyUI's bounds check lets NaN through, which would run both sides to NaN.
        return check_number(cls, "cfg", cfg) or validate(
            {"scheduler": (scheduler, comfy.samplers.KSampler.SCHEDULERS),
             "baseline_sampler": (baseline_sampler, comfy.samplers.KSampler.SAMPLERS),
             "solver": (solver, SOLVERS),
             "damping_mode": (damping_mode, DAMPING_MODES)},
            damping=damping, fade=fade, start_percent=start_percent, end_percent=end_percent)

    @classmethod
    def execute(cls, model, seed, steps, cfg, scheduler, positive, negative, latent_image, vae,
                baseline_sampler, solver, **lm) -> io.NodeOutput:
        message = check_number(cls, "cfg", cfg)
        if message:  # a linked cfg: known only now
            raise ValueError(message)
        options = sampler_options(solver, **lm)
        lml_name = f"lml_{solver}"
        # One progress bar over both runs: steps 1..n baseline, n+1..2n LML.
        preview = latent_preview.prepare_callback(model, 2 * steps)
        diagnostics = StepDiagnostics()
        runs = ((baseline_sampler, comfy.samplers.sampler_object(baseline_sampler)),
                (lml_name, comfy.samplers.KSAMPLER(comfy_sampler(lml_name, record=diagnostics),
                                                   extra_options=options)))
        results = []
        for offset, (name, sampler) in zip((0, steps), runs):
            def callback(step, x0, x, total, offset=offset):
                preview(step + offset, x0, x, 2 * steps)

            samples = run_ksampler(model, latent_image, seed, steps, cfg, sampler, name,
                                   scheduler, positive, negative, callback=callback)
            results.append(decode(vae, samples))

        left = [baseline_sampler, f"{scheduler}, {steps} steps, cfg {cfg:g}, seed {seed}"]
        right = [lml_name, lml_settings(options)]
        grid = side_by_side(results[0], results[1], left, right)
        return io.NodeOutput(grid, ui={"lml_diagnostics": [diagnostics.as_ui(solver)]})
