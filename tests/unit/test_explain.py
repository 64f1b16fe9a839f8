import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import pandas as pd  # noqa: E402

from hemaflow import models_io  # noqa: E402
from hemaflow.explain import gradcam as G  # noqa: E402
from hemaflow.explain import lime as L  # noqa: E402
from hemaflow.explain import run as explain  # noqa: E402
from hemaflow.explain.gradcam import gradcam  # noqa: E402
from hemaflow.train.models import REGISTRY, build_model  # noqa: E402

SIDE = 16
SQUARE = (slice(2, 8), slice(2, 8))  # the bright square, top left


def square_detector(head: str = "sigmoid", side: int = SIDE, dark: float = -50.0, bias: float = 21.5) -> keras.Model:
    """A model with a known spatial response: conv filter 0 fires on bright pixels, filter 1 on
    dark ones; class 1 ("bright") is scored by filter 0, class 0 by filter 1 (the sigmoid head
    computes their difference)."""
    inp = keras.Input((side, side, 3))
    conv = keras.layers.Conv2D(2, 1, activation="relu", name="detect")(inp)
    gap = keras.layers.GlobalAveragePooling2D()(conv)
    units = 1 if head == "sigmoid" else 2
    out = keras.layers.Dense(units, activation=head, name="head")(gap)
    model = keras.Model(inp, out)
    third = np.full((1, 1, 3, 1), 1.0 / 3.0)
    model.get_layer("detect").set_weights([np.concatenate([third, -third], axis=-1), np.array([-0.5, 0.5])])
    # the bias puts the decision between a dark image (class 0) and one with the square (class 1)
    if head == "sigmoid":
        weights, bias = np.array([[50.0], [dark]]), np.array([bias])
    else:
        weights, bias = np.array([[-25.0, 25.0], [25.0, -25.0]]), np.array([-10.75, 10.75])
    model.get_layer("head").set_weights([weights, bias])
    return model


def bright_square() -> np.ndarray:
    img = np.zeros((SIDE, SIDE, 3), np.float32)
    img[SQUARE] = 1.0
    return img


def in_square(heat: np.ndarray) -> np.ndarray:
    mask = np.zeros((SIDE, SIDE), bool)
    mask[SQUARE] = True
    return mask


# ------------------------------------------------------------------ class_scores


def test_class_scores_turn_one_sigmoid_into_two_columns_and_batch_like_one_by_one():
    model = square_detector()
    images = np.stack([bright_square(), np.zeros((SIDE, SIDE, 3), np.float32), bright_square() * 0.6])
    scores = models_io.class_scores(model, images, batch_size=2)
    p = model.predict_on_batch(images)[:, 0]
    np.testing.assert_allclose(scores, np.column_stack([1 - p, p]), atol=1e-6)
    one_by_one = np.concatenate([models_io.class_scores(model, im[None]) for im in images])
    np.testing.assert_allclose(scores, one_by_one, atol=1e-6)
    assert scores.argmax(1).tolist() == [1, 0, 1]


def test_class_scores_keep_softmax_columns():
    model = square_detector("softmax")
    images = np.stack([bright_square(), np.zeros((SIDE, SIDE, 3), np.float32)])
    scores = models_io.class_scores(model, images)
    np.testing.assert_allclose(scores, model.predict_on_batch(images), atol=1e-6)
    assert scores.argmax(1).tolist() == [1, 0]


# ------------------------------------------------------------------ Grad-CAM


@pytest.mark.parametrize("head", ["sigmoid", "softmax"])
def test_gradcam_is_highest_on_the_square_for_class_1_and_elsewhere_for_class_0(head):
    model = square_detector(head)
    image = bright_square()[None]
    heat1 = G.gradcam(model, image, np.array([1]))[0]
    heat0 = G.gradcam(model, image, np.array([0]))[0]
    assert heat1.shape == (SIDE, SIDE)
    assert heat1.min() >= 0 and heat1.max() == pytest.approx(1.0)
    mask = in_square(heat1)
    assert heat1[mask].mean() > 0.9 and heat1[~mask].max() < 0.1
    # class 0 ("dark") is supported by the background, not the square: a different map
    assert heat0[~mask].mean() > 0.9 and heat0[mask].max() < 0.1


