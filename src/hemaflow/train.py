"""Train one hyperparameter combination: seeded, resumable to the same result, outputs written atomically.

Outputs in out_dir: history.csv (or history_path), curves.png, train.json and, last, model.keras, so a
model file only exists once everything else is in place. While training, out_dir/_resume/state.npz
holds, as of the last finished epoch, all the rest of the run depends on: every model variable
(weights and the dropout layers' random-seed state), the optimizer's variables, the early-stopping
state, the history and each leg's (process's) epochs and wall time, with a fingerprint of the
settings, input shards and code. A rerun with the same fingerprint continues from there and gives
the history and weights of an uninterrupted run, because each epoch's data order is seeded by
(seed, epoch) rather than by how many epochs this process has run; any other checkpoint is
discarded with a log line.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf
from sklearn.utils.class_weight import compute_class_weight

from hemaflow import fusion
from hemaflow.data import make_dataset
from hemaflow.models import HEAD, freeze_batchnorm
from hemaflow.provenance import library_digest
from hemaflow.schedules import triangular

log = logging.getLogger(__name__)


def use_threads(n: int) -> None:
    """Run TensorFlow's ops on `n` threads (intra- and inter-op); call before any TensorFlow op.

    Results are byte-identical for a fixed `n` (op determinism is on), but float sums are
    split differently for another `n`, so models trained on 1 and on 2 threads differ slightly.
    """
    if n < 1:
        raise ValueError(f"train.threads must be at least 1, got {n}")
    tf.config.threading.set_intra_op_parallelism_threads(n)
    tf.config.threading.set_inter_op_parallelism_threads(n)


def use_device(accelerator: str, mixed_precision: bool) -> dict:
    """Pick where training runs (train.accelerator, train.mixed_precision); call before any
    TensorFlow op. Returns {device, precision, device_note} for train.json; logs the choice.

    cpu hides every GPU, so a GPU machine trains the same model as any other CPU. gpu keeps the
    GPUs visible and Keras places the work on the first; with none visible (the CPU-only
    TensorFlow of requirements.lock, or no GPU on the node) it falls back to the CPU with a
    warning that names the fix. mixed_float16 only on a GPU: on the CPU it is slower, not faster.
    """
    gpus = tf.config.list_physical_devices("GPU")
    note = None
    if accelerator == "cpu":
        if gpus:
            tf.config.set_visible_devices([], "GPU")
            note = f"{len(gpus)} GPU(s) visible but train.accelerator is cpu"
        gpus = []
    elif not gpus:
        note = ("train.accelerator is gpu but TensorFlow sees no GPU (the CPU-only TensorFlow of "
                "requirements.lock? install the CUDA build with `make setup GPU=1`, or use envs/train-gpu.yaml); "
                "training on the CPU")  # fmt: skip
        log.warning(note)
    device = "GPU:0" if gpus else "CPU:0"
    precision = "float32"
    if mixed_precision:
        if gpus:
            precision = "mixed_float16"
        else:
            log.warning("train.mixed_precision needs a GPU; training in float32 on the CPU")
    keras.mixed_precision.set_global_policy(precision)
    name = tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU") if gpus else "CPU"
    log.info("training on %s (%s), %s%s", device, name, precision, f"; {note}" if note else "")
    return {"device": device, "precision": precision, "device_note": note}


HISTORY_COLUMNS = ["epoch", "loss", "val_loss", "accuracy", "val_accuracy", "auc", "val_auc", "lr"]
# Validation probabilities that vary by less than this over all validation images (max - min, per
# output unit) mean the network outputs a constant: it has collapsed (dead units) and is marked
# diverged. Even untrained networks spread their predictions by more (see docs/architecture.md).
CONSTANT_SPREAD = 1e-3


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
    weights: str = "none",
    fine_tune: dict | None = None,
    seed: int,
    out_dir: str | os.PathLike,
    history_path: str | os.PathLike | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    cbc: fusion.CBCInputs | None = None,
    threads: int = 1,
    device: dict | None = None,
) -> dict:
    """Fit combo {model, optimizer, lr, lr_policy, batch_size, dropout}; return what train.json holds.

    Epochs are numbered from 1 in history.csv, best_epoch and legs, as in Keras' log; the history
    goes to `history_path` (default out_dir/history.csv). epochs_run and wall_seconds cover the
    whole training, `legs` each process that worked on it. status is `diverged` (with the reason
    in diverged_because) when a loss became NaN/inf or the validation predictions are constant.
    `class_counts` (records per class index in train_records) and `n_val` (records in
    val_records) come from the shard manifests: counting records would read every one.
    `callbacks` are appended after the pipeline's own (tests use them to interrupt a run).
    With `cbc` (combo inputs "image+cbc") the model is the fused two-input one (hemaflow.fusion).
    `threads` is the thread count TensorFlow was given (use_threads): recorded in train.json and
    in the checkpoint's fingerprint, since another count gives slightly different weights; so is
    `device` (what use_device chose: another device or precision gives other weights too).
    `weights` (train.weights) initialise a backbone (hemaflow.models.build_model). With
    `fine_tune` frozen_epochs > 0 the head first trains alone for that many epochs (warm_up_head),
    then the whole network trains as usual at lr x lr_factor. With pretrained `weights` every
    BatchNorm layer stays in inference mode throughout (models.freeze_batchnorm).
    """
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
    settings = dict(combo=combo, channels=channels, size=size, n_classes=n_classes, max_epochs=max_epochs,
                    patience=patience, cyclic=cyclic, class_weight=class_weight, class_counts=counts, seed=seed,
                    cbc=cbc.stats.to_dict() if cbc is not None else None, weights=_weights_id(weights),
                    fine_tune=fine_tune if frozen else None, threads=threads,
                    device={k: device[k] for k in ("device", "precision")} if device else None)  # fmt: skip

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
    weights_of_classes = _class_weights(class_weight, class_counts)
    n_train = int(sum(class_counts.values()))
    model = fusion.build(combo["model"], (size, size, channels), n_classes, combo["dropout"], cbc, weights)
    loss = "binary_crossentropy" if n_classes == 2 else "categorical_crossentropy"
    stopper = ResumableEarlyStopping(patience=patience)
    checkpoint = Checkpoint(
        out / "_resume" / "state.npz", fingerprint(settings, train_records, val_records), stopper, leg_start=start
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
        optimizer=_optimizer(combo_fit),
        loss=loss,
        # Micro-averaged one-vs-rest AUC for several classes: built in, so model.keras loads anywhere.
        metrics=["accuracy", keras.metrics.AUC(name="auc")],
    )
    model.optimizer.build(model.trainable_variables)  # its variables exist now, so a checkpoint can fill them
    first = checkpoint.restore(model)

    epochs = range(first, max_epochs)
    train_ds = _for_fit(_epochs(train_records, seed, epochs, cbc, **batches), steps * len(epochs), n_classes)
    val_ds = fusion.dataset(val_records, cbc, shuffle=False, seed=seed, **batches)
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
            keras.callbacks.LearningRateScheduler(_schedule(combo_fit, cyclic)),
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
        "legs": legs,
        "val_prediction_spread": spread,
        "n_train": n_train,
        "n_val": n_val,
        "threads": threads,
        **(device or {}),
        "weights": weights,
        **({"frozen_epochs": frozen, "lr_factor": float(fine_tune["lr_factor"])} if frozen else {}),
        **({"head_losses": head_losses} if head_losses is not None else {}),
        **({"cbc": cbc.stats.to_dict()} if cbc is not None else {}),
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


class ResumableEarlyStopping(keras.callbacks.EarlyStopping):
    """EarlyStopping on val_loss with best weights restored, whose state survives a resume.

    Keras resets the best value, the patience count and the best weights at every fit();
    `state()` is what a Checkpoint saves and `restore()` what the next fit starts from.
    """

    def __init__(self, *, patience: int):
        super().__init__(monitor="val_loss", patience=patience, restore_best_weights=True)
        self._restored = None

    def state(self) -> tuple[dict, list[np.ndarray] | None]:
        best = None if self.best is None else float(self.best)
        return {"best": best, "best_epoch": int(self.best_epoch), "wait": int(self.wait)}, self.best_weights

    def restore(self, state: dict, best_weights: list[np.ndarray] | None) -> None:
        self._restored = state, best_weights

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if self._restored is not None:
            state, self.best_weights = self._restored
            self.best, self.best_epoch, self.wait = state["best"], state["best_epoch"], state["wait"]


class Checkpoint(keras.callbacks.Callback):
    """After every epoch, one file (replaced atomically) from which a rerun continues exactly.

    It holds model.variables (weights and the seed-generator state of dropout layers), the
    optimizer's variables (step count, moments), the early-stopping state and best weights, the
    history rows, the legs so far and the fingerprint it is valid for.
    """

    def __init__(self, path: Path, fingerprint: dict, stopper: ResumableEarlyStopping, *, leg_start: float):
        super().__init__()
        self.path, self.fingerprint, self.stopper = Path(path), fingerprint, stopper
        self.rows: list[dict] = []
        self.stopped = False  # the saved run had stopped (early stopping or NaN): nothing left to fit
        self._done_legs: list[dict] = []
        self._leg = {"first_epoch": 1, "epochs": 0, "wall_seconds": 0.0}
        self._leg_start = leg_start

    def restore(self, model: keras.Model) -> int:
        """Load a checkpoint made with this fingerprint into `model`; return the first epoch to run (0-based).

        Without one (or with one made for other settings, inputs or code, which is discarded)
        training starts at epoch 0 in a fresh resume directory.
        """
        saved = self._read()
        if saved is None:
            shutil.rmtree(self.path.parent, ignore_errors=True)
            self.path.parent.mkdir(parents=True)
            return 0
        meta, arrays = saved
        for prefix, variables in (("model", model.variables), ("optimizer", model.optimizer.variables)):
            for i, v in enumerate(variables):
                v.assign(arrays[f"{prefix}_{i}"])
        n_best = sum(k.startswith("best_") for k in arrays)
        self.stopper.restore(meta["early_stopping"], [arrays[f"best_{i}"] for i in range(n_best)] or None)
        self.rows, self._done_legs, self.stopped = meta["history"], meta["legs"], meta["stopped"]
        first = meta["epoch"] + 1
        self._leg["first_epoch"] = first + 1
        log.info("%s: resuming after epoch %d (legs so far: %s)", self.path.parent, first, self._done_legs)
        return first

    def valid(self) -> bool:
        """There is a checkpoint made with this fingerprint."""
        return self._read() is not None

    def _read(self) -> tuple[dict, dict[str, np.ndarray]] | None:
        if not self.path.exists():
            return None
        try:
            with np.load(self.path) as z:
                meta = json.loads(str(z["meta"]))
                arrays = {k: z[k] for k in z.files if k != "meta"}
        except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile) as e:  # not one of ours
            log.warning("discarding the resume checkpoint %s: it cannot be read (%s)", self.path, e)
            return None
        if meta.get("fingerprint") != self.fingerprint:
            old = meta.get("fingerprint") or {}
            changed = [k for k in self.fingerprint if old.get(k) != self.fingerprint[k]]
            log.warning(
                "discarding the resume checkpoint %s (epoch %s): it was made with other %s; training starts afresh",
                self.path, meta.get("epoch", -1) + 1, ", ".join(changed),
            )  # fmt: skip
            return None
        return meta, arrays

    def legs(self, now: float) -> list[dict]:
        """Every leg's first epoch, epochs finished and wall time; the current one up to `now`."""
        return [*self._done_legs, {**self._leg, "wall_seconds": round(now - self._leg_start, 1)}]

    def on_epoch_end(self, epoch, logs=None):
        self.rows.append({"epoch": epoch, **{k: float(v) for k, v in (logs or {}).items()}})
        self._leg["epochs"] += 1
        state, best = self.stopper.state()
        meta = {
            "fingerprint": self.fingerprint,
            "epoch": epoch,
            "stopped": bool(self.model.stop_training),
            "early_stopping": state,
            "history": self.rows,
            "legs": self.legs(time.monotonic()),
        }
        arrays = {f"model_{i}": v.numpy() for i, v in enumerate(self.model.variables)}
        arrays |= {f"optimizer_{i}": v.numpy() for i, v in enumerate(self.model.optimizer.variables)}
        arrays |= {f"best_{i}": w for i, w in enumerate(best or [])}
        _atomic(self.path, lambda p: np.savez(p, meta=np.array(json.dumps(meta)), **arrays))


