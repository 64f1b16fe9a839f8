"""Parquet manifests: one pyarrow schema per manifest, checked on every write and read; the class list."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq


def _f(name: str, type_: pa.DataType, nullable: bool = False) -> pa.Field:
    return pa.field(name, type_, nullable=nullable)


# The split names, in pipeline order: the `split` column of the splits and augmented manifests.
SPLITS = ("train", "val", "test")

S = pa.string()
SCHEMAS: dict[str, pa.Schema] = {
    "sources": pa.schema([
        _f("image_id", S), _f("dataset", S), _f("rel_path", S), _f("patient_id", S, True),
        _f("source_label", S, True), _f("label", S, True), _f("label_index", pa.int16()), _f("fold", pa.int8()),
        _f("holdout", pa.bool_()), _f("width", pa.int32()), _f("height", pa.int32()),
        _f("mode", S), _f("format", S), _f("content_hash", S, True), _f("duplicate_of", S, True),
        _f("perceptual_hash", S, True), _f("near_duplicate_of", S, True), _f("status", S), _f("reason", S, True),
    ]),
    "splits": pa.schema([_f("image_id", S), _f("split", S), _f("group", S)]),
    "augmented": pa.schema([
        _f("aug_id", S), _f("image_id", S), _f("split", S), _f("shard", pa.int32()),
        _f("index", pa.int32()), _f("label_index", pa.int16()), _f("rotation", pa.float64()),
        _f("mirror", pa.bool_()), _f("copy", pa.int32()), _f("flip_h", pa.bool_()),
        _f("flip_v", pa.bool_()), _f("shift_x", pa.float64()), _f("shift_y", pa.float64()),
        _f("zoom", pa.float64()), _f("shear", pa.float64()),
    ]),
}  # fmt: skip


def write_classes(classes, path) -> None:
    """The class list of the data set (position = label_index), written once by ingest."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"classes": list(classes)}, indent=2) + "\n")


def read_classes(path) -> list[str]:
    """The class names in label_index order: the one home of the class list for every later step."""
    return list(json.loads(Path(path).read_text())["classes"])


class ManifestError(ValueError):
    """A manifest's columns or types do not match its schema."""


def _schema(name: str) -> pa.Schema:
    if name not in SCHEMAS:
        raise KeyError(f"unknown manifest {name!r}; known: {', '.join(SCHEMAS)}")
    return SCHEMAS[name]


def _kind_ok(series: pd.Series, type_: pa.DataType) -> bool:
    """Pandas dtype kind compatible with the arrow type (no bool-as-int, no float-as-int)."""
    if series.empty:  # an empty shard: nothing to convert by accident
        return True
    kind = series.dtype.kind
    if pa.types.is_boolean(type_):
        return kind == "b"
    if pa.types.is_integer(type_):
        return kind in "iu"
    if pa.types.is_floating(type_):
        return kind in "iuf"
    return kind in "OSUT" or isinstance(series.dtype, pd.StringDtype)


def to_table(df: pd.DataFrame, name: str, where: str = "") -> pa.Table:
    """`df` as an arrow table of manifest `name`; ManifestError names `where` and the bad column."""
    schema = _schema(name)
    at = f"{where}: " if where else ""
    wanted, have = schema.names, list(df.columns)
    missing = [c for c in wanted if c not in have]
    extra = [c for c in have if c not in wanted]
    if missing or extra:
        raise ManifestError(f"{at}{name} manifest columns differ from the schema: missing {missing}, unexpected {extra}")
    arrays = []
    for field in schema:
        col = df[field.name]
        try:
            if not _kind_ok(col, field.type):
                raise TypeError(f"pandas dtype {col.dtype}")
            arr = pa.array(col, type=field.type, from_pandas=True)
        except (TypeError, ValueError, pa.ArrowException) as e:
            raise ManifestError(f"{at}{name} manifest column {field.name!r} is not {field.type}: {e}") from None
        if not field.nullable and arr.null_count:
            raise ManifestError(f"{at}{name} manifest column {field.name!r} has {arr.null_count} null value(s)")
        arrays.append(arr)
    return pa.Table.from_arrays(arrays, schema=schema)


def write_manifest(df: pd.DataFrame, path, name: str) -> None:
    """Check `df` against manifest `name` and write it to `path` atomically."""
    path = Path(path)
    table = to_table(df, name, str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    pq.write_table(table, tmp)
    tmp.replace(path)


def read_manifest(path, name: str) -> pd.DataFrame:
    """Read manifest `name` from `path`, checking its columns and types against the schema."""
    schema = _schema(name)
    try:
        table = pq.read_table(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: {name} manifest not found") from None
    for field in schema:
        if field.name not in table.schema.names:
            raise ManifestError(f"{path}: {name} manifest lacks column {field.name!r}")
        got = table.schema.field(field.name).type
        if got != field.type:
            raise ManifestError(f"{path}: {name} manifest column {field.name!r} is {got}, expected {field.type}")
    extra = [c for c in table.schema.names if c not in schema.names]
    if extra:
        raise ManifestError(f"{path}: {name} manifest has unexpected column(s) {extra}")
    return table.select(schema.names).to_pandas()
