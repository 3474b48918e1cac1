"""Retrieval test collections: queries, relevance judgements (qrels) and a corpus.

:func:`load_dataset` reads a collection from a dataset spec:

- a BEIR-format folder: ``corpus.jsonl`` (``_id``, ``title``, ``text``),
  ``queries.jsonl`` (``_id``, ``text``, optional ``lang``) and ``qrels/<split>.tsv``
  (``query-id  corpus-id  score`` with a header line, or 4-column TREC qrels);
  a folder holding one such folder per language (``miracl/ar``, ``miracl/en``...)
  is one collection with a corpus per language;
- local files: ``queries=Q.jsonl,qrels=R.tsv[,corpus=C.jsonl]`` (queries as JSONL
  or as a ``qid<TAB>text`` TSV);
- a hub dataset in the MTEB layout, with ``{lang}-corpus``, ``{lang}-queries`` and
  ``{lang}-qrels`` configs: ``hub:mteb/MIRACLRetrievalHardNegatives``, or the aliases
  ``miracl``, ``mkqa`` and ``mldr`` (downloaded through ``datasets``; needs the hub).

Query ids of a collection with several languages are prefixed with the language
(``ar/123``), because the languages' own ids may collide. Each language keeps its
own corpus (``EvalDataset.corpora``), searched in its own index.

Lower-casing (:meth:`EvalDataset.lowercased`) reproduces the paper's evaluation,
which lower-cased queries and "title text" documents; it applies to documents
when an index is built from the collection.

>>> import json, pathlib, tempfile
>>> root = pathlib.Path(tempfile.mkdtemp())
>>> _ = (root / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "Dogs?"}) + "\\n")
>>> (root / "qrels").mkdir()
>>> _ = (root / "qrels" / "test.tsv").write_text("query-id\\tcorpus-id\\tscore\\nq1\\td1\\t1\\n")
>>> data = load_dataset(str(root), lang="en").lowercased()
>>> [(q.id, q.text, q.lang) for q in data.queries], data.qrels
([('q1', 'dogs?', 'en')], {'q1': {'d1': 1}})
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from milco_os.core.errors import InputError
from milco_os.text.corpus import Document, FieldMap, Record, read_files, to_document

Qrels = dict[str, dict[str, int]]  # query id -> {document id: relevance}
CorpusReader = Callable[[], Iterator[Record]]

# MTEB-layout hub datasets: alias -> (hub id, evaluation split).
HUB_ALIASES = {
    "miracl": ("mteb/MIRACLRetrievalHardNegatives", "dev"),
    "mkqa": ("mteb/MKQARetrieval", "test"),
    "mldr": ("mteb/MultiLongDocRetrieval", "test"),
}
SPLIT_PREFERENCE = ("test", "dev", "validation", "train")
CORPUS_FIELDS = FieldMap(id="_id", text="text", title="title", lang=None)


class DatasetError(InputError):
    """A collection that cannot be read, naming the file, record and field at fault."""


@dataclass(frozen=True)
class Query:
    id: str
    text: str
    lang: str | None = None


@dataclass(frozen=True)
class EvalDataset:
    """Queries with their languages, qrels, and a corpus reader per language.

    ``corpora`` maps a language (``None``: the one shared corpus) to a function
    that streams the corpus as :class:`milco_os.text.corpus.Record` (for ingestion).
    """

    name: str
    queries: tuple[Query, ...]
    qrels: Qrels
    corpora: Mapping[str | None, CorpusReader] = field(default_factory=dict)
    lowercase: bool = False

    def languages(self) -> list[str | None]:
        return sorted({q.lang for q in self.queries}, key=lambda lang: lang or "")

    def select_languages(self, langs: Sequence[str]) -> EvalDataset:
        missing = sorted(set(langs) - set(self.languages()))
        if missing:
            raise DatasetError(f"{self.name}: no queries in language(s) {missing}; "
                               f"the collection has {self.languages()}")
        queries = tuple(q for q in self.queries if q.lang in langs)
        ids = {q.id for q in queries}
        corpora = {lang: r for lang, r in self.corpora.items() if lang is None or lang in langs}
        return replace(self, queries=queries, corpora=corpora,
                       qrels={q: r for q, r in self.qrels.items() if q in ids})

    def check_judgements(self) -> None:
        """Refuse a collection none of whose queries has a relevant document: every score
        would be 0, which says nothing (mismatched ids, or the wrong qrels file)."""
        if self.queries and not any(relevance > 0 for q in self.queries
                                    for relevance in self.qrels.get(q.id, {}).values()):
            raise DatasetError(
                f"{self.name}: the relevance judgements (qrels) match none of its "
                f"{len(self.queries)} queries (query ids such as "
                f"{[q.id for q in self.queries[:3]]}; qrels query ids such as "
                f"{list(self.qrels)[:3]}); check the ids or the qrels file")

    def lowercased(self) -> EvalDataset:
        """Queries lower-cased now; documents lower-cased as the corpus is read."""
        queries = tuple(replace(q, text=q.text.lower()) for q in self.queries)
        corpora = {lang: _lowercase_reader(reader) for lang, reader in self.corpora.items()}
        return replace(self, queries=queries, corpora=corpora, lowercase=True)

    def corpus(self, lang: str | None) -> CorpusReader:
        """The corpus searched by queries in ``lang`` (its own, else the shared one)."""
        reader = self.corpora.get(lang) or self.corpora.get(None)
        if reader is None:
            raise DatasetError(f"{self.name}: no corpus for language {lang!r}")
        return reader


def _lowercase_reader(reader: CorpusReader) -> CorpusReader:
    def read() -> Iterator[Record]:
        for record in reader():
            if isinstance(record, Document):
                record = replace(record, text=record.text.lower(),
                                 title=record.title.lower() if record.title else None)
            yield record

    return read


# ------------------------------------------------------------------ spec dispatch


def load_dataset(spec: str, *, langs: Sequence[str] | None = None, split: str | None = None,
                 lang: str | None = None) -> EvalDataset:
    """The collection named by ``spec`` (see the module docstring).

    ``langs`` keeps only those languages; ``split`` picks the qrels split (default:
    test, else dev, else the only one); ``lang`` labels queries that carry no language.
    """
    path = Path(spec).expanduser()
    if path.is_dir():
        data = read_beir_folder(path, split=split, lang=lang)
    elif "=" in spec:
        data = read_local_files(spec, lang=lang)
    elif spec.startswith("hub:") or spec in HUB_ALIASES or "/" in spec:
        data = read_hub_dataset(spec.removeprefix("hub:"), langs=langs, split=split)
    else:
        raise DatasetError(f"dataset {spec!r}: not a folder, not queries=...,qrels=... files, "
                           f"and not a hub dataset (hub:ID or one of {sorted(HUB_ALIASES)})")
    data = data.select_languages(langs) if langs else data
    data.check_judgements()
    return data


# ------------------------------------------------------------------ local readers


def read_beir_folder(root: Path, *, split: str | None = None, lang: str | None = None
                     ) -> EvalDataset:
    """A BEIR folder, or a folder of per-language BEIR folders."""
    if (root / "queries.jsonl").is_file():
        queries = read_queries(root / "queries.jsonl", lang=lang)
        qrels = read_qrels(_qrels_file(root, split))
        corpora = {None: _file_reader(root / "corpus.jsonl", lang)} \
            if (root / "corpus.jsonl").is_file() else {}
        return EvalDataset(root.name, tuple(queries), qrels, corpora)
    parts = sorted(p for p in root.iterdir() if (p / "queries.jsonl").is_file())
    if not parts:
        raise DatasetError(f"{root}: no queries.jsonl here nor in any sub-folder (expected a "
                           "BEIR folder: corpus.jsonl, queries.jsonl, qrels/<split>.tsv)")
    queries, qrels, corpora = [], {}, {}
    for part in parts:
        sub = read_beir_folder(part, split=split, lang=part.name)
        queries += [replace(q, id=f"{part.name}/{q.id}") for q in sub.queries]
        qrels.update({f"{part.name}/{q}": r for q, r in sub.qrels.items()})
        if None in sub.corpora:
            corpora[part.name] = sub.corpora[None]
    return EvalDataset(root.name, tuple(queries), qrels, corpora)


def _qrels_file(root: Path, split: str | None) -> Path:
    folder = root / "qrels"
    available = sorted(p.stem for p in folder.glob("*.tsv")) if folder.is_dir() else []
    if split:
        if split not in available:
            raise DatasetError(f"{root}: no qrels/{split}.tsv (splits: {available or 'none'})")
        return folder / f"{split}.tsv"
    for name in SPLIT_PREFERENCE:
        if name in available:
            return folder / f"{name}.tsv"
    if len(available) == 1:
        return folder / f"{available[0]}.tsv"
    raise DatasetError(f"{root}: cannot choose a qrels split among {available or 'none'}; "
                       "give --split")


def _file_reader(path: Path, lang: str | None = None) -> CorpusReader:
    fields = replace(CORPUS_FIELDS if _uses_beir_ids(path) else FieldMap(), default_lang=lang)
    return lambda: read_files([path], fields)


def _uses_beir_ids(path: Path) -> bool:
    """Whether a JSONL corpus names its ids ``_id`` (BEIR) rather than ``id``."""
    if path.suffix.lower() != ".jsonl":
        return False
    with path.open(encoding="utf-8") as lines:
        first = next((line for line in lines if line.strip()), "{}")
    try:
        return "_id" in json.loads(first)
    except json.JSONDecodeError:
        return False


def read_local_files(spec: str, *, lang: str | None = None) -> EvalDataset:
    """``queries=Q,qrels=R[,corpus=C]``: paths to local files."""
    parts = dict(item.split("=", 1) for item in spec.split(",") if "=" in item)
    unknown = sorted(set(parts) - {"queries", "qrels", "corpus"})
    if unknown or not {"queries", "qrels"} <= set(parts):
        raise DatasetError(f"dataset {spec!r}: expected queries=FILE,qrels=FILE[,corpus=FILE]")
    paths = {key: Path(value).expanduser() for key, value in parts.items()}
    for key, path in paths.items():
        if not path.is_file():
            raise DatasetError(f"dataset {spec!r}: {key} file {path} not found")
    corpora = {None: _file_reader(paths["corpus"], lang)} if "corpus" in paths else {}
    return EvalDataset(paths["queries"].stem, tuple(read_queries(paths["queries"], lang=lang)),
                       read_qrels(paths["qrels"]), corpora)


def read_queries(path: Path, *, lang: str | None = None) -> list[Query]:
    """Queries from JSONL (``_id``/``id``, ``text``, optional ``lang``) or ``qid<TAB>text``."""
    if path.suffix.lower() in (".tsv", ".txt"):
        rows = []
        with path.open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, 1):
                # split on the first tab only: quotes and further tabs are query text
                query_id, tab, text = line.rstrip("\r\n").partition("\t")
                if tab:
                    rows.append({"id": query_id, "text": text})
                elif line.strip():
                    raise DatasetError(f"{path}: line {number}: expected qid<TAB>text")
    else:
        rows = []
        with path.open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as exc:
                        raise DatasetError(f"{path}: line {number}: {exc.msg}") from None
    return [_query(row, number, path, lang) for number, row in enumerate(rows, 1)]


def _query(row: Mapping[str, Any], number: int, path: Path | str, lang: str | None) -> Query:
    query_id = row.get("_id", row.get("id"))
    text = row.get("text")
    if query_id is None or str(query_id) == "":
        raise DatasetError(f"{path}: query {number}: field '_id': missing query id")
    if not isinstance(text, str) or not text.strip():
        raise DatasetError(f"{path}: query {query_id!r}: field 'text': missing or empty")
    return Query(str(query_id), text, row.get("lang") or lang)


def read_qrels(path: Path) -> Qrels:
    """BEIR qrels (``query-id corpus-id score``, header line) or TREC qrels (4 columns)."""
    qrels: Qrels = {}
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            cols = line.split()
            if not cols or (number == 1 and not cols[-1].lstrip("-").isdigit()):
                continue  # blank line or header
            if len(cols) not in (3, 4):
                raise DatasetError(f"{path}: line {number}: expected 3 (BEIR) or 4 (TREC) "
                                   f"columns, got {len(cols)}")
            query_id, doc_id, score = cols[0], cols[-2], cols[-1]
            try:
                qrels.setdefault(query_id, {})[doc_id] = int(float(score))
            except ValueError:
                raise DatasetError(f"{path}: line {number}: relevance {score!r} is not a "
                                   "number") from None
    return qrels


# ------------------------------------------------------------------ hub (MTEB layout)


def read_hub_dataset(name: str, *, langs: Sequence[str] | None = None,
                     split: str | None = None) -> EvalDataset:
    """An MTEB-layout hub dataset; needs ``langs`` (its ``{lang}-*`` configs)."""
    hub_id, default_split = HUB_ALIASES.get(name, (name, "test"))
    if not langs:
        raise DatasetError(f"hub dataset {hub_id!r}: give the languages to evaluate "
                           "(--langs ar,en,...), one {lang}-corpus/queries/qrels config each")
    split = split or default_split
    queries: list[Query] = []
    qrels: Qrels = {}
    corpora: dict[str | None, CorpusReader] = {}
    for lang in langs:
        for row in _hub_rows(hub_id, f"{lang}-queries", split):
            query = _query(row, 0, f"{hub_id}:{lang}-queries", lang)
            queries.append(replace(query, id=f"{lang}/{query.id}"))
        for row in _hub_rows(hub_id, f"{lang}-qrels", split):
            qrels.setdefault(f"{lang}/{row['query-id']}", {})[str(row["corpus-id"])] = \
                int(row["score"])
        corpora[lang] = _hub_corpus(hub_id, lang)
    return EvalDataset(hub_id, tuple(queries), qrels, corpora)


def _hub_rows(hub_id: str, config: str, split: str, streaming: bool = False):
    import datasets

    try:
        splits = datasets.get_dataset_split_names(hub_id, config)
        # A corpus config usually has a single split (named "corpus", "dev" or "test").
        chosen = split if split in splits or len(splits) != 1 else splits[0]
        return datasets.load_dataset(hub_id, config, split=chosen, streaming=streaming)
    except Exception as exc:  # the hub client raises many types; name what failed and why
        raise DatasetError(
            f"cannot load hub dataset {hub_id!r} (config {config!r}, split {split!r}): {exc}. "
            "The hub must be reachable (unset HF_HUB_OFFLINE) or the dataset cached; "
            "otherwise export it as a BEIR folder and pass the folder."
        ) from exc


def _hub_corpus(hub_id: str, lang: str) -> CorpusReader:
    """The ``{lang}-corpus`` config, or the one shared ``corpus`` config of a cross-lingual
    collection (queries in many languages, one corpus)."""

    def read() -> Iterator[Record]:
        import datasets

        config = f"{lang}-corpus"
        with contextlib.suppress(Exception):  # offline: _hub_rows reports the failure
            if config not in datasets.get_dataset_config_names(hub_id):
                config = "corpus"
        fields = replace(CORPUS_FIELDS, default_lang=None if config == "corpus" else lang)
        for position, row in enumerate(_hub_rows(hub_id, config, "corpus", streaming=True)):
            yield to_document(row, position, fields, f"{hub_id}:{config}")

    return read
