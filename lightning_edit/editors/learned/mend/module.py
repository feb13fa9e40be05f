"""MEND's LightningModule: the loss its gradient transform is trained with (``train.py mend``)."""
from __future__ import annotations

from ..hypernetwork import edit_batch, gradient_factors
from ..module import EditorModule, shifted_meta_loss
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
        factors = gradient_factors(loaded, self.editor.layers(loaded), edit_batch(loaded, requests))
        loss, logs = shifted_meta_loss(loaded, requests, self.network(factors), self.training_cfg.c_edit,
                                       self.training_cfg.c_loc)
        logs["edit_lr"] = self.network.edit_lrs.detach().mean()
        return loss, logs
