"""The editor contract, checked with FT-L/FT-M on tiny models of every family and on the real smollm2."""
import json

import pytest
import torch

from conftest import build_tiny
from lightning_edit import ConfigError, EditFailedError, EditRequest, RequestError
from lightning_edit.editors import EDITORS, EditDelta, build_editor
from lightning_edit.editors.ft import FTMHyperParams
from lightning_edit.errors import CheckpointError
from lightning_edit.models.teacher_forcing import score_targets

REQ = EditRequest(prompt="The mother tongue of Danielle Darrieux is", target_new="English", subject="Danielle Darrieux",
                  target_true="French")


def state(loaded):
    return {k: v.detach().clone() for k, v in loaded.model.state_dict().items()}


def assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("method", ["ft-l", "ft-m"])
def test_ft_changes_only_declared_parameters_and_undoes_bit_for_bit(tiny_model, method):
    editor = build_editor(method, tiny_model, {"layers": [1], "num_steps": 5, "lr": 1e-2})
    before = state(tiny_model)
    loss_before = -score_targets(tiny_model, [REQ.prompt], [REQ.target_new])[0].mean_logprob
    delta = editor.edit(tiny_model, [REQ])
    after = state(tiny_model)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    declared = set(delta.weights_after)
    assert changed and changed <= declared | {k for k in before if k.endswith("lm_head.weight")}  # tied heads alias
    loss_after = -score_targets(tiny_model, [REQ.prompt], [REQ.target_new])[0].mean_logprob
    assert loss_after < loss_before
    if method == "ft-l":
        for name, d in delta.weight_deltas.items():
            assert d.abs().max() <= editor.hparams.norm_constraint + 1e-7
    delta.undo(tiny_model)
    assert_same(before, state(tiny_model))


def test_failed_edit_leaves_weights_unchanged(tiny_decoder, monkeypatch):
    editor = build_editor("ft-m", tiny_decoder, {"layers": [0, 2], "num_steps": 3, "lr": 1e-2})
    before = state(tiny_decoder)
    original_step = torch.optim.Adam.step
    calls = {"n": 0}

    def step_then_explode(self, *a, **k):  # the first steps really change weights, then the edit fails
        original_step(self, *a, **k)
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("simulated failure mid-edit")

    monkeypatch.setattr(torch.optim.Adam, "step", step_then_explode)
    with pytest.raises(EditFailedError, match="weights were restored"):
        editor.edit(tiny_decoder, [REQ])
    assert_same(before, state(tiny_decoder))
    assert not any(p.requires_grad for p in tiny_decoder.model.parameters())


def test_nan_edit_is_rolled_back(tiny_decoder):
    with pytest.raises(ConfigError, match="field 'lr' must be a finite number"):  # refused as input...
        build_editor("ft-m", tiny_decoder, {"lr": float("inf")})
    editor = build_editor("ft-m", tiny_decoder, {"layers": [1], "num_steps": 2})
    editor.hparams.lr = float("inf")  # ...so the fault is injected after the check
    before = state(tiny_decoder)
    with pytest.raises(EditFailedError, match="non-finite|loss became"):
        editor.edit(tiny_decoder, [REQ])
    assert_same(before, state(tiny_decoder))


def test_bad_inputs_give_clear_errors(tiny_decoder):
    with pytest.raises(ConfigError, match="unknown method 'nope'"):
        build_editor("nope", tiny_decoder)
    with pytest.raises(ConfigError, match="unknown hyperparameter.*learning_rate"):
        build_editor("ft-m", tiny_decoder, {"learning_rate": 1})
    with pytest.raises(ConfigError, match="field 'objective'"):
        build_editor("ft-m", tiny_decoder, {"objective": "vibes"})
    editor = build_editor("ft-m", tiny_decoder, {"layers": [40]})
    before = state(tiny_decoder)
    with pytest.raises(ConfigError, match="field 'layers' holds 40"):
        editor.edit(tiny_decoder, [REQ])
    with pytest.raises(RequestError, match="no edit requests"):
        editor.edit(tiny_decoder, [])
    with pytest.raises(RequestError, match="expected EditRequest"):
        editor.edit(tiny_decoder, [{"prompt": "x"}])
    assert_same(before, state(tiny_decoder))


def test_delta_save_load_reapply(tiny_decoder, tmp_path, tokenizer):
    editor = build_editor("ft-m", tiny_decoder, {"layers": [1], "num_steps": 3, "lr": 1e-2})
    delta = editor.edit(tiny_decoder, [REQ])
    edited = state(tiny_decoder)
    delta.save(tmp_path / "edit")
    delta.undo(tiny_decoder)
    loaded_delta = EditDelta.load(tmp_path / "edit")
    assert json.loads((tmp_path / "edit" / "edit.json").read_text())["requests"][0]["target_new"] == "English"
    loaded_delta.reapply(tiny_decoder)
    assert_same(edited, state(tiny_decoder))
    other = build_tiny(tiny_decoder.layout.family, tokenizer, seed=1)  # different weights
    with pytest.raises(CheckpointError, match="does not hold the weights"):
        loaded_delta.reapply(other)


