import pytest
import torch

from lightning_edit.errors import ConfigError
from lightning_edit.models import FAMILY_LAYOUTS, layout_for
from lightning_edit.models.teacher_forcing import score_targets


def test_layout_resolves_for_every_family(tiny_model):
    layout = tiny_model.layout
    model = tiny_model.model
    assert layout.family == model.config.model_type
    assert layout.num_layers(model) == 4
    for i in range(4):
        out = layout.mlp_out_module(model, i)
        w = layout.linear_weight(out)
        hidden = layout.module(model, layout.embeddings).weight.shape[1]
        assert w.shape[0] == hidden  # (out, in) view: output dimension is the residual width
        assert layout.linear_weight(layout.mlp_in_module(model, i)).shape[1] == hidden
    assert layout.is_encoder_decoder == (layout.family == "t5")


def test_every_family_scores_targets(tiny_model):
    scores = score_targets(tiny_model, ["The capital of France is"], ["Paris"])
    assert len(scores) == 1 and scores[0].token_logprobs.shape == scores[0].target_ids.shape
    assert torch.isfinite(scores[0].token_logprobs).all()


def test_unknown_family_is_a_clear_error():
    class Fake(torch.nn.Module):
        class config:
            model_type = "mystery"

    with pytest.raises(ConfigError, match="mystery"):
        layout_for(Fake())


def test_registry_families_cover_the_study():
    assert {"gpt2", "gptj", "gpt_neox", "llama", "qwen2", "gemma3_text", "t5"} <= set(FAMILY_LAYOUTS)
