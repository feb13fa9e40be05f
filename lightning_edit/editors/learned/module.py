"""The LightningModule every learnt editor trains with (``EditorModule``); each method's folder subclasses it with
its loss (``mend/module.py``: ``MENDModule``, likewise KE, SERAC).

The base model is frozen and kept outside the module's parameters (it is not saved in Lightning
checkpoints nor wrapped by DDP: every process loads it itself); only the editor network trains.
Validation edits each held-out request through the editor contract (``Editor.edit`` → score → undo),
exactly as ``evaluate_editing`` does, and logs torchmetrics means.
"""
from __future__ import annotations

import time
from contextlib import nullcontext
from typing import Any, ClassVar, Mapping, Optional, Sequence, Type, Union

import lightning as L
import torch
from torchmetrics import MeanMetric

from ...models.loading import LoadedModel, load_model
from ...models.teacher_forcing import TargetBatch, build_target_batch
from ...requests import EditRequest
from .hypernetwork import (LearnedEditor, LearnedHyperParams, agreement, edit_batch, edited_logits, locality_batch,
                          locality_pairs, masked_kl, rephrase_pairs, target_accuracy, target_nll)
from .settings import TrainingConfig


class EditorModule(L.LightningModule):
    """Common part: the frozen base model, the editor (contract) and its trainable network."""

    method: str = ""
    # each method's module names its editor and its settings (no lookup by method name)
    Editor: ClassVar[Type[LearnedEditor]] = LearnedEditor
    Training: ClassVar[Type[TrainingConfig]] = TrainingConfig
    validate_as_batch: ClassVar[bool] = False  # True: a validation batch is one edit (a batch editor's regime)

    def __init__(self, model_name: str, editor_hparams: dict, training: Union[TrainingConfig, Mapping[str, Any]],
                 loaded: Optional[LoadedModel] = None):
        super().__init__()
        if not isinstance(training, self.Training):
            training = self.Training.from_dict(dict(training), source=f"{self.method} training")
        self.training_cfg = training
        # plain values only in the checkpoint and the loggers' hparams files
        self.save_hyperparameters({"model_name": model_name, "editor_hparams": dict(editor_hparams),
                                   "training": training.to_dict()})
        loaded = loaded if loaded is not None else load_model(model_name)
        self._set_loaded(loaded)
        cls = self.Editor
        hp: LearnedHyperParams = cls.HParams.from_dict({**editor_hparams, "model_name": loaded.name}, source=f"{self.method} hparams")
        self.editor: LearnedEditor = cls(hp)
        self.network = self.editor.build_network(loaded)
        self.editor.network = self.network
        self.val_edit_success = MeanMetric()
        self.val_rephrase_success = MeanMetric()
        self.val_locality = MeanMetric()

    # The base model is a plain attribute (not a submodule): no checkpointing, no DDP wrapping.
    def _set_loaded(self, loaded: LoadedModel) -> None:
        self.__dict__["loaded"] = loaded

    @property
    def base(self) -> LoadedModel:
        return self.__dict__["loaded"]

    def on_fit_start(self) -> None:
        self.base.model.to(self.device)
        self._fit_started = time.perf_counter()

    def train_seconds(self) -> float:
        """Wall-clock training time over this fit and every run it resumed from."""
        started = getattr(self, "_fit_started", None)
        return getattr(self, "_seconds_before", 0.0) + (time.perf_counter() - started if started else 0.0)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["lightning_edit_train_seconds"] = self.train_seconds()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._seconds_before = float(checkpoint.get("lightning_edit_train_seconds", 0.0))

    def on_validation_start(self) -> None:
        self.base.model.to(self.device)

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        return batch  # lists of EditRequest (text): tokenized on the model's device by each step

    def configure_optimizers(self):
        groups = self.param_groups()
        return torch.optim.Adam(groups, lr=self.training_cfg.lr)

    def param_groups(self) -> list[dict]:
        return [{"params": [p for p in self.network.parameters() if p.requires_grad]}]

    def training_loss(self, requests: Sequence[EditRequest]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def autocast(self):
        """Mixed precision when the network (DeepSpeed bf16-mixed casts it) or the frozen base (``--dtype``) is
        bf16/fp16: tensors built inside the steps (gradient factors, hidden states) are float32 and meet weights of
        the other dtype. A no-op when both are float32 (the default)."""
        dtypes = [next(m.parameters()).dtype for m in (self.network, self.base.model) if any(True for _ in m.parameters())]
        low = next((d for d in dtypes if d in (torch.bfloat16, torch.float16)), None)
        if low is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=low)

    def training_step(self, batch: list[EditRequest], batch_idx: int) -> torch.Tensor:
        with self.autocast():
            loss, logs = self.training_loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch))
        for k, v in logs.items():
            self.log(f"train/{k}", v, prog_bar=k in ("edit_acc",), batch_size=len(batch))
        return loss

    def validation_step(self, batch: list[EditRequest], batch_idx: int) -> None:
        was_training = self.network.training
        self.network.eval()
        try:
            with self.autocast():
                self._validate_requests(batch)
        finally:
            self.network.train(was_training)

    def _validate_requests(self, batch: list[EditRequest]) -> None:
        """Edit → score → undo through the editor contract: each request alone, or the whole batch in one edit
        (``validate_as_batch``: MALMEN), each request then scored on the edited model."""
        loaded = self.base
        groups = [list(batch)] if self.validate_as_batch else [[r] for r in batch]
        for group in groups:
            locs = [locality_batch(loaded, [r]) for r in group]
            with torch.no_grad():
                base_locs = [loaded.model(**loc.model_inputs()).logits if loc is not None else None for loc in locs]
            delta = self.editor.edit(loaded, group)
            try:
                with torch.no_grad():
                    for r, loc, base_loc in zip(group, locs, base_locs):
                        self._score(r, loc, base_loc)
            finally:
                delta.undo(loaded)

    def _score(self, r: EditRequest, loc: Optional[TargetBatch], base_loc: Optional[torch.Tensor]) -> None:
        loaded = self.base
        eb = edit_batch(loaded, [r])
        self.val_edit_success.update(target_accuracy(loaded.model(**eb.model_inputs()).logits, eb.labels))
        if r.rephrase_prompts:
            rb = build_target_batch(loaded, list(r.rephrase_prompts), [r.target_new] * len(r.rephrase_prompts))
            rephrase_logits = loaded.model(**rb.model_inputs()).logits
            self.val_rephrase_success.update(target_accuracy(rephrase_logits, rb.labels).mean())
        if loc is not None:
            post_loc = loaded.model(**loc.model_inputs()).logits
            self.val_locality.update(agreement(base_loc, post_loc, loc.labels).mean())

    def on_validation_epoch_end(self) -> None:
        success = self.val_edit_success.compute()
        locality = self.val_locality.compute()
        self.log("val/edit_success", success, prog_bar=True)
        self.log("val/rephrase_success", self.val_rephrase_success.compute())
        self.log("val/locality", locality, prog_bar=True)
        self.log("val/drawdown", 1.0 - locality)
        # one number to select checkpoints by: both must be high
        self.log("val/score", (success + locality) / 2)
        for m in (self.val_edit_success, self.val_rephrase_success, self.val_locality):
            m.reset()


