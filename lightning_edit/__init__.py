"""lightning-edit: edit the knowledge of language models, and measure the edit honestly."""
from .version import __version__

from .errors import (CheckpointError, ConfigError, DataError, EditFailedError, LightningEditError, ModelNotAvailableError,
                     RequestError, RequestTypeError)
from .requests import EditRequest, PromptAnswer, requests_from_lists

__all__ = ["__version__", "EditRequest", "PromptAnswer", "requests_from_lists", "check_special_tokens", "check_context_length", "CheckpointError", "ConfigError", "DataError",
           "EditFailedError", "LightningEditError", "ModelNotAvailableError", "RequestError", "RequestTypeError"]


def __getattr__(name: str):
    # The tokenizer checks live with the models (they tokenize as the editors do); imported on first use so that
    # ``import lightning_edit`` stays light.
    if name in ("check_special_tokens", "check_context_length"):
        from .models import request_checks

        return getattr(request_checks, name)
    raise AttributeError(f"module 'lightning_edit' has no attribute {name!r}")
