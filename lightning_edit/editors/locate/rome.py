"""ROME (Meng et al. 2022, "Locating and Editing Factual Associations in GPT"): a rank-one update of one
MLP output projection.

Key k*: the input of ``layout.mlp_out`` at the subject's last token, averaged over short generated
context prefixes. Value v*: that layer's output at the same position plus a vector δ optimised so the
target becomes likely (ROME's compute_v: KL term on "{subject} is a", weight decay, norm clamp). The
update W ← W + (v* − W k) (C⁻¹k*)ᵀ / ((C⁻¹k*)ᵀ k) uses the inverse second moment C = E[k kᵀ] of keys
over text (``mom2_adjustment``, on by default as in the paper). Several requests are applied one after
another (``supports_batch = False``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ...errors import ConfigError
from ...models.loading import LoadedModel
from ...requests import EditRequest
from ..base import register_editor
from .common import LocateEditor, LocateHyperParams, ModelResources, add_to_weight
from .keys import subject_keys_and_outputs
from .values import optimise_values


@dataclass
class ROMEHyperParams(LocateHyperParams):
    mom2_adjustment: bool = True

    def validate(self) -> None:
        super().validate()
        if len(self.layers) != 1:
            raise ConfigError(f"field 'layers' of ROME must name exactly one block, got {self.layers}; use MEMIT for several")


@register_editor
class ROMEEditor(LocateEditor):
    name = "rome"
    HParams = ROMEHyperParams
    supports_batch = False

    def needs_mom2(self) -> bool:
        return self.hparams.mom2_adjustment

    def derive(self, loaded: LoadedModel, res: ModelResources) -> dict:
        if not self.hparams.mom2_adjustment:
            return {}
        # C⁻¹ once per model (ROME caches the inverse too); float64 for a well-behaved inverse.
        return {"inv_mom2": {layer: torch.linalg.inv(m.double()) for layer, m in res.mom2.items()}}

    def _apply(self, loaded: LoadedModel, requests: Sequence[EditRequest]) -> list:
        res = self.resources(loaded)
        (layer,) = self.layers(loaded)
        site = loaded.layout.mlp_out.format(layer)
        keys, _ = subject_keys_and_outputs(loaded, requests, [layer], res.prefixes)
        k_all = keys[layer][0].double()  # (n_prefixes, d_in)
        key_avg, key_plain = k_all.mean(0), k_all[0]
        left = res.derived["inv_mom2"][layer].to(key_avg.device) @ key_avg if self.hparams.mom2_adjustment else key_avg
        left = left / left.norm()
        values = optimise_values(loaded, requests, site, res.prefixes, self.hparams.value_hparams(),
                                 replay_check=res.replay)
        # (v* − W k) where W k is the layer's current output at the plain prompt (``values.initial``).
        right = (values.targets[0] - values.initial[0]).double() / torch.dot(key_plain, left)
        add_to_weight(loaded, layer, torch.outer(right, left).float())
        return []
