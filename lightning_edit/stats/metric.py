"""E[k kᵀ] as a torchmetrics ``Metric``: per-process float64 sums on the device, summed across processes once
at ``compute()`` (``dist_reduce_fx="sum"``), so any number of processes gives the statistics of one."""
from __future__ import annotations

import torch
from torchmetrics import Metric


class SecondMomentMetric(Metric):
    """Running ``Σ k kᵀ`` and token count of (N, dim) key batches; ``compute()`` gives ``(E[k kᵀ] as float32, count)``
    from one all-reduce of both states.

    Each batch's product is taken in float32 (fast on any device) and added to a float64 sum that stays on the
    metric's device."""

    full_state_update = False
    higher_is_better = None
    is_differentiable = False

    def __init__(self, dim: int, **kwargs):
        super().__init__(**kwargs)
        self.dim = int(dim)
        self.add_state("sum", default=torch.zeros(self.dim, self.dim, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, keys: torch.Tensor) -> None:
        keys = keys.reshape(-1, self.dim).float()
        self.sum += (keys.T @ keys).to(self.sum.dtype)
        self.count += keys.shape[0]

    def compute(self) -> tuple[torch.Tensor, torch.Tensor]:
        return (self.sum / self.count.clamp(min=1)).float(), self.count.clone()
