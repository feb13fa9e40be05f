"""lightning-edit: edit the knowledge of language models, and measure the edit honestly."""
__version__ = "0.1.0"

from .errors import (CheckpointError, ConfigError, DataError, EditFailedError, LightningEditError, ModelNotAvailableError,
                     RequestError, RequestTypeError)
from .requests import EditRequest, PromptAnswer, check_context_length, check_special_tokens, requests_from_lists

__all__ = ["__version__", "EditRequest", "PromptAnswer", "requests_from_lists", "check_special_tokens", "check_context_length", "CheckpointError", "ConfigError", "DataError",
           "EditFailedError", "LightningEditError", "ModelNotAvailableError", "RequestError", "RequestTypeError"]
