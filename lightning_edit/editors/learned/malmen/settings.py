"""MALMEN's ``training:`` section (``configs/malmen/*.yaml``): the shared settings plus its loss weights."""
from __future__ import annotations

from dataclasses import dataclass

from ..settings import TrainingConfig


@dataclass
class MALMENTraining(TrainingConfig):
    batch_size: int = 8  # edits per step: their shifts are aggregated by one least-squares solve, as when editing
    c_edit: float = 1.0  # weight of the edit NLL on the rephrases (the authors' generalisation loss)
    c_loc: float = 1.0  # weight of KL(base ‖ edited) on locality prompts (the authors' loc_coef)
