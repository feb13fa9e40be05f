"""Many edited variants of a model in one batch (models/row_weights.py), and evaluation's use of it: the batched
generations after single edits equal those made on each edited model."""
from __future__ import annotations

import pytest
import torch

from conftest import build_tiny
from test_rome import stats_cache, stats_text  # noqa: F401  (fixtures)
from lightning_edit.data import load_requests
from lightning_edit.editors import build_editor
from lightning_edit.evaluation import generation as protocols  # the deferred generation, once inside protocols.py
from lightning_edit.evaluation.measure import generate_greedy
from lightning_edit.evaluation.protocols import evaluate_editing
from lightning_edit.models.row_weights import row_weight_changes, supports_row_changes


def _mlp_and_embedding_changes(loaded, seed: int) -> dict[str, torch.Tensor]:
    """A random change of one MLP output projection and of the (tied, in LLaMA's tiny config or not) embedding."""
    g = torch.Generator().manual_seed(seed)
    params = dict(loaded.model.named_parameters())
    mlp = loaded.layout.mlp_out.format(1) + ".weight"
    embed = next(n for n in params if "wte.weight" in n or "embed_tokens.weight" in n)
    return {name: 0.05 * torch.randn(params[name].shape, generator=g) for name in (mlp, embed)}


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_each_row_computes_as_its_edited_model(tokenizer, family):
    loaded = build_tiny(family, tokenizer)
    changes = [_mlp_and_embedding_changes(loaded, seed) for seed in (1, 2)]
    assert supports_row_changes(loaded.model, changes)
    enc = tokenizer(["The capital of France is", "The capital of Italy is", "English French"], return_tensors="pt",
                    padding=True)
    groups = [1, 0, 1]
    with torch.no_grad(), row_weight_changes(loaded.model, changes, groups):
        together = loaded.model(**enc).logits
    params = dict(loaded.model.named_parameters())
    for row, g in enumerate(groups):
        with torch.no_grad():
            originals = {n: params[n].detach().clone() for n in changes[g]}
            for n, d in changes[g].items():
                params[n].add_(d)
            alone = loaded.model(**{k: v[row: row + 1] for k, v in enc.items()}).logits
            for n, t in originals.items():
                params[n].copy_(t)
        torch.testing.assert_close(together[row: row + 1], alone, atol=1e-4, rtol=1e-4)
    with torch.no_grad():  # the hooks are gone after the block: the model is the unedited one again
        assert not any(m._forward_hooks for m in loaded.model.modules())


def test_changes_outside_linear_modules_are_refused(tokenizer):
    loaded = build_tiny("llama", tokenizer)
    norm = next(n for n, _ in loaded.model.named_parameters() if "norm" in n)
    changes = [{norm: torch.zeros_like(dict(loaded.model.named_parameters())[norm])}]
    assert not supports_row_changes(loaded.model, changes)
    with pytest.raises(ValueError, match="not linear"):
        with row_weight_changes(loaded.model, changes, [0]):
            pass


def test_a_batch_of_another_size_is_refused(tokenizer):
    loaded = build_tiny("llama", tokenizer)
    changes = [_mlp_and_embedding_changes(loaded, 1)]
    enc = tokenizer(["The capital of France is"], return_tensors="pt")
    with pytest.raises(ValueError, match="rows"), torch.no_grad(), row_weight_changes(loaded.model, changes, [0, 0]):
        loaded.model(**enc)
    assert not any(m._forward_hooks for m in loaded.model.modules())


def test_generate_greedy_with_row_changes_matches_the_edited_models(tokenizer):
    loaded = build_tiny("llama", tokenizer)
    changes = [_mlp_and_embedding_changes(loaded, seed) for seed in (3, 4)]
    prompts = ["The capital of France is", "The capital of Italy is", "English French Italian"]
    groups = [0, 1, 1]
    together = generate_greedy(loaded, prompts, 6, batch_size=8, row_changes=changes, groups=groups)
    params = dict(loaded.model.named_parameters())
    for prompt, g, text in zip(prompts, groups, together):
        with torch.no_grad():
            originals = {n: params[n].detach().clone() for n in changes[g]}
            for n, d in changes[g].items():
                params[n].add_(d)
        try:
            assert generate_greedy(loaded, [prompt], 6) == [text]
        finally:
            with torch.no_grad():
                for n, t in originals.items():
                    params[n].copy_(t)


@pytest.mark.parametrize("rows", [64, 4])  # 4: the waiting edits are generated (and cleared) between edits too
def test_single_edits_generations_batched_equal_generated_one_edit_at_a_time(tokenizer, monkeypatch, rows):
    loaded = build_tiny("llama", tokenizer)
    requests = load_requests("demo", n=3)
    editor = build_editor("ft-m", loaded, {"layers": [1], "num_steps": 2})
    monkeypatch.setattr(protocols, "GENERATION_ROWS", rows)
    batched = evaluate_editing(loaded, editor, requests, fluency=True, fluency_tokens=5, progress=False)
    monkeypatch.setattr(protocols, "supports_row_changes", lambda model, changes: False)  # generate on each edit
    one_by_one = evaluate_editing(loaded, editor, requests, fluency=True, fluency_tokens=5, progress=False)
    assert [r["post_generations"] for r in batched.requests] == [r["post_generations"] for r in one_by_one.requests]
    assert batched.post["fluency"] == pytest.approx(one_by_one.post["fluency"])
    assert all("fluency" in r["post"] for r in batched.requests)


def test_alphaedit_edits_are_generated_together_its_key_memory_being_bookkeeping(tokenizer, monkeypatch, stats_text,
                                                                                  stats_cache):
    """AlphaEdit's edit returns a patch (its key memory), which does not change what the model computes: its
    generations are batched like any weight edit's, and equal generating on each edited model."""
    from test_rome import tiny_overrides

    loaded = build_tiny("llama", tokenizer)
    requests = load_requests("demo", n=2)
    editor = build_editor("alphaedit", loaded, tiny_overrides(stats_text, stats_cache, layers=[1], nullspace_threshold=1e9))
    batched_calls = []
    real = protocols.generate_greedy

    def recording(*args, **kwargs):
        batched_calls.append(kwargs.get("row_changes") is not None)
        return real(*args, **kwargs)

    monkeypatch.setattr(protocols, "generate_greedy", recording)
    batched = evaluate_editing(loaded, editor, requests, fluency=True, fluency_tokens=4, progress=False)
    assert batched_calls == [True]  # one batched call for both edits (pre-edit generations: evaluation/pre_edit.py)
    monkeypatch.setattr(protocols, "supports_row_changes", lambda model, changes: False)
    one_by_one = evaluate_editing(loaded, editor, requests, fluency=True, fluency_tokens=4, progress=False)
    assert [r["post_generations"] for r in batched.requests] == [r["post_generations"] for r in one_by_one.requests]
