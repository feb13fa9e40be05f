"""Editing protocols (single, batch, sequential) and the per-request/summary report.

- single: each request edited from the original model, measured, undone.
- batch: ``batch_size`` requests per edit call, measured on those requests, undone.
- sequential: requests (or batches of ``batch_size``, as MEMIT/AlphaEdit users run them) applied one
  after another and kept; each measured right after its own edit call (the *immediate* reading) and all measured
  after the last edit (the *retained* reading, the study's), then every edit undone. Optionally the retained
  reading of the edits so far every ``eval_every`` requests (a curve), and a checkpoint every N edit calls that a
  later run resumes bit-identically (``lifelong.py``).

The loop is here; what a measurement adds to the metrics is in ``scoring.py``, the generations that wait for the
unedited model in ``generation.py``.
"""
from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional, Sequence

import torch
from tqdm.auto import tqdm

from ..data.rome_references import RomeReferences
from ..editors.base import EditDelta, Editor
from ..editors.delta import undo_all
from ..errors import ConfigError
from ..metrics import EditSeconds, PeakMemory, PeakMemoryMonitor
from ..models.loading import LoadedModel
from ..requests import EditRequest
from ..version import package_versions
from .generation import GENERATION_ROWS, PENDING_BYTES, DeferredGeneration  # noqa: F401  (importable here as before)
from .lifelong import (READINGS, Checkpointing, LoopPosition, Restored, capture_rng, check_checkpointing,
                       immediate_summary, restore_checkpoint, run_identity, SequenceEdits, terminate_as_interrupt,
                       verified_position, write_checkpoint)
from .measure import measure
from .pre_edit import PreEditCache, pre_edit_results
from .scoring import MetricSet, Scoring  # noqa: F401  (MetricSet: importable here as before)

# Bump when a change of the evaluation (what is scored, how a metric is computed) changes results: cached study
# cells of an older version are computed again. Still 1 after the ROME-format CounterFact scoring (the
# neighbourhood score leaves out ROME's attribute prompts; generation prompts and consistency added): only records
# with attribute or generation prompts (--data counterfact-rome*) score differently, and no study cell has scored them.
EVALUATION_VERSION = 1

EDITING_PROTOCOLS = ("single", "batch", "sequential")

# What each summary key measures, written into every report.
KEY_PROTOCOLS = {
    "reliability": "teacher-forced token accuracy of target_new after the edit prompt (EasyEdit)",
    "reliability_exact": "greedy decoding reproduces all of target_new after the edit prompt",
    "generalization": "teacher-forced token accuracy of target_new after the rephrased prompts",
    "generalization_exact": "greedy exact match of target_new after the rephrased prompts",
    "locality": "fraction of locality-answer tokens whose argmax prediction is unchanged by the edit",
    "locality_exact": "locality prompts whose whole argmax prediction is unchanged",
    "portability": "teacher-forced token accuracy of the portability answers",
    "portability_exact": "greedy exact match of the portability answers",
    "efficacy_score": "P(target_new) > P(target_true) on the edit prompt (ROME, mean token log-prob)",
    "efficacy_magnitude": "P(target_new) - P(target_true) on the edit prompt",
    "paraphrase_score": "P(target_new) > P(target_true) on rephrases",
    "paraphrase_magnitude": "P(target_new) - P(target_true) on rephrases",
    "neighborhood_score": "P(true answer) > P(target_new) on locality (neighbour) prompts",
    "neighborhood_magnitude": "P(true answer) - P(target_new) on locality prompts",
    "fluency": "weighted bigram/trigram entropy (bits) of greedy generations from the edit prompt and rephrases",
    "edit_seconds": "median wall-clock seconds per request of the editor's edit call",
    "edit_seconds_mean": "mean wall-clock seconds per request of the editor's edit calls",
    "scoring_seconds_per_request": "mean seconds per request spent scoring (pre and post) and generating",
    "seconds_per_request": "mean seconds per request: edit + scoring + generation (not the one-off prepare)",
    "time_split_seconds": "total seconds per phase: prepare (statistics, caches), edit, scoring, generation",
    "peak_memory_mb": "peak process memory during edits (CPU: peak resident set size, kernel VmHWM, reset at each edit after freed heap is returned; CUDA: allocator peak)",
}