def test_gradcam_of_a_batch_explains_each_image_with_its_own_class():
    model = square_detector()
    shifted = np.zeros((SIDE, SIDE, 3), np.float32)
    shifted[9:15, 9:15] = 1.0
    images = np.stack([bright_square(), shifted])
    batch = G.gradcam(model, images, np.array([1, 0]))
    np.testing.assert_allclose(batch[0], G.gradcam(model, images[:1], np.array([1]))[0], atol=1e-6)
    np.testing.assert_allclose(batch[1], G.gradcam(model, images[1:], np.array([0]))[0], atol=1e-6)
    assert batch[0][SQUARE].mean() > 0.9 and batch[1][9:15, 9:15].max() < 0.1


def test_gradcam_reads_the_map_before_pooling_and_needs_one():
    assert G.feature_layers(square_detector()) == ["detect"]
    dense_only = keras.Sequential([keras.Input((4, 4, 3)), keras.layers.Flatten(), keras.layers.Dense(1)])
    with pytest.raises(ValueError, match="no spatial map before a global pooling"):
        G.feature_layers(dense_only)


def two_branch_square_detector() -> keras.Model:
    """seed 000's model_4 shape: a full-resolution branch that sees the square and a
    half-resolution branch (built after it, so its conv is the model's last) that sees nothing."""
    inp = keras.Input((SIDE, SIDE, 3))
    full = keras.layers.Conv2D(1, 1, activation="relu", name="full")(inp)
    half = keras.layers.Conv2D(1, 1, activation="relu", name="half")(keras.layers.AveragePooling2D(2)(inp))
    joined = keras.layers.Concatenate()([keras.layers.GlobalAveragePooling2D()(full),
                                         keras.layers.GlobalAveragePooling2D()(half)])  # fmt: skip
    model = keras.Model(inp, keras.layers.Dense(1, activation="sigmoid", name="head")(joined))
    model.get_layer("full").set_weights([np.full((1, 1, 3, 1), 1 / 3), np.array([-0.5])])
    model.get_layer("half").set_weights([np.zeros((1, 1, 3, 1)), np.zeros(1)])
    model.get_layer("head").set_weights([np.array([[50.0], [50.0]]), np.array([-5.0])])
    return model


def test_gradcam_of_a_multi_branch_model_shows_every_branch():
    model = two_branch_square_detector()
    assert G.feature_layers(model) == ["full", "half"]
    heat = G.gradcam(model, bright_square()[None], np.array([1]))[0]
    mask = in_square(heat)
    assert heat[mask].mean() > 0.9 and heat[~mask].max() < 0.1  # the full-resolution branch's square


@pytest.mark.parametrize("name", ["mobilenetv3_small", "model_4"])
def test_gradcam_under_mixed_precision_built_and_loaded(name, tmp_path):
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = build_model(name, (32, 32, 3), 2, 0.25)
        model.save(tmp_path / "model.keras")
        loaded = keras.models.load_model(tmp_path / "model.keras")
    finally:
        keras.mixed_precision.set_global_policy("float32")
    x = np.random.default_rng(0).random((2, 32, 32, 3), dtype=np.float32)
    for m in (model, loaded):
        assert m.get_layer(G.feature_layers(m)[0]).compute_dtype == "float16"
        heat = gradcam(m, x, np.array([1, 0]))
        assert heat.shape == (2, 32, 32) and np.isfinite(heat).all() and 0 <= heat.min() <= heat.max() <= 1


# ------------------------------------------------------------------ overlay


