"""Shareable editor checkpoints: a directory anyone can copy, publish and load safely.

A trained editor (MEND, MALMEN, KE, SERAC) is saved as::

    <dir>/editor.safetensors   the editor network's tensors (never a pickle)
    <dir>/config.yaml          the method's hyperparameters (architecture included)
    <dir>/manifest.json        method, base model name + weights fingerprint, training data/steps,
                               validation metrics, package versions, sha256 of every other file
    <dir>/README.md            a model card generated from the manifest (documentation, not verified)

Loading checks every listed file against its sha256 and the base model's ``weights_fingerprint()``
against the one the editor was trained on, and raises ``CheckpointError`` on any mismatch. The same
directory is what ``EditorCheckpoint.save_pretrained`` writes, ``push_to_hub`` uploads and
``from_pretrained`` (a folder or a hub id ``user/repo``, fetched with ``snapshot_download``) reads.
"""
from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import torch
from safetensors.torch import load_file, save_file

from .atomic import atomic_directory
from .errors import CheckpointError, ModelNotAvailableError
from .hashing import sha256_file
from .manifest import check_listed_files
from .tensor_limits import check_tensor_file
from .models.loading import LoadedModel
from .version import package_versions

WEIGHTS_FILE = "editor.safetensors"
CONFIG_FILE = "config.yaml"
MANIFEST_FILE = "manifest.json"
CARD_FILE = "README.md"
EDITOR_FILES = (WEIGHTS_FILE, CONFIG_FILE, MANIFEST_FILE, CARD_FILE)
FORMAT_VERSION = 1
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*(@[A-Za-z0-9][\w.-]*)?$")  # user/repo[@revision]
MAX_EDITOR_TENSORS = 4096  # MEND/KE/SERAC networks hold tens of tensors; a file declaring more is not one of them
# the upstream hub model of registered models shipped as a GGUF (the card's ``base_model``)
log = logging.getLogger(__name__)
GGUF_UPSTREAM = {"smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct"}

@dataclass
class EditorCheckpoint:
    """What a checkpoint directory holds, verified."""

    directory: Path
    state_dict: dict[str, torch.Tensor]
    config: dict
    manifest: dict = field(default_factory=dict)

    @classmethod
    def from_pretrained(cls, source: Union[str, Path], *, method: Optional[str] = None,
                        loaded: Optional[LoadedModel] = None, revision: Optional[str] = None,
                        cache_dir: Optional[Union[str, Path]] = None, token: Optional[str] = None) -> "EditorCheckpoint":
        """Verify and read a checkpoint folder or hub id (``user/repo``); ``method`` defaults to the manifest's."""
        directory = resolve_editor_dir(source, revision=revision, cache_dir=cache_dir, token=token)
        method = method or str(read_manifest(directory).get("method"))
        return load_editor_checkpoint(directory, method=method, loaded=loaded)

    def save_pretrained(self, save_directory: Union[str, Path], *, repo_id: Optional[str] = None) -> Path:
        """Copy the verified files and the manifest byte for byte, and (re)write the model card."""
        dest = Path(save_directory)
        dest.mkdir(parents=True, exist_ok=True)
        if dest.resolve() != self.directory.resolve():
            (dest / MANIFEST_FILE).unlink(missing_ok=True)
            for name in self.manifest["files"]:
                shutil.copyfile(self.directory / name, dest / name)
            shutil.copyfile(self.directory / MANIFEST_FILE, dest / MANIFEST_FILE)
        write_model_card(dest, repo_id=repo_id)
        verify_files(dest)  # what was copied is what was verified on load
        return dest

    def push_to_hub(self, repo_id: str, *, token: Optional[str] = None, private: Optional[bool] = None,
                    commit_message: str = "Upload lightning-edit editor") -> Any:
        """Create ``repo_id`` (if needed) and upload the checkpoint with its model card; returns the commit info."""
        from huggingface_hub import HfApi

        api = HfApi(token=token)
        with tempfile.TemporaryDirectory() as tmp:
            folder = self.save_pretrained(Path(tmp) / "editor", repo_id=repo_id)
            api.create_repo(repo_id, token=token, private=private, exist_ok=True)
            return api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=commit_message, token=token,
                                     allow_patterns=list(EDITOR_FILES))


def is_hub_id(source: Union[str, Path]) -> bool:
    """``user/repo`` or ``user/repo@revision`` that is not an existing local path (a ``Path`` is always local)."""
    return isinstance(source, str) and bool(HUB_ID.match(source)) and not Path(source).exists()


