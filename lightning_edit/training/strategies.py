"""Distributed strategies for train.py: DDP (runs on CPU with gloo) and DeepSpeed ZeRO stage 2/3 (CUDA only).

DeepSpeed configs live in ``configs/deepspeed/*.json``; ``validate_deepspeed_config`` checks the keys this
project relies on before Lightning ever sees them.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Union

import torch

from ..errors import ConfigError

CONFIG_ROOT = Path(__file__).resolve().parents[2] / "configs"
DEEPSPEED_CONFIGS = {"deepspeed_stage_2": CONFIG_ROOT / "deepspeed" / "stage2.json",
                     "deepspeed_stage_3": CONFIG_ROOT / "deepspeed" / "stage3.json"}
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
            raise ConfigError(f"DeepSpeed config {path} does not exist; see configs/deepspeed/ for stage2.json / stage3.json")
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
    _positive_int_or_auto(config, "train_micro_batch_size_per_gpu", source)
    _positive_int_or_auto(config, "gradient_accumulation_steps", source)
    clip = config.get("gradient_clipping", 0.0)
    if not isinstance(clip, (int, float)) or clip < 0:
        raise ConfigError(f"{source}: 'gradient_clipping' must be a number ≥ 0, got {clip!r}")
    for block in ("bf16", "fp16"):
        if block in config and not isinstance(config[block].get("enabled"), bool):
            raise ConfigError(f"{source}: '{block}.enabled' must be true or false")
    if config.get("bf16", {}).get("enabled") and config.get("fp16", {}).get("enabled"):
        raise ConfigError(f"{source}: enable at most one of bf16 and fp16")
    if "optimizer" in config:
        raise ConfigError(f"{source}: remove 'optimizer'; the LightningModule's configure_optimizers defines it")
    for key in ("reduce_bucket_size", "allgather_bucket_size", "stage3_prefetch_bucket_size",
                "stage3_param_persistence_threshold", "stage3_max_live_parameters"):
        if key in zero and (not isinstance(zero[key], (int, float)) or zero[key] <= 0):
            raise ConfigError(f"{source}: zero_optimization.{key} must be a positive number, got {zero[key]!r}")
    if stage == 2 and any(k.startswith("stage3_") for k in zero):
        raise ConfigError(f"{source}: stage3_* keys in a stage-2 config are ignored by DeepSpeed; remove them")
    return config


def build_strategy(name: Optional[str], accelerator: str = "auto", cuda_available: Optional[bool] = None) -> Any:
    """The Lightning strategy for ``--strategy``: a name or a configured Strategy object."""
    name = name or "auto"
    if name not in STRATEGIES:
        raise ConfigError(f"--strategy {name!r} is not supported; choose one of {', '.join(STRATEGIES)}")
    cuda = torch.cuda.is_available() if cuda_available is None else cuda_available
    if name == "auto":
        return "auto"
    if name == "ddp":
        from lightning.pytorch.strategies import DDPStrategy

        on_gpu = cuda and accelerator in ("gpu", "cuda", "auto")
        # gloo works on CPU; nccl only between GPUs
        return DDPStrategy(process_group_backend="nccl" if on_gpu else "gloo", find_unused_parameters=False)
    stage = 2 if name == "deepspeed_stage_2" else 3
    config = validate_deepspeed_config(DEEPSPEED_CONFIGS[name], stage)
    if accelerator == "cpu" or not cuda:
        raise ConfigError(f"--strategy {name} needs CUDA GPUs: Lightning's DeepSpeed strategy does not run on a CPU-only "
                          f"machine (this one has no CUDA device). Use --strategy ddp (runs on CPU with gloo) or auto, "
                          f"or run on a GPU machine with `pip install deepspeed`.")
    try:
        import deepspeed  # noqa: F401
    except ImportError as err:
        raise ConfigError(f"--strategy {name} needs the 'deepspeed' package: pip install deepspeed ({err})") from err
    from lightning.pytorch.strategies import DeepSpeedStrategy

    return DeepSpeedStrategy(config=config)
