"""What one `train.py` run is: the parser (jsonargparse, the Trainer's own arguments under ``--trainer.*``) and
the resolution of every setting into one plain, typed ``RunConfig`` — printed by ``--print_config``, saved as
``RUN_DIR/config.yaml`` and read back by ``--config`` — checked before any model is loaded.

Precedence, later wins: ``configs/<method>/default.yaml`` ← ``<family>.yaml`` ← ``<model>.yaml`` ← the
``hparams:``/``training:`` sections of ``--config`` ← ``--set KEY=VALUE`` ← the dedicated flags (``--lr``,
``--max-steps``...) ← ``--trainer.KEY`` for the Trainer settings the ``training:`` section also holds.
"""
from __future__ import annotations

import dataclasses
import inspect
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

from ..config import apply_overrides, deep_merge, layered_configs, load_yaml
from ..errors import ConfigError
from ..paths import CONFIG_ROOT, default_editors_root, default_runs_root

if TYPE_CHECKING:  # the settings live with the editors (their package imports torch): read when a run is resolved
    from ..editors.learned.settings import TrainingConfig

DTYPES = ("float32", "bfloat16", "float16")
# training-section keys that are Trainer arguments: an explicit --trainer.KEY overrides the section
TRAINER_FROM_TRAINING = ("max_steps", "val_check_interval", "limit_val_batches", "gradient_clip_val",
                         "accumulate_grad_batches", "log_every_n_steps", "precision")
# Trainer arguments the run needs as they are: validation edits take gradients of the base model
TRAINER_FIXED = {"inference_mode": False}
# Trainer arguments set from other keys of the run (training:, run_dir, quiet), so left out of the printed trainer:
# section; --trainer.KEY still overrides them. logger: null is CSV (+ TensorBoard) in run_dir; callbacks: null is
# checkpointing on val/score, the learning-rate monitor and the progress bar (a given list is added to those).
DERIVED_TRAINER_KEYS = (*TRAINER_FROM_TRAINING, "default_root_dir", "enable_progress_bar")


def build_parser():
    """The train.py parser; ``--config FILE`` reads a run configuration (what ``--print_config`` prints)."""
    from jsonargparse import ActionConfigFile, ArgumentParser
    from lightning.pytorch import Trainer

    from ..config import SetAction

    p = ArgumentParser(prog="train.py", description="Train a learnt knowledge editor (mend, malmen, ke, serac).",
                       env_prefix="LIGHTNING_EDIT_TRAIN", default_env=False)
    p.add_argument("method", type=str, help="mend, malmen, ke or serac")
    p.add_argument("model", type=str, help="registered model name (smollm2-135m, gpt-j, ...), hub id or local HF directory")
    p.add_argument("--config", action=ActionConfigFile,
                   help="a run configuration as --print_config prints it (RUN_DIR/config.yaml); later flags override it")
    p.add_argument("--hparams", type=Optional[dict], default=None,
                   help="method hyperparameters merged over configs/<method>/ (a mapping; usually from --config)")
    p.add_argument("--training", type=Optional[dict], default=None,
                   help="training settings merged over the training: section of configs/<method>/ (usually from --config)")
    p.add_argument("--set", dest="overrides", action=SetAction, default=[], metavar="KEY=VALUE",
                   help="override a hyperparameter (rank=256) or training setting (training.lr=3e-4); typed by its field")
    p.add_argument("--max-steps", type=Optional[int], default=None, help="optimizer steps (training.max_steps)")
    p.add_argument("--batch-size", type=Optional[int], default=None, help="edits per step (training.batch_size)")
    p.add_argument("--lr", type=Optional[float], default=None, help="learning rate (training.lr)")
    p.add_argument("--data", type=Optional[str], default=None, help="training dataset name or JSON (training.dataset)")
    p.add_argument("--val-data", type=Optional[str], default=None, help="validation dataset (training.val_dataset)")
    p.add_argument("--n-train", type=Optional[int], default=None, help="use only this many training records")
    p.add_argument("--n-val", type=Optional[int], default=None, help="validation records")
    p.add_argument("--num-threads", type=Optional[int], default=None, help="torch CPU threads per process")
    p.add_argument("--seed", type=Optional[int], default=None)
    p.add_argument("--data-dir", type=Optional[str], default=None,
                   help="benchmark data folder (default $LIGHTNING_EDIT_DATA, else ../shared/data beside a checkout)")
    p.add_argument("--output", type=Optional[str], default=None,
                   help="where the shareable editor goes (default checkpoints/editors/<method>-<model>)")
    p.add_argument("--run-dir", type=Optional[str], default=None,
                   help="logs, Lightning checkpoints and config.yaml (default runs/train/<method>-<model>)")
    p.add_argument("--ckpt-path", type=Optional[str], default=None, help="resume from this Lightning checkpoint")
    p.add_argument("--strategy", type=Optional[str], default=None, help="same as --trainer.strategy")
    p.add_argument("--devices", type=Optional[str], default=None, help="same as --trainer.devices")
    p.add_argument("--accelerator", type=Optional[str], default=None, help="same as --trainer.accelerator")
    p.add_argument("--dtype", type=str, default="float32", choices=list(DTYPES),
                   help="dtype of the frozen base model; the editor network's precision is training.precision")
    p.add_argument("--cache-dir", type=Optional[str], default=None, help="model cache (default $LIGHTNING_EDIT_CACHE)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_class_arguments(Trainer, "trainer", fail_untyped=False, instantiate=False,
                          skip={"model_registry"})
    return p