def split_hub_id(source: str, revision: Optional[str] = None) -> tuple[str, Optional[str]]:
    """``user/repo@rev`` → (``user/repo``, ``rev``); a ``revision=`` that contradicts the ``@rev`` is refused."""
    repo, _, pinned = source.partition("@")
    if pinned and revision and pinned != revision:
        raise CheckpointError(f"editor checkpoint {source!r} names revision {pinned!r} but revision={revision!r} was "
                              "given too; give one of them")
    return repo, pinned or revision


def resolve_editor_dir(source: Union[str, Path], *, revision: Optional[str] = None,
                       cache_dir: Optional[Union[str, Path]] = None, token: Optional[str] = None) -> Path:
    """A local folder as is; a hub id (``user/repo[@revision]``) downloaded (only the checkpoint files) into the hub
    cache. Without a revision the newest commit is read, with a warning naming it (the folder's name is the commit
    the files came from: what the edit records as its editor)."""
    if not is_hub_id(source):
        return Path(source)
    from huggingface_hub import snapshot_download
    from huggingface_hub.constants import is_offline_mode

    repo, pinned = split_hub_id(str(source), revision)
    try:
        folder = Path(snapshot_download(repo, revision=pinned, cache_dir=cache_dir, token=token,
                                        allow_patterns=list(EDITOR_FILES)))
        if pinned is None:
            log.warning("editor checkpoint %s names no revision: read at commit %s; pin it as %s@%s to read the same "
                        "editor again", source, folder.name, repo, folder.name)
        return folder
    except Exception as err:  # offline, no network, unknown/private repo: one line, no traceback
        reason = "offline mode (HF_HUB_OFFLINE is set) and it is not in the cache" if is_offline_mode() else \
            f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else 'no detail'}"
        raise ModelNotAvailableError(
            f"editor checkpoint {source!r} could not be fetched from the Hugging Face Hub ({reason}); download it where "
            f"the Hub is reachable (`hf download {source} --local-dir DIR`) and pass the local folder: --editor DIR "
            f"(if {source!r} was meant as a local folder, it does not exist)") from None


def hub_base_model(name: str) -> str:
    """The hub id of a base model for the card's ``base_model``: the registry's, else the name itself."""
    from .models.registry import MODELS

    spec = MODELS.get(name)
    return (spec.hub_id if spec is not None and spec.hub_id else None) or GGUF_UPSTREAM.get(name, name)


def model_card(manifest: Mapping[str, Any], repo_id: Optional[str] = None) -> str:
    """README.md (Hugging Face model card) for a checkpoint, from its manifest."""
    import yaml

    method, base, training = str(manifest.get("method")), dict(manifest.get("base_model") or {}), dict(manifest.get("training") or {})
    name = str(base.get("name"))
    meta = {"library_name": "lightning-edit", "tags": ["knowledge-editing", method], "base_model": hub_base_model(name)}
    metrics = manifest.get("validation_metrics") or {}
    source = repo_id or "PATH_OR_USER/REPO"
    lines = [
        "---", yaml.safe_dump(meta, sort_keys=False).strip(), "---", "",
        f"# {method.upper()} editor for {name}", "",
        f"A trained **{method.upper()}** knowledge editor made with lightning-edit. It edits only the exact base "
        f"weights it was trained on: loading refuses any other model (weights fingerprint below).", "",
        "| | |", "|---|---|",
        f"| Method | `{method}` |",
        f"| Base model | `{name}` (`{meta['base_model']}`{', dequantized from its GGUF' if name in GGUF_UPSTREAM else ''}, "
        f"family `{base.get('family')}`) |",
        f"| Base weights fingerprint | `{base.get('weights_fingerprint')}` |",
        f"| Training data | `{training.get('dataset')}`, {training.get('n_train')} records |",
        f"| Validation data | {training.get('val_dataset') or 'held out from the training data'}, {training.get('n_val')} records |",
        f"| Training steps | {training.get('steps')} |",
        f"| Created | {manifest.get('created')}, lightning-edit {(manifest.get('versions') or {}).get('lightning_edit')} |",
        "", "## Validation scores", "",
        "The last validation of the exported weights, as recorded by training:", "",
        "| metric | value |", "|---|---|",
        *(f"| `{k}` | {float(v):.4f} |" for k, v in sorted(metrics.items())),
        *([] if metrics else ["| (none recorded) | |"]),
        "", "## Use", "", "```bash",
        f"python edit.py --method {method} --model {name} --editor {source}", "```", "", "```python",
        "from lightning_edit.editors import get_editor_class", "from lightning_edit.models import load_model", "",
        f"loaded = load_model({name!r})",
        f"editor = get_editor_class({method!r}).from_pretrained({source!r}, loaded)  # verified: files and base weights",
        "```", "",
        "## Files", "",
        f"`{WEIGHTS_FILE}` (safetensors, no pickle), `{CONFIG_FILE}` (architecture), `{MANIFEST_FILE}` (what it was "
        "made from, and the sha256 of the other files: a changed file is refused on load). This card is generated "
        "from the manifest; the manifest is authoritative.", "",
    ]
    return "\n".join(lines)


