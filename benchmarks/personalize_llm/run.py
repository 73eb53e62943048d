"""On-device decoder personalisation vs host training (issue 28): `edge-lorax personalize` on a SmolLM2 decoder
bundle against `edge-lorax train --model smollm2` on the same local examples, the base model (the start), and the
speed / memory of the fit.

Set-up (cached under ~/.cache/edge-lorax/bench-personalize-llm): a SmolLM2 subspace from the committed decoder
adapters minus the held-out targets' own (K=8, mean kept: demo --llm's recipe) and one int8 decoder bundle with its
gradient graph (`edge-lorax export --model smollm2 --quantize int8`, gradient on by default).
Cells (each one JSON file under runs/, so a rerun skips finished cells; every command its own process, wall seconds
and peak RSS = VmHWM at exit):
- speed-t{1,2}: `personalize --steps 40 --threads T` on 256 spam rows (batch 8, <= 96 tokens)
- {target}-{rows}-s{seed}-device: `personalize --steps 40 --threads 1` (80 % fit, 20 % held out)
- {target}-{rows}-s{seed}-host: `train --model smollm2 --steps 40 --batch-size 8 --lr 0.05 --max-length 96
  --threads 1` on the same file (its own 80/10/10 split: 80 % trained on)
- text-{docs}-s{seed}-{device,host} (the free-text set): a person's style as plain text, one VADER tweet per line
  (data/vader/tweets.tsv, MIT; duplicates dropped, a fixed seeded HELD_DOCS tweets held out for scoring, the
  {docs} training documents a seeded sample of the rest); `personalize --steps 40 --threads 1` and `train --model
  smollm2 ... --max-length 96` on the same .txt: both read it with runtime.local_data (loss on every token) and
  fit the same 80 % of the documents (personalize's seeded split), 40 steps of batch 8, lr 0.05
Fits run on 1 thread (the benchmark shares a 2-core machine with other jobs); the order is seed 0 at 256 rows
for every target, then 64 rows, then the speed cells, then further seeds (the text phase: seed by seed, 256 then
64 documents).
The free-text users (and the base model) are scored by held-out perplexity on the HELD_DOCS tweets: exp of the
mean next-token loss over every token after each tweet's first, on the bundle's own int8 model.onnx (Scorer).
Every user (and the base model) is scored by one evaluator: exact match of the greedy answer (label word + EOS) on
the first TEST_ROWS test rows, teacher-forced on the bundle's own int8 model.onnx (runtime.personalize_llm.Scorer:
greedy yields exactly the answer iff each answer token is the argmax).

    nice -n 15 .venv/bin/python benchmarks/personalize_llm/run.py && .venv/bin/python benchmarks/personalize_llm/report.py
"""

import argparse
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))

RUNS = HERE / "runs"
CACHE = Path.home() / ".cache" / "edge-lorax" / "bench-personalize-llm"
# benchmarks/decoder/loo.py's HELD_OUT, each with its own adapter (left out of the subspace)
TARGETS = {"tweets": ("vader:tweets-binary", "tweets-binary"), "spam": ("spam:sms", "spam-sms"),
           "trec": ("trec:coarse", "trec-coarse"), "food": ("disaster:food", "disaster-food")}
TEST_ROWS = 100
HELD_DOCS = 200  # free-text set: tweets held out for perplexity, fixed across seeds and sizes
STEPS, LR = 40, 0.05  # benchmarks/decoder's schedule for EigenLoRAx users (40 steps of batch 8, lr 0.05)

def measured(args: list) -> dict:
    """`edge-lorax ARGS` as its own process (edge_lorax.bench.measure.run_cli): wall s, peak RSS, exit, JSON stdout."""
    from edge_lorax.bench.measure import run_cli

    return run_cli(args, CACHE / f"rss-{os.getpid()}.txt")


def bundle() -> tuple:
    """(subspace, int8 decoder bundle with its gradient graph), built once."""
    sub, out = CACHE / "subspace", CACHE / "bundle"
    if not sub.is_dir():
        from edge_lorax.builder.subspace import build_subspace
        from edge_lorax.formats.subspace import write_subspace

        held = {folder for _, folder in TARGETS.values()}
        sources = sorted(p for p in (ROOT / "adapters-smollm2").iterdir() if p.is_dir() and p.name not in held)
        write_subspace(build_subspace(sources, components=8, mean="keep"), sub, overwrite=True)
    if not (out / "manifest.json").is_file():
        done = measured(["export", "--model", "smollm2", "--subspace", sub, "-o", out, "--quantize", "int8", "--json",
                         "--overwrite"])
        (CACHE / "export.json").write_text(json.dumps(done, indent=1))
        RUNS.mkdir(parents=True, exist_ok=True)
        cell = {"cell": "export", "command": "edge-lorax export --model smollm2 --subspace SUB -o BUNDLE --quantize int8 "
                "--json --overwrite", **done}
        (RUNS / "export.json").write_text(portable(json.dumps(cell, indent=1, default=str)) + "\n")
        if done["exit"]:
            raise SystemExit(f"export failed: {done['stderr_tail']}")
    return sub, out


