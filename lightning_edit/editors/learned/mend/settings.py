"""MEND's ``training:`` section (``configs/mend/*.yaml``): the shared settings plus its loss weights."""
from __future__ import annotations

from dataclasses import dataclass

from ..settings import TrainingConfig


@dataclass
class MENDTraining(TrainingConfig):
    lr_lr: float = 1e-4  # per-layer step sizes α_ℓ
    c_edit: float = 0.1  # weight of the edit NLL
    c_loc: float = 1.0  # weight of KL(base ‖ edited) on locality prompts
