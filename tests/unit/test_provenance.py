"""Which library modules a workflow script runs, and the hash that reruns its jobs."""

from __future__ import annotations

from pathlib import Path

import pytest

from hemaflow.provenance import library_digest, library_modules


def _library(root: Path, modules: dict[str, str]) -> Path:
    lib = root / "hemaflow"
    lib.mkdir()
    for name, text in modules.items():
        (lib / f"{name}.py").write_text(text)
    return lib


def _script(root: Path, text: str) -> Path:
    path = root / "job.py"
    path.write_text(text)
    return path


def test_follows_imports_of_every_form_transitively_and_nothing_else(tmp_path):
    lib = _library(
        tmp_path,
        {
            "a": "from hemaflow.b import f\n",
            "b": "def f():\n    from hemaflow import c  # inside a function\n",
            "c": "import numpy\n",
            "d": "import hemaflow.e\n",
            "e": "",
            "unused": "",
        },
    )
    script = _script(tmp_path, "import os\nfrom hemaflow.a import g\nimport hemaflow.d as d\n")
    assert [p.name for p in library_modules(script, lib)] == ["a.py", "b.py", "c.py", "d.py", "e.py"]


def _digest(script: Path, lib: Path) -> str:
    """As a new Snakemake process sees the code (the functions cache per process)."""
    library_digest.cache_clear()
    library_modules.cache_clear()
    return library_digest(script, lib)


def test_digest_changes_with_imported_code_only(tmp_path):
    lib = _library(tmp_path, {"a": "X = 1\n", "unused": "Y = 1\n"})
    script = _script(tmp_path, "from hemaflow.a import X\n")
    before = _digest(script, lib)
    (lib / "unused.py").write_text("Y = 2\n")
    assert _digest(script, lib) == before
    (lib / "a.py").write_text("X = 2\n")
    assert _digest(script, lib) != before


def test_an_import_of_a_missing_module_names_the_script_and_the_module(tmp_path):
    lib = _library(tmp_path, {})
    script = _script(tmp_path, "from hemaflow.nowhere import f\n")
    with pytest.raises(ImportError, match=r"job\.py imports hemaflow\.nowhere"):
        library_modules(script, lib)


def test_follows_sub_packages_and_counts_their_init_files(tmp_path):
    lib = _library(tmp_path, {"top": ""})
    (lib / "stage").mkdir()
    (lib / "stage/__init__.py").write_text("")
    (lib / "stage/fit.py").write_text("from hemaflow.stage import helper\nfrom hemaflow import top\n")
    (lib / "stage/helper.py").write_text("")
    (lib / "stage/unused.py").write_text("")
    script = _script(tmp_path, "from hemaflow.stage.fit import train\n")
    found = [p.relative_to(lib).as_posix() for p in library_modules(script, lib)]
    assert found == ["stage/__init__.py", "stage/fit.py", "stage/helper.py", "top.py"]
    before = _digest(script, lib)
    (lib / "stage/__init__.py").write_text("X = 1\n")  # runs on every import of the package
    assert _digest(script, lib) != before


def test_the_library_imports_form_no_cycle_between_modules_or_stages():
    """Each stage's sub-package may use another's only one way round (hemaflow.plots, models_io
    and files exist so that train, evaluate, explain and predict need not import each other)."""
    import networkx as nx

    from hemaflow.provenance import LIBRARY, _imported_modules

    modules, stages = nx.DiGraph(), nx.DiGraph()
    for path in LIBRARY.rglob("*.py"):
        name = ".".join(path.relative_to(LIBRARY).with_suffix("").parts).removesuffix(".__init__")
        for other in _imported_modules(path) - {name}:
            modules.add_edge(name, other)
            if name.split(".")[0] != other.split(".")[0]:
                stages.add_edge(name.split(".")[0], other.split(".")[0])
    assert modules.number_of_edges() > 20 and stages.has_edge("predict", "train")  # the graph is real
    assert list(nx.simple_cycles(modules)) == []
    assert list(nx.simple_cycles(stages)) == []
