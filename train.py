#!/usr/bin/env python
"""Train a learnt editor (MEND, KE, SERAC). See `python train.py --help`; e.g. `python train.py mend smollm2-135m`."""
import os
import sys

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from lightning_edit.training.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
