"""The study's runner (``edit.py study``): one model, one editor per method while its cells run (each through the
one runner, ``runner.Run``), each cell read from the cache or computed, then the tables and figures. The plan,
cells, estimates and report it drives are in ``evaluation/study/``."""
from __future__ import annotations

import gc
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import yaml

from .atomic import atomic_write_text
from .data import load_requests
from .data.rome_references import load_rome_references, needs_references
from .data.multihop import load_multihop_cases
from .editors import Editor
from .errors import LightningEditError
from .models import LoadedModel
from .models.device_map import DEFAULT_DEVICE
from .runner import Run, RunSpec
from .evaluation.multihop import evaluate_multihop
from .evaluation.capability import CapabilityCurve
from .evaluation.lifelong import Checkpointing, latest_checkpoint
from .evaluation.pre_edit import default_pre_cache
from .evaluation.protocols import EVALUATION_VERSION, Report, evaluate_editing
from .evaluation.study.cells import cached_or_computed, cell_inputs, cell_key, device_name
from .evaluation.study.plan import Phases, StudyConfig, run_phases
from .evaluation.study.report import write_figures, write_tables
from .version import package_versions


@dataclass
class PreparedCell:
    """A cell ready to run: its file name, the inputs it hangs on (``cells.cell_inputs``) and how to compute it."""

    key: str
    inputs: dict
    compute: Callable[[], Optional[dict]]


