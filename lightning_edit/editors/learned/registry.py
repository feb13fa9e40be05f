"""The learnt methods, each registered by its own folder (``mend/``, ``malmen/``, ``ke/``,
``serac/``): its editor, its training
settings and its LightningModule. ``train.py`` finds what it trains here (``training/registry.py``); editing never
needs the module, so it is imported only when asked for (it brings Lightning)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Type

from .hypernetwork import LearnedEditor
from .settings import TrainingConfig

if TYPE_CHECKING:
    from .module import EditorModule


@dataclass(frozen=True)
class LearntMethod:
    editor: Type[LearnedEditor]
    training: Type[TrainingConfig]
    load_module: Callable[[], "Type[EditorModule]"]  # imports the method's module.py on first use

    @property
    def name(self) -> str:
        return self.editor.name

    def module(self) -> "Type[EditorModule]":
        return self.load_module()


LEARNT_METHODS: dict[str, LearntMethod] = {}


def register_learnt(editor: Type[LearnedEditor], training: Type[TrainingConfig],
                    load_module: Callable[[], "Type[EditorModule]"]) -> LearntMethod:
    """Record a learnt method under its editor's name (once: a second registration of the name is a bug)."""
    if editor.name in LEARNT_METHODS:
        raise ValueError(f"learnt method {editor.name!r} registered twice")
    method = LearntMethod(editor, training, load_module)
    LEARNT_METHODS[editor.name] = method
    return method
