"""Classical baseline from seed 000's literature review: shape, GLCM texture and colour
features of the cell (scikit-image) into an RBF SVM (scikit-learn)."""

# It is fit and scored on the deterministic (unaugmented) copy of each cell only: rotated and
# mirrored copies add nothing to rotation-averaged features but rows (about 500k at seed
# 000's scale, where an RBF SVM's fit is quadratic or worse). The features of each split are
# computed once (`featurize_split`, by the train_baseline job) and read back by evaluate;
# `evaluate.predict_baseline` turns the SVM's probabilities into the prediction table every
# model gives, so it is scored and ranked like any model.
# The fitted pipeline is stored with skops, which rebuilds objects from an allow-list instead
# of running pickle code on load.

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd
import skops.io as sio
from skimage import color, feature, filters, measure
from sklearn.calibration import CalibratedClassifierCV
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from hemaflow.augment.preprocess import DETERMINISTIC_SUFFIX
from hemaflow.augment.records import iter_records

SHAPE = ["area", "perimeter", "eccentricity", "solidity", "extent", "axis_major_length", "axis_minor_length"]
GLCM_PROPS = ["contrast", "homogeneity", "energy", "correlation"]
GLCM_DISTANCES = [1, 2]
GLCM_ANGLES = [0, np.pi / 4, np.pi / 2, 3 * np.pi / 4]
GLCM_LEVELS = 32
FEATURE_NAMES = (
    SHAPE
    + [f"glcm_{p}_d{d}" for p in GLCM_PROPS for d in GLCM_DISTANCES]
    + [f"{s}_{c}" for c in ("r", "g", "b", "h", "s", "v") for s in ("mean", "std")]
)


def foreground_mask(img: np.ndarray) -> np.ndarray:
    """The cell: alpha > 0 for RGBA; for RGB, Otsu on the haematoxylin channel.

    Natural-background smears are Romanowsky-stained (purple nuclei on pale or pink
    background); colour deconvolution (`skimage.color.rgb2hed`) isolates the nuclear
    stain, which Otsu then splits from the paler background.
    Pure black pixels (constant fill) never count: deconvolution reads them as dense stain.
    Black-background data such as C-NMC belong in `preprocess.background: alpha`.
    """
    if img.shape[2] == 4:
        return img[..., 3] > 0
    lit = img[..., :3].any(axis=2)
    hema = color.rgb2hed(img[..., :3])[..., 0]
    if not lit.any() or np.ptp(hema[lit]) == 0:
        return lit
    return lit & (hema > filters.threshold_otsu(hema[lit]))


def _main_region(mask: np.ndarray):
    """regionprops of the largest connected foreground region (the whole image if empty)."""
    labels = measure.label(mask)
    if labels.max() == 0:
        labels = np.ones(mask.shape, dtype=int)
    regions = measure.regionprops(labels)
    return max(regions, key=lambda r: r.area), labels


