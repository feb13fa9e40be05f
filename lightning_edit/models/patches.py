"""The one registry of everything an edit hangs on a model besides changed weights.

A *patch* is a typed object with declared state: a memory read through forward hooks (T-Patcher, GRACE, WISE,
CaliNET), a router to a counterfactual model (SERAC), demonstrations put before every prompt (IKE), the keys of past
edits (AlphaEdit). Patches are attached, listed, detached and reset only through ``LoadedModel.patches`` (a
``PatchRegistry``): nothing is written into the model's ``__dict__`` and no hook outlives its patch. Each patch kind is
registered by name (``register_patch``), so a saved patch (``config()`` as JSON, ``state_dict()`` as safetensors) can
be rebuilt with ``patch_class(kind).from_saved(config, state)``.

An edit never attaches a patch by hand: it adds an *entry* to a container patch (``EntryPatch``) through the registry,
``loaded.patches.change(kind, entry)`` (or ``changing(kind)`` for an entry trained in place), and gets back a
``PatchChange``, the typed record an ``EditDelta`` keeps. The registry finds or creates the container, adds the entry,
and drops the container once its last entry is taken out: written here once for every method.

The kinds are registered by the modules that define them (the editors); this layer never imports those. Whoever
loads a saved model with patches imports ``lightning_edit.editors`` first (the front doors and
``lightning_edit.load_model`` do); a kind nobody registered is a ``CheckpointError``.
"""
from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterator, Optional, Sequence, Type, TypeVar

import torch

from ..errors import CheckpointError, ConfigError

if TYPE_CHECKING:  # the registry is owned by a LoadedModel; only its type is needed here
    from .loaded import LoadedModel

P = TypeVar("P", bound="Patch")
E = TypeVar("E", bound="EntryPatch")


class Patch(ABC):
    """A non-weight change to a model. Subclasses set ``kind`` and implement the hooks and the state."""

    kind: ClassVar[str] = ""  # registered name; written into saved patches
    key: str = ""  # the slot on the model: at most one patch per key
    changes_outputs: ClassVar[bool] = True  # False: bookkeeping only, the model computes as without it

    # ---- installing (called by the registry only) -------------------------------------------------
    def on_attach(self, loaded: "LoadedModel") -> None:
        """Register hooks on ``loaded.model``. Must leave nothing behind if it raises."""

    def on_detach(self, loaded: "LoadedModel") -> None:
        """Remove everything ``on_attach`` registered."""

    # ---- roles a patch may play besides hooks -----------------------------------------------------
    def rewrite_prompts(self, prompts: Sequence[str]) -> Optional[list[str]]:
        """The prompts as the model is to read them (IKE's demonstrations); None: this patch does not rewrite."""
        return None

    def export(self, directory: Path, base_model: str) -> None:
        """Write this patch again in another library's own format inside a saved model's ``directory`` (LoRA: a peft
        adapter folder), for tools that read that format. Never read back: ``from_saved`` rebuilds the patch."""

    # ---- declared, serialisable state -------------------------------------------------------------
    @abstractmethod
    def config(self) -> dict[str, Any]:
        """JSON-serialisable settings the patch was built with (enough, with ``state_dict``, to rebuild it)."""

    @abstractmethod
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Every tensor the patch holds, by name."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Replace the patch's tensors (names and shapes checked by the patch)."""

    @classmethod
    def from_saved(cls: Type[P], config: dict[str, Any], state: dict[str, torch.Tensor], loaded: "LoadedModel") -> P:
        """Rebuild a saved patch for ``loaded`` (not attached). Kinds that can be saved override this."""
        raise CheckpointError(f"patches of kind {cls.kind!r} cannot be rebuilt from a saved file")


