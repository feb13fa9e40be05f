"""Editing a model held in bfloat16 / float16: dtype names, --dtype, the API's device/fp16, and edits on a tiny
bfloat16 LLaMA (only the declared weights change, undo is bit-exact, the weights stay bfloat16)."""
from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch

from conftest import build_tiny
from lightning_edit import api
from lightning_edit.editors import build_editor
from lightning_edit.editors.base import add_update
from lightning_edit.errors import ConfigError
from lightning_edit.evaluation import evaluate_editing
from lightning_edit.models.loading import resolve_dtype
from lightning_edit.models.teacher_forcing import output_cache, score_targets
from lightning_edit.requests import EditRequest, PromptAnswer
import lightning_edit.models as models

REQUEST = EditRequest(prompt="The mother tongue of Danielle Darrieux", subject="Danielle Darrieux", target_new="English",
                      target_true="French", locality=(PromptAnswer("The sky is", "blue"),), case_id=0)


@pytest.fixture(scope="module")
def stats_text(tmp_path_factory):
    path = tmp_path_factory.mktemp("dtype_stats_text") / "text.txt"
    path.write_text("\n".join(f"Sentence {i}: a person named Alex {i} lives in the city of Paris and speaks French." for i in range(200)))
    return path


def bf16_llama(tokenizer):
    loaded = build_tiny("llama", tokenizer)
    with torch.no_grad():
        for p in loaded.model.parameters():  # outputs far from uniform, as a trained model's (see test_rome)
            if p.dim() == 2:
                p.mul_(10.0)
    loaded.model.to(torch.bfloat16)
    return loaded


def _locate(stats_text, tmp_path, **extra) -> dict:
    return dict(mom2_n_tokens=512, stats_text=str(stats_text), stats_dir=str(tmp_path), progress=False, context_prefixes=1,
                context_length=4, v_num_grad_steps=10, **extra)


EDITS = {
    "rome": lambda st, tmp: _locate(st, tmp, layers=[2]),
    "memit": lambda st, tmp: _locate(st, tmp, layers=[1, 2], mom2_update_weight=1.0),  # tiny statistics (test_memit)
    "ft-m": lambda st, tmp: {"layers": [2], "num_steps": 10, "lr": 1e-2},
    "kn": lambda st, tmp: {"layers": [2, 3], "steps": 4, "max_target_tokens": 1},
}


@pytest.mark.parametrize("method", list(EDITS))
def test_edit_of_a_bfloat16_model(method, tokenizer, stats_text, tmp_path):
    loaded = bf16_llama(tokenizer)
    before = {n: p.detach().clone() for n, p in loaded.model.named_parameters()}
    lp_before = score_targets(loaded, [REQUEST.prompt], [REQUEST.target_new])[0].mean_logprob
    editor = build_editor(method, loaded, EDITS[method](stats_text, tmp_path))
    delta = editor.edit(loaded, [REQUEST])
    after = {n: p.detach().clone() for n, p in loaded.model.named_parameters()}
    assert all(p.dtype == torch.bfloat16 for p in loaded.model.parameters())
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed and changed <= set(delta.weights_before), f"{method} changed undeclared weights {changed - set(delta.weights_before)}"
    assert all(t.dtype == torch.bfloat16 for t in delta.weights_after.values())
    assert all(torch.isfinite(p).all() for p in loaded.model.parameters())
    if method != "kn":  # KN's neuron edit moves the old answer away, not necessarily this target up
        lp_after = score_targets(loaded, [REQUEST.prompt], [REQUEST.target_new])[0].mean_logprob
        assert lp_after > lp_before + (0.1 if method == "memit" else 0.5), (method, lp_before, lp_after)
    delta.undo(loaded)
    for n, p in loaded.model.named_parameters():
        assert torch.equal(p, before[n]), f"{method}: undo left {n} different"


def test_report_records_the_models_dtype(tokenizer):
    loaded = bf16_llama(tokenizer)
    editor = build_editor("ft-m", loaded, {"layers": [2], "num_steps": 2})
    report = evaluate_editing(loaded, editor, [REQUEST], fluency=False, progress=False)
    assert report.config["dtype"] == "bfloat16"
    assert report.to_json()["config"]["dtype"] == "bfloat16"


def test_fine_tuning_a_bfloat16_weight_keeps_small_steps(tokenizer):
    """Adam's steps are below bfloat16's resolution for large weights: the float32 master copy accumulates them."""
    loaded = bf16_llama(tokenizer)
    editor = build_editor("ft-m", loaded, {"layers": [2], "num_steps": 20, "lr": 1e-3, "early_stop_loss": 0.0})
    name = editor.touched_parameters(loaded, [REQUEST])[0]
    delta = editor.edit(loaded, [REQUEST])
    moved = (delta.weights_after[name].float() - delta.weights_before[name].float()).abs()
    assert (moved > 0).float().mean() > 0.5  # most entries moved, although each step alone rounds away for many
    delta.undo(loaded)


