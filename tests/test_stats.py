"""Second-moment statistics: correct values, cache verification, resume, sharing (reliability: test_stats_cache.py)."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from conftest import build_tiny
from lightning_edit.errors import ConfigError, DataError
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
    assert meta["token_count"] == N_TOKENS and len(meta["sha256"]) == 64 and len(meta["text_sha256"]) == 64
    assert meta["seq_len"] == 256 and meta["batch_size"] == 1 and meta["tensors"] == {"mom2": {"shape": [64, 64], "dtype": "float32"}}
    again = _moments(loaded, [3], text_file, tmp_path)  # from cache: identical
    assert torch.equal(again[3], moms[3])


def test_other_models_file_is_not_used(tokenizer, text_file, tmp_path, caplog):
    a = build_tiny("llama", tokenizer, seed=0)
    b = build_tiny("llama", tokenizer, seed=1)
    from_a = _moments(a, [2], text_file, tmp_path)
    # "share" a's files into the place where b's would be: recomputed for b, with a warning naming the mismatch
    shutil.copytree(stats_dir(a, tmp_path), stats_dir(b, tmp_path))
    with caplog.at_level("WARNING"):
        from_b = _moments(b, [2], text_file, tmp_path)
    assert "weights_fingerprint" in caplog.text and "recomputing" in caplog.text
    assert not torch.allclose(from_a[2], from_b[2])
    torch.testing.assert_close(from_b[2], _moments(b, [2], text_file, tmp_path / "fresh")[2], rtol=1e-6, atol=1e-9)


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
