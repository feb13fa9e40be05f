"""Shared machinery of the locate-then-edit methods (ROME, MEMIT, AlphaEdit).

- subject positions: the index of the subject's last token in a tokenized prompt (from the tokenizer's
  character offsets, so it holds whatever the tokenizer merges across the subject's boundary);
- context prefixes: a few short generated texts put before each prompt, so keys and values do not
  depend on the prompt being the start of the text (generated once per model, deterministically);
- keys: the input of ``layout.mlp_out`` at the subject's last token, averaged over the prefixes;
- values: a vector added at the subject's last token to an output (an ``mlp_out`` for ROME, a block for
  MEMIT/AlphaEdit), optimised so the target becomes likely, with ROME's KL term on "{subject} is a",
  weight decay and norm clamp.

T5 (encoder-decoder) is refused by ``check_supported``: see its docstring for why.
"""
from __future__ import annotations

import weakref

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Iterator, Optional, Sequence

import torch

from ...errors import ConfigError, RequestError
from ...hooks import edit_output, run_until, trace
from ...models.loading import LoadedModel
from ...models.ops import pad_right, pad_token_id, resolve_layers
from ...models.teacher_forcing import cache_argument, target_ids
from ...requests import EditRequest
from ...stats import DEFAULT_TOKENS
from ..base import Editor, HyperParams, add_update

log = logging.getLogger(__name__)

PREFIX_SEEDS = ("The", "Therefore", "Because", "I", "You")
KL_TEMPLATE = "{} is a"


def check_supported(loaded: LoadedModel, method: str) -> None:
    """Refuse encoder-decoder models (T5) with the reason.

    ROME/MEMIT/AlphaEdit write a key→value association into an MLP: the key is that MLP's input at the
    subject's last token. In T5 the subject is read by the *encoder*; the decoder MLPs (the ones whose
    output feeds the answer) never see a subject token. Their only position before the answer is the
    decoder start token, whose MLP input depends on the whole prompt through cross-attention, so a key
    taken there identifies the prompt's wording, not the subject: an edit would not carry to paraphrases
    or other prompts about the subject, which is what these methods are for. Editing the *encoder* MLPs
    at the subject instead changes what cross-attention reads, not a decoder association, and the
    second-moment statistics would need decoder inputs from text that T5's span-corruption format does
    not define. Rather than run something that does not do what the method claims, we refuse.
    """
    if loaded.layout.is_encoder_decoder:
        raise ConfigError(
            f"{method} edits a decoder MLP keyed on the subject's last token, but in {loaded.name} "
            f"({loaded.layout.family}, encoder-decoder) the subject is only read by the encoder; the decoder MLPs never "
            f"see it, so a subject key does not exist there (details: lightning_edit.editors.locate.check_supported). "
            f"Use a decoder-only model, or a method without subject keys (ft-l, ft-m, ...)."
        )


# ---------------------------------------------------------------------------------------------------
# Tokens and subject positions
# ---------------------------------------------------------------------------------------------------
def subject_last_index(tokenizer, text: str, subject_start: int, subject_end: int) -> tuple[list[int], int]:
    """Token ids of ``text`` (with special tokens, as the model sees a prompt) and the index of the last
    token overlapping the character span [subject_start, subject_end)."""
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(text, return_offsets_mapping=True)
        ids, offsets = enc["input_ids"], enc["offset_mapping"]
        last = None
        for i, (a, b) in enumerate(offsets):
            if b > a and a < subject_end and b > subject_start:
                last = i
        if last is None:
            raise RequestError(f"subject span {text[subject_start:subject_end]!r} covers no token of {text!r}")
        return ids, last
    # slow tokenizers: count the tokens of the text up to the subject's end
    ids = tokenizer(text)["input_ids"]
    head = tokenizer(text[:subject_end])["input_ids"]
    n_special_end = len(tokenizer("")["input_ids"])  # e.g. an EOS the tokenizer appends
    return ids, max(0, len(head) - 1 - max(0, n_special_end - _n_leading_special(tokenizer)))


def _n_leading_special(tokenizer) -> int:
    ids = tokenizer("a")["input_ids"]
    return 1 if ids and ids[0] in set(tokenizer.all_special_ids) else 0


