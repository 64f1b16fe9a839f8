rule train:
    input:
        train=shard_records("train"),
        val=shard_records("val"),
        manifests=shard_manifests("train"),
        val_manifests=shard_manifests("val"),
        sources=SOURCES,
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
    log:
        "results/logs/train/{combo}.log",
    benchmark:
        "results/benchmarks/train/{combo}.tsv"
    params:
        library_code=library_code("train.py"),
        combo=lambda w: COMBOS[w.combo],
        settings={k: v for k, v in config["train"].items() if k not in ("grid", "search", "trials", "baseline_svm")},
        size=config["preprocess"]["size"],
        channels=channels(),
        seed=config["seed"],
    threads: 1
    resources:
        mem_mb=4000,
    conda:
        "../../envs/train.yaml"
    script:
        "../scripts/train.py"


rule train_baseline:
    input:
        **{split: shard_records(split) for split in SPLITS},
        sources=SOURCES,
    output:
        model=f"results/models/{BASELINE}/model.joblib",
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
        class_weight=config["train"].get("class_weight", "none"),
        seed=config["seed"],
    threads: 1
    conda:
        "../../envs/train.yaml"
    script:
        "../scripts/train_baseline.py"
