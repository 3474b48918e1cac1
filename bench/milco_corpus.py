"""Benchmark corpora with a trained MILCO's vectors: real ones, and 1M drawn from their statistics.

Real: the multilingual sentences of ``../shared/data`` (NTREX-128, CC BY-SA 4.0, and
Tatoeba, CC BY 2.0 FR; every language side, de-duplicated, ~190k sentences), shuffled
with a fixed seed so that any prefix mixes the languages, encoded with the model as
documents. Encoding all of them on a busy 2-core machine takes hours, so the first
``n`` are encoded (in chunks cached under ``~/.cache/milco-os/bench``, so an
interrupted run resumes). Queries are other sentences of the same shuffle (counted
from its end), encoded as queries.

Synthetic ("drawn from the model's own term statistics"), per view, from the real
document vectors: each document draws a size factor from the real per-document term
counts (count / mean count) and holds each term with probability
``min(1, document frequency of the term x size factor)``; the weight of each term is
one of the weights that term really had in some document, drawn uniformly. So each
term's document frequency (the posting-list lengths, Zipf-like as in the real
vectors), the number of terms per document and each term's weight distribution are
the model's; co-occurrence between terms is not kept, and only terms seen in the
encoded real documents occur (with ~1,000 of them, the vocabulary is smaller and
posting lists longer than a full encoding would give: slower for every engine alike).

    python bench/milco_corpus.py --model milco-small --n 1000 --queries 100

prints (and saves as ``bench/results/corpus_statistics.json``) the statistics the
synthetic passages are drawn from, and what an inverted index reads for them
(:func:`posting_figures`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from common import CACHE, SHARED, save_result

from milco_os.engines.query import split_by_weight
from milco_os.models.registry import resolve_model

VIEWS = ("pivot", "echo")
CHUNK = 500


def sentences() -> list[str]:
    """Every distinct sentence of NTREX-128 and Tatoeba, shuffled (seed 0)."""
    files = sorted((SHARED / "data" / "ntrex128").glob("*.txt"))
    files += sorted((SHARED / "data" / "tatoeba").glob("tatoeba.*"))
    seen: dict[str, None] = {}
    for path in files:
        for line in path.read_text(encoding="utf-8").splitlines():
            if line := line.strip():
                seen.setdefault(line, None)
    texts = list(seen)
    random.Random(0).shuffle(texts)
    return texts


@dataclass
class Vectors:
    """Sparse vectors of one kind: per view a CSR matrix and its term strings."""

    texts: list[str]
    matrices: dict[str, sp.csr_matrix]
    terms: dict[str, list[str]]

    def __len__(self) -> int:
        return len(self.texts)

    def dicts(self, rows: range | list[int] | None = None) -> list[dict[str, dict[str, float]]]:
        """``{view: {term: weight}}`` of the given rows (default: all)."""
        return list(self.iter_dicts(range(len(self)) if rows is None else rows))

    def iter_dicts(self, rows: range | list[int]) -> Iterator[dict[str, dict[str, float]]]:
        """:meth:`dicts`, one row at a time (a 1M-passage corpus as dicts would take GBs)."""
        for row in rows:
            vector = {}
            for view, matrix in self.matrices.items():
                start, end = matrix.indptr[row], matrix.indptr[row + 1]
                names = self.terms[view]
                vector[view] = {names[c]: float(w) for c, w in
                                zip(matrix.indices[start:end], matrix.data[start:end],
                                    strict=True)}
            yield vector

    def terms_per_row(self) -> dict[str, float]:
        return {view: float(np.diff(m.indptr).mean()) for view, m in self.matrices.items()}


def model_key(model: Path) -> str:
    """Names the model's cache entries: its weights file's size and time (a copy made
    with ``cp -a`` keeps them, so the cache survives a checkpoint being rotated away)."""
    weights = next(model.glob("model.safetensors"), None) or model / "config.json"
    stat = weights.stat()
    return hashlib.sha1(f"{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:10]


def encode_real(model: Path, n: int, kind: str = "document", from_end: bool = False,
                max_length: int = 128) -> Vectors:
    """The first ``n`` shuffled sentences (``from_end``: the first ``n`` counted from the
    end), encoded; a prefix of a longer run's, so the cached chunks serve any ``n``."""
    texts_all = sentences()
    texts = texts_all[::-1][:n] if from_end else texts_all[:n]
    folder = CACHE / f"milco-{model_key(model)}-{kind}{'-from-end' if from_end else ''}"
    folder.mkdir(parents=True, exist_ok=True)
    encoder = None
    rows: list[dict] = []
    for start in range(0, n, CHUNK):
        path = folder / f"{start}-{CHUNK}.jsonl"
        if not path.is_file():
            if encoder is None:
                from milco_os.encoders import SparseEncoder

                encoder = SparseEncoder.from_pretrained(model, device="cpu")
            chunk = texts[start:start + CHUNK]
            vectors = encoder.encode(chunk, kind=kind, batch_size=32, max_length=max_length)
            tmp = path.with_suffix(".tmp")
            tmp.write_text("".join(json.dumps(v.to_dict(), ensure_ascii=False) + "\n"
                                   for v in vectors), encoding="utf-8")
            tmp.replace(path)
            print(f"encoded {min(start + CHUNK, n)}/{n} {kind} texts", flush=True)
        rows += [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return from_dicts(texts, rows[:n])


def from_dicts(texts: list[str], rows: list[dict[str, dict[str, float]]]) -> Vectors:
    matrices, terms = {}, {}
    for view in VIEWS:
        columns: dict[str, int] = {}
        data, indices, indptr = [], [], [0]
        for row in rows:
            for term, weight in row.get(view, {}).items():
                indices.append(columns.setdefault(term, len(columns)))
                data.append(weight)
            indptr.append(len(indices))
        matrices[view] = sp.csr_matrix((np.array(data, np.float32),
                                        np.array(indices, np.int32), np.array(indptr, np.int64)),
                                       shape=(len(rows), max(len(columns), 1)))
        terms[view] = list(columns) or [""]
    return Vectors(texts, matrices, terms)


class TermStatistics:
    """What :func:`synthetic` draws from: per view, the real term counts per document,
    each term's document frequency, and the weights each term had."""

    def __init__(self, real: Vectors) -> None:
        self.terms = real.terms
        self.lengths, self.term_p, self.weight_start, self.weights = {}, {}, {}, {}
        for view, matrix in real.matrices.items():
            self.lengths[view] = np.diff(matrix.indptr)
            by_term = matrix.tocsc()
            df = np.diff(by_term.indptr).astype(np.float64)
            self.term_p[view] = df / max(df.sum(), 1.0)
            self.weight_start[view] = by_term.indptr
            self.weights[view] = by_term.data

    def describe(self) -> dict:
        return {view: {"mean_terms": float(self.lengths[view].mean()),
                       "distinct_terms": int((self.term_p[view] > 0).sum()),
                       "mean_weight": float(self.weights[view].mean()) if
                       len(self.weights[view]) else 0.0}
                for view in VIEWS}


def synthetic(stats: TermStatistics, n: int, seed: int = 0) -> dict[str, sp.csr_matrix]:
    """``n`` documents per view as CSR matrices over the real terms (columns = stats.terms).

    Document i gets a size factor ``s_i`` = a real document's term count / the mean
    count, and holds term t with probability ``min(1, df_t x s_i)`` (``df_t``: the
    fraction of real documents holding t), so every term's document frequency and
    the mean and spread of the term counts follow the real ones. Drawn term by term:
    candidates with the largest probability, then thinned to each document's own.
    """
    rng = np.random.default_rng(seed)
    out = {}
    for view in VIEWS:
        df = np.diff(stats.weight_start[view]) / len(stats.lengths[view])
        if not df.any():
            out[view] = sp.csr_matrix((n, len(df)), dtype=np.float32)
            continue
        size = rng.choice(stats.lengths[view], size=n) / stats.lengths[view].mean()
        largest = size.max()
        docs, indptr = [], [0]
        for frequency in df:
            ceiling = min(1.0, frequency * largest)
            candidates = rng.choice(n, rng.binomial(n, ceiling), replace=False)
            chance = np.minimum(1.0, frequency * size[candidates]) / max(ceiling, 1e-300)
            picked = np.sort(candidates[rng.random(len(candidates)) < chance])
            docs.append(picked)
            indptr.append(indptr[-1] + len(picked))
        rows = np.concatenate(docs).astype(np.int32)
        terms = np.repeat(np.arange(len(df)), np.diff(indptr))
        start, count = stats.weight_start[view][terms], np.diff(stats.weight_start[view])[terms]
        data = stats.weights[view][start + (rng.random(len(terms)) * count).astype(np.int64)]
        by_term = sp.csc_matrix((data.astype(np.float32), rows, np.array(indptr, np.int64)),
                                shape=(n, len(df)))
        out[view] = by_term.tocsr()
        out[view].sort_indices()
    return out


def synthetic_cached(model: Path, real: Vectors, n: int, seed: int = 0) -> Vectors:
    """:func:`synthetic` of ``n`` documents, cached as .npz beside the real vectors."""
    path = CACHE / f"milco-{model_key(model)}-synthetic-{len(real)}-{n}-{seed}.npz"
    if path.is_file():
        arrays = np.load(path)
        matrices = {v: sp.csr_matrix((arrays[f"{v}_data"], arrays[f"{v}_indices"],
                                      arrays[f"{v}_indptr"]), shape=tuple(arrays[f"{v}_shape"]))
                    for v in VIEWS}
    else:
        matrices = synthetic(TermStatistics(real), n, seed)
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, **{f"{v}_{k}": getattr(m, k) for v, m in matrices.items()
                         for k in ("data", "indices", "indptr")},
                 **{f"{v}_shape": np.array(m.shape) for v, m in matrices.items()})
        tmp.replace(path)
    texts = [real.texts[i % len(real)] for i in range(n)]  # for BM25: real sentences
    return Vectors(texts, matrices, real.terms)


