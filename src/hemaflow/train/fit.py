"""Train one hyperparameter combination: seeded, resumable to the same result, outputs written atomically."""

# Outputs in out_dir: history.csv (or history_path), curves.png, train.json and, last, model.keras, so a
# model file only exists once everything else is in place. While training, out_dir/_resume/state.npz
# holds, as of the last finished epoch, all the rest of the run depends on: every model variable
# (weights and the dropout layers' random-seed state), the optimizer's variables, the early-stopping
# state, the history and each leg's (process's) epochs and wall time, with a fingerprint of the
# settings, input shards and code. A rerun with the same fingerprint continues from there and gives
# the history and weights of an uninterrupted run, because each epoch's data order is seeded by
# (seed, epoch) rather than by how many epochs this process has run; any other checkpoint is
# discarded with a log line.

from __future__ import annotations

import json
import logging
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

from hemaflow.train import fusion
from hemaflow.train.input import cached_epochs, decoded_records, make_dataset
from hemaflow.train.models import HEAD, freeze_batchnorm
from hemaflow.files import write_atomic
from hemaflow.train.settings import TrainData, TrainSettings
from hemaflow.train.checkpoint import Checkpoint, ResumableEarlyStopping, fingerprint, weights_id
from hemaflow.train.schedules import one_cycle, triangular, warmup_cosine

log = logging.getLogger(__name__)


# train_seconds / val_seconds: each epoch's wall time fitting and validating (EpochTimes). They differ
# between runs, so a comparison of two runs' histories leaves TIME_COLUMNS out.
TIME_COLUMNS = ["train_seconds", "val_seconds"]
HISTORY_COLUMNS = ["epoch", "loss", "val_loss", "accuracy", "val_accuracy", "auc", "val_auc", "lr", *TIME_COLUMNS]
# Validation probabilities that vary by less than this over all validation images (max - min, per
# output unit) mean the network outputs a constant: it has collapsed (dead units) and is marked
# diverged. Even untrained networks spread their predictions by more (see docs/architecture.md).
CONSTANT_SPREAD = 1e-3


