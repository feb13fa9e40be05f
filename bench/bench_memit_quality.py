"""MEMIT's (or ROME's) quality, speed and memory under the settings that differ from EasyEdit's; prints JSON.

    python bench/bench_memit_quality.py [--method memit] [--n 20] [--offset 1000] [--threads 2] [--prefix-ref REF]

MEMIT: one batch of ``--n`` CounterFact records (from ``--offset``, records the configurations were not tuned on)
per variant; ROME: ``--n`` single edits. Each is scored as the study does (reliability = teacher-forced token accuracy of target_new, EasyEdit's
``rewrite_acc``; generalization = on the paraphrases; locality = neighbourhood tokens unchanged):

* ``early_stop_on`` (``--early-stop-on``): "nll" (the default: stop a request's value optimisation once its
  new-object NLL is below ``v_early_stop_loss``) against "loss" (the whole loss, NLL + KL + weight decay, as ROME's, MEMIT's and
  EasyEdit's ``compute_z`` do);
* ``context_prefixes`` (``--prefixes``): 3 (the smollm2 configuration) against 5 (MEMIT's default).

Also the seconds to sample the context prefixes with this code and, with ``--prefix-ref``, with the
``generate_context_prefixes`` of that git commit (loaded from ``git show``; nothing in the checkout changes).
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

import torch

from _report import emit  # bench/_report.py: this folder is on sys.path when a script runs

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lightning_edit.data import load_requests  # noqa: E402
from lightning_edit.editors import build_editor  # noqa: E402
from lightning_edit.editors.locate import values as values_mod  # noqa: E402
from lightning_edit.editors.locate.keys import generate_context_prefixes  # noqa: E402
from lightning_edit.evaluation.protocols import evaluate_editing  # noqa: E402
from lightning_edit.models import load_model  # noqa: E402

KEYS = ("reliability", "generalization", "locality", "efficacy_score", "paraphrase_score", "neighborhood_score")


def prefix_seconds(loaded, n: int, ref: str | None) -> dict:
    """Seconds to sample ``n`` prefixes of 10 tokens: this code, and the code of commit ``ref``."""
    def timed(fn) -> float:
        start = time.perf_counter()
        fn(loaded, n, 10, 0)
        return round(time.perf_counter() - start, 2)

    out = {"prefixes": n, "this_code_seconds": timed(generate_context_prefixes)}
    if ref:
        source = subprocess.run(["git", "-C", str(ROOT), "show", f"{ref}:lightning_edit/editors/locate/keys.py"],
                                check=True, capture_output=True, text=True).stdout
        # run the old module's text inside this package, so that its relative imports resolve; no file is written
        module = types.ModuleType(f"lightning_edit.editors.locate.keys_at_{ref}")
        module.__package__ = "lightning_edit.editors.locate"
        exec(compile(source, f"{ref}:keys.py", "exec"), module.__dict__)
        out[f"{ref}_seconds"] = timed(module.generate_context_prefixes)
    return out


def run_variant(loaded, requests, method: str, overrides: dict) -> dict:
    steps: list[int] = []
    real = values_mod.optimise_values

    def counting(*args, **kwargs):
        result = real(*args, **kwargs)
        steps.extend(result.steps_run)
        return result

    values_mod.optimise_values = counting
    method_mod = importlib.import_module(f"lightning_edit.editors.locate.{method}")
    method_mod.optimise_values = counting  # the method's own reference to it
    try:
        editor = build_editor(method, loaded, overrides)
        batch = method == "memit"
        report = evaluate_editing(loaded, editor, requests, protocol="batch" if batch else "single",
                                  batch_size=len(requests) if batch else 1, fluency=False, progress=False)
    finally:
        values_mod.optimise_values = real
        method_mod.optimise_values = real
    eff = report.efficiency
    return {"overrides": overrides, **{k: report.post.get(k) for k in KEYS},
            "edits_taken": sum(1 for r in report.requests if r["post"].get("reliability_exact", 0.0) >= 1.0),
            "edit_seconds_total": round(eff["time_split_seconds"]["edit"], 1), "peak_memory_mb": eff["peak_memory_mb"],
            "value_steps_median": statistics.median(steps) if steps else None,
            "value_steps_at_limit": sum(1 for s in steps if s >= editor.hparams.v_num_grad_steps)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", choices=("memit", "rome"), default="memit")
    p.add_argument("--n", type=int, default=20)
    p.add_argument("--offset", type=int, default=1000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--early-stop-on", default="nll,loss", help="comma-separated v_early_stop_on values to compare")
    p.add_argument("--prefixes", default="3,5", help="comma-separated context_prefixes values to compare")
    p.add_argument("--prefix-ref", default=None, help="git commit whose prefix sampler is timed beside this one")
    p.add_argument("--output", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    loaded = load_model(args.model)
    requests = load_requests("counterfact", n=args.n, offset=args.offset)
    out = {"method": args.method, "model": args.model, "n": args.n, "offset": args.offset, "threads": args.threads,
           "load_1min_before": round(os.getloadavg()[0], 2), "prefix_sampling": prefix_seconds(loaded, 5, args.prefix_ref),
           "variants": []}
    variants = [{"v_early_stop_on": stop, "context_prefixes": int(k)} for k in args.prefixes.split(",")
                for stop in args.early_stop_on.split(",")]
    for overrides in variants:
        out["variants"].append(run_variant(loaded, requests, args.method, overrides))
        print(json.dumps(out["variants"][-1]), file=sys.stderr)
    out["load_1min_after"] = round(os.getloadavg()[0], 2)
    return emit(out, args.output)


if __name__ == "__main__":
    sys.exit(main())