def pivot_corpus(model: Path, n_docs: int, n_queries: int, n_real: int = 1000
                 ) -> tuple[list[str], list[dict[str, float]], list[str], list[dict[str, float]]]:
    """Texts and pivot vectors of ``n_docs`` synthetic passages and of ``n_queries`` real
    queries: what the splade-tiny-era benchmarks (one view) take."""
    corpus = synthetic_cached(model, encode_real(model, n_real), n_docs)
    queries = encode_real(model, n_queries, kind="query", from_end=True)
    return (corpus.texts, [v["pivot"] for v in corpus.dicts()], queries.texts,
            [v["pivot"] for v in queries.dicts()])


def posting_figures(docs: Vectors, queries: Vectors, prune_ratio: float = 0.2) -> dict:
    """What an inverted index reads for these vectors: per view, the distinct terms and
    the most common ones (document frequency: the fraction of documents holding a term);
    per query, the postings it reads per document (its terms' document frequencies,
    summed) and the share of them two-phase's phase 1 reads (terms weighing >= prune_ratio
    x the query's top weight), as :func:`milco_os.engines.query.split_by_weight` splits them."""
    df, reads, phase1 = {}, {}, {}
    for view, matrix in docs.matrices.items():
        counts = np.diff(matrix.tocsc().indptr) / len(docs)
        df[view] = dict(zip(docs.terms[view], counts, strict=True))
    for row in queries.dicts():
        high, _ = split_by_weight(row, prune_ratio)
        for view, terms in row.items():
            reads.setdefault(view, []).append(sum(df[view].get(t, 0.0) for t in terms))
            phase1.setdefault(view, []).append(sum(df[view].get(t, 0.0) for t in high[view]))
    out = {}
    for view, frequency in df.items():
        common = sorted(frequency.items(), key=lambda item: -item[1])[:10]
        out[view] = {"distinct_terms": sum(1 for f in frequency.values() if f > 0),
                     "most_common": {t: round(float(f), 3) for t, f in common},
                     "query_postings_per_document": float(np.mean(reads.get(view, [0.0]))),
                     "phase1_share": float(np.sum(phase1.get(view, [0.0])) /
                                           max(np.sum(reads.get(view, [0.0])), 1e-12))}
    everything = sum(sum(r) for r in reads.values())
    return {"documents": len(docs), "queries": len(queries), "prune_ratio": prune_ratio,
            "views": out, "query_postings_per_document": everything / len(queries),
            "phase1_share": sum(sum(p) for p in phase1.values()) / max(everything, 1e-12)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=resolve_model, required=True,
                        help="model folder or name (milco-small)")
    parser.add_argument("--n", type=int, default=6000, help="real documents to encode")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--synthetic", type=int, default=0, help="synthetic documents")
    args = parser.parse_args()
    real = encode_real(args.model, args.n)
    queries = encode_real(args.model, args.queries, kind="query", from_end=True)
    result = {"settings": {"model": str(args.model), "documents": len(real),
                           "queries": len(queries)},
              "terms_per_document": real.terms_per_row(),
              "terms_per_query": queries.terms_per_row(),
              "statistics": TermStatistics(real).describe(),
              "postings": posting_figures(real, queries)}
    print(json.dumps(result, indent=2, ensure_ascii=False))
    print(save_result("corpus_statistics", result))
    if args.synthetic:
        fake = synthetic_cached(args.model, real, args.synthetic)
        print("synthetic terms per document", fake.terms_per_row())


if __name__ == "__main__":
    main()
