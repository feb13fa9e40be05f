"""General capability (evaluation/capability.py, ``lightning-edit capability``, ``--capability-every``): the local
tasks on a tiny model, an lm-eval task from a local YAML through HFLM with a patch attached, the messages."""
from __future__ import annotations

import json
import math
import sys

import pytest
from conftest import DATA_DIR, build_tiny, require_data

from lightning_edit import models
from lightning_edit.cli import main
from lightning_edit.editors import build_editor
from lightning_edit.errors import ConfigError, DataError
from lightning_edit.evaluation.capability import (
    CapabilityCurve,
    capability_scores,
    check_tasks,
    heldout_perplexity,
    known_facts_recall,
    lm_eval_scores,
    parse_tasks,
)
from lightning_edit.evaluation.protocols import evaluate_editing
from lightning_edit.models.teacher_forcing import score_targets
from lightning_edit.paths import HELDOUT_TEXT_PATH, STATS_TEXT_PATH
from lightning_edit.requests import EditRequest

EDIT_PROMPT = "The capital of Freedonia is"


def test_heldout_text_shares_no_row_with_the_statistics_text():
    held = [line for line in HELDOUT_TEXT_PATH.read_text(encoding="utf-8").splitlines() if line.strip()]
    stats = {line.strip() for line in STATS_TEXT_PATH.read_text(encoding="utf-8").splitlines() if line.strip()}
    paragraphs = {line.strip() for line in held if not line.strip().startswith("=")}  # not "= = Family = =" headings
    assert len(paragraphs) > 40 and not paragraphs & stats
    full = DATA_DIR / "text" / "wikitext-2" / "wiki.test.raw"
    if full.is_file():  # the end of the full test split, row for row
        rows = full.read_text(encoding="utf-8").splitlines()
        assert [r.strip() for r in rows[-len(held):]] == [r.strip() for r in held]


def test_heldout_perplexity_on_a_tiny_model(tokenizer):
    tiny = build_tiny("gpt2", tokenizer)
    ppl = heldout_perplexity(tiny, limit=3, window=32, batch_size=2)
    # a random model predicts about uniformly over its vocabulary
    assert 0.3 * len(tokenizer) < ppl < 3 * len(tokenizer)
    assert heldout_perplexity(tiny, limit=3, window=32, batch_size=3) == pytest.approx(ppl, rel=1e-5)
    assert heldout_perplexity(tiny, limit=1, window=32) != pytest.approx(ppl, rel=1e-6)  # the limit is honoured
    with pytest.raises(ConfigError, match="give a smaller --window"):
        heldout_perplexity(tiny, window=10**6)


def test_known_facts_recall_counts_exact_completions(tokenizer):
    tiny = build_tiny("gpt2", tokenizer)
    prompt = "The capital of France is"
    greedy = score_targets(tiny, [prompt], ["Paris"])[0]
    said = tokenizer.decode(greedy.predicted_ids[:1])  # the model's own first token: a fact it "knows"
    facts = [EditRequest(prompt=prompt, target_new=said, target_true=said),
             EditRequest(prompt=prompt, target_new="zzz-never", target_true="zzz-never")]
    assert known_facts_recall(tiny, facts) == 0.5


def test_known_facts_on_the_real_file(tokenizer):
    require_data("known_1000/known_1000.json")
    tiny = build_tiny("llama", tokenizer)
    scores = capability_scores(tiny, ["local-perplexity", "known-facts"], limit=4, data_dir=str(DATA_DIR), window=32)
    assert set(scores) == {"local-perplexity", "known-facts"} and 0.0 <= scores["known-facts"] <= 1.0


def test_missing_known_facts_say_data_get(tmp_path):
    with pytest.raises(DataError, match="data get known_1000"):
        check_tasks(["known-facts"], data_dir=str(tmp_path))


def test_missing_lm_eval_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval raises ImportError
    with pytest.raises(ConfigError, match=r"pip install lm-eval.*lightning-edit\[capability\]"):
        check_tasks(["arc_easy"])
    check_tasks(["local-perplexity"])  # the local tasks need no lm-eval
    assert main(["capability", "smollm2-135m", "--tasks", "hellaswag"]) == 2


def test_task_list_and_include_path_are_checked(tmp_path):
    assert parse_tasks("a, b,a") == ["a", "b"]
    with pytest.raises(ConfigError, match="--tasks names no task"):
        parse_tasks(" , ")
    with pytest.raises(ConfigError, match="--include-path"):
        check_tasks(["local-perplexity"], include_path=str(tmp_path / "missing"))


