"""The inputs a module receives on unrelated prompts, the "memory" a patch must not fire on (the prompts themselves are
loaded by the data layer: ``data/pools.py``)."""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from ...hooks import run_until, trace
from ...models.loading import LoadedModel
from ...models.tail import valid_positions
from ...models.teacher_forcing import build_target_batch


@torch.no_grad()
def collect_inputs(loaded: LoadedModel, module_name: str, pairs: Sequence[tuple[str, str]], batch_size: int = 32) -> list[torch.Tensor]:
    """What ``module_name`` receives (first positional input) at every real position of each pair's
    prompt+continuation: one (positions, features) tensor per pair. Stops each pass after the module."""
    # Similar lengths share a batch (little padding: a quarter less time on a 600-prompt pool); results in input order.
    order = sorted(range(len(pairs)), key=lambda k: len(pairs[k][0]) + len(pairs[k][1]))
    out: list[Optional[torch.Tensor]] = [None] * len(pairs)
    for i in range(0, len(order), batch_size):
        rows = order[i: i + batch_size]
        batch = build_target_batch(loaded, [pairs[k][0] for k in rows], [pairs[k][1] for k in rows])
        with trace(loaded.model, [module_name], keep_input=True, keep_output=False, stop_after=module_name) as tr:
            run_until(lambda: loaded.model(**batch.model_inputs(), use_cache=False))
        inputs = tr[module_name].input
        valid = valid_positions(loaded, batch)
        for row, k in enumerate(rows):
            out[k] = inputs[row][valid[row]].clone()
    return out  # type: ignore[return-value]  # every slot filled
