"""The bench report: report.json (everything measured), report.md (tables + targets judged against the same run),
report.png (latency with its spread, the paired verdicts' ratios on the time each is judged on, resident-user
memory): the picture draws what the tables and verdicts say (latency_series, paired_series, memory_series build
what is drawn).

Targets come from issue 6; each is judged only on numbers of this run, and a miss says by how much and why.
Overhead targets use the paired measurement: per round, each model's block median over the other's, and the median
over rounds. A cell whose A/A control (plain against its own copy) is off 1 by more than AA_LIMIT measured its own
noise, not the graphs: its verdicts are INVALID (bench/run.py re-measures such a cell first). A valid cell's tie
passes when the median ratio is at most 1 + TIE_BAND, a fixed band — never widened by the control or the spread.
matplotlib is imported only to draw. Does not measure anything.
"""

import json
from pathlib import Path

import numpy as np

from edge_lorax.bench import measure
from edge_lorax.bench.prepare import AA_COPY, ANCHOR, EIGEN, FUSED, INT8, MERGED, OPTIMUM, OPTIMUM_O2, PLAIN
from edge_lorax.formats.bundle import TARGET_DECODER


def _round_ratios(row: dict, num: str, den: str, key: str = "block_medians_ms") -> np.ndarray:
    m = row[key]
    return np.asarray(m[num]) / np.asarray(m[den])


def busy(data: dict) -> bool:
    """1-min load ≥ 0.5 at start or end: other processes competed for the cores."""
    return measure.busy(data["stamp"])


AA_LIMIT = 0.03  # |A/A control − 1| above this: the cell is INVALID (3 %: what a quiet-machine control holds, see notes)
TIE_BAND = 0.03  # a tie: median per-round ratio ≤ 1 + TIE_BAND (the resolution the control certifies; fixed)
WALL, CPU = "block_medians_ms", "block_cpu_ms"


def metric_for(threads: int, busy_machine: bool) -> str:
    """Wall time, except 1-thread cells on a busy machine: the thread's CPU time, which preemption does not inflate."""
    return CPU if busy_machine and threads == 1 else WALL


def metric(data: dict, row: dict) -> str:
    """The time a paired row is judged on: the one bench/run.py chose and checked the control on (older reports:
    from the load at start and end)."""
    if "metric" in row:
        return row["metric"]
    return CPU if busy(data) and row["threads"] == 1 and CPU in row else WALL


def control(row: dict, key: str = WALL) -> float:
    """The A/A control: median per-round ratio of plain's copy over plain (1.0 for a perfect protocol)."""
    return float(np.median(_round_ratios(row, AA_COPY, PLAIN, key)))


def control_holds(row: dict, key: str = WALL) -> bool:
    """The control within AA_LIMIT of 1 (NaN fails)."""
    return bool(abs(control(row, key) - 1) <= AA_LIMIT)


def tie(row: dict, num: str, den: str, key: str = WALL, band: float = TIE_BAND) -> dict:
    """num vs den in a paired row: median per-round ratio, its spread (half the IQR, shown, never a band), the
    control; ok = ratio ≤ 1 + band on a valid cell, None on an invalid one (control off by more than AA_LIMIT)."""
    ratio = _round_ratios(row, num, den, key)
    q1, med, q3 = np.percentile(ratio, [25, 50, 75])
    valid = control_holds(row, key)
    return {"ratio": float(med), "spread": float((q3 - q1) / 2), "control": control(row, key), "valid": valid,
            "ok": bool(med - 1 <= band) if valid else None, "rounds": int(ratio.size)}


def overhead(row: dict, label: str, base: str = PLAIN, key: str = "block_medians_ms") -> float:
    return float(np.median(_round_ratios(row, label, base, key)))


def _cell(row: dict) -> str:
    return f"batch {row['batch']} × seq {row['seq']}, {row['threads']} thread{'s' if row['threads'] > 1 else ''}"


WHY_OVERHEAD = ("the EigenLoRAx path runs four thin MatMuls per module (x·Cᴀᵀ, ·coeff_Aᵀ, ·coeff_Bᵀ, ·Cʙᵀ) where the "
                "anchor runs two (x·Aᵀ, ·Bᵀ); each is tiny, so at small batch × seq the per-node dispatch cost, not "
                "FLOPs, dominates — and relative overhead grows as the base gets cheaper (int8)")
WHY_MERGED = "the merged graph has exactly the plain graph's ops; a gap is measurement noise or a different head op"


def _invalid_why(row: dict, t: dict) -> str:
    tries = len(row.get("attempts", [])) or 1
    return (f"A/A control ×{t['control']:.3f} is off by {100 * abs(t['control'] - 1):.1f}% > {100 * AA_LIMIT:g}% "
            f"after {tries} measurement{'s' if tries > 1 else ''}: this cell measured noise, not the graphs; rerun on "
            "a quiet machine")


