"""Bad inputs thrown at ``edit.py stats`` (second-moment statistics): the shared preflight and its own numbers,
all refused before the model loads."""
from __future__ import annotations

from pathlib import Path

from .common import Case, write


def cases(folder: Path) -> list[Case]:
    stats = ["stats", "--layers", "3", "--quiet"]
    config_list = folder / "cfg-list"
    config_list.mkdir()
    write(config_list, "config.json", [1])
    out = [Case(f"stats {flag} {value}", "stats", flag, argv=stats + [flag, value])
           for flag, value in (("--tokens", "0"), ("--tokens", "-5"), ("--devices", "0"), ("--seq-len", "0"),
                               ("--batch-size", "0"), ("--threads", "0"))]
    out += [
        Case("stats --text missing", "stats", "--text", argv=stats + ["--text", str(folder / "none.txt")]),
        Case("stats --text a folder", "stats", "--text", argv=stats + ["--text", str(folder)]),
        Case("stats --model not a model", "stats", "--model", argv=stats + ["--model", "no-such-model"]),
        Case("stats --model folder whose config.json is a list", "stats", "config.json",
             argv=stats + ["--model", str(config_list)]),
        Case("stats --accelerator gpu without CUDA", "stats", "--accelerator", argv=stats + ["--accelerator", "gpu"]),
        Case("stats --layers 99", "stats", "layer 99", argv=["stats", "--layers", "99", "--quiet"], needs_model=True),
    ]
    return out
