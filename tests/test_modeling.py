"""MILCO model: released checkpoint layout, loading, saving and the forward math."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from _model_helpers import ASSETS, ReferenceMilco, make_tiny
from safetensors.torch import load_file
from transformers import BertConfig, BertForMaskedLM, XLMRobertaConfig, XLMRobertaModel

from milco_os.models.base import CheckpointError
from milco_os.models.files import resolve_model_dir
from milco_os.models.milco import MilcoModel
from milco_os.models.presets import init_model
from milco_os.models.registry import load_sparse_model
from milco_os.models.splade import SpladeModel

# Released keys outside the encoder (the spec's checkpoint table).
HEAD_KEYS = {
    "projector.weight", "projector.bias",
    "mlm_head.predictions.bias",
    "mlm_head.predictions.transform.dense.weight", "mlm_head.predictions.transform.dense.bias",
    "mlm_head.predictions.transform.LayerNorm.weight",
    "mlm_head.predictions.transform.LayerNorm.bias",
    "mlm_head.predictions.decoder.weight", "mlm_head.predictions.decoder.bias",
    "echo.weight", "echo.bias", "scale",
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny(tmp_path_factory.mktemp("tiny"))


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.tensor([[0, 10, 11, 12, 11, 2], [0, 13, 2, 1, 1, 1]])
    return ids, (ids != 1).long()


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_saved_checkpoint_has_the_released_key_set(tiny):
    state = load_file(tiny / "model.safetensors")
    encoder = {f"m_model.{k}" for k in XLMRobertaModel(XLMRobertaConfig(
        **json.loads((tiny / "config.json").read_text())["m_encoder_config"])).state_dict()}
    assert "m_model.pooler.dense.weight" in encoder
    assert set(state) == encoder | HEAD_KEYS
    assert torch.equal(state["mlm_head.predictions.bias"],
                       state["mlm_head.predictions.decoder.bias"])
    pickled = torch.load(tiny / "pytorch_model.bin", weights_only=True, map_location="cpu")
    assert set(pickled) == set(state)
    assert state["echo.weight"].shape == (1, 16) and state["scale"].shape == (1,)


def test_round_trip_gives_identical_outputs(tiny, tmp_path):
    model = MilcoModel.from_pretrained(tiny)
    again = MilcoModel.from_pretrained(model.save_pretrained(tmp_path / "again"))
    ids, mask = batch()
    with torch.no_grad():
        a, b = model(ids, mask), again(ids, mask)
    assert torch.equal(a.pivot, b.pivot) and torch.equal(a.echo, b.echo)
    assert (tmp_path / "again" / "tokenizer.json").is_file()
    assert (tmp_path / "again" / "en_tokenizer" / "tokenizer.json").is_file()


def test_head_bias_is_one_shared_tensor(tiny):
    predictions = MilcoModel.from_pretrained(tiny).mlm_head.predictions
    assert predictions.decoder.bias is predictions.bias
    decoder = predictions.decoder.weight
    assert decoder.data_ptr() != predictions.transform.dense.weight.data_ptr()


def test_plain_pickled_state_dict_loads(tiny, tmp_path):
    folder = copy_model(tiny, tmp_path / "bin")
    (folder / "model.safetensors").unlink()
    state = load_file(tiny / "model.safetensors")
    torch.save(dict(state), folder / "pytorch_model.bin")
    loaded = MilcoModel.from_pretrained(folder)
    assert torch.equal(loaded.projector.weight, state["projector.weight"])
    assert loaded.m_model.embeddings.position_ids.device.type == "cpu"


@pytest.mark.parametrize("spelling", ["mlm_head.predictions.bias",
                                      "mlm_head.predictions.decoder.bias"])
def test_either_spelling_of_the_head_bias_loads(tiny, tmp_path, spelling):
    folder = copy_model(tiny, tmp_path / "one-bias")
    (folder / "pytorch_model.bin").unlink()
    state = load_file(tiny / "model.safetensors")
    del state[spelling]
    torch.save(state, folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    predictions = MilcoModel.from_pretrained(folder).mlm_head.predictions
    assert predictions.decoder.bias is predictions.bias
    assert torch.equal(predictions.bias, load_file(tiny / "model.safetensors")[
        "mlm_head.predictions.bias"])


def _rewrite(tiny: Path, folder: Path, edit) -> Path:
    copy_model(tiny, folder)
    state = load_file(tiny / "model.safetensors")
    edit(state)
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")
    return folder


def test_missing_key_fails_naming_it(tiny, tmp_path):
    folder = _rewrite(tiny, tmp_path / "missing", lambda s: s.pop("projector.bias"))
    with pytest.raises(CheckpointError, match=r"missing keys \['projector.bias'\]"):
        MilcoModel.from_pretrained(folder)


def test_unexpected_key_fails_naming_it(tiny, tmp_path):
    folder = _rewrite(tiny, tmp_path / "extra",
                      lambda s: s.__setitem__("projector.extra", torch.zeros(1)))
    with pytest.raises(CheckpointError, match=r"unexpected keys \['projector.extra'\]"):
        MilcoModel.from_pretrained(folder)


def test_wrong_shape_fails_clearly(tiny, tmp_path):
    folder = _rewrite(tiny, tmp_path / "shape",
                      lambda s: s.__setitem__("projector.bias", torch.zeros(3)))
    with pytest.raises(CheckpointError, match="projector.bias"):
        MilcoModel.from_pretrained(folder)


def test_nan_weights_fail_naming_the_tensor(tiny, tmp_path):
    def poison(state):
        state["echo.weight"] = state["echo.weight"].clone()
        state["echo.weight"][0, 0] = float("nan")

    folder = _rewrite(tiny, tmp_path / "nan", poison)
    with pytest.raises(CheckpointError, match=r"NaN.*echo\.weight"):
        MilcoModel.from_pretrained(folder)


def test_teacher_keys_of_alignment_checkpoints_are_ignored(tiny, tmp_path):
    folder = _rewrite(tiny, tmp_path / "teacher", lambda s: s.update({
        "en_lsr.bert.embeddings.word_embeddings.weight": torch.zeros(4, 2),
        "m_model.embeddings.position_ids": torch.arange(514)[None]}))
    model = MilcoModel.from_pretrained(folder)
    assert not any(k.startswith("en_lsr.") for k in model.state_dict())


def test_released_config_without_nested_configs_loads(tiny, tmp_path):
    folder = copy_model(tiny, tmp_path / "released-config")
    config = json.loads((folder / "config.json").read_text())
    nested = config.pop("m_encoder_config"), config.pop("en_head_config")
    (folder / "config.json").write_text(json.dumps(config))
    model = MilcoModel.from_pretrained(folder)
    inferred = model.config.m_encoder_config
    for field in ("num_hidden_layers", "hidden_size", "intermediate_size", "vocab_size",
                  "max_position_embeddings"):
        assert inferred[field] == nested[0][field], field
    # Head counts cannot be read from shapes: the paper's head size of 64 is assumed.
    assert inferred["num_attention_heads"] == 1
    assert model.config.en_head_config["hidden_size"] == nested[1]["hidden_size"]


def test_nonpositive_scale_warns(tiny, tmp_path):
    folder = _rewrite(tiny, tmp_path / "neg", lambda s: s["scale"].fill_(-0.5))
    with pytest.warns(UserWarning, match="scale"):
        MilcoModel.from_pretrained(folder)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        MilcoModel.from_pretrained(tiny)


def test_forward_matches_independent_math(tiny):
    model = MilcoModel.from_pretrained(tiny)
    reference = ReferenceMilco(tiny)
    ids, mask = batch()
    with torch.no_grad():
        out = model(ids, mask)
    for row in range(len(ids)):
        real = ids[row][mask[row].bool()].tolist()
        pivot, _ = reference.dense(real)
        assert torch.allclose(out.pivot[row], torch.from_numpy(pivot), atol=1e-5)
    # Raw pooled logits keep the release's padding rule: padding contributes 0, not -inf.
    assert torch.equal(out.pivot, torch.log1p(torch.relu(out.pivot_logits)))
    assert (out.pivot_logits[1] >= 0).all()
    assert out.echo.shape == ids.shape and (out.echo[1, 3:] == 0).all()


def test_chunked_pooling_equals_full_pooling_with_gradients(tiny):
    model = MilcoModel.from_pretrained(tiny)
    ids, mask = batch()
    hidden = model.encode_states(ids, mask).detach()
    grads = []
    results = []
    for chunk in (None, 1, 4):
        h = hidden.clone().requires_grad_(True)
        pooled = model.pivot_from_states(h, mask, chunk_size=chunk)
        pooled.sum().backward()
        results.append(pooled.detach())
        grads.append(h.grad)
    for pooled, grad in zip(results[1:], grads[1:], strict=True):
        assert torch.allclose(pooled, results[0], atol=1e-6)
        # gradients are sums over the vocabulary: chunking reorders them, so fp32 rounding
        # is relative to the largest gradient (values reach the hundreds with real heads)
        assert torch.allclose(grad, grads[0], atol=1e-6 * grads[0].abs().max().item())


def test_echo_off_has_no_echo_keys(tmp_path):
    folder = make_tiny(tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    config["echo"] = False
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="echo.weight"):
        MilcoModel.from_pretrained(folder)


def _tiny_backbones(root: Path) -> tuple[Path, Path]:
    encoder = XLMRobertaModel(XLMRobertaConfig(
        vocab_size=300, hidden_size=24, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=48, max_position_embeddings=66, type_vocab_size=1))
    encoder.save_pretrained(root / "enc")
    if ASSETS is not None:
        return root / "enc", ASSETS / "models" / "splade-tiny"
    splade = BertForMaskedLM(BertConfig(vocab_size=120, hidden_size=16, num_hidden_layers=1,
                                        num_attention_heads=2, intermediate_size=32))
    splade.save_pretrained(root / "splade")
    return root / "enc", root / "splade"


def test_from_backbones_copies_the_english_head_untied(tmp_path):
    enc_path, splade_path = _tiny_backbones(tmp_path)
    model = MilcoModel.from_backbones(enc_path, splade_path).eval()
    splade = BertForMaskedLM.from_pretrained(str(splade_path))
    head = model.mlm_head.predictions
    assert torch.equal(head.decoder.weight, splade.cls.predictions.decoder.weight)
    assert torch.equal(head.bias, splade.cls.predictions.bias) and head.decoder.bias is head.bias
    embeddings = splade.bert.embeddings.word_embeddings.weight
    assert head.decoder.weight.data_ptr() != embeddings.data_ptr()
    assert model.projector.weight.shape == (splade.config.hidden_size, 24)
    assert model.scale.item() == 1.0
    reloaded = MilcoModel.from_pretrained(model.save_pretrained(tmp_path / "milco"))
    ids = torch.tensor([[0, 5, 6, 2]])
    with torch.no_grad():
        a, b = model(ids, torch.ones_like(ids)), reloaded(ids, torch.ones_like(ids))
    assert torch.equal(a.pivot_logits, b.pivot_logits) and torch.equal(a.echo, b.echo)


def test_from_backbones_can_keep_only_the_first_encoder_layers(tmp_path):
    """A cut encoder is an ordinary, shorter XLM-R: its last state is that layer's output."""
    full = XLMRobertaModel(XLMRobertaConfig(
        vocab_size=300, hidden_size=24, num_hidden_layers=3, num_attention_heads=2,
        intermediate_size=48, max_position_embeddings=66, type_vocab_size=1)).eval()
    full.save_pretrained(tmp_path / "enc3")
    _, splade_path = _tiny_backbones(tmp_path)
    model = MilcoModel.from_backbones(tmp_path / "enc3", splade_path, encoder_layers=2).eval()
    ids = torch.tensor([[0, 5, 6, 2]])
    with torch.no_grad():
        layer2 = full(input_ids=ids, output_hidden_states=True).hidden_states[2]
        torch.testing.assert_close(model.encode_states(ids, torch.ones_like(ids)), layer2)
    reloaded = MilcoModel.from_pretrained(model.save_pretrained(tmp_path / "cut"))
    assert len(reloaded.m_model.encoder.layer) == 2
    assert not any(k.startswith("m_model.encoder.layer.2.")
                   for k in load_file(tmp_path / "cut" / "model.safetensors"))
    with pytest.raises(ValueError, match="encoder_layers must be in 1..3"):
        MilcoModel.from_backbones(tmp_path / "enc3", splade_path, encoder_layers=4)


