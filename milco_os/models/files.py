"""Reading and writing model folders: weights, configs, tokenizers; shared by every family."""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path

import torch

from milco_os.models.base import CheckpointError

CONFIG_NAME = "config.json"
SAFETENSORS_NAME = "model.safetensors"
PICKLE_NAME = "pytorch_model.bin"
EN_TOKENIZER_DIR = "en_tokenizer"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "sentencepiece.bpe.model",
    "vocab.txt",
)
# Bookkeeping entries of a saved config dict that are not constructor fields.
CONFIG_BOOKKEEPING = frozenset({"architectures", "model_type", "transformers_version",
                                "_name_or_path", "dtype", "torch_dtype"})


def config_fields(fields: Mapping) -> dict:
    """A saved config dict without its bookkeeping entries (``model_type`` included)."""
    return {k: v for k, v in fields.items() if k not in CONFIG_BOOKKEEPING}


def resolve_model_dir(path: str | Path, allow_patterns: list[str] | None = None) -> Path:
    """A local folder as is; otherwise a hub id fetched with ``snapshot_download``."""
    folder = Path(path).expanduser()
    if folder.is_dir():
        return folder
    if folder.exists():
        raise CheckpointError(f"{folder} is a file; expected a model folder")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(path), allow_patterns=allow_patterns))
    except Exception as exc:  # offline, unknown id, no auth: all end the same way for the user
        raise CheckpointError(
            f"{path!s} is not a local folder, a named model (milco-os model list) or a "
            f"Hugging Face hub id that could be fetched ({type(exc).__name__}: {exc}). "
            "Download it elsewhere and pass the folder."
        ) from None


def read_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    """The weights of a model folder: model.safetensors, else pytorch_model.bin (fp32 pickle)."""
    if (folder / SAFETENSORS_NAME).is_file():
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(folder / SAFETENSORS_NAME)
        except SafetensorError as exc:  # truncated or not a safetensors file at all
            raise CheckpointError(f"{folder / SAFETENSORS_NAME}: {exc}") from None
    if (folder / PICKLE_NAME).is_file():
        state = torch.load(folder / PICKLE_NAME, weights_only=True, map_location="cpu")
        if not isinstance(state, Mapping):
            raise CheckpointError(f"{folder / PICKLE_NAME} does not hold a state dict")
        return dict(state)
    raise CheckpointError(f"{folder} has neither {SAFETENSORS_NAME} nor {PICKLE_NAME}")


def save_safetensors(state: Mapping[str, torch.Tensor], path: Path) -> None:
    """Write independent contiguous CPU copies (safetensors refuses tensors sharing memory)."""
    from safetensors.torch import save_file

    save_file({k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()},
              path, metadata={"format": "pt"})


def copy_tokenizers(dirs: Mapping[str, Path | None], out: Path) -> None:
    """Copy tokenizer files: the input tokenizer to ``out``, the English one to a subfolder."""
    for role, source in dirs.items():
        if source is None or not Path(source).is_dir():
            continue
        target = out if role == "m" else out / EN_TOKENIZER_DIR
        target.mkdir(parents=True, exist_ok=True)
        for name in TOKENIZER_FILES:
            src = Path(source) / name
            if src.is_file() and src.resolve() != (target / name).resolve():
                shutil.copyfile(src, target / name)
