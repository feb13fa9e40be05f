"""Small tensor helpers every layer above shares, written once: padding token rows, the target loss, choosing
layers by number."""
from __future__ import annotations

from typing import Sequence

import torch

from ..errors import ConfigError


def pad_token_id(tokenizer) -> int:
    """The tokenizer's padding id; 0 for tokenizers without one (padded positions are masked anyway)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


def pad_right(rows: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows right-padded to one width: (ids, attention mask), both (rows, width) long tensors."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(list(r), dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids.to(device), mask.to(device)


def target_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood of the labelled (target) tokens; labels are -100 elsewhere."""
    mask = labels != -100
    logp = torch.log_softmax(logits.float(), dim=-1)
    token_logp = logp.gather(-1, labels.clamp(min=0)[..., None]).squeeze(-1)
    return -(token_logp * mask).sum() / mask.sum().clamp(min=1)


def target_hits(logits: torch.Tensor, labels: torch.Tensor) -> bool:
    """Whether every labelled token is the argmax (teacher-forced exact match)."""
    mask = labels != -100
    return bool((logits.argmax(-1)[mask] == labels[mask]).all())


def resolve_layer(layer: int, n_layers: int, field_name: str = "layer") -> int:
    """A block number from a config (negative counts from the top), checked against the model's depth."""
    index = layer + n_layers if layer < 0 else layer
    if not 0 <= index < n_layers:
        raise ConfigError(f"field '{field_name}' holds {layer}, outside the model's {n_layers} blocks")
    return index


def resolve_layers(layers: Sequence[int], n_layers: int, field_name: str = "layers") -> list[int]:
    """Block numbers from a config, each checked as ``resolve_layer`` does; sorted, without repeats."""
    return sorted({resolve_layer(layer, n_layers, field_name) for layer in layers})
