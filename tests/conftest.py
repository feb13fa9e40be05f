"""Shared fixtures: the real smollm2-135m (loaded once per session) and tiny random models of every family."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

from lightning_edit.data import default_data_dir  # noqa: E402
from lightning_edit.models import LoadedModel, layout_for, load_model  # noqa: E402

DATA_DIR = default_data_dir()

FAMILIES = ("gpt2", "gptj", "gpt_neox", "llama", "gemma3_text", "qwen2", "t5")


def tiny_config(family: str, vocab_size: int):
    """A randomly initialised 4-block model of ``family`` (small enough for milliseconds per pass)."""
    import transformers as tf

    common = dict(vocab_size=vocab_size)
    if family == "gpt2":
        return tf.GPT2Config(n_embd=32, n_layer=4, n_head=2, n_positions=1024, **common)
    if family == "gptj":
        return tf.GPTJConfig(n_embd=32, n_layer=4, n_head=2, rotary_dim=8, n_positions=1024, **common)
    if family == "gpt_neox":
        return tf.GPTNeoXConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64, **common)
    if family == "llama":
        return tf.LlamaConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, num_key_value_heads=1, intermediate_size=64, **common)
    if family == "qwen2":
        return tf.Qwen2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, num_key_value_heads=1, intermediate_size=64, **common)
    if family == "gemma3_text":
        return tf.Gemma3TextConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                                   intermediate_size=64, sliding_window=32, **common)
    if family == "t5":
        return tf.T5Config(d_model=32, d_ff=64, num_layers=2, num_decoder_layers=4, num_heads=2, d_kv=16, decoder_start_token_id=0,
                           pad_token_id=0, eos_token_id=1, **common)
    raise ValueError(family)


@pytest.fixture(scope="session")
def smollm2() -> LoadedModel:
    """The real embedded default model, loaded once for the whole session (callers must undo their edits)."""
    return load_model("smollm2-135m")


def train_tiny_tokenizer(vocab_size: int = 2000, lines: int = 200):
    """A byte-level BPE tokenizer trained in a few seconds on the WikiText excerpt shipped with the package and the
    demo requests (repeated, so that their words — Paris, English, France... — are whole tokens, as in a real
    model's vocabulary): what the tiny random models need, without loading a real model for its tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from lightning_edit.paths import STATS_TEXT_PATH

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>", "<|pad|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    import json

    from lightning_edit.paths import DEMO_PATH

    demo = [" ".join(str(v) for k, v in r.items() if k in ("prompt", "target_new", "target_true", "subject"))
            for r in json.loads(DEMO_PATH.read_text(encoding="utf-8"))]
    common = "The capital of France is Paris. The capital of Italy is Rome. English French Italian German Spanish"
    corpus = STATS_TEXT_PATH.read_text(encoding="utf-8").splitlines()[:lines] + (demo + [common]) * 30
    bpe.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                   pad_token="<|pad|>")


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return train_tiny_tokenizer()


@pytest.fixture(scope="session")
def tokenizer(tiny_tokenizer):
    """The tokenizer of the tiny random models: trained here, so no real model is loaded for it."""
    return tiny_tokenizer


def build_tiny(family: str, tokenizer, seed: int = 0) -> LoadedModel:
    import transformers as tf

    torch.manual_seed(seed)
    config = tiny_config(family, vocab_size=len(tokenizer))
    cls = tf.AutoModelForSeq2SeqLM if family == "t5" else tf.AutoModelForCausalLM
    model = cls.from_config(config).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return LoadedModel(name=f"tiny-{family}", model=model, tokenizer=tokenizer, layout=layout_for(model))


def save_tiny(family: str, tokenizer, directory: Path) -> Path:
    """A tiny random model of ``family`` saved as a local transformers directory (what ``--model DIR`` loads)."""
    loaded = build_tiny(family, tokenizer)
    loaded.model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(params=FAMILIES)
def tiny_model(request, tokenizer) -> LoadedModel:
    """A fresh tiny random model per test, for each family."""
    return build_tiny(request.param, tokenizer)


@pytest.fixture(params=[f for f in FAMILIES if f != "t5"])
def tiny_decoder(request, tokenizer) -> LoadedModel:
    return build_tiny(request.param, tokenizer)


def require_data(relative: str) -> Path:
    path = DATA_DIR / relative
    if not path.exists():
        pytest.skip(f"benchmark data {path} not present (set LIGHTNING_EDIT_DATA)")
    return path
