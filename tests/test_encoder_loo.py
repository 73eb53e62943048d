"""benchmarks/encoder_loo: each target's subspace excludes the target's own adapter, the directions are the issue's
(sentiment -> spam/TREC, and spam/TREC + other sentiment -> sentiment), and run keys carry the rate."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def loo():
    spec = importlib.util.spec_from_file_location("encoder_loo_run", ROOT / "benchmarks" / "encoder_loo" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sources_exclude_the_target_and_cross_task_types(loo):
    vader12 = {f"{d}-{t}" for d in ("tweets", "movies", "amazon", "nyt") for t in ("binary", "3class", "regression")}
    for target in ("spam", "trec"):
        names = {p.name for p in loo.sources(target)}
        assert names == vader12 and loo.OWN[target] not in names  # sentiment only -> spam / TREC
    for target in ("tweets", "amazon"):
        names = [p.name for p in loo.sources(target)]
        assert len(names) == 11 and {"spam-sms", "trec-coarse"} <= set(names)
        assert not any(n.startswith(target) for n in names)  # the held-out domain's three adapters are out
    assert all(p.parent == ROOT / "adapters" for t in loo.TARGETS for p in loo.sources(t))


def test_plan_cheap_rows_first_then_whole_seeds_at_the_picks(loo):
    picks = {"eigen-keep": 2e-2, "lora": 5e-3, "random": 5e-2, "head": 2e-1}
    runs = loo.plan(2, picks)
    assert len(runs) == 4 * 2 + 2 * 4 * 4
    assert {r.method for r in runs[:8]} == {"projection-keep", "probe"} and all(r.lr is None for r in runs[:8])
    trained = runs[8:]
    assert [r.seed for r in trained] == [0] * 16 + [1] * 16 and all(r.lr == picks[r.method] for r in trained)
    assert loo.plan(3, None) == runs[:8]  # before the sweep's picks: the training-free rows only
    partial = loo.plan(2, {"eigen-keep": 2e-2})  # methods whose pick exists run; the rest wait
    assert [r.method for r in partial[8:]] == ["eigen-keep"] * 8
    assert loo.Run("spam", "lora", 1, 5e-3).key == "spam_lora_s1_lr0.005" and loo.Run("spam", "probe", 0).key == "spam_probe_s0"
