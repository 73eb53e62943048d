"""On-device personalisation vs host training (issue 14): `edge-lorax personalize` against `edge-lorax train` on the
same local examples, the head alone, and the starting user.

Targets: the four VADER domains (binary) and two non-sentiment tasks (spam:sms, disaster:request), which the method
was tuned on; added after (issue 25, cause 7): trec:coarse (6 question types) and disaster:related (binary, skewed).
Each target gets a MiniLM subspace built without its own adapters (K=8, mean kept; sources.npz kept) and a
classification bundle (fp32 + int8, as many labels as the task, zero coefficients: the start user is the base model).
--steps N fits the device cells by exactly N steps instead of the 55 s budget (machine-independent: the added
targets' cells, `--steps 120`); benchmarks/personalize/robust.py runs the controlled before/after fits.
Per target, local rows (64 / 256, a seeded sample of the train split) and seed:
- device: `edge-lorax personalize --threads 1` (the defaults: start -> mix -> exact gradients on the bundle's
  model.grad.onnx, 55 s budget for the fit);
- refine: `--method refine` (start -> mix -> forward-only SPSA over every coefficient; the defaults before the
  gradient graph: cells `*-refine*.json` come from then);
- head: `--method head` (the start user's features, head fitted in closed form);
- int8: the device fit on the int8 model (seed 0 only);
- host: `edge-lorax train --threads 1` on the same file (80 steps of batch 16, lr 2e-2, max length 48: the paper
  table's budget and its swept rate for EigenLoRAx);
- inference: a plain session of the same bundle predicting the 256 local texts (the RSS the device fit is held to).
Every command runs as its own process: wall seconds and peak RSS (ru_maxrss = VmHWM, from os.wait4). Test accuracy
on the first 300 test rows through the runtime (fp32). Each cell is one JSON file under runs/: resumable.

    .venv/bin/python benchmarks/personalize/run.py --seeds 0,1,2 && .venv/bin/python benchmarks/personalize/report.py
"""

import argparse
import csv
import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))

from edge_lorax.bench.measure import finish, portable, stamp  # noqa: E402

RUNS = HERE / "runs"
CACHE = Path.home() / ".cache" / "edge-lorax" / "bench-personalize"
ADAPTERS = ROOT / "adapters"
TARGETS = {"nyt": ("vader:nyt-binary", "nyt-"), "amazon": ("vader:amazon-binary", "amazon-"),
           "movies": ("vader:movies-binary", "movies-"), "tweets": ("vader:tweets-binary", "tweets-"),
           "spam": ("spam:sms", "spam-"), "disaster": ("disaster:request", "disaster-"),
           "trec": ("trec:coarse", "trec-"), "related": ("disaster:related", "disaster-")}
TEST_ROWS = 300
KINDS = ("device", "head", "host", "int8", "inference", "refine")
STEPS = []  # --steps N: device fits of N optimizer steps (mix and exact halves) instead of the 55 s budget


def _bundle(target: str) -> Path:
    """The target's leave-own-out subspace (with sources) and classification bundle, cached."""
    from dataclasses import replace

    from edge_lorax.builder.project import project_sources
    from edge_lorax.builder.subspace import build_subspace
    from edge_lorax.export import ExportConfig, export_bundle
    from edge_lorax.formats.subspace import write_subspace

    out = CACHE / target
    if (out / "bundle" / "manifest.json").is_file():
        return out / "bundle"
    sources = sorted(p for p in ADAPTERS.iterdir() if p.is_dir() and not p.name.startswith(TARGETS[target][1]))
    sub = build_subspace(sources, components=8, mean="keep", seed=0)
    write_subspace(sub, out / "subspace", overwrite=True, sources=project_sources(sub, sources))
    from edge_lorax.builder.data import load_task

    labels = len(load_task(TARGETS[target][0]).labels)
    config = ExportConfig(task="classification", num_labels=labels, quantize="int8", gradient=True, overwrite=True)
    try:
        export_bundle(None, out / "subspace", out / "bundle", config=config)
    except RuntimeError as e:  # the exporter's int8 parity check: recorded, the bundle is fp32 only
        (out / "int8-refused.txt").write_text(str(e) + "\n")
        export_bundle(None, out / "subspace", out / "bundle", config=replace(config, quantize=None))
    return out / "bundle"


def _local_file(target: str, rows: int, seed: int) -> tuple:
    """(local CSV path, test rows [(text, label)]): a seeded sample of the train split, written once."""
    import numpy as np

    from edge_lorax.builder.data import load_task

    task = load_task(TARGETS[target][0])
    path = CACHE / target / f"local-{rows}-{seed}.csv"
    if not path.is_file():
        pick = np.random.default_rng(seed).permutation(len(task.train))[:rows]
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["text", "label"])
            w.writerows((task.train.texts[i], task.labels[int(task.train.targets[i])]) for i in pick)
    test = [(t, task.labels[int(y)]) for t, y in zip(task.test.texts[:TEST_ROWS], task.test.targets[:TEST_ROWS])]
    return path, test, list(task.labels)


