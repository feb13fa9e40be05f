"""Locate-then-edit methods: find the weights that store a fact, then rewrite them in closed form (ROME, MEMIT,
AlphaEdit) or by scaling the neurons that express it (KN). Importing this package registers them."""
from . import rome, memit, alphaedit, kn  # noqa: F401
