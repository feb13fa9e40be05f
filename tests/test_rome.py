"""ROME on tiny models of every family, the Lightning callback, and one real smollm2 edit."""
from __future__ import annotations

import pytest
import torch

from conftest import build_tiny
from lightning_edit.editors import build_editor, get_editor_class
from lightning_edit.editors.callback import EditCallback, edit_scope
from lightning_edit.errors import ConfigError, RequestError
from lightning_edit.models.teacher_forcing import score_targets
from lightning_edit.requests import EditRequest

REQUEST = EditRequest(prompt="The mother tongue of Danielle Darrieux is", subject="Danielle Darrieux",
                      target_new="English", target_true="French", case_id=0)


@pytest.fixture(scope="session")
def stats_text(tmp_path_factory):
    path = tmp_path_factory.mktemp("stats_text") / "text.txt"
    path.write_text("\n".join(f"Sentence {i}: a person named Alex {i} lives in the city of Paris and speaks French." for i in range(300)))
    return path


@pytest.fixture(scope="session")
def stats_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("stats_cache")


# On a tiny random model the subject's last token must be the prompt's last token for an edit to show
# (attention is near uniform, so a change at an earlier position barely reaches the prediction).
TINY_REQUEST = EditRequest(prompt="The mother tongue of Danielle Darrieux", subject="Danielle Darrieux", target_new="English")


def expressive(loaded):
    """Scale a tiny random model's matrices ×10 so its outputs are far from uniform (as a trained model's)."""
    with torch.no_grad():
        for p in loaded.model.parameters():
            if p.dim() == 2:
                p.mul_(10.0)
    return loaded


def tiny_overrides(stats_text, stats_cache, **extra) -> dict:
    return dict(mom2_n_tokens=512, stats_text=str(stats_text), stats_dir=str(stats_cache), progress=False,
                context_prefixes=1, context_length=4, v_num_grad_steps=10,
                **extra)


def target_logprob(loaded, request=REQUEST) -> float:
    return score_targets(loaded, [request.prompt], [request.target_new])[0].mean_logprob


def test_rome_edits_only_its_layer_and_undoes_exactly(tiny_decoder, stats_text, stats_cache):
    loaded = expressive(tiny_decoder)
    editor = build_editor("rome", loaded, tiny_overrides(stats_text, stats_cache, layers=[1]))
    before = {n: p.detach().clone() for n, p in loaded.model.named_parameters()}
    lp_before = target_logprob(loaded, TINY_REQUEST)
    delta = editor.edit(loaded, [TINY_REQUEST])
    edited = loaded.layout.weight_name(loaded.layout.mlp_out, 1)
    changed = [n for n, p in loaded.model.named_parameters() if not torch.equal(p, before[n])]
    assert changed == [edited]
    assert target_logprob(loaded, TINY_REQUEST) > lp_before + 1.0
    # a rank-one change
    assert torch.linalg.matrix_rank(delta.weight_deltas[edited].double(), rtol=1e-6) == 1
    delta.undo(loaded)
    assert all(torch.equal(p, before[n]) for n, p in loaded.model.named_parameters())


def test_rome_without_mom2_and_sequential_requests(tokenizer, stats_text, stats_cache):
    loaded = build_tiny("gpt2", tokenizer)  # Conv1D: weights stored (in, out)
    editor = build_editor("rome", loaded, tiny_overrides(stats_text, stats_cache, layers=[-2], mom2_adjustment=False))
    other = EditRequest(prompt="Paris is the capital of", subject="Paris", target_new="Italy", target_true="France")
    before = loaded.model.transformer.h[2].mlp.c_proj.weight.detach().clone()
    delta = editor.edit(loaded, [REQUEST, other])  # supports_batch=False: one after the other
    assert torch.linalg.matrix_rank((loaded.model.transformer.h[2].mlp.c_proj.weight - before).double(), rtol=1e-6) == 2
    delta.undo(loaded)
    assert torch.equal(loaded.model.transformer.h[2].mlp.c_proj.weight, before)


def test_rome_refuses_t5_and_bad_config(tokenizer, stats_text, stats_cache):
    t5 = build_tiny("t5", tokenizer)
    editor = build_editor("rome", t5, tiny_overrides(stats_text, stats_cache))
    before = {n: p.detach().clone() for n, p in t5.model.named_parameters()}
    with pytest.raises(ConfigError, match="encoder"):
        editor.edit(t5, [REQUEST])
    assert all(torch.equal(p, before[n]) for n, p in t5.model.named_parameters())
    llama = build_tiny("llama", tokenizer)
    with pytest.raises(ConfigError, match="exactly one"):
        build_editor("rome", llama, {"layers": [1, 2]})
    with pytest.raises(ConfigError, match="outside"):
        build_editor("rome", llama, {"layers": [9]}).edit(llama, [REQUEST])
    with pytest.raises(RequestError, match="subject"):
        build_editor("rome", llama, {}).edit(llama, [EditRequest(prompt="Paris is in", target_new="Italy")])


