"""Turn `runs/*.json` into `report.json` + `report.md`: mean ± std tables and the issue's claims checked against them.

The tables use each method's learning rate picked by the sweep (`pick_lrs`: best mean validation accuracy over the
domains, seed 0, all rows); runs at other rates stay in runs/ and feed the sweep table and the old-vs-new
comparison (the table before the sweep ran at LEGACY_LR). Claims are judged on paired differences (same domain,
training-set size and seed) with a 95 % interval, so a setting "wins" only when the interval excludes zero;
otherwise the report says tie. Does not train anything.

    .venv/bin/python benchmarks/paper_table/report.py [--runs DIR]
"""

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
METHODS = ("eigen-drop", "eigen-keep", "eigen-drop-uniform", "random", "lora", "vera", "head", "probe",
           "projection-drop", "projection-keep")
ROWS = ("all", "256", "64")
PLAIN_K8 = lambda r: r["k"] == 8 and r["augment"] == 0  # noqa: E731  the grid's default subspace


# The rates of the table before the sweep; run files without a rate in their name ran at these.
LEGACY_LR = {"eigen-drop": 2e-2, "eigen-keep": 2e-2, "random": 2e-2, "lora": 2e-3, "vera": 1e-2, "head": 5e-3}
# The sweep (issue 12): three rates per trained method, the legacy rate among them; one rule for all.
SWEEP = {"eigen-drop": (5e-3, 2e-2, 5e-2), "eigen-keep": (5e-3, 2e-2, 5e-2), "random": (5e-3, 2e-2, 5e-2),
         "lora": (5e-4, 2e-3, 5e-3), "head": (5e-3, 5e-2, 2e-1), "vera": (3e-3, 1e-2, 3e-2)}  # run in this order


def load_runs(folder: Path) -> list:
    """Every run file; each gets `lr` (the rate it trained at, from its config) and `validation_accuracy` (files made
    before the sweep: the last validation pass of their history, which is the final weights' score)."""
    runs = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
    for r in runs:
        r.setdefault("lr", r.get("config", {}).get("lr"))
        if r.get("validation_accuracy") is None and r.get("history"):
            r["validation_accuracy"] = r["history"][-1][3]
    return runs


def is_sweep(r: dict, method: str, lr: float) -> bool:
    """A sweep run: main grid, seed 0, all rows, default subspace and init, this method at this rate."""
    return (r["grid"] == "main" and r["seed"] == 0 and r["rows"] == "all" and r["method"] == method
            and r["init"] == "zero_b" and PLAIN_K8(r) and r.get("lr") == lr)


def sweep_scores(runs, sweep: dict = SWEEP) -> dict:
    """{method: {lr: mean validation accuracy (each run's rounded to 6 decimals) over the domains, or None until every
    domain has its run}}."""
    domains = sorted({r["domain"] for r in runs if r["grid"] == "main"})
    out = {}
    for method, grid in sweep.items():
        out[method] = {}
        for lr in grid:
            # 6 decimals: the precision files made before the sweep stored (their history), so that the same count
            # of correct rows scores the same in old and new files
            acc = {r["domain"]: round(r["validation_accuracy"], 6) for r in runs if is_sweep(r, method, lr)}
            out[method][lr] = float(np.mean([acc[d] for d in domains])) if domains and set(domains) <= set(acc) else None
    return out


def at_picks(runs, picks: dict) -> list:
    """The runs the tables show: trained methods of the main and low-data grids at their picked rate (the legacy rate
    where the sweep has no pick yet), plus projections, the probe and the ablations (legacy rate)."""
    def shown(r):
        if r["method"] not in LEGACY_LR or r["grid"] not in ("main", "lowdata"):
            return True
        return r.get("lr") == picks.get(r["method"], LEGACY_LR[r["method"]])
    return [r for r in runs if shown(r)]


def at_legacy(runs) -> list:
    """The table before the sweep: trained methods of the main and low-data grids at LEGACY_LR."""
    return [r for r in runs if r["method"] in LEGACY_LR and r["grid"] in ("main", "lowdata")
            and r.get("lr") == LEGACY_LR[r["method"]]]


