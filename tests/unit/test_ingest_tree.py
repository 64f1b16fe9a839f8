"""Ingest on hostile trees and odd images: nothing raises, every oddity gets a reason."""

from __future__ import annotations

import gc
import os
import socket
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hemaflow.data.adapters import list_candidates
from hemaflow.data.images import ImageRejected, load_rgb
from hemaflow.data.ingest import FIRST_FILES, build_sources, summary
from hemaflow.data.splits import assign_splits

BCCD = Path(__file__).resolve().parents[3] / "shared/data/bccd-wbc"


def cell(path: Path, shape=(20, 20), seed=0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (*shape, 3), dtype=np.uint8)).save(path)
    return path


def ingest(root, adapter="folders", min_side=16, **kw):
    candidates, classes = list_candidates(adapter, root, dataset="t", **kw)
    sources = build_sources(candidates, root, dataset="t", max_pixels=10**6, min_side=min_side)
    return sources, classes


def test_small_and_blank_images_are_quarantined_and_never_split(tmp_path):
    for label in ("a", "b"):
        for k in range(6):
            cell(tmp_path / label / f"{k}.png", seed=10 * ord(label) + k)
    cell(tmp_path / "a" / "tiny.png", shape=(8, 30))
    flat = np.full((20, 20, 3), 128, np.uint8)
    flat[::2] += 1  # grey std 0.5: a blank frame with sensor noise
    Image.fromarray(flat).save(tmp_path / "b" / "blank.png")
    faint = np.full((20, 20, 3), 128, np.uint8)
    faint[::2] += 5  # std 2.5: faint, but not blank
    Image.fromarray(faint).save(tmp_path / "b" / "faint.png")

    sources, classes = ingest(tmp_path)
    by_path = sources.set_index("rel_path")
    assert by_path.loc["a/tiny.png", ["status", "reason", "width", "height"]].tolist() == ["quarantined", "too_small", 30, 8]
    assert by_path.loc["b/blank.png", ["status", "reason"]].tolist() == ["quarantined", "blank"]
    assert by_path.loc["b/faint.png", "status"] == "ok"
    assert (sources.status == "ok").sum() == 13
    splits, _ = assign_splits(sources, seed=0, use_dataset_folds=False, ratios=(1, 1, 1))
    assert len(splits) == 13
    assert not set(splits.image_id) & set(by_path.loc[["a/tiny.png", "b/blank.png"], "image_id"])
    info = summary(sources, classes)
    assert info["reasons"] == {"blank": 1, "too_small": 1}
    assert info["first_files"] == {"blank": ["b/blank.png"], "too_small": ["a/tiny.png"]}

    assert by_path.index[by_path.status != "ok"].tolist() == ["a/tiny.png", "b/blank.png"]
    assert ingest(tmp_path, min_side=1)[0].set_index("rel_path").loc["a/tiny.png", "status"] == "ok"


def test_default_min_side_flags_nothing_in_the_replica_or_bccd(replica):
    for adapter, root in [("cnmc", replica), ("folders", BCCD)]:
        if not root.is_dir():
            continue
        sources, _ = ingest(root, adapter)
        assert not sources.reason.isin(["too_small", "blank"]).any(), root


def test_first_files_per_reason_are_named_in_path_order(tmp_path):
    for k in range(FIRST_FILES + 2):
        (tmp_path / "a" / f"note{k}.txt").parent.mkdir(exist_ok=True)
        (tmp_path / "a" / f"note{k}.txt").write_text("x")
    cell(tmp_path / "a" / "ok.png")
    sources, classes = ingest(tmp_path)
    info = summary(sources, classes)
    assert info["skipped"] == {"not_an_image_extension": FIRST_FILES + 2}
    assert info["first_files"] == {"not_an_image_extension": [f"a/note{k}.txt" for k in range(FIRST_FILES)]}


