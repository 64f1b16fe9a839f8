"""Seconds per training epoch of a keras.applications backbone vs seed 000's model_1, on the same
seeded random tensors (images in [0, 1] with a 0/1 alpha channel, as the pipeline feeds them).

    python benchmarks/backbone_epoch.py [--backbone mobilenetv3_small] [--images 256] [--size 48]
                                        [--batch-size 64] [--epochs 3]

Each model trains from scratch (adam, lr 1e-3) for `--epochs` epochs; epoch 1 includes graph
tracing and is shown apart, the steady figure is the median of the later epochs. Accuracy on
random labels means nothing, so only time is measured (the accuracy comparison on a real split
is for the class-per-folder replica, benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from hemaflow.train.models import build_model  # noqa: E402


class EpochTimes(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)


def data(n: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.random((n, size, size, 4), dtype=np.float32)
    x[..., 3] = x[..., 3] > 0.3
    x[..., :3] *= x[..., 3:]
    return x, rng.integers(0, 2, (n, 1)).astype(np.float32)


def epoch_seconds(name: str, x, y, batch_size: int, epochs: int) -> tuple[list[float], int]:
    keras.utils.set_random_seed(0)
    model = build_model(name, x.shape[1:], 2)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy", metrics=["accuracy"])
    timer = EpochTimes()
    model.fit(x, y, batch_size=batch_size, epochs=epochs, verbose=0, callbacks=[timer])
    return timer.seconds, model.count_params()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="mobilenetv3_small")
    ap.add_argument("--baseline", default="model_1")
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--size", type=int, default=48)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=3)
    args = ap.parse_args()
    x, y = data(args.images, args.size)
    print(f"{args.images} images {args.size}x{args.size}x4, batch {args.batch_size}, {args.epochs} epochs")
    print(f"{'model':<20} {'parameters':>11} {'epoch 1 (tracing) s':>20} {'later epochs s':>15}")
    for name in (args.baseline, args.backbone):
        seconds, params = epoch_seconds(name, x, y, args.batch_size, args.epochs)
        later = f"{np.median(seconds[1:]):.2f}" if len(seconds) > 1 else "-"
        print(f"{name:<20} {params:>11,} {seconds[0]:>20.2f} {later:>15}")


if __name__ == "__main__":
    main()
