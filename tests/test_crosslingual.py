"""A Chinese or Arabic query retrieves its English translation at rank 1 through each engine.

The model is a MILCO *constructed* so that its pivot view is shared across
languages: a dictionary model. Its one-layer encoder passes each token's
embedding through unchanged (attention and feed-forward outputs are zero), the
embedding of every sentence piece of an aligned sentence triple (zh, ar, en) is
the one-hot vector of that triple's "concept", and the English head maps each
concept to one English word piece of the English sentence. The test then runs
the real path: XLM-R tokenizer -> model -> pivot vectors -> escaped features
-> bulk ingest -> linear rank_feature query -> hits with the corpus's ids.
"""

from __future__ import annotations

import json
import warnings
from collections import Counter
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer

from milco_os.encoders import SparseEncoder
from milco_os.index.spec import IngestSpec
from milco_os.models.milco import MilcoConfig, MilcoModel, tokenizer_dirs_for
from milco_os.models.presets import init_model
from milco_os.pipeline.ingest import Ingestor
from milco_os.pipeline.search import Searcher
from milco_os.text.corpus import read_files

pytestmark = pytest.mark.cluster

N_PAIRS = 12
LANGS = {"zh": "newstest2019-ref.zho-CN.txt", "ar": "newstest2019-ref.arb.txt",
         "en": "newstest2019-src.eng.txt"}


def ntrex_triples(shared: Path) -> list[dict[str, str]]:
    """Aligned (zh, ar, en) NTREX-128 lines from the end of the file (never trained on)."""
    files = {lang: (shared / "data/ntrex128" / name).read_text(encoding="utf-8").splitlines()
             for lang, name in LANGS.items()}
    return [{lang: lines[-1 - i] for lang, lines in files.items()} for i in range(N_PAIRS)]


def build_dictionary_milco(triples: list[dict[str, str]], out: Path) -> dict[int, str]:
    """Write the dictionary MILCO to ``out``; return each triple's English pivot term."""
    base = init_model("tiny", out.parent / "tiny-base")
    config = MilcoConfig.from_pretrained(base)
    dim = len(triples) + 1  # concept 0 means "no English term"
    config.m_hidden_size = config.en_hidden_size = dim
    config.m_encoder_config.update(hidden_size=dim, num_attention_heads=1,
                                   intermediate_size=dim, num_hidden_layers=1)
    config.en_head_config.update(hidden_size=dim)
    m_tok = Tokenizer.from_file(str(base / "tokenizer.json"))
    en_tok = Tokenizer.from_file(str(base / "en_tokenizer" / "tokenizer.json"))

    def pieces(tok: Tokenizer, text: str) -> set[int]:
        return set(tok.encode(text, add_special_tokens=False).ids)

    m_sets = [set().union(*(pieces(m_tok, t[lang]) for lang in LANGS)) for t in triples]
    en_sets = [pieces(en_tok, t["en"]) for t in triples]
    m_counts = Counter(i for s in m_sets for i in s)
    en_counts = Counter(i for s in en_sets for i in s)
    terms = {}
    model = MilcoModel(config)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        for module in model.modules():  # LayerNorms: identity scale
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.fill_(1.0)
        embeddings = model.m_model.embeddings.word_embeddings.weight
        embeddings[:, 0] = 1.0  # every piece starts as "no concept"
        for concept, (m_ids, en_ids) in enumerate(zip(m_sets, en_sets, strict=True), 1):
            for piece in (i for i in m_ids if m_counts[i] == 1):  # pieces of this triple only
                embeddings[piece] = 0.0
                embeddings[piece, concept] = 1.0
            unique = [i for i in en_ids if en_counts[i] == 1]
            term = max(unique, key=lambda i: len(en_tok.id_to_token(i)))
            model.mlm_head.predictions.decoder.weight[term, concept] = 1.0
            terms[concept - 1] = en_tok.id_to_token(term)
        model.projector.weight.copy_(torch.eye(dim))
        model.mlm_head.predictions.transform.dense.weight.copy_(torch.eye(dim))
        model.mlm_head.predictions.bias.fill_(-1.0)  # only a concept's own term goes positive
        model.scale.fill_(1.0)  # the echo head's weights are zero: an empty source view
    model.tokenizer_dirs = tokenizer_dirs_for(base, config)
    model.save_pretrained(out)
    return terms


def test_non_english_queries_find_their_english_translation_first(shared_dir, server,
                                                                  server_index, tmp_path) -> None:
    triples = ntrex_triples(shared_dir)
    terms = build_dictionary_milco(triples, tmp_path / "dictionary-milco")
    encoder = SparseEncoder.from_pretrained(tmp_path / "dictionary-milco", device="cpu")
    corpus = tmp_path / "en.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"en-{i}", "text": t["en"], "lang": "en"},
                                         ensure_ascii=False) + "\n"
                              for i, t in enumerate(triples)), encoding="utf-8")
    engine = server.open()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no language analyzers in some distributions
        report = Ingestor(engine, IngestSpec(index=server_index, model="dictionary-milco"),
                          encoder, progress=False).run(read_files([corpus]))
    assert report.indexed == N_PAIRS
    searcher = Searcher(engine, server_index, encoder)
    for lang in ("zh", "ar"):
        results = searcher.search([t[lang] for t in triples], k=3)
        assert [hits[0].doc_id for hits in results] == [f"en-{i}" for i in range(N_PAIRS)], lang
    query = encoder.encode([triples[0]["zh"]], kind="query")[0]
    explanation = searcher.explain(searcher.search([triples[0]["zh"]])[0][0], query)
    assert terms[0] in explanation.format()  # the shared English term behind the match