def resolve_config(method: str, model_name: str, family: Optional[str], extra: Optional[dict],
                   overrides: Sequence[tuple[str, Any]], config_root: Path = CONFIG_ROOT) -> dict:
    """default.yaml ← <family>.yaml ← <model>.yaml ← ``extra`` ← ``--set`` (``training`` merged key by key)."""
    folder = config_root / method
    if not (folder / "default.yaml").exists():
        raise ConfigError(f"no configs/{method}/default.yaml: {method!r} is not a trainable method (mend, malmen, ke, serac)")
    merged = layered_configs(folder, ("default", family, model_name))
    merged = apply_overrides(deep_merge(merged, extra), overrides)
    merged.setdefault("training", {})
    if not isinstance(merged["training"], dict):
        raise ConfigError(f"configs/{method}/: 'training' must be a section of keys, got {merged['training']!r}")
    return merged


@dataclass
class RunConfig:
    """Everything a run uses, as plain values (``to_dict`` is what --print_config prints and --config reads)."""

    method: str
    model: str
    hparams: dict
    training: TrainingConfig
    trainer: dict  # Trainer arguments but DERIVED_TRAINER_KEYS (``trainer_kwargs`` adds them)
    output: str
    run_dir: str
    dtype: str = "float32"
    ckpt_path: Optional[str] = None
    data_dir: Optional[str] = None
    cache_dir: Optional[str] = None
    quiet: bool = False
    explicit_trainer: dict = field(default_factory=dict)  # --trainer.* given by the user, as parsed

    def trainer_kwargs(self) -> dict:
        """Every Trainer argument but logger, callbacks and plugins/precision (cli.py builds those)."""
        t = self.training
        derived = {"max_steps": t.max_steps, "val_check_interval": min(t.val_check_interval, t.max_steps),
                   "limit_val_batches": t.limit_val_batches, "gradient_clip_val": t.gradient_clip_val,
                   "accumulate_grad_batches": t.accumulate_grad_batches, "log_every_n_steps": t.log_every_n_steps,
                   "default_root_dir": self.run_dir, "enable_progress_bar": not self.quiet}
        derived.update({k: v for k, v in self.explicit_trainer.items() if k in derived})
        out = {**self.trainer, **derived}
        for key in ("logger", "callbacks", "precision", "plugins"):
            out.pop(key, None)
        return out

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "explicit_trainer"}
        out["training"] = self.training.to_dict()
        out["trainer"] = {k: _plain(v) for k, v in self.trainer.items()}
        return out


