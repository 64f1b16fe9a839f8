"""Which library code a workflow script runs, so that editing it reruns the jobs it affects."""

# Snakemake reruns a job when its script changes, but it does not look into the modules the
# script imports; DVC reruns a stage only for the files listed as its deps. `library_modules`
# follows a script's `hemaflow` imports (module-level and inside functions) through the
# library; `library_digest` hashes those files for the rules' `library_code` param, and a test
# checks the deps in dvc.yaml against `library_modules`. Both are cached for the life of the
# process (one Snakemake run builds its DAG from one state of the code). `put_first_on_pythonpath`
# makes jobs run the library that was hashed: the checkout's own src/, not an installed copy.

from __future__ import annotations

import ast
import hashlib
import os
from functools import cache
from pathlib import Path

PACKAGE = "hemaflow"
LIBRARY = Path(__file__).resolve().parent  # src/hemaflow
TEMPLATES = "templates"  # a package's Jinja2 templates (jinja2.PackageLoader's default folder)


def put_first_on_pythonpath(src: str | os.PathLike, environ=os.environ) -> None:
    """Make `src` the first PYTHONPATH entry (once) of `environ`, which jobs inherit. Python puts
    PYTHONPATH ahead of site-packages, so a job imports this checkout's library even when another
    clone is installed (editable) in its venv; Snakemake only appends a script's own directory
    to sys.path, behind site-packages."""
    src = os.fspath(src)
    rest = [p for p in environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != src]
    environ["PYTHONPATH"] = os.pathsep.join([src, *rest])


def _module_file(name: str, library: Path) -> Path | None:
    """`train.fit` -> library/train/fit.py (or a package's __init__.py); None when neither exists."""
    base = library.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _imported_modules(path: Path, library: Path = LIBRARY) -> set[str]:
    """Dotted names, below the package, of the hemaflow modules `path` imports: `hemaflow.train.fit`
    -> `train.fit`; `from hemaflow.train import fit` names the module train.fit when there is one."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = []
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                inner = submodule.split(".", 1)[1] if "." in submodule else ""
                names.append(submodule if inner and _module_file(inner, library) else node.module)
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == PACKAGE and len(parts) > 1:
                # importing a.b runs the package a's __init__ first
                found.update(".".join(parts[1:i]) for i in range(2, len(parts) + 1))
    return found


@cache
def library_modules(script: str | Path, library: Path = LIBRARY) -> tuple[Path, ...]:
    """The library files a script runs, transitively (packages' __init__ files and templates
    included), sorted; an unknown module is an error."""
    todo, seen = list(_imported_modules(Path(script), library)), {}
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        module = _module_file(name, library)
        if module is None:
            raise ImportError(f"{script} imports {PACKAGE}.{name}, but there is no {library.joinpath(*name.split('.'))}.py")
        seen[name] = module
        todo.extend(_imported_modules(module, library))
    # A module's templates (its package's templates/ folder) are code too: the pages they make change with them.
    templates = {t for m in seen.values() if (m.parent / TEMPLATES).is_dir() for t in (m.parent / TEMPLATES).rglob("*") if t.is_file()}
    return tuple(sorted({*seen.values(), *templates}))


@cache
def library_digest(script: str | Path, library: Path = LIBRARY) -> str:
    """sha256 over the names and contents of `library_modules(script)`."""
    h = hashlib.sha256()
    for module in library_modules(script, library):
        h.update(module.relative_to(library).as_posix().encode() + b"\0" + module.read_bytes() + b"\0")
    return h.hexdigest()
