"""Greedy generations after each edit (for fluency and the answers shown), batched across edits.

Weight edits wait here (as their weight differences) to have their generations made together, many edits' rows
in one batch on the unedited model (models/row_weights.py): on a CPU a greedy step costs about as much for one row
as for many. Edits that attach patches are generated on the edited model at once."""
from __future__ import annotations

import time
from typing import Callable, ContextManager, Optional, Sequence

import torch

from ..editors.base import EditDelta
from ..models.loading import LoadedModel
from ..models.row_weights import supports_row_changes
from ..requests import EditRequest
from .measure import fluency_prompts, generate_greedy
from .scoring import Scoring

GENERATION_ROWS = 64  # prompts per batched generation of deferred weight edits (the demo's 20 requests: one batch)
PENDING_BYTES = 512 * 2**20  # weight differences held for deferred generation before they are generated

# requests of one edit, and its weight changes (None: generate on the model as it is now)
Group = tuple[list[int], Optional[dict[str, torch.Tensor]]]


def weight_changes(delta: Optional[EditDelta]) -> Optional[dict[str, torch.Tensor]]:
    """The weight differences of an edit that changes only weights (None otherwise, or without an edit). They are
    kept in float32: a bf16 difference of two bf16 weights would round the change away."""
    if delta is None or any(getattr(p, "changes_outputs", True) for p in delta.patches):
        return None
    return {name: after.float() - delta.weights_before[name].float() for name, after in delta.weights_after.items()}


class DeferredGeneration:
    """``tokens`` greedy tokens after each request's fluency prompts, once its edit is scored (``tokens`` 0: none).

    Phases are timed with ``timer`` (``generation``); results go to ``scoring``."""

    def __init__(self, loaded: LoadedModel, requests: Sequence[EditRequest], scoring: Scoring, tokens: int,
                 timer: Callable[[str], ContextManager[None]]) -> None:
        self.loaded, self.requests, self.scoring, self.tokens, self.timer = loaded, requests, scoring, tokens, timer
        self.pending: list[Group] = []

    def after_scoring(self, idx: list[int], delta: Optional[EditDelta] = None) -> None:
        """Generate for the requests ``idx`` of an edit now in the model. ``delta`` is given only for an edit that
        is undone next: where its weight changes can be replayed row by row, its generations wait for the
        unedited model."""
        if not self.tokens:
            return
        changes = weight_changes(delta)
        if changes is not None and supports_row_changes(self.loaded.model, [changes]):
            self.pending.append((idx, changes))
        else:
            self.generate([(idx, None)])

    def flush(self, only_if_full: bool = False) -> None:
        """Generate for the waiting edits (the model must hold none of them); with ``only_if_full``, only once
        they fill a generation batch or hold ``PENDING_BYTES`` of weight differences."""
        rows_waiting = sum(len(fluency_prompts(self.requests[i])) for idx, _ in self.pending for i in idx)
        bytes_waiting = sum(t.numel() * t.element_size() for _, c in self.pending for t in c.values())
        if self.pending and (not only_if_full or rows_waiting >= GENERATION_ROWS or bytes_waiting >= PENDING_BYTES):
            self.generate(self.pending)
            self.pending.clear()

    def generate(self, groups: list[Group]) -> None:
        """Greedy generations of the groups' requests, each group on the model with its own weight changes (or as
        it is now); each request gets its share of the seconds."""
        prompts, owners = [], []
        for g, (idx, _) in enumerate(groups):
            for i in idx:
                prompts += fluency_prompts(self.requests[i])
                owners += [g] * len(fluency_prompts(self.requests[i]))
        changes = [c for _, c in groups]
        start = time.perf_counter()
        with self.timer("generation"):
            if any(c is not None for c in changes):
                gens = generate_greedy(self.loaded, prompts, self.tokens, batch_size=GENERATION_ROWS,
                                       row_changes=[c or {} for c in changes], groups=owners)
            else:
                gens = generate_greedy(self.loaded, prompts, self.tokens)
        share = (time.perf_counter() - start) / sum(len(idx) for idx, _ in groups)
        pos = 0
        for idx, _ in groups:
            for i in idx:
                k = len(fluency_prompts(self.requests[i]))
                self.scoring.add_generations(i, gens[pos: pos + k], share)
                pos += k