def test_edit_callback_applies_and_undoes_in_a_trainer(tokenizer, stats_text, stats_cache):
    import lightning as L

    loaded = expressive(build_tiny("qwen2", tokenizer))
    editor = build_editor("rome", loaded, tiny_overrides(stats_text, stats_cache, layers=[2]))
    base = target_logprob(loaded, TINY_REQUEST)
    seen = []

    class Probe(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = loaded.model
            self.tokenizer = tokenizer

        def validation_step(self, batch, idx):
            seen.append(target_logprob(loaded, TINY_REQUEST))

    weights = {n: p.detach().clone() for n, p in loaded.model.named_parameters()}
    callback = EditCallback(editor, [TINY_REQUEST], on="validation_start", undo_on="validation_end")
    trainer = L.Trainer(callbacks=[callback], logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu")
    trainer.validate(Probe(), dataloaders=[torch.zeros(1, 1)], verbose=False)
    assert seen and seen[0] > base + 0.5  # the edit was in place during validation
    assert all(torch.equal(p, weights[n]) for n, p in loaded.model.named_parameters())  # and undone after
    with pytest.raises(ConfigError, match="choose one of"):
        EditCallback(editor, [REQUEST], on="whenever")
    with edit_scope(editor, loaded, [TINY_REQUEST]):
        assert target_logprob(loaded, TINY_REQUEST) > base + 0.5
    assert all(torch.equal(p, weights[n]) for n, p in loaded.model.named_parameters())


def test_rome_real_smollm2_danielle_darrieux(smollm2, tmp_path_factory):
    """The paper's running example on the real model: after the edit English beats French; undo is exact."""
    cache = tmp_path_factory.mktemp("smollm2_stats")
    # small statistics and few prefixes/steps keep this under a minute on 2 free cores
    editor = build_editor("rome", smollm2, {"mom2_n_tokens": 2048, "stats_dir": str(cache), "progress": False,
                                            "context_prefixes": 2, "v_num_grad_steps": 10})
    assert get_editor_class("rome").supports_batch is False
    en, fr = score_targets(smollm2, [REQUEST.prompt] * 2, ["English", "French"])
    assert fr.mean_logprob > en.mean_logprob  # the model knows the true fact
    weight = smollm2.layout.mlp_out_module(smollm2.model, editor.layers(smollm2)[0]).weight
    before = weight.detach().clone()
    delta = editor.edit(smollm2, [REQUEST])
    try:
        en2, fr2 = score_targets(smollm2, [REQUEST.prompt] * 2, ["English", "French"])
        assert en2.mean_logprob > fr2.mean_logprob
        assert en2.token_accuracy == 1.0
    finally:
        delta.undo(smollm2)
    assert torch.equal(weight, before)


@pytest.mark.slow
def test_rome_counterfact_quality(smollm2):
    """Issue targets on the first 100 CounterFact records, single edits with configs/rome/smollm2-135m.yaml."""
    from conftest import require_data
    from lightning_edit.data import load_requests
    from lightning_edit.evaluation import evaluate_editing

    require_data("counterfact/counterfact-edit.json")
    editor = build_editor("rome", smollm2, {"progress": False})
    report = evaluate_editing(smollm2, editor, load_requests("counterfact", n=100), protocol="single", fluency=False, progress=False)
    post = report.post
    assert post["efficacy_score"] >= 0.95
    assert post["paraphrase_score"] >= 0.6
    # The unedited model already prefers the counterfactual on a third of these neighbour prompts (pre 0.66, README):
    # the edit must keep what it had, not reach a level the unedited model misses.
    assert post["neighborhood_score"] >= report.pre["neighborhood_score"] - 0.05
    assert post["reliability"] >= 0.9


def test_context_prefixes_are_sampled_by_generate_deterministically(tokenizer):
    """ROME's context prefixes: the plain prompt first, then one sampled text per seed word, each ending in ". ";
    the same for the same seed, and the caller's random state is left as it was."""
    from lightning_edit.editors.locate.keys import PREFIX_SEEDS, generate_context_prefixes

    loaded = build_tiny("llama", tokenizer)
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    prefixes = generate_context_prefixes(loaded, n=3, length=4, seed=0)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert prefixes[0] == "" and len(prefixes) == 4
    for seed_word, text in zip(PREFIX_SEEDS, prefixes[1:]):
        assert text.startswith(seed_word) and text.endswith(". ") and len(text) > len(seed_word) + 2
    assert generate_context_prefixes(loaded, n=3, length=4, seed=0) == prefixes
    assert generate_context_prefixes(loaded, n=0) == [""]