class EntryPatch(Patch):
    """A container patch filled one edit at a time (IKE's contexts, SERAC's edit memory, CaliNET's memories, a hooked
    memory's state changes, AlphaEdit's keys). Edits add and remove entries only through the registry
    (``PatchRegistry.change`` / ``changing`` and ``PatchChange.detach`` / ``attach``); content rebuilt from a saved
    file belongs to no change and is never taken out by one."""

    # True: the entries are changes of one state that build on each other (a memory's state differences): they are
    # undone newest first and re-applied in the order they were made, always in the very container they were made in.
    ordered: ClassVar[bool] = False

    @abstractmethod
    def add_entry(self, entry: Any) -> None:
        """Put ``entry`` in (re-applying an edit, or a new one)."""

    @abstractmethod
    def remove_entry(self, entry: Any) -> None:
        """Take ``entry`` out (it is in: ``has_entry``)."""

    @abstractmethod
    def has_entry(self, entry: Any) -> bool:
        """Whether ``entry`` is in this container now."""

    @property
    @abstractmethod
    def empty(self) -> bool:
        """Nothing left (no entry, no saved content): the registry then detaches the container."""

    # ---- entries trained in place (``PatchRegistry.changing``) -------------------------------------
    def mark(self) -> Any:
        """The state to come back to if an in-place change fails (and to measure it from if it succeeds)."""
        raise ConfigError(f"patches of kind {self.kind!r} are not changed in place; add entries with patches.change")

    def restore(self, mark: Any) -> None:
        """Go back to ``mark`` (an in-place change failed)."""
        raise ConfigError(f"patches of kind {self.kind!r} are not changed in place")

    def entry_since(self, mark: Any) -> Any:
        """The entry an in-place change made since ``mark``; from now on it counts as one of the container's."""
        raise ConfigError(f"patches of kind {self.kind!r} are not changed in place")

    def merge_last(self, earlier: Any, later: Any) -> Optional[Any]:
        """One entry doing what ``earlier`` then ``later`` did, put in their place, where they are this container's
        two newest entries and its kind can merge (ordered kinds: a state change); else None, nothing changed."""
        return None


@dataclass(eq=False)
class PatchChange:
    """One edit's entry in one container patch of a model: the typed record an ``EditDelta`` keeps for every change
    that is not a weight difference. ``detach`` takes the entry out (the container too, once empty); ``attach`` puts
    it back (in a new container made as the first one was, if the model has none)."""

    kind: str  # the container's registered kind
    key: str  # the container's slot on the model
    entry: Any = field(repr=False)  # what the edit added (the container's own entry type)
    container: EntryPatch = field(repr=False)  # the container the entry is in (ordered kinds: only ever this one)
    create: Callable[[], EntryPatch] = field(repr=False)  # makes an empty container of this kind for this model
    created: bool = False  # this change made the container
    summary: dict = field(default_factory=dict)  # what the method reports about the change (steps, sizes)

    @property
    def changes_outputs(self) -> bool:
        """False for bookkeeping (AlphaEdit's keys): the model computes as without the entry."""
        return type(self.container).changes_outputs

    def detach(self, loaded: "LoadedModel") -> None:
        loaded.patches.revert(self)

    def attach(self, loaded: "LoadedModel") -> None:
        loaded.patches.reapply(self)

    def to_dict(self) -> dict[str, Any]:
        """The record as JSON: which container, which kind, what the method said about it."""
        return {"kind": self.kind, "key": self.key, "created": self.created, "changes_outputs": self.changes_outputs,
                "summary": dict(self.summary)}


@dataclass
class PendingChange:
    """An in-place change under way (``PatchRegistry.changing``): its container now, its record once it succeeded."""

    container: EntryPatch
    created: bool
    change: Optional[PatchChange] = None


PATCH_KINDS: dict[str, Type[Patch]] = {}


def register_patch(cls: Type[P]) -> Type[P]:
    """Class decorator: make a patch kind loadable by its ``kind`` name."""
    if not cls.kind:
        raise ValueError(f"{cls.__name__} must set a 'kind' to be registered")
    if PATCH_KINDS.get(cls.kind, cls) is not cls:
        raise ValueError(f"patch kind {cls.kind!r} registered twice")
    PATCH_KINDS[cls.kind] = cls
    return cls


