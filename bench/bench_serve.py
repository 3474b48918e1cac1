"""Load test of ``milco-os serve``: dynamic batching against sequential encoding.

All in one run, on the same model and the same texts (distinct English sentences,
one per request, encoded as queries with the same pruning):

- baseline: sequential single-text encoding in this process
  (``encoder.encode([text])`` on the same ``--backend``, pruning and engine features,
  one after the other);
- the server on a free 127.0.0.1 port, with 1, 8 and 32 concurrent clients (keep-alive
  HTTP/1.1 connections, one request in flight each) sending a fixed number of
  ``POST /encode`` requests: throughput and p50/p95/p99 latency;
- overload: a server whose queue holds a few requests, 32 clients sending 8 texts
  each: every request is answered exactly once, 200 with its own vector or 429;
- shutdown: SIGTERM while 32 clients send: every request the server accepted is
  answered (its shutdown report counts the same requests as the clients received).

Every 200 answer is checked against the baseline's vector of its own text, so an
answer given to the wrong request would show. Goal: with 32 clients, >= 3x the
baseline throughput at p95 <= 4x the single-client p50.

    python bench/bench_serve.py [--model M] [--requests 256] [--prune topk:64]

Without ``--model``, a random MILCO of the ``small`` preset (multilingual-e5-small
shapes) is written to a temporary folder.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from common import ROOT, english_sentences, machine, save_result

from milco_os.encoders import TextEncoder, load_encoder
from milco_os.engines.terms import engine_features
from milco_os.vectors.pruning import Pruning

CLIENTS = (1, 8, 32)
CHECKED_TERMS = 8  # the heaviest pivot terms each answer must share with its own text's
START, END = "<!-- serve-bench:start -->", "<!-- serve-bench:end -->"


@dataclass
class Load:
    """What the clients of one phase saw."""

    latencies_ms: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    unanswered: int = 0  # connection closed before any answer (never accepted)
    wrong: int = 0  # a 200 whose vector is not its own text's
    wall_s: float = 0.0

    @property
    def answered(self) -> int:
        return sum(self.statuses.values())

    def figures(self) -> dict[str, Any]:
        ms = np.array(self.latencies_ms)
        stats = {f"p{q}_ms": round(float(np.percentile(ms, q)), 2) for q in (50, 95, 99)} \
            if len(ms) else {}
        return {"requests_per_s": round(len(self.latencies_ms) / self.wall_s, 1), **stats,
                "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
                "unanswered": self.unanswered, "wrong_vector": self.wrong}


def features(encoder: TextEncoder, rule: Pruning, text: str) -> dict[str, float]:
    """What the server computes for one text: encode, prune, engine features (pivot)."""
    [vector] = encoder.encode([text], kind="query")
    vector = rule.apply(vector)
    engine_features(vector.echo)
    return engine_features(vector.pivot)


def baseline(encoder: TextEncoder, rule: Pruning, texts: list[str]
             ) -> tuple[list[dict[str, float]], list[float]]:
    """Each text's pivot features and the ms each took, one text after the other."""
    for text in texts[:8]:  # warm-up
        features(encoder, rule, text)
    out, ms = [], []
    for text in texts:
        started = time.perf_counter()
        out.append(features(encoder, rule, text))
        ms.append((time.perf_counter() - started) * 1000)
    return out, ms


def own_vector(answer: dict[str, Any], want: dict[str, float]) -> bool:
    got = answer["vectors"][0]["features"]["pivot"]
    top = sorted(want, key=want.get, reverse=True)[:CHECKED_TERMS]
    return all(t in got and abs(got[t] - want[t]) <= 1e-3 * max(1.0, want[t]) for t in top)


# ---------------------------------------------------------------- an HTTP/1.1 client


async def post(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int,
               body: bytes) -> tuple[int, bytes]:
    writer.write(b"POST /encode HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nContent-Type: "
                 b"application/json\r\nContent-Length: %d\r\n\r\n%s" % (port, len(body), body))
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))
    return status, await reader.readexactly(length)


