"""The command line before any model is loaded: every bad input refused by name, --save refused where it would
save something other than what was scored, the statistics text shipped with the package, the printed report."""

import pytest
import torch

from lightning_edit import EditRequest
from lightning_edit.cli import build_parser, main
from lightning_edit.evaluation.protocols import Report, format_table, verdict


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if the CLI gets as far as loading a model."""
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr("lightning_edit.models.load_model", refuse)


@pytest.mark.parametrize("argv, message", [
    (["--n", "-1"], "--n"),
    (["--offset", "-3"], "--offset"),
    (["--batch-size", "-5"], "--batch-size"),
    (["--threads", "0"], "--threads"),
    (["--set", "layers=[4"], "--set layers"),
])
def test_argument_errors_name_the_flag(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--set", "v_lr=nan"], "field 'v_lr' must be a finite number"),
    (["--set", "v_num_grad_steps=abc"], "field 'v_num_grad_steps' must be a whole number"),
    (["--set", "mom2_adjustment='no'"], "field 'mom2_adjustment' must be true or false"),
    (["--set", "stats_text=/no/such/text.txt"], "field 'stats_text'"),
    (["--output", "/proc/no/such/r.json"], "--output /proc/no/such/r.json: cannot create the folder"),
    (["--output", "EMPTY"], "is a folder"),
    (["--method", "grace", "--save", "SAVE"], "--sequential"),  # a patch method saves too; the protocol is checked
    (["--save", "SAVE"], "--sequential"),  # 20 demo requests edited one at a time: no single model to save
    (["--method", "mend", "--editor", "/no/such/checkpoint"], "--editor /no/such/checkpoint"),
    (["--data", "zsre", "--data-dir", "EMPTY"], "data get zsre"),
])
def test_bad_input_refused_before_the_model_loads(argv, message, tmp_path, capsys, no_model_load):
    argv = [str(tmp_path / "saved") if a == "SAVE" else str(tmp_path) if a == "EMPTY" else a for a in argv]
    assert main(argv + ["--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_on_a_cpu_machine_is_refused(capsys, no_model_load):
    assert main(["--device", "cuda", "--quiet"]) == 2
    assert "--device cuda" in capsys.readouterr().err
    assert main(["study", "--device", "cuda", "--quiet"]) == 2  # a study too, before any cell
    assert "--device cuda" in capsys.readouterr().err


def test_output_folder_is_created_before_the_run(tmp_path, capsys, no_model_load):
    # the run then stops at the model load (refused here): the folder was made before any work
    with pytest.raises(AssertionError, match="model was loaded"):
        main(["--n", "1", "--output", str(tmp_path / "new" / "r.json"), "--quiet"])
    assert (tmp_path / "new").is_dir()


def test_save_of_a_method_that_cannot_save_is_refused_with_its_reason(tmp_path, capsys, monkeypatch, no_model_load):
    from lightning_edit.editors import get_editor_class

    monkeypatch.setattr(get_editor_class("grace"), "cannot_save", "its codebook lives on another machine")
    assert main(["--method", "grace", "--n", "1", "--save", str(tmp_path / "saved"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--save: grace's edited model cannot be saved: its codebook lives on another machine" in err
    assert not (tmp_path / "saved").exists() or not any((tmp_path / "saved").iterdir())


def test_save_onto_an_existing_file_is_refused(tmp_path, capsys, no_model_load):
    existing = tmp_path / "model"
    existing.write_text("x")
    assert main(["--n", "1", "--save", str(existing), "--quiet"]) == 2
    assert "is an existing file" in capsys.readouterr().err


def test_help_names_the_subcommands_and_request_format(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for word in ("study", "data get", "ask", "--threads", "target_new", "rephrase_prompts"):
        assert word in out, word


def test_statistics_text_ships_with_the_package():
    from lightning_edit.data import STATS_TEXT_PATH
    from lightning_edit.stats import StatsSource, default_text_path

    assert default_text_path() == STATS_TEXT_PATH and STATS_TEXT_PATH.is_file()
    assert "CC BY-SA" in (STATS_TEXT_PATH.parent / "README.md").read_text()
    # roughly 4 characters a token: enough text for the default 20k tokens on any tokenizer we support
    assert len(STATS_TEXT_PATH.read_text(encoding="utf-8")) > 4 * 50_000
    assert StatsSource.from_path().text_path == STATS_TEXT_PATH


def test_statistics_text_is_a_prefix_of_the_full_wikitext():
    """Same first tokens as WikiText-2's test split, so statistics made from either are equal."""
    from conftest import DATA_DIR

    from lightning_edit.data import STATS_TEXT_PATH

    full = DATA_DIR / "text" / "wikitext-2" / "wiki.test.raw"
    if not full.exists():
        pytest.skip("full WikiText-2 not present")
    full_lines = [line.strip() for line in full.read_text(encoding="utf-8").splitlines() if line.strip()]
    ours = [line.strip() for line in STATS_TEXT_PATH.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert full_lines[: len(ours)] == ours


def _report(posts: list[dict], edit_seconds: list[float], generations: bool = True) -> Report:
    rows = []
    for i, (post, sec) in enumerate(zip(posts, edit_seconds)):
        row = {"case_id": i, "prompt": f"prompt {i}", "target_new": "English", "target_true": "French",
               "pre": {k: 0.0 for k in post}, "post": post, "edit_seconds": sec, "score_seconds": 1.0}
        if generations:
            row.update(pre_generations=["French, and she"], post_generations=["English, and she"])
        rows.append(row)
    mean = {k: sum(p[k] for p in posts) / len(posts) for k in posts[0]}
    n = len(posts)
    return Report(method="rome", model="m", protocol="single", n=n, batch_size=1, requests=rows,
                  pre={k: 0.0 for k in mean}, post=mean,
                  efficiency={"edit_seconds": sorted(edit_seconds)[n // 2], "edit_seconds_mean": sum(edit_seconds) / n,
                              "seconds_per_request": sum(edit_seconds) / n + 1.0, "prepare_seconds": 0.0})


def test_table_has_full_names_and_a_mean_row_that_is_a_mean():
    report = _report([{"reliability": 1.0, "reliability_exact": 1.0, "generalization": 0.5, "efficacy_score": 1.0},
                      {"reliability": 0.5, "reliability_exact": 0.0, "generalization": 0.5, "efficacy_score": 1.0},
                      {"reliability": 1.0, "reliability_exact": 1.0, "generalization": 0.0, "efficacy_score": 1.0}],
                     edit_seconds=[1.0, 1.0, 7.0])
    table = format_table(report)
    assert "generalization" in table and "efficacy_score" in table
    mean_row = [line for line in table.splitlines() if line.strip().startswith("mean")][0]
    assert "3.00" in mean_row  # mean of 1, 1, 7 (the median would be 1.00)
    assert "before: 'French, and she'" in table and "after: 'English, and she'" in table
    line = verdict(report)
    assert line.startswith("2/3 edits took") and "3.0 s per edit" in line and "4.0 s per request" in line


def test_rollback_when_scoring_fails(tokenizer, monkeypatch):
    """An error after the edit, while scoring, leaves the model exactly as before (single protocol)."""
    from conftest import build_tiny

    from lightning_edit.editors import build_editor
    from lightning_edit.evaluation import protocols

    loaded = build_tiny("gpt2", tokenizer)
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    editor = build_editor("ft-m", loaded, {"layers": [1], "num_steps": 2})
    calls = {"n": 0}
    real_measure = protocols.measure

    def failing_measure(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:  # the first post-edit scoring (pre-edit scores come from evaluation/pre_edit.py)
            raise RuntimeError("injected")
        return real_measure(*args, **kwargs)

    monkeypatch.setattr(protocols, "measure", failing_measure)
    request = EditRequest(prompt="The capital of France is", target_new="Rome")
    with pytest.raises(RuntimeError, match="injected"):
        protocols.evaluate_editing(loaded, editor, [request], fluency=False, progress=False)
    for k, v in loaded.model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_one_batch_can_be_kept_and_undone(tokenizer):
    from conftest import build_tiny

    from lightning_edit.editors import build_editor
    from lightning_edit.evaluation import evaluate_editing

    loaded = build_tiny("llama", tokenizer)
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    editor = build_editor("ft-m", loaded, {"layers": [1], "num_steps": 2})
    requests = [EditRequest(prompt="The capital of France is", target_new="Rome"),
                EditRequest(prompt="The capital of Italy is", target_new="Paris")]
    report = evaluate_editing(loaded, editor, requests, protocol="batch", batch_size=2, fluency=False, progress=False,
                              keep_edits=True, generate_tokens=3)
    assert len(report.kept_deltas) == 1 and "one edit call" in report.config["scored"]
    assert len(report.requests[0]["post_generations"]) == 1
    changed = any(not torch.equal(v, before[k]) for k, v in loaded.model.state_dict().items())
    assert changed
    report.kept_deltas[0].undo(loaded)
    for k, v in loaded.model.state_dict().items():
        assert torch.equal(v, before[k]), k
    with pytest.raises(ValueError, match="single edit call"):
        evaluate_editing(loaded, editor, requests, protocol="single", keep_edits=True, fluency=False, progress=False)


def test_sequential_batches_and_per_kind_scores(tokenizer):
    """--sequential --batch-size k: batches applied one after another and kept; locality and portability scored
    per probe kind (KnowEdit's names) beside the overall numbers."""
    from conftest import build_tiny

    from lightning_edit.editors import build_editor
    from lightning_edit.evaluation import evaluate_editing
    from lightning_edit.requests import PromptAnswer

    loaded = build_tiny("llama", tokenizer)
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    editor = build_editor("ft-m", loaded, {"layers": [1], "num_steps": 2})
    locality = (PromptAnswer("The capital of Italy is", "Rome", "Relation_Specificity"),
                PromptAnswer("Water boils at", "100 degrees", "Forgetfulness"))
    portability = (PromptAnswer("The language of France's capital is", "French", "Reasoning"),)
    requests = [EditRequest(prompt=f"Fact number {i} is", target_new="blue", locality=locality, portability=portability)
                for i in range(4)]
    report = evaluate_editing(loaded, editor, requests, protocol="sequential", batch_size=2, fluency=False,
                              progress=False, keep_edits=True)
    # one kept edit for the whole sequence (its size does not grow with the edits), holding every request
    assert len(report.kept_deltas) == 1 and len(report.kept_deltas[0].requests) == 4
    assert report.kept_deltas[0].calls == 2
    assert "2 batches of up to 2 requests" in report.config["scored"]
    summary = report.to_json()
    for key in ("locality/Relation_Specificity", "locality/Forgetfulness", "portability/Reasoning"):
        assert key in summary["summary"] and key in summary["metric_protocols"], key
    per_kind = [summary["summary"]["locality/Relation_Specificity"], summary["summary"]["locality/Forgetfulness"]]
    assert abs(summary["summary"]["locality"] - sum(per_kind) / 2) < 1e-3  # equal probe counts: the mean of kinds
    for delta in reversed(report.kept_deltas):
        delta.undo(loaded)
    for k, v in loaded.model.state_dict().items():
        assert torch.equal(v, before[k]), k
