"""The package layout's import rules (README "Design"), checked by walking every ``import`` in the source.

Rules:
- each subpackage imports only subpackages of a lower layer (:data:`LAYERS`): ``cfg`` is the bottom, ``cli`` the
  top, so ``inference`` never imports ``training`` and no library module imports ``cli``;
- ``cfg`` imports no torch;
- no import circles between modules (imports inside functions count too: a deferred import hides a circle, it
  does not remove it).

The checker is tested on a small synthetic package that breaks each rule, so it is known to fail when it should.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

LAYERS: dict[str, int] = {
    "yolodet.errors": -1,  # the root error type: every part may raise it, atomic writes (OutputError) included
    "yolodet.atomic": 0, "yolodet.device": 0, "yolodet._stb_image": 0,
    "yolodet.cfg": 1,
    "yolodet.data": 2, "yolodet.modeling": 2,
    "yolodet.inference": 3,
    "yolodet.evaluation": 4, "yolodet.export": 4,
    "yolodet.training": 5,
    "yolodet.cli": 6,
    "yolodet.__main__": 7, "yolodet": 7,
}
"""Layer of each top-level part of the package; a part may import only parts of strictly lower layers."""

NO_TORCH = ("yolodet.cfg",)


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, name: str) -> set[str]:
    """Every module ``path`` imports (absolute names; relative imports resolved), at any depth of the file."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import submodule`
    return found


def part_of(name: str, layers: dict[str, int]) -> str | None:
    """The longest key of ``layers`` that ``name`` is, or lies inside."""
    best = None
    for part in layers:
        if (name == part or name.startswith(part + ".")) and (best is None or len(part) > len(best)):
            best = part
    return best


def check_layout(root: Path, package: str, layers: dict[str, int], no_torch: tuple[str, ...]) -> list[str]:
    """All rule violations of the package at ``root/package``, as readable lines (empty: the layout holds)."""
    modules = {module_name(root, p): p for p in sorted((root / package).rglob("*.py"))}
    problems: list[str] = []
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        imported = imports_of(path, name)
        graph[name] = {m for m in imported if m in modules and m != name}
        own = part_of(name, layers)
        for target in sorted(imported):
            if any(target == t or target.startswith(t + ".") for t in ("torch", "torchvision")) and \
                    any(name == p or name.startswith(p + ".") for p in no_torch):
                problems.append(f"{name} imports {target}: {own} must not import torch")
            if not (target == package or target.startswith(package + ".")):
                continue
            other = part_of(target, layers)
            if other == package and target != package:
                other = None  # inside the package but in no listed part
            if own is None or other is None:
                problems.append(f"{name} imports {target}: not in the layer table")
            elif other != own and layers[other] >= layers[own] and target != package:
                problems.append(f"{name} imports {target}: {own} (layer {layers[own]}) may not import {other} "
                                f"(layer {layers[other]})")
    problems += [f"import circle: {' -> '.join(c)}" for c in _cycles(graph)]
    return problems


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One representative circle per strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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
                found.append(sorted(component) + [sorted(component)[0]])

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_yolodet_layout_holds() -> None:
    assert check_layout(ROOT, "yolodet", LAYERS, NO_TORCH) == []


def test_every_subpackage_is_in_the_layer_table() -> None:
    parts = {f"yolodet.{p.name}" for p in (ROOT / "yolodet").iterdir() if (p / "__init__.py").is_file()}
    parts |= {f"yolodet.{p.stem}" for p in (ROOT / "yolodet").glob("*.py") if p.stem != "__init__"}
    assert sorted(p for p in parts if part_of(p, LAYERS) in (None, "yolodet")) == []


def test_modules_stay_small() -> None:
    """STYLE: aim under 400 lines a module."""
    big = {str(p.relative_to(ROOT)): n for p in (ROOT / "yolodet").rglob("*.py")
           if (n := len(p.read_text().splitlines())) > 400}
    assert big == {}


# -- the checker itself fails on broken layouts ----------------------------------------------------------------
def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


_TOY_LAYERS = {"toy.cfg": 1, "toy.inference": 3, "toy.training": 5, "toy.cli": 6, "toy": 7}
_TOY_OK = {"toy/__init__.py": "", "toy/cfg/__init__.py": "import os\n", "toy/inference/__init__.py": "",
           "toy/inference/a.py": "from toy.cfg import x\n", "toy/training/__init__.py": "",
           "toy/training/t.py": "from toy.inference import a\n", "toy/cli/__init__.py": "from toy.training import t\n"}


@pytest.mark.parametrize("broken, expected", [
    ({}, None),
    ({"toy/inference/b.py": "def f():\n    from toy.training import t\n"},
     "toy.inference (layer 3) may not import toy.training"),
    ({"toy/training/u.py": "from ..cli import main\n"}, "toy.training (layer 5) may not import toy.cli"),
    ({"toy/cfg/p.py": "import torch.nn\n"}, "toy.cfg must not import torch"),
    ({"toy/inference/b.py": "from toy.inference import c\n", "toy/inference/c.py": "import toy.inference.b\n"},
     "import circle: toy.inference.b -> toy.inference.c -> toy.inference.b"),
    ({"toy/extra/__init__.py": ""}, None),
    ({"toy/inference/d.py": "from toy.extra import y\n"},
     "toy.inference.d imports toy.extra: not in the layer table"),
])
def test_checker_catches_each_broken_rule(tmp_path: Path, broken: dict[str, str], expected: str | None) -> None:
    _write(tmp_path, {**_TOY_OK, **broken})
    problems = check_layout(tmp_path, "toy", _TOY_LAYERS, ("toy.cfg",))
    if expected is None:
        assert problems == []
    else:
        assert any(expected in p for p in problems), problems