def encode_subject_texts(tokenizer, prefixes: Sequence[str], requests: Sequence[EditRequest], template: Optional[str] = None
                         ) -> tuple[list[list[int]], list[int]]:
    """Every (request, prefix) text as ids with its subject's last-token index; request-major order.

    ``template`` (e.g. "{} is a") replaces the prompt by the template filled with the subject."""
    all_ids, positions = [], []
    for r in requests:
        subject = r.require_subject("locate")
        body = template.format(subject) if template else r.prompt
        start_in_body = body.index(subject)
        for prefix in prefixes:
            text = prefix + body
            start = len(prefix) + start_in_body
            ids, pos = subject_last_index(tokenizer, text, start, start + len(subject))
            all_ids.append(ids)
            positions.append(pos)
    return all_ids, positions


# ---------------------------------------------------------------------------------------------------
# Context prefixes
# ---------------------------------------------------------------------------------------------------
@torch.no_grad()
def generate_context_prefixes(loaded: LoadedModel, n: int = 5, length: int = 10, seed: int = 0) -> list[str]:
    """``[""]`` plus ``n`` short texts sampled from the model (top-5, fixed seed), each ending in ". ".

    As in ROME/MEMIT: keys and values are averaged over these so an edit does not hinge on the prompt
    opening the text. Deterministic for a given model and seed; callers compute them once per model."""
    if n <= 0:
        return [""]
    tok, model = loaded.tokenizer, loaded.model
    seeds = [PREFIX_SEEDS[i % len(PREFIX_SEEDS)] for i in range(n)]
    out = [""]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for text in seeds:
            ids = torch.tensor([tok(text)["input_ids"]], device=loaded.device)
            for _ in range(length):
                logits = model(input_ids=ids).logits[0, -1].float()
                top = torch.topk(logits, 5)
                choice = top.indices[torch.multinomial(torch.softmax(top.values, -1), 1)]
                ids = torch.cat([ids, choice.view(1, 1)], dim=1)
            generated = tok.decode(ids[0], skip_special_tokens=True)
            out.append(generated.replace("{", " ").replace("}", " ").strip() + ". ")
    return out


# ---------------------------------------------------------------------------------------------------
# Keys
# ---------------------------------------------------------------------------------------------------
@torch.no_grad()
def subject_keys_and_outputs(
    loaded: LoadedModel,
    requests: Sequence[EditRequest],
    key_layers: Sequence[int],
    prefixes: Sequence[str],
    output_modules: Sequence[str] = (),
    batch_size: int = 64,
) -> tuple[dict[int, torch.Tensor], dict[str, torch.Tensor]]:
    """Keys (mlp_out inputs at the subject's last token) per layer, shape (n, n_prefixes, d_in) (row 0: the
    plain prompt when ``prefixes[0] == ""``; ROME/MEMIT average over the prefixes),
    and the outputs of ``output_modules`` at the subject's last token of the plain prompt, shape (n, d).

    One forward per batch of texts, stopped after the deepest module needed."""
    layout, model = loaded.layout, loaded.model
    key_names = {layer: layout.mlp_out.format(layer) for layer in key_layers}
    names = list(dict.fromkeys(list(key_names.values()) + list(output_modules)))
    deepest = max(names, key=lambda n: _module_order(model, n))
    # a module finishes after its children: stop after the outermost listed ancestor of the last one
    ancestors = [n for n in names if deepest.startswith(n + ".")]
    if ancestors:
        deepest = min(ancestors, key=len)
    rows, positions = encode_subject_texts(loaded.tokenizer, prefixes, requests)
    n_pref = len(prefixes)
    keys: dict[int, list[torch.Tensor]] = {layer: [] for layer in key_layers}
    outs: dict[str, list[torch.Tensor]] = {name: [] for name in output_modules}
    plain_rows = [i * n_pref for i in range(len(requests))]  # prefixes[0] is "" (the plain prompt)
    with trace(model, names, keep_input=True, keep_output=True, stop_after=deepest) as tr:
        for start in range(0, len(rows), batch_size):
            idx = list(range(start, min(start + batch_size, len(rows))))
            ids, mask = pad_right([rows[i] for i in idx], pad_token_id(loaded.tokenizer), loaded.device)
            run_until(lambda: model(input_ids=ids, attention_mask=mask, use_cache=False))
            pos = torch.tensor([positions[i] for i in idx], device=loaded.device)
            ar = torch.arange(len(idx), device=loaded.device)
            for layer, name in key_names.items():
                keys[layer].append(tr[name].input[ar, pos].float())
            for name in output_modules:
                outs[name].append(tr[name].output[ar, pos].float())
    key_out = {layer: torch.cat(v).view(len(requests), n_pref, -1) for layer, v in keys.items()}
    out_out = {}
    for name, v in outs.items():
        full = torch.cat(v)
        out_out[name] = full[plain_rows]
    return key_out, out_out