async def client(port: int, jobs: Iterator[tuple[int, bytes]], want: list[dict[str, float]],
                 load: Load, on_answer: Any = None) -> None:
    """Send jobs one at a time on one keep-alive connection until none is left."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for i, body in jobs:
            started = time.perf_counter()
            try:
                status, payload = await post(reader, writer, port, body)
            except (OSError, asyncio.IncompleteReadError):
                load.unanswered += 1
                return
            load.latencies_ms.append((time.perf_counter() - started) * 1000)
            load.statuses[status] = load.statuses.get(status, 0) + 1
            if status == 200 and not own_vector(json.loads(payload), want[i % len(want)]):
                load.wrong += 1
            if on_answer:
                on_answer()
    finally:
        writer.close()


async def run_clients(port: int, bodies: list[bytes], want: list[dict[str, float]],
                      n_clients: int, on_answer: Any = None) -> Load:
    load = Load()
    jobs = iter(enumerate(bodies))  # shared: each request is sent by exactly one client
    started = time.perf_counter()
    with contextlib.suppress(OSError):
        await asyncio.gather(*(client(port, jobs, want, load, on_answer)
                               for _ in range(n_clients)))
    load.wall_s = time.perf_counter() - started
    return load


# ---------------------------------------------------------------- the server


class Server:
    backend = "auto"  # --backend of every server of the run

    def __init__(self, model: str, *options: str) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.log = Path(tempfile.mkstemp(prefix="bench-serve-", suffix=".log")[1])
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "milco_os.cli", "serve", "--model", model, "--port",
             str(self.port), "--engine", "local", "--backend", self.backend, *options],
            stdout=self.log.open("w"), stderr=subprocess.STDOUT, cwd=ROOT)
        self._wait_ready()

    def _wait_ready(self) -> None:
        """Poll /health; ``probes`` counts the requests the server answered meanwhile."""
        import urllib.error
        import urllib.request

        self.probes = 0
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health"):
                    self.probes += 1
                    return
            except urllib.error.HTTPError:  # 503 while the model loads
                self.probes += 1
            except OSError:  # not listening yet
                pass
            time.sleep(0.5)
        raise SystemExit(f"the server did not start:\n{self.log.read_text()}")

    def stop(self) -> str:
        """SIGTERM, wait, and return the shutdown report line."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=300)
        report = re.search(r"stopped after answering .*", self.log.read_text())
        return report.group(0) if report else "no shutdown report"


def answered_in_report(report: str) -> int:
    return int(re.search(r"answering (\d+) requests", report).group(1))


# ---------------------------------------------------------------- the phases


def load_phases(model: str, rule: Pruning, bodies: list[bytes], want: list[dict[str, float]]
                ) -> dict[str, Any]:
    server = Server(model, "--prune", str(rule))
    try:
        for clients in (CLIENTS[0], CLIENTS[-1]):  # warm-up: the first batches are slower
            asyncio.run(run_clients(server.port, bodies[: 4 * clients], want, clients))
        return {str(n): asyncio.run(run_clients(server.port, bodies, want, n)).figures()
                for n in CLIENTS}
    finally:
        server.stop()


def overload_phase(model: str, rule: Pruning, texts: list[str],
                   want: list[dict[str, float]], n_requests: int) -> dict[str, Any]:
    """8 texts per request, a queue of 32 texts (4 requests), 32 clients."""
    server = Server(model, "--prune", str(rule), "--max-queue", "32", "--max-texts", "8")
    bodies = [json.dumps({"texts": [texts[i % len(texts)]] * 8}).encode()
              for i in range(n_requests)]
    load = asyncio.run(run_clients(server.port, bodies, want, 32))
    report = server.stop()
    return {**load.figures(), "sent": len(bodies), "server_report": report,
            "every_request_answered_once": load.answered == len(bodies) == answered_in_report(
                report) - server.probes and load.wrong == 0}


def shutdown_phase(model: str, rule: Pruning, bodies: list[bytes],
                   want: list[dict[str, float]]) -> dict[str, Any]:
    """SIGTERM once a third of the requests are answered; clients go on until refused."""
    server = Server(model, "--prune", str(rule))
    answers = 0

    def on_answer() -> None:
        nonlocal answers
        answers += 1
        if answers == len(bodies) // 3:
            os.kill(server.proc.pid, signal.SIGTERM)

    load = asyncio.run(run_clients(server.port, bodies, want, 32, on_answer))
    report = server.stop()
    return {**load.figures(), "sent": load.answered + load.unanswered, "server_report": report,
            "exit_code": server.proc.returncode,
            "every_accepted_request_answered": load.answered == answered_in_report(report)
            - server.probes and set(load.statuses) == {200} and load.wrong == 0}


