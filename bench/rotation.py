"""Issue 7's question, measured: is a target rotation of Euler's direction enough to beat
DPM++ 2M?  (python -m bench.rotation; writes docs/bench/rotation.md)

Issue 7 proposes to choose the LM damping per step so that Euler's direction ``c`` is turned
away from the previous direction ``p`` by ``omega`` times their angle (the ``adaptive`` damping
mode), with one constant ``omega = 0.75`` or AB2's step-size weight.  Its target: below
DPM++ 2M at 6, 10 and 15 NFE on every data set and schedule of the exact suite, and never above
Euler at 5-50 NFE.  Besides the node default and the adaptive modes, two samplers outside the LM
family show what the rotation leaves out:

* ``rotation + norm``: the adaptive rotation, with the norm also extrapolated,
  ``|c| + omega (|c| - |p|)``, instead of the LM renormalisation to ``|c|``;
* ``AB2 direction``: ``c + omega (c - p)`` with AB2's weight ``omega = h_n / (2 h_{n-1})``
  (log-SNR steps), i.e. a plain second-order Adams-Bashforth step on Euler's direction, or with
  a constant ``omega = 0.75``; the LM operator cannot produce it (its eigenvalues are <= 1: it
  only damps the component along v, and the renormalisation keeps ``|c|``).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

from lml_core import is_flow_model, lm_precondition, step_omega

from .exact import EXACT_DATASETS
from .suite import NFES, NOISE_SEED, SCHEDULES, evaluate, exact_problems

TARGET_NFES = (6, 10, 15)


def _extrapolated_euler(model, x, sigmas, omega, lm_rotation=False):
    """Euler steps along an extrapolation of c from the previous direction p: with
    ``lm_rotation``, c turned by the adaptive LM operator and its length set to
    ``|c| + omega (|c| - |p|)``; otherwise ``c + omega (c - p)``.  ``omega``: a number or "auto"
    (AB2's weight).  The first step and the final step to sigma = 0 are plain Euler."""
    sig = [float(s) for s in sigmas.tolist()]
    flow = is_flow_model(model)
    s_in = x.new_ones([x.shape[0]])
    prev = None
    for i in range(len(sig) - 1):
        c = (x - model(x, sigmas[i] * s_in)) / sig[i]
        w = step_omega(omega, sig, i, flow) if i > 0 else 0.0
        step = c
        if prev is not None and w > 0 and sig[i + 1] > 0:
            if lm_rotation:
                turned = lm_precondition(c, [prev], kappa=0.5, damping_mode="adaptive", omega=w)
                c_norm, p_norm = c.norm(dim=1, keepdim=True), prev.norm(dim=1, keepdim=True)
                target = (c_norm + w * (c_norm - p_norm)).clamp(min=0.1 * c_norm)
                step = turned * (target / c_norm)
            else:
                step = c + w * (c - prev)
        prev = c
        x = x + step * (sig[i + 1] - sig[i])
    return x


def rotation_norm(model, x, sigmas, extra_args=None, callback=None, disable=None, omega=0.75,
                  **_):
    return _extrapolated_euler(model, x, sigmas, omega, lm_rotation=True)


def ab2_direction(model, x, sigmas, extra_args=None, callback=None, disable=None, omega="auto",
                  **_):
    return _extrapolated_euler(model, x, sigmas, omega)


def settings():
    adaptive = dict(damping_mode="adaptive", kappa=0.5)
    return {
        "euler": ("euler", {}),
        "dpmpp_2m": ("dpmpp_2m", {}),
        "lml_euler (node default)": ("lml_euler", {}),
        "lml_euler adaptive, omega 0.75 (issue 7)": ("lml_euler", {**adaptive, "omega": 0.75}),
        "lml_euler adaptive, omega 0.5": ("lml_euler", {**adaptive, "omega": 0.5}),
        "lml_euler adaptive, omega auto": ("lml_euler", {**adaptive, "omega": "auto"}),
        "rotation 0.5 + norm extrapolation": (rotation_norm, {"omega": 0.5}),
        "AB2 direction, omega auto (not LM)": (ab2_direction, {}),
        "AB2 direction, omega 0.75 (not LM)": (ab2_direction, {"omega": 0.75}),
    }


def summarise(rows):
    err = {(r["data"], r["schedule"], r["sampler"], r["nfe_budget"]): r["rms"] for r in rows}
    problems = sorted({(r["data"], r["schedule"]) for r in rows})
    lines = ["| sampler | below 2M at 6/10/15 | worst vs 2M at 6/10/15 (where) | "
             "worst vs euler, 5-50 (where) | geo-mean vs euler |", "|---|---|---|---|---|"]
    for label in settings():
        if label in ("euler", "dpmpp_2m"):
            continue
        vs_2m = [(err[p + (label, n)] / err[p + ("dpmpp_2m", n)], f"{p[0]}/{p[1]}@{n}")
                 for p in problems for n in TARGET_NFES]
        vs_euler = [(err[p + (label, n)] / err[p + ("euler", n)], f"{p[0]}/{p[1]}@{n}")
                    for p in problems for n in NFES]
        geo = math.exp(sum(math.log(r) for r, _ in vs_euler) / len(vs_euler))
        w2m, weu = max(vs_2m), max(vs_euler)
        lines.append(f"| {label} | {sum(r < 1 for r, _ in vs_2m)}/{len(vs_2m)} | "
                     f"{w2m[0]:.2f} ({w2m[1]}) | {weu[0]:.2f} ({weu[1]}) | {geo:.3f} |")
    return lines


def error_table(rows, data, kind):
    err = {(r["sampler"], r["nfe_budget"]): r["rms"] for r in rows
           if r["data"] == data and r["schedule"] == kind}
    lines = [f"**{data} / {kind}**", "", "| sampler | " + " | ".join(f"NFE {n}" for n in NFES)
             + " |", "|---|" + "---|" * len(NFES)]
    for label in settings():
        cells = []
        for n in NFES:
            e = err[(label, n)]
            bold = (n in TARGET_NFES and label not in ("euler", "dpmpp_2m")
                    and e < err[("dpmpp_2m", n)])
            cells.append(f"**{e:.4f}**" if bold else f"{e:.4f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines + [""]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=4000)
    parser.add_argument("--ref-steps", type=int, default=100)
    parser.add_argument("--data", nargs="*", default=list(EXACT_DATASETS))
    parser.add_argument("--out", default="docs/bench")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows, t0 = [], time.time()
    # The benchmark's start noise (python -m bench), so the numbers match results.md.
    for _, problem in exact_problems(args.data, args.samples, args.ref_steps,
                                     lambda _: NOISE_SEED):
        rows += evaluate(problem, settings(), NFES)
    lines = [f"# Issue 7: rotation targets against DPM++ 2M ({args.samples} samples, "
             f"{args.ref_steps}-step RK4 reference)", "",
             "Generated by `python -m bench.rotation` "
             f"({time.time() - t0:.0f} s on 2 cores). Solver error = RMS distance to the "
             "reference solution of the same ODE from the same noise (as in results.md). Bold: "
             "below DPM++ 2M at a target NFE (6, 10, 15).", "",
             __doc__.split("\n\n", 1)[1].replace("``", "`").strip(), "",
             "## Summary", ""] + summarise(rows) + [
             "", "## Solver error", ""]
    for name in args.data:
        for kind in SCHEDULES:
            lines += error_table(rows, name, kind)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "rotation.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
