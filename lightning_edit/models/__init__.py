from .layout import FAMILY_LAYOUTS, ModelLayout, layout_for
from .loaded import LoadedModel
from .loading import DTYPES, default_cache_dir, load_model, resolve_dtype
from .registry import MODELS, ModelSpec, register_model, resolve_model_name

__all__ = ["FAMILY_LAYOUTS", "ModelLayout", "layout_for", "LoadedModel", "default_cache_dir", "load_model", "DTYPES", "resolve_dtype", "MODELS", "ModelSpec", "register_model", "resolve_model_name"]
