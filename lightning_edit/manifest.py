"""Manifests of saved artefacts (a ``--save`` directory, its patches, a saved ``EditDelta``).

A manifest is ``manifest.json`` beside the files it covers: the SHA-256 of each file plus what the files claim to be
(method, base model and its weights fingerprint, requests). It is checked before any tensor is read, so a file changed
after saving (a rewritten JSON, an altered tensor) is refused instead of applied. The hashes give *integrity* (the
files are the ones saved together), not *authenticity*: whoever can rewrite a file can rewrite the manifest too.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Sequence

from .errors import CheckpointError
from .hashing import sha256_file

MANIFEST_FILE = "manifest.json"


def write_manifest(directory: Path, files: Iterable[str], format: str, **fields: Any) -> Path:
    """Hash ``files`` (paths relative to ``directory``) and write ``directory/manifest.json`` with ``fields``."""
    directory = Path(directory)
    hashes = {name: sha256_file(directory / name) for name in sorted(files)}
    path = directory / MANIFEST_FILE
    path.write_text(json.dumps({"format": format, **fields, "files": hashes}, indent=2, default=str))
    return path


def verify_manifest(directory: Path, format: str, required: Iterable[str] = ()) -> dict:
    """The manifest of ``directory``, after checking its format, that it lists every ``required`` file, and that every
    file it lists is there with its recorded SHA-256. Raises ``CheckpointError`` naming the file at fault."""
    directory = Path(directory)
    path = directory / MANIFEST_FILE
    if not path.is_file():
        raise CheckpointError(f"{directory} has no {MANIFEST_FILE}: it was not saved by this version of lightning-edit, or "
                              "the manifest was removed; save it again")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: not valid JSON ({err}); save the directory again") from err
    if not isinstance(manifest, dict) or manifest.get("format") != format or not isinstance(manifest.get("files"), dict):
        raise CheckpointError(f"{path}: not a {format!r} manifest (format {manifest.get('format') if isinstance(manifest, dict) else None!r})")
    check_listed_files(directory, manifest["files"], required)
    return manifest


def check_listed_files(directory: Path, files: dict, required: Sequence[str] = ()) -> None:
    """Every ``required`` file is listed, and every listed file (inside ``directory``) is there with its recorded
    SHA-256; else a ``CheckpointError`` naming the file. Shared by saved edits, ``--save`` directories and editor
    checkpoints."""
    path = directory / MANIFEST_FILE
    missing = [name for name in required if name not in files]
    if missing:
        raise CheckpointError(f"{path} does not cover {missing}; the directory was altered after saving")
    for name, expected in files.items():
        target = directory / name
        if Path(name).is_absolute() or ".." in Path(name).parts:
            raise CheckpointError(f"{path} lists {name!r}, which is outside the directory")
        if not target.is_file():
            raise CheckpointError(f"{target} is missing (listed in {path}); the directory is incomplete")
        actual = sha256_file(target)
        if actual != expected:
            raise CheckpointError(f"{target} has SHA-256 {actual[:16]}…, the manifest records sha256 {str(expected)[:16]}…: "
                                  "the file changed after saving; nothing was applied")
