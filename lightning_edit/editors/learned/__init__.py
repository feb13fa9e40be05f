"""Editors that learn to edit: a network trained once (``train.py``) turns an edit request into a weight change
(MEND's gradient transform, KE's hypernetwork). ``hypernetwork.py`` holds what they share. Importing this package
registers them."""
from . import mend, ke  # noqa: F401
