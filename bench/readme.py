"""README's benchmark numbers (and docs/calibration_options.md's), written from the benchmark's
JSON (docs/bench/) instead of by hand:
the default benchmark's field, wrapped-solver and cost summaries (results.json), the calibrated and
calibrated-sigmas summaries, the oracles of a better choice, the gradient fits of the sampler
family, the memory, transfer, precision and
option-set tables, and the digits checkpoint's tables (harness.digits_field).

README (or the document ``PLACES`` names) marks each generated block::

    <!-- bench.readme NAME -->
    ...
    <!-- /bench.readme NAME -->

``python -m bench.readme`` rewrites every block of every document from docs/bench/*.json;
``--check`` only says which blocks are stale (exit 1).  tests/bench/test_readme.py runs the
check, so a benchmark rerun whose numbers did not reach the documents fails the suite.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from . import (
    calibrated_page,
    calibrated_sigmas,
    gradient_fit,
    memory,
    options,
    oracle,
    precision,
    results_page,
    transfer,
)

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
OPTIONS = ROOT / "docs" / "calibration_options.md"
BENCH = ROOT / "docs" / "bench"


def calibrated_block(bench: Path) -> list[str]:
    data = json.loads((bench / "calibrated.json").read_text())
    return calibrated_page.readme_lines(data["rows"], data["points"], data["meta"])


def calibrated_options_block(name: str):
    """A calibrated benchmark run with other options (docs/bench/NAME.json): its summary
    table and its cost against the target."""
    def block(bench: Path) -> list[str]:
        data = json.loads((bench / f"{name}.json").read_text())
        return [*calibrated_page.summary_table(data["points"], data["meta"]),
                *calibrated_page.cost_lines(data["points"])]
    return block


def draws_block(bench: Path) -> list[str]:
    def points(name):
        return json.loads((bench / name).read_text())["points"]
    return calibrated_page.draw_lines(points("calibrated.json"), points("calibrated_draw1.json"))


def recommend_block(bench: Path) -> list[str]:
    """Recommended settings' LML Calibrate line: the calibrated benchmark's medians, the points
    where it loses to the best pair, and the defaults before (calibrated_previous_defaults)."""
    def load(name):
        return json.loads((bench / f"{name}.json").read_text())["points"]
    points, before = load("calibrated"), load("calibrated_previous_defaults")

    def medians(selected, digits):
        """The families' (calibrated_page.families) geometric means of the median ratios:
        the digits network's cfg values, or the exact mixtures."""
        return [calibrated_page.summary_numbers(family)["median"] for label, family in
                calibrated_page.families(selected).items()
                if label.startswith("digits") == digits]

    def digits(selected):
        values = medians(selected, True)
        return f"{min(values):.2f}-{max(values):.2f}x"

    def mixtures(selected):
        return medians(selected, False)[0]
    losing = sorted((p for p in points if p["ratio"] > calibrated_page.MEDIAN_ABOVE),
                    key=lambda p: -p["ratio"])
    named = ", ".join(f"{p['data']}/{p['schedule']} {p['nfe']} NFE {p['ratio']:.2f}x"
                      for p in losing[:3])
    rest = losing[3:]
    if rest:
        named += (f", the others {min(p['ratio'] for p in rest):.2f}-"
                  f"{max(p['ratio'] for p in rest):.2f}x")
    where = sorted({"the digits network" if p["data"].startswith("digits")
                    else "the exact mixtures" for p in losing})
    return [f"**LML Calibrate** for one model and setting sampled many times, at 4-10 steps "
            f"(docs/bench/calibrated.md, the medians over {points[0]['seeds']} calibration "
            f"seeds, on noise it was not fitted on): {digits(points)} the best sampler x "
            f"scheduler pair's error on the digits network (cfg 1-6, geometric means), "
            f"{mixtures(points):.2f}x on the exact mixtures; worse than the best pair (median "
            f"above {calibrated_page.MEDIAN_ABOVE}) at {len(losing)} of {len(points)} points"
            + (f", all on {' and '.join(where)}" if losing else "")
            + (f" ({named}), where a few samples end in another mode than the reference's"
               if losing else "")
            + ". Otherwise first try the best pair: LML Sampler Lab with `schedulers` shows it "
            f"on your model. Where each sample must keep the reference's mode, `trajectory` 1 "
            f"and `linear_fits` off (the defaults before: {mixtures(before):.2f}x on the exact "
            f"mixtures, {digits(before)} on the digits network)."]


