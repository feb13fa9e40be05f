"""Second moments E[k kᵀ] of the keys (inputs of ``layout.mlp_out``) of chosen layers, computed from text.

ROME, MEMIT and AlphaEdit weight their updates by how keys are distributed over ordinary text. The
moments are computed in one forward pass per batch for all requested layers (the forward stops after
the last of them), and cached on disk so they are paid once per model:

    <cache>/stats/<model name>/<weights fingerprint>/<mlp_out path>__<text stem>-<text sha8>__<tokens>__s<seq_len>b<batch>.safetensors
                                                                                                     … .json (manifest)

The manifest names the model, its ``weights_fingerprint()``, the layer and module, the token count, seq_len and
batch size, the text file and its sha256, and the sha256, shape and dtype of the tensor (``cache_files``). A file
that does not verify (another model's, stale, corrupted, wrong shape, NaN) is recomputed with a warning.
Copying the folder shares them. Computing holds one file lock per key (``<file>.lock``), so concurrent runs
compute a key once; partial sums are saved every ``checkpoint_every`` tokens (5000 by default) once
``checkpoint_seconds`` (60 by default) have passed since the last save, so an interrupted computation resumes where
it stopped. The time floor matters for large models: GPT-J's seven MEMIT layers hold 15 GB of float64 sums, which a
GPU fills in seconds and a save every 5000 tokens would write to disk again and again.
"""
from __future__ import annotations

import logging
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
from tqdm.auto import tqdm

from ..data.text import resolve_text_source, text_dataset
from ..errors import ConfigError, DataError, docs_link
from ..hashing import sha256_file
from ..hooks import run_until, trace
from ..models.loading import LoadedModel, default_cache_dir
from .cache_files import StaleCacheFile, key_lock, manifest_path, read_verified, write_verified

log = logging.getLogger(__name__)

DEFAULT_TOKENS = 20_000  # token-count study (bench_locate.py --token-study): see configs/rome/default.yaml
DEFAULT_CHECKPOINT_EVERY = 5_000  # tokens between saved partial sums (resumable at the defaults)
DEFAULT_CHECKPOINT_SECONDS = 60.0  # ...and at least this long: a fast run never pays for saving what it will finish
STATS_VERSION = 2  # 2: seq_len and batch size in the key, tensor shapes and dtypes in the manifest


def default_text_path() -> Path:
    """The WikiText-2 test excerpt shipped inside the package (CC BY-SA 3.0, see data/text/README.md), so the
    statistics need nothing beside the package; ``stats_text`` names a longer text."""
    from ..data import STATS_TEXT_PATH

    return STATS_TEXT_PATH


@dataclass(frozen=True)
class StatsSource:
    """The text the statistics come from, and how it is cut into sequences."""

    text_path: Path
    text_sha256: str
    seq_len: int = 256
    batch_size: int = 4

    @classmethod
    def from_path(cls, text_path: Optional[Union[str, Path]] = None, seq_len: int = 256, batch_size: int = 4) -> "StatsSource":
        path = resolve_text_source(text_path) if text_path else default_text_path()  # a path or hf://datasets/... file
        if not path.exists():
            raise DataError(
                f"statistics text {path} (field 'stats_text') does not exist; give any UTF-8 text file, leave the field "
                f"unset for the excerpt shipped with the package, or fetch the full WikiText-2 test split with "
                f"'lightning-edit data get wikitext' and pass --set stats_text=<data dir>/text/wikitext-2/wiki.test.raw"
            )
        if seq_len < 8 or batch_size < 1:
            raise ConfigError("statistics: 'seq_len' must be ≥ 8 and 'batch_size' ≥ 1")
        return cls(path.resolve(), sha256_file(path), seq_len, batch_size)

    @property
    def tag(self) -> str:
        return f"{self.text_path.stem.replace('.', '-')}-{self.text_sha256[:8]}"


def _stem(loaded: LoadedModel, layer: int, source: StatsSource, n_tokens: int) -> str:
    return f"{loaded.layout.mlp_out.format(layer)}__{source.tag}__{n_tokens}__s{source.seq_len}b{source.batch_size}"


