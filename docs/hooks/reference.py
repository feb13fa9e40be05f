"""MkDocs hook: the reference pages generated from the code at build time, so they cannot drift from it.

- ``reference/cli.md``: every flag of every command, read from the real argparse / jsonargparse parsers;
- ``reference/methods.md``: the registered editors (``lightning_edit.editors.EDITORS``), a row each;
- ``reference/hyperparameters.md``: every field of every method's ``HParams`` dataclass (and of the learnt
  methods' ``training:`` section), with its type, default, the shipped ``default.yaml`` value and the comment the
  source gives it;
- ``reference/metrics.md``: every report key and what it measures (``KEY_PROTOCOLS``);
- ``reference/study-config.md``: every field of a study file (``StudyConfig``).

A method registered tomorrow appears on every page with no edit here.
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import io
import sys
import textwrap
import tokenize
import typing
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mkdocs.config.defaults import MkDocsConfig
    from mkdocs.structure.files import Files

ROOT = Path(__file__).resolve().parents[2]


def _checkout_first() -> None:
    """Put the checkout's package first on the import path, also when it is not installed. Done when the pages are
    built, not at import: MkDocs restores ``sys.path`` after loading its hooks (under the ``mkdocs`` console script)."""
    if sys.path[:1] != [str(ROOT)]:
        sys.path.insert(0, str(ROOT))


# ---- helpers -------------------------------------------------------------------------------------

def cell(value: Any) -> str:
    """A value as one Markdown table cell: one line, pipes escaped."""
    text = " ".join(str(value).split())
    return text.replace("|", "\\|")


def code(value: Any) -> str:
    text = cell(repr(value) if not isinstance(value, str) else value)
    return f"`{text}`" if text else ""


def table(header: Iterable[str], rows: Iterable[Iterable[Any]]) -> str:
    header = list(header)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


# ---- command line --------------------------------------------------------------------------------

def _parsers() -> list[tuple[str, str, Callable[[], argparse.ArgumentParser]]]:
    """(command, how to run it, parser factory) for every front door of the command line."""
    from lightning_edit import ask, capability_cli, causal_trace, cli
    from lightning_edit.data import fetch
    from lightning_edit.stats import cli as stats_cli
    from lightning_edit.training import run_config

    return [("edit", "python edit.py [edit] ...  /  lightning-edit [edit] ...", cli.build_parser),
            ("study", "python edit.py study ...", cli.build_study_parser),
            ("train", "python train.py METHOD MODEL ...  /  lightning-edit train ...", run_config.build_parser),
            ("data", "lightning-edit data {get,list,verify} ...", fetch.build_parser),
            ("ask", "lightning-edit ask MODEL [PROMPT ...]", ask.build_parser),
            ("stats", "python edit.py stats ...", stats_cli.build_parser),
            ("trace", "python edit.py trace ...", causal_trace.build_parser),
            ("capability", "lightning-edit capability MODEL_OR_DIR --tasks ...", capability_cli.build_parser)]


def _flag_rows(parser: argparse.ArgumentParser) -> list[list[str]]:
    formatter = parser._get_formatter()
    rows = []
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        names = ", ".join(f"`{o}`" for o in action.option_strings) or f"`{action.metavar or action.dest}` (positional)"
        try:
            help_text = formatter._expand_help(action) if action.help else ""
        except (KeyError, TypeError, ValueError):  # a help text with a stray % sign: shown as written
            help_text = action.help or ""
        default = action.default if action.default not in (None, argparse.SUPPRESS, [], False) else ""
        choices = f" (choices: {', '.join(map(str, action.choices))})" if action.choices else ""
        rows.append([names, code(default) if default != "" else "", cell(help_text + choices)])
    return rows


def _parser_section(title: str, usage: str, parser: argparse.ArgumentParser, level: str = "##") -> list[str]:
    out = [f"{level} `{title}`", "", f"`{usage}`", ""]
    if parser.description:
        out += [cell(parser.description), ""]
    rows = _flag_rows(parser)
    main_rows = [r for r in rows if "--trainer." not in r[0]]
    out.append(table(["flag", "default", "what it does"], main_rows))
    trainer_rows = [r for r in rows if "--trainer." in r[0]]
    if trainer_rows:
        out += [("Every `lightning.Trainer` argument passes through as `--trainer.KEY` (read from Lightning's own "
                 "signature, so this list follows the installed Lightning):"), "",
                table(["flag", "default", "what it does"], trainer_rows)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out += _parser_section(f"{title} {name}", sub.prog, sub, level + "#")
    return out


def cli_page() -> str:
    out = ["# Command-line reference", "",
           ("Generated from the parsers themselves when the site is built (`docs/hooks/reference.py`): "
            "every flag below is one the installed code accepts. `--help` on any command prints the same."), ""]
    for title, usage, build in _parsers():
        out += _parser_section(title, usage, build())
    return "\n".join(out)


# ---- methods and hyperparameters -----------------------------------------------------------------

def _first_line(cls: type) -> str:
    """The first paragraph of the class's own docstring (not an inherited one, nor the signature a dataclass writes),
    else of its module's: method files open with the paper they implement."""
    doc = cls.__dict__.get("__doc__") or ""
    if not doc or doc.startswith(f"{cls.__name__}("):
        doc = sys.modules[cls.__module__].__doc__ or ""
    return cell(inspect.cleandoc(doc).split("\n\n")[0])