class CellMaker:
    """One model and what its cells share: one editor per method while its cells run (each through the one runner,
    ``runner.Run``), the weights fingerprint, the pre-edit scores. Writes nothing: ``Study`` writes the cells into
    its folder, and so does the Ray driver with the cells its workers make (``study_ray``)."""

    def __init__(self, config: StudyConfig, data_dir: Optional[str] = None, progress: bool = True,
                 loaded: Optional[LoadedModel] = None, device: str = DEFAULT_DEVICE,
                 placement: Optional[dict] = None, partial_dir: Optional[Path] = None):
        self.config = config
        self.data_dir = data_dir
        self.partial_dir = partial_dir  # where long sequential cells checkpoint (None: they run through unsaved)
        self.progress = progress
        self.device = device
        self.skipped: dict[str, str] = {}
        # One editor per method, kept while that method's cells run: what it prepares once (statistics, context
        # prefixes, memory pools, sentence encoders, trained checkpoints) serves them all instead of being rebuilt.
        self._editors: dict[str, Editor] = {}
        self._loaded: Optional[LoadedModel] = loaded  # loaded on first use
        self._weights_fingerprint: Optional[str] = None  # of the unedited model, part of every cell's key
        self.device = device
        self.placement = dict(placement or {})  # RunSpec's device_map, max_memory, offload_folder (--device-map)
        self._pre_cache = default_pre_cache()  # pre-edit scores shared by every method and cell on this model
        self._multihop_pre: dict[tuple, dict] = {}  # pre-edit rows of MQuAKE cases, shared by the multi-hop cells

    @property
    def loaded(self) -> LoadedModel:
        if self._loaded is None:  # through the one runner: its preflight, then the load
            self._loaded = Run(RunSpec(model=self.config.model, device=self.device, model_flag="model",
                                       **self.placement)).load()
        return self._loaded

    def _editor(self, method: str) -> Editor:
        """The method's editor through the one runner (its hyperparameters merged once: configs ← the study's
        overrides ← its trained editor), kept while the method's cells run."""
        if method not in self._editors:
            spec = RunSpec(model=self.config.model, method=method, device=self.device,
                           overrides=dict(self.config.overrides.get(method, {})),
                           editor=self.config.editor_checkpoints.get(method))
            self._editors[method] = Run(spec, loaded=self.loaded).editor()
        return self._editors[method]

    def prepare(self, method: str, data: str, protocol: str, n: int, batch: int = 1, offset: int = 0
                ) -> Optional[PreparedCell]:
        """The cell's key, inputs and computation; None if the method cannot run here (reason in ``skipped``)."""
        try:
            editor = self._editor(method)
            items = self._cell_data(data, protocol, n, offset)
        except LightningEditError as err:
            self.skipped[method] = str(err)
            return None
        inputs = self.cell_inputs(editor, items, offset)
        eval_every = self.config.sequential_eval_every if protocol == "sequential" else 0
        capability = self._capability(protocol)
        hashed = {**editor.hparams.result_dict(), **({"__eval_every__": eval_every} if eval_every else {}),
                  **({"__capability__": capability.identity()} if capability else {})}
        key = cell_key(method, self.config.model, data, protocol, batch, n, hashed,
                       {"editor": editor.results_version, "evaluation": EVALUATION_VERSION}, inputs)

        def compute() -> Optional[dict]:
            return self._compute_cell(method, editor, data, protocol, n, batch, items, self._partial(protocol, key),
                                      self._capability(protocol))

        return PreparedCell(key, inputs, compute)

    def _capability(self, protocol: str) -> Optional[CapabilityCurve]:
        """A sequential cell's capability curve (``sequential_capability_every``), None for other cells."""
        c = self.config
        if protocol != "sequential" or not c.sequential_capability_every:
            return None
        return CapabilityCurve(c.capability_tasks, c.sequential_capability_every, limit=c.capability_limit,
                               data_dir=self.data_dir)

    def _partial(self, protocol: str, key: str) -> Optional[Checkpointing]:
        """Where a long sequential cell checkpoints (``cells/partial/<key>/``), resumed when a checkpoint is there."""
        every = self.config.sequential_checkpoint_every
        if protocol != "sequential" or not every or self.partial_dir is None:
            return None
        folder = self.partial_dir / key
        return Checkpointing(folder, every=every, resume=latest_checkpoint(folder) is not None)

    def _cell_data(self, data: str, protocol: str, n: int, offset: int) -> list:
        if protocol == "multihop":
            return load_multihop_cases(data, n=n, data_dir=self.data_dir, offset=offset)
        return load_requests(data, n=n, data_dir=self.data_dir, offset=offset)

    def cell_inputs(self, editor: Editor, items: list, offset: int) -> dict:
        """What a cell's results hang on besides the method's settings (see ``cells.cell_inputs``)."""
        if self._weights_fingerprint is None:
            self._weights_fingerprint = self.loaded.weights_fingerprint()  # once: cells undo their edits
        return cell_inputs(editor, items, offset, self.config.fluency, self._weights_fingerprint)

    def _compute_cell(self, method: str, editor: Editor, data: str, protocol: str, n: int, batch: int,
                      items: list, partial: Optional[Checkpointing] = None,
                      capability: Optional[CapabilityCurve] = None) -> Optional[dict]:
        start = time.perf_counter()
        try:
            if protocol == "multihop":  # all edits of each MQuAKE case together, its questions scored
                report = evaluate_multihop(self.loaded, editor, items, progress=self.progress, pre_scores=self._multihop_pre)
            else:  # ROME's CounterFact: its generations are scored for consistency too
                references = (load_rome_references(self.data_dir) if self.config.fluency and needs_references(items)
                              else None)
                report = evaluate_editing(self.loaded, editor, items, protocol=protocol, batch_size=batch,
                                          fluency=self.config.fluency, progress=self.progress,
                                          pre_cache=self._pre_cache, checkpointing=partial, references=references,
                                          eval_every=self.config.sequential_eval_every if protocol == "sequential" else 0,
                                          capability=capability)
        except LightningEditError as err:
            self.skipped[method] = str(err)
            return None
        if partial is not None:  # the cell is whole now: its checkpoint is no longer needed
            shutil.rmtree(partial.directory, ignore_errors=True)
        readings = {"immediate": report.immediate, "curve": report.curve} if protocol == "sequential" else {}
        earlier = report.config.get("earlier_seconds", {})  # a resumed cell: the interrupted processes' seconds
        if capability is not None:
            readings["capability"] = capability.to_json()
        return {**readings, "method": method, "model": self.config.model, "data": data, "protocol": protocol, "batch_size": batch, "n": n,
                "summary": report.to_json()["summary"], "pre": report.pre, "cell_seconds": round(time.perf_counter() - start + (earlier or {}).get("wall", 0.0), 1),
                "cell_seconds_whole": earlier is not None,  # False: a checkpoint left no record of the time before it
                "device": device_name(self.loaded),  # cell_seconds of a GPU cell and a CPU cell are not comparable
                "hparams": editor.hparams.to_dict(), "per_request": _per_request(report)}

    def done_with(self, method: str) -> None:
        # What one method prepared (pools, statistics, checkpoints) neither stays resident nor counts in the next
        # method's peak memory; the next phase prepares it again (statistics come from the disk cache).
        self._editors.pop(method, None)
        gc.collect()


