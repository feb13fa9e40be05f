"""Teacher-forced scoring: rows sharing a long prefix (an in-context editor's demonstrations, few-shot prompts) run it once,
and must score exactly as a full pass does."""
from __future__ import annotations

import pytest
import torch

from lightning_edit.models import LoadedModel
from lightning_edit.models.patches import Patch
from lightning_edit.models import teacher_forcing
from lightning_edit.models.teacher_forcing import build_target_batch, score_targets, shared_prefix_length

from conftest import build_tiny

# the second batch's prompts both begin with "The": it shares more than the first, and still reuses its prefix
PROMPTS = ["The capital of France is", "Paris is the capital of", "The Eiffel Tower stands in the city of", "The Tiber is in"]
TARGETS = ["Paris", "France", "Paris and nowhere else", "Italy"]
MIN_SHARED = teacher_forcing.MIN_SHARED_TOKENS
DEMONSTRATIONS = "".join(f"New Fact: fact number {i} is true\nPrompt: fact number {i} is true\n\n" for i in range(6))


class PromptRewriter(Patch):
    """A stand-in for IKE: a patch that rewrites every prompt."""

    key = "test-prompts"

    def __init__(self, rewrite) -> None:
        self.rewrite = rewrite

    def rewrite_prompts(self, prompts):
        return self.rewrite(list(prompts))

    def config(self) -> dict:
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state) -> None:
        pass


def _scores_with_and_without_sharing(loaded: LoadedModel, monkeypatch) -> tuple[list, list, list[int]]:
    loaded.patches.attach(PromptRewriter(lambda prompts: [DEMONSTRATIONS + p for p in prompts]))
    shared_lengths: list[int] = []
    prefix_passes: list[int] = []
    real = teacher_forcing._logits_after_shared_prefix

    def spy(loaded_, batch, shared, caches):
        cached_before = len(caches)
        logits, used = real(loaded_, batch, shared, caches)
        shared_lengths.append(used)
        prefix_passes.append(len(caches) - cached_before)
        return logits, used

    monkeypatch.setattr(teacher_forcing, "_logits_after_shared_prefix", spy)
    shared = score_targets(loaded, PROMPTS, TARGETS, batch_size=2)  # two batches: the second reuses the prefix
    monkeypatch.setattr(teacher_forcing, "MIN_SHARED_TOKENS", 10**9)
    full = score_targets(loaded, PROMPTS, TARGETS, batch_size=2)
    assert sum(prefix_passes) == 1  # the demonstrations ran once for the whole call
    return shared, full, shared_lengths


def _assert_same(shared, full) -> None:
    assert len(shared) == len(full)
    for a, b in zip(shared, full):
        assert a.target_ids.tolist() == b.target_ids.tolist()
        assert a.predicted_ids.tolist() == b.predicted_ids.tolist()
        torch.testing.assert_close(a.token_logprobs, b.token_logprobs, atol=1e-5, rtol=1e-4)


def test_shared_prefix_scores_equal_a_full_pass(tiny_decoder, monkeypatch):
    shared, full, lengths = _scores_with_and_without_sharing(tiny_decoder, monkeypatch)
    assert len(lengths) == 2 and min(lengths) >= MIN_SHARED  # both batches took the shortcut, the second from the cache
    # The second batch's rows may share a token more than the first's ("The"): the cached demonstrations serve it and
    # that token runs on top of them, so each batch runs everything its rows share once.
    _assert_same(shared, full)


def test_shared_prefix_with_a_sliding_window_shorter_than_the_prefix(tokenizer, monkeypatch):
    loaded = build_tiny("gemma3_text", tokenizer)
    loaded.model.config.sliding_window = 8
    for layer in loaded.model.model.layers:
        layer.self_attn.sliding_window = 8 if layer.self_attn.sliding_window else None
    shared, full, lengths = _scores_with_and_without_sharing(loaded, monkeypatch)
    assert lengths
    _assert_same(shared, full)


def test_shared_prefix_stops_before_the_first_scored_position(tokenizer):
    loaded = build_tiny("llama", tokenizer)
    batch = build_target_batch(loaded, ["same words here", "same words here"], ["a", "b"])
    # identical prompts: everything up to the token that predicts the target is shared, nothing after
    assert shared_prefix_length(batch) == min(batch.prompt_lengths) - 1
    one = build_target_batch(loaded, ["same words here"], ["a"])
    assert shared_prefix_length(one) == one.prompt_lengths[0] - 1  # a lone row's prefix may serve later batches


def test_encoder_decoder_is_scored_without_sharing(tokenizer):
    loaded = build_tiny("t5", tokenizer)
    batch = build_target_batch(loaded, [DEMONSTRATIONS + p for p in PROMPTS], TARGETS)
    assert shared_prefix_length(batch) == 0