def pick_lrs(runs, sweep: dict = SWEEP) -> dict:
    """{method: the rate with the best mean validation accuracy} for methods whose sweep is complete. Ties (equal to
    1e-9: validation accuracy counts rows, so equal counts tie exactly but their float means may differ in the last
    bit) go to the smallest rate."""
    picks = {}
    for method, scores in sweep_scores(runs, sweep).items():
        if scores and all(v is not None for v in scores.values()):
            best = max(round(v, 9) for v in scores.values())
            picks[method] = min(lr for lr, v in scores.items() if round(v, 9) == best)
    return picks


def label(r: dict) -> str:
    """Row name: the method, with the paper's uniform initialisation marked outside the ablation grid."""
    return r["method"] + ("-uniform" if r["init"] == "uniform" and r["grid"] != "ablation" else "")


def cell(values) -> str:
    """`mean ± std` in accuracy points (sample std over seeds; a single run shows the value)."""
    arr = 100 * np.asarray(values, dtype=float)
    if not len(arr):
        return "–"
    return f"{arr.mean():.1f} ± {arr.std(ddof=1):.1f}" if len(arr) > 1 else f"{arr.mean():.1f}"


def select(runs, name: str, rows: str) -> list:
    """Runs of one row name at one training-set size, on the grid's default subspace (see `is_`)."""
    return [r for r in runs if is_(name, rows)(r)]


def domain_mean_per_seed(rs: list, domains: list) -> list:
    """One value per seed: the mean over domains, for seeds that cover every domain."""
    by_seed = defaultdict(dict)
    for r in rs:
        by_seed[r["seed"]][r["domain"]] = r["test_accuracy"]
    return [np.mean([acc[d] for d in domains]) for acc in by_seed.values() if set(domains) <= set(acc)]


def accuracy_table(runs, rows: str) -> list:
    """Markdown rows: method × domain, mean ± std test accuracy over seeds, and the mean over domains."""
    domains = sorted({r["domain"] for r in runs if r["rows"] == rows})
    lines = [f"| method | {' | '.join(domains)} | mean over domains |", "|---" * (len(domains) + 2) + "|"]
    for m in METHODS:
        rs = select(runs, m, rows)
        if rs:
            accs = [[r["test_accuracy"] for r in rs if r["domain"] == d] for d in domains]
            cells = [cell(a) + (f" (n={len(a)})" if 0 < len(a) < 3 and m != "probe" and not m.startswith("projection")
                                else "") for a in accs]
            lines.append(f"| {m} | {' | '.join(cells)} | {cell(domain_mean_per_seed(rs, domains))} |")
    return lines if len(lines) > 2 else [f"_No runs with {rows} training rows yet._"]


def size_table(runs) -> list:
    """Mean over domains (± std over seeds) for each method at each training-set size."""
    domains = sorted({r["domain"] for r in runs})
    lines = ["| method | " + " | ".join(f"{n} rows" for n in ROWS) + " |", "|---" * (len(ROWS) + 1) + "|"]
    for m in ("eigen-drop", "eigen-keep", "lora", "head", "probe"):
        cells = [cell(domain_mean_per_seed(select(runs, m, n), domains)) if select(runs, m, n) else "–" for n in ROWS]
        lines.append(f"| {m} | {' | '.join(cells)} |")
    return lines


def cost_table(runs) -> list:
    """Per method (main grid): trainable params, bytes per user, s/step, peak training MiB, steps to 95%."""
    by = defaultdict(list)
    for r in runs:
        if r["grid"] == "main" and not r["method"].startswith("projection") and r["method"] != "probe":
            by[label(r)].append(r)
    lines = ["| method | adapter params | head params | bytes/user | s/step (median) | peak train MiB (median) | "
             "steps to 95% val (median) |", "|---|---|---|---|---|---|---|"]
    for m in (m for m in METHODS if m in by):
        rs, s95 = by[m], [r["steps_to_95"] for r in by[m] if r.get("steps_to_95") is not None]
        lines.append(f"| {m} | {rs[0]['adapter_params']:,} | {rs[0]['head_params']:,} | {rs[0]['user_bytes']:,} | "
                     f"{np.median([r['s_per_step'] for r in rs]):.3f} | {np.median([r['peak_train_mib'] for r in rs]):.0f}"
                     f" | {np.median(s95) if s95 else '–'} |")
    return lines + ["", "Peak train MiB: rise of the process's RSS during training above its level before the run, "
                        "sampled every 20 ms (runs share one process, so allocator reuse makes it a lower bound). "
                        "Steps to 95 %: first evaluation (every 20 steps) reaching 95 % of the final validation "
                        "accuracy. Bytes/user: user.npz for EigenLoRAx, adapter_model.safetensors for LoRA / VeRA "
                        "(VeRA's file holds its shared projections), the head's safetensors for head-only."]


