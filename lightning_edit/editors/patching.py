"""Shared machinery of editors that add a memory to a model instead of rewriting its weights
(T-Patcher's neurons, GRACE's codebook, WISE's side memory).

- ``EditMemory``: the memory itself. It lives on the model under ``MEMORY_ATTRIBUTE`` (a plain dict in the
  module's ``__dict__``, so it is neither a submodule nor part of ``state_dict``) and acts through forward
  hooks that ``install`` registers and ``uninstall`` removes. Its contents are a dict of values that are
  replaced, never written into, so a state is a cheap dict of references.
- ``MemoryEdit``: the patch one edit returns (``EditDelta.patches``). It holds what that edit changed in
  the memory (``StateDiff``); ``detach`` reverts exactly that, and the edit that created the memory also
  uninstalls it, so undoing every edit in reverse leaves the model without a hook or attribute.
- ``editing_memory``: the context manager an editor's ``_apply`` runs its training in: it finds or creates
  the memory and, if the training raises, restores the memory and removes it if it was new.
- ``TailRunner``: re-runs only the blocks from the edited one on, replaying the inputs recorded from one
  full pass, so a training step costs a few blocks instead of the whole network.
- ``load_memory_pool`` / ``collect_inputs``: unrelated prompts (WikiText, training-split probes) and a
  module's inputs on them, the "memory" that patches must not fire on.
"""
from __future__ import annotations

import contextlib
import logging
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, Sequence

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError
from ..hooks import hooks, run_until, trace
from ..models.loading import LoadedModel
from ..models.teacher_forcing import TargetBatch, build_target_batch

log = logging.getLogger(__name__)

MEMORY_ATTRIBUTE = "_lightning_edit_memories"


# ---- the memory on the model ----------------------------------------------------------------------

class EditMemory(ABC):
    """A memory attached to one model through forward hooks.

    ``values`` holds everything the memory knows (tensors, lists, numbers); subclasses replace entries,
    never mutate them in place, so ``state()`` can hand out references.
    """

    key: str = "memory"  # one memory per key on a model

    def __init__(self, signature: dict) -> None:
        self.signature = dict(signature)  # the settings it was built with; a later edit must match them
        self.values: dict[str, Any] = {}
        self._handles: list = []

    @abstractmethod
    def register_hooks(self, model: nn.Module) -> list:
        """Register this memory's forward hooks on ``model``; return their handles."""

    def install(self, model: nn.Module) -> None:
        memories = model.__dict__.setdefault(MEMORY_ATTRIBUTE, {})
        if self.key in memories:
            raise CheckpointError(f"the model already carries a {self.key} memory; undo those edits before attaching another")
        self._handles = list(self.register_hooks(model))
        memories[self.key] = self

    def uninstall(self, model: nn.Module) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        memories = model.__dict__.get(MEMORY_ATTRIBUTE, {})
        if memories.get(self.key) is self:
            del memories[self.key]
        if not memories:
            model.__dict__.pop(MEMORY_ATTRIBUTE, None)

    def state(self) -> dict[str, Any]:
        return dict(self.values)

    def load_state(self, state: dict[str, Any]) -> None:
        self.values = dict(state)


def find_memory(model: nn.Module, key: str) -> Optional[EditMemory]:
    """The memory of kind ``key`` attached to ``model``, if any."""
    return model.__dict__.get(MEMORY_ATTRIBUTE, {}).get(key)


# ---- what one edit changed ------------------------------------------------------------------------

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


@dataclass
class MemoryEdit:
    """The patch of one edit: what it added to the model's memory (a ``ModelPatch``)."""

    memory: EditMemory
    created: bool  # this edit installed the memory (and so removes it when detached)
    diff: StateDiff
    summary: dict = field(default_factory=dict)

    def _current(self, loaded: LoadedModel) -> EditMemory:
        current = find_memory(loaded.model, self.memory.key)
        if current is not self.memory:
            raise CheckpointError(
                f"{self.memory.key}: the model does not carry the memory this edit was made in; undo edits in reverse "
                "order and re-apply them in the order they were made"
            )
        return current

    def detach(self, loaded: LoadedModel) -> None:
        memory = self._current(loaded)
        memory.load_state(self.diff.revert(memory.state()))
        if self.created:
            memory.uninstall(loaded.model)

    def attach(self, loaded: LoadedModel) -> None:
        if self.created:
            if find_memory(loaded.model, self.memory.key) is not None:
                raise CheckpointError(f"{self.memory.key}: the model already carries a memory; this edit created its own")
            self.memory.install(loaded.model)
        memory = self._current(loaded)
        memory.load_state(self.diff.apply(memory.state()))


