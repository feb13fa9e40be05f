"""The checks of a model to load that need no model: the device and dtype it is loaded in, and whether a name can
be a model at all (a registered name, a hub id, or a local folder whose ``config.json`` is a JSON object with a
plain ``model_type``). Part of the shared preflight (``lightning_edit/preflight.py``), kept here, in the models
layer, so that every front door can use them (``stats`` sits below the editors)."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Optional

from ..errors import ConfigError, ModelNotAvailableError

# owner/name of the Hugging Face hub (what transformers would look up there)
HUB_MODEL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}")


def check_device(device: str) -> None:
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: this torch ({torch.__version__}) sees no CUDA GPU; use --device cpu "
                          "or install a CUDA build of torch on a machine with a GPU")
    if not (device == "cpu" or device.startswith("cuda") or device == "mps"):
        raise ConfigError(f"--device {device!r} is not a device; use cpu, cuda or cuda:N")


def check_environment(device: Any = "cpu", dtype: Any = "float32", device_flag: str = "--device",
                      dtype_flag: str = "--dtype") -> None:
    """The device is one torch has here; the dtype is one a model is loaded in."""
    from .loading import resolve_dtype

    if not isinstance(device, str):
        device = str(device)
    try:
        check_device(device)
    except ConfigError as err:
        raise ConfigError(str(err).replace("--device", device_flag, 1)) from None
    resolve_dtype(dtype, flag=dtype_flag)


def unavailable_reason(name: str) -> Optional[str]:
    """Why ``name`` cannot be a model here, when that is known without loading it (None: it may load)."""
    from .registry import MODELS, family_of, resolve_model_name

    if not isinstance(name, str) or not name.strip():
        return f"{name!r} is empty; give a registered model name, a hub id (owner/name) or a model folder"
    if resolve_model_name(name) in MODELS:
        return None
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            return f"{name!r} is a file, not a model folder"
        if not (path / "config.json").is_file():
            return f"{name!r} is a folder without config.json (a transformers model folder)"
        family_of(str(path))  # config.json must be an object with a plain model_type (a ConfigError names it)
        return None
    if name.startswith(("/", "./", "../", "~")) or name.endswith("/"):
        return f"{name!r}: no such folder"
    if not HUB_MODEL_ID.fullmatch(name) or ".." in name:
        return (f"{name!r} is not a registered model ({', '.join(sorted(MODELS))}), an existing folder, or a hub id "
                "(owner/name)")
    return None  # a hub id: loading tries the Hugging Face cache, then the hub


def check_model_source(name: str, flag: str = "--model", verify_saved: bool = False) -> Optional[Any]:
    """Refuse a model that cannot be one (named by ``flag``). With ``verify_saved``, a folder written by
    ``edit.py --save`` is verified against its manifest now (every file hashed) and returned as a
    ``SavedDirectory`` (None for anything else): for a caller that reads a file of it before loading it (``ask``
    reads the base model's name). ``load_model`` verifies a saved folder itself in any case."""
    reason = unavailable_reason(name)
    if reason:
        raise ModelNotAvailableError(f"{flag} {reason}")
    path = Path(name).expanduser()
    if not verify_saved or not path.is_dir():
        return None
    from .saving import SavedDirectory

    return SavedDirectory.open(path)
