"""SERAC: its editor and patch (``editor.py``: the edit memory and the router), its trained network (``network.py``:
scope classifier, counterfactual LoRA), its training settings (``settings.py``) and its LightningModule
(``module.py``, imported on first use: it brings Lightning, which editing does not need)."""
from typing import Any, Type

from ..registry import register_learnt
from .editor import (SERACEditor, SERACEdits, SERACHyperParams, SERACRouter, edit_prefix_ids,  # noqa: F401
                     kept_positions, prompt_keys)
from .network import (SERACNetwork, ScopeClassifier, lora_active, lora_shapes, running_mean_features,  # noqa: F401
                      scope_features)
from .settings import SERACTraining


def module_class() -> Type:
    from .module import SERACModule

    return SERACModule


register_learnt(SERACEditor, SERACTraining, module_class)


def __getattr__(name: str) -> Any:
    if name == "SERACModule":  # lazily, so that importing the editor does not import Lightning
        return module_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["SERACEditor", "SERACEdits", "SERACHyperParams", "SERACModule", "SERACNetwork", "SERACRouter", "SERACTraining",
           "ScopeClassifier", "edit_prefix_ids", "kept_positions", "lora_active", "lora_shapes", "prompt_keys",
           "running_mean_features", "scope_features"]
