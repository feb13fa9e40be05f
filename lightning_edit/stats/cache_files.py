"""Cached tensors that many processes may write and read at once: one safetensors file and a JSON manifest per key.

* Writing holds a file lock per key (``<file>.lock``, filelock; reentrant in one thread) and goes through
  per-process temporary names (pid + random) and ``os.replace``, so concurrent writers never share a temp file
  and a reader never sees a half-written file.
* The manifest carries what the tensors were computed from (model fingerprint, method, inputs: the caller's
  ``expected`` fields), the sha256 of the safetensors file and each tensor's name, shape and dtype.
* Reading checks all of that before a tensor is returned: manifest fields, sha256 (of the very bytes that are then
  deserialised), names, shapes, dtypes and finiteness. A file that fails is a ``StaleCacheFile``: callers recompute
  it (``load_or_compute``) instead of asking the user to delete it.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence, Union

import torch
from filelock import FileLock
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes

from ..atomic import atomic_write_bytes
from ..errors import CheckpointError

log = logging.getLogger(__name__)

# name -> (shape, or None for any; accepted dtypes)
TensorSpec = Mapping[str, tuple[Optional[Sequence[int]], Sequence[torch.dtype]]]


class StaleCacheFile(CheckpointError):
    """A cached file that is missing, stale (computed from something else) or damaged; recompute it."""


def manifest_path(path: Path) -> Path:
    return path.with_suffix(".json")


def key_lock(path: Union[str, Path]) -> FileLock:
    """The lock of one cache key. Singleton per path, so a thread that holds it may take it again (a write inside a
    compute-and-write section); other threads and processes wait."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return FileLock(f"{path}.lock", is_singleton=True)


def write_verified(path: Path, tensors: Mapping[str, torch.Tensor], manifest: Mapping) -> dict:
    """Write ``tensors`` (moved to the CPU) and their manifest atomically under the key's lock; returns the manifest."""
    tensors = {name: t.detach().cpu().contiguous() for name, t in tensors.items()}
    data = save_bytes(tensors)
    full = dict(manifest, sha256=hashlib.sha256(data).hexdigest(),
                tensors={name: {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")} for name, t in tensors.items()})
    with key_lock(path):
        # data first, manifest last: a reader that sees the new manifest finds the new data
        atomic_write_bytes(path, data)
        atomic_write_bytes(manifest_path(path), json.dumps(full, indent=2, default=str).encode())
    return full


def read_verified(path: Path, expected: Mapping, spec: TensorSpec) -> tuple[dict[str, torch.Tensor], dict]:
    """The tensors of ``path`` and its manifest, after every check; ``StaleCacheFile`` naming the first that fails."""
    where = manifest_path(path)
    if not path.exists() or not where.exists():
        raise StaleCacheFile(f"{path} or its manifest {where.name} is missing")
    try:
        manifest = json.loads(where.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise StaleCacheFile(f"manifest {where} is not valid JSON ({err})") from err
    if not isinstance(manifest, dict):
        raise StaleCacheFile(f"manifest {where} is not a JSON object")
    for key, value in expected.items():
        if manifest.get(key) != value:
            raise StaleCacheFile(f"{path} was computed for {key}={manifest.get(key)!r}, this run needs {key}={value!r}")
    data = path.read_bytes()
    actual = hashlib.sha256(data).hexdigest()
    if actual != manifest.get("sha256"):
        raise StaleCacheFile(f"{path} is corrupted: sha256 {actual[:16]}… differs from its manifest's {str(manifest.get('sha256'))[:16]}…")
    try:
        tensors = load_bytes(data)
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error types for malformed headers
        raise StaleCacheFile(f"{path} is not a readable safetensors file ({err})") from err
    if set(tensors) != set(spec):
        raise StaleCacheFile(f"{path} holds tensors {sorted(tensors)}, expected {sorted(spec)}")
    for name, (shape, dtypes) in spec.items():
        t = tensors[name]
        if shape is not None and tuple(t.shape) != tuple(shape):
            raise StaleCacheFile(f"{path}: tensor {name!r} has shape {tuple(t.shape)}, expected {tuple(shape)}")
        if t.dtype not in tuple(dtypes):
            raise StaleCacheFile(f"{path}: tensor {name!r} is {t.dtype}, expected one of {tuple(dtypes)}")
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise StaleCacheFile(f"{path}: tensor {name!r} holds NaN or infinite values")
    return tensors, manifest


def load_or_compute(path: Path, expected: Mapping, spec: TensorSpec, compute: Callable[[], dict[str, torch.Tensor]],
                    what: str) -> dict[str, torch.Tensor]:
    """The verified cached tensors of ``path``; else, under the key's lock, ``compute()`` them and write them.

    A file that exists but fails verification is recomputed with a warning (its reason), never an error."""
    try:
        return read_verified(path, expected, spec)[0]
    except StaleCacheFile:
        pass  # maybe mid-write by another process: look again under the lock before calling it stale
    with key_lock(path):
        try:
            return read_verified(path, expected, spec)[0]
        except StaleCacheFile as err:
            if path.exists() or manifest_path(path).exists():
                log.warning("%s: unusable cache file (%s); recomputing it", what, err)
        tensors = compute()
        write_verified(path, tensors, expected)
        return tensors
