"""Single-query encoding latency: milco-os's thread policy vs torch's default threads.

One query at a time, as a search server encodes them: real short multilingual
sentences (the end of the NTREX-128 + Tatoeba shuffle of ``milco_corpus.py``),
encoded with ``SparseEncoder.encode([text])``. Variants, interleaved query by
query so that load from other processes hits them alike:

- ``policy``: milco-os's default (:mod:`milco_os.threads`: 1 thread for a query);
- ``torch-default``: the same call on torch's own default thread count (the baseline);
- ``int8``: the policy plus dynamic int8 quantisation of the Linear layers
  (``torch.ao.quantization.quantize_dynamic``), a proposal, not milco-os's default;
  its vectors are compared with fp32's (top-10 pivot-term overlap).

Each runs idle and then with a co-located CPU load: a busy loop pinned to the
last core. The load average is recorded before each condition.

    python bench/bench_latency.py --model milco-small [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from common import latency_stats, save_result
from milco_corpus import sentences

from milco_os.models.registry import resolve_model

BUSY_LOOP = "import os; os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})\nwhile True: pass"


@contextlib.contextmanager
def busy_core() -> Iterator[None]:
    """A process spinning on the last core for the duration of the block."""
    process = subprocess.Popen([sys.executable, "-c", BUSY_LOOP])
    time.sleep(1.0)  # let it start spinning
    try:
        yield
    finally:
        process.kill()
        process.wait()


def query_texts(n: int) -> list[str]:
    """``n`` short real sentences (3-12 words), many languages."""
    texts = [t for t in reversed(sentences()) if 3 <= len(t.split()) <= 12 and len(t) < 120]
    return texts[:n]


def quantized(encoder):
    import torch

    fast = copy.copy(encoder)
    fast.model = torch.ao.quantization.quantize_dynamic(copy.deepcopy(encoder.model),
                                                        {torch.nn.Linear}, dtype=torch.qint8)
    return fast


def interleaved(variants: dict[str, Callable[[str], object]], texts: list[str],
                warmup: int) -> dict[str, dict[str, float]]:
    ms: dict[str, list[float]] = {name: [] for name in variants}
    for i, text in enumerate(texts):
        for name, call in variants.items():
            tick = time.perf_counter()
            call(text)
            if i >= warmup:
                ms[name].append(1000.0 * (time.perf_counter() - tick))
    return {name: latency_stats(values) for name, values in ms.items()}


def top_overlap(a, b, k: int = 10) -> float:
    def top(vector):
        return {t for t, _ in sorted(vector.pivot.to_dict().items(), key=lambda x: -x[1])[:k]}
    return float(np.mean([len(top(x) & top(y)) / max(1, min(k, len(top(x))))
                          for x, y in zip(a, b, strict=True)]))


def run(model: Path, quick: bool) -> dict:
    import torch

    from milco_os.encoders import SparseEncoder
    from milco_os.threads import query_threads

    torch_default = torch.get_num_threads()
    encoder = SparseEncoder.from_pretrained(model, device="cpu")
    fast = quantized(encoder)
    texts = query_texts(60 if quick else 300)
    variants = {
        "policy": lambda t: encoder.encode([t]),
        "torch-default": lambda t: encoder.encode([t], threads=torch_default),
        "int8": lambda t: fast.encode([t]),
    }
    conditions = {}
    for condition in ("idle", "loaded"):
        with busy_core() if condition == "loaded" else contextlib.nullcontext():
            load = [round(x, 2) for x in os.getloadavg()]
            conditions[condition] = {"load_average": load,
                                     **interleaved(variants, texts, warmup=10)}
    idle, loaded = conditions["idle"], conditions["loaded"]
    figures = {
        "policy_p50_idle_ms": idle["policy"]["p50_ms"],
        "policy_p50_loaded_ms": loaded["policy"]["p50_ms"],
        "policy_loaded_over_idle_p50": loaded["policy"]["p50_ms"] / idle["policy"]["p50_ms"],
        "torch_default_loaded_over_idle_p50": (loaded["torch-default"]["p50_ms"]
                                               / idle["torch-default"]["p50_ms"]),
        "policy_vs_torch_default_p50_idle": (idle["policy"]["p50_ms"]
                                             / idle["torch-default"]["p50_ms"]),
        "policy_vs_torch_default_p50_loaded": (loaded["policy"]["p50_ms"]
                                               / loaded["torch-default"]["p50_ms"]),
        "int8_vs_policy_p50_idle": idle["int8"]["p50_ms"] / idle["policy"]["p50_ms"],
        "int8_top10_pivot_overlap": top_overlap(encoder.encode(texts[:50]),
                                                fast.encode(texts[:50])),
    }
    return {
        "baseline": f"torch's default thread count ({torch_default}) for the same call, "
                    "interleaved query by query",
        "settings": {"model": str(model), "queries": len(texts) - 10, "warmup": 10,
                     "policy_threads": query_threads(), "torch_default_threads": torch_default,
                     "load": "a Python busy loop pinned to the last core",
                     "texts": "short NTREX-128 / Tatoeba sentences, many languages"},
        "conditions": conditions,
        "figures": figures,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=resolve_model, required=True,
                        help="model folder or name (milco-small)")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print(save_result("latency", run(args.model, args.quick)))


if __name__ == "__main__":
    main()
