"""The default grid trains one fused (image + blood count) combination next to its image-only
twin, with the patient sheet as an input of the jobs that read it (a dry run, no training)."""

from __future__ import annotations

import re

from hemaflow.train.grid import FUSED_SUFFIX, combos, is_fused

from harness import copy_repo, run


def _jobs(text: str) -> list[dict]:
    """rule, input, output and wildcards of every job in `snakemake -n` output."""
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", text):
        m = re.match(r"(?:local)?rule (\w+):", block.strip())
        if m:
            fields = dict(re.findall(r"^\s+(input|output|wildcards): (.*)$", block, re.M))
            jobs.append({"rule": m[1], **{k: fields.get(k, "").split(", ") for k in ("input", "output", "wildcards")}})
    return jobs


def test_default_dag_trains_evaluates_and_ranks_one_fused_combination(params, tool_env, tmp_path):
    fused = [cid for cid, c in combos(params["train"], params["seed"]).items() if is_fused(c)]
    assert len(fused) == 1
    twin = fused[0].removesuffix(FUSED_SUFFIX)  # the same combination, image only, on the same split
    sheet = params["data"]["patient_sheet"]
    jobs = _jobs(run(["snakemake", "-n"], copy_repo(tmp_path, tool_env), tool_env).stdout)

    def job(rule, combo=None):
        (found,) = [j for j in jobs if j["rule"] == rule and (combo is None or j["wildcards"] == [f"combo={combo}"])]
        return found

    for rule in ("train", "evaluate"):
        assert sheet in job(rule, fused[0])["input"], rule
        assert sheet not in job(rule, twin)["input"], rule
    assert "results/manifests/splits.parquet" in job("train", fused[0])["input"]  # for the training patients
    assert {f"results/evaluation/{c}/metrics.json" for c in (twin, fused[0])} <= set(job("leaderboard")["input"])
    assert sheet in job("synthesize")["output"]  # the replica writes its blood-count sheet
