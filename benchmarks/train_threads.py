"""Training time per epoch at 1 and 2 TensorFlow threads, and at two data sizes, for one seed-000 model.

Each (threads, images) cell runs in its own child process (TensorFlow fixes its thread pools at
the first op): `use_threads(n)`, the model built as train_combo builds it, fed by make_dataset
from TFRecord shards, one warm-up epoch, then the mean of the timed epochs; peak RSS per child.
Printed: seconds per epoch, images/s, the speed-up of 2 threads over 1 and the time and memory
ratios between the two data sizes (goal: time linear in the data size, memory flat).

    python benchmarks/train_threads.py [--model model_1] [--size 48] [--sizes 1600 3200] [--epochs 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from train_input import BATCH, write_shards  # noqa: E402  (benchmarks/ is on sys.path when run as a script)


def child(model_name: str, size: int, root: str, threads: int, epochs: int) -> None:
    """In a fresh process: seconds of each timed epoch, as JSON on stdout."""
    from hemaflow.train.device import use_threads

    use_threads(threads)
    import keras

    from hemaflow.train.input import make_dataset
    from hemaflow.train.models import build_model

    records = sorted(Path(root).glob("*.tfrecord"))
    ds = make_dataset(records, channels=4, n_classes=2, batch_size=BATCH, shuffle=True, seed=0, size=size)
    keras.utils.set_random_seed(0)
    model = build_model(model_name, (size, size, 4), 2)
    model.compile(optimizer="adam", loss="binary_crossentropy", metrics=["accuracy"])
    model.fit(ds, epochs=1, verbose=0, shuffle=False)  # traces the graph
    seconds = []
    for _ in range(epochs):
        t = time.perf_counter()
        model.fit(ds, epochs=1, verbose=0, shuffle=False)
        seconds.append(time.perf_counter() - t)
    print(json.dumps(seconds))


def run_child(args, root: Path, threads: int) -> tuple[float, float]:
    cmd = [sys.executable, __file__, "--child", "--model", args.model, "--size", str(args.size), "--root", str(root),
           "--threads", str(threads), "--epochs", str(args.epochs)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage
    if status:
        raise RuntimeError(f"child failed; rerun: {' '.join(cmd)}")
    seconds = json.loads(out)
    return sum(seconds) / len(seconds), usage.ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="model_1")
    ap.add_argument("--size", type=int, default=48)
    ap.add_argument("--sizes", type=int, nargs=2, default=[1600, 3200], help="training images (the default run has 1,760)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--epochs", type=int, default=2, help="timed epochs per cell, after one warm-up epoch")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--root", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.model, args.size, args.root, args.threads[0], args.epochs)
        return
    print(f"{args.model} {args.size}x{args.size}x4, batch {BATCH}, {args.epochs} timed epochs after a warm-up")
    print(f"{'threads':>7} {'images':>7} {'s/epoch':>8} {'images/s':>9} {'peak RSS MB':>12}")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            root = Path(tmp) / str(n)
            write_shards(root, n, args.size, seed=0, per_shard=250)
            for threads in args.threads:
                seconds, rss = results[threads, n] = run_child(args, root, threads)
                print(f"{threads:7d} {n:7d} {seconds:8.1f} {n / seconds:9.0f} {rss:12.0f}", flush=True)
    lo, hi = args.sizes
    for threads in args.threads:
        (t_lo, m_lo), (t_hi, m_hi) = results[threads, lo], results[threads, hi]
        print(f"{threads} thread(s): time {hi}/{lo} images = {t_hi / t_lo:.2f} (linear: {hi / lo:.2f}); "
              f"peak RSS ratio {m_hi / m_lo:.2f} (flat: 1.00)")  # fmt: skip
    one, *more = args.threads
    for threads in more:
        for n in args.sizes:
            print(f"speed-up {threads} threads / {one} at {n} images: {results[one, n][0] / results[threads, n][0]:.2f}")


if __name__ == "__main__":
    main()
