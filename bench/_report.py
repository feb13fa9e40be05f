"""What every benchmark does last: print its result as JSON and, when asked, write the same text to a file."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional


def emit(result: dict, output: Optional[str]) -> int:
    """Print ``result`` (indented JSON), write it to ``output`` if given; the script's exit status (0)."""
    text = json.dumps(result, indent=2)
    print(text)
    if output:
        Path(output).write_text(text)
    return 0
