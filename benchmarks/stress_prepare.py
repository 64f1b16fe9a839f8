"""Seed 000's data half at its real scale: a C-NMC tree with the release's own file names,
through `snakemake prepare` with 36 rotations x mirror (10,661 x 72 = 767,592 training images).

    .venv/bin/python benchmarks/stress_prepare.py --work /tmp/stress [--size 256] [--cores 2]
    .venv/bin/python benchmarks/stress_prepare.py --work /tmp/stress --sample 200   # disk per image only

1. Writes one synthetic 450 x 450 nucleus (hemaflow.data.synth.render_cell, one stain per patient)
   for every labelled name of the public file index (../shared/reference/cnmc-file-index.txt):
   the 10,661 training-fold cells under their real names and patients, and the 1,867 prelim
   holdout cells `1.bmp..1867.bmp` with a labels CSV. The real CSV's patients are not in the
   index, so the holdout is dealt to 28 made-up patients (15 all, 13 hem), 2:1 all:hem.
2. Runs `snakemake prepare` there with config/presets/seed000.yaml (k = --size, shards
   128/16/16), train and val folds augmented (seed 000 augmented all 10,661), and reports wall
   time, augmented images per second, peak RSS per rule from Snakemake's benchmark files, bytes
   written, then the no-op rerun and the dry-run (DAG) time.
Synthetic nuclei are smoother than real ones, whose PNGs are likely larger: read the disk figure
as a lower bound (`--sample N` gives it quickly for another --size).
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import subprocess
import sys
import time
import zlib
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from hemaflow.data.adapters import CNMC_PRELIM_DIR, CNMC_PRELIM_LABELS  # noqa: E402
from hemaflow.data.synth import _blast_likeness, _grid, _save, _stain, render_cell  # noqa: E402

INDEX = ROOT.parent / "shared/reference/cnmc-file-index.txt"
TRAIN_NAME = re.compile(r"training_data/fold_\d/(all|hem)/UID_(\w+?)_\d+_\d+_(all|hem)\.bmp$")
PRELIM_PATIENTS = {"all": 15, "hem": 13}


def plan(index: Path, seed: int) -> tuple[list[tuple[str, str, str]], list[tuple[str, str, int]]]:
    """(relative path, patient, label) of every image to draw, and the prelim labels CSV rows."""
    lines = [line.strip() for line in index.read_text().splitlines() if line.strip()]
    prefix = lines[0].split("/", 1)[0] + "/"
    rel = [line[len(prefix):] for line in lines]
    todo = []
    for path in rel:
        m = TRAIN_NAME.search(path)
        if m:
            todo.append((path, m.group(2).upper(), m.group(3)))
    prelim = sorted((p for p in rel if p.startswith(CNMC_PRELIM_DIR + "/") and p.endswith(".bmp")),
                    key=lambda p: int(Path(p).stem))
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.array(["all"] * round(len(prelim) * 2 / 3) + ["hem"] * (len(prelim) - round(len(prelim) * 2 / 3))))
    rows, cells = [], {}
    for path, label in zip(prelim, labels):
        pid = f"{'' if label == 'all' else 'H'}{900 + int(rng.integers(PRELIM_PATIENTS[label]))}"
        cells[pid] = cells.get(pid, 0) + 1  # one cell per smear image: unique original names
        todo.append((path, pid, str(label)))
        rows.append((f"UID_{pid}_{cells[pid]}_1_{label}.bmp", Path(path).name, int(label == "all")))
    return todo, rows


def _draw(job: tuple[Path, list[tuple[str, str, str]], int]) -> int:
    root, items, seed = job
    grid = _grid(450)
    stains: dict[str, np.ndarray] = {}
    for i, (path, pid, label) in enumerate(items):
        rng = np.random.default_rng([seed, i, zlib.crc32(path.encode())])
        stain = stains.setdefault(pid, _stain(np.random.default_rng([seed, sum(map(ord, pid))])))
        _save(root / path, render_cell(rng, _blast_likeness(rng, label), stain, 450, grid))
    return len(items)


def write_tree(root: Path, index: Path, seed: int, workers: int, sample: int | None) -> int:
    todo, rows = plan(index, seed)
    if sample:
        todo = [todo[i] for i in np.random.default_rng(seed).choice(len(todo), sample, replace=False)]
    done = root.with_name(root.name + ".complete")
    if done.exists() and done.read_text() == str(len(todo)):
        return len(todo)
    chunks = [todo[i::workers * 8] for i in range(workers * 8)]
    with ProcessPoolExecutor(workers) as pool:
        n = sum(pool.map(_draw, [(root, c, seed + k) for k, c in enumerate(chunks)]))
    (root / CNMC_PRELIM_LABELS).parent.mkdir(parents=True, exist_ok=True)
    with open(root / CNMC_PRELIM_LABELS, "w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["Patient_ID", "new_names", "labels"])
        w.writerows(r for r in rows if (root / CNMC_PRELIM_DIR / r[1]).exists())
    done.write_text(str(n))
    return n


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def snakemake(work: Path, cfg: Path, cores: int, *extra: str) -> tuple[float, subprocess.CompletedProcess]:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    cmd = [sys.executable, "-m", "snakemake", "prepare", "--cores", str(cores), "-s", str(ROOT / "Snakefile"),
           "-d", str(work), *extra, "--configfile", str(ROOT / "config/presets/seed000.yaml"), str(cfg)]
    start = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    return time.perf_counter() - start, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True, help="scratch directory (images + results)")
    ap.add_argument("--index", type=Path, default=INDEX)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--cores", type=int, default=2)
    ap.add_argument("--sample", type=int, help="only this many source cells (disk per image)")
    ap.add_argument("--seed", type=int, default=2019)
    args = ap.parse_args()
    work = args.work.resolve()
    images = work / "C-NMC_Leukemia"
    start = time.perf_counter()
    n = write_tree(images, args.index, args.seed, args.cores, args.sample)
    print(f"source tree: {n:,} images, {du(images) / 2**30:.2f} GiB, {time.perf_counter() - start:.0f} s")

    cfg = work / "stress.yaml"
    # Seed 000 augmented every cell of the training folds (10,661 x 72 = 767,592 images); the
    # preset augments only hemaflow's train split (folds 0-1), so val (fold 2) is added here to
    # reach that count. Test (the prelim holdout) gets its deterministic copy.
    # sources_per_class: null, the preset's 3,200-per-class draw off: every cell, as seed 000.
    augment = {"splits": ["train", "val"], "sources_per_class": None, **({"shards": {"train": 4, "val": 1, "test": 1}} if args.sample else {})}
    cfg.write_text(yaml.safe_dump({"data": {"root": str(images)}, "preprocess": {"size": args.size}, "augment": augment}))
    wall, out = snakemake(work, cfg, args.cores)
    if out.returncode != 0:
        sys.exit(f"snakemake prepare failed after {wall:.0f} s:\n{out.stderr[-4000:]}")
    manifest = pd.read_parquet(work / "results/manifests/augmented.parquet", columns=["split"])
    counts = manifest["split"].value_counts()
    shards = du(work / "results/shards")
    print(f"prepare: {wall:.0f} s wall, {len(manifest):,} images ({', '.join(f'{s} {c:,}' for s, c in counts.items())}),"
          f" {len(manifest) / wall:,.0f} images/s")
    print(f"written: shards {shards / 2**30:.2f} GiB ({shards / len(manifest) / 1024:.1f} KiB per image),"
          f" manifests {du(work / 'results/manifests') / 2**20:.1f} MiB, reports {du(work / 'results/reports') / 2**20:.1f} MiB")
    bench = []
    for tsv in (work / "results/benchmarks").rglob("*.tsv"):
        row = pd.read_csv(tsv, sep="\t").iloc[-1]
        rule = tsv.relative_to(work / "results/benchmarks").parts[0].removesuffix(".tsv")
        bench.append({"rule": rule, "s": row["s"], "max_rss": row["max_rss"]})
    table = pd.DataFrame(bench).groupby("rule").agg(jobs=("s", "size"), s_median=("s", "median"), s_max=("s", "max"),
                                                    s_sum=("s", "sum"), rss_max_mb=("max_rss", "max"))
    print(table.round(1).to_string())
    noop, out = snakemake(work, cfg, args.cores)
    print(f"no-op rerun: {noop:.1f} s ({'nothing to be done' if 'Nothing to be done' in out.stdout + out.stderr else 'JOBS RAN'})")
    dag, out = snakemake(work, cfg, args.cores, "-n", "--forceall", "--quiet", "rules")
    print(f"dry run, every job planned (--forceall -n): {dag:.1f} s")


if __name__ == "__main__":
    main()
