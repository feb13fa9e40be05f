"""A study's tables (Markdown and CSV), ``results.json``, its README and its figures, from its cells."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Optional

from ...atomic import atomic_save_figure, atomic_write_text
from .estimates import Estimate, estimate, fmt
from .lifelong_report import lifelong_table, write_lifelong_figures
from .plan import StudyConfig

TITLES = {"table2_reliability_generalization_locality": "Table 2: reliability / generalization / locality (single edits)",
          "table3_portability": "Table 3: portability and MQuAKE multi-hop accuracy",
          "table4_edit_seconds": "Table 4: seconds per edit (median)",
          "fig5_peak_memory_mb": "Fig. 5: peak memory (MB; the maximum over a cell's edits, so no interval)",
          "fig6_batch": "Fig. 6: batch editing (batch size 1: the single-edit cell)",
          "lifelong": ("Lifelong: long sequences read both ways (retained: every request after the last edit; immediate: "
                       "each right after its own edit call; locality against the unedited model), seconds per edit "
                       "early and late, and general capability before the first edit and after the last"),
          "per_key_scores": "Per-key scores (locality and portability by kind, as the data names them; single edits)"}
INTERVALS_NOTE = ("Every value is followed by its bootstrap 95% interval over the cell's requests in brackets (1000 "
                  "resamples of the requests with replacement, seeded; `*.csv` has the ends in columns of their own). "
                  "The interval says how much the value depends on which requests were drawn, for this model and these "
                  "edits; a batch or sequential cell is one run of the edits, so the run-to-run spread of an editor is "
                  "not in it.")
CURVE_KEYS = ("reliability", "generalization", "locality")


def _markdown(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _write(results_dir: Path, name: str, header: list[str], rows: list[list]) -> str:
    """``name``.md (values with their intervals in brackets) and ``name``.csv (a column each for the value and the
    interval's ends, ``<column> 95% low`` / ``<column> 95% high``, beside every column that has intervals)."""
    with_interval = {j for row in rows for j, v in enumerate(row) if isinstance(v, Estimate)}
    csv_header: list[str] = []
    for j, h in enumerate(header):
        csv_header += [h, f"{h} 95% low", f"{h} 95% high"] if j in with_interval else [h]
    csv_rows = []
    for row in rows:
        out: list = []
        for j, v in enumerate(row):
            if j not in with_interval:
                out.append(v)
            elif v is None:
                out += [None, None, None]
            else:
                out += [v.value, *(round(x, 4) for x in v.interval)] if v.interval else [v.value, None, None]
        csv_rows.append(out)
    text = io.StringIO(newline="")
    csv.writer(text).writerows([csv_header, *csv_rows])
    atomic_write_text(results_dir / f"{name}.csv", text.getvalue())  # two studies into one folder: whole files
    md = _markdown(header, rows)
    atomic_write_text(results_dir / f"{name}.md", md + "\n")
    return md


def _portability_table(c: StudyConfig, single: dict, multihop: dict) -> tuple[list[str], list[list]]:
    """Table 3: portability, and MQuAKE beside it (multi-hop accuracy after and before each case's edits, and the
    edits' own success)."""
    port_sources = [d for d in c.datasets if d == c.portability_data]
    rows = [[m] + [estimate(single.get((m, d)), "portability") for d in port_sources] for m in c.methods]
    header = ["method"] + [f"{d} portability" for d in port_sources]
    if multihop:
        name = Path(c.multihop_data).stem if c.multihop_data.endswith(".json") else c.multihop_data
        header += [f"{name} multihop_acc", f"{name} multihop_acc (pre)", f"{name} edit_success"]
        rows = [row + [estimate(multihop.get(m), "multihop_acc"), estimate(multihop.get(m), "multihop_acc", pre=True),
                       estimate(multihop.get(m), "edit_success")] for m, row in zip(c.methods, rows)]
    return header, rows


def _tables(c: StudyConfig, single: dict, batch: dict, sequential: dict, multihop: dict) -> dict[str, tuple]:
    """Each table's key in ``results.json`` → (file name, header, rows), in the README's order."""
    quality = ("reliability", "generalization", "locality")
    t2 = [[m] + [estimate(single[(m, d)], k) for d in c.datasets for k in quality] for m in c.methods]
    t4 = [[m] + [estimate(single[(m, d)], "edit_seconds", statistic="median") for d in c.datasets] for m in c.methods]
    # a maximum over the cell's edits, not a mean: no interval
    f5 = [[m] + [None if single[(m, d)] is None else single[(m, d)]["summary"].get("peak_memory_mb") for d in c.datasets]
          for m in c.methods]
    f6 = [[m, b] + [estimate(cell, k) for k in quality] for (m, b), cell in batch.items()]
    f7 = [[m, n] + [estimate(cell, k) for k in quality] for (m, n), cell in sequential.items()]
    tables = {
        "table2_reliability_generalization_locality": (
            "table2", ["method"] + [f"{d} {k}" for d in c.datasets for k in quality], t2),
        "table3_portability": ("table3", *_portability_table(c, single, multihop)),
        "table4_edit_seconds": ("table4", ["method"] + [f"{d} seconds/edit" for d in c.datasets], t4),
        "fig5_peak_memory_mb": ("fig5_memory", ["method"] + [f"{d} peak MB" for d in c.datasets], f5),
        "fig6_batch": ("fig6_batch", ["method", "batch size", *quality], f6),
        "fig7_sequential": ("fig7_sequential", ["method", "edits", *quality], f7),
    }
    if not c.datasets:  # a study of sequences or batches alone (the lifelong study): no single-edit tables
        tables = {k: v for k, v in tables.items() if (k == "fig6_batch" and batch) or k == "fig7_sequential"}
    lifelong = lifelong_table(c, sequential)
    if lifelong is not None:
        tables["lifelong"] = ("lifelong", *lifelong)
    # KnowEdit-style per-key scores: every locality/<kind> and portability/<kind> the single cells report
    kinds = sorted({k for cell in single.values() if cell for k in cell["summary"]
                    if k.startswith(("locality/", "portability/"))})
    if kinds:
        per_key = [[m, d] + [estimate(single.get((m, d)), k) for k in kinds] for m in c.methods for d in c.datasets]
        tables["per_key_scores"] = ("per_key", ["method", "data"] + kinds, per_key)
    return tables


def write_tables(results_dir: Path, c: StudyConfig, single: dict, batch: dict, sequential: dict, skipped: dict,
                 multihop: Optional[dict] = None, scaleout: Optional[dict] = None) -> dict:
    """Every table as Markdown and CSV, ``results.json`` (the cells less their requests' values) and the README;
    returns each table's key → its Markdown. ``scaleout``: what a study on workers counted (``study_ray``)."""
    multihop = multihop or {}
    out = {key: _write(results_dir, name, header, rows)
           for key, (name, header, rows) in _tables(c, single, batch, sequential, multihop).items()}
    cells = {"single": single, "batch": batch, "sequential": sequential, "multihop": multihop}
    _write_results_json(results_dir, c, cells, skipped, scaleout)
    _write_readme(results_dir, c, out, cells, skipped, scaleout)
    return out


def _write_results_json(results_dir: Path, c: StudyConfig, cells: dict[str, dict], skipped: dict,
                        scaleout: Optional[dict] = None) -> None:
    def brief(cell: Optional[dict]) -> Optional[dict]:  # each request's values stay in cells/*.json, once
        return None if cell is None else {k: v for k, v in cell.items() if k != "per_request"}

    def label(key: object) -> str:
        return "|".join(map(str, key)) if isinstance(key, tuple) else str(key)

    summary = {"model": c.model, "skipped_methods": skipped, "per_request_values": "cells/*.json",
               "cells": {kind: {label(k): brief(v) for k, v in found.items()} for kind, found in cells.items()}}
    if scaleout:
        summary["scaleout"] = scaleout
    atomic_write_text(results_dir / "results.json", json.dumps(summary, indent=2, default=str))


def _write_readme(results_dir: Path, c: StudyConfig, tables: dict[str, str], cells: dict[str, dict],
                  skipped: dict, scaleout: Optional[dict] = None) -> None:
    titles = {**TITLES, "fig7_sequential": "Fig. 7: sequential editing (scored after the last edit"
              + (f"; batches of {c.sequential_batch_size} for methods that batch" if c.sequential_batch_size > 1 else "")
              + "; 1 edit: the single-edit cell)"}
    report = [f"# Study `{c.name}` on {c.model}", "", INTERVALS_NOTE, ""]
    for k, md in tables.items():
        report += [f"## {titles[k]}", "", md, ""]
    missing = [f"{kind} {key}" for kind, found in cells.items() for key, cell in found.items()
               if cell is None and (key[0] if isinstance(key, tuple) else key) not in skipped]
    if missing:
        report += ["## Cells not computed", "", "Shown as `-`: " + ", ".join(missing), ""]
    elsewhere = [f"{kind} {' '.join(map(str, key)) if isinstance(key, tuple) else key}: {cell['device']}"
                 for kind, found in cells.items() for key, cell in found.items()
                 if cell and cell.get("device", "cpu") != "cpu"]
    if elsewhere:  # their seconds and peak memory are the accelerator's (GPU memory), not comparable with the rest
        report += ["## Cells computed on an accelerator", "", "Seconds and peak memory of these are the device's: "
                   + ", ".join(elsewhere), ""]
    if scaleout:  # a study on Ray workers: what ran where, and what had to run twice
        report += ["## Cells on workers", ""] + [f"- {k.replace('_', ' ')}: {v}" for k, v in scaleout.items()] + [""]
    if skipped:
        report += ["## Methods not run", ""] + [f"- `{m}`: {why}" for m, why in skipped.items()]
    atomic_write_text(results_dir / "README.md", "\n".join(report) + "\n")


def _curve(plt, c: StudyConfig, styles: dict, cells: dict, path: Path, xlabel: str, title: str) -> None:
    """Reliability, generalization and locality against batch size or number of edits, one line per method with
    the bootstrap 95% interval of each point as a band."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    xs = sorted({x for (_, x), cell in cells.items() if cell})
    for ax, key in zip(axes, CURVE_KEYS):
        for m in c.methods:
            pts = sorted((x, estimate(cell, key)) for (mm, x), cell in cells.items() if mm == m and cell)
            pts = [(x, e) for x, e in pts if e is not None]
            if pts:
                ax.plot([x for x, _ in pts], [e.value for _, e in pts], label=m, **styles[m])
                banded = [(x, e.interval) for x, e in pts if e.interval is not None]
                if banded:
                    ax.fill_between([x for x, _ in banded], [i[0] for _, i in banded], [i[1] for _, i in banded],
                                    color=styles[m]["color"], alpha=0.12, linewidth=0)
        ax.set_xscale("log")
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.minorticks_off()
        ax.set_xlabel(xlabel)
        ax.set_title(key)
        ax.set_ylim(-0.05, 1.05)
    axes[-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.suptitle(f"{title} ({c.model})")
    fig.tight_layout()
    atomic_save_figure(fig, path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def _memory_bars(plt, c: StudyConfig, single: dict, path: Path) -> None:
    """Peak memory per method on the first data set's single edits."""
    fig, ax = plt.subplots(figsize=(7, 3.5))
    names, values = [], []
    d0 = next(iter(c.datasets))
    for m in c.methods:
        cell = single.get((m, d0))
        if cell:
            names.append(m)
            values.append(cell["summary"].get("peak_memory_mb", 0))
    ax.bar(names, values)
    ax.tick_params(axis="x", labelrotation=45)
    ax.set_ylabel("peak memory (MB)")
    ax.set_title(f"Fig. 5: peak memory per method ({c.model}, {d0})")
    fig.tight_layout()
    atomic_save_figure(fig, path, dpi=120)
    plt.close(fig)


def write_figures(results_dir: Path, c: StudyConfig, single: dict, batch: dict, sequential: dict) -> None:
    """Fig. 5 (peak memory), 6 (batch curves) and 7 (sequential curves) as PNG files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # 14 methods outnumber a colour cycle: colours from tab20 and alternating markers/line styles keep each apart.
    palette = plt.get_cmap("tab20").colors
    styles = {m: dict(color=palette[i % len(palette)], marker="osD^v<>"[i % 7], linestyle=("-", "--")[i % 2])
              for i, m in enumerate(c.methods)}
    if batch or c.datasets:
        _curve(plt, c, styles, batch, results_dir / "fig6_batch.png", "batch size", "Batch editing")
    _curve(plt, c, styles, sequential, results_dir / "fig7_sequential.png", "number of sequential edits",
           "Sequential editing")
    if c.datasets:
        _memory_bars(plt, c, single, results_dir / "fig5_memory.png")
    write_lifelong_figures(results_dir, c, sequential)
