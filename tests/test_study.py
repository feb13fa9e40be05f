import csv
import json

import pytest

from conftest import build_tiny
from lightning_edit.errors import ConfigError
from lightning_edit import study_runner as study_mod  # the module whose evaluate_editing and Run Study uses
from lightning_edit.evaluation.study import StudyConfig
from lightning_edit.evaluation.study.lifelong_report import lifelong_table
from lightning_edit.study_runner import Study
from lightning_edit.metrics.intervals import bootstrap_interval


def test_study_writes_tables_figures_and_resumes(tmp_path, tokenizer, monkeypatch):
    loaded = build_tiny("llama", tokenizer)
    config = StudyConfig(name="t", model="tiny-llama", methods=["ft-m", "no-such-method"], datasets={"demo": 2},
                         portability_data="demo", batch_data="demo", batch_sizes=[1, 2], sequential_data="demo",
                         sequential_ns=[1, 2], overrides={"ft-m": {"layers": [1], "num_steps": 2}})
    calls = []
    real = study_mod.evaluate_editing

    def counting(*a, **k):
        calls.append(k.get("protocol"))
        return real(*a, **k)

    built = []
    real_build = study_mod.Run.editor  # every editor is built by the one runner

    def counting_builds(run):
        built.append(run.spec.method)
        return real_build(run)

    monkeypatch.setattr(study_mod, "evaluate_editing", counting)
    monkeypatch.setattr(study_mod.Run, "editor", counting_builds)
    tables = Study(config, tmp_path, progress=False, loaded=loaded).run()
    # The curves' first points are the single-edit cell (2 records, each edited alone), not cells of one record
    assert calls == ["single", "batch", "sequential"]
    # one editor for the single-edit phase, dropped before the next method's; one for the batch and the sequence
    assert built.count("ft-m") == 2
    for name in ("table2", "table3", "table4", "fig5_memory", "fig6_batch", "fig7_sequential"):
        assert (tmp_path / f"{name}.md").exists() and (tmp_path / f"{name}.csv").exists()
    for png in ("fig5_memory.png", "fig6_batch.png", "fig7_sequential.png"):
        assert (tmp_path / png).stat().st_size > 1000
    assert "ft-m" in tables["table2_reliability_generalization_locality"]
    results = json.loads((tmp_path / "results.json").read_text())
    assert "no-such-method" in results["skipped_methods"]
    assert results["cells"]["sequential"]["ft-m|2"]["summary"]["protocol"] == "sequential"
    assert results["cells"]["batch"]["ft-m|1"] == results["cells"]["single"]["ft-m|demo"]
    assert results["cells"]["sequential"]["ft-m|1"] == results["cells"]["single"]["ft-m|demo"]
    # each request's own values are kept (what the intervals resample), in the cell files only
    sequence_cell = next(json.loads(f.read_text()) for f in (tmp_path / "cells").glob("*__sequential__*n2__*.json"))
    assert len(sequence_cell["per_request"]) == 2
    assert "per_request" not in results["cells"]["sequential"]["ft-m|2"]
    assert sequence_cell["device"] == "cpu" and "Cells computed on an accelerator" not in (tmp_path / "README.md").read_text()
    assert (tmp_path / "versions.json").exists() and (tmp_path / "config.yaml").exists()

    calls.clear()  # a rerun reads every cell from disk
    Study(config, tmp_path, progress=False, loaded=loaded).run()
    assert calls == []
    config.overrides["ft-m"]["num_steps"] = 3  # a changed hyperparameter recomputes its cells only
    Study(config, tmp_path, progress=False, loaded=loaded).run()
    assert len(calls) == 3

    calls.clear()  # tables only: nothing computed, the missing cells named
    Study(config, tmp_path / "empty", progress=False, loaded=loaded, compute=False).run()
    assert calls == []
    assert "Cells not computed" in (tmp_path / "empty" / "README.md").read_text()


