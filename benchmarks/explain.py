"""Seconds per explained image: LIME (quickshift + perturbations through the model in batches,
and the same one image at a time) and Grad-CAM, on synthetic nuclei at the pipeline's size.

    python benchmarks/explain.py [--model model_1] [--size 48] [--images 8] [--samples 300]

The model is untrained (explanation cost does not depend on the weights); the first call of
each kind runs once before timing, so graph tracing is not counted.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from hemaflow import models_io  # noqa: E402
from hemaflow.explain import gradcam as G  # noqa: E402
from hemaflow.explain import lime as L  # noqa: E402
from hemaflow.train.models import build_model  # noqa: E402

from train_input import nucleus  # noqa: E402  (benchmarks/ is the script's directory)


def per_image(fn, images) -> str:
    """Wall and CPU seconds per image (CPU time is less sensitive to other jobs on the machine)."""
    fn(images[0])  # warm-up: tracing, first allocation
    wall, cpu = time.perf_counter(), time.process_time()
    for img in images:
        fn(img)
    return f"{(time.perf_counter() - wall) / len(images):7.3f} s/image ({(time.process_time() - cpu) / len(images):.3f} CPU s)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="model_1")
    ap.add_argument("--size", type=int, default=48)
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--samples", type=int, default=300, help="LIME perturbations per image (explain.num_samples)")
    ap.add_argument("--batch-size", type=int, default=models_io.BATCH_SIZE)
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    images = np.stack([nucleus(rng, args.size, i % 2) for i in range(args.images)]).astype(np.float32) / 255.0
    model = build_model(args.model, images.shape[1:], 2)
    segs = [L.superpixels(im, seed=0).max() + 1 for im in images]
    print(f"{args.model}, {args.size} px, {args.images} images, {args.samples} perturbations, "
          f"{np.mean(segs):.1f} superpixels per image on average")

    def lime(batch_size):
        return lambda im: L.lime_explain(model, im, seed=0, num_samples=args.samples, batch_size=batch_size)

    seg = per_image(lambda im: L.superpixels(im, seed=0), images)
    batched = per_image(lime(args.batch_size), images)
    single = per_image(lime(1), images[: max(2, args.images // 4)])
    one = per_image(lambda im: G.gradcam(model, im[None], np.array([1])), images)
    batch_cam = per_image(lambda _: G.gradcam(model, images, np.ones(len(images), int)), images[:1])
    print(f"quickshift segmentation:          {seg}")
    print(f"LIME, batches of {args.batch_size:<4d}            {batched}")
    print(f"LIME, one perturbation per call:  {single}")
    print(f"Grad-CAM, one image per call:     {one}")
    print(f"Grad-CAM, {args.images} images in one call: {batch_cam} per call")


if __name__ == "__main__":
    main()
