import io
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from hemaflow import records
from hemaflow.evaluate import evaluate_predictions, predict, prediction_frame

NAMES = ["hem", "all"]
SPLITS = ("train", "val", "test")

# image_id -> (patient, label_index, split, P(all) of each augmented copy)
IMAGES = {
    # train: three copies each, scored by their mean
    "t1a": ("T1", 1, "train", [0.3, 0.6, 0.9]),  # mean 0.6 -> all (right)
    "t1b": ("T1", 1, "train", [0.9, 0.8, 0.7]),  # 0.8 -> all (right)
    "t2a": ("T2", 0, "train", [0.1, 0.2, 0.6]),  # 0.3 -> hem (right)
    "t2b": ("T2", 0, "train", [0.7, 0.7, 0.7]),  # 0.7 -> all (wrong)
    # val: fractions of positive cells V1 2/3, V2 1/3, V3 1, V4 0
    "v1a": ("V1", 1, "val", [0.9]), "v1b": ("V1", 1, "val", [0.8]), "v1c": ("V1", 1, "val", [0.2]),
    "v2a": ("V2", 0, "val", [0.1]), "v2b": ("V2", 0, "val", [0.3]), "v2c": ("V2", 0, "val", [0.6]),
    "v3a": ("V3", 1, "val", [0.7]), "v3b": ("V3", 1, "val", [0.9]),
    "v4a": ("V4", 0, "val", [0.2]), "v4b": ("V4", 0, "val", [0.1]),
    # test: S1 1/2 (diagnosed at threshold 0.5), S2 0, S3 0 (missed)
    "s1a": ("S1", 1, "test", [0.6]), "s1b": ("S1", 1, "test", [0.4]),
    "s2a": ("S2", 0, "test", [0.3]), "s2b": ("S2", 0, "test", [0.2]),
    "s3a": ("S3", 1, "test", [0.1]), "s3b": ("S3", 1, "test", [0.2]),
}


def tables(images=IMAGES):
    sources = pd.DataFrame(
        [(i, p, NAMES[y], y) for i, (p, y, _, _) in images.items()],
        columns=["image_id", "patient_id", "label", "label_index"],
    ).astype({"label_index": "int16"})
    aug = [(f"{i}-{c}", i, s, y, p) for i, (_, y, s, ps) in images.items() for c, p in enumerate(ps)]
    augmented = pd.DataFrame([a[:3] for a in aug], columns=["aug_id", "image_id", "split"])
    p1 = np.array([a[4] for a in aug])
    pred = prediction_frame([a[0] for a in aug], [a[3] for a in aug], np.column_stack([1 - p1, p1]))
    return pred, augmented, sources


def run(tmp_path, images=IMAGES, **kw):
    pred, augmented, sources = tables(images)
    return evaluate_predictions(
        pred, augmented, sources, class_names=NAMES, positive_class="all", out_dir=tmp_path, **kw
    )


def test_cell_level_averages_augmented_copies(tmp_path):
    m = run(tmp_path)
    images = pd.read_parquet(tmp_path / "predictions.parquet").set_index("image_id")
    assert len(images) == len(IMAGES)
    assert images.loc["t1a", "p_1"] == pytest.approx(0.6)
    assert images.loc["t1a", "n_copies"] == 3 and images.loc["v1a", "n_copies"] == 1
    assert images.loc["t2b", "predicted_label"] == "all"
    # 4 source images, 3 right; scoring the 12 copies one by one would give 7/12
    assert m["train"]["n"] == 4
    assert m["train"]["accuracy"] == pytest.approx(3 / 4)


