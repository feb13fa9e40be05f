"""Bad study configurations thrown at ``edit.py study`` (issue 22, finding 12): every field of the YAML typed, method
lists known and non-empty, the name a safe folder name. All refused before any model loads."""
from __future__ import annotations

from pathlib import Path

from .common import Case, write


def cases(folder: Path) -> list[Case]:
    results = str(folder / "results")
    y = lambda name, text: write(folder, name, text)  # noqa: E731
    table = [
        ("methods is a string (iterated letter by letter before)", y("m.yaml", "name: t\nmethods: rome\n"), "methods"),
        ("datasets is an empty mapping (StopIteration before)", y("d0.yaml", "name: t\ndatasets: {}\n"), "datasets"),
        ("datasets is a list (AttributeError before)", y("dl.yaml", "name: t\ndatasets: [zsre]\n"), "datasets"),
        ("name climbs out of the results folder", y("n.yaml", "name: ../x\n"), "name"),
        ("name is an absolute path", y("na.yaml", "name: /tmp/x\n"), "name"),
        ("an unknown method", y("u.yaml", "name: t\nmethods: [rome, nope]\n"), "nope"),
        ("an empty method list", y("e.yaml", "name: t\nmethods: []\n"), "methods"),
        ("batch_sizes is a number", y("b.yaml", "name: t\nbatch_sizes: 3\n"), "batch_sizes"),
        ("fluency is not a boolean", y("f.yaml", "name: t\nfluency: maybe\n"), "fluency"),
        ("sequential_offset is negative", y("o.yaml", "name: t\nsequential_offset: -1\n"), "sequential_offset"),
        ("overrides of a method is not a mapping", y("ov.yaml", "name: t\noverrides: {rome: 3}\n"), "overrides"),
        ("an unknown field", y("k.yaml", "name: t\nno_such_field: 1\n"), "no_such_field"),
        ("the YAML is a list", y("l.yaml", "- a\n- b\n"), "l.yaml"),
        ("the YAML does not parse", y("p.yaml", "name: t\nmethods: [rome\n"), "p.yaml"),
        ("the YAML is not UTF-8", y("x.yaml", b"name: \xff\xfe\n"), "UTF-8"),
        ("--config names a folder", str(folder), str(folder)),
    ]
    out = [Case(what=f"study: {what}", door="study", argv=["study", "--config", path, "--results-dir", results],
                name=name) for what, path, name in table]
    out += [Case(what="study: --methods , (no method at all)", door="study", name="--methods",
                 argv=["study", "--methods", ",", "--results-dir", results]),
            Case(what="study: --methods names an unknown method", door="study", name="nope",
                 argv=["study", "--methods", "rome,nope", "--results-dir", results])]
    return out
