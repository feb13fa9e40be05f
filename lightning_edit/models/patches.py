"""The one registry of everything an edit hangs on a model besides changed weights.

A *patch* is a typed object with declared state: a memory read through forward hooks (T-Patcher, GRACE, WISE,
CaliNET), a router to a counterfactual model (SERAC), demonstrations put before every prompt (IKE). Patches are
attached, listed, detached and reset only through ``LoadedModel.patches`` (a ``PatchRegistry``): nothing is written
into the model's ``__dict__`` and no hook outlives its patch. Each patch kind is registered by name
(``register_patch``), so a saved patch (``config()`` as JSON, ``state_dict()`` as safetensors) can be rebuilt with
``patch_class(kind).from_saved(config, state)``.
"""
from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar, Iterator, Optional, Sequence, Type, TypeVar

import torch

from ..errors import CheckpointError, ConfigError

if TYPE_CHECKING:  # the registry is owned by a LoadedModel; only its type is needed here
    from .loading import LoadedModel

P = TypeVar("P", bound="Patch")


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
    """The patch class registered as ``kind``. The kinds are registered by the editors that make them; loading a saved
    model is the one place below the editors that needs them, so the editors package is imported here on demand."""
    if kind not in PATCH_KINDS:
        importlib.import_module(__name__.rsplit(".", 2)[0] + ".editors")
    if kind not in PATCH_KINDS:
        raise CheckpointError(f"unknown patch kind {kind!r}; known: {sorted(PATCH_KINDS)} (import lightning_edit.editors "
                              "to register the methods' patches)")
    return PATCH_KINDS[kind]


class PatchRegistry:
    """The patches attached to one model, in attachment order. Owned by its ``LoadedModel``."""

    def __init__(self, owner: "LoadedModel") -> None:
        self._owner = owner
        self._patches: dict[str, Patch] = {}

    def attach(self, patch: Patch) -> Patch:
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
