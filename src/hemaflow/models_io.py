"""What evaluate, explain, predict and the report share about a trained model: loading it,
whether it takes blood counts, its class probabilities, "which model is best", strict JSON."""

from __future__ import annotations

import math
import os

import numpy as np
import pandas as pd

# Images per model call: large enough to keep the CPU busy, small enough for memory.
BATCH_SIZE = 256


def load_model(path: str | os.PathLike):
    """keras.models.load_model for image-only and fused models (importing hemaflow.train.fusion
    registers their CBCStandardise layer); TensorFlow is imported only here."""
    import keras

    from hemaflow.train import fusion  # noqa: F401  (registers CBCStandardise)

    return keras.models.load_model(path)


def takes_cbc(model) -> bool:
    """Whether a loaded model is a fused image+cbc one (two inputs)."""
    return len(model.inputs) == 2


def class_scores(model, images: np.ndarray, *, batch_size: int = BATCH_SIZE) -> np.ndarray:
    """(N, n_classes) probabilities of float32 images in [0, 1]; a single sigmoid output becomes [1 - p, p]."""
    images = np.asarray(images, dtype=np.float32)
    width = model.output_shape[-1]
    parts = [np.asarray(model.predict_on_batch(images[i : i + batch_size]), dtype=np.float64)
             for i in range(0, len(images), batch_size)]
    raw = np.concatenate(parts) if parts else np.zeros((0, width))
    return np.column_stack([1.0 - raw[:, 0], raw[:, 0]]) if width == 1 else raw


def json_safe(obj):
    """NaN and inf become null (strict JSON, which DVC and browsers parse); numpy scalars plain."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if obj is pd.NA:
        return None
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def best_of(metrics: dict, candidates, source: str = "metrics.json") -> str:
    """The highest-ranked of `candidates` in a headline (metrics.json): the one answer to "which
    model is best" for explain, predict and the report. Its `combos` map is keyed alphabetically
    (DVC sorts it), so only `ranking` holds the order."""
    if "ranking" not in metrics:
        raise ValueError(f"{source} has no ranking (written by an older hemaflow): rerun the leaderboard "
                         "(snakemake --cores all evaluation)")  # fmt: skip
    allowed = set(candidates)
    for combo in metrics["ranking"]:
        if combo in allowed:
            return combo
    raise ValueError(f"none of the ranked combinations in {source} ({', '.join(metrics['ranking'])}) is one of "
                     f"{sorted(allowed) or 'none'}: an image-only CNN is needed (the SVM baseline and fused models take no lone image)")
