"""Second moments E[k kᵀ] of the keys (inputs of ``layout.mlp_out``) of chosen layers, computed from text.

ROME, MEMIT and AlphaEdit weight their updates by how keys are distributed over ordinary text. The
moments are computed in one forward pass per batch for all requested layers (the forward stops after
the last of them), and cached on disk so they are paid once per model:

    <cache>/stats/<model name>/<weights fingerprint>/<mlp_out path>__<text stem>-<text sha8>__<tokens>.safetensors
                                                                                              … .json (manifest)

The manifest names the model, its ``weights_fingerprint()``, the layer and module, the token count,
dtype, the text file and its sha256, and the sha256 of the safetensors file; a file that does not match
(another model's, or corrupted) is refused with ``CheckpointError``. Copying the folder shares them.
Partial sums are saved every ``checkpoint_every`` tokens, so an interrupted computation resumes.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..data.text import resolve_text_source, text_dataset
from ..errors import CheckpointError, ConfigError, DataError
from ..hashing import sha256_file
from ..hooks import run_until, trace
from ..models.loading import LoadedModel, default_cache_dir

log = logging.getLogger(__name__)

DEFAULT_TOKENS = 20_000  # token-count study (bench_locate.py --token-study): see configs/rome/default.yaml
STATS_VERSION = 1


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
    return f"{loaded.layout.mlp_out.format(layer)}__{source.tag}__{n_tokens}"


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


def _write_atomic(tensors: dict[str, torch.Tensor], manifest: dict, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp))
    manifest = dict(manifest, stats_sha256=sha256_file(tmp))
    json_tmp = path.with_suffix(".json.tmp")
    json_tmp.write_text(json.dumps(manifest, indent=2))
    os.replace(tmp, path)
    os.replace(json_tmp, path.with_suffix(".json"))


def _verify(path: Path, expected: dict) -> dict:
    """Load a cached stats file after checking its manifest and hash; CheckpointError on any mismatch."""
    manifest_path = path.with_suffix(".json")
    if not manifest_path.exists():
        raise CheckpointError(f"statistics file {path} has no manifest {manifest_path.name}; delete {path} so it is recomputed")
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"statistics manifest {manifest_path} is not valid JSON ({err}); delete it and {path.name}") from err
    for key in ("model", "weights_fingerprint", "module", "text_sha256", "n_tokens"):
        if manifest.get(key) != expected[key]:
            raise CheckpointError(
                f"statistics file {path} was computed for {key}={manifest.get(key)!r}, but this run needs "
                f"{key}={expected[key]!r} (model {expected['model']!r}); it belongs to another model or text. "
                f"Delete it (or the folder {path.parent}) to recompute, or copy the right model's files there."
            )
    actual = sha256_file(path)
    if actual != manifest.get("stats_sha256"):
        raise CheckpointError(
            f"statistics file {path} is corrupted: sha256 {actual[:16]}… differs from its manifest's "
            f"{str(manifest.get('stats_sha256'))[:16]}…; delete it so it is recomputed"
        )
    return manifest


def layer_second_moments(
    loaded: LoadedModel,
    layers: Sequence[int],
    n_tokens: int = DEFAULT_TOKENS,
    text_path: Optional[Union[str, Path]] = None,
    cache_dir: Optional[Union[str, Path]] = None,
    seq_len: int = 256,
    batch_size: int = 4,
    checkpoint_every: int = 20_000,
    progress: bool = True,
    max_batches: Optional[int] = None,
) -> dict[int, torch.Tensor]:
    """E[k kᵀ] (float32, on CPU) of the mlp_out input of each layer, from cache or computed in one pass.

    ``max_batches`` stops after that many new batches without finishing (leaves the partial sums on disk;
    used to test resuming). Returns only when every layer is complete.
    """
    if loaded.layout.is_encoder_decoder:
        raise ConfigError("second-moment statistics are defined for decoder-only models (see editors/locate.py on T5)")
    if n_tokens < 1:
        raise ConfigError("field 'mom2_n_tokens' must be ≥ 1")
    n_layers = loaded.layout.num_layers(loaded.model)
    layers = sorted(set(int(x) for x in layers))
    for layer in layers:
        if not 0 <= layer < n_layers:
            raise ConfigError(f"statistics: layer {layer} is outside the model's {n_layers} blocks")
    source = StatsSource.from_path(text_path, seq_len, batch_size)
    folder, base, paths = cache_plan(loaded, layers, n_tokens, source, cache_dir)

    result: dict[int, torch.Tensor] = {}
    missing = []
    for layer in layers:
        path = paths[layer]
        if path.exists():
            _verify(path, dict(base, module=loaded.layout.mlp_out.format(layer)))
            result[layer] = load_file(str(path))["mom2"]
        else:
            missing.append(layer)
    if not missing:
        return result
    folder.mkdir(parents=True, exist_ok=True)
    computed = _compute(loaded, missing, n_tokens, source, folder, base, checkpoint_every, progress, max_batches)
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
    base = {"model": loaded.name, "weights_fingerprint": fingerprint, "text_sha256": source.text_sha256, "n_tokens": n_tokens}
    return folder, base, {layer: folder / f"{_stem(loaded, layer, source, n_tokens)}.safetensors" for layer in layers}


def write_layer_moment(loaded: LoadedModel, layer: int, mom2: torch.Tensor, count: int, source: StatsSource, n_tokens: int,
                       folder: Path, base: dict, **extra) -> torch.Tensor:
    """Write one layer's E[k kᵀ] (moved to the CPU, float32) with its manifest and sha256; what ``layer_second_moments``
    reads back and verifies. ``extra`` adds informational manifest fields (e.g. the number of processes)."""
    mom2 = mom2.detach().float().cpu().contiguous()
    module = loaded.layout.mlp_out.format(layer)
    manifest = dict(base, module=module, layer=layer, token_count=int(count), dtype="float32", kind="E[k k^T] of mlp_out input",
                    text_source=str(source.text_path), seq_len=source.seq_len, version=STATS_VERSION, **extra)
    folder.mkdir(parents=True, exist_ok=True)
    _write_atomic({"mom2": mom2}, manifest, folder / f"{_stem(loaded, layer, source, n_tokens)}.safetensors")
    return mom2


def accumulator_dtype(device: torch.device) -> torch.dtype:
    """float64 running sums (no drift over 10⁵ tokens) wherever the device has float64 (not MPS)."""
    return torch.float32 if torch.device(device).type == "mps" else torch.float64


def _compute(loaded, layers, n_tokens, source, folder, base, checkpoint_every, progress, max_batches):
    layout, model = loaded.layout, loaded.model
    names = [layout.mlp_out.format(layer) for layer in layers]
    partial = folder / f"partial__{'-'.join(map(str, layers))}__{source.tag}__{n_tokens}.safetensors"
    partial_expected = dict(base, module="+".join(names))
    chunks = _token_chunks(loaded, source, n_tokens)
    sums = {layer: torch.zeros(0) for layer in layers}
    done = 0
    if partial.exists():
        try:
            manifest = _verify(partial, partial_expected)
            saved = load_file(str(partial), device=str(loaded.device))
            sums = {layer: saved[f"sum.{layer}"] for layer in layers}
            done = int(manifest["tokens_done"])
            log.info("resuming statistics from %s (%d tokens done)", partial, done)
        except CheckpointError as err:
            log.warning("ignoring unusable partial statistics (%s); starting over", err)
            done = 0
    device = loaded.device  # the sums live on the model's device; only saving moves them to the CPU
    acc_dtype = accumulator_dtype(device)
    bar = tqdm(total=n_tokens, initial=min(done, n_tokens), desc=f"E[kk^T] layers {layers}", unit="tok", disable=not progress)
    since_save, batches = 0, 0
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
                if since_save >= checkpoint_every and done < n_tokens:
                    _save_partial(partial, sums, done, partial_expected)
                    since_save = 0
    finally:
        bar.close()
    out = {layer: ((sums[layer] / done).float().cpu(), done) for layer in layers}
    if partial.exists():
        partial.unlink()
        partial.with_suffix(".json").unlink(missing_ok=True)
    return out


def _save_partial(path: Path, sums: dict, done: int, expected: dict) -> None:
    tensors = {f"sum.{layer}": s.detach().cpu().contiguous() for layer, s in sums.items() if s.numel()}
    if not tensors:
        return
    _write_atomic(tensors, dict(expected, tokens_done=done, partial=True), path)
