"""Second-moment statistics: correct values, cache verification (wrong model, corruption), resume, sharing."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from conftest import build_tiny
from lightning_edit.errors import CheckpointError, ConfigError, DataError
from lightning_edit.hooks import trace
from lightning_edit.stats import StatsSource, layer_second_moments, stats_dir
from lightning_edit.stats.second_moment import _token_chunks

N_TOKENS = 600  # 3 chunks of 256 (the last one partly used)


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text("\n".join(f"Paragraph {i}: the quick brown fox number {i} jumps over the lazy dog in town {i % 7}." for i in range(400)))
    return path


def _moments(loaded, layers, text_file, cache, **kw):
    return layer_second_moments(loaded, layers, n_tokens=N_TOKENS, text_path=text_file, cache_dir=cache, progress=False, batch_size=1, **kw)


def test_matches_direct_computation_and_caches(tokenizer, text_file, tmp_path):
    loaded = build_tiny("llama", tokenizer)
    moms = _moments(loaded, [1, 3], text_file, tmp_path)
    chunks = _token_chunks(loaded, StatsSource.from_path(text_file), N_TOKENS)
    name = loaded.layout.mlp_out.format(3)
    with torch.no_grad(), trace(loaded.model, [name], keep_input=True, keep_output=False) as tr:
        loaded.model(input_ids=chunks)
    keys = tr[name].input.reshape(-1, tr[name].input.shape[-1])[:N_TOKENS].double()
    torch.testing.assert_close(moms[3].double(), keys.T @ keys / N_TOKENS, rtol=1e-5, atol=1e-7)
    folder = stats_dir(loaded, tmp_path)
    manifests = sorted(folder.glob("*.json"))
    assert len(manifests) == 2
    meta = json.loads(manifests[0].read_text())
    assert meta["model"] == "tiny-llama" and meta["weights_fingerprint"] == loaded.weights_fingerprint()
    assert meta["token_count"] == N_TOKENS and len(meta["stats_sha256"]) == 64 and len(meta["text_sha256"]) == 64
    again = _moments(loaded, [3], text_file, tmp_path)  # from cache: identical
    assert torch.equal(again[3], moms[3])


def test_refuses_other_models_file_and_corruption(tokenizer, text_file, tmp_path):
    a = build_tiny("llama", tokenizer, seed=0)
    b = build_tiny("llama", tokenizer, seed=1)
    _moments(a, [2], text_file, tmp_path)
    # "share" a's files into the place where b's would be: refused, naming the mismatch
    dst = stats_dir(b, tmp_path)
    shutil.copytree(stats_dir(a, tmp_path), dst)
    with pytest.raises(CheckpointError, match="weights_fingerprint"):
        _moments(b, [2], text_file, tmp_path)
    shutil.rmtree(dst)
    # corrupt a's file: refused with a clear message
    (stats_file,) = stats_dir(a, tmp_path).glob("*.safetensors")
    raw = bytearray(stats_file.read_bytes())
    raw[-5] ^= 0xFF
    stats_file.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="corrupted"):
        _moments(a, [2], text_file, tmp_path)


def test_shared_copy_is_found_and_verified(tokenizer, text_file, tmp_path):
    loaded = build_tiny("gpt2", tokenizer)
    first = _moments(loaded, [0], text_file, tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shared = _moments(loaded, [0], text_file, tmp_path / "b")
    assert torch.equal(first[0], shared[0])


def test_resume_after_interruption_gives_the_same_result(tokenizer, text_file, tmp_path):
    loaded = build_tiny("gpt_neox", tokenizer)
    full = _moments(loaded, [0, 2], text_file, tmp_path / "full")
    with pytest.raises(KeyboardInterrupt):
        _moments(loaded, [0, 2], text_file, tmp_path / "resumed", max_batches=2, checkpoint_every=1)
    partial = list(stats_dir(loaded, tmp_path / "resumed").glob("partial__*.json"))
    assert len(partial) == 1 and json.loads(partial[0].read_text())["tokens_done"] == 512
    resumed = _moments(loaded, [0, 2], text_file, tmp_path / "resumed")
    torch.testing.assert_close(resumed[2], full[2], rtol=1e-6, atol=1e-9)
    assert not list(stats_dir(loaded, tmp_path / "resumed").glob("partial__*"))


def test_bad_inputs(tokenizer, text_file, tmp_path):
    loaded = build_tiny("llama", tokenizer)
    with pytest.raises(DataError, match="does not exist"):
        layer_second_moments(loaded, [0], n_tokens=10, text_path=tmp_path / "missing.txt", cache_dir=tmp_path)
    with pytest.raises(ConfigError, match="fewer than"):
        layer_second_moments(loaded, [0], n_tokens=10**7, text_path=text_file, cache_dir=tmp_path, progress=False)
    with pytest.raises(ConfigError, match="outside"):
        layer_second_moments(loaded, [9], n_tokens=10, text_path=text_file, cache_dir=tmp_path)
