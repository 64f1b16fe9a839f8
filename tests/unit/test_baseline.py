import io
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from skimage.draw import disk

from hemaflow.evaluate import baseline
from hemaflow.augment import records
from hemaflow.evaluate.score import predict_baseline, prediction_frame
from hemaflow.augment.preprocess import aug_id

SIZE = 48


def cell(radius: float, rng, background: str = "alpha") -> np.ndarray:
    """A noisy purple disc: RGBA on transparent black, or RGB on a pale pink smear background."""
    centre = SIZE / 2 + rng.uniform(-3, 3, 2)
    rr, cc = disk(centre, radius, shape=(SIZE, SIZE))
    rgb = np.zeros((SIZE, SIZE, 3))
    if background == "natural":
        rgb[:] = (235, 215, 220)
    rgb[rr, cc] = (110, 60, 150)
    rgb = np.clip(rgb + rng.normal(0, 8, rgb.shape), 0, 255).astype(np.uint8)
    if background == "natural":
        return rgb
    alpha = np.zeros((SIZE, SIZE, 1), np.uint8)
    alpha[rr, cc] = 255
    return np.concatenate([rgb * (alpha > 0), alpha], axis=2)


def discs(n: int, seed: int):
    """n small (label 0) and n large (label 1) discs."""
    rng = np.random.default_rng(seed)
    imgs = [cell(rng.uniform(5, 9), rng) for _ in range(n)] + [cell(rng.uniform(13, 18), rng) for _ in range(n)]
    return imgs, np.array([0] * n + [1] * n)


@pytest.mark.parametrize("background", ["alpha", "natural"])
def test_features_are_finite_and_named(background):
    f = baseline.extract_features(cell(10, np.random.default_rng(0), background))
    assert f.shape == (len(baseline.FEATURE_NAMES),)
    assert np.isfinite(f).all()


def test_empty_alpha_still_gives_finite_features():
    assert np.isfinite(baseline.extract_features(np.zeros((SIZE, SIZE, 4), np.uint8))).all()


@pytest.mark.parametrize("black_corner", [False, True])
def test_natural_background_mask_finds_the_stained_cell(black_corner):
    img = cell(10, np.random.default_rng(0), "natural")
    if black_corner:  # constant fill of a shifted copy: black is not stain
        img[:20, :20] = 0  # larger than the cell
    area = baseline.extract_features(img)[baseline.FEATURE_NAMES.index("area")]
    assert area == pytest.approx(np.pi * 10**2, rel=0.1)


def test_svm_separates_small_from_large_discs():
    X_train, y_train = discs(20, seed=0)
    X_test, y_test = discs(20, seed=1)
    X = np.array([baseline.extract_features(i) for i in X_train])
    pipe = baseline.fit_svm(X, y_train, np.arange(len(y_train)), seed=0)
    pred = pipe.predict(np.array([baseline.extract_features(i) for i in X_test]))
    assert (pred == y_test).mean() > 0.9


def test_fit_is_deterministic_for_a_seed():
    imgs, y = discs(10, seed=2)
    X = np.array([baseline.extract_features(i) for i in imgs])
    groups = np.arange(len(y))
    p1 = baseline.fit_svm(X, y, groups, seed=3).predict_proba(X)
    p2 = baseline.fit_svm(X, y, groups, seed=3).predict_proba(X)
    np.testing.assert_array_equal(p1, p2)
    # the seed picks the calibration folds, so another seed calibrates differently
    assert not np.allclose(p1, baseline.fit_svm(X, y, groups, seed=4).predict_proba(X))


def test_unknown_class_weight_is_rejected():
    with pytest.raises(ValueError, match="train.class_weight"):
        baseline.fit_svm(np.zeros((4, 2)), np.array([0, 1, 0, 1]), np.arange(4), seed=0, class_weight="inverse")


