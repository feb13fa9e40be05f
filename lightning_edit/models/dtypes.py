"""The dtypes a model is loaded in, by name."""
from __future__ import annotations

import warnings
from typing import Union

import torch

from ..errors import ConfigError


DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(dtype: Union[str, torch.dtype, None], flag: str = "--dtype") -> torch.dtype:
    """A torch dtype from its name ("float32", "bfloat16", "float16"; "torch.bfloat16" too) or a torch dtype;
    None is float32. Anything else is a ConfigError naming ``flag`` and the choices."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise ConfigError(f"{flag} {dtype} is not a dtype to load a model in; choose one of: {', '.join(DTYPES)}")
        return dtype
    if isinstance(dtype, str):
        name = dtype.strip().lower()
        name = name[len("torch."):] if name.startswith("torch.") else name
        if name in DTYPES:
            return DTYPES[name]
    raise ConfigError(f"{flag} {dtype!r} is not a known dtype; choose one of: {', '.join(DTYPES)}")


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` → ``"bfloat16"``."""
    return str(dtype).removeprefix("torch.")


def warn_if_slow_dtype(dtype: torch.dtype, device: Union[str, torch.device]) -> None:
    """float16 on a CPU works but is slow, and some operations have no float16 CPU kernel: say so."""
    if dtype == torch.float16 and torch.device(device).type == "cpu":
        warnings.warn("float16 on the CPU is slow and some operations have no float16 CPU kernel; prefer bfloat16 "
                      "(same memory) or float32 on a CPU, float16 on a GPU", RuntimeWarning, stacklevel=3)
