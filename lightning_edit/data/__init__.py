from ..paths import STATS_TEXT_PATH
from .formats import detect_format
from .loaders import (DATASET_GROUPS, DATASETS, DEMO_PATH, convert_records, default_data_dir, load_request_dataset, load_requests,
                      resolve_dataset_path)

# STATS_TEXT_PATH (lightning_edit/paths.py): the WikiText-2 test excerpt shipped in text/ (CC BY-SA 3.0; text/README.md).

__all__ = ["STATS_TEXT_PATH", "EditDataModule", "RequestDataset", "collate_requests", "DATASETS", "DATASET_GROUPS", "DEMO_PATH", "convert_records",
           "default_data_dir", "detect_format", "load_request_dataset", "load_requests", "resolve_dataset_path"]

# The datamodule pulls in torch and lightning (seconds to import); load it on first use so that
# `lightning-edit data ...` and the loaders start instantly.
_LAZY = {"EditDataModule", "RequestDataset", "collate_requests"}


def __getattr__(name: str):
    if name in _LAZY:
        from . import datamodule

        return getattr(datamodule, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
