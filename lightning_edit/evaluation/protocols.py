"""Editing protocols (single, batch, sequential) and the per-request/summary report.

- single: each request edited from the original model, measured, undone.
- batch: ``batch_size`` requests per edit call, measured on those requests, undone.
- sequential: requests applied one after another and kept; all measured after the last edit
  (the study's protocol), then every edit undone.
"""
from __future__ import annotations

import math
import platform
import time
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import torch
from tqdm.auto import tqdm

from ..editors.base import EditDelta, Editor
from ..metrics import (EditSeconds, Fluency, LocalityAgreement, PeakMemory, PeakMemoryMonitor, ProbabilityPreference,
                       TargetAccuracy)
from ..models.loading import LoadedModel
from ..requests import EditRequest
from .measure import RequestScores, generate_greedy, measure

PROTOCOLS = ("single", "batch", "sequential")

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
    "peak_memory_mb": "peak process memory during edits (CPU: peak resident set size, kernel VmHWM; CUDA: allocator peak)",
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

    def add(self, s: RequestScores, reference: RequestScores, generations: Optional[list[str]] = None) -> dict[str, float]:
        """Update with one request; return that request's values (only those its data allow)."""
        row: dict[str, float] = {}

        def put(key: str, *args) -> None:
            if args and all(len(a) for a in args):
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
        if generations:
            put("fluency", generations)
        return row

    def summary(self) -> dict[str, float]:
        out = {}
        for k, metric in self.m.items():
            if int(getattr(metric, "count", 0)) > 0:
                out[k] = round(float(metric.compute()), 4)
        return out


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
            "metric_protocols": {k: v for k, v in KEY_PROTOCOLS.items() if k in summary},
            "config": self.config,
            "requests": self.requests,
        }


def _fluency_prompts(r: EditRequest) -> list[str]:
    return [r.prompt, *r.rephrase_prompts]


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
) -> Report:
    """Run ``protocol`` and return pre/post metrics per request and in summary, with efficiency.

    ``keep_edits`` (sequential only): leave the edits in the model; ``Report.kept_deltas`` undoes them.
    """
    if keep_edits and protocol != "sequential":
        raise ValueError("keep_edits needs protocol='sequential' (single and batch edits are undone after scoring)")
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    requests = editor.validate(requests)
    if protocol == "single":
        batch_size = 1
    if batch_size < 1:
        raise ValueError("batch_size must be ≥ 1")

    prepare_start = time.perf_counter()
    editor.prepare(loaded)
    prepare_seconds = time.perf_counter() - prepare_start

    pre_scores = measure(loaded, requests)
    pre_gen = generate_greedy(loaded, [p for r in requests for p in _fluency_prompts(r)], fluency_tokens) if fluency else []
    pre_metrics, post_metrics = MetricSet(), MetricSet()
    rows: list[dict] = [{"case_id": r.case_id, "prompt": r.prompt, "target_new": r.target_new, "target_true": r.target_true} for r in requests]
    gen_offsets = [0]
    for r in requests:
        gen_offsets.append(gen_offsets[-1] + len(_fluency_prompts(r)))
    for i, s in enumerate(pre_scores):
        rows[i]["pre"] = pre_metrics.add(s, s, pre_gen[gen_offsets[i]: gen_offsets[i + 1]] if fluency else None)

    seconds_metric, memory_metric = EditSeconds(), PeakMemory()
    deltas: list[EditDelta] = []
    kept: list[EditDelta] = []
    bar = tqdm(total=len(requests), desc=f"{editor.name} ({protocol})", disable=not progress, unit="req")

    def score_post(idx: list[int]) -> None:
        post = measure(loaded, [requests[i] for i in idx])
        gens: list[str] = []
        if fluency:
            gens = generate_greedy(loaded, [p for i in idx for p in _fluency_prompts(requests[i])], fluency_tokens)
        pos = 0
        for i, s in zip(idx, post):
            k = len(_fluency_prompts(requests[i]))
            rows[i]["post"] = post_metrics.add(s, pre_scores[i], gens[pos: pos + k] if fluency else None)
            pos += k

    chunks = [list(range(i, min(i + batch_size, len(requests)))) for i in range(0, len(requests), batch_size)]
    try:
        for chunk in chunks:
            with PeakMemoryMonitor(loaded.device) as mem:
                delta = editor.edit(loaded, [requests[i] for i in chunk])
            memory_metric.update(mem.peak_mb)
            for i in chunk:
                seconds_metric.update(delta.seconds / len(chunk))
                rows[i]["edit_seconds"] = round(delta.seconds / len(chunk), 4)
            if protocol == "sequential":
                deltas.append(delta)
            else:
                score_post(chunk)
                delta.undo(loaded)
            bar.update(len(chunk))
        if protocol == "sequential":
            score_post(list(range(len(requests))))
        if keep_edits:
            kept, deltas = deltas, []
    finally:
        for delta in reversed(deltas):  # on error, always restore the model
            delta.undo(loaded)
        bar.close()

    efficiency = {
        "edit_seconds": round(float(seconds_metric.compute()), 4),
        "peak_memory_mb": round(float(memory_metric.compute()), 1),
        "prepare_seconds": round(prepare_seconds, 3),
    }
    return Report(
        method=editor.name, model=loaded.name, protocol=protocol, n=len(requests), batch_size=batch_size,
        requests=rows, pre=pre_metrics.summary(), post=post_metrics.summary(), efficiency=efficiency,
        config={"hparams": editor.hparams.to_dict(), "fluency_tokens": fluency_tokens if fluency else 0,
                "versions": versions(), "device": str(loaded.device)},
        kept_deltas=kept,
    )


def versions() -> dict[str, str]:
    import lightning
    import torchmetrics
    import transformers

    from .. import __version__

    return {"lightning_edit": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "lightning": lightning.__version__, "torchmetrics": torchmetrics.__version__, "python": platform.python_version()}


def format_table(report: Report, keys: Sequence[str] = ("reliability", "generalization", "locality", "portability", "efficacy_score")) -> str:
    """A plain-text table: one row per request with pre → post values, then the summary."""
    lines = []
    header = f"{'case':>6}  {'target_new':<18}" + "".join(f"{k[:13]:>16}" for k in keys) + f"{'sec':>8}"
    lines.append(header)
    lines.append("-" * len(header))

    def cell(pre: Optional[float], post: Optional[float]) -> str:
        if post is None or (isinstance(post, float) and math.isnan(post)):
            return f"{'-':>16}"
        pre_s = "  -" if pre is None else f"{pre:.2f}"
        return f"{pre_s + ' → ' + format(post, '.2f'):>16}"

    for row in report.requests:
        pre, post = row.get("pre", {}), row.get("post", {})
        lines.append(f"{str(row['case_id']):>6}  {row['target_new'][:18]:<18}" + "".join(cell(pre.get(k), post.get(k)) for k in keys)
                     + f"{row.get('edit_seconds', float('nan')):>8.2f}")
    lines.append("-" * len(header))
    lines.append(f"{'mean':>6}  {'':<18}" + "".join(cell(report.pre.get(k), report.post.get(k)) for k in keys)
                 + f"{report.efficiency['edit_seconds']:>8.2f}")
    return "\n".join(lines)
