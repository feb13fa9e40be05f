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


# ---- finding 14: trace ------------------------------------------------------------------------------------------

def _trace_records(tmp_path: Path, case_ids=(0, 1)) -> str:
    records = [{"prompt": "The mother tongue of Danielle Darrieux is", "target_new": "English", "target_true": "French",
                "subject": "Danielle Darrieux", "case_id": case_ids[0]},
               {"prompt": "Toko Yasuda, the", "target_new": "piano", "target_true": "guitar", "subject": "Toko Yasuda",
                "case_id": case_ids[1]}]
    path = tmp_path / "trace.json"
    path.write_text(json.dumps(records))
    return str(path)


@pytest.mark.parametrize("flags, name", [
    (["--noise", "inf"], "--noise"),
    (["--noise", "nan"], "--noise"),
    (["--offset", "5"], "--offset"),  # zero records: a division by zero after the model loaded, before
])
def test_trace_refuses_before_loading(tmp_path, capsys, flags, name):
    # "no-such-model": any check that comes after the model load would fail on the model instead
    argv = ["trace", "--model", "no-such-model", "--data", _trace_records(tmp_path), "--output", str(tmp_path / "o")]
    assert main(argv + flags + ["--quiet"]) == 2
    assert name in capsys.readouterr().err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_trace_file_names_are_sanitised():
    from lightning_edit.evaluation.trace_report import record_file_name

    assert record_file_name(0) == "record_0.png"
    for bad in ("../../evil", "/etc/passwd", "a/b", "..", "x" * 500):
        name = record_file_name(bad)
        assert "/" not in name and ".." not in name and len(name) < 120
    assert record_file_name("a/b") != record_file_name("a_b")


def test_trace_writes_each_record_as_it_finishes(tmp_path, tokenizer, monkeypatch):
    from conftest import save_tiny
    from lightning_edit.evaluation import tracing

    model_dir = save_tiny("llama", tokenizer, tmp_path / "tiny")
    real, calls = tracing.PromptTracer.trace, []

    def trace_then_fail(self, kinds):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the second record never finishes
        return real(self, kinds)

    monkeypatch.setattr(tracing.PromptTracer, "trace", trace_then_fail)
    out = tmp_path / "trace"
    assert main(["trace", "--model", str(model_dir), "--data", _trace_records(tmp_path, ("../up", 1)), "--n", "2",
                 "--samples", "2", "--window", "2", "--kinds", "mlp", "--output", str(out), "--quiet"]) == 130
    names = {p.name for p in out.iterdir()}
    assert "records.csv" in names and "cells.csv" in names  # the first record is on disk
    plots = [n for n in names if n.endswith(".png")]
    assert len(plots) == 1 and plots[0].startswith("record_") and ".." not in plots[0]
    assert not (tmp_path / "up.png").exists() and not any(p.name.startswith(".") for p in out.iterdir())
    assert "../up" in (out / "records.csv").read_text()
