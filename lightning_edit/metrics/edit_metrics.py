"""Evaluation metrics as torchmetrics ``Metric`` classes.

Each ``update`` call takes one request's teacher-forced scores (``TargetScore``) and adds that request's
value; ``compute`` returns the mean over requests (EasyEdit's and ROME's averaging). States are sums and
counts reduced with ``sum`` across processes, so the result is correct under DDP. ``forward`` returns the
value of the request just given, which is what the per-request table shows.

Protocols, named in every reported key:
- ``token``: teacher-forced token accuracy of the target after the prompt (EasyEdit).
- ``exact``: the whole target is reproduced by greedy decoding. Greedy decoding emits token t+1 from the
  prompt and target[:t], exactly the teacher-forced context, so it is the conjunction of the token hits.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from typing import Mapping, Sequence

import numpy as np
import torch
from torchmetrics import Metric

from ..models.teacher_forcing import TargetScore

SCORING_PROTOCOLS = ("token", "exact")


class _MeanOverRequests(Metric):
    full_state_update = False
    higher_is_better = True

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def _add(self, value: float) -> None:
        self.total += value
        self.count += 1

    def compute(self) -> torch.Tensor:
        if self.count == 0:
            return torch.tensor(float("nan"))
        return (self.total / self.count).float()


def _check_protocol(protocol: str) -> str:
    if protocol not in SCORING_PROTOCOLS:
        raise ValueError(f"protocol must be one of {SCORING_PROTOCOLS}, got {protocol!r}")
    return protocol


class TargetAccuracy(_MeanOverRequests):
    """Reliability (edit prompt), generalization (rephrases) or portability (portability probes):
    how well the model produces the expected answer. One request = mean over its prompts."""

    def __init__(self, protocol: str = "token", **kwargs) -> None:
        super().__init__(**kwargs)
        self.protocol = _check_protocol(protocol)

    def update(self, scores: Sequence[TargetScore]) -> None:
        if not scores:
            return
        values = [s.token_accuracy if self.protocol == "token" else s.exact_match for s in scores]
        self._add(sum(values) / len(values))


class LocalityAgreement(_MeanOverRequests):
    """Locality: do post-edit predictions on unrelated prompts agree with pre-edit ones?
    ``token``: fraction of answer positions whose argmax is unchanged; ``exact``: all unchanged."""

    def __init__(self, protocol: str = "token", **kwargs) -> None:
        super().__init__(**kwargs)
        self.protocol = _check_protocol(protocol)

    def update(self, pre: Sequence[TargetScore], post: Sequence[TargetScore]) -> None:
        if len(pre) != len(post):
            raise ValueError(f"locality: {len(pre)} pre-edit scores but {len(post)} post-edit scores")
        if not pre:
            return
        values = []
        for a, b in zip(pre, post):
            same = (a.predicted_ids == b.predicted_ids).float()
            values.append(same.mean().item() if self.protocol == "token" else float(bool(same.all())))
        self._add(sum(values) / len(values))


class ProbabilityPreference(_MeanOverRequests):
    """ROME's CounterFact scores. Over a request's prompts: the fraction where the preferred answer has a
    higher mean token log-probability than the other (``score``), or the mean of
    exp(mean log p(preferred)) - exp(mean log p(other)) (``magnitude``).

    efficacy: preferred = target_new on the edit prompt; paraphrase: the same on rephrases;
    neighborhood: preferred = the true answer on neighbour prompts (the edit must not leak there).
    """

    def __init__(self, kind: str = "score", **kwargs) -> None:
        super().__init__(**kwargs)
        if kind not in ("score", "magnitude"):
            raise ValueError(f"kind must be 'score' or 'magnitude', got {kind!r}")
        self.kind = kind

    def update(self, preferred: Sequence[TargetScore], other: Sequence[TargetScore]) -> None:
        if len(preferred) != len(other):
            raise ValueError("preferred and other must be paired prompt by prompt")
        if not preferred:
            return
        if self.kind == "score":
            values = [float(a.mean_logprob > b.mean_logprob) for a, b in zip(preferred, other)]
        else:
            values = [math.exp(a.mean_logprob) - math.exp(b.mean_logprob) for a, b in zip(preferred, other)]
        self._add(sum(values) / len(values))


_WORD = re.compile(r"\w+|[^\w\s]")


def ngram_entropy(text: str, ns: Sequence[int] = (2, 3), weights: Sequence[float] = (2 / 3, 4 / 3)) -> float:
    """ROME's fluency: weighted mean of the entropies (bits) of the n-gram frequency distributions.
    Repetitive text has low entropy."""
    tokens = _WORD.findall(text.lower())
    total_w = sum(weights)
    value = 0.0
    for n, w in zip(ns, weights):
        grams = Counter(tuple(tokens[i: i + n]) for i in range(len(tokens) - n + 1))
        count = sum(grams.values())
        ent = -sum((c / count) * math.log2(c / count) for c in grams.values()) if count else 0.0
        value += (w / total_w) * ent
    return value


class Fluency(_MeanOverRequests):
    """Mean n-gram entropy of (greedy) generations; one update per request's generations."""

    def update(self, texts: Sequence[str]) -> None:
        if not texts:
            return
        self._add(sum(ngram_entropy(t) for t in texts) / len(texts))


class TfidfConsistency(_MeanOverRequests):
    """ROME's consistency ("reference score", Meng et al. 2022 §3.3): the cosine similarity between the TF-IDF
    vectors of a request's generated texts (joined) and of the reference texts about its new object (joined), with
    ROME's released vocabulary and IDF weights held fixed (sklearn's ``TfidfVectorizer``). Texts sharing no word of
    the vocabulary score 0 (ROME's formula divides by a zero norm there)."""

    def __init__(self, vocabulary: Mapping[str, int], idf: np.ndarray, **kwargs) -> None:
        super().__init__(**kwargs)
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.vectorizer = TfidfVectorizer(vocabulary=dict(vocabulary))
        self.vectorizer.idf_ = np.asarray(idf, dtype=np.float64)

    def update(self, generated: Sequence[str], references: Sequence[str]) -> None:
        if not generated:
            return
        a, b = self.vectorizer.transform([" ".join(generated), " ".join(references)]).toarray()
        norms = float(np.linalg.norm(a) * np.linalg.norm(b))
        self._add(float(a @ b) / norms if norms else 0.0)


class EditSeconds(Metric):
    """Seconds per edit; ``compute`` gives the median (robust to a slow first call)."""

    full_state_update = False
    higher_is_better = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("seconds", default=[], dist_reduce_fx="cat")

    def update(self, seconds: float) -> None:
        self.seconds.append(torch.tensor([float(seconds)], dtype=torch.float64))

    def compute(self) -> torch.Tensor:
        values = self.seconds if isinstance(self.seconds, torch.Tensor) else (torch.cat(self.seconds) if self.seconds else torch.empty(0))
        return values.median().float() if values.numel() else torch.tensor(float("nan"))


class PeakMemory(Metric):
    """Peak memory in MB over all updates (max across processes)."""

    full_state_update = False
    higher_is_better = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("peak", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="max")

    def update(self, megabytes: float) -> None:
        self.peak = torch.maximum(self.peak, torch.tensor(float(megabytes), dtype=torch.float64))

    def compute(self) -> torch.Tensor:
        return self.peak.float()