def test_walking_a_hostile_tree_never_raises(tmp_path, monkeypatch):
    root = tmp_path / "root"
    cell(root / "a" / "ok.png")
    cell(root / "a" / "back\\slash.png", seed=1)  # a backslash is part of the name on POSIX
    os.symlink("loop2", root / "a" / "loop1")  # ELOOP on stat
    os.symlink("loop1", root / "a" / "loop2")
    os.mkfifo(root / "a" / "fifo")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(root / "a" / "sock"))
    cell(root / "locked" / "x.png")
    real_scandir = os.scandir

    def scandir(path):
        if os.path.basename(path) == "locked":
            raise PermissionError(13, "Permission denied", path)
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)  # as root, chmod 000 would not stop us
    try:
        sources, classes = ingest(root)
    finally:
        sock.close()
    by_path = sources.set_index("rel_path")
    assert by_path["reason"].fillna("ok").to_dict() == {
        "a/ok.png": "ok",
        "a/back\\slash.png": "ok",
        "a/loop1": "unreadable",
        "a/loop2": "unreadable",
        "a/fifo": "not_a_regular_file",
        "a/sock": "not_a_regular_file",
        "locked": "unreadable",
    }
    assert by_path.loc["a/back\\slash.png", "content_hash"] != by_path.loc["a/ok.png", "content_hash"]
    assert by_path.loc["a/fifo", "status"] == "skipped" and by_path.loc["locked", "status"] == "quarantined"
    assert classes == ("a",)
    with pytest.raises(FileNotFoundError, match=r"data.root: cannot list .*permissions"):
        list_candidates("folders", root / "locked", dataset="t")


def test_a_listed_fifo_or_folder_is_unreadable_not_a_hang(tmp_path):
    cell(tmp_path / "a" / "ok.png")
    os.mkfifo(tmp_path / "a" / "fifo.png")
    (tmp_path / "list.csv").write_text("path,label\na/ok.png,a\na/fifo.png,a\na,a\na\\ok.png,b\n")
    sources, _ = ingest(tmp_path, "filelist", filelist=tmp_path / "list.csv")
    rows = sources[sources.rel_path.isin(["a/fifo.png", "a"])]
    assert rows.reason.tolist() == ["unreadable", "unreadable"]
    # a Windows-style path in a list still names the file
    assert sources.loc[sources.label == "b", ["rel_path", "reason"]].values.tolist() == [["a/ok.png", "duplicate_name"]]


def test_twelve_bit_png_is_scaled_by_its_bit_depth(tmp_path):
    Image.fromarray(np.array([[0, 2048, 4095]], np.uint16)).save(tmp_path / "g12.png")
    Image.fromarray(np.array([[0, 512, 1023]], np.uint16)).save(tmp_path / "g10.png")
    Image.fromarray(np.array([[0, 8192, 16383, 4096]], np.uint16)).save(tmp_path / "g14.png")
    assert load_rgb(tmp_path / "g12.png")[0][0, :, 0].tolist() == [0, 128, 255]
    assert load_rgb(tmp_path / "g10.png")[0][0, :, 0].tolist() == [0, 128, 255]
    assert load_rgb(tmp_path / "g14.png")[0][0, :, 0].tolist() == [0, 128, 255, 64]


def test_transparent_pixels_show_white(tmp_path):
    rgba = np.zeros((1, 3, 4), np.uint8)
    rgba[0] = [(200, 100, 50, 255), (200, 100, 50, 0), (0, 0, 0, 128)]
    Image.fromarray(rgba, "RGBA").save(tmp_path / "t.png")
    assert load_rgb(tmp_path / "t.png")[0][0].tolist() == [[200, 100, 50], [255, 255, 255], [127, 127, 127]]


def test_max_pixels_above_pillows_own_limit(tmp_path, monkeypatch):
    path = cell(tmp_path / "big.png", shape=(20, 20))  # 400 pixels: Pillow errors above 2x its limit
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    assert load_rgb(path, max_pixels=1000)[0].shape == (20, 20, 3)
    assert Image.MAX_IMAGE_PIXELS == 100  # restored
    with pytest.raises(ImageRejected, match="too_large"):
        load_rgb(path, max_pixels=399)
    assert Image.MAX_IMAGE_PIXELS == 100


def test_no_file_left_open_whatever_the_outcome(tmp_path):
    good = cell(tmp_path / "ok.png")
    bomb = cell(tmp_path / "bomb.png", shape=(40, 40))
    text = tmp_path / "text.png"
    text.write_bytes(b"not an image\n" * 4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for path, limit in [(good, 10**6), (bomb, 100), (text, 10**6)]:
            try:
                load_rgb(path, limit)
            except ImageRejected:
                pass
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]
