"""What ``train.py`` trains: the learnt methods' settings and LightningModules, read from their folders
(``editors/learned/<method>/``, each registered in ``LEARNT_METHODS``)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Type

from ..editors.learned import LEARNT_METHODS
from ..editors.learned.settings import TrainingConfig
from ..errors import ConfigError

if TYPE_CHECKING:
    from ..editors.learned.module import EditorModule  # imported by module_class when called (it brings Lightning)

# The ``training:`` section's dataclass of each learnt method.
TRAINING_CONFIGS: dict[str, Type[TrainingConfig]] = {name: m.training for name, m in LEARNT_METHODS.items()}


def module_class(method: str) -> "Type[EditorModule]":
    """The LightningModule that trains ``method``'s editor; a method that needs no training is refused by name."""
    if method not in LEARNT_METHODS:
        raise ConfigError(f"train.py trains the learnt editors {sorted(LEARNT_METHODS)}; {method!r} is not one of them "
                          f"(the other methods need no training: python edit.py --method {method})")
    return LEARNT_METHODS[method].module()
