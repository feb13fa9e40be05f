"""UltraEdit (Gu et al. 2025, "UltraEdit: Training-, Subject-, and Memory-Free Lifelong Editing in Large Language
Models").

For each edited linear module ``l`` and one turn of edits, a forward and backward pass of the targets' cross-entropy
gives, at every edited token, the module's input (the hidden state, the key ``k``) and the gradient of the loss at its
output (``g``). Lifelong normalisation standardises the features ``z = [k; g]`` with a running mean and standard
deviation that every turn updates with its own features before using them (the paper's Sec. 3.2):

    ẑ = (z − μ_t) / (σ_t + ε),   ẑ = [k̂; ĝ]

The target value shift of each token is the output change one gradient step would make, from normalised features:

    v = −η ‖k̂‖² ĝ

and the parameter shift is the ridge least-squares solution over all tokens of the turn (keys ``K`` raw, rows):

    ΔW = (KᵀK + λI)⁻¹ KᵀV,   W ← W + ΔWᵀ   (λ = 1 in the paper)

Training-free (no optimiser), subject-free (every token of prompt and target is a key) and memory-free (nothing but
the running statistics is kept). The statistics (count, mean, M2 per module shape, shared by modules of one shape as
in the authors' code) belong to the edited model: they are a patch in its registry (``LifelongNormalizer``, kind
``ultraedit-stats``) that each turn changes as one ordered entry, so undo restores them bit for bit and ``--save``
keeps them for the turns that follow. The running update is Chan et al.'s exact parallel combination of mean and
sum of squared deviations (the authors' code adds the batch's unbiased variance times its size, slightly more).
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from ...errors import CheckpointError, ConfigError
from ...hooks import hooks
from ...models.loaded import LoadedModel
from ...models.ops import resolve_layers, target_nll
from ...models.patches import PatchChange, register_patch
from ...models.teacher_forcing import build_target_batch
from ...requests import EditRequest
from ..base import Editor, HyperParams, add_update, register_editor
from ..memory.memory import HookedMemory, editing_memory

POSITIONS = ("all", "target")  # EasyEdit's token: "mask" (every token of prompt and target) and "ans"
LAYOUT_ROLES = ("mlp_in", "mlp_out", "attn_out")  # module keys resolved through the model's layout
EPS = torch.finfo(torch.float32).eps


@dataclass
class UltraEditHyperParams(HyperParams):
    # edited linear modules → blocks: a layout role (mlp_in, mlp_out, attn_out) or a path inside the block
    # ("mlp.gate_proj"); negative blocks count from the last
    modules: dict = field(default_factory=lambda: {"mlp_in": [-6, -5, -4, -3]})
    lr: float = 1e-6  # η: the step the value shift v = −η‖k̂‖²ĝ stands for
    ridge: float = 1.0  # λ of (KᵀK + λI)
    positions: str = "all"  # tokens whose keys are used: "all" of prompt and target, or "target" only
    forward_batch_size: int = 10  # requests per forward/backward pass (EasyEdit's batch_size_once): the loss is
    # averaged over each pass's target tokens

    def validate(self) -> None:
        if not isinstance(self.modules, dict) or not self.modules:
            raise ConfigError("field 'modules' must map module names to lists of blocks, e.g. {mlp.up_proj: [10, 11]}")
        for name, layers in self.modules.items():
            if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][\w.]*", name):
                raise ConfigError(f"field 'modules': {name!r} is not a module name (a layout role or a path such "
                                  "as mlp.up_proj)")
            if not isinstance(layers, list) or not layers or not all(_is_int(x) for x in layers):
                raise ConfigError(f"field 'modules': {name} must map to a non-empty list of block numbers, "
                                  f"got {layers!r}")
        if self.lr <= 0 or self.ridge <= 0:
            raise ConfigError(f"fields 'lr' ({self.lr}) and 'ridge' ({self.ridge}) must be positive")
        if self.positions not in POSITIONS:
            raise ConfigError(f"field 'positions' must be one of {POSITIONS}, got {self.positions!r}")
        if self.forward_batch_size < 1:
            raise ConfigError(f"field 'forward_batch_size' must be ≥ 1, got {self.forward_batch_size}")


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _shape_key(d_in: int, d_out: int) -> str:
    return f"{d_in}x{d_out}"


@register_patch
class LifelongNormalizer(HookedMemory):
    """Running count, mean and M2 (sum of squared deviations) of the features [k; g] per module shape ``d_in x d_out``
    (float64). Bookkeeping: the model computes as without it; each turn's change is one ordered entry."""

    kind = "ultraedit-stats"
    key = "ultraedit-stats"
    changes_outputs = False

    @classmethod
    def for_shapes(cls, shapes: Sequence[str], device: torch.device) -> "LifelongNormalizer":
        stats = cls({"shapes": sorted(set(shapes))})
        for shape in stats.signature["shapes"]:
            width = sum(int(x) for x in shape.split("x"))
            stats.values[f"{shape}/count"] = torch.zeros((), dtype=torch.float64, device=device)
            stats.values[f"{shape}/mean"] = torch.zeros(width, dtype=torch.float64, device=device)
            stats.values[f"{shape}/m2"] = torch.zeros(width, dtype=torch.float64, device=device)
        return stats

    def register_hooks(self, model: nn.Module) -> Iterator:
        return iter(())  # statistics only: no hook on the model

    def update(self, shape: str, z: torch.Tensor) -> None:
        """Fold the rows of ``z`` into the statistics of ``shape`` (new tensors: states are shared references)."""
        z = z.double()
        n, mean, m2 = (self.values[f"{shape}/{s}"] for s in ("count", "mean", "m2"))
        m = z.shape[0]
        batch_mean = z.mean(0)
        delta = batch_mean - mean
        total = n + m
        self.values[f"{shape}/mean"] = mean + delta * (m / total)
        self.values[f"{shape}/m2"] = m2 + ((z - batch_mean) ** 2).sum(0) + delta ** 2 * (n * m / total)
        self.values[f"{shape}/count"] = total

    def normalise(self, shape: str, z: torch.Tensor) -> torch.Tensor:
        """ẑ = (z − μ) / (σ + ε), σ the sample standard deviation so far."""
        n, mean, m2 = (self.values[f"{shape}/{s}"] for s in ("count", "mean", "m2"))
        std = (m2 / (n - 1).clamp(min=1)).sqrt()
        return ((z.double() - mean) / (std + EPS)).to(z.dtype)

    @classmethod
    def empty_for(cls, loaded: LoadedModel, config: dict[str, Any]) -> "LifelongNormalizer":
        shapes = (config.get("signature") or {}).get("shapes") if isinstance(config, dict) else None
        linear = {_shape_key(*_in_out(loaded, m)) for m in loaded.model.modules() if _is_linear(m)}
        if not isinstance(shapes, list) or not shapes or not all(isinstance(s, str) and s in linear for s in shapes):
            raise CheckpointError(f"ultraedit: saved statistics for module shapes {shapes!r}; model {loaded.name!r} "
                                  f"has linear modules of shapes {sorted(linear)[:6]}")
        return cls.for_shapes(shapes, loaded.device)

    def check_values(self, template: dict[str, Any]) -> None:
        super().check_values(template)
        for shape in self.signature["shapes"]:
            if float(self.values[f"{shape}/count"]) < 0 or bool((self.values[f"{shape}/m2"] < 0).any()):
                raise CheckpointError(f"ultraedit: saved statistics of {shape} have a negative count or M2")


