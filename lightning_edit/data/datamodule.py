"""LightningDataModule over the training splits, for the editors that learn (MEND, MALMEN, KE, SERAC)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import ConfigError
from ..requests import EditRequest
from .loaders import load_request_dataset
from .records import requests_from_dataset


class RequestDataset(Dataset):
    def __init__(self, requests: list[EditRequest]):
        self.requests = requests

    def __len__(self) -> int:
        return len(self.requests)

    def __getitem__(self, i: int) -> EditRequest:
        return self.requests[i]


def collate_requests(batch: list[EditRequest]) -> list[EditRequest]:
    """Batches stay lists of requests: each learnt editor tokenizes with its own model's tokenizer."""
    return list(batch)


class EditDataModule(L.LightningDataModule):
    """Train/validation split of a dataset of edit requests (``zsre-train``, ``counterfact-train``...)."""

    def __init__(self, dataset: str = "zsre-train", val_dataset: Optional[str] = None, n_train: Optional[int] = None,
                 n_val: int = 100, batch_size: int = 1, data_dir: Optional[Union[str, Path]] = None, seed: int = 0,
                 num_workers: int = 0):
        super().__init__()
        self.save_hyperparameters()
        self.train_set: Optional[RequestDataset] = None
        self.val_set: Optional[RequestDataset] = None

    def setup(self, stage: Optional[str] = None) -> None:
        hp = self.hparams
        train = load_request_dataset(hp.dataset, data_dir=hp.data_dir)
        if hp.val_dataset:
            val = load_request_dataset(hp.val_dataset, n=hp.n_val, data_dir=hp.data_dir)
        elif hp.n_val > 0:
            if hp.n_val >= len(train):
                raise ConfigError(f"field 'n_val' ({hp.n_val}) leaves no training requests: {hp.dataset} has {len(train)}; "
                                  f"lower n_val or name a separate val_dataset")
            split = train.train_test_split(test_size=hp.n_val, seed=hp.seed)  # shuffled, reproducible from the seed
            train, val = split["train"], split["test"]
        else:
            val = train.select([])
        if hp.n_train is not None:
            train = train.select(range(min(hp.n_train, len(train))))
        self.train_set, self.val_set = RequestDataset(requests_from_dataset(train)), RequestDataset(requests_from_dataset(val))

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.hparams.batch_size, shuffle=True, collate_fn=collate_requests,
                          num_workers=self.hparams.num_workers, generator=torch.Generator().manual_seed(self.hparams.seed))

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.hparams.batch_size, shuffle=False, collate_fn=collate_requests,
                          num_workers=self.hparams.num_workers)
