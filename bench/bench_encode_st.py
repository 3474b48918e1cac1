"""Encoding throughput on CPU: milco-os ``SparseEncoder`` vs sentence-transformers.

Baseline: ``sentence_transformers.SparseEncoder`` (MLMTransformer + SpladePooling)
loading the same folder, ``../shared/models/splade-tiny``. Both encode the same
English sentences as documents, 128 tokens at most, batch 32, on the same
threads; runs are interleaved and the best of the repeats is kept. The vectors
are checked to agree before any speed is reported.

    python bench/bench_encode_st.py [--quick]
"""

from __future__ import annotations

import argparse

import numpy as np
from common import SPLADE_TINY, best_of, english_sentences, save_result

MAX_LENGTH = 128
BATCH = 32


def run(quick: bool) -> dict:
    import torch
    from sentence_transformers import SparseEncoder as STSparseEncoder

    from milco_os.encoders import SparseEncoder

    torch.set_num_threads(torch.get_num_threads())
    n = 256 if quick else 2000
    texts = english_sentences(n)
    ours = SparseEncoder.from_pretrained(SPLADE_TINY, device="cpu")
    theirs = STSparseEncoder(str(SPLADE_TINY), device="cpu")
    theirs.max_seq_length = MAX_LENGTH

    def encode_ours():
        return ours.encode(texts, kind="document", batch_size=BATCH, max_length=MAX_LENGTH)

    def encode_theirs():
        return theirs.encode_document(texts, batch_size=BATCH, convert_to_sparse_tensor=True)

    diff = max_difference(encode_ours(), encode_theirs())  # also the warm-up
    seconds = best_of(2 if quick else 3, {"milco-os": encode_ours,
                                          "sentence-transformers": encode_theirs})
    ours_rate, theirs_rate = n / seconds["milco-os"], n / seconds["sentence-transformers"]
    return {
        "baseline": "sentence-transformers SparseEncoder, same model folder and settings",
        "settings": {"model": "splade-tiny (BERT-tiny SPLADE, vocab 30522)", "texts": n,
                     "max_length": MAX_LENGTH, "batch_size": BATCH, "device": "cpu",
                     "threads": torch.get_num_threads(), "repeats": "best of interleaved runs"},
        "figures": {"milco_os_docs_per_s": ours_rate, "st_docs_per_s": theirs_rate,
                    "ratio": ours_rate / theirs_rate, "goal_ratio": 1.2,
                    "max_abs_weight_difference": diff, "seconds": seconds},
    }


def max_difference(ours, theirs) -> float:
    """Largest absolute weight difference between the two encoders' vectors."""
    dense = theirs.to_dense().float().numpy()
    worst = 0.0
    for row, vector in enumerate(ours):
        mine = np.zeros(dense.shape[1], dtype=np.float32)
        mine[vector.pivot.ids] = vector.pivot.weights
        worst = max(worst, float(np.abs(mine - dense[row]).max()))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    result = run(parser.parse_args().quick)
    print(save_result("encode_vs_st", result))


if __name__ == "__main__":
    main()
