"""`python edit.py stats`: second-moment statistics E[k kᵀ] of chosen layers, computed by K processes at once.

    python edit.py stats --model smollm2-135m --layers 5 --tokens 20000 --devices 2 --threads 1   # CPU: 2 processes (gloo)
    python edit.py stats --model gpt-j --layers 3 4 5 6 7 8 --tokens 100000 --devices 8           # 8 GPUs (NCCL)
    python edit.py stats --model gpt-j --layers 3 4 5 6 7 8 --devices 8 --num-nodes 4             # 32 GPUs on 4 nodes

Each process (Lightning DDP: gloo on CPU, NCCL on GPUs; K = devices × nodes, each node started by Slurm's srun,
torchrun or by hand with NODE_RANK, MASTER_ADDR and MASTER_PORT set: Lightning reads them) loads the model, takes a
disjoint shard of the token chunks (chunk i goes to global rank i mod K; no padding, no repeats) and adds its keys to a ``SecondMomentMetric`` per
layer on its device; the sums and token counts are all-reduced once at ``compute()`` and rank 0 writes the same
verified cache file ``layer_second_moments`` (ROME, MEMIT, AlphaEdit) reads: same path, manifest and sha256.
Layers already in the cache are skipped. Prints a JSON summary (tokens/s included).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Optional, Sequence

import torch

from ..errors import ConfigError, LightningEditError

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edit.py stats", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m", help="registered model name, hub id or local HF directory")
    p.add_argument("--layers", type=int, nargs="+", required=True, help="block indices (negative: from the end)")
    p.add_argument("--tokens", type=int, default=None, help="tokens of text (default: DEFAULT_TOKENS, 20000)")
    p.add_argument("--devices", type=int, default=1, help="processes: GPUs, or CPU processes without CUDA (default 1)")
    p.add_argument("--num-nodes", type=int, default=1, help="machines, each running --devices processes (Lightning's "
                                                           "num_nodes; start one command per node: srun, torchrun or "
                                                           "NODE_RANK=i; see docs/guides/device-map.md) (default 1)")
    p.add_argument("--accelerator", default="auto", choices=["auto", "cpu", "gpu"], help="default: gpu when CUDA is available")
    p.add_argument("--cache-dir", default=None, help="cache root (default $LIGHTNING_EDIT_CACHE or checkpoints/)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads per process (default: cores / devices)")
    p.add_argument("--text", default=None, help="UTF-8 text file (default: the WikiText-2 excerpt in the package)")
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=4, help="chunks per forward pass and process")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="model dtype (default float32)")
    p.add_argument("--force", action="store_true", help="recompute layers that are already cached")
    p.add_argument("--quiet", action="store_true")
    return p


class _Chunks(torch.utils.data.Dataset):
    """Chunk ``i`` of the token ids and how many of its tokens count (the last one may be cut)."""

    def __init__(self, chunks: torch.Tensor, n_tokens: int, indices: Sequence[int]):
        self.chunks, self.n_tokens, self.indices = chunks, n_tokens, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        row = self.indices[i]
        seq_len = self.chunks.shape[1]
        return self.chunks[row], min(seq_len, self.n_tokens - row * seq_len)


def _module(loaded, layers: Sequence[int], chunks: torch.Tensor, n_tokens: int, batch_size: int):
    import lightning as L

    from ..hooks import run_until, trace
    from .metric import SecondMomentMetric

    from .second_moment import key_dim

    layout = loaded.layout

    class SecondMomentModule(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.__dict__["loaded"] = loaded  # plain attribute: not a submodule, not moved or wrapped by Lightning
            self.layers = list(layers)
            self.names = [layout.mlp_out.format(layer) for layer in self.layers]
            self.moments = torch.nn.ModuleDict({str(layer): SecondMomentMetric(key_dim(loaded, layer)) for layer in self.layers})
            self.result: dict[int, tuple[torch.Tensor, int]] = {}
            self.seconds = 0.0

        def test_dataloader(self):
            rank, world = self.trainer.global_rank, self.trainer.world_size
            shard = range(rank, chunks.shape[0], world)  # disjoint, no padding (no DistributedSampler)
            return torch.utils.data.DataLoader(_Chunks(chunks, n_tokens, shard), batch_size=batch_size, shuffle=False)

        def on_test_start(self) -> None:
            self.loaded.model.to(self.device)
            self._t0 = time.perf_counter()

        def test_step(self, batch, batch_idx: int) -> None:
            ids, valid = batch
            ids = ids.to(self.device)
            model = self.loaded.model
            with torch.no_grad(), trace(model, self.names, keep_input=True, keep_output=False, stop_after=self.names[-1]) as tr:
                run_until(lambda: model(input_ids=ids, attention_mask=torch.ones_like(ids)))
            mask = torch.arange(ids.shape[1], device=ids.device)[None, :] < valid.to(ids.device)[:, None]
            for layer, name in zip(self.layers, self.names):
                self.moments[str(layer)].update(tr[name].input[mask])

        def on_test_epoch_end(self) -> None:
            for layer in self.layers:  # collective: sums and counts all-reduced once per layer, on every rank
                mom2, count = self.moments[str(layer)].compute()
                self.result[layer] = (mom2.detach().cpu(), int(count.item()))
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.seconds = time.perf_counter() - self._t0

    return SecondMomentModule()


def _preflight(args: argparse.Namespace) -> str:
    """The shared preflight (model, dtype) and the numbers of this command, before the model loads; the accelerator."""
    from ..models.checks import check_environment, check_model_source

    for flag, value in (("--tokens", args.tokens), ("--devices", args.devices), ("--num-nodes", args.num_nodes),
                        ("--seq-len", args.seq_len),
                        ("--batch-size", args.batch_size), ("--threads", args.threads)):
        if value is not None and value < 1:
            raise ConfigError(f"stats: {flag} must be a whole number ≥ 1, got {value}")
    check_environment("cpu", args.dtype)
    check_model_source(args.model)
    if args.text is not None and not Path(args.text).is_file():
        raise ConfigError(f"stats: --text {args.text} is not a file; give a UTF-8 text file or leave it out for the "
                          "excerpt shipped with the package")
    cuda = torch.cuda.is_available()
    accelerator = args.accelerator if args.accelerator != "auto" else ("gpu" if cuda else "cpu")
    if accelerator == "gpu" and not cuda:
        raise ConfigError("stats: --accelerator gpu but this machine has no CUDA device; use --accelerator cpu")
    return accelerator


def run(args: argparse.Namespace) -> dict:
    import lightning as L

    from ..models import load_model
    from .second_moment import DEFAULT_TOKENS, StatsSource, _token_chunks, cache_plan, cached_layer_moments, write_layer_moment

    start = time.perf_counter()
    n_tokens = int(args.tokens or DEFAULT_TOKENS)
    accelerator = _preflight(args)
    source = StatsSource.from_path(args.text, args.seq_len, args.batch_size)  # the text checked before the model loads
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.devices)
    torch.set_num_threads(threads)
    loaded = load_model(args.model, cache_dir=args.cache_dir, dtype=getattr(torch, args.dtype))
    if loaded.layout.is_encoder_decoder:
        raise ConfigError("second-moment statistics are defined for decoder-only models")
    n_layers = loaded.layout.num_layers(loaded.model)
    layers = sorted({layer % n_layers if -n_layers <= layer < n_layers else layer for layer in args.layers})
    for layer in layers:
        if not 0 <= layer < n_layers:
            raise ConfigError(f"stats: layer {layer} is outside the model's {n_layers} blocks")
    folder, base, paths = cache_plan(loaded, layers, n_tokens, source, args.cache_dir)
    summary = {"model": loaded.name, "layers": layers, "tokens": n_tokens, "devices": args.devices,
               "num_nodes": args.num_nodes, "accelerator": accelerator,
               "threads_per_process": threads, "dtype": args.dtype, "files": {str(layer): str(paths[layer]) for layer in layers}}
    # a stale or damaged file is recomputed (with a warning), like a missing one
    cached = {} if args.force else cached_layer_moments(loaded, paths, base, warn_stale=True)
    todo = [layer for layer in layers if layer not in cached]
    summary["cached"] = [layer for layer in layers if layer not in todo]
    if not todo:
        summary["seconds"] = round(time.perf_counter() - start, 2)
        return summary
    chunks = _token_chunks(loaded, source, n_tokens)
    module = _module(loaded, todo, chunks, n_tokens, source.batch_size)
    if args.devices * args.num_nodes > 1:
        from lightning.pytorch.strategies import DDPStrategy

        strategy = DDPStrategy(process_group_backend="nccl" if accelerator == "gpu" else "gloo")
    else:
        strategy = "auto"
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(does not have many workers|test_step|num_workers|LeafSpec).*")
        trainer = L.Trainer(accelerator=accelerator, devices=args.devices, num_nodes=args.num_nodes, strategy=strategy,
                            precision="32-true",
                            logger=False, enable_checkpointing=False, enable_model_summary=False,
                            enable_progress_bar=not args.quiet, use_distributed_sampler=False, inference_mode=True)
        trainer.test(module, verbose=False)
    summary["computed"] = todo
    if trainer.is_global_zero:
        for layer, (mom2, count) in module.result.items():
            if count != n_tokens:
                raise RuntimeError(f"stats: the processes counted {count} tokens for layer {layer}, not {n_tokens}")
            # under the key's lock for the write only: the other ranks never take it, so none can wait on rank 0
            write_layer_moment(loaded, layer, mom2, count, source, n_tokens, folder, base, world_size=trainer.world_size,
                               accelerator=accelerator)
        summary.update(seconds_accumulating=round(module.seconds, 2),
                       tokens_per_s=round(n_tokens / module.seconds, 1) if module.seconds else None,
                       seconds=round(time.perf_counter() - start, 2), world_size=trainer.world_size)
    summary["global_zero"] = trainer.is_global_zero
    return summary


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        summary = run(args)
    except LightningEditError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if summary.pop("global_zero", True):
        print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
