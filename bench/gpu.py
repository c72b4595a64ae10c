"""The pack on a CUDA GPU (python -m bench.gpu --out DIR; scripts/gpu_check.sh runs it and the
node tests on a lent GPU machine -> docs/bench/gpu.md).  CI has no GPU: nothing here is a test.

Each part runs on the GPU in the precisions a user's model runs in: float32, and float16 /
bfloat16 through ``torch.autocast`` around the model (its matrix products in half precision;
the sampler's state and LML's arithmetic stay float32, as ComfyUI hands them to a sampler).
Times are medians of repeats after a warm-up, with the device synchronised.

1. ``precondition``: lm_precondition at SDXL's latent size (4 x 128 x 128), ranks 1-4, inputs
   in float32 / float16 / bfloat16: time, and the relative error against the same inputs'
   float64 result on the CPU.
2. ``samplers``: the LML samplers and euler on the digits network (cfg 3, Karras and flow,
   10 steps, 500 noises): RMS to the float64 reference ODE solution per precision, and the
   float32 GPU result against the float32 CPU one.
3. ``calibrate``: lml_core.calibrate on the digits network (cfg 3, Karras, NFE 8, 32 noises,
   the host's field; ``model_dtype`` the autocast precision, as LML Calibrate passes the UNet's)
   per precision: seconds, model calls and evaluations, peak CUDA memory,
   and the calibrated sampler on 500 other noises against every host (sampler, scheduler)
   pair run there in float32.
4. ``sdxl``: calibrate at SDXL's latent size (32 x 4 x 128 x 128, 10 steps) with the memory
   benchmark's stand-in model on the GPU, its noise prediction rounded to each precision
   (``HalfEps``): seconds, evaluations, LM steps, peak CUDA memory above the start.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import statistics
import time
import traceback
from pathlib import Path

import torch

from lml_core import SAMPLERS, calibrate, lm_precondition, sample_lml_calibrated

from .common import digits_noise, initial_noise, reference_solution, rms, schedule

PRECISIONS = {"float32": None, "float16": torch.float16, "bfloat16": torch.bfloat16}
MIB = 2**20


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, repeats=5, warmup=1):
    """(median seconds, last result) of ``fn()`` over ``repeats`` after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        out = fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


@contextlib.contextmanager
def peak_memory(device, record):
    """Peak CUDA memory allocated above the start of the block (MiB) into ``record``."""
    if device.type != "cuda":
        yield
        return
    sync(device)
    torch.cuda.reset_peak_memory_stats(device)
    start = torch.cuda.memory_allocated(device)
    yield
    sync(device)
    record["peak_mib_above_start"] = round((torch.cuda.max_memory_allocated(device) - start)
                                           / MIB, 1)


class Autocast:
    """``model`` called under torch.autocast in ``dtype`` (None: as it is); returns x's dtype."""

    def __init__(self, model, dtype, device):
        self.model, self.dtype, self.device = model, dtype, device
        self.flow = getattr(model, "flow", False)

    def __call__(self, x, sigma, **extra_args):
        if self.dtype is None:
            return self.model(x, sigma, **extra_args)
        with torch.autocast(self.device.type, dtype=self.dtype):
            return self.model(x, sigma, **extra_args).to(x.dtype)


class HalfEps:
    """``model`` whose noise prediction eps = (x - D) / sigma is rounded to ``dtype`` (None: not
    rounded), as from an SD UNet run in half precision (ComfyUI then forms D in float32)."""

    def __init__(self, model, dtype):
        self.model, self.dtype = model, dtype

    def __call__(self, x, sigma, **extra_args):
        out = self.model(x, sigma, **extra_args)
        if self.dtype is None:
            return out
        s = sigma.reshape(-1, *[1] * (x.ndim - 1)).to(x.dtype)
        eps = ((x - out) / s).to(self.dtype).to(x.dtype)
        return x - s * eps


def precondition(device, quick):
    rows = []
    batches = (2,) if quick else (2, 8)
    for batch in batches:
        gen = torch.Generator().manual_seed(batch)
        shape = (batch, 4, 128, 128)
        g64 = torch.randn(shape, generator=gen, dtype=torch.float64)
        hist64 = [g64 + 0.5 * torch.randn(shape, generator=gen, dtype=torch.float64)
                  for _ in range(4)]
        for rank in (1, 2, 4):
            for name, dtype in PRECISIONS.items():
                dtype = dtype or torch.float32
                g, hist = g64.to(dtype), [h.to(dtype) for h in hist64[:rank]]
                ref = lm_precondition(g.double(), [h.double() for h in hist], damping=0.1)
                g_dev, hist_dev = g.to(device), [h.to(device) for h in hist]
                seconds, out = timed(functools.partial(lm_precondition, g_dev, hist_dev,
                                                       damping=0.1),
                                     device, repeats=20, warmup=3)
                out = out.double().cpu()
                error = float((out - ref).norm() / ref.norm())
                rows.append({"batch": batch, "shape": list(shape[1:]), "rank": rank,
                             "dtype": name, "ms": round(1e3 * seconds, 3),
                             "rel_error_vs_cpu_float64": error,
                             "finite": bool(torch.isfinite(out).all())})
    return rows


