"""The package's imports read statically with ``ast`` (nothing is imported): for the layering test (test_layout.py)
and the DVC code-deps test (test_dvc_deps.py).

What counts as an import: ``import a.b``, ``from a import b`` (b a submodule when ``a/b.py`` or ``a/b/__init__.py``
exists on disk, else a name in ``a``) and relative imports, at module level and inside functions (lazy imports run
too, when the function does). Imports under ``if TYPE_CHECKING:`` are left out: they never run, only type checkers
read them. Dynamic imports (``importlib.import_module``) are not imports here; ``dynamic_imports`` lists them so that
the tests can check that they are only the ones they know.
"""

from __future__ import annotations

import ast
import functools
from collections import deque
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, dotted
    target: str  # the imported module of the package, dotted (a package: its __init__)
    line: int
    lazy: bool  # inside a function: runs when the function does


def _parse(path: Path) -> ast.Module:
    stat = path.stat()
    return _parse_cached(path, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=1024)
def _parse_cached(path: Path, mtime_ns: int, size: int) -> ast.Module:  # the tests read each file many times
    return ast.parse(path.read_text(), filename=str(path))


def module_files(src: Path, package: str) -> dict[str, Path]:
    """Dotted name -> file, for every module of ``package`` under ``src`` (a package's name -> its __init__.py)."""
    modules = {}
    for path in sorted((src / package).rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        parts = path.relative_to(src).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def is_package(modules: dict[str, Path], name: str) -> bool:
    return modules[name].name == "__init__.py"


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _command_branch(test: ast.expr) -> str | None:
    """``<x>.command == "name"``: the subcommand this branch runs for (an entry point's dispatch), else None."""
    if (
        isinstance(test, ast.Compare)
        and len(test.ops) == 1
        and isinstance(test.ops[0], ast.Eq)
        and isinstance(test.left, ast.Attribute)
        and test.left.attr == "command"
        and isinstance(test.comparators[0], ast.Constant)
        and isinstance(test.comparators[0].value, str)
    ):
        return test.comparators[0].value
    return None


def _resolve_from(module: str, modules: dict[str, Path], node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    package = module if is_package(modules, module) else module.rpartition(".")[0]
    base = package.split(".")
    if node.level > 1:
        base = base[: -(node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(
    module: str, modules: dict[str, Path], command: str | None = None, type_checking: bool = False
) -> list[Import]:
    """The imports of the package's own modules that ``module`` runs (``type_checking``: and those only type checkers
    read, under ``if TYPE_CHECKING:``).

    With ``command``, branches ``if args.command == "<other>":`` are skipped (their ``else`` is read): what an entry
    point runs for that one subcommand.
    """
    tree = _parse(modules[module])
    found: list[Import] = []

    def add(target: str, node: ast.stmt, lazy: bool) -> None:
        if target in modules:
            found.append(Import(module, target, node.lineno, lazy))

    def visit(nodes: list[ast.AST], lazy: bool) -> None:
        for node in nodes:
            if isinstance(node, ast.Import):
                for alias in node.names:
                    add(alias.name, node, lazy)
            elif isinstance(node, ast.ImportFrom):
                base = _resolve_from(module, modules, node)
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    add(sub if sub in modules else base, node, lazy)
            elif isinstance(node, ast.If) and (
                (_is_type_checking(node.test) and not type_checking)
                or (command is not None and _command_branch(node.test) not in (None, command))
            ):
                visit(node.orelse, lazy)  # a branch that never runs (for this command): its else only
            else:
                # the statements inside (functions: lazy), handlers and match cases included
                inner = lazy or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
                for field in ("body", "orelse", "finalbody", "handlers", "cases"):
                    visit(getattr(node, field, None) or [], inner)

    visit(tree.body, False)
    return found


def dynamic_imports(path: Path) -> list[tuple[int, str]]:
    """Calls of ``import_module`` / ``__import__`` in ``path``: (line, the argument's source)."""
    tree = _parse(path)
    calls = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and node.args:
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name in ("import_module", "__import__"):
                calls.append((node.lineno, ast.unparse(node.args[0])))
    return calls


def graph(modules: dict[str, Path], type_checking: bool = False) -> dict[str, list[Import]]:
    """Every module's imports of the package's modules (all subcommands' branches included)."""
    return {name: imports_of(name, modules, type_checking=type_checking) for name in modules}


def ancestors(name: str) -> list[str]:
    """The packages whose __init__ runs before ``name``: ``a.b.c`` -> ``a``, ``a.b``."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def closure(roots: list[tuple[str, str | None]], modules: dict[str, Path]) -> dict[str, tuple[str, ...]]:
    """Every module that running ``roots`` ((module, command) pairs) can import, with a shortest import chain to it.

    A module brings its parent packages (their __init__ runs first). ``command`` applies to its root module only.
    """
    chains: dict[str, tuple[str, ...]] = {}
    todo = deque((m, c, ()) for m, c in roots)
    while todo:
        name, command, chain = todo.popleft()
        if name in chains:
            continue
        chains[name] = (*chain, name)
        for parent in ancestors(name):
            todo.append((parent, None, chains[name]))
        for imp in imports_of(name, modules, command):
            todo.append((imp.target, None, chains[name]))
    return chains


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (or a module importing itself), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def strongconnect(v: str) -> None:  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                strongconnect(w)
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
            if len(component) > 1 or v in edges.get(v, ()):
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            strongconnect(v)
    return sorted(found)


def data_files(src: Path, package: str) -> list[Path]:
    """Package data: the files under the package that are not Python (nor caches)."""
    return sorted(
        p
        for p in (src / package).rglob("*")
        if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts
    )


def data_files_read(path: Path, files: list[Path]) -> list[Path]:
    """The package data files that ``path`` names in a string literal (``resources.files(pkg).joinpath("x.csv")``,
    ``Path(__file__).parent / "x.csv"``): by the file's name or its path inside the package."""
    strings = {
        node.value for node in ast.walk(_parse(path)) if isinstance(node, ast.Constant) and isinstance(node.value, str)
    }
    return [f for f in files if f.name in strings or any(s and f.as_posix().endswith("/" + s) for s in strings)]