def test_writes_every_file_and_metrics_structure(tmp_path):
    run(tmp_path)
    expected = ["metrics.json", "predictions.parquet", "patients.csv", "patients.png"] + [
        f"{kind}_{s}.{ext}" for kind in ("confusion", "roc") for s in SPLITS for ext in ("csv", "png")
    ]
    for name in expected:
        assert (tmp_path / name).stat().st_size > 0, name
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert set(m) == {"train", "val", "test", "patient"}
    assert {"accuracy", "auc", "balanced_accuracy", "f1", "macro_f1", "sensitivity", "specificity"} <= set(m["val"])
    assert {"threshold", "val", "test", "train"} <= set(m["patient"])
    # val fractions: negatives {0, 1/3}, positives {2/3, 1} -> midpoint of (1/3, 2/3]
    assert m["patient"]["threshold"] == pytest.approx(0.5)
    assert m["patient"]["val"]["accuracy"] == 1.0
    assert m["patient"]["test"]["accuracy"] == pytest.approx(2 / 3)
    confusion = pd.read_csv(tmp_path / "confusion_test.csv")
    assert list(confusion.columns) == ["actual", "predicted"] and len(confusion) == 6
    patients = pd.read_csv(tmp_path / "patients.csv").set_index("patient_id")
    assert patients.loc["S1", "predicted"] == 1 and patients.loc["S3", "predicted"] == 0
    assert patients.loc["V1", "n_cells"] == 3 and patients.loc["V1", "split"] == "val"


def test_threshold_ignores_test_patients(tmp_path):
    base = run(tmp_path / "a")["patient"]
    rng = np.random.default_rng(1)
    shuffled = {i: (p, y, s, rng.random(len(ps)).tolist() if s == "test" else ps) for i, (p, y, s, ps) in IMAGES.items()}
    changed = run(tmp_path / "b", shuffled)["patient"]
    assert changed["threshold"] == base["threshold"]
    # and the threshold does follow the validation patients
    moved = dict(IMAGES, v4a=("V4", 0, "val", [0.6]))  # V4: 0 -> 1/2, so (1/2, 2/3] separates
    assert run(tmp_path / "c", moved)["patient"]["threshold"] == pytest.approx(7 / 12)


