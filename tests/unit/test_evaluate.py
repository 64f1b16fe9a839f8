import io
import json
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from hemaflow.augment import records
from hemaflow.evaluate.score import evaluate_predictions, predict, prediction_frame

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
    expected = ["metrics.json", "calibration.json", "predictions.parquet", "patients.csv", "patients.png"] + [
        f"{kind}_{s}.{ext}" for kind in ("confusion", "roc", "reliability") for s in SPLITS for ext in ("csv", "png")
    ]
    for name in expected:
        assert (tmp_path / name).stat().st_size > 0, name
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert set(m) == {"train", "val", "test", "patient", "calibration"}
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
    assert set(m) == {"val", "test", "patient", "calibration"}
    assert m["val"]["ci"]["resampled"] == "images"  # no patient ids: the images are the units
    assert m["patient"] == {"skipped": "3 classes: the patient-level diagnosis is computed for binary tasks only"}
    assert pd.read_csv(tmp_path / "patients.csv").empty  # header only, so the workflow output exists
    assert (tmp_path / "patients.png").stat().st_size > 0
    assert set(pd.read_csv(tmp_path / "roc_val.csv")["class"]) <= {"a", "b", "c"}
    # no train images here: the split has no metrics, but every output the rule declares exists
    for name in ("confusion_train.png", "roc_train.png", "reliability_train.png", "confusion_train.csv", "roc_train.csv",
                 "reliability_train.csv"):
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

    from hemaflow.augment.preprocess import aug_id

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


# ---------------------------------------------------------------- intervals and calibration


def clustered(seed=0, *, patients=12, cells=25, patient_sd=1.5, cell_sd=0.5, sharpness=1.0, with_ids=True):
    """Prediction tables of `patients` patients per split (half of them positive), `cells` images
    each, one copy per image. A cell's margin z (> 0: classified right) is its patient's shift
    (sd `patient_sd`) plus the cell's own noise (`cell_sd`): cells of a patient are alike, as in
    smears. P(true class) = sigmoid(sharpness * z): sharpness > 1 is an over-confident model."""
    rng = np.random.default_rng(seed)
    rows = []
    for split in SPLITS:
        for k in range(patients):
            label, shift = k % 2, 0.7 + rng.normal(0, patient_sd)
            for c in range(cells):
                z = shift + rng.normal(0, cell_sd)
                p_true = 1 / (1 + np.exp(-sharpness * z))
                rows.append((f"{split}{k}c{c}", f"{split}P{k}", label, split, p_true if label else 1 - p_true))
    sources = pd.DataFrame({"image_id": [r[0] for r in rows], "patient_id": [r[1] if with_ids else None for r in rows],
                            "label": [NAMES[r[2]] for r in rows], "label_index": np.int16([r[2] for r in rows])})
    augmented = pd.DataFrame({"aug_id": [r[0] for r in rows], "image_id": [r[0] for r in rows],
                              "split": [r[3] for r in rows]})
    p1 = np.array([r[4] for r in rows])
    return prediction_frame(augmented["aug_id"], sources["label_index"], np.column_stack([1 - p1, p1])), augmented, sources


def score(tmp_path, tables_, **kw):
    pred, augmented, sources = tables_
    return evaluate_predictions(pred, augmented, sources, class_names=NAMES, positive_class="all", out_dir=tmp_path, **kw)


def test_intervals_are_in_metrics_json_and_bracket_the_estimates(tmp_path):
    score(tmp_path, clustered(), bootstrap=500, confidence=0.9, seed=7)
    m = json.loads((tmp_path / "metrics.json").read_text())  # what the leaderboard and report read
    for split in SPLITS:
        ci = m[split]["ci"]
        assert {k: ci[k] for k in ("confidence", "n_resamples", "seed", "resampled")} == {
            "confidence": 0.9, "n_resamples": 500, "seed": 7, "resampled": "patients"}  # fmt: skip
        wanted = {"accuracy", "balanced_accuracy", "auc", "f1", "macro_f1", "recall[hem]", "recall[all]"}
        assert wanted <= set(ci["metrics"])
        for name, (low, high) in ci["metrics"].items():
            estimate = m[split]["per_class"][name[7:-1]]["recall"] if name.startswith("recall[") else m[split][name]
            assert low <= estimate <= high and low < high, (split, name)
        patient = m["patient"][split]
        pci = patient["ci"]
        assert pci["resampled"] == "patients" and {"accuracy", "balanced_accuracy", "auc"} <= set(pci["metrics"])
        for kind in ("metrics", "wilson"):
            for name, (low, high) in pci[kind].items():
                assert low <= patient[name] <= high, (split, kind, name)
        assert set(pci["wilson"]) == {"accuracy", "sensitivity", "specificity"}


