"""Run every example workflow (example_workflows/api/*.json) in a real, headless ComfyUI with this
pack, through the HTTP API, and write the images to output/examples/.

    bash scripts/run_examples.sh [--checkpoint FILE] [--size N] [--steps N] [--docs]
    (= .host/venv/bin/python -m harness.examples ..., from the repository root)

Without --checkpoint the examples run on the trained tiny digits checkpoint (harness/
tiny_digits.py; no weights can be downloaded here): each example's prompt becomes "a
handwritten digit N" (a different N per example) with an empty negative prompt, at 64 px and
the workflow's own steps, and the pictures are handwritten digits; the img2img example starts
from a digit picture.  With --checkpoint (an SD1.5 .safetensors file) the examples run on that
model with their own prompts; the defaults there (128 px, 8 steps) keep a CPU run to a few
minutes, and --size 512 --steps 20 runs them as saved.  --docs also copies the Lab's grid and
plot to docs/images/ (the README's picture).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from . import comfy_host, workflows

DOCS_IMAGES = comfy_host.ROOT / "docs" / "images"
# the README's pictures: the SaveImage filename prefixes (after "lml/") that --docs copies
DOCS_PICTURES = ("lab_grid", "lab_plot")
IMG2IMG_INPUT_DIGIT = 3  # the img2img example redraws a 3 as its prompted digit


def write_digit_input(path: Path, size: int) -> Path:
    """A digit picture for the img2img example (the first scikit-learn digit of its class)."""
    from PIL import Image

    from .tiny_digits import digits_8x8, ink_to_image

    ink, labels = digits_8x8()
    first = int((labels == IMG2IMG_INPUT_DIGIT).nonzero()[0])
    picture = ink_to_image(ink[first:first + 1], size)[0].movedim(0, -1)
    Image.fromarray((picture.numpy() * 255).round().astype("uint8")).save(path)
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path,
                        help="an SD1.5 checkpoint file to use instead of the tiny digits one")
    parser.add_argument("--size", type=int,
                        help="image width and height in pixels (default: 64 on the digits "
                             "checkpoint, 128 with --checkpoint, a CPU-sized run; the workflow "
                             "files say 512)")
    parser.add_argument("--steps", type=int,
                        help="sampling steps (default: the workflow's own on the digits "
                             "checkpoint, 8 with --checkpoint; the workflow files say 20)")
    parser.add_argument("--out", type=Path, default=comfy_host.ROOT / "output" / "examples")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of the server (default 1: fastest on a busy CPU)")
    parser.add_argument("--docs", action="store_true",
                        help=f"copy the Lab's grid and plot to "
                             f"{DOCS_IMAGES.relative_to(comfy_host.ROOT)}/")
    args = parser.parse_args(argv)

    digits = args.checkpoint is None
    if digits:
        checkpoint = comfy_host.ensure_digits_checkpoint()
        args.size = args.size or 64
    else:
        checkpoint = args.checkpoint.resolve()
        if not checkpoint.is_file():
            parser.error(f"--checkpoint {checkpoint}: no such file")
        args.size, args.steps = args.size or 128, args.steps or 8
    args.out.mkdir(parents=True, exist_ok=True)

    server = comfy_host.ComfyServer(threads=args.threads)
    server._prepare_base()
    link = server.base_dir / "models" / "checkpoints" / checkpoint.name
    if not link.exists():
        link.symlink_to(checkpoint)
    server.start()
    written, failed = [], []
    try:
        print(f"ComfyUI {server.url} with {comfy_host.PACK_NAME}; checkpoint {checkpoint.name}")
        # the img2img input, drawn at --size (the shipped file is 256 px)
        input_image = server.base_dir / workflows.INPUT_IMAGE.name
        server.upload_image(write_digit_input(input_image, args.size) if digits else
                            workflows.write_input_image(input_image, size=args.size))
        for name in workflows.example_names():
            if digits:
                prompt = workflows.digits_prompt(workflows.load_api(name), name,
                                                 checkpoint.name, args.size, args.steps)
            else:
                prompt = workflows.smoke(workflows.load_api(name), steps=args.steps,
                                         size=args.size, checkpoint=checkpoint.name)
            started = time.monotonic()
            try:
                entry = server.run(prompt, timeout=1800)
            except (comfy_host.PromptRejected, comfy_host.PromptFailed) as error:
                failed.append(name)
                print(f"  {name}: FAILED {error}")
                continue
            images = comfy_host.output_files(entry, "images")
            for index, image in enumerate(images):
                suffix = f"_{index}" if len(images) > 1 else ""
                target = args.out / f"{name}{suffix}.png"
                target.write_bytes(server.view(image))
                written.append(target)
                prefix = image["filename"].rsplit("_", 2)[0]
                if args.docs and prefix in DOCS_PICTURES:
                    DOCS_IMAGES.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(target, DOCS_IMAGES / f"{prefix}.png")
                    written.append(DOCS_IMAGES / f"{prefix}.png")
            seconds = time.monotonic() - started
            drawn = f" (digit {workflows.example_digit(name)})" if digits else ""
            print(f"  {name}{drawn}: {len(images)} image(s) in {seconds:.1f} s")
            for output in entry["outputs"].values():
                for diagnostics in output.get("lml_diagnostics", []):
                    strength = ", ".join(f"{s:.3f}" for s in diagnostics["strength"])
                    print(f"    {diagnostics['solver']}: LM correction strength per step "
                          f"[{strength}]")
    finally:
        log = args.out / "comfyui.log"
        shutil.copyfile(server.log_path, log)
        server.stop()

    print(f"\n{len(written)} image(s) written to {args.out}:")
    for path in written:
        print(f"  {path}")
    print(f"ComfyUI's log: {log}")
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