# the per-request scores (each request has one, so a cell's value has a bootstrap interval), as opposed to costs
SCORE_KEYS = ("reliability", "reliability_exact", "generalization", "generalization_exact", "locality",
              "locality_exact", "portability", "portability_exact", "efficacy_score", "efficacy_magnitude",
              "paraphrase_score", "paraphrase_magnitude", "neighborhood_score", "neighborhood_magnitude")


@dataclass
class Report:
    method: str
    model: str
    protocol: str
    n: int
    batch_size: int
    requests: list[dict] = field(default_factory=list)
    pre: dict = field(default_factory=dict)
    post: dict = field(default_factory=dict)
    efficiency: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    kept_deltas: list = field(default_factory=list, repr=False)  # sequential + keep_edits: undo these to restore
    immediate: dict = field(default_factory=dict)  # sequential: each request scored right after its own edit call
    curve: list = field(default_factory=list)  # sequential with eval_every: both readings every K requests

    def to_json(self) -> dict:
        summary = {"method": self.method, "model": self.model, "n": self.n, "protocol": self.protocol, **self.post, **self.efficiency}
        readings = {"readings": {"retained": self.post, "immediate": self.immediate, "definitions": READINGS},
                    "curve": self.curve} if self.protocol == "sequential" else {}
        return {
            "summary": summary,
            "pre_edit": self.pre,
            "metric_protocols": {**{k: v for k, v in KEY_PROTOCOLS.items() if k in summary},
                             **{k: f"{KEY_PROTOCOLS[k.split('/')[0]]}, over the probes of kind {k.split('/', 1)[1]!r} only"
                                for k in summary if "/" in k}},
            "config": self.config,
            **readings,
            "requests": self.requests,
        }


def evaluate_editing(
    loaded: LoadedModel,
    editor: Editor,
    requests: Sequence[EditRequest],
    protocol: str = "single",
    batch_size: int = 1,
    fluency: bool = True,
    fluency_tokens: int = 40,
    progress: bool = True,
    keep_edits: bool = False,
    generate_tokens: int = 0,
    pre_cache: Optional[PreEditCache] = None,
    eval_every: int = 0,
    checkpointing: Optional[Checkpointing] = None,
    references: Optional[RomeReferences] = None,
    capability: Optional[Any] = None,
) -> Report:
    """Run ``protocol`` and return pre/post metrics per request and in summary, with efficiency.

    ``keep_edits``: leave the edits in the model (sequential, or any protocol that makes a single edit call);
    ``Report.kept_deltas`` undoes them. Otherwise every edit is undone before this returns, even on error or
    Ctrl-C. ``generate_tokens``: greedy continuations of each edit prompt and rephrase, before and after, kept in
    the per-request rows (``pre_generations``/``post_generations``); the fluency score reuses them.
    ``pre_cache``: where pre-edit scores and generations of earlier runs on the same model are read from and
    new ones written to (``evaluation/pre_edit.py``); without one they are all computed.
    Sequential only: ``eval_every`` K > 0 scores the requests edited so far every K requests (``Report.curve``);
    ``checkpointing`` writes the edited state every N edit calls and on Ctrl-C, or resumes the newest checkpoint.
    ``references``: ROME's consistency references (``data.rome_references``), for ROME CounterFact requests: their
    generations (from their generation prompts) are then also scored for consistency.
    ``capability``: (sequential) an object whose ``on_edits(n_done, loaded, last=...)`` is called before the first
    edit and after each edit call (``evaluation/capability.py``'s ``CapabilityCurve``).
    """
    if protocol not in EDITING_PROTOCOLS:  # before the requests are checked, as ever
        raise ValueError(f"protocol must be one of {EDITING_PROTOCOLS}, got {protocol!r}")
    requests = editor.validate(requests)
    batch_size, chunks = _edit_calls(protocol, batch_size, len(requests), keep_edits)
    if (eval_every or checkpointing) and protocol != "sequential":
        raise ConfigError("eval_every and checkpointing need protocol='sequential' (--eval-every, --checkpoint-dir "
                          "and --resume need --sequential)")
    if eval_every < 0:
        raise ConfigError(f"eval_every must be ≥ 0 (0: no curve), got {eval_every}")
    identity = run_identity(loaded, editor, requests, batch_size, eval_every) if checkpointing else {}
    if checkpointing and capability is not None:  # its points so far are in the checkpoint: resumed with the same
        identity["capability"] = capability.identity()
    if checkpointing is not None:
        check_checkpointing(checkpointing, loaded)
        if checkpointing.resume:
            verified_position(checkpointing, identity)  # another run's checkpoint: refused before any work
    # One set of generations serves both the fluency score and the printed answers.
    gen_tokens = max(fluency_tokens if fluency else 0, generate_tokens)
    timer = _Timer()
    with timer("prepare"):
        editor.prepare(loaded)
    pre_scores, pre_gens = pre_edit_results(loaded, requests, gen_tokens, pre_cache, timer)
    scoring = Scoring(requests, pre_scores, pre_gens if gen_tokens else None, fluency, references if fluency else None)
    generation = DeferredGeneration(loaded, requests, scoring, gen_tokens, timer)
    run = _Run(loaded, editor, requests, timer, scoring, generation,
               capability=capability if protocol == "sequential" else None)
    curve: list[dict] = []
    if protocol == "sequential":
        with terminate_as_interrupt(enabled=checkpointing is not None):  # SIGTERM: checkpoint, then exit
            kept, curve = _run_sequential(run, chunks, keep_edits, progress,
                                          _Lifelong(eval_every, checkpointing, identity))
    else:
        kept = _run_protocol(run, protocol, chunks, keep_edits, progress)
    return Report(
        method=editor.name, model=loaded.name, protocol=protocol, n=len(requests), batch_size=batch_size,
        requests=scoring.rows, pre=scoring.pre.summary(), post=scoring.post.summary(), efficiency=_efficiency(run),
        config={"hparams": editor.hparams.to_dict(), "fluency_tokens": gen_tokens if fluency else 0,
                "generate_tokens": gen_tokens, "versions": package_versions(), "device": str(loaded.device),
                "dtype": str(next(loaded.model.parameters()).dtype).removeprefix("torch."),
                "threads": torch.get_num_threads(), "batch_size": batch_size,
                "kept_edits": bool(kept), "scored": _scored_statement(protocol, len(chunks), batch_size),
                "earlier_seconds": run.earlier_seconds},
        kept_deltas=kept, immediate=immediate_summary(scoring.rows) if protocol == "sequential" else {}, curve=curve,
    )


