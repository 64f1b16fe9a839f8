"""Does a killed and resumed training job reproduce an uninterrupted one?

    python benchmarks/resume_reproduces.py [--model matek_cnn] [--epochs 5] [--kill-after 2] [--images 96]

Writes tiny two-class shards (a bright disc whose radius depends on the class, on noise),
trains one combination uninterrupted, then the same combination killed at the end of epoch
`--kill-after` and rerun in a fresh process (a new process is what a rerun Snakemake job is),
and prints, per epoch, the largest absolute difference of every history column and whether
the final weights are identical. The default model has dropout, so the dropout RNG counts.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from hemaflow.augment.records import encode_example, write_records  # noqa: E402
from hemaflow.train.fit import TIME_COLUMNS  # noqa: E402

SIZE = 32
CHILD = """
import json, sys, keras
from hemaflow.config import load_schema, with_defaults
from hemaflow.train.fit import train_combo
from hemaflow.train.settings import TrainData, TrainSettings

args = json.loads(sys.argv[1])
kill_after = args.pop("kill_after")
defaults = with_defaults({}, load_schema(args.pop("schema")))["train"]  # the schema's, then this run's
data, settings = TrainData(**args.pop("data")), TrainSettings.from_config({**defaults, **args.pop("settings")})

class Kill(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == kill_after:
            import os
            os._exit(9)  # like SIGKILL: no cleanup, no exception handlers

train_combo(args.pop("combo"), data, settings, **args, callbacks=[Kill()] if kill_after else [])
"""


def write_shards(root: Path, n: int, n_shards: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    paths = []
    for s in range(n_shards):
        examples = []
        for i in range(s, n, n_shards):
            label = i % 2
            img = rng.integers(0, 60, (SIZE, SIZE, 3), dtype=np.uint8)
            cv2.circle(img, (SIZE // 2, SIZE // 2), 5 + 3 * label, (200, 120, 200), -1)
            examples.append(encode_example(cv2.imencode(".png", img)[1].tobytes(), label, f"img{i:04d}"))
        paths.append(str(root / f"{s:03d}.tfrecord"))
        write_records(paths[-1], examples)
    return paths


def run(args: dict, kill_after: int) -> int:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps({**args, "kill_after": kill_after})], env=env,
                          capture_output=True, text=True)  # fmt: skip
    return proc.returncode


def weights(out: Path) -> list[np.ndarray]:
    import keras

    return keras.models.load_model(out / "model.keras", compile=False).get_weights()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="matek_cnn")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--kill-after", type=int, default=2)
    ap.add_argument("--images", type=int, default=96)
    ap.add_argument("--seed", type=int, default=11)
    opts = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        common = dict(
            combo={"model": opts.model, "optimizer": "adam", "lr": 1e-3, "lr_policy": "constant", "batch_size": 16,
                   "dropout": 0.25},
            # write_shards labels image i with i % 2
            data=dict(train_records=write_shards(tmp / "train", opts.images, 2, seed=0),
                      val_records=write_shards(tmp / "val", opts.images // 3, 1, seed=1), channels=3, size=SIZE,
                      n_classes=2, class_counts={0: opts.images - opts.images // 2, 1: opts.images // 2},
                      n_val=opts.images // 3),
            settings=dict(max_epochs=opts.epochs, patience=opts.epochs, cyclic=None, class_weight="none",
                          weights="none", fine_tune={"frozen_epochs": 0, "lr_factor": 0.1}, accelerator="cpu",
                          mixed_precision=False),
            seed=opts.seed,
            schema=str(Path(__file__).resolve().parents[1] / "workflow/schemas/params.schema.yaml"),
        )  # fmt: skip
        assert run({**common, "out_dir": str(tmp / "whole")}, 0) == 0
        assert run({**common, "out_dir": str(tmp / "resumed")}, opts.kill_after) == 9
        assert run({**common, "out_dir": str(tmp / "resumed")}, 0) == 0
        a = pd.read_csv(tmp / "whole" / "history.csv").set_index("epoch")
        b = pd.read_csv(tmp / "resumed" / "history.csv").set_index("epoch")
        # Every column but the epochs' wall times (TIME_COLUMNS), which differ between any two runs.
        columns = [c for c in a.columns if c != "lr" and c not in TIME_COLUMNS]
        print(f"{opts.model}, {opts.images} training images, killed after epoch {opts.kill_after} of {opts.epochs}")
        print("max |resumed - uninterrupted| per epoch:")
        print((a[columns] - b[columns]).abs().to_string(float_format=lambda v: f"{v:.3g}"))
        same = all(np.array_equal(x, y) for x, y in zip(weights(tmp / "whole"), weights(tmp / "resumed")))
        print(f"final weights identical: {same}")
        info = json.loads((tmp / "resumed" / "train.json").read_text())
        print("resumed train.json:", {k: info.get(k) for k in ("epochs_run", "wall_seconds", "legs", "status")})


if __name__ == "__main__":
    main()
