"""Markdown tables and PNG plots of benchmark rows.

Deterministic rows carry ``rms`` (and ``median``) against the reference ODE solution;
stochastic rows carry ``sw2`` (median over seeds, with ``sw2_min``/``sw2_max``) against fresh
samples of the target distribution and its floor ``sw2_floor``.
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


def _index(rows):
    return {(r["data"], r["schedule"], r["sampler"], r["nfe_budget"]): r for r in rows}


def problems_of(rows):
    return list(dict.fromkeys((r["data"], r["schedule"]) for r in rows))


def _nfes(rows):
    return sorted({r["nfe_budget"] for r in rows})


def best_of(idx, problem, samplers, nfe, metric):
    """(sampler, value) with the lowest ``metric`` among ``samplers`` at ``nfe``, or None."""
    found = [(idx[problem + (s, nfe)][metric], s) for s in samplers
             if problem + (s, nfe) in idx and metric in idx[problem + (s, nfe)]]
    return (min(found)[1], min(found)[0]) if found else None


def error_tables(rows, metric="rms", fmt="{:.4f}", spread=False):
    """One table per (data, schedule): samplers x NFE.  An LML cell is bold where it is below the
    best built-in; the last line names the best built-in per NFE."""
    idx, nfes = _index(rows), _nfes(rows)
    out = []
    for problem in problems_of(rows):
        samplers = list(dict.fromkeys(r["sampler"] for r in rows
                                      if (r["data"], r["schedule"]) == problem))
        builtins = [s for s in samplers if competes(s)]
        floor = next((r.get("sw2_floor") for r in rows
                      if (r["data"], r["schedule"]) == problem and metric == "sw2"), None)
        title = f"**{problem[0]} / {problem[1]}** ({metric}"
        title += f"; floor, true vs true: {floor:.4f})" if floor is not None else ")"
        out += [title, "", "| sampler | " + " | ".join(f"NFE {n}" for n in nfes) + " |",
                "|---|" + "---|" * len(nfes)]
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
                best = best_of(idx, problem, builtins, n, metric)
                if best is not None and is_lml(s) and r[metric] < best[1]:
                    cell = f"**{cell}**"
                cells.append(cell)
            out.append(f"| {s} | " + " | ".join(cells) + " |")
        out.append("| *best built-in* | " + " | ".join(
            (best_of(idx, problem, builtins, n, metric) or ("", 0))[0] for n in nfes) + " |")
        out.append("")
    return "\n".join(out)


def headline(rows, metric="rms"):
    """Per problem and NFE: best LML / best built-in (and the two names); plus the geometric
    mean over problems per NFE.  Returns (markdown, {nfe: geometric mean ratio})."""
    idx, nfes = _index(rows), _nfes(rows)
    lines = ["| data / schedule | " + " | ".join(f"NFE {n}" for n in nfes) + " |",
             "|---|" + "---|" * len(nfes)]
    ratios = defaultdict(list)
    for problem in problems_of(rows):
        samplers = list(dict.fromkeys(r["sampler"] for r in rows
                                      if (r["data"], r["schedule"]) == problem))
        cells = []
        for n in nfes:
            lml = best_of(idx, problem, [s for s in samplers if is_lml(s)], n, metric)
            builtin = best_of(idx, problem, [s for s in samplers if competes(s)], n, metric)
            if lml is None or builtin is None or builtin[1] <= 0:
                cells.append("")
                continue
            ratio = lml[1] / builtin[1]
            ratios[n].append(ratio)
            cells.append(f"{ratio:.2f} ({lml[0]} / {builtin[0]})")
        lines.append(f"| {problem[0]} / {problem[1]} | " + " | ".join(cells) + " |")
    geo = {n: geometric_mean(v) for n, v in ratios.items() if v}
    lines.append("| *geometric mean* | " + " | ".join(
        f"{geo[n]:.2f}" if n in geo else "" for n in nfes) + " |")
    return "\n".join(lines), geo


def wrapped_table(rows, wrapped, metric="rms"):
    """Each LML sampler's metric over the solver it wraps, per problem and NFE."""
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
    by = defaultdict(list)
    for r in rows:
        if metric in r:
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
