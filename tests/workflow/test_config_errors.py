"""Errors before the work, in the user's words: real `snakemake` in a fresh-clone copy."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
import yaml
from PIL import Image

from harness import BIN, copy_repo, snakemake, write_override


@pytest.fixture(scope="module")
def clean(tmp_path_factory, tool_env):
    return copy_repo(tmp_path_factory.mktemp("config-errors"), tool_env)


@pytest.fixture
def work(clean, tmp_path):
    return shutil.copytree(clean, tmp_path / "work", symlinks=True)


def failed(work, env, *args) -> str:
    proc = subprocess.run([BIN / "snakemake", "--cores", "1", *args], cwd=work, env=env, capture_output=True, text=True)
    assert proc.returncode != 0, proc.stdout[-3000:]
    return proc.stdout + proc.stderr


def edit_params(work, edit) -> None:
    path = work / "params.yaml"
    params = yaml.safe_load(path.read_text())
    edit(params)
    path.write_text(yaml.safe_dump(params))


def test_each_bad_value_is_named_with_the_file_it_came_from(work, tool_env):
    edit_params(work, lambda p: p["preprocess"].update(background="alfa"))
    write_override(work, "my.yaml", {"seed": 1.5, "augment": {"rotations": 0}})
    out = failed(work, tool_env, "-n", "--configfile", "my.yaml", "--config", "seed=7.0")
    assert "(params.yaml + my.yaml (--configfile) + --config) is not valid (3 problem(s))" in out
    assert "  - params.yaml: preprocess.background: 'alfa' is not allowed; use one of 'alpha', 'natural'" in out
    assert "  - my.yaml (--configfile): augment.rotations: 0 is less than the minimum of 1" in out
    # --config overrides my.yaml's seed: the message names the one that counts
    assert "  - --config: seed: 7.0 is not an integer; write 7 (no decimal point)" in out


def test_a_missing_data_root_is_reported_before_any_job_with_the_fix(work, tool_env):
    out = failed(work, tool_env, "-n", "--config", "data={adapter: folders, name: mine, root: data/raw/my-cells}")
    assert f"--config: data.root: the data directory 'data/raw/my-cells' ({work / 'data/raw/my-cells'}) does not exist" in out
    assert "Point data.root at the directory that holds the images" in out
    assert "MissingInputException" not in out


def test_keys_left_out_of_params_yaml_get_the_schema_defaults(work, tool_env):
    """Drop keys from params.yaml: the Snakefile still parses (the grid needs dropout) and the
    job runs with the schema's default (synthesize draws image_size x image_size BMPs)."""

    def drop(p):
        del p["synthetic"]["image_size"], p["train"]["grid"]["dropout"], p["train"]["max_epochs"], p["evaluate"]

    edit_params(work, drop)
    tiny = {"synthetic": {"folds": 2, "patients_per_fold": {"all": 1, "hem": 1},
                          "holdout_patients": {"all": 1, "hem": 1}, "cells_per_patient": [2, 2]}}
    snakemake(work, tool_env, "data/raw/cnmc-replica", "--configfile", write_override(work, "tiny.yaml", tiny))
    bmps = sorted((work / "data/raw/cnmc-replica").rglob("*.bmp"))
    assert bmps and {Image.open(b).size for b in bmps} == {(450, 450)}


def test_the_local_profile_prints_a_failed_jobs_log(work, tool_env):
    root = work / "data/raw/mine"
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(root / label / "ok.png")
        (root / label / "broken.png").write_bytes(b"not a png")
    data = {"adapter": "folders", "name": "mine", "root": "data/raw/mine", "strict": True}
    override = write_override(work, "mine.yaml", {"data": data})
    out = failed(work, tool_env, "results/manifests/sources.parquet", "--profile", "profiles/local", "--configfile", override)
    log = (work / "results/logs/ingest.log").read_text()
    assert "a/broken.png" in log and "bad input file(s)" in log
    # the job's own log, on the console: not just a pointer to results/logs/
    assert "a/broken.png" in out and "bad input file(s)" in out


def test_nested_config_values_are_typed_as_yaml(work, tool_env):
    """Snakemake leaves the values nested in a --config mapping strings; they are typed as YAML."""
    proc = subprocess.run([BIN / "snakemake", "-n", "prepare", "--config", "preprocess={size: 64}"], cwd=work, env=tool_env,
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.mark.parametrize(
    "text, message",
    [("", "params.yaml: the config file is empty"), ("seed: 1\ntrain: [1\n", "params.yaml, line 3, column 1: not valid YAML")],
)
def test_an_empty_or_broken_params_yaml_is_named(work, tool_env, text, message):
    (work / "params.yaml").write_text(text)
    assert message in failed(work, tool_env, "-n")


def test_a_data_root_that_is_a_file_is_not_a_directory(work, tool_env):
    (work / "cells.txt").write_text("not a directory")
    out = failed(work, tool_env, "-n", "--config", "data={adapter: folders, name: mine, root: cells.txt}")
    assert "--config: data.root: the data directory 'cells.txt'" in out and "is not a directory" in out
