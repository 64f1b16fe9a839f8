"""How Snakemake and DVC behave together, pinned on a toy project shaped like hemaflow (each DVC stage runs a
Snakemake target): why a pulled clone must be adopted, and that after adopting, real changes rerun exactly what
they affect. These guard the design in docs/dvc-and-snakemake.md when either tool is upgraded; the reviewers'
path on the real pipeline is test_dvc_pipeline.py."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
import yaml

from dvc_roundtrip import (
    adopt_pulled_outputs,
    dvc_repro,
    dvc_status,
    dvc_status_clean,
    push_clone_pull,
    snakemake_dry_run_nothing_to_do,
)
from harness import planned_jobs, run

pytestmark = pytest.mark.integration

TOY = {
    "Snakefile": """\
configfile: "params.yaml"


rule all:
    input:
        "results/metrics.json",
        "results/plot.csv",


rule synthesize:
    output:
        directory("data/synthetic"),
    log:
        "results/logs/synthesize.log",
    params:
        n=config["synthesize"]["n"],
        seed=config["seed"],
    script:
        "scripts/synthesize.py"


rule train:
    input:
        "data/synthetic",
    output:
        "results/model.json",
    log:
        "results/logs/train.log",
    benchmark:
        "results/benchmarks/train.tsv"
    params:
        offset=config["train"]["offset"],
    conda:
        "envs/toy.yaml"
    script:
        "scripts/train.py"


rule evaluate:
    input:
        model="results/model.json",
        holdout="data/holdout.csv",
    output:
        metrics="results/metrics.json",
        plot="results/plot.csv",
    log:
        "results/logs/evaluate.log",
    shell:
        "python scripts/evaluate.py {input.model} {input.holdout} {output.metrics} {output.plot} > {log} 2>&1"
""",
    "params.yaml": "seed: 7\nsynthesize:\n  n: 4\ntrain:\n  offset: 1.0\n",
    "dvc.yaml": """\
stages:
  synthesize:
    cmd: snakemake --cores all data/synthetic
    deps: [Snakefile, scripts/synthesize.py]
    params: [seed, synthesize]
    outs:
      - data/synthetic: {persist: true}
  train:
    cmd: snakemake --cores all results/model.json
    deps: [Snakefile, scripts/train.py, envs/toy.yaml, data/synthetic]
    params: [train]
    outs:
      - results/model.json: {persist: true}
  evaluate:
    cmd: snakemake --cores all evaluate
    deps: [Snakefile, scripts/evaluate.py, results/model.json, data/holdout.csv]
    metrics:
      - results/metrics.json: {persist: true}
    plots:
      - results/plot.csv: {persist: true, x: step, y: error}
""",
    "scripts/synthesize.py": """\
import random
from pathlib import Path

out = Path(snakemake.output[0])
out.mkdir(parents=True)
rng = random.Random(snakemake.params.seed)
for i in range(snakemake.params.n):
    (out / f"sample_{i}.csv").write_text("".join(f"{rng.randint(0, 9)}\\n" for _ in range(5)))
""",
    "scripts/train.py": """\
import json
from pathlib import Path

values = [int(v) for f in sorted(Path(snakemake.input[0]).glob("*.csv")) for v in f.read_text().split()]
weight = sum(values) / len(values) + snakemake.params.offset
Path(snakemake.output[0]).write_text(json.dumps({"weight": weight}))
""",
    "scripts/evaluate.py": """\
import json
import sys

model, holdout, metrics, plot = sys.argv[1:]
weight = json.load(open(model))["weight"]
errors = [abs(float(y) - weight) for y in open(holdout).read().split()[1:]]
json.dump({"mae": sum(errors) / len(errors)}, open(metrics, "w"))
open(plot, "w").write("step,error\\n" + "".join(f"{i},{e}\\n" for i, e in enumerate(errors)))
""",
    "envs/toy.yaml": "channels: [conda-forge]\ndependencies: [python=3.11]\n",
    "data/holdout.csv": "y\n3\n5\n8\n",
    ".gitignore": ".snakemake/\nresults/logs/\nresults/benchmarks/\n",
}


@pytest.fixture(scope="module")
def origin(tmp_path_factory, tool_env) -> Path:
    """The toy project run once with `dvc repro` and committed, with a local-directory remote."""
    repo = tmp_path_factory.mktemp("origin")
    for rel, text in TOY.items():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text(text)
    store = tmp_path_factory.mktemp("dvc-store")
    for cmd in (
        ["git", "init", "--quiet", "--initial-branch", "main"],
        ["dvc", "init", "--quiet"],
        ["dvc", "remote", "add", "--default", "local", store],
        ["dvc", "repro"],
        ["git", "add", "--all"],
        ["git", "commit", "--quiet", "-m", "toy pipeline and its lock"],
    ):
        run(cmd, repo, tool_env)
    return repo


@pytest.fixture(scope="module")
def pulled(origin, tool_env, tmp_path_factory) -> Path:
    """A fresh clone of `origin` after `dvc pull` from the local-directory remote, not yet adopted."""
    return push_clone_pull(origin, "local", tmp_path_factory.mktemp("pulled") / "clone", tool_env, adopt=False)


@pytest.fixture(scope="module")
def adopted(pulled, tool_env, tmp_path_factory) -> Path:
    """The reviewers' clone: pulled, then adopted (touched in DAG order, Snakemake metadata recorded)."""
    clone = copy_clone(pulled, tmp_path_factory.mktemp("adopted"))
    adopt_pulled_outputs(clone, tool_env)
    return clone


