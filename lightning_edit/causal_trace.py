"""`python edit.py trace` / `lightning-edit trace`: causal tracing of CounterFact-style records.

Writes heatmaps (PNG) and numbers (CSV) into --output and prints the layers it suggests for ROME and MEMIT
beside the ones the model's configurations give now.
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

from .options import (_non_negative_int, _positive_int, add_device_options, add_threads_option, apply_threads,
                      check_output_path, placement_args)
from .errors import ConfigError, DataError
from .evaluation.tracing import KINDS, NOISE_MULTIPLE


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="edit.py trace",
        description="Causal tracing (ROME §2): noise the subject's embeddings, restore one state at one token, "
                    "measure how much of p(true answer) comes back. Suggests the layers to edit.")
    p.add_argument("--model", default="smollm2-135m", help="registered model name, hub id or local HF directory")
    p.add_argument("--data", default="counterfact", help="dataset name or request JSON file; records need subject and "
                                                       "target_true (default %(default)s)")
    p.add_argument("--data-dir", default=None, help="folder of benchmark data (as for editing)")
    p.add_argument("--n", type=_positive_int, default=10, help="records to trace (default %(default)s)")
    p.add_argument("--offset", type=_non_negative_int, default=0, help="skip this many records first")
    p.add_argument("--kinds", default=",".join(KINDS), help="what to restore, comma-separated: hidden (one block's "
                                                            "output), mlp, attn (default %(default)s)")
    p.add_argument("--samples", type=_positive_int, default=10, help="noise samples per restoration (default %(default)s, as ROME)")
    p.add_argument("--window", type=_positive_int, default=10, help="MLP/attention layers restored together, centred "
                                                                    "on each layer (default %(default)s, as ROME)")
    p.add_argument("--noise", type=float, default=NOISE_MULTIPLE, help="noise = this × the standard deviation of the "
                                                                       "subjects' embeddings (default %(default)s, as ROME)")
    p.add_argument("--memit-width", type=_positive_int, default=5, help="MEMIT layers suggested, ending at ROME's (default %(default)s)")
    p.add_argument("--plots", type=_non_negative_int, default=3, help="per-record heatmaps to draw (default %(default)s)")
    p.add_argument("--output", default=None, help="folder for the PNG and CSV files (default results/trace-<model>)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", default=None, help="where dequantized models are cached")
    add_device_options(p)
    p.add_argument("--dtype", default="float32")
    add_threads_option(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--debug", action="store_true", help="print the Python traceback of an error")
    return p


def parse_kinds(text: str) -> list[str]:
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in KINDS]
    if not kinds or unknown:
        raise ConfigError(f"--kinds {text!r}: choose one or more of {', '.join(KINDS)}, comma-separated")
    return kinds


def configured_layers(method: str, model: str) -> Optional[list[int]]:
    """The layers configs/<method>/ gives this model now (None if the method cannot say)."""
    from .editors import get_editor_class
    from .models.registry import family_of, resolve_model_name

    cls = get_editor_class(method)
    return list(cls.HParams.for_model(method, resolve_model_name(model), family_of(model)).layers)


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(list(argv))
    return run(args)


def _preflight(args: argparse.Namespace) -> tuple[list[str], Path, list]:
    """Everything checked before the model loads: the kinds, the noise, the device, the output folder and the
    records (at least one, each with a subject and a true answer). Returns (kinds, output folder, requests)."""
    from .data import load_requests
    from .models.device_map import Placement
    from .preflight import check_environment, check_model_source

    kinds = parse_kinds(args.kinds)
    if not (math.isfinite(args.noise) and args.noise > 0):  # inf noise drowns every prompt: nothing to measure
        raise ConfigError(f"--noise {args.noise}: give a positive, finite multiple of the embeddings' standard "
                          "deviation (ROME: 3)")
    check_environment(args.device, args.dtype)  # the shared preflight: device, dtype, model
    Placement.from_flags(**placement_args(args), device=args.device)
    output = Path(args.output or f"results/trace-{args.model.replace('/', '_')}")
    check_output_path("--output", str(output), directory=True)
    requests = load_requests(args.data, n=args.n, data_dir=args.data_dir, offset=args.offset)
    if not requests:
        raise DataError(f"--data {args.data}: no record to trace (--offset {args.offset} is past the end, or every "
                        "record was skipped: the warnings above say why)")
    missing = [r.case_id for r in requests if not r.subject or not r.target_true]
    if missing:
        raise ConfigError(f"--data {args.data}: records {missing[:5]} lack 'subject' or 'target_true'; causal tracing "
                          "noises the subject and measures p(target_true) (CounterFact records have both)")
    for r in requests:
        r.require_subject("causal tracing")
    check_model_source(args.model)  # last: what is wrong with the records is said even for a model not here
    return kinds, output, requests


def _writer(output: Path, plots: int) -> Callable[[list], None]:
    """What is written as each record finishes: its heatmap (the first ``plots`` records) and the record and cell
    tables so far, each file in one step, so an interrupted run keeps every finished record."""
    from .evaluation.trace_report import plot_record, record_file_name, write_cells_csv, write_records_csv

    def write(traces: list) -> None:
        output.mkdir(parents=True, exist_ok=True)
        if len(traces) <= plots:
            plot_record(traces[-1], output / record_file_name(traces[-1].case_id))
        write_records_csv(traces, output / "records.csv")
        write_cells_csv(traces, output / "cells.csv")

    return write


def run(args: argparse.Namespace) -> int:
    from .evaluation.trace_report import plot_average, suggest_layers, write_summary_csv
    from .evaluation.tracing import trace_requests
    from . import editors  # noqa: F401  (registers the patch kinds a saved --model DIR may carry)
    from .runner import Run, RunSpec

    kinds, output, requests = _preflight(args)
    apply_threads(args.threads)
    run = Run(RunSpec(model=args.model, device=args.device, dtype=args.dtype, cache_dir=args.cache_dir,
                      **placement_args(args)))
    loaded = run.load()
    run.check(requests)  # control-token text, prompts longer than the context: as edit.py checks them
    started, cpu_started = time.perf_counter(), time.process_time()
    traces = trace_requests(loaded, requests, kinds=kinds, samples=args.samples, window=args.window,
                            noise_multiple=args.noise, seed=args.seed, progress=not args.quiet,
                            on_trace=_writer(output, args.plots))
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    write_summary_csv(traces, output / "summary.csv")
    plot_average(traces, output / "average.png", loaded.name)
    known = sum(tr.high > tr.low for tr in traces)
    print(f"traced {len(traces)} records of {args.data} on {loaded.name} ({', '.join(kinds)}; {args.samples} noise samples, "
          f"window {args.window}) in {seconds:.1f} s ({seconds / len(traces):.1f} s/record; CPU time {cpu_seconds:.1f} s, "
          f"which is below the wall time when other jobs share the cores)")
    print(f"p(true answer): clean {sum(t.high for t in traces) / len(traces):.4f}, corrupted "
          f"{sum(t.low for t in traces) / len(traces):.4f} (mean); noise lowers it on {known}/{len(traces)} records")
    if "mlp" in kinds:
        s = suggest_layers(traces, memit_width=args.memit_width)
        print("mean MLP indirect effect at the last subject token, by layer: "
              + " ".join(f"{i}:{v:.4f}" for i, v in enumerate(s.mlp_curve)))
        print(f"suggested layers: rome [{s.rome}], memit {s.memit}")
        print(f"configured now:   rome {configured_layers('rome', args.model)}, memit {configured_layers('memit', args.model)}")
    print(f"written to {output}/ (average.png, record_*.png, summary.csv, cells.csv, records.csv)")
    return 0
