"""MEND: gradient factors, the editor network, the edit contract, a few training steps (tiny models)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import build_tiny
from lightning_edit.editors import build_editor
from lightning_edit.editors.learned.mend import MENDEditor, MENDHyperParams, RunningNorm
from lightning_edit.errors import ConfigError
from lightning_edit.models.teacher_forcing import build_target_batch
from lightning_edit.requests import EditRequest, PromptAnswer
from lightning_edit.editors.learned.hypernetwork import edit_batch, gradient_factors, target_nll
from lightning_edit.editors.learned.mend.module import MENDModule

REQUESTS = [
    EditRequest(prompt="The capital of Freedonia is", target_new="Sylvania City", rephrase_prompts=("Freedonia's capital is",),
                locality=(PromptAnswer("The sky is", "blue"),), case_id=0),
    EditRequest(prompt="The mother tongue of Danielle Darrieux is", target_new="English", case_id=1),
]


def tiny_mend(loaded, **overrides) -> MENDEditor:
    hp = MENDHyperParams.for_model("mend", loaded.name, loaded.layout.family, {"rank": 16, **overrides})
    editor = MENDEditor(hp)
    editor.network = editor.build_network(loaded).eval()
    return editor


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_gradient_factors_reproduce_the_weight_gradient(family, tokenizer):
    """δᵀu (the rank-one factors MEND transforms) is exactly autograd's gradient of the edited weight."""
    loaded = build_tiny(family, tokenizer)
    layers = [2, 3]
    batch = edit_batch(loaded, REQUESTS)
    factors = gradient_factors(loaded, layers, batch)
    for i in layers:
        module = loaded.layout.mlp_out_module(loaded.model, i)
        module.weight.requires_grad_(True)
        loss = target_nll(loaded.model(**batch.model_inputs()).logits, batch.labels)
        (grad,) = torch.autograd.grad(loss, module.weight)
        module.weight.requires_grad_(False)
        grad = grad.T if loaded.layout.conv1d_weights else grad  # (out, in)
        name = loaded.layout.weight_name(loaded.layout.mlp_out, i)
        torch.testing.assert_close(factors[name].weight_gradient(), grad, rtol=1e-4, atol=1e-6)
    assert not any(p.requires_grad for p in loaded.model.parameters())


def test_running_norm_matches_batch_statistics():
    norm = RunningNorm(3, eps=0.0).train()
    data = torch.randn(50, 3) * 4 + 2
    for chunk in data.split(7):
        norm(chunk)
    torch.testing.assert_close(norm.mean, data.mean(0), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(norm.m2 / (norm.count - 1).float(), data.var(0), rtol=1e-4, atol=1e-4)


def test_network_starts_as_the_scaled_gradient(tokenizer):
    """Identity initialisation: before training, ΔW = -α Σ δ_t u_tᵀ (statistics not yet collected)."""
    loaded = build_tiny("llama", tokenizer)
    editor = tiny_mend(loaded)
    factors = gradient_factors(loaded, editor.layers(loaded), edit_batch(loaded, REQUESTS[:1]))
    updates = editor.network(factors)
    for name, f in factors.items():
        torch.testing.assert_close(updates[name], -1e-4 * f.weight_gradient(), rtol=1e-4, atol=1e-9)


def test_edit_touches_only_declared_weights_and_undoes(tokenizer):
    loaded = build_tiny("llama", tokenizer)
    editor = tiny_mend(loaded, edit_lr_init=1.0)
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    delta = editor.edit(loaded, REQUESTS)  # a batch: the factors of both requests together
    touched = set(editor.touched_parameters(loaded, REQUESTS))
    changed = {k for k, v in loaded.model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and changed <= touched
    delta.undo(loaded)
    assert all(torch.equal(v, before[k]) for k, v in loaded.model.state_dict().items())
    deltas = editor.edit_sequential(loaded, REQUESTS)
    assert len(deltas) == 2
    for d in reversed(deltas):
        d.undo(loaded)
    assert all(torch.equal(v, before[k]) for k, v in loaded.model.state_dict().items())


def test_missing_editor_checkpoint_is_a_config_error(tokenizer):
    loaded = build_tiny("llama", tokenizer)
    editor = build_editor("mend", loaded)
    with pytest.raises(ConfigError, match="editor_checkpoint"):
        editor.edit(loaded, REQUESTS[:1])


def test_bad_layers_refused():
    with pytest.raises(ConfigError, match="layers"):
        MENDHyperParams.from_dict({"layers": []})


def test_a_few_training_steps_lower_the_edit_loss(tokenizer):
    loaded = build_tiny("llama", tokenizer)
    module = MENDModule(loaded.name, {"rank": 16, "edit_lr_init": 1e-2}, {"lr": 1e-2, "lr_lr": 1e-2}, loaded=loaded)
    opt = torch.optim.Adam(module.param_groups(), lr=1e-2)
    losses = []
    for _ in range(8):
        loss, logs = module.training_loss(REQUESTS[:1])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(logs["edit_loss"].item())
    assert losses[-1] < losses[0]
    assert not any(p.requires_grad for p in loaded.model.parameters())
    batch = build_target_batch(loaded, ["x"], ["y"])
    assert loaded.model(**batch.model_inputs()).logits.isfinite().all()


TRAINED = Path(__file__).resolve().parents[1] / "checkpoints" / "editors" / "mend-smollm2-135m"


@pytest.mark.slow
def test_trained_mend_quality_on_zsre(smollm2):
    """The issue's bar: reliability ≥ 0.8 and locality ≥ 0.9 on the first 200 ZsRE eval records (token protocol)."""
    from conftest import require_data
    from lightning_edit.data import load_requests
    from lightning_edit.evaluation import evaluate_editing

    require_data("zsre/zsre_mend_eval_portability_gpt4.json")
    if not (TRAINED / "manifest.json").exists():
        pytest.skip(f"no trained editor at {TRAINED}; run `python train.py mend smollm2-135m`")
    editor = build_editor("mend", smollm2, {"editor_checkpoint": str(TRAINED)})
    report = evaluate_editing(smollm2, editor, load_requests("zsre", n=200), fluency=False, progress=False)
    assert report.post["reliability"] >= 0.8
    assert report.post["locality"] >= 0.9
