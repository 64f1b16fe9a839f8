"""Typed settings of one training, built once from the validated config (the schema holds the defaults)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields

@dataclass(frozen=True)
class TrainSettings:
    """How every combination trains: the `train` keys a training job reads (params.yaml)."""

    max_epochs: int
    patience: int
    cyclic: Mapping | None  # None unless the combination's lr_policy is triangular
    class_weight: str
    weights: str
    fine_tune: Mapping
    accelerator: str
    mixed_precision: bool
    weight_decay: float | None  # optimizer adamw's decoupled weight decay (None for the others)
    label_smoothing: float  # 0 = off
    cosine: Mapping | None  # lr_policy cosine: warmup_epochs, floor (None for the other policies)
    onecycle: Mapping | None  # lr_policy onecycle: peak_at, div, final_div (None for the other policies)
    speed: Mapping  # train.speed: cache (none | val | all: decoded images kept in memory after their first pass)

    @classmethod
    def from_config(cls, train: Mapping) -> TrainSettings:
        """From a validated `train` section (or the subset train.smk passes a job); a missing key
        means the section was not validated, and is an error naming the keys."""
        missing = [f.name for f in fields(cls) if f.name not in train]
        if missing:
            raise KeyError(f"train settings lack {', '.join(missing)}: build them from a config validated "
                           "by hemaflow.config.validate_params (it fills in the schema's defaults)")  # fmt: skip
        return cls(**{f.name: train[f.name] for f in fields(cls)})


@dataclass(frozen=True)
class TrainData:
    """What one combination trains on: its shards and what the shard manifests say about them
    (counting the records would read every one)."""

    train_records: Sequence[str | os.PathLike]
    val_records: Sequence[str | os.PathLike]
    channels: int
    size: int
    n_classes: int
    class_counts: Mapping[int, int]  # records per class index in train_records
    n_val: int  # records in val_records
    cbc: object = None  # hemaflow.train.fusion.CBCInputs for an image+cbc combination
