"""Tiny MILCO models for tests, and an independent re-computation of MILCO's math.

The reference below reads the saved weights file itself and follows the model
description step by step with plain tensor operations; it shares no code with
``milco_os.models`` beyond the transformers XLM-R encoder.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from _shared import SHARED as ASSETS
from safetensors.torch import load_file
from transformers import XLMRobertaConfig, XLMRobertaModel

from milco_os.models.milco import MilcoModel
from milco_os.models.presets import init_model


def make_tiny(out: Path, echo_bias: float = 0.3, scale: float = 1.25, seed: int = 0) -> Path:
    """A tiny random MILCO whose echo weights are mostly positive (so the view is not empty)."""
    folder = init_model("tiny", out, seed=seed, assets=ASSETS)
    model = MilcoModel.from_pretrained(folder)
    with torch.no_grad():
        model.echo.bias.fill_(echo_bias)
        model.scale.fill_(scale)
    model.save_pretrained(folder, safe_serialization=True, pickle=True)
    return folder


def favour_pivot_term(folder: Path, term: str, bias: float = 8.0) -> None:
    """Raise the English head's bias of ``term`` so every text weighs it (tests that need a
    given term in a vector must not depend on what a random model happens to weigh)."""
    from tokenizers import Tokenizer

    term_id = Tokenizer.from_file(str(folder / "en_tokenizer" / "tokenizer.json")).token_to_id(term)
    assert term_id is not None, f"{term!r} is not in the pivot vocabulary"
    model = MilcoModel.from_pretrained(folder)
    with torch.no_grad():
        model.mlm_head.predictions.decoder.bias[term_id] += bias
    model.save_pretrained(folder, safe_serialization=True, pickle=True)


class ReferenceMilco:
    """MILCO inference written out from the spec, one text at a time, no padding."""

    def __init__(self, folder: Path, dtype: torch.dtype = torch.float32) -> None:
        import json

        config = json.loads((folder / "config.json").read_text())
        self.state = {k: v.to(dtype) for k, v in load_file(folder / "model.safetensors").items()}
        encoder_fields = {k: v for k, v in config["m_encoder_config"].items()
                          if k not in ("model_type", "architectures", "transformers_version")}
        self.encoder = XLMRobertaModel(XLMRobertaConfig(**encoder_fields)).to(dtype).eval()
        encoder_state = {k[len("m_model."):]: v for k, v in self.state.items()
                         if k.startswith("m_model.")}
        self.encoder.load_state_dict(encoder_state)
        self.eps = config["en_head_config"].get("layer_norm_eps", 1e-12)
        self.m_vocab = config["m_vocab_size"]

    @torch.no_grad()
    def dense(self, ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """(pivot [V_en], echo [V_m]) for one text given as token ids."""
        s = self.state
        input_ids = torch.tensor([ids])
        hidden = self.encoder(input_ids=input_ids,
                              attention_mask=torch.ones_like(input_ids)).last_hidden_state[0]
        z = F.gelu(hidden @ s["projector.weight"].T + s["projector.bias"])
        t = F.gelu(z @ s["mlm_head.predictions.transform.dense.weight"].T
                   + s["mlm_head.predictions.transform.dense.bias"])
        t = F.layer_norm(t, t.shape[-1:], s["mlm_head.predictions.transform.LayerNorm.weight"],
                         s["mlm_head.predictions.transform.LayerNorm.bias"], self.eps)
        logits = t @ s["mlm_head.predictions.decoder.weight"].T + s["mlm_head.predictions.bias"]
        pivot = torch.log1p(torch.relu(logits.max(dim=0).values))
        per_position = torch.relu(hidden @ s["echo.weight"][0] + s["echo.bias"][0]) * s["scale"][0]
        echo = np.zeros(self.m_vocab)
        for token, weight in zip(ids, per_position.tolist(), strict=True):
            echo[token] += weight  # duplicates are summed
        return pivot.numpy(), echo


def dense_view(view, size: int) -> np.ndarray:
    out = np.zeros(size)
    out[view.ids] = view.weights
    return out
