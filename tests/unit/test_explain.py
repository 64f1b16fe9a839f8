import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from hemaflow import explain  # noqa: E402

SIDE = 16
SQUARE = (slice(2, 8), slice(2, 8))  # the bright square, top left


def square_detector(head: str = "sigmoid") -> keras.Model:
    """A model with a known spatial response: conv filter 0 fires on bright pixels, filter 1 on
    dark ones; class 1 ("bright") is scored by filter 0, class 0 by filter 1 (the sigmoid head
    computes their difference)."""
    inp = keras.Input((SIDE, SIDE, 3))
    conv = keras.layers.Conv2D(2, 1, activation="relu", name="detect")(inp)
    gap = keras.layers.GlobalAveragePooling2D()(conv)
    units = 1 if head == "sigmoid" else 2
    out = keras.layers.Dense(units, activation=head, name="head")(gap)
    model = keras.Model(inp, out)
    third = np.full((1, 1, 3, 1), 1.0 / 3.0)
    model.get_layer("detect").set_weights([np.concatenate([third, -third], axis=-1), np.array([-0.5, 0.5])])
    # the bias puts the decision between a blank image (class 0) and one with the square (class 1)
    if head == "sigmoid":
        weights, bias = np.array([[50.0], [-50.0]]), np.array([21.5])
    else:
        weights, bias = np.array([[-25.0, 25.0], [25.0, -25.0]]), np.array([-10.75, 10.75])
    model.get_layer("head").set_weights([weights, bias])
    return model


def bright_square() -> np.ndarray:
    img = np.zeros((SIDE, SIDE, 3), np.float32)
    img[SQUARE] = 1.0
    return img


def in_square(heat: np.ndarray) -> np.ndarray:
    mask = np.zeros((SIDE, SIDE), bool)
    mask[SQUARE] = True
    return mask


# ------------------------------------------------------------------ class_scores


def test_class_scores_turn_one_sigmoid_into_two_columns_and_batch_like_one_by_one():
    model = square_detector()
    images = np.stack([bright_square(), np.zeros((SIDE, SIDE, 3), np.float32), bright_square() * 0.6])
    scores = explain.class_scores(model, images, batch_size=2)
    p = model.predict_on_batch(images)[:, 0]
    np.testing.assert_allclose(scores, np.column_stack([1 - p, p]), atol=1e-6)
    one_by_one = np.concatenate([explain.class_scores(model, im[None]) for im in images])
    np.testing.assert_allclose(scores, one_by_one, atol=1e-6)
    assert scores.argmax(1).tolist() == [1, 0, 1]


def test_class_scores_keep_softmax_columns():
    model = square_detector("softmax")
    images = np.stack([bright_square(), np.zeros((SIDE, SIDE, 3), np.float32)])
    scores = explain.class_scores(model, images)
    np.testing.assert_allclose(scores, model.predict_on_batch(images), atol=1e-6)
    assert scores.argmax(1).tolist() == [1, 0]


# ------------------------------------------------------------------ Grad-CAM


@pytest.mark.parametrize("head", ["sigmoid", "softmax"])
def test_gradcam_is_highest_on_the_square_for_class_1_and_elsewhere_for_class_0(head):
    model = square_detector(head)
    image = bright_square()[None]
    heat1 = explain.gradcam(model, image, np.array([1]))[0]
    heat0 = explain.gradcam(model, image, np.array([0]))[0]
    assert heat1.shape == (SIDE, SIDE)
    assert heat1.min() >= 0 and heat1.max() == pytest.approx(1.0)
    mask = in_square(heat1)
    assert heat1[mask].mean() > 0.9 and heat1[~mask].max() < 0.1
    # class 0 ("dark") is supported by the background, not the square: a different map
    assert heat0[~mask].mean() > 0.9 and heat0[mask].max() < 0.1


def test_gradcam_of_a_batch_explains_each_image_with_its_own_class():
    model = square_detector()
    shifted = np.zeros((SIDE, SIDE, 3), np.float32)
    shifted[9:15, 9:15] = 1.0
    images = np.stack([bright_square(), shifted])
    batch = explain.gradcam(model, images, np.array([1, 0]))
    np.testing.assert_allclose(batch[0], explain.gradcam(model, images[:1], np.array([1]))[0], atol=1e-6)
    np.testing.assert_allclose(batch[1], explain.gradcam(model, images[1:], np.array([0]))[0], atol=1e-6)
    assert batch[0][SQUARE].mean() > 0.9 and batch[1][9:15, 9:15].max() < 0.1


def test_gradcam_uses_the_last_conv_layer_and_needs_one():
    assert explain.last_conv_layer(square_detector()) == "detect"
    dense_only = keras.Sequential([keras.Input((4, 4, 3)), keras.layers.Flatten(), keras.layers.Dense(1)])
    with pytest.raises(ValueError, match="no convolutional layer"):
        explain.last_conv_layer(dense_only)


# ------------------------------------------------------------------ overlay


def test_overlay_composites_alpha_on_black_and_colours_the_heat():
    rgba = np.zeros((SIDE, SIDE, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[SQUARE + (3,)] = 255  # only the square is opaque
    heat = np.zeros((SIDE, SIDE))
    out = explain.overlay(rgba, heat, alpha=0.0)
    assert out.dtype == np.uint8 and out.shape == (SIDE, SIDE, 3)
    assert (out[SQUARE] == 200).all() and (out[~in_square(heat)] == 0).all()
    hot = explain.overlay(rgba, np.ones((4, 4)), alpha=1.0)  # heat resized to the image
    assert (hot == hot[0, 0]).all() and hot[0, 0, 0] > hot[0, 0, 2]  # jet at 1.0 is red
