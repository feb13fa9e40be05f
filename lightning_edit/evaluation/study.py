"""The EasyEdit study in one command: tables 2-4 and figures 5-7, cached per cell and resumable.

A *cell* is one (method, model, data, protocol, batch size, n) run of ``evaluate_editing``. Each finished cell
is written to ``<results>/cells/<key>.json`` at once, so a rerun only computes missing or changed cells (the key
includes a hash of the method's hyperparameters, less the speed-only ones, and of the method's and the evaluation's
``results_version`` once bumped) and an interrupted study resumes where it stopped.
"""
from __future__ import annotations

import csv
import gc
import hashlib
import io
import json
import logging
import os
import re
import time
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Optional

import torch
import yaml

from ..atomic import atomic_write_text, exclusive_lock, temporary_sibling
from ..data import load_requests
from ..data.multihop import load_multihop_cases
from ..editors import Editor, build_editor, get_editor_class
from ..errors import ConfigError, LightningEditError
from ..hashing import sha256_file
from ..metrics.intervals import bootstrap_interval
from ..models import LoadedModel, load_model
from ..paths import STUDY_CONFIGS
from ..version import package_versions
from .pre_edit import default_pre_cache
from .multihop import evaluate_multihop
from .protocols import EVALUATION_VERSION, evaluate_editing

log = logging.getLogger(__name__)


@dataclass
class StudyConfig:
    name: str
    model: str = "smollm2-135m"
    methods: list[str] = field(default_factory=lambda: ["ft-l", "ft-m"])
    datasets: dict[str, int] = field(default_factory=lambda: {"zsre": 10, "counterfact": 10})  # records per single cell
    portability_data: str = "zsre"
    batch_data: str = "counterfact"
    batch_sizes: list[int] = field(default_factory=lambda: [1, 10])
    # method → its batch sizes (the study batches some methods further than others: MEMIT to 1000); when given,
    # only the methods listed get batch cells, otherwise every method that batches gets ``batch_sizes``
    batch_sizes_by_method: dict[str, list[int]] = field(default_factory=dict)
    sequential_data: str = "zsre"
    sequential_ns: list[int] = field(default_factory=lambda: [1, 10])
    sequential_offset: int = 0
    sequential_methods: Optional[list[str]] = None  # None: every method
    sequential_batch_size: int = 1  # >1: sequential batches (MEMIT/AlphaEdit users' protocol); methods without batches use 1
    multihop_data: str = "mquake"  # MQuAKE cases for the multi-hop protocol (evaluation/multihop.py)
    multihop_n: int = 0  # cases per multi-hop cell; 0: no multi-hop cells
    multihop_methods: Optional[list[str]] = None  # None: every method
    editor_checkpoints: dict[str, str] = field(default_factory=dict)  # learnt methods: method → checkpoint dir
    overrides: dict[str, dict] = field(default_factory=dict)  # method → hyperparameter overrides
    fluency: bool = False

    @classmethod
    def load(cls, name_or_path: str, **replace) -> "StudyConfig":
        path = Path(name_or_path)
        if not path.exists():
            path = STUDY_CONFIGS / f"{name_or_path}.yaml"
        if not path.exists():
            known = sorted(p.stem for p in STUDY_CONFIGS.glob("*.yaml"))
            raise ConfigError(f"study configuration {name_or_path!r} not found; known: {known} (or give a YAML path)")
        values = _read_study_yaml(path)
        values.update({k: v for k, v in replace.items() if v is not None})
        unknown = sorted(map(str, set(values) - {f.name for f in fields(cls)}))
        if unknown:
            raise ConfigError(f"{path}: unknown field(s) {unknown}; known: {sorted(f.name for f in fields(cls))}")
        if "name" not in values:
            raise ConfigError(f"{path}: field 'name' is missing; add e.g. 'name: my-study' (it names the results folder)")
        config = cls(**values)
        config.check(str(path))
        return config

    def check(self, where: str = "study configuration") -> None:
        """Every field of its type (a YAML ``methods: rome`` is a string, not a list), every method known, the
        name safe as a folder name: a ``ConfigError`` naming the field and the fix, before any model loads."""
        check_study_fields(self, where)


