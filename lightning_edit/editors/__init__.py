"""Editing methods, each behind the one contract in ``base.py``. Importing this package registers them."""
from .base import EDITORS, EditDelta, Editor, HyperParams, build_editor, get_editor_class, register_editor
from . import ft  # noqa: F401  (registers ft-l, ft-m)

__all__ = ["EDITORS", "EditDelta", "Editor", "HyperParams", "build_editor", "get_editor_class", "register_editor"]
from . import rome, memit, alphaedit  # noqa: F401  (registers rome, memit, alphaedit)
