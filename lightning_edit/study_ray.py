"""A study's cells on Ray workers (``edit.py study --ray [ADDRESS]``).

Each worker is a long-lived Ray actor with its own ``CellMaker``: it loads the model once (through the one
runner) and makes the cells it is given. The driver keeps the plan and the cells folder: it asks a worker for a
cell's key, reads the cell from ``<results>/cells`` if it is there and verifies, else has the worker compute it and
writes what comes back through the same writer as the serial study (``cells.cached_or_computed``: under the cell's
lock, atomically). A study on Ray can therefore be stopped, resumed, or finished serially, and two studies (serial
or not) can share one folder. A worker that dies has its cell handed to another (a fresh worker takes its place);
the README and ``results.json`` count the retries.

Ray is an optional extra, imported only here and only when ``--ray`` is given."""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, Optional

from .errors import ConfigError
from .evaluation.study.cells import cached_or_computed, read_cell
from .evaluation.study.plan import Phases, StudyConfig, run_phases
from .study_runner import CellMaker, PreparedCell, write_study_files, write_study_report

log = logging.getLogger(__name__)

RAY_EXTRA = "pip install 'lightning-edit[ray]'"


def require_ray() -> Any:
    """The ``ray`` module, or a one-line ``ConfigError`` naming the extra that installs it."""
    try:
        import ray
    except ImportError:
        raise ConfigError(f"--ray needs Ray, which is not installed; install the extra: {RAY_EXTRA}") from None
    return ray


@dataclass
class RayOptions:
    """Where the workers run and what each declares to Ray's scheduler.

    ``address``: None starts a local Ray; ``"auto"`` joins the cluster this node belongs to (``ray start``);
    ``host:port`` or ``ray://host:port`` names one. A worker runs one cell at a time, so its resources are a cell's."""

    address: Optional[str] = None
    workers: int = 2
    threads: int = 1  # CPUs per worker, and its torch threads
    gpus_per_cell: float = 0.0
    memory_gb: Optional[float] = None  # memory per worker Ray reserves (None: not declared)
    max_retries: int = 2  # a cell whose worker dies is given to another worker this many times

    def check(self, device: str) -> None:
        """Bad values as ``ConfigError`` naming the flag, before Ray starts or any model loads."""
        if self.workers < 1:
            raise ConfigError(f"--ray-workers must be at least 1, got {self.workers}")
        if self.threads < 1:
            raise ConfigError(f"--threads must be at least 1 with --ray (CPUs per worker), got {self.threads}")
        if not 0 <= self.gpus_per_cell <= 8:
            raise ConfigError(f"--gpus-per-cell must be between 0 and 8 (a fraction shares a GPU), "
                              f"got {self.gpus_per_cell}")
        if self.memory_gb is not None and self.memory_gb <= 0:
            raise ConfigError(f"--memory-per-worker must be a positive number of GiB, got {self.memory_gb}")
        if self.max_retries < 0:
            raise ConfigError(f"--ray-retries must be 0 or more, got {self.max_retries}")
        if device.startswith("cuda") and not self.gpus_per_cell:
            raise ConfigError("--device cuda with --ray: give each cell a GPU with --gpus-per-cell 1 (Ray then "
                              "shows each worker only its own GPU)")
        if device not in ("cpu", "cuda"):
            raise ConfigError(f"--device {device} with --ray: give cpu or cuda (Ray picks each worker's GPU)")
        if self.gpus_per_cell and device != "cuda":
            raise ConfigError(f"--gpus-per-cell {self.gpus_per_cell} needs --device cuda (cells computed on the GPU)")


class CellSpec(NamedTuple):
    """One cell as the plan asks for it (``plan.run_phases``'s call)."""

    method: str
    data: str
    protocol: str
    n: int
    batch: int = 1
    offset: int = 0


class StudyWorker:
    """A Ray actor: one model (loaded on the first cell), the editors of the method it is on, the pre-edit scores.

    ``key`` and ``compute`` are two calls so that the driver, which holds the cells folder, decides between them."""

    def __init__(self, config: StudyConfig, data_dir: Optional[str], device: str, threads: int, cwd: str) -> None:
        import torch

        torch.set_num_threads(threads)
        if os.path.isdir(cwd):  # relative paths of the study (data, trained editors) as the driver reads them
            os.chdir(cwd)
        self.maker = CellMaker(config, data_dir=data_dir, progress=False, device=device)
        self.prepared: Optional[tuple[CellSpec, PreparedCell]] = None  # the cell whose key was asked last
        self.method: Optional[str] = None

    def key(self, spec: CellSpec) -> tuple:
        """("key", cell key, inputs), or ("skipped", reason) where the method cannot run here."""
        spec = CellSpec(*spec)
        self.prepared = None
        if self.method not in (None, spec.method):  # one method's editors resident at a time, as in the serial study
            self.maker.done_with(self.method)
        self.method = spec.method
        prepared = self.maker.prepare(*spec)
        if prepared is None:
            return ("skipped", self.maker.skipped.get(spec.method, "cannot run"))
        self.prepared = (spec, prepared)
        return ("key", prepared.key, prepared.inputs)

    def compute(self, spec: CellSpec) -> tuple:
        """("cell", payload) or ("skipped", reason) of the cell whose key was just asked for."""
        if self.prepared is None or self.prepared[0] != CellSpec(*spec):
            raise RuntimeError(f"compute({spec}) without key({spec}) just before it on this worker")
        cell, self.prepared = self.prepared[1].compute(), None
        if cell is None:
            return ("skipped", self.maker.skipped.get(spec[0], "cannot run"))
        return ("cell", cell)


