"""The workflow passes Snakemake's own linter (log per rule, software environment, no absolute paths...)."""

from __future__ import annotations

import subprocess

from harness import BIN, ROOT


def test_snakemake_lint_finds_nothing():
    proc = subprocess.run([BIN / "snakemake", "--lint"], cwd=ROOT, capture_output=True, text=True)
    report = proc.stdout + proc.stderr
    # --lint exits 1 when it has any finding, and prints "Lints for rule ..." for each rule.
    assert proc.returncode == 0 and "Lints for" not in report, report
