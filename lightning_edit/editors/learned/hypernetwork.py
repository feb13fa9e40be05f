"""Pieces shared by the editors that learn (MEND, MALMEN, KE, SERAC): gradient factors, the network that transforms
them (MEND's, which MALMEN reuses), the edited forward pass, losses, and loading a trained network from a checkpoint
into an editor."""
from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from ...checkpoints import CONFIG_FILE, EditorCheckpoint, is_hub_id, load_editor_checkpoint
from ..base import Editor, HyperParams
from ...errors import CheckpointError, ConfigError, docs_link
from ...hooks import trace
from ...models.loading import LoadedModel
from ...models.ops import target_nll  # noqa: F401  (the training loss; imported from here by training/)
from ...models.teacher_forcing import TargetBatch, build_target_batch
from ...requests import EditRequest


@dataclass
class GradientFactors:
    """Per edited weight: the layer inputs ``u`` (N, in) and output gradients ``delta`` (N, out) of the
    edit loss at every real token. The weight gradient is ``delta.T @ u`` (out, in): rank one per token."""

    u: torch.Tensor
    delta: torch.Tensor

    def weight_gradient(self) -> torch.Tensor:
        return self.delta.T @ self.u


def target_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per row: fraction of target tokens whose argmax is the target (the evaluation's token protocol)."""
    mask = labels != -100
    hits = (logits.argmax(-1) == labels) & mask
    return hits.sum(-1).float() / mask.sum(-1).clamp(min=1)


def masked_kl(base_logits: torch.Tensor, edited_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """KL(base ‖ edited) averaged over the labelled positions (MEND's locality loss)."""
    mask = (labels != -100).float()
    base_logp = torch.log_softmax(base_logits.float(), dim=-1)
    edited_logp = torch.log_softmax(edited_logits.float(), dim=-1)
    kl = (base_logp.exp() * (base_logp - edited_logp)).sum(-1)
    return (kl * mask).sum() / mask.sum().clamp(min=1)


def agreement(base_logits: torch.Tensor, edited_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per row: fraction of labelled positions whose argmax is unchanged (the evaluation's locality)."""
    mask = labels != -100
    same = (base_logits.argmax(-1) == edited_logits.argmax(-1)) & mask
    return same.sum(-1).float() / mask.sum(-1).clamp(min=1)


def edit_batch(loaded: LoadedModel, requests: Sequence[EditRequest]) -> TargetBatch:
    return build_target_batch(loaded, [r.prompt for r in requests], [r.target_new for r in requests])


def rephrase_pairs(requests: Sequence[EditRequest]) -> tuple[list[str], list[str]]:
    """Each request's edit prompt and its rephrases, all with target_new (the outer edit loss: MEND's x_e')."""
    prompts, targets = [], []
    for r in requests:
        for p in (r.prompt, *r.rephrase_prompts):
            prompts.append(p)
            targets.append(r.target_new)
    return prompts, targets


def locality_pairs(requests: Sequence[EditRequest]) -> Optional[tuple[list[str], list[str]]]:
    pairs = [(probe.prompt, probe.answer) for r in requests for probe in r.locality]
    if not pairs:
        return None
    return [p for p, _ in pairs], [a for _, a in pairs]


def locality_batch(loaded: LoadedModel, requests: Sequence[EditRequest]) -> Optional[TargetBatch]:
    pairs = locality_pairs(requests)
    return build_target_batch(loaded, *pairs) if pairs else None


def weight_names(loaded: LoadedModel, layers: Sequence[int]) -> list[str]:
    return [loaded.layout.weight_name(loaded.layout.mlp_out, i) for i in layers]


KEY_POSITIONS = ("all", "target")


def gradient_factors(loaded: LoadedModel, layers: Sequence[int], batch: TargetBatch,
                     positions: str = "all") -> dict[str, GradientFactors]:
    """Inputs and output-gradients of the MLP output projections of ``layers`` for the edit loss, at every real
    token (``positions="all"``, MEND) or only where a target token is predicted (``"target"``, MALMEN's keys).

    Only those weights require grad during the pass, so the backward stops at the lowest of them."""
    if positions not in KEY_POSITIONS:
        raise ConfigError(f"key positions {positions!r}: choose one of {', '.join(KEY_POSITIONS)}")
    layout, model = loaded.layout, loaded.model
    paths = [layout.mlp_out.format(i) for i in layers]
    weights = [layout.mlp_out_module(model, i).weight for i in layers]
    flags = [w.requires_grad for w in weights]
    try:
        for w in weights:
            w.requires_grad_(True)
        with torch.enable_grad(), trace(model, paths, keep_input=True, keep_output=True, detach=False) as tr:
            logits = model(**batch.model_inputs()).logits
            loss = target_nll(logits, batch.labels)
            outputs = [tr[p].output for p in paths]
            grads = torch.autograd.grad(loss, outputs)
    finally:
        for w, flag in zip(weights, flags):
            w.requires_grad_(flag)
    if positions == "target":
        mask = batch.labels != -100
    elif batch.decoder_input_ids is not None:  # encoder-decoder: the edited MLPs run over decoder positions
        mask = torch.ones_like(batch.decoder_input_ids, dtype=torch.bool)
    else:
        mask = batch.attention_mask.bool()
    out: dict[str, GradientFactors] = {}
    for i, p, g in zip(layers, paths, grads):
        u = tr[p].input.detach()
        out[layout.weight_name(layout.mlp_out, i)] = GradientFactors(u=u[mask].float(), delta=g.detach()[mask].float())
    return out


class RunningNorm(nn.Module):
    """Per-dimension running mean/variance (batched Welford), updated only in training mode."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("m2", torch.zeros(dim))

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        n = x.shape[0]
        if n == 0:
            return
        batch_mean = x.mean(0)
        batch_m2 = ((x - batch_mean) ** 2).sum(0)
        total = self.count + n
        d = batch_mean - self.mean
        self.mean += d * (n / total).float()
        self.m2 += batch_m2 + d ** 2 * (self.count * n / total).float()
        self.count.copy_(total)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.update(x.detach())
        if self.count < 2:
            return x
        std = (self.m2 / (self.count - 1).float()).clamp(min=0).sqrt()
        return (x - self.mean) / (std + self.eps)


class LowRankResidual(nn.Module):
    """``x + act(scale_ℓ ⊙ B A x + shift_ℓ)``: identity at initialisation (B = 0), conditioned on the layer ℓ."""

    def __init__(self, dim: int, rank: int, n_modes: int, relu: bool):
        super().__init__()
        self.down = nn.Linear(dim, rank, bias=False)
        self.up = nn.Linear(rank, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        self.mode_scale = nn.Parameter(torch.ones(n_modes, dim))
        self.mode_shift = nn.Parameter(torch.zeros(n_modes, dim))
        self.relu = relu

    def forward(self, x: torch.Tensor, mode: int) -> torch.Tensor:
        h = self.up(self.down(x)) * self.mode_scale[mode] + self.mode_shift[mode]
        return x + (F.relu(h) if self.relu else h)


class FactorTransform(nn.Module):
    """MEND's gradient transform, shared by MEND and MALMEN: one low-rank residual MLP per weight shape (``[u; δ]``
    in, ``[ũ; δ̃]`` out), conditioned on the edited layer (per-layer scale and shift), per-layer running norms of
    ``u`` and ``δ``, and a learnt step size ``α_ℓ`` per edited weight. The first ``n_relu`` blocks are ReLU ones."""

    def __init__(self, shapes: dict[str, tuple[int, int]], rank: int, n_blocks: int, n_relu: int,
                 edit_lr_init: float, eps: float):
        super().__init__()
        self.weight_names = list(shapes)
        self.shapes = dict(shapes)
        self.shape_keys = {n: f"{o}x{i}" for n, (o, i) in shapes.items()}
        modes: dict[str, int] = {}
        self.mode_of: dict[str, int] = {}
        for n in self.weight_names:
            k = self.shape_keys[n]
            self.mode_of[n] = modes.get(k, 0)
            modes[k] = self.mode_of[n] + 1
        self.mlps = nn.ModuleDict()
        for k in sorted(modes):
            out_dim, in_dim = (int(x) for x in k.split("x"))
            dim = in_dim + out_dim
            self.mlps[k] = nn.ModuleList([LowRankResidual(dim, min(rank, dim), modes[k], relu=j < n_relu)
                                          for j in range(n_blocks)])
        self.u_norms = nn.ModuleDict({self._key(n): RunningNorm(shapes[n][1], eps) for n in self.weight_names})
        self.delta_norms = nn.ModuleDict({self._key(n): RunningNorm(shapes[n][0], eps) for n in self.weight_names})
        self.edit_lrs = nn.Parameter(torch.full((len(self.weight_names),), float(edit_lr_init)))

    @staticmethod
    def _key(name: str) -> str:
        return name.replace(".", "_")

    def transform(self, name: str, factors: GradientFactors) -> tuple[torch.Tensor, torch.Tensor]:
        """``(ũ, δ̃)`` for every token's ``(u, δ)`` of weight ``name`` (float32, on the network's device, whatever
        the model's dtype: the factors are cast before the network reads them)."""
        key, device = self._key(name), self.edit_lrs.device
        u = self.u_norms[key](factors.u.to(device=device, dtype=torch.float32))
        d = self.delta_norms[key](factors.delta.to(device=device, dtype=torch.float32))
        x = torch.cat([u, d], dim=-1)
        for layer in self.mlps[self.shape_keys[name]]:
            x = layer(x, self.mode_of[name])
        u_t, d_t = x.split([u.shape[-1], d.shape[-1]], dim=-1)
        return u_t, d_t

    def step_size(self, name: str) -> torch.Tensor:
        return self.edit_lrs[self.weight_names.index(name)]


def mlp_out_shapes(loaded: LoadedModel, layers: Sequence[int]) -> dict[str, tuple[int, int]]:
    """(out, in) shape of each edited MLP output projection."""
    out = {}
    for i in layers:
        w = loaded.layout.linear_weight(loaded.layout.mlp_out_module(loaded.model, i))
        out[loaded.layout.weight_name(loaded.layout.mlp_out, i)] = tuple(w.shape)
    return out


def as_stored(loaded: LoadedModel, delta_out_in: torch.Tensor) -> torch.Tensor:
    """An (out, in) update in the layout the weight is stored in (GPT-2's Conv1D stores (in, out))."""
    return delta_out_in.T if loaded.layout.conv1d_weights else delta_out_in


def edited_logits(loaded: LoadedModel, deltas: dict[str, torch.Tensor], batch: TargetBatch) -> torch.Tensor:
    """Logits of the model with ``W + delta`` for each named weight, differentiable in the deltas;
    the model's own parameters are left untouched."""
    params = dict(loaded.model.named_parameters())
    new = {name: params[name] + as_stored(loaded, d).to(params[name].dtype) for name, d in deltas.items()}
    return torch.func.functional_call(loaded.model, new, args=(), kwargs=batch.model_inputs()).logits


@dataclass
class LearnedHyperParams(HyperParams):
    """Fields every learnt editor has; the architecture fields of a trained editor come from its checkpoint."""

    editor_checkpoint: Optional[str] = None  # directory written by train.py, or a hub id user/repo (edit.py --editor)
    training: dict = dataclasses.field(default_factory=dict)  # the `training:` section, read by train.py

    ARCHITECTURE: ClassVar[tuple[str, ...]] = ()  # fields fixed by training; a checkpoint's values win

    def architecture(self) -> dict:
        return {k: getattr(self, k) for k in self.ARCHITECTURE}


MAX_ARCHITECTURE_INT = 1 << 16  # a width, rank or count read from a checkpoint; trained editors use hundreds
LAYER_FIELDS = ("layers", "lora_layers", "scope_layer")  # block indices: inside the model, negative from the end


def checked_architecture(hp: LearnedHyperParams, ckpt: EditorCheckpoint, loaded: LoadedModel) -> LearnedHyperParams:
    """``hp`` with the architecture of ``ckpt``'s config.yaml, every value checked: integers in range (block
    indices inside ``loaded``), finite numbers, templates naming only their fields, then the method's own
    validation. A bad value is a ``CheckpointError`` naming the file and the field."""
    source = f"editor checkpoint {ckpt.directory / CONFIG_FILE}"
    arch = {k: v for k, v in ckpt.config.items() if k in hp.ARCHITECTURE}
    n_layers = loaded.layout.num_layers(loaded.model)
    for name, value in arch.items():
        _check_architecture_value(source, name, value, n_layers)
    if is_hub_id(hp.editor_checkpoint) and "@" not in hp.editor_checkpoint and re.fullmatch(r"[0-9a-f]{40}", ckpt.directory.name):
        arch["editor_checkpoint"] = f"{hp.editor_checkpoint}@{ckpt.directory.name}"  # the commit read, recorded
    try:
        return type(hp).from_dict({**hp.to_dict(), **arch}, source=source)
    except ConfigError as err:
        raise CheckpointError(str(err)) from None


def _check_architecture_value(source: str, name: str, value: object, n_layers: int) -> None:
    items = value if isinstance(value, list) else [value]
    if len(items) > max(n_layers, 16):
        raise CheckpointError(f"{source}: field '{name}' has {len(items)} items; the model has {n_layers} blocks")
    for item in items:
        if isinstance(item, bool) or item is None:
            continue
        if isinstance(item, int):
            low, high = (-n_layers, n_layers - 1) if name in LAYER_FIELDS else (0, MAX_ARCHITECTURE_INT)
            if not low <= item <= high:
                raise CheckpointError(f"{source}: field '{name}' is {item}, outside [{low}, {high}]"
                                      + (f" (the model has {n_layers} blocks)" if name in LAYER_FIELDS else ""))
        elif isinstance(item, float):
            if not math.isfinite(item) or abs(item) > 1e6:
                raise CheckpointError(f"{source}: field '{name}' is {item}; expected a finite number of sane size")
        elif isinstance(item, str):
            _check_template(source, name, item)
        else:
            raise CheckpointError(f"{source}: field '{name}' holds {type(item).__name__} {item!r:.60}; expected "
                                  "numbers or names")


def _check_template(source: str, name: str, text: str) -> None:
    """A text read from a checkpoint that is later filled with ``str.format`` (SERAC's ``edit_template``) may name
    only ``{prompt}`` and ``{target}``: no index, attribute, conversion or width."""
    import string

    try:
        fields = [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(text) if f is not None]
    except ValueError as err:
        raise CheckpointError(f"{source}: field '{name}' {text!r:.80} is not a valid template ({err})") from None
    bad = [f for f, spec, conv in fields if f not in ("prompt", "target") or spec or conv]
    if len(text) > 1000 or bad:
        raise CheckpointError(f"{source}: field '{name}' {text!r:.80} may name only {{prompt}} and {{target}} "
                              f"(found {bad[:3]}) and hold at most 1000 characters")


class LearnedEditor(Editor):
    """An editor whose network is trained by ``train.py`` and loaded from a checkpoint directory
    (``hparams.editor_checkpoint``), or handed over directly during training/validation."""

    network: Optional[nn.Module]

    def __init__(self, hparams: HyperParams, network: Optional[nn.Module] = None):
        super().__init__(hparams)
        self.network = network
        self.checkpoint: Optional[EditorCheckpoint] = None

    def build_network(self, loaded: LoadedModel) -> nn.Module:
        raise NotImplementedError

    def prepare(self, loaded: LoadedModel) -> None:
        if self.network is not None:
            self.network.to(loaded.device)  # the model may have moved since the network was loaded
            return
        hp = self.hparams
        if not hp.editor_checkpoint:
            raise ConfigError(
                f"method '{self.name}' needs a trained editor: field 'editor_checkpoint' is not set. Train one with "
                f"`python train.py {self.name} {loaded.name}` and pass its directory: "
                f"`python edit.py --method {self.name} --editor checkpoints/editors/{self.name}-<model>` "
                f"(or --set editor_checkpoint=DIR); how: {docs_link('guides/training.md')}")
        ckpt = load_editor_checkpoint(hp.editor_checkpoint, method=self.name, loaded=loaded)
        # The architecture the network was trained with overrides the YAML defaults: checked (types, ranges, the
        # hyperparameters' own validation) before any tensor of the network is built from it.
        self.hparams = checked_architecture(hp, ckpt, loaded)
        network = self.build_network(loaded)
        missing, unexpected = network.load_state_dict(ckpt.state_dict, strict=False)
        if missing or unexpected:
            from ...errors import CheckpointError

            raise CheckpointError(f"editor checkpoint {hp.editor_checkpoint}: tensors do not fit the {self.name} network "
                                  f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
        self.network = network.to(loaded.device).eval()  # the checkpoint loads on the CPU; the model may be on a GPU
        for p in self.network.parameters():
            p.requires_grad_(False)
        self.checkpoint = ckpt

    @classmethod
    def from_pretrained(cls, source: Union[str, Path], loaded: LoadedModel,
                        overrides: Optional[dict] = None) -> "LearnedEditor":
        """The trained editor in a checkpoint folder or hub id (``user/repo``), verified and ready for ``loaded``."""
        hp = cls.HParams.for_model(cls.name, loaded.name, loaded.layout.family,
                                   {**(overrides or {}), "editor_checkpoint": str(source)})
        editor = cls(hp)
        editor.prepare(loaded)
        return editor

    def _checkpoint(self) -> EditorCheckpoint:
        if self.checkpoint is None:
            raise ConfigError(f"this {self.name} editor was not loaded from a checkpoint; `python train.py {self.name} "
                              f"MODEL` writes one (load it with {type(self).__name__}.from_pretrained)")
        return self.checkpoint

    def save_pretrained(self, save_directory: Union[str, Path]) -> Path:
        return self._checkpoint().save_pretrained(save_directory)

    def push_to_hub(self, repo_id: str, *, token: Optional[str] = None, private: Optional[bool] = None) -> Any:
        return self._checkpoint().push_to_hub(repo_id, token=token, private=private)

    def _network(self, loaded: LoadedModel) -> nn.Module:
        if self.network is None:
            self.prepare(loaded)
        return self.network.to(loaded.device)  # follows the model if it moved since (a no-op where it is)


def cond_text(r: EditRequest) -> str:
    """KE's conditioning string: "<old answer> >> <new answer> || <prompt>"."""
    return f"{r.target_true or ''} >> {r.target_new} || {r.prompt}"


__all__ = ["FactorTransform", "GradientFactors", "KEY_POSITIONS", "LearnedEditor", "LowRankResidual", "RunningNorm",
           "mlp_out_shapes", "LearnedHyperParams", "agreement", "as_stored", "cond_text", "edit_batch",
           "edited_logits", "gradient_factors", "locality_batch", "locality_pairs", "masked_kl", "rephrase_pairs",
           "target_accuracy", "target_nll", "weight_names"]