# a study's name becomes a folder name (results/<name>-<model>): no separators, no leading dot, no "..".
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def safe_folder_name(text: str) -> str:
    """``text`` with every character outside [A-Za-z0-9._-] replaced by ``_`` (a model hub id or path in a folder
    name stays one folder, never a way out of it)."""
    out = re.sub(r"[^A-Za-z0-9._-]", "_", text).lstrip(".")
    return out or "_"


def _read_study_yaml(path: Path) -> dict:
    """The YAML mapping of a study file; anything else (not a file, not UTF-8, not YAML, not a mapping) is a
    ``ConfigError`` naming the file."""
    if not path.is_file():
        raise ConfigError(f"study configuration {path} is not a file; give a YAML file or a name in {STUDY_CONFIGS}")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise ConfigError(f"study configuration {path} is not UTF-8 text ({err.reason}); save it as UTF-8") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"study configuration {path} is not valid YAML: {err}".splitlines()[0]) from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"study configuration {path} is a YAML {type(values).__name__}, not a mapping of fields "
                          "(name: ..., methods: [...], datasets: {...}); see configs/study/quick.yaml")
    return values


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _need(ok: bool, where: str, name: str, what: str, value: object) -> None:
    if not ok:
        raise ConfigError(f"{where}: field '{name}' must be {what}, got {value!r} ({type(value).__name__})")


def _check_methods(where: str, name: str, value: object, allow_none: bool = False, allow_empty: bool = False) -> None:
    from ..editors import EDITORS

    if value is None and allow_none:
        return
    _need(isinstance(value, list) and all(isinstance(m, str) for m in value), where, name,
          "a YAML list of method names, e.g. [rome, memit]", value)
    if not value and not allow_empty:
        raise ConfigError(f"{where}: field '{name}' is an empty list; name at least one method of: {', '.join(sorted(EDITORS))}")
    unknown = [m for m in value if m not in EDITORS]
    if unknown:
        raise ConfigError(f"{where}: field '{name}' names unknown method(s) {unknown}; choose from: {', '.join(sorted(EDITORS))}")


def _check_counts(where: str, name: str, value: object, minimum: int = 1) -> None:
    _need(isinstance(value, list) and all(_is_int(v) and v >= minimum for v in value), where, name,
          f"a YAML list of integers >= {minimum}, e.g. [1, 10]", value)


def check_study_fields(c: "StudyConfig", where: str) -> None:
    """Type and range of every field of a study configuration (see ``StudyConfig.check``)."""
    _need(isinstance(c.name, str) and bool(SAFE_NAME.fullmatch(c.name)), where, "name",
          "a name of letters, digits, '.', '_' or '-' (it becomes a folder name; no '/' or '..')", c.name)
    for name in ("model", "portability_data", "batch_data", "sequential_data", "multihop_data"):
        value = getattr(c, name)
        _need(isinstance(value, str) and bool(value.strip()), where, name, "a non-empty string", value)
    _check_methods(where, "methods", c.methods)
    _check_methods(where, "sequential_methods", c.sequential_methods, allow_none=True, allow_empty=True)
    _check_methods(where, "multihop_methods", c.multihop_methods, allow_none=True, allow_empty=True)
    _need(isinstance(c.datasets, dict) and bool(c.datasets) and all(
        isinstance(k, str) and k.strip() and _is_int(v) and v > 0 for k, v in c.datasets.items()), where, "datasets",
        "a non-empty YAML mapping of data set → records per cell, e.g. {zsre: 10, counterfact: 10}", c.datasets)
    _check_counts(where, "batch_sizes", c.batch_sizes)
    _check_counts(where, "sequential_ns", c.sequential_ns)
    _need(isinstance(c.batch_sizes_by_method, dict), where, "batch_sizes_by_method",
          "a YAML mapping of method → list of batch sizes", c.batch_sizes_by_method)
    _check_methods(where, "batch_sizes_by_method", list(c.batch_sizes_by_method), allow_empty=True)
    for method, sizes in c.batch_sizes_by_method.items():
        _check_counts(where, f"batch_sizes_by_method.{method}", sizes)
    for name, minimum in (("sequential_offset", 0), ("sequential_batch_size", 1), ("multihop_n", 0)):
        value = getattr(c, name)
        _need(_is_int(value) and value >= minimum, where, name, f"an integer >= {minimum}", value)
    _need(isinstance(c.editor_checkpoints, dict) and all(isinstance(v, str) and v for v in c.editor_checkpoints.values()),
          where, "editor_checkpoints", "a YAML mapping of method → checkpoint folder (or hub id)", c.editor_checkpoints)
    _check_methods(where, "editor_checkpoints", list(c.editor_checkpoints), allow_empty=True)
    _need(isinstance(c.overrides, dict) and all(isinstance(v, dict) for v in c.overrides.values()), where, "overrides",
          "a YAML mapping of method → mapping of hyperparameters, e.g. {rome: {v_lr: 0.5}}", c.overrides)
    _check_methods(where, "overrides", list(c.overrides), allow_empty=True)
    _need(isinstance(c.fluency, bool), where, "fluency", "true or false", c.fluency)