def digits_model(cfg, flow, device):
    from .digits import CFGDigitsModel, load_or_train

    net, _ = load_or_train()
    return CFGDigitsModel(net.to(device), flow, cfg)


def run_once(fn, model, device, flow, x_start, sigmas):
    """``fn`` (a k-diffusion sampler) on ``model`` from ``x_start``, float32, on ``device``."""
    from . import field

    host = field.HostModel(model, flow=flow)
    return fn(host, x_start.to(device, torch.float32), sigmas.clone().to(device),
              extra_args={"seed": 5}, disable=True)


def samplers_part(device, quick):
    from . import field

    rows = []
    samples = 100 if quick else 500
    for kind in ("karras", "flow"):
        flow = kind == "flow"
        noise = digits_noise(samples)
        x_start = initial_noise(kind, noise)
        model = digits_model(3.0, flow, device)
        reference = reference_solution(model, x_start.to(device), kind, 100 if quick else 250)
        cpu_model = digits_model(3.0, flow, torch.device("cpu"))
        sigmas = schedule(kind, 10).to(torch.float32)
        names = dict(SAMPLERS)
        names["euler"] = field.host_function("euler")
        for name, fn in names.items():
            cpu_out = run_once(fn, cpu_model, torch.device("cpu"), flow, x_start, sigmas)
            for precision, dtype in PRECISIONS.items():
                run = functools.partial(run_once, fn, Autocast(model, dtype, device), device,
                                        flow, x_start, sigmas)
                seconds, out = timed(run, device, repeats=3)
                row = {"schedule": kind, "sampler": name, "precision": precision,
                       "ms_per_run": round(1e3 * seconds, 2),
                       "rms_vs_reference": rms(out.cpu(), reference.cpu()),
                       "finite": bool(torch.isfinite(out).all())}
                if precision == "float32":
                    row["max_abs_vs_cpu_float32"] = float((out.cpu() - cpu_out).abs().max())
                rows.append(row)
    return rows


def pair_rms(model, x_test, reference, nfe, flow, schedules, samplers, own):
    """{(sampler, scheduler): RMS} of every pair on the test noise at ``nfe`` model calls."""
    from . import field

    out = {}
    for name, fn in samplers.items():
        for scheduler, sigmas in schedules.items():
            sig = own.get(name, {}).get(scheduler, sigmas).to(x_test.device)
            host = field.HostModel(model, flow=flow)
            try:
                x = fn(host, x_test * float(sig[0] / schedules[scheduler][0]), sig.clone(),
                       extra_args={"seed": 0}, disable=True)
            except Exception as error:  # a pair the host cannot run here: recorded
                out[f"{name}/{scheduler}"] = f"{type(error).__name__}: {error}"
                continue
            if host.calls == nfe and torch.isfinite(x).all():
                out[f"{name}/{scheduler}"] = rms(x.cpu(), reference.cpu())
    return out


