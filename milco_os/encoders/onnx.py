"""The ONNX Runtime backend: the model's graph exported once, run without torch.

:func:`export` traces a loaded model (tokens -> ``log1p(relu(max-pooled pivot logits))``
and per-position echo weights, the math of :mod:`~milco_os.encoders.pytorch`) into
``model.onnx``, optionally also ``model-int8.onnx`` (dynamic int8 quantisation of its
matrix products), and writes ``export.json`` last: what the graphs were made from
(the weights file's size and time, the tokenizers), and for int8 its top-10 agreement
with fp32. The files go into ``<model folder>/onnx/`` (for a named model, its cache
folder), or under ``$MILCO_OS_HOME/onnx/`` when the model folder is not writable.

:meth:`OnnxSparseEncoder.from_pretrained` loads a current export without importing
torch; a missing or stale one (the weights changed) is exported first, which needs
torch and the model once.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from milco_os.core.errors import ModelLoadError
from milco_os.encoders.base import TextEncoder, Vocabulary, load_tokenizer
from milco_os.models.locations import cache_root, model_dir

EXPORT_VERSION = 1  # bump when the exported graph's math or inputs change
OPSET = 17
MANIFEST_NAME = "export.json"
EXPORTED_FAMILIES = ("milco", "bert")  # config.json model_type
CHECK_TOLERANCE = 1e-4  # of a vector's heaviest weight: the export's self-check
GRAPHS = {False: "model.onnx", True: "model-int8.onnx"}
# Rows x positions per run: the graph holds [rows, positions, pivot vocabulary] logits at
# once (no chunked max as in torch), ~500 MB in fp32 for 30,522 English pieces.
MAX_POSITIONS_PER_RUN = 4096
# Queries the int8 graph's agreement with fp32 is measured on, when the model folder has
# no probes.json: short questions in the languages milco-small was evaluated on.
AGREEMENT_QUERIES = (
    "What is the capital of France?", "How do vaccines train the immune system?",
    "Wie hoch ist der Eiffelturm?", "Welche Tiere leben im Regenwald?",
    "¿Cuándo empezó la revolución industrial?", "¿Qué comen los pingüinos?",
    "Quelle est la population de Tokyo ?", "Pourquoi le ciel est-il bleu ?",
    "北京是中国的首都吗？", "如何学习编程？", "地震はなぜ起こるのですか？",
    "서울의 인구는 얼마입니까?", "Какая самая длинная река в России?",
    "ما هي عاصمة مصر؟", "भारत की राजधानी क्या है?", "Türkiye'nin başkenti neresidir?",
    "Thủ đô của Việt Nam là gì?", "เมืองหลวงของประเทศไทยคืออะไร",
    "پایتخت ایران کجاست؟", "Who wrote the theory of relativity?",
)


def exportable(model: str | os.PathLike[str]) -> bool:
    """Whether ``model`` is a local (or assembled named) folder of a family whose graph
    milco-os exports and checks: MILCO and English SPLADE, not decoder-only echo-LLMs."""
    folder = Path(model).expanduser()
    config = (folder if folder.is_dir() else model_dir(str(model))) / "config.json"
    try:
        return json.loads(config.read_text(encoding="utf-8")).get("model_type") in \
            EXPORTED_FAMILIES
    except (OSError, ValueError, AttributeError):
        return False


def export_dir(model: str | os.PathLike[str]) -> Path:
    """Where the ONNX export of ``model`` (a folder, a named model or a hub id) lives."""
    folder = Path(model).expanduser()
    if not folder.is_dir():
        folder = model_dir(str(model))
    if folder.is_dir() and os.access(folder, os.W_OK):
        return folder / "onnx"
    key = hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:16]
    return cache_root() / "onnx" / f"{folder.name}-{key}"


def _fingerprint(path: Path) -> dict[str, Any]:
    stat = path.stat()
    return {"path": str(path.resolve()), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _current(folder: Path, quantized: bool) -> dict[str, Any] | None:
    """The export's manifest if it holds the wanted graph and nothing it was made from
    changed since; else None."""
    try:
        manifest = json.loads((folder / MANIFEST_NAME).read_text(encoding="utf-8"))
        sources = [Path(s["path"]) for s in manifest["sources"]]
        if manifest["version"] != EXPORT_VERSION or \
                [_fingerprint(p) for p in sources] != manifest["sources"]:
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if quantized and "int8_agreement" not in manifest:
        return None
    return manifest if (folder / GRAPHS[quantized]).is_file() else None


class OnnxSparseEncoder(TextEncoder):
    """Encode texts with the model's exported ONNX graph on ONNX Runtime (CPU).

    One inference session per thread count (ONNX Runtime fixes it per session), made
    on first use: queries run on the query thread count, batches on the batch count.
    """

    def __init__(self, graph: Path, tokenizer, pivot_vocab: Vocabulary, echo_vocab: Vocabulary,
                 max_positions: int, echo_ignored_ids: Sequence[int] = (),
                 agreement: dict[str, Any] | None = None) -> None:
        super().__init__(tokenizer, pivot_vocab, echo_vocab, max_positions, echo_ignored_ids)
        self.graph = graph
        self.backend = "onnx-int8" if graph.name == GRAPHS[True] else "onnx"
        self.agreement = agreement  # int8 only: its top-10 agreement with fp32
        self._sessions: dict[int, Any] = {}
        self._session: Any = None

    @classmethod
    def from_pretrained(cls, model: str | os.PathLike[str], quantized: bool = False
                        ) -> OnnxSparseEncoder:
        """The encoder of ``model``'s ONNX export (made first if missing or stale)."""
        folder = export_dir(model)
        manifest = _current(folder, quantized)
        if manifest is None:
            with _exporting(folder):  # another process may have made it meanwhile
                manifest = _current(folder, quantized)
                if manifest is None:
                    manifest = _current(folder, False) or export(model, folder)
                    if quantized:
                        manifest = add_int8(folder, manifest)
        encoder = _from_manifest(folder, manifest, quantized)
        if quantized:
            agreement = encoder.agreement
            print(f"int8 ONNX graph of {model}: top-10 term agreement with fp32 "
                  f"{agreement['top10']:.3f} over {agreement['queries']} queries",
                  file=sys.stderr)
        return encoder

    def with_graph(self, quantized: bool) -> OnnxSparseEncoder:
        """This encoder on the fp32 or the int8 graph of the same export."""
        return OnnxSparseEncoder(self.graph.with_name(GRAPHS[quantized]), self.tokenizer,
                                 self.pivot_vocab, self.echo_vocab, self.max_positions,
                                 self.echo_ignored)

    def _session_for(self, threads: int) -> Any:
        session = self._sessions.get(threads)
        if session is None:
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            session = self._sessions[threads] = ort.InferenceSession(
                str(self.graph), options, providers=["CPUExecutionProvider"])
        return session

    @contextlib.contextmanager
    def running_on(self, threads: int) -> Iterator[None]:
        before, self._session = self._session, self._session_for(threads)
        try:
            yield
        finally:
            self._session = before

    def forward(self, input_ids: np.ndarray, mask: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray | None]:
        session = self._session or self._session_for(1)
        rows = max(1, MAX_POSITIONS_PER_RUN // input_ids.shape[1])
        outputs = [session.run(None, {"input_ids": input_ids[s : s + rows],
                                      "attention_mask": mask[s : s + rows]})
                   for s in range(0, len(input_ids), rows)]
        pivot = np.concatenate([o[0] for o in outputs])
        echo = np.concatenate([o[1] for o in outputs]) if len(outputs[0]) > 1 else None
        return pivot, echo


@contextlib.contextmanager
def _exporting(folder: Path) -> Iterator[None]:
    """Hold ``folder``'s export lock: processes that load one model at once (the workers of
    a server, an ingest beside a search) export it once, not over each other's files."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _from_manifest(folder: Path, manifest: dict[str, Any], quantized: bool
                   ) -> OnnxSparseEncoder:
    tokenizers = manifest["tokenizers"]
    tokenizer = load_tokenizer(Path(tokenizers["m"]), "input (multilingual)")
    en = tokenizer if tokenizers["en"] == tokenizers["m"] else load_tokenizer(
        Path(tokenizers["en"]), "English (pivot)")
    return OnnxSparseEncoder(folder / GRAPHS[quantized], tokenizer, Vocabulary.from_tokenizer(en),
                             Vocabulary.from_tokenizer(tokenizer), manifest["max_positions"],
                             manifest["echo_ignored_ids"], manifest.get("int8_agreement"))


def export(model: str | os.PathLike[str], folder: Path) -> dict[str, Any]:
    """Export ``model``'s fp32 graph into ``folder``; return the manifest written.
    Needs torch and onnx."""
    from milco_os.encoders.pytorch import SparseEncoder
    from milco_os.models.registry import resolve_model

    model_folder = resolve_model(model)
    family = json.loads((model_folder / "config.json").read_text("utf-8")).get("model_type")
    if family not in EXPORTED_FAMILIES:
        raise ModelLoadError(f"{model}: the ONNX backends run MILCO and SPLADE models, not "
                             f"{family!r} ones; use --backend torch")
    print(f"exporting {model} to ONNX in {folder} (once)", file=sys.stderr, flush=True)
    encoder = SparseEncoder.from_pretrained(model, device="cpu")
    folder.mkdir(parents=True, exist_ok=True)
    # no manifest until the new graphs are whole; the int8 one was made from the old graph
    for stale in (MANIFEST_NAME, GRAPHS[True]):
        (folder / stale).unlink(missing_ok=True)
    _trace(encoder, folder / GRAPHS[False])
    tokenizers = {role: _tokenizer_dir(encoder, role) for role in ("m", "en")}
    manifest = {
        "version": EXPORT_VERSION, "model": str(model), "opset": OPSET,
        "sources": [_fingerprint(p) for p in _sources(model_folder, tokenizers.values())],
        "tokenizers": {role: str(path) for role, path in tokenizers.items()},
        "max_positions": encoder.max_positions,
        "echo_ignored_ids": [int(i) for i in encoder.echo_ignored],
        "agreement_queries": _agreement_queries(model_folder),
    }
    _check_graph(encoder, _from_manifest(folder, manifest, quantized=False),
                 manifest["agreement_queries"])
    return _write_manifest(folder, manifest)


def _check_graph(reference: TextEncoder, exported: OnnxSparseEncoder, texts: list[str]) -> None:
    """The exported graph must give torch's vectors (batched and padded, both kinds): a
    trace that kept something shape-specific would not."""
    for kind, batch in (("query", 7), ("document", 3)):
        want, got = (e.encode(texts, kind=kind, batch_size=batch) for e in (reference, exported))
        for a, b in zip(want, got, strict=True):
            for view in ("pivot", "echo"):
                x, y = getattr(a, view).to_dict(), getattr(b, view).to_dict()
                gap = max((abs(x.get(t, 0.0) - y.get(t, 0.0)) for t in x.keys() | y.keys()),
                          default=0.0)
                if gap > CHECK_TOLERANCE * max(x.values(), default=1.0):
                    raise ModelLoadError(f"the ONNX graph of this model does not give torch's "
                                         f"{view} weights (gap {gap:.2g}); use --backend torch")


def add_int8(folder: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Quantise the fp32 graph's matrix products to int8 (dynamic) and record
    the int8 graph's top-10 agreement with fp32; return the manifest written."""
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    print(f"quantising {folder / GRAPHS[False]} to int8 (once)", file=sys.stderr, flush=True)
    tmp = folder / f"{GRAPHS[True]}.tmp"
    quiet = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)  # its advice to pre-process: not needed here
    try:
        # per output channel: .88 top-10 agreement on milco-small against .85 per tensor
        quantize_dynamic(folder / GRAPHS[False], tmp, weight_type=QuantType.QInt8,
                         op_types_to_quantize=["MatMul"], per_channel=True)
    finally:
        logging.getLogger().setLevel(quiet)
    _with_external_weights(tmp, folder / GRAPHS[True])
    queries = manifest["agreement_queries"]
    reference = _from_manifest(folder, manifest, quantized=False)
    agreement = top10_agreement(reference.encode(queries),
                                reference.with_graph(True).encode(queries))
    return _write_manifest(folder, {**manifest, "int8_agreement": {
        "top10": agreement, "queries": len(queries)}})