def methods_page() -> str:
    from lightning_edit.editors import EDITORS
    from lightning_edit.editors.learned import LEARNT_METHODS

    rows = []
    for name, cls in sorted(EDITORS.items()):
        module = cls.__module__.replace(".", "/") + ".py"
        rows.append([f"`{name}`", _first_line(cls), f"[`{cls.HParams.__name__}`](hyperparameters.md#{name})",
                     "yes" if cls.needs_subject else "", "yes" if cls.supports_batch else "one by one",
                     "weights" if cls.edits_weights_only else "patches", "train.py" if name in LEARNT_METHODS else "",
                     cell(cls.cannot_save) if cls.cannot_save else "yes", f"`{module}`"])
    header = ["`--method`", "what it is", "hyperparameters", "needs `subject`", "batches", "edit lives in",
              "trained first", "`--save`", "source"]
    intro = (f"The {len(EDITORS)} methods registered in `lightning_edit.editors.EDITORS`, read from the registry when "
             "the site is built. *Edit lives in*: `weights` means a plain transformers load of a saved model answers as "
             "the edited one; `patches` means the method hangs typed patches on the model (`models/patches.py`) that "
             "`--save` writes beside the weights.")
    return "\n".join(["# Methods", "", intro, "",
                      table(header, rows)])


def _field_comments(cls: type) -> dict[str, str]:
    """Each field's comment in the class body: the comment lines right above it and the one at its line's end."""
    comments: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        lines = source.splitlines()
        by_line = {t.start[0]: t.string.lstrip("#").strip()
                   for t in tokenize.generate_tokens(io.StringIO(source).readline) if t.type == tokenize.COMMENT}
        body = ast.parse(source).body[0]
        for node in getattr(body, "body", []):
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                above, line = [], node.lineno - 1
                while line >= 1 and lines[line - 1].strip().startswith("#"):
                    above.insert(0, by_line.get(line, ""))
                    line -= 1
                trailing = by_line.get(node.end_lineno, "")
                text = " ".join(p for p in (*above, trailing) if p)
                if text:
                    comments[node.target.id] = text
    return comments


def _type_name(hint: Any) -> str:
    text = getattr(hint, "__name__", None) if not typing.get_args(hint) else None
    return text or str(hint).replace("typing.", "")


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return "(required)"


def fields_table(cls: type, shipped: dict) -> str:
    from lightning_edit.editors.base import SPEED_ONLY

    try:
        hints = typing.get_type_hints(cls)
    except (NameError, TypeError):  # a hint naming what only a type checker imports: shown as the source writes it
        hints = {}
    comments = _field_comments(cls)
    rows = []
    for f in dataclasses.fields(cls):
        note = comments.get(f.name, "")
        if f.metadata.get(SPEED_ONLY):
            note = f"*speed only* (not part of a study cell's key). {note}"
        value = shipped.get(f.name, "")
        rows.append([f"`{f.name}`", code(_type_name(hints.get(f.name, f.type))), code(_default(f)),
                     code(value) if f.name in shipped else "", cell(note)])
    return table(["field", "type", "default", "`default.yaml`", "what it is"], rows)


