"""make_dataset and train_combo on tiny shards made in a temp dir."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import json  # noqa: E402
import logging  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import cv2  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from hemaflow.train.input import make_dataset  # noqa: E402
from hemaflow.augment.records import encode_example, write_records  # noqa: E402
from hemaflow.train.checkpoint import ResumableEarlyStopping, fingerprint  # noqa: E402
from hemaflow.train.device import use_threads  # noqa: E402
from hemaflow.train import fit as fit_module  # noqa: E402
from hemaflow.train.fit import TIME_COLUMNS, divergence  # noqa: E402

from harness import fit  # noqa: E402

FIT = fit_module.__file__  # the module whose code a checkpoint's fingerprint covers

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


def without_times(history: pd.DataFrame) -> pd.DataFrame:
    """A history without the epochs' wall times (TIME_COLUMNS), which differ between any two runs."""
    assert set(TIME_COLUMNS) <= set(history.columns)
    return history.drop(columns=TIME_COLUMNS)


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
    return fit(
        combo, train_records=shards["train"], val_records=shards["val"], max_epochs=max_epochs, cyclic=CYCLIC,
        seed=seed, out_dir=out_dir, callbacks=callbacks, **{**settings, **kwargs},
    )  # fmt: skip


def val_batches(shards):
    """The validation shards in file order, of known length (2 batches of 16 and 8)."""
    ds = make_dataset(shards["val"], channels=4, n_classes=2, batch_size=16, shuffle=False, seed=0)
    return ds.apply(tf.data.experimental.assert_cardinality(2))


def weights_of(out_dir):
    return keras.models.load_model(out_dir / "model.keras", compile=False).get_weights()


# matek_cnn has dropout, so resuming must restore its random state too.
TRIANGULAR = dict(combo={**COMBO, "model": "matek_cnn", "lr_policy": "triangular"}, max_epochs=3, class_weight="balanced",
                  class_counts={0: 40, 1: 24})  # fmt: skip


@pytest.fixture(scope="module")
def trained(shards, tmp_path_factory):
    out = tmp_path_factory.mktemp("trained")
    return out, train(shards, out, seed=11, **TRIANGULAR)


def test_training_writes_every_output(trained):
    out, info = trained
    assert {p.name for p in out.iterdir()} == {"model.keras", "history.csv", "curves.png", "train.json"}
    history = pd.read_csv(out / "history.csv")
    assert list(history.columns) == ["epoch", "loss", "val_loss", "accuracy", "val_accuracy", "auc", "val_auc", "lr",
                                     "train_seconds", "val_seconds"]  # fmt: skip
    assert (history["train_seconds"] > 0).all() and (history["val_seconds"] > 0).all()
    assert info["epoch_seconds"] == history[["epoch", "train_seconds", "val_seconds"]].to_dict("records")
    assert info["train_seconds"] == pytest.approx(history["train_seconds"].sum(), abs=0.051)
    assert info["train_seconds"] + info["val_seconds"] <= info["wall_seconds"] + 0.2  # each rounded to 0.1 s
    assert history["epoch"].tolist() == [1, 2, 3]
    # triangular around a mean of 1e-3: step_size 2, scale 4, from the max (1.6e-3) to the min (4e-4)
    assert history["lr"].tolist() == pytest.approx([1.6e-3, 1e-3, 4e-4])
    assert json.loads((out / "train.json").read_text()) == info
    assert info["n_train"] == 64 and info["n_val"] == 24 and info["epochs_run"] == 3
    assert info["status"] == "ok" and info["diverged_because"] is None
    assert info["legs"] == [{"first_epoch": 1, "epochs": 3, "wall_seconds": info["wall_seconds"]}]
    assert {k: info[k] for k in COMBO} == TRIANGULAR["combo"]
    assert keras.models.load_model(out / "model.keras").output_shape == (None, 1)


