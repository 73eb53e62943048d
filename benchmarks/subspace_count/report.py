"""Turn benchmarks/subspace_count/runs/*.json into report.json, report.md, report.png (accuracy vs N) and ev.png
(explained variance vs N). Trains nothing; every number in the text comes from the run files.

    .venv/bin/python benchmarks/subspace_count/report.py [--runs DIR]
"""

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from run import FIT_METHODS, KINDS, LR, STEPS_BY_ROWS, TARGETS, VERA_RANK, K  # noqa: E402

from edge_lorax.bench import measure  # noqa: E402

BUDGET = 1843  # 1/40 of LoRA r=8's 73,728 on MiniLM q/v
FIT8 = "tweets-binary,spam-sms,disaster-request,20ng-sci.med,amazon-3class,trec-coarse,disaster-earthquake,20ng-rec.autos"
COMMANDS = ["nice -n 15 .venv/bin/python benchmarks/train_sources_wide.py",
            "nice -n 15 .venv/bin/python benchmarks/subspace_count/run.py --phase fit --rows 0 --steps 600 "
            "--targets trec-coarse,disaster-request --methods lora",
            f"nice -n 15 .venv/bin/python benchmarks/subspace_count/run.py --phase fit --targets {FIT8} --rows 0 "
            "--methods probe,lora",
            f"nice -n 15 .venv/bin/python benchmarks/subspace_count/run.py --phase fit --targets {FIT8} --rows 256 "
            "--methods probe,lora,random",
            "POOL=64 bash benchmarks/subspace_count/grid.sh",
            f"nice -n 15 .venv/bin/python benchmarks/subspace_count/run.py --pool 64 --phase advise --methods quick-lora "
            f"--kinds mixed --ns 0,2 --draws 1 --targets {FIT8}",
            ".venv/bin/python benchmarks/subspace_count/decoder_ev.py",
            "nice -n 15 .venv/bin/python benchmarks/decoder/loo.py --stages sources --threads 1",
            ".venv/bin/python benchmarks/subspace_count/report.py"]


def load_runs(folder: Path, pool: int | None = None) -> list:
    """Every cell under `folder`; with `pool`, subspace cells of that pool only (LoRA, VeRA, probe have none)."""
    runs = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json")) if p.name != "pool.json"]
    return [r for r in runs if pool is None or not r["n"] or r["pool"] == pool]


def ms(values, scale=100.0, digits=1) -> str:
    """mean ± sample std (n) of values × scale; '–' when empty."""
    arr = scale * np.asarray([v for v in values if v is not None], dtype=float)
    if not len(arr):
        return "–"
    return f"{arr.mean():.{digits}f} ± {arr.std(ddof=1):.{digits}f} (n={len(arr)})" if len(arr) > 1 else f"{arr.mean():.{digits}f}"


# ------------------------------------------------------------------------------------------ training-free


def proj_curves(runs: list) -> dict:
    """{pool: {(target, kind): {n: {"ev_keep": [...], "ev_drop": [...], "ev_random": [...], "acc": [...]}}}}."""
    out = defaultdict(lambda: defaultdict(lambda: defaultdict(lambda: defaultdict(list))))
    seen = set()
    for r in runs:
        key = (r["pool"], r["target"], r["kind"], tuple(r["sources"] or ()))
        if r["phase"] != "proj" or key in seen:
            continue  # advise / fit cells; a draw of every candidate repeats draw 0's sources: counted once
        seen.add(key)
        c = out[r["pool"]][(r["target"], r["kind"])][r["n"]]
        for key in ("ev_keep", "ev_drop", "ev_random"):
            c[key].append(r[key]["overall"])
        c["acc"].append(r["test_accuracy"])
        c["modules"].append(r["ev_keep"]["modules"])
    return out


COLUMNS = (2, 4, 8, 16, 32)  # then "all": every candidate of the draw kind (its N differs by target and kind)


def _by_column(byn: dict, field: str, fmt) -> list:
    """One cell per COLUMNS N, then the 'all' cell (the largest N drawn when it is not a column, with its N)."""
    top = max(byn)
    last = f"{fmt(byn[top][field])} (N={top})" if top not in COLUMNS else "–"
    return [fmt(byn[n][field]) if n in byn else "–" for n in COLUMNS] + [last]


