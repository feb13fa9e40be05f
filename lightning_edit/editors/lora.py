"""LoRA (Hu et al. 2022, "LoRA: Low-Rank Adaptation of Large Language Models") as EasyEdit's fine-tuning baseline.

Each targeted linear module keeps its weight W₀ and gains a trainable low-rank update:

    h = W₀x + (α / r) · B A x,   A ∈ ℝ^{r×d_in} (Kaiming-uniform), B ∈ ℝ^{d_out×r} (zeros)

trained with Adam on the teacher-forced cross-entropy of the edit targets (prompt positions masked), ``num_steps``
passes over the requests in chunks of ``train_batch_size``, dropout ``lora_dropout`` on x while training, as
EasyEdit's ``execute_lora``. Which modules carry an adapter is peft's rule (``LoraConfig`` with ``target_modules``
and ``layers_to_transform``, matched by ``check_target_module_exists``).

The adapter is a patch in the model's registry (``LoraAdapter``, kind ``lora``), not peft modules swapped into the
model: injection renames the model's own parameters (``q_proj.weight`` → ``q_proj.base_layer.weight``), which the
contract's declared parameters, checksums and plain saves rely on. EasyEdit does not merge either (it returns the
peft model), so the model's weights are never touched; the update is applied by forward hooks the registry removes
with the patch. Like EasyEdit's sequential editing, later edits go on training the adapter the model carries; each
edit is one ordered entry (its A and B before and after), so undo is bit for bit. ``--save`` also writes the adapter
in peft's own format (``lora_adapter/adapter_config.json`` + ``adapter_model.safetensors``), which
``PeftModel.from_pretrained(base_model, DIR/lora_adapter)`` loads; ``load_peft_adapter`` reads such a folder back
(JSON and safetensors only, every field checked against the model).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import torch
import torch.nn.functional as F
from peft import LoraConfig
from peft.tuners.tuners_utils import check_target_module_exists
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import CheckpointError, ConfigError
from ..models.loaded import LoadedModel
from ..models.ops import resolve_layers, target_nll
from ..models.patches import PatchChange, register_patch
from ..models.teacher_forcing import build_target_batch
from ..requests import EditRequest
from ..tensor_limits import check_tensor_file
from .base import Editor, HyperParams, register_editor
from .memory.memory import HookedMemory, editing_memory

PEFT_FOLDER = "lora_adapter"  # inside a --save directory
PEFT_PREFIX = "base_model.model."  # peft's names of a causal LM's modules in adapter_model.safetensors
UNSUPPORTED_PEFT = {"use_dora": False, "bias": "none", "fan_in_fan_out": False, "modules_to_save": None,
                    "rank_pattern": {}, "alpha_pattern": {}, "layer_replication": None, "lora_bias": False}


@dataclass
class LoRAHyperParams(HyperParams):
    rank: int = 8
    lora_alpha: float = 32.0
    lora_dropout: float = 0.1
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])  # peft's names (suffixes)
    layers: list[int] = field(default_factory=list)  # blocks with adapters ([]: every block); negative from the last
    use_rslora: bool = False  # scale α/√r instead of α/r
    num_steps: int = 70  # passes over the requests
    train_batch_size: int = 1  # requests per optimiser step (EasyEdit's batch_size)
    lr: float = 5e-3
    weight_decay: float = 0.0

    def validate(self) -> None:
        if self.rank < 1 or self.lora_alpha <= 0:
            raise ConfigError(f"fields 'rank' (≥1, got {self.rank}) and 'lora_alpha' (>0, got {self.lora_alpha}) "
                              "are out of range")
        if not 0 <= self.lora_dropout < 1:
            raise ConfigError(f"field 'lora_dropout' must be in [0, 1), got {self.lora_dropout}")
        if not self.target_modules or not all(isinstance(t, str) and t for t in self.target_modules):
            raise ConfigError("field 'target_modules' must name at least one module, e.g. [q_proj, v_proj]")
        if self.num_steps < 1 or self.train_batch_size < 1 or self.lr <= 0 or self.weight_decay < 0:
            raise ConfigError("fields 'num_steps' and 'train_batch_size' (≥1), 'lr' (>0), 'weight_decay' (≥0) "
                              "are out of range")


def _scaling(signature: dict) -> float:
    r = signature["r"]
    return signature["lora_alpha"] / (math.sqrt(r) if signature["use_rslora"] else r)


@register_patch
class LoraAdapter(HookedMemory):
    """A and B of every adapted module (float32), applied by forward hooks: ``values[f"{module}.lora_A.weight"]``
    (r, d_in) and ``values[f"{module}.lora_B.weight"]`` (d_out, r). ``signature``: r, lora_alpha, use_rslora and
    the adapted modules' names."""

    kind = "lora"
    key = "lora"

    def __init__(self, signature: dict) -> None:
        super().__init__(signature)
        self.training: Optional[dict[str, torch.Tensor]] = None  # the A and B being trained, while an edit trains
        self.dropout = 0.0

    @classmethod
    def initial(cls, loaded: LoadedModel, signature: dict, seed: int) -> "LoraAdapter":
        """A Kaiming-uniform (as nn.Linear and peft's default init), B zero: the model computes as before."""
        adapter, generator = cls(signature), torch.Generator().manual_seed(seed)
        for name in signature["modules"]:
            d_in, d_out = _in_out(loaded.model.get_submodule(name))
            a = torch.empty(signature["r"], d_in)
            nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=generator)
            adapter.values[f"{name}.lora_A.weight"] = a.to(loaded.device)
            adapter.values[f"{name}.lora_B.weight"] = torch.zeros(d_out, signature["r"], device=loaded.device)
        return adapter

    def register_hooks(self, model: nn.Module) -> Iterator:
        for name in self.signature["modules"]:
            yield model.get_submodule(name).register_forward_hook(self._hook(name))

    def _hook(self, name: str):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
            weights = self.training if self.training is not None else self.values
            a, b = weights[f"{name}.lora_A.weight"], weights[f"{name}.lora_B.weight"]
            x = args[0].to(a.dtype)
            if self.training is not None and self.dropout:
                x = F.dropout(x, self.dropout, training=True)
            return output + (_scaling(self.signature) * (x @ a.T @ b.T)).to(output.dtype)
        return hook

    # ---- peft's format --------------------------------------------------------------------------------------
    def peft_config(self, base_model: str) -> LoraConfig:
        sig = self.signature
        return LoraConfig(r=sig["r"], lora_alpha=sig["lora_alpha"], use_rslora=sig["use_rslora"],
                          target_modules=list(self.signature["modules"]), task_type="CAUSAL_LM",
                          base_model_name_or_path=base_model)

    def export(self, directory: Path, base_model: str) -> None:
        """``directory/lora_adapter/`` as peft writes an adapter: adapter_config.json and adapter_model.safetensors."""
        folder = Path(directory) / PEFT_FOLDER
        self.peft_config(base_model).save_pretrained(str(folder))
        tensors = {PEFT_PREFIX + n: t.detach().to("cpu").contiguous() for n, t in self.state_dict().items()}
        save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})

    @classmethod
    def empty_for(cls, loaded: LoadedModel, config: dict[str, Any]) -> "LoraAdapter":
        signature = checked_signature(loaded, (config or {}).get("signature"), "saved LoRA adapter")
        return cls.initial(loaded, signature, seed=0)  # a template: the saved A and B replace its values


