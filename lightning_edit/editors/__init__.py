"""Editing methods, each behind the one contract in ``base.py``. Importing this package registers them."""
from .base import EDITORS, EditDelta, Editor, HyperParams, build_editor, get_editor_class, register_editor

# Each import registers its method(s) in EDITORS.
from . import ft  # noqa: F401,E402  (ft-l, ft-m)
from . import rome, memit, alphaedit, kn  # noqa: F401,E402  (locate-then-edit)
from . import calinet, ike  # noqa: F401,E402
from . import mend, ke, serac  # noqa: F401,E402  (trained editors)
from . import grace, tpatcher, wise  # noqa: F401,E402  (memory-based, for long edit sequences)

__all__ = ["EDITORS", "EditDelta", "Editor", "HyperParams", "build_editor", "get_editor_class", "register_editor"]
