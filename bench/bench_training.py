#!/usr/bin/env python
"""Training cost of the learnt editors (MEND, KE, SERAC): seconds per optimizer step and peak memory,
with a baseline in the same run (a plain fine-tuning step of the same MLP output projections MEND edits:
forward, backward, Adam). Also reads the full training runs' own records (manifest of each trained editor
under checkpoints/editors/) so their wall-clock training time and validation metrics are in one JSON.

    python bench/bench_training.py --model smollm2-135m --steps 5

Prints JSON. CPU numbers depend on how busy the machine is: compare methods within one run only.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from lightning_edit.data import load_requests  # noqa: E402
from lightning_edit.metrics import PeakMemoryMonitor  # noqa: E402
from lightning_edit.models import load_model  # noqa: E402
from lightning_edit.training.cli import resolve_config  # noqa: E402
from lightning_edit.editors.learned.hypernetwork import edit_batch, target_nll  # noqa: E402
from lightning_edit.training.registry import module_class  # noqa: E402


def time_steps(step, n_steps: int) -> dict:
    step()  # warm-up (first-call allocations), not timed
    times = []
    with PeakMemoryMonitor() as mem:
        for _ in range(n_steps):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
    times.sort()
    return {"seconds_per_step_median": round(times[len(times) // 2], 3), "seconds_per_step_min": round(times[0], 3),
            "peak_rss_mb": round(mem.peak_mb, 1), "added_rss_mb": round(mem.added_mb, 1), "steps": n_steps}


def bench_method(method: str, loaded, requests, n_steps: int) -> dict:
    cfg = resolve_config(method, loaded.name, loaded.layout.family, None, [])
    training = cfg.pop("training")
    module = module_class(method)(loaded.name, cfg, training, loaded=loaded)
    opt = module.configure_optimizers()
    batch_size = int(training.get("batch_size", 1))
    cursor = [0]

    def step() -> None:
        batch = [requests[(cursor[0] + i) % len(requests)] for i in range(batch_size)]
        cursor[0] += batch_size
        loss, _ = module.training_loss(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    out = time_steps(step, n_steps)
    out.update(batch_size=batch_size, trainable_parameters=sum(p.numel() for p in module.network.parameters()))
    return out


def bench_finetune_baseline(loaded, requests, n_steps: int, layers=(-3, -2, -1)) -> dict:
    n = loaded.layout.num_layers(loaded.model)
    weights = [loaded.layout.mlp_out_module(loaded.model, n + i if i < 0 else i).weight for i in layers]
    originals = [w.detach().clone() for w in weights]
    for w in weights:
        w.requires_grad_(True)
    opt = torch.optim.Adam(weights, lr=1e-5)
    cursor = [0]

    def step() -> None:
        batch = edit_batch(loaded, [requests[cursor[0] % len(requests)]])
        cursor[0] += 1
        loss = target_nll(loaded.model(**batch.model_inputs()).logits, batch.labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    try:
        out = time_steps(step, n_steps)
    finally:
        with torch.no_grad():
            for w, o in zip(weights, originals):
                w.copy_(o)
                w.requires_grad_(False)
    out.update(batch_size=1, trainable_parameters=sum(w.numel() for w in weights))
    return out


def trained_editors(model_name: str) -> dict:
    """What the full training runs recorded (train.py writes it into each checkpoint's manifest)."""
    out = {}
    for manifest_path in sorted((ROOT / "checkpoints" / "editors").glob(f"*-{model_name}/manifest.json")):
        m = json.loads(manifest_path.read_text())
        # a run resumed from a Lightning checkpoint records its own seconds; older runs' time is in
        # seconds_including_resumed_runs when the checkpoint carried it
        out[manifest_path.parent.name] = {"steps": m["training"].get("steps"), "train_seconds": m["training"].get("seconds"),
                                          "seconds_including_resumed_runs": m["training"].get("seconds_including_resumed_runs"),
                                          "resumed_from": m["training"].get("resumed_from"),
                                          "peak_rss_mb": m["training"].get("peak_rss_mb"),
                                          "validation": m.get("validation_metrics"),
                                          "weights_mb": round((manifest_path.parent / "editor.safetensors").stat().st_size / 2**20, 2)}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--methods", default="mend,ke,serac")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    loaded = load_model(args.model)
    requests = load_requests("zsre-train", n=64)
    result = {"model": loaded.name, "threads": args.threads, "torch": torch.__version__, "machine": platform.machine(),
              "baseline_finetune_step": bench_finetune_baseline(loaded, requests, args.steps)}
    for method in args.methods.split(","):
        result[method] = bench_method(method, loaded, requests, args.steps)
    result["full_training_runs"] = trained_editors(loaded.name)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