# what the plan is told of a cell not yet made: present, so that nothing else is asked for in its place
_PLANNED = {"summary": {}}


class RayStudy:
    """The study of ``config`` with its cells made on Ray workers, written into ``<results_dir>/cells`` as the
    serial ``Study`` writes them; then the same tables and figures, with what the workers counted."""

    def __init__(self, config: StudyConfig, results_dir: Path, options: RayOptions, data_dir: Optional[str] = None,
                 progress: bool = True, device: str = "cpu", whole: Optional[StudyConfig] = None) -> None:
        self.config = config
        self.whole = whole or config  # the study ``config`` runs part of (``--methods``): what config.yaml records
        self.results_dir = Path(results_dir)
        self.cells_dir = self.results_dir / "cells"
        self.cells_dir.mkdir(parents=True, exist_ok=True)
        self.options = options
        self.data_dir = data_dir
        self.progress = progress
        self.device = device
        self.skipped: dict[str, str] = {}
        self.results: dict[CellSpec, Optional[dict]] = {}
        self.counts = {"computed": 0, "read": 0, "retried": 0, "workers_lost": 0}
        self.failed: dict[CellSpec, str] = {}
        self._keys: dict[CellSpec, tuple[str, dict]] = {}
        self._tries: dict[CellSpec, int] = {}
        self._workers: list[Any] = []
        self._ray: Any = None

    def run(self) -> dict:
        """Every cell (read, or made on a worker), then the tables (returned: name → Markdown) and figures."""
        self._ray = require_ray()
        started = self._connect()
        try:
            write_study_files(self.results_dir, self.whole)
            self._workers = [self._new_worker() for _ in range(self.options.workers)]
            phases, asked = self._plan()
            while asked:  # a cell that came back empty can make the plan ask for another (as the serial study would)
                self._dispatch(asked)
                phases, asked = self._plan()
        finally:
            for worker in self._workers:
                self._ray.kill(worker)
            if started:
                self._ray.shutdown()
        return write_study_report(self.results_dir, self.config, phases, self.skipped, scaleout=self.scaleout())

    def scaleout(self) -> dict:
        """What the README and ``results.json`` say of the workers."""
        o = self.options
        return {"ray_address": o.address or "local", "workers": o.workers, "threads_per_worker": o.threads,
                "gpus_per_cell": o.gpus_per_cell, "cells_computed": self.counts["computed"],
                "cells_read_from_folder": self.counts["read"], "workers_lost": self.counts["workers_lost"],
                "cells_retried_after_a_worker_died": self.counts["retried"],
                "cells_failed": {"|".join(map(str, spec)): why for spec, why in self.failed.items()}}

    def _plan(self) -> tuple[Phases, list[CellSpec]]:
        """The plan told the cells made so far: its phases, and the cells it asks for that are not made yet."""
        asked: list[CellSpec] = []

        def cell(*args: Any, **kwargs: Any) -> Optional[dict]:
            spec = CellSpec(*args, **kwargs)
            if spec in self.results:
                return self.results[spec]
            if spec not in asked:
                asked.append(spec)
            return _PLANNED

        phases = run_phases(self.config, cell, lambda method: None, self.skipped)
        return phases, asked

    def _connect(self) -> bool:
        """Ray started here (True: shut it down at the end) or joined (``address``), its resources checked."""
        ray, o = self._ray, self.options
        started = not ray.is_initialized()
        if started:
            try:
                if o.address is None:
                    ray.init(num_cpus=o.workers * o.threads, include_dashboard=False, log_to_driver=self.progress)
                else:
                    ray.init(address=o.address, log_to_driver=self.progress)
            except (ConnectionError, RuntimeError, ValueError) as err:
                raise ConfigError(f"--ray {o.address}: no Ray cluster to join ({str(err).splitlines()[0]}); start one "
                                  "with 'ray start --head', or give --ray alone for a local one") from None
        gpus = ray.cluster_resources().get("GPU", 0)
        if o.gpus_per_cell > gpus:
            if started:
                ray.shutdown()
            raise ConfigError(f"--gpus-per-cell {o.gpus_per_cell}: the Ray cluster has {gpus:g} GPU(s); give fewer, "
                              "or add GPU nodes ('ray start --address=HEAD:6379 --num-gpus=N')")
        return started

    def _new_worker(self) -> Any:
        o = self.options
        resources: dict[str, Any] = {"num_cpus": o.threads, "num_gpus": o.gpus_per_cell, "max_restarts": 0}
        if o.memory_gb is not None:
            resources["memory"] = int(o.memory_gb * 2**30)
        actor = self._ray.remote(StudyWorker).options(**resources)
        return actor.remote(self.config, self.data_dir, self.device, o.threads, os.getcwd())

    def _submit(self, slot: int, spec: CellSpec, stage: str) -> Any:
        """Ask worker ``slot`` for the cell's key (``stage`` "key") or the cell itself ("compute")."""
        return getattr(self._workers[slot], stage).remote(tuple(spec))

    def _dispatch(self, specs: list[CellSpec]) -> None:
        """Every cell of ``specs`` made (or read, or given up), each idle worker taking the next cell, of the method
        it is on where there is one (its editor is then reused)."""
        pending, running = list(specs), {}
        idle, last_method = list(range(len(self._workers))), [None] * len(self._workers)
        started = time.perf_counter()
        while pending or running:
            while idle and pending:
                slot = idle.pop(0)
                spec = pending.pop(_next_index(pending, last_method[slot]))
                running[self._submit(slot, spec, "key")] = (slot, spec, "key")
            [ref], _ = self._ray.wait(list(running), num_returns=1)
            slot, spec, _ = running.pop(ref)
            if self._finish(ref, slot, spec, pending):
                running[self._submit(slot, spec, "compute")] = (slot, spec, "compute")
            else:
                idle.append(slot)
                last_method[slot] = spec.method
                if self.progress and spec in self.results:
                    print(f"[ray] {len(self.results)} cells done ({time.perf_counter() - started:.0f} s): "
                          f"{' '.join(map(str, spec))}", flush=True)

    def _finish(self, ref: Any, slot: int, spec: CellSpec, pending: list[CellSpec]) -> bool:
        """Take a worker's answer; True when the cell is still to compute (its key is not in the folder)."""
        try:
            answer = self._ray.get(ref)
        except _worker_lost_errors(self._ray) as err:
            self._worker_died(slot, spec, err, pending)
            return False
        if answer[0] == "skipped":
            self.skipped[spec.method] = answer[1]
            self.results[spec] = None
            self._keys.pop(spec, None)
            return False
        if answer[0] == "key":
            _, key, inputs = answer
            cached = read_cell(self.cells_dir / f"{key}.json", inputs)
            if cached is None:
                self._keys[spec] = (key, inputs)
                return True
            self.results[spec], self.counts["read"] = cached, self.counts["read"] + 1
            return False
        key, inputs = self._keys.pop(spec)
        # the serial study's writer: under the cell's lock, atomically; a cell another study wrote meanwhile wins
        self.results[spec] = cached_or_computed(self.cells_dir, key, inputs, lambda: answer[1])
        self.counts["computed"] += 1
        return False

    def _worker_died(self, slot: int, spec: CellSpec, err: Exception, pending: list[CellSpec]) -> None:
        """A fresh worker in the dead one's place; the cell back at the head of the queue, or given up."""
        self.counts["workers_lost"] += 1
        self._workers[slot] = self._new_worker()
        tries = self._tries[spec] = self._tries.get(spec, 0) + 1
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if tries > self.options.max_retries:
            log.warning("study cell %s: its worker died %d times (%s); giving it up", spec, tries, reason)
            self.failed[spec] = reason
            self.results[spec] = None
            return
        log.warning("study cell %s: its worker died (%s); handing it to another worker", spec, reason)
        self.counts["retried"] += 1
        pending.insert(0, spec)


def _next_index(pending: list[CellSpec], method: Optional[str]) -> int:
    """The first pending cell of ``method`` (the worker's editor serves it), else the first in the plan's order."""
    return next((i for i, spec in enumerate(pending) if spec.method == method), 0)


def _worker_lost_errors(ray: Any) -> tuple[type, ...]:
    """What ``ray.get`` raises when the worker process is gone (killed, out of memory, its node lost)."""
    e = ray.exceptions
    return tuple(getattr(e, name) for name in ("RayActorError", "WorkerCrashedError", "NodeDiedError",
                                                "OutOfMemoryError") if hasattr(e, name))
