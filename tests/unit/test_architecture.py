"""The shape of the package, held against the code so that a change cannot quietly undo it.

* the import-linter contracts of ``pyproject.toml`` (layers, pure layers, no cycle between the
  sibling packages and modules of any package) hold, as ``make lint`` checks them;
* no import cycle among ``processor``'s modules, counting every import: module level, inside
  functions and under ``TYPE_CHECKING`` (import-linter's acyclic contract works on packages;
  this one on modules);
* no module of the product is longer than 450 lines, 600 in ``processor/bench``;
* at most 8 modules at the package's top level; no ``# type: ignore`` in the product;
* every cross-reference to the package in a docstring, the README or docs/architecture.md
  (``:mod:``, ``:class:``, ``:func:``... with a full ``processor.`` path) names something that
  exists;
* the unit tests mirror the packages (``tests/unit/<package>/``), and they use the product's
  public surface: no private attribute of a product object read or set, no module global of
  the product monkeypatched.

``docs/architecture.md`` gives each package's responsibility and what it may import.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "processor"
UNIT = ROOT / "tests" / "unit"

MAX_LINES = 450
MAX_LINES_BENCH = 600
MAX_TOP_LEVEL_MODULES = 8


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package (``__init__`` files
    named by their package)."""
    found: dict[str, Path] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _imported(module: str, path: Path, known: set[str]) -> Iterator[tuple[str, int]]:
    """``(imported module, line)`` for every import of ``processor`` modules in the file,
    wherever it stands. ``from package import name`` names the submodule ``name`` when there
    is one, else the package itself."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in known:
                    yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                if not is_package:
                    base.pop()
                base = base[: len(base) - (node.level - 1)]
                source = ".".join([*base, node.module] if node.module else base)
            else:
                source = node.module or ""
            if source not in known:
                continue
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                yield (sub if sub in known else source), node.lineno


def _import_graph() -> dict[str, dict[str, int]]:
    modules = _modules()
    known = set(modules)
    return {
        name: {dep: line for dep, line in _imported(name, path, known) if dep != name}
        for name, path in modules.items()
    }


def _cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_import_linter_contracts_hold() -> None:
    linter = Path(sys.executable).parent / "lint-imports"
    if not linter.is_file():
        pytest.fail("lint-imports is not installed (the dev extra installs it)")
    done = subprocess.run(
        [str(linter), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout, done.stdout[-4000:]


def test_no_import_cycle_among_modules_counting_every_import() -> None:
    graph = _import_graph()
    cycles = _cycles(graph)
    where = [
        " -> ".join(
            f"{m} (l.{graph[m][n]})"
            for m, n in zip(c, [*c[1:], c[0]], strict=True)
            if n in graph[m]
        )
        for c in cycles
    ]
    assert not cycles, f"import cycles: {cycles}; some of their imports: {where}"


def test_the_cycle_check_finds_a_cycle_hidden_in_a_function_and_under_type_checking(
    tmp_path: Path,
) -> None:
    """The check above can fail: the same walk over two small modules that import each
    other, one of them only inside a function and under ``TYPE_CHECKING``."""
    graph = {"a": {"b": 1}, "b": {"a": 1}, "c": {"a": 1}}
    assert _cycles(graph) == [["a", "b"]]
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from processor.records import Record\n"
        "def f():\n    from processor import errors\n"
    )
    probe = tmp_path / "probe.py"
    probe.write_text(source)
    deps = dict(_imported("x", probe, {"processor.records", "processor", "processor.errors"}))
    assert set(deps) == {"processor.records", "processor.errors"}


def test_no_module_is_longer_than_its_bound() -> None:
    too_long = []
    for name, path in _modules().items():
        lines = len(path.read_text().splitlines())
        bound = MAX_LINES_BENCH if name.startswith("processor.bench") else MAX_LINES
        if lines > bound:
            too_long.append(f"{path.relative_to(ROOT)}: {lines} > {bound}")
    assert not too_long, too_long


def test_the_top_level_holds_few_modules() -> None:
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= MAX_TOP_LEVEL_MODULES, top


def test_the_product_has_no_type_ignore() -> None:
    silenced = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in _modules().values()
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if "type: ignore" in line
    ]
    assert not silenced, silenced


def test_unit_tests_mirror_the_packages() -> None:
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    folders = {p.name for p in UNIT.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert folders <= packages, f"test folders without a package: {sorted(folders - packages)}"
    assert packages <= folders, f"packages without a test folder: {sorted(packages - folders)}"
    for folder in folders:
        assert list((UNIT / folder).glob("test_*.py")), f"tests/unit/{folder} holds no test"


def _private_attributes_of_the_product() -> set[str]:
    """Names ``_x`` that the product sets on its own objects (``self._x = ...``)."""
    names: set[str] = set()
    for path in _modules().values():
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.ctx, ast.Store)
                and isinstance(node.value, ast.Name)
                and node.value.id == "self"
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
            ):
                names.add(node.attr)
    return names


def _own_names(tree: ast.AST) -> set[str]:
    """Private names a test file defines itself (on its own fakes and helpers)."""
    own: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            own.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            own.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            own.add(node.id)
    return own


def _product_module_names(tree: ast.AST) -> set[str]:
    """Local names bound to a product module by the file's imports."""
    modules = set(_modules())
    bound: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in modules:
                    bound.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                if f"{node.module}.{alias.name}" in modules:
                    bound.add(alias.asname or alias.name)
    return bound


