"""An exact sparse index on local disk, for machines without a cluster.

Each index is a directory::

    <root>/<index>/index.json        _meta, settings and the list of segments
    <root>/<index>/seg-<time>-<id>.npz    per view: CSR matrix (float32) + its term list
    <root>/<index>/seg-<time>-<id>.jsonl  one source per line (vectors excluded), with its _id

Every :meth:`LocalEngine.bulk_index` call writes one immutable segment and then
commits it by rewriting ``index.json``; a later document with the same ``_id``
replaces the earlier one. Search computes the exact dot products (float32
weights, float64 sums) with scipy, and ``two-phase`` returns the exact ranking.
BM25 (:meth:`LocalEngine.bm25_search`, and ``hybrid``: the sparse score plus
``bm25_boost`` x BM25) scores the stored ``title`` and ``text`` as the clusters'
standard analyzer would (:mod:`milco_os.engines.local_bm25`). Several processes may write one
index at once (commits take a file lock); each sees the others' documents at
its next call.

:meth:`LocalEngine.build_approximate` adds an approximate index
(``ann-*.index.seismic``, see :mod:`milco_os.engines.approximate`) over the
segments committed so far, named in ``index.json`` once its files are complete.
Searches then take candidates from it, score them exactly, and scan segments
committed later exactly, so hits and scores stay exact and only recall is
approximate; ``LocalEngine(exact=True)`` ignores it.

>>> import tempfile
>>> engine = LocalEngine(tempfile.mkdtemp())
>>> engine.create_index("demo", meta={"model": "m", "views": ["pivot"], "pruning": "none"})
>>> engine.bulk_index("demo", [("d1#0", {"doc_id": "d1", "passage": 0, "pivot": {"dog": 2.0}})])
[]
>>> from milco_os.engines.query import SparseQuery
>>> from milco_os.vectors.sparse import SparseVector, SparseView
>>> q = SparseQuery(SparseVector(SparseView.from_pairs([(1, "dog", 1.5)])))
>>> [(h.id, h.score) for h in engine.search("demo", q)]
[('d1#0', 3.0)]
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import math
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from milco_os.core.errors import EngineError, IndexNotFoundError, InvalidIndexNameError
from milco_os.engines.approximate import (
    ApproximateIndex,
    BuildSettings,
    SearchSettings,
    stale_files,
)
from milco_os.engines.base import TEXT_FIELDS, BulkFailure, Engine, Hit, best_per_document
from milco_os.engines.local_bm25 import FieldIndex, best_field_scores
from milco_os.engines.mappings import complete_meta, mapping_template
from milco_os.engines.query import SparseQuery, Terms, searched_terms
from milco_os.engines.terms import FLOAT_MIN_NORMAL
from milco_os.vectors.sparse import VIEWS

INDEX_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,200}$")
FIELDS = frozenset(mapping_template("opensearch")["mappings"]["properties"])


def default_root() -> Path:
    """``$XDG_CACHE_HOME/milco-os/local`` (``~/.cache/milco-os/local`` by default)."""
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "milco-os" / "local"


def source_problem(source: Any) -> str | None:
    """Why a cluster would reject ``source`` (the same rules, checked locally), or None."""
    if not isinstance(source, dict):
        return "the source is not a JSON object"
    unknown = sorted(set(source) - FIELDS)
    if unknown:
        return f"unknown fields {unknown} (the mapping is strict)"
    for view in VIEWS:
        features = source.get(view, {})
        if not isinstance(features, dict):
            return f"field {view!r} is not an object of feature weights"
        for name, weight in features.items():
            if "." in name or not name:
                return f"field {view!r}: feature name {name!r} is empty or has a dot"
            if not isinstance(weight, int | float) or not math.isfinite(weight):
                return f"field {view!r}: feature {name!r} has weight {weight!r}"
            if weight < FLOAT_MIN_NORMAL:
                return f"field {view!r}: feature {name!r} weight {weight} is below Float.MIN_NORMAL"
    return None


@dataclass
class _Vocabulary:
    """Term -> column of one view, growing as segments load."""

    columns: dict[str, int] = field(default_factory=dict)
    terms: list[str] = field(default_factory=list)

    def column(self, term: str) -> int:
        col = self.columns.get(term)
        if col is None:
            col = self.columns[term] = len(self.terms)
            self.terms.append(term)
        return col


@dataclass
class _Snapshot:
    """The loaded segments of one index."""

    segments: list[str] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    sources: list[dict[str, Any]] = field(default_factory=list)
    row_of: dict[str, int] = field(default_factory=dict)  # latest row of each _id
    vocab: dict[str, _Vocabulary] = field(default_factory=lambda: {v: _Vocabulary() for v in VIEWS})
    parts: dict[str, list[tuple[np.ndarray, ...]]] = field(
        default_factory=lambda: {v: [] for v in VIEWS}
    )  # per segment: (data, global columns, indptr)
    _matrices: dict[str, sp.csr_matrix] | None = None  # built on first use after a load
    _live: np.ndarray | None = None
    approximate: ApproximateIndex | None = None  # over the first approximate.rows rows
    _tail: dict[str, sp.csr_matrix] | None = None  # the rows after those
    _text_indexes: dict[str, FieldIndex] = field(default_factory=dict)  # BM25, per field

    def load_segment(self, directory: Path, name: str) -> None:
        arrays = np.load(directory / f"{name}.npz", allow_pickle=False)
        with open(directory / f"{name}.jsonl", encoding="utf-8") as lines:
            for line in lines:
                source = json.loads(line)
                doc_id = source.pop("_id")
                self.row_of[doc_id] = len(self.ids)
                self.ids.append(doc_id)
                self.sources.append(source)
        for view in VIEWS:
            vocab = self.vocab[view]
            remap = np.array([vocab.column(t) for t in arrays[f"{view}_terms"]], dtype=np.int64)
            self.parts[view].append((arrays[f"{view}_data"], remap[arrays[f"{view}_indices"]],
                                     arrays[f"{view}_indptr"]))
        self.segments.append(name)
        self._matrices = self._live = self._tail = None
        self._text_indexes = {}

    def live(self) -> np.ndarray:
        """Rows holding the latest version of their _id."""
        if self._live is None:
            self._live = np.zeros(len(self.ids), dtype=bool)
            self._live[list(self.row_of.values())] = True
        return self._live

    def matrices(self) -> dict[str, sp.csr_matrix]:
        """One CSR matrix per view over all rows."""
        if self._matrices is None:
            self._matrices = {}
            for view in VIEWS:
                width = max(len(self.vocab[view].terms), 1)
                parts = [sp.csr_matrix(p, shape=(len(p[2]) - 1, width)) for p in self.parts[view]]
                self._matrices[view] = (sp.vstack(parts, format="csr") if parts
                                        else sp.csr_matrix((0, width), dtype=np.float32))
        return self._matrices

    def features(self, row: int) -> dict[str, dict[str, float]]:
        out = {}
        for view, matrix in self.matrices().items():
            start, end = matrix.indptr[row], matrix.indptr[row + 1]
            terms = self.vocab[view].terms
            out[view] = {terms[c]: float(w) for c, w in
                         zip(matrix.indices[start:end], matrix.data[start:end], strict=True)}
        return out

    def query_columns(self, terms: Terms) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per view, the columns of the query's terms known here and their weights."""
        out = {}
        for view in VIEWS:
            columns = self.vocab[view].columns
            known = [(columns[t], w) for t, w in terms.get(view, {}).items() if t in columns]
            out[view] = (np.array([c for c, _ in known], dtype=np.int64),
                         np.array([w for _, w in known], dtype=np.float64))
        return out

    def scores(self, terms: Terms) -> np.ndarray:
        """Exact ``sum over views of matrix @ query`` for every row (float64)."""
        return _products(self.matrices(), self.query_columns(terms))

    def bm25(self, fields: Sequence[str], text: str) -> np.ndarray:
        """Per row, BM25 of ``text`` on its best field of ``fields`` (0 for rows that hold
        an older version of their _id). A language sub-field (``text.en``) is its field:
        the local engine has one analysis for all languages."""
        indexes = []
        for name in dict.fromkeys(f.split(".")[0] for f in fields):
            if name not in self._text_indexes:
                live = self.live()
                self._text_indexes[name] = FieldIndex(
                    [source.get(name) if live[row] else None
                     for row, source in enumerate(self.sources)])
            indexes.append(self._text_indexes[name])
        return best_field_scores(indexes, text)

    def candidate_scores(self, terms: Terms,
                         settings: SearchSettings) -> tuple[np.ndarray, np.ndarray]:
        """(rows, exact scores): the approximate index's candidates and every later row."""
        assert self.approximate is not None
        columns = self.query_columns(terms)
        covered = self.approximate.rows
        rows = self.approximate.candidates(columns, settings)
        picked = {view: matrix[rows] for view, matrix in self.matrices().items()}
        if self._tail is None:
            self._tail = {view: matrix[covered:] for view, matrix in self.matrices().items()}
        tail = _products(self._tail, columns)
        return (np.concatenate([rows, covered + np.arange(len(tail))]),
                np.concatenate([_products(picked, columns), tail]))


