"""AlphaEdit (Fang et al. 2025, "AlphaEdit: Null-Space Constrained Knowledge Editing for Language Models").

MEMIT's update projected onto the null space of the preserved keys: P = U₀U₀ᵀ from the eigenvectors of
C = E[k kᵀ] (keys over text) whose eigenvalues are below ``nullspace_threshold``, so that ΔW·k ≈ 0 for
ordinary keys. For a sequence of edits, the keys K_p of previous edits are kept (Σ K_p K_pᵀ, per layer)
and the update solves  ΔW = R Kᵀ P (P (K Kᵀ + K_p K_pᵀ) + α I)⁻¹  (the paper's eq. with α = ``L2``).

The accumulated keys belong to the edited model: they are a patch in its registry (``KeyMemory``, kind
``alphaedit-keys``) that every AlphaEdit editor on the model reads and ``--save`` keeps. Each edit adds its keys
as an entry (``loaded.patches.change``), so undoing the edit (``EditDelta.undo``) also removes its keys from the
memory and re-applying adds them back.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ...errors import CheckpointError, ConfigError
from ...models.loaded import LoadedModel
from ...models.patches import EntryPatch, PatchChange, register_patch
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


@register_patch
class KeyMemory(EntryPatch):
    """Σ K_p K_pᵀ of the edits made on one model, per layer (float64), in the model's patch registry. Its entries
    are the edits' keys K (d_in, n) per layer, not K Kᵀ (d_in, d_in): a sequence of 100 edits kept 9 GB of outer
    products. Saved as the sums."""

    kind = "alphaedit-keys"
    key = "alphaedit-keys"
    changes_outputs = False  # the model computes as without it (evaluation may replay the weights alone)

    def __init__(self) -> None:
        self.by_layer: dict[int, torch.Tensor] = {}
        self._entries: list[dict[int, torch.Tensor]] = []
        self._saved = False  # rebuilt from a saved file: sums that no change of this session takes out

    def previous(self, layer: int, dim: int, device: torch.device) -> torch.Tensor:
        """Σ K_p K_pᵀ at ``layer`` (zeros before any edit there)."""
        found = self.by_layer.get(layer)
        return found.to(device) if found is not None else torch.zeros(dim, dim, dtype=torch.float64, device=device)

    def _sum(self, layer: int, k: torch.Tensor) -> torch.Tensor:
        if layer not in self.by_layer:
            self.by_layer[layer] = torch.zeros(k.shape[0], k.shape[0], dtype=torch.float64, device=k.device)
        return self.by_layer[layer]

    # ---- entries (EntryPatch) ------------------------------------------------------------------------
    def add_entry(self, entry: dict[int, torch.Tensor]) -> None:
        for layer, k in entry.items():
            self._sum(layer, k).add_(k @ k.T)
        self._entries.append(entry)

    def remove_entry(self, entry: dict[int, torch.Tensor]) -> None:
        for layer, k in entry.items():
            self._sum(layer, k).sub_(k @ k.T)
        self._entries = [e for e in self._entries if e is not entry]

    def has_entry(self, entry: object) -> bool:
        return any(e is entry for e in self._entries)

    @property
    def empty(self) -> bool:
        return not self._entries and not self._saved

    # ---- declared state (Patch) ----------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        return {"layers": sorted(self.by_layer)}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {f"layer/{layer}": t for layer, t in sorted(self.by_layer.items())}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        current = self.state_dict()
        wrong = sorted(n for n in set(state) | set(current) if n not in state or n not in current
                       or state[n].shape != current[n].shape or state[n].dtype != current[n].dtype)
        if wrong:
            raise CheckpointError(f"alphaedit: saved key sums {wrong[:3]} are missing, extra or of another shape or dtype")
        self.by_layer = {int(n.split("/", 1)[1]): t for n, t in state.items()}

    @classmethod
    def from_saved(cls, config: dict, state: dict[str, torch.Tensor], loaded: LoadedModel) -> "KeyMemory":
        layers, n = config.get("layers"), loaded.layout.num_layers(loaded.model)
        if not isinstance(layers, list) or not all(isinstance(x, int) and 0 <= x < n for x in layers):
            raise CheckpointError(f"alphaedit: saved key memory layers {layers!r} are not blocks of model {loaded.name!r}")
        if set(state) != {f"layer/{x}" for x in layers}:
            raise CheckpointError(f"alphaedit: saved key sums {sorted(state)[:3]} do not match the layers {layers}")
        memory = cls()
        for layer in layers:
            dim = loaded.layout.linear_weight(loaded.layout.mlp_out_module(loaded.model, layer)).shape[1]
            tensor = state[f"layer/{layer}"]
            if tensor.shape != (dim, dim) or tensor.dtype != torch.float64:
                raise CheckpointError(f"alphaedit: saved key sum of layer {layer} is {tensor.dtype} {list(tensor.shape)}; "
                                      f"model {loaded.name!r} needs float64 {[dim, dim]}")
            memory.by_layer[layer] = tensor
        memory._saved = True
        return memory


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
        return {"projection": projections, "null_dims": kept}

    def _layer_update(self, loaded: LoadedModel, layer: int, keys: torch.Tensor, resid: torch.Tensor) -> torch.Tensor:
        derived = self.resources(loaded).derived
        proj = derived["projection"][layer].to(keys.device)
        memory = loaded.patches.get(KeyMemory.key)  # the keys of every AlphaEdit edit on this model, by any editor
        previous = (memory if isinstance(memory, KeyMemory) else KeyMemory()).previous(layer, keys.shape[0], keys.device)
        eye = torch.eye(keys.shape[0], dtype=torch.float64, device=keys.device)
        # the paper solves for ΔWᵀ (in, out): (P (K Kᵀ + K_p K_pᵀ) + α I) X = P K Rᵀ
        lhs = proj @ (keys @ keys.T + previous) + self.hparams.L2 * eye
        upd_in_out = torch.linalg.solve(lhs, proj @ keys @ resid.T)
        return upd_in_out.T

    def _after_edit(self, loaded: LoadedModel, keys: dict[int, torch.Tensor]) -> list[PatchChange]:
        return [loaded.patches.change(KeyMemory, {layer: k.clone() for layer, k in keys.items()})]
