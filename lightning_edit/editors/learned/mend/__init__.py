"""MEND: its editor (``editor.py``), its training settings (``settings.py``) and its LightningModule (``module.py``,
imported on first use: it brings Lightning, which editing does not need)."""
from typing import Any, Type

from ..registry import register_learnt
from .editor import (LowRankResidual, MENDEditor, MENDHyperParams, MENDNetwork, RunningNorm,  # noqa: F401
                     weight_shapes)
from .settings import MENDTraining


def module_class() -> Type:
    from .module import MENDModule

    return MENDModule


register_learnt(MENDEditor, MENDTraining, module_class)


def __getattr__(name: str) -> Any:
    if name == "MENDModule":  # lazily, so that importing the editor does not import Lightning
        return module_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["LowRankResidual", "MENDEditor", "MENDHyperParams", "MENDModule", "MENDNetwork", "MENDTraining", "RunningNorm",
           "weight_shapes"]