def test_sequential_edits_undo_in_reverse(tiny_decoder):
    editor = build_editor("ft-m", tiny_decoder, {"layers": [1], "num_steps": 3, "lr": 1e-2})
    before = state(tiny_decoder)
    reqs = [REQ, EditRequest(prompt="The capital of France is", target_new="Lyon")]
    deltas = editor.edit_sequential(tiny_decoder, reqs)
    for d in reversed(deltas):
        d.undo(tiny_decoder)
    assert_same(before, state(tiny_decoder))


def test_config_layers_merge(tmp_path):
    root = tmp_path / "configs"
    (root / "ft-m").mkdir(parents=True)
    (root / "ft-m" / "default.yaml").write_text("layers: [1]\nlr: 0.1\n")
    (root / "ft-m" / "llama.yaml").write_text("layers: [2]\n")
    (root / "ft-m" / "my-model.yaml").write_text("num_steps: 7\n")
    hp = FTMHyperParams.for_model("ft-m", "my-model", "llama", {"lr": 0.5}, config_root=root)
    assert (hp.layers, hp.lr, hp.num_steps, hp.model_name) == ([2], 0.5, 7, "my-model")


def test_every_registered_method_has_a_default_config():
    from pathlib import Path

    for method in EDITORS:
        assert (Path(__file__).parents[1] / "configs" / method / "default.yaml").exists(), method


def _one_ulp_up(x: torch.Tensor) -> torch.Tensor:
    return torch.nextafter(x, torch.tensor(float("inf"), dtype=x.dtype))


@pytest.mark.parametrize("corrupt", [lambda x: torch.full_like(x, float("nan")), _one_ulp_up], ids=["nan", "one-ulp"])
def test_failure_message_claims_only_what_the_checksums_show(tokenizer, monkeypatch, corrupt):
    """A method that writes a parameter it did not declare, then fails: the declared weights are restored, and the
    message says the other one changed instead of claiming the weights were restored. The smallest change a
    float32 value can take shows too (a float sum of the whole tensor would round it away)."""
    loaded = build_tiny("llama", tokenizer)
    editor = build_editor("ft-m", loaded, {"layers": [1], "num_steps": 2})
    undeclared = "model.embed_tokens.weight"

    def corrupt_then_fail(loaded, requests):
        with torch.no_grad():
            weight = dict(loaded.model.named_parameters())[undeclared]
            weight[0, 0] = corrupt(weight[0, 0])
        raise RuntimeError("injected")

    monkeypatch.setattr(editor, "_apply", corrupt_then_fail)
    with pytest.raises(EditFailedError, match="did not declare changed.*embed_tokens.*reload the model"):
        editor.edit(loaded, [REQ])

    clean = build_tiny("llama", tokenizer)
    editor = build_editor("ft-m", clean, {"layers": [1], "num_steps": 2})
    monkeypatch.setattr(editor, "_apply", lambda loaded, requests: (_ for _ in ()).throw(RuntimeError("injected")))
    with pytest.raises(EditFailedError, match="the weights were restored \\(every parameter checked\\)"):
        editor.edit(clean, [REQ])


def test_edit_keeps_the_callers_requires_grad_flags(tokenizer):
    """An edit at a Trainer's fit start must not freeze the model the Trainer is about to train."""
    loaded = build_tiny("llama", tokenizer)
    trainable = "model.layers.3.mlp.down_proj.weight"
    dict(loaded.model.named_parameters())[trainable].requires_grad_(True)
    delta = build_editor("ft-m", loaded, {"layers": [1], "num_steps": 2}).edit(loaded, [REQ])
    flags = {n: p.requires_grad for n, p in loaded.model.named_parameters()}
    assert flags[trainable] and sum(flags.values()) == 1
    delta.undo(loaded)


def test_edit_callback_at_fit_start_leaves_the_model_trainable(tokenizer, tmp_path):
    """EditCallback fires at fit start, before the first step: the Trainer must still train what it was given."""
    import lightning as L

    from lightning_edit.editors.callback import EditCallback
    from lightning_edit.models.teacher_forcing import build_target_batch

    loaded = build_tiny("llama", tokenizer)
    for p in loaded.model.parameters():
        p.requires_grad_(True)  # a model about to be fine-tuned: everything trainable

    class FineTune(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = loaded.model
            self.loaded = loaded

        def training_step(self, batch, _):
            inputs = build_target_batch(loaded, ["The capital of Italy is"], ["Rome"])
            return self.model(**inputs.model_inputs(), labels=inputs.labels).loss

        def train_dataloader(self):
            return [0]

        def configure_optimizers(self):
            return torch.optim.SGD(self.model.parameters(), lr=1e-2)

    editor = build_editor("ft-m", loaded, {"layers": [1], "num_steps": 2})
    callback = EditCallback(editor, [REQ], on="fit_start")
    untouched = "model.layers.3.mlp.down_proj.weight"  # the edit does not write it; only training can
    before = dict(loaded.model.named_parameters())[untouched].detach().clone()
    trainer = L.Trainer(max_steps=1, callbacks=[callback], logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path, accelerator="cpu")
    trainer.fit(FineTune())
    assert callback.applied_times == 1
    assert all(p.requires_grad for p in loaded.model.parameters())
    assert not torch.equal(dict(loaded.model.named_parameters())[untouched], before)  # the step trained it
