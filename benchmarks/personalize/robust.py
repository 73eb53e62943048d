"""Controlled device fits for issue 25, cause 7 (the fit on tasks it was not tuned on): one factor at a time.

Same protocol as run.py (leave-own-out MiniLM subspace with sources, fp32 bundle, the seeded local rows, the first 300
test rows through the runtime) but an exact step count instead of the 55 s budget, so a result does not depend on the
machine's load: 40 mix steps then 80 exact steps (what a 55 s fit ran on a quiet machine: the report's checkpoints).
Each run records the test accuracy the user of *every* checkpoint (start, mix, exact) would have had, so a
keep-or-reject rule can be judged by what it gave up, and dumps each checkpoint's features (fit, held-out, test rows)
for head-only studies (the λ grid, the trained head). One JSON per run under robust/: resumable.

    .venv/bin/python benchmarks/personalize/robust.py nyt 256 2 new
    .venv/bin/python benchmarks/personalize/robust.py nyt 256 2 nomix nomix=1       # exact from zero_b, no mix
    .venv/bin/python benchmarks/personalize/robust.py nyt 256 2 lr exact_lr=1e-2
    .venv/bin/python benchmarks/personalize/robust.py nyt 256 2 before before=1     # the rule and head start of cc5adbd

Knobs: mix=N, exact=N (steps), holdout=F, exact_lr=F, nomix=1, before=1 (the exact stage starts from the closed-form
head and is kept iff its held-out loss is not above the start's: the method before this change, up to the random
draws), headzero=1 (the change alone, on top of before=1).
"""

import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402
import run  # noqa: E402

from edge_lorax.formats.tasks import read_task  # noqa: E402
from edge_lorax.formats.user import write_user  # noqa: E402
from edge_lorax.runtime import personalize as P  # noqa: E402
from edge_lorax.runtime.bundle import SessionConfig, open_bundle  # noqa: E402
from edge_lorax.runtime.head import head_score  # noqa: E402
from edge_lorax.runtime.infer import encode  # noqa: E402

OUT = HERE / "robust"


def _patch(knobs: dict, mix: int, exact: int, captured: dict):
    spsa, descend, checkpoint, report = P._Fitter.spsa, P._Fitter.descend, P._Fitter.checkpoint, P._report
    P._Fitter.spsa = lambda self, stage, size, to_coeffs, point, steps, deadline, eps, lr: spsa(
        self, stage, size, to_coeffs, point, mix, deadline, eps, lr)
    P._Fitter.descend = lambda self, sess, coeffs, head, steps, deadline: descend(self, sess, coeffs, head, exact, deadline)

    def keep_trained(self, stage, coeffs, trained_head=None):
        point = checkpoint(self, stage, coeffs, trained_head)
        point["trained"] = trained_head
        return point

    def keep_fitter(fitter, first, best, stages):
        captured["fitter"] = fitter
        return report(fitter, first, best, stages)

    P._Fitter.checkpoint, P._report = keep_trained, keep_fitter
    if knobs.get("nomix"):
        P.load_sources = lambda bundle: {}
    if knobs.get("before"):
        P._keep_exact = lambda point, first: point["heldout_loss"] <= first["heldout_loss"]
        if not knobs.get("headzero"):
            P._exact_head = lambda head, rng: head


def main():
    target, rows, seed, variant = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    knobs = dict(kv.split("=", 1) for kv in sys.argv[5:])
    OUT.mkdir(exist_ok=True)
    out = OUT / f"{target}-{rows}-s{seed}-{variant}.json"
    if out.is_file():
        print(out.read_text())
        return
    mix, exact, holdout = int(knobs.get("mix", 40)), int(knobs.get("exact", 80)), float(knobs.get("holdout", 0.2))
    captured = {}
    _patch(knobs, mix, exact, captured)
    bundle_path = run._bundle(target)
    local, test, labels = run._local_file(target, rows, seed)
    t0 = time.perf_counter()
    task = read_task(local, "text", "label", "classification", fractions=(1 - holdout, holdout, 0.0), seed=seed)
    bundle = open_bundle(bundle_path, SessionConfig(threads=1))
    config = P.FitConfig(steps=mix + exact, seed=seed, exact_lr=float(knobs.get("exact_lr", 2e-2)))
    result = P.personalize(bundle, task, None, config)
    seconds = time.perf_counter() - t0
    user_path = run.CACHE / target / f"robust-{rows}-{seed}-{variant}.npz"
    write_user(result.user, user_path, True)
    tokens, y_test = encode(bundle, [t for t, _ in test], 48), np.array([labels.index(lab) for _, lab in test])
    per_checkpoint = []
    for cp in captured["fitter"].checkpoints:
        user = P._final_user(bundle, task, cp)
        x_test = P._features(bundle, dict(user.coefficients), tokens)
        per_checkpoint.append(round(100 * head_score(x_test, y_test, user.head, "classification"), 2))
        dump = {"x_fit": cp["x"][0], "x_held": cp["x"][1], "x_test": x_test, "y_fit": np.asarray(task.train.targets),
                "y_held": np.asarray(task.validation.targets), "y_test": y_test}
        if cp.get("trained") is not None:
            dump.update(head_w=cp["trained"]["head.weight_t"], head_b=cp["trained"]["head.bias"])
        np.savez(run.CACHE / target / f"robust-{rows}-{seed}-{variant}-{cp['stage']}.npz", **dump)
    commit = subprocess.run(["git", "-C", str(HERE), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    summary = {"target": target, "rows": rows, "seed": seed, "variant": variant, "knobs": knobs,
               "test_accuracy": run._accuracy(bundle_path, user_path, test, labels), "chosen": result.report["chosen"],
               "test_per_checkpoint": per_checkpoint, "commit": commit.stdout.strip(),
               "checkpoints": [(c["stage"], c["steps"], round(c["heldout_score"], 3), round(c["heldout_loss"], 3), c["l2"])
                               for c in result.report["checkpoints"]],
               "command": run.portable(" ".join([".venv/bin/python", "benchmarks/personalize/robust.py", *sys.argv[1:]])),
               "seconds_on_a_shared_machine": round(seconds, 1)}
    out.write_text(json.dumps(summary) + "\n")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
