"""Each seed preset (config/presets/) run for real through the leaderboard, scaled down, on the
synthetic replica of the matching layout (C-NMC for seed 000, class-per-folder for the others)."""

from __future__ import annotations

import copy
import json
import time

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image
from snakemake.utils import update_config

from hemaflow.train.grid import combos
from hemaflow.data.manifest import read_classes
from hemaflow.augment.preprocess import IDENTITY, render
from hemaflow.augment.records import iter_records

from harness import ROOT, copy_repo, params, snakemake, write_override

pytestmark = pytest.mark.slow

# Scaled down for every preset: one shard per split, one epoch, no SVM, tiny explanations.
SMALL = {
    "augment": {"shards": {"train": 1, "val": 1, "test": 1}, "contact_sheet": 2},
    "train": {"max_epochs": 1, "baseline_svm": False},
    "explain": {"cells": 1, "num_samples": 20, "sufficiency": {"cells": 1, "n": [1]}},
}
# The class-per-folder replica: patient ids in names, read by the folders adapter.
FOLDERS = {"layout": "folders", "patients": 20, "image_size": 64}
REPLICA = {"adapter": "synthetic", "root": "data/raw/replica", "patient_regex": r"^(?P<patient>P\d+)_"}
GRID = {"optimizer": ["adam"], "lr": [0.001], "lr_policy": ["constant"], "batch_size": [32], "dropout": [0.25]}

SCALED = {
    "seed000": {
        "data": {"adapter": "synthetic", "name": "cnmc-replica", "root": "data/raw/cnmc-replica"},
        "synthetic": {"folds": 3, "patients_per_fold": {"all": 1, "hem": 1}, "holdout_patients": {"all": 1, "hem": 1},
                      "cells_per_patient": [4, 6], "image_size": 64},
        "preprocess": {"size": 32},
        "augment": {"rotations": 2, "sources_per_class": 5},
        "train": {"grid": {"model": ["model_1"], "lr": [0.00025], "batch_size": [64]}},
    },
    "seed002": {
        "data": REPLICA,
        "synthetic": {**FOLDERS, "classes": ["healthy", "leukemia"], "cells_per_class": 30},
        "preprocess": {"size": 40},
        "augment": {"random_copies": 1},
        "train": {"grid": {**GRID, "model": ["basic_cnn", "thanh_cnn"]}},
    },
    "seed003": {
        "data": {**REPLICA, "patient_regex": None},  # as the real set: no patient ids, image-level groups
        "synthetic": {**FOLDERS, "patients": 0, "classes": 4, "cells_per_class": 40, "imbalance": 4.0},
        "preprocess": {"size": 40},
        "augment": {"target_per_class": 30},
        "train": {"trials": 2},
    },
    "seed004": {
        "data": REPLICA,
        "synthetic": {**FOLDERS, "classes": ["malignant", "normal"], "cells_per_class": 40},
        "preprocess": {"size": 40},
        "train": {"accelerator": "gpu", "mixed_precision": True},  # CPU-only here: must fall back
    },
}


def merged(*layers: dict, base: dict | None = None) -> dict:
    """`layers` deep-merged onto `base` in order, as Snakemake merges --configfile overlays."""
    out = copy.deepcopy(base or {})
    for layer in layers:
        update_config(out, copy.deepcopy(layer))
    return out


@pytest.fixture(scope="module")
def run_preset(tmp_path_factory, tool_env):
    def run(name: str):
        work = copy_repo(tmp_path_factory.mktemp(name), tool_env)
        preset = yaml.safe_load((ROOT / f"config/presets/{name}.yaml").read_text())
        override = write_override(work, "smoke.yaml", merged(SMALL, SCALED[name]))
        start = time.monotonic()
        snakemake(work, tool_env, "leaderboard", "--configfile", f"config/presets/{name}.yaml", override)
        print(f"{name} smoke run: {time.monotonic() - start:.0f} s")
        config = merged(preset, SMALL, SCALED[name], base=params())
        board = pd.read_csv(work / "results/reports/leaderboard.csv")
        assert set(board["combo"]) == set(combos(config["train"], config["seed"]))  # exactly the scaled grid
        return work, config

    return run


def records(work, split: str, channels: int):
    return list(iter_records(sorted((work / f"results/shards/{split}").glob("*.tfrecord")), channels))


