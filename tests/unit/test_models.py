import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import pytest  # noqa: E402

from hemaflow.train.models import REGISTRY, build_model  # noqa: E402

# Seed 000, section "network architectures": trainable parameters at (256, 256, 4), 2 classes.
PAPER_PARAMS = {"model_1": 1_376_545, "model_2": 1_287_729, "model_4": 3_139_937, "model_5": 2_963_169}


def trainable(model: keras.Model) -> int:
    return sum(int(keras.ops.size(w)) for w in model.trainable_weights)


@pytest.mark.parametrize("name", sorted(PAPER_PARAMS))
def test_seed_000_models_have_the_papers_parameter_counts(name):
    assert trainable(build_model(name, (256, 256, 4), 2)) == PAPER_PARAMS[name]


def test_seed_000_layer_names_follow_appendix_b():
    names = {layer.name for layer in build_model("model_5", (256, 256, 4), 2).layers}
    # Branch numbering in the seed is irregular (branch 2 pools are mp2, mp3); keep it so.
    expected = {"branch_1", "branch_1_c0a", "branch_1_mp1", "branch_1_mp3", "branch_2_mp2", "branch_2_c2b",
                "branch_3", "branch_3_mp3", "branch_3_c1b", "branch_0_c4b", "branch_0_gap", "cat",
                "dense_0", "drop_0", "dense_2", "dense_final"}  # fmt: skip
    assert expected <= names
    names4 = {layer.name for layer in build_model("model_4", (256, 256, 4), 2).layers}
    assert {"branch_1_c1a", "branch_1_c4b", "branch_1_mp3", "cat"} <= names4
    assert "branch_1_c0a" not in names4


@pytest.mark.parametrize("name", sorted(REGISTRY))
@pytest.mark.parametrize(("shape", "n_classes"), [((48, 48, 4), 2), ((32, 32, 3), 5)])
def test_every_model_builds_small_with_the_right_head(name, shape, n_classes):
    if min(shape[:2]) < REGISTRY[name].min_side:
        with pytest.raises(ValueError, match=rf"{name}.*{REGISTRY[name].min_side}x"):
            build_model(name, shape, n_classes)
        return
    model = build_model(name, shape, n_classes)
    head = model.layers[-1]
    assert model.input_shape == (None, *shape)
    if n_classes == 2:
        assert model.output_shape == (None, 1) and head.activation.__name__ == "sigmoid"
    else:
        assert model.output_shape == (None, n_classes) and head.activation.__name__ == "softmax"


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_min_side_is_exactly_the_smallest_input_that_works(name):
    side = REGISTRY[name].min_side
    build_model(name, (side, side, 3), 2)
    with pytest.raises(ValueError):  # Keras itself: a pooling output would be empty
        REGISTRY[name]((side - 1, side - 1, 3), 2, 0.25)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_dropout_argument_sets_every_dropout_layer(name):
    model = build_model(name, (48, 48, 3), 2, dropout=0.4)
    if REGISTRY[name].backbone:  # the head's; the application's own (stochastic depth) stay as built
        assert model.get_layer("backbone_drop").rate == 0.4
        return
    rates = [layer.rate for layer in model.layers if isinstance(layer, keras.layers.Dropout)]
    assert all(r == 0.4 for r in rates)
    assert bool(rates) == (name in {"model_1", "model_2", "model_4", "model_5", "alexnet", "matek_cnn", "cell_resnet"})


def test_alexnet_keeps_the_original_stem_for_large_inputs():
    big = build_model("alexnet", (227, 227, 3), 2)
    assert big.layers[0].strides == (4, 4) and big.layers[0].kernel_size == (11, 11)
    assert big.layers[0].output.shape[1] == 55  # AlexNet's 55x55 first feature map


def test_unknown_model_names_the_known_ones():
    with pytest.raises(ValueError, match="train.grid.model.*model_1"):
        build_model("resnet", (48, 48, 3), 2)


def test_cell_resnet_trains_a_step_and_grad_cam_reads_its_last_map():
    """hemaflow's small ResNet: BatchNorm residual blocks at 32/64/128 filters, a training step
    changes its weights and moves BatchNorm's statistics, and Grad-CAM's layer is the last 4-D map
    (the last block's output, 1/8 of the input side)."""
    import numpy as np

    from hemaflow.explain.gradcam import feature_layers

    model = build_model("cell_resnet", (48, 48, 3), 4, dropout=0.25)
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    adds = [layer for layer in model.layers if isinstance(layer, keras.layers.Add)]
    assert len(adds) == 6 and len(norms) == 1 + 6 * 2 + 2  # stem, 2 per block, 2 projections
    assert [model.get_layer(f"res{s}b_out").output.shape[-1] for s in (1, 2, 3)] == [32, 64, 128]
    spatial = [layer.name for layer in model.layers if len(layer.output.shape) == 4]
    assert feature_layers(model) == [spatial[-1]] == ["res3b_out"]
    assert model.get_layer("res3b_out").output.shape[1:3] == (6, 6)

    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="categorical_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.random((8, 48, 48, 3), dtype=np.float32)
    y = keras.utils.to_categorical(rng.integers(0, 4, 8), 4)
    before = [w.copy() for w in model.get_weights()]
    loss = float(model.train_on_batch(x, y))
    assert np.isfinite(loss)
    changed = [not np.array_equal(a, b) for a, b in zip(before, model.get_weights())]
    assert all(changed[i] for i, v in enumerate(model.weights) if "moving_mean" in v.path)
    assert sum(changed) > len(changed) // 2
