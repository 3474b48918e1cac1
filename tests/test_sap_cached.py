"""training/sap_cached.py's document-frequency cap: no pivot term stays in more than the
cap's share of the texts, and terms under the cap keep their bias."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from _model_helpers import make_tiny

from milco_os.models.milco import MilcoModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))
import sap_cached  # noqa: E402


class RandomStates:
    """A stand-in for the encoder-state cache: fixed random states of varied lengths."""

    def __init__(self, count: int, width: int, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.ids = [[0] * (3 + i % 7) for i in range(count)]
        self.states = [torch.randn(len(ids), width, generator=generator) for ids in self.ids]

    def batch(self, rows: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        width = max(len(self.ids[r]) for r in rows)
        hidden = torch.zeros(len(rows), width, self.states[0].shape[-1])
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for row, r in enumerate(rows):
            hidden[row, : len(self.ids[r])] = self.states[r]
            mask[row, : len(self.ids[r])] = 1
        return hidden, mask, torch.zeros_like(mask)


def shares(model: MilcoModel, cache: RandomStates, rows: list[int]) -> torch.Tensor:
    with torch.no_grad():
        pooled = model.pivot_from_states(*cache.batch(rows)[:2])
    return (pooled > 0).float().mean(dim=0)


def test_the_cap_leaves_no_term_in_more_than_its_share_and_spares_the_rest(tmp_path):
    model = MilcoModel.from_pretrained(make_tiny(tmp_path / "tiny")).eval()
    cache = RandomStates(200, model.config.m_encoder_config["hidden_size"])
    rows = list(range(200))
    before = shares(model, cache, rows)
    bias = model.mlm_head.predictions.decoder.bias.detach().clone()
    assert (before > 0.2).sum() > 10  # a random head puts many terms in most texts

    capped = sap_cached.cap_document_frequency(model, cache, rows, cap=0.2, batch=16)

    after = shares(model, cache, rows)
    assert after.max() <= 0.2 + 1 / len(rows)  # the quantile may keep one tie
    assert set(capped) == set((before > 0.2).nonzero().squeeze(-1).tolist())
    untouched = before <= 0.2
    assert torch.equal(model.mlm_head.predictions.decoder.bias[untouched], bias[untouched])
    assert torch.equal(after[untouched], before[untouched])
