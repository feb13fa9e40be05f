"""SERAC: memory patch routing (in scope → counterfactual, else base unchanged), causality, undo (tiny models)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import build_tiny
from lightning_edit.editors.learned.serac import SERACEditor, SERACRouter, SERACHyperParams, edit_prefix_ids, lora_active
from lightning_edit.errors import ConfigError
from lightning_edit.evaluation.measure import generate_greedy
from lightning_edit.models.teacher_forcing import build_target_batch, prompt_ids
from lightning_edit.requests import EditRequest, PromptAnswer
from lightning_edit.editors.learned.serac.module import SERACModule

EDIT = EditRequest(prompt="The capital of Freedonia is", target_new="Sylvania City", rephrase_prompts=("Freedonia's capital is",),
                   locality=(PromptAnswer("The sky is", "blue"),), case_id=0)
OTHER = EditRequest(prompt="The sky is", target_new="green", case_id=1)


def tiny_serac(loaded, scope_bias: float) -> SERACEditor:
    hp = SERACHyperParams.for_model("serac", loaded.name, loaded.layout.family, {"scope_layer": 1, "scope_dim": 8, "lora_rank": 2,
                                                                                      "lora_layers": [-2, -1]})
    editor = SERACEditor(hp)
    editor.network = editor.build_network(loaded).eval()
    with torch.no_grad():
        for b in editor.network.lora_b.values():  # non-zero adapters: counterfactual ≠ base
            b.normal_(0, 0.5)
        editor.network.classifier.bias.fill_(scope_bias)  # ±100: every position in / out of scope
    return editor


def logits(loaded, prompts, targets):
    batch = build_target_batch(loaded, prompts, targets)
    with torch.no_grad():
        return loaded.model(**batch.model_inputs()).logits, batch


def test_out_of_scope_is_exactly_the_base_model(tokenizer):
    loaded = build_tiny("llama", tokenizer)
    editor = tiny_serac(loaded, scope_bias=-100.0)
    base, _ = logits(loaded, [EDIT.prompt, "Hello"], [EDIT.target_new, "world"])
    delta = editor.edit(loaded, [EDIT])
    routed, _ = logits(loaded, [EDIT.prompt, "Hello"], [EDIT.target_new, "world"])
    assert torch.equal(base, routed)
    delta.undo(loaded)


def test_in_scope_gets_the_counterfactual_model_with_the_edit_in_context(tokenizer):
    loaded = build_tiny("llama", tokenizer)
    editor = tiny_serac(loaded, scope_bias=100.0)
    base, batch = logits(loaded, ["Hello there"], ["world"])
    delta = editor.edit(loaded, [EDIT])
    routed, _ = logits(loaded, ["Hello there"], ["world"])
    # the counterfactual model by hand: prefix "<prompt> <target>\n" + the input, base + LoRA
    prefix = edit_prefix_ids(loaded, editor.hparams.edit_template, EDIT)
    n = int(batch.attention_mask[0].sum())
    ids = torch.tensor([prefix + batch.input_ids[0, :n].tolist()])
    with torch.no_grad(), lora_active(loaded, editor.network):
        cf = type(loaded.model).forward(loaded.model, input_ids=ids).logits[0, len(prefix):]
    torch.testing.assert_close(routed[0, :n], cf)
    assert not torch.allclose(routed[0, :n], base[0, :n])
    delta.undo(loaded)
    assert len(loaded.patches) == 0 and not loaded.model._forward_hooks and not loaded.model._forward_pre_hooks
    restored, _ = logits(loaded, ["Hello there"], ["world"])
    assert torch.equal(restored, base)


def test_routing_is_causal(tokenizer):
    """The decision (and logits) at a position never depend on later tokens."""
    loaded = build_tiny("llama", tokenizer)
    editor = tiny_serac(loaded, scope_bias=0.0)
    editor.edit(loaded, [EDIT])
    short = prompt_ids(tokenizer, "The capital of Freedonia")
    long = prompt_ids(tokenizer, "The capital of Freedonia is a city by the sea")
    assert long[: len(short)] == short
    with torch.no_grad():
        a = loaded.model(input_ids=torch.tensor([short])).logits
        b = loaded.model(input_ids=torch.tensor([long])).logits
    torch.testing.assert_close(a[0], b[0, : len(short)], rtol=1e-4, atol=1e-4)


def test_memory_grows_with_sequential_edits_and_generation_works(tokenizer):
    loaded = build_tiny("llama", tokenizer)
    use_cache = loaded.model.generation_config.use_cache
    editor = tiny_serac(loaded, scope_bias=100.0)
    deltas = editor.edit_sequential(loaded, [EDIT, OTHER])
    router = loaded.patches.get(SERACRouter.key)
    assert len(router.edits) == 2 and router.memory()[0].shape[0] == 2
    assert loaded.model.generation_config.use_cache is False
    texts = generate_greedy(loaded, [EDIT.prompt, "Hello"], max_new_tokens=3)
    assert len(texts) == 2
    for d in reversed(deltas):
        d.undo(loaded)
    assert SERACRouter.key not in loaded.patches
    assert loaded.model.generation_config.use_cache == use_cache


def test_encoder_decoder_refused(tokenizer):
    loaded = build_tiny("t5", tokenizer)
    hp = SERACHyperParams.for_model("serac", loaded.name, loaded.layout.family, {"scope_layer": 1})
    with pytest.raises(ConfigError, match="encoder-decoder"):
        SERACEditor(hp).build_network(loaded)


def test_hparams_validation():
    with pytest.raises(ConfigError, match="edit_template"):
        SERACHyperParams.from_dict({"edit_template": "no placeholders"})
    with pytest.raises(ConfigError, match="scope_threshold"):
        SERACHyperParams.from_dict({"scope_threshold": 1.5})


def test_training_step_trains_classifier_and_counterfactual(tokenizer):
    loaded = build_tiny("llama", tokenizer)
    module = SERACModule(loaded.name, {"scope_layer": 1, "scope_dim": 8, "lora_rank": 2, "lora_layers": [-2, -1]},
                         {"c_cf_loc": 0.1}, loaded=loaded)
    opt = torch.optim.Adam(module.network.parameters(), lr=1e-2)
    first = None
    for _ in range(5):
        loss, logs = module.training_loss([EDIT, OTHER])
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first if first is not None else logs["cls_loss"].item()
    assert logs["cls_loss"].item() < first
    assert {"cf_loss", "cls_loss", "cf_loc_loss", "cls_pos_acc", "cls_neg_acc"} <= set(logs)
    assert not any(p.requires_grad for p in loaded.model.parameters())


TRAINED = Path(__file__).resolve().parents[1] / "checkpoints" / "editors" / "serac-smollm2-135m"


@pytest.mark.slow
def test_trained_serac_quality_on_zsre(smollm2):
    """The issue's bar: reliability ≥ 0.9, generalization ≥ 0.7, locality ≥ 0.95 on 200 ZsRE eval records."""
    from conftest import require_data
    from lightning_edit.data import load_requests
    from lightning_edit.editors import build_editor
    from lightning_edit.evaluation import evaluate_editing

    require_data("zsre/zsre_mend_eval_portability_gpt4.json")
    if not (TRAINED / "manifest.json").exists():
        pytest.skip(f"no trained editor at {TRAINED}; run `python train.py serac smollm2-135m`")
    editor = build_editor("serac", smollm2, {"editor_checkpoint": str(TRAINED)})
    report = evaluate_editing(smollm2, editor, load_requests("zsre", n=200), fluency=False, progress=False)
    assert report.post["reliability"] >= 0.9
    assert report.post["generalization"] >= 0.7
    assert report.post["locality"] >= 0.95
    assert len(smollm2.patches) == 0  # every patch detached after the run


