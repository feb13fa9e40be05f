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
ROME's and MEMIT's code do). ``optimise_site_values`` does the same with a δ at each of several sites at once (PMET's
compute_zs: the attention and the MLP output of one block); its loss has one weight-decay term per site and each δ is
clamped by its own site's ‖m‖. This module is the loss and the optimisation; which rows are run and how (length
buckets, the prefix cache, block replay) is ``value_passes.py`` over ``batching.py``.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import operator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional, Sequence

import torch

from ...models.loading import LoadedModel
from ...requests import EditRequest
from .batching import ReplayCheck
from .value_passes import PassIndex, ValuePasses, ValueRows

if TYPE_CHECKING:
    from ..base import HyperParams

log = logging.getLogger(__name__)

KL_TEMPLATE = "{} is a"  # ROME's "essence" prompt


@dataclass
class ValueHParams:
    """The value-optimisation settings under short names. They are declared and defaulted once, as fields of the
    method's hyperparameters (``LocateHyperParams``, named in ``HPARAM_FIELDS``): build them with ``from_hparams``."""

    steps: int
    lr: float
    weight_decay: float
    clamp_norm_factor: float
    kl_factor: float
    early_stop_loss: float
    early_stop_on: str  # "nll": the new-object NLL must fall below early_stop_loss; "loss": the whole L(δ)
    early_stop_prob: Optional[float]  # also stop once exp(−NLL) exceeds this
    tokens_per_pass: int  # rows are run in length-sorted passes of at most this many padded tokens

    @classmethod
    def from_hparams(cls, hp: "HyperParams", **changes) -> "ValueHParams":  # a LocateHyperParams (common.py)
        """The settings ``hp`` holds, with ``changes`` (short names) on top."""
        return dataclasses.replace(cls(**{name: getattr(hp, hp_name) for name, hp_name in HPARAM_FIELDS.items()}), **changes)


HPARAM_FIELDS = {  # ValueHParams' field → the hyperparameter field it is read from
    "steps": "v_num_grad_steps", "lr": "v_lr", "weight_decay": "v_weight_decay", "clamp_norm_factor": "clamp_norm_factor",
    "kl_factor": "kl_factor", "early_stop_loss": "v_early_stop_loss", "early_stop_on": "v_early_stop_on",
    "early_stop_prob": "v_early_stop_prob", "tokens_per_pass": "v_tokens_per_pass",
}


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


def weight_decay_terms(deltas: Sequence[torch.Tensor], initial_norms_sq: Sequence[torch.Tensor], factor: float
                       ) -> torch.Tensor:
    """Σ over sites of factor · ‖δ_s‖ / ‖m_s‖², per request (PMET's code sums the attention and MLP terms)."""
    terms = [weight_decay_term(d, m, factor) for d, m in zip(deltas, initial_norms_sq)]
    return functools.reduce(operator.add, terms)  # one site: its term itself


# ---- on top: the optimisation of L(δ); the pieces it calls are below -----------------------------------------------
def optimise_values(
    loaded: LoadedModel,
    requests: Sequence[EditRequest],
    site: str,
    prefixes: Sequence[str],
    hp: ValueHParams,
    replay_check: Optional[ReplayCheck] = None,
) -> ValueResult:
    """For each request, a vector δ added at the subject's last token to the output of module ``site`` so that every
    ``prefix + prompt`` continues with ``target_new`` (ROME's compute_v / MEMIT's compute_z): Adam on
    L(δ) = new_object_nll + kl_factor · essence_kl + weight_decay_term, ‖δ‖ clamped after each step.

    Requests are optimised together (one δ each, independent losses); a request that reaches the early-stop
    criterion leaves the batch. ``replay_check`` (the editor's, per model): later steps run only the blocks from the
    site's on (``BlockReplay``); without it every step runs the whole model."""
    return optimise_site_values(loaded, requests, [site], prefixes, hp, replay_check)[site]


