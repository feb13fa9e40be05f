"""Scoring an editing run: the metric sets before and after the edits, and each request's row of values.

The protocol loop (``protocols.py``) measures the model; this module turns what it measured into metric updates
and per-request rows. Pre-edit scores are added once, post-edit scores after each edit, and the fluency of
generations whenever they are made (``generation.py``)."""
from __future__ import annotations

from typing import Optional, Sequence

from ..data.rome_references import RomeReferences
from ..metrics import Fluency, LocalityAgreement, ProbabilityPreference, TargetAccuracy, TfidfConsistency
from ..requests import EditRequest
from .measure import RequestScores


def generated_texts(request: Optional[EditRequest], generations: list[str]) -> list[str]:
    """The texts scored for fluency and consistency: ROME scores each generation prompt with its continuation
    (its ``generate_fast`` returns both); other data sets score the continuations alone."""
    if request is not None and request.generation_prompts and len(generations) == len(request.generation_prompts):
        return [p + g for p, g in zip(request.generation_prompts, generations)]
    return generations


def _neighbours(request: Optional[EditRequest], n: int) -> list[int]:
    """The locality probes the neighbourhood score compares P(true) with P(new) on: all but ROME's attribute
    prompts, whose answer is the new object itself (the comparison means nothing there)."""
    if request is None:
        return list(range(n))
    return [i for i, probe in enumerate(request.locality) if probe.kind != "attribute"]


class MetricSet:
    """One set of torchmetrics for one moment (pre or post). With ``references`` (ROME's CounterFact), the
    generations are also scored for consistency with the reference texts about each request's new object."""

    def __init__(self, references: Optional[RomeReferences] = None) -> None:
        self.references = references
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
        if references is not None:
            self.m["consistency"] = TfidfConsistency(references.vocabulary, references.idf)

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
        near = _neighbours(request, len(s.locality))
        put("neighborhood_score", [s.locality[i] for i in near], [s.locality_new[i] for i in near])
        put("neighborhood_magnitude", [s.locality[i] for i in near], [s.locality_new[i] for i in near])
        row.update(self.add_generations(generations or [], request))
        if request is not None:
            for kind in _kinds(request.locality):
                idx = [i for i, probe in enumerate(request.locality) if probe.kind == kind]
                put(f"locality/{kind}", [reference.locality[i] for i in idx], [s.locality[i] for i in idx])
            for kind in _kinds(request.portability):
                put(f"portability/{kind}", [s.portability[i] for i, probe in enumerate(request.portability) if probe.kind == kind])
        return row

    def add_generations(self, generations: list[str], request: Optional[EditRequest] = None) -> dict[str, float]:
        """Update the fluency (and consistency) scores with one request's generations; return its values
        (nothing without any)."""
        if not generations:
            return {}
        texts = generated_texts(request, generations)
        row = {"fluency": float(self.m["fluency"](texts))}
        if self.references is not None and request is not None and request.relation_id and request.target_new_id:
            row["consistency"] = float(self.m["consistency"](texts, self.references.texts(request)))
        return row

    def summary(self) -> dict[str, float]:
        out = {}
        for k, metric in self.m.items():
            if int(getattr(metric, "count", 0)) > 0:
                out[k] = round(float(metric.compute()), 4)
        return out


def _kinds(probes) -> list[str]:
    """The named kinds among a request's probes, in first-seen order (unnamed probes count only overall)."""
    return list(dict.fromkeys(p.kind for p in probes if p.kind))


class Scoring:
    """The pre and post metric sets of one run and a row per request (its values, generations and seconds).

    ``pre_generations``: each request's generations on the unedited model (None: none were made); they are kept in
    the rows, and scored for fluency when ``fluency``."""

    def __init__(self, requests: Sequence[EditRequest], pre_scores: list[RequestScores],
                 pre_generations: Optional[list[list[str]]], fluency: bool,
                 references: Optional[RomeReferences] = None) -> None:
        self.requests, self.pre_scores, self.fluency = requests, pre_scores, fluency
        self.pre, self.post = MetricSet(references), MetricSet(references)
        self.rows: list[dict] = [{"case_id": r.case_id, "prompt": r.prompt, "target_new": r.target_new,
                                  "target_true": r.target_true} for r in requests]
        for i, s in enumerate(pre_scores):
            gens = pre_generations[i] if pre_generations is not None else None
            self.rows[i]["pre"] = self.pre.add(s, s, gens if fluency else None, requests[i])
            if gens is not None:
                self.rows[i]["pre_generations"] = gens

    def add_edit_seconds(self, idx: list[int], seconds: float) -> None:
        """One edit call's seconds, shared equally by its requests."""
        for i in idx:
            self.rows[i]["edit_seconds"] = round(seconds / len(idx), 4)

    def add_post(self, idx: list[int], post_scores: list[RequestScores]) -> None:
        """The requests ``idx`` scored on the edited model, against their own pre-edit scores."""
        for i, s in zip(idx, post_scores):
            self.rows[i]["post"] = self.post.add(s, self.pre_scores[i], None, self.requests[i])

    def add_immediate(self, idx: list[int], scores: list[RequestScores]) -> None:
        """The requests ``idx`` scored right after their own edit call (a sequential run's immediate reading),
        against their pre-edit scores; kept in the rows (``immediate``) apart from the post-edit metric set."""
        for i, s in zip(idx, scores):
            self.rows[i]["immediate"] = MetricSet().add(s, self.pre_scores[i], None, self.requests[i])

    def set_score_seconds(self, idx: list[int], per_request: float) -> None:
        for i in idx:
            self.rows[i]["score_seconds"] = round(per_request, 4)

    def add_generations(self, i: int, generations: list[str], seconds: float) -> None:
        """Request ``i``'s generations on its edited model (scored for fluency when asked) and their seconds."""
        if self.fluency:
            self.rows[i]["post"].update(self.post.add_generations(generations, self.requests[i]))
        self.rows[i]["post_generations"] = generations
        self.rows[i]["score_seconds"] = round(self.rows[i]["score_seconds"] + seconds, 4)
