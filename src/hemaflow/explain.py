"""Explanations of the predicted class: Grad-CAM heat maps, LIME superpixels, overlays.

Every function explains the class the model predicts (seed 003's LIME call explained
class 0 whatever the prediction). Binary models have one sigmoid unit, P(class 1):
`class_scores` turns it into [1 - p, p], and Grad-CAM scores class 0 by the negated logit.
"""

from __future__ import annotations

import numpy as np

# Perturbed images per model call: large enough to keep the CPU busy, small enough for memory.
BATCH_SIZE = 256


def class_scores(model, images: np.ndarray, *, batch_size: int = BATCH_SIZE) -> np.ndarray:
    """(N, n_classes) probabilities of float32 images in [0, 1]; a single sigmoid output becomes [1 - p, p]."""
    images = np.asarray(images, dtype=np.float32)
    width = model.output_shape[-1]
    parts = [np.asarray(model.predict_on_batch(images[i : i + batch_size]), dtype=np.float64)
             for i in range(0, len(images), batch_size)]
    raw = np.concatenate(parts) if parts else np.zeros((0, width))
    return np.column_stack([1.0 - raw[:, 0], raw[:, 0]]) if width == 1 else raw


def last_conv_layer(model) -> str:
    """Name of the model's last convolutional layer (4-D output), the layer Grad-CAM reads."""
    import keras

    convs = (keras.layers.Conv2D, keras.layers.SeparableConv2D, keras.layers.DepthwiseConv2D)
    for layer in reversed(model.layers):
        if isinstance(layer, convs):
            return layer.name
    raise ValueError(f"model {model.name!r} has no convolutional layer: Grad-CAM needs one (use LIME instead)")


def _class_logits(model, layer: str):
    """A function images -> (conv output, class logits), as in the Keras Grad-CAM example.

    With a sigmoid or softmax Dense head the logits are its pre-activation (gradients of a
    saturated probability vanish); a sigmoid's logit z becomes [-z, z], so class 0 is scored
    by -z. Other heads fall back to the class probabilities.
    """
    import keras
    import tensorflow as tf

    head = model.layers[-1]
    softmax_or_sigmoid = (keras.activations.sigmoid, keras.activations.softmax)
    if isinstance(head, keras.layers.Dense) and head.activation in softmax_or_sigmoid:
        grad_model = keras.Model(model.inputs, [model.get_layer(layer).output, head.input])

        def logits(images):
            conv, features = grad_model(images, training=False)
            z = tf.matmul(features, head.kernel) + head.bias
            return conv, tf.concat([-z, z], axis=1) if z.shape[-1] == 1 else z

        return logits
    grad_model = keras.Model(model.inputs, [model.get_layer(layer).output, model.outputs[0]])

    def probabilities(images):
        conv, p = grad_model(images, training=False)
        return conv, tf.concat([1.0 - p, p], axis=1) if p.shape[-1] == 1 else p

    return probabilities


def gradcam(model, images: np.ndarray, class_index: np.ndarray, *, layer: str | None = None) -> np.ndarray:
    """Grad-CAM of class `class_index[i]` for each image: (N, H, W) heat maps in [0, 1].

    images (N, H, W, C) float32 in [0, 1]. The channel weights are the gradients of the class
    logit averaged over the conv map of each image; the ReLU of the weighted map is resized
    to the image (bilinear) and divided by its maximum (all zero when no region supports the
    class). `layer` defaults to the last convolutional layer.
    """
    import tensorflow as tf

    images = tf.convert_to_tensor(np.asarray(images, dtype=np.float32))
    index = np.broadcast_to(np.asarray(class_index, dtype=np.int64), (images.shape[0],))
    scores_of = _class_logits(model, layer or last_conv_layer(model))
    with tf.GradientTape() as tape:
        conv, logits = scores_of(images)
        # each image's score depends on that image only, so one gradient of the sum gives all
        score = tf.reduce_sum(tf.gather(logits, index, axis=1, batch_dims=1))
    grads = tape.gradient(score, conv)
    weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
    cam = tf.nn.relu(tf.reduce_sum(conv * weights, axis=-1, keepdims=True))
    cam = tf.image.resize(cam, images.shape[1:3], method="bilinear")[..., 0].numpy()
    top = cam.reshape(len(cam), -1).max(axis=1).reshape(-1, 1, 1)
    return np.divide(cam, top, out=np.zeros_like(cam), where=top > 0).clip(0.0, 1.0)


def composite(image: np.ndarray) -> np.ndarray:
    """An image (H, W, 1|3|4) as float RGB in [0, 1], an alpha channel composited on black."""
    img = np.asarray(image)
    img = img.astype(np.float64) / 255.0 if img.dtype == np.uint8 else img.astype(np.float64)
    if img.ndim == 2:
        img = img[..., None]
    if img.shape[-1] == 4:
        img = img[..., :3] * img[..., 3:]
    elif img.shape[-1] == 1:
        img = np.repeat(img, 3, axis=-1)
    elif img.shape[-1] != 3:
        raise ValueError(f"image has {img.shape[-1]} channels; expected 1, 3 or 4 (RGBA)")
    return img.clip(0.0, 1.0)


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.4) -> np.ndarray:
    """(H, W, 3) uint8 RGB: the cell (alpha channel composited on black) with `heat` in the jet colour map.

    `heat` (values in [0, 1]) is resized to the image when their sizes differ.
    """
    from matplotlib import colormaps

    rgb = composite(image)
    heat = np.asarray(heat, dtype=np.float64)
    if heat.shape != rgb.shape[:2]:
        from skimage.transform import resize

        heat = resize(heat, rgb.shape[:2], order=1, mode="edge", anti_aliasing=False)
    coloured = colormaps["jet"](heat.clip(0.0, 1.0))[..., :3]
    return np.round(255.0 * ((1.0 - alpha) * rgb + alpha * coloured)).astype(np.uint8)
