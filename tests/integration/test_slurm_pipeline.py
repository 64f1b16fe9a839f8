"""The default pipeline submitted through profiles/slurm to a real single-node Slurm: every job is a
Slurm job that accounting records as COMPLETED, and the outputs match the local run's."""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime, timedelta

import pytest

from dvc_roundtrip import assert_tree_identical
from harness import copy_repo, planned_jobs
from hemaflow.grid import combos
from slurm_cluster import run_snakemake_on_slurm, sacct_states

pytestmark = pytest.mark.integration

# Built from the same inputs with the same seed: byte-identical to the local run.
DETERMINISTIC = ["data/raw/cnmc-replica", "results/manifests", "results/shards", "results/reports/split_summary.csv"]


def test_default_pipeline_on_slurm_matches_the_local_run(slurm, pipeline, tool_env, params, tmp_path):
    work = copy_repo(tmp_path / "repo", tool_env)
    planned = planned_jobs(work, tool_env)  # all jobs but the target rules, which run locally
    since = datetime.now() - timedelta(seconds=1)  # sacct's start filter has one-second resolution

    # TensorFlow's float sums depend on its thread count, so train and evaluate with the one
    # thread of the local run (the profile's thread mapping is test_slurm_smoke's subject).
    same_threads = ["--set-threads", "train=1", "evaluate=1"]
    proc = run_snakemake_on_slurm(work, None, extra_args=same_threads, cluster=slurm, timeout=3600)
    assert proc.returncode == 0, proc.stderr[-6000:]

    jobs = [j for j in sacct_states(since, slurm) if j.comment.startswith("rule_")]
    assert {j.state for j in jobs} == {"COMPLETED"}, [j for j in jobs if j.state != "COMPLETED"]
    ran = Counter(j.comment.removeprefix("rule_").split("_wildcards_")[0] for j in jobs)
    assert ran == Counter(planned)

    assert_tree_identical(pipeline, work, DETERMINISTIC)
    ids = [*combos(params["train"], params["seed"]), "svm_rbf"]
    local = json.loads((pipeline / "results/reports/metrics.json").read_text())
    remote = json.loads((work / "results/reports/metrics.json").read_text())
    assert set(remote["combos"]) == set(local["combos"]) == set(ids)
    # Same seed, shards and threads, op determinism on: the same models, whichever node trained them.
    assert remote == local
