"""A study's cells on disk: each cell's key (its file name), the inputs it was computed from, and reading,
verifying and writing it atomically under its lock.

A *cell* is one (method, model, data, protocol, batch size, n) run of ``evaluate_editing``, written to
``<results>/cells/<key>.json`` as soon as it is finished."""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from ...atomic import atomic_write_text, exclusive_lock
from ...editors import Editor
from ...hashing import sha256_file
from ...models import LoadedModel
from .plan import safe_folder_name

# the study's logger, as named before the study became a package
log = logging.getLogger(__name__.rsplit(".", 1)[0])


def cell_key(method: str, model: str, data: str, protocol: str, batch: int, n: int, hparams: dict,
             code_versions: Optional[dict[str, int]] = None, inputs: Optional[dict] = None) -> str:
    """The cell's file name: what it ran, and a hash of what can change its results (hyperparameters, the
    method's and the evaluation's ``results_version`` once either is past 1, and ``inputs``: the records edited,
    the offset, fluency, the model's weights fingerprint and the editor checkpoint's hash, see ``cell_inputs``)."""
    hashed = dict(hparams)
    if code_versions and any(v != 1 for v in code_versions.values()):
        hashed["__code_versions__"] = code_versions
    if inputs:
        hashed["__inputs__"] = inputs
    digest = hashlib.sha256(json.dumps(hashed, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return safe_folder_name(f"{method}__{model}__{data}__{protocol}__b{batch}__n{n}__{digest}")  # one file, never a path


def device_name(loaded: LoadedModel) -> str:
    return torch.cuda.get_device_name(loaded.device) if loaded.device.type == "cuda" else loaded.device.type


# Fields added to the records after cells were first keyed by their hash, with their defaults: left out of the hash
# while at the default, so the cells of records that do not use them (every ZsRE and EasyEdit-CounterFact record)
# still verify. A field added later goes here too.
LATER_FIELDS: dict[str, object] = {"generation_prompts": (), "relation_id": None, "target_new_id": None}


def _as_json(value: object) -> object:
    """Records (``EditRequest``, ``MultiHopCase``) as plain data, for the hash of what a cell edited."""
    if hasattr(value, "to_dict"):
        record = value.to_dict()
        return {k: v for k, v in record.items() if not (k in LATER_FIELDS and v == LATER_FIELDS[k])}
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in fields(value)}
    return str(value)


def checkpoint_digest(editor: Editor) -> Optional[str]:
    """The sha256 of the trained editor's manifest file (which holds its files' sha256), None for a method without
    one. The same before and after the editor has loaded its checkpoint: a cell's key must not depend on whether an
    earlier cell of the method ran in the same process."""
    checkpoint = getattr(editor, "checkpoint", None)
    source = getattr(checkpoint, "directory", None) or getattr(editor.hparams, "editor_checkpoint", None)
    if not source:
        return None
    manifest = Path(str(source)) / "manifest.json"
    if manifest.is_file():
        return sha256_file(manifest)
    if checkpoint is not None and getattr(checkpoint, "manifest", None):  # read from elsewhere (a hub download)
        return hashlib.sha256(json.dumps(checkpoint.manifest, sort_keys=True, default=str).encode()).hexdigest()
    return str(source)


def cell_inputs(editor: Editor, items: list, offset: int, fluency: bool, weights_fingerprint: str) -> dict:
    """What a cell's results hang on besides the method's settings: the very records edited (the data file's
    contents, n and the offset), fluency, the model's weights and the trained editor, if any."""
    records = json.dumps(items, sort_keys=True, default=_as_json).encode()
    return {"records_sha256": hashlib.sha256(records).hexdigest(), "offset": offset,
            "fluency": bool(fluency), "weights_fingerprint": weights_fingerprint,
            "editor_checkpoint": checkpoint_digest(editor)}


def read_cell(path: Path, inputs: dict, warn: bool = True) -> Optional[dict]:
    """The cell at ``path`` if it is whole and was computed from ``inputs``; else None (``warn``: say why, since it
    will be recomputed). Never an error: a torn or stale cell is only a cell to compute again."""
    if not path.is_file():
        return None
    try:
        cell = json.loads(path.read_text(encoding="utf-8"))
        why = None if isinstance(cell, dict) and isinstance(cell.get("summary"), dict) else "not a cell object"
        if why is None and cell.get("inputs") != inputs:
            why = f"computed from other inputs ({cell.get('inputs')!r}, this study has {inputs!r})"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        cell, why = None, f"{type(err).__name__}: {err}"
    if why is None:
        return cell
    if warn:
        log.warning("study cell %s is unusable (%s); computing it again", path, why)
    return None


def cached_or_computed(cells_dir: Path, key: str, inputs: dict, compute: Optional[Callable[[], Optional[dict]]]
                       ) -> Optional[dict]:
    """The cell ``key`` from ``cells_dir`` if it verifies against ``inputs``, else ``compute()`` written there
    (None: nothing computed, nothing written; ``compute`` None: read only).

    Computing holds the cell's lock, so two studies writing into one folder compute each cell once, and the file is
    written atomically (temporary, fsync, replace)."""
    path = cells_dir / f"{key}.json"
    cached = read_cell(path, inputs, warn=False)  # another study may be writing it: look again under the lock
    if cached is not None or compute is None:
        return cached
    with exclusive_lock(cells_dir / ".locks" / key, f"study cell {path}"):
        cached = read_cell(path, inputs)
        if cached is not None:
            return cached
        result = compute()
        if result is None:
            return None
        result["inputs"] = inputs
        # compact: a batch of 1000 keeps 1000 requests' values (1.1 MB indented, 0.75 MB like this)
        atomic_write_text(path, json.dumps(result, separators=(",", ":"), default=str))
    return result


# What the machine's speed and load make vary from run to run: clocks and peak memory, never a score.
MEASURED_FIELDS = frozenset({"cell_seconds", "edit_seconds", "edit_seconds_mean", "prepare_seconds",
                             "scoring_seconds_per_request", "seconds_per_request", "seconds_per_case",
                             "peak_memory_mb", "time_split_seconds", "earlier_seconds"})


def cell_results(cell: object) -> object:
    """``cell`` less its clocks and peak memory (``MEASURED_FIELDS``, at any depth): what two runs of one cell
    must agree on exactly where the method is deterministic (a serial study and one on Ray workers)."""
    if isinstance(cell, dict):
        return {k: cell_results(v) for k, v in cell.items() if k not in MEASURED_FIELDS}
    if isinstance(cell, list):
        return [cell_results(v) for v in cell]
    return cell