def local_file(target: str, rows: int, seed: int) -> tuple:
    """(local CSV of `rows` train rows, a seeded sample; test rows [(text, label index)]; labels)."""
    import numpy as np

    from edge_lorax.builder.data import load_task

    task = load_task(TARGETS[target][0])
    path = CACHE / target / f"local-{rows}-{seed}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_file():
        pick = np.random.default_rng(seed).permutation(len(task.train))[:rows]
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["text", "label"])
            w.writerows((task.train.texts[i], task.labels[int(task.train.targets[i])]) for i in pick)
    test = list(zip(task.test.texts[:TEST_ROWS], (int(y) for y in task.test.targets[:TEST_ROWS])))
    return path, test, list(task.labels)


def tweets() -> tuple:
    """(held-out tweets, the pool training documents are drawn from): data/vader/tweets.tsv's texts, whitespace
    runs as one space, duplicates dropped, a fixed seeded HELD_DOCS held out."""
    import numpy as np

    with open(ROOT / "data" / "vader" / "tweets.tsv", newline="", encoding="utf-8") as f:
        texts = [" ".join(row["text"].split()) for row in csv.DictReader(f, delimiter="\t")]
    texts = list(dict.fromkeys(t for t in texts if t))
    order = np.random.default_rng(2028).permutation(len(texts))
    return [texts[i] for i in order[:HELD_DOCS]], [texts[i] for i in order[HELD_DOCS:]]


def text_files(docs: int, seed: int) -> tuple:
    """(local .txt of `docs` training tweets, a seeded sample of the pool; the held-out .txt), one tweet a line."""
    import numpy as np

    held, pool = tweets()
    out = CACHE / "text"
    out.mkdir(parents=True, exist_ok=True)
    local, held_path = out / f"local-{docs}-{seed}.txt", out / "heldout.txt"
    if not held_path.is_file():
        held_path.write_text("".join(t + "\n" for t in held), encoding="utf-8")
    if not local.is_file():
        pick = np.random.default_rng(seed).permutation(len(pool))[:docs]
        local.write_text("".join(pool[i] + "\n" for i in pick), encoding="utf-8")
    return local, held_path


def perplexity(bundle_dir: Path, user, held_path: Path) -> dict:
    """Held-out perplexity of a user (None: the base model) on the held-out tweets (module docstring)."""
    import math

    import numpy as np

    from edge_lorax.formats.bundle import user_input_shapes
    from edge_lorax.formats.user import read_user
    from edge_lorax.runtime import personalize_llm as pl
    from edge_lorax.runtime.local_data import read_local_data

    manifest = pl.decoder_manifest(bundle_dir)
    docs = read_local_data(held_path, bundle_dir, pl._token_ids(manifest)[0], pl.MAX_LENGTH,
                           manifest["kv"]["context_length"]).examples
    coeffs = (read_user(user).inputs() if user else
              {k: np.zeros(s, np.float32) for k, s in user_input_shapes(manifest).items()})
    score = pl.Scorer(bundle_dir, manifest, 1).score(list(docs), coeffs)
    return {"perplexity": round(math.exp(score["loss"]), 4), "token_loss": score["loss"], "documents": len(docs),
            "tokens": int(pl.answer_tokens(list(docs)))}


def exact_match(bundle_dir: Path, user, test: list, labels: list) -> dict:
    """Exact match (%) and mean answer loss of a user (None: the base model) on the test rows (module docstring)."""
    import numpy as np

    from edge_lorax.formats.bundle import user_input_shapes
    from edge_lorax.formats.user import read_user
    from edge_lorax.runtime import personalize_llm as pl
    from edge_lorax.runtime.local_data import Encoder, Example, task_prompt

    manifest = pl.decoder_manifest(bundle_dir)
    enc = Encoder(bundle_dir, pl._token_ids(manifest)[0])
    answers = [enc.ids(lab if enc.chat else f" {lab}") + [enc.eos] for lab in labels]
    rows = []
    for i, (text, y) in enumerate(test):
        prompt = task_prompt(enc, text, labels)[-(pl.MAX_LENGTH - len(answers[y])):]
        rows.append(Example(tuple(prompt + answers[y]), tuple([False] * len(prompt) + [True] * len(answers[y])), i))
    coeffs = (read_user(user).inputs() if user else
              {k: np.zeros(s, np.float32) for k, s in user_input_shapes(manifest).items()})
    score = pl.Scorer(bundle_dir, manifest, 1).score(rows, coeffs)
    return {"exact_match_pct": round(100 * score["exact_match"], 2), "answer_loss": score["loss"]}


