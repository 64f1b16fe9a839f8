"""The synthetic C-NMC replica: real layout and name quirks, determinism, patient structure, class signal."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import ndimage

from hemaflow.data.adapters import list_candidates, reader
from hemaflow.data.synth import class_counts, generate_cnmc_replica, generate_folder_replica

REFERENCE_INDEX = Path(__file__).resolve().parents[3] / "shared/reference/cnmc-file-index.txt"

# The real release's paths (reference index, release folder stripped) all match one of these.
TRAIN = re.compile(r"^training_data/fold_(\d+)/(all|hem)/UID_(H?\d+|h\d+)_(\d+)_(\d+)_(all|hem)\.bmp$")
PRELIM = re.compile(r"^validation_data/C-NMC_test_prelim_phase_data/([1-9]\d*)\.bmp$")
LABELS = "validation_data/C-NMC_test_prelim_phase_data_labels.csv"
FINAL = re.compile(r"^testing_data/C-NMC_test_final_phase_data/([1-9]\d*)\.bmp$")
CELL_NAME = re.compile(r"^UID_(H?\d+|h\d+)_(\d+)_(\d+)_(all|hem)\.bmp$")


def files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def patient_of(name: str) -> str:
    return CELL_NAME.match(name)[1].upper()


def test_patterns_describe_the_real_release():
    if not REFERENCE_INDEX.exists():
        pytest.skip(f"{REFERENCE_INDEX} not present: cannot ground the name patterns on the real release")
    real = [line.strip().split("/", 1)[1] for line in open(REFERENCE_INDEX) if line.strip()]
    unmatched = [p for p in real if not (TRAIN.match(p) or PRELIM.match(p) or FINAL.match(p) or p == LABELS)]
    assert unmatched == []
    assert any("/UID_h" in p for p in real)


def test_replica_layout_and_names_follow_the_release(replica, tiny):
    paths = files(replica)
    assert [p for p in paths if not (TRAIN.match(p) or PRELIM.match(p) or FINAL.match(p) or p == LABELS)] == []
    train = [TRAIN.match(p) for p in paths if TRAIN.match(p)]
    assert all(m[2] == m[6] for m in train)  # folder and file-name label agree
    assert {int(m[1]) for m in train} == set(range(tiny["folds"]))
    ids = {m[3] for m in train}
    all_ids = {m[3] for m in train if m[2] == "all"}
    assert all(i.isdigit() for i in all_ids)
    assert all(i[0] in "Hh" and i[1:].isdigit() for i in ids - all_ids)
    lower = {i for i in ids if i.startswith("h")}
    assert len(lower) == 1 and "H" + next(iter(lower))[1:] in ids  # one patient, spelled both ways

    for part in (PRELIM, FINAL):
        numbers = sorted(int(part.match(p)[1]) for p in paths if part.match(p))
        assert numbers == list(range(1, len(numbers) + 1)) and numbers
    table = pd.read_csv(replica / LABELS)
    assert list(table.columns) == ["Patient_ID", "new_names", "labels"]
    assert sorted(table["new_names"]) == sorted(Path(p).name for p in paths if PRELIM.match(p))
    suffix = table["Patient_ID"].str.extract(r"_(all|hem)\.bmp$")[0]
    assert table["Patient_ID"].str.match(CELL_NAME).all()
    assert (table["labels"] == (suffix == "all").astype(int)).all()


def test_images_are_24bit_bmp_with_one_solid_nucleus_on_black(replica):
    for path in sorted(replica.rglob("*.bmp"))[::7]:
        with Image.open(path) as im:
            assert (im.format, im.mode, im.size) == ("BMP", "RGB", (450, 450))
            rgb = np.asarray(im)
        obj = rgb.any(axis=2)
        _, n = ndimage.label(obj)
        assert n == 1, path
        assert (ndimage.binary_fill_holes(obj) == obj).all(), f"pure-black pixel inside the nucleus of {path}"
        assert obj[225, 225] and not obj[0].any() and not obj[:, -1].any()
        ys, xs = np.nonzero(obj)
        assert abs(ys.mean() - 224.5) < 40 and abs(xs.mean() - 224.5) < 40


def test_generation_is_byte_identical_for_a_seed_and_differs_across_seeds(tmp_path, tiny):
    def generate(name, seed):
        root = tmp_path / name
        generate_cnmc_replica(root, **{**tiny, "seed": seed}, image_size=96)
        return {p: (root / p).read_bytes() for p in files(root)}

    first, again, other = generate("a", 3), generate("b", 3), generate("c", 4)
    assert first == again
    assert first != other


def test_folds_are_patient_disjoint_and_holdout_patients_are_new(replica, tiny):
    train = [TRAIN.match(p) for p in files(replica) if TRAIN.match(p)]
    per_fold = [{m[3].upper() for m in train if int(m[1]) == k} for k in range(tiny["folds"])]
    for a in range(len(per_fold)):
        for b in range(a + 1, len(per_fold)):
            assert not per_fold[a] & per_fold[b]
    expected = tiny["patients_per_fold"]["all"] + tiny["patients_per_fold"]["hem"]
    assert [len(f) for f in per_fold] == [expected] * tiny["folds"]
    holdout = set(pd.read_csv(replica / LABELS)["Patient_ID"].map(patient_of))
    assert len(holdout) == sum(tiny["holdout_patients"].values())
    assert not holdout & set().union(*per_fold)


def test_default_sized_replica_is_about_two_to_one_with_uneven_patients(tmp_path):
    # Default params.yaml counts; small images keep it fast (the counts do not depend on size).
    root = tmp_path / "r"
    generate_cnmc_replica(
        root, seed=2019, folds=3, patients_per_fold={"all": 4, "hem": 2},
        holdout_patients={"all": 5, "hem": 3}, cells_per_patient=(10, 24), image_size=48,
    )  # fmt: skip
    names = [Path(p).name for p in files(root) if TRAIN.match(p)]
    labels = pd.Series([n[-7:-4] for n in names])
    ratio = (labels == "all").sum() / (labels == "hem").sum()
    assert 1.5 < ratio < 2.7
    per_patient = pd.Series([patient_of(n) for n in names]).value_counts()
    assert per_patient.between(10, 24).all()
    assert per_patient.nunique() > 3


def test_leukemic_cells_are_larger_and_darker_with_overlap(replica):
    rows = []
    for path in replica.glob("training_data/fold_*/*/*.bmp"):
        rgb = np.asarray(Image.open(path))
        obj = rgb.any(axis=2)
        rows.append((path.parent.name, obj.sum(), rgb[obj].mean()))
    df = pd.DataFrame(rows, columns=["label", "area", "brightness"])
    means = df.groupby("label").mean()
    assert means.loc["all", "area"] > 1.2 * means.loc["hem", "area"]
    assert means.loc["all", "brightness"] < means.loc["hem", "brightness"]
    # Not separable by size alone: the largest normal nucleus beats the smallest blast.
    assert df[df.label == "hem"].area.max() > df[df.label == "all"].area.min()


def test_refuses_to_write_into_a_non_empty_root(tmp_path, tiny):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "keep.txt").write_text("user data")
    with pytest.raises(FileExistsError, match="data.root"):
        generate_cnmc_replica(tmp_path / "r", **tiny, image_size=48)
    assert (tmp_path / "r" / "keep.txt").exists()


def test_cbc_sheet_depends_on_the_diagnosis_with_overlap():
    from sklearn.metrics import roc_auc_score

    from hemaflow.data.cbc import CBC_COLUMNS, PATIENT_FIELDS
    from hemaflow.data.synth import cbc_sheet

    patients = [(f"{i}" if i % 3 else f"H{i}", "all" if i % 3 else "hem") for i in range(600)]
    sheet = cbc_sheet(np.random.default_rng(5), patients)
    assert list(sheet.columns) == [*PATIENT_FIELDS, *CBC_COLUMNS] and list(sheet["patient_id"]) == [p for p, _ in patients]
    y = np.array([label == "all" for _, label in patients])
    auc = {}
    for col in CBC_COLUMNS:
        seen = sheet[col].notna().to_numpy()
        assert 0.75 < seen.mean() < 0.99, col  # some values missing, most present
        auc[col] = roc_auc_score(y[seen], sheet.loc[seen, col])
    # leukaemia: higher WBC, lower haemoglobin and platelets, more lymphocytes; no value alone decides
    assert auc["wbc"] > 0.6 and auc["lymphocytes"] > 0.6, auc
    assert auc["haemoglobin"] < 0.4 and auc["platelets"] < 0.4 and auc["rbc"] < 0.4, auc
    assert all(0.05 < a < 0.95 for a in auc.values()), auc
    diff = sheet[["neutrophils", "lymphocytes", "monocytes", "eosinophils", "basophils"]].dropna()
    np.testing.assert_allclose(diff.sum(axis=1), 100.0, atol=0.3)
    assert sheet.equals(cbc_sheet(np.random.default_rng(5), patients))


def test_replica_sheet_covers_its_patients_and_leaves_the_images_unchanged(tmp_path, tiny):
    from hemaflow.data.adapters import list_candidates
    from hemaflow.data.cbc import read_sheet

    generate_cnmc_replica(tmp_path / "plain", **tiny, image_size=64)
    generate_cnmc_replica(tmp_path / "with", **tiny, image_size=64, patient_sheet=tmp_path / "cbc.csv")
    assert {p: (tmp_path / "plain" / p).read_bytes() for p in files(tmp_path / "plain")} == {
        p: (tmp_path / "with" / p).read_bytes() for p in files(tmp_path / "with")
    }
    sheet = read_sheet(tmp_path / "cbc.csv")
    candidates, _ = list_candidates("cnmc", tmp_path / "with", dataset="replica")
    labelled = candidates.dropna(subset=["patient_id"]).drop_duplicates("patient_id").set_index("patient_id")
    assert set(labelled.index) <= set(sheet.index)  # every patient with cells has a row (ids spelled alike)
    assert len(sheet) == len(labelled) + 2  # plus the unlabelled final-phase patients: rows without cells
    raw = pd.read_csv(tmp_path / "cbc.csv", dtype=str)
    assert raw.filter(["name", "age", "sex", "sample_date"]).notna().all().all()


# ---------------------------------------------------------------- class-per-folder replica (synthetic.layout: folders)
FOLDERS = {"classes": ["blast", "lymphocyte", "neutrophil"], "cells_per_class": 12, "imbalance": 4.0,
           "patients": 3, "image_size": 64}  # fmt: skip
PATIENT_REGEX = r"^(?P<patient>P\d+)_"  # what README and the presets give data.patient_regex


def test_folder_replica_layout_names_and_imbalanced_counts(tmp_path):
    root = tmp_path / "r"
    assert generate_folder_replica(root, seed=3, **FOLDERS) == FOLDERS["classes"]
    paths = files(root)
    assert {p.split("/")[0] for p in paths} == set(FOLDERS["classes"])
    assert all(re.fullmatch(r"[a-z]+/P00[1-3]_\d{4}\.png", p) for p in paths), paths
    counts = [sum(p.startswith(c + "/") for p in paths) for c in FOLDERS["classes"]]
    assert counts == [12, 6, 3]  # 12 falling geometrically to 12 / 4
    with Image.open(root / paths[0]) as im:
        assert (im.format, im.mode, im.size) == ("PNG", "RGB", (64, 64))
        rgb = np.asarray(im)
    assert rgb[0, 0].min() > 150 and rgb[32, 32].max() < rgb[0, 0].min()  # light smear, darker nucleus


def test_class_counts_per_class_list_and_ratio():
    assert class_counts(2, [50, 5], 1.0) == [50, 5]
    assert class_counts(3, 10, 1.0) == [10, 10, 10]
    assert class_counts(21, 200, 20.0)[-1] == 10
    with pytest.raises(ValueError, match="synthetic.cells_per_class"):
        class_counts(3, [1, 2], 1.0)


def test_folder_replica_is_byte_identical_for_a_seed_and_counts_name_the_classes(tmp_path):
    def generate(name, seed, **kw):
        root = tmp_path / name
        generate_folder_replica(root, seed=seed, **{**FOLDERS, **kw})
        return {p: (root / p).read_bytes() for p in files(root)}

    first, again, other = generate("a", 3), generate("b", 3), generate("c", 4)
    assert first == again and first != other
    plain = generate("d", 3, classes=2, patients=0, imbalance=1.0)
    assert sorted(plain) == [f"class_{c:02d}/{i:04d}.png" for c in range(2) for i in range(1, 13)]


def test_folder_replica_is_read_by_the_folders_adapter_with_patients(tmp_path):
    root = tmp_path / "r"
    generate_folder_replica(root, seed=3, **FOLDERS)
    assert reader("synthetic", "folders") == "folders" and reader("synthetic", "cnmc") == "synthetic"
    rows, classes = list_candidates(reader("synthetic", "folders"), root, patient_regex=PATIENT_REGEX, dataset="t")
    assert list(classes) == sorted(FOLDERS["classes"])
    assert rows["reason"].isna().all()
    assert set(rows["patient_id"]) == {"P001", "P002", "P003"}
    assert (rows["label"] == rows["rel_path"].str.split("/").str[0]).all()


def test_folder_replica_classes_differ_in_size_and_colour_with_overlap(tmp_path):
    root = tmp_path / "r"
    generate_folder_replica(root, seed=5, classes=2, cells_per_class=30, imbalance=1.0, patients=2, image_size=64)
    rows = []
    for path in root.glob("*/*.png"):
        rgb = np.asarray(Image.open(path)).astype(float)
        dark = rgb.sum(axis=2) < 1.6 * 255  # nucleus (the smear, cytoplasm and red cells are lighter)
        rows.append((path.parent.name, dark.sum(), (rgb[dark, 0] - rgb[dark, 2]).mean()))
    df = pd.DataFrame(rows, columns=["label", "area", "red_minus_blue"])
    d = df.groupby("label").mean()
    assert abs(d.area.iloc[0] - d.area.iloc[1]) > 0.15 * d.area.mean()  # classes differ...
    a, b = (df[df.label == c].area for c in sorted(set(df.label)))
    assert a.max() > b.min() and b.max() > a.min()  # ...but single cells overlap
