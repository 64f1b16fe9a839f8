"""The model zoo: every architecture from the seed papers, built by name."""

# Seed 000 (Appendix B): `model_1`, `model_2`, `model_4`, `model_5`, layer for layer and with
# the printed layer names. Seed 004: `breen_cnn`. Seed 002 (5.3.1-5.3.3): `basic_cnn`,
# `alexnet`, `thanh_cnn`. Seed 003: `matek_cnn`. hemaflow's own: `cell_resnet`, a small ResNet
# for cell crops. Every builder takes
# (input_shape, n_classes, dropout); the head is a sigmoid unit for two classes and a softmax
# otherwise, so the same architecture serves the binary and the multi-class task.
#
# Backbones the field uses today (keras.applications): `resnet50v2`, `efficientnetv2_b0`,
# `mobilenetv3_small`, `convnext_tiny`, from scratch or with ImageNet / local weights
# (train.weights); see `_backbone`.

from __future__ import annotations

import os
from collections.abc import Callable

import keras
from keras import layers

Builder = Callable[[tuple[int, int, int], int, float], keras.Model]
REGISTRY: dict[str, Builder] = {}
HEAD = "dense_final"  # the classification layer's name in every model (fine-tuning trains it alone first)


def register(name: str, min_side: int, backbone: bool = False):
    """Add a builder to REGISTRY; `min_side` is the smallest input side it can reduce.
    Backbone builders also take `weights` (see build_model)."""

    def add(builder):
        builder.min_side = min_side
        builder.backbone = backbone
        REGISTRY[name] = builder
        return builder

    return add


def is_backbone(name: str) -> bool:
    return name in REGISTRY and REGISTRY[name].backbone


def build_model(name: str, input_shape, n_classes: int, dropout: float = 0.25, weights: str = "none") -> keras.Model:
    """Build registry model `name` for `input_shape` (H, W, C) and `n_classes` classes.

    `weights` (train.weights): `none` (random initialisation), and for backbones also `imagenet`
    or the path of a weights file of the keras.applications backbone without its top.
    """
    if name not in REGISTRY:
        raise ValueError(f"unknown model {name!r} (train.grid.model); known models: {', '.join(sorted(REGISTRY))}")
    if n_classes < 2:
        raise ValueError(f"{name}: n_classes must be at least 2, got {n_classes}")
    builder = REGISTRY[name]
    if weights != "none" and not builder.backbone:
        backbones = ", ".join(n for n in sorted(REGISTRY) if REGISTRY[n].backbone)
        raise ValueError(
            f"train.weights is {weights!r} but {name} is a seed-paper model, always trained from scratch; "
            f"set train.weights: none, or list only backbones ({backbones}) in train.grid.model"
        )
    h, w, _ = input_shape
    if min(h, w) < builder.min_side:
        raise ValueError(
            f"{name} needs inputs of at least {builder.min_side}x{builder.min_side} pixels, "
            f"got {h}x{w}; raise preprocess.size or pick another model"
        )
    if builder.backbone:
        return builder(tuple(input_shape), n_classes, dropout, weights=weights)
    return builder(tuple(input_shape), n_classes, dropout)


def _head(n_classes: int):
    # float32 whatever the global policy: under mixed_float16 (train.mixed_precision) the
    # probabilities and the loss stay in full precision, as Keras' mixed-precision guide advises.
    if n_classes == 2:
        return layers.Dense(1, activation="sigmoid", name=HEAD, dtype="float32")
    return layers.Dense(n_classes, activation="softmax", name=HEAD, dtype="float32")


# ------------------------------------------------------------------ seed 000, Appendix B


def _branch(x, b: int, filters, conv_from: int, pool_from: int, kernel: int = 3, convs: int = 2):
    """Conv units of one branch (2x2 max pool between units), then global average pooling.

    conv_from/pool_from reproduce the seed's layer numbering, which differs per branch.
    """
    for i, f in enumerate(filters):
        if i:
            x = layers.MaxPooling2D((2, 2), name=f"branch_{b}_mp{pool_from + i - 1}")(x)
        for suffix in "ab"[:convs]:
            x = layers.Conv2D(
                f, (kernel, kernel), activation="relu", padding="same", name=f"branch_{b}_c{conv_from + i}{suffix}"
            )(x)
    return layers.GlobalAveragePooling2D(name=f"branch_{b}_gap")(x)


