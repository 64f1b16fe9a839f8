"""Train one hyperparameter combination: seeded, resumable, outputs written atomically.

Outputs in out_dir: history.csv (or history_path), curves.png, train.json and, last, model.keras, so a
model file only exists once everything else is in place. While training, out_dir/_resume
holds Keras' BackupAndRestore checkpoint, the partial history and the best weights so far;
rerunning an interrupted job continues from its last finished epoch.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf
from sklearn.utils.class_weight import compute_class_weight

from hemaflow import fusion
from hemaflow.schedules import triangular

HISTORY_COLUMNS = ["epoch", "loss", "val_loss", "accuracy", "val_accuracy", "auc", "val_auc", "lr"]


def train_combo(
    combo: dict,
    *,
    train_records: Sequence[str | os.PathLike],
    val_records: Sequence[str | os.PathLike],
    channels: int,
    size: int,
    n_classes: int,
    max_epochs: int,
    patience: int,
    cyclic: dict,
    class_counts: dict[int, int],
    n_val: int,
    class_weight: str = "none",
    seed: int,
    out_dir: str | os.PathLike,
    history_path: str | os.PathLike | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    cbc: fusion.CBCInputs | None = None,
) -> dict:
    """Fit combo {model, optimizer, lr, lr_policy, batch_size, dropout}; return what train.json holds.

    Epochs are numbered from 1 in history.csv and best_epoch, as in Keras' log; the history
    goes to `history_path` (default out_dir/history.csv).
    wall_seconds covers this call only (the last leg of a resumed job).
    `class_counts` (records per class index in train_records) and `n_val` (records in
    val_records) come from the shard manifests: counting records would read every one.
    `callbacks` are appended after the pipeline's own (tests use them to interrupt a run).
    With `cbc` (combo inputs "image+cbc") the model is the fused two-input one (hemaflow.fusion).
    """
    start = time.monotonic()
    out = Path(out_dir)
    resume = out / "_resume"
    out.mkdir(parents=True, exist_ok=True)
    # Until this run finishes, nothing in out_dir may look like a finished model.
    (out / "model.keras").unlink(missing_ok=True)
    if not (resume / "backup").exists():
        shutil.rmtree(resume, ignore_errors=True)  # no checkpoint to resume from: start clean
    resume.mkdir(exist_ok=True)

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
    weights = _class_weights(class_weight, class_counts)
    n_train = int(sum(class_counts.values()))
    batches = dict(channels=channels, n_classes=n_classes, batch_size=combo["batch_size"], seed=seed, size=size)
    bs = combo["batch_size"]
    train_ds = _for_fit(fusion.dataset(train_records, cbc, shuffle=True, **batches), n_train, bs, n_classes)
    val_ds = _for_fit(fusion.dataset(val_records, cbc, shuffle=False, **batches), n_val, bs, n_classes)

    model = fusion.build(combo["model"], (size, size, channels), n_classes, combo["dropout"], cbc)
    model.compile(
        optimizer=_optimizer(combo),
        loss="binary_crossentropy" if n_classes == 2 else "categorical_crossentropy",
        # Micro-averaged one-vs-rest AUC for several classes: built in, so model.keras loads anywhere.
        metrics=["accuracy", keras.metrics.AUC(name="auc")],
    )
    partial = resume / "history.csv"
    model.fit(
        train_ds,
        validation_data=val_ds,
        epochs=max_epochs,
        shuffle=False,  # make_dataset shuffles; Keras cannot shuffle a tf.data.Dataset
        class_weight=weights,
        verbose=2,
        callbacks=[
            keras.callbacks.LearningRateScheduler(_schedule(combo, cyclic)),
            keras.callbacks.CSVLogger(partial, append=True),
            ResumableEarlyStopping(partial, resume / "best.weights.npz", patience=patience),
            # Last of ours: a backup means every callback above has recorded that epoch.
            keras.callbacks.BackupAndRestore(resume / "backup"),
            *callbacks,
        ],
    )

    history = _final_history(read_history(partial))
    best_epoch = int(history.loc[history["val_loss"].idxmin(), "epoch"])
    info = {
        **combo,
        "epochs_run": len(history),
        "best_epoch": best_epoch,
        "wall_seconds": round(time.monotonic() - start, 1),
        "n_train": n_train,
        "n_val": n_val,
        **({"cbc": cbc.stats.to_dict()} if cbc is not None else {}),
    }
    _write_outputs(out, Path(history_path or out / "history.csv"), model, history, info)
    shutil.rmtree(resume, ignore_errors=True)
    return info


class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
    """EarlyStopping on val_loss with best weights restored, whose state survives a resume.

    Keras resets the best value, the patience count and the best weights at every fit();
    on a resumed fit they are replayed from the partial history and the weights saved at
    each improvement.
    """

    def __init__(self, history_csv: Path, best_weights_file: Path, *, patience: int):
        super().__init__(monitor="val_loss", patience=patience, restore_best_weights=True)
        self.history_csv = Path(history_csv)
        self.best_weights_file = Path(best_weights_file)

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        self._first_epoch = True

    def on_epoch_begin(self, epoch, logs=None):
        if not self._first_epoch:
            return
        self._first_epoch = False
        if epoch == 0:
            return
        done = read_history(self.history_csv)
        for row in done[done["epoch"] < epoch].itertuples():
            super().on_epoch_end(row.epoch, {self.monitor: getattr(row, self.monitor)})
        if self.best_weights_file.exists():
            with np.load(self.best_weights_file) as saved:
                self.best_weights = [saved[f"arr_{i}"] for i in range(len(saved.files))]

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        if self.best_epoch == epoch and self.best_weights is not None:
            tmp = self.best_weights_file.with_name("best.partial.npz")
            np.savez(tmp, *self.best_weights)
            tmp.replace(self.best_weights_file)


def read_history(path: Path) -> pd.DataFrame:
    """Keras' CSV log, one row per epoch (0-based); a redone epoch keeps its last row."""
    if not Path(path).exists():
        return pd.DataFrame({"epoch": [], "val_loss": []})
    log = pd.read_csv(path)
    return log.drop_duplicates("epoch", keep="last").sort_values("epoch").reset_index(drop=True)


