"""Markdown tables and PNG plots of benchmark rows.

Deterministic rows carry ``rms`` (and ``median``) against the reference ODE solution;
stochastic rows carry ``sw2`` (median over seeds, with ``sw2_min``/``sw2_max``) against fresh
samples of the target distribution and its floor ``sw2_floor``.  Every row has a ``scheduler``:
None on the problem's fixed schedule, else the host scheduler of a (sampler, scheduler) pair
(bench.pairs); "the best built-in" is the best pair.
"""

from __future__ import annotations

from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .suite import geometric_mean  # noqa: E402


def is_lml(name: str) -> bool:
    return name.startswith("lml_")


def competes(name: str) -> bool:
    """A built-in that can be "the best built-in": not LML, and not a CFG++ sampler, which
    follows another guided ODE (its error against the CFG reference does not vanish)."""
    return not is_lml(name) and not name.endswith("_cfg_pp")


# Which rows a "best" is taken over.  A row's "scheduler" is None on the problem's fixed schedule
# (DEFAULT_SCHEDULE), else the host scheduler of a (sampler, scheduler) pair.
KINDS = {
    "pair": lambda r: r.get("scheduler") is not None and competes(r["sampler"]),
    "default": lambda r: r.get("scheduler") is None and competes(r["sampler"]),
    "lml": lambda r: r.get("scheduler") is None and is_lml(r["sampler"]),
}
DEFAULT_SCHEDULE = {"karras": "Karras 0.002-80", "flow": "flow shift 3"}
TITLES = {"pair": "best pair", "default": "best on default schedule", "lml": "best LML"}


def label(row) -> str:
    """"uni_pc_bh2 + kl_optimal" for a pair, the sampler's name on the fixed schedule."""
    return row["sampler"] + (f" + {row['scheduler']}" if row.get("scheduler") else "")


def problems_of(rows):
    return list(dict.fromkeys((r["data"], r["schedule"]) for r in rows))


def _nfes(rows):
    return sorted({r["nfe_budget"] for r in rows})


def _points(rows):
    """{(data, schedule, nfe): rows}."""
    out = defaultdict(list)
    for r in rows:
        out[(r["data"], r["schedule"], r["nfe_budget"])].append(r)
    return out


def best(point_rows, kind, metric):
    """The row of ``kind`` with the lowest ``metric`` among one point's rows (rows with
    non-finite samples cannot win), or None."""
    found = [r for r in point_rows if KINDS[kind](r) and metric in r and not r.get("non_finite")]
    return min(found, key=lambda r: r[metric]) if found else None


def _index(rows):
    """The fixed-schedule rows by (data, schedule, sampler, nfe)."""
    return {(r["data"], r["schedule"], r["sampler"], r["nfe_budget"]): r for r in rows
            if r.get("scheduler") is None}


def error_tables(rows, metric="rms", fmt="{:.4f}", spread=False):
    """One table per (data, schedule): samplers on the fixed schedule x NFE.  An LML cell is
    bold where it is below the best (sampler, scheduler) pair; the last lines give the best pair
    (its value and name) and the best sampler on the fixed schedule per NFE."""
    idx, points, nfes = _index(rows), _points(rows), _nfes(rows)
    out = []
    for problem in problems_of(rows):
        samplers = list(dict.fromkeys(r["sampler"] for r in rows if r.get("scheduler") is None
                                      and (r["data"], r["schedule"]) == problem))
        floor = next((r.get("sw2_floor") for r in rows
                      if (r["data"], r["schedule"]) == problem and metric == "sw2"), None)
        title = f"**{problem[0]} / {problem[1]}** ({metric}"
        title += f"; floor, true vs true: {floor:.4f})" if floor is not None else ")"
        out += [title, "", "| sampler | " + " | ".join(f"NFE {n}" for n in nfes) + " |",
                "|---|" + "---|" * len(nfes)]
        pair = {n: best(points[problem + (n,)], "pair", metric) for n in nfes}
        for s in samplers:
            cells = []
            for n in nfes:
                r = idx.get(problem + (s, n))
                if r is None or metric not in r:
                    cells.append("")
                    continue
                cell = fmt.format(r[metric])
                if spread and f"{metric}_min" in r:
                    cell += f" ({fmt.format(r[f'{metric}_min'])}-{fmt.format(r[f'{metric}_max'])})"
                if r["nfe"] != n:
                    cell += f" [{r['nfe']}]"
                if r.get("non_finite"):
                    cell += f" ({r['non_finite']} NaN)"
                if pair[n] is not None and is_lml(s) and r[metric] < pair[n][metric]:
                    cell = f"**{cell}**"
                cells.append(cell)
            out.append(f"| {s} | " + " | ".join(cells) + " |")
        out.append("| *best pair (sampler + scheduler)* | " + " | ".join(
            f"{fmt.format(pair[n][metric])} {label(pair[n])}" if pair[n] else "not run"
            for n in nfes) + " |")
        default = [best(points[problem + (n,)], "default", metric) for n in nfes]
        out.append(f"| *best on {DEFAULT_SCHEDULE.get(problem[1], problem[1])}* | " + " | ".join(
            r["sampler"] if r else "" for r in default) + " |")
        out.append("")
    return "\n".join(out)


