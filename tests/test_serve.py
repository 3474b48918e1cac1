"""`milco-os serve` as clients and engine plugins use it: a real server in a subprocess
on a free 127.0.0.1 port, a tiny random MILCO in the released layout, the local engine.

Every answer is checked against the same model encoding in this process.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _model_helpers import favour_pivot_term, make_tiny
from click.testing import CliRunner

from milco_os.cli import main
from milco_os.encoders import SparseEncoder
from milco_os.engines.local import LocalEngine
from milco_os.engines.query import SparseQuery, build_search_body
from milco_os.engines.terms import decoded, engine_features
from milco_os.pipeline.documents import build_source
from milco_os.pipeline.search import Searcher, SearchOptions
from milco_os.vectors.pruning import Pruning
from milco_os.vectors.sparse import VIEWS

README = Path(__file__).resolve().parents[1] / "README.md"
TOKEN = "s3cret-token-for-tests"
DOCS = {"d1": "Baltimore is the greatest city in America.", "d2": "Der Hund läuft im Park.",
        "d3": "U.S. news: the economy grew.", "d4": "La ville de Paris est grande."}
QUERIES = ["Baltimore: the greatest city", "Wo läuft der Hund?", "u.s. economy", "パリの街"]
START_TIMEOUT = 300  # seconds: imports and model loading on a busy 2-core machine


# ---------------------------------------------------------------- the server process


class ServeProcess:
    """A `milco-os serve` subprocess; ``log`` is its stderr and stdout so far."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.logfile = Path(os.environ.get("TMPDIR", "/tmp")) / f"milco-serve-{self.port}.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "milco_os.cli", "serve", "--port", str(self.port), *args],
            stdout=self.logfile.open("w"), stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})})

    @property
    def log(self) -> str:
        return self.logfile.read_text()

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"the server exited ({self.proc.returncode}):\n{self.log}")
            try:
                if call(self, "GET", "/health")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.5)
        raise AssertionError(f"the server was not ready in {START_TIMEOUT} s:\n{self.log}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=120)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def call(srv: ServeProcess, method: str, path: str, body: Any = None, token: str | None = None,
         raw: bytes | None = None) -> tuple[int, Any, dict[str, str]]:
    """(status, decoded JSON or text, headers) of one request, errors included."""
    data = raw if raw is not None else None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(srv.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=120) as answer:
            status, payload, headers = answer.status, answer.read(), dict(answer.headers)
    except urllib.error.HTTPError as exc:
        status, payload, headers = exc.code, exc.read(), dict(exc.headers)
    text = payload.decode()
    is_json = headers.get("content-type", "").startswith("application/json")
    return status, json.loads(text) if is_json else text, headers


def ok(srv: ServeProcess, path: str, body: Any, token: str | None = None) -> Any:
    status, answer, _ = call(srv, "POST", path, body, token)
    assert status == 200, answer
    return answer


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = make_tiny(tmp_path_factory.mktemp("tiny"))
    favour_pivot_term(folder, ".")  # so escaping of '.' in feature names is always exercised
    return folder


@pytest.fixture(scope="module")
def encoder(model: Path) -> SparseEncoder:
    return SparseEncoder.from_pretrained(model)


