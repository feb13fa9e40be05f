"""bench/bench_easyedit_memit.py without EasyEdit: the copy of its package it runs (device strings, empty
``__init__`` files, the tuple adaptation), and the adapter that puts its MEMIT behind the editor contract."""
from __future__ import annotations

import sys
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from bench_easyedit_memit import EasyEditMEMIT, cpu_copy_of_easyedit  # noqa: E402
from conftest import build_tiny  # noqa: E402

from lightning_edit.requests import EditRequest  # noqa: E402

COMPUTE_Z = '''
def edit_output_fn(cur_out, cur_layer):
    target_init = cur_out[0][0, 1].detach().clone()
    cur_out[0][0, 1, :] += 1.0
    return cur_out

def loss_repr(tr, hparams, loss_layer):
    x = torch.zeros(3, device=f"cuda:{hparams.device}")
    return tr[hparams.layer_module_tmp.format(loss_layer)].output[0][:2]
'''


def test_copy_runs_on_the_cpu_and_reads_tensor_layer_outputs(tmp_path):
    src = tmp_path / "src" / "easyeditor" / "models" / "memit"
    src.mkdir(parents=True)
    (tmp_path / "src" / "easyeditor" / "__init__.py").write_text("import everything_heavy\n")
    (src / "compute_z.py").write_text(COMPUTE_Z)
    (src / "main.py").write_text("w = v.to(f'cuda:{self.hparams.device}')\n")
    root = cpu_copy_of_easyedit(tmp_path / "src", tmp_path / "copy")
    copied = root / "easyeditor"
    assert (copied / "__init__.py").read_text() == ""
    z = (copied / "models" / "memit" / "compute_z.py").read_text()
    main = (copied / "models" / "memit" / "main.py").read_text()
    if not torch.cuda.is_available():
        assert "cuda" not in z and main == 'w = v.to("cpu")\n'
    namespace: dict = {"torch": torch}
    exec(z, namespace)
    hidden = torch.zeros(1, 3, 2)
    assert namespace["edit_output_fn"](hidden, "layer") is hidden and float(hidden[0, 1].sum()) == 2.0  # a tensor
    pair = (torch.zeros(1, 3, 2), None)
    namespace["edit_output_fn"](pair, "layer")
    assert float(pair[0][0, 1].sum()) == 2.0  # a tuple, as before
    hp = types.SimpleNamespace(device=0, layer_module_tmp="model.layers.{}")
    tr = {"model.layers.5": types.SimpleNamespace(output=torch.ones(4, 2))}
    assert namespace["loss_repr"](tr, hp, 5).shape == (2, 2)


def test_adapter_keeps_the_editor_contract(tokenizer):
    loaded = build_tiny("llama", tokenizer)
    name = loaded.layout.mlp_out.format(1) + ".weight"
    seen = {}

    def apply_memit_to_model(model, tok, requests, hparams):  # what EasyEdit's function does: weights += update
        seen["requests"] = requests
        with torch.no_grad():
            dict(model.named_parameters())[name][...] += 0.5
        return model, {}

    editor = EasyEditMEMIT(types.SimpleNamespace(apply_memit_to_model=apply_memit_to_model), None, layers=[1])
    before = dict(loaded.model.named_parameters())[name].detach().clone()
    delta = editor.edit(loaded, [EditRequest(prompt="Alex lives in", target_new="Paris", subject="Alex")])
    assert seen["requests"] == [{"prompt": "Alex lives in", "subject": "Alex", "target_new": "Paris", "case_id": 0}]
    assert torch.allclose(dict(loaded.model.named_parameters())[name], before + 0.5)
    delta.undo(loaded)
    assert torch.equal(dict(loaded.model.named_parameters())[name], before)