def _glcm(grey: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """GLCM properties on the masked grey image, averaged over angles (training rotates cells).

    Level 0 is reserved for background and its pairs dropped, so the texture is the cell's.
    """
    q = 1 + np.minimum((grey * GLCM_LEVELS).astype(int), GLCM_LEVELS - 1)
    q[~mask] = 0
    glcm = feature.graycomatrix(
        q.astype(np.uint8), GLCM_DISTANCES, GLCM_ANGLES, levels=GLCM_LEVELS + 1, symmetric=True
    )[1:, 1:]
    return np.concatenate([feature.graycoprops(glcm, p).mean(axis=1) for p in GLCM_PROPS])


def extract_features(img: np.ndarray) -> np.ndarray:
    """Shape, GLCM and colour features (see FEATURE_NAMES) of one uint8 H×W×C (RGBA or RGB) cell."""
    if img.ndim != 3 or img.shape[2] not in (3, 4):
        raise ValueError(f"expected an H×W×3 or H×W×4 image, got shape {img.shape}")
    region, labels = _main_region(foreground_mask(img))
    mask = labels == region.label
    rgb = img[..., :3]
    shape = [float(getattr(region, name)) for name in SHAPE]
    texture = _glcm(color.rgb2gray(rgb), mask)
    rgb_in = rgb[mask].astype(np.float64) / 255.0
    hsv_in = color.rgb2hsv(rgb)[mask]
    colour = np.column_stack([rgb_in, hsv_in])
    stats = np.column_stack([colour.mean(axis=0), colour.std(axis=0)]).ravel()
    return np.concatenate([shape, texture, stats])


def featurize_split(records: Iterable, channels: int) -> pd.DataFrame:
    """Features of the deterministic copy of every source image in `records` (one row per
    image): aug_id, image_id, label_index, then FEATURE_NAMES. Augmented copies are skipped
    before their PNG is decoded."""
    X, labels, ids = [], [], []
    for img, label, aug_id in iter_records(records, channels, deterministic_only=True):
        X.append(extract_features(img))
        labels.append(label)
        ids.append(aug_id)
    frame = pd.DataFrame(np.vstack(X) if X else np.zeros((0, len(FEATURE_NAMES))), columns=FEATURE_NAMES)
    frame.insert(0, "label_index", np.asarray(labels, dtype=np.int16))
    frame.insert(0, "image_id", pd.Series([a.removesuffix(DETERMINISTIC_SUFFIX) for a in ids], dtype=str))
    frame.insert(0, "aug_id", pd.Series(ids, dtype=str))
    return frame


def calibration_folds(y: np.ndarray, groups: np.ndarray, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """5 stratified folds that keep all rows of a group (a patient, see fit_baseline) on one side,
    so Platt scaling is fit on decision values of patients the SVM did not see; `seed` shuffles them."""
    folds = StratifiedGroupKFold(n_splits=5, shuffle=True, random_state=seed)
    return list(folds.split(np.zeros(len(y)), y, groups))


def fit_svm(X: np.ndarray, y: np.ndarray, groups: np.ndarray, seed: int, class_weight: str | None = None) -> Pipeline:
    """StandardScaler + RBF SVC with Platt-scaled probabilities, seeded.

    Calibrated as `SVC(probability=True)` did (Platt on 5-fold cross-validated decision
    values, final SVC on all data), through the API scikit-learn 1.9 replaces it with, but
    on folds grouped by source image (`groups`, see calibration_folds); `seed` shuffles the
    calibration folds.

    `class_weight`: None or "none" (params.yaml spelling), or "balanced" (inverse class frequency).
    """
    if class_weight not in (None, "none", "balanced"):
        raise ValueError(f"train.class_weight must be none or balanced, got {class_weight!r}")
    weight = None if class_weight in (None, "none") else class_weight
    folds = calibration_folds(y, groups, seed)  # the seed's only role
    calibrated = CalibratedClassifierCV(SVC(kernel="rbf", class_weight=weight), cv=folds, ensemble=False)
    return make_pipeline(StandardScaler(), calibrated).fit(X, y)


def fit_baseline(features: pd.DataFrame, seed: int, class_weight: str | None = None,
                 patients: pd.Series | None = None) -> Pipeline:
    """fit_svm on a featurize_split table (the train split's), its calibration folds grouped by
    patient (`patients`: patient id by image id, e.g. sources.parquet's) and by image where an
    image has none: a patient's cells look alike, so folds split by cell would calibrate on
    patients the SVM saw."""
    X = features[FEATURE_NAMES].to_numpy()
    ids = features["image_id"]
    patient = ids.map(patients) if patients is not None else pd.Series(pd.NA, index=ids.index)
    groups = ("patient:" + patient.astype("str")).where(patient.notna(), "image:" + ids).to_numpy()
    return fit_svm(X, features["label_index"].to_numpy(int), groups, seed, class_weight)


def predict_svm(pipe: Pipeline, X: np.ndarray, n_classes: int | None = None) -> np.ndarray:
    """Class probabilities, one column per class index (classes unseen in training get p = 0)."""
    n_classes = int(pipe.classes_.max()) + 1 if n_classes is None else n_classes
    proba = np.zeros((len(X), n_classes))
    if len(X):
        proba[:, pipe.classes_] = pipe.predict_proba(X)
    return proba


# Types of the fitted pipeline that skops does not trust by default: the calibration wrappers
# and the folds object `fit_svm` builds. Anything else in a model file is refused on load.
TRUSTED_TYPES = frozenset(
    {
        "sklearn.calibration._CalibratedClassifier",
        "sklearn.calibration._SigmoidCalibration",
        "sklearn.model_selection._split.StratifiedKFold",
    }
)


def save_svm(pipe: Pipeline, path) -> None:
    """Write the fitted pipeline as a skops file (no pickle: loading runs no stored code)."""
    sio.dump(pipe, path)


def load_svm(path) -> Pipeline:
    """Load a `save_svm` file, trusting only the types `fit_svm` produces; refuse any other."""
    untrusted = set(sio.get_untrusted_types(file=path))
    unknown = sorted(untrusted - TRUSTED_TYPES)
    if unknown:
        raise ValueError(
            f"{path}: the model file holds types hemaflow does not trust: {unknown}. "
            "It was not written by hemaflow's train_baseline (or by another scikit-learn version); "
            "do not load it, rebuild it with `snakemake models`"
        )
    return sio.load(path, trusted=sorted(untrusted))