def _tie_target(name: str, got: str, row: dict, t: dict, why: str, note: str, band: float = TIE_BAND) -> dict:
    """PASS / MISS on a valid cell; INVALID (never a pass) when the control is off."""
    got += f" (spread ±{t['spread']:.3f}, {t['rounds']} rounds; A/A ×{t['control']:.3f})"
    if not t["valid"]:
        return _target(name, got, None, _invalid_why(row, t), note, status="INVALID")
    return _target(name, got, t["ok"], f"over by {100 * (t['ratio'] - 1 - band):.1f}% beyond the ±"
                   f"{100 * band:g}% band: {why}", note)


def target_overheads(data: dict) -> list:
    """EigenLoRAx vs anchor (fp32, int8) and merged vs plain, per paired cell."""
    out = []
    for row in data.get("paired", []):
        if "error" in row:
            out.append(_target("overheads " + _cell(row), "measured", None, f"worker failed: {row['error']}", ""))
            continue
        key = metric(data, row)
        note = "judged on the thread's CPU time: the machine was busy" if key == CPU else ""
        for suffix, name in (("", "fp32"), (INT8, "int8")):
            t = tie(row, EIGEN + suffix, ANCHOR + suffix, key)
            got = (f"EigenLoRAx ×{overhead(row, EIGEN + suffix, PLAIN + suffix, key):.3f} vs anchor "
                   f"×{overhead(row, ANCHOR + suffix, PLAIN + suffix, key):.3f} over plain{suffix}; EigenLoRAx/anchor "
                   f"×{t['ratio']:.3f}")
            out.append(_tie_target(f"EigenLoRAx ties the multi-LoRA overhead ({name}), {_cell(row)}", got, row, t,
                                   WHY_OVERHEAD, note))
        t = tie(row, MERGED, PLAIN, key)
        out.append(_tie_target(f"merged export ties the plain model, {_cell(row)}", f"merged/plain ×{t['ratio']:.3f}",
                               row, t, WHY_MERGED, note))
    return out


OPTIMUM_BAND = 0.05  # issue 15: the EigenLoRAx bundle within 1.05× of optimum's O2 plain model (fp32)
OPTIMUM_CELLS = ((1, 16), (1, 64))  # batch × seq the issue names, 1 thread
WHY_OPTIMUM = ("at short sequences per-node dispatch dominates: the unfused bundle runs ~400 nodes after ORT's own "
               "optimisations, O2's plain model ~60 (one Attention / SkipLayerNormalization / BiasGelu per layer); "
               "the fused variant (`export --fuse`) runs ~90, the low-rank branches' MatMuls and Concats included")


def target_optimum(data: dict) -> list:
    """The EigenLoRAx bundle's default graph, and its fused variant when measured, against optimum's O2 plain model,
    paired, 1 thread, batch 1 × seq 16 and 64. Not measured (with the reason) without optimum rows."""
    rows = [r for r in data.get("paired", []) if (r["batch"], r["seq"]) in OPTIMUM_CELLS and r["threads"] == 1]
    out = []
    for row in rows:
        if OPTIMUM_O2 not in row.get(WALL, {}):
            why = next((n for n in data.get("prepared", {}).get("notes", []) if "optimum" in n), "no optimum rows")
            out.append(_target(OPTIMUM_NAME.format(graph="bundle") + _cell(row), "", None, why, ""))
            continue
        for label, graph in ((EIGEN, "bundle (model.onnx)"), (FUSED, "bundle's fused variant (model.fused.onnx)")):
            if label in row[WALL]:
                out.append(_optimum_tie(data, row, label, graph))
    return out


OPTIMUM_NAME = "EigenLoRAx {graph} within 1.05× of optimum's O2 plain model (fp32), "


def _optimum_tie(data: dict, row: dict, label: str, graph: str) -> dict:
    key = metric(data, row)
    t = tie(row, label, OPTIMUM_O2, key, OPTIMUM_BAND)
    got = (f"{label}/O2 ×{t['ratio']:.3f}; O2/plain ×{overhead(row, OPTIMUM_O2, PLAIN, key):.3f}, "
           f"optimum/plain ×{overhead(row, OPTIMUM, PLAIN, key):.3f}")
    note = "judged on the thread's CPU time: the machine was busy" if key == CPU else ""
    return _tie_target(OPTIMUM_NAME.format(graph=graph) + _cell(row), got, row, t, WHY_OPTIMUM, note, OPTIMUM_BAND)


def _target(name: str, measured: str, ok, why: str, note: str, status: str | None = None) -> dict:
    status = status or ("not measured" if ok is None else ("PASS" if ok else "MISS"))
    return {"target": name, "measured": measured, "status": status, "why": "" if status == "PASS" else why, "note": note}


