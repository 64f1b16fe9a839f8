"""Running the real workflow from tests: a fresh-clone copy of the repository, Snakemake, DVC.

Importable from every test directory (pytest puts tests/ on sys.path for tests/conftest.py).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# Credentials of the S3 server the integration tests start on loopback (moto).
S3_KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
# The Snakefile's target rules: they only name outputs, so they are not work.
TARGET_RULES = {"all", "replica", "prepare", "models", "evaluation", "explanation"}


def _local_rules() -> frozenset[str]:
    """The Snakefile's `localrules:` block: rules that run on the submitting host, never as cluster jobs."""
    block = re.search(r"^localrules:\n((?:[ \t]+\w+,?[ \t]*\n)+)", (ROOT / "Snakefile").read_text(), re.M)
    if block is None:
        raise RuntimeError(f"No `localrules:` block found in {ROOT / 'Snakefile'}")
    return frozenset(re.findall(r"\w+", block.group(1)))


LOCAL_RULES = _local_rules()


def tool_env(home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for git/dvc/snakemake subprocesses: the venv first on PATH, config isolated in `home`."""
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


def run(args: Sequence, cwd: Path, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run a command; on failure raise with the tail of its output, which is what one needs to debug it."""
    env = dict(env) if env is not None else {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(
            f"`{' '.join(map(str, args))}` failed in {cwd} (exit {proc.returncode}):\n"
            f"{proc.stdout[-6000:]}\n{proc.stderr[-8000:]}"
        )
    return proc


def copy_repo(dest: Path, env: Mapping[str, str]) -> Path:
    """What a fresh clone holds, committed to a new git repository: tracked files and new source
    files (work in progress), never what a run left in results/ or data/."""
    tracked = run(["git", "ls-files", "-c"], ROOT).stdout.splitlines()
    new = run(["git", "ls-files", "-o", "--exclude-standard"], ROOT).stdout.splitlines()
    listed = tracked + [rel for rel in new if not rel.startswith(("results/", "data/"))]
    for rel in listed:
        src = ROOT / rel
        if src.is_symlink() or src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel, follow_symlinks=False)
    run(["git", "init", "--quiet", "--initial-branch", "main"], dest, env)
    run(["git", "add", "-A"], dest, env)
    run(["git", "commit", "--quiet", "-m", "copy of the working tree"], dest, env)
    return dest


def snakemake(workdir: Path, env: Mapping[str, str], *args: str) -> subprocess.CompletedProcess:
    return run(["snakemake", "--cores", "2", *args], workdir, env)


def planned_jobs(workdir: Path, env: Mapping[str, str], *args: str) -> dict[str, int]:
    """Rule -> number of jobs `snakemake -n` would run, target rules left out ({} when there is nothing to do)."""
    proc = run(["snakemake", "-n", *args], workdir, env)
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
        raise RuntimeError(f"Unrecognised `snakemake -n` output in {workdir}:\n{text[-4000:]}")
    return {rule: n for rule, n in jobs.items() if rule not in TARGET_RULES}


def write_override(workdir: Path, name: str, values: dict) -> str:
    """A --configfile overlay; returns its path."""
    path = workdir / name
    path.write_text(yaml.safe_dump(values))
    return str(path)


def params() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def train_settings(**overrides):
    """hemaflow.train.settings.TrainSettings from the schema's defaults with `overrides`."""
    from hemaflow.config import load_schema, with_defaults
    from hemaflow.train.settings import TrainSettings

    train = with_defaults({}, load_schema(ROOT / "workflow/schemas/params.schema.yaml"))["train"]
    return TrainSettings.from_config({**train, **overrides})


def fit(combo: dict, *, seed: int, out_dir, history_path=None, callbacks=(), threads: int = 1, device=None, **fields):
    """hemaflow.train.fit.train_combo with its TrainData and TrainSettings built from keywords:
    the data's fields (all of them), then any train settings to change from the schema's defaults."""
    from dataclasses import fields as fields_of

    from hemaflow.train.fit import train_combo
    from hemaflow.train.settings import TrainData

    data = {f.name: fields.pop(f.name) for f in fields_of(TrainData) if f.name in fields}
    return train_combo(combo, TrainData(**data), train_settings(**fields), seed=seed, out_dir=out_dir,
                       history_path=history_path, callbacks=callbacks, threads=threads, device=device)  # fmt: skip


# The real-image fixture set beside the clone (../shared/data/bccd-wbc), and the smallest run on it.
BCCD = Path(os.environ.get("HEMAFLOW_SHARED", ROOT.parent / "shared")) / "data" / "bccd-wbc"
BCCD_PREPROCESS = {"background": "natural", "size": 32, "crop_to_content": False, "pad_square": True, "filter": "none"}


def bccd_config(index: str) -> dict:
    """A --configfile for one model_1 epoch on the bccd-wbc images listed in `index` (32 px, no
    augmentation, a 2:1:1 split, no SVM, no fusion)."""
    return {
        "data": {"adapter": "folders", "name": "bccd", "root": str(BCCD), "index": index, "patient_sheet": None},
        "split": {"use_dataset_folds": False, "ratios": [2, 1, 1]},
        "preprocess": BCCD_PREPROCESS,
        "augment": {"rotations": 1, "mirror": False, "random_copies": 0, "shards": {"train": 1, "val": 1, "test": 1}},
        "train": {"grid": {"model": ["model_1"], "optimizer": ["adam"], "lr": [0.001], "lr_policy": ["constant"],
                           "batch_size": [16], "dropout": [0.25]},
                  "fusion": [], "max_epochs": 1, "patience": 1, "baseline_svm": False},
    }  # fmt: skip
