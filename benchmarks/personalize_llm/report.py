"""report.md from benchmarks/personalize_llm/runs/*.json (run.py's cells) and int8_base.json when present.

    .venv/bin/python benchmarks/personalize_llm/report.py
"""

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _cells() -> dict:
    return {p.stem: json.loads(p.read_text()) for p in sorted((HERE / "runs").glob("*.json"))}


def _speed(cells: dict) -> list:
    lines = ["| threads | wall s (process) | fit s (40 steps) | s / step | peak RSS MiB (VmHWM) | held-out loss start -> fit "
             "| exact match start -> fit |",
             "|---|---|---|---|---|---|---|"]
    for t in (1, 2):
        c = cells.get(f"speed-t{t}")
        if c is None or not c.get("report"):
            continue
        r = c["report"]
        lines.append(f"| {t} | {c['seconds']} | {r['fit_seconds']} | {r['fit_seconds'] / max(r['steps'], 1):.2f} | "
                     f"{c['peak_rss_mib']} | {r['start']['loss']:.3f} -> {r['fitted']['loss']:.3f} | "
                     f"{r['start']['exact_match']:.3f} -> {r['fitted']['exact_match']:.3f} |")
    return lines


def _fits(cells: dict) -> list:
    lines = ["| task | rows | seed | base EM % | device EM % | host EM % | device - host | device kept | device s | host s "
             "| device RSS MiB | host RSS MiB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, c in cells.items():
        if not name.endswith("-device"):
            continue
        target, rows, seed = name.split("-")[:3]
        host, base = cells.get(name[:-len("device")] + "host"), cells.get(f"{target}-base")
        em = lambda x: x["test"]["exact_match_pct"] if x and "test" in x else None  # noqa: E731
        d, h = em(c), em(host)
        gap = f"{d - h:+.1f}" if d is not None and h is not None else "-"
        lines.append(f"| {target} | {rows} | {seed[1:]} | {em(base)} | {d} | {h} | {gap} | "
                     f"{(c.get('report') or {}).get('kept')} | {c['seconds']} | {host['seconds'] if host else '-'} | "
                     f"{c['peak_rss_mib']} | {host['peak_rss_mib'] if host else '-'} |")
    return lines


def main():
    cells = _cells()
    commands = sorted({c["command"] for c in cells.values() if "command" in c})
    if not cells:  # the speed / fit cells are run by run.py; none yet
        commands = ["(no run.py cells yet: the SmolLM2 bundle export did not finish in the first session)"]
    md = ["# On-device decoder personalisation (SmolLM2-135M-Instruct) vs host training", "",
          "Written by `benchmarks/personalize_llm/report.py` from `runs/` (run.py's docstring says how each cell is made).",
          "", "## Fit speed and memory (40 steps of batch 8, <= 96 tokens, 256 spam:sms rows)", "", *_speed(cells), "",
          "## On-device fit vs host `train --model smollm2` (same file, 40 steps of batch 8, lr 0.05)", "",
          "Exact match on the first 100 test rows, one evaluator for every user (the bundle's int8 model.onnx).", "",
          *_fits(cells), ""]
    int8 = HERE / "int8_base.json"
    if int8.is_file():
        data = json.loads(int8.read_text())
        md += ["## int8 base weights in the gradient graph (fidelity)", "",
               f"Base weights rounded to int8 (block {data['block']}): {data['weights_rounded_mib']} MiB of fp32 weights "
               f"would take {data['int8_bytes_mib']} MiB. Command: `.venv/bin/python benchmarks/personalize_llm/int8_base.py "
               "BUNDLE/model.grad.onnx SMOLLM2_DIR trec-coarse.npz spam-64.csv -o benchmarks/personalize_llm/int8_base.json "
               "--batches 2` (a SmolLM2 gradient graph of a subspace of the 11 decoder adapters without spam-sms, the "
               "projected trec-coarse user, the first 16 spam:sms train rows; 2-core shared machine).", "",
               "| batch | loss fp32 | loss int8 | gradient cosine | relative error | sign agreement |", "|---|---|---|---|---|---|"]
        md += [f"| {i} | {r['loss_fp32']} | {r['loss_int8']} | {r['grad_cosine']} | {r['grad_rel_error']} | "
               f"{r['sign_agreement']} |" for i, r in enumerate(data["batches"])] + [""]
    md += ["## Commands", "", *[f"- `{c}`" for c in commands], ""]
    (HERE / "report.md").write_text("\n".join(md))


if __name__ == "__main__":
    main()