def proj_table(curves: dict, pool: int) -> list:
    """Markdown: per target and draw kind, EV (keep) % by N, random EV."""
    lines = ["| target | draws | " + " | ".join(f"N={n}" for n in COLUMNS) + " | all | random basis (any N) |",
             "|---|---|" + "---|" * (len(COLUMNS) + 2)]
    for (target, kind), byn in sorted(curves[pool].items(), key=lambda x: (TARGETS.index(x[0][0]), KINDS.index(x[0][1]))):
        rand = [v for c in byn.values() for v in c["ev_random"]]
        lines.append(f"| `{target}` | {kind} | " + " | ".join(_by_column(byn, "ev_keep", ms)) + f" | {ms(rand, digits=2)} |")
    return lines


def proj_accuracy_table(curves: dict, pool: int) -> list:
    lines = ["| target | draws | " + " | ".join(f"N={n}" for n in COLUMNS) + " | all |", "|---|---|" + "---|" * (len(COLUMNS) + 1)]
    for (target, kind), byn in sorted(curves[pool].items(), key=lambda x: (TARGETS.index(x[0][0]), KINDS.index(x[0][1]))):
        lines.append(f"| `{target}` | {kind} | " + " | ".join(_by_column(byn, "acc", ms)) + " |")
    return lines


def module_table(curves: dict, pool: int, kind: str = "mixed") -> list:
    """Per-module EV (keep) by N, mean over targets and draws of one draw kind."""
    cur = {k: v for k, v in curves[pool].items() if k[1] == kind}
    ns = sorted({n for c in cur.values() for n in c})
    per = defaultdict(lambda: defaultdict(list))
    for byn in cur.values():
        for n, c in byn.items():
            for mods in c["modules"]:
                for m, v in mods.items():
                    per[m][n].append(v)
    lines = ["| module | " + " | ".join(f"N={n}" for n in ns) + " |", "|---|" + "---|" * len(ns)]
    for m in sorted(per, key=_module_order):
        lines.append(f"| `{_short(m)}` | " + " | ".join(ms(per[m][n]) if per[m][n] else "–" for n in ns) + " |")
    return lines


def _module_order(m: str):
    parts = m.split(".")
    layer = next((int(p) for p in parts if p.isdigit()), 0)
    return (parts[-1], layer)


def _short(m: str) -> str:
    return m.replace("bert.encoder.layer.", "L").replace(".attention.self.", " ")


def plateau_n(byn: dict, key: str = "ev_keep", share: float = 0.9) -> int | None:
    """Smallest N whose mean reaches `share` of the largest mean over N (the N where the curve stops growing)."""
    means = {n: np.mean(c[key]) for n, c in byn.items() if c[key]}
    if len(means) < 2:
        return None
    top = max(means.values())
    return min(n for n, v in means.items() if v >= share * top)


# ------------------------------------------------------------------------------------------ trained


def fit_index(runs: list) -> dict:
    """{(target, rows): {(method, kind, n): [test accuracies over draws × seeds]}}; LoRA / probe under (m, 'none', 0)."""
    out = defaultdict(lambda: defaultdict(list))
    for r in runs:
        if r["phase"] == "fit":
            out[(r["target"], r["rows"])][(r["method"], r["kind"], r["n"])].append(r["test_accuracy"])
    return out


def fit_table(index: dict) -> list:
    lines = ["| target | rows | probe | LoRA r=8 | VeRA (1,792) | " + " | ".join(f"{m} (kind, N)" for m in ("eigen-keep",
             "random", "mean", "eigen-drop")) + " |", "|---|---|---|---|---|---|---|---|---|"]
    for (target, rows), cells in sorted(index.items(), key=lambda x: (TARGETS.index(x[0][0]), x[0][1] or 10 ** 9)):
        row = [ms(cells.get((m, "none", 0), [])) for m in ("probe", "lora", "vera")]
        for m in ("eigen-keep", "random", "mean", "eigen-drop"):
            found = sorted((k, n) for (mm, k, n) in cells if mm == m)
            row.append("; ".join(f"{k} N={n}: {ms(cells[(m, k, n)])}" for k, n in found) or "–")
        lines.append(f"| `{target}` | {rows or 'all'} | " + " | ".join(row) + " |")
    return lines


