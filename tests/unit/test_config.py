"""Configuration: the shipped file is valid and equals the schema's defaults, mistakes are named
with their key, the fix and the file they came from, and missing data is found before any job."""

import copy
import importlib
import inspect
from pathlib import Path

import pytest
import yaml

from hemaflow.evaluate import score as evaluate
from hemaflow.data import manifest
from hemaflow.data import splits
from hemaflow.config import (
    ParamsError,
    check_config_file,
    check_data_paths,
    load_schema,
    typed_cli_config,
    validate_params,
    with_defaults,
)

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "workflow/schemas/params.schema.yaml"


@pytest.fixture
def params():
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def test_shipped_params_are_valid(params):
    assert validate_params(params, SCHEMA) == params


def test_params_yaml_spells_out_exactly_the_schema_defaults(params):
    """The schema is the one home of defaults; params.yaml stays complete (DVC reads it) and cannot drift."""
    assert with_defaults({}, load_schema(SCHEMA)) == params


def test_a_key_left_out_gets_its_schema_default_nested_sections_included(params):
    del params["train"]["patience"], params["train"]["cyclic"], params["train"]["grid"]["dropout"]
    del params["evaluate"], params["synthetic"]["holdout_patients"]["hem"]
    config = validate_params(params, SCHEMA)
    assert config["train"]["patience"] == 5
    assert config["train"]["cyclic"] == {"step_size": 4, "scale": 4, "start_at": "max"}
    assert config["train"]["grid"]["dropout"] == [0.25]
    assert config["evaluate"] == {"rank_by": "balanced_accuracy", "bootstrap": 1000, "ci": 0.95, "calibrate": "none",
                                  "ece_bins": 15}
    assert config["synthetic"]["holdout_patients"] == {"all": 5, "hem": 3}
    assert "patience" not in params["train"]  # the caller's dict is left alone


def test_enum_error_names_key_and_allowed_values(params):
    params["preprocess"]["background"] = "alfa"
    with pytest.raises(ParamsError) as e:
        validate_params(params, SCHEMA)
    msg = str(e.value)
    assert "params.yaml: preprocess.background" in msg
    assert "'alfa'" in msg and "'alpha'" in msg and "'natural'" in msg


@pytest.mark.parametrize("value", [0, "two", 2.5])
def test_a_key_with_alternatives_names_them(params, value):
    params["train"]["threads"] = value
    with pytest.raises(ParamsError) as e:
        validate_params(params, SCHEMA)
    msg = str(e.value)
    assert f"params.yaml: train.threads: {value!r} is not allowed (" in msg
    assert "all (the cores Snakemake was given" in msg and "a whole number from 1" in msg


def test_unknown_key_is_named_with_the_known_ones(params):
    params["augment"]["rotation"] = 36  # typo for `rotations`
    with pytest.raises(ParamsError) as e:
        validate_params(params, SCHEMA)
    assert "augment: unknown key(s) rotation" in str(e.value)
    assert "rotations" in str(e.value)


def test_every_problem_is_listed_at_once(params):
    bad = copy.deepcopy(params)
    bad["train"]["grid"]["model"] = ["model_3"]  # seed 000 dropped model 3
    bad["split"]["ratios"] = [7, 2]
    bad["seed"] = -1
    with pytest.raises(ParamsError) as e:
        validate_params(bad, SCHEMA)
    msg = str(e.value)
    assert "3 problem(s)" in msg
    assert "train.grid.model.0" in msg and "'model_1'" in msg
    assert "split.ratios" in msg
    assert "seed" in msg


def _integer_keys(schema, path=()):
    """Every place the schema wants an integer: (path into the config, a valid value there)."""
    if schema.get("type") == "integer":
        yield path, schema.get("default", schema.get("minimum", 1))
    for key, sub in schema.get("properties", {}).items():
        yield from _integer_keys(sub, (*path, key))
    if "items" in schema:
        yield from _integer_keys(schema["items"], (*path, 0))


INTEGER_KEYS = list(_integer_keys(load_schema(SCHEMA)))


def test_the_schema_has_integer_keys_in_every_shape():
    paths = [p for p, _ in INTEGER_KEYS]
    assert ("seed",) in paths and ("augment", "shards", "val") in paths and ("train", "grid", "batch_size", 0) in paths


