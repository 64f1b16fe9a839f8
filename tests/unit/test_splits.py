"""Splits: no patient and no set of identical images crosses splits; dataset folds; seeded ratios."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest

from hemaflow.data.adapters import list_candidates
from hemaflow.data.ingest import build_sources
from hemaflow.data.splits import assign_splits, split_summary

PRELIM = "validation_data/C-NMC_test_prelim_phase_data"


def crossing(sources: pd.DataFrame, splits: pd.DataFrame, key: str) -> list:
    """Values of `key` (patient, content hash) found in more than one split."""
    df = splits.merge(sources, on="image_id").dropna(subset=[key])
    n = df.groupby(key)["split"].nunique()
    return sorted(n[n > 1].index)


@pytest.fixture
def leaky_replica(replica, tmp_path):
    """The replica plus a val-fold copy of a train-fold image under another patient's name,
    and a training-fold file of a holdout patient."""
    root = tmp_path / "leaky"
    shutil.copytree(replica, root)
    train = sorted(root.glob("training_data/fold_0/all/*.bmp"))[0]
    val_dir = root / "training_data/fold_2/all"
    other = sorted(val_dir.glob("*.bmp"))[0].name.split("_")[1]
    shutil.copy(train, val_dir / f"UID_{other}_999_1_all.bmp")
    holdout_name = pd.read_csv(root / "validation_data/C-NMC_test_prelim_phase_data_labels.csv")["Patient_ID"][0]
    patient, label = holdout_name.split("_")[1], holdout_name[-7:-4]
    source = sorted(root.glob(f"{PRELIM}/*.bmp"))[-1]  # some other holdout cell's pixels
    shutil.copy(source, root / f"training_data/fold_1/{label}/UID_{patient}_998_1_{label}.bmp")
    return root, train, other, patient.upper()


NEAR = {"method": "phash", "hash_size": 16, "max_distance": 20}  # the schema's default


@pytest.fixture
def fake_sources(fake_sources):
    """conftest's factory plus a distinct perceptual hash per image and no near-duplicate."""

    def make(**kw):
        df = fake_sources(**kw)
        return df.assign(perceptual_hash=[f"{i:064x}" for i in range(len(df))], near_duplicate_of=None)

    return make


def sources_of(root, near=NEAR) -> pd.DataFrame:
    return build_sources(list_candidates("cnmc", root, dataset="r")[0], root, dataset="r", max_pixels=10**7,
                         near_duplicates=near)  # fmt: skip


def other_than_near(notes: list[str]) -> list[str]:
    return [n for n in notes if not n.startswith("near-duplicate")]


def test_dataset_folds_holdout_is_test(replica):
    sources = sources_of(replica)
    splits, notes = assign_splits(sources, seed=1, val_fold=2)
    df = splits.merge(sources, on="image_id")
    assert len(splits) == (sources.status == "ok").sum()
    assert (df.loc[df.holdout, "split"] == "test").all()
    assert (df.loc[df.fold == 2, "split"] == "val").all()
    assert (df.loc[df.fold.isin([0, 1]), "split"] == "train").all()
    assert other_than_near(notes) == []
    assert notes[0].startswith("near-duplicates (perceptual hash, see ingest.json): 0 group(s)")
    assert crossing(sources, splits, "patient_id") == []


def test_leaks_in_a_replica_are_merged_and_reported(leaky_replica):
    root, train_file, other, holdout_patient = leaky_replica
    sources = sources_of(root)
    assert sources.duplicate_of.notna().sum() >= 2  # the injected copies were detected
    splits, notes = assign_splits(sources, seed=1, val_fold=2)
    assert crossing(sources, splits, "patient_id") == []
    assert crossing(sources, splits, "content_hash") == []
    df = splits.merge(sources, on="image_id")
    source_patient = train_file.name.split("_")[1]
    merged = df.loc[df.patient_id == other, "group"].unique()
    assert len(merged) == 1 and set(merged[0].split("+")) == {source_patient, other}
    assert (df.loc[df.patient_id == holdout_patient, "split"] == "test").all()
    assert len(other_than_near(notes)) == 2 and all("moved to" in n for n in other_than_near(notes))


def test_stratified_split_is_group_disjoint_and_roughly_proportional(fake_sources):
    sources = fake_sources(n_patients=90)
    splits, notes = assign_splits(sources, seed=3, use_dataset_folds=False, ratios=(7, 2, 1))
    assert other_than_near(notes) == []
    assert crossing(sources, splits, "patient_id") == []
    share = splits.split.value_counts(normalize=True)
    assert share["train"] == pytest.approx(0.7, abs=0.07)
    assert share["val"] == pytest.approx(0.2, abs=0.06)
    assert share["test"] == pytest.approx(0.1, abs=0.05)
    df = splits.merge(sources, on="image_id")
    all_share = df.groupby("split")["label"].apply(lambda s: (s == "all").mean())
    assert (all_share.max() - all_share.min()) < 0.15  # class-stratified


