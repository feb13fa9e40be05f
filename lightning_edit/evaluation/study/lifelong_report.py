"""The lifelong part of a study's report: long sequential cells read both ways (retained and immediate), the cost of
an edit early and late in the sequence, and general capability before and after (``sequential_eval_every``,
``sequential_capability_every``)."""
from __future__ import annotations

import statistics
from pathlib import Path
from typing import Optional

from ...atomic import atomic_save_figure
from ..capability import PERPLEXITY_TASK
from .estimates import estimate
from .plan import StudyConfig


def lifelong_cells(sequential: dict) -> dict:
    """The sequential cells that carry a curve or a capability curve: (method, edits) → cell."""
    return {key: cell for key, cell in sequential.items() if cell and (cell.get("curve") or cell.get("capability"))}


def seconds_early_late(cell: dict, share: float = 0.1) -> tuple[Optional[float], Optional[float]]:
    """Median seconds per edit over the first and the last ``share`` of a sequence's requests (a cost that grows
    with the number of edits shows as late > early)."""
    seconds = [row["edit_seconds"] for row in cell.get("per_request", []) if row.get("edit_seconds") is not None]
    if not seconds:
        return None, None
    k = max(1, int(len(seconds) * share))
    return round(statistics.median(seconds[:k]), 4), round(statistics.median(seconds[-k:]), 4)


def capability_columns(cells: dict) -> list[str]:
    """Every capability score any lifelong cell measured."""
    return sorted({key for cell in cells.values() for point in cell.get("capability", {}).get("points", [])
                   for key in point if key != "edits"})


def _capability_values(cell: dict, keys: list[str]) -> list:
    cap = cell.get("capability") or {}
    points = cap.get("points", [])
    before, after = (points[0], points[-1]) if points else ({}, {})
    out = []
    for key in keys:
        drop = cap.get("first_drop_at", {}).get(key)
        out += [before.get(key), after.get(key), None if not points else drop if drop is not None else "no drop"]
    return out


def lifelong_table(c: StudyConfig, sequential: dict) -> Optional[tuple[list[str], list[list]]]:
    """One row per long sequential cell: retained and immediate scores (``c.sequential_scores``) with intervals,
    seconds per edit early and late, and each capability score before the first edit, after the last, and the
    edits at which it first fell by 5% ("None": it did not). None when the study has no such cell."""
    cells = lifelong_cells(sequential)
    if not cells:
        return None
    keys, scores = capability_columns(cells), c.sequential_scores
    header = (["method", "edits", "batch"] + [f"retained {k}" for k in scores] + [f"immediate {k}" for k in scores]
              + ["s/edit first 10%", "s/edit last 10%", "device"]
              + [f"{k} {when}" for k in keys for when in ("before", "after", "first 5% drop at")])
    rows = []
    for (method, n), cell in cells.items():
        early, late = seconds_early_late(cell)
        rows.append([method, n, cell.get("batch_size", 1)] + [estimate(cell, k) for k in scores]
                    + [estimate(cell, k, immediate=True) for k in scores]
                    + [early, late, cell.get("device", "cpu")] + _capability_values(cell, keys))
    return header, rows


def write_lifelong_figures(results_dir: Path, c: StudyConfig, sequential: dict) -> list[Path]:
    """Per long sequential cell, its curve (retained solid, immediate dashed); one figure of every cell's
    capability against the number of edits."""
    from ..lifelong import write_curve_figure

    written = []
    cells = lifelong_cells(sequential)
    for (method, n), cell in cells.items():
        if cell.get("curve"):
            name = f"lifelong_curve_{method}_{cell['data']}_{n}.png"
            written.append(write_curve_figure(cell["curve"], results_dir / name,
                                              f"{method}, {n} sequential edits ({cell['data']}, {c.model})",
                                              keys=c.sequential_scores))
    if any(cell.get("capability") for cell in cells.values()):
        written.append(_capability_figure(results_dir / "lifelong_capability.png", c, cells))
    return written


def _capability_figure(path: Path, c: StudyConfig, cells: dict) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    keys = capability_columns(cells)
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.6), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for (method, n), cell in cells.items():
            points = [p for p in (cell.get("capability") or {}).get("points", []) if key in p]
            if points:
                ax.plot([p["edits"] for p in points], [p[key] for p in points], marker="o", markersize=3,
                        label=f"{method} ({cell['data']}, {n})")
        ax.set_xlabel("edits applied")
        if key == PERPLEXITY_TASK:  # one collapsing method (MEMIT: 41 → 3,950) would flatten the others' lines
            ax.set_yscale("log")
        ax.set_title(key + (" (lower is better, log scale)" if key == PERPLEXITY_TASK else ""))
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(f"General capability as the edits accumulate ({c.model})")
    fig.tight_layout()
    atomic_save_figure(fig, path, dpi=120)
    plt.close(fig)
    return path
