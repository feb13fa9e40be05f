"""KE's ``training:`` section (``configs/ke/*.yaml``): the shared settings plus its constrained objective's margin
and multiplier."""
from __future__ import annotations

from dataclasses import dataclass

from ..settings import TrainingConfig


@dataclass
class KETraining(TrainingConfig):
    lr: float = 3e-4
    kl_margin: float = 0.01  # the constraint KL(base ‖ edited) ≤ margin on locality prompts
    lagrange_init: float = 1.0
    lagrange_lr: float = 10.0  # dual ascent step on the multiplier
