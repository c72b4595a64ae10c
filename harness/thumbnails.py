"""Draw the template-browser thumbnail of every example workflow.

    python -m harness.thumbnails      # example_workflows/<name>.jpg (harness.workflows does it too)

ComfyUI's template browser shows ``/api/workflow_templates/<pack>/<name>.jpg`` for each
``example_workflows/<name>.json``.  A random-weight test model cannot render a meaningful
picture, so the thumbnail is a small diagram of the workflow itself: every node as a box at its
saved position with its title, links as lines, the pack's nodes highlighted, and the workflow's
name on top.  Deterministic (same JSON, same JPEG), a few KB each.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES_DIR = ROOT / "example_workflows"
SIZE = (400, 300)
HEADER = 44
MAX_BYTES = 50_000

BACKGROUND = (30, 30, 36)
GRID = (40, 40, 48)
NODE = (58, 58, 66)
NODE_BORDER = (96, 96, 104)
LML_NODE = (40, 76, 122)
LML_BORDER = (77, 163, 255)
LINK = (150, 150, 160)
TEXT = (225, 225, 225)
ACCENT = (255, 159, 61)


def _font(size):
    # The harness runs in the host's venv (a current Pillow); the shipped nodes keep the
    # fallback for Pillow < 10.1 (nodes/lab_report.py font).
    return ImageFont.load_default(size=size)


def _is_lml(node_type: str, widgets) -> bool:
    values = [v for v in widgets or [] if isinstance(v, str)]
    return "LML" in node_type or any(v.startswith("lml_") for v in values)


def _title(name: str) -> str:
    return name.removeprefix("lml_").replace("_", " ")


def draw_thumbnail(workflow: dict, name: str) -> Image.Image:
    """The diagram of one UI-format workflow."""
    image = Image.new("RGB", SIZE, BACKGROUND)
    draw = ImageDraw.Draw(image)
    for x in range(0, SIZE[0], 20):
        draw.line([(x, HEADER), (x, SIZE[1])], fill=GRID)
    for y in range(HEADER, SIZE[1], 20):
        draw.line([(0, y), (SIZE[0], y)], fill=GRID)

    nodes = workflow.get("nodes", [])
    boxes = {}
    if nodes:
        left = min(n["pos"][0] for n in nodes)
        top = min(n["pos"][1] for n in nodes)
        right = max(n["pos"][0] + n.get("size", [320, 160])[0] for n in nodes)
        bottom = max(n["pos"][1] + n.get("size", [320, 160])[1] for n in nodes)
        area = (SIZE[0] - 20, SIZE[1] - HEADER - 16)
        scale = min(area[0] / max(right - left, 1), area[1] / max(bottom - top, 1))
        offset = (10 + (area[0] - (right - left) * scale) / 2,
                  HEADER + 8 + (area[1] - (bottom - top) * scale) / 2)
        for n in nodes:
            w, h = n.get("size", [320, 160])
            x0 = offset[0] + (n["pos"][0] - left) * scale
            y0 = offset[1] + (n["pos"][1] - top) * scale
            boxes[n["id"]] = (x0, y0, x0 + max(w * scale, 24), y0 + max(h * scale, 14))

    for link in workflow.get("links", []):
        source, target = boxes.get(link[1]), boxes.get(link[3])
        if source and target:
            start = (source[2], (source[1] + source[3]) / 2)
            end = (target[0], (target[1] + target[3]) / 2)
            draw.line([start, end], fill=LINK, width=1)

    label_font = _font(9)
    for n in nodes:
        x0, y0, x1, y1 = boxes[n["id"]]
        lml = _is_lml(n["type"], n.get("widgets_values"))
        draw.rounded_rectangle([x0, y0, x1, y1], radius=3, fill=LML_NODE if lml else NODE,
                               outline=LML_BORDER if lml else NODE_BORDER, width=2 if lml else 1)
        label = n.get("title") or n["type"]
        while label and draw.textlength(label, font=label_font) > x1 - x0 - 4:
            label = label[:-1]
        draw.text((x0 + 3, y0 + 2), label, fill=TEXT, font=label_font)

    draw.rectangle([0, 0, SIZE[0], HEADER], fill=(22, 22, 26))
    draw.text((10, 6), "LML", fill=ACCENT, font=_font(20))
    draw.text((62, 10), _title(name), fill=TEXT, font=_font(15))
    return image


def write_thumbnails(directory: Path = EXAMPLES_DIR) -> list[Path]:
    written = []
    for path in sorted(directory.glob("*.json")):
        workflow = json.loads(path.read_text())
        target = path.with_suffix(".jpg")
        draw_thumbnail(workflow, path.stem).save(target, "JPEG", quality=85, optimize=True)
        if target.stat().st_size > MAX_BYTES:
            raise RuntimeError(f"{target} is {target.stat().st_size} bytes (> {MAX_BYTES})")
        written.append(target)
    return written


if __name__ == "__main__":
    for written_path in write_thumbnails(Path(sys.argv[1]) if len(sys.argv) > 1 else EXAMPLES_DIR):
        print("wrote", written_path, written_path.stat().st_size, "bytes")
