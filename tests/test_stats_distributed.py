"""`edit.py stats`: the statistics of 2 processes (Lightning DDP, gloo on CPU) equal those of 1 and those of
``layer_second_moments``, and the file it writes is the verified cache file ``layer_second_moments`` reads."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import build_tiny
from lightning_edit.models import load_model
from lightning_edit.stats import layer_second_moments
from lightning_edit.stats.cli import main as stats_main
from lightning_edit.stats.metric import SecondMomentMetric

ROOT = Path(__file__).resolve().parents[1]
TOKENS = 3000  # 12 chunks of 256: the last one cut to 184 tokens


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, tokenizer) -> Path:
    directory = tmp_path_factory.mktemp("tiny-llama-stats")
    loaded = build_tiny("llama", tokenizer)
    loaded.model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def test_metric_sums_like_one_big_batch():
    torch.manual_seed(0)
    keys = torch.randn(100, 8)
    metric = SecondMomentMetric(8)
    for part in keys.split(30):
        metric.update(part)
    mom2, count = metric.compute()
    assert int(count) == 100 and metric.sum.dtype == torch.float64
    assert _rel(mom2, keys.T @ keys / 100) < 1e-6


def test_two_processes_equal_one_and_the_serial_path(tiny_dir, tmp_path, capsys):
    args = ["--model", str(tiny_dir), "--layers", "1", "-1", "--tokens", str(TOKENS), "--threads", "1", "--quiet"]
    assert stats_main([*args, "--devices", "1", "--cache-dir", str(tmp_path / "one")]) == 0
    one = json.loads(capsys.readouterr().out)
    assert one["computed"] == [1, 3] and one["world_size"] == 1
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "edit.py"), "stats", *args, "--devices", "2", "--cache-dir", str(tmp_path / "two")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert two["world_size"] == 2 and two["computed"] == [1, 3]

    loaded = load_model(str(tiny_dir))
    # layer_second_moments finds and verifies (manifest, sha256) the files the CLI wrote: nothing recomputed
    from_one = layer_second_moments(loaded, [1, 3], n_tokens=TOKENS, cache_dir=tmp_path / "one", progress=False, max_batches=0)
    from_two = layer_second_moments(loaded, [1, 3], n_tokens=TOKENS, cache_dir=tmp_path / "two", progress=False, max_batches=0)
    serial = layer_second_moments(loaded, [1, 3], n_tokens=TOKENS, cache_dir=tmp_path / "serial", progress=False)
    for layer in (1, 3):
        assert _rel(from_two[layer], from_one[layer]) < 1e-4
        assert _rel(from_one[layer], serial[layer]) < 1e-4
        manifest = json.loads(Path(two["files"][str(layer)]).with_suffix(".json").read_text())
        assert manifest["token_count"] == TOKENS and manifest["world_size"] == 2
    # a second run finds everything cached
    assert stats_main([*args, "--devices", "1", "--cache-dir", str(tmp_path / "two")]) == 0
    assert json.loads(capsys.readouterr().out)["cached"] == [1, 3]


def test_two_nodes_equal_one_process(tiny_dir, tmp_path, capsys):
    """``--num-nodes 2``: two commands, one per "node" (NODE_RANK 0 and 1, as srun or torchrun would set it),
    here both on this machine; their statistics equal one process's."""
    args = ["--model", str(tiny_dir), "--layers", "2", "--tokens", str(TOKENS), "--threads", "1", "--quiet"]
    assert stats_main([*args, "--devices", "1", "--cache-dir", str(tmp_path / "one")]) == 0
    one = json.loads(capsys.readouterr().out)
    command = [sys.executable, str(ROOT / "edit.py"), "stats", *args, "--devices", "1", "--num-nodes", "2",
               "--accelerator", "cpu", "--cache-dir", str(tmp_path / "nodes")]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(29400 + os.getpid() % 500)}
    nodes = [subprocess.Popen(command, cwd=ROOT, env={**env, "NODE_RANK": str(rank)}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    outputs = [node.communicate(timeout=300) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs[1][1][-3000:] + outputs[0][1][-3000:]
    summary = json.loads(outputs[0][0][outputs[0][0].index("{"):])  # node 0 holds global rank 0: it writes and prints
    assert summary["world_size"] == 2 and summary["num_nodes"] == 2 and summary["computed"] == [2]
    loaded = load_model(str(tiny_dir))
    from_one = layer_second_moments(loaded, [2], n_tokens=TOKENS, cache_dir=tmp_path / "one", progress=False, max_batches=0)
    from_nodes = layer_second_moments(loaded, [2], n_tokens=TOKENS, cache_dir=tmp_path / "nodes", progress=False,
                                      max_batches=0)
    assert _rel(from_nodes[2], from_one[2]) < 1e-4
    assert json.loads(Path(summary["files"]["2"]).with_suffix(".json").read_text())["world_size"] == 2


def test_num_nodes_is_checked():
    with pytest.raises(SystemExit):
        stats_main(["--layers", "1", "--num-nodes", "x"])
    assert stats_main(["--layers", "1", "--num-nodes", "0"]) == 2
