"""Recompute committed study cells with today's code and compare them value by value.

The committed cells (``docs/results/<study>/cells/*.json``) were computed by older code whose cell key did not
include the inputs, so their file names' hash part no longer matches; they are matched here by what the name
says: method, model, data, protocol, batch size and n. Each is computed again through the ``Study`` API (one CPU
thread) into a temporary results folder, and every per-request value and summary number is compared (timings,
memory and seconds excepted). Prints JSON: per cell, the number of values compared, the largest absolute
difference and any keys present on one side only.

    python bench/compare_study_cells.py --data-dir /work/shared/data
    python bench/compare_study_cells.py --cells 'grace__*__zsre__sequential__b1__n10__*' --data-dir ...
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lightning_edit.evaluation.study import StudyConfig  # noqa: E402
from lightning_edit.study_runner import Study  # noqa: E402

DEFAULT_STUDY = ROOT / "docs" / "results" / "standard-smollm2"
# Three cheap cells, three methods, the three protocols.
DEFAULT_CELLS = (
    "wise__smollm2-135m__counterfact__single__b1__n25__*",
    "ft-m__smollm2-135m__counterfact__batch__b10__n10__*",
    "grace__smollm2-135m__zsre__sequential__b1__n10__*",
)
# What depends on the machine and its load, not on the evaluation.
TIMING_KEYS = {"edit_seconds", "edit_seconds_mean", "scoring_seconds_per_request", "seconds_per_request",
               "peak_memory_mb", "prepare_seconds", "time_split_seconds", "cell_seconds"}


def parse_name(path: Path) -> dict:
    """method, model, data, protocol, batch and n from ``<method>__<model>__<data>__<protocol>__b<B>__n<N>__<hash>``."""
    method, model, data, protocol, batch, n, _ = path.stem.split("__")
    return {"method": method, "model": model, "data": data, "protocol": protocol,
            "batch": int(batch.removeprefix("b")), "n": int(n.removeprefix("n"))}


def recompute(cell: dict, study_config: dict, results: Path, data_dir: str) -> dict:
    """The cell computed by today's code, with the committed study's settings for its method."""
    method = cell["method"]
    config = StudyConfig(
        name="compare", model=cell["model"], methods=[method], datasets={cell["data"]: cell["n"]},
        overrides={k: v for k, v in study_config.get("overrides", {}).items() if k == method},
        editor_checkpoints={k: v for k, v in study_config.get("editor_checkpoints", {}).items() if k == method},
        fluency=bool(study_config.get("fluency", False)))
    offset = int(study_config.get("sequential_offset", 0)) if cell["protocol"] == "sequential" else 0
    study = Study(config, results, data_dir=data_dir, progress=False)
    out = study.cell(method, cell["data"], cell["protocol"], cell["n"], batch=cell["batch"], offset=offset)
    if out is None:
        raise SystemExit(f"{method}: not computed: {study.skipped.get(method)}")
    return out


def compare_dicts(old: dict, new: dict, where: str, diffs: list, only: list) -> None:
    """Append |old - new| of every shared numeric key (not a timing) to ``diffs``; keys on one side to ``only``."""
    for key in sorted(set(old) | set(new)):
        if key in TIMING_KEYS:
            continue
        if key not in old or key not in new:
            only.append(f"{where}.{key} ({'new' if key in new else 'old'} only)")
            continue
        a, b = old[key], new[key]
        if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
            diffs.append(0.0 if (math.isnan(a) and math.isnan(b)) else abs(float(a) - float(b)))
        elif a != b:
            only.append(f"{where}.{key} differs: {a!r} vs {b!r}")
            diffs.append(math.inf)


def compare(old: dict, new: dict) -> dict:
    diffs: list[float] = []
    only: list[str] = []
    compare_dicts(old["summary"], new["summary"], "summary", diffs, only)
    compare_dicts(old.get("pre", {}), new.get("pre", {}), "pre", diffs, only)
    if old.get("hparams") != new.get("hparams"):
        only.append(f"hparams differ: {old.get('hparams')!r} vs {new.get('hparams')!r}")
    rows_old, rows_new = old.get("per_request", []), new.get("per_request", [])
    if len(rows_old) != len(rows_new):
        only.append(f"per_request: {len(rows_old)} rows vs {len(rows_new)}")
    for i, (a, b) in enumerate(zip(rows_old, rows_new)):
        if a.get("case_id") != b.get("case_id"):
            only.append(f"per_request[{i}].case_id: {a.get('case_id')!r} vs {b.get('case_id')!r}")
        for moment in ("pre", "post"):
            compare_dicts(a.get(moment, {}), b.get(moment, {}), f"per_request[{i}].{moment}", diffs, only)
    return {"values_compared": len(diffs), "max_abs_diff": max(diffs, default=0.0), "mismatches": only}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", default=str(DEFAULT_STUDY), help="committed study folder (config.yaml, cells/)")
    parser.add_argument("--cells", nargs="+", default=list(DEFAULT_CELLS), help="glob patterns of cell files")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--results", default=None, help="where to compute, kept (default: a temporary folder)")
    args = parser.parse_args(argv)
    if args.data_dir:  # data an editor loads itself (WISE's and GRACE's training pools) from the same folder
        os.environ.setdefault("LIGHTNING_EDIT_DATA", args.data_dir)
    torch.set_num_threads(1)
    study = Path(args.study)
    study_config = yaml.safe_load((study / "config.yaml").read_text(encoding="utf-8"))
    out: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as temp:
        results = Path(args.results or temp)
        for pattern in args.cells:
            matches = sorted((study / "cells").glob(f"{pattern}.json" if not pattern.endswith(".json") else pattern))
            if len(matches) != 1:
                raise SystemExit(f"{pattern}: {len(matches)} committed cells match, expected 1")
            old = json.loads(matches[0].read_text(encoding="utf-8"))
            new = recompute(parse_name(matches[0]), study_config, results, args.data_dir)
            out[matches[0].name] = compare(old, new)
            print(json.dumps({matches[0].name: out[matches[0].name]}), file=sys.stderr, flush=True)
    print(json.dumps(out, indent=2))
    return 0 if all(r["max_abs_diff"] == 0.0 and not r["mismatches"] for r in out.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
