"""PMET (Li et al. 2024, "PMET: Precise Model Editing in a Transformer", AAAI).

A block's residual-stream update is the sum of its attention (MHSA) and FFN outputs, and MEMIT's optimised z
credits all of it to the FFN. PMET instead optimises the two hidden states together at the top edited block L:
one δ added to the attention output and one to the FFN output (``mlp_out``), at the subject's last token, with
ROME's loss (the new-object NLL, the essence KL, a weight decay and a norm clamp for each δ), then writes only the
FFN part into the FFN weights:

    z_i = h_i^FFN(L) + δ_i^FFN,     r_i^l = (z_i − h_i^FFN(L)) / √(edited blocks from l up)
    ΔW^l = R^l Kᵀ (K Kᵀ + λ C)⁻¹     for each edited block l from the lowest up, λ = ``mom2_update_weight``

where h_i^FFN(L) is block L's FFN output as it is once the blocks below l are updated

with MEMIT's keys K and statistics C. The square root (where MEMIT divides by the number of layers left) is the
paper's; the attention δ only shapes the optimisation (the paper finds that updating MHSA weights does not pay).
The target lives in the FFN output space itself, so models that normalise it (Gemma) need no mapping.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from ...models.loading import LoadedModel
from ...requests import EditRequest
from ..base import register_editor
from .common import add_to_weight
from .keys import subject_keys_and_outputs
from .memit import MEMITEditor, MEMITHyperParams, context_average
from .values import optimise_site_values


@dataclass
class PMETHyperParams(MEMITHyperParams):
    """MEMIT's settings; ``clamp_norm_factor`` and ``v_weight_decay`` apply to each of the two δ's."""


@register_editor
class PMETEditor(MEMITEditor):
    name = "pmet"
    HParams = PMETHyperParams

    def _apply(self, loaded: LoadedModel, requests: Sequence[EditRequest]) -> list:
        res, layout = self.resources(loaded), loaded.layout
        layers = self.layers(loaded)
        attn_site, ffn_site = layout.attn_out.format(layers[-1]), layout.mlp_out.format(layers[-1])
        values = optimise_site_values(loaded, requests, [attn_site, ffn_site], res.prefixes,
                                      self.hparams.value_hparams(), replay_check=res.replay)
        z_ffn = values[ffn_site].targets  # (n, d); the attention target is not written
        for i, layer in enumerate(layers):
            # keys, and block L's FFN output, with the lower layers already updated
            keys, outs = subject_keys_and_outputs(loaded, requests, [layer], res.prefixes, output_modules=[ffn_site])
            k = context_average(keys[layer]).double().T  # (d_in, n)
            resid = (z_ffn - outs[ffn_site]) / math.sqrt(len(layers) - i)  # (n, d)
            add_to_weight(loaded, layer, self._layer_update(loaded, layer, k, resid.double().T).float())
        return []
