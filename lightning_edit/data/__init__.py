from pathlib import Path

from .loaders import (DATASET_GROUPS, DATASETS, DEMO_PATH, convert_records, default_data_dir, detect_format, load_requests,
                      resolve_dataset_path)

# A WikiText-2 test excerpt shipped with the package (CC BY-SA 3.0; text/README.md): statistics text and unrelated prompts.
STATS_TEXT_PATH = Path(__file__).resolve().parent / "text" / "wikitext-2-test-excerpt.txt"

__all__ = ["STATS_TEXT_PATH", "EditDataModule", "RequestDataset", "collate_requests", "DATASETS", "DATASET_GROUPS", "DEMO_PATH", "convert_records",
           "default_data_dir", "detect_format", "load_requests", "resolve_dataset_path"]

# The datamodule pulls in torch and lightning (seconds to import); load it on first use so that
# `lightning-edit data ...` and the loaders start instantly.
_LAZY = {"EditDataModule", "RequestDataset", "collate_requests"}


def __getattr__(name: str):
    if name in _LAZY:
        from . import datamodule

        return getattr(datamodule, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
