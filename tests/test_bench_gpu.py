"""bench/bench_gpu.py --smoke: the GPU benchmark's code on a tiny GPT-J on the CPU; its JSON has every key."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_gpu_smoke_prints_every_key(tmp_path):
    sys.path.insert(0, str(ROOT / "bench"))
    from bench_gpu import KEYS

    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_gpu.py"), "--smoke", "--threads", "1",
                           "--output", str(tmp_path / "bench.json")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads((tmp_path / "bench.json").read_text())
    assert out["smoke"] is True and out["device"] == "cpu"
    assert set(out["results"]) == {"float32", "bfloat16"}
    for dtype, res in out["results"].items():
        assert set(KEYS) <= set(res), dtype
        assert not res.get("errors"), (dtype, res.get("errors"))
        for key in ("stats_tokens_per_s", "rome_s_per_edit", "memit_s_per_edit", "ft_m_s_per_edit", "mend_s_per_edit"):
            assert res[key] is not None and res[key] > 0, (dtype, key)
        assert res["memit_batch"] == 4 and res["peak_gpu_gb"] is None