def _edit_calls(protocol: str, batch_size: int, n: int, keep_edits: bool) -> tuple[int, list[list[int]]]:
    """The batch size in effect and the requests of each edit call, in order; a ``ValueError`` for a batch size
    or ``keep_edits`` that cannot run."""
    if protocol == "single":
        batch_size = 1
    if batch_size < 1:
        raise ValueError("batch_size must be ≥ 1")
    chunks = [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]
    if keep_edits and protocol != "sequential" and len(chunks) > 1:
        raise ValueError("keep_edits needs protocol='sequential' or a single edit call (single and batch edits are "
                         "undone after scoring each)")
    return batch_size, chunks


@dataclass
class _Run:
    """What the protocol loop works with: the model and editor, the requests, where the phases' seconds, the
    scores and the deferred generations go, and the edit calls' seconds and peak memory."""

    loaded: LoadedModel
    editor: Editor
    requests: Sequence[EditRequest]
    timer: "_Timer"
    scoring: Scoring
    generation: DeferredGeneration
    seconds: EditSeconds = field(default_factory=EditSeconds)
    memory: PeakMemory = field(default_factory=PeakMemory)
    capability: Optional[Any] = None  # sequential: on_edits(n_done, loaded, last) after each edit call
    # sequential --resume: the seconds of the processes before this one ({} for a fresh run, None when their
    # checkpoint did not record them); the timer's totals include them
    earlier_seconds: Optional[dict] = field(default_factory=dict)


def _run_protocol(run: _Run, protocol: str, chunks: list[list[int]], keep_edits: bool,
                  progress: bool) -> list[EditDelta]:
    """Single and batch: edit call by edit call, each scored and undone (unless kept: one edit call). Returns the
    edits kept; on error or Ctrl-C every edit is undone."""
    applied: list[EditDelta] = []  # edits currently in the model, undone in `finally` unless kept
    kept: list[EditDelta] = []
    bar = tqdm(total=len(run.requests), desc=f"{run.editor.name} ({protocol})", disable=not progress, unit="req")
    try:
        for chunk in chunks:
            delta = _edit(run, chunk)
            applied.append(delta)
            _score(run, chunk, None if keep_edits else delta)
            if not keep_edits:
                applied[-1].undo(run.loaded)  # still listed until undone: an interrupt inside undo leaves it to `finally`
                applied.pop()
                run.generation.flush(only_if_full=True)
            bar.update(len(chunk))
        run.generation.flush()
        if keep_edits:
            kept, applied = applied, []
    finally:
        bar.close()
        undo_all(applied, run.loaded)  # on error or Ctrl-C, always restore the model (every edit, even if one fails)
    return kept


