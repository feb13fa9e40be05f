"""Shared machinery of editors that add a memory to a model instead of rewriting its weights
(T-Patcher's neurons, GRACE's codebook, WISE's side memory).

- ``HookedMemory``: the memory itself, a container patch in the model's registry (``loaded.patches``) that acts
  through forward hooks it registers when attached and removes when detached. Its contents are a dict of values that
  are replaced, never written into, so a state is a cheap dict of references. Its entries are the edits' state
  differences (``StateDiff``): ordered, each undone newest first and re-applied in order.
- ``editing_memory``: the context manager an editor's ``_apply`` runs its training in: the registry's in-place change
  (``loaded.patches.changing``) finds or creates the memory, puts it back if the training raises, and records what
  the edit changed as a ``PatchChange`` (``session.change``), which ``EditDelta`` undoes and re-applies.

The replay of the network's top (``models/tail.py``) and the inputs on unrelated prompts (``pool.py``; the prompts
themselves from ``data/pools.py``) live beside this.
"""
from __future__ import annotations

import contextlib
import logging
from abc import abstractmethod
from typing import Any, Callable, Iterator, Optional

import torch
from torch import nn

from ...errors import CheckpointError, ConfigError
from ...hooks import collect_handles, remove_handles
from ...models.loaded import LoadedModel
from ...models.patches import EntryPatch, PendingChange
from ...models.placement import module_device
from .state_diff import StateDiff

log = logging.getLogger(__name__)


# ---- the memory on the model ----------------------------------------------------------------------