def test_the_saved_model_is_the_best_epochs(shards, trained):
    """model.keras, scored here on the validation shards, has the lowest val_loss of the history,
    and best_epoch names that epoch."""
    out, info = trained
    history = pd.read_csv(out / "history.csv")
    model = keras.models.load_model(out / "model.keras")
    loss = model.evaluate(val_batches(shards), verbose=0, return_dict=True)["loss"]
    assert loss == pytest.approx(history["val_loss"].min(), rel=1e-5)
    assert history.loc[history["epoch"] == info["best_epoch"], "val_loss"].item() == pytest.approx(loss, rel=1e-5)
    assert history["val_loss"].nunique() == 3  # the epochs differ, so the check above tells them apart


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
    info = fit(
        combo, train_records=shards["multi"], val_records=shards["multi"], channels=3, size=SIZE, n_classes=3,
        max_epochs=1, patience=2, cyclic=CYCLIC, class_weight="balanced", class_counts={0: 16, 1: 16, 2: 16},
        n_val=48, seed=1, out_dir=tmp_path,
    )  # fmt: skip
    assert info["epochs_run"] == 1
    model = keras.models.load_model(tmp_path / "model.keras")  # loads without any hemaflow import
    assert model.output_shape == (None, 3)
    assert isinstance(model.optimizer, keras.optimizers.SGD) and float(model.optimizer.momentum) == 0.9


# ------------------------------------------------------------------ threads

IN_FRESH_PROCESS = """
import json, sys
from hemaflow.train.device import use_threads
from harness import fit
args = json.loads(sys.argv[1])
use_threads(args.pop("threads_for_tf"))
fit(**args)
"""


def train_in_fresh_process(shards, out_dir, threads):
    """train() in a new interpreter: TensorFlow's thread pools are fixed once it has run an op."""
    args = dict(combo=TRIANGULAR["combo"], train_records=[str(p) for p in shards["train"]],
                val_records=[str(p) for p in shards["val"]], channels=4, size=SIZE, n_classes=2, max_epochs=2,
                patience=5, cyclic=CYCLIC, class_weight="none", class_counts={0: 32, 1: 32}, n_val=24, seed=11,
                out_dir=str(out_dir), threads=threads, threads_for_tf=threads)  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, "-c", IN_FRESH_PROCESS, json.dumps(args)], env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out_dir / "train.json").read_text())


def test_two_threads_twice_give_the_same_weights_and_record_the_count(shards, tmp_path):
    a = train_in_fresh_process(shards, tmp_path / "a", threads=2)
    b = train_in_fresh_process(shards, tmp_path / "b", threads=2)
    assert a["threads"] == b["threads"] == 2
    pd.testing.assert_frame_equal(without_times(pd.read_csv(tmp_path / "a/history.csv")),
                                  without_times(pd.read_csv(tmp_path / "b/history.csv")))  # fmt: skip
    assert all(np.array_equal(x, y) for x, y in zip(weights_of(tmp_path / "a"), weights_of(tmp_path / "b")))


def test_a_checkpoint_of_another_thread_count_is_not_resumed(shards, tmp_path):
    """Epochs from 1 thread continued on 2 would give weights that neither count gives alone."""
    with pytest.raises(RuntimeError, match="simulated kill"):
        train(shards, tmp_path, callbacks=[Interrupt(after=1)], threads=1)
    record = Record()
    info = train(shards, tmp_path, callbacks=[record], threads=2)
    assert record.epochs == [0, 1] and info["threads"] == 2  # started afresh


def test_seed_zero_is_refused_before_tensorflow_fails_on_it(shards, tmp_path):
    with pytest.raises(ValueError, match="seed must be at least 1"):
        train(shards, tmp_path, seed=0)
    assert not tmp_path.joinpath("_resume").exists()  # refused before any work


def test_use_threads_rejects_zero():
    with pytest.raises(ValueError, match="train.threads must be at least 1"):
        use_threads(0)


# ------------------------------------------------------------------ resume


class Interrupt(keras.callbacks.Callback):
    def __init__(self, after: int):
        super().__init__()
        self.after = after

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.after:
            raise RuntimeError(f"simulated kill after epoch {self.after}")