def ablation_lines(runs) -> list:
    """Amazon, 256 rows, eigen-drop: the ablation grid plus the low-data grid's K=8 zero_b baseline."""
    keyed = defaultdict(list)
    for r in runs:
        if r["grid"] in ("ablation", "lowdata") and r["method"] == "eigen-drop" and r["rows"] == "256" and r["domain"] == "amazon":
            keyed[(str(r["k"] if r["k"] is not None else "all"), r["augment"], r["init"])].append(r["test_accuracy"])
    lines = ["| K | augmented directions | init | test accuracy |", "|---|---|---|---|"]
    lines += [f"| {k} | {aug} | {init} | {cell(vals)} |" for (k, aug, init), vals in sorted(keyed.items())]
    return lines if any(r["grid"] == "ablation" for r in runs) else ["_Not run yet: `run.py --grids ablation`._"]


def breaks_table(runs) -> list:
    """Per held-out domain: eigen-drop − LoRA (mean over seeds) at each size, and how far its own LoRA lies outside
    the subspace (relative ΔW error of the projection) — where recycling stops paying."""
    domains = sorted({r["domain"] for r in runs if r["grid"] == "main"})
    err = {r["domain"]: r["relative_error"] for r in runs if r["method"] == "projection-drop"}
    lines = ["| held-out domain | " + " | ".join(f"{n} rows" for n in ROWS) + " | relative ΔW error of projecting its own LoRA |",
             "|---" * (len(ROWS) + 2) + "|"]
    behind = []
    for d in domains:
        diffs = [paired([r for r in runs if r["domain"] == d], is_("eigen-drop", n), is_("lora", n)) for n in ROWS]
        cells = [f"{c['mean_diff']:+.1f}" if c["mean_diff"] is not None else "–" for c in diffs]
        behind += [f"{d} at {n} rows ({c['mean_diff']:+.1f})" for n, c in zip(ROWS, diffs) if (c["mean_diff"] or 0) < 0]
        lines.append(f"| {d} | {' | '.join(cells)} | {100 * err[d]:.0f} % |" if d in err else f"| {d} | {' | '.join(cells)} | – |")
    return lines + ["", f"LoRA leads in {len(behind)} of {len(domains) * len(ROWS)} cells"
                    + (f": {', '.join(behind)}." if behind else ".")]


def paired(runs, a, b) -> dict:
    """a − b in accuracy points over runs matched on (domain, rows, seed); a and b are predicates on a run."""
    key = lambda r: (r["domain"], r["rows"], r["seed"])  # noqa: E731
    acc_a = {key(r): r["test_accuracy"] for r in runs if a(r)}
    acc_b = {key(r): r["test_accuracy"] for r in runs if b(r)}
    d = 100 * np.array([acc_a[k] - acc_b[k] for k in sorted(acc_a.keys() & acc_b.keys())])
    if len(d) < 2:
        return {"n": int(len(d)), "mean_diff": float(d.mean()) if len(d) else None, "ci95": None, "winner": "unknown"}
    half = 1.96 * d.std(ddof=1) / np.sqrt(len(d))
    lo, hi = d.mean() - half, d.mean() + half
    winner = "a" if lo > 0 else "b" if hi < 0 else "tie"
    return {"n": int(len(d)), "mean_diff": round(float(d.mean()), 2), "ci95": [round(float(lo), 2), round(float(hi), 2)],
            "wins": int((d > 0).sum()), "losses": int((d < 0).sum()), "winner": winner}


def vs_probe(runs, name: str, rows: str) -> dict:
    """Per domain: method `name` (mean over its seeds) − the probe (one fit), in points; their mean over domains."""
    probe = {r["domain"]: r["test_accuracy"] for r in runs if r["method"] == "probe" and r["rows"] == rows}
    diffs = {}
    for d, p in sorted(probe.items()):
        accs = [r["test_accuracy"] for r in runs if is_(name, rows)(r) and r["domain"] == d]
        if accs:
            diffs[d] = round(100 * (float(np.mean(accs)) - p), 2)
    return {"by_domain": diffs, "mean_diff": round(float(np.mean(list(diffs.values()))), 2) if diffs else None}


