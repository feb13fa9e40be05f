"""The trained editor network's full float32 weights, wherever the strategy keeps them.

* plain / DDP: every process holds the whole network; its ``state_dict``.
* DeepSpeed ZeRO-2 with bf16: the module holds bf16 copies, the optimizer the fp32 master weights: those are
  assembled (``deepspeed.utils.safe_get_full_fp32_param``).
* DeepSpeed ZeRO-3: every process holds a shard of each parameter (the module's tensors are empty); the fp32
  master shards are gathered, or the parameters themselves inside ``deepspeed.zero.GatheredParameters`` for
  those the optimizer does not own.

Under DeepSpeed this is a collective: call it on every rank, in the same order, then save on rank 0. Without
DeepSpeed (or when it is not installed) nothing is imported and nothing is communicated. ``ExportAtTrainEnd``
calls it while the strategy still holds the network: once ``fit`` returns, Lightning has moved the module to the
CPU, where ZeRO's collectives have no backend (seen on an H200: "No backend type associated with device type cpu").
"""
from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Optional

import torch
from lightning.pytorch.callbacks import Callback
from torch import nn


def _uses_deepspeed(module: nn.Module) -> bool:
    return any(hasattr(p, "ds_id") or hasattr(p, "_hp_mapping") for p in module.parameters())


def _as_export(t: torch.Tensor) -> torch.Tensor:
    t = t.detach()
    return (t.float() if t.is_floating_point() else t).cpu().clone()


def full_state_dict(module: nn.Module, strategy: Optional[Any] = None) -> dict[str, torch.Tensor]:
    """``module``'s complete state dict on CPU, floating tensors as float32 (collective under DeepSpeed)."""
    if not _uses_deepspeed(module):
        return {k: _as_export(v) for k, v in module.state_dict().items()}
    import deepspeed
    from deepspeed.utils import safe_get_full_fp32_param

    params = dict(module.named_parameters())
    partitioned = [p for p in params.values() if hasattr(p, "ds_id")]
    masters: dict[str, torch.Tensor] = {}
    for name, p in params.items():  # same order on every rank
        if hasattr(p, "ds_id") and not hasattr(p, "_z3_optimizer"):
            continue  # a ZeRO-3 parameter the optimizer does not own (frozen): gathered below
        full = safe_get_full_fp32_param(p) if p.requires_grad else None
        if full is not None:
            masters[name] = full
    gather = deepspeed.zero.GatheredParameters(partitioned, modifier_rank=None) if partitioned else nullcontext()
    with gather:
        state = {k: _as_export(v) for k, v in module.state_dict().items()}
    for name, full in masters.items():
        if name in state:
            state[name] = _as_export(full).reshape(state[name].shape)
    return state


class ExportAtTrainEnd(Callback):
    """Keeps ``full_state_dict`` of the LightningModule's ``network`` as training ends, on every rank."""

    def __init__(self) -> None:
        self.state: Optional[dict[str, torch.Tensor]] = None

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self.state = full_state_dict(pl_module.network, trainer.strategy)