def _shipped_defaults(method: str) -> tuple[dict, list[str]]:
    """configs/<method>/default.yaml as a mapping, and the names of the family/model files beside it."""
    from lightning_edit.config import load_yaml
    from lightning_edit.paths import CONFIG_ROOT

    folder = CONFIG_ROOT / method
    default = folder / "default.yaml"
    values = load_yaml(default, what="hyperparameter file") if default.exists() else {}
    others = sorted(p.name for p in folder.glob("*.yaml") if p.name != "default.yaml") if folder.is_dir() else []
    return values, others


def hyperparameters_page() -> str:
    from lightning_edit.editors import EDITORS
    from lightning_edit.training.registry import TRAINING_CONFIGS

    out = ["# Hyperparameters", "",
           ("Every field of every registered method's hyperparameter dataclass, read from the code when the site is "
            "built. A run merges `configs/<method>/default.yaml`, then `<family>.yaml`, then `<model>.yaml`, then "
            "`--set KEY=VALUE` (typed by the field it lands in); *default* is the dataclass's own value, "
            "*`default.yaml`* the shipped file's where it sets one. An unknown key is a `ConfigError` naming it."), ""]
    for name, cls in sorted(EDITORS.items()):
        shipped, others = _shipped_defaults(name)
        out += [f"## {name}", "", f"`{cls.HParams.__module__}.{cls.HParams.__name__}`. {_first_line(cls.HParams)}", ""]
        if others:
            out += ["Per model or family: " + ", ".join(f"`configs/{name}/{o}`" for o in others) + ".", ""]
        out.append(fields_table(cls.HParams, shipped))
        if name in TRAINING_CONFIGS:
            training = TRAINING_CONFIGS[name]
            out += [f"### {name}: the `training:` section", "",
                    f"`{training.__module__}.{training.__name__}`, read by `train.py` (`--set training.KEY=VALUE`).",
                    "", fields_table(training, shipped.get("training") or {})]
    return "\n".join(out)


def study_config_page() -> str:
    from lightning_edit.config import load_yaml
    from lightning_edit.evaluation.study.plan import StudyConfig
    from lightning_edit.paths import CONFIG_ROOT

    shipped = load_yaml(CONFIG_ROOT / "study" / "standard.yaml", what="study configuration")
    names = sorted(p.stem for p in (CONFIG_ROOT / "study").glob("*.yaml"))
    intro = ("Every field of a study file (`python edit.py study --config NAME_OR_FILE`), read from `StudyConfig` when "
             "the site is built; the column *`standard.yaml`* shows the shipped `configs/study/standard.yaml`. Shipped "
             f"configurations: {', '.join(f'`{n}`' for n in names)}. An unknown field is a `ConfigError` naming it. "
             "How a study runs: [the study guide](../guides/study.md).")
    return "\n".join(["# Study configuration", "", intro, "",
                      fields_table(StudyConfig, shipped).replace("`default.yaml`", "`standard.yaml`")])


def metrics_page() -> str:
    from lightning_edit.evaluation.multihop import MULTIHOP_KEY_PROTOCOLS
    from lightning_edit.evaluation.protocols import KEY_PROTOCOLS

    intro = ("What each key of a report (`--output`, a study's cells) measures, as the report's own `metric_protocols` "
             "says it (`evaluation/protocols.py` `KEY_PROTOCOLS`). A key `locality/<kind>` or `portability/<kind>` is "
             "the same score over the probes of one kind.")
    return "\n".join(["# Metrics", "", intro, "",
                      table(["key", "what it measures"], [[f"`{k}`", cell(v)] for k, v in KEY_PROTOCOLS.items()]),
                      "## Multi-hop (`--multihop`)", "",
                      table(["key", "what it measures"],
                            [[f"`{k}`", cell(v)] for k, v in MULTIHOP_KEY_PROTOCOLS.items()])])


PAGES: dict[str, Callable[[], str]] = {"reference/cli.md": cli_page, "reference/methods.md": methods_page,
                                       "reference/hyperparameters.md": hyperparameters_page,
                                       "reference/metrics.md": metrics_page,
                                       "reference/study-config.md": study_config_page}


def on_files(files: Files, config: MkDocsConfig) -> Files:
    """MkDocs event: add (or replace) the generated reference pages before the navigation is built."""
    from mkdocs.structure.files import File

    _checkout_first()
    for src_uri, build in PAGES.items():
        existing = files.get_file_from_path(src_uri)
        if existing is not None:
            files.remove(existing)
        files.append(File.generated(config, src_uri, content=build()))
    return files
