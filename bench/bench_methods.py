"""Time per edit and peak memory of editing methods beside the closest existing one: same records, same thread count,
each method in a fresh process (so its peak resident set is its own); prints JSON.

    python bench/bench_methods.py --pairs rome:r-rome memit:emmet memit:pmet --data counterfact --n 10
    python bench/bench_methods.py --pairs mend:malmen ft-m:lora alphaedit:ultraedit \
        --editors mend=checkpoints/editors/mend-smollm2-135m malmen=checkpoints/editors/malmen-smollm2-135m

Each pair is ``existing:new``; a method named in several pairs runs once. Per method, in its own subprocess: the
model is loaded, the editor built from its configs and prepared (context prefixes, second-moment statistics from the
cache, or computed there: ``prepare_seconds``), then the same ``--n`` records are edited and undone. A method that
edits batches (``supports_batch``) edits all records in one call (``--batch-size`` to change it); the others edit one
record per call. Reported: seconds per edit (the edit calls' wall time / records), the process's peak resident set
(``peak_rss_mb``: model, statistics and edits) and the edits' own peak above the level before them
(``edit_added_mb``), torch's thread count, and the host's load average before and after (other work on the cores
slows every method alike only when the load stays level). Written to docs/results/bench/new_methods.json unless
``--output`` says otherwise.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _report import emit

DEFAULT_OUTPUT = ROOT / "docs" / "results" / "bench" / "new_methods.json"


def measure_method(method: str, model: str, data: str, n: int, batch_size: int, threads: int,
                   trained: Optional[str] = None) -> dict:
    """In this process: prepare ``method`` on ``model`` (a learnt one from its ``trained`` editor folder) and edit
    the first ``n`` records of ``data``, each call undone."""
    import torch

    from lightning_edit.data import load_requests
    from lightning_edit.metrics import PeakMemoryMonitor
    from lightning_edit.runner import Run, RunSpec

    torch.set_num_threads(threads)
    load_before = os.getloadavg()
    quiet = {"progress": False} if "progress" in {f.name for f in dataclasses.fields(editor_hparams(method))} else {}
    run = Run(RunSpec(model=model, method=method, overrides=quiet, editor=trained, quiet=True))
    loaded = run.load()
    requests = load_requests(data, n=n)
    editor = run.editor()
    start = time.perf_counter()
    editor.prepare(loaded)
    prepare_seconds = time.perf_counter() - start
    size = batch_size or (len(requests) if editor.supports_batch else 1)
    calls = [requests[i: i + size] for i in range(0, len(requests), size)]
    seconds = 0.0
    with PeakMemoryMonitor(loaded.device) as memory:
        for call in calls:
            start = time.perf_counter()
            delta = editor.edit(loaded, call)
            seconds += time.perf_counter() - start
            delta.undo(loaded)
    return {"method": method, "records": len(requests), "edit_calls": len(calls), "batch_size": size,
            "seconds_per_edit": round(seconds / len(requests), 3), "edit_seconds": round(seconds, 2),
            "prepare_seconds": round(prepare_seconds, 2),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "edit_added_mb": round(memory.added_mb, 1), "threads": torch.get_num_threads(),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()]}


def editor_hparams(method: str) -> type:
    from lightning_edit.editors import get_editor_class

    return get_editor_class(method).HParams


def run_in_subprocess(method: str, args: argparse.Namespace) -> dict:
    """``measure_method`` in a fresh interpreter with the thread count fixed for every library (OMP, MKL, torch)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", method, "--model", args.model,
               "--data", args.data, "--n", str(args.n), "--batch-size", str(args.batch_size), "--threads", str(args.threads)]
    trained = dict(parse_editors(args.editors)).get(method)
    command += ["--editors", f"{method}={trained}"] if trained else []
    done = subprocess.run(command, check=False, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        return {"method": method, "error": done.stderr.strip().splitlines()[-1:] or [f"exit status {done.returncode}"]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def split_pairs(texts: list[str], separator: str, flag: str, shape: str) -> list[tuple[str, str]]:
    """``LEFT<separator>RIGHT`` texts as pairs; a malformed one stops the benchmark naming ``flag`` and ``shape``."""
    pairs = []
    for text in texts:
        left, sep, right = text.partition(separator)
        if not sep or not left or not right:
            raise SystemExit(f"{flag}: {text!r} is not {shape}")
        pairs.append((left, right))
    return pairs


def parse_editors(texts: list[str]) -> list[tuple[str, str]]:
    """``METHOD=DIR`` pairs of ``--editors``: the trained editor each learnt method edits with."""
    return split_pairs(texts, "=", "--editors", "METHOD=DIR (e.g. malmen=checkpoints/editors/malmen-smollm2-135m)")


def parse_pairs(texts: list[str]) -> list[tuple[str, str]]:
    return split_pairs(texts, ":", "--pairs", "EXISTING:NEW (e.g. rome:r-rome)")


def compare(pairs: list[tuple[str, str]], results: dict[str, dict]) -> list[dict]:
    """Per pair, the new method's time per edit and peak resident set as multiples of the existing one's."""
    rows = []
    for base, new in pairs:
        a, b = results[base], results[new]
        if "error" in a or "error" in b:
            rows.append({"pair": f"{base}:{new}", "error": "a method failed (see its entry)"})
            continue
        rows.append({"pair": f"{base}:{new}", "time_ratio": round(b["seconds_per_edit"] / a["seconds_per_edit"], 3),
                     "peak_rss_ratio": round(b["peak_rss_mb"] / a["peak_rss_mb"], 3)})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", nargs="+", default=["rome:r-rome", "memit:emmet", "memit:pmet"])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data", default="counterfact")
    parser.add_argument("--n", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=0, help="records per edit call (0: all for batch methods, else 1)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", default=str(DEFAULT_OUTPUT))
    parser.add_argument("--editors", nargs="*", default=[], metavar="METHOD=DIR",
                        help="the trained editor of each learnt method, e.g. malmen=checkpoints/editors/malmen-smollm2-135m")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # the subprocess measuring one method
    args = parser.parse_args()
    if args.n < 1 or args.threads < 1 or args.batch_size < 0:
        raise SystemExit("--n and --threads must be ≥ 1, --batch-size ≥ 0")
    if args.worker:
        trained = dict(parse_editors(args.editors)).get(args.worker)
        print(json.dumps(measure_method(args.worker, args.model, args.data, args.n, args.batch_size, args.threads,
                                        trained)))
        return 0
    parse_editors(args.editors)  # refused before the first method runs
    pairs = parse_pairs(args.pairs)
    methods = list(dict.fromkeys(m for pair in pairs for m in pair))
    results = {method: run_in_subprocess(method, args) for method in methods}
    return emit({"model": args.model, "data": args.data, "n": args.n, "threads": args.threads, "cpus": os.cpu_count(),
                 "methods": results, "pairs": compare(pairs, results)}, args.output)


if __name__ == "__main__":
    raise SystemExit(main())
