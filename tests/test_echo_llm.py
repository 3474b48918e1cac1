"""Echo-LLM sparse encoder: echo pooling math, chunked head, LoRA, saving, training, CLI."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from _shared import SHARED
from click.testing import CliRunner
from safetensors.torch import load_file
from transformers import (
    BertConfig,
    BertForMaskedLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from milco_os.encoders import SparseEncoder
from milco_os.models.base import masked_max_logits
from milco_os.models.echo_llm import EchoLlmConfig, EchoLlmModel, echo_inputs
from milco_os.models.echo_presets import init_echo_model, train_tokenizer
from milco_os.models.registry import load_sparse_model
from milco_os.training.config import ConfigError, TrainConfig
from milco_os.training.echo_llm import (
    EchoLlmContrastiveStage,
    EchoTrainingOptions,
    prepare_for_training,
    trainable_fraction,
)
from milco_os.training.trainer import Trainer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
SPLADE_TINY = None if SHARED is None else SHARED / "models" / "splade-tiny"
DISTILLATION = REPO / "training" / "configs" / "tiny-distillation.jsonl"
TEXTS = ["The cat sleeps on the warm sofa.", "A storm closed the harbour for two days.",
         "Music"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return init_echo_model("tiny", tmp_path_factory.mktemp("echo-tiny"), seed=0)


@pytest.fixture(scope="module")
def model(tiny) -> EchoLlmModel:
    return EchoLlmModel.from_pretrained(tiny)


def causal_lm_folder(out: Path, family: str = "mistral", padded_vocab: int = 0) -> Path:
    """A random Hugging Face causal-LM folder with a tokenizer.json, like a hub download.

    ``qwen2`` mimics Qwen2: no BOS is added, and the embedding matrix is larger than the
    tokenizer (``padded_vocab`` extra rows)."""
    pieces = train_tokenizer(TEXTS * 3, out, pieces=300)
    shape = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    torch.manual_seed(1)
    if family == "qwen2":
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(out / "tokenizer.json"))
        tokenizer.post_processor = None
        tokenizer.save(str(out / "tokenizer.json"))
        llm = Qwen2ForCausalLM(Qwen2Config(vocab_size=pieces + padded_vocab, bos_token_id=None,
                                           eos_token_id=2, tie_word_embeddings=True, **shape))
    else:
        llm = MistralForCausalLM(MistralConfig(vocab_size=pieces, bos_token_id=1,
                                               eos_token_id=2, **shape))
    llm.save_pretrained(out)
    return out


def english_head_folder(out: Path) -> Path:
    """splade-tiny when ../shared is present, else a random BERT MLM with a WordPiece vocab."""
    if SPLADE_TINY is not None:
        return SPLADE_TINY
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(
        {w.strip(".").lower() for t in TEXTS for w in t.split()})]
    tokenizer = Tokenizer(models.WordPiece({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    torch.manual_seed(2)
    BertForMaskedLM(BertConfig(vocab_size=len(words), hidden_size=16, num_hidden_layers=1,
                               num_attention_heads=2, intermediate_size=32)).save_pretrained(out)
    tokenizer.save(str(out / "tokenizer.json"))
    return out


def batch(model: EchoLlmModel, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(model.tokenizer_dirs["m"] / "tokenizer.json"))
    rows = [e.ids for e in tokenizer.encode_batch(texts)]
    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    return ids, mask


# ---------------------------------------------------------------- echo inputs


def test_echo_inputs_double_the_text_and_point_at_the_second_copy():
    ids = torch.tensor([[1, 7, 8, 9], [1, 5, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    doubled = echo_inputs(ids, mask, bos_token_id=1, prefix=[], separator=[])
    assert doubled.input_ids.tolist() == [[1, 7, 8, 9, 7, 8, 9], [1, 5, 5, 0, 0, 0, 0]]
    assert doubled.attention_mask.tolist() == [[1] * 7, [1, 1, 1, 0, 0, 0, 0]]
    # BOS points at a duplicate of the first pooled state; text positions at their copies
    assert doubled.source.tolist() == [[4, 4, 5, 6], [2, 2, 0, 0]]


def test_echo_inputs_with_template_left_padding_and_no_bos():
    ids = torch.tensor([[0, 1, 7, 8]])
    mask = torch.tensor([[0, 1, 1, 1]])  # left padding
    doubled = echo_inputs(ids, mask, bos_token_id=1, prefix=[20, 21], separator=[30])
    assert doubled.input_ids.tolist() == [[1, 20, 21, 7, 8, 30, 7, 8]]
    assert doubled.source.tolist() == [[0, 6, 6, 7]]
    no_bos = echo_inputs(torch.tensor([[7, 8]]), torch.ones(1, 2, dtype=torch.long),
                         bos_token_id=None, prefix=[], separator=[30])
    assert no_bos.input_ids.tolist() == [[7, 8, 30, 7, 8]]
    assert no_bos.source.tolist() == [[3, 4]]
    single = echo_inputs(ids, mask, bos_token_id=1, prefix=[], separator=[], echo=False)
    assert single.input_ids.tolist() == [[1, 7, 8]] and single.source.tolist() == [[0, 1, 1, 2]]


# ---------------------------------------------------------------- the pooling math


def reference_pivot(model: EchoLlmModel, ids: list[int], echo: bool = True) -> torch.Tensor:
    """SPLADE pooling written out: ``<s> t t`` through the LLM, LM-head logits of the second
    copy only (or of the single copy), max over positions, log1p(relu)."""
    text = ids[1:]
    sequence = [ids[0], *text, *text] if echo else ids
    llm = model.backbone()
    with torch.no_grad():
        states = llm.model(input_ids=torch.tensor([sequence])).last_hidden_state[0]
        pooled = states[len(sequence) - len(text):]
        logits = pooled @ llm.lm_head.weight.T
    return torch.log1p(torch.relu(logits.max(dim=0).values))


def test_pivot_is_splade_pooling_over_the_second_copy_only(model):
    ids, mask = batch(model, TEXTS[:1])
    assert ids[0, 0] == 1 and ids.shape[1] > 3
    with torch.no_grad():
        pivot = model(ids, mask).pivot[0]
    torch.testing.assert_close(pivot, reference_pivot(model, ids[0].tolist()),
                               rtol=0, atol=1e-6)
    assert (pivot >= 0).all() and (pivot > 0).any()
    single = reference_pivot(model, ids[0].tolist(), echo=False)
    assert (pivot - single).abs().max() > 1e-3  # the no-echo variant is another vector


def test_first_copy_states_do_not_reach_the_vector(model):
    ids, mask = batch(model, TEXTS[:1])
    n = ids.shape[1]  # the echo row is <s> t t: first copy 1..n-1, second copy n..2n-2

    def pivot_with_final_states_replaced(positions: range) -> torch.Tensor:
        def scramble(module, inputs, output):
            output = output.clone()
            output[:, positions] = 100.0 * torch.randn_like(output[:, positions])
            return output

        handle = model.backbone().model.norm.register_forward_hook(scramble)
        try:
            with torch.no_grad():
                return model(ids, mask).pivot
        finally:
            handle.remove()

    with torch.no_grad():
        clean = model(ids, mask).pivot
    torch.testing.assert_close(pivot_with_final_states_replaced(range(0, n)), clean,
                               rtol=0, atol=0)
    assert (pivot_with_final_states_replaced(range(n, n + 1)) - clean).abs().max() > 1e-2


def test_padding_and_batching_do_not_change_vectors(model):
    ids, mask = batch(model, TEXTS)
    with torch.no_grad():
        together = model(ids, mask).pivot
        for row, text in enumerate(TEXTS):
            alone_ids, alone_mask = batch(model, [text])
            torch.testing.assert_close(model(alone_ids, alone_mask).pivot[0], together[row],
                                       rtol=0, atol=1e-5)


def test_chunked_pooling_equals_unchunked_with_and_without_gradients(model):
    ids, mask = batch(model, TEXTS)
    with torch.no_grad():
        hidden = model.encode_states(ids, mask)
        full = masked_max_logits(model.pivot_head, hidden, mask, None)
        for chunk in (1, 3, 0):
            # chunked matmuls may round differently in the last bit of fp32
            torch.testing.assert_close(model.pivot_from_states(hidden, mask, chunk), full,
                                       rtol=0, atol=1e-6)
    weight = model.backbone().lm_head.weight
    grads = []
    for pool in (lambda h: masked_max_logits(model.pivot_head, h, mask, None),
                 lambda h: model.pivot_from_states(h, mask, 2)):
        h = hidden.detach().requires_grad_(True)
        weight.grad = None
        torch.log1p(torch.relu(pool(h))).sum().backward()
        grads.append((h.grad.clone(), weight.grad.clone()))
    weight.grad = None
    for plain, chunked in zip(*grads, strict=True):
        torch.testing.assert_close(chunked, plain, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- LoRA and saving


def test_lora_defaults_train_under_5_percent_and_leave_the_backbone_frozen(tmp_path):
    model = EchoLlmModel.from_pretrained(init_echo_model("small", tmp_path / "small"))
    options = EchoTrainingOptions.from_spec({"kind": "echo-llm", "preset": "small"})
    assert (options.lora.r, options.lora.alpha, options.lora.dropout) == (16, 8, 0.1)
    prepare_for_training(model, options)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n for n in trainable)
    assert {n.split(".")[-4] for n in trainable} == {"q_proj", "k_proj", "v_proj", "o_proj"}
    assert 0 < trainable_fraction(model) < 0.05
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    ids, mask = batch(model, TEXTS)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(2):
        model(ids, mask).pivot.sum().backward()
        optimizer.step()
        optimizer.zero_grad()
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if n in frozen)
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert any(p.abs().max() > 0 for p in lora_b)


def test_merged_save_reloads_to_the_same_vectors(tiny, tmp_path):
    from peft import PeftModel

    model = EchoLlmModel.from_pretrained(tiny)
    model.add_lora()
    torch.manual_seed(3)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.2)
    model.eval()
    ids, mask = batch(model, TEXTS)
    with torch.no_grad():
        adapted = model(ids, mask).pivot
        base = EchoLlmModel.from_pretrained(tiny)(ids, mask).pivot
    assert (adapted - base).abs().max() > 1e-3  # the adapter does change the vectors
    out = model.save_pretrained(tmp_path / "saved")
    assert (out / "adapter" / "adapter_config.json").is_file()
    with torch.no_grad():
        reloaded = load_sparse_model(out)(ids, mask).pivot
    torch.testing.assert_close(reloaded, adapted, rtol=0, atol=1e-5)
    # as after DeepSpeed: the weights given as a state dict with this module's names
    given = model.save_pretrained(tmp_path / "given", state_dict=dict(model.state_dict()))
    for name in ("llm/model.safetensors", "adapter/adapter_model.safetensors"):
        a, b = load_file(out / name), load_file(given / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the merge equals peft's own, and the adapter folder is a valid peft adapter
    peft_merged = model.llm.merge_and_unload().state_dict()
    saved = load_file(out / "llm" / "model.safetensors")
    assert saved.keys() == peft_merged.keys()
    for key, value in saved.items():
        torch.testing.assert_close(value, peft_merged[key], rtol=0, atol=1e-6)
    fresh = EchoLlmModel.from_pretrained(tiny)
    fresh.llm = PeftModel.from_pretrained(fresh.llm, str(out / "adapter"))
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(ids, mask).pivot, adapted, rtol=0, atol=1e-5)


# ---------------------------------------------------------------- other backbones and heads


def test_qwen2_style_backbone_without_bos_and_with_padded_vocabulary(tmp_path):
    folder = causal_lm_folder(tmp_path / "qwen", family="qwen2", padded_vocab=24)
    model = EchoLlmModel.from_causal_lm(folder, separator=" again:")
    assert model.config.vocab_size == model.backbone().config.vocab_size - 24
    assert model.config.echo_separator_ids
    saved = model.save_pretrained(tmp_path / "saved")
    encoder = SparseEncoder.from_pretrained(saved, device="cpu")
    [vector] = encoder.encode([TEXTS[0]])
    assert len(vector.pivot) > 0 and vector.pivot.ids.max() < model.config.vocab_size
    ids = torch.tensor([encoder.tokenizer.encode(TEXTS[0]).ids])
    assert ids[0, 0] != 1  # no BOS: the whole input is the text
    doubled = model.echo_inputs(ids, torch.ones_like(ids))
    assert doubled.input_ids[0].tolist() == [*ids[0].tolist(),
                                             *model.config.echo_separator_ids, *ids[0].tolist()]


def test_connector_to_an_english_mlm_head(tmp_path):
    llm = causal_lm_folder(tmp_path / "mistral")
    head = english_head_folder(tmp_path / "bert")
    model = EchoLlmModel.from_causal_lm(llm, english_head=head)
    english_vocab = BertConfig.from_pretrained(str(head)).vocab_size
    assert model.config.vocab_size == english_vocab
    saved = model.save_pretrained(tmp_path / "saved")
    assert (saved / "heads.safetensors").is_file() and (saved / "en_tokenizer").is_dir()
    encoder = SparseEncoder.from_pretrained(saved, device="cpu")
    [vector] = encoder.encode([TEXTS[1]], kind="document")
    ids = torch.tensor([encoder.tokenizer.encode(TEXTS[1]).ids])
    with torch.no_grad():
        expected = model.eval()(ids, torch.ones_like(ids)).pivot[0]
    dense = torch.zeros(english_vocab)
    dense[torch.from_numpy(vector.pivot.ids)] = torch.from_numpy(vector.pivot.weights)
    torch.testing.assert_close(dense, expected, rtol=0, atol=1e-5)
    assert set(vector.pivot.terms) <= set(encoder.pivot_vocab.terms)
    prepare_for_training(model, EchoTrainingOptions.from_spec(
        {"kind": "echo-llm", "backbone": str(llm)}))
    assert all(p.requires_grad for p in model.projector.parameters())
    assert not any(p.requires_grad for p in model.mlm_head.parameters())


# ---------------------------------------------------------------- encoder and CLI


def test_sparse_encoder_and_encode_cli(tiny, model):
    encoder = SparseEncoder.from_pretrained(tiny, device="cpu")
    vectors = encoder.encode(TEXTS, kind="query")
    ids, mask = batch(model, TEXTS)
    with torch.no_grad():
        dense = model(ids, mask).pivot
    for row, vector in enumerate(vectors):
        assert len(vector.echo) == 0
        assert len(vector.pivot) == int((dense[row] > 0).sum())
        torch.testing.assert_close(torch.from_numpy(vector.pivot.weights),
                                   dense[row, torch.from_numpy(vector.pivot.ids)],
                                   rtol=0, atol=1e-5)
    from milco_os.cli import main

    result = CliRunner().invoke(main, ["encode", "--model", str(tiny), "--json",
                                       "--prune", "topk:5", TEXTS[0]])
    assert result.exit_code == 0, result.output
    line = json.loads(result.stdout.strip().splitlines()[-1])
    assert line["echo"] == {} and list(line["pivot"]) == list(vectors[0].pivot.terms[:5])


# ---------------------------------------------------------------- training


def train_config(out: Path, **overrides) -> TrainConfig:
    values = {"stage": "sct", "output_dir": str(out),
              "model": {"kind": "echo-llm", "preset": "tiny"},
              "data": {"distillation": str(DISTILLATION)}, "batch_size": 4, "group_size": 4,
              "query_max_length": 16, "doc_max_length": 32, "warmup_steps": 0, "bf16": False,
              "log_every": 1, **overrides}
    return TrainConfig.from_dict(values)


def test_flops_training_makes_vectors_sparser(tmp_path):
    cfg = train_config(tmp_path, model={"kind": "echo-llm", "preset": "tiny",
                                        "full_finetune": True},
                       loss="info_nce", sparse_reg="flops", lambda_q=1.0, lambda_d=1.0,
                       lr=1e-2, max_steps=3)
    result = Trainer(cfg, EchoLlmContrastiveStage(cfg)).train()
    before = SparseEncoder.from_pretrained(tmp_path / "init", device="cpu").encode(TEXTS)
    after = SparseEncoder.from_pretrained(result.last_checkpoint, device="cpu").encode(TEXTS)
    assert result.history[-1]["reg_q"] < result.history[0]["reg_q"]
    for b, a in zip(before, after, strict=True):
        assert len(a.pivot) < len(b.pivot)


def test_tiny_yaml_trains_with_lora_and_resumes_exactly(tmp_path):
    cfg = TrainConfig.from_file(REPO / "training" / "configs" / "echo-mistral-tiny.yaml",
                                [f"output_dir={tmp_path}", "max_steps=4", "save_every=2",
                                 f"data.distillation={DISTILLATION}",
                                 "model.gradient_checkpointing=true"])
    stage = EchoLlmContrastiveStage(cfg)
    assert stage.model.lora_config is not None and cfg.loss == "info_nce"
    result = Trainer(cfg, stage).train()
    final = result.last_checkpoint
    assert (final / "adapter" / "adapter_model.safetensors").is_file()
    ids, mask = batch(stage.model, TEXTS)
    stage.model.eval()
    with torch.no_grad():
        trained = stage.model(ids, mask).pivot
        torch.testing.assert_close(load_sparse_model(final)(ids, mask).pivot, trained,
                                   rtol=0, atol=1e-5)
    resumed = EchoLlmContrastiveStage(cfg)
    Trainer(cfg, resumed).train(resume=tmp_path / "checkpoint-2")
    with torch.no_grad():
        torch.testing.assert_close(resumed.model.eval()(ids, mask).pivot, trained,
                                   rtol=0, atol=1e-6)


def test_bad_model_specs_are_named():
    with pytest.raises(ConfigError, match="exactly one of"):
        EchoTrainingOptions.from_spec({"kind": "echo-llm", "preset": "tiny", "path": "x"})
    with pytest.raises(ConfigError, match="unknown key"):
        EchoTrainingOptions.from_spec({"kind": "echo-llm", "preset": "tiny", "lora_rank": 4})
    with pytest.raises(ConfigError, match="model.lora"):
        EchoTrainingOptions.from_spec({"kind": "echo-llm", "preset": "tiny", "lora": {"rank": 4}})
    with pytest.raises(ConfigError, match="full_finetune"):
        EchoTrainingOptions.from_spec({"kind": "echo-llm", "preset": "tiny", "lora": False})
    with pytest.raises(ConfigError, match="english_head"):
        EchoTrainingOptions.from_spec({"kind": "echo-llm", "path": "x", "english_head": "y"})
    with pytest.raises(ValueError, match="unknown echo-LLM preset"):
        init_echo_model("huge", "/nonexistent")
    with pytest.raises(Exception, match="llm_config"):
        EchoLlmConfig().llm()


# ---------------------------------------------------------------- ingestion and search


@pytest.mark.cluster
def test_echo_llm_vectors_index_and_search_in_opensearch(tiny, cluster_url):
    """Byte-level BPE pieces (``Ġcat``, odd bytes) go through the engine-safe features and
    scores equal exact dot products within Lucene's 9-bit document weights."""
    import uuid

    from milco_os.engines.connection import ConnectionSettings
    from milco_os.engines.opensearch import OpenSearchEngine
    from milco_os.pipeline.documents import build_source
    from milco_os.pipeline.search import Searcher, SearchOptions
    from milco_os.vectors.pruning import Pruning

    encoder = SparseEncoder.from_pretrained(tiny, device="cpu")
    docs = encoder.encode(TEXTS, kind="document")
    engine = OpenSearchEngine(ConnectionSettings(url=cluster_url))
    index = f"test-echo-llm-{uuid.uuid4().hex[:10]}"
    engine.create_index(index, meta={"model": "echo-tiny", "views": ["pivot"],
                                     "pruning": "none"})
    try:
        assert engine.bulk_index(index, [(f"d{i}#0", build_source(f"d{i}", 0, v))
                                         for i, v in enumerate(docs)]) == []
        engine.refresh(index)
        searcher = Searcher(engine, index, encoder,
                            SearchOptions(prune=Pruning.parse("topk:100").apply))
        query = Pruning.parse("topk:100").apply(encoder.encode([TEXTS[1]])[0])
        [hits] = searcher.search([TEXTS[1]], k=3)
        exact = {f"d{i}": sum(w * d.pivot.to_dict().get(t, 0.0)
                              for t, w in query.pivot.to_dict().items())
                 for i, d in enumerate(docs)}
        assert sorted(h.doc_id for h in hits) == sorted(exact)
        for hit in hits:
            assert hit.score == pytest.approx(exact[hit.doc_id], rel=0.005)
            assert searcher.explain(hit, query).agrees()
    finally:
        engine.delete_index(index)


def test_the_sct_entry_point_selects_the_echo_llm_stage(tmp_path) -> None:
    import yaml as _yaml

    from milco_os.training.build import build_stage
    from milco_os.training.config import TrainConfig
    from milco_os.training.echo_llm import EchoLlmContrastiveStage
    from milco_os.training.stages import build_student

    repo = Path(__file__).resolve().parents[1]
    data = _yaml.safe_load((repo / "training/configs/echo-mistral-tiny.yaml").read_text())
    data.update(output_dir=str(tmp_path), max_steps=1)
    data["data"]["distillation"] = str(repo / data["data"]["distillation"])
    assert isinstance(build_stage(TrainConfig.from_dict(data)), EchoLlmContrastiveStage)
    with pytest.raises(ConfigError, match="echo-llm"):  # never silently a MILCO instead
        build_student(TrainConfig.from_dict({**data, "stage": "sap"}))