def _module_order(model: torch.nn.Module, name: str) -> int:
    for i, (n, _) in enumerate(model.named_modules()):
        if n == name:
            return i
    raise ConfigError(f"module {name} not found in the model")


# ---------------------------------------------------------------------------------------------------
# Values
# ---------------------------------------------------------------------------------------------------
@dataclass
class ValueHParams:
    """The value-optimisation settings (ROME's ``v_*`` hyperparameters)."""

    steps: int = 20
    lr: float = 0.5
    weight_decay: float = 0.5
    clamp_norm_factor: float = 4.0
    kl_factor: float = 0.0625
    early_stop_loss: float = 0.05
    early_stop_prob: Optional[float] = None  # also stop once mean P(target token) on the edit prompt exceeds this
    tokens_per_pass: int = 1024  # rows are run in length-sorted passes of at most this many padded tokens


@dataclass
class ValueResult:
    targets: torch.Tensor  # (n, d): wanted output at the site (initial output + delta)
    initial: torch.Tensor  # (n, d): output before optimisation
    steps_run: list[int] = field(default_factory=list)
    final_loss: list[float] = field(default_factory=list)


def _final_hidden_and_logits(loaded: LoadedModel):
    """A function running the model to the final norm only and a function turning hidden states into
    logits, so the vocabulary projection is paid only at the positions scored."""
    layout, model = loaded.layout, loaded.model
    final_norm = layout.final_norm
    lm_head = layout.module(model, layout.lm_head)
    cap = getattr(model.config, "final_logit_softcapping", None)

    def to_logits(hidden: torch.Tensor) -> torch.Tensor:
        logits = lm_head(hidden).float()
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits

    @contextlib.contextmanager
    def hidden_of() -> Iterator:
        with trace(model, [final_norm], detach=False, stop_after=final_norm) as tr:
            def run(**inputs):
                run_until(lambda: model(**inputs))
                return tr[final_norm].output
            yield run

    return hidden_of, to_logits


class PrefixCache:
    """Each row's tokens before its edit position, run once (no grad) into a key/value cache.

    A vector added at a row's subject position changes nothing before it (causal attention), so every
    optimisation step needs to run only the tokens from that position on, against this cache: with a
    10-token context prefix and the subject early in the prompt, most tokens of a row are never rerun.
    The cached parts are left-padded, so each row's cached tokens end right before its suffix (sliding-window
    layers see the same distances as in a full pass); positions are passed explicitly.
    """

    def __init__(self, loaded: LoadedModel, rows: Sequence[Sequence[int]], split: Sequence[int]):
        from transformers import DynamicCache

        self._cache_cls = DynamicCache
        self.model, self.device = loaded.model, loaded.device
        self.cache_arg = cache_argument(loaded.model)
        pad = pad_token_id(loaded.tokenizer)
        split_t = torch.tensor(list(split), dtype=torch.long)
        self.suffix_ids, self.suffix_mask = pad_right([list(r)[s:] for r, s in zip(rows, split)], pad, self.device)
        width = self.suffix_ids.shape[1]
        self.suffix_pos = (split_t[:, None] + torch.arange(width)[None]).to(self.device)
        self.past_width = int(split_t.max())
        self.layers: list[tuple[torch.Tensor, torch.Tensor]] = []
        if self.past_width == 0:
            return
        n_pad = self.past_width - split_t
        past_ids = torch.full((len(rows), self.past_width), pad, dtype=torch.long)
        for i, (r, s) in enumerate(zip(rows, split)):
            past_ids[i, self.past_width - s:] = torch.tensor(list(r)[:s], dtype=torch.long)
        cols = torch.arange(self.past_width)[None]
        self.past_mask = (cols >= n_pad[:, None]).long().to(self.device)
        past_pos = (cols - n_pad[:, None]).clamp_min(0).to(self.device)
        cache = DynamicCache()  # every layer keeps every cached token (a sliding-window layer would crop them)
        final_norm = loaded.layout.final_norm
        with torch.no_grad(), trace(loaded.model, [final_norm], stop_after=final_norm):
            run_until(lambda: loaded.model(input_ids=past_ids.to(self.device), attention_mask=self.past_mask,
                                           position_ids=past_pos, use_cache=True, **{self.cache_arg: cache}))
        self.layers = [(layer.keys, layer.values) for layer in cache.layers]

    def inputs(self, rows: torch.Tensor) -> dict:
        """Forward arguments running the suffixes of ``rows`` (indices into the rows given at construction)."""
        mask = self.suffix_mask[rows]
        width = int(mask.sum(1).max())
        args = {"input_ids": self.suffix_ids[rows, :width], "position_ids": self.suffix_pos[rows, :width]}
        if not self.layers:
            return {**args, "attention_mask": mask[:, :width], "use_cache": False}
        cache = self._cache_cls()
        for i, (keys, values) in enumerate(self.layers):
            cache.update(keys[rows], values[rows], i)
        full_mask = torch.cat([self.past_mask[rows], mask[:, :width]], dim=1)
        return {**args, "attention_mask": full_mask, "use_cache": True, self.cache_arg: cache}