def _dense_stage(x, units: int, dropout: float, n_classes: int):
    x = layers.Dense(units, activation="relu", name="dense_0")(x)
    x = layers.Dropout(dropout, name="drop_0")(x)
    x = layers.Dense(units, activation="relu", name="dense_1")(x)
    x = layers.Dropout(dropout, name="drop_1")(x)
    x = layers.Dense(units, activation="relu", name="dense_2")(x)
    return _head(n_classes)(x)


@register("model_1", min_side=16)
def model_1(input_shape, n_classes, dropout):
    """Pairs of 3x3 convs + 2x2 max pool, filters doubling 16..256, GAP, 3x256 dense."""
    inp = keras.Input(input_shape)
    m0 = _branch(inp, 0, [16, 32, 64, 128, 256], 0, 0)
    return keras.Model(inp, _dense_stage(m0, 256, dropout, n_classes), name="model_1")


@register("model_2", min_side=16)
def model_2(input_shape, n_classes, dropout):
    """Model 1 with one 5x5 conv per unit instead of two 3x3."""
    inp = keras.Input(input_shape)
    m0 = _branch(inp, 0, [16, 32, 64, 128, 256], 0, 0, kernel=5, convs=1)
    return keras.Model(inp, _dense_stage(m0, 256, dropout, n_classes), name="model_2")


@register("model_4", min_side=16)
def model_4(input_shape, n_classes, dropout):
    """Model 1's branch plus a half-resolution branch (2x2 average pool), 3x512 dense."""
    inp = keras.Input(input_shape)
    m0 = _branch(inp, 0, [16, 32, 64, 128, 256], 0, 0)
    x1 = layers.AveragePooling2D((2, 2), name="branch_1")(inp)
    m1 = _branch(x1, 1, [32, 64, 128, 256], 1, 1)
    x = layers.Concatenate(name="cat")([m0, m1])
    return keras.Model(inp, _dense_stage(x, 512, dropout, n_classes), name="model_4")


@register("model_5", min_side=16)
def model_5(input_shape, n_classes, dropout):
    """Four branches at full, 1/2, 1/4 and 1/8 resolution, filters capped at 128, 3x512 dense."""
    inp = keras.Input(input_shape)
    m0 = _branch(inp, 0, [16, 32, 64, 128, 128], 0, 0)
    x1 = layers.AveragePooling2D((2, 2), name="branch_1")(inp)
    m1 = _branch(x1, 1, [32, 64, 128, 128], 0, 1)
    x2 = layers.AveragePooling2D((4, 4), name="branch_2")(inp)
    m2 = _branch(x2, 2, [64, 128, 128], 0, 2)
    x3 = layers.AveragePooling2D((8, 8), name="branch_3")(inp)
    m3 = _branch(x3, 3, [128, 128], 0, 3)
    x = layers.Concatenate(name="cat")([m0, m1, m2, m3])
    return keras.Model(inp, _dense_stage(x, 512, dropout, n_classes), name="model_5")


# ------------------------------------------------------------------ seeds 002, 003, 004


def _sequential(name, input_shape, stack, n_classes):
    return keras.Sequential([keras.Input(input_shape), *stack, _head(n_classes)], name=name)


@register("breen_cnn", min_side=10)
def breen_cnn(input_shape, n_classes, dropout):
    """Seed 004: Conv32 3x3, max pool, Conv32 3x3, max pool, Dense 64 (Keras' default valid padding)."""
    stack = [
        layers.Conv2D(32, (3, 3), activation="relu"),
        layers.MaxPooling2D((2, 2)),
        layers.Conv2D(32, (3, 3), activation="relu"),
        layers.MaxPooling2D((2, 2)),
        layers.Flatten(),
        layers.Dense(64, activation="relu"),
    ]
    return _sequential("breen_cnn", input_shape, stack, n_classes)


@register("basic_cnn", min_side=22)
def basic_cnn(input_shape, n_classes, dropout):
    """Seed 002 5.3.1: three 3x3/1 convs of 128 filters, each followed by 2x2 max pooling; FC head."""
    stack = []
    for _ in range(3):
        stack += [layers.Conv2D(128, (3, 3), activation="relu"), layers.MaxPooling2D((2, 2))]
    return _sequential("basic_cnn", input_shape, [*stack, layers.Flatten()], n_classes)


