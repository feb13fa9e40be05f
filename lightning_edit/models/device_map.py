"""Spreading a model over several devices, CPU memory and disk (``--device-map``, ``--max-memory``,
``--offload-folder``), through accelerate: the flags checked before any model loads, then the model dispatched.

``--device-map`` is ``auto`` (fill the GPUs in order, then CPU memory, then disk), ``balanced`` (the same memory on
each GPU), or a JSON file mapping module names to a device (``0``, ``"cuda:1"``, ``"cpu"``, ``"disk"``); the file
is parsed as JSON and checked against the model's module names, never evaluated. How edits read and write weights
that live off the module (CPU or disk offload) is ``placement.py``'s business.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

from torch import nn

from ..atomic import check_writable_directory
from ..errors import ConfigError

STRATEGIES = ("auto", "balanced")
DeviceName = Union[int, str]


class _DefaultDevice(str):
    """The default of ``--device`` ("cpu"), told apart from ``--device cpu`` typed by the user (which, beside
    ``--device-map``, is a contradiction to report, not to guess about)."""


DEFAULT_DEVICE = _DefaultDevice("cpu")


def placement_args(args: Any) -> dict:
    """The ``RunSpec`` fields of ``options.add_device_options`` (none given: the defaults)."""
    return {"device_map": getattr(args, "device_map", None), "max_memory": getattr(args, "max_memory", None),
            "offload_folder": getattr(args, "offload_folder", None)}



@dataclass(frozen=True)
class Placement:
    """Where a model's parts go: a strategy or a device-map file, memory limits per device, a folder for disk."""

    device_map: Union[str, dict]  # a strategy, a JSON file's path, or (Python API) the module → device dict itself
    max_memory: Optional[dict[DeviceName, str]] = None
    offload_folder: Optional[str] = None

    @classmethod
    def from_flags(cls, device_map: Union[str, dict, None], max_memory: Any = None,
                   offload_folder: Optional[str] = None,
                   device: Any = DEFAULT_DEVICE) -> Optional["Placement"]:
        """The checked placement of the flags (None when ``--device-map`` is not given; then ``--max-memory`` and
        ``--offload-folder`` are refused, as they would be silently ignored)."""
        if device_map is None:
            flags = (("--max-memory", max_memory), ("--offload-folder", offload_folder))
            given = [flag for flag, value in flags if value]
            if given:
                raise ConfigError(f"{' and '.join(given)}: no effect without --device-map; add --device-map auto (or "
                                  "balanced, or a JSON file) or drop them")
            return None
        if device is not None and device is not DEFAULT_DEVICE:
            raise ConfigError(f"--device {device} and --device-map {device_map}: give one; --device puts the whole "
                              "model on one device, --device-map spreads it (its JSON file can name a single device)")
        limits = parse_max_memory(max_memory) if isinstance(max_memory, str) else _checked_limits(max_memory)
        placement = cls(device_map=_checked_map_choice(device_map), max_memory=limits,
                        offload_folder=str(offload_folder) if offload_folder else None)
        if offload_folder:
            check_writable_directory(Path(offload_folder), "--offload-folder")
        if placement.map_file is not None:
            placement.check_devices(read_map_file(placement.map_file).values())
        elif isinstance(device_map, dict):
            placement.check_devices(device_map.values())
        return placement

    @property
    def map_file(self) -> Optional[Path]:
        return None if isinstance(self.device_map, dict) or self.device_map in STRATEGIES else Path(self.device_map)

    def check_devices(self, devices: Any) -> None:
        """Each device exists here; ``disk`` needs ``--offload-folder``."""
        import torch

        for device in devices:
            if device == "disk" and not self.offload_folder:
                raise ConfigError(f"--device-map {self.device_map} puts modules on disk; add --offload-folder DIR "
                                  "(a new or empty folder) to hold them")
            index = device if isinstance(device, int) else _cuda_index(device)
            if index is not None and index >= torch.cuda.device_count():
                raise ConfigError(f"--device-map {self.device_map} names GPU {index}, but this torch sees "
                                  f"{torch.cuda.device_count()} GPU(s); use cpu or disk, or a GPU that exists")


def _checked_map_choice(device_map: Union[str, dict]) -> Union[str, dict]:
    if isinstance(device_map, dict):
        return _checked_entries(device_map, "device_map")
    if device_map in STRATEGIES:
        return device_map
    path = Path(device_map)
    if path.is_symlink() or not path.is_file():
        raise ConfigError(f"--device-map {device_map!r}: not one of {', '.join(STRATEGIES)} nor a JSON file of module "
                          "name → device (a plain file, not a link); e.g. "
                          "{\"model.layers.0\": 0, \"lm_head\": \"cpu\"}")
    return device_map


def _cuda_index(device: str) -> Optional[int]:
    match = re.fullmatch(r"cuda(?::(\d+))?", device)
    return None if match is None else int(match.group(1) or 0)


def _device_key(text: str, flag: str) -> DeviceName:
    key = text.strip()
    if key.isdigit():
        return int(key)
    if key in ("cpu", "disk", "mps") or _cuda_index(key) is not None:
        return _cuda_index(key) if key.startswith("cuda") else key
    raise ConfigError(f"{flag}: {text!r} is not a device; use a GPU number (0, 1, ...), cuda:N, cpu, mps or disk")


