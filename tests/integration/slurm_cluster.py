"""Start, use and stop the single-node Slurm of tests/integration/slurm/ from tests.

`slurm_cluster()` runs setup.sh and teardown.sh around a block; `run_snakemake_on_slurm`
runs Snakemake with profiles/slurm fitted to that cluster; `sacct_states` reads back
what Slurm's accounting recorded.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Iterator, NamedTuple, Sequence

import pytest
import yaml

SCRIPTS = Path(__file__).resolve().parent / "slurm"
PROFILE = Path(__file__).resolve().parents[2] / "profiles" / "slurm" / "config.yaml"
STATE = Path(os.environ.get("HEMAFLOW_SLURM_STATE", "/tmp/hemaflow-slurm"))
# The first setup.sh on a clean machine installs Debian packages (about two minutes).
SETUP_TIMEOUT = 1800
# Resources that name site hardware the test node does not have.
SITE_ONLY = {"slurm_account", "slurm_partition", "gpu", "gpu_model", "gres", "cpus_per_gpu",
             "tasks_per_gpu", "constraint", "qos", "slurm_extra"}


@dataclass(frozen=True)
class SlurmCluster:
    """The running test cluster, as setup.sh wrote it to $STATE/cluster.env."""

    slurm_conf: Path
    cluster: str
    account: str
    partition: str
    node: str
    cpus: int
    mem_mb: int

    @property
    def env(self) -> dict[str, str]:
        """os.environ plus SLURM_CONF, for any Slurm client or Snakemake run."""
        return {**os.environ, "SLURM_CONF": str(self.slurm_conf)}


class SacctJob(NamedTuple):
    job_id: str
    name: str  # the executor plugin names every job of one run by the run's UUID
    state: str  # first word: "CANCELLED by 0" -> "CANCELLED"
    comment: str  # the plugin's "rule_<rule>[_wildcards_<values>]"


def skip_unless_possible() -> None:
    """Skip the calling test where setup.sh cannot work."""
    if os.geteuid() != 0:
        pytest.skip("the Slurm integration tests need root: they install Debian packages and start daemons")
    if shutil.which("apt-get") is None:
        pytest.skip("the Slurm integration tests need apt-get (Debian packages slurm-wlm, slurmdbd, munge, mariadb-server)")


def current_cluster() -> SlurmCluster:
    """The cluster setup.sh last brought up (errors if there is none)."""
    path = STATE / "cluster.env"
    if not path.exists():
        raise RuntimeError(f"{path} not found: start the cluster with {SCRIPTS / 'setup.sh'} (or slurm_cluster())")
    env = dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return SlurmCluster(
        slurm_conf=Path(env["SLURM_CONF"]),
        cluster=env["HEMAFLOW_SLURM_CLUSTER"],
        account=env["HEMAFLOW_SLURM_ACCOUNT"],
        partition=env["HEMAFLOW_SLURM_PARTITION"],
        node=env["HEMAFLOW_SLURM_NODE"],
        cpus=int(env["HEMAFLOW_SLURM_CPUS"]),
        mem_mb=int(env["HEMAFLOW_SLURM_MEM_MB"]),
    )


def _script(name: str, timeout: float) -> None:
    proc = subprocess.run(["bash", str(SCRIPTS / name)], capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        pytest.fail(f"{SCRIPTS / name} failed (exit {proc.returncode}):\n{proc.stdout}{proc.stderr}", pytrace=False)


@contextmanager
def slurm_cluster(keep_running: bool | None = None) -> Iterator[SlurmCluster]:
    """Bring the cluster up (installing it on first use), yield it, stop it.

    keep_running (default: env HEMAFLOW_SLURM_KEEP=1) skips the teardown, for reruns.
    """
    skip_unless_possible()
    if keep_running is None:
        keep_running = os.environ.get("HEMAFLOW_SLURM_KEEP") == "1"
    try:
        _script("setup.sh", SETUP_TIMEOUT)
        yield current_cluster()
    finally:
        if not keep_running:
            _script("teardown.sh", 120)


def slurm_cluster_fixture(name: str = "slurm", scope: str = "session"):
    """A pytest fixture `name` around slurm_cluster(); assign it in a test module or conftest."""

    @pytest.fixture(name=name, scope=scope)
    def _fixture() -> Iterator[SlurmCluster]:
        with slurm_cluster() as cluster:
            yield cluster

    return _fixture


def _fit(resources: dict, cluster: SlurmCluster) -> dict:
    """Drop site hardware and cap numbers at what the one test node has."""
    fitted = {k: v for k, v in resources.items() if k not in SITE_ONLY}
    for key, cap in (("mem_mb", cluster.mem_mb), ("cpus_per_task", cluster.cpus)):
        if isinstance(fitted.get(key), int):
            fitted[key] = min(fitted[key], cap)
    return fitted


def local_profile(cluster: SlurmCluster, dest: Path, base: Path = PROFILE, first_status_check: int = 3) -> Path:
    """Write `base` fitted to the test cluster into dest/config.yaml; return dest.

    Account and partition become the cluster's, requests are capped at its one node,
    and status checks start after `first_status_check` seconds (the plugin waits 40).
    """
    profile = yaml.safe_load(base.read_text())
    profile["default-resources"] = {
        **_fit(profile.get("default-resources", {}), cluster),
        "slurm_account": cluster.account,
        "slurm_partition": cluster.partition,
    }
    profile["set-resources"] = {rule: _fit(res, cluster) for rule, res in profile.get("set-resources", {}).items()}
    profile["set-threads"] = {rule: min(n, cluster.cpus) for rule, n in profile.get("set-threads", {}).items()}
    profile["max-threads"] = cluster.cpus  # rules' own `threads:` too
    profile.update({"latency-wait": 5, "retries": 0, "slurm-init-seconds-before-status-checks": first_status_check})
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "config.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    return dest


def run_snakemake_on_slurm(
    workdir: Path,
    snakefile: Path | None,
    targets: Sequence[str] = (),
    extra_args: Sequence[str] = (),
    *,
    cluster: SlurmCluster | None = None,
    timeout: float = 1800,
) -> subprocess.CompletedProcess:
    """Run Snakemake in `workdir` through the Slurm executor with profiles/slurm fitted to the test cluster.

    snakefile None means workdir's own Snakefile. Output is captured (text); check returncode.
    """
    cluster = cluster or current_cluster()
    workdir = Path(workdir)
    profile = local_profile(cluster, workdir / ".slurm-test-profile")
    cmd = [sys.executable, "-m", "snakemake", "--profile", str(profile), "--directory", str(workdir)]
    if snakefile is not None:
        cmd += ["--snakefile", str(snakefile)]
    # Targets first: options such as --set-threads or --configfile take every value after them.
    cmd += [*targets, *extra_args]
    return subprocess.run(cmd, cwd=workdir, env=cluster.env, capture_output=True, text=True, timeout=timeout)


def sacct_states(since: datetime, cluster: SlurmCluster | None = None) -> list[SacctJob]:
    """Every job (allocation, not steps) that Slurm accounting has recorded since `since`."""
    cluster = cluster or current_cluster()
    out = subprocess.run(
        ["sacct", "--allusers", "--allocations", "--noheader", "--parsable2",
         "--starttime", since.strftime("%Y-%m-%dT%H:%M:%S"),
         "--format", "JobIDRaw,JobName%256,State,Comment%256"],
        env=cluster.env, capture_output=True, text=True, check=True,
    ).stdout
    jobs = []
    for line in out.splitlines():
        job_id, name, state, comment = line.split("|", 3)
        jobs.append(SacctJob(job_id, name, state.split()[0], comment))
    return jobs
