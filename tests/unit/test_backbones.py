"""keras.applications backbones of the zoo: preprocessing inside, weights from a file, the
ImageNet-unreachable error, seed models refusing weights, and two-phase fine-tuning.
(Heads, min_side and dropout of every zoo model, backbones included: test_models.py.)"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import urllib.error  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from hemaflow.train.models import HEAD, build_model  # noqa: E402
from hemaflow.train.fit import warm_up_head  # noqa: E402

from harness import fit  # noqa: E402

SMALL = "mobilenetv3_small"


@pytest.fixture
def eager():
    """Training steps run eagerly: tracing a backbone's training graph takes tens of seconds on a
    shared CPU, more than the few steps these tests take."""
    tf.config.run_functions_eagerly(True)
    yield
    tf.config.run_functions_eagerly(False)


def backbone_weights(model):
    """The weights of `model`'s backbone layers: all but the head's (the only other weights)."""
    return [w for layer in model.layers if layer.name != HEAD for w in layer.get_weights()]


def tiny_data(n=8, side=32, channels=4, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((n, side, side, channels), dtype=np.float32)
    x[..., 3:] = (x[..., 3:] > 0.3).astype(np.float32)
    x[..., :3] *= x[..., 3:]  # transparent pixels are black, as preprocess.binarize_alpha makes them
    return x, (np.arange(n) % 2).astype(np.float32)[:, None]


def test_alpha_is_composited_onto_black_and_scaled_as_resnet_v2_expects():
    """ResNetV2's preprocess_input maps [0, 255] to [-1, 1]: the model's input [0, 1] -> 2x - 1."""
    model = build_model("resnet50v2", (32, 32, 4), 2)
    x, _ = tiny_data(2)
    first = keras.Model(model.inputs, model.get_layer("backbone_scale").output)
    expected = keras.applications.resnet_v2.preprocess_input(x[..., :3] * x[..., 3:] * 255.0)
    np.testing.assert_allclose(first(x).numpy(), expected, atol=1e-5)
    with pytest.raises(ValueError, match="3 channels.*got 1"):
        build_model("resnet50v2", (32, 32, 1), 2)


def test_smallest_backbone_trains_a_few_steps_and_saves(tmp_path, eager):
    keras.utils.set_random_seed(0)
    model = build_model(SMALL, (32, 32, 4), 2)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy")
    x, y = tiny_data(4)
    before = [w.copy() for w in model.get_weights()]
    history = model.fit(x, y, batch_size=2, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    model.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")  # built-in layers and ops only
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-6)


def test_weights_file_initialises_the_backbone(tmp_path):
    keras.utils.set_random_seed(1)
    app = keras.applications.MobileNetV3Small(include_top=False, weights=None, input_shape=(32, 32, 3), include_preprocessing=True)
    path = tmp_path / "mobilenetv3_small_notop.weights.h5"
    app.save_weights(path)
    keras.utils.set_random_seed(2)
    loaded = backbone_weights(build_model(SMALL, (32, 32, 4), 2, weights=str(path)))
    keras.utils.set_random_seed(2)
    fresh = backbone_weights(build_model(SMALL, (32, 32, 4), 2))
    saved = app.get_weights()
    assert len(loaded) == len(saved) and all(np.array_equal(a, b) for a, b in zip(loaded, saved))
    assert not all(np.array_equal(a, b) for a, b in zip(fresh, saved))
    with pytest.raises(FileNotFoundError, match="train.weights.*none, imagenet"):
        build_model(SMALL, (32, 32, 4), 2, weights=str(tmp_path / "missing.h5"))
    with pytest.raises(ValueError, match="train.weights.*does not fit resnet50v2"):
        build_model("resnet50v2", (32, 32, 4), 2, weights=str(path))


def test_from_scratch_batchnorm_follows_the_weights_and_pretrained_keeps_its_own(tmp_path):
    """MobileNetV3's BatchNorm momentum, 0.999, left a from-scratch run's inference constant
    (benchmarks/README.md, zoo accuracy); from scratch it is capped at 0.99, pretrained it stays."""

    def momenta(model):
        return {layer.momentum for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)}

    app = keras.applications.MobileNetV3Small(include_top=False, weights=None, input_shape=(32, 32, 3), include_preprocessing=True)
    path = tmp_path / "mobilenetv3_small_notop.weights.h5"
    app.save_weights(path)
    assert momenta(app) == {0.999}
    assert momenta(build_model(SMALL, (32, 32, 4), 2)) == {0.99}
    assert momenta(build_model(SMALL, (32, 32, 4), 2, weights=str(path))) == {0.999}
    assert momenta(build_model("efficientnetv2_b0", (32, 32, 3), 2)) == {0.9}  # a lower momentum is left alone
    model = build_model(SMALL, (32, 32, 4), 2)
    model.save(tmp_path / "model.keras")
    assert momenta(keras.models.load_model(tmp_path / "model.keras")) == {0.99}  # and it is saved


def test_unreachable_imagenet_weights_say_what_failed_and_the_fix(tmp_path, monkeypatch):
    """No network: Keras' own download path fails (urlretrieve raises as offline), nothing cached."""
    from keras.src.utils import file_utils

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setenv("HOME", str(tmp_path))  # an empty ~/.keras: no cached weights
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / ".keras"))
    monkeypatch.setattr(file_utils, "urlretrieve", offline)
    with pytest.raises(RuntimeError) as error:
        build_model(SMALL, (32, 32, 3), 2, weights="imagenet")
    message = str(error.value)
    assert "could not download the ImageNet weights of mobilenetv3_small" in message
    assert "name resolution" in message and "set train.weights to its path" in message