def calibrate_part(device, quick):
    from types import SimpleNamespace

    from .calibrated import calibration_field, calibration_noise
    from .digits import RowLabelledDigitsModel, with_labels
    from .field import HostModel
    from .suite import sigmas_for

    nfe, kind, rows = 8, "karras", []
    problem = SimpleNamespace(kind=kind, flow=False, x_start=torch.zeros(1, 64))
    model = digits_model(3.0, False, device)
    schedules, samplers, own = calibration_field(problem, nfe)
    schedules = {k: v.to(device) for k, v in schedules.items()}
    own = {s: {k: v.to(device) for k, v in d.items()} for s, d in own.items()}
    sigmas = sigmas_for("euler", kind, nfe).to(torch.float32).to(device)
    test = initial_noise(kind, digits_noise(100 if quick else 500))
    test = test.to(device, torch.float32)
    reference = reference_solution(model, test, kind, 100 if quick else 250)
    pairs = pair_rms(model, test, reference, nfe, False, schedules, samplers, own)
    scored = {k: v for k, v in pairs.items() if isinstance(v, float)}
    best = min(scored, key=scored.get)
    runs = [("cuda", p) for p in PRECISIONS] if device.type == "cuda" else []
    runs += [("cpu", p) for p in PRECISIONS]
    for where, precision in runs:
        dev = device if where == "cuda" else torch.device("cpu")
        m = model if where == "cuda" else digits_model(3.0, False, dev)
        noise = calibration_noise(problem, 32, 0).to(dev)
        calib_model = RowLabelledDigitsModel(m)
        host = HostModel(Autocast(calib_model, PRECISIONS[precision], dev), flow=False)
        record = {"device": where, "precision": precision}
        put = functools.partial(torch.Tensor.to, device=dev)
        with peak_memory(dev, record):
            start = time.perf_counter()
            calibration = calibrate(
                host, with_labels(noise), put(sigmas),
                schedules={k: put(v) for k, v in schedules.items()}, samplers=samplers,
                sampler_schedules={s: {k: put(v) for k, v in d.items()} for s, d in own.items()},
                model_dtype=PRECISIONS[precision] or torch.float32,  # as LML Calibrate does
                **({"iterations": 2} if quick else {}))
            sync(dev)
            record["seconds"] = round(time.perf_counter() - start, 2)
        r = calibration.report
        sample_host = HostModel(Autocast(m, PRECISIONS[precision], dev), flow=False)
        x = sample_lml_calibrated(sample_host, test.to(dev), put(sigmas),
                                  calibration=calibration, samplers=samplers, disable=True)
        calibrated = rms(x.cpu(), reference.cpu())
        record.update({"chosen": r["chosen"], "runs": calibration.sampler,
                       "iterations": r["iterations"], "model_calls": r["model_calls"],
                       "evaluations": r["model_evaluations"],
                       "test_rms_report": r.get("test_rms"),
                       "test_rms_best_pair_report": r.get("test_rms_best_pair"),
                       "calibrated_rms": calibrated, "best_pair": best,
                       "best_pair_rms": scored[best], "ratio": calibrated / scored[best],
                       "finite": bool(torch.isfinite(x).all())})
        rows.append(record)
    return {"nfe": nfe, "pairs": pairs, "runs": rows}


def sdxl_part(device, quick):
    from .memory import LatentGaussian, case_field

    rows = []
    shape, samples, steps = (4, 128, 128), (8 if quick else 32), 10
    stand_in = LatentGaussian(shape)
    stand_in.mean, stand_in.spectrum = stand_in.mean.to(device), stand_in.spectrum.to(device)
    sigmas = schedule("karras", steps).to(torch.float32)
    noise = 80.0 * torch.randn(samples, *shape, generator=torch.Generator().manual_seed(2024))
    for case in ("default", "field"):
        from .field import HostModel

        kwargs = case_field(case, steps)
        kwargs = {k: ({n: (s.to(device) if torch.is_tensor(s) else
                           {a: b.to(device) for a, b in s.items()} if isinstance(s, dict) else s)
                       for n, s in v.items()}) for k, v in kwargs.items()}
        for precision, dtype in PRECISIONS.items():
            host = HostModel(HalfEps(stand_in, dtype), flow=False)
            record = {"case": case, "precision": precision, "samples": samples,
                      "shape": list(shape), "steps": steps}
            with peak_memory(device, record):
                start = time.perf_counter()
                calibration = calibrate(host, noise.to(device), sigmas.to(device), **kwargs,
                                        **({"iterations": 1} if quick else {}))
                sync(device)
                record["seconds"] = round(time.perf_counter() - start, 2)
            r = calibration.report
            record.update({"chosen": r["chosen"], "iterations": r["iterations"],
                           "model_calls": r["model_calls"],
                           "evaluations": r["model_evaluations"]})
            rows.append(record)
    return rows


