"""Candidate generation for the local engine with Seismic (``pyseismic-lsr``).

Seismic finds the documents with the largest inner product with a query
without scanning every document (its posting lists are pruned, clustered and
summarised). It indexes at most 65,536 distinct components, while a MILCO
index has 30,522 pivot terms plus up to 250,002 echo pieces, so the columns of
both views are laid side by side (pivot first) and cut into groups of
:data:`GROUP_WIDTH` columns with one Seismic index per group. A query searches
each group it has terms in; the union of their candidates is then re-scored
exactly by the caller, so the scores returned are always exact and only the
candidate set is approximate.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from milco_os.core.errors import InputError

GROUP_WIDTH = 65_535  # Seismic stores components as 16-bit ids
SUFFIX = ".index.seismic"  # what SeismicIndex.save appends to the path it is given
FILE_PREFIX = "ann-"


@dataclass(frozen=True)
class BuildSettings:
    """Seismic's build parameters (its own names and defaults, but ``n_postings``: the
    default 3500 suits corpora of millions; posting lists longer than this are cut)."""

    n_postings: int = 3500
    centroid_fraction: float = 0.1
    summary_energy: float = 0.4
    doc_cut: int = 15


@dataclass(frozen=True)
class SearchSettings:
    """How many candidates to fetch per group and Seismic's search knobs.

    Defaults from ``bench/bench_local.py`` (recall@10 of the re-scored candidates
    against the exact scan, synthetic MILCO-statistics corpus).
    """

    candidates: int = 100
    query_cut: int = 20
    heap_factor: float = 0.9

    def __post_init__(self) -> None:
        if self.candidates < 1 or self.query_cut < 1:
            raise InputError("candidates and query_cut must be >= 1")
        if not 0.0 < self.heap_factor <= 1.0:
            raise InputError(f"heap_factor must be in (0, 1], got {self.heap_factor}")


def _seismic():
    try:
        import seismic
    except ImportError:
        raise InputError("the approximate local index needs pyseismic-lsr: "
                         "pip install 'milco-os[approximate]' (or pyseismic-lsr)") from None
    return seismic


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Seismic reports progress on the process's stdout, which may be a command's JSON
    output: send file descriptor 1 to /dev/null meanwhile."""
    with open(os.devnull, "w") as null:
        saved = os.dup(1)
        try:
            os.dup2(null.fileno(), 1)
            yield
        finally:
            os.dup2(saved, 1)
            os.close(saved)


class ApproximateIndex:
    """Seismic indexes over the first ``rows`` rows of a local index's matrices."""

    def __init__(self, entry: Mapping[str, Any], groups: list[tuple[int, Any]]) -> None:
        self.entry = dict(entry)
        self.rows: int = entry["rows"]
        self.pivot_width: int = entry["pivot_width"]
        self.group_width: int = entry["group_width"]
        self.groups = groups  # (group number, SeismicIndex)

    @classmethod
    def build(cls, directory: Path, matrices: Mapping[str, sp.csr_matrix], rows: int,
              settings: BuildSettings) -> dict[str, Any]:
        """Write the Seismic files of the first ``rows`` rows; return their manifest entry.

        Each file is written under a temporary name and renamed into place, so a file
        named in a manifest is always complete.
        """
        seismic = _seismic()
        pivot_width = matrices["pivot"].shape[1]
        both = sp.hstack([matrices["pivot"][:rows], matrices["echo"][:rows]], format="csc")
        build_id = uuid.uuid4().hex[:12]
        files = []
        for group, start in enumerate(range(0, both.shape[1], GROUP_WIDTH)):
            block = both[:, start:start + GROUP_WIDTH].tocsr()
            if block.nnz == 0:
                continue
            name = f"{FILE_PREFIX}{build_id}-{group}"
            tmp = directory / f"{name}.tmp"
            with _quiet():
                index = seismic.SeismicIndex.build_from_dataset(
                    _dataset(seismic, block), **asdict(settings))
                index.save(str(tmp))
            os.replace(f"{tmp}{SUFFIX}", directory / f"{name}{SUFFIX}")
            files.append({"group": group, "file": f"{name}{SUFFIX}"})
        return {"rows": rows, "pivot_width": pivot_width, "group_width": GROUP_WIDTH,
                "files": files,
                "settings": asdict(settings)}

    @classmethod
    def load(cls, directory: Path, entry: Mapping[str, Any]) -> ApproximateIndex:
        seismic = _seismic()
        with _quiet():
            groups = [(f["group"], seismic.SeismicIndex.load(str(directory / f["file"])))
                      for f in entry["files"]]
        return cls(entry, groups)

    def candidates(self, columns: Mapping[str, tuple[np.ndarray, np.ndarray]],
                   settings: SearchSettings) -> np.ndarray:
        """Rows (below ``self.rows``) that may be in the query's top hits.

        ``columns``: per view, the query's column ids and weights in the local index.
        """
        pivot_cols, pivot_w = columns["pivot"]
        echo_cols, echo_w = columns["echo"]
        cols = np.concatenate([pivot_cols, echo_cols + self.pivot_width])
        weights = np.concatenate([pivot_w, echo_w]).astype(np.float32)
        found: list[np.ndarray] = []
        string = _seismic().get_seismic_string()
        for group, index in self.groups:
            start = group * self.group_width
            inside = (cols >= start) & (cols < start + self.group_width)
            if not inside.any():
                continue
            tokens = np.array([str(c - start) for c in cols[inside]], dtype=string)
            hits = index.search("q", tokens, weights[inside], settings.candidates,
                                settings.query_cut, settings.heap_factor)
            found.append(np.array([int(doc_id) for _, _, doc_id in hits], dtype=np.int64))
        return np.unique(np.concatenate(found)) if found else np.zeros(0, dtype=np.int64)


def _dataset(seismic, block: sp.csr_matrix):
    """A SeismicDataset of the non-empty rows of ``block``: id = row, token = column."""
    string = seismic.get_seismic_string()
    names = np.array([str(c) for c in range(block.shape[1])], dtype=string)
    dataset = seismic.SeismicDataset()
    indptr, indices, data = block.indptr, block.indices, block.data.astype(np.float32)
    for row in np.flatnonzero(np.diff(indptr)):
        start, end = indptr[row], indptr[row + 1]
        dataset.add_document(str(row), names[indices[start:end]], data[start:end])
    return dataset


def stale_files(directory: Path, keep: set[str]) -> list[Path]:
    """Seismic files (and leftovers of interrupted builds) not named in ``keep``."""
    return [p for p in directory.iterdir()
            if p.name.startswith(FILE_PREFIX) and p.name not in keep]
