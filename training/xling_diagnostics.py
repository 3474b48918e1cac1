"""Where a MILCO model's quality goes, beside its nDCG (used by ``eval_xling.py``):

- ``dense_rows``: the model's OWN multilingual encoder used as a dense retriever (mean
  pooling over tokens, ``query: `` / ``passage: `` prefixes as e5 was trained, cosine), on
  the same held-out sets: what the sparse heads could reach;
- ``alignment_overlap``: for held-out parallel pairs, the share of the teacher's top-20
  English terms (of the English side) among the model's top-20 pivot terms of the
  non-English side; ``english_side_overlap``: the same with the model given the English
  side itself (its fit to the teacher, the ceiling of the first);
- ``term_statistics``: over held-out English passages, how many distinct pivot terms the
  model uses, how common its most common term is, and which special tokens or bare
  punctuation pieces appear in any vector (a lexical model has many terms, none of them
  in most passages, and no noise).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from milco_os import evaluation as ev
from milco_os.evaluation.datasets import EvalDataset
from milco_os.training.noise import noise_term

TOP = 20


def mean_pooled(model: Any, tokenizer: Any, texts: Sequence[str], prefix: str,
                batch_size: int = 64) -> np.ndarray:
    """L2-normalised mean-pooled last hidden states of ``model`` (an XLM-R encoder)."""
    import torch

    out = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            batch = tokenizer([prefix + t for t in texts[start:start + batch_size]],
                              padding=True, truncation=True, max_length=256,
                              return_tensors="pt")
            hidden = model(input_ids=batch["input_ids"],
                           attention_mask=batch["attention_mask"]).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1)
            out.append(torch.nn.functional.normalize(pooled, dim=-1).float().numpy())
    return np.concatenate(out)


def dense_rows(label: str, folder: str, data: EvalDataset) -> dict[str, ev.Evaluation]:
    """``{"<label> encoder, dense": evaluation}``: the MILCO's encoder alone, densely."""
    from transformers import AutoTokenizer

    from milco_os.models.registry import load_sparse_model

    model = load_sparse_model(folder)
    tokenizer = AutoTokenizer.from_pretrained(str(model.tokenizer_dirs["m"]))
    docs = list(data.corpus(None)())
    doc_vectors = mean_pooled(model.m_model, tokenizer, [d.text for d in docs], "passage: ")
    query_vectors = mean_pooled(model.m_model, tokenizer, [q.text for q in data.queries],
                                "query: ")
    run = ev.exact_run(query_vectors @ doc_vectors.T, [q.id for q in data.queries],
                       [d.id for d in docs])
    return {f"{label} encoder, dense (mean pooling)": ev.evaluate(
        run, data.queries, data.qrels, ["nDCG@10"])}


def top_terms(view: Any, k: int = TOP) -> set[str]:
    return set(list(view.to_dict())[:k])  # views are sorted by weight, heaviest first


def alignment_overlap(encoder: Any, teacher: Any, pairs: dict[str, list[tuple[str, str]]]
                      ) -> dict[str, float]:
    """Per language: mean |top-20 pivot(X) ∩ top-20 teacher(English)| / 20 over its pairs."""
    result = {lang: mean_overlap(encoder, teacher, [x for x, _ in rows], [e for _, e in rows])
              for lang, rows in pairs.items()}
    result["mean"] = float(np.mean(list(result.values())))
    return result


def english_side_overlap(encoder: Any, teacher: Any, english: Sequence[str]) -> float:
    """Mean top-20 overlap of the model's pivot of an English text with the teacher's
    vector of the same text: how closely the model fits the teacher at all, so the most
    the non-English side can reach through translation alone."""
    return mean_overlap(encoder, teacher, english, english)


def mean_overlap(encoder: Any, teacher: Any, texts: Sequence[str], english: Sequence[str]
                 ) -> float:
    """Mean |top-20 pivot(text) ∩ top-20 teacher(its English)| / 20."""
    students = encoder.encode(list(texts), kind="document")
    teachers = teacher.encode(list(english), kind="document")
    return float(np.mean([len(top_terms(s.pivot) & top_terms(t.pivot)) / TOP
                          for s, t in zip(students, teachers, strict=True)]))


def term_statistics(encoder: Any, passages: Sequence[str]) -> dict[str, Any]:
    """Distinct pivot terms, the most common ones' document frequencies, and noise terms."""
    vectors = encoder.encode(list(passages), kind="document")
    frequency = Counter(t for v in vectors for t in v.pivot.to_dict())
    noise = {view: Counter(t for v in vectors for t in getattr(v, view).to_dict()
                           if noise_term(t)) for view in ("pivot", "echo")}
    return {
        "passages": len(vectors),
        "distinct_pivot_terms": len(frequency),
        "most_common_pivot_terms": [(t, round(n / len(vectors), 3))
                                    for t, n in frequency.most_common(10)],
        "pivot_terms_per_passage": round(float(np.mean([len(v.pivot) for v in vectors])), 1),
        "echo_terms_per_passage": round(float(np.mean([len(v.echo) for v in vectors])), 1),
        "noise_terms_share_of_passages": {
            view: [(t, round(n / len(vectors), 3)) for t, n in counts.most_common(10)]
            for view, counts in noise.items()},
    }
