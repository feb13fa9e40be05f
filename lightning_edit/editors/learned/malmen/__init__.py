"""MALMEN: its editor (``editor.py``), its training settings (``settings.py``) and its LightningModule
(``module.py``, imported on first use: it brings Lightning, which editing does not need)."""
from typing import Any, Type

from ..registry import register_learnt
from .editor import MALMENEditor, MALMENHyperParams, MALMENNetwork, normal_equation_shift  # noqa: F401
from .settings import MALMENTraining


def module_class() -> Type:
    from .module import MALMENModule

    return MALMENModule


register_learnt(MALMENEditor, MALMENTraining, module_class)


def __getattr__(name: str) -> Any:
    if name == "MALMENModule":  # lazily, so that importing the editor does not import Lightning
        return module_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["MALMENEditor", "MALMENHyperParams", "MALMENModule", "MALMENNetwork", "MALMENTraining",
           "normal_equation_shift"]