@dataclass
class _Lifelong:
    """A sequential run's curve and checkpoints: ``eval_every`` requests between curve points (0: none), where
    checkpoints go (None: nowhere), and the run's identity they record."""

    eval_every: int = 0
    checkpointing: Optional[Checkpointing] = None
    identity: dict = field(default_factory=dict)


class CheckpointedInterrupt(KeyboardInterrupt):
    """Ctrl-C in a checkpointed sequential run: ``note`` says where the last checkpoint is and how to resume."""

    def __init__(self, note: str) -> None:
        super().__init__(note)
        self.note = note


def _run_sequential(run: _Run, chunks: list[list[int]], keep_edits: bool, progress: bool,
                    life: _Lifelong) -> tuple[list[EditDelta], list[dict]]:
    """Edit call after edit call, each kept and scored at once (immediate), a curve point every ``eval_every``
    requests and a checkpoint every ``checkpointing.every`` calls; then every request scored on the final model
    (retained). Returns the edits kept (one ``SequenceEdits``) and the curve. On error or Ctrl-C every edit is
    undone; with checkpointing, Ctrl-C first writes the state after the last finished call (an unfinished one is
    undone)."""
    edits = SequenceEdits(method=run.editor.name, model_name=run.loaded.name, requests=[])
    position, written = LoopPosition(rng=capture_rng()), -1
    if life.checkpointing is not None and life.checkpointing.resume:
        restored = restore_checkpoint(life.checkpointing, run.loaded, life.identity)
        edits, written = restored.delta, restored.position.calls_done
        position = _resume_rows(run, restored)
        if run.capability is not None:
            run.capability.restore(position.capability)
    done = sum(len(c) for c in chunks[:position.calls_done])
    edits.requests = list(run.requests[:done])
    applied: list[EditDelta] = [edits]  # in the model now, undone in `finally` unless kept: the sequence, the call under way
    bar = tqdm(total=len(run.requests), initial=done, desc=f"{run.editor.name} (sequential)", disable=not progress,
               unit="edit", dynamic_ncols=True)
    try:
        try:
            if run.capability is not None and position.calls_done == 0:
                run.capability.on_edits(0, run.loaded)
            for k in range(position.calls_done, len(chunks)):
                applied.append(_edit(run, chunks[k]))
                _score_immediate(run, chunks[k])
                done += len(chunks[k])
                if life.eval_every and _crossed(done, len(chunks[k]), life.eval_every) and done < len(run.requests):
                    position.curve.append(_curve_point(run, done))  # the last point is the final scoring's
                edits.fold(applied[-1], run.loaded)  # the call is finished only now
                applied.pop()
                if run.capability is not None:
                    run.capability.on_edits(done, run.loaded, last=done == len(run.requests))
                position.calls_done, position.rng = k + 1, capture_rng()
                bar.update(len(chunks[k]))
                if life.checkpointing is not None and position.calls_done % life.checkpointing.every == 0:
                    written = _checkpoint(run, life, edits, position, done)
        except KeyboardInterrupt:
            undo_all(applied[1:], run.loaded)  # a call not finished: the model as after the last finished one
            del applied[1:]
            if life.checkpointing is None:
                raise
            if position.calls_done > written:
                written = _checkpoint(run, life, edits, position, done)
            raise CheckpointedInterrupt(_resume_note(life.checkpointing, done, written)) from None
        run.generation.flush()
        _score(run, list(range(len(run.requests))))
        if life.eval_every:
            position.curve.append({"edits": len(run.requests), "retained": run.scoring.post.summary(),
                                   "immediate": immediate_summary(run.scoring.rows)})
        kept, applied = ([edits], []) if keep_edits else ([], applied)
    finally:
        bar.close()
        undo_all(applied, run.loaded)  # on error or Ctrl-C, always restore the model (every edit, even if one fails)
    return kept, position.curve