def test_splits_are_deterministic_per_seed(fake_sources):
    sources = fake_sources()
    a, _ = assign_splits(sources, seed=5, use_dataset_folds=False)
    b, _ = assign_splits(sources, seed=5, use_dataset_folds=False)
    c, _ = assign_splits(sources, seed=6, use_dataset_folds=False)
    pd.testing.assert_frame_equal(a, b)
    assert not a.split.equals(c.split)


def test_without_patients_duplicates_stay_together_and_leakage_is_noted(fake_sources):
    sources = fake_sources(n_patients=40, patients=False)
    # three identical images scattered through the table
    dup_rows = sources.index[[3, 50, 100]]
    sources.loc[dup_rows[1:], "duplicate_of"] = sources.loc[dup_rows[0], "image_id"]
    splits, notes = assign_splits(sources, seed=0, use_dataset_folds=False)
    assert any("leakage" in n and "cannot be ruled out" in n for n in notes)
    groups = splits.set_index("image_id").loc[sources.loc[dup_rows, "image_id"]]
    assert groups.group.nunique() == 1 and groups.split.nunique() == 1
    assert splits.group.nunique() == len(sources) - 2


@pytest.mark.parametrize(("status", "reason"), [("quarantined", "truncated"), ("skipped", "hidden")])
def test_unusable_rows_get_no_split(fake_sources, status, reason):
    sources = fake_sources(n_patients=30)
    sources.loc[:4, ["status", "reason"]] = [status, reason]
    splits, _ = assign_splits(sources, seed=0, use_dataset_folds=False)
    assert set(splits.image_id) == set(sources.image_id[5:])


def test_clear_errors_for_impossible_requests(fake_sources, replica):
    with pytest.raises(ValueError, match=r"split\.ratios"):
        assign_splits(fake_sources(n_patients=5), seed=0, use_dataset_folds=False, ratios=(7, 2, 1))
    with pytest.raises(ValueError, match=r"split\.val_fold.*\[0, 1, 2\]"):
        assign_splits(sources_of(replica), seed=0, val_fold=5)


def test_split_summary_counts_patients_and_cells(fake_sources):
    sources = fake_sources(n_patients=40)
    splits, _ = assign_splits(sources, seed=0, use_dataset_folds=False)
    table = split_summary(sources, splits)
    assert list(table.columns) == ["split", "label", "patients", "cells"]
    assert table.cells.sum() == len(sources)
    assert table.patients.sum() == sources.patient_id.nunique()
    assert list(dict.fromkeys(table.split)) == ["train", "val", "test"]
    expected = splits.merge(sources, on="image_id").query("split == 'val' and label == 'hem'")
    row = table[(table.split == "val") & (table.label == "hem")].iloc[0]
    assert (row.patients, row.cells) == (expected.patient_id.nunique(), len(expected))


@pytest.mark.parametrize("missing", ["nan", ""])
def test_a_missing_duplicate_spelt_as_text_merges_nothing(fake_sources, missing):
    # pandas 2's astype("str") writes a missing duplicate_of as the text "nan": that is no image
    sources = fake_sources(n_patients=40, patients=False).assign(duplicate_of=missing)
    dup_rows = sources.index[[3, 50]]
    sources.loc[dup_rows[1], "duplicate_of"] = sources.loc[dup_rows[0], "image_id"]
    splits, _ = assign_splits(sources, seed=0, use_dataset_folds=False)
    assert splits.group.nunique() == len(sources) - 1
    assert set(splits.split) == {"train", "val", "test"}


def test_pyproject_requires_the_pandas_whose_strings_the_manifests_use():
    import tomllib

    from packaging.requirements import Requirement

    from harness import ROOT

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pandas = next(Requirement(d) for d in deps if Requirement(d).name == "pandas")
    assert "2.2.3" not in pandas.specifier and "3.1.1" in pandas.specifier
def test_a_class_missing_from_a_split_is_named_with_the_option_to_change(fake_sources, replica):
    sources = fake_sources(n_patients=40)
    rare = sources.patient_id.isin(["P1", "P2"])  # two patients cannot fill three splits
    sources.loc[rare, ["label", "label_index"]] = ["blast", 2]
    with pytest.raises(ValueError, match=r"split '(train|val|test)' has no 'blast' image.*split\.ratios"):
        assign_splits(sources, seed=0, use_dataset_folds=False)

    cnmc = sources_of(replica)
    no_val_hem = (cnmc.fold == 2) & (cnmc.label == "hem")
    cnmc.loc[no_val_hem, ["status", "reason"]] = ["quarantined", "truncated"]
    with pytest.raises(ValueError, match=r"split 'val' has no 'hem' image.*split\.val_fold"):
        assign_splits(cnmc, seed=0, val_fold=2)
