"""Request bodies in, typed values out; every refusal is one JSON error naming the field.

Errors have the shape text-embeddings-inference answers with,
``{"error": "...", "error_type": "Validation"}``, so clients written for it
read ours too.

>>> body = Body({"texts": ["a"], "kind": "query"}, "/encode")
>>> body.str_list("texts", max_items=4, max_chars=10), body.choice("kind", ("query",), "query")
(['a'], 'query')
>>> try:
...     Body({"texts": "a"}, "/encode").str_list("texts", max_items=4, max_chars=10)
... except RequestError as exc:
...     print(exc.status, exc)
422 /encode: "texts" must be a list of strings, got "a"
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from milco_os.core.errors import InputError, ServiceError
from milco_os.text.corpus import unicode_problem


class RequestError(InputError):
    """A request the server refuses as it is (HTTP 4xx)."""

    def __init__(self, message: str, status: int = 422, error_type: str = "Validation") -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type


class Unavailable(ServiceError):
    """The server cannot take the request now: overloaded, loading, stopping, too slow."""

    def __init__(self, message: str, status: int = 503, error_type: str = "Unhealthy") -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type


def error_body(exc: RequestError | Unavailable) -> dict[str, str]:
    return {"error": str(exc), "error_type": exc.error_type}


def parse_json(raw: bytes, where: str) -> dict[str, Any]:
    """The JSON object of a request body."""
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RequestError(f"{where}: the body is not valid JSON ({exc})", 400) from None
    except RecursionError:
        raise RequestError(f"{where}: the body nests JSON too deeply", 400) from None
    if not isinstance(data, dict):
        raise RequestError(f"{where}: the body must be a JSON object, got "
                           f"{_json_type(data)}", 400)
    return data


def _json_type(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean",
            type(None): "null"}.get(type(value), type(value).__name__)


class Body:
    """Typed access to the fields of one request body; unknown fields are refused."""

    def __init__(self, data: dict[str, Any], where: str) -> None:
        self.data = data
        self.where = where

    def refuse_unknown(self, known: Sequence[str]) -> None:
        unknown = sorted(set(self.data) - set(known))
        if unknown:
            raise RequestError(f"{self.where}: unknown fields {unknown}; expected some of "
                               f"{sorted(known)}")

    def _bad(self, name: str, expected: str) -> RequestError:
        """'"field" must be ..., got ...': scalars are shown, containers named by type."""
        value = self.data.get(name)
        got = ("nothing" if name not in self.data else json.dumps(value)[:60]
               if isinstance(value, str | int | float) else _json_type(value))
        return RequestError(f'{self.where}: "{name}" must be {expected}, got {got}')

    def str_list(self, name: str, *, max_items: int, max_chars: int,
                 allow_single: bool = False) -> list[str]:
        """A non-empty list of strings (or one string with ``allow_single``), within limits."""
        value = self.data.get(name)
        if allow_single and isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
            raise self._bad(name, "a list of strings" + (" or a string" if allow_single else ""))
        if not value:
            raise RequestError(f'{self.where}: "{name}" is empty', 422, "Empty")
        if len(value) > max_items:
            raise RequestError(f'{self.where}: "{name}" holds {len(value)} texts; at most '
                               f"{max_items} per request", 413)
        for i, text in enumerate(value):
            if len(text) > max_chars:
                raise RequestError(f'{self.where}: "{name}"[{i}] has {len(text)} characters; '
                                   f"at most {max_chars} per text", 413)
            if not text.strip():  # nothing to encode or search for
                raise RequestError(f'{self.where}: "{name}"[{i}] is blank', 422, "Empty")
            if problem := unicode_problem(text):  # refused here, alone, not inside a batch
                raise RequestError(f'{self.where}: "{name}"[{i}]: {problem}')
        return value

    def text(self, name: str, *, max_chars: int) -> str:
        return self.str_list(name, max_items=1, max_chars=max_chars, allow_single=True)[0]

    def choice(self, name: str, choices: Sequence[str], default: str) -> str:
        value = self.data.get(name, default)
        if value not in choices:
            raise self._bad(name, f"one of {list(choices)}")
        return value

    def views(self, name: str, choices: Sequence[str]) -> tuple[str, ...]:
        value = self.data.get(name, list(choices))
        if (not isinstance(value, list) or not value
                or any(v not in choices for v in value) or len(set(value)) < len(value)):
            raise self._bad(name, f"a non-empty list of distinct views from {list(choices)}")
        return tuple(v for v in choices if v in value)  # the canonical order

    def flag(self, name: str, default: bool) -> bool:
        value = self.data.get(name, default)
        if not isinstance(value, bool):
            raise self._bad(name, "true or false")
        return value

    def integer(self, name: str, default: int, low: int, high: int) -> int:
        value = self.data.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self._bad(name, f"a whole number from {low} to {high}")
        return value

    def number(self, name: str, low: float, high: float) -> float | None:
        """An optional number in [low, high] (None when absent or null)."""
        value = self.data.get(name)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float) or not (
                low <= value <= high):
            raise self._bad(name, f"a number from {low} to {high}")
        return float(value)

    def optional_str(self, name: str) -> str | None:
        value = self.data.get(name)
        if value is not None and not isinstance(value, str):
            raise self._bad(name, "a string")
        return value
