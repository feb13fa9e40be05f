"""`python edit.py`: apply edits to a model and report metrics."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

import yaml

from .errors import LightningEditError

DEFAULT_METHOD = "rome"


def _parse_override(text: str) -> tuple[str, object]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--set expects KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    return key, yaml.safe_load(value)


def build_parser() -> argparse.ArgumentParser:
    from .editors import EDITORS

    p = argparse.ArgumentParser(prog="edit.py", description="Edit facts in a language model and measure the edit.")
    p.add_argument("--method", default=DEFAULT_METHOD, help=f"editing method: {', '.join(sorted(EDITORS))} (default %(default)s)")
    p.add_argument("--model", default="smollm2-135m", help="registered model name, hub id or local HF directory (default %(default)s)")
    p.add_argument("--data", default="demo", help="dataset name (demo, zsre, counterfact, knowedit-*, mquake, ...) or JSON file (default %(default)s)")
    p.add_argument("--data-dir", default=None, help="folder of benchmark data (default $LIGHTNING_EDIT_DATA or ../shared/data)")
    p.add_argument("--n", type=int, default=None, help="number of requests (default: all)")
    p.add_argument("--offset", type=int, default=0, help="skip this many records first")
    p.add_argument("--batch-size", type=int, default=1, help="requests per edit call (batch protocol when > 1)")
    p.add_argument("--sequential", action="store_true", help="keep every edit and score all after the last (sequential protocol)")
    p.add_argument("--output", default=None, help="write the JSON report here")
    p.add_argument("--save", default=None, help="save the edited model (safetensors HF directory) and a record of the edits here")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", default=None, help="where dequantized models and statistics are cached (default $LIGHTNING_EDIT_CACHE or checkpoints/)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--editor", default=None, help="trained editor checkpoint directory (learnt methods)")
    p.add_argument("--set", dest="overrides", action="append", type=_parse_override, default=[], metavar="KEY=VALUE",
                   help="override a hyperparameter of configs/<method>/ (repeatable)")
    p.add_argument("--no-fluency", action="store_true", help="skip greedy generations for the fluency score")
    p.add_argument("--fluency-tokens", type=int, default=40, help="tokens generated per prompt for the fluency score (default %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def build_study_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edit.py study", description="Run a study configuration (configs/study/) and write its tables and figures.")
    p.add_argument("--config", default="quick", help="study name in configs/study/ or a YAML path (default %(default)s)")
    p.add_argument("--quick", action="store_const", const="quick", dest="config", help="same as --config quick")
    p.add_argument("--model", default=None, help="override the configuration's model (e.g. gemma3-270m)")
    p.add_argument("--methods", default=None, help="comma-separated subset of the configuration's methods")
    p.add_argument("--results-dir", default=None, help="output folder (default results/<config>-<model>)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--quiet", action="store_true")
    return p


def run_study(args: argparse.Namespace) -> int:
    from .evaluation.study import Study, StudyConfig

    config = StudyConfig.load(args.config, model=args.model)
    if args.methods:
        config.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    results = Path(args.results_dir or f"results/{config.name}-{config.model}")
    tables = Study(config, results, data_dir=args.data_dir, progress=not args.quiet).run()
    for name, md in tables.items():
        print(f"\n## {name}\n{md}")
    print(f"\nresults in {results}/ (README.md, *.csv, *.md, *.png, results.json)")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] == "study":
            return run_study(build_study_parser().parse_args(argv[1:]))
        return run(build_parser().parse_args(argv))
    except LightningEditError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    import lightning as L

    from .data import load_requests
    from .editors import build_editor
    from .evaluation import evaluate_editing, format_table
    from .models import load_model

    L.seed_everything(args.seed, verbose=False)
    if args.sequential and args.batch_size > 1:
        raise LightningEditError("--sequential and --batch-size > 1 are different protocols; choose one")
    protocol = "sequential" if args.sequential else ("batch" if args.batch_size > 1 else "single")
    requests = load_requests(args.data, n=args.n, data_dir=args.data_dir, offset=args.offset)
    loaded = load_model(args.model, cache_dir=args.cache_dir, device=args.device)
    overrides = dict(args.overrides)
    if args.editor:
        overrides["editor_checkpoint"] = args.editor
    editor = build_editor(args.method, loaded, overrides)
    report = evaluate_editing(loaded, editor, requests, protocol=protocol, batch_size=args.batch_size,
                              fluency=not args.no_fluency, fluency_tokens=args.fluency_tokens, progress=not args.quiet)
    result = report.to_json()
    result["config"].update({"data": args.data, "seed": args.seed, "offset": args.offset})
    print(format_table(report))
    print(json.dumps(result["summary"], indent=2))
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=2, default=str))
        print(f"report written to {args.output}")
    if args.save:
        save_edited(loaded, editor, requests, Path(args.save), batch=args.batch_size > 1)
        print(f"edited model saved to {args.save}")
    return 0


def save_edited(loaded, editor, requests, directory: Path, batch: bool) -> None:
    """Apply every request (one batch, or one after another) and save the edited model with a record."""
    deltas = [editor.edit(loaded, requests)] if batch else editor.edit_sequential(loaded, requests)
    directory.mkdir(parents=True, exist_ok=True)
    loaded.model.save_pretrained(directory, safe_serialization=True)
    loaded.tokenizer.save_pretrained(directory)
    (directory / "edits.json").write_text(json.dumps({
        "method": editor.name, "base_model": loaded.name, "hparams": editor.hparams.to_dict(),
        "edits": [{"seconds": d.seconds, "requests": [r.to_dict() for r in d.requests]} for d in deltas],
    }, indent=2, default=str))
    for d in reversed(deltas):
        d.undo(loaded)
