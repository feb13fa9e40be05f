"""CaliNET (Dong et al. 2022): calibration memory slots beside the FFN of chosen blocks.

Each chosen block's FFN gets a small extra FFN of ``slots`` memory slots, keys K ∈ R^{m×d} and values
V ∈ R^{d×m}: ``FFN'(x) = FFN(x) + V · act(K · x)``, where x is the FFN's input. The base weights stay
frozen; only K and V are trained, on the facts to calibrate (edit prompt → target_new, teacher-forced
NLL of the target tokens) plus a KL term that keeps the next-token distributions of unrelated prompts
(``kl_prompts``) where the base model has them. V starts at zero, so the untrained memory is a no-op.

The memory acts through a forward hook on the FFN module (the parent of ``layout.mlp_out``) that the
edit's patch registers on ``attach`` and removes on ``detach``; the modules live in the patch, not in
the model, so ``named_parameters`` and ``state_dict`` stay those of the base model. Sequential edits
each add their own memory, trained with the earlier ones attached.
"""
from __future__ import annotations

import contextlib

from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
from torch import nn

from ...errors import CheckpointError, ConfigError
from ...models.loaded import LoadedModel
from ...models.teacher_forcing import build_target_batch, target_logits
from ...requests import EditRequest
from ..base import Editor, HyperParams, register_editor
from ...models.ops import pad_right, pad_token_id, resolve_layers
from ...models.patches import EntryPatch, PatchChange, register_patch

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}

DEFAULT_KL_PROMPTS = [
    "The capital of France is",
    "Water is made of hydrogen and",
    "The largest planet in the solar system is",
    "Albert Einstein was born in",
]


@dataclass
class CaliNETHyperParams(HyperParams):
    layers: list[int] = field(default_factory=lambda: [-3])  # blocks whose FFN gets calibration slots
    slots: int = 64  # m: calibration memory slots per block
    activation: str = "relu"
    lr: float = 5e-2
    num_steps: int = 15
    early_stop_loss: float = 0.05  # stop once the target NLL falls below this
    kl_weight: float = 1.0
    kl_prompts: list[str] = field(default_factory=lambda: list(DEFAULT_KL_PROMPTS))
    weight_decay: float = 0.0

    def validate(self) -> None:
        if not self.layers:
            raise ConfigError("field 'layers' is empty; name at least one block to calibrate")
        if self.slots < 1:
            raise ConfigError(f"field 'slots' must be ≥ 1, got {self.slots}")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f"field 'activation' must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}")
        if self.num_steps < 1 or self.lr <= 0:
            raise ConfigError("fields 'num_steps' (≥1) and 'lr' (>0) must be positive")
        if self.kl_weight < 0:
            raise ConfigError(f"field 'kl_weight' must be ≥ 0, got {self.kl_weight}")
        if self.kl_weight > 0 and not self.kl_prompts:
            raise ConfigError("field 'kl_prompts' is empty while 'kl_weight' > 0; give unrelated prompts or set kl_weight: 0")


class CalibrationFFN(nn.Module):
    """``V · act(K · x)``: ``slots`` key/value memory slots of width ``hidden``."""

    def __init__(self, hidden: int, slots: int, activation: str, generator: Optional[torch.Generator] = None) -> None:
        super().__init__()
        self.keys = nn.Parameter(torch.randn(slots, hidden, generator=generator) / hidden ** 0.5)
        self.values = nn.Parameter(torch.zeros(hidden, slots))
        self.act = ACTIVATIONS[activation]()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.act(x.float() @ self.keys.T) @ self.values.T).to(x.dtype)


