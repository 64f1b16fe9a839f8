"""Library code is tracked: dvc.yaml lists, for every stage, the modules its scripts run (and
each script once); every rule hashes the library code of its own script."""

from __future__ import annotations

import re

import yaml

from hemaflow.provenance import library_modules

from harness import ROOT

# Read by the Snakefile itself, not by a script: the grid's combination ids and params.
PARSE_TIME = {"src/hemaflow/train/grid.py"}


def _stages():
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def test_every_stage_lists_the_modules_its_scripts_import():
    for name, stage in _stages().items():
        deps = set(stage.get("deps", []))
        scripts = sorted(d for d in deps if d.startswith("workflow/scripts/"))
        needed = {str(m.relative_to(ROOT)) for s in scripts for m in library_modules(ROOT / s)}
        listed = {d for d in deps if d.startswith("src/hemaflow/")}
        assert needed - listed == set(), f"dvc.yaml stage {name!r} misses deps"
        assert listed - needed - PARSE_TIME == set(), f"dvc.yaml stage {name!r} lists modules it does not run"


def test_every_script_belongs_to_exactly_one_stage():
    owners = {}
    for name, stage in _stages().items():
        for dep in stage.get("deps", []):
            if dep.startswith("workflow/scripts/"):
                owners.setdefault(dep, []).append(name)
    scripts = {str(p.relative_to(ROOT)) for p in (ROOT / "workflow/scripts").glob("*.py")}
    assert set(owners) == scripts
    assert all(len(stages) == 1 for stages in owners.values()), owners


def test_every_rule_hashes_the_library_code_of_its_own_script():
    checked = set()
    for smk in sorted((ROOT / "workflow/rules").glob("*.smk")):
        for block in re.split(r"^\s*rule ", smk.read_text(), flags=re.M)[1:]:
            rule, script = block.split(":")[0], re.search(r'"\.\./scripts/([\w.]+)"', block)
            if script:
                assert f'library_code=library_code("{script[1]}")' in block, f"{smk.name}: rule {rule}"
                checked.add(script[1])
    assert checked == {p.name for p in (ROOT / "workflow/scripts").glob("*.py")}
