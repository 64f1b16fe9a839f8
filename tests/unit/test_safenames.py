"""Names from data or parameters never become paths as they are: refused, quarantined or mapped."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml

from hemaflow.data.adapters import list_candidates
from hemaflow.config import ParamsError, validate_params
from hemaflow.safenames import UnsafeName, check_name, file_name, name_problem, under

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "workflow/schemas/params.schema.yaml"
HOSTILE = ["../../../../outside/x", ".", "..", "-rf", ".hidden", "a/b", "a\\b", "", "x" * 101, "con", "tab\there"]


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_names_are_refused_with_the_reason(value):
    assert name_problem(value)
    with pytest.raises(UnsafeName, match="predict.name"):
        check_name(value, "predict.name")


@pytest.mark.parametrize("value", ["all", "hem", "Band neutrophil", "Müller", "class_00", "a.b", "x" * 100])
def test_ordinary_names_pass_unchanged(value):
    assert name_problem(value) is None and check_name(value, "class") == value


def test_file_names_are_distinct_plain_and_bounded():
    ids = ["P 1", "P_1", "p_1", "P-1", "P.1", "Müller", "Mäller", "Muller", "../P1", "P1/..", "x" * 300, "病人"]
    names = [file_name(i, ".html") for i in ids]
    assert len(set(names)) == len(ids)
    for name in names:
        assert name.endswith(".html") and len(name) <= 48 + 11 + 5 and name_problem(name) is None
    assert file_name("P 1") == file_name("P 1")  # stable: the same id always finds its page


def test_under_refuses_a_path_that_leaves_its_root(tmp_path):
    (tmp_path / "out").mkdir()
    assert under(tmp_path / "out/a/b.png", tmp_path / "out") == tmp_path / "out/a/b.png"
    with pytest.raises(UnsafeName, match="outside"):
        under(tmp_path / "out/../../x.png", tmp_path / "out")
    (tmp_path / "out/link").symlink_to(tmp_path)
    with pytest.raises(UnsafeName):
        under(tmp_path / "out/link/x.png", tmp_path / "out")


def test_a_hostile_label_is_quarantined_not_a_class(tmp_path):
    root = tmp_path / "data"
    root.mkdir()
    labels = ["blast", "normal", "../../../../outside/x", ".", "-rf"]
    for i in range(len(labels)):
        (root / f"{i}.png").write_bytes(b"not decoded here")
    filelist = tmp_path / "labels.csv"
    filelist.write_text("path,label\n" + "".join(f"{i}.png,{lab}\n" for i, lab in enumerate(labels)))
    rows, classes = list_candidates("filelist", root, filelist=filelist, dataset="d")
    assert classes == ("blast", "normal")
    rows = rows.set_index("rel_path")
    assert rows.loc[["2.png", "3.png", "4.png"], "reason"].tolist() == ["unsafe_label"] * 3
    assert rows.loc[["2.png", "3.png", "4.png"], "label_index"].tolist() == [-1] * 3
    assert rows.loc[["0.png", "1.png"], "reason"].isna().all()


def test_a_label_map_value_is_checked_after_mapping(tmp_path):
    """A safe source label renamed to an unsafe one (here by calling the library directly,
    past the schema) is still caught: the check is on the name that would become a folder."""
    root = tmp_path / "data"
    for c in ("a", "b", "c"):
        (root / c).mkdir(parents=True)
        (root / c / "0.png").write_bytes(b"x")
    rows, classes = list_candidates("folders", root, dataset="d", label_map={"c": ".."})
    assert classes == ("a", "b")
    assert rows.set_index("rel_path").loc["c/0.png", "reason"] == "unsafe_label"


@pytest.fixture
def params():
    return yaml.safe_load((ROOT / "params.yaml").read_text())


@pytest.mark.parametrize("value", ["..", ".", "a/b", "-x", ".x"])
@pytest.mark.parametrize("key", [("predict", "name"), ("data", "name")])
def test_the_schema_refuses_path_like_names(params, key, value):
    bad = copy.deepcopy(params)
    bad[key[0]][key[1]] = value
    with pytest.raises(ParamsError, match=f"{key[0]}.{key[1]}"):
        validate_params(bad, SCHEMA)


@pytest.mark.parametrize("value", ["..", ".", "a/b", "a\\b", "-rf", ".x", "../../outside/x"])
def test_the_schema_refuses_unsafe_class_names_and_label_map_values(params, value):
    for section, key, setting in [
        ("data", "classes", ["ok", value]),
        ("data", "label_map", {"src": value}),
        ("synthetic", "classes", ["ok", value]),
    ]:
        bad = copy.deepcopy(params)
        bad[section][key] = setting
        with pytest.raises(ParamsError, match=f"{section}.{key}"):
            validate_params(bad, SCHEMA)


def test_the_schema_keeps_ordinary_names(params):
    good = copy.deepcopy(params)
    good["predict"]["name"] = "ward_3.2024-01"
    good["data"]["classes"] = ["Band neutrophil", "Müller cell"]
    good["data"]["label_map"] = {"../odd source": "Band neutrophil", "junk": None}
    assert validate_params(good, SCHEMA)["predict"]["name"] == "ward_3.2024-01"


# Ids a hospital system could really send: equal after lower-casing, space/underscore folding,
# accent stripping or punctuation removal (the old report names merged each group), and a long one.
PATIENT_IDS = ["P 1", "P_1", "p_1", "P-1", "P.1", "Müller", "Mäller", "Muller", "../P1", "Q" * 300]


def test_each_patient_gets_a_page_of_its_own(replica, tmp_path):
    import html
    import json

    import keras
    import pandas as pd

    from hemaflow.train import model_params
    from hemaflow.predict import run as P
    from hemaflow.train.models import build_model

    preprocess = dict(background="alpha", size=32, crop_to_content=True, pad_square=True, filter="none")
    model_dir = tmp_path / "results/models/tiny"
    model_dir.mkdir(parents=True)
    keras.utils.set_random_seed(3)
    build_model("model_1", (32, 32, 4), 2, 0.0).save(model_dir / "model.keras")
    (model_dir / "train.json").write_text(json.dumps({"model": "model_1", "lr": 0.001}))
    model_params.record(model_dir / "preprocess.json", preprocess=preprocess, channels=4, classes=["hem", "all"])
    files = sorted(replica.glob("training_data/fold_0/*/*.bmp"))[: len(PATIENT_IDS)]
    cells = tmp_path / "cells.csv"
    pd.DataFrame({"file": [str(f) for f in files], "patient_id": PATIENT_IDS}).to_csv(cells, index=False)

    summary = P.run(files, model="tiny", project=tmp_path, out_dir=tmp_path / "out", cells=cells, say=lambda _: None)

    pages = sorted(p.name for p in (tmp_path / "out/reports").iterdir())
    assert len(pages) == len(PATIENT_IDS) == len(set(summary["reports"].values()))
    assert sorted(summary["reports"]) == sorted(PATIENT_IDS) and sorted(summary["reports"].values()) == pages
    listed = pd.read_csv(tmp_path / "out/patients.csv", dtype=str, keep_default_na=False)
    assert dict(zip(listed["patient_id"], listed["report"])) == summary["reports"]
    for pid, name in summary["reports"].items():
        title = re.search(r"<title>(.*?)</title>", (tmp_path / "out/reports" / name).read_text(), re.S)[1]
        assert title.endswith(f" {html.escape(pid)}"), (pid, title)  # its own id, not a look-alike's
    assert [p for p in tmp_path.rglob("*.html") if p.parent != tmp_path / "out/reports"] == []  # `../P1` stayed in


@pytest.mark.parametrize("label", ["../../../../outside/x", ".", "..", "-rf", "a/b"])
def test_explain_refuses_an_overlay_path_built_from_a_hostile_label(tmp_path, label):
    from hemaflow.explain.run import overlay_path

    overlays = tmp_path / "results/explain/m/overlays"
    with pytest.raises(UnsafeName, match="class label"):
        overlay_path(overlays, label, "correct", "0123abcd")
    with pytest.raises(UnsafeName, match="image id"):
        overlay_path(overlays, "blast", "correct", f"../{label}")
    assert overlay_path(overlays, "blast", "correct", "0123abcd") == overlays / "blast/correct/0123abcd.png"
    assert not any(tmp_path.rglob("*"))  # nothing created on the way
