"""The ONNX Runtime backend: the same vectors as torch, started without torch, re-exported
when the weights change, and int8 offered only with its measured agreement."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _model_helpers import make_tiny
from click.testing import CliRunner

from milco_os.cli import main
from milco_os.core.errors import ModelLoadError
from milco_os.encoders import OnnxSparseEncoder, SparseEncoder, choose_backend, load_encoder
from milco_os.encoders.onnx import (
    GRAPHS,
    MANIFEST_NAME,
    export_dir,
    exportable,
    top10_agreement,
)
from milco_os.models import named

RELATIVE = 1e-5  # of the vector's heaviest weight
TEXTS = ["Baltimore is the greatest city", "x", "Die Katze schläft auf dem Sofa.",
         "北京是中国的首都", "a much longer text " * 12]


def assert_same_vectors(reference, other) -> None:
    """Equal term sets (up to terms lighter than the tolerance) and weights within
    ``RELATIVE`` of each vector's heaviest weight, in both views."""
    for a, b in zip(reference, other, strict=True):
        for view in ("pivot", "echo"):
            want, got = getattr(a, view).to_dict(), getattr(b, view).to_dict()
            tolerance = RELATIVE * max(want.values(), default=1.0)
            for term in set(want) | set(got):
                assert abs(want.get(term, 0.0) - got.get(term, 0.0)) <= tolerance, (view, term)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_tiny(tmp_path_factory.mktemp("onnx") / "tiny")


def test_onnx_vectors_equal_torchs_for_queries_and_padded_document_batches(tiny) -> None:
    torch_encoder = SparseEncoder.from_pretrained(tiny, device="cpu")
    onnx_encoder = load_encoder(tiny, "onnx")
    assert isinstance(onnx_encoder, OnnxSparseEncoder) and onnx_encoder.backend == "onnx"
    for kind in ("query", "document"):
        assert_same_vectors(torch_encoder.encode(TEXTS, kind=kind, batch_size=3),
                            onnx_encoder.encode(TEXTS, kind=kind, batch_size=3))
    assert (tiny / "onnx" / MANIFEST_NAME).is_file() and export_dir(tiny) == tiny / "onnx"


