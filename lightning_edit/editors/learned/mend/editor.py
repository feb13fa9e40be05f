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
import torch.nn.functional as F
from torch import nn

from ....errors import ConfigError
from ....models.loading import LoadedModel
from ....requests import EditRequest
from ..hypernetwork import (GradientFactors, LearnedEditor, LearnedHyperParams, as_stored, edit_batch,
                                gradient_factors)
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


class RunningNorm(nn.Module):
    """Per-dimension running mean/variance (batched Welford), updated only in training mode."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("m2", torch.zeros(dim))

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        n = x.shape[0]
        if n == 0:
            return
        batch_mean = x.mean(0)
        batch_m2 = ((x - batch_mean) ** 2).sum(0)
        total = self.count + n
        d = batch_mean - self.mean
        self.mean += d * (n / total).float()
        self.m2 += batch_m2 + d ** 2 * (self.count * n / total).float()
        self.count.copy_(total)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.update(x.detach())
        if self.count < 2:
            return x
        std = (self.m2 / (self.count - 1).float()).clamp(min=0).sqrt()
        return (x - self.mean) / (std + self.eps)


class LowRankResidual(nn.Module):
    """``x + act(scale_ℓ ⊙ B A x + shift_ℓ)``: identity at initialisation (B = 0), conditioned on the layer ℓ."""

    def __init__(self, dim: int, rank: int, n_modes: int, relu: bool):
        super().__init__()
        self.down = nn.Linear(dim, rank, bias=False)
        self.up = nn.Linear(rank, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        self.mode_scale = nn.Parameter(torch.ones(n_modes, dim))
        self.mode_shift = nn.Parameter(torch.zeros(n_modes, dim))
        self.relu = relu

    def forward(self, x: torch.Tensor, mode: int) -> torch.Tensor:
        h = self.up(self.down(x)) * self.mode_scale[mode] + self.mode_shift[mode]
        return x + (F.relu(h) if self.relu else h)


class MENDNetwork(nn.Module):
    """The gradient transform of every edited weight: one shared MLP per weight shape (``combine``
    mode of the paper: ``[u; δ]`` in, ``[ũ; δ̃]`` out), per-layer norms and step sizes."""

    def __init__(self, shapes: dict[str, tuple[int, int]], rank: int, n_hidden: int, edit_lr_init: float, eps: float):
        super().__init__()
        self.weight_names = list(shapes)
        self.shapes = dict(shapes)
        self.shape_keys = {n: f"{o}x{i}" for n, (o, i) in shapes.items()}
        keys = sorted(set(self.shape_keys.values()))
        modes: dict[str, int] = {}
        self.mode_of: dict[str, int] = {}
        for n in self.weight_names:
            k = self.shape_keys[n]
            self.mode_of[n] = modes.get(k, 0)
            modes[k] = self.mode_of[n] + 1
        self.mlps = nn.ModuleDict()
        for k in keys:
            out_dim, in_dim = (int(x) for x in k.split("x"))
            dim = in_dim + out_dim
            self.mlps[k] = nn.ModuleList([LowRankResidual(dim, min(rank, dim), modes[k], relu=j < n_hidden)
                                          for j in range(n_hidden + 1)])
        self.u_norms = nn.ModuleDict({self._key(n): RunningNorm(shapes[n][1], eps) for n in self.weight_names})
        self.delta_norms = nn.ModuleDict({self._key(n): RunningNorm(shapes[n][0], eps) for n in self.weight_names})
        self.edit_lrs = nn.Parameter(torch.full((len(self.weight_names),), float(edit_lr_init)))

    @staticmethod
    def _key(name: str) -> str:
        return name.replace(".", "_")

    def forward(self, factors: dict[str, GradientFactors]) -> dict[str, torch.Tensor]:
        """(out, in) weight updates ``-α_ℓ Σ_t δ̃_t ũ_tᵀ`` for every weight in ``factors`` (float32, on the
        network's device, whatever the model's dtype: the factors are cast before the network reads them)."""
        updates = {}
        for idx, name in enumerate(self.weight_names):
            f = factors[name]
            key = self._key(name)
            device = self.edit_lrs.device
            u = self.u_norms[key](f.u.to(device=device, dtype=torch.float32))
            d = self.delta_norms[key](f.delta.to(device=device, dtype=torch.float32))
            x = torch.cat([u, d], dim=-1)
            for layer in self.mlps[self.shape_keys[name]]:
                x = layer(x, self.mode_of[name])
            u_t, d_t = x.split([u.shape[-1], d.shape[-1]], dim=-1)
            updates[name] = -self.edit_lrs[idx] * (d_t.T @ u_t)
        return updates


def weight_shapes(loaded: LoadedModel, layers: Sequence[int]) -> dict[str, tuple[int, int]]:
    """(out, in) shape of each edited MLP output projection."""
    out = {}
    for i in layers:
        w = loaded.layout.linear_weight(loaded.layout.mlp_out_module(loaded.model, i))
        out[loaded.layout.weight_name(loaded.layout.mlp_out, i)] = tuple(w.shape)
    return out


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

    def compute_updates(self, loaded: LoadedModel, requests: Sequence[EditRequest]) -> dict[str, torch.Tensor]:
        network = self._network(loaded)
        factors = gradient_factors(loaded, self.layers(loaded), edit_batch(loaded, requests))
        missing = [n for n in network.weight_names if n not in factors]
        if missing:
            raise ConfigError(f"mend: the trained editor edits {missing[:3]}, which this config's 'layers' does not name")
        return network(factors)

    def _apply(self, loaded: LoadedModel, requests: Sequence[EditRequest]) -> list:
        with torch.no_grad():
            updates = self.compute_updates(loaded, requests)
            params = dict(loaded.model.named_parameters())
            for name, delta in updates.items():
                add_update(params[name], as_stored(loaded, delta))  # float32 sum, one rounding to the weight's dtype
        return []
