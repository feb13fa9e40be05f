"""GRACE (Hartvigsen et al. 2023): a discrete key-value codebook at one FFN, for long sequences of edits.

The key of an input is what block ``layer``'s FFN receives at the last prompt token. Where it lies within a
codebook entry's deferral radius ε, the FFN's output is replaced by that entry's value, at the key's position
and every later one (the target's positions, so teacher-forced targets and generations both see it); elsewhere
the model runs unchanged. Scanning positions in order, the first one whose key hits decides, so a prompt that
merely contains an edited question as a prefix is edited too.

Per edit (the paper's codebook rules, "coverage" expansion):
- no entry within ``radius + epsilon_init`` of the new key: add (key, value, epsilon_init, label);
- the nearest entry is that close and has the same label (target): grow its radius to cover the new key;
- it has another label: split, both radii become half the distance, and add the new entry.
A new value starts from the FFN's own output at the key ("warm") or at random ("cold") and is trained, the
model frozen, until the target's teacher-forced NLL falls below ``early_stop_loss``.

The codebook lives in a ``GraceCodebook`` memory on the model; each edit's patch reverts exactly its own change.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import torch
from torch import nn

from ...errors import CheckpointError, ConfigError, EditFailedError
from ...models.loaded import LoadedModel
from ...models.teacher_forcing import build_target_batch
from ...requests import EditRequest
from ...hooks import trace
from ..base import Editor, HyperParams, register_editor
from ...models.ops import resolve_layer, target_hits, target_nll
from ...models.tail import TailRunner, prediction_positions
from ...models.patches import PatchChange, register_patch
from ...models.placement import module_device
from .memory import FFNMemory, editing_memory

VALUE_INITS = ("warm", "cold")


@dataclass
class GraceHyperParams(HyperParams):
    layer: int = -4  # block whose FFN holds the codebook; negative counts from the last block
    epsilon_init: float = 1.0  # deferral radius of a new entry (Euclidean, in the FFN-input space)
    lr: float = 2.0
    num_steps: int = 50
    early_stop_loss: float = 0.2  # stop training a value once the target NLL is below this (and every token hits)
    value_init: str = "warm"

    def validate(self) -> None:
        if self.epsilon_init <= 0:
            raise ConfigError(f"field 'epsilon_init' must be positive, got {self.epsilon_init}")
        if self.lr <= 0 or self.num_steps < 1:
            raise ConfigError("fields 'lr' (>0) and 'num_steps' (≥1) must be positive")
        if self.value_init not in VALUE_INITS:
            raise ConfigError(f"field 'value_init' must be one of {VALUE_INITS}, got {self.value_init!r}")


def _label(request: EditRequest) -> str:
    return request.target_new.strip().lower()


@register_patch
class GraceCodebook(FFNMemory):
    """keys (N, d_in), values (N, d_out), radii (N,), labels (N strings), on one FFN module."""

    kind = "grace"
    key = "grace"

    def __init__(self, signature: dict, module_name: str, d_in: int, d_out: int, device: torch.device, dtype: torch.dtype):
        super().__init__(signature)
        self.module_name = module_name
        self.values = {
            "keys": torch.zeros(0, d_in, device=device, dtype=dtype),
            "values": torch.zeros(0, d_out, device=device, dtype=dtype),
            "radii": torch.zeros(0, device=device, dtype=dtype),
            "labels": (),
        }
        # While a value trains: the trainable vector and the position it replaces from (batch of one).
        self.training_value: Optional[torch.Tensor] = None
        self.training_from: int = 0

    @property
    def size(self) -> int:
        return int(self.values["keys"].shape[0])

    def check_values(self, template: dict) -> None:
        super().check_values(template)
        n = len(self.values["labels"])
        if not all(isinstance(label, str) for label in self.values["labels"]) or any(
                self.values[name].shape[0] != n for name in ("keys", "values", "radii")):
            raise CheckpointError(f"grace: saved keys, values, radii and labels differ in number (labels: {n})")

    def register_hooks(self, model: nn.Module) -> Iterator:
        yield model.get_submodule(self.module_name).register_forward_hook(self._hook)

    def lookup(self, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Nearest entry of each query (..., d): (distance, index, within its radius)."""
        keys = self.values["keys"]
        flat = queries.reshape(-1, queries.shape[-1]).to(keys.dtype)
        dist = torch.cdist(flat, keys)
        nearest, index = dist.min(dim=-1)
        hit = nearest <= self.values["radii"][index]
        shape = queries.shape[:-1]
        return nearest.view(shape), index.view(shape), hit.view(shape)

    def _hook(self, module, args, output):
        out = output[0] if isinstance(output, tuple) else output
        if self.training_value is not None:
            length = out.shape[1]
            after = (torch.arange(length, device=out.device) >= self.training_from)[None, :, None]
            new = torch.where(after, self.training_value.to(out.dtype), out)
        elif self.size:
            _, index, hit = self.lookup(args[0].detach())  # (B, T)
            if not bool(hit.any()):
                return output
            from_first_hit = hit.long().cumsum(dim=1) > 0
            first = hit.long().argmax(dim=1)  # the first hit position of each row
            entry = index.gather(1, first[:, None]).squeeze(1)
            replacement = self.values["values"][entry].to(out.dtype)[:, None, :]
            new = torch.where(from_first_hit[..., None], replacement, out)
        else:
            return output
        return (new,) + tuple(output[1:]) if isinstance(output, tuple) else new


