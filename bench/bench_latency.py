"""Single-query encoding latency: torch vs ONNX Runtime (fp32, int8), and the thread policy.

One query at a time, as a search server encodes them: real short multilingual
sentences (the end of the NTREX-128 + Tatoeba shuffle of ``milco_corpus.py``),
encoded with ``encoder.encode([text])``. Variants, interleaved query by query so
that load from other processes hits them alike:

- ``torch``: :class:`~milco_os.encoders.SparseEncoder` on milco-os's thread policy
  (:mod:`milco_os.core.threads`: 1 thread for a query), the baseline;
- ``torch-default``: the same call on torch's own default thread count;
- ``onnx``: the ONNX Runtime backend, fp32 (``--backend onnx``, what ``auto`` picks);
- ``onnx-int8``: its dynamic int8 graph; its vectors are compared with fp32's (top-10
  terms of both views) on the same queries.

Each runs idle and then with a co-located CPU load: a busy loop pinned to the
last core. The load average is recorded before each condition.

    python bench/bench_latency.py --model milco-small [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

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


def run(model: Path, quick: bool) -> dict:
    import torch

    from milco_os.core.threads import query_threads
    from milco_os.encoders import OnnxSparseEncoder, SparseEncoder
    from milco_os.encoders.onnx import top10_agreement

    torch_default = torch.get_num_threads()
    encoders = {"torch": SparseEncoder.from_pretrained(model, device="cpu"),
                "onnx": OnnxSparseEncoder.from_pretrained(model),
                "onnx-int8": OnnxSparseEncoder.from_pretrained(model, quantized=True)}
    texts = query_texts(60 if quick else 300)
    variants = {name: (lambda t, e=encoder: e.encode([t])) for name, encoder in encoders.items()}
    variants["torch-default"] = lambda t: encoders["torch"].encode([t], threads=torch_default)
    conditions = {}
    for condition in ("idle", "loaded"):
        with busy_core() if condition == "loaded" else contextlib.nullcontext():
            load = [round(x, 2) for x in os.getloadavg()]
            conditions[condition] = {"load_average": load,
                                     **interleaved(variants, texts, warmup=10)}
    idle, loaded = conditions["idle"], conditions["loaded"]
    sample = texts[:50]
    fp32 = encoders["onnx"].encode(sample)
    figures = {
        **{f"{name}_p50_{c}_ms": conditions[c][name]["p50_ms"]
           for name in variants for c in ("idle", "loaded")},
        **{f"{name}_vs_torch_p50_{c}": conditions[c][name]["p50_ms"]
           / conditions[c]["torch"]["p50_ms"]
           for name in ("onnx", "onnx-int8", "torch-default") for c in ("idle", "loaded")},
        **{f"{name}_loaded_over_idle_p50": loaded[name]["p50_ms"] / idle[name]["p50_ms"]
           for name in variants},
        "onnx_int8_top10_agreement_with_fp32": top10_agreement(fp32, encoders["onnx-int8"]
                                                               .encode(sample)),
        "onnx_fp32_top10_agreement_with_torch": top10_agreement(encoders["torch"].encode(sample),
                                                                fp32),
    }
    return {
        "baseline": "torch (SparseEncoder, milco-os's thread policy) for the same call, "
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
