"""`milco-os model`: create random MILCO models and describe model folders."""

from __future__ import annotations

import json
from pathlib import Path

import click

from milco_os.errors import InputError


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
    from milco_os.presets import init_model

    click.echo(str(init_model(preset, out_dir, seed=seed)))


@model.command("info")
@click.argument("path")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def info(path: str, as_json: bool) -> None:
    """Parts, parameter counts, vocabulary sizes, echo head and scale of a model folder."""
    from milco_os.modeling import CheckpointError, load_sparse_model

    try:
        loaded = load_sparse_model(path)
    except (CheckpointError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    details = _describe(loaded)
    if as_json:
        click.echo(json.dumps(details))
        return
    for key, value in details.items():
        click.echo(f"{key}: {value}")


def _describe(loaded) -> dict:
    config = loaded.config
    parts = loaded.num_parameters_by_part()
    if config.model_type == "milco":
        scale = None if loaded.scale is None else float(loaded.scale.detach()[0])
        vocab = {"pivot_vocab": config.en_vocab_size, "echo_vocab": config.m_vocab_size}
        echo = bool(config.echo)
    else:
        scale, echo = None, False
        vocab = {"pivot_vocab": config.vocab_size, "echo_vocab": 0}
    return {"model_type": config.model_type, "parameters": parts,
            "total_parameters": sum(p.numel() for p in loaded.parameters()), **vocab,
            "echo": echo, "scale": scale}
