"""Training end to end on a tiny random MILCO and a tiny random English teacher (CPU, seconds).

The student is ``presets.init_model("tiny")`` (the real XLM-R / BERT vocabularies when
../shared is present, small built-in ones otherwise); the teacher is a 1-layer random
BertForMaskedLM over the student's English vocabulary, built here.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from transformers import BertConfig, BertForMaskedLM

from milco_os.encoders import SparseEncoder
from milco_os.models.milco import MilcoModel
from milco_os.models.presets import init_model
from milco_os.training.build import build_stage
from milco_os.training.config import ConfigError, TrainConfig
from milco_os.training.stages import AlignmentStage, ContrastiveStage
from milco_os.training.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
SUBJECTS = ["cat", "city", "river", "house", "world", "music", "train", "garden"]
GERMAN = {"cat": "Katze", "city": "Stadt", "river": "Fluss", "house": "Haus", "world": "Welt",
          "music": "Musik", "train": "Zug", "garden": "Garten"}
# Words of both the real and the built-in fallback vocabularies.
TOPICS = ["city", "world", "news", "people", "year", "music", "house", "time"]


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny student folder, a tiny teacher folder, parallel and distillation JSONL."""
    root = tmp_path_factory.mktemp("training-assets")
    student = init_model("tiny", root / "student", seed=0)
    teacher = root / "teacher"
    en_vocab = MilcoModel.from_pretrained(student).config.en_vocab_size
    torch.manual_seed(0)
    BertForMaskedLM(BertConfig(vocab_size=en_vocab, hidden_size=16, num_hidden_layers=1,
                               num_attention_heads=2, intermediate_size=32)
                    ).save_pretrained(teacher)
    for f in (student / "en_tokenizer").iterdir():
        shutil.copyfile(f, teacher / f.name)
    parallel = root / "parallel.jsonl"
    with parallel.open("w") as out:
        for i in range(48):
            a, b = SUBJECTS[i % 8], SUBJECTS[(i * 3 + 1) % 8]
            out.write(json.dumps({"english": f"the {a} and the {b}",
                                  "non_english": f"die {GERMAN[a]} und der {GERMAN[b]}"}) + "\n")
    distillation = root / "distillation.jsonl"
    with distillation.open("w") as out:
        for word in TOPICS:
            negatives = [f"the {other} is new" for other in TOPICS if other != word]
            out.write(json.dumps({"query": f"the {word}", "pos": [f"the {word} is new"],
                                  "pos_scores": [10.0], "neg": negatives,
                                  "neg_scores": [0.0] * len(negatives)}) + "\n")
    return {"student": student, "teacher": teacher, "parallel": parallel,
            "distillation": distillation}


def make_config(assets: dict[str, Path], out: Path, **values) -> TrainConfig:
    base = {
        "stage": "sap", "output_dir": str(out), "model": {"path": str(assets["student"])},
        "teacher": str(assets["teacher"]),
        "data": {"parallel": [{"kind": "rows", "path": str(assets["parallel"])}],
                 "distillation": str(assets["distillation"])},
        "batch_size": 4, "max_length": 24, "query_max_length": 16, "doc_max_length": 24,
        "group_size": 4, "lr": 3e-3, "warmup_steps": 2, "max_steps": 30, "bf16": False,
        "log_every": 1000, "seed": 7,
    }
    base.update(values)
    return TrainConfig.from_dict(base)


def mean_loss(stage, key: str, n_batches: int = 4) -> float:
    """The stage's ``key`` metric over fixed batches (epoch 0's groups), in eval mode."""
    stage.model.eval()
    stage.set_epoch(0)
    rows = [stage.dataset[i] for i in range(n_batches * 4)]
    values = []
    with torch.no_grad():
        for start in range(0, len(rows), 4):
            _, metrics = stage.loss(stage.model, stage.collate(rows[start:start + 4]))
            values.append(metrics[key])
    return float(np.mean(values))


def test_sap_reduces_the_smse_loss_by_a_fifth_with_a_frozen_eval_teacher(assets,
                                                                          tmp_path) -> None:
    stage = build_stage(make_config(assets, tmp_path))
    assert isinstance(stage, AlignmentStage)
    before = mean_loss(stage, "loss")
    echo_before = stage.model.echo.weight.detach().clone()
    teacher_before = {k: v.clone() for k, v in stage.teacher.state_dict().items()}
    result = Trainer(stage.cfg, stage).train()
    assert [r["step"] for r in result.history] == list(range(1, 31))
    assert stage.model.training  # the student trained in train mode...
    assert not any(m.training for m in stage.teacher.modules())  # ...the teacher in eval mode
    assert not any(p.requires_grad for p in stage.teacher.parameters())
    assert all(torch.equal(v, stage.teacher.state_dict()[k]) for k, v in teacher_before.items())
    assert torch.equal(stage.model.echo.weight, echo_before), "SAP must not train the echo head"
    after = mean_loss(stage, "loss")
    assert after <= 0.8 * before, (before, after)


