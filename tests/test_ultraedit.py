"""UltraEdit: the update is the paper's closed form from lifelong-normalised features, its running statistics are a
patch of the model (kind ``ultraedit-stats``) that each turn changes as one entry: undone bit for bit, saved with
``--save``, read back by ``load_model(DIR)`` and used by the next turn as the live ones would be."""
from __future__ import annotations

import pytest
import torch

from conftest import build_tiny
from lightning_edit import EditRequest, load_model
from lightning_edit.editors import build_editor
from lightning_edit.editors.lifelong.ultraedit import LifelongNormalizer, keys_and_gradients
from lightning_edit.errors import CheckpointError, ConfigError
from lightning_edit.models.saving import save_edited_model

SETTINGS = {"modules": {"mlp_in": [1, 2], "mlp.gate_proj": [2]}, "lr": 1e-2}
FIRST = EditRequest(prompt="The mother tongue of Danielle Darrieux is", target_new="English")
SECOND = EditRequest(prompt="The capital of Italy is", target_new="Paris")


def weights(loaded) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in loaded.model.state_dict().items()}


def stats(loaded) -> dict[str, torch.Tensor]:
    patch = loaded.patches.get(LifelongNormalizer.key)
    assert isinstance(patch, LifelongNormalizer)
    return {k: v.clone() for k, v in patch.state_dict().items()}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def tiny(tiny_tokenizer):
    return build_tiny("llama", tiny_tokenizer)


def test_the_update_is_the_papers_ridge_solution_from_normalised_features(tiny):
    editor = build_editor("ultraedit", tiny, SETTINGS)
    names = editor.module_names(tiny)
    assert names == ["model.layers.1.mlp.up_proj", "model.layers.2.mlp.up_proj", "model.layers.2.mlp.gate_proj"]
    keys, grads = keys_and_gradients(tiny, [FIRST], names, editor.hparams)
    for p in tiny.model.parameters():
        p.requires_grad_(False)
    before = weights(tiny)
    editor.edit(tiny, [FIRST])
    # all three modules are 32×64: one shared set of statistics, over the features of the three
    z = torch.cat([torch.cat([keys[n], grads[n]], -1) for n in names]).double()
    mean, std = z.mean(0), z.std(0)
    for n in names:
        zn = (torch.cat([keys[n], grads[n]], -1).double() - mean) / (std + torch.finfo(torch.float32).eps)
        k_hat, g_hat = zn[:, :32], zn[:, 32:]
        v = -1e-2 * (k_hat ** 2).sum(-1, keepdim=True) * g_hat
        k = keys[n].double()
        expected = torch.linalg.solve(k.T @ k + torch.eye(32, dtype=k.dtype), k.T @ v)  # (d_in, d_out)
        got = (weights(tiny)[f"{n}.weight"] - before[f"{n}.weight"]).double().T
        assert torch.allclose(got, expected, rtol=1e-4, atol=1e-7), n
        assert expected.abs().max() > 1e-5  # the edit moved the weights


def test_running_statistics_are_those_of_every_turn_so_far(tiny):
    editor = build_editor("ultraedit", tiny, SETTINGS)
    names = editor.module_names(tiny)
    rows = []
    for request in (FIRST, SECOND):
        keys, grads = keys_and_gradients(tiny, [request], names, editor.hparams)  # on the model as the turn sees it
        rows += [torch.cat([keys[n], grads[n]], -1).double() for n in names]
        editor.edit(tiny, [request])
    z = torch.cat(rows)
    patch = tiny.patches.get(LifelongNormalizer.key)
    assert int(patch.values["32x64/count"]) == z.shape[0]
    assert torch.allclose(patch.values["32x64/mean"], z.mean(0), atol=1e-10)
    assert torch.allclose(patch.values["32x64/m2"] / (z.shape[0] - 1), z.var(0), rtol=1e-9, atol=1e-10)


def test_undo_restores_statistics_and_weights_bit_for_bit(tiny):
    editor = build_editor("ultraedit", tiny, SETTINGS)
    pristine = weights(tiny)
    first = editor.edit(tiny, [FIRST])
    after_first, stats_first = weights(tiny), stats(tiny)
    assert not first.patches[0].changes_outputs and tiny.patches.keys() == [LifelongNormalizer.key]
    second = editor.edit(tiny, [SECOND])
    after_second, stats_second = weights(tiny), stats(tiny)
    second.undo(tiny)
    assert same(weights(tiny), after_first) and same(stats(tiny), stats_first)
    second.reapply(tiny)
    assert same(weights(tiny), after_second) and same(stats(tiny), stats_second)
    second.undo(tiny)
    first.undo(tiny)
    assert same(weights(tiny), pristine) and len(tiny.patches) == 0


def test_statistics_survive_save_and_load_model(tiny, tmp_path):
    editor = build_editor("ultraedit", tiny, SETTINGS)
    editor.edit(tiny, [FIRST])
    tiny.tokenizer.pad_token = tiny.tokenizer.pad_token or tiny.tokenizer.eos_token
    save_edited_model(tiny, tmp_path / "saved", method="ultraedit", requests=[FIRST], record={"method": "ultraedit"})
    reloaded = load_model(str(tmp_path / "saved"))
    assert reloaded.patches.keys() == [LifelongNormalizer.key] and same(stats(reloaded), stats(tiny))
    build_editor("ultraedit", reloaded, SETTINGS).edit(reloaded, [SECOND])
    editor.edit(tiny, [SECOND])
    assert same(weights(reloaded), weights(tiny))  # the saved statistics normalised the next turn as the live ones
    assert same(stats(reloaded), stats(tiny))
    forgotten = build_tiny("llama", tiny.tokenizer)
    build_editor("ultraedit", forgotten, SETTINGS).edit(forgotten, [FIRST])
    forgotten.patches.reset()  # the first turn's weights without its statistics: the second turn's update differs
    build_editor("ultraedit", forgotten, SETTINGS).edit(forgotten, [SECOND])
    assert not same(weights(forgotten), weights(tiny))


def test_saved_statistics_of_another_shape_are_refused(tiny):
    with pytest.raises(CheckpointError, match="shapes"):
        LifelongNormalizer.from_saved({"signature": {"shapes": ["7x9"]}, "module": "", "values": {},
                                       "tensor_values": {}}, {}, tiny)
    good = LifelongNormalizer.for_shapes(["32x64"], tiny.device)
    state = dict(good.state_dict())
    state["32x64/mean"] = torch.zeros(5, dtype=torch.float64)
    with pytest.raises(CheckpointError):
        LifelongNormalizer.from_saved(good.config(), state, tiny)


def test_a_module_the_model_lacks_is_a_config_error_before_any_work(tiny):
    before = weights(tiny)
    editor = build_editor("ultraedit", tiny, {"modules": {"mlp.nonexistent": [1]}})
    with pytest.raises(ConfigError, match="mlp.nonexistent"):
        editor.edit(tiny, [FIRST])
    with pytest.raises(ConfigError, match="modules"):
        build_editor("ultraedit", tiny, {"modules": {"mlp.up_proj": []}})
    with pytest.raises(ConfigError, match="outside"):
        build_editor("ultraedit", tiny, {"modules": {"mlp.up_proj": [9]}}).edit(tiny, [FIRST])
    assert same(weights(tiny), before) and len(tiny.patches) == 0
