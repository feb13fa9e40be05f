"""EasyEdit's ``summary_metrics``: the means of a metric list as ``BaseEditor.edit`` returns it."""
from __future__ import annotations

from typing import Union

import numpy as np

# EasyEdit's top-level scores of each side (pre, post), and the sections whose '*_acc' entries are averaged
TOP_KEYS = ("rewrite_acc", "rephrase_acc", "rewrite_ppl", "ood_acc")
SECTIONS = ("locality", "portability")


def summary_metrics(all_metrics: Union[dict, list[dict]]) -> dict:
    """Print and return EasyEdit's summary: for ``pre`` and ``post``, the mean of each top-level score over all
    requests, and for each locality/portability ``*_acc`` key the mean over the requests that have it of each
    request's mean. (EasyEdit also copies the metrics to ./logs/results.json; here the script's own file has them.)"""
    if isinstance(all_metrics, dict):
        all_metrics = [all_metrics]
    mean_metrics: dict = {}
    for side in ("pre", "post"):
        means: dict = {}
        for key in TOP_KEYS:
            values = [m[side][key] for m in all_metrics if key in m.get(side, {})]
            if values:
                means[key] = float(np.mean(np.concatenate([np.ravel(v) for v in values])))  # as EasyEdit's np.mean
        for section in SECTIONS:
            per_key: dict[str, list[float]] = {}
            for m in all_metrics:
                entries = m.get(side, {}).get(section, {})
                if isinstance(entries, dict):
                    for key, values in entries.items():
                        if key.endswith("acc"):
                            per_key.setdefault(key, []).append(float(np.mean(values)))
            if per_key:
                means[section] = {key: float(np.mean(v)) for key, v in sorted(per_key.items())}
        mean_metrics[side] = means
    print("Metrics Summary: ", mean_metrics)
    return mean_metrics
