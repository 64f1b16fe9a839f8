"""Shards: stable assignment, TFRecord + manifest round trip, determinism, merge, contact sheet."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import subprocess  # noqa: E402
import sys  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from hemaflow.augment import preprocess as P  # noqa: E402
from hemaflow.augment.records import iter_records  # noqa: E402
from hemaflow.data.manifest import SCHEMAS  # noqa: E402
from hemaflow.augment.shards import build_shard, contact_sheet, merge_manifests, shard_of  # noqa: E402

PREPROCESS = dict(background="alpha", size=24, crop_to_content=True, pad_square=True, filter="none")
AUGMENT = dict(rotations=2, mirror=True, random_copies=1, flip=True, shift=0.1, zoom=0.1, shear=10.0, fill="nearest")


@pytest.fixture
def dataset(tmp_path):
    """Five small BMP 'cells' on black, two classes, in a data root."""
    root = tmp_path / "raw"
    rng = np.random.default_rng(0)
    rows = []
    for i in range(5):
        img = np.zeros((60, 70, 3), np.uint8)
        colour = tuple(int(c) for c in rng.integers(40, 255, 3))
        cv2.ellipse(img, (35, 30), (12 + 3 * i, 9 + i), 20 * i, 0, 360, colour, -1)
        rel = f"class{i % 2}/cell_{i}.bmp"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / rel), img[..., ::-1])  # OpenCV writes BGR
        rows.append({"image_id": f"{i:016x}", "rel_path": rel, "label_index": i % 2})
    return root, pd.DataFrame(rows).astype({"label_index": "int16"})


def build(dataset, out, split="train", augment=True, rows=None, **kw):
    root, all_rows = dataset
    return build_shard(
        all_rows if rows is None else rows,
        root=root,
        split=split,
        shard=0,
        augment=augment,
        preprocess=PREPROCESS,
        augment_params=AUGMENT,
        seed=2019,
        max_pixels=10**6,
        out_records=out / f"{split}.tfrecord",
        out_manifest=out / f"{split}.parquet",
        **kw,
    )


def test_shard_of_is_stable_across_processes_and_roughly_uniform():
    ids = [f"{i:016x}" for i in range(4000)]
    here = [shard_of(i, 4) for i in ids]
    code = "from hemaflow.augment.shards import shard_of; print([shard_of(f'{i:016x}', 4) for i in range(4000)])"
    env = {**os.environ, "PYTHONHASHSEED": "123"}
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert str(here) == there.stdout.strip()
    counts = np.bincount(here, minlength=4)
    assert counts.min() > 900 and counts.max() < 1100  # expected 1000 +- 27 (sd)


def test_records_are_byte_identical_across_processes():
    """Protobuf orders an Example's features differently from process to process unless told not to."""
    code = (
        "import sys; from hemaflow.augment.records import encode_example; "
        "sys.stdout.write(encode_example(b'png', 1, 'a1').hex())"
    )
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    runs = {
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
        for _ in range(4)
    }
    assert len(runs) == 1, runs


def test_build_shard_round_trip(dataset, tmp_path):
    manifest = build(dataset, tmp_path)
    assert list(manifest.columns) == SCHEMAS["augmented"].names
    assert len(manifest) == 5 * 2 * 2 * 2  # images x rotations x mirror x (deterministic + 1 random)
    assert manifest["index"].tolist() == list(range(len(manifest)))
    # Written in a shuffled order, not a source's copies one after another.
    assert (manifest["image_id"] != manifest["image_id"].shift()).mean() > 0.6
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "train.parquet"), manifest, check_dtype=False)

    records = list(iter_records([tmp_path / "train.tfrecord"], channels=4))
    assert [r[2] for r in records] == manifest["aug_id"].tolist()
    assert [r[1] for r in records] == manifest["label_index"].tolist()
    # The stored PNGs are exactly what `render` makes (lossless, RGB order kept).
    root, rows = dataset
    row = rows.iloc[3]
    rgb = cv2.imread(str(root / row.rel_path))[..., ::-1]
    vs = P.variants(row.image_id, **{k: v for k, v in AUGMENT.items() if k != "fill"}, seed=2019)
    expected = P.render_all(rgb, vs, **PREPROCESS, fill="nearest")
    got = {aid: img for img, _, aid in records}
    assert all(np.array_equal(got[v["aug_id"]], e) for v, e in zip(vs, expected))


