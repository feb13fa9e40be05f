"""Fine-tuning runs only the blocks from the lowest tuned one on (TailRunner); it must tune as a full pass does."""
from __future__ import annotations

import pytest
import torch

from lightning_edit.editors import build_editor
from lightning_edit.models import tail
from lightning_edit.requests import EditRequest

from conftest import build_tiny

REQUESTS = [EditRequest(prompt="The capital of France is", target_new="Rome and Milan"),
            EditRequest(prompt="Paris is the capital of the country of", target_new="Italy")]


def _tuned_weights(loaded, method: str) -> dict[str, torch.Tensor]:
    editor = build_editor(method, loaded, {"layers": [-2], "num_steps": 4, "lr": 1e-2})
    delta = editor.edit(loaded, REQUESTS)
    weights = {n: p.detach().clone() for n, p in loaded.model.named_parameters() if n in delta.weights_after}
    delta.undo(loaded)
    return weights


@pytest.mark.parametrize("method", ["ft-m", "ft-l"])
@pytest.mark.parametrize("family", ["gpt2", "llama", "qwen2"])  # T5 never replays: nothing to compare
def test_tail_replay_tunes_like_the_whole_model(family, method, tokenizer, monkeypatch):
    loaded = build_tiny(family, tokenizer)
    replays = []
    real_replay = tail.TailRunner._replay

    def counting(self):
        replays.append(1)
        return real_replay(self)

    monkeypatch.setattr(tail.TailRunner, "_replay", counting)
    replayed = _tuned_weights(loaded, method)
    assert len(replays) > 1  # the check and the steps went through the replay

    def no_replay(self):
        raise TypeError("replay disabled for the comparison")

    monkeypatch.setattr(tail.TailRunner, "_replay", no_replay)  # every step runs the whole model
    whole = _tuned_weights(loaded, method)
    assert replayed.keys() == whole.keys() and replayed
    for name in whole:
        torch.testing.assert_close(replayed[name], whole[name], atol=1e-5, rtol=1e-4)
