"""How long `snakemake -n` takes to build the DAG for the full real C-NMC layout.

Uses the public file index (names only, no images) as `data.index`, seed 000's 36 rotations
x mirror at 256 px, and shard counts sized for it. Prints the planned image counts and the
dry-run time; goal: under 10 s. Run: .venv/bin/python benchmarks/dag_dry_run.py
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from hemaflow.data.adapters import list_candidates  # noqa: E402
from hemaflow.data.images import SKIP_REASONS  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--index", default=str(ROOT.parent / "shared/reference/cnmc-file-index.txt"))
    ap.add_argument("--rotations", type=int, default=36)
    args = ap.parse_args()
    index = Path(args.index).resolve()
    if not index.exists():
        sys.exit(f"no C-NMC file index at {index}; pass --index PATH")

    cands, _ = list_candidates("cnmc", "/nonexistent/C-NMC_Leukemia", index=str(index), dataset="cnmc")
    cands = cands[~cands["reason"].isin(list(SKIP_REASONS))]  # testing_data/ (unlabelled) and the labels CSV
    train_folds = int((cands["fold"] >= 0).sum())
    holdout = int(cands["holdout"].sum())
    copies = args.rotations * 2
    names = sum(1 for line in open(index) if line.strip())
    print(f"index: {names:,} names, {len(cands):,} labelled ({train_folds:,} in training folds, {holdout:,} holdout)")
    print(f"seed 000 recipe on the training folds: {train_folds:,} cells x {args.rotations} rotations x mirror"
          f" = {train_folds * copies:,} images")

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"].update(adapter="cnmc", name="cnmc", root="/nonexistent/C-NMC_Leukemia", index=str(index))
    params["preprocess"]["size"] = 256
    params["augment"].update(rotations=args.rotations, mirror=True, shards={"train": 128, "val": 16, "test": 16})
    params["train"]["grid"].update(
        model=["model_1", "model_2", "model_4", "model_5"],
        lr=[0.0001, 0.00025],
        lr_policy=["constant", "triangular"],
        batch_size=[64, 128],
    )
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "params.yaml"
        cfg.write_text(yaml.safe_dump(params))
        cmd = [sys.executable, "-m", "snakemake", "-n", "--quiet", "rules", "--cores", "2",
               "-s", str(ROOT / "Snakefile"), "-d", tmp, "--configfile", str(cfg)]
        start = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True)
        seconds = time.perf_counter() - start
    if out.returncode != 0:
        sys.exit(f"snakemake -n failed:\n{out.stdout}\n{out.stderr}")
    jobs = [line for line in out.stdout.splitlines() if line.strip().startswith("total")]
    print(out.stdout.strip())
    print(f"dry run: {seconds:.2f} s wall ({jobs[0].strip() if jobs else 'job count not printed'}); goal < 10 s")


if __name__ == "__main__":
    main()