def train_combo(
    combo: dict,
    data: TrainData,
    settings: TrainSettings,
    *,
    seed: int,
    out_dir: str | os.PathLike,
    history_path: str | os.PathLike | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    threads: int = 1,
    device: dict | None = None,
) -> dict:
    """Fit combo {model, optimizer, lr, lr_policy, batch_size, dropout} on `data` as `settings`
    say; return what train.json holds.

    Epochs are numbered from 1 in history.csv, best_epoch and legs, as in Keras' log; the history
    goes to `history_path` (default out_dir/history.csv). epochs_run and wall_seconds cover the
    whole training, `legs` each process that worked on it. status is `diverged` (with the reason
    in diverged_because) when a loss became NaN/inf or the validation predictions are constant.
    `callbacks` are appended after the pipeline's own (tests use them to interrupt a run).
    With `data.cbc` (combo inputs "image+cbc") the model is the fused two-input one (hemaflow.train.fusion).
    `threads` is the thread count TensorFlow was given (use_threads): recorded in train.json and
    in the checkpoint's fingerprint, since another count gives slightly different weights; so is
    `device` (what use_device chose: another device or precision gives other weights too).
    `settings.weights` (train.weights) initialise a backbone (hemaflow.train.models.build_model). With
    `settings.fine_tune` frozen_epochs > 0 the head first trains alone for that many epochs (warm_up_head),
    then the whole network trains as usual at lr x lr_factor. With pretrained `weights` every
    BatchNorm layer stays in inference mode throughout (models.freeze_batchnorm).
    """
    train_records, val_records, n_val, cbc = data.train_records, data.val_records, data.n_val, data.cbc
    channels, size, n_classes, class_counts = data.channels, data.size, data.n_classes, data.class_counts
    max_epochs, cyclic, class_weight = settings.max_epochs, settings.cyclic, settings.class_weight
    weights, fine_tune = settings.weights, settings.fine_tune
    if seed < 1:
        # TensorFlow takes a global seed of 0 with an op seed of 0 to mean "unseeded" and, to tell,
        # compares the per-epoch shuffle seed (a traced tensor here) as a Python bool: it fails.
        raise ValueError(f"seed must be at least 1 (params.yaml `seed`), got {seed}: TensorFlow cannot shuffle "
                         "with a global seed of 0")  # fmt: skip
    start = time.monotonic()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # Until this run finishes, nothing in out_dir may look like a finished model.
    (out / "model.keras").unlink(missing_ok=True)
    counts = {str(int(c)): int(n) for c, n in sorted((class_counts or {}).items())} or None
    frozen = int((fine_tune or {}).get("frozen_epochs", 0))
    if frozen and weights == "none":
        raise ValueError(
            f"train.fine_tune.frozen_epochs is {frozen} but train.weights is none: freezing a randomly "
            "initialised backbone trains nothing useful; set train.weights (imagenet or a file) or frozen_epochs: 0"
        )
    # What the resume checkpoint must match (the same keys as before typed settings, so that a
    # checkpoint written then still resumes).
    fingerprinted = dict(combo=combo, channels=channels, size=size, n_classes=n_classes, max_epochs=max_epochs,
                         patience=settings.patience, cyclic=cyclic, class_weight=class_weight, class_counts=counts,
                         seed=seed, cbc=cbc.stats.to_dict() if cbc is not None else None, weights=weights_id(weights),
                         fine_tune=dict(fine_tune) if frozen else None, threads=threads,
                         device={k: device[k] for k in ("device", "precision")} if device else None)  # fmt: skip
    recipe = _recipe(combo, settings)
    fingerprinted |= recipe  # the options below only where a combination uses them: other keys stay as they were
    cache = settings.speed["cache"]
    if cache != "none":  # only then, so that checkpoints of default runs stay valid
        fingerprinted["speed"] = dict(settings.speed)

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
    weights_of_classes = _class_weights(class_weight, class_counts)
    n_train = int(sum(class_counts.values()))
    model = fusion.build(combo["model"], (size, size, channels), n_classes, combo["dropout"], cbc, weights)
    loss = _loss(n_classes, settings.label_smoothing)
    stopper = ResumableEarlyStopping(patience=settings.patience)
    checkpoint = Checkpoint(
        out / "_resume" / "state.npz", fingerprint(fingerprinted, train_records, val_records, entry=__file__), stopper, leg_start=start
    )
    batches = dict(channels=channels, n_classes=n_classes, batch_size=combo["batch_size"], size=size)
    steps = math.ceil(n_train / combo["batch_size"])
    head_losses = None
    if frozen:
        # A checkpoint is from the second phase, so the first one is done.
        if not checkpoint.valid():
            head_ds = _for_fit(_epochs(train_records, seed, range(frozen), cbc, **batches), steps * frozen, n_classes)
            head_losses = warm_up_head(model, combo, head_ds, frozen, steps, loss=loss, class_weight=weights_of_classes)
        combo_fit = {**combo, "lr": combo["lr"] * float(fine_tune["lr_factor"])}
    else:
        combo_fit = combo
    if weights != "none":
        freeze_batchnorm(model)  # fine-tuning a pretrained backbone keeps its BatchNorm statistics
    model.compile(
        optimizer=_optimizer(combo_fit, settings.weight_decay, model),
        loss=loss,
        # Micro-averaged one-vs-rest AUC for several classes: built in, so model.keras loads anywhere.
        metrics=["accuracy", keras.metrics.AUC(name="auc")],
    )
    model.optimizer.build(model.trainable_variables)  # its variables exist now, so a checkpoint can fill them
    first = checkpoint.restore(model)

    epochs = range(first, max_epochs)
    cached = n_train if cache == "all" else None
    train_ds = _epochs(train_records, seed, epochs, cbc, cached=cached, **batches)
    train_ds = _for_fit(train_ds, steps * len(epochs), n_classes)
    val_ds = fusion.dataset(val_records, cbc, shuffle=False, seed=seed, cache=cache != "none", **batches)
    val_ds = _for_fit(val_ds, math.ceil(n_val / combo["batch_size"]), n_classes)
    start_weights = model.get_weights()
    model.fit(
        train_ds,
        validation_data=val_ds,
        initial_epoch=first,
        epochs=first if checkpoint.stopped else max_epochs,
        steps_per_epoch=steps,  # one iterator over all epochs: each epoch's order is its own (see _epochs)
        shuffle=False,  # _epochs shuffles; Keras cannot shuffle a tf.data.Dataset
        class_weight=weights_of_classes,
        verbose=2,
        callbacks=[
            keras.callbacks.LearningRateScheduler(_schedule(combo_fit, cyclic, settings)),
            EpochTimes(),  # before the checkpoint, which records the epoch's logs
            keras.callbacks.TerminateOnNaN(),
            stopper,
            checkpoint,  # last of ours: it saves what the callbacks above did in that epoch
            *callbacks,
        ],
    )
    if not all(np.isfinite(w).all() for w in model.get_weights()):
        # NaN before any finite epoch: keep the weights this leg started from, so evaluation still runs.
        log.warning("%s: the weights are not finite; keeping those this training leg started from", out)
        model.set_weights(start_weights)

    history = _final_history(pd.DataFrame(checkpoint.rows))
    spread = prediction_spread(model, val_ds)
    diverged = divergence(history, spread)
    if diverged:
        log.warning("%s: training diverged: %s", out, diverged)
    legs = checkpoint.legs(time.monotonic())
    info = {
        **combo,
        "status": "diverged" if diverged else "ok",
        "diverged_because": diverged,
        "epochs_run": len(history),
        "best_epoch": stopper.best_epoch + 1 if stopper.best is not None and math.isfinite(stopper.best) else None,
        "wall_seconds": round(sum(leg["wall_seconds"] for leg in legs), 1),
        **{c: round(float(history[c].sum()), 1) for c in TIME_COLUMNS},
        "epoch_seconds": history[["epoch", *TIME_COLUMNS]].to_dict("records"),
        "legs": legs,
        "val_prediction_spread": spread,
        "n_train": n_train,
        "n_val": n_val,
        "threads": threads,
        **(device or {}),
        "weights": weights,
        **recipe,
        **({"frozen_epochs": frozen, "lr_factor": float(fine_tune["lr_factor"])} if frozen else {}),
        **({"head_losses": head_losses} if head_losses is not None else {}),
        **({"cbc": cbc.stats.to_dict()} if cbc is not None else {}),
        **({"speed": dict(settings.speed)} if cache != "none" else {}),
    }
    _write_outputs(out, Path(history_path or out / "history.csv"), model, history, info)
    shutil.rmtree(out / "_resume", ignore_errors=True)
    return info


