"""Turn benchmarks/llm/runs/results.json (run.py) into report.json, report.md and report.png.

Medians over the rounds per (build, threads); ratios of ours to onnxruntime-genai's plain and multi-LoRA builds at the
same precision, taken from the same run, against issue 13's targets; switch costs, resident users, bytes per user;
greedy token agreement (ours vs torch with the same user; each quantized build vs its own fp32 build).
Does not measure anything.

    .venv/bin/python benchmarks/llm/report.py [--quick]
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from edge_lorax.bench import measure  # noqa: E402
from edge_lorax.bench.llm_report import agreement, median, median_dict  # noqa: E402  (the product's decoder report)

TARGETS = {"decode_vs_lora": 0.9, "decode_vs_plain": 0.85, "ttft_vs_plain": 1.15, "resident_vs_lora": 1 / 20}


def tables(res: dict) -> dict:
    runs, builds = res["runs"], sorted({k.rsplit("_t", 1)[0] for k in res["runs"]})
    threads = sorted({int(k.rsplit("_t", 1)[1]) for k in runs})
    lengths = sorted({n for r in runs.values() for n in r[0]["ttft_ms"]}, key=int)
    row = {}
    for b in builds:
        for t in threads:
            rs = runs.get(f"{b}_t{t}", [])
            row[(b, t)] = {"ttft_ms": {n: median(rs, "ttft_ms", n) for n in lengths},
                           "decode": median(rs, "decode_tokens_per_s"), "hwm": median(rs, "memory_mib", "VmHWM"),
                           "anon": median(rs, "memory_mib", "RssAnon"), "file": median(rs, "memory_mib", "RssFile")}
    return {"builds": builds, "threads": threads, "lengths": lengths, "row": row}


def ratio_lines(tab: dict) -> list:
    out = []
    for p in ("fp32", "int8", "int4"):
        for t in tab["threads"]:
            ours, plain, lora = (tab["row"].get((f"{k}-{p}", t)) for k in ("ours", "plain", "lora"))
            if not ours or not plain or not lora or not ours["decode"]:
                continue
            dl, dp = ours["decode"] / lora["decode"], ours["decode"] / plain["decode"]
            tt = {n: ours["ttft_ms"][n] / plain["ttft_ms"][n] for n in tab["lengths"]}
            ok = lambda v, target, up=True: "meets" if (v >= target if up else v <= target) else "misses"  # noqa: E731
            out.append(f"- {p}, {t} thread(s): decode ours/lora ×{dl:.3f} ({ok(dl, TARGETS['decode_vs_lora'])} ≥ "
                       f"{TARGETS['decode_vs_lora']}), ours/plain ×{dp:.3f} ({ok(dp, TARGETS['decode_vs_plain'])} ≥ "
                       f"{TARGETS['decode_vs_plain']}); time to first token ours/plain " +
                       ", ".join(f"{n}: ×{v:.3f}" for n, v in tt.items()) +
                       f" ({ok(max(tt.values()), TARGETS['ttft_vs_plain'], False)} ≤ {TARGETS['ttft_vs_plain']})")
    return out or ["- (no complete precision yet)"]


def markdown(res: dict) -> str:
    tab = tables(res)
    model = res["stamp"].get("model", "HuggingFaceTB/SmolLM2-135M-Instruct").rsplit("/", 1)[-1]
    lines = [f"# Decoder bundle vs onnxruntime-genai ({model}, CPU)", "", *measure.stamp_md(res["stamp"]),
             f"- quick smoke run: {res['quick']}", "",
             "## Time to first token (ms, median) and decode (tokens/s, median)", "",
             "| build | threads | " + " | ".join(f"TTFT {n}" for n in tab["lengths"]) + " | decode tok/s | VmHWM MiB | "
             "RssAnon | RssFile |", "|---|---|" + "---|" * (len(tab["lengths"]) + 4)]
    for (b, t), r in sorted(tab["row"].items()):
        lines.append(f"| {b} | {t} | " + " | ".join(f"{r['ttft_ms'][n]:.1f}" for n in tab["lengths"]) +
                     f" | {r['decode']:.1f} | {r['hwm']:.0f} | {r['anon']:.0f} | {r['file']:.0f} |")
    torch_row = res["torch"]
    lines += ["", "Torch eager (HF, KV cache, 1 thread, ours' user injected): TTFT " +
              ", ".join(f"{n}: {v:.1f} ms" for n, v in torch_row["ttft_ms"].items()) +
              f"; generate incl. prefill {torch_row['decode_tokens_per_s_incl_prefill']} tokens/s", "",
              "## Ratios in this run (targets of issue 13)", "", *ratio_lines(tab), "", "## Switching a user (µs, median)", ""]
    for b in tab["builds"]:
        sw = median_dict(res["runs"].get(f"{b}_t1", []), "switch")
        if sw:
            lines.append(f"- {b}: " + ", ".join(f"{k} {v:.1f}" for k, v in sw.items()))
    lines += ["", "## Resident users", ""]
    for b in tab["builds"]:
        rs = [r["resident"] for r in res["runs"].get(f"{b}_t1", []) if "resident" in r]
        if rs:
            lines.append(f"- {b}: {rs[0]['users']} users, +{np.median([r['rss_mib'] for r in rs]):.1f} MiB RSS "
                         f"(anon +{np.median([r['anon_mib'] for r in rs]):.1f}); {rs[0]['bytes_per_user_file']:,} bytes "
                         "per .onnx_adapter")
    lines += ["", "## Greedy token agreement (4 chat prompts x 32 tokens)", ""]
    greedy = {b: res["runs"][f"{b}_t1"][0].get("greedy") for b in tab["builds"] if f"{b}_t1" in res["runs"]}
    for b, g in greedy.items():
        kind = b.split("-")[0]
        ref = res["torch"]["greedy"] if kind == "ours" else greedy.get(f"{kind}-fp32")
        if ref is not None and (kind == "ours" or b != f"{kind}-fp32"):
            lines.append(f"- {b} vs {'torch (same user)' if kind == 'ours' else kind + '-fp32'}: {agreement(g, ref)} %")
    par = res.get("parity")
    if par:
        lines += ["", f"## fp32 logits parity (prefill, {par['prompts']} chat prompts, {par['positions']} positions, "
                  "the bundle's user)", "",
                  f"- max |Δ| ours-fp32 (onnxruntime) vs torch fp32: {par['max_abs_diff_vs_torch_fp32']:.2e}; vs torch "
                  f"fp64: {par['max_abs_diff_vs_torch_fp64']:.2e}; torch fp32 vs fp64: {par['torch_fp32_vs_fp64']:.2e} "
                  f"(max |logit| {par['max_abs_logit']:.1f}; issue 13's bound 1e-4)"]
    lines += [*accuracy_lines(res), *export_lines(res), ""]
    return measure.portable("\n".join(lines))


def accuracy_lines(res: dict) -> list:
    """Exact match per task and build (ours, through the runtime) beside torch with the same user."""
    acc = res.get("accuracy")
    if not acc:
        return []
    tasks = list(acc["torch"])
    lines = ["", f"## Task accuracy (exact match %, first {acc['torch'][tasks[0]]['rows']} test rows, greedy chat answer)",
             "", "| build | " + " | ".join(tasks) + " |", "|---|" + "---|" * len(tasks)]
    for name in sorted(acc, key=lambda n: (n != "torch", n)):
        cells = []
        for t in tasks:
            got, ref = acc[name][t], acc["torch"][t]
            same = sum(a == b for a, b in zip(got["answers"], ref["answers"]))
            cells.append(f"{got['exact_match']:.1f}" + ("" if name == "torch" else
                                                         f" (Δ {got['exact_match'] - ref['exact_match']:+.1f}; "
                                                         f"{same}/{len(ref['answers'])} answers as torch)"))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Majority class: " + ", ".join(f"{t} {acc['torch'][t]['majority']:.1f} %" for t in tasks) +
                 f". {tasks[0]} is served by its held-out adapter projected (the bundles' default user); "
                 f"{', '.join(tasks[1:])} by a source adapter projected onto the subspace it is part of.")
    return lines


def export_lines(res: dict) -> list:
    """Build wall time and size per build; ours' export verification (manifest) per precision."""
    lines = ["", "## Builds: wall time (s) and size (bytes; ours without the gradient graph, which serving does not load)", ""]
    for name, size in sorted(res["sizes"].items()):
        secs = res.get("build_s", {}).get(name)
        lines.append(f"- {name}: {'' if secs is None else f'{secs:.1f} s, '}{size:,} bytes")
    for name, ver in sorted(res.get("verification", {}).items()):
        for v in (ver or {}).values():
            floor = f" + torch float32's own {max(v['fp32_floor']):.2g}, vs float64 torch" if "fp32_floor" in v else ""
            diff = f"max |Δ logits| {v['max_abs_diff']:.2e} (tolerance {v['tolerance']:g} × scale {v['scale']:.1f}{floor}), " \
                if v.get("tolerance") is not None else f"max |Δ logits| {v['max_abs_diff']:.3g} (no tolerance), "
            lines.append(f"- {name} export check vs torch ({v['prompts']} prompts, {v['coefficient_sets']} coefficient "
                         f"sets): {diff}next-token agreement {v['next_token_agreement_pct']} %, response "
                         f"{v['response']:.3f} (min {v['response_min']})")
    return lines


def plot(res: dict, path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tab = tables(res)
    builds = tab["builds"]
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.bar(builds, [tab["row"][(b, 1)]["decode"] or 0 for b in builds])
    ax.set_ylabel("decode tokens/s (1 thread)")
    ax.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--runs", default="runs", help="the run folder under benchmarks/llm (e.g. runs-algo_config_k_quant_mixed)")
    args = ap.parse_args(argv)
    folder = HERE / ("runs_quick" if args.quick else args.runs)
    res = json.loads((folder / "results.json").read_text())
    (folder / "report.md").write_text(markdown(res))
    plot(res, folder / "report.png")
    print(f"wrote {folder / 'report.md'}", file=sys.stderr)


if __name__ == "__main__":
    main()