def copy_clone(clone: Path, parent: Path) -> Path:
    """A private copy for a test that edits its clone; copy2 keeps the mtimes, so the copy is in the same state."""
    return Path(shutil.copytree(clone, parent / "clone", symlinks=True))


def metric(repo: Path) -> float:
    return json.loads((repo / "results/metrics.json").read_text())["mae"]


def test_pulled_mtimes_make_snakemake_rerun_until_outputs_are_adopted(pulled, tool_env, tmp_path):
    clone = copy_clone(pulled, tmp_path)
    # `dvc pull` writes in arbitrary order; force the bad case: an input newer than its consumer's output.
    newer = time.time() + 10
    os.utime(clone / "results/model.json", (newer, newer))
    assert "evaluate" in planned_jobs(clone, tool_env)
    # Dropping mtime from the rerun triggers does not help: Snakemake 9 compares input mtimes regardless.
    no_mtime = ["--rerun-triggers", "params", "input", "software-env", "code"]
    assert "evaluate" in planned_jobs(clone, tool_env, *no_mtime)
    assert dvc_status_clean(clone, tool_env)  # DVC compares contents, not times
    adopt_pulled_outputs(clone, tool_env)
    assert snakemake_dry_run_nothing_to_do(clone, tool_env)


def test_without_metadata_snakemake_misses_a_param_change_and_dvc_locks_a_stale_output(pulled, tool_env, tmp_path):
    """Why adopting must record metadata: with well-ordered mtimes but no .snakemake/metadata a clone looks up to
    date, yet Snakemake cannot see a param change, so the stage DVC reruns does nothing and dvc.lock then lies."""
    clone = copy_clone(pulled, tmp_path)
    start = time.time() + 10
    in_dag_order = ["data/synthetic/.snakemake_timestamp", "results/model.json", "results/metrics.json", "results/plot.csv"]
    for i, rel in enumerate(in_dag_order):
        os.utime(clone / rel, (start + i, start + i))
    assert snakemake_dry_run_nothing_to_do(clone, tool_env)
    model = (clone / "results/model.json").read_bytes()
    set_param(clone, "train", "offset", 2.5)
    assert planned_jobs(clone, tool_env) == {}
    assert set(dvc_status(clone, tool_env)) == {"train"}
    with pytest.raises(RuntimeError, match="not clean"):
        adopt_pulled_outputs(clone, tool_env)
    assert dvc_repro(clone, tool_env) == (["train"], [])  # DVC ran the stage; Snakemake ran no rule
    assert (clone / "results/model.json").read_bytes() == model
    assert dvc_status_clean(clone, tool_env)  # the lock now pairs offset 2.5 with the offset-1.0 model


def set_param(repo: Path, section: str, key: str, value) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params[section][key] = value
    (repo / "params.yaml").write_text(yaml.safe_dump(params))


def append_holdout_row(repo: Path) -> None:
    with open(repo / "data/holdout.csv", "a") as f:
        f.write("13\n")


def rescale_training(repo: Path) -> None:
    script = repo / "scripts/train.py"
    script.write_text(script.read_text().replace("sum(values) / len(values)", "2 * sum(values) / len(values)"))


@pytest.mark.parametrize(
    ("change", "first_stage", "affected"),
    [
        (lambda repo: set_param(repo, "train", "offset", 2.5), "train", ["train", "evaluate"]),
        (append_holdout_row, "evaluate", ["evaluate"]),
        (rescale_training, "train", ["train", "evaluate"]),
    ],
    ids=["param", "input", "code"],
)
def test_a_real_change_reruns_exactly_what_it_affects(adopted, tool_env, tmp_path, change, first_stage, affected):
    clone = copy_clone(adopted, tmp_path)
    change(clone)
    planned = planned_jobs(clone, tool_env)
    assert set(planned) - {"all"} == set(affected)
    assert set(dvc_status(clone, tool_env)) == {first_stage}
    stages, rules = dvc_repro(clone, tool_env)
    assert stages == affected and rules == affected  # each stage's Snakemake ran its own rule, once
    assert metric(clone) != metric(adopted)
    assert dvc_status_clean(clone, tool_env)
    assert snakemake_dry_run_nothing_to_do(clone, tool_env)
