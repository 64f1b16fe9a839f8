rule train:
    input:
        unpack(fused_inputs(SOURCES, SPLITS_TABLE, AUGMENTED)),
        train=shard_records("train"),
        val=shard_records("val"),
        manifests=shard_manifests("train"),
        classes=CLASSES,
        val_manifests=shard_manifests("val"),
        weights=weights_file(),
    output:
        model="results/models/{combo}/model.keras",
        history=HISTORY,
        curves=report(
            "results/models/{combo}/curves.png",
            caption="../report/curves.rst",
            category="Training",
            labels={"model": "{combo}", "figure": "training curves"},
        ),
        info="results/models/{combo}/train.json",
        params="results/models/{combo}/preprocess.json",
    log:
        "results/logs/train/{combo}.log",
    benchmark:
        "results/benchmarks/train/{combo}.tsv"
    params:
        library_code=library_code("train.py"),
        combo=lambda w: COMBOS[w.combo],
        settings=train_settings,
        size=config["preprocess"]["size"],
        channels=channels(),
        preprocess=config["preprocess"],
        # recorded in preprocess.json for the report and `hemaflow predict`
        described={k: config["data"][k] for k in ("class_descriptions", "patient_regex")} | {"evaluated_copies": evaluated_copies()},
        seed=config["seed"],
    threads: train_threads()
    resources:
        mem_mb=4000,
        # train.accelerator gpu: one GPU per training job (the Slurm plugin's --gpus); a local
        # run does not count GPUs unless given --resources gpu=N.
        gpu=1 if config["train"]["accelerator"] == "gpu" else 0,
    conda:
        "../../envs/train-gpu.yaml" if config["train"]["accelerator"] == "gpu" else "../../envs/train.yaml"
    script:
        "../scripts/train.py"


rule grid:
    output:
        GRID,
    log:
        "results/logs/grid.log",
    params:
        library_code=library_code("grid.py"),
        ids=MODEL_IDS,
        combos=COMBOS,
        prune=TRAIN_PER_COMBO,
    conda:
        "../../envs/train.yaml"
    script:
        "../scripts/grid.py"


rule train_baseline:
    input:
        **{split: shard_records(split) for split in SPLITS},
        sources=SOURCES,
    output:
        model=f"results/models/{BASELINE}/model.skops",
        info=f"results/models/{BASELINE}/train.json",
        features=expand(BASELINE_FEATURES, split=SPLITS),
    log:
        f"results/logs/train/{BASELINE}.log",
    benchmark:
        f"results/benchmarks/train/{BASELINE}.tsv"
    params:
        library_code=library_code("train_baseline.py"),
        splits=SPLITS,
        channels=channels(),
        class_weight=config["train"]["class_weight"],
        seed=config["seed"],
    threads: 1
    conda:
        "../../envs/train.yaml"
    script:
        "../scripts/train_baseline.py"


# Right after ingest (priority), before any training finishes: data.positive_class must be a
# class of a two-class set. The `models` target asks for it (so a bad value fails before the models
# are called done), but only evaluation depends on it: changing it reruns only evaluation.
rule check_classes:
    input:
        CLASSES,
    output:
        POSITIVE,
    log:
        "results/logs/check_classes.log",
    params:
        library_code=library_code("check_classes.py"),
        positive_class=config["data"]["positive_class"],
    priority: 50
    conda:
        "../../envs/data.yaml"
    script:
        "../scripts/check_classes.py"