def _measured(args: list) -> dict:
    """`edge-lorax ARGS` as its own process (edge_lorax.bench.measure.run_cli); stderr kept only when it failed."""
    from edge_lorax.bench.measure import run_cli

    cell = run_cli(args, CACHE / f"rss-{os.getpid()}.txt", tail=2)  # one per bench process: two may run side by side
    return {**cell, "stderr_tail": cell["stderr_tail"] if cell["exit"] else []}


def _accuracy(bundle: Path, user: Path, test: list, labels: list) -> float:
    from edge_lorax.runtime import open_bundle
    from edge_lorax.runtime.bundle import SessionConfig
    from edge_lorax.runtime.infer import predict
    from edge_lorax.runtime.users import load_user

    b = open_bundle(bundle, SessionConfig(threads=1))
    preds = predict(b, load_user(b, user) if user else None, [t for t, _ in test], 48)
    index = [list(p.scores).index(p.label) for p in preds]  # the bundle's own names (LABEL_i) for the start user
    return round(100 * sum(i == labels.index(lab) for i, (_, lab) in zip(index, test)) / len(test), 2)


def _cell(kind: str, target: str, rows: int, seed: int) -> Path:
    return RUNS / f"{target}-{rows}-s{seed}-{kind}.json"


def _run_cell(kind: str, target: str, rows: int, seed: int, bundle: Path, local: Path, test: list, labels: list):
    out = _cell(kind, target, rows, seed)
    if out.is_file():
        return
    user = CACHE / target / f"{kind}-{rows}-{seed}.npz"
    if kind == "host":
        cmd = ["train", "--subspace", str(bundle.parent / "subspace"), "--data", str(local), "-o", str(user),
                     "--steps", "80", "--batch-size", "16", "--lr", "2e-2", "--max-length", "48", "--threads", "1",
                     "--seed", str(seed), "--overwrite"]
    elif kind == "inference":
        texts = [r["text"] for r in csv.DictReader(open(local))]
        cmd = ["run", str(bundle), "--max-length", "48", "--json", "--", *texts]  # a text may start with "-"
        user = None
    else:
        extra = {"device": [], "head": ["--method", "head"], "int8": ["--variant", "int8"],
                 "refine": ["--method", "refine"]}[kind]
        cmd = ["personalize", str(bundle), "--data", str(local), "-o", str(user), "--threads", "1",
                     "--seed", str(seed), "--json", "--overwrite", *extra, *STEPS]
    result = _measured(cmd)
    if kind == "inference":
        result["report"] = None  # 256 predictions: not needed, only the process's time and memory
    if result["exit"] == 0 and user is not None:
        result["test_accuracy"] = _accuracy(bundle, user, test, labels)
    shown = cmd if kind != "inference" else cmd[:5] + ["TEXTS..."]
    result.update(kind=kind, target=target, rows=rows, seed=seed, command=portable("edge-lorax " + " ".join(shown)))
    out.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    print(f"{out.name}: {result.get('test_accuracy')} % in {result['seconds']} s, {result['peak_rss_mib']} MiB", flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--rows", default="64,256")
    ap.add_argument("--targets", default=",".join(TARGETS))
    ap.add_argument("--kinds", default="device,head,host,int8,inference", help="'none': bundles and start rows only")
    ap.add_argument("--steps", type=int, default=None,
                    help="device fits of exactly N steps (machine-independent) instead of the 55 s budget")
    args = ap.parse_args()
    if args.steps is not None:
        STEPS[:] = ["--steps", str(args.steps)]
    RUNS.mkdir(parents=True, exist_ok=True)
    st = stamp(portable(" ".join([".venv/bin/python", "benchmarks/personalize/run.py", *sys.argv[1:]])))
    for seed in map(int, args.seeds.split(",")):
        for target in args.targets.split(","):
            bundle = _bundle(target)
            for rows in map(int, args.rows.split(",")):
                local, test, labels = _local_file(target, rows, seed)
                start = _cell("start", target, rows, seed)
                if not start.is_file():
                    start.write_text(json.dumps({"kind": "start", "target": target, "rows": rows, "seed": seed,
                                                 "test_accuracy": _accuracy(bundle, None, test, labels)}) + "\n")
                for kind in (k for k in args.kinds.split(",") if k in KINDS):
                    no_int8 = (CACHE / target / "int8-refused.txt").is_file()
                    if kind == "int8" and (seed != 0 or no_int8) or kind == "inference" and (seed != 0 or rows != 256):
                        continue
                    _run_cell(kind, target, rows, seed, bundle, local, test, labels)
    stamps = HERE / "stamps.jsonl"
    with open(stamps, "a") as f:
        f.write(json.dumps(finish(st), sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