def test_echo_ignored_ids_echo_nothing_and_leave_the_rest(tiny, tmp_path):
    from milco_os.encoders import SparseEncoder

    text = "the city of music"
    before = SparseEncoder.from_pretrained(tiny).encode([text])[0].echo.to_dict()
    assert {"<s>", "</s>"} <= set(before)  # released math: special tokens echo too
    config = json.loads((tiny / "config.json").read_text())
    encoder = SparseEncoder.from_pretrained(tiny)
    ignored = [encoder.echo_vocab.terms.tolist().index(t) for t in ("<s>", "</s>")]
    config["echo_ignored_ids"] = ignored
    folder = tmp_path / "quiet"
    shutil.copytree(tiny, folder)
    (folder / "config.json").write_text(json.dumps(config))
    after = SparseEncoder.from_pretrained(folder).encode([text])[0].echo.to_dict()
    assert after == {t: w for t, w in before.items() if t not in ("<s>", "</s>")}


def test_load_sparse_model_picks_the_class(tiny, tmp_path):
    assert isinstance(load_sparse_model(tiny), MilcoModel)
    _, splade_path = _tiny_backbones(tmp_path)
    splade = load_sparse_model(splade_path)
    assert isinstance(splade, SpladeModel)
    ids = torch.tensor([[2, 5, 6, 3]])
    out = splade(ids, torch.ones_like(ids))
    assert out.echo is None and out.pivot.shape == (1, splade.config.vocab_size)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text('{"model_type": "gpt2"}')
    with pytest.raises(CheckpointError, match="gpt2"):
        load_sparse_model(tmp_path / "other")


def test_hub_id_offline_gives_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="not a local folder"):
        resolve_model_dir("no-such-org/no-such-milco")


def test_fallback_tokenizers_build_a_small_model(tmp_path):
    folder = init_model("tiny", tmp_path / "fallback", assets=None)
    assert (folder / "model.safetensors").stat().st_size < 2_000_000
    model = MilcoModel.from_pretrained(folder)
    assert model.config.m_vocab_size < 100