class Record(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.epochs = []

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append(epoch)


@pytest.mark.parametrize(
    ("killed_after", "rerun", "legs"),
    [(2, [2], [(1, 2), (3, 1)]), (3, [], [(1, 3), (4, 0)])],  # the second: killed before writing outputs
)
def test_a_killed_run_resumes_to_the_uninterrupted_result(shards, trained, tmp_path, killed_after, rerun, legs):
    """Killed after epoch 2 (or 3) of 3 and rerun: epoch 3 only (or none), and the history and
    weights of the uninterrupted run (same data order, optimizer and dropout RNG state, best
    weights restored); both legs are counted."""
    with pytest.raises(RuntimeError, match="simulated kill"):
        train(shards, tmp_path, seed=11, callbacks=[Interrupt(after=killed_after)], **TRIANGULAR)
    assert not (tmp_path / "model.keras").exists() and not (tmp_path / "history.csv").exists()
    assert (tmp_path / "_resume" / "state.npz").is_file()

    record = Record()
    info = train(shards, tmp_path, seed=11, callbacks=[record], **TRIANGULAR)
    assert record.epochs == rerun  # continued, not restarted
    resumed, whole = pd.read_csv(tmp_path / "history.csv"), pd.read_csv(trained[0] / "history.csv")
    pd.testing.assert_frame_equal(without_times(resumed), without_times(whole))  # every column but the times
    assert (resumed[TIME_COLUMNS] > 0).all().all()  # each epoch's own, the earlier leg's kept by the checkpoint
    assert all(np.array_equal(x, y) for x, y in zip(weights_of(tmp_path), weights_of(trained[0])))
    assert [(leg["first_epoch"], leg["epochs"]) for leg in info["legs"]] == legs
    assert info["epochs_run"] == 3 and info["best_epoch"] == trained[1]["best_epoch"]
    assert info["wall_seconds"] == pytest.approx(sum(leg["wall_seconds"] for leg in info["legs"]), abs=0.11)
    assert all(leg["wall_seconds"] > 0 for leg in info["legs"])
    assert not (tmp_path / "_resume").exists()


def test_a_checkpoint_for_other_settings_is_discarded(shards, tmp_path, caplog):
    with pytest.raises(RuntimeError, match="simulated kill"):
        train(shards, tmp_path, callbacks=[Interrupt(after=1)])
    record = Record()
    with caplog.at_level(logging.WARNING, logger="hemaflow.train.fit"):
        info = train(shards, tmp_path, callbacks=[record], patience=4)
    assert record.epochs == [0, 1]  # started afresh
    assert [(leg["first_epoch"], leg["epochs"]) for leg in info["legs"]] == [(1, 2)]
    assert "discarding the resume checkpoint" in caplog.text and "other settings" in caplog.text


def test_the_fingerprint_follows_settings_shard_contents_and_code(shards, tmp_path):
    settings = {"combo": COMBO, "seed": 1}
    base = fingerprint(settings, shards["train"], shards["val"], entry=FIT)
    copies = [tmp_path / f"copy{i}.tfrecord" for i in range(2)]
    for src, dst in zip(shards["train"], copies):
        shutil.copy(src, dst)
    assert fingerprint(settings, copies, shards["val"], entry=FIT) == base  # identity is content, not path or mtime
    copies[1].write_bytes(copies[1].read_bytes()[:-1] + b"x")
    changed = fingerprint(settings, copies, shards["val"], entry=FIT)
    assert changed["train_records"] != base["train_records"] and changed["val_records"] == base["val_records"]
    assert fingerprint(settings, shards["train"][::-1], shards["val"], entry=FIT)["train_records"] != base["train_records"]
    other = fingerprint({**settings, "seed": 2}, shards["train"], shards["val"], entry=FIT)
    assert other["settings"] != base["settings"] and other["code"] == base["code"]


def test_early_stopping_state_survives_a_resume():
    """Restored mid-run (best 0.3 at epoch 1, one epoch without improvement), patience 2 runs out
    at the next epoch without improvement; the restored best weights are the ones put back."""
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    best = [np.full(w.shape, 7.0, w.dtype) for w in model.get_weights()]
    es = ResumableEarlyStopping(patience=2)
    es.set_model(model)
    es.restore({"best": 0.3, "best_epoch": 1, "wait": 1}, best)
    es.on_train_begin()
    es.on_epoch_end(3, {"val_loss": 0.4})
    assert model.stop_training and es.best_epoch == 1
    es.on_train_end()
    assert all(np.array_equal(x, y) for x, y in zip(model.get_weights(), best))
    state, weights = es.state()
    assert state == {"best": 0.3, "best_epoch": 1, "wait": 2} and weights is best


# ------------------------------------------------------------------ divergence


@pytest.mark.parametrize(
    ("lr", "because"),
    [(1e4, "constant validation predictions"), (1e12, "loss not finite from epoch 1")],  # dead ReLUs; overflow
)
def test_a_huge_learning_rate_is_marked_diverged_and_still_gives_a_usable_model(shards, tmp_path, caplog, lr, because):
    with caplog.at_level(logging.WARNING, logger="hemaflow.train.fit"):
        info = train(shards, tmp_path, combo={**COMBO, "optimizer": "sgd", "lr": lr}, max_epochs=3)
    assert info["status"] == "diverged" and info["diverged_because"].startswith(because)
    assert (tmp_path / "curves.png").is_file()
    assert json.loads((tmp_path / "train.json").read_text())["status"] == "diverged"
    assert "diverged" in caplog.text
    model = keras.models.load_model(tmp_path / "model.keras")
    assert np.isfinite(model.predict(val_batches(shards), verbose=0)).all()  # evaluate can score it


@pytest.mark.parametrize(
    ("losses", "spread", "expected"),
    [
        ([0.7, 0.5, 0.4], 0.3, None),
        ([0.7, 0.69, 0.69], 0.02, None),  # weak but not constant
        ([0.7, 0.69, 0.69], 2e-7, "constant validation predictions"),
        ([0.7, float("nan"), 0.4], 0.3, "loss not finite from epoch 2"),
        ([0.7, 0.5, float("inf")], 0.0, "loss not finite from epoch 3"),
    ],
)
def test_divergence_criterion(losses, spread, expected):
    history = pd.DataFrame({"epoch": [1, 2, 3], "loss": losses, "val_loss": [0.6, 0.6, 0.6], "lr": [1e-3] * 3})
    found = divergence(history, spread)
    assert found is None if expected is None else found.startswith(expected)


def test_each_trial_trains_with_its_own_batch_size(shards, tmp_path, monkeypatch):
    """Seed 003's search ignored the batch size; here train_combo batches by combo["batch_size"]."""
    import hemaflow.train.fit as train_module

    seen = []

    def spy(records, **kwargs):  # called while tf.data traces the epochs: record, do not iterate
        seen.append(kwargs["batch_size"])
        return make_dataset(records, **kwargs)

    class Steps(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.n = 0

        def on_train_batch_end(self, batch, logs=None):
            self.n += 1

    monkeypatch.setattr(train_module, "make_dataset", spy)
    for batch_size in (8, 32):
        seen.clear()
        steps = Steps()
        train(shards, tmp_path / f"bs{batch_size}", combo={**COMBO, "batch_size": batch_size}, max_epochs=1,
              callbacks=[steps])  # fmt: skip
        assert seen and set(seen) == {batch_size}  # the training batches are of the trial's size
        assert steps.n == 64 // batch_size  # and an epoch is 64 training records / batch size steps


def test_fine_tuning_a_pretrained_backbone_keeps_its_batchnorm_statistics(shards, tmp_path):
    app = keras.applications.MobileNetV3Small(include_top=False, weights=None, input_shape=(SIZE, SIZE, 3),
                                              include_preprocessing=True)  # fmt: skip
    rng = np.random.default_rng(5)
    for layer in app.layers:  # statistics unlike the data's, so that training would move them
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_mean.assign(rng.normal(size=layer.moving_mean.shape).astype(np.float32))
            layer.moving_variance.assign(rng.uniform(0.5, 2, size=layer.moving_variance.shape).astype(np.float32))
    weights = tmp_path / "mobilenetv3_small_notop.weights.h5"
    app.save_weights(weights)
    combo = {**COMBO, "model": "mobilenetv3_small", "lr": 1e-3}
    train(shards, tmp_path / "out", combo=combo, max_epochs=1, weights=str(weights),
          fine_tune={"frozen_epochs": 1, "lr_factor": 0.1})  # fmt: skip
    trained = keras.models.load_model(tmp_path / "out" / "model.keras")
    norms = {la.name: la for la in app.layers if isinstance(la, keras.layers.BatchNormalization)}
    assert norms
    for layer in trained.layers:
        if layer.name in norms:
            np.testing.assert_array_equal(layer.moving_mean.numpy(), norms[layer.name].moving_mean.numpy())
            np.testing.assert_array_equal(layer.moving_variance.numpy(), norms[layer.name].moving_variance.numpy())
    convs = [la for la in trained.layers if isinstance(la, keras.layers.Conv2D)]
    assert any(not np.array_equal(c.get_weights()[0], app.get_layer(c.name).get_weights()[0]) for c in convs)  # it trained


def test_epoch_progress_prints_one_line_per_epoch_with_the_time_left(monkeypatch):
    import io

    from hemaflow.train.fit import EpochProgress

    clock = iter([100.0, 130.0, 130.0, 150.0])  # epoch 1 takes 30 s, epoch 2 20 s
    monkeypatch.setattr("hemaflow.train.fit.time.monotonic", lambda: next(clock))
    out = io.StringIO()
    progress = EpochProgress("m1_lr1e-3", 5, out)
    for epoch, logs in enumerate([{"loss": 0.69, "val_loss": 0.7, "val_auc": 0.5, "accuracy": 0.4},
                                  {"loss": 0.5, "val_loss": 0.55}]):  # fmt: skip
        progress.on_epoch_begin(epoch)
        progress.on_epoch_end(epoch, logs)
    first, second = out.getvalue().splitlines()
    assert first == "train m1_lr1e-3: epoch 1/5 loss 0.6900 val_loss 0.7000 val_auc 0.5000 (30 s, ETA 0:02:00)"
    assert second == "train m1_lr1e-3: epoch 2/5 loss 0.5000 val_loss 0.5500 (20 s, ETA 0:01:00)"


# ------------------------------------------------------------------ AdamW, schedules, label smoothing


def test_adamw_decays_weights_even_with_zero_gradient_and_spares_biases():
    """Decoupled weight decay: a zero gradient leaves Adam's weights alone, while AdamW still
    shrinks each kernel by lr x weight_decay per step; biases (1-D variables) are not decayed."""
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, bias_initializer="ones")])
    combo = {"optimizer": "adamw", "lr": 0.1}
    optimizer = fit_module._optimizer(combo, 0.01, model)
    assert isinstance(optimizer, keras.optimizers.AdamW)
    kernel, bias = model.trainable_variables
    k0, b0 = kernel.numpy().copy(), bias.numpy().copy()
    for _ in range(3):
        optimizer.apply_gradients([(tf.zeros_like(v), v) for v in model.trainable_variables])
    np.testing.assert_allclose(kernel.numpy(), k0 * (1 - 0.1 * 0.01) ** 3, rtol=1e-6)
    np.testing.assert_array_equal(bias.numpy(), b0)
    plain = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    k0 = plain.trainable_variables[0].numpy().copy()
    adam = fit_module._optimizer({"optimizer": "adam", "lr": 0.1}, 0.01, plain)
    adam.apply_gradients([(tf.zeros_like(v), v) for v in plain.trainable_variables])
    np.testing.assert_array_equal(plain.trainable_variables[0].numpy(), k0)


