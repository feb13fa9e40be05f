"""The study's runner (``edit.py study``): one model, one editor per method while its cells run (each through the
one runner, ``runner.Run``), each cell read from the cache or computed, then the tables and figures. The plan,
cells, estimates and report it drives are in ``evaluation/study/``."""
from __future__ import annotations

import gc
import json
import time
from pathlib import Path
from typing import Optional

import yaml

from .atomic import atomic_write_text
from .data import load_requests
from .data.rome_references import load_rome_references, needs_references
from .data.multihop import load_multihop_cases
from .editors import Editor
from .errors import LightningEditError
from .models import LoadedModel
from .runner import Run, RunSpec
from .evaluation.multihop import evaluate_multihop
from .evaluation.pre_edit import default_pre_cache
from .evaluation.protocols import EVALUATION_VERSION, Report, evaluate_editing
from .evaluation.study.cells import cached_or_computed, cell_inputs, cell_key, device_name
from .evaluation.study.plan import StudyConfig, batch_sizes, batching_methods, run_phases
from .evaluation.study.report import write_figures, write_tables
from .version import package_versions


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
        if self._loaded is None:  # through the one runner: its preflight, then the load
            self._loaded = Run(RunSpec(model=self.config.model, device=self.device, model_flag="model")).load()
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

    @staticmethod
    def _batching_methods(methods: list[str]) -> list[str]:
        return batching_methods(methods)

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
        key = cell_key(method, self.config.model, data, protocol, batch, n, editor.hparams.result_dict(),
                       {"editor": editor.results_version, "evaluation": EVALUATION_VERSION}, inputs)

        def compute() -> Optional[dict]:
            return self._compute_cell(method, editor, data, protocol, n, batch, items)

        return cached_or_computed(self.cells_dir, key, inputs, compute if self.compute else None)

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
                      items: list) -> Optional[dict]:
        start = time.perf_counter()
        try:
            if protocol == "multihop":  # all edits of each MQuAKE case together, its questions scored
                report = evaluate_multihop(self.loaded, editor, items, progress=self.progress, pre_scores=self._multihop_pre)
            else:  # ROME's CounterFact: its generations are scored for consistency too
                references = (load_rome_references(self.data_dir) if self.config.fluency and needs_references(items)
                              else None)
                report = evaluate_editing(self.loaded, editor, items, protocol=protocol, batch_size=batch,
                                          fluency=self.config.fluency, progress=self.progress,
                                          pre_cache=self._pre_cache, references=references)
        except LightningEditError as err:
            self.skipped[method] = str(err)
            return None
        return {"method": method, "model": self.config.model, "data": data, "protocol": protocol, "batch_size": batch, "n": n,
                "summary": report.to_json()["summary"], "pre": report.pre, "cell_seconds": round(time.perf_counter() - start, 1),
                "device": device_name(self.loaded),  # cell_seconds of a GPU cell and a CPU cell are not comparable
                "hparams": editor.hparams.to_dict(), "per_request": _per_request(report)}

    def _batch_sizes(self, method: str) -> list[int]:
        return batch_sizes(self.config, method, self.skipped)

    def _done_with(self, method: str) -> None:
        # What one method prepared (pools, statistics, checkpoints) neither stays resident nor counts in the next
        # method's peak memory; the next phase prepares it again (statistics come from the disk cache).
        self._editors.pop(method, None)
        gc.collect()

    def run(self) -> dict:
        c = self.config
        atomic_write_text(self.results_dir / "config.yaml", yaml.safe_dump(c.__dict__, sort_keys=False))
        atomic_write_text(self.results_dir / "versions.json", json.dumps(package_versions(), indent=2))
        p = run_phases(c, self.cell, self._done_with, self.skipped)
        tables = write_tables(self.results_dir, c, p.single, p.batch, p.sequential, self.skipped, p.multihop)
        write_figures(self.results_dir, c, p.single, p.batch, p.sequential)
        return tables


def _per_request(report: Report) -> list[dict]:
    """Each request's own values: what the bootstrap intervals of the tables resample."""
    return [{"case_id": row.get("case_id"), "pre": row.get("pre", {}), "post": row.get("post", {}),
             "edit_seconds": row.get("edit_seconds")} for row in report.requests]