def test_intervals_are_seeded(tmp_path):
    a = score(tmp_path / "a", clustered(), bootstrap=200, seed=1)["test"]["ci"]["metrics"]
    b = score(tmp_path / "b", clustered(), bootstrap=200, seed=1)["test"]["ci"]["metrics"]
    c = score(tmp_path / "c", clustered(), bootstrap=200, seed=2)["test"]["ci"]["metrics"]
    assert a == b and a != c


def test_resampling_patients_gives_wider_intervals_than_resampling_images(tmp_path):
    """Cells of a patient are alike: treating 300 cells of 12 patients as 300 independent draws
    understates the uncertainty, so with patient ids the intervals must be wider."""
    by_patient = score(tmp_path / "p", clustered(), bootstrap=500)
    by_image = score(tmp_path / "i", clustered(with_ids=False), bootstrap=500)
    for split in SPLITS:
        assert by_patient[split]["accuracy"] == by_image[split]["accuracy"]  # same predictions
        assert (by_patient[split]["ci"]["resampled"], by_image[split]["ci"]["resampled"]) == ("patients", "images")
        for name in ("accuracy", "balanced_accuracy", "auc"):
            (pl, ph), (il, ih) = by_patient[split]["ci"]["metrics"][name], by_image[split]["ci"]["metrics"][name]
            assert ph - pl > 1.5 * (ih - il), (split, name)


def test_bootstrap_zero_turns_intervals_off_and_says_so(tmp_path):
    m = score(tmp_path, clustered(patients=4, cells=5), bootstrap=0)
    assert m["test"]["ci"]["metrics"] == {} and "evaluate.bootstrap is 0" in m["test"]["ci"]["note"]
    assert m["patient"]["test"]["ci"]["metrics"] == {}
    low, high = m["patient"]["test"]["ci"]["wilson"]["accuracy"]  # Wilson needs no resampling
    assert 0 <= low < high <= 1


def test_calibration_figures_without_temperature(tmp_path):
    m = score(tmp_path, clustered(), bootstrap=0)
    for split in SPLITS:
        cal = m[split]["calibration"]
        assert cal["temperature"] is None and "uncalibrated" not in cal and cal["ece_bins"] == 15
        assert "15 equal-width bins" in cal["binning"]
        assert 0 <= cal["brier"] <= 1 and 0 <= cal["ece"] <= 1
        bins = pd.read_csv(tmp_path / f"reliability_{split}.csv")
        assert bins["count"].sum() == m[split]["n"] and (bins["count"] > 0).all()
        assert (tmp_path / f"reliability_{split}.png").stat().st_size > 0
    assert json.loads((tmp_path / "calibration.json").read_text()) == {"method": "none", "temperature": None,
                                                                        "fitted_on": None}


def test_temperature_fitted_on_validation_lowers_an_over_confident_models_test_ece(tmp_path):
    over = clustered(sharpness=4.0)
    plain = score(tmp_path / "none", over, bootstrap=0)
    scaled = score(tmp_path / "t", over, bootstrap=0, calibrate="temperature")
    t = scaled["calibration"]["temperature"]
    assert t > 1  # softens
    assert json.loads((tmp_path / "t/calibration.json").read_text())["temperature"] == pytest.approx(t)
    test = scaled["test"]["calibration"]
    assert test["temperature"] == pytest.approx(t)
    assert test["uncalibrated"]["ece"] == pytest.approx(plain["test"]["calibration"]["ece"])
    assert test["ece"] < 0.5 * test["uncalibrated"]["ece"]
    assert test["brier"] < test["uncalibrated"]["brier"]
    # the predicted class, hence accuracy and the patient threshold, does not move
    assert scaled["test"]["accuracy"] == plain["test"]["accuracy"]
    assert scaled["patient"]["threshold"] == plain["patient"]["threshold"]
    # predictions.parquet holds the calibrated probabilities
    from hemaflow.evaluate.calibration import apply_temperature

    raw = pd.read_parquet(tmp_path / "none/predictions.parquet")
    cal = pd.read_parquet(tmp_path / "t/predictions.parquet")
    np.testing.assert_allclose(cal[["p_0", "p_1"]], apply_temperature(raw[["p_0", "p_1"]].to_numpy(), t))


