"""Test accuracy against wall time: hemaflow's recipe (config/presets/recipe.yaml) against the seeds'
best models on class-per-folder smear crops, same data, same cores, same time budget.

    .venv/bin/python benchmarks/recipe.py --work /tmp/recipe --set replica   # and --set bccd
        [--budget 150] [--size 48] [--rotations 2] [--threads 2] [--arms recipe matek_cnn model_1]
    .venv/bin/python benchmarks/recipe.py --work /tmp/recipe --plot benchmarks/results/recipe.png

Data: `snakemake prepare` in --work (scratch; the data half only) on the class-per-folder replica
(synthetic.layout: folders, 8 classes x 60 cells, 20 patients, patient-disjoint 6/2/2 split, as
benchmarks/zoo_accuracy.py) or on ../shared/data/bccd-wbc read in place (never copied; 4 classes:
its 3 basophils are dropped with data.label_map, the split cannot stratify 3 images; no patient
ids, so the split is image-level), natural background, --size px, --rotations rotations x mirror.

Arms, each in its own process on the same shards, one after another, `--threads` TensorFlow
threads, the same --budget seconds of wall time from the start of train_combo (building and
tracing included): an epoch is not started when the budget would not hold it (the mean epoch
so far), and the weights of the best validation epoch are kept, as in a pipeline run.
- recipe: the preset's model and training options (cell_resnet, AdamW, cosine with warm-up,
  label smoothing); its schedule is laid over the epochs the budget holds (a 1-epoch probe run
  first measures an epoch), early stopping off.
- matek_cnn (seed 003) and model_1 (seed 000): Adam 1e-3 constant, batch 32, dropout 0.25,
  early stopping patience 5, the seeds' recipes.
After every epoch the current weights are scored on the test split (that time is not counted);
the final test accuracy is the kept (best-validation) model's. Writes <work>/<set>.json; --plot
draws every <work>/*.json into one PNG.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("HEMAFLOW_SHARED", ROOT.parent / "shared"))
SEED_ARM = {"optimizer": "adam", "lr": 0.001, "lr_policy": "constant", "batch_size": 32, "dropout": 0.25}


def overlay(name: str, work: Path, size: int, rotations: int) -> dict:
    common = {
        "preprocess": {"background": "natural", "size": size, "crop_to_content": False},
        "split": {"use_dataset_folds": False, "ratios": [6, 2, 2]},
        "augment": {"rotations": rotations, "mirror": True, "shards": {"train": 2, "val": 1, "test": 1}},
        "train": {"fusion": [], "baseline_svm": False},
    }
    if name == "replica":
        return {**common,
                "data": {"adapter": "synthetic", "name": "replica", "root": str(work / "replica"),
                         "patient_regex": r"^(?P<patient>P\d+)_", "patient_sheet": None},
                "synthetic": {"layout": "folders", "classes": 8, "cells_per_class": 60, "imbalance": 1,
                              "patients": 20, "image_size": max(64, size)}}  # fmt: skip
    if name == "bccd":
        root = SHARED / "data" / "bccd-wbc"
        if not root.is_dir():
            sys.exit(f"{root} is not there (the real-image set lives beside the clone, in ../shared)")
        return {**common,
                "data": {"adapter": "folders", "name": "bccd", "root": str(root), "patient_regex": None,
                         "patient_sheet": None, "label_map": {"Basophil": None, "Eosinophil": "Eosinophil",
                         "Lymphocyte": "Lymphocyte", "Monocyte": "Monocyte", "Neutrophil": "Neutrophil"}}}  # fmt: skip
    sys.exit(f"--set must be replica or bccd, got {name}")


def prepare(work: Path, cfg: dict, cores: int) -> None:
    work.mkdir(parents=True, exist_ok=True)
    path = work / "overlay.yaml"
    path.write_text(yaml.safe_dump(cfg))
    (work / "params.yaml").write_text((ROOT / "params.yaml").read_text())  # the Snakefile reads it from the workdir
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    cmd = [sys.executable, "-m", "snakemake", "prepare", "--cores", str(cores), "-s", str(ROOT / "Snakefile"),
           "-d", str(work), "--configfile", str(path)]  # fmt: skip
    start = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        sys.exit(f"snakemake prepare failed:\n{out.stderr[-4000:]}")
    print(f"snakemake prepare ({work.name}): {time.perf_counter() - start:.0f} s", flush=True)


def data_of(work: Path) -> dict:
    import pandas as pd

    from hemaflow.data.manifest import read_classes

    res = work / "results"
    records = {s: sorted(str(p) for p in (res / "shards" / s).glob("*.tfrecord")) for s in ("train", "val", "test")}
    manifests = {s: sorted((res / "manifests" / "shards" / s).glob("*.parquet")) for s in ("train", "val", "test")}
    train_rows = pd.concat([pd.read_parquet(p, columns=["label_index"]) for p in manifests["train"]])
    return {
        "records": records,
        "classes": read_classes(res / "manifests" / "classes.json"),
        "class_counts": {int(k): int(v) for k, v in train_rows["label_index"].value_counts().items()},
        "n_val": int(sum(len(pd.read_parquet(p, columns=["index"])) for p in manifests["val"])),
        "n_test": int(sum(len(pd.read_parquet(p, columns=["index"])) for p in manifests["test"])),
    }


CHILD = r"""
import json, os, sys, time
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
args = json.loads(sys.argv[1])
from hemaflow.train.device import use_threads
use_threads(args["threads"])
import keras, numpy as np
from hemaflow.config import load_schema, with_defaults
from hemaflow.train.fit import train_combo
from hemaflow.train.input import make_dataset
from hemaflow.train.settings import TrainData, TrainSettings

