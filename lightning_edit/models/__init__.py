from .layout import FAMILY_LAYOUTS, ModelLayout, layout_for
from .loading import LoadedModel, default_cache_dir, load_model
from .registry import MODELS, ModelSpec, register_model, resolve_model_name

__all__ = ["FAMILY_LAYOUTS", "ModelLayout", "layout_for", "LoadedModel", "default_cache_dir", "load_model", "MODELS", "ModelSpec", "register_model", "resolve_model_name"]
