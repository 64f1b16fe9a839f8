"""Reruns triggered by exactly what changed, on dry-run plans of a copied repository whose outputs are
marked current by `snakemake --touch` (which records each job's params and code, as a real run does)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from hemaflow.train.grid import combos

from harness import ROOT, copy_repo, planned_jobs, run, write_override
from harness import params as default_params


# The directory() outputs of the default DAG: the replica (its other output, the blood-count
# sheet, is a file) and the explanation overlays.
DIRECTORIES = {("synthesize", Path(default_params()["data"]["root"]).name), ("explain", "overlays")}


def touch_all(work: Path, env, *args: str) -> None:
    """Create every output the DAG would make, empty, then `--touch` them in DAG order: a finished run, cheaply."""
    table = run(["snakemake", "--summary", *args], work, env).stdout.splitlines()
    for line in table[1:]:
        path, _, rule, *_ = line.split("\t")
        target = work / path
        if (rule, target.name) in DIRECTORIES:  # directory() outputs
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.touch()
    run(["snakemake", "--cores", "1", "--touch", *args], work, env)
    assert planned_jobs(work, env, *args) == {}


pytestmark = pytest.mark.slow  # about a minute each on 2 busy cores (Snakemake start-ups), no real job runs


@pytest.fixture(scope="module")
def touched(tmp_path_factory, tool_env) -> Path:
    """The default pipeline, every job done (empty outputs). Read-only for tests."""
    work = copy_repo(tmp_path_factory.mktemp("touched"), tool_env)
    touch_all(work, tool_env)
    return work


def test_changing_positive_class_reruns_only_what_uses_it(touched, tool_env, params, tmp_path):
    override = write_override(tmp_path, "positive.yaml", {"data": {"positive_class": "hem"}})
    n_models = len(combos(params["train"], params["seed"])) + 1  # and the SVM
    assert planned_jobs(touched, tool_env, "--configfile", override) == {
        "check_classes": 1,
        "evaluate": n_models,
        "leaderboard": 1,
        "explain": 1,  # it reads the evaluation and the leaderboard
        "model_card": 1,  # so does the card
    }


def test_changing_the_cyclic_schedule_retrains_only_triangular_combinations(tool_env, params, tmp_path):
    # The default grid is constant-rate only: this one has both policies, every job done.
    grid = {**params["train"]["grid"], "lr_policy": ["constant", "triangular"]}
    work = copy_repo(tmp_path / "repo", tool_env)
    policies = write_override(tmp_path, "policies.yaml", {"train": {"grid": grid}})
    touch_all(work, tool_env, "--configfile", policies)
    cyclic = {**params["train"]["cyclic"], "step_size": params["train"]["cyclic"]["step_size"] + 1}
    override = write_override(tmp_path, "cyclic.yaml", {"train": {"grid": grid, "cyclic": cyclic}})
    grown = combos({**params["train"], "grid": grid}, params["seed"])
    triangular = sum(c["lr_policy"] == "triangular" for c in grown.values())
    assert 0 < triangular < len(grown)
    assert planned_jobs(work, tool_env, "--configfile", override) == {"train": triangular, "evaluate": triangular, "leaderboard": 1,
                                                                      "explain": 1, "model_card": 1}  # fmt: skip


def test_a_positive_class_that_is_no_class_fails_at_parse_time(touched, tool_env, tmp_path):
    override = write_override(tmp_path, "bad.yaml", {"data": {"positive_class": "blast"}})
    with pytest.raises(RuntimeError, match=r"data\.positive_class: 'blast'.*'hem', 'all'"):
        planned_jobs(touched, tool_env, "--configfile", override)


def test_editing_a_label_in_the_filelist_reruns_ingest_and_what_follows(tmp_path, tool_env, params):
    work = copy_repo(tmp_path / "repo", tool_env)
    root = work / "data/raw/mine"
    root.mkdir(parents=True)
    labels = work / "labels.csv"  # outside the root: the root directory's mtime would not show the edit
    labels.write_text("path,label\na.png,blast\nb.png,normal\n")
    data = {"adapter": "filelist", "name": "mine", "root": "data/raw/mine", "filelist": "labels.csv", "positive_class": "blast"}
    # no blood-count sheet for this set: no fused combination
    override = write_override(tmp_path, "mine.yaml", {"data": {**data, "patient_sheet": None}, "train": {"fusion": []}})
    touch_all(work, tool_env, "--configfile", override)
    labels.write_text("path,label\na.png,blast\nb.png,blast\n")
    jobs = planned_jobs(work, tool_env, "--configfile", override)
    assert jobs.get("ingest") == 1 and jobs.get("split") == 1 and jobs.get("check_classes") == 1
    assert "synthesize" not in jobs and jobs.get("train") == len(combos({**params["train"], "fusion": []}, params["seed"]))


def test_dvc_prepare_stage_reads_every_data_key_but_positive_class():
    """DVC's view of the same narrowing: prepare lists each data key ingest reads, evaluate positive_class
    (and the blood-count sheet, which only the fused combinations read, is a file dep of train/evaluate);
    class_descriptions only train reads (it records them with the model)."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    schema = yaml.safe_load((ROOT / "workflow/schemas/params.schema.yaml").read_text())
    data_keys = {f"data.{k}" for k in schema["properties"]["data"]["properties"]}
    prepare = set(stages["prepare"]["params"])
    assert "data" not in prepare
    assert {p for p in prepare if p.startswith("data.")} == data_keys - {"data.positive_class", "data.patient_sheet",
                                                                          "data.class_descriptions"}  # fmt: skip
    assert "data.positive_class" in stages["evaluate"]["params"]
    assert {"data.class_descriptions", "data.patient_regex"} <= set(stages["train"]["params"])


@pytest.fixture(scope="module")
def fresh(tmp_path_factory, tool_env) -> Path:
    """A fresh clone, nothing built: a dry run lists every target job with its inputs."""
    return copy_repo(tmp_path_factory.mktemp("fresh"), tool_env)


@pytest.mark.parametrize("target, stage", [("prepare", "prepare"), ("models", "train"), ("evaluation", "evaluate")])
def test_each_dvc_stage_tracks_every_file_its_target_names(fresh, tool_env, params, target, stage):
    """Every file `snakemake <target>` names is an out of its DVC stage or one of its deps (a file
    an earlier stage made), so DVC versions each file whose loss Snakemake would redo."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    names = {"${data.root}": params["data"]["root"], "${data.patient_sheet}": params["data"]["patient_sheet"]}
    tracked = [names.get(p, p) for p in stages[stage].get("deps", [])]
    tracked += [names.get(p, p) for out in stages[stage]["outs"] + stages[stage].get("metrics", []) for p in out]
    plan = run(["snakemake", "-n", target], fresh, tool_env).stdout
    block = plan.partition(f"\nrule {target}:\n")[2]
    files = block.partition("input: ")[2].partition("\n")[0].split(", ")
    untracked = [f for f in files if not any(f == t or f.startswith(t.rstrip("/") + "/") for t in tracked)]
    assert len(files) > 1 and untracked == [], f"dvc.yaml stage {stage!r} does not track {untracked}"
