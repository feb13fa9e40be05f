"""MEMIT and AlphaEdit on tiny models of every family."""
from __future__ import annotations

import pytest
import torch

from conftest import build_tiny
from lightning_edit.editors import build_editor
from lightning_edit.errors import ConfigError
from lightning_edit.models.teacher_forcing import score_targets
from lightning_edit.requests import EditRequest
from test_rome import expressive, stats_cache, stats_text, tiny_overrides  # noqa: F401  (fixtures)

# subject last in the prompt: see test_rome.TINY_REQUEST
REQUESTS = [
    EditRequest(prompt="The mother tongue of Danielle Darrieux", subject="Danielle Darrieux", target_new="English"),
    EditRequest(prompt="The capital city of Paris", subject="Paris", target_new="Italy"),
    EditRequest(prompt="The instrument of Toko Yasuda", subject="Toko Yasuda", target_new="piano"),
]


def logprobs(loaded, requests=REQUESTS) -> torch.Tensor:
    return torch.tensor([s.mean_logprob for s in score_targets(loaded, [r.prompt for r in requests], [r.target_new for r in requests])])


@pytest.mark.parametrize("method", ["memit", "alphaedit"])
def test_batch_edit_touches_declared_layers_and_undoes(method, tiny_decoder, stats_text, stats_cache):  # noqa: F811
    loaded = expressive(tiny_decoder)
    extra = {"nullspace_threshold": 1e9} if method == "alphaedit" else {}  # tiny random keys: keep every direction free
    editor = build_editor(method, loaded, tiny_overrides(stats_text, stats_cache, layers=[1, 2], mom2_update_weight=1.0, **extra))
    before = {n: p.detach().clone() for n, p in loaded.model.named_parameters()}
    lp = logprobs(loaded)
    delta = editor.edit(loaded, REQUESTS)
    changed = {n for n, p in loaded.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == {loaded.layout.weight_name(loaded.layout.mlp_out, i) for i in (1, 2)}
    assert (logprobs(loaded) > lp).all()
    delta.undo(loaded)
    assert all(torch.equal(p, before[n]) for n, p in loaded.model.named_parameters())


def test_memit_refuses_t5(tokenizer, stats_text, stats_cache):  # noqa: F811
    t5 = build_tiny("t5", tokenizer)
    with pytest.raises(ConfigError, match="encoder"):
        build_editor("memit", t5, tiny_overrides(stats_text, stats_cache, layers=[1, 2])).edit(t5, REQUESTS)


def test_alphaedit_update_lies_in_null_space_and_memory_follows_undo(tokenizer, stats_text, stats_cache):  # noqa: F811
    loaded = build_tiny("llama", tokenizer)
    editor = build_editor("alphaedit", loaded, tiny_overrides(stats_text, stats_cache, layers=[1, 2], L2=1.0))
    res = editor.resources(loaded)
    threshold = float(torch.linalg.eigvalsh(res.mom2[1].double()).median())  # half the directions preserved
    editor.hparams.nullspace_threshold = threshold
    editor._resources.clear()
    res = editor.resources(loaded)
    proj = res.derived["projection"][1]
    assert 0 < res.derived["null_dims"][1] < proj.shape[0]
    deltas = [editor.edit(loaded, [r]) for r in REQUESTS]  # sequential edits
    name = loaded.layout.weight_name(loaded.layout.mlp_out, 1)
    total = sum(d.weight_deltas[name] for d in deltas).double()
    preserved = torch.eye(proj.shape[0], dtype=torch.float64) - proj
    assert (total @ preserved).abs().max() < 1e-4 * total.abs().max()  # ΔW k ≈ 0 for the preserved keys
    memory = loaded.patches.get("alphaedit-keys").by_layer[1]  # the key memory is a patch on the model
    assert memory.abs().sum() > 0
    for d in reversed(deltas):
        d.undo(loaded)
    assert memory.abs().max() < 1e-9  # undoing removes the keys of the undone edits


@pytest.mark.slow
def test_memit_counterfact_100_in_one_batch(smollm2):
    from conftest import require_data
    from lightning_edit.data import load_requests
    from lightning_edit.evaluation import evaluate_editing

    require_data("counterfact/counterfact-edit.json")
    editor = build_editor("memit", smollm2, {"progress": False})
    report = evaluate_editing(smollm2, editor, load_requests("counterfact", n=100), protocol="batch", batch_size=100,
                              fluency=False, progress=False)
    assert report.post["efficacy_score"] >= 0.9
    assert report.post["neighborhood_score"] >= 0.7


@pytest.mark.slow
def test_alphaedit_first_edits_survive_100_sequential(smollm2):
    """After 100 sequential AlphaEdit edits, the first 10 still have efficacy ≥ 0.8."""
    from conftest import require_data
    from lightning_edit.data import load_requests
    from lightning_edit.models.teacher_forcing import score_targets

    require_data("counterfact/counterfact-edit.json")
    requests = load_requests("counterfact", n=100)
    editor = build_editor("alphaedit", smollm2, {"progress": False})
    deltas = []
    try:
        for r in requests:
            deltas.append(editor.edit(smollm2, [r]))
        first = requests[:10]
        new = score_targets(smollm2, [r.prompt for r in first], [r.target_new for r in first])
        true = score_targets(smollm2, [r.prompt for r in first], [r.target_true for r in first])
        efficacy = sum(n.mean_logprob > t.mean_logprob for n, t in zip(new, true)) / len(first)
        assert efficacy >= 0.8
    finally:
        for d in reversed(deltas):
            d.undo(smollm2)


def test_memit_keys_weigh_the_plain_prompt_half_whatever_the_prefixes():
    """MEMIT's compute_ks averages per context type (the plain prompt; the prefixed prompts), then over types."""
    from lightning_edit.editors.locate.memit import context_average

    keys = torch.zeros(2, 6, 3)  # 2 requests, plain prompt + 5 prefixes
    keys[:, 0] = 1.0
    keys[:, 1:] = torch.arange(5.0)[None, :, None]  # prefixed keys 0..4, mean 2
    torch.testing.assert_close(context_average(keys), torch.full((2, 3), 0.5 * 1.0 + 0.5 * 2.0))
    torch.testing.assert_close(context_average(keys[:, :1]), keys[:, 0])  # no prefixes: the plain key


def test_mlp_change_for_a_normalised_mlp_output_moves_the_stream_as_wanted():
    """Gemma normalises an MLP's output before the residual add: MEMIT's share of z − h is mapped through that norm.
    What the norm can give (the change tangent to its sphere) is reached; adding the share to the MLP output as it
    is (what MEMIT does where nothing normalises) is scaled away."""
    from transformers.models.gemma3.modeling_gemma3 import Gemma3RMSNorm

    from lightning_edit.editors.locate.memit import mlp_change_for

    torch.manual_seed(0)
    d = 64
    norm = Gemma3RMSNorm(d)
    with torch.no_grad():
        norm.weight.copy_(0.3 * torch.randn(d))
        m, r = 5 * torch.randn(3, d), 0.1 * torch.randn(3, d)
        y, gain = norm(m), norm(torch.ones(1, d))
        normal = y / gain**2  # the normal of the reachable set {gain ⊙ v : rms(v) = 1} at y
        normal = normal / normal.norm(dim=-1, keepdim=True)
        reachable = r - (r * normal).sum(-1, keepdim=True) * normal
        mapped = norm(m + mlp_change_for(norm, m, r)) - y
        as_is = norm(m + r) - y
    assert ((mapped - reachable).norm(dim=-1) < 0.25 * reachable.norm(dim=-1)).all()
    assert ((as_is - reachable).norm(dim=-1) > 0.5 * reachable.norm(dim=-1)).all()


def test_mlp_change_for_a_change_that_is_not_finite_stops_with_an_error():
    """The search for the norm's multiplier grows its bracket a bounded number of times: an infinite wanted change
    (a diverged value vector) raises, which the editor contract turns into a rolled-back edit, instead of looping."""
    from transformers.models.gemma3.modeling_gemma3 import Gemma3RMSNorm

    from lightning_edit.editors.locate.memit import mlp_change_for

    norm = Gemma3RMSNorm(8)
    change = torch.zeros(2, 8)
    change[1, 3] = float("inf")
    with torch.no_grad(), pytest.raises(FloatingPointError, match="not finite"):
        mlp_change_for(norm, torch.randn(2, 8), change)


def test_tokens_per_pass_is_checked_by_name():
    from lightning_edit.editors import get_editor_class
    from lightning_edit.errors import ConfigError

    with pytest.raises(ConfigError, match="v_tokens_per_pass"):
        get_editor_class("memit").HParams.from_dict({"v_tokens_per_pass": 0})