def _in_out(module: nn.Module) -> tuple[int, int]:
    if not isinstance(module, nn.Linear):
        raise ConfigError(f"LoRA adapters go on linear layers here; {type(module).__name__} is not one")
    return module.in_features, module.out_features


def checked_signature(loaded: LoadedModel, signature: Any, what: str) -> dict:
    """A saved adapter's settings, checked against ``loaded``: rank and alpha sane, every module a linear layer of
    the model with room for the rank; else a CheckpointError naming the field."""
    if not isinstance(signature, dict) or set(signature) != {"r", "lora_alpha", "use_rslora", "modules"}:
        raise CheckpointError(f"{what}: expected settings r, lora_alpha, use_rslora and modules, "
                              f"got {signature!r:.200}")
    r, alpha, modules = signature["r"], signature["lora_alpha"], signature["modules"]
    number = isinstance(alpha, (int, float)) and not isinstance(alpha, bool) and math.isfinite(alpha)
    if isinstance(r, bool) or not isinstance(r, int) or r < 1 or not number or alpha <= 0 \
            or not isinstance(signature["use_rslora"], bool):
        raise CheckpointError(f"{what}: r must be a whole number ≥ 1 and lora_alpha a positive number (got r={r!r}, "
                              f"lora_alpha={alpha!r})")
    if not isinstance(modules, list) or not modules or not all(isinstance(m, str) for m in modules):
        raise CheckpointError(f"{what}: no adapted modules listed ({modules!r:.200})")
    for name in modules:
        try:
            d_in, d_out = _in_out(loaded.model.get_submodule(name))
        except (AttributeError, ConfigError) as err:
            raise CheckpointError(f"{what}: module {name!r} is not a linear layer of model {loaded.name!r} "
                                  f"({err})") from None
        if r > min(d_in, d_out):
            raise CheckpointError(f"{what}: rank {r} exceeds module {name!r}'s {d_in}×{d_out}")
    return {"r": r, "lora_alpha": float(alpha), "use_rslora": signature["use_rslora"], "modules": list(modules)}


