"""Near-duplicates: edited copies of a cell are grouped, other cells are not, groups never straddle splits."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from hemaflow.config import ParamsError, validate_params
from hemaflow.data import near_duplicates as nd
from hemaflow.data.adapters import list_candidates
from hemaflow.data.ingest import build_sources, near_duplicate_groups, summary
from hemaflow.data.splits import assign_splits

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "workflow/schemas/params.schema.yaml"
NEAR = {"method": "phash", "hash_size": 16, "max_distance": 20}  # the schema's default
OFF = {"method": "off"}


def cells(replica, n: int) -> list[np.ndarray]:
    """n replica cells of n different patients (decoded RGB)."""
    by_patient = {}
    for p in sorted(replica.glob("training_data/fold_*/*/*.bmp")):
        by_patient.setdefault(p.name.split("_")[1], p)
    return [np.asarray(Image.open(p).convert("RGB")) for p in list(by_patient.values())[:n]]


def jpeg75(rgb):
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=75)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def rescale(rgb, factor):
    h, w = rgb.shape[:2]
    return np.asarray(Image.fromarray(rgb).resize((round(w * factor), round(h * factor)), Image.BICUBIC))


def crop5(rgb):
    """5 % of each side cut off, split over both edges (the crop keeps 95 % of width and height)."""
    h, w = rgb.shape[:2]
    dh, dw = round(0.05 * h), round(0.05 * w)
    return rgb[dh // 2 : h - (dh - dh // 2), dw // 2 : w - (dw - dw // 2)]


EDITS = {"jpeg75": jpeg75, "half": lambda x: rescale(x, 0.5), "double": lambda x: rescale(x, 2), "crop5": crop5}


def write_folder_set(root: Path, originals, edits, copies_of: int) -> None:
    """class folders a/ and b/: every original as 0_<k>.png, and `edits` of the first `copies_of`."""
    for k, rgb in enumerate(originals):
        folder = root / ("a" if k % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb).save(folder / f"{k:02d}_0.png")
        if k < copies_of:
            for name in edits:
                Image.fromarray(EDITS[name](rgb)).save(folder / f"{k:02d}_{name}.png")


def ingest(root, near):
    candidates, _ = list_candidates("folders", root, dataset="t")
    return build_sources(candidates, root, dataset="t", max_pixels=10**8, near_duplicates=near)


def distance(a, b, hash_size=16):
    return int(np.bitwise_count(nd.to_words([nd.perceptual_hash(a, "phash", hash_size)])
                                ^ nd.to_words([nd.perceptual_hash(b, "phash", hash_size)])).sum())  # fmt: skip


def test_re_encoded_and_rescaled_copies_are_grouped_other_cells_are_not(replica, tmp_path):
    originals = cells(replica, 6)
    write_folder_set(tmp_path, originals, ["jpeg75", "half", "double"], copies_of=2)
    sources = ingest(tmp_path, NEAR).set_index("rel_path")
    assert sources["content_hash"].nunique() == len(sources)  # nothing is an exact duplicate
    for k in (0, 1):
        folder = "a" if k % 2 else "b"
        first = sources.loc[f"{folder}/{k:02d}_0.png", "image_id"]
        assert pd.isna(sources.loc[f"{folder}/{k:02d}_0.png", "near_duplicate_of"])
        for edit in ("jpeg75", "half", "double"):
            assert sources.loc[f"{folder}/{k:02d}_{edit}.png", "near_duplicate_of"] == first
    # the other four cells are in no group, and the two edited cells are two groups
    singles = [f"{'a' if k % 2 else 'b'}/{k:02d}_0.png" for k in range(2, 6)]
    assert sources.loc[singles, "near_duplicate_of"].isna().all()
    assert len(near_duplicate_groups(sources.reset_index())) == 2


def test_a_5_percent_crop_is_caught_at_a_larger_threshold_and_the_default_says_so(replica, tmp_path):
    """At the default (20 bits of 256) about half of the replica's 5 % crops are within reach
    (docs/architecture.md#near-duplicates); 40 bits caught every one of 464 replica cells."""
    a, b = cells(replica, 2)
    assert distance(a, crop5(a)) <= 40
    assert distance(a, b) > 40  # a different cell stays apart at that threshold
    write_folder_set(tmp_path, [a, b], ["crop5"], copies_of=1)
    sources = ingest(tmp_path, {**NEAR, "max_distance": 40}).set_index("rel_path")
    assert sources.loc["b/00_crop5.png", "near_duplicate_of"] == sources.loc["b/00_0.png", "image_id"]
    assert pd.isna(sources.loc["a/01_0.png", "near_duplicate_of"])
    assert "crops only partly" in summary(sources.reset_index(), ["a", "b"], near_duplicates=NEAR)["near_duplicates"]["not_caught"]


def test_rotations_and_mirror_images_are_not_caught(replica):
    (a,) = cells(replica, 1)
    assert distance(a, np.rot90(a).copy()) > NEAR["max_distance"]
    assert distance(a, a[:, ::-1].copy()) > NEAR["max_distance"]


@pytest.fixture
def copies_set(replica, tmp_path_factory):
    """24 replica cells without patient ids, 8 of them with 3 edited copies each (56 images)."""
    root = tmp_path_factory.mktemp("copies")
    write_folder_set(root, cells(replica, 24), ["jpeg75", "half", "double"], copies_of=8)
    return root


def straddling(splits: pd.DataFrame, sources: pd.DataFrame) -> int:
    """Near-duplicate groups (by file name: the original and its copies) found in several splits."""
    df = splits.merge(sources, on="image_id")
    cell = df["rel_path"].str.extract(r"/(\d+)_")[0]
    return int((df.groupby(cell)["split"].nunique() > 1).sum())


def test_a_near_duplicate_group_never_straddles_splits_and_off_lets_it(copies_set):
    on, off = ingest(copies_set, NEAR), ingest(copies_set, OFF)
    assert len(near_duplicate_groups(on)) == 8
    leaks_off = 0
    for seed in range(1, 6):
        splits, notes = assign_splits(on, seed=seed, use_dataset_folds=False, ratios=(2, 1, 1))
        assert straddling(splits, on) == 0
        assert any("8 group(s) beyond identical pixels, 32 image(s)" in n for n in notes)
        splits_off, _ = assign_splits(off, seed=seed, use_dataset_folds=False, ratios=(2, 1, 1))
        leaks_off += straddling(splits_off, off)
    assert leaks_off > 0  # without the grouping, copies do land in other splits


def test_off_restores_the_identical_pixels_only_behaviour(copies_set):
    off = ingest(copies_set, OFF)
    assert off["perceptual_hash"].isna().all() and off["near_duplicate_of"].isna().all()
    on = ingest(copies_set, NEAR)
    cols = [c for c in off.columns if c not in ("perceptual_hash", "near_duplicate_of")]
    pd.testing.assert_frame_equal(off[cols], on[cols])  # everything else is as before
    splits_off, notes = assign_splits(off, seed=3, use_dataset_folds=False, ratios=(2, 1, 1))
    ungrouped, _ = assign_splits(on.assign(near_duplicate_of=None), seed=3, use_dataset_folds=False, ratios=(2, 1, 1))
    pd.testing.assert_frame_equal(splits_off, ungrouped)
    assert (splits_off["group"] == splits_off["image_id"]).all()  # no patients, no duplicates: one image a group
    assert any("not looked for (data.near_duplicates.method: off)" in n for n in notes)
    assert summary(off, ["a", "b"], near_duplicates=OFF)["near_duplicates"]["method"] == "off"


def test_a_near_duplicate_across_patients_joins_them_like_an_identical_image(replica, tmp_path):
    """A rescaled copy of a training-fold cell saved in the validation fold under another
    patient's name: the two patients become one group, moved to one split, and the notes say so."""
    root = tmp_path / "r"
    shutil.copytree(replica, root)
    train = sorted(root.glob("training_data/fold_0/all/*.bmp"))[0]
    val_dir = root / "training_data/fold_2/all"
    other = sorted(val_dir.glob("*.bmp"))[0].name.split("_")[1]
    Image.fromarray(rescale(np.asarray(Image.open(train).convert("RGB")), 0.5)).save(val_dir / f"UID_{other}_999_1_all.bmp")
    sources = build_sources(list_candidates("cnmc", root, dataset="r")[0], root, dataset="r", max_pixels=10**7,
                            near_duplicates=NEAR)  # fmt: skip
    assert sources["duplicate_of"].isna().all()  # not identical pixels: today's grouping misses it
    splits, notes = assign_splits(sources, seed=1, val_fold=2)
    df = splits.merge(sources, on="image_id")
    source_patient = train.name.split("_")[1]
    group = df.loc[df["patient_id"] == other, "group"].unique()
    assert len(group) == 1 and set(group[0].split("+")) == {source_patient, other}
    assert df.loc[df["group"] == group[0], "split"].nunique() == 1
    assert any(f"patients {', '.join(sorted([source_patient, other]))}" in n for n in notes)
    assert any("moved to" in n and "near-identical" in n for n in notes)
    info = summary(sources, ["hem", "all"], near_duplicates=NEAR)["near_duplicates"]
    assert info["groups"] == 1 and info["across_patients"] == 1
    assert info["first_groups"] == [sorted([str(train.relative_to(root)), f"training_data/fold_2/all/UID_{other}_999_1_all.bmp"])]


def test_blockwise_pairs_equal_all_pairs_and_groups_are_deterministic():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2**63, size=(40, 4), dtype=np.uint64)
    copies = base[:10].copy()
    copies[:, 0] ^= np.uint64(0b1011)  # 10 copies 3 bits away
    words = np.concatenate([base, copies])
    hashes = ["".join(f"{w:016x}" for w in row) for row in words]
    dist = np.bitwise_count(words[:, None, :] ^ words[None, :, :]).sum(-1)
    want = {(i, j) for i, j in zip(*np.nonzero(dist <= 3)) if i < j}
    for block in (1, 7, 64):
        i, j = nd.close_pairs(nd.to_words(hashes), 3, block)
        assert set(zip(i.tolist(), j.tolist())) == want
        assert nd.components(hashes, 3, block).tolist() == nd.components(hashes, 3).tolist()
    labels = nd.components(hashes, 3)
    assert labels[:40].tolist() == list(range(40)) and labels[40:].tolist() == list(range(10))


def test_threads_give_the_same_hashes_and_groups(copies_set):
    candidates, _ = list_candidates("folders", copies_set, dataset="t")
    one = build_sources(candidates, copies_set, dataset="t", max_pixels=10**8, near_duplicates=NEAR, threads=1)
    two = build_sources(candidates, copies_set, dataset="t", max_pixels=10**8, near_duplicates=NEAR, threads=3)
    pd.testing.assert_frame_equal(one, two)


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ({"method": "pash"}, ["data.near_duplicates.method", "'pash'", "'phash'", "'off'"]),
        ({"max_distance": -1}, ["data.near_duplicates.max_distance", "-1"]),
        ({"max_distance": "ten"}, ["data.near_duplicates.max_distance", "'ten'"]),
        ({"hash_size": 12}, ["data.near_duplicates.hash_size", "12"]),
        ({"threshold": 5}, ["data.near_duplicates", "threshold"]),
    ],
)
def test_the_schema_refuses_bad_values_with_a_readable_message(value, words):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"]["near_duplicates"].update(value)
    with pytest.raises(ParamsError) as e:
        validate_params(params, SCHEMA)
    msg = str(e.value)
    assert all(w in msg for w in words), msg
