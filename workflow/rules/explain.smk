rule explain:
    input:
        unpack(explain_inputs),
    output:
        overlays=report(
            directory("results/explain/{combo}/overlays"),
            patterns=["{truth}/{kind}/{image}.png"],
            caption="../report/explain_overlay.rst",
            category="Explanations",
            subcategory="{combo}",
            labels={"model": "{combo}", "class": "{truth}", "kind": "{kind}", "cell": "{image}"},
        ),
        cells="results/explain/{combo}/cells.csv",
        sufficiency=report(
            "results/explain/{combo}/sufficiency.csv",
            caption="../report/sufficiency.rst",
            category="Explanations",
            subcategory="{combo}",
            labels={"model": "{combo}", "class": "sufficiency", "kind": "table", "cell": "all"},
        ),
        plot=report(
            "results/explain/{combo}/sufficiency.png",
            caption="../report/sufficiency.rst",
            category="Explanations",
            subcategory="{combo}",
            labels={"model": "{combo}", "class": "sufficiency", "kind": "figure", "cell": "all"},
        ),
        summary="results/explain/{combo}/summary.json",
    log:
        "results/logs/explain/{combo}.log",
    benchmark:
        "results/benchmarks/explain/{combo}.tsv"
    wildcard_constraints:
        combo="|".join(map(re.escape, [BEST, *IMAGE_COMBOS])),
    params:
        library_code=library_code("explain.py"),
        combos=explained_combos,
        explain=config["explain"],
        channels=channels(),
        seed=config["seed"],
    threads: 1
    conda:
        "../../envs/train.yaml"
    script:
        "../scripts/explain.py"