def _target_switch(data: dict) -> list:
    """Switching a preloaded user costs no more than ORT's LoraAdapter path: the switch itself, and per whole run."""
    sw = data.get("switch", {})
    if "error" in sw or not sw:
        return [_target("switch a preloaded user ≤ LoraAdapter path", "", None, sw.get("error", "not run"), "")]
    bind, act = sw["rebind_preloaded"]["bind"]["p50_us"], sw["adapter_eigen"]["activate_preloaded"]["p50_us"]
    cpu = {k: v["cpu"]["p50"] * 1e3 for k, v in sw["rebind_preloaded"]["runs"].items()}  # µs, 1-thread CPU time
    ours, theirs = cpu["rebind"] - cpu["defaults"], cpu["adapter"] - cpu["defaults"]
    band = 0.01 * cpu["defaults"]
    return [
        _target("switch a preloaded user ≤ activating a preloaded LoraAdapter",
                f"bind the next user's arrays {bind:.2f} µs vs RunOptions + add_active_adapter {act:.2f} µs; "
                f"another user each run vs the same user: {cpu['rebind'] - cpu['same']:+.1f} µs CPU per run",
                bind <= act, f"{bind - act:.2f} µs more: the bind is a Python dict of the token arrays and every "
                "coefficient array, ORT's activation one C++ call", ""),
        _target("per-run cost of serving a preloaded user ≤ ORT LoraAdapter path (±1% of a run)",
                f"over a run on the graph defaults: arrays +{ours:.1f} µs vs LoraAdapter +{theirs:.1f} µs CPU "
                f"(run {cpu['defaults'] / 1e3:.3f} ms)", ours - theirs <= band,
                f"{ours - theirs:.1f} µs per run more: ORT's Python binding wraps each numpy feed (one per "
                "coefficient tensor) per run, an adapter's tensors are appended in C++; users loaded from "
                ".onnx_adapter can run that path (runtime.run_adapter)",
                "1-thread CPU time, interleaved blocks; band = 1% of the run")]


def _mem(data: dict, kind: str, n: int):
    for row in data.get("memory", []):
        if row["users_kind"] == kind and row["users"] == n and "error" not in row:
            return row
    return None


def _target_memory(data: dict) -> list:
    """1000 resident users add ≤ 1/20 of the LoRA figure; per-user bytes ≤ 1/20 of a LoRA r=8 adapter."""
    out, ub = [], data.get("prepared", {}).get("user_bytes", {})
    n = max(data["plan"]["user_counts"])
    eig, lora = _mem(data, "eigenlorax coefficients", n), _mem(data, "lora A/B", n)
    why_size = (f"per module EigenLoRAx holds 2·K·r numbers against r·(in+out) for LoRA; with K={ub.get('coeff_dims')} "
                f"and shapes {ub.get('module_shapes')} that ratio is below 20, and the task head "
                f"({ub.get('head', 0)} B) is per user in both")
    if eig and lora:
        e, l_ = max(eig["delta_anon_mib"], 0.0), lora["delta_anon_mib"]
        ok = e <= l_ / 20
        out.append(_target(f"{n} resident users add ≤ 1/20 of the LoRA A/B figure",
                           f"+{e:.2f} MiB vs +{l_:.2f} MiB (1/{l_ / max(e, 1e-9):.1f})", ok,
                           why_size + "; plus fixed per-OrtValue overhead (≈ a few hundred bytes per tensor object)", ""))
    if ub:
        with_head = ub["eigen_with_head"] <= ub["lora_r8_with_head"] / 20
        out.append(_target("per-user bytes ≤ 1/20 of the LoRA r=8 adapter (tensors, head included in both)",
                           f"{ub['eigen_with_head']} B vs {ub['lora_r8_with_head']} B "
                           f"(1/{ub['lora_r8_with_head'] / ub['eigen_with_head']:.1f}); without head "
                           f"{ub['eigen_tensors']} B vs {ub['lora_r8_tensors']} B "
                           f"(1/{ub['lora_r8_tensors'] / max(ub['eigen_tensors'], 1):.1f})", with_head, why_size, ""))
    return out


def targets(data: dict) -> list:
    return target_overheads(data) + target_optimum(data) + _target_switch(data) + _target_memory(data)


def _fmt(x, digits=3) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def _table(header: list, rows: list) -> list:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(map(str, r)) + " |" for r in rows]


def _latency_md(data: dict) -> list:
    """One table per thread count: rows batch × seq, columns models, cells p50 (p90 / p99) ms and ×plain."""
    rows = [r for r in data.get("latency", [])]
    models = list(dict.fromkeys(r["model"] for r in rows))
    out = []
    for threads in sorted({r["threads"] for r in rows}):
        out += [f"\n### {threads} thread{'s' if threads > 1 else ''}: p50 (p90 / p99) ms, ×plain of the same precision\n"]
        body = []
        for batch, seq in sorted({(r["batch"], r["seq"]) for r in rows if r["threads"] == threads}):
            cell = {r["model"]: r for r in rows if (r["threads"], r["batch"], r["seq"]) == (threads, batch, seq)}
            body.append([f"{batch} × {seq}"] + [_lat_cell(cell, m) for m in models])
        out += _table(["batch × seq"] + models, body)
    return out


def _lat_cell(cell: dict, model: str) -> str:
    r = cell.get(model)
    if r is None or "stats" not in r:
        return "failed: " + (r or {}).get("error", "not run")[:60]
    s = r["stats"]
    base = cell.get(PLAIN + INT8 if model.endswith(INT8) else PLAIN, {}).get("stats", {}).get("p50")
    ratio = f" ×{s['p50'] / base:.3f}" if base and model not in (PLAIN, PLAIN + INT8) else ""
    return f"{s['p50']:.3f} ({s['p90']:.3f} / {s['p99']:.3f}){ratio}"


