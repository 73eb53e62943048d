"""Fleet scale (issue 16) on a tiny BERT: the per-module build and project-many on a small local Ray cluster (two
nodes of one CPU on this host, Ray's own test utilities) give what the local executor gives, byte for byte; train-many
trains a batch of users together and each equals the same user trained alone; failures are refused or listed."""

import functools
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edge_lorax.builder import fleet
from edge_lorax.builder.executor import Executor, map_items
from edge_lorax.builder.fleet import train_many
from edge_lorax.builder.loop import TrainConfig
from edge_lorax.builder.subspace import build_module
from edge_lorax.builder.train import train_coeffs
from edge_lorax.cli import cli
from edge_lorax.formats.errors import InputError
from edge_lorax.formats.peft import read_adapter
from edge_lorax.formats.subspace import read_subspace, write_subspace
from edge_lorax.formats.user import read_user
from helpers.runtime import MODEL_NAME, WORDS, tiny_model_dir, tiny_subspace
from helpers.tiny import tiny_adapters, tiny_model

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning")


@pytest.fixture(scope="module")
def cluster():
    """A 2-node local Ray cluster (1 CPU each, small object stores); its address goes to Executor("ray", address)."""
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": 80 * 2**20})
    c.add_node(num_cpus=1, object_store_memory=80 * 2**20)
    c.wait_for_nodes()
    yield Executor("ray", c.address)
    import ray

    ray.shutdown()  # the driver's connection (builder.executor keeps it for later maps), then the nodes
    c.shutdown()


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """A tiny BERT and six random PEFT LoRA adapters on it."""
    root = tmp_path_factory.mktemp("hub")
    model = tiny_model("bert", root / "tiny-bert")
    return model, tiny_adapters(model, "bert", root / "adapters", n=6)


