"""One check that an index can take (or answer) the vectors of the model in use.

Scores between two models' vectors, two pruning levels or two sets of views are
meaningless, and writing into an index without the MILCO mapping adds dynamic
fields by the thousand. Ingestion, search and evaluation all ask
:func:`check_index` before they write or query; it compares what the index's
``_meta`` recorded at creation with what is in use now.

>>> meta = {"model": "m", "views": ["pivot", "echo"], "pruning": "mass:0.5"}
>>> check_index("news", meta, model="m", pruning="mass:0.50")
[]
>>> try:
...     check_index("news", meta, model="m", pruning="none")
... except IncompatibleIndexError as exc:
...     print(exc)
index 'news' was built with pruning 'mass:0.5', not 'none' (pass --force to use it anyway)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from milco_os.core.errors import IncompatibleIndexError, InputError
from milco_os.vectors.pruning import Pruning

MILCO_META_KEYS = ("model", "views", "pruning")  # what every index milco-os creates records


def same_model(a: str, b: str) -> bool:
    """Whether two model references (names, hub ids or folders) name the same model."""
    def key(ref: str) -> str:
        path = Path(ref).expanduser()
        return str(path.resolve()) if path.exists() else ref
    return key(a) == key(b)


def index_problems(index: str, meta: Mapping[str, Any], *, model: str | None = None,
                   views: Sequence[str] | None = None, pruning: str | None = None) -> list[str]:
    """Why ``index`` (whose ``_meta`` is ``meta``) does not fit; empty when it does.

    Only the given aspects are compared; a model is compared only when both sides name one.
    """
    missing = [k for k in MILCO_META_KEYS if k not in meta]
    if missing:
        return [f"index {index!r} has no MILCO mapping (its _meta lacks {', '.join(missing)}): "
                "it was not created by milco-os"]
    problems = []
    recorded = meta.get("model")
    if model and recorded and not same_model(model, recorded):
        problems.append(f"index {index!r} was built with model {recorded!r}, not {model!r}: "
                        "scores between two models' vectors are meaningless")
    if views is not None and set(views) != set(meta["views"] or ()):
        problems.append(f"index {index!r} holds views {list(meta['views'])}, not {list(views)}")
    if pruning is not None and _pruning(meta["pruning"]) != _pruning(pruning):
        problems.append(f"index {index!r} was built with pruning {meta['pruning']!r}, "
                        f"not {pruning!r}")
    return problems


def check_index(index: str, meta: Mapping[str, Any], *, force: bool = False,
                **in_use: Any) -> list[str]:
    """:func:`index_problems`, refused with :class:`IncompatibleIndexError` unless ``force``
    (then returned, for the caller to print as warnings)."""
    problems = index_problems(index, meta, **in_use)
    if problems and not force:
        raise IncompatibleIndexError("; ".join(problems) + " (pass --force to use it anyway)")
    return problems


def model_for_index(index: str, meta: Mapping[str, Any], model: str | None = None, *,
                    force: bool = False) -> tuple[str, list[str]]:
    """The model that encodes queries for ``index``: ``model``, else the one its ``_meta``
    records, and the warnings of a forced mismatch. Queries encoded by another model than
    the documents score meaninglessly, so a mismatch is refused unless ``force``."""
    warnings = check_index(index, meta, model=model, force=force)
    chosen = model or meta.get("model")
    if not chosen:
        raise InputError(f"index {index!r} records no model in its _meta: give a model "
                         "(--model)")
    return chosen, warnings


def _pruning(spec: Any) -> Pruning | str:
    """A rule in use as is; the string an index records, parsed (to compare equal rules
    spelled differently, ``topk:32`` and ``topk:32.0``)."""
    if isinstance(spec, Pruning):
        return spec
    try:
        return Pruning.parse(str(spec or "none"))
    except ValueError:
        return str(spec)  # an unparsable record matches only itself
