"""Declarative ingest specs: one YAML file per index, under ``ingest/``.

``milco-os ingest --index miracl-en`` means "build the index named miracl-en as
``ingest/miracl-en.yaml`` says". A spec names the source, the field mapping,
the model, passage splitting, pruning, views, engine settings and batch sizes;
command-line flags override any of them. Without a ``prune`` setting nothing is
pruned: the index holds the model's exact vectors.

>>> spec = IngestSpec.from_dict({"index": "demo", "source": {"files": ["c.jsonl"]},
...                              "model": "path/to/model"})
>>> spec.prune, spec.views, spec.batch.encode
('none', ('pivot', 'echo'), 32)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from milco_os.corpus import FieldMap
from milco_os.sparse import VIEWS

SPEC_DIRS = (Path("ingest"), Path(__file__).resolve().parents[1] / "ingest")


class SpecError(ValueError):
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


@dataclass(frozen=True)
class IngestSpec:
    index: str
    source: Source = field(default_factory=Source)
    model: str | None = "milco-small"  # the shipped model; `model: null` for pre-encoded corpora
    max_length: int | None = None
    passages: Passages = field(default_factory=Passages)
    prune: str = "none"
    views: tuple[str, ...] = VIEWS
    lang: str | None = None
    engine: EngineSettings = field(default_factory=EngineSettings)
    batch: BatchSizes = field(default_factory=BatchSizes)
    description: str = ""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], origin: str = "<spec>") -> IngestSpec:
        data = dict(data)
        try:
            source = dict(data.pop("source", {}) or {})
            lang = data.get("lang")
            fmap = FieldMap.from_dict(source.pop("fields", None), default_lang=lang)
            files = source.pop("files", ())
            files = (files,) if isinstance(files, str) else tuple(files)
            spec = cls(
                source=Source(files=files, fields=fmap, **_known(Source, source, "source")),
                passages=Passages(**_known(Passages, data.pop("passages", {}), "passages")),
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
        except (OSError, yaml.YAMLError) as exc:
            raise SpecError(f"cannot read ingest spec {path}: {exc}") from None
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
        def fail(message: str) -> None:
            raise SpecError(f"{origin}: {message}")

        if not self.index or self.index != self.index.lower() or " " in self.index:
            fail(f"index name {self.index!r} must be non-empty, lower-case, without spaces")
        bad_views = set(self.views) - set(VIEWS)
        if bad_views or not self.views:
            fail(f"views {list(self.views)}: expected a non-empty subset of {list(VIEWS)}")
        if self.source.files and self.source.hub:
            fail("source: give either files or hub, not both")
        for name in ("encode", "bulk_docs", "bulk_bytes"):
            if getattr(self.batch, name) < 1:
                fail(f"batch.{name} must be >= 1")
        return self

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

    def describe(self) -> dict[str, Any]:
        """What the index's ``_meta`` records about how it was built."""
        return {"model": self.model, "views": list(self.views), "pruning": self.prune,
                "max_length": self.max_length, "passages": vars(self.passages)}


def _known(kind: type, data: Mapping[str, Any] | None, where: str) -> dict[str, Any]:
    data = dict(data or {})
    names = {f.name for f in fields(kind)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; expected some of {sorted(names)}")
    if "views" in data:
        data["views"] = tuple(data["views"])
    return data
