"""GPU benchmark on a GPT-J-6B-shaped model with random weights, built directly on the GPU (no download):
second-moment statistics tokens/s, ROME and MEMIT (batch of 100) seconds per edit, FT-M and MEND seconds per
edit, peak GPU memory, in float32 and bfloat16. Prints one JSON object (and writes it with --output).

    python bench/bench_gpu.py --output $OUT/bench_gpu.json          # on a GPU machine (bench/run_gpu_check.sh)
    python bench/bench_gpu.py --smoke                                # the same code on a tiny GPT-J on the CPU

MEND's network is untrained (as built): its edit time does not depend on training. The tokenizer is smollm2's
(vocab 49152 ≤ GPT-J's 50400): ``--tokenizer DIR`` (a saved tokenizer) or the embedded smollm2-135m package.
"""
from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

from _report import emit  # bench/_report.py: this folder is on sys.path when a script runs

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lightning_edit.requests import EditRequest  # noqa: E402

FULL = dict(n_embd=4096, n_layer=28, n_head=16, rotary_dim=64, vocab_size=50400, n_positions=2048)
SMOKE = dict(n_embd=64, n_layer=4, n_head=4, rotary_dim=8, vocab_size=50400, n_positions=512)
KEYS = ("params", "build_s", "stats_tokens_per_s", "stats_layers", "rome_s_per_edit", "memit_s_per_edit", "memit_batch",
        "ft_m_s_per_edit", "mend_s_per_edit", "peak_gpu_gb")

FIRST = ["Alex", "Maria", "Jonas", "Ines", "Tomas", "Lea", "Omar", "Yuki", "Nadia", "Pavel"]
LAST = ["Keller", "Moreau", "Silva", "Novak", "Haddad", "Tanaka", "Berg", "Costa", "Ivanova", "Dubois"]
CITIES = ["Paris", "Rome", "Berlin", "Madrid", "Tokyo", "Cairo", "Lima", "Oslo", "Seoul", "Dublin"]


def requests(n: int) -> list[EditRequest]:
    """``n`` distinct synthetic facts (MEMIT's batch needs distinct subjects)."""
    out = []
    for i in range(n):
        subject = f"{FIRST[i % 10]} {LAST[(i // 10) % 10]}" + (f" {i // 100}" if i >= 100 else "")
        out.append(EditRequest(prompt=f"{subject} works in the city of", target_new=CITIES[(i * 7) % 10], subject=subject,
                               target_true=CITIES[(i * 3 + 1) % 10], case_id=i))
    return out


def tokenizer(path: str | None):
    if path:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(path)
    else:
        from lightning_edit.models import load_model

        tok = load_model("smollm2-135m").tokenizer
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_edits(editor, loaded, batches) -> float:
    """Seconds per edited fact over ``batches`` (each edit undone before the next)."""
    editor.prepare(loaded)
    sync(loaded.device)
    seconds, facts = 0.0, 0
    for batch in batches:
        t0 = time.perf_counter()
        delta = editor.edit(loaded, batch)
        sync(loaded.device)
        seconds += time.perf_counter() - t0
        facts += len(batch)
        delta.undo(loaded)
    return round(seconds / facts, 4)


