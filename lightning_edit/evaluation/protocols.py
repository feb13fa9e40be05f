"""Editing protocols (single, batch, sequential) and the per-request/summary report.

- single: each request edited from the original model, measured, undone.
- batch: ``batch_size`` requests per edit call, measured on those requests, undone.
- sequential: requests (or batches of ``batch_size``, as MEMIT/AlphaEdit users run them) applied one
  after another and kept; all measured after the last edit (the study's protocol), then every edit undone.
"""
from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, Optional, Sequence

import torch
from tqdm.auto import tqdm

from ..editors.base import EditDelta, Editor
from ..editors.delta import undo_all
from ..metrics import (EditSeconds, Fluency, LocalityAgreement, PeakMemory, PeakMemoryMonitor, ProbabilityPreference,
                       TargetAccuracy)
from ..models.loading import LoadedModel
from ..models.row_weights import supports_row_changes
from ..requests import EditRequest
from ..version import package_versions
from .measure import RequestScores, fluency_prompts, generate_greedy, measure
from .pre_edit import PreEditCache, pre_edit_results

# Bump when a change of the evaluation (what is scored, how a metric is computed) changes results: cached study
# cells of an older version are computed again.
EVALUATION_VERSION = 1

EDITING_PROTOCOLS = ("single", "batch", "sequential")
GENERATION_ROWS = 64  # prompts per batched generation of deferred weight edits (the demo's 20 requests: one batch)
PENDING_BYTES = 512 * 2**20  # weight differences held for deferred generation before they are generated

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


class MetricSet:
    """One set of torchmetrics for one moment (pre or post)."""

    def __init__(self) -> None:
        self.m = {
            "reliability": TargetAccuracy("token"), "reliability_exact": TargetAccuracy("exact"),
            "generalization": TargetAccuracy("token"), "generalization_exact": TargetAccuracy("exact"),
            "locality": LocalityAgreement("token"), "locality_exact": LocalityAgreement("exact"),
            "portability": TargetAccuracy("token"), "portability_exact": TargetAccuracy("exact"),
            "efficacy_score": ProbabilityPreference("score"), "efficacy_magnitude": ProbabilityPreference("magnitude"),
            "paraphrase_score": ProbabilityPreference("score"), "paraphrase_magnitude": ProbabilityPreference("magnitude"),
            "neighborhood_score": ProbabilityPreference("score"), "neighborhood_magnitude": ProbabilityPreference("magnitude"),
            "fluency": Fluency(),
        }

    def add(self, s: RequestScores, reference: RequestScores, generations: Optional[list[str]] = None,
            request: Optional[EditRequest] = None) -> dict[str, float]:
        """Update with one request; return that request's values (only those its data allow). With the
        ``request``, locality and portability are also scored per probe kind (``locality/<kind>``,
        ``portability/<kind>``: KnowEdit's Relation_Specificity, Reasoning, ... as its files name them)."""
        row: dict[str, float] = {}

        def put(key: str, *args) -> None:
            if args and all(len(a) for a in args):
                if key not in self.m:  # a probe kind first seen in this request
                    self.m[key] = LocalityAgreement("token") if key.startswith("locality/") else TargetAccuracy("token")
                row[key] = float(self.m[key](*args))

        put("reliability", s.rewrite_new)
        put("reliability_exact", s.rewrite_new)
        put("generalization", s.rephrase_new)
        put("generalization_exact", s.rephrase_new)
        put("locality", reference.locality, s.locality)
        put("locality_exact", reference.locality, s.locality)
        put("portability", s.portability)
        put("portability_exact", s.portability)
        put("efficacy_score", s.rewrite_new, s.rewrite_true)
        put("efficacy_magnitude", s.rewrite_new, s.rewrite_true)
        put("paraphrase_score", s.rephrase_new, s.rephrase_true)
        put("paraphrase_magnitude", s.rephrase_new, s.rephrase_true)
        put("neighborhood_score", s.locality, s.locality_new)
        put("neighborhood_magnitude", s.locality, s.locality_new)
        row.update(self.add_generations(generations or []))
        if request is not None:
            for kind in _kinds(request.locality):
                idx = [i for i, probe in enumerate(request.locality) if probe.kind == kind]
                put(f"locality/{kind}", [reference.locality[i] for i in idx], [s.locality[i] for i in idx])
            for kind in _kinds(request.portability):
                put(f"portability/{kind}", [s.portability[i] for i, probe in enumerate(request.portability) if probe.kind == kind])
        return row

    def add_generations(self, generations: list[str]) -> dict[str, float]:
        """Update the fluency score with one request's generations; return its value (nothing without any)."""
        return {"fluency": float(self.m["fluency"](generations))} if generations else {}

    def summary(self) -> dict[str, float]:
        out = {}
        for k, metric in self.m.items():
            if int(getattr(metric, "count", 0)) > 0:
                out[k] = round(float(metric.compute()), 4)
        return out