def _n_key(n: int) -> int:
    """N as a table key: a COLUMNS value, or 0 for 'every candidate' (whose N differs by target and kind)."""
    return n if n in COLUMNS else 0


def gap_table(g: dict) -> list:
    """Markdown: EigenLoRAx − random (points, mean ± std over targets × draws × seeds) by draw kind and rows × N, and
    the N where the mean gap stops growing (first N within 90 % of the row's largest positive mean)."""
    ns = sorted({n for (_, n, _) in g}, key=lambda n: n or 10 ** 6)  # 0 ("all") last
    label = lambda n: f"N={n}" if n else "all"  # noqa: E731
    lines = ["| draws | rows | " + " | ".join(label(n) for n in ns) + " | gap stops growing at |",
             "|---|---|" + "---|" * (len(ns) + 1)]
    for kind, rows in sorted({(k, r) for (k, _, r) in g}, key=lambda x: (KINDS.index(x[0]), x[1] or 10 ** 9)):
        means = {n: float(np.mean(g[(kind, n, rows)])) for n in ns if g.get((kind, n, rows))}
        top = max(means.values())
        stop = next((n for n in ns if n in means and means[n] >= 0.9 * top), None) if top > 0 and len(means) > 1 else None
        lines.append(f"| {kind} | {rows or 'all'} | " + " | ".join(ms(g.get((kind, n, rows), []), scale=1)
                                                                  for n in ns) + f" | {'–' if stop is None else label(stop)} |")
    return lines


def _paired(runs: list, method: str, key) -> dict:
    """{(kind, n, rows): [eigen-keep − `method` for every eigen-keep run whose key(run) a `method` run shares]} in points."""
    other = {key(r): r["test_accuracy"] for r in runs if r["phase"] == "fit" and r["method"] == method}
    out = defaultdict(list)
    for r in runs:
        if r["phase"] == "fit" and r["method"] == "eigen-keep" and key(r) in other:
            out[(r["kind"], _n_key(r["n"]), r["rows"])].append(100 * (r["test_accuracy"] - other[key(r)]))
    return out


def vs_alone(runs: list, method: str = "lora") -> dict:
    """{(kind, n, rows): [eigen-keep − `method` (a run without a subspace: LoRA, VeRA, probe, or the random basis, which
    depends on the seed alone: run.py random_like) of the same target, seed and rows]} in points."""
    return _paired(runs, method, lambda r: (r["target"], r["seed"] if method != "probe" else 0, r["rows"]))


def vs_same_draw(runs: list, method: str) -> dict:
    """{(kind, n, rows): [eigen-keep − `method` on the same subspace draw (target, kind, N, draw, seed, rows)]} in
    points: the mean alone (K=1) or the mean dropped."""
    return _paired(runs, method, lambda r: (r["target"], r["kind"], r["n"], r["draw"], r["seed"], r["rows"]))


def plateau_steps(runs: list) -> dict:
    """{"method rows=R of S steps": [first eval step whose validation accuracy is within 1 point of the run's best]}."""
    out = defaultdict(list)
    for r in runs:
        hist = r.get("history") or []
        if hist:
            best = max(h[3] for h in hist)
            out[f"{r['method']} rows={r['rows'] or 'all'} of {r['steps']} steps"].append(
                next(h[0] for h in hist if h[3] >= best - 0.01))
    return dict(sorted(out.items()))


def _draw_key(r: dict) -> tuple:
    return r["target"], r["kind"], r["n"], r["pool"]


def _adapter_ev(runs: list) -> dict:
    """{(target, kind, N, pool): the held-out adapter's explained variance in draw 0's subspace (training-free)}."""
    return {_draw_key(r): r["ev_keep"]["overall"] for r in runs if r["phase"] == "proj" and r["draw"] == 0}


def _advise_pairs(runs: list) -> dict:
    """{(target, kind, N, pool): (eigen-keep, random) test accuracy at 64 rows, draw 0, seed 0} where both exist."""
    fits = {_draw_key(r): r["test_accuracy"] for r in runs if r["phase"] == "fit"
            and r["method"] == "eigen-keep" and r["rows"] == 64 and r["draw"] == 0 and r["seed"] == 0}
    random = {r["target"]: r["test_accuracy"] for r in runs  # the random basis depends on the seed alone
              if r["phase"] == "fit" and r["method"] == "random" and r["rows"] == 64 and r["seed"] == 0}
    return {k: (v, random[k[0]]) for k, v in fits.items() if k[0] in random}


