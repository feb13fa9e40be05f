"""Bounds on what a saved tensor file may ask of the reader, checked from its header before any tensor is built.

A safetensors file starts with an 8-byte little-endian header length and a JSON header naming every tensor (dtype,
shape, byte range). The manifest's hashes say a file is the one saved, not that it is reasonable: a hand-made file
could declare a million tensors, or a header of gigabytes. ``check_tensor_file`` reads only the header and refuses
such a file with a ``CheckpointError`` naming it.
"""
from __future__ import annotations

import json
import math
import struct
from pathlib import Path

from .errors import CheckpointError

MAX_HEADER_BYTES = 64 << 20  # safetensors' own reader refuses headers above 100 MB
MAX_ELEMENTS = 1 << 34  # per tensor: far above any editor or patch tensor, far below a bogus shape's


def check_tensor_file(path: Path, what: str, max_tensors: int) -> int:
    """The number of tensors in the safetensors file ``path``, after checking from its header alone that there are at
    most ``max_tensors``, that every shape is a list of non-negative integers of sane size and that every byte
    range lies inside the file. ``what`` names the file in messages (e.g. "editor checkpoint DIR")."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            length = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
            if not 0 < length <= min(MAX_HEADER_BYTES, size - 8):
                raise CheckpointError(f"{what}: {path.name} is not a safetensors file (header length {length})")
            header = json.loads(fh.read(length).decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise CheckpointError(f"{what}: {path.name} has no readable safetensors header ({type(err).__name__})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{what}: {path.name}'s header is not a JSON object")
    entries = {k: v for k, v in header.items() if k != "__metadata__"}
    if len(entries) > max_tensors:
        raise CheckpointError(f"{what}: {path.name} declares {len(entries)} tensors, more than the {max_tensors} such a "
                              "file may hold; it was not written by lightning-edit")
    for name, spec in entries.items():
        _check_entry(path, what, name, spec, size - 8 - length)
    return len(entries)


def _check_entry(path: Path, what: str, name: str, spec: object, data_bytes: int) -> None:
    shape = spec.get("shape") if isinstance(spec, dict) else None
    offsets = spec.get("data_offsets") if isinstance(spec, dict) else None
    ints = lambda xs: isinstance(xs, list) and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in xs)  # noqa: E731
    if not ints(shape) or len(shape) > 8 or math.prod(shape) > MAX_ELEMENTS:
        raise CheckpointError(f"{what}: tensor {name!r} in {path.name} has shape {shape!r}; expected at most 8 "
                              f"non-negative dimensions and {MAX_ELEMENTS} elements")
    if not ints(offsets) or len(offsets) != 2 or not offsets[0] <= offsets[1] <= data_bytes:
        raise CheckpointError(f"{what}: tensor {name!r} in {path.name} has byte range {offsets!r} outside the file "
                              f"({data_bytes} bytes of data)")
