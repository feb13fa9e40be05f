"""Turn a model and requests into raw teacher-forced scores, in as few batched passes as possible.

Editors never evaluate; this module never edits.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence

import torch

from ..models.loading import LoadedModel
from ..models.row_weights import row_weight_changes
from ..models.teacher_forcing import TargetScore, contextualize, score_targets
from ..requests import EditRequest


@dataclass
class RequestScores:
    """Every teacher-forced score of one request, at one moment (pre- or post-edit)."""

    rewrite_new: list[TargetScore] = field(default_factory=list)
    rewrite_true: list[TargetScore] = field(default_factory=list)
    rephrase_new: list[TargetScore] = field(default_factory=list)
    rephrase_true: list[TargetScore] = field(default_factory=list)
    locality: list[TargetScore] = field(default_factory=list)  # locality prompt → its own answer
    locality_new: list[TargetScore] = field(default_factory=list)  # locality prompt → target_new (leak check)
    portability: list[TargetScore] = field(default_factory=list)


def scored_pairs(request: EditRequest) -> list[tuple[str, str, str]]:
    """Every (prompt, target, slot) of one request that ``measure`` scores, in the order it fills the slots."""
    r = request
    pairs = [(r.prompt, r.target_new, "rewrite_new")]
    if r.target_true:
        pairs.append((r.prompt, r.target_true, "rewrite_true"))
    for p in r.rephrase_prompts:
        pairs.append((p, r.target_new, "rephrase_new"))
        if r.target_true:
            pairs.append((p, r.target_true, "rephrase_true"))
    for probe in r.locality:
        pairs.append((probe.prompt, probe.answer, "locality"))
        pairs.append((probe.prompt, r.target_new, "locality_new"))
    for probe in r.portability:
        pairs.append((probe.prompt, probe.answer, "portability"))
    return pairs


def fluency_prompts(request: EditRequest) -> list[str]:
    """The prompts whose greedy continuations give the fluency score (and the answers shown): ROME CounterFact's
    generation prompts where the request has them, else the edit prompt and its rephrasings."""
    return list(request.generation_prompts) or [request.prompt, *request.rephrase_prompts]


def measure(loaded: LoadedModel, requests: Sequence[EditRequest], batch_size: int = 32) -> list[RequestScores]:
    """All scores of all requests from one batched teacher-forced pass over every (prompt, target) pair."""
    pairs: list[tuple[str, str]] = []
    slots: list[tuple[int, str]] = []
    for i, r in enumerate(requests):
        for prompt, target, slot in scored_pairs(r):
            pairs.append((prompt, target))
            slots.append((i, slot))
    # Sort by length so padded batches waste little; scores are put back in request order.
    order = sorted(range(len(pairs)), key=lambda k: len(pairs[k][0]) + len(pairs[k][1]))
    scored = score_targets(loaded, [pairs[k][0] for k in order], [pairs[k][1] for k in order], batch_size=batch_size)
    by_pair: list[Optional[TargetScore]] = [None] * len(pairs)
    for k, s in zip(order, scored):
        by_pair[k] = s
    out = [RequestScores() for _ in requests]
    for (i, slot), s in zip(slots, by_pair):
        getattr(out[i], slot).append(s)
    return out


@torch.no_grad()
def generate_greedy(loaded: LoadedModel, prompts: Sequence[str], max_new_tokens: int = 40, batch_size: int = 16,
                    row_changes: Optional[Sequence[Mapping[str, torch.Tensor]]] = None,
                    groups: Optional[Sequence[int]] = None) -> list[str]:
    """Greedy continuations (transformers' ``generate``), left-padded batches; returns only the new text.

    ``row_changes`` and ``groups``: prompt ``i`` is continued by the model with weight changes
    ``row_changes[groups[i]]`` added (``models/row_weights.py``): the generations of many edits in one batch.
    """
    tok = loaded.tokenizer
    prompts = contextualize(loaded, prompts)
    if row_changes is not None and (groups is None or len(groups) != len(prompts)):
        raise ValueError("generate_greedy: row_changes needs one group index per prompt")
    texts: list[str] = []
    side = tok.padding_side
    tok.padding_side = "left"
    try:
        for i in range(0, len(prompts), batch_size):
            enc = tok(list(prompts[i: i + batch_size]), return_tensors="pt", padding=True).to(loaded.device)
            changed = (row_weight_changes(loaded.model, row_changes, groups[i: i + batch_size])
                       if row_changes is not None else nullcontext())
            with changed:
                out = loaded.model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                            pad_token_id=tok.pad_token_id)
            new = out if loaded.layout.is_encoder_decoder else out[:, enc["input_ids"].shape[1]:]
            texts.extend(tok.batch_decode(new, skip_special_tokens=True))
    finally:
        tok.padding_side = side
    return texts