def is_(name: str, rows=None):
    """Predicate: row name `name` with the grid's default subspace (K=8, no augmentation), optionally at `rows`."""
    return lambda r: label(r) == name and PLAIN_K8(r) and r["grid"] != "ablation" and rows in (None, r["rows"])


def current_defaults() -> dict:
    """The `build --mean` and `train --init` defaults of the CLI as shipped."""
    from edge_lorax.cli import build, train

    pick = lambda cmd, name: next(p.default for p in cmd.params if p.name == name)  # noqa: E731
    return {"build --mean": pick(build, "mean"), "train --init": pick(train, "init")}


def settle(by_size: dict, a: str, b: str, tie_default: str) -> str:
    """The setting the evidence picks: one that wins (interval excludes zero) at some training-set size and loses
    at none; otherwise `tie_default`."""
    winners = {c["winner"] for c in by_size.values()}
    if "a" in winners and "b" not in winners:
        return a
    return b if "b" in winners and "a" not in winners else tie_default


def by_size(runs, a, b) -> dict:
    """paired(a, b) at each training-set size that has pairs."""
    out = {n: paired([r for r in runs if r["rows"] == n], a, b) for n in ROWS}
    return {n: c for n, c in out.items() if c["n"]}


def verdicts(runs) -> dict:
    """The issue's questions, answered from paired differences (None/unknown where runs are missing)."""
    drop, keep = is_("eigen-drop"), is_("eigen-keep")
    params = {label(r): r["adapter_params"] for r in runs if r["grid"] == "main"}
    vs_lora = {m: {n: paired(runs, is_(m, n), is_("lora", n)) for n in ROWS} for m in ("eigen-drop", "eigen-keep")}
    mean_cmp = by_size(runs, keep, drop)
    init_cmp = by_size(runs, lambda r: r["method"] == "eigen-drop" and r["init"] == "uniform" and PLAIN_K8(r),
                       lambda r: label(r) == "eigen-drop" and PLAIN_K8(r) and r["grid"] != "ablation")
    within = lambda c: c["mean_diff"] is not None and c["mean_diff"] >= -1.0  # noqa: E731
    return {
        "eigen_vs_lora": vs_lora,
        "eigen_drop_within_1pt_of_lora_main": within(vs_lora["eigen-drop"]["all"]),
        "eigen_keep_within_1pt_of_lora_main": within(vs_lora["eigen-keep"]["all"]),
        "adapter_param_ratio_vs_lora": round(params.get("eigen-drop", 0) / max(1, params.get("lora", 0)), 4),
        "eigen_params_le_5pct_of_lora": bool(params.get("eigen-drop", 1e9) <= 0.05 * params.get("lora", 0)),
        "eigen_drop_vs_head": {n: paired(runs, is_("eigen-drop", n), is_("head", n)) for n in ROWS},
        "eigen_drop_vs_random_main": paired(runs, drop, is_("random")),
        "vs_probe": {m: {n: vs_probe(runs, m, n) for n in ROWS} for m in ("eigen-drop", "eigen-keep", "lora", "head")},
        "eigen_drop_vs_vera_main": paired(runs, drop, is_("vera")),
        "mean_keep_vs_drop": mean_cmp, "init_uniform_vs_zero_b": init_cmp,
        "evidence_picks": {"build --mean": settle(mean_cmp, "keep", "drop", "drop"),
                           "train --init": settle(init_cmp, "uniform", "zero_b", "zero_b")},
        "defaults": current_defaults(),
    }


def fmt(c: dict) -> str:
    """'+0.4 points (95% CI −0.6 … +1.4, 7 of 12 paired runs better)'."""
    if c.get("ci95") is None:
        return "not enough paired runs"
    lo, hi = c["ci95"]
    return f"{c['mean_diff']:+.2f} points (95% CI {lo:+.2f} … {hi:+.2f}; better in {c['wins']} of {c['n']} paired runs)"


def sizes(by: dict) -> str:
    return "; ".join(f"{n} rows {fmt(c)}" for n, c in by.items()) or "no paired runs"


