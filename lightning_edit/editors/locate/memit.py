"""MEMIT (Meng et al. 2023, "Mass-Editing Memory in a Transformer"): many facts in one batch.

For each request a target z for the residual stream (the output of the last edited block, at the
subject's last token) is optimised as in ROME. The change z − h is then spread over the edited layers
from the lowest up: at layer l, with keys K (mlp_out inputs at the subject: ½ the plain prompt's + ½ the
mean over the context prefixes, as MEMIT's code averages per context type; one column per request) and
residual R = (z − h_current) / (layers left), ΔW = R Kᵀ (λ C + K Kᵀ)⁻¹, where C = E[k kᵀ] over text and λ = ``mom2_update_weight``.
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
        values = optimise_values(loaded, requests, z_site, res.prefixes, self.hparams.value_hparams())
        all_keys: dict[int, torch.Tensor] = {}
        for i, layer in enumerate(layers):
            # keys and current z with the lower layers already updated
            keys, outs = subject_keys_and_outputs(loaded, requests, [layer], res.prefixes, output_modules=[z_site])
            k = context_average(keys[layer]).double().T  # (d_in, n)
            resid = (values.targets - outs[z_site]).double().T / (len(layers) - i)  # (d_out, n)
            add_to_weight(loaded, layer, self._layer_update(loaded, layer, k, resid).float())
            all_keys[layer] = k
        return self._after_edit(loaded, all_keys)

    def _after_edit(self, loaded: LoadedModel, keys: dict[int, torch.Tensor]) -> list:
        return []