def optimise_site_values(
    loaded: LoadedModel,
    requests: Sequence[EditRequest],
    sites: Sequence[str],
    prefixes: Sequence[str],
    hp: ValueHParams,
    replay_check: Optional[ReplayCheck] = None,
) -> dict[str, ValueResult]:
    """``optimise_values`` with one δ per request at each of ``sites`` (module names), optimised together: Adam on
    L(δ_1..δ_S) = new_object_nll + kl_factor · essence_kl + Σ_s weight_decay_term(δ_s), each ‖δ_s‖ clamped to
    clamp_norm_factor · ‖m_s‖ (PMET's compute_zs). With one site it is exactly ``optimise_values``."""
    if len(set(sites)) != len(sites) or not sites:
        raise ValueError(f"value optimisation needs distinct sites, got {list(sites)}")
    n, device = len(requests), loaded.device
    rows = ValueRows.build(loaded.tokenizer, requests, prefixes, KL_TEMPLATE, device)
    passes = ValuePasses(loaded, sites, rows, hp.tokens_per_pass, replay_check)
    deltas = [torch.zeros(n, width, device=device, requires_grad=True) for width in passes.widths]
    opt = torch.optim.Adam(deltas, lr=hp.lr)
    unedited = Unedited(initial=[torch.zeros(n, width, device=device) for width in passes.widths])  # step 0: δ = 0
    progress = Progress.start(n, device)
    for step in range(hp.steps):
        requests_left = progress.active.nonzero().flatten()
        if requests_left.numel() == 0:
            break
        last = step == hp.steps - 1
        opt.zero_grad(set_to_none=True)
        nll, kl, pending = step_terms(passes, requests_left, deltas, unedited, hp.kl_factor, step == 0, last)
        if step == 0:
            unedited.settle(hp.clamp_norm_factor)
        decay = weight_decay_terms(deltas, unedited.norm_sq, hp.weight_decay)
        loss = nll + hp.kl_factor * kl + decay.detach()
        progress.record(step, requests_left, loss)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("value step %d: nll %s", step, [round(x, 3) for x in nll[requests_left].tolist()])
        progress.active[requests_left[reached_goal(hp, nll[requests_left], loss[requests_left])]] = False
        if last or not progress.active.any():
            break
        keep = progress.active.float()
        if pending is not None:
            (pending * keep).sum().backward()
        (decay * keep).sum().backward()
        adam_step(opt, deltas, progress.active)
        for delta, max_norm in zip(deltas, unedited.max_norm):
            clamp_norms_(delta, max_norm)
    with torch.no_grad():
        return {site: ValueResult(targets=(initial + delta).detach(), initial=initial, steps_run=progress.steps_run,
                                  final_loss=progress.final_loss)
                for site, initial, delta in zip(sites, unedited.initial, deltas)}


# ---- beneath: what the unedited model gives (m, the KL reference), read on the first step ----------------------
@dataclass
class Unedited:
    """What the loss compares with, read on the first step (δ = 0): m, each site's output at the plain prompt, and
    the next-token distribution after "{subject} is a" (the KL term's reference)."""

    initial: list[torch.Tensor]  # per site: (n, d)
    essence: Optional[torch.Tensor] = None  # (n, vocabulary) log-probabilities
    norm_sq: list[torch.Tensor] = field(default_factory=list)  # per site: ‖m‖², the weight decay's scale
    max_norm: list[torch.Tensor] = field(default_factory=list)  # per site: the clamp on ‖δ‖

    def record(self, index: PassIndex, site_outputs: Sequence[torch.Tensor], essence_logp: torch.Tensor) -> None:
        """m and the reference distribution of the requests whose rows one pass of the first step ran."""
        for initial, site_output in zip(self.initial, site_outputs):
            initial[index.plain_request] = site_output[index.plain_row, 0].float()
        if self.essence is None:
            self.essence = torch.zeros(self.initial[0].shape[0], essence_logp.shape[-1], device=self.initial[0].device)
        self.essence[index.essence_request] = essence_logp.detach()

    def settle(self, clamp_norm_factor: float) -> None:
        """After the first step, every request's m is known: the clamps and the decay's scales."""
        self.max_norm = [clamp_norm_factor * initial.norm(dim=-1) for initial in self.initial]
        self.norm_sq = [initial.norm(dim=-1) ** 2 for initial in self.initial]