def warm_up_head(
    model: keras.Model, combo: dict, ds: tf.data.Dataset, epochs: int, steps: int, *, loss: str, class_weight=None
) -> list[float]:
    """Phase 1 of two-phase fine-tuning: train only the head (HEAD) for `epochs` epochs at the
    combo's learning rate, every other layer (the pretrained backbone) frozen; afterwards every
    layer is as trainable as before, for phase 2 (compile again). Returns the epochs' losses."""
    trainable = {layer.name: layer.trainable for layer in model.layers}
    for layer in model.layers:
        layer.trainable = layer.name == HEAD
    model.compile(optimizer=_optimizer(combo), loss=loss)
    fitted = model.fit(ds, epochs=epochs, steps_per_epoch=steps, shuffle=False, class_weight=class_weight, verbose=2,
                       callbacks=[keras.callbacks.TerminateOnNaN()])  # fmt: skip
    for layer in model.layers:
        layer.trainable = trainable[layer.name]
    return [float(x) for x in fitted.history["loss"]]


class EpochProgress(keras.callbacks.Callback):
    """One concise line per epoch on `stream` (a job's console, not its log): the combination,
    epoch of max, loss, the validation metric, and the time left at this epoch's pace."""

    def __init__(self, name: str, max_epochs: int, stream, metric: str = "val_auc"):
        super().__init__()
        self.name, self.max_epochs, self.stream, self.metric = name, max_epochs, stream, metric

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        took = time.monotonic() - self._start
        left = round(took * (self.max_epochs - epoch - 1))
        values = " ".join(f"{k} {float(logs[k]):.4f}" for k in ("loss", "val_loss", self.metric) if k in logs)
        eta = f"{left // 3600}:{left // 60 % 60:02d}:{left % 60:02d}"
        print(f"train {self.name}: epoch {epoch + 1}/{self.max_epochs} {values} ({took:.0f} s, ETA {eta})",
              file=self.stream, flush=True)  # fmt: skip