@pytest.mark.parametrize("keep", ["indices", "last", "all"])
def test_routed_logits_of_the_positions_asked_for(tokenizer, keep):
    """``logits_to_keep`` as indices (teacher-forced scoring asks for its target positions), as a count of last
    positions (generate) or 0: each kept position gets the logits the full pass gives it. The router once took
    indices for the last positions: a trained SERAC's predictions came out one token ahead."""
    loaded = build_tiny("llama", tokenizer)
    editor = tiny_serac(loaded, scope_bias=100.0)
    delta = editor.edit(loaded, [EDIT])
    try:
        full, batch = logits(loaded, [EDIT.prompt], [EDIT.target_new])
        positions = (batch.labels[0] != -100).nonzero().squeeze(-1)  # the logits that predict the target tokens
        assert positions[-1] < batch.input_ids.shape[1] - 1  # not the last positions: a shift would show
        arg = {"indices": positions, "last": 3, "all": 0}[keep]
        with torch.no_grad():
            kept = loaded.model(**batch.model_inputs(), logits_to_keep=arg).logits
        where = {"indices": positions, "last": torch.arange(batch.input_ids.shape[1] - 3, batch.input_ids.shape[1]),
                 "all": torch.arange(batch.input_ids.shape[1])}[keep]
        torch.testing.assert_close(kept[0], full[0, where])
    finally:
        delta.undo(loaded)