def _is_linear(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"  # GPT-2's (in, out) linear


def _in_out(loaded: LoadedModel, module: nn.Module) -> tuple[int, int]:
    out_features, in_features = loaded.layout.linear_weight(module).shape
    return int(in_features), int(out_features)


@register_editor
class UltraEditEditor(Editor):
    name = "ultraedit"
    HParams = UltraEditHyperParams
    supports_batch = True  # a turn of edits is one closed-form solve

    def module_names(self, loaded: LoadedModel) -> list[str]:
        """The edited modules, each checked to exist and to be a linear layer."""
        if loaded.layout.is_encoder_decoder:
            raise ConfigError(f"ultraedit edits decoder-only models; {loaded.name} is an encoder-decoder")
        layout, n = loaded.layout, loaded.layout.num_layers(loaded.model)
        names = []
        for module, layers in self.hparams.modules.items():
            for layer in resolve_layers(layers, n, f"modules.{module}"):
                block = layout.block_name(layer)
                name = getattr(layout, module).format(layer) if module in LAYOUT_ROLES else f"{block}.{module}"
                try:
                    found = loaded.model.get_submodule(name)
                except AttributeError:
                    raise ConfigError(f"ultraedit: field 'modules': {name!r} does not exist in {loaded.name}; name a "
                                      f"linear module inside block {block!r} (e.g. mlp.up_proj)") from None
                if not _is_linear(found):
                    raise ConfigError(f"ultraedit: field 'modules': {name!r} is a {type(found).__name__}, not a "
                                      "linear layer")
                names.append(name)
        return list(dict.fromkeys(names))

    def touched_parameters(self, loaded: LoadedModel, requests: Sequence[EditRequest]) -> list[str]:
        return [f"{name}.weight" for name in self.module_names(loaded)]

    def _apply(self, loaded: LoadedModel, requests: Sequence[EditRequest]) -> list[PatchChange]:
        names = self.module_names(loaded)
        keys, grads = keys_and_gradients(loaded, requests, names, self.hparams)
        shapes = {n: _shape_key(keys[n].shape[1], grads[n].shape[1]) for n in names}
        signature = {"shapes": sorted(set(shapes.values()))}
        def create() -> LifelongNormalizer:
            return LifelongNormalizer.for_shapes(signature["shapes"], loaded.device)

        with editing_memory(loaded, LifelongNormalizer.key, create, signature) as session:
            stats: LifelongNormalizer = session.container
            for shape in signature["shapes"]:  # this turn's features first: they are normalised with themselves in
                rows = [torch.cat([keys[n], grads[n]], -1) for n in names if shapes[n] == shape]
                stats.update(shape, torch.cat(rows))
            for n in names:
                shift = self.parameter_shift(keys[n], grads[n], stats, shapes[n])
                weight = loaded.model.get_submodule(n).weight
                add_update(weight, shift if loaded.layout.conv1d_weights else shift.T)
        return [session.change]

    def parameter_shift(self, keys: torch.Tensor, grads: torch.Tensor, stats: LifelongNormalizer,
                        shape: str) -> torch.Tensor:
        """ΔW (d_in, d_out) = (KᵀK + λI)⁻¹ KᵀV with V = −η ‖k̂‖² ĝ from the lifelong-normalised features."""
        k_hat, g_hat = stats.normalise(shape, torch.cat([keys, grads], -1)).split([keys.shape[1], grads.shape[1]], -1)
        values = -self.hparams.lr * (k_hat * k_hat).sum(-1, keepdim=True) * g_hat
        k = keys.double()
        lhs = k.T @ k + self.hparams.ridge * torch.eye(k.shape[1], dtype=k.dtype, device=k.device)
        return torch.linalg.solve(lhs, k.T @ values.double())


def keys_and_gradients(loaded: LoadedModel, requests: Sequence[EditRequest], names: list[str],
                       hp: UltraEditHyperParams) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Per module, the inputs (n, d_in) and the loss gradients at the outputs (n, d_out) at the edited tokens of all
    requests (float32); one forward and backward pass per ``forward_batch_size`` requests."""
    keys: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    grads: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    modules = {n: loaded.model.get_submodule(n) for n in names}
    for module in modules.values():
        module.weight.requires_grad_(True)  # outputs then carry a graph (Editor.edit hands the flags back)
    step = hp.forward_batch_size
    for start in range(0, len(requests), step):
        chunk = requests[start:start + step]
        batch = build_target_batch(loaded, [r.prompt for r in chunk], [r.target_new for r in chunk])
        where = batch.attention_mask.bool() if hp.positions == "all" else batch.labels != -100
        seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        with hooks(functools.partial(_recorders, modules, seen)):
            loss = target_nll(loaded.model(**batch.model_inputs()).logits, batch.labels)
        outputs = torch.autograd.grad(loss, [seen[n][1] for n in names])
        for n, g in zip(names, outputs, strict=True):
            keys[n].append(seen[n][0][where].float())
            grads[n].append(g.detach()[where].float())
    return {n: torch.cat(v) for n, v in keys.items()}, {n: torch.cat(v) for n, v in grads.items()}


def _recorders(modules: dict[str, nn.Module], seen: dict) -> Iterator:
    """Forward hooks keeping each module's input (detached) and output (in the graph) in ``seen``."""
    for name, module in modules.items():
        def hook(module, inputs, output, name=name):
            seen[name] = (inputs[0].detach(), output)
        yield module.register_forward_hook(hook)
