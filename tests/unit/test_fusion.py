"""Blood-count fusion: the patient sheet, its join to the records, training-only statistics,
the two-input zoo models, and training and evaluation that really feed the blood count."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import json  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from hemaflow.data import cbc
from hemaflow import models_io  # noqa: E402
from hemaflow.train import fusion  # noqa: E402
from hemaflow.evaluate.score import predict  # noqa: E402
from hemaflow.train.models import REGISTRY  # noqa: E402
from hemaflow.augment.records import encode_example, write_records  # noqa: E402
from harness import fit  # noqa: E402

SIZE = 32
# patient -> (split, label, cells); P7 is not in the sheet, X99 is in the sheet without cells
PATIENTS = {f"P{i}": ("train", i % 2, 8) for i in range(8)}
PATIENTS.update({f"P{i}": ("val", i % 2, 6) for i in range(8, 12)})
PATIENTS.update({"P12": ("test", 1, 4), "P13": ("test", 0, 4)})
PATIENTS["P0"] = ("train", 0, 20)  # uneven cells: a per-cell mean would differ from the per-patient one


def manifests():
    """sources, splits, augmented for PATIENTS: one record (aug_id) per image."""
    rows = [(f"{pid}_{c}", pid, split, label) for pid, (split, label, n) in PATIENTS.items() for c in range(n)]
    rows.append(("nopatient_0", None, "train", 0))  # an image without a patient id
    table = pd.DataFrame(rows, columns=["image_id", "patient_id", "split", "label_index"])
    sources = table[["image_id", "patient_id", "label_index"]].assign(label=lambda d: d["label_index"].map({0: "hem", 1: "all"}))
    splits = table[["image_id", "split"]].assign(group=table["patient_id"].fillna(table["image_id"]))
    augmented = table.assign(aug_id="a_" + table["image_id"])[["aug_id", "image_id", "split", "label_index"]]
    return sources, splits, augmented


def write_sheet(path, wbc_of=lambda label: 5.0 + 10.0 * label, leak=False):
    """WBC and haemoglobin separate the classes; P1 lacks haemoglobin, P7 is absent, X99 has no
    cells. With `leak`, val/test patients get 500 platelets (training patients 250-280), so a
    mean over them would move."""
    rows = []
    for i, (pid, (split, label, _)) in enumerate(PATIENTS.items()):
        if pid == "P7":
            continue
        rows.append({"patient_id": pid, "name": f"n{pid}", "age": 40, "wbc": wbc_of(label),
                     "haemoglobin": "" if pid == "P1" else 14.0 - 3.0 * label + i // 2 % 3 * 0.1,
                     "platelets": 500.0 if leak and split != "train" else 250.0 + 10 * (i // 2 % 4)})  # fmt: skip
    rows.append({"patient_id": "X99", "name": "extra", "age": 1, "wbc": 1e6, "haemoglobin": 1e6, "platelets": 1e6})
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def write_shards(root, augmented, seed=0):
    """Noise images: no class signal at all, so only the blood count can separate the classes."""
    rng = np.random.default_rng(seed)
    paths = {}
    for split, d in augmented.groupby("split"):
        (root / split).mkdir(parents=True, exist_ok=True)
        examples = []
        for aug_id, label in zip(d["aug_id"], d["label_index"]):
            img = rng.integers(0, 10, (SIZE, SIZE, 4), dtype=np.uint8)
            examples.append(encode_example(cv2.imencode(".png", img)[1].tobytes(), int(label), aug_id))
        paths[split] = [root / split / "000.tfrecord"]
        write_records(paths[split][0], examples)
    return paths


# ------------------------------------------------------------------ the sheet and its join


def test_sheet_join_missing_patients_extra_patients_and_missing_values(tmp_path):
    sources, splits, augmented = manifests()
    inputs = fusion.cbc_inputs(write_sheet(tmp_path / "s.csv"), sources, splits, augmented)
    v = inputs.values
    assert list(v.columns) == ["wbc", "haemoglobin", "platelets"]  # CBC columns of the sheet, in CBC order
    assert list(v.index) == list(augmented["aug_id"])  # every record, nothing for X99
    np.testing.assert_allclose(v.loc["a_P3_0"], [15.0, 11.1, 260.0], rtol=1e-6)
    assert np.isnan(v.loc["a_P1_2", "haemoglobin"]) and v.loc["a_P1_2", "wbc"] == 15.0
    assert v.loc[["a_P7_0", "a_nopatient_0"]].isna().all().all()  # absent patient, no patient id: all missing
    assert v.dtypes.eq(np.float32).all()


def test_standardisation_uses_training_patients_once_each(tmp_path):
    sources, splits, augmented = manifests()
    stats = fusion.cbc_inputs(write_sheet(tmp_path / "s.csv", leak=True), sources, splits, augmented).stats
    train = [f"P{i}" for i in range(7)]  # P7 is a training patient missing from the sheet
    platelets = [250.0 + 10 * (i // 2 % 4) for i in range(7)]
    assert stats.n_patients == 7 and stats.columns == ("wbc", "haemoglobin", "platelets")
    # val/test patients (500) and the extra patient (1e6) would move the mean
    assert stats.mean[2] == pytest.approx(np.mean(platelets)) and stats.std[2] == pytest.approx(np.std(platelets))
    wbc = [5.0 + 10.0 * (i % 2) for i in range(7)]
    assert stats.mean[0] == pytest.approx(np.mean(wbc))  # per cell (P0 20 times) it would be 8.5, not 9.3
    # per patient, not per cell: P1 has no haemoglobin; the others count once whatever their cells
    hb = [14.0 - 3.0 * (i % 2) + i // 2 % 3 * 0.1 for i in range(7) if i != 1]
    assert stats.mean[1] == pytest.approx(np.mean(hb))
    assert cbc.patients_of(sources, splits, "train") == sorted(train + ["P7"])


def test_missing_values_become_the_training_mean_with_an_indicator():
    layer = fusion.CBCStandardise(["wbc", "rbc"], [7.0, 4.5], [2.0, 0.5])
    out = np.asarray(layer(np.array([[11.0, np.nan], [np.nan, np.nan], [7.0, 4.0]], np.float32)))
    np.testing.assert_allclose(out, [[2.0, 0.0, 0.0, 1.0], [0.0, 0.0, 1.0, 1.0], [0.0, -1.0, 0.0, 0.0]])


def test_sheet_errors_name_the_file_the_row_and_the_fix(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("patient_id,wbc\nP1,7.1\nP2,seven\n")
    with pytest.raises(ValueError, match=r"bad.csv: column wbc, row 3 \(P2\): 'seven' is not a number"):
        cbc.read_sheet(bad)
    bad.write_text("patient_id,wbc\nP1,7.1\nP1,7.2\n")
    with pytest.raises(ValueError, match="'P1' appears more than once"):
        cbc.read_sheet(bad)
    bad.write_text("id,wbc\nP1,7.1\n")
    with pytest.raises(ValueError, match="no patient_id column"):
        cbc.read_sheet(bad)
    bad.write_text("patient_id,WBC count\nP1,7.1\n")
    with pytest.raises(ValueError, match="no CBC column"):
        cbc.read_sheet(bad)
    with pytest.raises(FileNotFoundError, match="data.patient_sheet"):
        cbc.read_sheet(tmp_path / "nowhere.csv")
    bad.write_text("patient_id,wbc\n012,7.1\n")  # ids are text: 012 stays 012
    assert list(cbc.read_sheet(bad).index) == ["012"]


def test_no_training_patient_in_the_sheet_or_an_empty_column_is_an_error(tmp_path):
    sources, splits, augmented = manifests()
    sheet = cbc.read_sheet(write_sheet(tmp_path / "s.csv"))
    with pytest.raises(ValueError, match="none of the training patients is in the sheet"):
        cbc.fit_standardisation(sheet, ["Q1", "Q2"])
    with pytest.raises(ValueError, match="column.s. haemoglobin have no value for any training patient"):
        cbc.fit_standardisation(sheet, ["P1"])


# ------------------------------------------------------------------ the models


# The backbones share one builder (models._backbone): the smallest stands for all four.
@pytest.mark.parametrize("name", sorted(n for n in REGISTRY if not REGISTRY[n].backbone) + ["mobilenetv3_small"])
def test_every_zoo_model_fuses_and_trains_a_step(name):
    stats = cbc.Standardisation(("wbc", "rbc"), (7.0, 4.5), (2.0, 0.5), 5)
    model = fusion.build_fused_model(name, (36, 36, 3), 3, 0.25, stats)
    assert models_io.takes_cbc(model) and model.output_shape == (None, 3)
    # the blood count (2 values + 2 indicators) enters the classification layer next to the image features
    head = model.get_layer("dense_final")
    image_features = model.get_layer("image_cbc").input[0].shape[-1]
    assert head.kernel.shape == (image_features + 4, 3)
    model.compile("adam", "sparse_categorical_crossentropy")
    x = np.random.default_rng(0).random((2, 36, 36, 3), dtype=np.float32)
    before = head.kernel.numpy().copy()
    loss = model.train_on_batch((x, np.array([[7.0, np.nan], [12.0, 4.0]], np.float32)), np.array([0, 2]))
    assert np.isfinite(loss) and not np.array_equal(before, head.kernel.numpy())


# ------------------------------------------------------------------ training and evaluation

COMBO = {"model": "breen_cnn", "optimizer": "adam", "lr": 1e-2, "lr_policy": "constant", "batch_size": 16,
         "dropout": 0.25, "inputs": "image+cbc"}  # fmt: skip


@pytest.fixture(scope="module")
def fused_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("fused")
    sources, splits, augmented = manifests()
    sheet = write_sheet(root / "sheet.csv")
    shards = write_shards(root / "shards", augmented)
    inputs = fusion.cbc_inputs(sheet, sources, splits, augmented)
    train = augmented[augmented["split"] == "train"]
    info = fit(
        COMBO, train_records=shards["train"], val_records=shards["val"], channels=4, size=SIZE, n_classes=2,
        max_epochs=10, patience=10, cyclic={"step_size": 2, "scale": 4, "start_at": "max"}, seed=3,
        class_counts=train["label_index"].value_counts().to_dict(), n_val=int((augmented["split"] == "val").sum()),
        out_dir=root / "model", cbc=inputs,
    )  # fmt: skip
    return root, sources, augmented, shards, info


def test_training_a_fused_combo_saves_the_statistics_with_the_model(fused_run):
    root, _, _, _, info = fused_run
    model = models_io.load_model(root / "model/model.keras")
    layer = model.get_layer("cbc_standardise")
    assert info["cbc"]["columns"] == layer.columns == ["wbc", "haemoglobin", "platelets"]
    assert info["cbc"]["mean"] == pytest.approx(layer.mean) and info["cbc"]["std"] == pytest.approx(layer.std)
    assert json.loads((root / "model/train.json").read_text())["inputs"] == "image+cbc"


def test_evaluation_feeds_each_record_its_patients_blood_count(fused_run, tmp_path):
    root, sources, augmented, shards, _ = fused_run
    model = models_io.load_model(root / "model/model.keras")
    records = shards["val"] + shards["test"]

    def p_all(sheet):
        pred = predict(model, records, channels=4, cbc=fusion.for_model(model, sheet, sources, augmented))
        return pred.set_index("aug_id")["p_1"]

    honest = p_all(root / "sheet.csv")
    label = augmented.set_index("aug_id").loc[honest.index, "label_index"]
    # noise images: only the blood count can make the val/test patients' classes apart
    assert honest[label == 1].min() > honest[label == 0].max()
    swapped = p_all(write_sheet(tmp_path / "swapped.csv", wbc_of=lambda label: 15.0 - 10.0 * label))
    assert (swapped[label == 1] < honest[label == 1]).all() and (swapped[label == 0] > honest[label == 0]).all()
    with pytest.raises(ValueError, match="needs data.patient_sheet"):
        predict(model, records, channels=4)
