"""SERAC's trained parts: the scope classifier (is an input about one of the stored edits?) and the counterfactual
model, the base model with LoRA adapters switched on while it answers in-scope inputs."""
from __future__ import annotations

import contextlib
import math
from typing import Iterator, Optional, Sequence

import torch
from torch import nn

from ....hooks import hooks, run_until, trace
from ....models.loading import LoadedModel
from ....models.ops import resolve_layers


class ScopeClassifier(nn.Module):
    def __init__(self, hidden_dim: int, scope_dim: int):
        super().__init__()
        self.project = nn.Sequential(nn.Linear(hidden_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, scope_dim))
        # Shape (1,), not 0-dim: DeepSpeed broadcasts every parameter viewed as bytes, which a 0-dim tensor refuses.
        self.log_scale = nn.Parameter(torch.tensor([math.log(10.0)]))
        self.bias = nn.Parameter(torch.tensor([-5.0]))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        for name in ("log_scale", "bias"):  # checkpoints written before they had shape (1,)
            key = prefix + name
            if key in state_dict and state_dict[key].dim() == 0:
                state_dict[key] = state_dict[key].reshape(1)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.project(features), dim=-1)

    def logits(self, queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
        """(..., k) queries × (E, k) keys → (..., E) in-scope logits."""
        return self.log_scale.exp() * queries @ keys.T + self.bias


class SERACNetwork(nn.Module):
    """Everything SERAC trains: the scope classifier's projection and the counterfactual LoRA adapters."""

    def __init__(self, hidden_dim: int, scope_dim: int, lora_shapes: dict[str, tuple[int, int]], rank: int, alpha: float):
        super().__init__()
        self.classifier = ScopeClassifier(hidden_dim, scope_dim)
        self.lora_paths = list(lora_shapes)
        self.lora_scale = alpha / rank
        self.lora_a = nn.ParameterDict()
        self.lora_b = nn.ParameterDict()
        for path, (out_dim, in_dim) in lora_shapes.items():
            key = path.replace(".", "_")
            self.lora_a[key] = nn.Parameter(torch.randn(rank, in_dim) / math.sqrt(in_dim))
            self.lora_b[key] = nn.Parameter(torch.zeros(out_dim, rank))  # zero: starts as the base model


@contextlib.contextmanager
def lora_active(loaded: LoadedModel, network: SERACNetwork) -> Iterator[None]:
    """The counterfactual model: the base model with the LoRA adapters added while the block runs."""

    def make(key: str):
        def hook(module, inputs, output):
            x = inputs[0]
            a, b = network.lora_a[key], network.lora_b[key]
            return output + (x.to(a.dtype) @ a.T @ b.T * network.lora_scale).to(output.dtype)

        return hook

    def register():
        return (loaded.model.get_submodule(p).register_forward_hook(make(p.replace(".", "_"))) for p in network.lora_paths)

    with hooks(register):
        yield


def running_mean_features(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Per position: mean of the L2-normalised hidden states of the real tokens up to it (causal)."""
    mask = attention_mask.to(hidden.dtype)[..., None]
    h = nn.functional.normalize(hidden.float(), dim=-1) * mask
    counts = mask.cumsum(1).clamp(min=1.0)
    return h.cumsum(1) / counts


def scope_features(loaded: LoadedModel, layer: int, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Running-mean features of the base model's block ``layer`` (the forward stops there)."""
    path = loaded.layout.block_name(layer)
    with torch.no_grad(), trace(loaded.model, [path], stop_after=path) as tr:
        run_until(lambda: loaded.model(input_ids=input_ids, attention_mask=attention_mask))
    return running_mean_features(tr[path].output, attention_mask)


def lora_shapes(loaded: LoadedModel, targets: Sequence[str], layers: Optional[Sequence[int]]) -> dict[str, tuple[int, int]]:
    n = loaded.layout.num_layers(loaded.model)
    chosen = resolve_layers(layers, n, "lora_layers") if layers is not None else list(range(n))
    out = {}
    for i in chosen:
        for t in targets:
            template = getattr(loaded.layout, t)
            module = loaded.layout.module(loaded.model, template, i)
            out[template.format(i)] = tuple(loaded.layout.linear_weight(module).shape)
    return out
