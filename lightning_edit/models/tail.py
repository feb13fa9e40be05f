"""Speed machinery for editors that train against a frozen network: run only its top.

``TailRunner`` re-runs the blocks from the edited one on, replaying the inputs recorded from one full pass, so a
training step costs a few blocks and the head instead of the whole network.
"""
from __future__ import annotations

import logging

import torch

from ..hooks import hooks
from .loading import LoadedModel
from .teacher_forcing import TargetBatch

log = logging.getLogger(__name__)


class TailRunner:
    """Logits of ``batch`` computed from block ``start`` on, replaying what the blocks received in one
    full pass (hidden states, masks, position embeddings). Edits at block ``start`` or later cannot change
    those inputs, so each training step costs the top blocks and the head only.

    The replay is checked against the full pass once; where it does not reproduce the logits (a family
    with extra scaling after the final norm) every call runs the whole model instead. ``logits()`` returns
    only the rows that predict target tokens, (N, vocab), matching ``self.labels`` (N,).
    """

    def __init__(self, loaded: LoadedModel, batch: TargetBatch, start: int):
        self.loaded = loaded
        self.batch = batch
        layout, model = loaded.layout, loaded.model
        self.blocks = layout.module(model, layout.blocks)
        self.start = start
        self.final_norm = layout.module(model, layout.final_norm)
        self.lm_head = layout.module(model, layout.lm_head)
        self.records: dict[int, tuple[tuple, dict]] = {}
        self.at_targets = batch.labels != -100
        self.labels = batch.labels[self.at_targets]

        def recorder(i: int):
            def pre_hook(module, args, kwargs):
                self.records[i] = (args, dict(kwargs))
            return pre_hook

        n = len(self.blocks)
        with torch.no_grad(), hooks(lambda: (self.blocks[i].register_forward_pre_hook(recorder(i), with_kwargs=True)
                                             for i in range(start, n))):
            full = self._full()
            self.replay_ok = len(self.records) == n - start
            if self.replay_ok:
                try:
                    replayed = self._replay()
                    full = full[self.at_targets]
                    self.replay_ok = replayed.shape == full.shape and torch.allclose(replayed, full, atol=1e-4, rtol=1e-3)
                except (TypeError, RuntimeError, KeyError) as err:  # a block that cannot be re-called alone
                    log.debug("tail replay unavailable: %s", err)
                    self.replay_ok = False
        if not self.replay_ok:
            self.records.clear()

    def _full(self) -> torch.Tensor:
        return self.loaded.model(**self.batch.model_inputs(), use_cache=False).logits

    def _replay(self) -> torch.Tensor:
        args, kwargs = self.records[self.start]
        hidden = args[0] if args else kwargs["hidden_states"]
        for i in range(self.start, len(self.blocks)):
            args, kwargs = self.records[i]
            if args:
                out = self.blocks[i](hidden, *args[1:], **kwargs)
            else:
                out = self.blocks[i](**{**kwargs, "hidden_states": hidden})
            hidden = out[0] if isinstance(out, (tuple, list)) else out
        # The final norm works per position: normalising only the target rows gives the same logits.
        return self.lm_head(self.final_norm(hidden[self.at_targets]))

    def logits(self) -> torch.Tensor:
        return self._replay() if self.replay_ok else self._full()[self.at_targets]


def prediction_positions(batch: TargetBatch) -> torch.Tensor:
    """(batch, length) mask of the positions whose logits predict a target token."""
    return batch.labels != -100


def valid_positions(loaded: LoadedModel, batch: TargetBatch) -> torch.Tensor:
    """(batch, length) mask of real (non-padding) positions of the stream the edited blocks see."""
    if loaded.layout.is_encoder_decoder:
        return batch.labels != -100  # the decoder reads the target, shifted; padding carries no label
    return batch.attention_mask.bool()
