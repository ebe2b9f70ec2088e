"""The package's architecture, checked with ``ast`` over src/medmnist_pipeline (nothing is imported).

LAYERS below is the documentation: lowest first. A module may import

- from a lower layer, anything;
- from its own layer, only inside its own unit (a subpackage's modules import each other; a top-level module is a
  unit of its own), except the shared base, whose modules may import each other. So data and models never import
  each other (models is needed without the data pipeline: ``predict`` loads model files), nor predict and ui;
- from a higher layer, nothing.

Every import counts, at module level or inside a function (lazy imports run when the function does), and for the
layers also those under ``if TYPE_CHECKING:``: a type annotation naming a higher layer is still a dependency on it.
The no-circle check leaves the TYPE_CHECKING imports out: they never run, so they cannot make an import-time circle,
and they are how a module names a type of a module that imports it (models/build.py and models/modelfile.py).

Also: every module at most MAX_LINES lines (a longer one is split by role inside its package); every package's
__init__.py has a docstring saying what the package holds and what it may import.

A new top-level module or subpackage must be placed in LAYERS (the test says so).
"""

from __future__ import annotations

import ast
from pathlib import Path

from helpers import REPO
from import_graph import cycles, graph, module_files

# lowest first: (layer, units). A unit is a top-level module or a subpackage of medmnist_pipeline; "__init__" is the
# package's own __init__.py.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("base", ("__init__", "errors", "owners", "memory", "metadata", "figures", "files", "paths", "metrics")),
    ("transforms", ("transforms",)),  # augmentation and MedMNIST-C corruptions on uint8 arrays
    ("config", ("config",)),  # params.yaml's schema; imports transforms lazily, to check transform names on load
    ("data, models", ("data", "models")),  # never each other
    ("tracking", ("tracking",)),  # the one place MLflow runs and loggers are opened
    ("training", ("training",)),
    ("tuning", ("tuning",)),
    ("evaluation", ("evaluation",)),
    ("interfaces", ("predict", "ui")),  # commands that are not stages
    ("stages", ("stages",)),  # one module per DVC stage
    ("entry point", ("cli",)),  # medmnist-pipeline: dispatches to stages, predict and ui
    ("python -m", ("__main__",)),  # runs cli
)
BASE = "base"
MAX_LINES = 400
PACKAGE = "medmnist_pipeline"
SRC = REPO / "src"


def unit_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def layering_problems(src: Path, package: str, layers=LAYERS, base: str = BASE) -> list[str]:
    """Imports that go up the layers, or across a layer outside the importer's own unit; units in no layer."""
    modules = module_files(src, package)
    layer_of = {unit: (i, name) for i, (name, units) in enumerate(layers) for unit in units}
    found = [
        f"{modules[m].relative_to(src)}: {unit_of(m)} is in no layer: place it in LAYERS"
        for m in modules
        if unit_of(m) not in layer_of
    ]
    for module, imports in graph(modules, type_checking=True).items():
        mine = unit_of(module)
        for imp in imports:
            theirs = unit_of(imp.target)
            if mine not in layer_of or theirs not in layer_of:
                continue
            (my_index, my_layer), (their_index, their_layer) = layer_of[mine], layer_of[theirs]
            where = f"{modules[module].relative_to(src)}:{imp.line}: {module} imports {imp.target}"
            if their_index > my_index:
                found.append(f"{where}: upward, from layer {my_layer!r} to {their_layer!r}")
            elif their_index == my_index and my_layer != base and mine != theirs:
                found.append(f"{where}: across layer {my_layer!r}, outside its own package")
    return sorted(found)


def cycle_problems(src: Path, package: str) -> list[str]:
    modules = module_files(src, package)
    edges = {m: {imp.target for imp in imports} for m, imports in graph(modules).items()}
    return [" -> ".join(component) for component in cycles(edges)]


def length_problems(src: Path, package: str, limit: int = MAX_LINES) -> list[str]:
    lines = {path: len(path.read_text().splitlines()) for path in module_files(src, package).values()}
    return [f"{path.relative_to(src)}: {n} lines" for path, n in sorted(lines.items()) if n > limit]