def _cell_key(method: str, model: str, data: str, protocol: str, batch: int, n: int, hparams: dict,
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


def _device_name(loaded: LoadedModel) -> str:
    return torch.cuda.get_device_name(loaded.device) if loaded.device.type == "cuda" else loaded.device.type


def _as_json(value: object) -> object:
    """Records (``EditRequest``, ``MultiHopCase``) as plain data, for the hash of what a cell edited."""
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in fields(value)}
    return str(value)


def _checkpoint_digest(editor: Editor) -> Optional[str]:
    """The sha256 of the trained editor's manifest (which holds its files' sha256), None for a method without one."""
    checkpoint = getattr(editor, "checkpoint", None)
    if checkpoint is not None and getattr(checkpoint, "manifest", None):
        return hashlib.sha256(json.dumps(checkpoint.manifest, sort_keys=True, default=str).encode()).hexdigest()
    source = getattr(editor.hparams, "editor_checkpoint", None)
    if not source:
        return None
    manifest = Path(str(source)) / "manifest.json"
    return sha256_file(manifest) if manifest.is_file() else str(source)


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


class Study:
    def __init__(self, config: StudyConfig, results_dir: Path, data_dir: Optional[str] = None, progress: bool = True,
                 loaded: Optional[LoadedModel] = None, compute: bool = True, device: str = "cpu"):
        self.config = config
        self.results_dir = Path(results_dir)
        self.cells_dir = self.results_dir / "cells"
        self.cells_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir = data_dir
        self.progress = progress
        self.compute = compute  # False: tables and figures from the cells on disk only (missing cells stay missing)
        self.skipped: dict[str, str] = {}
        # One editor per method, kept while that method's cells run: what it prepares once (statistics, context
        # prefixes, memory pools, sentence encoders, trained checkpoints) serves them all instead of being rebuilt.
        self._editors: dict[str, Editor] = {}
        self._loaded: Optional[LoadedModel] = loaded  # loaded on first use
        self._weights_fingerprint: Optional[str] = None  # of the unedited model, part of every cell's key
        self.device = device
        self._pre_cache = default_pre_cache()  # pre-edit scores shared by every method and cell on this model
        self._multihop_pre: dict[tuple, dict] = {}  # pre-edit rows of MQuAKE cases, shared by the multi-hop cells

    @property
    def loaded(self) -> LoadedModel:
        if self._loaded is None:
            self._loaded = load_model(self.config.model, device=self.device)
        return self._loaded

    def _overrides(self, method: str) -> dict:
        out = dict(self.config.overrides.get(method, {}))
        if method in self.config.editor_checkpoints:
            out["editor_checkpoint"] = self.config.editor_checkpoints[method]
        return out

    def _editor(self, method: str) -> Editor:
        if method not in self._editors:
            self._editors[method] = build_editor(method, self.loaded, self._overrides(method))
        return self._editors[method]

    @staticmethod
    def _batching_methods(methods: list[str]) -> list[str]:
        out = []
        for m in methods:
            try:
                if get_editor_class(m).supports_batch:
                    out.append(m)
            except ConfigError:
                pass
        return out

    def cell(self, method: str, data: str, protocol: str, n: int, batch: int = 1, offset: int = 0) -> Optional[dict]:
        """Run (or read from cache) one cell; None if the method cannot run here (reason kept in ``skipped``).

        A cached cell is used only when it verifies (whole JSON, the same inputs recorded, see ``cell_inputs``); a
        torn or stale one is recomputed with a warning. Computing holds the cell's lock, so two studies writing
        into one folder compute each cell once, and the file is written atomically (temporary, fsync, replace)."""
        try:
            editor = self._editor(method)
            items = self._cell_data(data, protocol, n, offset)
        except LightningEditError as err:
            self.skipped[method] = str(err)
            return None
        inputs = self.cell_inputs(editor, items, offset)
        key = _cell_key(method, self.config.model, data, protocol, batch, n, editor.hparams.result_dict(),
                        {"editor": editor.results_version, "evaluation": EVALUATION_VERSION}, inputs)
        path = self.cells_dir / f"{key}.json"
        cached = read_cell(path, inputs, warn=False)  # another study may be writing it: look again under the lock
        if cached is not None or not self.compute:
            return cached
        with exclusive_lock(self.cells_dir / ".locks" / key, f"study cell {path}"):
            cached = read_cell(path, inputs)
            if cached is not None:
                return cached
            result = self._compute_cell(method, editor, data, protocol, n, batch, items)
            if result is None:
                return None
            result["inputs"] = inputs
            # compact: a batch of 1000 keeps 1000 requests' values (1.1 MB indented, 0.75 MB like this)
            atomic_write_text(path, json.dumps(result, separators=(",", ":"), default=str))
        return result

    def _cell_data(self, data: str, protocol: str, n: int, offset: int) -> list:
        if protocol == "multihop":
            return load_multihop_cases(data, n=n, data_dir=self.data_dir, offset=offset)
        return load_requests(data, n=n, data_dir=self.data_dir, offset=offset)

    def cell_inputs(self, editor: Editor, items: list, offset: int) -> dict:
        """What a cell's results hang on besides the method's settings: the very records edited (the data file's
        contents, n and the offset), fluency, the model's weights and the trained editor, if any."""
        if self._weights_fingerprint is None:
            self._weights_fingerprint = self.loaded.weights_fingerprint()  # once: cells undo their edits
        records = json.dumps(items, sort_keys=True, default=_as_json).encode()
        return {"records_sha256": hashlib.sha256(records).hexdigest(), "offset": offset,
                "fluency": bool(self.config.fluency), "weights_fingerprint": self._weights_fingerprint,
                "editor_checkpoint": _checkpoint_digest(editor)}

    def _compute_cell(self, method: str, editor: Editor, data: str, protocol: str, n: int, batch: int,
                      items: list) -> Optional[dict]:
        start = time.perf_counter()
        try:
            if protocol == "multihop":  # all edits of each MQuAKE case together, its questions scored
                report = evaluate_multihop(self.loaded, editor, items, progress=self.progress, pre_scores=self._multihop_pre)
            else:
                report = evaluate_editing(self.loaded, editor, items, protocol=protocol, batch_size=batch,
                                          fluency=self.config.fluency, progress=self.progress,
                                          pre_cache=self._pre_cache)
        except LightningEditError as err:
            self.skipped[method] = str(err)
            return None
        return {"method": method, "model": self.config.model, "data": data, "protocol": protocol, "batch_size": batch, "n": n,
                "summary": report.to_json()["summary"], "pre": report.pre, "cell_seconds": round(time.perf_counter() - start, 1),
                "device": _device_name(self.loaded),  # cell_seconds of a GPU cell and a CPU cell are not comparable
                "hparams": editor.hparams.to_dict(),
                # each request's own values: what the bootstrap intervals of the tables resample
                "per_request": [{"case_id": row.get("case_id"), "pre": row.get("pre", {}), "post": row.get("post", {}),
                                 "edit_seconds": row.get("edit_seconds")} for row in report.requests]}

    def _batch_sizes(self, method: str) -> list[int]:
        c = self.config
        if c.batch_sizes_by_method:
            return list(c.batch_sizes_by_method.get(method, []))
        try:
            return [b for b in c.batch_sizes if b == 1 or get_editor_class(method).supports_batch]
        except ConfigError as err:
            self.skipped[method] = str(err)
            return []

    def _done_with(self, method: str) -> None:
        # What one method prepared (pools, statistics, checkpoints) neither stays resident nor counts in the next
        # method's peak memory; the next phase prepares it again (statistics come from the disk cache).
        self._editors.pop(method, None)
        gc.collect()

    def run(self) -> dict:
        c = self.config
        atomic_write_text(self.results_dir / "config.yaml", yaml.safe_dump(c.__dict__, sort_keys=False))
        atomic_write_text(self.results_dir / "versions.json", json.dumps(package_versions(), indent=2))
        single, batch, sequential, multihop = {}, {}, {}, {}
        # Phase by phase (single edits of every method, multi-hop, then batches and sequences by growing size): an
        # interrupted or still running study has whole tables first, and the cheap cells before the expensive ones.
        for m in c.methods:
            for d, n in c.datasets.items():
                single[(m, d)] = self.cell(m, d, "single", n)
            self._done_with(m)
        if c.multihop_n:
            for m in [m for m in c.methods if c.multihop_methods is None or m in c.multihop_methods]:
                multihop[m] = self.cell(m, c.multihop_data, "multihop", n=c.multihop_n)
                self._done_with(m)
        # A curve's first point (one edit, scored) is the single-edit cell of that data: n records each edited
        # alone give it an interval, where a cell of one record would not.
        for (m, b) in [(m, b) for m in c.methods for b in self._batch_sizes(m) if b == 1]:
            batch[(m, 1)] = single.get((m, c.batch_data)) or self.cell(m, c.batch_data, "single", n=1)
        seq_methods = [m for m in c.methods if c.sequential_methods is None or m in c.sequential_methods]
        if 1 in c.sequential_ns:
            for m in seq_methods:
                reuse = c.sequential_offset == 0 and (m, c.sequential_data) in single
                sequential[(m, 1)] = (single[(m, c.sequential_data)] if reuse else
                                      self.cell(m, c.sequential_data, "sequential", n=1, offset=c.sequential_offset))
        # Then batches and sequences together by growing size, so the most expensive cells (MEMIT's batch of
        # 1000, sequences of 100) come last.
        grown = sorted([(b, 0, m) for m in c.methods for b in self._batch_sizes(m) if b > 1]
                       + [(n, 1, m) for m in seq_methods for n in c.sequential_ns if n > 1])
        for i, (size, is_sequence, m) in enumerate(grown):
            if is_sequence:
                seq_batch = c.sequential_batch_size if self._batching_methods([m]) else 1
                sequential[(m, size)] = self.cell(m, c.sequential_data, "sequential", n=size, batch=seq_batch,
                                                  offset=c.sequential_offset)
            else:
                batch[(m, size)] = self.cell(m, c.batch_data, "batch", n=size, batch=size)
            if all(m != later for _, _, later in grown[i + 1:]):
                self._done_with(m)
        tables = write_tables(self.results_dir, c, single, batch, sequential, self.skipped, multihop)
        write_figures(self.results_dir, c, single, batch, sequential)
        return tables