def _choice_task(folder, prompt: str, choices: list[str], label: int) -> None:
    data = folder / "docs.jsonl"
    data.write_text(json.dumps({"question": prompt, "choices": choices, "label": label}) + "\n", encoding="utf-8")
    (folder / "tiny_choice.yaml").write_text(
        "task: tiny_choice\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    test: {data}\ntest_split: test\noutput_type: multiple_choice\n"
        'doc_to_text: "{{question}}"\ndoc_to_choice: "{{choices}}"\ndoc_to_target: "{{label}}"\n'
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n", encoding="utf-8")


def test_lm_eval_task_from_a_local_yaml_sees_the_patches(tokenizer, tmp_path):
    """A GRACE edit towards the answer the unedited model ranks last flips lm-eval's accuracy from 0 to 1: HFLM runs
    the model with the codebook's hook in its forward pass."""
    pytest.importorskip("lm_eval")
    tiny = build_tiny("gpt2", tokenizer)
    choices = [" Paris", " Rome"]
    _choice_task(tmp_path, EDIT_PROMPT, choices, 0)
    loser = int(lm_eval_scores(tiny, ["tiny_choice"], include_path=str(tmp_path))["tiny_choice/acc"])  # 1: Paris won
    _choice_task(tmp_path, EDIT_PROMPT, choices, loser)
    before = lm_eval_scores(tiny, ["tiny_choice"], include_path=str(tmp_path))
    assert before == {"tiny_choice/acc": 0.0}
    delta = build_editor("grace", tiny, {"num_steps": 40, "lr": 1.0}).edit(
        tiny, [EditRequest(prompt=EDIT_PROMPT, target_new=choices[loser].strip())])
    try:
        assert len(tiny.patches) == 1
        assert lm_eval_scores(tiny, ["tiny_choice"], include_path=str(tmp_path)) == {"tiny_choice/acc": 1.0}
    finally:
        delta.undo(tiny)
    assert lm_eval_scores(tiny, ["tiny_choice"], include_path=str(tmp_path)) == before


def test_curve_every_k_edits_of_a_sequential_run(tokenizer):
    tiny = build_tiny("gpt2", tokenizer)
    requests = [EditRequest(prompt=f"{EDIT_PROMPT} number {i}", target_new="Paris") for i in range(5)]
    curve = CapabilityCurve(["local-perplexity"], every=2, limit=2, window=32)
    report = evaluate_editing(tiny, build_editor("grace", tiny, {"num_steps": 3}), requests, protocol="sequential",
                              fluency=False, progress=False, capability=curve)
    assert report.n == 5 and [n for n, _ in curve.points] == [0, 2, 4, 5]  # before, every 2, after the last
    assert curve.points[0][1]["local-perplexity"] == pytest.approx(heldout_perplexity(tiny, limit=2, window=32))
    assert set(curve.to_json()["first_drop_at"]) == {"local-perplexity"}


def test_first_drop_is_five_percent_worse_in_the_right_direction():
    curve = CapabilityCurve(["local-perplexity", "known-facts"], every=10)
    curve.points = [(0, {"local-perplexity": 20.0, "known-facts": 0.5}),
                    (10, {"local-perplexity": 20.9, "known-facts": 0.6}),   # +4.5% perplexity, recall up
                    (20, {"local-perplexity": 21.2, "known-facts": 0.48}),  # +6% perplexity, recall -4%
                    (30, {"local-perplexity": 19.0, "known-facts": 0.4})]   # recall -20%
    assert curve.first_drop() == {"local-perplexity": 20, "known-facts": 30}
    assert "local-perplexity: first fell by 5% at 20 edits" in curve.summary()
    curve.points = curve.points[:2]
    assert "did not fall by 5% within 10 edits" in curve.summary()


def test_capability_every_needs_sequential(capsys, monkeypatch):
    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("loaded a model before refusing"))
    assert main(["--method", "grace", "--capability-every", "2", "--no-fluency"]) == 2
    assert "--capability-every is an option of --sequential" in capsys.readouterr().err


def test_capability_command_offline(tokenizer, tmp_path, monkeypatch, capsys):
    tiny = build_tiny("gpt2", tokenizer)
    monkeypatch.setattr(models, "load_model", lambda *a, **k: tiny)
    out = tmp_path / "scores.json"
    assert main(["capability", "smollm2-135m", "--tasks", "local-perplexity", "--limit", "2", "--window", "32",
                 "--baseline", "smollm2-135m", "--output", str(out)]) == 0
    result = json.loads(out.read_text())
    edited, base = result["scores"]["edited"]["local-perplexity"], result["scores"]["baseline"]["local-perplexity"]
    assert math.isfinite(edited) and edited == pytest.approx(base)  # the same model twice
    printed = capsys.readouterr().out
    assert "local-perplexity" in printed and "unchanged" in printed and result["patches"] == []


@pytest.mark.slow
def test_capability_of_the_real_model(capsys):
    require_data("known_1000/known_1000.json")
    assert main(["capability", "smollm2-135m", "--tasks", "local-perplexity,known-facts", "--limit", "20"]) == 0
    printed = capsys.readouterr().out
    assert "local-perplexity" in printed and "known-facts" in printed
