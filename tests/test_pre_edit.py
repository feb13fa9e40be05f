"""Pre-edit scores and generations: computed once, kept on disk, read back unchanged; identical to scoring afresh."""
import logging

import torch

from conftest import build_tiny
from lightning_edit.data import load_requests
from lightning_edit.editors import build_editor
from lightning_edit.evaluation import evaluate_editing, generate_greedy, measure
from lightning_edit.evaluation.measure import fluency_prompts
from lightning_edit.evaluation.pre_edit import SLOTS, PreEditCache, pre_edit_results
from lightning_edit.evaluation.protocols import _Timer
from lightning_edit.models.teacher_forcing import build_target_batch, score_targets, target_logits

GEN_TOKENS = 6


def _requests():
    return load_requests("demo", n=4)


def _entries(root):
    return sorted(root.rglob("*.safetensors"))


def _assert_same_scores(a, b):
    for x, y in zip(a, b, strict=True):
        for slot in SLOTS:
            for s, t in zip(getattr(x, slot), getattr(y, slot), strict=True):
                assert torch.equal(s.target_ids, t.target_ids) and torch.equal(s.predicted_ids, t.predicted_ids), slot
                assert torch.allclose(s.token_logprobs, t.token_logprobs, rtol=0, atol=1e-6), slot


def test_cold_and_warm_cache_equal_scoring_afresh(tokenizer, tmp_path):
    loaded, requests = build_tiny("llama", tokenizer), _requests()
    # What evaluate_editing computed before the cache: one scoring pass and one generation run over all requests.
    old_scores = measure(loaded, requests)
    old_gens = generate_greedy(loaded, [p for r in requests for p in fluency_prompts(r)], GEN_TOKENS)
    cache = PreEditCache(tmp_path)
    cold = pre_edit_results(loaded, requests, GEN_TOKENS, cache, _Timer())
    assert len(_entries(tmp_path)) == len(requests)
    warm_timer = _Timer()
    warm = pre_edit_results(loaded, requests, GEN_TOKENS, cache, warm_timer)
    assert warm_timer.total["generation"] == 0.0  # nothing generated: all read back
    for scores, gens in (cold, warm):
        _assert_same_scores(old_scores, scores)
        assert [g for per_request in gens for g in per_request] == old_gens
    assert all(getattr(old_scores[0], slot) for slot in SLOTS)  # every kind of slot was compared


def test_reports_with_and_without_the_cache_are_identical(tokenizer, tmp_path):
    loaded, requests = build_tiny("llama", tokenizer), _requests()[:2]
    editor = build_editor("ft-m", loaded, {"layers": [1], "num_steps": 2, "lr": 1e-2})

    def rows(cache):
        report = evaluate_editing(loaded, editor, requests, fluency_tokens=GEN_TOKENS, progress=False, pre_cache=cache)
        return [{k: v for k, v in row.items() if not k.endswith("seconds")} for row in report.requests], report.pre, report.post

    fresh = rows(None)
    assert rows(PreEditCache(tmp_path)) == fresh  # cold: computes and stores
    assert rows(PreEditCache(tmp_path)) == fresh  # warm: reads back


def test_a_corrupt_entry_is_recomputed_and_rewritten(tokenizer, tmp_path, caplog):
    loaded, requests = build_tiny("llama", tokenizer), _requests()[:2]
    cache = PreEditCache(tmp_path)
    first = pre_edit_results(loaded, requests, GEN_TOKENS, cache, _Timer())
    broken = _entries(tmp_path)[0]
    broken.write_bytes(broken.read_bytes()[:100])
    with caplog.at_level(logging.WARNING):
        again = pre_edit_results(loaded, requests, GEN_TOKENS, cache, _Timer())
    assert "unusable" in caplog.text
    _assert_same_scores(first[0], again[0])
    assert first[1] == again[1]
    assert len(_entries(tmp_path)) == 2 and broken.stat().st_size > 100  # rewritten whole
    assert not list(tmp_path.rglob("*.partial"))


def test_other_weights_settings_or_hooks_do_not_reuse_entries(tokenizer, tmp_path):
    loaded, requests = build_tiny("llama", tokenizer), _requests()[:1]
    cache = PreEditCache(tmp_path)
    pre_edit_results(loaded, requests, GEN_TOKENS, cache, _Timer())
    pre_edit_results(loaded, requests, GEN_TOKENS + 1, cache, _Timer())  # other generation length: own entry
    assert len(_entries(tmp_path)) == 2
    with torch.no_grad():  # one weight element that a sampled fingerprint could miss
        loaded.model.model.layers[1].mlp.down_proj.weight[3, 5] += 1e-3
    pre_edit_results(loaded, requests, GEN_TOKENS, cache, _Timer())
    assert len(_entries(tmp_path)) == 3
    handle = loaded.model.model.layers[0].register_forward_hook(lambda module, args, output: None)
    try:
        pre_edit_results(loaded, requests, GEN_TOKENS + 2, cache, _Timer())
    finally:
        handle.remove()
    assert len(_entries(tmp_path)) == 3  # a hooked model is scored but not cached


PROMPTS = ["The capital of France is", "Paris is the capital of", "The Eiffel Tower stands in the city of", "The Tiber is in"]
TARGETS = ["Paris", "France", "Paris and nowhere else", "Italy"]


def _full_pass_scores(loaded, prompts, targets):
    """The scoring before the output layer ran on target positions only: every position's logits, one batch."""
    batch = build_target_batch(loaded, prompts, targets)
    logits = target_logits(loaded, batch).float()
    logp = torch.log_softmax(logits, dim=-1)
    out = []
    for row in range(len(prompts)):
        mask = batch.labels[row] != -100
        tgt = batch.labels[row][mask]
        out.append((tgt, logits[row][mask].argmax(-1), logp[row][mask].gather(-1, tgt[:, None]).squeeze(-1)))
    return out


def test_target_position_scoring_equals_a_full_pass(tiny_model):
    fast = score_targets(tiny_model, PROMPTS, TARGETS, batch_size=len(PROMPTS))
    for s, (tgt, predicted, logprobs) in zip(fast, _full_pass_scores(tiny_model, PROMPTS, TARGETS), strict=True):
        assert torch.equal(s.target_ids, tgt) and torch.equal(s.predicted_ids, predicted)
        assert torch.allclose(s.token_logprobs, logprobs, rtol=0, atol=1e-6)