def write_model_card(directory: Union[str, Path], manifest: Optional[Mapping[str, Any]] = None,
                     repo_id: Optional[str] = None) -> Path:
    path = Path(directory) / CARD_FILE
    path.write_text(model_card(manifest if manifest is not None else read_manifest(directory), repo_id=repo_id))
    return path


def save_editor_checkpoint(directory: Union[str, Path], *, method: str, state_dict: Mapping[str, torch.Tensor],
                           config: Mapping[str, Any], loaded: LoadedModel, training: Optional[Mapping[str, Any]] = None,
                           metrics: Optional[Mapping[str, float]] = None,
                           base_fingerprint: Optional[str] = None, flag: str = "editor checkpoint folder") -> Path:
    """Write weights, config, model card and manifest into a new folder ``directory``, atomically: everything is
    built in a temporary sibling and moved into place in one step, so a reader (or a crash) never sees half an
    editor. An existing non-empty folder, a file or a symlink at ``directory`` is a ``ConfigError`` naming ``flag``
    (train.py's ``--output``): nothing already there is overwritten."""
    import yaml

    directory = Path(directory)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    with atomic_directory(directory, flag) as temp:
        save_file(tensors, str(temp / WEIGHTS_FILE), metadata={"method": method, "base_model": loaded.name})
        (temp / CONFIG_FILE).write_text(yaml.safe_dump(dict(config), sort_keys=True))
        manifest = {
            "format_version": FORMAT_VERSION,
            "method": method,
            "base_model": {"name": loaded.name, "family": loaded.layout.family,
                           "weights_fingerprint": base_fingerprint or loaded.weights_fingerprint()},
            "training": dict(training or {}),
            "validation_metrics": {k: float(v) for k, v in (metrics or {}).items()},
            "versions": package_versions(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "files": {name: sha256_file(temp / name) for name in (WEIGHTS_FILE, CONFIG_FILE)},
        }
        write_model_card(temp, json.loads(json.dumps(manifest, default=str)))
        (temp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, default=str))
    return directory


def read_manifest(directory: Union[str, Path]) -> dict:
    directory = Path(directory)
    path = directory / MANIFEST_FILE
    if not directory.is_dir():
        raise CheckpointError(f"editor checkpoint {directory} is not a directory; pass the folder train.py wrote "
                              f"(e.g. checkpoints/editors/mend-smollm2-135m) or a hub id user/repo")
    if not path.exists():
        raise CheckpointError(f"editor checkpoint {directory} has no {MANIFEST_FILE}; it is incomplete or not an editor "
                              f"checkpoint (train one with `python train.py METHOD MODEL`)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise CheckpointError(f"{path} is not UTF-8 text ({err.reason}); the checkpoint is damaged") from None
    except (json.JSONDecodeError, RecursionError) as err:
        raise CheckpointError(f"{path} is not valid JSON ({err}); the checkpoint is damaged") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files", {}), dict):
        raise CheckpointError(f"{path} is not an editor manifest (a JSON object whose 'files' maps file names to "
                              "sha256); the checkpoint is damaged or not an editor checkpoint")
    return manifest


def verify_files(directory: Union[str, Path], manifest: Optional[dict] = None) -> dict:
    """Check every file listed in the manifest against its sha256; return the manifest."""
    directory = Path(directory)
    manifest = manifest or read_manifest(directory)
    check_listed_files(directory, manifest.get("files") or {}, required=(WEIGHTS_FILE, CONFIG_FILE))
    return manifest


def load_editor_checkpoint(directory: Union[str, Path], *, method: str, loaded: Optional[LoadedModel] = None,
                           check_base: bool = True) -> EditorCheckpoint:
    """Verify and read a checkpoint (folder or hub id) for ``method``; with ``loaded``, refuse one trained on other weights."""
    import yaml

    directory = resolve_editor_dir(directory)
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
    check_tensor_file(directory / WEIGHTS_FILE, f"editor checkpoint {directory}", MAX_EDITOR_TENSORS)
    state = load_file(str(directory / WEIGHTS_FILE))  # safetensors: no pickle is ever read
    try:
        config = yaml.safe_load((directory / CONFIG_FILE).read_text(encoding="utf-8")) or {}
    except (UnicodeDecodeError, yaml.YAMLError, RecursionError) as err:
        raise CheckpointError(f"{directory / CONFIG_FILE} is not valid UTF-8 YAML ({type(err).__name__}); the "
                              "checkpoint is damaged") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{directory / CONFIG_FILE} is not a mapping of hyperparameters; the checkpoint is damaged")
    return EditorCheckpoint(directory=directory, state_dict=state, config=config, manifest=manifest)