def fingerprint(settings: dict, train_records, val_records) -> dict[str, str]:
    """What a resume checkpoint is valid for: sha256 of the settings, of each split's shard contents
    (in order), and of this module with the library modules it runs and the Keras/TensorFlow versions."""

    def files(paths):
        h = hashlib.sha256()
        for p in paths:
            with open(p, "rb") as f:
                h.update(hashlib.file_digest(f, "sha256").digest())
        return h.hexdigest()

    code = f"{_digest(Path(__file__).read_bytes())} {library_digest(__file__)} {keras.__version__} {tf.__version__}"
    return {
        "settings": _digest(json.dumps(settings, sort_keys=True).encode()),
        "train_records": files(train_records),
        "val_records": files(val_records),
        "code": _digest(code.encode()),
    }


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


def _epochs(records, seed: int, epochs: range, cbc: fusion.CBCInputs | None, **batches) -> tf.data.Dataset:
    """Training batches for `epochs`, one epoch after another, each shuffled with its own seed drawn
    from (seed, epoch), so an epoch's order does not depend on where this run (re)started; with
    `cbc`, the fused model's ((image, CBC), label) batches."""
    seeds = [int(np.random.SeedSequence([seed, e]).generate_state(1)[0]) for e in epochs]
    per_epoch = tf.data.Dataset.from_tensor_slices(tf.constant(seeds, tf.int64))
    ds = per_epoch.flat_map(lambda s: make_dataset(records, shuffle=True, seed=s, with_ids=cbc is not None, **batches))
    return ds if cbc is None else fusion.attach(ds, cbc)


def _final_history(rows: pd.DataFrame) -> pd.DataFrame:
    rows = rows.rename(columns={"learning_rate": "lr"}).assign(epoch=rows["epoch"] + 1)
    return rows[HISTORY_COLUMNS]


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


def _weights_id(weights: str) -> str:
    """train.weights for the fingerprint: a file also by its contents, so a new file restarts training."""
    if weights in ("none", "imagenet") or not os.path.isfile(weights):
        return weights
    with open(weights, "rb") as f:
        return f"{weights} sha256:{hashlib.file_digest(f, 'sha256').hexdigest()}"


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


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