@pytest.mark.slow
def test_ike_context_scores_equal_a_full_pass_on_smollm2(smollm2, monkeypatch):
    shared, full, lengths = _scores_with_and_without_sharing(smollm2, monkeypatch)
    smollm2.patches.reset()
    assert lengths
    _assert_same(shared, full)


def test_prompts_routed_to_different_contexts_are_grouped_and_scored_as_given(tokenizer, monkeypatch):
    """Several in-context edits: each prompt gets its own edit's demonstrations. Rows are grouped by context
    (each batch shares one) and the scores come back in the caller's order."""
    loaded = build_tiny("llama", tokenizer)
    other = DEMONSTRATIONS.replace("true", "false")
    loaded.patches.attach(PromptRewriter(lambda prompts: [(DEMONSTRATIONS if i % 2 == 0 else other) + p for i, p in enumerate(prompts)]))
    taken: list[int] = []
    real = teacher_forcing._logits_after_shared_prefix

    def spy(*a):
        logits, used = real(*a)
        taken.append(used)
        return logits, used

    monkeypatch.setattr(teacher_forcing, "_logits_after_shared_prefix", spy)
    grouped = score_targets(loaded, PROMPTS, TARGETS, batch_size=32)
    assert len(taken) == 2  # prompts 0, 2 share one context and 1, 3 the other: a batch each, both take the shortcut
    monkeypatch.setattr(teacher_forcing, "MIN_SHARED_TOKENS", 10**9)
    _assert_same(grouped, score_targets(loaded, PROMPTS, TARGETS, batch_size=2))


def _spy_shared_lengths(monkeypatch) -> list[int]:
    lengths: list[int] = []
    real = teacher_forcing._logits_after_shared_prefix

    def spy(loaded_, batch, shared, caches):
        logits, used = real(loaded_, batch, shared, caches)
        lengths.append(used)
        return logits, used

    monkeypatch.setattr(teacher_forcing, "_logits_after_shared_prefix", spy)
    return lengths


def test_prompts_written_with_a_long_shared_prefix_run_it_once(tiny_decoder, monkeypatch):
    """Few-shot prompts (the multi-hop questions) share their demonstrations without any editor: on a model with
    no hooks they run once, and the scores are those of a full pass."""
    prompts = [DEMONSTRATIONS + p for p in PROMPTS]
    lengths = _spy_shared_lengths(monkeypatch)
    shared = score_targets(tiny_decoder, prompts, TARGETS, batch_size=2)
    assert len(lengths) == 2 and min(lengths) >= MIN_SHARED
    monkeypatch.setattr(teacher_forcing, "MIN_SHARED_TOKENS", 10**9)
    _assert_same(shared, score_targets(tiny_decoder, prompts, TARGETS, batch_size=2))


def test_a_model_carrying_a_hook_runs_whole_rows(tiny_decoder, monkeypatch):
    """A forward hook may depend on a row's every token (WISE's router pools over them): no shortcut then."""
    prompts = [DEMONSTRATIONS + p for p in PROMPTS]
    lengths = _spy_shared_lengths(monkeypatch)
    handle = tiny_decoder.model.get_output_embeddings().register_forward_hook(lambda module, args, output: None)
    try:
        assert not tiny_decoder.computes_from_weights_alone
        score_targets(tiny_decoder, prompts, TARGETS, batch_size=2)
    finally:
        handle.remove()
    assert lengths == []
    assert tiny_decoder.computes_from_weights_alone


def test_a_prefix_kept_across_calls_serves_as_far_as_it_agrees(tiny_decoder, monkeypatch):
    """Questions after the same demonstrations, one call each with a kept cache: the demonstrations run once, each
    question's own tokens run on top of them, and every score is that of a full pass."""
    questions = [DEMONSTRATIONS + f"Q: question number {i} about the city of Paris? A:" for i in range(3)]
    model_calls: list[int] = []
    real_forward = tiny_decoder.model.forward

    def counting_forward(*args, **kwargs):
        model_calls.append(int(kwargs["input_ids"].shape[1]))
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(tiny_decoder.model, "forward", counting_forward)
    kept: dict = {}
    shared = [score_targets(tiny_decoder, [q] * 2, ["Paris", "France"], prefix_cache=kept) for q in questions]
    prefix_runs = model_calls[0::2]  # each call: the prefix's new tokens (batch of one), then the rows' suffixes
    assert prefix_runs[0] > MIN_SHARED and all(n < MIN_SHARED // 2 for n in prefix_runs[1:])
    monkeypatch.setattr(teacher_forcing, "MIN_SHARED_TOKENS", 10**9)
    for q, scores in zip(questions, shared):
        _assert_same(scores, score_targets(tiny_decoder, [q] * 2, ["Paris", "France"]))