@pytest.fixture(scope="module")
def local_root(model: Path, encoder: SparseEncoder,
               tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("local")
    engine = LocalEngine(root)
    engine.create_index("news", meta={"model": str(model), "views": list(VIEWS),
                                      "pruning": "none"})
    vectors = encoder.encode(list(DOCS.values()), kind="document")
    engine.bulk_index("news", [(f"{doc_id}#0", build_source(doc_id, 0, Pruning.parse(
        "topk:200").apply(v), title=text)) for (doc_id, text), v in zip(DOCS.items(), vectors,
                                                                      strict=True)])
    return root


@pytest.fixture(scope="module")
def srv(model: Path, local_root: Path) -> Iterator[ServeProcess]:
    """The main srv: local engine index `news`, a short batching wait, small limits."""
    srv = ServeProcess(["--model", str(model), "--engine", "local", "--local-path", str(local_root),
                  "--index", "news", "--max-texts", "8", "--max-chars", "300",
                  "--max-wait-ms", "20"])
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


def expected_features(encoder: SparseEncoder, text: str, kind: str = "query",
                      prune: str = "none") -> dict[str, dict[str, float]]:
    [vector] = encoder.encode([text], kind=kind)
    vector = Pruning.parse(prune).apply(vector)
    return {view: engine_features(vector.view(view)) for view in VIEWS}


def assert_close(got: Any, want: Any, path: str = "$") -> None:
    """Equal JSON, floats within 1e-5 (batched and single encodings may differ in the last
    bits)."""
    if isinstance(want, float) or isinstance(got, float):
        assert got == pytest.approx(want, rel=1e-5, abs=1e-6), path
    elif isinstance(want, dict):
        assert isinstance(got, dict) and list(got) == list(want), path
        for key in want:
            assert_close(got[key], want[key], f"{path}.{key}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), path
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_close(g, w, f"{path}[{i}]")
    else:
        assert got == want, path


def assert_features_close(got: dict[str, float], want: dict[str, float]) -> None:
    """The same features with the same weights (order aside: near-ties may swap)."""
    assert set(got) == set(want)
    for name, weight in want.items():
        assert got[name] == pytest.approx(weight, rel=1e-5, abs=1e-6), name


# ---------------------------------------------------------------- endpoints


def test_health_reports_the_model_and_binds_loopback(srv: ServeProcess, model: Path) -> None:
    status, answer, _ = call(srv, "GET", "/health")
    assert (status, answer["status"], answer["model"]) == (200, "ready", str(model))
    assert f"http://127.0.0.1:{srv.port}" in srv.log


def test_encode_matches_the_encoder_escaped_and_readable(srv: ServeProcess,
                                                         encoder: SparseEncoder) -> None:
    answer = ok(srv, "/encode", {"texts": QUERIES[:2] + ["u.s. 100%"]})
    assert (answer["kind"], answer["prune"], len(answer["vectors"])) == ("query", "none", 3)
    for text, item in zip(QUERIES[:2] + ["u.s. 100%"], answer["vectors"], strict=True):
        want = expected_features(encoder, text)
        for view in VIEWS:
            assert_features_close(item["features"][view], want[view])
            assert_features_close(item["terms"][view], decoded(want[view]))
    pivot = answer["vectors"][2]["features"]["pivot"]
    assert "%2E" in pivot, "'.' (favoured by the fixture) is escaped in feature names"
    assert not any("." in name for item in answer["vectors"] for f in item["features"].values()
                   for name in f)
    assert "." in answer["vectors"][2]["terms"]["pivot"]


def test_encode_pruning_views_kind_and_engine_formats(srv: ServeProcess,
                                                      encoder: SparseEncoder) -> None:
    text = QUERIES[0]
    want = expected_features(encoder, text, kind="document", prune="topk:7")
    answer = ok(srv, "/encode", {"texts": [text], "kind": "document", "prune": "topk:7",
                                 "views": ["pivot"], "readable": False})
    assert answer["vectors"] == [{"features": {"pivot": pytest.approx(want["pivot"])}}]
    assert len(want["pivot"]) == 7
    ml = ok(srv, "/encode", {"texts": [text, text], "views": ["pivot"], "prune": "topk:5",
                                "format": "ml-commons"})
    assert list(ml) == ["response"] and len(ml["response"]) == 2
    assert_features_close(ml["response"][0], expected_features(encoder, text, "query",
                                                               "topk:5")["pivot"])
    es = ok(srv, "/encode", {"texts": [text], "views": ["echo"], "format": "elasticsearch"})
    tokens = {e["token"]: e["weight"] for e in es["sparse_embeddings"][0]["embedding"]}
    assert_features_close(tokens, expected_features(encoder, text)["echo"])
    status, error, _ = call(srv, "POST", "/encode", {"texts": [text], "format": "ml-commons"})
    assert status == 422 and '"views"' in error["error"]


def test_embed_sparse_speaks_text_embeddings_inference(srv: ServeProcess,
                                                       encoder: SparseEncoder) -> None:
    [vector] = encoder.encode([QUERIES[1]], kind="query")
    pivot_size = len(encoder.pivot_vocab)
    answer = ok(srv, "/embed_sparse", {"inputs": QUERIES[1], "truncate": True})
    assert isinstance(answer, list) and len(answer) == 1
    values = answer[0]
    assert [v["index"] for v in values] == sorted(v["index"] for v in values)
    assert set(values[0]) == {"index", "value"}
    want = {int(i): float(w) for i, w in zip(vector.pivot.ids, vector.pivot.weights,
                                             strict=True)}
    want.update({pivot_size + int(i): float(w) for i, w in zip(vector.echo.ids,
                                                             vector.echo.weights, strict=True)})
    assert_features_close({str(v["index"]): v["value"] for v in values},
                          {str(i): w for i, w in want.items()})
    named = ok(srv, "/embed_sparse", {"inputs": [QUERIES[1], QUERIES[2]], "views": ["echo"],
                                         "prune": "topk:3", "return_names": True})
    echo_terms = [len(v.echo) for v in encoder.encode([QUERIES[1], QUERIES[2]], kind="query")]
    assert [len(values) for values in named] == [min(3, n) for n in echo_terms]
    top = {f"echo.{t}" for t in expected_features(encoder, QUERIES[1], prune="topk:3")["echo"]}
    assert {v["name"] for v in named[0]} == top
    assert all(v["index"] >= pivot_size for v in named[0])


def test_dsl_is_the_body_the_library_builds(srv: ServeProcess, encoder: SparseEncoder) -> None:
    text = QUERIES[2]
    [vector] = encoder.encode([text], kind="query")
    vector = Pruning.parse("topk:10").apply(vector)
    for request, query, flavour in [
        ({}, SparseQuery(vector, collapse=True), "opensearch"),
        ({"flavour": "elasticsearch", "alpha": 0.3, "collapse": False, "k": 3},
         SparseQuery(vector, alpha=0.3), "elasticsearch"),
        ({"mode": "two-phase", "collapse": False}, SparseQuery(vector, mode="two-phase"),
         "opensearch"),
    ]:
        answer = ok(srv, "/dsl", {"text": text, "prune": "topk:10", **request})
        assert_close(answer, build_search_body(query, request.get("k", 10), flavour=flavour))
    status, error, _ = call(srv, "POST", "/dsl", {"text": text, "mode": "neural-sparse",
                                                     "flavour": "elasticsearch"})
    assert status == 422 and "neural-search" in error["error"]


def test_search_returns_the_hits_and_explanations_of_the_library(
        srv: ServeProcess, encoder: SparseEncoder, local_root: Path) -> None:
    searcher = Searcher(LocalEngine(local_root), "news", encoder, SearchOptions(collapse=True))
    for text in QUERIES:
        answer = ok(srv, "/search", {"text": text, "k": 3, "explain": True})
        [want] = searcher.search([text], k=3)
        assert answer["index"] == "news"
        assert [h["id"] for h in answer["hits"]] == [h.doc_id for h in want]
        for hit, expected in zip(answer["hits"], want, strict=True):
            assert hit["score"] == pytest.approx(expected.score, rel=1e-5)
            assert hit["source"]["title"] == DOCS[hit["id"]]
            explain = hit["explain"]
            assert explain["exact_score"] == pytest.approx(hit["score"], rel=1e-4)
            assert sum(t["value"] for t in explain["terms"]) == pytest.approx(
                explain["exact_score"], rel=1e-6)
    status, error, _ = call(srv, "POST", "/search", {"text": "x", "index": "other"})
    assert status == 422 and "news" in error["error"]


@pytest.mark.parametrize(("body", "status", "says"), [
    (b"{not json", 400, "not valid JSON"),
    (b'["a list"]', 400, "JSON object"),
    ({"texts": ["a"], "colour": 1}, 422, "colour"),
    ({"texts": []}, 422, "empty"),
    ({"texts": ["a", 3]}, 422, "list of strings"),
    ({"texts": ["a"] * 9}, 413, "at most 8"),
    ({"texts": ["a", "x" * 301]}, 413, '"texts"[1] has 301 characters'),
    ({"texts": ["a"], "kind": "passage"}, 422, '"kind"'),
    ({"texts": ["a"], "prune": "top:3"}, 422, '"prune"'),
    ({"texts": ["a"], "views": ["pivot", "pivot"]}, 422, '"views"'),
    ({"texts": ["a"], "readable": "yes"}, 422, '"readable"'),
    ({"texts": ["a", ""]}, 422, '"texts"[1] is blank'),
    ({"texts": ["   "]}, 422, '"texts"[0] is blank'),
    ({"texts": ["ok", "bad \ud800 text"]}, 422, '"texts"[1]: lone surrogate U+D800'),
    ({"texts": ["a"], "prune": "topk:0"}, 422, "k = 0 keeps no term"),
    (b"[" * 30_000 + b"]" * 30_000, 400, "nests JSON too deeply"),
])
def test_bad_requests_get_one_json_error_naming_the_field(srv: ServeProcess, body: Any,
                                                          status: int, says: str) -> None:
    raw = body if isinstance(body, bytes) else None
    got, error, _ = call(srv, "POST", "/encode", None if raw else body, raw=raw)
    assert got == status and set(error) == {"error", "error_type"}
    assert says in error["error"]


def test_oversized_body_unknown_paths_and_methods(srv: ServeProcess) -> None:
    # Over the 80,064 bytes that 8 texts of 300 characters can take, small enough to send whole.
    status, error, _ = call(srv, "POST", "/encode", raw=b" " * 90_000)
    assert status == 413 and "bytes" in error["error"]
    assert call(srv, "GET", "/nowhere")[:2] == (404, {"error": "GET /nowhere: Not Found",
                                                         "error_type": "NotFound"})
    status, error, _ = call(srv, "GET", "/encode")
    assert status == 405 and error["error_type"] == "Validation"


def test_concurrent_requests_are_batched_and_each_gets_its_own_vector(
        srv: ServeProcess, encoder: SparseEncoder) -> None:
    texts = [f"{q} #{i}" for i in range(6) for q in QUERIES]
    answers: dict[int, Any] = {}

    def client(i: int) -> None:
        answers[i] = call(srv, "POST", "/encode", {"texts": [texts[i]], "prune": "topk:20"})

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(texts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(answers) == list(range(len(texts)))
    for i, (status, answer, _) in answers.items():
        assert status == 200
        want = expected_features(encoder, texts[i], prune="topk:20")
        assert_features_close(answer["vectors"][0]["features"]["pivot"], want["pivot"])
    metrics = call(srv, "GET", "/metrics")[1]
    calls = metric(metrics, "milco_serve_batch_texts_count")
    batched = metric(metrics, "milco_serve_batch_texts_sum")
    assert batched >= len(texts) and calls < batched, "some batch held several requests"
    assert metric(metrics, 'milco_serve_requests_total{endpoint="encode",status="200"}') >= len(
        texts)
    assert metric(metrics, "milco_serve_queue_texts") == 0
    # every request's wait for its model call is timed apart from the call itself
    assert metric(metrics, "milco_serve_queue_seconds_count") >= len(texts)
    assert 0 < metric(metrics, "milco_serve_queue_seconds_sum") < metric(
        metrics, 'milco_serve_request_seconds_sum{endpoint="encode"}')
    assert metric(metrics, "milco_serve_model_loaded") == 1
    assert 'milco_serve_request_seconds_bucket{endpoint="encode",le="0.5"}' in metrics


def metric(exposition: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} (\S+)$", exposition, re.MULTILINE)
    assert match, f"{name} not in /metrics"
    return float(match.group(1))


# ---------------------------------------------------------------- the engine blueprints


def blueprint(name: str) -> dict[str, Any]:
    """The JSON block after ``<!-- blueprint:NAME -->`` in the README."""
    match = re.search(rf"<!-- blueprint:{name} -->\s*```json\n(.*?)```", README.read_text(),
                      re.DOTALL)
    assert match, f"README has no blueprint {name}"
    return json.loads(match.group(1))


def json_path(data: Any, path: str) -> list[Any]:
    """The values at ``path`` (``$.a[*].b``: keys and ``[*]``, as the plugins' paths use)."""
    values = [data]
    for step in re.findall(r"\.(\w+)|\[\*\]", path.removeprefix("$")):
        values = [v[step] for v in values] if step else [x for v in values for x in v]
    return values


def fill(template: str, values: dict[str, str]) -> str:
    """A plugin's ``${name}`` substitution; every placeholder must be known."""
    def value(match: re.Match) -> str:
        assert match.group(1) in values, f"unknown placeholder {match.group(0)}"
        return values[match.group(1)]
    return re.sub(r"\$\{([\w.]+)\}", value, template)


def plugin_call(srv: ServeProcess, url: str, headers: dict[str, str], body: str) -> Any:
    """POST ``body`` to the blueprint's URL (its host:port replaced by the test server's)."""
    request = urllib.request.Request(url.replace("http://127.0.0.1:8080", srv.url),
                                     data=body.encode(), headers=headers, method="POST")
    with urllib.request.urlopen(request, timeout=60) as answer:
        assert answer.status == 200
        return json.loads(answer.read())


def test_elasticsearch_custom_service_blueprint(token_srv: ServeProcess,
                                                encoder: SparseEncoder) -> None:
    settings = blueprint("elasticsearch-inference")["service_settings"]
    texts = [QUERIES[0], QUERIES[3]]
    for context, kind in settings["input_type"]["translation"].items():
        # ES fills templates with JSON values (its docs: templates are not quoted).
        values = {"input": json.dumps(texts), "input_type": json.dumps(kind),
                  "api_key": TOKEN}
        headers = {k: fill(v, values) for k, v in settings["headers"].items()}
        answer = plugin_call(token_srv, settings["url"], headers,
                             fill(settings["request"], values))
        parser = settings["response"]["json_parser"]
        tokens, weights = json_path(answer, parser["token_path"]), json_path(
            answer, parser["weight_path"])
        per_text = json_path(answer, "$.sparse_embeddings[*]")
        assert len(per_text) == len(texts), context
        start = 0
        for text, item in zip(texts, per_text, strict=True):
            n = len(item["embedding"])
            got = dict(zip(tokens[start:start + n], weights[start:start + n], strict=True))
            assert_features_close(got, expected_features(encoder, text, kind)["pivot"])
            start += n
    query = blueprint("elasticsearch-query")["query"]["bool"]["should"]
    assert [(c["sparse_vector"]["field"], c["sparse_vector"]["inference_id"]) for c in query] \
        == [("pivot", "milco-pivot"), ("echo", "milco-echo")]


def test_opensearch_ml_commons_connector_blueprint(token_srv: ServeProcess,
                                                   encoder: SparseEncoder) -> None:
    connector = blueprint("opensearch-connector")
    [action] = connector["actions"]
    assert action["pre_process_function"] == "connector.pre_process.default.embedding"
    texts = [QUERIES[1]]  # neural_sparse sends one query text
    # The default pre-process function puts the text_docs, as a JSON array, in ${parameters.input}.
    values = {"parameters.input": json.dumps(texts), "credential.token": TOKEN}
    headers = {k: fill(v, values) for k, v in action["headers"].items()}
    answer = plugin_call(token_srv, action["url"], headers, fill(action["request_body"],
                                                                     values))
    # No post-process function: ml-commons keeps the JSON object as dataAsMap, and
    # neural_sparse reads dataAsMap["response"], one {token: weight} map per text.
    [tokens] = answer["response"]
    assert_features_close(tokens, expected_features(encoder, texts[0])["pivot"])
    assert all(w > 0 for w in tokens.values()) and not any("." in t for t in tokens)
    query = blueprint("opensearch-query")["query"]["bool"]["should"]
    assert [next(iter(c["neural_sparse"])) for c in query] == ["pivot", "echo"]


# ---------------------------------------------------------------- token, overload, timeout


@pytest.fixture(scope="module")
def token_srv(model: Path) -> Iterator[ServeProcess]:
    srv = ServeProcess(["--model", str(model), "--engine", "local", "--max-queue", "6",
                  "--max-texts", "6", "--max-batch", "2"], env={"MILCO_OS_SERVE_TOKEN": TOKEN})
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


def test_bearer_token_is_required_and_never_logged(token_srv: ServeProcess) -> None:
    for token in (None, "wrong"):
        status, error, headers = call(token_srv, "POST", "/encode", {"texts": ["a"]}, token)
        assert (status, error["error_type"], headers["www-authenticate"]) == (
            401, "Unauthorized", "Bearer")
    assert call(token_srv, "GET", "/metrics")[0] == 401
    assert call(token_srv, "GET", "/metrics", token=TOKEN)[0] == 200
    assert call(token_srv, "GET", "/health")[0] == 200  # probes need no token
    assert ok(token_srv, "/encode", {"texts": ["a"]}, TOKEN)["vectors"]
    assert "bearer token required" in token_srv.log
    assert TOKEN not in token_srv.log


def test_overload_is_refused_with_429_and_every_request_answered_once(
        token_srv: ServeProcess) -> None:
    statuses: list[int] = []
    lock = threading.Lock()

    def client(i: int) -> None:
        status, answer, headers = call(token_srv, "POST", "/encode",
                                       {"texts": [f"text {i} {j}" for j in range(6)]}, TOKEN)
        if status == 429:
            assert answer["error_type"] == "Overloaded" and headers["retry-after"] == "1"
        else:
            assert status == 200 and len(answer["vectors"]) == 6
        with lock:
            statuses.append(status)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(statuses) == 16 and 429 in statuses and 200 in statuses
    metrics = call(token_srv, "GET", "/metrics", token=TOKEN)[1]
    assert metric(metrics, 'milco_serve_requests_total{endpoint="encode",status="429"}') == (
        statuses.count(429))


# ---------------------------------------------------------------- start-up and shutdown


def test_graceful_shutdown_answers_every_accepted_request(model: Path) -> None:
    srv = ServeProcess(["--model", str(model), "--max-batch", "4"])
    srv.wait_ready()
    outcomes: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client(i: int) -> None:
        while not stop.is_set():
            try:
                status, answer, _ = call(srv, "POST", "/encode", {"texts": [f"q{i}"] * 4})
                outcome = f"http {status}"
                assert status != 200 or len(answer["vectors"]) == 4
            except OSError:  # the listener is closed: refused before anything was read
                outcome = "refused"
                stop.wait(0.05)
            with lock:
                outcomes.append(outcome)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    while outcomes.count("http 200") < 8:
        time.sleep(0.05)
    before = call(srv, "GET", "/metrics")[1]  # probes and this call are answered requests too
    probes = sum(float(n) for endpoint, n in re.findall(
        r'^milco_serve_requests_total\{endpoint="([^"]*)".*\} (\S+)$', before, re.MULTILINE)
        if endpoint != "encode")  # the clients count their own /encode answers
    assert srv.stop() == 0
    stop.set()
    for thread in threads:
        thread.join()
    answered = len(outcomes) - outcomes.count("refused")
    assert set(outcomes) <= {"http 200", "refused"}, outcomes
    report = re.search(r"stopped after answering (\d+) requests; texts: (\d+) accepted, "
                       r"(\d+) encoded, (\d+) dropped .*?, (\d+) left queued", srv.log)
    assert report, srv.log
    requests, accepted, encoded, dropped, left = map(int, report.groups())
    assert requests == answered + probes + 1
    assert accepted == encoded == 4 * answered and dropped == left == 0


def test_a_model_that_cannot_load_stops_the_server_with_one_line(tmp_path: Path) -> None:
    srv = ServeProcess(["--model", str(tmp_path / "missing")])
    assert srv.proc.wait(timeout=START_TIMEOUT) == 2
    lines = [line for line in srv.log.splitlines() if line.startswith("Error:")]
    assert lines and "cannot load model" in lines[0] and "Traceback" not in srv.log


def test_bad_options_are_refused_before_serving(model: Path, local_root: Path,
                                                tmp_path: Path) -> None:
    for extra, says in [
        (["--prune", "top:3"], "--prune"),
        (["--token-file", str(tmp_path / "none")], "cannot read the token file"),
        (["--max-texts", "64", "--max-queue", "8"], "max_texts"),
        (["--engine", "local", "--local-path", str(local_root), "--index", "news",
          "--model", str(tmp_path)], "was built with model"),
    ]:
        done = CliRunner().invoke(main, ["serve", "--model", str(model), *extra])
        assert done.exit_code == 2, (extra, done.output)
        assert says in done.output and isinstance(done.exception, SystemExit)  # no traceback


def test_serving_beyond_loopback_without_a_token_is_warned_about(model: Path, local_root: Path,
                                                                 tmp_path: Path) -> None:
    # An index built by another model stops the command right after the warning.
    refused = ["--engine", "local", "--local-path", str(local_root), "--index", "news",
               "--model", str(tmp_path)]
    for host, warned in (("0.0.0.0", True), ("::", True), ("127.0.0.1", False),
                         ("localhost", False)):
        done = CliRunner().invoke(main, ["serve", "--host", host, *refused])
        assert done.exit_code == 2, done.output
        assert ("without a bearer token" in done.output) is warned, (host, done.output)


def test_search_answers_a_pipe_query_by_query_before_it_closes(model: Path,
                                                               local_root: Path) -> None:
    """`milco-os search` reading a pipe prints each query's hits as its line arrives."""
    command = [sys.executable, "-m", "milco_os.cli", "search", "--engine", "local",
               "--local-path", str(local_root), "--index", "news", "--model", str(model),
               "--json", "--k", "2"]
    with subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, text=True) as search:
        answers = []
        for query in QUERIES[:2]:
            search.stdin.write(query + "\n")
            search.stdin.flush()  # the pipe stays open: the answer must come anyway
            answers.append(json.loads(search.stdout.readline()))
        search.stdin.close()
        assert search.stdout.read() == "" and search.wait(timeout=60) == 0
    assert [a["query"] for a in answers] == QUERIES[:2]
    assert all(len(a["hits"]) == 2 for a in answers)
