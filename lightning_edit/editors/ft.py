"""Fine-tuning baselines.

- FT-L (Meng et al. 2022's constrained fine-tuning): tune one MLP output projection so that the prompt's
  last position predicts the target tokens, keeping every weight within an L∞ ball around its original.
- FT-M (EasyEdit): the same layer tuned with teacher-forced cross-entropy on the target tokens only
  (prompt positions masked out).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch

from ..errors import ConfigError
from ..models.loading import LoadedModel
from ..models.teacher_forcing import build_target_batch
from ..requests import EditRequest
from .base import Editor, HyperParams, register_editor
from ..models.ops import resolve_layers
from ..models.tail import TailRunner

OBJECTIVES = ("target_tokens", "prompt_last")


@dataclass
class FTHyperParams(HyperParams):
    layers: list[int] = field(default_factory=lambda: [-8])  # negative: counted from the last block
    objective: str = "target_tokens"
    lr: float = 5e-4
    num_steps: int = 25
    norm_constraint: Optional[float] = None  # L∞ bound on the change of each tuned weight
    weight_decay: float = 0.0
    early_stop_loss: float = 1e-2  # stop once the mean target NLL falls below this

    def validate(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"field 'objective' must be one of {OBJECTIVES}, got {self.objective!r}")
        if not self.layers:
            raise ConfigError("field 'layers' is empty; name at least one block to tune")
        if self.num_steps < 1 or self.lr <= 0:
            raise ConfigError("fields 'num_steps' (≥1) and 'lr' (>0) must be positive")
        if self.norm_constraint is not None and self.norm_constraint <= 0:
            raise ConfigError("field 'norm_constraint' must be positive or null")


@dataclass
class FTLHyperParams(FTHyperParams):
    objective: str = "prompt_last"
    norm_constraint: Optional[float] = 5e-4


@dataclass
class FTMHyperParams(FTHyperParams):
    objective: str = "target_tokens"


class FineTuneEditor(Editor):
    HParams = FTHyperParams

    def touched_parameters(self, loaded: LoadedModel, requests: Sequence[EditRequest]) -> list[str]:
        n = loaded.layout.num_layers(loaded.model)
        return [loaded.layout.weight_name(loaded.layout.mlp_out, i) for i in resolve_layers(self.hparams.layers, n)]

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor, per_request: list[int]) -> torch.Tensor:
        """``logits``/``labels``: the positions that predict target tokens, flattened request by request
        (``TailRunner``); ``per_request``: how many of them each request has."""
        logp = torch.log_softmax(logits.float(), dim=-1)
        if self.hparams.objective == "target_tokens":
            return -logp.gather(-1, labels[:, None]).squeeze(-1).mean()
        # prompt_last: every target token scored at the prompt's last position (ROME's FT baseline). That
        # position predicts the first target token, so it is each request's first row here (for an
        # encoder-decoder, the decoder's start position).
        rows = [-lp[0, tgt].mean() for lp, tgt in zip(logp.split(per_request), labels.split(per_request))]
        return torch.stack(rows).mean()

    def _apply(self, loaded: LoadedModel, requests: Sequence[EditRequest]) -> list:
        hp = self.hparams
        params = dict(loaded.model.named_parameters())
        tuned = {n: params[n] for n in self.touched_parameters(loaded, requests)}
        originals = {n: p.detach().clone() for n, p in tuned.items()}
        batch = build_target_batch(loaded, [r.prompt for r in requests], [r.target_new for r in requests])
        # Blocks below the lowest tuned one see the same inputs at every step: each step runs only the blocks
        # from there on and the head at the target positions.
        lowest = min(resolve_layers(hp.layers, loaded.layout.num_layers(loaded.model)))
        tail = TailRunner(loaded, batch, lowest)
        per_request = tail.at_targets.sum(1).tolist()
        for p in tuned.values():
            p.requires_grad_(True)
        # A weight stored in 16 bits (bfloat16/float16) is tuned through a float32 copy (mixed precision's master
        # weights): Adam's steps (~lr) are below bfloat16's resolution for most weights, so stepping the 16-bit
        # weight directly would drop or distort them, and the L∞ clamp around the original would be coarser than
        # the bound. The gradient is taken on the model's own weight, accumulated in float32, and the copy is
        # rounded into the weight after each step. The loss is computed in float32 (``_loss``).
        masters = {n: p.detach().float().clone().requires_grad_(True) if p.dtype != torch.float32 else p
                   for n, p in tuned.items()}
        bounds = {n: originals[n].to(masters[n].dtype) for n in tuned}
        opt = torch.optim.Adam(masters.values(), lr=hp.lr, weight_decay=hp.weight_decay)
        for _ in range(hp.num_steps):
            opt.zero_grad(set_to_none=True)
            for p in tuned.values():
                p.grad = None
            loss = self._loss(tail.logits(), tail.labels, per_request)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {loss.item()}")
            if loss.item() < hp.early_stop_loss:
                break
            loss.backward()
            for n, p in tuned.items():
                if masters[n] is not p:
                    masters[n].grad = None if p.grad is None else p.grad.float()
            opt.step()
            with torch.no_grad():
                for n, p in tuned.items():
                    if hp.norm_constraint is not None:
                        masters[n].copy_(torch.clamp(masters[n], bounds[n] - hp.norm_constraint, bounds[n] + hp.norm_constraint))
                    if masters[n] is not p:
                        p.copy_(masters[n])  # one rounding to the weight's dtype
                        p.grad = None
        return []


@register_editor
class FTLEditor(FineTuneEditor):
    name = "ft-l"
    HParams = FTLHyperParams


@register_editor
class FTMEditor(FineTuneEditor):
    name = "ft-m"
    HParams = FTMHyperParams