@dataclass
class MemorySession:
    memory: EditMemory
    created: bool
    patch: Optional[MemoryEdit] = None


@contextlib.contextmanager
def editing_memory(loaded: LoadedModel, key: str, factory: Callable[[], EditMemory], signature: dict) -> Iterator[MemorySession]:
    """Find (or create and install) the model's ``key`` memory for one edit.

    On success ``session.patch`` holds the edit's ``MemoryEdit``; on any exception the memory is put back
    as it was (and uninstalled if this edit created it) before the exception propagates.
    """
    memory = find_memory(loaded.model, key)
    created = memory is None
    if created:
        memory = factory()
        memory.install(loaded.model)
    elif memory.signature != signature:
        changed = sorted(k for k in set(signature) | set(memory.signature) if signature.get(k) != memory.signature.get(k))
        raise ConfigError(
            f"the model already carries a {key} memory built with other settings ({changed}: "
            f"{[memory.signature.get(k) for k in changed]} → {[signature.get(k) for k in changed]}); undo those edits first"
        )
    before = memory.state()
    session = MemorySession(memory, created)
    try:
        yield session
    except BaseException:
        memory.load_state(before)
        if created:
            memory.uninstall(loaded.model)
        raise
    session.patch = MemoryEdit(memory, created, StateDiff.between(before, memory.state()))


# ---- running the top of the network only ----------------------------------------------------------

class TailRunner:
    """Logits of ``batch`` computed from block ``start`` on, replaying what the blocks received in one
    full pass (hidden states, masks, position embeddings). Edits at block ``start`` or later cannot change
    those inputs, so each training step costs the top blocks and the head only.

    The replay is checked against the full pass once; where it does not reproduce the logits (a family
    with extra scaling after the final norm) every call runs the whole model instead. ``logits()`` returns
    only the rows that predict target tokens, (N, vocab), matching ``self.labels`` (N,).
    """

    def __init__(self, loaded: LoadedModel, batch: TargetBatch, start: int):
        self.loaded = loaded
        self.batch = batch
        layout, model = loaded.layout, loaded.model
        self.blocks = layout.module(model, layout.blocks)
        self.start = start
        self.final_norm = layout.module(model, layout.final_norm)
        self.lm_head = layout.module(model, layout.lm_head)
        self.records: dict[int, tuple[tuple, dict]] = {}
        self.at_targets = batch.labels != -100
        self.labels = batch.labels[self.at_targets]

        def recorder(i: int):
            def pre_hook(module, args, kwargs):
                self.records[i] = (args, dict(kwargs))
            return pre_hook

        n = len(self.blocks)
        with torch.no_grad(), hooks(lambda: [self.blocks[i].register_forward_pre_hook(recorder(i), with_kwargs=True)
                                             for i in range(start, n)]):
            full = self._full()
            self.replay_ok = len(self.records) == n - start
            if self.replay_ok:
                try:
                    replayed = self._replay()
                    full = full[self.at_targets]
                    self.replay_ok = replayed.shape == full.shape and torch.allclose(replayed, full, atol=1e-4, rtol=1e-3)
                except (TypeError, RuntimeError, KeyError) as err:  # a block that cannot be re-called alone
                    log.debug("tail replay unavailable: %s", err)
                    self.replay_ok = False
        if not self.replay_ok:
            self.records.clear()

    def _full(self) -> torch.Tensor:
        return self.loaded.model(**self.batch.model_inputs(), use_cache=False).logits

    def _replay(self) -> torch.Tensor:
        args, kwargs = self.records[self.start]
        hidden = args[0] if args else kwargs["hidden_states"]
        for i in range(self.start, len(self.blocks)):
            args, kwargs = self.records[i]
            if args:
                out = self.blocks[i](hidden, *args[1:], **kwargs)
            else:
                out = self.blocks[i](**{**kwargs, "hidden_states": hidden})
            hidden = out[0] if isinstance(out, (tuple, list)) else out
        # The final norm works per position: normalising only the target rows gives the same logits.
        return self.lm_head(self.final_norm(hidden[self.at_targets]))

    def logits(self) -> torch.Tensor:
        return self._replay() if self.replay_ok else self._full()[self.at_targets]