def advise_table(runs: list) -> list:
    """Per advise cell: the share of the examples' gradient (or quick LoRA) inside the draw's subspace, × random,
    beside the trained gap at the same (target, kind, N, pool) and 64 rows where one exists."""
    pairs = _advise_pairs(runs)
    lines = ["| target | measure | draws | N | P | share in subspace | random (mean) | × random | trained EigenLoRAx − random, 64 rows |",
             "|---|---|---|---|---|---|---|---|---|"]
    cells = sorted((r for r in runs if r["phase"] == "advise"),
                   key=lambda r: (r["method"], TARGETS.index(r["target"]), r["kind"], r["n"]))
    for r in cells:
        pair = pairs.get(_draw_key(r))
        gap = f"{100 * (pair[0] - pair[1]):+.1f}" if pair else "–"
        lines.append(f"| `{r['target']}` | {r['method']} | {r['kind']} | {r['n']} | {r['pool']} | {100 * r['captured']:.2f} % | "
                     f"{100 * r['random_mean']:.3f} % | {r['ratio']:.0f} | {gap} |")
    return lines


def _ranks(x) -> np.ndarray:
    """Ranks 0..n-1, ties averaged (Spearman's convention)."""
    x = np.asarray(x, dtype=float)
    r = np.empty(len(x))
    r[x.argsort(kind="stable")] = np.arange(len(x))
    for v in np.unique(x):
        r[x == v] = r[x == v].mean()
    return r


def _spearman(x, y) -> float:
    return round(float(np.corrcoef(_ranks(x), _ranks(y))[0, 1]), 2)


def adapter_ev_floor(runs: list, floor: float = 0.06) -> dict:
    """Over every trained pair (64 rows, draw 0, seed 0): the held-out adapter's explained variance vs the gain over
    the random basis: its rank correlation, and the cells below `floor` with their largest gain (points)."""
    pairs, ev = _advise_pairs(runs), _adapter_ev(runs)
    keys = [k for k in pairs if k in ev]
    gap = {k: 100 * (pairs[k][0] - pairs[k][1]) for k in keys}
    low = [gap[k] for k in keys if ev[k] < floor]
    return {"cells": len(keys), "rho": _spearman([ev[k] for k in keys], [gap[k] for k in keys]), "floor": floor,
            "below_floor": len(low), "largest_gain_below_floor": round(max(low), 1) if low else None}


def advise_rank_correlation(runs: list) -> dict:
    """{measure: (Spearman ρ with the trained gap, cells)} over the cells an advise measure and a trained pair share;
    `adapter` is the held-out adapter's own explained variance (training-free, draw 0) on those cells."""
    pairs, ev, out = _advise_pairs(runs), _adapter_ev(runs), {}
    for m in sorted({r["method"] for r in runs if r["phase"] == "advise"}):
        cells = {_draw_key(r): r["ratio"] for r in runs
                 if r["phase"] == "advise" and r["method"] == m and _draw_key(r) in pairs}
        if len(cells) > 2:
            gap = [pairs[k][0] - pairs[k][1] for k in cells]
            out[m] = {"rho": _spearman(list(cells.values()), gap), "cells": len(cells),
                      "adapter_ev_rho": _spearman([ev[k] for k in cells], gap) if all(k in ev for k in cells) else None}
    return out


