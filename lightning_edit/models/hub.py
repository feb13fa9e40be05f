"""Loading a hub id or a local transformers directory (seq2seq or causal, by its config)."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import ModelNotAvailableError
from .registry import MODELS


def load_transformers(target: str, dtype: torch.dtype) -> tuple[nn.Module, Any]:
    """The model and tokenizer of a hub id or a local transformers directory, in ``dtype`` (no float32 copy first)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(target)
        cls = AutoModelForSeq2SeqLM if getattr(config, "is_encoder_decoder", False) else AutoModelForCausalLM
        model = cls.from_pretrained(target, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(target)
    except OSError as err:
        known = ", ".join(sorted(MODELS))
        raise ModelNotAvailableError(
            f"cannot load model {target!r}: it is neither a local directory nor in the Hugging Face cache, and the hub "
            f"cannot be reached from here ({type(err).__name__}). Give a local directory with config.json and weights "
            f"(--model /path/to/dir), download it where there is internet (huggingface-cli download {target}), "
            f"or use a registered offline model: {known}."
        ) from err
    return model, tokenizer
