"""LightningModules that train the editor networks of MEND, KE and SERAC.

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

from ..editors.base import get_editor_class
from ..models.loading import LoadedModel, load_model
from ..models.teacher_forcing import build_target_batch
from ..requests import EditRequest
from ..editors.learned.hypernetwork import (LearnedEditor, LearnedHyperParams, agreement, edit_batch, edited_logits, gradient_factors,
                      locality_batch, locality_pairs, masked_kl, rephrase_pairs, target_accuracy, target_nll)
from .settings import KETraining, MENDTraining, SERACTraining, TrainingConfig


class EditorModule(L.LightningModule):
    """Common part: the frozen base model, the editor (contract) and its trainable network."""

    method: str = ""
    Training: ClassVar[Type[TrainingConfig]] = TrainingConfig

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
        cls: Type[LearnedEditor] = get_editor_class(self.method)  # type: ignore[assignment]
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
        loaded = self.base
        for r in batch:
            loc = locality_batch(loaded, [r])
            with torch.no_grad():
                base_loc = loaded.model(**loc.model_inputs()).logits if loc is not None else None
            delta = self.editor.edit(loaded, [r])
            try:
                with torch.no_grad():
                    eb = edit_batch(loaded, [r])
                    self.val_edit_success.update(target_accuracy(loaded.model(**eb.model_inputs()).logits, eb.labels))
                    if r.rephrase_prompts:
                        rb = build_target_batch(loaded, list(r.rephrase_prompts), [r.target_new] * len(r.rephrase_prompts))
                        self.val_rephrase_success.update(target_accuracy(loaded.model(**rb.model_inputs()).logits, rb.labels).mean())
                    if loc is not None:
                        post_loc = loaded.model(**loc.model_inputs()).logits
                        self.val_locality.update(agreement(base_loc, post_loc, loc.labels).mean())
            finally:
                delta.undo(loaded)

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


class MENDModule(EditorModule):
    """MEND: ``c_edit · NLL(target | edit prompt and rephrases, W + ΔW) + c_loc · KL(base ‖ edited)`` on locality prompts."""

    method = "mend"
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


class KEModule(EditorModule):
    """KE: minimise the edit NLL subject to KL(base ‖ edited) ≤ margin on locality prompts, with a
    Lagrange multiplier λ (a buffer, so it is checkpointed) raised by dual ascent while the constraint is violated."""

    method = "ke"
    Training = KETraining
    training_cfg: KETraining

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.register_buffer("lagrange", torch.tensor(self.training_cfg.lagrange_init))

    def training_loss(self, requests):
        from ..editors.learned.ke import edit_embeddings

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


def counterfactual_rows(loaded: LoadedModel, template: str, rows: Sequence[tuple[EditRequest, str, str]]):
    """Token batch of "<edit prefix><prompt><target>" with labels on the target tokens only."""
    from ..editors.memory.serac import edit_prefix_ids
    from ..models.ops import pad_right, pad_token_id
    from ..models.teacher_forcing import prompt_ids, target_ids

    seqs, labels = [], []
    for request, prompt, target in rows:
        pre, p, t = edit_prefix_ids(loaded, template, request), prompt_ids(loaded.tokenizer, prompt), target_ids(loaded.tokenizer, target)
        seqs.append(pre + p + t)
        labels.append([-100] * (len(pre) + len(p) - 1) + t + [-100])
    ids, mask = pad_right(seqs, pad_token_id(loaded.tokenizer), loaded.device)
    lab, _ = pad_right(labels, -100, loaded.device)
    return ids, mask, lab


class SERACModule(EditorModule):
    """SERAC: the counterfactual model (base + LoRA, edit in context) learns NLL of the new answer on the
    edit prompt and rephrases (plus, weighted by ``c_cf_loc``, KL to the base on unrelated prompts); the scope
    classifier learns BCE: in scope for its own edit's prompt/rephrases, out of scope for other edits' and
    for locality prompts, at every position whose logits are scored."""

    method = "serac"
    Training = SERACTraining
    training_cfg: SERACTraining

    def training_loss(self, requests):
        from ..editors.memory.serac import lora_active, prompt_keys, scope_features

        loaded, hp, net = self.base, self.editor.hparams, self.network
        # counterfactual model
        rows = [(r, p, r.target_new) for r in requests for p in (r.prompt, *r.rephrase_prompts)]
        ids, mask, labels = counterfactual_rows(loaded, hp.edit_template, rows)
        with lora_active(loaded, net):
            cf_logits = loaded.model(input_ids=ids, attention_mask=mask).logits
        l_cf = target_nll(cf_logits, labels)
        logs = {"cf_loss": l_cf.detach(), "edit_acc": target_accuracy(cf_logits.detach(), labels).mean()}
        loss = l_cf
        loc_rows = [(r, probe.prompt, probe.answer) for r in requests for probe in r.locality]
        c_cf_loc = self.training_cfg.c_cf_loc
        if loc_rows and c_cf_loc > 0:
            ids_l, mask_l, labels_l = counterfactual_rows(loaded, hp.edit_template, loc_rows)
            base_b = build_target_batch(loaded, [p for _, p, _ in loc_rows], [a for _, _, a in loc_rows])
            with torch.no_grad():
                base_logits = loaded.model(**base_b.model_inputs()).logits
            with lora_active(loaded, net):
                cf_loc = loaded.model(input_ids=ids_l, attention_mask=mask_l).logits
            sel_base, sel_cf = base_logits[base_b.labels != -100], cf_loc[labels_l != -100]
            l_cf_loc = masked_kl(sel_base[None], sel_cf[None], torch.zeros(1, sel_base.shape[0], dtype=torch.long))
            loss = loss + c_cf_loc * l_cf_loc
            logs["cf_loc_loss"] = l_cf_loc.detach()
        # scope classifier
        keys = prompt_keys(loaded, net, hp.scope_layer, [r.prompt for r in requests])
        queries, owners = [], []
        for j, r in enumerate(requests):
            for p in (r.prompt, *r.rephrase_prompts):
                queries.append((p, r.target_new))
                owners.append(j)
            for probe in r.locality:
                queries.append((probe.prompt, probe.answer))
                owners.append(-1)
        qb = build_target_batch(loaded, [q for q, _ in queries], [a for _, a in queries])
        feats = scope_features(loaded, hp.scope_layer, qb.input_ids, qb.attention_mask)
        scores = net.classifier.logits(net.classifier.embed(feats), keys)  # (Q, T, E)
        scored = (qb.labels != -100)[..., None].expand_as(scores)
        owner = torch.tensor(owners, device=scores.device)[:, None, None]
        own = (owner == torch.arange(len(requests), device=scores.device)[None, None, :]).expand_as(scores)
        bce = torch.nn.functional.binary_cross_entropy_with_logits
        pos, neg = scores[scored & own], scores[scored & ~own]
        l_cls = bce(pos, torch.ones_like(pos)) + (bce(neg, torch.zeros_like(neg)) if neg.numel() else 0.0)
        loss = loss + self.training_cfg.c_cls * l_cls
        logs.update({"cls_loss": l_cls.detach(), "cls_pos_acc": (pos > 0).float().mean(),
                     "cls_neg_acc": (neg < 0).float().mean() if neg.numel() else torch.tensor(1.0)})
        return loss, logs


MODULES: dict[str, Type[EditorModule]] = {"mend": MENDModule, "ke": KEModule, "serac": SERACModule}


def module_class(method: str) -> Type[EditorModule]:
    from ..errors import ConfigError

    if method not in MODULES:
        raise ConfigError(f"train.py trains the learnt editors {sorted(MODULES)}; {method!r} is not one of them "
                          f"(the other methods need no training: python edit.py --method {method})")
    return MODULES[method]
