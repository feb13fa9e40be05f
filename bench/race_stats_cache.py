"""Forced race on one statistics cache key: W processes write the same file at once, R rounds; prints JSON.

    python bench/race_stats_cache.py [--writers 50] [--rounds 6]

Every round, W forked processes wait on one barrier and then all call ``write_layer_moment`` for the same key
(a tiny random llama, layer 0); a writer fails when it raises. After each round the file is read back through
``layer_second_moments`` (which verifies manifest, sha256, shape and finiteness); a round whose file does not load
is counted as a bad final file. Reports "failed writes / writes" and bad rounds.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import tempfile
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lightning_edit.models import LoadedModel, layout_for  # noqa: E402
from lightning_edit.stats import StatsSource, layer_second_moments  # noqa: E402
from lightning_edit.stats.second_moment import cache_plan, write_layer_moment  # noqa: E402

N_TOKENS = 512


def tiny_llama() -> LoadedModel:
    import transformers as tf

    torch.manual_seed(0)
    config = tf.LlamaConfig(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                            num_key_value_heads=1, intermediate_size=64)
    model = tf.AutoModelForCausalLM.from_config(config).eval()
    return LoadedModel(name="tiny-llama-race", model=model, tokenizer=None, layout=layout_for(model))


def writer(barrier, plan: tuple, queue) -> None:
    """One forked writer: the model and the cache plan come from the parent (built once, before forking)."""
    try:
        loaded, source, folder, base = plan
        barrier.wait(timeout=120)
        write_layer_moment(loaded, 0, torch.eye(64) * 2.0, N_TOKENS, source, N_TOKENS, folder, base)
        queue.put(None)
    except Exception:  # noqa: BLE001 - counted, the measurement is how many fail
        queue.put(traceback.format_exc(limit=2).strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--writers", type=int, default=50)
    p.add_argument("--rounds", type=int, default=6)
    args = p.parse_args()
    torch.set_num_threads(1)
    ctx = mp.get_context("fork")
    failed, errors, bad_rounds = 0, {}, 0
    loaded, source = tiny_llama(), StatsSource.from_path(None)
    with tempfile.TemporaryDirectory() as cache:
        folder, base, _ = cache_plan(loaded, [0], N_TOKENS, source, cache)
        plan = (loaded, source, folder, base)
        for _ in range(args.rounds):
            barrier, queue = ctx.Barrier(args.writers), ctx.Queue()
            procs = [ctx.Process(target=writer, args=(barrier, plan, queue)) for _ in range(args.writers)]
            for proc in procs:
                proc.start()
            outcomes = [queue.get(timeout=120) for _ in procs]
            for proc in procs:
                proc.join()
            for outcome in outcomes:
                if outcome is not None:
                    failed += 1
                    errors[outcome[:160]] = errors.get(outcome[:160], 0) + 1
            try:  # max_batches=0: only a valid cached file returns, anything else stops before computing
                got = layer_second_moments(loaded, [0], n_tokens=N_TOKENS, cache_dir=cache, progress=False, max_batches=0)
                bad_rounds += int(not torch.equal(got[0], torch.eye(64) * 2.0))
            except BaseException as err:  # noqa: BLE001 - KeyboardInterrupt from max_batches=0 included
                bad_rounds += 1
                errors["read back: " + type(err).__name__] = errors.get("read back: " + type(err).__name__, 0) + 1
    total = args.writers * args.rounds
    print(json.dumps({"writes": total, "failed_writes": failed, "summary": f"{failed} of {total} writes failed",
                      "rounds": args.rounds, "rounds_without_a_valid_file": bad_rounds, "errors": errors}, indent=2))


if __name__ == "__main__":
    main()