def test_study_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        StudyConfig.load("no-such-study")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nunknown_key: 1\n")
    with pytest.raises(ConfigError, match="unknown_key"):
        StudyConfig.load(str(bad))
    assert StudyConfig.load("quick").name == "quick"


def test_study_sequential_batches_and_per_key_table(tmp_path, tokenizer, monkeypatch):
    loaded = build_tiny("llama", tokenizer)
    config = StudyConfig(name="t", model="tiny-llama", methods=["ft-m", "grace"], datasets={"demo": 2}, portability_data="demo",
                         batch_data="demo", batch_sizes=[1], sequential_data="demo", sequential_ns=[4],
                         sequential_batch_size=2, overrides={"ft-m": {"layers": [1], "num_steps": 2}, "grace": {"num_steps": 2}})
    seen = []
    real = study_mod.evaluate_editing

    def recording(loaded_, editor, requests, **k):
        seen.append((editor.name, k.get("protocol"), k.get("batch_size"), len(requests)))
        return real(loaded_, editor, requests, **k)

    monkeypatch.setattr(study_mod, "evaluate_editing", recording)
    tables = Study(config, tmp_path, progress=False, loaded=loaded).run()
    assert ("ft-m", "sequential", 2, 4) in seen  # FT-M batches: two batches of two, kept, scored after the last
    assert ("grace", "sequential", 1, 4) in seen  # GRACE edits one request at a time
    header = (tmp_path / "per_key.csv").read_text().splitlines()[0].split(",")
    assert header[:2] == ["method", "data"] and any(h.startswith("locality/") for h in header)
    assert "per_key_scores" in tables


def test_tables_give_bootstrap_intervals_beside_values(tmp_path):
    """A cell's values with the 95% interval over its requests, in the markdown and as CSV columns of their own."""
    from lightning_edit.evaluation.study import write_tables

    config = StudyConfig(name="t", model="m", methods=["rome"], datasets={"zsre": 4}, portability_data="zsre",
                         batch_data="zsre", sequential_data="zsre")
    cell = {"summary": {"reliability": 0.75, "generalization": 0.5, "locality": 1.0, "edit_seconds": 2.0,
                        "peak_memory_mb": 900.0},
            "per_request": [{"post": {"reliability": v, "generalization": g, "locality": 1.0}, "edit_seconds": t}
                            for v, g, t in ((1.0, 1.0, 1.0), (1.0, 0.0, 2.0), (1.0, 1.0, 2.0), (0.0, 0.0, 3.0))]}
    write_tables(tmp_path, config, {("rome", "zsre"): cell}, {}, {}, {})
    md = (tmp_path / "table2.md").read_text()
    low, high = bootstrap_interval([1.0, 1.0, 1.0, 0.0])
    assert f"0.750 [{low:.3f}, {high:.3f}]" in md and low < 0.75 < high
    assert "1.000 [1.000, 1.000]" in md  # every request kept its neighbours: no spread
    rows = list(csv.reader(open(tmp_path / "table2.csv")))
    assert rows[0][:4] == ["method", "zsre reliability", "zsre reliability 95% low", "zsre reliability 95% high"]
    assert [float(x) for x in rows[1][1:4]] == pytest.approx([0.75, low, high])
    assert "[" in (tmp_path / "table4.md").read_text()  # seconds per edit: an interval of the median
    assert "[" not in (tmp_path / "fig5_memory.md").read_text()  # a maximum: no interval


def test_cells_from_an_accelerator_are_named_in_the_readme(tmp_path):
    """A cell computed with ``--device cuda`` keeps the device's name; the README lists it, since its seconds and
    peak memory are the GPU's."""
    from lightning_edit.evaluation.study import write_tables

    config = StudyConfig(name="t", model="m", methods=["memit"], datasets={"zsre": 2}, portability_data="zsre",
                         batch_data="zsre", sequential_data="zsre")
    cell = {"summary": {"reliability": 1.0, "generalization": 1.0, "locality": 1.0}, "per_request": []}
    write_tables(tmp_path, config, {("memit", "zsre"): cell}, {("memit", 1000): {**cell, "device": "NVIDIA H200"}}, {}, {})
    readme = (tmp_path / "README.md").read_text()
    assert "## Cells computed on an accelerator" in readme and "batch memit 1000: NVIDIA H200" in readme
    assert "single" not in readme.split("## Cells computed on an accelerator")[1]


