import re
from pathlib import Path

import pytest
import yaml

from hemaflow.train.grid import check_patient_sheet, combos, is_fused, prune_stale

GRID = {
    "model": ["model_1", "breen_cnn"],
    "optimizer": ["adam", "sgd"],
    "lr": [0.001, 0.0003],
    "lr_policy": ["constant", "triangular"],
    "batch_size": [64],
    "dropout": [0.25],
}


def params(search="grid", trials=6, **grid):
    return {"search": search, "trials": trials, "grid": {**GRID, **grid}}


def test_grid_is_the_full_product_with_readable_unique_ids():
    out = combos(params(), seed=1)
    assert len(out) == 2 * 2 * 2 * 2
    assert "model_1_adam_lr1e-03_constant_bs64" in out
    assert out["breen_cnn_sgd_lr3e-04_triangular_bs64"] == {
        "model": "breen_cnn", "optimizer": "sgd", "lr": 0.0003, "lr_policy": "triangular",
        "batch_size": 64, "dropout": 0.25,
    }  # fmt: skip
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+", cid) for cid in out)
    assert len({tuple(c.values()) for c in out.values()}) == len(out)


def test_ids_are_deterministic_in_grid_order():
    first, again = combos(params(), seed=1), combos(params(), seed=2)
    assert list(first) == list(again)
    assert list(first)[:2] == ["model_1_adam_lr1e-03_constant_bs64", "model_1_adam_lr1e-03_triangular_bs64"]


def test_dropout_appears_in_ids_only_when_searched():
    out = combos(params(dropout=[0.25, 0.4], model=["model_1"]), seed=1)
    assert "model_1_adam_lr1e-03_constant_bs64_do0.40" in out
    assert all("_do" in cid for cid in out)
    assert not any("_do" in cid for cid in combos(params(), seed=1))


def test_close_values_get_distinct_ids():
    out = combos(params(lr=[0.0002, 0.00025], dropout=[0.125, 0.12]), seed=1)
    assert len(out) == 2 * 2 * 2 * 2 * 2
    assert any("lr2.5e-04" in cid for cid in out) and any("_do0.125" in cid for cid in out)


def test_random_search_is_seeded_and_within_the_grid():
    full = combos(params(), seed=0)
    draw = combos(params("random", trials=5), seed=7)
    assert len(draw) == 5
    assert all(full[cid] == combo for cid, combo in draw.items())
    assert draw == combos(params("random", trials=5), seed=7)
    assert list(draw) == [cid for cid in full if cid in draw]  # grid order, not draw order
    assert set(draw) != set(combos(params("random", trials=5), seed=8))


def test_random_search_with_more_trials_than_combinations_takes_all():
    assert combos(params("random", trials=100), seed=3) == combos(params(), seed=3)


def test_grid_errors_name_the_key():
    bad = params()
    del bad["grid"]["lr"]
    with pytest.raises(ValueError, match="missing lr"):
        combos(bad, seed=1)
    with pytest.raises(ValueError, match="train.grid.lr lists a value twice"):
        combos(params(lr=[0.001, 0.001]), seed=1)
    with pytest.raises(ValueError, match="train.search"):
        combos(params("bayes"), seed=1)
    with pytest.raises(ValueError, match="train.grid.model"):
        combos(params(model=["../model_1"]), seed=1)


def test_the_projects_params_yaml_gives_readable_ids():
    train = yaml.safe_load((Path(__file__).parents[2] / "params.yaml").read_text())["train"]
    out = combos(train, seed=2019)
    n = 1
    for values in train["grid"].values():
        n *= len(values)
    n = n if train["search"] == "grid" else min(n, train["trials"])
    fused = train.get("fusion") or []
    assert len(out) == n + (n if fused == "all" else len(fused))
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+", cid) for cid in out)