def ratio_table(rows, metric="rms", num="lml", den="pair"):
    """Per problem and NFE: the best ``num`` row's metric over the best ``den`` row's (and the
    two names); plus the geometric mean over problems per NFE.  Where no pair ran (den "pair"),
    the ratio is to the best sampler on the fixed schedule, marked ">=": the pairs include that
    schedule (the host's karras is it to float32 rounding, flow's simple nearly, on integer
    timesteps), so the best pair can only lower the denominator.  Returns (markdown,
    {nfe: geometric mean ratio})."""
    found, geo, bound = ratios_of(rows, metric, num, den)
    nfes = _nfes(rows)
    lines = ["| data / schedule | " + " | ".join(f"NFE {n}" for n in nfes) + " |",
             "|---|" + "---|" * len(nfes)]
    for problem in problems_of(rows):
        cells = []
        for n in nfes:
            r = found.get(problem + (n,))
            cells.append("" if r is None else f"{'>= ' if r['bound'] else ''}{r['ratio']:.2f} "
                         f"({label(r['top'])} / {label(r['bottom'])})")
        lines.append(f"| {problem[0]} / {problem[1]} | " + " | ".join(cells) + " |")
    return "\n".join(lines + [geometric_row(geo, bound, nfes, "*geometric mean*")]), geo


def ratios_of(rows, metric="rms", num="lml", den="pair"):
    """ratio_table's numbers: ({(data, schedule, nfe): {"ratio", "top", "bottom", "bound"}},
    {nfe: geometric mean over the problems}, {the NFEs where some ratio is only a bound})."""
    points = _points(rows)
    found, ratios, bound = {}, defaultdict(list), set()
    for problem in problems_of(rows):
        for n in _nfes(rows):
            top = best(points[problem + (n,)], num, metric)
            bottom = best(points[problem + (n,)], den, metric)
            is_bound = False
            if bottom is None and den == "pair":
                bottom, is_bound = best(points[problem + (n,)], "default", metric), True
            if top is None or bottom is None or bottom[metric] <= 0:
                continue
            ratio = top[metric] / bottom[metric]
            found[problem + (n,)] = {"ratio": ratio, "top": top, "bottom": bottom,
                                     "bound": is_bound}
            ratios[n].append(ratio)
            if is_bound:
                bound.add(n)
    return found, {n: geometric_mean(v) for n, v in ratios.items() if v}, bound


def geometric_row(geo, bound, nfes, title, bold=False):
    """A table row of the geometric means per NFE (">= " where a ratio is only a bound; bold
    where it is not, with ``bold``)."""
    def cell(n):
        if n not in geo:
            return ""
        if n in bound:
            return f">= {geo[n]:.2f}"
        return f"**{geo[n]:.2f}**" if bold else f"{geo[n]:.2f}"
    return f"| {title} | " + " | ".join(cell(n) for n in nfes) + " |"


def headline(rows, metric="rms"):
    """Best LML over the best (sampler, scheduler) pair: (markdown, {nfe: geometric mean})."""
    return ratio_table(rows, metric, "lml", "pair")


