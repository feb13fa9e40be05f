"""``load_model``: a registered name, a hub id, a local transformers directory or a directory written by
``edit.py --save``, each read by its loader beside this module (``gguf.py``, ``hub.py``, ``saving.py``), and made a
``LoadedModel`` (``loaded.py``) in eval mode with frozen weights.

The names that lived here before the loaders were split off stay importable from here."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import nn

from ..paths import CACHE_ENV, default_cache_root  # noqa: F401  (CACHE_ENV: kept importable from here)
from .dtypes import DTYPES, dtype_name, resolve_dtype, warn_if_slow_dtype  # noqa: F401  (importable from here)
from .gguf import CACHE_MANIFEST, DamagedCache  # noqa: F401  (importable from here)
from .gguf import load_gguf as _load_gguf_cached
from .hub import load_transformers as _load_transformers
from .layout import layout_for
from .loaded import LoadedModel
from .device_map import DEFAULT_DEVICE, Placement, dispatch
from .registry import MODELS, resolve_model_name
from .saving import open_saved

log = logging.getLogger(__name__)

__all__ = ["DTYPES", "LoadedModel", "default_cache_dir", "dtype_name", "load_model", "resolve_dtype", "warn_if_slow_dtype"]


def default_cache_dir() -> Path:
    """``$LIGHTNING_EDIT_CACHE``; else ``checkpoints/`` at the project root when running from a checkout (the
    package's parent holds edit.py and setup.cfg); else the per-user cache ``~/.cache/lightning-edit`` (honouring
    ``$XDG_CACHE_HOME``) for an installed package. See lightning_edit/paths.py."""
    return default_cache_root()


def load_model(
    name_or_path: str,
    *,
    cache_dir: Optional[Union[str, Path]] = None,
    dtype: Union[torch.dtype, str] = torch.float32,
    device: Union[str, torch.device] = DEFAULT_DEVICE,
    device_map: Union[str, dict, None] = None,
    max_memory: Union[str, dict, None] = None,
    offload_folder: Union[str, Path, None] = None,
) -> LoadedModel:
    """Load a registered model, a hub id or a local transformers directory, in eval mode.

    ``dtype``: a torch dtype or its name ("float32", "bfloat16", "float16"); the weights are loaded straight in
    that dtype (no float32 copy first, so the memory is that of the dtype).

    A directory written by ``edit.py --save`` is checked against its manifest first, and the patches saved in it
    (memories, routers, prompt contexts) are verified and re-attached, so the model answers as the edited one did.
    Their kinds must be registered first (``import lightning_edit.editors``; ``lightning_edit.load_model`` does).

    ``device_map`` (``--device-map``: "auto", "balanced", a JSON file or a module → device dict), with
    ``max_memory`` ("cpu=200MB,0=20GB" or a dict) and ``offload_folder`` (for modules put on disk): the model is
    spread over devices, CPU memory and disk by accelerate instead of being put on ``device`` (``device_map.py``);
    it is read whole into CPU memory first."""
    placement = Placement.from_flags(device_map, max_memory, offload_folder, device=device)  # before any loading
    dtype = resolve_dtype(dtype, flag="dtype")
    warn_if_slow_dtype(dtype, device)
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    name = resolve_model_name(name_or_path)
    spec = MODELS.get(name)
    saved = None
    if spec is not None and spec.source == "gguf_package":
        model, tokenizer = _load_gguf_cached(spec, cache, dtype)
    else:
        target = spec.hub_id if spec is not None else name_or_path
        saved = open_saved(target) if spec is None else None  # verified before any tensor is read
        model, tokenizer = _load_transformers(target, dtype)
    loaded = _ready(name, model, tokenizer, device, placement)
    if saved is not None:
        saved.restore(loaded)
    return loaded


def _ready(name: str, model: nn.Module, tokenizer: Any, device: Union[str, torch.device],
           placement: Optional[Placement] = None) -> LoadedModel:
    """The model on ``device`` (or dispatched as ``placement`` says), in eval mode, its weights frozen, its
    tokenizer able to pad."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = dispatch(model, placement) if placement is not None else model.to(device)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return LoadedModel(name=name, model=model, tokenizer=tokenizer, layout=layout_for(model))