def _png(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def test_features_of_one_copy_per_source_to_prediction_table(tmp_path):
    """Each cell's deterministic copy and two augmented ones in a shard: one row per cell."""
    imgs, y = discs(6, seed=4)
    path = tmp_path / "s.tfrecord"
    copies = [(img, int(label), aug_id(f"img{k}", r, m, 0)) for k, (img, label) in enumerate(zip(imgs, y))
              for r, m in ((1, False), (0, False), (0, True))]  # fmt: skip
    rng = np.random.default_rng(0)
    rng.shuffle(copies)  # shards are written in a shuffled order
    records.write_records(path, (records.encode_example(_png(i), l, a) for i, l, a in copies))
    features = baseline.featurize_split([path], channels=4)
    assert len(features) == len(imgs) and features["image_id"].is_unique
    assert features["aug_id"].str.endswith("-r000-m0-c0").all()
    assert list(features.columns) == ["aug_id", "image_id", "label_index", *baseline.FEATURE_NAMES]
    first = features.set_index("image_id").loc["img0"]
    assert first["label_index"] == y[0]
    # lossless PNG round trip: the same features as from the arrays
    np.testing.assert_allclose(first[baseline.FEATURE_NAMES].to_numpy(float), baseline.extract_features(imgs[0]))
    pipe = baseline.fit_baseline(features, seed=0)
    assert pipe[0].n_samples_seen_ == len(imgs)  # fit on one row per source image
    # a three-class task where the SVM never saw class 2: that column is zero
    pred = predict_baseline(pipe, features, n_classes=3)
    template = prediction_frame(features["aug_id"], features["label_index"], np.zeros((len(features), 3)))
    assert list(pred.columns) == list(template.columns)
    assert (pred.dtypes == template.dtypes).all()
    assert pred["aug_id"].tolist() == features["aug_id"].tolist()
    assert (pred["p_2"] == 0).all()
    np.testing.assert_allclose(pred[["p_0", "p_1"]].sum(axis=1), 1.0)


def _fitted():
    imgs, y = discs(8, seed=5)
    X = np.array([baseline.extract_features(i) for i in imgs])
    return baseline.fit_svm(X, y, np.arange(len(y)), seed=0), X


def test_model_file_round_trip_without_pickle(tmp_path):
    pipe, X = _fitted()
    path = tmp_path / "model.skops"
    baseline.save_svm(pipe, path)
    assert not path.read_bytes().startswith(b"\x80")  # a zip of JSON and arrays, not a pickle stream
    np.testing.assert_array_equal(baseline.load_svm(path).predict_proba(X), pipe.predict_proba(X))


def test_model_file_with_an_unknown_type_is_refused(tmp_path):
    import os

    import skops.io as sio
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    pipe, X = _fitted()
    # a stored shell call: what a pickle would run on load
    sio.dump(make_pipeline(FunctionTransformer(os.system), pipe), tmp_path / "evil.skops")
    with pytest.raises(ValueError, match=r"evil\.skops.*'posix\.system'.*snakemake models"):
        baseline.load_svm(tmp_path / "evil.skops")


def test_calibration_folds_keep_the_copies_of_a_cell_together():
    """40 cells x 6 copies: Platt scaling must never see decision values of a cell it was fit on."""
    y = np.repeat(np.arange(40) % 2, 6)
    groups = np.repeat([f"cell{i}" for i in range(40)], 6)
    X = np.random.default_rng(0).normal(size=(len(y), 3)) + y[:, None]
    pipe = baseline.fit_svm(X, y, groups, seed=1)
    folds = pipe[-1].cv  # the folds the calibration used
    assert len(folds) == 5
    for train, held in folds:
        assert not set(groups[train]) & set(groups[held])
        assert set(y[held]) == {0, 1}  # still stratified
    assert sorted(np.concatenate([held for _, held in folds])) == list(range(len(y)))


def test_calibration_folds_keep_each_patients_cells_together():
    """12 patients x 5 cells (one row per image, as featurize_split gives): folds split by patient,
    and an image without a patient id is a group of its own."""
    n = 60
    features = pd.DataFrame(np.random.default_rng(2).normal(size=(n, len(baseline.FEATURE_NAMES))),
                            columns=baseline.FEATURE_NAMES)  # fmt: skip
    features.insert(0, "label_index", (np.arange(n) // 5 % 2).astype(np.int16))
    features.insert(0, "image_id", [f"img{i}" for i in range(n)])
    patients = pd.Series([f"P{i // 5}" for i in range(n - 3)] + [None] * 3, index=features["image_id"])
    folds = baseline.fit_baseline(features, seed=1, patients=patients)[-1].cv
    for train, held in folds:
        assert not set(patients.iloc[train].dropna()) & set(patients.iloc[held].dropna())
    # without patients each image is its own group: the same patient's cells land on both sides
    by_image = baseline.fit_baseline(features, seed=1)[-1].cv
    assert any(set(patients.iloc[t].dropna()) & set(patients.iloc[h].dropna()) for t, h in by_image)
