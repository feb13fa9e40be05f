"""``python edit.py --multihop --data mquake``: the multi-hop protocol from the command line (lightning_edit/cli.py
hands over here when --multihop is given)."""
from __future__ import annotations

import argparse
import json
from .atomic import atomic_write_text
from .errors import ConfigError


def check_multihop_args(args: argparse.Namespace) -> None:
    """Options that mean nothing under --multihop are refused before anything loads."""
    if args.sequential or args.batch_size > 1:
        raise ConfigError("--multihop applies all the edits of each MQuAKE case together (one edit call per case, undone "
                          "before the next case); leave out --sequential and --batch-size")
    if args.save:
        raise ConfigError("--save: --multihop undoes each case's edits before the next case, so there is no one edited "
                          "model to save; drop --save (or run the case's edits without --multihop)")


def run_multihop(args: argparse.Namespace) -> int:
    """``edit.py --multihop``: the same run as ``edit.py`` (``runner.Run``: one preflight, one merge), the
    multi-hop protocol instead of the single one."""
    from transformers import set_seed

    from .data.multihop import load_multihop_cases
    from .evaluation.multihop import FEW_SHOT_TEMPLATE, ZERO_SHOT_TEMPLATE, format_multihop, multihop_verdict
    from .options import apply_threads, check_output_path
    from .runner import Run, RunSpec

    check_multihop_args(args)
    apply_threads(args.threads)
    set_seed(args.seed)  # Python, NumPy and torch (every device), as Lightning's seed_everything
    cases = load_multihop_cases(args.data, n=args.n, data_dir=args.data_dir, offset=args.offset)
    check_output_path("--output", args.output, directory=False)
    run = Run(RunSpec.from_args(args))
    run.check([r for case in cases for r in case.requests])
    template = ZERO_SHOT_TEMPLATE if args.zero_shot else FEW_SHOT_TEMPLATE
    report = run.evaluate_multihop(cases, template, generate_tokens=args.generate, progress=not args.quiet)
    result = report.to_json()
    result["config"].update({"data": args.data, "seed": args.seed, "offset": args.offset})
    print(format_multihop(report))
    print(f"\n{report.method} on {report.model}, multihop protocol: {multihop_verdict(report)}")
    if args.json:
        print(json.dumps({"pre": report.pre, "post": result["summary"]}, indent=2))
    if args.output:
        atomic_write_text(args.output, json.dumps(result, indent=2, default=str))
        print(f"report written to {args.output}")
    return 0