def decoder_repeat() -> list:
    """Markdown: SmolLM2 test exact match of EigenLoRAx on N of the eleven sources (benchmarks/decoder/loo.py --stages
    sources; N=11 is the LOO run) beside the random basis: mean ± std over the seeds run, all rows, the LOO sweep's
    rates; [] if none ran."""
    runs = [json.loads(p.read_text()) for p in sorted((ROOT / "benchmarks/decoder/runs").glob("*.json"))]
    picks = json.loads((ROOT / "benchmarks/decoder/report.json").read_text())["picks"]
    cell = defaultdict(dict)  # (task, method, N) -> {seed: test exact match}
    for r in runs:
        if r["rows"] == "all" and r.get("lr") is not None and r["lr"] == picks.get(r["method"]):
            cell[(r["task"], r["method"], r.get("sources") or 11)][r["seed"]] = r["test"]["accuracy"]
    ns = sorted({n for (_, m, n) in cell if m == "eigen-keep"})
    if ns == [11]:
        return []
    tasks, keys = sorted({t for (t, _, _) in cell}), [("eigen-keep", n) for n in ns] + [("random", 11)]
    lines = ["| task | " + " | ".join(f"EigenLoRAx N={n}" for n in ns) + " | random basis |", "|---|" + "---|" * len(keys)]
    for t in tasks:
        lines.append(f"| `{t}` | " + " | ".join(ms(cell[(t, *k)].values()) for k in keys) + " |")
    seeds = {k: set.intersection(*(set(cell[(t, *k)]) for t in tasks)) for k in keys}  # seeds every task has
    mean = [ms([sum(cell[(t, *k)][s] for t in tasks) / len(tasks) for s in sorted(seeds[k])]) for k in keys]
    gap = [ms([sum(cell[(t, *k)][s] - cell[(t, "random", 11)][s] for t in tasks) / len(tasks)
               for s in sorted(seeds[k] & seeds[("random", 11)])]) for k in keys[:-1]]
    return lines + ["| mean over tasks | " + " | ".join(mean) + " |", "| − random basis | " + " | ".join(gap) + " | |"]


# ------------------------------------------------------------------------------------------ figures


def _panels(targets: list, sharey: bool = False):
    """One panel per target, side by side: (matplotlib.pyplot, figure, axes row)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max(1, len(targets))
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.0), sharey=sharey, squeeze=False)
    return plt, fig, axes[0]


def _save(plt, fig, axes, targets: list, ylabel: str, legend: int, path):
    """Every panel's N axis (log 2) and title, the shared y label and legend, written as a PNG."""
    for ax, t in zip(axes, targets):
        ax.set_xscale("log", base=2)
        ax.set_title(t, fontsize=9)
        ax.set_xlabel("source adapters N")
    axes[0].set_ylabel(ylabel)
    axes[0].legend(fontsize=legend)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=90)
    plt.close(fig)


def draw_ev(curves: dict, pool: int, path):
    cur = curves[pool]
    targets = [t for t in TARGETS if any(k[0] == t for k in cur)]
    plt, fig, axes = _panels(targets, sharey=True)
    for ax, t in zip(axes, targets):
        for kind, style in zip(KINDS, ("-o", "-s", "-^")):
            byn = cur.get((t, kind))
            if byn:
                ns = sorted(byn)
                ax.errorbar(ns, [100 * np.mean(byn[n]["ev_keep"]) for n in ns],
                            yerr=[100 * np.std(byn[n]["ev_keep"]) for n in ns], fmt=style, label=kind, capsize=2)
        rand = [v for k, c in cur.items() if k[0] == t for cc in c.values() for v in cc["ev_random"]]
        ax.axhline(100 * np.mean(rand), color="grey", ls=":", label="random K=8")
    _save(plt, fig, axes, targets, "% of held-out ΔW explained (K=8)", 7, path)


def draw_accuracy(curves: dict, pool: int, index: dict, path):
    """Per target: the projected adapter's accuracy vs N (draw 0, per draw kind), trained eigen-keep vs N (64 rows, per
    draw kind) and the random basis, LoRA, VeRA and the probe (64 rows) as horizontal lines."""
    cur = curves.get(pool, {})
    targets = [t for t in TARGETS if any(k[0] == t for k in cur) or any(k[0] == t for k in index)]
    plt, fig, axes = _panels(targets)
    for ax, t in zip(axes, targets):
        for kind, style in zip(KINDS, ("-o", "-s", "-^")):
            byn = cur.get((t, kind))
            if byn:
                ns = sorted(n for n in byn if byn[n]["acc"] and byn[n]["acc"][0] is not None)
                ax.plot(ns, [100 * byn[n]["acc"][0] for n in ns], style, label=f"projection, {kind}", alpha=0.6)
        cells = index.get((t, 64), {})
        for kind, color in zip(KINDS, ("C3", "C5", "C1")):
            pts = sorted((n, np.mean(v)) for (mm, k, n), v in cells.items() if mm == "eigen-keep" and k == kind)
            if pts:
                ax.plot([p[0] for p in pts], [100 * p[1] for p in pts], "-D", color=color, label=f"trained, {kind}")
        for m, ls, color in (("random", "-.", "k"), ("lora", "--", "C4"), ("vera", "--", "C8"), ("probe", ":", "C4")):
            if cells.get((m, "none", 0)):
                ax.axhline(100 * np.mean(cells[(m, "none", 0)]), ls=ls, color=color, label=m)
    _save(plt, fig, axes, targets, "test accuracy %", 6, path)