def field_block(bench: Path) -> list[str]:
    data = json.loads((bench / "results.json").read_text())
    return results_page.readme_lines(data["deterministic"], data["stochastic"], data["meta"])


def cost_block(bench: Path) -> list[str]:
    return results_page.cost_lines(json.loads((bench / "results.json").read_text())["meta"])


def host_timing_block(bench: Path) -> list[str]:
    """The end-to-end timing in the real host (python -m harness.host_timing, its JSON saved
    as docs/bench/host_timing.json)."""
    data = json.loads((bench / "host_timing.json").read_text())
    r = data["results"]
    runs = len(next(iter(r.values()))["runs"])
    cells = [f"{name.replace('KSamplerLML', 'KSampler (LML)')} {v['median_s']:.2f} s"
             + ("" if v["ratio_vs_KSampler_euler"] == 1 else
                f" ({v['ratio_vs_KSampler_euler']:.2f}x)") for name, v in r.items()]
    return [f"End to end in the real host (`python -m harness.host_timing --repeats {runs} "
            f"--steps {data['steps']} --size {data['size']} --threads {data['threads']}`, "
            f"saved as docs/bench/host_timing.json; test checkpoint, alternating in one server, "
            f"medians of {runs}): " + ", ".join(cells) + ", within this shared machine's noise."]


def wrapped_block(bench: Path) -> list[str]:
    data = json.loads((bench / "results.json").read_text())
    return results_page.wrapped_lines(data["deterministic"], data["stochastic"])


def sigmas_block(bench: Path) -> list[str]:
    data = json.loads((bench / "calibrated_sigmas.json").read_text())
    return calibrated_sigmas.summary_lines(data["points"])


def sigmas_in_sample_block(bench: Path) -> list[str]:
    """Calibrated sigmas fitted on the test noise itself (bench.calibrated_sigmas --in-sample),
    with the robust loss and by least squares."""
    lines = []
    for name, label in (("calibrated_sigmas_in_sample", "robust loss (the default)"),
                        ("calibrated_sigmas_in_sample_lsq", "least squares")):
        data = json.loads((bench / f"{name}.json").read_text())
        lines.append(f"- Fitted on the test noise, {label}: "
                     + calibrated_sigmas.short_line(data["points"]))
    return lines


def memory_block(bench: Path) -> list[str]:
    return memory.table_lines(json.loads((bench / "memory.json").read_text())["results"])


def transfer_block(bench: Path) -> list[str]:
    data = json.loads((bench / "transfer.json").read_text())
    return [transfer.overall(data), "", *transfer.classes_table(data), "",
            *transfer.cfg_table(data)]


def oracle_block(name: str):
    def lines(bench: Path) -> list[str]:
        return oracle.summary_lines(json.loads((bench / f"{name}.json").read_text())["points"])
    return lines


def gradient_fit_block(bench: Path) -> list[str]:
    """The gradient fits' summaries: the mixtures, then the digits network."""
    out = []
    for name in ("gradient_fit", "gradient_fit_digits"):
        if out:
            out.append("")
        out += gradient_fit.summary_lines(json.loads((bench / f"{name}.json").read_text())[
            "points"])
    return out


def precision_block(bench: Path) -> list[str]:
    return precision.table_lines(json.loads((bench / "precision.json").read_text()))


def options_block(*names: str):
    """The option-set tables of the runs ``names`` (docs/bench/NAME.json), one after another."""
    def lines(bench: Path) -> list[str]:
        out = []
        for name in names:
            data = json.loads((bench / f"{name}.json").read_text())
            if out:
                out.append("")
            out += options.summary_lines(data["meta"]["sets"], data["rows"])
        return out
    return lines


