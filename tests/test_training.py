"""train.py: config resolution, a tiny training run with export and resume, DDP on CPU (2 processes, gloo),
DeepSpeed config validation and construction / refusal."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import require_data, save_tiny
from lightning_edit.checkpoints import read_manifest
from lightning_edit.errors import ConfigError
from lightning_edit.training.cli import build_parser, resolve_config, resolve_run, run
from lightning_edit.training.strategies import DEEPSPEED_CONFIGS, build_strategy, validate_deepspeed_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, tokenizer) -> Path:
    """A tiny llama saved as a local transformers directory (what `train.py METHOD /path` loads)."""
    require_data("zsre/zsre_mend_train-1k.json")
    return save_tiny("llama", tokenizer, tmp_path_factory.mktemp("tiny-llama"))


def tiny_args(method: str, model: Path, tmp: Path, *extra: str) -> list[str]:
    return [method, str(model), "--max-steps", "2", "--n-train", "6", "--n-val", "2", "--quiet",
            "--set", "training.val_check_interval=2", "--set", "training.limit_val_batches=2",
            "--output", str(tmp / "editor"), "--run-dir", str(tmp / "run"), *extra]


def test_resolve_config_merges_sections_and_overrides():
    extra = {"training": {"lr": 0.5}}  # the hparams/training sections of a --config file
    cfg = resolve_config("mend", "smollm2-135m", "llama", extra, [("training.max_steps", 7), ("rank", 32)])
    assert cfg["rank"] == 32 and cfg["training"]["max_steps"] == 7 and cfg["training"]["lr"] == 0.5
    assert cfg["training"]["c_edit"] == 0.1  # untouched keys of the section survive a partial override
    with pytest.raises(ConfigError, match="not a trainable method"):
        resolve_config("no-such-method", "smollm2-135m", "llama", None, [])
    from lightning_edit.training.registry import module_class

    with pytest.raises(ConfigError, match="need no training"):
        module_class("rome")


def test_parser_takes_method_and_model_positionally():
    args = build_parser().parse_args(["serac", "smollm2-135m", "--max-steps", "5", "--output", "x", "--set", "training.lr=1e-3"])
    assert (args.method, args.model, args.max_steps, args.output) == ("serac", "smollm2-135m", 5, "x")
    assert args.overrides == [("training.lr", "1e-3")]  # text until it meets its field:
    config = resolve_run(args)
    assert config.training.lr == 1e-3 and isinstance(config.training.lr, float) and config.training.max_steps == 5


@pytest.mark.parametrize("method", ["mend", "malmen", "ke", "serac"])
def test_tiny_training_run_exports_and_resumes(method, tiny_dir, tmp_path):
    extra = ("--set", "scope_layer=1", "--set", "lora_layers=[-2, -1]") if method == "serac" else ()
    result = run(build_parser().parse_args(tiny_args(method, tiny_dir, tmp_path, *extra)))
    assert result["steps"] == 2
    assert {"val/edit_success", "val/locality", "val/drawdown", "val/rephrase_success"} <= set(result["validation"])
    manifest = read_manifest(tmp_path / "editor")
    assert manifest["method"] == method and manifest["training"]["steps"] == 2
    card = (tmp_path / "editor" / "README.md").read_text()  # the model card, with the recorded validation scores
    assert f"- {method}\n" in card and "| Training steps | 2 |" in card and "| `val/edit_success` |" in card
    run_dir = tmp_path / "run"
    assert (run_dir / "checkpoints" / "last.ckpt").exists()
    assert list((run_dir / "csv").glob("version_*/metrics.csv"))
    assert list((run_dir / "tensorboard").glob("version_*/events.out.tfevents.*"))
    if method == "mend":  # resume: two more steps from last.ckpt
        first_seconds = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["lightning_edit_train_seconds"]
        # the resumed run exports into a new folder: a trained editor is never overwritten (--output must be new)
        resumed = run(build_parser().parse_args(tiny_args(method, tiny_dir, tmp_path, "--max-steps", "4", "--ckpt-path",
                                                          str(run_dir / "checkpoints" / "last.ckpt"),
                                                          "--output", str(tmp_path / "editor-resumed"))))
        assert resumed["steps"] == 4
        training = read_manifest(tmp_path / "editor-resumed")["training"]
        assert training["resumed_from"].endswith("last.ckpt")
        # the earlier run's time carried over (not compared with "seconds", which counts the fit's set-up too)
        assert training["seconds_including_resumed_runs"] > first_seconds > 0 and training["seconds"] > 0


def test_network_exported_as_training_ends(tiny_dir, tmp_path, monkeypatch):
    """The saved network is the state gathered in ``on_train_end``, while the strategy still holds it (after ``fit``
    Lightning has moved the module to the CPU, where DeepSpeed's gather fails), and it is gathered once."""
    from safetensors.torch import load_file

    from lightning_edit.training import export

    calls, inside = [], []
    real_gather, real_hook = export.full_state_dict, export.ExportAtTrainEnd.on_train_end

    def gather(module, strategy=None):
        calls.append(bool(inside))
        return real_gather(module, strategy)

    def hook(self, trainer, pl_module):
        inside.append(True)
        try:
            real_hook(self, trainer, pl_module)
        finally:
            inside.pop()

    monkeypatch.setattr(export, "full_state_dict", gather)
    monkeypatch.setattr(export.ExportAtTrainEnd, "on_train_end", hook)
    run(build_parser().parse_args(tiny_args("mend", tiny_dir, tmp_path)))
    assert calls == [True]
    saved = {}
    for f in (tmp_path / "editor").glob("*.safetensors"):
        saved.update(load_file(str(f)))
    assert saved and all(torch.isfinite(t).all() for t in saved.values() if t.is_floating_point())


def test_ddp_two_processes_on_cpu(tiny_dir, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(ROOT / "train.py"), *tiny_args("mend", tiny_dir, tmp_path, "--strategy", "ddp", "--devices", "2",
                                                               "--accelerator", "cpu")]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = read_manifest(tmp_path / "editor")
    assert manifest["training"]["world_size"] == 2 and manifest["training"]["strategy"] == "ddp"
    assert "val/edit_success" in manifest["validation_metrics"]


@pytest.mark.parametrize("name,stage", [("deepspeed_stage_2", 2), ("deepspeed_stage_3", 3)])
def test_deepspeed_configs_validate(name, stage):
    cfg = validate_deepspeed_config(DEEPSPEED_CONFIGS[name], stage)
    assert cfg["zero_optimization"]["stage"] == stage


@pytest.mark.parametrize("change,message", [
    (lambda c: c["zero_optimization"].update(stage=3), "stage"),
    (lambda c: c.update(train_micro_batch_size_per_gpu=0), "train_micro_batch_size_per_gpu"),
    (lambda c: c.pop("zero_optimization"), "zero_optimization"),
    (lambda c: c.update(optimizer={"type": "Adam"}), "optimizer"),
    (lambda c: c.update(bf16={"enabled": True}, fp16={"enabled": True}), "bf16"),
    (lambda c: c.update(bf16={"enabled": False}), "precision comes from the Trainer"),
    (lambda c: c.update(gradient_accumulation_steps=1), "accumulate_grad_batches"),
    (lambda c: c.update(train_batch_size=8), "train_batch_size"),
    (lambda c: c["zero_optimization"].update(stage3_max_live_parameters=10), "stage3_"),
])
def test_broken_deepspeed_configs_refused(change, message):
    cfg = json.loads(DEEPSPEED_CONFIGS["deepspeed_stage_2"].read_text())
    change(cfg)
    with pytest.raises(ConfigError, match=message):
        validate_deepspeed_config(cfg, 2)


def test_deepspeed_refuses_cpu_only_machine_clearly():
    with pytest.raises(ConfigError, match="needs CUDA GPUs"):
        build_strategy("deepspeed_stage_2", accelerator="cpu")
    with pytest.raises(ConfigError, match="needs CUDA GPUs"):
        build_strategy("deepspeed_stage_3", accelerator="auto", cuda_available=False)
    with pytest.raises(ConfigError, match="not supported"):
        build_strategy("fsdp_magic")


def test_deepspeed_strategy_constructed_where_cuda_would_be():
    pytest.importorskip("deepspeed")
    from lightning.pytorch.strategies import DeepSpeedStrategy

    strategy = build_strategy("deepspeed_stage_3", accelerator="gpu", cuda_available=True)
    assert isinstance(strategy, DeepSpeedStrategy)
    assert strategy.config["zero_optimization"]["stage"] == 3


def test_train_cli_refuses_deepspeed_here_before_loading_a_model(capsys):
    from lightning_edit.training.cli import main

    code = main(["mend", "no-such-model", "--strategy", "deepspeed_stage_2", "--accelerator", "cpu"])
    assert code == 2
    assert "needs CUDA GPUs" in capsys.readouterr().err


# KE is left out: its LSTM has no bf16 kernel on the CPU (oneDNN); tests/test_gpu.py trains KE in bf16 on CUDA.
@pytest.mark.parametrize("method", ["mend", "malmen", "serac"])
def test_bf16_base_and_bf16_network_train_on_cpu(method, tiny_dir, tmp_path):
    """--dtype bfloat16 (frozen base) is recorded; a bf16 network (what DeepSpeed's bf16-mixed makes of it; here
    Lightning's bf16-true on CPU) trains through the modules' autocast and exports float32 weights."""
    extra = ("--set", "scope_layer=1", "--set", "lora_layers=[-2, -1]") if method == "serac" else ()
    run(build_parser().parse_args(tiny_args(method, tiny_dir, tmp_path, "--dtype", "bfloat16", "--set",
                                            "training.precision=bf16-true", *extra)))
    manifest = read_manifest(tmp_path / "editor")
    training = manifest["training"]
    assert training["base_dtype"] == "bfloat16" and training["config"]["base_dtype"] == "bfloat16"
    assert training["precision"] == "bf16-true"
    from safetensors.torch import load_file

    tensors = {}
    for f in (tmp_path / "editor").glob("*.safetensors"):
        tensors.update(load_file(str(f)))
    assert tensors and all(t.dtype == torch.float32 for t in tensors.values() if t.is_floating_point())