class HookedMemory(EntryPatch):
    """A memory attached to one model through forward hooks, held in the model's patch registry.

    ``values`` holds everything the memory knows (tensors, tuples, numbers); subclasses replace entries,
    never mutate them in place, so ``state()`` can hand out references. Its registry entries are the state
    differences of the edits made in it (``StateDiff``), which build on each other: ``ordered``.
    """

    key: str = "memory"  # one memory per key on a model
    ordered = True

    def __init__(self, signature: dict) -> None:
        self.signature = dict(signature)  # the settings it was built with; a later edit must match them
        self.values: dict[str, Any] = {}
        self._handles: list = []
        self._diffs: list[StateDiff] = []  # the edits' changes it holds, oldest first
        self._saved = False  # rebuilt from a saved file: content that no change of this session takes out

    @abstractmethod
    def register_hooks(self, model: nn.Module) -> Iterator:
        """Register this memory's forward hooks on ``model``, yielding each handle as it is made (a failure halfway
        then removes those already registered: ``collect_handles``)."""

    def on_attach(self, loaded: LoadedModel) -> None:
        self._handles = collect_handles(self.register_hooks(loaded.model))

    def on_detach(self, loaded: LoadedModel) -> None:
        remove_handles(self._handles)

    def state(self) -> dict[str, Any]:
        return dict(self.values)

    def load_state(self, state: dict[str, Any]) -> None:
        self.values = dict(state)

    # ---- entries (EntryPatch): the edits' state differences ------------------------------------------
    def add_entry(self, entry: StateDiff) -> None:
        self.load_state(entry.apply(self.state()))
        self._diffs.append(entry)

    def remove_entry(self, entry: StateDiff) -> None:
        self.load_state(entry.revert(self.state()))
        self._diffs = [d for d in self._diffs if d is not entry]  # by identity: diffs hold tensors, == is elementwise

    def has_entry(self, entry: Any) -> bool:
        return any(d is entry for d in self._diffs)

    @property
    def empty(self) -> bool:
        return not self._diffs and not self._saved

    def mark(self) -> dict[str, Any]:
        return self.state()

    def restore(self, mark: dict[str, Any]) -> None:
        self.load_state(mark)

    def entry_since(self, mark: dict[str, Any]) -> StateDiff:
        diff = StateDiff.between(mark, self.state())
        self._diffs.append(diff)
        return diff

    def merge_last(self, earlier: StateDiff, later: StateDiff) -> Optional[StateDiff]:
        if len(self._diffs) < 2 or self._diffs[-2] is not earlier or self._diffs[-1] is not later:
            return None
        now = self.state()
        merged = StateDiff.between(earlier.revert(later.revert(now)), now)
        self._diffs[-2:] = [merged]
        return merged

    # ---- the declared state (Patch) ---------------------------------------------------------------
    # ``values`` are split into plain JSON (numbers, labels, None) and tensors; a tuple of tensors (WISE's shards)
    # is saved as ``name/0``, ``name/1``...; tuples come back as tuples.
    module_name: str = ""

    def config(self) -> dict[str, Any]:
        plain, tensors = {}, {}
        for k, v in self.values.items():
            if isinstance(v, torch.Tensor):
                tensors[k] = "tensor"
            elif isinstance(v, tuple) and v and all(isinstance(x, torch.Tensor) for x in v):
                tensors[k] = len(v)
            else:
                plain[k] = list(v) if isinstance(v, tuple) else v
        return {"signature": self.signature, "module": self.module_name, "values": plain, "tensor_values": tensors}

    def state_dict(self) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        for k, v in self.values.items():
            if isinstance(v, torch.Tensor):
                out[k] = v
            elif isinstance(v, tuple) and v and all(isinstance(x, torch.Tensor) for x in v):
                out.update({f"{k}/{i}": x for i, x in enumerate(v)})
        return out

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        current = self.state_dict()
        if set(state) != set(current):
            raise CheckpointError(f"{self.key} memory: saved tensors {sorted(state)} differ from the memory's {sorted(current)}")
        layout = self.config()["tensor_values"]
        self.values = {**self.values, **self._assemble(layout, state)}

    @staticmethod
    def _assemble(layout: dict[str, Any], state: dict[str, torch.Tensor]) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name, how in layout.items():
            if how == "tensor":
                values[name] = state[name]
            else:
                values[name] = tuple(state[f"{name}/{i}"] for i in range(int(how)))
        return values

    @classmethod
    def empty_for(cls, loaded: LoadedModel, config: dict[str, Any]) -> "HookedMemory":
        """An empty memory of this kind for ``loaded``, built from a saved ``config`` (its module checked)."""
        raise CheckpointError(f"memory kind {cls.kind!r} cannot be rebuilt from a saved file")

    def check_values(self, template: dict[str, Any]) -> None:
        """Raise CheckpointError if the restored ``values`` do not fit this memory. Here: each tensor the empty memory
        (``template``) holds comes back with its dtype and shape (any length where the template's is 0, a growing
        memory). Subclasses add what links the entries (counts, optional tensors)."""
        for name, empty in template.items():
            if isinstance(empty, torch.Tensor):
                shape = tuple(None if i == 0 and empty.shape[0] == 0 else s for i, s in enumerate(empty.shape))
                self.expect(name, self.values[name], shape, empty.dtype)

    @classmethod
    def from_saved(cls, config: dict[str, Any], state: dict[str, torch.Tensor], loaded: LoadedModel) -> "HookedMemory":
        memory = cls.empty_for(loaded, config)
        layout = config["tensor_values"]
        expected = {f"{n}/{i}" for n, how in layout.items() if how != "tensor" for i in range(int(how))}
        expected |= {n for n, how in layout.items() if how == "tensor"}
        if set(state) != expected:
            raise CheckpointError(f"{cls.kind}: saved tensors {sorted(state)[:4]} do not match the declared {sorted(expected)[:4]}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in config["values"].items()}
        values.update(cls._assemble(layout, state))
        if set(values) != set(memory.values):
            raise CheckpointError(f"{cls.kind}: saved entries {sorted(values)} differ from this memory's {sorted(memory.values)}")
        template, memory.values = memory.values, values
        memory.check_values(template)
        memory._saved = True
        return memory

    def expect(self, name: str, tensor: Any, shape: tuple, dtype: torch.dtype) -> None:
        """``tensor`` (entry ``name``) has exactly ``shape`` (None: any size there) and ``dtype``."""
        if not isinstance(tensor, torch.Tensor):
            raise CheckpointError(f"{self.kind}: saved entry {name!r} is not a tensor")
        ok = tensor.dim() == len(shape) and all(s is None or s == t for s, t in zip(shape, tensor.shape))
        if not ok or tensor.dtype != dtype:
            raise CheckpointError(f"{self.kind}: saved {name!r} is {tensor.dtype} {list(tensor.shape)}; this model needs "
                                  f"{dtype} {['*' if s is None else s for s in shape]} (load the model in the dtype it was saved in)")


def hidden_size(loaded: LoadedModel) -> int:
    """Width of the residual stream (what an FFN reads and writes)."""
    return int(loaded.model.get_input_embeddings().weight.shape[1])


def saved_module(loaded: LoadedModel, config: dict[str, Any], kind: str) -> str:
    """The saved memory's module name, checked to exist in ``loaded``."""
    name = config["module"]
    try:
        loaded.model.get_submodule(name)
    except AttributeError as err:
        raise CheckpointError(f"{kind}: the saved memory sits on module {name!r}, which model {loaded.name!r} lacks") from err
    return name


class FFNMemory(HookedMemory):
    """A memory on one FFN module, built as ``cls(signature, module_name, d_in, d_out, device, dtype)`` (GRACE's codebook,
    T-Patcher's neurons): an empty one for a saved config is made the same way for both."""

    @classmethod
    def empty_for(cls, loaded: LoadedModel, config: dict) -> "FFNMemory":
        module_name = saved_module(loaded, config, cls.kind)
        module = loaded.model.get_submodule(module_name)
        hidden = hidden_size(loaded)
        return cls(dict(config["signature"]), module_name, hidden, hidden, module_device(module), next(module.parameters()).dtype)


def find_memory(loaded: LoadedModel, key: str) -> Optional[HookedMemory]:
    """The memory of kind ``key`` attached to ``loaded``, if any."""
    patch = loaded.patches.get(key)
    return patch if isinstance(patch, HookedMemory) else None




@contextlib.contextmanager
def editing_memory(loaded: LoadedModel, key: str, factory: Callable[[], HookedMemory], signature: dict) -> Iterator[PendingChange]:
    """Find (or create and install) the model's ``key`` memory for one edit (``session.container``).

    On success ``session.change`` holds the edit's ``PatchChange``; on any exception the memory is put back as it
    was (and uninstalled if this edit created it) before the exception propagates.
    """
    memory = find_memory(loaded, key)
    if memory is not None and memory.signature != signature:
        changed = sorted(k for k in set(signature) | set(memory.signature) if signature.get(k) != memory.signature.get(k))
        raise ConfigError(
            f"the model already carries a {key} memory built with other settings ({changed}: "
            f"{[memory.signature.get(k) for k in changed]} → {[signature.get(k) for k in changed]}); undo those edits first"
        )
    with loaded.patches.changing(HookedMemory, key=key, create=factory) as session:
        yield session
