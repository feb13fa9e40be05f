"""The MQuAKE multi-hop protocol: cases kept together, all their edits applied then undone bit-exactly, the
any-of-questions rule, the report's keys, the command line and the study's multi-hop column (tiny random models)."""
import json

import pytest
import torch

from conftest import build_tiny, save_tiny
from lightning_edit.cli import main
from lightning_edit.data import load_requests
from lightning_edit.data.multihop import MultiHopCase, load_multihop_cases
from lightning_edit.editors import build_editor
from lightning_edit.errors import DataError
from lightning_edit.evaluation import multihop as mh
from lightning_edit.evaluation.study import StudyConfig
from lightning_edit.study_runner import Study
from lightning_edit.models.teacher_forcing import TargetScore
from lightning_edit.requests import EditRequest

FT_M = {"layers": [1], "num_steps": 3, "lr": 1e-2}


def _rewrite(subject: str, prompt: str, new: str, true: str) -> dict:
    return {"prompt": prompt, "subject": subject, "target_new": {"str": new, "id": "Q1"},
            "target_true": {"str": true, "id": "Q2"}, "question": f"Who is {subject}?"}


def mquake_records() -> list[dict]:
    """Two MQuAKE cases, the first with two edits, in the upstream file's layout."""
    return [
        {"case_id": 7, "requested_rewrite": [_rewrite("Ellie Kemper", "{} is a citizen of", "Croatia", "United States"),
                                             _rewrite("Croatia", "The head of state of {} is", "Obama", "Milanovic")],
         "questions": ["Who leads the country of Ellie Kemper?", "Who is head of state where Ellie Kemper lives?",
                       "Ellie Kemper's head of state?"],
         "answer": "Donald Trump", "answer_alias": ["Trump", "Trump"], "new_answer": "Obama", "new_answer_alias": ["Barack Obama"]},
        {"case_id": 9, "requested_rewrite": [_rewrite("Paris", "{} is the capital of", "Italy", "France")],
         "questions": ["Which continent is Paris's country in?"], "answer": "Europe", "answer_alias": [],
         "new_answer": "Asia", "new_answer_alias": []},
    ]


@pytest.fixture
def mquake_file(tmp_path):
    path = tmp_path / "mquake.json"
    path.write_text(json.dumps(mquake_records()))
    return path


@pytest.fixture(scope="module")
def tiny(tiny_tokenizer):
    return build_tiny("gpt2", tiny_tokenizer)


def test_cases_keep_their_edits_questions_and_aliases(mquake_file):
    cases = load_multihop_cases(str(mquake_file))
    assert [c.case_id for c in cases] == [7, 9]
    assert [[r.target_new for r in c.requests] for c in cases] == [["Croatia", "Obama"], ["Italy"]]
    assert cases[0].requests[0].prompt == "Ellie Kemper is a citizen of"
    assert cases[0].new_answers == ("Obama", "Barack Obama") and cases[0].old_answers == ("Donald Trump", "Trump")
    assert len(cases[0].questions) == 3 and cases[1].old_answers == ("Europe",)
    # the requests editors see are the same as load_requests gives (one per rewrite)
    assert [r for c in cases for r in c.requests] == load_requests(str(mquake_file))
    assert [c.case_id for c in load_multihop_cases(str(mquake_file), n=1, offset=1)] == [9]


def test_bad_multihop_files_are_refused_by_name(tmp_path, mquake_file):
    not_mquake = tmp_path / "plain.json"
    not_mquake.write_text(json.dumps([{"prompt": "a b", "target_new": "c", "target_true": "d"}]))
    with pytest.raises(DataError, match="needs MQuAKE records"):
        load_multihop_cases(str(not_mquake))
    bad = mquake_records()
    bad[1]["questions"] = "Which continent?"
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(DataError, match="record 1.*field 'questions' must be a list of strings"):
        load_multihop_cases(str(path))
    del bad[1]["new_answer"]
    bad[1]["questions"] = ["Which continent?"]
    path.write_text(json.dumps(bad))
    with pytest.raises(DataError, match="record 1 .*lacks field 'new_answer'"):
        load_multihop_cases(str(path))
    with pytest.raises(DataError, match="no records after --offset 5"):
        load_multihop_cases(str(mquake_file), offset=5)


