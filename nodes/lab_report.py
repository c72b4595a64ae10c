"""The LML Sampler Lab's comfy-free parts: parsing the lists, the expected model-call counts, the
metric, the report, and the two pictures (a log-log chart and a labelled grid) drawn with PIL.

Nothing here imports comfy, so all of it is unit-tested without a host (tests/nodes/test_lab.py).
What each sampler is (stochastic, model calls per step) is lml_core.sampler_kinds, the table
the benchmark uses too.
The node itself (nodes/lab_node.py) only runs the samplers through ComfyUI and hands the
results to these functions.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

REPORT_VERSION = 1
MAX_STEPS = 10000

ERROR_METRIC = ("RMS over every latent value of (final latent - reference latent), in latent "
                "units; 0 = the reference itself")
PSNR_METRIC = ("PSNR of the decoded image against the decoded reference image, in dB (pixels "
               "in 0..1); null where the two are identical")
NFE_METRIC = ("model evaluations made by the sampler, counted (one evaluation = one guided "
              "prediction; ComfyUI batches cond and uncond into one forward pass when memory "
              "allows; model_calls counts the diffusion-model forward passes)")

# --------------------------------------------------------------------------------------------
# Parsing the text inputs


def _tokens(text) -> list[str]:
    return [t.strip() for t in re.split(r"[,\s]+", str(text or "")) if t.strip()]


def parse_names(text, known: Iterable[str], field: str, kind: str) -> list[str]:
    """Comma list of names from ``known``, order kept and duplicates dropped; a ValueError
    names ``field`` and the first unknown name (ComfyUI's ``kind`` list)."""
    known = list(known)
    names = []
    for name in _tokens(text):
        if name not in known:
            raise ValueError(f"{field}: unknown {kind} {name!r}; use names from ComfyUI's "
                             f"{kind} list: {', '.join(known)}")
        if name not in names:
            names.append(name)
    return names


def parse_samplers(text, known: Iterable[str]) -> list[str]:
    """``"euler, lml_euler,heun"`` -> ``["euler", "lml_euler", "heun"]`` (order kept,
    duplicates dropped).  Raises ValueError naming the first unknown name."""
    names = parse_names(text, known, "samplers", "sampler")
    if not names:
        raise ValueError("samplers: give at least one sampler name, e.g. 'euler,lml_euler'")
    return names


def parse_schedulers(text, known: Iterable[str]) -> list[str]:
    """``"karras, exponential"`` -> ``["karras", "exponential"]`` (order kept, duplicates
    dropped); empty -> ``[]`` (the study then runs on the node's ``scheduler`` alone).  Raises
    ValueError naming ``schedulers`` and the first unknown name."""
    return parse_names(text, known, "schedulers", "scheduler")


def row_label(sampler: str, scheduler: str | None = None) -> str:
    """A row's name in the table, the plot and the grid: ``"dpmpp_2m + karras"`` where the
    study compares schedulers, the sampler alone where it runs on one (``scheduler`` None)."""
    return sampler if scheduler is None else f"{sampler} + {scheduler}"


def label_of(row: dict) -> str:
    """The row's label (``row_label``); a row without one (a report from before the
    schedulers input) is named by its sampler."""
    return row.get("label") or row["sampler"]


def parse_steps(text) -> list[int]:
    """``"8, 4,2,4"`` -> ``[2, 4, 8]`` (sorted, duplicates dropped).  Raises ValueError naming
    the first entry that is not a whole number from 1 to 10000."""
    steps = set()
    for token in _tokens(text):
        try:
            value = int(token)
        except ValueError:
            raise ValueError(f"steps: {token!r} is not a whole number (give step counts "
                             "separated by commas, e.g. '4,8,16')") from None
        if not 1 <= value <= MAX_STEPS:
            raise ValueError(f"steps: {value} is out of range (1 to {MAX_STEPS})")
        steps.add(value)
    if not steps:
        raise ValueError("steps: give at least one step count, e.g. '4,8,16'")
    return sorted(steps)


# --------------------------------------------------------------------------------------------
# The metric


def rms_error(samples: torch.Tensor, reference: torch.Tensor) -> float:
    """Root mean square of ``samples - reference`` over every value (float64)."""
    if samples.shape != reference.shape:
        raise ValueError(f"shape {tuple(samples.shape)} != reference {tuple(reference.shape)}")
    diff = samples.detach().double().cpu() - reference.detach().double().cpu()
    return float(diff.pow(2).mean().sqrt())


def psnr(images: torch.Tensor, reference: torch.Tensor) -> float | None:
    """PSNR in dB of images against the reference, pixels clamped to 0..1; None when they are
    identical (infinite PSNR, which JSON cannot carry)."""
    if images.shape != reference.shape:
        raise ValueError(f"shape {tuple(images.shape)} != reference {tuple(reference.shape)}")
    a = images.detach().double().cpu().clamp(0, 1)
    b = reference.detach().double().cpu().clamp(0, 1)
    mse = float((a - b).pow(2).mean())
    if mse == 0.0:
        return None
    return 10.0 * math.log10(1.0 / mse)


# --------------------------------------------------------------------------------------------
# The report


def mark_best(rows: list[dict]) -> list[dict]:
    """Set ``best`` on every row: True where no other row reaches an error as low with as few
    model calls (the rows on the error-vs-NFE frontier: for each NFE, the row - a sampler, or a
    sampler and scheduler pair - with the lowest error at that many calls, unless a row with
    fewer calls does better still).  Rows without a finite error are never best."""
    for row in rows:
        error, nfe = row.get("error"), row.get("nfe")
        finite = isinstance(error, (int, float)) and math.isfinite(error)
        row["best"] = finite and not any(
            other is not row and isinstance(other.get("error"), (int, float))
            and math.isfinite(other["error"]) and other["nfe"] <= nfe
            and (other["error"] < error or (other["error"] == error and other["nfe"] < nfe))
            for other in rows)
    return rows


def build_report(reference: dict, rows: list[dict], settings: dict) -> dict:
    """The Lab's report: the reference run, the metric, the settings and one row per sampler
    (or sampler and scheduler pair) and step count (``sampler``, ``scheduler``, ``label``,
    ``steps``, ``nfe``, ``model_calls``, ``error``, ``psnr``, ``seconds``, ``stochastic``,
    ``best``), plus notes for the stochastic samplers."""
    rows = mark_best([dict(row) for row in rows])
    notes = []
    stochastic = sorted({row["sampler"] for row in rows if row.get("stochastic")})
    if stochastic:
        notes.append(f"Stochastic sampler{'s' if len(stochastic) > 1 else ''} "
                     f"{', '.join(stochastic)}: fresh noise is added while sampling, so the "
                     "error includes that noise and does not go to 0 with more steps.")
    if reference.get("stochastic"):
        notes.append(f"The reference sampler {reference['sampler']} is stochastic: every error "
                     "includes its noise; a deterministic reference (e.g. dpmpp_2m) is "
                     "better.")
    if any(row["sampler"] == "dpm_adaptive" for row in rows):
        notes.append("dpm_adaptive chooses its own steps: its nfe is what it used.")
    return {
        "version": REPORT_VERSION,
        "reference": dict(reference),
        "metric": {"error": ERROR_METRIC, "psnr": PSNR_METRIC, "nfe": NFE_METRIC},
        "settings": dict(settings),
        "rows": rows,
        "notes": notes,
    }


def format_table(report: dict) -> str:
    """The report's rows as a plain-text table (for logs and the command line)."""
    width = max([24] + [len(label_of(row)) for row in report["rows"]])
    lines = [f"{'sampler':<{width}} {'steps':>5} {'nfe':>5} {'error':>10} {'psnr dB':>8} "
             f"{'seconds':>8}"]
    for row in report["rows"]:
        psnr_text = "-" if row.get("psnr") is None else f"{row['psnr']:.2f}"
        lines.append(f"{label_of(row):<{width}} {row['steps']:>5} {row['nfe']:>5} "
                     f"{row['error']:>10.5f} {psnr_text:>8} {row['seconds']:>8.2f}"
                     + ("  *" if row.get("best") else ""))
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Pictures (PIL only; returned as HxWx3 uint8 arrays)

PALETTE = [(77, 163, 255), (255, 159, 61), (92, 214, 120), (235, 87, 87), (190, 120, 255),
           (240, 220, 80), (80, 220, 220), (255, 120, 200), (160, 160, 160), (150, 110, 70)]
BACKGROUND = (30, 30, 36)
PANEL = (22, 22, 26)
GRID_LINE = (58, 58, 66)
AXIS = (170, 170, 178)
TEXT = (225, 225, 225)


def font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        return ImageFont.load_default()


def _decades(lo: float, hi: float) -> tuple[float, float]:
    """Log10 axis limits: whole decades around [lo, hi] (at least one decade wide)."""
    a, b = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    if b - a < 1:
        b = a + 1
    return float(a), float(b)


def _ticks(lo_exp: float, hi_exp: float) -> list[float]:
    """Tick values on a log axis from 10**lo_exp to 10**hi_exp: 1, 2, 5 per decade, or only the
    decades when the span is wide."""
    mantissas = (1, 2, 5) if hi_exp - lo_exp <= 3 else (1,)
    return [m * 10.0 ** e for e in range(int(lo_exp), int(hi_exp) + 1) for m in mantissas
            if 10.0 ** lo_exp <= m * 10.0 ** e <= 10.0 ** hi_exp * 1.0001]


def _tick_label(value: float) -> str:
    if 1e-3 <= value < 1e5:
        return f"{value:g}"
    return f"{value:.0e}".replace("e-0", "e-").replace("e+0", "e")


# Where the study compares schedulers, a sampler keeps its colour and each scheduler has its
# own line pattern and marker (in the order the schedulers were listed).
DASHES = (None, (9, 5), (2, 4), (12, 4, 2, 4))
MARKERS = ("circle", "square", "triangle", "diamond")
MAX_LINE_LABELS = 8  # more lines than this: the legend alone names them


def line_style(rows: list[dict], label: str) -> tuple:
    """(colour, dash pattern or None, marker) of the plot line ``label``: the colour of its
    sampler (the samplers in the rows' order), the pattern and marker of its scheduler where the
    label names one (the schedulers in the rows' order), else solid with round markers."""
    samplers = list(dict.fromkeys(row["sampler"] for row in rows))
    schedulers = list(dict.fromkeys(row["scheduler"] for row in rows if _names_scheduler(row)))
    row = next(row for row in rows if label_of(row) == label)
    color = PALETTE[samplers.index(row["sampler"]) % len(PALETTE)]
    if not _names_scheduler(row):
        return color, DASHES[0], MARKERS[0]
    index = schedulers.index(row["scheduler"])
    return color, DASHES[index % len(DASHES)], MARKERS[index % len(MARKERS)]


def _names_scheduler(row: dict) -> bool:
    return row.get("scheduler") is not None and label_of(row) == row_label(row["sampler"],
                                                                            row["scheduler"])


def _polyline(draw, xy, color, width, dash=None):
    """A line through ``xy``, solid or in the ``dash`` pattern (on, off, ... lengths in px,
    carried on across the corners)."""
    if dash is None:
        draw.line(xy, fill=color, width=width, joint="curve")
        return
    part, done = 0, 0.0  # the pattern's part and how much of it is drawn
    for (xa, ya), (xb, yb) in zip(xy, xy[1:]):
        length = math.hypot(xb - xa, yb - ya)
        t = 0.0
        while t < length - 1e-9:
            step = min(dash[part] - done, length - t)
            if part % 2 == 0:
                a, b = t / length, (t + step) / length
                draw.line([(xa + a * (xb - xa), ya + a * (yb - ya)),
                           (xa + b * (xb - xa), ya + b * (yb - ya))], fill=color, width=width)
            t += step
            done += step
            if done >= dash[part] - 1e-9:
                part, done = (part + 1) % len(dash), 0.0


def _marker(draw, x, y, r, shape, color):
    if shape == "square":
        draw.rectangle([x - r, y - r, x + r, y + r], fill=color)
    elif shape == "triangle":
        draw.polygon([(x, y - r - 1), (x - r - 1, y + r), (x + r + 1, y + r)], fill=color)
    elif shape == "diamond":
        draw.polygon([(x, y - r - 1), (x + r + 1, y), (x, y + r + 1), (x - r - 1, y)],
                     fill=color)
    else:
        draw.ellipse([x - r, y - r, x + r, y + r], fill=color)


def draw_error_plot(report: dict, size=(768, 512)) -> np.ndarray:
    """Error against NFE on log-log axes, one labelled line per row label (a sampler, or a
    sampler and scheduler pair: the sampler's colour, the scheduler's pattern; in the report's
    order), the frontier rows ringed.  Rows with error 0 (the reference itself) cannot sit on a
    log axis and are left out."""
    width, height = size
    image = Image.new("RGB", size, BACKGROUND)
    draw = ImageDraw.Draw(image)
    title_font, label_font, small = font(18), font(14), font(12)
    ref = report["reference"]
    draw.text((16, 10), "LML Sampler Lab: error vs model calls", fill=TEXT, font=title_font)
    draw.text((16, 34), f"reference {ref['sampler']}, {ref['steps']} steps; error = RMS latent "
                        "difference (log-log)", fill=AXIS, font=small)

    rows = report["rows"]
    labels = list(dict.fromkeys(label_of(row) for row in rows))
    lines = {label: line_style(rows, label) for label in labels}
    points = {label: sorted((row["nfe"], row["error"], row.get("best", False))
                            for row in rows if label_of(row) == label
                            and row["nfe"] > 0 and isinstance(row["error"], (int, float))
                            and math.isfinite(row["error"]) and row["error"] > 0)
              for label in labels}
    spacing = max(12, min(22, (height - 58 - 62 - 40) // (len(labels) + 1)))
    legend_font = label_font if spacing >= 18 else small
    legend_width = max([draw.textlength(label, font=legend_font) for label in labels]
                       + [40]) + 44
    plot = (78, 62, width - int(legend_width) - 20, height - 58)  # x0, y0, x1, y1
    x0, y0, x1, y1 = plot
    draw.rectangle(plot, fill=PANEL, outline=GRID_LINE)

    all_points = [p for pts in points.values() for p in pts]
    if not all_points:
        draw.text((x0 + 20, (y0 + y1) // 2), "no nonzero finite errors to plot", fill=TEXT,
                  font=label_font)
        return np.asarray(image)
    nfe_lo, nfe_hi = _decades(min(p[0] for p in all_points), max(p[0] for p in all_points))
    err_lo, err_hi = _decades(min(p[1] for p in all_points), max(p[1] for p in all_points))

    def to_xy(nfe, error):
        fx = (math.log10(nfe) - nfe_lo) / (nfe_hi - nfe_lo)
        fy = (math.log10(error) - err_lo) / (err_hi - err_lo)
        return x0 + fx * (x1 - x0), y1 - fy * (y1 - y0)

    for value in _ticks(nfe_lo, nfe_hi):
        x, _ = to_xy(value, 10 ** err_lo)
        draw.line([(x, y0), (x, y1)], fill=GRID_LINE)
        label = _tick_label(value)
        draw.text((x - draw.textlength(label, font=small) / 2, y1 + 6), label, fill=AXIS,
                  font=small)
    for value in _ticks(err_lo, err_hi):
        _, y = to_xy(10 ** nfe_lo, value)
        draw.line([(x0, y), (x1, y)], fill=GRID_LINE)
        label = _tick_label(value)
        draw.text((x0 - 8 - draw.textlength(label, font=small), y - 7), label, fill=AXIS,
                  font=small)
    draw.rectangle(plot, outline=AXIS)
    xlabel = "model calls (NFE, counted)"
    draw.text(((x0 + x1) / 2 - draw.textlength(xlabel, font=label_font) / 2, y1 + 28), xlabel,
              fill=TEXT, font=label_font)
    ylabel = Image.new("RGB", (int(draw.textlength("RMS error", font=label_font)) + 4, 18),
                       BACKGROUND)
    ImageDraw.Draw(ylabel).text((2, 0), "RMS error", fill=TEXT, font=label_font)
    ylabel = ylabel.rotate(90, expand=True)
    image.paste(ylabel, (8, int((y0 + y1) / 2 - ylabel.height / 2)))

    placed = []  # the line-end labels (box, text, colour): they must not overlap
    for index, label in enumerate(labels):
        color, dash, marker = lines[label]
        xy = [to_xy(nfe, error) for nfe, error, _ in points[label]]
        if len(xy) > 1:
            _polyline(draw, xy, color, 3, dash)
        for (x, y), (_, _, best) in zip(xy, points[label]):
            _marker(draw, x, y, 4, marker, color)
            if best:
                draw.ellipse([x - 8, y - 8, x + 8, y + 8], outline=TEXT, width=2)
        if xy and len(labels) <= MAX_LINE_LABELS:  # label the line at its last point
            x, y = xy[-1]
            text_width = draw.textlength(label, font=small)
            box = [min(x + 8, x1 - 4 - text_width), y - 16, 0, 0]
            box[2], box[3] = box[0] + text_width, box[1] + 13
            while any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3]
                      for b, _, _ in placed) and box[3] + 13 < y1:
                box[1], box[3] = box[1] + 13, box[3] + 13
            placed.append((box, label, color))
        ly = y0 + 8 + index * spacing
        _polyline(draw, [(x1 + 14, ly + 8), (x1 + 38, ly + 8)], color, 3, dash)
        _marker(draw, x1 + 26, ly + 8, 3, marker, color)
        draw.text((x1 + 42, ly), label, fill=color, font=legend_font)
    for box, label, color in placed:  # over every line
        draw.text((box[0], box[1]), label, fill=color, font=small)
    ly = y0 + 8 + len(labels) * spacing + 6
    draw.ellipse([x1 + 18, ly + 1, x1 + 34, ly + 17], outline=TEXT, width=2)
    draw.text((x1 + 42, ly), "best at its NFE", fill=TEXT, font=small)
    return np.asarray(image)


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """One HxWxC float image in 0..1 -> HxWx3 uint8."""
    image = image[..., :3].detach().float().cpu().clamp(0, 1)
    if image.shape[-1] == 1:
        image = image.expand(*image.shape[:-1], 3)
    return (image * 255).round().to(torch.uint8).numpy()


def cell_size(shape: Sequence[int], longest=(128, 256)) -> tuple[int, int]:
    """The grid cell (width, height) for an HxW image: its aspect ratio, the longer side
    clamped to ``longest`` (small images are enlarged, large ones reduced)."""
    h, w = shape[0], shape[1]
    scale = min(max(longest[0], max(h, w)), longest[1]) / max(h, w)
    return max(1, round(w * scale)), max(1, round(h * scale))


def draw_grid(cells: dict, labels: Sequence[str], steps: Sequence[int],
              reference: np.ndarray, reference_label: str, captions: dict | None = None,
              best: Iterable = ()) -> np.ndarray:
    """The decoded samples as a labelled grid: one row per row label (a sampler, or a sampler
    and scheduler pair), one column per step count, the reference in an extra column on the
    right of the first row.  ``cells`` maps (label, steps) to an HxWx3 uint8 image;
    ``captions`` maps the same keys to a short text drawn under each picture; cells in ``best``
    get a highlighted frame."""
    captions = captions or {}
    best = set(best)
    cw, ch = cell_size(reference.shape)
    label_font, small = font(14), font(11)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    left = int(max([probe.textlength(name, font=label_font) for name in labels]
                   + [probe.textlength("reference", font=label_font)])) + 20
    top, caption_h, pad = 28, 16, 6
    width = left + (len(steps) + 1) * (cw + pad) + pad
    height = top + len(labels) * (ch + caption_h + pad) + pad
    image = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(image)

    def column_x(column):
        return left + pad + column * (cw + pad)

    def row_y(row):
        return top + pad + row * (ch + caption_h + pad)

    for column, count in enumerate(steps):
        text = f"{count} steps"
        draw.text((column_x(column) + cw / 2 - draw.textlength(text, font=label_font) / 2, 6),
                  text, fill=TEXT, font=label_font)
    draw.text((column_x(len(steps)) + cw / 2 - draw.textlength("reference", font=label_font)
               / 2, 6), "reference", fill=(255, 159, 61), font=label_font)

    def paste(picture, x, y, frame=None):
        tile = Image.fromarray(picture).convert("RGB")
        resample = Image.NEAREST if tile.width < cw else Image.LANCZOS
        image.paste(tile.resize((cw, ch), resample), (x, y))
        if frame:
            draw.rectangle([x - 3, y - 3, x + cw + 2, y + ch + 2], outline=frame, width=3)

    for row, name in enumerate(labels):
        y = row_y(row)
        draw.text((10, y + ch / 2 - 8), name, fill=TEXT, font=label_font)
        for column, count in enumerate(steps):
            x = column_x(column)
            key = (name, count)
            if key in cells:
                paste(cells[key], x, y, frame=(92, 214, 120) if key in best else None)
            caption = captions.get(key)
            if caption:
                while caption and draw.textlength(caption, font=small) > cw:
                    caption = caption[:-1]
                draw.text((x, y + ch + 2), caption, fill=AXIS, font=small)
    x, y = column_x(len(steps)), row_y(0)
    paste(reference, x, y, frame=(255, 159, 61))
    caption = reference_label
    while caption and draw.textlength(caption, font=small) > cw:
        caption = caption[:-1]
    draw.text((x, y + ch + 2), caption, fill=AXIS, font=small)
    return np.asarray(image)


def as_image_batch(picture: np.ndarray) -> torch.Tensor:
    """HxWx3 uint8 -> ComfyUI IMAGE [1, H, W, 3] float in 0..1."""
    return torch.from_numpy(picture.astype(np.float32) / 255.0).unsqueeze(0)
