"""Bad inputs thrown at ``python edit.py`` (the first round: request files, flags, hyperparameters, paths)."""
from __future__ import annotations

from pathlib import Path

from .common import GOOD, Case, write


def _table(folder: Path) -> list[tuple]:
    """(what is wrong, argv, the name the message must contain[, needs the model])."""
    f = lambda name, content: write(folder, name, content)  # noqa: E731
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
    # checked once the tokenizer is loaded (the model loads first)
    out += [
        ("control token in a target", ["--data", f("c.json", [{**GOOD, "target_new": "<|im_end|>"}])], "<|im_end|>", True),
        ("prompt longer than the context", ["--data", f("long.json", [{**GOOD, "prompt": "word " * 9000}])], "context", True),
    ]
    return out


def cases(folder: Path) -> list[Case]:
    return [Case(what=row[0], door="edit", argv=row[1], name=row[2], needs_model=len(row) > 3 and row[3])
            for row in _table(folder)]