@pytest.mark.parametrize("n_classes", [2, 4])
def test_label_smoothing_changes_the_loss_to_the_smoothed_targets(n_classes):
    rng = np.random.default_rng(0)
    if n_classes == 2:
        y, p = np.array([[1.0], [0.0]], np.float32), np.array([[0.9], [0.2]], np.float32)
        target = y * 0.9 + 0.05  # e = 0.1: a sigmoid's target moves e/2 towards 0.5
        expected = -np.mean(target * np.log(p) + (1 - target) * np.log(1 - p))
    else:
        y = keras.utils.to_categorical([0, 3, 1], 4).astype(np.float32)
        p = rng.dirichlet(np.ones(4), 3).astype(np.float32)
        target = y * 0.9 + 0.1 / 4
        expected = -np.mean((target * np.log(p)).sum(axis=1))
    plain, smoothed = fit_module._loss(n_classes, 0.0), fit_module._loss(n_classes, 0.1)
    assert isinstance(plain, str)  # off: Keras' plain loss, as before the option existed
    plain = float(np.mean(keras.losses.get(plain)(y, p)))  # per image, averaged as Keras' reduction does
    assert float(smoothed(y, p)) == pytest.approx(float(expected), rel=1e-5)
    assert float(smoothed(y, p)) != pytest.approx(plain, rel=1e-3)


