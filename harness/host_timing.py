"""End-to-end cost of KSamplerLML against the built-in KSampler in a real ComfyUI.

Both run the same graph (test checkpoint, same prompt, latent size, steps, cfg, scheduler) in one
server, alternating, with a fresh seed each time (ComfyUI caches identical prompts).  The time
of one run is ComfyUI's own execution_start -> execution_success interval from /history; only
the sampler node and a SaveLatent re-execute.  Reports medians and their ratio.

    .host/venv/bin/python -m harness.host_timing [--repeats 7] [--size 256] [--steps 10]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

from .comfy_host import CHECKPOINT_NAME, ComfyServer, install_host


def base_graph(size: int) -> dict:
    """Checkpoint, prompts and an empty latent: the part every timed prompt shares."""
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": CHECKPOINT_NAME}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a lighthouse", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage",
              "inputs": {"width": size, "height": size, "batch_size": 1}},
    }


def graph(sampler_node: dict, size: int) -> dict:
    return {
        **base_graph(size),
        "5": sampler_node,
        "6": {"class_type": "SaveLatent", "inputs": {"samples": ["5", 0],
                                                     "filename_prefix": "bench/lml"}},
    }


def sampler_nodes(seed: int, steps: int) -> dict:
    common = {"model": ["1", 0], "seed": seed, "steps": steps, "cfg": 5.0,
              "scheduler": "karras", "positive": ["2", 0], "negative": ["3", 0],
              "latent_image": ["4", 0], "denoise": 1.0}
    lml = {"class_type": "KSamplerLML", "inputs": {**common, "solver": "euler"}}
    return {
        "KSampler euler": {"class_type": "KSampler",
                           "inputs": {**common, "sampler_name": "euler"}},
        "KSamplerLML euler": lml,
        "KSampler lml_euler": {"class_type": "KSampler",
                               "inputs": {**common, "sampler_name": "lml_euler"}},
    }


def fill_lml_defaults(server: ComfyServer, node: dict) -> None:
    """Give KSamplerLML every widget at its default (the API format needs all inputs)."""
    required = server.object_info("KSamplerLML")["input"]["required"]
    for name, spec in required.items():
        if name not in node["inputs"] and len(spec) > 1 and "default" in spec[1]:
            node["inputs"][name] = spec[1]["default"]


def execution_seconds(entry: dict) -> float:
    stamps = {kind: data.get("timestamp") for kind, data in entry["status"]["messages"]}
    return (stamps["execution_success"] - stamps["execution_start"]) / 1000.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--size", type=int, default=256, help="image size in pixels")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    install_host()
    times: dict[str, list[float]] = {}
    with ComfyServer(threads=args.threads) as server:
        seed = 1000
        for repeat in range(args.repeats + 1):  # the first round warms up (model load)
            nodes = sampler_nodes(seed, args.steps)
            for label, node in nodes.items():
                if node["class_type"] == "KSamplerLML":
                    fill_lml_defaults(server, node)
                seed += 1
                node["inputs"]["seed"] = seed
                entry = server.run(graph(node, args.size), timeout=1800)
                if repeat:
                    times.setdefault(label, []).append(execution_seconds(entry))
    base = statistics.median(times["KSampler euler"])
    result = {label: {"median_s": statistics.median(ts), "ratio_vs_KSampler_euler":
                      statistics.median(ts) / base, "runs": ts} for label, ts in times.items()}
    print(json.dumps({"size": args.size, "steps": args.steps, "threads": args.threads,
                      "results": result}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