@register_editor
class GraceEditor(Editor):
    edits_weights_only = False  # its edits are patches; see Editor.edits_weights_only

    name = "grace"
    HParams = GraceHyperParams
    supports_batch = False  # one codebook update per request

    def touched_parameters(self, loaded: LoadedModel, requests: Sequence[EditRequest]) -> list[str]:
        return []  # the model's weights never change; the codebook is a patch

    def _module_name(self, loaded: LoadedModel) -> tuple[int, str]:
        layout = loaded.layout
        block = resolve_layer(self.hparams.layer, layout.num_layers(loaded.model))
        return block, layout.ffn_name(block)

    def _signature(self, module_name: str) -> dict:
        return {"module": module_name}

    def _apply(self, loaded: LoadedModel, requests: Sequence[EditRequest]) -> list[PatchChange]:
        hp = self.hparams
        request = requests[0]
        block, module_name = self._module_name(loaded)
        module = loaded.model.get_submodule(module_name)
        batch = build_target_batch(loaded, [request.prompt], [request.target_new])
        key_position = int(prediction_positions(batch)[0].nonzero()[0])
        with torch.no_grad(), trace(loaded.model, [module_name], keep_input=True, keep_output=True) as tr:
            loaded.model(**batch.model_inputs(), use_cache=False)
        key = tr[module_name].input[0, key_position].clone()
        ffn_out = tr[module_name].output[0, key_position].clone()

        def factory() -> GraceCodebook:
            p = next(module.parameters())
            return GraceCodebook(self._signature(module_name), module_name, key.shape[-1], ffn_out.shape[-1],
                                 module_device(module), p.dtype)

        with editing_memory(loaded, GraceCodebook.key, factory, self._signature(module_name)) as session:
            book: GraceCodebook = session.container  # type: ignore[assignment]
            v = book.values
            label = _label(request)
            entry: Optional[int] = None  # the entry whose value this edit trains
            action = "add"
            if book.size:
                dist, index, _ = book.lookup(key[None])
                d, i = float(dist[0]), int(index[0])
                if d <= float(v["radii"][i]) + hp.epsilon_init:
                    if v["labels"][i] == label:
                        action, entry = "expand", i
                        radii = v["radii"].clone()
                        radii[i] = max(float(radii[i]), d)
                        v["radii"] = radii
                    elif d <= 1e-6:  # the same key asked for a new answer: the newer edit wins
                        action, entry = "overwrite", i
                        labels = list(v["labels"])
                        labels[i] = label
                        v["labels"] = tuple(labels)
                    else:
                        action = "split"
                        radii = v["radii"].clone()
                        radii[i] = d / 2
                        v["radii"] = radii
            if entry is None:
                radius = hp.epsilon_init if action == "add" else d / 2
                init = ffn_out if hp.value_init == "warm" else torch.randn_like(ffn_out) * ffn_out.norm() / ffn_out.numel() ** 0.5
                v["keys"] = torch.cat([v["keys"], key[None]])
                v["values"] = torch.cat([v["values"], init[None].to(v["values"].dtype)])
                v["radii"] = torch.cat([v["radii"], torch.tensor([radius], dtype=v["radii"].dtype, device=v["radii"].device)])
                v["labels"] = tuple(v["labels"]) + (label,)
                entry = book.size - 1
            value = self._train_value(loaded, book, batch, block, key_position, v["values"][entry].clone())
            values = v["values"].clone()
            values[entry] = value
            v["values"] = values
        return [session.change]

    def _train_value(self, loaded: LoadedModel, book: GraceCodebook, batch, block: int, key_position: int,
                     init: torch.Tensor) -> torch.Tensor:
        hp = self.hparams
        value = nn.Parameter(init.detach().clone())
        book.training_value, book.training_from = value, key_position
        try:
            tail = TailRunner(loaded, batch, block)
            opt = torch.optim.Adam([value], lr=hp.lr)
            for _ in range(hp.num_steps):
                opt.zero_grad(set_to_none=True)
                logits = tail.logits()
                loss = target_nll(logits, tail.labels)
                if not torch.isfinite(loss):
                    raise EditFailedError(f"grace: the value's loss became {loss.item()}")
                if loss.item() < hp.early_stop_loss and target_hits(logits, tail.labels):
                    break
                loss.backward()
                opt.step()
        finally:
            book.training_value = None
        out = value.detach().clone()
        if not torch.isfinite(out).all():
            raise EditFailedError("grace: the trained value is not finite")
        return out
