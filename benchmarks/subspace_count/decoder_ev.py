"""Issue 30's repeat on the decoder, training-free: how much of a held-out SmolLM2 adapter (adapters-smollm2/, the
twelve committed q/v adapters) a K=8 subspace of N of the other eleven holds, vs a random orthonormal basis of the same
K. The held-out tasks are benchmarks/decoder/loo.py's four; draws as in run.py (`same` family, `other`, `mixed`).

It answers whether the decoder's small recycled-vs-random gap (+1.0 point, benchmarks/decoder/report.md) could be a
too-few-sources effect: if the explained variance is still rising at N=11, more sources would add; if it has
flattened, they would not. It trains nothing (the trained repeat is not run: see notes.md).

    .venv/bin/python benchmarks/subspace_count/decoder_ev.py     # ~1 min; writes decoder_ev.json and decoder_ev.md
"""

import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from run import KINDS, K, candidates  # noqa: E402

from edge_lorax.bench import measure  # noqa: E402

ADAPTERS = ROOT / "adapters-smollm2"
TARGETS = ("tweets-binary", "spam-sms", "trec-coarse", "disaster-food")  # benchmarks/decoder/loo.py's held-out tasks
NS, DRAWS = (2, 4, 8, 11), 3
COMMAND = ".venv/bin/python benchmarks/subspace_count/decoder_ev.py"


def pool() -> list[str]:
    return sorted(p.name for p in ADAPTERS.iterdir() if (p / "adapter_config.json").is_file())


def draw(names: list, target: str, kind: str, n: int, d: int) -> list[str] | None:
    """n seeded sources of `kind` for `target` (never its own); None when there are fewer candidates."""
    cand = candidates(names, target, kind)
    if len(cand) < n:
        return None
    rng = np.random.default_rng([d, n, KINDS.index(kind), TARGETS.index(target)])
    return sorted(cand[i] for i in rng.permutation(len(cand))[:n])


def explained(sources: list, target: str, seed: int) -> tuple[float, float]:
    """(EV of the target's ΔW in the K=8 mean-kept subspace of `sources`, EV in a random basis of the same K)."""
    from edge_lorax.builder.project import project_adapter
    from edge_lorax.builder.subspace import build_subspace, random_like

    sub = build_subspace([ADAPTERS / s for s in sources], components=K, mean="keep", seed=0)
    ev = lambda s: 1 - project_adapter(s, ADAPTERS / target).overall ** 2  # noqa: E731
    return ev(sub), ev(random_like(sub, seed))


def measure_all() -> list[dict]:
    names, rows = pool(), []
    for target in TARGETS:
        for kind in KINDS:
            for n in NS:
                seen = set()
                for d in range(DRAWS):
                    src = draw(names, target, kind, n, d)
                    if src is None or tuple(src) in seen:
                        continue
                    seen.add(tuple(src))
                    keep, rand = explained(src, target, d)
                    rows.append({"target": target, "kind": kind, "n": n, "draw": d, "sources": src,
                                 "ev_keep": round(keep, 6), "ev_random": round(rand, 6)})
                    print(f"{target} {kind} N={n} d{d}: {100 * keep:.1f} % (random {100 * rand:.2f} %)", file=sys.stderr)
    return rows


def markdown(rows: list, stamp: dict) -> str:
    by = defaultdict(list)
    for r in rows:
        by[(r["target"], r["kind"], r["n"])].append(100 * r["ev_keep"])
    fmt = lambda v: (f"{np.mean(v):.1f} ± {np.std(v, ddof=1):.1f} (n={len(v)})" if len(v) > 1  # noqa: E731
                     else f"{v[0]:.1f}") if v else "–"
    lines = ["# Decoder repeat, training-free: EV of a held-out SmolLM2 adapter vs N sources", "",
             *measure.stamp_md(stamp), "",
             f"Explained variance (%) of the target's own ΔW (q/v of all 30 layers, energy-weighted) in a K={K} subspace "
             f"(mean kept) of N of the other eleven adapters-smollm2/ adapters; mean ± sample std over up to {DRAWS} "
             "distinct draws. Random orthonormal basis of the same K: "
             f"{100 * np.mean([r['ev_random'] for r in rows]):.3f} % on average.", "",
             "| target | draws | " + " | ".join(f"N={n}" for n in NS) + " |", "|---|---|" + "---|" * len(NS)]
    for t in TARGETS:
        for kind in KINDS:
            if any(by.get((t, kind, n)) for n in NS):
                lines.append(f"| `{t}` | {kind} | " + " | ".join(fmt(by.get((t, kind, n), [])) for n in NS) + " |")
    return "\n".join(lines) + "\n"


def main():
    stamp = measure.stamp(COMMAND, dirty_paths=("benchmarks/subspace_count",))
    rows = measure_all()
    stamp = measure.finish(stamp)
    for name, text in (("decoder_ev.json", json.dumps({"stamp": stamp, "rows": rows}, indent=1) + "\n"),
                       ("decoder_ev.md", markdown(rows, stamp))):
        with measure.atomic_file(HERE / name) as tmp:
            tmp.write_text(measure.portable(text))
    print(f"wrote {HERE / 'decoder_ev.md'}", file=sys.stderr)


if __name__ == "__main__":
    main()
