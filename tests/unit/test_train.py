"""make_dataset and train_combo on tiny shards made in a temp dir."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import json  # noqa: E402

import cv2  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from hemaflow.data import make_dataset  # noqa: E402
from hemaflow.records import encode_example, write_records  # noqa: E402
from hemaflow.train import ResumableEarlyStopping, train_combo  # noqa: E402

SIZE = 32


def label_of(aug_id: str, n_classes: int) -> int:
    return int(aug_id[3:]) % n_classes


def write_shards(root, n, n_shards, n_classes=2, channels=4, seed=0):
    """Dark noise with a bright disc whose radius depends on the class (learnable in an epoch)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for s in range(n_shards):
        examples = []
        for i in range(s, n, n_shards):
            aug_id = f"img{i:04d}"
            label = label_of(aug_id, n_classes)
            img = rng.integers(0, 60, (SIZE, SIZE, channels), dtype=np.uint8)
            cv2.circle(img, (SIZE // 2, SIZE // 2), 5 + 3 * label, (200, 120, 200, 255)[:channels], -1)
            examples.append(encode_example(cv2.imencode(".png", img)[1].tobytes(), label, aug_id))
        paths.append(root / f"{s:03d}.tfrecord")
        write_records(paths[-1], examples)
    return paths


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    return {
        "train": write_shards(root / "train", 64, 2),
        "val": write_shards(root / "val", 24, 1, seed=1),
        "multi": write_shards(root / "multi", 48, 2, n_classes=3, channels=3, seed=2),
    }


def ids_in_order(ds) -> list[str]:
    return [i.decode() for _, _, ids in ds for i in ids.numpy()]


# ------------------------------------------------------------------ make_dataset


def test_binary_batches_have_shapes_labels_and_every_id_once(shards):
    ds = make_dataset(shards["train"], channels=4, n_classes=2, batch_size=16, shuffle=True, seed=3, with_ids=True)
    seen = []
    for images, labels, ids in ds:
        assert images.dtype == tf.float32 and images.shape[1:] == (SIZE, SIZE, 4)
        assert 0.0 <= float(tf.reduce_min(images)) and float(tf.reduce_max(images)) <= 1.0
        assert labels.dtype == tf.float32 and labels.shape[1:] == (1,)
        ids = [i.decode() for i in ids.numpy()]
        assert labels.numpy()[:, 0].tolist() == [label_of(i, 2) for i in ids]
        seen += ids
    assert sorted(seen) == [f"img{i:04d}" for i in range(64)]


def test_multiclass_labels_are_sparse_ints(shards):
    ds = make_dataset(shards["multi"], channels=3, n_classes=3, batch_size=10, shuffle=False, seed=0, with_ids=True)
    images, labels, ids = next(iter(ds))
    assert images.shape == (10, SIZE, SIZE, 3)
    assert labels.dtype == tf.int32 and labels.shape == (10,)
    assert labels.numpy().tolist() == [label_of(i.decode(), 3) for i in ids.numpy()]


def test_order_is_fixed_by_the_seed(shards):
    def order(seed, shuffle=True):
        return ids_in_order(
            make_dataset(shards["train"], channels=4, n_classes=2, batch_size=8, shuffle=shuffle, seed=seed,
                         with_ids=True)  # fmt: skip
        )

    assert order(5) == order(5)
    assert order(5) != order(6)
    assert order(5) != sorted(order(5))
    assert order(5, shuffle=False) == order(6, shuffle=False)


def test_wrong_image_size_is_an_error_not_a_silent_reshape(shards):
    ds = make_dataset(shards["val"], channels=4, n_classes=2, batch_size=8, shuffle=False, seed=0, size=48)
    with pytest.raises(tf.errors.InvalidArgumentError):
        next(iter(ds))


# ------------------------------------------------------------------ train_combo

COMBO = {"model": "breen_cnn", "optimizer": "adam", "lr": 1e-3, "lr_policy": "constant", "batch_size": 16,
         "dropout": 0.25}  # fmt: skip
CYCLIC = {"step_size": 2, "scale": 4, "start_at": "max"}


def train(shards, out_dir, *, combo=COMBO, max_epochs=2, seed=11, callbacks=(), **kwargs):
    settings = dict(channels=4, size=SIZE, n_classes=2, patience=5, class_weight="none", class_counts={0: 32, 1: 32},
                    n_val=24)  # fmt: skip
    return train_combo(
        combo, train_records=shards["train"], val_records=shards["val"], max_epochs=max_epochs, cyclic=CYCLIC,
        seed=seed, out_dir=out_dir, callbacks=callbacks, **{**settings, **kwargs},
    )  # fmt: skip


def weights_of(out_dir):
    return keras.models.load_model(out_dir / "model.keras", compile=False).get_weights()


TRIANGULAR = dict(combo={**COMBO, "lr_policy": "triangular"}, max_epochs=3, class_weight="balanced",
                  class_counts={0: 40, 1: 24})  # fmt: skip


@pytest.fixture(scope="module")
def trained(shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("trained")
    return out, train(shards, out, seed=11, **TRIANGULAR)


def test_training_writes_every_output(trained):
    out, info = trained
    assert {p.name for p in out.iterdir()} == {"model.keras", "history.csv", "curves.png", "train.json"}
    history = pd.read_csv(out / "history.csv")
    assert list(history.columns) == ["epoch", "loss", "val_loss", "accuracy", "val_accuracy", "auc", "val_auc", "lr"]
    assert history["epoch"].tolist() == [1, 2, 3]
    # triangular, step_size 2, scale 4, from the max
    assert history["lr"].tolist() == pytest.approx([4e-3, 2.5e-3, 1e-3])
    assert json.loads((out / "train.json").read_text()) == info
    assert info["n_train"] == 64 and info["n_val"] == 24 and info["epochs_run"] == 3
    assert info["best_epoch"] == int(history.loc[history["val_loss"].idxmin(), "epoch"])
    assert {k: info[k] for k in COMBO} == TRIANGULAR["combo"]
    assert keras.models.load_model(out / "model.keras").output_shape == (None, 1)


def test_same_seed_same_history_and_weights(shards, trained, tmp_path):
    a = pd.read_csv(trained[0] / "history.csv")
    train(shards, tmp_path / "b", seed=11, **TRIANGULAR)
    b = pd.read_csv(tmp_path / "b" / "history.csv")
    assert a["loss"].tolist() == b["loss"].tolist() and a["val_loss"].tolist() == b["val_loss"].tolist()
    assert all(np.array_equal(x, y) for x, y in zip(weights_of(trained[0]), weights_of(tmp_path / "b")))
    train(shards, tmp_path / "c", seed=12, **TRIANGULAR)
    assert a["loss"].tolist() != pd.read_csv(tmp_path / "c" / "history.csv")["loss"].tolist()


def test_multiclass_training_with_sgd(shards, tmp_path):
    combo = {**COMBO, "model": "matek_cnn", "optimizer": "sgd", "lr": 0.01}
    info = train_combo(
        combo, train_records=shards["multi"], val_records=shards["multi"], channels=3, size=SIZE, n_classes=3,
        max_epochs=1, patience=2, cyclic=CYCLIC, class_weight="balanced", class_counts={0: 16, 1: 16, 2: 16},
        n_val=48, seed=1, out_dir=tmp_path,
    )  # fmt: skip
    assert info["epochs_run"] == 1
    model = keras.models.load_model(tmp_path / "model.keras")  # loads without any hemaflow import
    assert model.output_shape == (None, 3)
    assert isinstance(model.optimizer, keras.optimizers.SGD) and float(model.optimizer.momentum) == 0.9


class Interrupt(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1:
            raise RuntimeError("simulated kill after the second epoch")


class Record(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.epochs = []

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append(epoch)


def test_an_interrupted_run_resumes_from_its_last_epoch(shards, tmp_path):
    with pytest.raises(RuntimeError, match="simulated kill"):
        train(shards, tmp_path, max_epochs=4, callbacks=[Interrupt()])
    assert not (tmp_path / "model.keras").exists()
    assert not (tmp_path / "history.csv").exists()
    assert (tmp_path / "_resume").is_dir()
    before = pd.read_csv(tmp_path / "_resume" / "history.csv")

    record = Record()
    info = train(shards, tmp_path, max_epochs=4, callbacks=[record])
    assert record.epochs == [2, 3]  # continued, not restarted
    history = pd.read_csv(tmp_path / "history.csv")
    assert history["epoch"].tolist() == [1, 2, 3, 4] and info["epochs_run"] == 4
    assert history["lr"].tolist() == pytest.approx([1e-3] * 4)  # constant policy
    assert history["loss"].tolist()[:2] == before["loss"].tolist()
    assert not (tmp_path / "_resume").exists()
    assert (tmp_path / "model.keras").exists()


def test_early_stopping_state_is_replayed_on_resume(tmp_path):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    best = [np.full(w.shape, 7.0, w.dtype) for w in model.get_weights()]
    pd.DataFrame({"epoch": [0, 1, 2, 2], "val_loss": [0.5, 0.3, 0.9, 0.4]}).to_csv(tmp_path / "h.csv", index=False)
    np.savez(tmp_path / "best.npz", *best)
    es = ResumableEarlyStopping(tmp_path / "h.csv", tmp_path / "best.npz", patience=3)
    es.set_model(model)
    es.on_train_begin()
    es.on_epoch_begin(3)  # resumed at epoch 3; epoch 2 was redone, its last row counts
    assert es.best == 0.3 and es.best_epoch == 1 and es.wait == 1
    assert all(np.array_equal(x, y) for x, y in zip(es.best_weights, best))
