"""Distributed strategies for train.py: DDP (runs on CPU with gloo) and DeepSpeed ZeRO stage 2/3 (CUDA only).

DeepSpeed configs live in ``configs/deepspeed/*.json``; ``validate_deepspeed_config`` checks them before
Lightning sees them and refuses what Lightning's ``DeepSpeedStrategy`` refuses or sets itself:

* ``gradient_accumulation_steps``: Lightning raises a MisconfigurationException when the config holds it and
  fills it from ``Trainer(accumulate_grad_batches=...)`` (``training.accumulate_grad_batches``);
* ``train_batch_size``: DeepSpeed derives it (micro batch × accumulation × world size); a fixed value breaks
  as soon as the number of GPUs changes;
* ``bf16`` / ``fp16`` blocks: Lightning adds them from the Trainer's precision (``training.precision``; ``auto``
  is bf16-mixed on a GPU with bf16), and a block in the file (even ``enabled: false``) would silently win over it.

``train_micro_batch_size_per_gpu`` (throughput logging only; Lightning takes the data loader's batch size when
absent) and ``gradient_clipping`` (Lightning takes ``Trainer(gradient_clip_val)`` when absent) are accepted but
not shipped, so the training YAML stays the one place for them. See docs/guides/training.md.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any, Optional, Union

import torch

from ..errors import ConfigError, docs_link
from ..paths import CONFIG_ROOT, DEEPSPEED_CONFIG_ROOT  # noqa: F401  (CONFIG_ROOT: kept importable from here)

DEEPSPEED_CONFIGS = {"deepspeed_stage_2": DEEPSPEED_CONFIG_ROOT / "stage2.json",
                     "deepspeed_stage_3": DEEPSPEED_CONFIG_ROOT / "stage3.json"}
STRATEGIES = ("auto", "ddp", *DEEPSPEED_CONFIGS)


def _positive_int_or_auto(cfg: dict, key: str, source: str) -> None:
    value = cfg.get(key)
    if value == "auto":
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{source}: key '{key}' must be a positive integer or \"auto\", got {value!r}")


def validate_deepspeed_config(config: Union[str, Path, dict], stage: int) -> dict:
    """Check a DeepSpeed JSON config: ZeRO stage, batch keys, precision blocks; return it as a dict."""
    source = str(config) if not isinstance(config, dict) else "<deepspeed config>"
    if not isinstance(config, dict):
        path = Path(config)
        if not path.exists():
            raise ConfigError(f"DeepSpeed config {path} does not exist; see configs/deepspeed/ for stage2.json / stage3.json "
                              f"and {docs_link('guides/training.md', 'deepspeed')}")
        try:
            config = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ConfigError(f"{source} is not valid JSON: {err}") from err
    if not isinstance(config, dict):
        raise ConfigError(f"{source}: a DeepSpeed config is a JSON object")
    zero = config.get("zero_optimization")
    if not isinstance(zero, dict):
        raise ConfigError(f"{source}: key 'zero_optimization' (an object with 'stage') is missing")
    if zero.get("stage") != stage:
        raise ConfigError(f"{source}: zero_optimization.stage is {zero.get('stage')!r}, this strategy needs {stage}")
    if "gradient_accumulation_steps" in config:
        raise ConfigError(f"{source}: remove 'gradient_accumulation_steps': Lightning's DeepSpeedStrategy refuses it and sets "
                          f"it from the Trainer (training.accumulate_grad_batches, --set training.accumulate_grad_batches=N)")
    if "train_batch_size" in config:
        raise ConfigError(f"{source}: remove 'train_batch_size': DeepSpeed derives it from the micro batch, "
                          f"training.accumulate_grad_batches and the number of GPUs")
    if "train_micro_batch_size_per_gpu" in config:
        _positive_int_or_auto(config, "train_micro_batch_size_per_gpu", source)
    clip = config.get("gradient_clipping", 0.0)
    if not isinstance(clip, (int, float)) or isinstance(clip, bool) or clip < 0:
        raise ConfigError(f"{source}: 'gradient_clipping' must be a number ≥ 0, got {clip!r}")
    for block in ("bf16", "fp16"):
        if block in config:
            raise ConfigError(f"{source}: remove the '{block}' block: the precision comes from the Trainer "
                              f"(training.precision: auto, bf16-mixed, 16-mixed or 32-true; --set training.precision=...) "
                              f"and Lightning writes the block itself; a block in the file would silently override it")
    if "optimizer" in config:
        raise ConfigError(f"{source}: remove 'optimizer'; the LightningModule's configure_optimizers defines it")
    for key in ("reduce_bucket_size", "allgather_bucket_size", "stage3_prefetch_bucket_size",
                "stage3_param_persistence_threshold", "stage3_max_live_parameters"):
        if key in zero and (not isinstance(zero[key], (int, float)) or zero[key] <= 0):
            raise ConfigError(f"{source}: zero_optimization.{key} must be a positive number, got {zero[key]!r}")
    if stage == 2 and any(k.startswith("stage3_") for k in zero):
        raise ConfigError(f"{source}: stage3_* keys in a stage-2 config are ignored by DeepSpeed; remove them")
    return config


def deepspeed_available() -> bool:
    return importlib.util.find_spec("deepspeed") is not None


def resolve_precision(requested: Optional[str], strategy: Optional[str], accelerator: str = "auto",
                      cuda_available: Optional[bool] = None, bf16_supported: Optional[bool] = None) -> str:
    """Lightning's ``precision`` for the editor network: ``auto`` (the training YAML's default) is ``bf16-mixed``
    under DeepSpeed on a GPU that supports bf16 (DeepSpeed keeps fp32 master weights), else ``32-true``.
    Any other value is passed through. The frozen base model's dtype is ``--dtype``, independent of this."""
    if requested not in (None, "auto"):
        return str(requested)
    if not str(strategy or "auto").startswith("deepspeed") or accelerator == "cpu":
        return "32-true"
    cuda = torch.cuda.is_available() if cuda_available is None else cuda_available
    if not cuda:
        return "32-true"
    bf16 = (torch.cuda.is_bf16_supported() if bf16_supported is None else bf16_supported)
    return "bf16-mixed" if bf16 else "32-true"


