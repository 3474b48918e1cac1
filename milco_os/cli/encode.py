"""`milco-os encode`: print the sparse vectors of texts."""

from __future__ import annotations

import json
import sys

import click

TOP_TERMS = 20


@click.command()
@click.option("--model", "model_path", default="milco-small", show_default=True,
              help="Model folder, named model (milco-small) or hub id.")
@click.option("--kind", type=click.Choice(["query", "document"]), default="query",
              show_default=True, help="Encode as queries (64 tokens) or documents (512).")
@click.option("--prune", default="none", show_default=True,
              help="none | mass:P | topk:K | threshold:T, applied to each view.")
@click.option("--max-length", type=click.IntRange(min=1), help="Tokens per text.")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--drop-special", is_flag=True, help="Drop special tokens (<s>, </s>, [CLS]...).")
@click.option("--device", help="Torch device (default: cuda when available, else cpu).")
@click.option("--json", "as_json", is_flag=True,
              help='One JSON object per line: {"text", "pivot": {term: w}, "echo": {term: w}}.')
@click.argument("texts", nargs=-1, required=True)
def encode(model_path: str, kind: str, prune: str, max_length: int | None, batch_size: int,
           drop_special: bool, device: str | None, as_json: bool,
           texts: tuple[str, ...]) -> None:
    """Encode TEXTS (or one text per line from stdin when TEXT is `-`)."""
    from milco_os.pruning import Pruning

    try:
        pruning = Pruning.parse(prune)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--prune") from None
    inputs = _read_texts(texts)
    from milco_os.encoder import SparseEncoder

    encoder = SparseEncoder.from_pretrained(model_path, device=device)
    vectors = encoder.encode(inputs, kind=kind, batch_size=batch_size, max_length=max_length,
                             keep_special_tokens=not drop_special)
    for text, vector in zip(inputs, vectors, strict=True):
        pruned = pruning.apply(vector)
        if as_json:
            click.echo(json.dumps({"text": text, **pruned.to_dict()}, ensure_ascii=False))
        else:
            click.echo(_readable(text, pruned))


def _read_texts(texts: tuple[str, ...]) -> list[str]:
    out: list[str] = []
    for text in texts:
        if text == "-":
            out.extend(line.rstrip("\n") for line in sys.stdin if line.strip())
        else:
            out.append(text)
    return out


def _readable(text: str, vector) -> str:
    lines = [f"text: {text}"]
    for name in ("pivot", "echo"):
        view = vector.view(name)
        top = " ".join(f"{t}:{w:.3f}" for t, w in list(view.to_dict().items())[:TOP_TERMS])
        more = f" (+{len(view) - TOP_TERMS} more)" if len(view) > TOP_TERMS else ""
        lines.append(f"  {name} [{len(view)} terms]: {top}{more}")
    return "\n".join(lines)