def test_seed000_alpha_nuclei_with_rotations_and_mirror(run_preset):
    work, config = run_preset("seed000")
    assert read_classes(work / "results/manifests/classes.json") == ["hem", "all"]
    augmented = pd.read_parquet(work / "results/manifests/augmented.parquet")
    train = augmented[augmented["split"] == "train"]
    assert (train.groupby("image_id").size() == 2 * 2).all()  # 2 rotations x (plain, mirrored)
    splits = pd.read_parquet(work / "results/manifests/splits.parquet")
    assert (splits["split"] == "train").sum() > 2 * 5  # more training cells than the draw keeps...
    assert (train.groupby("label_index")["image_id"].nunique() == 5).all()  # ...5 per class, before augmentation
    img, _, _ = records(work, "val", 4)[0]
    assert img.shape == (32, 32, 4) and (img[..., 3] == 0).any()  # alpha background reached the shards


def test_seed002_median_sharpen_crops_of_the_replica_classes(run_preset):
    work, config = run_preset("seed002")
    assert read_classes(work / "results/manifests/classes.json") == ["healthy", "leukemia"]
    sources = pd.read_parquet(work / "results/manifests/sources.parquet").set_index("image_id")
    img, _, aug_id = records(work, "val", 3)[0]
    rgb = np.asarray(Image.open(work / "data/raw/replica" / sources.loc[aug_id.split("-")[0], "rel_path"]).convert("RGB"))
    variant = {"aug_id": aug_id, "rotation": 0.0, "mirror": False, "copy": 0, **IDENTITY}
    p = {k: config["preprocess"][k] for k in ("background", "size", "crop_to_content", "pad_square")}
    assert img.shape == (40, 40, 3)
    assert np.array_equal(img, render(rgb, variant, **p, filter="median_sharpen"))
    assert not np.array_equal(img, render(rgb, variant, **p, filter="none"))


def test_seed003_random_trials_with_their_own_batch_size_on_imbalanced_classes(run_preset):
    work, config = run_preset("seed003")
    assert read_classes(work / "results/manifests/classes.json") == [f"class_{i:02d}" for i in range(4)]
    for cid, combo in combos(config["train"], config["seed"]).items():
        info = json.loads((work / f"results/models/{cid}/train.json").read_text())
        assert json.dumps(info).count(f'"batch_size": {combo["batch_size"]}') >= 1
    sources = pd.read_parquet(work / "results/manifests/sources.parquet")
    counts = sources[sources["status"] == "ok"].groupby("label").size()
    assert counts.max() == 40 and counts.min() == 10  # the replica's 4:1 imbalance reached ingest
    train = pd.read_parquet(work / "results/manifests/augmented.parquet").query("split == 'train'")
    assert (train.groupby("label_index").size() == 30).all()  # each class up-sampled to the target
    per_source = train.groupby("image_id").size()
    assert per_source.max() - per_source.min() > 1  # rarer classes got more copies per cell
    turned = train.loc[train["copy"] > 0, "rotation"]
    assert (turned != 0.0).all() and turned.nunique() == len(turned)  # random angles, not the fixed 0 degrees


def test_seed004_patient_disjoint_split_and_gpu_settings_falling_back_to_the_cpu(run_preset):
    work, config = run_preset("seed004")
    for cid in combos(config["train"], config["seed"]):
        info = json.loads((work / f"results/models/{cid}/train.json").read_text())
        assert (info["device"], info["precision"]) == ("CPU:0", "float32")
        assert "TensorFlow sees no GPU" in info["device_note"]
        assert "mixed_precision needs a GPU" in (work / f"results/logs/train/{cid}.log").read_text()
    splits = pd.read_parquet(work / "results/manifests/splits.parquet")
    sources = pd.read_parquet(work / "results/manifests/sources.parquet").set_index("image_id")
    patients = sources.loc[splits["image_id"], "patient_id"].to_numpy()
    per_patient = pd.Series(splits["split"].to_numpy(), index=patients).groupby(level=0).nunique()
    assert (per_patient == 1).all() and len(per_patient) == 20  # patient ids parsed, patient-disjoint
    img, _, _ = records(work, "test", 3)[0]
    assert img.shape == (40, 40, 3)
