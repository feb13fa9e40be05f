"""The ``training:`` section of ``configs/<method>/*.yaml`` as typed dataclasses: one field per key, with the
default used when no YAML file sets it, and checks that name the field and the fix.

``TrainingConfig`` holds what every learnt editor's training reads (data, optimizer, Lightning Trainer
settings); each method's folder adds its loss weights (``mend/settings.py``: ``MENDTraining``, likewise KE, SERAC).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Type, TypeVar, Union

from ...config import typed_dataclass
from ...errors import ConfigError

C = TypeVar("C", bound="TrainingConfig")

# Lightning's precision names (lightning.fabric.utilities.types._PRECISION_INPUT_STR), plus our "auto"
PRECISIONS = ("auto", "32-true", "32", "bf16-mixed", "bf16-true", "bf16", "16-mixed", "16-true", "16",
              "64-true", "64", "transformer-engine", "transformer-engine-float16")


@dataclass
class TrainingConfig:
    dataset: str = "zsre-train"  # training set name or JSON file
    val_dataset: Optional[str] = None  # None: hold out n_val records of the training set
    n_train: Optional[int] = None  # None: every record
    n_val: int = 50
    batch_size: int = 1  # edits per optimizer step
    lr: float = 1e-4  # Adam, editor network
    max_steps: int = 500
    val_check_interval: int = 200  # optimizer steps between validations
    limit_val_batches: Union[int, float] = 1.0  # a whole number: batches; a fraction: share of the validation set
    gradient_clip_val: Optional[float] = None
    accumulate_grad_batches: int = 1
    log_every_n_steps: int = 10
    precision: str = "auto"  # auto: bf16-mixed under DeepSpeed on a bf16 GPU, else 32-true (docs/guides/training.md)
    seed: int = 0
    num_threads: int = 1  # torch CPU threads per process

    @classmethod
    def from_dict(cls: Type[C], values: Mapping[str, Any], source: str = "training") -> C:
        config = typed_dataclass(cls, values, source, set_prefix="training.")
        config.validate(source)
        return config

    def validate(self, source: str = "training") -> None:
        def refuse(field: str, rule: str) -> ConfigError:
            return ConfigError(f"{source}: field '{field}' must be {rule}, got {getattr(self, field)!r}; "
                               f"e.g. --set training.{field}=...")

        for name in ("n_val", "batch_size", "max_steps", "val_check_interval", "accumulate_grad_batches",
                     "log_every_n_steps", "num_threads"):
            if getattr(self, name) < 1:
                raise refuse(name, "a whole number ≥ 1")
        if self.n_train is not None and self.n_train < 1:
            raise refuse("n_train", "a whole number ≥ 1 or null (every record)")
        if self.lr <= 0:
            raise refuse("lr", "a positive number")
        if self.limit_val_batches <= 0 or (isinstance(self.limit_val_batches, float) and self.limit_val_batches > 1):
            raise refuse("limit_val_batches", "a whole number of batches ≥ 1 or a fraction in (0, 1]")
        if self.gradient_clip_val is not None and self.gradient_clip_val < 0:
            raise refuse("gradient_clip_val", "a number ≥ 0 or null (no clipping)")
        if self.precision not in PRECISIONS:
            raise refuse("precision", f"one of {', '.join(PRECISIONS)}")
        for field in dataclasses.fields(self):  # loss weights and margins of the subclasses
            if field.name.startswith(("c_", "kl_", "lagrange_", "lr_")) and getattr(self, field.name) < 0:
                raise refuse(field.name, "a number ≥ 0")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