def _write_manifest(folder: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Written last, atomically: a folder whose manifest names a graph holds it whole."""
    tmp = folder / f"{MANIFEST_NAME}.tmp"
    tmp.write_text(json.dumps(manifest, indent=1, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, folder / MANIFEST_NAME)
    return manifest


def _tokenizer_dir(encoder: Any, role: str) -> Path:
    folder = encoder.model.tokenizer_dirs.get(role) or encoder.model.tokenizer_dirs.get("m")
    if folder is None or not (Path(folder) / "tokenizer.json").is_file():
        raise ModelLoadError(f"the ONNX backend needs the model's {role!r} tokenizer.json in a "
                             f"local folder; {folder} has none")
    return Path(folder).resolve()


def _sources(model_folder: Path, tokenizer_dirs: Iterable[Path]) -> list[Path]:
    """The files an export depends on: the weights and the tokenizers."""
    weights = [model_folder / name for name in ("model.safetensors", "pytorch_model.bin")
               if (model_folder / name).is_file()]
    return weights + sorted({folder / "tokenizer.json" for folder in tokenizer_dirs})


def _trace(encoder: Any, path: Path) -> None:
    """Trace the forward of :class:`~milco_os.encoders.pytorch.SparseEncoder` (fp32)."""
    import torch

    class Graph(torch.nn.Module):
        def __init__(self, model: torch.nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            hidden = self.model.encode_states(input_ids, attention_mask)
            pivot = torch.log1p(torch.relu(self.model.pivot_from_states(hidden,
                                                                         attention_mask)))
            echo = self.model.echo_from_states(hidden, attention_mask)
            return (pivot,) if echo is None else (pivot, echo)

    # Padding in the example: the trace keeps the masking branch that padded batches take.
    ids = torch.tensor([[encoder.pad_id + 5, 7, 8, 9], [encoder.pad_id + 5, 7, 0, 0]])
    ids[1, 2:] = encoder.pad_id
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    outputs = ["pivot"] + (["echo"] if encoder.model.has_echo else [])
    axes = {"input_ids": {0: "batch", 1: "length"}, "attention_mask": {0: "batch", 1: "length"},
            "pivot": {0: "batch"}, "echo": {0: "batch", 1: "length"}}
    tmp = path.with_suffix(".onnx.tmp")
    with torch.inference_mode(False), torch.no_grad(), _quiet():
        # eval() on the wrapper too: the exporter restores the wrapper's mode afterwards,
        # recursively, and a new module is in training mode (dropout on)
        torch.onnx.export(Graph(encoder.model.float()).eval(), (ids, mask), str(tmp),
                          input_names=["input_ids", "attention_mask"], output_names=outputs,
                          dynamic_axes={k: v for k, v in axes.items()
                                        if k in ["input_ids", "attention_mask", *outputs]},
                          opset_version=OPSET, dynamo=False)
    _with_external_weights(tmp, path)


def _with_external_weights(source: Path, path: Path) -> None:
    """Save ``source`` as ``path`` with its weights in ``path.data``: ONNX Runtime then
    memory-maps them, so a session starts in ~0.1 s instead of parsing ~0.4 GB."""
    import onnx

    graph = onnx.load(str(source))
    onnx.save_model(graph, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=f"{path.name}.data", size_threshold=1024)
    source.unlink()


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The tracer warns about every Python branch it evaluates once; they are expected."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _agreement_queries(model_folder: Path) -> list[str]:
    probes = model_folder / "probes.json"
    texts = list(AGREEMENT_QUERIES)
    if probes.is_file():
        texts += list(json.loads(probes.read_text(encoding="utf-8")).get("texts", {}).values())
    return texts


def top10_agreement(reference: Sequence[Any], other: Sequence[Any]) -> float:
    """Mean share of each reference vector's 10 heaviest terms (both views) that the other
    vector's 10 heaviest also hold."""
    def top(vector: Any) -> set[tuple[str, str]]:
        pairs = [(w, view, t) for view in ("pivot", "echo")
                 for t, w in getattr(vector, view).to_dict().items()]
        return {(view, t) for _, view, t in sorted(pairs, reverse=True)[:10]}

    shares = [len(top(a) & top(b)) / max(1, len(top(a)))
              for a, b in zip(reference, other, strict=True)]
    return float(np.mean(shares))