def test_prune_stale_deletes_only_what_removed_combinations_left(tmp_path):
    models, history = tmp_path / "models", tmp_path / "plots/history"
    for combo in ("kept", "old"):
        (models / combo).mkdir(parents=True)
        (models / combo / "model.keras").write_text("x")
    history.mkdir(parents=True)
    for name in ("kept.csv", "old.csv", "old.json", "kept_old.csv"):
        (history / name).write_text("x")
    (models / "grid.json").write_text("{}")  # a file where combos are directories: not a combo
    gone = prune_stale({str(models): "", str(history): ".csv", str(tmp_path / "absent"): ".csv"}, ["kept"])
    assert gone == [models / "old", history / "kept_old.csv", history / "old.csv"]
    assert sorted(p.name for p in models.iterdir()) == ["grid.json", "kept"]
    assert sorted(p.name for p in history.iterdir()) == ["kept.csv", "old.json"]


def test_fusion_adds_a_cbc_twin_and_leaves_image_ids_alone():
    image = combos(params(), seed=1)
    out = combos({**params(), "fusion": ["model_1_adam_lr1e-03_constant_bs64"]}, seed=1)
    assert list(out)[: len(image)] == list(image) and all(out[cid] == image[cid] for cid in image)
    assert list(out)[len(image):] == ["model_1_adam_lr1e-03_constant_bs64_cbc"]
    twin = out["model_1_adam_lr1e-03_constant_bs64_cbc"]
    assert twin == {**image["model_1_adam_lr1e-03_constant_bs64"], "inputs": "image+cbc"} and is_fused(twin)
    assert not any(is_fused(c) for c in image.values())
    every = combos({**params(), "fusion": "all"}, seed=1)
    assert len(every) == 2 * len(image) and all(f"{cid}_cbc" in every for cid in image)


def test_fusion_errors_name_the_key_and_the_fix():
    with pytest.raises(ValueError, match=r"train.fusion: model_9_adam.* not a combination of train.grid"):
        combos({**params(), "fusion": ["model_9_adam_lr1e-03_constant_bs64"]}, seed=1)
    fused = combos({**params(), "fusion": "all"}, seed=1)
    with pytest.raises(ValueError, match="data.patient_sheet is null"):
        check_patient_sheet(fused, None)
    check_patient_sheet(fused, "sheet.csv")
    check_patient_sheet(combos(params(), seed=1), None)  # image-only grids need no sheet


def test_the_schema_defaults_give_the_same_combination_and_ids_as_before_the_new_options():
    """AdamW, the cosine and one-cycle policies and label smoothing are off by default: the default
    grid is still one combination (and its blood-count twin) with the id it always had."""
    from hemaflow.config import load_schema, with_defaults

    train = with_defaults({}, load_schema(Path(__file__).parents[2] / "workflow/schemas/params.schema.yaml"))["train"]
    assert combos(train, seed=2019) == {
        "model_1_adam_lr1e-03_constant_bs64": {"model": "model_1", "optimizer": "adam", "lr": 0.001,
                                               "lr_policy": "constant", "batch_size": 64, "dropout": 0.25},
        "model_1_adam_lr1e-03_constant_bs64_cbc": {"model": "model_1", "optimizer": "adam", "lr": 0.001,
                                                   "lr_policy": "constant", "batch_size": 64, "dropout": 0.25,
                                                   "inputs": "image+cbc"},
    }  # fmt: skip
    assert train["label_smoothing"] == 0


def test_new_optimizer_and_policies_read_in_the_id_and_leave_the_others_alone():
    grid = params(model=["cell_resnet"], optimizer=["adam", "adamw"], lr=[0.002], lr_policy=["constant", "cosine", "onecycle"])
    out = combos(grid, seed=1)
    assert list(out) == [
        "cell_resnet_adam_lr2e-03_constant_bs64", "cell_resnet_adam_lr2e-03_cosine_bs64",
        "cell_resnet_adam_lr2e-03_onecycle_bs64", "cell_resnet_adamw_lr2e-03_constant_bs64",
        "cell_resnet_adamw_lr2e-03_cosine_bs64", "cell_resnet_adamw_lr2e-03_onecycle_bs64",
    ]  # fmt: skip
