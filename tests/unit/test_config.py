"""params.yaml validation: the shipped file is valid, mistakes are named with their key and the fix."""

import copy
from pathlib import Path

import pytest
import yaml

from hemaflow.config import ParamsError, validate_params

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "workflow/schemas/params.schema.yaml"


@pytest.fixture
def params():
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def test_shipped_params_are_valid(params):
    validate_params(params, SCHEMA)


def test_enum_error_names_key_and_allowed_values(params):
    params["preprocess"]["background"] = "alfa"
    with pytest.raises(ParamsError) as e:
        validate_params(params, SCHEMA)
    msg = str(e.value)
    assert "preprocess.background" in msg
    assert "'alfa'" in msg and "'alpha'" in msg and "'natural'" in msg


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
