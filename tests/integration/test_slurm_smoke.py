"""A three-rule workflow through Snakemake's Slurm executor on the real single-node test cluster."""

from datetime import datetime, timedelta

import pytest

from slurm_cluster import run_snakemake_on_slurm, sacct_states

pytestmark = pytest.mark.integration

# Each job records where it ran; `wide` asks for two threads, which the profile turns
# into --cpus-per-task=2.
SNAKEFILE = """
RECORD = 'echo "host=$(hostname) job=${{SLURM_JOB_ID:-none}} cpus=${{SLURM_CPUS_PER_TASK:-none}}" > {output}'

rule all:
    input:
        "out/combined.txt",

rule narrow:
    output:
        "out/narrow.txt",
    shell:
        RECORD

rule wide:
    output:
        "out/wide.txt",
    threads: 2
    shell:
        RECORD

rule combined:
    input:
        "out/narrow.txt",
        "out/wide.txt",
    output:
        "out/combined.txt",
    shell:
        RECORD
"""


def read_record(path):
    return dict(field.split("=", 1) for field in path.read_text().split())


def test_workflow_runs_as_slurm_jobs(slurm, tmp_path):
    snakefile = tmp_path / "Snakefile"
    snakefile.write_text(SNAKEFILE)
    # sacct's start filter has one-second resolution.
    since = datetime.now() - timedelta(seconds=1)

    proc = run_snakemake_on_slurm(tmp_path, snakefile, ["all"], cluster=slurm)
    assert proc.returncode == 0, proc.stderr[-4000:]

    records = {rule: read_record(tmp_path / "out" / f"{rule}.txt") for rule in ("narrow", "wide", "combined")}
    job_ids = {rule: rec["job"] for rule, rec in records.items()}
    assert all(j.isdigit() for j in job_ids.values()), records
    assert len(set(job_ids.values())) == 3, "each rule should be its own Slurm job"
    assert {rec["host"] for rec in records.values()} == {slurm.node}
    assert records["wide"]["cpus"] == "2"
    assert records["narrow"]["cpus"] == "1"

    accounted = {job.job_id: job for job in sacct_states(since, slurm)}
    for rule, job_id in job_ids.items():
        assert job_id in accounted, f"sacct has no job {job_id} ({rule}): {sorted(accounted)}"
        assert accounted[job_id].state == "COMPLETED"
        assert accounted[job_id].comment == f"rule_{rule}"
