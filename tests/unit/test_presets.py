"""config/presets/*.yaml: each overlays params.yaml (as `snakemake --configfile` does) into a valid
configuration; a bad value names the preset file; seed 003's random search keeps each trial's batch size."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from snakemake.utils import update_config

from hemaflow.config import ParamsError, check_replica, validate_params
from hemaflow.train.grid import combos

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "workflow/schemas/params.schema.yaml"
PRESETS = sorted((ROOT / "config/presets").glob("seed*.yaml"))


def overlay(preset: dict) -> tuple[dict, list]:
    """params.yaml deep-merged with `preset` (Snakemake's update_config), and the layers that name them."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    merged = copy.deepcopy(params)
    update_config(merged, copy.deepcopy(preset))
    return merged, [("params.yaml", params), ("config/presets/seed003.yaml (--configfile)", preset)]


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def test_the_four_seed_presets_exist():
    assert [p.name for p in PRESETS] == ["seed000.yaml", "seed002.yaml", "seed003.yaml", "seed004.yaml"]


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_each_preset_overlays_params_yaml_into_a_valid_config(path):
    merged, layers = overlay(load(path))
    config = validate_params(merged, SCHEMA, layers)
    check_replica(config, layers)
    preset = load(path)
    assert config["preprocess"] == {**config["preprocess"], **preset["preprocess"]}  # the preset's values win
    assert config["train"]["fusion"] == [] and config["data"]["patient_sheet"] is None  # no blood counts
    assert path.read_text().startswith("# Seed 0")
    header = "".join(line for line in path.read_text().splitlines(True) if line.startswith("#"))
    for part in ("Data expected", "Seed reported", "hemaflow changes", "Real data"):
        assert part in header, f"{path.name}: header lacks {part!r}"


def test_a_broken_preset_value_names_the_preset_file():
    preset = load(ROOT / "config/presets/seed003.yaml")
    preset["train"]["grid"]["optimizer"] = ["adam", "rmsprop"]
    merged, layers = overlay(preset)
    with pytest.raises(ParamsError) as e:
        validate_params(merged, SCHEMA, layers)
    assert "config/presets/seed003.yaml (--configfile): train.grid.optimizer.1: 'rmsprop' is not allowed; " \
           "use one of 'adam', 'sgd'" in str(e.value)  # fmt: skip


def test_the_folder_replica_with_a_blood_count_sheet_is_refused_naming_the_layer():
    merged, layers = overlay({"synthetic": {"layout": "folders"}})
    config = validate_params(merged, SCHEMA, layers)
    with pytest.raises(ParamsError, match=r"^params.yaml: data.patient_sheet: .*set data.patient_sheet: null"):
        check_replica(config, layers)


def test_seed003_random_search_draws_trials_with_their_own_batch_sizes():
    merged, _ = overlay(load(ROOT / "config/presets/seed003.yaml"))
    config = validate_params(merged, SCHEMA)
    trials = combos(config["train"], config["seed"])
    assert len(trials) == 60
    assert {t["batch_size"] for t in trials.values()} == {32, 64, 128}
    assert {t["optimizer"] for t in trials.values()} == {"adam", "sgd"}
    for cid, t in trials.items():
        assert cid.endswith(f"_bs{t['batch_size']}") or f"_bs{t['batch_size']}_" in cid


def test_the_recipe_preset_is_valid_one_combination_and_says_what_it_beats():
    """hemaflow's own recipe (not a seed's): a valid overlay, one combination using the new options,
    and a header that gives the measured comparison (benchmarks/recipe.py)."""
    path = ROOT / "config/presets/recipe.yaml"
    merged, layers = overlay(load(path))
    config = validate_params(merged, SCHEMA, layers)
    check_replica(config, layers)
    assert list(combos(config["train"], config["seed"])) == ["cell_resnet_adamw_lr1e-03_cosine_bs32"]
    assert config["train"]["label_smoothing"] > 0 and config["train"]["fusion"] == []
    assert config["data"]["adapter"] == "folders" and config["data"]["patient_sheet"] is None
    header = "".join(line for line in path.read_text().splitlines(True) if line.startswith("#"))
    for part in ("Data expected", "Recipe", "Measured", "matek_cnn", "model_1", "Real data"):
        assert part in header, f"recipe.yaml: header lacks {part!r}"
    assert "MEASURED" not in header  # the placeholder is replaced by figures