class EpochTimes(keras.callbacks.Callback):
    """Each epoch's wall time fitting (train_seconds: its batches, from the epoch's start to its
    validation) and validating (val_seconds), added to the epoch's logs for the callbacks after it
    (the checkpoint keeps them in the history)."""

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = self._test = time.perf_counter()
        self._train = self._val = None

    def on_test_begin(self, logs=None):
        self._test = time.perf_counter()
        self._train = self._test - self._epoch

    def on_test_end(self, logs=None):
        self._val = time.perf_counter() - self._test

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            now = time.perf_counter()
            logs["train_seconds"] = self._train if self._train is not None else now - self._epoch
            logs["val_seconds"] = self._val if self._val is not None else 0.0


def prediction_spread(model: keras.Model, ds: tf.data.Dataset) -> float:
    """Largest range (max - min over the images) of any output unit's predicted probability."""
    p = model.predict(ds, verbose=0)
    return float((p.max(axis=0) - p.min(axis=0)).max())


def divergence(history: pd.DataFrame, spread: float) -> str | None:
    """Why a training collapsed (a NaN/inf loss, constant validation predictions), or None."""
    bad = history[~np.isfinite(history[["loss", "val_loss"]].to_numpy(float)).all(axis=1)]
    if len(bad):
        return f"loss not finite from epoch {int(bad['epoch'].iloc[0])} (learning rate {bad['lr'].iloc[0]:g})"
    if not spread >= CONSTANT_SPREAD:
        return f"constant validation predictions (they vary by {spread:.2g}, less than {CONSTANT_SPREAD:g})"
    return None


def _epochs(records, seed: int, epochs: range, cbc: fusion.CBCInputs | None, cached: int | None = None,
            **batches) -> tf.data.Dataset:  # fmt: skip
    """Training batches for `epochs`, one epoch after another, each shuffled with its own seed drawn
    from (seed, epoch), so an epoch's order does not depend on where this run (re)started; with
    `cbc`, the fused model's ((image, CBC), label) batches. With `cached` (the number of training
    records; train.speed.cache all) the decoded records stay in memory and each epoch shuffles all of them."""
    seeds = [int(np.random.SeedSequence([seed, e]).generate_state(1)[0]) for e in epochs]
    if cached:
        decoded = decoded_records(records, channels=batches["channels"], n_classes=batches["n_classes"],
                                  size=batches["size"], with_ids=cbc is not None)  # fmt: skip
        ds = cached_epochs(decoded, seeds, cached, batches["batch_size"])
        return ds if cbc is None else fusion.attach(ds, cbc)
    per_epoch = tf.data.Dataset.from_tensor_slices(tf.constant(seeds, tf.int64))
    ds = per_epoch.flat_map(lambda s: make_dataset(records, shuffle=True, seed=s, with_ids=cbc is not None, **batches))
    return ds if cbc is None else fusion.attach(ds, cbc)


def _final_history(rows: pd.DataFrame) -> pd.DataFrame:
    rows = rows.rename(columns={"learning_rate": "lr"}).assign(epoch=rows["epoch"] + 1)
    return rows[HISTORY_COLUMNS].round({c: 3 for c in TIME_COLUMNS})


def _for_fit(ds: tf.data.Dataset, n_batches: int, n_classes: int) -> tf.data.Dataset:
    """Known length (no out-of-data warning); one-hot labels for AUC."""
    if n_classes > 2:
        ds = ds.map(lambda x, y: (x, tf.one_hot(y, n_classes)))
    return ds.apply(tf.data.experimental.assert_cardinality(n_batches))


