"""Bad inputs thrown at ``python edit.py``, each classified by what the user gets back. Prints JSON.

    python bench/adversarial_inputs.py [--quick]      (--quick: skip the cases that need the model loaded)

Outcome of a case:
- ``refused_by_name``: a non-zero exit, no traceback, and the message names the field or flag at fault;
- ``refused_unnamed``: a non-zero exit and no traceback, but the message does not name it;
- ``traceback``: an exception escaped ``cli.main`` (what a user would see as a Python traceback);
- ``accepted``: exit 0: the bad input was silently taken.
Every case runs in this process through ``lightning_edit.cli.main`` with stderr captured.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
import time
from pathlib import Path

from lightning_edit.cli import main

GOOD = {"prompt": "The mother tongue of Danielle Darrieux is", "target_new": "English", "subject": "Danielle Darrieux"}


def request_file(folder: Path, name: str, content) -> str:
    path = folder / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    return str(path)


def cases(folder: Path, quick: bool) -> list[tuple[str, list[str], str]]:
    """(what is wrong, argv, the name the message must contain)."""
    f = lambda name, content: request_file(folder, name, content)  # noqa: E731
    existing_file = f("existing.txt", "x")
    out = [
        ("request file is a number", ["--data", f("n.json", "3")], "n.json"),
        ("request file is a dict", ["--data", f("d.json", {"prompt": "x"})], "d.json"),
        ("request file is invalid UTF-8", ["--data", f("u.json", b'[{"prompt": "\xff\xfe", "target_new": "a"}]')], "UTF-8"),
        ("request file is not JSON", ["--data", f("j.json", "[{")], "j.json"),
        ("--data names a directory", ["--data", str(folder)], "--data"),
        ("--data names no file or dataset", ["--data", str(folder / "missing.json")], "missing.json"),
        ("record without prompt", ["--data", f("p.json", [{"target_new": "English"}])], "prompt"),
        ("record with an empty target", ["--data", f("t.json", [{**GOOD, "target_new": "  "}])], "target_new"),
        ("locality prompt not a string", ["--data", f("l.json", [{**GOOD, "locality": [{"prompt": 3, "answer": "a"}]}])], "prompt"),
        ("rephrase_prompts is a string", ["--data", f("r.json", [{**GOOD, "rephrase_prompts": "Danielle grew up"}])], "rephrase_prompts"),
        ("record is a list", ["--data", f("rl.json", [["a", "b"]])], "record"),
        ("--n -1", ["--n", "-1"], "--n"),
        ("--n 0", ["--n", "0"], "--n"),
        ("--n abc", ["--n", "abc"], "--n"),
        ("--offset -3", ["--offset", "-3"], "--offset"),
        ("--offset past the end", ["--offset", "100000"], "--offset"),
        ("--batch-size -5", ["--batch-size", "-5"], "--batch-size"),
        ("--batch-size 0", ["--batch-size", "0"], "--batch-size"),
        ("--threads 0", ["--threads", "0"], "--threads"),
        ("--generate -1", ["--generate", "-1"], "--generate"),
        ("--fluency-tokens -1", ["--fluency-tokens", "-1"], "--fluency-tokens"),
        ("--set v_lr=nan", ["--set", "v_lr=nan"], "v_lr"),
        ("--set v_lr=inf", ["--set", "v_lr=inf"], "v_lr"),
        ("--set v_num_grad_steps=abc", ["--set", "v_num_grad_steps=abc"], "v_num_grad_steps"),
        ("--set v_num_grad_steps=2.5", ["--set", "v_num_grad_steps=2.5"], "v_num_grad_steps"),
        ("--set layers=5 (not a list)", ["--set", "layers=5"], "layers"),
        ("--set layers=[99]", ["--set", "layers=[99]"], "layers"),
        ("--set unknown key", ["--set", "no_such_field=1"], "no_such_field"),
        ("--set without =", ["--set", "v_lr"], "--set"),
        ("--set invalid YAML", ["--set", "v_lr=[1,"], "v_lr"),
        ("--set mom2_adjustment=maybe", ["--set", "mom2_adjustment=maybe"], "mom2_adjustment"),
        ("--set v_lr=-1", ["--set", "v_lr=-1"], "v_lr"),
        ("--method unknown", ["--method", "nope"], "nope"),
        ("--model unknown", ["--model", "no-such-model"], "no-such-model"),
        ("--device cuda on a CPU-only torch", ["--device", "cuda"], "--device"),
        ("--device tpu", ["--device", "tpu"], "--device"),
        ("--dtype int8", ["--dtype", "int8"], "--dtype"),
        ("--save onto an existing file", ["--save", existing_file, "--n", "1"], "--save"),
        ("--save with the batch protocol", ["--save", str(folder / "s1"), "--batch-size", "2", "--n", "4"], "--save"),
        ("--output onto a directory", ["--output", str(folder)], "--output"),
        ("--editor for a method without one", ["--editor", str(folder)], "--editor"),
        ("--method mend without --editor", ["--method", "mend", "--n", "1"], "editor"),
        ("--editor folder that is not a checkpoint", ["--method", "mend", "--editor", str(folder)], "editor checkpoint"),
        ("--sequential with --batch-size 0", ["--sequential", "--batch-size", "0"], "--batch-size"),
        ("rome on a record without subject", ["--data", f("s.json", [{"prompt": "Paris is in", "target_new": "Italy"}])], "subject"),
        ("--data-dir missing, dataset by name", ["--data", "zsre", "--data-dir", str(folder / "nothing")], "data get"),
    ]
    if not quick:  # these are checked once the tokenizer is loaded (the model loads first)
        out += [
            ("control token in a target", ["--data", f("c.json", [{**GOOD, "target_new": "<|im_end|>"}]), "--no-fluency"], "<|im_end|>"),
            ("prompt longer than the context", ["--data", f("long.json", [{**GOOD, "prompt": "word " * 9000}]), "--no-fluency"],
             "context"),
        ]
    return out


def run_case(argv: list[str]) -> tuple[str, int, str]:
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            # one request, no generations: an input wrongly accepted costs one edit, not a whole run (a case's own
            # --n comes later and wins)
            code = main(["--n", "1", "--no-fluency", "--threads", "1"] + argv + ["--quiet"])
    except SystemExit as exit_:  # argparse refuses with exit 2 and its usage line
        code = exit_.code if isinstance(exit_.code, int) else 1
    except BaseException as exc:  # noqa: BLE001  (what escapes main is what a user sees as a traceback)
        return "traceback", -1, f"{type(exc).__name__}: {exc}"
    return ("accepted" if code == 0 else "refused"), int(code), err.getvalue()


def main_bench(quick: bool) -> dict:
    rows, counts = [], {"refused_by_name": 0, "refused_unnamed": 0, "traceback": 0, "accepted": 0}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for what, argv, name in cases(Path(tmp), quick):
            outcome, code, message = run_case(argv)
            if outcome == "refused":
                outcome = "refused_by_name" if name.lower() in message.lower() else "refused_unnamed"
            counts[outcome] += 1
            rows.append({"input": what, "outcome": outcome, "exit": code, "message": message.strip().splitlines()[-1:] })
    return {"tried": len(rows), **counts, "seconds": round(time.perf_counter() - start, 1), "cases": rows}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="skip the cases that load the model")
    result = main_bench(parser.parse_args().quick)
    json.dump(result, sys.stdout, indent=1)
    print()
