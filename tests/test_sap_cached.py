"""training/sap_cached.py's document-frequency cap: no pivot term stays in more than the
cap's share of the texts, and terms under the cap keep their bias."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from _model_helpers import make_tiny
from safetensors.torch import load_file

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
        ids = torch.zeros_like(mask)
        for row, r in enumerate(rows):
            hidden[row, : len(self.ids[r])] = self.states[r]
            mask[row, : len(self.ids[r])] = 1
            ids[row, : len(self.ids[r])] = torch.tensor(self.ids[r])
        return hidden, mask, ids


def shares(model: MilcoModel, cache: RandomStates, rows: list[int]) -> torch.Tensor:
    with torch.no_grad():
        pooled = model.pivot_from_states(*cache.batch(rows)[:2])
    return (pooled > 0).float().mean(dim=0)


def saying_nothing(rows: list[int]) -> dict[int, torch.Tensor]:
    return {r: torch.zeros(0, dtype=torch.int32) for r in rows}


def test_the_cap_leaves_no_term_in_more_than_its_share_and_spares_the_rest(tmp_path):
    model = MilcoModel.from_pretrained(make_tiny(tmp_path / "tiny")).eval()
    cache = RandomStates(200, model.config.m_encoder_config["hidden_size"])
    rows = list(range(200))
    before = shares(model, cache, rows)
    bias = model.mlm_head.predictions.decoder.bias.detach().clone()
    assert (before > 0.2).sum() > 10  # a random head puts many terms in most texts

    capped = sap_cached.cap_document_frequency(model, cache, [rows], saying_nothing(rows), cap=0.2,
                                                batch=16)

    after = shares(model, cache, rows)
    assert after.max() <= 0.2 + 1 / len(rows)  # the quantile may keep one tie
    assert set(capped) == set((before > 0.2).nonzero().squeeze(-1).tolist())
    untouched = before <= 0.2
    assert torch.equal(model.mlm_head.predictions.decoder.bias[untouched], bias[untouched])
    assert torch.equal(after[untouched], before[untouched])


def test_the_cap_holds_in_every_group_so_short_texts_do_not_outvote_long_ones(tmp_path):
    # Long texts (9 states, max-pooled) hold more terms than short ones (3 states): a
    # term may be under the cap over all texts and over it among the long ones.
    model = MilcoModel.from_pretrained(make_tiny(tmp_path / "tiny")).eval()
    cache = RandomStates(700, model.config.m_encoder_config["hidden_size"])
    short = [r for r in range(700) if len(cache.ids[r]) == 3]
    long = [r for r in range(700) if len(cache.ids[r]) == 9][:20]
    overall, among_long = shares(model, cache, short + long), shares(model, cache, long)
    only_long = ((among_long > 0.2) & (overall <= 0.2)).nonzero().squeeze(-1).tolist()
    assert only_long  # what one pool of all texts would leave uncapped

    capped = sap_cached.cap_document_frequency(model, cache, [short, long],
                                                saying_nothing(short + long), cap=0.2, batch=16)

    assert set(only_long) <= set(capped)
    for group in (short, long):
        assert shares(model, cache, group).max() <= 0.2 + 1 / len(group)


def test_the_cap_does_not_count_the_texts_that_say_the_term(tmp_path):
    model = MilcoModel.from_pretrained(make_tiny(tmp_path / "tiny")).eval()
    cache = RandomStates(200, model.config.m_encoder_config["hidden_size"])
    rows = list(range(200))
    before = shares(model, cache, rows)
    said, unsaid = before.argmax().item(), (before > 0.2).nonzero()[-1].item()
    assert said != unsaid
    words = {r: torch.tensor([said] if r % 4 else [said, unsaid], dtype=torch.int32)
             for r in rows}  # every text says `said`; a quarter say `unsaid`
    bias = model.mlm_head.predictions.decoder.bias.detach().clone()

    capped = sap_cached.cap_document_frequency(model, cache, [rows], words, cap=0.2, batch=16)

    assert said not in capped  # common because every text says it: left alone
    assert model.mlm_head.predictions.decoder.bias[said] == bias[said]
    # `unsaid` is capped among the texts that do not say it, and only those count.
    silent = [r for r in rows if r % 4]
    after = shares(model, cache, silent)[unsaid].item()
    assert after * len(silent) <= 0.2 * len(rows) + 1
    counting_all = MilcoModel.from_pretrained(tmp_path / "tiny").eval()
    sap_cached.cap_document_frequency(counting_all, cache, [rows], saying_nothing(rows),
                                      cap=0.2, batch=16)
    lowered = model.mlm_head.predictions.decoder.bias[unsaid]
    assert lowered > counting_all.mlm_head.predictions.decoder.bias[unsaid]  # less lowered


def tiny_prepared(folder) -> sap_cached.Prepared:
    """A tiny MILCO and 40 texts of pieces drawn from a small part of its vocabulary."""
    model = MilcoModel.from_pretrained(folder).eval()
    generator = torch.Generator().manual_seed(1)
    vocab = model.config.m_vocab_size
    used = min(60, vocab // 2)  # the tiny vocabulary is smaller without ../shared
    pieces = torch.randperm(vocab - 10, generator=generator)[:used] + 5
    ids = [[0, *pieces[torch.randint(used, (3 + i % 5,), generator=generator)].tolist(), 2]
           for i in range(40)]
    english = torch.rand(20, model.config.en_vocab_size, generator=generator)
    teacher = torch.where(english > 0.9, english, torch.zeros(())).to_sparse()
    pairs = torch.tensor([[i, 20 + i, i] for i in range(20)])
    return sap_cached.Prepared(model=model, ids=ids, pad_id=1, pairs=pairs, teacher=teacher,
                               cap_groups=[list(range(20, 30)), list(range(30, 40))],
                               cap_words={r: torch.tensor([r, 7], dtype=torch.int32)
                                          for r in range(20, 40)},
                               ignored=torch.tensor([0, 2, 3]),
                               english_pieces=[f"t{i}" for i in range(model.config.en_vocab_size)])


def pivot(model: MilcoModel, ids: list[list[int]], pad_id: int) -> torch.Tensor:
    tokens, mask = sap_cached.pad(ids, pad_id)
    with torch.no_grad():
        return model.pivot_from_states(model.encode_states(tokens, mask), mask)


def test_a_pack_keeps_the_math_and_its_trained_parts_go_back_into_the_full_model(tmp_path):
    folder = make_tiny(tmp_path / "tiny")
    prepared = tiny_prepared(folder)
    sap_cached.save_pack(prepared, tmp_path / "pack")
    packed = sap_cached.load_pack(tmp_path / "pack")

    # The cut vocabulary renumbers every piece, and fp16 weights give the same vectors.
    assert packed.model.config.m_vocab_size < prepared.model.config.m_vocab_size
    assert [len(ids) for ids in packed.ids] == [len(ids) for ids in prepared.ids]
    assert torch.allclose(pivot(packed.model, packed.ids, packed.pad_id),
                          pivot(prepared.model, prepared.ids, 1), atol=0.05)
    assert torch.allclose(packed.teacher.to_dense(), prepared.teacher.to_dense(), atol=2e-3)
    assert torch.equal(packed.pairs, prepared.pairs) and packed.cap_groups == prepared.cap_groups
    assert all(torch.equal(packed.cap_words[r], w) for r, w in prepared.cap_words.items())
    ignored_before = [[i in (0, 2, 3) for i in ids] for ids in prepared.ids]
    ignored_after = [[i in packed.ignored.tolist() for i in ids] for ids in packed.ids]
    assert ignored_before == ignored_after

    args = sap_cached.parse_args(["--from-pack", str(tmp_path / "pack"), "--steps", "3",
                                  "--echo-steps", "2", "--batch-size", "8", "--dev", "4",
                                  "--train-layers", "1", "--encoder-lr", "1e-2",
                                  "--parts-out", str(tmp_path / "parts.safetensors")])
    top = len(packed.model.m_model.encoder.layer) - 1
    top_before = packed.model.m_model.encoder.layer[top].output.dense.weight.detach().clone()
    sap_cached.train(packed, args)
    assert not torch.equal(packed.model.m_model.encoder.layer[top].output.dense.weight,
                           top_before)  # the top encoder layer trained ...
    trained_top = packed.model.m_model.encoder.layer[top].state_dict().values()
    assert all(torch.equal(w, w.half().float()) for w in trained_top)  # ... to fp16 values
    sap_cached.save_safetensors(sap_cached.trained_parts(packed.model, 1),
                                tmp_path / "parts.safetensors")
    full = MilcoModel.from_pretrained(folder).eval()
    before = pivot(full, prepared.ids, 1)
    sap_cached.load_trained_parts(full, tmp_path / "parts.safetensors")

    after = pivot(full, prepared.ids, 1)
    assert not torch.allclose(after, before)  # training changed the head ...
    assert torch.allclose(after, pivot(packed.model, packed.ids, packed.pad_id), atol=0.05)
    assert torch.equal(full.echo.weight, packed.model.echo.weight)  # ... and echo moved over
    assert torch.equal(full.m_model.encoder.layer[top].output.dense.weight,
                       packed.model.m_model.encoder.layer[top].output.dense.weight)


def test_states_cached_below_the_trained_layers_equal_the_full_encoder(tmp_path):
    prepared = tiny_prepared(make_tiny(tmp_path / "tiny"))
    model = prepared.model
    prepared.ids.append([0, *[prepared.ids[1][1]] * 60, 2])  # much padding for the others
    cache = sap_cached.StateCache(model, prepared.ids, 1, torch.device("cpu"), trained=1)
    assert len(model.m_model.encoder.layer) == len(cache.top) + 1  # the model keeps all layers
    rows = [0, 7, len(prepared.ids) - 1]
    with torch.no_grad():
        hidden, mask, _ = cache.batch(rows)
        tokens, full_mask = sap_cached.pad([prepared.ids[r] for r in rows], 1)
        full = model.encode_states(tokens, full_mask)
    assert torch.equal(mask, full_mask)
    # fp16 caching costs < 1e-3 here; attending to the padding would cost ~8e-3
    assert torch.allclose(hidden * mask[..., None], full * full_mask[..., None], atol=3e-3)


@pytest.mark.parametrize(("argv", "message"), [
    (["--from-pack", "p", "--train-layers", "7", "--parts-out", "x"],
     "--train-layers must be in 0..6"),
    (["--from-pack", "p", "--dev", "-1", "--parts-out", "x"], "must not be negative"),
    (["--config", "c.yaml", "--parts", "p", "--parts-out", "x"], "--parts needs"),
    (["--from-pack", "p", "--decoder-rows", "9", "--freeze-decoder", "--parts-out", "x"],
     "choose one"),
    (["--config", "c.yaml", "--init", "i", "--pack", "x"], "--pack and --parts do not train"),
    (["--from-pack", "p", "--init", "no-such-heads", "--parts-out", "x"],
     "--init no-such-heads: no such file"),
])
def test_flags_that_cannot_mean_anything_are_refused_before_work(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        sap_cached.parse_args(argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_a_dev_set_of_every_english_text_is_refused():
    with pytest.raises(SystemExit, match="no pair would be left"):
        sap_cached.split_dev(torch.tensor([[0, 2, 0], [1, 3, 1]]), 2, seed=0)


def test_the_dev_ranking_counts_a_tie_against_the_right_text():
    scores = torch.tensor([[2.0, 1.0, 0.0], [0.0, 0.0, 0.0], [1.0, 3.0, 3.0]])
    report = sap_cached.rank_report("pivot", scores)
    # row 0 is first; row 1 (all zero) is last of 3; row 2 ties for first, counted second
    assert report["pivot S@1"] == pytest.approx(1 / 3)
    assert report["pivot MRR"] == pytest.approx((1 + 1 / 3 + 1 / 2) / 3)


def tiny_tokens(prepared: sap_cached.Prepared, seed: int = 2) -> sap_cached.TokenData:
    """A random tiny English teacher, and word pieces covering each English text's
    non-special positions (two positions share a piece, one piece spans two)."""
    from transformers import BertConfig, BertForMaskedLM

    head = prepared.model.config.head_config()
    config = BertConfig(vocab_size=head.vocab_size, hidden_size=head.hidden_size,
                        num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=2 * head.hidden_size)
    torch.manual_seed(seed)
    teacher = BertForMaskedLM(config)
    english_rows = prepared.pairs[:, 1].tolist()
    english_ids, cover = [], []
    for text in english_rows:
        positions = len(prepared.ids[text]) - 2  # between <s> and </s>
        pieces = [3 + i % (config.vocab_size - 3) for i in range(positions)]
        english_ids.append([1, *pieces, 2])  # ids the smallest test vocabulary has
        cover.append(torch.tensor([[i, min(i, positions - 1), min(i + 1, positions)]
                                   for i in range(1, positions + 1)], dtype=torch.int32))
    return sap_cached.TokenData(teacher_config=config.to_dict(),
                                teacher_state=teacher.state_dict(),
                                english_ids=english_ids, cover=cover)


def test_per_token_targets_of_a_text_aligned_to_itself_are_the_english_ones(tmp_path):
    prepared = tiny_prepared(make_tiny(tmp_path / "tiny"))
    tokens = tiny_tokens(prepared)
    teacher = tokens.teacher(torch.device("cpu"))
    cache = sap_cached.StateCache(prepared.model, prepared.ids, 1, torch.device("cpu"))
    rows = [0, 3]
    english = cache.batch(prepared.pairs[rows, 1].tolist())
    source, english_side = sap_cached.token_targets(tokens, teacher, rows, [english, english],
                                                    prepared.ignored)
    # every covered English position has the max of its pieces' logits ...
    with torch.no_grad():
        logits = teacher(input_ids=torch.tensor([tokens.english_ids[0]])).logits[0]
    first, last = tokens.cover[0][0, 1:].tolist()
    assert english_side[1][0] == 1
    assert torch.allclose(english_side[2][0], logits[first:last + 1].max(0).values, atol=1e-5)
    assert len(english_side[0]) == sum(len(tokens.cover[r]) for r in rows)
    # ... and a source identical to its English side is aligned position by position
    assert source[0] == english_side[0] and source[1] == english_side[1]
    assert torch.equal(source[2], english_side[2])


def test_per_token_distillation_trains_and_travels_in_a_pack(tmp_path):
    prepared = tiny_prepared(make_tiny(tmp_path / "tiny"))
    prepared.tokens = tiny_tokens(prepared)
    sap_cached.save_pack(prepared, tmp_path / "pack")
    packed = sap_cached.load_pack(tmp_path / "pack")
    assert packed.tokens.english_ids == prepared.tokens.english_ids
    assert all(torch.equal(a, b) for a, b in zip(packed.tokens.cover, prepared.tokens.cover,
                                                  strict=True))

    argv = ["--from-pack", str(tmp_path / "pack"), "--steps", "3", "--echo-steps", "1",
            "--batch-size", "8", "--token-weight", "1", "--parts-out", "x"]
    before = packed.model.projector.weight.detach().clone()
    sap_cached.train(packed, sap_cached.parse_args(argv))
    assert not torch.equal(packed.model.projector.weight, before)

    packed.tokens = None  # a pack written before per-token distillation
    with pytest.raises(SystemExit, match="no English word pieces"):
        sap_cached.train(packed, sap_cached.parse_args(argv))


def test_a_run_from_init_heads_keeps_a_frozen_decoder_and_trains_the_rest(tmp_path):
    sap_cached.save_pack(tiny_prepared(make_tiny(tmp_path / "tiny")), tmp_path / "pack")
    common = ["--from-pack", str(tmp_path / "pack"), "--steps", "3", "--echo-steps", "1",
              "--batch-size", "8", "--lr", "1e-2"]
    first = sap_cached.main([*common, "--parts-out", str(tmp_path / "first.safetensors")])
    second = sap_cached.main([*common, "--init", str(first), "--freeze-decoder",
                              "--parts-out", str(tmp_path / "second.safetensors")])
    start, end = load_file(str(first)), load_file(str(second))
    decoder = "mlm_head.predictions.decoder.weight"
    packed = sap_cached.load_pack(tmp_path / "pack").model.state_dict()[decoder]
    assert not torch.equal(start[decoder], packed)  # the first run trained the decoder ...
    assert torch.equal(end[decoder], start[decoder])  # ... the second started there, frozen
    assert not torch.equal(end["projector.weight"], start["projector.weight"])


def test_a_decoder_row_budget_trains_only_the_most_frequent_terms_rows(tmp_path):
    prepared = tiny_prepared(make_tiny(tmp_path / "tiny"))
    sap_cached.save_pack(prepared, tmp_path / "pack")
    out = sap_cached.main(["--from-pack", str(tmp_path / "pack"), "--steps", "3",
                           "--echo-steps", "1", "--batch-size", "8", "--lr", "1e-2",
                           "--decoder-rows", "4", "--parts-out", str(tmp_path / "p.safetensors")])
    packed = sap_cached.load_pack(tmp_path / "pack").model.state_dict()  # fp16-rounded
    trained = load_file(str(out))
    decoder = "mlm_head.predictions.decoder.weight"
    moved = (trained[decoder] != packed[decoder]).any(1).nonzero().squeeze(-1)
    documents = (prepared.teacher.to_dense() > 0).sum(0)  # every English text is trained on
    assert 0 < len(moved) <= 4
    assert documents[moved].min() >= documents.topk(4).values[-1]
    assert not torch.equal(trained["projector.weight"], packed["projector.weight"])


def test_init_from_a_milco_folder_takes_its_heads(tmp_path):
    source = MilcoModel.from_pretrained(make_tiny(tmp_path / "a", seed=1))
    model = MilcoModel.from_pretrained(make_tiny(tmp_path / "b", seed=2))
    assert not torch.equal(model.projector.weight, source.projector.weight)
    sap_cached.load_trained_parts(model, tmp_path / "a")
    for key, value in sap_cached.trained_parts(source).items():
        assert torch.equal(model.state_dict()[key], value), key


def test_the_cap_is_set_on_each_language_of_running_text_with_what_its_translation_says(tmp_path):
    rows = tmp_path / "pairs.jsonl"
    rows.write_text("".join(json.dumps({"english": e, "non_english": o}) + "\n" for e, o in
                            [("a cat", "eine Katze"), ("a dog", "ein Hund")]))
    specs = [{"kind": "rows", "path": str(rows)}, {"kind": "cldr", "languages": ["de"]}]

    groups = sap_cached.running_text(specs)

    # English texts say themselves; the others say what their English side says; the
    # CLDR names are labels that no user indexes as running text.
    assert groups == [{"a cat": "a cat", "a dog": "a dog"},
                      {"eine Katze": "a cat", "ein Hund": "a dog"}]


def test_the_cap_never_counts_text_another_source_holds_out(tmp_path):
    # Tatoeba holds out its last pair ("Yes"/"Ja"); the rows file says "yes" in German too
    (tmp_path / "tatoeba.deu-eng.deu").write_text("Hallo\nJa\n", encoding="utf-8")
    (tmp_path / "tatoeba.deu-eng.eng").write_text("Hello\nYes\n", encoding="utf-8")
    rows = tmp_path / "pairs.jsonl"
    rows.write_text("".join(json.dumps({"english": e, "non_english": o}) + "\n" for e, o in
                            [("Yes", "Jawohl"), ("a dog", "ein Hund")]))
    specs = [{"kind": "tatoeba", "path": str(tmp_path), "holdout": 1, "languages": ["deu"]},
             {"kind": "rows", "path": str(rows)}]

    texts = {text for group in sap_cached.running_text(specs) for text in group}

    assert texts == {"Hello", "Hallo", "a dog", "ein Hund"}


def test_the_echo_scale_is_set_where_the_dev_pairs_rank_best(tmp_path):
    model = MilcoModel.from_pretrained(make_tiny(tmp_path / "tiny", seed=3)).eval()
    cache = RandomStates(24, model.config.m_hidden_size, seed=4)
    cache.ids = [[5 + (i + j) % 9 for j in range(len(ids))] for i, ids in enumerate(cache.ids)]
    pairs = torch.tensor([[i, 12 + i, i] for i in range(12)])
    with torch.no_grad():  # echo scores as large as this random model's pivot scores
        model.scale.fill_(40.0)
    trained = model.echo_scale()

    factor, mrr = sap_cached.calibrate_echo(model, cache, pairs, torch.tensor([0]))

    assert set(mrr) == set(sap_cached.ECHO_FACTORS) and mrr[factor] == max(mrr.values())
    assert len(set(mrr.values())) > 1  # the echo view changes the ranking: a real choice
    assert model.echo_scale() == pytest.approx(trained * factor)


def test_the_dev_dense_reference_ranks_by_cosines_of_mean_pooled_states():
    cache = RandomStates(8, 6, seed=5)
    pairs = torch.tensor([[i, 4 + i, i] for i in range(4)])

    scores = sap_cached.dense_scores(cache, pairs)

    for i in range(4):
        for j in range(4):
            query, document = cache.states[i].mean(0), cache.states[4 + j].mean(0)
            expected = float(query @ document / (query.norm() * document.norm()))
            assert scores[i, j].item() == pytest.approx(expected, abs=1e-5)
