"""Pools of unrelated prompts, the "memory" a patch must not fire on (T-Patcher, WISE): WikiText sentences and
training-split probes as (prompt, continuation) pairs. The editors turn them into module inputs
(``editors/memory/pool.py``); loading them is the data layer's."""
from __future__ import annotations

import re
from typing import Optional, Sequence

from ..errors import ConfigError
from ..paths import STATS_TEXT_PATH
from .loaders import load_requests

POOL_SOURCES = ("wikitext", "zsre-train", "counterfact-train")


def _wikitext_pairs(n: int) -> list[tuple[str, str]]:
    """Sentences of the WikiText-2 excerpt shipped with the package, cut into (prompt, next three words)."""
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