@pytest.mark.parametrize("weights", ["imagenet", "some/file.weights.h5"])
def test_seed_models_refuse_weights_naming_the_key(weights):
    with pytest.raises(ValueError, match=r"train.weights is .* model_1 is a seed-paper model.*train.weights: none"):
        build_model("model_1", (32, 32, 4), 2, weights=weights)


def test_two_phase_freezes_the_backbone_then_unfreezes_it(eager):
    keras.utils.set_random_seed(3)
    model = build_model(SMALL, (32, 32, 4), 2)
    x, y = tiny_data(4)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(4).repeat(2)
    backbone0 = [w.copy() for w in backbone_weights(model)]
    head0 = [w.copy() for w in model.get_layer(HEAD).get_weights()]
    losses = warm_up_head(model, {"optimizer": "adam", "lr": 1e-2}, ds, 2, 1, loss="binary_crossentropy")
    assert len(losses) == 2 and np.isfinite(losses).all()
    assert all(np.array_equal(a, b) for a, b in zip(backbone0, backbone_weights(model)))  # frozen
    assert not np.array_equal(head0[0], model.get_layer(HEAD).get_weights()[0])  # the head learnt
    # phase 2: every layer trainable again, so the backbone changes
    assert all(layer.trainable for layer in model.layers)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy")
    model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    assert not all(np.array_equal(a, b) for a, b in zip(backbone0, backbone_weights(model)))


def test_frozen_epochs_need_pretrained_weights(tmp_path):
    with pytest.raises(ValueError, match="train.fine_tune.frozen_epochs is 2 but train.weights is none"):
        fit(
            {"model": SMALL}, train_records=[], val_records=[], channels=4, size=32, n_classes=2, max_epochs=1,
            patience=1, cyclic={}, class_counts={0: 1, 1: 1}, n_val=1, fine_tune={"frozen_epochs": 2, "lr_factor": 0.1},
            seed=1, out_dir=tmp_path,
        )  # fmt: skip


@pytest.mark.parametrize("name", [SMALL, "resnet50v2", "efficientnetv2_b0", "convnext_tiny"])
def test_gradcam_reads_the_backbones_map_after_its_last_norm_and_activation(name):
    from hemaflow.explain import gradcam as G

    model = build_model(name, (32, 32, 4), 2)
    (layer,) = G.feature_layers(model)
    # the map global pooling takes: not a pre-activation conv (MobileNetV3 conv_1, EfficientNetV2
    # top_conv, ResNet50V2's last conv before its residual add and post-BN/ReLU)
    assert not isinstance(model.get_layer(layer), (keras.layers.Conv2D, keras.layers.DepthwiseConv2D))
    gap = model.get_layer("backbone_gap")
    assert model.get_layer(layer).output is gap.input and model.layers[model.layers.index(gap) - 1].name == layer
    if name != SMALL:
        return
    heat = G.gradcam(model, tiny_data(2)[0], np.array([0, 1]))
    assert heat.shape == (2, 32, 32) and np.isfinite(heat).all()
