"""MALMEN's LightningModule (``train.py malmen``): its meta-loss, and the paper's two-stage backpropagation.

The meta-loss is MEND's: ``c_edit · NLL(target | rephrases, W + S*) + c_loc · KL(base ‖ edited)`` on locality
prompts, over a batch of edits whose shift ``S*`` is one least-squares solve (``editor.py``). Its gradient reaches
the hypernetwork ``θ`` only through ``S*``, so the two backward passes are separated (Tan et al. 2024, Section 4.2):

1. the language model's backward, to the shifts only: ``G_ℓ = ∂L/∂S_ℓ`` with ``S_ℓ`` a detached leaf (the
   hypernetwork's graph is not part of it, and the language model's graph is freed once ``G`` is taken);
2. the hypernetwork's backward: ``∂L/∂θ = Σ_ℓ ⟨G_ℓ, ∂S_ℓ/∂θ⟩``, the gradient of ``Σ_ℓ ⟨G_ℓ, S_ℓ(θ)⟩`` with ``G``
   held constant — through the normal equation to ``D``, ``λ_ℓ``, and the network.

Step 2 is the loss this module hands Lightning, so the optimizer, gradient clipping and accumulation, DDP and
DeepSpeed (which own the backward of the returned loss) see an ordinary loss; its value is the meta-loss.
"""
from __future__ import annotations

from typing import Sequence

import torch

from ....requests import EditRequest
from ..module import EditorModule, shifted_meta_loss
from .editor import MALMENEditor
from .settings import MALMENTraining


class MALMENModule(EditorModule):
    """MALMEN: MEND's meta-loss on least-squares-aggregated shifts, backpropagated in two stages."""

    method = MALMENEditor.name
    Editor = MALMENEditor
    Training = MALMENTraining
    training_cfg: MALMENTraining
    validate_as_batch = True  # a validation batch is edited at once: the many-edit regime MALMEN is trained for

    def meta_loss(self, requests: Sequence[EditRequest],
                  shifts: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``c_edit · L_gen + c_loc · L_loc`` of the model with ``W + S`` for each shifted weight (MEND's)."""
        return shifted_meta_loss(self.base, requests, shifts, self.training_cfg.c_edit, self.training_cfg.c_loc)

    def training_loss(self, requests: Sequence[EditRequest]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        shifts = self.network(self.editor.factors(self.base, requests))  # S*(θ), the hypernetwork's graph
        # stage 1: the language model's backward, stopped at the shifts
        leaves = {name: s.detach().requires_grad_(True) for name, s in shifts.items()}
        with torch.enable_grad():
            loss, logs = self.meta_loss(requests, leaves)
            grads = torch.autograd.grad(loss, list(leaves.values()))
        # stage 2: Σ ⟨∂L/∂S, S(θ)⟩ has the θ-gradient ∂L/∂θ; shown with the meta-loss as its value
        surrogate = sum((g.to(shifts[n].dtype) * shifts[n]).sum() for n, g in zip(leaves, grads))
        logs["edit_lr"] = self.network.edit_lrs.detach().mean()
        logs["lambda"] = self.network.log_lambdas.detach().exp().mean()
        return surrogate - surrogate.detach() + loss.detach(), logs