def bench_dtype(dtype: torch.dtype, args, tok, device: torch.device, cache: Path) -> dict:
    import transformers as tf

    from lightning_edit.editors import build_editor
    from lightning_edit.models import LoadedModel, layout_for
    from lightning_edit.stats import layer_second_moments

    res: dict = {k: None for k in KEYS}
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    cfg = tf.GPTJConfig(**(SMOKE if args.smoke else FULL))
    torch.manual_seed(0)
    t0 = time.perf_counter()
    with torch.device(device):
        model = tf.AutoModelForCausalLM.from_config(cfg, dtype=dtype).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    sync(device)
    res["build_s"] = round(time.perf_counter() - t0, 2)
    print(f"{dtype} built in {res['build_s']} s", flush=True)
    res["params"] = sum(p.numel() for p in model.parameters())
    name = f"gptj-6b-shaped-{str(dtype).split('.')[-1]}" + ("-smoke" if args.smoke else "")
    loaded = LoadedModel(name=name, model=model, tokenizer=tok, layout=layout_for(model))
    rome_layers, memit_layers = ([1], [1, 2]) if args.smoke else ([5], [3, 4, 5, 6, 7, 8])
    stats_layers = sorted(set(rome_layers) | set(memit_layers))
    locate = {"mom2_n_tokens": args.tokens, "stats_dir": str(cache), "progress": False}
    reqs = requests(max(args.memit_batch, args.edits))

    def step(key, fn):
        try:
            res[key] = fn()
            print(f"{name} {key}: {res[key]}", flush=True)  # seen in the log even if a time limit stops the run
        except Exception as err:  # a failing method is reported, the others still run
            res[key] = None
            res.setdefault("errors", {})[key] = f"{type(err).__name__}: {err}"[:500]
            traceback.print_exc()

    def stats():
        t = time.perf_counter()
        layer_second_moments(loaded, stats_layers, n_tokens=args.tokens, cache_dir=cache, progress=False)
        sync(device)
        res["stats_layers"] = stats_layers
        return round(args.tokens / (time.perf_counter() - t), 1)

    step("stats_tokens_per_s", stats)  # ROME/MEMIT below find these statistics cached
    step("rome_s_per_edit", lambda: timed_edits(build_editor("rome", loaded, {**locate, "layers": rome_layers}), loaded,
                                                [[r] for r in reqs[:args.edits]]))
    res["memit_batch"] = args.memit_batch
    step("memit_s_per_edit", lambda: timed_edits(build_editor("memit", loaded, {**locate, "layers": memit_layers}), loaded,
                                                 [reqs[:args.memit_batch]]))
    step("ft_m_s_per_edit", lambda: timed_edits(build_editor("ft-m", loaded, {"layers": [1]} if args.smoke else {}), loaded, [[r] for r in reqs[:args.edits]]))

    def mend():
        editor = build_editor("mend", loaded, {})
        editor.network = editor.build_network(loaded).to(device).eval()  # untrained: same cost as a trained one
        for p in editor.network.parameters():
            p.requires_grad_(False)
        return timed_edits(editor, loaded, [[r] for r in reqs[:args.edits]])

    step("mend_s_per_edit", mend)
    if device.type == "cuda":
        res["peak_gpu_gb"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    loaded = model = None  # free the model before the next dtype (the closures above hold the names)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="a tiny GPT-J on the CPU (tests the script, times nothing useful)")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--tokens", type=int, default=None, help="statistics tokens (default 20000; smoke 512)")
    p.add_argument("--memit-batch", type=int, default=None, help="facts in MEMIT's batch (default 100; smoke 4)")
    p.add_argument("--edits", type=int, default=None, help="single edits timed for ROME/FT-M/MEND (default 3; smoke 1)")
    p.add_argument("--tokenizer", default=None, help="a saved tokenizer folder (default: smollm2-135m's)")
    p.add_argument("--cache-dir", default=None, help="statistics cache (default: a temporary folder)")
    p.add_argument("--output", default=None, help="also write the JSON here")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    args.tokens = args.tokens or (512 if args.smoke else 20000)
    args.memit_batch = args.memit_batch or (4 if args.smoke else 100)
    args.edits = args.edits or (1 if args.smoke else 3)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.smoke:
        device = torch.device("cpu")
    elif torch.cuda.is_available():
        device = torch.device("cuda")
        torch.backends.cuda.matmul.allow_tf32 = True  # what a user gets on Ampere+ for fp32 in practice
    else:
        print("bench_gpu.py needs CUDA (or --smoke for a CPU run of the same code)", file=sys.stderr)
        return 2
    tok = tokenizer(args.tokenizer)
    out = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu", "smoke": args.smoke,
           "torch": torch.__version__, "config": SMOKE if args.smoke else FULL, "stats_tokens": args.tokens, "results": {}}
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(args.cache_dir or tmp)
        for name in args.dtypes.split(","):
            dtype = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}[name.strip()]
            out["results"][str(dtype).split(".")[-1]] = bench_dtype(dtype, args, tok, device, cache)
    return emit(out, args.output)


if __name__ == "__main__":
    sys.exit(main())
