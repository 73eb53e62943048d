"""The Gemma 3 270M decoder family (issue 27): source LoRAs into adapters-gemma3/, then a small leave-one-task-out
comparison into benchmarks/decoder/runs-gemma3/ (EigenLoRAx vs LoRA r=8 vs a random subspace, 2 held-out tasks,
seed 0), on the embedded `--model gemma3-270m`.

    nice -n 15 .venv/bin/python benchmarks/decoder/gemma3.py sources   # resumable: existing folders are skipped
    nice -n 15 .venv/bin/python benchmarks/decoder/gemma3.py loo       # resumable: one JSON per run
    .venv/bin/python benchmarks/decoder/gemma3.py readme report        # adapters-gemma3/README.md, runs-gemma3 report

Smaller than the SmolLM2 study (benchmarks/decoder/sources.py, loo.py) because the machine is two shared cores:
six sources, 24 AdamW steps of batch 4 (96 rows seen), prompt + answer <= 64 tokens, class-balanced training rows,
60 test rows, no validation rows and no learning-rate sweep: every method runs at the rate the SmolLM2 sweep picked
(LoRA 2e-3, EigenLoRAx 5e-2, random 1e-1). The LoRA r=8 baseline of a held-out task is its own source adapter (the
same rows, steps, seed and rate as the other methods). Gemma 3 270M is a base model without a chat template, so
prompts use the plain template (the text, then "Answer:"; the label word follows). Does not export or benchmark.
"""

import json
import os
import shlex
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

import common  # noqa: E402
import loo  # noqa: E402

from edge_lorax.bench import measure  # noqa: E402
from edge_lorax.builder.loop import TrainConfig  # noqa: E402

MODEL, ADAPTERS, RUNS = "gemma3-270m", ROOT / "adapters-gemma3", HERE / "runs-gemma3"
SOURCES = ("vader:tweets-binary", "spam:sms", "trec:coarse", "vader:movies-binary", "vader:amazon-binary",
           "disaster:request")
HELD_OUT = ("vader:tweets-binary", "trec:coarse")  # sentiment (2 sentiment siblings) and a task of its own type
TRAIN_ROWS, TEST_ROWS = 600, 60
CONFIG = TrainConfig(lr=2e-3, batch_size=4, max_length=64, steps=24, seed=0, eval_every=0, eval_batch_size=12)
LORA = {"method": "lora", "rank": 8, "alpha": 16, "targets": ("q_proj", "v_proj")}
RATES = {"eigen-keep": 5e-2, "random": 1e-1}  # SmolLM2's sweep picks (benchmarks/decoder/report.md), not re-swept
VERSIONS = ("torch", "transformers", "peft", "numpy", "edge-lorax")
CODE = ("edge_lorax/builder", "edge_lorax/formats", "benchmarks/decoder")
COMMAND = "nice -n 15 .venv/bin/python benchmarks/decoder/gemma3.py"


def task_of(spec: str):
    """The capped, class-balanced task: TRAIN_ROWS training rows (an equal share per class), TEST_ROWS test rows."""
    common.TEST_ROWS = TEST_ROWS  # read by capped_task at call time
    return common.capped_task(spec, TRAIN_ROWS, val_rows=0, balanced=True)


def _write_json(path: Path, info: dict):
    tmp = path.with_suffix(".tmp")
    tmp.write_text(measure.portable(json.dumps(info, indent=1) + "\n"))
    os.replace(tmp, path)


def train_sources():
    """Train each source whose folder is missing; training.json gains wall_s and the stamp."""
    from edge_lorax.builder.baselines import train_lora

    ADAPTERS.mkdir(exist_ok=True)
    for spec in SOURCES:
        out = ADAPTERS / common.folder_name(spec)
        if out.exists():
            continue
        print(f"training {out.name}", file=sys.stderr, flush=True)
        stamp = measure.stamp(f"{COMMAND} sources", VERSIONS, CODE)
        report = train_lora(task_of(spec), out, model=MODEL, config=CONFIG, progress=False, **LORA)
        info = {**json.loads((out / "training.json").read_text()), "wall_s": report.wall_s, "stamp": measure.finish(stamp)}
        _write_json(out / "training.json", info)
        print(report.summary(), flush=True)


