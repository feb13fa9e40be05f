"""Scale-out benchmarks: the same study run in one process and spread out, with wall times and an equality check
of every cell.

``--part ray``: ``edit.py study`` serially, then with ``--ray --ray-workers N`` on a local Ray (each worker one
thread), into two temporary results folders; every cell file of the two is compared (clocks and peak memory
aside: ``cell_results``). Prints JSON and writes ``docs/results/bench/scaleout_ray.json``.

    python bench/bench_scaleout.py --part ray
    python bench/bench_scaleout.py --part ray --methods ft-m,rome,grace --workers 2

Each part is a function of its own (``PARTS``), so that others (a device-map part) sit beside it."""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._report import emit  # noqa: E402
from lightning_edit.evaluation.study import cell_results  # noqa: E402


def machine_load() -> dict:
    """What else ran on the machine: the load averages and the busiest processes (CPU %) at this moment."""
    top = subprocess.run(["ps", "-eo", "pcpu,comm", "--sort=-pcpu"], capture_output=True, text=True).stdout
    return {"loadavg_1_5_15": [round(x, 2) for x in os.getloadavg()], "cpu_count": os.cpu_count(),
            "busiest_processes": [line.strip() for line in top.splitlines()[1:6]]}


def run_study(argv: list[str], threads: int) -> float:
    """``edit.py study ARGV`` in a fresh process with ``threads`` torch/OpenMP threads; its wall time (s)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, str(ROOT / "edit.py"), "study", *argv], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"edit.py study {' '.join(argv)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return round(time.perf_counter() - start, 1)


def largest_difference(a: object, b: object) -> float:
    """The largest absolute difference between the numbers of two cells of the same shape (inf where they differ
    otherwise: a key, a string, a length)."""
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return math.inf
        return max((largest_difference(a[k], b[k]) for k in a), default=0.0)
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return math.inf
        return max((largest_difference(x, y) for x, y in zip(a, b)), default=0.0)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return 0.0 if a == b or (math.isnan(a) and math.isnan(b)) else abs(a - b)
    return 0.0 if a == b else math.inf


def compare_cells(serial: Path, spread: Path) -> dict:
    """Every cell file of ``serial`` against the one of the same name in ``spread``."""
    names = sorted(p.name for p in (serial / "cells").glob("*.json"))
    other = sorted(p.name for p in (spread / "cells").glob("*.json"))
    per_cell = {}
    for name in names:
        if name not in other:
            per_cell[name] = "missing"
            continue
        a = cell_results(json.loads((serial / "cells" / name).read_text()))
        b = cell_results(json.loads((spread / "cells" / name).read_text()))
        per_cell[name] = "identical" if a == b else f"differs (largest difference {largest_difference(a, b):.3g})"
    return {"cells": len(names), "same_cell_files": names == other,
            "identical_cells": sum(v == "identical" for v in per_cell.values()), "per_cell": per_cell}


def ray_part(args: argparse.Namespace) -> dict:
    """The study serially, then on ``--workers`` local Ray workers of ``--threads`` threads each."""
    common = ["--config", args.config, "--threads", str(args.threads), "--quiet"]
    if args.methods:
        common += ["--methods", args.methods]
    if args.data_dir:
        common += ["--data-dir", args.data_dir]
    with tempfile.TemporaryDirectory(prefix="scaleout-") as tmp:
        serial, spread = Path(args.keep or tmp) / "serial", Path(args.keep or tmp) / "ray"
        load_before = machine_load()
        serial_s = run_study(common + ["--results-dir", str(serial)], args.threads)
        ray_s = run_study(common + ["--results-dir", str(spread), "--ray", "--ray-workers", str(args.workers)],
                          args.threads)
        scaleout = json.loads((spread / "results.json").read_text()).get("scaleout")
        comparison = compare_cells(serial, spread)
    return {"part": "ray", "config": args.config, "methods": args.methods or "all of the configuration's",
            "serial": {"processes": 1, "threads": args.threads, "wall_seconds": serial_s},
            "ray": {"workers": args.workers, "threads_per_worker": args.threads, "wall_seconds": ray_s,
                    "report": scaleout},
            "speedup": round(serial_s / ray_s, 2), "equality": comparison,
            "machine_before": load_before, "machine_after": machine_load(),
            "note": "wall times include each run's model loads (and Ray's start-up for the Ray run); cells are "
                    "compared less their clocks and peak memory"}


PARTS: dict[str, Callable[[argparse.Namespace], dict]] = {"ray": ray_part}
OUTPUTS = {"ray": ROOT / "docs" / "results" / "bench" / "scaleout_ray.json"}


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=sorted(PARTS), required=True)
    p.add_argument("--config", default="quick", help="study configuration (default %(default)s)")
    p.add_argument("--methods", default=None, help="comma-separated subset of the configuration's methods")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--workers", type=int, default=2, help="Ray workers (default %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="threads of the serial run and of each worker")
    p.add_argument("--keep", default=None, help="write the two results folders here (kept) instead of a temporary one")
    p.add_argument("--output", default=None, help="JSON file (default docs/results/bench/scaleout_<part>.json)")
    args = p.parse_args(argv)
    return emit(PARTS[args.part](args), args.output or str(OUTPUTS[args.part]))


if __name__ == "__main__":
    raise SystemExit(main())
