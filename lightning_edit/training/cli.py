"""`python train.py METHOD MODEL`: train a learnt editor (MEND, KE, SERAC) and save a shareable checkpoint.

Everything but the method and model comes from ``configs/<method>/`` (``default.yaml``, then the family's
and the model's file; the ``training:`` section holds the training settings), overridable with
``--set KEY=VALUE`` (``--set training.lr=3e-4``, ``--set rank=256``) and the dedicated flags.
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml

from ..errors import ConfigError, LightningEditError
from ..paths import CONFIG_ROOT, default_editors_root, default_runs_root

DTYPES = ("float32", "bfloat16", "float16")


def _parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--set expects KEY=VALUE, got {text!r}")
    key, raw = text.split("=", 1)
    value = yaml.safe_load(raw)
    if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string; a number is meant
        try:
            value = float(value)
        except ValueError:
            pass
    return key.strip(), value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="train.py", description="Train a learnt knowledge editor (mend, ke, serac).")
    p.add_argument("method", help="mend, ke or serac")
    p.add_argument("model", help="registered model name (smollm2-135m, gpt-j, ...), hub id or local HF directory")
    p.add_argument("--config", default=None, help="an extra YAML file merged over configs/<method>/ (same keys)")
    p.add_argument("--set", dest="overrides", action="append", type=_parse_override, default=[], metavar="KEY=VALUE",
                   help="override a config key; training keys as training.KEY (repeatable)")
    p.add_argument("--max-steps", type=int, default=None, help="optimizer steps (training.max_steps)")
    p.add_argument("--batch-size", type=int, default=None, help="edits per step (training.batch_size)")
    p.add_argument("--lr", type=float, default=None, help="learning rate (training.lr)")
    p.add_argument("--data", default=None, help="training dataset name or JSON (training.dataset)")
    p.add_argument("--val-data", default=None, help="validation dataset (training.val_dataset; default: held out)")
    p.add_argument("--n-train", type=int, default=None, help="use only this many training records")
    p.add_argument("--n-val", type=int, default=None, help="validation records")
    p.add_argument("--data-dir", default=None, help="benchmark data folder (default $LIGHTNING_EDIT_DATA, else ../shared/data beside a checkout, else ~/.cache/lightning-edit/data)")
    p.add_argument("--output", default=None, help="where the shareable editor goes (default checkpoints/editors/<method>-<model>)")
    p.add_argument("--run-dir", default=None, help="logs and Lightning checkpoints (default runs/train/<method>-<model>)")
    p.add_argument("--ckpt-path", default=None, help="resume from this Lightning checkpoint (e.g. RUN_DIR/checkpoints/last.ckpt)")
    p.add_argument("--strategy", default="auto", help="auto, ddp, deepspeed_stage_2, deepspeed_stage_3")
    p.add_argument("--devices", default="auto", help="number of devices/processes (ddp on CPU: 2)")
    p.add_argument("--accelerator", default="auto", help="cpu, gpu or auto")
    p.add_argument("--num-threads", type=int, default=None, help="torch CPU threads per process (training.num_threads)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES),
                   help="dtype of the frozen base model (default float32); the editor network trains in float32, or "
                        "bf16-mixed under DeepSpeed (training.precision: auto)")
    p.add_argument("--cache-dir", default=None, help="model cache (default $LIGHTNING_EDIT_CACHE or checkpoints/)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def deep_merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in (extra or {}).items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def resolve_config(method: str, model_name: str, family: Optional[str], extra_file: Optional[str],
                   overrides: Sequence[tuple[str, Any]], config_root: Path = CONFIG_ROOT) -> dict:
    """default.yaml ← <family>.yaml ← <model>.yaml ← --config ← --set (``training`` merged key by key)."""
    folder = config_root / method
    if not (folder / "default.yaml").exists():
        raise ConfigError(f"no configs/{method}/default.yaml: {method!r} is not a trainable method (mend, ke, serac)")
    merged: dict = {}
    stems = ["default", family, model_name if "/" not in model_name else None]
    for stem in stems:
        if stem and (folder / f"{stem}.yaml").exists():
            merged = deep_merge(merged, yaml.safe_load((folder / f"{stem}.yaml").read_text()) or {})
    if extra_file:
        path = Path(extra_file)
        if not path.exists():
            raise ConfigError(f"--config {path} does not exist")
        merged = deep_merge(merged, yaml.safe_load(path.read_text()) or {})
    for key, value in overrides:
        target = merged
        parts = key.split(".")
        for part in parts[:-1]:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise ConfigError(f"--set {key}: '{part}' is not a section")
        target[parts[-1]] = value
    merged.setdefault("training", {})
    return merged


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        run(args)
        return 0
    except LightningEditError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _loggers(run_dir: Path) -> list:
    """CSV always; TensorBoard too when it is installed (a dependency, but a trimmed environment may lack it)."""
    import importlib.util

    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    loggers = [CSVLogger(str(run_dir), name="csv")]
    if importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX"):
        loggers.append(TensorBoardLogger(str(run_dir), name="tensorboard"))
    else:
        warnings.warn("tensorboard is not installed: logging to CSV only (pip install tensorboard)", stacklevel=2)
    return loggers


def run(args: argparse.Namespace) -> dict:
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, TQDMProgressBar
    from ..checkpoints import save_editor_checkpoint
    from ..data import EditDataModule
    from ..metrics import PeakMemoryMonitor
    from ..models import load_model
    from .modules import module_class
    from .export import full_state_dict
    from .strategies import build_strategy, resolve_precision, trainer_precision_kwargs

    cls = module_class(args.method)
    # refuses DeepSpeed on a CPU-only machine or without the deepspeed package, before loading anything
    strategy = build_strategy(args.strategy, args.accelerator)
    loaded = load_model(args.model, cache_dir=args.cache_dir, dtype=getattr(torch, args.dtype))
    config = resolve_config(args.method, args.model, loaded.layout.family, args.config, args.overrides)
    training = config.pop("training")
    flag_keys = {"max_steps": args.max_steps, "batch_size": args.batch_size, "lr": args.lr, "dataset": args.data,
                 "val_dataset": args.val_data, "n_train": args.n_train, "n_val": args.n_val, "seed": args.seed,
                 "num_threads": args.num_threads}
    training.update({k: v for k, v in flag_keys.items() if v is not None})
    training["precision"] = resolve_precision(training.get("precision", "auto"), args.strategy, args.accelerator)
    training["base_dtype"] = args.dtype  # recorded in the editor checkpoint's training config
    torch.set_num_threads(int(training.get("num_threads", 1)))
    L.seed_everything(int(training.get("seed", 0)), verbose=False)

    safe_model = loaded.name.replace("/", "_")
    run_dir = Path(args.run_dir or default_runs_root() / "train" / f"{args.method}-{safe_model}")
    output = Path(args.output or default_editors_root() / f"{args.method}-{safe_model}")
    module = cls(loaded.name, config, training, loaded=loaded)
    datamodule = EditDataModule(dataset=training.get("dataset", "zsre-train"), val_dataset=training.get("val_dataset"),
                                n_train=training.get("n_train"), n_val=int(training.get("n_val", 50)),
                                batch_size=int(training.get("batch_size", 1)), data_dir=args.data_dir,
                                seed=int(training.get("seed", 0)))
    max_steps = int(training.get("max_steps", 500))
    val_every = min(int(training.get("val_check_interval", 200)), max_steps)
    checkpoint_cb = ModelCheckpoint(dirpath=run_dir / "checkpoints", monitor="val/score", mode="max", save_top_k=1,
                                    save_last=True, filename="step{step}-score{val/score:.3f}", auto_insert_metric_name=False)
    callbacks = [checkpoint_cb, LearningRateMonitor(logging_interval="step")]
    if not args.quiet:
        callbacks.append(TQDMProgressBar(refresh_rate=10))
    trainer = L.Trainer(
        max_steps=max_steps, accelerator=args.accelerator, devices=args.devices, strategy=strategy,
        **trainer_precision_kwargs(training["precision"], strategy), default_root_dir=str(run_dir),
        logger=_loggers(run_dir),
        callbacks=callbacks, val_check_interval=val_every, check_val_every_n_epoch=None,
        limit_val_batches=training.get("limit_val_batches", 1.0), num_sanity_val_steps=0,
        gradient_clip_val=training.get("gradient_clip_val"), accumulate_grad_batches=int(training.get("accumulate_grad_batches", 1)),
        log_every_n_steps=int(training.get("log_every_n_steps", 10)), enable_progress_bar=not args.quiet,
        inference_mode=False,  # validation edits with MEND/KE need the base model's gradients
        use_distributed_sampler=True,
    )
    start = time.perf_counter()
    with PeakMemoryMonitor(interval=0.05) as memory:
        trainer.fit(module, datamodule=datamodule, ckpt_path=args.ckpt_path)
    seconds = time.perf_counter() - start
    # every rank takes part: under ZeRO-3 the network's weights are sharded and are gathered here
    network_state = full_state_dict(module.network, trainer.strategy)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    if trainer.global_step % val_every != 0 or not metrics:  # measure the exported weights themselves
        trainer.validate(module, datamodule=datamodule, verbose=False)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    result = {"method": args.method, "model": loaded.name, "steps": trainer.global_step, "train_seconds": round(seconds, 1), "peak_rss_mb": round(memory.peak_mb, 1),
              "validation": metrics, "run_dir": str(run_dir), "best_lightning_checkpoint": checkpoint_cb.best_model_path}
    if trainer.is_global_zero:
        module.network.eval()
        editor_config = {**module.editor.hparams.architecture(), "method": args.method}
        save_editor_checkpoint(
            output, method=args.method, state_dict=network_state, config=editor_config, loaded=loaded,
            training={"dataset": training.get("dataset"), "val_dataset": training.get("val_dataset"),
                      "n_train": len(datamodule.train_set) if datamodule.train_set else None,
                      "n_val": len(datamodule.val_set) if datamodule.val_set else None, "steps": trainer.global_step,
                      "seconds": round(seconds, 3), "seconds_including_resumed_runs": round(module.train_seconds(), 3), "peak_rss_mb": round(memory.peak_mb, 1), "strategy": args.strategy, "world_size": trainer.world_size,
                      "precision": training["precision"], "base_dtype": args.dtype,
                      "resumed_from": args.ckpt_path, "config": training},
            metrics=metrics)
        result["editor_checkpoint"] = str(output)
        print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    sys.exit(main())
