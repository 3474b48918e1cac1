"""Every milco_os module imports on its own, no two modules import each other, and no
package imports a layer above its own."""

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


# The packages of milco_os, top layer first (the README's "Architecture" picture, bottom
# up). A package imports only layers below its own; the packages of one layer (a set)
# do not import each other.
LAYERS = [
    "cli",
    {"evaluation", "serve", "training", "devcluster"},
    "pipeline",
    {"encoders", "index", "engines"},
    "vectors",
    {"models", "text"},
    "core",
]


def upward_imports(graph: grimp.ImportGraph, package: str, layers: list) -> list[str]:
    """One ``importer -> imported: chain`` line per route from a package to a layer above
    its own or to another package of its layer (deferred imports count too)."""
    found = []
    for dependency in sorted(graph.find_illegal_dependencies_for_layers(layers=layers,
                                                                        containers={package})):
        for route in sorted(dependency.routes):
            chain = [",".join(sorted(route.heads)), *route.middle, ",".join(sorted(route.tails))]
            found.append(f"{dependency.importer} -> {dependency.imported}: {' -> '.join(chain)}")
    return found


def test_the_layer_check_finds_an_upward_and_a_sideways_import(tmp_path, monkeypatch):
    files = {"__init__.py": "", "low/__init__.py": "", "high/__init__.py": "",
             "left/__init__.py": "", "right/__init__.py": "", "high/b.py": "",
             "low/a.py": "def f():\n    from tower.high import b\n",
             "left/c.py": "from tower.right import d\n", "right/d.py": "from tower.low import a\n"}
    for name, text in files.items():
        (tmp_path / "tower" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "tower" / name).write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    graph = grimp.build_graph("tower")
    assert upward_imports(graph, "tower", ["high", {"left", "right"}, "low"]) == [
        "tower.left -> tower.right: tower.left.c -> tower.right.d",
        "tower.low -> tower.high: tower.low.a -> tower.high.b",
    ]


def test_every_package_has_a_layer():
    top = {module.name for module in pkgutil.iter_modules(milco_os.__path__)}
    placed = set().union(*({layer} if isinstance(layer, str) else layer for layer in LAYERS))
    assert top == placed


def test_no_package_imports_a_layer_above_its_own():
    assert upward_imports(grimp.build_graph("milco_os"), "milco_os", LAYERS) == []


def test_the_echo_llm_family_is_imported_only_when_a_folder_needs_it(tmp_path):
    probe = ("import sys, milco_os.encoders.pytorch, milco_os.cli.search; "
             "print('milco_os.models.echo_llm' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.stdout.strip() == "False", done.stderr[-2000:]
    from milco_os.models.echo_llm import ECHO_LLM_TYPE, EchoLlmModel
    from milco_os.models.registry import model_class

    (tmp_path / "config.json").write_text(f'{{"model_type": "{ECHO_LLM_TYPE}"}}')
    assert model_class(tmp_path) is EchoLlmModel