def joint_rows(loaded: LoadedModel, rb, lb) -> tuple[list[str], list[str], int]:
    """Prompts/targets of the edit-generalisation rows then the locality rows (one padded batch)."""
    return rb[0] + (lb[0] if lb else []), rb[1] + (lb[1] if lb else []), len(rb[0])


def shifted_meta_loss(loaded: LoadedModel, requests: Sequence[EditRequest], shifts: Mapping[str, torch.Tensor],
                      c_edit: float, c_loc: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """MEND's meta-loss, also MALMEN's: ``c_edit · NLL(target | rephrases, W + S) + c_loc · KL(base ‖ edited)`` on the
    locality prompts, for the weights shifted by ``shifts`` (one edited forward pass over both kinds of rows)."""
    rb, lb = rephrase_pairs(requests), locality_pairs(requests)
    prompts, targets, n_edit = joint_rows(loaded, rb, lb)
    joint = build_target_batch(loaded, prompts, targets)
    logits = edited_logits(loaded, shifts, joint)
    edit_logits, edit_labels = logits[:n_edit], joint.labels[:n_edit]
    l_edit = target_nll(edit_logits, edit_labels)
    logs = {"edit_loss": l_edit.detach(), "edit_acc": target_accuracy(edit_logits.detach(), edit_labels).mean()}
    loss = c_edit * l_edit
    if lb is not None:
        loc_inputs = {k: v[n_edit:] for k, v in joint.model_inputs().items()}
        with torch.no_grad():
            base_logits = loaded.model(**loc_inputs).logits
        l_loc = masked_kl(base_logits, logits[n_edit:], joint.labels[n_edit:])
        loss = loss + c_loc * l_loc
        logs["loc_loss"] = l_loc.detach()
    return loss, logs
