"""Unrelated prompts, the "memory" a patch must not fire on: WikiText sentences and training-split probes, and the
inputs a module receives on them."""
from __future__ import annotations

import re
from typing import Optional, Sequence

import torch

from ...errors import ConfigError
from ...hooks import run_until, trace
from ...models.loading import LoadedModel
from ...models.tail import valid_positions
from ...models.teacher_forcing import build_target_batch

POOL_SOURCES = ("wikitext", "zsre-train", "counterfact-train")


def _wikitext_pairs(n: int) -> list[tuple[str, str]]:
    """Sentences of the WikiText-2 excerpt shipped with the package, cut into (prompt, next three words)."""
    from ...data import STATS_TEXT_PATH

    path = STATS_TEXT_PATH
    pairs: list[tuple[str, str]] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("="):
            continue
        for sentence in re.split(r"(?<=\.) ", line):
            words = sentence.replace(" @-@ ", "-").replace(" @,@ ", ",").replace(" @.@ ", ".").split()
            if len(words) < 10:
                continue
            cut = min(len(words) - 3, 16)
            pairs.append((" ".join(words[:cut]), " ".join(words[cut: cut + 3])))
            if len(pairs) >= n:
                return pairs
    return pairs


def _dataset_pairs(name: str, n: int, data_dir: Optional[str]) -> list[tuple[str, str]]:
    """Training-split requests: their locality probes and their edit prompts with the true answer."""
    from ...data import load_requests

    pairs: list[tuple[str, str]] = []
    for r in load_requests(name, n=n, data_dir=data_dir):
        pairs.extend((p.prompt, p.answer) for p in r.locality)
        if r.target_true:
            pairs.append((r.prompt, r.target_true))
    return pairs[:n]


def load_memory_pool(spec: Sequence[str], data_dir: Optional[str] = None) -> list[tuple[str, str]]:
    """(prompt, continuation) pairs unrelated to any evaluated edit, from ``"source:count"`` entries of
    ``memory_pool`` (sources: wikitext, zsre-train, counterfact-train; training splits only)."""
    pairs: list[tuple[str, str]] = []
    for entry in spec:
        source, _, count = str(entry).partition(":")
        if source not in POOL_SOURCES or not count.isdigit():
            raise ConfigError(f"field 'memory_pool' holds {entry!r}; write 'source:count' with source one of {POOL_SOURCES}")
        if source == "wikitext":
            pairs.extend(_wikitext_pairs(int(count)))
        else:
            pairs.extend(_dataset_pairs(source, int(count), data_dir))
    return pairs


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
