"""TREC run files and JSON summaries of evaluations."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ir_measures

from milco_os.core.errors import InputError
from milco_os.evaluation.retrieval import Run

if TYPE_CHECKING:
    from milco_os.evaluation.scoring import Evaluation


def write_trec_run(run: Mapping[str, Mapping[str, float]], path: str | Path,
                   tag: str = "milco-os") -> Path:
    """``qid Q0 docid rank score tag`` lines, best first (ties by document id)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as out:
        for qid in sorted(run):
            ranked = sorted(run[qid].items(), key=lambda kv: (-kv[1], kv[0]))
            for rank, (doc_id, score) in enumerate(ranked, 1):
                if any(c.isspace() for c in qid + doc_id):
                    raise InputError(f"query {qid!r} / document {doc_id!r}: ids with spaces "
                                     "cannot be written to a TREC run file")
                out.write(f"{qid} Q0 {doc_id} {rank} {score!r} {tag}\n")
    return path


def read_trec_run(path: str | Path) -> Run:
    """A TREC run file as ``{qid: {docid: score}}``; a malformed line is an
    :class:`InputError` naming the file."""
    run: Run = {}
    try:
        for doc in ir_measures.read_trec_run(str(path)):
            run.setdefault(doc.query_id, {})[doc.doc_id] = float(doc.score)
    except (ValueError, IndexError) as exc:
        raise InputError(f"{path}: not a TREC run file (qid Q0 docid rank score tag): "
                         f"{exc}") from None
    return run


def save_evaluation(evaluation: Evaluation, out_dir: str | Path, name: str,
                    extra: Mapping[str, Any] | None = None) -> dict[str, Path]:
    """Write ``<name>.run`` (TREC) and ``<name>.json`` (summary, per query); return paths."""
    out = Path(out_dir)
    run_path = write_trec_run(evaluation.run, out / f"{name}.run", tag=name)
    summary = {"name": name, **evaluation.summary(), **(extra or {}),
               "per_query": evaluation.per_query}
    json_path = out / f"{name}.json"
    json_path.write_text(json.dumps(summary, indent=2, ensure_ascii=False), encoding="utf-8")
    return {"run": run_path, "summary": json_path}