def lightning_strategy_names() -> list[str]:
    """Lightning's registered strategy names, but its DeepSpeed ones (ours validate configs/deepspeed/)."""
    from lightning.pytorch.strategies import StrategyRegistry

    return sorted(n for n in StrategyRegistry.available_strategies() if not n.startswith("deepspeed"))


def check_strategy_name(name: Any) -> Any:
    """``name`` if train.py can run it: ours (auto, ddp, deepspeed_stage_2/3), fsdp and Lightning's other registered
    names, or a Strategy object; else a ConfigError listing them."""
    from lightning.pytorch.strategies import Strategy

    name = name or "auto"
    if isinstance(name, Strategy) or name in STRATEGIES or name in lightning_strategy_names():
        return name
    if hasattr(name, "class_path"):  # a parsed, not yet built, class_path spec
        return name
    raise ConfigError(f"--strategy {name!r} is not supported; choose one of {', '.join(STRATEGIES)}, fsdp, or another "
                      f"Lightning strategy: {', '.join(n for n in lightning_strategy_names() if n not in STRATEGIES)}")


def build_strategy(name: Optional[str], accelerator: str = "auto", cuda_available: Optional[bool] = None,
                   deepspeed_installed: Optional[bool] = None) -> Any:
    """The Lightning strategy for ``--strategy``: a name or a configured Strategy object.

    Called by train.py before any model is loaded, so a DeepSpeed run on a machine without CUDA or without the
    ``deepspeed`` package fails at once with a message naming the flag."""
    name = check_strategy_name(name)
    if not isinstance(name, str):
        return name  # a Strategy given as --trainer.strategy.class_path
    cuda = torch.cuda.is_available() if cuda_available is None else cuda_available
    if name not in STRATEGIES:  # fsdp and Lightning's other registered names: Lightning builds them
        return name
    if name == "auto":
        return "auto"
    if name == "ddp":
        from lightning.pytorch.strategies import DDPStrategy

        on_gpu = cuda and accelerator in ("gpu", "cuda", "auto")
        # gloo works on CPU; nccl only between GPUs
        return DDPStrategy(process_group_backend="nccl" if on_gpu else "gloo", find_unused_parameters=False)
    stage = 2 if name == "deepspeed_stage_2" else 3
    config = validate_deepspeed_config(DEEPSPEED_CONFIGS[name], stage)
    installed = deepspeed_available() if deepspeed_installed is None else deepspeed_installed
    if accelerator == "cpu" or not cuda:
        missing = " (the 'deepspeed' package is not installed here either)" if not installed else ""
        raise ConfigError(f"--strategy {name} needs CUDA GPUs: Lightning's DeepSpeed strategy does not run on a CPU-only "
                          f"machine (this one has no CUDA device){missing}. Use --strategy ddp (runs on CPU with gloo) or auto, "
                          f"or run on a GPU machine with `pip install deepspeed`.")
    if not installed:
        raise ConfigError(f"--strategy {name} needs the 'deepspeed' package, which is not installed: "
                          f"pip install deepspeed (offline: {docs_link('guides/gpu.md', 'carrying-deepspeed-to-a-machine-without-internet')}), "
                          f"or use --strategy ddp / auto")
    try:
        import deepspeed  # noqa: F401
    except Exception as err:  # installed but broken (e.g. a CUDA mismatch of its compiled ops)
        raise ConfigError(f"--strategy {name}: the 'deepspeed' package does not import ({type(err).__name__}: {err})") from err
    from lightning.pytorch.strategies import DeepSpeedStrategy

    return DeepSpeedStrategy(config=config)


def is_deepspeed(strategy: Any) -> bool:
    return type(strategy).__name__ == "DeepSpeedStrategy"


def zero_stage_3(strategy: Any) -> bool:
    return is_deepspeed(strategy) and bool(getattr(strategy, "zero_stage_3", False))


def _is_text_batch(data: Any) -> bool:
    from ..requests import EditRequest

    return isinstance(data, (list, tuple)) and all(isinstance(x, EditRequest) for x in data)


def trainer_precision_kwargs(precision: str, strategy: Any) -> dict:
    """``Trainer`` keyword arguments for ``precision``.

    Lightning's DeepSpeed and half-precision plugins cast every tensor of a batch (``convert_input``), walking
    into dataclasses and refusing frozen ones: our batches are lists of frozen ``EditRequest`` (text, tokenized
    inside the steps), so those plugins are given as instances whose ``convert_input`` leaves text batches alone.
    The network's own dtype is set by DeepSpeed/Lightning as usual; ``EditorModule.autocast`` bridges dtypes."""
    from lightning.pytorch.plugins.precision import DeepSpeedPrecision, HalfPrecision

    base = DeepSpeedPrecision if is_deepspeed(strategy) else HalfPrecision if precision in ("16-true", "bf16-true") else None
    if base is None:
        return {"precision": precision}

    class TextBatchPrecision(base):  # type: ignore[misc, valid-type]
        def convert_input(self, data: Any) -> Any:
            return data if _is_text_batch(data) else super().convert_input(data)

    TextBatchPrecision.__name__ = TextBatchPrecision.__qualname__ = f"TextBatch{base.__name__}"
    return {"plugins": [TextBatchPrecision(precision)]}
