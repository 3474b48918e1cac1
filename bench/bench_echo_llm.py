"""Echo-LLM encoder: throughput and peak memory with and without the chunked pooling.

A random Mistral-architecture model (Mistral's 32,000-piece vocabulary, small depth and
width so it runs on a CPU) encodes batches of random token ids with echo pooling. Three
ways of getting the pooled vector, all giving the same numbers (checked):

- ``full-logits`` (baseline): the causal LM's ordinary forward, which returns logits for
  every position of the doubled input, ``[B, 2L, V]``; then the second copy is selected,
  masked and max-pooled;
- ``second-copy``: hidden states only, the second copy gathered (``[B, L, H]``), the LM
  head applied to all of it at once (``[B, L, V]``);
- ``chunked``: as ``second-copy`` but the head runs 16 positions at a time with a running
  max (``[B, 16, V]``), each chunk checkpointed when training.

Each variant x mode (``encode``: inference; ``train``: forward + backward) runs in its
own process; peak memory is the kernel's high-water mark (VmHWM, reset after building
the model) minus the resident size before the first batch.

    python bench/bench_echo_llm.py                  # writes bench/results/echo_llm.json

A 7B-shaped run (hidden 4096, 32 layers) needs a GPU and was not measured here.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench_encode import memory_kb
from common import ROOT, save_result

VARIANTS = ("full-logits", "second-copy", "chunked")
MODES = ("encode", "train")
CHUNK = 16


def build_model(args: argparse.Namespace):
    import torch
    from transformers import MistralConfig

    from milco_os.models.echo_llm import EchoLlmConfig, EchoLlmModel

    llm = MistralConfig(vocab_size=args.vocab, hidden_size=args.hidden,
                        intermediate_size=2 * args.hidden, num_hidden_layers=args.layers,
                        num_attention_heads=args.hidden // 32,
                        num_key_value_heads=args.hidden // 64,
                        max_position_embeddings=4 * args.length, bos_token_id=1)
    torch.manual_seed(0)
    return EchoLlmModel(EchoLlmConfig(llm_config=llm.to_dict(), pivot_vocab_size=args.vocab))


def random_batch(args: argparse.Namespace, seed: int):
    """Token ids with a leading BOS (1) and lengths from L/2 to L, right-padded."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, args.vocab, (args.batch, args.length), generator=generator)
    ids[:, 0] = 1
    lengths = torch.randint(args.length // 2, args.length + 1, (args.batch,),
                            generator=generator)
    mask = (torch.arange(args.length) < lengths[:, None]).long()
    return ids * mask, mask


def pooled_logits(model, variant: str, ids, mask):
    """RAW pooled logits [B, V] the way ``variant`` computes them."""
    if variant == "full-logits":
        doubled = model.echo_inputs(ids, mask)
        logits = model.backbone()(input_ids=doubled.input_ids,
                                  attention_mask=doubled.attention_mask, use_cache=False).logits
        index = doubled.source.unsqueeze(-1).expand(-1, -1, logits.shape[-1])
        return (logits.gather(1, index) * mask.unsqueeze(-1)).amax(dim=1)
    hidden = model.encode_states(ids, mask)
    return model.pivot_from_states(hidden, mask, 0 if variant == "second-copy" else CHUNK)


def step(model, variant: str, mode: str, ids, mask) -> list[float]:
    """Encode one batch (with a backward pass when training); the vectors' sums."""
    import torch

    with torch.set_grad_enabled(mode == "train"):
        pivot = torch.log1p(torch.relu(pooled_logits(model, variant, ids, mask)))
        if mode == "train":
            pivot.sum().backward()
            model.zero_grad(set_to_none=True)
    return pivot.detach().sum(dim=1).tolist()


def worker(args: argparse.Namespace) -> None:
    """One variant and mode in this process; prints one JSON line."""
    import torch

    torch.set_num_threads(args.threads)
    variant, mode = args.worker.split(":")
    model = build_model(args)
    model.train(mode == "train")
    batches = [random_batch(args, seed) for seed in range(args.batches)]
    ids, mask = batches[0]
    step(model, variant, mode, ids[:1, :8], mask[:1, :8])  # warm-up, small: little memory
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS high-water mark
    before = memory_kb()
    start = time.perf_counter()
    sums = [s for ids, mask in batches for s in step(model, variant, mode, ids, mask)]
    seconds = time.perf_counter() - start
    after = memory_kb()
    texts = args.batch * args.batches
    print(json.dumps({"variant": variant, "mode": mode, "seconds": seconds,
                      "texts_per_s": texts / seconds,
                      "peak_over_loaded_mb": (after["VmHWM"] - before["VmRSS"]) / 1024,
                      "peak_rss_mb": after["VmHWM"] / 1024, "pivot_sums": sums}))


def run(name: str, args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--worker", name, *[
        f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
        if k not in ("worker", "modes")]]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{name} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def summarise(results: list[dict]) -> dict:
    summary: dict[str, dict] = {}
    for mode in dict.fromkeys(r["mode"] for r in results):
        rows = {r["variant"]: r for r in results if r["mode"] == mode}
        base = rows["full-logits"]
        summary[mode] = {name: {
            "texts_per_s": round(r["texts_per_s"], 2),
            "peak_over_loaded_mb": round(r["peak_over_loaded_mb"], 1),
            "throughput_ratio_vs_full_logits": round(r["texts_per_s"] / base["texts_per_s"], 3),
            "peak_memory_ratio_vs_full_logits": round(
                r["peak_over_loaded_mb"] / base["peak_over_loaded_mb"], 3),
            "max_abs_diff_vs_full_logits": max(
                abs(a - b) for a, b in zip(r["pivot_sums"], base["pivot_sums"], strict=True)),
        } for name, r in rows.items()}
    return summary


def logits_mb(variant: str, batch: int, length: int, vocab: int, bytes_per: int = 4) -> float:
    """Vocabulary logits alive at once in ``variant``'s forward pass, in MB."""
    positions = {"full-logits": 2 * length, "second-copy": length, "chunked": CHUNK}[variant]
    return batch * positions * vocab * bytes_per / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--vocab", type=int, default=32000, help="Mistral's vocabulary size")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=128, help="tokens per text (before echo)")
    parser.add_argument("--batches", type=int, default=4)
    parser.add_argument("--threads", type=int, default=max(1, os.cpu_count() or 1))
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    results = [run(f"{variant}:{mode}", args)
               for mode in args.modes.split(",") for variant in VARIANTS]
    summary = summarise(results)
    settings = {k: v for k, v in vars(args).items() if k != "worker"}
    path = save_result("echo_llm", {
        "settings": {**settings, "chunk": CHUNK, "device": "cpu",
                     "model": "random Mistral architecture (fp32)"},
        "baseline": "full-logits: causal LM forward with [B, 2L, V] logits",
        "not_measured": "7B shapes (hidden 4096, 32 layers): needs a GPU, none available",
        "logits_mb_at_once": {
            "this_run_fp32": {v: logits_mb(v, args.batch, args.length, args.vocab)
                              for v in VARIANTS},
            "mistral_7b_batch32_len256_bf16": {v: logits_mb(v, 32, 256, 32000, 2)
                                               for v in VARIANTS}},
        "summary": summary,
        "runs": [{k: v for k, v in r.items() if k != "pivot_sums"} for r in results]})
    print(json.dumps(summary, indent=2))
    print(f"written to {path}")


if __name__ == "__main__":
    main()
