"""Markdown tables and PNG plots of benchmark rows."""

from __future__ import annotations

from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .suite import BASELINE_NAMES as DETERMINISTIC_BASELINES  # noqa: E402
from .suite import WRAPPED  # noqa: E402

LML = tuple(WRAPPED)


def _index(rows):
    idx = {}
    for r in rows:
        idx[(r["data"], r["schedule"], r["sampler"], r["nfe_budget"])] = r
    return idx


def problems_of(rows):
    seen = []
    for r in rows:
        if (r["data"], r["schedule"]) not in seen:
            seen.append((r["data"], r["schedule"]))
    return seen


def error_tables(rows, metric="rms", fmt="{:.4f}"):
    """One markdown table per (data, schedule): samplers x NFE, best baseline per column bold."""
    idx = _index(rows)
    nfes = sorted({r["nfe_budget"] for r in rows})
    samplers = list(dict.fromkeys(r["sampler"] for r in rows))
    out = []
    for data, kind in problems_of(rows):
        out += [f"**{data} / {kind}** ({metric})", "",
                "| sampler | " + " | ".join(f"NFE {n}" for n in nfes) + " |",
                "|---|" + "---|" * len(nfes)]
        for s in samplers:
            cells = []
            for n in nfes:
                r = idx.get((data, kind, s, n))
                if r is None or metric not in r:
                    cells.append("")
                    continue
                cell = fmt.format(r[metric])
                if r["nfe"] != n:
                    cell += f" ({r['nfe']})"
                best = min((idx[(data, kind, b, n)][metric] for b in DETERMINISTIC_BASELINES
                            if (data, kind, b, n) in idx), default=None)
                if best is not None and s in LML and r[metric] < best:
                    cell = f"**{cell}**"
                cells.append(cell)
            out.append(f"| {s} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def ratio_table(rows):
    """LML error / wrapped solver and / best deterministic baseline, per problem and NFE."""
    idx = _index(rows)
    nfes = sorted({r["nfe_budget"] for r in rows})
    out = ["| data / schedule | sampler | ratio | " + " | ".join(str(n) for n in nfes) + " |",
           "|---|---|---|" + "---|" * len(nfes)]
    for data, kind in problems_of(rows):
        for s in LML:
            if (data, kind, s, nfes[0]) not in idx:
                continue
            refs = {
                "vs wrapped": [idx[(data, kind, WRAPPED[s], n)]["rms"] for n in nfes],
                "vs best baseline": [min(idx[(data, kind, b, n)]["rms"]
                                         for b in DETERMINISTIC_BASELINES
                                         if (data, kind, b, n) in idx) for n in nfes],
                "vs dpmpp_2m": [idx[(data, kind, "dpmpp_2m", n)]["rms"] for n in nfes],
            }
            for label, ref in refs.items():
                cells = [f"{idx[(data, kind, s, n)]['rms'] / r:.2f}" for n, r in zip(nfes, ref)]
                out.append(f"| {data} / {kind} | {s} | {label} | " + " | ".join(cells) + " |")
    return "\n".join(out)


STYLE = {"euler": ("C0", "-"), "heun": ("C1", "-"), "dpmpp_2m": ("C2", "-"),
         "uni_pc": ("C4", "-"), "uni_pc_bh2": ("C5", "-"),
         "lml_euler": ("C3", "--"), "lml_dpmpp_2m": ("k", "--")}


def plot_metric(rows, path, metric="rms", ylabel="RMS error vs reference ODE solution"):
    probs = problems_of(rows)
    datas = list(dict.fromkeys(d for d, _ in probs))
    kinds = list(dict.fromkeys(k for _, k in probs))
    fig, axes = plt.subplots(len(datas), len(kinds), figsize=(4.2 * len(kinds), 3.0 * len(datas)),
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
                color, ls = STYLE.get(s, (None, ":"))
                ax.plot([p[0] for p in pts], [p[1] for p in pts], ls, color=color, marker="o",
                        ms=3, label=s, lw=1.6 if s in LML else 1.1)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_title(f"{d} / {k}", fontsize=9)
            ax.set_xlabel("NFE (model calls)", fontsize=8)
            ax.tick_params(labelsize=7)
            if j == 0:
                ax.set_ylabel(ylabel, fontsize=8)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
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
