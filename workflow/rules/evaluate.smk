rule evaluate:
    input:
        unpack(fused_inputs()),
        model=lambda w: model_file(w.combo),
        # Keras models read the shards; the SVM the features train_baseline computed once.
        train_records=lambda w: [] if w.combo == BASELINE else shard_records("train"),
        records=lambda w: [] if w.combo == BASELINE else shard_records("val") + shard_records("test"),
        features=lambda w: expand(BASELINE_FEATURES, split=SPLITS) if w.combo == BASELINE else [],
        augmented=AUGMENTED,
        sources=SOURCES,
        classes=CLASSES,
        positive=POSITIVE,
    output:
        metrics="results/evaluation/{combo}/metrics.json",
        predictions="results/evaluation/{combo}/predictions.parquet",
        tables=expand(PLOT_TABLE, kind=PLOT_KINDS, split=SPLITS, allow_missing=True),
        confusion=[
            report(f"results/evaluation/{{combo}}/confusion_{split}.png", caption="../report/confusion.rst",
                   category="Evaluation", subcategory="{combo}", labels={"model": "{combo}", "figure": f"confusion {split}"})
            for split in SPLITS
        ],
        roc=[
            report(f"results/evaluation/{{combo}}/roc_{split}.png", caption="../report/roc.rst",
                   category="Evaluation", subcategory="{combo}", labels={"model": "{combo}", "figure": f"ROC {split}"})
            for split in SPLITS
        ],
        patients="results/evaluation/{combo}/patients.csv",
        patients_plot=report(
            "results/evaluation/{combo}/patients.png",
            caption="../report/patients.rst",
            category="Evaluation",
            subcategory="{combo}",
            labels={"model": "{combo}", "figure": "patient level"},
        ),
    log:
        "results/logs/evaluate/{combo}.log",
    benchmark:
        "results/benchmarks/evaluate/{combo}.tsv"
    params:
        library_code=library_code("evaluate.py"),
        channels=channels(),
        baseline=lambda w: w.combo == BASELINE,
        tables=lambda w: PLOT_TABLE.replace("{combo}", w.combo),
    threads: 1
    conda:
        "../../envs/train.yaml"
    script:
        "../scripts/evaluate.py"


rule leaderboard:
    input:
        metrics=expand("results/evaluation/{combo}/metrics.json", combo=MODEL_IDS),
        infos=expand("results/models/{combo}/train.json", combo=MODEL_IDS),
        grid=GRID,  # so `snakemake all` prunes the train stage's stale combinations too
    output:
        csv=report("results/reports/leaderboard.csv", caption="../report/leaderboard.rst", category="Leaderboard", labels={"table": "leaderboard"}),
        md="results/reports/leaderboard.md",
        png=report("results/reports/leaderboard.png", caption="../report/leaderboard.rst", category="Leaderboard", labels={"figure": "leaderboard"}),
        metrics="results/reports/metrics.json",
    log:
        "results/logs/leaderboard.log",
    params:
        library_code=library_code("leaderboard.py"),
        ids=MODEL_IDS,
        combos=COMBOS,
        rank_by=config["evaluate"]["rank_by"],
        prune=EVALUATE_PER_COMBO,
    conda:
        "../../envs/train.yaml"
    script:
        "../scripts/leaderboard.py"
