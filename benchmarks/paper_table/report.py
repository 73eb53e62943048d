"""Turn `runs/*.json` into `report.json` + `report.md`: mean ± std tables and the claims checked against them.

    .venv/bin/python benchmarks/paper_table/report.py [--runs DIR]
"""

import argparse
import json
import platform
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
METHODS = ("eigen-drop", "eigen-keep", "random", "lora", "vera", "head", "projection-drop", "projection-keep")


def load_runs(folder: Path) -> list:
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]


def cell(values) -> str:
    """`mean ± std` in accuracy points (std over seeds; single runs show the value)."""
    arr = 100 * np.asarray(values, dtype=float)
    return f"{arr.mean():.1f} ± {arr.std():.1f}" if len(arr) > 1 else f"{arr.mean():.1f}"


def group(runs, grid: str, rows: str) -> dict:
    """{(domain, method): [runs]} of one grid and training-set size."""
    out = defaultdict(list)
    for r in runs:
        if r["grid"] in (grid, "main" if r["method"].startswith("projection") else None) and r["rows"] == rows:
            out[(r["domain"], r["method"])].append(r)
    return out


def accuracy_table(runs, grid: str, rows: str) -> list:
    """Markdown rows: method × domain, mean ± std test accuracy, and the mean over domains."""
    groups = group(runs, grid, rows)
    domains = sorted({d for d, _ in groups})
    if not any(r["grid"] == grid for r in runs):
        return [f"_Not run yet: `run.py --grids {grid}` (results resume from runs/)._"]
    lines = [f"| method | {' | '.join(domains)} | mean |", "|---" * (len(domains) + 2) + "|"]
    for m in METHODS:
        cells = [cell([r["test_accuracy"] for r in groups[(d, m)]]) if groups.get((d, m)) else "–" for d in domains]
        means = [np.mean([r["test_accuracy"] for r in groups[(d, m)]]) for d in domains if groups.get((d, m))]
        if means:
            lines.append(f"| {m} | {' | '.join(cells)} | {100 * np.mean(means):.1f} |")
    return lines


def cost_table(runs) -> list:
    """Per method (main grid): trainable params, bytes per user, s/step, peak training MiB, steps to 95%."""
    by = defaultdict(list)
    for r in runs:
        if r["grid"] == "main" and not r["method"].startswith("projection"):
            by[r["method"]].append(r)
    lines = ["| method | adapter params | head params | bytes/user | s/step | peak train MiB | steps to 95% val |",
             "|---|---|---|---|---|---|---|"]
    for m, rs in by.items():
        s95 = [r["steps_to_95"] for r in rs if r.get("steps_to_95") is not None]
        lines.append(f"| {m} | {rs[0]['adapter_params']:,} | {rs[0]['head_params']:,} | {rs[0]['user_bytes']:,} | "
                     f"{np.median([r['s_per_step'] for r in rs]):.3f} | {np.median([r['peak_train_mib'] for r in rs]):.0f} | "
                     f"{np.median(s95) if s95 else '–'} |")
    return lines


def mean_acc(runs, method: str, grid="main", rows="all") -> float | None:
    vals = [r["test_accuracy"] for r in runs if r["method"] == method and r["grid"] == grid and r["rows"] == rows]
    return float(np.mean(vals)) if vals else None


def verdicts(runs) -> dict:
    """The issue's questions, answered from the main grid (None where a number is missing)."""
    acc = {m: mean_acc(runs, m) for m in METHODS}
    params = {r["method"]: r["adapter_params"] for r in runs if r["grid"] == "main"}
    ok = lambda *ms: all(acc.get(m) is not None for m in ms)  # noqa: E731
    best = max(("eigen-drop", "eigen-keep"), key=lambda m: acc[m] or -1)
    return {
        "eigen_within_1pt_of_lora": ok(best, "lora") and acc[best] >= acc["lora"] - 0.01,
        "eigen_params_le_5pct_of_lora": bool(params.get(best, 1e9) <= 0.05 * params.get("lora", 0)),
        "eigen_beats_head_by_2pt": ok(best, "head") and acc[best] >= acc["head"] + 0.02,
        "eigen_beats_random_control": ok(best, "random") and acc[best] > acc["random"],
        "best_mean_setting": best, "accuracy": acc,
    }


def ablation_lines(runs) -> list:
    lines = ["| K | augment | init | test accuracy |", "|---|---|---|---|"]
    keyed = defaultdict(list)
    for r in runs:
        if r["grid"] in ("ablation", "lowdata") and r["method"] == "eigen-drop" and r["rows"] == "256" and r["domain"] == "amazon":
            keyed[(str(r["k"] if r["k"] is not None else "all"), r["augment"], r["init"])].append(r["test_accuracy"])
    for (k, aug, init), vals in sorted(keyed.items()):
        lines.append(f"| {k} | {aug} | {init} | {cell(vals)} |")
    return lines if any(r["grid"] == "ablation" for r in runs) else ["_Not run yet: `run.py --grids ablation`._"]


def command(runs) -> str:
    """The run.py invocation that produced these runs (grids present, seed count), then this script."""
    grids = [g for g in ("main", "lowdata", "ablation") if any(r["grid"] == g for r in runs)]
    seeds = 1 + max((r["seed"] for r in runs), default=0)
    return f"python benchmarks/paper_table/run.py --grids {','.join(grids)} --seeds {seeds} && python benchmarks/paper_table/report.py"


def stamp(runs) -> dict:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE).stdout.strip()
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
    import torch

    return {"commit": commit, "cpu": cpu, "python": platform.python_version(), "torch": torch.__version__,
            "command": command(runs), "seeds_per_cell": 1 + max((r["seed"] for r in runs), default=0),
            "steps": runs[0]["config"]["steps"] if runs else None}


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=Path, default=HERE / "runs")
    args = ap.parse_args(argv)
    runs = load_runs(args.runs)
    result = {"stamp": stamp(runs), "runs": len(runs), "verdicts": verdicts(runs)}
    md = [f"# EigenLoRAx vs baselines, leave-one-domain-out (VADER, all-MiniLM-L6-v2)\n",
          f"Commit `{result['stamp']['commit']}`, {result['stamp']['cpu']}, torch {result['stamp']['torch']}. "
          f"Command: `{result['stamp']['command']}`. {len(runs)} runs; {result['stamp']['seeds_per_cell']} seed(s) per "
          f"cell (± std only where more than one); {result['stamp']['steps']} steps of batch 16, max length 48 for every "
          "trained method. Test accuracy in %, binary task of the held-out domain.\n", "## Main grid (all training rows)\n",
          *accuracy_table(runs, "main", "all")]
    for rows in ("256", "64"):
        md += [f"\n## Low data: {rows} training rows\n", *accuracy_table(runs, "lowdata", rows)]
    md += ["\n## Cost per method (main grid)\n", *cost_table(runs), "\n## Ablations (amazon, 256 rows, eigen-drop)\n",
           *ablation_lines(runs), "\n## Verdicts\n", "```json", json.dumps(result["verdicts"], indent=1), "```"]
    stem = args.runs.parent / args.runs.name.replace("runs", "report")  # runs/ -> report.*, runs_quick/ -> report_quick.*
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    stem.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    sys.exit(main())
