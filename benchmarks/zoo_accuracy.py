"""Accuracy and time per epoch of zoo models trained side by side on one split of the
class-per-folder replica (one patient-disjoint split, the same shards for every model).

    .venv/bin/python benchmarks/zoo_accuracy.py --work /tmp/zoo [--models matek_cnn mobilenetv3_small]
        [--classes 8] [--cells 60] [--size 64] [--epochs 40]

Runs `snakemake leaderboard` in --work on the replica (synthetic.layout: folders) with every
model in one grid (Adam, lr 1e-3, batch 32, early stopping with --patience, 4 rotations x mirror),
then prints, per model: epochs run, best epoch, seconds per epoch (train.json wall_seconds over
epochs_run, so tracing and the first epoch are included), validation and test accuracy and
balanced accuracy. Models train as parallel jobs, one thread each, so the timings of the
two cores are comparable with each other.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--models", nargs="+", default=["matek_cnn", "mobilenetv3_small"])
    ap.add_argument("--classes", type=int, default=8)
    ap.add_argument("--cells", type=int, default=60, help="cells per class")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--patience", type=int, default=15,
                    help="early stopping; keras.applications backbones' BatchNorm statistics (momentum up to "
                         "0.999) lag for the first epochs of a from-scratch run, so a short patience stops them early")
    ap.add_argument("--cores", type=int, default=2)
    args = ap.parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    overlay = {
        "data": {"adapter": "synthetic", "name": "replica", "root": str(work / "replica"),
                 "patient_regex": r"^(?P<patient>P\d+)_", "patient_sheet": None},
        "synthetic": {"layout": "folders", "classes": args.classes, "cells_per_class": args.cells, "imbalance": 1,
                      "patients": 20, "image_size": args.size},
        "preprocess": {"background": "natural", "size": args.size, "crop_to_content": False},
        "split": {"use_dataset_folds": False, "ratios": [6, 2, 2]},
        "augment": {"rotations": 4, "mirror": True, "shards": {"train": 2, "val": 1, "test": 1}},
        "train": {"grid": {"model": args.models, "optimizer": ["adam"], "lr": [0.001], "lr_policy": ["constant"],
                           "batch_size": [32], "dropout": [0.25]},
                  "fusion": [], "baseline_svm": False, "max_epochs": args.epochs, "patience": args.patience},
    }  # fmt: skip
    cfg = work / "zoo.yaml"
    cfg.write_text(yaml.safe_dump(overlay))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    cmd = [sys.executable, "-m", "snakemake", "leaderboard", "--cores", str(args.cores), "-s", str(ROOT / "Snakefile"),
           "-d", str(work), "--configfile", str(cfg)]
    start = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        sys.exit(f"snakemake failed:\n{out.stderr[-4000:]}")
    print(f"snakemake leaderboard: {time.perf_counter() - start:.0f} s wall")
    board = pd.read_csv(work / "results/reports/leaderboard.csv").set_index("combo")
    # The leaderboard shows test figures for the selected row alone; a benchmark of the zoo compares
    # every model's, from the file kept for that (never for choosing).
    tests = pd.read_csv(work / "results/reports/test_of_every_combination.csv").set_index("combo")
    board = board.drop(columns=[c for c in tests.columns if c in board.columns and c != "inputs"]).join(
        tests.drop(columns=[c for c in ("rank", "inputs") if c in tests.columns]))
    rows = []
    for combo in board.index:
        info = json.loads((work / f"results/models/{combo}/train.json").read_text())
        rows.append({"model": info["model"], "epochs": info["epochs_run"], "best_epoch": info["best_epoch"],
                     "s_per_epoch": info["wall_seconds"] / info["epochs_run"], "n_train": info["n_train"],
                     **{c: board.loc[combo, c] for c in ("val_accuracy", "val_balanced_accuracy", "test_accuracy",
                                                         "test_balanced_accuracy") if c in board}})  # fmt: skip
    print(pd.DataFrame(rows).round(3).to_string(index=False))


if __name__ == "__main__":
    main()