def _resume_rows(run: _Run, restored: Restored) -> LoopPosition:
    """Put the checkpoint's immediate scores and edit seconds back in the rows, and the earlier processes' seconds
    in the run's totals (the report's seconds then cover every edit, not this process's only); the position to go
    on from."""
    for row, saved in zip(run.scoring.rows, restored.rows):
        row.update(saved)
    edit_seconds = [row["edit_seconds"] for row in restored.rows if "edit_seconds" in row]
    for seconds in edit_seconds:
        run.seconds.update(seconds)
    earlier = restored.position.seconds
    run.earlier_seconds = dict(earlier) if earlier is not None else None
    for phase, seconds in (earlier or {"edit": sum(edit_seconds)}).items():  # an older checkpoint: its rows' edits
        if phase in run.timer.total:
            run.timer.total[phase] += seconds
    restored.position.rng = capture_rng()  # restore_checkpoint has just set them
    return restored.position


def _checkpoint(run: _Run, life: _Lifelong, edits: EditDelta, position: LoopPosition, done: int) -> int:
    assert life.checkpointing is not None
    if run.capability is not None:
        position.capability = [[n, scores] for n, scores in run.capability.points]
    if run.earlier_seconds is None:  # resumed from a checkpoint that did not record them: they stay unknown
        position.seconds = None
    else:
        wall = run.earlier_seconds.get("wall", 0.0) + time.perf_counter() - run.timer.started
        position.seconds = {**run.timer.total, "wall": wall}
    write_checkpoint(life.checkpointing, run.loaded, [edits], life.identity, position, run.scoring.rows, done)
    return position.calls_done


def _resume_note(checkpointing: Checkpointing, done: int, written: int) -> str:
    return (f"the checkpoint after {done} edits ({written} edit calls) is in {checkpointing.directory}; run the same "
            f"command with --resume {checkpointing.directory} to go on from there")


def _crossed(done: int, step: int, every: int) -> bool:
    """Whether the last ``step`` requests took the count past a multiple of ``every``."""
    return done // every > (done - step) // every


def _score_immediate(run: _Run, chunk: list[int]) -> None:
    """The immediate reading: the requests of the edit call just made, scored before the next one."""
    with run.timer("scoring"):
        scores = measure(run.loaded, [run.requests[i] for i in chunk])
    run.scoring.add_immediate(chunk, scores)


def _curve_point(run: _Run, done: int) -> dict:
    """Both readings over the first ``done`` requests: the retained one measured now, on the model as it is after
    ``done`` edits, locality against the unedited model; the immediate one from the rows."""
    with run.timer("scoring"):
        scores = measure(run.loaded, list(run.requests[:done]))
    retained = MetricSet()
    for i, s in enumerate(scores):
        retained.add(s, run.scoring.pre_scores[i], None, run.requests[i])
    return {"edits": done, "retained": retained.summary(), "immediate": immediate_summary(run.scoring.rows, done)}


def _edit(run: _Run, chunk: list[int]) -> EditDelta:
    """One edit call on the requests ``chunk``, its seconds and peak memory recorded."""
    with PeakMemoryMonitor(run.loaded.device) as mem, run.timer("edit"):
        delta = run.editor.edit(run.loaded, [run.requests[i] for i in chunk])
    run.memory.update(mem.peak_mb)
    for _ in chunk:
        run.seconds.update(delta.seconds / len(chunk))
    run.scoring.add_edit_seconds(chunk, delta.seconds)
    return delta


def _score(run: _Run, idx: list[int], delta: Optional[EditDelta] = None) -> None:
    """Score the requests ``idx`` on the model as it is now, then have their generations made (``delta``: an
    edit about to be undone, whose generations may wait for the unedited model)."""
    start = time.perf_counter()
    with run.timer("scoring"):
        post = measure(run.loaded, [run.requests[i] for i in idx])
    run.scoring.add_post(idx, post)
    run.scoring.set_score_seconds(idx, (time.perf_counter() - start) / len(idx))
    run.generation.after_scoring(idx, delta)


def _efficiency(run: _Run) -> dict:
    """Seconds and memory of a finished run, for the report's summary."""
    n, total = len(run.requests), run.timer.total
    return {
        "edit_seconds": round(float(run.seconds.compute()), 4),
        "edit_seconds_mean": round(total["edit"] / n, 4),
        "scoring_seconds_per_request": round((total["scoring"] + total["generation"]) / n, 4),
        "seconds_per_request": round((total["edit"] + total["scoring"] + total["generation"]) / n, 4),
        "peak_memory_mb": round(float(run.memory.compute()), 1),
        "prepare_seconds": round(total["prepare"], 3),
        "time_split_seconds": {k: round(v, 3) for k, v in total.items()},
    }