def _unit_test_files() -> list[Path]:
    return sorted(UNIT.rglob("*.py"))


def test_unit_tests_reach_into_no_private_attribute_of_the_product() -> None:
    private = _private_attributes_of_the_product()
    reached = []
    for path in _unit_test_files():
        tree = ast.parse(path.read_text())
        own = _own_names(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in private and node.attr not in own:
                reached.append(f"{path.relative_to(ROOT)}:{node.lineno} .{node.attr}")
    assert not reached, reached


def test_unit_tests_monkeypatch_no_module_global_of_the_product() -> None:
    patched = []
    for path in _unit_test_files():
        tree = ast.parse(path.read_text())
        modules = _product_module_names(tree)
        for node in ast.walk(tree):
            if not (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("setattr", "delattr")
                and node.args
            ):
                continue
            target = node.args[0]
            if (isinstance(target, ast.Name) and target.id in modules) or (
                isinstance(target, ast.Constant)
                and isinstance(target.value, str)
                and target.value.startswith("processor.")
            ):
                patched.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not patched, patched


_REFERENCE = re.compile(r":(?:mod|class|func|meth|data|attr|exc):`~?(processor(?:\.\w+)+)`")


def _resolves(reference: str) -> bool:
    """Whether a dotted reference names a module of the package or something in one (a
    dataclass field counts as an attribute of its class)."""
    parts = reference.split(".")
    for k in range(len(parts), 0, -1):
        try:
            obj: object = importlib.import_module(".".join(parts[:k]))
        except ModuleNotFoundError:
            continue
        for name in parts[k:]:
            fields = (
                {f.name for f in dataclasses.fields(obj)}
                if dataclasses.is_dataclass(obj)
                else set()
            )
            if name in fields:
                return True
            if not hasattr(obj, name):
                return False
            obj = getattr(obj, name)
        return True
    return False


def test_cross_references_to_the_package_name_what_exists() -> None:
    texts = [*_modules().values(), ROOT / "README.md", ROOT / "docs" / "architecture.md"]
    stale = [
        f"{path.relative_to(ROOT)}:{number} {reference}"
        for path in texts
        for number, line in enumerate(path.read_text().splitlines(), 1)
        for reference in _REFERENCE.findall(line)
        if not _resolves(reference)
    ]
    assert not stale, stale
    assert _resolves("processor.engine.plan.StepPlan")
    assert not _resolves("processor.engine.plan.NoSuchThing")
