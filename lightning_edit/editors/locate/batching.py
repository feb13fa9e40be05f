"""Speed machinery beneath value optimisation (``values.py``): none of it changes what is computed.

- ``PrefixCache``: every row's tokens before its edit position run once into a key/value cache, so optimisation
  steps rerun only the tokens from the subject on;
- ``length_buckets``: rows of similar length share a forward pass, cut to a token budget;
- ``final_hidden_and_logits``: the model run to its final norm, the vocabulary projection paid only at the positions
  that are scored.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch

from ...hooks import run_until, trace
from ...models.loading import LoadedModel
from ...models.ops import pad_right, pad_token_id
from ...models.teacher_forcing import cache_argument


def final_hidden_and_logits(loaded: LoadedModel):
    """A function running the model to the final norm only and a function turning hidden states into
    logits, so the vocabulary projection is paid only at the positions scored."""
    layout, model = loaded.layout, loaded.model
    final_norm = layout.final_norm
    lm_head = layout.module(model, layout.lm_head)
    cap = getattr(model.config, "final_logit_softcapping", None)

    def to_logits(hidden: torch.Tensor) -> torch.Tensor:
        logits = lm_head(hidden).float()
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits

    @contextlib.contextmanager
    def hidden_of() -> Iterator:
        with trace(model, [final_norm], detach=False, stop_after=final_norm) as tr:
            def run(**inputs):
                run_until(lambda: model(**inputs))
                return tr[final_norm].output
            yield run

    return hidden_of, to_logits


class PrefixCache:
    """Each row's tokens before its edit position, run once (no grad) into a key/value cache.

    A vector added at a row's subject position changes nothing before it (causal attention), so every
    optimisation step needs to run only the tokens from that position on, against this cache: with a
    10-token context prefix and the subject early in the prompt, most tokens of a row are never rerun.
    The cached parts are left-padded, so each row's cached tokens end right before its suffix (sliding-window
    layers see the same distances as in a full pass); positions are passed explicitly.
    """

    def __init__(self, loaded: LoadedModel, rows: Sequence[Sequence[int]], split: Sequence[int]):
        from transformers import DynamicCache

        self._cache_cls = DynamicCache
        self.model, self.device = loaded.model, loaded.device
        self.cache_arg = cache_argument(loaded.model)
        pad = pad_token_id(loaded.tokenizer)
        split_t = torch.tensor(list(split), dtype=torch.long)
        self.suffix_ids, self.suffix_mask = pad_right([list(r)[s:] for r, s in zip(rows, split)], pad, self.device)
        width = self.suffix_ids.shape[1]
        self.suffix_pos = (split_t[:, None] + torch.arange(width)[None]).to(self.device)
        self.past_width = int(split_t.max())
        self.layers: list[tuple[torch.Tensor, torch.Tensor]] = []
        if self.past_width == 0:
            return
        n_pad = self.past_width - split_t
        past_ids = torch.full((len(rows), self.past_width), pad, dtype=torch.long)
        for i, (r, s) in enumerate(zip(rows, split)):
            past_ids[i, self.past_width - s:] = torch.tensor(list(r)[:s], dtype=torch.long)
        cols = torch.arange(self.past_width)[None]
        self.past_mask = (cols >= n_pad[:, None]).long().to(self.device)
        past_pos = (cols - n_pad[:, None]).clamp_min(0).to(self.device)
        cache = DynamicCache()  # every layer keeps every cached token (a sliding-window layer would crop them)
        final_norm = loaded.layout.final_norm
        with torch.no_grad(), trace(loaded.model, [final_norm], stop_after=final_norm):
            run_until(lambda: loaded.model(input_ids=past_ids.to(self.device), attention_mask=self.past_mask,
                                           position_ids=past_pos, use_cache=True, **{self.cache_arg: cache}))
        self.layers = [(layer.keys, layer.values) for layer in cache.layers]

    def inputs(self, rows: torch.Tensor) -> dict:
        """Forward arguments running the suffixes of ``rows`` (indices into the rows given at construction)."""
        mask = self.suffix_mask[rows]
        width = int(mask.sum(1).max())
        args = {"input_ids": self.suffix_ids[rows, :width], "position_ids": self.suffix_pos[rows, :width]}
        if not self.layers:
            return {**args, "attention_mask": mask[:, :width], "use_cache": False}
        cache = self._cache_cls()
        for i, (keys, values) in enumerate(self.layers):
            cache.update(keys[rows], values[rows], i)
        full_mask = torch.cat([self.past_mask[rows], mask[:, :width]], dim=1)
        return {**args, "attention_mask": full_mask, "use_cache": True, self.cache_arg: cache}


def output_width(model: torch.nn.Module, name: str) -> int:
    """Width of the output of module ``name`` (a linear layer's out_features, else the model's hidden size)."""
    module = model.get_submodule(name)
    for attr in ("out_features", "nf"):  # nn.Linear, GPT-2's Conv1D
        if hasattr(module, attr):
            return int(getattr(module, attr))
    return int(model.config.get_text_config().hidden_size)


def length_buckets(rows: torch.Tensor, lengths: torch.Tensor, tokens_per_pass: int) -> list[torch.Tensor]:
    """``rows`` sorted by length and cut into passes of at most ``tokens_per_pass`` padded tokens (at least one row
    each): rows of similar length share a pass, so little is spent on padding."""
    order = rows[torch.argsort(lengths[rows], stable=True)]
    chunks, start = [], 0
    for end in range(1, order.numel() + 1):
        width = int(lengths[order[end - 1]])
        if end - start > 1 and (end - start) * width > tokens_per_pass:
            chunks.append(order[start: end - 1])
            start = end - 1
    chunks.append(order[start:])
    return chunks
