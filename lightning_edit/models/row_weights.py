"""Several edited variants of one model in one batch: row ``r`` computes as if each changed parameter ``p`` were
``p + changes[groups[r]][p]``.

Evaluation needs this for speed only: after a single edit, greedy generation on a CPU is bound by reading the
weights once per new token, whatever the batch holds, so generating for one edit at a time costs as much as
generating for sixteen. Edits that change weights (ROME, MEMIT, FT, MEND, ...) are kept as differences and
replayed here, one group of rows per edit, on the unedited model.

Only modules whose output is linear in the changed parameter are replayed (``nn.Linear``, transformers'
``Conv1D``, ``nn.Embedding``), so that ``f(p + Δ, x) = f(p, x) + f_Δ(x)`` holds; ``supports_row_changes`` says
whether a set of changes qualifies, and callers fall back to editing the model itself otherwise. The result equals
running the edited model up to float rounding (the change is added to the output rather than to the weight).
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..hooks import hooks

try:  # GPT-2's projections (weight stored as in × out)
    from transformers.pytorch_utils import Conv1D
except ImportError:  # pragma: no cover - transformers always has it today
    Conv1D = ()  # type: ignore[assignment,misc]

_REPLAYABLE = (nn.Linear, nn.Embedding) + ((Conv1D,) if isinstance(Conv1D, type) else ())


def _users(model: nn.Module, names: set[str]) -> dict[str, list[tuple[nn.Module, str]]]:
    """For each changed parameter, every (module, attribute) that holds that very tensor: tied weights (an
    embedding shared with the output head) are used by two modules and both must see the change."""
    params = dict(model.named_parameters())
    wanted = {id(params[n]): n for n in names if n in params}
    users: dict[str, list[tuple[nn.Module, str]]] = {n: [] for n in names}
    for module in model.modules():
        for attr, param in module.named_parameters(recurse=False):
            if id(param) in wanted:
                users[wanted[id(param)]].append((module, attr))
    return users


def supports_row_changes(model: nn.Module, changes: Sequence[Mapping[str, torch.Tensor]]) -> bool:
    """True when every changed parameter belongs only to modules whose output is linear in it."""
    names = {n for change in changes for n in change}
    users = _users(model, names)
    return all(users[n] and all(isinstance(m, _REPLAYABLE) and attr in ("weight", "bias") and
                                not (isinstance(m, nn.Embedding) and attr == "bias") for m, attr in users[n])
               for n in names)


def _contribution(module: nn.Module, x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None) -> torch.Tensor:
    """What a change of (weight, bias) adds to ``module``'s output on input ``x``."""
    if isinstance(module, nn.Embedding):
        return F.embedding(x, weight)
    x = x.to(weight.dtype if weight is not None else bias.dtype)
    if isinstance(module, nn.Linear):
        out = F.linear(x, weight) if weight is not None else 0.0
    else:  # Conv1D: x @ W with W of shape (in, out)
        out = x @ weight if weight is not None else 0.0
    return out + bias if bias is not None else out


@contextlib.contextmanager
def row_weight_changes(model: nn.Module, changes: Sequence[Mapping[str, torch.Tensor]],
                       groups: Sequence[int]) -> Iterator[None]:
    """While the block runs, row ``r`` of every forward batch sees parameter ``p`` as ``p + changes[groups[r]][p]``.

    ``changes``: one mapping of parameter name → difference (edited − original) per edit; ``groups``: for each row
    of the batches that will run, the index of its edit. Every batch must have ``len(groups)`` rows (generation with
    a key/value cache keeps its rows). The hooks are removed on exit, even on error.
    """
    if not supports_row_changes(model, changes):
        raise ValueError("row_weight_changes: some changed parameters belong to modules whose output is not linear "
                         "in them; apply those edits to the model instead")
    names = {n for change in changes for n in change}
    users = _users(model, names)
    rows_of = [torch.tensor([r for r, g in enumerate(groups) if g == k], dtype=torch.long) for k in range(len(changes))]
    per_module: dict[int, tuple[nn.Module, dict[str, str]]] = {}  # module → {attr: parameter name}
    for name, holders in users.items():
        for module, attr in holders:
            per_module.setdefault(id(module), (module, {}))[1][attr] = name

    def make(module: nn.Module, attrs: dict[str, str]):
        def hook(mod, inputs, output):
            x = inputs[0]
            if x.shape[0] != len(groups):
                raise ValueError(f"row_weight_changes: a batch of {x.shape[0]} rows ran, the groups name {len(groups)}")
            extra = torch.zeros_like(output)
            for k, change in enumerate(changes):
                weight, bias = (change.get(attrs["weight"]) if "weight" in attrs else None,
                                change.get(attrs["bias"]) if "bias" in attrs else None)
                if (weight is None and bias is None) or not len(rows_of[k]):
                    continue
                rows = rows_of[k].to(x.device)
                extra[rows] = _contribution(mod, x[rows], weight, bias).to(output.dtype)
            return output + extra

        return hook

    with hooks(lambda: (module.register_forward_hook(make(module, attrs)) for module, attrs in per_module.values())):
        yield
