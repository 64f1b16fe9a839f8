"""LIME superpixel explanations of the predicted class, and the sufficiency test of any explanation."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from hemaflow.explain.gradcam import composite, overlay
from hemaflow.models_io import BATCH_SIZE, class_scores

# The sufficiency table's row of every class together (C-NMC has a class named "all").
OVERALL = "all classes"


@dataclass(frozen=True)
class LimeExplanation:
    """LIME's local linear model of one image's predicted class over its superpixels."""

    label: int  # the predicted class: the one explained
    probability: float  # the model's probability of `label` on the unperturbed image
    segments: np.ndarray  # (H, W) superpixel id of every pixel, 0..k-1
    weights: np.ndarray  # (k,) weight of each superpixel for `label`
    intercept: float
    r2: float  # fit of the weighted linear model on the perturbations

    def ranking(self) -> np.ndarray:
        """Superpixel ids by weight for the predicted class, largest first (ties by id)."""
        return np.lexsort((np.arange(len(self.weights)), -self.weights))

    def heat(self) -> np.ndarray:
        """(H, W) map of the positive weights scaled to [0, 1] (all zero when none is positive)."""
        w = np.clip(self.weights, 0.0, None)
        return (w / w.max())[self.segments] if w.max() > 0 else np.zeros(self.segments.shape)


def superpixels(image: np.ndarray, *, seed: int, kernel_size: float = 4, max_dist: float = 200,
                ratio: float = 0.2, reference_size: int | None = 250) -> np.ndarray:
    """Quickshift superpixels of the visible cell: (H, W) ids 0..k-1.

    Seed 003's settings (kernel 4, max_dist 200, ratio 0.2) are in pixels of its 250 px crops,
    where they give about 43 superpixels a cell; kernel_size and max_dist are scaled by
    side / `reference_size` (kernel at least 1, quickshift's minimum) so a 48 px cell is cut
    as finely as the seed's (a kernel of 4 there leaves 1-3 superpixels). None: unscaled.
    """
    from skimage.segmentation import quickshift

    scale = 1.0 if reference_size is None else max(image.shape[:2]) / reference_size
    labels = quickshift(composite(image), kernel_size=max(1.0, kernel_size * scale), max_dist=max_dist * scale,
                        ratio=ratio, rng=seed)
    return np.unique(labels, return_inverse=True)[1].reshape(labels.shape)


def lime_explain(model, image: np.ndarray, *, seed: int, num_samples: int = 300, fill: float = 0.0,
                 batch_size: int = BATCH_SIZE, segmentation: dict | None = None) -> LimeExplanation:
    """LIME explanation of the class the model predicts for `image` (H, W, C float32 in [0, 1]).

    `num_samples` perturbations hide random superpixels (every channel set to `fill`) and go
    through the model `batch_size` at a time; `seed` fixes the segmentation and the sampling.
    """
    from lime import lime_image

    image = np.asarray(image, dtype=np.float32)
    scores = class_scores(model, image[None])[0]
    label = int(scores.argmax())
    segments = superpixels(image, seed=seed, **(segmentation or {}))
    explainer = lime_image.LimeImageExplainer(random_state=seed)
    found = explainer.explain_instance(
        image,
        lambda batch: class_scores(model, batch, batch_size=batch_size),
        labels=(label,),
        top_labels=None,  # LIME's default (5) would explain the top classes, not ours
        hide_color=fill,
        num_samples=num_samples,
        batch_size=batch_size,
        segmentation_fn=lambda _: segments,
    )
    weights = np.zeros(int(segments.max()) + 1)
    for segment, weight in found.local_exp[label]:
        weights[segment] = weight
    return LimeExplanation(label, float(scores[label]), segments, weights, float(found.intercept[label]),
                           float(found.score))


def lime_overlay(image: np.ndarray, expl: LimeExplanation, alpha: float = 0.4, outline: int = 5) -> np.ndarray:
    """`overlay` of LIME's positive weights, the `outline` top superpixels outlined in yellow."""
    from skimage.segmentation import find_boundaries

    out = overlay(image, expl.heat(), alpha)
    top = np.isin(expl.segments, expl.ranking()[:outline][expl.weights[expl.ranking()[:outline]] > 0])
    out[find_boundaries(np.where(top, expl.segments, -1), mode="inner") & top] = (255, 255, 0)
    return out


def keep_superpixels(image: np.ndarray, segments: np.ndarray, keep, fill: float = 0.0) -> np.ndarray:
    """`image` with every superpixel not in `keep` set to `fill` in every channel."""
    out = np.array(image, dtype=np.float32, copy=True)
    out[~np.isin(segments, np.asarray(keep, dtype=int))] = fill
    return out


def sufficiency(model, images: np.ndarray, labels, explanations, ns, *, class_names, seed: int,
                fill: float = 0.0, batch_size: int = BATCH_SIZE) -> pd.DataFrame:
    """How much of each image's prediction n superpixels keep, for every n in `ns`.

    method `lime`: the n with the largest LIME weight for the predicted class; `random`: a seeded
    random order of the superpixels (one per image, so the sets grow with n), cut where it covers
    at least the pixels the LIME top n cover, so both keep the same area (n random superpixels
    would keep less of the cell wherever LIME's are large); `full image`: nothing hidden, the
    reference; `nothing kept` (n = 0): every superpixel hidden, the floor (a model that calls a
    blank image one class scores that class's share there by default). The same images enter
    every n: an image with fewer than n superpixels keeps all of them.
    One row per method, n and class (true label; OVERALL = every image): images, accuracy,
    kept_prediction (same class as on the full image), precision (seed 003's measure: of the
    images predicted as the class, the share truly of it; OVERALL their mean over the predicted
    classes), kept (mean fraction of superpixels kept) and area (of pixels kept).
    """
    labels = np.asarray(labels, dtype=int)
    predicted = np.array([e.label for e in explanations])
    rng = np.random.default_rng(seed)
    sizes = [np.bincount(e.segments.ravel(), minlength=len(e.weights))[: len(e.weights)] for e in explanations]
    lime_orders = [e.ranking() for e in explanations]
    random_orders = [rng.permutation(len(e.weights)) for e in explanations]

    def random_like_lime(k: int, n: int) -> np.ndarray:
        target = sizes[k][lime_orders[k][:n]].sum()
        covered = np.cumsum(sizes[k][random_orders[k]])
        return random_orders[k][: int(np.searchsorted(covered, target)) + 1] if n else random_orders[k][:0]

    def scored(method: str, n: int, keeps) -> tuple:
        kept = [keep_superpixels(img, e.segments, keep, fill) for img, e, keep in zip(images, explanations, keeps)]
        pred = class_scores(model, np.stack(kept), batch_size=batch_size).argmax(axis=1)
        fraction = np.array([len(keep) / len(e.weights) for keep, e in zip(keeps, explanations)])
        area = np.array([size[np.asarray(keep, int)].sum() / size.sum() for keep, size in zip(keeps, sizes)])
        return method, n, fraction, area, pred

    rows = [scored("nothing kept", 0, [o[:0] for o in lime_orders])]
    for n in ns:
        rows.append(("full image", n, np.ones(len(labels)), np.ones(len(labels)), predicted))
        rows.append(scored("lime", n, [o[:n] for o in lime_orders]))
        rows.append(scored("random", n, [random_like_lime(k, n) for k in range(len(labels))]))
    names = np.asarray(class_names, dtype=object)
    out = []
    for method, n, fraction, area, pred in rows:
        precision = {c: float((labels[pred == c] == c).mean()) for c in np.unique(pred)}
        for c, sel in [(None, np.ones(len(labels), bool)), *((c, labels == c) for c in np.unique(labels))]:
            out.append({"method": method, "n": int(n), "class": OVERALL if c is None else names[c],
                        "images": int(sel.sum()), "accuracy": float((pred[sel] == labels[sel]).mean()),
                        "kept_prediction": float((pred[sel] == predicted[sel]).mean()),
                        "precision": float(np.mean(list(precision.values()))) if c is None else precision.get(c, np.nan),
                        "kept": float(fraction[sel].mean()), "area": float(area[sel].mean())})  # fmt: skip
    return pd.DataFrame(out)
