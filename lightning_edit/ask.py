"""`lightning-edit ask`: a model's greedy answers to prompts, before and after an edit.

Three uses:

* ``ask MODEL "prompt" ...``: the registered (or hub, or local) model's greedy continuations;
* ``ask DIR ["prompt" ...]``: DIR was written by ``python edit.py ... --save DIR``; the base model named
  in ``DIR/edits.json`` answers "before" (when it loads here), the saved edited model answers "after";
* ``ask MODEL --method rome --edit "prompt|target|subject" ["prompt" ...]`` (or ``--data FILE``, formerly ``--requests``):
  answers before the edit, applies it, answers after, then undoes it.

Without prompts, the edit prompts and their rephrases are asked. An "after" answer to an edit prompt
is marked ✓ when it starts with the edit's target.
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from .options import add_device_options, add_threads_option, parse_override, placement_args  # one override parser and thread option for every command
from .errors import CheckpointError, ConfigError, LightningEditError, ModelNotAvailableError, RequestError

DEFAULT_METHOD = "rome"
EDIT_SYNTAX = "PROMPT|TARGET[|SUBJECT]"
EDITS_FILE = "edits.json"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lightning-edit ask",
        description="Greedy answers of a model to prompts; before and after an edit when one is given or saved.",
        epilog=(
            'examples:\n'
            '  lightning-edit ask smollm2-135m "The Eiffel Tower is in"\n'
            '  lightning-edit ask results/edited            # a directory from `python edit.py --save`\n'
            '  lightning-edit ask smollm2-135m --method rome \\\n'
            '      --edit "The mother tongue of Danielle Darrieux is|English|Danielle Darrieux"'
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", metavar="MODEL_OR_DIR",
                   help="registered model name, hub id, local HF directory, or a directory saved by `python edit.py --save`")
    p.add_argument("prompts", nargs="*", metavar="PROMPT",
                   help="prompts to answer (default: the edit prompts and their rephrases)")
    p.add_argument("--method", default=None,
                   help=f"editing method for --edit/--data (default {DEFAULT_METHOD}); see `python edit.py --help`")
    p.add_argument("--edit", action="append", default=[], metavar=EDIT_SYNTAX,
                   help="an edit to apply, e.g. 'The mother tongue of Danielle Darrieux is|English|Danielle Darrieux' "
                        "(repeatable; ROME/MEMIT/AlphaEdit need the SUBJECT, written as in the prompt)")
    p.add_argument("--data", "--requests", dest="requests", default=None, metavar="FILE",
                   help="edit requests from a JSON file or dataset name, as `python edit.py --data` reads them "
                        "(--requests: the same, its former name)")
    p.add_argument("--n", type=int, default=None, help="use the first N records of --data")
    p.add_argument("--data-dir", default=None, help="folder of benchmark data for a dataset name in --data")
    p.add_argument("--batch", action="store_true", help="apply all edits in one call (default: one after another, keeping each)")
    p.add_argument("--set", dest="overrides", action="append", type=parse_override, default=[], metavar="KEY=VALUE",
                   help="override a hyperparameter of configs/<method>/ (repeatable; values are YAML)")
    p.add_argument("--editor", default=None, help="trained editor: checkpoint directory or hub id user/repo (learnt methods: mend, malmen, ke, serac)")
    p.add_argument("--max-new-tokens", type=int, default=12, help="tokens generated per answer (default %(default)s)")
    p.add_argument("--cache-dir", default=None,
                   help="where dequantized models, statistics and IKE embeddings are cached (default $LIGHTNING_EDIT_CACHE or checkpoints/)")
    add_device_options(p, "torch device")
    add_threads_option(p)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        # intermixed: options may come between MODEL_OR_DIR and the prompts
        args = build_parser().parse_intermixed_args(argv)
    except SystemExit as exit_:  # --help, or a usage error argparse has already printed
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 2)
    try:
        return run(args)
    except LightningEditError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


# ---- checking the inputs (before any model is loaded) ---------------------------------------------

@dataclass
class Plan:
    mode: str  # "answer" (a), "saved" (b) or "edit" (c)
    model: str
    prompts: list[str]
    targets: dict[str, str]  # edit prompt or rephrase → target_new
    requests: list = dataclasses.field(default_factory=list)
    method: Optional[str] = None
    run: Optional[Any] = None  # the edit's runner.Run (edit mode)
    record: Optional[dict] = None  # edits.json of a saved directory


def parse_edit(text: str, index: int = 0):
    """``PROMPT|TARGET[|SUBJECT]`` → EditRequest."""
    from .requests import EditRequest

    parts = [p.strip() for p in text.split("|")]
    if len(parts) not in (2, 3) or not all(parts):
        raise RequestError(
            f"--edit {text!r}: expected {EDIT_SYNTAX}, i.e. 2 or 3 non-empty fields separated by '|', "
            f"e.g. --edit 'The mother tongue of Danielle Darrieux is|English|Danielle Darrieux'")
    subject = parts[2] if len(parts) == 3 else None
    if subject is not None and subject not in parts[0]:
        raise RequestError(f"--edit {text!r}: SUBJECT {subject!r} does not occur in PROMPT {parts[0]!r}; write it exactly as in the prompt")
    return EditRequest(prompt=parts[0], target_new=parts[1], subject=subject, case_id=f"--edit {index + 1}")


def _edit_prompts(requests) -> tuple[list[str], dict[str, str]]:
    """The edit prompts and rephrases in order (without repeats), and the target each should produce."""
    prompts: list[str] = []
    targets: dict[str, str] = {}
    for r in requests:
        for p in (r.prompt, *r.rephrase_prompts):
            if p not in targets:
                targets[p] = r.target_new
                prompts.append(p)
    return prompts, targets


def read_saved(directory: Path) -> dict:
    """``edits.json`` of a directory saved by ``python edit.py --save``, checked; requests as EditRequests."""
    from .requests import EditRequest

    path = directory / EDITS_FILE
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: cannot read it as JSON ({err}); it should be the record `python edit.py --save` writes") from err
    if not isinstance(record, dict) or not isinstance(record.get("edits"), list):
        raise CheckpointError(f"{path}: expected an object with a list 'edits' (as `python edit.py --save` writes)")
    requests = []
    for i, entry in enumerate(record["edits"]):
        items = entry.get("requests") if isinstance(entry, dict) else None
        if not isinstance(items, list):
            raise CheckpointError(f"{path}: edits[{i}] has no list 'requests'")
        for j, item in enumerate(items):
            try:
                requests.append(EditRequest.from_dict(item))
            except (KeyError, TypeError, AttributeError, RequestError) as err:
                raise CheckpointError(f"{path}: edits[{i}].requests[{j}] is not an edit request ({type(err).__name__}: {err})") from err
    record["_requests"] = requests
    return record


def plan(args: argparse.Namespace) -> Plan:
    """Every check that needs no model: flags, the device, the edits, the method and its hyperparameters, the
    directory (a saved one verified against its manifest before anything in it is read): the shared preflight."""
    from .preflight import check_environment

    check_environment(args.device)
    if args.max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    if args.n is not None and args.n < 1:
        raise ConfigError(f"--n must be at least 1, got {args.n}")
    if args.n is not None and not args.requests:
        raise ConfigError("--n counts records of --data FILE (formerly --requests); give --data too")
    prompts = [p for p in args.prompts]
    for p in prompts:
        if not p.strip():
            raise RequestError("an empty PROMPT was given; every prompt needs some text")

    editing = bool(args.edit or args.requests)
    if not editing:
        extra = [flag for flag, given in (("--method", args.method), ("--set", args.overrides), ("--editor", args.editor),
                                          ("--batch", args.batch)) if given]
        if extra:
            raise ConfigError(f"{', '.join(extra)}: used only with an edit; give --edit {EDIT_SYNTAX!r} or --data FILE")

    saved = _check_model_or_dir(args.model)
    if editing:
        from .data import load_requests

        requests = [parse_edit(text, i) for i, text in enumerate(args.edit)]
        if args.requests:
            loaded_requests = load_requests(args.requests, n=args.n, data_dir=args.data_dir)  # errors name --data
            if not loaded_requests:
                raise RequestError(f"--data {args.requests!r}: no edit requests in it")
            requests.extend(loaded_requests)
        method = args.method or DEFAULT_METHOD
        run = _edit_run(args, method, requests)
        edit_prompts, targets = _edit_prompts(requests)
        return Plan("edit", args.model, prompts or edit_prompts, targets, requests, method, run)

    if saved:
        record = read_saved(Path(args.model).expanduser())
        edit_prompts, targets = _edit_prompts(record["_requests"])
        if not prompts and not edit_prompts:
            raise RequestError(f"{Path(args.model) / EDITS_FILE} holds no edit requests; give a PROMPT to ask")
        return Plan("saved", args.model, prompts or edit_prompts, targets, record["_requests"], record.get("method"), record=record)

    if not prompts:
        raise RequestError(f"nothing to ask: give a PROMPT, or --edit {EDIT_SYNTAX!r} / --data FILE to ask the edit prompts")
    return Plan("answer", args.model, prompts, {})


def _check_model_or_dir(model: str) -> bool:
    """Whether MODEL_OR_DIR is a folder saved by ``edit.py --save`` (verified against its manifest now, before its
    ``edits.json`` names a base model to load); else it must be a model that can load (the shared preflight)."""
    from .models.saving import RECORD_FILE
    from .preflight import check_model_source

    directory = Path(model).expanduser()
    if directory.is_dir() and (directory / EDITS_FILE).exists() and not (directory / "config.json").exists():
        raise ModelNotAvailableError(
            f"MODEL_OR_DIR {model!r} has {EDITS_FILE} but no config.json: the saved model's weights are missing")
    saved = check_model_source(model, flag="MODEL_OR_DIR", verify_saved=True)
    if saved is None and directory.is_dir() and (directory / RECORD_FILE).exists():
        raise CheckpointError(f"MODEL_OR_DIR {model!r} has {EDITS_FILE} but no manifest.json covering it: its base model "
                              "name cannot be trusted; save it again with this version (python edit.py ... --save DIR)")
    return saved is not None


def _edit_run(args: argparse.Namespace, method: str, requests: list):
    """The run of the edit (``runner.Run``: the shared preflight, the hyperparameters merged once), and the
    subjects and trained editor the method needs."""
    from .editors import get_editor_class
    from .runner import Run, RunSpec

    run = Run(RunSpec(model=args.model, method=method, device=args.device, overrides=dict(args.overrides),
                      editor=args.editor, cache_dir=args.cache_dir, model_flag="MODEL_OR_DIR", **placement_args(args)))
    if get_editor_class(method).needs_subject:
        for r in requests:
            if r.subject is None:
                raise RequestError(
                    f"method '{method}' needs the subject of each edit: {r.prompt!r} has none; "
                    f"write --edit {EDIT_SYNTAX!r} with the SUBJECT as it occurs in the prompt")
            r.require_subject(method)
    if hasattr(run.hparams, "editor_checkpoint") and not run.hparams.editor_checkpoint:
        raise ConfigError(f"method '{method}' needs a trained editor: give --editor DIR (from `python train.py {method} MODEL`)")
    return run


# ---- answering --------------------------------------------------------------------------------------

def _show(text: str) -> str:
    return text.strip().replace("\r", "").replace("\n", "\\n")


def hits_target(answer: str, target: str) -> bool:
    """The continuation, stripped, starts with the target, stripped (case-sensitive)."""
    return answer.strip().startswith(target.strip())


def format_block(prompt: str, before: Optional[str], after: Optional[str], target: Optional[str] = None,
                 answer: Optional[str] = None) -> str:
    lines = [f"prompt:  {prompt}"]
    if answer is not None:
        lines.append(f"answer:  {_show(answer)}")
    if before is not None:
        lines.append(f"before:  {_show(before)}")
    if after is not None:
        line = f"after:   {_show(after)}"
        if target is not None:
            line += f"   [target: {target.strip()} {'✓' if hits_target(after, target) else '✗'}]"
        lines.append(line)
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    p = plan(args)  # every input check first: no model is loaded for a mistyped flag

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    return {"answer": _answer, "saved": _before_and_after_saved, "edit": _before_and_after_edit}[p.mode](p, args)


def _load(name: str, args: argparse.Namespace, part: Optional[str] = None):
    """A model to answer with, through the one runner (its preflight, its loading). ``part``: with
    ``--offload-folder``, the subfolder this model offloads to (two models loaded one after the other)."""
    from .runner import Run, RunSpec

    placement = placement_args(args)
    if part and placement["offload_folder"]:
        placement["offload_folder"] = str(Path(placement["offload_folder"]) / part)
    return Run(RunSpec(model=name, device=args.device, cache_dir=args.cache_dir, model_flag="MODEL_OR_DIR",
                       **placement)).load()


def _answers(loaded, p: Plan, args: argparse.Namespace) -> list[str]:
    from .evaluation.measure import generate_greedy
    from .preflight import check_prompts

    check_prompts(p.prompts, loaded, args.max_new_tokens)  # control tokens, context length
    return generate_greedy(loaded, p.prompts, max_new_tokens=args.max_new_tokens)


def _answer(p: Plan, args: argparse.Namespace) -> int:
    for prompt, text in zip(p.prompts, _answers(_load(p.model, args), p, args)):
        print(format_block(prompt, None, None, answer=text) + "\n")
    return 0


def _before_and_after_saved(p: Plan, args: argparse.Namespace) -> int:
    """The base model named in the (verified) edits.json answers before, when it loads here; the saved one after."""
    from .preflight import unavailable_reason

    record, base = p.record, p.record.get("base_model")
    n_edits = len(p.requests)
    print(f"saved edit: {p.model}  (method {record.get('method', '?')}, {n_edits} request{'s' * (n_edits != 1)}, "
          f"base model {base or '?'})\n")
    before: Optional[list[str]] = None
    reason = unavailable_reason(str(base)) if isinstance(base, str) else f"{EDITS_FILE} names no base_model"
    if reason is None:
        try:
            base_loaded = _load(str(base), args, part="base")
        except (LightningEditError, OSError, ValueError) as err:
            reason = str(err)
        else:
            before = _answers(base_loaded, p, args)
            del base_loaded  # one model in memory at a time
            gc.collect()
    if reason is not None:
        print(f"note: no answers before the edit: the base model cannot be loaded here ({reason}); "
              f"showing the saved model's answers only\n")
    after = _answers(_load(p.model, args, part="saved"), p, args)
    for i, prompt in enumerate(p.prompts):
        print(format_block(prompt, before[i] if before is not None else None, after[i], p.targets.get(prompt)) + "\n")
    return 0


def _before_and_after_edit(p: Plan, args: argparse.Namespace) -> int:
    """Answers, the edits (one call, or one after another), answers again, every edit undone."""
    from .editors.delta import undo_all

    loaded = p.run.load()
    p.run.check(p.requests)
    editor = p.run.editor()
    before = _answers(loaded, p, args)
    deltas = []
    try:
        if args.batch:
            deltas.append(editor.edit(loaded, p.requests))
        else:  # one request at a time, so that a failure part-way still undoes the edits already made
            for r in p.requests:
                deltas.append(editor.edit(loaded, [r]))
        after = _answers(loaded, p, args)
    finally:
        undo_all(deltas, loaded)
    seconds, n = sum(d.seconds for d in deltas), len(p.requests)
    print(f"model: {loaded.name}  edit: {p.method}, {n} request{'s' * (n != 1)}"
          f"{' in one batch' if args.batch else ''}, {seconds:.1f} s (undone afterwards)\n")
    for prompt, b, a in zip(p.prompts, before, after):
        print(format_block(prompt, b, a, p.targets.get(prompt)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
