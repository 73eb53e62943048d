"""Train the committed source LoRA adapters into adapters/ and write adapters/README.md: the twelve VADER tasks
(adapters/<domain>-<type>/) and two tasks beyond sentiment, spam:sms and trec:coarse (adapters/spam-sms/,
adapters/trec-coarse/, issue 12's wider encoder family).

    .venv/bin/python benchmarks/train_sources.py                 # all fourteen (skips folders that exist)
    .venv/bin/python benchmarks/train_sources.py --only tweets-binary --overwrite
    .venv/bin/python benchmarks/train_sources.py --only spam-sms trec-coarse --threads 1
    .venv/bin/python benchmarks/train_sources.py --readme-only   # rebuild the table from the training.json files

Every adapter: rank 8, alpha 16 on query and value, task head in modules_to_save, seed 0, 150 steps of batch 32,
max length 64, lr 2e-3 (6 % warm-up, linear decay); 2 torch threads for the VADER twelve, 1 for spam/TREC (the
count is in each training.json). Same code + seed + thread count -> the same weights (CPU); measured numbers and
timings land in each folder's training.json (with the stamp of the run that trained it) and the README table.
"""

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edge_lorax.bench import measure  # noqa: E402
from edge_lorax.builder.baselines import train_lora  # noqa: E402
from edge_lorax.builder.data import VADER_TASKS, load_task  # noqa: E402
from edge_lorax.builder.loop import TrainConfig  # noqa: E402

EXTRA_TASKS = ("spam:sms", "trec:coarse")  # beyond sentiment: same settings as the VADER family
SOURCE_TASKS = VADER_TASKS + EXTRA_TASKS  # every source task, VADER first (the README table's order)
CONFIG = TrainConfig(lr=2e-3, batch_size=32, max_length=64, steps=150, seed=0, eval_every=50)
LORA = {"method": "lora", "rank": 8, "alpha": 16, "targets": ("query", "value")}
COMMAND = ".venv/bin/python benchmarks/train_sources.py --overwrite"
EXTRA_COMMAND = ".venv/bin/python benchmarks/train_sources.py --only spam-sms trec-coarse --threads 1"
WIDE_MARK = "\n## Wider family (issue 30)\n"  # train_sources_wide.py's section at the end of the README: kept
VERSIONS = ("torch", "transformers", "peft", "numpy", "edge-lorax")
CODE = ("edge_lorax/builder", "edge_lorax/formats", "benchmarks/train_sources.py", "data")  # what training depends on


def folder_name(spec: str) -> str:
    """vader:tweets-binary -> tweets-binary; spam:sms -> spam-sms; trec:coarse -> trec-coarse."""
    return spec.removeprefix("vader:").replace(":", "-")


def train_all(out: Path, only: set, overwrite: bool, stamp: dict | None = None):
    """Train each selected task whose folder is missing (or all with overwrite); one summary line each on stdout.
    With `stamp`, the run's stamp (machine, commit, command) is added to each new training.json as "stamp"."""
    for spec in SOURCE_TASKS:
        name = folder_name(spec)
        if (only and name not in only) or ((out / name).exists() and not overwrite):
            continue
        print(f"training {name}", file=sys.stderr)
        report = train_lora(load_task(spec, seed=CONFIG.seed), out / name, config=CONFIG, overwrite=overwrite, **LORA)
        if stamp is not None:
            path = out / name / "training.json"
            info = json.loads(path.read_text())
            path.write_text(measure.portable(json.dumps({**info, "wall_s": report.wall_s,
                                                         "stamp": measure.finish(stamp)}, indent=1) + "\n"))
        print(report.summary(), flush=True)


def table_rows(out: Path) -> list[str]:
    """One markdown row per adapter folder with a training.json."""
    rows = []
    for spec in SOURCE_TASKS:
        path = out / folder_name(spec) / "training.json"
        if not path.is_file():
            continue
        info = json.loads(path.read_text())
        test, val = info["test"], info["validation"]
        if info["kind"] == "classification":
            score = f"acc {test['accuracy']:.3f}, macro-F1 {test['macro_f1']:.3f}"
            vscore = f"acc {val['accuracy']:.3f}"
        else:
            score, vscore = f"Pearson {test['pearson']:.3f}, MSE {test['mse']:.3f}", f"Pearson {val['pearson']:.3f}"
        weights = out / folder_name(spec) / "adapter_model.safetensors"
        rows.append(f"| `{folder_name(spec)}` | {info['rows']['train']:,} / {info['rows']['test']:,} | {score} | {vscore} | "
                    f"{trivial_baseline(spec)} | {info['adapter_params']:,} + {info['head_params']:,} | "
                    f"{weights.stat().st_size:,} | {info['s_per_step']:.2f} |")
    return rows


def trivial_baseline(spec: str) -> str:
    """What a trivial predictor scores on the test split: majority-class accuracy, or MSE of the train mean."""
    import numpy as np

    task = load_task(spec, seed=CONFIG.seed)
    if task.kind == "classification":
        return f"majority {np.bincount(task.test.targets).max() / len(task.test):.3f}"
    return f"MSE {float(np.mean((task.test.targets - task.train.targets.mean()) ** 2)):.3f}"


