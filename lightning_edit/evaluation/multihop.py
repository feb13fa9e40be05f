"""The multi-hop protocol (MQuAKE, Zhong et al. 2023): per case, apply all its edits, ask its multi-hop questions.

For each case: score it on the unedited model (pre), apply every edit of the case in one ``editor.edit`` call (one
batch where the method supports it; the editor applies them one after another where it does not), score it again
(post), undo the edits (in ``finally``: on error or Ctrl-C too). Cases never see each other's edits.

A question is answered when the teacher-forced tokens of the new answer, or of any of its aliases, are all the
model's argmax after the question (our ``exact`` protocol: what greedy decoding would emit); a case counts when any
of its questions is answered (MQuAKE's rule: "regard the edit successful if the edited model can answer any of
these questions"). As MQuAKE does, the question follows in-context demonstrations in its "Q: ... A: ..." format, so
that a base model answers instead of continuing the text (``FEW_SHOT_TEMPLATE``; the demonstrations are our own
two-hop questions about true facts, not MQuAKE's); ``ZERO_SHOT_TEMPLATE`` asks the question alone. MQuAKE compares a
generated answer; ``generate_tokens`` adds that view (the first generated line contains the answer).
"""
from __future__ import annotations

import time
from typing import Optional, Sequence

from torchmetrics import MeanMetric
from tqdm.auto import tqdm

from ..data.multihop import MultiHopCase
from ..editors.base import Editor
from ..metrics import EditSeconds, PeakMemory, PeakMemoryMonitor
from ..models.loading import LoadedModel
from ..models.teacher_forcing import score_targets
from ..version import package_versions
from .measure import generate_greedy
from .protocols import Report

ZERO_SHOT_TEMPLATE = "Q: {question} A:"  # MQuAKE's multi-hop prompt format (prompts/multihop-prompts.txt)
DEMONSTRATIONS = (  # two-hop questions about stable facts, in MQuAKE's format
    "Q: What is the capital of the country where the Eiffel Tower is located? A: Paris\n"
    "Q: Which continent is the country whose capital is Nairobi located in? A: Africa\n"
    "Q: What language is spoken in the country where the Colosseum is located? A: Italian\n"
    "Q: In which country is the city where Mozart was born? A: Austria\n"
    "Q: What is the currency of the country where Mount Fuji is located? A: Japanese yen\n"
)
FEW_SHOT_TEMPLATE = DEMONSTRATIONS + ZERO_SHOT_TEMPLATE
QUESTION_TEMPLATE = FEW_SHOT_TEMPLATE

MULTIHOP_KEY_PROTOCOLS = {
    "multihop_acc": "cases where, with all the case's edits applied, at least one multi-hop question is answered with "
                    "new_answer or one of its aliases (every teacher-forced answer token is the argmax: exact protocol)",
    "multihop_old_answer_acc": "cases where at least one multi-hop question is answered with the pre-edit answer or "
                               "one of its aliases (same rule)",
    "multihop_question_acc": "multi-hop questions answered with new_answer or an alias, over all questions",
    "edit_success": "edits of a case whose edit prompt is completed with target_new by greedy decoding (exact), with "
                    "all the case's edits applied; mean over edits (MQuAKE's edit-wise success rate)",
    "multihop_acc_generated": "cases where the first line of the greedy continuation of at least one multi-hop question "
                              "contains new_answer or an alias (case-insensitive)",
    "edit_seconds": "median wall-clock seconds of the editor's edit call per case (all its edits)",
    "peak_memory_mb": "peak process memory during edits",
}


class MultiHopReport(Report):
    """A ``Report`` whose rows are cases and whose keys are described by ``MULTIHOP_KEY_PROTOCOLS``."""

    def to_json(self) -> dict:
        out = super().to_json()
        out["metric_protocols"] = {k: v for k, v in MULTIHOP_KEY_PROTOCOLS.items() if k in out["summary"] or k in self.pre}
        return out