def verdict_lines(v: dict) -> list:
    """The Markdown verdicts, each stated against its numbers."""
    yes = lambda ok: "**yes**" if ok else "**no**"  # noqa: E731
    el, eh = v["eigen_vs_lora"], v["eigen_drop_vs_head"]
    follows = v["evidence_picks"] == v["defaults"]
    lines = [
        f"- **Within 1 point of LoRA r=8 with ≤ 5 % of its adapter parameters?** Parameters: "
        f"{100 * v['adapter_param_ratio_vs_lora']:.1f} % ({yes(v['eigen_params_le_5pct_of_lora'])}). Accuracy, all rows: "
        f"mean dropped (paper) {fmt(el['eigen-drop']['all'])} → {yes(v['eigen_drop_within_1pt_of_lora_main'])}; "
        f"mean kept {fmt(el['eigen-keep']['all'])} → {yes(v['eigen_keep_within_1pt_of_lora_main'])}.",
        f"- With little data (mean dropped − LoRA): 256 rows {fmt(el['eigen-drop']['256'])}; "
        f"64 rows {fmt(el['eigen-drop']['64'])}.",
        f"- **Beats head-only by ≥ 2 points?** All rows (head-only is a main-grid method): {fmt(eh['all'])} → "
        f"{yes(eh['all']['mean_diff'] is not None and eh['all']['mean_diff'] >= 2)}.",
        "- **Against head-only as logistic regression on frozen features (probe)**, points, mean over domains of "
        "(method's mean over seeds − probe): " + "; ".join(
            f"{n} rows: " + ", ".join(f"{m} {v['vs_probe'][m][n]['mean_diff']:+.1f}" for m in v["vs_probe"]
                                      if v["vs_probe"][m][n]["mean_diff"] is not None)
            for n in ROWS if any(v["vs_probe"][m][n]["mean_diff"] is not None for m in v["vs_probe"])) + ".",
        f"- **Recycled directions vs random orthonormal ones** (same K, same machinery): {fmt(v['eigen_drop_vs_random_main'])}.",
        f"- **vs VeRA r=256** (same steps, rate from the same sweep): {fmt(v['eigen_drop_vs_vera_main'])}.",
        f"- **Mean kept − mean dropped**: {sizes(v['mean_keep_vs_drop'])} → evidence picks "
        f"`--mean {v['evidence_picks']['build --mean']}` (a setting is picked when it wins at some size and loses at "
        "none; on a tie the paper's `drop`).",
        f"- **Uniform init (paper) − zero coeff_B** (all rows: main grid; 256 rows: amazon ablation): "
        f"{sizes(v['init_uniform_vs_zero_b'])} → evidence picks `--init {v['evidence_picks']['train --init']}` (on a "
        "tie `zero_b`: the untrained user is exactly the base model).",
        f"- **Defaults follow the evidence?** {yes(follows)}: shipped `build --mean {v['defaults']['build --mean']}`, "
        f"`train --init {v['defaults']['train --init']}`.",
    ]
    return lines


def command(runs) -> str:
    """The run.py invocation that produced these runs (grids present, seed count), then this script."""
    grids = ["sweep"] + [g for g in ("main", "lowdata", "ablation") if any(r["grid"] == g for r in runs)]
    seeds = 1 + max((r["seed"] for r in runs), default=0)
    return (f".venv/bin/python benchmarks/paper_table/run.py --grids {','.join(grids)} --seeds {seeds} && "
            ".venv/bin/python benchmarks/paper_table/report.py")


def stamp(runs) -> dict:
    """edge_lorax.bench.measure.stamp() of the rendering (as every report; the command that made the runs), plus the
    runs' own totals."""
    from edge_lorax.bench import measure

    minutes = {g: round(sum(r["wall_s"] for r in runs if r["grid"] == g) / 60, 1) for g in sorted({r["grid"] for r in runs})}
    new = [r for r in runs if "cpu_s" in r]  # made by the re-run (files before it recorded no CPU time)
    trained = [r for r in runs if r.get("steps")]
    packages = ("torch", "transformers", "peft", "numpy", "scikit-learn", "edge-lorax")
    return {**measure.finish(measure.stamp(command(runs), packages)),
            "seeds_per_cell": 1 + max((r["seed"] for r in runs), default=0),
            "steps": trained[0]["config"]["steps"] if trained else None, "run_minutes": minutes,
            "total_minutes": round(sum(minutes.values()), 1), "rerun_runs": len(new),
            "rerun_cpu_minutes": round(sum(r["cpu_s"] for r in new) / 60, 1),
            "rerun_wall_minutes": round(sum(r["wall_s"] for r in new) / 60, 1)}


