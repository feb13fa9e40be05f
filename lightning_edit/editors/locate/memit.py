"""MEMIT (Meng et al. 2023, "Mass-Editing Memory in a Transformer"): many facts in one batch.

For each request a target z for the residual stream (the output of the last edited block, at the
subject's last token) is optimised as in ROME. The change z − h is then spread over the edited layers
from the lowest up: at layer l, with keys K (mlp_out inputs at the subject: ½ the plain prompt's + ½ the
mean over the context prefixes, as MEMIT's code averages per context type; one column per request) and
residual R = (z − h_current) / (layers left), ΔW = R Kᵀ (λ C + K Kᵀ)⁻¹, where C = E[k kᵀ] over text and λ = ``mom2_update_weight``.
Where the layout names a norm after the MLP (Gemma), R is first mapped through it (``mlp_change_for``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ...errors import ConfigError
from ...models.loading import LoadedModel
from ...requests import EditRequest
from ..base import register_editor
from .common import LocateEditor, LocateHyperParams, add_to_weight
from .keys import subject_keys_and_outputs
from .values import optimise_values


def context_average(keys: torch.Tensor) -> torch.Tensor:
    """Each request's key from its keys over the contexts, (n, 1 + prefixes, d) → (n, d), as MEMIT's ``compute_ks``
    forms it: the mean over two context types, the plain prompt and the prefixed prompts (each type averaged first).
    The plain prompt weighs ½ however many prefixes there are (ROME's flat mean gives it 1/(1 + prefixes))."""
    if keys.shape[1] == 1:
        return keys[:, 0]
    return 0.5 * (keys[:, 0] + keys[:, 1:].mean(dim=1))


@torch.no_grad()
def mlp_change_for(post_norm: torch.nn.Module, mlp_out: torch.Tensor, stream_change: torch.Tensor) -> torch.Tensor:
    """The change of the MLP outputs ``mlp_out`` (n, d) that moves what their norm adds to the residual stream by
    ``stream_change`` (n, d), as nearly as the norm allows: for models that normalise an MLP's output before adding it
    (Gemma's ``post_feedforward_layernorm``), where MEMIT's ΔW k = (share of z − h) would be rescaled away.

    An RMS norm gives y = g ⊙ v with v = m / rms(m), so its outputs lie on {g ⊙ v : ‖v‖² = d}. The wanted t = y + r
    generally does not; the nearest point, min ‖g ⊙ v − t‖² with ‖v‖² = d, is v = g t / (g² + λ) for the λ > −min g²
    that puts v on the sphere (found by bisection). Features the norm silences (g = 0) keep no share, the smallest
    gains are not divided by, and the new output keeps the MLP output's own scale (which the norm ignores)."""
    m = mlp_out.to(next(post_norm.parameters()).dtype)
    y = post_norm(m).double()
    gain = post_norm(torch.ones_like(m[:1])).double()  # the per-feature gain as the norm applies it (Gemma: 1 + w)
    target = y + stream_change.double()
    d = m.shape[-1]
    g2 = gain**2

    def norm_sq(lam: torch.Tensor) -> torch.Tensor:
        return ((gain * target / (g2 + lam)) ** 2).sum(-1, keepdim=True)

    low = torch.full_like(target[:, :1], float(-g2.min()) + 1e-9)
    high = torch.ones_like(low)
    for _ in range(64):  # grow until every row's v is inside the sphere (4**64 ≈ 3e38: any finite target is)
        outside = norm_sq(high) > d
        if not bool(outside.any()):
            break
        high = torch.where(outside, high * 4, high)
    else:
        raise FloatingPointError("MEMIT's norm mapping: a wanted residual-stream change is not finite")
    for _ in range(100):
        mid = (low + high) / 2
        inside = norm_sq(mid) <= d
        high, low = torch.where(inside, mid, high), torch.where(inside, low, mid)
    v = gain * target / (g2 + high)
    rms = mlp_out.double().pow(2).mean(-1, keepdim=True).sqrt()
    return (v * rms - mlp_out.double()).to(mlp_out.dtype)


@dataclass
class MEMITHyperParams(LocateHyperParams):
    mom2_update_weight: float = 15000.0

    def validate(self) -> None:
        super().validate()
        if self.mom2_update_weight < 0:
            raise ConfigError("field 'mom2_update_weight' must be ≥ 0")


@register_editor
class MEMITEditor(LocateEditor):
    name = "memit"
    HParams = MEMITHyperParams
    supports_batch = True

    def _layer_update(self, loaded: LoadedModel, layer: int, keys: torch.Tensor, resid: torch.Tensor) -> torch.Tensor:
        """ΔW (out, in) for one layer from keys (d_in, n) and residuals (d_out, n), float64."""
        cov = self.resources(loaded).mom2[layer].to(keys.device).double()
        adj = torch.linalg.solve(self.hparams.mom2_update_weight * cov + keys @ keys.T, keys)
        return resid @ adj.T

    def _apply(self, loaded: LoadedModel, requests: Sequence[EditRequest]) -> list:
        res = self.resources(loaded)
        layers = self.layers(loaded)
        z_site = loaded.layout.block_name(layers[-1])
        values = optimise_values(loaded, requests, z_site, res.prefixes, self.hparams.value_hparams(),
                                 replay_check=res.replay)
        all_keys: dict[int, torch.Tensor] = {}
        layout = loaded.layout
        for i, layer in enumerate(layers):
            # keys and current z with the lower layers already updated
            mlp_out = layout.mlp_out.format(layer)
            keys, outs = subject_keys_and_outputs(loaded, requests, [layer], res.prefixes,
                                                  output_modules=[z_site] + ([mlp_out] if layout.mlp_post_norm else []))
            k = context_average(keys[layer]).double().T  # (d_in, n)
            resid = (values.targets - outs[z_site]) / (len(layers) - i)  # (n, d): this layer's share of z − h
            if layout.mlp_post_norm:
                resid = mlp_change_for(layout.module(loaded.model, layout.mlp_post_norm, layer), outs[mlp_out], resid)
            add_to_weight(loaded, layer, self._layer_update(loaded, layer, k, resid.double().T).float())
            all_keys[layer] = k
        return self._after_edit(loaded, all_keys)

    def _after_edit(self, loaded: LoadedModel, keys: dict[int, torch.Tensor]) -> list:
        return []
