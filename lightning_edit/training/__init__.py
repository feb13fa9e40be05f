"""Training the editors that learn (MEND, MALMEN, KE, SERAC): LightningModules, strategies, the train.py CLI.

Training sits above the editors: it imports them (their networks, losses and checkpoints), never the other way.
"""
