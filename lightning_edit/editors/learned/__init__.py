"""Editors that learn to edit: a network trained once (``train.py``) turns an edit request into a weight change
(MEND's gradient transform, MALMEN's least-squares aggregation of it over many edits, KE's hypernetwork) or routes
in-scope inputs to a counterfactual model (SERAC's trained classifier). ``hypernetwork.py`` holds what they share, ``module.py`` and ``settings.py`` the LightningModule
and training settings every method extends; each method is one folder (editor, module, settings) that registers
itself in ``LEARNT_METHODS`` (``registry.py``). Importing this package registers them."""
from . import mend, malmen, ke, serac  # noqa: F401
from .registry import LEARNT_METHODS, LearntMethod, register_learnt

__all__ = ["LEARNT_METHODS", "LearntMethod", "register_learnt"]
