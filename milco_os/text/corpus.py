"""Corpus sources: stream documents from local files or hub datasets, never all at once.

A source yields :class:`Document` records, or :class:`RecordError` for a record
that cannot be used (missing id, empty text, wrong type), so one bad line never
stops the good ones and is always counted and reported.

Local files are JSONL, Parquet or CSV/TSV with ``id`` and ``text`` (optional
``title``, ``lang``, and pre-encoded ``pivot``/``echo`` maps); other column
names are mapped with ``fields``.

>>> import json, tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "c.jsonl"
>>> _ = path.write_text(json.dumps({"id": "d1", "text": "hello"}) + "\\n{}\\n")
>>> [type(r).__name__ for r in read_files([path])]
['Document', 'RecordError']
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from milco_os.core.errors import InputError

FIELDS = ("id", "text", "title", "lang")


class CorpusFileError(InputError):
    """An input file that cannot be read (missing, unsupported, corrupt), named in the message."""


class MissingInputError(CorpusFileError, FileNotFoundError):
    """An input file that does not exist."""


@dataclass(frozen=True)
class Document:
    """One corpus document; ``vectors`` holds pre-encoded ``pivot``/``echo`` maps if given."""

    id: str
    text: str
    title: str | None = None
    lang: str | None = None
    vectors: Mapping[str, Mapping[str, float]] | None = None
    position: int = 0


@dataclass(frozen=True)
class RecordError:
    """A record that was read but cannot be ingested, with where and why."""

    position: int
    id: str | None
    field: str
    reason: str
    source: str = ""

    def __str__(self) -> str:
        who = f"record {self.position}" + (f" (id {self.id!r})" if self.id else "")
        where = f" in {self.source}" if self.source else ""
        return f"{who}{where}: field {self.field!r}: {self.reason}"


Record = Document | RecordError


@dataclass(frozen=True)
class FieldMap:
    """Which column of the source holds each document field."""

    id: str = "id"
    text: str = "text"
    title: str | None = "title"
    lang: str | None = "lang"
    default_lang: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, default_lang: str | None = None
                  ) -> FieldMap:
        data = dict(data or {})
        unknown = set(data) - set(FIELDS)
        if unknown:
            raise ValueError(f"unknown field mapping key(s) {sorted(unknown)}; "
                             f"expected some of {FIELDS}")
        return cls(default_lang=default_lang, **data)


def to_document(row: Mapping[str, Any], position: int, fields: FieldMap, source: str = ""
                ) -> Record:
    """Validate one raw row into a :class:`Document`, or say precisely what is wrong."""

    def error(name: str, reason: str, doc_id: str | None = None) -> RecordError:
        return RecordError(position, doc_id, name, reason, source)

    if not isinstance(row, Mapping):
        return error("<record>", f"expected an object, got {type(row).__name__}")
    raw_id = row.get(fields.id)
    if raw_id is None or (isinstance(raw_id, str) and not raw_id.strip()):
        return error(fields.id, "missing document id")
    if not isinstance(raw_id, str | int) or isinstance(raw_id, bool):
        return error(fields.id, f"id must be a string or integer, got {type(raw_id).__name__}")
    doc_id = str(raw_id)
    text = row.get(fields.text)
    vectors = {v: row[v] for v in ("pivot", "echo") if row.get(v) is not None}
    for view, terms in vectors.items():
        if problem := _vector_problem(terms):
            return error(view, problem, doc_id)
    if text is None and not vectors:
        return error(fields.text, "missing text", doc_id)
    if text is not None and not isinstance(text, str):
        return error(fields.text, f"text must be a string, got {type(text).__name__}", doc_id)
    if not vectors and not text.strip():
        return error(fields.text, "empty text", doc_id)
    if text and (problem := unicode_problem(text)):
        return error(fields.text, problem, doc_id)
    optional = {}
    for name in ("title", "lang"):
        column = getattr(fields, name)
        value = row.get(column) if column else None
        if value is not None and not isinstance(value, str):
            return error(column, f"{name} must be a string, got {type(value).__name__}", doc_id)
        if value and (problem := unicode_problem(value)):
            return error(column, problem, doc_id)
        optional[name] = value or None
    return Document(
        id=doc_id, text=text or "", title=optional["title"],
        lang=optional["lang"] or fields.default_lang, vectors=vectors or None, position=position,
    )


def unicode_problem(text: str) -> str | None:
    """Why ``text`` is not Unicode text a tokenizer can read (a lone surrogate, which JSON
    escapes such as ``\\ud800`` can carry), or None.

    >>> unicode_problem("ok"), unicode_problem("bad \\ud800 text")
    (None, 'lone surrogate U+D800 at character 4: not valid Unicode text')
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return (f"lone surrogate U+{ord(text[exc.start]):04X} at character {exc.start}: "
                "not valid Unicode text")
    return None


def _vector_problem(terms: Any) -> str | None:
    """Why a pre-encoded ``{term: weight}`` map cannot be indexed, or None."""
    if not isinstance(terms, Mapping):
        return f"expected an object of term weights, got {type(terms).__name__}"
    for term, weight in terms.items():
        if isinstance(weight, bool) or not isinstance(weight, int | float):
            return f"term {term!r}: weight must be a number, got {weight!r}"
        if not math.isfinite(weight):
            return f"term {term!r}: weight {weight} is not finite"
    return None


