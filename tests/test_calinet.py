"""CaliNET: calibration memory beside the FFN; training changes the output, detach restores it bit for bit."""
from __future__ import annotations

import pytest
import torch

from lightning_edit.editors import build_editor, get_editor_class
from lightning_edit.editors.memory.calinet import CaliNETHyperParams, CalibrationFFN
from lightning_edit.errors import ConfigError
from lightning_edit.models.teacher_forcing import build_target_batch, score_targets
from lightning_edit.requests import EditRequest

from conftest import FAMILIES, build_tiny, require_data

REQUEST = EditRequest(prompt="The mother tongue of Danielle Darrieux is", target_new="English", target_true="French",
                      rephrase_prompts=("Danielle Darrieux's mother tongue is",))
FAST = dict(layers=[-1], activation="gelu", num_steps=5, lr=5e-2, slots=8, kl_prompts=["The capital of France is"])


def _logits(loaded, prompt: str = REQUEST.prompt) -> torch.Tensor:
    batch = build_target_batch(loaded, [prompt], ["English"])
    with torch.no_grad():
        return loaded.model(**batch.model_inputs()).logits


def _hook_count(model) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


def test_untrained_memory_is_a_no_op():
    memory = CalibrationFFN(16, 4, "relu")
    assert torch.equal(memory(torch.randn(2, 3, 16)), torch.zeros(2, 3, 16))


@pytest.mark.parametrize("family", FAMILIES)
def test_edit_changes_output_and_detach_is_exact(tokenizer, family):
    loaded = build_tiny(family, tokenizer)
    fingerprint = loaded.weights_fingerprint()
    names = [n for n, _ in loaded.model.named_parameters()]
    before, hooks_before = _logits(loaded), _hook_count(loaded.model)
    delta = get_editor_class("calinet")(CaliNETHyperParams(**FAST)).edit(loaded, [REQUEST])
    assert delta.weights_before == {} and len(delta.patches) == 1
    assert [n for n, _ in loaded.model.named_parameters()] == names  # the memory is not a model parameter
    after = _logits(loaded)
    assert not torch.equal(before, after)
    label = build_target_batch(loaded, [REQUEST.prompt], ["English"]).labels[0]
    pos = (label != -100).nonzero()[0, 0]
    new_id = label[pos]
    assert torch.log_softmax(after[0, pos], -1)[new_id] > torch.log_softmax(before[0, pos], -1)[new_id]
    delta.undo(loaded)
    assert _hook_count(loaded.model) == hooks_before
    assert torch.equal(_logits(loaded), before)
    assert loaded.weights_fingerprint() == fingerprint
    delta.reapply(loaded)  # re-attach gives the edited output again
    assert torch.equal(_logits(loaded), after)
    delta.undo(loaded)


def test_sequential_edits_stack_and_undo_in_reverse(tokenizer):
    loaded = build_tiny("llama", tokenizer)
    before = _logits(loaded)
    editor = get_editor_class("calinet")(CaliNETHyperParams(**FAST))
    second = EditRequest(prompt="The capital of Spain is", target_new="Rome")
    deltas = editor.edit_sequential(loaded, [REQUEST, second])
    module = loaded.model.get_submodule(loaded.layout.ffn_name(3))
    assert len(module._forward_hooks) == 2
    for d in reversed(deltas):
        d.undo(loaded)
    assert len(module._forward_hooks) == 0
    assert torch.equal(_logits(loaded), before)


def test_failed_training_leaves_no_hook(tokenizer, monkeypatch):
    from lightning_edit.errors import EditFailedError

    loaded = build_tiny("llama", tokenizer)
    before = _logits(loaded)
    editor = get_editor_class("calinet")(CaliNETHyperParams(**FAST))

    def explode(self, *args, **kwargs):
        raise RuntimeError("optimizer failed")

    monkeypatch.setattr(torch.optim.Adam, "step", explode)
    with pytest.raises(EditFailedError, match="optimizer failed"):
        editor.edit(loaded, [REQUEST])
    assert _hook_count(loaded.model) == 0
    assert torch.equal(_logits(loaded), before)


@pytest.mark.parametrize("bad, field", [({"slots": 0}, "slots"), ({"activation": "tanh"}, "activation"), ({"layers": []}, "layers"),
                                        ({"kl_weight": -1}, "kl_weight"), ({"kl_prompts": []}, "kl_prompts"),
                                        ({"num_steps": 0}, "num_steps")])
def test_bad_config_names_the_field(bad, field):
    with pytest.raises(ConfigError, match=field):
        CaliNETHyperParams.from_dict(bad)


def test_layer_out_of_range_is_refused(tokenizer):
    loaded = build_tiny("llama", tokenizer)
    with pytest.raises(ConfigError, match="layers"):
        get_editor_class("calinet")(CaliNETHyperParams(layers=[9])).edit(loaded, [REQUEST])


def test_real_model_calibration(smollm2):
    fingerprint = smollm2.weights_fingerprint()
    editor = build_editor("calinet", smollm2)
    (pre,) = score_targets(smollm2, [REQUEST.prompt], ["English"])
    delta = editor.edit(smollm2, [REQUEST])
    try:
        (post,) = score_targets(smollm2, [REQUEST.prompt], ["English"])
        assert post.exact_match == 1.0 and pre.exact_match == 0.0
    finally:
        delta.undo(smollm2)
    (again,) = score_targets(smollm2, [REQUEST.prompt], ["English"])
    assert torch.equal(again.token_logprobs, pre.token_logprobs)
    assert smollm2.weights_fingerprint() == fingerprint


@pytest.mark.slow
@pytest.mark.parametrize("data", ["zsre", "counterfact"])
def test_hundred_records(smollm2, data):
    from lightning_edit.data import load_requests
    from lightning_edit.evaluation import evaluate_editing

    require_data(data)
    report = evaluate_editing(smollm2, build_editor("calinet", smollm2), load_requests(data, n=100), fluency=False, progress=False)
    assert report.post["reliability"] > report.pre["reliability"] + 0.3