class Study:
    """The study in this process: every cell read from ``<results>/cells`` or made by one ``CellMaker``, then the
    tables and figures."""

    def __init__(self, config: StudyConfig, results_dir: Path, data_dir: Optional[str] = None, progress: bool = True,
                 loaded: Optional[LoadedModel] = None, compute: bool = True, device: str = DEFAULT_DEVICE,
                 placement: Optional[dict] = None, whole: Optional[StudyConfig] = None):
        self.config = config
        self.whole = whole or config  # the study ``config`` runs part of (``--methods``): what config.yaml records
        self.results_dir = Path(results_dir)
        self.cells_dir = self.results_dir / "cells"
        self.cells_dir.mkdir(parents=True, exist_ok=True)
        self.compute = compute  # False: tables and figures from the cells on disk only (missing cells stay missing)
        self.maker = CellMaker(config, data_dir=data_dir, progress=progress, loaded=loaded, device=device,
                               placement=placement, partial_dir=self.cells_dir / "partial")
        self.skipped = self.maker.skipped

    def cell(self, method: str, data: str, protocol: str, n: int, batch: int = 1, offset: int = 0) -> Optional[dict]:
        """Run (or read from cache) one cell; None if the method cannot run here (reason kept in ``skipped``).

        A cached cell is used only when it verifies (whole JSON, the same inputs recorded, see ``cell_inputs``); a
        torn or stale one is recomputed with a warning. Computing holds the cell's lock, so two studies writing
        into one folder compute each cell once, and the file is written atomically (temporary, fsync, replace)."""
        prepared = self.maker.prepare(method, data, protocol, n, batch, offset)
        if prepared is None:
            return None
        return cached_or_computed(self.cells_dir, prepared.key, prepared.inputs,
                                  prepared.compute if self.compute else None)

    def run(self) -> dict:
        write_study_files(self.results_dir, self.whole)
        p = run_phases(self.config, self.cell, self.maker.done_with, self.skipped)
        return write_study_report(self.results_dir, self.config, p, self.skipped)


def write_study_files(results_dir: Path, config: StudyConfig) -> None:
    """What a study ran with, written before its first cell: its configuration and the package versions."""
    atomic_write_text(results_dir / "config.yaml", yaml.safe_dump(config.__dict__, sort_keys=False))
    atomic_write_text(results_dir / "versions.json", json.dumps(package_versions(), indent=2))


def write_study_report(results_dir: Path, config: StudyConfig, p: Phases, skipped: dict,
                       scaleout: Optional[dict] = None) -> dict:
    """The tables (returned: name → Markdown), ``results.json``, the README and the figures of the cells ``p``."""
    tables = write_tables(results_dir, config, p.single, p.batch, p.sequential, skipped, p.multihop, scaleout=scaleout)
    write_figures(results_dir, config, p.single, p.batch, p.sequential)
    return tables


def _per_request(report: Report) -> list[dict]:
    """Each request's own values: what the bootstrap intervals of the tables resample."""
    return [{"case_id": row.get("case_id"), "pre": row.get("pre", {}), "post": row.get("post", {}),
             "edit_seconds": row.get("edit_seconds"), **({"immediate": row["immediate"]} if "immediate" in row else {})}
            for row in report.requests]
