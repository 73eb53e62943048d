"""Turn `runs/*.json` of the decoder leave-one-task-out (loo.py) into `report.json` + `report.md`.

Tables: the learning-rate sweep (validation) and the picks; test exact match and label-ranking accuracy per held-out
task and method at the picked rates (mean ± sample std over the seeds present); 256 and 64 training rows; paired
differences (EigenLoRAx − LoRA, EigenLoRAx − random) per task; parameters and bytes per user; what the runs cost.
A cell with fewer seeds than planned says so (n=); missing runs are listed. Does not train anything.

    .venv/bin/python benchmarks/decoder/report.py
"""

import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
sys.path.insert(0, str(HERE))

from common import ADAPTERS, SOURCE_TASKS, TEST_ROWS, TRAIN_ROWS, VAL_ROWS, folder_name  # noqa: E402
from loo import HELD_OUT, LR_GRID, STEPS, picks, plan  # noqa: E402

from edge_lorax.bench import measure  # noqa: E402

ORDER = ("zero-shot", "probe", "projection", "random", "eigen-drop", "eigen-keep", "lora")


def load(folder: Path) -> list:
    """The leave-one-task-out runs (every other source in the subspace); issue 30's fewer-source runs
    (`sources` > 0) belong to benchmarks/subspace_count's report."""
    runs = [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
    return [r for r in runs if not r.get("sources")]


def shown(runs, chosen: dict) -> list:
    """Runs at the picked rate (untrained methods have none); eigen-drop trains at eigen-keep's pick."""
    rate = {**chosen, "eigen-drop": chosen.get("eigen-keep")}
    return [r for r in runs if r["lr"] is None or r["lr"] == rate.get(r["method"])]


def score(r: dict, metric: str) -> float | None:
    """Test accuracy (exact match) or rank accuracy in %; the probe has only a classifier's accuracy."""
    if r["method"] == "probe":
        return 100 * r["probe"]["test_accuracy"] if metric == "accuracy" else None
    return 100 * r["test"][metric]


def cell(values) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{np.mean(values):.1f} ± {np.std(values, ddof=1):.1f} (n={len(values)})"


def main_table(runs, rows: str, metric: str) -> list:
    by = defaultdict(list)
    for r in runs:
        if r["rows"] == rows:
            by[(r["method"], r["task"])].append(score(r, metric))
    methods = [m for m in ORDER if any((m, t) in by for t in HELD_OUT)]
    out = ["| method | " + " | ".join(folder_name(t) for t in HELD_OUT) + " | mean over tasks |",
           "|---|" + "---|" * (len(HELD_OUT) + 1)]
    for m in methods:
        per_task = [[v for v in by.get((m, t), []) if v is not None] for t in HELD_OUT]
        mean = f"{np.mean([np.mean(v) for v in per_task]):.1f}" if all(per_task) else "–"
        out.append(f"| {m} | " + " | ".join(cell(v) for v in per_task) + f" | {mean} |")
    return out


def sweep_table(runs, chosen: dict) -> list:
    width = max(len(g) for g in LR_GRID.values())
    out = ["| method | " + " | ".join(f"lr {i + 1}" for i in range(width)) + " | pick |", "|---|" + "---|" * (width + 1)]
    for method, grid in LR_GRID.items():
        cells = []
        for lr in grid:
            vals = [r["validation"] for r in runs if r["method"] == method and r["lr"] == lr and r["seed"] == 0
                    and r["rows"] == "all"]
            if len(vals) < len(HELD_OUT):
                cells.append(f"{lr:g}: {len(vals)}/{len(HELD_OUT)} tasks")
                continue
            acc, rank = (100 * np.mean([v[k] for v in vals]) for k in ("accuracy", "rank_accuracy"))
            cells.append(f"{lr:g}: {acc:.1f} / {rank:.1f}")
        cells += ["–"] * (width - len(cells))
        out.append(f"| {method} | " + " | ".join(cells) + f" | {chosen.get(method, 'not yet')} |")
    return out


def differences(runs, a: str, b: str, rows: str = "all", metric: str = "accuracy") -> dict:
    """Task -> list of (a − b) test scores in points over the seeds both have; an untrained method (one run, seed 0)
    pairs with every seed of the other."""
    out = {}
    for t in HELD_OUT:
        sa = {r["seed"]: score(r, metric) for r in runs if r["method"] == a and r["task"] == t and r["rows"] == rows}
        sb = {r["seed"]: score(r, metric) for r in runs if r["method"] == b and r["task"] == t and r["rows"] == rows}
        if b in UNTRAINED and 0 in sb:
            sb = {s: sb[0] for s in sa}
        common = sorted(set(sa) & set(sb))
        if common and all(sa[s] is not None and sb[s] is not None for s in common):
            out[t] = [sa[s] - sb[s] for s in common]
    return out


def paired(runs, a: str, b: str, rows: str = "all") -> list:
    """Per task: mean over common seeds of (a − b), exact match and rank accuracy, then the mean over tasks."""
    exact, rank = differences(runs, a, b, rows), differences(runs, a, b, rows, "rank_accuracy")
    lines = [f"- {folder_name(t)}: exact match {np.mean(d):+.1f} points, rank accuracy "
             f"{np.mean(rank[t]):+.1f} ({len(d)} paired seed(s))" if t in rank else
             f"- {folder_name(t)}: exact match {np.mean(d):+.1f} points ({len(d)} paired seed(s))" for t, d in exact.items()]
    if len(exact) == len(HELD_OUT):
        means = [np.mean(d) for d in exact.values()]
        lines.append(f"- **mean over the {len(means)} tasks: {np.mean(means):+.1f} points exact match; better on "
                     f"{sum(m > 0 for m in means)} of {len(means)} tasks**")
    return lines or ["- (no paired runs yet)"]


UNTRAINED = ("zero-shot", "projection", "probe")


def run_rows(all_runs) -> list:
    """Every trained run made so far, one row each (the sweep's runs before its picks exist)."""
    out = ["| task | method | rows | seed | lr | validation exact / rank | test exact / rank |", "|---|---|---|---|---|---|---|"]
    for r in sorted((r for r in all_runs if r["steps"]), key=lambda r: (r["task"], r["method"], r["rows"], r["seed"], r["lr"])):
        v, t = r["validation"], r["test"]
        out.append(f"| {folder_name(r['task'])} | {r['method']} | {r['rows']} | {r['seed']} | {r['lr']:g} | "
                   f"{100 * v['accuracy']:.1f} / {100 * v['rank_accuracy']:.1f} | {100 * t['accuracy']:.1f} / "
                   f"{100 * t['rank_accuracy']:.1f} |")
    return out


def size_lines(runs) -> list:
    out = []
    for m in ("eigen-keep", "random", "lora"):
        r = next((r for r in runs if r["method"] == m), None)
        if r:
            out.append(f"- {m}: {r['params']:,} trainable parameters, {r['user_bytes']:,} bytes per user")
    return out


def source_cost() -> str:
    """The wall time of training the twelve source adapters (their training.json), not counting first attempts."""
    walls = [json.loads((ADAPTERS / folder_name(t) / "training.json").read_text())["wall_s"] for t in SOURCE_TASKS]
    return (f"- the {len(walls)} source adapters (sources.py, one thread each): {sum(walls) / 3600:.2f} h of wall time "
            f"({min(walls) / 60:.1f}–{max(walls) / 60:.1f} min each)")


def cost_lines(all_runs) -> list:
    wall = sum(r["wall_s"] for r in all_runs)
    trained = [r for r in all_runs if r["steps"]]
    sps = [r["s_per_step"] for r in trained]
    loads = [r["stamp"]["machine"]["load_average"][0] for r in all_runs]
    line = (f"- {len(all_runs)} runs, {wall / 3600:.2f} h of wall time in all (the sum of run wall times: load, train, "
            f"evaluate); torch threads per run: {sorted({r.get('threads', 0) for r in trained}) or '–'}")
    extra = (f"- s/step of trained runs: median {np.median(sps):.2f}, range {min(sps):.2f}–{max(sps):.2f}; 1-min load "
             f"average at run start: median {np.median(loads):.1f} (2 cores; above 2 other jobs shared them)") if sps else ""
    return [line] + ([extra] if extra else []) + [source_cost()]


def missing(all_runs, chosen) -> list:
    done = {(r["task"], r["method"], r["rows"], r["seed"], r["lr"]) for r in all_runs}
    todo = [r for r in plan(("zero-shot", "probe", "projection", "sweep", "seeds", "drop", "lowdata"), HERE / "runs")
            if (r.task, r.method, r.rows, r.seed, r.lr) not in done]
    stages = defaultdict(int)
    for r in todo:
        stages[r.stage] += 1
    waiting = [s for s in ("seeds", "drop", "lowdata") if not chosen]
    return (["- still to run: " + ", ".join(f"{s} {n}" for s, n in stages.items())] if todo else []) + \
           ([f"- planned once the sweep has picks: {', '.join(waiting)}"] if waiting else [])


def markdown(all_runs) -> str:
    chosen = picks(HERE / "runs")
    runs = shown(all_runs, chosen)
    stamps = [r["stamp"] for r in all_runs]
    commits = sorted({s["git_commit"] for s in stamps})
    first = min(stamps, key=lambda s: s["started"]) if stamps else None
    lines = ["# EigenLoRAx on a decoder: leave-one-task-out on SmolLM2-135M-Instruct", "",
             "- command: `.venv/bin/python benchmarks/decoder/loo.py && .venv/bin/python benchmarks/decoder/report.py`",
             f"- git commit(s) of the runs: {', '.join(f'`{c}`' for c in commits) or '–'}",
             *(measure.stamp_md(first)[2:3] if first else []),
             f"- runs started {first['started'] if first else '–'}, last finished "
             f"{max((s['finished'] for s in stamps), default='–')}", "",
             f"Base: `HuggingFaceTB/SmolLM2-135M-Instruct` (`--model smollm2`). Sources: the twelve committed adapters of "
             f"`adapters-smollm2/` ({', '.join(folder_name(t) for t in SOURCE_TASKS)}). For each held-out task the "
             f"subspace is built from the other eleven (K=8 per module and side, r=8, q_proj and v_proj of 30 layers). "
             f"Every trained method: {STEPS} AdamW steps of batch 8, prompt + answer ≤ 96 tokens, 6 % warm-up and "
             f"linear decay, the first {TRAIN_ROWS} training rows (or 256 / 64), {VAL_ROWS} validation rows for the "
             f"sweep, {TEST_ROWS} test rows. Score: exact match of the greedy answer (the label's own tokens, then EOS) "
             "in %, and the label log-likelihood ranking accuracy; the probe is a logistic regression on the frozen "
             "model's mean-pooled features (C picked on validation).", "",
             "## Learning-rate sweep (seed 0, validation exact match / rank accuracy, mean over the held-out tasks)", "",
             *sweep_table(all_runs, chosen), "",
             "## Test exact match, all training rows (picked rates)", "", *main_table(runs, "all", "accuracy"), "",
             "## Test rank accuracy, all training rows", "", *main_table(runs, "all", "rank_accuracy"), "",
             "## Low data: 256 and 64 training rows (seed 0, exact match)", "", "256 rows:", "",
             *main_table(runs, "256", "accuracy"), "", "64 rows:", "", *main_table(runs, "64", "accuracy"), "",
             "## Paired differences (test exact match, all rows)", "", "EigenLoRAx (mean kept) − LoRA r=8:", "",
             *paired(runs, "eigen-keep", "lora"), "", "EigenLoRAx (mean kept) − random subspace:", "",
             *paired(runs, "eigen-keep", "random"), "", "EigenLoRAx (mean kept) − zero-shot base:", "",
             *paired(runs, "eigen-keep", "zero-shot"), "", "LoRA r=8 − zero-shot base:", "",
             *paired(runs, "lora", "zero-shot"), "", "EigenLoRAx (mean kept) − the probe (exact match vs its accuracy):",
             "", *paired(runs, "eigen-keep", "probe"), "", "Mean dropped − mean kept (EigenLoRAx, seed 0):", "",
             *paired(runs, "eigen-drop", "eigen-keep"), "", "EigenLoRAx (mean kept) − LoRA r=8, 256 training rows:", "",
             *paired(runs, "eigen-keep", "lora", "256"), "", "EigenLoRAx (mean kept) − LoRA r=8, 64 training rows:", "",
             *paired(runs, "eigen-keep", "lora", "64"), "", "## Every trained run so far", "", *run_rows(all_runs), "",
             "## Size of one user", "", *size_lines(all_runs), "",
             "## Cost and state", "", *cost_lines(all_runs), *missing(all_runs, chosen), ""]
    return measure.portable("\n".join(lines))


def main():
    all_runs = load(HERE / "runs")
    (HERE / "report.md").write_text(markdown(all_runs))
    (HERE / "report.json").write_text(json.dumps({"picks": picks(HERE / "runs"), "runs": all_runs}, indent=1) + "\n")
    print(f"wrote {HERE / 'report.md'} ({len(all_runs)} runs)", file=sys.stderr)


if __name__ == "__main__":
    main()
