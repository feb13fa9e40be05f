"""T-Patcher (Huang et al. 2023, "Transformer-Patcher: One Mistake Worth One Neuron").

Each edit appends trainable neurons to the FFN of block ``layer`` (the last one by default): a key k, a bias
b and a value v, adding ``relu(q·k + b) · v`` to the FFN's output at every position whose FFN input is q. With
``per_target_token`` (default) an edit gets ``neurons_per_edit`` neurons for each target token, each anchored
on the position that predicts its token (one neuron per mistake, as in the paper, a multi-token answer being
one mistake per token); otherwise ``neurons_per_edit`` neurons serve all positions. The neurons are trained,
the model frozen, with the paper's three losses:

- edit loss: the target's teacher-forced NLL with every patch active;
- activation loss: the new neurons fire on the edit's queries (the FFN inputs at the positions that predict
  the target): ``relu(activation_margin - (q_e·k + b))``;
- memory loss: they stay silent on memory queries, the FFN inputs of a pool of unrelated prompts (WikiText and
  training-split probes, ``memory_pool``) and of every earlier edit: ``relu(q_m·k + b - memory_margin)`` and
  ``relu(q_m·k - q_e·k + relative_margin)``.
The paper writes these with a generic margin function S(·); hinges are used here. Because the activation is a
ReLU and the memory loss pushes the pre-activation below zero, a patch adds exactly nothing where it does not
fire, so off-scope inputs keep the model's output bit for bit.

The neurons of every edit accumulate in one ``PatchNeurons`` memory on the model; each edit's patch removes only
the neurons (and remembered queries) that edit added.
"""
from __future__ import annotations

import weakref

from dataclasses import dataclass, field
from typing import Iterator, Optional, Sequence

import torch
from torch import nn

from ...errors import CheckpointError, ConfigError, EditFailedError
from ...hooks import trace
from ...models.loaded import LoadedModel
from ...models.teacher_forcing import build_target_batch
from ...requests import EditRequest
from ..base import Editor, HyperParams, register_editor
from ...models.ops import resolve_layer, target_hits, target_nll
from ...models.tail import TailRunner, prediction_positions
from ...models.patches import PatchChange, register_patch
from .memory import FFNMemory, editing_memory
from ...data.pools import load_memory_pool
from .pool import collect_inputs


@dataclass
class TPatcherHyperParams(HyperParams):
    layer: int = -1  # block whose FFN receives the patches (the paper: the last)
    neurons_per_edit: int = 1
    per_target_token: bool = True  # neurons_per_edit for each target token, each anchored on the position predicting it
    lr: float = 0.05
    num_steps: int = 100
    early_stop_loss: float = 0.1  # stop once the target NLL is below this, every token hits and the margins hold
    activation_weight: float = 1.0
    memory_weight: float = 1.0
    activation_margin: float = 1.0  # pre-activation the neuron must reach on the edit's queries
    memory_margin: float = -1.0  # pre-activation it must stay below on memory queries
    relative_margin: float = 1.0  # gap between the edit's and the memory queries' pre-activations
    memory_pool: list[str] = field(default_factory=lambda: ["wikitext:200", "zsre-train:200", "counterfact-train:200"])
    data_dir: Optional[str] = None

    def validate(self) -> None:
        if self.neurons_per_edit < 1:
            raise ConfigError(f"field 'neurons_per_edit' must be ≥ 1, got {self.neurons_per_edit}")
        if self.lr <= 0 or self.num_steps < 1:
            raise ConfigError("fields 'lr' (>0) and 'num_steps' (≥1) must be positive")
        if self.activation_margin <= 0 or self.memory_margin > 0:
            raise ConfigError("field 'activation_margin' must be > 0 and field 'memory_margin' ≤ 0 (the patch fires "
                              "above zero on its edit and stays below zero elsewhere)")
        if self.activation_weight < 0 or self.memory_weight < 0:
            raise ConfigError("fields 'activation_weight' and 'memory_weight' must be ≥ 0")
        if not isinstance(self.memory_pool, (list, tuple)):
            raise ConfigError("field 'memory_pool' must be a list of 'source:count' strings")


