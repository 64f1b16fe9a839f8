"""The pipeline's configuration: params.yaml and its overrides, checked against the JSON Schema
(workflow/schemas/params.schema.yaml) and completed with the schema's defaults."""

# Every message names the key, what is allowed, and the file (or --config) the bad value came from.

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path

import jsonschema
import yaml

# (name, values) from the lowest to the highest precedence: params.yaml, each --configfile, --config.
Layers = Sequence[tuple[str, Mapping]]


class ParamsError(ValueError):
    """The configuration does not match workflow/schemas/params.schema.yaml."""


def check_config_file(path: str | Path) -> None:
    """A config file Snakemake is about to read is a YAML mapping: ParamsError naming the file
    (and the line of a YAML syntax error) otherwise, where Snakemake's own message names neither."""
    try:
        values = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ParamsError(f"{path}{where}: not valid YAML: {problem}") from None
    if values is None:
        raise ParamsError(f"{path}: the config file is empty; it needs `key: value` lines (see params.yaml)")
    if not isinstance(values, Mapping):
        raise ParamsError(f"{path}: the config file holds a {type(values).__name__}, not a mapping of `key: value` lines")


def typed_cli_config(values):
    """--config values with YAML types inside mappings and lists: Snakemake types a top-level value
    (seed=7 is an int) but leaves every value nested in `preprocess={size: 64}` a string."""

    def typed(value, nested):
        if isinstance(value, Mapping):
            return {k: typed(v, True) for k, v in value.items()}
        if isinstance(value, list):
            return [typed(v, True) for v in value]
        if nested and isinstance(value, str):
            try:
                parsed = yaml.safe_load(value)
            except yaml.YAMLError:
                return value
            return parsed if not isinstance(parsed, (Mapping, list)) else value
        return value

    return {k: typed(v, False) for k, v in values.items()}


def _strict_integer(checker, instance) -> bool:
    # Draft 2020-12 counts 7.0 as an integer, but a float seed crashes numpy's SeedSequence and a
    # float count crashes range(); YAML and --config read "7.0" as a float, so say so early.
    return isinstance(instance, int) and not isinstance(instance, bool)


Validator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator,
    type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine("integer", _strict_integer),
)


def load_schema(schema_path: str | Path) -> dict:
    return yaml.safe_load(Path(schema_path).read_text())


def with_defaults(params: Mapping, schema: Mapping) -> dict:
    """A copy of params with every `default:` of the schema filled in where the key is absent,
    nested objects included (an absent section gets its default `{}`, then its keys' defaults)."""
    out = copy.deepcopy(dict(params))
    _fill(out, schema)
    return out


def _fill(instance, schema: Mapping) -> None:
    if not isinstance(instance, dict):
        return
    for key, sub in schema.get("properties", {}).items():
        if key not in instance and "default" in sub:
            instance[key] = copy.deepcopy(sub["default"])
        if key in instance:
            _fill(instance[key], sub)


def _has(values, path: Sequence) -> bool:
    for step in path:
        if isinstance(values, Mapping) and step in values:
            values = values[step]
        elif isinstance(values, list) and isinstance(step, int) and step < len(values):
            values = values[step]
        else:
            return False
    return True


def source_of(path: Sequence, layers: Layers) -> str:
    """Which layer set the value at `path`: the last one that has it (later layers override
    earlier ones, and a list is replaced whole); the schema's default when none does."""
    for name, values in reversed(layers):
        if _has(values, path):
            return name
    return "the schema's default"


def _key(path) -> str:
    return ".".join(str(p) for p in path) or "(top level)"


