"""Memory of one calibration at SDXL's latent size (python -m bench.memory,
bash scripts/bench.sh memory -> docs/bench/memory.md).

``lml_core.calibrate`` on 32 float32 noises of shape 4 x 128 x 128 (a 1024 px SDXL latent),
10 steps (NFE 10) of the benchmark's Karras schedule (0.002-80), with a cheap stand-in for the
model: ``LatentGaussian``, the exact denoiser of a stationary Gaussian latent (per channel a
mean and a power-law spectrum, so D is two FFTs; no network).  What it measures is the
calibration's own memory (its tensors have the latent's size whatever the model; a real
model's weights and activations come on top) and work: the peak
resident memory above its value at the start of the calibration (bench.rss: the anonymous
RSS read by a thread from /proc/self/statm every 10 ms, and ru_maxrss), the size of the
reference trajectory (the tensors of lml_core's Reference objects the calibration builds),
the per-sample model evaluations, batched model calls and seconds.

Cases: "default" (calibrate's default options, the given schedule only, no samplers: the LML
fit alone) and "field" (as LML Calibrate runs in ComfyUI: every host scheduler's sigmas that
start at sigma_max and the host's deterministic samplers, bench.calibrated.calibration_field).
Each case runs in a child process of its own, so that ru_maxrss is that case's peak and the
start is the same.  ``--iterations`` (Levenberg-Marquardt steps) makes a quick check.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from lml_core.reference import Reference

from .rss import MB, PeakRSS

GB = 2**30
CASES = ("default", "field")
SHAPE = (4, 128, 128)
SAMPLES = 32
STEPS = 10
NOISE_SEED = 2024
REPEATS = 3  # runs per case: with glibc's default allocator the peak varies between them


class LatentGaussian:
    """D(x, sigma) = E[x0 | x] for latents x0 of a stationary Gaussian: per channel a mean and
    a spectrum ``var / (1 + (|k| / 4)^2)^1.5`` (k in cycles per image), normalised to unit
    pixel variance; x = x0 + sigma n (VE).  Diagonal in the Fourier basis:
    D = mu + F^-1 [lambda / (lambda + sigma^2) F (x - mu)].  Deterministic; returns x's
    dtype."""

    def __init__(self, shape=SHAPE):
        channels, height, width = shape
        gen = torch.Generator().manual_seed(0)
        self.shape = tuple(shape)
        self.mean = 0.3 * torch.randn(channels, 1, 1, generator=gen)
        ky = torch.fft.fftfreq(height) * height
        kx = torch.fft.fftfreq(width) * width
        k = torch.sqrt(ky[:, None] ** 2 + kx[None, :] ** 2)
        spectrum = (1 + (k / 4) ** 2) ** -1.5
        spectrum = spectrum / spectrum.mean()  # unit variance per pixel
        variance = torch.empty(channels, 1, 1).uniform_(0.5, 1.5, generator=gen)
        self.spectrum = variance * spectrum[:, : width // 2 + 1]  # rfft2's half plane
        self.calls = 0

    def __call__(self, x, sigma, **extra_args):
        self.calls += 1
        s = sigma.reshape(-1, *[1] * (x.ndim - 1)).to(torch.float32)
        y = x.to(torch.float32) - self.mean
        gain = self.spectrum / (self.spectrum + s * s)
        out = self.mean + torch.fft.irfft2(torch.fft.rfft2(y, norm="ortho") * gain,
                                           s=y.shape[-2:], norm="ortho")
        return out.to(x.dtype)


def tensor_bytes(obj) -> int:
    """Bytes of the distinct tensors among ``obj``'s attributes (tensors, and lists or tuples
    of them), each its own elements (a view of the noise counts its rows, not the noise)."""
    seen, total = set(), 0
    for value in vars(obj).values():
        items = value if isinstance(value, (list, tuple)) else [value]
        for item in items:
            if torch.is_tensor(item) and (item.data_ptr(), item.numel()) not in seen:
                seen.add((item.data_ptr(), item.numel()))
                total += item.numel() * item.element_size()
    return total


class References:
    """Records the tensor bytes of every lml_core Reference built while it is active (the
    reference trajectories: states, slopes and final samples of the fitting and held-out
    noise)."""

    def __enter__(self):
        from lml_core import reference

        self.cls, self.sizes = reference.Reference, []
        self.original = self.cls.__init__
        sizes, original = self.sizes, self.original

        def init(ref, *args, **kwargs):
            original(ref, *args, **kwargs)
            sizes.append(tensor_bytes(ref))

        self.cls.__init__ = init
        return self

    def __exit__(self, *exc):
        self.cls.__init__ = self.original
        return False


def expected_reference_bytes(samples, numel, reference_steps, element=4) -> int:
    """The Reference's states and slopes at the nodes it keeps (Reference.kept_nodes of its
    grid's reference_steps + 1) and its final sample, for ``samples`` noises of
    ``numel`` values (VE: no flow lead-in)."""
    kept = len(Reference.kept_nodes(reference_steps + 1))
    return (2 * kept + 1) * samples * numel * element


def case_field(case, steps):
    """calibrate's keyword arguments for ``case``: none ("default"), or the host's schedules
    and deterministic samplers as LML Calibrate gives them ("field")."""
    if case == "default":
        return {}
    from .calibrated import calibration_field

    schedules, samplers, own = calibration_field(SimpleNamespace(kind="karras", flow=False),
                                                 steps)
    return {"schedules": schedules, "samplers": samplers, "sampler_schedules": own}


def run_case(case, shape=SHAPE, samples=SAMPLES, steps=STEPS, options=None,
             log=None) -> dict:
    """One calibration of ``case`` on ``samples`` noises of ``shape``, measured (``log``:
    calibrate's log lines)."""
    from lml_core import CALIBRATE_DEFAULTS, calibrate

    from . import field
    from .common import karras_sigmas

    options = dict(options or {})
    model = LatentGaussian(shape)
    host = field.HostModel(model, flow=False)
    sigmas = karras_sigmas(steps).to(torch.float32)
    noise = sigmas[0] * torch.randn(samples, *shape,
                                    generator=torch.Generator().manual_seed(NOISE_SEED))
    extra = case_field(case, steps)
    with References() as references, PeakRSS() as memory:
        calibration = calibrate(host, noise, sigmas, log=log, **extra, **options)
    r = calibration.report
    opts = {**CALIBRATE_DEFAULTS, **options}
    numel = math.prod(shape)
    return {
        "case": case, "shape": list(shape), "samples": samples, "steps": steps,
        "options": options, "schedules": sorted(extra.get("schedules") or ["given"]),
        "samplers": sorted(extra.get("samplers") or []),
        "threads": torch.get_num_threads(),
        "chosen": r["chosen"], "iterations": r["iterations"],
        "seconds": round(memory.seconds, 1), "model_calls": r["model_calls"],
        "evaluations": r["model_evaluations"],
        "noise_mb": round(noise.numel() * noise.element_size() / MB, 1),
        "reference_gb": round(sum(references.sizes) / GB, 3),
        "reference_bytes": sum(references.sizes),
        "references": len(references.sizes),
        "reference_gb_expected": round(expected_reference_bytes(
            samples, numel, int(opts["reference_steps"])) / GB, 3),
        **memory.summary(),
        "max_rss_gb": round(memory.max_rss / GB, 3),
    }


def child(case, args) -> dict:
    """``run_case`` in a fresh process (its own ru_maxrss; with ``--mmap-threshold``, glibc's
    fixed there)."""
    command = [sys.executable, "-m", "bench.memory", "--case", case, "--threads",
               str(args.threads), "--samples", str(args.samples), "--steps", str(args.steps),
               "--shape", *map(str, args.shape), "--options", json.dumps(options_of(args))]
    env = dict(os.environ)
    if args.mmap_threshold is not None:
        env["MALLOC_MMAP_THRESHOLD_"] = str(args.mmap_threshold)
    done = subprocess.run(command, capture_output=True, text=True, env=env,
                          cwd=Path(__file__).resolve().parent.parent)
    if done.returncode != 0:
        raise RuntimeError(f"bench.memory --case {case} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def repeated(runs) -> dict:
    """A case over its repeats: the first run's fields, each measurement's median, min and
    max (``peak_rss_above_start_mb``, ``..._min``, ``..._max``; the same for ru_maxrss and
    seconds), and every run (``runs``)."""
    out = dict(runs[0])
    for key in ("peak_rss_above_start_mb", "max_rss_above_start_mb", "seconds"):
        values = [r[key] for r in runs if r[key] is not None]
        if values:
            out[key] = statistics.median(values)
            out[f"{key}_min"], out[f"{key}_max"] = min(values), max(values)
    out["repeats"] = len(runs)
    out["runs"] = runs
    return out


def options_of(args) -> dict:
    options = json.loads(args.options)
    if args.iterations is not None:
        options["iterations"] = args.iterations
    return options


def mib(value) -> str:
    return "n/a" if value is None else f"{value:.0f}"


def spread_of(r, key) -> str:
    """"median (min-max)" of a repeated measurement, the value alone for one run."""
    if r.get(key) is None:
        return "n/a"
    if r.get("repeats", 1) == 1 or f"{key}_min" not in r:
        return mib(r[key])
    return f"{mib(r[key])} ({mib(r[f'{key}_min'])}-{mib(r[f'{key}_max'])})"


def table_lines(results) -> list[str]:
    """The table of the cases (also README's, bench.readme)."""
    lines = [
        "| case | schedules x samplers | chosen | LM steps | seconds | model calls | "
        "per-sample evaluations | reference trajectory (GiB) | peak RSS above start (MiB) "
        "| ru_maxrss above start (MiB) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(f"| {r['case']} | {len(r['schedules'])} x {len(r['samplers'])} | "
                     f"{r['chosen']} | {r['iterations']} | {spread_of(r, 'seconds')} | "
                     f"{r['model_calls']} | {r['evaluations']} | {r['reference_gb']:.3f} | "
                     f"{spread_of(r, 'peak_rss_above_start_mb')} | "
                     f"{spread_of(r, 'max_rss_above_start_mb')} |")
    if any(r["iterations"] == 0 for r in results):
        lines += ["", "LM steps 0: the Levenberg-Marquardt fit stopped after its first Jacobian "
                  "(no step lowered the fitting objective), so its seconds and evaluations are "
                  "those of one iteration, not of a whole fit; the peak is an iteration's "
                  "(every iteration builds the same Jacobian)."]
    return lines


def write_markdown(out: Path, results, meta, name="memory"):
    allocator = ("glibc's default allocator" if meta.get("mmap_threshold") is None else
                 f"glibc with MALLOC_MMAP_THRESHOLD_={meta['mmap_threshold']} (every larger "
                 "block its own mapping, returned when freed: the peak of live memory; slower)")
    lines = [
        "# Memory of a calibration at SDXL's latent size",
        "",
        "`bash scripts/bench.sh memory` (python -m bench.memory). `lml_core.calibrate` on "
        f"{meta['samples']} float32 noises of shape {' x '.join(map(str, meta['shape']))}, "
        f"{meta['steps']} steps (Karras 0.002-80), with a stand-in model (the exact denoiser "
        "of a stationary Gaussian latent: two FFTs per call; the calibration's tensors have "
        "the latent's size whatever the model, and a real model's weights and activations "
        "come on top). Each run is a child process of its own; each case runs "
        f"{meta.get('repeats', 1)} time(s) (median, and min-max where more than one). Peak RSS "
        "above start: the anonymous resident memory (RSS less file-backed and shared pages) "
        "above its value when the calibration starts (after the model and the noise exist), "
        "read from /proc/self/statm every 10 ms by a thread (bench.rss); ru_maxrss above "
        "start: the kernel's exact peak RSS of the process less the whole RSS at the start "
        "(n/a where the process had a higher peak before the calibration). Reference "
        "trajectory: the tensors of the Reference objects the calibration builds (states and "
        "slopes at every node of its RK4 grid, and the final samples). MiB and GiB are 2^20 "
        "and 2^30 bytes.",
        "",
        f"Options: {meta['options'] or 'the defaults'}; {meta['threads']} thread(s); "
        f"{allocator}; {meta['machine']}; run took {meta['wall_seconds']:.0f} s.",
        "",
    ]
    lines += table_lines(results)
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")


def parse(argv):
    parser = argparse.ArgumentParser(description="a calibration's memory at SDXL latent size")
    parser.add_argument("--out", default="docs/bench")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cases", nargs="*", default=list(CASES), choices=CASES)
    parser.add_argument("--case", choices=CASES, help="run one case here and print its JSON")
    parser.add_argument("--repeats", type=int, default=REPEATS,
                        help=f"runs per case (default {REPEATS}): glibc's heap makes the "
                             "peak vary between identical runs")
    parser.add_argument("--mmap-threshold", type=int, default=None,
                        help="glibc's MALLOC_MMAP_THRESHOLD_ in the runs (e.g. 131072: the "
                             "peak of live memory, reproducible but slower)")
    parser.add_argument("--samples", type=int, default=SAMPLES)
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--shape", nargs=3, type=int, default=list(SHAPE))
    parser.add_argument("--iterations", type=int, default=None,
                        help="Levenberg-Marquardt steps (default: calibrate's)")
    parser.add_argument("--options", default="{}", help="other calibrate options as JSON")
    parser.add_argument("--name", default="memory",
                        help="writes OUT/NAME.json and NAME.md (another name: a run with other "
                             "--options beside the committed one)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse(argv)
    torch.set_num_threads(args.threads)
    options = options_of(args)
    if args.case:
        result = run_case(args.case, tuple(args.shape), args.samples, args.steps, options,
                          log=lambda text: print(text, file=sys.stderr, flush=True))
        print(json.dumps(result), flush=True)
        return result
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    results = []
    for case in args.cases:
        runs = []
        for repeat in range(args.repeats):
            print(f"  {case} {repeat + 1}/{args.repeats} ...", flush=True)
            runs.append(child(case, args))
            r = runs[-1]
            print(f"  {case}: {r['seconds']:.0f} s, {r['evaluations']} evaluations, reference "
                  f"{r['reference_gb']:.3f} GiB, peak RSS above start "
                  f"{r['peak_rss_above_start_mb']:.0f} MiB (ru_maxrss "
                  f"{mib(r['max_rss_above_start_mb'])} MiB)", flush=True)
        results.append(repeated(runs))
    meta = {"shape": list(args.shape), "samples": args.samples, "steps": args.steps,
            "options": options, "threads": args.threads, "repeats": args.repeats,
            "mmap_threshold": args.mmap_threshold,
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
            "wall_seconds": time.time() - started}
    (out / f"{args.name}.json").write_text(json.dumps({"meta": meta, "results": results},
                                                      indent=1))
    write_markdown(out, results, meta, args.name)
    print(f"done in {meta['wall_seconds']:.0f}s; wrote {out / f'{args.name}.md'}", flush=True)
    return results


if __name__ == "__main__":
    main()
