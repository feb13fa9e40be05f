"""ROME on smollm2-135m held whole vs with half its blocks offloaded to disk (``--device-map``): seconds per edit
and memory; prints JSON and writes docs/results/bench/device_map.json.

    python bench/bench_device_map.py [--n 3] [--threads 1] [--output docs/results/bench/device_map.json]

Each variant runs in a process of its own (peak memory is per process): load, dispatch (offloaded: blocks 0-7 and
23-29 to a fresh offload folder, ROME's block 4 among them), the statistics from the cache, then ``--n`` CounterFact
edits, each timed and undone. Reported: seconds per edit (median, mean), the process's resident memory once
loaded, the peak resident memory during the edits (``PeakMemoryMonitor``: the kernel's peak RSS, reset at entry)
and what it added, the bytes of weights held in memory (parameters not on ``meta``), and a SHA-256 of every edited
tensor, read back from where it lives: equal between the variants when the offloaded edits are the same.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from _report import emit  # noqa: E402

DISK_BLOCKS = list(range(0, 8)) + list(range(23, 30))


def _device_map(n_blocks: int) -> dict:
    top = {"model.embed_tokens": "cpu", "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}
    return {**top, **{f"model.layers.{i}": ("disk" if i in DISK_BLOCKS else "cpu") for i in range(n_blocks)}}


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_variant(variant: str, n: int, threads: int) -> dict:
    """One variant in this process: the numbers above, as a dict."""
    import torch

    from lightning_edit.data import load_requests
    from lightning_edit.editors import build_editor
    from lightning_edit.metrics import PeakMemoryMonitor
    from lightning_edit.models import load_model
    from lightning_edit.models.placement import read_tensor

    torch.set_num_threads(threads)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-devmap-") as tmp:
        options = {}
        if variant == "offloaded":
            map_file = Path(tmp) / "map.json"
            map_file.write_text(json.dumps(_device_map(30)))
            options = dict(device_map=str(map_file), offload_folder=str(Path(tmp) / "offload"))
        loaded = load_model("smollm2-135m", **options)
        load_seconds = time.perf_counter() - start
        resident = sum(p.numel() * p.element_size() for p in loaded.model.parameters() if p.device.type != "meta")
        editor = build_editor("rome", loaded, {"progress": False})
        prepare = time.perf_counter()
        editor.prepare(loaded)
        prepare_seconds = time.perf_counter() - prepare
        requests = load_requests("counterfact", n=n)
        rss_loaded = _rss_mb()
        seconds, digests = [], []
        with PeakMemoryMonitor() as memory:
            for request in requests:
                delta = editor.edit(loaded, [request])
                seconds.append(delta.seconds)
                digest = hashlib.sha256()
                for name in sorted(delta.weights_after):
                    digest.update(read_tensor(loaded.model, name).detach().cpu().contiguous().numpy().tobytes())
                digests.append(digest.hexdigest()[:16])
                delta.undo(loaded)
    return {"variant": variant, "disk_blocks": DISK_BLOCKS if variant == "offloaded" else [], "edits": len(seconds),
            "seconds_per_edit_median": round(statistics.median(seconds), 3),
            "seconds_per_edit_mean": round(statistics.mean(seconds), 3),
            "seconds_per_edit": [round(s, 3) for s in seconds],
            "load_seconds": round(load_seconds, 2), "prepare_seconds": round(prepare_seconds, 2),
            "rss_after_load_mb": round(rss_loaded, 1), "edit_peak_rss_mb": round(memory.peak_mb, 1),
            "edit_added_rss_mb": round(memory.added_mb, 1), "weights_in_memory_mb": round(resident / 2**20, 1),
            "edited_weights_sha256": digests}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=3, help="CounterFact edits per variant (default %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default %(default)s)")
    p.add_argument("--output", default=str(ROOT / "docs/results/bench/device_map.json"))
    p.add_argument("--variant", choices=["whole", "offloaded"], default=None, help=argparse.SUPPRESS)  # one child
    args = p.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.n, args.threads)))
        return 0
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    results, load_average = {}, [round(os.getloadavg()[0], 1)]  # how busy the shared machine was
    for variant in ("whole", "offloaded"):
        proc = subprocess.run([sys.executable, __file__, "--variant", variant, "--n", str(args.n), "--threads",
                               str(args.threads)], env=env, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr[-3000:])
            return proc.returncode
        results[variant] = json.loads(proc.stdout.strip().splitlines()[-1])
        load_average.append(round(os.getloadavg()[0], 1))
    whole, off = results["whole"], results["offloaded"]
    result = {"benchmark": "rome_device_map", "model": "smollm2-135m", "method": "rome", "threads": args.threads,
              "data": f"counterfact[:{args.n}]", "variants": results,
              "same_edited_weights": whole["edited_weights_sha256"] == off["edited_weights_sha256"],
              "edit_time_ratio_offloaded_to_whole": round(off["seconds_per_edit_median"]
                                                          / whole["seconds_per_edit_median"], 2),
              "load_average_1min": load_average,
              "note": "one shared 2-core machine; the offloaded model is read whole into memory, then dispatched"}
    return emit(result, args.output)


if __name__ == "__main__":
    sys.exit(main())