@dataclass(frozen=True)
class Estimate:
    """A cell's value and its bootstrap 95% interval over the cell's requests (None: too few requests, or a cell
    written before requests' values were kept)."""

    value: float
    interval: Optional[tuple[float, float]] = None

    def __str__(self) -> str:
        if self.interval is None:
            return _fmt(self.value)
        return f"{_fmt(self.value)} [{_fmt(self.interval[0])}, {_fmt(self.interval[1])}]"


def estimate(cell: Optional[dict], key: str, pre: bool = False, statistic: str = "mean") -> Optional[Estimate]:
    """``key`` of a cell after its edits (``pre``: before them) with the bootstrap interval of its requests' values;
    None where the cell is missing or does not report ``key``. ``edit_seconds`` is each request's own edit time."""
    if cell is None:
        return None
    moment = "pre" if pre else "post"
    value = (cell.get("pre", {}) if pre else cell["summary"]).get(key)
    if value is None:
        return None
    rows = cell.get("per_request", [])
    if key == "edit_seconds":
        values = [row["edit_seconds"] for row in rows if row.get("edit_seconds") is not None]
    else:
        values = [row[moment][key] for row in rows if key in row.get(moment, {})]
    return Estimate(value, bootstrap_interval(values, statistic))


def _fmt(value) -> str:
    if isinstance(value, Estimate):
        return str(value)
    return "-" if value is None else (f"{value:.3f}" if isinstance(value, float) else str(value))


