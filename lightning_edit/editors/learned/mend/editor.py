"""MEND (Mitchell et al. 2022, "Fast Model Editing at Scale").

The fine-tuning gradient of a linear weight on one edit is a sum of rank-one terms ``δ_t u_tᵀ`` (layer
input ``u``, gradient of the layer output ``δ``, one per token). MEND's editor network maps each pair
``(u_t, δ_t)`` (normalised per layer by running statistics) through a shared low-rank residual MLP
conditioned on the layer (per-layer scale and shift), to ``(ũ_t, δ̃_t)``; the update is
``ΔW = -α_ℓ Σ_t δ̃_t ũ_tᵀ`` with a learnt step size ``α_ℓ`` per layer. It is trained (``train.py mend``)
with ``c_edit · L_edit + c_loc · L_loc``: the edited model's NLL of the new target on the edit prompt
and its rephrases, and the KL from the unedited model on unrelated (locality) prompts.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Sequence

import torch

from ....errors import ConfigError
from ....models.loading import LoadedModel
from ....requests import EditRequest
from ..hypernetwork import (FactorTransform, GradientFactors, LearnedEditor, LearnedHyperParams, LowRankResidual,  # noqa: F401
                            RunningNorm, as_stored, edit_batch, gradient_factors, mlp_out_shapes)
from ...base import add_update, register_editor
from ....models.ops import resolve_layers


@dataclass
class MENDHyperParams(LearnedHyperParams):
    layers: list[int] = field(default_factory=lambda: [-3, -2, -1])  # MLP output projections edited
    rank: int = 512  # bottleneck of the editor MLP
    n_hidden: int = 1  # hidden (ReLU) low-rank layers before the output layer
    edit_lr_init: float = 1e-4  # initial per-layer step size α_ℓ (learnt)
    norm_eps: float = 1e-6
    ARCHITECTURE: ClassVar[tuple[str, ...]] = ("layers", "rank", "n_hidden", "edit_lr_init", "norm_eps")

    def validate(self) -> None:
        if not self.layers:
            raise ConfigError("field 'layers' is empty; name at least one block whose MLP output projection MEND edits")
        if self.rank < 1 or self.n_hidden < 0:
            raise ConfigError("field 'rank' must be ≥ 1 and 'n_hidden' ≥ 0")
        if self.edit_lr_init <= 0:
            raise ConfigError("field 'edit_lr_init' must be positive")


class MENDNetwork(FactorTransform):
    """The gradient transform of every edited weight (``combine`` mode of the paper: ``[u; δ]`` in, ``[ũ; δ̃]`` out):
    ``n_hidden`` ReLU blocks then a linear one, per-layer norms and step sizes (``hypernetwork.FactorTransform``)."""

    def __init__(self, shapes: dict[str, tuple[int, int]], rank: int, n_hidden: int, edit_lr_init: float, eps: float):
        super().__init__(shapes, rank, n_blocks=n_hidden + 1, n_relu=n_hidden, edit_lr_init=edit_lr_init, eps=eps)

    def forward(self, factors: dict[str, GradientFactors]) -> dict[str, torch.Tensor]:
        """(out, in) weight updates ``ΔW_ℓ = -α_ℓ Σ_t δ̃_t ũ_tᵀ`` for every weight in ``factors``."""
        updates = {}
        for name in self.weight_names:
            u_t, d_t = self.transform(name, factors[name])
            updates[name] = -self.step_size(name) * (d_t.T @ u_t)
        return updates


weight_shapes = mlp_out_shapes  # (out, in) shape of each edited MLP output projection


@register_editor
class MENDEditor(LearnedEditor):
    name = "mend"
    HParams = MENDHyperParams
    supports_batch = True  # a batch's gradient is the sum of its requests' rank-one factors

    def layers(self, loaded: LoadedModel) -> list[int]:
        return resolve_layers(self.hparams.layers, loaded.layout.num_layers(loaded.model))

    def build_network(self, loaded: LoadedModel) -> MENDNetwork:
        hp = self.hparams
        return MENDNetwork(weight_shapes(loaded, self.layers(loaded)), hp.rank, hp.n_hidden, hp.edit_lr_init, hp.norm_eps)

    def touched_parameters(self, loaded: LoadedModel, requests: Sequence[EditRequest]) -> list[str]:
        return list(weight_shapes(loaded, self.layers(loaded)))

    def factors(self, loaded: LoadedModel, requests: Sequence[EditRequest]) -> dict[str, GradientFactors]:
        """The edit loss's ``(u_t, δ_t)`` at every real token of the requests, together (a batch sums them)."""
        return gradient_factors(loaded, self.layers(loaded), edit_batch(loaded, requests))

    def compute_updates(self, loaded: LoadedModel, requests: Sequence[EditRequest]) -> dict[str, torch.Tensor]:
        network = self._network(loaded)
        factors = self.factors(loaded, requests)
        missing = [n for n in network.weight_names if n not in factors]
        if missing:
            raise ConfigError(f"{self.name}: the trained editor edits {missing[:3]}, which this config's 'layers' does "
                              "not name")
        return network(factors)

    def _apply(self, loaded: LoadedModel, requests: Sequence[EditRequest]) -> list:
        with torch.no_grad():
            updates = self.compute_updates(loaded, requests)
            params = dict(loaded.model.named_parameters())
            for name, delta in updates.items():
                add_update(params[name], as_stored(loaded, delta))  # float32 sum, one rounding to the weight's dtype
        return []
