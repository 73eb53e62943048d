"""One train cell of benchmarks/fleet/run.py, in its own process. `alone`: every user of DATA_DIR trained one at a
time (builder.train.train_coeffs, what `edge-lorax train` runs); `together`: in groups of --users-per-batch
(builder.fleet.train_many + write_trained, what `edge-lorax train-many` runs), and with --compare DIR each user's
max |Δ| against the same user trained alone (DIR/<user>.npz). Prints one JSON line.

    .venv/bin/python benchmarks/fleet/train_cell.py alone|together DATA_DIR SUBSPACE OUT [--users-per-batch U]
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from edge_lorax.builder.data import load_task  # noqa: E402
from edge_lorax.builder.fleet import data_files, train_many, write_trained  # noqa: E402
from edge_lorax.builder.loop import TrainConfig  # noqa: E402
from edge_lorax.builder.train import train_coeffs  # noqa: E402
from edge_lorax.formats.subspace import read_subspace  # noqa: E402
from edge_lorax.formats.user import read_user  # noqa: E402


def alone(tasks, sub, config, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    users, start = {}, time.perf_counter()
    for name, task in tasks:
        t0 = time.perf_counter()
        report = train_coeffs(sub, task, out / f"{name}.npz", config=config, progress=False)
        users[name] = {"seconds": round(time.perf_counter() - t0, 3), "test": report.result.test,
                       "train_s": report.result.train_s}
    return {"wall_s": round(time.perf_counter() - start, 2), "users": users}


def together(tasks, sub, config, out: Path, users_per_batch: int, compare: Path | None) -> dict:
    start = time.perf_counter()
    trained = train_many(sub, tasks, config=config, users_per_batch=users_per_batch)
    write_trained(trained, out, overwrite=True)
    wall = time.perf_counter() - start
    users = {t.name: {"test": t.result.test, "train_s": t.result.train_s, "group": t.group} for t in trained}
    for t in trained:
        if compare and (compare / f"{t.name}.npz").is_file():
            ref = read_user(compare / f"{t.name}.npz").inputs()
            diff = {k: float(np.abs(v - ref[k]).max()) for k, v in t.user.inputs().items()}
            users[t.name]["max_abs_diff_coeffs"] = max(v for k, v in diff.items() if not k.startswith("head."))
            users[t.name]["max_abs_diff_head"] = max(v for k, v in diff.items() if k.startswith("head."))
            users[t.name]["coeff_scale"] = max(float(np.abs(v).max()) for k, v in ref.items() if not k.startswith("head."))
    return {"wall_s": round(wall, 2), "users_per_batch": users_per_batch, "users": users}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("mode", choices=["alone", "together"])
    ap.add_argument("data", type=Path)
    ap.add_argument("subspace", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--users-per-batch", type=int, default=16)
    ap.add_argument("--config", default="{}", help="TrainConfig fields as JSON")
    ap.add_argument("--compare", type=Path)
    args = ap.parse_args()
    config = TrainConfig(**json.loads(args.config))
    tasks = [(f.stem, load_task(str(f), seed=0)) for f in data_files(args.data)]
    sub = read_subspace(args.subspace)
    result = (alone(tasks, sub, config, args.out) if args.mode == "alone"
              else together(tasks, sub, config, args.out, args.users_per_batch, args.compare))
    print(json.dumps({"mode": args.mode, "users_n": len(tasks), "config": json.loads(args.config), **result}))


if __name__ == "__main__":
    main()
