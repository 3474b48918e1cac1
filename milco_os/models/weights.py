"""Refuse checkpoints that would load with holes: a missing or non-finite tensor.

``transformers`` re-initialises a tensor that a checkpoint lacks (with a log
line that is easy to miss) and loads NaN as it is, which gives empty vectors;
both would silently index garbage. Load with ``output_loading_info=True`` and
pass the model and that information to :func:`refuse_incomplete`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from milco_os.core.errors import ModelLoadError


def refuse_incomplete(module: nn.Module, loading_info: Mapping[str, Any],
                      folder: str | Path) -> None:
    """:class:`ModelLoadError` if the checkpoint lacked tensors the model needs
    (``loading_info["missing_keys"]``) or any loaded tensor is NaN or infinite."""
    missing = sorted(loading_info.get("missing_keys") or ())
    if missing:
        raise ModelLoadError(f"{folder}: the checkpoint lacks {len(missing)} tensor(s) the model "
                             f"needs ({_some(missing)}); they would hold random values")
    corrupt = [name for name, tensor in module.state_dict().items()
               if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all())]
    if corrupt:
        raise ModelLoadError(f"{folder}: NaN or infinite values in {_some(corrupt)}")


def _some(names: list[str], shown: int = 5) -> str:
    return ", ".join(names[:shown]) + (" ..." if len(names) > shown else "")
