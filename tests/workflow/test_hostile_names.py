"""Hostile labels in a user's file list are quarantined by the real ingest job, which writes nothing outside results/."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
from PIL import Image

from hemaflow.data.manifest import read_classes

from harness import copy_repo, run, write_override

HOSTILE = ["../../../../outside/x", ".", "-rf"]


def png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def tree(top) -> set[str]:
    return {str(p.relative_to(top)) for p in top.rglob("*")}


def test_hostile_labels_are_quarantined_and_nothing_leaves_results(tmp_path, tool_env):
    work = copy_repo(tmp_path / "repo", tool_env)
    root = work / "data/raw/mine"
    root.mkdir(parents=True)
    labels = ["blast"] * 3 + ["normal"] * 3 + HOSTILE
    for i in range(len(labels)):
        (root / f"{i}.png").write_bytes(png(i))
    (work / "labels.csv").write_text("path,label,patient_id\n" + "".join(f"{i}.png,{lab},P{i % 2}\n" for i, lab in enumerate(labels)))
    data = {"adapter": "filelist", "name": "mine", "root": "data/raw/mine", "filelist": "labels.csv",
            "positive_class": "blast", "patient_sheet": None}  # fmt: skip
    override = write_override(tmp_path, "mine.yaml", {"data": data, "train": {"fusion": []}})
    before = tree(tmp_path)

    run(["snakemake", "--cores", "1", "results/reports/ingest.json", "--configfile", override], work, tool_env)

    sources = pd.read_parquet(work / "results/manifests/sources.parquet").set_index("rel_path")
    hostile = [f"{i}.png" for i, lab in enumerate(labels) if lab in HOSTILE]
    assert sources.loc[hostile, "reason"].tolist() == ["unsafe_label"] * 3
    assert (sources.loc[hostile, "status"] == "quarantined").all()
    assert (sources.drop(index=hostile)["status"] == "ok").all() and len(sources) == len(labels)
    assert read_classes(work / "results/manifests/classes.json") == ["blast", "normal"]
    quarantine = pd.read_csv(work / "results/reports/quarantine.csv")
    assert sorted(quarantine["rel_path"]) == sorted(hostile) and set(quarantine["reason"]) == {"unsafe_label"}
    new = tree(tmp_path) - before  # paths relative to the repository's parent: `outside/` would show
    assert new and {p.split("/")[:2][-1] for p in new} <= {"results", ".snakemake"}, sorted(new)
    assert all(p.startswith("repo/") for p in new), sorted(new)
