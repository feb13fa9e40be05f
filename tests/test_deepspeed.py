"""The shipped DeepSpeed configs go through Lightning's own DeepSpeedStrategy config handling (the code path that
raised "Do not set gradient_accumulation_steps in the DeepSpeed config" on the GPU machine) and DeepSpeed's
config parser, without a GPU; precision selection; the deepspeed-missing error; the editor export helper."""
from __future__ import annotations

import json
import types

import pytest
import torch

from lightning_edit.errors import ConfigError
from lightning_edit.training.export import full_state_dict
from lightning_edit.training.strategies import (DEEPSPEED_CONFIGS, build_strategy, resolve_precision,
                                                validate_deepspeed_config)

STAGES = [("deepspeed_stage_2", 2), ("deepspeed_stage_3", 3)]


def _fake_lightning_module(accumulate: int = 2, clip: float = 100.0):
    """What ``DeepSpeedStrategy._format_batch_size_and_grad_accum_config`` reads from the LightningModule."""
    source = types.SimpleNamespace(is_defined=lambda: False)
    trainer = types.SimpleNamespace(accumulate_grad_batches=accumulate, gradient_clip_val=clip,
                                    fit_loop=types.SimpleNamespace(_data_source=source))
    return types.SimpleNamespace(trainer=trainer)


def _format_with_lightning(config: dict, precision: str = "32-true", accumulate: int = 2) -> dict:
    pytest.importorskip("deepspeed")
    from lightning.pytorch.plugins.precision import DeepSpeedPrecision
    from lightning.pytorch.strategies import DeepSpeedStrategy

    strategy = DeepSpeedStrategy(config=json.loads(json.dumps(config)))
    strategy.precision_plugin = DeepSpeedPrecision(precision)
    strategy._lightning_module = _fake_lightning_module(accumulate)
    strategy._format_config()  # what DeepSpeedStrategy.setup() runs before deepspeed.initialize
    return strategy.config


@pytest.mark.parametrize("name,stage", STAGES)
@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_shipped_configs_accepted_by_lightning_and_deepspeed(name, stage, precision):
    cfg = validate_deepspeed_config(DEEPSPEED_CONFIGS[name], stage)
    formatted = _format_with_lightning(cfg, precision, accumulate=3)
    assert formatted["gradient_accumulation_steps"] == 3  # filled from Trainer(accumulate_grad_batches)
    assert formatted["gradient_clipping"] == 100.0  # from Trainer(gradient_clip_val): the YAML's value
    assert formatted.get("bf16", {}).get("enabled", False) is (precision == "bf16-mixed")
    from deepspeed.runtime.config import DeepSpeedConfig

    parsed = DeepSpeedConfig(dict(formatted))  # DeepSpeed's own parser: batch sizes consistent, stage, bf16
    assert parsed.zero_optimization_stage == stage
    assert parsed.train_batch_size == formatted["train_micro_batch_size_per_gpu"] * 3
    assert parsed.bfloat16_config.enabled is (precision == "bf16-mixed")


def test_lightning_refuses_what_the_validator_refuses():
    """The old shipped config (gradient_accumulation_steps in the JSON) fails in Lightning exactly as on the GPU."""
    from lightning.pytorch.utilities.exceptions import MisconfigurationException

    old = {**json.loads(DEEPSPEED_CONFIGS["deepspeed_stage_2"].read_text()), "gradient_accumulation_steps": 1}
    with pytest.raises(MisconfigurationException, match="gradient_accumulation_steps"):
        _format_with_lightning(old)
    with pytest.raises(ConfigError, match="gradient_accumulation_steps"):
        validate_deepspeed_config(old, 2)


def test_precision_auto_is_bf16_only_under_deepspeed_on_a_bf16_gpu():
    assert resolve_precision("auto", "deepspeed_stage_2", "gpu", cuda_available=True, bf16_supported=True) == "bf16-mixed"
    assert resolve_precision("auto", "deepspeed_stage_3", "gpu", cuda_available=True, bf16_supported=False) == "32-true"
    assert resolve_precision("auto", "ddp", "gpu", cuda_available=True, bf16_supported=True) == "32-true"
    assert resolve_precision("auto", "deepspeed_stage_2", "cpu", cuda_available=False) == "32-true"
    assert resolve_precision(None, "auto") == "32-true"
    assert resolve_precision("16-mixed", "deepspeed_stage_2", "gpu", cuda_available=True) == "16-mixed"