def test_overlay_composites_alpha_on_black_and_colours_the_heat():
    rgba = np.zeros((SIDE, SIDE, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[SQUARE + (3,)] = 255  # only the square is opaque
    heat = np.zeros((SIDE, SIDE))
    out = G.overlay(rgba, heat, alpha=0.0)
    assert out.dtype == np.uint8 and out.shape == (SIDE, SIDE, 3)
    assert (out[SQUARE] == 200).all() and (out[~in_square(heat)] == 0).all()
    hot = G.overlay(rgba, np.ones((4, 4)), alpha=1.0)  # heat resized to the image
    assert (hot == hot[0, 0]).all() and hot[0, 0, 0] > hot[0, 0, 2]  # jet at 1.0 is red


# ------------------------------------------------------------------ LIME

BIG = 32  # quickshift's default kernel (4) finds no structure in 16 px


def patches(square_at: tuple[int, int] | None = (2, 2)) -> np.ndarray:
    """Dark coloured patches in three quadrants and, optionally, the bright 10x10 square."""
    img = np.zeros((BIG, BIG, 3), np.float32)
    img[18:30, 2:14] = [0.6, 0.1, 0.1]
    img[2:14, 18:30] = [0.1, 0.5, 0.1]
    img[18:30, 18:30] = [0.1, 0.1, 0.6]
    if square_at:
        r, c = square_at
        img[r : r + 10, c : c + 10] = 1.0
    return img


@pytest.fixture(scope="module")
def detector():
    # bright pixels alone decide: P(class 1) > 0.5 with the 10x10 square, whatever else is shown
    return square_detector(side=BIG, dark=0.0, bias=-1.0)


def square_segment(expl: L.LimeExplanation) -> int:
    ids, counts = np.unique(expl.segments[2:12, 2:12], return_counts=True)
    return int(ids[counts.argmax()])


def test_lime_explains_the_predicted_class_and_finds_the_square(detector):
    image = patches()
    assert models_io.class_scores(detector, image[None]).argmax() == 1
    expl = L.lime_explain(detector, image, seed=0, num_samples=80)
    # seed 003 explained class 0 whatever the prediction: then the label would be 0 and the
    # square, which argues for class 1, would get the most negative weight
    assert expl.label == 1
    assert expl.probability == pytest.approx(models_io.class_scores(detector, image[None])[0, 1])
    assert expl.segments.shape == (BIG, BIG) and len(expl.weights) == expl.segments.max() + 1 >= 3
    assert expl.ranking()[0] == square_segment(expl) and expl.weights[square_segment(expl)] > 0.2
    heat = expl.heat()
    assert heat[5, 5] == 1.0 and heat.min() >= 0.0
    dark = L.lime_explain(detector, patches(square_at=None), seed=0, num_samples=80)
    assert dark.label == 0  # nothing bright: class 0 predicted, and that is what is explained


def test_lime_is_reproducible_with_its_seed(detector):
    a = L.lime_explain(detector, patches(), seed=3, num_samples=40)
    b = L.lime_explain(detector, patches(), seed=3, num_samples=40)
    c = L.lime_explain(detector, patches(), seed=4, num_samples=40)
    np.testing.assert_array_equal(a.weights, b.weights)
    np.testing.assert_array_equal(a.segments, b.segments)
    assert not np.allclose(a.weights, c.weights)  # the seed does drive the perturbations


def test_lime_in_batches_agrees_with_one_by_one(detector):
    batched = L.lime_explain(detector, patches(), seed=5, num_samples=40, batch_size=40)
    single = L.lime_explain(detector, patches(), seed=5, num_samples=40, batch_size=1)
    np.testing.assert_allclose(batched.weights, single.weights, atol=1e-5)
    assert batched.intercept == pytest.approx(single.intercept, abs=1e-5)


# ------------------------------------------------------------------ sufficiency


def test_sufficiency_keeps_the_same_images_for_every_n_and_beats_random(detector):
    corners = [(2, 2), (3, 3), (2, 4), (4, 2), (3, 2), (2, 3)]
    images = np.stack([patches(c) for c in corners] + [patches(None)] * 2)
    labels = np.array([1] * len(corners) + [0, 0])
    expls = [L.lime_explain(detector, im, seed=0, num_samples=60) for im in images]
    ns = [1, 2, 50]  # 50 is more superpixels than any image has
    table = L.sufficiency(detector, images, labels, expls, ns, class_names=["dark", "bright"], seed=0)
    again = L.sufficiency(detector, images, labels, expls, ns, class_names=["dark", "bright"], seed=0)
    pd.testing.assert_frame_equal(table, again)
    overall = table[table["class"] == L.OVERALL].set_index(["method", "n"])
    # seed 003 dropped images with fewer superpixels than n: here every n scores all 8
    assert (overall["images"] == len(images)).all()
    assert set(table["class"]) == {L.OVERALL, "dark", "bright"}
    by = table.set_index(["method", "n", "class"])
    # the top superpixel of a bright image is its square: alone on black it still reads "bright"
    assert by.loc[("lime", 1, "bright"), "accuracy"] == 1.0
    assert by.loc[("random", 1, "bright"), "accuracy"] < 1.0
    # n above the superpixel count keeps everything: the full-image figures
    for method in ("lime", "random"):
        assert overall.loc[(method, 50), "kept"] == 1.0
        assert overall.loc[(method, 50), "accuracy"] == overall.loc[("full image", 50), "accuracy"] == 1.0
    assert overall.loc[("lime", 1), "kept"] < 1.0
    # the floor: everything hidden, one row at n = 0 (a black image reads "dark" here)
    assert overall.loc[("nothing kept", 0), "kept"] == overall.loc[("nothing kept", 0), "area"] == 0.0
    assert by.loc[("nothing kept", 0, "dark"), "accuracy"] == 1.0 and by.loc[("nothing kept", 0, "bright"), "accuracy"] == 0.0
    # random keeps at least as much area as LIME's top n, so it is not handicapped by smaller pieces
    for n in ns:
        assert overall.loc[("random", n), "area"] >= overall.loc[("lime", n), "area"]
    # seed 003's precision per predicted class: with the square alone every "bright" call is right
    assert by.loc[("lime", 1, "bright"), "precision"] == 1.0
    assert by.loc[("full image", 1, "bright"), "kept_prediction"] == 1.0


def test_keep_superpixels_fills_the_rest():
    img = np.ones((2, 3, 4), np.float32)
    segments = np.array([[0, 1, 2], [2, 1, 0]])
    out = L.keep_superpixels(img, segments, [1], fill=0.0)
    assert out[..., 3].tolist() == [[0, 1, 0], [0, 1, 0]]  # hidden pixels transparent black


# ------------------------------------------------------------------ which cells, which model


def test_choose_cells_samples_each_class_and_kind_reproducibly():
    rng = np.random.default_rng(0)
    images = pd.DataFrame({"image_id": [f"i{k:02d}" for k in range(40)],
                           "split": rng.choice(["train", "val", "test"], 40),
                           "label_index": np.repeat([0, 1], 20), "predicted": rng.integers(0, 2, 40)})
    picked = explain.choose_cells(images, splits=["val", "test"], per_group=2, seed=1)
    assert set(picked["split"]) <= {"val", "test"}
    assert (picked["kind"] == np.where(picked["predicted"] == picked["label_index"], "correct", "misclassified")).all()
    assert picked.groupby(["label_index", "kind"]).size().tolist() == [2, 2, 2, 2]
    pd.testing.assert_frame_equal(picked, explain.choose_cells(images, splits=["val", "test"], per_group=2, seed=1))
    assert len(explain.choose_cells(images, splits=["val"], per_group=99, seed=1, by_kind=False)) == (
        images["split"] == "val").sum()


# ------------------------------------------------------------------ the pipeline step


def test_load_images_reads_the_deterministic_record_of_each_cell(tmp_path):
    from hemaflow.augment import records
    from hemaflow.augment.shards import encode_png

    rng = np.random.default_rng(0)
    imgs = {name: rng.integers(0, 256, (8, 8, 4), dtype=np.uint8) for name in ("a0", "a1", "b0")}
    path = tmp_path / "000.tfrecord"
    records.write_records(path, [records.encode_example(encode_png(im), 0, aug) for aug, im in imgs.items()])
    augmented = pd.DataFrame({"aug_id": ["a0", "a1", "b0"], "image_id": ["a", "a", "b"],
                              "copy": [0, 0, 0], "rotation": [0.0, 90.0, 0.0], "mirror": [False] * 3})
    found = explain.load_images([path], augmented, ["a", "b"], channels=4)
    np.testing.assert_array_equal(found["a"], imgs["a0"])  # not the rotated copy
    np.testing.assert_array_equal(found["b"], imgs["b0"])
    with pytest.raises(ValueError, match="no deterministic record.*rerun augment"):
        explain.load_images([path], augmented, ["a", "zz"], channels=4)


def test_explain_model_writes_overlays_table_and_sufficiency(detector, tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    corners = [(2, 2), (3, 3), (2, 4), (4, 2)]
    x = [patches(c) for c in corners] + [patches(None)] * 2
    images = {f"c{k}": np.round(im * 255).astype(np.uint8) for k, im in enumerate(x)}
    labels = [1, 1, 1, 0, 0, 1]  # c0-c3 show the square (predicted bright): c3 and c5 are misclassified
    p1 = models_io.class_scores(detector, np.stack(x))[:, 1]
    predictions = pd.DataFrame({"image_id": list(images), "split": ["test"] * 5 + ["val"], "patient_id": "P",
                                "label": np.array(["dark", "bright"])[labels], "label_index": labels,
                                "p_0": 1 - p1, "p_1": p1, "predicted": (p1 > 0.5).astype(int)})
    settings = {"splits": ["val", "test"], "cells": 1, "num_samples": 40, "batch_size": 64, "fill": 0.0,
                "segmentation": {}, "sufficiency": {"cells": 9, "n": [1, 64]}}
    out = {k: tmp_path / v for k, v in [("overlays", "overlays"), ("cells", "cells.csv"),
                                        ("sufficiency", "s.csv"), ("plot", "s.png"), ("summary", "summary.json")]}
    closed = []
    monkeypatch.setattr(plt, "close", lambda fig: closed.append(fig))  # keep the figures to inspect them
    summary = explain.explain_model(detector, predictions, images, combo="m", class_names=["dark", "bright"],
                                    settings=settings, seed=0, out=out)
    cells = pd.read_csv(out["cells"])
    # one cell per class and kind; the only misclassified ones are c3 (dark) and c5 (bright)
    assert sorted(zip(cells["label"], cells["kind"])) == [("bright", "correct"), ("bright", "misclassified"),
                                                          ("dark", "correct"), ("dark", "misclassified")]
    assert set(cells.loc[cells["kind"] == "misclassified", "image_id"]) == {"c3", "c5"}
    assert (cells["predicted"] == np.where(cells["kind"] == "correct", cells["label"],
                                           np.where(cells["label"] == "dark", "bright", "dark"))).all()
    for row in cells.itertuples():
        assert (out["overlays"] / row.overlay).is_file()
        assert row.overlay == f"{row.label}/{row.kind}/{row.image_id}.png"
    titles = [f._suptitle.get_text() for f in closed if f._suptitle is not None]
    assert any("true: dark · predicted: bright (p = " in t for t in titles)
    table = pd.read_csv(out["sufficiency"])
    assert (table["images"][table["class"] == L.OVERALL] == 6).all()  # every cell of the sample, at every n
    panels = closed[-1].axes  # rows accuracy, same prediction, precision; a column per class
    lime_line = table[(table["class"] == L.OVERALL) & (table["method"] == "lime")]
    n_classes = table["class"].nunique()
    assert len(panels) == 3 * n_classes
    for k, measure in enumerate(["accuracy", "kept_prediction", "precision"]):
        np.testing.assert_allclose(panels[k * n_classes].lines[0].get_ydata(), lime_line[measure])
    monkeypatch.undo()
    for fig in closed:
        plt.close(fig)
    assert summary["combo"] == "m" and summary["cells_explained"] == 6 and summary["lime_seconds_per_image"] > 0


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_gradcam_of_every_zoo_model_loaded_from_its_file(name, tmp_path):
    """Sequential networks (seeds 002-004) loaded from model.keras have no symbolic layer inputs;
    Grad-CAM must still explain them, and agree with the model it was saved from."""
    import keras

    built = build_model(name, (48, 48, 3), 2, 0.25)
    built.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    x = np.random.default_rng(0).random((2, 48, 48, 3), dtype=np.float32)
    heat = gradcam(loaded, x, np.array([1, 0]))
    assert heat.shape == (2, 48, 48) and np.isfinite(heat).all() and heat.min() >= 0 and heat.max() <= 1
    np.testing.assert_allclose(heat, gradcam(built, x, np.array([1, 0])), atol=1e-5)