def header(result: dict, n_runs: int) -> list:
    from edge_lorax.bench import measure

    s = result["stamp"]
    return ["# EigenLoRAx vs baselines, leave-one-domain-out (VADER, all-MiniLM-L6-v2)\n", *measure.stamp_md(s), "",
            "The stamp is the rendering's (machine, commit); the command is the one that made the runs. "
            f"{n_runs} runs in the tables; up to {s['seeds_per_cell']} seeds per cell (n= marks cells with fewer: "
            "runs at a new rate not all made yet), mean ± sample std over seeds; "
            f"{s['steps']} steps of batch 16, max length 48 for every trained method, at the learning rate the sweep "
            "picked (below): " + ", ".join(f"{m} {lr:g}" for m, lr in result["picks"].items()) + ". Test accuracy in "
            "%, binary task of the held-out domain; each domain's subspace was built from the other three domains' "
            "nine source adapters only (K=8, r=8 on query/value). `probe`: head-only as logistic regression on the "
            "frozen MiniLM's mean-pooled features (`edge_lorax.builder.probe`), one fit per cell (deterministic, no "
            "seeds), C picked on the same 128 validation rows, fitted to convergence on every training row (the "
            "trained methods see 80 × 16 = 1,280 examples).\n",
            f"Cost: the runs in runs/ took {s['total_minutes']} min of wall time in all ("
            + ", ".join(f"{g} {m}" for g, m in s["run_minutes"].items()) + f"); the re-run under the sweep rule "
            f"(issue 12: {s['rerun_runs']} new runs, one torch thread each, the rest reused) took "
            f"{s['rerun_cpu_minutes']} CPU-min ({s['rerun_wall_minutes']} min wall on the shared 2-core machine).\n",
            "Data: Hutto & Gilbert (2014), VADER sentiment ratings, MIT licence (see data/vader/).\n"]


def sweep_lines(all_runs, picks: dict) -> list:
    """Method × rate: mean validation accuracy over the domains (the pick in bold), and seed-0 test accuracy beside it
    for information only (never used to pick)."""
    scores = sweep_scores(all_runs)
    lines = ["| method | rate: mean validation accuracy (mean test accuracy, seed 0) | pick | legacy rate |",
             "|---|---|---|---|"]
    for method, by_lr in scores.items():
        cells = []
        for lr, val in by_lr.items():
            test = [r["test_accuracy"] for r in all_runs if is_sweep(r, method, lr)]
            text = f"{lr:g}: {100 * val:.1f} ({100 * np.mean(test):.1f})" if val is not None else f"{lr:g}: –"
            cells.append(f"**{text}**" if picks.get(method) == lr else text)
        edge = picks.get(method) in (min(by_lr), max(by_lr))
        pick = f"{picks[method]:g}" + (" (grid edge)" if edge else "") if method in picks else "not complete"
        lines.append(f"| {method} | {'; '.join(cells)} | {pick} | {LEGACY_LR[method]:g} |")
    return lines + ["", "Validation accuracy: the final weights on the held-out domain's first 128 validation rows "
                    "(the rows every method is scored on during training), mean over the four domains, seed 0, all "
                    "training rows, 80 steps. eigen-drop with the paper's uniform init uses eigen-drop's pick. A pick "
                    "on the grid's edge means a rate beyond the grid might do better still."]


