"""Issue 22, findings 12 and 14-17: the front doors and input files (study YAML, trace, request data, the EasyEdit
layer, editor checkpoints) refuse what is wrong by name, before any model loads."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from lightning_edit.cli import main
from lightning_edit.errors import CheckpointError, ConfigError, DataError, LightningEditError, RequestError


def _study(tmp_path: Path, text: str) -> str:
    path = tmp_path / "study.yaml"
    path.write_text(text, encoding="utf-8")
    return str(path)


# ---- finding 12: study YAML ------------------------------------------------------------------------------------

@pytest.mark.parametrize("body, field", [
    ("name: t\nmethods: rome\n", "methods"),                 # a string, iterated letter by letter before
    ("name: t\ndatasets: {}\n", "datasets"),                 # StopIteration before
    ("name: t\ndatasets: [zsre]\n", "datasets"),             # AttributeError before
    ("name: ../x\n", "name"),                                # written outside results/ before
    ("name: t\nmethods: [rome, nope]\n", "nope"),
    ("name: t\nmethods: []\n", "methods"),
    ("name: t\nbatch_sizes: 3\n", "batch_sizes"),
    ("name: t\nfluency: maybe\n", "fluency"),
    ("name: t\nmultihop_n: -1\n", "multihop_n"),
    ("name: t\noverrides: {rome: 3}\n", "overrides"),
    ("- a\n- b\n", "mapping"),
    ("name: t\nmethods: [rome\n", "YAML"),
    ("methods: [rome]\n", "name"),
])
def test_study_yaml_is_typed(tmp_path, body, field):
    with pytest.raises(ConfigError, match=field):
        from lightning_edit.evaluation.study import StudyConfig
        StudyConfig.load(_study(tmp_path, body))


def test_study_cli_refuses_bad_yaml_and_empty_methods(tmp_path, capsys):
    results = tmp_path / "results"
    assert main(["study", "--config", _study(tmp_path, "name: t\nmethods: rome\n"), "--results-dir", str(results),
                 "--quiet"]) == 2
    assert "'methods'" in capsys.readouterr().err
    assert main(["study", "--methods", ",", "--results-dir", str(results), "--quiet"]) == 2
    assert "--methods" in capsys.readouterr().err
    assert main(["study", "--methods", "rome,nope", "--results-dir", str(results), "--quiet"]) == 2
    assert "nope" in capsys.readouterr().err
    assert not results.exists()  # refused before anything was written


def test_study_default_folder_stays_under_results():
    from lightning_edit.evaluation.study import safe_folder_name

    assert "/" not in safe_folder_name("../../etc/x") and not safe_folder_name("..").startswith(".")
