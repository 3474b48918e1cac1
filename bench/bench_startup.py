"""CLI start-up: wall time of one ``milco-os search --engine local`` query, with and without
compiled bytecode, and of ``milco-os --help`` (which must not import torch).

"without": what an install that writes no bytecode gives where
``PYTHONDONTWRITEBYTECODE`` is set (every start compiles every module imported);
simulated by pointing ``PYTHONPYCACHEPREFIX`` at an empty folder, so the compiled
files of the install are not found. "with": the install as ``./dev setup`` makes it
(``uv pip install --compile-bytecode``). Runs alternate (A B A B); medians are reported.

    python bench/bench_startup.py --model milco-small
"""

from __future__ import annotations

import argparse
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
    from milco_os.documents import build_source
    from milco_os.engines.local import LocalEngine
    from milco_os.sparse import SparseVector

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


def run(model: Path, n_docs: int, repeats: int) -> dict:
    root = Path(tempfile.mkdtemp(prefix="bench-startup-"))
    empty = Path(tempfile.mkdtemp(prefix="bench-nopyc-"))
    try:
        local_index(model, root, n_docs)
        search = [str(CLI), "search", "--engine", "local", "--local-path", str(root),
                  "--index", "startup", "--k", "10", "wo liegt der nächste bahnhof"]
        base = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONDONTWRITEBYTECODE": "1"}
        envs = {"compiled": base, "not compiled": {**base, "PYTHONPYCACHEPREFIX": str(empty)}}
        seconds: dict[str, list[float]] = {f"{c} {w}": [] for c in envs for w in ("search",
                                                                                  "help")}
        for _ in range(repeats):
            for name, env in envs.items():
                seconds[f"{name} search"].append(wall(search, env))
                seconds[f"{name} help"].append(wall([str(CLI), "--help"], env))
        help_imports_torch = imports_torch(envs["compiled"])
    finally:
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(empty, ignore_errors=True)
    medians = {name: statistics.median(s) for name, s in seconds.items()}
    return {
        "baseline": "the same command without compiled bytecode (PYTHONPYCACHEPREFIX -> empty "
                    "folder, PYTHONDONTWRITEBYTECODE=1)",
        "settings": {"model": str(model), "documents": n_docs, "repeats": repeats,
                     "command": " ".join(search[:1] + ["search", "--engine", "local", "..."])},
        "seconds": seconds, "median_seconds": medians,
        "figures": {"search_compiled_s": medians["compiled search"],
                    "search_not_compiled_s": medians["not compiled search"],
                    "search_ratio": medians["compiled search"] / medians["not compiled search"],
                    "help_compiled_s": medians["compiled help"],
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
