"""``easyeditor.models.ike``: EasyEdit's IKE hyperparameters and ``encode_ike_facts``, over our IKE."""
from __future__ import annotations

import logging
from typing import Any

from ...errors import ConfigError
from ...runner import editor_for
from ..datasets import EasyEditDataset
from ..hparams import IKEHyperParams

log = logging.getLogger(__name__)

__all__ = ["IKEHyperParams", "encode_ike_facts"]


def encode_ike_facts(sentence_model: Any, ds: EasyEditDataset, hparams: IKEHyperParams) -> None:
    """Make ``ds`` IKE's demonstration pool and embed it now, as EasyEdit's ``encode_ike_facts`` does.

    The pool is ``ds``'s file (``hparams.train_data``, ``pool_size``: its ``size``), each record giving EasyEdit's
    copy/update/retain sentences. The embeddings come from the registered encoder ``hparams.sentence_model`` (the
    same all-MiniLM-L6-v2 recipe) and are cached as safetensors under the cache directory; ``sentence_model`` is
    not called, and nothing is pickled."""
    if not isinstance(ds, EasyEditDataset):
        raise ConfigError(f"encode_ike_facts: ds must be a ZsreDataset, CounterFactDataset or KnowEditDataset, "
                          f"got a {type(ds).__name__}")
    if not isinstance(hparams, IKEHyperParams):
        raise ConfigError(f"encode_ike_facts: hparams must be IKEHyperParams, got a {type(hparams).__name__}")
    hparams.train_data = [str(ds.path)]
    hparams.pool_size = ds.size
    log.info("encode_ike_facts: IKE's pool is %s (%d records), embedded with %s", ds.path, len(ds),
             hparams.sentence_model)
    if hparams.cache_embeddings:  # fills the on-disk cache that BaseEditor's IKE reads (else: embedded at the first edit)
        editor_for(hparams.native(), "ike").load_pool("cpu")