def _output_width(model: torch.nn.Module, name: str) -> int:
    """Width of the output of module ``name`` (a linear layer's out_features, else the model's hidden size)."""
    module = model.get_submodule(name)
    for attr in ("out_features", "nf"):  # nn.Linear, GPT-2's Conv1D
        if hasattr(module, attr):
            return int(getattr(module, attr))
    return int(model.config.get_text_config().hidden_size)


def _length_buckets(rows: torch.Tensor, lengths: torch.Tensor, tokens_per_pass: int) -> list[torch.Tensor]:
    """``rows`` sorted by length and cut into passes of at most ``tokens_per_pass`` padded tokens (at least one row
    each): rows of similar length share a pass, so little is spent on padding."""
    order = rows[torch.argsort(lengths[rows], stable=True)]
    chunks, start = [], 0
    for end in range(1, order.numel() + 1):
        width = int(lengths[order[end - 1]])
        if end - start > 1 and (end - start) * width > tokens_per_pass:
            chunks.append(order[start: end - 1])
            start = end - 1
    chunks.append(order[start:])
    return chunks


def optimise_values(
    loaded: LoadedModel,
    requests: Sequence[EditRequest],
    site: str,
    prefixes: Sequence[str],
    hp: ValueHParams,
) -> ValueResult:
    """For each request, a vector added at the subject's last token to the output of module ``site`` so
    that every ``prefix + prompt`` continues with ``target_new`` (ROME's compute_v / MEMIT's compute_z).

    Requests are optimised together (one delta each, independent losses); a request that reaches the
    early-stop criterion leaves the batch."""
    tok, model, device = loaded.tokenizer, loaded.model, loaded.device
    module = model.get_submodule(site)
    n_req, n_pref = len(requests), len(prefixes)

    # rows: per request, n_pref rewriting rows (prefix + prompt + target[:-1]) and one KL row.
    rewrite_ids, rewrite_pos = encode_subject_texts(tok, prefixes, requests)
    kl_ids, kl_pos = encode_subject_texts(tok, [""], requests, template=KL_TEMPLATE)
    targets = [target_ids(tok, r.target_new) for r in requests]
    rows, sub_pos, owner = [], [], []
    score_rows, score_pos, score_tok, score_owner = [], [], [], []  # flattened target-token predictions
    kl_rows = []
    for i in range(n_req):
        for j in range(n_pref):
            k = i * n_pref + j
            prompt = rewrite_ids[k]
            row = len(rows)
            rows.append(prompt + targets[i][:-1])
            sub_pos.append(rewrite_pos[k])
            owner.append(i)
            for t, tid in enumerate(targets[i]):
                score_rows.append(row)
                score_pos.append(len(prompt) - 1 + t)
                score_tok.append(tid)
                score_owner.append((i, j, len(targets[i])))
        kl_rows.append(len(rows))
        rows.append(kl_ids[i])
        sub_pos.append(kl_pos[i])
        owner.append(i)
    # Tokens before each row's subject position are run once into a cache; steps run only the rest.
    prefix = PrefixCache(loaded, rows, sub_pos)
    owner_t = torch.tensor(owner, device=device)
    score_rows_t = torch.tensor(score_rows, device=device)
    score_pos_t = torch.tensor(score_pos, device=device) - torch.tensor(sub_pos, device=device)[score_rows_t]
    score_tok_t = torch.tensor(score_tok, device=device)
    # weight of each scored token: mean over the target's tokens, then mean over prefixes (ROME)
    score_w = torch.tensor([1.0 / (n_tok * n_pref) for (_, _, n_tok) in score_owner], device=device)
    score_req = torch.tensor([i for (i, _, _) in score_owner], device=device)
    kl_rows_t = torch.tensor(kl_rows, device=device)
    kl_last = prefix.suffix_mask.sum(1) - 1  # per row: its last real suffix token
    plain_rows_t = torch.tensor([i * (n_pref + 1) for i in range(n_req)], device=device)

    hidden_of, to_logits = _final_hidden_and_logits(loaded)

    d_site = _output_width(model, site)
    delta = torch.zeros(n_req, d_site, device=device, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=hp.lr)
    # Step 0 runs with delta = 0: it gives the site's initial output (plain prompt = prefix 0, the subject being
    # each suffix's first token) and the KL reference, so no separate pass is needed.
    initial = torch.zeros(n_req, d_site, device=device)
    kl_ref: Optional[torch.Tensor] = None
    max_norm = init_norm_sq = None
    suffix_len = prefix.suffix_mask.sum(1)
    score_of_row = [[] for _ in rows]  # indices into the flattened scored tokens, per row
    for e, r in enumerate(score_rows):
        score_of_row[r].append(e)
    is_plain = torch.zeros(len(rows), dtype=torch.bool, device=device)
    is_plain[plain_rows_t] = True
    kl_slot = torch.full((len(rows),), -1, dtype=torch.long, device=device)
    kl_slot[kl_rows_t] = torch.arange(n_req, device=device)
    active = torch.ones(n_req, dtype=torch.bool, device=device)
    steps_run = [0] * n_req
    final_loss = [float("nan")] * n_req

    for step in range(hp.steps):
        act_idx = active.nonzero().flatten()
        if act_idx.numel() == 0:
            break
        row_sel = torch.isin(owner_t, act_idx).nonzero().flatten()
        chunks = _length_buckets(row_sel, suffix_len, hp.tokens_per_pass)
        last_step = step == hp.steps - 1
        opt.zero_grad(set_to_none=True)
        nll = torch.zeros(n_req, device=device)
        kl = torch.zeros(n_req, device=device)
        single_loss: Optional[torch.Tensor] = None  # one chunk: its backward waits for the early-stop decision
        for chunk in chunks:
            chunk_owner = owner_t[chunk]

            def add_delta(out: torch.Tensor, chunk_owner=chunk_owner) -> torch.Tensor:
                out = out.clone()
                out[:, 0] = out[:, 0] + delta[chunk_owner].to(out.dtype)
                return out

            record_site = trace(model, [site]) if step == 0 else contextlib.nullcontext()
            with edit_output(module, add_delta), record_site as site_trace, hidden_of() as run:
                hidden = run(**prefix.inputs(chunk))
            pos_in_chunk = {int(r): i for i, r in enumerate(chunk.tolist())}
            entries = [e for r in chunk.tolist() for e in score_of_row[r]]
            entries_t = torch.tensor(entries, dtype=torch.long, device=device)
            h = hidden[torch.tensor([pos_in_chunk[score_rows[e]] for e in entries], dtype=torch.long, device=device),
                       score_pos_t[entries_t]]
            chunk_kl_rows = chunk[kl_slot[chunk] >= 0]
            kl_req = kl_slot[chunk_kl_rows]
            kl_h = hidden[torch.tensor([pos_in_chunk[int(r)] for r in chunk_kl_rows.tolist()], dtype=torch.long, device=device),
                          kl_last[chunk_kl_rows]]
            # one vocabulary projection per chunk: the LM head is the largest matrix read
            logp = torch.log_softmax(to_logits(torch.cat([h, kl_h])), -1)
            logp, kl_logp = logp[: h.shape[0]], logp[h.shape[0]:]
            if step == 0:  # delta is 0: record the initial output and the KL reference
                plain_in_chunk = chunk[is_plain[chunk]]
                site_out = site_trace[site].output
                at = torch.tensor([pos_in_chunk[int(r)] for r in plain_in_chunk.tolist()], dtype=torch.long, device=device)
                initial[owner_t[plain_in_chunk]] = site_out[at, 0].float()
                if kl_ref is None:
                    kl_ref = torch.zeros(n_req, kl_logp.shape[-1], device=device)
                kl_ref[kl_req] = kl_logp.detach()
            tok_logp = logp.gather(-1, score_tok_t[entries_t, None]).squeeze(-1)
            chunk_nll = torch.zeros(n_req, device=device).index_add(0, score_req[entries_t], -tok_logp * score_w[entries_t])
            chunk_kl = torch.zeros(n_req, device=device).index_add(
                0, kl_req, torch.nn.functional.kl_div(kl_logp, kl_ref[kl_req], log_target=True, reduction="none").sum(-1))
            nll = nll + chunk_nll.detach()
            kl = kl + chunk_kl.detach()
            chunk_loss = chunk_nll + hp.kl_factor * chunk_kl
            if len(chunks) == 1:
                single_loss = chunk_loss
            elif not last_step:
                chunk_loss.sum().backward()  # frees this chunk's graph; rows of one request add up in delta.grad
        if step == 0:
            max_norm = hp.clamp_norm_factor * initial.norm(dim=-1)  # (n,)
            init_norm_sq = initial.norm(dim=-1) ** 2
        wd = hp.weight_decay * delta.norm(dim=-1) / init_norm_sq
        loss_each = (nll + hp.kl_factor * kl + wd.detach())[act_idx]
        for a, li in zip(act_idx.tolist(), loss_each.tolist()):
            steps_run[a] = step + 1
            final_loss[a] = li
        if log.isEnabledFor(logging.DEBUG):
            log.debug("value step %d: nll %s", step, [round(x, 3) for x in nll[act_idx].tolist()])
        # ROME's early stop: the NLL (averaged over prefixes) is small enough.
        done = nll[act_idx] < hp.early_stop_loss
        if hp.early_stop_prob is not None:
            done |= torch.exp(-nll[act_idx]) > hp.early_stop_prob
        active[act_idx[done]] = False
        if last_step or not active.any():
            break
        keep = active.float()
        if single_loss is not None:
            (single_loss * keep).sum().backward()
        (wd * keep).sum().backward()
        frozen = delta.detach()[~active].clone()
        opt.step()
        with torch.no_grad():
            delta[~active] = frozen  # Adam's momentum must not move a finished request's vector
            norms = delta.norm(dim=-1)
            scale = torch.where(norms > max_norm, max_norm / norms.clamp_min(1e-12), torch.ones_like(norms))
            delta.mul_(scale[:, None])
    with torch.no_grad():
        return ValueResult(targets=(initial + delta).detach(), initial=initial, steps_run=steps_run, final_loss=final_loss)


