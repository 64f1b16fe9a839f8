if config["data"]["adapter"] == "synthetic":

    rule synthesize:
        output:
            root=directory(config["data"]["root"]),
            # the replica's patient sheet (blood counts), when data.patient_sheet names one
            **({"sheet": PATIENT_SHEET} if PATIENT_SHEET else {}),
        log:
            "results/logs/synthesize.log",
        params:
            library_code=library_code("synthesize.py"),
            synthetic=config["synthetic"],
            seed=config["seed"],
        conda:
            "../../envs/data.yaml"
        script:
            "../scripts/synthesize.py"


rule ingest:
    input:
        data_input(),
    output:
        sources=SOURCES,
        classes=CLASSES,
        quarantine=report("results/reports/quarantine.csv", caption="../report/quarantine.rst", category="Data", labels={"table": "quarantine"}),
        summary="results/reports/ingest.json",
    log:
        "results/logs/ingest.log",
    benchmark:
        "results/benchmarks/ingest.tsv"
    params:
        library_code=library_code("ingest.py"),
        data=ingest_params(),
    threads: 2
    conda:
        "../../envs/data.yaml"
    script:
        "../scripts/ingest.py"


rule split:
    input:
        SOURCES,
    output:
        splits=SPLITS_TABLE,
        summary=report("results/reports/split_summary.csv", caption="../report/split_summary.rst", category="Data", labels={"table": "split summary"}),
        notes="results/reports/split_notes.txt",
    log:
        "results/logs/split.log",
    benchmark:
        "results/benchmarks/split.tsv"
    params:
        library_code=library_code("split.py"),
        split=config["split"],
        seed=config["seed"],
    conda:
        "../../envs/data.yaml"
    script:
        "../scripts/split.py"
