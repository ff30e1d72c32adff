"""The package layers, enforced: every import goes down (or sideways inside a layer), never up,
and there is no import cycle between modules or between packages.

Layers, bottom to top (``LAYERS``; a module's layer is that of its longest matching prefix):

0. base: ``trainer.algo`` (pure tensor math: imports nothing of the project, not even
   ``trainer.errors``), ``trainer.errors``, ``trainer.seeding``, ``trainer.settings``, ``trainer.fileio``, and
   ``trainer.toy.world`` (the toy world's data and pixel readings)
1. ``trainer.rewards``
2. ``trainer.engine`` (config, presets, data, models, LoRA, strategies, rollout, recipe, ...)
3. ``trainer.service`` (runners, backend, client)
4. ``trainer.graph`` (node types, host, workflow executor)
5. entry points: ``trainer.run``, ``trainer.train``, ``trainer.backend``, ``trainer.schedule``,
   and the toy scripts that train models with the engine (``trainer.toy.vae``, ``trainer.toy.model``)
6. the ComfyUI glue (``nodes``, the pack's ``__init__.py``) and the benchmarks (``bench``)

Imports are read from the source with ``ast``: module-level and function-level alike; only
imports under ``if TYPE_CHECKING:`` (never executed) are left out.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tests.support import ROOT

PACK = "<pack>"  # the repository's own __init__.py (ComfyUI's entry point)

LAYERS = {
    "trainer": 0, "trainer.algo": 0, "trainer.errors": 0, "trainer.settings": 0, "trainer.fileio": 0,
    "trainer.seeding": 0,
    "trainer.toy": 0, "trainer.toy.world": 0,
    "trainer.rewards": 1,
    "trainer.engine": 2,
    "trainer.service": 3,
    "trainer.graph": 4,
    "trainer.run": 5, "trainer.train": 5, "trainer.backend": 5, "trainer.schedule": 5,
    "trainer.toy.vae": 5, "trainer.toy.model": 5,
    "nodes": 6, "bench": 6, PACK: 6,
}
PURE = ("trainer.algo",)
"""Packages that may import nothing of the project."""


def _unit(module: str) -> str:
    """The ``LAYERS`` entry a module belongs to (its longest matching prefix)."""
    parts = module.split(".")
    for i in range(len(parts), 0, -1):
        if ".".join(parts[:i]) in LAYERS:
            return ".".join(parts[:i])
    raise AssertionError(f"{module}: no layer assigned; add it to LAYERS in {__file__}")


def _modules() -> dict[str, Path]:
    files = [ROOT / "__init__.py", *sorted((ROOT / "trainer").rglob("*.py")), *sorted((ROOT / "nodes").rglob("*.py")),
             *sorted((ROOT / "bench").glob("*.py"))]
    out = {}
    for f in files:
        rel = f.relative_to(ROOT).with_suffix("").parts
        if rel[-1] == "__init__":
            rel = rel[:-1]
        out[".".join(rel) or PACK] = f
    return out


MODULES = _modules()


def _is_module(name: str) -> bool:
    return name in MODULES


def _imports(module: str, path: Path) -> set[str]:
    """The project modules ``module`` imports (absolute names)."""
    tree = ast.parse(path.read_text(), str(path))
    is_pkg = path.name == "__init__.py"
    package = "" if module == PACK else (module if is_pkg else module.rpartition(".")[0])
    found: set[str] = set()

    def visit(node):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".") if package else []
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}" if target else alias.name
                found.add(sub if _is_module(sub) else target)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    project = set()
    for name in found:
        if name.split(".")[0] not in ("trainer", "nodes", "bench"):
            continue
        while name and not _is_module(name):  # "from trainer.engine.config import X" -> the module
            name = name.rpartition(".")[0]
        if name and name != module:
            project.add(name)
    return project


GRAPH = {m: _imports(m, p) for m, p in MODULES.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            strong(v)
    return out


def test_every_module_has_a_layer_and_imports_only_downward():
    wrong = []
    for module, targets in GRAPH.items():
        layer = LAYERS[_unit(module)]
        for target in sorted(targets):
            if LAYERS[_unit(target)] > layer:
                wrong.append(f"{module} (layer {layer}) imports {target} (layer {LAYERS[_unit(target)]})")
    assert not wrong, "imports going up the layers:\n" + "\n".join(wrong)


def test_the_math_imports_nothing_of_the_project():
    for module, targets in GRAPH.items():
        if module.startswith(PURE):
            assert not {t for t in targets if not t.startswith(PURE)}, (module, targets)


def test_nothing_under_trainer_imports_the_comfyui_glue():
    for module, targets in GRAPH.items():
        if module.startswith("trainer"):
            assert not {t for t in targets if t == "nodes" or t.startswith("nodes.") or t == PACK}, (module, targets)


def test_no_import_cycle_between_modules_or_packages():
    assert _cycles(GRAPH) == []
    units: dict[str, set[str]] = {}
    for module, targets in GRAPH.items():
        units.setdefault(_unit(module), set()).update(_unit(t) for t in targets if _unit(t) != _unit(module))
    assert _cycles(units) == []


def test_the_checker_sees_function_level_imports_and_cycles():
    assert "trainer.service.runner" in GRAPH["trainer.graph.host"]  # imported inside Host.runner
    assert _cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]
    assert _unit("trainer.toy.world") == "trainer.toy.world" and _unit("trainer.toy.model") == "trainer.toy.model"


def test_no_file_cites_a_document_outside_the_repository():
    name = "REFER" "ENCE"  # split, so that this file does not match itself
    pattern = re.compile(name + r"(\.md)?\s*(,\s*)?sections?\b", re.IGNORECASE)
    files = [*MODULES.values(), ROOT / "README.md", *sorted((ROOT / "tests").rglob("*.py"))]
    cited = [f"{f.relative_to(ROOT)}:{i}" for f in files if f != Path(__file__)
             for i, line in enumerate(f.read_text().splitlines(), 1) if pattern.search(line)]
    assert not cited, cited