# ---------------------------------------------------------------------------------------------------
# Base editor: hyperparameters and per-model one-off resources
# ---------------------------------------------------------------------------------------------------
@dataclass
class LocateHyperParams(HyperParams):
    layers: list[int] = field(default_factory=lambda: [4])  # negative: counted from the last block
    context_prefixes: int = 5  # generated prefixes (besides the plain prompt) for keys and values
    context_length: int = 10  # tokens per prefix
    v_num_grad_steps: int = 20
    v_lr: float = 0.5
    v_weight_decay: float = 0.5
    clamp_norm_factor: float = 4.0
    kl_factor: float = 0.0625
    v_early_stop_loss: float = 0.05
    v_early_stop_prob: Optional[float] = None
    mom2_n_tokens: int = DEFAULT_TOKENS
    stats_text: Optional[str] = None  # text file for the statistics (default: WikiText-2 test)
    stats_dir: Optional[str] = None  # cache root (default: $LIGHTNING_EDIT_CACHE or checkpoints/)
    stats_seq_len: int = 256
    stats_batch_size: int = 4
    progress: bool = True

    def validate(self) -> None:
        if not self.layers:
            raise ConfigError("field 'layers' is empty; name the block(s) to edit")
        if self.context_prefixes < 0 or self.context_length < 1:
            raise ConfigError("fields 'context_prefixes' (≥0) and 'context_length' (≥1) are out of range")
        if self.v_num_grad_steps < 1 or self.v_lr <= 0:
            raise ConfigError("fields 'v_num_grad_steps' (≥1) and 'v_lr' (>0) must be positive")
        if self.clamp_norm_factor <= 0 or self.kl_factor < 0 or self.v_weight_decay < 0:
            raise ConfigError("fields 'clamp_norm_factor' (>0), 'kl_factor' (≥0), 'v_weight_decay' (≥0) are out of range")
        if self.mom2_n_tokens < 1:
            raise ConfigError("field 'mom2_n_tokens' must be ≥ 1")

    def value_hparams(self) -> ValueHParams:
        return ValueHParams(steps=self.v_num_grad_steps, lr=self.v_lr, weight_decay=self.v_weight_decay,
                            clamp_norm_factor=self.clamp_norm_factor, kl_factor=self.kl_factor,
                            early_stop_loss=self.v_early_stop_loss, early_stop_prob=self.v_early_stop_prob)


