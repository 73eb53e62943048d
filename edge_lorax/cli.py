"""The `edge-lorax` command: one click group; each command parses options and calls one library function.

Results go to stdout, progress to stderr; bad input is a one-line ClickException (exit 1).
"""

import json
import sys
import time
from contextlib import contextmanager
from functools import wraps
from pathlib import Path

import click

from edge_lorax import __version__
from edge_lorax.formats.atomic import atomic_file, check_output
from edge_lorax.formats.errors import InputError

CONTEXT = {"help_option_names": ["-h", "--help"]}

# An optional package (its top-level module) -> (the extra of pyproject.toml that provides it, the extras to install:
# exporting and benchmarking work on torch models, so their line includes build). tests/test_cli_core.py checks the
# table against pyproject.toml.
EXTRAS = {"torch": ("build", "build"), "transformers": ("build", "build"), "peft": ("build", "build"),
          "tqdm": ("build", "build"), "sklearn": ("build", "build"), "onnx": ("export", "build,export"),
          "onnxscript": ("export", "build,export"), "matplotlib": ("bench", "build,export,bench"),
          "psutil": ("bench", "build,export,bench"), "gguf": ("llm", "build,llm"), "onnxruntime_genai": ("llm", "llm"),
          "ray": ("fleet", "build,fleet")}


def _needs(command: str | None, module: str, install: str) -> click.ClickException:
    """`edge-lorax COMMAND needs the 'X' extra (MODULE is not installed): pip install "edge-lorax[INSTALL]"`."""
    who = f"edge-lorax {command}" if command else "edge-lorax"
    return click.ClickException(f"{who} needs the '{EXTRAS[module][0]}' extra ({module} is not installed): "
                                f'pip install "edge-lorax[{install}]"')


def missing_extra(error: ModuleNotFoundError, command: str | None) -> click.ClickException | None:
    """The one-line refusal for a package an extra provides that is not installed (None: not one of EXTRAS)."""
    module = (error.name or "").partition(".")[0]
    return _needs(command, module, EXTRAS[module][1]) if module in EXTRAS else None


def require_extras(command: str, *extras: str):
    """Before a long command: its extras' packages are installed (found, not imported), else the one-line refusal
    whose install line names all of `extras`."""
    import importlib.util

    for module, (extra, _) in EXTRAS.items():
        if extra in extras and importlib.util.find_spec(module) is None:
            raise _needs(command, module, ",".join(extras))


