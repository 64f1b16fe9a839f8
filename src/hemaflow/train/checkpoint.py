"""Resuming a training to the same result: the checkpoint of every variable and of the
early-stopping state after each epoch, and the fingerprint it is valid for."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import zipfile
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from hemaflow.files import write_atomic
from hemaflow.provenance import library_digest

log = logging.getLogger(__name__)


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
        write_atomic(self.path, lambda p: np.savez(p, meta=np.array(json.dumps(meta)), **arrays))


def fingerprint(settings: dict, train_records, val_records, *, entry: str | os.PathLike) -> dict[str, str]:
    """What a resume checkpoint is valid for: sha256 of the settings, of each split's shard contents
    (in order), and of the training module `entry` with the library modules it runs and the
    Keras/TensorFlow versions."""

    def files(paths):
        h = hashlib.sha256()
        for p in paths:
            with open(p, "rb") as f:
                h.update(hashlib.file_digest(f, "sha256").digest())
        return h.hexdigest()

    code = f"{_digest(Path(entry).read_bytes())} {library_digest(entry)} {keras.__version__} {tf.__version__}"
    return {
        "settings": _digest(json.dumps(settings, sort_keys=True).encode()),
        "train_records": files(train_records),
        "val_records": files(val_records),
        "code": _digest(code.encode()),
    }


def weights_id(weights: str) -> str:
    """train.weights for the fingerprint: a file also by its contents, so a new file restarts training."""
    if weights in ("none", "imagenet") or not os.path.isfile(weights):
        return weights
    with open(weights, "rb") as f:
        return f"{weights} sha256:{hashlib.file_digest(f, 'sha256').hexdigest()}"


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
