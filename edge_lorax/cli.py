"""The `edge-lorax` command: one click group; each command parses options and calls one library function.

Results go to stdout, progress to stderr; bad input is a one-line ClickException (exit 1).
"""

import json
import sys
from functools import wraps

import click

from edge_lorax import __version__

CONTEXT = {"help_option_names": ["-h", "--help"]}


@click.group(context_settings=CONTEXT)
@click.version_option(__version__, prog_name="edge-lorax")
def cli():
    """EigenLoRAx for the edge: build a subspace from LoRA adapters, train users as coefficients, export, run.

    \b
    Examples:
      edge-lorax build adapters/*/ -o subspace --components 8
      edge-lorax project subspace adapters/tweets-binary -o user.npz
      edge-lorax inspect user.npz
    """


def friendly(fn):
    """Turn the library's expected errors into one-line ClickExceptions (exit 1)."""

    @wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (ValueError, KeyError, FileNotFoundError, FileExistsError, RuntimeError) as e:
            raise click.ClickException(str(e).strip("'\"")) from e

    return wrapper


def progress(items, label: str):
    """A tqdm bar on stderr."""
    from tqdm import tqdm

    return tqdm(items, desc=label, file=sys.stderr, leave=False)


def emit(data: dict, as_json: bool):
    """Results on stdout: JSON, or `key: value` lines."""
    if as_json:
        click.echo(json.dumps(data, indent=1, sort_keys=True))
    else:
        for key, value in data.items():
            click.echo(f"{key}: {value}")


@cli.command()
@click.argument("adapters", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(), help="Subspace folder to write.")
@click.option("--components", "-k", type=int, help="Fixed K per module (counts the mean direction with --mean keep).")
@click.option("--explained-variance", type=float, help="Smallest K reaching this explained-variance ratio, e.g. 0.9.")
@click.option("--augment", default=0, show_default=True, help="Random orthogonal directions added per module.")
@click.option("--mean", type=click.Choice(["drop", "keep"]), default="drop", show_default=True,
              help="drop: centre and discard the mean (paper); keep: the mean adapter is component 0.")
@click.option("--seed", default=0, show_default=True)
@click.option("--allow-base-mismatch", is_flag=True, help="Accept adapters whose base model ids differ.")
@click.option("--overwrite", is_flag=True)
@friendly
def build(adapters, output, components, explained_variance, augment, mean, seed, allow_base_mismatch, overwrite):
    """Build a subspace from PEFT LoRA adapter folders.

    \b
    Example:
      edge-lorax build adapters/tweets-* adapters/amazon-* -o subspace -k 8 --mean keep
    """
    from edge_lorax.subspace import build_subspace, save_subspace

    if components is None and explained_variance is None:
        components = 8
    sub = build_subspace(adapters, components=components, explained_variance=explained_variance, augment=augment,
                         mean=mean, seed=seed, allow_base_mismatch=allow_base_mismatch,
                         progress=lambda mods: progress(mods, "modules"))
    save_subspace(sub, output, overwrite)
    from edge_lorax.describe import describe

    emit({"output": output, **describe(output)}, False)


