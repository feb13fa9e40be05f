#!/usr/bin/env python
"""Editing cost of MALMEN beside MEND (its closest method) on the same records in one run: seconds per edit and
peak memory of one batched edit of each size, plus the reliability of the batch (token protocol: share of target
tokens the edited model predicts), on CounterFact or ZsRE records.

    python bench/bench_learned_edit.py --batch-sizes 1,10,100 [--mend DIR] [--malmen DIR] [--threads 1]

``--sum-ablation`` adds MALMEN's network with its shifts summed as MEND sums them (``S = −η Σ_i ∇̃_i ũ_iᵀ``) instead
of solved for: the paper's ablation of the least-squares aggregation, the network held fixed.

A method whose trained editor is not given runs an untrained network of its configured architecture (same cost,
reliability meaningless, reported as null). Prints JSON. CPU numbers depend on how busy the machine is: compare
methods within one run only.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lightning_edit.data import load_requests  # noqa: E402
from lightning_edit.editors import build_editor  # noqa: E402
from lightning_edit.editors.learned.hypernetwork import edit_batch, target_accuracy  # noqa: E402
from lightning_edit.metrics import PeakMemoryMonitor  # noqa: E402
from lightning_edit.models import load_model  # noqa: E402


def editor_for(method: str, loaded, checkpoint: str | None):
    if checkpoint:
        return build_editor(method, loaded, {"editor_checkpoint": checkpoint}), True
    editor = build_editor(method, loaded)
    editor.network = editor.build_network(loaded).eval()  # untrained: the cost of a trained one, not its quality
    return editor, False


def summed_shifts(network):
    """MALMEN's network with MEND's aggregation: the sum of each key's rank-one shift, no normal equation."""
    def forward(factors):
        shifts = {}
        for name in network.weight_names:
            u_tilde, grad_tilde = network.transform(name, factors[name])
            shifts[name] = -network.step_size(name) * (grad_tilde.T @ u_tilde)
        return shifts
    return forward


def reliability(loaded, requests) -> float:
    with torch.no_grad():
        scores = [target_accuracy(loaded.model(**edit_batch(loaded, [r]).model_inputs()).logits,
                                  edit_batch(loaded, [r]).labels).item() for r in requests]
    return round(sum(scores) / len(scores), 3)


def bench(method: str, loaded, requests, sizes: list[int], checkpoint: str | None, summed: bool = False) -> dict:
    editor, trained = editor_for(method, loaded, checkpoint)
    editor.prepare(loaded)
    if summed:
        editor.network.forward = summed_shifts(editor.network)
    editor.edit(loaded, requests[:1]).undo(loaded)  # warm-up (first-call allocations), not timed
    out = {"trained": trained}
    for size in sizes:
        batch = requests[:size]
        with PeakMemoryMonitor() as mem:
            start = time.perf_counter()
            delta = editor.edit(loaded, batch)
            seconds = time.perf_counter() - start
        out[str(size)] = {"seconds": round(seconds, 3), "seconds_per_edit": round(seconds / size, 4),
                          "peak_rss_mb": round(mem.peak_mb, 1), "added_rss_mb": round(mem.added_mb, 1),
                          "reliability": reliability(loaded, batch) if trained else None}
        delta.undo(loaded)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--data", default="counterfact")
    p.add_argument("--batch-sizes", default="1,10,100")
    p.add_argument("--mend", default=None, help="trained MEND editor directory")
    p.add_argument("--malmen", default=None, help="trained MALMEN editor directory")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--sum-ablation", action="store_true", help="also MALMEN's network with summed shifts")
    p.add_argument("--methods", default="mend,malmen")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    sizes = [int(s) for s in args.batch_sizes.split(",")]
    loaded = load_model(args.model)
    requests = load_requests(args.data, n=max(sizes))
    result = {"model": loaded.name, "data": args.data, "threads": args.threads, "torch": torch.__version__}
    checkpoints = {"mend": args.mend, "malmen": args.malmen}
    for method in args.methods.split(","):
        result[method] = bench(method, loaded, requests, sizes, checkpoints[method])
    if args.sum_ablation:
        result["malmen-summed-shifts"] = bench("malmen", loaded, requests, sizes, args.malmen, summed=True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