def _class_weights(kind: str, counts: dict) -> dict[int, float] | None:
    if kind == "none":
        return None
    if kind != "balanced":
        raise ValueError(f"train.class_weight must be 'none' or 'balanced', got {kind!r}")
    classes = np.array(sorted(int(c) for c in counts))
    labels = np.repeat(classes, [int(counts[c]) for c in classes])
    return dict(zip(classes.tolist(), compute_class_weight("balanced", classes=classes, y=labels).tolist()))


def _optimizer(combo: dict, weight_decay: float = 0.0, model: keras.Model | None = None) -> keras.optimizers.Optimizer:
    if combo["optimizer"] == "adam":
        return keras.optimizers.Adam(combo["lr"])
    if combo["optimizer"] == "sgd":
        return keras.optimizers.SGD(combo["lr"], momentum=0.9)
    if combo["optimizer"] == "adamw":
        # Decoupled weight decay (Loshchilov & Hutter 2019): each step also w -= lr * weight_decay * w,
        # apart from the gradient step. Biases and BatchNorm's scale and offset (every variable of
        # one axis or none) are not decayed, as in the usual recipes (Goyal et al. 2017; timm).
        optimizer = keras.optimizers.AdamW(combo["lr"], weight_decay=weight_decay)
        if model is not None:
            optimizer.exclude_from_weight_decay(var_list=[v for v in model.trainable_variables if len(v.shape) <= 1])
        return optimizer
    raise ValueError(f"train.grid.optimizer must be 'adam', 'sgd' or 'adamw', got {combo['optimizer']!r}")


def _loss(n_classes: int, label_smoothing: float = 0.0):
    """Cross-entropy; with label smoothing e > 0 against (1 - e) one-hot + e / classes (a sigmoid's
    target 1 - e/2 or e/2). Without it the loss stays Keras' plain name, as before the option existed."""
    if not label_smoothing:
        return "binary_crossentropy" if n_classes == 2 else "categorical_crossentropy"
    if n_classes == 2:
        return keras.losses.BinaryCrossentropy(label_smoothing=label_smoothing)
    return keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing)


def _recipe(combo: dict, settings: TrainSettings) -> dict:
    """The optimisation options a combination uses beyond its grid values (train.weight_decay for adamw,
    train.cosine / train.onecycle for those policies, label_smoothing when on): recorded in train.json
    and the resume fingerprint. Empty for every combination of the defaults, whose fingerprint and
    train.json keys stay as they were."""
    recipe = {}
    if combo["optimizer"] == "adamw":
        recipe["weight_decay"] = float(settings.weight_decay)
    if combo["lr_policy"] == "cosine":
        recipe["cosine"] = dict(settings.cosine)
    if combo["lr_policy"] == "onecycle":
        recipe["onecycle"] = dict(settings.onecycle)
    if settings.label_smoothing:
        recipe["label_smoothing"] = float(settings.label_smoothing)
    return recipe


def _schedule(combo: dict, cyclic: dict, settings: TrainSettings | None = None):
    if combo["lr_policy"] == "triangular":
        return triangular(combo["lr"], **cyclic)
    if combo["lr_policy"] == "constant":
        return lambda epoch: combo["lr"]
    if combo["lr_policy"] == "cosine":
        return warmup_cosine(combo["lr"], settings.max_epochs, **settings.cosine)
    if combo["lr_policy"] == "onecycle":
        return one_cycle(combo["lr"], settings.max_epochs, **settings.onecycle)
    raise ValueError(f"train.grid.lr_policy must be 'constant', 'triangular', 'cosine' or 'onecycle', "
                     f"got {combo['lr_policy']!r}")  # fmt: skip


def _write_outputs(out: Path, history_path: Path, model: keras.Model, history: pd.DataFrame, info: dict) -> None:
    from hemaflow.plots import training_curves  # matplotlib only once training is done

    history_path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(history_path, lambda p: history.to_csv(p, index=False))
    write_atomic(out / "curves.png", lambda p: training_curves(history, info["best_epoch"], p))
    write_atomic(out / "train.json", lambda p: p.write_text(json.dumps(info, indent=2) + "\n"))
    write_atomic(out / "model.keras", model.save)  # last: its presence means the job finished