class _Commands(click.Group):
    """The command group; a command that imports a missing optional package ends in one line naming the extra."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except ModuleNotFoundError as e:
            refusal = missing_extra(e, ctx.invoked_subcommand)
            if refusal is None:
                raise
            raise refusal from e


@click.group(cls=_Commands, context_settings=CONTEXT)
@click.version_option(__version__, prog_name="edge-lorax")
def cli():
    """EigenLoRAx for the edge: build a subspace from LoRA adapters, train users as coefficients, export, run.

    \b
    Examples:
      edge-lorax build adapters/*/ -o subspace --components 8
      edge-lorax project subspace adapters/tweets-binary -o user.npz
      edge-lorax inspect user.npz
    """


def _friendly(fn):
    """The package's InputError (expected bad input) becomes a one-line ClickException (exit 1); any other exception
    is a bug and keeps its traceback."""

    @wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except InputError as e:
            raise click.ClickException(" ".join(str(e).split())) from e

    return wrapper


_TASK_FILE_OPTIONS = [  # how a data file's rows are read
    click.option("--text-column", default="text", show_default=True),
    click.option("--label-column", default="label", show_default=True),
    click.option("--kind", type=click.Choice(["classification", "regression"]), default="classification", show_default=True,
                 help="Task kind of a data file (built-in tasks know theirs)."),
]


def _task_file_options(fn):
    """--text-column / --label-column / --kind, declared once for train, train-lora, train-many, data and personalize."""
    for option in reversed(_TASK_FILE_OPTIONS):
        fn = option(fn)
    return fn


_TRAINING_OPTIONS = {  # by option name: train and train-lora take all, train-many all but those it has no use for
    "data": click.option("--data", required=True, help="vader:<domain>-<binary|3class|regression>, spam:sms, trec:coarse, disaster:<category> "
                 "(e.g. disaster:request), 20ng:topic, or a .csv/.tsv/.jsonl file."),
    "task-file": _task_file_options,
    "model": click.option("--model", default="default", show_default=True,
                 help="Base model folder ('default': the embedded MiniLM; 'smollm2': the embedded SmolLM2-135M-Instruct "
                      "decoder; 'gemma3-270m': the embedded Gemma 3 270M; must match the subspace's base)."),
    "task-type": click.option("--task-type", type=click.Choice(["SEQ_CLS", "CAUSAL_LM"]),
                 help="PEFT task type [default: CAUSAL_LM for a causal LM folder (the answer is the generated label "
                      "word, loss on the answer tokens only), else SEQ_CLS (a task head)]."),
    "steps": click.option("--steps", type=click.IntRange(min=1), help="Optimizer steps (overrides --epochs)."),
    "epochs": click.option("--epochs", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True),
    "batch-size": click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True),
    "max-length": click.option("--max-length", type=click.IntRange(min=1), default=64, show_default=True,
                 help="Tokens per training text, for a decoder prompt + answer (longer texts are cut; at most the "
                      "model's positions)."),
    "patience": click.option("--patience", type=click.IntRange(min=0), default=0, show_default=True,
                 help="Early stopping: evals without a better val loss."),
    "seed": click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Split, init and batch order."),
    "threads": click.option("--threads", type=click.IntRange(min=1),
                 help="torch threads [default: torch's choice]; on a machine shared with other jobs use 1 per process "
                      "(OpenMP threads spin-wait when the cores are taken)."),
    "overwrite": click.option("--overwrite", is_flag=True),
}


def _set_threads(threads):
    if threads:
        import torch

        torch.set_num_threads(threads)


def _training_options(fn=None, *, skip: tuple = ()):
    """The options `train`, `train-lora` and `train-many` share (data, model, schedule, seed), declared once; `skip`
    leaves some out."""
    def wrap(fn):
        for name, option in reversed(_TRAINING_OPTIONS.items()):
            fn = fn if name in skip else option(fn)
        return fn
    return wrap(fn) if fn is not None else wrap


def progress(items, label: str):
    """A tqdm bar on stderr."""
    from tqdm import tqdm

    return tqdm(items, desc=label, file=sys.stderr, leave=False)


@contextmanager
def progress_callback(label: str):
    """A tqdm bar on stderr driven as callback(done, total); opened at the first call and closed on leaving the
    `with`, so a refusal's `Error:` line starts its own line."""
    from tqdm import tqdm

    bars = []

    def update(done: int, total: int):
        if not bars:
            bars.append(tqdm(desc=label, total=total, file=sys.stderr, leave=False))
        bars[0].total = total
        bars[0].update(done - bars[0].n)
    try:
        yield update
    finally:
        for bar in bars:
            bar.close()


_EXECUTOR_OPTIONS = [
    click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
                 help="ray: one task per item on a Ray cluster (a local one unless --address); files are read by path, "
                      "so a cluster of several machines needs them on a shared filesystem."),
    click.option("--address", help="An existing Ray cluster (e.g. auto, HOST:6379) [default: start a local one]."),
    click.option("--workers", type=click.IntRange(min=1), help="CPUs of the local Ray cluster [default: all]."),
]


def _executor_options(fn):
    """--executor / --address / --workers, declared once for build, project-many and train-many."""
    for option in reversed(_EXECUTOR_OPTIONS):
        fn = option(fn)
    return fn


def _executor(kind: str, address, workers):
    from edge_lorax.builder.executor import Executor

    return Executor(kind, address, workers)


def _emit(data: dict, as_json: bool, indent: str = ""):
    """Results on stdout: JSON, or `key: value` lines (a dict value as indented `key: value` lines, a list of dicts
    as one indented `- k: v, ...` line each; never a Python repr of them)."""
    if as_json:
        click.echo(json.dumps(data, indent=1, sort_keys=True))
        return
    for key, value in data.items():
        if isinstance(value, dict) and value:
            click.echo(f"{indent}{key}:")
            _emit(value, False, indent + "  ")
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):  # e.g. checkpoints
            click.echo(f"{indent}{key}:")
            for item in value:
                click.echo(f"{indent}  - " + ", ".join(f"{k}: {v}" for k, v in item.items()))
        else:
            click.echo(f"{indent}{key}: {value}")


@cli.command()
@click.argument("adapters", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(), help="Subspace folder to write.")
@click.option("--components", "-k", type=click.IntRange(min=1),
              help="Fixed K per module (counts the mean direction with --mean keep).")
@click.option("--explained-variance", type=click.FloatRange(0, 1, min_open=True),
              help="Smallest K reaching this explained-variance ratio, e.g. 0.9.")
@click.option("--augment", type=click.IntRange(min=0), default=0, show_default=True,
              help="Random orthogonal directions added per module.")
@click.option("--mean", type=click.Choice(["drop", "keep"]), default="keep", show_default=True,
              help="keep: the mean adapter is component 0 (won with all rows, tied with few: benchmarks/paper_table); "
                   "drop: centre and discard it (paper).")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--allow-base-mismatch", is_flag=True, help="Accept adapters whose base model ids differ.")
@click.option("--sources/--no-sources", default=True, show_default=True,
              help="Keep every adapter's projection in sources.npz (a few KB each): bundles ship it and `personalize` "
                   "starts from a mix of them.")
@click.option("--overwrite", is_flag=True)
@_executor_options
@click.option("--task-stats", type=click.Path(dir_okay=False),
              help="Also write each module task's seconds, process, host and peak RSS here (JSON).")
@_friendly
def build(adapters, output, components, explained_variance, augment, mean, seed, allow_base_mismatch, sources,
          overwrite, executor, address, workers, task_stats):
    """Build a subspace from PEFT LoRA adapter folders.

    \b
    Example:
      edge-lorax build adapters/tweets-* adapters/amazon-* -o subspace -k 8
      edge-lorax build adapters/* -o subspace-paper -k 8 --mean drop   # the paper's centred procedure
      edge-lorax build hub/* -o subspace -k 32 --executor ray --workers 2   # one Ray task per module, same bytes
    """
    import os

    # One BLAS thread unless the caller says otherwise (set before numpy loads): OpenBLAS spins its threads, and on a
    # busy machine the SVD ran 10x slower with 2 threads than with 1 (benchmarks/reports/build_scale.md).
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    from edge_lorax.builder.subspace import build_subspace, check_build_options
    from edge_lorax.formats.subspace import write_subspace

    if components is None and explained_variance is None:
        components = 8
    check_build_options(components, explained_variance, augment, mean, seed)
    check_output(output, overwrite)  # before the work: exists, or cannot be written
    where, stats = _executor(executor, address, workers), []
    with progress_callback("modules") as update:
        sub = build_subspace(adapters, components=components, explained_variance=explained_variance, augment=augment,
                             mean=mean, seed=seed, allow_base_mismatch=allow_base_mismatch,
                             progress=update, executor=where, task_stats=stats)
    kept = None
    if sources:
        from edge_lorax.builder.project import project_sources

        kept = project_sources(sub, adapters, allow_base_mismatch, where)
    write_subspace(sub, output, overwrite, kept)
    if task_stats:
        with atomic_file(task_stats) as tmp:
            tmp.write_text(json.dumps(stats, indent=1) + "\n")
    from edge_lorax.describe import describe

    _emit({"output": output, **describe(output)}, False)


@cli.command()
@click.argument("subspace", type=click.Path(exists=True, file_okay=False))
@click.argument("adapter", type=click.Path(exists=True, file_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="user.npz to write.")
@click.option("--json", "as_json", is_flag=True, help="Per-module errors as JSON.")
@click.option("--overwrite", is_flag=True)
@_friendly
def project(subspace, adapter, output, as_json, overwrite):
    """Project an existing LoRA onto a subspace (no training) -> coefficients file.

    \b
    Example:
      edge-lorax project subspace adapters/nyt-binary -o nyt.npz
    """
    from edge_lorax.builder.project import project_adapter
    from edge_lorax.formats.subspace import read_subspace
    from edge_lorax.formats.user import write_user

    check_output(output, overwrite)
    result = project_adapter(read_subspace(subspace), adapter)
    written = write_user(result.coeffs, output, overwrite)
    data = {"output": output, "relative_error": round(result.overall, 6), "bytes": written.stat().st_size}  # the file
    _emit({**data, "module_errors": {m: round(e, 6) for m, e in result.errors.items()}} if as_json else data, as_json)
    if not as_json:  # a bare 0.918 meant nothing to a newcomer (issue 26)
        click.echo("relative_error: ||ΔW - ΔW projected|| / ||ΔW|| over the adapted modules (0: the subspace holds the "
                   "adapter exactly, 1: nothing of it); an adapter of a task the sources never saw is close to 1 and "
                   "still a start for `personalize --init`", err=True)


@cli.command()
@click.argument("subspace", type=click.Path(exists=True, file_okay=False))
@click.option("--data", help="A few labelled examples of your task: a .csv/.tsv/.jsonl file or a built-in spec.")
@click.option("--model", default="default", show_default=True, help="Base model folder the subspace was built for.")
@click.option("--rows", type=click.IntRange(min=2), default=64, show_default=True, help="Examples used.")
@click.option("--text-column", default="text", show_default=True)
@click.option("--label-column", default="label", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="The advice as JSON.")
@_friendly
def advise(subspace, data, model, rows, text_column, label_column, as_json):
    """Say whether a subspace is likely to help your task, in seconds, without training.

    With --data: the share of your examples' first gradient that the subspace can follow, against random bases of the
    same K; always: the number of sources and what the committed study says about it.

    \b
    Example:
      edge-lorax advise subspace --data my_task.csv
    """
    from edge_lorax.builder.advise import advise as run

    result = run(subspace, data, model=model, rows=rows, text_column=text_column, label_column=label_column)
    if as_json:
        _emit(result.to_json(), True)
    else:
        click.echo("\n".join(result.lines()))


@cli.command("project-many")
@click.argument("subspace", type=click.Path(exists=True, file_okay=False))
@click.argument("adapters", nargs=-1, required=True, type=click.Path())  # a bad one is a failed row
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False),
              help="Folder to write: one <adapter folder name>.npz each, projections.csv and projections.json.")
@click.option("--allow-base-mismatch", is_flag=True, help="Accept adapters whose base model id differs.")
@click.option("--overwrite", is_flag=True)
@_executor_options
@_friendly
def project_many(subspace, adapters, output, allow_base_mismatch, overwrite, executor, address, workers):
    """Project a hub of LoRA adapters onto a subspace -> one user file each + a table of errors and bytes.

    A failing adapter is a row of the table (status failed, its error), never the end of the batch; the exit status
    is 1 when any failed.

    \b
    Examples:
      edge-lorax project-many subspace adapters/* -o users
      edge-lorax project-many subspace hub/* -o users --executor ray --address auto
    """
    from edge_lorax.builder.project import project_many as run_many
    from edge_lorax.formats.subspace import read_subspace

    check_output(output, overwrite)
    with progress_callback("adapters") as update:
        rows = run_many(read_subspace(subspace), adapters, output, _executor(executor, address, workers),
                        allow_base_mismatch, overwrite, update)
    failed = [r for r in rows if r["status"] != "ok"]
    _emit({"output": output, "projected": len(rows) - len(failed), "failed": len(failed),
           "table": str(Path(output) / "projections.csv")}, False)
    for row in failed:
        click.echo(f"failed: {row['adapter']}: {row['error']}", err=True)
    if failed:
        sys.exit(1)


@cli.command()
@click.argument("subspace", type=click.Path(exists=True, file_okay=False))
@click.argument("coeffs", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(), help="PEFT adapter folder to write.")
@click.option("--merged-model", type=click.Path(), help="Also write the base model with ΔW merged, here.")
@click.option("--model", help="Base model for --merged-model: a folder, 'default' (the MiniLM), 'smollm2' or 'gemma3-270m' "
              "[default: the subspace's base model]; must be the subspace's base.")
@click.option("--overwrite", is_flag=True)
@_friendly
def reconstruct(subspace, coeffs, output, merged_model, model, overwrite):
    """A user file -> a standard PEFT LoRA folder (and optionally merged base weights).

    \b
    Example:
      edge-lorax reconstruct subspace nyt.npz -o nyt-lora --merged-model nyt-merged
    """
    from edge_lorax.builder.project import reconstruct_adapter
    from edge_lorax.formats.subspace import read_subspace
    from edge_lorax.formats.user import read_user

    for path in filter(None, (output, merged_model)):
        check_output(path, overwrite)
    sub, user = read_subspace(subspace), read_user(coeffs)
    model = model or sub.base_model
    if merged_model:
        from edge_lorax.builder.models import check_base, resolve_model

        check_base(resolve_model(model), sub)  # a bad or mismatched --model is refused before anything is written
    reconstruct_adapter(sub, user, output, overwrite)
    head = None
    if merged_model:
        from edge_lorax.builder.merge import save_merged_model

        head = save_merged_model(model, sub, user, merged_model, overwrite).head
    _emit({"output": output, "merged_model": merged_model, **({"merged_head": head} if merged_model else {})}, False)


@cli.command()
@click.argument("path", type=click.Path(exists=True))
@click.option("--json", "as_json", is_flag=True)
@_friendly
def inspect(path, as_json):
    """Summarise a subspace, coefficients file, PEFT adapter or bundle: modules, K, r, variance, bytes, fingerprint.

    \b
    Example:
      edge-lorax inspect subspace
    """
    from edge_lorax.describe import describe

    _emit(describe(path), as_json)


@cli.command()
@click.option("--subspace", "subspace_dir", required=True, type=click.Path(exists=True, file_okay=False))
@_training_options
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="user.npz to write.")
@click.option("--rank", type=click.IntRange(min=1), help="Coefficient rank r (default: the subspace's).")
@click.option("--k", "k", type=click.IntRange(min=1), help="Use only the first K components (default: all).")
@click.option("--init", type=click.Choice(["zero_b", "uniform"]), default="zero_b", show_default=True,
              help="zero_b: step 0 is the base model; uniform: U(-0.5, 0.5) both, as in the paper.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=2e-2, show_default=True,
              help="Coefficients + head (2e-2 beat 5e-3 on a short budget: benchmarks/paper_table).")
@_friendly
def train(subspace_dir, data, text_column, label_column, kind, output, model, task_type, rank, k, init, lr, steps,
          epochs, batch_size, max_length, patience, seed, threads, overwrite):
    """Train a new user's coefficients (+ task head) on frozen components -> user.npz.

    A decoder (--model smollm2) also takes the local files `personalize` reads (chat or prompt/completion JSONL,
    plain text .txt): the same token examples and loss masks, personalize's seeded 20 % held out (perplexity).

    \b
    Examples:
      edge-lorax train --subspace subspace --data vader:nyt-binary -o nyt.npz --steps 100
      edge-lorax train --model smollm2 --subspace decoder-subspace --data spam:sms -o spam.npz \\
          --steps 60 --batch-size 8 --max-length 96
      edge-lorax train --model smollm2 --subspace decoder-subspace --data notes.txt -o me.npz --steps 40 --batch-size 8
    """
    from edge_lorax.builder.data import load_task
    from edge_lorax.builder.loop import TrainConfig
    from edge_lorax.builder.train import train_coeffs
    from edge_lorax.formats.subspace import read_subspace
    from edge_lorax.runtime.local_data import token_format

    check_output(output, overwrite)  # before the work: exists, or cannot be written
    config = TrainConfig(lr=lr, batch_size=batch_size, max_length=max_length, steps=steps, epochs=epochs, seed=seed,
                         patience=patience)  # range-checked here, the subspace and model in train_coeffs
    task, objective = (_token_task(data, model, task_type, max_length, seed) if token_format(data) else
                       (load_task(data, text_column=text_column, label_column=label_column, kind=kind, seed=seed), None))
    _set_threads(threads)
    report = train_coeffs(read_subspace(subspace_dir), task, output, model=model, rank=rank, k=k, init=init, config=config,
                          kind=task_type, overwrite=overwrite, objective=objective)
    click.echo(report.summary())


def _token_task(data, model, task_type, max_length: int, seed: int) -> tuple:
    """(Task, TokenLoss) of a chat / completion / plain-text file: read by runtime.local_data with the model folder's
    tokenizer, split by personalize's seeded 20 % hold-out, so host and device train on identical token examples."""
    import numpy as np

    from edge_lorax.builder.generative import pad_id
    from edge_lorax.builder.models import CAUSAL_LM, check_max_length, load_tokenizer, max_positions, resolve_model
    from edge_lorax.builder.models import task_type as task_type_of
    from edge_lorax.builder.token_examples import TokenLoss, token_task
    from edge_lorax.runtime.local_data import read_local_data
    from edge_lorax.runtime.personalize_llm import split_rows

    path = resolve_model(model)
    if task_type_of(path, task_type) != CAUSAL_LM:
        raise InputError(f"--data {data}: chat, prompt/completion and plain-text files train a causal LM's user "
                         "(e.g. --model smollm2); an encoder with a task head takes a .csv/.tsv/.jsonl task file")
    check_max_length(path, max_length)
    tokenizer = load_tokenizer(path)
    local = read_local_data(data, path, tokenizer.eos_token_id, max_length, max_positions(path) or max_length)
    fit, held = split_rows(local, 0.2, seed)
    print(f"{data}: {len(local.examples)} {local.kind} examples ({len(fit)} to fit, {len(held)} held out)",
          file=sys.stderr)
    arrays = [[(np.asarray(e.ids, np.int64), np.asarray(e.loss, bool)) for e in rows] for rows in (fit, held)]
    return token_task(Path(data).stem, local.kind, *arrays), TokenLoss(pad_id(tokenizer))


@cli.command("train-many")
@click.option("--subspace", "subspace_dir", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--data-dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="One task file per user (.csv/.tsv/.jsonl), the user named by the file's stem.")
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False),
              help="Folder to write: <user>.npz each, train-many.csv and train-many.json.")
@click.option("--users-per-batch", type=click.IntRange(min=1), default=8, show_default=True,
              help="Users trained together: each step's batch holds --batch-size rows of each.")
@_training_options(skip=("data", "task-type", "patience"))
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=2e-2, show_default=True)
@_executor_options
@_friendly
def train_many(subspace_dir, data_dir, output, users_per_batch, text_column, label_column, kind, model, steps, epochs,
               batch_size, max_length, seed, threads, overwrite, lr, executor, address, workers):
    """Train many users' coefficients (+ heads) together: one forward/backward of the base model serves a batch of users.

    Each user ends as `edge-lorax train` would leave it (same seed and steps), up to training noise; every user gets
    the same step count (--steps, else the largest user's --epochs).

    \b
    Examples:
      edge-lorax train-many --subspace subspace --data-dir users/ -o trained --steps 60 --users-per-batch 16
      edge-lorax train-many --subspace subspace --data-dir users/ -o trained --executor ray --workers 2
    """
    from edge_lorax.builder.fleet import data_files, write_trained
    from edge_lorax.builder.fleet import train_many as run_many
    from edge_lorax.builder.loop import TrainConfig
    from edge_lorax.formats.subspace import read_subspace

    check_output(output, overwrite)
    config = TrainConfig(lr=lr, batch_size=batch_size, max_length=max_length, steps=steps, epochs=epochs, seed=seed)
    tasks = [(f.stem, _load_cli_task(str(f), text_column, label_column, kind, seed=seed)) for f in data_files(data_dir)]
    _set_threads(threads)
    with progress_callback("groups") as update:
        trained = run_many(read_subspace(subspace_dir), tasks, model=model, config=config,
                           users_per_batch=users_per_batch, executor=_executor(executor, address, workers),
                           progress=update)
    rows = write_trained(trained, output, overwrite)
    _emit({"output": output, "users": len(rows), "table": str(Path(output) / "train-many.csv")}, False)


@cli.command("train-lora")
@_training_options
@click.option("--validation-file", type=click.Path(dir_okay=False), help="Validation rows (default: cut from --data).")
@click.option("--test-file", type=click.Path(dir_okay=False), help="Test rows (default: cut from --data).")
@click.option("-o", "--output", required=True, type=click.Path(), help="Adapter folder to write (PEFT format).")
@click.option("--method", type=click.Choice(["lora", "vera", "head"]), default="lora", show_default=True)
@click.option("--rank", type=click.IntRange(min=1), default=8, show_default=True,
              help="LoRA rank, or VeRA's shared projection rank.")
@click.option("--alpha", type=click.FloatRange(min=0, min_open=True), default=16.0, show_default=True,
              help="LoRA alpha (scaling alpha/rank).")
@click.option("--targets", help="Comma-separated target module names, or all-linear (PEFT: every Linear but the output "
              "layer) [default: the model type's attention projections: query,value for BERT, q_proj,v_proj for "
              "Llama, Qwen and Gemma, qkv_proj for Phi-3, c_attn for GPT-2].")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True),
              help="Learning rate [default: lora 2e-3, vera 1e-2, head 5e-3].")
@click.option("--json", "as_json", is_flag=True, help="Metrics as JSON.")
@_friendly
def train_lora(data, text_column, label_column, kind, validation_file, test_file, output, method, model, task_type,
               rank, alpha, targets, lr, steps, epochs, batch_size, max_length, patience, seed, threads, overwrite, as_json):
    """Train a PEFT LoRA / VeRA / head-only baseline -> adapter folder (portable base id).

    \b
    Examples:
      edge-lorax train-lora --data vader:tweets-binary -o adapters/tweets-binary --steps 150
      edge-lorax train-lora --data vader:nyt-binary -o nyt-vera --method vera --rank 256
      edge-lorax train-lora --model smollm2 --data trec:coarse -o trec-lora --steps 100 --batch-size 8 \\
          --max-length 96 --lr 1e-3
    """
    from edge_lorax.builder.baselines import METHOD_LR
    from edge_lorax.builder.baselines import train_lora as run
    from edge_lorax.builder.loop import TrainConfig

    check_output(output, overwrite)  # before the work: exists, or cannot be written
    config = TrainConfig(lr=lr or METHOD_LR[method], batch_size=batch_size, max_length=max_length, steps=steps,
                         epochs=epochs, seed=seed, patience=patience)  # range-checked; the model in train_lora
    _set_threads(threads)
    task = _load_cli_task(data, text_column, label_column, kind, validation_file, test_file, seed)
    report = run(task, output, method=method, rank=rank, alpha=alpha, model=model, config=config, overwrite=overwrite,
                 targets=tuple(t.strip() for t in targets.split(",")) if targets else None, kind=task_type)
    data_out = {"output": output, "test": report.result.test, "validation": report.result.validation,
                "adapter_params": report.adapter_params, "head_params": report.head_params, "bytes": report.bytes}
    _emit(data_out, True) if as_json else click.echo(report.summary())


def _load_cli_task(data, text_column, label_column, kind, validation_file=None, test_file=None, seed=0):
    """The task behind the --data options (vader:... or a file), with the seeded split."""
    from edge_lorax.builder.data import load_task

    return load_task(data, text_column=text_column, label_column=label_column, kind=kind,
                     seed=seed, **({"validation": validation_file, "test": test_file} if not data.startswith("vader:") else {}))


@cli.command("data")
@click.argument("spec")
@_task_file_options
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@_friendly
def data_cmd(spec, text_column, label_column, kind, seed):
    """Check a task and show its split sizes and class counts (a built-in spec or a .csv/.tsv/.jsonl file).

    \b
    Built-in specs:
      vader:<tweets|movies|amazon|nyt>-<binary|3class|regression>  sentiment (committed, MIT)
      spam:sms             SMS spam, ham/spam (committed, CC BY 4.0)
      trec:coarse          TREC-6 question type, 6 classes (fetched into the cache)
      disaster:<category>  disaster-response message category, no/yes, e.g. disaster:request (cache)
      20ng:topic           20 Newsgroups topic, 20 classes (cache)
    Cache-only data is read out of its pip-downloaded package once, checked against a pinned sha256.

    \b
    Example:
      edge-lorax data vader:nyt-3class
      edge-lorax data spam:sms
      edge-lorax data reviews.csv --text-column review --label-column stars
    """
    from edge_lorax.builder.data import task_summary

    _emit(task_summary(_load_cli_task(spec, text_column, label_column, kind, seed=seed)), True)


@cli.command()
@click.argument("bundle", type=click.Path(exists=True, file_okay=False))
@click.argument("prompts", nargs=-1, required=True)
@click.option("--coeffs", type=click.Path(exists=True, dir_okay=False),
              help="user.npz or .onnx_adapter [default: the bundle's defaults].")
@click.option("--max-new-tokens", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--temperature", type=click.FloatRange(min=0), default=0.0, show_default=True, help="0: greedy.")
@click.option("--top-p", type=click.FloatRange(min=0, max=1, min_open=True), default=1.0, show_default=True,
              help="Nucleus sampling (with --temperature > 0).")
@click.option("--top-k", type=click.IntRange(min=0), default=0, show_default=True,
              help="0: no top-k cut (with --temperature > 0).")
@click.option("--seed", type=click.IntRange(min=0), help="Sampling seed (with --temperature > 0).")
@click.option("--chat", is_flag=True, help="Apply the bundle's chat template (one user turn) to each prompt.")
@click.option("--choices", metavar="A,B|auto",
              help="Ask each prompt in the task format decoder users are trained on (the chat turn 'PROMPT\\nAnswer "
                   "with one word: A or B.'), listing these label words; 'auto': the --coeffs user's own labels.")
@click.option("--threads", type=click.IntRange(min=1), help="ONNX Runtime intra-op threads [default: its choice].")
@click.option("--json", "as_json", is_flag=True,
              help="JSON Lines, one object per prompt when it is done: prompt, text, tokens, prompt_tokens, "
                   "time_to_first_token_ms, tokens_per_s (decode rate after the first token; null below two tokens).")
@_friendly
def generate(bundle, prompts, coeffs, max_new_tokens, temperature, top_p, top_k, seed, chat, choices, threads, as_json):
    """Generate text from a decoder bundle for one user (onnxruntime-genai; torch-free). Streams tokens to stdout.

    A user trained or projected for a task (`train --model`, `project`) answers best when asked in the format it was
    trained on: `--choices ham,spam` wraps each prompt as 'PROMPT\\nAnswer with one word: ham or spam.' in the chat
    template (`--choices auto` takes the user's own labels from its file).

    \b
    Examples:
      edge-lorax generate out/llm --chat "What is the capital of France?"
      edge-lorax generate out/llm --coeffs spam.npz --choices ham,spam "WIN a FREE prize, call now"
      edge-lorax generate out/llm --coeffs alice.npz --max-new-tokens 32 --json "Dear Bob,"
    """
    from edge_lorax.runtime.llm import load_llm, task_choices

    llm = load_llm(bundle, threads)
    user = llm.add_user("user", coeffs) if coeffs else None
    words = task_choices(choices, coeffs)
    for prompt in prompts:
        gen = llm.generate(prompt, user, max_new_tokens, temperature, top_p, top_k, seed, chat, words)
        _stream(llm, gen, as_json)


def _stream(llm, gen, as_json: bool):
    """Text as it comes (whole characters: runtime.llm.text_deltas), or one JSON line when the prompt is done."""
    from edge_lorax.runtime.llm import text_deltas

    if not as_json:
        for piece in text_deltas(llm.decode, gen):
            click.echo(piece, nl=False)
        click.echo()
        return
    list(gen)
    click.echo(json.dumps({"prompt": gen.prompt, "text": llm.decode(gen.tokens), "tokens": gen.tokens,
                           "prompt_tokens": gen.prompt_tokens, "time_to_first_token_ms": gen.time_to_first_token_ms,
                           "tokens_per_s": gen.tokens_per_s}))


@cli.command()
@click.argument("bundle", type=click.Path(exists=True, file_okay=False))
@click.option("--data", required=True, type=click.Path(dir_okay=False),
              help="Local examples: a .csv, .tsv or .jsonl file with text and label columns; for a decoder bundle also "
                   "chat JSONL ({\"messages\": [...]}), prompt/completion JSONL or plain text (.txt).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="user.npz to write.")
@_task_file_options
@click.option("--init", type=click.Path(dir_okay=False),
              help="user.npz or .onnx_adapter to start from [default: the bundle's defaults; decoders: the base model].")
@click.option("--method", type=click.Choice(["auto", "head", "mix", "refine", "exact"]), default="auto",
              show_default=True,
              help="head: fit the head only; mix: + mix the bundle's projected sources; then every coefficient by "
                   "refine (forward-only SPSA) or exact (gradient descent on the bundle's model.grad.onnx); auto: "
                   "exact when the bundle ships a gradient graph, else refine.")
@click.option("--steps", type=click.IntRange(min=0),
              help="Optimizer steps in all, exactly: reproducible, --budget-seconds then does not apply "
                   "[default: until --budget-seconds; decoders: 40 steps of batch 8].")
@click.option("--budget-seconds", type=click.FloatRange(min=0, min_open=True),
              help="Wall time for the fit, loading included [default: 55, the process with its imports under 60 s].")
@click.option("--holdout", type=click.FloatRange(0.05, 0.5), default=0.2, show_default=True,
              help="Share of the examples held out to check the fit.")
@click.option("--variant", type=click.Choice(["fp32", "int8", "ort", "int8_ort"]),
              help="Encoders: the bundle's model file to run [default: fp32].")
@click.option("--threads", type=click.IntRange(min=1), help="ONNX Runtime threads [default: all usable cores].")
@click.option("--max-length", type=click.IntRange(min=1), help="Tokens per example [default: 48; decoders: 96].")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Split, minibatches, perturbations.")
@click.option("--json", "as_json", is_flag=True, help="The fit report as JSON.")
@click.option("--overwrite", is_flag=True)
@_friendly
def personalize(bundle, data, output, text_column, label_column, kind, init, method, steps, budget_seconds, holdout,
                variant, threads, max_length, seed, as_json, overwrite):
    """Fit a user on this machine from local examples (torch-free: ONNX Runtime and numpy). Decoder bundles: every
    coefficient by Adam on the bundle's gradient graph, kept if it beats the start on held-out examples.

    \b
    Examples:
      edge-lorax personalize out/demo/bundle --data my_notes.csv -o me.npz
      edge-lorax personalize out/demo/bundle --data my_notes.csv -o me.npz --variant int8 --threads 1
      edge-lorax personalize out/demo-llm/bundle --data chats.jsonl -o me.npz --steps 40 --threads 1
    """
    from edge_lorax.runtime.personalize_llm import personalize_command

    result = personalize_command(bundle, data, output, init=init, method=method, steps=steps, budget_s=budget_seconds,
                                 holdout=holdout, variant=variant, threads=threads or 0, max_length=max_length,
                                 seed=seed, text_column=text_column, label_column=label_column, kind=kind,
                                 overwrite=overwrite, progress=lambda msg: click.echo(msg, err=True))
    _emit({"output": output, **result.report}, as_json)


@cli.command("run")
@click.argument("bundle", type=click.Path(exists=True, file_okay=False))
@click.argument("texts", nargs=-1, required=True)
@click.option("--coeffs", type=click.Path(dir_okay=False), help="user.npz or .onnx_adapter [default: the bundle's defaults].")
@click.option("--profile", default="default", show_default=True, help="default | mobile (1 thread, .ort/int8) | server.")
@click.option("--max-length", default=128, show_default=True, help="Tokens per text (longer texts are truncated).")
@click.option("--json", "as_json", is_flag=True, help="Predictions as JSON.")
@_friendly
def run_cmd(bundle, texts, coeffs, profile, max_length, as_json):
    """Predict with an exported bundle for one user (torch-free runtime).

    \b
    Example:
      edge-lorax run out/bundle --coeffs nyt.npz "what a fine day" "this is awful"
    """
    from edge_lorax.runtime.infer import predict_file

    ran = []
    preds = predict_file(bundle, coeffs, list(texts), profile, max_length, said=ran.append)
    if not as_json:  # which model file the profile picked (mobile: fp32 when no int8 / .ort); JSON: its "model"
        click.echo(ran[0], err=True)
    if as_json:
        click.echo(json.dumps({"bundle": bundle, "coeffs": coeffs, "profile": profile, "model": ran[0].split()[1],
                               "predictions": [p.to_dict() for p in preds]}, indent=1, sort_keys=True))
        return
    for p in preds:
        value = p.label if p.label is not None else (p.score if p.score is not None else f"[{len(p.vector)} floats]")
        click.echo(f"{value}\t{'' if p.label is None or p.score is None else f'{p.score:.4f}'}\t{p.text}")


def _int_list(value: str | None, option: str):
    """"32,128" -> (32, 128); None -> None; InputError naming the option for anything else."""
    if value is None:
        return None
    try:
        return tuple(int(v) for v in value.split(","))
    except ValueError:
        raise InputError(f"{option} {value!r}: give whole numbers, comma-separated (e.g. {option} 1,2)") from None


@cli.command()
@click.argument("bundle", type=click.Path(exists=True, file_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(file_okay=False), help="Report folder to write.")
@click.option("--subspace", type=click.Path(exists=True, file_okay=False),
              help="Encoder bundles (required): the bundle's subspace folder (for the multi-LoRA anchor and the torch "
                   "reference).")
@click.option("--model", help="Base model folder [default: the manifest's base_model]. Decoder bundles: "
                              "onnxruntime-genai's plain build is made from it (none found: no plain row, the report "
                              "says why).")
@click.option("--coeffs", type=click.Path(exists=True, dir_okay=False), help="The bench user [default: seeded random].")
@click.option("--quick", is_flag=True, help="Few configurations, few runs (a smoke test, not a measurement).")
@click.option("--optimum-cli", type=click.Path(exists=True, dir_okay=False),
              help="Encoder bundles: optimum's CLI for the optimum plain / O2 rows [default: $EDGE_LORAX_OPTIMUM_CLI, "
                   "beside this Python, or on PATH; none: those rows are left out, the report says so].")
@click.option("--prompt-tokens", help="Decoder bundles: prompt lengths for time to first token, comma-separated "
                                      "[default: 32,128,512 (those the context fits); quick: 32].")
@click.option("--threads", help="Decoder bundles: intra-op thread counts, comma-separated [default: 1,2; quick: 1].")
@click.option("--new-tokens", type=int, help="Decoder bundles: tokens per decode timing [default: 128; quick: 16].")
@click.option("--users", type=int, help="Decoder bundles: resident users whose memory is measured [default: 1000; "
                                        "quick: 20].")
@_friendly
def bench(bundle, output, subspace, model, coeffs, quick, optimum_cli, prompt_tokens, threads, new_tokens, users):
    """Latency, switch cost and memory report -> report.json/md/png.

    An encoder bundle: vs plain, merged, int8, multi-LoRA, optimum (plain, O2) and torch (a bundle exported with
    --fuse also gets its fused graph's rows). A decoder bundle: time to first token and decode tokens/s at the prompt
    lengths and threads asked for, switch cost and resident users' memory, vs onnxruntime-genai's own plain build of
    the same model (made from --model or the manifest's base model).

    \b
    Examples (on a quiet machine):
      edge-lorax bench out/bundle --subspace out/subspace -o benchmarks/reports/minilm \\
          --optimum-cli .venv-optimum/bin/optimum-cli
      edge-lorax bench out/demo-llm/bundle -o out/bench-llm --prompt-tokens 32,128 --threads 1,2
    """
    import shlex

    from edge_lorax.formats.bundle import TARGET_DECODER, read_manifest

    given = {"--subspace": subspace, "--model": model, "--coeffs": coeffs, "--quick": quick or None,
             "--optimum-cli": optimum_cli, "--prompt-tokens": prompt_tokens, "--threads": threads,
             "--new-tokens": new_tokens, "--users": users}
    command = shlex.join(["edge-lorax", "bench", bundle, "-o", output]
                         + [str(a) for k, v in given.items() if v is not None for a in ((k,) if v is True else (k, v))])
    log = lambda m: click.echo(m, err=True)  # noqa: E731
    if read_manifest(bundle)["target"] == TARGET_DECODER:
        wrong = [k for k in ("--subspace", "--optimum-cli") if given[k] is not None]
        if wrong:
            raise InputError(f"{' and '.join(wrong)}: encoder bundles only; {bundle} is a decoder bundle (its bench "
                             "takes --model, --coeffs, --prompt-tokens, --threads, --new-tokens, --users, --quick)")
        from edge_lorax.bench.llm import run_llm_bench

        out = run_llm_bench(bundle, output, quick, model, coeffs, _int_list(prompt_tokens, "--prompt-tokens"),
                            _int_list(threads, "--threads"), new_tokens, users, command=command, log=log)
    else:
        wrong = [k for k in ("--prompt-tokens", "--threads", "--new-tokens", "--users") if given[k] is not None]
        if wrong:
            raise InputError(f"{', '.join(wrong)}: decoder bundles only; {bundle} is an encoder bundle (its bench "
                             "takes --subspace, --model, --coeffs, --optimum-cli, --quick)")
        if subspace is None:
            raise click.UsageError("Missing option '--subspace': an encoder bundle's bench needs its subspace folder")
        from edge_lorax.bench.run import run_bench

        out = run_bench(bundle, output, quick, model, subspace, coeffs, command, log=log, optimum_cli=optimum_cli)
    _emit({"report": str(out / "report.md"), "json": str(out / "report.json"), "plot": str(out / "report.png")}, False)

from edge_lorax.formats import names as _names  # noqa: E402  (export's choices come from the shared names)


@cli.command()
@click.option("--model", default="default", show_default=True,
              help="Base model folder ('default': the embedded MiniLM; 'smollm2', 'gemma3-270m': the embedded "
                   "decoders).")
@click.option("--subspace", "subspace_dir", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--coeffs", type=click.Path(exists=True, dir_okay=False), help="user.npz: the graph's defaults (else zeros).")
@click.option("-o", "--output", required=True, type=click.Path(), help="Bundle folder to write.")
@click.option("--task", type=click.Choice(_names.TASKS),
              help="Default: from the coefficients' head, else features (encoders) or causal-lm (LM checkpoints).")
@click.option("--num-labels", type=click.IntRange(min=1),
              help="Classification head width [default: the coefficients' head, else the model config's labels]; a "
                   "bundle for a new task's own classes, e.g. --task classification --num-labels 3.")
@click.option("--per-example", is_flag=True, help="Coefficient inputs with a leading batch dim: one user per example.")
@click.option("--merge", is_flag=True, help="Fold the --coeffs user into the weights: no coefficient inputs.")
@click.option("--quantize", type=click.Choice(["int8", "int4"]),
              help="Encoders: also write model.int8.onnx (base weights int8). Decoders: the bundle's base weights are "
                   "int8 or int4 (weight-only MatMulNBits); the coefficient path stays fp32.")
@click.option("--ort-format", is_flag=True, help="Also write .ort files (ORT Mobile) beside each .onnx.")
@click.option("--fuse", "fused", is_flag=True,
              help="Encoders (BERT family): also write model.fused.onnx, ONNX Runtime's Attention / SkipLayerNormalization "
                   "/ BiasGelu with the q/k/v coefficient branches inside (runtime variant 'fused'); a graph that cannot "
                   "be fused is left out and the manifest's `fusion` says why.")
@click.option("--gradient/--no-gradient", default=True, show_default=True,
              help="Classification / regression and decoder bundles: also write model.grad.onnx (loss and its "
                   "gradient with respect to every coefficient and head input, checked against torch autograd), which "
                   "`personalize` trains with on the device.")
@click.option("--builder-option", "builder_options", multiple=True, metavar="KEY=VALUE",
              help="Decoders: an extra option of onnxruntime-genai's model builder, e.g. algo_config=k_quant_mixed "
                   "(int4 with int8 for the LM head and the most sensitive layers). Repeatable.")
@click.option("--exporter", type=click.Choice(["torchscript", "dynamo"]), default="torchscript", show_default=True)
@click.option("--target", type=click.Choice(["onnx-encoder", "genai-decoder", "executorch"]),
              help="executorch: a .pte program (XNNPACK; the executorch extra) whose inputs are the tokens (decoders: and "
                   "their cache positions, the KV cache inside), then the user's tensors in the manifest's user_inputs "
                   "order; encoders fp32 or --quantize int8, decoders fp32 [default: by the model].")
@click.option("--max-cache-len", type=click.IntRange(min=2),
              help="Decoders with --target executorch: KV positions the program holds (prompt + generated tokens) "
                   "[default: 256]; every decode step attends over all of them, so it sets the speed.")
@click.option("--allow-base-mismatch", is_flag=True, help="Accept a model whose id differs from the subspace's base.")
@click.option("--overwrite", is_flag=True)
@click.option("--json", "as_json", is_flag=True)
@_friendly
def export(model, subspace_dir, coeffs, output, task, num_labels, per_example, merge, quantize, ort_format, fused,
           gradient, builder_options, exporter, target, max_cache_len, allow_base_mismatch, overwrite, as_json):
    """Export an ONNX bundle: components baked in, each user's coefficients as swappable inputs, verified vs torch.

    \b
    Decoders (Llama family) get a KV-cache bundle from onnxruntime-genai's model builder; --exporter, --merge and
    --ort-format do not apply to them.

    \b
    Examples:
      edge-lorax export --subspace subspace --coeffs nyt.npz -o bundle --quantize int8 --ort-format
      edge-lorax export --subspace subspace --task classification --num-labels 3 -o bundle3   # for personalize
      edge-lorax export --model smollm2 --subspace smollm2-sub --coeffs spam.npz -o llm --quantize int8
      edge-lorax export --subspace subspace --coeffs nyt.npz -o nyt-pte --target executorch   # ExecuTorch .pte
      edge-lorax export --model smollm2 --subspace smollm2-sub --coeffs spam.npz -o llm-pte --target executorch
    """
    from edge_lorax.describe import describe, verdict
    from edge_lorax.export import ExportConfig, export_bundle
    from edge_lorax.formats.bundle import read_manifest

    config = ExportConfig(task=task, per_example=per_example, merge=merge, quantize=quantize, ort_format=ort_format,
                          overwrite=overwrite, exporter=exporter, num_labels=num_labels,
                          allow_base_mismatch=allow_base_mismatch, builder_options=builder_options, fused=fused,
                          gradient=gradient, target=target, max_cache_len=max_cache_len)
    start = time.perf_counter()
    say = lambda phase: click.echo(f"export: {phase} ({time.perf_counter() - start:.0f} s)", err=True)  # noqa: E731
    path = export_bundle(model, subspace_dir, output, coeffs, config, progress=say)
    manifest = read_manifest(path)
    checks = {v: verdict(c) for v, c in manifest["verification"].items()}  # the rule and the verdict per precision
    _emit({"output": str(path), **describe(path), "task": manifest["task"], "verification": checks}, as_json)


@cli.command()
@click.option("-o", "--output", default="out/demo", show_default=True, type=click.Path(file_okay=False))
@click.option("--steps", default=60, show_default=True, help="Training steps for the trained user.")
@click.option("--no-bench", is_flag=True, help="Skip the quick bench report.")
@click.option("--adapters", type=click.Path(exists=True, file_okay=False),
              help="Folder of the committed source adapters [default: adapters/ (adapters-smollm2/ with --llm) of the "
                   "source checkout].")
@click.option("--llm", is_flag=True, help="The generative job on the embedded SmolLM2: two projected users, one int8 "
              "KV-cache bundle, a user personalised on the device from 48 local examples, answers (before/after for "
              "that one) and timings per user (-o default: out/demo-llm).")
@_friendly
def demo(output, steps, no_bench, adapters, llm):
    """The main job on the embedded defaults: subspace from the committed adapters, two users, export, swap, bench.

    \b
    Examples:
      edge-lorax demo -o out/demo
      edge-lorax demo --llm
    """
    require_extras("demo", "build", "export", *(["llm"] if llm else ([] if no_bench else ["bench"])))
    if llm:
        from edge_lorax.demo_llm import run_llm_demo

        output = "out/demo-llm" if output == "out/demo" else output
        result = run_llm_demo(output, adapters)
        for prompt, answer in result["before"]:
            click.echo(f"{'base':12s} {answer!r:16s} {prompt}  (before the on-device fit)")
        for user, rows in result["answers"].items():
            for prompt, answer in rows:
                click.echo(f"{user:12s} {answer!r:16s} {prompt}")
        for user, t in result["free_generation"].items():
            click.echo(f"{user:12s} {t['time_to_first_token_ms']} ms to first token, {t['tokens_per_s']} tokens/s: {t['text']!r}")
        d = result["device"]
        click.echo(f"{'on-device':12s} held-out exact match {d['heldout_before']['exact_match']:.2f} -> "
                   f"{d['heldout_after']['exact_match']:.2f} on a fifth of its {d['examples']} local examples, "
                   f"{d['steps']} steps, {d['seconds']:.0f} s")
        _say_written(output)
        return
    from edge_lorax.demo import run_demo

    for user, preds in run_demo(output, steps, bench=not no_bench, adapters=adapters).items():
        for p in preds:
            click.echo(f"{user:14s} {p.label:9s} {p.score:.3f}  {p.text}")
    _say_written(output)


def _say_written(output):
    """The demo's last word: what it wrote, on stderr (a newcomer looks there next)."""
    items = sorted(p.name + ("/" if p.is_dir() else "") for p in Path(output).iterdir() if not p.name.startswith("."))
    click.echo(f"[demo] wrote {output}/: {', '.join(items)}", err=True)


_TERMINATED = {}  # "status": 128 + the signal that ended the command (main() exits with it)


def _terminate(signum, frame):
    """SIGTERM/SIGHUP end the command like Ctrl-C: the exception unwinds every `finally`, so atomic writes remove their
    temp folders. Further signals are ignored while that cleanup runs; the exit status is the shell's 128 + signal,
    also when a library re-raises the exit with its own status (Ray's wait turns it into SystemExit(1))."""
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    click.echo(f"Terminated ({signal.Signals(signum).name}): partial output removed", err=True)
    _TERMINATED["status"] = 128 + signum
    raise SystemExit(128 + signum)


def _install_signal_handlers():
    """Route SIGTERM (what `timeout` and service managers send) and SIGHUP through _terminate, unless the caller set
    them to be ignored (nohup) or to something else."""
    import signal

    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) == signal.SIG_DFL:
            signal.signal(sig, _terminate)


def main():
    _install_signal_handlers()
    try:
        cli()
    except SystemExit as e:
        raise SystemExit(_TERMINATED.get("status", e.code)) from None
