"""Where and how training runs: TensorFlow's thread count, CPU or GPU, float32 or mixed precision."""

from __future__ import annotations

import logging

import keras
import tensorflow as tf

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