@pytest.mark.parametrize("path", [p for p, _ in INTEGER_KEYS], ids=lambda p: ".".join(map(str, p)))
def test_every_integer_key_rejects_a_float(params, path):
    """YAML and --config read 7.0 as a float; JSON Schema 2020-12 would let it through as an integer."""
    *parent, last = path
    target = params
    for step in parent:
        target = target[step]
    whole = int(target[last])
    target[last] = float(whole)
    with pytest.raises(ParamsError) as e:
        validate_params(params, SCHEMA)
    key = ".".join(map(str, path))
    assert f"params.yaml: {key}: {float(whole)!r} is not an integer; write {whole} (no decimal point)" in str(e.value)


def test_booleans_are_not_integers(params):
    params["seed"] = True
    with pytest.raises(ParamsError, match="seed: True is not of type 'integer'"):
        validate_params(params, SCHEMA)


def test_each_message_names_the_layer_that_set_the_value(params):
    """params.yaml < each --configfile < --config, and a list is replaced whole, as in Snakemake."""
    mine = {"seed": 1.5, "augment": {"rotations": 0}, "train": {"grid": {"lr": [0.001, 2]}}}
    cli = {"seed": 7.0}
    merged = copy.deepcopy(params)
    merged["seed"] = 7.0
    merged["augment"]["rotations"] = 0
    merged["train"]["grid"]["lr"] = [0.001, 2]
    merged["preprocess"]["size"] = 8  # as if params.yaml itself said so
    layers = [("params.yaml", {**params, "preprocess": merged["preprocess"]}), ("my.yaml (--configfile)", mine), ("--config", cli)]
    with pytest.raises(ParamsError) as e:
        validate_params(merged, SCHEMA, layers)
    lines = str(e.value).splitlines()
    assert "params.yaml + my.yaml (--configfile) + --config" in lines[0]
    assert "4 problem(s)" in lines[0]
    by_key = {key: source for source, key, _ in (line.removeprefix("  - ").split(": ", 2) for line in lines[1:])}
    assert by_key == {
        "augment.rotations": "my.yaml (--configfile)",
        "preprocess.size": "params.yaml",
        "seed": "--config",
        "train.grid.lr.1": "my.yaml (--configfile)",
    }


def test_split_names_have_one_home():
    assert splits.SPLITS is manifest.SPLITS and evaluate.SPLITS is manifest.SPLITS
    augment = load_schema(SCHEMA)["properties"]["augment"]["properties"]
    assert augment["splits"]["items"]["enum"] == list(manifest.SPLITS)
    assert list(augment["shards"]["properties"]) == list(manifest.SPLITS)


def _data(**kw):
    return {"adapter": "folders", "root": "images", "index": None, "filelist": None, **kw}


def test_missing_data_root_says_what_and_how_to_point_at_it(tmp_path):
    with pytest.raises(ParamsError) as e:
        check_data_paths(_data(), tmp_path, [("params.yaml", {"data": {"root": "images"}}), ("my.yaml (--configfile)", {"seed": 1})])
    msg = str(e.value)
    assert f"params.yaml: data.root: the data directory 'images' ({tmp_path / 'images'}) does not exist" in msg
    assert "Point data.root at the directory that holds the images" in msg
    assert f"relative to the project directory {tmp_path}" in msg
    (tmp_path / "images").write_text("a file, not a directory")
    with pytest.raises(ParamsError, match=r"data\.root: the data directory 'images' .* is not a directory\.") as e:
        check_data_paths(_data(), tmp_path, [])
    assert "does not exist" not in str(e.value)
    (tmp_path / "images").unlink()
    (tmp_path / "images").mkdir()
    check_data_paths(_data(), tmp_path, [])
    check_data_paths(_data(adapter="synthetic", root="not/yet"), tmp_path, [])  # synthesize writes it


def test_missing_index_or_filelist_is_named(tmp_path):
    layers = [("--config", {"data": {"index": "paths.txt", "filelist": "labels.csv"}})]
    with pytest.raises(ParamsError) as e:
        check_data_paths(_data(adapter="cnmc", root="nowhere", index="paths.txt"), tmp_path, layers)
    assert "--config: data.index: the index file 'paths.txt'" in str(e.value) and "data.root:" not in str(e.value)
    (tmp_path / "images").mkdir()
    with pytest.raises(ParamsError) as e:
        check_data_paths(_data(adapter="filelist", filelist="labels.csv"), tmp_path, layers)
    assert "--config: data.filelist: the file list 'labels.csv'" in str(e.value)
    with pytest.raises(ParamsError, match="data.adapter: 'filelist' needs data.filelist"):
        check_data_paths(_data(adapter="filelist"), tmp_path, [])


