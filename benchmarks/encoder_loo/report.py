"""Turn `runs/*.json` of the cross-task leave-one-out into `report.json` + `report.md`. Trains nothing.

Per target: test accuracy and macro-F1 (mean ± sample std over seeds) of each method, the majority-class share of
the test split, the relative ΔW error of projecting the target's own source adapter onto the subspace, and
EigenLoRAx's paired differences (same target and seed) against LoRA, the random control and head-only. For the
sentiment targets, the paper table's EigenLoRAx (mean kept) with the nine-sentiment-adapter subspace at the same
rate and seeds is set beside it: what adding spam and TREC to the sources did.

    .venv/bin/python benchmarks/encoder_loo/report.py [--runs DIR]
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
METHODS = ("eigen-keep", "lora", "random", "head", "probe", "projection-keep")
TARGETS = {"spam": "spam:sms", "trec": "trec:coarse", "tweets": "vader:tweets-binary", "amazon": "vader:amazon-binary"}
DIRECTION = {"spam": "sentiment → spam", "trec": "sentiment → TREC", "tweets": "other sentiment + spam + TREC → tweets",
             "amazon": "other sentiment + spam + TREC → amazon"}
COMMAND = ".venv/bin/python benchmarks/encoder_loo/run.py --seeds {seeds} && .venv/bin/python benchmarks/encoder_loo/report.py"


def load_runs(folder: Path) -> list:
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]


def cell(values, scale=100.0) -> str:
    arr = scale * np.asarray(values, dtype=float)
    if not len(arr):
        return "–"
    return f"{arr.mean():.1f} ± {arr.std(ddof=1):.1f}" if len(arr) > 1 else f"{arr.mean():.1f}"


def majority(spec: str) -> float:
    """The majority class's share of the test split (what predicting one class scores)."""
    from edge_lorax.builder.data import load_task

    test = load_task(spec, seed=0).test
    return float(np.bincount(test.targets).max() / len(test))


def paired(runs, target: str, a: str, b: str) -> dict:
    """a − b in test-accuracy points over seeds present for both (None when no pair)."""
    acc = defaultdict(dict)
    for r in runs:
        if r["target"] == target:
            acc[r["method"]][r["seed"]] = r["test_accuracy"]
    seeds = sorted(acc[a].keys() & acc[b].keys())
    d = [100 * (acc[a][s] - acc[b][s]) for s in seeds]
    return {"n": len(d), "mean_diff": round(float(np.mean(d)), 2) if d else None,
            "min": round(float(np.min(d)), 2) if d else None, "max": round(float(np.max(d)), 2) if d else None}


def paper_eigen_keep(domain: str, lr: float) -> dict:
    """The paper table's eigen-keep runs (nine-sentiment-adapter subspace) on this domain at this rate: {seed: acc}."""
    out = {}
    for p in sorted((ROOT / "benchmarks" / "paper_table" / "runs").glob(f"main_{domain}_eigen-keep_nall_k8_a0_zero_b_s*.json")):
        r = json.loads(p.read_text())
        if r["config"]["lr"] == lr:
            out[r["seed"]] = r["test_accuracy"]
    return out


def table(runs, majorities: dict) -> list:
    targets = [t for t in TARGETS if any(r["target"] == t for r in runs)]
    lines = ["| target (direction) | majority class | " + " | ".join(METHODS) + " |", "|---" * (len(METHODS) + 2) + "|"]
    for t in targets:
        cells = []
        for m in METHODS:
            rs = [r for r in runs if r["target"] == t and r["method"] == m]
            cells.append(cell([r["test_accuracy"] for r in rs]) + (f" (n={len(rs)})" if len(rs) not in (0, 1, 3) else ""))
        lines.append(f"| {t} ({DIRECTION[t]}) | {100 * majorities[t]:.1f} | " + " | ".join(cells) + " |")
    lines += ["", "Macro-F1 (%), same runs:", "", "| target | " + " | ".join(METHODS) + " |", "|---" * (len(METHODS) + 1) + "|"]
    for t in targets:
        cells = [cell([r["test_macro_f1"] for r in runs if r["target"] == t and r["method"] == m]) for m in METHODS]
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    return lines


