"""Session fixtures shared by workflow and integration tests: the default pipeline, run once."""

from __future__ import annotations

from pathlib import Path

import pytest

import harness


@pytest.fixture(scope="session")
def params() -> dict:
    return harness.params()


@pytest.fixture(scope="session")
def tool_env(tmp_path_factory) -> dict[str, str]:
    """Environment for git/dvc/snakemake subprocesses, with config isolated in a temporary HOME.

    AWS settings point only at the loopback S3 server of the integration tests, never at real
    credentials or the instance-metadata address.
    """
    return harness.tool_env(
        tmp_path_factory.mktemp("home"),
        {
            **harness.S3_KEYS,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
        },
    )


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory, tool_env) -> Path:
    """A fresh-clone copy of the repository after `snakemake --cores 2`: the default pipeline, complete.

    Read-only for tests: a test that changes things works on its own copy (shutil.copytree).
    """
    work = harness.copy_repo(tmp_path_factory.mktemp("pipeline"), tool_env)
    proc = harness.snakemake(work, tool_env)
    (work.parent / "console.txt").write_text(proc.stdout + proc.stderr)  # what the user saw, beside the copy
    return work
