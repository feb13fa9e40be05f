"""Seconds per edit over a sequence of edits, and the process's peak memory, for one method on one model.

Each of the first ``--n`` records is applied as its own edit and kept (the sequential protocol without the scoring):
the time of the first edit (T=1), the mean over all ``--n`` (T=n) and over the last ten, and the one-off ``prepare``
(statistics, caches) apart. Run it once per method with the same records and thread count to compare them:

    OMP_NUM_THREADS=1 python bench/bench_sequential_speed.py --method ultraedit --n 100 --data zsre
    OMP_NUM_THREADS=1 python bench/bench_sequential_speed.py --method alphaedit --n 20 --data zsre
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lightning_edit.config import parse_override  # noqa: E402
from lightning_edit.data.loaders import load_requests  # noqa: E402
from lightning_edit.runner import Run, RunSpec  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", required=True)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data", default="zsre")
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    overrides = dict(parse_override(s) for s in args.set)
    run = Run(RunSpec(model=args.model, method=args.method, overrides=overrides, cache_dir=args.cache_dir, quiet=True))
    loaded, editor = run.load(), run.editor()
    requests = load_requests(args.data, n=args.n)
    start = time.perf_counter()
    editor.prepare(loaded)
    prepare = time.perf_counter() - start
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    seconds = []
    for request in requests:
        start = time.perf_counter()
        editor.edit(loaded, [request])
        seconds.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"method": args.method, "model": args.model, "data": args.data, "n": len(seconds),
                      "threads": args.threads, "overrides": args.set, "prepare_seconds": round(prepare, 2),
                      "first_edit_seconds": round(seconds[0], 3),
                      "mean_seconds_per_edit": round(statistics.mean(seconds), 3),
                      "mean_seconds_last_10": round(statistics.mean(seconds[-10:]), 3),
                      "peak_rss_mb": round(peak / 1024), "peak_rss_mb_before_edits": round(rss_before / 1024)}))


if __name__ == "__main__":
    main()
