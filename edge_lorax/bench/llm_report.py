"""The decoder bench report (bench/llm.py's measurements): report.json (everything measured), report.md (tables and
targets judged on this run), report.png (the same figures: what the table and the verdicts say is what is drawn).

Per (build, threads): the median over rounds of each round's median time to first token per prompt length and
decode tokens/s, with p10–p90 over every repetition; ours / plain per round (the two builds' runs of the same
round) and the median of those ratios, which the targets judge (wall time: a generation's threads are the
session's own). Switch costs and resident users' memory come from the bundle's runs. Also the helpers
benchmarks/llm/report.py shares (median, agreement, median_dict). matplotlib is imported only to draw. Does not
measure anything.
"""

from pathlib import Path

import numpy as np

from edge_lorax.bench import measure

OURS, PLAIN = "ours", "plain"
# issue 13's targets for a decoder bundle against onnxruntime-genai's plain build of the same model
TARGETS = {"decode_vs_plain": 0.85, "ttft_vs_plain": 1.15}
WHY_DECODE = ("each generated token runs the coefficient branches of every adapted projection (four thin MatMuls "
              "where the plain graph has none); at one token per step the per-node dispatch, not FLOPs, dominates")
WHY_TTFT = ("the prompt's tokens go through the same coefficient branches; their cost relative to the base grows as "
            "the base gets cheaper (int4, short prompts)")


def median(runs: list, *path) -> float | None:
    """The median over runs of the value at `path` (keys), skipping runs without it; None when none has it."""
    values = []
    for r in runs:
        for key in path:
            r = r.get(key) if isinstance(r, dict) else None
        if r is not None:
            values.append(r)
    return float(np.median(values)) if values else None


def median_dict(runs: list, key: str) -> dict:
    """{name: median over runs} of the dicts runs hold under `key` ({} when none does)."""
    rows = [r[key] for r in runs if key in r]
    return {k: float(np.median([r[k] for r in rows if k in r])) for k in rows[0]} if rows else {}


def agreement(a: list, b: list) -> float:
    """% of positions where two greedy token lists agree, up to each prompt's first disagreement counting as a miss
    for the rest (a diverged sequence is not compared further)."""
    same = total = 0
    for x, y in zip(a, b):
        n = min(len(x), len(y))
        first = next((i for i in range(n) if x[i] != y[i]), n)
        same, total = same + first, total + n
    return round(100 * same / total, 1) if total else float("nan")


def _ok(runs: list) -> list:
    return [r for r in runs if "error" not in r]


def _split(key: str) -> tuple:
    build, _, threads = key.rpartition("_t")
    return build, int(threads)


def lengths(data: dict) -> list:
    return [str(n) for n in data["plan"]["prompt_tokens"]]


def build_rows(data: dict) -> list:
    """Per (build, threads): rounds measured, errors, TTFT per length and decode tokens/s ({"median": median of the
    rounds' medians, "lo" / "hi": p10 / p90 over every repetition}), load seconds, memory (MiB, medians)."""
    out = []
    for key in sorted(data.get("runs", {}), key=lambda k: (_split(k)[1], _split(k)[0] != OURS, k)):
        build, threads = _split(key)
        runs, ok = data["runs"][key], _ok(data["runs"][key])
        row = {"build": build, "threads": threads, "rounds": len(ok), "errors": [r["error"] for r in runs if "error" in r]}
        if ok:
            row["ttft_ms"] = {n: _spread(median(ok, "ttft_ms", n), [x for r in ok for x in r.get("ttft_ms_reps", {}).get(n, [])])
                              for n in lengths(data)}
            row["decode_tokens_per_s"] = _spread(median(ok, "decode_tokens_per_s"),
                                                 [x for r in ok for x in r.get("decode_reps", [])])
            row["load_s"] = median(ok, "load_s")
            row["memory_mib"] = {k: median(ok, "memory_mib", k) for k in ("VmHWM", "RssAnon", "RssFile")}
        out.append(row)
    return out


def _spread(value, reps: list) -> dict:
    """{"median": value, "lo" / "hi": the 10th / 90th percentile of every repetition} (one slow repetition, e.g. a
    preempted one, does not stretch the spread drawn)."""
    reps = reps or ([value] if value is not None else [])
    lo, hi = (float(v) for v in np.percentile(reps, [10, 90])) if reps else (None, None)
    return {"median": value, "lo": lo, "hi": hi}


