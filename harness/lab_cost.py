"""What the LML Sampler Lab costs against running the same samplers one by one, in a real ComfyUI.

One server, the test checkpoint.  A "study" is the Lab node (reference + every sampler at every
step count, decoded; plot and grid previewed).  "One by one" is what a user would queue instead:
one prompt per sampler and step count plus one for the reference, each KSampler -> VAEDecode ->
PreviewImage.  The two alternate (which goes first alternates too), each round with a fresh
seed (ComfyUI caches identical prompts); checkpoint loading and text encoding are cached for
both.  A prompt's time is ComfyUI's own execution_start -> execution_success interval from
/history, so the one-by-one total does not even pay for the gaps between its prompts.
Reports the medians over the rounds and their ratio.

    .host/venv/bin/python -m harness.lab_cost [--repeats 3] [--size 64]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

from .comfy_host import ComfyServer, install_host
from .host_timing import base_graph, execution_seconds

SAMPLERS = "euler,lml_euler,dpmpp_2m,ipndm_v,deis,uni_pc"
STEPS = "4,6,8,12,20"
REFERENCE = ("dpmpp_2m", 100)
CFG = 5.0


def lab_prompt(seed: int, size: int, samplers: str, steps: str) -> dict:
    return {**base_graph(size),
            "5": {"class_type": "LMLSamplerLab", "inputs": {
                "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0],
                "latent_image": ["4", 0], "vae": ["1", 2], "seed": seed, "cfg": CFG,
                "scheduler": "karras", "samplers": samplers, "steps": steps,
                "reference_sampler": REFERENCE[0], "reference_steps": REFERENCE[1]}},
            "6": {"class_type": "PreviewImage", "inputs": {"images": ["5", 1]}},
            "7": {"class_type": "PreviewImage", "inputs": {"images": ["5", 2]}}}


def ksampler_prompt(seed: int, size: int, sampler: str, steps: int) -> dict:
    return {**base_graph(size),
            "5": {"class_type": "KSampler", "inputs": {
                "model": ["1", 0], "seed": seed, "steps": steps, "cfg": CFG,
                "sampler_name": sampler, "scheduler": "karras", "positive": ["2", 0],
                "negative": ["3", 0], "latent_image": ["4", 0], "denoise": 1.0}},
            "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
            "7": {"class_type": "PreviewImage", "inputs": {"images": ["6", 0]}}}


def one_by_one(server: ComfyServer, seed: int, size: int, samplers: str, steps: str) -> float:
    runs = [REFERENCE] + [(name, int(n)) for name in samplers.split(",")
                          for n in steps.split(",")]
    return sum(execution_seconds(server.run(ksampler_prompt(seed, size, name, n), timeout=1800))
               for name, n in runs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=64, help="image size in pixels")
    parser.add_argument("--samplers", default=SAMPLERS)
    parser.add_argument("--steps", default=STEPS)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    install_host()
    lab, single = [], []
    with ComfyServer(threads=args.threads) as server:
        seed = 5000
        for repeat in range(args.repeats + 1):  # round 0 warms up (model load, first calls)
            seed += 1
            order = ("lab", "single") if repeat % 2 else ("single", "lab")
            for kind in order:
                if kind == "lab":
                    entry = server.run(lab_prompt(seed, args.size, args.samplers, args.steps),
                                       timeout=1800)
                    seconds = execution_seconds(entry)
                    if repeat:
                        lab.append(seconds)
                    else:
                        report = entry["outputs"]["5"]["lml_lab"][0]
                else:
                    seconds = one_by_one(server, seed, args.size, args.samplers, args.steps)
                    if repeat:
                        single.append(seconds)
                print(f"round {repeat} {kind}: {seconds:.2f} s", file=sys.stderr)
    evals = report["reference"]["nfe"] + sum(row["nfe"] for row in report["rows"])
    result = {"size": args.size, "samplers": args.samplers, "steps": args.steps,
              "reference": list(REFERENCE), "model_evaluations": evals,
              "prompts_one_by_one": 1 + len(report["rows"]),
              "lab_median_s": statistics.median(lab),
              "one_by_one_median_s": statistics.median(single),
              "ratio_lab_over_one_by_one": statistics.median(lab) / statistics.median(single),
              "lab_runs_s": lab, "one_by_one_runs_s": single,
              "lab_sampling_s": round(report["reference"]["seconds"]
                                      + sum(row["seconds"] for row in report["rows"]), 2)}
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
