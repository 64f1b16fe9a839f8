"""The pipeline submitted through profiles/slurm to a real single-node Slurm: every job is a Slurm
job that accounting records as COMPLETED, and the outputs match the local run's.

Submitted: one CNN combination trained and evaluated, and the data half it reads. The other
combinations run the same rules with other parameters, so they would add only minutes of
training (test_slurm_smoke checks the profile's thread and resource mapping).
"""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime, timedelta

import pytest

from dvc_roundtrip import assert_tree_identical
from harness import LOCAL_RULES, copy_repo, planned_jobs
from hemaflow.train.grid import combos
from slurm_cluster import run_snakemake_on_slurm, sacct_states

pytestmark = pytest.mark.integration

# Built from the same inputs with the same seed: byte-identical to the local run.
DETERMINISTIC = ["data/raw/cnmc-replica", "results/manifests", "results/shards", "results/reports/split_summary.csv"]


def test_data_half_and_one_combination_on_slurm_match_the_local_run(slurm, pipeline, tool_env, params, tmp_path):
    work = copy_repo(tmp_path / "repo", tool_env)
    combo = next(iter(combos(params["train"], params["seed"])))
    targets = [f"results/evaluation/{combo}/metrics.json"]  # and the data half it reads
    planned = planned_jobs(work, tool_env, *targets)
    assert planned["train"] == 1 and planned["augment_shard"] > 1, planned
    since = datetime.now() - timedelta(seconds=1)  # sacct's start filter has one-second resolution

    # TensorFlow's float sums depend on its thread count, so train and evaluate with the one
    # thread of the local run (the profile's thread mapping is test_slurm_smoke's subject).
    same_threads = ["--set-threads", "train=1", "evaluate=1"]
    proc = run_snakemake_on_slurm(work, None, targets, same_threads, cluster=slurm, timeout=2400)
    assert proc.returncode == 0, proc.stderr[-6000:]

    jobs = [j for j in sacct_states(since, slurm) if j.comment.startswith("rule_")]
    assert {j.state for j in jobs} == {"COMPLETED"}, [j for j in jobs if j.state != "COMPLETED"]
    ran = Counter(j.comment.removeprefix("rule_").split("_wildcards_")[0] for j in jobs)
    # Local rules (e.g. grid, a small JSON) run on the submitting host, not as Slurm jobs.
    assert ran == Counter({rule: n for rule, n in planned.items() if rule not in LOCAL_RULES})

    assert_tree_identical(pipeline, work, DETERMINISTIC)
    # Same seed, shards and threads, op determinism on: the same model, whichever node trained it.
    local = json.loads((pipeline / f"results/evaluation/{combo}/metrics.json").read_text())
    remote = json.loads((work / f"results/evaluation/{combo}/metrics.json").read_text())
    assert remote == local