def _digests(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_build_on_ray_is_bit_identical_to_local(hub, cluster, tmp_path):
    _, adapters = hub
    args = ["build", *map(str, adapters), "-k", "3"]
    local = CliRunner().invoke(cli, [*args, "-o", str(tmp_path / "local")])
    ray = CliRunner().invoke(cli, [*args, "-o", str(tmp_path / "ray"), "--executor", "ray", "--address", cluster.address])
    assert local.exit_code == 0 and ray.exit_code == 0, (local.output, ray.output)
    assert _digests(tmp_path / "local") == _digests(tmp_path / "ray")
    assert len(_digests(tmp_path / "local")) == 3  # subspace.safetensors, subspace_config.json, sources.npz


def test_tasks_report_where_and_how_long(hub, cluster):
    from edge_lorax.builder.subspace import build_subspace

    stats = []
    build_subspace(hub[1], components=3, executor=cluster, task_stats=stats)
    assert len(stats) == 4 and {s["module"] for s in stats} == set(read_adapter(hub[1][0]).modules)
    assert all(s["seconds"] > 0 and s["pid"] > 0 and s["peak_rss_mib"] > 0 for s in stats)


def test_a_worker_that_cannot_read_an_adapter_is_refused_by_name(hub, cluster, tmp_path):
    import shutil

    copies = [shutil.copytree(a, tmp_path / a.name) for a in hub[1][:3]]
    infos = [read_adapter(c) for c in copies]
    (copies[1] / "adapter_model.safetensors").unlink()  # read by the driver, gone where the task runs
    with pytest.raises(InputError, match=r"adapter1/adapter_model.safetensors: not readable on host .*shared"):
        map_items(functools.partial(build_module, infos, components=2), infos[0].modules, cluster)


def test_project_many_lists_failures_and_matches_local(hub, cluster, tmp_path):
    _, adapters = hub
    sub = tmp_path / "sub"
    assert CliRunner().invoke(cli, ["build", *map(str, adapters[:4]), "-k", "16", "-o", str(sub)]).exit_code == 0
    bad = tmp_path / "broken"
    bad.mkdir()
    (bad / "adapter_config.json").write_text("{}")
    notes = tmp_path / "README.md"  # what `project-many SUB hub/*` picks up beside the adapter folders
    notes.write_text("not an adapter\n")
    args = ["project-many", str(sub), *map(str, adapters), str(bad), str(notes), str(tmp_path / "missing")]
    local = CliRunner().invoke(cli, [*args, "-o", str(tmp_path / "local")])
    ray = CliRunner().invoke(cli, [*args, "-o", str(tmp_path / "ray"), "--executor", "ray", "--address", cluster.address])
    assert local.exit_code == 1 and ray.exit_code == 1  # the batch ran to the end; one failure makes the status 1
    rows = json.loads((tmp_path / "ray" / "projections.json").read_text())
    assert [r["status"] for r in rows] == ["ok"] * 6 + ["failed"] * 3 and "adapter_model.safetensors" in rows[6]["error"]
    assert all(str(p) in r["error"] for p, r in zip((notes, tmp_path / "missing"), rows[7:]))
    assert all(r["relative_error"] < 1e-5 for r in rows[:4]) and all(r["relative_error"] > 0.1 for r in rows[4:6])
    assert all(0 < r["user_bytes"] < r["adapter_bytes"] for r in rows[:6])
    assert all(r["user_bytes"] == (tmp_path / "ray" / r["output"]).stat().st_size for r in rows[:6])  # file bytes
    for r in rows[:6]:
        assert (tmp_path / "ray" / r["output"]).read_bytes() == (tmp_path / "local" / r["output"]).read_bytes()
    assert (tmp_path / "ray" / "projections.csv").read_text().count("\n") == 10


# ----------------------------------------------------------------------------------------------- train-many

@pytest.fixture(scope="module")
def users(tmp_path_factory):
    """A tiny BERT classifier without dropout (so joint and alone runs differ by float rounding only), its subspace
    folder and three users' data files: two binary tasks and a 3-class one."""
    root = tmp_path_factory.mktemp("fleet")
    model = tiny_model_dir(root / MODEL_NAME)
    cfg = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**cfg, "hidden_dropout_prob": 0.0,
                                                   "attention_probs_dropout_prob": 0.0}))
    sub = write_subspace(tiny_subspace(), root / "subspace")
    data = root / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    for name, classes in (("ann", 2), ("bob", 2), ("cyd", 3)):
        lines = ["text,label"]
        for _ in range(60):
            label = int(rng.integers(classes))
            words = rng.choice(WORDS, size=int(rng.integers(2, 7)))
            lines.append(f"{' '.join(words)} {WORDS[label]},{['neg', 'pos', 'mid'][label]}")
        (data / f"{name}.csv").write_text("\n".join(lines) + "\n")
    return model, sub, data


CONFIG = TrainConfig(lr=2e-2, batch_size=8, max_length=16, steps=6, eval_every=0)


def _tasks(data: Path) -> list:
    from edge_lorax.builder.data import load_task
    from edge_lorax.builder.fleet import data_files

    return [(f.stem, load_task(str(f), seed=0)) for f in data_files(data)]


@pytest.mark.parametrize("tokens", [fleet.JOINT_TOKENS, 40])  # one chunk per step; several, users mixed
def test_each_user_trained_together_equals_it_trained_alone(users, tmp_path, monkeypatch, tokens):
    monkeypatch.setattr(fleet, "JOINT_TOKENS", tokens)
    model, sub, data = users
    tasks, subspace = _tasks(data), read_subspace(sub)
    together = train_many(subspace, tasks, model=model, config=CONFIG, users_per_batch=3)
    assert [t.name for t in together] == ["ann", "bob", "cyd"] and {t.group_users for t in together} == {3}
    for t, (name, task) in zip(together, tasks):
        train_coeffs(subspace, task, tmp_path / f"{name}.npz", model=model, config=CONFIG, progress=False)
        alone = read_user(tmp_path / f"{name}.npz")
        assert t.user.fingerprint == alone.fingerprint and set(t.user.inputs()) == set(alone.inputs())
        for key, value in alone.inputs().items():
            assert np.abs(t.user.inputs()[key] - value).max() <= 1e-5, (name, key)
        assert t.result.test["accuracy"] == pytest.approx(alone.meta["test"]["accuracy"])
    heads = [t.user.head["head.weight_t"] for t in together]
    assert heads[2].shape[1] == 3 and not np.allclose(heads[0], heads[1])  # own widths, own values


