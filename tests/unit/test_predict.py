"""hemaflow predict: preprocessing parity with the shards, bad inputs, patients and the validation threshold, the CLI."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import json  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tomllib  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from hemaflow.train import model_params  # noqa: E402
from hemaflow.predict import inputs as I  # noqa: E402
from hemaflow.predict import model as M  # noqa: E402
from hemaflow.predict import run as P  # noqa: E402
from hemaflow.evaluate.score import predict as evaluate_predict  # noqa: E402
from hemaflow.augment.records import iter_records  # noqa: E402
from hemaflow.augment.shards import build_shard  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
PREPROCESS = dict(background="alpha", size=32, crop_to_content=True, pad_square=True, filter="none")
PRELIM = "validation_data/C-NMC_test_prelim_phase_data"


@pytest.fixture(scope="module")
def project(replica, tmp_path_factory):
    """A project with one tiny untrained binary model (seeded), its preprocess.json and an
    evaluation metrics.json whose validation threshold is 0.5, plus a val shard of 8 cells."""
    import keras

    from hemaflow.train.models import build_model

    root = tmp_path_factory.mktemp("project")
    model_dir = root / "results/models/tiny"
    keras.utils.set_random_seed(3)
    model = build_model("model_1", (32, 32, 4), 2, 0.0)
    model_dir.mkdir(parents=True)
    model.save(model_dir / "model.keras")
    (model_dir / "train.json").write_text(json.dumps({"model": "model_1", "lr": 0.001}))
    model_params.record(model_dir / "preprocess.json", preprocess=PREPROCESS, channels=4, classes=["hem", "all"])
    evaluation = root / "results/evaluation/tiny"
    evaluation.mkdir(parents=True)
    (evaluation / "metrics.json").write_text(json.dumps({"patient": {"threshold": 0.5, "threshold_chosen_on": "val", "positive_class": "all"}}))
    files = sorted(replica.glob("training_data/fold_0/*/*.bmp"))[:8]
    rows = pd.DataFrame({"image_id": [f"{i:016x}" for i in range(len(files))],
                         "rel_path": [str(f.relative_to(replica)) for f in files],
                         "label_index": np.int16(1)})
    build_shard(rows, root=replica, split="val", shard=0, augment=False, preprocess=PREPROCESS, augment_params={},
                seed=1, max_pixels=10**7, out_records=root / "val.tfrecord", out_manifest=root / "val.parquet")
    return root, files, rows


def test_model_input_equals_the_shards_deterministic_record(project, replica):
    root, files, rows = project
    model = M.open_model("tiny", root)
    records = {aid.split("-")[0]: img for img, _, aid in iter_records([root / "val.tfrecord"], 4)}
    for f, image_id in zip(files, rows["image_id"]):
        x = P.model_input(P.load_rgb(f)[0], model.params)
        assert x.dtype == np.uint8 and x.shape == (32, 32, 4)
        np.testing.assert_array_equal(x, records[image_id])


def test_probabilities_equal_evaluates(project):
    root, files, rows = project
    model = M.open_model("tiny", root)
    table, _ = P.predict_files(model, files, batch_size=3, say=lambda _: None)
    ours = table[["p_hem", "p_all"]].to_numpy()
    theirs = evaluate_predict(model.keras_model, [root / "val.tfrecord"], channels=4)
    theirs = theirs.assign(image_id=theirs["aug_id"].str.split("-").str[0]).set_index("image_id").loc[rows["image_id"]]
    # same inputs; batches of 3 here and 64 there, so equal up to float32 rounding of the sums
    np.testing.assert_allclose(ours, theirs[["p_0", "p_1"]].to_numpy(), rtol=0, atol=1e-6)
    assert (table["predicted_label"] == np.where(ours[:, 1] > ours[:, 0], "all", "hem")).all()


def test_predict_uses_the_models_recorded_preprocessing_not_the_defaults(project, tmp_path):
    """A model trained on natural 24 px images is fed natural 24 px images."""
    root, files, _ = project
    other = tmp_path / "results/models/nat"
    shutil.copytree(root / "results/models/tiny", other)
    natural = {**PREPROCESS, "background": "natural", "size": 24}
    model_params.record(other / "preprocess.json", preprocess=natural, channels=3, classes=["hem", "all"])
    model = M.Model(None, "nat", other / "model.keras", model_params.load(other), {}, None)
    assert P.model_input(P.load_rgb(files[0])[0], model.params).shape == (24, 24, 3)


def test_bad_inputs_are_quarantined_with_reasons_and_the_rest_predicted(project, tmp_path):
    root, files, _ = project
    folder = tmp_path / "cells"
    folder.mkdir()
    for f in files[:3]:
        shutil.copy(f, folder / f.name)
    (folder / "empty.bmp").write_bytes(b"")
    (folder / "notes.png").write_text("this is not an image")
    (folder / "cut.bmp").write_bytes(files[3].read_bytes()[:2000])
    (folder / "README.md").write_text("skipped: not an image suffix")
    lines = []
    summary = P.run([folder], model="tiny", project=root, out_dir=tmp_path / "out", reports=False, say=lines.append)
    table = pd.read_parquet(tmp_path / "out/predictions.parquet")
    by_name = table.assign(name=table["file"].map(lambda f: Path(f).name)).set_index("name")
    expected = {"empty.bmp": "empty", "notes.png": "not_an_image", "cut.bmp": "truncated"}
    for name, reason in expected.items():
        assert by_name.loc[name, "status"] == "quarantined" and by_name.loc[name, "reason"] == reason, name
        assert np.isnan(by_name.loc[name, "p_all"])
        assert any(name in line and reason in line for line in lines), (name, lines)
    good = by_name[by_name["status"] == "ok"]
    assert sorted(good.index) == sorted(f.name for f in files[:3])
    assert good["p_all"].between(0, 1).all() and good["predicted_label"].isin(["hem", "all"]).all()
    # a file that is not an image is listed, not dropped
    assert by_name.loc["README.md", ["status", "reason"]].tolist() == ["skipped", "not_an_image_extension"]
    assert summary["reasons"] == {"empty": 1, "not_an_image": 1, "not_an_image_extension": 1, "truncated": 1}
    csv = pd.read_csv(tmp_path / "out/predictions.csv")
    assert list(csv.columns) == list(table.columns) and len(csv) == len(table) == 7


def test_patients_from_names_and_the_decision_uses_the_validation_threshold(project, tmp_path):
    root, files, _ = project
    sheet = tmp_path / "patients.csv"
    pids = sorted({I.cell_patients([f])[0] for f in files})
    pd.DataFrame({"patient_id": pids, "name": [f"Person {p}" for p in pids], "age": 40, "sex": "F",
                  "sample_date": "2026-11-30", "wbc": 7.1}).to_csv(sheet, index=False)
    P.run(files, model="tiny", project=root, out_dir=tmp_path / "a", patients=sheet, reports=False, say=lambda _: None)
    cells = pd.read_parquet(tmp_path / "a/predictions.parquet")
    assert cells["patient_id"].tolist() == [f.name.split("_")[1].upper() for f in files]
    patients = pd.read_csv(tmp_path / "a/patients.csv", dtype={"patient_id": str}).set_index("patient_id")
    assert sorted(patients.index) == pids
    for pid, g in cells.groupby("patient_id"):
        frac = (g["predicted_label"] == "all").mean()
        assert patients.loc[pid, "n_cells"] == len(g)
        assert patients.loc[pid, "frac_positive"] == pytest.approx(frac)
        assert patients.loc[pid, "decision"] == ("positive for all" if frac >= 0.5 else "negative for all")
    summary = json.loads((tmp_path / "a/summary.json").read_text())
    assert summary["threshold"]["threshold"] == 0.5 and summary["threshold"]["chosen_on"] == "val"
    assert "0.5" in summary["decision_rule"] and "metrics.json" in summary["decision_rule"]

    # the threshold is read from evaluate's metrics.json, not chosen here: move it past every fraction
    metrics = root / "results/evaluation/tiny/metrics.json"
    saved = metrics.read_text()
    try:
        metrics.write_text(json.dumps({"patient": {"threshold": 1.01, "threshold_chosen_on": "val", "positive_class": "all"}}))
        P.run(files, model="tiny", project=root, out_dir=tmp_path / "b", reports=False, say=lambda _: None)
    finally:
        metrics.write_text(saved)
    assert (pd.read_csv(tmp_path / "b/patients.csv")["decision"] == "negative for all").all()


def test_cnmc_holdout_folder_gets_patients_from_its_labels_csv(replica):
    files, _ = I.list_inputs([replica / PRELIM])
    labels = pd.read_csv(replica / f"{PRELIM}_labels.csv")
    expected = {n: p.split("_")[1].upper() for n, p in zip(labels["new_names"], labels["Patient_ID"])}
    assert [f.name for f in files] and all(f.name[0].isdigit() for f in files)  # renamed 1..N: no patient in the name
    assert I.cell_patients(files) == [expected[f.name] for f in files]


def test_cell_sheet_and_regex_give_patients(tmp_path):
    files = [tmp_path / "p7-cell1.png", tmp_path / "p8-cell2.png"]
    assert I.cell_patients(files, regex=r"^(?P<patient>p\d+)-") == ["p7", "p8"]
    sheet = tmp_path / "cells.csv"
    pd.DataFrame({"file": ["p7-cell1.png"], "patient_id": ["X1"]}).to_csv(sheet, index=False)
    assert I.cell_patients(files, regex=r"^(?P<patient>p\d+)-", cells=sheet) == ["X1", "p8"]
    with pytest.raises(ValueError, match="named group"):
        I.cell_patients(files, regex=r"p\d+")


def test_multiclass_summary_counts_classes_without_a_threshold():
    model = M.Model(None, "m", Path("m"), {"classes": ["a", "b", "c"], "preprocess": {}}, {}, None)
    table = pd.DataFrame({"patient_id": ["x", "x", "x", "y"], "status": ["ok", "ok", "quarantined", "ok"],
                          "predicted_label": ["a", "c", None, "c"]})
    s = P.patient_summary(table, model).set_index("patient_id")
    assert s.loc["x", ["n_cells", "n_quarantined", "n_a", "n_b", "n_c"]].tolist() == [2, 1, 1, 0, 1]
    assert "decision" not in s and "threshold" not in s
    assert "class counts only" in P.threshold_note(model)


def test_model_resolution(project, tmp_path):
    root, _, _ = project
    assert M.resolve_model("tiny", root) == root / "results/models/tiny/model.keras"
    assert M.resolve_model(str(root / "results/models/tiny"), root) == root / "results/models/tiny/model.keras"
    reports = root / "results/reports"
    reports.mkdir(parents=True, exist_ok=True)
    # best = the best-ranked combination that has a Keras model (the SVM baseline has none)
    (reports / "metrics.json").write_text(json.dumps({"best": "svm_rbf", "ranking": ["svm_rbf", "tiny"],
                                                      "combos": {"svm_rbf": {}, "tiny": {}}}))
    assert M.resolve_model("best", root) == root / "results/models/tiny/model.keras"
    # the order is metrics.json's ranking, not its (alphabetical) combos map
    shutil.copytree(root / "results/models/tiny", root / "results/models/a_second")
    (reports / "metrics.json").write_text(json.dumps({"best": "tiny", "ranking": ["tiny", "a_second"],
                                                      "combos": {"a_second": {}, "tiny": {}}}))
    assert M.resolve_model("best", root) == root / "results/models/tiny/model.keras"
    shutil.rmtree(root / "results/models/a_second")
    with pytest.raises(FileNotFoundError, match="tiny"):
        M.resolve_model("nope", root)
    shutil.copytree(root / "results/models/tiny", tmp_path / "old")
    (tmp_path / "old/preprocess.json").unlink()
    with pytest.raises(FileNotFoundError, match="preprocess.json"):
        M.open_model(str(tmp_path / "old"), root)


def test_help_through_the_console_script():
    """The entry point pyproject.toml declares; the installed script too when the venv has it."""
    script = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]["hemaflow"]
    module, func = script.split(":")
    commands = [[sys.executable, "-c", f"import sys; from {module} import {func}; sys.exit({func}())"]]
    installed = Path(sys.executable).parent / "hemaflow"
    if installed.exists():
        commands.append([str(installed)])
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    for cmd in commands:
        out = subprocess.run([*cmd, "predict", "--help"], capture_output=True, text=True, env=env)
        assert out.returncode == 0, out.stderr
        for option in ("--model", "--out", "--patients", "--patient-regex", "--improve", "--batch-size"):
            assert option in out.stdout, option
        assert "not a diagnosis" in out.stdout and "Display only" in out.stdout


def _decode(uri: str) -> np.ndarray:
    import base64

    import cv2

    assert uri.startswith("data:image/png;base64,")
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(base64.b64decode(uri.split(",", 1)[1]), np.uint8), cv2.IMREAD_COLOR),
                        cv2.COLOR_BGR2RGB)


def test_report_has_fields_provenance_decision_gallery_and_explains_the_predicted_class(project, tmp_path):
    import re

    import cv2

    from hemaflow.explain.gradcam import gradcam, overlay
    from hemaflow.predict.report import DISCLAIMER, DISPLAY_SIDE

    root, files, _ = project
    pid = I.cell_patients(files[:1])[0]
    sheet = tmp_path / "patients.csv"
    pd.DataFrame({"patient_id": [pid], "name": ["Ada Example"], "age": [51], "sex": ["F"],
                  "sample_date": ["2026-11-30"], "haemoglobin": [13.2]}).to_csv(sheet, index=False)
    mine = [f for f in files if I.cell_patients([f])[0] == pid]
    (tmp_path / "empty.bmp").write_bytes(b"")
    cells = tmp_path / "cells.csv"
    pd.DataFrame({"file": ["empty.bmp"], "patient_id": [pid]}).to_csv(cells, index=False)
    summary = P.run([*mine, tmp_path / "empty.bmp"], model="tiny", project=root, out_dir=tmp_path / "out",
                    patients=sheet, cells=cells, improve=True, say=lambda _: None)
    page = (tmp_path / "out/reports" / summary["reports"][pid]).read_text()
    model = M.open_model("tiny", root)
    for text in ("Ada Example", "haemoglobin", "13.2", "2026-11-30", model.params_hash, "tiny", "0.5",
                 "metrics.json", DISCLAIMER[:40], "empty.bmp", "display only"):
        assert text in page, text
    assert "@media print" in page
    decision = re.search(r'id="decision"><b>([^<]+)</b>', page)[1]
    assert decision == pd.read_csv(tmp_path / "out/patients.csv", dtype={"patient_id": str}).set_index("patient_id").loc[pid, "decision"]
    assert decision in ("positive for all", "negative for all")
    # self-contained: every src is inline, no link/script elements, no url() outside data:
    assert re.findall(r'src="([^"]*)"', page) and all(s.startswith("data:") for s in re.findall(r'src="([^"]*)"', page))
    assert "<link" not in page and "<script" not in page and "url(" not in page
    figures = re.findall(r'<figure class="cell".*?</figure>', page, flags=re.S)
    assert len(figures) == len(mine)
    table = pd.read_parquet(tmp_path / "out/predictions.parquet").set_index("file")
    differs = 0
    for fig in figures:
        name = re.search(r'data-file="([^"]+)"', fig)[1]
        (f,) = [f for f in mine if f.name == name]
        originals, improved, cam = (_decode(u) for u in re.findall(r'src="([^"]+)"', fig))
        assert improved.shape == originals.shape and not np.array_equal(improved, originals)
        x = P.model_input(P.load_rgb(f)[0], model.params)
        c = model.classes.index(table.loc[str(f), "predicted_label"])
        unit = x[None].astype(np.float32) / 255
        expected = [cv2.resize(overlay(x, gradcam(model.keras_model, unit, [k])[0]), cam.shape[:2][::-1],
                               interpolation=cv2.INTER_NEAREST) for k in (c, 1 - c)]
        np.testing.assert_array_equal(cam, expected[0])  # the predicted class's Grad-CAM
        differs += not np.array_equal(expected[0], expected[1])
        assert cam.shape[0] == DISPLAY_SIDE // 2
    assert differs  # so the check above could tell the two classes apart


def test_the_models_recorded_regex_and_class_words_reach_predict_and_the_page(project, tmp_path):
    root, files, _ = project
    shutil.copytree(root / "results/models/tiny", root / "results/models/described")
    model_params.record(root / "results/models/described/preprocess.json", preprocess=PREPROCESS, channels=4,
                        classes=["hem", "all"], class_descriptions={"all": "leukaemic blast", "other": "not a class"},
                        patient_regex=r"^(?P<patient>P\d+)-")  # fmt: skip
    shutil.copytree(root / "results/evaluation/tiny", root / "results/evaluation/described")
    cells = tmp_path / "cells"
    cells.mkdir()
    for k, f in enumerate(files[:4]):
        shutil.copy(f, cells / f"P{k % 2}-{k}.bmp")  # no C-NMC name: only the recorded regex finds P0, P1
    summary = P.run([cells], model="described", project=root, out_dir=tmp_path / "out", improve=True, say=lambda _: None)
    assert sorted(summary["reports"]) == ["P0", "P1"]
    page = (tmp_path / "out/reports" / summary["reports"]["P0"]).read_text()
    assert "all (leukaemic blast)" in page and "not a class" not in page
    assert "no description given" in page  # hem has none
    # every image is labelled in visible text, not only in a tooltip
    assert page.count("<small>original</small>") == page.count('<figure class="cell"') == 2
    assert page.count("<small>Grad-CAM of the predicted class</small>") == 2 and "<small>improved" in page
    # an explicit --patient-regex still wins
    other = P.run([cells], model="described", project=root, out_dir=tmp_path / "out2", patient_regex=r"-(?P<patient>\d)\.",
                  reports=False, say=lambda _: None)  # fmt: skip
    assert other["patients"] == 4


def test_a_model_evaluated_on_augmented_copies_is_predicted_by_their_mean(project, tmp_path):
    """augment.splits with val/test: evaluate scores an image by the mean over its copies, so predict must too."""
    from hemaflow.data.images import load_rgb
    from hemaflow.augment.preprocess import render_all, variants

    root, files, _ = project
    shutil.copytree(root / "results/models/tiny", root / "results/models/tta")
    copies = {"rotations": 4, "mirror": True, "random_copies": 1, "flip": True, "shift": 0.1, "zoom": 0.1,
              "shear": 5.0, "rotation_range": 0.0, "fill": "nearest", "seed": 7}  # fmt: skip
    model_params.record(root / "results/models/tta/preprocess.json", preprocess=PREPROCESS, channels=4,
                        classes=["hem", "all"], evaluated_copies=copies)  # fmt: skip
    model = M.open_model("tta", root)
    # batches of 5 split each file's 16 copies across model calls
    table, inputs = P.predict_files(model, files[:3], batch_size=5, keep_inputs=True, progress=False, say=lambda _: None)
    for k, f in enumerate(files[:3]):
        rgb = load_rgb(f)[0]
        shape = {key: v for key, v in copies.items() if key not in ("fill", "seed")}
        rendered = render_all(rgb, variants(str(f), **shape, seed=7), **PREPROCESS, fill="nearest")
        assert len(rendered) == 16
        expected = P.probabilities(model.keras_model, rendered).mean(axis=0)
        np.testing.assert_allclose(table.loc[k, ["p_hem", "p_all"]].to_numpy(float), expected, atol=1e-6)
        np.testing.assert_array_equal(inputs[k], P.model_input(rgb, model.params))  # the report shows the plain copy
    single = P.predict_files(M.open_model("tiny", root), files[:3], progress=False, say=lambda _: None)[0]
    assert not np.allclose(single["p_all"], table["p_all"])  # the copies change the figure


def test_predict_applies_the_temperature_evaluate_fitted(project, tmp_path):
    """evaluate.calibrate: temperature writes calibration.json beside metrics.json; predict scales
    every image's probabilities by it, as evaluate did, and says which T it applied."""
    from hemaflow.evaluate.calibration import apply_temperature

    root, files, _ = project
    shutil.copytree(root / "results/models/tiny", root / "results/models/warm")
    evaluation = root / "results/evaluation/warm"
    shutil.copytree(root / "results/evaluation/tiny", evaluation)
    (evaluation / "calibration.json").write_text(json.dumps({"method": "temperature", "temperature": 2.5, "fitted_on": "val"}))
    plain, _ = P.predict_files(M.open_model("tiny", root), files[:4], progress=False, say=lambda _: None)
    model = M.open_model("warm", root)
    assert model.temperature == 2.5 and model.calibration["source"] == str(evaluation / "calibration.json")
    scaled, _ = P.predict_files(model, files[:4], progress=False, say=lambda _: None)
    raw = plain[["p_hem", "p_all"]].to_numpy(float)
    np.testing.assert_allclose(scaled[["p_hem", "p_all"]].to_numpy(float), apply_temperature(raw, 2.5), atol=1e-9)
    assert (scaled["predicted_label"] == plain["predicted_label"]).all()
    summary = P.run(files[:4], model="warm", project=root, out_dir=tmp_path / "out", reports=False, say=lambda _: None)
    assert summary["calibration"]["temperature"] == 2.5
    assert json.loads((tmp_path / "out/summary.json").read_text())["calibration"]["fitted_on"] == "val"
    assert P.run(files[:1], model="tiny", project=root, out_dir=tmp_path / "t", reports=False,
                 say=lambda _: None)["calibration"] == {"temperature": None}  # fmt: skip

    (evaluation / "calibration.json").write_text(json.dumps({"method": "temperature", "temperature": 0}))
    with pytest.raises(ValueError, match=r"calibration.json: temperature 0 is not a positive number; rerun evaluate"):
        M.open_model("warm", root)
    (evaluation / "calibration.json").write_text(json.dumps({"method": "none", "temperature": None, "fitted_on": None}))
    assert M.open_model("warm", root).temperature is None
