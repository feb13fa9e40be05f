"""The EasyEdit study in one command: tables 2-4 and figures 5-7, cached per cell and resumable.

A *cell* is one (method, model, data, protocol, batch size, n) run of ``evaluate_editing``. Each finished cell
is written to ``<results>/cells/<key>.json`` at once, so a rerun only computes missing or changed cells (the key
includes a hash of the method's hyperparameters, less the speed-only ones, and of the method's and the evaluation's
``results_version`` once bumped) and an interrupted study resumes where it stopped.

- ``plan``: ``StudyConfig`` (YAML, field checks) and the order of the cells, phase by phase;
- ``cells``: cell keys, their inputs, reading/verifying/writing cells atomically under their locks;
- ``estimates``: a cell's value with its bootstrap interval;
- ``report``: tables, README, figures;

``Study``, which runs the plan on one model through the one runner, is above this layer: ``lightning_edit.study_runner``.
"""
from ...paths import STUDY_CONFIGS
from .cells import cell_inputs, cell_key, cell_results, read_cell
from .estimates import Estimate, estimate
from .plan import SAFE_NAME, Phases, StudyConfig, check_study_fields, run_phases, safe_folder_name
from .report import write_figures, write_tables

_cell_key = cell_key  # the name tests import

__all__ = ["STUDY_CONFIGS", "cell_inputs", "cell_key", "cell_results", "read_cell", "Estimate", "estimate", "SAFE_NAME", "Phases",
           "StudyConfig", "check_study_fields", "run_phases", "safe_folder_name", "write_figures", "write_tables"]