@dataclass
class ModelResources:
    """What an editor computes once per model: context prefixes and per-layer statistics (and what the
    method derives from them, e.g. an inverse or a projection)."""

    prefixes: list[str]
    mom2: dict[int, torch.Tensor] = field(default_factory=dict)
    derived: dict = field(default_factory=dict)


class LocateEditor(Editor):
    """Common parts of ROME, MEMIT and AlphaEdit: layer resolution, prefixes and statistics (``prepare``)."""

    HParams = LocateHyperParams
    needs_subject = True
    uses_second_moments = True

    def __init__(self, hparams: HyperParams):
        super().__init__(hparams)
        # keyed weakly by the model object: one editor may serve several models; an entry goes with its model
        self._resources: weakref.WeakKeyDictionary[torch.nn.Module, ModelResources] = weakref.WeakKeyDictionary()

    def layers(self, loaded: LoadedModel) -> list[int]:
        return resolve_layers(self.hparams.layers, loaded.layout.num_layers(loaded.model))

    def touched_parameters(self, loaded: LoadedModel, requests: Sequence[EditRequest]) -> list[str]:
        check_supported(loaded, self.name)
        return [loaded.layout.weight_name(loaded.layout.mlp_out, i) for i in self.layers(loaded)]

    def needs_mom2(self) -> bool:
        return True

    def prepare(self, loaded: LoadedModel) -> None:
        self.resources(loaded)

    def resources(self, loaded: LoadedModel) -> ModelResources:
        check_supported(loaded, self.name)
        key = loaded.model
        if key not in self._resources:
            hp = self.hparams
            res = ModelResources(prefixes=generate_context_prefixes(loaded, hp.context_prefixes, hp.context_length, hp.seed))
            if self.needs_mom2():
                from ...stats import layer_second_moments

                res.mom2 = layer_second_moments(
                    loaded, self.layers(loaded), n_tokens=hp.mom2_n_tokens, text_path=hp.stats_text, cache_dir=hp.stats_dir,
                    seq_len=hp.stats_seq_len, batch_size=hp.stats_batch_size, progress=hp.progress)
            res.derived = self.derive(loaded, res)
            self._resources[key] = res
        return self._resources[key]

    def derive(self, loaded: LoadedModel, res: ModelResources) -> dict:
        """Per-model quantities computed from the statistics (override)."""
        return {}


def add_to_weight(loaded: LoadedModel, layer: int, update_out_in: torch.Tensor) -> None:
    """Add an (out, in) update to the mlp_out weight of ``layer``, whatever its storage (GPT-2's Conv1D is (in, out))."""
    module = loaded.layout.mlp_out_module(loaded.model, layer)
    weight = loaded.layout.linear_weight(module)
    add_update(weight, update_out_in)  # computed in float32 whatever the weight's dtype, rounded once