@register("alexnet", min_side=15)
def alexnet(input_shape, n_classes, dropout):
    """Seed 002 5.3.2: AlexNet's 5 convs, 3 overlapping 3x3/2 max pools and 2 dropout FC layers.

    Inputs of 128 px and more get the original stem (11x11/4, widths 96-256-384-384-256,
    FC 4096). Smaller inputs, such as 48 px cells, would shrink to 10 px before the first
    pooling, so the stem becomes 5x5/1 and widths and FC units are quartered
    (24-64-96-96-64, FC 1024): the same depth and pooling pattern at a CPU-sized cost.
    """
    small = min(input_shape[:2]) < 128
    w1, w2, w3, w4, w5 = (24, 64, 96, 96, 64) if small else (96, 256, 384, 384, 256)
    stem = (
        layers.Conv2D(w1, (5, 5), padding="same", activation="relu")
        if small
        else layers.Conv2D(w1, (11, 11), strides=4, activation="relu")
    )
    fc = 1024 if small else 4096
    stack = [
        stem,
        layers.MaxPooling2D((3, 3), strides=2),
        layers.Conv2D(w2, (5, 5), padding="same", activation="relu"),
        layers.MaxPooling2D((3, 3), strides=2),
        layers.Conv2D(w3, (3, 3), padding="same", activation="relu"),
        layers.Conv2D(w4, (3, 3), padding="same", activation="relu"),
        layers.Conv2D(w5, (3, 3), padding="same", activation="relu"),
        layers.MaxPooling2D((3, 3), strides=2),
        layers.Flatten(),
        layers.Dense(fc, activation="relu"),
        layers.Dropout(dropout),
        layers.Dense(fc, activation="relu"),
        layers.Dropout(dropout),
    ]
    return _sequential("alexnet", input_shape, stack, n_classes)


@register("thanh_cnn", min_side=36)
def thanh_cnn(input_shape, n_classes, dropout):
    """Seed 002 5.3.3 (Thanh et al. 2018): 5x5/1 convs of 16, 32, 64 filters, no padding,
    each followed by 2x2/2 max pooling; one 128-unit FC layer (width not given in the seed)."""
    stack = []
    for f in (16, 32, 64):
        stack += [layers.Conv2D(f, (5, 5), activation="relu"), layers.MaxPooling2D((2, 2), strides=2)]
    stack += [layers.Flatten(), layers.Dense(128, activation="relu")]
    return _sequential("thanh_cnn", input_shape, stack, n_classes)


@register("matek_cnn", min_side=16)
def matek_cnn(input_shape, n_classes, dropout):
    """Seed 003's baseline, the sequential CNN compared with ResNeXt by Matek et al.

    The seed shows it only as a figure, so the layers are a reconstruction: four blocks of
    3x3 conv (32, 64, 128, 128 filters, same padding) + 2x2 max pool, Flatten, Dense 256,
    Dropout, head.
    """
    stack = []
    for f in (32, 64, 128, 128):
        stack += [layers.Conv2D(f, (3, 3), padding="same", activation="relu"), layers.MaxPooling2D((2, 2))]
    stack += [layers.Flatten(), layers.Dense(256, activation="relu"), layers.Dropout(dropout)]
    return _sequential("matek_cnn", input_shape, stack, n_classes)


# ------------------------------------------------------------------ hemaflow's own


# cell_resnet's BatchNorm momentum. Small cell sets give few steps per epoch (1,152 images at batch
# 32: 36); with Keras' 0.99 the moving statistics that validation uses still lag the first epochs'
# weights by ~100 steps, and the first benchmark run scored chance on validation for 5 epochs
# (benchmarks/README.md, recipe). 0.9 follows within ~10 steps.
CELL_BN_MOMENTUM = 0.9


def _conv_bn(x, filters: int, strides: int, name: str, zero_gamma: bool = False):
    x = layers.Conv2D(filters, (3, 3), strides=strides, padding="same", use_bias=False,
                      kernel_initializer="he_normal", name=f"{name}_conv")(x)  # fmt: skip
    return layers.BatchNormalization(momentum=CELL_BN_MOMENTUM, gamma_initializer="zeros" if zero_gamma else "ones",
                                     name=f"{name}_bn")(x)  # fmt: skip


