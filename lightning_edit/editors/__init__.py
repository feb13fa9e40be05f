"""Editing methods, each behind the one contract in ``base.py``, grouped by family:

- ``ft.py``, ``lora.py``: fine-tuning (FT-L, FT-M) and LoRA adapters (through peft's settings and format);
- ``locate/``: locate-then-edit (ROME, r-ROME, MEMIT, EMMET, PMET, AlphaEdit, KN);
- ``memory/``: additions to the model through its patch registry (T-Patcher, GRACE, WISE, CaliNET, IKE);
- ``lifelong/``: long sequences of edits with state carried on the model (UltraEdit);
- ``learned/``: trained editors, one folder each with its LightningModule and settings (MEND, MALMEN, KE,
  SERAC).

Importing this package registers them all in ``EDITORS``.
"""
from .base import EDITORS, EditDelta, Editor, HyperParams, build_editor, get_editor_class, register_editor

# Each import registers its method(s) in EDITORS.
from . import ft, lora  # noqa: F401,E402
from . import lifelong, locate, learned, memory  # noqa: F401,E402

__all__ = ["EDITORS", "EditDelta", "Editor", "HyperParams", "build_editor", "get_editor_class", "register_editor"]
