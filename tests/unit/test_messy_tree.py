"""A messy real-world tree: every file on disk ends up usable, quarantined or skipped, with its reason."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from hemaflow.data.adapters import list_candidates
from hemaflow.data.ingest import build_sources, summary
from hemaflow.data.manifest import write_manifest
from hemaflow.data.splits import assign_splits

RNG = np.random.default_rng(3)


def png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (6, 7, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


# relative path (bytes: real lab file servers produce names that are not UTF-8) -> content
TREE = {
    b".DS_Store": b"\x00\x01",
    b"README.md": b"# my data set\n",
    b"stray.png": png(1),  # an image directly under the root of a folders set
    b".thumbnails/Neutrophil_a.png": png(2),  # inside a hidden folder
    b"Neutrophil/a.png": png(10),
    b"Neutrophil/b.png": png(11),
    b"Neutrophil/.hidden.jpg": png(12),
    b"Neutrophil/notes.txt": b"counted by hand\n",
    b"Neutrophil/Thumbs.db": b"\x00" * 8,
    b"Neutrophil/\xffcell.png": png(13),  # Latin-1 name on a UTF-8 system
    b"Lymphocyte/c.png": png(20),
    b"Lymphocyte/a_again.png": png(10),  # the pixels of Neutrophil/a.png under another label
    b"Eosinophil/e.png": png(30),
    b"Eosinophil/empty.png": b"",
    b"Eosinophil/broken.png": png(31)[:40],
}
EMPTY_FOLDER = b"Monocyte"


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "messy"
    broot = os.fsencode(root)
    for rel, data in TREE.items():
        path = os.path.join(broot, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
    os.makedirs(os.path.join(broot, EMPTY_FOLDER))
    return root


def files_on_disk(root) -> int:
    return sum(len(files) for _, _, files in os.walk(os.fsencode(root)))


def ingest(root, tmp_path, **kw):
    """What rule ingest does: candidates, decode, manifest (written: a bad name must not break that), report."""
    opts = {k: kw.pop(k) for k in ("on_label_conflict", "strict") if k in kw}
    candidates, classes = list_candidates(kw.pop("adapter"), root, dataset="messy", **kw)
    sources = build_sources(candidates, root, dataset="messy", max_pixels=10_000, **opts)
    write_manifest(sources, tmp_path / "sources.parquet", "sources")
    sources[sources.status == "quarantined"].to_csv(tmp_path / "quarantine.csv", index=False)
    info = summary(sources, classes, warn_similar="classes" not in kw)
    json.dumps(info)  # ingest.json must be writable
    return sources.set_index("rel_path"), classes, info


def test_folders_every_file_accounted_for(tree, tmp_path):
    sources, classes, info = ingest(tree, tmp_path, adapter="folders")
    n = files_on_disk(tree) + 1  # and one row for the empty class folder
    assert len(sources) == n == info["files"]
    assert sum(info["status"].values()) == n
    assert info["status"] == {"ok": 3, "quarantined": 5, "skipped": 8}
    reason = sources["reason"].fillna("ok").to_dict()
    assert reason == {
        ".DS_Store": "hidden",
        ".thumbnails/Neutrophil_a.png": "hidden",
        "README.md": "outside_class_folder",
        "stray.png": "outside_class_folder",
        "Neutrophil/a.png": "label_conflict",
        "Neutrophil/b.png": "ok",
        "Neutrophil/.hidden.jpg": "hidden",
        "Neutrophil/notes.txt": "not_an_image_extension",
        "Neutrophil/Thumbs.db": "not_an_image_extension",
        "Neutrophil/\\xffcell.png": "bad_filename",  # shown escaped, and the run went on
        "Lymphocyte/c.png": "ok",
        "Lymphocyte/a_again.png": "label_conflict",
        "Eosinophil/e.png": "ok",
        "Eosinophil/empty.png": "empty",
        "Eosinophil/broken.png": "not_an_image",
        "Monocyte": "empty_class_folder",
    }
    assert classes == ("Eosinophil", "Lymphocyte", "Neutrophil")  # an empty folder is not a class
    assert info["empty_classes"] == []
    assert info["classes"] == {"Eosinophil": 1, "Lymphocyte": 1, "Neutrophil": 1}
    assert info["skipped"] == {"empty_class_folder": 1, "hidden": 3, "not_an_image_extension": 2, "outside_class_folder": 2}
    assert info["first_files"]["hidden"] == [".DS_Store", ".thumbnails/Neutrophil_a.png", "Neutrophil/.hidden.jpg"]
    assert info["first_files"]["empty_class_folder"] == ["Monocyte"]
    [group] = info["label_conflicts"]
    assert group["files"] == {"Lymphocyte/a_again.png": "Lymphocyte", "Neutrophil/a.png": "Neutrophil"}
    assert group["kept"] is None
    assert sources.loc["Neutrophil/a.png", "content_hash"] == sources.loc["Lymphocyte/a_again.png", "content_hash"]
    assert sources.loc[sources.status == "ok", "duplicate_of"].isna().all()  # conflicts are not duplicates


def test_filelist_every_file_accounted_for(tree, tmp_path):
    labels = tree / "labels.csv"
    labels.write_text(
        "path,label\n"
        "Neutrophil/a.png,Neutrophil\n"
        "Neutrophil/b.png,Neutrophill\n"  # the typo
        "Lymphocyte/c.png,Lymphocyte\n"
        "Lymphocyte/a_again.png,Lymphocyte\n"
        "Eosinophil/e.png,Eosinophil\n"
    )
    sources, classes, info = ingest(tree, tmp_path, adapter="filelist", filelist=labels)
    assert len(sources) == files_on_disk(tree) == sum(info["status"].values())
    reason = sources["reason"].fillna("ok")
    assert reason["labels.csv"] == "label_file"
    assert reason["Neutrophil/\\xffcell.png"] == "bad_filename"
    assert reason["stray.png"] == reason["Eosinophil/empty.png"] == "not_in_filelist"
    assert reason[".DS_Store"] == "hidden"
    assert reason["Neutrophil/a.png"] == reason["Lymphocyte/a_again.png"] == "label_conflict"
    assert classes == ("Eosinophil", "Lymphocyte", "Neutrophil", "Neutrophill")
    assert info["similar_labels"] == [["Neutrophil", "Neutrophill"]]

    # with the expected classes the typo is quarantined, not a new class
    expected = ["Neutrophil", "Lymphocyte", "Eosinophil"]
    sources, classes, info = ingest(tree, tmp_path, adapter="filelist", filelist=labels, classes=expected)
    assert classes == tuple(expected)
    assert sources.loc["Neutrophil/b.png", ["reason", "source_label", "label_index"]].tolist() == ["unknown_label", "Neutrophill", -1]
    assert sources.loc["Lymphocyte/c.png", "label_index"] == 1
    assert "similar_labels" not in info and info["empty_classes"] == ["Neutrophil"]


def test_an_empty_class_folder_named_in_data_classes_stops_the_split(tree, tmp_path):
    expected = ["Eosinophil", "Lymphocyte", "Monocyte", "Neutrophil"]
    sources, classes, info = ingest(tree, tmp_path, adapter="folders", classes=expected)
    assert classes == tuple(expected) and info["empty_classes"] == ["Monocyte"]
    assert sources.loc["Monocyte", ["status", "reason", "label_index"]].tolist() == ["skipped", "empty_class_folder", 2]
    with pytest.raises(ValueError, match=r"data.classes names class folder\(s\) without any image file under data.root: "
                                         r"Monocyte/\. Add images to them, or remove them from data.classes"):
        assign_splits(sources.reset_index(), seed=0, use_dataset_folds=False)
