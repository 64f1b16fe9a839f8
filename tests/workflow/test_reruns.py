"""Interrupted, damaged or failed runs are redone: the next `snakemake prepare` rebuilds what a
`kill -9` or a deleted file left missing, and a strict ingest that failed fails again."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest

from harness import copy_repo, write_override
from harness import params as default_params

pytestmark = pytest.mark.slow  # a real `prepare` of a tiny replica: about a minute on 2 cores

# The smallest replica with the default three folds; the default shard counts (several jobs per split).
TINY = {
    "synthetic": {"folds": 3, "patients_per_fold": {"all": 1, "hem": 1}, "holdout_patients": {"all": 1, "hem": 1},
                  "cells_per_patient": [2, 2], "image_size": 64},
    "augment": {"contact_sheet": 2},
}  # fmt: skip


def prepare(work: Path, env, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["snakemake", "--cores", "2", "prepare", *args], cwd=work, env=env, capture_output=True, text=True)


def assert_complete(work: Path) -> None:
    """Every shard and shard manifest is there, each split's manifests hold exactly its images, and
    the merged manifest is their union."""
    splits = pd.read_parquet(work / "results/manifests/splits.parquet")
    merged = pd.read_parquet(work / "results/manifests/augmented.parquet")
    parts = []
    for split, n in default_params()["augment"]["shards"].items():
        for shard in range(n):
            record = work / f"results/shards/{split}/{shard:03d}.tfrecord"
            assert record.is_file(), record  # a shard of a tiny split may hold no record
            parts.append(pd.read_parquet(work / f"results/manifests/shards/{split}/{shard:03d}.parquet"))
        ids = set(pd.concat(parts).query("split == @split")["image_id"])
        assert ids == set(splits.loc[splits["split"] == split, "image_id"]), split
    assert sorted(merged["aug_id"]) == sorted(pd.concat(parts)["aug_id"])


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory, tool_env):
    """A `prepare` killed (SIGKILL, its whole process group) while a shard job runs, then run again
    after `--unlock` with the same command: (work dir, override, the rerun's result)."""
    work = copy_repo(tmp_path_factory.mktemp("killed"), tool_env)
    override = write_override(work, "tiny.yaml", TINY)
    proc = subprocess.Popen(["snakemake", "--cores", "2", "prepare", "--configfile", override], cwd=work, env=tool_env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
    logs, deadline = work / "results/logs/augment", time.monotonic() + 300
    try:
        while not (logs.is_dir() and any(logs.rglob("*.log"))):
            assert proc.poll() is None, "prepare ended before any shard job started"
            assert time.monotonic() < deadline, "no shard job started in 5 minutes"
            time.sleep(0.2)
        time.sleep(1.0)  # inside the job's script
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (work / "results/manifests/augmented.parquet").exists(), "killed too late: the shards were done"
    subprocess.run(["snakemake", "--unlock", "--configfile", override], cwd=work, env=tool_env, check=True, capture_output=True)
    # the same command again: profiles/default (read without --profile) sets rerun-incomplete
    return work, override, prepare(work, tool_env, "--configfile", override)


def test_a_run_killed_during_a_shard_job_is_finished_by_the_next(interrupted):
    work, _, rerun = interrupted
    assert rerun.returncode == 0, rerun.stderr[-4000:]
    assert_complete(work)


def test_a_deleted_shard_is_rebuilt(interrupted, tool_env):
    work, override, _ = interrupted
    shard = work / "results/shards/train/001.tfrecord"
    shard.unlink()
    rerun = prepare(work, tool_env, "--configfile", override)
    assert rerun.returncode == 0, rerun.stderr[-4000:]
    assert "Nothing to be done" not in rerun.stdout + rerun.stderr
    assert shard.is_file()
    assert_complete(work)


def test_a_failed_strict_ingest_fails_again_on_the_next_run(interrupted, tool_env, tmp_path):
    done, _, _ = interrupted
    work = tmp_path / "strict"
    shutil.copytree(done, work, symlinks=True)  # a finished non-strict run, then data.strict and a bad file
    bad = next((work / "data/raw/cnmc-replica/training_data/fold_0/all").glob("*.bmp"))
    bad.write_bytes(b"not an image")
    override = write_override(tmp_path, "strict.yaml", {**TINY, "data": {"strict": True}})
    for attempt in ("first", "second"):
        result = prepare(work, tool_env, "--configfile", override)
        assert result.returncode != 0, f"{attempt} strict run passed:\n{result.stderr[-3000:]}"
        assert "data.strict is true" in (work / "results/logs/ingest.log").read_text(), result.stderr[-3000:]
        assert not (work / "results/manifests/sources.parquet").exists()