# ---- the loss of one step, over the rows of one pass and then over all of a step's passes -----------------------
def pass_terms(passes: ValuePasses, rows: torch.Tensor, deltas: Sequence[torch.Tensor], unedited: Unedited,
               first: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The new-object NLL and the essence KL per request over ``rows`` (one pass), with grad towards the δ's."""
    n = deltas[0].shape[0]
    index = passes.rows.index(rows)
    hidden, site_outputs = passes.hidden(rows, deltas, first)
    target_logp, essence_logp = passes.log_probs(hidden, index)
    if first:
        unedited.record(index, site_outputs, essence_logp)
    nll = new_object_nll(target_logp, index.target_weight, index.target_request, n)
    kl = essence_kl(essence_logp, unedited.essence[index.essence_request], index.essence_request, n)
    return nll, kl


def step_terms(passes: ValuePasses, requests: torch.Tensor, deltas: Sequence[torch.Tensor], unedited: Unedited,
               kl_factor: float, first: bool, last: bool) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """One step's NLL and KL per request (detached), over the rows of ``requests`` in length buckets.

    With several passes each one's NLL + KL is backpropagated as soon as it is computed, freeing its graph (a
    request's rows add up in δ's gradient), except on the ``last`` step, which only measures. With one pass, its
    loss (with grad) is returned instead, to be backpropagated once early stopping has masked finished requests."""
    n, device = deltas[0].shape[0], deltas[0].device
    nll = torch.zeros(n, device=device)
    kl = torch.zeros(n, device=device)
    buckets = passes.buckets(requests)
    pending: Optional[torch.Tensor] = None
    for rows in buckets:
        pass_nll, pass_kl = pass_terms(passes, rows, deltas, unedited, first)
        nll = nll + pass_nll.detach()
        kl = kl + pass_kl.detach()
        pass_loss = pass_nll + kl_factor * pass_kl
        if len(buckets) == 1:
            pending = pass_loss
        elif not last:
            pass_loss.sum().backward()
    return nll, kl, pending


# ---- early stopping, the Adam step and the clamp -------------------------------------------------------------------
def reached_goal(hp: ValueHParams, nll: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
    """Which requests may stop: their NLL (or, with early_stop_on="loss", their whole loss) is below
    early_stop_loss, or the mean probability exp(−NLL) of their target is above early_stop_prob."""
    done = (loss if hp.early_stop_on == "loss" else nll) < hp.early_stop_loss
    if hp.early_stop_prob is not None:
        done |= torch.exp(-nll) > hp.early_stop_prob
    return done


@torch.no_grad()
def clamp_norms_(delta: torch.Tensor, max_norm: torch.Tensor) -> None:
    """Scale each δ whose norm exceeds ``max_norm`` back onto it (ROME's clamp, after every step)."""
    norms = delta.norm(dim=-1)
    scale = torch.where(norms > max_norm, max_norm / norms.clamp_min(1e-12), torch.ones_like(norms))
    delta.mul_(scale[:, None])


def adam_step(opt: torch.optim.Optimizer, deltas: Sequence[torch.Tensor], active: torch.Tensor) -> None:
    """One optimiser step for the ``active`` requests: Adam's momentum must not move a finished request's vectors."""
    frozen = [delta.detach()[~active].clone() for delta in deltas]
    opt.step()
    with torch.no_grad():
        for delta, kept in zip(deltas, frozen):
            delta[~active] = kept


@dataclass
class Progress:
    """Which requests are still optimised, and for each the steps it ran and its loss at the last of them."""

    active: torch.Tensor
    steps_run: list[int]
    final_loss: list[float]

    @classmethod
    def start(cls, n: int, device: torch.device) -> "Progress":
        return cls(torch.ones(n, dtype=torch.bool, device=device), [0] * n, [float("nan")] * n)

    def record(self, step: int, requests: torch.Tensor, loss: torch.Tensor) -> None:
        for request, value in zip(requests.tolist(), loss[requests].tolist()):
            self.steps_run[request] = step + 1
            self.final_loss[request] = value
