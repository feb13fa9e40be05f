"""Command-line options shared by every command (edit, study, ask, stats): one parser for ``--set``, the
number checks, ``--threads``."""
from __future__ import annotations

import argparse
from typing import Callable

from .config import parse_override  # noqa: F401  (one --set parser: typed by the field, lightning_edit/config.py)


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