def _fake_scores(hits: set):
    """A stand-in for score_targets: a (prompt, target) pair is the model's greedy answer iff it is in ``hits``."""
    def score(loaded, prompts, targets, batch_size=32, prefix_cache=None):
        return [TargetScore(torch.tensor([1, 2]), torch.tensor([1, 2] if (p, t) in hits else [1, 0]), torch.zeros(2))
                for p, t in zip(prompts, targets)]
    return score


def test_any_question_with_any_alias_counts(monkeypatch):
    case = MultiHopCase(case_id=1, requests=(EditRequest("X is in", "Y", subject="X"),), questions=("q1?", "q2?", "q3?"),
                        new_answers=("Obama", "Barack Obama"), old_answers=("Trump",))
    monkeypatch.setattr(mh, "score_targets", _fake_scores({("Q: q3? A:", "Barack Obama")}))
    row = mh.score_case(None, case, mh.ZERO_SHOT_TEMPLATE)
    assert row["multihop_acc"] == 1.0 and row["multihop_question_acc"] == pytest.approx(1 / 3)
    assert row["answered_questions"] == [2] and row["multihop_old_answer_acc"] == 0.0 and row["edit_success"] == 0.0
    monkeypatch.setattr(mh, "score_targets", _fake_scores({("Q: q1? A:", "Trump"), ("X is in", "Y")}))
    row = mh.score_case(None, case, mh.ZERO_SHOT_TEMPLATE)
    assert row["multihop_acc"] == 0.0 and row["multihop_old_answer_acc"] == 1.0 and row["edit_success"] == 1.0
    monkeypatch.setattr(mh, "score_targets", _fake_scores({("q2?", "Obama")}))
    assert mh.score_case(None, case, question_template="{question}")["answered_questions"] == [1]
    monkeypatch.setattr(mh, "score_targets", _fake_scores({(mh.DEMONSTRATIONS + "Q: q1? A:", "Obama")}))
    assert mh.score_case(None, case)["answered_questions"] == [0]  # the default: after the demonstrations


def test_all_edits_of_a_case_applied_together_then_undone_bit_exactly(tiny, mquake_file, monkeypatch):
    before = {n: p.detach().clone() for n, p in tiny.model.state_dict().items()}
    editor = build_editor("ft-m", tiny, FT_M)
    calls, changed_when_scored = [], []
    real_edit, real_score = editor.edit, mh.score_case

    def edit(loaded, requests):
        calls.append([r.case_id for r in requests])
        return real_edit(loaded, requests)

    def score(loaded, case, *a):
        changed_when_scored.append(any(not torch.equal(before[n], p) for n, p in loaded.model.state_dict().items()))
        return real_score(loaded, case, *a)

    monkeypatch.setattr(editor, "edit", edit)
    monkeypatch.setattr(mh, "score_case", score)
    report = mh.evaluate_multihop(tiny, editor, load_multihop_cases(str(mquake_file)), progress=False)
    assert calls == [["7-0", "7-1"], ["9-0"]]  # one edit call per case, with all its edits
    assert changed_when_scored == [False, True, False, True]  # pre on the unedited model, post with the edits in
    assert all(torch.equal(before[n], p) for n, p in tiny.model.state_dict().items())
    out = report.to_json()
    for key in ("multihop_acc", "multihop_question_acc", "multihop_old_answer_acc", "edit_success"):
        assert key in out["summary"] and key in out["pre_edit"] and key in out["metric_protocols"]
    assert out["summary"]["protocol"] == "multihop" and out["summary"]["n"] == 2 and report.config["edits"] == 3
    assert [len(r["edits"]) for r in out["requests"]] == [2, 1]


