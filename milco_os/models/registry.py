"""From a folder's ``model_type``, or a model name such as ``milco-small``, to a loaded model.

:func:`load_sparse_model` is the one loading function every command and API goes
through, so a name works wherever a model folder does.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import torch

from milco_os.models.base import CheckpointError, SparseModel
from milco_os.models.files import CONFIG_NAME, resolve_model_dir
from milco_os.models.milco import MilcoModel
from milco_os.models.named import NAMED_MODELS, ensure_named_model
from milco_os.models.splade import SpladeModel

MODEL_TYPES: dict[str, type[SparseModel] | str] = {
    "milco": MilcoModel,
    "bert": SpladeModel,
    # imported when first needed: its causal-LM classes add ~1.5 s to every start-up
    "echo-llm": "milco_os.models.echo_llm:EchoLlmModel",
}


def resolve_model(name_or_path: str | Path) -> Path:
    """The folder of a model: a local folder as is; a named model assembled into the
    cache on first use; else a Hugging Face hub id."""
    if not Path(name_or_path).expanduser().exists() and str(name_or_path) in NAMED_MODELS:
        return ensure_named_model(str(name_or_path))
    return resolve_model_dir(name_or_path)


def model_class(folder: Path) -> type[SparseModel]:
    """The class of a model folder, from its config.json ``model_type``."""
    config = folder / CONFIG_NAME
    if not config.is_file():
        raise CheckpointError(f"{folder}: no {CONFIG_NAME}; not a model folder")
    try:
        model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
    except (json.JSONDecodeError, AttributeError) as exc:
        raise CheckpointError(f"{config}: not a JSON config object ({exc})") from None
    if model_type not in MODEL_TYPES:
        raise CheckpointError(f"{config}: model_type {model_type!r} is not supported "
                              f"(expected one of {sorted(MODEL_TYPES)})")
    found = MODEL_TYPES[model_type]
    if isinstance(found, str):
        module, _, name = found.partition(":")
        found = getattr(importlib.import_module(module), name)
    return found


def load_sparse_model(path: str | Path, *, device: str | torch.device | None = None,
                      dtype: torch.dtype | None = None) -> SparseModel:
    """Load a model folder, named model (``milco-small``) or hub id of any registered family."""
    folder = resolve_model(path)
    return model_class(folder).from_pretrained(folder, device=device, dtype=dtype)


def check_model(path: str | Path) -> Path:
    """What loading ``path`` checks before it reads any weight: the folder (or named model)
    resolves, its config names a supported family, and its weights file is complete (a
    safetensors header read, nothing more). Returns the folder."""
    folder = resolve_model(path)
    model_class(folder)
    weights = folder / "model.safetensors"
    if weights.is_file():
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(weights), framework="pt"):
                pass
        except SafetensorError as exc:  # truncated, or not safetensors at all
            raise CheckpointError(f"{weights}: {exc}") from None
    elif not (folder / "pytorch_model.bin").is_file():
        raise CheckpointError(f"{folder} has neither model.safetensors nor pytorch_model.bin")
    return folder