def adapted_modules(loaded: LoadedModel, config: LoraConfig) -> list[str]:
    """The model's linear modules peft would adapt under ``config``."""
    return [name for name, module in loaded.model.named_modules()
            if isinstance(module, nn.Linear) and check_target_module_exists(config, name)]


def load_peft_adapter(loaded: LoadedModel, folder: str | Path) -> LoraAdapter:
    """A peft LoRA adapter folder (adapter_config.json, adapter_model.safetensors) as a patch for ``loaded``, not yet
    attached (``loaded.patches.attach``). JSON and safetensors only; the settings are checked against the model and
    the features this patch does not compute (DoRA, biases, rank patterns...) refused by name."""
    folder = Path(folder)
    try:
        raw = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{folder}: cannot read adapter_config.json ({type(err).__name__}: {err})") from None
    if not isinstance(raw, dict) or raw.get("peft_type") != "LORA":
        kind = raw.get("peft_type") if isinstance(raw, dict) else type(raw).__name__
        raise CheckpointError(f"{folder}/adapter_config.json: not a peft LoRA adapter (peft_type {kind!r})")
    base = raw.get("base_model_name_or_path")
    if base not in (None, loaded.name):
        raise CheckpointError(f"{folder}: the adapter was trained on {base!r}, not on {loaded.name!r}; load it on "
                              "that model")
    odd = [k for k, default in UNSUPPORTED_PEFT.items() if raw.get(k, default) not in (default, None, {}, False)]
    if odd:
        raise CheckpointError(f"{folder}/adapter_config.json: {odd} are not supported by lightning-edit's LoRA patch")
    try:
        config = LoraConfig(r=raw.get("r"), lora_alpha=raw.get("lora_alpha"), target_modules=raw.get("target_modules"),
                            layers_to_transform=raw.get("layers_to_transform"),
                            layers_pattern=raw.get("layers_pattern"),
                            use_rslora=bool(raw.get("use_rslora", False)))
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{folder}/adapter_config.json: {err}") from None
    signature = checked_signature(loaded, {"r": raw.get("r"), "lora_alpha": raw.get("lora_alpha"), "use_rslora":
                                           config.use_rslora, "modules": adapted_modules(loaded, config)}, str(folder))
    path = folder / "adapter_model.safetensors"
    check_tensor_file(path, f"LoRA adapter {folder}", 4 * len(signature["modules"]))
    state = {k.removeprefix(PEFT_PREFIX): v for k, v in load_file(str(path), device=str(loaded.device)).items()}
    adapter = LoraAdapter.initial(loaded, signature, seed=0)
    if set(state) != set(adapter.values):
        odd = sorted(set(state) ^ set(adapter.values))[:3]
        raise CheckpointError(f"{path}: tensors {odd} missing or extra for the modules its config adapts")
    template, adapter.values = adapter.values, {k: v.float() for k, v in state.items()}
    adapter.check_values(template)
    adapter._saved = True
    return adapter