def test_deepspeed_missing_is_named_before_any_model_loads():
    with pytest.raises(ConfigError, match=r"--strategy deepspeed_stage_3 needs the 'deepspeed' package"):
        build_strategy("deepspeed_stage_3", accelerator="gpu", cuda_available=True, deepspeed_installed=False)
    with pytest.raises(ConfigError, match="needs CUDA GPUs.*not installed here either"):
        build_strategy("deepspeed_stage_2", accelerator="auto", cuda_available=False, deepspeed_installed=False)


def test_train_cli_deepspeed_missing_fails_before_loading(monkeypatch, capsys):
    import lightning_edit.training.strategies as strategies
    from lightning_edit.training.cli import main

    monkeypatch.setattr(strategies, "deepspeed_available", lambda: False)
    monkeypatch.setattr(strategies.torch.cuda, "is_available", lambda: True)
    code = main(["mend", "no-such-model", "--strategy", "deepspeed_stage_2", "--accelerator", "gpu"])
    err = capsys.readouterr().err
    assert code == 2 and "--strategy deepspeed_stage_2 needs the 'deepspeed' package" in err
    assert "no-such-model" not in err  # the model was never looked up


def test_export_is_float32_and_plain_without_deepspeed():
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4)).to(torch.bfloat16)
    net.register_buffer("steps", torch.tensor(3))
    state = full_state_dict(net)
    assert set(state) == set(net.state_dict())
    assert all(v.dtype == torch.float32 for k, v in state.items() if k != "steps") and state["steps"].dtype == torch.int64
    assert torch.equal(state["0.weight"], net[0].weight.float())


def test_precision_plugins_leave_text_batches_alone():
    """Lightning's DeepSpeed/half precision plugins cast batches and refuse frozen dataclasses (our EditRequest)."""
    from lightning_edit.requests import EditRequest
    from lightning_edit.training.strategies import trainer_precision_kwargs

    batch = [EditRequest(prompt="The capital of France is", target_new="Rome", subject="France")]
    assert trainer_precision_kwargs("32-true", "auto") == {"precision": "32-true"}
    plugin = trainer_precision_kwargs("bf16-true", "auto")["plugins"][0]
    assert plugin.convert_input(batch) is batch
    assert plugin.convert_input(torch.ones(2)).dtype == torch.bfloat16
    pytest.importorskip("deepspeed")
    from lightning.pytorch.plugins.precision import DeepSpeedPrecision
    from lightning.pytorch.strategies import DeepSpeedStrategy

    ds = trainer_precision_kwargs("bf16-mixed", DeepSpeedStrategy(config={"zero_optimization": {"stage": 2}}))["plugins"][0]
    assert isinstance(ds, DeepSpeedPrecision) and ds.convert_input(batch) is batch


@pytest.mark.parametrize("method", ["mend", "malmen", "ke", "serac"])
def test_trained_networks_have_no_zero_dim_parameters(method, tokenizer):
    """DeepSpeed's engine broadcasts every parameter viewed as bytes at start, which a 0-dim bf16 tensor refuses
    ("self.dim() cannot be 0 to view BFloat16 as Byte", SERAC's scalars on an H200): every trained parameter has a shape."""
    from conftest import build_tiny
    from test_devices import LEARNED_ARCH

    from lightning_edit.editors import build_editor

    loaded = build_tiny("llama", tokenizer)
    network = build_editor(method, loaded, dict(LEARNED_ARCH[method])).build_network(loaded)
    scalars = [name for name, p in network.named_parameters() if p.dim() == 0]
    assert not scalars, f"{method}: 0-dim parameters {scalars}"


def test_serac_reads_checkpoints_with_scalar_classifier_parameters():
    from lightning_edit.editors.learned.serac.network import ScopeClassifier

    classifier = ScopeClassifier(hidden_dim=4, scope_dim=3)
    old = {k: (v.reshape(()) if k in ("log_scale", "bias") else v) for k, v in classifier.state_dict().items()}
    old["bias"] = torch.tensor(-7.0)
    classifier.load_state_dict(old)
    assert classifier.bias.shape == (1,) and float(classifier.bias) == -7.0