def _memory_md(data: dict) -> list:
    """Per configuration peak RSS, anon and file-backed RSS (batch 1, smallest seq, 1 thread), then resident users."""
    out = ["\n### Process memory per model (fresh process; MiB)\n"]
    rows = [r for r in data.get("latency", []) if "memory" in r]
    seen, body = set(), []
    for r in sorted(rows, key=lambda r: (-r["batch"] * r["seq"], r["threads"])):
        if r["model"] in seen:
            continue
        seen.add(r["model"])
        end = r["memory"]["end"]
        body.append([r["model"], f"{r['batch']} × {r['seq']}", _fmt(end.get("VmHWM"), 1), _fmt(end.get("RssAnon"), 1),
                     _fmt(end.get("RssFile"), 1), f"{r['session_s'] * 1e3:.0f}"])
    out += _table(["model", "largest batch × seq", "peak RSS (VmHWM)", "RssAnon", "RssFile", "session create ms"], body)
    out += ["\n### Resident users (growth of RssAnon / RSS after N users are loaded as the runtime holds them: read-only "
            "arrays per input; freed heap trimmed first; MiB)\n"]
    body = [[r["users_kind"], r["users"], _fmt(r.get("delta_anon_mib"), 2), _fmt(r.get("delta_rss_mib"), 2),
             f"{r.get('tensor_bytes', 0) / 2**20:.2f}" if "error" not in r else r["error"][:60]]
            for r in data.get("memory", [])]
    return out + _table(["users", "N", "Δ RssAnon", "Δ RSS", "tensor MiB"], body)


def _switch_md(data: dict) -> list:
    """The user-switch table: binding, activation, loading, a new session, whole runs per path."""
    sw = data.get("switch", {})
    if not sw or "error" in sw:
        return ["\n### User switch\n", f"failed: {sw.get('error', 'not run')}"]
    rb, ae, al = sw["rebind_preloaded"], sw["adapter_eigen"], sw["adapter_lora"]
    runs = rb["runs"]
    rows = [["bind a preloaded user (build the run's feed dict)", f"{rb['bind']['p50_us']:.2f} µs"],
            ["activate a preloaded ORT LoraAdapter (EigenLoRAx coefficients)", f"{ae['activate_preloaded']['p50_us']:.2f} µs"],
            ["activate a preloaded ORT LoraAdapter (LoRA A/B)", f"{al['activate_preloaded']['p50_us']:.2f} µs"],
            ["load a user from user.npz (validated, preloaded)", f"{sw['load_user_npz']['p50_us']:.1f} µs"],
            ["load a user from .onnx_adapter (validated, preloaded + LoraAdapter)", f"{sw['load_user_adapter']['p50_us']:.1f} µs"],
            ["load + activate LoraAdapter from file (EigenLoRAx)", f"{ae['load_and_activate']['p50_us']:.1f} µs"],
            ["load + activate LoraAdapter from file (LoRA A/B)", f"{al['load_and_activate']['p50_us']:.1f} µs"],
            ["new session on the merged model", f"{sw['new_merged_session']['create_ms']:.1f} ms"],
            ["new merged session + first run", f"{sw['new_merged_session']['create_and_first_run_ms']:.1f} ms"]]
    labels = {"defaults": "graph defaults (no user feeds)", "same": "the same preloaded user", "rebind":
              "another preloaded user each run", "adapter": "another preloaded LoraAdapter each run"}
    rows += [[f"whole run, {labels[k]}: p50 wall / CPU", f"{v['wall']['p50']:.3f} ms / {v['cpu']['p50']:.3f} ms"]
             for k, v in runs.items()]
    return ["\n### User switch (EigenLoRAx bundle, 1 thread, medians)\n"] + _table(["operation", "cost"], rows)


def _torch_md(data: dict) -> list:
    """The torch eager rows; unavailable devices say so instead of a figure."""
    body = []
    for r in data.get("torch", []):
        if r.get("available") is False or "error" in r:
            body.append([r["device"], r["threads"], f"{r['batch']} × {r['seq']}", r.get("reason", r.get("error", ""))[:80]])
        else:
            s = r["stats"]
            body.append([r["device"], r["threads"], f"{r['batch']} × {r['seq']}",
                         f"{s['p50']:.3f} ({s['p90']:.3f} / {s['p99']:.3f}) ms, {r['device_name']}"])
    return ["\n### Torch eager reference (injected model, same tokens)\n"] + _table(["device", "threads", "batch × seq", "p50 (p90 / p99)"], body)


PAIRS = ((EIGEN, PLAIN), (ANCHOR, PLAIN), (MERGED, PLAIN), (EIGEN + INT8, PLAIN + INT8), (ANCHOR + INT8, PLAIN + INT8),
         (FUSED, PLAIN), (OPTIMUM, PLAIN), (OPTIMUM_O2, PLAIN), (EIGEN, OPTIMUM_O2), (FUSED, OPTIMUM_O2), (AA_COPY, PLAIN))


