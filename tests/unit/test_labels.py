"""Labels that can be trusted: label_map, data.classes, label conflicts, positive_class, typo warnings."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from hemaflow.data.adapters import check_positive_class, known_classes, list_candidates, similar_labels
from hemaflow.data.ingest import build_sources, summary
from hemaflow.data.manifest import read_classes, write_classes


def png(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (5, 5, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def make(root, files: dict) -> None:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)


@pytest.fixture
def leukaemia(tmp_path):
    """A 4-class leukaemia smear set in class folders (Benign, Early, Pre, Pro) plus a class to drop."""
    root = tmp_path / "all4"
    make(root, {f"{c}/{i}.png": png(10 * k + i) for k, c in enumerate(["Benign", "Early", "Pre", "Pro", "Junk"]) for i in range(2)})
    return root


def test_label_map_merges_renames_and_drops_without_losing_rows(leukaemia):
    mapping = {"Early": "malignant", "Pre": "malignant", "Pro": "malignant", "Benign": "benign", "Junk": None}
    df, classes = list_candidates("folders", leukaemia, dataset="t", label_map=mapping)
    assert classes == ("benign", "malignant")
    assert len(df) == 10
    rows = df.set_index("rel_path")
    assert rows.loc["Pre/0.png", ["source_label", "label", "label_index"]].tolist() == ["Pre", "malignant", 1]
    assert rows.loc["Benign/1.png", ["source_label", "label", "label_index"]].tolist() == ["Benign", "benign", 0]
    assert (rows.loc[["Junk/0.png", "Junk/1.png"], "reason"] == "dropped_by_label_map").all()
    sources = build_sources(df, leukaemia, dataset="t", max_pixels=100)
    assert sources.status.value_counts().to_dict() == {"ok": 8, "skipped": 2}
    info = summary(sources, classes)
    assert info["classes"] == {"benign": 2, "malignant": 6} and info["skipped"] == {"dropped_by_label_map": 2}


def test_classes_fix_the_order_and_quarantine_unknown_labels(leukaemia):
    df, classes = list_candidates("folders", leukaemia, dataset="t", classes=["Pro", "Pre", "Early", "Benign"])
    assert classes == ("Pro", "Pre", "Early", "Benign")
    rows = df.set_index("rel_path")
    assert rows.loc["Pro/0.png", "label_index"] == 0 and rows.loc["Benign/0.png", "label_index"] == 3
    assert (rows.loc[["Junk/0.png", "Junk/1.png"], "reason"] == "unknown_label").all()
    assert (rows.loc[["Junk/0.png", "Junk/1.png"], "label_index"] == -1).all()


@pytest.fixture
def conflicted(tmp_path):
    """Pixels of one image under three labels (2 x a, 1 x b), and a tie (1 x a, 1 x b)."""
    root = tmp_path / "c"
    make(root, {"a/1.png": png(1), "a/2.png": png(1), "b/3.png": png(1),  # majority a
                "a/4.png": png(2), "b/5.png": png(2),  # tie
                "a/6.png": png(3), "a/7.png": png(3)})  # fmt: skip  # a plain duplicate
    return root


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("quarantine", {"a/1.png", "a/2.png", "b/3.png", "a/4.png", "b/5.png"}),
        ("majority", {"b/3.png", "a/4.png", "b/5.png"}),  # the tie keeps nobody
    ],
)
def test_label_conflicts(conflicted, policy, expected):
    df, classes = list_candidates("folders", conflicted, dataset="t")
    sources = build_sources(df, conflicted, dataset="t", max_pixels=100, on_label_conflict=policy).set_index("rel_path")
    assert set(sources.index[sources.reason == "label_conflict"]) == expected
    assert (sources.loc[list(expected), "status"] == "quarantined").all()
    assert sources.loc["a/7.png", "status"] == "ok" and pd.notna(sources.loc["a/7.png", "duplicate_of"])
    info = summary(sources.reset_index(), classes)
    kept = {frozenset(g["files"]): g["kept"] for g in info["label_conflicts"]}
    assert kept[frozenset({"a/4.png", "b/5.png"})] is None
    assert kept[frozenset({"a/1.png", "a/2.png", "b/3.png"})] == ("a" if policy == "majority" else None)
    if policy == "majority":
        assert sources.loc["a/2.png", "duplicate_of"] == sources.loc["a/1.png", "image_id"]


def test_strict_mode_fails_on_a_label_conflict(conflicted):
    df, _ = list_candidates("folders", conflicted, dataset="t")
    with pytest.raises(ValueError, match=r"b/3\.png: label_conflict"):
        build_sources(df, conflicted, dataset="t", max_pixels=100, strict=True)


def test_unknown_conflict_policy_names_the_key(conflicted):
    df, _ = list_candidates("folders", conflicted, dataset="t")
    with pytest.raises(ValueError, match=r"data\.on_label_conflict.*'vote'.*quarantine, majority"):
        build_sources(df, conflicted, dataset="t", max_pixels=100, on_label_conflict="vote")


def test_similar_labels():
    names = ["Neutrophil", "Neutrophill", "lymphocyte", "Lymphocyte ", "Monocyte", "Basophil", "Eosinophil", "all", "hem"]
    assert similar_labels(names) == [("Lymphocyte ", "lymphocyte"), ("Neutrophil", "Neutrophill")]
    assert similar_labels(["Early", "Pre", "Pro", "Benign"]) == [("Pre", "Pro")]  # flagged; data.classes silences it
    assert similar_labels(["hem", "all"]) == []


def test_positive_class_is_checked_against_the_classes():
    assert check_positive_class(["hem", "all"], "all") == "all"
    with pytest.raises(ValueError, match=r"data\.positive_class: 'all'.*'benign', 'malignant'"):
        check_positive_class(["benign", "malignant"], "all")
    assert check_positive_class(["a", "b", "c"], "all") is None  # multi-class: unused
    with pytest.raises(ValueError, match="at least two"):
        check_positive_class(["only"], "only")


def test_classes_known_before_reading_the_data():
    assert known_classes("synthetic") == ("hem", "all")
    assert known_classes("cnmc", label_map={"all": "blast", "hem": "normal"}) == ("normal", "blast")
    assert known_classes("folders") is None
    assert known_classes("filelist", classes=["x", "y"]) == ("x", "y")


def test_class_list_round_trip(tmp_path):
    write_classes(("benign", "malignant"), tmp_path / "m" / "classes.json")
    assert read_classes(tmp_path / "m" / "classes.json") == ["benign", "malignant"]
