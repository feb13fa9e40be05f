"""Runs that meet on one target (issue 22): two first loads into one empty dequantization cache, two studies writing
cells into one folder, two ``--save`` of one name, two writers of one statistics key. Each is "handled" when every
run finished (or the second was refused by name) and every output is intact, with no temporary left behind."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Callable

from .common import Case
from .tiny import TINY_EDIT, requests_file, tiny_model_dir

ROOT = Path(__file__).resolve().parents[2]


def _both(commands: list[list[str]], timeout: float = 600) -> list[subprocess.CompletedProcess]:
    """Start every command at once (the same instant, as two users would), wait for all."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(c, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for c in commands]
    out = []
    for p, c in zip(procs, commands):
        stdout, stderr = p.communicate(timeout=timeout)
        out.append(subprocess.CompletedProcess(c, p.returncode, stdout, stderr))
    return out


def _no_temporaries(folder: Path) -> bool:
    return not [p for p in folder.rglob("*") if p.name.endswith((".partial", ".tmp")) or ".partial" in p.name]


def two_first_loads(folder: Path) -> Callable[[], bool]:
    def call() -> bool:
        from lightning_edit.hashing import sha256_file
        from lightning_edit.models.gguf import _gguf_path, _read_cache
        from lightning_edit.models.registry import MODELS

        cache = folder / "cache"
        code = f"from lightning_edit.models import load_model; load_model('smollm2-135m', cache_dir={str(cache)!r})"
        runs = _both([[sys.executable, "-c", code]] * 2)
        if any(r.returncode != 0 for r in runs):
            print(*(r.stderr[-2000:] for r in runs), file=sys.stderr)
            return False
        spec = MODELS["smollm2-135m"]
        _read_cache(spec, cache / "models" / spec.name, sha256_file(_gguf_path(spec, cache)), "float32")
        return _no_temporaries(cache)

    return call


def two_studies(folder: Path) -> Callable[[], bool]:
    def call() -> bool:
        data = str(requests_file(folder))
        config = folder / "study.yaml"
        config.write_text(json.dumps({
            "name": "two", "model": str(tiny_model_dir(folder)), "methods": ["ft-m"], "datasets": {data: 2},
            "portability_data": data, "batch_data": data, "sequential_data": data, "batch_sizes": [1],
            "sequential_ns": [1, 2], "overrides": {"ft-m": {"layers": [1], "num_steps": 1}}}))
        results = folder / "study"
        command = [sys.executable, "edit.py", "study", "--config", str(config), "--results-dir", str(results),
                   "--quiet", "--threads", "1"]
        runs = _both([command, command])
        if any(r.returncode != 0 for r in runs):
            print(*(r.stderr[-2000:] for r in runs), file=sys.stderr)
            return False
        cells = sorted((results / "cells").glob("*.json"))
        parsed = [json.loads(c.read_text()) for c in cells]
        json.loads((results / "results.json").read_text())
        return len(cells) == 2 and all("summary" in c and "inputs" in c for c in parsed) and _no_temporaries(results)

    return call


def two_saves(folder: Path) -> Callable[[], bool]:
    def call() -> bool:
        from lightning_edit.models import load_model

        target = folder / "saved"
        command = [sys.executable, "edit.py", "--model", str(tiny_model_dir(folder)), *TINY_EDIT, "--data",
                   str(requests_file(folder)), "--n", "1", "--no-fluency", "--threads", "1", "--quiet",
                   "--save", str(target)]
        runs = _both([command, command])
        codes = sorted(r.returncode for r in runs)
        refused = [r for r in runs if r.returncode != 0]
        if codes not in ([0, 0], [0, 2]) or any("--save" not in r.stderr or "Traceback" in r.stderr for r in refused):
            print(*(r.stderr[-2000:] for r in runs), file=sys.stderr)
            return False
        load_model(str(target))  # verified against its manifest: whole, one run's
        return codes == [0, 2] and _no_temporaries(folder)

    return call


def two_stats_writers(folder: Path) -> Callable[[], bool]:
    """Two threads computing one statistics key: computed once, read back verified by both."""
    def call() -> bool:
        import time

        import torch

        from lightning_edit.stats.cache_files import load_or_compute

        path = folder / "stats" / "layer1.safetensors"
        spec = {"mom2": ((4, 4), (torch.float32,))}
        calls, got = [], []

        def compute():
            calls.append(1)
            time.sleep(0.3)
            return {"mom2": torch.eye(4)}

        threads = [threading.Thread(target=lambda: got.append(load_or_compute(path, {"m": 1}, spec, compute, "bench")))
                   for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return calls == [1] and len(got) == 2 and all(torch.equal(g["mom2"], torch.eye(4)) for g in got)

    return call


def cases(folder: Path) -> list[Case]:
    return [
        Case(what="two first loads into one empty dequantization cache", door="concurrent", expect="handled",
             call=two_first_loads(folder), needs_model=True),
        Case(what="two studies writing cells into one folder", door="concurrent", expect="handled",
             call=two_studies(folder)),
        Case(what="two --save of one name (the second refused by name)", door="concurrent", expect="handled",
             call=two_saves(folder)),
        Case(what="two writers of one statistics key", door="concurrent", expect="handled", call=two_stats_writers(folder)),
    ]
