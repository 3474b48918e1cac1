"""What every benchmark shares: machine facts, timing, texts, vectors, the cluster, results.

Texts are real English sentences (Tatoeba's English sides and the NTREX-128
English source, from ``../shared/data``), encoded with the real English SPLADE
model ``../shared/models/splade-tiny``; vectors are cached under
``~/.cache/milco-os/bench`` so that later benchmarks of one run reuse them.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
RESULTS = ROOT / "bench" / "results"
SPLADE_TINY = SHARED / "models" / "splade-tiny"
CACHE = Path.home() / ".cache" / "milco-os" / "bench"
PACKAGES = ("milco-os", "torch", "transformers", "sentence-transformers", "opensearch-py",
            "numpy", "scipy", "pyseismic-lsr")


def machine() -> dict[str, Any]:
    """CPU, cores, memory and load: figures mean little without them."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory_gb = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        memory_gb = round(int(Path("/proc/meminfo").read_text().split()[1]) / 2**20, 1)
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gb": memory_gb,
            "load_average": [round(x, 2) for x in os.getloadavg()],
            "python": platform.python_version(), "platform": platform.platform()}


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def save_result(name: str, result: dict[str, Any]) -> Path:
    """``bench/results/<name>.json`` with the machine, versions and command around it."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    record = {"benchmark": name, "date": datetime.now(UTC).isoformat(timespec="seconds"),
              "command": command_line(),
              "machine": machine(), "versions": versions(), **result}
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


def portable(arg: str) -> str:
    """``arg`` with an absolute path in the checkout made relative to it, or one in the
    home folder written from ``~``, so recorded commands run on any machine."""
    path = Path(arg)
    if not path.is_absolute():
        return arg
    if path.resolve().is_relative_to(ROOT):
        return str(path.resolve().relative_to(ROOT))
    if path.is_relative_to(Path.home()):
        return str(Path("~") / path.relative_to(Path.home()))
    return arg


def command_line() -> str:
    """How this process was started, with the script named from the repository root."""
    return " ".join(["python", portable(sys.argv[0]), *map(portable, sys.argv[1:])])


def latency_stats(ms: list[float]) -> dict[str, float]:
    """p50/p95 (ms) and queries per second for one sequential client."""
    values = np.asarray(ms)
    return {"p50_ms": float(np.percentile(values, 50)), "p95_ms": float(np.percentile(values, 95)),
            "qps": float(1000.0 / values.mean())}


def timed_each(calls: list[Callable[[], Any]]) -> tuple[list[Any], list[float]]:
    """Run each call once; its result and its wall time in ms."""
    results, ms = [], []
    for call in calls:
        tick = time.perf_counter()
        results.append(call())
        ms.append(1000.0 * (time.perf_counter() - tick))
    return results, ms


def measure(calls: list[Callable[[], Any]], passes: int = 2) -> tuple[list[Any], list[float]]:
    """A warm-up pass, then ``passes`` timed passes; the pass with the lowest median wins
    (load from other processes only ever adds time)."""
    timed_each(calls)
    runs = [timed_each(calls) for _ in range(passes)]
    return min(runs, key=lambda run: float(np.median(run[1])))


def best_of(repeats: int, runs: dict[str, Callable[[], Any]]) -> dict[str, float]:
    """Seconds of each run, best of ``repeats``, the runs interleaved (A B A B ...) so that
    load from other processes hits them alike."""
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            tick = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - tick)
    return {name: min(s) for name, s in seconds.items()} | {
        f"{name}_median": statistics.median(s) for name, s in seconds.items()}


def english_sentences(n: int, skip: int = 0) -> list[str]:
    """``n`` distinct English sentences (Tatoeba English sides, then NTREX English)."""
    files = sorted((SHARED / "data" / "tatoeba").glob("tatoeba.*-eng.eng"))
    files.append(SHARED / "data" / "ntrex128" / "newstest2019-src.eng.txt")
    seen: dict[str, None] = {}
    for path in files:
        for line in path.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if len(line) > 20:
                seen.setdefault(line, None)
            if len(seen) >= skip + n:
                return list(seen)[skip:]
    raise SystemExit(f"only {len(seen)} English sentences in {SHARED / 'data'}; need {skip + n}")


def encoded(kind: str, n: int, skip: int = 0) -> tuple[list[str], list[dict[str, float]]]:
    """Sentences and their splade-tiny pivot vectors ``{term: weight}``, cached."""
    path = CACHE / f"splade-tiny-{kind}-{skip}-{n}.jsonl"
    if path.is_file():
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        return [r["text"] for r in rows], [r["pivot"] for r in rows]
    from milco_os.encoders import SparseEncoder

    texts = english_sentences(n, skip)
    encoder = SparseEncoder.from_pretrained(SPLADE_TINY, device="cpu")
    vectors = [v.pivot.to_dict() for v in encoder.encode(texts, kind=kind, batch_size=64,
                                                         max_length=128)]
    CACHE.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"text": t, "pivot": v}, ensure_ascii=False) + "\n"
                            for t, v in zip(texts, vectors, strict=True)), encoding="utf-8")
    return texts, vectors


@contextlib.contextmanager
def cluster_url() -> Iterator[str]:
    """``MILCO_OS_URL`` when set; else a local node (2 GB heap) for the run, stopped after."""
    if url := os.environ.get("MILCO_OS_URL"):
        yield url
        return
    from milco_os.devcluster import LocalCluster

    cluster = LocalCluster(name="bench")
    state = cluster.up(heap="2g")
    try:
        yield state.url
    finally:
        cluster.down()


def force_merge(engine, index: str) -> None:
    """One segment per shard, so that sizes and latencies do not depend on merge timing."""
    engine.refresh(index)
    engine.request("POST", f"/{index}/_forcemerge", params={"max_num_segments": 1})
    engine.refresh(index)
