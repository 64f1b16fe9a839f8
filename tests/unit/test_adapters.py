"""Adapters: candidate listing for C-NMC (replica, real index), class folders and file lists."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pandas as pd
import pytest

from hemaflow.data.adapters import list_candidates
from hemaflow.data.images import SKIP_REASONS

REFERENCE_INDEX = Path(__file__).resolve().parents[3] / "shared/reference/cnmc-file-index.txt"
BCCD = Path(__file__).resolve().parents[3] / "shared/data/bccd-wbc"
PRELIM = "validation_data/C-NMC_test_prelim_phase_data"
LABELS = "validation_data/C-NMC_test_prelim_phase_data_labels.csv"


def touch(root: Path, *rels: str) -> None:
    for rel in rels:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")  # never decoded by adapters


def by_path(df: pd.DataFrame) -> pd.DataFrame:
    return df.set_index("rel_path")


def candidates(*args, **kw) -> pd.DataFrame:
    """The candidate rows only (list_candidates also returns the class list)."""
    return list_candidates(*args, **kw)[0]


def usable(df: pd.DataFrame) -> pd.DataFrame:
    """Rows that are candidates for decoding, not skipped."""
    return df[~df.reason.isin(list(SKIP_REASONS))]


def test_cnmc_on_replica_matches_files_and_labels_csv(replica):
    everything = candidates("cnmc", replica, dataset="replica")
    df = usable(everything)
    train_files = sorted(p.relative_to(replica).as_posix() for p in replica.glob("training_data/*/*/*.bmp"))
    prelim_files = sorted(p.relative_to(replica).as_posix() for p in replica.glob(f"{PRELIM}/*.bmp"))
    assert sorted(df.loc[~df.holdout, "rel_path"]) == train_files
    assert sorted(df.loc[df.holdout, "rel_path"]) == prelim_files
    assert not df.rel_path.str.startswith("testing_data").any()
    skipped = everything[everything.reason.isin(list(SKIP_REASONS))]
    assert (skipped.loc[skipped.rel_path.str.startswith("testing_data/"), "reason"] == "unlabelled").all()
    assert skipped.set_index("rel_path").loc[LABELS, "reason"] == "label_file"
    on_disk = sorted(p.relative_to(replica).as_posix() for p in replica.rglob("*") if p.is_file())
    assert sorted(everything.rel_path) == on_disk  # every file accounted for
    assert df.reason.isna().all()
    assert dict(zip(df.label, df.label_index)) == {"hem": 0, "all": 1}
    assert (df.loc[~df.holdout, "fold"] >= 0).all() and (df.loc[df.holdout, "fold"] == -1).all()
    # folder label, file-name label and fold agree with the path
    train = df[~df.holdout]
    assert (train.rel_path.str.split("/").str[2] == train.label).all()
    assert (train.rel_path.str.extract(r"fold_(\d+)")[0].astype(int) == train.fold).all()
    # holdout labels and patients come from the CSV
    csv = pd.read_csv(replica / LABELS).set_index("new_names")
    hold = df[df.holdout].assign(name=lambda d: d.rel_path.str.rsplit("/", n=1).str[1]).set_index("name")
    assert (hold.label_index == csv.loc[hold.index, "labels"]).all()
    assert (hold.patient_id == csv.loc[hold.index, "Patient_ID"].str.split("_").str[1].str.upper()).all()
    # the lowercase-h patient is one patient, spelled H
    assert not df.patient_id.str.startswith("h").any()
    lower = df[df.rel_path.str.contains("/UID_h")]
    assert len(lower) and lower.patient_id.nunique() == 1
    assert df.rel_path.str.contains(f"/UID_{lower.patient_id.iloc[0]}_").any()
    assert (df.image_id.str.len() == 16).all() and df.image_id.is_unique


def test_cnmc_reference_index_dry_run():
    if not REFERENCE_INDEX.exists():
        pytest.skip(f"{REFERENCE_INDEX} not present")
    df = usable(candidates("cnmc", "/nonexistent/C-NMC_Leukemia", index=REFERENCE_INDEX, dataset="cnmc"))
    train = df[~df.holdout]
    assert len(train) == 10_661
    assert train.label.value_counts().to_dict() == {"all": 7_272, "hem": 3_389}
    assert train.patient_id.nunique() == 73
    assert "H3" in set(train.patient_id) and not train.patient_id.str.startswith("h").any()
    assert train.rel_path.str.startswith("training_data/").all()  # release folder stripped
    hold = df[df.holdout]
    assert len(hold) == 1_867
    # no labels CSV to read: unknown, not bad
    assert hold.label.isna().all() and (hold.label_index == -1).all() and hold.reason.isna().all()
    assert df.reason.isna().all()
    assert not df.rel_path.str.startswith("testing_data").any()


def test_cnmc_flags_label_and_name_problems(tmp_path):
    touch(
        tmp_path,
        "training_data/fold_0/hem/UID_H3_1_1_hem.bmp",
        "training_data/fold_1/hem/UID_h3_1_1_hem.bmp",  # same cell as above once h3 == H3
        "training_data/fold_0/all/UID_5_1_1_hem.bmp",  # file name says hem, folder says all
        f"{PRELIM}/1.bmp",
        f"{PRELIM}/2.bmp",  # not in the labels CSV
        f"{PRELIM}/3.bmp",  # label 7 is no class
        "testing_data/C-NMC_test_final_phase_data/1.bmp",
    )
    (tmp_path / LABELS).write_text(
        "Patient_ID,new_names,labels\nUID_9_4_2_all.bmp,1.bmp,1\nUID_H7_1_1_hem.bmp,3.bmp,7\nUID_H8_2_1_hem.bmp,4.bmp,0\n"
    )
    df = by_path(candidates("cnmc", tmp_path, dataset="t"))
    reason = df.reason.to_dict()
    assert pd.isna(reason["training_data/fold_0/hem/UID_H3_1_1_hem.bmp"])
    assert reason["training_data/fold_1/hem/UID_h3_1_1_hem.bmp"] == "duplicate_name"
    assert reason["training_data/fold_0/all/UID_5_1_1_hem.bmp"] == "bad_label"
    assert pd.isna(reason[f"{PRELIM}/1.bmp"])
    assert df.loc[f"{PRELIM}/1.bmp", ["patient_id", "label"]].tolist() == ["9", "all"]
    assert reason[f"{PRELIM}/2.bmp"] == "bad_label"
    assert reason[f"{PRELIM}/3.bmp"] == "bad_label"
    # listed in the CSV but absent: kept as a candidate (ingest will call it missing)
    assert pd.isna(reason[f"{PRELIM}/4.bmp"]) and df.loc[f"{PRELIM}/4.bmp", "label"] == "hem"
    assert reason["testing_data/C-NMC_test_final_phase_data/1.bmp"] == "unlabelled"
    assert reason[LABELS] == "label_file"


def test_index_paths_are_stripped_and_repeats_flagged(tmp_path):
    index = tmp_path / "index.txt"
    index.write_text(
        "release/training_data/fold_0/all/UID_1_1_1_all.bmp\n\n"
        "release/training_data/fold_0/all/UID_1_1_1_all.bmp\n"
        "release/training_data/fold_1/hem/UID_H2_1_1_hem.bmp\n"
    )
    df = candidates("cnmc", tmp_path / "data", index=index, dataset="t")
    assert len(df) == 3 and df.image_id.is_unique
    first = df[df.rel_path == "training_data/fold_0/all/UID_1_1_1_all.bmp"]
    assert sorted(first.reason.fillna("")) == ["", "duplicate_name"]


def test_image_id_is_sha1_of_dataset_and_path(replica):
    df = candidates("cnmc", replica, dataset="replica").head(3)
    for rel, iid in zip(df.rel_path, df.image_id):
        assert iid == hashlib.sha1(f"replica/{rel}".encode()).hexdigest()[:16]


def test_folders_adapter_on_bccd():
    if not BCCD.is_dir():
        pytest.skip(f"{BCCD} not present (real-image fixture); nothing to check the folders adapter against")
    everything = candidates("folders", BCCD, dataset="bccd")
    df = usable(everything)
    assert len(df) == 351
    assert everything.set_index("rel_path").loc["README.md", "reason"] == "outside_class_folder"
    classes = sorted(p.name for p in BCCD.iterdir() if p.is_dir())
    assert len(classes) == 5
    assert dict(zip(df.label, df.label_index)) == {c: i for i, c in enumerate(classes)}
    assert df.patient_id.isna().all() and df.reason.isna().all()
    assert (df.fold == -1).all() and not df.holdout.any()


def test_folders_adapter_patient_regex_and_hidden_files(tmp_path):
    touch(tmp_path, "b/p1_x.png", "b/p2_y.png", "a/p1_z.png", "a/noid.png", "a/.DS_Store", "notes.txt")
    everything = by_path(candidates("folders", tmp_path, patient_regex=r"^(?P<patient>p\d+)_", dataset="t"))
    assert everything.reason.to_dict()["a/.DS_Store"] == "hidden"
    assert everything.reason.to_dict()["notes.txt"] == "outside_class_folder"
    df = everything[everything.reason.isna()]
    assert sorted(df.index) == ["a/noid.png", "a/p1_z.png", "b/p1_x.png", "b/p2_y.png"]
    assert df.label_index.to_dict() == {"a/noid.png": 0, "a/p1_z.png": 0, "b/p1_x.png": 1, "b/p2_y.png": 1}
    assert df.patient_id.fillna("-").to_dict() == {"a/noid.png": "-", "a/p1_z.png": "p1", "b/p1_x.png": "p1", "b/p2_y.png": "p2"}


@pytest.mark.parametrize("pattern", [r"(\d+)", r"(?P<patient"])
def test_bad_patient_regex_names_the_key(tmp_path, pattern):
    touch(tmp_path, "a/1.png")
    with pytest.raises(ValueError, match="data.patient_regex"):
        candidates("folders", tmp_path, patient_regex=pattern, dataset="t")


def test_symlinks_out_of_root_are_outside_root(tmp_path):
    outside = tmp_path / "elsewhere"
    touch(outside, "secret.png", "dir/other.png")
    root = tmp_path / "root"
    touch(root, "a/ok.png")
    os.symlink(outside / "secret.png", root / "a" / "link.png")
    os.symlink(outside / "dir", root / "a" / "linkdir")
    os.symlink(root / "a" / "ok.png", root / "a" / "inside.png")
    df = by_path(candidates("folders", root, dataset="t"))
    assert df.loc["a/link.png", "reason"] == "outside_root"
    assert df.loc["a/linkdir", "reason"] == "outside_root"
    assert not any("other.png" in p for p in df.index)  # never walked into
    assert pd.isna(df.loc["a/ok.png", "reason"]) and pd.isna(df.loc["a/inside.png", "reason"])


def test_filelist_adapter(tmp_path):
    root = tmp_path / "root"
    touch(root, "x/1.png", "x/2.png")
    filelist = tmp_path / "list.csv"
    filelist.write_text(
        "path,label,patient_id\n"
        "x/1.png,zeta,p1\n"
        "x/2.png,alpha,\n"
        "x/1.png,zeta,p1\n"  # listed twice
        "x/3.png,,p2\n"  # no label
        "../escape.png,alpha,p3\n"
        f"{tmp_path / 'abs.png'},alpha,p3\n"
        "x/../x/4.png,mid,p4\n"
    )
    df = candidates("filelist", root, filelist=filelist, dataset="t")
    assert len(df) == 7 and df.image_id.is_unique
    assert set(df.label.dropna()) == {"alpha", "mid", "zeta"}
    assert dict(zip(df.label.dropna(), df.label_index[df.label.notna()])) == {"alpha": 0, "mid": 1, "zeta": 2}
    got = sorted(zip(df.rel_path, df.reason.fillna("")))
    assert ("x/1.png", "") in got and ("x/1.png", "duplicate_name") in got
    assert ("x/3.png", "bad_label") in got
    assert ("x/4.png", "") in got  # normalised, still inside root
    assert sum(r == "outside_root" for _, r in got) == 2
    assert df.loc[df.rel_path == "x/2.png", "patient_id"].isna().all()
    assert set(df.patient_id.dropna()) == {"p1", "p2", "p3", "p4"}


def test_filelist_missing_column_names_the_file(tmp_path):
    filelist = tmp_path / "list.csv"
    filelist.write_text("file,label\na.png,x\n")
    with pytest.raises(ValueError, match=r"list\.csv.*path"):
        candidates("filelist", tmp_path, filelist=filelist, dataset="t")


def test_unknown_adapter_names_the_key_and_choices(tmp_path):
    with pytest.raises(ValueError, match=r"data\.adapter.*'nope'.*cnmc, folders, filelist"):
        candidates("nope", tmp_path, dataset="t")
