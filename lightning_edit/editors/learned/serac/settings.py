"""SERAC's ``training:`` section (``configs/serac/*.yaml``): the shared settings plus the weights of its
classifier's and counterfactual model's losses."""
from __future__ import annotations

from dataclasses import dataclass

from ..settings import TrainingConfig


@dataclass
class SERACTraining(TrainingConfig):
    lr: float = 1e-3
    c_cls: float = 1.0  # scope classifier BCE
    c_cf_loc: float = 0.1  # KL of the counterfactual model to the base on unrelated prompts
