#!/usr/bin/env python
"""Apply knowledge edits and report metrics. See `python edit.py --help`."""
import sys

from lightning_edit.cli import main

if __name__ == "__main__":
    sys.exit(main())