@register_patch
class CalibrationPatch(EntryPatch):
    """One edit's calibration memories, a patch in the model's registry: attached, its hooks add each memory's
    output beside its FFN; detached, they are gone. Several edits stack as several patches (``calinet-0``,
    ``calinet-1``...): each holds one entry, its edit's memories."""

    kind = "calinet"

    def __init__(self, memories: Optional[dict[str, CalibrationFFN]] = None, activation: str = "gelu") -> None:
        self.memories = memories or {}  # FFN module name → memory
        self.activation = activation
        self._handles: list = []

    # ---- the entry (EntryPatch): one edit's memories ----------------------------------------------
    def add_entry(self, entry: dict[str, CalibrationFFN]) -> None:
        if self.memories:
            raise CheckpointError(f"{self.key}: a calinet patch holds one edit's memories; this one holds some already")
        self.memories = entry

    def remove_entry(self, entry: dict[str, CalibrationFFN]) -> None:
        self.memories = {}

    def has_entry(self, entry: object) -> bool:
        return self.memories is entry

    @property
    def empty(self) -> bool:
        return not self.memories

    # ---- in the registry ----------------------------------------------------------------------
    def on_attach(self, loaded: LoadedModel) -> None:
        with contextlib.ExitStack() as undo_on_error:
            for name, memory in self.memories.items():
                handle = loaded.model.get_submodule(name).register_forward_hook(self._hook(memory))
                undo_on_error.callback(handle.remove)
                self._handles.append(handle)
            undo_on_error.pop_all()

    def on_detach(self, loaded: LoadedModel) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def config(self) -> dict:
        return {"modules": list(self.memories), "activation": self.activation,
                "slots": {n: int(m.keys.shape[0]) for n, m in self.memories.items()}}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {f"{name}/{k}": v.detach() for name, m in self.memories.items() for k, v in m.state_dict().items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        expected = self.state_dict()
        if set(state) != set(expected):
            raise CheckpointError(f"calinet: saved tensors {sorted(state)[:4]} differ from the memories' {sorted(expected)[:4]}")
        for name, tensor in state.items():
            want = expected[name]
            if tensor.shape != want.shape or tensor.dtype != want.dtype:
                raise CheckpointError(f"calinet: saved {name!r} is {tensor.dtype} {list(tensor.shape)}; this model needs "
                                      f"{want.dtype} {list(want.shape)}")
        for name, memory in self.memories.items():
            memory.load_state_dict({k: state[f"{name}/{k}"] for k in memory.state_dict()})

    @classmethod
    def from_saved(cls, config: dict, state: dict[str, torch.Tensor], loaded: LoadedModel) -> "CalibrationPatch":
        activation = config["activation"]
        if activation not in ACTIVATIONS:
            raise CheckpointError(f"calinet: saved activation {activation!r} is not one of {sorted(ACTIVATIONS)}")
        hidden = int(loaded.model.get_input_embeddings().weight.shape[1])  # what the FFN reads: the residual stream
        memories = {}
        for name in config["modules"]:
            try:
                loaded.model.get_submodule(name)
            except AttributeError as err:
                raise CheckpointError(f"calinet: the saved memory sits on module {name!r}, which model {loaded.name!r} lacks") from err
            memories[name] = CalibrationFFN(hidden, int(config["slots"][name]), activation).to(loaded.device)
        patch = cls(memories, activation)
        patch.load_state_dict(state)
        for p in patch._parameters():
            p.requires_grad_(False)
        return patch

    def _parameters(self) -> list[nn.Parameter]:
        return [p for m in self.memories.values() for p in m.parameters()]

    @staticmethod
    def _hook(memory: CalibrationFFN):
        def hook(module, inputs, output):
            x = inputs[0]
            if isinstance(output, tuple):
                return (output[0] + memory(x),) + tuple(output[1:])
            return output + memory(x)

        return hook


@register_editor
class CaliNETEditor(Editor):
    edits_weights_only = False  # its edits are patches; see Editor.edits_weights_only

    name = "calinet"
    HParams = CaliNETHyperParams
    needs_subject = False
    supports_batch = True  # one memory calibrated on all requests of a batch

    def touched_parameters(self, loaded: LoadedModel, requests: Sequence[EditRequest]) -> list[str]:
        resolve_layers(self.hparams.layers, loaded.layout.num_layers(loaded.model))  # fail early on bad layers
        return []  # base weights are frozen; the memories live in the patch

    def _hidden_size(self, loaded: LoadedModel, layer: int) -> int:
        weight = loaded.layout.linear_weight(loaded.layout.mlp_out_module(loaded.model, layer))
        return weight.shape[0]  # (out, in): out is the residual width

    def _kl_batch(self, loaded: LoadedModel):
        prompts = self.hparams.kl_prompts
        rows = [loaded.tokenizer(p)["input_ids"] for p in prompts]
        ids, mask = pad_right(rows, pad_token_id(loaded.tokenizer), loaded.device)
        inputs = {"input_ids": ids, "attention_mask": mask}
        if loaded.layout.is_encoder_decoder:
            start = loaded.model.config.decoder_start_token_id
            inputs["decoder_input_ids"] = torch.full((len(rows), 1), start, dtype=torch.long, device=loaded.device)
            mask = torch.ones((len(rows), 1), dtype=torch.long)
        return inputs, mask.bool().to(loaded.device)

    def _apply(self, loaded: LoadedModel, requests: Sequence[EditRequest]) -> list[PatchChange]:
        hp = self.hparams
        layers = resolve_layers(hp.layers, loaded.layout.num_layers(loaded.model))
        generator = torch.Generator().manual_seed(hp.seed)
        memories = {loaded.layout.ffn_name(layer): CalibrationFFN(self._hidden_size(loaded, layer), hp.slots, hp.activation, generator)
                    .to(loaded.device) for layer in layers}
        batch = build_target_batch(loaded, [r.prompt for r in requests], [r.target_new for r in requests])
        mask = batch.labels != -100
        use_kl = hp.kl_weight > 0
        if use_kl:
            kl_inputs, kl_mask = self._kl_batch(loaded)
            with torch.no_grad():
                base_logp = torch.log_softmax(loaded.model(**kl_inputs).logits.float(), dim=-1)
        params = [p for m in memories.values() for p in m.parameters()]
        optimizer = torch.optim.Adam(params, lr=hp.lr, weight_decay=hp.weight_decay)
        # the n-th stacked CaliNET edit on this model; edits are undone newest first, so the numbers stay unique
        key = f"calinet-{sum(k.startswith('calinet-') for k in loaded.patches.keys())}"
        change = loaded.patches.change(CalibrationPatch, memories, key=key, create=lambda: CalibrationPatch(activation=hp.activation))
        try:
            for _ in range(hp.num_steps):
                optimizer.zero_grad(set_to_none=True)
                logp = torch.log_softmax(target_logits(loaded, batch).float(), dim=-1)
                token_logp = logp.gather(-1, batch.labels.clamp(min=0)[..., None]).squeeze(-1)
                nll = -(token_logp * mask).sum() / mask.sum()
                if not torch.isfinite(nll):
                    raise FloatingPointError(f"target loss became {nll.item()}")
                if nll.item() < hp.early_stop_loss:
                    break
                loss = nll
                if use_kl:
                    new_logp = torch.log_softmax(loaded.model(**kl_inputs).logits.float(), dim=-1)
                    kl = (base_logp.exp() * (base_logp - new_logp)).sum(-1)
                    loss = loss + hp.kl_weight * kl[kl_mask].mean()
                loss.backward()
                optimizer.step()
            if not all(torch.isfinite(p).all() for p in params):
                raise FloatingPointError("non-finite values in the calibration memory")
        except BaseException:
            change.detach(loaded)
            raise
        for p in params:
            p.requires_grad_(False)
        return [change]
