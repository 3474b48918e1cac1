"""`milco-os search` (query an index with text) and `milco-os dsl` (print a query body)."""

from __future__ import annotations

import dataclasses
import functools
import json
import sys
from collections.abc import Iterator
from typing import Any

import click

from milco_os.cli.encode import iter_stdin_lines
from milco_os.cli.index import engine_options
from milco_os.cli.options import (
    BACKEND,
    DEVICE,
    PRUNE,
    UNIT_INTERVAL,
    connection_options,
    index_model,
    load_encoder,
)
from milco_os.core.errors import InputError
from milco_os.engines.connection import ConnectionSettings
from milco_os.engines.query import MODES, TWO_PHASE_EXPANSION_RATE, TWO_PHASE_PRUNE_RATIO


def _options(alpha: float | None, mode: str, collapse: bool, query_prune: Any | None,
             bm25_fields: tuple[str, ...], prune_ratio: float, expansion_rate: float) -> Any:
    from milco_os.pipeline.search import SearchOptions

    prune = query_prune.apply if query_prune else None
    fields = {"text_fields": bm25_fields} if bm25_fields else {}
    return SearchOptions(alpha=alpha, mode=mode, collapse=collapse, prune=prune,
                         prune_ratio=prune_ratio, expansion_rate=expansion_rate, **fields)


def with_model_pruning(options: Any, model: str) -> Any:
    """``options`` with the query pruning ``model`` is best searched with
    (:func:`~milco_os.vectors.pruning.recommended_pruning`) when --query-prune was not given.

    >>> from milco_os.pipeline.search import SearchOptions
    >>> with_model_pruning(SearchOptions(), "milco-small").prune is not None
    True
    >>> with_model_pruning(SearchOptions(), "my-model").prune is None
    True
    """
    from milco_os.vectors.pruning import recommended_pruning

    rule = recommended_pruning(model, "query")
    if options.prune is not None or rule.method == "none":
        return options
    return dataclasses.replace(options, prune=rule.apply)


def _query_batches(texts: tuple[str, ...]) -> Iterator[list[str]]:
    """The arguments as one batch, or standard input one line at a time as lines arrive
    (a pipe is answered query by query, not at its end)."""
    if texts:
        yield list(texts)
        return
    found = 0
    for line in iter_stdin_lines():
        if line.strip():
            found += 1
            yield [line.strip()]
    if not found:
        raise click.UsageError("no query: give TEXT arguments or lines on standard input")


_query_options = [
    click.option("--alpha", type=UNIT_INTERVAL,
                 help="Weight pivot x alpha + echo x (1 - alpha) [default: the released plain "
                      "sum; 0.5 ranks the same with halved scores]."),
    click.option("--mode", type=click.Choice(MODES), default="default", show_default=True,
                 help="default: exact dot product; two-phase: high-weight terms then rescoring; "
                      "hybrid: plus BM25; neural-sparse: OpenSearch neural_sparse query."),
    click.option("--prune-ratio", type=click.FloatRange(0.0, 1.0, min_open=True),
                 default=TWO_PHASE_PRUNE_RATIO, show_default=True,
                 help="two-phase: phase 1 searches the terms weighing >= this x the top weight."),
    click.option("--expansion-rate", type=click.FloatRange(min=1.0),
                 default=TWO_PHASE_EXPANSION_RATE, show_default=True,
                 help="two-phase: the best k x this hits are rescored with every term."),
    click.option("--query-prune", type=PRUNE,
                 help="Prune query vectors: none | mass:P | topk:K | threshold:T [default: what "
                      "the model is best searched with: topk:32 for milco-small, else none]."),
    click.option("--collapse/--no-collapse", default=True, show_default=True,
                 help="One hit per document (its best passage)."),
    click.option("--bm25-field", "bm25_fields", multiple=True,
                 help="Field for hybrid mode's BM25, repeatable, e.g. text.en or text.cjk for "
                      "language-aware analysis [default: title and text]."),
    click.option("--device", type=DEVICE, help="Torch device for the model."),
    BACKEND,
    click.option("--threads", type=click.IntRange(min=1), expose_value=False,
                 callback=lambda _ctx, _param, n: _set_query_threads(n),
                 help="CPU threads for encoding a query [env MILCO_OS_THREADS; default 1, "
                      "which keeps latency steady when other work shares the cores]."),
]


_OPTION_NAMES = ("alpha", "mode", "prune_ratio", "expansion_rate", "query_prune", "collapse",
                 "bm25_fields")


def _set_query_threads(n: int | None) -> None:
    if n is not None:
        from milco_os.core.threads import configure

        configure(query=n)


