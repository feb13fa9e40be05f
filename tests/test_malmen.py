"""MALMEN: the normal-equation aggregation, the keys it reads, the edit contract, and the two-stage backward
(tiny models)."""
from __future__ import annotations

import pytest
import torch

from conftest import build_tiny
from lightning_edit.editors import build_editor
from lightning_edit.editors.learned.hypernetwork import edit_batch, gradient_factors
from lightning_edit.editors.learned.malmen import MALMENEditor, MALMENHyperParams, normal_equation_shift
from lightning_edit.editors.learned.malmen.module import MALMENModule
from lightning_edit.editors.learned.mend import MENDEditor, MENDHyperParams
from lightning_edit.errors import ConfigError
from lightning_edit.requests import EditRequest, PromptAnswer

REQUESTS = [
    EditRequest(prompt="The capital of Freedonia is", target_new="Sylvania City",
                rephrase_prompts=("Freedonia's capital is",), locality=(PromptAnswer("The sky is", "blue"),),
                case_id=0),
    EditRequest(prompt="The mother tongue of Danielle Darrieux is", target_new="English",
                rephrase_prompts=("Danielle Darrieux speaks",), locality=(PromptAnswer("Two plus two is", "four"),),
                case_id=1),
    EditRequest(prompt="Mount Kilimanjaro is in", target_new="Peru", case_id=2),
]


def tiny_malmen(loaded, **overrides) -> MALMENEditor:
    hp = MALMENHyperParams.for_model("malmen", loaded.name, loaded.layout.family, {"rank": 16, **overrides})
    editor = MALMENEditor(hp)
    editor.network = editor.build_network(loaded).eval()
    return editor


@pytest.mark.parametrize("n_keys", [5, 40])  # fewer keys than inputs (the N × N form) and more (the in × in form)
def test_normal_equation_is_the_ridge_least_squares_solution(n_keys):
    """S = D Uᵀ (U Uᵀ + λI)⁻¹ zeroes the gradient of Σ‖S u_i − d_i‖² + λ‖S‖², in either form."""
    torch.manual_seed(0)
    keys, diffs, lam = torch.randn(n_keys, 12), torch.randn(n_keys, 7), torch.tensor(0.3)
    shift = normal_equation_shift(keys, diffs, lam).double()
    u, d = keys.T.double(), diffs.T.double()
    gradient = 2 * (shift @ u - d) @ u.T + 2 * lam.double() * shift
    assert gradient.abs().max() < 1e-5  # the shift comes back float32
    closed = d @ u.T @ torch.linalg.inv(u @ u.T + lam.double() * torch.eye(12, dtype=torch.float64))
    torch.testing.assert_close(shift, closed, rtol=1e-5, atol=1e-6)


def test_shift_maps_each_key_to_its_value_difference_not_the_sum():
    """With λ → 0 and fewer keys than inputs, S u_i = d_i for every key: the edits do not pile up, where the sum of
    their rank-one shifts (MEND's aggregation) moves each key by the other edits' shifts too."""
    torch.manual_seed(1)
    keys, diffs = torch.randn(4, 16), torch.randn(4, 6)
    shift = normal_equation_shift(keys, diffs, torch.tensor(1e-8))
    torch.testing.assert_close(keys @ shift.T, diffs, rtol=1e-4, atol=1e-4)
    summed = sum(torch.outer(d, k) / k.dot(k) for k, d in zip(keys, diffs))  # each shift exact for its own key alone
    assert (keys @ summed.T - diffs).abs().max() > 0.1


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_keys_are_read_at_the_target_tokens(family, tokenizer):
    """key_positions target: one (u, ∇_v L) pair per target token, and their δᵀu is still autograd's weight gradient
    (the prompt tokens' pairs, which MEND also reads, carry the rest of it only through attention)."""
    loaded = build_tiny(family, tokenizer)
    batch = edit_batch(loaded, REQUESTS[:2])
    every = gradient_factors(loaded, [2, 3], batch)
    target = gradient_factors(loaded, [2, 3], batch, positions="target")
    n_target = int((batch.labels != -100).sum())
    for name in every:
        assert target[name].u.shape[0] == n_target < every[name].u.shape[0]
    with pytest.raises(ConfigError, match="key positions"):
        gradient_factors(loaded, [2], batch, positions="subject")


def test_untrained_network_applies_the_least_squares_shift(tokenizer):
    """The identity-initialised network: d_i = −η (u_iᵀ u_i) ∇_v L_i, and the edit adds S = D Uᵀ (U Uᵀ + λI)⁻¹."""
    loaded = build_tiny("llama", tokenizer)
    editor = tiny_malmen(loaded, edit_lr_init=1e-2, lambda_init=0.5)
    factors = editor.factors(loaded, REQUESTS)
    shifts = editor.network(factors)
    for name, f in factors.items():
        d = -1e-2 * (f.u * f.u).sum(-1, keepdim=True) * f.delta
        expected = normal_equation_shift(f.u, d, torch.tensor(0.5))
        torch.testing.assert_close(shifts[name], expected, rtol=1e-4, atol=1e-7)
    params = dict(loaded.model.named_parameters())
    before = {n: params[n].detach().clone() for n in shifts}
    delta = editor.edit(loaded, REQUESTS)
    for name, s in shifts.items():
        torch.testing.assert_close(params[name].detach() - before[name], s, rtol=1e-3, atol=1e-6)
    delta.undo(loaded)
    assert all(torch.equal(params[n], before[n]) for n in shifts)