d = args["data"]
n_classes, channels, size = len(d["classes"]), args["channels"], args["size"]
test = make_dataset(d["records"]["test"], channels=channels, n_classes=n_classes, batch_size=64, shuffle=False,
                    seed=0, size=size)
labels = np.concatenate([y.numpy().reshape(-1) for _, y in test]).astype(int)

def scores(model):
    p = model.predict(test, verbose=0)
    pred = (p[:, 0] > 0.5).astype(int) if p.shape[1] == 1 else p.argmax(1)
    per_class = [float((pred[labels == c] == c).mean()) for c in np.unique(labels)]
    return float((pred == labels).mean()), float(np.mean(per_class))

class Budget(keras.callbacks.Callback):
    # Stop before an epoch the budget would not hold; score the test split after each epoch (not counted).
    def __init__(self):
        super().__init__()
        self.t0, self.excluded, self.points = time.monotonic(), 0.0, []
    def elapsed(self):
        return time.monotonic() - self.t0 - self.excluded
    def on_epoch_end(self, epoch, logs=None):
        t = self.elapsed()
        s = time.monotonic()
        acc, bal = scores(self.model)
        self.excluded += time.monotonic() - s
        self.points.append({"epoch": epoch + 1, "seconds": round(t, 1), "test_accuracy": acc,
                            "test_balanced_accuracy": bal, "val_accuracy": logs.get("val_accuracy"),
                            "lr": logs.get("learning_rate")})
        if t + t / (epoch + 1) > args["budget"]:
            self.model.stop_training = True

defaults = with_defaults({}, load_schema(args["schema"]))["train"]
settings = TrainSettings.from_config({**defaults, **args["settings"]})
data = TrainData(train_records=d["records"]["train"], val_records=d["records"]["val"], channels=channels, size=size,
                 n_classes=n_classes, class_counts={int(k): v for k, v in d["class_counts"].items()}, n_val=d["n_val"])
budget = Budget()
info = train_combo(args["combo"], data, settings, seed=args["seed"], out_dir=args["out"], callbacks=[budget],
                   threads=args["threads"])
kept = keras.models.load_model(os.path.join(args["out"], "model.keras"), compile=False)
acc, bal = scores(kept)
json.dump({"points": budget.points, "test_accuracy": acc, "test_balanced_accuracy": bal,
           "seconds": round(budget.elapsed(), 1), "epochs_run": info["epochs_run"], "best_epoch": info["best_epoch"],
           "status": info["status"], "train_seconds": info["train_seconds"], "val_seconds": info["val_seconds"],
           "load_after": os.getloadavg()}, open(args["result"], "w"))
"""


def preset_recipe() -> tuple[dict, dict]:
    """The recipe preset's one combination and its train settings."""
    train = yaml.safe_load((ROOT / "config/presets/recipe.yaml").read_text())["train"]
    combo = {k: (v[0] if isinstance(v, list) else v) for k, v in train["grid"].items()}
    settings = {k: v for k, v in train.items() if k not in ("grid", "search", "trials", "fusion", "baseline_svm")}
    return combo, settings


def run_arm(work: Path, arm: str, data: dict, size: int, threads: int, budget: float, combo: dict, settings: dict,
            seed: int = 1) -> dict:  # fmt: skip
    out, result = work / "arms" / arm, work / "arms" / f"{arm}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    args = {"data": data, "size": size, "channels": 3, "threads": threads, "budget": budget, "combo": combo,
            "settings": settings, "seed": seed, "out": str(out), "result": str(result),
            "schema": str(ROOT / "workflow/schemas/params.schema.yaml")}  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), *sys.path])}
    load = os.getloadavg()
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(args)], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{arm} failed:\n{proc.stderr[-4000:]}")
    r = json.loads(result.read_text())
    r["load_before"] = load
    return r


