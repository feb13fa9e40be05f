"""Lifelong editing: methods built for long sequences of edits, whose state carried from edit to edit belongs to the
edited model (a patch in its registry). UltraEdit's closed-form update with lifelong normalisation. Importing this
package registers them."""
from . import ultraedit  # noqa: F401