def patch_class(kind: str) -> Type[Patch]:
    """The patch class registered as ``kind`` (registered by the module defining it: import lightning_edit.editors
    before loading a saved model that carries patches)."""
    if not isinstance(kind, str) or kind not in PATCH_KINDS:
        raise CheckpointError(f"unknown patch kind {kind!r}; known: {sorted(PATCH_KINDS)} (import lightning_edit.editors "
                              "to register the methods' patches, or load with lightning_edit.load_model)")
    return PATCH_KINDS[kind]


class PatchRegistry:
    """The patches attached to one model, in attachment order. Owned by its ``LoadedModel``."""

    def __init__(self, owner: "LoadedModel") -> None:
        self._owner = owner
        self._patches: dict[str, Patch] = {}

    def attach(self, patch: P) -> P:
        if not isinstance(patch, Patch):
            raise ConfigError(f"only Patch objects can be attached to a model, got {type(patch).__name__}")
        if not patch.key:
            raise ConfigError(f"{type(patch).__name__} has no key; every patch names its slot on the model")
        if patch.key in self._patches:
            raise CheckpointError(f"the model already carries a {patch.key!r} patch; undo those edits before attaching another")
        patch.on_attach(self._owner)
        self._patches[patch.key] = patch
        return patch

    def detach(self, patch_or_key: "Patch | str") -> Patch:
        key = patch_or_key if isinstance(patch_or_key, str) else patch_or_key.key
        patch = self._patches.get(key)
        if patch is None or (not isinstance(patch_or_key, str) and patch is not patch_or_key):
            raise CheckpointError(f"the model does not carry this {key!r} patch; undo edits in reverse order")
        try:
            patch.on_detach(self._owner)
        finally:
            del self._patches[key]
        return patch

    # ---- edits' entries: find or create the container, add, drop it when empty (for every method) ------------
    def change(self, kind: Type[E], entry: Any, *, key: Optional[str] = None,
               create: Optional[Callable[[], E]] = None) -> PatchChange:
        """Add ``entry`` to the ``kind`` container at ``key`` (default ``kind.key``); a model without one gets one
        made by ``create`` (default ``kind()``). All or nothing."""
        key, make = key or kind.key, create or kind
        current = self._carried(kind, key)
        container = current if current is not None else self._new_container(kind, key, make)
        self._add(container, entry, attach=current is None)
        return PatchChange(container.kind, key, entry, container, make, created=current is None)

    @contextlib.contextmanager
    def changing(self, kind: Type[E], *, key: Optional[str] = None,
                 create: Optional[Callable[[], E]] = None) -> Iterator[PendingChange]:
        """Change the ``kind`` container at ``key`` in place (a memory trained where it hangs), found or made by
        ``create`` and attached. On any exception it goes back to how it was (and off the model if made here); on
        success ``pending.change`` is the record of the entry the change made."""
        key, make = key or kind.key, create or kind
        container = self._carried(kind, key)
        created = container is None
        if container is None:
            container = self.attach(self._new_container(kind, key, make))
        mark = container.mark()
        pending = PendingChange(container, created)
        try:
            yield pending
        except BaseException:
            container.restore(mark)
            if created:
                self.detach(container)
            raise
        pending.change = PatchChange(container.kind, key, container.entry_since(mark), container, make, created=created)

    def merge(self, earlier: PatchChange, later: PatchChange) -> Optional[PatchChange]:
        """One change doing what ``earlier`` then ``later`` did, in their place, where both are the newest entries of
        one ordered container the model carries: a sequence undone as a whole then keeps one record per memory,
        not one per edit (WISE on smollm2: 3 MB a record). None where they cannot merge; nothing changed then."""
        container = later.container
        if not container.ordered or earlier.container is not container or self._patches.get(later.key) is not container:
            return None
        merged = container.merge_last(earlier.entry, later.entry)
        if merged is None:
            return None
        edits = earlier.summary.get("merged_edits", 1) + later.summary.get("merged_edits", 1)
        return PatchChange(later.kind, later.key, merged, container, earlier.create, created=earlier.created,
                           summary={**later.summary, "merged_edits": edits})

    def revert(self, change: PatchChange) -> None:
        """Take ``change``'s entry out, and its container off the model once empty. Safe to repeat. An entry whose
        container is gone (reset, rolled back) has nothing left to undo, but for ordered kinds, which must find the
        container they were made in."""
        current = self._patches.get(change.key)
        if change.container.ordered and current is not change.container:
            raise CheckpointError(f"{change.key}: the model does not carry the patch this edit was made in; undo edits "
                                  "in reverse order and re-apply them in the order they were made")
        if not isinstance(current, type(change.container)):
            return
        if current.has_entry(change.entry):
            current.remove_entry(change.entry)
        if current.empty:
            self.detach(current)

    def reapply(self, change: PatchChange) -> None:
        """Put ``change``'s entry back: into the container the model carries at its key, else into a new one made as
        the first was (an ordered kind: its own container, put back by the change that made it)."""
        kind, own = type(change.container), change.container
        current = self._carried(kind, change.key)
        if own.ordered and current is not own and (current is not None or not change.created or not own.empty):
            raise CheckpointError(f"{change.key}: the model does not carry the patch this edit was made in; re-apply "
                                  "edits in the order they were made, on the model they were undone from")
        container = current if current is not None else own if own.ordered else self._new_container(kind, change.key, change.create)
        if not container.has_entry(change.entry):
            self._add(container, change.entry, attach=current is None)
        change.container = container

    def _carried(self, kind: Type[E], key: str) -> Optional[E]:
        current = self._patches.get(key)
        if current is not None and not isinstance(current, kind):
            raise CheckpointError(f"model {self._owner.name!r} already carries a {key!r} patch of another kind "
                                  f"({type(current).__name__}, not {kind.__name__}); undo that edit first")
        return current

    @staticmethod
    def _new_container(kind: Type[E], key: str, create: Callable[[], E]) -> E:
        container = create()
        if not isinstance(container, kind):
            raise ConfigError(f"{key}: the container made is a {type(container).__name__}, not a {kind.__name__}")
        container.key = key
        return container

    def _add(self, container: EntryPatch, entry: Any, attach: bool) -> None:
        """The entry goes in first (a container's hooks are those of its entries), then the container on the model."""
        container.add_entry(entry)
        if not attach:
            return
        try:
            self.attach(container)
        except BaseException:
            container.remove_entry(entry)
            raise

    # ---- reading ---------------------------------------------------------------------------------------------
    def get(self, key: str) -> Optional[Patch]:
        return self._patches.get(key)

    def reset(self) -> None:
        """Detach every patch, newest first (as a fresh model)."""
        for key in reversed(list(self._patches)):
            self.detach(key)

    def rewrite_prompts(self, prompts: Sequence[str]) -> list[str]:
        prompts = list(prompts)
        for patch in self._patches.values():
            rewritten = patch.rewrite_prompts(prompts)
            if rewritten is not None:
                prompts = list(rewritten)
        return prompts

    @property
    def rewrites_prompts(self) -> bool:
        return any(type(p).rewrite_prompts is not Patch.rewrite_prompts for p in self._patches.values())

    def __iter__(self) -> Iterator[Patch]:
        return iter(list(self._patches.values()))

    def __len__(self) -> int:
        return len(self._patches)

    def __contains__(self, key: str) -> bool:
        return key in self._patches

    def keys(self) -> list[str]:
        return list(self._patches)

    def __repr__(self) -> str:
        return f"PatchRegistry({', '.join(f'{k}: {type(p).__name__}' for k, p in self._patches.items()) or 'empty'})"
