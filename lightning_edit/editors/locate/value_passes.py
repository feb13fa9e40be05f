"""Beneath value optimisation (``values.py``): which rows one optimisation runs, and how a step runs them.

- ``ValueRows``: the index bookkeeping. Per request, one rewriting row per context prefix (prefix + prompt + target
  without its last token) and one essence row ("{subject} is a"); which of their positions are scored, for which
  request and with which weight; where a pass over some of the rows finds them (``ValueRows.index``);
- ``ValuePasses``: the rows of a step run in length buckets (``length_buckets``) from each row's subject position on,
  against the prefix key/value cache (``PrefixCache``), δ added at that position; later steps replay only the blocks
  from the site's on (``BlockReplay``); one vocabulary projection per pass, at the scored positions only.

None of it changes what is computed, only how fast and in how much memory.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import torch

from ...hooks import edit_output, trace
from ...models.loading import LoadedModel
from ...models.teacher_forcing import target_ids
from ...requests import EditRequest
from .batching import BlockReplay, PrefixCache, ReplayCheck, final_hidden_and_logits, length_buckets, output_width
from .keys import encode_subject_texts

# (row within a pass, position from the row's subject token): where a pass's hidden states hold a scored position
PassPositions = tuple[torch.Tensor, torch.Tensor]


@dataclass
class PassIndex:
    """What one pass over some rows scores, its rows numbered by their place in the pass."""

    target_at: PassPositions  # each scored target token's predicting position
    target_token: torch.Tensor  # the token's id
    target_weight: torch.Tensor  # 1 / (target tokens × prefixes): the NLL is a mean over prefixes of means over tokens
    target_request: torch.Tensor
    essence_at: PassPositions  # each essence row's last token
    essence_request: torch.Tensor
    plain_row: torch.Tensor  # rows of the pass holding a request's plain prompt (prefix 0), where m is read
    plain_request: torch.Tensor


@dataclass
class ValueRows:
    """The rows of one optimisation and their scored positions (flattened over every row's target tokens)."""

    ids: list[list[int]]
    subject_pos: list[int]  # where δ is added: the subject's last token
    owner: torch.Tensor  # (rows,): each row's request
    target_row: list[int]  # per scored token: its row ...
    target_pos: torch.Tensor  # ... the position predicting it, counted from the row's subject position ...
    target_token: torch.Tensor  # ... the token ...
    target_weight: torch.Tensor
    target_request: torch.Tensor
    targets_of_row: list[list[int]]  # per row: its scored tokens (indices into the flattened lists)
    essence_request: torch.Tensor  # (rows,): the request of an essence row, −1 for a rewriting row
    is_plain: torch.Tensor  # (rows,): the rewriting row of prefix 0
    last_pos: torch.Tensor  # (rows,): each row's last token, counted from its subject position

    @classmethod
    def build(cls, tokenizer, requests: Sequence[EditRequest], prefixes: Sequence[str], essence_template: str,
              device: torch.device) -> "ValueRows":
        n_pref = len(prefixes)
        rewrite_ids, rewrite_pos = encode_subject_texts(tokenizer, prefixes, requests)
        essence_ids, essence_pos = encode_subject_texts(tokenizer, [""], requests, template=essence_template)
        ids, subject_pos, owner, essence_rows = [], [], [], []
        scored: list[tuple[int, int, int, float, int]] = []  # row, position in the row, token, weight, request
        for i, request in enumerate(requests):
            target = target_ids(tokenizer, request.target_new)
            for j in range(n_pref):
                prompt = rewrite_ids[i * n_pref + j]
                scored += [(len(ids), len(prompt) - 1 + t, token, 1.0 / (len(target) * n_pref), i) for t, token in enumerate(target)]
                ids.append(prompt + target[:-1])
                subject_pos.append(rewrite_pos[i * n_pref + j])
                owner.append(i)
            essence_rows.append(len(ids))
            ids.append(essence_ids[i])
            subject_pos.append(essence_pos[i])
            owner.append(i)
        return cls._indexed(ids, subject_pos, owner, essence_rows, scored, n_pref, device)

    @classmethod
    def _indexed(cls, ids, subject_pos, owner, essence_rows, scored, n_pref: int, device) -> "ValueRows":
        """The index tensors of ``build``'s lists."""
        n_rows, n_req = len(ids), len(essence_rows)
        targets_of_row: list[list[int]] = [[] for _ in ids]
        for e, (row, *_rest) in enumerate(scored):
            targets_of_row[row].append(e)
        essence_request = torch.full((n_rows,), -1, dtype=torch.long, device=device)
        essence_request[torch.tensor(essence_rows, device=device)] = torch.arange(n_req, device=device)
        is_plain = torch.zeros(n_rows, dtype=torch.bool, device=device)
        is_plain[torch.tensor([i * (n_pref + 1) for i in range(n_req)], device=device)] = True
        return cls(
            ids=ids, subject_pos=subject_pos, owner=torch.tensor(owner, device=device),
            target_row=[s[0] for s in scored],
            target_pos=torch.tensor([pos - subject_pos[row] for row, pos, *_ in scored], device=device),
            target_token=torch.tensor([s[2] for s in scored], device=device),
            target_weight=torch.tensor([s[3] for s in scored], device=device),
            target_request=torch.tensor([s[4] for s in scored], device=device),
            targets_of_row=targets_of_row, essence_request=essence_request, is_plain=is_plain,
            last_pos=torch.tensor([len(r) - s - 1 for r, s in zip(ids, subject_pos)], device=device))

    def index(self, rows: torch.Tensor) -> PassIndex:
        """Where a pass over ``rows`` (in this order) finds what is scored."""
        device = rows.device
        place = {r: i for i, r in enumerate(rows.tolist())}

        def places(of_rows: Sequence[int]) -> torch.Tensor:
            return torch.tensor([place[r] for r in of_rows], dtype=torch.long, device=device)

        targets = [e for r in rows.tolist() for e in self.targets_of_row[r]]
        entries = torch.tensor(targets, dtype=torch.long, device=device)
        essence = rows[self.essence_request[rows] >= 0]
        plain = rows[self.is_plain[rows]]
        return PassIndex(
            target_at=(places([self.target_row[e] for e in targets]), self.target_pos[entries]),
            target_token=self.target_token[entries], target_weight=self.target_weight[entries],
            target_request=self.target_request[entries],
            essence_at=(places(essence.tolist()), self.last_pos[essence]), essence_request=self.essence_request[essence],
            plain_row=places(plain.tolist()), plain_request=self.owner[plain])


class ValuePasses:
    """How the rows of ``ValueRows`` are run with a δ added at the output of each module of ``sites``.

    ``replay_check`` (the editor's, per model): steps after a pass's first replay only the blocks from the lowest
    site's on (``BlockReplay``); without it every step runs the whole model (from the cached prefixes on)."""

    def __init__(self, loaded: LoadedModel, sites: Sequence[str], rows: ValueRows, tokens_per_pass: int,
                 replay_check: Optional[ReplayCheck] = None):
        self.model, self.sites, self.rows = loaded.model, list(sites), rows
        self.modules = [loaded.model.get_submodule(site) for site in self.sites]
        self.widths = [output_width(loaded.model, site) for site in self.sites]
        self.tokens_per_pass = tokens_per_pass
        # tokens before each row's subject position are run once into a cache; steps run only the rest
        self.prefix = PrefixCache(loaded, rows.ids, rows.subject_pos)
        self.suffix_len = self.prefix.suffix_mask.sum(1)
        self.hidden_of, self.to_logits = final_hidden_and_logits(loaded)
        self.replay = BlockReplay(loaded, self.modules, replay_check) if replay_check is not None else None

    def buckets(self, requests: torch.Tensor) -> list[torch.Tensor]:
        """The rows of ``requests``, cut into passes of similar length (records of other passes are dropped)."""
        rows = torch.isin(self.rows.owner, requests).nonzero().flatten()
        passes = length_buckets(rows, self.suffix_len, self.tokens_per_pass)
        if self.replay is not None:
            self.replay.keep_only(passes)
        return passes

    def hidden(self, rows: torch.Tensor, deltas: Sequence[torch.Tensor], first: bool
               ) -> tuple[torch.Tensor, Optional[list[torch.Tensor]]]:
        """The final norm's output over ``rows`` (from each row's subject position on) with its request's δ added at
        each site's output at that position; on the ``first`` step (δ = 0) also each site's output there."""
        replay = self.replay
        if not first and replay is not None and replay.has(rows):
            with self._adding(rows, deltas):
                return replay.run(rows, self.prefix.inputs(rows)), None
        record_sites = trace(self.model, self.sites) if first else contextlib.nullcontext()
        recording = replay.recording(rows) if replay is not None else contextlib.nullcontext()
        with self._adding(rows, deltas), record_sites as site_trace, recording, self.hidden_of() as run:
            hidden = run(**self.prefix.inputs(rows))
        if replay is not None and replay.unchecked:  # once per model: its inputs cost a cache copy
            with self._adding(rows, deltas):
                replay.verify(rows, self.prefix.inputs(rows), hidden)
        return hidden, ([site_trace[site].output for site in self.sites] if first else None)

    @contextlib.contextmanager
    def _adding(self, rows: torch.Tensor, deltas: Sequence[torch.Tensor]) -> Iterator[None]:
        """Each site's output gets its request's δ at the first position (the subject's last token) of each row."""
        row_request = self.rows.owner[rows]

        def add(delta: torch.Tensor):
            def add_delta(out: torch.Tensor) -> torch.Tensor:
                out = out.clone()
                out[:, 0] = out[:, 0] + delta[row_request].to(out.dtype)
                return out
            return add_delta

        with contextlib.ExitStack() as stack:  # every hook removed on leaving, even on error
            for module, delta in zip(self.modules, deltas):
                stack.enter_context(edit_output(module, add(delta)))
            yield

    def log_probs(self, hidden: torch.Tensor, index: PassIndex) -> tuple[torch.Tensor, torch.Tensor]:
        """log P(target token) at each scored position, and the next-token log-distribution after each essence
        prompt: one vocabulary projection for both (the LM head is the largest matrix read)."""
        target_hidden, essence_hidden = hidden[index.target_at], hidden[index.essence_at]
        logp = torch.log_softmax(self.to_logits(torch.cat([target_hidden, essence_hidden])), -1)
        n_targets = target_hidden.shape[0]
        target_logp = logp[:n_targets].gather(-1, index.target_token[:, None]).squeeze(-1)
        return target_logp, logp[n_targets:]
