"""Request data and ``edit.py data`` (issue 22, finding 15): braces in prompts are text, never ``str.format`` fields;
deep nesting, devices, folders and oversized files refused by name; hub URLs validated and pinned."""
from __future__ import annotations

from pathlib import Path

from .common import Case, write


def _rome(prompt: str) -> list:
    return [{"case_id": 0, "requested_rewrite": {"prompt": prompt, "subject": "Paris", "target_new": {"str": "Rome"},
                                                 "target_true": {"str": "France"}}}]


def _prompt_is(path: str, expected: str):
    def call() -> bool:
        from lightning_edit.data import load_requests

        return load_requests(path)[0].prompt == expected
    return call


def _load(path: str):
    def call():
        from lightning_edit.data import load_requests

        return load_requests(path)
    return call


def _bounded(path: str):
    def call():
        from lightning_edit.data.loaders import read_data_bytes

        return read_data_bytes(Path(path), limit=100)
    return call


def _pinned() -> bool:
    from lightning_edit.data.hub import pinned_url

    commit = "0123456789abcdef0123456789abcdef01234567"
    local = Path("/cache/snapshots") / commit / "x.json"
    return pinned_url("hf://datasets/o/n/x.json", local) == f"hf://datasets/o/n@{commit}/x.json"


def cases(folder: Path) -> list[Case]:
    f = lambda name, content: write(folder, name, content)  # noqa: E731
    deep = f("deep.json", "[" * 100_000 + "]" * 100_000)
    deep_lines = f("deep.jsonl", '{"prompt": "a", "target_new": "b"}\n' + "[" * 100_000 + "]" * 100_000 + "\n")
    out = [
        Case(what="data: a prompt with '{1}' (IndexError through str.format before)", door="data", expect="handled",
             call=_prompt_is(f("f1.json", _rome("{} is in {1}")), "Paris is in {1}")),
        Case(what="data: a prompt with '{:999999999}' (a gigabyte allocated before)", door="data", expect="handled",
             call=_prompt_is(f("f2.json", _rome("{} {:999999999}")), "Paris {:999999999}")),
        Case(what="data: a prompt with '{0.__class__}' (an attribute lookup before)", door="data", expect="handled",
             call=_prompt_is(f("f3.json", _rome("{0.__class__} {}")), "{0.__class__} Paris")),
        Case(what="data: JSON nested 100000 deep (RecursionError before)", door="data", name="deep.json",
             call=_load(deep)),
        Case(what="data: JSON lines with a line nested 100000 deep", door="data", name="deep.jsonl", call=_load(deep_lines)),
        Case(what="data: /dev/zero as the data file (read forever before)", door="data", name="/dev/zero",
             call=_load("/dev/zero")),
        Case(what="data: a file above the size limit", door="data", name="big.json",
             call=_bounded(f("big.json", [{"prompt": "x" * 200, "target_new": "y"}]))),
        Case(what="data: hf:// repo owner with '--' (HFValidationError before)", door="data", name="a--b",
             call=_load("hf://datasets/a--b/c/x.json")),
        Case(what="data: hf:// repo name starting with '-'", door="data", name="-repo",
             call=_load("hf://datasets/owner/-repo/x.json")),
        Case(what="data: hf:// file path with '..'", door="data", name="..",
             call=_load("hf://datasets/owner/repo/../../x.json")),
        Case(what="data: hf:// revision '..'", door="data", name="revision", call=_load("hf://datasets/owner/repo@../x.json")),
        Case(what="data: an unpinned hf:// file is recorded at the commit it was read at", door="data", expect="handled",
             call=_pinned),
    ]
    # a folder where a pinned data file belongs (IsADirectoryError traceback before)
    from lightning_edit.data.fetch import select

    entry = select("zsre")[0]
    data_dir = folder / "data-dir"
    (data_dir / entry.path).mkdir(parents=True)
    out += [Case(what=f"data {cmd}: a folder where {entry.path} belongs", door="data", name=entry.path,
                 argv=["data", cmd, "zsre", "--data-dir", str(data_dir)]) for cmd in ("verify", "get")]
    out.append(Case(what="data get: an unknown name", door="data", name="no-such-set",
                    argv=["data", "get", "no-such-set", "--data-dir", str(data_dir)]))
    return out