def test_the_defaults_use_no_new_option_so_fingerprints_and_train_json_stay_as_they_were():
    from harness import train_settings

    settings = train_settings()
    assert fit_module._recipe(COMBO, settings) == {}
    assert settings.label_smoothing == 0
    assert fit_module._schedule(COMBO, None, settings)(7) == COMBO["lr"]


def test_the_recipe_trains_with_adamw_cosine_and_label_smoothing_and_records_them(shards, tmp_path):
    from hemaflow.train.schedules import warmup_cosine

    combo = {**COMBO, "model": "cell_resnet", "optimizer": "adamw", "lr": 2e-3, "lr_policy": "cosine"}
    cosine = {"warmup_epochs": 1, "floor": 0.01}
    info = train(shards, tmp_path, combo=combo, max_epochs=3, weight_decay=0.05, label_smoothing=0.1, cosine=cosine)
    history = pd.read_csv(tmp_path / "history.csv")
    assert history["lr"].tolist() == pytest.approx([warmup_cosine(2e-3, 3, 1, 0.01)(e) for e in range(3)])
    assert history["lr"].tolist() == pytest.approx([1e-3, 2e-3, 2e-5])
    assert info["weight_decay"] == 0.05 and info["cosine"] == cosine and info["label_smoothing"] == 0.1
    assert "onecycle" not in info
    model = keras.models.load_model(tmp_path / "model.keras")
    assert isinstance(model.optimizer, keras.optimizers.AdamW) and model.loss.label_smoothing == pytest.approx(0.1)
    assert info["status"] == "ok"