def _training_stamp(out: Path) -> str | None:
    """The stamp block of the README written when the adapters were trained (kept by --readme-only: a re-render
    measures nothing, so the machine and commit that trained them stay)."""
    old = out / "README.md"
    text = old.read_text() if old.is_file() else ""
    if "Measured on:" not in text or "\nThe machine was shared" not in text:
        return None
    return text.split("Measured on:", 1)[1].split("\nThe machine was shared", 1)[0].strip()


def extra_lines(out: Path) -> list[str]:
    """Per spam/TREC adapter: the stamp of the run that trained it (from its training.json), threads and wall time."""
    lines = []
    for spec in EXTRA_TASKS:
        path = out / folder_name(spec) / "training.json"
        info = json.loads(path.read_text()) if path.is_file() else {}
        if "stamp" in info:
            st = info["stamp"]
            lines.append(f"- `{folder_name(spec)}`: `{st['command']}`, commit `{st['git_commit']}`, "
                         f"{st['machine']['cpu']}, {info['threads']} torch thread(s), load average at start "
                         f"{st['machine']['load_average']}; {info['steps']} steps in {info['wall_s']:.0f} s wall "
                         f"(load + train + evaluate + save), {info['s_per_step']:.2f} s/step, started {st['started']}.")
    return lines or ["- (not trained yet: `" + EXTRA_COMMAND + "`)"]


def write_readme(out: Path, stamp: dict, keep_training_stamp: bool = False):
    """adapters/README.md: what the folders are, the command, the stamp (machine, commit, versions), the table.
    The VADER twelve's stamp block is kept when they were not retrained in this run (or with keep_training_stamp)."""
    import torch

    lines = "\n".join([*measure.stamp_md(stamp), f"- torch threads: {torch.get_num_threads()}; `+dirty` judged on: "
                       + ", ".join(CODE)])
    lines = (_training_stamp(out) if keep_training_stamp else None) or lines
    text = README.format(command=COMMAND, stamp=lines, table="\n".join(table_rows(out)),
                         extra_command=EXTRA_COMMAND, extra="\n".join(extra_lines(out)))
    old = out / "README.md"
    wide = old.read_text().partition(WIDE_MARK)[1:] if old.is_file() else ("", "")
    (out / "README.md").write_text(measure.portable(text.rstrip("\n") + "\n" + "".join(wide) if wide[0] else text))


README = """# Source adapter family (committed)

Fourteen PEFT LoRA adapters on `sentence-transformers/all-MiniLM-L6-v2` (the embedded default base model): one per
built-in VADER task (`vader:<domain>-<binary|3class|regression>`, see `data/vader/README.md`), and two beyond
sentiment, `spam-sms` (`spam:sms`, ham/spam, UCI SMS Spam Collection, CC BY 4.0) and `trec-coarse` (`trec:coarse`,
six TREC question types). They are the "recycled" adapters a subspace is built from; the demo and tests use the
VADER twelve without retraining, `benchmarks/encoder_loo/` uses all fourteen.

Each folder is a standard PEFT adapter (`adapter_config.json` with the portable base id, `adapter_model.safetensors`)
plus `training.json` (task, labels, settings, metrics, timings, versions) and a short `README.md` model card.
Load one with `PeftModel.from_pretrained(AutoModelForSequenceClassification.from_pretrained(BASE, num_labels=N), DIR)`.

Settings (all fourteen): LoRA rank 8, alpha 16, on `query` and `value` of all 6 layers, the task head (`classifier`,
2 or 3 classes, or 1 output for regression) trained and saved via `modules_to_save`; seed 0; 150 AdamW steps of
batch 32, max length 64, lr 2e-3 (6 % warm-up, linear decay), no early stopping (final weights); the 80/10/10 split
of seed 0. Regression trains MSE on the raw valence scale (−4 … 4).

Reproduce (about 0.4 s/step on 2 free cores; the whole family in ~15 min; deterministic on CPU for the same thread count):

```bash
{command}
```

Measured on:

{stamp}

The machine was shared with other jobs while training (load average up to ~5 on 2 cores), so s/step is an upper
bound, not a benchmark: ~0.6–0.7 s/step when the machine was quiet, 2.3–4.3 s/step under load; batches are padded
to their longest sentence (mean ~20–30 tokens), not to 64. A second run of `--only nyt-binary` gave a
byte-identical `adapter_model.safetensors`.

| adapter | train / test rows | test | validation | trivial baseline (test) | trainable: LoRA + head | adapter bytes | s/step |
|---|---|---|---|---|---|---|---|
{table}

The VADER twelve were trained by the command above in one run; the spam and TREC adapters later, with
`{extra_command}` (one torch thread, on the same kind of shared machine):

{extra}

Trivial baseline: the majority class's share of the test split (classification), or the MSE of predicting the
training mean (regression).
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "adapters")
    parser.add_argument("--only", nargs="*", default=[], help="folder names, e.g. tweets-binary nyt-3class")
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--readme-only", action="store_true")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    stamp = measure.stamp(shlex.join([".venv/bin/python", "benchmarks/train_sources.py", *sys.argv[1:]]), VERSIONS, CODE)
    extra_only = bool(args.only) and set(args.only) <= {folder_name(t) for t in EXTRA_TASKS}
    if not args.readme_only:
        train_all(args.out, set(args.only), args.overwrite, stamp)
    write_readme(args.out, measure.finish(stamp), keep_training_stamp=args.readme_only or extra_only)
    print(f"wrote {args.out / 'README.md'}", file=sys.stderr)


if __name__ == "__main__":
    main()
