"""Editing as a Lightning ``Callback``: apply edits at a chosen point of a Trainer's run, undo them at the end.

    trainer = L.Trainer(callbacks=[EditCallback(editor, requests, on="fit_start", undo_on="fit_end")])

The callback finds the model to edit as ``loaded=`` (a ``LoadedModel``), else ``pl_module.loaded``, else
it wraps ``pl_module.model`` with ``tokenizer=`` (the layout comes from the model's config). The same
edit can be used without a Trainer through ``edit_scope`` (a context manager that undoes on exit).
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator, Optional, Sequence

import lightning as L
import torch

from ..errors import ConfigError
from ..models.layout import layout_for
from ..models.loading import LoadedModel
from ..requests import EditRequest
from .base import EditDelta, Editor

# Lightning hook points the callback can act on ("<stage>_start" / "<stage>_end").
POINTS = ("fit_start", "fit_end", "train_start", "train_end", "validation_start", "validation_end", "test_start", "test_end",
          "predict_start", "predict_end", "train_epoch_start", "train_epoch_end")


@contextlib.contextmanager
def edit_scope(editor: Editor, loaded: LoadedModel, requests: Sequence[EditRequest], sequential: bool = False
               ) -> Iterator[list[EditDelta]]:
    """Apply ``requests`` for the duration of the block (one batch, or one after another), then undo."""
    deltas: list[EditDelta] = []
    try:
        if sequential:
            for r in requests:
                deltas.append(editor.edit(loaded, [r]))
        else:
            deltas.append(editor.edit(loaded, requests))
        yield deltas
    finally:
        for d in reversed(deltas):
            d.undo(loaded)


class EditCallback(L.Callback):
    """Apply ``requests`` with ``editor`` when the Trainer reaches ``on``; undo at ``undo_on`` (None: keep)."""

    def __init__(self, editor: Editor, requests: Sequence[EditRequest], on: str = "fit_start", undo_on: Optional[str] = None,
                 loaded: Optional[LoadedModel] = None, tokenizer: Any = None, sequential: bool = False, once: bool = True):
        for name, point in (("on", on), ("undo_on", undo_on)):
            if point is not None and point not in POINTS:
                raise ConfigError(f"EditCallback: '{name}' is {point!r}; choose one of {POINTS}")
        if on == undo_on:
            raise ConfigError("EditCallback: 'on' and 'undo_on' name the same point; the edit would be undone at once")
        self.editor = editor
        self.requests = editor.validate(requests)
        self.on, self.undo_on = on, undo_on
        self.loaded, self.tokenizer = loaded, tokenizer
        self.sequential, self.once = sequential, once
        self.deltas: list[EditDelta] = []
        self.applied_times = 0

    # ---- the model being trained -------------------------------------------------------------------
    def _loaded(self, pl_module: L.LightningModule) -> LoadedModel:
        if self.loaded is not None:
            return self.loaded
        if isinstance(getattr(pl_module, "loaded", None), LoadedModel):
            return pl_module.loaded
        model = getattr(pl_module, "model", None)
        tokenizer = self.tokenizer or getattr(pl_module, "tokenizer", None)
        if model is None or tokenizer is None:
            raise ConfigError("EditCallback: pass loaded=LoadedModel(...), or give the LightningModule a 'loaded' attribute, "
                              "or a 'model' attribute plus tokenizer= to the callback")
        self.loaded = LoadedModel(name=getattr(model.config, "name_or_path", type(model).__name__), model=model,
                                  tokenizer=tokenizer, layout=layout_for(model))
        return self.loaded

    def _fire(self, point: str, pl_module: L.LightningModule) -> None:
        if point == self.on and not (self.once and self.applied_times):
            loaded = self._loaded(pl_module)
            was_training = loaded.model.training
            loaded.model.eval()  # edits are computed without dropout
            # validation/test/predict run under inference_mode; value optimisation needs autograd
            try:
                with torch.inference_mode(False), torch.enable_grad():
                    if self.sequential:
                        self.deltas.extend(self.editor.edit(loaded, [r]) for r in self.requests)
                    else:
                        self.deltas.append(self.editor.edit(loaded, self.requests))
            finally:
                loaded.model.train(was_training)
            self.applied_times += 1
        elif point == self.undo_on:
            self.undo(pl_module)

    def undo(self, pl_module: Optional[L.LightningModule] = None) -> None:
        """Undo every edit this callback applied (latest first)."""
        if not self.deltas:
            return
        loaded = self.loaded if self.loaded is not None else self._loaded(pl_module)
        with torch.inference_mode(False):
            for d in reversed(self.deltas):
                d.undo(loaded)
        self.deltas.clear()

    def state_dict(self) -> dict:
        return {"applied_times": self.applied_times, "n_requests": len(self.requests)}

    # ---- Lightning hooks ----------------------------------------------------------------------------
    def on_fit_start(self, trainer, pl_module): self._fire("fit_start", pl_module)
    def on_fit_end(self, trainer, pl_module): self._fire("fit_end", pl_module)
    def on_train_start(self, trainer, pl_module): self._fire("train_start", pl_module)
    def on_train_end(self, trainer, pl_module): self._fire("train_end", pl_module)
    def on_validation_start(self, trainer, pl_module): self._fire("validation_start", pl_module)
    def on_validation_end(self, trainer, pl_module): self._fire("validation_end", pl_module)
    def on_test_start(self, trainer, pl_module): self._fire("test_start", pl_module)
    def on_test_end(self, trainer, pl_module): self._fire("test_end", pl_module)
    def on_predict_start(self, trainer, pl_module): self._fire("predict_start", pl_module)
    def on_predict_end(self, trainer, pl_module): self._fire("predict_end", pl_module)
    def on_train_epoch_start(self, trainer, pl_module): self._fire("train_epoch_start", pl_module)
    def on_train_epoch_end(self, trainer, pl_module): self._fire("train_epoch_end", pl_module)
