"""A tiny random model (GPT-2 shaped, a BPE tokenizer trained in a second) for the cases that need a model to save,
load or edit without the real one: built once per folder, reused by every case."""
from __future__ import annotations

import json
from pathlib import Path

from .common import GOOD

REQUESTS = [GOOD, {"prompt": "The capital of France is", "target_new": "Rome", "subject": "France"}]
_BUILT: dict[Path, Path] = {}


def tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    text = [" ".join(r.values()) for r in REQUESTS] * 20
    bpe.train_from_iterator(text, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>")


def tiny_loaded(seed: int = 0):
    """A ``LoadedModel`` of a 2-block GPT-2 with 16-wide states."""
    import torch
    import transformers as tf

    from lightning_edit.models import LoadedModel, layout_for

    tokenizer = tiny_tokenizer()
    torch.manual_seed(seed)
    model = tf.GPT2LMHeadModel(tf.GPT2Config(n_embd=16, n_layer=2, n_head=2, n_positions=256,
                                             vocab_size=len(tokenizer))).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return LoadedModel(name="tiny-gpt2", model=model, tokenizer=tokenizer, layout=layout_for(model))


def tiny_model_dir(folder: Path) -> Path:
    """``folder/tiny-model``: an ordinary transformers directory (what ``--model DIR`` loads)."""
    target = folder / "tiny-model"
    if target not in _BUILT:
        loaded = tiny_loaded()
        loaded.model.save_pretrained(target, safe_serialization=True)
        loaded.tokenizer.save_pretrained(target)
        _BUILT[target] = target
    return target


def requests_file(folder: Path) -> Path:
    path = folder / "requests.json"
    if not path.exists():
        path.write_text(json.dumps(REQUESTS), encoding="utf-8")
    return path


# what an edit of the tiny model runs with: FT-M on its second block, one step
TINY_EDIT = ["--method", "ft-m", "--set", "layers=[1]", "--set", "num_steps=1"]