def verdict_lines(runs, result: dict) -> list:
    lines = ["| target | EigenLoRAx − LoRA | EigenLoRAx − random | EigenLoRAx − head-only | EigenLoRAx − probe | "
             "relative ΔW error of its own adapter's projection |", "|---|---|---|---|---|---|"]
    fmt = lambda c: "–" if c["mean_diff"] is None else f"{c['mean_diff']:+.1f} ({c['min']:+.1f} … {c['max']:+.1f}, n={c['n']})"  # noqa: E731
    for t, v in result["paired"].items():
        err = next((r["relative_error"] for r in runs if r["target"] == t and r["method"] == "projection-keep"), None)
        lines.append(f"| {t} | {fmt(v['lora'])} | {fmt(v['random'])} | {fmt(v['head'])} | {fmt(v['probe'])} | "
                     + ("–" if err is None else f"{100 * err:.0f} %") + " |")
    lines += ["", "Points of test accuracy, mean over seeds (range over seeds; the probe has one fit, compared with "
              "each seed).", "", "Read per target (rules applied to the numbers above: recycled directions help when "
              "EigenLoRAx beats the random control in every seed; 'matches LoRA' within 1 point). The probe is fitted "
              "to convergence on every training row; the trained methods see 80 × 16 = 1,280 examples:", ""]
    lines += [f"- {t}: {reading(v)}" for t, v in result["paired"].items()]
    extra = result["sources_with_spam_trec"]
    if extra:
        lines += ["", "Sentiment targets, EigenLoRAx (mean kept) with the paper table's nine-sentiment-adapter subspace "
                  "vs the eleven-adapter one (+ spam, + TREC), same rate and seeds:", ""]
        lines += [f"- {t}: {cell(list(v['nine'].values()))} (nine) vs {cell(list(v['eleven'].values()))} (eleven); "
                  f"paired difference {v['mean_diff']:+.1f} points over {v['n']} seed(s)" if v["n"] else
                  f"- {t}: the paper table has no eigen-keep runs at this rate yet" for t, v in extra.items()]
    return lines


def reading(v: dict) -> str:
    """One sentence from the paired differences of one target."""
    rnd, lora, probe = v["random"], v["lora"], v["probe"]
    if rnd["mean_diff"] is None:
        return "no trained runs yet."
    if rnd["min"] > 0:
        parts = [f"the recycled directions help: {rnd['mean_diff']:+.1f} points over random ones"]
    elif rnd["mean_diff"] <= 0:
        parts = [f"the recycled directions do not help: {rnd['mean_diff']:+.1f} points against random ones"]
    else:
        parts = [f"mixed against random directions ({rnd['mean_diff']:+.1f}, {rnd['min']:+.1f} … {rnd['max']:+.1f})"]
    if lora["mean_diff"] is not None:
        d = lora["mean_diff"]
        parts.append("matches LoRA (within 1 point)" if abs(d) <= 1 else f"{abs(d):.1f} points {'above' if d > 0 else 'below'} LoRA")
    if probe["mean_diff"] is not None:
        parts.append(f"{probe['mean_diff']:+.1f} against the frozen-feature probe")
    return "; ".join(parts) + "."


def analyse(runs) -> dict:
    targets = [t for t in TARGETS if any(r["target"] == t for r in runs)]
    result = {"paired": {t: {b: paired(runs, t, "eigen-keep", b) for b in ("lora", "random", "head")} for t in targets},
              "sources_with_spam_trec": {}}
    for t in targets:
        probe = [r for r in runs if r["target"] == t and r["method"] == "probe"]
        eig = [r for r in runs if r["target"] == t and r["method"] == "eigen-keep"]
        d = [100 * (r["test_accuracy"] - probe[0]["test_accuracy"]) for r in eig] if probe else []
        result["paired"][t]["probe"] = {"n": len(d), "mean_diff": round(float(np.mean(d)), 2) if d else None,
                                        "min": round(float(np.min(d)), 2) if d else None,
                                        "max": round(float(np.max(d)), 2) if d else None}
        if t in ("tweets", "amazon") and eig:
            nine = paper_eigen_keep(t, eig[0]["lr"])
            eleven = {r["seed"]: r["test_accuracy"] for r in eig}
            common = sorted(nine.keys() & eleven.keys())
            diffs = [100 * (eleven[s] - nine[s]) for s in common]
            result["sources_with_spam_trec"][t] = {"nine": {s: nine[s] for s in common}, "eleven": {s: eleven[s] for s in common},
                                                   "n": len(common), "mean_diff": round(float(np.mean(diffs)), 2) if diffs else None}
    return result


