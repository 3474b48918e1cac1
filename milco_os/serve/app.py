"""The ASGI app of ``milco-os serve``: one model, its batcher, and the HTTP endpoints.

``create_app(config, engine)`` returns a Starlette app. The model loads in a
thread once the app starts, so ``GET /health`` answers 503 ``loading`` until it
is ready (and 503 ``failed`` when it cannot load); every other endpoint answers
503 until then. See the README's "Serving" section for the request and answer
shapes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from milco_os.core.errors import EngineError, IndexNotFoundError, MilcoOSError, TransientEngineError
from milco_os.encoders import KINDS
from milco_os.engines.base import Engine, Hit
from milco_os.engines.query import MODES, build_search_body
from milco_os.pipeline.search import Explanation, Searcher, SearchOptions
from milco_os.serve.batcher import DynamicBatcher
from milco_os.serve.config import ServeConfig
from milco_os.serve.formats import (
    FORMATS,
    ONE_VIEW_FORMATS,
    encode_answer,
    tei_values,
    vector_features,
)
from milco_os.serve.metrics import Metrics
from milco_os.serve.protocol import Body, RequestError, Unavailable, error_body, parse_json
from milco_os.vectors.pruning import Pruning
from milco_os.vectors.sparse import VIEWS, SparseVector

logger = logging.getLogger("milco_os.serve")

QUERY_FIELDS = ("mode", "alpha", "prune", "collapse", "bm25_fields")
MAX_K = 1000
Handler = Callable[[Request], Awaitable[Response]]


class ServerState:
    """Everything the endpoints share: the config, the loaded encoder, the batcher."""

    def __init__(self, config: ServeConfig, engine: Engine | None,
                 loader: Callable[[], Any] | None = None) -> None:
        self.config = config
        self.engine = engine
        self.loader = loader or self._load_encoder
        self.metrics = Metrics()
        self.encoder: Any = None
        self.load_error: str | None = None
        self.answered = 0
        self.batcher: DynamicBatcher | None = None

    def _load_encoder(self) -> Any:
        from milco_os.encoders import load_encoder

        encoder = load_encoder(self.config.model, self.config.backend, self.config.device)
        for kind in KINDS:  # the first call of a kind pays one-off costs: not a client's
            encoder.encode(["warm-up"], kind=kind, threads=self.config.threads)
        return encoder

    async def load(self) -> None:
        """Load the model in a thread; on failure, record why and stop the server."""
        started = time.monotonic()
        try:
            self.encoder = await asyncio.to_thread(self.loader)
        except Exception as exc:  # any failure means: no model, so no service
            self.load_error = str(exc) if isinstance(exc, MilcoOSError | OSError | ValueError) \
                else f"{type(exc).__name__}: {exc}"
            logger.error("cannot load model %s: %s", self.config.model, self.load_error)
            signal.raise_signal(signal.SIGTERM)  # the server's own graceful stop
            return
        self.metrics.model_loaded.set(1)
        logger.info("model %s ready in %.1f s", self.config.model, time.monotonic() - started)

    def start_batcher(self) -> None:
        c = self.config
        self.batcher = DynamicBatcher(self._encode_now, max_batch=c.max_batch,
                                      max_wait=c.max_wait_ms / 1000, max_queue=c.max_queue,
                                      on_batch=self.metrics.observe_batch,
                                      on_queue=self.metrics.queue.set,
                                      on_wait=self.metrics.queue_seconds.observe)
        self.batcher.start()

    def _encode_now(self, texts: list[str], kind: str) -> list[SparseVector]:
        return self.encoder.encode(texts, kind=kind, batch_size=self.config.max_batch,
                                   threads=self.config.threads)

    def require_encoder(self) -> Any:
        if self.encoder is not None:
            return self.encoder
        if self.load_error:
            raise Unavailable(f"the model failed to load: {self.load_error}")
        raise Unavailable("the model is still loading; GET /health says when it is ready")

    async def encode(self, texts: list[str], kind: str) -> list[SparseVector]:
        self.require_encoder()
        assert self.batcher is not None
        return await self.batcher.submit(texts, kind, self.config.timeout_s)

    def check_token(self, request: Request) -> None:
        token = self.config.token
        if token is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(),
                                                                 token.encode()):
            raise RequestError("missing or wrong bearer token (send 'Authorization: Bearer "
                               "<token>')", 401, "Unauthorized")

    def shutdown_report(self) -> str:
        stats = self.batcher.stats if self.batcher else None
        texts = "" if stats is None else (
            f"; texts: {stats.accepted_texts} accepted, {stats.encoded_texts} encoded, "
            f"{stats.dropped_texts} dropped after their request timed out, "
            f"{stats.rejected_texts} refused (queue full), {self.batcher.queued} left queued")
        return f"stopped after answering {self.answered} requests{texts}"


def endpoint(state: ServerState, name: str, handler: Handler, public: bool = False) -> Handler:
    """``handler`` with the token check, JSON errors and the request metrics."""

    async def route(request: Request) -> Response:
        started = time.perf_counter()
        try:
            if not public:
                state.check_token(request)
            response = await handler(request)
        except (RequestError, Unavailable) as exc:
            response = error_response(exc)
        except Exception:  # a bug: the client gets a 500, the log the traceback
            logger.exception("%s failed", name)
            response = JSONResponse({"error": "internal error (see the server log)",
                                     "error_type": "Backend"}, 500)
        state.answered += 1
        state.metrics.observe_request(name, response.status_code, time.perf_counter() - started)
        return response

    return route


async def http_error(request: Request, exc: Exception) -> Response:
    """Unknown paths and methods answer JSON too."""
    assert isinstance(exc, HTTPException)
    return JSONResponse({"error": f"{request.method} {request.url.path}: {exc.detail}",
                         "error_type": "NotFound" if exc.status_code == 404 else "Validation"},
                        exc.status_code, headers=exc.headers)


def error_response(exc: RequestError | Unavailable) -> JSONResponse:
    headers = {}
    if exc.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    elif exc.status in (429, 503):
        headers["Retry-After"] = "1"
    return JSONResponse(error_body(exc), exc.status, headers=headers)


async def read_body(request: Request, state: ServerState) -> Body:
    """The JSON object of ``request``, refused (413) past the configured size."""
    where = request.url.path
    limit = state.config.max_body_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise RequestError(f"{where}: the body has {declared} bytes; at most {limit}", 413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(f"{where}: the body is over {limit} bytes", 413)
        chunks.append(chunk)
    return Body(parse_json(b"".join(chunks), where), where)


def pruning(body: Body, default: Pruning) -> Pruning:
    """The request's ``prune``, else the server's (parsed once, at start)."""
    spec = body.optional_str("prune")
    if not spec:
        return default
    try:
        return Pruning.parse(spec)
    except ValueError as exc:
        raise RequestError(f'{body.where}: "prune": {exc}') from None


def search_options(body: Body, default_prune: Pruning) -> SearchOptions:
    """The query options shared by ``/dsl`` and ``/search`` (as the CLI's search options)."""
    rule = pruning(body, default_prune)
    fields = body.data.get("bm25_fields")
    if fields is not None and (not isinstance(fields, list) or not fields
                               or not all(isinstance(f, str) and f for f in fields)):
        raise RequestError(f'{body.where}: "bm25_fields" must be a non-empty list of field names')
    extra = {"text_fields": tuple(fields)} if fields else {}
    return SearchOptions(alpha=body.number("alpha", 0.0, 1.0),
                         mode=body.choice("mode", MODES, "default"),
                         collapse=body.flag("collapse", True),
                         prune=None if rule.method == "none" else rule.apply, **extra)


def build_query(options: SearchOptions, vector: SparseVector, text: str, where: str) -> Any:
    try:
        return options.query(vector, text)
    except ValueError as exc:  # option combinations SparseQuery refuses
        raise RequestError(f"{where}: {exc}") from None


def hit_json(hit: Hit, explanation: Explanation | None) -> dict[str, Any]:
    row: dict[str, Any] = {"id": hit.doc_id, "_id": hit.id, "score": hit.score,
                           "source": hit.source}
    if explanation is not None:
        row["explain"] = {"exact_score": explanation.exact_score, "terms": [
            {"view": c.view, "term": c.term, "query_weight": c.query_weight,
             "doc_weight": c.doc_weight, "value": c.value} for c in explanation.contributions]}
    return row


def engine_failure(exc: EngineError, where: str) -> RequestError | Unavailable:
    if isinstance(exc, IndexNotFoundError):
        return RequestError(f"{where}: {exc}", 404, "NotFound")
    if isinstance(exc, TransientEngineError):
        return Unavailable(f"{where}: the search engine is unavailable: {exc}", 503, "Backend")
    return RequestError(f"{where}: the search engine refused the query: {exc}", 502, "Backend")


def create_app(config: ServeConfig, engine: Engine | None = None,
               loader: Callable[[], Any] | None = None) -> Starlette:
    """The server app (``loader`` replaces the model loading, e.g. to preload it)."""
    state = ServerState(config, engine, loader)

    async def encode(request: Request) -> Response:
        body = await read_body(request, state)
        body.refuse_unknown(("texts", "kind", "prune", "views", "format", "readable"))
        texts = body.str_list("texts", max_items=config.max_texts, max_chars=config.max_chars)
        kind = body.choice("kind", KINDS, "query")
        rule = pruning(body, config.prune)
        views = body.views("views", VIEWS)
        fmt = body.choice("format", FORMATS, "milco")
        if fmt in ONE_VIEW_FORMATS and len(views) != 1:
            raise RequestError(f'/encode: "format": "{fmt}" answers one view: set "views" to '
                               '["pivot"] or ["echo"]')
        readable = body.flag("readable", True)
        vectors = await state.encode(texts, kind)
        features = [vector_features(rule.apply(v), views, f"texts[{i}]")
                    for i, v in enumerate(vectors)]
        meta = {"model": config.model, "kind": kind, "prune": str(rule)}
        return JSONResponse(encode_answer(fmt, features, readable, meta))

    async def embed_sparse(request: Request) -> Response:
        body = await read_body(request, state)
        body.refuse_unknown(("inputs", "truncate", "truncation_direction", "prompt_name",
                             "kind", "views", "prune", "return_names"))
        texts = body.str_list("inputs", max_items=config.max_texts, max_chars=config.max_chars,
                              allow_single=True)
        body.flag("truncate", False)  # inputs are always cut to the model's positions
        body.choice("truncation_direction", ("right", "Right"), "right")
        if body.data.get("prompt_name") is not None:
            raise RequestError('/embed_sparse: "prompt_name": MILCO models have no prompts')
        kind = body.choice("kind", KINDS, "query")
        rule = pruning(body, config.prune)
        views = body.views("views", VIEWS)
        names = body.flag("return_names", False)
        vectors = await state.encode(texts, kind)
        pivot_size = len(state.encoder.pivot_vocab)
        return JSONResponse([tei_values(rule.apply(v), views, pivot_size, names)
                             for v in vectors])

    async def dsl(request: Request) -> Response:
        body = await read_body(request, state)
        body.refuse_unknown(("text", "k", "flavour", *QUERY_FIELDS))
        text = body.text("text", max_chars=config.max_chars)
        k = body.integer("k", 10, 1, MAX_K)
        cluster_flavour = state.engine.flavour if state.engine else None
        flavour = body.choice("flavour", ("opensearch", "elasticsearch"),
                              cluster_flavour or "opensearch")
        options = search_options(body, config.prune)
        [vector] = await state.encode([text], "query")
        query = build_query(options, vector, text, "/dsl")
        try:
            if flavour == cluster_flavour:  # the cluster's own clause limit and plugins
                answer = await run_in_threadpool(state.engine.search_body, query, k)
            else:
                answer = build_search_body(query, k, flavour=flavour)
        except EngineError as exc:
            raise engine_failure(exc, "/dsl") from None
        except ValueError as exc:  # a mode the flavour lacks
            raise RequestError(f"/dsl: {exc}") from None
        return JSONResponse(answer)

    async def search(request: Request) -> Response:
        body = await read_body(request, state)
        body.refuse_unknown(("text", "k", "index", "explain", *QUERY_FIELDS))
        if not config.indexes or state.engine is None:
            raise RequestError("/search: this server searches no index (start it with "
                               "--index NAME)", 404, "NotFound")
        index = body.choice("index", config.indexes, config.indexes[0])
        text = body.text("text", max_chars=config.max_chars)
        k = body.integer("k", 10, 1, MAX_K)
        explain = body.flag("explain", False)
        options = search_options(body, config.prune)
        [vector] = await state.encode([text], "query")
        build_query(options, vector, text, "/search")  # refuses bad option mixes as 422
        searcher = Searcher(state.engine, index, state.encoder, options)
        try:
            hits = await run_in_threadpool(searcher.search_vector, vector, text, k)
            explanations = (await run_in_threadpool(searcher.explain_all, hits, vector, text)
                            if explain else [None] * len(hits))
        except EngineError as exc:
            raise engine_failure(exc, "/search") from None
        return JSONResponse({"text": text, "index": index, "hits": [
            hit_json(hit, e) for hit, e in zip(hits, explanations, strict=True)]})

    async def health(request: Request) -> Response:
        if state.encoder is not None:
            return JSONResponse({"status": "ready", "model": config.model,
                                 "queued_texts": state.batcher.queued if state.batcher else 0,
                                 "max_batch": config.max_batch, "indexes": list(config.indexes)})
        if state.load_error:
            return JSONResponse({"status": "failed", "error": state.load_error}, 503)
        return JSONResponse({"status": "loading"}, 503)

    async def metrics(request: Request) -> Response:
        return Response(state.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        state.start_batcher()
        loading = asyncio.get_running_loop().create_task(state.load())
        try:
            yield
        finally:
            # Reached after the server has answered every request it accepted.
            await loading
            await state.batcher.close()
            logger.info(state.shutdown_report())

    routes = [
        Route("/encode", endpoint(state, "encode", encode), methods=["POST"]),
        Route("/embed_sparse", endpoint(state, "embed_sparse", embed_sparse), methods=["POST"]),
        Route("/dsl", endpoint(state, "dsl", dsl), methods=["POST"]),
        Route("/search", endpoint(state, "search", search), methods=["POST"]),
        Route("/health", endpoint(state, "health", health, public=True), methods=["GET"]),
        Route("/metrics", endpoint(state, "metrics", metrics), methods=["GET"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={HTTPException: http_error})
    app.state.serve = state
    return app