def test_frozen_encoder_with_cache_trains_connector_and_head_only(assets, tmp_path) -> None:
    cfg = make_config(assets, tmp_path, max_steps=8, freeze_encoder=True,
                      cache_encoder_states=True)
    stage = build_stage(cfg)
    encoder_before = {k: v.clone() for k, v in stage.model.m_model.state_dict().items()}
    head_before = stage.model.projector.weight.detach().clone()
    Trainer(cfg, stage).train()
    assert all(torch.equal(v, stage.model.m_model.state_dict()[k])
               for k, v in encoder_before.items())
    assert not torch.equal(stage.model.projector.weight, head_before)
    assert stage.cache.hits > 0  # the 48 pairs repeat their 8 subjects: repeated texts hit
    # cached states equal a fresh frozen-encoder pass
    batch = stage.collate([stage.dataset[i] for i in range(4)])["english"]
    stage.model.eval()
    with torch.no_grad():
        cached = stage.student(stage.model, batch).pivot_logits
        direct = stage.model(batch["input_ids"], batch["attention_mask"]).pivot_logits
    torch.testing.assert_close(cached, direct, rtol=1e-5, atol=1e-5)


def test_sct_reduces_the_kl_loss_with_a_fresh_echo_head(assets, tmp_path) -> None:
    cfg = make_config(assets, tmp_path, stage="sct", max_steps=16)
    stage = build_stage(cfg)
    assert isinstance(stage, ContrastiveStage)
    assert stage.model.echo is not None and stage.model.scale.item() == 1.0
    assert stage.model.config.echo
    before = mean_loss(stage, "kl", n_batches=2)
    Trainer(cfg, stage).train()
    after = mean_loss(stage, "kl", n_batches=2)
    assert after < 0.9 * before, (before, after)


def test_sct_with_frozen_encoder_and_pivot_trains_the_echo_head_only(assets, tmp_path) -> None:
    cfg = make_config(assets, tmp_path, stage="sct", max_steps=16, freeze_encoder=True,
                      cache_encoder_states=True, freeze_pivot=True)
    stage = build_stage(cfg)
    frozen = {k: v.clone() for k, v in stage.model.state_dict().items()
              if not k.startswith(("echo.", "scale"))}
    echo_before = stage.model.echo.weight.detach().clone()
    before = mean_loss(stage, "kl", n_batches=2)
    Trainer(cfg, stage).train()
    assert all(torch.equal(v, stage.model.state_dict()[k]) for k, v in frozen.items())
    assert not torch.equal(stage.model.echo.weight, echo_before)
    assert stage.cache.hits > 0
    assert mean_loss(stage, "kl", n_batches=2) < before


def test_echo_lr_puts_the_echo_head_in_its_own_group_at_that_rate(assets, tmp_path) -> None:
    cfg = make_config(assets, tmp_path, stage="sct", lr=1e-4, echo_lr=5e-3, warmup_steps=0,
                      max_steps=4)
    stage = build_stage(cfg)
    trainer = Trainer(cfg, stage)
    pivot, echo = trainer.optimizer.param_groups
    assert {id(p) for p in echo["params"]} == {id(p) for p in stage.model.echo_parameters()}
    assert len(pivot["params"]) + len(echo["params"]) == sum(
        p.requires_grad for p in stage.model.parameters())
    assert (pivot["lr"], echo["lr"]) == pytest.approx((1e-4, 5e-3))
    head_before = stage.model.echo.weight.detach().clone()
    trainer.train()
    assert not torch.equal(stage.model.echo.weight, head_before)
    assert trainer.scheduler.base_lrs == pytest.approx([1e-4, 5e-3])  # one schedule, both


def test_echo_lr_without_an_echo_head_is_refused(assets, tmp_path) -> None:
    cfg = make_config(assets, tmp_path, stage="sap", echo_lr=1e-3, max_steps=1)
    with pytest.raises(ConfigError, match="no trainable echo head"):
        Trainer(cfg, build_stage(cfg))


def test_freezing_parts_needs_a_milco_student(assets, tmp_path) -> None:
    cfg = make_config(assets, tmp_path, stage="sct", model={"path": str(assets["teacher"])},
                      freeze_pivot=True)
    with pytest.raises(ConfigError, match="need a MILCO student"):
        build_stage(cfg)


def test_sct_info_nce_variant_runs_and_logs(assets, tmp_path) -> None:
    cfg = make_config(assets, tmp_path, stage="sct", loss="info_nce",
                      sparse_reg="flops", max_steps=2)
    result = Trainer(cfg, build_stage(cfg)).train()
    assert {"info_nce", "reg_q", "reg_d", "loss"} <= set(result.history[-1])
    assert all(np.isfinite(r["loss"]) for r in result.history)


