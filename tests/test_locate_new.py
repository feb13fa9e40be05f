"""r-ROME, EMMET and PMET on tiny random models: each method's defining property, checked on the update it writes.

- r-ROME: the edited layer maps k* (the key averaged over the prefixes) to v*; ROME maps the plain prompt's key;
- EMMET: without its regulariser every key of a batch meets its target exactly (ROME's equality constraint per key),
  which MEMIT's least-squares update does not;
- PMET: the value optimisation places a δ at the attention and at the FFN output of the top block, and the FFN's
  share is spread with the square-root scaling;
- value optimisation at several sites: block replay from the lowest site's block finds the vectors of full passes,
  and each site's δ keeps to its own norm clamp.
"""
from __future__ import annotations

import math

import pytest
import torch
from conftest import build_tiny
from test_locate import REPLAY_REQUESTS, value_hparams
from test_rome import TINY_REQUEST, expressive, stats_cache, stats_text, tiny_overrides  # noqa: F401  (fixtures)

from lightning_edit.editors import build_editor
from lightning_edit.editors.locate import pmet as pmet_module
from lightning_edit.editors.locate import r_rome as r_rome_module
from lightning_edit.editors.locate import rome as rome_module
from lightning_edit.editors.locate.keys import subject_keys_and_outputs
from lightning_edit.errors import ConfigError
from lightning_edit.requests import EditRequest

BATCH = [EditRequest(prompt=p, subject=s, target_new=t) for p, s, t in REPLAY_REQUESTS]


def captured(monkeypatch, module, name: str) -> list:
    """Calls of ``module.name`` record their results here (the function still runs)."""
    results, real = [], getattr(module, name)

    def recording(*args, **kwargs):
        results.append(real(*args, **kwargs))
        return results[-1]

    monkeypatch.setattr(module, name, recording)
    return results


def mlp_out_map(loaded, layer: int, key: torch.Tensor) -> torch.Tensor:
    """The layer's mlp_out applied to ``key``, in float64 (W k + b)."""
    return r_rome_module.layer_output(loaded, layer, key.double())


@pytest.mark.parametrize("family", ["llama", "gpt2"])  # gpt2: a Conv1D (in, out) weight with a bias
def test_r_rome_maps_the_averaged_key_to_the_target_where_rome_maps_the_plain_key(
        family, tokenizer, stats_text, stats_cache, monkeypatch):  # noqa: F811
    outcome = {}
    for method, module in (("r-rome", r_rome_module), ("rome", rome_module)):
        loaded = expressive(build_tiny(family, tokenizer))
        editor = build_editor(method, loaded, {**tiny_overrides(stats_text, stats_cache, layers=[1]),
                                                      "context_prefixes": 2})
        values = captured(monkeypatch, module, "optimise_values")
        keys, _ = subject_keys_and_outputs(loaded, [TINY_REQUEST], [1], editor.resources(loaded).prefixes)
        k_plain, k_star = keys[1][0, 0].double(), keys[1][0].double().mean(0)
        assert not torch.allclose(k_plain, k_star)  # the prefixes change the key: the two updates differ
        editor.edit(loaded, [TINY_REQUEST])
        v_star = values[0].targets[0].double()
        outcome[method] = {name: float((mlp_out_map(loaded, 1, k) - v_star).norm() / v_star.norm())
                           for name, k in (("plain", k_plain), ("averaged", k_star))}
    assert outcome["r-rome"]["averaged"] < 1e-4 and outcome["r-rome"]["plain"] > 1e-3
    assert outcome["rome"]["plain"] < 1e-4 and outcome["rome"]["averaged"] > 1e-3


def test_emmet_meets_every_key_of_a_batch_where_memit_fits_them(tokenizer, stats_text, stats_cache, monkeypatch):  # noqa: F811
    """With emmet_lambda = 0, ΔW K = V̂ − W₀K column by column (the equality constraint); MEMIT's ΔW = R Kᵀ(λC + KKᵀ)⁻¹
    only trades the fit against C."""
    misfit = {}
    for method in ("emmet", "memit"):
        loaded = expressive(build_tiny("llama", tokenizer))
        extra = {"emmet_lambda": 0.0} if method == "emmet" else {}
        editor = build_editor(method, loaded, tiny_overrides(stats_text, stats_cache, layers=[1], mom2_update_weight=100.0,
                                                             **extra))
        calls = []
        real = editor._layer_update

        def recording(loaded_, layer, keys, resid, real=real, calls=calls):
            calls.append((keys, resid, real(loaded_, layer, keys, resid)))
            return calls[-1][2]

        monkeypatch.setattr(editor, "_layer_update", recording)
        editor.edit(loaded, BATCH)
        (keys, resid, update), = calls
        assert keys.shape[1] == len(BATCH)
        misfit[method] = float((update @ keys - resid).norm() / resid.norm())
    assert misfit["emmet"] < 1e-6
    assert misfit["memit"] > 1e-2