def portable(text: str) -> str:
    """A cell's JSON with no local absolute path: the cache and the checkout as ~/.cache/... and '.'."""
    return text.replace(str(CACHE), "~/.cache/edge-lorax/bench-personalize-llm").replace(str(ROOT), ".")


def run_cell(name: str, args: list, scoring=None) -> dict:
    path = RUNS / f"{name}.json"
    if path.is_file():
        return json.loads(path.read_text())
    print(f"[personalize_llm] {name}", file=sys.stderr, flush=True)
    load = os.getloadavg()[0]  # the machine is shared: the 1-minute load average before and after each cell
    cell = {"cell": name, "command": "edge-lorax " + " ".join(str(a) for a in args), **measured(args)}
    cell["load_1min"] = [round(load, 2), round(os.getloadavg()[0], 2)]
    cell["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                    cwd=ROOT).stdout.strip()  # the code the cell ran (device cells: 2 sessions)
    if scoring is not None and cell["exit"] == 0:
        cell["test"] = scoring()
    RUNS.mkdir(parents=True, exist_ok=True)
    path.write_text(portable(json.dumps(cell, indent=1, default=str)) + "\n")
    return cell


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", default="256,64")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--targets", default=",".join(TARGETS))
    ap.add_argument("--phases", default="speed,fits,text")
    a = ap.parse_args()
    sub, out = bundle()
    seeds = [int(x) for x in a.seeds.split(",")]
    for seed in seeds:
        if "fits" in a.phases:
            for rows in map(int, a.rows.split(",")):
                for target in a.targets.split(","):
                    fits(target, rows, seed, sub, out)
        if "speed" in a.phases and seed == seeds[0]:
            speed(out)
        if "text" in a.phases:
            for docs in map(int, a.rows.split(",")):
                text_fits(docs, seed, sub, out)


def speed(out: Path):
    """speed-t{1,2}: 40 steps of batch 8 on 256 spam rows, 1 and 2 threads."""
    local, _, _ = local_file("spam", 256, 0)
    for t in (1, 2):
        run_cell(f"speed-t{t}", ["personalize", out, "--data", local, "-o", CACHE / f"speed-t{t}.npz", "--steps",
                                 STEPS, "--threads", t, "--json", "--overwrite"])

def text_fits(docs: int, seed: int, sub: Path, out: Path):
    """text-{docs}-s{seed}-{device,host}: the free-text set (module docstring); text-base once."""
    local, held = text_files(docs, seed)
    base = RUNS / "text-base.json"
    if not base.is_file():
        RUNS.mkdir(parents=True, exist_ok=True)
        base.write_text(json.dumps({"cell": base.stem, "test": perplexity(out, None, held)}) + "\n")
    for kind, args in fit_commands(local, CACHE / "text", f"{docs}-s{seed}", seed, sub, out).items():
        run_cell(f"text-{docs}-s{seed}-{kind}", [*args, "--overwrite"],
                 lambda u=args[args.index("-o") + 1]: perplexity(out, u, held))


def fit_commands(local: Path, folder: Path, stem: str, seed: int, sub: Path, out: Path) -> dict:
    """{"device": personalize's arguments, "host": train's}: the same local file, 40 steps of batch 8, 1 thread."""
    return {"device": ["personalize", out, "--data", local, "-o", folder / f"{stem}-device.npz", "--steps", STEPS,
                       "--threads", 1, "--seed", seed, "--json"],
            "host": ["train", "--model", "smollm2", "--subspace", sub, "--data", local, "-o", folder / f"{stem}-host.npz",
                     "--steps", STEPS, "--batch-size", 8, "--lr", LR, "--max-length", 96, "--threads", 1, "--seed", seed]}


def fits(target: str, rows: int, seed: int, sub: Path, out: Path):
    local, test, labels = local_file(target, rows, seed)
    base = RUNS / f"{target}-base.json"
    if not base.is_file():
        RUNS.mkdir(parents=True, exist_ok=True)
        base.write_text(json.dumps({"cell": base.stem, "test": exact_match(out, None, test, labels)}) + "\n")
    for kind, args in fit_commands(local, CACHE / target, f"{rows}-s{seed}", seed, sub, out).items():
        run_cell(f"{target}-{rows}-s{seed}-{kind}", [*args, "--overwrite"],
                 lambda u=args[args.index("-o") + 1]: exact_match(out, u, test, labels))


if __name__ == "__main__":
    main()