def query_options(func: Any) -> Any:
    """The options of :data:`_query_options` (but --device, --backend), passed as one ``options``:
    a :class:`~milco_os.pipeline.search.SearchOptions`."""
    @functools.wraps(func)
    def command(*args: Any, **kwargs: Any) -> Any:
        kwargs["options"] = _options(**{name: kwargs.pop(name) for name in _OPTION_NAMES})
        return func(*args, **kwargs)

    for option in reversed(_query_options):
        command = option(command)
    return command


@click.command()
@click.argument("texts", nargs=-1)
@click.option("--index", "index_name", required=True, help="Index to search.")
@click.option("--model", help="Model folder or hub id [default: the model in the index _meta].")
@click.option("--k", type=click.IntRange(min=1), default=10, show_default=True,
              help="Hits per query.")
@query_options
@click.option("--json", "as_json", is_flag=True,
              help='One JSON line per query: {"query", "hits": [{"id", "score", "title"}]}.')
@click.option("--explain", is_flag=True, help="Show the shared terms behind each hit's score.")
@click.option("--force", is_flag=True,
              help="Search even if --model differs from the model the index was built with.")
@engine_options
def search(texts: tuple[str, ...], index_name: str, model: str | None, k: int,
           options: Any, device: str | None, backend: str, as_json: bool, explain: bool,
           force: bool, engine: Any) -> None:
    """Search an index with TEXT (or one query per line of standard input).

    Hit ids are the corpus's own document ids.
    """
    from milco_os.pipeline.search import Searcher

    model = index_model(engine, index_name, model, force)
    encoder = load_encoder(model, device, backend)
    searcher = Searcher(engine, index_name, encoder, with_model_pruning(options, model))
    for queries in _query_batches(texts):
        for text, vector in zip(queries, searcher.encode(queries), strict=True):
            hits = searcher.search_vector(vector, text, k)
            explanations = searcher.explain_all(hits, vector, text) if explain else []
            if as_json:
                click.echo(json.dumps(_json_line(text, hits, explanations), ensure_ascii=False))
            else:
                click.echo(_text_block(text, hits, explanations))
            sys.stdout.flush()


def _json_line(text: str, hits: list, explanations: list) -> dict[str, Any]:
    rows = [{"id": h.doc_id, "score": h.score, "title": h.source.get("title")} for h in hits]
    for row, explanation in zip(rows, explanations, strict=False):
        row["explain"] = [{"view": c.view, "term": c.term, "query_weight": c.query_weight,
                           "doc_weight": c.doc_weight, "value": c.value}
                          for c in explanation.contributions]
    return {"query": text, "hits": rows}


def _text_block(text: str, hits: list, explanations: list) -> str:
    lines = [f"query: {text}"]
    for rank, hit in enumerate(hits, 1):
        title = hit.source.get("title") or (hit.source.get("text") or "")[:60]
        lines.append(f"{rank:3d}. {hit.doc_id}  {hit.score:.4f}  {title}")
        if explanations:
            lines.extend("     " + line for line in explanations[rank - 1].format(top=10)
                         .splitlines()[1:])
    return "\n".join(lines)


@click.command()
@click.argument("text")
@click.option("--model", help="Model folder or hub id [default: the model in --index's _meta].")
@click.option("--index", "index_name",
              help="Build the body for this index's cluster (its clause limit and flavour).")
@click.option("--k", type=click.IntRange(min=1), default=10, show_default=True)
@query_options
@connection_options
def dsl(text: str, model: str | None, index_name: str | None, k: int, options: Any,
        device: str | None, backend: str, settings: ConnectionSettings) -> None:
    """Print the _search body for TEXT, to paste into any OpenSearch/Elasticsearch client.

    Without --index (or with a local index), the body is for the --engine flavour
    (OpenSearch for the local engine) with the default clause limit (1024).
    """
    from milco_os.engines import open_engine
    from milco_os.engines.query import build_search_body

    if not (model or index_name):
        raise click.UsageError("give --model, or --index to use the model recorded there")
    if not text.strip():
        raise InputError("empty query: give a TEXT with at least one word")
    engine = open_engine(settings, settings.engine) if index_name else None
    model = index_model(engine, index_name, model) if engine else model
    encoder = load_encoder(model, device, backend)
    [vector] = encoder.encode([text], kind="query")
    query = with_model_pruning(options, model).query(vector, text)
    body = (engine.search_body(query, k) if engine and engine.flavour
            else build_search_body(query, k, flavour=settings.engine if settings.engine
                                   in ("opensearch", "elasticsearch") else "opensearch"))
    click.echo(json.dumps(body, indent=2, ensure_ascii=False))
