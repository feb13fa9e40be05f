"""What a study runs: its configuration (read from YAML, every field checked before any model loads) and the
order of its cells, phase by phase."""
from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable, Optional

from ...config import load_yaml
from ...editors import get_editor_class
from ...errors import ConfigError, docs_link
from ...paths import STUDY_CONFIGS
from ..protocols import SCORE_KEYS


@dataclass
class StudyConfig:
    name: str
    model: str = "smollm2-135m"
    methods: list[str] = field(default_factory=lambda: ["ft-l", "ft-m"])
    datasets: dict[str, int] = field(default_factory=lambda: {"zsre": 10, "counterfact": 10})  # records per single cell ({}: none)
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
    sequential_eval_every: int = 0  # >0: both readings every K edits in each sequential cell (its "curve")
    sequential_checkpoint_every: int = 0  # >0: a sequential cell checkpoints every N edit calls (cells/partial/), resumed
    sequential_capability_every: int = 0  # >0: general capability of a sequential cell's model before, every K edits, after
    # the scores the lifelong table and curves show, retained and immediate (CounterFact's papers read efficacy,
    # paraphrase and neighborhood scores; ZsRE's the token accuracies)
    sequential_scores: list[str] = field(default_factory=lambda: ["reliability", "generalization", "locality"])
    capability_tasks: list[str] = field(default_factory=lambda: ["local-perplexity", "known-facts"])  # local tasks or lm-eval's
    capability_limit: int = 100  # windows of held-out text, known facts, documents per lm-eval task
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
            raise ConfigError(f"{path}: unknown field(s) {unknown}; known: {sorted(f.name for f in fields(cls))} "
                              f"(what each means: {docs_link('reference/study-config.md')})")
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
    ``ConfigError`` naming the file (``config.load_yaml``)."""
    if not path.is_file():
        raise ConfigError(f"study configuration {path} is not a file; give a YAML file or a name in {STUDY_CONFIGS}")
    try:
        return load_yaml(path, what="study configuration")
    except ConfigError as err:
        raise ConfigError(f"{str(err).splitlines()[0]}; every field of a study file: {docs_link('reference/study-config.md')}") from None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _need(ok: bool, where: str, name: str, what: str, value: object) -> None:
    if not ok:
        raise ConfigError(f"{where}: field '{name}' must be {what}, got {value!r} ({type(value).__name__})")


def _check_methods(where: str, name: str, value: object, allow_none: bool = False, allow_empty: bool = False) -> None:
    from ...editors import EDITORS

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


def check_study_fields(c: StudyConfig, where: str) -> None:
    """Type and range of every field of a study configuration (see ``StudyConfig.check``)."""
    _need(isinstance(c.name, str) and bool(SAFE_NAME.fullmatch(c.name)), where, "name",
          "a name of letters, digits, '.', '_' or '-' (it becomes a folder name; no '/' or '..')", c.name)
    for name in ("model", "portability_data", "batch_data", "sequential_data", "multihop_data"):
        value = getattr(c, name)
        _need(isinstance(value, str) and bool(value.strip()), where, name, "a non-empty string", value)
    _check_methods(where, "methods", c.methods)
    _check_methods(where, "sequential_methods", c.sequential_methods, allow_none=True, allow_empty=True)
    _check_methods(where, "multihop_methods", c.multihop_methods, allow_none=True, allow_empty=True)
    # no data sets: no single-edit cells (a study of sequences or batches alone, e.g. the lifelong study)
    _need(isinstance(c.datasets, dict) and all(
        isinstance(k, str) and k.strip() and _is_int(v) and v > 0 for k, v in c.datasets.items()), where, "datasets",
        "a YAML mapping of data set → records per cell, e.g. {zsre: 10, counterfact: 10} ({} for none)", c.datasets)
    _check_counts(where, "batch_sizes", c.batch_sizes)
    _check_counts(where, "sequential_ns", c.sequential_ns)
    _need(isinstance(c.batch_sizes_by_method, dict), where, "batch_sizes_by_method",
          "a YAML mapping of method → list of batch sizes", c.batch_sizes_by_method)
    _check_methods(where, "batch_sizes_by_method", list(c.batch_sizes_by_method), allow_empty=True)
    for method, sizes in c.batch_sizes_by_method.items():
        _check_counts(where, f"batch_sizes_by_method.{method}", sizes)
    for name, minimum in (("sequential_offset", 0), ("sequential_batch_size", 1), ("multihop_n", 0),
                          ("sequential_eval_every", 0), ("sequential_checkpoint_every", 0),
                          ("sequential_capability_every", 0), ("capability_limit", 1)):
        value = getattr(c, name)
        _need(_is_int(value) and value >= minimum, where, name, f"an integer >= {minimum}", value)
    _need(isinstance(c.editor_checkpoints, dict) and all(isinstance(v, str) and v for v in c.editor_checkpoints.values()),
          where, "editor_checkpoints", "a YAML mapping of method → checkpoint folder (or hub id)", c.editor_checkpoints)
    _check_methods(where, "editor_checkpoints", list(c.editor_checkpoints), allow_empty=True)
    _need(isinstance(c.overrides, dict) and all(isinstance(v, dict) for v in c.overrides.values()), where, "overrides",
          "a YAML mapping of method → mapping of hyperparameters, e.g. {rome: {v_lr: 0.5}}", c.overrides)
    _check_methods(where, "overrides", list(c.overrides), allow_empty=True)
    _need(isinstance(c.fluency, bool), where, "fluency", "true or false", c.fluency)
    _need(isinstance(c.capability_tasks, list) and bool(c.capability_tasks) and all(
        isinstance(t, str) and t.strip() for t in c.capability_tasks), where, "capability_tasks",
        "a YAML list of task names, e.g. [local-perplexity, known-facts] or lm-eval tasks", c.capability_tasks)
    _need(isinstance(c.sequential_scores, list) and bool(c.sequential_scores) and all(
        k in SCORE_KEYS for k in c.sequential_scores), where, "sequential_scores",
        f"a YAML list of scores, each one of {', '.join(SCORE_KEYS)}", c.sequential_scores)


# --- the plan: which cells, in which order ---------------------------------------------------------------------

# (method, data, protocol, n, batch=1, offset=0) → the cell, or None where the method cannot run
CellFn = Callable[..., Optional[dict]]


@dataclass
class Phases:
    """The cells of a finished (or interrupted) study run, keyed as the tables read them."""

    single: dict = field(default_factory=dict)  # (method, data) → cell
    batch: dict = field(default_factory=dict)  # (method, batch size) → cell
    sequential: dict = field(default_factory=dict)  # (method, edits) → cell
    multihop: dict = field(default_factory=dict)  # method → cell


def batching_methods(methods: list[str]) -> list[str]:
    """The ``methods`` that edit many requests in one call (unknown names left out)."""
    out = []
    for m in methods:
        try:
            if get_editor_class(m).supports_batch:
                out.append(m)
        except ConfigError:
            pass
    return out


def batch_sizes(c: StudyConfig, method: str, skipped: dict[str, str]) -> list[int]:
    """The batch sizes of ``method``'s batch curve (an unknown method is noted in ``skipped``)."""
    if c.batch_sizes_by_method:
        return list(c.batch_sizes_by_method.get(method, []))
    try:
        return [b for b in c.batch_sizes if b == 1 or get_editor_class(method).supports_batch]
    except ConfigError as err:
        skipped[method] = str(err)
        return []


