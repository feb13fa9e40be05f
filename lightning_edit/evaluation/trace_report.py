"""Causal traces summarised: averages by token role, layer suggestions for ROME/MEMIT, CSV tables, heatmaps."""
from __future__ import annotations

import csv
import hashlib
import io
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch

from ..atomic import atomic_write_text, temporary_sibling
from .tracing import KINDS, RecordTrace

# Token roles of ROME's averaged figures (tokens before the subject are left out there, and here).
CATEGORIES = ("first subject token", "middle subject tokens", "last subject token", "first subsequent token",
              "further tokens", "last token")
KIND_TITLES = {"hidden": "single restored block output", "mlp": "MLP outputs (window centred on the layer)",
               "attn": "attention outputs (window centred on the layer)"}
KIND_COLOURS = {"hidden": "Purples", "mlp": "Greens", "attn": "Reds"}


def token_categories(n_tokens: int, begin: int, end: int) -> dict[str, list[int]]:
    """Positions of each token role; a role a prompt lacks (no middle subject token, ...) is empty."""
    last = n_tokens - 1
    return {
        "first subject token": [begin],
        "middle subject tokens": list(range(begin + 1, end - 1)),
        "last subject token": [end - 1],
        "first subsequent token": [end] if end < last else [],
        "further tokens": list(range(end + 1, last)),
        "last token": [last],
    }


def average_effects(traces: Sequence[RecordTrace], kind: str) -> tuple[torch.Tensor, list[int]]:
    """Mean indirect effect p(restored) − p(corrupted) per (token role, layer) over the records, and how many
    records have each role (NaN where none has it)."""
    n_layers = traces[0].scores[kind].shape[1]
    total = torch.zeros(len(CATEGORIES), n_layers, dtype=torch.float64)
    counts = [0] * len(CATEGORIES)
    for tr in traces:
        effect = tr.scores[kind].double() - tr.low
        for row, positions in enumerate(token_categories(len(tr.tokens), *tr.subject_range).values()):
            if positions:
                total[row] += effect[positions].mean(0)
                counts[row] += 1
    for row, count in enumerate(counts):
        total[row] = total[row] / count if count else math.nan
    return total, counts


@dataclass
class LayerSuggestion:
    rome: int
    memit: list[int]
    mlp_curve: list[float]  # mean MLP indirect effect at the last subject token, per layer


def suggest_layers(traces: Sequence[RecordTrace], memit_width: int = 5) -> LayerSuggestion:
    """ROME: the layer whose MLP window has the highest mean indirect effect at the last subject token. MEMIT:
    ``memit_width`` consecutive layers ending there (MEMIT's GPT-2 XL choice, 13–17, ends at ROME's 17)."""
    if not traces or "mlp" not in traces[0].scores:
        raise ValueError("layer suggestions need MLP traces (kind 'mlp')")
    effects, _ = average_effects(traces, "mlp")
    curve = effects[CATEGORIES.index("last subject token")]
    rome = int(curve.argmax())
    return LayerSuggestion(rome=rome, memit=list(range(max(0, rome - memit_width + 1), rome + 1)), mlp_curve=curve.tolist())


def record_file_name(case_id: object, suffix: str = ".png") -> str:
    """``record_<case_id><suffix>`` with the id reduced to [A-Za-z0-9._-] (a case id comes from the data file: a
    '/' or '..' in it must not pick the folder). An id that had to change gets a short hash, so two ids never
    share a file."""
    text = str(case_id)
    safe = re.sub(r"\.{2,}", "_", re.sub(r"[^A-Za-z0-9._-]", "_", text))[:80].lstrip(".")
    if safe != text:
        safe = f"{safe}-{hashlib.sha256(text.encode('utf-8', 'surrogatepass')).hexdigest()[:8]}"
    return f"record_{safe}{suffix}"


class _atomic_csv:
    """A CSV built in memory and written in one step when the block ends (a reader never sees half a table)."""

    def __init__(self, path: Path):
        self.path, self.buffer = Path(path), io.StringIO(newline="")

    def __enter__(self) -> io.StringIO:
        return self.buffer

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is None:
            atomic_write_text(self.path, self.buffer.getvalue())