def _point_loo_at_gemma():
    """loo.py's ingredients (subspace_for, model_for, train_run) read these module globals."""
    loo.MODEL, loo.ADAPTERS, loo.SOURCE_TASKS = MODEL, ADAPTERS, SOURCES


def _evaluate(run, task, tokenizer) -> dict:
    """zero-shot (the base model) or projection (the held-out adapter projected onto its LOO subspace), test rows."""
    from edge_lorax.builder.loop import objective_for
    from edge_lorax.builder.models import CAUSAL_LM, load_causal_lm, resolve_model
    from edge_lorax.builder.project import project_adapter
    from edge_lorax.builder.train import apply_user, coeff_model

    objective = objective_for(CAUSAL_LM, task, tokenizer, CONFIG.max_length)
    if run.method == "zero-shot":
        net, extra = load_causal_lm(resolve_model(MODEL)), {"params": 0, "user_bytes": 0}
    else:
        sub = loo.subspace_for(run.task)
        proj = project_adapter(sub, ADAPTERS / common.folder_name(run.task))
        net = apply_user(coeff_model(MODEL, sub, task.num_labels, kind=CAUSAL_LM), proj.coeffs)
        extra = {"relative_error": round(proj.overall, 6), "params": 0, "user_bytes": proj.coeffs.nbytes()}
    test = objective.evaluate(net, objective.encode(task.test), CONFIG.eval_batch_size)
    return {"test": loo._rounded(test), **extra, "steps": 0}


def loo_runs() -> list:
    """The plan, cheapest first: zero-shot, projection, then EigenLoRAx and random per held-out task."""
    return ([loo.Run(t, m, stage=m) for m in ("zero-shot", "projection") for t in HELD_OUT]
            + [loo.Run(t, m, lr=RATES[m]) for t in HELD_OUT for m in RATES])


def run_loo():
    """Each missing run of the plan, one JSON under RUNS."""
    from edge_lorax.builder.models import load_tokenizer, resolve_model

    _point_loo_at_gemma()
    RUNS.mkdir(exist_ok=True)
    tokenizer = load_tokenizer(resolve_model(MODEL))
    for run in loo_runs():
        path = RUNS / f"{run.key}.json"
        if path.exists():
            continue
        task, start = task_of(run.task), time.perf_counter()
        stamp = measure.stamp(f"{COMMAND} loo", VERSIONS, CODE)
        measured = _evaluate(run, task, tokenizer) if run.lr is None else \
            loo.train_run(run, task, tokenizer, replace(CONFIG, lr=run.lr))
        result = {**asdict(run), **measured, "split_rows": {"train": len(task.train), "test": len(task.test)},
                  "wall_s": round(time.perf_counter() - start, 2), "config": {**asdict(CONFIG), "lr": run.lr},
                  "stamp": measure.finish(stamp)}
        _write_json(path, result)
        print(f"{run.key}: test {result['test']['accuracy']} ({result['wall_s']} s)", file=sys.stderr, flush=True)


def main(argv=None):
    import torch

    stages = (argv if argv is not None else sys.argv[1:]) or ["sources", "loo", "readme", "report"]
    torch.set_num_threads(int(os.environ.get("THREADS", "2")))
    for stage in stages:
        if stage == "sources":
            train_sources()
        elif stage == "loo":
            run_loo()
        elif stage in ("readme", "report"):
            import gemma3_report

            (gemma3_report.write_readme if stage == "readme" else gemma3_report.write_report)()
        else:
            raise SystemExit(f"unknown stage {stage!r}: use sources, loo, readme, report ({shlex.quote(COMMAND)})")


if __name__ == "__main__":
    main()
