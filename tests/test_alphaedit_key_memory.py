"""AlphaEdit's memory of past keys (Σ K_p K_pᵀ) is a patch of the model (``loaded.patches``, kind ``alphaedit-keys``),
not of the editor: listed by the registry, read by every AlphaEdit editor built on the model, written by ``--save``
(``save_edited_model``) and re-attached by ``load_model(DIR)``; each edit's keys are one ``PatchChange`` that undo
takes out and reapply puts back."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import save_tiny
from lightning_edit import EditRequest
from lightning_edit.editors.locate.alphaedit import KeyMemory
from lightning_edit.models import load_model
from lightning_edit.models.patches import PatchChange
from lightning_edit.models.saving import save_edited_model
from test_contract_all_methods import REQUESTS, make_editor

SECOND = EditRequest(prompt="The capital of Italy is", target_new="Paris", target_true="Rome", subject="Italy")


@pytest.fixture(scope="module")
def base_dir(tiny_tokenizer, tmp_path_factory) -> Path:
    return save_tiny("llama", tiny_tokenizer, tmp_path_factory.mktemp("tiny") / "base")


@pytest.fixture(scope="module")
def stats_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("alphaedit")  # one statistics cache for every editor of this file


def weights(loaded) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in loaded.model.state_dict().items()}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def sums(loaded) -> dict[int, torch.Tensor]:
    memory = loaded.patches.get(KeyMemory.key)
    assert isinstance(memory, KeyMemory)
    return {layer: t.clone() for layer, t in memory.by_layer.items()}


def test_the_key_memory_is_a_listed_patch_that_a_second_editor_reads(base_dir, stats_dir):
    one_editor = load_model(str(base_dir))
    editor = make_editor("alphaedit", one_editor, stats_dir)
    first = editor.edit(one_editor, REQUESTS)
    assert one_editor.patches.keys() == [KeyMemory.key]
    assert [type(c) for c in first.patches] == [PatchChange] and first.patches[0].kind == "alphaedit-keys"
    assert not first.patches[0].changes_outputs  # bookkeeping: the model computes from its weights alone
    editor.edit(one_editor, [SECOND])

    two_editors = load_model(str(base_dir))
    make_editor("alphaedit", two_editors, stats_dir).edit(two_editors, REQUESTS)
    make_editor("alphaedit", two_editors, stats_dir).edit(two_editors, [SECOND])  # a new editor: the same keys
    assert same(weights(two_editors), weights(one_editor))
    assert same(sums(two_editors), sums(one_editor))

    forgotten = load_model(str(base_dir))
    make_editor("alphaedit", forgotten, stats_dir).edit(forgotten, REQUESTS)
    forgotten.patches.reset()  # without the first edit's keys the second update is another one
    make_editor("alphaedit", forgotten, stats_dir).edit(forgotten, [SECOND])
    assert not same(weights(forgotten), weights(one_editor))


def test_the_key_memory_survives_save_and_load_model(base_dir, stats_dir, tmp_path):
    edited = load_model(str(base_dir))
    make_editor("alphaedit", edited, stats_dir).edit(edited, REQUESTS)
    save_edited_model(edited, tmp_path / "saved", method="alphaedit", requests=REQUESTS, record={"method": "alphaedit"})

    reloaded = load_model(str(tmp_path / "saved"))
    assert reloaded.patches.keys() == [KeyMemory.key] and same(sums(reloaded), sums(edited))
    assert same(weights(reloaded), weights(edited))
    after_reload = make_editor("alphaedit", reloaded, stats_dir).edit(reloaded, [SECOND])
    make_editor("alphaedit", edited, stats_dir).edit(edited, [SECOND])
    assert same(weights(reloaded), weights(edited))  # the saved keys constrained the next edit as the live ones did

    saved_sums = sums(edited)
    after_reload.undo(reloaded)  # the saved keys stay: no edit of this session made them
    assert reloaded.patches.keys() == [KeyMemory.key]
    after_reload.reapply(reloaded)
    assert all(torch.allclose(a, b, atol=1e-9) for a, b in zip(sums(reloaded).values(), saved_sums.values()))


def test_undo_takes_the_keys_out_and_reapply_puts_them_back(base_dir, stats_dir):
    loaded = load_model(str(base_dir))
    delta = make_editor("alphaedit", loaded, stats_dir).edit(loaded, REQUESTS)
    edited = sums(loaded)
    delta.undo(loaded)
    assert len(loaded.patches) == 0  # the container goes with its last entry
    delta.reapply(loaded)
    assert loaded.patches.keys() == [KeyMemory.key] and same(sums(loaded), edited)


def test_the_models_layer_imports_no_editor_and_an_unknown_kind_is_a_checkpoint_error():
    """Loading code never imports the editors (not even by name at run time): a kind no module registered is a
    ``CheckpointError`` naming it; ``lightning_edit.load_model`` registers every method's kinds first."""
    import subprocess
    import sys

    code = ("import sys\nimport lightning_edit.models.loading, lightning_edit.models.saving\n"
            "from lightning_edit.errors import CheckpointError\nfrom lightning_edit.models.patches import patch_class\n"
            "try:\n    patch_class('alphaedit-keys')\nexcept CheckpointError as err:\n    assert 'alphaedit-keys' in str(err)\n"
            "else:\n    raise SystemExit('a kind was registered without its editor being imported')\n"
            "assert not [m for m in sys.modules if m.startswith('lightning_edit.editors')]\n"
            "import lightning_edit.editors\nassert patch_class('alphaedit-keys').__name__ == 'KeyMemory'\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