def _kinds(probes) -> list[str]:
    """The named kinds among a request's probes, in first-seen order (unnamed probes count only overall)."""
    return list(dict.fromkeys(p.kind for p in probes if p.kind))


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

    def to_json(self) -> dict:
        summary = {"method": self.method, "model": self.model, "n": self.n, "protocol": self.protocol, **self.post, **self.efficiency}
        return {
            "summary": summary,
            "pre_edit": self.pre,
            "metric_protocols": {**{k: v for k, v in KEY_PROTOCOLS.items() if k in summary},
                             **{k: f"{KEY_PROTOCOLS[k.split('/')[0]]}, over the probes of kind {k.split('/', 1)[1]!r} only"
                                for k in summary if "/" in k}},
            "config": self.config,
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
) -> Report:
    """Run ``protocol`` and return pre/post metrics per request and in summary, with efficiency.

    ``keep_edits``: leave the edits in the model (sequential, or any protocol that makes a single edit call);
    ``Report.kept_deltas`` undoes them. Otherwise every edit is undone before this returns, even on error or
    Ctrl-C. ``generate_tokens``: greedy continuations of each edit prompt and rephrase, before and after, kept in
    the per-request rows (``pre_generations``/``post_generations``); the fluency score reuses them.
    ``pre_cache``: where pre-edit scores and generations of earlier runs on the same model are read from and
    new ones written to (``evaluation/pre_edit.py``); without one they are all computed.
    """
    if protocol not in EDITING_PROTOCOLS:
        raise ValueError(f"protocol must be one of {EDITING_PROTOCOLS}, got {protocol!r}")
    requests = editor.validate(requests)
    if protocol == "single":
        batch_size = 1
    if batch_size < 1:
        raise ValueError("batch_size must be ≥ 1")
    chunks = [list(range(i, min(i + batch_size, len(requests)))) for i in range(0, len(requests), batch_size)]
    if keep_edits and protocol != "sequential" and len(chunks) > 1:
        raise ValueError("keep_edits needs protocol='sequential' or a single edit call (single and batch edits are "
                         "undone after scoring each)")
    # One set of generations serves both the fluency score and the printed answers.
    gen_tokens = max(fluency_tokens if fluency else 0, generate_tokens)
    timer = _Timer()

    with timer("prepare"):
        editor.prepare(loaded)

    pre_scores, pre_gens = pre_edit_results(loaded, requests, gen_tokens, pre_cache, timer)
    pre_metrics, post_metrics = MetricSet(), MetricSet()
    rows: list[dict] = [{"case_id": r.case_id, "prompt": r.prompt, "target_new": r.target_new, "target_true": r.target_true} for r in requests]
    for i, s in enumerate(pre_scores):
        gens = pre_gens[i] if gen_tokens else None
        rows[i]["pre"] = pre_metrics.add(s, s, gens if fluency else None, requests[i])
        if gens is not None:
            rows[i]["pre_generations"] = gens

    seconds_metric, memory_metric = EditSeconds(), PeakMemory()
    applied: list[EditDelta] = []  # edits currently in the model, undone in `finally` unless kept
    kept: list[EditDelta] = []
    bar = tqdm(total=len(requests), desc=f"{editor.name} ({protocol})", disable=not progress, unit="req")

    # Weight edits wait here (as their weight differences) to have their generations made together, many edits'
    # rows in one batch on the unedited model (models/row_weights.py): on a CPU a greedy step costs about as much
    # for one row as for many. Edits that attach patches are generated on the edited model at once.
    pending: list[tuple[list[int], dict[str, torch.Tensor]]] = []

    def score_post(idx: list[int], delta: Optional[EditDelta] = None) -> None:
        start = time.perf_counter()
        with timer("scoring"):
            post = measure(loaded, [requests[i] for i in idx])
        for i, s in zip(idx, post):
            rows[i]["post"] = post_metrics.add(s, pre_scores[i], None, requests[i])
        per_request = (time.perf_counter() - start) / len(idx)
        for i in idx:
            rows[i]["score_seconds"] = round(per_request, 4)
        if not gen_tokens:
            return
        # ``delta`` is given only for an edit that is undone next: its generations wait for the unedited model.
        # The differences are kept in float32: a bf16 difference of two bf16 weights would round the change away.
        weights_only = delta is not None and not any(getattr(p, "changes_outputs", True) for p in delta.patches)
        changes = ({name: after.float() - delta.weights_before[name].float() for name, after in delta.weights_after.items()}
                   if weights_only else None)
        if changes is not None and supports_row_changes(loaded.model, [changes]):
            pending.append((idx, changes))
        else:
            generate_for([(idx, None)])

    def generate_pending(only_if_full: bool = False) -> None:
        """Generate for the waiting edits (the model must hold none of them); with ``only_if_full``, only once
        they fill a generation batch or hold ``PENDING_BYTES`` of weight differences."""
        rows_waiting = sum(len(fluency_prompts(requests[i])) for idx, _ in pending for i in idx)
        bytes_waiting = sum(t.numel() * t.element_size() for _, c in pending for t in c.values())
        if pending and (not only_if_full or rows_waiting >= GENERATION_ROWS or bytes_waiting >= PENDING_BYTES):
            generate_for(pending)
            pending.clear()

    def generate_for(groups: list[tuple[list[int], Optional[dict[str, torch.Tensor]]]]) -> None:
        """Greedy generations of the groups' requests (each group: its requests and its edit's weight changes,
        or None for the model as it is now); fluency and the answers shown come from them."""
        prompts, owners = [], []
        for g, (idx, _) in enumerate(groups):
            for i in idx:
                prompts += fluency_prompts(requests[i])
                owners += [g] * len(fluency_prompts(requests[i]))
        changes = [c for _, c in groups]
        start = time.perf_counter()
        with timer("generation"):
            if any(c is not None for c in changes):
                gens = generate_greedy(loaded, prompts, gen_tokens, batch_size=GENERATION_ROWS,
                                       row_changes=[c or {} for c in changes], groups=owners)
            else:
                gens = generate_greedy(loaded, prompts, gen_tokens)
        share = (time.perf_counter() - start) / sum(len(idx) for idx, _ in groups)
        pos = 0
        for idx, _ in groups:
            for i in idx:
                k = len(fluency_prompts(requests[i]))
                if fluency:
                    rows[i]["post"].update(post_metrics.add_generations(gens[pos: pos + k]))
                rows[i]["post_generations"] = gens[pos: pos + k]
                rows[i]["score_seconds"] = round(rows[i]["score_seconds"] + share, 4)
                pos += k

    try:
        for chunk in chunks:
            with PeakMemoryMonitor(loaded.device) as mem, timer("edit"):
                delta = editor.edit(loaded, [requests[i] for i in chunk])
            applied.append(delta)
            memory_metric.update(mem.peak_mb)
            for i in chunk:
                seconds_metric.update(delta.seconds / len(chunk))
                rows[i]["edit_seconds"] = round(delta.seconds / len(chunk), 4)
            if protocol != "sequential":
                score_post(chunk, None if keep_edits else delta)
                if not keep_edits:
                    applied[-1].undo(loaded)  # still listed until undone: an interrupt inside undo leaves it to `finally`
                    applied.pop()
                    generate_pending(only_if_full=True)
            bar.update(len(chunk))
        generate_pending()
        if protocol == "sequential":
            score_post(list(range(len(requests))))
        if keep_edits:
            kept, applied = applied, []
    finally:
        bar.close()
        undo_all(applied, loaded)  # on error or Ctrl-C, always restore the model (every edit, even if one fails)

    n = len(requests)
    efficiency = {
        "edit_seconds": round(float(seconds_metric.compute()), 4),
        "edit_seconds_mean": round(timer.total["edit"] / n, 4),
        "scoring_seconds_per_request": round((timer.total["scoring"] + timer.total["generation"]) / n, 4),
        "seconds_per_request": round((timer.total["edit"] + timer.total["scoring"] + timer.total["generation"]) / n, 4),
        "peak_memory_mb": round(float(memory_metric.compute()), 1),
        "prepare_seconds": round(timer.total["prepare"], 3),
        "time_split_seconds": {k: round(v, 3) for k, v in timer.total.items()},
    }
    return Report(
        method=editor.name, model=loaded.name, protocol=protocol, n=n, batch_size=batch_size,
        requests=rows, pre=pre_metrics.summary(), post=post_metrics.summary(), efficiency=efficiency,
        config={"hparams": editor.hparams.to_dict(), "fluency_tokens": gen_tokens if fluency else 0,
                "generate_tokens": gen_tokens, "versions": package_versions(), "device": str(loaded.device),
                "dtype": str(next(loaded.model.parameters()).dtype).removeprefix("torch."),
                "threads": torch.get_num_threads(), "batch_size": batch_size,
                "kept_edits": bool(kept), "scored": _scored_statement(protocol, len(chunks), batch_size)},
        kept_deltas=kept,
    )


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