def _contains_answer(text: str, answers: Sequence[str]) -> bool:
    low = text.lower()
    return any(a.lower() in low for a in answers)


def score_case(loaded: LoadedModel, case: MultiHopCase, question_template: str = QUESTION_TEMPLATE,
               generate_tokens: int = 0) -> dict:
    """The case's multi-hop and edit scores on the model as it is now: teacher-forced, one batched pass per
    question and one for the edit prompts. What comes before the answers runs once: the demonstrations (and an
    in-context editor's context) for all questions, each question for its answers and aliases."""
    questions = [question_template.replace("{question}", q) for q in case.questions]
    answers = list(case.new_answers) + list(case.old_answers)
    new_hits, old_hits = [], []
    shared_prefix: dict = {}  # this case's scoring only: the model does not change in between
    for q in questions:
        scores = score_targets(loaded, [q] * len(answers), answers, prefix_cache=shared_prefix)
        new_hits.append(any(s.exact_match == 1.0 for s in scores[: len(case.new_answers)]))
        old_hits.append(any(s.exact_match == 1.0 for s in scores[len(case.new_answers):]))
    edit_scores = score_targets(loaded, [r.prompt for r in case.requests], [r.target_new for r in case.requests],
                                prefix_cache=shared_prefix)
    row = {"multihop_acc": float(any(new_hits)), "multihop_question_acc": sum(new_hits) / len(new_hits),
           "edit_success": sum(s.exact_match for s in edit_scores) / len(case.requests),
           "answered_questions": [i for i, hit in enumerate(new_hits) if hit]}
    if case.old_answers:
        row["multihop_old_answer_acc"] = float(any(old_hits))
    if generate_tokens:
        generations = generate_greedy(loaded, questions, generate_tokens)
        first_lines = [g.strip().split("\n")[0] for g in generations]  # after that, the model writes the next "Q: ..."
        row["multihop_acc_generated"] = float(any(_contains_answer(g, case.new_answers) for g in first_lines))
        row["generations"] = generations
    return row


_SCORE_KEYS = ("multihop_acc", "multihop_question_acc", "multihop_old_answer_acc", "edit_success", "multihop_acc_generated")


class _Means:
    """One torchmetrics ``MeanMetric`` per key, over cases (keys a case lacks are not counted for it)."""

    def __init__(self) -> None:
        self.metrics = {k: MeanMetric() for k in _SCORE_KEYS}
        self.counts = dict.fromkeys(_SCORE_KEYS, 0)

    def add(self, row: dict) -> None:
        for k in _SCORE_KEYS:
            if k in row:
                self.metrics[k].update(row[k])
                self.counts[k] += 1

    def summary(self) -> dict[str, float]:
        return {k: round(float(m.compute()), 4) for k, m in self.metrics.items() if self.counts[k]}