def test_a_current_export_loads_without_torch(tiny) -> None:
    load_encoder(tiny, "onnx")  # exported (once) by torch
    probe = ("import sys; from milco_os.encoders import load_encoder; "
             f"[v] = load_encoder({str(tiny)!r}, 'onnx').encode(['the city']); "
             "print(len(v.pivot) > 0, 'torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=300)
    assert done.stdout.split() == ["True", "False"], done.stderr[-2000:]


def test_processes_loading_one_model_at_once_export_it_once(tmp_path) -> None:
    folder = make_tiny(tmp_path / "m", seed=4)
    load = ("import sys; from milco_os.encoders import load_encoder; "
            f"[v] = load_encoder({str(folder)!r}, 'onnx').encode(['the city']); "
            "print(len(v.pivot) > 0)")
    loaders = [subprocess.Popen([sys.executable, "-c", load], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for _ in range(3)]
    results = [loader.communicate(timeout=300) for loader in loaders]
    assert [out.split() for out, _ in results] == [["True"]] * 3, [e[-1500:] for _, e in results]
    exports = sum(err.count("exporting") for _, err in results)
    assert exports == 1  # the others waited for it and loaded it


def test_changed_weights_are_exported_again(tmp_path) -> None:
    folder = make_tiny(tmp_path / "m", seed=1)
    before = load_encoder(folder, "onnx").encode(TEXTS)
    make_tiny(folder, seed=2)  # new weights in the same folder
    after = load_encoder(folder, "onnx").encode(TEXTS)
    assert_same_vectors(SparseEncoder.from_pretrained(folder, device="cpu").encode(TEXTS), after)
    assert any(a.pivot.to_dict() != b.pivot.to_dict() for a, b in zip(before, after, strict=True))


def test_a_read_only_model_folder_exports_into_the_cache(tmp_path, monkeypatch) -> None:
    import milco_os.encoders.onnx as onnx_backend

    folder = make_tiny(tmp_path / "m", seed=3)
    monkeypatch.setenv("MILCO_OS_HOME", str(tmp_path / "home"))
    # as for a user who may not write the folder (root may write any, so it is simulated)
    monkeypatch.setattr(onnx_backend.os, "access", lambda path, mode: Path(path) != folder)
    load_encoder(folder, "onnx")
    assert export_dir(folder).parent == tmp_path / "home" / "onnx"
    assert (export_dir(folder) / GRAPHS[False]).is_file() and not (folder / "onnx").exists()


def test_int8_is_offered_with_its_agreement_with_fp32(tiny, capsys) -> None:
    encoder = load_encoder(tiny, "onnx-int8")
    assert encoder.backend == "onnx-int8"
    manifest = json.loads((tiny / "onnx" / MANIFEST_NAME).read_text("utf-8"))
    agreement = manifest["int8_agreement"]
    assert 0 <= agreement["top10"] <= 1 and agreement["queries"] >= 20
    assert f"top-10 term agreement with fp32 {agreement['top10']:.3f}" in capsys.readouterr().err
    fp32 = load_encoder(tiny, "onnx").encode(TEXTS)
    assert top10_agreement(fp32, fp32) == 1.0
    assert top10_agreement(fp32, encoder.encode(TEXTS)) > 0.5


def test_auto_means_onnx_for_queries_on_the_cpu_and_torch_otherwise() -> None:
    assert choose_backend("auto", None, "query") == "onnx"
    assert choose_backend("auto", "cpu", "document") == "torch"
    assert choose_backend("auto", "cuda:0", "query") == "torch"
    with pytest.raises(ValueError, match="backend must be one of"):
        load_encoder("milco-small", "tensorrt")
    with pytest.raises(ValueError, match="runs on the CPU"):
        load_encoder("milco-small", "onnx", device="cuda")


def test_the_cli_encodes_with_either_backend_alike(tiny) -> None:
    lines = {}
    for backend in ("torch", "onnx"):
        result = CliRunner().invoke(main, ["encode", "--model", str(tiny), "--backend", backend,
                                           "--json", "Baltimore is the greatest city"])
        assert result.exit_code == 0, result.output
        lines[backend] = json.loads(result.stdout)
    assert list(lines["torch"]["pivot"])[:5] == list(lines["onnx"]["pivot"])[:5]


def test_milco_small_onnx_vectors_equal_torchs_on_the_shipped_probes() -> None:
    named.ensure_named_model("milco-small")
    probes = json.loads((named.MILCO_SMALL.data_dir / named.PROBES_NAME).read_text("utf-8"))
    texts = list(probes["texts"].values())
    reference = SparseEncoder.from_pretrained("milco-small", device="cpu")
    onnx_encoder = load_encoder("milco-small", "onnx")
    for kind in ("query", "document"):
        assert_same_vectors(reference.encode(texts, kind=kind), onnx_encoder.encode(texts,
                                                                                   kind=kind))
    vectors = onnx_encoder.encode(texts, kind="document")
    for lang, vector in zip(probes["texts"], vectors, strict=True):
        expected = [t for t, _ in probes["vectors"][lang]["pivot"]]
        assert list(vector.pivot.to_dict())[: len(expected)] == expected, lang
    assert np.isfinite([w for v in vectors for w in v.pivot.weights]).all()


def test_families_without_an_exported_graph_stay_on_torch(tiny, tmp_path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "echo-llm"}')
    assert exportable(tiny) and not exportable(tmp_path)
    with pytest.raises(ModelLoadError, match="use --backend torch"):
        load_encoder(tmp_path, "onnx")


def test_the_export_checks_itself_against_torch(tiny, monkeypatch) -> None:
    """A graph that does not give torch's vectors is refused, not used."""
    import milco_os.encoders.onnx as onnx_backend

    folder = tiny.parent / "broken"
    shutil.copytree(tiny, folder, ignore=shutil.ignore_patterns("onnx"))
    trace = onnx_backend._trace

    def trace_another_model(encoder, path):
        encoder.model.mlm_head.predictions.bias.data += 1.0  # the graph holds other weights
        trace(encoder, path)
        encoder.model.mlm_head.predictions.bias.data -= 1.0

    monkeypatch.setattr(onnx_backend, "_trace", trace_another_model)
    with pytest.raises(ModelLoadError, match="does not give torch's pivot weights"):
        load_encoder(folder, "onnx")
    assert not (folder / "onnx" / MANIFEST_NAME).exists()
