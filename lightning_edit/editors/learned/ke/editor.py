"""KE — KnowledgeEditor (De Cao et al. 2021, "Editing Factual Knowledge in Language Models").

A hypernetwork conditioned on the edit predicts the weight update from the fine-tuning gradient.
The edit "<old answer> >> <new answer> || <prompt>" is embedded with the base model's (frozen) token
embeddings and encoded by a bidirectional LSTM into a condition vector ``c``. For each edited weight
``W`` (out × in) a small MLP maps ``c`` to vectors ``α, γ`` (out) and ``β, δ`` (in) and a scalar ``η``:

    ΔW = s · σ(η) · (∇W ⊙ (softmax(α) βᵀ) + softmax(γ) δᵀ)

(the released implementation's rank-one form of the paper's ``α̂ ⊙ ∇W + β̂``). It is trained with the
paper's constrained objective: minimise the edited model's NLL of the new answer (edit prompt and
rephrases) subject to ``KL(base ‖ edited) ≤ margin`` on unrelated prompts, by a Lagrange multiplier
updated by dual ascent. Conditioning is on one edit, so a batch is applied one request after another.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Sequence

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from ....errors import ConfigError
from ....models.loading import LoadedModel
from ....requests import EditRequest
from ..hypernetwork import LearnedEditor, LearnedHyperParams, as_stored, cond_text, edit_batch, gradient_factors
from ...base import add_update, register_editor
from ....models.ops import resolve_layers
from ..mend.editor import weight_shapes


@dataclass
class KEHyperParams(LearnedHyperParams):
    layers: list[int] = field(default_factory=lambda: [-3, -2, -1])
    lstm_hidden: int = 128
    condition_dim: int = 256
    hidden_dim: int = 128
    max_scale: float = 500.0  # s: with the initial α, β this starts as a gradient step of size ~0.04
    init_step: float = 0.1  # initial value of β (negative sign applied: a descent direction)
    ARCHITECTURE: ClassVar[tuple[str, ...]] = ("layers", "lstm_hidden", "condition_dim", "hidden_dim", "max_scale", "init_step")

    def validate(self) -> None:
        if not self.layers:
            raise ConfigError("field 'layers' is empty; name at least one block whose MLP output projection KE edits")
        for name in ("lstm_hidden", "condition_dim", "hidden_dim"):
            if getattr(self, name) < 1:
                raise ConfigError(f"field '{name}' must be ≥ 1")
        if self.max_scale <= 0:
            raise ConfigError("field 'max_scale' must be positive")


class ConditionedUpdate(nn.Module):
    """One weight's update from the condition vector and the weight's gradient."""

    def __init__(self, out_dim: int, in_dim: int, condition_dim: int, hidden_dim: int, max_scale: float, init_step: float):
        super().__init__()
        self.out_dim, self.in_dim, self.max_scale = out_dim, in_dim, max_scale
        self.hidden = nn.Sequential(nn.Linear(condition_dim, hidden_dim), nn.Tanh())
        self.head = nn.Linear(hidden_dim, 2 * (out_dim + in_dim) + 1)
        with torch.no_grad():
            self.head.weight.normal_(0.0, 1e-3)
            self.head.bias.zero_()
            # β starts at -init_step: the initial update is a plain gradient-descent step
            self.head.bias[out_dim: out_dim + in_dim] = -init_step
            # δ (the gradient-free part) starts at zero
            self.head.weight[2 * out_dim + in_dim: 2 * (out_dim + in_dim)].zero_()

    def forward(self, condition: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        alpha, beta, gamma, delta, eta = self.head(self.hidden(condition)).split(
            [self.out_dim, self.in_dim, self.out_dim, self.in_dim, 1], dim=-1)
        a = alpha.softmax(-1)[:, None] * beta[None, :]
        b = gamma.softmax(-1)[:, None] * delta[None, :]
        return self.max_scale * torch.sigmoid(eta) * (grad * a + b)


class KENetwork(nn.Module):
    def __init__(self, shapes: dict[str, tuple[int, int]], embedding_dim: int, lstm_hidden: int, condition_dim: int,
                 hidden_dim: int, max_scale: float, init_step: float):
        super().__init__()
        self.weight_names = list(shapes)
        self.lstm = nn.LSTM(embedding_dim, lstm_hidden, batch_first=True, bidirectional=True)
        self.project = nn.Sequential(nn.Linear(2 * lstm_hidden, condition_dim), nn.Tanh())
        self.updates = nn.ModuleDict({n.replace(".", "_"): ConditionedUpdate(o, i, condition_dim, hidden_dim, max_scale, init_step)
                                      for n, (o, i) in shapes.items()})

    def condition(self, embeddings: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(1, condition_dim) from the edit's token embeddings (1, T, d)."""
        weight = self.project[0].weight
        embeddings = embeddings.to(device=weight.device, dtype=torch.float32)
        # pack_padded_sequence wants its lengths on the CPU, whatever the device of the sequences
        packed = pack_padded_sequence(embeddings, lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, (h, _) = self.lstm(packed)
        return self.project(torch.cat([h[0], h[1]], dim=-1))[0]

    def forward(self, embeddings: torch.Tensor, lengths: torch.Tensor, grads: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        c = self.condition(embeddings, lengths)
        # gradients in float32 on the network's device whatever the model's dtype; the updates come out float32
        return {n: self.updates[n.replace(".", "_")](c, grads[n].to(device=c.device, dtype=torch.float32))
                for n in self.weight_names}


def edit_embeddings(loaded: LoadedModel, request: EditRequest) -> tuple[torch.Tensor, torch.Tensor]:
    """The frozen base embeddings of KE's conditioning text for one request."""
    ids = loaded.tokenizer(cond_text(request), return_tensors="pt", add_special_tokens=False)["input_ids"].to(loaded.device)
    with torch.no_grad():
        emb = loaded.model.get_input_embeddings()(ids).float()
    return emb, torch.tensor([ids.shape[1]], device=ids.device)  # condition() hands pack_padded_sequence a CPU copy


@register_editor
class KEEditor(LearnedEditor):
    name = "ke"
    HParams = KEHyperParams
    supports_batch = False  # the hypernetwork is conditioned on a single edit

    def layers(self, loaded: LoadedModel) -> list[int]:
        return resolve_layers(self.hparams.layers, loaded.layout.num_layers(loaded.model))

    def build_network(self, loaded: LoadedModel) -> KENetwork:
        hp = self.hparams
        dim = loaded.model.get_input_embeddings().weight.shape[1]
        return KENetwork(weight_shapes(loaded, self.layers(loaded)), dim, hp.lstm_hidden, hp.condition_dim, hp.hidden_dim,
                         hp.max_scale, hp.init_step)

    def touched_parameters(self, loaded: LoadedModel, requests: Sequence[EditRequest]) -> list[str]:
        return list(weight_shapes(loaded, self.layers(loaded)))

    def compute_updates(self, loaded: LoadedModel, request: EditRequest) -> dict[str, torch.Tensor]:
        network = self._network(loaded)
        factors = gradient_factors(loaded, self.layers(loaded), edit_batch(loaded, [request]))
        grads = {n: f.weight_gradient() for n, f in factors.items()}
        missing = [n for n in network.weight_names if n not in grads]
        if missing:
            raise ConfigError(f"ke: the trained editor edits {missing[:3]}, which this config's 'layers' does not name")
        emb, lengths = edit_embeddings(loaded, request)
        return network(emb, lengths, grads)

    def _apply(self, loaded: LoadedModel, requests: Sequence[EditRequest]) -> list:
        params = dict(loaded.model.named_parameters())
        for request in requests:
            with torch.no_grad():
                updates = self.compute_updates(loaded, request)
                for name, delta in updates.items():
                    add_update(params[name], as_stored(loaded, delta))  # float32 sum, one rounding
        return []
