"""The shared locate-then-edit machinery: the prefix key/value cache must reproduce a full forward pass."""
from __future__ import annotations

import pytest
import torch

from lightning_edit.editors.locate import PrefixCache, _final_hidden_and_logits, pad_right
from lightning_edit.models import LoadedModel

from conftest import build_tiny


def _rows(vocab: int) -> tuple[list[list[int]], list[int]]:
    g = torch.Generator().manual_seed(0)
    lengths, splits = [9, 14, 5, 11], [3, 0, 4, 10]  # a split at 0 (nothing cached) and at the last token
    rows = [torch.randint(5, vocab, (n,), generator=g).tolist() for n in lengths]
    return rows, splits


def _check_suffix_matches_full(loaded: LoadedModel) -> None:
    rows, splits = _rows(loaded.model.config.vocab_size)
    hidden_of, _ = _final_hidden_and_logits(loaded)
    ids, mask = pad_right(rows, 0, loaded.device)
    with torch.no_grad(), hidden_of() as run:
        full = run(input_ids=ids, attention_mask=mask, use_cache=False)
        prefix = PrefixCache(loaded, rows, splits)
        subset = torch.tensor([3, 0, 2])  # any subset of rows, in any order
        suffix = run(**prefix.inputs(subset))
    for out_row, row in enumerate(subset.tolist()):
        n_suffix = len(rows[row]) - splits[row]
        expected = full[row, splits[row]: len(rows[row])]
        torch.testing.assert_close(suffix[out_row, :n_suffix], expected, atol=1e-5, rtol=1e-4)


def test_prefix_cache_reproduces_a_full_pass(tiny_decoder):
    _check_suffix_matches_full(tiny_decoder)


def test_prefix_cache_with_a_sliding_window_shorter_than_the_rows(tokenizer):
    loaded = build_tiny("gemma3_text", tokenizer)
    loaded.model.config.sliding_window = 4
    for layer in loaded.model.model.layers:
        layer.self_attn.sliding_window = 4 if layer.self_attn.sliding_window else None
    _check_suffix_matches_full(loaded)


def test_prefix_cache_with_nothing_to_cache(tokenizer):
    loaded = build_tiny("llama", tokenizer)
    prefix = PrefixCache(loaded, [[5, 6, 7], [8, 9]], [0, 0])
    args = prefix.inputs(torch.tensor([0, 1]))
    assert prefix.past_width == 0 and "cache" not in args and "past_key_values" not in args
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    assert args["input_ids"].tolist() == [[5, 6, 7], [8, 9, pad]]
    assert args["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