def _rows_jsonl(path: Path) -> Iterator[tuple[Mapping[str, Any] | RecordError, str]]:
    # Lines are decoded one by one, so invalid UTF-8 costs that line, not the file.
    with path.open("rb") as lines:
        for number, raw in enumerate(lines, 1):
            if not raw.strip():
                continue
            try:  # utf-8-sig: a byte-order mark opening the file is not part of record 1
                yield json.loads(raw.decode("utf-8-sig" if number == 1 else "utf-8")), \
                    f"line {number}"
            except UnicodeDecodeError as exc:
                yield RecordError(0, None, "<utf-8>", f"invalid UTF-8 at byte {exc.start}"), \
                    f"line {number}"
            except json.JSONDecodeError as exc:
                yield RecordError(0, None, "<json>", exc.msg), f"line {number}"


def _rows_csv(path: Path) -> Iterator[tuple[Mapping[str, Any], str]]:
    delimiter = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
    with path.open(encoding="utf-8-sig", newline="") as handle:  # a leading BOM is no header
        # strict: an unterminated quote is an error, not a field that swallows the next records
        rows = csv.DictReader(handle, delimiter=delimiter, strict=True)
        try:
            for row in rows:  # line_num is the row's last line; quoted fields may span lines
                yield row, f"line {rows.line_num - _line_breaks(row)}"
        except UnicodeDecodeError as exc:  # csv cannot resynchronise: stop with the place
            raise CorpusFileError(f"{path}: invalid UTF-8 after line {rows.line_num} (byte "
                                  f"{exc.start} of the chunk); fix or convert the file") from None
        except csv.Error as exc:
            raise CorpusFileError(f"{path}: line {rows.line_num}: {exc} (an unterminated "
                                  "quote?); fix the file") from None


def _line_breaks(row: Mapping[str, Any]) -> int:
    """Line breaks inside a CSV row's fields (the extra fields of a long row included)."""
    values = [v for value in row.values()
              for v in (value if isinstance(value, list) else [value]) if v]
    return sum(len(_LINE_BREAK.findall(v)) for v in values)


_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def _rows_parquet(path: Path, batch_size: int = 1024
                  ) -> Iterator[tuple[Mapping[str, Any], str]]:
    import pyarrow.parquet as pq

    batches = pq.ParquetFile(path).iter_batches(batch_size=batch_size)
    rows = (row for batch in batches for row in batch.to_pylist())
    for number, row in enumerate(rows, 1):
        yield row, f"row {number}"


READERS = {".jsonl": _rows_jsonl, ".json": _rows_jsonl, ".ndjson": _rows_jsonl,
           ".csv": _rows_csv, ".tsv": _rows_csv, ".tab": _rows_csv, ".parquet": _rows_parquet}


def _reader(path: Path):
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in (".gz", ".bz2", ".xz"):
        raise CorpusFileError(f"{path}: compressed files are not supported; decompress first")
    try:
        return READERS[suffixes[-1]]
    except (KeyError, IndexError):
        raise CorpusFileError(f"{path}: unsupported file type; expected one of "
                              f"{sorted(READERS)}") from None


def _rows(path: Path, reader) -> Iterator[Any]:
    """``reader``'s rows; any failure to read names the file (e.g. a corrupt Parquet file)."""
    try:
        yield from reader(path)
    except CorpusFileError:
        raise
    except Exception as exc:  # pyarrow, OSError, ...: the reader's own words, with the file
        raise CorpusFileError(f"{path}: cannot read ({type(exc).__name__}: {exc})") from None


def read_files(paths: Sequence[str | Path], fields: FieldMap | None = None) -> Iterator[Record]:
    """Stream documents from local files, in order, with positions counted across files."""
    fields = fields or FieldMap()
    paths = [Path(p) for p in paths]
    readers = {p: _reader(p) for p in paths}  # fail on a bad name before reading anything
    for path in paths:
        # Pipes and /dev/stdin are inputs too: only a missing path or a folder is refused.
        if not path.exists():
            raise MissingInputError(f"input file not found: {path}")
        if path.is_dir():
            raise MissingInputError(f"input is a folder, not a file: {path}")
    return _number(((row, f"{p} {place}") for p in paths for row, place in _rows(p, readers[p])),
                   fields)


def read_hub(dataset: str, config: str | None = None, split: str = "train",
             fields: FieldMap | None = None) -> Iterator[Record]:
    """Stream documents from a hub dataset (``datasets`` streaming mode)."""
    import datasets

    try:
        stream = datasets.load_dataset(dataset, config, split=split, streaming=True)
    except Exception as exc:  # the hub client raises many types; say which dataset failed
        raise RuntimeError(f"cannot open hub dataset {dataset!r} (config {config!r}, split "
                           f"{split!r}): {exc}. Download it where the hub is reachable, or "
                           "point the spec at local files.") from exc
    return _number(((row, dataset) for row in stream), fields or FieldMap())


def _number(rows: Iterable[tuple[Any, str]], fields: FieldMap) -> Iterator[Record]:
    for position, (row, source) in enumerate(rows):
        if isinstance(row, RecordError):
            yield RecordError(position, None, row.field, row.reason, source)
        else:
            yield to_document(row, position, fields, source)


def shard(records: Iterable[Record], index: int, count: int) -> Iterator[Record]:
    """Records whose position falls to worker ``index`` of ``count`` (round robin).

    Positions are counted over the whole input, so N workers reading the same
    input with ``--shard 0/N`` ... ``--shard N-1/N`` cover it exactly once.
    """
    if not 0 <= index < count:
        raise ValueError(f"shard {index}/{count}: expected 0 <= I < N")
    return (r for r in records if r.position % count == index)
