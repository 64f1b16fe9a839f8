"""The reviewers' path as functions: push the artifacts, clone, pull, and check nothing needs rebuilding.

`dvc pull` writes files with fresh mtimes in arbitrary order and a clone has no
`.snakemake/metadata`; `adopt_pulled_outputs` repairs both. Why: docs/dvc-and-snakemake.md.
"""

from __future__ import annotations

import filecmp
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import yaml

from harness import planned_jobs, run


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


def snakemake_dry_run_nothing_to_do(repo: Path, env: Mapping[str, str] | None = None) -> bool:
    return planned_jobs(repo, env) == {}


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


def dvc_plots(repo: Path, env: Mapping[str, str] | None = None) -> dict:
    """`dvc plots show --json` with `repo`'s own path taken out (image urls are absolute), and the
    plot ids of dvc.yaml's `plots:` that no shown plot comes from (a file, or a directory's files)."""
    shown = json.loads(run(["dvc", "plots", "show", "--json"], repo, env).stdout.replace(str(repo), "<repo>"))
    plots = yaml.safe_load((repo / "dvc.yaml").read_text())["plots"]
    declared = [p if isinstance(p, str) else next(iter(p)) for p in plots]
    shown["undrawn"] = [p for p in declared if not any(k == p or k.startswith(p + "/") for k in shown["data"])]
    return shown


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