def test_edit_touches_only_declared_weights_and_undoes(tokenizer):
    loaded = build_tiny("llama", tokenizer)
    editor = tiny_malmen(loaded, edit_lr_init=1.0)
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    delta = editor.edit(loaded, REQUESTS)
    changed = {k for k, v in loaded.model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and changed <= set(editor.touched_parameters(loaded, REQUESTS))
    delta.undo(loaded)
    assert all(torch.equal(v, before[k]) for k, v in loaded.model.state_dict().items())


def test_bad_settings_refused():
    for bad, field in [({"layers": []}, "layers"), ({"lambda_init": 0.0}, "lambda_init"),
                       ({"key_positions": "subject"}, "key_positions"), ({"n_blocks": 0}, "n_blocks")]:
        with pytest.raises(ConfigError, match=field):
            MALMENHyperParams.from_dict(bad)


def test_missing_editor_checkpoint_is_a_config_error(tokenizer):
    loaded = build_tiny("llama", tokenizer)
    with pytest.raises(ConfigError, match="python train.py malmen"):
        build_editor("malmen", loaded).edit(loaded, REQUESTS[:1])


def _one_graph_gradient(module: MALMENModule, requests) -> dict[str, torch.Tensor]:
    """The reference: the meta-loss backpropagated through the language model and the hypernetwork in one graph."""
    module.network.zero_grad()
    shifts = module.network(module.editor.factors(module.base, requests))
    loss, _ = module.meta_loss(requests, shifts)
    loss.backward()
    return {n: p.grad.clone() for n, p in module.network.named_parameters() if p.grad is not None}


def test_two_stage_backward_gives_the_one_graph_gradient(tokenizer):
    """Stage 1 (the LM's backward to ∂L/∂S) then stage 2 (the hypernetwork's backward of ⟨∂L/∂S, S(θ)⟩) give
    exactly the gradient of backpropagating through both at once; the returned value is the meta-loss."""
    torch.manual_seed(0)
    loaded = build_tiny("llama", tokenizer)
    module = MALMENModule(loaded.name, {"rank": 8, "edit_lr_init": 1e-2, "layers": [-2, -1]}, {}, loaded=loaded)
    module.network.eval()  # running norms frozen: both computations see the same network
    with torch.no_grad():
        for p in module.network.parameters():
            p.add_(0.05 * torch.randn_like(p))  # away from the identity initialisation, where B = 0 hides terms
    reference = _one_graph_gradient(module, REQUESTS)
    module.network.zero_grad()
    value, logs = module.training_loss(REQUESTS)
    value.backward()
    two_stage = {n: p.grad for n, p in module.network.named_parameters() if p.grad is not None}
    assert set(two_stage) == set(reference) and "log_lambdas" in two_stage
    for name, g in reference.items():
        torch.testing.assert_close(two_stage[name], g, rtol=1e-4, atol=1e-8, msg=name)
    shifts = module.network(module.editor.factors(loaded, REQUESTS))
    loss, _ = module.meta_loss(REQUESTS, {n: s.detach() for n, s in shifts.items()})
    torch.testing.assert_close(value.detach(), loss.detach())
    assert not any(p.requires_grad for p in loaded.model.parameters())


def test_a_few_training_steps_lower_the_meta_loss(tokenizer):
    loaded = build_tiny("llama", tokenizer)
    module = MALMENModule(loaded.name, {"rank": 16, "edit_lr_init": 1e-3}, {"lr": 1e-2}, loaded=loaded)
    opt = torch.optim.Adam(module.param_groups(), lr=1e-2)
    losses = []
    for _ in range(8):
        loss, logs = module.training_loss(REQUESTS)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(logs["edit_loss"].item())
    assert losses[-1] < losses[0]
    assert not any(p.requires_grad for p in loaded.model.parameters())


def test_malmen_shares_mends_transform(tokenizer):
    """One factor transform (hypernetwork.FactorTransform) under both: the same blocks, norms and step sizes."""
    loaded = build_tiny("llama", tokenizer)
    mend = MENDEditor(MENDHyperParams.for_model("mend", loaded.name, loaded.layout.family, {"rank": 16}))
    mend_keys = set(mend.build_network(loaded).state_dict())
    malmen_keys = set(tiny_malmen(loaded).network.state_dict())
    assert malmen_keys - mend_keys == {"log_lambdas"}
    assert {k for k in mend_keys if ".0." not in k} <= malmen_keys  # MEND's block 0 keys; MALMEN has n_blocks=2


def test_validation_edits_the_batch_at_once(tokenizer, monkeypatch):
    """MALMEN validates in its regime: a validation batch is one edit (one solve), each request scored on it;
    MEND's module still edits each request alone."""
    from lightning_edit.editors.learned.mend.module import MENDModule

    loaded = build_tiny("llama", tokenizer)
    for cls, expected in ((MALMENModule, [3]), (MENDModule, [1, 1, 1])):
        module = cls(loaded.name, {"rank": 8}, {}, loaded=loaded)
        calls = []
        real_edit = module.editor.edit
        monkeypatch.setattr(module.editor, "edit", lambda m, reqs: calls.append(len(reqs)) or real_edit(m, reqs))
        module.validation_step(REQUESTS, 0)
        assert calls == expected, cls.__name__
        assert module.val_edit_success.compute().isfinite() and module.val_locality.compute().isfinite()
