"""KN (knowledge neurons): attribution, edit, undo, config errors; a real smollm2 edit; 100-record runs (slow)."""
from __future__ import annotations

import pytest
import torch

from lightning_edit.editors import build_editor, get_editor_class
from lightning_edit.editors.locate.kn import KNHyperParams, coarse_neurons, integrated_gradients
from lightning_edit.errors import ConfigError
from lightning_edit.models.teacher_forcing import prompt_ids, score_targets, target_ids
from lightning_edit.requests import EditRequest

from conftest import build_tiny, require_data

REQUEST = EditRequest(prompt="The mother tongue of Danielle Darrieux is", target_new="English", target_true="French",
                      subject="Danielle Darrieux", rephrase_prompts=("Danielle Darrieux's mother tongue is",))


def _params(loaded) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in loaded.model.named_parameters()}


def _last_logits(loaded, prompt: str) -> torch.Tensor:
    ids = torch.tensor([prompt_ids(loaded.tokenizer, prompt)])
    with torch.no_grad():
        return loaded.model(input_ids=ids).logits[0, -1]


def test_integrated_gradients_sum_to_the_probability_change(tokenizer):
    """Completeness of integrated gradients: the attributions of one block sum to about P(x) - P(0·x)."""
    loaded = build_tiny("llama", tokenizer)
    ids = prompt_ids(tokenizer, REQUEST.prompt)
    answer = target_ids(tokenizer, "French")[0]
    scores = integrated_gradients(loaded, ids, answer, [3], steps=200)
    module = loaded.layout.mlp_out_module(loaded.model, 3)

    def prob(scale: float) -> float:
        def pre(mod, args):
            x = args[0].clone()
            x[:, -1] = x[:, -1] * scale
            return (x,)
        handle = module.register_forward_pre_hook(pre)
        try:
            return torch.softmax(_last_logits(loaded, REQUEST.prompt).float(), -1)[answer].item()
        finally:
            handle.remove()

    assert scores.shape == (1, loaded.layout.linear_weight(module).shape[1])
    assert scores.sum().item() == pytest.approx(prob(1.0) - prob(0.0), rel=0.05, abs=1e-7)


def test_coarse_neurons_adaptive_threshold():
    scores = torch.tensor([[0.1, 1.0, 0.3], [0.25, -2.0, 0.0]])
    assert sorted(coarse_neurons(scores, [5, 7], 0.2)) == [(5, 1), (5, 2), (7, 0)]
    assert coarse_neurons(-scores.abs(), [5, 7], 0.2) == []


@pytest.mark.parametrize("family", ["gpt2", "gptj", "gpt_neox", "llama", "qwen2", "gemma3_text"])
def test_edit_changes_prompt_output_and_undo_is_exact(tokenizer, family):
    loaded = build_tiny(family, tokenizer)
    editor = get_editor_class("kn")(KNHyperParams(steps=4, edit_scale=50.0))
    before_params = _params(loaded)
    before = _last_logits(loaded, REQUEST.prompt)
    delta = editor.edit(loaded, [REQUEST])
    after = _last_logits(loaded, REQUEST.prompt)
    assert not torch.equal(before, after)
    assert delta.weight_deltas and any(d.abs().sum() > 0 for d in delta.weight_deltas.values())
    new_id = target_ids(tokenizer, "English")[0]
    assert after[new_id] - before[new_id] > 0  # the new answer gained
    delta.undo(loaded)
    assert all(torch.equal(p, before_params[n]) for n, p in loaded.model.named_parameters())
    assert torch.equal(_last_logits(loaded, REQUEST.prompt), before)


def test_only_value_vectors_of_found_neurons_change(tokenizer):
    loaded = build_tiny("llama", tokenizer)
    editor = get_editor_class("kn")(KNHyperParams(steps=4, max_target_tokens=1))
    delta = editor.edit(loaded, [REQUEST])
    changed_columns = sum(int((d != 0).any(0).sum()) for d in delta.weight_deltas.values())
    assert 0 < changed_columns <= 4 * 64  # whole columns (value vectors), never all of them
    emb = loaded.model.get_output_embeddings().weight
    direction = emb[target_ids(tokenizer, "English")[0]] - emb[target_ids(tokenizer, "French")[0]]
    for d in delta.weight_deltas.values():
        for col in d.T[(d != 0).any(0)]:  # every changed column moved along ±(new - old), the sign of its activation
            assert torch.nn.functional.cosine_similarity(col, direction, dim=0).abs() > 0.999
            assert float(col.norm()) == pytest.approx(2.0 * float(direction.norm()), rel=1e-4)
    delta.undo(loaded)


@pytest.mark.parametrize("bad, field", [({"steps": 0}, "steps"), ({"adaptive_threshold": 1.5}, "adaptive_threshold"),
                                        ({"refine_fraction": 1.0}, "refine_fraction"), ({"edit_scale": 0}, "edit_scale"),
                                        ({"layers": []}, "layers"), ({"max_neurons": 0}, "max_neurons")])
def test_bad_config_names_the_field(bad, field):
    with pytest.raises(ConfigError, match=field):
        KNHyperParams.from_dict(bad)


def test_layer_out_of_range_and_encoder_decoder_are_refused(tokenizer):
    loaded = build_tiny("llama", tokenizer)
    with pytest.raises(ConfigError, match="layers"):
        get_editor_class("kn")(KNHyperParams(layers=[12])).edit(loaded, [REQUEST])
    t5 = build_tiny("t5", tokenizer)
    with pytest.raises(ConfigError, match="encoder-decoder"):
        get_editor_class("kn")(KNHyperParams()).edit(t5, [REQUEST])


def test_real_model_edit_and_exact_undo(smollm2):
    """One real edit on smollm2-135m (its config, searching only the top three blocks to stay quick):
    the new answer gains against the old one, then undo is exact."""
    editor = build_editor("kn", smollm2, {"layers": [-3, -2, -1], "steps": 10, "max_target_tokens": 1, "use_rephrases": False})
    fingerprint = smollm2.weights_fingerprint()
    before_params = {n: p.detach().clone() for n, p in smollm2.model.named_parameters() if "down_proj" in n}
    pre_new, pre_true = score_targets(smollm2, [REQUEST.prompt] * 2, ["English", "French"])
    assert pre_true.exact_match == 1.0 and pre_new.exact_match == 0.0
    delta = editor.edit(smollm2, [REQUEST])
    try:
        post_new, post_true = score_targets(smollm2, [REQUEST.prompt] * 2, ["English", "French"])
        assert post_new.mean_logprob > pre_new.mean_logprob + 1.0
        assert post_true.mean_logprob < pre_true.mean_logprob - 1.0
    finally:
        delta.undo(smollm2)
    assert smollm2.weights_fingerprint() == fingerprint
    assert all(torch.equal(p, before_params[n]) for n, p in smollm2.model.named_parameters() if n in before_params)


@pytest.mark.slow
@pytest.mark.parametrize("data", ["zsre", "counterfact"])
def test_hundred_records(smollm2, data):
    from lightning_edit.data import load_requests
    from lightning_edit.evaluation import evaluate_editing

    require_data("zsre" if data == "zsre" else "counterfact")
    report = evaluate_editing(smollm2, build_editor("kn", smollm2), load_requests(data, n=100), fluency=False, progress=False)
    assert report.post["reliability"] > report.pre["reliability"] + 0.1
