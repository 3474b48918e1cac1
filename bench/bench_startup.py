"""CLI start-up: wall time of one ``milco-os search --engine local`` query and of one
``milco-os encode`` per backend (torch, the baseline, vs ONNX Runtime), with and without
compiled bytecode for the default backend, ``milco-os --help`` (which must not import
torch), and where the time of one search goes (imports, model, first encode, search),
measured phase by phase in a fresh process per backend.

"not compiled": what an install that writes no bytecode gives where
``PYTHONDONTWRITEBYTECODE`` is set (every start compiles every module imported);
simulated by pointing ``PYTHONPYCACHEPREFIX`` at an empty folder, so the compiled
files of the install are not found. "compiled": the install as ``./dev setup`` makes it
(``uv pip install --compile-bytecode``). Runs alternate; medians are reported.

    python bench/bench_startup.py --model milco-small
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import save_result
from milco_corpus import encode_real

from milco_os.models.registry import resolve_model

CLI = Path(sys.executable).with_name("milco-os")


def local_index(model: Path, root: Path, n: int) -> None:
    """A local index of ``n`` real passages encoded by ``model`` (from the bench cache)."""
    from milco_os.engines.local import LocalEngine
    from milco_os.pipeline.documents import build_source
    from milco_os.vectors.sparse import SparseVector

    real = encode_real(model, n)
    engine = LocalEngine(root)
    engine.create_index("startup", meta={"model": str(model.resolve()), "views": ["pivot", "echo"],
                                         "pruning": "none"})
    docs = [(f"d{i}#0", build_source(f"d{i}", 0, SparseVector.from_dict(vector),
                                     text=real.texts[i]))
            for i, vector in enumerate(real.dicts())]
    assert not engine.bulk_index("startup", docs)


def wall(command: list[str], env: dict[str, str]) -> float:
    tick = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - tick


def imports_torch(env: dict[str, str]) -> bool:
    probe = ("import sys, runpy; sys.argv = ['milco-os', '--help']\n"
             "try:\n    runpy.run_module('milco_os.cli', run_name='__main__')\n"
             "except SystemExit:\n    pass\n"
             "print('torch' in sys.modules or 'transformers' in sys.modules, file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True,
                          text=True, check=True)
    return done.stderr.strip().splitlines()[-1] == "True"


# Phase by phase, in a fresh process: what one query costs before and after the model.
BREAKDOWN = """
import json, sys, time
from pathlib import Path
marks = [time.perf_counter()]
def lap():
    marks.append(time.perf_counter())
    return marks[-1] - marks[-2]
model, root, backend = sys.argv[1:4]
phases = {}
if backend == "torch":
    import torch, transformers
    phases["import torch + transformers"] = lap()
import milco_os.cli, milco_os.encoders
from milco_os.engines.local import LocalEngine
from milco_os.pipeline.search import Searcher
phases["import milco-os"] = lap()
encoder = milco_os.encoders.load_encoder(model, backend)
phases["load the model (" + backend + ")"] = lap()
[vector] = encoder.encode(["wo liegt der naechste bahnhof"])
phases["first encode"] = lap()
Searcher(LocalEngine(root), "startup", encoder).search_vector(vector, "", 10)
phases["search (local engine)"] = lap()
print(json.dumps(phases))
"""


def breakdown(model: Path, root: Path, backend: str, env: dict[str, str]) -> dict[str, float]:
    done = subprocess.run([sys.executable, "-c", BREAKDOWN, str(model), str(root), backend],
                          env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(model: Path, n_docs: int, repeats: int) -> dict:
    from milco_os.encoders import load_encoder

    root = Path(tempfile.mkdtemp(prefix="bench-startup-"))
    empty = Path(tempfile.mkdtemp(prefix="bench-nopyc-"))
    load_encoder(model, "onnx")  # exported once, before anything is timed
    try:
        local_index(model, root, n_docs)
        search = [str(CLI), "search", "--engine", "local", "--local-path", str(root),
                  "--index", "startup", "--k", "10", "wo liegt der nächste bahnhof"]
        encode = [str(CLI), "encode", "--model", str(model), "wo liegt der nächste bahnhof"]
        base = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONDONTWRITEBYTECODE": "1"}
        not_compiled = {**base, "PYTHONPYCACHEPREFIX": str(empty)}
        commands = {
            **{f"{what} ({backend})": (command + ["--backend", backend], base)
               for what, command in (("search --engine local", search), ("encode", encode))
               for backend in ("torch", "onnx")},
            "search --engine local (onnx, not compiled)": (search + ["--backend", "onnx"],
                                                           not_compiled),
            "help": ([str(CLI), "--help"], base),
        }
        seconds: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(repeats):
            for name, (command, env) in commands.items():
                seconds[name].append(wall(command, env))
        phases = {backend: breakdown(model, root, backend, base) for backend in ("torch", "onnx")}
        help_imports_torch = imports_torch(base)
    finally:
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(empty, ignore_errors=True)
    medians = {name: statistics.median(s) for name, s in seconds.items()}
    return {
        "baseline": "the same command on the torch backend (--backend torch)",
        "settings": {"model": str(model), "documents": n_docs, "repeats": repeats,
                     "command": " ".join(search[:1] + ["search", "--engine", "local", "..."])},
        "seconds": seconds, "median_seconds": medians, "breakdown_seconds": phases,
        "figures": {"search_onnx_s": medians["search --engine local (onnx)"],
                    "search_torch_s": medians["search --engine local (torch)"],
                    "search_onnx_over_torch": medians["search --engine local (onnx)"]
                    / medians["search --engine local (torch)"],
                    "encode_onnx_s": medians["encode (onnx)"],
                    "encode_torch_s": medians["encode (torch)"],
                    "search_onnx_not_compiled_s":
                        medians["search --engine local (onnx, not compiled)"],
                    "help_s": medians["help"],
                    "help_imports_torch": help_imports_torch},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=resolve_model, required=True,
                        help="model folder or name (milco-small)")
    parser.add_argument("--docs", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if shutil.which(str(CLI)) is None:
        raise SystemExit(f"{CLI} not found: install milco-os into this Python first")
    print(save_result("startup", run(args.model, args.docs, args.repeats)))


if __name__ == "__main__":
    main()
