"""Render benchmarks/fleet/report.md from the cells in runs/ (benchmarks/fleet/run.py). Measures nothing.

    .venv/bin/python benchmarks/fleet/report.py [--quick]

The projection to 8 and 64 workers is a model, stated as one: wall(W) = F + LPT(task seconds, W) + n·o/W, with F
(the fixed part: start-up, adapter headers, sources projections, writing) and o (scheduling overhead per task) solved
from the measured 1- and 2-worker runs, LPT the longest-processing-time-first schedule of the measured 1-worker task
seconds on W workers, and the critical path the longest task.
"""

import argparse
import json
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from edge_lorax.bench import measure  # noqa: E402


def load(runs: Path) -> dict:
    return {p.stem: json.loads(p.read_text()) for p in sorted(runs.glob("*.json"))}


def lpt(times: list, workers: int) -> float:
    """Makespan of the longest-first greedy schedule of `times` on `workers` identical workers."""
    loads = [0.0] * workers
    for t in sorted(times, reverse=True):
        loads[loads.index(min(loads))] += t
    return max(loads)


def fit_overheads(one: dict, two: dict) -> tuple:
    """(F, o) from wall1 = F + Σt + n·o and wall2 = F + LPT(t, 2) + n·o/2 (t: the 1-worker task seconds)."""
    t, n = [x["seconds"] for x in one["tasks"]], len(one["tasks"])
    a, b = one["wall_s"] - sum(t), two["wall_s"] - lpt(t, 2)  # = F + n·o and F + n·o/2
    o = max(0.0, 2 * (a - b) / n)
    return max(0.0, a - n * o), o