def old_new_lines(all_runs, picks: dict) -> list:
    """Per method: the table before the sweep (legacy rate) vs at the pick, main grid (all rows) and low data, by
    domain and mean over domains (mean over the seeds present)."""
    old, new = at_legacy(all_runs), at_picks(all_runs, picks)
    domains = sorted({r["domain"] for r in all_runs if r["grid"] == "main"})
    lines = ["| method | rows | rate: old → new | " + " | ".join(domains) + " | mean over domains |",
             "|---" * (len(domains) + 4) + "|"]
    for m in ("eigen-drop", "eigen-keep", "eigen-drop-uniform", "random", "lora", "vera", "head"):
        base = m.removesuffix("-uniform")
        for rows in ROWS:
            o, n = select(old, m, rows), select(new, m, rows)
            if not o:
                continue
            have = {(r["domain"], r["seed"]) for r in n}
            o = [r for r in o if (r["domain"], r["seed"]) in have] or o  # paired: the old runs of the seeds re-run
            def by(rs, d):
                vals = [r["test_accuracy"] for r in rs if r["domain"] == d]
                return 100 * np.mean(vals) if vals else np.nan
            def seeds(rs, d):
                return len([r for r in rs if r["domain"] == d])
            rate = f"{LEGACY_LR[base]:g} → {picks.get(base, LEGACY_LR[base]):g}"
            if not n:
                mo = np.nanmean([by(o, d) for d in domains])
                lines.append(f"| {m} | {rows} | {rate} | " + " | ".join(f"{by(o, d):.1f} → not re-run" for d in domains)
                             + f" | {mo:.1f} → not re-run |")
                continue
            cells = [f"{by(o, d):.1f} → {by(n, d):.1f}" + (f" (n={seeds(n, d)})" if seeds(n, d) < 3 else "")
                     for d in domains]
            mo, mn = np.nanmean([by(o, d) for d in domains]), np.nanmean([by(n, d) for d in domains])
            lines.append(f"| {m} | {rows} | {rate} | {' | '.join(cells)} | {mo:.1f} → {mn:.1f} ({mn - mo:+.1f}) |")
    probe = [r for r in all_runs if r["method"] == "probe" and r["rows"] == "all"]
    if probe:
        acc = {r["domain"]: 100 * r["test_accuracy"] for r in probe}
        mean = f"{np.mean(list(acc.values())):.1f}" if set(domains) <= set(acc) else "–"
        lines.append("| probe (new row) | all | C on validation | "
                     + " | ".join(f"{acc[d]:.1f}" if d in acc else "–" for d in domains) + f" | {mean} |")
    return lines + ["", "Each cell: mean over the seeds re-run at the new rate, the old side over the same seeds "
                    "(paired; n= marks cells with fewer than 3 seeds). A method whose pick equals its legacy rate shows "
                    "the same runs on both sides. 'not re-run': no run at the picked rate yet (see 'What remains')."]


def remaining_lines(all_runs, picks: dict, seeds: int = 3) -> list:
    """Runs the plan (sweep, main, lowdata at the picks, 3 seeds) still lacks, by grid and method."""
    domains = ("amazon", "movies", "nyt", "tweets")
    have = {(r["grid"], r["domain"], r["method"], r["rows"], r["seed"], r["init"], r.get("lr")) for r in all_runs
            if PLAIN_K8(r)}
    want = [("sweep", ("main", d, m, "all", 0, "zero_b", lr)) for m, g in SWEEP.items() for lr in g for d in domains]
    if set(SWEEP) <= set(picks):
        want += [("main", ("main", d, m, "all", s, "zero_b", picks[m])) for m in SWEEP for d in domains for s in range(seeds)]
        want += [("main", ("main", d, "eigen-drop", "all", s, "uniform", picks["eigen-drop"])) for d in domains
                 for s in range(seeds)]
        want += [("lowdata", ("lowdata", d, m, n, s, "zero_b", picks[m])) for m in ("eigen-drop", "eigen-keep", "lora")
                 for n in ("256", "64") for d in domains for s in range(seeds)]
    want += [("main" if n == "all" else "lowdata", ("main" if n == "all" else "lowdata", d, "probe", n, 0, "zero_b", None))
             for n in ROWS for d in domains]
    have_probe = {(r["grid"], r["domain"], "probe", r["rows"], 0, "zero_b", None) for r in all_runs if r["method"] == "probe"}
    missing = defaultdict(int)
    for grid, key in want:
        if key not in have and key not in have_probe:
            missing[(grid, key[2] + ("-uniform" if key[5] == "uniform" else ""))] += 1
    if not missing:
        return ["Nothing: every run of the plan is in runs/."]
    lines = ["| grid | method | runs missing |", "|---|---|---|"]
    lines += [f"| {g} | {m} | {n} |" for (g, m), n in sorted(missing.items())]
    if not set(SWEEP) <= set(picks):
        lines += ["", "The sweep is incomplete, so the main and low-data runs at the picks are not listed yet."]
    return lines + ["", "Continue (resumes from runs/, one torch thread): `.venv/bin/python benchmarks/paper_table/run.py "
                    "--grids sweep,main,lowdata && .venv/bin/python benchmarks/paper_table/report.py`."]


