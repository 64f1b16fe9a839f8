"""Validate params.yaml against its JSON Schema with messages a person can act on."""

from __future__ import annotations

from pathlib import Path

import jsonschema
import yaml


class ParamsError(ValueError):
    """params.yaml does not match workflow/schemas/params.schema.yaml."""


def _key(path) -> str:
    return ".".join(str(p) for p in path) or "(top level)"


def _describe(error: jsonschema.ValidationError) -> str:
    key = _key(error.absolute_path)
    hint = error.schema.get("description", "")
    if error.validator == "enum":
        allowed = ", ".join(repr(v) for v in error.validator_value)
        msg = f"{key}: {error.instance!r} is not allowed; use one of {allowed}"
    elif error.validator == "additionalProperties":
        known = ", ".join(sorted(error.schema.get("properties", {})))
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        msg = f"{key}: unknown key(s) {', '.join(extra)}; known keys are {known}"
        hint = ""
    elif error.validator == "required":
        msg = f"{key}: {error.message}"
    else:
        msg = f"{key}: {error.message}"
    return f"{msg}{f' ({hint})' if hint else ''}"


def validate_params(params: dict, schema_path: str | Path, source: str = "params.yaml") -> None:
    """Raise ParamsError listing every problem, each naming its key and what is allowed."""
    schema = yaml.safe_load(Path(schema_path).read_text())
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(params), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        lines = "\n".join(f"  - {_describe(e)}" for e in errors)
        raise ParamsError(f"{source} is not valid ({len(errors)} problem(s)):\n{lines}")
