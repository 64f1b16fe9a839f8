# `snakemake --cores all predict`: classify the images of predict.input with predict.model,
# write results/predict/{predict.name}/ (tables, summary, one HTML report per patient).
# Not part of `all`. The images are a parameter, not a tracked input: after changing files
# inside predict.input, rerun with --forcerun predict.
rule predict:
    input:
        model=predict_model_inputs(),
        patients=config["predict"]["patients"] or [],
    output:
        predictions=f"{PREDICT_DIR}/predictions.parquet",
        csv=f"{PREDICT_DIR}/predictions.csv",
        patients=f"{PREDICT_DIR}/patients.csv",
        summary=f"{PREDICT_DIR}/summary.json",
        reports=directory(f"{PREDICT_DIR}/reports"),
    log:
        f"results/logs/predict/{config['predict']['name']}.log",
    benchmark:
        f"results/benchmarks/predict/{config['predict']['name']}.tsv"
    params:
        library_code=library_code("predict.py"),
        images=config["predict"]["input"],
        model=config["predict"]["model"],
        patient_regex=config["predict"]["patient_regex"],
        cells=config["predict"]["cells"],
        improve=config["predict"]["improve"],
        batch_size=config["predict"]["batch_size"],
        max_pixels=config["data"]["max_pixels"],
        min_side=config["data"]["min_side"],  # ingest's implausibility rule, so predict quarantines what training never saw
    threads: 1
    conda:
        "../../envs/train.yaml"
    script:
        "../scripts/predict.py"