_RELOADS = 8  # re-reads of the manifest when a named file vanished (see LocalEngine._snapshot)


@contextlib.contextmanager
def _written(index: str, *paths: Path) -> Iterator[None]:
    """Write ``paths`` as one step: on an OS error (a full disk, a read-only folder) remove
    what was written of them, so nothing half-written stays or counts in the index size,
    and raise :class:`EngineError` naming the file."""
    try:
        yield
    except OSError as exc:
        for path in paths:
            path.unlink(missing_ok=True)
        raise EngineError(f"local index {index!r}: cannot write {exc.filename or paths[0]}: "
                          f"{exc.strerror or exc}") from exc


def _check_matrix(view: str, matrix: sp.csr_matrix, names: Sequence[str],
                  ids: Sequence[str]) -> None:
    """The checks of :func:`source_problem`, vectorised over one view's matrix."""
    if len(names) < matrix.shape[1]:
        raise EngineError(f"view {view!r}: {matrix.shape[1]} columns but {len(names)} terms")
    bad = np.flatnonzero(~np.isfinite(matrix.data) | (matrix.data < FLOAT_MIN_NORMAL))
    if len(bad):
        row = int(np.searchsorted(matrix.indptr, bad[0], side="right") - 1)
        raise EngineError(f"document {ids[row]!r}: field {view!r}: weight "
                          f"{matrix.data[bad[0]]!r} is not finite or below Float.MIN_NORMAL")
    for column in np.unique(matrix.indices):
        if "." in names[column] or not names[column]:
            raise EngineError(f"field {view!r}: feature name {names[column]!r} is empty or "
                              "has a dot")