def wrapped_ratios(rows, lml, base, metric="rms") -> dict:
    """{(data, schedule, nfe): ``lml``'s metric over ``base``'s}, both on the fixed schedule,
    where both ran."""
    idx = _index(rows)
    return {(d, s, n): idx[(d, s, lml, n)][metric] / idx[(d, s, base, n)][metric]
            for (d, s, name, n) in idx if name == lml and (d, s, base, n) in idx}


def wrapped_table(rows, wrapped, metric="rms"):
    """Each LML sampler's metric over the solver it wraps (both on the fixed schedule), per
    problem and NFE."""
    idx, nfes = _index(rows), _nfes(rows)
    lines = ["| data / schedule | sampler | " + " | ".join(str(n) for n in nfes) + " |",
             "|---|---|" + "---|" * len(nfes)]
    for problem in problems_of(rows):
        for lml, base in wrapped.items():
            if problem + (lml, nfes[0]) not in idx or problem + (base, nfes[0]) not in idx:
                continue
            cells = [f"{idx[problem + (lml, n)][metric] / idx[problem + (base, n)][metric]:.2f}"
                     if problem + (lml, n) in idx else "" for n in nfes]
            lines.append(f"| {problem[0]} / {problem[1]} | {lml} / {base} | "
                         + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_metric(rows, path, metric="rms", ylabel="RMS error vs reference ODE solution"):
    probs = problems_of(rows)
    datas = list(dict.fromkeys(d for d, _ in probs))
    kinds = list(dict.fromkeys(k for _, k in probs))
    fig, axes = plt.subplots(len(datas), len(kinds), figsize=(4.6 * len(kinds), 3.2 * len(datas)),
                             squeeze=False)
    by, points = defaultdict(list), _points(rows)
    for r in rows:
        if metric in r and r.get("scheduler") is None:
            by[(r["data"], r["schedule"], r["sampler"])].append((r["nfe"], r[metric]))
    for i, d in enumerate(datas):
        for j, k in enumerate(kinds):
            ax = axes[i][j]
            for (dd, kk, s), pts in by.items():
                if (dd, kk) != (d, k):
                    continue
                pts.sort()
                ax.plot([p[0] for p in pts], [p[1] for p in pts], "--" if is_lml(s) else "-",
                        marker="o", ms=2.5, label=s, lw=2.0 if is_lml(s) else 0.9,
                        color="k" if is_lml(s) else None)
            # The highlight: the best (sampler, scheduler) pair at each NFE budget.
            envelope = [(n, best(points[(d, k, n)], "pair", metric)) for n in _nfes(rows)]
            envelope = [(n, r[metric]) for n, r in envelope if r is not None]
            if envelope:
                ax.plot(*zip(*envelope), color="r", lw=2.6, alpha=0.6, marker="s", ms=3,
                        label="best (sampler, scheduler) pair")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_title(f"{d} / {k}", fontsize=9)
            ax.set_xlabel("NFE (model calls)", fontsize=8)
            ax.tick_params(labelsize=7)
            if j == 0:
                ax.set_ylabel(ylabel, fontsize=8)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=6, loc="center right")
    fig.tight_layout(rect=(0, 0, 0.86, 1))
    fig.savefig(path, dpi=72)
    plt.close(fig)


def scatter_2d(panels, path, title):
    """panels: {kind: {label: [N, 2] tensor}} -> a grid of scatter plots."""
    kinds = list(panels)
    labels = list(panels[kinds[0]])
    fig, axes = plt.subplots(len(kinds), len(labels), figsize=(2.6 * len(labels), 2.7 * len(kinds)),
                             squeeze=False)
    for i, k in enumerate(kinds):
        for j, lab in enumerate(labels):
            pts = panels[k][lab][:2000].double().numpy()
            ax = axes[i][j]
            ax.scatter(pts[:, 0], pts[:, 1], s=0.6, alpha=0.5, color="k" if j == 0 else f"C{j}")
            ax.set_xlim(-3.2, 3.2)
            ax.set_ylim(-3.2, 3.2)
            ax.set_aspect("equal")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{lab} ({k})", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    plt.close(fig)
