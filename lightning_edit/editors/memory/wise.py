"""WISE (Wang et al. 2024): a side memory for one FFN's output projection, a router, knowledge sharding.

- Side memory: copies of block ``layer``'s FFN output projection W (``mlp_out``). The main W never changes.
- Router: for an input, the activation score of a side memory W' is ``||a (W' - W)ᵀ||`` (a: the projection's
  input, the FFN activation), averaged over the input's real tokens. A row of the batch is answered by the side
  memory with the highest score if that score exceeds ``act_ratio`` × the lowest score any of its edits reached
  when written; otherwise by the main memory, unchanged.
- Training an edit (model frozen): the current shard W' is tuned with the target's NLL (side memory on), plus the
  activation-margin losses that make the score large on the edit and small on unrelated prompts
  (``relu(s_out - alpha) + relu(beta - s_in) + relu(gamma - (s_in - s_out))``), its gradient masked by the shard's
  random mask (``mask_ratio`` of W's entries), every entry kept within ``norm_constraint`` of W.
- Knowledge sharding: after ``shard_size`` edits the shard is closed and a new one starts from W with a fresh
  random mask; closed shards stay routable, and every ``shards_per_merge`` closed shards are merged (TIES:
  trim each task vector to its top ``merge_density`` entries, elect signs, average the agreeing entries) with
  the merged memory so far into one side memory.

The whole side memory lives in one ``SideMemory`` on the model; each edit's patch reverts only what it changed.
"""
from __future__ import annotations

import weakref

import logging
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ...errors import ConfigError, EditFailedError
from ...models.loaded import LoadedModel
from ...models.patches import PatchChange
from ...models.teacher_forcing import build_target_batch
from ...requests import EditRequest
from ..base import Editor, HyperParams, register_editor
from ...models.ops import resolve_layer, target_hits, target_nll
from ...models.tail import TailRunner, valid_positions
from .memory import editing_memory
from .wise_memory import SideMemory, ties_merge  # noqa: F401  (ties_merge: importable from here)
from ...data.pools import load_memory_pool
from .pool import collect_inputs

log = logging.getLogger(__name__)


@dataclass
class WISEHyperParams(HyperParams):
    layer: int = -3  # block whose FFN output projection gets a side memory
    optimizer: str = "sgd"  # sgd (the paper's code) or adam
    lr: float = 1.0
    num_steps: int = 70
    early_stop_loss: float = 0.05
    mask_ratio: float = 0.2  # fraction of W's entries one shard may change
    norm_constraint: Optional[float] = 1.0  # L∞ bound on a side memory's change from W
    alpha: float = 0.5  # the score must stay below alpha on unrelated prompts
    beta: float = 2.0  # ... and exceed beta on the edit
    gamma: float = 1.5  # ... by a gap of at least gamma
    act_ratio: float = 0.88  # routing threshold: act_ratio × the lowest score of a memory's edits
    shard_size: int = 25  # edits written into one shard before it closes
    shards_per_merge: int = 2  # closed shards merged together (with the merged memory so far)
    merge_density: float = 0.53  # TIES: fraction of each task vector's entries kept
    pool_per_step: int = 8  # unrelated prompts scored at each training step
    memory_pool: list[str] = field(default_factory=lambda: ["wikitext:200", "zsre-train:200", "counterfact-train:200"])
    data_dir: Optional[str] = None

    def validate(self) -> None:
        if self.optimizer not in ("sgd", "adam"):
            raise ConfigError(f"field 'optimizer' must be 'sgd' or 'adam', got {self.optimizer!r}")
        if not 0 < self.mask_ratio <= 1:
            raise ConfigError(f"field 'mask_ratio' must be in (0, 1], got {self.mask_ratio}")
        if self.lr <= 0 or self.num_steps < 1:
            raise ConfigError("fields 'lr' (>0) and 'num_steps' (≥1) must be positive")
        if self.shard_size < 1 or self.shards_per_merge < 1:
            raise ConfigError("fields 'shard_size' and 'shards_per_merge' must be ≥ 1")
        if not 0 < self.merge_density <= 1:
            raise ConfigError(f"field 'merge_density' must be in (0, 1], got {self.merge_density}")
        if not 0 < self.act_ratio <= 1:
            raise ConfigError(f"field 'act_ratio' must be in (0, 1], got {self.act_ratio}")
        if self.norm_constraint is not None and self.norm_constraint <= 0:
            raise ConfigError("field 'norm_constraint' must be positive or null")
        if min(self.alpha, self.beta, self.gamma) < 0 or self.beta <= self.alpha:
            raise ConfigError(f"fields 'alpha' < 'beta' (and 'gamma' ≥ 0) are activation margins; got {self.alpha}, {self.beta}, {self.gamma}")
        if self.pool_per_step < 1:
            raise ConfigError("field 'pool_per_step' must be ≥ 1")
        if not isinstance(self.memory_pool, (list, tuple)):
            raise ConfigError("field 'memory_pool' must be a list of 'source:count' strings")


