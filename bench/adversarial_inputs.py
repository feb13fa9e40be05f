"""Bad inputs thrown at every front door of lightning-edit, each classified by what the user gets back. Prints JSON.

    python bench/adversarial_inputs.py [--quick] [--door edit,study,...]
        (--quick: skip the cases that need a model loaded)

The cases live in ``bench/adversarial/<door>_cases.py`` (each module's ``cases(folder)`` returns ``Case`` objects).
Outcome of a case:
- ``refused_by_name``: a non-zero exit (or a ``LightningEditError``), no traceback, and the message names the field,
  flag or file at fault;
- ``refused_unnamed``: refused without a traceback, but the message does not name it;
- ``traceback``: another exception escaped (what a user would see as a Python traceback);
- ``accepted``: the bad input was silently taken (exit 0, or the call returned);
- ``handled`` / ``not_handled``: for cases that must succeed with intact outputs (concurrent runs, damaged caches).
Every case runs in this process with stdout and stderr captured.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import logging
import pkgutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import adversarial  # noqa: E402
from adversarial.common import EDIT_PREFIX, Case  # noqa: E402

from lightning_edit.cli import main  # noqa: E402
from lightning_edit.errors import LightningEditError  # noqa: E402


def all_cases(folder: Path) -> list[Case]:
    out: list[Case] = []
    for module in sorted(m.name for m in pkgutil.iter_modules(adversarial.__path__) if m.name.endswith("_cases")):
        sub = folder / module
        sub.mkdir()
        out += importlib.import_module(f"adversarial.{module}").cases(sub)
    return out


def _call(case: Case) -> tuple[str, int, str]:
    """(accepted | refused | traceback | handled | not_handled, exit code, message)."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            if case.argv is not None:
                argv = EDIT_PREFIX + case.argv if case.door == "edit" else list(case.argv)
                code = main(argv + ["--quiet"] if case.door in ("edit", "study", "trace") else argv)
            else:
                result = case.call()
                code = 0 if case.expect == "refused" or result is True else 1
                if isinstance(result, int) and not isinstance(result, bool) and case.expect == "refused":
                    code = result
    except SystemExit as exit_:  # argparse refuses with exit 2 and its usage line
        code = exit_.code if isinstance(exit_.code, int) else 1
    except LightningEditError as exc:
        return "refused", 2, f"{err.getvalue()}\nerror: {exc}"
    except BaseException as exc:  # noqa: BLE001  (what escapes is what a user sees as a traceback)
        return "traceback", -1, f"{type(exc).__name__}: {exc}"
    if case.expect == "handled":
        return ("handled" if code == 0 else "not_handled"), int(code), err.getvalue()
    return ("accepted" if code == 0 else "refused"), int(code), err.getvalue()


def run_case(case: Case) -> dict:
    outcome, code, message = _call(case)
    if outcome == "refused":
        outcome = "refused_by_name" if case.name.lower() in message.lower() else "refused_unnamed"
    return {"input": case.what, "door": case.door, "outcome": outcome, "exit": code,
            "message": message.strip().splitlines()[-1:]}


def main_bench(quick: bool, doors: set[str] | None = None) -> dict:
    outcomes = ("refused_by_name", "refused_unnamed", "traceback", "accepted", "handled", "not_handled")
    counts = dict.fromkeys(outcomes, 0)
    rows, start = [], time.perf_counter()
    logging.disable(logging.WARNING)  # warnings of recomputed caches are expected; the outcome says what happened
    with tempfile.TemporaryDirectory() as tmp:
        for case in all_cases(Path(tmp)):
            if (quick and case.needs_model) or (doors and case.door not in doors):
                continue
            row = run_case(case)
            counts[row["outcome"]] += 1
            rows.append(row)
    per_door: dict[str, int] = {}
    for row in rows:
        per_door[row["door"]] = per_door.get(row["door"], 0) + 1
    return {"tried": len(rows), **counts, "per_door": per_door, "seconds": round(time.perf_counter() - start, 1),
            "cases": rows}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="skip the cases that load a model")
    parser.add_argument("--door", default=None, help="comma-separated doors to run (default: all)")
    args = parser.parse_args()
    result = main_bench(args.quick, set(args.door.split(",")) if args.door else None)
    json.dump(result, sys.stdout, indent=1)
    print()