def _scored_statement(protocol: str, calls: int, batch_size: int = 1) -> str:
    """What the post-edit scores describe, in words (written into the report)."""
    if protocol == "sequential":
        if calls > 1 and batch_size > 1:
            return (f"{calls} batches of up to {batch_size} requests applied one after another and kept; all requests "
                    "scored after the last batch")
        return "every edit applied one after another and kept; all requests scored after the last edit"
    if calls == 1:
        return "one edit call; its requests scored on the edited model"
    unit = "request" if protocol == "single" else "batch"
    return f"each {unit} edited from the unedited model, scored, then undone ({calls} edit calls)"


class _Timer:
    """Wall-clock seconds summed per phase (edit, scoring, generation, prepare)."""

    def __init__(self) -> None:
        self.total: dict[str, float] = {"prepare": 0.0, "edit": 0.0, "scoring": 0.0, "generation": 0.0}
        self.started = time.perf_counter()

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.total[phase] += time.perf_counter() - start


TABLE_KEYS = ("reliability", "generalization", "locality", "portability", "efficacy_score")


def format_table(report: Report, keys: Sequence[str] = TABLE_KEYS, answers: bool = True) -> str:
    """A plain-text table: one row per request with pre → post values, its edit and scoring seconds, and (when
    generations ran) what the model answered before and after; then a row of means over the requests."""
    keys = [k for k in keys if k in report.post or k in report.pre]
    widths = [max(len(k), 12) for k in keys]
    header = (f"{'case':>6}  {'target_new':<18}" + "".join(f"  {k:>{w}}" for k, w in zip(keys, widths))
              + f"  {'edit s':>7}  {'score s':>7}")
    lines = [header, "-" * len(header)]

    def cell(pre: Optional[float], post: Optional[float], width: int) -> str:
        if post is None or (isinstance(post, float) and math.isnan(post)):
            return f"  {'-':>{width}}"
        pre_s = "  -" if pre is None else f"{pre:.2f}"
        return f"  {pre_s + ' → ' + format(post, '.2f'):>{width}}"

    def seconds(value: Optional[float]) -> str:
        return f"  {'-':>7}" if value is None else f"  {value:>7.2f}"

    for row in report.requests:
        pre, post = row.get("pre", {}), row.get("post", {})
        lines.append(f"{str(row['case_id']):>6}  {_clip(row['target_new'], 18):<18}"
                     + "".join(cell(pre.get(k), post.get(k), w) for k, w in zip(keys, widths))
                     + seconds(row.get("edit_seconds")) + seconds(row.get("score_seconds")))
        if answers and row.get("post_generations"):
            before = row.get("pre_generations", [""])[0]
            lines.append(f"{'':>8}{_clip(row['prompt'], 60)!s} … before: {_first_words(before)!r}  after: "
                         f"{_first_words(row['post_generations'][0])!r}")
    lines.append("-" * len(header))
    eff = report.efficiency
    lines.append(f"{'mean':>6}  {'':<18}" + "".join(cell(report.pre.get(k), report.post.get(k), w) for k, w in zip(keys, widths))
                 + seconds(eff.get("edit_seconds_mean")) + seconds(_mean_score_seconds(report)))
    return "\n".join(lines)


def _mean_score_seconds(report: Report) -> Optional[float]:
    values = [row["score_seconds"] for row in report.requests if "score_seconds" in row]
    return sum(values) / len(values) if values else None


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _first_words(text: str, n: int = 8) -> str:
    """The start of a generation, on one line: enough to see what the model now says."""
    return " ".join(text.split()[:n])


def verdict(report: Report) -> str:
    """One line in words: did the edits take, are neighbours unchanged, what did it cost."""
    rows = [r for r in report.requests if "post" in r]
    took = sum(1 for r in rows if r["post"].get("reliability_exact", r["post"].get("reliability", 0.0)) >= 1.0)
    parts = [f"{took}/{len(rows)} edits took (the model now completes the edit prompt with target_new)"]
    if "generalization" in report.post:
        parts.append(f"rephrases {report.post['generalization']:.0%}")
    if "locality" in report.post:
        parts.append(f"neighbours unchanged {report.post['locality']:.0%}")
    if "portability" in report.post:
        parts.append(f"portability {report.post['portability']:.0%}")
    eff = report.efficiency
    cost = f"{eff['edit_seconds_mean']:.1f} s per edit, {eff['seconds_per_request']:.1f} s per request with scoring"
    if eff.get("prepare_seconds", 0) >= 1:
        cost += f" (+{eff['prepare_seconds']:.0f} s one-off preparation)"
    return "; ".join(parts + [cost])
