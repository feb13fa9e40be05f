"""LoRA through peft's settings and format: the adapter is a patch (kind ``lora``) whose hooks add (α/r)·B A x, the
model's own weights untouched; sequential edits go on training it and undo restores it bit for bit; ``--save`` writes
a peft adapter folder that ``PeftModel.from_pretrained`` loads to the same outputs, and ``load_model(DIR)`` re-attaches
it; a peft folder read back is JSON and safetensors only, every setting checked against the model."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from conftest import build_tiny
from lightning_edit import EditRequest, load_model
from lightning_edit.editors import build_editor
from lightning_edit.editors.lora import PEFT_FOLDER, LoraAdapter, load_peft_adapter
from lightning_edit.errors import CheckpointError, ConfigError
from lightning_edit.models.saving import save_edited_model
from lightning_edit.models.teacher_forcing import build_target_batch

SETTINGS = {"rank": 2, "num_steps": 8, "layers": [1, 2], "lr": 1e-2}
FIRST = EditRequest(prompt="The mother tongue of Danielle Darrieux is", target_new="English")
SECOND = EditRequest(prompt="The capital of Italy is", target_new="Paris")
PROBE = "The mother tongue of Danielle Darrieux is English"


def weights(loaded) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in loaded.model.state_dict().items()}


def adapter_state(loaded) -> dict[str, torch.Tensor]:
    patch = loaded.patches.get(LoraAdapter.key)
    assert isinstance(patch, LoraAdapter)
    return {k: v.clone() for k, v in patch.state_dict().items()}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def logits(model, tokenizer, text: str = PROBE) -> torch.Tensor:
    with torch.no_grad():
        return model(**tokenizer(text, return_tensors="pt")).logits


def target_nll(loaded, request: EditRequest) -> float:
    batch = build_target_batch(loaded, [request.prompt], [request.target_new])
    with torch.no_grad():
        out = loaded.model(**batch.model_inputs()).logits
    mask = batch.labels != -100
    return float(-torch.log_softmax(out, -1)[mask].gather(-1, batch.labels[mask][:, None]).mean())


@pytest.fixture
def tiny(tiny_tokenizer):
    return build_tiny("llama", tiny_tokenizer)


def test_the_adapter_trains_on_the_target_and_leaves_the_weights_alone(tiny):
    pristine, nll_before = weights(tiny), target_nll(tiny, FIRST)
    editor = build_editor("lora", tiny, SETTINGS)
    delta = editor.edit(tiny, [FIRST])
    assert same(weights(tiny), pristine) and not delta.weights_after  # nothing declared, nothing written
    patch = tiny.patches.get(LoraAdapter.key)
    expected = [f"model.layers.{i}.self_attn.{m}" for i in (1, 2) for m in ("q_proj", "v_proj")]
    assert patch.signature["modules"] == expected
    assert target_nll(tiny, FIRST) < nll_before - 0.3
    # the hook adds exactly (α/r)·B A x at an adapted module
    name = "model.layers.1.self_attn.q_proj"
    module, x = tiny.model.get_submodule(name), torch.randn(3, 32)
    a, b = patch.values[f"{name}.lora_A.weight"], patch.values[f"{name}.lora_B.weight"]
    by_hand = torch.nn.functional.linear(x, module.weight) + (32.0 / 2) * x @ a.T @ b.T
    assert torch.allclose(module(x), by_hand, atol=1e-6)


def test_sequential_edits_go_on_training_one_adapter_and_undo_bit_for_bit(tiny):
    editor = build_editor("lora", tiny, SETTINGS)
    first = editor.edit(tiny, [FIRST])
    after_first = adapter_state(tiny)
    second = editor.edit(tiny, [SECOND])
    assert tiny.patches.keys() == [LoraAdapter.key] and not same(adapter_state(tiny), after_first)
    after_second = adapter_state(tiny)
    second.undo(tiny)
    assert same(adapter_state(tiny), after_first)
    second.reapply(tiny)
    assert same(adapter_state(tiny), after_second)
    second.undo(tiny)
    first.undo(tiny)
    assert len(tiny.patches) == 0 and not any(m._forward_hooks for m in tiny.model.modules())
    with pytest.raises(ConfigError, match="already carries"):  # another rank on a model carrying an adapter
        editor.edit(tiny, [FIRST])
        build_editor("lora", tiny, {**SETTINGS, "rank": 3}).edit(tiny, [SECOND])


def test_save_writes_a_peft_adapter_that_peft_and_load_model_read(tiny, tmp_path):
    peft = pytest.importorskip("peft")
    build_editor("lora", tiny, SETTINGS).edit(tiny, [FIRST])
    edited = logits(tiny.model, tiny.tokenizer)
    save_edited_model(tiny, tmp_path / "saved", method="lora", requests=[FIRST], record={"method": "lora"})
    folder = tmp_path / "saved" / PEFT_FOLDER
    assert sorted(p.name for p in folder.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    assert json.loads((folder / "adapter_config.json").read_text())["r"] == 2

    import transformers
    base = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "saved").eval()
    assert not torch.allclose(logits(base, tiny.tokenizer), edited, atol=1e-4)  # the weights alone: unedited
    with_adapter = peft.PeftModel.from_pretrained(base, str(folder)).eval()
    assert torch.allclose(logits(with_adapter, tiny.tokenizer), edited, atol=1e-5)

    reloaded = load_model(str(tmp_path / "saved"))
    assert reloaded.patches.keys() == [LoraAdapter.key]
    assert torch.allclose(logits(reloaded.model, tiny.tokenizer), edited, atol=1e-6)


def _peft_folder(tiny, tmp_path) -> Path:
    build_editor("lora", tiny, SETTINGS).edit(tiny, [FIRST])
    patch = tiny.patches.get(LoraAdapter.key)
    patch.export(tmp_path, tiny.name)
    return tmp_path / PEFT_FOLDER


def _rewrite(folder: Path, tmp_path: Path, **changes) -> Path:
    copy = Path(shutil.copytree(folder, tmp_path / "changed"))
    config = json.loads((copy / "adapter_config.json").read_text())
    config.update(changes)
    (copy / "adapter_config.json").write_text(json.dumps(config))
    return copy


def test_a_peft_folder_is_read_back_checked(tiny, tmp_path):
    folder = _peft_folder(tiny, tmp_path)
    edited = logits(tiny.model, tiny.tokenizer)
    adapter = load_peft_adapter(tiny, folder)
    tiny.patches.reset()
    tiny.patches.attach(adapter)
    assert torch.allclose(logits(tiny.model, tiny.tokenizer), edited, atol=1e-6)
    tiny.patches.reset()
    for changes, match in [({"base_model_name_or_path": "gpt2-xl"}, "trained on"),
                           ({"target_modules": ["c_attn"]}, "modules"),
                           ({"r": 64}, "rank 64 exceeds"),
                           ({"use_dora": True}, "use_dora"),
                           ({"peft_type": "IA3"}, "not a peft LoRA")]:
        changed = _rewrite(folder, tmp_path / match.replace(" ", "_"), **changes)
        with pytest.raises(CheckpointError, match=match):
            load_peft_adapter(tiny, changed)
    assert len(tiny.patches) == 0