def docstring_problems(src: Path, package: str) -> list[str]:
    return [
        f"{path.relative_to(src)} has no docstring"
        for name, path in sorted(module_files(src, package).items())
        if path.name == "__init__.py" and not ast.get_docstring(ast.parse(path.read_text()))
    ]


def test_no_import_goes_up_the_layers_or_across_one() -> None:
    found = layering_problems(SRC, PACKAGE)
    assert not found, "imports against LAYERS:\n" + "\n".join(found)


def test_no_import_circle() -> None:
    found = cycle_problems(SRC, PACKAGE)
    assert not found, "modules that import each other (in a circle):\n" + "\n".join(found)


def test_every_module_is_at_most_400_lines() -> None:
    found = length_problems(SRC, PACKAGE)
    assert not found, f"modules over {MAX_LINES} lines (split them by role inside their package):\n" + "\n".join(found)


def test_every_package_init_has_a_docstring() -> None:
    found = docstring_problems(SRC, PACKAGE)
    assert not found, "\n".join(found)


def test_layers_name_each_unit_once_and_only_units_on_disk() -> None:
    units = [unit for _, layer_units in LAYERS for unit in layer_units]
    assert len(units) == len(set(units)), "a unit in two layers"
    gone = set(units) - {unit_of(m) for m in module_files(SRC, PACKAGE)}
    assert not gone, f"LAYERS names units that are not in the package (any more): {sorted(gone)}"


# The checkers on a tiny package, so that each check is seen failing.

TINY_LAYERS = (("base", ("__init__", "low", "also_low")), ("middle", ("mid", "side")), ("top", ("top",)))


def _tiny(root: Path, files: dict[str, str]) -> Path:
    src = root / "src"
    for name, text in {"__init__.py": '"""tiny."""\n', **files}.items():
        (src / "tiny" / name).parent.mkdir(parents=True, exist_ok=True)
        (src / "tiny" / name).write_text(text)
    return src


def test_the_layer_check_on_a_tiny_package(tmp_path: Path) -> None:
    src = _tiny(
        tmp_path,
        {
            "low.py": "def f():\n    from tiny.mid import a\n",  # lazy, upward
            "also_low.py": "import tiny.low\n",  # base imports base: allowed
            "mid/__init__.py": '"""mid."""\n',
            "mid/a.py": "from . import b\nfrom tiny.low import f\n",  # own package and down: allowed
            "mid/b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from tiny.top import T\n",
            "side.py": "from tiny.mid.b import x\n",  # across its layer
            "top.py": "from tiny import side, low\nclass T: ...\n",
            "stray.py": "",
        },
    )
    assert layering_problems(src, "tiny", TINY_LAYERS) == [
        "tiny/low.py:2: tiny.low imports tiny.mid.a: upward, from layer 'base' to 'middle'",
        "tiny/mid/b.py:3: tiny.mid.b imports tiny.top: upward, from layer 'middle' to 'top'",
        "tiny/side.py:1: tiny.side imports tiny.mid.b: across layer 'middle', outside its own package",
        "tiny/stray.py: stray is in no layer: place it in LAYERS",
    ]


def test_the_circle_check_on_a_tiny_package(tmp_path: Path) -> None:
    src = _tiny(
        tmp_path,
        {
            "a.py": "import tiny.b\n",
            "b.py": "def f():\n    from tiny import c\n",  # lazy imports make circles too
            "c.py": "from .a import x\n",
            "d.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from tiny.e import E\n",
            "e.py": "from tiny import d\n",  # d imports e for types only: no circle
        },
    )
    assert cycle_problems(src, "tiny") == ["tiny.a -> tiny.b -> tiny.c"]


def test_the_length_and_docstring_checks_on_a_tiny_package(tmp_path: Path) -> None:
    src = _tiny(
        tmp_path,
        {"long.py": "x = 1\n" * 401, "short.py": "x = 1\n" * 400, "sub/__init__.py": "# a comment, no docstring\n"},
    )
    assert length_problems(src, "tiny") == ["tiny/long.py: 401 lines"]
    assert docstring_problems(src, "tiny") == ["tiny/sub/__init__.py has no docstring"]
