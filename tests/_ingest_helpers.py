"""Corpora with pre-encoded vectors, so ingestion tests need no model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np


def write_corpus(path: Path, n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` JSONL documents with 20 pivot terms and one dotted echo term each."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        terms = rng.choice(5000, size=20, replace=False)
        weights = rng.uniform(0.1, 3, 20)
        rows.append({
            "id": f"doc-{i}", "text": f"text of document {i}", "title": f"T{i}",
            "pivot": {f"t{t}": float(w) for t, w in zip(terms, weights, strict=True)},
            "echo": {"▁x.y": 0.5},
        })
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return rows
