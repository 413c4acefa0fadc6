"""The package's layers point one way: no module imports from a layer above its own.

The package's face (``medi2i/__init__.py``: ``__version__`` and the lazy ``Predictor``) stands
above every layer, so no module inside the package imports it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import medi2i

PACKAGE = Path(medi2i.__file__).parent

LAYERS: dict[str, int] = {
    "utils": 0,
    "config": 1,
    "viz": 1,
    "data": 2,
    "models": 2,
    "metrics": 2,
    "run": 2,
    "losses": 3,
    "inference": 4,
    "training": 5,
    "evaluation": 5,
    "cli": 6,
    "__main__": 7,
}
"""Top-level module or package -> layer (docs/ARCHITECTURE.md, section 1)."""


def _top(module_path: Path) -> str:
    rel = module_path.relative_to(PACKAGE)
    return rel.parts[0].removesuffix(".py")


def _imported_tops(tree: ast.AST) -> set[str]:
    """The ``medi2i.<top>`` names a module imports anywhere (function-level imports too)."""
    tops = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "medi2i":  # `from medi2i import X`: X is the top-level name
                names = [f"medi2i.{alias.name}" for alias in node.names]
            else:
                names = [node.module]
        for name in names:
            parts = name.split(".")
            if parts[0] == "medi2i":  # a bare `import medi2i` reaches the package's face
                tops.add(parts[1] if len(parts) > 1 else "__init__")
    return tops


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p != PACKAGE / "__init__.py")


def test_every_top_level_module_has_a_layer():
    tops = {_top(p) for p in _modules()}
    assert tops == set(LAYERS), f"give these a layer: {sorted(tops - set(LAYERS))}"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down(path):
    own = _top(path)
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    wrong = []
    for top in sorted(_imported_tops(tree) - {own}):
        if top not in LAYERS:
            wrong.append(f"medi2i.{top} (no layer)")
        elif LAYERS[top] >= LAYERS[own]:
            wrong.append(f"medi2i.{top} (layer {LAYERS[top]}; {own} is layer {LAYERS[own]})")
    assert not wrong, f"{path.relative_to(PACKAGE)} imports against the layers: {wrong}"


def test_run_imports_only_utils():
    # the run directory's contract (paths, checkpoint format, logged names) sits below losses,
    # which name their parts with it: it must not grow roots of its own
    tops = set()
    for path in sorted((PACKAGE / "run").rglob("*.py")):
        tops |= _imported_tops(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
    assert tops <= {"run", "utils"}, f"medi2i.run imports {sorted(tops - {'run', 'utils'})}"


def test_the_check_sees_function_level_and_root_imports():
    tree = ast.parse(
        "from medi2i import viz, __version__\n"
        "def f():\n    from medi2i.training.state import capture_rng_state\n"
        "    import medi2i\n"
        "import medi2i.metrics.compute\n"
    )
    # the package's face (__init__, __version__) has no layer: inside the package, the version
    # comes from medi2i.utils.version
    assert _imported_tops(tree) == {"viz", "__version__", "training", "__init__", "metrics"}
