"""dvc.yaml's code deps cannot drift from the code: each stage's deps cover exactly the code its command runs.

A stage's cmd is ``medmnist-pipeline <stage>``. pyproject.toml's [project.scripts] names the module that program
runs (``medmnist_pipeline.cli``); its dispatch ``importlib.import_module(f"medmnist_pipeline.stages.{...command}")``
adds the stage's module. From these roots the import closure is read with ``ast`` (import_graph.py): module-level
and function-level (lazy) imports, the parent packages' ``__init__``; imports under ``if TYPE_CHECKING:`` left out
(they never run); in the entry module, branches ``if args.command == "<other command>":`` left out (``predict`` and
``ui`` are not run by a stage). Package data files named by a module of the closure (the MedMNIST v2 benchmark CSV,
read through importlib.resources) are part of it too.

Then for each stage: every file of the closure is covered by a dep (the file itself or a folder holding it); every
code dep (under src/) covers some file of the closure; and a folder dep holds no package and no other stage's module
that the stage never imports (``src/medmnist_pipeline`` whole would re-run download on every edit of training).
"""

from __future__ import annotations

import ast
import shutil
import tomllib
from pathlib import Path

import pytest
import yaml

from helpers import REPO
from import_graph import closure, data_files, data_files_read, dynamic_imports, module_files


def _entry(repo: Path, program: str) -> str:
    scripts = tomllib.loads((repo / "pyproject.toml").read_text())["project"]["scripts"]
    assert program in scripts, f"pyproject.toml [project.scripts] has no {program!r} (the stages' cmd runs it)"
    return scripts[program].split(":")[0]


def _dispatch_prefix(path: Path, package: str) -> str:
    """``import_module(f"<prefix>{args.command}")`` in the entry module: the prefix (the stages' package + '.')."""
    for node in ast.walk(ast.parse(path.read_text())):
        if (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
            and isinstance(node.args[0], ast.JoinedStr)
        ):
            first, *rest = node.args[0].values
            if (
                isinstance(first, ast.Constant)
                and first.value.startswith(package + ".")
                and len(rest) == 1
                and isinstance(rest[0], ast.FormattedValue)
                and getattr(rest[0].value, "attr", None) == "command"
            ):
                return first.value
    raise AssertionError(f"{path}: no import_module(f'{package}.<pkg>.{{args.command}}') dispatch found")


def stage_code(repo: Path, cmd: str) -> dict[Path, tuple[str, ...]]:
    """The files (relative to ``repo``) that ``cmd`` runs or reads as package data, each with an import chain."""
    program, _, command = cmd.partition(" ")
    entry = _entry(repo, program)
    package = entry.split(".")[0]
    modules = module_files(repo / "src", package)
    target = _dispatch_prefix(modules[entry], package) + command.strip()
    assert target in modules, f"{cmd!r} runs {target}, which has no file under src/"
    chains = closure([(entry, command.strip()), (target, None)], modules)
    files = {modules[name].relative_to(repo): chain for name, chain in chains.items()}
    data = data_files(repo / "src", package)
    for name, chain in chains.items():
        for path in data_files_read(modules[name], data):
            files[path.relative_to(repo)] = (*chain, path.name)
    return files


def _covers(dep: Path, path: Path) -> bool:
    return dep == path or dep in path.parents


def problems(dvc: dict, repo: Path) -> list[str]:
    """Everything wrong with the code deps of ``dvc`` (dvc.yaml's content) against the code under ``repo``."""
    found = []
    stages = dvc["stages"]
    programs = {spec["cmd"].split()[0] for spec in stages.values()}
    assert len(programs) == 1, f"one entry point for every stage, found {programs}"
    entry = _entry(repo, programs.pop())
    package = entry.split(".")[0]
    modules = module_files(repo / "src", package)
    stage_modules = {
        name: modules[_dispatch_prefix(modules[entry], package) + name].relative_to(repo) for name in stages
    }
    for name, spec in stages.items():
        assert spec["cmd"].split()[1:] == [name], f"{name}: cmd {spec['cmd']!r} is not '<program> {name}'"
        needed = stage_code(repo, spec["cmd"])
        deps = [Path(d) for d in spec.get("deps", []) if Path(d).parts[0] == "src"]
        for path, chain in sorted(needed.items()):
            if not any(_covers(dep, path) for dep in deps):
                found.append(f"{name}: runs {path} ({' -> '.join(chain)}) but no dep covers it")
        imported_packages = {path.parent for path in needed if path.name == "__init__.py"}
        for dep in deps:
            if not (repo / dep).exists():
                found.append(f"{name}: dep {dep} does not exist")
                continue
            if not any(_covers(dep, path) for path in needed):
                found.append(f"{name}: depends on {dep} but never imports or reads it")
                continue
            if (repo / dep).is_dir():
                unused = sorted(
                    {p.parent.relative_to(repo) for p in (repo / dep).rglob("__init__.py")} - imported_packages
                ) + sorted(p for s, p in stage_modules.items() if _covers(dep, p) and p not in needed and s != name)
                if unused:
                    found.append(
                        f"{name}: folder dep {dep} holds {', '.join(map(str, unused))}, which the stage never imports"
                    )
    return found