def pairs_of(rows: list) -> list:
    """The PAIRS every measured row has both models of (the optional rows: bench/run.py OPTIONAL_MODELS)."""
    rows = [r for r in rows if WALL in r]
    return [(a, b) for a, b in PAIRS if rows and all(a in r[WALL] and b in r[WALL] for r in rows)]


def _validity(data: dict, row: dict) -> str:
    key = metric(data, row)
    tries = len(row.get("attempts", [])) or 1
    state = "valid" if control_holds(row, key) else "**INVALID**"
    return f"{state}: A/A ×{control(row, key):.3f} on {'CPU' if key == CPU else 'wall'} time, {tries} measurement{'s' * (tries > 1)}"


def paired_md(data: dict) -> list:
    """Per-cell overhead ratios from the paired (alternating) measurement, and whether its A/A control held."""
    out = ["\n### Overheads, paired (all models in one process, alternated in blocks; median per-round ratio; "
           "1-thread cells: wall / thread CPU time)\n"]
    body, pairs = [], pairs_of(data.get("paired", []))
    for row in data.get("paired", []):
        if "error" in row:
            body.append([_cell(row), "failed: " + row["error"][:80], *[""] * len(pairs)])
            continue
        cpu = CPU in row and row["threads"] == 1
        body.append([_cell(row), *[f"×{overhead(row, m, b):.3f}" + (f" / ×{overhead(row, m, b, CPU):.3f}" if cpu else "")
                                   for m, b in pairs], _validity(data, row)])
    heads = [("A/A control" if a == AA_COPY else f"{a} / {b}") for a, b in pairs]
    return out + _table(["cell", *heads, f"cell (control within ±{100 * AA_LIMIT:g}%)"], body)


def _header_md(data: dict) -> list:
    """Title and stamp (measure.stamp_md: command, commit, machine, load, versions); a warning when the machine was busy."""
    lines = ["# edge-lorax bench report" + (" (quick mode: few configurations, few runs)" if data["quick"] else ""), "",
             *measure.stamp_md(data["stamp"]), f"- bundle: `{data['bundle']}`"]
    if busy(data):
        lines.append("- **warning: the machine was busy (1-min load ≥ 0.5); latencies are noisy, rerun when quiet**")
    return lines


ISSUE_SCALE = ("For scale (MiniLM, 1 thread, another run — not compared here): full LoRA A, B inputs ×1.02 "
               "over plain fp32, ×1.04–1.06 int8; activating a preloaded LoraAdapter 0.55 µs, loading one 22–28 µs; "
               "a new session 128 ms; 1000 users' LoRA tensors ≈ +300 MiB.")


def _targets_md(rows: list) -> list:
    """The targets table: each with what was measured, PASS/MISS and why."""
    body = [[t["target"], t["measured"], t["status"], (t["why"] + (" " + t["note"] if t["note"] else "")).strip()]
            for t in rows]
    heading = "\n## Targets (runtime overhead and optimum parity), judged on this run\n"
    return [heading] + _table(["target", "measured", "status", "why / note"], body) + ["", ISSUE_SCALE]


def _sizes_md(data: dict) -> list:
    """Per-user bytes, parity vs torch and preparation notes."""
    prep = data.get("prepared", {})
    ub, par = prep.get("user_bytes", {}), prep.get("parity", {})
    rows = [[k, v] for k, v in ub.items()]
    out = ["\n### Per-user bytes\n"] + _table(["quantity", "value"], rows)
    out += ["\n### Parity: max |logits − torch injected model| on the bench user\n"]
    out += _table(["graph", "max abs diff"], [[k, f"{v:.2e}"] for k, v in par.items()])
    return out + [f"\nNotes: {'; '.join(prep.get('notes', [])) or 'none'}"]


def markdown(data: dict) -> str:
    """The whole report.md text."""
    lines = _header_md(data) + _targets_md(data["targets"]) + ["\n## Latency (one fresh process per configuration)"]
    lines += _latency_md(data) + paired_md(data) + _switch_md(data) + _memory_md(data) + _torch_md(data) + _sizes_md(data)
    return "\n".join(lines + _method_md()) + "\n"


PAIRED_METHOD = (
    "Paired cells: every graph of the latency sweep and plain's file opened a second time (the A/A control: the same graph, its own "
    "session) run in one process, idle sessions not spinning, alternated in blocks of the same number of runs for "
    "every model (sized on the slowest) after 2 untimed runs per switch, each round in a Williams order (every model "
    "follows every other equally often); per model and round the block median of wall time and of the running "
    "thread's CPU time; the verdict is the median of the per-round ratios. A cell whose control is off 1 by more "
    f"than {100 * AA_LIMIT:g}% is re-measured in a fresh process (2 more times at most) and otherwise reported "
    f"INVALID; a valid cell's tie passes at ≤ 1 + {100 * TIE_BAND:g}%, a fixed band.")