def _final_history(log: pd.DataFrame) -> pd.DataFrame:
    log = log.rename(columns={"learning_rate": "lr"}).assign(epoch=log["epoch"] + 1)
    return log[HISTORY_COLUMNS]


def _for_fit(ds: tf.data.Dataset, n: int, batch_size: int, n_classes: int) -> tf.data.Dataset:
    """Known length (Keras shows progress, no out-of-data warning); one-hot labels for AUC."""
    if n_classes > 2:
        ds = ds.map(lambda x, y: (x, tf.one_hot(y, n_classes)))
    return ds.apply(tf.data.experimental.assert_cardinality(math.ceil(n / batch_size)))


def _class_weights(kind: str, counts: dict) -> dict[int, float] | None:
    if kind == "none":
        return None
    if kind != "balanced":
        raise ValueError(f"train.class_weight must be 'none' or 'balanced', got {kind!r}")
    classes = np.array(sorted(int(c) for c in counts))
    labels = np.repeat(classes, [int(counts[c]) for c in classes])
    return dict(zip(classes.tolist(), compute_class_weight("balanced", classes=classes, y=labels).tolist()))


def _optimizer(combo: dict) -> keras.optimizers.Optimizer:
    if combo["optimizer"] == "adam":
        return keras.optimizers.Adam(combo["lr"])
    if combo["optimizer"] == "sgd":
        return keras.optimizers.SGD(combo["lr"], momentum=0.9)
    raise ValueError(f"train.grid.optimizer must be 'adam' or 'sgd', got {combo['optimizer']!r}")


def _schedule(combo: dict, cyclic: dict):
    if combo["lr_policy"] == "triangular":
        return triangular(combo["lr"], **cyclic)
    if combo["lr_policy"] == "constant":
        return lambda epoch: combo["lr"]
    raise ValueError(f"train.grid.lr_policy must be 'constant' or 'triangular', got {combo['lr_policy']!r}")


def _atomic(path: Path, write) -> None:
    """write(tmp) then rename, keeping the suffix so writers that infer formats still work."""
    tmp = path.with_name(f".{path.stem}.partial{path.suffix}")
    write(tmp)
    tmp.replace(path)


def _write_outputs(out: Path, history_path: Path, model: keras.Model, history: pd.DataFrame, info: dict) -> None:
    from hemaflow.plots import training_curves  # matplotlib only once training is done

    history_path.parent.mkdir(parents=True, exist_ok=True)
    _atomic(history_path, lambda p: history.to_csv(p, index=False))
    _atomic(out / "curves.png", lambda p: training_curves(history, info["best_epoch"], p))
    _atomic(out / "train.json", lambda p: p.write_text(json.dumps(info, indent=2) + "\n"))
    _atomic(out / "model.keras", model.save)  # last: its presence means the job finished