def _real_dvc() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())


def test_every_stage_depends_on_exactly_the_code_it_runs() -> None:
    found = problems(_real_dvc(), REPO)
    assert not found, "dvc.yaml code deps out of step with the imports:\n" + "\n".join(found)


def test_the_closure_has_the_lazy_imports_the_entry_point_and_the_package_data() -> None:
    evaluate = stage_code(REPO, "medmnist-pipeline evaluate")
    pkg = Path("src/medmnist_pipeline")
    assert pkg / "medmnist_v2_benchmark.csv" in evaluate  # importlib.resources in evaluation/scoring.py
    assert pkg / "training/fit.py" in evaluate  # imported inside a function of evaluation/retrains.py
    download = stage_code(REPO, "medmnist-pipeline download")
    for always in ("__init__.py", "cli.py", "stages/__init__.py", "stages/download.py", "data/batches.py"):
        assert pkg / always in download  # data/batches.py: cli's `except RuntimeError` imports it
    assert pkg / "predict.py" not in download  # cli imports it under `if args.command == "predict":` only
    assert pkg / "__main__.py" not in download  # `python -m medmnist_pipeline` only; the program calls cli.main
    assert not any(p.is_relative_to(pkg / "training") for p in download)
    baseline = stage_code(REPO, "medmnist-pipeline baseline")
    assert pkg / "stages/train.py" in baseline and pkg / "training/fit.py" in baseline  # through stages/train.py


def test_every_package_data_file_is_read_by_name_somewhere() -> None:
    """The data-file detection looks for the file's name in string literals: a file read under a computed name
    would escape it, so every data file must be named literally by some module."""
    src = REPO / "src"
    modules = module_files(src, "medmnist_pipeline")
    data = data_files(src, "medmnist_pipeline")
    named = {f for path in modules.values() for f in data_files_read(path, data)}
    assert set(data) == named, f"package data named by no module: {sorted(set(data) - named)}"


def test_the_only_dynamic_import_of_the_package_is_the_stage_dispatch() -> None:
    """Imports by computed name escape the closure: only the entry point's dispatch (rooted above) may name the
    package. (An argument held in a variable cannot be read statically: models/pretrained.py imports the backbones'
    third-party weights packages that way.)"""
    modules = module_files(REPO / "src", "medmnist_pipeline")
    naming = [
        f"{name}:{line}: {arg}"
        for name, path in modules.items()
        for line, arg in dynamic_imports(path)
        if "medmnist_pipeline" in arg
    ]
    assert len(naming) == 1 and naming[0].startswith("medmnist_pipeline.cli:"), naming


def _without(dvc: dict, stage: str, dep: str) -> dict:
    assert dep in dvc["stages"][stage]["deps"], f"{stage} has no dep {dep}"
    dvc["stages"][stage]["deps"] = [d for d in dvc["stages"][stage]["deps"] if d != dep]  # a new list: anchors
    return dvc