@register_editor
class LoRAEditor(Editor):
    name = "lora"
    HParams = LoRAHyperParams
    edits_weights_only = False  # the adapter is a patch: a plain transformers load does not see it

    def signature(self, loaded: LoadedModel) -> dict:
        hp = self.hparams
        layers = resolve_layers(hp.layers, loaded.layout.num_layers(loaded.model)) if hp.layers else None
        config = LoraConfig(r=hp.rank, lora_alpha=hp.lora_alpha, target_modules=list(hp.target_modules),
                            layers_to_transform=layers)
        modules = adapted_modules(loaded, config)
        if not modules:
            raise ConfigError(f"lora: fields 'target_modules' {hp.target_modules} and 'layers' {hp.layers} match no "
                              f"linear module of {loaded.name}; name modules it has (e.g. q_proj, v_proj)")
        return checked_signature(loaded, {"r": hp.rank, "lora_alpha": hp.lora_alpha, "use_rslora": hp.use_rslora,
                                          "modules": modules}, "lora")

    def touched_parameters(self, loaded: LoadedModel, requests: Sequence[EditRequest]) -> list[str]:
        self.signature(loaded)  # settings checked before any work
        return []  # the model's own weights are never written

    def _apply(self, loaded: LoadedModel, requests: Sequence[EditRequest]) -> list[PatchChange]:
        signature = self.signature(loaded)
        with editing_memory(loaded, LoraAdapter.key, lambda: LoraAdapter.initial(loaded, signature, self.hparams.seed),
                            signature) as session:
            self.train(loaded, session.container, requests)
        return [session.change]

    def train(self, loaded: LoadedModel, adapter: LoraAdapter, requests: Sequence[EditRequest]) -> None:
        """Adam on A and B for ``num_steps`` passes over the requests, the model frozen; the result replaces the
        adapter's values (new tensors: the registry's record of the state before stays intact)."""
        hp = self.hparams
        params = {n: t.detach().clone().requires_grad_(True) for n, t in adapter.values.items()}
        opt = torch.optim.Adam(params.values(), lr=hp.lr, weight_decay=hp.weight_decay)
        chunks = [requests[i:i + hp.train_batch_size] for i in range(0, len(requests), hp.train_batch_size)]
        batches = [build_target_batch(loaded, [r.prompt for r in c], [r.target_new for r in c]) for c in chunks]
        adapter.training, adapter.dropout = params, hp.lora_dropout
        try:
            with torch.random.fork_rng(devices=[loaded.device] if loaded.device.type == "cuda" else []):
                torch.manual_seed(hp.seed)  # the dropout masks
                for _ in range(hp.num_steps):
                    for batch in batches:
                        loss = target_nll(loaded.model(**batch.model_inputs()).logits, batch.labels)
                        if not torch.isfinite(loss):
                            raise FloatingPointError(f"LoRA training loss became {loss.item()}")
                        # gradients of the adapter only: the model's own weights get no .grad
                        for p, g in zip(params.values(), torch.autograd.grad(loss, list(params.values())), strict=True):
                            p.grad = g
                        opt.step()
        finally:
            adapter.training = None
        adapter.load_state({**adapter.values, **{n: p.detach().clone() for n, p in params.items()}})
