"""Bad input thrown at ``edit.py trace`` (issue 22, finding 14): refused before any model loads (the model named is
an empty folder, so a check made after loading would fail on the model instead), and case ids kept out of paths."""
from __future__ import annotations

from pathlib import Path

from .common import Case, write

RECORD = {"prompt": "The mother tongue of Danielle Darrieux is", "target_new": "English", "target_true": "French",
          "subject": "Danielle Darrieux"}


def _safe_names() -> bool:
    from lightning_edit.evaluation.trace_report import record_file_name

    names = [record_file_name(c) for c in ("../../evil", "/etc/passwd", "a/b", "..", "x" * 500, 0)]
    return all("/" not in n and ".." not in n and len(n) < 120 for n in names) and names[-1] == "record_0.png"


def cases(folder: Path) -> list[Case]:
    data = write(folder, "trace.json", [RECORD])
    model = folder / "empty-model"  # passes the model-source check, fails to load
    model.mkdir()
    write(model, "config.json", {"model_type": "gpt2"})  # no weights: loading it fails
    base = ["trace", "--model", str(model), "--data", data, "--output", str(folder / "out")]
    table = [
        ("--noise inf (accepted before)", ["--noise", "inf"], "--noise"),
        ("--noise nan", ["--noise", "nan"], "--noise"),
        ("--noise -1", ["--noise", "-1"], "--noise"),
        ("zero records (a division by zero after the model loaded before)", ["--offset", "5"], "--offset"),
        ("--kinds residual", ["--kinds", "residual"], "--kinds"),
        ("--samples 0", ["--samples", "0"], "--samples"),
        ("--window -2", ["--window", "-2"], "--window"),
    ]
    out = [Case(what=f"trace: {what}", door="trace", argv=base + flags, name=name) for what, flags, name in table]
    no_truth = write(folder, "no_truth.json", [{k: v for k, v in RECORD.items() if k != "target_true"}])
    out += [
        Case(what="trace: records without target_true", door="trace", name="target_true",
             argv=["trace", "--model", str(model), "--data", no_truth, "--output", str(folder / "o2")]),
        Case(what="trace: --data /dev/zero (read forever before)", door="trace", name="/dev/zero",
             argv=["trace", "--model", str(model), "--data", "/dev/zero", "--output", str(folder / "o3")]),
        Case(what="trace: --output onto an existing file", door="trace", name="--output",
             argv=["trace", "--model", str(model), "--data", data, "--output", write(folder, "f.txt", "x")]),
        Case(what="trace: case ids with '/' and '..' become file names inside the output folder", door="trace",
             call=_safe_names, expect="handled"),
    ]
    return out
