"""SERAC's LightningModule: its scope classifier and counterfactual model trained together (``train.py serac``)."""
from __future__ import annotations

from typing import Sequence

import torch

from ....models.loading import LoadedModel
from ....models.ops import pad_right, pad_token_id
from ....models.teacher_forcing import build_target_batch, prompt_ids, target_ids
from ....requests import EditRequest
from ..hypernetwork import masked_kl, target_accuracy, target_nll
from ..module import EditorModule
from .editor import SERACEditor, edit_prefix_ids, prompt_keys
from .network import lora_active, scope_features
from .settings import SERACTraining


def counterfactual_rows(loaded: LoadedModel, template: str, rows: Sequence[tuple[EditRequest, str, str]]):
    """Token batch of "<edit prefix><prompt><target>" with labels on the target tokens only."""
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

    method = SERACEditor.name
    Editor = SERACEditor
    Training = SERACTraining
    training_cfg: SERACTraining

    def training_loss(self, requests):
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