def test_joint_chunks_hold_every_row_once_within_the_token_budget(users):
    from edge_lorax.builder.loop import Classification
    from edge_lorax.builder.models import load_tokenizer

    model, _, data = users
    encoded = [Classification(t, load_tokenizer(model), 16).encode(t.train) for _, t in _tasks(data)]
    indices = [np.arange(8), np.arange(3, 11), np.arange(5)]
    chunks = fleet._joint_chunks(encoded, indices, 40)
    assert len(chunks) > 3 and all(c.ids.numel() <= 40 or len(c.ids) == 1 for c in chunks)
    for u, index in enumerate(indices):
        parts = [(c, sl, share) for c in chunks for v, sl, _, share in c.parts if v == u]
        assert sum(share for *_, share in parts) == pytest.approx(1.0)
        assert all((c.rows[sl] == u).all() for c, sl, _ in parts)
        got = sorted(tuple(c.ids[i][c.mask[i] == 1].tolist()) for c, sl, _ in parts for i in range(sl.start, sl.stop))
        assert got == sorted(tuple(encoded[u].ids[i]) for i in index)
    widths = [c.ids.shape[1] for c in chunks]
    assert widths == sorted(widths, reverse=True)  # longest first: a row is padded to rows of its own length


def test_train_many_cli_writes_every_user_and_the_table(users, cluster, tmp_path):
    model, sub, data = users
    args = ["train-many", "--subspace", str(sub), "--data-dir", str(data), "--model", str(model), "--steps", "4",
            "--batch-size", "8", "--max-length", "16", "--users-per-batch", "2"]
    local = CliRunner().invoke(cli, [*args, "-o", str(tmp_path / "local")])
    ray = CliRunner().invoke(cli, [*args, "-o", str(tmp_path / "ray"), "--executor", "ray", "--address", cluster.address])
    assert local.exit_code == 0 and ray.exit_code == 0, (local.output, ray.output)
    rows = json.loads((tmp_path / "ray" / "train-many.json").read_text())
    assert [(r["user"], r["group"], r["group_users"]) for r in rows] == [("ann", 0, 2), ("bob", 0, 2), ("cyd", 1, 1)]
    for r in rows:
        ours, theirs = read_user(tmp_path / "ray" / r["output"]), read_user(tmp_path / "local" / r["output"])
        assert all(np.abs(ours.inputs()[k] - v).max() <= 1e-6 for k, v in theirs.inputs().items())
        assert ours.meta["trained_with"] == "train-many" and "accuracy" in r["test"]


def test_train_many_refusals(users, tmp_path):
    model, sub, data = users
    empty = tmp_path / "empty"
    empty.mkdir()
    res = CliRunner().invoke(cli, ["train-many", "--subspace", str(sub), "--data-dir", str(empty), "-o",
                                   str(tmp_path / "o"), "--model", str(model)])
    assert res.exit_code != 0 and "no .csv/.tsv/.jsonl files" in res.output and not (tmp_path / "o").exists()
    with pytest.raises(InputError, match="--address and --workers apply to --executor ray only"):
        Executor("local", workers=2)


@pytest.mark.parametrize("address", ["127.0.0.1:1", "no-port-here"])
def test_an_unreachable_cluster_is_refused_at_once(hub, address, tmp_path):
    """A fresh process (this one may hold a Ray connection already): one line naming the address, in seconds."""
    import subprocess
    import sys
    import time

    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "edge_lorax", "build", *map(str, hub[1][:2]), "-o", str(tmp_path / "s"),
                           "-k", "2", "--executor", "ray", "--address", address], capture_output=True, text=True,
                          timeout=120)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert proc.returncode == 1 and len(errors) == 1 and f"--address {address}: no Ray cluster answers" in errors[0]
    assert "ray start --head" in errors[0] and time.monotonic() - start < 60 and not (tmp_path / "s").exists()