# ------------------------------------------------------------------------------------------ text


def family_status() -> dict:
    """Adapters trained so far (the fourteen + the wide ones), and the wide ones' summed wall time."""
    from run import PLANNED

    done = [n for n in PLANNED if (ROOT / "adapters" / n / "training.json").is_file()]
    wide = [json.loads((ROOT / "adapters" / n / "training.json").read_text()) for n in done[14:]]
    return {"planned": len(PLANNED), "trained": len(done), "wide_trained": done[14:],
            "wide_wall_h": round(sum(d.get("wall_s", 0) for d in wide) / 3600, 2)}


def on_grid(r: dict) -> bool:
    """False for the plateau study's cells (a trained run at other steps than STEPS_BY_ROWS gives its rows)."""
    return r["phase"] != "fit" or r["method"] == "probe" or r.get("steps") == STEPS_BY_ROWS.get(r["rows"])


def summary(runs: list, study: list = ()) -> dict:
    """The numbers the text states: per (kind, N, rows) gaps and vs LoRA, plateau N per target/kind, CPU hours."""
    curves = proj_curves(runs)
    g, v, vv = (vs_alone(runs, m) for m in ("random", "lora", "vera"))
    name = lambda k, n, r: f"{k} N={n or 'all'} rows={r or 'all'}"  # noqa: E731
    order = lambda item: (item[0][0], item[0][2] or 10 ** 9, item[0][1] or 10 ** 6)  # noqa: E731
    return {"gap_vs_random": {name(*key): _stat(x) for key, x in sorted(g.items(), key=order)},
            "eigen_minus_lora": {name(*key): _stat(x) for key, x in sorted(v.items(), key=order)},
            "eigen_minus_vera": {name(*key): _stat(x) for key, x in sorted(vv.items(), key=order)},
            **{f"eigen_minus_{m.replace('-', '_')}": {name(*key): _stat(x) for key, x in
                                                     sorted(vs_same_draw(runs, m).items(), key=order)}
               for m in ("mean", "eigen-drop")},
            "plateau_n_ev": {f"P{p} {t} {k}": plateau_n(byn) for p, cur in curves.items() for (t, k), byn in cur.items()},
            "cpu_h": round(sum(r.get("cpu_s", 0) for r in [*runs, *study]) / 3600, 2),
            "wall_h": round(sum(r.get("wall_s", 0) for r in [*runs, *study]) / 3600, 2), "runs": len(runs) + len(study),
            "load_median": round(float(np.median([r["load_average"][0] for r in [*runs, *study]] or [0])), 2),
            "steps_to_plateau": {m: sorted(s) for m, s in plateau_steps([*runs, *study]).items()},
            "family": family_status(), "advise_rank": advise_rank_correlation(runs),
            "adapter_ev_floor": adapter_ev_floor(runs)}


def _stat(x) -> dict:
    a = np.asarray(x, dtype=float)
    return {"mean": round(float(a.mean()), 2), "min": round(float(a.min()), 2), "max": round(float(a.max()), 2), "n": len(a)}


