"""``lightning-edit capability MODEL_OR_DIR --tasks ...``: the general capability of a model, or of an edited model
saved with ``--save`` (patches attached), beside the unedited model it was made from (``evaluation/capability.py``)."""
from __future__ import annotations

import argparse
import json
import math
import time
from typing import Optional, Sequence

from .errors import ConfigError
from .evaluation.capability import (
    DEFAULT_TASKS,
    DROP,
    LOCAL_TASKS,
    capability_scores,
    check_tasks,
    parse_tasks,
    relative_change,
)
from .options import _positive_int, add_threads_option, apply_threads, check_output_path
from .runner import Run, RunSpec


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lightning-edit capability", description=(
        "General capability of a model or a --save directory (its patches attached), beside the unedited model. "
        f"Local tasks (offline): {'; '.join(f'{k}: {v}' for k, v in LOCAL_TASKS.items())}. Any other name is an "
        "lm-evaluation-harness task (pip install lm-eval)."))
    p.add_argument("model", metavar="MODEL_OR_DIR",
                   help="registered model name, hub id, local HF directory or a --save directory")
    p.add_argument("--tasks", default=",".join(DEFAULT_TASKS), help="comma-separated tasks (default %(default)s)")
    p.add_argument("--limit", type=_positive_int, default=None,
                   help="per task: perplexity windows, known facts, or lm-eval documents (default: all)")
    p.add_argument("--include-path", default=None,
                   help="a folder of your own lm-eval task YAMLs (lm-eval's --include_path)")
    p.add_argument("--baseline", default=None, help="the unedited model to score beside it (default: a --save "
                                                    "directory's base model, as its manifest names it; none otherwise)")
    p.add_argument("--no-baseline", action="store_true", help="score MODEL_OR_DIR only")
    p.add_argument("--batch-size", type=_positive_int, default=8,
                   help="sequences per forward pass (default %(default)s)")
    p.add_argument("--window", type=_positive_int, default=256,
                   help="tokens per perplexity window (default %(default)s)")
    p.add_argument("--data-dir", default=None, help="benchmark data folder (known-facts reads known_1000 there)")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16 (default %(default)s)")
    add_threads_option(p)
    p.add_argument("--output", default=None, help="write the scores as JSON here")
    p.add_argument("--json", action="store_true", help="also print the scores as JSON")
    p.add_argument("--debug", action="store_true", help="print the Python traceback of an error")
    return p


def baseline_of(args: argparse.Namespace) -> Optional[str]:
    """The unedited model to score beside MODEL_OR_DIR: --baseline, else a saved directory's base model."""
    from .models.saving import open_saved

    if args.no_baseline:
        if args.baseline:
            raise ConfigError("--baseline and --no-baseline contradict each other; give one")
        return None
    if args.baseline:
        return args.baseline
    saved = open_saved(args.model)
    return (saved.manifest or {}).get("base_model") if saved is not None else None


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(list(argv))
    apply_threads(args.threads)
    tasks = parse_tasks(args.tasks)
    check_tasks(tasks, args.include_path, args.data_dir)
    check_output_path("--output", args.output, directory=False)
    baseline = baseline_of(args)
    runs = {"edited": Run(RunSpec(model=args.model, device=args.device, dtype=args.dtype, cache_dir=args.cache_dir,
                                  model_flag="MODEL_OR_DIR"))}
    if baseline:
        runs["baseline"] = Run(RunSpec(model=baseline, device=args.device, dtype=args.dtype, cache_dir=args.cache_dir,
                                       model_flag="--baseline"))
    options = dict(limit=args.limit, data_dir=args.data_dir, include_path=args.include_path, batch_size=args.batch_size,
                   window=args.window)
    result: dict = {"model": args.model, "baseline": baseline, "tasks": tasks, "limit": args.limit, "scores": {}}
    for role in ("baseline", "edited"):  # one model in memory at a time
        if role in runs:
            start = time.perf_counter()
            loaded = runs[role].load()
            if role == "edited":
                result["patches"] = loaded.patches.keys()  # a --save directory's, verified and attached on loading
            result["scores"][role] = capability_scores(loaded, tasks, **options)
            result[f"{role}_seconds"] = round(time.perf_counter() - start, 1)
            runs[role].loaded = None
            del loaded
    print(format_scores(result))
    if args.json:
        print(json.dumps(result, indent=2))
    if args.output:
        from .atomic import atomic_write_text

        atomic_write_text(args.output, json.dumps(result, indent=2))
        print(f"scores written to {args.output}")
    return 0


def format_scores(result: dict) -> str:
    """One row per score: the baseline's value, the model's, and whether it fell by 5% or more."""
    edited, base = result["scores"]["edited"], result["scores"].get("baseline")
    patches = result.get("patches")
    lines = [f"{result['model']}: scored with its patches {', '.join(patches)} attached"] if patches else []
    before_title = f"before ({result['baseline']})" if base else ""
    lines += [f"{'score':<24}  {before_title:>18}  {result['model'][-30:]:>18}  change"]
    for key, value in edited.items():
        before = base.get(key, math.nan) if base else math.nan
        change = relative_change(key, before, value) if base else math.nan
        note = "" if math.isnan(change) else "unchanged" if abs(change) < 5e-4 else (
            f"{'worse' if change > 0 else 'better'} by {abs(change):.1%}"
                                              + (f"  (fell by ≥{DROP:.0%})" if change >= DROP else ""))
        lines.append(f"{key:<24}  {before:>18.4f}  {value:>18.4f}  {note}" if base
                     else f"{key:<24}  {'':>18}  {value:>18.4f}")
    return "\n".join(lines)
