"""KE (KnowledgeEditor): conditioning, initial descent step, contract, constrained training (tiny models)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import build_tiny
from lightning_edit.editors.learned.ke import KEEditor, KEHyperParams
from lightning_edit.errors import ConfigError
from lightning_edit.models.teacher_forcing import score_targets
from lightning_edit.requests import EditRequest, PromptAnswer
from lightning_edit.editors.learned.ke.module import KEModule

REQUEST = EditRequest(prompt="The capital of Freedonia is", target_new="Sylvania City", target_true="Fredville",
                      rephrase_prompts=("Freedonia's capital is",), locality=(PromptAnswer("The sky is", "blue"),), case_id=0)


def tiny_ke(loaded, **overrides) -> KEEditor:
    hp = KEHyperParams.for_model("ke", loaded.name, loaded.layout.family, {"hidden_dim": 16, "condition_dim": 16,
                                                                           "lstm_hidden": 8, **overrides})
    editor = KEEditor(hp)
    editor.network = editor.build_network(loaded).eval()
    return editor


def test_untrained_ke_takes_a_descent_step_and_undoes(tokenizer):
    loaded = build_tiny("llama", tokenizer)
    editor = tiny_ke(loaded)
    before_state = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    before = score_targets(loaded, [REQUEST.prompt], [REQUEST.target_new])[0].mean_logprob
    delta = editor.edit(loaded, [REQUEST])
    after = score_targets(loaded, [REQUEST.prompt], [REQUEST.target_new])[0].mean_logprob
    assert after > before  # the initial update is -s·σ(η)·β/out_dim · ∇W: a gradient step
    assert set(delta.weights_after) == set(editor.touched_parameters(loaded, [REQUEST]))
    delta.undo(loaded)
    assert all(torch.equal(v, before_state[k]) for k, v in loaded.model.state_dict().items())


def test_batch_is_applied_one_edit_at_a_time(tokenizer):
    loaded = build_tiny("llama", tokenizer)
    editor = tiny_ke(loaded)
    assert KEEditor.supports_batch is False
    other = EditRequest(prompt="The sky is", target_new="green", case_id=1)
    delta = editor.edit(loaded, [REQUEST, other])
    assert delta.weight_deltas and all(d.abs().sum() > 0 for d in delta.weight_deltas.values())
    delta.undo(loaded)


def test_hparams_validation():
    with pytest.raises(ConfigError, match="max_scale"):
        KEHyperParams.from_dict({"max_scale": 0})


def test_constrained_training_updates_the_multiplier(tokenizer):
    loaded = build_tiny("llama", tokenizer)
    module = KEModule(loaded.name, {"hidden_dim": 16, "condition_dim": 16, "lstm_hidden": 8},
                      {"kl_margin": 0.0, "lagrange_init": 1.0, "lagrange_lr": 1.0}, loaded=loaded)
    opt = torch.optim.Adam(module.network.parameters(), lr=1e-3)
    losses = []
    for _ in range(4):
        loss, logs = module.training_loss([REQUEST])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(logs["edit_loss"].item())
    # KL > margin = 0 on every step: dual ascent raises λ above its start
    assert module.lagrange.item() > 1.0
    assert all(torch.isfinite(torch.tensor(losses)))
    assert "lagrange" in dict(module.named_buffers())


TRAINED = Path(__file__).resolve().parents[1] / "checkpoints" / "editors" / "ke-smollm2-135m"


@pytest.mark.slow
def test_trained_ke_is_measured_on_zsre(smollm2):
    """No bar from the issue (KE is known to be weak on large models): the edit must move the model toward
    the new answer without destroying unrelated predictions."""
    from conftest import require_data
    from lightning_edit.data import load_requests
    from lightning_edit.editors import build_editor
    from lightning_edit.evaluation import evaluate_editing

    require_data("zsre/zsre_mend_eval_portability_gpt4.json")
    if not (TRAINED / "manifest.json").exists():
        pytest.skip(f"no trained editor at {TRAINED}; run `python train.py ke smollm2-135m`")
    editor = build_editor("ke", smollm2, {"editor_checkpoint": str(TRAINED)})
    report = evaluate_editing(smollm2, editor, load_requests("zsre", n=50), fluency=False, progress=False)
    assert report.post["reliability"] > report.pre["reliability"]
    assert report.post["locality"] >= 0.5