def _basic_block(x, filters: int, strides: int, name: str):
    """He et al.'s (2016) basic block: two 3x3 conv + BatchNorm, the input added back (through a
    1x1 strided conv + BatchNorm when the shape changes), ReLU."""
    shortcut = x
    if strides != 1 or x.shape[-1] != filters:
        shortcut = layers.Conv2D(filters, (1, 1), strides=strides, use_bias=False, kernel_initializer="he_normal",
                                 name=f"{name}_proj_conv")(x)  # fmt: skip
        shortcut = layers.BatchNormalization(momentum=CELL_BN_MOMENTUM, name=f"{name}_proj_bn")(shortcut)
    y = layers.Activation("relu", name=f"{name}_relu1")(_conv_bn(x, filters, strides, f"{name}_1"))
    # The block's last BatchNorm starts at zero (Goyal et al. 2017): each block begins as the
    # identity, which is what lets the network train from scratch at a high rate from step 1.
    y = _conv_bn(y, filters, 1, f"{name}_2", zero_gamma=True)
    return layers.Activation("relu", name=f"{name}_out")(layers.Add(name=f"{name}_add")([shortcut, y]))


@register("cell_resnet", min_side=9)
def cell_resnet(input_shape, n_classes, dropout):
    """hemaflow's compact residual CNN for 48-128 px cell crops, trained from scratch.

    A ResNet sized for cells: a 3x3/2 stem conv of 32 filters + BatchNorm + ReLU (no max pool: a
    64 px crop keeps 32 px maps), three stages of two basic residual blocks with 32, 64 and 128
    filters (the second and third stages halve the map), global average pooling, dropout, HEAD.
    BatchNorm everywhere (momentum CELL_BN_MOMENTUM), no bias before it, He initialisation, each
    block's last BatchNorm scale at zero. 0.70 M parameters; at 64 px about 2x matek_cnn's
    multiply-adds (the stem conv halves the map). Grad-CAM reads `res3b_out`, the last block's
    output (hemaflow.explain.gradcam.feature_layers).
    """
    if min(input_shape[:2]) < 9:
        # Same padding builds on any size, but below 9 px the last map (1/8 of the side, rounded
        # up) is 1x1: nothing left for Grad-CAM to localise.
        raise ValueError(f"cell_resnet needs inputs of at least 9x9 pixels, got {input_shape[0]}x{input_shape[1]}")
    inp = keras.Input(input_shape)
    x = layers.Activation("relu", name="stem_relu")(_conv_bn(inp, 32, 2, "stem"))
    for stage, (filters, strides) in enumerate(((32, 1), (64, 2), (128, 2)), start=1):
        x = _basic_block(x, filters, strides, f"res{stage}a")
        x = _basic_block(x, filters, 1, f"res{stage}b")
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dropout(dropout, name="drop")(x)
    return keras.Model(inp, _head(n_classes)(x), name="cell_resnet")


# ------------------------------------------------------------------ keras.applications backbones


def freeze_batchnorm(model: keras.Model) -> int:
    """Keep every BatchNormalization layer of `model` (nested ones too) in inference mode while
    the rest fine-tunes; returns how many. Keras runs a BatchNormalization layer whose trainable
    is False in inference mode: its moving statistics stay those of the pretrained weights, which
    small fine-tuning batches would otherwise overwrite (Keras' transfer-learning guide)."""
    norms = [layer for layer in model._flatten_layers(include_self=False) if isinstance(layer, layers.BatchNormalization)]
    for layer in norms:
        layer.trainable = False
    return len(norms)


