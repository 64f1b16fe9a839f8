"""hemaflow's training against a plain in-memory Keras loop: same model, images, threads, one run.

Arms, each epoch loop in its own child process (TensorFlow fixes its thread pools at the first op)
so every arm starts alike, run interleaved (A B C A B C ...) so that drifting load on a shared
machine hits every arm alike:

    plain      the loop a user writes in an afternoon: the shards decoded into NumPy float32
               arrays up front (not timed), model.fit(x, y, batch_size, validation_data=(xv, yv),
               shuffle=True), Adam, the same loss and metrics (accuracy, AUC) as hemaflow
    hemaflow   hemaflow.train.fit.train_combo on the TFRecord shards (streamed, PNG decode in
               tf.data, seeded per-epoch order, op determinism, resume checkpoint every epoch)
    hemaflow+OPTION...   the same with train.speed options: xla (jit_compile), cache=val,
               cache=all, spe=N (steps_per_execution); joined with "+", e.g. hemaflow+xla+cache=all;
               and options that are not (yet) hemaflow settings: bs=N (batch N, learning rate
               scaled by N / --batch), bf16 (Keras mixed_bfloat16 policy), noonednn
               (TF_ENABLE_ONEDNN_OPTS=0)

Both train and validate every epoch. The figure is training images per second of wall time
over the epochs after the first (which traces the graphs): n_train x epochs / seconds, so the
validation pass and the per-epoch checkpoint count against both. Per configuration it prints
each arm's median over rounds, the ratio to `plain` (median of the per-round ratios, each taken
against the plain child of the same round) and the load average when each child started.

    PYTHONPATH=src:benchmarks .venv/bin/python benchmarks/train_speed.py \\
        [--configs model_1:48 matek_cnn:96] [--images 1600] [--val 320] [--epochs 3] [--rounds 2] \\
        [--threads 1] [--arms plain hemaflow hemaflow+xla ...]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from train_input import write_shards  # noqa: E402

BATCH = 64
LR = 1e-3


def speed_options(arm: str) -> dict:
    """train.speed of a hemaflow arm name (hemaflow+xla+cache=all+spe=8)."""
    options = {}
    for part in arm.split("+")[1:]:
        if part.startswith("cache="):
            options["cache"] = part.split("=", 1)[1]
        elif part in ("bf16", "noonednn") or part.startswith("bs="):
            pass  # not train.speed options: handled by child and run_child
        else:
            raise ValueError(f"unknown option {part!r} in arm {arm!r}")
    return options


class EpochTimer:
    """Wall seconds of each epoch (train + validation + the callbacks before this one)."""

    def __new__(cls):
        import keras

        class _Timer(keras.callbacks.Callback):
            def __init__(self):
                super().__init__()
                self.seconds = []

            def on_epoch_begin(self, epoch, logs=None):
                self._t = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                self.seconds.append(time.perf_counter() - self._t)

        return _Timer()


def child(arm: str, model_name: str, size: int, root: Path, threads: int, epochs: int, batch: int) -> None:
    """In a fresh process: one arm's epochs; prints {"seconds": [...], "total": s} as JSON."""
    from hemaflow.train.device import use_threads

    use_threads(threads)
    import keras

    if "+bf16" in arm:
        keras.mixed_precision.set_global_policy("mixed_bfloat16")
    train = sorted((root / "train").glob("*.tfrecord"))
    val = sorted((root / "val").glob("*.tfrecord"))
    n_train, n_val = json.loads((root / "counts.json").read_text()).values()
    timer = EpochTimer()
    t0 = time.perf_counter()
    if arm.startswith("plain"):
        import numpy as np

        from hemaflow.augment.records import iter_records
        from hemaflow.train.models import build_model

        def arrays(records):
            decoded = list(iter_records(records, channels=4))
            x = np.stack([img for img, _, _ in decoded]).astype(np.float32) / 255.0
            return x, np.array([[label] for _, label, _ in decoded], np.float32)

        (x, y), (xv, yv) = arrays(train), arrays(val)
        t0 = time.perf_counter()  # the arrays are given: the plain loop's premise
        keras.utils.set_random_seed(1)
        model = build_model(model_name, (size, size, 4), 2, 0.25)
        model.compile(optimizer=keras.optimizers.Adam(LR), loss="binary_crossentropy",
                      metrics=["accuracy", keras.metrics.AUC(name="auc")])  # fmt: skip
        model.fit(x, y, batch_size=batch, epochs=epochs, validation_data=(xv, yv), shuffle=True, verbose=0,
                  callbacks=[timer])  # fmt: skip
    else:
        from hemaflow.config import load_schema, with_defaults
        from hemaflow.train.fit import train_combo
        from hemaflow.train.settings import TrainData, TrainSettings

        schema = load_schema(Path(__file__).resolve().parents[1] / "workflow/schemas/params.schema.yaml")
        defaults = with_defaults({}, schema)["train"]
        settings = TrainSettings.from_config({**defaults, "max_epochs": epochs, "patience": epochs + 1,
                                              "speed": {**defaults["speed"], **speed_options(arm)}})  # fmt: skip
        data = TrainData(train_records=train, val_records=val, channels=4, size=size, n_classes=2,
                         class_counts={0: n_train - n_train // 2, 1: n_train // 2}, n_val=n_val)  # fmt: skip
        # bs=N: batch N with the learning rate scaled linearly (N / --batch x the rate)
        scaled = [int(p[3:]) for p in arm.split("+") if p.startswith("bs=")]
        bs = scaled[0] if scaled else batch
        combo = {"model": model_name, "optimizer": "adam", "lr": LR * bs / batch, "lr_policy": "constant",
                 "batch_size": bs, "dropout": 0.25}  # fmt: skip
        with tempfile.TemporaryDirectory() as out:
            train_combo(combo, data, settings, seed=1, out_dir=out, callbacks=[timer], threads=threads)
    print(json.dumps({"seconds": timer.seconds, "total": time.perf_counter() - t0}))


def run_child(args, arm: str, model_name: str, size: int, root: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", arm, "--model", model_name, "--size", str(size), "--root", str(root),
           "--threads", str(args.threads), "--epochs", str(args.epochs), "--batch", str(args.batch)]  # fmt: skip
    env = dict(os.environ)
    if "+noonednn" in arm:
        env["TF_ENABLE_ONEDNN_OPTS"] = "0"
    load = os.getloadavg()[0]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        raise RuntimeError(f"{arm} failed:\n{proc.stderr[-3000:]}\nrerun: {' '.join(cmd)}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return {**result, "load": load}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", default=["model_1:48", "matek_cnn:96"], help="model:pixels")
    ap.add_argument("--images", type=int, default=1600, help="training images (the default run has 1,760)")
    ap.add_argument("--val", type=int, default=320, help="validation images")
    ap.add_argument("--epochs", type=int, default=3, help="epochs per child; the first (tracing) is not timed")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=BATCH)
    ap.add_argument("--arms", nargs="+", default=["plain", "hemaflow", "hemaflow+xla", "hemaflow+cache=all",
                                                  "hemaflow+xla+cache=all"])  # fmt: skip
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--root", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.model, args.size, Path(args.root), args.threads, args.epochs, args.batch)
        return
    if args.epochs < 2:
        ap.error("--epochs must be at least 2 (the first one traces the graphs and is not timed)")
    if "plain" not in args.arms:
        args.arms.insert(0, "plain")
    for arm in args.arms:
        if not arm.startswith("plain"):
            speed_options(arm)  # fail early on a typo
    print(f"{os.cpu_count()} CPUs, {args.threads} TensorFlow thread(s), batch {args.batch}, {args.images} training + "
          f"{args.val} validation images, {args.epochs} epochs per child ({args.epochs - 1} timed), "
          f"{args.rounds} rounds, load average at start {os.getloadavg()[0]:.1f}", flush=True)  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for config in args.configs:
            model_name, size = config.split(":")
            size = int(size)
            root = Path(tmp) / config.replace(":", "_")
            write_shards(root / "train", args.images, size, seed=0, per_shard=max(1, args.images // 8))
            write_shards(root / "val", args.val, size, seed=1, per_shard=max(1, args.val // 2))
            (root / "counts.json").write_text(json.dumps({"train": args.images, "val": args.val}))
            rates = {arm: [] for arm in args.arms}
            loads = {arm: [] for arm in args.arms}
            for r in range(args.rounds):
                # A B C, then C B A: a load that rises or falls steadily over the run hits every arm alike
                for arm in args.arms if r % 2 == 0 else args.arms[::-1]:
                    res = run_child(args, arm, model_name, size, root)
                    timed = res["seconds"][1:]
                    rates[arm].append(args.images * len(timed) / sum(timed))
                    loads[arm].append(res["load"])
                    print(f"  {config} round {r + 1} {arm:24s} {rates[arm][-1]:7.0f} images/s  (first epoch "
                          f"{res['seconds'][0]:.1f} s, child total {res['total']:.0f} s, load {res['load']:.1f})",
                          flush=True)  # fmt: skip
            print(f"{model_name} {size}x{size}x4:")
            print(f"  {'arm':24s} {'images/s':>9} {'/ plain':>8}  per round (images/s, ratio, load)")
            for arm in args.arms:
                ratios = [a / p for a, p in zip(rates[arm], rates["plain"])]
                rounds = ", ".join(f"{a:.0f} {q:.2f}x @{ld:.1f}" for a, q, ld in zip(rates[arm], ratios, loads[arm]))
                print(f"  {arm:24s} {statistics.median(rates[arm]):9.0f} {statistics.median(ratios):7.2f}x  {rounds}")
            sys.stdout.flush()
    print(f"load average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
