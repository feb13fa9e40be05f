"""lightning-edit: edit the knowledge of language models, and measure the edit honestly."""
from typing import TYPE_CHECKING, Any

from .version import __version__

from .errors import (CheckpointError, ConfigError, DataError, EditFailedError, LightningEditError, ModelNotAvailableError,
                     RequestError, RequestTypeError)
from .requests import EditRequest, PromptAnswer, requests_from_lists

if TYPE_CHECKING:
    from .models.loaded import LoadedModel

__all__ = ["__version__", "load_model", "EditRequest", "PromptAnswer", "requests_from_lists", "check_special_tokens", "check_context_length", "CheckpointError", "ConfigError", "DataError",
           "EditFailedError", "LightningEditError", "ModelNotAvailableError", "RequestError", "RequestTypeError"]


def __getattr__(name: str):
    # The tokenizer checks live with the models (they tokenize as the editors do); imported on first use so that
    # ``import lightning_edit`` stays light.
    if name in ("check_special_tokens", "check_context_length"):
        from .models import request_checks

        return getattr(request_checks, name)
    raise AttributeError(f"module 'lightning_edit' has no attribute {name!r}")


def load_model(name_or_path: str, **kwargs: Any) -> "LoadedModel":
    """``lightning_edit.models.load_model`` with every method's patch kinds registered first, so a directory written
    by ``edit.py --save`` comes back with its patches (the models layer never imports the editors that define them)."""
    from . import editors  # noqa: F401  (registers the patch kinds)
    from .models import load_model as load

    return load(name_or_path, **kwargs)
