rule augment_shard:
    input:
        sources=SOURCES,
        splits=SPLITS_TABLE,
    output:
        records="results/shards/{split}/{shard}.tfrecord",
        manifest="results/manifests/shards/{split}/{shard}.parquet",
    log:
        "results/logs/augment/{split}/{shard}.log",
    benchmark:
        "results/benchmarks/augment/{split}/{shard}.tsv"
    params:
        library_code=library_code("augment_shard.py"),
        root=config["data"]["root"],
        max_pixels=config["data"]["max_pixels"],
        n_shards=lambda w: config["augment"]["shards"][w.split],
        preprocess=config["preprocess"],
        augment=augment_params,
        seed=config["seed"],
    conda:
        "../../envs/augment.yaml"
    script:
        "../scripts/augment_shard.py"


rule merge_manifests:
    input:
        [m for split in SPLITS for m in shard_manifests(split)],
    output:
        AUGMENTED,
    log:
        "results/logs/merge_manifests.log",
    benchmark:
        "results/benchmarks/merge_manifests.tsv"
    params:
        library_code=library_code("merge_manifests.py"),
    conda:
        "../../envs/augment.yaml"
    script:
        "../scripts/merge_manifests.py"


rule contact_sheet:
    input:
        records=lambda w: shard_records(w.split),
        manifests=lambda w: shard_manifests(w.split),
        classes=CLASSES,
    output:
        report(
            "results/reports/contact_sheets/{split}.png",
            caption="../report/contact_sheet.rst",
            category="Data",
            subcategory="Contact sheets",
            labels={"split": "{split}"},
        ),
    log:
        "results/logs/contact_sheet/{split}.log",
    benchmark:
        "results/benchmarks/contact_sheet/{split}.tsv"
    params:
        library_code=library_code("contact_sheet.py"),
        per_class=config["augment"]["contact_sheet"],
        channels=channels(),
        seed=config["seed"],
    conda:
        "../../envs/augment.yaml"
    script:
        "../scripts/contact_sheet.py"