def digits_block(name: str):
    def lines(bench: Path) -> list[str]:
        from harness.digits_field import readme_table  # the ComfyUI run's own table

        return [readme_table(json.loads((bench / f"{name}.json").read_text()))]
    return lines


BLOCKS = {"calibrated": calibrated_block,
          "calibrated-previous-defaults": calibrated_options_block(
              "calibrated_previous_defaults"),
          "calibrated-linear-jr0": calibrated_options_block("calibrated_linear_jr0"),
          "calibrated-draws": draws_block,
          "calibrated-sigmas": sigmas_block,
          "calibrated-sigmas-in-sample": sigmas_in_sample_block, "oracle": oracle_block("oracle"),
          "oracle-digits": oracle_block("oracle_digits"), "gradient-fit": gradient_fit_block,
          "field": field_block, "recommend-calibrate": recommend_block,
          "wrapped": wrapped_block, "cost": cost_block,
          "host-timing": host_timing_block,
          "memory": memory_block, "transfer": transfer_block, "precision": precision_block,
          "options": options_block("options"),
          "options-thorough": options_block("options_thorough"),
          "options-trajectory": options_block("options_trajectory_digits",
                                              "options_trajectory_mixtures"),
          "options-samples": options_block("options_samples_digits",
                                           "options_samples_mixtures"),
          "options-jacobian": options_block("options_jacobian_digits",
                                            "options_jacobian_mixtures"),
          "options-trajectory-low": options_block("options_trajectory_low_digits",
                                                  "options_trajectory_low_mixtures"),
          "options-linear-jr0": options_block("options_linear_jr0_digits",
                                              "options_linear_jr8_digits",
                                              "options_linear_jr0_mixtures",
                                              "options_linear_jr8_mixtures"),
          "digits-field": digits_block("digits_field"), "digits-size": digits_block("digits_size"),
          "digits-size-fit96": digits_block("digits_size_fit96")}


# The blocks that live in another document than README: the option-set tables.
PLACES = {name: OPTIONS for name in ("options", "options-thorough", "options-trajectory",
                                     "options-samples", "options-jacobian",
                                     "options-linear-jr0", "options-trajectory-low",
                                     "calibrated-linear-jr0")}
DOCUMENTS = (README, OPTIONS)


def blocks_of(document: Path) -> list[str]:
    """The names of the blocks ``document`` holds, in BLOCKS' order."""
    return [name for name in BLOCKS if PLACES.get(name, README) == document]


def block_pattern(name: str):
    return re.compile(rf"(<!-- bench\.readme {re.escape(name)} -->\n)(.*?)"
                      rf"(<!-- /bench\.readme {re.escape(name)} -->)", re.S)


def rewritten(text: str, bench: Path = BENCH, document: Path = README
              ) -> tuple[str, list[str]]:
    """(``text``, the contents of ``document``, with each of its blocks written from
    ``bench``, the names of the blocks that changed); a block it lacks is a ValueError
    naming it."""
    stale = []
    for name in blocks_of(document):
        pattern = block_pattern(name)
        if not pattern.search(text):
            raise ValueError(f"{document.name} has no block {name!r} (<!-- bench.readme {name} "
                             f"--> ... <!-- /bench.readme {name} -->)")
        body = "\n".join(BLOCKS[name](bench)).strip("\n") + "\n"
        new = pattern.sub(lambda m, body=body: m.group(1) + body + m.group(3), text, count=1)
        if new != text:
            stale.append(name)
        text = new
    return text, stale


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report stale blocks")
    parser.add_argument("--bench", type=Path, default=BENCH)
    args = parser.parse_args(argv)
    failed = 0
    for document in DOCUMENTS:
        text, stale = rewritten(document.read_text(), args.bench, document)
        if args.check:
            if stale:
                print(f"{document.name}'s blocks {stale} differ from {args.bench}: run python "
                      "-m bench.readme")
                failed = 1
            continue
        document.write_text(text)
        print(f"rewrote {stale or 'nothing'} in {document}")
    return failed


if __name__ == "__main__":
    sys.exit(main())