# ------------------------------------------------------------------ train.speed


def test_cached_validation_batches_are_the_streamed_ones(shards):
    """make_dataset(cache=True): the same batches, pass after pass, as decoding every time."""
    kwargs = dict(channels=4, n_classes=2, batch_size=16, shuffle=False, seed=0, with_ids=True)
    streamed = [tuple(t.numpy() for t in batch) for batch in make_dataset(shards["val"], **kwargs)]
    cached = make_dataset(shards["val"], cache=True, **kwargs)
    for _ in range(2):
        for a, b in zip(streamed, [tuple(t.numpy() for t in batch) for batch in cached], strict=True):
            assert all(np.array_equal(x, y) for x, y in zip(a, b))
    with pytest.raises(ValueError, match="unshuffled"):
        make_dataset(shards["val"], **{**kwargs, "shuffle": True, "cache": True})


def test_cached_epochs_show_every_record_once_per_epoch_in_an_order_fixed_by_its_seed(shards):
    from hemaflow.train.input import cached_epochs, decoded_records

    def ids(seeds):
        decoded = decoded_records(shards["train"], channels=4, n_classes=2, size=SIZE, with_ids=True)
        return ids_in_order(cached_epochs(decoded, seeds, 64, 16))

    both = ids([5, 6])
    every = sorted(f"img{i:04d}" for i in range(64))
    assert sorted(both[:64]) == sorted(both[64:]) == every and both[:64] != both[64:]
    assert ids([6]) == both[64:]  # epoch 2 alone (a resumed run) sees what it saw after epoch 1


def history_of(out_dir) -> pd.DataFrame:
    """history.csv without its wall-time columns (they differ from run to run)."""
    return pd.read_csv(out_dir / "history.csv").drop(columns=fit_module.TIME_COLUMNS)


def test_cache_val_trains_exactly_the_weights_of_the_default(shards, trained, tmp_path):
    info = train(shards, tmp_path, seed=11, speed={"cache": "val"}, **TRIANGULAR)
    pd.testing.assert_frame_equal(history_of(tmp_path), history_of(trained[0]))
    assert all(np.array_equal(x, y) for x, y in zip(weights_of(tmp_path), weights_of(trained[0])))
    assert info["speed"] == {"cache": "val"} and "speed" not in trained[1]


@pytest.mark.parametrize("speed", [{"cache": "all"}], ids=["cache-all"])
def test_each_speed_option_trains_identical_weights_twice_and_resumes_bit_identically(shards, trained, tmp_path, speed):
    """Uninterrupted, then killed after epoch 2 of 3 and rerun: the same history and weights, so
    the option is deterministic (same params + seed + threads) and its resume exact."""
    a = train(shards, tmp_path / "a", seed=11, speed=speed, **TRIANGULAR)
    with pytest.raises(RuntimeError, match="simulated kill"):
        train(shards, tmp_path / "b", seed=11, speed=speed, callbacks=[Interrupt(after=2)], **TRIANGULAR)
    record = Record()
    b = train(shards, tmp_path / "b", seed=11, speed=speed, callbacks=[record], **TRIANGULAR)
    assert record.epochs == [2]  # resumed
    pd.testing.assert_frame_equal(history_of(tmp_path / "a"), history_of(tmp_path / "b"))
    assert all(np.array_equal(x, y) for x, y in zip(weights_of(tmp_path / "a"), weights_of(tmp_path / "b")))
    assert a["speed"] == b["speed"] == speed
    if speed.get("cache") == "all":  # another data order than streaming, so other weights than the default's
        assert history_of(tmp_path / "a")["loss"].tolist() != history_of(trained[0])["loss"].tolist()


def test_a_checkpoint_of_other_speed_options_is_not_resumed(shards, tmp_path):
    """Epochs streamed continued from the cache would see an order neither run sees alone."""
    with pytest.raises(RuntimeError, match="simulated kill"):
        train(shards, tmp_path, callbacks=[Interrupt(after=1)])
    record = Record()
    train(shards, tmp_path, callbacks=[record], speed={"cache": "all"})
    assert record.epochs == [0, 1]  # started afresh