def markdown(results, tests_log=None) -> str:
    """docs/bench/gpu/gpu.md from a run's gpu.json (and the node tests' log)."""
    meta = results["meta"]
    lines = ["# The pack on a CUDA GPU", "",
             f"`bash scripts/gpu_check.sh` (bench.gpu) on {meta['device']}, torch "
             f"{meta['torch']}; half precision is torch.autocast around the model (its "
             "matrix products in float16 / bfloat16), the sampler's state and LML's arithmetic "
             "float32, as ComfyUI hands them.  Nothing here runs in CI (no GPU there).", ""]
    pre = results.get("precondition")
    if isinstance(pre, list):
        lines += ["## lm_precondition at SDXL's latent size (4 x 128 x 128)", "",
                  "| batch | rank | input | ms (median of 20) | rel. error vs CPU float64 |",
                  "|---|---|---|---|---|"]
        lines += [f"| {r['batch']} | {r['rank']} | {r['dtype']} | {r['ms']:.2f} | "
                  f"{r['rel_error_vs_cpu_float64']:.1e} |" for r in pre]
        lines.append("")
    smp = results.get("samplers")
    if isinstance(smp, list):
        lines += ["## Samplers on the digits network (cfg 3, 10 steps, 500 noises)", "",
                  "RMS to the float64 reference ODE solution of the float32 model; the float32 "
                  "GPU samples against the CPU's (lml_euler_ancestral draws its noise from the "
                  "device's generator, so it differs by design).", "",
                  "| schedule | sampler | float32 | float16 | bfloat16 | ms (float32) | "
                  "max abs GPU - CPU (float32) |", "|---|---|---|---|---|---|---|"]
        keyed = {(r["schedule"], r["sampler"], r["precision"]): r for r in smp}
        for schedule_name, sampler in dict.fromkeys((r["schedule"], r["sampler"]) for r in smp):
            row = [keyed[(schedule_name, sampler, p)] for p in PRECISIONS]
            lines.append(f"| {schedule_name} | {sampler} | "
                         + " | ".join(f"{r['rms_vs_reference']:.4f}" for r in row)
                         + f" | {row[0]['ms_per_run']:.1f} | "
                         f"{row[0]['max_abs_vs_cpu_float32']:.1e} |")
        lines.append("")
    sdxl = results.get("sdxl")
    if isinstance(sdxl, list):
        lines += ["## Calibration at SDXL's latent size (stand-in model)", "",
                  "32 noises of 4 x 128 x 128, 10 steps; the stand-in's noise prediction is "
                  "rounded to the precision (bench.gpu.HalfEps).", "",
                  "| case | precision | chosen | LM steps | seconds | model calls | "
                  "evaluations | peak CUDA memory above start (MiB) |",
                  "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['case']} | {r['precision']} | {r['chosen']} | {r['iterations']} | "
                  f"{r['seconds']} | {r['model_calls']} | {r['evaluations']} | "
                  f"{r.get('peak_mib_above_start', 'n/a')} |" for r in sdxl]
        lines.append("")
    cal = results.get("calibrate")
    if isinstance(cal, dict) and "runs" in cal:
        lines += [f"## Calibration on the digits network (cfg 3, Karras, NFE {cal['nfe']})", "",
                  "32 calibration noises, the host's field; the calibrated sampler on 500 other "
                  "noises against the best (sampler, scheduler) pair there (float32 model).", "",
                  "| device | model precision | chosen | LM steps | seconds | evaluations | "
                  "peak CUDA MiB | calibrated RMS | best pair | ratio |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['device']} | {r['precision']} | {r['chosen']} | {r['iterations']} | "
                  f"{r['seconds']} | {r['evaluations']} | {r.get('peak_mib_above_start', '-')} "
                  f"| {r['calibrated_rms']:.4f} | {r['best_pair']} {r['best_pair_rms']:.4f} | "
                  f"{r['ratio']:.3f} |" for r in cal["runs"]]
        lines.append("")
    if tests_log is not None:
        summary = [t for t in tests_log.splitlines() if " passed" in t or " failed" in t]
        lines += ["## Node tests with ComfyUI on the GPU", "",
                  "`LML_HOST_DEVICE=auto pytest tests/nodes`: ComfyUI chooses the device and "
                  "the dtypes itself, as on a user's GPU (its defaults on such a card: an SD1 "
                  "UNet in float16, the VAE in bfloat16; the run did not print them).", "",
                  f"    {summary[-1].strip('= ') if summary else 'no summary line'}", ""]
    return "\n".join(lines)


PARTS = {"precondition": precondition, "samplers": samplers_part, "sdxl": sdxl_part,
         "calibrate": calibrate_part}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("bench_out/gpu"))
    parser.add_argument("--parts", default=",".join(PARTS))
    parser.add_argument("--quick", action="store_true", help="small sizes (a dry run)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--markdown", type=Path, metavar="DIR",
                        help="write DIR/gpu.md from DIR/gpu.json (and nodes_tests.log); no run")
    args = parser.parse_args(argv)
    if args.markdown:
        log = args.markdown / "nodes_tests.log"
        text = markdown(json.loads((args.markdown / "gpu.json").read_text()),
                        log.read_text() if log.exists() else None)
        (args.markdown / "gpu.md").write_text(text)
        return None
    device = torch.device(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "torch": torch.__version__, "quick": args.quick}
    results = {"meta": meta}
    for name in args.parts.split(","):
        start = time.perf_counter()
        try:
            results[name] = PARTS[name](device, args.quick)
        except Exception:
            results[name] = {"error": traceback.format_exc()}
            print(results[name]["error"], flush=True)
        meta[f"{name}_seconds"] = round(time.perf_counter() - start, 1)
        print(f"bench.gpu: {name} done in {meta[f'{name}_seconds']}s", flush=True)
        (args.out / "gpu.json").write_text(json.dumps(results, indent=1, default=str))
    return results


if __name__ == "__main__":
    main()
