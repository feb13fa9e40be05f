"""Cost of long sequences of edits: seconds per edit, forward-pass seconds and memory at T = 1, 100, 1,000 edits.

    OMP_NUM_THREADS=1 python bench/bench_lifelong_cost.py --methods grace,wise,alphaedit,t-patcher,ultraedit --steps 1,100,1000
    OMP_NUM_THREADS=1 python bench/bench_lifelong_cost.py --model smollm2-135m --methods grace --steps 1,100

Per method, edits are applied one after another and kept, as ``--sequential`` does (folded into one
``SequenceEdits``, the protocol loop's own bookkeeping); at each T in ``--steps``:

- ``edit_seconds``: median wall-clock seconds of the edit calls T-w+1..T (w = ``--window``, fewer at small T);
  ``ratio_to_first_edits``: that over the median of the first w edit calls (the method's ``first_edits_seconds``; a
  steadier baseline than the first edit alone, which is the point at T = 1);
- ``forward_seconds``: median seconds of one forward pass over 8 fixed prompts with every edit so far attached
  (what a codebook or memory lookup adds to inference);
- ``rss_mb``: the process's resident memory; ``rss_trimmed_mb``: the same after glibc's allocator has handed the
  heap it holds free back to the kernel (``malloc_trim``: what is left is memory in use, the difference is heap
  fragmentation, not something the edits keep); ``held_mb``: bytes the kept edits hold (base and latest copy of each
  touched tensor, every patch's tensors); ``records_mb``: bytes of the tensors the edits' patch records reference
  (what undoing each edit needs; each storage counted once).

Default model: a tiny random llama (4 blocks, width 64) with smollm2's tokenizer, so 1,000 edits take minutes on
one thread; ``--model smollm2-135m`` measures the real one (slow: use small ``--steps`` on a CPU). Requests are the
first ZsRE records when the data are present (``lightning-edit data get zsre``), else distinct synthetic facts.
"""
from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _report import emit  # noqa: E402

from lightning_edit.editors import build_editor  # noqa: E402
from lightning_edit.evaluation.lifelong import SequenceEdits  # noqa: E402
from lightning_edit.metrics.memory import _release_free_heap, _rss_bytes  # noqa: E402
from lightning_edit.models import LoadedModel, layout_for, load_model  # noqa: E402
from lightning_edit.requests import EditRequest  # noqa: E402

# Settings that let each method run on the tiny model in seconds (the real model uses its configs/ as they are).
TINY_OVERRIDES = {
    "grace": {"layer": -2, "num_steps": 3},
    "wise": {"layer": -2, "num_steps": 3, "memory_pool": ["wikitext:40"]},
    "t-patcher": {"layer": -1, "num_steps": 5, "memory_pool": ["wikitext:40"]},
    "alphaedit": {"layers": [1, 2], "v_num_grad_steps": 3, "mom2_n_tokens": 4000, "context_prefixes": 1},
    "memit": {"layers": [1, 2], "v_num_grad_steps": 5, "mom2_n_tokens": 4000, "context_prefixes": 1},
    "ft-m": {"layers": [2], "num_steps": 5},
    "ultraedit": {"modules": {"mlp_in": [1, 2]}, "lr": 1e-4},  # its default blocks (-6..-3) need 6 or more
}
PROBE = ["The capital of France is", "Water boils at", "The author of Hamlet is", "The largest planet is",
         "Danielle Darrieux speaks", "The Eiffel Tower is in", "Python was created by", "The currency of Japan is"]


def tiny_model() -> LoadedModel:
    import transformers as tf

    tokenizer = load_model("smollm2-135m").tokenizer
    torch.manual_seed(0)
    config = tf.LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                            num_key_value_heads=2, intermediate_size=128)
    model = tf.AutoModelForCausalLM.from_config(config).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return LoadedModel(name="tiny-llama-bench", model=model, tokenizer=tokenizer, layout=layout_for(model))


def edit_requests(n: int) -> list[EditRequest]:
    try:
        from lightning_edit.data import load_requests

        found = load_requests("zsre", n=n)
        if len(found) >= n:
            return found
    except Exception:  # noqa: BLE001  (no data here: synthetic facts instead)
        pass
    return [EditRequest(prompt=f"The home town of Person {i} is", target_new=f"Town {i % 97}", subject=f"Person {i}",
                        case_id=i) for i in range(n)]


def forward_seconds(loaded: LoadedModel, repeats: int = 5) -> float:
    batch = loaded.tokenizer(PROBE, return_tensors="pt", padding=True).to(loaded.device)
    times = []
    with torch.no_grad():
        for _ in range(repeats):
            start = time.perf_counter()
            loaded.model(**batch)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def _trimmed_rss_bytes() -> int:
    _release_free_heap()
    return _rss_bytes()