def test_temperature_comes_from_validation_only(tmp_path):
    pred, augmented, sources = clustered(sharpness=4.0)
    t = score(tmp_path / "a", (pred, augmented, sources), bootstrap=0, calibrate="temperature")["calibration"]["temperature"]
    test = augmented.set_index("aug_id").loc[pred["aug_id"], "split"].to_numpy() == "test"
    moved = pred.copy()
    moved.loc[test, "p_1"] = 0.5 + 0.5 * (moved.loc[test, "label_index"] == 1)  # test probabilities changed
    moved.loc[test, "p_0"] = 1 - moved.loc[test, "p_1"]
    again = score(tmp_path / "b", (moved, augmented, sources), bootstrap=0, calibrate="temperature")
    assert again["calibration"]["temperature"] == pytest.approx(t)


def test_temperature_needs_validation_images(tmp_path):
    pred, augmented, sources = clustered(patients=2, cells=3)
    keep = augmented["split"] != "val"
    with pytest.raises(ValueError, match="evaluate.calibrate: temperature .* validation split, which has no images"):
        score(tmp_path, (pred[keep.to_numpy()], augmented[keep], sources), calibrate="temperature")
    with pytest.raises(ValueError, match="evaluate.calibrate 'platt'"):
        score(tmp_path, (pred, augmented, sources), calibrate="platt")


@pytest.mark.parametrize(("key", "value", "message"), [
    ("bootstrap", -1, r"evaluate\.bootstrap: -1 is less than the minimum of 0 \(bootstrap resamples .*0 = bootstrap intervals off"),
    ("bootstrap", 99.5, r"evaluate\.bootstrap: 99\.5 is not an integer; write a whole number"),
    ("ci", 95, r"evaluate\.ci: 95 is greater than or equal to the maximum of 1 \(confidence level .*0\.95 = 95 %"),
    ("calibrate", "platt", r"evaluate\.calibrate: 'platt' is not allowed; use one of 'none', 'temperature'"),
    ("ece_bins", 0, r"evaluate\.ece_bins: 0 is less than the minimum of 1"),
])  # fmt: skip
def test_schema_refuses_bad_evaluate_settings_by_name(key, value, message):
    import yaml

    from hemaflow.config import ParamsError, validate_params

    root = Path(__file__).resolve().parents[2]
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["evaluate"][key] = value
    with pytest.raises(ParamsError, match=message):
        validate_params(params, root / "workflow/schemas/params.schema.yaml")


def test_reliability_diagram_draws_the_filled_bins_the_diagonal_and_the_uncalibrated_points(tmp_path):
    from hemaflow import plots
    from hemaflow.evaluate.calibration import apply_temperature, reliability_table

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200)
    p1 = np.clip(y * 0.6 + rng.uniform(0, 0.4, 200), 0, 1)
    before = reliability_table(y, p1, n_bins=10)
    after = reliability_table(y, apply_temperature(p1, 2.0), n_bins=10)
    fig = plots.reliability_diagram(after, tmp_path / "r.png", title="test reliability", ece=0.0123, temperature=2.0,
                                    uncalibrated=before)  # fmt: skip
    assert (tmp_path / "r.png").stat().st_size > 0
    ax, counts = fig.axes
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert set(lines) == {"perfectly calibrated", "before temperature", "after temperature"}
    filled = after[after["count"] > 0]
    np.testing.assert_allclose(lines["after temperature"].get_xdata(), filled["confidence"])
    np.testing.assert_allclose(lines["after temperature"].get_ydata(), filled["accuracy"])
    assert "ECE 0.012" in ax.get_title() and "T = 2" in ax.get_title()
    assert [round(b.get_height()) for b in counts.patches] == after["count"].tolist()