def _q(xs: list, q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def _executor(cell: dict) -> str:
    return "local" if not cell["workers"] else f"Ray, {cell['workers']} worker{'s' if cell['workers'] > 1 else ''}"


def build_md(cells: dict) -> list:
    rows = [c for c in (cells.get("build-local"), cells.get("build-ray1"), cells.get("build-ray2")) if c]
    if not rows:
        return ["\n## Build\n", "not measured"]
    shape = rows[0].get("shape", {})
    out = [f"\n## Build: {rows[0]['adapters']} Llama-7B-shaped adapters ({shape.get('layers', '?')} layers x q/v, "
           f"{shape.get('dim', '?')} x {shape.get('dim', '?')}, r=16, float16), -k {rows[0]['k']}\n",
           "| executor | wall (s) | driver peak RSS (MiB) | worker peak RSS (MiB) | module tasks | task s: median / p90 / max / sum |",
           "|---|---:|---:|---|---:|---|"]
    for c in rows:
        t = [x["seconds"] for x in c["tasks"]]
        workers = sorted(c["worker_peak_rss_mib"].values()) if c["workers"] else []
        out.append(f"| {_executor(c)} "
                   f"| {c['wall_s']:.0f} | {c['driver_peak_rss_mib']:.0f} | "
                   f"{', '.join(f'{w:.0f}' for w in workers) or '(in the driver)'} | {len(t)} | "
                   f"{statistics.median(t):.2f} / {_q(t, 0.9):.2f} / {max(t):.2f} / {sum(t):.0f} |")
    digests = {json.dumps(c["sha256"], sort_keys=True) for c in rows}
    out += ["", f"Subspace folders bit-identical across {len(rows)} builds: **{'yes' if len(digests) == 1 else 'NO'}**"]
    out += [f"- `{name}` sha256 `{h}`" for name, h in rows[0]["sha256"].items()]
    return out + projection_md(cells)


def projection_md(cells: dict) -> list:
    one, two = cells.get("build-ray1"), cells.get("build-ray2")
    if not (one and two):
        return []
    f, o = fit_overheads(one, two)
    t = [x["seconds"] for x in one["tasks"]]
    lines = ["\n### Projection to more workers (a model from the measured task times, not a measurement)\n",
             f"Fixed part F = {f:.1f} s, scheduling overhead o = {o * 1000:.0f} ms per task (solved from the 1- and "
             f"2-worker walls), critical path (longest module task) {max(t):.2f} s, {len(t)} tasks.", "",
             "| workers | projected wall (s) | of which modules (LPT) | speed-up vs 1 worker |", "|---:|---:|---:|---:|"]
    base = f + sum(t) + len(t) * o
    for w in (1, 2, 8, 64):
        wall = f + lpt(t, w) + len(t) * o / w
        lines.append(f"| {w} | {wall:.1f} | {lpt(t, w):.1f} | ×{base / wall:.2f} |")
    model2 = f + lpt(t, 2) + len(t) * o / 2
    t2 = [x["seconds"] for x in two["tasks"]]
    lines += ["", f"Measured: 1 worker {one['wall_s']:.0f} s, 2 workers {two['wall_s']:.0f} s; the model gives "
              f"{f + sum(t) + len(t) * o:.0f} s and {model2:.0f} s. Two workers on this 2-core machine share its memory "
              f"bandwidth and its cores with the driver and Ray's own processes: their median module task took "
              f"{statistics.median(t2):.2f} s against {statistics.median(t):.2f} s for one worker"
              + (" (o came out negative and is clamped to 0; the residual is that contention)" if o == 0 else "")
              + ". Workers on separate machines would each run at the 1-worker task times the projection uses. F "
              "holds the interpreter and Ray start-up, the adapters' headers, the sources projections (Ray tasks too, "
              "one per adapter, not modelled: F is pessimistic) and the write. Beyond 64 workers nothing is gained: "
              "one task per module, 64 modules."]
    return lines


def train_md(cells: dict) -> list:
    alone = cells.get("train-alone")
    together = [c for c in (cells.get("train-together"), cells.get("train-together-u4")) if c]
    if not (alone and together):
        return ["\n## Fleet training\n", "not measured"]
    n, cfg = alone["users_n"], alone["config"]
    lines = ["\n## Fleet training: {} users, 256 training rows each, MiniLM, {} steps of batch {} (max length {})\n".format(
                 n, cfg["steps"], cfg["batch_size"], cfg["max_length"]),
             "| mode | wall (s) | s per user | × alone | peak RSS (MiB) |", "|---|---:|---:|---:|---:|",
             f"| one at a time (train_coeffs each) | {alone['wall_s']:.0f} | {alone['wall_s'] / n:.2f} | ×1.00 | "
             f"{alone['peak_rss_mib']:.0f} |"]
    lines += [f"| together, {c['users_per_batch']} users per batch (train_many) | {c['wall_s']:.0f} | "
              f"{c['wall_s'] / n:.2f} | ×{c['wall_s'] / alone['wall_s']:.2f} | {c['peak_rss_mib']:.0f} |" for c in together]
    lines += ["", "Walls include each process's model loads and the scoring of every user (validation and test rows)."]
    for c in together:
        lines += _agreement(alone, c)
    return lines


def _agreement(alone: dict, together: dict) -> list:
    """Per-user test accuracy and coefficient differences of one together cell against the alone cell."""
    n = alone["users_n"]
    diffs = [together["users"][u]["test"]["accuracy"] - alone["users"][u]["test"]["accuracy"] for u in alone["users"]]
    coeff = [v.get("max_abs_diff_coeffs", float("nan")) for v in together["users"].values()]
    return ["", f"{together['users_per_batch']} users per batch: test accuracy, together − alone, per user (32 test "
            f"rows each; {n} users): mean {statistics.mean(diffs):+.4f}, min {min(diffs):+.4f}, max {max(diffs):+.4f}, "
            f"|Δ| ≤ 1/32 for {sum(abs(d) <= 1 / 32 + 1e-9 for d in diffs)} of {n}; identical for "
            f"{sum(abs(d) < 1e-9 for d in diffs)}. Coefficients, max |together − alone| per user: median "
            f"{statistics.median(coeff):.2e}, max {max(coeff):.2e} (dropout draws and the summation order differ; "
            "nothing else does)."]


def project_md(cells: dict) -> list:
    rows = [c for c in (cells.get("project-local"), cells.get("project-ray2")) if c]
    if not rows:
        return ["\n## project-many\n", "not measured"]
    out = [f"\n## project-many: the committed MiniLM adapters, {rows[0]['adapters']} projections\n",
           "| executor | wall (s) | adapters/s | task s: median / sum | failed |", "|---|---:|---:|---|---:|"]
    for c in rows:
        out.append(f"| {_executor(c)} | {c['wall_s']:.1f} | {c['adapters_per_s']:.1f} | "
                   f"{c['task_s_median']:.3f} / {c['task_s_sum']:.1f} | {c['failed']} |")
    return out + ["", "Wall is the whole CLI process (interpreter and, for Ray, the local cluster's start-up)."]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    runs = HERE / ("runs-quick" if args.quick else "runs")
    cells = load(runs)
    if not cells:
        sys.exit(f"{runs}: no cells; run benchmarks/fleet/run.py first")
    lines = ["# Fleet scale (issue 16)", ""]
    for name, cell in cells.items():
        st = cell["stamp"]
        lines.append(f"- `{name}`: commit `{st['git_commit']}`, {st['started']} – {st.get('finished')}, load "
                     f"{st['machine']['load_average'][0]} → {st.get('load_average_end', ['?'])[0]}")
    first = next(iter(cells.values()))["stamp"]
    lines += ["", *measure.stamp_md(first)[2:3], f"- command: `{first['command']}`"]
    lines += build_md(cells) + train_md(cells) + project_md(cells)
    out = HERE / ("report-quick.md" if args.quick else "report.md")
    out.write_text(measure.portable("\n".join(lines) + "\n"))
    print(out)


if __name__ == "__main__":
    main()