def test_multiclass_without_patients(tmp_path):
    rng = np.random.default_rng(0)
    ids = [f"i{k}" for k in range(9)]
    sources = pd.DataFrame({"image_id": ids, "patient_id": None, "label": [["a", "b", "c"][k % 3] for k in range(9)],
                            "label_index": [k % 3 for k in range(9)]})
    augmented = pd.DataFrame({"aug_id": ids, "image_id": ids, "split": ["val"] * 5 + ["test"] * 4})
    pred = prediction_frame(ids, sources["label_index"], rng.dirichlet(np.ones(3), 9))
    m = evaluate_predictions(pred, augmented, sources, class_names=["a", "b", "c"], positive_class="all",
                             out_dir=tmp_path)
    assert set(m) == {"val", "test", "patient"}
    assert m["patient"] == {"skipped": "3 classes: the patient-level diagnosis is computed for binary tasks only"}
    assert pd.read_csv(tmp_path / "patients.csv").empty  # header only, so the workflow output exists
    assert (tmp_path / "patients.png").stat().st_size > 0
    assert set(pd.read_csv(tmp_path / "roc_val.csv")["class"]) <= {"a", "b", "c"}
    # no train images here: the split has no metrics, but every output the rule declares exists
    for name in ("confusion_train.png", "roc_train.png", "confusion_train.csv", "roc_train.csv"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert pd.read_csv(tmp_path / "roc_train.csv").empty


def test_unknown_aug_id_is_reported(tmp_path):
    pred, augmented, sources = tables()
    with pytest.raises(ValueError, match="augmented.parquet"):
        evaluate_predictions(pred, augmented.iloc[1:], sources, class_names=NAMES, positive_class="all",
                             out_dir=tmp_path)


def test_unknown_positive_class_is_reported(tmp_path):
    with pytest.raises(ValueError, match="data.positive_class"):
        evaluate_predictions(*tables(), class_names=NAMES, positive_class="blast", out_dir=tmp_path)


def _png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("width", [1, 3])
def test_predict_streams_records_in_order(tmp_path, width):
    import keras

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(7, 4, 4, 3), dtype=np.uint8)
    path = tmp_path / "s.tfrecord"
    records.write_records(path, (records.encode_example(_png(im), k % 2, f"a{k}") for k, im in enumerate(imgs)))
    activation = "sigmoid" if width == 1 else "softmax"
    model = keras.Sequential([keras.Input((4, 4, 3)), keras.layers.Flatten(), keras.layers.Dense(width, activation=activation)])
    pred = predict(model, [path], channels=3, batch_size=3)
    assert list(pred["aug_id"]) == [f"a{k}" for k in range(7)]
    assert list(pred["label_index"]) == [k % 2 for k in range(7)]
    expected = model.predict(imgs.astype("float32") / 255, verbose=0)
    if width == 1:
        expected = np.column_stack([1 - expected[:, 0], expected[:, 0]])
    cols = [f"p_{c}" for c in range(expected.shape[1])]
    np.testing.assert_allclose(pred[cols].to_numpy(), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(pred[cols].sum(axis=1), 1.0, rtol=1e-5)


def _only(split, label):
    """IMAGES without the `split` patients of diagnosis `label` (1 = all, 0 = hem)."""
    return {i: v for i, v in IMAGES.items() if not (v[2] == split and v[1] == label)}


def test_single_diagnosis_validation_skips_the_patient_level_with_a_note(tmp_path, caplog):
    m = run(tmp_path, _only("val", 0))  # every validation patient is positive
    saved = json.loads((tmp_path / "metrics.json").read_text())
    note = saved["patient"]["skipped"]
    assert set(saved["patient"]) == {"skipped"}
    assert "validation split" in note and "['all']" in note and "split.val_fold" in note
    assert note in caplog.text  # and in the job's log
    assert m["val"]["n"] == 5 and m["test"]["accuracy"] == pytest.approx(3 / 6)  # cell level still there
    patients = pd.read_csv(tmp_path / "patients.csv")
    assert set(patients["patient_id"]) == {"T1", "T2", "V1", "V3", "S1", "S2", "S3"}
    assert patients["predicted"].isna().all()  # no threshold, no diagnosis


def test_single_diagnosis_test_split_scores_what_it_can(tmp_path):
    run(tmp_path, _only("test", 0))  # test patients S1 (diagnosed) and S3 (missed), both positive
    test = json.loads((tmp_path / "metrics.json").read_text())["patient"]["test"]
    assert test["accuracy"] == pytest.approx(1 / 2) and test["sensitivity"] == pytest.approx(1 / 2)
    assert test["auc"] is None and test["specificity"] is None and test["balanced_accuracy"] is None
    assert test["notes"] == ["patients of one diagnosis only: AUC and balanced accuracy undefined"]


def test_binary_without_patient_ids_says_why_there_is_no_patient_level(tmp_path):
    pred, augmented, sources = tables()
    m = evaluate_predictions(pred, augmented, sources.assign(patient_id=None), class_names=NAMES,
                             positive_class="all", out_dir=tmp_path)
    assert m["patient"]["skipped"].startswith("no patient ids")
    assert pd.read_csv(tmp_path / "patients.csv").empty


def test_predict_scores_only_deterministic_copies_when_asked(tmp_path):
    """The train split is scored on one record per source image, not on all 72 copies."""
    import keras

    from hemaflow.preprocess import aug_id

    rng = np.random.default_rng(1)
    ids = [aug_id(f"img{k}", r, m, c) for k in range(3) for r, m, c in ((0, False, 0), (1, False, 0), (0, True, 0), (0, False, 1))]
    path = tmp_path / "s.tfrecord"
    records.write_records(
        path, (records.encode_example(_png(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)), 0, a) for a in ids)
    )
    model = keras.Sequential([keras.Input((4, 4, 3)), keras.layers.Flatten(), keras.layers.Dense(1, activation="sigmoid")])
    assert len(predict(model, [path], channels=3)) == 12
    assert predict(model, [path], channels=3, deterministic_only=True)["aug_id"].tolist() == [
        "img0-r000-m0-c0", "img1-r000-m0-c0", "img2-r000-m0-c0"
    ]  # fmt: skip
