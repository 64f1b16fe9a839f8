"""Which library code a workflow script runs, so that editing it reruns the jobs it affects.

Snakemake reruns a job when its script changes, but it does not look into the modules the
script imports; DVC reruns a stage only for the files listed as its deps. `library_modules`
follows a script's `hemaflow` imports (module-level and inside functions) through the
library; `library_digest` hashes those files for the rules' `library_code` param, and a test
checks the deps in dvc.yaml against `library_modules`. Both are cached for the life of the
process (one Snakemake run builds its DAG from one state of the code). `put_first_on_pythonpath`
makes jobs run the library that was hashed: the checkout's own src/, not an installed copy.
"""

from __future__ import annotations

import ast
import hashlib
import os
from functools import cache
from pathlib import Path

PACKAGE = "hemaflow"
LIBRARY = Path(__file__).resolve().parent  # src/hemaflow


def put_first_on_pythonpath(src: str | os.PathLike, environ=os.environ) -> None:
    """Make `src` the first PYTHONPATH entry (once) of `environ`, which jobs inherit. Python puts
    PYTHONPATH ahead of site-packages, so a job imports this checkout's library even when another
    clone is installed (editable) in its venv; Snakemake only appends a script's own directory
    to sys.path, behind site-packages."""
    src = os.fspath(src)
    rest = [p for p in environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != src]
    environ["PYTHONPATH"] = os.pathsep.join([src, *rest])


def _imported_modules(path: Path) -> set[str]:
    """Names of the hemaflow modules `path` imports: `hemaflow.x` -> `x`."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from hemaflow import x` imports the module x; `from hemaflow.x import f` the module x
            names = [f"{node.module}.{a.name}" for a in node.names] if node.module == PACKAGE else [node.module]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == PACKAGE and len(parts) > 1:
                found.add(parts[1])
    return found


@cache
def library_modules(script: str | Path, library: Path = LIBRARY) -> tuple[Path, ...]:
    """The library files a script runs, transitively, sorted; an unknown module is an error."""
    todo, seen = list(_imported_modules(Path(script))), set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        module = library / f"{name}.py"
        if not module.is_file():
            raise ImportError(f"{script} imports {PACKAGE}.{name}, but there is no {module}")
        seen.add(name)
        todo.extend(_imported_modules(module))
    return tuple(library / f"{name}.py" for name in sorted(seen))


@cache
def library_digest(script: str | Path, library: Path = LIBRARY) -> str:
    """sha256 over the names and contents of `library_modules(script)`."""
    h = hashlib.sha256()
    for module in library_modules(script, library):
        h.update(module.name.encode() + b"\0" + module.read_bytes() + b"\0")
    return h.hexdigest()
