"""Where training runs (train.accelerator, train.mixed_precision), and the fall-back to the CPU."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import logging  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from hemaflow.train.models import HEAD, build_model  # noqa: E402
from hemaflow.train.device import use_device  # noqa: E402


@pytest.fixture(autouse=True)
def float32_afterwards():
    yield
    keras.mixed_precision.set_global_policy("float32")


@pytest.mark.skipif(bool(tf.config.list_physical_devices("GPU")), reason="a GPU is visible (make setup GPU=1): no fall-back to test")
def test_gpu_settings_on_a_cpu_only_machine_fall_back_to_float32_on_the_cpu(caplog):
    with caplog.at_level(logging.INFO, logger="hemaflow.train.device"):
        chosen = use_device("gpu", True)
    assert (chosen["device"], chosen["precision"]) == ("CPU:0", "float32")
    assert "make setup GPU=1" in chosen["device_note"]
    messages = [r.getMessage() for r in caplog.records]
    assert any("needs a GPU" in m for m in messages) and any(m.startswith("training on CPU:0") for m in messages)
    assert keras.mixed_precision.global_policy().name == "float32"


@pytest.fixture
def one_gpu(monkeypatch):
    """TensorFlow as it looks on a GPU node: one GPU listed; what the code hides or sets is recorded."""
    gpu = tf.config.PhysicalDevice(name="/physical_device:GPU:0", device_type="GPU")
    calls = {"hidden": [], "policy": []}
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: [gpu] if kind == "GPU" else [])
    monkeypatch.setattr(tf.config, "set_visible_devices", lambda devices, kind=None: calls["hidden"].append((devices, kind)))
    monkeypatch.setattr(tf.config.experimental, "get_device_details", lambda device: {"device_name": "Test GPU"})
    monkeypatch.setattr(keras.mixed_precision, "set_global_policy", calls["policy"].append)
    return calls


def test_with_a_gpu_visible_gpu_trains_there_in_mixed_precision(one_gpu):
    assert use_device("gpu", True) == {"device": "GPU:0", "precision": "mixed_float16", "device_note": None}
    assert one_gpu == {"hidden": [], "policy": ["mixed_float16"]}
    assert use_device("gpu", False)["precision"] == "float32"


def test_cpu_hides_a_visible_gpu_so_every_machine_trains_the_same_model(one_gpu):
    chosen = use_device("cpu", True)
    assert (chosen["device"], chosen["precision"]) == ("CPU:0", "float32")
    assert one_gpu["hidden"] == [([], "GPU")] and one_gpu["policy"] == ["float32"]
    assert "1 GPU(s) visible" in chosen["device_note"]


@pytest.mark.parametrize("n_classes", [2, 3])
def test_under_mixed_precision_the_head_stays_float32(n_classes):
    keras.mixed_precision.set_global_policy("mixed_float16")
    model = build_model("model_1", (32, 32, 4), n_classes, 0.25)
    conv = next(layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D))
    assert conv.compute_dtype == "float16"  # the policy reached the body...
    assert model.get_layer(HEAD).compute_dtype == "float32" and model.output.dtype == "float32"  # ...not the head
    p = model.predict(np.random.default_rng(0).random((3, 32, 32, 4), np.float32), verbose=0)
    assert p.dtype == np.float32 and np.isfinite(p).all()
