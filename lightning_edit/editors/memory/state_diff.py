"""What one edit changed in a memory's state: the entries replaced, or for a same-shaped tensor changed in at most
half its elements only those elements, so that undoing and re-applying an edit is exact and cheap."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class _SparseChange:
    """A tensor edited in a few places: the flat positions and the values there before and after."""

    index: torch.Tensor
    before: torch.Tensor
    after: torch.Tensor

    def put(self, base: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        out = base.clone(memory_format=torch.contiguous_format)
        out.view(-1)[self.index.long()] = values
        return out


@dataclass
class StateDiff:
    """The entries of a memory's state one edit changed: full before/after references, or, for a
    same-shaped tensor changed in at most half its elements, only those elements."""

    full: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    sparse: dict[str, _SparseChange] = field(default_factory=dict)

    @classmethod
    def between(cls, before: dict[str, Any], after: dict[str, Any]) -> "StateDiff":
        diff = cls()
        for name in set(before) | set(after):
            old, new = before.get(name, _MISSING), after.get(name, _MISSING)
            if old is new:
                continue
            if (isinstance(old, torch.Tensor) and isinstance(new, torch.Tensor) and old.shape == new.shape
                    and old.dtype == new.dtype and old.is_floating_point()):
                changed = (old != new).reshape(-1).nonzero().view(-1)
                if changed.numel() == 0:
                    continue
                if changed.numel() <= old.numel() // 2:
                    index = changed.to(torch.int32) if old.numel() < 2**31 else changed
                    diff.sparse[name] = _SparseChange(index, old.reshape(-1)[changed], new.reshape(-1)[changed])
                    continue
            diff.full[name] = (old, new)
        return diff

    def _move(self, state: dict[str, Any], forward: bool) -> dict[str, Any]:
        out = dict(state)
        for name, (old, new) in self.full.items():
            value = new if forward else old
            if value is _MISSING:
                out.pop(name, None)
            else:
                out[name] = value
        for name, change in self.sparse.items():
            out[name] = change.put(out[name], change.after if forward else change.before)
        return out

    def revert(self, state: dict[str, Any]) -> dict[str, Any]:
        return self._move(state, forward=False)

    def apply(self, state: dict[str, Any]) -> dict[str, Any]:
        return self._move(state, forward=True)

    @property
    def empty(self) -> bool:
        return not self.full and not self.sparse


_MISSING = object()