def goal_lines(s: dict) -> list:
    """The issue's goal, point by point, from what was measured; 'not measured' where no cell exists."""
    def pick(d, rows):
        keys = [k for k in d if k.endswith(f"rows={rows}") and k.startswith("mixed")]
        n_of = lambda k: k.split("N=")[1].split()[0]  # noqa: E731
        return max(keys, key=lambda k: 10 ** 6 if n_of(k) == "all" else int(n_of(k))) if keys else None

    out = [f"Per-user parameters: EigenLoRAx K={K} on MiniLM q/v is 12 × 2 × 8 × 8 = 1,536 ≤ {BUDGET:,} (LoRA r=8: 73,728)."]
    for rows, what in ((64, "≥ LoRA at 64 rows"), (256, "≥ LoRA at 256 rows"), ("all", "≤ 0.5 below LoRA at all rows")):
        k = pick(s["eigen_minus_lora"], rows)
        out.append(f"- {what}: " + (f"{k}: EigenLoRAx − LoRA {s['eigen_minus_lora'][k]['mean']:+.1f} points "
                                    f"(min {s['eigen_minus_lora'][k]['min']:+.1f}, max {s['eigen_minus_lora'][k]['max']:+.1f}, "
                                    f"n={s['eigen_minus_lora'][k]['n']} targets)" if k else "not measured (not reached)"))
    k = pick(s["gap_vs_random"], 64)
    out.append("- recycled ≥ random + 2 points on average: " + (
        f"{k}: {s['gap_vs_random'][k]['mean']:+.1f} points (min {s['gap_vs_random'][k]['min']:+.1f}, max "
        f"{s['gap_vs_random'][k]['max']:+.1f}, n={s['gap_vs_random'][k]['n']})" if k else "not measured (not reached)"))
    return out


def _stat_lines(stats: dict) -> list:
    """One Markdown bullet per cell group of a summary's {name: _stat} dict."""
    return [f"- {k}: {v['mean']:+.1f} (min {v['min']:+.1f}, max {v['max']:+.1f}, n={v['n']})"
            for k, v in stats.items()] or ["- no paired cell yet"]


def advise_section(runs: list, s: dict) -> list:
    """Markdown: the advise cells beside the trained gap, and how well each measure ranks that gap."""
    f = s["adapter_ev_floor"]
    return ["", "## What `edge-lorax advise` measures, beside the trained gap", "",
            "The share of the target's first 64 training rows' gradient (frozen base, logistic-regression head; "
            "`grad`) or of a LoRA trained on them for 100 steps (`quick-lora`) inside the draw's K=8 subspace and "
            "inside 8 random bases of the same K:", "", *advise_table(runs), "",
            "Does it rank the trained gain? Spearman ρ between the measure's × random and the trained EigenLoRAx − "
            "random gap over the cells both exist for, beside the held-out adapter's own explained variance (which a "
            "user does not have) on the same cells:", "",
            *[f"- {m}: ρ = {c['rho']:+.2f} ({c['cells']} cells); held-out adapter's explained variance on them: "
              f"ρ = {c['adapter_ev_rho']:+.2f}" for m, c in s["advise_rank"].items()],
            f"- the held-out adapter's explained variance over every trained pair ({f['cells']} cells: kinds, N): "
            f"ρ = {f['rho']:+.2f}; the {f['below_floor']} cells below {100 * f['floor']:.0f} % gained at most "
            f"{f['largest_gain_below_floor']:+.1f} points over the random basis"]


