"""LightningDataModule over the training splits, for the editors that learn (MEND, KE, SERAC)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from ..requests import EditRequest
from .loaders import load_requests


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
        reqs = load_requests(hp.dataset, data_dir=hp.data_dir)
        if hp.val_dataset:
            val = load_requests(hp.val_dataset, n=hp.n_val, data_dir=hp.data_dir)
            train = reqs
        else:
            order = torch.randperm(len(reqs), generator=torch.Generator().manual_seed(hp.seed)).tolist()
            val = [reqs[i] for i in order[: hp.n_val]]
            train = [reqs[i] for i in order[hp.n_val:]]
        if hp.n_train is not None:
            train = train[: hp.n_train]
        self.train_set, self.val_set = RequestDataset(train), RequestDataset(val)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.hparams.batch_size, shuffle=True, collate_fn=collate_requests,
                          num_workers=self.hparams.num_workers, generator=torch.Generator().manual_seed(self.hparams.seed))

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.hparams.batch_size, shuffle=False, collate_fn=collate_requests,
                          num_workers=self.hparams.num_workers)