def ratios(data: dict) -> list:
    """Per thread count with runs of both builds: ours / plain for each TTFT length and for decode tokens/s, taken per
    round (the runs of the same round) — {"ratio": their median, "rounds": each round's, "spread": half their IQR,
    "q1" / "q3"}."""
    out, runs = [], data.get("runs", {})
    for threads in data["plan"]["threads"]:
        ours, plain = runs.get(f"{OURS}_t{threads}", []), runs.get(f"{PLAIN}_t{threads}", [])
        pairs = [(o, p) for o, p in zip(ours, plain) if "error" not in o and "error" not in p]
        if not pairs:
            continue
        row = {"threads": threads,
               "ttft": {n: _ratio([o["ttft_ms"][n] / p["ttft_ms"][n] for o, p in pairs]) for n in lengths(data)},
               "decode": _ratio([o["decode_tokens_per_s"] / p["decode_tokens_per_s"] for o, p in pairs])}
        out.append(row)
    return out


def _ratio(values: list) -> dict:
    q1, med, q3 = np.percentile(values, [25, 50, 75])
    return {"ratio": float(med), "rounds": [float(v) for v in values], "spread": float((q3 - q1) / 2),
            "q1": float(q1), "q3": float(q3)}


def plain_missing(data: dict) -> str:
    """Why the report has no plain row ('' when it has one)."""
    if any(k.startswith(PLAIN + "_t") for k in data.get("runs", {})):
        return ""
    return next((n for n in data.get("notes", []) if n.startswith("no plain row")), "no plain row")


def _target(name: str, measured: str, ok, why: str, note: str) -> dict:
    status = "not measured" if ok is None else ("PASS" if ok else "MISS")
    return {"target": name, "measured": measured, "status": status, "why": "" if status == "PASS" else why, "note": note}


def targets(data: dict) -> list:
    """Decode tokens/s ≥ 0.85 × plain and time to first token ≤ 1.15 × plain at every prompt length, per thread
    count, judged on the median per-round ratio of this run; 'not measured' (with the reason) without a plain row."""
    dec, tt = TARGETS["decode_vs_plain"], TARGETS["ttft_vs_plain"]
    names = (f"decode tokens/s ≥ {dec} × onnxruntime-genai's plain build", f"time to first token ≤ {tt} × the plain build")
    note = "; ".join(n for n, on in (("quick mode: a smoke test, not a measurement", data.get("quick")),
                                     ("the machine was busy: noisy", measure.busy(data["stamp"]))) if on)
    rows = ratios(data)
    if not rows:
        why = plain_missing(data) or "no round where both builds ran (see the errors in the table)"
        return [_target(n, "", None, why, note) for n in names]
    out = []
    for row in rows:
        t, d = row["threads"], row["decode"]
        out.append(_target(f"{names[0]}, {t} thread{'s' * (t > 1)}", f"ours/plain ×{d['ratio']:.3f} "
                           f"({_rounds_text(d)})", d["ratio"] >= dec,
                           f"{100 * (dec - d['ratio']):.1f}% below the target: {WHY_DECODE}", note))
        worst = max(row["ttft"], key=lambda n: row["ttft"][n]["ratio"])
        w = row["ttft"][worst]["ratio"]
        out.append(_target(f"{names[1]} at every prompt length, {t} thread{'s' * (t > 1)}",
                           ", ".join(f"{n} tokens ×{v['ratio']:.3f}" for n, v in row["ttft"].items()) +
                           f" ({_rounds_text(row['ttft'][worst])})", w <= tt,
                           f"×{w:.3f} at {worst} tokens, {100 * (w - tt):.1f}% over: {WHY_TTFT}", note))
    return out


def _rounds_text(r: dict) -> str:
    n = len(r["rounds"])
    return "1 round, no spread" if n == 1 else f"{n} rounds, spread ±{r['spread']:.3f}"


# ---------------------------------------------------------------------------------------------------- markdown

def _table(header: list, rows: list) -> list:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(map(str, r)) + " |" for r in rows]


def _cell(s: dict | None) -> str:
    if not s or s.get("median") is None:
        return "—"
    return f"{_num(s['median'])} ({_num(s['lo'])}–{_num(s['hi'])})"