@register_editor
class WISEEditor(Editor):
    edits_weights_only = False  # its edits are patches; see Editor.edits_weights_only

    name = "wise"
    HParams = WISEHyperParams
    supports_batch = False  # one shard update per request

    def __init__(self, hparams: HyperParams):
        super().__init__(hparams)
        self._pool: Optional[list[torch.Tensor]] = None
        self._pool_for: Optional[tuple[weakref.ref, str]] = None

    def touched_parameters(self, loaded: LoadedModel, requests: Sequence[EditRequest]) -> list[str]:
        return []  # the main memory never changes; the side memory is a patch

    def read_parameters(self, loaded: LoadedModel, requests: Sequence[EditRequest]) -> list[str]:
        _, module_name = self._module_name(loaded)
        return [f"{module_name}.weight"]  # copied into a new side memory

    def _module_name(self, loaded: LoadedModel) -> tuple[int, str]:
        layout = loaded.layout
        block = resolve_layer(self.hparams.layer, layout.num_layers(loaded.model))
        return block, layout.name(layout.mlp_out, block)

    def _signature(self, module_name: str) -> dict:
        hp = self.hparams
        return {"module": module_name, "act_ratio": hp.act_ratio, "mask_ratio": hp.mask_ratio, "seed": hp.seed}

    def prepare(self, loaded: LoadedModel) -> None:
        """The projection's inputs on the unrelated-prompt pool (the side memory cannot change them)."""
        _, module_name = self._module_name(loaded)
        if self._pool_for is not None and self._pool_for[0]() is loaded.model and self._pool_for[1] == module_name:
            return
        pairs = load_memory_pool(self.hparams.memory_pool, self.hparams.data_dir)
        self._pool = collect_inputs(loaded, module_name, pairs)
        self._pool_for = (weakref.ref(loaded.model), module_name)  # a weak reference: never mistaken for a later model

    def _new_mask(self, shape: torch.Size, shard: int, device: torch.device) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.hparams.seed * 100003 + shard)
        return (torch.rand(shape, generator=generator) < self.hparams.mask_ratio).to(device)

    def _apply(self, loaded: LoadedModel, requests: Sequence[EditRequest]) -> list[PatchChange]:
        self.prepare(loaded)
        hp = self.hparams
        request = requests[0]
        block, module_name = self._module_name(loaded)
        module = loaded.model.get_submodule(module_name)
        signature = self._signature(module_name)

        def factory() -> SideMemory:
            weight = loaded.layout.linear_weight(module)
            return SideMemory(signature, module_name, weight, getattr(module, "bias", None), loaded.layout.is_encoder_decoder)

        with editing_memory(loaded, SideMemory.key, factory, signature) as session:
            memory: SideMemory = session.container  # type: ignore[assignment]
            v = memory.values
            if v["current_edits"] >= hp.shard_size:
                self._close_shard(memory)
            if v["current_mask"] is None:
                v["current_mask"] = self._new_mask(memory.main.shape, v["shard_count"], memory.main.device)
                v["shard_count"] = v["shard_count"] + 1
            batch = build_target_batch(loaded, [request.prompt], [request.target_new])
            weight, score, steps = self._train(loaded, memory, batch, block)
            v["current"] = weight
            v["current_edits"] = v["current_edits"] + 1
            v["current_min_act"] = min(v["current_min_act"], score)
            v["edits"] = v["edits"] + 1
        session.change.summary = {"activation_score": score, "steps": steps, "shard": v["shard_count"]}
        return [session.change]

    def _close_shard(self, memory: SideMemory) -> None:
        hp, v = self.hparams, memory.values
        v["shards"] = tuple(v["shards"]) + (v["current"],)
        v["shard_min_acts"] = tuple(v["shard_min_acts"]) + (v["current_min_act"],)
        v["current"], v["current_edits"], v["current_min_act"], v["current_mask"] = memory.main, 0, float("inf"), None
        if len(v["shards"]) >= hp.shards_per_merge:
            weights = list(v["shards"]) + ([v["merged"]] if v["merged"] is not None else [])
            v["merged"] = ties_merge(memory.main, weights, hp.merge_density)
            v["merged_min_act"] = min([v["merged_min_act"], *v["shard_min_acts"]])
            v["shards"], v["shard_min_acts"] = (), ()

    def _train(self, loaded: LoadedModel, memory: SideMemory, batch, block: int) -> tuple[torch.Tensor, float, int]:
        hp = self.hparams
        v = memory.values
        main, mask = memory.main, v["current_mask"]
        weight = nn.Parameter(v["current"].detach().clone())
        valid = valid_positions(loaded, batch)
        generator = torch.Generator().manual_seed(hp.seed * 7919 + int(v["edits"]))
        memory.training_weight = weight
        steps = 0
        try:
            tail = TailRunner(loaded, batch, block)
            # No weight decay: it would move entries outside the shard's mask.
            opt = torch.optim.SGD([weight], lr=hp.lr) if hp.optimizer == "sgd" else torch.optim.Adam([weight], lr=hp.lr)
            for steps in range(1, hp.num_steps + 1):
                opt.zero_grad(set_to_none=True)
                logits = tail.logits()
                edit_loss = target_nll(logits, tail.labels)
                in_score = memory.scores(memory.last_input, weight, valid)  # (1,)
                out_score = self._pool_scores(memory, weight, generator)
                act_loss = torch.relu(hp.beta - in_score).mean()
                if out_score.numel():
                    act_loss = act_loss + (torch.relu(out_score - hp.alpha).mean()
                                           + torch.relu(hp.gamma - (in_score[:, None] - out_score[None, :])).mean())
                loss = edit_loss + act_loss
                log.debug("wise step %d: nll %.3f in-scope %.3f out-of-scope %.3f", steps, edit_loss.item(),
                          in_score.item(), out_score.mean().item() if out_score.numel() else 0.0)
                if not torch.isfinite(loss):
                    raise EditFailedError(f"wise: the loss became {loss.item()}")
                # Done once the target is learnt and the router would tell the edit from the sampled prompts.
                routable = in_score.item() >= hp.beta and (not out_score.numel() or out_score.max().item() < hp.act_ratio * in_score.item())
                if edit_loss.item() < hp.early_stop_loss and target_hits(logits, tail.labels) and routable:
                    break
                loss.backward()
                weight.grad.mul_(mask)  # knowledge sharding: this shard writes only its own entries
                opt.step()
                if hp.norm_constraint is not None:
                    with torch.no_grad():
                        weight.copy_(torch.maximum(torch.minimum(weight, main + hp.norm_constraint), main - hp.norm_constraint))
            with torch.no_grad():
                tail.logits()
                score = float(memory.scores(memory.last_input, weight, valid)[0])
        finally:
            memory.training_weight = None
            memory.last_input = None
        out = weight.detach().clone()
        if not torch.isfinite(out).all():
            raise EditFailedError("wise: the trained side memory is not finite")
        return out, score, steps

    def _pool_scores(self, memory: SideMemory, weight: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if not self._pool:
            return weight.new_zeros(0)
        picks = torch.randint(len(self._pool), (self.hparams.pool_per_step,), generator=generator).tolist()
        delta = weight - memory.main
        return torch.stack([F.linear(self._pool[i].to(weight.dtype), delta).norm(dim=-1).mean() for i in picks])
