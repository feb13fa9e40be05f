"""Speed machinery beneath value optimisation (``values.py``): none of it changes what is computed.

- ``PrefixCache``: every row's tokens before its edit position run once into a key/value cache, so optimisation
  steps rerun only the tokens from the subject on;
- ``length_buckets``: rows of similar length share a forward pass, cut to a token budget;
- ``final_hidden_and_logits``: the model run to its final norm, the vocabulary projection paid only at the positions
  that are scored;
- ``BlockReplay``: steps after a set of rows' first run only the blocks from the edited one on.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import torch

from ...hooks import hooks, run_until, trace
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


_CACHE_SLOT = object()  # where a recorded call held the pass's key/value cache; a replay puts a fresh one there


def _recordable(value):
    """A block's argument as kept for replays: tensors detached, the pass's cache (all its rows' keys and values in
    every layer, which no replay reads) left out."""
    from transformers import Cache

    if isinstance(value, Cache):
        return _CACHE_SLOT
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, tuple):
        return tuple(_recordable(v) for v in value)
    return value


@dataclass
class ReplayCheck:
    """Whether replaying recorded blocks reproduced a full pass on a model: checked on first use and kept by the
    editor with what it prepared for that model (None: not checked yet)."""

    reproduces: Optional[bool] = None


class BlockReplay:
    """Optimisation steps that run only the blocks from ``start`` (the lowest block holding an optimised site) on.

    Nothing below that block depends on the vector being optimised, so what each block from ``start`` on received
    in a set of rows' first full pass (hidden states, masks, position embeddings) is recorded, and later steps on
    the same rows replay those blocks with a fresh key/value cache of the rows' prefixes, then the final norm.
    The first replay on a model is compared with the full pass it follows (``ReplayCheck``); where it does not
    reproduce it (a family whose blocks take more than their recorded inputs) every step runs the full model.
    """

    def __init__(self, loaded: LoadedModel, site_modules: Sequence[torch.nn.Module], check: ReplayCheck):
        layout = loaded.layout
        self.blocks = layout.module(loaded.model, layout.blocks)
        self.final_norm = layout.module(loaded.model, layout.final_norm)
        starts = [next((i for i, block in enumerate(self.blocks) if any(m is site for m in block.modules())), None)
                  for site in site_modules]
        self.start = None if None in starts else min(starts)  # a site outside the blocks: no replay
        self.check = check
        self.records: dict[tuple[int, ...], dict[int, tuple[tuple, dict]]] = {}

    @property
    def usable(self) -> bool:
        return self.start is not None and self.check.reproduces is not False

    @property
    def unchecked(self) -> bool:
        return self.usable and self.check.reproduces is None

    def has(self, rows: torch.Tensor) -> bool:
        return self.usable and tuple(rows.tolist()) in self.records

    def keep_only(self, chunks: Sequence[torch.Tensor]) -> None:
        """Drop what was recorded for sets of rows no step will run again (requests that stopped leave them)."""
        live = {tuple(c.tolist()) for c in chunks}
        for key in [k for k in self.records if k not in live]:
            del self.records[key]

    @contextlib.contextmanager
    def recording(self, rows: torch.Tensor) -> Iterator[None]:
        """Record what the blocks from ``start`` on receive during the full pass run inside the block."""
        if not self.usable:
            yield
            return
        calls: dict[int, tuple[tuple, dict]] = {}

        def recorder(i: int):
            def pre_hook(module, args, kwargs):
                # detached: a model whose weights require grad would otherwise tie later steps to this pass's graph;
                # the hidden states only for block ``start``: above it the replay passes its own
                if i > self.start:
                    args = (None, *args[1:]) if args else args
                    kwargs = {k: (None if k == "hidden_states" else v) for k, v in kwargs.items()}
                calls[i] = (tuple(_recordable(a) for a in args), {k: _recordable(v) for k, v in kwargs.items()})
            return pre_hook

        with hooks(lambda: (self.blocks[i].register_forward_pre_hook(recorder(i), with_kwargs=True)
                            for i in range(self.start, len(self.blocks)))):
            yield
        if len(calls) == len(self.blocks) - self.start:
            self.records[tuple(rows.tolist())] = calls

    def run(self, rows: torch.Tensor, inputs: dict) -> torch.Tensor:
        """The final norm's output for ``rows``, from block ``start`` on; ``inputs``: ``PrefixCache.inputs(rows)``
        (its fresh cache takes the place of the one the recorded pass filled)."""
        from transformers import Cache

        calls = self.records[tuple(rows.tolist())]
        fresh = next((v for v in inputs.values() if isinstance(v, Cache)), None)

        def swap(v):
            return fresh if v is _CACHE_SLOT else v

        args, kwargs = calls[self.start]
        hidden = args[0] if args else kwargs["hidden_states"]
        for i in range(self.start, len(self.blocks)):
            args, kwargs = calls[i]
            kwargs = {k: swap(v) for k, v in kwargs.items()}
            if args:
                out = self.blocks[i](hidden, *[swap(a) for a in args[1:]], **kwargs)
            else:
                out = self.blocks[i](**{**kwargs, "hidden_states": hidden})
            hidden = out[0] if isinstance(out, (tuple, list)) else out
        return self.final_norm(hidden)

    def verify(self, rows: torch.Tensor, inputs: dict, full: torch.Tensor) -> None:
        """Once per model: does a replay of the pass just recorded give its output ``full``?"""
        if not self.unchecked or not self.has(rows):
            return
        with torch.no_grad():
            try:
                replayed = self.run(rows, inputs)
                self.check.reproduces = replayed.shape == full.shape and bool(torch.allclose(replayed, full, atol=1e-5, rtol=1e-4))
            except (TypeError, RuntimeError, KeyError, ValueError):  # a block that cannot be called alone
                self.check.reproduces = False
        if not self.check.reproduces:
            self.records.clear()
