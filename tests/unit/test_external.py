"""External validation (hemaflow.external.validation, `hemaflow evaluate`): a second labelled set
read through an adapter, scored in the model's class order, with intervals, calibration, the
model's validation threshold and temperature, every file accounted for, clear errors."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import json  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import yaml  # noqa: E402
from PIL import Image  # noqa: E402

from hemaflow import cli, stats  # noqa: E402
from hemaflow.config import ParamsError  # noqa: E402
from hemaflow.evaluate import calibration  # noqa: E402
from hemaflow.external import validation as X  # noqa: E402
from hemaflow.predict.model import open_model  # noqa: E402
from hemaflow.predict.run import predict_files  # noqa: E402
from hemaflow.train import model_params  # noqa: E402

PREPROCESS = dict(background="natural", size=32, crop_to_content=False, pad_square=True, filter="none")
# The model's class order is NOT the folders' alphabetical one (dark, light): a set scored in its
# own order would swap every label.
CLASSES = ["light", "dark"]
# patient -> (label, brightness of each cell): light cells are bright, dark ones dark, and a few
# cells are on the wrong side, so that the metrics are not all 1.
PATIENTS = {
    "P01": ("light", [200, 210, 190, 220]),
    "P02": ("light", [205, 60, 215]),
    "P03": ("light", [50, 55, 200, 60]),  # mostly dark-looking: a wrong patient-level call
    "P04": ("dark", [40, 50, 60, 45, 55]),
    "P05": ("dark", [50, 210, 40]),
    "P06": ("dark", [45, 60]),
}

ECE_BINS = 10  # not the schema's default (15): the bins follow the argument


def _cell(brightness: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    pixels = np.clip(rng.normal(brightness, 15, size=(40, 40, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A project with one model that calls a cell `light` when its mean intensity is above 0.5
    (average pooling and a fixed dense layer), its preprocess.json, and an evaluation whose
    validation threshold is 0.5 for positive class `dark`; and a folders data set of
    P<nn>_<i>.png cells with a truncated file and a README."""
    import keras

    root = tmp_path_factory.mktemp("external")
    model_dir = root / "results/models/bright"
    model_dir.mkdir(parents=True)
    inputs = keras.Input((32, 32, 3))
    dense = keras.layers.Dense(2, activation="softmax")
    model = keras.Model(inputs, dense(keras.layers.GlobalAveragePooling2D()(inputs)))
    # light logit 10 (r + g + b), dark logit 30 - 10 (r + g + b): light iff the mean is above 0.5
    dense.set_weights([np.array([[10.0, -10.0]] * 3), np.array([0.0, 30.0])])
    model.save(model_dir / "model.keras")
    (model_dir / "train.json").write_text(json.dumps({"model": "tiny", "lr": 0.001}))
    model_params.record(model_dir / "preprocess.json", preprocess=PREPROCESS, channels=3, classes=CLASSES)
    evaluation = root / "results/evaluation/bright"
    evaluation.mkdir(parents=True)
    (evaluation / "metrics.json").write_text(json.dumps(
        {"patient": {"threshold": 0.5, "threshold_chosen_on": "val", "positive_class": "dark"}}))
    data = root / "other"
    seed = 0
    for patient, (label, cells) in PATIENTS.items():
        (data / label).mkdir(parents=True, exist_ok=True)
        for i, b in enumerate(cells):
            _cell(b, seed := seed + 1).save(data / label / f"{patient}_{i}.png")
    good = (data / "dark/P04_0.png").read_bytes()
    (data / "dark/P09_0.png").write_bytes(good[: len(good) // 3])  # truncated
    (data / "README.md").write_text("not an image, not in a class folder")
    return root


def _entry(project, **data):
    spec = {"data": {"adapter": "folders", "name": "other", "root": "other",
                     "patient_regex": r"(?P<patient>P\d+)_", **data}}  # fmt: skip
    return X.check_entry(spec, "other.yaml", project) | {"name": "other", "model": "bright"}


@pytest.fixture(scope="module")
def scored(project):
    out = project / "results/external/other"
    result = X.evaluate_external(_entry(project), out_dir=out, project=project, n_resamples=300, seed=5, confidence=0.95, ece_bins=ECE_BINS,
                                 say=lambda _: None)
    return result, out


def test_every_file_is_accounted_for(project, scored):
    result, out = scored
    sources = pd.read_parquet(out / "sources.parquet")
    on_disk = sorted(str(p.relative_to(project / "other")) for p in (project / "other").rglob("*") if p.is_file())
    assert sorted(sources["rel_path"]) == on_disk
    by_path = sources.set_index("rel_path")
    assert by_path.loc["dark/P09_0.png", ["status", "reason"]].tolist() == ["quarantined", "truncated"]
    assert by_path.loc["README.md", ["status", "reason"]].tolist() == ["skipped", "outside_class_folder"]
    n_cells = sum(len(c) for _, c in PATIENTS.values())
    assert result["sources"]["status"] == {"ok": n_cells, "quarantined": 1, "skipped": 1}
    quarantine = pd.read_csv(out / "quarantine.csv")
    assert set(quarantine["rel_path"]) == {"dark/P09_0.png", "README.md"}


def test_scored_in_the_models_class_order_with_predicts_probabilities(project, scored):
    result, out = scored
    images = pd.read_parquet(out / "predictions.parquet")
    # label_index follows the model (light = 0), not the folders' alphabetical order (dark = 0)
    assert (images["label_index"] == images["label"].map({"light": 0, "dark": 1})).all()
    model = open_model("bright", project)
    table, _ = predict_files(model, [project / "other" / p for p in images["rel_path"]], progress=False, say=print)
    np.testing.assert_allclose(images[["p_0", "p_1"]].to_numpy(), table[["p_light", "p_dark"]].to_numpy(), atol=1e-9)
    # a cell is called by its brightness: the wrong-side cells of PATIENTS are the errors
    brightness = {f"{lab}/{p}_{i}.png": b for p, (lab, cells) in PATIENTS.items() for i, b in enumerate(cells)}
    expected = np.where(images["rel_path"].map(brightness) > 128, "light", "dark")
    assert (images["predicted_label"] == expected).all()
    correct = (expected == images["label"]).mean()
    assert result["cell"]["accuracy"] == pytest.approx(correct) and 0.5 < correct < 1
    assert result["cell"]["n"] == len(images)


def test_intervals_resample_patients_and_contain_the_estimate(scored):
    result, _ = scored
    ci = result["cell"]["ci"]
    assert ci["resampled"] == "patients" and ci["n_resamples"] == 300 and ci["confidence"] == 0.95
    for name in ("accuracy", "balanced_accuracy", "auc", "f1", "macro_f1", "recall[light]", "recall[dark]"):
        low, high = ci["metrics"][name]
        estimate = result["cell"]["per_class"]["light"]["recall"] if name == "recall[light]" else (
            result["cell"]["per_class"]["dark"]["recall"] if name == "recall[dark]" else result["cell"][name])
        assert low <= estimate + 1e-12 and estimate - 1e-12 <= high, name
        assert high - low > 0, name  # 6 patients: an interval of width 0 would mean no resampling


def test_patient_level_uses_the_models_validation_threshold(scored):
    result, out = scored
    patient = result["patient"]
    assert patient["threshold"] == 0.5 and patient["threshold_chosen_on"] == "val" and patient["positive_class"] == "dark"
    patients = pd.read_csv(out / "patients.csv").set_index("patient_id")
    for p, (label, cells) in PATIENTS.items():
        frac_dark = np.mean([b < 128 for b in cells])
        assert patients.loc[p, "frac_positive"] == pytest.approx(frac_dark)
        assert patients.loc[p, "predicted"] == int(frac_dark >= 0.5) and patients.loc[p, "label"] == int(label == "dark")
    correct = int((patients["predicted"] == patients["label"]).sum())
    assert patient["n_patients"] == 6 and patient["accuracy"] == pytest.approx(correct / 6) and correct == 5
    assert patient["ci"]["wilson"]["accuracy"] == pytest.approx(list(stats.wilson(correct, 6)))
    assert patient["ci"]["wilson"]["sensitivity"] == pytest.approx(list(stats.wilson(3, 3)))  # dark patients all found
    assert patient["ci"]["wilson"]["specificity"] == pytest.approx(list(stats.wilson(2, 3)))  # P03 called dark


def test_outputs_figures_and_summary(scored):
    result, out = scored
    for name in ("confusion.png", "roc.png", "patients.png"):
        assert (out / name).stat().st_size > 5_000, name
    reliability = pd.read_csv(out / "reliability.csv")
    assert reliability["count"].sum() == result["cell"]["n"] and len(reliability) == ECE_BINS
    assert json.loads((out / "metrics.json").read_text()) == json.loads(json.dumps(result))
    text = (out / "summary.md").read_text()
    assert "External validation: other" in text and "bright" in text and "threshold 0.5" in text
    assert f"{result['cell']['balanced_accuracy']:.3f} [" in text


def test_the_models_validation_temperature_is_applied(project, tmp_path):
    import shutil

    other = tmp_path / "proj"
    shutil.copytree(project, other)
    (other / "results/evaluation/bright/calibration.json").write_text(json.dumps({"temperature": 3.0}))
    result = X.evaluate_external(_entry(other), out_dir=tmp_path / "out", project=other, n_resamples=50, seed=0, confidence=0.95, ece_bins=ECE_BINS,
                                 say=lambda _: None)
    images = pd.read_parquet(tmp_path / "out/predictions.parquet")
    raw = images[["raw_p_0", "raw_p_1"]].to_numpy()
    np.testing.assert_allclose(images[["p_0", "p_1"]].to_numpy(), calibration.apply_temperature(raw, 3.0), atol=1e-12)
    cal = result["cell"]["calibration"]
    assert cal["temperature"] == 3.0
    y = images["label_index"].to_numpy()
    assert cal["uncalibrated"]["brier"] == pytest.approx(calibration.brier(y, raw))
    assert cal["brier"] != pytest.approx(cal["uncalibrated"]["brier"])


def test_class_mismatch_names_both_lists_and_the_fix(project, tmp_path):
    root = tmp_path / "upper"
    for folder in ("LIGHT", "dark"):
        (root / folder).mkdir(parents=True)
        _cell(200 if folder == "LIGHT" else 50, 1).save(root / folder / "P1_0.png")
    spec = {"data": {"adapter": "folders", "root": str(root)}}
    entry = X.check_entry(spec, "upper.yaml", project) | {"name": "upper", "model": "bright"}
    with pytest.raises(ValueError) as e:
        X.evaluate_external(entry, out_dir=tmp_path / "out", project=project, n_resamples=10, seed=0, confidence=0.95,
                             ece_bins=ECE_BINS, say=lambda _: None)
    message = str(e.value)
    assert "['LIGHT', 'dark']" in message and "['light', 'dark']" in message, message
    assert "label_map" in message and "LIGHT: light" in message, message
    mapped = X.check_entry({"data": {**spec["data"], "label_map": {"LIGHT": "light"}}}, "upper.yaml", project)
    result = X.evaluate_external(mapped | {"name": "upper", "model": "bright"}, out_dir=tmp_path / "out",
                                 project=project, n_resamples=10, seed=0, confidence=0.95, ece_bins=ECE_BINS,
                                 say=lambda _: None)
    assert result["cell"]["accuracy"] == 1.0 and result["data"]["classes_found"] == ["dark", "light"]


def test_bad_data_sections_name_the_file_the_key_and_the_fix(project, tmp_path):
    with pytest.raises(ParamsError, match=r"bad\.yaml: data\.adapter: 'folder' is not allowed; use one of"):
        X.check_entry({"data": {"adapter": "folder", "root": "other"}}, "bad.yaml", project)
    with pytest.raises(ParamsError, match=r"bad\.yaml: data: unknown key\(s\) rooot"):
        X.check_entry({"data": {"adapter": "folders", "rooot": "other"}}, "bad.yaml", project)
    with pytest.raises(ParamsError, match=r"bad\.yaml: data\.root: the data directory 'nowhere'.*does not exist"):
        X.check_entry({"data": {"adapter": "folders", "root": "nowhere"}}, "bad.yaml", project)
    with pytest.raises(ParamsError, match="needs a `data:` section"):
        X.check_entry({"adapter": "folders"}, "bad.yaml", project)


def test_cli_writes_the_outputs_and_reports_errors(project, tmp_path, capsys):
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({"data": {"adapter": "folders", "root": "other", "patient_regex": r"(?P<patient>P\d+)_"}}))
    out = tmp_path / "cli-out"
    code = cli.main(["evaluate", "--model", "bright", "--data", str(other), "--project", str(project), "--out", str(out),
                     "--bootstrap", "50"])
    assert code == 0, capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["name"] == "other" and metrics["model"]["combo"] == "bright" and metrics["cell"]["ci"]["n_resamples"] == 50
    other.write_text(yaml.safe_dump({"data": {"adapter": "folders", "root": "other", "classes": ["x"]}}))
    assert cli.main(["evaluate", "--model", "bright", "--data", str(other), "--project", str(project)]) == 2
    err = capsys.readouterr().err
    assert "hemaflow evaluate:" in err and "data.classes" in err


def test_workflow_sets_check_every_entry_and_refuse_a_name_used_twice(project):
    from hemaflow.config import with_defaults, load_schema

    config = with_defaults({}, load_schema(X.schema_path(project)))
    layers = [("params.yaml", {})]
    # data: {} is the replica, which rule synthesize makes: it need not exist yet
    config["external"] = [{"name": "holdout", "subset": "holdout", "data": {}},
                          {"name": "other", "data": {"adapter": "folders", "root": str(project / "other")}}]
    sets = X.workflow_sets(config, layers, project, X.schema_path(project))
    assert list(sets) == ["holdout", "other"] and sets["holdout"]["model"] == "best"
    assert sets["holdout"]["data"]["adapter"] == "synthetic" and sets["other"]["subset"] == "all"
    assert X.workflow_inputs(sets["other"], {"m1": {}}) == {"model": ["results/reports/metrics.json"],
                                                           "data": [str(project / "other")]}
    assert X.workflow_inputs({**sets["other"], "model": "m1"}, {"m1": {}})["model"] == [
        "results/models/m1/model.keras", "results/models/m1/preprocess.json", "results/evaluation/m1/metrics.json"]
    config["external"].append({"name": "other", "data": {"adapter": "folders", "root": str(project / "other")}})
    with pytest.raises(ParamsError, match=r"external\[2\] \(other\): the name 'other' is used twice"):
        X.workflow_sets(config, layers, project, X.schema_path(project))
    assert "No external sets configured" in X.index_markdown([])


def test_a_data_file_named_so_that_its_set_would_leave_results_is_refused(project, tmp_path):
    """The set's name becomes results/external/<name>/: a name from the file's stem is checked too."""
    bad = tmp_path / "-rf.yaml"
    bad.write_text("data:\n  adapter: folders\n  root: .\n")
    with pytest.raises(ValueError, match="cannot be used as a file or folder name"):
        X.read_data_file(bad, project)
    broken = tmp_path / "broken.yaml"
    broken.write_text("data:\n  adapter: [folders\n")
    with pytest.raises(ParamsError, match=r"broken\.yaml, line 3, column 1: not valid YAML"):
        X.read_data_file(broken, project)