def test_bootstrap_interval():
    assert bootstrap_interval([0.5] * 10) == (0.5, 0.5)
    assert bootstrap_interval([1.0]) is None
    values = [0.0, 1.0] * 20
    low, high = bootstrap_interval(values)
    assert low < 0.5 < high and bootstrap_interval(values) == (low, high)  # seeded: the same every time
    assert high - low < bootstrap_interval([0.0, 1.0] * 3)[1] - bootstrap_interval([0.0, 1.0] * 3)[0]  # more → narrower
    with pytest.raises(ValueError, match="statistic"):
        bootstrap_interval(values, statistic="mode")


def test_a_speed_only_setting_keeps_a_cells_key():
    """Cells are cached under a hash of what can change their results: the padded tokens per optimisation pass
    (memory and time only) is left out, a layer is not."""
    from lightning_edit.editors import get_editor_class
    from lightning_edit.evaluation.study import _cell_key

    hp_class = get_editor_class("memit").HParams
    base, faster, other = (hp_class.from_dict(v) for v in ({}, {"v_tokens_per_pass": 64}, {"layers": [2, 3]}))
    key = lambda hp: _cell_key("memit", "m", "zsre", "single", 1, 5, hp.result_dict())  # noqa: E731
    assert "v_tokens_per_pass" in faster.to_dict() and "v_tokens_per_pass" not in faster.result_dict()
    assert key(base) == key(faster) != key(other)


def test_a_bumped_results_version_computes_a_cell_again(tmp_path, tokenizer, monkeypatch):
    """A method whose code now edits differently bumps ``results_version``: its cached cells are not read back.
    Version 1 (every method today) leaves the keys cells were written under."""
    from lightning_edit.editors import get_editor_class
    from lightning_edit.evaluation.study import _cell_key

    hp = {"layers": [1]}
    assert _cell_key("ft-m", "m", "zsre", "single", 1, 2, hp, {"editor": 1, "evaluation": 1}) == \
        _cell_key("ft-m", "m", "zsre", "single", 1, 2, hp)
    assert _cell_key("ft-m", "m", "zsre", "single", 1, 2, hp, {"editor": 2, "evaluation": 1}) != \
        _cell_key("ft-m", "m", "zsre", "single", 1, 2, hp)
    loaded = build_tiny("llama", tokenizer)
    config = StudyConfig(name="t", model="tiny-llama", methods=["ft-m"], datasets={"demo": 1},
                         overrides={"ft-m": {"layers": [1], "num_steps": 1}})
    Study(config, tmp_path, progress=False, loaded=loaded).cell("ft-m", "demo", "single", 1)
    monkeypatch.setattr(get_editor_class("ft-m"), "results_version", 2)
    Study(config, tmp_path, progress=False, loaded=loaded).cell("ft-m", "demo", "single", 1)
    assert len(list((tmp_path / "cells").glob("ft-m__*.json"))) == 2