def test_emmet_refuses_a_second_moment_it_cannot_invert(tokenizer):
    loaded = build_tiny("llama", tokenizer)
    with pytest.raises(ConfigError, match="mom2_update_weight"):
        build_editor("emmet", loaded, {"mom2_update_weight": 0.0})
    with pytest.raises(ConfigError, match="emmet_lambda"):
        build_editor("emmet", loaded, {"emmet_lambda": -1.0})


@pytest.mark.parametrize("family", ["llama", "gemma3_text"])  # gemma: an MLP output normalised before the stream
def test_pmet_optimises_attention_and_ffn_and_spreads_the_ffn_share_by_square_roots(
        family, tokenizer, stats_text, stats_cache, monkeypatch):  # noqa: F811
    loaded = expressive(build_tiny(family, tokenizer))
    editor = build_editor("pmet", loaded, tiny_overrides(stats_text, stats_cache, layers=[1, 2]))
    values = captured(monkeypatch, pmet_module, "optimise_site_values")
    resids = []
    real = editor._layer_update
    monkeypatch.setattr(editor, "_layer_update",
                        lambda loaded_, layer, keys, resid: resids.append(resid) or real(loaded_, layer, keys, resid))
    before = {n: p.detach().clone() for n, p in loaded.model.named_parameters()}
    editor.edit(loaded, BATCH[:2])
    layout = loaded.layout
    attn, ffn = layout.attn_out.format(2), layout.mlp_out.format(2)
    (found,) = values
    assert list(found) == [attn, ffn]
    assert all(float((v.targets - v.initial).norm()) > 0 for v in found.values())  # both δ's moved
    # the lowest layer takes (z − h) / √2 with h still the unedited FFN output; the top one its remaining share / 1
    torch.testing.assert_close(resids[0].T * math.sqrt(2), (found[ffn].targets - found[ffn].initial).double(),
                               atol=1e-5, rtol=1e-4)
    changed = {n for n, p in loaded.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == {layout.weight_name(layout.mlp_out, 1), layout.weight_name(layout.mlp_out, 2)}


def test_two_sites_replaying_from_the_lower_ones_block_find_the_vectors_of_full_passes(tokenizer):
    """δ's at the attention output of block 1 and the FFN output of block 2: replays start at block 1 (starting at
    block 2 would drop the lower δ), and find what full passes find."""
    from lightning_edit.editors.locate.batching import ReplayCheck
    from lightning_edit.editors.locate.values import optimise_site_values

    loaded = build_tiny("llama", tokenizer)
    sites = [loaded.layout.attn_out.format(1), loaded.layout.mlp_out.format(2)]
    prefixes = ["", "It was a sunny day. "]
    hp = value_hparams(steps=5, lr=0.5, early_stop_loss=0.0, tokens_per_pass=16)
    full = optimise_site_values(loaded, BATCH, sites, prefixes, hp)
    check = ReplayCheck()
    replayed = optimise_site_values(loaded, BATCH, sites, prefixes, hp, replay_check=check)
    assert check.reproduces is True
    for site in sites:
        assert float((full[site].targets - full[site].initial).norm()) > 0
        torch.testing.assert_close(replayed[site].initial, full[site].initial, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(replayed[site].targets, full[site].targets, atol=1e-5, rtol=1e-4)


def test_each_site_keeps_to_its_own_norm_clamp(tokenizer):
    from lightning_edit.editors.locate.values import optimise_site_values

    loaded = build_tiny("llama", tokenizer)
    sites = [loaded.layout.attn_out.format(2), loaded.layout.mlp_out.format(2)]
    hp = value_hparams(steps=6, lr=5.0, early_stop_loss=0.0, clamp_norm_factor=0.05, weight_decay=0.0)
    found = optimise_site_values(loaded, BATCH, sites, [""], hp)
    for site in sites:
        moved = (found[site].targets - found[site].initial).norm(dim=-1)
        bound = 0.05 * found[site].initial.norm(dim=-1)
        assert torch.all(moved <= bound * (1 + 1e-5))
        assert torch.all(moved >= bound * 0.99)  # lr 5 reaches the clamp: the bound is the site's own
    norms = [found[s].initial.norm(dim=-1) for s in sites]
    assert not torch.allclose(norms[0], norms[1])  # different ‖m‖ per site: one shared clamp would show
