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
        reliability=[
            report(f"results/evaluation/{{combo}}/reliability_{split}.png", caption="../report/reliability.rst",
                   category="Evaluation", subcategory="{combo}", labels={"model": "{combo}", "figure": f"reliability {split}"})
            for split in SPLITS
        ],
        calibration="results/evaluation/{combo}/calibration.json",
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
        bootstrap=config["evaluate"]["bootstrap"],
        ci=config["evaluate"]["ci"],
        calibrate=config["evaluate"]["calibrate"],
        ece_bins=config["evaluate"]["ece_bins"],
        seed=config["seed"],
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
        every_test="results/reports/test_of_every_combination.csv",  # not in the report: never to choose by
        # DVC metrics: each combination's metrics.json (files, not directory(): its timestamp file would be a "metric")
        by_combo=expand("results/reports/metrics_by_combo/{combo}.json", combo=MODEL_IDS),
    log:
        "results/logs/leaderboard.log",
    params:
        library_code=library_code("leaderboard.py"),
        ids=MODEL_IDS,
        combos=COMBOS,
        rank_by=config["evaluate"]["rank_by"],
        prune=EVALUATE_PER_COMBO | {"results/reports/metrics_by_combo": ".json"},
    conda:
        "../../envs/train.yaml"
    script:
        "../scripts/leaderboard.py"


rule model_card:
    input:
        headline="results/reports/metrics.json",
        metrics=expand("results/evaluation/{combo}/metrics.json", combo=MODEL_IDS),
        infos=expand("results/models/{combo}/train.json", combo=MODEL_IDS),
        ingest="results/reports/ingest.json",
        split_summary="results/reports/split_summary.csv",
        split_notes="results/reports/split_notes.txt",
    output:
        card=report("results/reports/model_card.md", caption="../report/model_card.rst", category="Leaderboard",
                    labels={"table": "model card"}),
    log:
        "results/logs/model_card.log",
    params:
        library_code=library_code("model_card.py"),
        ids=MODEL_IDS,
        config=config,  # printed in the card and hashed for its provenance
    conda:
        "../../envs/train.yaml"
    script:
        "../scripts/model_card.py"


# External validation (params.yaml `external`; README, "External validation"): each listed set,
# read through its own `data` section, scored by its `model` into results/external/{name}/;
# `snakemake external` (DVC stage `external`) builds them all and results/external/index.md.
# Not part of `all`; with the default `external: []` the index says there is nothing to score.
# A set's images are read from its root like ingest's (the root, index or file list is an input),
# but, as for predict, files changed inside an existing root need --forcerun external_set.
from hemaflow.external.validation import workflow_inputs, workflow_sets

EXTERNAL = workflow_sets(config, LAYERS, Path.cwd(), Path(workflow.basedir) / "workflow/schemas/params.schema.yaml")


rule external_set:
    input:
        unpack(lambda w: workflow_inputs(EXTERNAL[w.name], COMBOS)),
    output:
        metrics="results/external/{name}/metrics.json",
        predictions="results/external/{name}/predictions.parquet",
        sources="results/external/{name}/sources.parquet",
        quarantine="results/external/{name}/quarantine.csv",
        patients="results/external/{name}/patients.csv",
        reliability="results/external/{name}/reliability.csv",
        summary="results/external/{name}/summary.md",
        figures=[
            report(f"results/external/{{name}}/{figure}.png", caption="../report/external.rst",
                   category="External validation", subcategory="{name}", labels={"set": "{name}", "figure": figure})
            for figure in ("confusion", "roc", "patients", "reliability")
        ],
    log:
        "results/logs/external/{name}.log",
    benchmark:
        "results/benchmarks/external/{name}.tsv"
    wildcard_constraints:
        name="|".join(map(re.escape, EXTERNAL)) or "(?!)",
    params:
        library_code=library_code("external.py"),
        entry=lambda w: EXTERNAL[w.name],
        seed=config["seed"],
        bootstrap=config["evaluate"]["bootstrap"],
        confidence=config["evaluate"]["ci"],
        ece_bins=config["evaluate"]["ece_bins"],
    threads: 1
    conda:
        "../../envs/train.yaml"
    script:
        "../scripts/external.py"


rule external:
    input:
        metrics=expand("results/external/{name}/metrics.json", name=EXTERNAL),
    output:
        index=report("results/external/index.md", caption="../report/external.rst", category="External validation",
                     labels={"table": "external sets"}),
    log:
        "results/logs/external/index.log",
    params:
        library_code=library_code("external.py"),
    conda:
        "../../envs/train.yaml"
    script:
        "../scripts/external.py"