def summary(result: dict[str, Any]) -> dict[str, Any]:
    base_rps = result["baseline"]["requests_per_s"]
    single_p50 = result["server"]["1"]["p50_ms"]
    rows = {}
    for n, figures in result["server"].items():
        rows[n] = {"throughput_x": round(figures["requests_per_s"] / base_rps, 2),
                   "p95_over_single_p50": round(figures["p95_ms"] / single_p50, 2)}
    top = rows[str(CLIENTS[-1])]
    return {"rows": rows, "goal_met": top["throughput_x"] >= 3 and top["p95_over_single_p50"] <= 4}


def table(result: dict[str, Any]) -> str:
    base = result["baseline"]
    lines = ["| clients | requests/s | p50 / p95 / p99 ms | vs sequential encoding | p95 / "
             "single-client p50 |", "|---|---|---|---|---|",
             f"| sequential in-process (baseline) | {base['requests_per_s']} | "
             f"{base['p50_ms']} / {base['p95_ms']} / {base['p99_ms']} | 1x | - |"]
    for n, f in result["server"].items():
        row = result["figures"]["rows"][n]
        lines.append(f"| {n} | {f['requests_per_s']} | {f['p50_ms']} / {f['p95_ms']} / "
                     f"{f['p99_ms']} | {row['throughput_x']}x | {row['p95_over_single_p50']}x |")
    over, stop = result["overload"], result["shutdown"]
    lines += [
        "",
        f"Overload (queue of 32 texts, 32 clients x 8 texts): {over['sent']} sent, answered "
        f"{over['statuses']}, {over['unanswered']} unanswered, {over['wrong_vector']} wrong; "
        f"exactly once: {over['every_request_answered_once']}. Shutdown (SIGTERM mid-run): "
        f"{stop['statuses']} answered, {stop['unanswered']} refused before being read, "
        f"{stop['wrong_vector']} wrong, exit code {stop['exit_code']}; every accepted request "
        f"answered: {stop['every_accepted_request_answered']}.",
        "",
        f"Model `{result['settings']['model_name']}` (backend {result['settings']['backend']}), "
        f"{result['settings']['requests']} requests "
        f"of one text, `prune` {result['settings']['prune']}; {result['machine']['cores']} "
        f"cores, load average {result['machine']['load_average'][0]} at the start. Command: "
        f"`{result['settings']['command']}`.",
    ]
    return "\n".join(lines)


def write_readme(text: str) -> None:
    readme = ROOT / "README.md"
    content = readme.read_text(encoding="utf-8")
    if START in content and END in content:
        head, rest = content.split(START, 1)
        readme.write_text(f"{head}{START}\n{text}\n{END}{rest.split(END, 1)[1]}",
                          encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model folder or name [default: a random small MILCO]")
    parser.add_argument("--requests", type=int, default=256, help="requests per phase")
    parser.add_argument("--prune", default="topk:64", help="pruning of every answer")
    parser.add_argument("--backend", default="auto",
                        help="what runs the model, in the server and the baseline alike")
    parser.add_argument("--no-readme", action="store_true", help="do not update README.md")
    args = parser.parse_args()
    rule = Pruning.parse(args.prune)
    model = args.model
    if model is None:
        from milco_os.models.presets import init_model

        model = str(init_model("small", tempfile.mkdtemp(prefix="bench-serve-small-")))
    started_machine = machine()
    texts = english_sentences(args.requests)
    Server.backend = args.backend
    encoder = load_encoder(model, args.backend)
    want, ms = baseline(encoder, rule, texts)
    del encoder  # the server holds its own copy
    bodies = [json.dumps({"texts": [t]}).encode() for t in texts]
    result: dict[str, Any] = {
        "settings": {"model_name": args.model or "random small preset", "backend": args.backend,
                     "requests": len(texts), "prune": str(rule),
                     "command": " ".join(["python bench/bench_serve.py", *sys.argv[1:]])},
        "machine_at_start": started_machine,
        "baseline": {"requests_per_s": round(len(ms) / (sum(ms) / 1000), 1),
                     **{f"p{q}_ms": round(float(np.percentile(ms, q)), 2) for q in (50, 95, 99)},
                     "what": "sequential single-text encode in process, same backend"},
        "server": load_phases(model, rule, bodies, want),
        "overload": overload_phase(model, rule, texts, want, args.requests // 2),
        "shutdown": shutdown_phase(model, rule, bodies, want),
    }
    result["figures"] = summary(result)
    path = save_result("serve", result)
    result["machine"] = started_machine
    text = table(result)
    print(text)
    print(f"wrote {path}")
    if not args.no_readme:
        write_readme(text)


if __name__ == "__main__":
    main()