def _contenders(rows: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The rows scoring at least the ``k``-th best score: a linear-time cut before the sort
    (a full corpus's sort was a third of an exact search), ties kept for the tie-break."""
    if len(scores) <= k or k < 1:
        return rows, scores
    kth = np.partition(scores, len(scores) - k)[len(scores) - k]
    keep = scores >= kth
    return rows[keep], scores[keep]


def _products(matrices: dict[str, sp.csr_matrix],
              columns: dict[str, tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """``sum over views of matrix @ query`` (float64), the query made dense per view (one
    pass over the matrix; selecting its query columns first would copy them)."""
    total = np.zeros(next(iter(matrices.values())).shape[0], dtype=np.float64)
    for view, matrix in matrices.items():
        cols, weights = columns[view]
        if len(cols):
            query = np.zeros(matrix.shape[1], dtype=np.float64)
            query[cols] = weights
            total += matrix @ query
    return total


class LocalEngine(Engine):
    """MILCO indexes as files under ``root`` (see the module docstring).

    ``exact=True`` always scans every document, even where an approximate index was
    built; ``search_settings`` tune the approximate search.
    """

    name = "local"

    def __init__(self, root: str | os.PathLike[str] | None = None, *, exact: bool = False,
                 search_settings: SearchSettings | None = None) -> None:
        self.root = Path(root) if root is not None else default_root()
        self.exact = exact
        self.search_settings = search_settings or SearchSettings()
        self._snapshots: dict[str, _Snapshot] = {}

    @property
    def address(self) -> str:
        return f"local {self.root}"

    def _dir(self, index: str) -> Path:
        if not INDEX_NAME.match(index):
            raise InvalidIndexNameError(f"invalid index name {index!r}: use lowercase letters, "
                                        "digits, '.', '_' and '-', starting with a letter or digit")
        return self.root / index

    def _manifest(self, index: str) -> dict[str, Any]:
        path = self._dir(index) / "index.json"
        if not path.exists():
            raise IndexNotFoundError(f"no local index {index!r} under {self.root}")
        return json.loads(path.read_text(encoding="utf-8"))

    def _write_manifest(self, index: str, manifest: dict[str, Any]) -> None:
        path = self._dir(index) / "index.json"
        tmp = path.with_suffix(".json.tmp")
        with _written(index, tmp):
            tmp.write_text(json.dumps(manifest, indent=2, ensure_ascii=False), encoding="utf-8")
            os.replace(tmp, path)

    def _snapshot(self, index: str) -> _Snapshot:
        """The index as committed now. Another writer may drop a segment (or replace the
        approximate index) between our reading the manifest and loading its files: the
        manifest then no longer names them, so read it again."""
        for attempt in itertools.count():
            try:
                return self._load_snapshot(index)
            except FileNotFoundError:
                self._snapshots.pop(index, None)
                if attempt == _RELOADS:
                    raise
        raise AssertionError("unreachable")

    def _load_snapshot(self, index: str) -> _Snapshot:
        manifest = self._manifest(index)
        segments = manifest["segments"]
        snapshot = self._snapshots.get(index)
        if snapshot is None or snapshot.segments != segments[: len(snapshot.segments)]:
            snapshot = self._snapshots[index] = _Snapshot()
        for name in segments[len(snapshot.segments):]:
            snapshot.load_segment(self._dir(index), name)
        entry = manifest.get("approximate")
        if entry and segments[: len(entry["segments"])] != entry["segments"]:
            entry = None  # built over segments that are gone: it no longer describes the rows
        if not entry:
            snapshot.approximate = None
        elif snapshot.approximate is None or snapshot.approximate.entry != entry:
            snapshot.approximate = ApproximateIndex.load(self._dir(index), entry)
            snapshot._tail = None
        return snapshot

    def build_approximate(self, index: str,
                          settings: BuildSettings | None = None) -> dict[str, Any]:
        """Build the approximate index over every segment committed now; return its
        manifest entry. It is committed only if no segment was dropped meanwhile;
        the files of the index it replaces are deleted after the commit."""
        snapshot = self._snapshot(index)
        directory = self._dir(index)
        entry = {**ApproximateIndex.build(directory, snapshot.matrices(), len(snapshot.ids),
                                          settings or BuildSettings()),
                 "segments": list(snapshot.segments)}
        with self._locked(index):
            manifest = self._manifest(index)
            if manifest["segments"][: len(entry["segments"])] != entry["segments"]:
                raise EngineError(f"local index {index!r} changed its segments during the "
                                  "build; build again")
            manifest["approximate"] = entry
            self._write_manifest(index, manifest)
            for path in stale_files(directory, {f["file"] for f in entry["files"]}):
                path.unlink(missing_ok=True)
        return entry

    def create_index(
        self,
        index: str,
        *,
        meta: dict[str, Any],
        shards: int = 1,
        replicas: int = 0,
        refresh_interval: str | None = None,
        exist_ok: bool = False,
    ) -> None:
        if self.index_exists(index):
            if exist_ok:
                return
            raise EngineError(f"local index {index!r} already exists under {self.root}")
        self._dir(index).mkdir(parents=True, exist_ok=True)
        settings = {"shards": shards, "replicas": replicas, "refresh_interval": refresh_interval}
        self._write_manifest(index, {"meta": complete_meta(meta), "settings": settings,
                                     "segments": []})

    def delete_index(self, index: str, *, missing_ok: bool = True) -> None:
        if not self.index_exists(index):
            if missing_ok:
                return
            raise IndexNotFoundError(f"no local index {index!r} under {self.root}")
        self._snapshots.pop(index, None)
        shutil.rmtree(self._dir(index))

    def index_exists(self, index: str) -> bool:
        return (self._dir(index) / "index.json").exists()

    def index_info(self, index: str) -> dict[str, Any]:
        manifest = self._manifest(index)
        size = sum(_bytes_if_present(p) for p in self._dir(index).iterdir())
        return {"index": index, "meta": manifest["meta"], "docs": self.count(index),
                "store_bytes": size, "settings": manifest["settings"]}

    def bulk_index(
        self, index: str, docs: Sequence[tuple[str, dict[str, Any]]]
    ) -> list[BulkFailure]:
        self._manifest(index)  # the index must exist
        failures, accepted = [], []
        for doc_id, source in docs:
            problem = source_problem(source)
            if problem:
                failures.append(BulkFailure(doc_id, 400, f"mapper_parsing_exception: {problem}"))
            else:
                accepted.append((doc_id, source))
        if accepted:
            self._commit_segment(index, self._segment_arrays(accepted), accepted)
        return failures

    def _commit_segment(self, index: str, arrays: dict[str, np.ndarray],
                        docs: Sequence[tuple[str, dict[str, Any]]]) -> None:
        """Write one segment, then name it in the manifest (later segments replace ids)."""
        name = f"seg-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"  # unique across writers
        directory = self._dir(index)
        with _written(index, directory / f"{name}.npz", directory / f"{name}.jsonl"):
            np.savez(directory / f"{name}.npz", **arrays)
            with open(directory / f"{name}.jsonl", "w", encoding="utf-8") as out:
                for doc_id, source in docs:
                    meta = {k: v for k, v in source.items() if k not in VIEWS}
                    out.write(json.dumps({"_id": doc_id, **meta}, ensure_ascii=False) + "\n")
        with self._locked(index):
            manifest = self._manifest(index)
            manifest["segments"].append(name)
            self._write_manifest(index, manifest)

    def bulk_index_matrices(self, index: str, ids: Sequence[str],
                            matrices: dict[str, sp.csr_matrix], terms: dict[str, Sequence[str]],
                            sources: Sequence[dict[str, Any]] | None = None) -> None:
        """Index pre-encoded vectors held as one CSR matrix per view (rows = ``ids``,
        columns = ``terms[view]``) as one segment: what :meth:`bulk_index` does without
        building a dict per document. ``sources``: the other fields of each document.
        Refuses the whole batch (``EngineError`` naming the first bad value) when a
        weight or a term is one a cluster would reject."""
        self._manifest(index)
        sources = sources or [{} for _ in ids]
        if not len(ids) == len(sources) == next(iter(matrices.values())).shape[0]:
            raise EngineError("ids, sources and matrix rows differ in number")
        arrays: dict[str, np.ndarray] = {}
        for view in VIEWS:
            matrix = matrices.get(view, sp.csr_matrix((len(ids), 1), dtype=np.float32))
            names = list(terms.get(view, [""]))[: matrix.shape[1]]
            _check_matrix(view, matrix, names, ids)
            used = np.unique(matrix.indices)  # keep only the terms some row has
            remap = np.zeros(max(matrix.shape[1], 1), dtype=np.int64)
            remap[used] = np.arange(len(used))
            arrays[f"{view}_indptr"] = matrix.indptr.astype(np.int64)
            arrays[f"{view}_indices"] = remap[matrix.indices]
            arrays[f"{view}_data"] = matrix.data.astype(np.float32)
            arrays[f"{view}_terms"] = np.array([names[c] for c in used], dtype=np.str_)
        self._commit_segment(index, arrays, list(zip(ids, sources, strict=True)))

    @contextlib.contextmanager
    def _locked(self, index: str) -> Iterator[None]:
        """Serialise manifest updates of concurrent writers (e.g. sharded ingestion)."""
        with open(self._dir(index) / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    @staticmethod
    def _segment_arrays(docs: list[tuple[str, dict[str, Any]]]) -> dict[str, np.ndarray]:
        arrays: dict[str, np.ndarray] = {}
        for view in VIEWS:
            vocab = _Vocabulary()
            rows = [[(vocab.column(t), w) for t, w in source.get(view, {}).items()]
                    for _, source in docs]
            indptr = np.cumsum([0] + [len(r) for r in rows], dtype=np.int64)
            arrays[f"{view}_indptr"] = indptr
            arrays[f"{view}_indices"] = np.array([c for r in rows for c, _ in r], dtype=np.int64)
            arrays[f"{view}_data"] = np.array([w for r in rows for _, w in r], dtype=np.float32)
            arrays[f"{view}_terms"] = np.array(vocab.terms, dtype=np.str_)
        return arrays

    def existing_ids(self, index: str, ids: Sequence[str]) -> set[str]:
        row_of = self._snapshot(index).row_of
        return {i for i in ids if i in row_of}

    def refresh(self, index: str) -> None:
        self._drop_superseded(index, self._snapshot(index))

    def _drop_superseded(self, index: str, snapshot: _Snapshot) -> None:
        """Delete the segments whose every document was indexed again later, so that
        re-running the same documents does not grow the index."""
        live = snapshot.live()
        sizes = np.array([len(part[2]) - 1 for part in snapshot.parts[VIEWS[0]]], dtype=np.int64)
        ends = np.cumsum(sizes)
        starts = ends - sizes
        dead = {name for name, a, b in zip(snapshot.segments, starts, ends, strict=True)
                if not live[a:b].any()}
        if not dead:
            return
        with self._locked(index):
            manifest = self._manifest(index)
            manifest["segments"] = [s for s in manifest["segments"] if s not in dead]
            self._write_manifest(index, manifest)
        for name in dead:
            for suffix in (".npz", ".jsonl"):
                (self._dir(index) / f"{name}{suffix}").unlink(missing_ok=True)
        self._snapshots.pop(index, None)

    def set_refresh_interval(self, index: str, interval: str | None) -> None:
        """Only recorded: writes become visible at :meth:`refresh` or the next search."""
        with self._locked(index):
            manifest = self._manifest(index)
            manifest["settings"]["refresh_interval"] = interval
            self._write_manifest(index, manifest)

    def update_meta(self, index: str, changes: dict[str, Any]) -> None:
        with self._locked(index):
            manifest = self._manifest(index)
            manifest["meta"].update(changes)
            self._write_manifest(index, manifest)

    def count(self, index: str) -> int:
        return len(self._snapshot(index).row_of)

    def get_sources(self, index: str, ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        snapshot = self._snapshot(index)
        out = {}
        for doc_id in ids:
            row = snapshot.row_of.get(doc_id)
            if row is not None:
                out[doc_id] = {**snapshot.sources[row], **snapshot.features(row)}
        return out

    def search(self, index: str, query: SparseQuery, k: int = 10) -> list[Hit]:
        if query.mode == "neural-sparse":
            raise EngineError("the local engine has no 'neural-sparse' mode (it has no "
                              "plugins); the default mode computes the same scores")
        snapshot = self._snapshot(index)
        terms = searched_terms(query, query.max_clauses)
        if query.mode == "hybrid" or snapshot.approximate is None or self.exact:
            scores = snapshot.scores(terms)
            if query.mode == "hybrid":
                scores += query.bm25_boost * snapshot.bm25(query.text_fields, query.text or "")
            rows = np.flatnonzero(scores > 0)
            scores = scores[rows]
        else:
            rows, scores = snapshot.candidate_scores(terms, self.search_settings)
        return _ranked(snapshot, rows, scores, k, query.collapse)

    def bm25_search(self, index: str, text: str, k: int = 10,
                    fields: Sequence[str] = TEXT_FIELDS, collapse: bool = False) -> list[Hit]:
        snapshot = self._snapshot(index)
        scores = snapshot.bm25(fields, text)
        rows = np.flatnonzero(scores > 0)
        return _ranked(snapshot, rows, scores[rows], k, collapse)

    def sample_sources(self, index: str, n: int, seed: int = 0) -> list[dict[str, Any]]:
        snapshot = self._snapshot(index)
        live = np.flatnonzero(snapshot.live())
        rows = np.random.default_rng(seed).permutation(live)[:n]
        return [{**snapshot.sources[r], **snapshot.features(r)} for r in sorted(rows)]


def _ranked(snapshot: _Snapshot, rows: np.ndarray, scores: np.ndarray, k: int,
            collapse: bool) -> list[Hit]:
    """The best ``k`` live rows by score (ties: insertion order), as hits; ``collapse``:
    one per document, its best passage."""
    keep = (scores > 0) & snapshot.live()[rows]
    rows, scores = rows[keep], scores[keep]
    if not collapse:  # collapsing needs every row: a document's best may be far down
        rows, scores = _contenders(rows, scores, k)
    order = np.lexsort((rows, -scores))  # by score, then insertion order
    rows, scores = rows[order], scores[order]
    hits: Iterable[Hit] = (Hit(snapshot.ids[r], float(s), snapshot.sources[r])
                           for r, s in zip(rows, scores, strict=True))
    if collapse:
        hits = best_per_document(hits)
    return list(itertools.islice(hits, k))


def _bytes_if_present(path: Path) -> int:
    """A file's size, 0 for a folder or a file gone since the listing (another writer's
    temporary file, renamed into place meanwhile)."""
    try:
        return path.stat().st_size if path.is_file() else 0
    except FileNotFoundError:
        return 0
