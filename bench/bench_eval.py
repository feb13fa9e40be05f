"""Wall time of `python edit.py` (the demo by default) before and after fast evaluation, back to back; prints JSON.

    python bench/bench_eval.py [--n 20] [--threads 2] [--method rome] [--before-ref 9202841] [--output bench_eval.json]

Runs, in this order, each a fresh `python edit.py ... --quiet --output <report>` process:

* ``before``: with ``--before-ref REF``, the code of that git commit (extracted with ``git archive`` into a temporary
  folder; nothing in this checkout changes); without it, this checkout with ``--no-pre-cache`` (the scoring path
  of this code, pre-edit results computed afresh).
* ``after``: this checkout, reusing the pre-edit cache. A run that had to fill the cache (it wrote entries) is
  reported as ``after (cold pre-edit cache)`` and followed by a second, warm one.

Per run: wall and CPU seconds of the process, the load average (1 min) before and after (the machine may be
shared: compare runs only at similar load), the report's split of seconds (prepare, edit, scoring, generation),
and whether every metric of the report, summary and per request (generations included), equals the first run's
(numbers within 1e-6, text exactly).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from _report import emit  # bench/_report.py: this folder is on sys.path when a script runs

ROOT = Path(__file__).resolve().parents[1]
TIMING_KEYS = ("edit_seconds", "edit_seconds_mean", "scoring_seconds_per_request", "seconds_per_request",
               "peak_memory_mb", "prepare_seconds", "time_split_seconds")


def same(a, b, tol: float = 1e-6) -> bool:
    """Equal structures, numbers within ``tol`` (float noise of a different batch shape), text exactly."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k], tol) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y, tol) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and abs(a - b) <= tol
    return a == b


def pre_cache_entries(cache_root: Path) -> int:
    return sum(1 for _ in (cache_root / "pre_edit").rglob("*.safetensors"))


def extract(ref: str, into: Path) -> Path:
    """The tree of commit ``ref`` in a fresh folder (``git archive``; the checkout is left as it is)."""
    archive = into / "tree.tar"
    subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", "-o", str(archive), ref], check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into / "tree", filter="data")
    return into / "tree"


def run_edit(code_root: Path, args: argparse.Namespace, extra: list[str], report: Path, label: str) -> dict:
    cmd = [sys.executable, "edit.py", "--method", args.method, "--data", args.data, "--n", str(args.n),
           "--threads", str(args.threads), "--quiet", "--output", str(report), *extra]
    env = {**os.environ, "PYTHONPATH": str(code_root)}  # the code under test, not an installed copy
    cache_root = Path(env.get("LIGHTNING_EDIT_CACHE") or ROOT / "checkpoints")
    entries_before, load_before = pre_cache_entries(cache_root), os.getloadavg()[0]
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=code_root, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{label}: {' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    result = json.loads(report.read_text())
    summary = result["summary"]
    split = summary["time_split_seconds"]
    return {
        "run": label, "code": str(code_root), "command": " ".join(cmd[1:]),
        "wall_seconds": round(wall, 1),
        "cpu_seconds": round(cpu_after.ru_utime + cpu_after.ru_stime - cpu_before.ru_utime - cpu_before.ru_stime, 1),
        "load_1min_before": round(load_before, 2), "load_1min_after": round(os.getloadavg()[0], 2),
        "split_seconds": split,
        "scoring_plus_generation_seconds": round(split["scoring"] + split["generation"], 1),
        "edit_seconds_mean": summary["edit_seconds_mean"], "seconds_per_request": summary["seconds_per_request"],
        "new_pre_cache_entries": pre_cache_entries(cache_root) - entries_before,
        "metrics": {k: v for k, v in summary.items() if k not in TIMING_KEYS},
        "requests": [{k: v for k, v in row.items() if not k.endswith("seconds")} for row in result["requests"]],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", default="rome")
    p.add_argument("--data", default="demo")
    p.add_argument("--n", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--before-ref", default=None, help="git commit whose code is 'before' (default: this code, --no-pre-cache)")
    p.add_argument("--skip-before", action="store_true", help="time only the 'after' runs")
    p.add_argument("--output", default=None, help="also write the JSON here")
    args = p.parse_args(argv)
    runs: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench_eval_") as tmp:
        tmp_path = Path(tmp)
        if not args.skip_before:
            code = extract(args.before_ref, tmp_path) if args.before_ref else ROOT
            extra = [] if args.before_ref else ["--no-pre-cache"]
            runs.append(run_edit(code, args, extra, tmp_path / "before.json", f"before ({args.before_ref or 'this code, --no-pre-cache'})"))
        after = run_edit(ROOT, args, [], tmp_path / "after.json", "after")
        if after["new_pre_cache_entries"]:
            after["run"] = "after (cold pre-edit cache)"
            runs.append(after)
            after = run_edit(ROOT, args, [], tmp_path / "after.json", "after (warm pre-edit cache)")
        runs.append(after)
    reference = runs[0]
    for run in runs:
        run["metrics_equal_first_run"] = same(run["metrics"], reference["metrics"]) and same(run["requests"], reference["requests"])
    for run in runs:
        del run["requests"]
    out = {"threads": args.threads, "cpu_count": os.cpu_count(), "n": args.n, "method": args.method, "data": args.data,
           "runs": runs}
    if len(runs) > 1:
        out["wall_speedup_last_over_first"] = round(runs[0]["wall_seconds"] / runs[-1]["wall_seconds"], 2)
    return emit(out, args.output)


if __name__ == "__main__":
    sys.exit(main())
