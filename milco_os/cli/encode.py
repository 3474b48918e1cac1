"""`milco-os encode`: print the sparse vectors of texts."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import Any

import click

from milco_os.cli.options import BACKEND, DEVICE, PRUNE, load_encoder
from milco_os.core.errors import InputError
from milco_os.models.locations import DEFAULT_MODEL

TOP_TERMS = 20


@click.command()
@click.option("--model", "model_path", default=DEFAULT_MODEL, show_default=True,
              help="Model folder, named model (milco-small) or hub id.")
@click.option("--kind", type=click.Choice(["query", "document"]), default="query",
              show_default=True, help="Encode as queries (64 tokens) or documents (512).")
@click.option("--prune", type=PRUNE, default="none", show_default=True,
              help="none | mass:P | topk:K | threshold:T, applied to each view.")
@click.option("--max-length", type=click.IntRange(min=1), help="Tokens per text.")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--drop-special", is_flag=True, help="Drop special tokens (<s>, </s>, [CLS]...).")
@click.option("--device", type=DEVICE,
              help="Torch device (default: cuda when available, else cpu).")
@BACKEND
@click.option("--json", "as_json", is_flag=True,
              help='One JSON object per line: {"text", "pivot": {term: w}, "echo": {term: w}}.')
@click.argument("texts", nargs=-1, required=True)
def encode(model_path: str, kind: str, prune: Any, max_length: int | None, batch_size: int,
           drop_special: bool, device: str | None, backend: str, as_json: bool,
           texts: tuple[str, ...]) -> None:
    """Encode TEXTS (or one text per line from stdin when TEXT is `-`).

    Output stays line-aligned with the input: a blank line gets an empty vector.
    """
    from milco_os.vectors.sparse import SparseVector, SparseView

    inputs = _read_texts(texts)
    encoder = load_encoder(model_path, device, backend, kind)
    texts_to_encode = [t for t in inputs if t.strip()]
    encoded = iter(encoder.encode(texts_to_encode, kind=kind, batch_size=batch_size,
                                  max_length=max_length, keep_special_tokens=not drop_special)
                   if texts_to_encode else [])
    blank = SparseVector(SparseView.empty())
    vectors = [next(encoded) if text.strip() else blank for text in inputs]
    for text, vector in zip(inputs, vectors, strict=True):
        pruned = prune.apply(vector)
        if as_json:
            click.echo(json.dumps({"text": text, **pruned.to_dict()}, ensure_ascii=False))
        else:
            click.echo(_readable(text, pruned))


def _read_texts(texts: tuple[str, ...]) -> list[str]:
    out: list[str] = []
    for text in texts:
        out.extend(read_stdin_lines() if text == "-" else [text])
    return out


def read_stdin_lines() -> list[str]:
    """Standard input's lines, blank ones kept; invalid UTF-8 names the line."""
    return list(iter_stdin_lines())


def iter_stdin_lines() -> Iterator[str]:
    """Standard input's lines as they arrive (a pipe is answered line by line)."""
    for number, raw in enumerate(iter(sys.stdin.buffer.readline, b""), 1):
        try:
            yield raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError as exc:
            raise InputError(f"standard input line {number}: invalid UTF-8 at byte "
                             f"{exc.start}") from None


def _readable(text: str, vector) -> str:
    lines = [f"text: {text}"]
    for name in ("pivot", "echo"):
        view = vector.view(name)
        top = " ".join(f"{t}:{w:.3f}" for t, w in list(view.to_dict().items())[:TOP_TERMS])
        more = f" (+{len(view) - TOP_TERMS} more)" if len(view) > TOP_TERMS else ""
        lines.append(f"  {name} [{len(view)} terms]: {top}{more}")
    return "\n".join(lines)