def _fmt(x, digits: int = 1) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def _num(x: float) -> str:
    """Three significant digits, never in e-notation (0.457, 24.3, 24,024)."""
    if x == 0 or not np.isfinite(x):
        return f"{x:g}"
    return f"{x:,.{min(3, max(0, 2 - int(np.floor(np.log10(abs(x))))))}f}"


def _header_md(data: dict) -> list:
    p = data["plan"]
    lines = ["# edge-lorax bench report: decoder bundle" + (" (quick mode: a smoke test, not a measurement)"
                                                            if data["quick"] else ""), "",
             *measure.stamp_md(data["stamp"]), f"- bundle: `{data['bundle']}` ({data['precision']}, base model "
             f"`{data['base_model']}`), against onnxruntime-genai's plain {data['precision']} build of the same model",
             f"- prompts of {', '.join(map(str, p['prompt_tokens']))} tokens; decode: {p['new_tokens']} new tokens "
             f"after the {min(p['prompt_tokens'])}-token prompt; threads {', '.join(map(str, p['threads']))}; "
             f"{p['rounds']} round{'s' * (p['rounds'] > 1)} of fresh processes, {p['reps']} repetitions each",
             f"- bench user: {data.get('user', {}).get('source', '—')}"]
    if measure.busy(data["stamp"]):
        lines.append("- **warning: the machine was busy (1-min load ≥ 0.5); latencies are noisy, rerun when quiet**")
    return lines


def _targets_md(rows: list) -> list:
    body = [[t["target"], t["measured"], t["status"], " — ".join(x for x in (t["why"], t["note"]) if x)] for t in rows]
    return ["\n## Targets, judged on this run\n"] + _table(["target", "measured", "status", "why / note"], body)


def _latency_md(data: dict) -> list:
    ls = lengths(data)
    body = []
    for r in build_rows(data):
        if "ttft_ms" not in r:
            body.append([r["build"], r["threads"], *["failed"] * (len(ls) + 1), "; ".join(r["errors"])[:120], "", "", ""])
            continue
        m = r["memory_mib"]
        body.append([r["build"], r["threads"], *[_cell(r["ttft_ms"][n]) for n in ls], _cell(r["decode_tokens_per_s"]),
                     _fmt(r["load_s"], 2), _fmt(m["VmHWM"], 0), _fmt(m["RssAnon"], 0), _fmt(m["RssFile"], 0)])
    head = ["build", "threads", *[f"TTFT {n} tokens (ms)" for n in ls], "decode tokens/s", "load s", "peak RSS MiB",
            "RssAnon", "RssFile"]
    out = ["\n## Time to first token and decode speed\n",
           "Median of the rounds' medians (p10–p90 over every repetition); memory after the timings.\n"]
    return out + _table(head, body)


def _ratios_md(data: dict) -> list:
    rows = ratios(data)
    out = ["\n## Ours / plain (per round, the same round's runs; median, spread = half the IQR over rounds)\n"]
    if not rows:
        return out + [plain_missing(data) or "no round where both builds ran"]
    ls = lengths(data)
    body = [[r["threads"], *[f"×{r['ttft'][n]['ratio']:.3f}" for n in ls],
             f"×{r['decode']['ratio']:.3f}", _rounds_text(r["decode"])] for r in rows]
    return out + _table(["threads", *[f"TTFT {n}" for n in ls], "decode tokens/s", "rounds"], body)


SWITCH_LABELS = {"preloaded_us": "activate a registered user for a generation (Generator.set_active_adapter)",
                 "from_onnx_adapter_us": "register a user from its .onnx_adapter (LLM.add_user) + activate",
                 "from_user_npz_us": "register a user from user.npz (LLM.add_user: read, checked, converted) + activate"}


def users(data: dict) -> dict:
    """The bundle's user figures at the first thread count: switch costs (µs, medians over rounds) and resident users
    (N, MiB of RSS and RssAnon growth, medians; bytes per user file)."""
    runs = _ok(data.get("runs", {}).get(f"{OURS}_t{data['plan']['threads'][0]}", []))
    rs = [r["resident"] for r in runs if "resident" in r]
    resident = {"users": rs[0]["users"], "bytes_per_user_file": rs[0]["bytes_per_user_file"],
                "rss_mib": float(np.median([r["rss_mib"] for r in rs])),
                "anon_mib": float(np.median([r["anon_mib"] for r in rs]))} if rs else None
    sw = median_dict(runs, "switch")
    return {"threads": data["plan"]["threads"][0], "switch_us": {k: sw[k] for k in (*SWITCH_LABELS, *sw) if k in sw},
            "resident": resident}


