"""Blood-count fusion (seed 004's idea): any CNN of the zoo with the patient's CBC as a second input."""

# The fused model takes (image, raw CBC values with NaN for missing). Its first CBC layer,
# `CBCStandardise`, holds the training patients' mean and std: it imputes a missing value with
# the training mean, standardises, and appends one missing indicator per column. So the
# statistics travel inside model.keras and evaluation and prediction cannot prepare the values
# differently. Load fused models with `load_model` (it registers the layer).

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import keras
import numpy as np
import pandas as pd
import tensorflow as tf
from keras import layers, ops

from hemaflow.data import cbc
from hemaflow.train.input import make_dataset
from hemaflow.train.models import HEAD, build_model

@keras.saving.register_keras_serializable(package="hemaflow")
class CBCStandardise(layers.Layer):
    """Raw CBC (batch, d), NaN = missing -> (batch, 2d): standardised values (missing -> 0, the
    training mean) then one 0/1 missing indicator per column."""

    def __init__(self, columns: Sequence[str], mean: Sequence[float], std: Sequence[float], **kwargs):
        super().__init__(**kwargs)
        self.columns, self.mean, self.std = list(columns), [float(m) for m in mean], [float(s) for s in std]

    def call(self, x):
        mean = ops.convert_to_tensor(self.mean, dtype=x.dtype)
        std = ops.convert_to_tensor(self.std, dtype=x.dtype)
        missing = ops.isnan(x)
        filled = ops.where(missing, mean, x)  # NaN never enters the arithmetic (no NaN gradients)
        return ops.concatenate([(filled - mean) / std, ops.cast(missing, x.dtype)], axis=-1)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], 2 * len(self.columns))

    def get_config(self):
        return {**super().get_config(), "columns": self.columns, "mean": self.mean, "std": self.std}


def build_fused_model(
    name: str, input_shape, n_classes: int, dropout: float, stats: cbc.Standardisation, weights: str = "none"
):
    """Zoo model `name` with the standardised CBC vector (and its indicators) concatenated to the
    input of its classification layer: image features up to the penultimate layer, then the head."""
    image_model = build_model(name, input_shape, n_classes, dropout, weights)
    features, head = image_model.layers[-2].output, image_model.layers[-1]
    values = keras.Input((len(stats.columns),), name="cbc")
    tabular = CBCStandardise(stats.columns, stats.mean, stats.std, name="cbc_standardise")(values)
    joined = layers.Concatenate(name="image_cbc")([features, tabular])
    out = layers.Dense(head.units, activation=head.activation, name=HEAD)(joined)
    return keras.Model([image_model.inputs[0], values], out, name=f"{image_model.name}_cbc")


def build(
    name: str, input_shape, n_classes: int, dropout: float, inputs: CBCInputs | None, weights: str = "none"
) -> keras.Model:
    """The image-only zoo model, or with `inputs` its fused version; `weights` as in build_model."""
    if inputs is None:
        return build_model(name, input_shape, n_classes, dropout, weights)
    return build_fused_model(name, input_shape, n_classes, dropout, inputs.stats, weights)


def model_columns(model: keras.Model) -> list[str]:
    """The CBC columns, in input order, that a fused model was trained on."""
    return list(model.get_layer("cbc_standardise").columns)


@dataclass(frozen=True)
class CBCInputs:
    """What training and evaluation need to feed a fused model: raw CBC values per aug_id and,
    for training, the standardisation fitted on the training patients."""

    values: pd.DataFrame  # index aug_id, one float32 column per CBC column, NaN = missing
    stats: cbc.Standardisation | None = None

    def lookup(self):
        """tf function aug_id batch -> (batch, d) raw values; an aug_id outside the table fails."""
        table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant(self.values.index.to_numpy(dtype=str)), tf.range(len(self.values), dtype=tf.int64)
            ),
            default_value=-1,
        )
        matrix = tf.constant(self.values.to_numpy(dtype=np.float32).reshape(len(self.values), -1))

        def rows(aug_ids):
            idx = table.lookup(aug_ids)
            check = tf.debugging.assert_non_negative(
                idx, message="aug_id of a shard record is not in augmented.parquet: rerun the augment rule"
            )
            with tf.control_dependencies([check]):
                return tf.gather(matrix, idx)

        return rows


def cbc_inputs(sheet_path, sources: pd.DataFrame, splits: pd.DataFrame, augmented: pd.DataFrame) -> CBCInputs:
    """The sheet joined to every record, with the standardisation fitted on the training patients only."""
    sheet = cbc.read_sheet(sheet_path)
    stats = cbc.fit_standardisation(sheet, cbc.patients_of(sources, splits, "train"))
    return CBCInputs(cbc.values_by_aug_id(sheet, augmented, sources, stats.columns), stats)


def for_model(model: keras.Model, sheet_path, sources: pd.DataFrame, augmented: pd.DataFrame) -> CBCInputs:
    """The sheet joined to every record in the columns a trained fused model was fitted on."""
    columns = model_columns(model)
    sheet = cbc.read_sheet(sheet_path)
    absent = [c for c in columns if c not in sheet.columns]
    if absent:
        raise ValueError(f"{sheet_path}: the model was trained with CBC column(s) {', '.join(absent)}, absent here")
    return CBCInputs(cbc.values_by_aug_id(sheet, augmented, sources, columns))


def dataset(records, inputs: CBCInputs | None, **kwargs) -> tf.data.Dataset:
    """make_dataset batches; with `inputs`, ((image, raw CBC), label) for a fused model."""
    if inputs is None:
        return make_dataset(records, **kwargs)
    return attach(make_dataset(records, with_ids=True, **kwargs), inputs)


def attach(ds: tf.data.Dataset, inputs: CBCInputs) -> tf.data.Dataset:
    """((image, raw CBC), label) batches from make_dataset's (image, label, aug_id) ones."""
    rows = inputs.lookup()

    def fused(image, label, ids):
        return (image, rows(ids)), label

    return ds.map(fused, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
