"""Run the default pipeline once per session in a clean copy of the repository."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def tracked_files(repo: Path) -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=repo, capture_output=True, text=True, check=True
    )
    return [line for line in out.stdout.splitlines() if line]


def copy_repo(dest: Path) -> Path:
    """What a fresh clone holds: tracked and new, non-ignored files (no results, no .venv)."""
    for rel in tracked_files(ROOT):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "snakemake", "--cores", "2", *args]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    out = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, env=env)
    if check and out.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed in {workdir}:\n{out.stdout[-4000:]}\n{out.stderr[-8000:]}")
    return out


def planned_jobs(workdir: Path, *args: str) -> dict[str, int]:
    """Rule -> number of jobs a dry run would execute ({} when there is nothing to do)."""
    out = snakemake(workdir, "-n", *args)
    text = out.stdout + out.stderr
    if "Nothing to be done" in text:
        return {}
    stats = text.split("Job stats:", 1)[1]
    jobs = {}
    for line in stats.splitlines():
        m = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if m and m.group(1) != "total":
            jobs[m.group(1)] = int(m.group(2))
        if line.strip().startswith("total"):
            break
    return jobs


def write_override(workdir: Path, name: str, values: dict) -> str:
    path = workdir / name
    path.write_text(yaml.safe_dump(values))
    return str(path)


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory) -> Path:
    """The default pipeline, run to completion once: the directory holding its results."""
    work = copy_repo(tmp_path_factory.mktemp("pipeline"))
    snakemake(work)
    return work


@pytest.fixture(scope="session")
def params() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())
