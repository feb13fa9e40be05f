"""Sentence encoders (IKE's demonstration retrieval): the model loaded from a registered package or a local folder,
mean-pooled, L2-normalised embeddings. A loader of the models layer, beside the language models' own; the editors
only ask it for embeddings."""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Sequence

import torch

from ..errors import CheckpointError, ModelNotAvailableError
from ..hashing import sha256_file
from .registry import SENTENCE_ENCODERS, EncoderSpec


class SentenceEncoder:
    """Mean-pooled, L2-normalised sentence embeddings of a BERT-like model (sentence-transformers' recipe).

    ``source`` is a registered encoder (``models.registry.SENTENCE_ENCODERS``: its package is named in this
    package's code, its weights checked by sha256) or, from the user's own hyperparameters only, a local model
    folder. ``saved=True`` (a saved edit's ``patches.json``) admits registered encoders only: a saved directory
    never names code or a path to load."""

    def __init__(self, source: str, device: torch.device | str = "cpu", saved: bool = False) -> None:
        import transformers

        self.source = source  # what a saved IKE edit records, to load the same encoder back
        path = self.resolve(source, saved=saved)
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(str(path))
        self.model = transformers.AutoModel.from_pretrained(str(path)).eval().to(device)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.device = torch.device(device)
        # what the embeddings depend on: the model's files (name and weight size), for cache keys
        weights = sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin"))
        self.fingerprint = f"{path.name}:" + ",".join(f"{w.name}:{w.stat().st_size}" for w in weights)

    @staticmethod
    def resolve(source: object, saved: bool = False) -> Path:
        if isinstance(source, str) and source in SENTENCE_ENCODERS:
            return _registered_encoder_path(SENTENCE_ENCODERS[source])
        known = ", ".join(sorted(SENTENCE_ENCODERS))
        if saved:
            raise CheckpointError(f"ike: the saved edit names sentence model {str(source)[:80]!r}, which is not a "
                                  f"registered encoder ({known}); a saved edit may name only those")
        if isinstance(source, str) and Path(source).is_dir():
            return Path(source)
        raise ModelNotAvailableError(
            f"field 'sentence_model' is {str(source)[:80]!r}: neither a registered encoder ({known}) nor a local "
            "model folder; use one of those")

    @torch.no_grad()
    def encode(self, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        out = []
        for i in range(0, len(texts), batch_size):
            enc = self.tokenizer(list(texts[i: i + batch_size]), padding=True, truncation=True, max_length=256,
                                 return_tensors="pt").to(self.device)
            hidden = self.model(**enc).last_hidden_state
            mask = enc["attention_mask"][..., None].to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out.append(torch.nn.functional.normalize(pooled.float(), dim=-1))
        if not out:
            return torch.zeros(0, self.model.config.hidden_size)
        return torch.cat(out).cpu()


def _registered_encoder_path(spec: EncoderSpec) -> Path:
    """The model folder inside the encoder's package, its weights verified against the registry's sha256."""
    try:
        package = importlib.import_module(spec.package)  # a name written in models/registry.py, not read from a file
    except ImportError as err:
        raise ModelNotAvailableError(f"field 'sentence_model': {spec.name} is not installed. Install it with: "
                                     f"{spec.pip_install}") from err
    path = Path(package.get_model_path())
    weights = path / spec.weights_file
    if not weights.is_file() or sha256_file(weights) != spec.weights_sha256:
        raise CheckpointError(f"field 'sentence_model': {weights} does not match the sha256 registered for "
                              f"{spec.name}; reinstall it ({spec.pip_install})")
    return path
