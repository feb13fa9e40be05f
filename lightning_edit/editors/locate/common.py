"""What ROME, MEMIT and AlphaEdit share besides keys and values: hyperparameters, the per-model resources computed
once (context prefixes, second-moment statistics), the supported-model check and the weight update.

T5 (encoder-decoder) is refused by ``check_supported``: see its docstring for why.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch

from ...errors import ConfigError, docs_link
from ...models.loading import LoadedModel
from ...models.ops import resolve_layers
from ...requests import EditRequest
from ...stats import DEFAULT_TOKENS
from ..base import SPEED_ONLY, Editor, HyperParams, add_update
from .batching import ReplayCheck
from .keys import generate_context_prefixes
from .values import ValueHParams


def check_supported(loaded: LoadedModel, method: str) -> None:
    """Refuse encoder-decoder models (T5) with the reason.

    ROME/MEMIT/AlphaEdit write a key→value association into an MLP: the key is that MLP's input at the
    subject's last token. In T5 the subject is read by the *encoder*; the decoder MLPs (the ones whose
    output feeds the answer) never see a subject token. Their only position before the answer is the
    decoder start token, whose MLP input depends on the whole prompt through cross-attention, so a key
    taken there identifies the prompt's wording, not the subject: an edit would not carry to paraphrases
    or other prompts about the subject, which is what these methods are for. Editing the *encoder* MLPs
    at the subject instead changes what cross-attention reads, not a decoder association, and the
    second-moment statistics would need decoder inputs from text that T5's span-corruption format does
    not define. Rather than run something that does not do what the method claims, we refuse.
    """
    if loaded.layout.is_encoder_decoder:
        raise ConfigError(
            f"{method} edits a decoder MLP keyed on the subject's last token, but in {loaded.name} "
            f"({loaded.layout.family}, encoder-decoder) the subject is only read by the encoder; the decoder MLPs never "
            f"see it, so a subject key does not exist there (details: {docs_link('guides/gpu.md', 'encoder-decoder-models-t5')}). "
            f"Use a decoder-only model, or a method without subject keys (ft-l, ft-m, ...)."
        )


@dataclass
class LocateHyperParams(HyperParams):
    layers: list[int] = field(default_factory=lambda: [4])  # negative: counted from the last block
    context_prefixes: int = 5  # generated prefixes (besides the plain prompt) for keys and values
    context_length: int = 10  # tokens per prefix
    v_num_grad_steps: int = 20
    v_lr: float = 0.5
    v_weight_decay: float = 0.5
    clamp_norm_factor: float = 4.0
    kl_factor: float = 0.0625
    v_early_stop_loss: float = 0.05
    v_early_stop_on: str = "nll"  # "nll": the NLL term < v_early_stop_loss; "loss": all of L(δ), as ROME's/MEMIT's code
    v_early_stop_prob: Optional[float] = None
    # padded tokens per forward/backward pass of value optimisation: rows beyond it run in further passes, their
    # gradients added up (the same vectors). MEMIT, a batch of 20 on smollm2 (1 thread): 1024 → 2.57 GB peak, 83 s;
    # 256 → 1.71 GB, 73 s; 128 → 1.57 GB, 70 s. Raise it on a GPU with memory to spare.
    v_tokens_per_pass: int = field(default=256, metadata={SPEED_ONLY: True})
    mom2_n_tokens: int = DEFAULT_TOKENS
    stats_text: Optional[str] = None  # text file for the statistics (default: WikiText-2 test)
    stats_dir: Optional[str] = None  # cache root (default: $LIGHTNING_EDIT_CACHE or checkpoints/)
    stats_seq_len: int = 256
    stats_batch_size: int = 4
    progress: bool = True

    def validate(self) -> None:
        if not self.layers:
            raise ConfigError("field 'layers' is empty; name the block(s) to edit")
        if self.context_prefixes < 0 or self.context_length < 1:
            raise ConfigError("fields 'context_prefixes' (≥0) and 'context_length' (≥1) are out of range")
        if self.v_num_grad_steps < 1 or self.v_lr <= 0:
            raise ConfigError("fields 'v_num_grad_steps' (≥1) and 'v_lr' (>0) must be positive")
        if self.clamp_norm_factor <= 0 or self.kl_factor < 0 or self.v_weight_decay < 0:
            raise ConfigError("fields 'clamp_norm_factor' (>0), 'kl_factor' (≥0), 'v_weight_decay' (≥0) are out of range")
        if self.mom2_n_tokens < 1:
            raise ConfigError("field 'mom2_n_tokens' must be ≥ 1")
        if self.v_tokens_per_pass < 1:
            raise ConfigError("field 'v_tokens_per_pass' must be ≥ 1 (padded tokens per optimisation pass)")
        if self.v_early_stop_on not in ("loss", "nll"):
            raise ConfigError(f"field 'v_early_stop_on' must be 'loss' (the whole loss, as ROME and MEMIT) or 'nll' "
                              f"(its new-object term), got {self.v_early_stop_on!r}")

    def value_hparams(self) -> ValueHParams:
        """The ``v_*`` fields above (and ``clamp_norm_factor``, ``kl_factor``) as ``optimise_values`` reads them: declared
        and defaulted here only."""
        return ValueHParams.from_hparams(self)


@dataclass
class ModelResources:
    """What an editor computes once per model: context prefixes and per-layer statistics (and what the
    method derives from them, e.g. an inverse or a projection)."""

    prefixes: list[str]
    mom2: dict[int, torch.Tensor] = field(default_factory=dict)
    derived: dict = field(default_factory=dict)
    replay: ReplayCheck = field(default_factory=ReplayCheck)  # whether value steps may replay the top blocks only


class LocateEditor(Editor):
    """Common parts of ROME, MEMIT and AlphaEdit: layer resolution, prefixes and statistics (``prepare``)."""

    HParams = LocateHyperParams
    needs_subject = True

    def __init__(self, hparams: HyperParams):
        super().__init__(hparams)
        # keyed weakly by the model object: one editor may serve several models; an entry goes with its model
        self._resources: weakref.WeakKeyDictionary[torch.nn.Module, ModelResources] = weakref.WeakKeyDictionary()

    def layers(self, loaded: LoadedModel) -> list[int]:
        return resolve_layers(self.hparams.layers, loaded.layout.num_layers(loaded.model))

    def touched_parameters(self, loaded: LoadedModel, requests: Sequence[EditRequest]) -> list[str]:
        check_supported(loaded, self.name)
        return [loaded.layout.weight_name(loaded.layout.mlp_out, i) for i in self.layers(loaded)]

    def needs_mom2(self) -> bool:
        return True

    def prepare(self, loaded: LoadedModel) -> None:
        self.resources(loaded)

    def resources(self, loaded: LoadedModel) -> ModelResources:
        check_supported(loaded, self.name)
        key = loaded.model
        if key not in self._resources:
            hp = self.hparams
            res = ModelResources(prefixes=generate_context_prefixes(loaded, hp.context_prefixes, hp.context_length, hp.seed))
            if self.needs_mom2():
                from ...stats import layer_second_moments

                res.mom2 = layer_second_moments(
                    loaded, self.layers(loaded), n_tokens=hp.mom2_n_tokens, text_path=hp.stats_text, cache_dir=hp.stats_dir,
                    seq_len=hp.stats_seq_len, batch_size=hp.stats_batch_size, progress=hp.progress)
            res.derived = self.derive(loaded, res)
            self._resources[key] = res
        return self._resources[key]

    def derive(self, loaded: LoadedModel, res: ModelResources) -> dict:
        """Per-model quantities computed from the statistics (override)."""
        return {}


def add_to_weight(loaded: LoadedModel, layer: int, update_out_in: torch.Tensor) -> None:
    """Add an (out, in) update to the mlp_out weight of ``layer``, whatever its storage (GPT-2's Conv1D is (in, out))."""
    module = loaded.layout.mlp_out_module(loaded.model, layer)
    weight = loaded.layout.linear_weight(module)
    add_update(weight, update_out_in)  # computed in float32 whatever the weight's dtype, rounded once