def key_dim(loaded: LoadedModel, layer: int) -> int:
    """Width of the keys of ``layer`` (the input features of its mlp_out projection): E[k kᵀ] is key_dim × key_dim."""
    weight = loaded.layout.mlp_out_module(loaded.model, layer).weight
    return int(weight.shape[0] if loaded.layout.conv1d_weights else weight.shape[1])


def stats_dir(loaded: LoadedModel, cache_dir: Optional[Union[str, Path]] = None, fingerprint: Optional[str] = None) -> Path:
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    safe_name = loaded.name.replace("/", "--")
    return root / "stats" / safe_name / (fingerprint or loaded.weights_fingerprint())


def _token_chunks(loaded: LoadedModel, source: StatsSource, n_tokens: int) -> torch.Tensor:
    """The text as (n_chunks, seq_len) token ids, enough chunks for ``n_tokens``; deterministic."""
    tok = loaded.tokenizer
    ids: list[int] = []
    # Tokenize paragraph by paragraph (a 1 MB string at once is slow and may exceed tokenizer limits).
    for batch in text_dataset(source.text_path).iter(batch_size=256):
        for row in tok(batch["text"], add_special_tokens=False)["input_ids"]:
            ids.extend(row)
        if len(ids) >= n_tokens + source.seq_len:
            break
    n_chunks = -(-n_tokens // source.seq_len)
    if len(ids) < n_chunks * source.seq_len:
        available = len(ids) // source.seq_len * source.seq_len
        raise ConfigError(
            f"statistics: {source.text_path} holds {len(ids)} tokens, fewer than the {n_tokens} asked; lower "
            f"'mom2_n_tokens' to at most {available} or give a longer text with --set stats_text=FILE (e.g. the full "
            f"WikiText-2 test split: 'lightning-edit data get wikitext')"
        )
    return torch.tensor(ids[: n_chunks * source.seq_len]).view(n_chunks, source.seq_len)


def read_layer_moment(loaded: LoadedModel, layer: int, path: Path, base: dict) -> torch.Tensor:
    """The cached E[k kᵀ] of ``layer`` after every check (manifest fields, sha256, shape, dtype, finiteness);
    ``StaleCacheFile`` saying why not."""
    dim = key_dim(loaded, layer)
    expected = dict(base, module=loaded.layout.mlp_out.format(layer))
    return read_verified(path, expected, {"mom2": ((dim, dim), (torch.float32,))})[0]["mom2"]


def cached_layer_moments(loaded: LoadedModel, paths: dict[int, Path], base: dict, warn_stale: bool = False) -> dict[int, torch.Tensor]:
    """The layers whose cache file verifies. ``warn_stale``: warn about a file that exists but fails (it will be
    recomputed); off for a first look without the keys' locks, where a failure may be a write in progress."""
    found = {}
    for layer, path in paths.items():
        try:
            found[layer] = read_layer_moment(loaded, layer, path, base)
        except StaleCacheFile as err:
            if warn_stale and (path.exists() or manifest_path(path).exists()):
                log.warning("statistics: unusable cache file (%s); recomputing it", err)
    return found


def layer_second_moments(
    loaded: LoadedModel,
    layers: Sequence[int],
    n_tokens: int = DEFAULT_TOKENS,
    text_path: Optional[Union[str, Path]] = None,
    cache_dir: Optional[Union[str, Path]] = None,
    seq_len: int = 256,
    batch_size: int = 4,
    checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY,
    progress: bool = True,
    max_batches: Optional[int] = None,
    checkpoint_seconds: float = DEFAULT_CHECKPOINT_SECONDS,
) -> dict[int, torch.Tensor]:
    """E[k kᵀ] (float32, on CPU) of the mlp_out input of each layer, from cache or computed in one pass.

    ``max_batches`` stops after that many new batches without finishing (leaves the partial sums on disk;
    used to test resuming). Returns only when every layer is complete.
    """
    if loaded.layout.is_encoder_decoder:
        raise ConfigError("second-moment statistics are defined for decoder-only models "
                          f"(why: {docs_link('guides/gpu.md', 'encoder-decoder-models-t5')})")
    if n_tokens < 1:
        raise ConfigError("field 'mom2_n_tokens' must be ≥ 1")
    n_layers = loaded.layout.num_layers(loaded.model)
    layers = sorted(set(int(x) for x in layers))
    for layer in layers:
        if not 0 <= layer < n_layers:
            raise ConfigError(f"statistics: layer {layer} is outside the model's {n_layers} blocks")
    source = StatsSource.from_path(text_path, seq_len, batch_size)
    folder, base, paths = cache_plan(loaded, layers, n_tokens, source, cache_dir)

    result = cached_layer_moments(loaded, paths, base)
    missing = [layer for layer in layers if layer not in result]
    if not missing:
        return result
    with ExitStack() as locks:
        for layer in missing:  # sorted: two runs wanting overlapping layers cannot deadlock
            locks.enter_context(key_lock(paths[layer]))
        # another process may have written them while this one waited
        result.update(cached_layer_moments(loaded, {layer: paths[layer] for layer in missing}, base, warn_stale=True))
        missing = [layer for layer in layers if layer not in result]
        if not missing:
            return result
        computed = _compute(loaded, missing, n_tokens, source, folder, base, checkpoint_every, progress, max_batches,
                            checkpoint_seconds)
        if computed is None:
            raise KeyboardInterrupt("statistics stopped after max_batches; partial sums saved for resuming")
        for layer, (mom2, count) in computed.items():
            result[layer] = write_layer_moment(loaded, layer, mom2, count, source, n_tokens, folder, base)
    return result


def cache_plan(loaded: LoadedModel, layers: Sequence[int], n_tokens: int, source: StatsSource,
               cache_dir: Optional[Union[str, Path]] = None) -> tuple[Path, dict, dict[int, Path]]:
    """The cache folder, the manifest fields every file of this run shares, and each layer's file path."""
    fingerprint = loaded.weights_fingerprint()
    folder = stats_dir(loaded, cache_dir, fingerprint)
    base = {"model": loaded.name, "weights_fingerprint": fingerprint, "text_sha256": source.text_sha256, "n_tokens": n_tokens,
            "seq_len": source.seq_len, "batch_size": source.batch_size, "version": STATS_VERSION}
    return folder, base, {layer: folder / f"{_stem(loaded, layer, source, n_tokens)}.safetensors" for layer in layers}


def write_layer_moment(loaded: LoadedModel, layer: int, mom2: torch.Tensor, count: int, source: StatsSource, n_tokens: int,
                       folder: Path, base: dict, **extra) -> torch.Tensor:
    """Write one layer's E[k kᵀ] (moved to the CPU, float32) with its manifest and sha256, atomically under the key's
    lock; what ``layer_second_moments`` reads back and verifies. ``extra`` adds informational manifest fields (e.g.
    the number of processes)."""
    mom2 = mom2.detach().float().cpu().contiguous()
    module = loaded.layout.mlp_out.format(layer)
    manifest = dict(base, module=module, layer=layer, token_count=int(count), dtype="float32", kind="E[k k^T] of mlp_out input",
                    text_source=str(source.text_path), **extra)
    write_verified(folder / f"{_stem(loaded, layer, source, n_tokens)}.safetensors", {"mom2": mom2}, manifest)
    return mom2


def accumulator_dtype(device: torch.device) -> torch.dtype:
    """float64 running sums (no drift over 10⁵ tokens) wherever the device has float64 (not MPS)."""
    return torch.float32 if torch.device(device).type == "mps" else torch.float64


def _compute(loaded, layers, n_tokens, source, folder, base, checkpoint_every, progress, max_batches, checkpoint_seconds):
    layout, model = loaded.layout, loaded.model
    names = [layout.mlp_out.format(layer) for layer in layers]
    # the caller holds the locks of these layers' keys, so the partial file is this run's alone
    partial = folder / f"partial__{'-'.join(map(str, layers))}__{source.tag}__{n_tokens}__s{source.seq_len}b{source.batch_size}.safetensors"
    partial_expected = dict(base, module="+".join(names), partial=True)
    chunks = _token_chunks(loaded, source, n_tokens)
    sums, done = _load_partial(loaded, layers, partial, partial_expected, n_tokens, source.seq_len)
    device = loaded.device  # the sums live on the model's device; only saving moves them to the CPU
    acc_dtype = accumulator_dtype(device)
    bar = tqdm(total=n_tokens, initial=min(done, n_tokens), desc=f"E[kk^T] layers {layers}", unit="tok", disable=not progress)
    since_save, batches, last_save = 0, 0, time.perf_counter()
    # The chunk index follows from the tokens done: seq_len tokens per chunk.
    row = done // source.seq_len
    try:
        with torch.no_grad(), trace(model, names, keep_input=True, keep_output=False, stop_after=names[-1]) as tr:
            while done < n_tokens:
                if max_batches is not None and batches >= max_batches:
                    _save_partial(partial, sums, done, partial_expected)
                    return None
                batch = chunks[row: row + source.batch_size].to(device)
                row += batch.shape[0]
                run_until(lambda: model(input_ids=batch, attention_mask=torch.ones_like(batch)))
                take = min(batch.numel(), n_tokens - done)
                for layer, name in zip(layers, names):
                    keys = tr[name].input.reshape(-1, tr[name].input.shape[-1])[:take].float()
                    if sums[layer].numel() == 0:
                        sums[layer] = torch.zeros(keys.shape[1], keys.shape[1], dtype=acc_dtype, device=device)
                    # float32 product per batch (fast), float64 running sum (no drift over 10⁵ tokens), on the device
                    sums[layer] += (keys.T @ keys).to(acc_dtype)
                done += take
                since_save += take
                batches += 1
                bar.update(take)
                if (since_save >= checkpoint_every and done < n_tokens
                        and time.perf_counter() - last_save >= checkpoint_seconds):
                    _save_partial(partial, sums, done, partial_expected)
                    since_save, last_save = 0, time.perf_counter()
    finally:
        bar.close()
    out = {layer: ((sums[layer] / done).float().cpu(), done) for layer in layers}
    for leftover in (partial, manifest_path(partial), Path(f"{partial}.lock")):  # no one else uses them: see above
        leftover.unlink(missing_ok=True)
    return out


def _load_partial(loaded, layers, partial: Path, expected: dict, n_tokens: int, seq_len: int) -> tuple[dict, int]:
    """Saved partial sums and their token count, or empty sums and 0 (with a warning when a file was unusable)."""
    empty = {layer: torch.zeros(0) for layer in layers}
    if not partial.exists():
        return empty, 0
    spec = {f"sum.{layer}": ((key_dim(loaded, layer),) * 2, (torch.float64, torch.float32)) for layer in layers}
    try:
        saved, manifest = read_verified(partial, expected, spec)
        done = manifest.get("tokens_done")
        if not isinstance(done, int) or not 0 < done < n_tokens or done % seq_len:
            raise StaleCacheFile(f"{partial}: tokens_done={done!r} is not a whole number of {seq_len}-token chunks below {n_tokens}")
    except StaleCacheFile as err:
        log.warning("statistics: ignoring unusable partial sums (%s); starting over", err)
        return empty, 0
    log.info("resuming statistics from %s (%d tokens done)", partial, done)
    acc_dtype = accumulator_dtype(loaded.device)
    return {layer: saved[f"sum.{layer}"].to(loaded.device, acc_dtype) for layer in layers}, done


def _save_partial(path: Path, sums: dict, done: int, expected: dict) -> None:
    tensors = {f"sum.{layer}": s for layer, s in sums.items() if s.numel()}
    if not tensors:
        return
    write_verified(path, tensors, dict(expected, tokens_done=done))
