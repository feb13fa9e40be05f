"""One typed configuration: ``--set`` typed by the field it lands in (shared by edit.py and train.py), the
``TrainingConfig`` checks, train.py's ``--print_config`` / ``--config`` round trip and ``--trainer.*``
passthrough (a fast_dev_run of a tiny model on the CPU)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union

import pytest
import torch
import yaml

from conftest import require_data, save_tiny
from lightning_edit.config import SetValue, checked_value, deep_merge, parse_override, typed_dataclass
from lightning_edit.errors import ConfigError
from lightning_edit.training.cli import build_parser, main, run
from lightning_edit.editors.learned.ke import KETraining
from lightning_edit.editors.learned.mend import MENDTraining
from lightning_edit.editors.learned.serac import SERACTraining


@dataclass
class Fields:
    rate: float = 1.0
    steps: int = 1
    flag: bool = False
    layers: list[int] = field(default_factory=list)
    name: str = ""
    maybe: Optional[int] = None
    batches: Union[int, float] = 1.0


@pytest.mark.parametrize("key, text, expected", [
    ("rate", "1e-3", 1e-3), ("rate", "2", 2.0), ("steps", "7", 7), ("flag", "true", True),
    ("layers", "[4, 5]", [4, 5]), ("name", "1e-3", "1e-3"), ("name", "yes", "yes"), ("maybe", "null", None),
    ("maybe", "3", 3), ("batches", "25", 25), ("batches", "0.5", 0.5),
])
def test_set_value_is_typed_by_its_field(key, text, expected):
    parsed_key, value = parse_override(f"{key}={text}")
    typed = typed_dataclass(Fields, {parsed_key: value}, "--set")
    got = getattr(typed, key)
    assert got == expected and type(got) is type(expected)


@pytest.mark.parametrize("key, text, message", [
    ("rate", "nan", "field 'rate' must be a finite number"), ("rate", "abc", "field 'rate' must be a number"),
    ("steps", "2.5", "field 'steps' must be a whole number"), ("flag", "'no'", "field 'flag' must be true or false"),
    ("layers", "[4, x]", "field 'layers[1]' must be a whole number"), ("batches", "many", "field 'batches' must be int or float"),
    ("nope", "1", "unknown key(s) ['nope'] for Fields"),
])
def test_bad_set_values_name_the_field_and_type(key, text, message):
    with pytest.raises(ConfigError) as err:
        typed_dataclass(Fields, dict([parse_override(f"{key}={text}")]), "--set")
    assert message in str(err.value)


def test_one_override_parser_and_checker_for_both_command_lines():
    import lightning_edit.cli as edit_cli
    import lightning_edit.editors.base as base

    assert edit_cli.parse_override is parse_override and base._checked_value is checked_value
    assert isinstance(parse_override("v_lr=1e-3")[1], SetValue)
    assert deep_merge({"a": 1, "t": {"x": 1, "y": 2}}, {"t": {"y": 3}}) == {"a": 1, "t": {"x": 1, "y": 3}}


def test_edit_py_set_values_typed_by_the_method_fields():
    from lightning_edit.cli import build_parser as edit_parser
    from lightning_edit.editors import get_editor_class

    args = edit_parser().parse_args(["--method", "rome", "--set", "v_lr=1e-3", "--set", "layers=[4]",
                                     "--set", "stats_text=null"])
    hp = get_editor_class("rome").HParams.for_model("rome", "smollm2-135m", "llama", dict(args.overrides))
    assert hp.v_lr == 1e-3 and type(hp.v_lr) is float and hp.layers == [4] and hp.stats_text is None


def test_training_config_types_and_checks_each_field():
    cfg = MENDTraining.from_dict({"lr": "1e-3", "limit_val_batches": 25, "gradient_clip_val": None})
    assert cfg.lr == 1e-3 and cfg.limit_val_batches == 25 and cfg.c_edit == 0.1
    for values, message in [({"batch_size": 0}, "field 'batch_size' must be a whole number ≥ 1"),
                            ({"precision": "fp8"}, "field 'precision' must be one of"),
                            ({"limit_val_batches": 1.5}, "field 'limit_val_batches'"),
                            ({"lr": -1.0}, "field 'lr' must be a positive number"),
                            ({"c_cls": 1.0}, "unknown key(s) ['c_cls'] for MENDTraining")]:
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
            MENDTraining.from_dict(values)
    with pytest.raises(ConfigError, match="field 'kl_margin' must be a number ≥ 0"):
        KETraining.from_dict({"kl_margin": -0.1})
    assert SERACTraining.from_dict({}).c_cls == 1.0


def _printed(capsys, *argv: str) -> dict:
    assert main(list(argv) + ["--print_config"]) == 0
    return yaml.safe_load(capsys.readouterr().out)


def test_print_config_is_complete_and_typed(capsys):
    cfg = _printed(capsys, "mend", "smollm2-135m", "--set", "training.lr=1e-3", "--set", "rank=64",
                   "--trainer.max_steps", "7", "--trainer.precision", "bf16-mixed", "--trainer.devices", "2",
                   "--trainer.strategy", "fsdp", "--trainer.logger", "false")
    assert {"method", "model", "hparams", "training", "trainer", "output", "run_dir", "dtype"} <= set(cfg)
    assert (cfg["method"], cfg["model"]) == ("mend", "smollm2-135m")
    assert cfg["hparams"]["rank"] == 64 and cfg["hparams"]["layers"] == [-3, -2, -1]
    assert cfg["training"]["lr"] == 1e-3 and cfg["training"]["max_steps"] == 7
    assert cfg["training"]["precision"] == "bf16-mixed" and cfg["training"]["c_loc"] == 1.0
    trainer = cfg["trainer"]
    assert (trainer["devices"], trainer["strategy"], trainer["logger"], trainer["inference_mode"]) == (2, "fsdp", False, False)
    assert "fast_dev_run" in trainer and "max_steps" not in trainer  # max_steps lives in training:


def test_logger_given_as_a_class_is_printed_and_built(capsys, tmp_path):
    argv = ["serac", "smollm2-135m", "--trainer.logger", "lightning.pytorch.loggers.CSVLogger",
            "--trainer.logger.save_dir", str(tmp_path)]
    spec = _printed(capsys, *argv)["trainer"]["logger"]
    assert spec["class_path"] == "lightning.pytorch.loggers.CSVLogger" and spec["init_args"]["save_dir"] == str(tmp_path)
    from lightning.pytorch.loggers import CSVLogger

    from lightning_edit.training.cli import _instantiated_trainer_args
    from lightning_edit.training.run_config import resolve_run

    args = build_parser().parse_args(argv)
    built = _instantiated_trainer_args(args, resolve_run(args))["logger"]
    assert isinstance(built, CSVLogger) and built.save_dir == str(tmp_path)


def test_config_file_round_trip_then_flags_override(capsys, tmp_path):
    first = _printed(capsys, "ke", "smollm2-135m", "--set", "training.kl_margin=0.005", "--trainer.devices", "2")
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(first))
    assert _printed(capsys, "--config", str(path)) == first
    again = _printed(capsys, "--config", str(path), "--max-steps", "3", "--set", "training.lr=0.01")
    assert again["training"]["max_steps"] == 3 and again["training"]["lr"] == 0.01
    assert again["training"]["kl_margin"] == 0.005 and again["trainer"]["devices"] == 2


@pytest.mark.parametrize("argv, message", [
    (["--set", "training.lr=abc"], "field 'lr' must be a number"),
    (["--set", "training.c_cls=1"], "unknown key(s) ['c_cls']"),
    (["--set", "training.batch_size=0"], "field 'batch_size' must be a whole number ≥ 1"),
    (["--set", "rank=big"], "field 'rank' must be a whole number"),
    (["--trainer.strategy", "fsdp_magic"], "--strategy 'fsdp_magic' is not supported"),
    (["--set", "training.precision=fp3"], "field 'precision' must be one of"),
])
def test_bad_settings_refused_by_name_without_traceback(argv, message, capsys):
    assert main(["mend", "smollm2-135m", *argv, "--print_config"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks Lightning's refusals on a machine without a GPU")
@pytest.mark.parametrize("argv, message", [
    (["--trainer.accelerator", "gpu"], "accelerator"),
    (["--trainer.strategy", "fsdp", "--trainer.accelerator", "cpu"], "`fsdp` requires a GPU accelerator"),
])
def test_trainer_refusal_is_a_config_error_before_the_model_loads(argv, message, monkeypatch, capsys):
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the Trainer settings were checked")

    monkeypatch.setattr("lightning_edit.models.load_model", refuse)
    assert main(["mend", "smollm2-135m", *argv, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the Trainer refused these settings") and message in err and "Traceback" not in err


def test_bad_trainer_flag_type_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["mend", "smollm2-135m", "--trainer.max_steps", "many"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "trainer.max_steps" in err and "Traceback" not in err


def test_trainer_passthrough_fast_dev_run_on_cpu(tokenizer, tmp_path):
    require_data("zsre/zsre_mend_train-1k.json")
    model_dir = save_tiny("llama", tokenizer, tmp_path / "tiny")
    run_dir = tmp_path / "run"
    result = run(build_parser().parse_args([
        "mend", str(model_dir), "--n-train", "4", "--n-val", "1", "--quiet", "--output", str(tmp_path / "editor"),
        "--run-dir", str(run_dir), "--trainer.fast_dev_run", "true", "--trainer.accelerator", "cpu",
        "--trainer.devices", "1", "--trainer.logger", "false", "--trainer.enable_model_summary", "false"]))
    assert result["steps"] == 1  # fast_dev_run: one training batch, whatever training.max_steps says
    assert "val/edit_success" in result["validation"]
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())  # the resolved config beside the run
    assert saved["trainer"]["fast_dev_run"] is True and saved["trainer"]["logger"] is False
    assert saved["training"]["max_steps"] == 600 and saved["method"] == "mend"
    assert not list(run_dir.glob("csv")) and (tmp_path / "editor").is_dir()  # --trainer.logger false: no logger