def markdown(runs: list, s: dict, stamp: dict) -> str:
    curves, index = proj_curves(runs), fit_index(runs)
    pools = sorted(curves)
    fam = s["family"]
    parts = ["# How many adapters make a subspace (issue 30): recycled vs random by number and family of sources",
             "", *measure.stamp_md(stamp), "", "Commands (resumable; each cell one JSON under `runs/`):", "",
             *[f"- `{c}`" for c in COMMANDS], "",
             f"CPU: {s['runs']} cells in this report, {s['cpu_h']} CPU hours ({s['wall_h']} h wall) on a 2-core machine "
             f"(two or three cells at a time; 1-minute load average over the cells: median {s['load_median']}), all at "
             f"`nice -n 15`, one torch thread. Family: {fam['trained']} of the "
             f"{fam['planned']} planned MiniLM adapters trained ({len(fam['wide_trained'])} new: "
             f"{', '.join(fam['wide_trained']) or 'none'}; {fam['wide_wall_h']} h wall).", ""]
    parts += ["## Training-free: how much of a held-out adapter a subspace of N sources holds", "",
              f"Explained variance (%) of the target's own adapter ΔW (all 12 q/v modules, energy-weighted), "
              f"projected onto a K={K} subspace (mean kept) built from N sources without it; mean ± sample std over "
              f"the draws. `same`: sources of the target's family; `other`: other families only; `mixed`: any. "
              f"A random orthonormal basis of the same K holds ~K²/384² = 0.04 %.", ""]
    for p in pools:
        parts += [f"Pool P={p} (the first {p} adapters of the family):", "", *proj_table(curves, p), "",
                  "Projected adapter's test accuracy (%, draw 0, its own head, no training):", "",
                  *proj_accuracy_table(curves, p), "", "Per module (mixed draws, mean over targets and draws):", "",
                  *module_table(curves, p), ""]
    parts += ["## Trained: EigenLoRAx vs random basis vs mean vs LoRA vs probe", "",
              "Test accuracy %, batch 16, max length 48, steps by training rows: " + ", ".join(
                  f"{r or 'all'} rows {st}" for r, st in STEPS_BY_ROWS.items()) + "; rates from the paper table's one "
              "validation sweep: " + ", ".join(f"{m} {LR[m]:g}" for m in FIT_METHODS) + f". VeRA r={VERA_RANK} on "
              "q/v of layers 4–5 (4 × (384 + 64) = 1,792 per-user parameters: EigenLoRAx's budget). Balanced test sets "
              "for disaster/20ng targets (50 % floor).", "", *fit_table(index), "",
              "EigenLoRAx (mean kept) − random basis of the same K, points, paired by target, draw and seed:", "",
              *gap_table(vs_alone(runs, "random")), "", "The same, one line per cell group:", ""]
    parts += _stat_lines(s["gap_vs_random"])
    parts += ["", "EigenLoRAx (mean kept) − LoRA r=8, points:", ""]
    parts += _stat_lines(s["eigen_minus_lora"])
    parts += ["", "EigenLoRAx (mean kept) − VeRA at the same per-user budget, points:", ""]
    parts += _stat_lines(s["eigen_minus_vera"])
    parts += ["", "EigenLoRAx (mean kept, K=8) − the mean adapter's direction alone (K=1) on the same draw, points:", ""]
    parts += _stat_lines(s["eigen_minus_mean"])
    parts += ["", "EigenLoRAx mean kept − mean dropped on the same draw (each at its own swept rate), points:", ""]
    parts += _stat_lines(s["eigen_minus_eigen_drop"])
    parts += ["", "Steps to plateau (first evaluation, every 25 steps, within 1 point of the run's best validation "
              "accuracy):", ""] + [f"- {m}: {v}" for m, v in s["steps_to_plateau"].items()]
    parts += advise_section(runs, s)
    dec = decoder_repeat()
    if dec:
        parts += ["", "## SmolLM2 repeat, trained (test exact match %, mean ± std over seeds, all rows)", "",
                  "`.venv/bin/python benchmarks/decoder/loo.py --stages sources` (EigenLoRAx on a seeded draw of N of the "
                  "eleven other decoder adapters; N=11 and the random basis are the leave-one-task-out runs of "
                  "benchmarks/decoder/report.md; the random basis does not depend on N):", "", *dec]
    parts += ["", "## The goal", "", *goal_lines(s), ""]
    return "\n".join(parts) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=Path, default=HERE / "runs")
    ap.add_argument("--extra", type=Path, default=HERE / "notes.md", help="hand-written verdict appended to report.md")
    ap.add_argument("--pool", type=int, help="subspace cells of this pool only (default: the largest pool in runs/)")
    args = ap.parse_args(argv)
    runs = load_runs(args.runs)
    runs = load_runs(args.runs, args.pool or max((r["pool"] for r in runs if r["n"]), default=None))
    study, runs = [r for r in runs if not on_grid(r)], [r for r in runs if on_grid(r)]
    stamp = measure.finish(measure.stamp(" && ".join(COMMANDS), dirty_paths=("benchmarks/subspace_count",)))
    s = summary(runs, study)
    text = markdown(runs, s, stamp) + (args.extra.read_text() if args.extra.is_file() else "")
    curves, index = proj_curves(runs), fit_index(runs)
    pool = max(curves) if curves else 0
    measure.write_report_files(HERE, {"summary": s, "stamp": stamp}, text,
                               lambda p: draw_accuracy(curves, pool, index, p))
    if curves:
        draw_ev(curves, pool, HERE / "ev.png")
    print(f"wrote {HERE / 'report.md'}", file=sys.stderr)


if __name__ == "__main__":
    main()
