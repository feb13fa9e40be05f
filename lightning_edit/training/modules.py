"""The learnt editors' LightningModules, kept importable here for ``train.py`` users: they live with their methods
(``editors/learned/module.py``: ``EditorModule``; ``editors/learned/<method>/module.py``)."""
from typing import Type

from ..editors.learned.ke.module import KEModule
from ..editors.learned.malmen.module import MALMENModule
from ..editors.learned.mend.module import MENDModule
from ..editors.learned.module import EditorModule, joint_rows
from ..editors.learned.serac.module import SERACModule, counterfactual_rows
from .registry import module_class

MODULES: dict[str, Type[EditorModule]] = {cls.method: cls for cls in (MENDModule, MALMENModule, KEModule, SERACModule)}

__all__ = ["EditorModule", "KEModule", "MALMENModule", "MENDModule", "MODULES", "SERACModule", "counterfactual_rows", "joint_rows",
           "module_class"]
