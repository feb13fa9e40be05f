"""MEND's LightningModule: the loss its gradient transform is trained with (``train.py mend``)."""
from __future__ import annotations

import torch

from ....models.teacher_forcing import build_target_batch
from ..hypernetwork import (edit_batch, edited_logits, gradient_factors, locality_pairs, masked_kl, rephrase_pairs,
                            target_accuracy, target_nll)
from ..module import EditorModule, joint_rows
from .editor import MENDEditor
from .settings import MENDTraining


class MENDModule(EditorModule):
    """MEND: ``c_edit · NLL(target | edit prompt and rephrases, W + ΔW) + c_loc · KL(base ‖ edited)`` on locality prompts."""

    method = MENDEditor.name
    Editor = MENDEditor
    Training = MENDTraining
    training_cfg: MENDTraining

    def param_groups(self) -> list[dict]:
        lrs = [self.network.edit_lrs]
        rest = [p for n, p in self.network.named_parameters() if n != "edit_lrs"]
        return [{"params": rest}, {"params": lrs, "lr": self.training_cfg.lr_lr}]

    def training_loss(self, requests):
        loaded = self.base
        layers = self.editor.layers(loaded)
        factors = gradient_factors(loaded, layers, edit_batch(loaded, requests))
        updates = self.network(factors)
        rb = rephrase_pairs(requests)
        lb = locality_pairs(requests)
        # one edited forward pass over the rephrases and the locality prompts together
        prompts, targets, n_edit = joint_rows(loaded, rb, lb)
        joint = build_target_batch(loaded, prompts, targets)
        logits = edited_logits(loaded, updates, joint)
        edit_logits, edit_labels = logits[:n_edit], joint.labels[:n_edit]
        l_edit = target_nll(edit_logits, edit_labels)
        logs = {"edit_loss": l_edit.detach(), "edit_acc": target_accuracy(edit_logits.detach(), edit_labels).mean()}
        loss = self.training_cfg.c_edit * l_edit
        if lb is not None:
            loc_inputs = {k: v[n_edit:] for k, v in joint.model_inputs().items()}
            with torch.no_grad():
                base_logits = loaded.model(**loc_inputs).logits
            l_loc = masked_kl(base_logits, logits[n_edit:], joint.labels[n_edit:])
            loss = loss + self.training_cfg.c_loc * l_loc
            logs["loc_loss"] = l_loc.detach()
        logs["edit_lr"] = self.network.edit_lrs.detach().mean()
        return loss, logs