def test_rerun_is_byte_identical_whatever_the_row_order(dataset, tmp_path):
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    build(dataset, tmp_path / "a")
    build(dataset, tmp_path / "b", rows=dataset[1].sample(frac=1, random_state=1))
    for name in ("train.tfrecord", "train.parquet"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_shuffled_order_is_by_blocks_of_sources_within_the_memory_budget(dataset, tmp_path):
    """Sources are held in blocks of about block_bytes; each block's records are permuted."""
    one = P.prepare_source(cv2.imread(str(dataset[0] / dataset[1].rel_path[0]))[..., ::-1], **PREPROCESS).nbytes
    manifest = build(dataset, tmp_path, block_bytes=2 * one)  # the 5 cells are about the same size
    ids = sorted(dataset[1]["image_id"])
    # Block by block in image_id order, 2 sources (16 records) a block, shuffled inside.
    blocks = [set(manifest["image_id"][i : i + 16]) for i in range(0, 40, 16)]
    assert blocks == [set(ids[0:2]), set(ids[2:4]), set(ids[4:5])]
    assert not manifest["image_id"].iloc[:16].is_monotonic_increasing
    # Any budget writes the same records with the same pixels, only in another order.
    (tmp_path / "all").mkdir()
    whole = build(dataset, tmp_path / "all")
    assert sorted(whole["aug_id"]) == sorted(manifest["aug_id"])
    a = {aid: img.tobytes() for img, _, aid in iter_records([tmp_path / "train.tfrecord"], channels=4)}
    b = {aid: img.tobytes() for img, _, aid in iter_records([tmp_path / "all" / "train.tfrecord"], channels=4)}
    assert a == b


def test_extra_copies_of_a_source_are_written_and_only_when_augmenting(dataset, tmp_path):
    _, rows = dataset
    rows = rows.assign(extra_copies=[0, 3, 0, 1, 0])
    manifest = build(dataset, tmp_path, rows=rows)
    per_image = manifest.groupby("image_id").size()
    base = 2 * 2 * 2  # rotations x mirror x (deterministic + 1 random copy)
    assert per_image.to_dict() == {i: base + e for i, e in zip(rows["image_id"], rows["extra_copies"])}
    assert len(build(dataset, tmp_path, split="val", augment=False, rows=rows)) == len(rows)


def test_unaugmented_split_gets_one_deterministic_copy(dataset, tmp_path):
    manifest = build(dataset, tmp_path, split="val", augment=False)
    assert len(manifest) == 5 and manifest["image_id"].is_unique
    assert (manifest["copy"] == 0).all() and (manifest["rotation"] == 0).all() and not manifest["mirror"].any()
    assert manifest["aug_id"].str.endswith("-r000-m0-c0").all()
    assert sum(1 for _ in iter_records([tmp_path / "val.tfrecord"], channels=4)) == 5


def test_empty_shard_still_writes_valid_files(dataset, tmp_path):
    manifest = build(dataset, tmp_path, rows=dataset[1].iloc[:0])
    assert manifest.empty
    assert list(pd.read_parquet(tmp_path / "train.parquet").columns) == SCHEMAS["augmented"].names
    assert list(iter_records([tmp_path / "train.tfrecord"], channels=4)) == []


def test_unreadable_source_names_the_file_and_the_fix(dataset, tmp_path):
    root, rows = dataset
    (root / rows.rel_path[2]).write_bytes(b"not an image")
    with pytest.raises(RuntimeError, match=r"cell_2\.bmp.*ingest"):
        build(dataset, tmp_path)
    assert not (tmp_path / "train.tfrecord").exists()


def test_merge_manifests_sorts_and_keeps_types(dataset, tmp_path):
    root, rows = dataset
    parts = []
    plan = [("val", False, rows.iloc[:2]), ("train", True, rows.iloc[2:]), ("test", False, rows.iloc[:0])]
    for split, augment, chunk in plan:
        (tmp_path / split).mkdir()
        build(dataset, tmp_path / split, split=split, augment=augment, rows=chunk)
        parts.append(tmp_path / split / f"{split}.parquet")
    merged = merge_manifests(parts[::-1], tmp_path / "augmented.parquet")
    back = pd.read_parquet(tmp_path / "augmented.parquet")
    assert len(back) == 2 + 3 * 8
    assert back["split"].tolist() == sorted(back["split"])
    assert back.groupby("split")["index"].apply(lambda s: s.is_monotonic_increasing).all()
    assert str(back["label_index"].dtype) == "int16" and back["mirror"].dtype == bool
    pd.testing.assert_frame_equal(back, merged, check_dtype=False)


def test_contact_sheet(dataset, tmp_path):
    manifest = build(dataset, tmp_path)
    out = tmp_path / "sheets" / "train.png"
    kw = dict(per_class=3, class_names=["hem", "all"], channels=4, seed=1)
    sheet = contact_sheet([tmp_path / "train.tfrecord"], manifest, out, **kw)
    np.testing.assert_array_equal(np.asarray(Image.open(out).convert("RGB")), sheet)  # RGB order on disk
    # Two classes, each a caption strip and one row of 3 tiles of at least 96 px.
    assert sheet.shape[1] >= 3 * 96 and sheet.shape[0] >= 2 * 96
    assert len(np.unique(sheet.reshape(-1, 3), axis=0)) > 10  # images, not a blank canvas
    again = contact_sheet([tmp_path / "train.tfrecord"], manifest, tmp_path / "again.png", **kw)
    np.testing.assert_array_equal(again, sheet)