def run_phases(c: StudyConfig, cell: CellFn, done_with: Callable[[str], None], skipped: dict[str, str]) -> Phases:
    """Every cell of the study, phase by phase (single edits of every method, multi-hop, then batches and sequences
    by growing size): an interrupted or still running study has whole tables first, and the cheap cells before the
    expensive ones. ``done_with(method)`` is called after a method's last cell of a phase."""
    p = Phases()
    for m in c.methods:
        for d, n in c.datasets.items():
            p.single[(m, d)] = cell(m, d, "single", n)
        done_with(m)
    if c.multihop_n:
        for m in [m for m in c.methods if c.multihop_methods is None or m in c.multihop_methods]:
            p.multihop[m] = cell(m, c.multihop_data, "multihop", n=c.multihop_n)
            done_with(m)
    # A curve's first point (one edit, scored) is the single-edit cell of that data: n records each edited
    # alone give it an interval, where a cell of one record would not.
    for (m, b) in [(m, b) for m in c.methods for b in batch_sizes(c, m, skipped) if b == 1]:
        p.batch[(m, 1)] = p.single.get((m, c.batch_data)) or cell(m, c.batch_data, "single", n=1)
    seq_methods = [m for m in c.methods if c.sequential_methods is None or m in c.sequential_methods]
    if 1 in c.sequential_ns:
        for m in seq_methods:
            reuse = c.sequential_offset == 0 and (m, c.sequential_data) in p.single
            p.sequential[(m, 1)] = (p.single[(m, c.sequential_data)] if reuse else
                                    cell(m, c.sequential_data, "sequential", n=1, offset=c.sequential_offset))
    # Then batches and sequences together by growing size, so the most expensive cells (MEMIT's batch of
    # 1000, sequences of 100) come last.
    grown = sorted([(b, 0, m) for m in c.methods for b in batch_sizes(c, m, skipped) if b > 1]
                   + [(n, 1, m) for m in seq_methods for n in c.sequential_ns if n > 1])
    for i, (size, is_sequence, m) in enumerate(grown):
        if is_sequence:
            seq_batch = c.sequential_batch_size if batching_methods([m]) else 1
            p.sequential[(m, size)] = cell(m, c.sequential_data, "sequential", n=size, batch=seq_batch,
                                           offset=c.sequential_offset)
        else:
            p.batch[(m, size)] = cell(m, c.batch_data, "batch", n=size, batch=size)
        if all(m != later for _, _, later in grown[i + 1:]):
            done_with(m)
    return p