def _backbone(name: str, application, to_expected, min_side: int = 32, **options) -> None:
    """Register backbone `name`: keras.applications `application` without its top, then global
    average pooling, dropout and the zoo's head, in one flat model (Grad-CAM reads the map global pooling takes).

    The pipeline feeds float images in [0, 1] with 3 channels (RGB) or 4 (background `alpha`).
    Four channels are composited onto black (RGB x alpha), so the backbone sees RGB as ImageNet
    weights expect (the pipeline's alpha is 0 or 1 and transparent pixels are already black:
    this equals dropping alpha). `to_expected` maps [0, 1] to the value range the application
    expects; `options` (e.g. include_preprocessing=True) add its own preprocessing inside it.
    """

    @register(name, min_side=min_side, backbone=True)
    def build(input_shape, n_classes, dropout, *, weights="none"):
        inp = keras.Input(input_shape)
        channels = input_shape[-1]
        if channels not in (3, 4):
            raise ValueError(f"{name} needs RGB (3 channels) or RGBA (4) images, got {channels} channels")
        rgb = inp[..., :3] * inp[..., 3:] if channels == 4 else inp
        features = _application(name, application, to_expected(rgb), weights, **options).output
        x = layers.GlobalAveragePooling2D(name="backbone_gap")(features)
        x = layers.Dropout(dropout, name="backbone_drop")(x)
        return keras.Model(inp, _head(n_classes)(x), name=name)

    build.__doc__ = f"keras.applications.{application.__name__} (include_top=False) + GAP, dropout, head."


def _application(name: str, application, x, weights: str, **options) -> keras.Model:
    """The application built on tensor `x`, with `weights` (none, imagenet or a file path).
    Its input_shape too: only then does Keras check its minimum input side (32)."""
    options["input_shape"] = tuple(x.shape[1:])
    if weights == "imagenet":
        try:
            return application(include_top=False, weights="imagenet", input_tensor=x, **options)
        except Exception as e:  # Keras raises a bare Exception ("URL fetch failure ...") or an OSError
            if not (isinstance(e, OSError) or "fetch failure" in str(e)):
                raise
            raise RuntimeError(
                f"train.weights: imagenet: Keras could not download the ImageNet weights of {name} "
                f"({e}). On a machine with internet run "
                f"python -c \"import keras; keras.applications.{application.__name__}(include_top=False)\" "
                "which saves them under ~/.keras/models/, copy that *_notop.h5 file here and set "
                "train.weights to its path (or use train.weights: none to train from scratch)"
            ) from e
    if weights == "none":
        model = application(include_top=False, weights=None, input_tensor=x, **options)
        # From scratch, BatchNorm's moving statistics must follow weights that change fast. With
        # MobileNetV3's momentum of 0.999 they still reflect the first steps after a thousand,
        # and inference (validation, evaluation) sees a constant output: the run is marked
        # diverged although training accuracy rises (benchmarks/README.md, zoo accuracy). Keras'
        # default, 0.99, forgets in ~100 steps; pretrained weights keep the architecture's own.
        for layer in model.layers:
            if isinstance(layer, layers.BatchNormalization) and layer.momentum > FROM_SCRATCH_BN_MOMENTUM:
                layer.momentum = FROM_SCRATCH_BN_MOMENTUM
        return model
    if not os.path.isfile(weights):
        raise FileNotFoundError(
            f"train.weights: {weights!r} is not a file; allowed values are none, imagenet or the path "
            f"of a weights file (.weights.h5 or .h5) of {application.__name__} without its top"
        )
    try:
        return application(include_top=False, weights=weights, input_tensor=x, **options)
    except ValueError as e:
        raise ValueError(
            f"train.weights: {weights} does not fit {name} (keras.applications.{application.__name__}, "
            f"include_top=False): {e}"
        ) from e


FROM_SCRATCH_BN_MOMENTUM = 0.99


def _scaled(scale: float, offset: float = 0.0):
    return lambda x: layers.Rescaling(scale, offset, name="backbone_scale")(x)


# ResNetV2's preprocess_input ("tf" mode) maps [0, 255] to [-1, 1], i.e. [0, 1] to 2x - 1; the
# others take [0, 255] and preprocess inside (include_preprocessing). Each reduces by 32: min side 32.
_backbone("resnet50v2", keras.applications.ResNet50V2, _scaled(2.0, -1.0))
_backbone("efficientnetv2_b0", keras.applications.EfficientNetV2B0, _scaled(255.0), include_preprocessing=True)
_backbone("mobilenetv3_small", keras.applications.MobileNetV3Small, _scaled(255.0), include_preprocessing=True)
_backbone("convnext_tiny", keras.applications.ConvNeXtTiny, _scaled(255.0), include_preprocessing=True)
