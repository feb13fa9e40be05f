"""What one edit changed in a memory's state: the entries replaced, for a same-shaped tensor changed in at most
half its elements only those elements, and for a tensor or tuple grown at its end (a codebook entry, a neuron) only
what was added, so that undoing and re-applying an edit is exact and cheap: what an edit keeps does not grow with
the edits before it (a GRACE codebook of T entries would otherwise be held T times, O(T²) memory)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

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
class _Appended:
    """A tensor grown along its first dimension, or a tuple grown at its end: the length before, what was added, and
    the few elements of the old part the same edit changed (GRACE shrinks a neighbour's radius as it adds an entry)."""

    length: int
    added: Any
    prefix: Optional[_SparseChange] = None

    @classmethod
    def between(cls, old: Any, new: Any) -> "_Appended | None":
        if isinstance(old, tuple) and isinstance(new, tuple):
            return cls(len(old), new[len(old):]) if len(new) > len(old) and new[:len(old)] == old else None
        if not (isinstance(old, torch.Tensor) and isinstance(new, torch.Tensor) and old.dim() == new.dim() >= 1
                and old.dtype == new.dtype and old.shape[1:] == new.shape[1:] and new.shape[0] > old.shape[0]):
            return None
        head = new[:old.shape[0]]
        changed = (old != head).reshape(-1).nonzero().view(-1)
        prefix = None
        if changed.numel():
            if not old.is_floating_point() or changed.numel() > new.numel() // 2:
                return None
            prefix = _SparseChange(changed, old.reshape(-1)[changed], head.reshape(-1)[changed])
        return cls(len(old), new[len(old):].clone(), prefix)  # a copy: a view would hold all of `new`

    def grow(self, base: Any) -> Any:
        if not isinstance(base, torch.Tensor):
            return base + self.added
        if self.prefix is not None:
            base = self.prefix.put(base, self.prefix.after)
        return torch.cat([base, self.added])

    def shrink(self, base: Any) -> Any:
        out = base[:self.length]
        return self.prefix.put(out, self.prefix.before) if self.prefix is not None else out


@dataclass
class StateDiff:
    """The entries of a memory's state one edit changed: full before/after references, or, for a
    same-shaped tensor changed in at most half its elements, only those elements."""

    full: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    sparse: dict[str, _SparseChange] = field(default_factory=dict)
    appended: dict[str, _Appended] = field(default_factory=dict)

    @classmethod
    def between(cls, before: dict[str, Any], after: dict[str, Any]) -> "StateDiff":
        diff = cls()
        for name in set(before) | set(after):
            old, new = before.get(name, _MISSING), after.get(name, _MISSING)
            if old is new:
                continue
            grown = _Appended.between(old, new)
            if grown is not None:
                diff.appended[name] = grown
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
        for name, grown in self.appended.items():
            out[name] = grown.grow(out[name]) if forward else grown.shrink(out[name])
        return out

    def revert(self, state: dict[str, Any]) -> dict[str, Any]:
        return self._move(state, forward=False)

    def apply(self, state: dict[str, Any]) -> dict[str, Any]:
        return self._move(state, forward=True)

    @property
    def empty(self) -> bool:
        return not self.full and not self.sparse and not self.appended


_MISSING = object()
