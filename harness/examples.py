"""Run every example workflow (example_workflows/api/*.json) in a real, headless ComfyUI with this
pack, through the HTTP API, and write the images to output/examples/.

    bash scripts/run_examples.sh [--checkpoint FILE] [--size N] [--steps N]
    (= .host/venv/bin/python -m harness.examples ..., from the repository root)

Without --checkpoint the random-weight test checkpoint is used (no weights can be downloaded
here), so the pictures are structured noise: the run shows the plumbing, not image quality.
With --checkpoint (an SD1.5 .safetensors file) the examples run on that model.  The defaults
(128 px, 8 steps) keep a CPU run to a few minutes; --size 512 --steps 20 runs them as saved.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from . import comfy_host, workflows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path,
                        help="an SD1.5 checkpoint file to use instead of the random test one")
    parser.add_argument("--size", type=int, default=128,
                        help="image width and height in pixels (default 128, a CPU-sized run; "
                             "the workflow files say 512)")
    parser.add_argument("--steps", type=int, default=8,
                        help="sampling steps (default 8; the workflow files say 20)")
    parser.add_argument("--out", type=Path, default=comfy_host.ROOT / "output" / "examples")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of the server (default 1: fastest on a busy CPU)")
    args = parser.parse_args(argv)

    if args.checkpoint:
        checkpoint = args.checkpoint.resolve()
        if not checkpoint.is_file():
            parser.error(f"--checkpoint {checkpoint}: no such file")
    else:
        checkpoint = comfy_host.ensure_checkpoint()
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
        server.upload_image(workflows.write_input_image(
            server.base_dir / workflows.INPUT_IMAGE.name, size=args.size))
        for name in workflows.example_names():
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
            seconds = time.monotonic() - started
            print(f"  {name}: {len(images)} image(s) in {seconds:.1f} s")
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
