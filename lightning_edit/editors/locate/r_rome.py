"""r-ROME (Gupta et al. 2024, "Rebuilding ROME: Resolving Model Collapse during Sequential Model Editing").

ROME's update, with one key throughout. ROME's code optimises the value at the plain prompt and builds the rank-one
update's direction from k* (the key averaged over the plain prompt and the context prefixes), but its update solves
W' k = v* for the *plain* prompt's key k:

    ROME:    ΔW = (v* − W k) (C⁻¹k*)ᵀ / ((C⁻¹k*)ᵀ k)        (``rome.py``: ``values.initial[0]`` and ``key_plain``)

The paper traces ROME's "disabling edits" (the sudden collapse of a model over sequential edits) to these
unequal keys and uses k* in the update as well, so that the edited layer maps the key it was optimised for:

    r-ROME:  ΔW = (v* − W k*) (C⁻¹k*)ᵀ / ((C⁻¹k*)ᵀ k*)        so that  (W + ΔW) k* = v*

with v* = W k + δ, δ from ROME's value optimisation (EasyEdit's ``enable_random_prefix_keys``, its default).
Everything else (k*, C = E[k kᵀ] over text, the value loss) is ROME's.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ...models.loading import LoadedModel
from ...requests import EditRequest
from ..base import register_editor
from .common import add_to_weight
from .keys import subject_keys_and_outputs
from .rome import ROMEEditor, ROMEHyperParams
from .values import optimise_values


@dataclass
class RROMEHyperParams(ROMEHyperParams):
    """ROME's settings: r-ROME changes the update, not what it is computed from."""


@torch.no_grad()
def layer_output(loaded: LoadedModel, layer: int, key: torch.Tensor) -> torch.Tensor:
    """W k + b of the layer's ``mlp_out`` for one key (float64): what the layer outputs when it receives ``key``."""
    module = loaded.layout.mlp_out_module(loaded.model, layer)
    out = loaded.layout.linear_weight(module).double() @ key
    bias = getattr(module, "bias", None)
    return out + bias.double() if bias is not None else out


@register_editor
class RROMEEditor(ROMEEditor):
    name = "r-rome"
    HParams = RROMEHyperParams

    def _apply(self, loaded: LoadedModel, requests: Sequence[EditRequest]) -> list:
        res = self.resources(loaded)
        (layer,) = self.layers(loaded)
        site = loaded.layout.mlp_out.format(layer)
        keys, _ = subject_keys_and_outputs(loaded, requests, [layer], res.prefixes)
        k_star = keys[layer][0].double().mean(0)  # the mean over the plain prompt and the prefixes, as ROME's u
        u = res.derived["inv_mom2"][layer].to(k_star.device) @ k_star if self.hparams.mom2_adjustment else k_star
        u = u / u.norm()
        values = optimise_values(loaded, requests, site, res.prefixes, self.hparams.value_hparams(),
                                 replay_check=res.replay)
        v_star = values.targets[0].double()
        # the one change from ROME: W k* and (C⁻¹k*)ᵀ k*, where ROME has W k and (C⁻¹k*)ᵀ k at the plain prompt
        right = (v_star - layer_output(loaded, layer, k_star)) / torch.dot(k_star, u)
        add_to_weight(loaded, layer, torch.outer(right, u).float())
        return []
