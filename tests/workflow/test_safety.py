"""Safe by construction: no parameter reaches a shell, and jobs run this checkout's library."""

from __future__ import annotations

import json
import shutil

import yaml

from hemaflow.train.grid import combos
from hemaflow.provenance import put_first_on_pythonpath

from harness import ROOT, copy_repo, params, run, write_override


def test_no_dvc_command_carries_a_parameter():
    # DVC pastes ${...} values into the shell unquoted: a crafted data.root would run as a command
    for name, stage in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].items():
        assert "${" not in stage["cmd"], f"dvc.yaml stage {name!r}: {stage['cmd']}"


def test_pythonpath_puts_the_checkout_first_once(tmp_path):
    src = tmp_path / "src"
    empty, other = {}, {"PYTHONPATH": f"/other:{src}:"}
    put_first_on_pythonpath(src, empty)
    put_first_on_pythonpath(src, other)
    assert empty == {"PYTHONPATH": str(src)} and other == {"PYTHONPATH": f"{src}:/other"}


def test_a_job_imports_its_checkout_not_a_copy_on_the_path(tmp_path, tool_env):
    work = copy_repo(tmp_path / "clone", tool_env)
    # another clone's library, ahead of the workflow's own scripts dir on the job's sys.path
    decoy = tmp_path / "decoy"
    shutil.copytree(ROOT / "src/hemaflow", decoy / "hemaflow")
    tiny = {"synthetic": {"folds": 2, "patients_per_fold": {"all": 1, "hem": 1},
                          "holdout_patients": {"all": 1, "hem": 1}, "cells_per_patient": [1, 1], "image_size": 64}}
    override = write_override(tmp_path, "tiny.yaml", tiny)
    env = {**tool_env, "PYTHONPATH": str(decoy)}
    run(["snakemake", "--cores", "1", "replica", "--configfile", override], work, env)
    log = (work / "results/logs/synthesize.log").read_text()
    assert f"hemaflow library: {work.resolve() / 'src/hemaflow'}" in log, log


def test_a_combination_removed_from_the_grid_leaves_nothing_behind(tmp_path, tool_env):
    # what an earlier run with another grid left (DVC's persist: true keeps it between runs)
    work = copy_repo(tmp_path / "clone", tool_env)
    ids = list(combos(params()["train"], params()["seed"]))
    stale = ["results/models/old_combo/model.keras", "results/plots/history/old_combo.csv"]
    kept = [f"results/models/{ids[0]}/train.json", f"results/plots/history/{ids[0]}.csv"]
    for rel in stale + kept:
        (work / rel).parent.mkdir(parents=True, exist_ok=True)
        (work / rel).write_text("x")
    run(["snakemake", "--cores", "1", "results/models/grid.json"], work, tool_env)
    assert [rel for rel in stale if (work / rel).exists()] == []
    assert all((work / rel).exists() for rel in kept)
    assert json.loads((work / "results/models/grid.json").read_text())["ids"] == [*ids, "svm_rbf"]
    assert "removed results/models/old_combo" in (work / "results/logs/grid.log").read_text()
