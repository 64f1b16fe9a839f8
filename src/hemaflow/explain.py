"""Explanations of the predicted class: Grad-CAM heat maps, LIME superpixels, overlays.

Every function explains the class the model predicts (seed 003's LIME call explained
class 0 whatever the prediction). Binary models have one sigmoid unit, P(class 1):
`class_scores` turns it into [1 - p, p], and Grad-CAM scores class 0 by the negated logit.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from hemaflow.safenames import check_name, under

# Perturbed images per model call: large enough to keep the CPU busy, small enough for memory.
BATCH_SIZE = 256
# The sufficiency table's row of every class together (C-NMC has a class named "all").
OVERALL = "all classes"


def class_scores(model, images: np.ndarray, *, batch_size: int = BATCH_SIZE) -> np.ndarray:
    """(N, n_classes) probabilities of float32 images in [0, 1]; a single sigmoid output becomes [1 - p, p]."""
    images = np.asarray(images, dtype=np.float32)
    width = model.output_shape[-1]
    parts = [np.asarray(model.predict_on_batch(images[i : i + batch_size]), dtype=np.float64)
             for i in range(0, len(images), batch_size)]
    raw = np.concatenate(parts) if parts else np.zeros((0, width))
    return np.column_stack([1.0 - raw[:, 0], raw[:, 0]]) if width == 1 else raw


def feature_layers(model) -> list[str]:
    """Names of the layers whose outputs Grad-CAM reads: the last 4-D map of each branch, i.e.
    what each global pooling or Flatten layer takes, after the branch's last BatchNorm,
    activation or residual add (a backbone's last conv is pre-activation: it misses them)."""
    import keras

    if isinstance(model, keras.Sequential):
        pooling = (keras.layers.GlobalAveragePooling2D, keras.layers.GlobalMaxPooling2D, keras.layers.Flatten)
        names = [prev.name for prev, layer in zip(model.layers, model.layers[1:]) if isinstance(layer, pooling)][:1]
    else:
        # Back from the head's input through the non-spatial layers (dense, dropout, concatenate,
        # pooling) to the first 4-D tensors: one per branch. Global pooling inside a block
        # (squeeze-and-excitation) is not on that path.
        names, todo = [], [model.layers[-1].input]
        while todo:
            tensor = todo.pop()
            operation, node_index, _ = tensor._keras_history
            if len(tensor.shape) == 4:
                names += [] if operation.name in names else [operation.name]
            else:
                todo.extend(reversed(operation._inbound_nodes[node_index].input_tensors))
        names.sort(key=[layer.name for layer in model.layers].index)  # model order
    if not names:
        raise ValueError(f"model {model.name!r} has no spatial map before a global pooling or Flatten layer: "
                         "Grad-CAM needs one (use LIME instead)")  # fmt: skip
    return names


def _class_logits(model, layers: list[str]):
    """A function images -> (the maps of `layers`, class logits), as in the Keras Grad-CAM example.

    With a sigmoid or softmax Dense head the logits are its pre-activation (gradients of a
    saturated probability vanish); a sigmoid's logit z becomes [-z, z], so class 0 is scored
    by -z. Other heads fall back to the class probabilities. Logits are float32 even under
    mixed precision (float16 maps, float32 head).
    """
    import keras
    import tensorflow as tf

    head = model.layers[-1]
    if isinstance(model, keras.Sequential):
        # A Sequential model loaded from model.keras has no symbolic head.input to build a
        # sub-model from (seed 002/003/004's networks): run its layers in order instead.
        def features(images):
            x, maps = images, []
            for lyr in model.layers[:-1]:
                x = lyr(x, training=False)
                maps += [x] if lyr.name in layers else []
            return maps, x

    else:
        outputs = [model.get_layer(name).output for name in layers]
        feature_model = keras.Model(model.inputs, [*outputs, head.input])

        def features(images):
            *maps, x = feature_model(images, training=False)
            return maps, x

    def float32_features(images):  # the maps as they are: gradients are taken with respect to them
        maps, x = features(images)
        return maps, tf.cast(x, tf.float32)

    softmax_or_sigmoid = (keras.activations.sigmoid, keras.activations.softmax)
    if isinstance(head, keras.layers.Dense) and head.activation in softmax_or_sigmoid:

        def logits(images):
            maps, x = float32_features(images)
            z = tf.matmul(x, tf.cast(head.kernel, tf.float32)) + tf.cast(head.bias, tf.float32)
            return maps, tf.concat([-z, z], axis=1) if z.shape[-1] == 1 else z

        return logits

    def probabilities(images):
        maps, x = float32_features(images)
        p = tf.cast(head(x, training=False), tf.float32)
        return maps, tf.concat([1.0 - p, p], axis=1) if p.shape[-1] == 1 else p

    return probabilities


def gradcam(model, images: np.ndarray, class_index: np.ndarray, *, layers: list[str] | None = None) -> np.ndarray:
    """Grad-CAM of class `class_index[i]` for each image: (N, H, W) heat maps in [0, 1].

    images (N, H, W, C) float32 in [0, 1]. The channel weights are the gradients of the class
    logit averaged over each map; the ReLU of a branch's weighted map is resized to the image
    (bilinear). Several branches (seed 000's model_4/model_5: one per resolution) are added
    with weights h·w / (H·W), so that each pixel carries its share of the evidence whatever the
    branch's resolution (behind global average pooling a branch adds the sum of its map to the
    logit). The sum is divided by its maximum (all zero when no region supports the class).
    `layers` default to feature_layers(model).
    """
    import tensorflow as tf

    images = tf.convert_to_tensor(np.asarray(images, dtype=np.float32))
    index = np.broadcast_to(np.asarray(class_index, dtype=np.int64), (images.shape[0],))
    scores_of = _class_logits(model, layers or feature_layers(model))
    with tf.GradientTape() as tape:
        maps, logits = scores_of(images)
        # each image's score depends on that image only, so one gradient of the sum gives all
        score = tf.reduce_sum(tf.gather(logits, index, axis=1, batch_dims=1))
    side = images.shape[1:3]
    cam = 0.0
    for conv, grads in zip(maps, tape.gradient(score, maps)):
        conv, grads = tf.cast(conv, tf.float32), tf.cast(grads, tf.float32)  # float16 under mixed precision
        weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
        positive = tf.nn.relu(tf.reduce_sum(conv * weights, axis=-1, keepdims=True))
        share = conv.shape[1] * conv.shape[2] / (side[0] * side[1])
        cam += tf.image.resize(positive, side, method="bilinear") * share
    cam = cam[..., 0].numpy()
    top = cam.reshape(len(cam), -1).max(axis=1).reshape(-1, 1, 1)
    return np.divide(cam, top, out=np.zeros_like(cam), where=top > 0).clip(0.0, 1.0)


def composite(image: np.ndarray) -> np.ndarray:
    """An image (H, W, 1|3|4) as float RGB in [0, 1], an alpha channel composited on black."""
    img = np.asarray(image)
    img = img.astype(np.float64) / 255.0 if img.dtype == np.uint8 else img.astype(np.float64)
    if img.ndim == 2:
        img = img[..., None]
    if img.shape[-1] == 4:
        img = img[..., :3] * img[..., 3:]
    elif img.shape[-1] == 1:
        img = np.repeat(img, 3, axis=-1)
    elif img.shape[-1] != 3:
        raise ValueError(f"image has {img.shape[-1]} channels; expected 1, 3 or 4 (RGBA)")
    return img.clip(0.0, 1.0)


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """(H, W, 3) uint8 RGB: the cell (alpha channel composited on black) with `heat` in the jet colour map.

    `heat` (values in [0, 1]) is resized to the image when their sizes differ.
    """
    from matplotlib import colormaps

    rgb = composite(image)
    heat = np.asarray(heat, dtype=np.float64)
    if heat.shape != rgb.shape[:2]:
        from skimage.transform import resize

        heat = resize(heat, rgb.shape[:2], order=1, mode="edge", anti_aliasing=False)
    coloured = colormaps["jet"](heat.clip(0.0, 1.0))[..., :3]
    return np.round(255.0 * ((1.0 - alpha) * rgb + alpha * coloured)).astype(np.uint8)


# ------------------------------------------------------------------ LIME


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


# ------------------------------------------------------------------ sufficiency


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


# ------------------------------------------------------------------ which cells, which model

KINDS = ("correct", "misclassified")


def choose_cells(images: pd.DataFrame, *, splits, per_group: int, seed: int, by_kind: bool = True) -> pd.DataFrame:
    """A seeded sample of `per_group` cells per true class (and per kind, correct or misclassified)
    from evaluate's per-image predictions of `splits`; fewer where a group has fewer."""
    pool = images[images["split"].isin(list(splits))].sort_values(["split", "image_id"])
    pool = pool.assign(kind=np.where(pool["predicted"] == pool["label_index"], KINDS[0], KINDS[1]))
    groups = ["label_index", "kind"] if by_kind else ["label_index"]
    picked = [g.sample(n=min(per_group, len(g)), random_state=seed) for _, g in pool.groupby(groups, sort=True)]
    if not picked:
        return pool.iloc[:0]
    return pd.concat(picked).sort_values([*groups, "image_id"]).reset_index(drop=True)


def load_images(records, augmented: pd.DataFrame, image_ids, channels: int) -> dict[str, np.ndarray]:
    """image_id -> its deterministic record (copy 0: no rotation, mirror or random op) as uint8."""
    from hemaflow.records import iter_records

    rows = augmented[augmented["image_id"].isin(set(image_ids)) & (augmented["copy"] == 0)
                     & (augmented["rotation"] == 0) & ~augmented["mirror"]]
    wanted = dict(zip(rows["aug_id"], rows["image_id"]))
    found = {wanted[aug_id]: img for img, _, aug_id in iter_records(records, channels) if aug_id in wanted}
    missing = sorted(set(image_ids) - set(found))
    if missing:
        raise ValueError(f"{len(missing)} images to explain (e.g. {missing[0]}) have no deterministic record in "
                         "the shards given: shards and augmented.parquet are from different runs; rerun augment")
    return found


# ------------------------------------------------------------------ the pipeline's explain step


def explain_model(model, predictions: pd.DataFrame, images: dict[str, np.ndarray], *, combo: str, class_names,
                  settings: dict, seed: int, out: dict) -> dict:
    """Explain a seeded sample of cells and run the sufficiency test; write the files named in `out`.

    predictions: evaluate's per-image table; images: image_id -> deterministic record (uint8)
    for every cell `sample_cells` picks. `settings` is params.yaml's `explain` section; `out`
    has keys overlays (directory), cells, sufficiency, plot, summary. Returns the summary.
    """
    from hemaflow import plots  # matplotlib only here: the API above works without it

    gallery, tested = sample_cells(predictions, settings, seed)
    ids = list(dict.fromkeys([*gallery["image_id"], *tested["image_id"]]))
    x = np.stack([images[i] for i in ids]).astype(np.float32) / 255.0 if ids else np.zeros((0, 1, 1, 1), np.float32)
    index = {image_id: k for k, image_id in enumerate(ids)}
    lime_args = dict(seed=seed, num_samples=settings["num_samples"], fill=settings["fill"],
                     batch_size=settings["batch_size"], segmentation=settings["segmentation"])
    started = time.perf_counter()
    lime = {i: lime_explain(model, x[index[i]], **lime_args) for i in ids}
    lime_seconds = time.perf_counter() - started
    g = np.array([index[i] for i in gallery["image_id"]], dtype=int)
    started = time.perf_counter()
    heat = gradcam(model, x[g], np.array([lime[i].label for i in gallery["image_id"]])) if len(g) else []
    gradcam_seconds = time.perf_counter() - started

    names = np.asarray(class_names, dtype=object)
    overlays = Path(out["overlays"])
    rows = []
    for k, cell in enumerate(gallery.itertuples(index=False)):
        e, img = lime[cell.image_id], x[index[cell.image_id]]
        png = overlay_path(overlays, cell.label, cell.kind, cell.image_id)
        png.parent.mkdir(parents=True, exist_ok=True)
        title = (f"true: {cell.label} · predicted: {names[e.label]} (p = {e.probability:.2f}) · "
                 f"{cell.split}, {cell.kind}")
        plots.explanation_panel(overlay(img, np.zeros(img.shape[:2]), 0.0), overlay(img, heat[k]),
                                lime_overlay(img, e), title, png)
        rows.append({"image_id": cell.image_id, "split": cell.split, "patient_id": cell.patient_id,
                     "label": cell.label, "kind": cell.kind, "predicted": names[e.label],
                     "probability": e.probability, "superpixels": len(e.weights), "lime_r2": e.r2,
                     "overlay": str(png.relative_to(overlays))})  # fmt: skip
    overlays.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=["image_id", "split", "patient_id", "label", "kind", "predicted", "probability",
                                "superpixels", "lime_r2", "overlay"]).to_csv(out["cells"], index=False)

    t = [index[i] for i in tested["image_id"]]
    table = sufficiency(model, x[t], tested["label_index"].to_numpy(), [lime[i] for i in tested["image_id"]],
                        settings["sufficiency"]["n"], class_names=class_names, seed=seed, fill=settings["fill"],
                        batch_size=settings["batch_size"])
    table.to_csv(out["sufficiency"], index=False)
    plots.sufficiency_curves(table, out["plot"])
    summary = {
        "combo": combo, "cells_explained": len(ids), "gallery": len(gallery), "sufficiency_cells": len(tested),
        "mean_superpixels": float(np.mean([len(e.weights) for e in lime.values()])) if ids else None,
        "lime_seconds_per_image": lime_seconds / max(len(ids), 1),
        "gradcam_seconds_per_image": gradcam_seconds / max(len(g), 1),
        "fill": settings["fill"], "seed": seed,
    }
    Path(out["summary"]).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def overlay_path(overlays: Path, label, kind: str, image_id: str) -> Path:
    """overlays/<class>/<kind>/<image id>.png; UnsafeName when a part would lead elsewhere (ingest
    quarantines such labels, so one arriving here is a bug: refuse rather than write outside)."""
    parts = [check_name(str(label), "class label"), check_name(kind, "cell kind"),
             check_name(f"{image_id}.png", "image id")]  # fmt: skip
    return under(Path(overlays).joinpath(*parts), overlays)


def sample_cells(predictions: pd.DataFrame, settings: dict, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The gallery (cells per class and kind) and the sufficiency sample (cells per class, whatever
    the prediction, so its accuracies are not set by the sampling) from params.yaml's `explain`."""
    if not predictions["split"].isin(settings["splits"]).any():
        raise ValueError(f"explain.splits {settings['splits']}: the predictions have no cell in these splits; "
                         f"use some of {sorted(set(predictions['split']))}")
    gallery = choose_cells(predictions, splits=settings["splits"], per_group=settings["cells"], seed=seed)
    tested = choose_cells(predictions, splits=settings["splits"], per_group=settings["sufficiency"]["cells"],
                          seed=seed, by_kind=False)
    return gallery, tested
