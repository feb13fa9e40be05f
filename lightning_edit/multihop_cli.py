"""``python edit.py --multihop --data mquake``: the multi-hop protocol from the command line (lightning_edit/cli.py
hands over here when --multihop is given)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Callable

from .errors import ConfigError


def check_multihop_args(args: argparse.Namespace) -> None:
    """Options that mean nothing under --multihop are refused before anything loads."""
    if args.sequential or args.batch_size > 1:
        raise ConfigError("--multihop applies all the edits of each MQuAKE case together (one edit call per case, undone "
                          "before the next case); leave out --sequential and --batch-size")
    if args.save:
        raise ConfigError("--save: --multihop undoes each case's edits before the next case, so there is no one edited "
                          "model to save; drop --save (or run the case's edits without --multihop)")


def run_multihop(args: argparse.Namespace, preflight: Callable, known_overrides: Callable) -> int:
    """``edit.py --multihop``. ``preflight`` and ``known_overrides`` are edit.py's own checks (cli.py hands them over, so
    this module does not import cli.py back)."""
    from transformers import set_seed

    from .options import apply_threads
    from .data.multihop import load_multihop_cases
    from .editors import build_editor
    from .evaluation.multihop import FEW_SHOT_TEMPLATE, ZERO_SHOT_TEMPLATE, evaluate_multihop, format_multihop, multihop_verdict
    from .models import load_model
    from .preflight import check_requests

    check_multihop_args(args)
    apply_threads(args.threads)
    set_seed(args.seed)  # Python, NumPy and torch (every device), as Lightning's seed_everything
    cases = load_multihop_cases(args.data, n=args.n, data_dir=args.data_dir, offset=args.offset)
    requests = [r for case in cases for r in case.requests]
    _, overrides = preflight(args, len(requests))
    if args.quiet:
        overrides.setdefault("progress", False)
    loaded = load_model(args.model, cache_dir=args.cache_dir, device=args.device, dtype=args.dtype)
    check_requests(requests, loaded)
    editor = build_editor(args.method, loaded, known_overrides(args.method, overrides, args))
    template = ZERO_SHOT_TEMPLATE if args.zero_shot else FEW_SHOT_TEMPLATE
    report = evaluate_multihop(loaded, editor, cases, template, generate_tokens=args.generate, progress=not args.quiet)
    result = report.to_json()
    result["config"].update({"data": args.data, "seed": args.seed, "offset": args.offset})
    print(format_multihop(report))
    print(f"\n{report.method} on {report.model}, multihop protocol: {multihop_verdict(report)}")
    if args.json:
        print(json.dumps({"pre": report.pre, "post": result["summary"]}, indent=2))
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=2, default=str))
        print(f"report written to {args.output}")
    return 0