def save_figure(fig, path: Path) -> None:
    """``fig.savefig`` under a temporary name, then moved into place in one step."""
    path = Path(path)
    temp = temporary_sibling(path, suffix=path.suffix)
    try:
        fig.savefig(temp)
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def write_cells_csv(traces: Sequence[RecordTrace], path: Path) -> None:
    """Every restoration: one row per (record, kind, position, layer)."""
    with _atomic_csv(path) as f:
        w = csv.writer(f)
        w.writerow(["case_id", "kind", "position", "token", "role", "layer", "p_restored", "p_corrupted", "p_clean",
                    "indirect_effect"])
        for tr in traces:
            roles = {p: role for role, ps in token_categories(len(tr.tokens), *tr.subject_range).items() for p in ps}
            for kind, scores in tr.scores.items():
                for t in range(scores.shape[0]):
                    for layer in range(scores.shape[1]):
                        p = scores[t, layer].item()
                        w.writerow([tr.case_id, kind, t, tr.tokens[t], roles.get(t, "before subject"), layer,
                                    f"{p:.6g}", f"{tr.low:.6g}", f"{tr.high:.6g}", f"{p - tr.low:.6g}"])


def write_summary_csv(traces: Sequence[RecordTrace], path: Path) -> None:
    """Mean indirect effect per (kind, token role, layer) over the records."""
    with _atomic_csv(path) as f:
        w = csv.writer(f)
        w.writerow(["kind", "role", "layer", "mean_indirect_effect", "records"])
        for kind in traces[0].scores:
            effects, counts = average_effects(traces, kind)
            for row, role in enumerate(CATEGORIES):
                for layer in range(effects.shape[1]):
                    w.writerow([kind, role, layer, f"{effects[row, layer].item():.6g}", counts[row]])


def write_records_csv(traces: Sequence[RecordTrace], path: Path) -> None:
    with _atomic_csv(path) as f:
        w = csv.writer(f)
        w.writerow(["case_id", "prompt", "subject", "answer", "subject_tokens", "p_clean", "p_corrupted"])
        for tr in traces:
            w.writerow([tr.case_id, tr.prompt, tr.subject, tr.answer, f"{tr.subject_range[0]}:{tr.subject_range[1]}",
                        f"{tr.high:.6g}", f"{tr.low:.6g}"])


def _heatmap(ax, values: torch.Tensor, labels: Sequence[str], kind: str, title: str, vmin: Optional[float] = None):
    import numpy as np

    image = ax.pcolormesh(np.ma.masked_invalid(values.numpy()), cmap=KIND_COLOURS[kind], vmin=vmin)
    ax.invert_yaxis()
    ax.set_yticks([0.5 + i for i in range(len(labels))])
    ax.set_yticklabels(labels, fontsize=7)
    ax.set_xlabel("layer", fontsize=8)
    ax.set_title(title, fontsize=8)
    return image


def plot_average(traces: Sequence[RecordTrace], path: Path, model_name: str) -> None:
    """One panel per kind: mean indirect effect by token role and layer (ROME's Figure 2 layout)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = [k for k in KINDS if k in traces[0].scores]
    fig, axes = plt.subplots(1, len(kinds), figsize=(4.2 * len(kinds), 2.6), dpi=110, squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        effects, _ = average_effects(traces, kind)
        image = _heatmap(ax, effects, CATEGORIES, kind, f"{KIND_TITLES[kind]}\n{model_name}, {len(traces)} records")
        fig.colorbar(image, ax=ax).ax.set_title("AIE", fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def plot_record(tr: RecordTrace, path: Path) -> None:
    """One record's heatmaps: p(answer) with each state restored (subject tokens starred)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [repr(tok)[1:-1] + ("*" if tr.subject_range[0] <= i < tr.subject_range[1] else "")
              for i, tok in enumerate(tr.tokens)]
    kinds = [k for k in KINDS if k in tr.scores]
    fig, axes = plt.subplots(1, len(kinds), figsize=(3.8 * len(kinds), 0.25 * len(labels) + 1.2), dpi=110, squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        image = _heatmap(ax, tr.scores[kind], labels, kind, KIND_TITLES[kind], vmin=tr.low)
        fig.colorbar(image, ax=ax).ax.set_title(f"p({tr.answer.strip()})", fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
