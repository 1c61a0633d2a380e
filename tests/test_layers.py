"""The architecture stays true: every import inside the package points down the stack (README, docs/CONTRACTS.md),
and functions stay short.

Each module's imports, including those inside functions, are read from its source; an import of a higher layer, of
napari or Qt below the napari layer, or of another module's private name fails the test, naming the line.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "napari_lidnet"

#: top to bottom; a module may import its own layer and the layers below it
STACK: tuple[tuple[str, ...], ...] = (
    ("_widgets", "_reader", "_writer", "_sample_data", "demo"),  # napari and Qt live only here
    ("layer_data", "findings"),  # CTVolume and boxes <-> napari layer data; the findings table (plain numpy)
    ("cli",),
    ("batch",),
    ("_training",),
    ("inference", "strength"),  # strength: how much of the noise the denoiser removes
    ("models",),
    ("metrics",),
    ("datasets",),  # archives and manifests that may simulate low dose
    ("sim",),
    ("io",),
    ("__init__",),  # the package itself: its version
)
RANK = {part: len(STACK) - i for i, parts in enumerate(STACK) for part in parts}
GUI_PACKAGES = ("napari", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "magicgui", "superqt", "vispy")


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """(line, absolute module, imported names) for every import statement of one file."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.extend((node.lineno, alias.name, []) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            out.append((node.lineno, base, [alias.name for alias in node.names]))
    return out


def _sources() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def _violations(path: Path) -> list[str]:
    me = _module_name(path)
    my_layer = _layer(me)
    where = path.relative_to(PACKAGE.parent)
    found = []
    for line, target, names in _imports(path):
        root = target.split(".")[0]
        if root in GUI_PACKAGES and RANK[my_layer] < RANK["_widgets"]:
            found.append(f"{where}:{line} imports {target}: napari/Qt only in {', '.join(STACK[0])}")
        if root != "napari_lidnet":
            continue
        layer = _layer(target)
        if layer not in RANK:
            found.append(f"{where}:{line} imports {target}, which is in no layer of STACK")
        elif RANK[layer] > RANK[my_layer]:
            found.append(f"{where}:{line} imports {target} ({layer}) from below it ({my_layer})")
        private = [n for n in names if n.startswith("_") and not n.startswith("__")]
        if private and target != me:
            found.append(f"{where}:{line} imports private {private} from {target}")
    return found


MAX_FUNCTION_LINES = 60


def test_no_function_longer_than_a_screen() -> None:
    """Functions stay readable without scrolling: at most MAX_FUNCTION_LINES lines, docstring included."""
    long = [
        f"{p.relative_to(PACKAGE.parent)}:{n.lineno} {n.name} ({n.end_lineno - n.lineno + 1} lines)"
        for p in _sources()
        for n in ast.walk(ast.parse(p.read_text()))
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long, "split these into named parts:\n" + "\n".join(long)


def test_every_module_has_a_layer() -> None:
    missing = sorted({_layer(_module_name(p)) for p in _sources()} - set(RANK))
    assert not missing, f"modules outside the stack: {missing}: add them to STACK (and to the README's diagram)"


def test_imports_point_down_the_stack() -> None:
    problems = [v for p in _sources() for v in _violations(p)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("from napari_lidnet.inference import denoise\n", "(inference) from below it (io)"),
        ("from ..sim.lowdose import simulate_low_dose\n", "(sim) from below it (io)"),
        ("def f():\n    from napari_lidnet._widgets import finetune\n", "(_widgets) from below it (io)"),
        ("from napari_lidnet.io.dicom_read import _decode\n", "imports private ['_decode']"),
        ("import qtpy.QtWidgets\n", "napari/Qt only in"),
    ],
)
def test_the_checker_catches_upward_and_private_imports(tmp_path: Path, source: str, expected: str) -> None:
    """The rule fails on what it must catch (a module of the io layer written into a copy of the tree)."""
    global PACKAGE
    fake = tmp_path / "napari_lidnet"
    (fake / "io").mkdir(parents=True)
    (fake / "io" / "probe.py").write_text(source)
    saved, PACKAGE = PACKAGE, fake
    try:
        problems = _violations(fake / "io" / "probe.py")
    finally:
        PACKAGE = saved
    assert any(expected in p for p in problems), problems