def probe_lines(all_runs) -> list:
    """Per domain and training-set size: the C picked on validation, its validation and test accuracy; and the test
    accuracy if one C (best mean validation accuracy over domains) were used for all domains."""
    probe = [r for r in all_runs if r["method"] == "probe"]
    if not probe:
        return ["_No probe runs yet._"]
    lines = ["| rows | domain | C picked | validation acc | test acc | test acc of each C in the grid |",
             "|---|---|---|---|---|---|"]
    for rows in ROWS:
        for r in sorted((r for r in probe if r["rows"] == rows), key=lambda r: r["domain"]):
            grid = ", ".join(f"{g['c']:g}: {100 * g['test_accuracy']:.1f}" + ("" if g["converged"] else " (not converged)")
                             for g in r["probe_grid"])
            lines.append(f"| {rows} | {r['domain']} | {r['c']:g} | {100 * r['validation_accuracy']:.1f} | "
                         f"{100 * r['test_accuracy']:.1f} | {grid} |")
    one = []
    for rows in ROWS:
        rs = [r for r in probe if r["rows"] == rows]
        if not rs:
            continue
        cs = [g["c"] for g in rs[0]["probe_grid"]]
        val = {c: np.mean([next(g["validation_accuracy"] for g in r["probe_grid"] if g["c"] == c) for r in rs]) for c in cs}
        c = max(cs, key=lambda c: val[c])
        test = np.mean([next(g["test_accuracy"] for g in r["probe_grid"] if g["c"] == c) for r in rs])
        per = np.mean([r["test_accuracy"] for r in rs])
        one.append(f"{rows} rows: one C = {c:g} for all domains → mean test {100 * test:.1f} (per-domain C: {100 * per:.1f})")
    return lines + ["", "C is picked per domain on its validation rows (the trained methods pick one rate over all "
                    "domains); with the trained methods' rule instead — " + "; ".join(one) + ".",
                    "Features: mean of the last hidden state over the real tokens (max length 48), standardised; "
                    "scikit-learn LogisticRegression (L-BFGS, L2), up to 5000 iterations; every fit listed converged "
                    "unless marked. The trained head-only row reads BERT's pooler output ([CLS] → dense → tanh), a "
                    "different feature than the probe's mean pool."]


def markdown(result: dict, runs: list, all_runs: list | None = None) -> str:
    all_runs = runs if all_runs is None else all_runs
    picks = result["picks"]
    md = [*header(result, len(runs)), "## Learning-rate sweep (issue 12: the same rule for every method)\n",
          *sweep_lines(all_runs, picks), "\n## What changed against the table before the sweep (test accuracy, %)\n",
          *old_new_lines(all_runs, picks), "\n## Verdicts\n", *verdict_lines(result["verdicts"]),
          "\n## Accuracy by training-set size (mean over the four domains)\n", *size_table(runs),
          "\n## Main grid (all training rows)\n", *accuracy_table(runs, "all")]
    for rows in ("256", "64"):
        md += [f"\n## Low data: {rows} training rows\n", *accuracy_table(runs, rows)]
    md += ["\n## Where it breaks: EigenLoRAx (mean dropped) − LoRA, points, by held-out domain\n", *breaks_table(runs),
           "\n## Cost per method (main grid)\n", *cost_table(runs),
           "\n## Head-only as logistic regression on frozen features (probe)\n", *probe_lines(all_runs),
           "\n## Ablations (amazon, 256 rows, eigen-drop, legacy rate 2e-2)\n", *ablation_lines(runs),
           "\n## What remains\n", *remaining_lines(all_runs, picks)]
    return "\n".join(md) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=Path, default=HERE / "runs")
    args = ap.parse_args(argv)
    from edge_lorax.bench import measure

    all_runs = load_runs(args.runs)
    picks = pick_lrs(all_runs)
    runs = at_picks(all_runs, picks)
    result = {"stamp": stamp(all_runs), "runs": len(runs), "picks": picks,
              "sweep": {m: {f"{lr:g}": v for lr, v in by.items()} for m, by in sweep_scores(all_runs).items()},
              "verdicts": verdicts(runs)}
    md = markdown(result, runs, all_runs)
    stem = args.runs.parent / args.runs.name.replace("runs", "report")  # runs/ -> report.*, runs_quick/ -> report_quick.*
    stem.with_suffix(".json").write_text(measure.portable(json.dumps(result, indent=1) + "\n"))  # no local paths
    stem.with_suffix(".md").write_text(measure.portable(md))
    print(md)


if __name__ == "__main__":
    sys.exit(main())