def _resident_text(r: dict) -> str:
    return (f"{r['users']} resident users (each its own .onnx_adapter of {r['bytes_per_user_file']:,} bytes, "
            f"registered): RSS +{r['rss_mib']:.2f} MiB, RssAnon +{r['anon_mib']:.2f} MiB. A plain build has no users: "
            "serving another fine-tune of it means another model.")


def _users_md(data: dict) -> list:
    u = users(data)
    out = [f"\n## Users (the bundle, {u['threads']} thread{'s' * (u['threads'] > 1)}; medians)\n"]
    sw = u["switch_us"]
    out += _table(["operation", "µs"], [[SWITCH_LABELS.get(k, k), _num(v)] for k, v in sw.items()]) if sw else ["not measured"]
    return out + (["", _resident_text(u["resident"])] if u["resident"] else [])


def _method_md(data: dict) -> list:
    return ["\n## Method\n",
            "onnxruntime-genai's plain build is made by the model builder the exporter runs "
            "(`export.decoder.run_model_builder`) from the bundle's base model at the bundle's precision and builder "
            "options. Each (build, threads) runs in a fresh process, the builds alternating (reversed every other "
            "round), both loaded with the runtime's session options and driven by the same og.Generator calls on the "
            "same token ids; the bundle serves the bench user (active in every timing). Time to first token: "
            "appending the prompt to a fresh generator until its first token; decode: tokens/s after the first token "
            "(EOS ignored). Wall time throughout; the ratios and verdicts use the same numbers as the tables and the "
            "picture. `![plot](report.png)`",
            f"\nNotes: {'; '.join(data.get('notes', [])) or 'none'}"]


def markdown(data: dict) -> str:
    lines = (_header_md(data) + _targets_md(data["targets"]) + _latency_md(data) + _ratios_md(data) + _users_md(data)
             + _method_md(data))
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------- picture

def plot_series(data: dict) -> dict:
    """What report.png draws, from the same functions as the tables: per (build, threads) TTFT per length and decode
    tokens/s (median, p10–p90), and the ours / plain ratios the targets judge (each round's, their median, the target)."""
    rows = [r for r in build_rows(data) if "ttft_ms" in r]
    ratio_bars = []
    for r in ratios(data):
        t = r["threads"]
        for n, v in r["ttft"].items():
            ratio_bars.append({"label": f"TTFT {n}, t{t}", **v, "target": TARGETS["ttft_vs_plain"], "at_most": True})
        ratio_bars.append({"label": f"decode, t{t}", **r["decode"], "target": TARGETS["decode_vs_plain"],
                           "at_most": False})
    return {"lengths": lengths(data), "builds": [{"label": f"{r['build']} t{r['threads']}", "ttft": r["ttft_ms"],
                                                  "decode": r["decode_tokens_per_s"]} for r in rows],
            "ratios": ratio_bars, "no_plain": plain_missing(data)}


def _bars(ax, groups: list, series: list, ylabel: str, title: str):
    """Grouped bars (one group per x label, one bar per series), whiskers lo–hi; linear axis."""
    width = 0.8 / max(len(series), 1)
    x = np.arange(len(groups))
    for i, (label, cells) in enumerate(series):
        med = [c["median"] if c and c["median"] is not None else np.nan for c in cells]
        lo = [max(m - c["lo"], 0) if c and c["lo"] is not None else 0 for m, c in zip(med, cells)]
        hi = [max(c["hi"] - m, 0) if c and c["hi"] is not None else 0 for m, c in zip(med, cells)]
        ax.bar(x + i * width, med, width, yerr=[lo, hi], capsize=3, label=label, color=f"C{i}")
    ax.set_xticks(x + width * (len(series) - 1) / 2)
    ax.set_xticklabels(groups)
    ax.set(ylabel=ylabel, title=title, yscale="linear")
    ax.legend(fontsize=7)


