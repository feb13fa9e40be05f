"""EasyEdit's UltraEditHyperParams and LoRAHyperParams read EasyEdit's own files (keys copied from
hparams/UltraEdit/llama3-8b-instruct.yaml and hparams/LoRA/qwen2.5-7b.yaml of zjunlp/EasyEdit): each key mapped,
noted once, or refused with the fix."""
from __future__ import annotations

import pytest

from lightning_edit.easyedit import EasyEditKeyWarning, LoRAHyperParams, UltraEditHyperParams
from lightning_edit.editors.lifelong.ultraedit import UltraEditHyperParams as Native
from lightning_edit.errors import ConfigError

ULTRAEDIT_LLAMA3 = """\
alg_name: "ULTRAEDIT"
device: 0

model_name: your/path/Llama3-8b-instruct
model_class: AutoModelForCausalLM
tokenizer_class: AutoTokenizer
tokenizer_name: your/path/Llama3-8b-instruct
inner_params:
- model.layers.11.mlp.gate_proj
- model.layers.12.mlp.gate_proj
- model.layers.13.mlp.gate_proj
- model.layers.14.mlp.gate_proj
- model.layers.15.mlp.gate_proj
- model.layers.18.mlp.up_proj
- model.layers.19.mlp.up_proj
- model.layers.20.mlp.up_proj
- model.layers.21.mlp.up_proj
- model.layers.22.mlp.up_proj
- model.layers.23.mlp.up_proj
- model.layers.24.mlp.up_proj

dropout: 0.0
no_grad_layers: null

lr: 1e-6
token: mask

batch_size: 100
batch_size_once: 10
editor_batch_size: 1024
silent: False
half: true

model_parallel: false

results_dir: ./results
"""

LORA_QWEN = """\
alg_name: "LoRA"
model_name: "Qwen/Qwen2.5-7B-Instruct"
device: 0

lora_type: "lora"
rank: 8
lora_alpha: 32
layers: []
kl_factor: 0
norm_constraint: false
lora_dropout: 0.1
target_modules: ["q_proj", "v_proj"]

num_steps: 60
batch_size: 1
max_length: 128
lr: 5e-3
weight_decay: 0.0

model_parallel: False
"""


def test_ultraedit_file(tmp_path):
    path = tmp_path / "llama3-8b-instruct.yaml"
    path.write_text(ULTRAEDIT_LLAMA3.replace("your/path/Llama3-8b-instruct", "smollm2-135m"))
    with pytest.warns(EasyEditKeyWarning, match="editor_batch_size") as caught:
        hp = UltraEditHyperParams.from_hparams(path)
    assert "results_dir" in str(caught[0].message) and "silent" in str(caught[0].message)
    native = hp.native()
    assert isinstance(native, Native) and hp.method() == "ultraedit"
    assert native.modules == {"mlp.gate_proj": [11, 12, 13, 14, 15], "mlp.up_proj": [18, 19, 20, 21, 22, 23, 24]}
    assert (native.lr, native.positions, native.forward_batch_size) == (1e-6, "all", 10)
    assert (hp.batch_size, hp.fp16, hp.model_name) == (100, True, "smollm2-135m")


@pytest.mark.parametrize("line, match", [("token: first", "token"), ("inner_params: [lm_head]", "numbered block")])
def test_ultraedit_refusals_name_the_key(tmp_path, line, match):
    key = line.split(":")[0]
    text = "\n".join(x for x in ULTRAEDIT_LLAMA3.replace("your/path/Llama3-8b-instruct", "smollm2-135m").splitlines()
                     if not x.startswith(key) and not (key == "inner_params" and x.startswith("- ")))
    path = tmp_path / "h.yaml"
    path.write_text(text + "\n" + line + "\n")
    with pytest.raises(ConfigError, match=match):
        UltraEditHyperParams.from_hparams(path)


def test_lora_file(tmp_path):
    path = tmp_path / "qwen2.5-7b.yaml"
    path.write_text(LORA_QWEN)
    with pytest.warns(EasyEditKeyWarning, match="max_length"):
        hp = LoRAHyperParams.from_hparams(path)
    native = hp.native()
    assert hp.model_name == "qwen2.5-7b" and hp.method() == "lora"
    assert (native.rank, native.lora_alpha, native.lora_dropout, native.target_modules, native.layers) == (
        8, 32.0, 0.1, ["q_proj", "v_proj"], [])
    assert (native.num_steps, native.train_batch_size, native.lr, native.weight_decay) == (60, 1, 5e-3, 0.0)
    path.write_text(LORA_QWEN.replace('lora_type: "lora"', 'lora_type: "adalora"'))
    with pytest.raises(ConfigError, match="lora_type"):
        LoRAHyperParams.from_hparams(path)
