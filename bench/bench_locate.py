"""Speed and memory of ROME, MEMIT, AlphaEdit and KN on smollm2-135m; prints JSON.

    python bench/bench_locate.py [--n 10] [--memit-batch 100] [--threads 2] [--output bench_locate.json]

Reported per method: seconds per edit (median) and peak memory (PeakMemoryMonitor), apart from the
one-off statistics (timed on their own, into a fresh cache unless --stats-cache is given) and context
prefixes. Baseline in the same run: one forward+backward pass of the model over each request's prompt and
target (median), so every edit time is also given as a ratio to it.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lightning_edit.data import load_requests  # noqa: E402
from lightning_edit.editors import build_editor  # noqa: E402
from lightning_edit.metrics import PeakMemoryMonitor  # noqa: E402
from lightning_edit.models import load_model  # noqa: E402
from lightning_edit.models.teacher_forcing import build_target_batch  # noqa: E402
from lightning_edit.stats import layer_second_moments  # noqa: E402


def forward_backward_seconds(loaded, requests) -> float:
    """Median time of one forward+backward pass over one request's prompt+target (grad w.r.t. the input embeddings)."""
    times = []
    emb = loaded.model.get_input_embeddings()
    for r in requests:
        batch = build_target_batch(loaded, [r.prompt], [r.target_new])
        start = time.perf_counter()
        inputs = emb(batch.input_ids).detach().requires_grad_(True)
        logits = loaded.model(inputs_embeds=inputs, attention_mask=batch.attention_mask).logits
        logp = torch.log_softmax(logits.float(), -1)
        mask = batch.labels != -100
        loss = -(logp.gather(-1, batch.labels.clamp(min=0)[..., None]).squeeze(-1) * mask).sum()
        loss.backward()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def token_study(loaded, layer: int, checkpoints: list[int], n_requests: int, heldout_tokens: int = 4096) -> dict:
    """How the statistics' token count changes ROME's update direction u = C⁻¹k* / |C⁻¹k*|.

    One pass over WikiText-2 with snapshots of E[kkᵀ] at each count. Per count: cosine of u with the
    largest count's u (convergence), and the leakage mean_k |u·k| / |u·k*| over held-out text keys (the
    tokens after the largest count): the size of the rank-one change on ordinary text relative to the
    edited subject — lower is a more specific edit."""
    from lightning_edit.editors.locate.keys import generate_context_prefixes, subject_keys_and_outputs
    from lightning_edit.hooks import run_until, trace
    from lightning_edit.stats import StatsSource
    from lightning_edit.stats.second_moment import _token_chunks

    source = StatsSource.from_path()
    n_max = max(checkpoints)
    chunks = _token_chunks(loaded, source, n_max + heldout_tokens)
    name = loaded.layout.mlp_out.format(layer)
    total, done, snapshots = None, 0, {}
    start = time.perf_counter()
    heldout = []
    with torch.no_grad(), trace(loaded.model, [name], keep_input=True, keep_output=False, stop_after=name) as tr:
        for row in range(0, chunks.shape[0], source.batch_size):
            batch = chunks[row: row + source.batch_size]
            run_until(lambda: loaded.model(input_ids=batch))
            keys = tr[name].input.reshape(-1, tr[name].input.shape[-1]).float()
            if done >= n_max:
                heldout.append(keys)
                continue
            keys = keys[: n_max - done]
            total = (keys.T @ keys).double() if total is None else total + (keys.T @ keys).double()
            done += keys.shape[0]
            for c in checkpoints:
                if c not in snapshots and done >= c:
                    snapshots[c] = total / done  # chunk-aligned counts: c is a multiple of seq_len × batch
    seconds = time.perf_counter() - start
    text_keys = torch.cat(heldout)[:heldout_tokens].double()
    requests = load_requests("counterfact", n=n_requests)
    prefixes = generate_context_prefixes(loaded, 5, 10)
    keys, _ = subject_keys_and_outputs(loaded, requests, [layer], prefixes)
    k_star = keys[layer].mean(1).double()  # (n, d)
    us = {}
    for c, mom in snapshots.items():
        u = torch.linalg.solve(mom, k_star.T).T
        us[c] = u / u.norm(dim=1, keepdim=True)
    rows = {}
    for c in sorted(us):
        cos = (us[c] * us[n_max]).sum(1)
        leak = (text_keys @ us[c].T).abs().mean(0) / (k_star * us[c]).sum(1).abs()
        rows[c] = {"cos_to_largest_median": round(float(cos.median()), 4), "leakage_median": round(float(leak.median()), 4)}
    u_plain = k_star / k_star.norm(dim=1, keepdim=True)  # no mom2 adjustment, for reference
    leak_plain = (text_keys @ u_plain.T).abs().mean(0) / (k_star * u_plain).sum(1).abs()
    return {"layer": layer, "pass_seconds_for_largest": round(seconds, 1), "n_requests": n_requests, "by_tokens": rows,
            "leakage_median_without_mom2": round(float(leak_plain.median()), 4)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--n", type=int, default=10, help="single edits timed for ROME / sequential edits for AlphaEdit")
    p.add_argument("--memit-batch", type=int, default=100)
    p.add_argument("--methods", default="rome,memit,alphaedit,kn")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--stats-cache", default=None, help="reuse statistics from here (default: a fresh temporary cache, so their cost is measured)")
    p.add_argument("--output", default=None)
    p.add_argument("--token-study", default=None, help="comma-separated token counts: run the statistics token-count study only")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    loaded = load_model(args.model)
    if args.token_study:
        layer = build_editor("rome", loaded).layers(loaded)[0]
        result = token_study(loaded, layer, [int(x) for x in args.token_study.split(",")], n_requests=20)
        print(json.dumps(result, indent=2))
        if args.output:
            Path(args.output).write_text(json.dumps(result, indent=2))
        return
    methods = args.methods.split(",")
    cache = args.stats_cache or tempfile.mkdtemp(prefix="bench_stats_")
    from lightning_edit.editors import get_editor_class
    from lightning_edit.editors.locate.common import LocateEditor

    def make(method: str):
        uses_stats = issubclass(get_editor_class(method), LocateEditor)
        return build_editor(method, loaded, {"stats_dir": cache, "progress": False} if uses_stats else None)

    editors = {m: make(m) for m in methods}
    stats_editors = {m: e for m, e in editors.items() if isinstance(e, LocateEditor)}
    requests = load_requests("counterfact", n=max(args.n, args.memit_batch if "memit" in methods else 0))
    out: dict = {"model": loaded.name, "threads": args.threads, "torch": torch.__version__, "stats_cache": cache,
                 "fresh_stats": args.stats_cache is None}

    # one-off: statistics of every edited layer in one pass, at each method's token count
    if stats_editors:
        layers = sorted({layer for e in stats_editors.values() for layer in e.layers(loaded)})
        n_tokens = max(e.hparams.mom2_n_tokens for e in stats_editors.values())
        start = time.perf_counter()
        with PeakMemoryMonitor() as mem:
            layer_second_moments(loaded, layers, n_tokens=n_tokens, cache_dir=cache, progress=False)
        out["statistics"] = {"layers": layers, "n_tokens": n_tokens, "seconds": round(time.perf_counter() - start, 2),
                             "peak_memory_mb": round(mem.peak_mb, 1)}
    for name, editor in editors.items():
        start = time.perf_counter()
        editor.prepare(loaded)  # prefixes (+ cached statistics, derived inverse / projection)
        out.setdefault("prepare_seconds", {})[name] = round(time.perf_counter() - start, 2)

    base = forward_backward_seconds(loaded, requests[: args.n])
    out["forward_backward_seconds"] = round(base, 4)

    for name in ("rome", "kn"):  # single edits, each undone
        if name not in editors:
            continue
        times, peaks = [], []
        for r in requests[: args.n]:
            with PeakMemoryMonitor() as mem:
                delta = editors[name].edit(loaded, [r])
            times.append(delta.seconds)
            peaks.append(mem.peak_mb)
            delta.undo(loaded)
        med = statistics.median(times)
        out[name] = {"n": len(times), "seconds_per_edit_median": round(med, 3), "seconds_max": round(max(times), 3),
                     "ratio_to_forward_backward": round(med / base, 1), "peak_memory_mb": round(max(peaks), 1)}
    if "memit" in editors:
        batch = requests[: args.memit_batch]
        with PeakMemoryMonitor() as mem:
            delta = editors["memit"].edit(loaded, batch)
        delta.undo(loaded)
        out["memit"] = {"batch": len(batch), "seconds_total": round(delta.seconds, 2),
                        "seconds_per_edit": round(delta.seconds / len(batch), 3),
                        "ratio_to_forward_backward": round(delta.seconds / len(batch) / base, 1), "peak_memory_mb": round(mem.peak_mb, 1)}
    if "alphaedit" in editors:
        times, peaks, deltas = [], [], []
        for r in requests[: args.n]:
            with PeakMemoryMonitor() as mem:
                deltas.append(editors["alphaedit"].edit(loaded, [r]))
            times.append(deltas[-1].seconds)
            peaks.append(mem.peak_mb)
        for d in reversed(deltas):
            d.undo(loaded)
        med = statistics.median(times)
        out["alphaedit"] = {"n_sequential": len(times), "seconds_per_edit_median": round(med, 3),
                            "ratio_to_forward_backward": round(med / base, 1), "peak_memory_mb": round(max(peaks), 1)}
    text = json.dumps(out, indent=2)
    print(text)
    if args.output:
        Path(args.output).write_text(text)


if __name__ == "__main__":
    main()