def remaining(runs, seeds: int = 3) -> str:
    """Trained runs of the 3-seed plan not in runs/ yet, and the command that adds them."""
    have = {(r["target"], r["method"], r["seed"]) for r in runs}
    missing = [(t, m, s) for s in range(seeds) for t in TARGETS for m in METHODS[:4] if (t, m, s) not in have]
    if not missing:
        return "Nothing: every target has three seeds of every trained method."
    by_seed = sorted({s for _, _, s in missing})
    return (f"{len(missing)} trained runs (seed(s) {', '.join(map(str, by_seed))}) were not run for lack of CPU time; "
            "continue with `.venv/bin/python benchmarks/encoder_loo/run.py --seeds 3 && "
            ".venv/bin/python benchmarks/encoder_loo/report.py` (resumes from runs/).")


def markdown(runs, result: dict, stamp: dict) -> str:
    from edge_lorax.bench import measure

    lrs = {r["method"]: r["lr"] for r in runs if r.get("lr")}
    seeds = 1 + max((r["seed"] for r in runs), default=0)
    md = ["# Leave-one-out across task types (all-MiniLM-L6-v2): sentiment → spam / TREC and back\n",
          *measure.stamp_md(stamp), "",
          "The stamp is the rendering's (machine, commit); the command is the one that made the runs. "
          f"{len(runs)} runs, up to {seeds} seeds for trained methods (mean ± sample std over seeds; n= marks cells with "
          "fewer). Each target's subspace is built without the target's own adapter (K=8, mean kept, r=8 on "
          "query/value): spam and TREC from the twelve VADER sentiment adapters; tweets and amazon from the other "
          "three domains' nine VADER adapters plus `spam-sms` and `trec-coarse` (adapters/README.md). Every trained "
          "method: 80 steps of batch 16, max length 48, all training rows, the first 128 validation rows, at the "
          "learning rate picked by the paper table's validation sweep (benchmarks/paper_table/report.md; not swept "
          "again here): " + ", ".join(f"{m} {lr:g}" for m, lr in sorted(lrs.items())) + ". random: random "
          "orthonormal components of the same shapes (the paper table's control). probe: logistic regression on the "
          "frozen mean-pooled features, C picked on the validation rows. projection-keep: the target's own source "
          "adapter (150 steps, its own head) projected onto the subspace, no training.\n",
          f"Cost: {stamp['cpu_minutes']} CPU-min ({stamp['wall_minutes']} min wall, one torch thread per run, on the "
          "shared 2-core machine).\n",
          "Data: UCI SMS Spam Collection (Almeida & Hidalgo 2011, CC BY 4.0; data/spam/), TREC-6 (Li & Roth 2002, "
          "derived into the cache at run time), VADER (Hutto & Gilbert 2014, MIT; data/vader/).\n",
          "## Test accuracy (%)\n", *table(runs, result["majority"]),
          "\n## EigenLoRAx (mean kept) against the others, by target\n", *verdict_lines(runs, result),
          "\n## What remains\n", remaining(runs)]
    return "\n".join(md) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=Path, default=HERE / "runs")
    args = ap.parse_args(argv)
    from edge_lorax.bench import measure

    runs = load_runs(args.runs)
    seeds = 1 + max((r["seed"] for r in runs), default=0)
    packages = ("torch", "transformers", "peft", "numpy", "scikit-learn", "edge-lorax")
    stamp = {**measure.finish(measure.stamp(COMMAND.format(seeds=seeds), packages)),
             "cpu_minutes": round(sum(r["cpu_s"] for r in runs) / 60, 1),
             "wall_minutes": round(sum(r["wall_s"] for r in runs) / 60, 1)}
    result = {**analyse(runs), "majority": {t: majority(TARGETS[t]) for t in TARGETS if any(r["target"] == t for r in runs)}}
    md = markdown(runs, result, stamp)
    stem = args.runs.parent / args.runs.name.replace("runs", "report")
    stem.with_suffix(".json").write_text(measure.portable(json.dumps({"stamp": stamp, **result}, indent=1) + "\n"))
    stem.with_suffix(".md").write_text(measure.portable(md))
    print(md)


if __name__ == "__main__":
    sys.exit(main())
