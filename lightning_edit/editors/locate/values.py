"""Values of the locate-then-edit methods: for each request, the vector δ added at the subject's last token to the
output of one module so that the model states the new object (ROME's ``compute_v``, MEMIT's ``compute_z``).

The loss of one request, as ROME's paper writes it (eq. 4) and its code computes it, is the sum of three terms:

    L(δ) = new_object_nll + kl_factor · essence_kl + weight_decay_term

- ``new_object_nll``: −1/P Σ_j 1/|o| Σ_t log P(o_t | x_j ⊕ prompt ⊕ o_<t ; m + δ), over the P context prefixes x_j;
- ``essence_kl``: D_KL(P(· | "{subject} is a" ; m + δ) ‖ P(· | "{subject} is a" ; m)), the subject keeps its essence;
- ``weight_decay_term``: v_weight_decay · ‖δ‖ / ‖m‖² (ROME's implementation), and ‖δ‖ is clamped to
  clamp_norm_factor · ‖m‖ after every step.

``optimise_values`` minimises it with Adam for all requests at once (one δ each, independent losses), stopping a
request once its new-object NLL is below ``early_stop_loss`` (``early_stop_on="loss"``: once the whole loss is, as
ROME's and MEMIT's code do); how rows are cached and bucketed is ``batching.py``.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch

from ...hooks import edit_output, trace
from ...models.loading import LoadedModel
from ...models.teacher_forcing import target_ids
from ...requests import EditRequest
from .batching import BlockReplay, PrefixCache, ReplayCheck, final_hidden_and_logits, length_buckets, output_width
from .keys import encode_subject_texts

log = logging.getLogger(__name__)

KL_TEMPLATE = "{} is a"  # ROME's "essence" prompt


@dataclass
class ValueHParams:
    """The value-optimisation settings (ROME's ``v_*`` hyperparameters)."""

    steps: int = 20
    lr: float = 0.5
    weight_decay: float = 0.5
    clamp_norm_factor: float = 4.0
    kl_factor: float = 0.0625
    early_stop_loss: float = 0.05
    # what must fall below early_stop_loss: "nll", the new-object NLL alone, or "loss", the whole L(δ) (ROME's and
    # MEMIT's code, EasyEdit). MEMIT, 20 CounterFact records in one batch on smollm2: the same scores either way, 23%
    # more time with "loss" (bench/bench_memit_quality.py), hence "nll"
    early_stop_on: str = "nll"
    early_stop_prob: Optional[float] = None  # also stop once mean P(target token) on the edit prompt exceeds this
    tokens_per_pass: int = 1024  # rows are run in length-sorted passes of at most this many padded tokens


@dataclass
class ValueResult:
    targets: torch.Tensor  # (n, d): wanted output at the site (initial output + delta)
    initial: torch.Tensor  # (n, d): output before optimisation
    steps_run: list[int] = field(default_factory=list)
    final_loss: list[float] = field(default_factory=list)

# ---- the three terms of one request's loss (tensors hold one entry per request) ----------------------------------
def new_object_nll(token_logprob: torch.Tensor, token_weight: torch.Tensor, token_request: torch.Tensor, n_requests: int) -> torch.Tensor:
    """−Σ weight · log P(target token), summed per request; each weight is 1/(target tokens × prefixes), so the sum
    is the mean over prefixes of the mean over the target's tokens."""
    return torch.zeros(n_requests, device=token_logprob.device).index_add(0, token_request, -token_logprob * token_weight)


def essence_kl(logprob: torch.Tensor, reference: torch.Tensor, row_request: torch.Tensor, n_requests: int) -> torch.Tensor:
    """KL(edited ‖ unedited) of the next-token distribution after "{subject} is a", per request."""
    kl = torch.nn.functional.kl_div(logprob, reference, log_target=True, reduction="none").sum(-1)
    return torch.zeros(n_requests, device=logprob.device).index_add(0, row_request, kl)


def weight_decay_term(delta: torch.Tensor, initial_norm_sq: torch.Tensor, factor: float) -> torch.Tensor:
    """factor · ‖δ‖ / ‖m‖², per request (ROME's code; its paper writes the decay on ‖δ‖)."""
    return factor * delta.norm(dim=-1) / initial_norm_sq


def optimise_values(
    loaded: LoadedModel,
    requests: Sequence[EditRequest],
    site: str,
    prefixes: Sequence[str],
    hp: ValueHParams,
    replay_check: Optional[ReplayCheck] = None,
) -> ValueResult:
    """For each request, a vector added at the subject's last token to the output of module ``site`` so
    that every ``prefix + prompt`` continues with ``target_new`` (ROME's compute_v / MEMIT's compute_z).

    Requests are optimised together (one delta each, independent losses); a request that reaches the
    early-stop criterion leaves the batch. ``replay_check`` (the editor's, per model): later steps run only the
    blocks from the site's on (``BlockReplay``); without it every step runs the whole model."""
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

    hidden_of, to_logits = final_hidden_and_logits(loaded)
    replay = BlockReplay(loaded, module, replay_check) if replay_check is not None else None

    d_site = output_width(model, site)
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
        chunks = length_buckets(row_sel, suffix_len, hp.tokens_per_pass)
        if replay is not None:
            replay.keep_only(chunks)
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

            if step > 0 and replay is not None and replay.has(chunk):
                with edit_output(module, add_delta):
                    hidden = replay.run(chunk, prefix.inputs(chunk))
            else:
                record_site = trace(model, [site]) if step == 0 else contextlib.nullcontext()
                recording = replay.recording(chunk) if replay is not None else contextlib.nullcontext()
                with edit_output(module, add_delta), record_site as site_trace, recording, hidden_of() as run:
                    hidden = run(**prefix.inputs(chunk))
                if replay is not None and replay.unchecked:  # once per model: its inputs cost a cache copy
                    with edit_output(module, add_delta):
                        replay.verify(chunk, prefix.inputs(chunk), hidden)
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
            chunk_nll = new_object_nll(tok_logp, score_w[entries_t], score_req[entries_t], n_req)
            chunk_kl = essence_kl(kl_logp, kl_ref[kl_req], kl_req, n_req)
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
        wd = weight_decay_term(delta, init_norm_sq, hp.weight_decay)
        total = nll + hp.kl_factor * kl + wd.detach()
        for a, li in zip(act_idx.tolist(), total[act_idx].tolist()):
            steps_run[a] = step + 1
            final_loss[a] = li
        if log.isEnabledFor(logging.DEBUG):
            log.debug("value step %d: nll %s", step, [round(x, 3) for x in nll[act_idx].tolist()])
        # Early stop: the NLL term (or, with early_stop_on="loss", the whole loss) is small enough.
        done = (total if hp.early_stop_on == "loss" else nll)[act_idx] < hp.early_stop_loss
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
