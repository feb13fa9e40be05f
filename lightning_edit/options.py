"""Command-line options shared by every command (edit, study, ask, stats): one parser for ``--set``, the
number checks, ``--threads``."""
from __future__ import annotations

import argparse
from typing import Callable

import yaml


def parse_override(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` of ``--set``, the value read as YAML (numbers, true/false, lists); the hyperparameter
    classes then check it against the field's declared type."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--set expects KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    if not key.strip():
        raise argparse.ArgumentTypeError(f"--set expects KEY=VALUE, got {text!r} (empty KEY)")
    try:
        return key.strip(), yaml.safe_load(value)
    except yaml.YAMLError as err:
        raise argparse.ArgumentTypeError(f"--set {key}: {value!r} is not a valid value ({type(err).__name__}); "
                                         "write numbers, true/false, text, or lists like [4, 5]") from err


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


def add_threads_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=_positive_int, default=None,
                   help="torch CPU threads (default: the physical cores). With other work on the cores, 1 is faster")
