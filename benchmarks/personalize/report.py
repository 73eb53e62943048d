"""Report of benchmarks/personalize/run.py: runs/*.json -> report.md + results.json (issue 14's targets).

    .venv/bin/python benchmarks/personalize/report.py
"""

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from edge_lorax.bench.measure import stamp_md  # noqa: E402

KINDS = ("start", "head", "refine", "device", "host", "int8", "refine_int8")
STAGES = ("start", "mix", "refine", "exact")


def _load() -> dict:
    cells = {}
    for path in sorted((HERE / "runs").glob("*.json")):
        r = json.loads(path.read_text())
        cells[(r["target"], r["rows"], r["seed"], r["kind"])] = r
    return cells


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return round(sum(xs) / len(xs), 1) if xs else None


def _fmt(x, digits=1):
    return "–" if x is None else f"{x:.{digits}f}"


def _rows(cells: dict) -> list:
    keys = sorted({(t, n) for t, n, _, _ in cells}, key=lambda k: (k[1], k[0]))
    out = []
    for target, rows in keys:
        seeds = sorted({s for t, n, s, _ in cells if (t, n) == (target, rows)})
        acc = {k: _mean([cells.get((target, rows, s, k), {}).get("test_accuracy") for s in seeds]) for k in KINDS}
        dev = [cells.get((target, rows, s, "device")) for s in seeds]
        dev = [d for d in dev if d]
        host = [cells.get((target, rows, s, "host")) for s in seeds]
        host = [h for h in host if h]
        inf = cells.get((target, 256, 0, "inference"))
        out.append({"target": target, "rows": rows, "seeds": seeds, **{f"acc_{k}": v for k, v in acc.items()},
                    "device_s": _mean([d["seconds"] for d in dev]), "device_rss": _mean([d["peak_rss_mib"] for d in dev]),
                    "device_steps": _mean([d["report"]["steps"] for d in dev if d.get("report")]),
                    "host_s": _mean([h["seconds"] for h in host]), "host_rss": _mean([h["peak_rss_mib"] for h in host]),
                    "inference_rss": inf["peak_rss_mib"] if inf else None,
                    "chosen": [d["report"]["chosen"] for d in dev if d.get("report")]})
    return out


def _summary(rows: list) -> list:
    lines = []
    for n in sorted({r["rows"] for r in rows}):
        sel = [r for r in rows if r["rows"] == n and r["acc_device"] is not None]
        if not sel:
            old = _mean([r["acc_refine"] - r["acc_host"] for r in rows if r["rows"] == n and r["acc_refine"] is not None
                         and r["acc_host"] is not None])
            lines.append(f"- {n} examples: no default (exact) fits in this report; forward-only refine − host {_fmt(old)}")
            continue
        gap = _mean([r["acc_device"] - r["acc_host"] for r in sel if r["acc_host"] is not None])
        lift = _mean([r["acc_device"] - r["acc_head"] for r in sel if r["acc_head"] is not None])
        old = _mean([r["acc_refine"] - r["acc_host"] for r in sel if r["acc_host"] is not None and r["acc_refine"]])
        lines.append(f"- {n} examples, mean over {len(sel)} targets: on-device − host {_fmt(gap)} points "
                     f"(forward-only refine: {_fmt(old)}) "
                     f"(target at 256: ≥ −2), on-device − head-only {_fmt(lift)} (target ≥ +5); slowest on-device "
                     f"fit {_fmt(max((r['device_s'] or 0) for r in sel))} s (target ≤ 60 s, 1 thread, max length 48)")
    ratio = [r["device_rss"] / r["inference_rss"] for r in rows if r["device_rss"] and r["inference_rss"]]
    if ratio:
        lines.append(f"- peak RSS on-device fit / plain inference of the same bundle: up to ×{max(ratio):.2f} (target ≤ 1.5)")
    return lines


def _trace(cells: dict) -> list:
    """Mean held-out accuracy (%) and time at each checkpoint of the device fits, per local-set size: what each
    stage adds, and when."""
    lines = []
    for kind in ("device", "int8", "refine", "refine_int8"):
        for n in sorted({c["rows"] for c in cells.values()}):
            fits = [c["report"] for c in cells.values() if c["kind"] == kind and c["rows"] == n and c.get("report")]
            if not fits:
                continue
            parts = []
            for stage in STAGES:
                points = [p for f in fits for p in f["checkpoints"] if p["stage"] == stage]
                if points:
                    parts.append(f"{stage} {_mean([100 * p['heldout_score'] for p in points])} % at "
                                 f"{_mean([p['seconds'] for p in points])} s")
            chosen = [f["chosen"] for f in fits]
            lines.append(f"- {kind}, {n} examples ({len(fits)} fits): " + ", ".join(parts) + "; written: "
                         + ", ".join(f"{s} ×{chosen.count(s)}" for s in STAGES if s in chosen))
    return lines


def main():
    cells = _load()
    rows = _rows(cells)
    stamps = [json.loads(line) for line in (HERE / "stamps.jsonl").read_text().splitlines() if line.strip()]
    md = ["# On-device personalisation vs host training (MiniLM, CPU, 1 thread)", ""]
    for st in stamps:
        md += stamp_md(st) + [""]
    md += ["Test accuracy (%) on the first 300 test rows through the runtime (fp32 bundle); mean over the seeds listed. "
           "start: the bundle's zero user (untrained head: a constant class); head: head fitted on device, coefficients "
           "untouched; refine: `--method refine` (mix over the projected sources, then every coefficient by "
           "forward-only SPSA; the defaults before the gradient graph); device: `edge-lorax personalize` defaults "
           "(mix, then every coefficient and the head by Adam on the bundle's gradient graph, model.grad.onnx); "
           "int8 / refine int8: the same on the int8 model (seed 0); host: `edge-lorax train` (torch, 80 steps of "
           "16, lr 2e-2). 55 s budget for every device fit. Seconds and peak RSS (VmHWM) are whole processes on 1 "
           "thread; device s / MiB / steps / chosen are the default (exact) fits'.", "",
           "| target | rows | seeds | start | head | refine | device | int8 | refine int8 | host | device s | device MiB "
           "| host s | host MiB | inference MiB | steps | chosen |", "|" + "---|" * 17]
    for r in rows:
        md.append(f"| {r['target']} | {r['rows']} | {','.join(map(str, r['seeds']))} | {_fmt(r['acc_start'])} | "
                  f"{_fmt(r['acc_head'])} | {_fmt(r['acc_refine'])} | {_fmt(r['acc_device'])} | {_fmt(r['acc_int8'])} | "
                  f"{_fmt(r['acc_refine_int8'])} | {_fmt(r['acc_host'])} | "
                  f"{_fmt(r['device_s'])} | {_fmt(r['device_rss'], 0)} | {_fmt(r['host_s'])} | {_fmt(r['host_rss'], 0)} | "
                  f"{_fmt(r['inference_rss'], 0)} | {_fmt(r['device_steps'], 0)} | {' '.join(r['chosen'])} |")
    md += ["", "## Targets", ""] + _summary(rows)
    md += ["", "## What each stage adds (held-out split of the local examples, mean over fits)", ""] + _trace(cells)
    (HERE / "report.md").write_text("\n".join(md) + "\n")
    (HERE / "results.json").write_text(json.dumps({"rows": rows, "stamps": stamps}, indent=1, sort_keys=True) + "\n")
    print(f"wrote {HERE / 'report.md'}")


if __name__ == "__main__":
    main()
