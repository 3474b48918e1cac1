"""Every milco_os module imports on its own, and no two modules import each other."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import grimp

import milco_os


def all_modules() -> list[str]:
    found = [m.name for m in pkgutil.walk_packages(milco_os.__path__, "milco_os.")]
    return sorted(["milco_os", *found])


def test_every_module_imports_in_a_fresh_interpreter():
    modules = all_modules()
    assert "milco_os.models.registry" in modules and len(modules) > 30

    def run(module: str) -> tuple[str, int, str]:
        done = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True,
                              text=True)
        return module, done.returncode, done.stderr.strip().splitlines()[-1:]

    with ThreadPoolExecutor(max_workers=2) as pool:
        failures = [r for r in pool.map(run, modules) if r[1] != 0]
    assert failures == []


def cycles(graph: grimp.ImportGraph) -> list[tuple[str, ...]]:
    """One import chain per pair of modules that reach each other (deferred imports
    inside functions count: they are imports all the same)."""
    found = []
    for importer in sorted(graph.modules):
        for imported in sorted(graph.find_modules_directly_imported_by(importer)):
            back = graph.find_shortest_chain(importer=imported, imported=importer)
            if back is not None:
                found.append((importer, *back))
    return found


def test_the_cycle_finder_finds_a_cycle(tmp_path, monkeypatch):
    package = tmp_path / "loop"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("def f():\n    from loop import b\n")
    (package / "b.py").write_text("from loop import a\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert cycles(grimp.build_graph("loop")) == [("loop.a", "loop.b", "loop.a"),
                                                 ("loop.b", "loop.a", "loop.b")]


def test_no_import_cycles_among_milco_os_modules():
    assert cycles(grimp.build_graph("milco_os")) == []


def test_the_echo_llm_family_is_imported_only_when_a_folder_needs_it(tmp_path):
    probe = ("import sys, milco_os.encoders.pytorch, milco_os.cli.search; "
             "print('milco_os.models.echo_llm' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.stdout.strip() == "False", done.stderr[-2000:]
    from milco_os.models.echo_llm import ECHO_LLM_TYPE, EchoLlmModel
    from milco_os.models.registry import model_class

    (tmp_path / "config.json").write_text(f'{{"model_type": "{ECHO_LLM_TYPE}"}}')
    assert model_class(tmp_path) is EchoLlmModel
