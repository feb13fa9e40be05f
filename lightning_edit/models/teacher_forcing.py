"""Prompt + target batches, shared by editors (losses) and metrics (scores).

The target is tokenized on its own with a leading space and appended to the prompt's tokens, so the
target tokens are the same whatever the prompt (EasyEdit's and ROME's convention).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from .loading import LoadedModel


def target_ids(tokenizer, target: str) -> list[int]:
    ids = tokenizer(" " + target.strip(), add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"target {target!r} tokenizes to nothing")
    return ids


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    return tokenizer(prompt)["input_ids"]


def contextualize(loaded: LoadedModel, prompts: Sequence[str]) -> list[str]:
    """The prompts as the model is to read them: unchanged, unless a patch rewrites them (IKE's demonstrations)."""
    return loaded.patches.rewrite_prompts(prompts)


@dataclass
class TargetBatch:
    """Right-padded decoder-only batch (or encoder/decoder pair) with labels on target tokens only."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor  # -100 outside the target; aligned so that logits[:, t] predicts labels[:, t]
    decoder_input_ids: torch.Tensor | None = None
    prompt_lengths: list[int] | None = None

    def model_inputs(self) -> dict:
        d = {"input_ids": self.input_ids, "attention_mask": self.attention_mask}
        if self.decoder_input_ids is not None:
            d["decoder_input_ids"] = self.decoder_input_ids
        return d


def build_target_batch(loaded: LoadedModel, prompts: Sequence[str], targets: Sequence[str],
                       read_in_context: bool = True) -> TargetBatch:
    """``read_in_context=False``: the prompts already went through ``contextualize``."""
    if read_in_context:
        prompts = contextualize(loaded, prompts)
    tok = loaded.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    device = loaded.device
    if loaded.layout.is_encoder_decoder:
        enc = tok(list(prompts), return_tensors="pt", padding=True)
        tgts = [target_ids(tok, t) for t in targets]
        width = max(len(t) for t in tgts)
        labels = torch.full((len(tgts), width), -100, dtype=torch.long)
        for i, t in enumerate(tgts):
            labels[i, : len(t)] = torch.tensor(t)
        start = loaded.model.config.decoder_start_token_id
        dec_in = torch.full_like(labels, pad)
        dec_in[:, 0] = start
        dec_in[:, 1:] = labels[:, :-1].clamp(min=0)
        dec_in[:, 1:][labels[:, :-1] == -100] = pad
        return TargetBatch(enc["input_ids"].to(device), enc["attention_mask"].to(device), labels.to(device), dec_in.to(device))
    seqs, label_rows, p_lens = [], [], []
    for p, t in zip(prompts, targets):
        p_ids, t_ids = prompt_ids(tok, p), target_ids(tok, t)
        seq = p_ids + t_ids
        # logits at position i predict token i+1: the target token at seq index j is predicted at j-1.
        lab = [-100] * (len(p_ids) - 1) + t_ids + [-100]
        seqs.append(seq)
        label_rows.append(lab)
        p_lens.append(len(p_ids))
    width = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    attention = torch.zeros((len(seqs), width), dtype=torch.long)
    labels = torch.full((len(seqs), width), -100, dtype=torch.long)
    for i, (s, lab) in enumerate(zip(seqs, label_rows)):
        input_ids[i, : len(s)] = torch.tensor(s)
        attention[i, : len(s)] = 1
        labels[i, : len(lab)] = torch.tensor(lab)
    return TargetBatch(input_ids.to(device), attention.to(device), labels.to(device), prompt_lengths=p_lens)


@dataclass
class TargetScore:
    """Teacher-forced result for one (prompt, target): per target token, log-prob and whether argmax hit."""

    target_ids: torch.Tensor
    predicted_ids: torch.Tensor  # argmax at each target position
    token_logprobs: torch.Tensor

    @property
    def token_accuracy(self) -> float:
        return (self.predicted_ids == self.target_ids).float().mean().item()

    @property
    def exact_match(self) -> float:
        """1.0 iff greedy decoding reproduces the whole target (every teacher-forced argmax hits)."""
        return float(bool((self.predicted_ids == self.target_ids).all()))

    @property
    def mean_logprob(self) -> float:
        return self.token_logprobs.mean().item()


def target_logits(loaded: LoadedModel, batch: TargetBatch) -> torch.Tensor:
    return loaded.model(**batch.model_inputs()).logits


def cache_argument(model: torch.nn.Module) -> str:
    """The name of the forward's key/value-cache argument (``cache`` from transformers 5.x, ``past_key_values`` before)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def output_cache(output):
    """The key/value cache a forward returned: ``output.cache`` where the output class has that field (later
    transformers 5.x, which keep ``past_key_values`` as a deprecated alias), ``output.past_key_values`` (the
    documented field of the earlier 5.x releases) otherwise."""
    import dataclasses

    names = {f.name for f in dataclasses.fields(output)} if dataclasses.is_dataclass(output) else set()
    if "cache" in names:
        return output.cache
    return output.past_key_values


# Rows sharing at least this many leading tokens run them once (an in-context editor's demonstrations are
# hundreds of tokens ahead of every prompt); below it one ordinary pass is cheaper than two.
MIN_SHARED_TOKENS = 64


def shared_prefix_length(batch: TargetBatch) -> int:
    """Leading tokens common to every row that can be run once for all: they end before the first target
    token is predicted in any row, so every scored position lies after them (``score_targets`` says when that
    is exact)."""
    if batch.decoder_input_ids is not None or batch.prompt_lengths is None:
        return 0  # a single row counts too: later batches may reuse its cached prefix
    limit = min(batch.prompt_lengths) - 1
    same = (batch.input_ids[:, :limit] == batch.input_ids[:1, :limit]).all(0)
    differs = (~same).nonzero()
    return int(differs[0]) if differs.numel() else limit


def _common_length(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    return next((i for i in range(n) if a[i] != b[i]), n)


def _logits_after_shared_prefix(loaded: LoadedModel, batch: TargetBatch, shared: int,
                                prefix_caches: dict[tuple[int, ...], list]) -> tuple[torch.Tensor, int]:
    """Logits of the positions after the shared tokens, and how many tokens that is. The shared tokens run once
    (batch of one) into a key/value cache that every row reuses, and so do later batches: a cached prefix whose
    first ``MIN_SHARED_TOKENS`` or more tokens this batch also starts with serves it as far as they agree, and only
    the rest of this batch's shared tokens run on top of it (the same demonstrations before another question)."""
    from transformers import DynamicCache

    model, arg = loaded.model, cache_argument(loaded.model)
    first_row = batch.input_ids[0, :shared].tolist()
    common, cached = 0, None
    for key, layers in prefix_caches.items():
        agree = _common_length(key, first_row)
        if agree >= MIN_SHARED_TOKENS and agree > common:  # keys/values of a token depend only on the tokens up to it
            common, cached = agree, [(k[:, :, :agree], v[:, :, :agree]) for k, v in layers]
    if cached is None or common < shared:
        cache = DynamicCache()  # keeps every token in every layer; sliding-window layers mask by position
        for i, (keys, values) in enumerate(cached or []):
            cache.update(keys, values, i)
        start = common if cached is not None else 0
        new_ids = batch.input_ids[:1, start:shared]
        model(input_ids=new_ids, attention_mask=batch.attention_mask[:1, :shared],
              position_ids=torch.arange(start, shared, device=new_ids.device)[None], use_cache=True, **{arg: cache})
        prefix_caches.clear()  # the new prefix holds what the old one shared with it; one prefix is kept at a time
        cached = prefix_caches[tuple(first_row)] = [(layer.keys, layer.values) for layer in cache.layers]
    rows = batch.input_ids.shape[0]
    cache = DynamicCache()
    for i, (keys, values) in enumerate(cached):
        cache.update(keys.expand(rows, *keys.shape[1:]), values.expand(rows, *values.shape[1:]), i)
    suffix = batch.input_ids[:, shared:]
    positions = torch.arange(shared, batch.input_ids.shape[1], device=suffix.device).expand_as(suffix)
    logits = model(input_ids=suffix, attention_mask=batch.attention_mask, position_ids=positions,
                   use_cache=True, **{arg: cache}).logits
    return logits, shared


def _consecutive(n: int, batch_size: int) -> list[list[int]]:
    return [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]


def _batches_by_shared_prefix(loaded: LoadedModel, prompts: Sequence[str], batch_size: int) -> list[list[int]]:
    """Row indices in batches whose rows start with the same demonstrations: sorted by their tokens, a row joins
    the open batch only if it shares at least ``MIN_SHARED_TOKENS`` leading tokens with it (several in-context
    edits route prompts to different contexts; a batch mixing them would share nothing)."""
    if loaded.layout.is_encoder_decoder:
        return _consecutive(len(prompts), batch_size)
    ids = [prompt_ids(loaded.tokenizer, p) for p in prompts]
    batches: list[list[int]] = []
    for k in sorted(range(len(prompts)), key=lambda k: ids[k]):
        if batches and len(batches[-1]) < batch_size:
            first = ids[batches[-1][0]][:MIN_SHARED_TOKENS]
            if len(first) == MIN_SHARED_TOKENS and ids[k][:MIN_SHARED_TOKENS] == first:
                batches[-1].append(k)
                continue
        batches.append([k])
    return batches


@torch.no_grad()
def score_targets(loaded: LoadedModel, prompts: Sequence[str], targets: Sequence[str], batch_size: int = 32,
                  prefix_cache: Optional[dict] = None) -> list[TargetScore]:
    """Teacher-forced scores of each target after its prompt.

    Rows of a batch that start with the same long run of tokens (an in-context editor's demonstrations, the
    few-shot examples ahead of every multi-hop question) run it once; the scores are those of a full pass. That
    holds for the model itself and for prompt rewriting, not for every forward hook (a hook pooling over a
    row's tokens, like WISE's router, would see the two parts apart), so a model carrying hooks runs whole rows.

    ``prefix_cache``: a dict the caller keeps across calls on the model as it is now (several questions after the
    same demonstrations); by default the keys and values of a prefix are dropped on return."""
    in_context = loaded.patches.rewrites_prompts
    share_prefixes = in_context or loaded.computes_from_weights_alone
    if in_context:
        prompts = contextualize(loaded, prompts)
        batches = _batches_by_shared_prefix(loaded, prompts, batch_size)
    else:
        batches = _consecutive(len(prompts), batch_size)
    out: list[Optional[TargetScore]] = [None] * len(prompts)
    # the latest shared prefix's keys/values
    prefix_caches: dict[tuple[int, ...], list] = prefix_cache if prefix_cache is not None else {}
    for rows in batches:
        batch = build_target_batch(loaded, [prompts[k] for k in rows], [targets[k] for k in rows], read_in_context=False)
        shared = shared_prefix_length(batch) if share_prefixes else 0
        if shared >= MIN_SHARED_TOKENS:
            logits, shared = _logits_after_shared_prefix(loaded, batch, shared, prefix_caches)
            logits, labels = logits.float(), batch.labels[:, shared:]
        else:
            logits, labels = _target_position_logits(loaded, batch)
        for row, k in enumerate(rows):
            mask = labels[row] != -100
            tgt = labels[row][mask]
            scored = logits[row][mask]  # log-softmax of the target positions only: the rest is never read
            out[k] = TargetScore(
                target_ids=tgt.cpu(),
                predicted_ids=scored.argmax(-1).cpu(),
                token_logprobs=torch.log_softmax(scored, dim=-1).gather(-1, tgt[:, None]).squeeze(-1).cpu(),
            )
    return out  # type: ignore[return-value]  # every slot filled


def _target_position_logits(loaded: LoadedModel, batch: TargetBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Float logits and labels of the sequence positions where some row predicts a target token. A decoder whose
    forward takes ``logits_to_keep`` runs its output layer on those positions only (the vocabulary projection of
    every prompt position is most of a short pass's cost); other models return every position."""
    if batch.decoder_input_ids is None and "logits_to_keep" in inspect.signature(loaded.model.forward).parameters:
        positions = (batch.labels != -100).any(0).nonzero().squeeze(1)
        logits = loaded.model(**batch.model_inputs(), logits_to_keep=positions).logits
        return logits.float(), batch.labels[:, positions]
    return target_logits(loaded, batch).float(), batch.labels