def test_checkpoint_loads_in_sparse_encoder_and_cli_with_the_same_vectors(assets,
                                                                           tmp_path) -> None:
    cfg = make_config(assets, tmp_path, stage="sct", max_steps=3)
    stage = build_stage(cfg)
    result = Trainer(cfg, stage).train()
    checkpoint = result.last_checkpoint
    assert checkpoint == tmp_path / "checkpoint-3" and (checkpoint / "config.json").is_file()
    texts = ["the cat and the river", "die Katze und der Fluss"]
    loaded = SparseEncoder.from_pretrained(checkpoint, device="cpu")
    in_memory = SparseEncoder(stage.model, loaded.tokenizer, loaded.pivot_vocab,
                              loaded.echo_vocab, torch.device("cpu"))
    # The same math on the same weights, but two copies of them (trained in memory, loaded
    # from the checkpoint) may take different BLAS blockings: equal to fp32 rounding only.
    for a, b in zip(loaded.encode(texts), in_memory.encode(texts), strict=True):
        for view in ("pivot", "echo"):
            assert len(a.view(view)) > 0
            assert_same_features(a.view(view).to_dict(), b.view(view).to_dict())
    from milco_os.cli import main

    run = CliRunner().invoke(main, ["encode", "--model", str(checkpoint), "--json", texts[0]])
    assert run.exit_code == 0, run.output
    assert_same_features(json.loads(run.output.strip().splitlines()[-1])["pivot"],
                         loaded.encode(texts[:1])[0].pivot.to_dict())


def assert_same_features(got: dict[str, float], want: dict[str, float]) -> None:
    """The same terms with weights equal to within fp32 rounding (a relative 1e-5)."""
    assert set(got) == set(want)
    for term, weight in want.items():
        assert got[term] == pytest.approx(weight, rel=1e-5, abs=1e-6), term


@pytest.mark.parametrize("stage_name", ["sap", "sct"])
def test_resume_continues_at_the_right_step_with_the_same_losses(assets, tmp_path,
                                                                 stage_name) -> None:
    values = {"stage": stage_name, "max_steps": 6, "save_every": 3}
    full_cfg = make_config(assets, tmp_path / "full", **values)
    full = Trainer(full_cfg, build_stage(full_cfg)).train()
    resumed_cfg = make_config(assets, tmp_path / "resumed", **values)
    resumed_stage = build_stage(resumed_cfg)
    resumed = Trainer(resumed_cfg, resumed_stage).train(resume=tmp_path / "full" / "checkpoint-3")
    assert [r["step"] for r in resumed.history] == [4, 5, 6]
    for a, b in zip(full.history[3:], resumed.history, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5), (a, b)
        assert a["lr"] == pytest.approx(b["lr"])
    final = MilcoModel.from_pretrained(tmp_path / "full" / "checkpoint-6").state_dict()
    for key, value in resumed_stage.model.state_dict().items():
        torch.testing.assert_close(value, final[key], rtol=1e-5, atol=1e-6)


def test_training_script_runs_with_plain_python(assets, tmp_path) -> None:
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump(make_config(assets, tmp_path / "run", max_steps=2,
                                                 log_every=1, save_every=1).to_dict()))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, str(REPO / "training" / "sap.py"), "--config",
                           str(config), "save_total_limit=1"], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    logged = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().split(
        "\n") if line]
    assert [r["step"] for r in logged] == [1, 2]
    assert (tmp_path / "run" / "checkpoint-2" / "trainer_state" / "state.json").is_file()
    assert not (tmp_path / "run" / "checkpoint-1").exists()  # save_total_limit=1


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None,
                    reason="DeepSpeed is not installed (optional: pip install milco-os[train])")
def test_deepspeed_zero2_optimizer_step_on_cpu(assets, tmp_path) -> None:
    config = tmp_path / "cfg.yaml"
    config.write_text(yaml.safe_dump(make_config(assets, tmp_path / "run", max_steps=1,
                                                 warmup_steps=0, log_every=1).to_dict()))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "DS_ACCELERATOR": "cpu",
           "MASTER_PORT": str(29500 + os.getpid() % 1000)}
    done = subprocess.run([sys.executable, str(REPO / "training" / "sap.py"), "--config",
                           str(config), "--deepspeed", str(REPO / "training/ds/zero2.json")],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    checkpoint = tmp_path / "run" / "checkpoint-1"
    assert (checkpoint / "trainer_state" / "deepspeed").is_dir()
    # the released-layout weights are DeepSpeed's fp32 master weights after one step
    trained = MilcoModel.from_pretrained(checkpoint)
    start = MilcoModel.from_pretrained(assets["student"])
    assert not torch.equal(trained.projector.weight, start.projector.weight)
    assert torch.equal(trained.m_model.embeddings.word_embeddings.weight.isfinite(),
                       torch.ones_like(start.m_model.embeddings.word_embeddings.weight,
                                       dtype=torch.bool))