@pytest.mark.parametrize(
    "text, message",
    [
        ("", r"empty\.yaml: the config file is empty"),
        ("- seed\n", r"empty\.yaml: the config file holds a list, not a mapping"),
        ("seed: 1\ntrain: [1\n", r"empty\.yaml, line 3, column 1: not valid YAML"),
    ],
)
def test_a_bad_config_file_is_named_with_its_line(tmp_path, text, message):
    path = tmp_path / "empty.yaml"
    path.write_text(text)
    with pytest.raises(ParamsError, match=message):
        check_config_file(path)
    path.write_text("seed: 1\n")
    check_config_file(path)


def test_nested_cli_values_get_yaml_types_and_top_level_ones_stay():
    given = {"seed": 7.0, "name": "001", "preprocess": {"size": "64", "filter": "none", "x": ["1", "true", "null"]}}
    assert typed_cli_config(given) == {"seed": 7.0, "name": "001", "preprocess": {"size": 64, "filter": "none", "x": [1, True, None]}}


# Library keyword defaults that mirror a params default (conveniences for callers outside the
# workflow, which always passes the config's value): they must say what the schema says.
MIRRORED = [
    ("hemaflow.augment.preprocess", "prepare_source", "background", ("preprocess", "background")),
    ("hemaflow.augment.preprocess", "prepare_source", "size", ("preprocess", "size")),
    ("hemaflow.augment.preprocess", "prepare_source", "crop_to_content", ("preprocess", "crop_to_content")),
    ("hemaflow.augment.preprocess", "prepare_source", "pad_square", ("preprocess", "pad_square")),
    ("hemaflow.augment.preprocess", "prepare_source", "filter", ("preprocess", "filter")),
    ("hemaflow.augment.preprocess", "prepare_source", "fill", ("augment", "fill")),
    ("hemaflow.data.splits", "assign_splits", "ratios", ("split", "ratios")),
    ("hemaflow.data.splits", "assign_splits", "use_dataset_folds", ("split", "use_dataset_folds")),
    ("hemaflow.data.splits", "assign_splits", "val_fold", ("split", "val_fold")),
    ("hemaflow.data.images", "load_rgb", "max_pixels", ("data", "max_pixels")),
    ("hemaflow.data.ingest", "build_sources", "strict", ("data", "strict")),
    ("hemaflow.train.models", "build_model", "dropout", ("train", "grid", "dropout", 0)),
    ("hemaflow.train.models", "build_model", "weights", ("train", "weights")),
    ("hemaflow.evaluate.score", "evaluate_predictions", "bootstrap", ("evaluate", "bootstrap")),
    ("hemaflow.evaluate.score", "evaluate_predictions", "confidence", ("evaluate", "ci")),
    ("hemaflow.evaluate.score", "evaluate_predictions", "calibrate", ("evaluate", "calibrate")),
    ("hemaflow.evaluate.score", "evaluate_predictions", "ece_bins", ("evaluate", "ece_bins")),
]


@pytest.mark.parametrize(("module", "function", "argument", "path"), MIRRORED, ids=lambda x: x if isinstance(x, str) else "")
def test_library_keyword_defaults_agree_with_the_schema(module, function, argument, path):
    default = inspect.signature(getattr(importlib.import_module(module), function)).parameters[argument].default
    expected = with_defaults({}, load_schema(SCHEMA))
    for step in path:
        expected = expected[step]
    assert (list(default) if isinstance(default, tuple) else default) == expected


def test_train_settings_are_schema_keys_and_take_their_defaults_from_it_alone():
    """TrainSettings has no defaults of its own: built from the validated config, it holds the
    schema's; a section that was never validated is refused by name."""
    import dataclasses

    from hemaflow.train.settings import TrainSettings

    train_schema = load_schema(SCHEMA)["properties"]["train"]["properties"]
    fields = dataclasses.fields(TrainSettings)
    assert {f.name for f in fields} <= set(train_schema)
    assert all(f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING for f in fields)
    train = with_defaults({}, load_schema(SCHEMA))["train"]
    settings = TrainSettings.from_config(train)
    assert {f.name: getattr(settings, f.name) for f in fields} == {f.name: train[f.name] for f in fields}
    with pytest.raises(KeyError, match="patience"):
        TrainSettings.from_config({k: v for k, v in train.items() if k != "patience"})
