"""AlphaEdit (Fang et al. 2025, "AlphaEdit: Null-Space Constrained Knowledge Editing for Language Models").

MEMIT's update projected onto the null space of the preserved keys: P = U₀U₀ᵀ from the eigenvectors of
C = E[k kᵀ] (keys over text) whose eigenvalues are below ``nullspace_threshold``, so that ΔW·k ≈ 0 for
ordinary keys. For a sequence of edits, the keys K_p of previous edits are kept (Σ K_p K_pᵀ, per layer)
and the update solves  ΔW = R Kᵀ P (P (K Kᵀ + K_p K_pᵀ) + α I)⁻¹  (the paper's eq. with α = ``L2``).

The accumulated keys belong to the edited model: each edit returns a patch holding its K Kᵀ, so undoing
the edit (``EditDelta.undo``) also removes its keys from the memory and re-applying adds them back.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ...errors import ConfigError
from ...models.loading import LoadedModel
from ..base import register_editor
from .common import ModelResources
from .memit import MEMITEditor, MEMITHyperParams


@dataclass
class AlphaEditHyperParams(MEMITHyperParams):
    nullspace_threshold: float = 2e-2  # eigenvalues of E[kkᵀ] below this span the preserved keys' null space
    L2: float = 10.0

    def validate(self) -> None:
        super().validate()
        if self.nullspace_threshold <= 0 or self.L2 < 0:
            raise ConfigError("fields 'nullspace_threshold' (>0) and 'L2' (≥0) are out of range")


class KeyMemory:
    """Σ K_p K_pᵀ of previous edits per layer, for one model (float64)."""

    def __init__(self) -> None:
        self.by_layer: dict[int, torch.Tensor] = {}

    def get(self, layer: int, dim: int, device) -> torch.Tensor:
        if layer not in self.by_layer:
            self.by_layer[layer] = torch.zeros(dim, dim, dtype=torch.float64, device=device)
        return self.by_layer[layer]


@dataclass
class KeyMemoryPatch:
    """One edit's contribution K Kᵀ to the key memory (attach adds it, detach removes it).

    Keeps the keys K (d_in, n), not K Kᵀ (d_in, d_in): a sequence of 100 edits kept 9 GB of outer products."""

    memory: KeyMemory
    keys: dict[int, torch.Tensor]
    changes_outputs: ClassVar[bool] = False  # the model computes as without it (evaluation may replay the weights alone)

    def attach(self, loaded: LoadedModel) -> None:
        for layer, k in self.keys.items():
            self.memory.get(layer, k.shape[0], k.device).add_(k @ k.T)

    def detach(self, loaded: LoadedModel) -> None:
        for layer, k in self.keys.items():
            self.memory.get(layer, k.shape[0], k.device).sub_(k @ k.T)


@register_editor
class AlphaEditEditor(MEMITEditor):
    name = "alphaedit"
    HParams = AlphaEditHyperParams

    def derive(self, loaded: LoadedModel, res: ModelResources) -> dict:
        projections, kept = {}, {}
        for layer, cov in res.mom2.items():
            eigvals, eigvecs = torch.linalg.eigh(cov.double())
            null = eigvecs[:, eigvals < self.hparams.nullspace_threshold]
            projections[layer] = null @ null.T
            kept[layer] = int(null.shape[1])
        return {"projection": projections, "null_dims": kept, "memory": KeyMemory()}

    def _layer_update(self, loaded: LoadedModel, layer: int, keys: torch.Tensor, resid: torch.Tensor) -> torch.Tensor:
        derived = self.resources(loaded).derived
        proj = derived["projection"][layer].to(keys.device)
        previous = derived["memory"].get(layer, keys.shape[0], keys.device)
        eye = torch.eye(keys.shape[0], dtype=torch.float64, device=keys.device)
        # the paper solves for ΔWᵀ (in, out): (P (K Kᵀ + K_p K_pᵀ) + α I) X = P K Rᵀ
        lhs = proj @ (keys @ keys.T + previous) + self.hparams.L2 * eye
        upd_in_out = torch.linalg.solve(lhs, proj @ keys @ resid.T)
        return upd_in_out.T

    def _after_edit(self, loaded: LoadedModel, keys: dict[int, torch.Tensor]) -> list:
        patch = KeyMemoryPatch(self.resources(loaded).derived["memory"], {layer: k.clone() for layer, k in keys.items()})
        patch.attach(loaded)
        return [patch]
