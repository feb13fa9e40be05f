"""Shareable editor checkpoints: a directory anyone can copy, publish and load safely.

A trained editor (MEND, KE, SERAC) is saved as::

    <dir>/editor.safetensors   the editor network's tensors (never a pickle)
    <dir>/config.yaml          the method's hyperparameters (architecture included)
    <dir>/manifest.json        method, base model name + weights fingerprint, training data/steps,
                               validation metrics, package versions, sha256 of every other file

Loading checks every listed file against its sha256 and the base model's ``weights_fingerprint()``
against the one the editor was trained on, and raises ``CheckpointError`` on any mismatch.
"""
from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch
from safetensors.torch import load_file, save_file

from .errors import CheckpointError
from .hashing import sha256_file
from .models.loading import LoadedModel

WEIGHTS_FILE = "editor.safetensors"
CONFIG_FILE = "config.yaml"
MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 1





def package_versions() -> dict[str, str]:
    import lightning
    import safetensors
    import torchmetrics
    import transformers

    from . import __version__

    return {"lightning_edit": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "lightning": lightning.__version__, "torchmetrics": torchmetrics.__version__,
            "safetensors": safetensors.__version__, "python": platform.python_version()}


@dataclass
class EditorCheckpoint:
    """What a checkpoint directory holds, verified."""

    directory: Path
    state_dict: dict[str, torch.Tensor]
    config: dict
    manifest: dict = field(default_factory=dict)


def save_editor_checkpoint(directory: Union[str, Path], *, method: str, state_dict: Mapping[str, torch.Tensor],
                           config: Mapping[str, Any], loaded: LoadedModel, training: Optional[Mapping[str, Any]] = None,
                           metrics: Optional[Mapping[str, float]] = None,
                           base_fingerprint: Optional[str] = None) -> Path:
    """Write weights, config and manifest (last, so a directory with a manifest is complete)."""
    import yaml

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    manifest_path = directory / MANIFEST_FILE
    if manifest_path.exists():
        manifest_path.unlink()  # a half-rewritten directory must not pass as complete
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    save_file(tensors, str(directory / WEIGHTS_FILE), metadata={"method": method, "base_model": loaded.name})
    (directory / CONFIG_FILE).write_text(yaml.safe_dump(dict(config), sort_keys=True))
    manifest = {
        "format_version": FORMAT_VERSION,
        "method": method,
        "base_model": {"name": loaded.name, "family": loaded.layout.family,
                       "weights_fingerprint": base_fingerprint or loaded.weights_fingerprint()},
        "training": dict(training or {}),
        "validation_metrics": {k: float(v) for k, v in (metrics or {}).items()},
        "versions": package_versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "files": {name: sha256_file(directory / name) for name in (WEIGHTS_FILE, CONFIG_FILE)},
    }
    manifest_path.write_text(json.dumps(manifest, indent=2, default=str))
    return directory


def read_manifest(directory: Union[str, Path]) -> dict:
    directory = Path(directory)
    path = directory / MANIFEST_FILE
    if not directory.is_dir():
        raise CheckpointError(f"editor checkpoint {directory} is not a directory; pass the folder train.py wrote "
                              f"(e.g. checkpoints/editors/mend-smollm2-135m)")
    if not path.exists():
        raise CheckpointError(f"editor checkpoint {directory} has no {MANIFEST_FILE}; it is incomplete or not an editor "
                              f"checkpoint (train one with `python train.py METHOD MODEL`)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path} is not valid JSON ({err}); the checkpoint is damaged") from err


def verify_files(directory: Union[str, Path], manifest: Optional[dict] = None) -> dict:
    """Check every file listed in the manifest against its sha256; return the manifest."""
    directory = Path(directory)
    manifest = manifest or read_manifest(directory)
    files = manifest.get("files") or {}
    for required in (WEIGHTS_FILE, CONFIG_FILE):
        if required not in files:
            raise CheckpointError(f"{directory / MANIFEST_FILE} lists no sha256 for {required}; the checkpoint is damaged")
    for name, expected in files.items():
        path = directory / name
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise CheckpointError(f"{directory / MANIFEST_FILE} names file {name!r} outside the checkpoint directory")
        if not path.exists():
            raise CheckpointError(f"editor checkpoint {directory}: file {name} listed in the manifest is missing")
        actual = sha256_file(path)
        if actual != expected:
            raise CheckpointError(f"editor checkpoint {directory}: {name} has sha256 {actual[:16]}…, the manifest says "
                                  f"{expected[:16]}…; the file was changed or corrupted, refusing to load it")
    return manifest


def load_editor_checkpoint(directory: Union[str, Path], *, method: str, loaded: Optional[LoadedModel] = None,
                           check_base: bool = True) -> EditorCheckpoint:
    """Verify and read a checkpoint for ``method``; with ``loaded``, refuse one trained on other weights."""
    import yaml

    directory = Path(directory)
    manifest = verify_files(directory)
    if manifest.get("method") != method:
        raise CheckpointError(f"editor checkpoint {directory} holds a {manifest.get('method')!r} editor, not {method!r}; "
                              f"use --method {manifest.get('method')} or a {method} checkpoint")
    if loaded is not None and check_base:
        base = manifest.get("base_model") or {}
        fingerprint = loaded.weights_fingerprint()
        if base.get("weights_fingerprint") != fingerprint:
            raise CheckpointError(
                f"editor checkpoint {directory} was trained on base model {base.get('name')!r} (weights fingerprint "
                f"{base.get('weights_fingerprint')}), but the model given is {loaded.name!r} (fingerprint {fingerprint}); "
                f"an editor only works on the exact weights it was trained on: load {base.get('name')!r} unedited, or "
                f"train an editor for this model with `python train.py {method} {loaded.name}`")
    state = load_file(str(directory / WEIGHTS_FILE))  # safetensors: no pickle is ever read
    config = yaml.safe_load((directory / CONFIG_FILE).read_text()) or {}
    return EditorCheckpoint(directory=directory, state_dict=state, config=config, manifest=manifest)