def test_lifelong_study_reads_both_ways_with_capability_and_resumes(tmp_path, tokenizer, monkeypatch):
    """A study of sequences alone (``datasets: {}``, as configs/study/lifelong.yaml): the lifelong table with both
    readings and their intervals, seconds early and late, capability before and after; its curve and capability
    figures; the cell's checkpoint folder gone once the cell is whole."""
    from lightning_edit.evaluation import capability as capability_mod

    loaded = build_tiny("llama", tokenizer)
    monkeypatch.setattr(capability_mod, "heldout_perplexity",  # the tiny model's context is short
                        lambda loaded, limit=None, window=256, batch_size=8: 100.0 + len(loaded.patches))
    config = StudyConfig(name="ll", model="tiny-llama", methods=["grace"], datasets={}, batch_sizes=[],
                         sequential_data="demo", sequential_ns=[4], sequential_eval_every=2,
                         sequential_checkpoint_every=2, sequential_capability_every=2,
                         capability_tasks=["local-perplexity"], capability_limit=1, overrides={"grace": {"num_steps": 2}})
    config.check()
    tables = Study(config, tmp_path, progress=False, loaded=loaded).run()
    assert set(tables) == {"fig7_sequential", "lifelong"}  # no single-edit tables without data sets
    header = (tmp_path / "lifelong.csv").read_text().splitlines()[0].split(",")
    assert "retained reliability" in header and "immediate locality 95% low" in header
    assert {"s/edit first 10%", "local-perplexity before", "local-perplexity after",
            "local-perplexity first 5% drop at"} <= set(header)
    row = next(csv.DictReader((tmp_path / "lifelong.csv").read_text().splitlines()))
    assert float(row["local-perplexity before"]) == 100.0 and float(row["local-perplexity after"]) > 100.0
    cell = next(json.loads(f.read_text()) for f in (tmp_path / "cells").glob("grace__*.json"))
    assert [p["edits"] for p in cell["capability"]["points"]] == [0, 2, 4]
    assert [p["edits"] for p in cell["curve"]] == [2, 4] and all("immediate" in r for r in cell["per_request"])
    assert (tmp_path / "lifelong_curve_grace_demo_4.png").stat().st_size > 1000
    assert (tmp_path / "lifelong_capability.png").stat().st_size > 1000
    assert not any((tmp_path / "cells" / "partial").glob("*/edits-*"))  # the whole cell needs no checkpoint
    # CounterFact's lifelong study reads other scores (configs/study/lifelong-counterfact.yaml): the table shows them
    config.sequential_scores = ["efficacy_score", "neighborhood_score"]
    header, rows = lifelong_table(config, {("grace", 4): cell})
    assert header[3:7] == ["retained efficacy_score", "retained neighborhood_score", "immediate efficacy_score",
                           "immediate neighborhood_score"]
    assert rows[0][3].value == cell["summary"]["efficacy_score"] and rows[0][3].interval is not None
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ncapability_tasks: local-perplexity\n")
    with pytest.raises(ConfigError, match="capability_tasks"):
        StudyConfig.load(str(bad))
    bad.write_text("name: x\nsequential_scores: [efficacy]\n")
    with pytest.raises(ConfigError, match="sequential_scores.*efficacy_score"):
        StudyConfig.load(str(bad))


def test_processes_per_method_share_one_folders_tables(tmp_path, tokenizer):
    """The lifelong study runs one process per method into one folder: each writes the study's configuration and
    the tables of every finished cell, not only its own method's (the last one used to drop the others' rows)."""
    import yaml

    from conftest import save_tiny
    from lightning_edit.cli import main

    model = save_tiny("llama", tokenizer, tmp_path / "tiny-llama")
    config = {"name": "t", "model": str(model), "methods": ["grace", "ft-m"], "datasets": {"demo": 2},
              "portability_data": "demo", "batch_data": "demo", "batch_sizes": [1], "sequential_data": "demo",
              "sequential_ns": [1], "fluency": False,
              "overrides": {"ft-m": {"layers": [1], "num_steps": 2}, "grace": {"num_steps": 2}}}
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(config))
    results = tmp_path / "results"
    for method in ("grace", "ft-m"):
        argv = ["study", "--config", str(tmp_path / "study.yaml"), "--methods", method, "--results-dir", str(results),
                "--quiet", "--threads", "1"]
        assert main(argv) == 0
        written = yaml.safe_load((results / "config.yaml").read_text())
        assert written["methods"] == ["grace", "ft-m"]
    table = (results / "table2.md").read_text()
    assert "| grace |" in table and "| ft-m |" in table
