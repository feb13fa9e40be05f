"""MALMEN (Tan et al., ICLR 2024, "Massive Editing for Large Language Models via Meta Learning").

MEND's hypernetwork, applied to many edits at once. For each edited linear layer ``W`` and each token ``i`` of every
edit (the tokens where a target token is predicted), the layer input is a key ``u_i`` and the gradient of the edit
loss at its output is ``∇_v L_i``. The hypernetwork (MEND's: a shared low-rank residual MLP conditioned on the layer,
over running-normalised ``[u_i; ∇_v L_i]``) gives ``(ũ_i, ∇̃_i)``, and from them the value difference
``d_i = −η_ℓ (ũ_iᵀ u_i) ∇̃_i`` — the change MEND's rank-one shift ``−η_ℓ ∇̃_i ũ_iᵀ`` makes at its own key.

Where MEND adds the edits' rank-one shifts, MALMEN aggregates them by least squares (Section 4.1, "parameter shift
aggregation"): one shift ``S`` that maps every key to its value difference as well as possible,

    S* = argmin_S Σ_i ‖S u_i − d_i‖² + λ_ℓ ‖S‖²_F = D Uᵀ (U Uᵀ + λ_ℓ I)⁻¹,

``U = [u_1 … u_N]``, ``D = [d_1 … d_N]`` (the normal equation), with a learnt ``λ_ℓ`` per layer, so that the shifts
of many edits do not cancel or pile up on shared keys. ``W ← W + S*``. Training (``module.py``) separates the
language model's backward from the hypernetwork's.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar, Sequence

import torch
from torch import nn

from ....errors import ConfigError
from ....models.loading import LoadedModel
from ....requests import EditRequest
from ...base import register_editor
from ..hypernetwork import (KEY_POSITIONS, FactorTransform, GradientFactors, LearnedHyperParams, edit_batch,
                            gradient_factors, mlp_out_shapes)
from ..mend.editor import MENDEditor


@dataclass
class MALMENHyperParams(LearnedHyperParams):
    layers: list[int] = field(default_factory=lambda: [-3, -2, -1])  # MLP output projections edited
    rank: int = 512  # bottleneck of the hypernetwork's blocks (the authors: 1920 on GPT-J)
    n_blocks: int = 2  # low-rank residual ReLU blocks (the authors' n_blocks)
    edit_lr_init: float = 1e-4  # initial per-layer step size η_ℓ (learnt; the authors' lr)
    lambda_init: float = 1.0  # initial per-layer ridge λ_ℓ of the normal equation (learnt as log λ_ℓ)
    key_positions: str = "target"  # target: keys where a target token is predicted (the authors' token: ans); all
    norm_eps: float = 1e-6
    ARCHITECTURE: ClassVar[tuple[str, ...]] = ("layers", "rank", "n_blocks", "edit_lr_init", "lambda_init",
                                               "key_positions", "norm_eps")

    def validate(self) -> None:
        if not self.layers:
            raise ConfigError("field 'layers' is empty; name at least one block whose MLP output projection "
                              "MALMEN edits")
        if self.rank < 1 or self.n_blocks < 1:
            raise ConfigError("field 'rank' and 'n_blocks' must be ≥ 1")
        if self.edit_lr_init <= 0:
            raise ConfigError("field 'edit_lr_init' must be positive")
        if not 0 < self.lambda_init < 1e6:
            raise ConfigError(f"field 'lambda_init' must be in (0, 1e6), got {self.lambda_init}; e.g. 1.0")
        if self.key_positions not in KEY_POSITIONS:
            raise ConfigError(f"field 'key_positions' is {self.key_positions!r}; choose one of "
                              f"{', '.join(KEY_POSITIONS)}")


def normal_equation_shift(keys: torch.Tensor, value_diffs: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """``S = D Uᵀ (U Uᵀ + λI)⁻¹`` (out, in): the ridge least-squares shift with ``S u_i ≈ d_i`` for every row of
    ``keys`` (N, in) = ``Uᵀ`` and ``value_diffs`` (N, out) = ``Dᵀ``. Differentiable in both and in ``λ``."""
    u, d = keys.T.double(), value_diffs.T.double()  # columns are keys / value differences, as the paper writes them
    n_in, n_keys = u.shape
    if n_keys >= n_in:
        gram = u @ u.T + lam.double() * torch.eye(n_in, dtype=u.dtype, device=u.device)
        shift = torch.linalg.solve(gram, u @ d.T).T  # (U Uᵀ + λI) is symmetric: S = ((U Uᵀ + λI)⁻¹ U Dᵀ)ᵀ
    else:  # fewer keys than inputs: the same S by the push-through identity, D (Uᵀ U + λI)⁻¹ Uᵀ (an N × N solve)
        gram = u.T @ u + lam.double() * torch.eye(n_keys, dtype=u.dtype, device=u.device)
        shift = torch.linalg.solve(gram, d.T).T @ u.T
    return shift.float()


class MALMENNetwork(FactorTransform):
    """MEND's factor transform (``n_blocks`` ReLU blocks, per-layer norms and step sizes ``η_ℓ``) plus a learnt
    ridge ``λ_ℓ = exp(log_lambdas[ℓ])`` per edited weight."""

    def __init__(self, shapes: dict[str, tuple[int, int]], rank: int, n_blocks: int, edit_lr_init: float,
                 lambda_init: float, eps: float):
        super().__init__(shapes, rank, n_blocks=n_blocks, n_relu=n_blocks, edit_lr_init=edit_lr_init, eps=eps)
        self.log_lambdas = nn.Parameter(torch.full((len(self.weight_names),), math.log(lambda_init)))

    def value_differences(self, name: str, factors: GradientFactors) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys ``u_i`` (N, in) and value differences ``d_i = −η_ℓ (ũ_iᵀ u_i) ∇̃_i`` (N, out) of weight ``name``."""
        u_tilde, grad_tilde = self.transform(name, factors)
        u = factors.u.to(device=u_tilde.device, dtype=torch.float32)
        return u, -self.step_size(name) * (u_tilde * u).sum(-1, keepdim=True) * grad_tilde

    def forward(self, factors: dict[str, GradientFactors]) -> dict[str, torch.Tensor]:
        """The (out, in) shift ``S*_ℓ = D Uᵀ (U Uᵀ + λ_ℓ I)⁻¹`` of every edited weight, over all edits' keys at once."""
        shifts = {}
        for idx, name in enumerate(self.weight_names):
            keys, value_diffs = self.value_differences(name, factors[name])
            shifts[name] = normal_equation_shift(keys, value_diffs, self.log_lambdas[idx].exp())
        return shifts


@register_editor
class MALMENEditor(MENDEditor):
    """MEND's contract (declared weights, batched edits, bit-exact undo) with MALMEN's network and keys."""

    name = "malmen"
    HParams = MALMENHyperParams
    supports_batch = True  # a batch is one least-squares solve over all its edits' keys: what MALMEN is for

    def build_network(self, loaded: LoadedModel) -> MALMENNetwork:
        hp = self.hparams
        return MALMENNetwork(mlp_out_shapes(loaded, self.layers(loaded)), hp.rank, hp.n_blocks, hp.edit_lr_init,
                             hp.lambda_init, hp.norm_eps)

    def factors(self, loaded: LoadedModel, requests: Sequence[EditRequest]) -> dict[str, GradientFactors]:
        return gradient_factors(loaded, self.layers(loaded), edit_batch(loaded, requests), self.hparams.key_positions)
