"""Encoding throughput and peak memory: SparseEncoder vs the released code's way.

Baseline ("naive"), as the released implementation encodes: batches in input order,
padded to a multiple of 32, the full [B, L, 30522] logits materialised, then masked
max and log1p(relu). Ours ("sparse-encoder"): length-sorted batches with dynamic
padding and a chunked running max (fp32 on CPU; "sparse-encoder-bf16" adds bf16
autocast). Both turn outputs into the same SparseVectors, and the run checks they agree.

Each variant runs in its own subprocess, so peak memory is the process's own: the
weights are paged in (they may be memory-mapped), the kernel's high-water mark (VmHWM)
is reset, and it is read after encoding; the figure reported is that peak minus the
resident size before encoding (the weights are the same in both), plus the
whole-process peak.

    python bench/bench_encode.py --preset base --n 200

Texts: NTREX-128 (CC BY-SA 4.0) sentences, cycling over its languages.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from common import command_line, portable

ROOT = Path(__file__).resolve().parents[1]
NTREX = ROOT.parent / "shared" / "data" / "ntrex128"
VARIANTS = ("naive", "sparse-encoder", "sparse-encoder-bf16")
RELEASE_PAD_MULTIPLE = 32


def load_texts(n: int) -> list[str]:
    """``n`` NTREX sentences: line i from language i mod (number of languages)."""
    files = sorted(NTREX.glob("newstest2019-ref.*.txt")) + [NTREX / "newstest2019-src.eng.txt"]
    lines = [f.read_text(encoding="utf-8").splitlines() for f in files]
    return [lines[i % len(lines)][i // len(lines) % len(lines[0])] for i in range(n)]


def memory_kb() -> dict[str, int]:
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields


def naive_encode(encoder, texts: list[str], batch_size: int, max_length: int):
    """The released code's way: input order, pad to x32, full logits, then pool."""
    import torch

    token_ids = encoder.tokenize(texts, max_length)
    vectors = []
    for start in range(0, len(token_ids), batch_size):
        batch = token_ids[start : start + batch_size]
        width = -(-max(map(len, batch)) // RELEASE_PAD_MULTIPLE) * RELEASE_PAD_MULTIPLE
        input_ids = torch.full((len(batch), width), encoder.pad_id, dtype=torch.long)
        mask = torch.zeros_like(input_ids)
        for row, ids in enumerate(batch):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            mask[row, : len(ids)] = 1
        with torch.inference_mode():
            hidden = encoder.model.encode_states(input_ids, mask)
            logits = encoder.model.pivot_head(hidden) * mask.unsqueeze(-1)  # [B, L, V]
            pivot = torch.log1p(torch.relu(logits.max(dim=1).values)).numpy()
            echo = encoder.model.echo_from_states(hidden, mask)  # None: no echo head
        echo = None if echo is None else echo.numpy()
        vectors.extend(encoder.to_vector(ids, pivot[row], None if echo is None else echo[row])
                       for row, ids in enumerate(batch))
    return vectors


def worker(args: argparse.Namespace) -> None:
    """One variant in this process; prints one JSON line."""
    import numpy as np
    import torch

    from milco_os.encoders import SparseEncoder

    torch.set_num_threads(args.threads)
    dtype = torch.bfloat16 if args.worker.endswith("bf16") else torch.float32
    encoder = SparseEncoder.from_pretrained(args.model_dir, device="cpu", dtype=dtype)
    texts = load_texts(args.n)
    max_length = min(args.max_length, encoder.max_positions)
    tokens = sum(map(len, encoder.tokenize(texts, max_length)))
    # Weights may be memory-mapped: page them all in now, so the peak below is encoding's own.
    with torch.inference_mode():
        touched = sum(float(t.float().sum()) for t in encoder.model.state_dict().values())
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS high-water mark
    before = memory_kb()
    start = time.perf_counter()
    if args.worker == "naive":
        vectors = naive_encode(encoder, texts, args.batch_size, max_length)
    else:
        vectors = encoder.encode(texts, kind="document", batch_size=args.batch_size,
                                 max_length=max_length)
    seconds = time.perf_counter() - start
    after = memory_kb()
    digest = {"pivot_mass": [v.pivot.mass for v in vectors],
              "echo_mass": [v.echo.mass for v in vectors]}
    print(json.dumps({
        "variant": args.worker, "seconds": seconds, "docs_per_s": len(texts) / seconds,
        "tokens": tokens,
        "weights_checksum": touched,
        "rss_before_encode_mb": before["VmRSS"] / 1024,
        "peak_rss_mb": after["VmHWM"] / 1024,
        "peak_over_loaded_mb": (after["VmHWM"] - before["VmRSS"]) / 1024,
        "mean_pivot_terms": float(np.mean([len(v.pivot) for v in vectors])),
        "mean_echo_terms": float(np.mean([len(v.echo) for v in vectors])),
        **digest,
    }))


def run_variant(variant: str, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--worker", variant, "--model-dir", str(args.model_dir),
               "--n", str(args.n), "--batch-size", str(args.batch_size),
               "--max-length", str(args.max_length), "--threads", str(args.threads)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{variant} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="base", choices=["tiny", "small", "base"])
    parser.add_argument("--n", type=int, default=1000, help="documents to encode")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--threads", type=int, default=torch_threads())
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--model-dir", type=Path,
                        help="model folder [default: a random PRESET model, created once]")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "encode.json")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    args.given_model = args.model_dir is not None  # else a random PRESET model
    if args.model_dir is None:
        args.model_dir = Path.home() / ".cache" / "milco-os" / f"bench-{args.preset}"
    if not (args.model_dir / "config.json").is_file():
        from milco_os.models.presets import init_model

        init_model(args.preset, args.model_dir, seed=0)
    results = {v: run_variant(v, args) for v in args.variants.split(",")}
    report = summarise(results, args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "variants"}, indent=2))


def summarise(results: dict[str, dict], args: argparse.Namespace) -> dict:
    import numpy as np
    import torch
    import transformers

    digests = {name: {k: np.array(r.pop(k)) for k in ("pivot_mass", "echo_mass")}
               for name, r in results.items()}
    base = results.get("naive")
    report = {
        "command": command_line(),
        "machine": {"cpu": platform.processor() or platform.machine(),
                    "cores": os.cpu_count(), "threads": args.threads,
                    "load_average_at_start": os.getloadavg()},
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__},
        "settings": {"preset": args.preset,
                     "model_dir": portable(str(args.model_dir)) if args.given_model else None,
                     "n": args.n,
                     "batch_size": args.batch_size,
                     "max_length": args.max_length, "texts": "NTREX-128, cycling languages"},
        "variants": results,
    }
    if base:
        for name, result in results.items():
            result["max_abs_mass_diff_vs_naive"] = float(max(
                np.abs(digests[name][k] - digests["naive"][k]).max() for k in ("pivot_mass",
                                                                                 "echo_mass")))
            result["throughput_ratio_vs_naive"] = result["docs_per_s"] / base["docs_per_s"]
            result["peak_over_loaded_ratio_vs_naive"] = (
                result["peak_over_loaded_mb"] / base["peak_over_loaded_mb"])
        report["summary"] = {name: {k: round(r[k], 3) for k in (
            "docs_per_s", "throughput_ratio_vs_naive", "peak_over_loaded_mb",
            "peak_over_loaded_ratio_vs_naive", "peak_rss_mb", "max_abs_mass_diff_vs_naive")}
            for name, r in results.items()}
    return report


def torch_threads() -> int:
    return max(1, os.cpu_count() or 1)


if __name__ == "__main__":
    main()
