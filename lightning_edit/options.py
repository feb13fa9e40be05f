"""Command-line options shared by every command (edit, study, ask, stats, trace): one parser for ``--set``, the
number checks, ``--threads``, and the checks of devices and output paths made before any work."""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Callable, Optional

from .errors import ConfigError

from .config import parse_override  # noqa: F401  (one --set parser: typed by the field, lightning_edit/config.py)
from .models.checks import check_device  # noqa: F401  (one device check: the shared preflight)
from .models.device_map import DEFAULT_DEVICE, placement_args  # noqa: F401  (importable from here, with the options)


def _int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number ≥ ``minimum`` (a negative --n or --offset used to slice silently)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number ≥ {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected a whole number ≥ {minimum}, got {value}")
        return value

    return parse


_positive_int = _int_at_least(1)
_non_negative_int = _int_at_least(0)


def add_device_options(p: argparse.ArgumentParser, device_help: str = "cpu, cuda or cuda:N") -> None:
    """``--device``, or ``--device-map`` with its memory limits and offload folder (one of the two)."""
    p.add_argument("--device", default=DEFAULT_DEVICE, help=f"{device_help} (default: cpu)")
    p.add_argument("--device-map", default=None, metavar="auto|balanced|FILE",
                   help="spread the model with accelerate instead of --device: auto (fill GPUs in order, then CPU "
                        "memory, then disk), balanced (even over the GPUs) or a JSON file of module name → device "
                        "(0, cuda:1, cpu, disk); see docs/guides/device-map.md")
    p.add_argument("--max-memory", default=None, metavar="DEV=SIZE,...",
                   help="with --device-map auto|balanced: memory each device may hold, e.g. cpu=200MB,0=20GB")
    p.add_argument("--offload-folder", default=None, metavar="DIR",
                   help="with --device-map: a new or empty folder for the modules put on disk")


def add_threads_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=_positive_int, default=None,
                   help="torch CPU threads (default: the physical cores). With other work on the cores, 1 is faster")


def apply_threads(threads: Optional[int]) -> None:
    import torch

    if threads is not None:
        torch.set_num_threads(threads)


def check_output_path(flag: str, path: Optional[str], directory: bool) -> None:
    """Check an output path before any work (a missing folder is created now, not after the run): it must not
    clash with what is there, and its folder must be writable."""
    if path is None:
        return
    target = Path(path)
    if directory:
        if target.exists() and not target.is_dir():
            raise ConfigError(f"{flag} {path} is an existing file; give a new folder name")
        if target.is_dir() and any(target.iterdir()):
            raise ConfigError(f"{flag} {path} is a folder that is not empty; give a new folder name or remove it")
    elif target.is_dir():
        raise ConfigError(f"{flag} {path} is a folder; give a file name such as {Path(path) / 'report.json'}")
    parent = target.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"{flag} {path}: cannot create the folder {parent} ({err.strerror or err})") from err
    if not os.access(parent, os.W_OK):
        raise ConfigError(f"{flag} {path}: the folder {parent} is not writable")
