"""Text to sparse vectors: one encoding pipeline, two backends that run the model.

- :mod:`~milco_os.encoders.base`: tokenizing, batching, dense outputs -> sparse views
  (:class:`~milco_os.encoders.base.TextEncoder`), no torch;
- :mod:`~milco_os.encoders.pytorch`: :class:`SparseEncoder`, the model in PyTorch;
- :mod:`~milco_os.encoders.onnx`: :class:`OnnxSparseEncoder`, its exported graph on
  ONNX Runtime (fp32, or int8 with its measured agreement), started without torch.

:func:`load_encoder` picks the backend by name. The classes are imported lazily, so
``import milco_os.encoders`` imports neither torch nor onnxruntime.
"""

from __future__ import annotations

import os
from importlib import import_module
from importlib.util import find_spec
from typing import Any

from milco_os.encoders.base import DEFAULT_MAX_LENGTH, KINDS, TextEncoder

BACKENDS = ("torch", "onnx", "onnx-int8")
AUTO = "auto"

_LAZY = {"SparseEncoder": "milco_os.encoders.pytorch",
         "OnnxSparseEncoder": "milco_os.encoders.onnx"}

__all__ = ["AUTO", "BACKENDS", "DEFAULT_MAX_LENGTH", "KINDS", "TextEncoder", "choose_backend",
           "load_encoder", *_LAZY]


def choose_backend(backend: str, device: str | None, kind: str) -> str:
    """``backend``, with ``auto`` made concrete: ONNX Runtime for queries on the CPU (a
    query in a third of torch's time, a command that never imports torch), when it is
    installed; torch for documents (batched, chunked pivot, any device).

    >>> choose_backend("auto", "cuda", "query"), choose_backend("onnx-int8", None, "query")
    ('torch', 'onnx-int8')
    """
    if backend != AUTO:
        return backend
    if kind != "query" or device not in (None, "cpu"):
        return "torch"
    return "onnx" if all(find_spec(m) for m in ("onnxruntime", "onnx")) else "torch"


def load_encoder(model: str | os.PathLike[str], backend: str = AUTO,
                 device: str | None = None, kind: str = "query") -> TextEncoder:
    """The encoder of ``model`` on ``backend`` (``torch``, ``onnx``, ``onnx-int8`` or
    ``auto``, see :func:`choose_backend`, for texts of ``kind``; ``device`` is torch's:
    the ONNX backends run on the CPU). ``auto`` keeps torch for model families whose
    graph milco-os does not export (decoder-only echo-LLMs)."""
    if backend not in (AUTO, *BACKENDS):
        raise ValueError(f"backend must be one of {(AUTO, *BACKENDS)}, got {backend!r}")
    if backend == AUTO and not import_module(_LAZY["OnnxSparseEncoder"]).exportable(model):
        backend = "torch"
    backend = choose_backend(backend, device, kind)
    if backend == "torch":
        return import_module(_LAZY["SparseEncoder"]).SparseEncoder.from_pretrained(
            model, device=device)
    if device not in (None, "cpu"):
        raise ValueError(f"the {backend} backend runs on the CPU; got device {device!r}")
    return import_module(_LAZY["OnnxSparseEncoder"]).OnnxSparseEncoder.from_pretrained(
        model, quantized=backend == "onnx-int8")


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'milco_os.encoders' has no attribute {name!r}")