def _markdown(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _write(results_dir: Path, name: str, header: list[str], rows: list[list]) -> str:
    """``name``.md (values with their intervals in brackets) and ``name``.csv (a column each for the value and the
    interval's ends, ``<column> 95% low`` / ``<column> 95% high``, beside every column that has intervals)."""
    with_interval = {j for row in rows for j, v in enumerate(row) if isinstance(v, Estimate)}
    csv_header: list[str] = []
    for j, h in enumerate(header):
        csv_header += [h, f"{h} 95% low", f"{h} 95% high"] if j in with_interval else [h]
    csv_rows = []
    for row in rows:
        out: list = []
        for j, v in enumerate(row):
            if j not in with_interval:
                out.append(v)
            elif v is None:
                out += [None, None, None]
            else:
                out += [v.value, *(round(x, 4) for x in v.interval)] if v.interval else [v.value, None, None]
        csv_rows.append(out)
    text = io.StringIO(newline="")
    csv.writer(text).writerows([csv_header, *csv_rows])
    atomic_write_text(results_dir / f"{name}.csv", text.getvalue())  # two studies into one folder: whole files
    md = _markdown(header, rows)
    atomic_write_text(results_dir / f"{name}.md", md + "\n")
    return md


def write_tables(results_dir: Path, c: StudyConfig, single: dict, batch: dict, sequential: dict, skipped: dict,
                 multihop: Optional[dict] = None) -> dict:
    multihop = multihop or {}

    get = estimate

    def get_pre(cell: Optional[dict], key: str) -> Optional[Estimate]:
        return estimate(cell, key, pre=True)

    t2_header = ["method"] + [f"{d} {k}" for d in c.datasets for k in ("reliability", "generalization", "locality")]
    t2 = [[m] + [get(single[(m, d)], k) for d in c.datasets for k in ("reliability", "generalization", "locality")] for m in c.methods]
    port_sources = [d for d in c.datasets if d == c.portability_data]
    t3 = [[m] + [get(single.get((m, d)), "portability") for d in port_sources] for m in c.methods]
    # MQuAKE beside portability: multi-hop accuracy after (and before) each case's edits, and the edits' own success
    t3_header = ["method"] + [f"{d} portability" for d in port_sources]
    if multihop:
        name = Path(c.multihop_data).stem if c.multihop_data.endswith(".json") else c.multihop_data
        t3_header += [f"{name} multihop_acc", f"{name} multihop_acc (pre)", f"{name} edit_success"]
        t3 = [row + [get(multihop.get(m), "multihop_acc"), get_pre(multihop.get(m), "multihop_acc"),
                     get(multihop.get(m), "edit_success")] for m, row in zip(c.methods, t3)]
    t4 = [[m] + [estimate(single[(m, d)], "edit_seconds", statistic="median") for d in c.datasets]
          for m in c.methods]
    # a maximum over the cell's edits, not a mean: no interval
    f5 = [[m] + [None if single[(m, d)] is None else single[(m, d)]["summary"].get("peak_memory_mb") for d in c.datasets]
          for m in c.methods]
    f6 = [[m, b, get(cell, "reliability"), get(cell, "generalization"), get(cell, "locality")] for (m, b), cell in batch.items()]
    f7 = [[m, n, get(cell, "reliability"), get(cell, "generalization"), get(cell, "locality")] for (m, n), cell in sequential.items()]
    # KnowEdit-style per-key scores: every locality/<kind> and portability/<kind> the single cells report
    kinds = sorted({k for cell in single.values() if cell for k in cell["summary"]
                    if k.startswith(("locality/", "portability/"))})
    per_key = [[m, d] + [get(single.get((m, d)), k) for k in kinds] for m in c.methods for d in c.datasets]
    out = {
        "table2_reliability_generalization_locality": _write(results_dir, "table2", t2_header, t2),
        "table3_portability": _write(results_dir, "table3", t3_header, t3),
        "table4_edit_seconds": _write(results_dir, "table4", ["method"] + [f"{d} seconds/edit" for d in c.datasets], t4),
        "fig5_peak_memory_mb": _write(results_dir, "fig5_memory", ["method"] + [f"{d} peak MB" for d in c.datasets], f5),
        "fig6_batch": _write(results_dir, "fig6_batch", ["method", "batch size", "reliability", "generalization", "locality"], f6),
        "fig7_sequential": _write(results_dir, "fig7_sequential", ["method", "edits", "reliability", "generalization", "locality"], f7),
    }
    if kinds:
        out["per_key_scores"] = _write(results_dir, "per_key", ["method", "data"] + kinds, per_key)
    def brief(cell: Optional[dict]) -> Optional[dict]:  # each request's values stay in cells/*.json, once
        return None if cell is None else {k: v for k, v in cell.items() if k != "per_request"}

    summary = {
        "model": c.model, "skipped_methods": skipped, "per_request_values": "cells/*.json",
        "cells": {"single": {f"{m}|{d}": brief(v) for (m, d), v in single.items()},
                  "batch": {f"{m}|{b}": brief(v) for (m, b), v in batch.items()},
                  "sequential": {f"{m}|{n}": brief(v) for (m, n), v in sequential.items()},
                  "multihop": {m: brief(v) for m, v in multihop.items()}},
    }
    atomic_write_text(results_dir / "results.json", json.dumps(summary, indent=2, default=str))
    report = [f"# Study `{c.name}` on {c.model}", ""]
    titles = {"table2_reliability_generalization_locality": "Table 2: reliability / generalization / locality (single edits)",
              "table3_portability": "Table 3: portability and MQuAKE multi-hop accuracy", "table4_edit_seconds": "Table 4: seconds per edit (median)",
              "fig5_peak_memory_mb": "Fig. 5: peak memory (MB; the maximum over a cell's edits, so no interval)",
              "fig6_batch": "Fig. 6: batch editing (batch size 1: the single-edit cell)",
              "fig7_sequential": "Fig. 7: sequential editing (scored after the last edit"
                                 + (f"; batches of {c.sequential_batch_size} for methods that batch" if c.sequential_batch_size > 1 else "")
                                 + "; 1 edit: the single-edit cell)",
              "per_key_scores": "Per-key scores (locality and portability by kind, as the data names them; single edits)"}
    report += ["Every value is followed by its bootstrap 95% interval over the cell's requests in brackets (1000 resamples "
               "of the requests with replacement, seeded; `*.csv` has the ends in columns of their own). The interval "
               "says how much the value depends on which requests were drawn, for this model and these edits; a batch "
               "or sequential cell is one run of the edits, so the run-to-run spread of an editor is not in it.", ""]
    for k, md in out.items():
        report += [f"## {titles[k]}", "", md, ""]
    missing = [f"{kind} {key}" for kind, cells in (("single", single), ("batch", batch), ("sequential", sequential),
                                                  ("multihop", multihop)) for key, cell in cells.items()
               if cell is None and (key[0] if isinstance(key, tuple) else key) not in skipped]
    if missing:
        report += ["## Cells not computed", "", "Shown as `-`: " + ", ".join(missing), ""]
    elsewhere = [f"{kind} {' '.join(map(str, key)) if isinstance(key, tuple) else key}: {cell['device']}"
                 for kind, cells in (("single", single), ("batch", batch), ("sequential", sequential), ("multihop", multihop))
                 for key, cell in cells.items() if cell and cell.get("device", "cpu") != "cpu"]
    if elsewhere:  # their seconds and peak memory are the accelerator's (GPU memory), not comparable with the rest
        report += ["## Cells computed on an accelerator", "", "Seconds and peak memory of these are the device's: "
                   + ", ".join(elsewhere), ""]
    if skipped:
        report += ["## Methods not run", ""] + [f"- `{m}`: {why}" for m, why in skipped.items()]
    atomic_write_text(results_dir / "README.md", "\n".join(report) + "\n")
    return out


def _savefig(fig, path: Path, **kwargs) -> None:
    """A figure written whole: to a temporary sibling (same suffix, so the format is the same), then replaced."""
    temp = temporary_sibling(path, suffix=path.suffix)
    try:
        fig.savefig(temp, **kwargs)
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def write_figures(results_dir: Path, c: StudyConfig, single: dict, batch: dict, sequential: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # 14 methods outnumber a colour cycle: colours from tab20 and alternating markers/line styles keep each apart.
    palette = plt.get_cmap("tab20").colors
    styles = {m: dict(color=palette[i % len(palette)], marker="osD^v<>"[i % 7], linestyle=("-", "--")[i % 2])
              for i, m in enumerate(c.methods)}

    def curve(cells: dict, fname: str, xlabel: str, title: str) -> None:
        fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
        xs = sorted({x for (_, x), cell in cells.items() if cell})
        for ax, key in zip(axes, ("reliability", "generalization", "locality")):
            for m in c.methods:
                pts = sorted((x, estimate(cell, key)) for (mm, x), cell in cells.items() if mm == m and cell)
                pts = [(x, e) for x, e in pts if e is not None]
                if pts:
                    ax.plot([x for x, _ in pts], [e.value for _, e in pts], label=m, **styles[m])
                    banded = [(x, e.interval) for x, e in pts if e.interval is not None]
                    if banded:  # the bootstrap 95% interval of each point, as a band
                        ax.fill_between([x for x, _ in banded], [i[0] for _, i in banded], [i[1] for _, i in banded],
                                        color=styles[m]["color"], alpha=0.12, linewidth=0)
            ax.set_xscale("log")
            ax.set_xticks(xs, [str(x) for x in xs])
            ax.minorticks_off()
            ax.set_xlabel(xlabel)
            ax.set_title(key)
            ax.set_ylim(-0.05, 1.05)
        axes[-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
        fig.suptitle(f"{title} ({c.model})")
        fig.tight_layout()
        _savefig(fig, results_dir / fname, dpi=120, bbox_inches="tight")
        plt.close(fig)

    curve(batch, "fig6_batch.png", "batch size", "Batch editing")
    curve(sequential, "fig7_sequential.png", "number of sequential edits", "Sequential editing")
    fig, ax = plt.subplots(figsize=(7, 3.5))
    names, values = [], []
    d0 = next(iter(c.datasets))
    for m in c.methods:
        cell = single.get((m, d0))
        if cell:
            names.append(m)
            values.append(cell["summary"].get("peak_memory_mb", 0))
    ax.bar(names, values)
    ax.tick_params(axis="x", labelrotation=45)
    ax.set_ylabel("peak memory (MB)")
    ax.set_title(f"Fig. 5: peak memory per method ({c.model}, {d0})")
    fig.tight_layout()
    _savefig(fig, results_dir / "fig5_memory.png", dpi=120)
    plt.close(fig)
