"""KE's LightningModule: its hypernetwork trained with the paper's constrained objective (``train.py ke``)."""
from __future__ import annotations

import torch

from ....models.teacher_forcing import build_target_batch
from ..hypernetwork import (edit_batch, edited_logits, gradient_factors, locality_pairs, masked_kl, rephrase_pairs,
                            target_accuracy, target_nll)
from ..module import EditorModule, joint_rows
from .editor import KEEditor, edit_embeddings
from .settings import KETraining


class KEModule(EditorModule):
    """KE: minimise the edit NLL subject to KL(base ‖ edited) ≤ margin on locality prompts, with a
    Lagrange multiplier λ (a buffer, so it is checkpointed) raised by dual ascent while the constraint is violated."""

    method = KEEditor.name
    Editor = KEEditor
    Training = KETraining
    training_cfg: KETraining

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.register_buffer("lagrange", torch.tensor(self.training_cfg.lagrange_init))

    def training_loss(self, requests):
        loaded = self.base
        layers = self.editor.layers(loaded)
        edit_losses, kls, accs = [], [], []
        for r in requests:  # KE conditions on one edit at a time
            factors = gradient_factors(loaded, layers, edit_batch(loaded, [r]))
            grads = {n: f.weight_gradient() for n, f in factors.items()}
            emb, lengths = edit_embeddings(loaded, r)
            updates = self.network(emb, lengths, grads)
            rb, lb = rephrase_pairs([r]), locality_pairs([r])
            prompts, targets, n_edit = joint_rows(loaded, rb, lb)
            joint = build_target_batch(loaded, prompts, targets)
            logits = edited_logits(loaded, updates, joint)
            edit_losses.append(target_nll(logits[:n_edit], joint.labels[:n_edit]))
            accs.append(target_accuracy(logits[:n_edit].detach(), joint.labels[:n_edit]).mean())
            if lb is not None:
                loc_inputs = {k: v[n_edit:] for k, v in joint.model_inputs().items()}
                with torch.no_grad():
                    base_logits = loaded.model(**loc_inputs).logits
                kls.append(masked_kl(base_logits, logits[n_edit:], joint.labels[n_edit:]))
        l_edit = torch.stack(edit_losses).mean()
        kl = torch.stack(kls).mean() if kls else l_edit.new_zeros(())
        margin = self.training_cfg.kl_margin
        loss = l_edit + self.lagrange.clone() * (kl - margin)
        with torch.no_grad():  # dual ascent on λ ≥ 0
            self.lagrange.add_(self.training_cfg.lagrange_lr * (kl.detach() - margin)).clamp_(min=0.0)
        return loss, {"edit_loss": l_edit.detach(), "edit_acc": torch.stack(accs).mean(), "loc_loss": kl.detach(),
                      "lagrange": self.lagrange.detach().clone()}
