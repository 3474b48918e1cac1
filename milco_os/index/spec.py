"""Declarative ingest specs: one YAML file per index, under ``ingest/``.

``milco-os ingest --index miracl-en`` means "build the index named miracl-en as
``ingest/miracl-en.yaml`` says". A spec names the source, the field mapping,
the model, passage splitting, pruning, views, engine settings and batch sizes;
command-line flags override any of them. Without a ``prune`` setting, documents
are pruned as the model is best indexed (milco-small: its 32 heaviest terms per view,
measured by ``bench/pruning_curve.py``; other models: not at all, the index holds
their exact vectors); ``prune: none`` keeps every term.

>>> spec = IngestSpec.from_dict({"index": "demo", "source": {"files": ["c.jsonl"]},
...                              "model": "path/to/model"})
>>> str(spec.pruning), spec.views, spec.batch.encode, spec.encode.fields
('none', ('pivot', 'echo'), 32, ('title', 'text'))

``prune`` is parsed once, here, into a :class:`~milco_os.vectors.pruning.Pruning` (a spec
string is accepted wherever a spec is built); the ingestor applies exactly the rule
the index's ``_meta`` records.

Every value is checked for its type and range when the spec is read (and again
after command-line overrides), so a wrong value is one line naming the file and
key, never a traceback:

>>> try:
...     IngestSpec.from_dict({"index": "demo", "max_length": "lots"}, origin="demo.yaml")
... except SpecError as exc:
...     print(exc)
demo.yaml: max_length: expected an integer >= 1, got 'lots'
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from milco_os.core.errors import InputError
from milco_os.models.locations import DEFAULT_MODEL
from milco_os.text.corpus import FieldMap
from milco_os.vectors.pruning import Pruning, recommended_pruning
from milco_os.vectors.sparse import VIEWS

SPEC_DIRS = (Path("ingest"), Path(__file__).resolve().parents[2] / "ingest")


class SpecError(InputError):
    """An ingest spec that cannot be used, with the file and key at fault."""


@dataclass(frozen=True)
class Source:
    files: tuple[str, ...] = ()
    hub: str | None = None  # dataset id
    config: str | None = None
    split: str = "train"
    fields: FieldMap = field(default_factory=FieldMap)


@dataclass(frozen=True)
class EngineSettings:
    shards: int = 1
    replicas: int = 0
    refresh_interval: str | None = "30s"  # fewer refreshes while bulk loading


@dataclass(frozen=True)
class BatchSizes:
    encode: int = 32  # passages per model batch
    bulk_docs: int = 500  # at most this many documents per bulk request
    bulk_bytes: int = 5_000_000  # and at most this many bytes


@dataclass(frozen=True)
class Passages:
    window: int | None = None  # tokens per passage; None: one passage per document
    stride: int | None = None  # tokens between passage starts; default: the window


ENCODABLE_FIELDS = ("title", "text")


@dataclass(frozen=True)
class EncodeFields:
    """Which document fields the model reads, joined by ``separator`` (BEIR, MIRACL and
    MTEB encode ``title + " " + text``); each passage of a long document gets its title."""

    fields: tuple[str, ...] = ENCODABLE_FIELDS
    separator: str = " "

    def text(self, title: str | None, text: str) -> str:
        """The text given to the model for one passage ``text`` of a document."""
        parts = {"title": title, "text": text}
        return self.separator.join(parts[f] for f in self.fields if parts[f])


@dataclass(frozen=True)
class IngestSpec:
    index: str
    source: Source = field(default_factory=Source)
    model: str | None = DEFAULT_MODEL  # `model: null` for pre-encoded corpora
    max_length: int | None = None
    passages: Passages = field(default_factory=Passages)
    encode: EncodeFields = field(default_factory=EncodeFields)
    # a spec string is parsed on creation; None: the model's recommended document pruning
    prune: Pruning | None = None
    views: tuple[str, ...] = VIEWS
    lang: str | None = None
    engine: EngineSettings = field(default_factory=EngineSettings)
    batch: BatchSizes = field(default_factory=BatchSizes)
    description: str = ""

    def __post_init__(self) -> None:
        if self.prune is None or isinstance(self.prune, Pruning):
            return
        if not isinstance(self.prune, str):
            raise SpecError(f"prune: expected a string such as topk:32, got {self.prune!r}")
        try:
            object.__setattr__(self, "prune", Pruning.parse(self.prune))
        except ValueError as exc:
            raise SpecError(f"prune: {exc}") from None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], origin: str = "<spec>") -> IngestSpec:
        if not isinstance(data, Mapping):
            raise SpecError(f"{origin}: expected a mapping of keys (index, source, model, ...), "
                            f"got {type(data).__name__}")
        data = dict(data)
        try:
            source = _mapping(data.pop("source", {}), "source")
            lang = data.get("lang")
            fmap = FieldMap.from_dict(source.pop("fields", None), default_lang=lang)
            files = source.pop("files", ())
            files = (files,) if isinstance(files, str) else tuple(_list(files, "source.files"))
            spec = cls(
                source=Source(files=files, fields=fmap, **_known(Source, source, "source")),
                passages=Passages(**_known(Passages, data.pop("passages", {}), "passages")),
                encode=EncodeFields(**_known(EncodeFields, data.pop("encode", {}), "encode")),
                engine=EngineSettings(**_known(EngineSettings, data.pop("engine", {}), "engine")),
                batch=BatchSizes(**_known(BatchSizes, data.pop("batch", {}), "batch")),
                **_known(cls, data, "top level"),
            )
        except (TypeError, ValueError) as exc:
            raise SpecError(f"{origin}: {exc}") from None
        return spec.validated(origin)

    @classmethod
    def load(cls, path: str | Path) -> IngestSpec:
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise SpecError(f"cannot read ingest spec {path}: {exc}") from None
        if isinstance(data, dict):
            data.setdefault("index", path.stem)
        spec = cls.from_dict(data, origin=str(path))
        # Relative input files are relative to the spec file, not to the working directory.
        files = tuple(str(f if Path(f).is_absolute() else path.parent / f)
                      for f in spec.source.files)
        model = str(Path(spec.model).expanduser()) if spec.model and spec.model[0] == "~" \
            else spec.model
        return replace(spec, model=model, source=replace(spec.source, files=files))

    @classmethod
    def find(cls, index: str) -> IngestSpec | None:
        """The spec ``ingest/<index>.yaml`` (working directory first, then the project's)."""
        for folder in SPEC_DIRS:
            path = folder / f"{index}.yaml"
            if path.is_file():
                return cls.load(path)
        return None

    def validated(self, origin: str = "<spec>") -> IngestSpec:
        """This spec, if every value has the right type and range; else :class:`SpecError`."""
        try:
            self._check()
        except ValueError as exc:
            raise SpecError(f"{origin}: {exc}") from None
        return self

    def _check(self) -> None:
        for key, value, minimum in self._integers():
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < minimum):
                raise ValueError(f"{key}: expected an integer >= {minimum}, got {value!r}")
        for key, value in self._strings():
            if value is not None and not isinstance(value, str):
                raise ValueError(f"{key}: expected a string, got {value!r}")
        if not self.index or self.index != self.index.lower() or " " in self.index:
            raise ValueError(f"index name {self.index!r} must be non-empty, lower-case, "
                             "without spaces")
        bad_views = set(self.views) - set(VIEWS)
        if bad_views or not self.views:
            raise ValueError(f"views {list(self.views)}: expected a non-empty subset of "
                             f"{list(VIEWS)}")
        if not self.encode.fields or set(self.encode.fields) - set(ENCODABLE_FIELDS):
            raise ValueError(f"encode.fields {list(self.encode.fields)}: expected a non-empty "
                             f"subset of {list(ENCODABLE_FIELDS)}")
        if self.source.files and self.source.hub:
            raise ValueError("source: give either files or hub, not both")
        if self.passages.window is None and self.passages.stride is not None:
            raise ValueError("passages.stride needs passages.window")
        if (self.passages.stride or 0) > (self.passages.window or 0):
            raise ValueError(f"passages.stride {self.passages.stride} must be <= "
                             f"passages.window {self.passages.window}")

    def _integers(self) -> list[tuple[str, Any, int]]:
        """(key, value, minimum) of every integer setting."""
        return [("max_length", self.max_length, 1),
                ("passages.window", self.passages.window, 1),
                ("passages.stride", self.passages.stride, 1),
                ("engine.shards", self.engine.shards, 1),
                ("engine.replicas", self.engine.replicas, 0),
                *((f"batch.{f.name}", getattr(self.batch, f.name), 1) for f in fields(BatchSizes))]

    def _strings(self) -> list[tuple[str, Any]]:
        """(key, value) of every string setting (None: not set)."""
        return [("index", self.index), ("model", self.model),
                ("lang", self.lang), ("description", self.description),
                ("source.hub", self.source.hub), ("source.config", self.source.config),
                ("source.split", self.source.split),
                ("engine.refresh_interval", self.engine.refresh_interval),
                ("encode.separator", self.encode.separator),
                *((f"source.files[{i}]", f) for i, f in enumerate(self.source.files)),
                *((f"views[{i}]", v) for i, v in enumerate(self.views)),
                *((f"encode.fields[{i}]", v) for i, v in enumerate(self.encode.fields))]

    def with_overrides(self, **overrides: Any) -> IngestSpec:
        """A copy with the non-None command-line overrides applied."""
        spec = self
        if files := overrides.pop("files", None):
            spec = replace(spec, source=replace(spec.source, files=tuple(map(str, files)),
                                                hub=None))
        if (size := overrides.pop("batch_size", None)) is not None:
            spec = replace(spec, batch=replace(spec.batch, encode=size))
        if lang := overrides.get("lang"):
            fmap = replace(spec.source.fields, default_lang=lang)
            spec = replace(spec, source=replace(spec.source, fields=fmap))
        return replace(spec, **{k: v for k, v in overrides.items() if v is not None}).validated()

    @functools.cached_property
    def pruning(self) -> Pruning:
        """The document pruning applied: ``prune``, else what the model is best indexed
        with (:func:`~milco_os.vectors.pruning.recommended_pruning`: ``topk:32`` for
        milco-small, ``none`` for other models)."""
        return self.prune if self.prune is not None else recommended_pruning(self.model)

    def describe(self) -> dict[str, Any]:
        """What the index's ``_meta`` records about how it was built."""
        return {"model": self.model, "views": list(self.views), "pruning": str(self.pruning),
                "max_length": self.max_length, "passages": vars(self.passages),
                "encode": {"fields": list(self.encode.fields),
                           "separator": self.encode.separator}}


def _mapping(data: Any, where: str) -> dict[str, Any]:
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ValueError(f"{where}: expected a mapping, got {data!r}")
    return dict(data)


def _list(data: Any, where: str) -> list[Any]:
    if not isinstance(data, list | tuple):
        raise ValueError(f"{where}: expected a list, got {data!r}")
    return list(data)


def _known(kind: type, data: Mapping[str, Any] | None, where: str) -> dict[str, Any]:
    data = _mapping(data, where)
    names = {f.name for f in fields(kind)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; expected some of {sorted(names)}")
    for key in ("views", "fields"):
        if key in data:
            value = data[key]
            data[key] = (value,) if isinstance(value, str) else tuple(_list(value, key))
    return data
