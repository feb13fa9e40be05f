from .datamodule import EditDataModule, RequestDataset, collate_requests
from .loaders import DATASETS, DEMO_PATH, convert_records, default_data_dir, detect_format, load_requests, resolve_dataset_path

__all__ = ["EditDataModule", "RequestDataset", "collate_requests", "DATASETS", "DEMO_PATH", "convert_records",
           "default_data_dir", "detect_format", "load_requests", "resolve_dataset_path"]
