"""Saving an edited model, patches included, and loading it back verified.

``save_patches(loaded, dir)`` writes every patch on ``loaded.patches`` (memories, routers, prompt contexts) as
``dir/lightning_edit_patches/patches.json`` (each patch's kind, key and ``config()``) and ``patches.safetensors``
(each patch's ``state_dict()``), with a manifest (SHA-256 of both files, the weights fingerprint of the model they
hang on, the method, the requests). ``load_patches(loaded, dir)`` checks all of that, rebuilds every patch (each kind
checks names, shapes and dtypes against the model), and only then attaches them, all or nothing.

``save_edited_model`` writes what ``edit.py --save DIR`` writes: the model's weights as an ordinary transformers
directory, the tokenizer, the patches, ``edits.json`` (what was edited and scored) and ``manifest.json`` over every
file. ``load_model(DIR)`` verifies that manifest before reading a tensor and re-attaches the patches.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Optional, Sequence

import torch
from safetensors.torch import load_file, save_file

from ..atomic import atomic_directory
from ..errors import CheckpointError, LightningEditError
from ..manifest import MANIFEST_FILE, verify_manifest, write_manifest
from ..tensor_limits import check_tensor_file
from .dtypes import dtype_name
from .patches import Patch, patch_class

if TYPE_CHECKING:  # only the type: the patches and saved files are read for a LoadedModel made elsewhere
    from .loaded import LoadedModel

log = logging.getLogger(__name__)

PATCH_DIR = "lightning_edit_patches"
PATCHES_JSON = "patches.json"
PATCHES_TENSORS = "patches.safetensors"
PATCHES_FORMAT = "lightning-edit/patches"
SAVED_MODEL_FORMAT = "lightning-edit/saved-model"
RECORD_FILE = "edits.json"


def _model_dtype(loaded: "LoadedModel") -> str:
    return dtype_name(next(loaded.model.parameters()).dtype)


def _request_dicts(requests: Iterable[Any]) -> list[dict]:
    return [r.to_dict() if hasattr(r, "to_dict") else dict(r) for r in requests]


def unsaveable_patches(loaded: "LoadedModel") -> list[str]:
    """Keys of attached patches whose kind cannot be rebuilt from a file (no ``from_saved``)."""
    return [p.key for p in loaded.patches if type(p).from_saved.__func__ is Patch.from_saved.__func__]  # type: ignore[attr-defined]


def save_patches(loaded: "LoadedModel", directory: str | Path, *, method: str, requests: Iterable[Any] = ()) -> Optional[Path]:
    """Write the patches on ``loaded`` under ``directory/lightning_edit_patches/``; None when it carries none."""
    patches = list(loaded.patches)
    if not patches:
        return None
    cannot = unsaveable_patches(loaded)
    if cannot:
        raise CheckpointError(f"patches {cannot} cannot be saved (their kind has no from_saved); nothing was written")
    entries, tensors = [], {}
    for i, patch in enumerate(patches):
        state = patch.state_dict()
        entries.append({"kind": patch.kind, "key": patch.key, "config": patch.config(),
                        "tensors": {name: {"shape": list(t.shape), "dtype": dtype_name(t.dtype)} for name, t in state.items()}})
        # cloned: patch values may share storage (a shard and the current memory), which safetensors refuses
        tensors.update({f"{i}/{name}": t.detach().to("cpu").clone().contiguous() for name, t in state.items()})
    folder = Path(directory) / PATCH_DIR
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / PATCHES_TENSORS))
    (folder / PATCHES_JSON).write_text(json.dumps(entries, indent=2))
    write_manifest(folder, [PATCHES_JSON, PATCHES_TENSORS], PATCHES_FORMAT, method=method, base_model=loaded.name,
                   weights_fingerprint=loaded.weights_fingerprint(), dtype=_model_dtype(loaded),
                   requests=_request_dicts(requests), patches=[e["kind"] for e in entries])
    return folder


MAX_PATCH_TENSORS = 1 << 16  # a long sequence of GRACE/WISE edits saves thousands; a file declaring more is not ours


def load_patches(loaded: "LoadedModel", directory: str | Path) -> list[Patch]:
    """Verify the patches saved in ``directory`` (or its ``lightning_edit_patches/``) and attach them to ``loaded``:
    every check before the first attach, and on any error nothing stays attached."""
    folder = Path(directory)
    if (folder / PATCH_DIR).is_dir():
        folder = folder / PATCH_DIR
    manifest = verify_manifest(folder, PATCHES_FORMAT, required=[PATCHES_JSON, PATCHES_TENSORS])
    fingerprint = loaded.weights_fingerprint()
    if manifest.get("weights_fingerprint") != fingerprint:
        raise CheckpointError(
            f"{folder}: these patches were made on weights with fingerprint {manifest.get('weights_fingerprint')} "
            f"({manifest.get('base_model')}, {manifest.get('dtype')}); model {loaded.name!r} as loaded ({_model_dtype(loaded)}) "
            f"has {fingerprint}. Load the model they were saved with, in dtype {manifest.get('dtype')}")
    # bounded from the header before any tensor is read: the hashes say the file is the one saved, not that it is sane
    check_tensor_file(folder / PATCHES_TENSORS, f"saved patches {folder}", MAX_PATCH_TENSORS)
    try:
        entries = json.loads((folder / PATCHES_JSON).read_text(encoding="utf-8"))
        tensors = load_file(str(folder / PATCHES_TENSORS))
    except Exception as err:  # the hashes matched, so this is a file that was never valid
        raise CheckpointError(f"{folder}: cannot read the saved patches ({type(err).__name__}: {err})") from err
    states = _checked_states(folder, entries, tensors)
    built: list[Patch] = []
    for i, (entry, state) in enumerate(zip(entries, states)):
        kind = entry.get("kind")
        try:
            cls = patch_class(kind)
            patch = cls.from_saved(entry["config"], {k: v.to(loaded.device) for k, v in state.items()}, loaded)
        except LightningEditError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, IndexError, RuntimeError) as err:
            raise CheckpointError(f"{folder}: patch {i} ({kind}) cannot be rebuilt for {loaded.name!r} "
                                  f"({type(err).__name__}: {err}); nothing was applied") from err
        if not patch.key and isinstance(entry.get("key"), str) and entry["key"]:
            patch.key = entry["key"]  # a kind that numbers its stacked patches (CaliNET) keeps its saved slot
        if patch.key != entry.get("key"):
            raise CheckpointError(f"{folder}: patch {i} ({kind}) is saved under key {entry.get('key')!r}, its kind uses {patch.key!r}")
        built.append(patch)
    attached: list[Patch] = []
    try:
        for patch in built:
            attached.append(loaded.patches.attach(patch))
    except BaseException:
        for patch in reversed(attached):
            loaded.patches.detach(patch)
        raise
    log.info("re-attached %d patch(es) (%s) saved by %s from %s", len(built), ", ".join(p.kind for p in built),
             manifest.get("method"), folder)
    return built


def _checked_states(folder: Path, entries: Any, tensors: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """Per entry, its tensors: every saved tensor declared by exactly one entry, with the declared shape and dtype,
    and finite."""
    if not isinstance(entries, list) or not all(isinstance(e, dict) and isinstance(e.get("tensors"), dict) for e in entries):
        raise CheckpointError(f"{folder / PATCHES_JSON}: expected a list of patch entries with 'kind', 'config' and 'tensors'")
    if len(entries) > MAX_PATCH_TENSORS or not all(isinstance(spec, dict) for e in entries for spec in e["tensors"].values()):
        raise CheckpointError(f"{folder / PATCHES_JSON}: expected at most {MAX_PATCH_TENSORS} patch entries, each "
                              "tensor declared as {\"shape\": [...], \"dtype\": ...}")
    states, declared = [], set()
    for i, entry in enumerate(entries):
        state = {}
        for name, spec in entry["tensors"].items():
            full = f"{i}/{name}"
            declared.add(full)
            tensor = tensors.get(full)
            if tensor is None:
                raise CheckpointError(f"{folder}: tensor {full!r} is declared but not in {PATCHES_TENSORS}")
            if list(tensor.shape) != list(spec.get("shape", [])) or dtype_name(tensor.dtype) != spec.get("dtype"):
                raise CheckpointError(f"{folder}: tensor {full!r} is {dtype_name(tensor.dtype)} {list(tensor.shape)}, declared "
                                      f"{spec.get('dtype')} {spec.get('shape')}")
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                raise CheckpointError(f"{folder}: tensor {full!r} holds NaN or infinite values; nothing was applied")
            state[name] = tensor
        states.append(state)
    extra = sorted(set(tensors) - declared)
    if extra:
        raise CheckpointError(f"{folder}: {PATCHES_TENSORS} holds tensors no patch declares: {extra[:3]}")
    return states


def save_edited_model(loaded: "LoadedModel", directory: str | Path, *, method: str, requests: Sequence[Any], record: dict,
                      base_fingerprint: Optional[str] = None, flag: str = "--save") -> Path:
    """Write the edited model as ``edit.py --save`` does (weights, tokenizer, patches, ``edits.json``, manifest).

    Built in a temporary sibling of its own (pid + random: two runs saving under one name never share it) and moved
    into place in one step: an error, a full disk or Ctrl-C leaves nothing under the target's name, and a symlink,
    a file or a non-empty folder there (before or after the work) is a ``ConfigError`` naming ``flag``."""
    final = Path(directory)
    cannot = unsaveable_patches(loaded)
    if cannot:
        raise CheckpointError(f"{flag}: patches {cannot} cannot be saved (their kind has no from_saved); nothing was written")
    with atomic_directory(final, flag) as temp:
        _write_saved_model(loaded, temp, method=method, requests=requests, record=record,
                           base_fingerprint=base_fingerprint)
        for path in [temp, *temp.rglob("*")]:  # readable by the user's group and others, like any output
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
    return final


def _write_saved_model(loaded: "LoadedModel", directory: Path, *, method: str, requests: Sequence[Any], record: dict,
                       base_fingerprint: Optional[str]) -> None:
    loaded.model.save_pretrained(directory, safe_serialization=True)
    loaded.tokenizer.save_pretrained(directory)
    kinds = [p.kind for p in loaded.patches]
    save_patches(loaded, directory, method=method, requests=requests)
    for patch in loaded.patches:  # copies in other libraries' formats (a peft adapter), listed in the manifest too
        patch.export(directory, loaded.name)
    weights_fingerprint = loaded.weights_fingerprint()
    unchanged = base_fingerprint == weights_fingerprint
    contents = {
        "weights": ("the base model's weights, unchanged by the edit" if unchanged else "the edited weights") +
                   " (model.safetensors: a plain transformers load gets them)",
        "patches": kinds,
        "patches_note": (f"{PATCH_DIR}/ holds {kinds}: load_model(DIR) or --model DIR re-attaches them; a plain "
                         "transformers load does not see them") if kinds else "none: the edit is in the weights",
    }
    (directory / RECORD_FILE).write_text(json.dumps({**record, **contents}, indent=2, default=str))
    files = [p.relative_to(directory).as_posix() for p in sorted(directory.rglob("*")) if p.is_file()
             and p != directory / MANIFEST_FILE]
    write_manifest(directory, files, SAVED_MODEL_FORMAT, method=method, base_model=loaded.name,
                   base_fingerprint=base_fingerprint, weights_fingerprint=weights_fingerprint,
                   dtype=_model_dtype(loaded), requests=_request_dicts(requests), patches=kinds)


def _claims_format(path: Path, format: str) -> bool:
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("format") == format
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return False


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf")


def check_coverage(path: Path, listed: dict) -> None:
    """The manifest covers every file of the folder (weights, configs, tokenizer: an unlisted file is one
    transformers may read unverified) and lists the weights themselves; else a ``CheckpointError`` naming the file."""
    patches_manifest = f"{PATCH_DIR}/{MANIFEST_FILE}"  # verified on its own by load_patches
    for file in sorted(p for p in path.rglob("*") if p.is_file() or p.is_symlink()):
        name = file.relative_to(path).as_posix()
        if file.is_symlink():
            raise CheckpointError(f"{file} is a symbolic link: a saved directory holds its own files, links are never "
                                  "followed; copy the file in its place or save the model again")
        if name in (MANIFEST_FILE, patches_manifest) or name in listed:
            continue
        raise CheckpointError(f"{file} is not listed in {path / MANIFEST_FILE}: a file added after saving is never "
                              "loaded unverified; remove it, or save the model again")
    weights = [n for n in listed if n.endswith(WEIGHT_SUFFIXES) and not n.startswith(PATCH_DIR + "/")]
    if not weights:
        raise CheckpointError(f"{path / MANIFEST_FILE} lists no weight file (model.safetensors): the folder is incomplete "
                              "or its manifest was rewritten; save the model again")
    index = next((n for n in listed if n.endswith(".index.json")), None)
    if index:
        try:
            shards = set(json.loads((path / index).read_text(encoding="utf-8"))["weight_map"].values())
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise CheckpointError(f"{path / index}: not a weight index ({type(err).__name__}); save the model again") from err
        missing = sorted(str(s) for s in shards if s not in listed)
        if missing:
            raise CheckpointError(f"{path / index} names {missing[0]}, which {path / MANIFEST_FILE} does not list; "
                                  "save the model again")


class SavedDirectory:
    """A directory written by ``edit.py --save``, its manifest verified (``open``), whose patches go back on the model
    it holds (``attach_patches``)."""

    def __init__(self, path: Path, manifest: Optional[dict]) -> None:
        self.path, self.manifest = path, manifest

    @classmethod
    def open(cls, path: Path) -> Optional["SavedDirectory"]:
        """None for an ordinary model directory; else the verified saved directory."""
        if not (path / MANIFEST_FILE).is_file():
            if (path / PATCH_DIR).is_dir():
                raise CheckpointError(f"{path} holds saved patches but no {MANIFEST_FILE}; save it again")
            if (path / RECORD_FILE).is_file():
                log.warning("%s has no %s (saved by an older version): loaded as an ordinary model directory, unverified",
                            path, MANIFEST_FILE)
            return None
        ours = (path / PATCH_DIR).is_dir() or (path / RECORD_FILE).is_file()
        if not ours and not _claims_format(path / MANIFEST_FILE, SAVED_MODEL_FORMAT):
            return None  # someone else's manifest.json in an ordinary model directory
        manifest = verify_manifest(path, SAVED_MODEL_FORMAT, required=["config.json"])
        check_coverage(path, manifest["files"])
        return cls(path, manifest)

    def check_weights(self, loaded: "LoadedModel") -> None:
        """The weights as loaded are the ones saved: their fingerprint is the manifest's (in the dtype they were
        saved in; a model loaded in another dtype has other values, and its files' hashes were checked anyway)."""
        recorded = (self.manifest or {}).get("weights_fingerprint")
        if not recorded or _model_dtype(loaded) != (self.manifest or {}).get("dtype"):
            return
        actual = loaded.weights_fingerprint()
        if actual != recorded:
            raise CheckpointError(
                f"{self.path / MANIFEST_FILE}: the weights loaded from {self.path} have fingerprint {actual}, the "
                f"manifest records weights_fingerprint {recorded}: the folder does not hold the model that was saved "
                "(a weight file changed, or one transformers reads is not the one listed); save it again")

    def attach_patches(self, loaded: "LoadedModel") -> list[Patch]:
        if not (self.path / PATCH_DIR).is_dir():
            return []
        return load_patches(loaded, self.path / PATCH_DIR)

    def restore(self, loaded: "LoadedModel") -> list[Patch]:
        """The model loaded from this directory made the edited one: its weights checked against the manifest
        (before any patch goes on it), then its patches attached."""
        self.check_weights(loaded)
        return self.attach_patches(loaded)


def open_saved(target: str | Path) -> Optional[SavedDirectory]:
    """The verified saved directory at ``target``; None for anything else (a hub id, an ordinary model folder)."""
    path = Path(target)
    return SavedDirectory.open(path) if path.is_dir() else None
