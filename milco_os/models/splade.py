"""A plain English SPLADE model (``BertForMaskedLM``, ``model_type`` "bert"): pivot view only."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers.models.bert.modeling_bert import BertForMaskedLM

from milco_os.models.base import SparseModel
from milco_os.models.files import copy_tokenizers, resolve_model_dir
from milco_os.models.weights import refuse_incomplete


class SpladeModel(SparseModel):
    """English SPLADE: BERT states, the MLM head's logits pooled into the pivot view, no echo."""

    def __init__(self, mlm: BertForMaskedLM) -> None:
        super().__init__()
        self.mlm = mlm
        self.config = mlm.config
        self.tokenizer_dirs: dict[str, Path] = {}

    @classmethod
    def from_pretrained(cls, path: str | Path, *, device: str | torch.device | None = None,
                        dtype: torch.dtype | None = None) -> SpladeModel:
        folder = resolve_model_dir(path)
        mlm, loading = BertForMaskedLM.from_pretrained(str(folder), output_loading_info=True)
        refuse_incomplete(mlm, loading, folder)
        model = cls(mlm)
        model.tokenizer_dirs = {"m": folder, "en": folder}
        model.eval()
        return model.to(device=device, dtype=dtype)

    def encode_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.mlm.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    def pivot_head(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.mlm.cls(hidden)

    def save_pretrained(self, out_dir: str | Path, safe_serialization: bool = True) -> Path:
        out = Path(out_dir)
        self.mlm.save_pretrained(out, safe_serialization=safe_serialization)
        copy_tokenizers({"m": self.tokenizer_dirs.get("m")}, out)
        return out

    def num_parameters_by_part(self) -> dict[str, int]:
        return {"bert": sum(p.numel() for p in self.mlm.bert.parameters()),
                "mlm_head": sum(p.numel() for p in self.mlm.cls.parameters())}