def held_bytes(edits: SequenceEdits, loaded: LoadedModel) -> int:
    tensors = [*edits.weights_before.values(), *edits.weights_after.values()]
    tensors += [t for patch in loaded.patches for t in patch.state_dict().values()]
    return sum(t.numel() * t.element_size() for t in tensors)


def record_bytes(edits: SequenceEdits) -> int:
    """Bytes of the distinct tensors the kept edits' patch records reference (what undo needs), each storage once."""
    seen: dict[int, int] = {}

    def visit(value) -> None:
        if isinstance(value, torch.Tensor):
            seen[value.untyped_storage().data_ptr()] = value.untyped_storage().nbytes()
        elif isinstance(value, (list, tuple)):
            for v in value:
                visit(v)
        elif isinstance(value, dict):
            for v in value.values():
                visit(v)
        elif hasattr(value, "__dataclass_fields__"):
            for name in value.__dataclass_fields__:
                visit(getattr(value, name))

    for change in edits.patches:
        visit(change.entry)
    return sum(seen.values())


def bench_method(loaded: LoadedModel, method: str, requests: list[EditRequest], steps: list[int], window: int,
                 overrides: dict) -> dict:
    editor = build_editor(method, loaded, overrides)
    editor.prepare(loaded)
    edits = SequenceEdits(method=method, model_name=loaded.name, requests=[])
    seconds, points = [], []
    try:
        for t, request in enumerate(requests[:max(steps)], start=1):
            delta = editor.edit(loaded, [request])
            edits.fold(delta, loaded)
            seconds.append(delta.seconds)
            if t in steps:
                gc.collect()
                points.append({"T": t, "edit_seconds": round(statistics.median(seconds[-min(window, t):]), 4),
                               "forward_seconds": round(forward_seconds(loaded), 5),
                               "rss_mb": round(_rss_bytes() / 2**20, 1),
                               "rss_trimmed_mb": round(_trimmed_rss_bytes() / 2**20, 1),
                               "held_mb": round(held_bytes(edits, loaded) / 2**20, 3),
                               "records_mb": round(record_bytes(edits) / 2**20, 3),
                               "patches": {p.key: sum(v.numel() for v in p.state_dict().values()) for p in loaded.patches}})
                print(method, points[-1], file=sys.stderr, flush=True)
    finally:
        edits.undo(loaded)
    first = statistics.median(seconds[:window])
    for point in points:
        point["ratio_to_first_edits"] = round(point["edit_seconds"] / first, 3)
    return {"method": method, "overrides": overrides, "first_edits_seconds": round(first, 4), "points": points}


def parse_settings(items: list[str]) -> dict[str, dict]:
    """``--set wise.shard_size=1`` → ``{"wise": {"shard_size": 1}}`` (values read as YAML scalars)."""
    import yaml

    out: dict[str, dict] = {}
    for item in items:
        target, sep, value = item.partition("=")
        method, dot, name = target.partition(".")
        if not (sep and dot and method and name):
            raise SystemExit(f"--set {item!r}: expected METHOD.FIELD=VALUE, e.g. wise.shard_size=1")
        out.setdefault(method, {})[name] = yaml.safe_load(value)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", help="tiny (default) or a registered model name")
    parser.add_argument("--methods", default="grace,wise,alphaedit,t-patcher")
    parser.add_argument("--steps", default="1,100,1000", help="the T at which to measure")
    parser.add_argument("--window", type=int, default=5)
    parser.add_argument("--set", action="append", default=[], metavar="METHOD.FIELD=VALUE",
                        help="a setting of one method on top of the defaults, e.g. wise.shard_size=1 (repeatable)")
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    steps = sorted(int(s) for s in args.steps.split(","))
    settings = parse_settings(args.set)
    loaded = tiny_model() if args.model == "tiny" else load_model(args.model)
    requests = edit_requests(max(steps))
    results = []
    with tempfile.TemporaryDirectory() as stats:
        for method in args.methods.split(","):
            overrides = dict(TINY_OVERRIDES.get(method, {})) if args.model == "tiny" else {}
            overrides.update(settings.get(method, {}))
            if method in ("alphaedit", "memit"):
                overrides["stats_dir"] = stats  # the tiny model's statistics: computed here, not in the shared cache
            results.append(bench_method(loaded, method, requests, steps, args.window, overrides))
    return emit({"model": loaded.name, "threads": 1, "steps": steps, "n_requests": len(requests),
                 "requests": "zsre" if requests[0].rephrase_prompts else "synthetic", "methods": results}, args.output)


if __name__ == "__main__":
    raise SystemExit(main())
