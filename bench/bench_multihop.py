"""Seconds to score MQuAKE cases (the multi-hop protocol's scoring, pre-edit) with and without shared prefixes;
prints JSON.

    python bench/bench_multihop.py [--n 5] [--threads 1] [--method none|ike] [--output bench_multihop.json]

For each of the first ``--n`` MQuAKE cases, ``score_case`` (three few-shot questions × every answer and alias, and
the edit prompts) runs twice in this process, alternating which goes first:

* ``whole rows``: every row runs its demonstrations and question itself (shared prefixes switched off, as the code
  before them did);
* ``shared prefixes``: the demonstrations run once per case, each question once on top, then its answers.

``--method ike`` scores the case with IKE's context for the case's edits attached (its demonstrations ahead of the
question's), the in-context path. Reports per-case and total seconds of each and whether every score of the case
(every key of ``score_case``'s row) is equal between the two.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from _report import emit  # bench/_report.py: this folder is on sys.path when a script runs

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lightning_edit.data.multihop import load_multihop_cases  # noqa: E402
from lightning_edit.editors import build_editor  # noqa: E402
from lightning_edit.evaluation.multihop import score_case  # noqa: E402
from lightning_edit.models import load_model  # noqa: E402
from lightning_edit.models import teacher_forcing  # noqa: E402


@contextmanager
def whole_rows():
    """Shared prefixes off: no prefix is ever long enough."""
    saved = teacher_forcing.MIN_SHARED_TOKENS
    teacher_forcing.MIN_SHARED_TOKENS = 10**9
    try:
        yield
    finally:
        teacher_forcing.MIN_SHARED_TOKENS = saved


@contextmanager
def nothing():
    yield


def timed_score(loaded, case) -> tuple[float, dict]:
    start = time.perf_counter()
    row = score_case(loaded, case)
    return time.perf_counter() - start, row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--method", default="none", choices=["none", "ike"], help="ike: score with IKE's context attached")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--output", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    loaded = load_model(args.model)
    cases = load_multihop_cases("mquake", n=args.n, data_dir=args.data_dir)
    editor = build_editor("ike", loaded, {}) if args.method == "ike" else None
    out = {"model": args.model, "n": args.n, "threads": args.threads, "method": args.method,
           "load_1min_before": round(os.getloadavg()[0], 2), "cases": []}
    for i, case in enumerate(cases):
        delta = editor.edit(loaded, list(case.requests)) if editor is not None else None
        try:
            order = [("whole rows", whole_rows), ("shared prefixes", nothing)]
            if i % 2:
                order.reverse()  # neither variant always runs first (warm-up, other jobs)
            runs = {}
            for label, setting in order:
                with setting():
                    runs[label] = timed_score(loaded, case)
        finally:
            if delta is not None:
                delta.undo(loaded)
        whole, shared = runs["whole rows"], runs["shared prefixes"]
        out["cases"].append({"case_id": case.case_id, "questions": len(case.questions),
                             "answers_per_question": len(case.new_answers) + len(case.old_answers),
                             "whole_rows_seconds": round(whole[0], 2), "shared_prefixes_seconds": round(shared[0], 2),
                             "scores_equal": whole[1] == shared[1]})
        print(json.dumps(out["cases"][-1]), file=sys.stderr)
    total_whole = sum(c["whole_rows_seconds"] for c in out["cases"])
    total_shared = sum(c["shared_prefixes_seconds"] for c in out["cases"])
    out.update(whole_rows_seconds=round(total_whole, 1), shared_prefixes_seconds=round(total_shared, 1),
               speedup=round(total_whole / total_shared, 2), all_scores_equal=all(c["scores_equal"] for c in out["cases"]),
               load_1min_after=round(os.getloadavg()[0], 2))
    return emit(out, args.output)


if __name__ == "__main__":
    sys.exit(main())
