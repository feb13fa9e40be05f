"""A cell's value with the bootstrap 95% interval of its requests' values, as the tables and figures show it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ...metrics.intervals import bootstrap_interval


@dataclass(frozen=True)
class Estimate:
    """A cell's value and its bootstrap 95% interval over the cell's requests (None: too few requests, or a cell
    written before requests' values were kept)."""

    value: float
    interval: Optional[tuple[float, float]] = None

    def __str__(self) -> str:
        if self.interval is None:
            return fmt(self.value)
        return f"{fmt(self.value)} [{fmt(self.interval[0])}, {fmt(self.interval[1])}]"


def estimate(cell: Optional[dict], key: str, pre: bool = False, statistic: str = "mean",
             immediate: bool = False) -> Optional[Estimate]:
    """``key`` of a cell after its edits (``pre``: before them; ``immediate``: a sequential cell's requests each
    right after its own edit call) with the bootstrap interval of its requests' values; None where the cell is
    missing or does not report ``key``. ``edit_seconds`` is each request's own edit time."""
    if cell is None:
        return None
    moment = "pre" if pre else "immediate" if immediate else "post"
    value = {"pre": cell.get("pre", {}), "immediate": cell.get("immediate", {}), "post": cell["summary"]}[moment].get(key)
    if value is None:
        return None
    rows = cell.get("per_request", [])
    if key == "edit_seconds":
        values = [row["edit_seconds"] for row in rows if row.get("edit_seconds") is not None]
    else:
        values = [row[moment][key] for row in rows if key in row.get(moment, {})]
    return Estimate(value, bootstrap_interval(values, statistic))


def fmt(value: object) -> str:
    """A table entry as text: an estimate with its interval, a float to 3 places, a missing value as ``-``."""
    if isinstance(value, Estimate):
        return str(value)
    return "-" if value is None else (f"{value:.3f}" if isinstance(value, float) else str(value))