def test_pre_edit_rows_are_found_again_by_a_later_method(tiny, mquake_file, monkeypatch):
    """A study's multi-hop cells share one dict of pre-edit rows: the second method scores only after its edits,
    and finds the same pre values the first computed."""
    real_score, scored = mh.score_case, []

    def score(loaded, case, *a):
        scored.append(case.case_id)
        return real_score(loaded, case, *a)

    monkeypatch.setattr(mh, "score_case", score)
    cases, kept = load_multihop_cases(str(mquake_file)), {}
    first = mh.evaluate_multihop(tiny, build_editor("ft-m", tiny, FT_M), cases, progress=False, pre_scores=kept)
    assert scored == [7, 7, 9, 9] and len(kept) == 2
    scored.clear()
    second = mh.evaluate_multihop(tiny, build_editor("ft-l", tiny, FT_M), cases, progress=False, pre_scores=kept)
    assert scored == [7, 9]  # post-edit only
    assert [r["pre"] for r in second.requests] == [r["pre"] for r in first.requests]
    with torch.no_grad():  # other weights: nothing found, everything scored again
        tiny.model.get_input_embeddings().weight[0] += 1.0
    try:
        scored.clear()
        mh.evaluate_multihop(tiny, build_editor("ft-m", tiny, FT_M), cases[:1], progress=False, pre_scores=kept)
        assert scored == [7, 7]
    finally:
        with torch.no_grad():
            tiny.model.get_input_embeddings().weight[0] -= 1.0


def test_edits_undone_when_scoring_fails(tiny, mquake_file, monkeypatch):
    before = {n: p.detach().clone() for n, p in tiny.model.state_dict().items()}
    real_score, seen = mh.score_case, []

    def score_then_fail(loaded, case, *a):
        seen.append(1)
        if len(seen) == 2:  # the first post-edit scoring
            raise RuntimeError("scoring failed")
        return real_score(loaded, case, *a)

    monkeypatch.setattr(mh, "score_case", score_then_fail)
    with pytest.raises(RuntimeError, match="scoring failed"):
        mh.evaluate_multihop(tiny, build_editor("ft-m", tiny, FT_M), load_multihop_cases(str(mquake_file)), progress=False)
    assert all(torch.equal(before[n], p) for n, p in tiny.model.state_dict().items())


def test_command_line_prints_multihop_accuracy(tiny_tokenizer, mquake_file, tmp_path, capsys):
    model = save_tiny("gpt2", tiny_tokenizer, tmp_path / "tiny")
    argv = ["--multihop", "--data", str(mquake_file), "--model", str(model), "--method", "ft-m", "--set", "layers=[1]",
            "--set", "num_steps=2", "--quiet", "--threads", "1", "--output", str(tmp_path / "r.json")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "multi-hop accuracy" in out and "multihop_acc" in out
    assert json.loads((tmp_path / "r.json").read_text())["summary"]["n"] == 2
    assert main(argv + ["--sequential"]) == 2
    assert "--multihop applies all the edits" in capsys.readouterr().err


def test_study_shows_multihop_beside_portability(tiny, mquake_file, tmp_path):
    config = StudyConfig(name="t", model="tiny-gpt2", methods=["ft-m"], datasets={"demo": 1}, portability_data="demo",
                         batch_data="demo", batch_sizes=[1], sequential_data="demo", sequential_ns=[],
                         multihop_data=str(mquake_file), multihop_n=2, overrides={"ft-m": FT_M})
    tables = Study(config, tmp_path, progress=False, loaded=tiny).run()
    header = tables["table3_portability"].splitlines()[0]
    assert "demo portability" in header and "multihop_acc" in header and "edit_success" in header
    results = json.loads((tmp_path / "results.json").read_text())
    cell = results["cells"]["multihop"]["ft-m"]
    assert cell["protocol"] == "multihop" and "multihop_acc" in cell["summary"] and "multihop_acc" in cell["pre"]


@pytest.mark.slow
def test_rome_on_real_mquake_cases(smollm2):
    """smollm2-135m, ROME, the first 2 MQuAKE cases (3 edits): every edit takes with the case's other edits in, and
    the model is bit-exactly the same afterwards."""
    from conftest import require_data
    from lightning_edit.data import DATASETS

    require_data(DATASETS["mquake"])
    before = {n: p.detach().clone() for n, p in smollm2.model.state_dict().items()}
    report = mh.evaluate_multihop(smollm2, build_editor("rome", smollm2), load_multihop_cases("mquake", n=2), progress=False)
    assert report.config["edits"] == 3 and report.post["edit_success"] == 1.0 and report.pre["edit_success"] == 0.0
    assert 0.0 <= report.post["multihop_acc"] <= 1.0
    assert all(torch.equal(before[n], p) for n, p in smollm2.model.state_dict().items())
