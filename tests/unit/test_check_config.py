"""`hemaflow check-config`: a broken --configfile named with its file and line (Snakemake names neither)."""

from __future__ import annotations

import re

import pytest

from hemaflow import cli

from harness import ROOT


@pytest.mark.parametrize(
    "text, message",
    [
        ("train:\n  max_epochs: [3\n", r"bad\.yaml, line 3, column 1: not valid YAML"),
        ("- a\n- b\n", r"bad\.yaml: the config file holds a list"),
        ("", r"bad\.yaml: the config file is empty"),
        ("train:\n  max_epochs: three\n", r"bad\.yaml: train\.max_epochs: 'three' is not of type 'integer'"),
    ],
)
def test_a_broken_config_file_is_named_with_what_is_wrong(tmp_path, capsys, text, message):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    assert cli.main(["check-config", "--project", str(ROOT), str(bad)]) == 2
    assert re.search(message, capsys.readouterr().err)


def test_later_files_override_earlier_ones_as_snakemake_merges_them(tmp_path, capsys):
    (tmp_path / "a.yaml").write_text("train:\n  max_epochs: three\n")
    (tmp_path / "b.yaml").write_text("train:\n  max_epochs: 3\n")
    files = [str(tmp_path / "a.yaml"), str(tmp_path / "b.yaml")]
    assert cli.main(["check-config", "--project", str(ROOT), *files]) == 0
    assert "give a valid configuration" in capsys.readouterr().out
    assert cli.main(["check-config", "--project", str(ROOT), *reversed(files)]) == 2
    assert cli.main(["check-config", "--project", str(ROOT), str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml: no such file" in capsys.readouterr().err