@cli.command()
@click.argument("subspace", type=click.Path(exists=True, file_okay=False))
@click.argument("adapter", type=click.Path(exists=True, file_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="user.npz to write.")
@click.option("--json", "as_json", is_flag=True, help="Per-module errors as JSON.")
@friendly
def project(subspace, adapter, output, as_json):
    """Project an existing LoRA onto a subspace (no training) -> coefficients file.

    \b
    Example:
      edge-lorax project subspace adapters/nyt-binary -o nyt.npz
    """
    from edge_lorax.coeffs import save_coeffs
    from edge_lorax.project import project_adapter
    from edge_lorax.subspace import load_subspace

    result = project_adapter(load_subspace(subspace), adapter)
    save_coeffs(result.coeffs, output)
    data = {"output": output, "relative_error": round(result.overall, 6), "bytes": result.coeffs.nbytes()}
    emit({**data, "module_errors": {m: round(e, 6) for m, e in result.errors.items()}} if as_json else data, as_json)


@cli.command()
@click.argument("subspace", type=click.Path(exists=True, file_okay=False))
@click.argument("coeffs", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(), help="PEFT adapter folder to write.")
@click.option("--merged-model", type=click.Path(), help="Also write the base model with ΔW merged, here.")
@click.option("--model", default="default", show_default=True, help="Base model folder for --merged-model.")
@click.option("--overwrite", is_flag=True)
@friendly
def reconstruct(subspace, coeffs, output, merged_model, model, overwrite):
    """Coefficients -> a standard PEFT LoRA folder (and optionally merged base weights).

    \b
    Example:
      edge-lorax reconstruct subspace nyt.npz -o nyt-lora --merged-model nyt-merged
    """
    from edge_lorax.coeffs import load_coeffs
    from edge_lorax.project import reconstruct_adapter
    from edge_lorax.subspace import load_subspace

    sub, user = load_subspace(subspace), load_coeffs(coeffs)
    reconstruct_adapter(sub, user, output, overwrite)
    if merged_model:
        from edge_lorax.merge import save_merged_model

        save_merged_model(model, sub, user, merged_model, overwrite)
    emit({"output": output, "merged_model": merged_model}, False)


@cli.command()
@click.argument("path", type=click.Path(exists=True))
@click.option("--json", "as_json", is_flag=True)
@friendly
def inspect(path, as_json):
    """Summarise a subspace, coefficients file, PEFT adapter or bundle: modules, K, r, variance, bytes, fingerprint.

    \b
    Example:
      edge-lorax inspect subspace
    """
    from edge_lorax.describe import describe

    emit(describe(path), as_json)


@cli.command()
@click.option("--subspace", "subspace_dir", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--data", required=True, help="vader:<domain>-<binary|3class|regression>, or a .csv/.tsv/.jsonl file.")
@click.option("--text-column", default="text", show_default=True)
@click.option("--label-column", default="label", show_default=True)
@click.option("--kind", type=click.Choice(["classification", "regression"]), default="classification", show_default=True,
              help="Task kind of a data file (vader: tasks know theirs).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="user.npz to write.")
@click.option("--model", default="default", show_default=True, help="Base model folder (must match the subspace).")
@click.option("--rank", type=int, help="Coefficient rank r (default: the subspace's).")
@click.option("--k", "k", type=int, help="Use only the first K components (default: all).")
@click.option("--init", type=click.Choice(["zero_b", "uniform"]), default="zero_b", show_default=True,
              help="zero_b: step 0 is the base model; uniform: U(-0.5, 0.5) both, as in the paper.")
@click.option("--lr", default=4e-3, show_default=True)
@click.option("--steps", type=int, help="Optimizer steps (overrides --epochs).")
@click.option("--epochs", default=1.0, show_default=True)
@click.option("--batch-size", default=32, show_default=True)
@click.option("--max-length", default=64, show_default=True)
@click.option("--patience", default=0, show_default=True, help="Early stopping: evals without a better val loss.")
@click.option("--seed", default=0, show_default=True)
@friendly
def train(subspace_dir, data, text_column, label_column, kind, output, model, rank, k, init, lr, steps, epochs,
          batch_size, max_length, patience, seed):
    """Train a new user's coefficients (+ task head) on frozen components -> user.npz.

    \b
    Example:
      edge-lorax train --subspace subspace --data vader:nyt-binary -o nyt.npz --steps 100
    """
    from edge_lorax.baselines import TrainConfig
    from edge_lorax.data import load_task
    from edge_lorax.subspace import load_subspace
    from edge_lorax.train import train_coeffs

    task = load_task(data, text_column=text_column, label_column=label_column, kind=kind, seed=seed)
    config = TrainConfig(lr=lr, batch_size=batch_size, max_length=max_length, steps=steps, epochs=epochs, seed=seed,
                         patience=patience)
    report = train_coeffs(load_subspace(subspace_dir), task, output, model=model, rank=rank, k=k, init=init, config=config)
    click.echo(report.summary())


def main():
    cli()