def _plot_ratios(ax, s: dict):
    bars = s["ratios"]
    if not bars:
        ax.text(0.5, 0.5, s["no_plain"] or "no ratios", ha="center", va="center", wrap=True, fontsize=8,
                transform=ax.transAxes)
        ax.set(title="ours / plain", xticks=[], yticks=[])
        return
    x = np.arange(len(bars))
    ok = [(b["ratio"] <= b["target"]) if b["at_most"] else (b["ratio"] >= b["target"]) for b in bars]
    ax.bar(x, [b["ratio"] for b in bars], 0.6, color=["C2" if o else "C3" for o in ok],
           yerr=[[b["ratio"] - b["q1"] for b in bars], [b["q3"] - b["ratio"] for b in bars]], capsize=3)
    for i, b in enumerate(bars):
        ax.plot([i] * len(b["rounds"]), b["rounds"], "k.", ms=4)
        ax.hlines(b["target"], i - 0.4, i + 0.4, colors="k", linestyles="--")
        ax.annotate(f"×{b['ratio']:.3f}\ntarget {'≤' if b['at_most'] else '≥'} {b['target']}", (i, b["ratio"]),
                    textcoords="offset points", xytext=(0, -4), ha="center", va="top", fontsize=7, color="w")
    ax.axhline(1.0, color="k", lw=0.5)
    ax.set_xticks(x)
    ax.set_xticklabels([b["label"] for b in bars], rotation=20, fontsize=7)
    ax.set(ylabel="ours / plain: median per-round ratio (whisker: IQR; dots: rounds)", title="the ratios the targets judge "
           "(green: met, dashed: target)", yscale="linear")


def _text_panel(ax, data: dict):
    """The user figures (switch costs, resident users) and the notes, as text."""
    u = users(data)
    lines = [f"users (the bundle, {u['threads']} thread(s); medians)"]
    lines += [f"- {SWITCH_LABELS.get(k, k)}: {_num(v)} µs" for k, v in u["switch_us"].items()] or ["- switch: not measured"]
    lines += [f"- {_resident_text(u['resident'])}"] if u["resident"] else []
    lines += [f"note: {n}" for n in data.get("notes", [])]
    ax.axis("off")
    ax.text(0, 1, "\n".join(_wrap(line, 58) for line in lines), va="top", ha="left", fontsize=7.5,
            transform=ax.transAxes)


def _wrap(text: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width)) or text


def title(data: dict) -> str:
    """The figure's title lines: what, where, which commit, quick mode, and the busy warning."""
    st = data["stamp"]
    lines = [f"edge-lorax bench, decoder bundle ({data['precision']}) vs onnxruntime-genai's plain build — "
             f"{st['machine']['cpu']}, commit {st['git_commit'][:10]}"]
    if data.get("quick"):
        lines.append("quick mode: a smoke test, not a measurement")
    if measure.busy(st):
        lines.append("warning: the machine was busy (1-min load ≥ 0.5); latencies are noisy, rerun when quiet")
    return "\n".join(lines)


def figure(data: dict):
    """The report's matplotlib Figure (plot_series drawn): TTFT, decode tokens/s, the judged ratios, users."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = plot_series(data)
    fig, axes = plt.subplots(1, 4, figsize=(20, 5.2), gridspec_kw={"width_ratios": [1.2, 0.8, 1.2, 1.1]})
    _bars(axes[0], [f"{n} tokens" for n in s["lengths"]], [(b["label"], [b["ttft"][n] for n in s["lengths"]])
                                                          for b in s["builds"]], "ms (median; whisker: p10–p90 of every repetition)",
          "time to first token")
    _bars(axes[1], ["decode"], [(b["label"], [b["decode"]]) for b in s["builds"]], "tokens/s (median; whisker: p10–p90)",
          f"decode, {data['plan']['new_tokens']} new tokens")
    _plot_ratios(axes[2], s)
    _text_panel(axes[3], data)
    fig.suptitle(title(data), color="C3" if measure.busy(data["stamp"]) else "k", fontsize=10)
    fig.tight_layout()
    return fig


def write_llm_report(data: dict, out_dir: Path) -> Path:
    """report.json, report.md, report.png into out_dir (each written atomically); returns out_dir."""
    import matplotlib.pyplot as plt

    data["targets"] = targets(data)
    fig = figure(data)
    try:
        return measure.write_report_files(out_dir, data, markdown(data), lambda path: fig.savefig(path, dpi=100, format="png"))
    finally:
        plt.close(fig)
