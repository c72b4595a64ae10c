"""LMLCompare: one queue, two samplers, one labelled side-by-side image.

The node samples the same model, noise (seed), sigmas (steps + scheduler) and conditioning
twice - once with a built-in baseline sampler, once with an LML solver - decodes both with the
VAE and returns one image per batch item: the baseline panel on the left, LML on the right,
under a band that labels each with its sampler name and settings; small pictures are enlarged
(nearest neighbour, to at least 256 px) so that they stay visible.  Both runs go through
ComfyUI's own ``comfy.sample.sample_custom`` path, so model patches, masks (``noise_mask``),
previews, progress and Cancel behave as in the built-in samplers.
"""

from __future__ import annotations

import math

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


MIN_PANEL = 256  # the short side small panels are enlarged to, for display
BAND = (24, 24, 28)  # the label band's background
LABEL = (255, 255, 255)


def panel_scale(height: int, width: int, minimum: int = MIN_PANEL) -> int:
    """The whole factor that enlarges an HxW picture to at least ``minimum`` px on its short
    side (1 for a picture that large already): whole factors keep every pixel a sharp block."""
    return max(1, math.ceil(minimum / max(1, min(height, width))))


def label_band(panel_width: int, labels: list[list[str]]) -> np.ndarray:
    """One dark band with a column of text per panel (``labels``: the lines of each panel,
    wrapped to ``panel_width``), as an HxWx3 uint8 array ``len(labels) * panel_width`` wide:
    the labels go above the pictures, never on them."""
    font = pil_font(max(12, min(20, panel_width // 22)))
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    wrapped = [[part for line in lines for part in _wrap(probe, line, font, panel_width - 12)]
               for lines in labels]
    line_height = probe.textbbox((0, 0), "Ag", font=font)[3] + 3
    height = 8 + line_height * max(1, max(len(lines) for lines in wrapped))
    band = Image.new("RGB", (panel_width * len(labels), height), BAND)
    draw = ImageDraw.Draw(band)
    for column, lines in enumerate(wrapped):
        for row, text in enumerate(lines):
            draw.text((column * panel_width + 6, 4 + row * line_height), text, fill=LABEL,
                      font=font)
    return np.asarray(band)


def enlarge(image: torch.Tensor, factor: int) -> torch.Tensor:
    """An HxWxC image enlarged ``factor`` times, nearest neighbour (every pixel a block)."""
    return image.repeat_interleave(factor, dim=0).repeat_interleave(factor, dim=1)


def side_by_side(left: torch.Tensor, right: torch.Tensor, left_lines, right_lines):
    """[B,H,W,C] float images -> [B, band + kH, 2kW, 3]: each pair of pictures side by side,
    enlarged k times (nearest neighbour; ``panel_scale``: small pictures to at least 256 px),
    under one label band with each panel's lines.  Under the band every pixel is a decoded
    image's pixel."""
    factor = panel_scale(left.shape[1], left.shape[2])
    band = torch.from_numpy(label_band(left.shape[2] * factor, [left_lines, right_lines])
                            .astype(np.float32) / 255)
    grids = []
    for a, b in zip(left, right):
        panels = torch.cat([enlarge(image[..., :3].float().cpu(), factor) for image in (a, b)],
                           dim=1)
        grids.append(torch.cat([band, panels], dim=0))
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
                "(baseline left, LML right) under a band labelled with each sampler's "
                "settings; small pictures are enlarged (nearest neighbour) to at least 256 px."),
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
                tooltip="Baseline (left) and LML (right) side by side under a label band; "
                        "pictures under 256 px are enlarged (nearest neighbour, whole "
                        "factors).")],
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