DRIFT_NOTES = [
    "Why the control drifted before (an earlier demo run read ×0.832 wall / ×0.629 CPU at 1 × 64, 1 thread, and "
    "every target passed inside ±0.371; the committed report read ×1.084 CPU). Measured on the 2-core dev VM "
    "(KVM, Intel Xeon, L3 300 MiB shared with the host), MiniLM bundle, 2026-11-30:",
    "1. Each model calibrated its own block length, the first-calibrated absorbing the process's warm-up: plain vs "
    "its copy got 11/12, 12/13, 18/11, 12/8, 13/13, 17/10, 8/8, 11/11, 12/13, 12/15, 13/13 runs per block in 11 runs "
    "of the old worker (13/18 in the committed report). CPU time was the block mean, so the slower first runs after a switch (+7 % fp32: 15.0 vs "
    "14.0 ms, +21 % int8: 6.8 vs 5.6 ms, settling over ~4 runs) weighed differently per model.",
    "2. The rotation `labels[r:] + labels[:r]` fixed every model's predecessor (plain always followed its own copy, "
    "the copy always followed anchor int8), so carry-over (caches, a spinning pool) hit the two unequally.",
    "3. Idle sessions spin: at 2 threads, alternating 4 sessions of plain run by run cost 34.5 ms per run with "
    "spinning vs 11.0 ms without (13.9 / 13.2 ms for one session alone); after a block switch plain's first runs took "
    "87-92 ms and later ones 55 ms with spinning vs 25-31 ms flat without (1-min load ~4.5).",
    "4. CPU time was process-wide (`process_time`): at 2 threads it read 27.1 ms per 13.9 ms run (the pool spinning). "
    "Its granularity was not the issue here: clock_gettime(CLOCK_PROCESS_CPUTIME_ID), steps of 0.6 µs measured.",
    "5. What no protocol removes: neighbours on the host. At a guest load of 0.5 the same plain run took 19 ms for "
    "seconds, at other times 13.6 ms; CPU time inflates alike (the steal counter stayed flat), so bursts, not "
    "preemption, dominate. Short rounds keep compared blocks about a second apart and 40 of them steady the median; "
    "the control tells when it was not enough.",
    "A/A control measured (1 thread, 1 × 64; wall / CPU): old worker (12 rounds × 0.25 s, block-mean process CPU), "
    "12 runs at load 0.8-6: wall 0.913-1.006, off by > 3 % in 5; CPU 0.833-1.019, off in 4 (at load < 1: "
    "0.991/0.991, 0.983/0.977, 0.969/0.930). This worker, 40 rounds × 0.1 s, 8 runs at load 0.8-5: CPU 0.978-1.009, "
    "all within 3 %; wall 0.984-1.009 but 0.934 once when another benchmark shared the cores (at load < 1: "
    "1.009/1.009, 0.991/0.991, 1.007/1.008). The same worker with longer rounds (16 × 0.25 s), 9 runs at load 1.5-6: "
    "CPU 0.964-1.009, off in 2; wall 0.951-1.013, off in 1. At 2 threads (1 × 64) at load 1-1.8: old 1.008, 0.974 "
    "wall, this worker 0.982; at load 5-6.5 neither held (old 1.026, 0.954; this worker 0.968, 0.921 wall): such a "
    "cell is INVALID, as it should be. 8 × 64, 1 thread, this worker: 1.007 / 1.007 (187 s for the cell). "
    "3 % is the limit a quiet run of this worker holds with "
    "room to spare, and the resolution the ties are judged at.",
]


def _method_md() -> list:
    """How everything was measured, and why the paired protocol is built as it is (numbers measured for it)."""
    return ["\n## Method notes\n",
            "Latency: each configuration in a fresh process; warm-up, then runs sized to a time budget in consecutive "
            "blocks; every ORT graph fed the same way (preloaded numpy arrays through session.run, as the runtime). "
            "The plain, merged and anchor graphs come from the exporter's own code (edge_lorax.export: TorchScript, "
            "its OPSET, its passes) and every int8 variant from its one quantizer (export.quantize.quantize_int8). "
            "`![plot](report.png)`", "", PAIRED_METHOD, "", *DRIFT_NOTES]


def latency_series(data: dict) -> dict:
    """What the latency panel draws: per (model, batch) at the smallest thread count, p50 / p90 / p99 ms per sequence
    length. `bars`: one sequence length only (quick mode), drawn as bars with their spread, not as a column of dots."""
    rows = [r for r in data.get("latency", []) if "stats" in r]
    threads = min((r["threads"] for r in rows), default=1)
    rows = [r for r in rows if r["threads"] == threads]
    series = []
    for model, batch in dict.fromkeys((r["model"], r["batch"]) for r in rows):
        pts = sorted((r["seq"], r["stats"]) for r in rows if (r["model"], r["batch"]) == (model, batch))
        series.append({"model": model, "batch": batch, "seq": [p[0] for p in pts],
                       **{q: [p[1][q] for p in pts] for q in ("p50", "p90", "p99")}})
    seqs = sorted({r["seq"] for r in rows})
    return {"threads": threads, "seqs": seqs, "bars": len(seqs) == 1, "series": series}