def _positive_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of the positive entries (the violated margins), zero if none: a few violators among thousands
    of memory queries still get a full-sized gradient."""
    positive = x[x > 0]
    return positive.mean() if positive.numel() else x.new_zeros(())


@register_patch
class PatchNeurons(FFNMemory):
    """keys (n, d), biases (n,), values (n, d_out) of every patch neuron, and the queries of past edits."""

    kind = "t-patcher"
    key = "t-patcher"

    def __init__(self, signature: dict, module_name: str, d_in: int, d_out: int, device: torch.device, dtype: torch.dtype):
        super().__init__(signature)
        self.module_name = module_name
        self.values = {
            "keys": torch.zeros(0, d_in, device=device, dtype=dtype),
            "biases": torch.zeros(0, device=device, dtype=dtype),
            "values": torch.zeros(0, d_out, device=device, dtype=dtype),
            "edit_queries": torch.zeros(0, d_in, device=device, dtype=dtype),
        }
        self.training_neurons: Optional[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = None

    @property
    def size(self) -> int:
        return int(self.values["keys"].shape[0])

    def check_values(self, template: dict) -> None:
        super().check_values(template)
        n = self.values["keys"].shape[0]
        if self.values["biases"].shape[0] != n or self.values["values"].shape[0] != n:
            raise CheckpointError(f"t-patcher: saved keys, biases and values differ in number of neurons (keys: {n})")

    def register_hooks(self, model: nn.Module) -> Iterator:
        yield model.get_submodule(self.module_name).register_forward_hook(self._hook)

    def neurons(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        keys, biases, values = self.values["keys"], self.values["biases"], self.values["values"]
        if self.training_neurons is not None:
            k, b, v = self.training_neurons
            keys, biases, values = torch.cat([keys, k]), torch.cat([biases, b]), torch.cat([values, v])
        return keys, biases, values

    def _hook(self, module, args, output):
        keys, biases, values = self.neurons()
        if keys.shape[0] == 0:
            return output
        out = output[0] if isinstance(output, tuple) else output
        activation = torch.relu(args[0].to(keys.dtype) @ keys.T + biases)  # (B, T, n)
        new = out + (activation @ values).to(out.dtype)
        return (new,) + tuple(output[1:]) if isinstance(output, tuple) else new


@register_editor
class TPatcherEditor(Editor):
    edits_weights_only = False  # its edits are patches; see Editor.edits_weights_only

    name = "t-patcher"
    HParams = TPatcherHyperParams
    supports_batch = False  # one set of neurons per request

    def __init__(self, hparams: HyperParams):
        super().__init__(hparams)
        self._pool: Optional[torch.Tensor] = None
        self._pool_for: Optional[tuple[weakref.ref, str]] = None

    def touched_parameters(self, loaded: LoadedModel, requests: Sequence[EditRequest]) -> list[str]:
        return []  # the model's weights never change; the neurons are a patch

    def _module_name(self, loaded: LoadedModel) -> tuple[int, str]:
        layout = loaded.layout
        block = resolve_layer(self.hparams.layer, layout.num_layers(loaded.model))
        return block, layout.ffn_name(block)

    def prepare(self, loaded: LoadedModel) -> None:
        """FFN inputs of the memory pool (edits of this block's FFN output cannot change them)."""
        _, module_name = self._module_name(loaded)
        if self._pool_for is not None and self._pool_for[0]() is loaded.model and self._pool_for[1] == module_name:
            return
        pairs = load_memory_pool(self.hparams.memory_pool, self.hparams.data_dir)
        inputs = collect_inputs(loaded, module_name, pairs)
        self._pool = torch.cat(inputs) if inputs else None
        self._pool_for = (weakref.ref(loaded.model), module_name)  # a weak reference: never mistaken for a later model

    def _apply(self, loaded: LoadedModel, requests: Sequence[EditRequest]) -> list[PatchChange]:
        self.prepare(loaded)
        request = requests[0]
        block, module_name = self._module_name(loaded)
        module = loaded.model.get_submodule(module_name)
        batch = build_target_batch(loaded, [request.prompt], [request.target_new])
        at_targets = prediction_positions(batch)[0]
        with torch.no_grad(), trace(loaded.model, [module_name], keep_input=True, keep_output=True) as tr:
            loaded.model(**batch.model_inputs(), use_cache=False)
        queries = tr[module_name].input[0][at_targets].clone()  # (P, d)
        d_out = tr[module_name].output.shape[-1]

        def factory() -> PatchNeurons:
            p = next(module.parameters())
            return PatchNeurons({"module": module_name}, module_name, queries.shape[-1], d_out, p.device, p.dtype)

        with editing_memory(loaded, PatchNeurons.key, factory, {"module": module_name}) as session:
            patch: PatchNeurons = session.container  # type: ignore[assignment]
            memory_queries = patch.values["edit_queries"]
            if self._pool is not None:
                memory_queries = torch.cat([self._pool.to(memory_queries.dtype), memory_queries])
            k, b, v, steps = self._train(loaded, patch, batch, block, queries, memory_queries, d_out)
            v_ = patch.values
            v_["keys"] = torch.cat([v_["keys"], k])
            v_["biases"] = torch.cat([v_["biases"], b])
            v_["values"] = torch.cat([v_["values"], v])
            v_["edit_queries"] = torch.cat([v_["edit_queries"], queries])
        session.change.summary = {"neurons": patch.size, "steps": steps}
        return [session.change]

    def _train(self, loaded: LoadedModel, patch: PatchNeurons, batch, block: int, queries: torch.Tensor,
               memory_queries: torch.Tensor, d_out: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
        hp = self.hparams
        n = hp.neurons_per_edit * (queries.shape[0] if hp.per_target_token else 1)
        # Start each neuron pointing at one of the edit's queries, firing at exactly the activation margin there.
        anchors = torch.arange(n, device=queries.device) % queries.shape[0]
        anchor = queries[anchors]
        k = nn.Parameter(anchor / anchor.norm(dim=-1, keepdim=True) ** 2)
        b = nn.Parameter(torch.full((n,), hp.activation_margin - 1.0, dtype=queries.dtype, device=queries.device))
        v = nn.Parameter(torch.zeros(n, d_out, dtype=queries.dtype, device=queries.device))
        patch.training_neurons = (k, b, v)
        steps = 0
        try:
            tail = TailRunner(loaded, batch, block)
            opt = torch.optim.Adam([k, b, v], lr=hp.lr)
            for steps in range(1, hp.num_steps + 1):
                opt.zero_grad(set_to_none=True)
                logits = tail.logits()
                edit_loss = target_nll(logits, tail.labels)
                edit_act = queries @ k.T + b  # (P, n)
                if hp.per_target_token:  # each neuron fires on the position it serves
                    own = edit_act.gather(0, anchors[None, :]).squeeze(0)  # (n,)
                    act_loss = torch.relu(hp.activation_margin - own).mean()
                else:  # each position needs at least one neuron firing above the margin
                    own = edit_act.min(dim=0).values
                    act_loss = torch.relu(hp.activation_margin - edit_act.max(dim=1).values).mean()
                mem_act = memory_queries @ k.T + b  # (M, n)
                mem_loss = (_positive_mean(mem_act - hp.memory_margin)
                            + _positive_mean(mem_act - own + hp.relative_margin))
                loss = edit_loss + hp.activation_weight * act_loss + hp.memory_weight * mem_loss
                if not torch.isfinite(loss):
                    raise EditFailedError(f"t-patcher: the loss became {loss.item()}")
                if (edit_loss.item() < hp.early_stop_loss and target_hits(logits, tail.labels)
                        and act_loss.item() == 0 and mem_loss.item() == 0):
                    break
                loss.backward()
                opt.step()
        finally:
            patch.training_neurons = None
        out = tuple(t.detach().clone() for t in (k, b, v))
        if not all(torch.isfinite(t).all() for t in out):
            raise EditFailedError("t-patcher: the trained neuron is not finite")
        return out[0], out[1], out[2], steps