def evaluate_multihop(loaded: LoadedModel, editor: Editor, cases: Sequence[MultiHopCase], question_template: str = QUESTION_TEMPLATE,
                      generate_tokens: int = 0, progress: bool = True,
                      pre_scores: Optional[dict[tuple, dict]] = None) -> MultiHopReport:
    """Run the multi-hop protocol over ``cases``; the model is left exactly as it was (every edit undone).

    ``pre_scores``: a dict the caller keeps (a study: one for all its methods) where each case's pre-edit row is
    kept and found again, under the unedited weights' fingerprint, the case, the template and ``generate_tokens``."""
    if not cases:
        raise ValueError("evaluate_multihop needs at least one case")
    if "{question}" not in question_template:
        raise ValueError(f"question_template must contain '{{question}}', got {question_template!r}")
    edits = [editor.validate(case.requests) for case in cases]  # every case checked before any work
    start_prepare = time.perf_counter()
    editor.prepare(loaded)
    prepare_seconds = time.perf_counter() - start_prepare
    weights = loaded.weights_fingerprint() if pre_scores is not None else ""
    pre_means, post_means = _Means(), _Means()
    seconds_metric, memory_metric = EditSeconds(), PeakMemory()
    rows: list[dict] = []
    start = time.perf_counter()
    for case, requests in tqdm(list(zip(cases, edits)), desc=f"{editor.name} (multihop)", disable=not progress, unit="case"):
        row = {"case_id": case.case_id, "edits": [{"prompt": r.prompt, "target_new": r.target_new} for r in requests],
               "questions": list(case.questions), "new_answer": case.new_answers[0]}
        pre_key = (weights, case, question_template, generate_tokens)  # a case is a frozen, hashable value
        if pre_scores is not None and pre_key in pre_scores:
            row["pre"] = pre_scores[pre_key]
        else:
            row["pre"] = score_case(loaded, case, question_template, generate_tokens)
            if pre_scores is not None:
                pre_scores[pre_key] = row["pre"]
        with PeakMemoryMonitor(loaded.device) as mem:
            delta = editor.edit(loaded, requests)
        try:
            row["post"] = score_case(loaded, case, question_template, generate_tokens)
        finally:
            delta.undo(loaded)  # the next case starts from the unedited model
        memory_metric.update(mem.peak_mb)
        seconds_metric.update(delta.seconds)
        row["edit_seconds"] = round(delta.seconds, 4)
        pre_means.add(row["pre"])
        post_means.add(row["post"])
        rows.append(row)
    total = time.perf_counter() - start
    n = len(cases)
    efficiency = {"edit_seconds": round(float(seconds_metric.compute()), 4),
                  "edit_seconds_mean": round(sum(r["edit_seconds"] for r in rows) / n, 4),
                  "seconds_per_case": round(total / n, 4), "peak_memory_mb": round(float(memory_metric.compute()), 1),
                  "prepare_seconds": round(prepare_seconds, 3)}
    return MultiHopReport(
        method=editor.name, model=loaded.name, protocol="multihop", n=n, batch_size=1, requests=rows,
        pre=pre_means.summary(), post=post_means.summary(), efficiency=efficiency,
        config={"hparams": editor.hparams.to_dict(), "question_template": question_template, "generate_tokens": generate_tokens,
                "edits": sum(len(e) for e in edits), "versions": package_versions(), "device": str(loaded.device),
                "scored": "each case's edits applied together from the unedited model, its questions scored, then undone"})


def format_multihop(report: Report) -> str:
    """Per case: edits, pre → post multi-hop answer and edit success; then the means."""
    lines = [f"{'case':>8}  {'edits':>5}  {'new answer':<24}  {'multi-hop':>9}  {'edit success':>12}", "-" * 66]
    for row in report.requests:
        pre, post = row["pre"], row["post"]
        lines.append(f"{str(row['case_id']):>8}  {len(row['edits']):>5}  {row['new_answer'][:24]:<24}  "
                     f"{pre['multihop_acc']:.0f} → {post['multihop_acc']:.0f}  {pre['edit_success']:>5.2f} → {post['edit_success']:.2f}")
    lines.append("")
    for key in _SCORE_KEYS:
        if key in report.post:
            lines.append(f"{key:<24} {report.pre.get(key, float('nan')):.3f} → {report.post[key]:.3f}")
    return "\n".join(lines)


def multihop_verdict(report: Report) -> str:
    """One line in words."""
    post, pre = report.post, report.pre
    edits = report.config.get("edits")
    generated = (f"; greedy answer contains it {pre['multihop_acc_generated']:.0%} → {post['multihop_acc_generated']:.0%}"
                 if "multihop_acc_generated" in post else "")
    return (f"multi-hop accuracy {pre['multihop_acc']:.0%} before → {post['multihop_acc']:.0%} after "
            f"({report.n} cases, {edits} edits; edit success {post['edit_success']:.0%}){generated}; "
            f"{report.efficiency['edit_seconds']:.1f} s per case's edits (median)")
