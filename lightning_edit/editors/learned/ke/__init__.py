"""KE: its editor (``editor.py``), its training settings (``settings.py``) and its LightningModule (``module.py``,
imported on first use: it brings Lightning, which editing does not need)."""
from typing import Any, Type

from ..registry import register_learnt
from .editor import ConditionedUpdate, KEEditor, KEHyperParams, KENetwork, edit_embeddings  # noqa: F401
from .settings import KETraining


def module_class() -> Type:
    from .module import KEModule

    return KEModule


register_learnt(KEEditor, KETraining, module_class)


def __getattr__(name: str) -> Any:
    if name == "KEModule":  # lazily, so that importing the editor does not import Lightning
        return module_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ConditionedUpdate", "KEEditor", "KEHyperParams", "KEModule", "KENetwork", "KETraining", "edit_embeddings"]
