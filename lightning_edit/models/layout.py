"""Where things live inside a transformer, per architecture family.

A family is identified by ``config.model_type`` (set by transformers, never by the model's name).
Paths are dotted module names; ``{}`` stands for the block index.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from ..errors import ConfigError


@dataclass(frozen=True)
class ModelLayout:
    family: str
    embeddings: str
    blocks: str  # the ModuleList of (decoder) blocks
    mlp_in: str  # MLP input projection of block {} (the "up" matrix; gate lives beside it where there is one)
    mlp_out: str  # MLP output projection of block {} (ROME/MEMIT edit this; its input is the "key")
    attn_out: str
    final_norm: str
    lm_head: str
    is_encoder_decoder: bool = False
    conv1d_weights: bool = False  # GPT-2's Conv1D stores weights as (in, out)
    # a norm the MLP's output passes through before it is added to the residual stream (Gemma 2/3); None: added as is
    mlp_post_norm: Optional[str] = None

    def module(self, model: nn.Module, path_template: str, layer: Optional[int] = None) -> nn.Module:
        path = path_template.format(layer) if layer is not None else path_template
        try:
            return model.get_submodule(path)
        except AttributeError as err:
            raise ConfigError(f"layout of family '{self.family}': no module at '{path}' in {type(model).__name__}") from err

    def name(self, path_template: str, layer: int) -> str:
        return path_template.format(layer)

    def num_layers(self, model: nn.Module) -> int:
        return len(self.module(model, self.blocks))

    def block_name(self, layer: int) -> str:
        """The dotted name of block ``layer`` (its output is the residual stream after it)."""
        return f"{self.blocks}.{layer}"

    def ffn_name(self, layer: int) -> str:
        """The FFN of block ``layer``: the module holding ``mlp_out`` (its input is the FFN's input)."""
        path = self.mlp_out.format(layer)
        if "." not in path:
            raise ConfigError(f"layout of family '{self.family}': mlp_out '{path}' has no parent module")
        return path.rsplit(".", 1)[0]

    def mlp_out_module(self, model: nn.Module, layer: int) -> nn.Module:
        return self.module(model, self.mlp_out, layer)

    def mlp_in_module(self, model: nn.Module, layer: int) -> nn.Module:
        return self.module(model, self.mlp_in, layer)

    def weight_name(self, path_template: str, layer: int) -> str:
        return f"{path_template.format(layer)}.weight"

    def linear_weight(self, module: nn.Module) -> torch.Tensor:
        """The weight as an (out, in) matrix view, whatever the storage convention."""
        return module.weight.T if self.conv1d_weights else module.weight

    def check(self, model: nn.Module) -> None:
        """Resolve every path once, so a wrong layout fails at load time with the path named."""
        for path in (self.embeddings, self.blocks, self.final_norm, self.lm_head):
            self.module(model, path)
        for template in (self.mlp_in, self.mlp_out, self.attn_out) + ((self.mlp_post_norm,) if self.mlp_post_norm else ()):
            self.module(model, template, 0)


_LLAMA_LIKE = dict(
    embeddings="model.embed_tokens",
    blocks="model.layers",
    mlp_in="model.layers.{}.mlp.up_proj",
    mlp_out="model.layers.{}.mlp.down_proj",
    attn_out="model.layers.{}.self_attn.o_proj",
    final_norm="model.norm",
    lm_head="lm_head",
)

FAMILY_LAYOUTS: dict[str, ModelLayout] = {
    "gpt2": ModelLayout(
        family="gpt2",
        embeddings="transformer.wte",
        blocks="transformer.h",
        mlp_in="transformer.h.{}.mlp.c_fc",
        mlp_out="transformer.h.{}.mlp.c_proj",
        attn_out="transformer.h.{}.attn.c_proj",
        final_norm="transformer.ln_f",
        lm_head="lm_head",
        conv1d_weights=True,
    ),
    "gptj": ModelLayout(
        family="gptj",
        embeddings="transformer.wte",
        blocks="transformer.h",
        mlp_in="transformer.h.{}.mlp.fc_in",
        mlp_out="transformer.h.{}.mlp.fc_out",
        attn_out="transformer.h.{}.attn.out_proj",
        final_norm="transformer.ln_f",
        lm_head="lm_head",
    ),
    "gpt_neox": ModelLayout(
        family="gpt_neox",
        embeddings="gpt_neox.embed_in",
        blocks="gpt_neox.layers",
        mlp_in="gpt_neox.layers.{}.mlp.dense_h_to_4h",
        mlp_out="gpt_neox.layers.{}.mlp.dense_4h_to_h",
        attn_out="gpt_neox.layers.{}.attention.dense",
        final_norm="gpt_neox.final_layer_norm",
        lm_head="lm_head",  # transformers ≥ 5 (was embed_out)
    ),
    "llama": ModelLayout(family="llama", **_LLAMA_LIKE),
    "qwen2": ModelLayout(family="qwen2", **_LLAMA_LIKE),
    "gemma3_text": ModelLayout(family="gemma3_text", **_LLAMA_LIKE, mlp_post_norm="model.layers.{}.post_feedforward_layernorm"),
    "t5": ModelLayout(
        family="t5",
        embeddings="shared",
        blocks="decoder.block",
        # decoder block = [self-attention, cross-attention, feed-forward]
        mlp_in="decoder.block.{}.layer.2.DenseReluDense.wi",
        mlp_out="decoder.block.{}.layer.2.DenseReluDense.wo",
        attn_out="decoder.block.{}.layer.0.SelfAttention.o",
        final_norm="decoder.final_layer_norm",
        lm_head="lm_head",
        is_encoder_decoder=True,
    ),
}


def layout_for(model: nn.Module) -> ModelLayout:
    """The layout of a loaded transformers model, from its ``config.model_type``."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in FAMILY_LAYOUTS:
        raise ConfigError(
            f"model_type {model_type!r} has no layout; known families: {sorted(FAMILY_LAYOUTS)}. "
            "Add a ModelLayout for it in lightning_edit/models/layout.py (FAMILY_LAYOUTS)."
        )
    layout = FAMILY_LAYOUTS[model_type]
    layout.check(model)
    return layout
