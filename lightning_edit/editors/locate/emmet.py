"""EMMET (Gupta et al. 2024, "A Unified Framework for Model Editing"): ROME's equality constraint for a batch.

ROME solves, for one key, min ‖ΔW K₀‖ subject to (W + ΔW) k = v. EMMET keeps the equality constraint for every key of
a batch, K = [k_1 … k_n] with targets V̂ = [v_1 … v_n] (MEMIT needs only a least-squares fit to them). The Lagrangian
solution, with C₀ = λ_C · E[k kᵀ] (keys over text, λ_C = ``mom2_update_weight``), is

    ΔW = (V̂ − W₀K) (Kᵀ C₀⁻¹ K)⁻¹ Kᵀ C₀⁻¹

and the paper regularises the n × n batch term, Kᵀ C₀⁻¹ K + λ I (λ = ``emmet_lambda``), which is singular when
two keys of a batch nearly coincide. (``update_norm_lambda`` adds a multiple of I to C₀, as the authors' code.)
Keys, targets and the spreading of each target over several layers (each takes (z − h) / layers left, from the
lowest up; Gemma's normalised MLP outputs mapped back) are MEMIT's: EMMET changes only the per-layer solve.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ...errors import ConfigError
from ...models.loading import LoadedModel
from ..base import register_editor
from .memit import MEMITEditor, MEMITHyperParams


@dataclass
class EMMETHyperParams(MEMITHyperParams):
    mom2_update_weight: float = 10000.0  # λ_C, scales E[k kᵀ] (the paper's files: 10 000 for GPT-2 XL, 100 000 GPT-J)
    emmet_lambda: float = 0.1  # λ added to Kᵀ C₀⁻¹ K, the batch term
    update_norm_lambda: float = 0.0  # added to C₀'s diagonal

    def validate(self) -> None:
        super().validate()
        if self.mom2_update_weight <= 0:
            raise ConfigError("field 'mom2_update_weight' of EMMET must be > 0: C₀ = mom2_update_weight · E[k kᵀ] is "
                              "inverted")
        if self.emmet_lambda < 0 or self.update_norm_lambda < 0:
            raise ConfigError("fields 'emmet_lambda' and 'update_norm_lambda' must be ≥ 0")


@register_editor
class EMMETEditor(MEMITEditor):
    name = "emmet"
    HParams = EMMETHyperParams

    def _layer_update(self, loaded: LoadedModel, layer: int, keys: torch.Tensor, resid: torch.Tensor) -> torch.Tensor:
        """ΔW = R (Kᵀ C₀⁻¹ K + λ I)⁻¹ Kᵀ C₀⁻¹ from keys K (d_in, n) and residuals R = V̂ − W₀K (d_out, n), float64."""
        hp = self.hparams
        mom2 = self.resources(loaded).mom2[layer].to(keys.device).double()
        eye_in = torch.eye(mom2.shape[0], dtype=torch.float64, device=keys.device)
        c0 = hp.mom2_update_weight * mom2 + hp.update_norm_lambda * eye_in
        c0_inv_k = torch.linalg.solve(c0, keys)  # C₀⁻¹ K (d_in, n); its transpose is Kᵀ C₀⁻¹ (C₀ is symmetric)
        batch_term = keys.T @ c0_inv_k + hp.emmet_lambda * torch.eye(keys.shape[1], dtype=torch.float64,
                                                                     device=keys.device)
        return resid @ torch.linalg.solve(batch_term, c0_inv_k.T)