def measure(args) -> None:
    work = args.work.resolve() / args.set
    prepare(work, overlay(args.set, work, args.size, args.rotations), args.cores)
    data = data_of(work)
    print(f"{args.set}: classes {data['classes']}, train records {sum(data['class_counts'].values())}, "
          f"val {data['n_val']}, test {data['n_test']}", flush=True)  # fmt: skip
    results = {"set": args.set, "budget": args.budget, "threads": args.threads, "size": args.size,
               "n_train": sum(data["class_counts"].values()), "n_val": data["n_val"], "n_test": data["n_test"],
               "classes": data["classes"], "cpu": os.cpu_count(), "arms": {}}  # fmt: skip
    for arm in args.arms:
        if arm == "recipe":
            combo, settings = preset_recipe()
            # A 1-epoch probe measures an epoch; the schedule is laid over the epochs the budget holds.
            probe = run_arm(work, "recipe_probe", data, args.size, args.threads, 1e9, {**combo, "lr_policy": "constant"},
                            {**settings, "max_epochs": 1, "patience": 1})  # fmt: skip
            epoch = probe["points"][0]["seconds"]
            epochs = max(2, int(args.budget // epoch))
            # A short budget keeps the warm-up to a fifth of its epochs (at least 1).
            warmup = min(settings["cosine"]["warmup_epochs"], max(1, epochs // 5))
            settings = {**settings, "max_epochs": epochs, "patience": epochs,
                        "cosine": {**settings["cosine"], "warmup_epochs": warmup}}  # fmt: skip
            print(f"  recipe: first epoch {epoch:.1f} s -> max_epochs {epochs}", flush=True)
        else:
            combo = {"model": arm, **SEED_ARM}
            settings = {"max_epochs": 200, "patience": 5}
        start = time.perf_counter()
        r = run_arm(work, arm, data, args.size, args.threads, args.budget, combo, settings)
        r.update(combo=combo, settings=settings, wall=round(time.perf_counter() - start, 1))
        results["arms"][arm] = r
        print(f"  {arm}: test acc {r['test_accuracy']:.3f} (balanced {r['test_balanced_accuracy']:.3f}) "
              f"after {r['seconds']:.0f} s, {r['epochs_run']} epochs (best {r['best_epoch']}), "
              f"load {r['load_before'][0]:.1f} -> {r['load_after'][0]:.1f}", flush=True)  # fmt: skip
    (args.work.resolve() / f"{args.set}.json").write_text(json.dumps(results, indent=1))


def plot(work: Path, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = [json.loads(p.read_text()) for p in sorted(work.glob("*.json"))]
    fig, axes = plt.subplots(1, len(sets), figsize=(5.5 * len(sets), 4), squeeze=False)
    for ax, res in zip(axes[0], sets):
        for arm, r in res["arms"].items():
            pts = r["points"]
            line, = ax.plot([p["seconds"] for p in pts], [p["test_accuracy"] for p in pts], marker=".", label=arm)
            ax.scatter([r["seconds"]], [r["test_accuracy"]], marker="*", s=140, color=line.get_color(), zorder=3)
        ax.set_title(f"{res['set']}: {res['n_train']} training images, {res['size']} px, "
                     f"{res['threads']} thread(s), {res['budget']:.0f} s budget", fontsize=9)  # fmt: skip
        ax.set_xlabel("wall time of the training (s, test scoring excluded)")
        ax.set_ylabel("test accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("line: the weights after each epoch; star: the kept (best-validation) model when train_combo returns",
                 fontsize=9)  # fmt: skip
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    print(f"wrote {png}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--set", choices=["replica", "bccd"])
    ap.add_argument("--budget", type=float, default=150.0, help="seconds of wall time per arm")
    ap.add_argument("--size", type=int, default=48)
    ap.add_argument("--rotations", type=int, default=2, help="offline rotations (x mirror) of each training image")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cores", type=int, default=2, help="for snakemake prepare")
    ap.add_argument("--arms", nargs="+", default=["recipe", "matek_cnn", "model_1"])
    ap.add_argument("--plot", type=Path, help="draw every <work>/*.json into this PNG")
    args = ap.parse_args()
    if args.plot:
        plot(args.work.resolve(), args.plot)
    elif args.set:
        measure(args)
    else:
        ap.error("give --set or --plot")


if __name__ == "__main__":
    main()
