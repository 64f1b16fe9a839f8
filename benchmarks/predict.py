"""hemaflow predict: images/s in batches and single-image latency, end to end from image files.

A fresh (untrained) model of the default architecture at the default size in a scratch
project, fed synthetic 450x450 BMP nuclei (the replica's file format): decode (load_rgb),
the model's recorded preprocessing (render_all), the model. Reported: (a) images/s of
`predict_files` over all images at --batch-size, (b) the median wall time of one image
(batch of one), decode and preprocessing included, and (c) the share of (a) spent in the
model alone. Reports are left out (they time Grad-CAM and HTML, not prediction).

    python benchmarks/predict.py [--model model_1] [--size 48] [--images 256] [--batch-size 64]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2  # noqa: E402
import numpy as np  # noqa: E402


def nuclei(folder: Path, n: int, seed: int) -> list[Path]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    paths = []
    for i in range(n):
        img = np.zeros((450, 450, 3), np.uint8)
        axes = (int(rng.uniform(90, 160)), int(rng.uniform(70, 140)))
        cv2.ellipse(img, (225, 225), axes, float(rng.uniform(0, 180)), 0, 360, (120, 60, 160), -1)
        noise = rng.normal(0, 20, img.shape)
        img = np.where(img > 0, np.clip(img + noise, 1, 255), 0).astype(np.uint8)
        paths.append(folder / f"UID_{i % 8 + 1}_{i}_1_all.bmp")
        cv2.imwrite(str(paths[-1]), img)
    return paths


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="model_1")
    ap.add_argument("--size", type=int, default=48)
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--singles", type=int, default=30)
    args = ap.parse_args()

    import keras
    import tensorflow as tf

    from hemaflow.train import model_params
    from hemaflow.train.models import build_model
    from hemaflow.predict.model import open_model
    from hemaflow.predict.run import model_input, predict_files, probabilities
    from hemaflow.data.images import load_rgb

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model_dir = root / "results/models/bench"
        model_dir.mkdir(parents=True)
        keras.utils.set_random_seed(0)
        build_model(args.model, (args.size, args.size, 4), 2, 0.25).save(model_dir / "model.keras")
        preprocess = dict(background="alpha", size=args.size, crop_to_content=True, pad_square=True, filter="none")
        model_params.record(model_dir / "preprocess.json", preprocess=preprocess, channels=4,
                            classes=["hem", "all"], positive_class="all")
        files = nuclei(root / "cells", args.images, seed=1)
        model = open_model("bench", root)
        quiet = lambda _: None  # noqa: E731
        predict_files(model, files[: args.batch_size], batch_size=args.batch_size, progress=False, say=quiet)  # warm-up (graph tracing)

        start = time.perf_counter()
        predict_files(model, files, batch_size=args.batch_size, progress=False, say=quiet)
        batch_s = time.perf_counter() - start

        inputs = np.stack([model_input(load_rgb(f)[0], model.params) for f in files])
        start = time.perf_counter()
        for i in range(0, len(inputs), args.batch_size):
            probabilities(model.keras_model, inputs[i : i + args.batch_size])
        model_s = time.perf_counter() - start

        singles = []
        for f in files[: args.singles]:
            start = time.perf_counter()
            predict_files(model, [f], batch_size=1, progress=False, say=quiet)
            singles.append(time.perf_counter() - start)

    print(f"{args.model}, {args.size} px, {args.images} images of 450x450, batch {args.batch_size}, 1 thread")
    print(f"batch: {args.images / batch_s:.0f} images/s end to end ({batch_s:.2f} s); model alone {args.images / model_s:.0f} images/s "
          f"({100 * model_s / batch_s:.0f} % of the time)")
    print(f"single image: median {1000 * statistics.median(singles):.1f} ms, "
          f"max {1000 * max(singles):.1f} ms over {len(singles)} images (decode + preprocess + model)")


if __name__ == "__main__":
    main()