def parse_max_memory(text: str) -> dict[DeviceName, str]:
    """``"cpu=200MB,0=20GB"`` → ``{"cpu": "200MB", 0: "20GB"}``, each size checked (accelerate's units)."""
    limits: dict[DeviceName, str] = {}
    for part in (p for p in text.split(",") if p.strip()):
        device, sep, size = part.partition("=")
        if not sep:
            raise ConfigError(f"--max-memory {text!r}: {part!r} is not DEVICE=SIZE; write e.g. cpu=200MB,0=20GB")
        limits[_device_key(device, "--max-memory")] = size.strip()
    if not limits:
        raise ConfigError(f"--max-memory {text!r} names no device; write e.g. cpu=200MB,0=20GB")
    return _checked_limits(limits)


def _checked_limits(limits: Optional[dict]) -> Optional[dict[DeviceName, str]]:
    from accelerate.utils import convert_file_size_to_int

    if limits is None:
        return None
    for device, size in limits.items():
        try:
            if convert_file_size_to_int(size) <= 0:
                raise ValueError(size)
        except (ValueError, TypeError):
            raise ConfigError(f"--max-memory: {device}={size!r} is not a size; write a number with a unit such as "
                              "200MB, 1.5GB or 20GiB") from None
    return dict(limits)


def read_map_file(path: Path) -> dict[str, DeviceName]:
    """A device-map file: a JSON object of module name → device (a GPU number, cuda:N, cpu, mps or disk)."""
    flag = f"--device-map {path}"
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigError(f"{flag}: not a readable JSON file ({type(err).__name__}: {err})") from None
    return _checked_entries(raw, flag)


def _checked_entries(raw: Any, flag: str) -> dict[str, DeviceName]:
    if not isinstance(raw, dict) or not raw or not all(isinstance(k, str) for k in raw):
        raise ConfigError(f"{flag}: must be a JSON object of module name → device, e.g. "
                          "{\"model.embed_tokens\": 0, \"model.layers.0\": 0, \"lm_head\": \"cpu\"}")
    out: dict[str, DeviceName] = {}
    for module, device in raw.items():
        if isinstance(device, bool) or not isinstance(device, (int, str)):
            raise ConfigError(f"{flag}: {module!r} maps to {device!r}; a device is a GPU number, cuda:N, cpu, mps "
                              "or disk")
        out[module] = device if isinstance(device, int) else _device_key(device, flag)
    return out


def checked_map(model: nn.Module, device_map: dict[str, DeviceName], flag: str) -> dict[str, DeviceName]:
    """``device_map`` names modules of this model, and places every parameter and buffer exactly once."""
    modules = dict(model.named_modules())
    unknown = [m for m in device_map if m not in modules]
    if unknown:
        raise ConfigError(f"{flag}: {unknown[:3]} are not modules of this model; module names look like "
                          f"{[n for n in list(modules)[1:4]]}")
    names = [n for n, _ in model.named_parameters()] + [n for n, _ in model.named_buffers()]
    unplaced = [n for n in names if not any(n.startswith(f"{m}.") or m == "" for m in device_map)]
    if unplaced:
        raise ConfigError(f"{flag}: no entry places {unplaced[:3]}; add their modules (or a parent) to the map")
    return device_map


def device_map_for(model: nn.Module, placement: Placement) -> dict[str, DeviceName]:
    """The module → device map of ``placement`` for this model (a file checked, a strategy computed)."""
    from accelerate.utils import get_balanced_memory, infer_auto_device_map

    if isinstance(placement.device_map, dict):
        return checked_map(model, placement.device_map, "device_map")
    if placement.map_file is not None:
        return checked_map(model, read_map_file(placement.map_file), f"--device-map {placement.device_map}")
    no_split = list(getattr(model, "_no_split_modules", None) or [])
    dtype = next(model.parameters()).dtype
    limits = dict(placement.max_memory) if placement.max_memory else None  # accelerate rewrites the dict it is given
    if placement.device_map == "balanced":
        limits = get_balanced_memory(model, max_memory=limits, no_split_module_classes=no_split, dtype=dtype)
    return infer_auto_device_map(model, max_memory=limits, no_split_module_classes=no_split, dtype=dtype)


def dispatch(model: nn.Module, placement: Placement) -> nn.Module:
    """``model`` (whole, on the CPU) spread as ``placement`` says, through ``accelerate.dispatch_model``: modules
    mapped to ``disk`` are written to ``--offload-folder`` as memory-mapped files and read at each forward."""
    from accelerate import dispatch_model

    device_map = device_map_for(model, placement)
    if set(device_map.values()) == {"disk"}:
        raise ConfigError(f"--device-map {placement.device_map}: every module would go to disk (--max-memory "
                          f"{placement.max_memory}); leave room on a device for at least the embeddings and one block")
    placement.check_devices(set(device_map.values()))
    model = dispatch_model(model, device_map=device_map, offload_dir=placement.offload_folder)
    model.hf_device_map = dict(device_map)
    return model