def _with(dvc: dict, stage: str, dep: str) -> dict:
    dvc["stages"][stage]["deps"] = [*dvc["stages"][stage]["deps"], dep]
    return dvc


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda d: _without(d, "train", "src/medmnist_pipeline/training"), "train: runs src/medmnist_pipeline/train"),
        (lambda d: _without(d, "tune", "src/medmnist_pipeline/owners.py"), "tune: runs src/medmnist_pipeline/owners"),
        (
            lambda d: _without(d, "evaluate", "src/medmnist_pipeline/medmnist_v2_benchmark.csv"),
            "evaluate: runs src/medmnist_pipeline/medmnist_v2_benchmark.csv",
        ),
        (lambda d: _without(d, "download", "src/medmnist_pipeline/cli.py"), "download: runs src/medmnist_pipeline/cli"),
        (
            lambda d: _with(d, "download", "src/medmnist_pipeline/training"),
            "download: depends on src/medmnist_pipeline/training but never",
        ),
        (
            lambda d: _with(d, "augment", "src/medmnist_pipeline/models.py"),
            "augment: dep src/medmnist_pipeline/models.py",
        ),
        (lambda d: _with(d, "download", "src/medmnist_pipeline"), "download: folder dep src/medmnist_pipeline holds"),
        (
            lambda d: _with(d, "train", "src/medmnist_pipeline/stages"),
            "train: folder dep src/medmnist_pipeline/stages holds src/medmnist_pipeline/stages/augment.py",
        ),
    ],
)
def test_a_copy_of_the_real_dvc_yaml_with_a_wrong_dep_fails(tmp_path: Path, change, expected: str) -> None:
    path = tmp_path / "dvc.yaml"
    path.write_text(yaml.safe_dump(change(_real_dvc()), sort_keys=False))
    found = problems(yaml.safe_load(path.read_text()), REPO)
    assert any(p.startswith(expected) for p in found), found


def _tiny_project(root: Path) -> None:
    """A package with an entry point, a dispatch, a lazy import, a relative import and package data."""
    pkg = root / "src" / "tiny"
    files = {
        "__init__.py": '"""tiny."""\n',
        "cli.py": (
            "import importlib\n"
            "def main(args):\n"
            "    if args.command == 'show':\n"
            "        from tiny import show\n"
            "    importlib.import_module(f'tiny.stages.{args.command}').main()\n"
        ),
        "show.py": "",
        "base.py": "",
        "table.csv": "a,b\n",
        "lib/__init__.py": '"""lib."""\n',
        "lib/core.py": "from .extra import thing\n",
        "lib/extra.py": "def thing():\n    from tiny import base\n    return 'table.csv'\n",
        "stages/__init__.py": "",
        "stages/one.py": "from tiny.lib import core\ndef main(): pass\n",
        "stages/two.py": "def main(): pass\n",
        "stages/show.py": "def main(): pass\n",
    }
    for name, text in files.items():
        (pkg / name).parent.mkdir(parents=True, exist_ok=True)
        (pkg / name).write_text(text)
    (root / "pyproject.toml").write_text('[project]\nname = "tiny"\n[project.scripts]\ntiny = "tiny.cli:main"\n')


def test_the_check_on_a_tiny_project(tmp_path: Path) -> None:
    _tiny_project(tmp_path)
    common = ["src/tiny/__init__.py", "src/tiny/cli.py", "src/tiny/stages/__init__.py"]
    good = {
        "stages": {
            "one": {
                "cmd": "tiny one",
                "deps": [
                    "data.npy",
                    *common,
                    "src/tiny/stages/one.py",
                    "src/tiny/lib",
                    "src/tiny/base.py",
                    "src/tiny/table.csv",
                ],
            },
            "two": {"cmd": "tiny two", "deps": [*common, "src/tiny/stages/two.py"]},
        }
    }
    assert problems(good, tmp_path) == []
    chain = stage_code(tmp_path, "tiny one")[Path("src/tiny/base.py")]  # lazy, through a relative import
    assert chain == ("tiny.stages.one", "tiny.lib.core", "tiny.lib.extra", "tiny.base")

    bad = yaml.safe_load(yaml.safe_dump(good))
    bad["stages"]["one"]["deps"].remove("src/tiny/base.py")
    bad["stages"]["two"]["deps"].append("src/tiny/lib")
    assert problems(bad, tmp_path) == [
        "one: runs src/tiny/base.py (tiny.stages.one -> tiny.lib.core -> tiny.lib.extra -> tiny.base) "
        "but no dep covers it",
        "two: depends on src/tiny/lib but never imports or reads it",
    ]
    shutil.rmtree(tmp_path / "src/tiny/lib")  # the code moves on; dvc.yaml does not
    (tmp_path / "src/tiny/stages/one.py").write_text("def main(): pass\n")
    assert problems(good, tmp_path) == [
        "one: dep src/tiny/lib does not exist",
        "one: depends on src/tiny/base.py but never imports or reads it",
        "one: depends on src/tiny/table.csv but never imports or reads it",
    ]
    assert "src/tiny/show.py" not in {str(p) for p in stage_code(tmp_path, "tiny one")}
    assert Path("src/tiny/show.py") in stage_code(tmp_path, "tiny show")
