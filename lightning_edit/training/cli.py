"""`python train.py METHOD MODEL`: train a learnt editor (MEND, MALMEN, KE, SERAC) and save a shareable checkpoint.

Everything but the method and model comes from ``configs/<method>/`` (``default.yaml``, then the family's
and the model's file; the ``training:`` section holds the training settings, typed by the method's ``settings.py``),
overridable with ``--set KEY=VALUE`` (``--set training.lr=3e-4``, ``--set rank=256``), the dedicated flags and
``--trainer.KEY`` (any ``lightning.Trainer`` argument: devices, strategy incl. fsdp and our DeepSpeed ones,
precision, logger, max_steps...). ``--print_config`` prints the resolved configuration and exits; every run
saves it as ``RUN_DIR/config.yaml``, which ``--config`` reads back. See ``run_config.py``.
"""
from __future__ import annotations

import json
import logging
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml

from ..atomic import check_writable_directory
from ..errors import ConfigError, LightningEditError
from .run_config import RunConfig, build_parser, check_config_files, resolve_config, resolve_run  # noqa: F401  (resolve_config: public)

PRINT_CONFIG = "--print_config"


def main(argv: Optional[Sequence[str]] = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    argv = list(sys.argv[1:] if argv is None else argv)
    # jsonargparse's own --print_config would print the arguments as parsed; ours prints them resolved
    print_config = any(a == PRINT_CONFIG or a.startswith(PRINT_CONFIG + "=") for a in argv)
    argv = [a for a in argv if not (a == PRINT_CONFIG or a.startswith(PRINT_CONFIG + "="))]
    try:
        check_config_files(argv)  # before jsonargparse imports what a shared --config names
        args = build_parser().parse_args(argv)
        if print_config:
            print(config_yaml(resolve_run(args)), end="")
            return 0
        run(args)
        return 0
    except LightningEditError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def config_yaml(config: RunConfig) -> str:
    header = ("# train.py run configuration: python train.py --config THIS_FILE (later flags override it).\n"
              "# trainer: max_steps, val_check_interval, limit_val_batches, gradient_clip_val, accumulate_grad_batches,\n"
              "# log_every_n_steps and precision come from training:; default_root_dir is run_dir. logger: null is\n"
              "# CSV (+ TensorBoard) in run_dir; callbacks are added to checkpointing, LR monitor and progress bar.\n")
    return header + yaml.safe_dump(config.to_dict(), sort_keys=False, default_flow_style=False)


def save_config(config: RunConfig) -> Path:
    """``RUN_DIR/config.yaml``, written by the first process only."""
    from lightning.pytorch.utilities import rank_zero_only

    path = Path(config.run_dir) / "config.yaml"
    if rank_zero_only.rank == 0:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(config_yaml(config))
        except OSError as err:
            raise ConfigError(f"--run-dir {config.run_dir}: cannot write {path.name} there ({err.strerror or err})") from err
    return path


def _loggers(run_dir: str) -> list:
    """CSV always; TensorBoard too when it is installed (a dependency, but a trimmed environment may lack it)."""
    import importlib.util

    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    loggers = [CSVLogger(run_dir, name="csv")]
    if importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX"):
        loggers.append(TensorBoardLogger(run_dir, name="tensorboard"))
    else:
        warnings.warn("tensorboard is not installed: logging to CSV only (pip install tensorboard)", stacklevel=2)
    return loggers


def _instantiated_trainer_args(args: Any, config: RunConfig) -> dict:
    """The user's --trainer.* values with class_path specs (a logger, callbacks, a strategy) built."""
    if not any(hasattr(v, "class_path") or isinstance(v, list) for v in config.explicit_trainer.values()):
        return dict(config.explicit_trainer)
    built = build_parser().instantiate(args).trainer
    return {k: getattr(built, k) for k in config.explicit_trainer}


def build_trainer(args: Any, config: RunConfig, extra_callbacks: Sequence[Any] = ()):
    """The Trainer and its checkpoint callback; Lightning's refusals of the given settings become ConfigErrors."""
    import lightning as L
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, TQDMProgressBar
    from lightning.pytorch.utilities.exceptions import MisconfigurationException

    from .strategies import build_strategy, resolve_precision, trainer_precision_kwargs

    given = _instantiated_trainer_args(args, config)
    kwargs = config.trainer_kwargs()
    strategy_name = kwargs["strategy"]
    # refuses DeepSpeed on a CPU-only machine or without the deepspeed package, before loading anything
    strategy = build_strategy(given.get("strategy", strategy_name), kwargs["accelerator"])
    precision = resolve_precision(config.training.precision, strategy_name if isinstance(strategy_name, str) else None,
                                  kwargs["accelerator"])
    checkpoint_cb = ModelCheckpoint(dirpath=Path(config.run_dir) / "checkpoints", monitor="val/score", mode="max",
                                    save_top_k=1, save_last=True, filename="step{step}-score{val/score:.3f}",
                                    auto_insert_metric_name=False)
    logger = given["logger"] if "logger" in given else _loggers(config.run_dir)
    callbacks = [checkpoint_cb]
    if logger not in (False, None, []):  # Lightning refuses the monitor without a logger (--trainer.logger false)
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    if kwargs["enable_progress_bar"]:
        callbacks.append(TQDMProgressBar(refresh_rate=10))
    callbacks += list(given.get("callbacks") or []) + list(extra_callbacks)
    precision_kwargs = trainer_precision_kwargs(precision, strategy)
    plugins = list(precision_kwargs.pop("plugins", [])) + list(given.get("plugins") or [])
    kwargs.update(strategy=strategy, callbacks=callbacks, logger=logger, plugins=plugins or None, **precision_kwargs)
    try:
        trainer = L.Trainer(**kwargs)
    except (MisconfigurationException, ValueError, TypeError) as err:
        raise ConfigError(f"the Trainer refused these settings ({err}); check --trainer.*, --strategy, --devices, "
                          f"--accelerator and training.precision") from err
    return trainer, checkpoint_cb, precision


def run(args: Any) -> dict:
    import lightning as L
    import torch

    from ..checkpoints import save_editor_checkpoint
    from ..data import EditDataModule
    from ..metrics import PeakMemoryMonitor
    from ..models.registry import family_of
    from ..paths import CONFIG_ROOT
    from ..runner import Run, RunSpec
    from .export import ExportAtTrainEnd, full_state_dict
    from .registry import module_class

    config = resolve_run(args)
    # before anything loads or trains: an --output that cannot take a new editor fails now, not after training
    check_writable_directory(config.output, "--output")
    cls = module_class(config.method)
    export = ExportAtTrainEnd()
    trainer, checkpoint_cb, precision = build_trainer(args, config, extra_callbacks=[export])
    # the one runner: its preflight (after the strategy, which is named first), then the load
    run = Run(RunSpec(model=args.model, dtype=config.dtype, cache_dir=config.cache_dir, model_flag="MODEL"))
    training = config.training
    torch.set_num_threads(training.num_threads)
    L.seed_everything(training.seed, verbose=False)
    config_path = save_config(config)
    loaded = run.load()
    family = loaded.layout.family
    if family and family_of(args.model) is None and (CONFIG_ROOT / config.method / f"{family}.yaml").exists():
        logging.getLogger(__name__).warning("configs/%s/%s.yaml was not applied: a hub id's family is known only once "
                                            "loaded; pass its settings with --set or --config", config.method, family)
    module = cls(loaded.name, config.hparams, training, loaded=loaded)
    datamodule = EditDataModule(dataset=training.dataset, val_dataset=training.val_dataset, n_train=training.n_train,
                                n_val=training.n_val, batch_size=training.batch_size, data_dir=config.data_dir,
                                seed=training.seed)
    val_every = config.trainer_kwargs()["val_check_interval"]
    start = time.perf_counter()
    with PeakMemoryMonitor(interval=0.05) as memory:
        trainer.fit(module, datamodule=datamodule, ckpt_path=config.ckpt_path, weights_only=True)
    seconds = time.perf_counter() - start
    # Gathered as training ended (every rank took part; under ZeRO-3 the weights were sharded). A fit that ran no
    # training loop (resumed at max_steps) never reached on_train_end: no strategy holds the network any more.
    network_state = export.state if export.state is not None else full_state_dict(module.network, trainer.strategy)
    metrics = _validation_metrics(trainer, module, datamodule, val_every)
    strategy_name = config.trainer["strategy"] if isinstance(config.trainer["strategy"], str) else type(trainer.strategy).__name__
    result = {"method": config.method, "model": loaded.name, "steps": trainer.global_step,
              "train_seconds": round(seconds, 1), "peak_rss_mb": round(memory.peak_mb, 1), "validation": metrics,
              "run_dir": config.run_dir, "config": str(config_path), "best_lightning_checkpoint": checkpoint_cb.best_model_path}
    if trainer.is_global_zero:
        module.network.eval()
        editor_config = {**module.editor.hparams.architecture(), "method": config.method}
        save_editor_checkpoint(
            Path(config.output), method=config.method, state_dict=network_state, config=editor_config, loaded=loaded,
            training={**_data_record(datamodule, training), "steps": trainer.global_step, "seconds": round(seconds, 3),
                      "seconds_including_resumed_runs": round(module.train_seconds(), 3),
                      "peak_rss_mb": round(memory.peak_mb, 1), "strategy": strategy_name, "world_size": trainer.world_size,
                      "precision": precision, "base_dtype": config.dtype, "resumed_from": config.ckpt_path,
                      "config": {**training.to_dict(), "precision": precision, "base_dtype": config.dtype}},
            metrics=metrics, flag="--output")
        result["editor_checkpoint"] = str(config.output)
        print(json.dumps(result, indent=2))
    return result


def _validation_metrics(trainer: Any, module: Any, datamodule: Any, val_every: Any) -> dict:
    """The val/ metrics of the weights that are exported: validated again unless the last step was validated."""
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    if not isinstance(val_every, int) or trainer.global_step % val_every != 0 or not metrics:
        trainer.validate(module, datamodule=datamodule, verbose=False)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    return metrics


def _data_record(datamodule: Any, training: Any) -> dict:
    return {"dataset": training.dataset, "val_dataset": training.val_dataset,
            "n_train": len(datamodule.train_set) if datamodule.train_set else None,
            "n_val": len(datamodule.val_set) if datamodule.val_set else None}


if __name__ == "__main__":
    sys.exit(main())