def _plain(value: Any) -> Any:
    """A parsed value as YAML-able data (jsonargparse Namespaces of class_path specs become mappings)."""
    if hasattr(value, "as_dict"):
        return value.as_dict()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _devices(value: Any) -> Any:
    """``"2"`` (how a flag arrives) as 2: one spelling in the printed config; "auto" and lists as they are."""
    if isinstance(value, str) and value.lstrip("-").isdigit():
        return int(value)
    return value


def explicit_trainer_args(trainer_ns: Any) -> dict:
    """The ``--trainer.*`` values that differ from the Trainer's own defaults (what the user set)."""
    from lightning.pytorch import Trainer

    defaults = {k: p.default for k, p in inspect.signature(Trainer.__init__).parameters.items()}
    given = dict(vars(trainer_ns)) if trainer_ns is not None else {}
    return {k: v for k, v in given.items() if k in defaults and v != defaults[k]}


# class_path specs a run configuration may name: Lightning's own classes (callbacks, loggers, strategies, plugins)
TRUSTED_CLASS_PREFIXES = ("lightning.pytorch.", "lightning.fabric.", "pytorch_lightning.", "lightning_fabric.")
_DOTTED_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+")


def check_config_files(argv: Sequence[str]) -> None:
    """Every ``--config FILE`` given, read before jsonargparse parses it: a ``class_path`` (or a dotted class name
    in the ``trainer:`` section) is imported by jsonargparse as soon as it is parsed, so a configuration someone
    shares may name only Lightning's own classes. What is typed on the command line is the user's own choice."""
    for path in _config_paths(argv):
        data = load_yaml(path, what="--config")
        for where, name in _named_classes(data, "", in_trainer=False):
            if not (isinstance(name, str) and name.startswith(TRUSTED_CLASS_PREFIXES)):
                raise ConfigError(f"--config {path}: '{where}' names {str(name)[:80]!r}, which would be imported to be "
                                  f"built; a run configuration may name only Lightning's classes "
                                  f"({', '.join(p + '*' for p in TRUSTED_CLASS_PREFIXES[:2])}); pass your own class on "
                                  "the command line (--trainer.callbacks+=...) if you trust it")


def _config_paths(argv: Sequence[str]) -> list[str]:
    paths = []
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            paths.append(argv[i + 1])
        elif arg.startswith("--config="):
            paths.append(arg.split("=", 1)[1])
    return paths


def _named_classes(value: Any, where: str, in_trainer: bool) -> list[tuple[str, Any]]:
    """(location, name) of every ``class_path`` in ``value``, and of dotted names in the trainer section."""
    found: list[tuple[str, Any]] = []
    if isinstance(value, dict):
        for key, item in value.items():
            here = f"{where}.{key}" if where else str(key)
            if key == "class_path":
                found.append((here, item))
            else:
                found += _named_classes(item, here, in_trainer or here in ("trainer", "strategy"))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found += _named_classes(item, f"{where}[{i}]", in_trainer)
    elif in_trainer and isinstance(value, str) and _DOTTED_NAME.fullmatch(value):
        found.append((where, value))
    return found


def check_resume_checkpoint(ckpt_path: Optional[str]) -> Optional[str]:
    """``--ckpt-path``: a local Lightning checkpoint file (or a DeepSpeed checkpoint folder) whose every pickle
    loads under ``torch.load(weights_only=True)``, checked before any model loads. A URL is refused: Lightning
    would unpickle what a server sends with ``weights_only=False``."""
    if ckpt_path is None:
        return None
    if "://" in ckpt_path:
        raise ConfigError(f"--ckpt-path {ckpt_path}: a URL is refused (a checkpoint from the network could run code "
                          "when unpickled); download it, check where it came from, and give the local file")
    path = Path(ckpt_path)
    if not path.exists():
        raise ConfigError(f"--ckpt-path {ckpt_path}: no such file; give the last.ckpt of an earlier run "
                          "(RUN_DIR/checkpoints/last.ckpt) or leave it out to start afresh")
    # a DeepSpeed checkpoint is a folder: DeepSpeed unpickles its *.pt files itself, so each is checked here
    files = sorted(p for p in path.rglob("*") if p.suffix in PICKLE_SUFFIXES) if path.is_dir() else [path]
    if not files or not all(f.is_file() for f in files):
        raise ConfigError(f"--ckpt-path {ckpt_path}: neither a checkpoint file nor a DeepSpeed checkpoint folder")
    for f in files:
        _check_weights_only(f, ckpt_path)
    return str(path)


PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


def _check_weights_only(file: Path, flag_value: str) -> None:
    """Refuse a checkpoint whose pickle names anything but tensors and plain values (the restricted unpickler of
    ``weights_only=True`` raises on the first other global, before running it)."""
    import pickle
    import zipfile

    import torch

    try:
        torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except (pickle.UnpicklingError, RuntimeError, zipfile.BadZipFile, EOFError, OSError, ValueError) as err:
        raise ConfigError(f"--ckpt-path {flag_value}: {file.name} is not a checkpoint that loads without running code "
                          f"({type(err).__name__}: {str(err).splitlines()[0][:160]}); only checkpoints of plain "
                          "tensors and values are resumed from") from None


def resolve_run(args: Any) -> RunConfig:
    """The run's complete configuration from parsed arguments; loads no model (refuses bad values first)."""
    from ..editors import get_editor_class
    from ..models.registry import family_of, resolve_model_name
    from .registry import TRAINING_CONFIGS, module_class
    from .strategies import check_strategy_name

    module_class(args.method)  # an untrainable method: refused first
    explicit = explicit_trainer_args(getattr(args, "trainer", None))
    for key, needed in TRAINER_FIXED.items():
        if key in explicit and explicit[key] != needed:
            raise ConfigError(f"--trainer.{key} must stay {needed}: validation edits need the base model's gradients")
    strategy = explicit.get("strategy", args.strategy or "auto")
    accelerator = explicit.get("accelerator", args.accelerator or "auto")
    check_strategy_name(strategy)  # before the model name is looked at: DeepSpeed on a CPU machine is named first
    model = resolve_model_name(args.model)
    extra = {**(args.hparams or {}), **({"training": args.training} if args.training else {})}
    merged = resolve_config(args.method, model, family_of(args.model), extra, args.overrides)
    training_values = merged.pop("training")
    flags = {"max_steps": args.max_steps, "batch_size": args.batch_size, "lr": args.lr, "dataset": args.data,
             "val_dataset": args.val_data, "n_train": args.n_train, "n_val": args.n_val, "seed": args.seed,
             "num_threads": args.num_threads}
    training_values.update({k: v for k, v in flags.items() if v is not None})
    training_values.update({k: explicit[k] for k in TRAINER_FROM_TRAINING if k in explicit})
    training = TRAINING_CONFIGS[args.method].from_dict(training_values, source=f"configs/{args.method}/ training")
    hp_cls = get_editor_class(args.method).HParams
    hparams = hp_cls.from_dict({**merged, "model_name": model}, source=f"configs/{args.method}/").to_dict()
    for key in ("model_name", "training"):
        hparams.pop(key, None)
    safe_model = model.replace("/", "_")
    run_dir = str(args.run_dir or default_runs_root() / "train" / f"{args.method}-{safe_model}")
    output = str(args.output or default_editors_root() / f"{args.method}-{safe_model}")
    trainer = {k: v for k, v in vars(args.trainer).items() if k not in DERIVED_TRAINER_KEYS} if args.trainer else {}
    trainer.update(TRAINER_FIXED, check_val_every_n_epoch=None, num_sanity_val_steps=0, use_distributed_sampler=True)
    trainer.update({k: v for k, v in explicit.items() if k not in DERIVED_TRAINER_KEYS})  # the user's win over ours
    trainer.update(accelerator=accelerator, strategy=strategy, devices=_devices(explicit.get("devices", args.devices or "auto")))
    return RunConfig(method=args.method, model=model, hparams=hparams, training=training, trainer=trainer,
                     output=output, run_dir=run_dir, dtype=args.dtype, ckpt_path=check_resume_checkpoint(args.ckpt_path),
                     data_dir=args.data_dir, cache_dir=args.cache_dir, quiet=bool(args.quiet), explicit_trainer=explicit)