def _describe(error: jsonschema.ValidationError, layers: Layers) -> str:
    path = list(error.absolute_path)
    key = _key(path)
    hint = error.schema.get("description", "")
    if error.validator == "enum":
        allowed = ", ".join(repr(v) for v in error.validator_value)
        msg = f"{key}: {error.instance!r} is not allowed; use one of {allowed}"
    elif error.validator == "additionalProperties":
        known = ", ".join(sorted(error.schema.get("properties", {})))
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        msg = f"{key}: unknown key(s) {', '.join(extra)}; known keys are {known}"
        path, hint = path + [extra[0]], ""
    elif error.validator == "type" and error.validator_value == "integer" and isinstance(error.instance, float):
        whole = f"{int(error.instance)} (no decimal point)" if error.instance.is_integer() else "a whole number"
        msg = f"{key}: {error.instance!r} is not an integer; write {whole}"
    elif error.validator == "anyOf":  # the alternatives are spelled out in the key's description
        msg = f"{key}: {error.instance!r} is not allowed"
    else:
        msg = f"{key}: {error.message}"
    return f"{source_of(path, layers)}: {msg}{f' ({hint})' if hint else ''}"


def _names(layers: Layers) -> str:
    names = [name for name, _ in layers]
    return " + ".join(names) if names else "the schema's defaults"


def validate_params(params: Mapping, schema_path: str | Path, layers: Layers | None = None) -> dict:
    """params completed with the schema's defaults; ParamsError listing every problem otherwise.
    `layers` name where each value came from (default: all of params from params.yaml)."""
    layers = [("params.yaml", params)] if layers is None else layers
    schema = load_schema(schema_path)
    config = with_defaults(params, schema)
    errors = sorted(Validator(schema).iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        lines = "\n".join(f"  - {_describe(e, layers)}" for e in errors)
        raise ParamsError(f"The configuration ({_names(layers)}) is not valid ({len(errors)} problem(s)):\n{lines}")
    return config


def check_data_paths(data: Mapping, project: str | Path, layers: Layers) -> None:
    """Before any job runs: the directory and files the `data` options point at exist (relative
    paths are relative to the project). The synthetic adapter writes its root itself, and with
    an `index` the listing (and a dry run) needs no images."""
    project = Path(project).resolve()
    relative = f"a relative path is relative to the project directory {project}"
    problems = []

    def check(key: str, exists, what: str, fix: str) -> None:
        value = data[key]
        if not exists(project / value):
            found = (project / value).exists()
            kind = ("not a directory" if exists is Path.is_dir else "not a file") if found else "does not exist"
            problems.append(
                f"{source_of(['data', key], layers)}: data.{key}: {what} {value!r} ({project / value}) "
                f"{'is ' if found else ''}{kind}. {fix} ({relative})."
            )

    if data["adapter"] != "synthetic" and data["index"]:
        check("index", Path.is_file, "the index file", "Point data.index at a text file of image paths, or set it to null to walk data.root")
    elif data["adapter"] != "synthetic":
        check(
            "root", Path.is_dir, "the data directory",
            "Point data.root at the directory that holds the images, in params.yaml or a --configfile "
            "(or use data.adapter: synthetic for the embedded replica)",
        )  # fmt: skip
    if data["adapter"] == "filelist" and not data["filelist"]:
        problems.append(
            f"{source_of(['data', 'adapter'], layers)}: data.adapter: 'filelist' needs data.filelist, "
            "a CSV with columns path,label[,patient_id]."
        )
    elif data["adapter"] == "filelist":
        check("filelist", Path.is_file, "the file list", "Point data.filelist at the CSV with columns path,label[,patient_id]")
    if problems:
        raise ParamsError("The data the configuration points at is missing:\n" + "\n".join(f"  - {p}" for p in problems))


def check_replica(config: Mapping, layers: Layers) -> None:
    """The class-per-folder replica writes no blood-count sheet, so data.patient_sheet must be null."""
    sheet = config["data"]["patient_sheet"]
    if config["data"]["adapter"] == "synthetic" and config["synthetic"]["layout"] == "folders" and sheet:
        raise ParamsError(
            f"{source_of(['data', 'patient_sheet'], layers)}: data.patient_sheet: {sheet!r}: synthetic.layout "
            "'folders' writes no blood-count sheet; set data.patient_sheet: null (and train.fusion: [])"
        )
