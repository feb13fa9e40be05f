#!/usr/bin/env bash
# The one script to run on an accelerator machine, from the repository root:
#
#     OUT=/some/dir bash bench/run_gpu_check.sh            # parts: tests, bench, stats (default: all three)
#     PARTS=tests,bench OUT=... bash bench/run_gpu_check.sh
#
# Writes to $OUT: env.json, gpu-tests.log / gpu-tests.xml (pytest -m gpu tests/test_gpu.py), bench_gpu.json /
# bench_gpu.log (bench/bench_gpu.py: GPT-J-6B-shaped, fp32 and bf16), stats_gpu.json (edit.py stats on smollm2).
# Offline machines: put the deepspeed, hjson and pydantic wheels under bench/wheels/ (git-ignored; see
# bench/README-gpu.md); they are installed into $SITE (default a temporary folder) and put on PYTHONPATH.
#     PARTS=lifelong LIGHTNING_EDIT_DATA=DIR OUT=... bash bench/run_gpu_check.sh   # opt-in, issue 25's GPU cells
#
# lifelong: the lifelong study's CounterFact cells (configs/study/lifelong-counterfact.yaml, methods
# $LIFELONG_METHODS, default alphaedit,memit) on the GPU into $OUT/lifelong-smollm2/counterfact; every batch of 100 is
# checkpointed, so a run cut by LIFELONG_TIMEOUT resumes from $OUT/lifelong-smollm2/counterfact/cells/partial/ (same command).
# Each part has its own time limit (TESTS_TIMEOUT, BENCH_TIMEOUT, STATS_TIMEOUT seconds) so one slow part
# does not eat the others' device time; the exit status is the number of parts that failed.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-out}
PARTS=${PARTS:-tests,bench,stats}
WHEELS=${WHEELS:-bench/wheels}
SITE=${SITE:-${TMPDIR:-/tmp}/lightning-edit-site}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ls "$WHEELS"/*.whl >/dev/null 2>&1 && ! $PY -c "import deepspeed" >/dev/null 2>&1; then
    $PY -m pip install --quiet --no-index --no-deps --target "$SITE" "$WHEELS"/*.whl > "$OUT/wheels.log" 2>&1 \
        && export PYTHONPATH="$SITE:$PYTHONPATH"
fi
$PY - > "$OUT/env.json" <<'PYEOF'
import importlib, json, torch
info = {"torch": torch.__version__, "cuda": torch.cuda.is_available(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "bf16": torch.cuda.is_available() and torch.cuda.is_bf16_supported()}
for mod in ("deepspeed", "lightning", "transformers", "torchmetrics"):
    try:
        info[mod] = getattr(importlib.import_module(mod), "__version__", "?")
    except Exception as e:  # noqa: BLE001
        info[mod] = f"missing: {type(e).__name__}: {e}"[:200]
print(json.dumps(info, indent=2))
PYEOF
cat "$OUT/env.json"
failed=0
if [[ ",$PARTS," == *",tests,"* ]]; then
    timeout "${TESTS_TIMEOUT:-420}" $PY -m pytest -m gpu tests/test_gpu.py -q -rs -p no:cacheprovider \
        --junitxml="$OUT/gpu-tests.xml" > "$OUT/gpu-tests.log" 2>&1 || failed=$((failed + 1))
    tail -n 25 "$OUT/gpu-tests.log"
fi
if [[ ",$PARTS," == *",bench,"* ]]; then
    timeout "${BENCH_TIMEOUT:-420}" $PY bench/bench_gpu.py --output "$OUT/bench_gpu.json" > "$OUT/bench_gpu.log" 2>&1 \
        || failed=$((failed + 1))
    tail -n 40 "$OUT/bench_gpu.log"
fi
if [[ ",$PARTS," == *",stats,"* ]]; then
    timeout "${STATS_TIMEOUT:-180}" $PY edit.py stats --model smollm2-135m --layers 15 --tokens 20000 --devices 1 \
        --accelerator gpu --cache-dir "$OUT/stats-cache" --quiet > "$OUT/stats_gpu.json" 2> "$OUT/stats_gpu.log" \
        || failed=$((failed + 1))
    cat "$OUT/stats_gpu.json"
    rm -rf "$OUT/stats-cache"
fi
if [[ ",$PARTS," == *",lifelong,"* ]]; then
    timeout --signal=TERM "${LIFELONG_TIMEOUT:-540}" $PY edit.py study --config lifelong-counterfact \
        --methods "${LIFELONG_METHODS:-alphaedit,memit}" --device "${LIFELONG_DEVICE:-cuda}" \
        --results-dir "$OUT/lifelong-smollm2/counterfact" > "$OUT/lifelong.log" 2>&1 || failed=$((failed + 1))
    tail -c 3000 "$OUT/lifelong.log"
fi
echo "parts failed: $failed"
exit $failed
