"""Training the editors that learn (MEND, KE, SERAC): LightningModules, strategies, the train.py CLI.

The editors package is imported first: its learnt editors import ``training.learned``, and importing it
from here before them would be circular.
"""
from .. import editors as _editors  # noqa: F401
