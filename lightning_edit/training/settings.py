"""The ``training:`` section's dataclasses, kept importable here for ``train.py`` users: they live with their
methods (``editors/learned/settings.py``: ``TrainingConfig``; ``editors/learned/<method>/settings.py``)."""
from ..editors.learned.ke.settings import KETraining
from ..editors.learned.malmen.settings import MALMENTraining
from ..editors.learned.mend.settings import MENDTraining
from ..editors.learned.serac.settings import SERACTraining
from ..editors.learned.settings import PRECISIONS, TrainingConfig
from .registry import TRAINING_CONFIGS

__all__ = ["KETraining", "MALMENTraining", "MENDTraining", "PRECISIONS", "SERACTraining", "TRAINING_CONFIGS", "TrainingConfig"]
