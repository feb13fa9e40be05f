"""WISE's side memory: a copy of one FFN projection that edits train (each edit its own random subset of the
copy's entries, in shards later merged with TIES), and a router that sends an input to it when its activation on
the copy differs enough from the main projection's."""
from __future__ import annotations

import logging
from typing import Iterator, Optional, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ...errors import CheckpointError
from ...models.loading import LoadedModel
from ...models.patches import register_patch
from ...models.placement import materialised
from .memory import HookedMemory, saved_module

log = logging.getLogger(__name__)


def ties_merge(base: torch.Tensor, weights: Sequence[torch.Tensor], density: float) -> torch.Tensor:
    """TIES merging (Yadav et al. 2023) of ``weights`` around ``base``: trim, elect sign, disjoint mean."""
    deltas = torch.stack([w - base for w in weights])  # (m, ...)
    flat = deltas.reshape(len(weights), -1)
    keep = max(1, int(round(density * flat.shape[1])))
    threshold = flat.abs().kthvalue(flat.shape[1] - keep + 1, dim=1, keepdim=True).values
    trimmed = torch.where(flat.abs() >= threshold, flat, torch.zeros_like(flat))
    sign = torch.sign(trimmed.sum(dim=0))
    agree = (torch.sign(trimmed) == sign) & (trimmed != 0)
    merged = (trimmed * agree).sum(dim=0) / agree.sum(dim=0).clamp(min=1)
    return base + merged.view(base.shape)


@register_patch
class SideMemory(HookedMemory):
    """Side memories of one output projection: ``merged`` (or None), closed ``shards`` and the ``current``
    shard, each with the lowest activation score of its edits (``*_min_act``). ``main`` (the projection's own
    weight) is not saved: it is read from the model the memory is loaded onto."""

    kind = "wise"
    key = "wise"

    def __init__(self, signature: dict, module_name: str, main_weight: torch.Tensor, bias: Optional[torch.Tensor],
                 attend_decoder: bool):
        super().__init__(signature)
        self.module_name = module_name
        self.main = main_weight.detach().clone(memory_format=torch.contiguous_format)  # (out, in), the frozen reference
        self.bias = None if bias is None else bias.detach().clone()
        self.attend_decoder = attend_decoder
        self.values = {
            "current": self.main, "current_edits": 0, "current_min_act": float("inf"), "current_mask": None,
            "shards": (), "shard_min_acts": (), "merged": None, "merged_min_act": float("inf"),
            "shard_count": 0, "edits": 0,
        }
        self.training_weight: Optional[torch.Tensor] = None
        self.last_input: Optional[torch.Tensor] = None  # the projection's input in the last training pass
        self._valid: Optional[torch.Tensor] = None  # real-token mask of the running forward, read by the router

    @classmethod
    def empty_for(cls, loaded: LoadedModel, config: dict) -> "SideMemory":
        module_name = saved_module(loaded, config, cls.kind)
        module = loaded.model.get_submodule(module_name)
        with materialised(loaded.model, [f"{module_name}.weight"]):  # the main weight, even if --device-map offloads it
            return cls(dict(config["signature"]), module_name, loaded.layout.linear_weight(module),
                       getattr(module, "bias", None), loaded.layout.is_encoder_decoder)

    def check_values(self, template: dict) -> None:
        super().check_values(template)  # current: the projection's shape and dtype
        v, shape = self.values, tuple(self.main.shape)
        for i, shard in enumerate(v["shards"]):
            self.expect(f"shards/{i}", shard, shape, self.main.dtype)
        if v["merged"] is not None:
            self.expect("merged", v["merged"], shape, self.main.dtype)
        if v["current_mask"] is not None:
            self.expect("current_mask", v["current_mask"], shape, torch.bool)
        if len(v["shard_min_acts"]) != len(v["shards"]):
            raise CheckpointError(f"wise: {len(v['shards'])} saved shards but {len(v['shard_min_acts'])} activation scores")

    def register_hooks(self, model: nn.Module) -> Iterator:
        yield model.register_forward_pre_hook(self._capture_mask, with_kwargs=True)
        yield model.register_forward_hook(self._release_mask)
        yield model.get_submodule(self.module_name).register_forward_hook(self._hook)

    def _capture_mask(self, module, args, kwargs):
        name = "decoder_attention_mask" if self.attend_decoder else "attention_mask"
        self._valid = kwargs.get(name)

    def _release_mask(self, module, args, output):
        self._valid = None

    def side_output(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return F.linear(x, weight.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    def memories(self) -> list[tuple[torch.Tensor, float]]:
        v = self.values
        out = []
        if v["merged"] is not None:
            out.append((v["merged"], v["merged_min_act"]))
        out.extend(zip(v["shards"], v["shard_min_acts"]))
        if v["current_edits"]:
            out.append((v["current"], v["current_min_act"]))
        return out

    def scores(self, x: torch.Tensor, weight: torch.Tensor, valid: Optional[torch.Tensor]) -> torch.Tensor:
        """Activation score of each row: mean over its real tokens of ||x (W' - W)ᵀ||."""
        per_token = F.linear(x, (weight - self.main).to(x.dtype)).norm(dim=-1)  # (B, T)
        if valid is None:
            return per_token.mean(dim=-1)
        valid = valid.to(per_token.dtype)
        return (per_token * valid).sum(-1) / valid.sum(-1).clamp(min=1)

    def _row_mask(self, x: torch.Tensor) -> Optional[torch.Tensor]:
        mask = self._valid
        if mask is None or mask.dim() != 2 or mask.shape[0] != x.shape[0] or mask.shape[1] < x.shape[1]:
            return None
        return mask[:, -x.shape[1]:]  # with a cache, the mask covers past tokens too

    def _hook(self, module, args, output):
        x = args[0]
        if self.training_weight is not None:
            self.last_input = x
            return self.side_output(x, self.training_weight)
        memories = self.memories()
        if not memories:
            return output
        valid = self._row_mask(x)
        best_score = torch.full((x.shape[0],), -1.0, device=x.device)
        best = torch.full((x.shape[0],), -1, dtype=torch.long, device=x.device)
        with torch.no_grad():
            for i, (weight, min_act) in enumerate(memories):
                score = self.scores(x, weight, valid).float()
                better = (score > min_act * self.signature["act_ratio"]) & (score > best_score)
                best_score = torch.where(better, score, best_score)
                best = torch.where(better, torch.full_like(best, i), best)
        if not bool((best >= 0).any()):
            return output
        out = output
        for i, (weight, _) in enumerate(memories):
            rows = best == i
            if bool(rows.any()):
                out = torch.where(rows[:, None, None], self.side_output(x, weight).to(out.dtype), out)
        return out
