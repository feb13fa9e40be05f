"""Locate-then-edit methods: find the weights that store a fact, then rewrite them in closed form (ROME, r-ROME,
MEMIT, EMMET, PMET, AlphaEdit) or by scaling the neurons that express it (KN). Importing this package registers them."""
from . import alphaedit, emmet, kn, memit, pmet, r_rome, rome  # noqa: F401