VERDICT_PAIRS = ((EIGEN, ANCHOR, "EigenLoRAx / anchor, fp32"), (EIGEN + INT8, ANCHOR + INT8, "EigenLoRAx / anchor, int8"),
                 (MERGED, PLAIN, "merged / plain"))


def _optimum_judged(row: dict) -> bool:
    return row["threads"] == 1 and (row["batch"], row["seq"]) in OPTIMUM_CELLS and OPTIMUM_O2 in row.get(WALL, {})


def paired_series(data: dict) -> list:
    """What the paired panel draws, per paired cell: the ratios its verdicts judge, each on the time the verdict uses
    (report.metric: wall, or the thread's CPU time), by the same function (report.tie): the median per-round ratio, its
    spread (half the IQR), the band it is judged against, pass or not; the A/A control last, against AA_LIMIT; and
    whether the cell is valid (an INVALID cell's bars are drawn, marked, never judged)."""
    out = []
    for row in data.get("paired", []):
        if "error" in row or WALL not in row:
            continue
        key = metric(data, row)
        pairs = [(n, d, lab, TIE_BAND) for n, d, lab in VERDICT_PAIRS]
        if _optimum_judged(row):
            pairs += [(m, OPTIMUM_O2, f"{name} / optimum O2", OPTIMUM_BAND)
                      for m, name in ((EIGEN, "EigenLoRAx"), (FUSED, "fused")) if m in row[WALL]]
        bars = []
        for num, den, label, band in pairs:
            t = tie(row, num, den, key, band)
            bars.append({"label": label, "num": num, "den": den, "ratio": t["ratio"], "spread": t["spread"],
                         "band": band, "ok": t["ok"]})
        aa = _round_ratios(row, AA_COPY, PLAIN, key)
        q1, q3 = np.percentile(aa, [25, 75])
        bars.append({"label": "A/A control", "num": AA_COPY, "den": PLAIN, "ratio": control(row, key),
                     "spread": float((q3 - q1) / 2), "band": AA_LIMIT, "ok": control_holds(row, key)})
        out.append({"cell": _cell(row), "metric": key, "time": "thread CPU time" if key == CPU else "wall time",
                    "valid": control_holds(row, key), "control": control(row, key), "bars": bars})
    return out


def memory_series(data: dict) -> dict:
    """What the resident-users panel draws: per kind, N users against Δ RssAnon (MiB, as measured: 0 or below is
    drawn, not clipped) and the users' own tensor MiB; a linear MiB axis (a log axis cannot show 0)."""
    out = {}
    for kind in ("eigenlorax coefficients", "lora A/B"):
        pts = sorted((r["users"], r["delta_anon_mib"], r.get("tensor_bytes", 0) / 2**20) for r in data.get("memory", [])
                     if r["users_kind"] == kind and "delta_anon_mib" in r)
        if pts:
            out[kind] = {"users": [p[0] for p in pts], "delta_anon_mib": [p[1] for p in pts],
                         "tensor_mib": [p[2] for p in pts]}
    return {"series": out, "yscale": "linear"}


def title(data: dict) -> str:
    """The figure's title: machine and commit, quick mode, and the busy-machine warning of report.md."""
    st = data["stamp"]
    lines = [f"edge-lorax bench — {st['machine']['cpu']}, commit {st['git_commit'][:10]}"]
    if data.get("quick"):
        lines.append("quick mode: few configurations, few runs (a smoke test, not a measurement)")
    if busy(data):
        lines.append("warning: the machine was busy (1-min load ≥ 0.5); latencies are noisy, rerun when quiet")
    return "\n".join(lines)


