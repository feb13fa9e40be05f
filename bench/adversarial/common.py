"""One bad input and what it must give back, shared by every case module of ``bench/adversarial_inputs.py``."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

GOOD = {"prompt": "The mother tongue of Danielle Darrieux is", "target_new": "English", "subject": "Danielle Darrieux"}
# what every `edit` case runs with, before its own flags (which win): one request, no generations, one thread
EDIT_PREFIX = ["--n", "1", "--no-fluency", "--threads", "1"]


@dataclass
class Case:
    """A bad input. Exactly one of ``argv`` (run through ``lightning_edit.cli.main``) or ``call`` (a Python call:
    refusing means raising a ``LightningEditError``, or returning a non-zero exit code).

    ``expect="refused"``: the message must contain ``name`` (case-insensitive).
    ``expect="handled"``: a case that must *succeed* with intact outputs (concurrent runs, a damaged cache that is
    recomputed); ``call`` returns True when every output checked out, and anything else counts as a failure.
    """
    what: str
    door: str
    name: str = ""
    argv: Optional[list[str]] = None
    call: Optional[Callable[[], object]] = None
    expect: str = "refused"
    needs_model: bool = False  # loads the model (skipped by --quick)
    tags: list[str] = field(default_factory=list)


def write(folder: Path, name: str, content) -> str:
    """Write ``content`` (bytes, text, or JSON-able) to ``folder/name`` and return the path as text."""
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    return str(path)
