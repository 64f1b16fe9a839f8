"""The reviewers' path as functions: push the artifacts, clone, pull, and check nothing needs rebuilding.

`dvc pull` writes files with fresh mtimes in arbitrary order and a clone has no
`.snakemake/metadata`; `adopt_pulled_outputs` repairs both. Why: docs/dvc-and-snakemake.md.
"""

from __future__ import annotations

import filecmp
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import yaml

BIN = Path(sys.executable).parent


def tool_env(home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for git/dvc/snakemake subprocesses: the venv first on PATH, config isolated in `home`, no phoning home."""
    dvc_global = home / "dvc-global"
    dvc_global.mkdir(parents=True, exist_ok=True)
    # DVC's updater and analytics would otherwise try the network on some invocations.
    (dvc_global / "config").write_text("[core]\n    analytics = false\n    check_update = false\n")
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "HOME": str(home),
        "XDG_CACHE_HOME": str(home / "cache"),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": "hemaflow-test",
        "GIT_AUTHOR_EMAIL": "test@localhost",
        "GIT_COMMITTER_NAME": "hemaflow-test",
        "GIT_COMMITTER_EMAIL": "test@localhost",
        "DVC_NO_ANALYTICS": "1",
        "DVC_GLOBAL_CONFIG_DIR": str(dvc_global),
        "DVC_SITE_CACHE_DIR": str(home / "dvc-site-cache"),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    env.update(extra or {})
    return env


def _default_env() -> dict[str, str]:
    """The caller's environment with the venv first on PATH (so dvc.yaml's `snakemake` is this one)."""
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


def run(args: Sequence[str], cwd: Path, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run a command; on failure raise with its full output, which is what one needs to debug it."""
    env = dict(env) if env is not None else _default_env()
    proc = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(
            f"`{' '.join(map(str, args))}` failed in {cwd} (exit {proc.returncode}):\n{proc.stdout[-6000:]}\n{proc.stderr[-6000:]}"
        )
    return proc


def push_clone_pull(
    repo_dir: Path,
    remote_name: str,
    clone_dir: Path,
    env: Mapping[str, str] | None = None,
    *,
    remote_settings: Mapping[str, str] | None = None,
    adopt: bool = True,
) -> Path:
    """Push `repo_dir`'s artifacts to `remote_name`, `git clone` it, `dvc pull` into the clone; return the clone.

    `remote_settings` (e.g. endpointurl, credentials) go to the clone's `.dvc/config.local`, as a
    reviewer would set them. With `adopt`, the pulled outputs are then made current for Snakemake.
    """
    run(["dvc", "push", "-r", remote_name], repo_dir, env)
    Path(clone_dir).parent.mkdir(parents=True, exist_ok=True)
    run(["git", "clone", "--quiet", repo_dir, clone_dir], Path(clone_dir).parent, env)
    for key, value in (remote_settings or {}).items():
        run(["dvc", "remote", "modify", "--local", remote_name, key, value], clone_dir, env)
    run(["dvc", "pull", "-r", remote_name], clone_dir, env)
    if adopt:
        adopt_pulled_outputs(clone_dir, env)
    return Path(clone_dir)


def adopt_pulled_outputs(repo: Path, env: Mapping[str, str] | None = None) -> None:
    """Touch every output in DAG order and record Snakemake metadata for the current code and params.

    Only sound when `dvc status` is clean, i.e. DVC certifies the outputs were made from exactly
    these deps and params; otherwise stale outputs would be declared current, so this refuses.
    """
    if not dvc_status_clean(repo, env):
        raise RuntimeError(
            f"`dvc status` in {repo} is not clean: the outputs do not match the checked-out code/params, "
            "and touching them would declare them current. Restore the committed state (`git stash` or "
            "`git checkout <rev> && dvc checkout`), adopt, then make your change and `dvc repro`."
        )
    run(["snakemake", "--touch", "--forceall", "--cores", "1"], repo, env)


def dvc_status(repo: Path, env: Mapping[str, str] | None = None) -> dict:
    """`dvc status --json`: {stage or file: [changes]}, {} when everything matches dvc.lock."""
    return json.loads(run(["dvc", "status", "--json"], repo, env).stdout or "{}")


def dvc_status_clean(repo: Path, env: Mapping[str, str] | None = None) -> bool:
    return dvc_status(repo, env) == {}


def snakemake_planned_jobs(repo: Path, env: Mapping[str, str] | None = None, args: Sequence[str] = ()) -> dict[str, int]:
    """Rule -> number of jobs `snakemake -n` would run ({} when there is nothing to do)."""
    proc = run(["snakemake", "-n", *args], repo, env)
    text = proc.stdout + proc.stderr
    if "Nothing to be done" in text:
        return {}
    jobs = {}
    for line in text.partition("Job stats:")[2].splitlines()[3:]:
        m = re.match(r"^(\S+)\s+(\d+)\b", line.strip())
        if not m or m.group(1) == "total":
            break
        jobs[m.group(1)] = int(m.group(2))
    if not jobs:
        raise RuntimeError(f"Unrecognised `snakemake -n` output in {repo}:\n{text[-4000:]}")
    return jobs


def snakemake_dry_run_nothing_to_do(repo: Path, env: Mapping[str, str] | None = None) -> bool:
    return snakemake_planned_jobs(repo, env) == {}


def dvc_repro(repo: Path, env: Mapping[str, str] | None = None) -> tuple[list[str], list[str]]:
    """Run `dvc repro`; return the stages DVC ran and the Snakemake rules those stages executed, in order."""
    proc = run(["dvc", "repro"], repo, env)
    text = proc.stdout + proc.stderr
    stages = re.findall(r"^Running stage '([^']+)'", text, flags=re.M)
    rules = re.findall(r"^(?:local)?rule (\w+):$", text, flags=re.M)
    return stages, rules


def dvc_outs(repo: Path, env: Mapping[str, str] | None = None) -> list[str]:
    """Every path DVC versions in `repo`: the outs of dvc.lock and of any git-tracked `*.dvc` file."""
    paths = []
    lock = repo / "dvc.lock"
    if lock.exists():
        for stage in yaml.safe_load(lock.read_text())["stages"].values():
            paths += [o["path"] for o in stage.get("outs", [])]
    for rel in run(["git", "ls-files", "*.dvc"], repo, env).stdout.split():
        base = Path(rel).parent
        paths += [str(base / o["path"]) for o in yaml.safe_load((repo / rel).read_text()).get("outs", [])]
    return paths


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()} if root.is_dir() else {"."}


def assert_tree_identical(a: Path, b: Path, paths: Iterable[str]) -> None:
    """Each path (file or directory) exists under both roots with the same files, byte for byte."""
    problems = []
    for rel in paths:
        pa, pb = Path(a) / rel, Path(b) / rel
        if not pa.exists() or not pb.exists():
            problems.append(f"{rel}: missing under {a if not pa.exists() else b}")
            continue
        fa, fb = _files(pa), _files(pb)
        problems += [f"{rel}/{f}: only under {a}" for f in sorted(fa - fb)]
        problems += [f"{rel}/{f}: only under {b}" for f in sorted(fb - fa)]
        for f in sorted(fa & fb):
            if not filecmp.cmp(pa / f, pb / f, shallow=False):
                problems.append(f"{rel}/{f}: contents differ")
    assert not problems, "trees differ:\n" + "\n".join(problems)