def figure(data: dict):
    """The report's matplotlib Figure: latency with its spread (1 thread), the paired verdicts' ratios on the time
    they are judged on with the ±3% band and valid / INVALID cells, resident-user memory on a linear axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(19, 5.8), gridspec_kw={"width_ratios": [1.1, 1.3, 0.9]})
    _plot_latency(axes[0], latency_series(data))
    _plot_paired(axes[1], paired_series(data))
    _plot_memory(axes[2], memory_series(data))
    fig.suptitle(title(data), color="C3" if busy(data) else "k", fontsize=10)
    fig.tight_layout()
    return fig


def plot(data: dict, path: Path):
    """report.png: figure(data) saved."""
    import matplotlib.pyplot as plt

    fig = figure(data)
    fig.savefig(path, dpi=110, format="png")  # temp files have no suffix
    plt.close(fig)


def _colors(n: int) -> list:
    import matplotlib

    cmap = matplotlib.colormaps["tab20" if n > 10 else "tab10"]
    return [cmap(i % cmap.N) for i in range(n)]


def _plot_latency(ax, s: dict):
    series = s["series"]
    colors = dict(zip(dict.fromkeys(x["model"] for x in series), _colors(len({x["model"] for x in series}))))
    if s["bars"]:  # one sequence length: a bar per model with its spread
        y = np.arange(len(series))
        p50 = [x["p50"][0] for x in series]
        ax.barh(y, p50, xerr=[[0] * len(series), [x["p90"][0] - x["p50"][0] for x in series]], capsize=3,
                color=[colors[x["model"]] for x in series])
        ax.plot([x["p99"][0] for x in series], y, "kd", ms=4, label="p99")
        for i, v in enumerate(p50):
            ax.annotate(f"{v:.2f}", (v, i), textcoords="offset points", xytext=(3, -9), fontsize=6)
        ax.set_yticks(y)
        ax.set_yticklabels([f"{x['model']}, batch {x['batch']}" for x in series], fontsize=7)
        ax.set(xlabel=f"ms at seq {s['seqs'][0] if s['seqs'] else '?'}: bar p50, whisker p90, ◆ p99",
               title=f"latency, {s['threads']} thread(s)", xscale="linear")
        ax.legend(fontsize=7)
        return
    for x in series:
        style = "-" if x["batch"] == 1 else "--"
        ax.plot(x["seq"], x["p50"], marker="o", ms=3, color=colors[x["model"]], linestyle=style,
                label=f"{x['model']}, batch {x['batch']}")
        ax.fill_between(x["seq"], x["p50"], x["p90"], color=colors[x["model"]], alpha=0.15)
    ax.set(xlabel="sequence length", ylabel="ms: line p50, shade to p90", title=f"latency, {s['threads']} thread(s)",
           yscale="log")
    ax.legend(fontsize=6, ncol=2, loc="upper left")


def _plot_paired(ax, cells: list):
    if not cells:
        ax.text(0.5, 0.5, "no paired cell measured", ha="center", va="center", transform=ax.transAxes)
        ax.set(title="paired verdicts")
        return
    labels = list(dict.fromkeys(b["label"] for c in cells for b in c["bars"]))
    width = 0.8 / len(cells)
    ax.axhspan(-100 * TIE_BAND, 100 * TIE_BAND, color="0.85", zorder=0, label=f"±{100 * TIE_BAND:g}% band")
    for i, (cell, color) in enumerate(zip(cells, _colors(len(cells)))):
        xs = [labels.index(b["label"]) + i * width for b in cell["bars"]]
        state = "" if cell["valid"] else ", INVALID: A/A control off"
        ax.bar(xs, [100 * (b["ratio"] - 1) for b in cell["bars"]], width, yerr=[100 * b["spread"] for b in cell["bars"]],
               capsize=2, color=color, alpha=1.0 if cell["valid"] else 0.35, hatch=None if cell["valid"] else "//",
               edgecolor="k" if not cell["valid"] else color,
               label=f"{cell['cell']} ({cell['time']}{state})")
        for x, b in zip(xs, cell["bars"]):
            if b["band"] != TIE_BAND:  # another band (optimum O2: 5 %) drawn at its bar
                ax.hlines(100 * b["band"], x - width / 2, x + width / 2, colors="k", linestyles="--", lw=0.8)
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xticks(np.arange(len(labels)) + width * (len(cells) - 1) / 2)
    ax.set_xticklabels(labels, rotation=20, fontsize=7)
    ax.set(ylabel="median per-round ratio − 1 (%), whisker: spread", title="paired verdicts: the ratios judged, on the "
           "time each is judged on")
    ax.legend(fontsize=6)


def _plot_memory(ax, s: dict):
    for i, (kind, pts) in enumerate(s["series"].items()):
        ax.plot(pts["users"], pts["delta_anon_mib"], marker="o", color=f"C{i}", label=f"{kind}: Δ RssAnon")
        ax.plot(pts["users"], pts["tensor_mib"], linestyle=":", color=f"C{i}", label=f"{kind}: its tensors")
        for n, v in zip(pts["users"], pts["delta_anon_mib"]):
            ax.annotate(f"{v:.2f}", (n, v), textcoords="offset points", xytext=(0, 5), ha="center", fontsize=6)
    ax.axhline(0, color="k", lw=0.5)
    ax.set(xscale="log", yscale=s["yscale"], xlabel="resident users", ylabel="MiB", title="resident users")
    ax.legend(fontsize=7)


def write_report(data: dict, out_dir: Path) -> Path:
    """report.json, report.md, report.png into out_dir (each written atomically); returns out_dir."""
    data["targets"] = targets(data)
    return measure.write_report_files(out_dir, data, markdown(data), lambda path: plot(data, path))



def main(argv=None):
    """`python -m edge_lorax.bench.report REPORT_DIR`: re-judge and re-render report.md / report.png from report.json
    (the same measurements; targets recomputed by this code); a decoder bench's report by bench/llm_report.py."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.exit("usage: python -m edge_lorax.bench.report REPORT_DIR")
    out = Path(args[0])
    data = json.loads((out / "report.json").read_text())
    if data.get("kind") == TARGET_DECODER:
        from edge_lorax.bench.llm_report import write_llm_report

        print(write_llm_report(data, out) / "report.md")
        return
    print(write_report(data, out) / "report.md")


if __name__ == "__main__":
    main()
