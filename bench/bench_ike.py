"""Scoring speed of IKE edits on smollm2-135m: demonstrations run once per edit vs. in every row; prints JSON.

    python bench/bench_ike.py [--data zsre] [--n 5] [--threads 2] [--output bench_ike.json]

IKE leaves the weights alone and prepends a few hundred tokens of demonstrations to every prompt the model
reads, so what costs is scoring, not editing. Per request: the seconds of ``measure`` (every teacher-forced
score of the request) with the edit attached, once with the shared demonstrations run once into a key/value
cache (the default) and once with every row run whole in consecutive batches (the baseline), in the same process,
alternating.
The largest gap between the two runs' log-probabilities is reported too (they must agree).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lightning_edit.data import load_requests  # noqa: E402
from lightning_edit.editors import build_editor  # noqa: E402
from lightning_edit.evaluation.measure import measure  # noqa: E402
from lightning_edit.models import load_model, teacher_forcing  # noqa: E402


def timed_measure(loaded, request, share: bool) -> tuple[float, list[float]]:
    """``share=False``: the baseline, every row run whole in consecutive batches (scoring as it was before)."""
    saved = teacher_forcing.shared_prefix_length, teacher_forcing._batches_by_shared_prefix
    if not share:
        teacher_forcing.shared_prefix_length = lambda batch: 0
        teacher_forcing._batches_by_shared_prefix = lambda loaded_, prompts, size: teacher_forcing._consecutive(len(prompts), size)
    try:
        start = time.perf_counter()
        scores = measure(loaded, [request])[0]
        seconds = time.perf_counter() - start
    finally:
        teacher_forcing.shared_prefix_length, teacher_forcing._batches_by_shared_prefix = saved
    logprobs = [float(v) for slot in vars(scores).values() for s in slot for v in s.token_logprobs]
    return seconds, logprobs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data", default="zsre")
    parser.add_argument("--n", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    loaded = load_model(args.model)
    editor = build_editor("ike", loaded)
    editor.prepare(loaded)
    requests = load_requests(args.data, n=args.n)
    shared, whole, gaps, context_tokens, rows = [], [], [], [], []
    for request in requests:
        delta = editor.edit(loaded, [request])
        try:
            context = loaded.prompt_context([""])[0]
            context_tokens.append(len(loaded.tokenizer(context)["input_ids"]))
            t_whole, lp_whole = timed_measure(loaded, request, share=False)
            t_shared, lp_shared = timed_measure(loaded, request, share=True)
        finally:
            delta.undo(loaded)
        whole.append(t_whole)
        shared.append(t_shared)
        rows.append(len(lp_whole))
        gaps.append(max(abs(a - b) for a, b in zip(lp_whole, lp_shared)))
    result = {
        "model": args.model, "data": args.data, "n": len(requests), "threads": args.threads,
        "context_tokens_median": statistics.median(context_tokens),
        "scored_target_tokens_median": statistics.median(rows),
        "seconds_per_request_whole_rows": round(statistics.median(whole), 3),
        "seconds_per_request_shared_prefix": round(statistics.median(shared), 3),
        "speedup": round(statistics.median(whole) / statistics.median(shared), 2),
        "max_logprob_gap": max(gaps),
        "torch": torch.__version__,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")


if __name__ == "__main__":
    main()