def test_add_update_rounds_once():
    """weight + update rounded once: rounding the update to bfloat16 first would lose what tips the sum."""
    weight = torch.ones(4, dtype=torch.bfloat16)
    update = torch.full((4,), 2.0 ** -8 * (1 + 2.0 ** -12))  # just above half of bfloat16's spacing at 1 (2⁻⁷)
    assert float(torch.ones(1, dtype=torch.bfloat16) + update[:1].to(torch.bfloat16)) == 1.0  # two roundings: lost
    add_update(weight, update)
    assert weight.dtype == torch.bfloat16
    assert float(weight[0]) == 1.0 + 2.0 ** -7
    w32 = torch.zeros(3)
    add_update(w32, torch.ones(3, dtype=torch.float64))
    assert w32.dtype == torch.float32 and torch.equal(w32, torch.ones(3))


def test_dtype_names():
    assert resolve_dtype("bfloat16") is torch.bfloat16
    assert resolve_dtype("torch.float16") is torch.float16
    assert resolve_dtype(None) is torch.float32
    assert resolve_dtype(torch.float32) is torch.float32
    with pytest.raises(ConfigError, match=r"--dtype 'half'.*float32, bfloat16, float16"):
        resolve_dtype("half")


def test_cli_refuses_an_unknown_dtype_before_loading(monkeypatch, capsys):
    from lightning_edit import cli
    from lightning_edit.models import loading

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded before --dtype was checked")

    monkeypatch.setattr(loading, "load_model", no_loading)
    assert cli.main(["--method", "ft-m", "--dtype", "fp8", "--n", "1", "--no-fluency", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--dtype" in err and "bfloat16" in err
    args = cli.build_parser().parse_args(["--dtype", "bfloat16"])
    assert args.dtype == "bfloat16"
    assert cli.build_parser().parse_args([]).dtype == "float32"


def test_api_device_and_fp16(monkeypatch):
    seen = {}

    def fake_load(name, **kwargs):
        seen.update(kwargs, name=name)
        raise RuntimeError("stop")  # nothing to load here: the arguments are what is checked

    monkeypatch.setattr(models, "load_model", fake_load)  # where the runner loads from
    from lightning_edit.editors.ft import FTMHyperParams

    hp = FTMHyperParams(model_name="smollm2-135m")
    with pytest.raises(RuntimeError, match="stop"):
        api.BaseEditor.from_hparams(hp, dtype="bfloat16", device="cpu")
    assert seen["dtype"] is torch.bfloat16 and seen["device"] == torch.device("cpu")

    @dataclasses.dataclass
    class EasyEditStyle(FTMHyperParams):  # EasyEdit's hparams carry a GPU number and fp16
        device: int = 0
        fp16: bool = True

    if not torch.cuda.is_available():
        with pytest.warns(RuntimeWarning) as record, pytest.raises(RuntimeError, match="stop"):
            api.BaseEditor.from_hparams(EasyEditStyle(model_name="smollm2-135m"))
        messages = " ".join(str(w.message) for w in record)
        assert "sees no CUDA" in messages and "bfloat16" in messages
        assert seen["device"] == torch.device("cpu") and seen["dtype"] is torch.bfloat16
    assert api._dtype_for(None, True, torch.device("cuda:0")) is torch.float16
    assert api._dtype_for(None, None, torch.device("cpu")) is torch.float32
    with pytest.raises(ConfigError, match="dtype"):
        api.BaseEditor.from_hparams(hp, dtype="int8")


def test_float16_on_cpu_warns(tokenizer, monkeypatch):
    from lightning_edit.models import loading

    monkeypatch.setattr(loading, "_load_transformers", lambda target, dtype: (build_tiny("llama", tokenizer).model.to(dtype), tokenizer))
    with pytest.warns(RuntimeWarning, match="float16 on the CPU"):
        loaded = loading.load_model("some/local-dir", dtype="float16")
    assert next(loaded.model.parameters()).dtype == torch.float16
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loading.load_model("some/local-dir", dtype="bfloat16")


def test_cache_of_a_forward_under_either_name():
    """transformers 5.x renamed the output field past_key_values → cache; KN reads whichever the output has."""
    @dataclasses.dataclass
    class Old:  # the output fields of transformers 5.0 …: past_key_values
        logits: torch.Tensor = None
        past_key_values: object = None

    @dataclasses.dataclass
    class New:  # later 5.x: cache (past_key_values a deprecated alias)
        logits: torch.Tensor = None
        cache: object = None

    assert output_cache(Old(logits=torch.zeros(1), past_key_values="kv")) == "kv"
    assert output_cache(New(logits=torch.zeros(1), cache="kv")) == "kv"
