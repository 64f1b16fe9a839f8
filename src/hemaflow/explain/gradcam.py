"""Grad-CAM of the predicted class: which layers it reads, the heat maps, their overlays."""

# Binary models have one sigmoid unit, P(class 1): Grad-CAM scores class 0 by the negated logit
# (seed 003's explainer explained class 0 whatever the prediction; every function here takes the class).

from __future__ import annotations

import numpy as np


def feature_layers(model) -> list[str]:
    """Names of the layers whose outputs Grad-CAM reads: the last 4-D map of each branch, i.e.
    what each global pooling or Flatten layer takes, after the branch's last BatchNorm,
    activation or residual add (a backbone's last conv is pre-activation: it misses them)."""
    import keras

    if isinstance(model, keras.Sequential):
        pooling = (keras.layers.GlobalAveragePooling2D, keras.layers.GlobalMaxPooling2D, keras.layers.Flatten)
        names = [prev.name for prev, layer in zip(model.layers, model.layers[1:]) if isinstance(layer, pooling)][:1]
    else:
        # Back from the head's input through the non-spatial layers (dense, dropout, concatenate,
        # pooling) to the first 4-D tensors: one per branch. Global pooling inside a block
        # (squeeze-and-excitation) is not on that path.
        names, todo = [], [model.layers[-1].input]
        while todo:
            tensor = todo.pop()
            operation, node_index, _ = tensor._keras_history
            if len(tensor.shape) == 4:
                names += [] if operation.name in names else [operation.name]
            else:
                todo.extend(reversed(operation._inbound_nodes[node_index].input_tensors))
        names.sort(key=[layer.name for layer in model.layers].index)  # model order
    if not names:
        raise ValueError(f"model {model.name!r} has no spatial map before a global pooling or Flatten layer: "
                         "Grad-CAM needs one (use LIME instead)")  # fmt: skip
    return names


def _class_logits(model, layers: list[str]):
    """A function images -> (the maps of `layers`, class logits), as in the Keras Grad-CAM example.

    With a sigmoid or softmax Dense head the logits are its pre-activation (gradients of a
    saturated probability vanish); a sigmoid's logit z becomes [-z, z], so class 0 is scored
    by -z. Other heads fall back to the class probabilities. Logits are float32 even under
    mixed precision (float16 maps, float32 head).
    """
    import keras
    import tensorflow as tf

    head = model.layers[-1]
    if isinstance(model, keras.Sequential):
        # A Sequential model loaded from model.keras has no symbolic head.input to build a
        # sub-model from (seed 002/003/004's networks): run its layers in order instead.
        def features(images):
            x, maps = images, []
            for lyr in model.layers[:-1]:
                x = lyr(x, training=False)
                maps += [x] if lyr.name in layers else []
            return maps, x

    else:
        outputs = [model.get_layer(name).output for name in layers]
        feature_model = keras.Model(model.inputs, [*outputs, head.input])

        def features(images):
            *maps, x = feature_model(images, training=False)
            return maps, x

    def float32_features(images):  # the maps as they are: gradients are taken with respect to them
        maps, x = features(images)
        return maps, tf.cast(x, tf.float32)

    softmax_or_sigmoid = (keras.activations.sigmoid, keras.activations.softmax)
    if isinstance(head, keras.layers.Dense) and head.activation in softmax_or_sigmoid:

        def logits(images):
            maps, x = float32_features(images)
            z = tf.matmul(x, tf.cast(head.kernel, tf.float32)) + tf.cast(head.bias, tf.float32)
            return maps, tf.concat([-z, z], axis=1) if z.shape[-1] == 1 else z

        return logits

    def probabilities(images):
        maps, x = float32_features(images)
        p = tf.cast(head(x, training=False), tf.float32)
        return maps, tf.concat([1.0 - p, p], axis=1) if p.shape[-1] == 1 else p

    return probabilities


def gradcam(model, images: np.ndarray, class_index: np.ndarray, *, layers: list[str] | None = None) -> np.ndarray:
    """Grad-CAM of class `class_index[i]` for each image: (N, H, W) heat maps in [0, 1].

    images (N, H, W, C) float32 in [0, 1]. The channel weights are the gradients of the class
    logit averaged over each map; the ReLU of a branch's weighted map is resized to the image
    (bilinear). Several branches (seed 000's model_4/model_5: one per resolution) are added
    with weights h·w / (H·W), so that each pixel carries its share of the evidence whatever the
    branch's resolution (behind global average pooling a branch adds the sum of its map to the
    logit). The sum is divided by its maximum (all zero when no region supports the class).
    `layers` default to feature_layers(model).
    """
    import tensorflow as tf

    images = tf.convert_to_tensor(np.asarray(images, dtype=np.float32))
    index = np.broadcast_to(np.asarray(class_index, dtype=np.int64), (images.shape[0],))
    scores_of = _class_logits(model, layers or feature_layers(model))
    with tf.GradientTape() as tape:
        maps, logits = scores_of(images)
        # each image's score depends on that image only, so one gradient of the sum gives all
        score = tf.reduce_sum(tf.gather(logits, index, axis=1, batch_dims=1))
    side = images.shape[1:3]
    cam = 0.0
    for conv, grads in zip(maps, tape.gradient(score, maps)):
        conv, grads = tf.cast(conv, tf.float32), tf.cast(grads, tf.float32)  # float16 under mixed precision
        weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
        positive = tf.nn.relu(tf.reduce_sum(conv * weights, axis=-1, keepdims=True))
        share = conv.shape[1] * conv.shape[2] / (side[0] * side[1])
        cam += tf.image.resize(positive, side, method="bilinear") * share
    cam = cam[..., 0].numpy()
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
