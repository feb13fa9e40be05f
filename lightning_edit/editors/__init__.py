"""Editing methods, each behind the one contract in ``base.py``. Importing this package registers them."""
from .base import EDITORS, EditDelta, Editor, HyperParams, build_editor, get_editor_class, register_editor
from . import ft  # noqa: F401  (registers ft-l, ft-m)
from . import kn  # noqa: F401  (registers kn)
from . import ike  # noqa: F401  (registers ike)
from . import calinet  # noqa: F401  (registers calinet)
from . import grace  # noqa: F401  (registers grace)
from . import tpatcher  # noqa: F401  (registers t-patcher)
from . import wise  # noqa: F401  (registers wise)
from . import mend  # noqa: F401
from . import ke  # noqa: F401
from . import serac  # noqa: F401

__all__ = ["EDITORS", "EditDelta", "Editor", "HyperParams", "build_editor", "get_editor_class", "register_editor"]
from . import rome, memit, alphaedit  # noqa: F401  (registers rome, memit, alphaedit)