def target_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood of the labelled (target) tokens."""
    mask = labels != -100
    logp = torch.log_softmax(logits.float(), dim=-1)
    token_logp = logp.gather(-1, labels.clamp(min=0)[..., None]).squeeze(-1)
    return -(token_logp * mask).sum() / mask.sum()


def target_hits(logits: torch.Tensor, labels: torch.Tensor) -> bool:
    """Whether every labelled token is the argmax (teacher-forced exact match)."""
    mask = labels != -100
    return bool((logits.argmax(-1)[mask] == labels[mask]).all())


def prediction_positions(batch: TargetBatch) -> torch.Tensor:
    """(batch, length) mask of the positions whose logits predict a target token."""
    return batch.labels != -100


def valid_positions(loaded: LoadedModel, batch: TargetBatch) -> torch.Tensor:
    """(batch, length) mask of real (non-padding) positions of the stream the edited blocks see."""
    if loaded.layout.is_encoder_decoder:
        return batch.labels != -100  # the decoder reads the target, shifted; padding carries no label
    return batch.attention_mask.bool()


# ---- unrelated prompts ----------------------------------------------------------------------------

POOL_SOURCES = ("wikitext", "zsre-train", "counterfact-train")


def _wikitext_pairs(n: int) -> list[tuple[str, str]]:
    """Sentences of the WikiText-2 excerpt shipped with the package, cut into (prompt, next three words)."""
    from ..data import STATS_TEXT_PATH

    path = STATS_TEXT_PATH
    pairs: list[tuple[str, str]] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("="):
            continue
        for sentence in re.split(r"(?<=\.) ", line):
            words = sentence.replace(" @-@ ", "-").replace(" @,@ ", ",").replace(" @.@ ", ".").split()
            if len(words) < 10:
                continue
            cut = min(len(words) - 3, 16)
            pairs.append((" ".join(words[:cut]), " ".join(words[cut: cut + 3])))
            if len(pairs) >= n:
                return pairs
    return pairs


def _dataset_pairs(name: str, n: int, data_dir: Optional[str]) -> list[tuple[str, str]]:
    """Training-split requests: their locality probes and their edit prompts with the true answer."""
    from ..data import load_requests

    pairs: list[tuple[str, str]] = []
    for r in load_requests(name, n=n, data_dir=data_dir):
        pairs.extend((p.prompt, p.answer) for p in r.locality)
        if r.target_true:
            pairs.append((r.prompt, r.target_true))
    return pairs[:n]


def load_memory_pool(spec: Sequence[str], data_dir: Optional[str] = None) -> list[tuple[str, str]]:
    """(prompt, continuation) pairs unrelated to any evaluated edit, from ``"source:count"`` entries of
    ``memory_pool`` (sources: wikitext, zsre-train, counterfact-train; training splits only)."""
    pairs: list[tuple[str, str]] = []
    for entry in spec:
        source, _, count = str(entry).partition(":")
        if source not in POOL_SOURCES or not count.isdigit():
            raise ConfigError(f"field 'memory_pool' holds {entry!r}; write 'source:count' with source one of {POOL_SOURCES}")
        if source == "wikitext":
            pairs.extend(_wikitext_pairs(int(count)))
        else:
            pairs.extend(_dataset_pairs(source, int(count), data_dir))
    return pairs


@torch.no_grad()
def collect_inputs(loaded: LoadedModel, module_name: str, pairs: Sequence[tuple[str, str]], batch_size: int = 32) -> list[torch.Tensor]:
    """What ``module_name`` receives (first positional input) at every real position of each pair's
    prompt+continuation: one (positions, features) tensor per pair. Stops each pass after the module."""
    # Similar lengths share a batch (little padding: a quarter less time on a 600-prompt pool); results in input order.
    order = sorted(range(len(pairs)), key=lambda k: len(pairs[k][0]) + len(pairs[k][1]))
    out: list[Optional[torch.Tensor]] = [None] * len(pairs)
    for i in range(0, len(order), batch_size):
        rows = order[i: i + batch_size]
        batch = build_target_batch(loaded, [pairs[k][0] for k in rows], [pairs[k][1] for k in rows])
        with trace(loaded.model, [module_name], keep_input=True, keep_output=False, stop_after=module_name) as tr:
            run_until(lambda: loaded.model(**batch.model_inputs(), use_cache=False))
        inputs = tr[module_name].input
        valid = valid_positions(loaded, batch)
        for row, k in enumerate(rows):
            out[k] = inputs[row][valid[row]].clone()
    return out  # type: ignore[return-value]  # every slot filled


def parent_name(module_name: str) -> str:
    """``a.b.c`` → ``a.b`` (the FFN holding an output projection)."""
    if "." not in module_name:
        raise ConfigError(f"module {module_name!r} has no parent module")
    return module_name.rsplit(".", 1)[0]


def resolve_block(layer: int, n_layers: int, field_name: str = "layer") -> int:
    index = layer + n_layers if layer < 0 else layer
    if not 0 <= index < n_layers:
        raise ConfigError(f"field '{field_name}' holds {layer}, outside the model's {n_layers} blocks")
    return index
